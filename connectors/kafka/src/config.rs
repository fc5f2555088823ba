//! The Kafka components' settings, each checked where it is defined: the sink, the source,
//! and Kafka as the event store.

use evmesh_core::component::{Check, Kind};
use evmesh_core::config::{validate_external_topic, validate_topic, ConfigError, StartPosition};
use evmesh_core::duration::IsoDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Kafka as the event store: one Kafka topic per evmesh topic, one consumer group per
/// subscription; several evmesh instances on the same Kafka share the delivery work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaStoreConfig {
    /// Bootstrap servers, comma-separated (`host:port,host:port`).
    pub brokers: String,
    /// Kafka topic of evmesh topic `t` is `<topicPrefix><t>`.
    #[serde(default = "default_kafka_prefix")]
    pub topic_prefix: String,
    /// Consumer group of subscription `s` is `<groupPrefix><s>`.
    #[serde(default = "default_kafka_prefix")]
    pub group_prefix: String,
    /// Partitions of the Kafka topics evmesh creates (the unit of work sharing).
    #[serde(default = "default_kafka_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How long the group waits for a silent instance before handing its partitions over.
    #[serde(default = "default_session_timeout")]
    pub session_timeout: IsoDuration,
    /// librdkafka properties for every client (SASL, TLS, ...), passed through unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

fn default_kafka_prefix() -> String {
    "evmesh.".into()
}
fn default_kafka_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_session_timeout() -> IsoDuration {
    IsoDuration(Duration::from_secs(6))
}

/// Produces each event to a Kafka topic; delivered means acknowledged by the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    pub topic: String,
    #[serde(default)]
    pub mode: KafkaMode,
    /// The attribute whose value is the record key (records of one key keep their order).
    #[serde(default = "default_kafka_key")]
    pub key: String,
    #[serde(default)]
    pub acks: KafkaAcks,
    /// The idempotent producer (no duplicates from the producer's own retries); needs
    /// `acks: all`.
    #[serde(default = "default_true")]
    pub idempotence: bool,
    #[serde(default)]
    pub compression: KafkaCompression,
    /// How long the producer waits to fill a batch.
    #[serde(default = "default_linger")]
    pub linger: IsoDuration,
    /// Largest producer batch, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u64>,
    /// librdkafka producer properties (SASL, TLS, ...), passed through; they override the above.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

fn default_kafka_key() -> String {
    "partitionkey".into()
}
fn default_true() -> bool {
    true
}
fn default_linger() -> IsoDuration {
    IsoDuration(Duration::from_millis(5))
}

/// How an event is laid out in a Kafka record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaMode {
    /// `ce_*` headers, the data as the value.
    #[default]
    Binary,
    /// `application/cloudevents+json` value.
    Structured,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaAcks {
    /// Every in-sync replica has the record.
    #[default]
    All,
    /// The partition leader has it.
    Leader,
    /// Fire and forget (delivered as soon as it is sent).
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
}

/// Consumes Kafka records into an evmesh topic; offsets are committed only after the events
/// are durably stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    pub topics: Vec<String>,
    /// The consumer group (its committed offsets are where a restart resumes).
    pub group: String,
    /// The evmesh topic the events are written to.
    pub into: String,
    /// Where a group without committed offsets starts. Committed offsets always win.
    #[serde(default)]
    pub start: StartPosition,
    /// The `type` given to records that are not CloudEvents.
    #[serde(default = "default_record_type")]
    pub record_type: String,
    /// librdkafka consumer properties (SASL, TLS, ...), passed through.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

fn default_record_type() -> String {
    "dev.evmesh.kafka.record".into()
}

impl Kind for KafkaSinkConfig {
    const KIND: &'static str = "kafka";
}

impl Kind for KafkaSourceConfig {
    const KIND: &'static str = "kafka";
}

impl Kind for KafkaStoreConfig {
    const KIND: &'static str = "kafka";
}

impl Check for KafkaSinkConfig {
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        check_brokers(&self.brokers, "brokers", &mut errors);
        check_kafka_topic(&self.topic, "topic", &mut errors);
        if self.idempotence && self.acks != KafkaAcks::All {
            errors.push(ConfigError::new(
                "idempotence",
                "the idempotent producer needs acks: all (or set idempotence: false)",
            ));
        }
        if evmesh_core::event::validate_extension_name(&self.key).is_err() {
            errors.push(ConfigError::new(
                "key",
                format!("{:?} is not an attribute name", self.key),
            ));
        }
        errors
    }
}

impl Check for KafkaSourceConfig {
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        check_brokers(&self.brokers, "brokers", &mut errors);
        if self.topics.is_empty() {
            errors.push(ConfigError::new("topics", "name at least one Kafka topic"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            check_kafka_topic(t, &format!("topics[{i}]"), &mut errors);
        }
        if self.group.trim().is_empty() {
            errors.push(ConfigError::new("group", "must not be empty"));
        }
        if let Err(e) = validate_topic(&self.into) {
            errors.push(ConfigError::new("into", e));
        }
        errors
    }
}

impl Check for KafkaStoreConfig {
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        check_brokers(&self.brokers, "brokers", &mut errors);
        if self.partitions < 1 {
            errors.push(ConfigError::new("partitions", "must be at least 1"));
        }
        if self.replication_factor < 1 {
            errors.push(ConfigError::new("replicationFactor", "must be at least 1"));
        }
        for (path, prefix) in [
            ("topicPrefix", &self.topic_prefix),
            ("groupPrefix", &self.group_prefix),
        ] {
            if !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                errors.push(ConfigError::new(
                    path,
                    format!("{prefix:?} may only contain letters, digits, '.', '_' and '-'"),
                ));
            }
        }
        if self.session_timeout.0 < Duration::from_secs(1) {
            errors.push(ConfigError::new("sessionTimeout", "must be at least PT1S"));
        }
        errors
    }
}

fn check_brokers(brokers: &str, path: &str, errors: &mut Vec<ConfigError>) {
    let ok = !brokers.trim().is_empty()
        && brokers.split(',').all(|b| {
            b.trim()
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        });
    if !ok {
        errors.push(ConfigError::new(
            path,
            format!("{brokers:?} is not a list of brokers (expected host:port[,host:port...])"),
        ));
    }
}

/// A Kafka topic evmesh reads or writes directly (not through its own naming): Kafka's rules.
fn check_kafka_topic(topic: &str, path: &str, errors: &mut Vec<ConfigError>) {
    if let Err(e) = validate_external_topic(topic) {
        errors.push(ConfigError::new(
            path,
            format!("not a valid Kafka topic name: {e}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmesh_core::component::ComponentSpec;

    fn spec(yaml: &str) -> ComponentSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn store_sink_and_source_parse_with_defaults() {
        let k: KafkaStoreConfig = spec("{type: kafka, brokers: '127.0.0.1:9092'}")
            .parse("store")
            .unwrap();
        assert_eq!(k.topic_prefix, "evmesh.");
        assert_eq!(k.partitions, 3);
        let sink: KafkaSinkConfig =
            spec("{type: kafka, brokers: '127.0.0.1:9092', topic: copy, mode: structured}")
                .parse("s.sink")
                .unwrap();
        assert_eq!(sink.key, "partitionkey");
        assert_eq!(sink.acks, KafkaAcks::All);
        assert!(sink.idempotence);
        assert_eq!(sink.mode, KafkaMode::Structured);
        let src: KafkaSourceConfig = spec(
            "{type: kafka, brokers: 'k1:9092,k2:9092', topics: [orders], group: g, into: orders}",
        )
        .parse("sources[0]")
        .unwrap();
        assert_eq!(src.start, StartPosition::Latest);
        assert_eq!(src.record_type, "dev.evmesh.kafka.record");
    }

    #[test]
    fn config_errors_name_the_field() {
        let paths = |r: Result<(), Vec<ConfigError>>| -> Vec<String> {
            r.err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.path)
                .collect()
        };
        let store = paths(
            spec("{type: kafka, brokers: nohost, partitions: 0}")
                .parse::<KafkaStoreConfig>("store")
                .map(|_| ()),
        );
        assert!(store.contains(&"store.brokers".to_owned()), "{store:?}");
        assert!(store.contains(&"store.partitions".to_owned()), "{store:?}");
        let src = paths(
            spec("{type: kafka, brokers: 'k:9092', topics: [], group: '', into: __x}")
                .parse::<KafkaSourceConfig>("sources[0]")
                .map(|_| ()),
        );
        for want in ["sources[0].topics", "sources[0].group", "sources[0].into"] {
            assert!(src.contains(&want.to_owned()), "{want}: {src:?}");
        }
        let sink = paths(
            spec("{type: kafka, brokers: 'k:9092', topic: 'bad topic', acks: leader}")
                .parse::<KafkaSinkConfig>("subscriptions[0].sink")
                .map(|_| ()),
        );
        for want in [
            "subscriptions[0].sink.topic",
            "subscriptions[0].sink.idempotence",
        ] {
            assert!(sink.contains(&want.to_owned()), "{want}: {sink:?}");
        }
    }
}
