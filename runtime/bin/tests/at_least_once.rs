//! The at-least-once path under pressure, against the real binary: the concurrency bound, what
//! an attempt's timeout covers, offsets after a power loss, and events the store cannot take.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_every_path_of_a_subscription() {
    let slow = || {
        Receiver::start(Behaviour {
            delay: Duration::from_millis(150),
            ..Default::default()
        })
    };
    let (live, late) = (slow().await, slow().await);
    let refusing = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 400,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "subscriptions:\n{}{}",
        webhook_sub("live", "t", &live.url(), "    maxInFlight: 1\n"),
        webhook_sub(
            "dead",
            "t",
            &refusing.url(),
            "    maxInFlight: 1\n    delivery: { retry: 0 }\n"
        ),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    // Twenty at once: the shared reader hands them over in one batch.
    let sends = (0..20).map(|i| {
        let (c, ev) = (c.clone(), &ev);
        async move { publish(&c, ev, "t", &format!("e{i}"), &[]).await }
    });
    for st in futures_util::future::join_all(sends).await {
        assert_eq!(st, 202);
    }
    // A subscription created now from the start of the log catches up on its own reads.
    let body = format!(
        r#"{{"topic":"t","start":"earliest","maxInFlight":1,"sink":{{"type":"webhook","url":"{}"}}}}"#,
        late.url()
    );
    let (st, _) = send(&c, "PUT", &ev.admin_url("/subscriptions/late"), &[], body).await;
    assert_eq!(st, 201);
    assert!(wait_until(WAIT, || live.count() == 20 && late.count() == 20).await);
    assert_eq!(live.max_concurrency(), 1, "shared reader path");
    assert_eq!(late.max_concurrency(), 1, "catch-up path");
    // Re-drive: the dead-letter list goes back out through the same bound.
    assert_eq!(dead_letters(&c, &ev, "dead", 20).await.len(), 20);
    let before = refusing.attempts();
    let (st, _) = send(
        &c,
        "POST",
        &ev.admin_url("/subscriptions/dead/redrive"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 200);
    assert!(wait_until(WAIT, || refusing.attempts() >= before + 20).await);
    assert_eq!(refusing.max_concurrency(), 1, "re-drive path");
}

/// 2,560 deliveries at once to a webhook the sink keeps at most 256 connections to: ten waves
/// of 200 ms, so the last ones wait for a connection longer than the attempt's timeout (1.5 s),
/// while no request itself takes longer than 200 ms. None may be failed for the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_pooled_connection_is_not_part_of_the_attempt() {
    const N: usize = 2560;
    let rx = Receiver::start(Behaviour {
        delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub(
            "s",
            "t",
            &rx.url(),
            "    maxInFlight: 2560\n    delivery: { retry: 0, timeout: PT1.5S }\n"
        ),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let mut batch = String::from("[");
    for i in 0..N {
        if i > 0 {
            batch.push(',');
        }
        batch.push_str(&format!(
            r#"{{"specversion":"1.0","id":"p{i}","source":"/t","type":"t"}}"#
        ));
    }
    batch.push(']');
    let (st, _) = send(
        &c,
        "POST",
        &ev.url("/topics/t"),
        &[("content-type", "application/cloudevents-batch+json")],
        batch,
    )
    .await;
    assert_eq!(st, 202);
    assert!(
        wait_until(WAIT, || rx.count() == N).await,
        "{} delivered; log:\n{}",
        rx.count(),
        ev.log()
    );
    let (_, list) = send(
        &c,
        "GET",
        &ev.admin_url("/subscriptions/s/deadletters"),
        &[],
        "",
    )
    .await;
    assert_eq!(list.trim(), "[]");
    assert!(rx.max_concurrency() <= 256);
}

/// Keeps the first `keep` records of a segment, as if the page cache holding the rest had been
/// lost with the power.
fn cut_segment(path: &std::path::Path, keep: usize) {
    let bytes = std::fs::read(path).unwrap();
    let mut pos = 8;
    for _ in 0..keep {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
    }
    std::fs::write(path, &bytes[..pos]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_new_events_start_past_every_saved_cursor() {
    let rx = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let cfg = format!(
        "store: {{ fsync: never }}\nsubscriptions:\n{}",
        webhook_sub("s", "t", &rx.url(), "")
    );
    let mut ev = Evmesh::start(&data, &cfg);
    let c = client();
    for i in 0..30 {
        assert_eq!(publish(&c, &ev, "t", &format!("old{i}"), &[]).await, 202);
    }
    assert!(wait_until(WAIT, || rx.count() == 30).await);
    // The cursor (30) is saved every 100 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ev.kill9();
    let seg = std::fs::read_dir(data.join("topics/t"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    cut_segment(&seg, 10);
    let ev = Evmesh::start(&data, &cfg);
    for i in 0..5 {
        assert_eq!(publish(&c, &ev, "t", &format!("new{i}"), &[]).await, 202);
    }
    assert!(
        wait_until(WAIT, || rx.count() == 35).await,
        "new events after the lost writes were not delivered; log:\n{}",
        ev.log()
    );
    assert!(ev.log().contains("the log ends before a saved cursor"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_to_store_dead_letters_instead_of_looping() {
    let big = format!(
        r#"{{"specversion":"1.0","id":"r","source":"/fn","type":"reply","data":"{}"}}"#,
        "x".repeat(8192)
    );
    let rx = Receiver::start(Behaviour {
        reply: Some(big),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "store: {{ maxRecordBytes: 4096 }}\nsubscriptions:\n{}",
        webhook_sub(
            "s",
            "t",
            &rx.url(),
            "    reply: replies\n    delivery: { retry: 2, backoffDelay: PT0.01S }\n"
        )
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    for i in 0..3 {
        assert_eq!(publish(&c, &ev, "t", &format!("q{i}"), &[]).await, 202);
    }
    let dead = dead_letters(&c, &ev, "s", 3).await;
    assert_eq!(dead.len(), 3, "log:\n{}", ev.log());
    for d in &dead {
        let reason = d["deadletterreason"].as_str().unwrap();
        assert!(reason.contains("reply cannot be stored"), "{reason}");
    }
    // Each was sent once: the reply problem is not retried.
    assert_eq!(rx.count(), 3);
    // An ordinary publish over the limit is refused up front.
    let (st, msg) = send(
        &c,
        "POST",
        &ev.url("/topics/t"),
        &[("content-type", "application/cloudevents+json")],
        big_event(8192),
    )
    .await;
    assert_eq!(st, 413, "{msg}");
}

fn big_event(n: usize) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"b","source":"/t","type":"t","data":"{}"}}"#,
        "y".repeat(n)
    )
}
