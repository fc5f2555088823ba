//! The sink side of a subscription: anything that can take one event and say how it went.

use crate::event::Event;
use futures_util::future::BoxFuture;
use std::fmt;
use std::time::Duration;

/// How a failed delivery may be tried again (after arroyo's `RetryHint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// Try again per the subscription's backoff policy.
    Retryable,
    /// Do not try again: dead-letter now.
    NotRetryable,
    /// The sink asked for this much time before the next attempt (`Retry-After`).
    RetryAfter(Duration),
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError {
    pub message: String,
    pub hint: RetryHint,
    /// The protocol status of the last attempt (HTTP status for webhooks), when there was one.
    pub status: Option<u16>,
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            hint: RetryHint::Retryable,
            status: None,
        }
    }

    pub fn not_retryable(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            hint: RetryHint::NotRetryable,
            status: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SinkError {}

/// A successful attempt; the sink may answer with an event (Knative reply semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    pub reply: Option<Event>,
}

/// A running sink. Built from its config; shared by every delivery of a subscription.
pub trait Sink: Send + Sync + 'static {
    /// One attempt to deliver one event, bounded by `timeout`.
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>>;

    /// A short description for logs (`webhook http://…`).
    fn describe(&self) -> String;
}
