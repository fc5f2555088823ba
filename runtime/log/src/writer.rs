//! The single writer thread: group commit (one write and one fdatasync per touched file per
//! group), segment rolling, and the refusal of every append after a failed write or fsync.

use crate::segment::{segment_name, FRAME, MAGIC};
use crate::topic::{SegMeta, Topic};
use crate::{FsyncPolicy, LogOptions};
use evmesh_store::{lock_poisoned, AppendAck, StoreError};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::{mpsc as std_mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

pub(crate) struct AppendReq {
    pub(crate) topic: Arc<Topic>,
    /// Framed records, ready to be written.
    pub(crate) frames: Vec<u8>,
    pub(crate) lens: Vec<u32>,
    pub(crate) reply: oneshot::Sender<Result<AppendAck, StoreError>>,
}

pub(crate) enum WriterMsg {
    Append(AppendReq),
    /// Forget a deleted topic's open segment.
    Forget(String, oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Index updates of one commit: per topic, per segment base the new record positions and end,
/// and the topic's next offset.
type IndexUpdates = Vec<(Arc<Topic>, Vec<(u64, Vec<u32>, u64)>, u64)>;

/// A commit that touched at least this many files is made durable with one `syncfs` of the
/// data folder's file system instead of an `fdatasync` per file.
const SYNCFS_FROM: usize = 8;

/// The writer's state for a topic's newest segment.
struct Active {
    base: u64,
    /// Open for reading too: readers of the segment share this descriptor (one per active
    /// segment, not two; 10,000 topics would otherwise take 20,000).
    file: Arc<File>,
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
    sealed: Vec<Arc<File>>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.sealed.is_empty()
    }
}

/// Makes files durable: one `syncfs` for many (the data folder's file system), else an
/// `fdatasync` each.
fn sync_files(files: &[Arc<File>]) -> Result<(), String> {
    if files.len() >= SYNCFS_FROM {
        // Many files: one flush of the file system is one journal commit, where an
        // fdatasync per file is one each (100 topics in a commit: 100 commits).
        return rustix::fs::syncfs(&*files[0])
            .map_err(|e| format!("syncfs of the data folder: {e}"));
    }
    for f in files {
        f.sync_data()
            .map_err(|e| format!("fdatasync of a segment: {e}"))?;
    }
    Ok(())
}

/// Publishers waiting for a commit's fsync: each with its answer.
type Replies = Vec<(
    oneshot::Sender<Result<AppendAck, StoreError>>,
    Result<AppendAck, StoreError>,
)>;

/// Files to make durable, and the publishers to answer once they are.
struct Round {
    files: Vec<Arc<File>>,
    replies: Replies,
}

/// The sync thread: makes written commits durable while the writer goes on writing the next
/// ones (a pipelined group commit). Under `always` each commit hands its files and its
/// publishers' answers over; under `interval`, each interval's files. The thread takes every
/// round waiting, syncs their files once, then answers their publishers. So readers, which see
/// a commit once it is written, never wait for a disk flush, and a slow fsync (a disk stall)
/// holds up answers, not the writing and delivery of later events. After a failed fsync every
/// later round fails too (the file's state is unknown), and the writer refuses new appends.
struct Syncer {
    tx: Option<std_mpsc::Sender<Round>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<OnceLock<String>>,
}

impl Syncer {
    fn start() -> Option<Syncer> {
        let (tx, rx) = std_mpsc::channel::<Round>();
        let failed = Arc::new(OnceLock::<String>::new());
        let f2 = failed.clone();
        let thread = std::thread::Builder::new()
            .name("evmesh-log-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut rounds = vec![first];
                    rounds.extend(rx.try_iter());
                    // Each file once (the same topic's segment is in many commits).
                    let mut seen = HashSet::new();
                    let files: Vec<Arc<File>> = rounds
                        .iter_mut()
                        .flat_map(|r| r.files.drain(..))
                        .filter(|f| seen.insert(Arc::as_ptr(f)))
                        .collect();
                    let outcome = match f2.get() {
                        Some(why) => Err(why.clone()),
                        None => sync_files(&files),
                    };
                    if let Err(why) = &outcome {
                        if f2.set(why.clone()).is_ok() {
                            tracing::error!(reason = %why, "the log's fsync failed; further publishes are refused until evmesh restarts");
                        }
                    }
                    for (reply, r) in rounds.into_iter().flat_map(|r| r.replies) {
                        let r = match &outcome {
                            Ok(()) => r,
                            Err(why) => Err(StoreError::Failed(why.clone())),
                        };
                        let _ = reply.send(r);
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "cannot start the log's sync thread; the writer syncs itself"))
            .ok()?;
        Some(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            failed,
        })
    }

    /// Hands a round over (given back when the thread has stopped).
    fn send(&self, round: Round) -> Result<(), Round> {
        match &self.tx {
            Some(tx) => tx.send(round).map_err(|e| e.0),
            None => Err(round),
        }
    }

    fn failure(&self) -> Option<&String> {
        self.failed.get()
    }

    /// Waits for the rounds handed over so far.
    fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) struct Writer {
    opts: LogOptions,
    active: HashMap<String, Active>,
    /// Set after a failed write or fsync: the file's state is unknown, so every later append
    /// is refused until a restart re-reads the log (PostgreSQL's lesson from "fsyncgate").
    failed: Option<String>,
    /// The sync thread (none under `fsync: never`, or when it could not start: the writer
    /// then syncs itself).
    syncer: Option<Syncer>,
}

impl Writer {
    pub(crate) fn new(opts: LogOptions) -> Writer {
        Writer {
            opts,
            active: HashMap::new(),
            failed: None,
            syncer: None,
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
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
        if self.opts.fsync != FsyncPolicy::Never {
            self.syncer = Syncer::start();
        }
        rt.block_on(async {
            loop {
                let msg = if self.opts.fsync == FsyncPolicy::Interval && !dirty.is_empty() {
                    let wait = self.opts.fsync_interval.saturating_sub(last_sync.elapsed());
                    match tokio::time::timeout(wait, rx.recv()).await {
                        Ok(m) => m,
                        Err(_) => {
                            self.sync_interval(&mut dirty);
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
                    let synced = self.syncer.as_ref().and_then(Syncer::failure);
                    if let (None, Some(why)) = (&self.failed, synced.cloned()) {
                        self.fail(why);
                    }
                    self.commit(batch, &mut dirty);
                    if self.opts.fsync == FsyncPolicy::Interval
                        && last_sync.elapsed() >= self.opts.fsync_interval
                    {
                        self.sync_interval(&mut dirty);
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
                    if let Some(s) = self.syncer.as_mut() {
                        s.finish();
                    }
                    let _ = tx.send(());
                    break;
                }
            }
        });
        self.sync_dirty(&mut dirty);
        if let Some(s) = self.syncer.as_mut() {
            s.finish();
        }
    }

    /// The interval's round, handed to the sync thread.
    fn sync_interval(&mut self, dirty: &mut Dirty) {
        let files = self.dirty_files(dirty);
        if files.is_empty() {
            return;
        }
        let round = Round {
            files,
            replies: Vec::new(),
        };
        if let Some(round) = self.hand_over(round) {
            if let Err(why) = sync_files(&round.files) {
                self.fail(why);
            }
        }
    }

    /// Gives a round to the sync thread; back when there is none running.
    fn hand_over(&self, round: Round) -> Option<Round> {
        match &self.syncer {
            Some(s) => s.send(round).err(),
            None => Some(round),
        }
    }

    fn dirty_files(&self, dirty: &mut Dirty) -> Vec<Arc<File>> {
        let mut files: Vec<Arc<File>> = dirty.sealed.drain(..).collect();
        for t in dirty.topics.drain() {
            if let Some(a) = self.active.get(&t) {
                files.push(a.file.clone());
            }
        }
        files
    }

    fn sync_dirty(&mut self, dirty: &mut Dirty) {
        let files = self.dirty_files(dirty);
        if let Err(why) = sync_files(&files) {
            self.fail(why);
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
            let next = t.visible_end();
            let reuse = {
                let log = t.log.read().map_err(|_| lock_poisoned())?;
                log.last()
                    .filter(|s| !s.sealed())
                    .map(|s| (s.base, s.path.clone(), s.end))
            };
            let a = match reuse {
                Some((base, path, end)) => {
                    let file = OpenOptions::new()
                        .read(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
                    let file = Arc::new(file);
                    if let Some(last) = t.log.write().map_err(|_| lock_poisoned())?.last_mut() {
                        if last.base == base {
                            last.file = file.clone();
                        }
                    }
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
            .read(true)
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
        let file = Arc::new(file);
        let mut log = t.log.write().map_err(|_| lock_poisoned())?;
        if let Some(last) = log.last_mut() {
            last.seal();
        }
        log.push(SegMeta::new(
            base,
            path,
            file.clone(),
            Vec::new(),
            MAGIC.len() as u64,
        ));
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
        let mut sealed: Vec<Arc<File>> = Vec::new();
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
                if let Err(e) = (&*a.file).write_all(&a.buf) {
                    failure = Some(format!("appending to topic {name}: {e}"));
                    break;
                }
                a.buf.clear();
            }
        }
        if let Some(why) = failure {
            // Nothing of this group is acknowledged or made visible.
            self.fail(why.clone());
            for req in batch {
                let _ = req.reply.send(Err(StoreError::Failed(why.clone())));
            }
            return;
        }
        // Written: readers may deliver the records while the fsync runs (they are in the page
        // cache, which a crash of the process keeps). Publishers are answered only after it.
        // Were the fsync to fail, the publishers get an error and retry (at least once), and a
        // restart reads back whatever of the group reached the disk, as it would anyway.
        self.publish(index);
        let replies: Replies = batch
            .into_iter()
            .map(|req| req.reply)
            .zip(results)
            .collect();
        if self.opts.fsync != FsyncPolicy::Always {
            dirty.sealed.extend(sealed);
            dirty.topics.extend(touched);
            for (reply, r) in replies {
                let _ = reply.send(r);
            }
            return;
        }
        let mut files = sealed;
        files.extend(
            touched
                .iter()
                .filter_map(|n| self.active.get(n))
                .map(|a| a.file.clone()),
        );
        let round = Round { files, replies };
        let Some(round) = self.hand_over(round) else {
            return;
        };
        // No sync thread: sync here.
        let outcome = sync_files(&round.files);
        if let Err(why) = &outcome {
            self.fail(why.clone());
        }
        for (reply, r) in round.replies {
            let _ = reply.send(match &outcome {
                Ok(()) => r,
                Err(why) => Err(StoreError::Failed(why.clone())),
            });
        }
    }

    /// Makes a commit's records visible to readers: the index first, then the topic's end.
    fn publish(&self, index: IndexUpdates) {
        for (topic, updates, next) in index {
            if let Ok(mut log) = topic.log.write() {
                for (base, positions, end) in updates {
                    if let Some(s) = log.iter_mut().rev().find(|s| s.base == base) {
                        s.extend(&positions);
                        s.end = end;
                    }
                }
            }
            topic.end.send_replace(next);
        }
    }

    /// Stages one request's frames into its topic's buffer, rolling segments as needed.
    fn stage(
        &mut self,
        req: &AppendReq,
        index: &mut IndexUpdates,
        sealed: &mut Vec<Arc<File>>,
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
                (&*a.file)
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
