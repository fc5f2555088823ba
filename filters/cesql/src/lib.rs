//! CESQL v1, the CloudEvents SQL expression language, as a subscription filter.
//!
//! Expressions are parsed once (a parse error or an unknown function is a configuration error
//! naming the position) and evaluated per event without allocating in the common case: attribute
//! values are borrowed from the event and string literals from the expression.
//!
//! Evaluation is total, as the spec requires: every expression yields a value, plus the first
//! error met (`math`, `cast`, `missingAttribute`, …). An operator whose operand failed yields
//! its zero value; a failed implicit cast yields the zero value of the target type and evaluation
//! goes on. A filter matches when the result is `true` and no error occurred.
//!
//! Precedence follows the reference grammar of the CloudEvents SDKs: unary `NOT`/`-`/`EXISTS`,
//! then `LIKE`/`IN`, then `* / %`, then `+ -`, then comparisons, then `AND`/`OR`/`XOR` (one level,
//! right-associative).

mod eval;
mod parse;

pub use eval::{ErrorKind, Value};
pub use parse::ParseError;

use evmesh_core::filter::Filter;
use evmesh_core::Event;

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Cesql {
    source: String,
    expr: parse::Expr,
}

impl Cesql {
    pub fn compile(source: &str) -> Result<Cesql, ParseError> {
        let expr = parse::parse(source)?;
        Ok(Cesql {
            source: source.to_owned(),
            expr,
        })
    }

    /// Evaluates against an event: the value and the first error, if any.
    pub fn evaluate<'a>(&'a self, e: &'a Event) -> (Value<'a>, Option<ErrorKind>) {
        let out = self.expr.eval(e);
        (out.value, out.error)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// `attribute = 'literal'` comparisons that must all hold for the expression to be true
    /// (the conjuncts of its top-level `AND` chain): usable as index keys.
    pub fn required_equalities(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.expr.required_equalities(&mut out);
        out
    }
}

impl Filter for Cesql {
    fn matches(&self, e: &Event) -> bool {
        matches!(self.evaluate(e), (Value::Bool(true), None))
    }

    fn explain(&self, e: &Event, path: &str) -> Option<String> {
        match self.evaluate(e) {
            (Value::Bool(true), None) => None,
            (v, None) => Some(format!("{path}.cesql: {:?} evaluated to {v}", self.source)),
            (v, Some(err)) => Some(format!(
                "{path}.cesql: {:?} evaluated to {v} with a {err} error",
                self.source
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmesh_core::ExtValue;
    use proptest::prelude::*;

    fn ev() -> Event {
        let mut e = Event::new("1", "shop/eu", "order.created");
        e.set_extension("amount", ExtValue::String("150".into()));
        e
    }

    #[test]
    fn issue_example_matches() {
        let f = Cesql::compile("source LIKE 'shop/%' AND CAST_FREE(amount) > 100").unwrap_err();
        assert!(f.missing_function);
        let f = Cesql::compile("source LIKE 'shop/%' AND INT(amount) > 100").unwrap();
        assert!(f.matches(&ev()));
        let mut e = ev();
        e.source = "web/x".into();
        assert!(!f.matches(&e));
        assert!(f
            .explain(&e, "filters[0]")
            .unwrap()
            .contains("evaluated to FALSE"));
    }

    #[test]
    fn parse_errors_name_the_position() {
        let e = Cesql::compile("type = 'a' AND (").unwrap_err();
        assert_eq!(e.position, 16);
        let e = Cesql::compile("type LIKE 5").unwrap_err();
        assert!(e.to_string().contains("LIKE needs a string literal"), "{e}");
    }

    #[test]
    fn deep_nesting_is_a_parse_error_not_a_crash() {
        let deep = format!("{}TRUE{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(Cesql::compile(&deep)
            .unwrap_err()
            .message
            .contains("nested deeper"));
        let nots = format!("{}TRUE", "NOT ".repeat(100_000));
        assert!(Cesql::compile(&nots).is_err());
        let chain = vec!["TRUE"; 100_000].join(" AND ");
        assert!(
            Cesql::compile(&chain).is_err(),
            "right-associative AND chains recurse too"
        );
        assert!(Cesql::compile(&vec!["TRUE"; 250].join(" AND "))
            .unwrap()
            .matches(&ev()));
    }

    #[test]
    fn errors_make_the_filter_not_match() {
        let f = Cesql::compile("missing = 'x' OR TRUE").unwrap();
        assert_eq!(f.evaluate(&ev()).1, Some(ErrorKind::MissingAttribute));
        assert!(!f.matches(&ev()));
        assert!(Cesql::compile("TRUE OR missing = 'x'")
            .unwrap()
            .matches(&ev()));
    }

    fn like_reference(s: &[char], p: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, _) => s.is_empty(),
            (Some('%'), _) => {
                like_reference(s, &p[1..]) || (!s.is_empty() && like_reference(&s[1..], p))
            }
            (Some('_'), Some(_)) => like_reference(&s[1..], &p[1..]),
            (Some(c), Some(d)) if c == d => like_reference(&s[1..], &p[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn like_agrees_with_a_recursive_reference(s in "[ab%_é]{0,8}", p in "[ab%_é]{0,6}") {
            let toks = parse::compile_like(&p);
            let sc: Vec<char> = s.chars().collect();
            let pc: Vec<char> = p.chars().collect();
            prop_assert_eq!(eval::like(&s, &toks), like_reference(&sc, &pc));
        }
    }
}
