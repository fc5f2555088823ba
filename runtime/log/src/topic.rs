//! A topic in memory: its segments' index and its visible end; and reading it.

use crate::codec;
use crate::segment::Segment;
use evmesh_store::{lock_poisoned, ReadBatch, StoreError, StoredEvent};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// One record position in `SPARSE` is kept for a sealed segment: a backlog of millions of
/// events costs a few bytes per `SPARSE` records in memory, not 4 bytes each. A read starts at
/// the nearest kept position before its first record and skips what it does not need.
pub(crate) const SPARSE: u64 = 32;

/// About how many bytes one read returns (more only for a single larger record).
const MAX_READ_BYTES: u64 = 1 << 20;

pub(crate) struct SegMeta {
    pub(crate) base: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// Byte position of every `stride`-th record (every record while the segment is active).
    index: Vec<u32>,
    stride: u64,
    /// Records in the segment.
    count: u64,
    pub(crate) end: u64,
    sealed: bool,
}

impl SegMeta {
    pub(crate) fn new(
        base: u64,
        path: PathBuf,
        file: Arc<File>,
        positions: Vec<u32>,
        end: u64,
    ) -> SegMeta {
        SegMeta {
            base,
            path,
            file,
            count: positions.len() as u64,
            index: positions,
            stride: 1,
            end,
            sealed: false,
        }
    }

    /// The offset after the segment's last record.
    pub(crate) fn next(&self) -> u64 {
        self.base + self.count
    }

    pub(crate) fn sealed(&self) -> bool {
        self.sealed
    }

    /// No more appends: keep one position in `SPARSE`.
    pub(crate) fn seal(&mut self) {
        self.sealed = true;
        if self.stride == 1 {
            self.index = self
                .index
                .iter()
                .step_by(SPARSE as usize)
                .copied()
                .collect();
            self.stride = SPARSE;
        }
    }

    /// Records appended at these byte positions (the records after the last one).
    pub(crate) fn extend(&mut self, positions: &[u32]) {
        for &p in positions {
            if self.count % self.stride == 0 {
                self.index.push(p);
            }
            self.count += 1;
        }
    }

    /// The end of a read from `from` that stays near `MAX_READ_BYTES` (at least one record):
    /// a read of 512 events of 1 MiB would otherwise hold 512 MiB.
    fn byte_limit(&self, from: u64) -> u64 {
        let k = ((from - self.base) / self.stride) as usize;
        let Some(start) = self.index.get(k) else {
            return u64::MAX;
        };
        let cap = u64::from(*start).saturating_add(MAX_READ_BYTES);
        let rest = self.index.get(k + 1..).unwrap_or(&[]);
        let i = k + 1 + rest.partition_point(|p| u64::from(*p) <= cap);
        if i >= self.index.len() {
            u64::MAX // the rest of the segment is within the cap
        } else {
            self.base + i as u64 * self.stride
        }
    }

    /// Where records `[from, to)` lie: the offset and byte of the first record a read starts
    /// at (at or before `from`), and the byte where the read can stop.
    fn span(&self, from: u64, to: u64) -> (u64, u64, u64) {
        let k = (from - self.base) / self.stride;
        let first = self.base + k * self.stride;
        let start = self
            .index
            .get(k as usize)
            .map_or(self.end, |p| u64::from(*p));
        let j = (to - self.base).div_ceil(self.stride);
        let stop = if to - self.base >= self.count {
            self.end
        } else {
            self.index
                .get(j as usize)
                .map_or(self.end, |p| u64::from(*p))
        };
        (first, start, stop)
    }
}

pub(crate) struct Topic {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) log: RwLock<Vec<SegMeta>>,
    pub(crate) end: watch::Sender<u64>,
}

impl Topic {
    pub(crate) fn new(name: &str, dir: PathBuf, end: u64) -> Topic {
        Topic {
            name: name.to_owned(),
            dir,
            log: RwLock::new(Vec::new()),
            end: watch::channel(end).0,
        }
    }

    pub(crate) fn visible_end(&self) -> u64 {
        *self.end.borrow()
    }
}

pub(crate) fn read_topic(t: &Topic, from: u64, max: usize) -> Result<ReadBatch, StoreError> {
    let end = t.visible_end();
    let (seg, from, to) = {
        let log = t.log.read().map_err(|_| lock_poisoned())?;
        let mut from = from;
        let mut found = None;
        for s in log.iter() {
            let next = s.next();
            if from < s.base {
                from = s.base; // a gap (deleted or quarantined): skip ahead
            }
            if from < next {
                found = Some(s);
                break;
            }
        }
        let Some(s) = found else {
            // Nothing at or after `from` below the visible end: a gap (quarantined or lost
            // offsets) up to the end, which the reader skips.
            return Ok(ReadBatch {
                events: Vec::new(),
                next: from.max(end),
            });
        };
        let to = s
            .next()
            .min(end)
            .min(from + max as u64)
            .min(s.byte_limit(from));
        if to <= from {
            return Ok(ReadBatch {
                events: Vec::new(),
                next: from,
            });
        }
        let (first, start, stop) = s.span(from, to);
        let snapshot = Segment {
            path: s.path.clone(),
            file: s.file.clone(),
            first,
            start,
            stop,
        };
        (snapshot, from, to)
    };
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
