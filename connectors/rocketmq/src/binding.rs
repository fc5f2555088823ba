//! The CloudEvents RocketMQ binding (as the CloudEvents Java SDK's `cloudevents-rocketmq`
//! writes and reads it), on plain values so that it is tested without a broker.
//!
//! - Binary mode: every attribute is a `CE_<name>` message property carrying raw UTF-8,
//!   extensions included (`CE_partitionkey`); `datacontenttype` travels as `CE_contenttype`;
//!   the body is the data. RocketMQ refuses empty bodies, so an event without data has the
//!   one-byte body `\0`, which reads back as no data.
//! - Structured mode: `CE_contenttype` is `application/cloudevents+json` and the body is the
//!   JSON-format event.
//! - The message's `KEYS` is the value of a chosen attribute (the sink's `keys`, by default
//!   `id`), its tag the sink's `tag`.
//!
//! A message that is neither (no `CE_specversion`, no CloudEvents content type) is not a
//! CloudEvent; [`wrap_plain`] turns it into one with the attributes documented there.

use crate::config::RocketMqMode;
use bytes::Bytes;
use evmesh_core::event::EventError;
use evmesh_core::format::{self, DecodeError};
use evmesh_core::http_binding::{decode_binary_with, encode_binary_headers_with, HeaderStyle};
use evmesh_core::{Data, Event, ExtValue};

/// The property carrying the content type (of the data in binary mode, of the body in
/// structured mode).
pub const CONTENT_TYPE: &str = "CE_contenttype";
/// The content type of a structured-mode body.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";
/// The body of an event without data (RocketMQ refuses empty bodies).
pub const EMPTY_BODY: &[u8] = b"\0";

/// A RocketMQ message as evmesh writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    pub keys: Option<String>,
    pub properties: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why an event cannot be carried in binary mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attribute {attribute} holds a control character RocketMQ properties cannot carry (use mode: structured)")]
pub struct EncodeError {
    pub attribute: String,
}

/// RocketMQ separates properties with `\u{1}` and `\u{2}`: values must not contain them.
fn property_safe(v: &str) -> bool {
    !v.contains(['\u{1}', '\u{2}'])
}

/// Encodes an event in `mode`, with `KEYS` from attribute `keys_attribute`.
pub fn encode(
    event: &Event,
    mode: RocketMqMode,
    keys_attribute: &str,
) -> Result<OutMessage, EncodeError> {
    let keys = event
        .attribute(keys_attribute)
        .map(|a| a.with_str(str::to_owned))
        .filter(|k| !k.is_empty() && property_safe(k));
    match mode {
        RocketMqMode::Binary => {
            let mut properties = Vec::with_capacity(6 + event.extensions.len());
            let mut bad = None;
            encode_binary_headers_with(HeaderStyle::ROCKETMQ, event, |n, v| {
                if !property_safe(&v) {
                    bad.get_or_insert_with(|| n.trim_start_matches("CE_").to_owned());
                }
                let name = if n == "content-type" { CONTENT_TYPE } else { n };
                properties.push((name.to_owned(), v));
            });
            if let Some(attribute) = bad {
                return Err(EncodeError { attribute });
            }
            let body = match &event.data {
                Some(d) if !d.bytes.is_empty() => d.bytes.to_vec(),
                _ => EMPTY_BODY.to_vec(),
            };
            Ok(OutMessage {
                keys,
                properties,
                body,
            })
        }
        RocketMqMode::Structured => {
            let mut body = Vec::with_capacity(256);
            format::encode_structured(event, &mut body);
            Ok(OutMessage {
                keys,
                properties: vec![(CONTENT_TYPE.to_owned(), STRUCTURED_CONTENT_TYPE.to_owned())],
                body,
            })
        }
    }
}

/// A RocketMQ message as it was read.
#[derive(Debug, Clone, Copy)]
pub struct InMessage<'a> {
    pub topic: &'a str,
    pub broker: &'a str,
    pub queue: i32,
    pub offset: i64,
    /// The id the producer gave the message (`UNIQ_KEY`), else the broker's offset id.
    pub id: &'a str,
    /// Milliseconds since the Unix epoch, when the producer sent it.
    pub born_ms: i64,
    pub keys: Option<&'a str>,
    pub tags: Option<&'a str>,
    pub properties: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl InMessage<'_> {
    fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// What a message turned out to be.
#[derive(Debug)]
pub enum Decoded {
    CloudEvent(Box<Event>),
    /// Neither binary nor structured mode.
    Plain,
}

/// Decodes a message in whichever mode it is in.
pub fn decode(m: &InMessage<'_>) -> Result<Decoded, DecodeError> {
    let content_type = m.property(CONTENT_TYPE);
    if let Some(ct) = content_type {
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/cloudevents+json") {
            return format::decode_structured(m.body).map(|e| Decoded::CloudEvent(Box::new(e)));
        }
        if media
            .to_ascii_lowercase()
            .starts_with("application/cloudevents")
        {
            return Err(EventError::new(
                CONTENT_TYPE,
                format!("{media:?} is not supported (evmesh reads application/cloudevents+json)"),
            )
            .into());
        }
    }
    if m.property("CE_specversion").is_none() {
        return Ok(Decoded::Plain);
    }
    let props = m
        .properties
        .iter()
        .filter(|(n, _)| *n != CONTENT_TYPE)
        .map(|(n, v)| (*n, v.as_bytes()));
    let body = if m.body == EMPTY_BODY {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(m.body)
    };
    decode_binary_with(
        HeaderStyle::ROCKETMQ,
        props,
        content_type.map(str::as_bytes),
        body,
    )
    .map(|e| Decoded::CloudEvent(Box::new(e)))
}

/// Attributes given to a plain (non-CloudEvents) message:
///
/// | attribute | value |
/// |---|---|
/// | `id` | the message id the producer gave it (`UNIQ_KEY`), stable when re-read |
/// | `source` | `rocketmq://<topic>` |
/// | `type` | `message_type` (default `dev.evmesh.rocketmq.message`) |
/// | `time` | when the producer sent it (RFC 3339, UTC) |
/// | `subject` | the message's tag, if any |
/// | `partitionkey` | the message's first key, if any |
/// | `rocketmqtopic`, `rocketmqbroker`, `rocketmqqueue`, `rocketmqoffset` | where it was read |
/// | data | the body, as bytes |
pub fn wrap_plain(m: &InMessage<'_>, message_type: &str) -> Event {
    let mut e = Event::new(
        m.id.to_owned(),
        format!("rocketmq://{}", m.topic),
        message_type,
    );
    e.time = rfc3339_millis(m.born_ms);
    e.subject = m.tags.filter(|t| !t.is_empty()).map(str::to_owned);
    if let Some(k) = m.keys.and_then(|k| k.split(' ').find(|k| !k.is_empty())) {
        e.set_extension("partitionkey", ExtValue::String(k.to_owned()));
    }
    e.set_extension("rocketmqtopic", ExtValue::String(m.topic.to_owned()));
    e.set_extension("rocketmqbroker", ExtValue::String(m.broker.to_owned()));
    e.set_extension("rocketmqqueue", ExtValue::Integer(i64::from(m.queue)));
    e.set_extension("rocketmqoffset", ExtValue::Integer(m.offset));
    e.data = Some(Data::binary(Bytes::copy_from_slice(m.body)));
    e
}

fn rfc3339_millis(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::new("id 1", "/src", "com.example");
        e.subject = Some("sub/ject".into());
        e.time = Some("2018-04-05T03:56:24Z".into());
        e.datacontenttype = Some("application/json".into());
        e.set_extension("partitionkey", ExtValue::String("order-9".into()));
        e.set_extension("count", ExtValue::Integer(3));
        e.data = Some(Data::binary(Bytes::from_static(b"{\"a\":1}")));
        e
    }

    fn read(out: &OutMessage) -> Event {
        let props: Vec<(&str, &str)> = out
            .properties
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let m = InMessage {
            topic: "t",
            broker: "b",
            queue: 0,
            offset: 0,
            id: "x",
            born_ms: 0,
            keys: out.keys.as_deref(),
            tags: None,
            properties: &props,
            body: &out.body,
        };
        match decode(&m).unwrap() {
            Decoded::CloudEvent(e) => *e,
            Decoded::Plain => panic!("not a CloudEvent"),
        }
    }

    #[test]
    fn binary_mode_uses_ce_properties_and_round_trips() {
        let e = sample();
        let out = encode(&e, RocketMqMode::Binary, "partitionkey").unwrap();
        assert_eq!(out.keys.as_deref(), Some("order-9"));
        let prop = |n: &str| {
            out.properties
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(prop("CE_id"), Some("id 1"));
        assert_eq!(prop("CE_specversion"), Some("1.0"));
        assert_eq!(prop("CE_partitionkey"), Some("order-9"));
        assert_eq!(prop("CE_contenttype"), Some("application/json"));
        assert_eq!(out.body, b"{\"a\":1}");
        let back = read(&out);
        assert_eq!(back.id, "id 1");
        assert_eq!(back.subject.as_deref(), Some("sub/ject"));
        assert_eq!(back.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(
            back.extension("count").map(|v| v.to_canonical_string()),
            Some("3".into())
        );
        assert_eq!(back.data.unwrap().bytes, &b"{\"a\":1}"[..]);
    }

    #[test]
    fn structured_mode_round_trips_with_types() {
        let e = sample();
        let out = encode(&e, RocketMqMode::Structured, "id").unwrap();
        assert_eq!(out.keys.as_deref(), Some("id 1"));
        assert_eq!(out.properties.len(), 1);
        let back = read(&out);
        assert_eq!(back.id, e.id);
        assert_eq!(back.extension("count"), Some(&ExtValue::Integer(3)));
    }

    #[test]
    fn no_data_is_a_nul_body_and_reads_back_as_none() {
        let e = Event::new("1", "/s", "t");
        let out = encode(&e, RocketMqMode::Binary, "partitionkey").unwrap();
        assert_eq!(out.keys, None);
        assert_eq!(out.body, EMPTY_BODY);
        assert!(read(&out).data.is_none());
    }

    #[test]
    fn property_separators_are_refused_in_binary_mode_only() {
        let mut e = Event::new("1", "/s", "t");
        e.set_extension("note", ExtValue::String("a\u{1}b".into()));
        let err = encode(&e, RocketMqMode::Binary, "id").unwrap_err();
        assert_eq!(err.attribute, "note");
        assert!(encode(&e, RocketMqMode::Structured, "id").is_ok());
    }

    #[test]
    fn plain_messages_are_wrapped_with_documented_attributes() {
        let props = [("KEYS", "k1 k2"), ("TAGS", "created")];
        let m = InMessage {
            topic: "orders",
            broker: "broker-a",
            queue: 2,
            offset: 7,
            id: "C0A8000100002A9F0000000000000001",
            born_ms: 1_522_900_584_000,
            keys: Some("k1 k2"),
            tags: Some("created"),
            properties: &props,
            body: b"hello",
        };
        assert!(matches!(decode(&m).unwrap(), Decoded::Plain));
        let e = wrap_plain(&m, "dev.evmesh.rocketmq.message");
        assert_eq!(e.id, "C0A8000100002A9F0000000000000001");
        assert_eq!(e.source, "rocketmq://orders");
        assert_eq!(e.time.as_deref(), Some("2018-04-05T03:56:24.000Z"));
        assert_eq!(e.subject.as_deref(), Some("created"));
        assert_eq!(e.partition_key().as_deref(), Some("k1"));
        assert_eq!(e.extension("rocketmqoffset"), Some(&ExtValue::Integer(7)));
        assert!(e.validate().is_ok());
    }

    #[test]
    fn bad_messages_name_the_property() {
        let props = [
            ("CE_specversion", "1.0"),
            ("CE_id", "1"),
            ("CE_source", "/s"),
        ];
        let m = InMessage {
            topic: "t",
            broker: "b",
            queue: 0,
            offset: 0,
            id: "x",
            born_ms: 0,
            keys: None,
            tags: None,
            properties: &props,
            body: b"x",
        };
        let err = decode(&m).unwrap_err();
        assert_eq!(err.event_error().unwrap().attribute, "type");
        let props = [(CONTENT_TYPE, "application/cloudevents+json")];
        let m = InMessage {
            properties: &props,
            body: b"{not json",
            ..m
        };
        assert!(decode(&m).is_err());
    }
}
