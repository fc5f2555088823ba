//! The CloudEvent as evmesh carries it.
//!
//! evmesh keeps its own compact event type instead of `cloudevents::Event` so that the data
//! bytes travel untouched (a structured-mode JSON `data` value is kept as the exact JSON text the
//! publisher sent) and so that validation can name the attribute and the rule that failed.
//! Conversions to and from `cloudevents::Event` live in [`crate::sdk`].

use bytes::Bytes;
use std::fmt;

/// The CloudEvents spec versions evmesh accepts. 0.3 shares the 1.0 core attributes that the
/// HTTP binding carries, so it is passed through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecVersion {
    V1_0,
    V0_3,
}

impl SpecVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V1_0 => "1.0",
            SpecVersion::V0_3 => "0.3",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1.0" => Some(SpecVersion::V1_0),
            "0.3" => Some(SpecVersion::V0_3),
            _ => None,
        }
    }
}

/// A typed extension value, as the JSON format can express it. Binary mode carries every
/// extension as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtValue {
    String(String),
    Bool(bool),
    Integer(i64),
}

impl ExtValue {
    /// The canonical string form, used by the HTTP binary mode and by string filters.
    pub fn to_canonical_string(&self) -> String {
        match self {
            ExtValue::String(s) => s.clone(),
            ExtValue::Bool(b) => b.to_string(),
            ExtValue::Integer(i) => i.to_string(),
        }
    }
}

impl fmt::Display for ExtValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtValue::String(s) => f.write_str(s),
            ExtValue::Bool(b) => write!(f, "{b}"),
            ExtValue::Integer(i) => write!(f, "{i}"),
        }
    }
}

/// How the data arrived, which decides how it is written back out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// `bytes` is JSON text (a structured-mode `data` member kept verbatim).
    Json,
    /// `bytes` is UTF-8 text (a structured-mode `data` string with a non-JSON content type).
    Text,
    /// Opaque bytes (binary mode body or `data_base64`).
    Binary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub kind: DataKind,
    pub bytes: Bytes,
}

impl Data {
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Data {
            kind: DataKind::Binary,
            bytes: bytes.into(),
        }
    }
}

/// A validated CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub specversion: SpecVersion,
    pub id: String,
    pub source: String,
    pub ty: String,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    /// RFC 3339, kept as the publisher wrote it (validated on ingest).
    pub time: Option<String>,
    /// Extensions in arrival order; names are unique.
    pub extensions: Vec<(String, ExtValue)>,
    pub data: Option<Data>,
}

/// A value looked up by attribute name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrRef<'a> {
    Str(&'a str),
    Bool(bool),
    Integer(i64),
}

impl AttrRef<'_> {
    /// Writes the canonical string form without allocating when it already is a string.
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            AttrRef::Str(s) => f(s),
            AttrRef::Bool(b) => f(if *b { "true" } else { "false" }),
            AttrRef::Integer(i) => f(&i.to_string()),
        }
    }
}

impl Event {
    /// A minimal event, mostly for tests and examples.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        Event {
            specversion: SpecVersion::V1_0,
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: Vec::new(),
            data: None,
        }
    }

    /// Looks up a context attribute or extension by its CloudEvents name.
    pub fn attribute(&self, name: &str) -> Option<AttrRef<'_>> {
        match name {
            "specversion" => Some(AttrRef::Str(self.specversion.as_str())),
            "id" => Some(AttrRef::Str(&self.id)),
            "source" => Some(AttrRef::Str(&self.source)),
            "type" => Some(AttrRef::Str(&self.ty)),
            "datacontenttype" => self.datacontenttype.as_deref().map(AttrRef::Str),
            "dataschema" => self.dataschema.as_deref().map(AttrRef::Str),
            "subject" => self.subject.as_deref().map(AttrRef::Str),
            "time" => self.time.as_deref().map(AttrRef::Str),
            _ => self.extension(name).map(|v| match v {
                ExtValue::String(s) => AttrRef::Str(s),
                ExtValue::Bool(b) => AttrRef::Bool(*b),
                ExtValue::Integer(i) => AttrRef::Integer(*i),
            }),
        }
    }

    pub fn extension(&self, name: &str) -> Option<&ExtValue> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Sets (or replaces) an extension, keeping the order of the others.
    pub fn set_extension(&mut self, name: &str, value: ExtValue) {
        if let Some(slot) = self.extensions.iter_mut().find(|(n, _)| n == name) {
            slot.1 = value;
        } else {
            self.extensions.push((name.to_owned(), value));
        }
    }

    pub fn remove_extension(&mut self, name: &str) -> Option<ExtValue> {
        let pos = self.extensions.iter().position(|(n, _)| n == name)?;
        Some(self.extensions.remove(pos).1)
    }

    /// The `partitionkey` extension (CloudEvents partitioning extension), used for ordering.
    pub fn partition_key(&self) -> Option<String> {
        self.extension("partitionkey")
            .map(ExtValue::to_canonical_string)
    }

    /// The content type the data should be sent with: the declared one, or JSON for data that
    /// arrived as a JSON value with no declared type (the JSON format's default).
    pub fn effective_content_type(&self) -> Option<&str> {
        match (&self.datacontenttype, &self.data) {
            (Some(ct), _) => Some(ct),
            (None, Some(d)) if d.kind == DataKind::Json => Some("application/json"),
            _ => None,
        }
    }

    /// Checks every rule of the CloudEvents 1.0 spec that evmesh enforces on ingest.
    pub fn validate(&self) -> Result<(), EventError> {
        require_non_empty("id", &self.id)?;
        require_non_empty("source", &self.source)?;
        require_non_empty("type", &self.ty)?;
        if let Some(ct) = &self.datacontenttype {
            validate_content_type(ct)?;
        }
        if let Some(ds) = &self.dataschema {
            require_non_empty("dataschema", ds)?;
        }
        if let Some(s) = &self.subject {
            require_non_empty("subject", s)?;
        }
        if let Some(t) = &self.time {
            validate_time(t)?;
        }
        for (i, (name, _)) in self.extensions.iter().enumerate() {
            validate_extension_name(name)?;
            if self.extensions[..i].iter().any(|(n, _)| n == name) {
                return Err(EventError::new(name, "extension appears more than once"));
            }
        }
        Ok(())
    }
}

fn require_non_empty(attr: &str, v: &str) -> Result<(), EventError> {
    if v.is_empty() {
        Err(EventError::new(attr, "must be a non-empty string"))
    } else {
        Ok(())
    }
}

/// RFC 2046 media type: `type/subtype` with optional parameters.
pub fn validate_content_type(ct: &str) -> Result<(), EventError> {
    let essence = ct.split(';').next().unwrap_or("").trim();
    let valid_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match essence.split_once('/') {
        Some((t, s)) if valid_token(t) && valid_token(s) => Ok(()),
        _ => Err(EventError::new(
            "datacontenttype",
            format!("must be an RFC 2046 media type such as \"application/json\", got {ct:?}"),
        )),
    }
}

/// RFC 3339 timestamp (seconds required, offset `Z` or `±hh:mm`).
pub fn validate_time(t: &str) -> Result<(), EventError> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|_| ())
        .map_err(|_| {
            EventError::new(
                "time",
                format!(
                    "must be an RFC 3339 timestamp such as \"2018-04-05T17:31:00Z\", got {t:?}"
                ),
            )
        })
}

/// Extension names are lower-case ASCII letters and digits.
pub fn validate_extension_name(name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::new(
            name,
            "extension names must consist of lower-case letters a-z and digits 0-9",
        ));
    }
    if name == "data" {
        return Err(EventError::new(name, "\"data\" is reserved"));
    }
    Ok(())
}

/// Why an event was refused: the attribute and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{attribute}: {rule}")]
pub struct EventError {
    pub attribute: String,
    pub rule: String,
}

impl EventError {
    pub fn new(attribute: impl Into<String>, rule: impl Into<String>) -> Self {
        EventError {
            attribute: attribute.into(),
            rule: rule.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_empty_required_attributes() {
        let mut e = Event::new("", "s", "t");
        assert_eq!(e.validate().unwrap_err().attribute, "id");
        e.id = "1".into();
        e.source.clear();
        assert_eq!(e.validate().unwrap_err().attribute, "source");
    }

    #[test]
    fn validate_checks_time_and_content_type() {
        let mut e = Event::new("1", "s", "t");
        e.time = Some("2018-04-05T18:31Z".into());
        assert_eq!(e.validate().unwrap_err().attribute, "time");
        e.time = Some("2018-04-05T18:31:00+01:00".into());
        assert!(e.validate().is_ok());
        e.datacontenttype = Some("xyz".into());
        assert_eq!(e.validate().unwrap_err().attribute, "datacontenttype");
        e.datacontenttype = Some("application/json; charset=utf-8".into());
        assert!(e.validate().is_ok());
    }

    #[test]
    fn extension_names_must_be_lowercase_alphanumeric() {
        assert!(validate_extension_name("comexampleextension1").is_ok());
        assert!(validate_extension_name("MyExtension").is_err());
        assert!(validate_extension_name("my.extension").is_err());
    }

    #[test]
    fn attribute_lookup_covers_core_and_extensions() {
        let mut e = Event::new("1", "s", "t");
        e.set_extension("n", ExtValue::Integer(5));
        assert_eq!(e.attribute("type"), Some(AttrRef::Str("t")));
        assert_eq!(e.attribute("n"), Some(AttrRef::Integer(5)));
        assert_eq!(e.attribute("subject"), None);
    }
}
