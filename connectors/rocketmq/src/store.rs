//! RocketMQ as the event store, with the Kafka store's contract.
//!
//! - evmesh topic `t` is RocketMQ topic `<topicPrefix>t` (escaped, see [`crate::names`]),
//!   created on first use with `queues` queues (`__dlq.*`, `__redrive.*` and the other
//!   internal topics get one, so they keep one order). Events are written as structured-mode
//!   CloudEvents (JSON keeps extension types), with `KEYS` = the event id. An event with a
//!   `partitionkey` goes to the queue RocketMQ's hash selector picks for it, so one key keeps
//!   one order; the others are spread round-robin. The publisher's answer waits for `SEND_OK`
//!   on every event of the request.
//! - A subscription is consumer group `<groupPrefix><name>` (its re-drive topic's
//!   `<groupPrefix><name>.redrive`). Each evmesh instance joins the group with a lite pull
//!   consumer; RocketMQ splits the queues between instances and moves them when one joins,
//!   leaves or dies.
//! - A queue's cursor is the group's committed offset on the broker: the first offset not
//!   yet finished (delivered, filtered out or dead-lettered). Retries and dead letters follow
//!   evmesh's policy, not RocketMQ's `%RETRY%` and `%DLQ%` topics: one policy whatever the
//!   store (backoff with jitter, `Retry-After`, dead-letter sinks, re-drive), and RocketMQ's
//!   retry topic would take a failed event out of its key's order. The attempts made on
//!   unfinished events are kept in the instance's state store, so they survive a restart of
//!   that instance; after a queue moves to another instance its retry budget starts again
//!   (at least once still holds).
//! - Events reach a queue's reader only in offset order with no gap: a hole makes the demux
//!   seek back to where the reader is, so a commit never covers an event not handed out.

use crate::client::{self, partition_of, queue_for_key, Cluster};
use crate::config::{RocketMqMode, RocketMqStoreConfig};
use crate::names::{escaped, unescaped};
use crate::RocketMqError;
use evmesh_core::config::StartPosition;
use evmesh_core::Event;
use evmesh_store::{
    AppendAck, Assignment, Consumption, CursorState, EventLog, FetchBuffer, GroupConsumption,
    LogConfig, LogContext, PartitionLog, ReadBatch, StateStore, StoreError, StoredEvent,
};
use futures_util::future::BoxFuture;
use rocketmq_client_rust::{
    DefaultLitePullConsumer, DefaultMQAdminExt, PullStatus, SendStatus, TopicAdmin,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::message::MessageQueue;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A queue's reader pauses pulling past this many buffered events, resumes below half.
const BUFFER_HIGH: usize = 8192;
/// The `type` of a message in the store that evmesh did not write.
const FOREIGN_TYPE: &str = "dev.evmesh.rocketmq.message";

impl LogConfig for RocketMqStoreConfig {
    fn open(&self, cx: LogContext) -> BoxFuture<'static, Result<Arc<dyn EventLog>, String>> {
        let cfg = self.clone();
        Box::pin(async move {
            let store = RocketMqStore::open(&cfg, cx.state)
                .await
                .map_err(|e| format!("connecting to the RocketMQ store at {}: {e}", cfg.namesrv))?;
            tracing::info!(namesrv = %cfg.namesrv, topic_prefix = %cfg.topic_prefix, "rocketmq store opened");
            Ok(Arc::new(store) as Arc<dyn EventLog>)
        })
    }
}

pub struct RocketMqStore {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RocketMqStoreConfig,
    /// Sends (batched per queue), creates topics, knows their queues.
    cluster: Arc<Cluster>,
    /// Reads by offset, without joining a group (dead-letter lists).
    reader: tokio::sync::OnceCell<Reader>,
    state: Arc<dyn StateStore>,
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

/// Runs a client future that is not `Send` (the admin API) on a blocking thread.
async fn unsent<F, Fut, T>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(f()))
        .await
        .map_err(|e| backend("rocketmq admin", e))
}

impl RocketMqStore {
    /// Connects, failing clearly if the name server does not answer.
    pub async fn open(
        cfg: &RocketMqStoreConfig,
        state: Arc<dyn StateStore>,
    ) -> Result<Self, RocketMqError> {
        let rt = client::runtime()?;
        let group = escaped(&cfg.group_prefix, "store").map_err(RocketMqError::Client)?;
        let cluster = Cluster::get(&cfg.namesrv, &group).await?;
        // The name server must answer now: a wrong address is a start-up error, not a hang
        // on the first publish.
        let namesrv = cfg.namesrv.clone();
        let probe = unsent(move || async move {
            let mut admin = DefaultMQAdminExt::with_timeout(rt, Duration::from_secs(5));
            admin.set_namesrv_addr(namesrv.as_str());
            admin.start().await?;
            let r = admin.fetch_all_topic_list().await;
            admin.shutdown().await;
            r
        })
        .await
        .map_err(|e| RocketMqError::Client(e.to_string()))?;
        probe.map_err(|e| RocketMqError::Client(format!("the name server did not answer: {e}")))?;
        Ok(RocketMqStore {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                cluster,
                reader: tokio::sync::OnceCell::new(),
                state,
            }),
        })
    }

    /// The RocketMQ topic holding evmesh topic `topic`.
    pub fn rocketmq_topic(&self, topic: &str) -> Result<String, StoreError> {
        self.inner.rocketmq_topic(topic)
    }
}

impl Inner {
    fn rocketmq_topic(&self, topic: &str) -> Result<String, StoreError> {
        escaped(&self.cfg.topic_prefix, topic).map_err(|_| StoreError::InvalidName(topic.into()))
    }

    fn group(&self, name: &str) -> Result<String, StoreError> {
        escaped(&self.cfg.group_prefix, name).map_err(|_| StoreError::InvalidName(name.into()))
    }

    /// Creates the topic on first use (an existing one is kept) and returns its queues.
    async fn ready(&self, topic: &str) -> Result<(String, Vec<MessageQueue>), StoreError> {
        let rt = self.rocketmq_topic(topic)?;
        let queues = self.cluster.queues(&rt).await;
        if !queues.is_empty() {
            return Ok((rt, queues));
        }
        let n = if topic.starts_with("__") {
            1
        } else {
            self.cfg.queues
        };
        self.cluster
            .create_topic(&rt, i32::try_from(n).unwrap_or(4))
            .await
            .map_err(|e| backend(&format!("creating RocketMQ topic {rt}"), e))?;
        tracing::debug!(topic = %rt, queues = n, "rocketmq topic created");
        for _ in 0..50 {
            let q = self.cluster.queues(&rt).await;
            if !q.is_empty() {
                return Ok((rt, q));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::Backend(format!(
            "RocketMQ topic {rt} was created but has no route yet"
        )))
    }

    async fn append(&self, topic: &str, events: &[Event]) -> Result<AppendAck, StoreError> {
        let (rt, queues) = self.ready(topic).await?;
        let timeout = self.cfg.send_timeout.0;
        // Every event is handed to its queue's sender in request order (one key, one queue,
        // one order); the senders batch what is waiting, queues in parallel.
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let mq = match e.partition_key() {
                Some(k) => queue_for_key(&queues, &k),
                None => self.cluster.round_robin(&queues),
            }
            .ok_or_else(|| StoreError::Backend(format!("RocketMQ topic {rt} has no queues")))?;
            let out = crate::binding::encode(e, RocketMqMode::Structured, "id")
                .map_err(|e| backend("encoding", e))?;
            let size = out.body.len();
            if size > client::BATCH_BYTES * 4 {
                return Err(StoreError::TooLarge(size));
            }
            let msg = client::message(&rt, None, out).map_err(|e| backend("message", e))?;
            let fut = self
                .cluster
                .submit(mq, msg, size, timeout)
                .map_err(|e| backend(&format!("sending to {rt}"), client::describe(&e)))?;
            pending.push((size, fut));
        }
        let mut first = None;
        let mut failed = None;
        for (size, fut) in pending {
            let r = tokio::time::timeout(timeout + Duration::from_secs(1), fut).await;
            let err = match r {
                Err(_) => Some(StoreError::Backend(format!(
                    "RocketMQ topic {rt}: no answer within {timeout:?}"
                ))),
                Ok(Ok(r)) if r.send_status == SendStatus::SendOk => {
                    first.get_or_insert(r.queue_offset);
                    None
                }
                Ok(Ok(r)) => Some(StoreError::Backend(format!(
                    "RocketMQ topic {rt}: the broker answered {:?}",
                    r.send_status
                ))),
                Ok(Err(e)) if crate::sink::permanent(&e) => Some(StoreError::TooLarge(size)),
                Ok(Err(e)) => Some(backend(&format!("sending to {rt}"), client::describe(&e))),
            };
            if let Some(e) = err {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            // The topic may have been deleted or moved: look its queues up again.
            self.cluster.forget(&rt);
            return Err(e);
        }
        Ok(AppendAck {
            first: first.unwrap_or(0),
            count: events.len() as u64,
        })
    }

    async fn reader(&self) -> Result<&Reader, StoreError> {
        self.reader
            .get_or_try_init(|| async {
                let rt = client::runtime().map_err(|e| backend("reader", e))?;
                let c = Reader::builder(rt)
                    .consumer_group(self.group("reader")?.as_str())
                    .name_server_addr(self.cfg.namesrv.as_str())
                    .build()
                    .map_err(|e| backend("reader", e))?;
                c.start().await.map_err(|e| backend("reader", e))?;
                Ok(c)
            })
            .await
    }

    /// The queues of a RocketMQ topic as `(partition, queue)`, sorted; empty when the topic
    /// does not exist.
    async fn partitions_of(&self, rt: &str) -> Result<Vec<(i32, MessageQueue)>, StoreError> {
        let reader = self.reader().await?;
        let qs = match reader.fetch_subscribe_message_queues(rt).await {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(topic = %rt, error = %e, "no queues (the topic does not exist yet)");
                return Ok(Vec::new());
            }
        };
        Ok(numbered(qs))
    }

    /// Up to `max` events of one partition from `from`, without a group.
    async fn read(
        &self,
        topic: &str,
        partition: i32,
        from: u64,
        max: usize,
    ) -> Result<ReadBatch, StoreError> {
        let empty = ReadBatch {
            events: Vec::new(),
            next: from,
        };
        let rt = self.rocketmq_topic(topic)?;
        let Some((_, mq)) = self
            .partitions_of(&rt)
            .await?
            .into_iter()
            .find(|(p, _)| *p == partition)
        else {
            return Ok(empty);
        };
        let reader = self.reader().await?;
        let max = i32::try_from(max.clamp(1, 1024)).unwrap_or(1024);
        let r = reader
            .pull(&mq, "*", i64::try_from(from).unwrap_or(i64::MAX), max)
            .await
            .map_err(|e| backend(&format!("reading {rt}"), e))?;
        let mut events = Vec::new();
        let mut next = from;
        match r.pull_status() {
            PullStatus::Found => {
                for m in r.msg_found_list().unwrap_or_default() {
                    let offset = u64::try_from(m.queue_offset()).unwrap_or(0);
                    if offset < from {
                        continue;
                    }
                    events.push(StoredEvent {
                        offset,
                        event: Arc::new(client::event_of(m, FOREIGN_TYPE)),
                    });
                    next = offset + 1;
                }
            }
            PullStatus::NoNewMsg | PullStatus::NoMatchedMsg => {}
            PullStatus::OffsetIllegal => {
                // Before the oldest message kept: continue from it. Past the end: nothing yet.
                if from < r.min_offset() {
                    next = r.min_offset();
                }
            }
        }
        Ok(ReadBatch { events, next })
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), StoreError> {
        let rt = self.rocketmq_topic(topic)?;
        self.cluster.forget(&rt);
        let runtime = client::runtime().map_err(|e| backend("admin", e))?;
        let namesrv = self.cfg.namesrv.clone();
        let topic_name = rt.clone();
        let r = unsent(move || async move {
            let mut admin = DefaultMQAdminExt::with_timeout(runtime, Duration::from_secs(5));
            admin.set_namesrv_addr(namesrv.as_str());
            admin.start().await?;
            let result = async {
                let Some(route) = admin
                    .examine_topic_route_info(topic_name.as_str().into())
                    .await
                    .ok()
                    .flatten()
                else {
                    return Ok(()); // no such topic
                };
                let brokers: HashSet<_> = route
                    .broker_datas
                    .iter()
                    .flat_map(|b| b.broker_addrs().values().cloned())
                    .collect();
                admin
                    .delete_topic_in_broker(brokers, topic_name.as_str().into())
                    .await?;
                let servers: HashSet<_> = namesrv.split(';').map(|s| s.trim().into()).collect();
                admin
                    .delete_topic_in_name_server(servers, None, topic_name.as_str().into())
                    .await
            }
            .await;
            admin.shutdown().await;
            result
        })
        .await?;
        r.map_err(|e| backend(&format!("deleting RocketMQ topic {rt}"), e))
    }

    async fn topics(&self) -> Result<Vec<String>, StoreError> {
        let runtime = client::runtime().map_err(|e| backend("admin", e))?;
        let namesrv = self.cfg.namesrv.clone();
        let list = unsent(move || async move {
            let mut admin = DefaultMQAdminExt::with_timeout(runtime, Duration::from_secs(5));
            admin.set_namesrv_addr(namesrv.as_str());
            admin.start().await?;
            let r = admin.fetch_all_topic_list().await;
            admin.shutdown().await;
            r
        })
        .await?
        .map_err(|e| backend("listing RocketMQ topics", e))?;
        let mut out: Vec<String> = list
            .topic_list
            .iter()
            .filter_map(|t| unescaped(&self.cfg.topic_prefix, t.as_str()))
            .collect();
        out.sort();
        Ok(out)
    }
}

/// The classic pull consumer: RocketMQ keeps it for reading a queue from a chosen offset
/// without a group's rebalancing, which is what listing a dead-letter topic needs.
#[allow(deprecated)]
type Reader = rocketmq_client_rust::DefaultMQPullConsumer;

/// Queues numbered as evmesh partitions, sorted.
fn numbered(qs: Vec<MessageQueue>) -> Vec<(i32, MessageQueue)> {
    let multi = qs
        .iter()
        .map(|q| q.broker_name().clone())
        .collect::<HashSet<_>>()
        .len()
        > 1;
    let mut out: Vec<(i32, MessageQueue)> = qs
        .into_iter()
        .map(|q| (partition_of(&q, multi), q))
        .collect();
    out.sort_by_key(|(p, _)| *p);
    out
}

impl EventLog for RocketMqStore {
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
        let topic = topic.to_owned();
        Box::pin(async move {
            let rt = inner.rocketmq_topic(&topic)?;
            Ok(inner
                .partitions_of(&rt)
                .await?
                .into_iter()
                .map(|(p, _)| p)
                .collect())
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
        Box::pin(async move { inner.read(&topic, partition, from, max).await })
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
            let (rt, _) = inner.ready(&topic).await?;
            let group = if topic.starts_with("__redrive.") {
                inner.group(&format!("{subscription}.redrive"))?
            } else {
                inner.group(&subscription)?
            };
            let runtime = client::runtime().map_err(|e| backend("consumer", e))?;
            let consumer = DefaultLitePullConsumer::builder(runtime)
                .consumer_group(group.as_str())
                .name_server_addr(inner.cfg.namesrv.as_str())
                .auto_commit(false)
                .pull_batch_size(256)
                .consume_from_where(match start {
                    StartPosition::Earliest => ConsumeFromWhere::ConsumeFromFirstOffset,
                    StartPosition::Latest => ConsumeFromWhere::ConsumeFromLastOffset,
                })
                .build()
                .map_err(|e| backend(&format!("consumer group {group}"), e))?;
            consumer
                .subscribe(&rt)
                .await
                .map_err(|e| backend(&format!("consumer group {group}"), e))?;
            consumer
                .start()
                .await
                .map_err(|e| backend(&format!("consumer group {group}"), e))?;
            let (assign_tx, assign_rx) = mpsc::unbounded_channel();
            let (stop_tx, stop_rx) = watch::channel(false);
            tokio::spawn(
                Demux {
                    consumer: Arc::new(consumer),
                    topic: rt,
                    group,
                    start,
                    state: inner.state.clone(),
                    parts: HashMap::new(),
                    committers: Vec::new(),
                }
                .run(assign_tx, stop_rx),
            );
            Ok(Consumption::Group(GroupConsumption {
                assignments: assign_rx,
                membership: Box::new(LeaveOnDrop(stop_tx)),
            }))
        })
    }

    fn delete_topic(&self, topic: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        Box::pin(async move { inner.delete_topic(&topic).await })
    }

    fn topics(&self) -> BoxFuture<'static, Result<Vec<String>, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.topics().await })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        // Every send has its answer before append resolves: nothing is buffered.
        Box::pin(async {})
    }

    fn describe(&self) -> String {
        format!("rocketmq {}", self.inner.cfg.namesrv)
    }
}

struct LeaveOnDrop(watch::Sender<bool>);

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

type Consumer = Arc<DefaultLitePullConsumer>;

/// Reads the group's messages and hands each queue's to that queue's reader; follows the
/// group's assignment.
struct Demux {
    consumer: Consumer,
    topic: String,
    group: String,
    start: StartPosition,
    state: Arc<dyn StateStore>,
    parts: HashMap<MessageQueue, Arc<RmqPartition>>,
    committers: Vec<tokio::task::JoinHandle<()>>,
}

impl Demux {
    async fn run(
        mut self,
        assign: mpsc::UnboundedSender<Assignment>,
        mut stop: watch::Receiver<bool>,
    ) {
        // Queues sought back on, and where to: a message beyond that after the seek is a real
        // gap in the queue (retention removed it).
        let mut sought: HashMap<MessageQueue, u64> = HashMap::new();
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = check.tick() => {
                    if !self.follow_assignment(&assign).await {
                        break;
                    }
                }
                msgs = self.consumer.poll_with_timeout(200) => {
                    // Queues sought in this batch: the rest of the batch from them predates
                    // the seek.
                    let mut reset: HashSet<MessageQueue> = HashSet::new();
                    for m in msgs {
                        let q = client::queue_of(&m);
                        let offset = u64::try_from(m.queue_offset()).unwrap_or(0);
                        if !self.parts.contains_key(&q) && !self.follow_assignment(&assign).await {
                            return self.finish().await;
                        }
                        if reset.contains(&q) {
                            continue;
                        }
                        let Some(part) = self.parts.get(&q).cloned() else {
                            continue; // not ours (any more): its owner reads it
                        };
                        let expected = part.fetched.expected();
                        if offset < expected {
                            continue; // already handed out (re-fetched after a seek)
                        }
                        if offset > expected && sought.get(&q) != Some(&expected) {
                            self.seek(&q, expected).await;
                            sought.insert(q.clone(), expected);
                            reset.insert(q);
                            continue;
                        }
                        sought.remove(&q);
                        let event = Arc::new(client::event_of(&m, FOREIGN_TYPE));
                        if part.fetched.push(StoredEvent { offset, event }) {
                            self.consumer.pause(vec![q]).await;
                        }
                    }
                }
            }
        }
        self.finish().await;
    }

    /// Takes on newly assigned queues and lets go of revoked ones; false when nobody listens
    /// for assignments any more.
    async fn follow_assignment(&mut self, assign: &mpsc::UnboundedSender<Assignment>) -> bool {
        let Ok(now) = self.consumer.assignment().await else {
            return true;
        };
        let gone: Vec<MessageQueue> = self
            .parts
            .keys()
            .filter(|q| !now.contains(*q))
            .cloned()
            .collect();
        for q in gone {
            if let Some(part) = self.parts.remove(&q) {
                tracing::info!(group = %self.group, queue = q.queue_id(), "queue revoked");
                part.fetched.revoke();
            }
        }
        let multi = now
            .iter()
            .map(|q| q.broker_name().clone())
            .collect::<HashSet<_>>()
            .len()
            > 1;
        for q in now {
            if self.parts.contains_key(&q) || q.topic().as_str() != self.topic {
                continue;
            }
            let partition = partition_of(&q, multi);
            let initial = self.initial(&q, partition).await;
            tracing::info!(group = %self.group, queue = q.queue_id(), partition, from = initial.committed, "queue assigned");
            let (part, committer) = RmqPartition::start(
                self.consumer.clone(),
                q.clone(),
                partition,
                initial,
                self.state.clone(),
                self.group.clone(),
            );
            self.committers.push(committer);
            // Pin the starting position in the group (with `start: latest`, where "latest"
            // was), and make the consumer read from exactly there.
            part.commit_now().await;
            self.seek(&q, part.fetched.expected()).await;
            self.parts.insert(q, part.clone());
            let a = Assignment {
                partition,
                log: part.clone(),
                revoked: part.fetched.watch_revoked(),
            };
            if assign.send(a).is_err() {
                return false;
            }
        }
        true
    }

    /// Where a newly assigned queue starts: the group's committed offset, else where `start`
    /// says; plus the attempts this instance saved for it.
    async fn initial(&self, q: &MessageQueue, partition: i32) -> CursorState {
        let committed = match self.consumer.committed(q).await {
            Ok(o) if o >= 0 => Some(o),
            _ => None,
        };
        let offset = match committed {
            Some(o) => o,
            None => match self.start {
                StartPosition::Earliest => self.consumer.min_offset(q).await.unwrap_or(0),
                StartPosition::Latest => self.consumer.max_offset(q).await.unwrap_or(0),
            },
        };
        let committed = u64::try_from(offset).unwrap_or(0);
        let attempts = self
            .state
            .load_cursor(&self.group, &cursor_name(&self.topic, partition))
            .ok()
            .flatten()
            .map(|c| {
                c.attempts
                    .into_iter()
                    .filter(|(o, _)| *o >= committed)
                    .collect()
            })
            .unwrap_or_default();
        CursorState {
            committed,
            attempts,
        }
    }

    async fn seek(&self, q: &MessageQueue, to: u64) {
        tracing::debug!(group = %self.group, queue = q.queue_id(), to, "seeking to the first unread offset");
        if let Err(e) = self
            .consumer
            .seek(q, i64::try_from(to).unwrap_or(i64::MAX))
            .await
        {
            tracing::debug!(group = %self.group, queue = q.queue_id(), error = %e, "seek failed");
        }
    }

    /// Lets go of every queue, waits for their final commits, then leaves the group.
    async fn finish(mut self) {
        for (_, part) in self.parts.drain() {
            part.fetched.revoke();
        }
        let committers = std::mem::take(&mut self.committers);
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all(committers),
        )
        .await;
        self.consumer.shutdown().await;
    }
}

/// The state-store name of a queue's retry attempts.
fn cursor_name(topic: &str, partition: i32) -> String {
    format!("{topic}#{partition}")
}

/// One assigned queue: a buffer between the group's consumer and the queue's reader.
struct RmqPartition {
    consumer: Consumer,
    queue: MessageQueue,
    fetched: FetchBuffer,
    initial: CursorState,
    commits: watch::Sender<CursorState>,
}

impl RmqPartition {
    /// The partition and its committer, which commits the newest cursor to the broker (and
    /// the attempts to the state store) and, when the partition is dropped, the last one.
    fn start(
        consumer: Consumer,
        queue: MessageQueue,
        partition: i32,
        initial: CursorState,
        state: Arc<dyn StateStore>,
        group: String,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (commits, mut rx) = watch::channel(initial.clone());
        let part = Arc::new(RmqPartition {
            consumer: consumer.clone(),
            queue: queue.clone(),
            fetched: FetchBuffer::new(initial.committed, BUFFER_HIGH),
            initial,
            commits,
        });
        let name = cursor_name(queue.topic().as_str(), partition);
        let committer = tokio::spawn(async move {
            let mut had_attempts = false;
            loop {
                let done = rx.changed().await.is_err();
                let state_now = rx.borrow_and_update().clone();
                let mut map = HashMap::new();
                map.insert(
                    queue.clone(),
                    i64::try_from(state_now.committed).unwrap_or(i64::MAX),
                );
                consumer.commit_sync_with_map(map, true).await;
                if had_attempts || !state_now.attempts.is_empty() {
                    if let Err(e) = state.save_cursor(&group, &name, &state_now) {
                        tracing::warn!(group = %group, error = %e, "saving retry attempts failed");
                    }
                    had_attempts = !state_now.attempts.is_empty();
                }
                if done {
                    break;
                }
            }
        });
        (part, committer)
    }

    /// Commits the initial position right away.
    async fn commit_now(&self) {
        let mut map = HashMap::new();
        map.insert(
            self.queue.clone(),
            i64::try_from(self.initial.committed).unwrap_or(i64::MAX),
        );
        self.consumer.commit_sync_with_map(map, true).await;
    }
}

impl PartitionLog for RmqPartition {
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        let (batch, resume) = self.fetched.take(from, max);
        if resume {
            let consumer = self.consumer.clone();
            let q = self.queue.clone();
            tokio::spawn(async move { consumer.resume(vec![q]).await });
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
        self.commits.send_replace(state.clone());
        Ok(())
    }
}
