//! The configuration document: plain serde structs, separate from the components they build.
//!
//! Loading goes YAML text → `serde_yaml::Value` → environment overrides (`EVMESH_A__B=v` sets
//! `a.b`) → typed structs → semantic checks. Errors carry their path in the document
//! (`subscriptions[2].delivery.backoffDelay: invalid ISO-8601 duration "5 s"`) and as many as can
//! be found are reported at once.
//!
//! This module knows the parts every component shares: the server's common settings, where
//! local state lives, subscriptions with their filters, transforms and delivery spec. Each
//! component (a sink, a source, an event log, a listener) is kept here as an opaque
//! [`ComponentSpec`] and checked by the component itself through the registry.

mod env;
mod error;
mod filter;
mod names;
mod subscription;

pub use env::{apply_env, is_override};
pub use error::{join, typed, ConfigError, ConfigErrors};
pub use filter::{
    FilterConfig, TemplateTransformConfig, TransformConfig, TransformerType, WasmPluginConfig,
};
pub use names::{validate_external_topic, validate_name, validate_topic};
pub use subscription::{
    check_subscription, BackoffPolicy, DeliverySpec, Ordering, StartPosition, SubscriptionConfig,
};

use crate::component::ComponentSpec;
use crate::duration::IsoDuration;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreSection,
    /// The default delivery spec of every subscription that has none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Inbound connectors that write what they read into evmesh topics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceSpec>,
    /// Traces (metrics are always on, at the admin API's `/metrics`).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `telemetry:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// `telemetry.tracing:` OpenTelemetry traces, exported over OTLP/HTTP (JSON); off without an
/// endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's traces URL, such as `http://127.0.0.1:4318/v1/traces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded (0.0-1.0); an incoming `traceparent` decides for its
    /// own trace.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            service_name: default_service_name(),
        }
    }
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "evmesh".into()
}

/// The server section: settings every listener shares, and each listener's own settings under
/// its name (`http: 127.0.0.1:10105`, `admin: …`), which the listener parses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight deliveries.
    #[serde(default = "default_shutdown")]
    pub shutdown_timeout: IsoDuration,
    /// Each listener's settings by its name; listeners not named run with their defaults.
    #[serde(flatten)]
    pub listeners: BTreeMap<String, Value>,
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
            max_body_bytes: default_max_body(),
            shutdown_timeout: default_shutdown(),
            listeners: BTreeMap::new(),
        }
    }
}

/// The store section: where local state lives (`dataDir`, every store kind has one) and the
/// event log, a component (`type: embedded` by default).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSection {
    /// The instance's local folder: state files, the plugin cache, and the embedded log.
    pub data_dir: PathBuf,
    pub log: ComponentSpec,
}

/// Where local state lives unless `store.dataDir` or `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./evmesh-data";

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log: ComponentSpec::new("embedded"),
        }
    }
}

impl Serialize for StoreSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = Mapping::new();
        m.insert("type".into(), self.log.kind.clone().into());
        m.insert(
            "dataDir".into(),
            self.data_dir.to_string_lossy().into_owned().into(),
        );
        for (k, v) in &self.log.settings {
            m.insert(k.clone(), v.clone());
        }
        m.serialize(s)
    }
}

impl<'de> Deserialize<'de> for StoreSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut m = Mapping::deserialize(d)?;
        let data_dir = match m.remove("dataDir") {
            None => PathBuf::from(DEFAULT_DATA_DIR),
            Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "dataDir must be a path, found {other:?}"
                )))
            }
        };
        let kind = match m.remove("type") {
            None => "embedded".to_owned(),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`type` must be a string, found {other:?}"
                )))
            }
        };
        Ok(StoreSection {
            data_dir,
            log: ComponentSpec { kind, settings: m },
        })
    }
}

/// A source as written: its name, and the component (`type:` plus its own keys).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    pub name: String,
    pub spec: ComponentSpec,
}

impl Serialize for SourceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = Mapping::new();
        m.insert("name".into(), self.name.clone().into());
        m.insert("type".into(), self.spec.kind.clone().into());
        for (k, v) in &self.spec.settings {
            m.insert(k.clone(), v.clone());
        }
        m.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SourceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut m = Mapping::deserialize(d)?;
        let name = match m.remove("name") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`name` must be a string, found {other:?}"
                )))
            }
            None => return Err(D::Error::custom("missing field `name`")),
        };
        let spec = ComponentSpec::deserialize(Value::Mapping(m)).map_err(D::Error::custom)?;
        Ok(SourceSpec { name, spec })
    }
}

/// Loads a configuration document, applying `EVMESH_*` overrides from `env`, and checks it.
pub fn load(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigErrors> {
    let cfg = parse(text, env)?;
    let errors = check(&cfg);
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads a configuration document into its types, applying `EVMESH_*` overrides from `env`,
/// without the semantic checks of [`check`] (so a caller can run them together with the
/// components' own checks and report everything at once).
pub fn parse(
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

/// Deserializes an already-parsed document (no semantic checks; see [`check`]).
pub fn from_value(root: Value) -> Result<Config, ConfigErrors> {
    match typed::<Config>(root.clone(), "") {
        Ok(cfg) => Ok(cfg),
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

const SECTIONS: &str = "server, store, delivery, subscriptions, sources, telemetry";

/// Deserializes the document piece by piece so that every broken piece is reported.
fn structural_errors(root: &Value) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let Some(map) = root.as_mapping() else {
        errors.push(ConfigError::new("", "the configuration must be a mapping"));
        return errors;
    };
    for (k, v) in map {
        let key = k.as_str().unwrap_or("?");
        match key {
            "server" => errors.extend(typed::<ServerConfig>(v.clone(), key).err()),
            "store" => errors.extend(typed::<StoreSection>(v.clone(), key).err()),
            "delivery" => errors.extend(typed::<DeliverySpec>(v.clone(), key).err()),
            "telemetry" => errors.extend(typed::<TelemetryConfig>(v.clone(), key).err()),
            "subscriptions" | "sources" => match v.as_sequence() {
                Some(seq) => {
                    for (i, item) in seq.iter().enumerate() {
                        let base = format!("{key}[{i}]");
                        if key == "sources" {
                            errors.extend(typed::<SourceSpec>(item.clone(), &base).err());
                        } else {
                            subscription_structural_errors(item, &base, &mut errors);
                        }
                    }
                }
                None => errors.push(ConfigError::new(key, format!("must be a list of {key}"))),
            },
            other => errors.push(ConfigError::new(
                other,
                format!("unknown key (known: {SECTIONS})"),
            )),
        }
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
            errors.extend(typed::<ComponentSpec>(s, &join(base, "sink")).err());
            true
        }
        None => false,
    };
    for (key, what) in [("filters", "filters"), ("transforms", "transforms")] {
        let Some(list) = rest.remove(key) else {
            continue;
        };
        match list.as_sequence() {
            Some(seq) => {
                for (i, item) in seq.iter().enumerate() {
                    let path = join(base, &format!("{key}[{i}]"));
                    let e = if key == "filters" {
                        typed::<FilterConfig>(item.clone(), &path).err()
                    } else {
                        typed::<TransformConfig>(item.clone(), &path).err()
                    };
                    errors.extend(e);
                }
            }
            None => errors.push(ConfigError::new(
                join(base, key),
                format!("must be a list of {what}"),
            )),
        }
    }
    // Check the remaining keys with a stand-in sink so that only their own errors show.
    rest.insert(
        Value::from("sink"),
        serde_yaml::to_value(ComponentSpec::new("stand-in")).unwrap_or(Value::Null),
    );
    if let Err(e) = typed::<SubscriptionConfig>(Value::Mapping(rest), base) {
        errors.push(e);
    }
    if !had_sink {
        errors.push(ConfigError::new(base, "missing field `sink`"));
    }
}

/// Semantic checks that serde cannot express, for the parts this module knows. Components
/// (sinks, sources, the log, listeners) are checked by their own code through the registry.
pub fn check(cfg: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if cfg.server.max_body_bytes == 0 {
        errors.push(ConfigError::new(
            "server.maxBodyBytes",
            "must be greater than 0",
        ));
    }
    let t = &cfg.telemetry.tracing;
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        errors.push(ConfigError::new(
            "telemetry.tracing.sampleRatio",
            format!("{} is not between 0.0 and 1.0", t.sample_ratio),
        ));
    }
    if let Some(url) = &t.otlp_endpoint {
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .map(|rest| rest.split('/').next().unwrap_or_default());
        if host.is_none_or(str::is_empty) || url.contains(char::is_whitespace) {
            errors.push(ConfigError::new(
                "telemetry.tracing.otlpEndpoint",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
    }
    if t.service_name.trim().is_empty() {
        errors.push(ConfigError::new(
            "telemetry.tracing.serviceName",
            "must not be empty",
        ));
    }
    let mut source_names: Vec<&str> = Vec::new();
    for (i, src) in cfg.sources.iter().enumerate() {
        let path = format!("sources[{i}].name");
        if let Err(e) = validate_name(&src.name) {
            errors.push(ConfigError::new(path.clone(), e));
        }
        if source_names.contains(&src.name.as_str()) {
            errors.push(ConfigError::new(
                path,
                format!("duplicate source name {:?}", src.name),
            ));
        }
        source_names.push(&src.name);
    }
    if let Some(d) = &cfg.delivery {
        subscription::check_delivery(d, "delivery", &mut errors);
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

#[cfg(test)]
mod tests;
