//! evmesh's traces. A publish gets a span (`publish <topic>`, with the store's append as a
//! child), each delivery attempt gets one (`deliver <subscription>`), and their context travels
//! in the event's `traceparent` extension (the CloudEvents distributed-tracing extension) and on
//! the wire to the sink (the `traceparent` header), so one published event gives one connected
//! trace from the publisher through evmesh to the receiver.
//!
//! Spans are exported over OTLP/HTTP in its JSON encoding, in batches, from a background task;
//! the event path only pushes a finished span into a bounded channel (dropped, and counted,
//! when the exporter falls behind: tracing never slows or blocks events). With no endpoint
//! configured, tracing is off and costs one atomic load per event.

use bytes::Bytes;
use evmesh_core::config::TracingConfig;
use evmesh_core::trace::{to_hex, TraceContext};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What kind of work a span is (OTLP's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub cx: TraceContext,
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attr)>,
    /// `Some(message)` marks the span as failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Attr {
    Str(String),
    Int(i64),
}

struct Tracer {
    tx: mpsc::Sender<Span>,
    ratio: f64,
    dropped: AtomicU64,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Starts the exporter when `cfg` names an endpoint (once per process); returns whether
/// tracing is on. Must run inside the tokio runtime.
pub fn init(cfg: &TracingConfig) -> bool {
    let Some(endpoint) = cfg.otlp_endpoint.clone() else {
        return false;
    };
    let (tx, rx) = mpsc::channel(8192);
    if TRACER
        .set(Tracer {
            tx,
            ratio: cfg.sample_ratio,
            dropped: AtomicU64::new(0),
        })
        .is_err()
    {
        return true;
    }
    tokio::spawn(export(endpoint, cfg.service_name.clone(), rx));
    true
}

/// Whether spans are recorded at all.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The context of a new span under `parent` (an incoming `traceparent`), or of a new trace,
/// sampled by the configured ratio; `None` when tracing is off.
pub fn start(parent: Option<TraceContext>) -> Option<TraceContext> {
    let t = TRACER.get()?;
    Some(match parent {
        Some(p) => p.child(),
        None => TraceContext::root(t.ratio >= 1.0 || fastrand::f64() < t.ratio),
    })
}

/// Queues a finished span for export (sampled spans only; never waits).
pub fn record(span: Span) {
    let Some(t) = TRACER.get() else { return };
    if !span.cx.sampled {
        return;
    }
    if t.tx.try_send(span).is_err() {
        let n = t.dropped.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n + 1,
                "the trace exporter is behind; spans are being dropped"
            );
        }
    }
}

/// Spans dropped because the exporter was behind.
pub fn dropped() -> u64 {
    TRACER
        .get()
        .map_or(0, |t| t.dropped.load(Ordering::Relaxed))
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

fn attr_json(key: &str, v: &Attr) -> serde_json::Value {
    let value = match v {
        Attr::Str(s) => serde_json::json!({ "stringValue": s }),
        // OTLP's JSON encoding writes 64-bit integers as strings.
        Attr::Int(i) => serde_json::json!({ "intValue": i.to_string() }),
    };
    serde_json::json!({ "key": key, "value": value })
}

/// One span in OTLP's JSON encoding (ids in hex, times as decimal strings).
pub fn span_json(s: &Span) -> serde_json::Value {
    let mut v = serde_json::json!({
        "traceId": s.cx.trace_hex(),
        "spanId": s.cx.span_hex(),
        "name": s.name,
        "kind": s.kind as i32,
        "startTimeUnixNano": nanos(s.start),
        "endTimeUnixNano": nanos(s.end),
        "attributes": s.attributes.iter().map(|(k, v)| attr_json(k, v)).collect::<Vec<_>>(),
        "status": match &s.error {
            None => serde_json::json!({ "code": 1 }),
            Some(m) => serde_json::json!({ "code": 2, "message": m }),
        },
    });
    if let Some(p) = s.parent {
        v["parentSpanId"] = to_hex(&p).into();
    }
    v
}

/// An OTLP `ExportTraceServiceRequest` in JSON.
pub fn request_json(service: &str, spans: &[Span]) -> serde_json::Value {
    serde_json::json!({
        "resourceSpans": [{
            "resource": { "attributes": [attr_json("service.name", &Attr::Str(service.to_owned()))] },
            "scopeSpans": [{
                "scope": { "name": "evmesh", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(span_json).collect::<Vec<_>>(),
            }],
        }],
    })
}

async fn export(endpoint: String, service: String, mut rx: mpsc::Receiver<Span>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut failures = 0u64;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Up to 512 spans, or what arrives within 200 ms of the first.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while batch.len() < 512 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                _ => break,
            }
        }
        let body = request_json(&service, &batch).to_string();
        let req = match http::Request::post(&endpoint)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(endpoint = %endpoint, error = %e, "invalid OTLP endpoint; tracing stops");
                return;
            }
        };
        let sent = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
        let ok = matches!(&sent, Ok(Ok(r)) if r.status().is_success());
        if !ok {
            failures += 1;
            if failures.is_power_of_two() {
                let why = match sent {
                    Ok(Ok(r)) => format!("answered {}", r.status()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".into(),
                };
                tracing::warn!(endpoint = %endpoint, spans = batch.len(), failures, reason = %why, "exporting spans failed; they are dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json() {
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let cx = parent.child();
        let s = Span {
            cx,
            parent: Some(parent.span_id),
            name: "deliver audit".into(),
            kind: Kind::Client,
            start: UNIX_EPOCH + Duration::from_nanos(1_000),
            end: UNIX_EPOCH + Duration::from_nanos(2_500),
            attributes: vec![
                ("evmesh.subscription", Attr::Str("audit".into())),
                ("evmesh.attempt", Attr::Int(2)),
            ],
            error: Some("500".into()),
        };
        let v = request_json("svc", &[s]);
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["spanId"], cx.span_hex());
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1000");
        assert_eq!(span["endTimeUnixNano"], "2500");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["attributes"][1]["value"]["intValue"], "2");
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
    }
}
