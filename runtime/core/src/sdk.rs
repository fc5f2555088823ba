//! Interop with the `cloudevents-sdk` crate, for users who already hold `cloudevents::Event`s.

use crate::event::{Data, DataKind, Event, EventError, ExtValue, SpecVersion};
use bytes::Bytes;
use cloudevents::event::{AttributesReader, ExtensionValue};

impl From<&cloudevents::Event> for Event {
    fn from(e: &cloudevents::Event) -> Self {
        let specversion = match e.specversion() {
            cloudevents::event::SpecVersion::V03 => SpecVersion::V0_3,
            cloudevents::event::SpecVersion::V10 => SpecVersion::V1_0,
        };
        let data = e.data().map(|d| match d {
            cloudevents::Data::Binary(b) => Data::binary(b.clone()),
            cloudevents::Data::String(s) => Data {
                kind: DataKind::Text,
                bytes: Bytes::from(s.clone()),
            },
            cloudevents::Data::Json(v) => Data {
                kind: DataKind::Json,
                bytes: Bytes::from(v.to_string()),
            },
        });
        Event {
            specversion,
            id: e.id().to_owned(),
            source: e.source().to_string(),
            ty: e.ty().to_owned(),
            datacontenttype: e.datacontenttype().map(str::to_owned),
            dataschema: e.dataschema().map(|u| u.to_string()),
            subject: e.subject().map(str::to_owned),
            time: e
                .time()
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            extensions: e
                .iter_extensions()
                .map(|(n, v)| {
                    let v = match v {
                        ExtensionValue::String(s) => ExtValue::String(s.clone()),
                        ExtensionValue::Boolean(b) => ExtValue::Bool(*b),
                        ExtensionValue::Integer(i) => ExtValue::Integer(*i),
                    };
                    (n.to_owned(), v)
                })
                .collect(),
            data,
        }
    }
}

impl TryFrom<&Event> for cloudevents::Event {
    type Error = EventError;

    fn try_from(e: &Event) -> Result<Self, EventError> {
        use cloudevents::EventBuilder as _;
        let mut b = cloudevents::EventBuilderV10::new()
            .id(&e.id)
            .source(e.source.as_str())
            .ty(&e.ty);
        if let Some(s) = &e.subject {
            b = b.subject(s.as_str());
        }
        if let Some(t) = &e.time {
            b = b.time(t.as_str());
        }
        for (n, v) in &e.extensions {
            b = match v {
                ExtValue::String(s) => b.extension(n, s.as_str()),
                ExtValue::Bool(x) => b.extension(n, *x),
                ExtValue::Integer(i) => b.extension(n, *i),
            };
        }
        if let Some(d) = &e.data {
            let ct = e
                .effective_content_type()
                .unwrap_or("application/octet-stream")
                .to_owned();
            let data = match d.kind {
                DataKind::Json => serde_json::from_slice::<serde_json::Value>(&d.bytes)
                    .map(cloudevents::Data::Json)
                    .unwrap_or_else(|_| cloudevents::Data::Binary(d.bytes.to_vec())),
                DataKind::Text => {
                    cloudevents::Data::String(String::from_utf8_lossy(&d.bytes).into_owned())
                }
                DataKind::Binary => cloudevents::Data::Binary(d.bytes.to_vec()),
            };
            b = b.data(ct, data);
        }
        b.build()
            .map_err(|err| EventError::new("event", err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_both_ways() {
        let mut e = Event::new("1", "/src", "t");
        e.time = Some("2018-04-05T17:31:00Z".into());
        e.set_extension("n", ExtValue::Integer(3));
        e.datacontenttype = Some("application/json".into());
        e.data = Some(Data {
            kind: DataKind::Json,
            bytes: Bytes::from_static(b"{\"a\":1}"),
        });
        let sdk = cloudevents::Event::try_from(&e).unwrap();
        assert_eq!(sdk.id(), "1");
        let back = Event::from(&sdk);
        assert_eq!(back.extension("n"), Some(&ExtValue::Integer(3)));
        assert_eq!(back.time.as_deref(), Some("2018-04-05T17:31:00Z"));
    }
}
