//! The RocketMQ sink: each event is one message; delivered means the broker answered
//! `SEND_OK`. With `ordering: key` on the subscription, events of one `partitionkey` go to one
//! queue (RocketMQ's hash selector rule), so consumers see them in order.

use crate::binding;
use crate::client::{self, queue_for_key, Cluster};
use crate::config::{RocketMqMode, RocketMqSinkConfig};
use evmesh_core::component::{SinkConfig, SinkContext};
use evmesh_core::config::Ordering;
use evmesh_core::sink::{Delivered, Sink, SinkError, SinkHealth};
use evmesh_core::Event;
use futures_util::future::BoxFuture;
use rocketmq_client_rust::{ClientError, SendResult, SendStatus};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;

impl SinkConfig for RocketMqSinkConfig {
    fn build(&self, cx: &SinkContext) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(RocketMqSink::new(self, cx.ordering)))
    }
}

pub struct RocketMqSink {
    cfg: RocketMqSinkConfig,
    ordered: bool,
    /// Started on first use, so that a name server that is down when evmesh starts is a
    /// retried delivery rather than a refused configuration.
    cluster: OnceCell<Arc<Cluster>>,
    health: Mutex<SinkHealth>,
}

impl RocketMqSink {
    pub fn new(cfg: &RocketMqSinkConfig, ordering: Ordering) -> Self {
        RocketMqSink {
            cfg: cfg.clone(),
            ordered: ordering == Ordering::Key,
            cluster: OnceCell::new(),
            health: Mutex::new(SinkHealth::Unknown),
        }
    }

    async fn cluster(&self) -> Result<&Arc<Cluster>, SinkError> {
        self.cluster
            .get_or_try_init(|| Cluster::get(&self.cfg.namesrv, &self.cfg.producer_group))
            .await
            .map_err(|e| SinkError::retryable(e.to_string()))
    }

    async fn send(&self, event: &Event, timeout: Duration) -> Result<Delivered, SinkError> {
        let out = binding::encode(event, self.cfg.mode, &self.cfg.keys)
            .map_err(|e| SinkError::not_retryable(e.to_string()))?;
        let size = out.body.len();
        if size > self.cfg.max_message_size {
            return Err(SinkError::not_retryable(format!(
                "rocketmq topic {}: a body of {size} bytes is over maxMessageSize ({})",
                self.cfg.topic, self.cfg.max_message_size
            )));
        }
        let msg = client::message(&self.cfg.topic, self.cfg.tag.as_deref(), out)
            .map_err(|e| SinkError::not_retryable(format!("rocketmq message: {e}")))?;
        let cluster = self.cluster().await?;
        let queues = cluster.queues(&self.cfg.topic).await;
        // With `ordering: key`, one key's events go to one queue (and, sent one at a time by
        // the delivery stream, arrive in order); otherwise they are spread.
        let key = self.ordered.then(|| event.partition_key()).flatten();
        let mq = match key {
            Some(k) => queue_for_key(&queues, &k),
            None => cluster.round_robin(&queues),
        };
        let result = match mq {
            // No route yet: the client's own send, which lets a broker with
            // `autoCreateTopicEnable` create the topic (and says so when none can).
            None => {
                match tokio::time::timeout(timeout, cluster.send_unrouted(msg, timeout)).await {
                    Err(_) => Err(SinkError::retryable(format!(
                        "rocketmq topic {}: no answer within {timeout:?}",
                        self.cfg.topic
                    ))),
                    Ok(r) => outcome(&self.cfg.topic, r),
                }
            }
            Some(mq) => {
                match tokio::time::timeout(timeout, cluster.send(mq, msg, size, timeout)).await {
                    Err(_) => Err(SinkError::retryable(format!(
                        "rocketmq topic {}: no answer within {timeout:?}",
                        self.cfg.topic
                    ))),
                    Ok(r) => outcome(&self.cfg.topic, r.map(Some)),
                }
            }
        };
        if result.is_err() {
            cluster.forget(&self.cfg.topic);
        }
        if let Ok(mut h) = self.health.lock() {
            *h = match &result {
                Ok(_) => SinkHealth::Ready,
                Err(e) => SinkHealth::Unhealthy(e.message.clone()),
            };
        }
        result
    }
}

/// `SEND_OK` is delivered; the other statuses (the broker took the message but did not flush
/// it or copy it to a replica in time) and errors go through the retry policy, except errors
/// the same message would hit again.
fn outcome(
    topic: &str,
    r: Result<Option<SendResult>, ClientError>,
) -> Result<Delivered, SinkError> {
    match r {
        Ok(Some(s)) if s.send_status == SendStatus::SendOk => Ok(Delivered::default()),
        Ok(Some(s)) => Err(SinkError::retryable(format!(
            "rocketmq topic {topic}: the broker answered {:?}",
            s.send_status
        ))),
        Ok(None) => Err(SinkError::retryable(format!(
            "rocketmq topic {topic}: no send result"
        ))),
        Err(e) => Err(classify(topic, &e)),
    }
}

/// Errors that another attempt cannot fix: an illegal message (too large, say) or no
/// permission to write the topic.
pub(crate) fn permanent(e: &ClientError) -> bool {
    const MESSAGE_ILLEGAL: i32 = 13;
    const NO_PERMISSION: i32 = 16;
    if matches!(
        e.broker_response_code(),
        Some(MESSAGE_ILLEGAL | NO_PERMISSION)
    ) {
        return true;
    }
    let s = client::describe(e);
    s.contains("body size over max") || s.contains("message body length is zero")
}

fn classify(topic: &str, e: &ClientError) -> SinkError {
    let message = format!("rocketmq topic {topic}: {}", client::describe(e));
    if permanent(e) {
        SinkError::not_retryable(message)
    } else {
        SinkError::retryable(message)
    }
}

impl Sink for RocketMqSink {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        Box::pin(self.send(event, timeout))
    }

    fn health(&self) -> SinkHealth {
        self.health
            .lock()
            .map(|h| h.clone())
            .unwrap_or(SinkHealth::Unknown)
    }

    fn describe(&self) -> String {
        format!(
            "rocketmq {}/{}{}",
            self.cfg.namesrv,
            self.cfg.topic,
            match self.cfg.mode {
                RocketMqMode::Binary => "",
                RocketMqMode::Structured => " (structured)",
            }
        )
    }
}
