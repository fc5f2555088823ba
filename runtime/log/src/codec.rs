//! The record payload: one event in a compact binary form.
//!
//! ```text
//! u8  codec version (1)
//! u8  specversion (0 = 1.0, 1 = 0.3)
//! str id, str source, str type          str = varint length + UTF-8 bytes
//! u8  optional-attribute flags           bit 0 datacontenttype, 1 dataschema, 2 subject, 3 time
//! str for each flag set, in bit order
//! varint extension count, then per extension: str name, u8 tag (0 string, 1 bool, 2 integer),
//!        value (str | u8 | zigzag varint)
//! u8  data kind (0 none, 1 JSON text, 2 text, 3 binary), then varint length + bytes
//! ```

use bytes::Bytes;
use evmesh_core::{Data, DataKind, Event, ExtValue, SpecVersion};

const VERSION: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends the encoding of `e` to `out`.
pub fn encode(e: &Event, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(match e.specversion {
        SpecVersion::V1_0 => 0,
        SpecVersion::V0_3 => 1,
    });
    put_str(out, &e.id);
    put_str(out, &e.source);
    put_str(out, &e.ty);
    let opts = [&e.datacontenttype, &e.dataschema, &e.subject, &e.time];
    let mut flags = 0u8;
    for (i, o) in opts.iter().enumerate() {
        if o.is_some() {
            flags |= 1 << i;
        }
    }
    out.push(flags);
    for s in opts.into_iter().flatten() {
        put_str(out, s);
    }
    put_varint(out, e.extensions.len() as u64);
    for (n, v) in &e.extensions {
        put_str(out, n);
        match v {
            ExtValue::String(s) => {
                out.push(0);
                put_str(out, s);
            }
            ExtValue::Bool(b) => {
                out.push(1);
                out.push(*b as u8);
            }
            ExtValue::Integer(i) => {
                out.push(2);
                put_varint(out, ((i << 1) ^ (i >> 63)) as u64);
            }
        }
    }
    match &e.data {
        None => out.push(0),
        Some(d) => {
            out.push(match d.kind {
                DataKind::Json => 1,
                DataKind::Text => 2,
                DataKind::Binary => 3,
            });
            put_varint(out, d.bytes.len() as u64);
            out.extend_from_slice(&d.bytes);
        }
    }
}

/// A payload that does not decode (only possible if the CRC matched garbage or the format
/// changed incompatibly).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct CodecError(pub &'static str);

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    whole: &'a Bytes,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(CodecError("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = usize::try_from(self.varint()?).map_err(|_| CodecError("length"))?;
        let end = self.pos.checked_add(n).ok_or(CodecError("length"))?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError("invalid UTF-8"))
    }
}

/// Decodes a payload; data bytes share the payload's buffer.
pub fn decode(payload: &Bytes) -> Result<Event, CodecError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
        whole: payload,
    };
    if r.u8()? != VERSION {
        return Err(CodecError("unknown codec version"));
    }
    let specversion = match r.u8()? {
        0 => SpecVersion::V1_0,
        1 => SpecVersion::V0_3,
        _ => return Err(CodecError("unknown specversion")),
    };
    let id = r.string()?;
    let source = r.string()?;
    let ty = r.string()?;
    let flags = r.u8()?;
    let mut opts: [Option<String>; 4] = Default::default();
    for (i, slot) in opts.iter_mut().enumerate() {
        if flags & (1 << i) != 0 {
            *slot = Some(r.string()?);
        }
    }
    let n = r.varint()?;
    let mut extensions = Vec::with_capacity(n.min(64) as usize);
    for _ in 0..n {
        let name = r.string()?;
        let v = match r.u8()? {
            0 => ExtValue::String(r.string()?),
            1 => ExtValue::Bool(r.u8()? != 0),
            2 => {
                let z = r.varint()?;
                ExtValue::Integer(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            _ => return Err(CodecError("unknown extension tag")),
        };
        extensions.push((name, v));
    }
    let kind = match r.u8()? {
        0 => None,
        1 => Some(DataKind::Json),
        2 => Some(DataKind::Text),
        3 => Some(DataKind::Binary),
        _ => return Err(CodecError("unknown data kind")),
    };
    let data = match kind {
        None => None,
        Some(kind) => {
            let b = r.bytes()?;
            let start = b.as_ptr() as usize - r.buf.as_ptr() as usize;
            Some(Data {
                kind,
                bytes: r.whole.slice(start..start + b.len()),
            })
        }
    };
    let [datacontenttype, dataschema, subject, time] = opts;
    Ok(Event {
        specversion,
        id,
        source,
        ty,
        datacontenttype,
        dataschema,
        subject,
        time,
        extensions,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ext() -> impl Strategy<Value = ExtValue> {
        prop_oneof![
            "\\PC*".prop_map(ExtValue::String),
            any::<bool>().prop_map(ExtValue::Bool),
            any::<i64>().prop_map(ExtValue::Integer),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(
            id in "\\PC+", source in "\\PC+", ty in "\\PC+",
            subject in proptest::option::of("\\PC*"),
            exts in proptest::collection::vec(("[a-z0-9]{1,8}", ext()), 0..5),
            data in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        ) {
            let mut e = Event::new(id, source, ty);
            e.subject = subject;
            e.extensions = exts;
            e.data = data.map(Data::binary);
            let mut buf = Vec::new();
            encode(&e, &mut buf);
            prop_assert_eq!(decode(&Bytes::from(buf)).unwrap(), e);
        }

        #[test]
        fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&Bytes::from(bytes));
        }
    }
}
