//! Request-reply on every store: a requester's event goes out like any other, carrying two
//! extensions, `correlationid` and `replyto` (this instance's reply topic,
//! `__replies.<instance>`); whoever answers sends an event with the same `correlationid` to
//! `replyto` (a webhook answering with a CloudEvent does this by itself: delivery routes the
//! reply there; a TCP client sends `RESPONSE_TO_SERVER`; anyone may publish to it). Each
//! instance reads its own reply topic through an internal subscription and hands each reply
//! to the request waiting for it. A reply that finds no one waiting (it came after the
//! timeout) is dropped with a log line.

use crate::PublishPath;
use evmesh_core::component::ComponentSpec;
use evmesh_core::config::{DeliverySpec, StartPosition, SubscriptionConfig};
use evmesh_core::duration::IsoDuration;
use evmesh_core::publish::PublishError;
use evmesh_core::sink::{Delivered, Sink, SinkError};
use evmesh_core::{Event, ExtValue};
use evmesh_delivery::{DeliveryError, Supervisor};
use evmesh_router::Origin;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

pub use evmesh_core::publish::{answer, CORRELATION, REPLY_PREFIX, REPLY_TO};

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the request was not published: {0}")]
    Publish(#[from] PublishError),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

type Waiters = Mutex<HashMap<String, oneshot::Sender<Event>>>;

/// This instance's requests waiting for replies.
pub struct Replies {
    topic: String,
    publisher: Arc<PublishPath>,
    waiters: Waiters,
}

impl Replies {
    /// Starts reading this instance's reply topic.
    pub async fn start(
        supervisor: &Supervisor,
        publisher: Arc<PublishPath>,
        instance: &str,
    ) -> Result<Arc<Replies>, DeliveryError> {
        let replies = Arc::new(Replies {
            topic: format!("{REPLY_PREFIX}{instance}"),
            publisher,
            waiters: Mutex::new(HashMap::new()),
        });
        let mut sub = SubscriptionConfig::new(
            format!("replies.{instance}"),
            replies.topic.clone(),
            ComponentSpec::new("replies"),
        );
        sub.start = StartPosition::Latest;
        sub.max_in_flight = 1024;
        sub.delivery = Some(DeliverySpec {
            retry: u32::MAX,
            backoff_delay: IsoDuration(Duration::from_millis(50)),
            backoff_max: IsoDuration(Duration::from_secs(1)),
            ..Default::default()
        });
        let sink = Arc::new(ReplySink {
            replies: Arc::downgrade(&replies),
        });
        supervisor
            .start_with_sink(sub, Origin::Internal, sink)
            .await?;
        Ok(replies)
    }

    /// This instance's reply topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `event` to `topic` as a request and waits up to `timeout` for its reply.
    pub async fn request(
        &self,
        topic: &str,
        mut event: Event,
        timeout: Duration,
    ) -> Result<Event, RequestError> {
        let correlation = match event.extension(CORRELATION) {
            Some(c) => c.to_canonical_string(),
            None => format!("{}-{:016x}", event.id, fastrand::u64(..)),
        };
        event.set_extension(CORRELATION, ExtValue::String(correlation.clone()));
        event.set_extension(REPLY_TO, ExtValue::String(self.topic.clone()));
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(correlation.clone(), tx);
        }
        let forget = || {
            if let Ok(mut w) = self.waiters.lock() {
                w.remove(&correlation);
            }
        };
        if let Err(e) = self
            .publisher
            .publish(topic, std::slice::from_ref(&event))
            .await
        {
            forget();
            return Err(e.into());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                forget();
                Err(RequestError::Timeout(timeout))
            }
        }
    }

    fn resolve(&self, reply: &Event) {
        let Some(c) = reply
            .extension(CORRELATION)
            .map(ExtValue::to_canonical_string)
        else {
            tracing::warn!(id = %reply.id, "a reply without a correlationid; dropped");
            return;
        };
        let waiter = self.waiters.lock().ok().and_then(|mut w| w.remove(&c));
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply.clone());
            }
            None => {
                tracing::info!(correlation = %c, "a reply came after its request gave up; dropped")
            }
        }
    }
}

/// Hands replies read from the reply topic to their waiting requests.
struct ReplySink {
    replies: Weak<Replies>,
}

impl Sink for ReplySink {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        if let Some(r) = self.replies.upgrade() {
            r.resolve(event);
        }
        Box::pin(async { Ok(Delivered::default()) })
    }

    fn describe(&self) -> String {
        "request-reply waiters".into()
    }
}
