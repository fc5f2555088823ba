//! The CloudEvents HTTP protocol binding, binary content mode, without any HTTP library:
//! headers are `(lower-case name, raw value bytes)` pairs so that ingress and the webhook sink
//! share one implementation.
//!
//! Header values are percent-encoded on the way out (space, `"`, `%`, and everything outside
//! printable ASCII, upper-case hex) and percent-decoded on the way in; a value that is not UTF-8
//! after decoding is refused.

use crate::event::{Data, Event, EventError, ExtValue, SpecVersion};
use crate::format::DecodeError;
use bytes::Bytes;

/// How a protocol binding names and encodes binary-mode attribute headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderStyle {
    /// `ce-` for HTTP, `ce_` for Kafka, `CE_` for RocketMQ.
    pub prefix: &'static str,
    /// HTTP percent-encodes header values; Kafka carries raw UTF-8.
    pub percent_encoded: bool,
}

impl HeaderStyle {
    pub const HTTP: HeaderStyle = HeaderStyle {
        prefix: "ce-",
        percent_encoded: true,
    };
    pub const KAFKA: HeaderStyle = HeaderStyle {
        prefix: "ce_",
        percent_encoded: false,
    };
    /// The CloudEvents RocketMQ binding: `CE_<attribute>` message properties, raw UTF-8.
    pub const ROCKETMQ: HeaderStyle = HeaderStyle {
        prefix: "CE_",
        percent_encoded: false,
    };

    fn decode_value(self, v: &[u8]) -> Result<String, String> {
        if self.percent_encoded {
            percent_decode(v)
        } else {
            String::from_utf8(v.to_vec()).map_err(|_| "header value is not valid UTF-8".into())
        }
    }

    fn encode_value(self, v: &str) -> String {
        if self.percent_encoded {
            percent_encode(v)
        } else {
            v.to_owned()
        }
    }
}

/// Decodes an HTTP binary-mode message.
pub fn decode_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&[u8]>,
    body: Bytes,
) -> Result<Event, DecodeError> {
    decode_binary_with(HeaderStyle::HTTP, headers, content_type, body)
}

/// Decodes a binary-mode message whose attribute headers follow `style`; an empty body is
/// an event without data.
pub fn decode_binary_with<'a>(
    style: HeaderStyle,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&[u8]>,
    body: Bytes,
) -> Result<Event, DecodeError> {
    let mut specversion = None;
    let mut id = None;
    let mut source = None;
    let mut ty = None;
    let mut dataschema = None;
    let mut subject = None;
    let mut time = None;
    let mut extensions: Vec<(String, ExtValue)> = Vec::new();

    for (name, value) in headers {
        let Some(attr) = name.strip_prefix(style.prefix) else {
            continue;
        };
        let header = || format!("{}{attr}", style.prefix);
        let value = style
            .decode_value(value)
            .map_err(|rule| EventError::new(header(), rule))?;
        let slot = match attr {
            "specversion" => &mut specversion,
            "id" => &mut id,
            "source" => &mut source,
            "type" => &mut ty,
            "dataschema" => &mut dataschema,
            "subject" => &mut subject,
            "time" => &mut time,
            "datacontenttype" => {
                return Err(EventError::new(
                    header(),
                    "binary mode carries datacontenttype in the content-type header",
                )
                .into())
            }
            _ => {
                crate::event::validate_extension_name(attr)?;
                if extensions.iter().any(|(n, _)| n == attr) {
                    return Err(EventError::new(header(), "appears more than once").into());
                }
                extensions.push((attr.to_owned(), ExtValue::String(value)));
                continue;
            }
        };
        if slot.is_some() {
            return Err(EventError::new(header(), "appears more than once").into());
        }
        *slot = Some(value);
    }

    let sv = specversion.ok_or_else(|| EventError::new("specversion", "is required"))?;
    let specversion = SpecVersion::parse(&sv).ok_or_else(|| {
        EventError::new(
            "specversion",
            format!("unknown specversion {sv:?} (evmesh accepts \"1.0\" and \"0.3\")"),
        )
    })?;
    let datacontenttype = match content_type {
        None => None,
        Some(ct) => Some(
            std::str::from_utf8(ct)
                .map_err(|_| EventError::new("datacontenttype", "Content-Type is not UTF-8"))?
                .to_owned(),
        ),
    };
    let event = Event {
        specversion,
        id: id.ok_or_else(|| EventError::new("id", "is required"))?,
        source: source.ok_or_else(|| EventError::new("source", "is required"))?,
        ty: ty.ok_or_else(|| EventError::new("type", "is required"))?,
        datacontenttype,
        dataschema,
        subject,
        time,
        extensions,
        data: if body.is_empty() {
            None
        } else {
            Some(Data::binary(body))
        },
    };
    event.validate()?;
    Ok(event)
}

/// Calls `push(name, value)` for every `ce-*` header of an HTTP binary-mode message, plus
/// `content-type` when the event has one.
pub fn encode_binary_headers(e: &Event, push: impl FnMut(&str, String)) {
    encode_binary_headers_with(HeaderStyle::HTTP, e, push)
}

/// Calls `push(name, value)` for every attribute header of a binary-mode message in `style`,
/// plus `content-type` when the event has one.
pub fn encode_binary_headers_with(
    style: HeaderStyle,
    e: &Event,
    mut push: impl FnMut(&str, String),
) {
    let mut name = String::with_capacity(24);
    let mut put = |attr: &str, value: String| {
        name.clear();
        name.push_str(style.prefix);
        name.push_str(attr);
        push(&name, value);
    };
    put("specversion", e.specversion.as_str().to_owned());
    put("id", style.encode_value(&e.id));
    put("source", style.encode_value(&e.source));
    put("type", style.encode_value(&e.ty));
    if let Some(v) = &e.dataschema {
        put("dataschema", style.encode_value(v));
    }
    if let Some(v) = &e.subject {
        put("subject", style.encode_value(v));
    }
    if let Some(v) = &e.time {
        put("time", style.encode_value(v));
    }
    for (n, v) in &e.extensions {
        put(n, style.encode_value(&v.to_canonical_string()));
    }
    if let Some(ct) = e.effective_content_type() {
        push("content-type", ct.to_owned());
    }
}

fn needs_encoding(b: u8) -> bool {
    !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'%'
}

/// Percent-encodes a header value per the HTTP binding (upper-case hex).
pub fn percent_encode(s: &str) -> String {
    if !s.bytes().any(needs_encoding) {
        return s.to_owned();
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if needs_encoding(b) {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Percent-decodes a header value; the result must be UTF-8.
pub fn percent_decode(v: &[u8]) -> Result<String, String> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        if b == b'%' && i + 2 < v.len() {
            if let (Some(h), Some(l)) = (hex(v[i + 1]), hex(v[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| "header value is not valid UTF-8 after percent-decoding".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_percent_encoded_values() {
        assert_eq!(percent_decode(b"a%20b%22%25").unwrap(), "a b\"%");
        assert_eq!(percent_decode(b"%E2%82%AC").unwrap(), "€");
        assert!(percent_decode(b"%FF%FE").is_err());
        assert_eq!(percent_decode(b"100%").unwrap(), "100%");
    }

    #[test]
    fn encodes_with_uppercase_hex() {
        assert_eq!(percent_encode("a b\"%€"), "a%20b%22%25%E2%82%AC");
        assert_eq!(percent_encode("plain"), "plain");
    }

    #[test]
    fn binary_decode_requires_core_attributes() {
        let h = [
            ("ce-specversion", &b"1.0"[..]),
            ("ce-id", b"1"),
            ("ce-type", b"t"),
        ];
        let err = decode_binary(h, None, Bytes::new()).unwrap_err();
        assert_eq!(err.event_error().unwrap().attribute, "source");
    }

    proptest! {
        #[test]
        fn percent_codec_round_trips(s in "\\PC*") {
            prop_assert_eq!(percent_decode(percent_encode(&s).as_bytes()).unwrap(), s);
        }
    }
}
