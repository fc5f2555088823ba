//! The connector compliance kit, run for the webhook sink (its Kafka run is in `kafka.rs`), and
//! the console sink's own test.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::compliance::{check_sink, WebhookHarness};
use evmesh_test_kit::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sink_passes_the_connector_compliance_kit() {
    let dir = tempfile::tempdir().unwrap();
    check_sink(&WebhookHarness, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sink_prints_each_event_as_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start(
        &dir.path().join("d"),
        "subscriptions:\n  - { name: show, topic: t, sink: { type: console } }\n",
    );
    let c = client();
    let sends = (0..50).map(|i| {
        let (c, ev) = (c.clone(), &ev);
        async move { publish(&c, ev, "t", &format!("c{i}"), &[("ce-subject", "s p")]).await }
    });
    for st in futures_util::future::join_all(sends).await {
        assert_eq!(st, 202);
    }
    assert!(
        wait_until(Duration::from_secs(20), || ev
            .stdout
            .lock()
            .unwrap()
            .lines()
            .count()
            == 50)
        .await,
        "stdout:\n{}",
        ev.stdout.lock().unwrap()
    );
    let out = ev.stdout.lock().unwrap().clone();
    let mut ids = Vec::new();
    for line in out.lines() {
        // Whole lines only, never two deliveries interleaved.
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["subject"], "s p");
        assert!(v["data"].as_str().unwrap().starts_with("data-c"));
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    // An unknown sink type is refused with the known ones.
    let (st, body) = send(
        &c,
        "PUT",
        &ev.admin_url("/subscriptions/x"),
        &[],
        r#"{"topic":"t","sink":{"type":"consol"}}"#,
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        body.contains("unknown sink type \\\"consol\\\" (known: console, "),
        "{body}"
    );
    for known in ["kafka", "rocketmq", "webhook"] {
        assert!(body.contains(known), "{known} missing from {body}");
    }
}
