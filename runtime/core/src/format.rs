//! The CloudEvents JSON format (structured mode) and the JSON batch format.
//!
//! Decoding keeps the `data` member as the exact JSON text the publisher sent, so a consumer
//! receives the same bytes. Every rule violation is reported as an [`EventError`] naming the
//! attribute.

use crate::event::{
    validate_extension_name, Data, DataKind, Event, EventError, ExtValue, SpecVersion,
};
use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Why a body could not be decoded into events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("a structured-mode event must be a JSON object")]
    NotAnObject,
    #[error("a batch must be a JSON array of events")]
    NotAnArray,
    #[error("{0}")]
    Invalid(EventError),
    #[error("batch[{index}]: {source}")]
    InBatch {
        index: usize,
        source: Box<DecodeError>,
    },
}

impl DecodeError {
    /// The attribute at fault, when there is one.
    pub fn event_error(&self) -> Option<&EventError> {
        match self {
            DecodeError::Invalid(e) => Some(e),
            DecodeError::InBatch { source, .. } => source.event_error(),
            _ => None,
        }
    }

    /// The batch index at fault, when there is one.
    pub fn batch_index(&self) -> Option<usize> {
        match self {
            DecodeError::InBatch { index, .. } => Some(*index),
            _ => None,
        }
    }
}

impl From<EventError> for DecodeError {
    fn from(e: EventError) -> Self {
        DecodeError::Invalid(e)
    }
}

/// Is this media type one whose data the JSON format embeds as a JSON value?
pub fn is_json_content_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json")
}

fn is_text_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/") || essence.ends_with("/xml") || essence.ends_with("+xml")
}

/// An object's members in document order, values unparsed.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> de::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k.0, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A map key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// What a raw JSON value holds, with strings decoded.
enum Scalar {
    Null,
    Str(String),
    Bool(bool),
    Int(i64),
    Other(&'static str),
}

fn scalar(raw: &RawValue) -> Scalar {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let inner = &text[1..text.len() - 1];
            if !inner.contains('\\') {
                Scalar::Str(inner.to_owned())
            } else {
                match serde_json::from_str::<String>(text) {
                    Ok(s) => Scalar::Str(s),
                    Err(_) => Scalar::Other("an invalid string"),
                }
            }
        }
        Some(b'n') => Scalar::Null,
        Some(b't') => Scalar::Bool(true),
        Some(b'f') => Scalar::Bool(false),
        Some(b'{') => Scalar::Other("an object"),
        Some(b'[') => Scalar::Other("an array"),
        _ => match text.parse::<i64>() {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::Other("a non-integer number"),
        },
    }
}

/// Decodes one structured-mode event (`application/cloudevents+json`).
pub fn decode_structured(body: &[u8]) -> Result<Event, DecodeError> {
    let trimmed = body.trim_ascii_start();
    if !trimmed.starts_with(b"{") {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(e) => Err(DecodeError::Json(e.to_string())),
            Ok(_) => Err(DecodeError::NotAnObject),
        };
    }
    let members: Members<'_> =
        serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    event_from_members(members)
}

/// Decodes a batch (`application/cloudevents-batch+json`); the whole batch or nothing.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Event>, DecodeError> {
    if !body.trim_ascii_start().starts_with(b"[") {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(e) => Err(DecodeError::Json(e.to_string())),
            Ok(_) => Err(DecodeError::NotAnArray),
        };
    }
    let items: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    let mut out = Vec::with_capacity(items.len());
    let mut spec: Option<SpecVersion> = None;
    for (index, raw) in items.into_iter().enumerate() {
        let wrap = |source| DecodeError::InBatch {
            index,
            source: Box::new(source),
        };
        if !raw.get().starts_with('{') {
            return Err(wrap(DecodeError::NotAnObject));
        }
        let members: Members<'_> =
            serde_json::from_str(raw.get()).map_err(|e| wrap(DecodeError::Json(e.to_string())))?;
        let event = event_from_members(members).map_err(wrap)?;
        match spec {
            None => spec = Some(event.specversion),
            Some(s) if s != event.specversion => {
                return Err(wrap(DecodeError::Invalid(EventError::new(
                    "specversion",
                    "every event of a batch must have the same specversion",
                ))))
            }
            Some(_) => {}
        }
        out.push(event);
    }
    Ok(out)
}

fn required_string(name: &str, v: Option<Scalar>) -> Result<String, EventError> {
    match v {
        None | Some(Scalar::Null) => Err(EventError::new(name, "is required")),
        Some(Scalar::Str(s)) if s.is_empty() => {
            Err(EventError::new(name, "must be a non-empty string"))
        }
        Some(Scalar::Str(s)) => Ok(s),
        Some(_) => Err(EventError::new(name, "must be a string")),
    }
}

fn optional_string(name: &str, v: Scalar) -> Result<Option<String>, EventError> {
    match v {
        Scalar::Null => Ok(None),
        Scalar::Str(s) => Ok(Some(s)),
        _ => Err(EventError::new(name, "must be a string")),
    }
}

fn event_from_members(members: Members<'_>) -> Result<Event, DecodeError> {
    let mut specversion = None;
    let mut id = None;
    let mut source = None;
    let mut ty = None;
    let mut datacontenttype = None;
    let mut dataschema = None;
    let mut subject = None;
    let mut time = None;
    let mut data: Option<&RawValue> = None;
    let mut data_base64: Option<Scalar> = None;
    let mut extensions: Vec<(String, ExtValue)> = Vec::new();
    let mut seen: Vec<&str> = Vec::with_capacity(members.0.len());

    for (key, raw) in &members.0 {
        let key: &str = key;
        if seen.contains(&key) {
            return Err(EventError::new(key, "appears more than once").into());
        }
        seen.push(key);
        match key {
            "specversion" => specversion = Some(scalar(raw)),
            "id" => id = Some(scalar(raw)),
            "source" => source = Some(scalar(raw)),
            "type" => ty = Some(scalar(raw)),
            "datacontenttype" => datacontenttype = optional_string(key, scalar(raw))?,
            "dataschema" => dataschema = optional_string(key, scalar(raw))?,
            "subject" => subject = optional_string(key, scalar(raw))?,
            "time" => time = optional_string(key, scalar(raw))?,
            "data" => {
                if raw.get() != "null" {
                    data = Some(raw)
                }
            }
            "data_base64" => data_base64 = Some(scalar(raw)),
            _ => {
                validate_extension_name(key)?;
                let value = match scalar(raw) {
                    Scalar::Null => continue,
                    Scalar::Str(s) => ExtValue::String(s),
                    Scalar::Bool(b) => ExtValue::Bool(b),
                    Scalar::Int(i) if i32::try_from(i).is_ok() => ExtValue::Integer(i),
                    Scalar::Int(_) => {
                        return Err(EventError::new(
                            key,
                            "integer extension values must fit in 32 bits",
                        )
                        .into())
                    }
                    Scalar::Other(what) => {
                        return Err(EventError::new(
                            key,
                            format!(
                                "extension values must be a string, boolean or integer, got {what}"
                            ),
                        )
                        .into())
                    }
                };
                extensions.push((key.to_owned(), value));
            }
        }
    }

    let sv = required_string("specversion", specversion)?;
    let specversion = SpecVersion::parse(&sv).ok_or_else(|| {
        EventError::new(
            "specversion",
            format!("unknown specversion {sv:?} (evmesh accepts \"1.0\" and \"0.3\")"),
        )
    })?;
    let data = match (data, data_base64) {
        (Some(_), Some(b)) if !matches!(b, Scalar::Null) => {
            return Err(EventError::new(
                "data_base64",
                "an event cannot carry both data and data_base64",
            )
            .into())
        }
        (Some(raw), _) => Some(data_from_json(raw, datacontenttype.as_deref())),
        (None, Some(Scalar::Str(b))) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| EventError::new("data_base64", format!("invalid base64: {e}")))?;
            Some(Data::binary(bytes))
        }
        (None, Some(Scalar::Null)) | (None, None) => None,
        (None, Some(_)) => {
            return Err(EventError::new("data_base64", "must be a base64 string").into())
        }
    };
    let event = Event {
        specversion,
        id: required_string("id", id)?,
        source: required_string("source", source)?,
        ty: required_string("type", ty)?,
        datacontenttype,
        dataschema,
        subject,
        time,
        extensions,
        data,
    };
    event.validate()?;
    Ok(event)
}

fn data_from_json(raw: &RawValue, ct: Option<&str>) -> Data {
    let text = raw.get();
    let json_ct = ct.is_none_or(is_json_content_type);
    if !json_ct && text.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(text) {
            return Data {
                kind: DataKind::Text,
                bytes: Bytes::from(s),
            };
        }
    }
    Data {
        kind: DataKind::Json,
        bytes: Bytes::copy_from_slice(text.as_bytes()),
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_member(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    push_json_str(out, name);
    out.push(b':');
    push_json_str(out, value);
}

/// Encodes one event in the JSON format.
pub fn encode_structured(e: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"specversion\":");
    push_json_str(out, e.specversion.as_str());
    push_member(out, "id", &e.id);
    push_member(out, "source", &e.source);
    push_member(out, "type", &e.ty);
    for (name, v) in [
        ("datacontenttype", &e.datacontenttype),
        ("dataschema", &e.dataschema),
        ("subject", &e.subject),
        ("time", &e.time),
    ] {
        if let Some(v) = v {
            push_member(out, name, v);
        }
    }
    for (name, v) in &e.extensions {
        match v {
            ExtValue::String(s) => push_member(out, name, s),
            ExtValue::Bool(b) => {
                out.push(b',');
                push_json_str(out, name);
                out.extend_from_slice(if *b { b":true" } else { b":false" });
            }
            ExtValue::Integer(i) => {
                out.push(b',');
                push_json_str(out, name);
                out.push(b':');
                out.extend_from_slice(i.to_string().as_bytes());
            }
        }
    }
    if let Some(d) = &e.data {
        let ct = e.datacontenttype.as_deref();
        match d.kind {
            DataKind::Json => {
                out.extend_from_slice(b",\"data\":");
                out.extend_from_slice(&d.bytes);
            }
            DataKind::Text => match std::str::from_utf8(&d.bytes) {
                Ok(s) => push_member(out, "data", s),
                Err(_) => push_base64(out, &d.bytes),
            },
            DataKind::Binary => {
                let json_ok = ct.is_some_and(is_json_content_type)
                    && serde_json::from_slice::<serde::de::IgnoredAny>(&d.bytes).is_ok();
                if json_ok {
                    out.extend_from_slice(b",\"data\":");
                    out.extend_from_slice(&d.bytes);
                } else if let (true, Ok(s)) = (
                    ct.is_some_and(is_text_content_type),
                    std::str::from_utf8(&d.bytes),
                ) {
                    push_member(out, "data", s);
                } else {
                    push_base64(out, &d.bytes);
                }
            }
        }
    }
    out.push(b'}');
}

fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    push_member(out, "data_base64", &b64);
}

/// Encodes events as a JSON batch.
pub fn encode_batch(events: &[Event], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_structured(e, out);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_keeps_json_data_verbatim() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data": {"a" : 1}}"#;
        let e = decode_structured(body).unwrap();
        let d = e.data.as_ref().unwrap();
        assert_eq!(d.kind, DataKind::Json);
        assert_eq!(&d.bytes[..], br#"{"a" : 1}"#);
    }

    #[test]
    fn structured_text_data_is_unescaped() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"a\"b"}"#;
        let e = decode_structured(body).unwrap();
        assert_eq!(&e.data.unwrap().bytes[..], b"a\"b");
    }

    #[test]
    fn rejects_both_data_and_base64() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"x","data_base64":"eA=="}"#;
        let err = decode_structured(body).unwrap_err();
        assert_eq!(err.event_error().unwrap().attribute, "data_base64");
    }

    #[test]
    fn rejects_numeric_id_and_float_extension() {
        let err = decode_structured(br#"{"specversion":"1.0","id":25,"source":"/s","type":"t"}"#)
            .unwrap_err();
        assert_eq!(err.event_error().unwrap().attribute, "id");
        let err = decode_structured(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":1.5}"#,
        )
        .unwrap_err();
        assert_eq!(err.event_error().unwrap().attribute, "ext");
    }

    #[test]
    fn batch_reports_index() {
        let err =
            decode_batch(br#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"}, "x"]"#)
                .unwrap_err();
        assert_eq!(err.batch_index(), Some(1));
    }

    #[test]
    fn round_trip_through_structured_encoding() {
        let mut e = Event::new("1", "/s", "t");
        e.set_extension("b", ExtValue::Bool(true));
        e.set_extension("n", ExtValue::Integer(-3));
        e.set_extension("s", ExtValue::String("x\ny".into()));
        e.data = Some(Data::binary(vec![0u8, 1, 2, 255]));
        let mut out = Vec::new();
        encode_structured(&e, &mut out);
        let back = decode_structured(&out).unwrap();
        assert_eq!(back.extensions, e.extensions);
        assert_eq!(back.data.unwrap().bytes, e.data.unwrap().bytes);
    }
}
