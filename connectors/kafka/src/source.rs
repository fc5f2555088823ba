//! The Kafka source: consumes records into an evmesh topic. Offsets are stored for the
//! group's (auto-)commit only after the events are durably appended, so a crash or restart
//! resumes at the first record not yet stored: duplicates are possible, loss is not.

use crate::binding::{self, Decoded};
use crate::config::KafkaSourceConfig;
use crate::{borrowed_headers, client_config, client_error, in_record, KafkaConnectorError};
use evmesh_core::component::{Source, SourceConfig, SourceContext};
use evmesh_core::config::StartPosition;
use evmesh_core::{Event, ExtValue};
use futures_util::future::BoxFuture;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::Duration;

impl SourceConfig for KafkaSourceConfig {
    fn build(&self, name: &str) -> Result<Box<dyn Source>, String> {
        KafkaSource::new(name, self)
            .map(|s| Box::new(s) as Box<dyn Source>)
            .map_err(|e| e.to_string())
    }
}

/// Records appended to the store per batch, at most.
const BATCH: usize = 500;

pub struct KafkaSource {
    name: String,
    cfg: KafkaSourceConfig,
    consumer: StreamConsumer,
}

impl KafkaSource {
    /// Creates the consumer and joins the group (records flow once [`KafkaSource::run`] runs).
    pub fn new(name: &str, cfg: &KafkaSourceConfig) -> Result<Self, KafkaConnectorError> {
        let mut c = client_config(&cfg.brokers, &Default::default());
        c.set("group.id", &cfg.group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set(
                "auto.offset.reset",
                match cfg.start {
                    StartPosition::Earliest => "earliest",
                    StartPosition::Latest => "latest",
                },
            )
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "cooperative-sticky");
        for (k, v) in &cfg.properties {
            c.set(k, v);
        }
        let consumer: StreamConsumer = c.create().map_err(client_error(&cfg.brokers))?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(client_error(&cfg.brokers))?;
        Ok(KafkaSource {
            name: name.to_owned(),
            cfg: cfg.clone(),
            consumer,
        })
    }

    /// Consumes until `stop`, then commits what was stored.
    async fn consume(self, cx: SourceContext) {
        let mut stop = cx.stop.clone();
        let name = self.name.clone();
        tracing::info!(source = %name, topics = ?self.cfg.topics, into = %self.cfg.into, "kafka source started");
        let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
        let mut positions: HashMap<(String, i32), i64> = HashMap::new();
        let mut pinned: std::collections::HashSet<(String, i32)> = Default::default();
        'outer: loop {
            // Wait for one record, then take what else is ready, up to BATCH.
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = stop.changed() => break,
            };
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Ok(m) => {
                        let tp = (m.topic().to_owned(), m.partition());
                        if !pinned.contains(&tp) {
                            self.pin_start(&tp.0, tp.1, m.offset());
                            pinned.insert(tp);
                        }
                        batch.push(self.to_event(&m));
                        let pos = positions
                            .entry((m.topic().to_owned(), m.partition()))
                            .or_insert(0);
                        *pos = (*pos).max(m.offset() + 1);
                    }
                    Err(e) => {
                        tracing::warn!(source = %name, error = %e, "kafka consumer error");
                        if batch.is_empty() {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                                _ = stop.changed() => break 'outer,
                            }
                        }
                    }
                }
                if batch.len() < BATCH {
                    if let Ok(m) =
                        tokio::time::timeout(Duration::from_millis(1), self.consumer.recv()).await
                    {
                        next = Some(m);
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            if !self.publish(&cx, &batch).await {
                break;
            }
            batch.clear();
            // The next offset to read, per partition, for the group's (auto-)commit.
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in positions.drain() {
                if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                    tracing::warn!(source = %name, error = %e, "offset not stored");
                }
            }
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                // A partition moved to another member; it re-reads from the last commit.
                tracing::warn!(source = %name, error = %e, "offsets not stored");
            }
            // Commit now rather than at the next auto-commit tick: a crash re-reads less.
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(source = %name, error = %e, "offset commit failed (records after the last commit are read again)");
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Err(e)
                if e.rdkafka_error_code() != Some(rdkafka::error::RDKafkaErrorCode::NoOffset) =>
            {
                tracing::warn!(source = %name, error = %e, "the final offset commit failed")
            }
            _ => {}
        }
        tracing::info!(source = %name, "kafka source stopped");
    }

    /// A partition the group has no committed offset for starts where `start` put it; that
    /// position is committed before anything is stored, so a crash before the first regular
    /// commit resumes there instead of resolving `latest` again and skipping records.
    fn pin_start(&self, topic: &str, partition: i32, offset: i64) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let committed = tokio::task::block_in_place(|| {
            self.consumer
                .committed_offsets(tpl, Duration::from_secs(10))
        });
        let has_commit = committed.ok().is_some_and(|t| {
            t.find_partition(topic, partition)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(_)))
        });
        if has_commit {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .is_ok()
        {
            let r = tokio::task::block_in_place(|| self.consumer.commit(&tpl, CommitMode::Sync));
            if let Err(e) = r {
                tracing::warn!(source = %self.name, topic, partition, error = %e, "could not commit the starting offset");
            }
        }
    }

    /// Publishes until it is durable (records the store refuses go to the source's dead-letter
    /// list); false if stopped first (nothing is committed for it).
    async fn publish(&self, cx: &SourceContext, batch: &[Event]) -> bool {
        let mut wait = Duration::from_millis(100);
        let mut stop = cx.stop.clone();
        loop {
            match cx.publish(&self.cfg.into, batch).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(source = %self.name, into = %self.cfg.into, error = %e, "storing consumed records failed; retrying (offsets not committed)");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return false,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn to_event<M: Message>(&self, m: &M) -> Event {
        let headers = borrowed_headers(m);
        let rec = in_record(m, &headers);
        match binding::decode(&rec) {
            Ok(Decoded::CloudEvent(e)) => *e,
            Ok(Decoded::Plain) => binding::wrap_plain(&rec, &self.cfg.record_type),
            Err(err) => {
                // Kept, not dropped: delivered as a plain record that says why.
                tracing::warn!(source = %self.name, topic = %rec.topic, partition = rec.partition, offset = rec.offset, error = %err, "record is not a valid CloudEvent; wrapping it");
                let mut e = binding::wrap_plain(&rec, &self.cfg.record_type);
                e.set_extension("decodeerror", ExtValue::String(err.to_string()));
                e
            }
        }
    }
}

impl Source for KafkaSource {
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, ()> {
        Box::pin((*self).consume(cx))
    }
}
