//! The CloudEvents Subscriptions API attribute dialects: `exact`, `prefix`, `suffix`. A filter
//! on an attribute the event does not have does not match. The combinators (`all`, `any`,
//! `not`) and the other dialects are composed by the router.

use evmesh_core::config::FilterConfig;
use evmesh_core::event::AttrRef;
use evmesh_core::filter::Filter;
use evmesh_core::Event;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{0} is not an attribute dialect (exact, prefix, suffix)")]
    NotAttributeDialect(&'static str),
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

/// One `exact`/`prefix`/`suffix` filter: every (attribute, value) pair must pass.
pub struct AttrFilter {
    op: Op,
    pairs: Vec<(String, String)>,
}

fn attr_matches(e: &Event, op: Op, name: &str, want: &str) -> bool {
    match e.attribute(name) {
        None => false,
        Some(AttrRef::Str(s)) => op.test(s, want),
        Some(v) => v.with_str(|s| op.test(s, want)),
    }
}

impl AttrFilter {
    pub fn new(op: Op, pairs: Vec<(String, String)>) -> Self {
        AttrFilter { op, pairs }
    }

    pub fn compile(cfg: &FilterConfig) -> Result<AttrFilter, FilterError> {
        let (op, m) = match cfg {
            FilterConfig::Exact(m) => (Op::Exact, m),
            FilterConfig::Prefix(m) => (Op::Prefix, m),
            FilterConfig::Suffix(m) => (Op::Suffix, m),
            FilterConfig::All(_) => return Err(FilterError::NotAttributeDialect("all")),
            FilterConfig::Any(_) => return Err(FilterError::NotAttributeDialect("any")),
            FilterConfig::Not(_) => return Err(FilterError::NotAttributeDialect("not")),
            FilterConfig::Cesql(_) => return Err(FilterError::NotAttributeDialect("cesql")),
            FilterConfig::Pattern(_) => return Err(FilterError::NotAttributeDialect("pattern")),
            FilterConfig::Wasm(_) => return Err(FilterError::NotAttributeDialect("wasm")),
        };
        Ok(AttrFilter::new(
            op,
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ))
    }
}

impl Filter for AttrFilter {
    fn matches(&self, e: &Event) -> bool {
        self.pairs
            .iter()
            .all(|(n, v)| attr_matches(e, self.op, n, v))
    }

    fn explain(&self, e: &Event, path: &str) -> Option<String> {
        let (n, want) = self
            .pairs
            .iter()
            .find(|(n, v)| !attr_matches(e, self.op, n, v))?;
        let at = format!("{path}.{}.{n}", self.op.name());
        Some(match e.attribute(n) {
            None => format!("{at}: the event has no {n:?} attribute"),
            Some(v) => v.with_str(|have| match self.op {
                Op::Exact => format!("{at}: {have:?} is not {want:?}"),
                Op::Prefix => format!("{at}: {have:?} does not start with {want:?}"),
                Op::Suffix => format!("{at}: {have:?} does not end with {want:?}"),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmesh_core::ExtValue;
    use proptest::prelude::*;

    fn event() -> Event {
        let mut e = Event::new("1", "shop/eu", "com.example.order.created");
        e.subject = Some("invoice.pdf".into());
        e.set_extension("n", ExtValue::Integer(5));
        e
    }

    fn one(op: Op, attr: &str, value: &str) -> AttrFilter {
        AttrFilter::new(op, vec![(attr.into(), value.into())])
    }

    #[test]
    fn every_pair_must_pass_and_explain_names_the_failing_one() {
        let f = AttrFilter::new(
            Op::Exact,
            vec![
                ("type".into(), "com.example.order.created".into()),
                ("source".into(), "shop/eu".into()),
            ],
        );
        assert!(f.matches(&event()));
        let mut e = event();
        e.source = "web/x".into();
        assert!(!f.matches(&e));
        assert_eq!(
            f.explain(&e, "filters[0]").unwrap(),
            "filters[0].exact.source: \"web/x\" is not \"shop/eu\""
        );
        let p = one(Op::Prefix, "source", "shop/");
        assert_eq!(
            p.explain(&e, "filters[1]").unwrap(),
            "filters[1].prefix.source: \"web/x\" does not start with \"shop/\""
        );
    }

    #[test]
    fn missing_attribute_never_matches() {
        let f = one(Op::Exact, "subject2", "a");
        assert!(!f.matches(&event()));
        assert_eq!(
            f.explain(&event(), "p").unwrap(),
            "p.exact.subject2: the event has no \"subject2\" attribute"
        );
    }

    #[test]
    fn non_string_extensions_compare_by_canonical_form() {
        assert!(one(Op::Exact, "n", "5").matches(&event()));
        assert!(one(Op::Suffix, "subject", ".pdf").matches(&event()));
    }

    #[test]
    fn only_attribute_dialects_compile_here() {
        let cfg: FilterConfig =
            serde_json::from_value(serde_json::json!({"not": {"exact": {"type": "x"}}})).unwrap();
        assert!(AttrFilter::compile(&cfg).is_err());
        let cfg: FilterConfig =
            serde_json::from_value(serde_json::json!({"prefix": {"source": "shop/"}})).unwrap();
        assert!(AttrFilter::compile(&cfg).unwrap().matches(&event()));
    }

    proptest! {
        #[test]
        fn prefix_and_suffix_agree_with_std(s in "[a-c]{0,6}", p in "[a-c]{1,3}") {
            let mut e = event();
            e.subject = Some(s.clone());
            prop_assert_eq!(one(Op::Prefix, "subject", &p).matches(&e), s.starts_with(&p));
            prop_assert_eq!(one(Op::Suffix, "subject", &p).matches(&e), s.ends_with(&p));
        }
    }
}
