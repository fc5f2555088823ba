//! Apache EventMesh's push format (`mode: eventmesh`): what an EventMesh runtime POSTs to a
//! subscriber's URL, so receivers written for EventMesh work unchanged.
//!
//! The request is `application/x-www-form-urlencoded` with `content` (the event in CloudEvents
//! JSON format), `bizseqno` and `uniqueid` (the event's id), `randomno`, `topic` and `extfields`
//! (the extensions as a JSON object of strings), and the headers `code: 105`
//! (`HTTP_PUSH_CLIENT_ASYNC`), `protocoltype: cloudevents`, `language`, `version` and the
//! `eventmesh*` instance headers.
//!
//! The answer: a 2xx with a JSON `retCode` of `0` or `1` (OK) is delivered; `2` (RETRY) and
//! `5` (NOLISTEN) are retried per the policy; `3` (FAIL) is not retried and goes to the
//! dead-letter path. **A 2xx with an empty (or non-JSON) body counts as delivered.** Upstream
//! EventMesh reads an empty body as FAIL and then drops the event for good; a receiver that
//! answers `200` has taken the event, and evmesh never drops one silently. Other statuses
//! follow the webhook rules (429/503 honour `Retry-After`, 5xx retried, other 4xx dead-lettered).

use bytes::Bytes;
use evmesh_core::sink::{Delivered, RetryHint, SinkError};
use evmesh_core::{format, Event};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};

/// Fills in the headers and returns the form body.
pub fn push_request(h: &mut HeaderMap, e: &Event, topic: &str) -> Bytes {
    for (k, v) in [
        ("code", "105"),
        ("protocoltype", "cloudevents"),
        ("protocolversion", "1.0"),
        ("language", "RUST"),
        ("version", "1.0"),
        ("eventmeshcluster", "evmesh"),
        ("eventmeshenv", "evmesh"),
        ("eventmeshidc", "evmesh"),
        ("eventmeship", "127.0.0.1"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8"),
    );
    let mut content = Vec::with_capacity(256);
    format::encode_structured(e, &mut content);
    let ext: serde_json::Map<String, serde_json::Value> = e
        .extensions
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::Value::String(v.to_canonical_string()),
            )
        })
        .collect();
    let random = format!("{:020}", fastrand::u64(..));
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("content", &String::from_utf8_lossy(&content))
        .append_pair("bizseqno", &e.id)
        .append_pair("uniqueid", &e.id)
        .append_pair("randomno", &random)
        .append_pair("topic", topic)
        .append_pair("extfields", &serde_json::Value::Object(ext).to_string())
        .finish();
    Bytes::from(body)
}

/// What the receiver's answer means.
pub fn push_outcome(
    uri: &Uri,
    status: StatusCode,
    headers: &HeaderMap,
    body: Result<Bytes, String>,
) -> Result<Delivered, SinkError> {
    let code = status.as_u16();
    if !status.is_success() {
        let msg = format!("POST {uri} answered {status}");
        return Err(match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => SinkError {
                message: msg,
                hint: crate::retry_after(headers)
                    .map(RetryHint::RetryAfter)
                    .unwrap_or(RetryHint::Retryable),
                status: Some(code),
            },
            StatusCode::REQUEST_TIMEOUT => SinkError::retryable(msg).with_status(code),
            s if s.is_server_error() => SinkError::retryable(msg).with_status(code),
            _ => SinkError::not_retryable(msg).with_status(code),
        });
    }
    let body =
        body.map_err(|e| SinkError::retryable(format!("reading the answer of {uri}: {e}")))?;
    let ret = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("retCode").and_then(serde_json::Value::as_i64));
    match ret {
        None | Some(0) | Some(1) => Ok(Delivered::default()),
        Some(2) | Some(5) => Err(SinkError::retryable(format!(
            "POST {uri}: the receiver answered retCode {}",
            ret.unwrap_or_default()
        ))
        .with_status(code)),
        Some(other) => Err(SinkError::not_retryable(format!(
            "POST {uri}: the receiver answered retCode {other} (FAIL)"
        ))
        .with_status(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_carries_the_event_and_its_topic() {
        let mut e = Event::new("id-1", "/src", "t");
        e.set_extension("region", evmesh_core::ExtValue::String("eu".into()));
        let mut h = HeaderMap::new();
        let body = push_request(&mut h, &e, "orders");
        assert_eq!(h.get("code").unwrap(), "105");
        let fields: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(fields["topic"], "orders");
        assert_eq!(fields["uniqueid"], "id-1");
        let content: serde_json::Value = serde_json::from_str(&fields["content"]).unwrap();
        assert_eq!(content["id"], "id-1");
        let ext: serde_json::Value = serde_json::from_str(&fields["extfields"]).unwrap();
        assert_eq!(ext["region"], "eu");
    }

    #[test]
    fn ret_codes_decide_the_outcome() {
        let uri: Uri = "http://x/".parse().unwrap();
        let h = HeaderMap::new();
        let ok =
            |b: &'static [u8]| push_outcome(&uri, StatusCode::OK, &h, Ok(Bytes::from_static(b)));
        assert!(ok(b"").is_ok(), "an empty 200 is delivered");
        assert!(ok(br#"{"retCode":0}"#).is_ok());
        assert!(ok(br#"{"retCode":1}"#).is_ok());
        assert_eq!(
            ok(br#"{"retCode":2}"#).unwrap_err().hint,
            RetryHint::Retryable
        );
        assert_eq!(
            ok(br#"{"retCode":3}"#).unwrap_err().hint,
            RetryHint::NotRetryable
        );
    }
}
