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

/// What a sink knows of its own health, for readiness checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkHealth {
    /// Nothing known yet (no delivery attempted, nothing probed).
    Unknown,
    /// The last attempts went through.
    Ready,
    /// The destination is failing; why.
    Unhealthy(String),
}

/// A running sink. Built from its config; shared by every delivery of a subscription.
pub trait Sink: Send + Sync + 'static {
    /// One attempt to deliver one event; the attempt (not any wait for a free connection)
    /// is bounded by `timeout`.
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>>;

    /// One attempt to deliver several events, one result per event in order. Sinks whose
    /// protocol batches (Kafka, a webhook taking `application/cloudevents-batch+json`)
    /// override it; the default delivers them one by one.
    fn deliver_batch<'a>(
        &'a self,
        events: &'a [&'a Event],
        timeout: Duration,
    ) -> BoxFuture<'a, Vec<Result<Delivered, SinkError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                out.push(self.deliver(e, timeout).await);
            }
            out
        })
    }

    /// What the sink knows of its destination's health.
    fn health(&self) -> SinkHealth {
        SinkHealth::Unknown
    }

    /// Flushes what the sink holds (buffers, producer queues) at shutdown, then releases
    /// its connections. Deliveries are finished before this is called.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// A short description for logs (`webhook http://…`).
    fn describe(&self) -> String;
}
