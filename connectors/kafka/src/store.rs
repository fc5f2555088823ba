//! Kafka as the event store.
//!
//! - evmesh topic `t` is Kafka topic `<topicPrefix>t`, created on first use with `partitions`
//!   partitions (`__dlq.*` and `__redrive.*` get one, so they keep one order). Events are
//!   written in the structured-mode CloudEvents Kafka binding (JSON keeps extension types,
//!   which binary-mode headers would turn into strings), keyed by `partitionkey`, by an
//!   idempotent producer with `acks=all`; the publisher's answer waits for the broker's
//!   acknowledgement of every event of the request.
//! - A subscription is consumer group `<groupPrefix><name>` (its re-drive topic
//!   `<groupPrefix><name>.redrive`). Each evmesh instance joins the group; Kafka splits the
//!   partitions between instances and moves them when an instance joins, leaves or dies.
//! - A partition's cursor is the group's committed offset: the first offset not yet finished
//!   (delivered, filtered out or dead-lettered). The attempts already made on unfinished
//!   events travel in the commit's metadata, so retry budgets survive an instance's death.
//! - Records reach a partition's reader only in offset order with no gap: a hole (a record
//!   re-fetched from before, or one skipped after a rebalance) makes the reader seek back to
//!   where it is, so a commit never covers an event that was not handed out.
//!
//! Local state (subscriptions made through the admin API, the dead-letter list cursor) is not
//! here: it is in each instance's state store (`dataDir`).

use crate::binding::{self, Decoded};
use crate::config::{KafkaMode, KafkaStoreConfig};
use crate::{
    borrowed_headers, client_config, client_error, in_record, owned_headers, KafkaConnectorError,
};
use evmesh_core::config::StartPosition;
use evmesh_core::Event;
use evmesh_store::{
    AppendAck, Assignment, Consumption, CursorState, EventLog, FetchBuffer, GroupConsumption,
    LogConfig, LogContext, PartitionLog, ReadBatch, StoreError, StoredEvent,
};
use futures_util::future::BoxFuture;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A partition's reader pauses fetching past this many buffered events, resumes below half.
const BUFFER_HIGH: usize = 8192;
/// Kafka's default limit on commit metadata is 4096 bytes.
const METADATA_MAX: usize = 3500;

pub struct KafkaStore {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: KafkaStoreConfig,
    producer: FutureProducer,
    known: tokio::sync::Mutex<HashSet<String>>,
}

impl LogConfig for KafkaStoreConfig {
    fn open(&self, _cx: LogContext) -> BoxFuture<'static, Result<Arc<dyn EventLog>, String>> {
        let cfg = self.clone();
        Box::pin(async move {
            let store = KafkaStore::open(&cfg)
                .await
                .map_err(|e| format!("connecting to the Kafka store at {}: {e}", cfg.brokers))?;
            tracing::info!(brokers = %cfg.brokers, topic_prefix = %cfg.topic_prefix, "kafka store opened");
            Ok(Arc::new(store) as Arc<dyn EventLog>)
        })
    }
}

impl KafkaStore {
    /// Connects, failing clearly if no broker answers.
    pub async fn open(cfg: &KafkaStoreConfig) -> Result<Self, KafkaConnectorError> {
        let base = client_config(&cfg.brokers, &cfg.properties);
        let mut pc = base.clone();
        pc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1");
        for (k, v) in &cfg.properties {
            pc.set(k, v);
        }
        let producer: FutureProducer = pc.create().map_err(client_error(&cfg.brokers))?;
        let probe = producer.clone();
        let brokers = cfg.brokers.clone();
        tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|_| ())
        })
        .await
        .map_err(|e| KafkaConnectorError::Topic {
            topic: String::new(),
            message: e.to_string(),
        })?
        .map_err(client_error(&brokers))?;
        Ok(KafkaStore {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                producer,
                known: tokio::sync::Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The Kafka topic holding evmesh topic `topic`.
    pub fn kafka_topic(&self, topic: &str) -> String {
        self.inner.kafka_topic(topic)
    }
}

/// A record the broker will never take (over `message.max.bytes`) is a permanent error, so
/// callers dead-letter it instead of retrying forever.
fn produce_error(kt: &str, e: KafkaError) -> StoreError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            StoreError::TooLarge(0)
        }
        _ => backend(&format!("producing to {kt}"), e),
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

impl Inner {
    fn kafka_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.cfg.topic_prefix)
    }

    /// Creates the Kafka topic on first use (an existing one is fine).
    async fn ensure_topic(&self, topic: &str) -> Result<String, StoreError> {
        let kt = self.kafka_topic(topic);
        let mut known = self.known.lock().await;
        if known.contains(&kt) {
            return Ok(kt);
        }
        let partitions = if topic.starts_with("__") {
            1
        } else {
            self.cfg.partitions
        };
        crate::ensure_topic(
            &self.cfg.brokers,
            &self.cfg.properties,
            &kt,
            partitions,
            self.cfg.replication_factor,
        )
        .await
        .map_err(|e| backend(&format!("creating Kafka topic {kt}"), e))?;
        tracing::debug!(topic = %kt, partitions, "kafka topic ready");
        known.insert(kt.clone());
        Ok(kt)
    }

    async fn append(&self, topic: &str, events: &[Event]) -> Result<AppendAck, StoreError> {
        let kt = self.ensure_topic(topic).await?;
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let rec = binding::encode(e, KafkaMode::Structured, "partitionkey");
            loop {
                let mut r: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&kt).headers(owned_headers(&rec.headers));
                if let Some(k) = rec.key.as_deref() {
                    r = r.key(k);
                }
                if let Some(v) = rec.value.as_deref() {
                    r = r.payload(v);
                }
                match self.producer.send_result(r) {
                    Ok(f) => {
                        pending.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => return Err(produce_error(&kt, e)),
                }
            }
        }
        let mut first = None;
        for f in pending {
            match f.await {
                Ok(Ok(d)) => {
                    first.get_or_insert(u64::try_from(d.offset).unwrap_or(0));
                }
                Ok(Err((e, _))) => return Err(produce_error(&kt, e)),
                Err(_) => return Err(StoreError::Closed),
            }
        }
        Ok(AppendAck {
            first: first.unwrap_or(0),
            count: events.len() as u64,
        })
    }

    /// Reads one partition of a topic from `from` without a group (the dead-letter list).
    fn read_blocking(
        &self,
        topic: &str,
        partition: i32,
        from: u64,
        max: usize,
    ) -> Result<ReadBatch, StoreError> {
        let kt = self.kafka_topic(topic);
        let mut c = client_config(&self.cfg.brokers, &self.cfg.properties);
        c.set("group.id", format!("{}reader", self.cfg.group_prefix))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = c.create().map_err(|e| backend("reader", e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&kt, partition, Offset::Offset(from as i64))
            .map_err(|e| backend("reader", e))?;
        consumer.assign(&tpl).map_err(|e| backend("reader", e))?;
        let mut events = Vec::new();
        let mut next = from;
        while events.len() < max {
            match consumer.poll(Duration::from_millis(700)) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(backend(&format!("reading {kt}"), e)),
                Some(Ok(m)) => {
                    let offset = u64::try_from(m.offset()).unwrap_or(0);
                    if offset < from {
                        continue;
                    }
                    events.push(StoredEvent {
                        offset,
                        event: Arc::new(record_event(&m)),
                    });
                    next = offset + 1;
                }
            }
        }
        Ok(ReadBatch { events, next })
    }

    /// The topic names the cluster holds (metadata), blocking.
    fn metadata(&self, topic: Option<&str>) -> Result<Vec<(String, Vec<i32>)>, StoreError> {
        let md = self
            .producer
            .client()
            .fetch_metadata(topic, Duration::from_secs(10))
            .map_err(|e| backend("metadata", e))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                (
                    t.name().to_owned(),
                    t.partitions().iter().map(|p| p.id()).collect(),
                )
            })
            .collect())
    }
}

/// The event a store record holds. Records evmesh did not write are wrapped, not dropped.
fn record_event<M: Message>(m: &M) -> Event {
    let headers = borrowed_headers(m);
    let rec = in_record(m, &headers);
    match binding::decode(&rec) {
        Ok(Decoded::CloudEvent(e)) => *e,
        Ok(Decoded::Plain) => binding::wrap_plain(&rec, "dev.evmesh.kafka.record"),
        Err(err) => {
            tracing::warn!(topic = %rec.topic, partition = rec.partition, offset = rec.offset, error = %err, "record in the store is not a valid CloudEvent; wrapping it");
            binding::wrap_plain(&rec, "dev.evmesh.kafka.record")
        }
    }
}

impl EventLog for KafkaStore {
    fn append(
        &self,
        topic: &str,
        events: &[Event],
    ) -> BoxFuture<'static, Result<AppendAck, StoreError>> {
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        let events = events.to_vec();
        Box::pin(async move { inner.append(&topic, &events).await })
    }

    fn partitions(&self, topic: &str) -> BoxFuture<'static, Result<Vec<i32>, StoreError>> {
        let inner = self.inner.clone();
        let kt = self.inner.kafka_topic(topic);
        Box::pin(async move {
            let md = tokio::task::spawn_blocking(move || inner.metadata(Some(&kt)))
                .await
                .map_err(|e| backend("metadata", e))??;
            let mut parts: Vec<i32> = md.into_iter().flat_map(|(_, p)| p).collect();
            parts.sort_unstable();
            Ok(parts)
        })
    }

    fn read(
        &self,
        topic: &str,
        partition: i32,
        from: u64,
        max: usize,
    ) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.read_blocking(&topic, partition, from, max))
                .await
                .map_err(|e| backend("reader", e))?
        })
    }

    fn consume(
        &self,
        subscription: &str,
        topic: &str,
        start: StartPosition,
    ) -> BoxFuture<'static, Result<Consumption, StoreError>> {
        let inner = self.inner.clone();
        let subscription = subscription.to_owned();
        let topic = topic.to_owned();
        Box::pin(async move {
            let kt = inner.ensure_topic(&topic).await?;
            let group = if topic.starts_with("__redrive.") {
                format!("{}{subscription}.redrive", inner.cfg.group_prefix)
            } else {
                format!("{}{subscription}", inner.cfg.group_prefix)
            };
            let session = inner.cfg.session_timeout.0.as_millis().max(1000);
            let mut c = client_config(&inner.cfg.brokers, &Default::default());
            c.set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "false")
                .set(
                    "auto.offset.reset",
                    match start {
                        StartPosition::Earliest => "earliest",
                        StartPosition::Latest => "latest",
                    },
                )
                .set("session.timeout.ms", session.to_string())
                .set("heartbeat.interval.ms", (session / 6).max(100).to_string())
                // Incremental rebalancing: members keep what they own while partitions move.
                .set("partition.assignment.strategy", "cooperative-sticky");
            for (k, v) in &inner.cfg.properties {
                c.set(k, v);
            }
            let (notes_tx, notes_rx) = mpsc::unbounded_channel();
            let consumer: StreamConsumer<GroupContext> = c
                .create_with_context(GroupContext { notes: notes_tx })
                .map_err(|e| backend(&format!("consumer group {group}"), e))?;
            consumer
                .subscribe(&[&kt])
                .map_err(|e| backend(&format!("consumer group {group}"), e))?;
            let (assign_tx, assign_rx) = mpsc::unbounded_channel();
            let (stop_tx, stop_rx) = watch::channel(false);
            tokio::spawn(
                Demux {
                    consumer: Arc::new(consumer),
                    topic: kt,
                    group,
                    parts: HashMap::new(),
                }
                .run(notes_rx, assign_tx, stop_rx),
            );
            Ok(Consumption::Group(GroupConsumption {
                assignments: assign_rx,
                membership: Box::new(LeaveOnDrop(stop_tx)),
            }))
        })
    }

    fn delete_topic(&self, topic: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let inner = self.inner.clone();
        let kt = self.inner.kafka_topic(topic);
        Box::pin(async move {
            inner.known.lock().await.remove(&kt);
            crate::delete_topic(&inner.cfg.brokers, &inner.cfg.properties, &kt)
                .await
                .map_err(|e| backend(&format!("deleting Kafka topic {kt}"), e))
        })
    }

    fn topics(&self) -> BoxFuture<'static, Result<Vec<String>, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let prefix = inner.cfg.topic_prefix.clone();
            let md = tokio::task::spawn_blocking(move || inner.metadata(None))
                .await
                .map_err(|e| backend("metadata", e))??;
            Ok(md
                .into_iter()
                .filter_map(|(name, _)| name.strip_prefix(&prefix).map(str::to_owned))
                .collect())
        })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let producer = self.inner.producer.clone();
        Box::pin(async move {
            let _ =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        })
    }

    fn describe(&self) -> String {
        format!("kafka {}", self.inner.cfg.brokers)
    }
}

struct LeaveOnDrop(watch::Sender<bool>);

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

enum Note {
    Revoke(Vec<i32>),
}

struct GroupContext {
    notes: mpsc::UnboundedSender<Note>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = tpl.elements().iter().map(|e| e.partition()).collect();
                let _ = self.notes.send(Note::Revoke(parts));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions assigned");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            if e.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                tracing::warn!(error = %e, "offset commit failed (the events will be redelivered)");
            }
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// Reads the group's records and hands each partition's to that partition's reader.
struct Demux {
    consumer: Arc<GroupConsumer>,
    topic: String,
    group: String,
    parts: HashMap<i32, Arc<KafkaPartition>>,
}

impl Demux {
    async fn run(
        mut self,
        mut notes: mpsc::UnboundedReceiver<Note>,
        assign: mpsc::UnboundedSender<Assignment>,
        mut stop: watch::Receiver<bool>,
    ) {
        // Partitions we sought back on, and where to: a record beyond that after the seek is a
        // real gap in the log.
        let mut sought: HashMap<i32, u64> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                n = notes.recv() => match n {
                    Some(Note::Revoke(ps)) => {
                        for p in ps {
                            if let Some(part) = self.parts.remove(&p) {
                                tracing::info!(group = %self.group, partition = p, "partition revoked");
                                part.fetched.revoke();
                            }
                            sought.remove(&p);
                        }
                    }
                    None => break,
                },
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        let p = m.partition();
                        let offset = u64::try_from(m.offset()).unwrap_or(0);
                        let part = match self.parts.get(&p) {
                            Some(part) => part.clone(),
                            None => {
                                let cursor = self.committed(p);
                                let start = cursor.as_ref().map_or(offset, |c| c.committed);
                                tracing::debug!(group = %self.group, partition = p, offset, start, "first record of a partition");
                                if offset > start && sought.get(&p) != Some(&start) {
                                    // Records before this one are not finished: go back.
                                    self.seek(p, start);
                                    sought.insert(p, start);
                                    continue;
                                }
                                let part = Arc::new(KafkaPartition::new(
                                    self.consumer.clone(),
                                    &self.topic,
                                    p,
                                    cursor.unwrap_or(CursorState { committed: offset, attempts: BTreeMap::new() }),
                                ));
                                part.commit_initial();
                                self.parts.insert(p, part.clone());
                                let a = Assignment { partition: p, log: part.clone(), revoked: part.fetched.watch_revoked() };
                                if assign.send(a).is_err() {
                                    break;
                                }
                                part
                            }
                        };
                        let expected = part.fetched.expected();
                        if offset < expected {
                            continue; // already handed out (re-fetched after a seek)
                        }
                        if offset > expected && sought.get(&p) != Some(&expected) {
                            self.seek(p, expected);
                            sought.insert(p, expected);
                            continue;
                        }
                        sought.remove(&p);
                        let event = Arc::new(record_event(&m));
                        if part.fetched.push(StoredEvent { offset, event }) {
                            let mut tpl = TopicPartitionList::new();
                            tpl.add_partition(&self.topic, p);
                            if let Err(e) = self.consumer.pause(&tpl) {
                                tracing::debug!(error = %e, "pause");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(group = %self.group, error = %e, "kafka consumer error");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = stop.changed() => break,
                        }
                    }
                },
            }
        }
        for (_, part) in self.parts.drain() {
            part.fetched.revoke();
        }
        // The consumer leaves the group once the partition readers (which hold it to commit
        // their final positions) are gone.
    }

    /// The group's committed position of a partition and the retry state stored with it.
    fn committed(&self, p: i32) -> Option<CursorState> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, p);
        let got = tokio::task::block_in_place(|| {
            self.consumer
                .committed_offsets(tpl, Duration::from_secs(10))
        });
        let got = match got {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(group = %self.group, partition = p, error = %e, "could not read the committed offset; starting where the consumer is");
                return None;
            }
        };
        let elem = got.find_partition(&self.topic, p)?;
        let Offset::Offset(o) = elem.offset() else {
            return None;
        };
        let attempts =
            serde_json::from_str::<BTreeMap<u64, u32>>(elem.metadata()).unwrap_or_default();
        Some(CursorState {
            committed: u64::try_from(o).unwrap_or(0),
            attempts,
        })
    }

    fn seek(&self, p: i32, to: u64) {
        tracing::info!(group = %self.group, partition = p, to, "seeking back to the first unread offset");
        let r = tokio::task::block_in_place(|| {
            self.consumer.seek(
                &self.topic,
                p,
                Offset::Offset(to as i64),
                Duration::from_secs(5),
            )
        });
        if let Err(e) = r {
            tracing::warn!(group = %self.group, partition = p, error = %e, "seek failed");
        }
    }
}

/// One assigned partition: a buffer between the group's consumer and the partition's reader.
struct KafkaPartition {
    consumer: Arc<GroupConsumer>,
    topic: String,
    partition: i32,
    fetched: FetchBuffer,
    initial: CursorState,
}

impl KafkaPartition {
    fn new(
        consumer: Arc<GroupConsumer>,
        topic: &str,
        partition: i32,
        initial: CursorState,
    ) -> Self {
        KafkaPartition {
            consumer,
            topic: topic.to_owned(),
            partition,
            fetched: FetchBuffer::new(initial.committed, BUFFER_HIGH),
            initial,
        }
    }

    /// Pins the starting position (with `start: latest`, where "latest" was) in the group.
    fn commit_initial(&self) {
        if let Err(e) = self.commit(&self.initial) {
            tracing::warn!(error = %e, "the initial offset commit failed");
        }
    }

    fn commit(&self, state: &CursorState) -> Result<(), StoreError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.topic,
            self.partition,
            Offset::Offset(state.committed as i64),
        )
        .map_err(|e| backend("commit", e))?;
        let mut meta = serde_json::to_string(&state.attempts).unwrap_or_default();
        if meta.len() > METADATA_MAX {
            // Keep the oldest entries: those are the next to be retried.
            let trimmed: BTreeMap<u64, u32> = state
                .attempts
                .iter()
                .take(200)
                .map(|(k, v)| (*k, *v))
                .collect();
            meta = serde_json::to_string(&trimmed).unwrap_or_default();
        }
        if let Some(mut e) = tpl.find_partition(&self.topic, self.partition) {
            e.set_metadata(meta);
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| backend("commit", e))
    }
}

impl PartitionLog for KafkaPartition {
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        let (batch, resume) = self.fetched.take(from, max);
        if resume {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, self.partition);
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::debug!(error = %e, "resume");
            }
        }
        Box::pin(std::future::ready(Ok(batch)))
    }

    fn watch_end(&self) -> watch::Receiver<u64> {
        self.fetched.watch_end()
    }

    fn load_cursor(&self) -> Result<Option<CursorState>, StoreError> {
        Ok(Some(self.initial.clone()))
    }

    fn save_cursor(&self, state: &CursorState) -> Result<(), StoreError> {
        self.commit(state)
    }
}
