//! The one publish path: validate the topic, append durably, and only then answer. HTTP
//! ingest, the TCP protocol, the EventMesh API and every source use it, so they differ only in
//! framing.

use evmesh_core::config::validate_topic;
use evmesh_core::publish::{AppendAck, Publish, PublishError};
use evmesh_core::trace::{TraceContext, TRACEPARENT};
use evmesh_core::{Event, ExtValue};
use evmesh_delivery::deadletter;
use evmesh_metrics::Rejection;
use evmesh_store::{EventLog, StoreError};
use evmesh_telemetry::{Attr, Kind, Span};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::SystemTime;

pub struct PublishPath {
    log: Arc<dyn EventLog>,
}

impl PublishPath {
    pub fn new(log: Arc<dyn EventLog>) -> Arc<Self> {
        Arc::new(PublishPath { log })
    }

    /// Stores `events` in `topic` as one unit; resolves once they are durable.
    pub async fn publish(&self, topic: &str, events: &[Event]) -> Result<AppendAck, PublishError> {
        check_topic(topic)?;
        let traced = Traced::start(events);
        let events = traced.as_ref().map_or(events, |t| &t.events);
        let appending = SystemTime::now();
        let stored = self.log.append(topic, events).await;
        if let Some(t) = traced {
            t.finish(topic, appending, stored.as_ref().err());
        }
        let ack = stored.map_err(|e| classify(topic, e))?;
        evmesh_metrics::global().accepted(topic, ack.count as u64);
        Ok(ack)
    }
}

/// A topic publishers may use: a valid name, not one of evmesh's own (`__…`), except a
/// request-reply topic (`__replies.<instance>`), where a responder may publish its answer.
fn check_topic(topic: &str) -> Result<(), PublishError> {
    let checked = match topic.strip_prefix(evmesh_core::publish::REPLY_PREFIX) {
        Some(instance) => evmesh_core::config::validate_name(instance)
            .map_err(|e| PublishError::Invalid(format!("reply topic {topic:?}: {e}"))),
        None => validate_topic(topic).map_err(PublishError::Invalid),
    };
    if checked.is_err() {
        evmesh_metrics::global().rejected(Rejection::InvalidTopic);
    }
    checked
}

/// The publisher's error for a store failure (counted as a rejection).
fn classify(topic: &str, e: StoreError) -> PublishError {
    let m = evmesh_metrics::global();
    match e {
        StoreError::TooLarge(_) => {
            m.rejected(Rejection::TooLarge);
            PublishError::TooLarge(e.to_string())
        }
        e if e.is_permanent() => {
            m.rejected(Rejection::Malformed);
            PublishError::Invalid(e.to_string())
        }
        e => {
            m.rejected(Rejection::Unavailable);
            tracing::error!(topic = %topic, error = %e, "storing events failed");
            PublishError::Unavailable(format!("the events were not stored: {e}"))
        }
    }
}

impl Publish for PublishPath {
    fn publish(
        &self,
        topic: &str,
        events: &[Event],
    ) -> BoxFuture<'static, Result<AppendAck, PublishError>> {
        if let Err(e) = check_topic(topic) {
            return Box::pin(async move { Err(e) });
        }
        let topic = topic.to_owned();
        let traced = Traced::start(events);
        let fut = self
            .log
            .append(&topic, traced.as_ref().map_or(events, |t| &t.events));
        Box::pin(async move {
            let appending = SystemTime::now();
            let stored = fut.await;
            if let Some(t) = traced {
                t.finish(&topic, appending, stored.as_ref().err());
            }
            let ack = stored.map_err(|e| classify(&topic, e))?;
            evmesh_metrics::global().accepted(&topic, ack.count as u64);
            Ok(ack)
        })
    }

    fn dead_letter_source(
        &self,
        source: &str,
        event: Event,
        reason: &str,
    ) -> BoxFuture<'static, Result<(), PublishError>> {
        let dead = deadletter::source_dead_letter(event, source, reason);
        let topic = deadletter::source_dlq_topic(source);
        let fut = self.log.append(&topic, std::slice::from_ref(&dead));
        let (source, id) = (source.to_owned(), dead.id.clone());
        Box::pin(async move {
            match fut.await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => {
                    // Not even its attributes fit: say so loudly, and move on rather than
                    // stall the source forever.
                    tracing::error!(source = %source, id = %id, error = %e, "a record cannot be stored, not even in the dead-letter list; skipped");
                    Ok(())
                }
                Err(e) => Err(classify(&topic, e)),
            }
        })
    }
}

/// A traced publish: the events as stored (each with the `traceparent` of its publish span, so
/// that deliveries continue the trace) and each span's context and parent.
struct Traced {
    events: Vec<Event>,
    spans: Vec<(TraceContext, Option<TraceContext>, String)>,
    start: SystemTime,
}

impl Traced {
    /// `None` when no event is traced (the events are stored as they are).
    fn start(events: &[Event]) -> Option<Traced> {
        if !evmesh_telemetry::enabled() {
            return None;
        }
        let start = SystemTime::now();
        // Decide first, copy only when some event is traced: with sampling at 0% and no
        // incoming context, tracing costs no copy of the events.
        let mut decided = Vec::with_capacity(events.len());
        for e in events {
            let parent = match e.extension(TRACEPARENT) {
                Some(ExtValue::String(s)) => TraceContext::parse(s),
                _ => None,
            };
            let cx = evmesh_telemetry::start(parent)
                // A new trace that is not sampled is not worth its bytes on every event.
                .filter(|cx| parent.is_some() || cx.sampled);
            decided.push((parent, cx));
        }
        if decided.iter().all(|(_, cx)| cx.is_none()) {
            return None;
        }
        let mut out = events.to_vec();
        let mut spans = Vec::with_capacity(out.len());
        for (e, (parent, cx)) in out.iter_mut().zip(decided) {
            let Some(cx) = cx else { continue };
            e.set_extension(TRACEPARENT, ExtValue::String(cx.to_string()));
            spans.push((cx, parent, e.id.clone()));
        }
        Some(Traced {
            events: out,
            spans,
            start,
        })
    }

    /// Records each event's publish span and its store-append child.
    fn finish(self, topic: &str, appending: SystemTime, failed: Option<&StoreError>) {
        let end = SystemTime::now();
        let error = failed.map(|e| e.to_string());
        for (cx, parent, id) in self.spans {
            let store = cx.child();
            evmesh_telemetry::record(Span {
                cx: store,
                parent: Some(cx.span_id),
                name: "store append".into(),
                kind: Kind::Internal,
                start: appending,
                end,
                attributes: vec![("messaging.destination.name", Attr::Str(topic.to_owned()))],
                error: error.clone(),
            });
            evmesh_telemetry::record(Span {
                cx,
                parent: parent.map(|p| p.span_id),
                name: format!("publish {topic}"),
                kind: Kind::Server,
                start: self.start,
                end,
                attributes: vec![
                    ("messaging.destination.name", Attr::Str(topic.to_owned())),
                    ("cloudevents.event_id", Attr::Str(id)),
                ],
                error: error.clone(),
            });
        }
    }
}
