//! Delivery semantics, end to end through the real binary and real HTTP receivers.
#![allow(clippy::unwrap_used)] // helpers of a test crate: a panic is a failed test

use evmesh_test_kit::*;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const FAST: &str = "backoffDelay: PT0.01S, backoffMax: PT0.05S, timeout: PT2S";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_publishes_are_all_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub("all", "load", &rx.url(), "    maxInFlight: 256\n")
    );
    let ev = Arc::new(Evmesh::start(&dir.path().join("d"), &cfg));
    let c = client();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (c, ev) = (c.clone(), ev.clone());
        tasks.push(tokio::spawn(async move {
            for i in (t..10_000).step_by(64) {
                assert_eq!(publish(&c, &ev, "load", &format!("e{i}"), &[]).await, 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || rx.count() >= 10_000).await,
        "only {} delivered",
        rx.count()
    );
    let mut ids = rx.ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10_000);
    let conns = *rx.connections.lock().unwrap();
    assert!(conns <= 256, "the webhook sink opened {conns} connections for 10,000 deliveries; keep-alive reuse is broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_and_dead_letters_follow_the_policy_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Recovers after 3 failures: delivered on attempt 4 of 6.
    let flaky = Receiver::start(Behaviour {
        fail_first: 3,
        fail_status: 500,
        ..Default::default()
    })
    .await;
    // Never recovers: 1 + retry(2) = 3 attempts, then the dead-letter sink gets it once.
    let down = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 500,
        ..Default::default()
    })
    .await;
    // 400 is not retried: 1 attempt.
    let bad = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 400,
        ..Default::default()
    })
    .await;
    let dlq = Receiver::start(Behaviour::default()).await;
    let dls = format!(
        "deadLetterSink: {{ type: webhook, url: \"{}\" }}",
        dlq.url()
    );
    let cfg = format!(
        "subscriptions:\n{}{}{}",
        webhook_sub(
            "flaky",
            "a",
            &flaky.url(),
            &format!("    delivery: {{ retry: 5, {FAST}, {dls} }}\n")
        ),
        webhook_sub(
            "down",
            "b",
            &down.url(),
            &format!("    delivery: {{ retry: 2, {FAST}, {dls} }}\n")
        ),
        webhook_sub(
            "bad",
            "c",
            &bad.url(),
            &format!("    delivery: {{ retry: 5, {FAST}, {dls} }}\n")
        ),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    assert_eq!(publish(&c, &ev, "a", "ea", &[]).await, 202);
    assert_eq!(publish(&c, &ev, "b", "eb", &[]).await, 202);
    assert_eq!(publish(&c, &ev, "c", "ec", &[]).await, 202);
    assert!(
        wait_until(WAIT, || flaky.count() == 1 && dlq.count() == 2).await,
        "dlq {}",
        dlq.count()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(flaky.attempts(), 4);
    assert_eq!(down.attempts(), 3);
    assert_eq!(bad.attempts(), 1);
    let dead = dlq.events();
    assert_eq!(dead.len(), 2, "each dead event arrives once");
    let by_id: HashMap<String, &Got> = dead
        .iter()
        .map(|g| (g.header("ce-id").unwrap(), g))
        .collect();
    let eb = by_id["eb"];
    assert_eq!(eb.header("ce-deadletterattempts").as_deref(), Some("3"));
    assert_eq!(eb.header("ce-deadletterstatus").as_deref(), Some("500"));
    assert_eq!(
        eb.header("ce-deadlettersubscription").as_deref(),
        Some("down")
    );
    assert!(eb.header("ce-deadletterreason").unwrap().contains("500"));
    assert_eq!(eb.body, "data-eb".as_bytes(), "the original data is kept");
    assert_eq!(
        by_id["ec"].header("ce-deadletterattempts").as_deref(),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_seconds_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The port stays ours while the receiver is down (refusing connections), so no other
    // test's server can answer in its place.
    let port = ReservedPort::new();
    let addr = port.addr;
    let url = format!("http://{addr}/hook");
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub("s", "t", &url, "    delivery: { retry: 100, backoffDelay: PT0.05S, backoffMax: PT0.5S, timeout: PT1S }\n")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    for i in 0..200 {
        assert_eq!(publish(&c, &ev, "t", &format!("e{i}"), &[]).await, 202);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rx = Receiver::start_reserved(port, Behaviour::default());
    let unique = |rx: &Receiver| {
        let mut ids = rx.ids();
        ids.sort();
        ids.dedup();
        ids
    };
    assert!(
        wait_until(WAIT, || unique(&rx).len() >= 200).await,
        "only {} distinct events of 200 arrived ({} requests)",
        unique(&rx).len(),
        rx.count()
    );
    let mut want: Vec<String> = (0..200).map(|i| format!("e{i}")).collect();
    want.sort();
    assert_eq!(unique(&rx), want, "exactly the published events arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Behaviour {
        fail_first: 1,
        fail_status: 429,
        retry_after: Some(1),
        ..Default::default()
    })
    .await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub(
            "s",
            "t",
            &rx.url(),
            &format!("    delivery: {{ retry: 3, {FAST} }}\n")
        )
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let t0 = Instant::now();
    assert_eq!(publish(&c, &ev, "t", "x", &[]).await, 202);
    assert!(wait_until(WAIT, || rx.count() == 1).await);
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "retried after {:?}, before Retry-After",
        t0.elapsed()
    );
    assert_eq!(rx.attempts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_events_are_published_to_the_reply_topic() {
    let dir = tempfile::tempdir().unwrap();
    let reply = r#"{"specversion":"1.0","id":"reply-1","source":"/fn","type":"order.priced","data":{"total":42}}"#;
    let func = Receiver::start(Behaviour {
        reply: Some(reply.into()),
        ..Default::default()
    })
    .await;
    let sink = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}{}",
        webhook_sub("fn", "orders", &func.url(), "    reply: priced\n"),
        webhook_sub("out", "priced", &sink.url(), ""),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    assert_eq!(publish(&c, &ev, "orders", "o1", &[]).await, 202);
    assert!(wait_until(WAIT, || sink.count() == 1).await);
    let got = &sink.events()[0];
    assert_eq!(got.header("ce-id").as_deref(), Some("reply-1"));
    assert_eq!(got.header("ce-type").as_deref(), Some("order.priced"));
    assert_eq!(&got.body[..], br#"{"total":42}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_key_keeps_each_key_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Behaviour {
        delay: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub(
            "s",
            "t",
            &rx.url(),
            "    ordering: key\n    maxInFlight: 32\n"
        )
    );
    let ev = Arc::new(Evmesh::start(&dir.path().join("d"), &cfg));
    let c = client();
    let mut tasks = Vec::new();
    for k in 0..8 {
        let (c, ev) = (c.clone(), ev.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let key = format!("k{k}");
                let st = publish(
                    &c,
                    &ev,
                    "t",
                    &format!("k{k}-{i:03}"),
                    &[("ce-partitionkey", &key)],
                )
                .await;
                assert_eq!(st, 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        wait_until(WAIT, || rx.count() == 320).await,
        "{}",
        rx.count()
    );
    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    for g in rx.events() {
        per_key
            .entry(g.header("ce-partitionkey").unwrap())
            .or_default()
            .push(g.header("ce-id").unwrap());
    }
    assert_eq!(per_key.len(), 8);
    for (k, ids) in per_key {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "key {k} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_route_events_to_matching_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let created = Receiver::start(Behaviour::default()).await;
    let pdfs = Receiver::start(Behaviour::default()).await;
    let everything = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}{}{}",
        webhook_sub("created", "orders", &created.url(),
            "    filters:\n      - exact: { type: order.created }\n      - prefix: { source: \"shop/\" }\n      - not: { exact: { subject: skip } }\n"),
        webhook_sub("pdfs", "orders", &pdfs.url(),
            "    filters:\n      - any: [ { suffix: { subject: \".pdf\" } }, { exact: { region: eu } } ]\n"),
        webhook_sub("all", "orders", &everything.url(), ""),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let cases: &[(&str, &str, &str, &str, Option<&str>)] = &[
        ("1", "order.created", "shop/eu", "a.pdf", None),
        ("2", "order.created", "web/x", "b", Some("eu")),
        ("3", "order.created", "shop/us", "skip", None),
        ("4", "order.paid", "shop/eu", "c", None),
    ];
    for (id, ty, source, subject, region) in cases {
        let mut h = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", *id),
            ("ce-type", *ty),
            ("ce-source", *source),
            ("ce-subject", *subject),
        ];
        if let Some(r) = region {
            h.push(("ce-region", r));
        }
        assert_eq!(
            send(&c, "POST", &ev.url("/topics/orders"), &h, "x").await.0,
            202
        );
    }
    assert!(wait_until(WAIT, || everything.count() == 4).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sorted = |r: &Receiver| {
        let mut v = r.ids();
        v.sort();
        v
    };
    assert_eq!(sorted(&created), vec!["1"]);
    assert_eq!(sorted(&pdfs), vec!["1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_subscriptions_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Behaviour::default()).await;
    let static_rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub("from-config", "t", &static_rx.url(), "")
    );
    let data = dir.path().join("d");
    let mut ev = Evmesh::start(&data, &cfg);
    let c = client();
    let body = format!(
        r#"{{"topic":"t","sink":{{"type":"webhook","url":"{}"}},"filters":[{{"exact":{{"type":"keep"}}}}]}}"#,
        rx.url()
    );
    let (st, resp) = send(
        &c,
        "PUT",
        &ev.admin_url("/subscriptions/api-sub"),
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(st, 201, "{resp}");
    let (st, _) = send(
        &c,
        "PUT",
        &ev.admin_url("/subscriptions/from-config"),
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(
        st, 409,
        "config-declared subscriptions are not changed through the API"
    );
    let (st, resp) = send(&c, "PUT", &ev.admin_url("/subscriptions/broken"), &[], r#"{"topic":"t","sink":{"type":"webhook","url":"ftp://x"},"delivery":{"backoffDelay":"5 s"}}"#).await;
    assert_eq!(st, 400);
    assert!(
        resp.contains("delivery.backoffDelay: invalid ISO-8601 duration"),
        "{resp}"
    );
    let (st, list) = send(&c, "GET", &ev.admin_url("/subscriptions"), &[], "").await;
    assert_eq!(st, 200);
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["api-sub", "from-config"]);

    assert_eq!(ev.terminate().code(), Some(0));
    let ev = Evmesh::start(&data, &cfg);
    let (st, one) = send(&c, "GET", &ev.admin_url("/subscriptions/api-sub"), &[], "").await;
    assert_eq!(st, 200, "the API-created subscription survived the restart");
    assert!(one.contains("\"origin\":\"api\""));
    let h = |ty: &'static str, id: &'static str| {
        vec![
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-type", ty),
            ("ce-source", "/s"),
        ]
    };
    send(&c, "POST", &ev.url("/topics/t"), &h("keep", "k1"), "").await;
    send(&c, "POST", &ev.url("/topics/t"), &h("drop", "d1"), "").await;
    assert!(wait_until(WAIT, || static_rx.count() == 2 && rx.count() == 1).await);
    assert_eq!(rx.ids(), vec!["k1"]);
    let (st, _) = send(
        &c,
        "DELETE",
        &ev.admin_url("/subscriptions/api-sub"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = send(&c, "GET", &ev.admin_url("/subscriptions/api-sub"), &[], "").await;
    assert_eq!(st, 404);
    let (st, _) = send(
        &c,
        "DELETE",
        &ev.admin_url("/subscriptions/from-config"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_list_keeps_events_until_redriven() {
    let dir = tempfile::tempdir().unwrap();
    // The first two requests are refused for good (422); later ones succeed.
    let rx = Receiver::start(Behaviour {
        fail_first: 2,
        fail_status: 422,
        ..Default::default()
    })
    .await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub(
            "s",
            "t",
            &rx.url(),
            &format!("    delivery: {{ retry: 3, {FAST} }}\n")
        )
    );
    let data = dir.path().join("d");
    let mut ev = Evmesh::start(&data, &cfg);
    let c = client();
    assert_eq!(publish(&c, &ev, "t", "a", &[]).await, 202);
    assert!(wait_until(WAIT, || rx.attempts() == 1).await);
    assert_eq!(publish(&c, &ev, "t", "b", &[]).await, 202);
    assert!(wait_until(WAIT, || rx.attempts() == 2).await);
    let list = || async {
        let (st, body) = send(
            &c,
            "GET",
            &ev.admin_url("/subscriptions/s/deadletters"),
            &[],
            "",
        )
        .await;
        assert_eq!(st, 200);
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = list().await;
        if dead.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 2);
    assert!(dead[0]["deadletterreason"]
        .as_str()
        .unwrap()
        .contains("422"));
    // The list survives a restart.
    assert_eq!(ev.terminate().code(), Some(0));
    ev = Evmesh::start(&data, &cfg);
    let (st, body) = send(
        &c,
        "GET",
        &ev.admin_url("/subscriptions/s/deadletters"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (st, body) = send(
        &c,
        "POST",
        &ev.admin_url("/subscriptions/s/redrive"),
        &[],
        "",
    )
    .await;
    assert_eq!((st, body.as_str()), (200, r#"{"redriven":2}"#));
    assert!(wait_until(WAIT, || rx.count() == 2).await);
    let mut ids = rx.ids();
    ids.sort();
    assert_eq!(ids, vec!["a", "b"]);
    assert!(rx
        .events()
        .iter()
        .all(|g| g.header("ce-deadletterreason").is_none()));
    let (_, body) = send(
        &c,
        "GET",
        &ev.admin_url("/subscriptions/s/deadletters"),
        &[],
        "",
    )
    .await;
    assert_eq!(body, "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_specific_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start_with_env(
        &dir.path().join("d"),
        "",
        &[("EVMESH_SERVER__MAX_BODY_BYTES", "1000")],
    );
    let c = client();
    let ce = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    let (st, body) = send(&c, "POST", &ev.url("/topics/t"), &ce, vec![b'x'; 2000]).await;
    assert_eq!(st, 413, "{body}");
    assert!(body.contains("1000-byte limit"));
    let (st, _) = send(&c, "GET", &ev.url("/topics/t"), &[], "").await;
    assert_eq!(st, 405);
    let (st, _) = send(
        &c,
        "POST",
        &ev.url("/topics/t"),
        &[("content-type", "application/cloudevents+protobuf")],
        "x",
    )
    .await;
    assert_eq!(st, 415);
    let (st, body) = send(
        &c,
        "POST",
        &ev.url("/topics/t"),
        &[("content-type", "application/cloudevents+json")],
        "{not json",
    )
    .await;
    assert_eq!(st, 400);
    assert!(body.contains("malformed JSON"), "{body}");
    let (st, body) = send(
        &c,
        "POST",
        &ev.url("/topics/t"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", "t"),
            ("ce-source", "%FF%FE"),
        ],
        "",
    )
    .await;
    assert_eq!(st, 400);
    assert!(body.contains("not valid UTF-8"), "{body}");
    let (st, body) = send(&c, "POST", &ev.url("/topics/__internal"), &ce, "").await;
    assert_eq!(st, 400, "{body}");
    let (st, _) = send(&c, "POST", &ev.url("/nope"), &ce, "").await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_retry_exits_cleanly_and_redelivers_without_dead_lettering() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 503,
        ..Default::default()
    })
    .await;
    let dlq = Receiver::start(Behaviour::default()).await;
    let data = dir.path().join("d");
    let cfg_for = |url: &str| {
        format!(
            "subscriptions:\n{}",
            webhook_sub("s", "t", url, &format!(
                "    delivery: {{ retry: 2, backoffDelay: PT20S, backoffMax: PT20S, deadLetterSink: {{ type: webhook, url: \"{}\" }} }}\n",
                dlq.url()
            ))
        )
    };
    let mut ev = Evmesh::start(&data, &cfg_for(&failing.url()));
    let c = client();
    assert_eq!(publish(&c, &ev, "t", "x", &[]).await, 202);
    assert!(wait_until(WAIT, || failing.attempts() == 1).await);
    let t0 = Instant::now();
    assert_eq!(ev.terminate().code(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "shutdown waited for the backoff"
    );
    let ok = Receiver::start(Behaviour::default()).await;
    let _ev = Evmesh::start(&data, &cfg_for(&ok.url()));
    assert!(
        wait_until(WAIT, || ok.count() == 1).await,
        "the interrupted event was not redelivered"
    );
    assert_eq!(dlq.count(), 0, "shutdown must not dead-letter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscription_never_holds_back_another() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 503,
        ..Default::default()
    })
    .await;
    let slow = Receiver::start(Behaviour {
        delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let healthy = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}{}{}",
        webhook_sub("stuck", "t", &stuck.url(), "    maxInFlight: 4\n    delivery: { retry: 1000, backoffDelay: PT1S, backoffMax: PT1S }\n"),
        webhook_sub("slow", "t", &slow.url(), "    maxInFlight: 4\n    delivery: { timeout: PT30S }\n"),
        webhook_sub("healthy", "t", &healthy.url(), ""),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    for i in 0..200 {
        assert_eq!(publish(&c, &ev, "t", &format!("e{i}"), &[]).await, 202);
    }
    assert!(
        wait_until(Duration::from_secs(4), || healthy.count() == 200).await,
        "healthy got {}",
        healthy.count()
    );
    assert!(
        stuck.count() == 0 && slow.count() == 0,
        "the other two are still stuck, as designed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_batch_mode_posts_cloudevents_batches_and_retries_them_per_event() {
    let dir = tempfile::tempdir().unwrap();
    // The first batch is refused with 503: its events are retried, none is lost.
    let rx = Receiver::start(Behaviour {
        fail_first: 1,
        fail_status: 503,
        ..Default::default()
    })
    .await;
    let cfg = format!(
        "subscriptions:\n  - name: b\n    topic: t\n    maxInFlight: 256\n    sink: {{ type: webhook, url: \"{}\", mode: batch, maxBatch: 50, linger: PT0.02S }}\n    delivery: {{ retry: 5, backoffDelay: PT0.05S }}\n",
        rx.url()
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    publish_keyed(&c, &ev, "t", 0..300).await;
    let ids = |rx: &Receiver| {
        let mut out = Vec::new();
        for g in rx.events() {
            assert_eq!(
                g.header("content-type").as_deref(),
                Some("application/cloudevents-batch+json")
            );
            let batch: Vec<Value> = serde_json::from_slice(&g.body).unwrap();
            assert!(!batch.is_empty() && batch.len() <= 50, "{}", batch.len());
            out.extend(batch.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        }
        out
    };
    assert!(
        wait_until(WAIT, || {
            let mut all = ids(&rx);
            all.sort();
            all.dedup();
            all.len() == 300
        })
        .await
    );
    let requests = rx.count();
    assert!(
        requests < 100,
        "{requests} requests for 300 events: not batched"
    );
    assert!(rx.attempts() > rx.count(), "the refused batch was retried");
    // Options of batch mode are refused on other modes.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "subscriptions:\n  - name: x\n    topic: t\n    sink: { type: webhook, url: \"http://127.0.0.1:1/\", maxBatch: 5 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(evmesh_bin())
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("subscriptions[0].sink.maxBatch: only applies with mode: batch"),
        "{text}"
    );
}
