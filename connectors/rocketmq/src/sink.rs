//! The RocketMQ sink: each event is one message; delivered means the broker answered
//! `SEND_OK`. With `ordering: key` on the subscription, events of one `partitionkey` go to one
//! queue (RocketMQ's hash selector rule), so consumers see them in order.

use crate::binding;
use crate::client::{self, queue_for_key};
use crate::config::{RocketMqMode, RocketMqSinkConfig};
use evmesh_core::component::{SinkConfig, SinkContext};
use evmesh_core::config::Ordering;
use evmesh_core::sink::{Delivered, Sink, SinkError, SinkHealth};
use evmesh_core::Event;
use futures_util::future::BoxFuture;
use rocketmq_client_rust::{ClientError, DefaultMQProducer, SendResult, SendStatus};
use rocketmq_model::common::message::message_single::Message;
use rocketmq_model::message::MessageQueue;
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
    producer: OnceCell<Arc<DefaultMQProducer>>,
    health: Mutex<SinkHealth>,
}

impl RocketMqSink {
    pub fn new(cfg: &RocketMqSinkConfig, ordering: Ordering) -> Self {
        RocketMqSink {
            cfg: cfg.clone(),
            ordered: ordering == Ordering::Key,
            producer: OnceCell::new(),
            health: Mutex::new(SinkHealth::Unknown),
        }
    }

    async fn producer(&self) -> Result<&Arc<DefaultMQProducer>, SinkError> {
        self.producer
            .get_or_try_init(|| client::producer(&self.cfg.namesrv, &self.cfg.producer_group))
            .await
            .map_err(|e| SinkError::retryable(e.to_string()))
    }

    async fn send(&self, event: &Event, timeout: Duration) -> Result<Delivered, SinkError> {
        let out = binding::encode(event, self.cfg.mode, &self.cfg.keys)
            .map_err(|e| SinkError::not_retryable(e.to_string()))?;
        if out.body.len() > self.cfg.max_message_size {
            return Err(SinkError::not_retryable(format!(
                "rocketmq topic {}: a body of {} bytes is over maxMessageSize ({})",
                self.cfg.topic,
                out.body.len(),
                self.cfg.max_message_size
            )));
        }
        let msg = client::message(&self.cfg.topic, self.cfg.tag.as_deref(), out)
            .map_err(|e| SinkError::not_retryable(format!("rocketmq message: {e}")))?;
        let producer = self.producer().await?;
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let key = self.ordered.then(|| event.partition_key()).flatten();
        let sent = match key {
            Some(key) => {
                tokio::time::timeout(
                    timeout,
                    producer.send_with_selector_timeout(
                        msg,
                        |qs: &[MessageQueue], _m: &Message, k: &String| queue_for_key(qs, k),
                        key,
                        ms,
                    ),
                )
                .await
            }
            None => tokio::time::timeout(timeout, producer.send_with_timeout(msg, ms)).await,
        };
        let result = match sent {
            Err(_) => Err(SinkError::retryable(format!(
                "rocketmq topic {}: no answer within {timeout:?}",
                self.cfg.topic
            ))),
            Ok(r) => outcome(&self.cfg.topic, r),
        };
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
