//! The durable event log and the subscription cursors: evmesh's embedded default store.
//!
//! # On-disk format
//!
//! ```text
//! <data-dir>/
//!   topics/<topic>/<base-offset:020>.log      segments of the topic's log
//!   topics/<topic>/<base>.log.quarantined     a segment found corrupt at start-up, set aside
//!   subscriptions/<name>/<topic>.cursor.json  a subscription's cursor on one topic
//!   subscriptions.json                        subscriptions created through the admin API
//! ```
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
mod segment;
mod state;

pub use state::StateDir;

use evmesh_core::config::{FsyncPolicy, StartPosition, SubscriptionConfig};
use evmesh_core::Event;
use futures_util::future::BoxFuture;
use segment::{parse_segment_name, scan, segment_name, Damage, Segment, FRAME, MAGIC, MIN_RECORD};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

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
}

impl StoreError {
    /// Errors that another attempt cannot fix: the same input fails again (a record over the
    /// size limit, an unusable name). Callers dead-letter instead of retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::TooLarge(_) | StoreError::InvalidName(_))
    }
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Settings of the embedded store (built from `EmbeddedStoreConfig`).
#[derive(Debug, Clone)]
pub struct StoreOptions {
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

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub first: u64,
    pub count: u64,
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

/// A subscription's position on one topic, plus the attempts already made on events it has
/// not finished, so that a restart does not reset their retry budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    pub committed: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attempts: BTreeMap<u64, u32>,
}

/// A problem found when the store was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreProblem {
    pub topic: String,
    pub segment: PathBuf,
    pub byte_offset: u64,
    pub record: u64,
    pub reason: String,
}

/// What every event store offers the runtime. The embedded log implements it; Kafka- and
/// RocketMQ-backed stores implement it as well.
pub trait Store: Send + Sync + 'static {
    /// Makes the events durable (per the fsync policy) as one unit; resolves only then.
    fn append(
        &self,
        topic: &str,
        events: &[Event],
    ) -> BoxFuture<'static, Result<AppendAck, StoreError>>;
    /// Reads up to `max` durable events starting at `from`.
    fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
    ) -> BoxFuture<'static, Result<ReadBatch, StoreError>>;
    /// The next offset to be written (the durable end), observable for changes.
    fn watch_end(&self, topic: &str) -> watch::Receiver<u64>;
    fn load_cursor(
        &self,
        subscription: &str,
        topic: &str,
    ) -> Result<Option<CursorState>, StoreError>;
    fn save_cursor(
        &self,
        subscription: &str,
        topic: &str,
        state: &CursorState,
    ) -> Result<(), StoreError>;
    fn delete_subscription_state(&self, subscription: &str) -> Result<(), StoreError>;
    fn load_api_subscriptions(&self) -> Result<Vec<SubscriptionConfig>, StoreError>;
    fn save_api_subscriptions(&self, subs: &[SubscriptionConfig]) -> Result<(), StoreError>;
    /// Drops what every subscription is past (`keep_from` is the lowest cursor).
    fn collect_garbage(&self, topic: &str, keep_from: u64) -> Result<usize, StoreError>;
    fn topics(&self) -> Vec<String>;
    fn problems(&self) -> Vec<StoreProblem>;
    /// Finishes pending appends and stops the writer.
    fn close(&self) -> BoxFuture<'static, ()>;
    /// Removes a topic and everything in it (a deleted subscription's dead-letter and re-drive
    /// topics, so that a new one of the same name starts clean).
    fn delete_topic(&self, topic: &str) -> BoxFuture<'static, Result<(), StoreError>>;
    /// For stores that share consumption between evmesh instances (Kafka): joins the
    /// subscription's consumer group on `topic` and hands out the partitions this instance is
    /// given. `None` means the subscription reads the topic itself with [`Store::read`] and the
    /// cursor methods (the embedded log: one partition, one reader).
    fn consume_group(
        &self,
        subscription: &str,
        topic: &str,
        start: StartPosition,
    ) -> BoxFuture<'static, Result<Option<GroupConsumption>, StoreError>> {
        let _ = (subscription, topic, start);
        Box::pin(async { Ok(None) })
    }
}

/// One partition of a topic as one subscription reads it: offsets are dense and only grow,
/// reads continue where the last one ended.
pub trait PartitionLog: Send + Sync + 'static {
    /// Up to `max` events from `from` that are already here; empty when there are none yet.
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>>;
    /// One past the newest offset readable now, observable for changes.
    fn watch_end(&self) -> watch::Receiver<u64>;
    fn load_cursor(&self) -> Result<Option<CursorState>, StoreError>;
    /// Records that everything before `state.committed` is finished (plus retry state).
    fn save_cursor(&self, state: &CursorState) -> Result<(), StoreError>;
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

/// One topic of a store that reads itself (the embedded log), as a [`PartitionLog`].
pub struct TopicLog {
    pub store: Arc<dyn Store>,
    pub subscription: String,
    pub topic: String,
}

impl PartitionLog for TopicLog {
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        self.store.read(&self.topic, from, max)
    }
    fn watch_end(&self) -> watch::Receiver<u64> {
        self.store.watch_end(&self.topic)
    }
    fn load_cursor(&self) -> Result<Option<CursorState>, StoreError> {
        self.store.load_cursor(&self.subscription, &self.topic)
    }
    fn save_cursor(&self, state: &CursorState) -> Result<(), StoreError> {
        self.store
            .save_cursor(&self.subscription, &self.topic, state)
    }
}

struct SegMeta {
    base: u64,
    path: PathBuf,
    file: Arc<File>,
    positions: Vec<u32>,
    end: u64,
    sealed: bool,
}

struct Topic {
    name: String,
    dir: PathBuf,
    log: RwLock<Vec<SegMeta>>,
    end: watch::Sender<u64>,
}

impl Topic {
    fn durable_end(&self) -> u64 {
        *self.end.borrow()
    }
}

struct AppendReq {
    topic: Arc<Topic>,
    /// Framed records, ready to be written.
    frames: Vec<u8>,
    lens: Vec<u32>,
    reply: oneshot::Sender<Result<AppendAck, StoreError>>,
}

enum WriterMsg {
    Append(AppendReq),
    /// Forget a deleted topic's open segment.
    Forget(String, oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

struct Inner {
    opts: StoreOptions,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    writer: mpsc::Sender<WriterMsg>,
    problems: Mutex<Vec<StoreProblem>>,
    /// Cursor and registry files.
    state: StateDir,
}

/// The embedded on-disk store.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

pub(crate) fn lock_poisoned() -> StoreError {
    StoreError::Corrupt("internal lock poisoned by an earlier panic".into())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store, recovering every topic.
    pub fn open(opts: StoreOptions) -> Result<Self, StoreError> {
        let topics_dir = opts.data_dir.join("topics");
        fs::create_dir_all(&topics_dir)
            .map_err(|e| StoreError::io(format!("creating {}", topics_dir.display()), e))?;
        let state = StateDir::open(&opts.data_dir)?;
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
            let topic = recover_topic(&name, &entry.path(), &mut problems)?;
            topics.insert(name, Arc::new(topic));
        }
        raise_to_cursors(&state, &opts.data_dir, &mut topics);
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
            state,
        });
        let w = Writer {
            opts: inner.opts.clone(),
            active: HashMap::new(),
            failed: None,
        };
        std::thread::Builder::new()
            .name("evmesh-log-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::io("starting the log writer thread", e))?;
        Ok(EmbeddedStore { inner })
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, StoreError> {
        state::safe_component(name)?;
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
        let t = Arc::new(Topic {
            name: name.to_owned(),
            dir,
            log: RwLock::new(Vec::new()),
            end: watch::channel(0).0,
        });
        topics.insert(name.to_owned(), t.clone());
        Ok(t)
    }

    /// Blocking read; see [`Store::read`].
    pub fn read_blocking(
        &self,
        topic: &str,
        from: u64,
        max: usize,
    ) -> Result<ReadBatch, StoreError> {
        let t = self.topic(topic)?;
        read_topic(&t, from, max)
    }
}

fn read_topic(t: &Topic, from: u64, max: usize) -> Result<ReadBatch, StoreError> {
    let durable = t.durable_end();
    let (seg, from, to) = {
        let log = t.log.read().map_err(|_| lock_poisoned())?;
        let mut from = from;
        let mut found = None;
        for s in log.iter() {
            let next = s.base + s.positions.len() as u64;
            if from < s.base {
                from = s.base; // a gap (deleted or quarantined): skip ahead
            }
            if from < next {
                found = Some(s);
                break;
            }
        }
        let Some(s) = found else {
            // Nothing at or after `from` below the durable end: a gap (quarantined or lost
            // offsets) up to the end, which the reader skips.
            return Ok(ReadBatch {
                events: Vec::new(),
                next: from.max(durable),
            });
        };
        let to = (s.base + s.positions.len() as u64)
            .min(durable)
            .min(from + max as u64);
        if to <= from {
            return Ok(ReadBatch {
                events: Vec::new(),
                next: from,
            });
        }
        let snapshot = Segment {
            base: s.base,
            path: s.path.clone(),
            file: s.file.clone(),
            positions: s.positions[(from - s.base) as usize..(to - s.base) as usize].to_vec(),
            end: s
                .positions
                .get((to - s.base) as usize)
                .map(|p| u64::from(*p))
                .unwrap_or(s.end),
        };
        (snapshot, from, to)
    };
    // `seg` holds only the positions of [from, to), rebased.
    let seg = Segment { base: from, ..seg };
    let raw = seg.read_range(from, to)?;
    let mut events = Vec::with_capacity(raw.len());
    for (offset, payload) in raw {
        let event = codec::decode(&payload)
            .map_err(|e| StoreError::Corrupt(format!("{} offset {offset}: {e}", t.name)))?;
        events.push(StoredEvent {
            offset,
            event: Arc::new(event),
        });
    }
    Ok(ReadBatch { events, next: to })
}

fn recover_topic(
    name: &str,
    dir: &Path,
    problems: &mut Vec<StoreProblem>,
) -> Result<Topic, StoreError> {
    let mut bases: Vec<(u64, PathBuf)> = Vec::new();
    for entry in
        fs::read_dir(dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?
    {
        let entry = entry.map_err(|e| StoreError::io("listing segments", e))?;
        let fname = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = parse_segment_name(&fname) {
            bases.push((base, entry.path()));
        }
    }
    bases.sort();
    let mut segs = Vec::new();
    let mut quarantined: Vec<u64> = Vec::new();
    let count = bases.len();
    for (i, (base, path)) in bases.into_iter().enumerate() {
        let last = i + 1 == count;
        let sc = scan(&path, base)
            .map_err(|e| StoreError::io(format!("scanning {}", path.display()), e))?;
        match &sc.damage {
            Some(Damage::TornTail { byte_offset }) if last => {
                tracing::warn!(segment = %path.display(), byte_offset, "cutting off a torn record left by a crash");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
                let keep = sc.valid_end.max(MAGIC.len() as u64);
                f.set_len(keep)
                    .map_err(|e| StoreError::io("truncating a torn record", e))?;
                if sc.file_len < MAGIC.len() as u64 {
                    (&f).write_all(MAGIC)
                        .map_err(|e| StoreError::io("rewriting a segment header", e))?;
                }
                f.sync_all()
                    .map_err(|e| StoreError::io("syncing a repaired segment", e))?;
            }
            Some(d) => {
                let (byte_offset, record, reason) = match d {
                    Damage::TornTail { byte_offset } => (
                        *byte_offset,
                        base + sc.positions.len() as u64,
                        "incomplete record inside a sealed segment".to_owned(),
                    ),
                    Damage::Corrupt {
                        byte_offset,
                        record,
                        reason,
                    } => (*byte_offset, *record, reason.clone()),
                };
                let q = path.with_extension("log.quarantined");
                fs::rename(&path, &q)
                    .map_err(|e| StoreError::io(format!("quarantining {}", path.display()), e))?;
                problems.push(StoreProblem {
                    topic: name.to_owned(),
                    segment: path.clone(),
                    byte_offset,
                    record,
                    reason,
                });
                // No offset this segment could have held is ever handed out again: a record
                // takes at least MIN_RECORD bytes, which bounds how many it held.
                quarantined.push(base + sc.file_len / MIN_RECORD + 1);
                continue;
            }
            None => {}
        }
        let file = File::open(&path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let end = sc.valid_end.max(MAGIC.len() as u64);
        quarantined.clear(); // a valid segment after them bounds their offsets already
        segs.push(SegMeta {
            base,
            path,
            file: Arc::new(file),
            positions: sc.positions,
            end,
            sealed: !last,
        });
    }
    let next = segs
        .last()
        .map(|s: &SegMeta| s.base + s.positions.len() as u64)
        .unwrap_or(0)
        .max(quarantined.iter().copied().max().unwrap_or(0));
    if let Some(last) = segs.last_mut() {
        if last.base + (last.positions.len() as u64) < next {
            last.sealed = true; // new appends must start past the quarantined range
        }
    }
    Ok(Topic {
        name: name.to_owned(),
        dir: dir.to_owned(),
        log: RwLock::new(segs),
        end: watch::channel(next).0,
    })
}

/// After a power loss with `fsync: interval` or `never`, a saved cursor can be ahead of the
/// recovered end of its topic (the cursor file was synced, the log was not). New offsets must
/// then start past every saved cursor, or new events would get offsets a subscription believes
/// it has finished and would never be delivered. The topic's newest segment is sealed so the
/// next append opens a segment at the raised base, as after a quarantine.
fn raise_to_cursors(state: &StateDir, data_dir: &Path, topics: &mut HashMap<String, Arc<Topic>>) {
    let mut highest: HashMap<String, (u64, String)> = HashMap::new();
    for (sub, topic, committed) in state.all_cursors() {
        let e = highest.entry(topic).or_insert((0, String::new()));
        if committed > e.0 {
            *e = (committed, sub);
        }
    }
    for (name, (cursor, sub)) in highest {
        if state::safe_component(&name).is_err() {
            continue;
        }
        let end = topics.get(&name).map_or(0, |t| t.durable_end());
        if cursor <= end {
            continue;
        }
        tracing::warn!(
            topic = %name, log_end = end, cursor, subscription = %sub,
            "the log ends before a saved cursor (writes lost in a power loss?); new events start at the cursor"
        );
        match topics.get(&name) {
            Some(t) => {
                if let Ok(mut log) = t.log.write() {
                    if let Some(last) = log.last_mut() {
                        last.sealed = true;
                    }
                }
                t.end.send_replace(cursor);
            }
            None => {
                topics.insert(
                    name.clone(),
                    Arc::new(Topic {
                        dir: data_dir.join("topics").join(&name),
                        name,
                        log: RwLock::new(Vec::new()),
                        end: watch::channel(cursor).0,
                    }),
                );
            }
        }
    }
}

/// Index updates of one commit: per topic, per segment base the new record positions and end,
/// and the topic's next offset.
type IndexUpdates = Vec<(Arc<Topic>, Vec<(u64, Vec<u32>, u64)>, u64)>;

/// The writer's state for a topic's newest segment.
struct Active {
    base: u64,
    file: File,
    /// Bytes in the file plus `buf`.
    size: u64,
    next: u64,
    /// Frames staged by this commit, written with one `write_all`.
    buf: Vec<u8>,
}

/// What still needs an fsync under `fsync: interval`.
#[derive(Default)]
struct Dirty {
    topics: HashSet<String>,
    sealed: Vec<File>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.sealed.is_empty()
    }
}

struct Writer {
    opts: StoreOptions,
    active: HashMap<String, Active>,
    /// Set after a failed write or fsync: the file's state is unknown, so every later append
    /// is refused until a restart re-reads the log (PostgreSQL's lesson from "fsyncgate").
    failed: Option<String>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the log writer");
                return;
            }
        };
        let mut dirty = Dirty::default();
        let mut last_sync = Instant::now();
        rt.block_on(async {
            loop {
                let msg = if self.opts.fsync == FsyncPolicy::Interval && !dirty.is_empty() {
                    let wait = self.opts.fsync_interval.saturating_sub(last_sync.elapsed());
                    match tokio::time::timeout(wait, rx.recv()).await {
                        Ok(m) => m,
                        Err(_) => {
                            self.sync_dirty(&mut dirty);
                            last_sync = Instant::now();
                            continue;
                        }
                    }
                } else {
                    rx.recv().await
                };
                let Some(first) = msg else { break };
                let mut batch = Vec::new();
                let mut close = None;
                let mut forget = None;
                match first {
                    WriterMsg::Append(r) => batch.push(r),
                    WriterMsg::Forget(t, tx) => forget = Some((t, tx)),
                    WriterMsg::Close(tx) => close = Some(tx),
                }
                while close.is_none() && forget.is_none() && batch.len() < 4096 {
                    match rx.try_recv() {
                        Ok(WriterMsg::Append(r)) => batch.push(r),
                        Ok(WriterMsg::Forget(t, tx)) => forget = Some((t, tx)),
                        Ok(WriterMsg::Close(tx)) => close = Some(tx),
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    self.commit(batch, &mut dirty);
                    if self.opts.fsync == FsyncPolicy::Interval
                        && last_sync.elapsed() >= self.opts.fsync_interval
                    {
                        self.sync_dirty(&mut dirty);
                        last_sync = Instant::now();
                    }
                }
                if let Some((topic, tx)) = forget {
                    self.sync_dirty(&mut dirty);
                    self.active.remove(&topic);
                    let _ = tx.send(());
                }
                if let Some(tx) = close {
                    self.sync_dirty(&mut dirty);
                    let _ = tx.send(());
                    break;
                }
            }
        });
        self.sync_dirty(&mut dirty);
    }

    fn sync_dirty(&mut self, dirty: &mut Dirty) {
        for f in dirty.sealed.drain(..) {
            if let Err(e) = f.sync_data() {
                self.fail(format!("fdatasync of a sealed segment: {e}"));
            }
        }
        for t in dirty.topics.drain() {
            if let Some(a) = self.active.get(&t) {
                if let Err(e) = a.file.sync_data() {
                    self.fail(format!("fdatasync of topic {t}: {e}"));
                }
            }
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!(reason = %why, "the log writer failed; further publishes are refused until evmesh restarts");
        self.failed.get_or_insert(why);
    }

    fn active_for(&mut self, t: &Topic) -> Result<&mut Active, StoreError> {
        if !self.active.contains_key(&t.name) {
            fs::create_dir_all(&t.dir)
                .map_err(|e| StoreError::io(format!("creating {}", t.dir.display()), e))?;
            let next = t.durable_end();
            let reuse = {
                let log = t.log.read().map_err(|_| lock_poisoned())?;
                log.last()
                    .filter(|s| !s.sealed)
                    .map(|s| (s.base, s.path.clone(), s.end))
            };
            let a = match reuse {
                Some((base, path, end)) => {
                    let file = OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
                    Active {
                        base,
                        file,
                        size: end,
                        next,
                        buf: Vec::new(),
                    }
                }
                None => self.create_segment(t, next)?,
            };
            self.active.insert(t.name.clone(), a);
        }
        self.active
            .get_mut(&t.name)
            .ok_or_else(|| StoreError::Corrupt("writer state vanished".into()))
    }

    fn create_segment(&self, t: &Topic, base: u64) -> Result<Active, StoreError> {
        let path = t.dir.join(segment_name(base));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        file.write_all(MAGIC)
            .map_err(|e| StoreError::io("writing a segment header", e))?;
        if self.opts.fsync == FsyncPolicy::Always {
            file.sync_all()
                .map_err(|e| StoreError::io("syncing a new segment", e))?;
            if let Ok(d) = File::open(&t.dir) {
                let _ = d.sync_all();
            }
        }
        let read = File::open(&path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let mut log = t.log.write().map_err(|_| lock_poisoned())?;
        if let Some(last) = log.last_mut() {
            last.sealed = true;
        }
        log.push(SegMeta {
            base,
            path,
            file: Arc::new(read),
            positions: Vec::new(),
            end: MAGIC.len() as u64,
            sealed: false,
        });
        Ok(Active {
            base,
            file,
            size: MAGIC.len() as u64,
            next: base,
            buf: Vec::new(),
        })
    }

    /// Writes one group of appends (one write per topic), syncs once per file, then answers
    /// every publisher. Readers see the new offsets only after that.
    fn commit(&mut self, batch: Vec<AppendReq>, dirty: &mut Dirty) {
        if let Some(why) = &self.failed {
            for req in batch {
                let _ = req.reply.send(Err(StoreError::Failed(why.clone())));
            }
            return;
        }
        let mut index: IndexUpdates = Vec::new();
        let mut results: Vec<Result<AppendAck, StoreError>> = Vec::with_capacity(batch.len());
        let mut touched: Vec<String> = Vec::new();
        let mut sealed: Vec<File> = Vec::new();
        for req in &batch {
            let r = self.stage(req, &mut index, &mut sealed);
            if r.is_ok() && !touched.contains(&req.topic.name) {
                touched.push(req.topic.name.clone());
            }
            results.push(r);
        }
        // A failed stage may have written part of a buffer while sealing a segment.
        let mut failure = results
            .iter()
            .find_map(|r| r.as_ref().err().map(ToString::to_string));
        for name in touched.iter().filter(|_| failure.is_none()) {
            if let Some(a) = self.active.get_mut(name) {
                if let Err(e) = a.file.write_all(&a.buf) {
                    failure = Some(format!("appending to topic {name}: {e}"));
                    break;
                }
                a.buf.clear();
            }
        }
        if failure.is_none() && self.opts.fsync == FsyncPolicy::Always {
            for f in &sealed {
                if let Err(e) = f.sync_data() {
                    failure = Some(format!("fdatasync of a sealed segment: {e}"));
                }
            }
            for name in &touched {
                if let Some(a) = self.active.get(name) {
                    if let Err(e) = a.file.sync_data() {
                        failure = Some(format!("fdatasync of topic {name}: {e}"));
                    }
                }
            }
        } else if failure.is_none() {
            dirty.sealed.extend(sealed);
            dirty.topics.extend(touched);
        }
        if let Some(why) = failure {
            // Nothing of this group is acknowledged or made visible.
            self.fail(why.clone());
            for req in batch {
                let _ = req.reply.send(Err(StoreError::Failed(why.clone())));
            }
            return;
        }
        for (topic, updates, next) in index {
            if let Ok(mut log) = topic.log.write() {
                for (base, positions, end) in updates {
                    if let Some(s) = log.iter_mut().rev().find(|s| s.base == base) {
                        s.positions.extend_from_slice(&positions);
                        s.end = end;
                    }
                }
            }
            topic.end.send_replace(next);
        }
        for (req, r) in batch.into_iter().zip(results) {
            let _ = req.reply.send(r);
        }
    }

    /// Stages one request's frames into its topic's buffer, rolling segments as needed.
    fn stage(
        &mut self,
        req: &AppendReq,
        index: &mut IndexUpdates,
        sealed: &mut Vec<File>,
    ) -> Result<AppendAck, StoreError> {
        let seg_limit = self.opts.segment_bytes;
        let t = req.topic.clone();
        let first = self.active_for(&t)?.next;
        let mut p = 0usize;
        let mut i = 0usize;
        while i < req.lens.len() {
            let a = self.active_for(&t)?;
            // Take as many records as fit in the current segment (at least one per segment).
            let mut j = i;
            let mut bytes = 0u64;
            while j < req.lens.len() {
                let rec = (FRAME + req.lens[j] as usize) as u64;
                let empty = a.size + bytes == MAGIC.len() as u64;
                if a.size + bytes + rec > seg_limit && !empty {
                    break;
                }
                bytes += rec;
                j += 1;
            }
            if j == i {
                // Seal the full segment: write what is staged, then start the next one.
                let next = a.next;
                a.file
                    .write_all(&a.buf)
                    .map_err(|e| StoreError::io(format!("appending to topic {}", t.name), e))?;
                a.buf.clear();
                let fresh = self.create_segment(&t, next)?;
                if let Some(old) = self.active.insert(t.name.clone(), fresh) {
                    sealed.push(old.file);
                }
                continue;
            }
            a.buf.extend_from_slice(&req.frames[p..p + bytes as usize]);
            let mut positions = Vec::with_capacity(j - i);
            let mut pos = a.size;
            for k in i..j {
                positions.push(pos as u32);
                pos += (FRAME + req.lens[k] as usize) as u64;
            }
            a.size = pos;
            a.next += (j - i) as u64;
            let (base, end, next) = (a.base, a.size, a.next);
            let entry = match index.iter_mut().position(|(tt, _, _)| Arc::ptr_eq(tt, &t)) {
                Some(k) => &mut index[k],
                None => {
                    index.push((t.clone(), Vec::new(), next));
                    let k = index.len() - 1;
                    &mut index[k]
                }
            };
            match entry.1.iter_mut().find(|(b, _, _)| *b == base) {
                Some(u) => {
                    u.1.extend(positions);
                    u.2 = end;
                }
                None => entry.1.push((base, positions, end)),
            }
            entry.2 = next;
            p += bytes as usize;
            i = j;
        }
        Ok(AppendAck {
            first,
            count: req.lens.len() as u64,
        })
    }
}

impl Store for EmbeddedStore {
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
                    first: topic.durable_end(),
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

    fn read(
        &self,
        topic: &str,
        from: u64,
        max: usize,
    ) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        let t = self.topic(topic);
        // Reads are bounded preads of recently written, page-cached segments: doing them inline
        // costs less than handing each batch to the blocking pool and back.
        let r = t.and_then(|t| read_topic(&t, from, max));
        Box::pin(async move { r })
    }

    fn watch_end(&self, topic: &str) -> watch::Receiver<u64> {
        match self.topic(topic) {
            Ok(t) => t.end.subscribe(),
            Err(_) => watch::channel(0).1,
        }
    }

    fn load_cursor(
        &self,
        subscription: &str,
        topic: &str,
    ) -> Result<Option<CursorState>, StoreError> {
        self.inner.state.load_cursor(subscription, topic)
    }

    fn save_cursor(
        &self,
        subscription: &str,
        topic: &str,
        state: &CursorState,
    ) -> Result<(), StoreError> {
        self.inner.state.save_cursor(subscription, topic, state)
    }

    fn delete_subscription_state(&self, subscription: &str) -> Result<(), StoreError> {
        self.inner.state.delete_subscription(subscription)
    }

    fn load_api_subscriptions(&self) -> Result<Vec<SubscriptionConfig>, StoreError> {
        self.inner.state.load_api_subscriptions()
    }

    fn save_api_subscriptions(&self, subs: &[SubscriptionConfig]) -> Result<(), StoreError> {
        self.inner.state.save_api_subscriptions(subs)
    }

    fn collect_garbage(&self, topic: &str, keep_from: u64) -> Result<usize, StoreError> {
        let t = self.topic(topic)?;
        let retention = self.inner.opts.retention;
        let now = SystemTime::now();
        let doomed: Vec<PathBuf> = {
            let mut log = t.log.write().map_err(|_| lock_poisoned())?;
            let mut doomed = Vec::new();
            while log.len() > 1 {
                let s = &log[0];
                let next = s.base + s.positions.len() as u64;
                let old_enough = match retention {
                    None => true,
                    Some(r) => fs::metadata(&s.path)
                        .and_then(|m| m.modified())
                        .map(|m| now.duration_since(m).unwrap_or_default() >= r)
                        .unwrap_or(false),
                };
                if s.sealed && next <= keep_from && old_enough {
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

    fn topics(&self) -> Vec<String> {
        self.inner
            .topics
            .read()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn problems(&self) -> Vec<StoreProblem> {
        self.inner
            .problems
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    fn delete_topic(&self, topic: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        let inner = self.inner.clone();
        let name = topic.to_owned();
        Box::pin(async move {
            state::safe_component(&name)?;
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

    fn close(&self) -> BoxFuture<'static, ()> {
        let writer = self.inner.writer.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if writer.send(WriterMsg::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
    }
}

/// What `evmesh fsck` found in one store, without changing anything.
#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub segments: usize,
    pub records: u64,
    pub torn_tails: Vec<StoreProblem>,
    pub corrupt: Vec<StoreProblem>,
    pub quarantined: Vec<PathBuf>,
    pub bad_state_files: Vec<String>,
}

impl FsckReport {
    /// Torn tails are repaired at start-up and are not errors.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.quarantined.is_empty() && self.bad_state_files.is_empty()
    }
}

/// Checks a store offline: every segment's frames and CRCs, every state file.
pub fn fsck(data_dir: &Path) -> Result<FsckReport, StoreError> {
    let mut report = FsckReport::default();
    let topics_dir = data_dir.join("topics");
    if !topics_dir.is_dir() {
        return Err(StoreError::State {
            path: topics_dir,
            reason: "not an evmesh data directory (no topics/ folder)".into(),
        });
    }
    let mut topic_dirs: Vec<_> = fs::read_dir(&topics_dir)
        .map_err(|e| StoreError::io("listing topics", e))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    topic_dirs.sort_by_key(|e| e.file_name());
    for td in topic_dirs {
        let topic = td.file_name().to_string_lossy().into_owned();
        let mut segs: Vec<(u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(td.path())
            .map_err(|e| StoreError::io("listing segments", e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".quarantined") {
                report.quarantined.push(e.path());
            } else if let Some(b) = parse_segment_name(&name) {
                segs.push((b, e.path()));
            }
        }
        segs.sort();
        let n = segs.len();
        for (i, (base, path)) in segs.into_iter().enumerate() {
            let sc = scan(&path, base)
                .map_err(|e| StoreError::io(format!("scanning {}", path.display()), e))?;
            report.segments += 1;
            report.records += sc.positions.len() as u64;
            let problem = |byte_offset, record, reason: String| StoreProblem {
                topic: topic.clone(),
                segment: path.clone(),
                byte_offset,
                record,
                reason,
            };
            match sc.damage {
                Some(Damage::TornTail { byte_offset }) if i + 1 == n => {
                    report.torn_tails.push(problem(
                        byte_offset,
                        base + sc.positions.len() as u64,
                        "torn last record (cut off at next start)".into(),
                    ))
                }
                Some(Damage::TornTail { byte_offset }) => report.corrupt.push(problem(
                    byte_offset,
                    base + sc.positions.len() as u64,
                    "incomplete record inside a sealed segment".into(),
                )),
                Some(Damage::Corrupt {
                    byte_offset,
                    record,
                    reason,
                }) => report.corrupt.push(problem(byte_offset, record, reason)),
                None => {}
            }
        }
    }
    let subs_dir = data_dir.join("subscriptions");
    if let Ok(subs) = fs::read_dir(&subs_dir) {
        for s in subs.flatten() {
            for f in fs::read_dir(s.path()).into_iter().flatten().flatten() {
                let ok = fs::read(f.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<CursorState>(&b).ok())
                    .is_some();
                if !ok && f.path().extension().is_some_and(|e| e == "json") {
                    report.bad_state_files.push(f.path().display().to_string());
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
