//! The filter dialects and transforms of a subscription, as written in the document.

use super::{join, ConfigError};
use crate::duration::IsoDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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

pub(crate) fn check_filter(f: &FilterConfig, base: &str, errors: &mut Vec<ConfigError>) {
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
