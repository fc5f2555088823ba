//! Segment files: scanning (recovery and fsck), the in-memory index, and reads.

use crate::StoreError;
use bytes::Bytes;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every segment starts with these 8 bytes.
pub const MAGIC: &[u8; 8] = b"EVMLOG01";
/// `u32` payload length + `u32` CRC-32 of the payload.
pub const FRAME: usize = 8;
/// The smallest possible record (frame + minimal payload), used to bound the offsets a damaged
/// segment could have held.
pub const MIN_RECORD: u64 = FRAME as u64 + 11;
/// No record payload is larger than this (guards recovery against garbage lengths).
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

pub fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

/// What a scan found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The last record is incomplete: a crash mid-append. Safe to cut off.
    TornTail { byte_offset: u64 },
    /// A bad record with valid data after it, or in a sealed segment.
    Corrupt {
        byte_offset: u64,
        record: u64,
        reason: String,
    },
}

pub struct Scan {
    /// Start position of each valid record.
    pub positions: Vec<u32>,
    /// End of the last valid record.
    pub valid_end: u64,
    pub file_len: u64,
    pub damage: Option<Damage>,
}

/// Reads a segment front to back, checking every frame and CRC.
pub fn scan(path: &Path, base: u64) -> io::Result<Scan> {
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let mut buf = Vec::with_capacity(file_len as usize);
    f.read_to_end(&mut buf)?;
    let corrupt = |byte_offset: u64, record: u64, reason: String| Damage::Corrupt {
        byte_offset,
        record,
        reason,
    };
    if buf.len() < MAGIC.len() {
        // A crash right after creating the file: nothing was acknowledged from it.
        return Ok(Scan {
            positions: Vec::new(),
            valid_end: 0,
            file_len,
            damage: Some(Damage::TornTail { byte_offset: 0 }),
        });
    }
    if &buf[..8] != MAGIC {
        return Ok(Scan {
            positions: Vec::new(),
            valid_end: 0,
            file_len,
            damage: Some(corrupt(0, base, "bad segment header".into())),
        });
    }
    let mut positions = Vec::new();
    let mut pos = MAGIC.len();
    let mut damage = None;
    while pos < buf.len() {
        let record = base + positions.len() as u64;
        if buf.len() - pos < FRAME {
            damage = Some(Damage::TornTail {
                byte_offset: pos as u64,
            });
            break;
        }
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
        let end = pos + FRAME + len;
        if len > MAX_RECORD {
            damage = Some(corrupt(
                pos as u64,
                record,
                format!("record length {len} is impossible"),
            ));
            break;
        }
        if end > buf.len() {
            damage = Some(Damage::TornTail {
                byte_offset: pos as u64,
            });
            break;
        }
        if crc32fast::hash(&buf[pos + FRAME..end]) != crc {
            damage = Some(if end == buf.len() {
                // The very last record is bad and nothing follows: a torn write.
                Damage::TornTail {
                    byte_offset: pos as u64,
                }
            } else {
                corrupt(pos as u64, record, "CRC mismatch".into())
            });
            break;
        }
        positions.push(pos as u32);
        pos = end;
    }
    let valid_end = positions
        .last()
        .map(|_| pos as u64)
        .unwrap_or(MAGIC.len() as u64)
        .min(pos as u64);
    Ok(Scan {
        positions,
        valid_end,
        file_len,
        damage,
    })
}

/// A byte range of a segment as a reader sees it.
pub struct Segment {
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Offset of the record that starts at `start`.
    pub first: u64,
    /// Byte position of record `first`.
    pub start: u64,
    /// Byte position where the records a read wants end (or later: a record boundary).
    pub stop: u64,
}

impl Segment {
    /// Reads records `[from, to)` (offsets, `first <= from`) with one pread, checking CRCs;
    /// the records from `first` up to `from` are skipped.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<(u64, Bytes)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; self.stop.saturating_sub(self.start) as usize];
        self.file
            .read_exact_at(&mut buf, self.start)
            .map_err(|e| StoreError::io(format!("reading {}", self.path.display()), e))?;
        let buf = Bytes::from(buf);
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut p = 0usize;
        let mut offset = self.first;
        while offset < to {
            let hdr = buf
                .get(p..p + FRAME)
                .ok_or_else(|| self.corrupt(offset, p, "short frame"))?;
            let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
            let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let payload = buf.slice(p + FRAME..(p + FRAME + len).min(buf.len()));
            if payload.len() != len {
                return Err(self.corrupt(offset, p, "short record"));
            }
            if offset >= from {
                if crc32fast::hash(&payload) != crc {
                    return Err(self.corrupt(offset, p, "CRC mismatch on read"));
                }
                out.push((offset, payload));
            }
            p += FRAME + len;
            offset += 1;
        }
        Ok(out)
    }

    fn corrupt(&self, offset: u64, p: usize, why: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "{} record {offset} (byte {}): {why}",
            self.path.display(),
            self.start + p as u64
        ))
    }
}
