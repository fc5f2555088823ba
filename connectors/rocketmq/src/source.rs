//! The RocketMQ source: a lite pull consumer in a consumer group reads messages into an
//! evmesh topic. Offsets are committed to RocketMQ only after the events are durably stored,
//! so a crash or restart resumes at the first message not yet stored: duplicates are
//! possible, loss is not.

use crate::client;
use crate::config::{MessageModel, RocketMqSourceConfig};
use evmesh_core::component::{Source, SourceConfig, SourceContext};
use evmesh_core::config::StartPosition;
use evmesh_core::Event;
use futures_util::future::BoxFuture;
use rocketmq_client_rust::DefaultLitePullConsumer;
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::message::MessageQueue;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel as RmqModel;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

impl SourceConfig for RocketMqSourceConfig {
    fn build(&self, name: &str) -> Result<Box<dyn Source>, String> {
        Ok(Box::new(RocketMqSource {
            name: name.to_owned(),
            cfg: self.clone(),
        }))
    }
}

pub struct RocketMqSource {
    name: String,
    cfg: RocketMqSourceConfig,
}

/// Messages handed over per poll, at most.
const BATCH: i32 = 256;

impl RocketMqSource {
    /// Starts the consumer, retrying while the name server or broker cannot be reached.
    async fn connect(&self, cx: &SourceContext) -> Option<DefaultLitePullConsumer> {
        let mut wait = Duration::from_millis(200);
        let mut stop = cx.stop.clone();
        loop {
            match self.try_connect().await {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(source = %self.name, namesrv = %self.cfg.namesrv, error = %e, "rocketmq source cannot start its consumer; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return None,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn try_connect(&self) -> Result<DefaultLitePullConsumer, String> {
        let rt = client::runtime().map_err(|e| e.to_string())?;
        let c = DefaultLitePullConsumer::builder(rt)
            .consumer_group(self.cfg.group.as_str())
            .name_server_addr(self.cfg.namesrv.as_str())
            .auto_commit(false)
            .pull_batch_size(BATCH)
            .message_model(match self.cfg.message_model {
                MessageModel::Clustering => RmqModel::Clustering,
                MessageModel::Broadcasting => RmqModel::Broadcasting,
            })
            .consume_from_where(match self.cfg.start {
                StartPosition::Earliest => ConsumeFromWhere::ConsumeFromFirstOffset,
                StartPosition::Latest => ConsumeFromWhere::ConsumeFromLastOffset,
            })
            .build()
            .map_err(|e| e.to_string())?;
        c.subscribe_with_expression(&self.cfg.topic, &self.cfg.tag_filter)
            .await
            .map_err(|e| {
                format!(
                    "subscribing to {}: {}",
                    self.cfg.topic,
                    client::describe(&e)
                )
            })?;
        c.start().await.map_err(|e| client::describe(&e))?;
        Ok(c)
    }

    async fn consume(self, cx: SourceContext) {
        let Some(consumer) = self.connect(&cx).await else {
            return;
        };
        tracing::info!(source = %self.name, topic = %self.cfg.topic, group = %self.cfg.group, into = %self.cfg.into, "rocketmq source started");
        let mut stop = cx.stop.clone();
        // Queues whose first message of this run was seen (and its position committed).
        let mut pinned: HashSet<MessageQueue> = HashSet::new();
        loop {
            let msgs = tokio::select! {
                m = consumer.poll_with_timeout(500) => m,
                _ = stop.changed() => break,
            };
            if msgs.is_empty() {
                continue;
            }
            let mut next: HashMap<MessageQueue, i64> = HashMap::new();
            let mut pin: HashMap<MessageQueue, i64> = HashMap::new();
            let mut batch: Vec<Event> = Vec::with_capacity(msgs.len());
            for m in &msgs {
                let q = client::queue_of(m);
                if !pinned.contains(&q) {
                    pin.entry(q.clone()).or_insert(m.queue_offset());
                }
                let n = next.entry(q).or_insert(0);
                *n = (*n).max(m.queue_offset() + 1);
                batch.push(client::event_of(m, &self.cfg.message_type));
            }
            if !pin.is_empty() {
                // A queue the group has no position for starts where `start` put it; that
                // position is committed before anything is stored, so a crash before the
                // first regular commit resumes there instead of resolving `latest` again.
                pinned.extend(pin.keys().cloned());
                consumer.commit_sync_with_map(pin, true).await;
            }
            if !self.publish(&cx, &batch).await {
                break;
            }
            consumer.commit_sync_with_map(next, true).await;
        }
        consumer.shutdown().await;
        tracing::info!(source = %self.name, "rocketmq source stopped");
    }

    /// Publishes until it is durable; false if stopped first (nothing is committed for it).
    async fn publish(&self, cx: &SourceContext, batch: &[Event]) -> bool {
        let mut wait = Duration::from_millis(100);
        let mut stop = cx.stop.clone();
        loop {
            match cx.publish(&self.cfg.into, batch).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(source = %self.name, into = %self.cfg.into, error = %e, "storing consumed messages failed; retrying (offsets not committed)");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return false,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl Source for RocketMqSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, ()> {
        Box::pin((*self).consume(cx))
    }
}
