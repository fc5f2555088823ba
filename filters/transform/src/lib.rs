//! Built-in transforms: Apache EventMesh's `template` transformer, and `set` / `remove` of
//! attributes and extensions.
//!
//! JSONPath expressions address the event in its JSON format: `$.id`, `$.source`, `$.myext`,
//! `$.data.order.total`, `$.data.lines[0].sku`, `$['data']['a b']`. Only plain member and index
//! steps are supported; anything else is refused when the configuration is loaded.

use bytes::Bytes;
use evmesh_core::config::{TemplateTransformConfig, TransformConfig, TransformerType};
use evmesh_core::format::{encode_structured, is_json_content_type};
use evmesh_core::transform::{Transform, TransformError};
use evmesh_core::{Data, DataKind, Event, ExtValue};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    pub path: String,
    pub message: String,
}

fn cerr(path: &str, message: impl Into<String>) -> CompileError {
    CompileError {
        path: path.to_owned(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A compiled JSONPath.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let mut rest = text
            .strip_prefix('$')
            .ok_or_else(|| format!("{text:?}: a JSONPath starts with $"))?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let key = &r[..end];
                if key.is_empty() || key == "*" {
                    return Err(format!(
                        "{text:?}: only plain member names are supported after '.'"
                    ));
                }
                steps.push(Step::Key(key.to_owned()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r
                    .find(']')
                    .ok_or_else(|| format!("{text:?}: unclosed '['"))?;
                let inner = r[..end].trim();
                if let Some(q) = inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                    steps.push(Step::Key(q.to_owned()));
                } else if let Some(q) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    steps.push(Step::Key(q.to_owned()));
                } else if let Ok(i) = inner.parse::<usize>() {
                    steps.push(Step::Index(i));
                } else {
                    return Err(format!(
                        "{text:?}: unsupported selector [{inner}] (use a name or an index)"
                    ));
                }
                rest = &r[end + 1..];
            } else {
                return Err(format!("{text:?}: expected '.' or '[' at {rest:?}"));
            }
        }
        Ok(JsonPath {
            text: text.to_owned(),
            steps,
        })
    }

    pub fn select<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        let mut cur = v;
        for s in &self.steps {
            cur = match (s, cur) {
                (Step::Key(k), Value::Object(m)) => m.get(k)?,
                (Step::Index(i), Value::Array(a)) => a.get(*i)?,
                _ => return None,
            };
        }
        Some(cur)
    }

    fn reads_data(&self) -> bool {
        matches!(self.steps.first(), Some(Step::Key(k)) if k == "data")
    }
}

/// The event as JSON, as JSONPath sees it. `data` is the JSON value when the data is JSON.
fn event_json(e: &Event) -> Result<Value, TransformError> {
    let mut buf = Vec::new();
    encode_structured(e, &mut buf);
    serde_json::from_slice(&buf).map_err(|err| TransformError(format!("event as JSON: {err}")))
}

fn data_is_json(e: &Event) -> bool {
    match &e.data {
        None => false,
        Some(d) if d.kind == DataKind::Json => true,
        Some(d) => {
            e.datacontenttype
                .as_deref()
                .is_some_and(is_json_content_type)
                && serde_json::from_slice::<Value>(&d.bytes).is_ok()
        }
    }
}

/// A name's source: a JSONPath, or a literal.
#[derive(Debug, Clone)]
enum Source {
    Path(JsonPath),
    Literal(Value),
}

fn source(v: &Value, path: &str) -> Result<Source, CompileError> {
    match v {
        Value::String(s) if s.starts_with('$') => JsonPath::parse(s)
            .map(Source::Path)
            .map_err(|m| cerr(path, m)),
        other => Ok(Source::Literal(other.clone())),
    }
}

fn needs_data(sources: &[&Source]) -> bool {
    sources
        .iter()
        .any(|s| matches!(s, Source::Path(p) if p.reads_data()))
}

fn resolve<'a>(s: &'a Source, root: &'a Value) -> Option<&'a Value> {
    match s {
        Source::Path(p) => p.select(root),
        Source::Literal(v) => Some(v),
    }
}

fn check_data(e: &Event, sources: &[&Source]) -> Result<(), TransformError> {
    if needs_data(sources) && !data_is_json(e) {
        return Err(TransformError(
            "the event's data is not JSON, so $.data paths cannot be evaluated".into(),
        ));
    }
    Ok(())
}

/// Renders a selected value into template text.
fn render(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "null".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

enum Part {
    Text(String),
    Var(String),
}

pub struct TemplateTransform {
    ty: TransformerType,
    constant: Option<Value>,
    names: BTreeMap<String, Source>,
    parts: Vec<Part>,
}

impl TemplateTransform {
    pub fn compile(cfg: &TemplateTransformConfig, path: &str) -> Result<Self, CompileError> {
        let mut names = BTreeMap::new();
        let mut parts = Vec::new();
        match cfg.transformer_type {
            TransformerType::Original => {}
            TransformerType::Constant => {
                if cfg.value.is_none() {
                    return Err(cerr(path, "transformerType constant needs a value"));
                }
            }
            TransformerType::Template => {
                let value = match &cfg.value {
                    Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|e| {
                        cerr(&format!("{path}.value"), format!("not a JSON object: {e}"))
                    })?,
                    Some(v) => v.clone(),
                    None => Value::Object(Default::default()),
                };
                let Value::Object(m) = value else {
                    return Err(cerr(
                        &format!("{path}.value"),
                        "must map names to JSONPath expressions",
                    ));
                };
                for (k, v) in &m {
                    names.insert(k.clone(), source(v, &format!("{path}.value.{k}"))?);
                }
                let t = cfg
                    .template
                    .as_deref()
                    .ok_or_else(|| cerr(path, "transformerType template needs a template"))?;
                let mut rest = t;
                while let Some(i) = rest.find("${") {
                    match rest[i + 2..].find('}') {
                        Some(j) => {
                            parts.push(Part::Text(rest[..i].to_owned()));
                            parts.push(Part::Var(rest[i + 2..i + 2 + j].to_owned()));
                            rest = &rest[i + 3 + j..];
                        }
                        None => break,
                    }
                }
                parts.push(Part::Text(rest.to_owned()));
            }
        }
        Ok(TemplateTransform {
            ty: cfg.transformer_type,
            constant: cfg.value.clone(),
            names,
            parts,
        })
    }
}

fn set_data(e: &mut Event, text: String) {
    if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() {
        if !e
            .datacontenttype
            .as_deref()
            .is_some_and(is_json_content_type)
        {
            e.datacontenttype = Some("application/json".into());
        }
        e.data = Some(Data {
            kind: DataKind::Json,
            bytes: Bytes::from(text),
        });
    } else {
        e.datacontenttype = Some("text/plain; charset=utf-8".into());
        e.data = Some(Data {
            kind: DataKind::Text,
            bytes: Bytes::from(text),
        });
    }
}

impl Transform for TemplateTransform {
    fn apply(&self, mut e: Event) -> Result<Vec<Event>, TransformError> {
        match self.ty {
            TransformerType::Original => {}
            TransformerType::Constant => {
                let text = match &self.constant {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                set_data(&mut e, text);
            }
            TransformerType::Template => {
                let sources: Vec<&Source> = self.names.values().collect();
                check_data(&e, &sources)?;
                let root = event_json(&e)?;
                let mut out = String::new();
                for p in &self.parts {
                    match p {
                        Part::Text(t) => out.push_str(t),
                        Part::Var(name) => match self.names.get(name) {
                            Some(s) => out.push_str(&render(resolve(s, &root))),
                            None => {
                                out.push_str("${");
                                out.push_str(name);
                                out.push('}');
                            }
                        },
                    }
                }
                set_data(&mut e, out);
            }
        }
        Ok(vec![e])
    }
}

pub struct SetTransform {
    entries: Vec<(String, Source)>,
}

const SETTABLE: &[&str] = &["id", "source", "type", "subject", "dataschema", "time"];

impl Transform for SetTransform {
    fn apply(&self, mut e: Event) -> Result<Vec<Event>, TransformError> {
        let sources: Vec<&Source> = self.entries.iter().map(|(_, s)| s).collect();
        check_data(&e, &sources)?;
        let root = if sources.iter().any(|s| matches!(s, Source::Path(_))) {
            Some(event_json(&e)?)
        } else {
            None
        };
        for (name, s) in &self.entries {
            let v = match (s, &root) {
                (Source::Path(p), Some(r)) => p
                    .select(r)
                    .ok_or_else(|| {
                        TransformError(format!("set {name}: {} matched nothing", p.text))
                    })?
                    .clone(),
                (Source::Literal(v), _) => v.clone(),
                _ => Value::Null,
            };
            let text = render(Some(&v));
            match name.as_str() {
                "id" => e.id = text,
                "source" => e.source = text,
                "type" => e.ty = text,
                "subject" => e.subject = Some(text),
                "dataschema" => e.dataschema = Some(text),
                "time" => e.time = Some(text),
                ext => {
                    let ev = match v {
                        Value::Bool(b) => ExtValue::Bool(b),
                        Value::Number(n)
                            if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) =>
                        {
                            ExtValue::Integer(n.as_i64().unwrap_or_default())
                        }
                        _ => ExtValue::String(text),
                    };
                    e.set_extension(ext, ev);
                }
            }
        }
        e.validate()
            .map_err(|err| TransformError(format!("the transformed event is invalid: {err}")))?;
        Ok(vec![e])
    }
}

pub struct RemoveTransform {
    names: Vec<String>,
}

impl Transform for RemoveTransform {
    fn apply(&self, mut e: Event) -> Result<Vec<Event>, TransformError> {
        for n in &self.names {
            match n.as_str() {
                "subject" => e.subject = None,
                "dataschema" => e.dataschema = None,
                "time" => e.time = None,
                other => {
                    e.remove_extension(other);
                }
            }
        }
        Ok(vec![e])
    }
}

/// Compiles one configured transform; `path` locates it in the config for error messages.
pub fn compile(cfg: &TransformConfig, path: &str) -> Result<Box<dyn Transform>, CompileError> {
    match cfg {
        TransformConfig::Template(t) => Ok(Box::new(TemplateTransform::compile(
            t,
            &format!("{path}.template"),
        )?)),
        TransformConfig::Set(m) => {
            let mut entries = Vec::new();
            for (k, v) in m {
                let p = format!("{path}.set.{k}");
                if k == "specversion" || k == "datacontenttype" || k == "data" {
                    return Err(cerr(&p, format!("{k} cannot be set by a transform")));
                }
                if !SETTABLE.contains(&k.as_str()) {
                    evmesh_core::event::validate_extension_name(k).map_err(|e| cerr(&p, e.rule))?;
                }
                let src = if v.starts_with('$') {
                    Source::Path(JsonPath::parse(v).map_err(|m| cerr(&p, m))?)
                } else {
                    Source::Literal(Value::String(v.clone()))
                };
                entries.push((k.clone(), src));
            }
            Ok(Box::new(SetTransform { entries }))
        }
        TransformConfig::Remove(names) => {
            for (i, n) in names.iter().enumerate() {
                if ["id", "source", "type", "specversion"].contains(&n.as_str()) {
                    return Err(cerr(
                        &format!("{path}.remove[{i}]"),
                        format!("{n} is required and cannot be removed"),
                    ));
                }
            }
            Ok(Box::new(RemoveTransform {
                names: names.clone(),
            }))
        }
        TransformConfig::Wasm(_) => Err(cerr(
            &format!("{path}.wasm"),
            "wasm transforms are compiled by the plugin host",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Event {
        let mut e = Event::new("1", "shop", "order.created");
        e.datacontenttype = Some("application/json".into());
        e.data = Some(Data {
            kind: DataKind::Json,
            bytes: Bytes::from_static(br#"{"name":"ada","total":42,"lines":[{"sku":"x"}]}"#),
        });
        e
    }

    fn template(v: Value, t: &str) -> TemplateTransform {
        let cfg = TemplateTransformConfig {
            transformer_type: TransformerType::Template,
            value: Some(v),
            template: Some(t.into()),
        };
        TemplateTransform::compile(&cfg, "t").unwrap()
    }

    #[test]
    fn template_follows_eventmesh_semantics() {
        let t = template(
            json!({"name": "$.data.name", "sku": "$.data.lines[0].sku", "gone": "$.data.nope"}),
            "Hi ${name}: ${sku} ${gone} ${undefined}",
        );
        let out = t.apply(order()).unwrap().remove(0);
        assert_eq!(&out.data.unwrap().bytes[..], b"Hi ada: x null ${undefined}");
        // EventMesh writes `value` as a JSON string holding the map.
        let t = template(json!("{\"total\":\"$.data.total\"}"), "{\"t\": ${total}}");
        let out = t.apply(order()).unwrap().remove(0);
        assert_eq!(&out.data.as_ref().unwrap().bytes[..], b"{\"t\": 42}");
        assert_eq!(out.data.unwrap().kind, DataKind::Json);
    }

    #[test]
    fn template_on_non_json_data_fails_clearly() {
        let t = template(json!({"n": "$.data.name"}), "${n}");
        let mut e = order();
        e.datacontenttype = Some("text/plain".into());
        e.data = Some(Data {
            kind: DataKind::Text,
            bytes: Bytes::from_static(b"hello"),
        });
        assert!(t.apply(e).unwrap_err().0.contains("not JSON"));
    }

    #[test]
    fn set_and_remove() {
        let mut m = BTreeMap::new();
        m.insert("type".to_string(), "order.enriched".to_string());
        m.insert("customer".to_string(), "$.data.name".to_string());
        m.insert("total".to_string(), "$.data.total".to_string());
        let set = compile(&TransformConfig::Set(m), "transforms[0]").unwrap();
        let e = set.apply(order()).unwrap().remove(0);
        assert_eq!(e.ty, "order.enriched");
        assert_eq!(
            e.extension("customer"),
            Some(&ExtValue::String("ada".into()))
        );
        assert_eq!(e.extension("total"), Some(&ExtValue::Integer(42)));
        let rm = compile(
            &TransformConfig::Remove(vec!["customer".into()]),
            "transforms[1]",
        )
        .unwrap();
        assert!(rm.apply(e).unwrap()[0].extension("customer").is_none());
        assert!(compile(&TransformConfig::Remove(vec!["id".into()]), "x").is_err());
    }

    #[test]
    fn bad_jsonpaths_are_config_errors() {
        let cfg = TemplateTransformConfig {
            transformer_type: TransformerType::Template,
            value: Some(json!({"a": "$.data[*]"})),
            template: Some("${a}".into()),
        };
        let err = TemplateTransform::compile(&cfg, "transforms[0].template")
            .err()
            .unwrap();
        assert_eq!(err.path, "transforms[0].template.value.a");
    }
}
