//! The CloudEvents Kafka protocol binding, written against plain byte slices so that it is
//! tested without a broker.
//!
//! - Binary mode: every attribute is a `ce_<name>` header carrying raw UTF-8 (no percent
//!   encoding), `datacontenttype` travels as the `content-type` header, the value is the data.
//! - Structured mode: the `content-type` header is `application/cloudevents+json` and the value
//!   is the JSON-format event.
//! - The record key is the value of a chosen attribute (by default the `partitionkey`
//!   extension); an event without it gets no key.
//!
//! A record that is neither (no `ce_specversion` header, no CloudEvents content type) is not a
//! CloudEvent; [`wrap_plain`] turns it into one with the attributes documented there.

use crate::config::KafkaMode;
use bytes::Bytes;
use evmesh_core::event::EventError;
use evmesh_core::format::{self, DecodeError};
use evmesh_core::http_binding::{decode_binary_with, encode_binary_headers_with, HeaderStyle};
use evmesh_core::{Data, Event, ExtValue};

/// The content type of a structured-mode record.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// A Kafka record as evmesh writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Option<Vec<u8>>,
}

/// A Kafka record as it was read (borrowed from the client's message).
#[derive(Debug, Clone, Copy)]
pub struct InRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub value: Option<&'a [u8]>,
}

impl InRecord<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// The record's key: the value of attribute `key_attribute`, if the event has it.
pub fn record_key(event: &Event, key_attribute: &str) -> Option<Vec<u8>> {
    event
        .attribute(key_attribute)
        .map(|a| a.with_str(|s| s.as_bytes().to_vec()))
}

/// Encodes an event as a record in `mode`, keyed by `key_attribute`.
pub fn encode(event: &Event, mode: KafkaMode, key_attribute: &str) -> OutRecord {
    let key = record_key(event, key_attribute);
    match mode {
        KafkaMode::Binary => {
            let mut headers = Vec::with_capacity(6 + event.extensions.len());
            encode_binary_headers_with(HeaderStyle::KAFKA, event, |n, v| {
                headers.push((n.to_owned(), v.into_bytes()))
            });
            OutRecord {
                key,
                headers,
                value: event.data.as_ref().map(|d| d.bytes.to_vec()),
            }
        }
        KafkaMode::Structured => {
            let mut value = Vec::with_capacity(256);
            format::encode_structured(event, &mut value);
            OutRecord {
                key,
                headers: vec![(
                    "content-type".to_owned(),
                    STRUCTURED_CONTENT_TYPE.as_bytes().to_vec(),
                )],
                value: Some(value),
            }
        }
    }
}

/// What a record turned out to be.
#[derive(Debug)]
pub enum Decoded {
    CloudEvent(Box<Event>),
    /// Neither binary nor structured mode.
    Plain,
}

/// Decodes a record in whichever mode it is in.
pub fn decode(record: &InRecord<'_>) -> Result<Decoded, DecodeError> {
    let content_type = record.header("content-type");
    if let Some(ct) = content_type {
        let ct = String::from_utf8_lossy(ct);
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/cloudevents+json") {
            return format::decode_structured(record.value.unwrap_or_default())
                .map(|e| Decoded::CloudEvent(Box::new(e)));
        }
        if media
            .to_ascii_lowercase()
            .starts_with("application/cloudevents")
        {
            return Err(EventError::new(
                "content-type",
                format!("{media:?} is not supported (evmesh reads application/cloudevents+json)"),
            )
            .into());
        }
    }
    if record.header("ce_specversion").is_none() {
        return Ok(Decoded::Plain);
    }
    let headers = record
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("content-type"))
        .copied();
    let body = record.value.map(Bytes::copy_from_slice).unwrap_or_default();
    decode_binary_with(HeaderStyle::KAFKA, headers, content_type, body)
        .map(|e| Decoded::CloudEvent(Box::new(e)))
}

/// Attributes given to a plain (non-CloudEvents) record:
///
/// | attribute | value |
/// |---|---|
/// | `id` | `<topic>-<partition>-<offset>` (stable, so a re-read record keeps its id) |
/// | `source` | `kafka://<topic>` |
/// | `type` | `record_type` (default `dev.evmesh.kafka.record`) |
/// | `time` | the record timestamp (RFC 3339, UTC), if any |
/// | `datacontenttype` | the record's `content-type` header, if any |
/// | `partitionkey` | the record key, if it is UTF-8 |
/// | `kafkatopic`, `kafkapartition`, `kafkaoffset` | where the record was read |
/// | data | the record value, as bytes |
pub fn wrap_plain(record: &InRecord<'_>, record_type: &str) -> Event {
    let mut e = Event::new(
        format!("{}-{}-{}", record.topic, record.partition, record.offset),
        format!("kafka://{}", record.topic),
        record_type,
    );
    e.time = record.timestamp_ms.and_then(rfc3339_millis);
    e.datacontenttype = record
        .header("content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|ct| evmesh_core::event::validate_content_type(ct).is_ok())
        .map(str::to_owned);
    if let Some(k) = record.key.and_then(|k| std::str::from_utf8(k).ok()) {
        e.set_extension("partitionkey", ExtValue::String(k.to_owned()));
    }
    e.set_extension("kafkatopic", ExtValue::String(record.topic.to_owned()));
    e.set_extension(
        "kafkapartition",
        ExtValue::Integer(i64::from(record.partition)),
    );
    e.set_extension("kafkaoffset", ExtValue::Integer(record.offset));
    e.data = record
        .value
        .map(|v| Data::binary(Bytes::copy_from_slice(v)));
    e
}

/// Milliseconds since the epoch as RFC 3339 UTC with millisecond precision.
fn rfc3339_millis(ms: i64) -> Option<String> {
    if ms < 0 {
        return None;
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(headers: &'a [(&'a str, &'a [u8])], value: &'a [u8]) -> InRecord<'a> {
        InRecord {
            topic: "t",
            partition: 2,
            offset: 7,
            timestamp_ms: Some(1_522_900_584_000),
            key: Some(b"k1"),
            headers,
            value: Some(value),
        }
    }

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

    fn decode_out(r: &OutRecord) -> Event {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let rec = InRecord {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: r.key.as_deref(),
            headers: &headers,
            value: r.value.as_deref(),
        };
        match decode(&rec).unwrap() {
            Decoded::CloudEvent(e) => *e,
            Decoded::Plain => panic!("not a CloudEvent"),
        }
    }

    #[test]
    fn binary_mode_round_trips_with_raw_header_values_and_the_key() {
        let e = sample();
        let r = encode(&e, KafkaMode::Binary, "partitionkey");
        assert_eq!(r.key.as_deref(), Some(&b"order-9"[..]));
        let id = r.headers.iter().find(|(n, _)| n == "ce_id").unwrap();
        assert_eq!(id.1, b"id 1", "Kafka header values are not percent-encoded");
        let ct = r.headers.iter().find(|(n, _)| n == "content-type").unwrap();
        assert_eq!(ct.1, b"application/json");
        let back = decode_out(&r);
        assert_eq!(back.id, "id 1");
        assert_eq!(back.subject.as_deref(), Some("sub/ject"));
        assert_eq!(
            back.extension("count").map(|v| v.to_canonical_string()),
            Some("3".into())
        );
        assert_eq!(back.data.unwrap().bytes, &b"{\"a\":1}"[..]);
    }

    #[test]
    fn structured_mode_round_trips() {
        let e = sample();
        let r = encode(&e, KafkaMode::Structured, "subject");
        assert_eq!(r.key.as_deref(), Some(&b"sub/ject"[..]));
        assert_eq!(r.headers.len(), 1);
        let back = decode_out(&r);
        assert_eq!(back.id, e.id);
        assert_eq!(back.ty, e.ty);
        let data: serde_json::Value = serde_json::from_slice(&back.data.unwrap().bytes).unwrap();
        assert_eq!(data, serde_json::json!({"a": 1}));
    }

    #[test]
    fn no_key_without_the_attribute_and_no_value_without_data() {
        let e = Event::new("1", "/s", "t");
        let r = encode(&e, KafkaMode::Binary, "partitionkey");
        assert_eq!(r.key, None);
        assert_eq!(r.value, None);
        assert!(decode_out(&r).data.is_none());
    }

    #[test]
    fn bad_binary_records_name_the_header() {
        let h: [(&str, &[u8]); 3] = [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"1"),
            ("ce_source", b"/s"),
        ];
        let err = decode(&record(&h, b"x")).unwrap_err();
        assert_eq!(err.event_error().unwrap().attribute, "type");
        let h: [(&str, &[u8]); 4] = [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"\xff"),
            ("ce_source", b"/s"),
            ("ce_type", b"t"),
        ];
        let err = decode(&record(&h, b"x")).unwrap_err();
        assert_eq!(err.event_error().unwrap().attribute, "ce_id");
        let h: [(&str, &[u8]); 1] = [("content-type", b"application/cloudevents+json")];
        assert!(decode(&record(&h, b"{not json")).is_err());
        let h: [(&str, &[u8]); 1] = [("content-type", b"application/cloudevents-batch+json")];
        assert!(decode(&record(&h, b"[]")).is_err());
    }

    #[test]
    fn plain_records_are_wrapped_with_documented_attributes() {
        let h: [(&str, &[u8]); 1] = [("content-type", b"text/plain")];
        let r = record(&h, b"hello");
        assert!(matches!(decode(&r).unwrap(), Decoded::Plain));
        let e = wrap_plain(&r, "dev.evmesh.kafka.record");
        assert_eq!(e.id, "t-2-7");
        assert_eq!(e.source, "kafka://t");
        assert_eq!(e.ty, "dev.evmesh.kafka.record");
        assert_eq!(e.time.as_deref(), Some("2018-04-05T03:56:24.000Z"));
        assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(e.partition_key().as_deref(), Some("k1"));
        assert_eq!(
            e.extension("kafkaoffset").map(|v| v.to_canonical_string()),
            Some("7".into())
        );
        assert!(e.validate().is_ok());
        assert_eq!(e.data.unwrap().bytes, &b"hello"[..]);
    }

    #[test]
    fn timestamps_format_as_utc() {
        assert_eq!(rfc3339_millis(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_709_251_199_123).unwrap(),
            "2024-02-29T23:59:59.123Z"
        );
        assert_eq!(rfc3339_millis(-1), None);
    }
}
