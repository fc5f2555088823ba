//! Apache EventMesh's TCP wire format, as its Java server reads and writes it (the reference;
//! the Go SDK computes the length field differently):
//!
//! ```text
//! "EventMesh" (9 bytes) | "0000" (4 bytes) | length: i32 BE | header length: i32 BE | header | body
//! length = 4 + 4 + header length + body length     (the two length fields, not magic/version)
//! ```
//!
//! The header is JSON `{cmd, code, desc, seq, properties}`. Java's Jackson writes the command
//! as `command` and the description as `dsec`; both spellings are read, and both are written,
//! as EventMesh's Go SDK does. Commands are their names (`"HELLO_REQUEST"`); their numbers are
//! read too. Frames whose length is over 4 MiB are refused.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The first 9 bytes of every frame.
pub const MAGIC: &[u8; 9] = b"EventMesh";
/// The protocol version that follows.
pub const VERSION: &[u8; 4] = b"0000";
/// The largest `length` accepted (EventMesh's `FRAME_MAX_LENGTH`).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Bytes before the length field.
const PREFIX: usize = 9 + 4;

/// Header property naming the body's format.
pub const PROTOCOL_TYPE: &str = "protocoltype";
pub const PROTOCOL_VERSION: &str = "protocolversion";
pub const PROTOCOL_DESC: &str = "protocoldesc";
/// `protocoltype` of a body that is a CloudEvent in JSON format.
pub const CLOUDEVENTS: &str = "cloudevents";
/// `protocoltype` of a body that is EventMesh's own message (`{topic, properties, body}`).
pub const EVENTMESH_MESSAGE: &str = "eventmeshmessage";

macro_rules! commands {
    ($($name:ident = $n:literal),* $(,)?) => {
        /// The commands of EventMesh's `Command` enum, with its names and numbers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum Command { $($name),* }

        impl Command {
            pub fn name(self) -> &'static str {
                match self { $(Command::$name => stringify!($name)),* }
            }
            pub fn number(self) -> u8 {
                match self { $(Command::$name => $n),* }
            }
            pub fn from_name(s: &str) -> Option<Command> {
                match s { $(stringify!($name) => Some(Command::$name),)* _ => None }
            }
            pub fn from_number(n: u64) -> Option<Command> {
                match n { $($n => Some(Command::$name),)* _ => None }
            }
        }
    };
}

commands! {
    HEARTBEAT_REQUEST = 0,
    HEARTBEAT_RESPONSE = 1,
    HELLO_REQUEST = 2,
    HELLO_RESPONSE = 3,
    CLIENT_GOODBYE_REQUEST = 4,
    CLIENT_GOODBYE_RESPONSE = 5,
    SERVER_GOODBYE_REQUEST = 6,
    SERVER_GOODBYE_RESPONSE = 7,
    SUBSCRIBE_REQUEST = 8,
    SUBSCRIBE_RESPONSE = 9,
    UNSUBSCRIBE_REQUEST = 10,
    UNSUBSCRIBE_RESPONSE = 11,
    LISTEN_REQUEST = 12,
    LISTEN_RESPONSE = 13,
    REQUEST_TO_SERVER = 14,
    REQUEST_TO_CLIENT = 15,
    REQUEST_TO_CLIENT_ACK = 16,
    RESPONSE_TO_SERVER = 17,
    RESPONSE_TO_CLIENT = 18,
    RESPONSE_TO_CLIENT_ACK = 19,
    ASYNC_MESSAGE_TO_SERVER = 20,
    ASYNC_MESSAGE_TO_SERVER_ACK = 21,
    ASYNC_MESSAGE_TO_CLIENT = 22,
    ASYNC_MESSAGE_TO_CLIENT_ACK = 23,
    BROADCAST_MESSAGE_TO_SERVER = 24,
    BROADCAST_MESSAGE_TO_SERVER_ACK = 25,
    BROADCAST_MESSAGE_TO_CLIENT = 26,
    BROADCAST_MESSAGE_TO_CLIENT_ACK = 27,
    SYS_LOG_TO_LOGSERVER = 28,
    TRACE_LOG_TO_LOGSERVER = 29,
    REDIRECT_TO_CLIENT = 30,
    REGISTER_REQUEST = 31,
    REGISTER_RESPONSE = 32,
    UNREGISTER_REQUEST = 33,
    UNREGISTER_RESPONSE = 34,
    RECOMMEND_REQUEST = 35,
    RECOMMEND_RESPONSE = 36,
}

/// A frame's header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub cmd: Command,
    /// `0` is success; anything else an error (see `desc`).
    pub code: i32,
    pub desc: String,
    /// Correlates a request and its answer (an ack carries the pushed frame's `seq`).
    pub seq: String,
    pub properties: BTreeMap<String, serde_json::Value>,
}

impl Header {
    pub fn new(cmd: Command, seq: impl Into<String>) -> Header {
        Header {
            cmd,
            code: 0,
            desc: String::new(),
            seq: seq.into(),
            properties: BTreeMap::new(),
        }
    }

    /// The answer `cmd` to this header: same `seq`, a code and a description.
    pub fn answer(&self, cmd: Command, code: i32, desc: impl Into<String>) -> Header {
        Header {
            cmd,
            code,
            desc: desc.into(),
            seq: self.seq.clone(),
            properties: BTreeMap::new(),
        }
    }

    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).and_then(|v| v.as_str())
    }

    pub fn with_property(mut self, name: &str, value: impl Into<String>) -> Header {
        self.properties
            .insert(name.to_owned(), serde_json::Value::String(value.into()));
        self
    }

    fn to_json(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "cmd": self.cmd.name(),
            "command": self.cmd.name(),
            "code": self.code,
            "desc": self.desc,
            "dsec": self.desc,
            "seq": self.seq,
            "properties": self.properties,
        });
        v.to_string().into_bytes()
    }

    fn from_json(b: &[u8]) -> Result<Header, FrameError> {
        let v: serde_json::Value =
            serde_json::from_slice(b).map_err(|e| FrameError::Header(format!("not JSON: {e}")))?;
        let cmd_v = v.get("cmd").or_else(|| v.get("command"));
        let cmd = match cmd_v {
            Some(serde_json::Value::String(s)) => Command::from_name(s),
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(Command::from_number),
            _ => None,
        }
        .ok_or_else(|| FrameError::Header(format!("unknown or missing command {cmd_v:?}")))?;
        let text = |k: &str| -> String {
            match v.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => String::new(),
            }
        };
        let code = v
            .get("code")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        let desc = match text("desc") {
            d if d.is_empty() => text("dsec"),
            d => d,
        };
        let properties = match v.get("properties") {
            Some(serde_json::Value::Object(m)) => {
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            _ => BTreeMap::new(),
        };
        Ok(Header {
            cmd,
            code: i32::try_from(code).unwrap_or(-1),
            desc,
            seq: text("seq"),
            properties,
        })
    }
}

/// One frame: a header and its body (JSON text, or empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Header,
    pub body: Bytes,
}

impl Frame {
    pub fn new(header: Header, body: impl Into<Bytes>) -> Frame {
        Frame {
            header,
            body: body.into(),
        }
    }

    /// A frame with no body.
    pub fn bare(header: Header) -> Frame {
        Frame {
            header,
            body: Bytes::new(),
        }
    }

    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| FrameError::Body(format!("{}: {e}", self.header.cmd.name())))
    }

    /// Appends the encoded frame to `out`. Fails (without writing) past [`MAX_FRAME`].
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), FrameError> {
        let header = self.header.to_json();
        let length = 8 + header.len() + self.body.len();
        if length > MAX_FRAME {
            return Err(FrameError::TooLarge(length));
        }
        out.reserve(PREFIX + length);
        out.put_slice(MAGIC);
        out.put_slice(VERSION);
        out.put_i32(length as i32);
        out.put_i32(header.len() as i32);
        out.put_slice(&header);
        out.put_slice(&self.body);
        Ok(())
    }
}

/// Reads frames off a byte stream. It keeps one piece of state: the rest of an oversize frame
/// still to be skipped, so an oversize frame is never held in memory.
#[derive(Debug, Default)]
pub struct Decoder {
    discard: usize,
}

/// Headers longer than this are not read from an oversize frame (it is skipped blind).
const MAX_OVERSIZE_HEADER: usize = 64 * 1024;

impl Decoder {
    /// Takes one whole frame off the front of `buf`: `Ok(None)` when more bytes are needed.
    /// A bad magic, version or length, or a header that cannot be read, is an error after which
    /// the stream cannot be resynchronised. An oversize frame is [`FrameError::Oversize`] (with
    /// its header when it could be read, to answer it): its bytes are skipped as they come and
    /// the stream goes on.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.discard > 0 {
            let n = self.discard.min(buf.len());
            buf.advance(n);
            self.discard -= n;
            if self.discard > 0 {
                return Ok(None);
            }
        }
        if buf.len() < PREFIX + 8 {
            // Refuse garbage as early as it shows, rather than wait for 21 bytes of it.
            let n = buf.len().min(9);
            if buf[..n] != MAGIC[..n] {
                return Err(FrameError::Magic);
            }
            return Ok(None);
        }
        if &buf[..9] != MAGIC {
            return Err(FrameError::Magic);
        }
        if &buf[9..13] != VERSION {
            return Err(FrameError::Version(
                String::from_utf8_lossy(&buf[9..13]).into_owned(),
            ));
        }
        let length = i32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]);
        let header_len = i32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]);
        if length < 8 || header_len < 0 || header_len > length - 8 {
            return Err(FrameError::Length(format!(
                "length {length}, header length {header_len}"
            )));
        }
        let (length, header_len) = (length as usize, header_len as usize);
        if length > MAX_FRAME {
            let header = if header_len <= MAX_OVERSIZE_HEADER {
                if buf.len() < PREFIX + 8 + header_len {
                    return Ok(None);
                }
                Header::from_json(&buf[PREFIX + 8..PREFIX + 8 + header_len]).ok()
            } else {
                None
            };
            let total = PREFIX + length;
            let have = buf.len().min(total);
            buf.advance(have);
            self.discard = total - have;
            return Err(FrameError::Oversize {
                length,
                header: header.map(Box::new),
            });
        }
        if buf.len() < PREFIX + length {
            return Ok(None);
        }
        let mut frame = buf.split_to(PREFIX + length);
        frame.advance(PREFIX + 8);
        let header_bytes = frame.split_to(header_len);
        let header = Header::from_json(&header_bytes)?;
        Ok(Some(Frame {
            header,
            body: frame.freeze(),
        }))
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("not an EventMesh frame (bad magic)")]
    Magic,
    #[error("unsupported protocol version {0:?} (expected \"0000\")")]
    Version(String),
    #[error("inconsistent frame lengths: {0}")]
    Length(String),
    #[error("frame of {0} bytes is over the 4 MiB limit")]
    TooLarge(usize),
    /// An oversize frame read off the stream (and skipped), with its header if it was read.
    #[error("frame of {length} bytes is over the 4 MiB limit")]
    Oversize {
        length: usize,
        header: Option<Box<Header>>,
    },
    #[error("invalid header: {0}")]
    Header(String),
    #[error("invalid body: {0}")]
    Body(String),
}

impl FrameError {
    /// Whether the connection can go on after this (the bad frame was skipped whole).
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge(_) | FrameError::Oversize { .. } | FrameError::Body(_)
        )
    }
}

/// Who a client is (`HELLO_REQUEST`'s body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserAgent {
    pub env: String,
    pub subsystem: String,
    pub path: String,
    pub pid: i64,
    pub host: String,
    pub port: i64,
    pub version: String,
    pub username: String,
    pub password: String,
    pub idc: String,
    pub producer_group: String,
    pub consumer_group: String,
    /// `pub` or `sub`.
    pub purpose: String,
    /// How many pushed events may wait for this client's ack (0: the server's default).
    pub unack: i64,
}

/// How a consumer group shares a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SubscriptionMode {
    /// Each event goes to one member of the group.
    #[default]
    CLUSTERING,
    /// Each event goes to every member.
    BROADCASTING,
}

/// Whether pushed events are one-way (`ASYNC`) or requests that expect a reply (`SYNC`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SubscriptionType {
    #[default]
    ASYNC,
    SYNC,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionItem {
    pub topic: String,
    #[serde(default)]
    pub mode: SubscriptionMode,
    #[serde(default, rename = "type")]
    pub ty: SubscriptionType,
}

/// `SUBSCRIBE_REQUEST`'s and `UNSUBSCRIBE_REQUEST`'s body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    #[serde(default)]
    pub topic_list: Vec<SubscriptionItem>,
}

/// EventMesh's own message body (`protocoltype: eventmeshmessage`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventMeshMessage {
    pub topic: String,
    pub properties: BTreeMap<String, String>,
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        let h = Header::new(Command::ASYNC_MESSAGE_TO_SERVER, "42")
            .with_property(PROTOCOL_TYPE, CLOUDEVENTS);
        Frame::new(h, Bytes::from_static(br#"{"specversion":"1.0"}"#))
    }

    #[test]
    fn frames_round_trip_with_the_java_length_field() {
        let f = sample();
        let mut buf = BytesMut::new();
        f.encode(&mut buf).unwrap();
        let header_len = i32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]) as usize;
        let length = i32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]) as usize;
        assert_eq!(length, 8 + header_len + f.body.len());
        assert_eq!(buf.len(), 13 + length);
        let got = Decoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(got, f);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait_for_more_and_garbage_is_refused() {
        let mut whole = BytesMut::new();
        sample().encode(&mut whole).unwrap();
        let d = || Decoder::default();
        for cut in [0, 5, 13, 20, 25, whole.len() - 1] {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(d().decode(&mut part), Ok(None), "cut at {cut}");
        }
        let mut bad = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(d().decode(&mut bad), Err(FrameError::Magic));
        let mut v = whole.clone();
        v[9..13].copy_from_slice(b"0001");
        assert!(matches!(d().decode(&mut v), Err(FrameError::Version(_))));
        let mut neg = whole.clone();
        neg[13..17].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(d().decode(&mut neg), Err(FrameError::Length(_))));
    }

    #[test]
    fn headers_from_java_and_go_spellings_are_read() {
        let java = br#"{"command":"HELLO_RESPONSE","code":0,"dsec":"ok","seq":"7"}"#;
        let h = Header::from_json(java).unwrap();
        assert_eq!(
            (h.cmd, h.desc.as_str(), h.seq.as_str()),
            (Command::HELLO_RESPONSE, "ok", "7")
        );
        let numeric = br#"{"cmd":20,"code":0,"seq":8}"#;
        let h = Header::from_json(numeric).unwrap();
        assert_eq!(
            (h.cmd, h.seq.as_str()),
            (Command::ASYNC_MESSAGE_TO_SERVER, "8")
        );
        assert!(Header::from_json(br#"{"cmd":"NOPE"}"#).is_err());
    }

    #[test]
    fn oversize_frames_are_refused_and_skipped() {
        let big = Frame::new(
            Header::new(Command::ASYNC_MESSAGE_TO_SERVER, "1"),
            vec![b'x'; MAX_FRAME],
        );
        let mut out = BytesMut::new();
        assert!(matches!(big.encode(&mut out), Err(FrameError::TooLarge(_))));
        // A hand-made oversize frame, arriving in pieces, followed by a good one.
        let header = br#"{"cmd":"ASYNC_MESSAGE_TO_SERVER","seq":"9"}"#;
        let mut stream = BytesMut::new();
        stream.put_slice(MAGIC);
        stream.put_slice(VERSION);
        stream.put_i32((MAX_FRAME + 100) as i32);
        stream.put_i32(header.len() as i32);
        stream.put_slice(header);
        stream.put_slice(&vec![b'y'; MAX_FRAME + 100 - 8 - header.len()]);
        sample().encode(&mut stream).unwrap();
        let mut dec = Decoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(64 * 1024) {
            buf.extend_from_slice(chunk);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => got.push(Ok(f)),
                    Ok(None) => break,
                    Err(e) => got.push(Err(e)),
                }
            }
            assert!(buf.len() <= 128 * 1024, "the oversize frame is not held");
        }
        assert_eq!(got.len(), 2);
        match &got[0] {
            Err(FrameError::Oversize {
                header: Some(h), ..
            }) => assert_eq!(h.seq, "9"),
            other => panic!("{other:?}"),
        }
        assert_eq!(got[1], Ok(sample()));
    }
}
