//! The configuration model: plain serde structs, separate from the components they build.
//!
//! Loading goes YAML text → `serde_yaml::Value` → environment overrides (`EVMESH_A__B=v` sets
//! `a.b`) → typed structs → semantic checks. Errors carry their path in the document
//! (`subscriptions[2].delivery.backoffDelay: invalid ISO-8601 duration "5 s"`) and as many as can
//! be found are reported at once.

use crate::duration::IsoDuration;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// The default delivery spec of every subscription that has none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Inbound connectors that write what they read into evmesh topics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP ingest listener.
    #[serde(default = "default_http")]
    pub http: String,
    /// Address of the admin listener (subscriptions API, health).
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight deliveries.
    #[serde(default = "default_shutdown")]
    pub shutdown_timeout: IsoDuration,
}

fn default_http() -> String {
    "127.0.0.1:10105".into()
}
fn default_admin() -> String {
    "127.0.0.1:10106".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_shutdown() -> IsoDuration {
    IsoDuration(Duration::from_secs(30))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http: default_http(),
            admin: default_admin(),
            max_body_bytes: default_max_body(),
            shutdown_timeout: default_shutdown(),
        }
    }
}

/// Where events are kept. Closed set, tagged by `type:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StoreConfig {
    Embedded(EmbeddedStoreConfig),
    Kafka(KafkaStoreConfig),
}

impl StoreConfig {
    /// The local directory for state that is not events (plugin cache; and for the embedded
    /// store, everything).
    pub fn data_dir(&self) -> &Path {
        match self {
            StoreConfig::Embedded(c) => &c.data_dir,
            StoreConfig::Kafka(c) => &c.data_dir,
        }
    }

    pub fn set_data_dir(&mut self, dir: PathBuf) {
        match self {
            StoreConfig::Embedded(c) => c.data_dir = dir,
            StoreConfig::Kafka(c) => c.data_dir = dir,
        }
    }
}

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
    /// Local state that is not events: subscriptions made through the admin API, plugin cache.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
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

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded(EmbeddedStoreConfig::default())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddedStoreConfig {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// With `fsync: interval`, how often the log is flushed to disk.
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval: IsoDuration,
    /// A segment is closed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// The largest event (encoded) the log accepts; larger ones are refused (`413` on ingest;
    /// a reply or a source record over it is dead-lettered with the reason).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Fully acknowledged segments are kept at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<IsoDuration>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./evmesh-data")
}
fn default_fsync_interval() -> IsoDuration {
    IsoDuration(Duration::from_millis(10))
}
fn default_max_record_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        EmbeddedStoreConfig {
            data_dir: default_data_dir(),
            fsync: FsyncPolicy::default(),
            fsync_interval: default_fsync_interval(),
            segment_bytes: default_segment_bytes(),
            max_record_bytes: default_max_record_bytes(),
            retention: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync before the publisher gets its 202 (group-committed).
    #[default]
    Always,
    /// fsync every `fsyncInterval`; a power loss may lose the last interval.
    Interval,
    /// Leave flushing to the OS; survives a process crash, not a power loss.
    Never,
}

/// Knative's DeliverySpec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    /// Retries after the first attempt: attempts = 1 + retry.
    #[serde(default = "default_retry")]
    pub retry: u32,
    #[serde(default)]
    pub backoff_policy: BackoffPolicy,
    #[serde(default = "default_backoff_delay")]
    pub backoff_delay: IsoDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: IsoDuration,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout")]
    pub timeout: IsoDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<Box<SinkConfig>>,
}

fn default_retry() -> u32 {
    10
}
fn default_backoff_delay() -> IsoDuration {
    IsoDuration(Duration::from_millis(200))
}
fn default_backoff_max() -> IsoDuration {
    IsoDuration(Duration::from_secs(30))
}
fn default_timeout() -> IsoDuration {
    IsoDuration(Duration::from_secs(10))
}

impl Default for DeliverySpec {
    fn default() -> Self {
        DeliverySpec {
            retry: default_retry(),
            backoff_policy: BackoffPolicy::default(),
            backoff_delay: default_backoff_delay(),
            backoff_max: default_backoff_max(),
            timeout: default_timeout(),
            dead_letter_sink: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    #[default]
    Exponential,
    Linear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub name: String,
    pub topic: String,
    /// AND'ed; none means every event of the topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
    /// Applied in order to events that passed the filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<TransformConfig>,
    pub sink: SinkConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Topic that events returned by the sink are published to (default: `topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Deliveries of this subscription running at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub ordering: Ordering,
    /// Where a new subscription starts reading its topic.
    #[serde(default)]
    pub start: StartPosition,
}

fn default_max_in_flight() -> usize {
    64
}

impl SubscriptionConfig {
    /// A subscription with every optional setting at its default (no filters, no transforms,
    /// the default delivery), for code that builds subscriptions rather than reading YAML.
    pub fn new(name: impl Into<String>, topic: impl Into<String>, sink: SinkConfig) -> Self {
        SubscriptionConfig {
            name: name.into(),
            topic: topic.into(),
            filters: Vec::new(),
            transforms: Vec::new(),
            sink,
            delivery: None,
            reply: None,
            max_in_flight: default_max_in_flight(),
            ordering: Ordering::default(),
            start: StartPosition::default(),
        }
    }
}

impl SinkConfig {
    /// A binary-mode webhook sink.
    pub fn webhook(url: impl Into<String>) -> Self {
        SinkConfig::Webhook(WebhookSinkConfig {
            url: url.into(),
            mode: HttpMode::Binary,
            headers: BTreeMap::new(),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Deliveries run concurrently with no order guarantee.
    #[default]
    None,
    /// Events with the same `partitionkey` are delivered one at a time, in log order.
    Key,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// Only events published after the subscription was created.
    #[default]
    Latest,
    /// Everything still in the log.
    Earliest,
}

/// The CloudEvents Subscriptions API filter dialects. Written as a one-key mapping
/// (`exact: {type: x}`), in YAML and JSON alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterConfig {
    Exact(BTreeMap<String, String>),
    Prefix(BTreeMap<String, String>),
    Suffix(BTreeMap<String, String>),
    All(Vec<FilterConfig>),
    Any(Vec<FilterConfig>),
    Not(Box<FilterConfig>),
    /// A CloudEvents SQL (CESQL v1) expression.
    Cesql(String),
    /// An EventBridge-style JSON event pattern.
    Pattern(serde_json::Value),
    /// A WASM filter plugin (top level of `filters:` only).
    Wasm(WasmPluginConfig),
}

/// A WASM plugin: the component file, its parameters and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct WasmPluginConfig {
    /// Path of the `.wasm` component (relative to the working directory).
    pub uses: PathBuf,
    /// Parameters handed to the plugin's `init`.
    #[serde(default, rename = "with", skip_serializing_if = "BTreeMap::is_empty")]
    pub with: BTreeMap<String, String>,
    /// Largest linear memory, in bytes (default 64 MiB).
    #[serde(default = "default_plugin_memory")]
    pub max_memory: usize,
    /// Longest one batch may run (default PT0.1S).
    #[serde(default = "default_plugin_timeout")]
    pub timeout: IsoDuration,
}

fn default_plugin_memory() -> usize {
    64 * 1024 * 1024
}
fn default_plugin_timeout() -> IsoDuration {
    IsoDuration(Duration::from_millis(100))
}

const FILTER_DIALECTS: &[&str] = &[
    "exact", "prefix", "suffix", "all", "any", "not", "cesql", "pattern",
];

impl<'de> Deserialize<'de> for FilterConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FilterConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a filter: a mapping with one key out of {}",
                    FILTER_DIALECTS.join(", ")
                )
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<FilterConfig, M::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(M::Error::custom(format!(
                        "empty filter: expected one of {}",
                        FILTER_DIALECTS.join(", ")
                    )));
                };
                let f = match key.as_str() {
                    "exact" => FilterConfig::Exact(map.next_value()?),
                    "prefix" => FilterConfig::Prefix(map.next_value()?),
                    "suffix" => FilterConfig::Suffix(map.next_value()?),
                    "all" => FilterConfig::All(map.next_value()?),
                    "any" => FilterConfig::Any(map.next_value()?),
                    "not" => FilterConfig::Not(map.next_value()?),
                    "cesql" => FilterConfig::Cesql(map.next_value()?),
                    "pattern" => FilterConfig::Pattern(map.next_value()?),
                    "wasm" => FilterConfig::Wasm(map.next_value()?),
                    other => {
                        return Err(M::Error::custom(format!(
                            "unknown filter dialect {other:?} (known: {})",
                            FILTER_DIALECTS.join(", ")
                        )))
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(M::Error::custom(format!(
                        "a filter has exactly one dialect key; found {key:?} and {extra:?} (combine them with all: [...])"
                    )));
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

/// A step applied, in order, to each event that passed the filters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransformConfig {
    /// Apache EventMesh's transformer: the output becomes the event's data.
    Template(TemplateTransformConfig),
    /// Sets attributes or extensions; a value starting with `$` is a JSONPath into the event.
    Set(BTreeMap<String, String>),
    /// Removes extensions (or the optional attributes `subject`, `dataschema`, `time`).
    Remove(Vec<String>),
    /// A WASM transform plugin.
    Wasm(WasmPluginConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateTransformConfig {
    #[serde(default)]
    pub transformer_type: TransformerType,
    /// `constant`: the output; `template`: a map of names to JSONPath expressions or literals
    /// (a JSON object, or a string holding one, as EventMesh writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// `template`: text with `${name}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransformerType {
    /// The data is left as it is.
    Original,
    /// The data becomes `value`.
    Constant,
    /// The data becomes `template` with `${name}` filled from `value`'s JSONPaths.
    #[default]
    Template,
}

const TRANSFORMS: &[&str] = &["template", "set", "remove", "wasm"];

impl<'de> Deserialize<'de> for TransformConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TransformConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a transform: a mapping with one key out of {}",
                    TRANSFORMS.join(", ")
                )
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<TransformConfig, M::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(M::Error::custom(format!(
                        "empty transform: expected one of {}",
                        TRANSFORMS.join(", ")
                    )));
                };
                let t = match key.as_str() {
                    "template" => TransformConfig::Template(map.next_value()?),
                    "set" => TransformConfig::Set(map.next_value()?),
                    "remove" => TransformConfig::Remove(map.next_value()?),
                    "wasm" => TransformConfig::Wasm(map.next_value()?),
                    other => {
                        return Err(M::Error::custom(format!(
                            "unknown transform {other:?} (known: {})",
                            TRANSFORMS.join(", ")
                        )))
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(M::Error::custom(format!(
                        "a transform has exactly one key; found {key:?} and {extra:?} (list them as separate steps)"
                    )));
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

/// Where a subscription's events go. Closed set, tagged by `type:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    Webhook(WebhookSinkConfig),
    Kafka(KafkaSinkConfig),
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook(_) => "webhook",
            SinkConfig::Kafka(_) => "kafka",
        }
    }
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

/// An inbound connector. Closed set, tagged by `type:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Kafka(KafkaSourceConfig),
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Kafka(k) => &k.name,
        }
    }
}

/// Consumes Kafka records into an evmesh topic; offsets are committed only after the events
/// are durably stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSourceConfig {
    pub name: String,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSinkConfig {
    pub url: String,
    #[serde(default)]
    pub mode: HttpMode,
    /// Extra headers sent with every request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    #[default]
    Binary,
    Structured,
}

/// One configuration problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// All the problems found in one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Loads a configuration document, applying `EVMESH_*` overrides from `env`.
pub fn load(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let mut root: Value = if text.trim().is_empty() {
        Value::Mapping(Mapping::new())
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| ConfigErrors(vec![ConfigError::new("", format!("invalid YAML: {e}"))]))?
    };
    if root.is_null() {
        root = Value::Mapping(Mapping::new());
    }
    apply_env(&mut root, env).map_err(|e| ConfigErrors(vec![e]))?;
    from_value(root)
}

/// Deserializes and checks an already-parsed document.
pub fn from_value(mut root: Value) -> Result<Config, ConfigErrors> {
    if let Some(store) = root.get_mut("store").and_then(Value::as_mapping_mut) {
        store
            .entry(Value::from("type"))
            .or_insert_with(|| Value::from("embedded"));
    }
    match typed::<Config>(root.clone(), "") {
        Ok(cfg) => {
            let errors = check(&cfg);
            if errors.is_empty() {
                Ok(cfg)
            } else {
                Err(ConfigErrors(errors))
            }
        }
        Err(first) => {
            let mut errors = structural_errors(&root);
            if errors.is_empty() {
                errors.push(first);
            }
            Err(ConfigErrors(errors))
        }
    }
}

/// Parses one subscription (the admin API's PUT body) and checks it.
pub fn subscription_from_value(v: Value) -> Result<SubscriptionConfig, ConfigErrors> {
    let sub = typed::<SubscriptionConfig>(v.clone(), "").map_err(|first| {
        let mut errors = Vec::new();
        subscription_structural_errors(&v, "", &mut errors);
        if errors.is_empty() {
            errors.push(first);
        }
        ConfigErrors(errors)
    })?;
    let mut errors = Vec::new();
    check_subscription(&sub, "", &mut errors);
    if errors.is_empty() {
        Ok(sub)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (false, true) => base.to_owned(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        (false, false) => format!("{base}.{rest}"),
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: Value, base: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(join(base, &path), e.into_inner().to_string())
    })
}

/// Deserializes the document piece by piece so that every broken piece is reported.
fn structural_errors(root: &Value) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let Some(map) = root.as_mapping() else {
        errors.push(ConfigError::new("", "the configuration must be a mapping"));
        return errors;
    };
    for (k, v) in map {
        let key = k.as_str().unwrap_or("?");
        let r = match key {
            "server" => typed::<ServerConfig>(v.clone(), key).err(),
            "store" => typed::<StoreConfig>(v.clone(), key).err(),
            "delivery" => typed::<DeliverySpec>(v.clone(), key).err(),
            "subscriptions" => match v.as_sequence() {
                Some(seq) => {
                    for (i, s) in seq.iter().enumerate() {
                        subscription_structural_errors(
                            s,
                            &format!("subscriptions[{i}]"),
                            &mut errors,
                        );
                    }
                    None
                }
                None => Some(ConfigError::new(key, "must be a list of subscriptions")),
            },
            other => Some(ConfigError::new(
                other,
                "unknown key (known: server, store, delivery, subscriptions)",
            )),
        };
        errors.extend(r);
    }
    errors
}

fn subscription_structural_errors(v: &Value, base: &str, errors: &mut Vec<ConfigError>) {
    let Some(map) = v.as_mapping() else {
        errors.push(ConfigError::new(base, "a subscription must be a mapping"));
        return;
    };
    let mut rest = map.clone();
    if let Some(d) = rest.remove("delivery") {
        errors.extend(typed::<DeliverySpec>(d, &join(base, "delivery")).err());
    }
    let had_sink = match rest.remove("sink") {
        Some(s) => {
            errors.extend(typed::<SinkConfig>(s, &join(base, "sink")).err());
            true
        }
        None => false,
    };
    if let Some(f) = rest.remove("filters") {
        match f.as_sequence() {
            Some(seq) => {
                for (i, item) in seq.iter().enumerate() {
                    errors.extend(
                        typed::<FilterConfig>(item.clone(), &join(base, &format!("filters[{i}]")))
                            .err(),
                    );
                }
            }
            None => errors.push(ConfigError::new(
                join(base, "filters"),
                "must be a list of filters",
            )),
        }
    }
    if let Some(t) = rest.remove("transforms") {
        match t.as_sequence() {
            Some(seq) => {
                for (i, item) in seq.iter().enumerate() {
                    errors.extend(
                        typed::<TransformConfig>(
                            item.clone(),
                            &join(base, &format!("transforms[{i}]")),
                        )
                        .err(),
                    );
                }
            }
            None => errors.push(ConfigError::new(
                join(base, "transforms"),
                "must be a list of transforms",
            )),
        }
    }
    // Check the remaining keys with a stand-in sink so that only their own errors show.
    rest.insert(
        Value::from("sink"),
        serde_yaml::from_str("{type: webhook, url: 'http://127.0.0.1/'}").unwrap_or(Value::Null),
    );
    if let Err(e) = typed::<SubscriptionConfig>(Value::Mapping(rest), base) {
        errors.push(e);
    }
    if !had_sink {
        errors.push(ConfigError::new(base, "missing field `sink`"));
    }
}

/// Semantic checks that serde cannot express.
pub fn check(cfg: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if cfg.server.max_body_bytes == 0 {
        errors.push(ConfigError::new(
            "server.maxBodyBytes",
            "must be greater than 0",
        ));
    }
    for (path, addr) in [
        ("server.http", &cfg.server.http),
        ("server.admin", &cfg.server.admin),
    ] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            errors.push(ConfigError::new(
                path,
                format!(
                    "invalid listen address {addr:?} (expected IP:PORT such as 127.0.0.1:10105)"
                ),
            ));
        }
    }
    match &cfg.store {
        StoreConfig::Embedded(store) => {
            if store.segment_bytes < 4096 {
                errors.push(ConfigError::new(
                    "store.segmentBytes",
                    "must be at least 4096",
                ));
            }
            if !(256..=64 * 1024 * 1024).contains(&store.max_record_bytes) {
                errors.push(ConfigError::new(
                    "store.maxRecordBytes",
                    "must be between 256 and 67108864 (64 MiB)",
                ));
            }
        }
        StoreConfig::Kafka(k) => {
            check_brokers(&k.brokers, "store.brokers", &mut errors);
            if k.partitions < 1 {
                errors.push(ConfigError::new("store.partitions", "must be at least 1"));
            }
            if k.replication_factor < 1 {
                errors.push(ConfigError::new(
                    "store.replicationFactor",
                    "must be at least 1",
                ));
            }
            for (path, prefix) in [
                ("store.topicPrefix", &k.topic_prefix),
                ("store.groupPrefix", &k.group_prefix),
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
            if k.session_timeout.0 < Duration::from_secs(1) {
                errors.push(ConfigError::new(
                    "store.sessionTimeout",
                    "must be at least PT1S",
                ));
            }
        }
    }
    let mut source_names: Vec<&str> = Vec::new();
    for (i, src) in cfg.sources.iter().enumerate() {
        let base = format!("sources[{i}]");
        if source_names.contains(&src.name()) {
            errors.push(ConfigError::new(
                join(&base, "name"),
                format!("duplicate source name {:?}", src.name()),
            ));
        }
        source_names.push(src.name());
        check_source(src, &base, &mut errors);
    }
    if let Some(d) = &cfg.delivery {
        check_delivery(d, "delivery", &mut errors);
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in cfg.subscriptions.iter().enumerate() {
        let base = format!("subscriptions[{i}]");
        if names.contains(&s.name.as_str()) {
            errors.push(ConfigError::new(
                join(&base, "name"),
                format!("duplicate subscription name {:?}", s.name),
            ));
        }
        names.push(&s.name);
        check_subscription(s, &base, &mut errors);
    }
    errors
}

/// Checks one subscription; `base` is its path in the document.
pub fn check_subscription(s: &SubscriptionConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if let Err(e) = validate_name(&s.name) {
        errors.push(ConfigError::new(join(base, "name"), e));
    }
    if let Err(e) = validate_topic(&s.topic) {
        errors.push(ConfigError::new(join(base, "topic"), e));
    }
    if let Some(r) = &s.reply {
        if let Err(e) = validate_topic(r) {
            errors.push(ConfigError::new(join(base, "reply"), e));
        }
    }
    if s.max_in_flight == 0 || s.max_in_flight > 10_000 {
        errors.push(ConfigError::new(
            join(base, "maxInFlight"),
            "must be between 1 and 10000",
        ));
    }
    for (i, f) in s.filters.iter().enumerate() {
        check_filter(f, &join(base, &format!("filters[{i}]")), errors);
    }
    check_sink(&s.sink, &join(base, "sink"), errors);
    if let Some(d) = &s.delivery {
        check_delivery(d, &join(base, "delivery"), errors);
    }
}

fn check_delivery(d: &DeliverySpec, base: &str, errors: &mut Vec<ConfigError>) {
    if d.backoff_delay.0.is_zero() {
        errors.push(ConfigError::new(
            join(base, "backoffDelay"),
            "must be greater than zero",
        ));
    }
    if d.backoff_max.0 < d.backoff_delay.0 {
        errors.push(ConfigError::new(
            join(base, "backoffMax"),
            format!(
                "{} is shorter than backoffDelay {}",
                d.backoff_max, d.backoff_delay
            ),
        ));
    }
    if d.timeout.0.is_zero() {
        errors.push(ConfigError::new(
            join(base, "timeout"),
            "must be greater than zero",
        ));
    }
    if let Some(dls) = &d.dead_letter_sink {
        check_sink(dls, &join(base, "deadLetterSink"), errors);
    }
}

fn check_sink(s: &SinkConfig, base: &str, errors: &mut Vec<ConfigError>) {
    match s {
        SinkConfig::Webhook(w) => {
            if let Err(e) = validate_http_url(&w.url) {
                errors.push(ConfigError::new(join(base, "url"), e));
            }
            for name in w.headers.keys() {
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if !ok {
                    errors.push(ConfigError::new(
                        join(base, &format!("headers.{name}")),
                        "invalid HTTP header name",
                    ));
                }
            }
        }
        SinkConfig::Kafka(k) => {
            check_brokers(&k.brokers, &join(base, "brokers"), errors);
            check_kafka_topic(&k.topic, &join(base, "topic"), errors);
            if k.idempotence && k.acks != KafkaAcks::All {
                errors.push(ConfigError::new(
                    join(base, "idempotence"),
                    "the idempotent producer needs acks: all (or set idempotence: false)",
                ));
            }
            if crate::event::validate_extension_name(&k.key).is_err() {
                errors.push(ConfigError::new(
                    join(base, "key"),
                    format!("{:?} is not an attribute name", k.key),
                ));
            }
        }
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

/// A Kafka topic evmesh reads or writes directly (not through its own naming).
fn check_kafka_topic(topic: &str, path: &str, errors: &mut Vec<ConfigError>) {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        errors.push(ConfigError::new(
            path,
            format!("{topic:?} is not a valid Kafka topic name (1-249 of letters, digits, '.', '_', '-')"),
        ));
    }
}

fn check_source(s: &SourceConfig, base: &str, errors: &mut Vec<ConfigError>) {
    match s {
        SourceConfig::Kafka(k) => {
            if let Err(e) = validate_name(&k.name) {
                errors.push(ConfigError::new(join(base, "name"), e));
            }
            check_brokers(&k.brokers, &join(base, "brokers"), errors);
            if k.topics.is_empty() {
                errors.push(ConfigError::new(
                    join(base, "topics"),
                    "name at least one Kafka topic",
                ));
            }
            for (i, t) in k.topics.iter().enumerate() {
                check_kafka_topic(t, &join(base, &format!("topics[{i}]")), errors);
            }
            if k.group.trim().is_empty() {
                errors.push(ConfigError::new(join(base, "group"), "must not be empty"));
            }
            if let Err(e) = validate_topic(&k.into) {
                errors.push(ConfigError::new(join(base, "into"), e));
            }
        }
    }
}

fn check_filter(f: &FilterConfig, base: &str, errors: &mut Vec<ConfigError>) {
    match f {
        FilterConfig::Exact(m) | FilterConfig::Prefix(m) | FilterConfig::Suffix(m) => {
            let dialect = match f {
                FilterConfig::Exact(_) => "exact",
                FilterConfig::Prefix(_) => "prefix",
                _ => "suffix",
            };
            if m.is_empty() {
                errors.push(ConfigError::new(
                    join(base, dialect),
                    "needs at least one attribute",
                ));
            }
            for (attr, value) in m {
                if attr.is_empty()
                    || !attr
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    errors.push(ConfigError::new(
                        join(base, &format!("{dialect}.{attr}")),
                        "attribute names are lower-case letters and digits",
                    ));
                }
                if dialect != "exact" && value.is_empty() {
                    errors.push(ConfigError::new(
                        join(base, &format!("{dialect}.{attr}")),
                        format!("an empty {dialect} matches everything; remove the filter instead"),
                    ));
                }
            }
        }
        FilterConfig::All(v) | FilterConfig::Any(v) => {
            let dialect = if matches!(f, FilterConfig::All(_)) {
                "all"
            } else {
                "any"
            };
            if v.is_empty() {
                errors.push(ConfigError::new(
                    join(base, dialect),
                    "needs at least one filter",
                ));
            }
            for (i, inner) in v.iter().enumerate() {
                check_filter(inner, &join(base, &format!("{dialect}[{i}]")), errors);
            }
        }
        FilterConfig::Not(inner) => check_filter(inner, &join(base, "not"), errors),
        FilterConfig::Cesql(expr) => {
            if expr.trim().is_empty() {
                errors.push(ConfigError::new(join(base, "cesql"), "empty expression"));
            }
        }
        FilterConfig::Pattern(p) => {
            if !p.is_object() {
                errors.push(ConfigError::new(
                    join(base, "pattern"),
                    "a pattern must be a mapping",
                ));
            }
        }
        FilterConfig::Wasm(w) => check_plugin(w, &join(base, "wasm"), errors),
    }
}

fn check_plugin(w: &WasmPluginConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if w.max_memory < 64 * 1024 {
        errors.push(ConfigError::new(
            join(base, "max_memory"),
            "must be at least 65536 (one WASM page)",
        ));
    }
    if w.timeout.0.is_zero() {
        errors.push(ConfigError::new(
            join(base, "timeout"),
            "must be greater than zero",
        ));
    }
}

/// Subscription and source names: 1-128 of `a-z A-Z 0-9 . _ -`, not `.` or `..` (names become
/// folder and topic names).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Where a source keeps the records the store refused (with the reason).
pub fn source_dlq_topic(source: &str) -> String {
    format!("__sourcedlq.{source}")
}

/// Topic names follow Kafka's rules: 1-249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`; names
/// starting with `__` are evmesh's own.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err("a topic name must be 1 to 249 characters".into());
    }
    if topic == "." || topic == ".." {
        return Err(format!("{topic:?} is not a valid topic name"));
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "topic {topic:?} may only contain letters, digits, '.', '_' and '-'"
        ));
    }
    if topic.starts_with("__") {
        return Err(format!(
            "topic {topic:?}: names starting with \"__\" are reserved for evmesh"
        ));
    }
    Ok(())
}

/// A webhook target: `http://host[:port][/path]`.
pub fn validate_http_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https webhooks are not supported yet (TLS arrives with the security work); use http://"
        ));
    } else {
        return Err(format!("{url:?} is not an http:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{url:?}: credentials in the URL are not supported; use headers"
        ));
    }
    if url
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("{url:?} contains whitespace"));
    }
    Ok(())
}

/// Whether an environment variable is a config override: `EVMESH_` followed by a path of at
/// least two levels joined by `__` (`EVMESH_SERVER__HTTP`). Others are not config paths and are
/// left alone: Kubernetes sets `EVMESH_PORT`, `EVMESH_SERVICE_HOST`, `EVMESH_PORT_10105_TCP`…
/// for a Service named `evmesh`, and its generated names never hold `__` (port names may not
/// repeat a hyphen).
pub fn is_override(name: &str) -> bool {
    name.strip_prefix("EVMESH_")
        .is_some_and(|rest| rest.contains("__"))
}

/// Applies `EVMESH_SECTION__KEY=value` overrides. Each `__`-separated segment names a key
/// (matched case-insensitively, ignoring `_` and `-`, so `MAX_BODY_BYTES` is `maxBodyBytes`)
/// or a list index; the value is read as a YAML scalar. Variables that are not overrides (see
/// [`is_override`]) are ignored.
pub fn apply_env(
    root: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env.into_iter().filter(|(k, _)| is_override(k)).collect();
    vars.sort();
    for (key, value) in vars {
        let segments: Vec<&str> = key["EVMESH_".len()..].split("__").collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::new(
                key.clone(),
                "empty segment in environment override (use __ between keys)",
            ));
        }
        let parsed: Value = serde_yaml::from_str(&value).unwrap_or(Value::String(value.clone()));
        let parsed = if parsed.is_null() && !value.trim().is_empty() && value.trim() != "null" {
            Value::String(value.clone())
        } else {
            parsed
        };
        set_path(root, &segments, parsed).map_err(|m| ConfigError::new(key.clone(), m))?;
    }
    Ok(())
}

fn normalize(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn camel(segment: &str) -> String {
    let mut out = String::new();
    for (i, part) in segment.split('_').filter(|p| !p.is_empty()).enumerate() {
        let lower = part.to_lowercase();
        if i == 0 {
            out.push_str(&lower);
        } else {
            let mut cs = lower.chars();
            if let Some(c) = cs.next() {
                out.extend(c.to_uppercase());
                out.push_str(cs.as_str());
            }
        }
    }
    out
}

fn set_path(node: &mut Value, segments: &[&str], value: Value) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        *node = value;
        return Ok(());
    };
    if node.is_null() {
        *node = if first.parse::<usize>().is_ok() {
            Value::Sequence(Vec::new())
        } else {
            Value::Mapping(Mapping::new())
        };
    }
    match node {
        Value::Sequence(seq) => {
            let idx: usize = first
                .parse()
                .map_err(|_| format!("{first:?} is not a list index"))?;
            if idx > seq.len() {
                return Err(format!(
                    "index {idx} is past the end of a list of {} items",
                    seq.len()
                ));
            }
            if idx == seq.len() {
                seq.push(Value::Null);
            }
            set_path(&mut seq[idx], rest, value)
        }
        Value::Mapping(map) => {
            let wanted = normalize(first);
            let existing = map
                .keys()
                .find(|k| k.as_str().map(normalize).as_deref() == Some(wanted.as_str()))
                .cloned();
            let key = existing.unwrap_or_else(|| Value::from(camel(first)));
            let slot = map.entry(key).or_insert(Value::Null);
            set_path(slot, rest, value)
        }
        _ => Err(format!("cannot set {first:?} inside a scalar value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_document_gives_defaults() {
        let cfg = load("", env(&[])).unwrap();
        assert_eq!(cfg.server.http, "127.0.0.1:10105");
        assert_eq!(cfg.server.admin, "127.0.0.1:10106");
    }

    #[test]
    fn env_overrides_nested_keys() {
        let cfg = load(
            "server: {maxBodyBytes: 10}",
            env(&[
                ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
                ("EVMESH_SERVER__MAX_BODY_BYTES", "2048"),
                ("EVMESH_STORE__FSYNC", "never"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.server.http, "127.0.0.1:0");
        assert_eq!(cfg.server.max_body_bytes, 2048);
        let StoreConfig::Embedded(s) = cfg.store else {
            panic!("the default store is embedded")
        };
        assert_eq!(s.fsync, FsyncPolicy::Never);
    }

    #[test]
    fn kubernetes_service_variables_are_not_config_paths() {
        let cfg = load(
            "",
            env(&[
                ("EVMESH_PORT", "tcp://10.0.0.7:10105"),
                ("EVMESH_PORT_10105_TCP_ADDR", "10.0.0.7"),
                ("EVMESH_SERVICE_HOST", "10.0.0.7"),
                ("EVMESH_SERVICE_PORT_HTTP", "10105"),
                ("EVMESH_SERVER__HTTP", "127.0.0.1:1"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.server.http, "127.0.0.1:1");
        // A real override with a typo still fails loudly.
        let err = load("", env(&[("EVMESH_SERVER__HTP", "x")])).unwrap_err();
        assert!(err.to_string().contains("htp"), "{err}");
    }

    #[test]
    fn kafka_store_sink_and_source_parse_with_defaults() {
        let text = r#"
store: { type: kafka, brokers: "127.0.0.1:9092" }
sources:
  - { name: in, type: kafka, brokers: "k1:9092,k2:9092", topics: [orders], group: g, into: orders }
subscriptions:
  - name: out
    topic: orders
    sink: { type: kafka, brokers: "127.0.0.1:9092", topic: copy, mode: structured }
"#;
        let cfg = load(text, Vec::new()).unwrap();
        let StoreConfig::Kafka(k) = &cfg.store else {
            panic!("kafka store")
        };
        assert_eq!(k.topic_prefix, "evmesh.");
        assert_eq!(k.partitions, 3);
        let SinkConfig::Kafka(sink) = &cfg.subscriptions[0].sink else {
            panic!("kafka sink")
        };
        assert_eq!(sink.key, "partitionkey");
        assert_eq!(sink.acks, KafkaAcks::All);
        assert!(sink.idempotence);
        assert_eq!(sink.mode, KafkaMode::Structured);
        let SourceConfig::Kafka(src) = &cfg.sources[0];
        assert_eq!(src.start, StartPosition::Latest);
        assert_eq!(src.record_type, "dev.evmesh.kafka.record");
    }

    #[test]
    fn kafka_config_errors_name_the_field() {
        let text = r#"
store: { type: kafka, brokers: "nohost", partitions: 0 }
sources:
  - { name: in, type: kafka, brokers: "k:9092", topics: [], group: "", into: "__x" }
subscriptions:
  - name: out
    topic: orders
    sink: { type: kafka, brokers: "k:9092", topic: "bad topic", acks: leader }
"#;
        let err = load(text, Vec::new()).unwrap_err().to_string();
        for want in [
            "store.brokers",
            "store.partitions",
            "sources[0].topics",
            "sources[0].group",
            "sources[0].into",
            "subscriptions[0].sink.topic",
            "subscriptions[0].sink.idempotence",
        ] {
            assert!(err.contains(want), "{want} missing from:\n{err}");
        }
    }

    #[test]
    fn full_subscription_example_parses() {
        let text = r#"
subscriptions:
  - name: audit
    topic: orders
    filters:
      - exact:  { type: com.example.order.created }
      - prefix: { source: "shop/" }
      - any:    [ { suffix: { subject: ".pdf" } }, { exact: { subject: "x" } } ]
      - not:    { exact: { datacontenttype: text/plain } }
    sink:
      type: webhook
      url: http://127.0.0.1:8080/hook
      mode: binary
    delivery:
      retry: 5
      backoffPolicy: exponential
      backoffDelay: PT0.2S
      backoffMax: PT30S
      timeout: PT5S
      deadLetterSink: { type: webhook, url: http://127.0.0.1:8081/dlq }
"#;
        let cfg = load(text, env(&[])).unwrap();
        let s = &cfg.subscriptions[0];
        assert_eq!(s.filters.len(), 4);
        assert_eq!(s.delivery.as_ref().unwrap().retry, 5);
        assert!(matches!(s.filters[2], FilterConfig::Any(ref v) if v.len() == 2));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
subscriptions:
  - name: a
    topic: t
    sink: { type: webhook, url: http://x/ }
  - name: b
    topic: t
    sink: { type: webhok, url: http://x/ }
  - name: c
    topic: t
    sink: { type: webhook, url: http://x/ }
    delivery: { backoffDelay: "5 s" }
"#;
        let errs = load(text, env(&[])).unwrap_err().0;
        let rendered: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            rendered.iter().any(|e| e
                == "subscriptions[2].delivery.backoffDelay: invalid ISO-8601 duration \"5 s\""),
            "{rendered:?}"
        );
        assert!(
            rendered
                .iter()
                .any(|e| e.starts_with("subscriptions[1].sink")),
            "{rendered:?}"
        );
    }

    #[test]
    fn semantic_errors_are_all_collected() {
        let text = r#"
subscriptions:
  - name: a
    topic: "bad topic"
    sink: { type: webhook, url: "ftp://x" }
  - name: a
    topic: t
    sink: { type: webhook, url: http://x/ }
"#;
        let errs = load(text, env(&[])).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"subscriptions[0].topic"), "{paths:?}");
        assert!(paths.contains(&"subscriptions[0].sink.url"), "{paths:?}");
        assert!(paths.contains(&"subscriptions[1].name"), "{paths:?}");
    }

    #[test]
    fn names_that_are_not_one_safe_path_component_are_refused() {
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a.b", "...", "A-b_9"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let errs = load("server: {htp: x}", env(&[])).unwrap_err().0;
        assert!(errs[0].to_string().contains("htp"), "{errs:?}");
    }
}
