//! JSON event patterns, the EventBridge / Apache EventMesh filter dialect.
//!
//! # Mapping onto CloudEvents
//!
//! A pattern's top-level keys address CloudEvents context attributes and extensions by name
//! (`type`, `source`, `subject`, `myext`, …; values are strings, typed extensions keep their
//! boolean or integer type). The key `data` addresses the event's payload when it is JSON
//! (a `data` member of a structured event, or a body whose content type is JSON); its fields
//! nest below it: `{"data": {"order": {"total": [{"numeric": [">", 100]}]}}}`.
//!
//! # Semantics (as EventBridge)
//!
//! Pattern and event are both flattened to dotted paths (`{"a": {"b": …}}` and `{"a.b": …}`
//! address the same field); array elements stand at their parent's path. A field matches when
//! any of its conditions matches any of its values; a pattern matches when every field does and
//! every `$or` has a matching branch. Conditions: exact values (numbers compare numerically),
//! `prefix`, `suffix` (both optionally `equals-ignore-case`), `equals-ignore-case`, `wildcard`,
//! `anything-but` (a value, a list, or `prefix`/`suffix`/`equals-ignore-case`/`wildcard`; never
//! matches a missing field), `numeric` ranges, `exists`, `cidr`. Invalid patterns are rejected
//! when the configuration is loaded.

use evmesh_core::event::AttrRef;
use evmesh_core::filter::Filter;
use evmesh_core::{DataKind, Event, ExtValue};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PatternError {
    pub path: String,
    pub message: String,
}

fn perr(path: &str, message: impl Into<String>) -> PatternError {
    PatternError {
        path: if path.is_empty() {
            "(pattern)".into()
        } else {
            path.to_owned()
        },
        message: message.into(),
    }
}

/// A flattened scalar of the event.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// A leaf as matching sees it, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LRef<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    Null,
}

impl Leaf {
    fn as_ref(&self) -> LRef<'_> {
        match self {
            Leaf::Str(s) => LRef::Str(s),
            Leaf::Num(n) => LRef::Num(*n),
            Leaf::Bool(b) => LRef::Bool(*b),
            Leaf::Null => LRef::Null,
        }
    }
}

/// An event flattened to dotted paths.
#[derive(Debug, Default)]
pub struct Flat(HashMap<String, Vec<Leaf>>);

impl Flat {
    pub fn from_json(v: &Value) -> Flat {
        let mut f = Flat::default();
        f.add(v, String::new());
        f
    }

    fn add(&mut self, v: &Value, path: String) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    self.add(v, p);
                }
            }
            Value::Array(a) => {
                for v in a {
                    self.add(v, path.clone());
                }
            }
            Value::String(s) => self.0.entry(path).or_default().push(Leaf::Str(s.clone())),
            Value::Number(n) => self
                .0
                .entry(path)
                .or_default()
                .push(Leaf::Num(n.as_f64().unwrap_or(f64::NAN))),
            Value::Bool(b) => self.0.entry(path).or_default().push(Leaf::Bool(*b)),
            Value::Null => self.0.entry(path).or_default().push(Leaf::Null),
        }
    }

    /// A CloudEvent as the pattern sees it (see the crate docs for the mapping).
    pub fn from_event(e: &Event) -> Flat {
        let mut f = Flat::default();
        let mut put = |k: &str, l: Leaf| f.0.entry(k.to_owned()).or_default().push(l);
        put("specversion", Leaf::Str(e.specversion.as_str().into()));
        put("id", Leaf::Str(e.id.clone()));
        put("source", Leaf::Str(e.source.clone()));
        put("type", Leaf::Str(e.ty.clone()));
        for (k, v) in [
            ("datacontenttype", &e.datacontenttype),
            ("dataschema", &e.dataschema),
            ("subject", &e.subject),
            ("time", &e.time),
        ] {
            if let Some(v) = v {
                put(k, Leaf::Str(v.clone()));
            }
        }
        for (k, v) in &e.extensions {
            put(
                k,
                match v {
                    ExtValue::String(s) => Leaf::Str(s.clone()),
                    ExtValue::Bool(b) => Leaf::Bool(*b),
                    ExtValue::Integer(i) => Leaf::Num(*i as f64),
                },
            );
        }
        if let Some(d) = &e.data {
            let json = d.kind == DataKind::Json
                || (d.kind == DataKind::Binary
                    && e.datacontenttype
                        .as_deref()
                        .is_some_and(evmesh_core::format::is_json_content_type));
            if json {
                if let Ok(v) = serde_json::from_slice::<Value>(&d.bytes) {
                    f.add(&v, "data".into());
                }
            }
        }
        f
    }

    fn get(&self, path: &str) -> &[Leaf] {
        self.0.get(path).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[derive(Debug, Clone)]
enum Wild {
    Lit(String),
    Star,
}

#[derive(Debug, Clone)]
enum Cond {
    Exact(Leaf),
    Prefix(String, bool),
    Suffix(String, bool),
    EqIgnoreCase(String),
    Wildcard(Vec<Wild>),
    AnythingBut(Vec<Cond>),
    Numeric(Vec<(NumOp, f64)>),
    Exists(bool),
    Cidr(IpAddr, u8),
}

#[derive(Debug, Clone, Copy)]
enum NumOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A compiled pattern.
#[derive(Debug, Clone, Default)]
pub struct Pattern {
    fields: Vec<(String, Vec<Cond>)>,
    ors: Vec<Vec<Pattern>>,
}

impl Pattern {
    pub fn compile(v: &Value) -> Result<Pattern, PatternError> {
        let Value::Object(m) = v else {
            return Err(perr("", "a pattern must be a JSON object"));
        };
        let mut p = Pattern::default();
        compile_object(m, "", &mut p)?;
        Ok(p)
    }

    pub fn matches_flat(&self, f: &Flat) -> bool {
        self.fields.iter().all(|(path, conds)| {
            let vals: &[Leaf] = f.get(path);
            conds
                .iter()
                .any(|c| cond_matches(c, vals.iter().map(Leaf::as_ref)))
        }) && self
            .ors
            .iter()
            .all(|branches| branches.iter().any(|b| b.matches_flat(f)))
    }

    /// Whether every path is a top-level attribute (no `data`, no dots), so the event need not
    /// be flattened.
    fn attributes_only(&self) -> bool {
        self.fields
            .iter()
            .all(|(p, _)| !p.contains('.') && p != "data")
            && self
                .ors
                .iter()
                .all(|b| b.iter().all(Pattern::attributes_only))
    }

    /// Matching straight from the event's attributes; allocates nothing for string attributes.
    fn matches_attributes(&self, e: &Event) -> bool {
        self.fields.iter().all(|(path, conds)| {
            let v = match e.attribute(path) {
                None => None,
                Some(AttrRef::Str(s)) => Some(LRef::Str(s)),
                Some(AttrRef::Bool(b)) => Some(LRef::Bool(b)),
                Some(AttrRef::Integer(i)) => Some(LRef::Num(i as f64)),
            };
            conds.iter().any(|c| cond_matches(c, v.into_iter()))
        }) && self
            .ors
            .iter()
            .all(|branches| branches.iter().any(|b| b.matches_attributes(e)))
    }

    /// Top-level attribute fields whose conditions are all exact strings: the pattern can only
    /// match an event whose attribute is one of them (usable as index keys).
    pub fn exact_string_fields(&self) -> Vec<(String, Vec<String>)> {
        self.fields
            .iter()
            .filter(|(path, _)| !path.contains('.') && path != "data")
            .filter_map(|(path, conds)| {
                let vals: Option<Vec<String>> = conds
                    .iter()
                    .map(|c| match c {
                        Cond::Exact(Leaf::Str(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                vals.map(|v| (path.clone(), v))
            })
            .collect()
    }

    /// The first field that does not match, for `explain`.
    pub fn first_mismatch(&self, f: &Flat) -> Option<String> {
        for (path, conds) in &self.fields {
            let vals = f.get(path);
            if !conds
                .iter()
                .any(|c| cond_matches(c, vals.iter().map(Leaf::as_ref)))
            {
                return Some(if vals.is_empty() {
                    format!("{path}: the event has no such field")
                } else {
                    format!(
                        "{path}: {} does not satisfy any of the field's conditions",
                        show(vals)
                    )
                });
            }
        }
        for branches in &self.ors {
            if !branches.iter().any(|b| b.matches_flat(f)) {
                return Some("$or: no branch matched".into());
            }
        }
        None
    }
}

fn show(vals: &[Leaf]) -> String {
    let parts: Vec<String> = vals
        .iter()
        .map(|l| match l {
            Leaf::Str(s) => format!("{s:?}"),
            Leaf::Num(n) => n.to_string(),
            Leaf::Bool(b) => b.to_string(),
            Leaf::Null => "null".into(),
        })
        .collect();
    parts.join(", ")
}

fn compile_object(
    m: &Map<String, Value>,
    prefix: &str,
    p: &mut Pattern,
) -> Result<(), PatternError> {
    for (k, v) in m {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if k == "$or" {
            let Value::Array(branches) = v else {
                return Err(perr(&path, "$or must be an array of patterns"));
            };
            if branches.len() < 2 {
                return Err(perr(&path, "$or needs at least two patterns"));
            }
            let mut compiled = Vec::new();
            for (i, b) in branches.iter().enumerate() {
                let Value::Object(bm) = b else {
                    return Err(perr(
                        &format!("{path}[{i}]"),
                        "each $or branch must be an object",
                    ));
                };
                let mut bp = Pattern::default();
                compile_object(bm, prefix, &mut bp)?;
                compiled.push(bp);
            }
            p.ors.push(compiled);
            continue;
        }
        match v {
            Value::Object(inner) => compile_object(inner, &path, p)?,
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(perr(&path, "empty arrays are not allowed"));
                }
                let conds = items
                    .iter()
                    .map(|i| compile_cond(i, &path))
                    .collect::<Result<Vec<_>, _>>()?;
                p.fields.push((path, conds));
            }
            _ => return Err(perr(&path, format!("{k:?} must be an object or an array"))),
        }
    }
    Ok(())
}

fn leaf(v: &Value) -> Leaf {
    match v {
        Value::String(s) => Leaf::Str(s.clone()),
        Value::Number(n) => Leaf::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::Bool(b) => Leaf::Bool(*b),
        _ => Leaf::Null,
    }
}

fn string_of<'a>(v: &'a Value, path: &str, what: &str) -> Result<&'a str, PatternError> {
    v.as_str()
        .ok_or_else(|| perr(path, format!("{what} match pattern must be a string")))
}

fn compile_wildcard(s: &str, path: &str) -> Result<Vec<Wild>, PatternError> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().enumerate().peekable();
    let mut stars = 0;
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some((_, '*')) | Some((_, '\\'))) => {
                if let Some((_, n)) = chars.next() {
                    lit.push(n);
                }
            }
            '*' => {
                if matches!(chars.peek(), Some((_, '*'))) {
                    return Err(perr(
                        path,
                        format!("consecutive wildcard characters at position {}", i + 1),
                    ));
                }
                if !lit.is_empty() {
                    out.push(Wild::Lit(std::mem::take(&mut lit)));
                }
                out.push(Wild::Star);
                stars += 1;
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Wild::Lit(lit));
    }
    if stars > 5 {
        return Err(perr(
            path,
            "rule is too complex: use at most 5 wildcard characters",
        ));
    }
    Ok(out)
}

fn compile_cidr(v: &Value, path: &str) -> Result<Cond, PatternError> {
    let s = v
        .as_str()
        .ok_or_else(|| perr(path, "cidr match pattern must be a string"))?;
    let (ip, bits) = s
        .split_once('/')
        .ok_or_else(|| perr(path, "malformed CIDR, one '/' required"))?;
    let bits: u8 = bits
        .parse()
        .map_err(|_| perr(path, "malformed CIDR, mask bits must be an integer"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| perr(path, format!("nonstandard IP address: {ip}")))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(perr(
            path,
            format!("malformed CIDR, mask bits must be at most {max}"),
        ));
    }
    Ok(Cond::Cidr(ip, bits))
}

fn compile_numeric(v: &Value, path: &str) -> Result<Cond, PatternError> {
    let Value::Array(items) = v else {
        return Err(perr(path, "value of numeric must be an array"));
    };
    let mut out = Vec::new();
    let mut i = 0;
    let (mut lower, mut upper, mut eq) = (false, false, false);
    while i < items.len() {
        let op = items[i]
            .as_str()
            .ok_or_else(|| perr(path, "numeric operators must be strings"))?;
        let num = items
            .get(i + 1)
            .and_then(Value::as_f64)
            .ok_or_else(|| perr(path, format!("value of {op} must be numeric")))?;
        let op = match op {
            "=" => NumOp::Eq,
            "<" => NumOp::Lt,
            "<=" => NumOp::Le,
            ">" => NumOp::Gt,
            ">=" => NumOp::Ge,
            other => {
                return Err(perr(
                    path,
                    format!("unrecognized numeric range operator: {other}"),
                ))
            }
        };
        let bad = match op {
            NumOp::Eq => std::mem::replace(&mut eq, true) || lower || upper,
            NumOp::Gt | NumOp::Ge => std::mem::replace(&mut lower, true) || eq,
            NumOp::Lt | NumOp::Le => std::mem::replace(&mut upper, true) || eq,
        };
        if bad {
            return Err(perr(
                path,
                format!(
                    "bad numeric range operator: {}",
                    items[i].as_str().unwrap_or("?")
                ),
            ));
        }
        out.push((op, num));
        i += 2;
    }
    if out.is_empty() {
        return Err(perr(path, "numeric needs at least one operator and value"));
    }
    Ok(Cond::Numeric(out))
}

fn compile_cond(v: &Value, path: &str) -> Result<Cond, PatternError> {
    let Value::Object(m) = v else {
        return Ok(Cond::Exact(leaf(v)));
    };
    if m.len() != 1 {
        return Err(perr(path, "a condition object has exactly one key"));
    }
    let Some((k, v)) = m.iter().next() else {
        return Err(perr(path, "empty condition"));
    };
    match k.as_str() {
        "prefix" | "suffix" => {
            let (s, ic) = match v {
                Value::Object(inner)
                    if inner.len() == 1 && inner.contains_key("equals-ignore-case") =>
                {
                    (string_of(&inner["equals-ignore-case"], path, k)?, true)
                }
                _ => (string_of(v, path, k)?, false),
            };
            let s = if ic { s.to_lowercase() } else { s.to_owned() };
            Ok(if k == "prefix" {
                Cond::Prefix(s, ic)
            } else {
                Cond::Suffix(s, ic)
            })
        }
        "equals-ignore-case" => Ok(Cond::EqIgnoreCase(
            string_of(v, path, "equals-ignore-case")?.to_lowercase(),
        )),
        "wildcard" => Ok(Cond::Wildcard(compile_wildcard(
            string_of(v, path, "wildcard")?,
            path,
        )?)),
        "numeric" => compile_numeric(v, path),
        "exists" => match v {
            Value::Bool(b) => Ok(Cond::Exists(*b)),
            _ => Err(perr(path, "exists match pattern must be true or false")),
        },
        "cidr" => compile_cidr(v, path),
        "anything-but" => compile_anything_but(v, path),
        other => Err(perr(path, format!("unrecognized match type {other}"))),
    }
}

fn compile_anything_but(v: &Value, path: &str) -> Result<Cond, PatternError> {
    let inner = match v {
        Value::String(_) | Value::Number(_) => vec![Cond::Exact(leaf(v))],
        Value::Array(items) => {
            if items.is_empty() {
                return Err(perr(path, "empty arrays are not allowed"));
            }
            items
                .iter()
                .map(|i| match i {
                    Value::String(_) | Value::Number(_) => Ok(Cond::Exact(leaf(i))),
                    _ => Err(perr(
                        path,
                        "inside an anything-but list only strings and numbers are supported",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Value::Object(m) if m.len() == 1 => {
            let Some((k, val)) = m.iter().next() else {
                return Err(perr(path, "empty anything-but"));
            };
            let strings = |what: &str| -> Result<Vec<String>, PatternError> {
                match val {
                    Value::String(s) => Ok(vec![s.clone()]),
                    Value::Array(a) if !a.is_empty() => a
                        .iter()
                        .map(|x| {
                            x.as_str().map(str::to_owned).ok_or_else(|| {
                                perr(path, format!("{what} match pattern must be a string"))
                            })
                        })
                        .collect(),
                    _ => Err(perr(path, format!("{what} match pattern must be a string"))),
                }
            };
            match k.as_str() {
                "prefix" | "suffix" => {
                    if val.is_object() {
                        return Err(perr(
                            path,
                            "value of anything-but must be an array or single string/number value",
                        ));
                    }
                    let list = strings(k)?;
                    if list.iter().any(String::is_empty) {
                        return Err(perr(
                            path,
                            "empty prefix/suffix not allowed in anything-but",
                        ));
                    }
                    list.into_iter()
                        .map(|s| {
                            if k == "prefix" {
                                Cond::Prefix(s, false)
                            } else {
                                Cond::Suffix(s, false)
                            }
                        })
                        .collect()
                }
                "equals-ignore-case" => strings("equals-ignore-case")?
                    .into_iter()
                    .map(|s| Cond::EqIgnoreCase(s.to_lowercase()))
                    .collect(),
                "wildcard" => strings("wildcard")?
                    .iter()
                    .map(|s| compile_wildcard(s, path).map(Cond::Wildcard))
                    .collect::<Result<Vec<_>, _>>()?,
                other => {
                    return Err(perr(
                        path,
                        format!("unsupported anything-but operator {other}"),
                    ))
                }
            }
        }
        _ => {
            return Err(perr(
                path,
                "value of anything-but must be an array or single string/number value",
            ))
        }
    };
    Ok(Cond::AnythingBut(inner))
}

fn wildcard_matches(s: &str, p: &[Wild]) -> bool {
    // Greedy with backtracking to the last star, over literal chunks.
    let (mut si, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match &p[pi] {
                Wild::Star => {
                    star = Some((pi + 1, si));
                    pi += 1;
                    continue;
                }
                Wild::Lit(l) => {
                    if s[si..].starts_with(l.as_str()) {
                        si += l.len();
                        pi += 1;
                        continue;
                    }
                }
            }
        } else if si == s.len() {
            return true;
        }
        match star {
            Some((sp, ss)) => match s[ss..].chars().next() {
                Some(c) => {
                    let n = ss + c.len_utf8();
                    star = Some((sp, n));
                    si = n;
                    pi = sp;
                }
                None => return false,
            },
            None => return false,
        }
    }
}

fn in_cidr(addr: &str, net: IpAddr, bits: u8) -> bool {
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn leaf_matches(c: &Cond, l: LRef<'_>) -> bool {
    match (c, l) {
        (Cond::Exact(a), b) => a.as_ref() == b,
        (Cond::Prefix(p, false), LRef::Str(s)) => s.starts_with(p.as_str()),
        (Cond::Prefix(p, true), LRef::Str(s)) => s.to_lowercase().starts_with(p.as_str()),
        (Cond::Suffix(p, false), LRef::Str(s)) => s.ends_with(p.as_str()),
        (Cond::Suffix(p, true), LRef::Str(s)) => s.to_lowercase().ends_with(p.as_str()),
        (Cond::EqIgnoreCase(p), LRef::Str(s)) => s.to_lowercase() == *p,
        (Cond::Wildcard(w), LRef::Str(s)) => wildcard_matches(s, w),
        (Cond::AnythingBut(inner), l) => !inner.iter().any(|c| leaf_matches(c, l)),
        (Cond::Numeric(ranges), LRef::Num(n)) => ranges.iter().all(|(op, v)| match op {
            NumOp::Eq => n == *v,
            NumOp::Lt => n < *v,
            NumOp::Le => n <= *v,
            NumOp::Gt => n > *v,
            NumOp::Ge => n >= *v,
        }),
        (Cond::Cidr(net, bits), LRef::Str(s)) => in_cidr(s, *net, *bits),
        _ => false,
    }
}

fn cond_matches<'a>(c: &Cond, mut vals: impl Iterator<Item = LRef<'a>>) -> bool {
    match c {
        Cond::Exists(want) => vals.next().is_some() == *want,
        _ => vals.any(|l| leaf_matches(c, l)),
    }
}

/// The `pattern:` filter.
pub struct PatternFilter {
    pattern: Pattern,
    attributes_only: bool,
}

impl PatternFilter {
    pub fn compile(v: &Value) -> Result<Self, PatternError> {
        let pattern = Pattern::compile(v)?;
        let attributes_only = pattern.attributes_only();
        Ok(PatternFilter {
            pattern,
            attributes_only,
        })
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }
}

impl Filter for PatternFilter {
    fn matches(&self, e: &Event) -> bool {
        if self.attributes_only {
            self.pattern.matches_attributes(e)
        } else {
            self.pattern.matches_flat(&Flat::from_event(e))
        }
    }

    fn explain(&self, e: &Event, path: &str) -> Option<String> {
        self.pattern
            .first_mismatch(&Flat::from_event(e))
            .map(|m| format!("{path}.pattern.{m}"))
    }
}

#[cfg(test)]
mod tests;
