//! The one publish path every way in shares (HTTP ingest, the TCP protocol, the EventMesh API,
//! sources): validate, append durably, and only then answer.

use crate::Event;
use futures_util::future::BoxFuture;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub first: u64,
    pub count: u64,
}

/// Why a publish did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The request is never accepted as it is (a bad topic name): trying again cannot help.
    #[error("{0}")]
    Invalid(String),
    /// An event is larger than the store accepts: trying again cannot help.
    #[error("{0}")]
    TooLarge(String),
    /// The store failed or is shutting down: nothing was acknowledged; try again.
    #[error("{0}")]
    Unavailable(String),
}

impl PublishError {
    /// Whether the same input would fail again.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, PublishError::Unavailable(_))
    }
}

/// Durable publishing, as every listener and source uses it.
pub trait Publish: Send + Sync + 'static {
    /// Stores `events` in `topic` as one unit; resolves once they are durable.
    fn publish(
        &self,
        topic: &str,
        events: &[Event],
    ) -> BoxFuture<'static, Result<AppendAck, PublishError>>;

    /// Keeps an event a source could not publish, with the reason, in that source's
    /// dead-letter list (without its data when the data is what did not fit).
    fn dead_letter_source(
        &self,
        source: &str,
        event: Event,
        reason: &str,
    ) -> BoxFuture<'static, Result<(), PublishError>>;
}

/// Request-reply: the extension that pairs a reply with its request.
pub const CORRELATION: &str = "correlationid";
/// Request-reply: the extension naming the topic a reply goes to.
pub const REPLY_TO: &str = "replyto";
/// Request-reply: each instance's reply topic is `__replies.<instance>`.
pub const REPLY_PREFIX: &str = "__replies.";

/// Makes `reply` the answer to `request`: it carries the request's `correlationid`. Returns
/// the topic it goes to (the request's `replyto`), if the request asked for a reply there.
pub fn answer(request: &Event, reply: &mut Event) -> Option<String> {
    let to = request.extension(REPLY_TO)?.to_canonical_string();
    if !to.starts_with(REPLY_PREFIX) {
        return None;
    }
    if reply.extension(CORRELATION).is_none() {
        if let Some(c) = request.extension(CORRELATION) {
            reply.set_extension(CORRELATION, c.clone());
        }
    }
    reply.remove_extension(REPLY_TO);
    Some(to)
}
