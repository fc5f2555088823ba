//! `docs/openapi.yaml` and the admin API agree both ways: every documented operation is served
//! by a running evmesh, and every route of the admin API's router is documented.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(p)
}

/// (METHOD, path with every parameter written `{}`).
type Op = (String, String);

fn documented() -> BTreeSet<Op> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("docs/openapi.yaml")).unwrap()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        let normalized: Vec<String> = path
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "{}".to_owned()
                } else {
                    s.to_owned()
                }
            })
            .collect();
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if method == "parameters" {
                continue;
            }
            assert!(
                op["responses"].as_mapping().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no responses"
            );
            ops.insert((method.to_uppercase(), normalized.join("/")));
        }
    }
    ops
}

/// The routes of the admin router, read from its `match` arms:
/// `(Method::GET | Method::POST, ["subscriptions", name, "explain"])`.
fn served() -> BTreeSet<Op> {
    let src = std::fs::read_to_string(repo("runtime/bin/src/admin.rs")).unwrap();
    let mut ops = BTreeSet::new();
    for line in src.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("(Method::") else {
            continue;
        };
        let (methods, rest) = rest.split_once(", [").unwrap();
        let (segments, _) = rest.split_once("])").unwrap();
        let path: Vec<String> = segments
            .split(", ")
            .map(|s| match s.strip_prefix('"') {
                Some(lit) => lit.trim_end_matches('"').to_owned(),
                None => "{}".to_owned(),
            })
            .collect();
        for m in methods.split(" | Method::") {
            ops.insert((m.to_owned(), format!("/{}", path.join("/"))));
        }
    }
    assert!(ops.len() > 10, "the router's arms were not found: {ops:?}");
    ops
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_a_route() {
    let doc = documented();
    let srv = served();
    let undocumented: Vec<&Op> = srv.difference(&doc).collect();
    let unserved: Vec<&Op> = doc.difference(&srv).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/openapi.yaml: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in docs/openapi.yaml but not served: {unserved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_on_a_running_evmesh() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub("s", "t", "http://127.0.0.1:1/hook", "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    for (method, path) in documented() {
        let mut params = ["s", "t"].iter();
        let url: Vec<String> = path
            .split('/')
            .map(|s| {
                if s == "{}" {
                    // {name} or {topic} first, then a dead letter's {id}.
                    params.next().map_or("x", |p| *p).to_owned()
                } else {
                    s.to_owned()
                }
            })
            .collect();
        let url = url.join("/").replace("/topics/s/", "/topics/t/");
        let (status, body) = send(&c, &method, &ev.admin_url(&url), &[], "").await;
        assert!(
            !body.contains("no admin route") && status != 405,
            "{method} {url} is not served: {status} {body}"
        );
    }
}
