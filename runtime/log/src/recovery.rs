//! Start-up: every segment is scanned; torn tails are cut, corrupt segments quarantined, and
//! new offsets start past anything a consumer may already have finished.

use crate::segment::{parse_segment_name, scan, Damage, MAGIC, MIN_RECORD};
use crate::topic::{SegMeta, Topic};
use evmesh_store::{safe_component, StateStore, StoreError, StoreProblem};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

pub(crate) fn recover_topic(
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
        let mut seg = SegMeta::new(base, path, Arc::new(file), sc.positions, end);
        if !last {
            seg.seal();
        }
        segs.push(seg);
    }
    let next = segs
        .last()
        .map(SegMeta::next)
        .unwrap_or(0)
        .max(quarantined.iter().copied().max().unwrap_or(0));
    if let Some(last) = segs.last_mut() {
        if last.next() < next {
            last.seal(); // new appends must start past the quarantined range
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
pub(crate) fn raise_to_cursors(
    state: &dyn StateStore,
    data_dir: &Path,
    topics: &mut HashMap<String, Arc<Topic>>,
) {
    let mut highest: HashMap<String, (u64, String)> = HashMap::new();
    for (sub, topic, committed) in state.cursors() {
        let e = highest.entry(topic).or_insert((0, String::new()));
        if committed > e.0 {
            *e = (committed, sub);
        }
    }
    for (name, (cursor, sub)) in highest {
        if safe_component(&name).is_err() {
            continue;
        }
        let end = topics.get(&name).map_or(0, |t| t.visible_end());
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
                        last.seal();
                    }
                }
                t.end.send_replace(cursor);
            }
            None => {
                let dir = data_dir.join("topics").join(&name);
                topics.insert(name.clone(), Arc::new(Topic::new(&name, dir, cursor)));
            }
        }
    }
}
