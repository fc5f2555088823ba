//! What evmesh needs from wherever events and state are kept, as three separate concerns:
//!
//! - [`EventLog`]: the events. Append (durable before it answers), read a partition, consume a
//!   topic (read locally by this instance, or through a consumer group that shares the work
//!   between instances), delete a topic. The embedded log (`evmesh-log`), the Kafka store and
//!   the RocketMQ store implement it; [`FetchBuffer`] is the hand-off the broker-backed ones
//!   share between a group's fetch loop and each assigned partition's reader.
//! - [`StateStore`]: small state beside the events, kept by each instance: the cursors and retry
//!   state of locally read topics, and documents the runtime saves (the subscriptions created
//!   through the admin API), which the store keeps as opaque bytes. [`StateDir`] keeps them in
//!   files.
//! - [`Housekeeping`]: what a log that manages its own disk offers (segment clean-up, problems
//!   found at start-up). A log whose retention is the broker's offers none.
//!
//! Consumption comes in two kinds of progress ([`Progress`]): a committed cursor per partition
//! (the embedded log, Kafka, RocketMQ: dense offsets, everything before the cursor is finished)
//! and per-event acknowledgement (brokers that acknowledge each message: RabbitMQ, NATS
//! JetStream, Redis Streams, MQTT).

mod component;
mod fetch;
mod state;

pub use component::{log, LogConfig, LogContext};
pub use evmesh_core::publish::AppendAck;
pub use fetch::FetchBuffer;
pub use state::{safe_component, StateDir};

use evmesh_core::config::StartPosition;
use evmesh_core::Event;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("the store is shut down")]
    Closed,
    #[error("an event of {0} bytes is larger than the store accepts")]
    TooLarge(usize),
    #[error("the log writer failed earlier ({0}); restart evmesh once the disk is healthy")]
    Failed(String),
    /// An external event store (Kafka) refused or failed; `{0}` says what and why.
    #[error("event store: {0}")]
    Backend(String),
    #[error("invalid state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("{0:?} is not a safe name for a topic or subscription")]
    InvalidName(String),
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// Errors that another attempt cannot fix: the same input fails again (a record over the
    /// size limit, an unusable name). Callers dead-letter instead of retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::TooLarge(_) | StoreError::InvalidName(_) | StoreError::Unsupported(_)
        )
    }
}

pub fn lock_poisoned() -> StoreError {
    StoreError::Corrupt("internal lock poisoned by an earlier panic".into())
}

/// An event read back with its offset. The event is shared: the fan-out hands the same one to
/// every subscription it matches.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub offset: u64,
    pub event: Arc<Event>,
}

#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    pub events: Vec<StoredEvent>,
    /// Where the next read continues (past gaps and what was returned).
    pub next: u64,
}

/// A consumer's position on one partition, plus the attempts already made on events it has
/// not finished, so that a restart does not reset their retry budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    pub committed: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attempts: BTreeMap<u64, u32>,
}

/// A problem found when a log was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreProblem {
    pub topic: String,
    pub segment: PathBuf,
    pub byte_offset: u64,
    pub record: u64,
    pub reason: String,
}

/// Where events live.
pub trait EventLog: Send + Sync + 'static {
    /// Makes the events durable (per the log's policy) as one unit; resolves only then.
    fn append(
        &self,
        topic: &str,
        events: &[Event],
    ) -> BoxFuture<'static, Result<AppendAck, StoreError>>;

    /// The partitions of a topic (the embedded log has one, `0`).
    fn partitions(&self, topic: &str) -> BoxFuture<'static, Result<Vec<i32>, StoreError>>;

    /// Reads up to `max` durable events of one partition from `from`, without joining any
    /// consumer group (dead-letter lists, inspection).
    fn read(
        &self,
        topic: &str,
        partition: i32,
        from: u64,
        max: usize,
    ) -> BoxFuture<'static, Result<ReadBatch, StoreError>>;

    /// How `consumer` reads `topic`: by itself ([`Consumption::Local`], cursor in the state
    /// store) or as a member of a consumer group ([`Consumption::Group`]).
    fn consume(
        &self,
        consumer: &str,
        topic: &str,
        start: StartPosition,
    ) -> BoxFuture<'static, Result<Consumption, StoreError>>;

    /// Removes a topic and everything in it (a deleted subscription's dead-letter and re-drive
    /// topics, so that a new one of the same name starts clean).
    fn delete_topic(&self, topic: &str) -> BoxFuture<'static, Result<(), StoreError>>;

    /// The evmesh topics this log holds.
    fn topics(&self) -> BoxFuture<'static, Result<Vec<String>, StoreError>>;

    /// Finishes pending appends and stops writing.
    fn close(&self) -> BoxFuture<'static, ()>;

    /// A short description for logs (`embedded ./evmesh-data`, `kafka k1:9092`).
    fn describe(&self) -> String;

    /// Disk management, for logs that manage their own files.
    fn housekeeping(&self) -> Option<&dyn Housekeeping> {
        None
    }
}

/// A topic this instance reads by itself (one partition, dense offsets).
pub trait LocalTopic: Send + Sync + 'static {
    /// Up to `max` durable events from `from`; `next` skips gaps.
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>>;
    /// One past the newest durable offset, observable for changes.
    fn watch_end(&self) -> watch::Receiver<u64>;
}

/// How a consumer reads a topic.
pub enum Consumption {
    /// This instance reads the topic itself; the consumer's cursor lives in the state store.
    Local(Arc<dyn LocalTopic>),
    /// The log hands out partitions through a consumer group shared with other instances.
    Group(GroupConsumption),
}

/// How a partition records what is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A committed cursor: every offset before it is finished (offsets are dense).
    Cursor,
    /// Each event is acknowledged on its own ([`PartitionLog::ack`]); the broker redelivers
    /// what was not acknowledged. Offsets are the consumer's own sequence numbers.
    PerEvent,
}

/// One partition of a topic as one consumer reads it: offsets only grow, reads continue where
/// the last one ended.
pub trait PartitionLog: Send + Sync + 'static {
    /// Up to `max` events from `from` that are already here; empty when there are none yet.
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>>;
    /// One past the newest offset readable now, observable for changes.
    fn watch_end(&self) -> watch::Receiver<u64>;
    fn progress(&self) -> Progress {
        Progress::Cursor
    }
    fn load_cursor(&self) -> Result<Option<CursorState>, StoreError>;
    /// Records that everything before `state.committed` is finished (plus retry state). With
    /// [`Progress::PerEvent`] only the retry state matters.
    fn save_cursor(&self, state: &CursorState) -> Result<(), StoreError>;
    /// With [`Progress::PerEvent`]: the event at `offset` is finished (delivered, filtered out
    /// or dead-lettered) and may be acknowledged to the broker.
    fn ack(&self, offset: u64) -> Result<(), StoreError> {
        let _ = offset;
        Ok(())
    }
}

/// A partition handed to this instance by a consumer group.
pub struct Assignment {
    pub partition: i32,
    pub log: Arc<dyn PartitionLog>,
    /// Turns true when the group takes the partition away (another instance owns it now).
    pub revoked: watch::Receiver<bool>,
}

/// Membership of one consumer group: partitions arrive as they are assigned; dropping this
/// leaves the group.
pub struct GroupConsumption {
    pub assignments: mpsc::UnboundedReceiver<Assignment>,
    pub membership: Box<dyn Send + Sync>,
}

/// Small state beside the events, per instance.
pub trait StateStore: Send + Sync + 'static {
    fn load_cursor(&self, consumer: &str, topic: &str) -> Result<Option<CursorState>, StoreError>;
    fn save_cursor(
        &self,
        consumer: &str,
        topic: &str,
        state: &CursorState,
    ) -> Result<(), StoreError>;
    /// Every saved cursor: `(consumer, topic, committed)`.
    fn cursors(&self) -> Vec<(String, String, u64)>;
    /// Forgets everything saved for a consumer.
    fn delete_consumer(&self, consumer: &str) -> Result<(), StoreError>;
    /// A document the runtime keeps (opaque bytes), or `None` if never saved.
    fn load_document(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces a document atomically.
    fn save_document(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError>;
}

/// Disk management of a log that keeps its own files.
pub trait Housekeeping: Send + Sync {
    /// Drops what every consumer is past (`keep_from` is the lowest cursor); says how many
    /// segments went.
    fn collect_garbage(&self, topic: &str, keep_from: u64) -> Result<usize, StoreError>;
    /// One past the newest offset of a topic.
    fn end(&self, topic: &str) -> u64;
    /// Problems found when the log was opened.
    fn problems(&self) -> Vec<StoreProblem>;
    /// What each topic occupies on disk.
    fn usage(&self) -> Vec<TopicUsage> {
        Vec::new()
    }
}

/// One topic's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicUsage {
    pub topic: String,
    pub bytes: u64,
    pub segments: u64,
}

/// A locally read topic as one consumer's partition: reads through the log, cursor in the
/// state store.
pub struct LocalPartition {
    pub topic: Arc<dyn LocalTopic>,
    pub state: Arc<dyn StateStore>,
    pub consumer: String,
    pub name: String,
}

impl PartitionLog for LocalPartition {
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        self.topic.read(from, max)
    }
    fn watch_end(&self) -> watch::Receiver<u64> {
        self.topic.watch_end()
    }
    fn load_cursor(&self) -> Result<Option<CursorState>, StoreError> {
        self.state.load_cursor(&self.consumer, &self.name)
    }
    fn save_cursor(&self, state: &CursorState) -> Result<(), StoreError> {
        self.state.save_cursor(&self.consumer, &self.name, state)
    }
}

/// Reads a topic from where `from` says (per partition) to its current end, over every
/// partition in partition order; says where each partition ended.
pub async fn read_to_end(
    log: &dyn EventLog,
    topic: &str,
    from: impl Fn(i32) -> u64,
) -> Result<(Vec<StoredEvent>, BTreeMap<i32, u64>), StoreError> {
    let mut out = Vec::new();
    let mut ends = BTreeMap::new();
    for p in log.partitions(topic).await? {
        let mut pos = from(p);
        loop {
            let b = log.read(topic, p, pos, 1000).await?;
            let progressed = b.next > pos;
            pos = b.next.max(pos);
            if b.events.is_empty() && !progressed {
                break;
            }
            out.extend(b.events);
        }
        ends.insert(p, pos);
    }
    Ok((out, ends))
}
