//! What an operator sees: readiness with the sinks' health, and JSON logs.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_after_start_up_and_reports_each_sinks_health() {
    let dir = tempfile::tempdir().unwrap();
    let good = Receiver::start(Behaviour::default()).await;
    // Nothing listens on port 1: every attempt fails to connect.
    let cfg = format!(
        "delivery: {{ retry: 100, backoffDelay: PT0.2S }}\nsubscriptions:\n{}{}",
        webhook_sub("good", "t", &good.url(), ""),
        webhook_sub("dead", "t", "http://127.0.0.1:1/hook", "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let (st, body) = send(&c, "GET", &ev.admin_url("/readyz"), &[], "").await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(
        v["sinks"],
        serde_json::json!([
            {"subscription": "dead", "sink": "unknown"},
            {"subscription": "good", "sink": "unknown"},
        ])
    );
    assert_eq!(publish(&c, &ev, "t", "r1", &[]).await, 202);
    let mut last = String::new();
    let mut settled = false;
    for _ in 0..100 {
        let (st, body) = send(&c, "GET", &ev.admin_url("/readyz"), &[], "").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        last = body;
        if st == 200 && v["sinks"][0]["sink"] == "unhealthy" && v["sinks"][1]["sink"] == "ready" {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(settled, "{last}");
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert!(
        v["sinks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{last}"
    );
    // A failing destination does not make the process unready; a wrong method is refused.
    let (st, body) = send(&c, "POST", &ev.admin_url("/readyz"), &[], "").await;
    assert_eq!(st, 405, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start_in(
        dir.path(),
        &["serve", "--log-format", "json"],
        &[
            ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
            ("EVMESH_SERVER__ADMIN", "127.0.0.1:0"),
            ("EVMESH_SERVER__TCP", "127.0.0.1:0"),
        ],
    );
    let c = client();
    // A refused event is logged too.
    let (st, _) = send(&c, "POST", &ev.url("/topics/t"), &[], "not an event").await;
    assert_eq!(st, 400);
    let log = ev.log();
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nlog:\n{log}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(messages.iter().any(|m| m == "evmesh ready"), "{log}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("http ingest listening on ")),
        "{log}"
    );
    // An unknown format is refused with the known ones.
    let out = std::process::Command::new(evmesh_bin())
        .args(["--log-format", "xml", "validate", "x.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'xml'") && err.contains("text, json"), "{err}");
}
