//! Kafka for evmesh: a sink (produce each event, delivered once the broker acknowledges it), a
//! source (consume records into an evmesh topic, commit offsets only after the events are
//! durable), and [`KafkaStore`], Kafka as the event store so that several evmesh instances
//! share the delivery work through consumer groups.
//!
//! The CloudEvents Kafka protocol binding is in [`binding`].

pub mod binding;
pub mod config;
mod sink;
mod source;
mod store;

pub use config::{
    KafkaAcks, KafkaCompression, KafkaMode, KafkaSinkConfig, KafkaSourceConfig, KafkaStoreConfig,
};
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

/// Creates a topic unless it exists (tansu, for one, does not create topics on first use).
pub async fn ensure_topic(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaConnectorError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, properties)
        .create()
        .map_err(client_error(brokers))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(client_error(brokers))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaConnectorError::Topic {
                    topic: name,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Deletes a topic (a missing one is fine).
pub async fn delete_topic(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
) -> Result<(), KafkaConnectorError> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, properties)
        .create()
        .map_err(client_error(brokers))?;
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let results = admin
        .delete_topics(&[topic], &opts)
        .await
        .map_err(client_error(brokers))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => {
                return Err(KafkaConnectorError::Topic {
                    topic: name,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
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

/// A producer that is replaced when it stops making progress: after a fatal error (an
/// idempotent producer whose state the broker lost), or when nothing was acknowledged for a
/// while although sends were timing out. Replacing it drops what it had queued; those sends
/// fail and are retried by their caller (at least once, never silently dropped).
struct Renewing {
    config: ClientConfig,
    current: std::sync::RwLock<std::sync::Arc<rdkafka::producer::FutureProducer>>,
    last_progress: std::sync::Mutex<std::time::Instant>,
    what: String,
}

impl Renewing {
    fn new(config: ClientConfig, what: String) -> Result<Self, rdkafka::error::KafkaError> {
        let p = config.create()?;
        Ok(Renewing {
            config,
            current: std::sync::RwLock::new(std::sync::Arc::new(p)),
            last_progress: std::sync::Mutex::new(std::time::Instant::now()),
            what,
        })
    }

    fn get(&self) -> std::sync::Arc<rdkafka::producer::FutureProducer> {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn progressed(&self) {
        if let Ok(mut t) = self.last_progress.lock() {
            *t = std::time::Instant::now();
        }
    }

    /// After a failed or timed-out send on `used`: replace it if it is dead or stalled.
    fn check(
        &self,
        used: &std::sync::Arc<rdkafka::producer::FutureProducer>,
        stall: std::time::Duration,
    ) {
        use rdkafka::producer::Producer;
        let fatal = used.client().fatal_error();
        let stalled = self
            .last_progress
            .lock()
            .map(|t| t.elapsed() > stall)
            .unwrap_or(false);
        if fatal.is_none() && !stalled {
            return;
        }
        let Ok(mut cur) = self.current.write() else {
            return;
        };
        if !std::sync::Arc::ptr_eq(&cur, used) {
            return; // someone replaced it already
        }
        match self.config.create() {
            Ok(p) => {
                tracing::warn!(producer = %self.what, fatal = ?fatal, "kafka producer made no progress; starting a new one");
                *cur = std::sync::Arc::new(p);
                self.progressed();
            }
            Err(e) => {
                tracing::error!(producer = %self.what, error = %e, "could not start a new kafka producer")
            }
        }
    }
}
