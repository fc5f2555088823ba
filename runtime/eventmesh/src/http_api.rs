//! The EventMesh HTTP API, served on the HTTP ingest port, so EventMesh HTTP clients move over
//! by changing an address:
//!
//! - `POST /eventmesh/publish/{topic}`: a CloudEvent (structured or binary mode) or an EventMesh
//!   message (`{"content", "uniqueId", "bizSeqNo", "properties"}`).
//! - `POST /eventmesh/subscribe/local`: `{"url", "consumerGroup", "topic": [{"topic", "mode",
//!   "type"}], "pushFormat"?}`; the URL becomes a member of the consumer group on each topic.
//! - `POST /eventmesh/unsubscribe/local`: `{"url", "consumerGroup", "topic": ["t"]}`.
//! - The older form-encoded protocol of EventMesh's Java HTTP client, on any path, told apart by
//!   its `code` header: 104 (async send), 101 (sync send: request-reply), 102 (batch send), 206
//!   (subscribe), 207 (unsubscribe), 203 (heartbeat).
//!
//! Every answer is JSON `{"retCode", "retMsg", "resTime"}` (`retCode` 0 is success), with an
//! HTTP status that agrees (400 for bad input, 413 too large, 503 store unavailable, 504 no
//! reply in time). A publish is answered once it is durable.

use crate::convert;
use crate::groups::{GroupKey, Groups, WebhookMember};
use bytes::Bytes;
use evmesh_core::publish::PublishError;
use evmesh_core::Event;
use evmesh_ingress::listener::{HttpRoute, ListenerContext};
use evmesh_ingress::{read_body, Handler, Resp};
use evmesh_sdk::protocol::{SubscriptionItem, SubscriptionMode};
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct EventMeshApi {
    pub cx: ListenerContext,
    pub groups: Arc<Groups>,
}

impl HttpRoute for EventMeshApi {
    fn matches(&self, req: &Request<Incoming>) -> bool {
        let path = req.uri().path();
        path.starts_with("/eventmesh/")
            || (req.headers().contains_key("code") && !path.starts_with("/topics/"))
    }
}

impl Handler for EventMeshApi {
    fn call(self: Arc<Self>, req: Request<Incoming>) -> BoxFuture<'static, Resp> {
        Box::pin(async move { self.handle(req).await })
    }
}

/// `{"retCode", "retMsg", "resTime"}` with `status`.
fn ret(status: StatusCode, code: i32, msg: impl Into<serde_json::Value>) -> Resp {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let body = serde_json::json!({"retCode": code, "retMsg": msg.into(), "resTime": now});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn ok() -> Resp {
    ret(StatusCode::OK, 0, "success")
}

fn bad(msg: impl Into<String>) -> Resp {
    ret(StatusCode::BAD_REQUEST, 1, msg.into())
}

fn publish_failed(e: &PublishError) -> Resp {
    let status = match e {
        PublishError::Invalid(_) => StatusCode::BAD_REQUEST,
        PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        PublishError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ret(status, 1, e.to_string())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeBody {
    url: String,
    consumer_group: String,
    topic: Vec<SubscriptionItem>,
    /// `eventmesh` (default), `binary` or `structured`.
    #[serde(default)]
    push_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UnsubscribeBody {
    url: String,
    consumer_group: String,
    topic: Vec<String>,
}

/// An EventMesh HTTP message.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Message {
    content: String,
    unique_id: String,
    biz_seq_no: String,
    topic: String,
    properties: BTreeMap<String, String>,
    prop: BTreeMap<String, String>,
}

impl EventMeshApi {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        if req.method() != Method::POST {
            let mut r = ret(StatusCode::METHOD_NOT_ALLOWED, 1, "use POST");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let path = req.uri().path().to_owned();
        let code = req
            .headers()
            .get("code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        let (parts, body) = match read_body(req, self.cx.max_body_bytes).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        if let Some(topic) = path.strip_prefix("/eventmesh/publish/") {
            return self
                .publish_json(topic.trim_end_matches('/'), &parts, body)
                .await;
        }
        match path.as_str() {
            "/eventmesh/subscribe/local" => return self.subscribe_json(&body).await,
            "/eventmesh/unsubscribe/local" => return self.unsubscribe_json(&body).await,
            _ => {}
        }
        match code {
            Some(c) => self.form(c, &parts, &body).await,
            None => ret(
                StatusCode::NOT_FOUND,
                1,
                format!("no EventMesh route for {path}"),
            ),
        }
    }

    async fn publish_json(&self, topic: &str, parts: &http::request::Parts, body: Bytes) -> Resp {
        let cloudevent = parts.headers.contains_key("ce-specversion")
            || parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("application/cloudevents"));
        let events = if cloudevent {
            match evmesh_ingress::decode_events(parts, body) {
                Ok(e) => e,
                Err(r) => return *r,
            }
        } else {
            let m: Message = match serde_json::from_slice(&body) {
                Ok(m) => m,
                Err(e) => return bad(format!("not a CloudEvent nor an EventMesh message: {e}")),
            };
            vec![message_event(&m, topic)]
        };
        match self.cx.publisher.publish(topic, &events).await {
            Ok(_) => ok(),
            Err(e) => publish_failed(&e),
        }
    }

    async fn subscribe(
        &self,
        group: &str,
        url: &str,
        items: &[SubscriptionItem],
        format: Option<&str>,
    ) -> Resp {
        let mode = format.unwrap_or("eventmesh");
        if !["eventmesh", "binary", "structured"].contains(&mode) {
            return bad(format!(
                "pushFormat {mode:?}: expected eventmesh, binary or structured"
            ));
        }
        if let Err(e) = evmesh_connector_url(url) {
            return bad(e);
        }
        for item in items {
            if let Err(e) = evmesh_core::config::validate_topic(&item.topic) {
                return bad(e);
            }
            let key = GroupKey {
                group: group.to_owned(),
                topic: item.topic.clone(),
                mode: item.mode,
                ty: item.ty,
                member: (item.mode == SubscriptionMode::BROADCASTING).then(|| url.to_owned()),
            };
            let member = WebhookMember {
                url: url.to_owned(),
                mode: mode.to_owned(),
            };
            if let Err(e) = self.groups.add_webhook(&key, member).await {
                return bad(e);
            }
        }
        ok()
    }

    async fn unsubscribe(&self, group: &str, url: &str, topics: &[String]) -> Resp {
        let mut found = false;
        for t in topics {
            found |= self.groups.remove_webhook(group, t, url).await;
        }
        if found {
            ok()
        } else {
            ret(
                StatusCode::NOT_FOUND,
                1,
                format!("{url} is not subscribed in group {group:?} to {topics:?}"),
            )
        }
    }

    async fn subscribe_json(&self, body: &[u8]) -> Resp {
        match serde_json::from_slice::<SubscribeBody>(body) {
            Ok(s) => {
                self.subscribe(
                    &s.consumer_group,
                    &s.url,
                    &s.topic,
                    s.push_format.as_deref(),
                )
                .await
            }
            Err(e) => bad(format!("invalid subscribe body: {e}")),
        }
    }

    async fn unsubscribe_json(&self, body: &[u8]) -> Resp {
        match serde_json::from_slice::<UnsubscribeBody>(body) {
            Ok(u) => self.unsubscribe(&u.consumer_group, &u.url, &u.topic).await,
            Err(e) => bad(format!("invalid unsubscribe body: {e}")),
        }
    }

    /// The form-encoded protocol (`code` header).
    async fn form(&self, code: u32, parts: &http::request::Parts, body: &[u8]) -> Resp {
        let f: HashMap<String, String> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
            .collect();
        let field = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
        let cloudevents = parts
            .headers
            .get("protocoltype")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p == "cloudevents");
        match code {
            104 | 101 => {
                let topic = field("topic");
                let event = match form_event(&f, cloudevents) {
                    Ok(e) => e,
                    Err(e) => return bad(e),
                };
                if code == 104 {
                    return match self.cx.publisher.publish(topic, &[event]).await {
                        Ok(_) => ok(),
                        Err(e) => publish_failed(&e),
                    };
                }
                let timeout = field("ttl")
                    .parse::<u64>()
                    .map_or(Duration::from_secs(10), Duration::from_millis)
                    .min(Duration::from_secs(300));
                match self.cx.replies.request(topic, event, timeout).await {
                    Ok(reply) => {
                        let mut out = Vec::new();
                        evmesh_core::format::encode_structured(&reply, &mut out);
                        ret(
                            StatusCode::OK,
                            0,
                            String::from_utf8_lossy(&out).into_owned(),
                        )
                    }
                    Err(evmesh_ingress::reply::RequestError::Publish(e)) => publish_failed(&e),
                    Err(e) => ret(StatusCode::GATEWAY_TIMEOUT, 1, e.to_string()),
                }
            }
            102 => {
                #[derive(Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Entry {
                    #[serde(default)]
                    biz_seq_no: String,
                    topic: String,
                    #[serde(alias = "content")]
                    msg: String,
                }
                let entries: Vec<Entry> = match serde_json::from_str(field("contents")) {
                    Ok(e) => e,
                    Err(e) => return bad(format!("contents: {e}")),
                };
                let mut by_topic: BTreeMap<String, Vec<Event>> = BTreeMap::new();
                for e in entries {
                    let ev = convert::from_message(
                        &e.biz_seq_no,
                        &e.topic,
                        &BTreeMap::new(),
                        e.msg.into_bytes(),
                    );
                    by_topic.entry(e.topic).or_default().push(ev);
                }
                for (topic, events) in by_topic {
                    if let Err(e) = self.cx.publisher.publish(&topic, &events).await {
                        return publish_failed(&e);
                    }
                }
                ok()
            }
            206 => {
                let items: Vec<SubscriptionItem> = match serde_json::from_str(field("topic")) {
                    Ok(i) => i,
                    Err(e) => return bad(format!("topic: {e}")),
                };
                self.subscribe(field("consumergroup"), field("url"), &items, None)
                    .await
            }
            207 => {
                let topics: Vec<String> = match serde_json::from_str(field("topic")) {
                    Ok(t) => t,
                    Err(e) => return bad(format!("topic: {e}")),
                };
                self.unsubscribe(field("consumergroup"), field("url"), &topics)
                    .await
            }
            203 => ok(),
            other => bad(format!(
                "request code {other} is not supported (104, 101, 102, 206, 207, 203)"
            )),
        }
    }
}

/// A webhook URL as the webhook sink accepts it.
fn evmesh_connector_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") && url.len() > "http://".len() {
        Ok(())
    } else {
        Err(format!("url {url:?}: expected http://host[:port]/path"))
    }
}

/// The event of a JSON EventMesh message published to `topic`.
fn message_event(m: &Message, topic: &str) -> Event {
    let id = [&m.unique_id, &m.biz_seq_no]
        .into_iter()
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("{:020}", fastrand::u64(..)));
    let mut props = m.prop.clone();
    props.extend(m.properties.clone());
    let t = if m.topic.is_empty() { topic } else { &m.topic };
    convert::from_message(&id, t, &props, m.content.clone().into_bytes())
}

/// The event of a form-encoded send (`content` is a CloudEvent with `protocoltype:
/// cloudevents`, otherwise the data).
fn form_event(f: &HashMap<String, String>, cloudevents: bool) -> Result<Event, String> {
    let content = f.get("content").ok_or("missing field content")?;
    if cloudevents {
        return evmesh_core::format::decode_structured(content.as_bytes())
            .map_err(|e| e.to_string());
    }
    let id = ["uniqueid", "bizseqno"]
        .iter()
        .filter_map(|k| f.get(*k))
        .find(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("{:020}", fastrand::u64(..)));
    let props: BTreeMap<String, String> = f
        .get("extfields")
        .and_then(|x| serde_json::from_str(x).ok())
        .unwrap_or_default();
    let topic = f.get("topic").map(String::as_str).unwrap_or_default();
    Ok(convert::from_message(
        &id,
        topic,
        &props,
        content.clone().into_bytes(),
    ))
}
