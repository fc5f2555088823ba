//! `evmesh fsck`: checks a data folder offline without changing anything.

use crate::segment::{parse_segment_name, scan, Damage};
use evmesh_store::{CursorState, StoreError, StoreProblem};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

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
