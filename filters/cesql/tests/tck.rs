//! Runs every case of the CESQL TCK (`../shared/conformance/cloudevents-spec/cesql/cesql_tck`).
#![allow(clippy::unwrap_used)]

use evmesh_core::{Event, ExtValue};
use evmesh_filter_cesql::{Cesql, ErrorKind, Value};
use serde_yaml::Value as Y;
use std::path::Path;

fn tck_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/cloudevents-spec/cesql/cesql_tck")
}

/// YAML reads `TRUE` and `10` as typed values; the expression is the text.
fn text(v: &Y) -> String {
    match v {
        Y::String(s) => s.clone(),
        Y::Bool(b) => {
            if *b {
                "TRUE".into()
            } else {
                "FALSE".into()
            }
        }
        Y::Number(n) => n.to_string(),
        other => panic!("unexpected expression {other:?}"),
    }
}

fn set(e: &mut Event, k: &str, v: &Y) {
    let s = || match v {
        Y::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
    };
    match k {
        "specversion" => {}
        "id" => e.id = s(),
        "source" => e.source = s(),
        "type" => e.ty = s(),
        "subject" => e.subject = Some(s()),
        "time" => e.time = Some(s()),
        "datacontenttype" => e.datacontenttype = Some(s()),
        "dataschema" => e.dataschema = Some(s()),
        _ => {
            let ext = match v {
                Y::Bool(b) => ExtValue::Bool(*b),
                Y::Number(n) if n.as_i64().is_some() => ExtValue::Integer(n.as_i64().unwrap()),
                _ => ExtValue::String(s()),
            };
            e.set_extension(k, ext);
        }
    }
}

fn error_kind(name: &str) -> ErrorKind {
    match name {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        "missingAttribute" => ErrorKind::MissingAttribute,
        _ => ErrorKind::Generic,
    }
}

#[test]
fn every_tck_case_passes() {
    let mut files: Vec<_> = std::fs::read_dir(tck_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let mut total = 0;
    let mut failures = Vec::new();
    for f in files {
        let doc: Y = serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for case in doc["tests"].as_sequence().unwrap() {
            total += 1;
            let name = serde_yaml::to_string(&case["name"])
                .unwrap()
                .trim()
                .to_owned();
            let expr = text(&case["expression"]);
            let want_err = case.get("error").and_then(Y::as_str).map(error_kind);
            let label = format!(
                "{} / {name}: {expr}",
                f.file_name().unwrap().to_string_lossy()
            );
            let compiled = match Cesql::compile(&expr) {
                Ok(c) => c,
                Err(e) => {
                    let kind = if e.missing_function {
                        ErrorKind::MissingFunction
                    } else {
                        ErrorKind::Parse
                    };
                    if want_err != Some(kind) {
                        failures.push(format!(
                            "{label}: compile error {e} ({kind}), wanted {want_err:?}"
                        ));
                    }
                    continue;
                }
            };
            let mut ev = Event::new("myId", "localhost.localdomain", "myType");
            if let Some(m) = case.get("event").and_then(Y::as_mapping) {
                ev.time = None;
                for (k, v) in m {
                    set(&mut ev, k.as_str().unwrap(), v);
                }
            }
            if let Some(m) = case.get("eventOverrides").and_then(Y::as_mapping) {
                for (k, v) in m {
                    set(&mut ev, k.as_str().unwrap(), v);
                }
            }
            let (value, err) = compiled.evaluate(&ev);
            if err != want_err {
                failures.push(format!("{label}: error {err:?}, wanted {want_err:?}"));
            }
            if let Some(want) = case.get("result") {
                let ok = match (want, &value) {
                    (Y::Bool(b), Value::Bool(v)) => b == v,
                    (Y::Number(n), Value::Int(v)) => n.as_i64() == Some(i64::from(*v)),
                    (Y::String(s), Value::Str(v)) => s == v,
                    _ => false,
                };
                if !ok {
                    failures.push(format!("{label}: got {value}, wanted {want:?}"));
                }
            }
        }
    }
    assert!(total >= 275, "only {total} cases found");
    assert!(
        failures.is_empty(),
        "{} of {total} TCK cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
