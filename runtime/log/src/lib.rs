//! The embedded event log: evmesh's default store, segmented files in the data folder.
//!
//! # On-disk format
//!
//! ```text
//! <data-dir>/
//!   topics/<topic>/<base-offset:020>.log      segments of the topic's log
//!   topics/<topic>/<base>.log.quarantined     a segment found corrupt at start-up, set aside
//! ```
//!
//! Cursors live beside it in the state store (`evmesh_store::StateDir`, same folder).
//!
//! A segment is the 8 bytes `EVMLOG01` followed by records, each
//! `u32 LE payload length | u32 LE CRC-32 (IEEE) of the payload | payload` (see [`codec`] for the
//! payload). Offsets are dense within a segment, starting at the base offset in the file name;
//! there may be gaps between segments (after a quarantine), which readers skip.
//!
//! # Invariants
//!
//! - One writer thread appends; publishers get their answer only after the records are written
//!   and, with `fsync: always`, `fdatasync`ed. Concurrent publishes share one fsync (group
//!   commit). Readers never see an offset before it is durable under the configured policy.
//! - At start-up every segment is scanned. A torn last record of the newest segment (crash
//!   mid-append; never acknowledged) is cut off. Any other bad record quarantines its segment:
//!   it is renamed, reported with its byte offset, and the process starts without it. After a
//!   quarantined newest segment, new offsets start past any offset it could have held, so no
//!   offset is ever reused.
//! - A cursor is the first offset not yet finished. Cursor files are replaced atomically
//!   (write, fsync, rename). A lost cursor update only causes redelivery, never loss.
//! - A sealed segment is deleted only when every subscription's persisted cursor is past it
//!   (and it is older than the retention time, if one is set).

pub mod codec;
mod fsck;
mod recovery;
mod segment;
#[cfg(test)]
mod tests;
mod topic;
mod writer;

pub use fsck::{fsck, FsckReport};

use evmesh_core::component::{Check, Kind};
use evmesh_core::config::{ConfigError, StartPosition};
use evmesh_core::duration::IsoDuration;
use evmesh_core::Event;
use evmesh_store::{
    lock_poisoned, safe_component, AppendAck, Consumption, EventLog, Housekeeping, LocalTopic,
    LogConfig, LogContext, ReadBatch, StateStore, StoreError, StoreProblem, TopicUsage,
};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use topic::{read_topic, Topic};
use writer::{AppendReq, Writer, WriterMsg};

/// `store: {type: embedded, ...}` (the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// With `fsync: interval`, how often the log is flushed to disk.
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval: IsoDuration,
    /// A segment is closed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// The largest event (encoded) the log accepts; larger ones are refused (`413` on ingest;
    /// a reply or a source record over it is dead-lettered with the reason).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Fully acknowledged segments are kept at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<IsoDuration>,
}

fn default_fsync_interval() -> IsoDuration {
    IsoDuration(Duration::from_millis(10))
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_record_bytes() -> usize {
    16 * 1024 * 1024
}

impl Default for EmbeddedLogConfig {
    fn default() -> Self {
        EmbeddedLogConfig {
            fsync: FsyncPolicy::default(),
            fsync_interval: default_fsync_interval(),
            segment_bytes: default_segment_bytes(),
            max_record_bytes: default_max_record_bytes(),
            retention: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync before the publisher gets its 202 (group-committed).
    #[default]
    Always,
    /// fsync every `fsyncInterval`; a power loss may lose the last interval.
    Interval,
    /// Leave flushing to the OS; survives a process crash, not a power loss.
    Never,
}

impl Kind for EmbeddedLogConfig {
    const KIND: &'static str = "embedded";
}

impl Check for EmbeddedLogConfig {
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.segment_bytes < 4096 {
            errors.push(ConfigError::new("segmentBytes", "must be at least 4096"));
        }
        if !(256..=MAX_RECORD_BYTES).contains(&self.max_record_bytes) {
            errors.push(ConfigError::new(
                "maxRecordBytes",
                "must be between 256 and 67108864 (64 MiB)",
            ));
        }
        if self.fsync_interval.0.is_zero() {
            errors.push(ConfigError::new(
                "fsyncInterval",
                "must be greater than zero",
            ));
        }
        errors
    }
}

impl LogConfig for EmbeddedLogConfig {
    fn open(&self, cx: LogContext) -> BoxFuture<'static, Result<Arc<dyn EventLog>, String>> {
        let opts = LogOptions {
            data_dir: cx.data_dir.clone(),
            fsync: self.fsync,
            fsync_interval: self.fsync_interval.0,
            segment_bytes: self.segment_bytes,
            retention: self.retention.map(|r| r.0),
            max_record_bytes: self.max_record_bytes,
        };
        let fsync = self.fsync;
        Box::pin(async move {
            let log = EmbeddedLog::open(opts, cx.state.as_ref()).map_err(|e| {
                format!("opening the embedded log in {}: {e}", cx.data_dir.display())
            })?;
            tracing::info!(data_dir = %cx.data_dir.display(), fsync = ?fsync, "store opened");
            Ok(Arc::new(log) as Arc<dyn EventLog>)
        })
    }
}

/// Settings of the embedded log (built from [`EmbeddedLogConfig`]).
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
    pub retention: Option<Duration>,
    /// The largest encoded event accepted (at most [`MAX_RECORD_BYTES`]).
    pub max_record_bytes: usize,
}

/// The hard limit on one encoded event in the embedded log.
pub const MAX_RECORD_BYTES: usize = segment::MAX_RECORD;

struct Inner {
    opts: LogOptions,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    writer: mpsc::Sender<WriterMsg>,
    problems: Mutex<Vec<StoreProblem>>,
}

/// The embedded on-disk log.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log, recovering every topic. `state` holds the cursors:
    /// new offsets start past every one of them (see [`recovery`]).
    pub fn open(opts: LogOptions, state: &dyn StateStore) -> Result<Self, StoreError> {
        let topics_dir = opts.data_dir.join("topics");
        fs::create_dir_all(&topics_dir)
            .map_err(|e| StoreError::io(format!("creating {}", topics_dir.display()), e))?;
        let mut topics = HashMap::new();
        let mut problems = Vec::new();
        let entries = fs::read_dir(&topics_dir)
            .map_err(|e| StoreError::io(format!("listing {}", topics_dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("listing topics", e))?;
            if !entry.path().is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let topic = recovery::recover_topic(&name, &entry.path(), &mut problems)?;
            topics.insert(name, Arc::new(topic));
        }
        recovery::raise_to_cursors(state, &opts.data_dir, &mut topics);
        for p in &problems {
            tracing::error!(
                topic = %p.topic, segment = %p.segment.display(), byte_offset = p.byte_offset,
                record = p.record, reason = %p.reason,
                "corrupt segment quarantined; its events are not delivered (inspect with `evmesh fsck`)"
            );
        }
        let (tx, rx) = mpsc::channel(8192);
        let inner = Arc::new(Inner {
            opts,
            topics: RwLock::new(topics),
            writer: tx,
            problems: Mutex::new(problems),
        });
        let w = Writer::new(inner.opts.clone());
        std::thread::Builder::new()
            .name("evmesh-log-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::io("starting the log writer thread", e))?;
        Ok(EmbeddedLog { inner })
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, StoreError> {
        safe_component(name)?;
        if let Some(t) = self
            .inner
            .topics
            .read()
            .map_err(|_| lock_poisoned())?
            .get(name)
        {
            return Ok(t.clone());
        }
        let mut topics = self.inner.topics.write().map_err(|_| lock_poisoned())?;
        if let Some(t) = topics.get(name) {
            return Ok(t.clone());
        }
        let dir = self.inner.opts.data_dir.join("topics").join(name);
        let t = Arc::new(Topic::new(name, dir, 0));
        topics.insert(name.to_owned(), t.clone());
        Ok(t)
    }

    /// Reads up to `max` durable events of a topic from `from`.
    pub fn read_topic(&self, topic: &str, from: u64, max: usize) -> Result<ReadBatch, StoreError> {
        let t = self.topic(topic)?;
        read_topic(&t, from, max)
    }

    /// One past the newest durable offset of a topic, observable for changes.
    pub fn watch_end(&self, topic: &str) -> watch::Receiver<u64> {
        match self.topic(topic) {
            Ok(t) => t.end.subscribe(),
            Err(_) => watch::channel(0).1,
        }
    }
}

/// One topic of the embedded log, read locally.
struct EmbeddedTopic {
    log: EmbeddedLog,
    name: String,
}

impl LocalTopic for EmbeddedTopic {
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        // Reads are bounded preads of recently written, page-cached segments: doing them inline
        // costs less than handing each batch to the blocking pool and back.
        let r = self.log.read_topic(&self.name, from, max);
        Box::pin(async move { r })
    }

    fn watch_end(&self) -> watch::Receiver<u64> {
        self.log.watch_end(&self.name)
    }
}

impl EventLog for EmbeddedLog {
    fn append(
        &self,
        topic: &str,
        events: &[Event],
    ) -> BoxFuture<'static, Result<AppendAck, StoreError>> {
        let mut frames = Vec::with_capacity(events.len() * 256);
        let mut lens = Vec::with_capacity(events.len());
        let mut payload = Vec::with_capacity(512);
        for e in events {
            payload.clear();
            codec::encode(e, &mut payload);
            if payload.len() > self.inner.opts.max_record_bytes.min(segment::MAX_RECORD) {
                let n = payload.len();
                return Box::pin(async move { Err(StoreError::TooLarge(n)) });
            }
            frames.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frames.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            frames.extend_from_slice(&payload);
            lens.push(payload.len() as u32);
        }
        let topic = self.topic(topic);
        let writer = self.inner.writer.clone();
        Box::pin(async move {
            let topic = topic?;
            if lens.is_empty() {
                return Ok(AppendAck {
                    first: topic.visible_end(),
                    count: 0,
                });
            }
            let (reply, rx) = oneshot::channel();
            writer
                .send(WriterMsg::Append(AppendReq {
                    topic,
                    frames,
                    lens,
                    reply,
                }))
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn partitions(&self, topic: &str) -> BoxFuture<'static, Result<Vec<i32>, StoreError>> {
        let r = safe_component(topic).map(|()| vec![0]);
        Box::pin(async move { r })
    }

    fn read(
        &self,
        topic: &str,
        partition: i32,
        from: u64,
        max: usize,
    ) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        let r = if partition == 0 {
            self.read_topic(topic, from, max)
        } else {
            Err(StoreError::Unsupported(format!(
                "the embedded log has one partition per topic; {topic} has no partition {partition}"
            )))
        };
        Box::pin(async move { r })
    }

    fn consume(
        &self,
        _consumer: &str,
        topic: &str,
        _start: StartPosition,
    ) -> BoxFuture<'static, Result<Consumption, StoreError>> {
        let r = safe_component(topic).map(|()| {
            Consumption::Local(Arc::new(EmbeddedTopic {
                log: self.clone(),
                name: topic.to_owned(),
            }) as Arc<dyn LocalTopic>)
        });
        Box::pin(async move { r })
    }

    fn delete_topic(&self, topic: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let inner = self.inner.clone();
        let name = topic.to_owned();
        Box::pin(async move {
            safe_component(&name)?;
            let removed = inner
                .topics
                .write()
                .map_err(|_| lock_poisoned())?
                .remove(&name);
            let (tx, rx) = oneshot::channel();
            if inner
                .writer
                .send(WriterMsg::Forget(name.clone(), tx))
                .await
                .is_ok()
            {
                let _ = rx.await;
            }
            let dir = inner.opts.data_dir.join("topics").join(&name);
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(format!("removing {}", dir.display()), e)),
            }
            if removed.is_some() {
                tracing::info!(topic = %name, "topic deleted");
            }
            Ok(())
        })
    }

    fn topics(&self) -> BoxFuture<'static, Result<Vec<String>, StoreError>> {
        let r = self
            .inner
            .topics
            .read()
            .map(|t| t.keys().cloned().collect())
            .map_err(|_| lock_poisoned());
        Box::pin(async move { r })
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let writer = self.inner.writer.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if writer.send(WriterMsg::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
    }

    fn describe(&self) -> String {
        format!("embedded {}", self.inner.opts.data_dir.display())
    }

    fn housekeeping(&self) -> Option<&dyn Housekeeping> {
        Some(self)
    }
}

impl Housekeeping for EmbeddedLog {
    fn collect_garbage(&self, topic: &str, keep_from: u64) -> Result<usize, StoreError> {
        let t = self.topic(topic)?;
        let retention = self.inner.opts.retention;
        let now = SystemTime::now();
        let doomed: Vec<PathBuf> = {
            let mut log = t.log.write().map_err(|_| lock_poisoned())?;
            let mut doomed = Vec::new();
            while log.len() > 1 {
                let s = &log[0];
                let next = s.next();
                let old_enough = match retention {
                    None => true,
                    Some(r) => fs::metadata(&s.path)
                        .and_then(|m| m.modified())
                        .map(|m| now.duration_since(m).unwrap_or_default() >= r)
                        .unwrap_or(false),
                };
                if s.sealed() && next <= keep_from && old_enough {
                    doomed.push(log.remove(0).path);
                } else {
                    break;
                }
            }
            doomed
        };
        for p in &doomed {
            if let Err(e) = fs::remove_file(p) {
                tracing::warn!(segment = %p.display(), error = %e, "could not delete an acknowledged segment");
            } else {
                tracing::debug!(segment = %p.display(), "deleted a fully acknowledged segment");
            }
        }
        Ok(doomed.len())
    }

    fn end(&self, topic: &str) -> u64 {
        self.topic(topic).map_or(0, |t| t.visible_end())
    }

    fn usage(&self) -> Vec<TopicUsage> {
        let topics: Vec<Arc<Topic>> = match self.inner.topics.read() {
            Ok(t) => t.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        topics
            .iter()
            .filter_map(|t| {
                let log = t.log.read().ok()?;
                if log.is_empty() {
                    return None;
                }
                Some(TopicUsage {
                    topic: t.name.clone(),
                    bytes: log.iter().map(|s| s.end).sum(),
                    segments: log.len() as u64,
                })
            })
            .collect()
    }

    fn problems(&self) -> Vec<StoreProblem> {
        self.inner
            .problems
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }
}
