//! The ways in. [`PublishPath`] is the one publish path (validate → append → answer when
//! durable) that every listener and source shares; [`listener`] is the seam a listener plugs
//! into; [`server`] is the HTTP server loop (HTTP/1.1 and h2c); and this module is HTTP ingest:
//! `POST /topics/{topic}` takes CloudEvents in binary, structured and batched mode and answers
//! `202` only once the store has made them durable.

pub mod listener;
mod publish;
pub mod reply;
pub mod server;

use bytes::Bytes;
use evmesh_core::component::{Check, Kind};
use evmesh_core::config::ConfigError;
use evmesh_core::publish::PublishError;
use evmesh_core::{format, http_binding, DecodeError, Event};
use evmesh_metrics::Rejection;
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use listener::{ListenAddress, ListenerConfig, ListenerContext, ListenerHandle};
use std::sync::Arc;

pub use publish::PublishPath;
pub use server::{serve, Handler, ServerHandle};

/// `server.http`: the HTTP ingest listener's address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct HttpIngestConfig(pub ListenAddress);

impl Kind for HttpIngestConfig {
    const KIND: &'static str = "http";
}

impl Check for HttpIngestConfig {
    fn check(&self) -> Vec<ConfigError> {
        self.0.check()
    }
}

impl HttpIngestConfig {
    /// EventMesh's HTTP port.
    pub fn default_value() -> serde_yaml::Value {
        "127.0.0.1:10105".into()
    }
}

impl ListenerConfig for HttpIngestConfig {
    fn label(&self) -> &'static str {
        "http ingest"
    }

    fn start(&self, cx: ListenerContext) -> BoxFuture<'static, Result<ListenerHandle, String>> {
        let addr = self.0 .0.clone();
        Box::pin(async move {
            let ingest = Arc::new(Ingest {
                publisher: cx.publisher.clone(),
                opts: IngestOptions {
                    max_body_bytes: cx.max_body_bytes,
                },
                replies: Some(cx.replies.clone()),
                routes: Some(cx.routes.clone()),
            });
            let h = serve(&addr, "http", ingest, cx.stop.clone(), cx.drain)
                .await
                .map_err(|e| e.to_string())?;
            Ok(ListenerHandle {
                addr: h.addr,
                task: h.task,
            })
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the ingest listener.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub max_body_bytes: usize,
}

/// The ingest request handler.
pub struct Ingest {
    publisher: Arc<PublishPath>,
    opts: IngestOptions,
    /// Request-reply (`POST /topics/{topic}/request`).
    replies: Option<Arc<reply::Replies>>,
    /// Other APIs on this port (the EventMesh API).
    routes: Option<Arc<listener::HttpRoutes>>,
}

pub type Resp = Response<Full<Bytes>>;

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON error body: `{"error": "..."}` plus any detail fields.
pub fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json(status, &serde_json::json!({ "error": message.into() }))
}

fn decode_error(e: &DecodeError) -> Resp {
    let mut body = serde_json::json!({ "error": e.to_string() });
    if let Some(ev) = e.event_error() {
        body["attribute"] = ev.attribute.clone().into();
        body["rule"] = ev.rule.clone().into();
    }
    if let Some(i) = e.batch_index() {
        body["index"] = i.into();
    }
    json(StatusCode::BAD_REQUEST, &body)
}

/// How a request carries its events, read once from its headers.
enum Mode<'a> {
    Binary,
    Structured,
    Batch,
    /// Another `application/cloudevents+*` format (protobuf, avro, …).
    Unsupported(&'a str),
}

fn mode(h: &http::HeaderMap) -> Mode<'_> {
    let essence = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    let is = |t: &str| essence.eq_ignore_ascii_case(t);
    if is("application/cloudevents-batch+json") {
        Mode::Batch
    } else if is("application/cloudevents+json") {
        Mode::Structured
    } else if !h.contains_key("ce-specversion")
        && essence.len() >= 23
        && essence[..23].eq_ignore_ascii_case("application/cloudevents")
    {
        Mode::Unsupported(essence)
    } else {
        Mode::Binary
    }
}

/// Reads a body up to `max` bytes; `Err` is the response to send.
pub async fn read_body(
    req: Request<Incoming>,
    max: usize,
) -> Result<(http::request::Parts, Bytes), Resp> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the {max}-byte limit (server.maxBodyBytes)"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok((parts, c.to_bytes())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {e}"),
        )),
    }
}

/// Decodes a request body in binary, structured or batched mode (by its content type).
pub fn decode_events(parts: &http::request::Parts, body: Bytes) -> Result<Vec<Event>, Box<Resp>> {
    decode_as(mode(&parts.headers), parts, body)
}

fn decode_as(
    mode: Mode<'_>,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Vec<Event>, Box<Resp>> {
    let decoded: Result<Vec<Event>, DecodeError> = match mode {
        Mode::Batch => format::decode_batch(&body),
        Mode::Structured => format::decode_structured(&body).map(|e| vec![e]),
        Mode::Unsupported(mt) => return Err(Box::new(unsupported(mt))),
        Mode::Binary => {
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()));
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes());
            http_binding::decode_binary(headers, ct, body).map(|e| vec![e])
        }
    };
    decoded.map_err(|e| Box::new(decode_error(&e)))
}

fn unsupported(mt: &str) -> Resp {
    error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("event format {mt:?} is not supported; use application/cloudevents+json, application/cloudevents-batch+json or binary mode"),
    )
}

impl Ingest {
    pub fn new(publisher: Arc<PublishPath>, opts: IngestOptions) -> Arc<Self> {
        Arc::new(Ingest {
            publisher,
            opts,
            replies: None,
            routes: None,
        })
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        if path == "/healthz" {
            return json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
        }
        if let Some(route) = self.routes.as_ref().and_then(|r| r.find(&req)) {
            return route.call(req).await;
        }
        if let Some(topic) = path
            .strip_prefix("/topics/")
            .and_then(|p| p.strip_suffix("/request"))
        {
            let topic = topic.to_owned();
            return self.request(&topic, req).await;
        }
        let Some(topic) = path.strip_prefix("/topics/") else {
            return error(
                StatusCode::NOT_FOUND,
                format!("no route for {path}; publish with POST /topics/{{topic}}"),
            );
        };
        let topic = topic.trim_end_matches('/').to_owned();
        if req.method() != Method::POST {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{} is not allowed on /topics/{{topic}}; use POST",
                    req.method()
                ),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let m = evmesh_metrics::global();
        if let Err(e) = evmesh_core::config::validate_topic(&topic) {
            m.rejected(Rejection::InvalidTopic);
            return error(StatusCode::BAD_REQUEST, e);
        }
        if let Mode::Unsupported(mt) = mode(req.headers()) {
            m.rejected(Rejection::Malformed);
            return unsupported(mt);
        }
        let (parts, body) = match read_body(req, self.opts.max_body_bytes).await {
            Ok(x) => x,
            Err(resp) => {
                m.rejected(if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Rejection::TooLarge
                } else {
                    Rejection::Malformed
                });
                return resp;
            }
        };
        let mut events = match decode_as(mode(&parts.headers), &parts, body) {
            Ok(e) => e,
            Err(resp) => {
                m.rejected(Rejection::Malformed);
                return *resp;
            }
        };
        trace_from_headers(&parts.headers, &mut events);
        match self.publisher.publish(&topic, &events).await {
            Ok(ack) => {
                let body = format!(
                    r#"{{"accepted":{},"firstOffset":{}}}"#,
                    ack.count, ack.first
                );
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = StatusCode::ACCEPTED;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => publish_error(&e),
        }
    }
}

impl Ingest {
    /// `POST /topics/{topic}/request[?timeout=PT5S]`: publishes one event as a request and
    /// answers with its reply (structured mode), or `504` when none came in time.
    async fn request(&self, topic: &str, req: Request<Incoming>) -> Resp {
        let Some(replies) = &self.replies else {
            return error(StatusCode::NOT_FOUND, "request-reply is not served here");
        };
        if req.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        }
        let timeout = match request_timeout(req.uri().query()) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let (parts, body) = match read_body(req, self.opts.max_body_bytes).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let mut events = match decode_as(mode(&parts.headers), &parts, body) {
            Ok(e) => e,
            Err(r) => return *r,
        };
        if events.len() != 1 {
            return error(StatusCode::BAD_REQUEST, "a request is one event");
        }
        let Some(event) = events.pop() else {
            return error(StatusCode::BAD_REQUEST, "a request is one event");
        };
        match replies.request(topic, event, timeout).await {
            Ok(reply) => {
                let mut out = Vec::with_capacity(256);
                format::encode_structured(&reply, &mut out);
                let mut r = Response::new(Full::new(Bytes::from(out)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/cloudevents+json"),
                );
                r
            }
            Err(reply::RequestError::Publish(e)) => publish_error(&e),
            Err(e @ reply::RequestError::Timeout(_)) => {
                error(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
        }
    }
}

/// `timeout=` (ISO-8601) of a request; 10 s when absent, at most 5 minutes.
fn request_timeout(query: Option<&str>) -> Result<std::time::Duration, String> {
    let raw = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("timeout="));
    let Some(raw) = raw else {
        return Ok(std::time::Duration::from_secs(10));
    };
    let d = evmesh_core::duration::IsoDuration::parse(raw)
        .ok_or_else(|| format!("timeout {raw:?} is not an ISO-8601 duration (PT5S)"))?;
    if d.0.is_zero() || d.0 > std::time::Duration::from_secs(300) {
        return Err(format!("timeout {raw:?} must be between 0 and PT5M"));
    }
    Ok(d.0)
}

/// With tracing on, a W3C `traceparent` request header is the parent of events that carry no
/// `traceparent` extension of their own.
pub fn trace_from_headers(headers: &http::HeaderMap, events: &mut [Event]) {
    use evmesh_core::trace::{TraceContext, TRACEPARENT};
    if !evmesh_telemetry::enabled() {
        return;
    }
    let Some(cx) = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
    else {
        return;
    };
    let state = headers
        .get(evmesh_core::trace::TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.trim().is_empty());
    for e in events {
        if e.extension(TRACEPARENT).is_none() {
            e.set_extension(TRACEPARENT, evmesh_core::ExtValue::String(cx.to_string()));
            if let Some(s) = state {
                e.set_extension(
                    evmesh_core::trace::TRACESTATE,
                    evmesh_core::ExtValue::String(s.to_owned()),
                );
            }
        }
    }
}

/// The HTTP answer to a failed publish.
pub fn publish_error(e: &PublishError) -> Resp {
    let status = match e {
        PublishError::Invalid(_) => StatusCode::BAD_REQUEST,
        PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        PublishError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

impl Handler for Ingest {
    fn call(self: Arc<Self>, req: Request<Incoming>) -> BoxFuture<'static, Resp> {
        Box::pin(async move { self.handle(req).await })
    }
}
