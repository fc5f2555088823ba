//! The batch frames that carry CloudEvents between evmesh and its WASM plugins
//! (layout: `plugins/wit/README.md`). Shared by the host and the guest SDK; no dependencies, so
//! it builds for `wasm32-wasip2` as is. Decoding borrows from the frame: attribute values are
//! `&str` views, data is a `&[u8]` view.

use std::fmt;

pub const EVENT_MAGIC: &[u8; 4] = b"EVF1";
pub const OUTPUT_MAGIC: &[u8; 4] = b"EVO1";

/// An extension value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
}

/// An owned extension value, for events a plugin builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtValue {
    Str(String),
    Bool(bool),
    Int(i64),
}

impl ExtValue {
    pub fn as_ref(&self) -> Ext<'_> {
        match self {
            ExtValue::Str(s) => Ext::Str(s),
            ExtValue::Bool(b) => Ext::Bool(*b),
            ExtValue::Int(i) => Ext::Int(*i),
        }
    }
}

/// One event of a frame, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub specversion: &'a str,
    pub id: &'a str,
    pub source: &'a str,
    pub ty: &'a str,
    pub datacontenttype: Option<&'a str>,
    pub dataschema: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub time: Option<&'a str>,
    /// The extensions' encoded block; iterate with [`EventRef::extensions`].
    ext_block: &'a [u8],
    ext_count: u16,
    pub data: Option<&'a [u8]>,
}

impl<'a> EventRef<'a> {
    pub fn extensions(&self) -> ExtIter<'a> {
        ExtIter {
            r: Reader {
                buf: self.ext_block,
                pos: 0,
            },
            left: self.ext_count,
        }
    }

    pub fn extension(&self, name: &str) -> Option<Ext<'a>> {
        self.extensions().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// An owned copy, to modify and return from a transform.
    pub fn to_owned_event(&self) -> Event {
        Event {
            specversion: self.specversion.to_owned(),
            id: self.id.to_owned(),
            source: self.source.to_owned(),
            ty: self.ty.to_owned(),
            datacontenttype: self.datacontenttype.map(str::to_owned),
            dataschema: self.dataschema.map(str::to_owned),
            subject: self.subject.map(str::to_owned),
            time: self.time.map(str::to_owned),
            extensions: self
                .extensions()
                .map(|(n, v)| {
                    let v = match v {
                        Ext::Str(s) => ExtValue::Str(s.to_owned()),
                        Ext::Bool(b) => ExtValue::Bool(b),
                        Ext::Int(i) => ExtValue::Int(i),
                    };
                    (n.to_owned(), v)
                })
                .collect(),
            data: self.data.map(<[u8]>::to_vec),
        }
    }
}

pub struct ExtIter<'a> {
    r: Reader<'a>,
    left: u16,
}

impl<'a> Iterator for ExtIter<'a> {
    type Item = (&'a str, Ext<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The block was validated when the event was decoded.
        read_ext(&mut self.r).ok()
    }
}

/// An owned event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub specversion: String,
    pub id: String,
    pub source: String,
    pub ty: String,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub extensions: Vec<(String, ExtValue)>,
    pub data: Option<Vec<u8>>,
}

impl Event {
    pub fn set_extension(&mut self, name: &str, v: ExtValue) {
        match self.extensions.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = v,
            None => self.extensions.push((name.to_owned(), v)),
        }
    }

    pub fn extension(&self, name: &str) -> Option<&ExtValue> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// A frame that does not follow the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed frame: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

fn bad(what: &str) -> FrameError {
    FrameError(what.to_owned())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| bad("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| bad("truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, FrameError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<&'a str, FrameError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| bad("string is not UTF-8"))
    }
}

fn read_ext<'a>(r: &mut Reader<'a>) -> Result<(&'a str, Ext<'a>), FrameError> {
    let name = r.str()?;
    let v = match r.u8()? {
        0 => Ext::Str(r.str()?),
        1 => Ext::Bool(r.u8()? != 0),
        2 => Ext::Int(r.i64()?),
        _ => return Err(bad("unknown extension tag")),
    };
    Ok((name, v))
}

fn read_event<'a>(r: &mut Reader<'a>) -> Result<EventRef<'a>, FrameError> {
    let len = r.u32()? as usize;
    let body = r.take(len)?;
    let mut r = Reader { buf: body, pos: 0 };
    let specversion = r.str()?;
    let id = r.str()?;
    let source = r.str()?;
    let ty = r.str()?;
    let present = r.u8()?;
    let mut opt = [None; 4];
    for (i, slot) in opt.iter_mut().enumerate() {
        if present & (1 << i) != 0 {
            *slot = Some(r.str()?);
        }
    }
    let ext_count = r.u16()?;
    let start = r.pos;
    for _ in 0..ext_count {
        read_ext(&mut r)?;
    }
    let ext_block = &body[start..r.pos];
    let data = match r.u8()? {
        0 => None,
        1 => {
            let n = r.u32()? as usize;
            Some(r.take(n)?)
        }
        _ => return Err(bad("bad data flag")),
    };
    if r.pos != body.len() {
        return Err(bad("trailing bytes in an event"));
    }
    let [datacontenttype, dataschema, subject, time] = opt;
    Ok(EventRef {
        specversion,
        id,
        source,
        ty,
        datacontenttype,
        dataschema,
        subject,
        time,
        ext_block,
        ext_count,
        data,
    })
}

/// Decodes an event frame.
pub fn decode_events(frame: &[u8]) -> Result<Vec<EventRef<'_>>, FrameError> {
    let mut r = Reader { buf: frame, pos: 0 };
    if r.take(4)? != EVENT_MAGIC {
        return Err(bad("not an event frame (magic)"));
    }
    let count = r.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(frame.len() / 16 + 1));
    for _ in 0..count {
        out.push(read_event(&mut r)?);
    }
    if r.pos != frame.len() {
        return Err(bad("trailing bytes after the last event"));
    }
    Ok(out)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// What [`encode_event`] needs from an event, so that host and guest types can both be written.
pub struct EventParts<'a, I: Iterator<Item = (&'a str, Ext<'a>)>> {
    pub specversion: &'a str,
    pub id: &'a str,
    pub source: &'a str,
    pub ty: &'a str,
    pub optional: [Option<&'a str>; 4],
    pub extensions: I,
    pub ext_count: usize,
    pub data: Option<&'a [u8]>,
}

/// Appends one encoded event.
pub fn encode_event<'a, I: Iterator<Item = (&'a str, Ext<'a>)>>(
    p: EventParts<'a, I>,
    out: &mut Vec<u8>,
) {
    let len_at = out.len();
    put_u32(out, 0);
    put_str(out, p.specversion);
    put_str(out, p.id);
    put_str(out, p.source);
    put_str(out, p.ty);
    let mut present = 0u8;
    for (i, o) in p.optional.iter().enumerate() {
        if o.is_some() {
            present |= 1 << i;
        }
    }
    out.push(present);
    for s in p.optional.iter().flatten() {
        put_str(out, s);
    }
    out.extend_from_slice(&(p.ext_count.min(u16::MAX as usize) as u16).to_le_bytes());
    for (n, v) in p.extensions.take(u16::MAX as usize) {
        put_str(out, n);
        match v {
            Ext::Str(s) => {
                out.push(0);
                put_str(out, s);
            }
            Ext::Bool(b) => {
                out.push(1);
                out.push(u8::from(b));
            }
            Ext::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
        }
    }
    match p.data {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put_u32(out, d.len() as u32);
            out.extend_from_slice(d);
        }
    }
    let len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
}

impl Event {
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_event(
            EventParts {
                specversion: &self.specversion,
                id: &self.id,
                source: &self.source,
                ty: &self.ty,
                optional: [
                    self.datacontenttype.as_deref(),
                    self.dataschema.as_deref(),
                    self.subject.as_deref(),
                    self.time.as_deref(),
                ],
                extensions: self
                    .extensions
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_ref())),
                ext_count: self.extensions.len(),
                data: self.data.as_deref(),
            },
            out,
        )
    }
}

/// Starts an event frame of `count` events; append each with [`encode_event`].
pub fn begin_events(count: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(EVENT_MAGIC);
    put_u32(out, count as u32);
}

/// One transform result: the outputs of one input event.
pub type Outputs = Vec<(Option<String>, Event)>;

/// Encodes a transform's answer.
pub fn encode_outputs(results: &[Outputs], out: &mut Vec<u8>) {
    out.extend_from_slice(OUTPUT_MAGIC);
    put_u32(out, results.len() as u32);
    for r in results {
        put_u32(out, r.len() as u32);
        for (topic, e) in r {
            put_str(out, topic.as_deref().unwrap_or(""));
            e.encode(out);
        }
    }
}

/// The outputs of one input, borrowed: (topic, event).
pub type OutputsRef<'a> = Vec<(Option<&'a str>, EventRef<'a>)>;

/// Decodes a transform's answer; `expected` is the number of inputs.
pub fn decode_outputs(frame: &[u8], expected: usize) -> Result<Vec<OutputsRef<'_>>, FrameError> {
    let mut r = Reader { buf: frame, pos: 0 };
    if r.take(4)? != OUTPUT_MAGIC {
        return Err(bad("not an output frame (magic)"));
    }
    let n = r.u32()? as usize;
    if n != expected {
        return Err(FrameError(format!("{n} results for {expected} inputs")));
    }
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.u32()? as usize;
        let mut outs = Vec::with_capacity(k.min(1024));
        for _ in 0..k {
            let topic = r.str()?;
            let e = read_event(&mut r)?;
            outs.push(((!topic.is_empty()).then_some(topic), e));
        }
        all.push(outs);
    }
    if r.pos != frame.len() {
        return Err(bad("trailing bytes after the last result"));
    }
    Ok(all)
}

/// A filter's bitmap for `n` events.
pub fn bitmap(keep: impl Iterator<Item = bool>, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n.div_ceil(8)];
    for (i, k) in keep.enumerate().take(n) {
        if k {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Reads bit `i` of a filter's bitmap.
pub fn bit(map: &[u8], i: usize) -> bool {
    map.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            "[a-z0-9]{1,8}",
            "\\PC{0,12}",
            proptest::option::of("\\PC{0,12}"),
            proptest::collection::vec(
                (
                    "[a-z]{1,6}",
                    prop_oneof![
                        "\\PC{0,8}".prop_map(ExtValue::Str),
                        any::<bool>().prop_map(ExtValue::Bool),
                        any::<i64>().prop_map(ExtValue::Int),
                    ],
                ),
                0..4,
            ),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        )
            .prop_map(|(id, source, subject, extensions, data)| Event {
                specversion: "1.0".into(),
                id,
                source,
                ty: "t".into(),
                subject,
                extensions,
                data,
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn event_frames_round_trip(events in proptest::collection::vec(arb_event(), 0..8)) {
            let mut f = Vec::new();
            begin_events(events.len(), &mut f);
            for e in &events {
                e.encode(&mut f);
            }
            let back: Vec<Event> = decode_events(&f).unwrap().iter().map(EventRef::to_owned_event).collect();
            prop_assert_eq!(back, events);
        }

        #[test]
        fn output_frames_round_trip(events in proptest::collection::vec(arb_event(), 0..5)) {
            let results: Vec<Outputs> = events.iter().enumerate()
                .map(|(i, e)| (0..i % 3).map(|k| ((k == 1).then(|| "routed".to_string()), e.clone())).collect())
                .collect();
            let mut f = Vec::new();
            encode_outputs(&results, &mut f);
            let back = decode_outputs(&f, results.len()).unwrap();
            for (r, b) in results.iter().zip(back) {
                prop_assert_eq!(r.len(), b.len());
                for ((t, e), (bt, be)) in r.iter().zip(b) {
                    prop_assert_eq!(t.as_deref(), bt);
                    prop_assert_eq!(e, &be.to_owned_event());
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_events(&bytes);
            let _ = decode_outputs(&bytes, 1);
        }
    }

    #[test]
    fn bitmaps() {
        let m = bitmap(
            [true, false, true, true, false, false, false, false, true].into_iter(),
            9,
        );
        assert_eq!(m, vec![0b0000_1101, 0b1]);
        assert!(bit(&m, 8) && !bit(&m, 1) && !bit(&m, 20));
    }

    #[test]
    fn truncated_frames_are_errors() {
        let mut f = Vec::new();
        begin_events(1, &mut f);
        Event {
            specversion: "1.0".into(),
            id: "1".into(),
            source: "s".into(),
            ty: "t".into(),
            ..Default::default()
        }
        .encode(&mut f);
        assert!(decode_events(&f).is_ok());
        assert!(decode_events(&f[..f.len() - 1]).is_err());
    }
}
