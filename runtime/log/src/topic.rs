//! A topic in memory: its segments' index and its durable end; and reading it.

use crate::codec;
use crate::segment::Segment;
use evmesh_store::{lock_poisoned, ReadBatch, StoreError, StoredEvent};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

pub(crate) struct SegMeta {
    pub(crate) base: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    pub(crate) positions: Vec<u32>,
    pub(crate) end: u64,
    pub(crate) sealed: bool,
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

    pub(crate) fn durable_end(&self) -> u64 {
        *self.end.borrow()
    }
}

pub(crate) fn read_topic(t: &Topic, from: u64, max: usize) -> Result<ReadBatch, StoreError> {
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
