//! Kafka for evmesh: a sink (produce each event, delivered once the broker acknowledges it), a
//! source (consume records into an evmesh topic, commit offsets only after the events are
//! durable), and [`KafkaStore`], Kafka as the event store so that several evmesh instances
//! share the delivery work through consumer groups.
//!
//! The CloudEvents Kafka protocol binding is in [`binding`].

pub mod binding;
mod sink;
mod source;
mod store;

pub use sink::KafkaSink;
pub use source::KafkaSource;
pub use store::KafkaStore;

use rdkafka::ClientConfig;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum KafkaConnectorError {
    #[error("kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error(transparent)]
    Store(#[from] evmesh_store::StoreError),
}

/// The client settings every evmesh Kafka client starts from; `properties` (SASL, TLS, ...)
/// are applied last, so they win.
fn client_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "evmesh")
        .set("log_level", "4");
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

fn client_error(
    brokers: &str,
) -> impl FnOnce(rdkafka::error::KafkaError) -> KafkaConnectorError + '_ {
    move |source| KafkaConnectorError::Client {
        brokers: brokers.to_owned(),
        source,
    }
}

/// Headers of a consumed message as borrowed `(name, value)` pairs (absent values as empty).
fn borrowed_headers<M: rdkafka::Message>(m: &M) -> Vec<(&str, &[u8])> {
    use rdkafka::message::Headers;
    match m.headers() {
        Some(h) => h
            .iter()
            .map(|h| (h.key, h.value.unwrap_or_default()))
            .collect(),
        None => Vec::new(),
    }
}

/// A consumed message as the binding sees it.
fn in_record<'a, M: rdkafka::Message>(
    m: &'a M,
    headers: &'a [(&'a str, &'a [u8])],
) -> binding::InRecord<'a> {
    binding::InRecord {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key(),
        headers,
        value: m.payload(),
    }
}

/// Encoded record as rdkafka headers.
fn owned_headers(headers: &[(String, Vec<u8>)]) -> rdkafka::message::OwnedHeaders {
    let mut h = rdkafka::message::OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: Some(v),
        });
    }
    h
}
