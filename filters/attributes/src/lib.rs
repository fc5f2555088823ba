//! The CloudEvents Subscriptions API filter dialects: `exact`, `prefix`, `suffix`, `all`, `any`,
//! `not`. A filter on an attribute the event does not have does not match.

use evmesh_core::config::FilterConfig;
use evmesh_core::event::AttrRef;
use evmesh_core::filter::Filter;
use evmesh_core::Event;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Exact,
    Prefix,
    Suffix,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Exact => "exact",
            Op::Prefix => "prefix",
            Op::Suffix => "suffix",
        }
    }

    fn test(self, have: &str, want: &str) -> bool {
        match self {
            Op::Exact => have == want,
            Op::Prefix => have.starts_with(want),
            Op::Suffix => have.ends_with(want),
        }
    }
}

/// A compiled filter tree.
pub enum Compiled {
    /// Every (attribute, value) pair must pass.
    Attr(Op, Vec<(String, String)>),
    All(Vec<Compiled>),
    Any(Vec<Compiled>),
    Not(Box<Compiled>),
}

fn attr_matches(e: &Event, op: Op, name: &str, want: &str) -> bool {
    match e.attribute(name) {
        None => false,
        Some(AttrRef::Str(s)) => op.test(s, want),
        Some(v) => v.with_str(|s| op.test(s, want)),
    }
}

impl Compiled {
    /// Compiles the Subscriptions API dialects; other dialects belong to their own crates
    /// (the router composes them).
    pub fn compile(cfg: &FilterConfig) -> Result<Compiled, FilterError> {
        let attrs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let list = |v: &[FilterConfig]| {
            v.iter()
                .map(Compiled::compile)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match cfg {
            FilterConfig::Exact(m) => Compiled::Attr(Op::Exact, attrs(m)),
            FilterConfig::Prefix(m) => Compiled::Attr(Op::Prefix, attrs(m)),
            FilterConfig::Suffix(m) => Compiled::Attr(Op::Suffix, attrs(m)),
            FilterConfig::All(v) => Compiled::All(list(v)?),
            FilterConfig::Any(v) => Compiled::Any(list(v)?),
            FilterConfig::Not(f) => Compiled::Not(Box::new(Compiled::compile(f)?)),
            FilterConfig::Cesql(_) | FilterConfig::Pattern(_) | FilterConfig::Wasm(_) => {
                return Err(FilterError::Invalid {
                    path: String::new(),
                    message: "cesql, pattern and wasm filters are compiled by their own crates"
                        .into(),
                })
            }
        })
    }

    /// Compiles a subscription's `filters:` list (AND'ed).
    pub fn compile_list(cfgs: &[FilterConfig]) -> Result<Compiled, FilterError> {
        Ok(Compiled::All(
            cfgs.iter()
                .map(Compiled::compile)
                .collect::<Result<Vec<_>, _>>()?,
        ))
    }
}

impl Filter for Compiled {
    fn matches(&self, e: &Event) -> bool {
        match self {
            Compiled::Attr(op, pairs) => pairs.iter().all(|(n, v)| attr_matches(e, *op, n, v)),
            Compiled::All(v) => v.iter().all(|f| f.matches(e)),
            Compiled::Any(v) => v.iter().any(|f| f.matches(e)),
            Compiled::Not(f) => !f.matches(e),
        }
    }

    fn explain(&self, e: &Event, path: &str) -> Option<String> {
        match self {
            Compiled::Attr(op, pairs) => {
                for (n, want) in pairs {
                    if !attr_matches(e, *op, n, want) {
                        let at = format!("{path}.{}.{n}", op.name());
                        return Some(match e.attribute(n) {
                            None => format!("{at}: the event has no {n:?} attribute"),
                            Some(v) => v.with_str(|have| match op {
                                Op::Exact => format!("{at}: {have:?} is not {want:?}"),
                                Op::Prefix => {
                                    format!("{at}: {have:?} does not start with {want:?}")
                                }
                                Op::Suffix => format!("{at}: {have:?} does not end with {want:?}"),
                            }),
                        });
                    }
                }
                None
            }
            Compiled::All(v) => v.iter().enumerate().find_map(|(i, f)| {
                let p = if path.is_empty() {
                    format!("filters[{i}]")
                } else {
                    format!("{path}.all[{i}]")
                };
                f.explain(e, &p)
            }),
            Compiled::Any(v) => {
                if v.iter().any(|f| f.matches(e)) {
                    None
                } else {
                    let reasons: Vec<String> = v
                        .iter()
                        .enumerate()
                        .filter_map(|(i, f)| f.explain(e, &format!("{path}.any[{i}]")))
                        .collect();
                    Some(format!(
                        "{path}.any: no alternative matched ({})",
                        reasons.join("; ")
                    ))
                }
            }
            Compiled::Not(f) => {
                if f.matches(e) {
                    Some(format!("{path}.not: the inner filter matched"))
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmesh_core::ExtValue;
    use proptest::prelude::*;

    fn filters(yaml: &str) -> Compiled {
        Compiled::compile_list(&serde_yaml_from(yaml)).unwrap()
    }

    fn serde_yaml_from(yaml: &str) -> Vec<FilterConfig> {
        let text = format!("subscriptions: [{{name: s, topic: t, sink: {{type: webhook, url: 'http://x/'}}, filters: {yaml}}}]");
        evmesh_core::config::load(&text, Vec::new())
            .unwrap()
            .subscriptions
            .remove(0)
            .filters
    }

    fn event() -> Event {
        let mut e = Event::new("1", "shop/eu", "com.example.order.created");
        e.subject = Some("invoice.pdf".into());
        e.set_extension("n", ExtValue::Integer(5));
        e
    }

    #[test]
    fn issue_example_matches() {
        let f = filters(
            r#"[
            {exact: {type: com.example.order.created}},
            {prefix: {source: "shop/"}},
            {any: [{suffix: {subject: ".pdf"}}, {exact: {subject: "x"}}]},
            {not: {exact: {datacontenttype: text/plain}}}]"#,
        );
        assert!(f.matches(&event()));
        let mut e = event();
        e.source = "web/x".into();
        assert!(!f.matches(&e));
        assert_eq!(
            f.explain(&e, "").unwrap(),
            "filters[1].prefix.source: \"web/x\" does not start with \"shop/\""
        );
    }

    #[test]
    fn missing_attribute_never_matches() {
        assert!(!filters("[{exact: {subject2: a}}]").matches(&event()));
        assert!(filters("[{not: {exact: {subject2: a}}}]").matches(&event()));
    }

    #[test]
    fn non_string_extensions_compare_by_canonical_form() {
        assert!(filters("[{exact: {n: '5'}}]").matches(&event()));
    }

    #[test]
    fn no_filters_match_everything() {
        assert!(Compiled::compile_list(&[]).unwrap().matches(&event()));
    }

    proptest! {
        #[test]
        fn prefix_and_suffix_agree_with_std(s in "[a-c]{0,6}", p in "[a-c]{1,3}") {
            let mut e = event();
            e.subject = Some(s.clone());
            let pf = Compiled::Attr(Op::Prefix, vec![("subject".into(), p.clone())]);
            let sf = Compiled::Attr(Op::Suffix, vec![("subject".into(), p.clone())]);
            prop_assert_eq!(pf.matches(&e), s.starts_with(&p));
            prop_assert_eq!(sf.matches(&e), s.ends_with(&p));
            prop_assert_eq!(Compiled::Not(Box::new(pf)).matches(&e), !s.starts_with(&p));
        }
    }
}
