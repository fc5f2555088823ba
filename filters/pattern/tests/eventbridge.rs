//! Every EventBridge pattern case of the LocalStack suite: match, no match, invalid.
#![allow(clippy::unwrap_used)]

use evmesh_filter_pattern::{Flat, Pattern};
use serde_json::Value;
use std::path::Path;

#[test]
fn agrees_with_every_eventbridge_case() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/localstack-eventbridge-patterns/cases.normalized.json");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(cases.len(), 155);
    let mut failures = Vec::new();
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let expected = c["expected"].as_str().unwrap();
        match (Pattern::compile(&c["event_pattern"]), expected) {
            (Err(_), "error") => {}
            (Err(e), _) => failures.push(format!("{name}: refused ({e}) but expected {expected}")),
            (Ok(_), "error") => failures.push(format!("{name}: accepted an invalid pattern")),
            (Ok(p), _) => {
                let got = p.matches_flat(&Flat::from_json(&c["event"]));
                if got != (expected == "match") {
                    failures.push(format!("{name}: matched={got}, expected {expected}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 155 cases disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
