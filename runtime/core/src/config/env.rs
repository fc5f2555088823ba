//! Environment overrides: `EVMESH_SECTION__KEY=value` sets `section.key` before the document
//! is typed.

use super::ConfigError;
use serde_yaml::{Mapping, Value};

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
