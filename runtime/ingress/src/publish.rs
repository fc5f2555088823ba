//! The one publish path: validate the topic, append durably, and only then answer. HTTP
//! ingest, the TCP protocol, the EventMesh API and every source use it, so they differ only in
//! framing.

use evmesh_core::config::validate_topic;
use evmesh_core::publish::{AppendAck, Publish, PublishError};
use evmesh_core::Event;
use evmesh_delivery::deadletter;
use evmesh_store::{EventLog, StoreError};
use futures_util::future::BoxFuture;
use std::sync::Arc;

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
        self.log
            .append(topic, events)
            .await
            .map_err(|e| classify(topic, e))
    }
}

/// A topic publishers may use: a valid name, not one of evmesh's own (`__…`), except a
/// request-reply topic (`__replies.<instance>`), where a responder may publish its answer.
fn check_topic(topic: &str) -> Result<(), PublishError> {
    match topic.strip_prefix(evmesh_core::publish::REPLY_PREFIX) {
        Some(instance) => evmesh_core::config::validate_name(instance)
            .map_err(|e| PublishError::Invalid(format!("reply topic {topic:?}: {e}"))),
        None => validate_topic(topic).map_err(PublishError::Invalid),
    }
}

fn classify(topic: &str, e: StoreError) -> PublishError {
    match e {
        StoreError::TooLarge(_) => PublishError::TooLarge(e.to_string()),
        e if e.is_permanent() => PublishError::Invalid(e.to_string()),
        e => {
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
        let fut = self.log.append(&topic, events);
        Box::pin(async move { fut.await.map_err(|e| classify(&topic, e)) })
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
