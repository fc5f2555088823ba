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

/// The value of the sample `series` (name and labels, exactly) in a Prometheus scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_ingest_deliveries_dead_letters_lag_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let ok = Receiver::start(Behaviour::default()).await;
    let bad = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 500,
        ..Default::default()
    })
    .await;
    let cfg = format!(
        "server: {{ maxBodyBytes: 2000 }}\nsubscriptions:\n{}{}",
        webhook_sub("ok", "t", &ok.url(), ""),
        webhook_sub(
            "bad",
            "t",
            &bad.url(),
            "    delivery: { retry: 1, backoffDelay: PT0.01S }\n"
        )
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    for i in 0..5 {
        assert_eq!(publish(&c, &ev, "t", &format!("m{i}"), &[]).await, 202);
    }
    let (st, _) = send(&c, "POST", &ev.url("/topics/t"), &[], "not an event").await;
    assert_eq!(st, 400);
    let big = "x".repeat(5000);
    let (st, _) = send(
        &c,
        "POST",
        &ev.url("/topics/t"),
        &[("content-type", "application/cloudevents+json")],
        big,
    )
    .await;
    assert_eq!(st, 413);
    let (st, _) = send(&c, "POST", &ev.url("/topics/__x"), &[], "").await;
    assert_eq!(st, 400);
    assert!(wait_until(Duration::from_secs(30), || ok.count() == 5).await);
    dead_letters(&c, &ev, "bad", 5).await;

    let mut text = String::new();
    let mut settled = false;
    for _ in 0..100 {
        let resp = c
            .request(
                http::Request::get(ev.admin_url("/metrics"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        text = String::from_utf8(body.to_vec()).unwrap();
        // The streams set their lag as they record progress (every 100 ms).
        if sample(
            &text,
            r#"evmesh_subscription_lag_events{subscription="ok",topic="t"}"#,
        ) == Some(0.0)
            && sample(
                &text,
                r#"evmesh_subscription_lag_events{subscription="bad",topic="t"}"#,
            ) == Some(0.0)
        {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "the lag never reached 0:\n{text}");
    let want = [
        (r#"evmesh_events_accepted_total{topic="t"}"#, 5.0),
        (r#"evmesh_events_rejected_total{reason="malformed"}"#, 1.0),
        (r#"evmesh_events_rejected_total{reason="too_large"}"#, 1.0),
        (
            r#"evmesh_events_rejected_total{reason="invalid_topic"}"#,
            1.0,
        ),
        (
            r#"evmesh_deliveries_total{subscription="ok",outcome="delivered"}"#,
            5.0,
        ),
        (
            r#"evmesh_deliveries_total{subscription="bad",outcome="dead_lettered"}"#,
            5.0,
        ),
        (r#"evmesh_dead_letters_total{subscription="bad"}"#, 5.0),
        (r#"evmesh_dead_letter_depth{subscription="bad"}"#, 5.0),
        (r#"evmesh_dead_letter_depth{subscription="ok"}"#, 0.0),
        // Two attempts each (retry: 1): the first is retried, the second is the last.
        (r#"evmesh_delivery_retries_total{subscription="bad"}"#, 5.0),
        (
            r#"evmesh_delivery_attempt_duration_seconds_count{subscription="bad"}"#,
            10.0,
        ),
        (
            r#"evmesh_delivery_attempt_duration_seconds_count{subscription="ok"}"#,
            5.0,
        ),
        (r#"evmesh_store_segments{topic="t"}"#, 1.0),
        (
            r#"evmesh_subscription_oldest_pending_age_seconds{subscription="ok",topic="t"}"#,
            0.0,
        ),
    ];
    for (series, value) in want {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(sample(&text, r#"evmesh_store_size_bytes{topic="t"}"#).unwrap() > 0.0);
    assert!(sample(&text, r#"evmesh_connections_total{protocol="http"}"#).unwrap() >= 1.0);
    assert!(sample(&text, r#"evmesh_connections_total{protocol="admin"}"#).unwrap() >= 1.0);
    assert!(text.contains("# TYPE evmesh_delivery_attempt_duration_seconds histogram"));
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_replay_and_dead_letters_inspected_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}{}",
        webhook_sub("p", "t", &rx.url(), ""),
        webhook_sub(
            "d",
            "t",
            "http://127.0.0.1:1/hook",
            "    delivery: { retry: 0 }\n"
        )
    );
    let data = dir.path().join("d");
    let mut ev = Evmesh::start(&data, &cfg);
    let c = client();
    let post = |ev: &Evmesh, path: &str| {
        let url = ev.admin_url(path);
        let c = c.clone();
        async move { send(&c, "POST", &url, &[], "").await }
    };
    for i in 0..5 {
        assert_eq!(publish(&c, &ev, "t", &format!("e{i}"), &[]).await, 202);
    }
    assert!(wait_until(Duration::from_secs(20), || rx.count() == 5).await);

    let (st, body) = post(&ev, "/subscriptions/p/pause").await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains(r#""state":"paused""#) && body.contains(r#""changed":true"#),
        "{body}"
    );
    for i in 5..10 {
        assert_eq!(publish(&c, &ev, "t", &format!("e{i}"), &[]).await, 202);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 5, "a paused subscription delivers nothing");
    // Paused survives a restart.
    assert!(ev.terminate().success());
    ev = Evmesh::start(&data, &cfg);
    let (_, body) = send(&c, "GET", &ev.admin_url("/subscriptions/p"), &[], "").await;
    assert!(body.contains(r#""state":"paused""#), "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.count(), 5);

    let (st, body) = post(&ev, "/subscriptions/p/resume").await;
    assert_eq!(st, 200, "{body}");
    assert!(wait_until(Duration::from_secs(20), || rx.count() == 10).await);
    let mut ids = rx.ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each event once");

    // Replay from an offset: e2.. are delivered again.
    let (st, body) = post(&ev, "/subscriptions/p/replay?from=2").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(r#""from":2"#), "{body}");
    assert!(wait_until(Duration::from_secs(20), || rx.count() == 18).await);
    let ids = rx.ids();
    for i in 0..10 {
        let want = if i >= 2 { 2 } else { 1 };
        let id = format!("e{i}");
        assert_eq!(
            ids.iter().filter(|x| **x == id).count(),
            want,
            "{id}: {ids:?}"
        );
    }
    // Replay from a time: the first event whose `time` is at or after it.
    assert_eq!(
        publish(&c, &ev, "t", "late", &[("ce-time", "2030-01-01T00:00:00Z")]).await,
        202
    );
    assert!(wait_until(Duration::from_secs(20), || rx.count() == 19).await);
    let (st, body) = post(
        &ev,
        "/subscriptions/p/replay?from=2029-12-31T00:00:00%2B00:00",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(r#""from":10"#), "{body}");
    assert!(wait_until(Duration::from_secs(20), || rx.count() == 20).await);
    assert_eq!(rx.ids().last().map(String::as_str), Some("late"));
    for bad in [
        "/subscriptions/p/replay",
        "/subscriptions/p/replay?from=yesterday",
    ] {
        let (st, body) = post(&ev, bad).await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    let (st, _) = post(&ev, "/subscriptions/nope/pause").await;
    assert_eq!(st, 404);

    // Dead letters: one inspected by id, then the list purged.
    let dl = dead_letters(&c, &ev, "d", 11).await;
    assert_eq!(dl.len(), 11);
    let (st, body) = send(
        &c,
        "GET",
        &ev.admin_url("/subscriptions/d/deadletters/e3"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["id"], "e3");
    assert!(
        e["deadletterreason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{body}"
    );
    let (st, _) = send(
        &c,
        "GET",
        &ev.admin_url("/subscriptions/d/deadletters/zz"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 404);
    let (st, body) = send(
        &c,
        "DELETE",
        &ev.admin_url("/subscriptions/d/deadletters"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, r#"{"purged":11}"#);
    let (_, body) = send(
        &c,
        "GET",
        &ev.admin_url("/subscriptions/d/deadletters"),
        &[],
        "",
    )
    .await;
    assert_eq!(body, "[]");
}
