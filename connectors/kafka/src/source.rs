//! The Kafka source: consumes records into an evmesh topic. Offsets are stored for the
//! group's (auto-)commit only after the events are durably appended, so a crash or restart
//! resumes at the first record not yet stored: duplicates are possible, loss is not.

use crate::binding::{self, Decoded};
use crate::{borrowed_headers, client_config, client_error, in_record, KafkaConnectorError};
use evmesh_core::config::{KafkaSourceConfig, StartPosition};
use evmesh_core::{Event, ExtValue};
use evmesh_store::Store;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Records appended to the store per batch, at most.
const BATCH: usize = 500;

pub struct KafkaSource {
    cfg: KafkaSourceConfig,
    consumer: StreamConsumer,
}

impl KafkaSource {
    /// Creates the consumer and joins the group (records flow once [`KafkaSource::run`] runs).
    pub fn new(cfg: &KafkaSourceConfig) -> Result<Self, KafkaConnectorError> {
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
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        for (k, v) in &cfg.properties {
            c.set(k, v);
        }
        let consumer: StreamConsumer = c.create().map_err(client_error(&cfg.brokers))?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(client_error(&cfg.brokers))?;
        Ok(KafkaSource {
            cfg: cfg.clone(),
            consumer,
        })
    }

    /// Consumes until `stop`, then commits what was stored.
    pub async fn run(self, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
        let name = self.cfg.name.clone();
        tracing::info!(source = %name, topics = ?self.cfg.topics, into = %self.cfg.into, "kafka source started");
        let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
        let mut positions: HashMap<(String, i32), i64> = HashMap::new();
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
            if !self.append(&store, &batch, &mut stop).await {
                break;
            }
            batch.clear();
            for ((topic, partition), offset) in positions.drain() {
                if let Err(e) = self.consumer.store_offset(&topic, partition, offset) {
                    // The partition moved to another member; it re-reads from the last commit.
                    tracing::debug!(source = %name, topic = %topic, partition, error = %e, "offset not stored");
                }
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(source = %name, error = %e, "final commit");
        }
        tracing::info!(source = %name, "kafka source stopped");
    }

    /// Appends until it is durable; false if stopped first (nothing committed for it).
    async fn append(
        &self,
        store: &Arc<dyn Store>,
        batch: &[Event],
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            match store.append(&self.cfg.into, batch).await {
                Ok(_) => return true,
                Err(e) => {
                    tracing::error!(source = %self.cfg.name, into = %self.cfg.into, error = %e, "storing consumed records failed; retrying (offsets not committed)");
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
            Ok(Decoded::CloudEvent(e)) => e,
            Ok(Decoded::Plain) => binding::wrap_plain(&rec, &self.cfg.record_type),
            Err(err) => {
                // Kept, not dropped: delivered as a plain record that says why.
                tracing::warn!(source = %self.cfg.name, topic = %rec.topic, partition = rec.partition, offset = rec.offset, error = %err, "record is not a valid CloudEvent; wrapping it");
                let mut e = binding::wrap_plain(&rec, &self.cfg.record_type);
                e.set_extension("decodeerror", ExtValue::String(err.to_string()));
                e
            }
        }
    }
}
