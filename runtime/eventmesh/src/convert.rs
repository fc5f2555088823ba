//! Message bodies of the EventMesh protocols as evmesh events, and back.
//!
//! - `protocoltype: cloudevents` (the default): the body is a CloudEvent in JSON format. Its
//!   topic is the header property `topic`, else the event's `subject` (EventMesh's convention).
//! - `protocoltype: eventmeshmessage`: the body is `{topic, properties, body}`. It becomes an
//!   event with `id` = the header's `seq` (or the `uniqueid` property), `source` `/`, `type`
//!   `eventmeshmessage`, `subject` = the topic, the body as text data, and every property whose
//!   name is a valid extension name (lower-cased letters and digits) as an extension.

use bytes::Bytes;
use evmesh_core::{format, Data, DataKind, Event, ExtValue};
use evmesh_sdk::protocol::{
    EventMeshMessage, Header, CLOUDEVENTS, EVENTMESH_MESSAGE, PROTOCOL_TYPE,
};

/// An event and the topic it is for.
pub struct Incoming {
    pub topic: String,
    pub event: Event,
}

/// The event a publish frame carries, and its topic.
pub fn incoming(header: &Header, body: &[u8]) -> Result<Incoming, String> {
    match header.property(PROTOCOL_TYPE).unwrap_or(CLOUDEVENTS) {
        EVENTMESH_MESSAGE => {
            let m: EventMeshMessage = serde_json::from_slice(body)
                .map_err(|e| format!("invalid EventMesh message: {e}"))?;
            let id = m
                .properties
                .get("uniqueid")
                .cloned()
                .unwrap_or_else(|| header.seq.clone());
            let topic = header
                .property("topic")
                .map(str::to_owned)
                .unwrap_or_else(|| m.topic.clone());
            Ok(Incoming {
                event: from_message(&id, &m.topic, &m.properties, m.body.into_bytes()),
                topic,
            })
        }
        CLOUDEVENTS => {
            let event = format::decode_structured(body).map_err(|e| e.to_string())?;
            let topic = header
                .property("topic")
                .map(str::to_owned)
                .or_else(|| event.subject.clone())
                .ok_or("no topic: set the header property `topic` or the event's subject")?;
            Ok(Incoming { topic, event })
        }
        other => Err(format!(
            "protocoltype {other:?} is not supported (cloudevents, eventmeshmessage)"
        )),
    }
}

/// The event a `RESPONSE_TO_SERVER` frame carries (no topic needed: it goes to its
/// `replyto`).
pub fn incoming_reply(header: &Header, body: &[u8]) -> Result<Event, String> {
    match header.property(PROTOCOL_TYPE).unwrap_or(CLOUDEVENTS) {
        EVENTMESH_MESSAGE => {
            let m: EventMeshMessage = serde_json::from_slice(body)
                .map_err(|e| format!("invalid EventMesh message: {e}"))?;
            Ok(from_message(
                &header.seq,
                &m.topic,
                &m.properties,
                m.body.into_bytes(),
            ))
        }
        _ => format::decode_structured(body).map_err(|e| e.to_string()),
    }
}

/// An EventMesh-style message (a topic, string properties, a text body) as an event.
pub fn from_message(
    id: &str,
    topic: &str,
    properties: &std::collections::BTreeMap<String, String>,
    body: Vec<u8>,
) -> Event {
    let mut e = Event::new(
        if id.is_empty() { "eventmesh" } else { id },
        "/",
        "eventmeshmessage",
    );
    if !topic.is_empty() {
        e.subject = Some(topic.to_owned());
    }
    e.data = Some(Data {
        kind: DataKind::Text,
        bytes: Bytes::from(body),
    });
    e.datacontenttype = Some("text/plain".into());
    for (k, v) in properties {
        let name = k.to_ascii_lowercase();
        if evmesh_core::event::validate_extension_name(&name).is_ok() && !is_attribute(&name) {
            e.set_extension(&name, ExtValue::String(v.clone()));
        }
    }
    e
}

fn is_attribute(name: &str) -> bool {
    matches!(
        name,
        "id" | "source"
            | "type"
            | "specversion"
            | "subject"
            | "time"
            | "datacontenttype"
            | "dataschema"
            | "data"
    )
}

/// The body of a frame pushing `event` to a client that speaks `protocol`.
pub fn outgoing(event: &Event, topic: &str, protocol: &str) -> Vec<u8> {
    if protocol == EVENTMESH_MESSAGE {
        let m = EventMeshMessage {
            topic: topic.to_owned(),
            properties: event
                .extensions
                .iter()
                .map(|(k, v)| (k.clone(), v.to_canonical_string()))
                .collect(),
            body: event
                .data
                .as_ref()
                .map(|d| String::from_utf8_lossy(&d.bytes).into_owned())
                .unwrap_or_default(),
        };
        return serde_json::to_vec(&m).unwrap_or_default();
    }
    let mut out = Vec::with_capacity(256);
    format::encode_structured(event, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmesh_sdk::protocol::Command;

    #[test]
    fn cloudevents_take_their_topic_from_the_header_or_the_subject() {
        let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"orders"}"#;
        let h = Header::new(Command::ASYNC_MESSAGE_TO_SERVER, "1");
        assert_eq!(incoming(&h, body).unwrap().topic, "orders");
        let h = h.with_property("topic", "other");
        assert_eq!(incoming(&h, body).unwrap().topic, "other");
        let no_subject = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;
        let h = Header::new(Command::ASYNC_MESSAGE_TO_SERVER, "1");
        assert!(incoming(&h, no_subject).is_err());
    }

    #[test]
    fn eventmesh_messages_become_events_and_back() {
        let h = Header::new(Command::ASYNC_MESSAGE_TO_SERVER, "77")
            .with_property(PROTOCOL_TYPE, EVENTMESH_MESSAGE);
        let body =
            br#"{"topic":"orders","properties":{"Region":"eu","bad-name":"x"},"body":"hello"}"#;
        let i = incoming(&h, body).unwrap();
        assert_eq!(i.topic, "orders");
        assert_eq!(i.event.id, "77");
        assert_eq!(
            i.event.extension("region"),
            Some(&ExtValue::String("eu".into()))
        );
        assert!(i.event.extension("bad-name").is_none());
        let back: EventMeshMessage =
            serde_json::from_slice(&outgoing(&i.event, "orders", EVENTMESH_MESSAGE)).unwrap();
        assert_eq!(back.body, "hello");
        assert_eq!(back.properties["region"], "eu");
    }
}
