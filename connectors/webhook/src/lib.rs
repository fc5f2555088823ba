//! The webhook sink: delivers one CloudEvent per HTTP POST, in binary or structured mode.
//!
//! Any 2xx is success; a 2xx that carries a CloudEvent is a reply. `429` and `503` honour
//! `Retry-After`; `408`, other 5xx, timeouts and connection errors are retried; other 4xx are
//! not, and go to the dead-letter path.

mod batch;
mod eventmesh;
mod pool;

use bytes::Bytes;
use evmesh_core::component::{Check, Kind, SinkConfig, SinkContext};
use evmesh_core::config::ConfigError;
use evmesh_core::sink::{Delivered, RetryHint, Sink, SinkError, SinkHealth};
use evmesh_core::{format, http_binding, Event};
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `sink: {type: webhook, url: …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSinkConfig {
    pub url: String,
    #[serde(default)]
    pub mode: HttpMode,
    /// Extra headers sent with every request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `mode: batch`: most events in one request (default 100; a subscription's
    /// `maxInFlight` bounds it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
    /// `mode: batch`: how long the first event of a batch waits for more (default PT0.005S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<evmesh_core::duration::IsoDuration>,
}

/// How an event is laid out in the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// `ce-*` headers, the data as the body.
    #[default]
    Binary,
    /// `application/cloudevents+json` body.
    Structured,
    /// Apache EventMesh's push format, for receivers written for EventMesh: a form-encoded
    /// POST (`content` = the event in JSON format, `bizseqno`, `uniqueid`, `randomno`, `topic`,
    /// `extfields`) with the `code: 105` header; the receiver's JSON `retCode` is honoured.
    #[serde(rename = "eventmesh")]
    EventMesh,
    /// Events delivered at about the same time go together in one
    /// `application/cloudevents-batch+json` POST (up to `maxBatch`, waiting at most `linger`
    /// for more); the receiver's answer counts for every event of the batch. Opt-in, for
    /// receivers that take batches.
    Batch,
}

impl Kind for WebhookSinkConfig {
    const KIND: &'static str = "webhook";
}

impl Check for WebhookSinkConfig {
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(e) = validate_http_url(&self.url) {
            errors.push(ConfigError::new("url", e));
        }
        if self.mode != HttpMode::Batch {
            for (key, set) in [
                ("maxBatch", self.max_batch.is_some()),
                ("linger", self.linger.is_some()),
            ] {
                if set {
                    errors.push(ConfigError::new(key, "only applies with mode: batch"));
                }
            }
        }
        if self.max_batch.is_some_and(|n| n == 0 || n > 10_000) {
            errors.push(ConfigError::new("maxBatch", "must be between 1 and 10000"));
        }
        if self.linger.is_some_and(|d| d.0 > Duration::from_secs(10)) {
            errors.push(ConfigError::new("linger", "must be at most PT10S"));
        }
        for name in self.headers.keys() {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !ok {
                errors.push(ConfigError::new(
                    format!("headers.{name}"),
                    "invalid HTTP header name",
                ));
            }
        }
        errors
    }
}

impl SinkConfig for WebhookSinkConfig {
    fn build(&self, cx: &SinkContext) -> Result<Arc<dyn Sink>, String> {
        let mut sink = WebhookSink::new(self).map_err(|e| e.to_string())?;
        sink.topic = cx.topic.clone();
        if self.mode == HttpMode::Batch {
            return Ok(Arc::new(batch::BatchingSink::new(
                Arc::new(sink),
                self.max_batch.unwrap_or(100),
                self.linger.map_or(Duration::from_millis(5), |d| d.0),
            )));
        }
        Ok(Arc::new(sink))
    }
}

/// A webhook target: `http://host[:port][/path]`.
pub fn validate_http_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https webhooks are not supported yet (TLS arrives with the security work); use http://"
        ));
    } else {
        return Err(format!("{url:?} is not an http:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{url:?}: credentials in the URL are not supported; use headers"
        ));
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("{url:?} contains whitespace"));
    }
    Ok(())
}

/// Replies larger than this are refused.
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Connections kept to one webhook at most.
const MAX_CONNECTIONS: usize = 256;
/// `Retry-After` is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid header {name:?}: {reason}")]
    Header { name: String, reason: String },
}

pub struct WebhookSink {
    uri: Uri,
    /// The request target in origin form (`/path?query`), as RFC 9112 asks towards an origin
    /// server; strict receivers (Node.js, Go) refuse the absolute form.
    target: Uri,
    /// `host[:port]` for the `Host` header (the port only when it is not 80).
    host_header: HeaderValue,
    mode: HttpMode,
    headers: HeaderMap,
    pool: pool::Pool,
    /// The outcome of the last attempt, for readiness.
    health: Mutex<SinkHealth>,
    /// The topic delivered (EventMesh's push format names it).
    topic: String,
}

impl WebhookSink {
    pub fn new(cfg: &WebhookSinkConfig) -> Result<Self, WebhookError> {
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| WebhookError::Url {
                url: cfg.url.clone(),
                reason: e.to_string(),
            })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(WebhookError::Url {
                url: cfg.url.clone(),
                reason: "expected http://host[:port]/path".into(),
            });
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| WebhookError::Header {
                name: k.clone(),
                reason: e.to_string(),
            })?;
            let value = HeaderValue::from_str(v).map_err(|e| WebhookError::Header {
                name: k.clone(),
                reason: e.to_string(),
            })?;
            headers.insert(name, value);
        }
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let target: Uri = uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|pq| !pq.is_empty())
            .unwrap_or("/")
            .parse()
            .map_err(|e: http::uri::InvalidUri| WebhookError::Url {
                url: cfg.url.clone(),
                reason: e.to_string(),
            })?;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let host_text = match uri.port_u16() {
            Some(80) => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            _ => authority,
        };
        let host_header = HeaderValue::from_str(host_text).map_err(|e| WebhookError::Url {
            url: cfg.url.clone(),
            reason: e.to_string(),
        })?;
        let pool = pool::Pool::new(host, port, MAX_CONNECTIONS);
        Ok(WebhookSink {
            uri,
            target,
            host_header,
            mode: cfg.mode,
            headers,
            pool,
            health: Mutex::new(SinkHealth::Unknown),
            topic: String::new(),
        })
    }

    fn request(&self, e: &Event) -> Result<Request<Full<Bytes>>, SinkError> {
        let mut b = Request::post(self.target.clone());
        let mut bad = None;
        if let Some(h) = b.headers_mut() {
            h.insert(http::header::HOST, self.host_header.clone());
            // W3C trace context of this delivery attempt: the receiver's span joins the trace.
            if let Some(cx) = evmesh_core::trace::current() {
                if let Ok(v) = HeaderValue::from_str(&cx.to_string()) {
                    h.insert(evmesh_core::trace::TRACEPARENT, v);
                }
                if let Some(v) =
                    evmesh_core::trace::current_state().and_then(|s| HeaderValue::from_str(&s).ok())
                {
                    h.insert(evmesh_core::trace::TRACESTATE, v);
                }
            }
            for (k, v) in &self.headers {
                h.insert(k.clone(), v.clone());
            }
            let body = match self.mode {
                HttpMode::Binary => {
                    http_binding::encode_binary_headers(e, |name, value| {
                        match (
                            HeaderName::from_bytes(name.as_bytes()),
                            HeaderValue::try_from(value),
                        ) {
                            (Ok(n), Ok(v)) => {
                                h.insert(n, v);
                            }
                            _ => bad = Some(name.to_owned()),
                        }
                    });
                    e.data.as_ref().map(|d| d.bytes.clone()).unwrap_or_default()
                }
                HttpMode::Structured => {
                    h.insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
                    );
                    let mut out = Vec::with_capacity(256);
                    format::encode_structured(e, &mut out);
                    Bytes::from(out)
                }
                HttpMode::EventMesh => eventmesh::push_request(h, e, &self.topic),
                HttpMode::Batch => {
                    h.insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/cloudevents-batch+json"),
                    );
                    let mut out = Vec::with_capacity(256);
                    format::encode_batch(std::slice::from_ref(e), &mut out);
                    Bytes::from(out)
                }
            };
            if let Some(name) = bad {
                return Err(SinkError::not_retryable(format!(
                    "cannot encode header {name} for HTTP"
                )));
            }
            return b
                .body(Full::new(body))
                .map_err(|err| SinkError::not_retryable(format!("building the request: {err}")));
        }
        Err(SinkError::not_retryable("building the request failed"))
    }

    /// The request for several events in `mode: batch`.
    fn batch_request(&self, events: &[Event]) -> Result<Request<Full<Bytes>>, SinkError> {
        let mut b = Request::post(self.target.clone());
        if let Some(h) = b.headers_mut() {
            h.insert(http::header::HOST, self.host_header.clone());
            for (k, v) in &self.headers {
                h.insert(k.clone(), v.clone());
            }
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents-batch+json"),
            );
        }
        let mut out = Vec::with_capacity(256 * events.len());
        format::encode_batch(events, &mut out);
        b.body(Full::new(Bytes::from(out)))
            .map_err(|err| SinkError::not_retryable(format!("building the request: {err}")))
    }

    /// One POST of a batch; its outcome is every event's (a reply in the answer is not read).
    pub(crate) async fn attempt_batch(
        &self,
        events: &[Event],
        timeout: Duration,
    ) -> Result<(), SinkError> {
        let r = self
            .exchange(|| self.batch_request(events), timeout, false)
            .await
            .map(|_| ());
        self.note_health(&r);
        r
    }

    fn note_health<T>(&self, r: &Result<T, SinkError>) {
        let h = match r {
            Ok(_) => SinkHealth::Ready,
            // A refusal (4xx) says nothing about the destination's health.
            Err(e) if e.hint == RetryHint::NotRetryable => SinkHealth::Ready,
            Err(e) => SinkHealth::Unhealthy(e.message.clone()),
        };
        if let Ok(mut g) = self.health.lock() {
            *g = h;
        }
    }

    async fn attempt(&self, e: &Event, timeout: Duration) -> Result<Delivered, SinkError> {
        self.exchange(|| self.request(e), timeout, true).await
    }

    /// Sends a request and classifies the answer; `with_reply` reads a reply event from a
    /// 2xx.
    async fn exchange(
        &self,
        make: impl Fn() -> Result<Request<Full<Bytes>>, SinkError>,
        timeout: Duration,
        with_reply: bool,
    ) -> Result<Delivered, SinkError> {
        let (parts, body) = self
            .pool
            .send(make, MAX_REPLY_BYTES, timeout)
            .await
            .map_err(|err| match err {
                pool::SendError::Build(e) => e,
                pool::SendError::Io(msg) => {
                    SinkError::retryable(format!("POST {}: {msg}", self.uri))
                }
                pool::SendError::Timeout => SinkError::retryable(format!(
                    "POST {}: no response within {} ms",
                    self.uri,
                    timeout.as_millis()
                )),
            })?;
        let status = parts.status;
        if self.mode == HttpMode::EventMesh {
            return eventmesh::push_outcome(&self.uri, status, &parts.headers, body);
        }
        if status.is_success() && !with_reply {
            return Ok(Delivered { reply: None });
        }
        if status.is_success() {
            let body = body.map_err(|err| {
                SinkError::retryable(format!("reading the response of {}: {err}", self.uri))
            })?;
            let reply = decode_reply(&parts.headers, body).map_err(|msg| {
                SinkError::not_retryable(format!("invalid reply event from {}: {msg}", self.uri))
                    .with_status(status.as_u16())
            })?;
            return Ok(Delivered { reply });
        }
        let code = status.as_u16();
        let msg = format!("POST {} answered {status}", self.uri);
        let err = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                let hint = retry_after(&parts.headers)
                    .map(RetryHint::RetryAfter)
                    .unwrap_or(RetryHint::Retryable);
                SinkError {
                    message: msg,
                    hint,
                    status: Some(code),
                }
            }
            StatusCode::REQUEST_TIMEOUT => SinkError::retryable(msg).with_status(code),
            s if s.is_server_error() => SinkError::retryable(msg).with_status(code),
            _ => SinkError::not_retryable(msg).with_status(code),
        };
        Err(err)
    }
}

/// `Retry-After` in delta-seconds (an HTTP-date falls back to the backoff policy).
pub(crate) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// A 2xx response carries a reply event when it is in binary mode (`ce-specversion`) or
/// structured mode (`application/cloudevents+json`).
pub fn decode_reply(h: &HeaderMap, body: Bytes) -> Result<Option<Event>, String> {
    let ct = h.get(http::header::CONTENT_TYPE).map(|v| v.as_bytes());
    if h.contains_key("ce-specversion") {
        let headers = h.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
        return http_binding::decode_binary(headers, ct, body)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    let structured = ct.is_some_and(|c| {
        c.len() >= 28 && c[..28].eq_ignore_ascii_case(b"application/cloudevents+json")
    });
    if structured {
        return format::decode_structured(&body)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    Ok(None)
}

impl Sink for WebhookSink {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        Box::pin(async move {
            let r = self.attempt(event, timeout).await;
            self.note_health(&r);
            r
        })
    }

    fn health(&self) -> SinkHealth {
        self.health
            .lock()
            .map(|h| h.clone())
            .unwrap_or(SinkHealth::Unknown)
    }

    fn describe(&self) -> String {
        format!("webhook {}", self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_are_parsed_and_capped() {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("99999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn replies_are_recognised_in_both_modes() {
        let mut h = HeaderMap::new();
        assert_eq!(decode_reply(&h, Bytes::from_static(b"ok")).unwrap(), None);
        h.insert("ce-specversion", HeaderValue::from_static("1.0"));
        h.insert("ce-id", HeaderValue::from_static("r1"));
        h.insert("ce-source", HeaderValue::from_static("/fn"));
        h.insert("ce-type", HeaderValue::from_static("reply"));
        assert_eq!(decode_reply(&h, Bytes::new()).unwrap().unwrap().id, "r1");
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        );
        let body =
            Bytes::from_static(br#"{"specversion":"1.0","id":"r2","source":"/fn","type":"t"}"#);
        assert_eq!(decode_reply(&h, body).unwrap().unwrap().id, "r2");
        assert!(decode_reply(&h, Bytes::from_static(b"{}")).is_err());
    }

    #[test]
    fn config_errors_name_the_field() {
        let cfg = WebhookSinkConfig {
            url: "ftp://x".into(),
            mode: HttpMode::Binary,
            headers: [("bad header".to_owned(), "v".to_owned())].into(),
            max_batch: Some(0),
            linger: None,
        };
        let paths: Vec<String> = cfg.check().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            vec!["url", "maxBatch", "maxBatch", "headers.bad header"]
        );
    }

    #[test]
    fn https_urls_are_refused_with_a_clear_error() {
        let cfg = WebhookSinkConfig {
            url: "https://x/".into(),
            mode: HttpMode::Binary,
            headers: Default::default(),
            max_batch: None,
            linger: None,
        };
        assert!(WebhookSink::new(&cfg).is_err());
    }
}
