//! A webhook receiver to run inside an application: evmesh (or an EventMesh runtime) POSTs
//! events to it, in binary or structured mode or in EventMesh's push format; the handler
//! answers `Ok(None)` (taken), `Ok(Some(reply))` (taken, and here is a reply event: it goes to
//! the requester or the subscription's reply topic) or `Err(reason)` (refused: evmesh retries it
//! per its policy).
//!
//! ```no_run
//! # async fn demo() -> Result<(), evmesh_sdk::SdkError> {
//! let receiver = evmesh_sdk::webhook::serve("127.0.0.1:8080", |event| async move {
//!     println!("got {event}");
//!     Ok(None)
//! })
//! .await?;
//! println!("subscribe http://{}/", receiver.addr());
//! # Ok(()) }
//! ```

use crate::SdkError;
use bytes::Bytes;
use cloudevents::Event;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a handler answers.
pub type Answer = Result<Option<Event>, String>;

/// A running receiver; dropping it stops it.
pub struct Receiver {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handler` on `addr` (`127.0.0.1:0` picks a free port).
pub async fn serve<F, Fut>(addr: &str, handler: F) -> Result<Receiver, SdkError>
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| SdkError::Connect(format!("binding {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| SdkError::Connect(e.to_string()))?;
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let h = h.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(req, h.as_ref()).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Receiver { addr: local, task })
}

async fn handle<F, Fut>(req: Request<Incoming>, handler: &F) -> Response<Full<Bytes>>
where
    F: Fn(Event) -> Fut,
    Fut: Future<Output = Answer>,
{
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, 8 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let eventmesh = parts.headers.contains_key("code");
    let event = match decode(&parts.headers, body) {
        Ok(e) => e,
        Err(msg) => return plain(StatusCode::BAD_REQUEST, msg),
    };
    match handler(event).await {
        Ok(_) if eventmesh => {
            let mut r = Response::new(Full::new(Bytes::from_static(br#"{"retCode":0}"#)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Ok(None) => plain(StatusCode::OK, String::new()),
        Ok(Some(reply)) => match serde_json::to_vec(&reply) {
            Ok(body) => {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/cloudevents+json"),
                );
                r
            }
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r
}

/// The event in a request: EventMesh's push format (`content` form field), structured
/// (`application/cloudevents+json`) or binary mode (`ce-*` headers).
pub fn decode(headers: &http::HeaderMap, body: Bytes) -> Result<Event, String> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        let content =
            form_field(&body, "content").ok_or("an EventMesh push without a `content` field")?;
        return serde_json::from_str(&content)
            .map_err(|e| format!("the pushed `content` is not a CloudEvent: {e}"));
    }
    if ct.starts_with("application/cloudevents+json") {
        return serde_json::from_slice(&body).map_err(|e| format!("not a CloudEvent: {e}"));
    }
    cloudevents::binding::http::to_event(headers, body.to_vec())
        .map_err(|e| format!("not a binary-mode CloudEvent: {e}"))
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_percent_decoded() {
        let body = b"topic=t&content=%7B%22a%22%3A+1%7D";
        assert_eq!(form_field(body, "content").as_deref(), Some("{\"a\": 1}"));
        assert_eq!(form_field(body, "nope"), None);
    }
}
