//! Crash safety: `kill -9` mid-stream and damaged segments, through the real binary.
#![allow(clippy::unwrap_used)] // helpers of a test crate: a panic is a failed test

use evmesh_test_kit::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_stream_loses_no_acknowledged_event() {
    const TOTAL: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub(
            "s",
            "t",
            &rx.url(),
            "    maxInFlight: 128\n    start: earliest\n"
        )
    );
    let mut ev = Evmesh::start(&data, &cfg);
    let c = client();
    let acked: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let url = ev.url("/topics/t");
    let mut tasks = Vec::new();
    for t in 0..32 {
        let (c, acked, killed, sent, url) = (
            c.clone(),
            acked.clone(),
            killed.clone(),
            sent.clone(),
            url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in (t..TOTAL).step_by(32) {
                if killed.load(Ordering::SeqCst) {
                    return;
                }
                let id = format!("e{i}");
                let h = [
                    ("ce-specversion", "1.0"),
                    ("ce-id", id.as_str()),
                    ("ce-source", "/k"),
                    ("ce-type", "t"),
                ];
                let req = http::Request::post(&url);
                let req = h.iter().fold(req, |r, (k, v)| r.header(*k, *v));
                let req = req
                    .body(http_body_util::Full::new(bytes::Bytes::from(id.clone())))
                    .unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
                if let Ok(resp) = c.request(req).await {
                    if resp.status() == 202 {
                        acked.lock().unwrap().insert(i);
                    }
                }
            }
        }));
    }
    // Kill while publishing and delivering are both under way.
    assert!(
        wait_until(Duration::from_secs(60), || acked.lock().unwrap().len()
            >= 3_000)
        .await
    );
    ev.kill9();
    killed.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let before = acked.lock().unwrap().len();
    let delivered_before = rx.count();
    assert!(
        delivered_before < TOTAL,
        "the kill came too late to prove anything"
    );

    let ev = Evmesh::start(&data, &cfg);
    // Publish what was never acknowledged, so all TOTAL end up acknowledged.
    let missing: Vec<usize> = (0..TOTAL)
        .filter(|i| !acked.lock().unwrap().contains(i))
        .collect();
    for chunk in missing.chunks(64) {
        let mut fs = Vec::new();
        for i in chunk {
            let (c, ev_url, i) = (c.clone(), ev.url("/topics/t"), *i);
            fs.push(tokio::spawn(async move {
                let id = format!("e{i}");
                let h = [
                    ("ce-specversion", "1.0"),
                    ("ce-id", id.as_str()),
                    ("ce-source", "/k"),
                    ("ce-type", "t"),
                ];
                send(&c, "POST", &ev_url, &h, id.clone()).await.0
            }));
        }
        for f in fs {
            assert_eq!(f.await.unwrap(), 202);
        }
    }
    assert!(
        wait_until(Duration::from_secs(90), || rx
            .ids()
            .into_iter()
            .collect::<HashSet<_>>()
            .len()
            >= TOTAL)
        .await,
        "delivered {} distinct of {TOTAL}",
        rx.ids().into_iter().collect::<HashSet<_>>().len()
    );
    let ids = rx.ids();
    let distinct: HashSet<&String> = ids.iter().collect();
    for i in acked.lock().unwrap().iter() {
        assert!(
            distinct.contains(&format!("e{i}")),
            "acknowledged e{i} was lost"
        );
    }
    println!(
        "kill -9 after {before} acknowledged publishes ({delivered_before} delivered): {} deliveries of {TOTAL} events, {} duplicates",
        ids.len(),
        ids.len() - distinct.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_segment_is_quarantined_reported_and_found_by_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "store: {{ segmentBytes: 4096, retention: PT1H }}\nsubscriptions:\n{}",
        webhook_sub("s", "t", &rx.url(), "")
    );
    let mut ev = Evmesh::start(&data, &cfg);
    let c = client();
    for i in 0..100 {
        assert_eq!(publish(&c, &ev, "t", &format!("e{i}"), &[]).await, 202);
    }
    assert!(wait_until(Duration::from_secs(30), || rx.count() == 100).await);
    assert_eq!(ev.terminate().code(), Some(0));

    let seg = data.join("topics/t/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[200] ^= 0x5a;
    std::fs::write(&seg, &bytes).unwrap();

    let out = std::process::Command::new(evmesh_bin())
        .args(["fsck", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("CORRUPT") && text.contains("00000000000000000000.log"),
        "{text}"
    );

    let ev = Evmesh::start(&data, &cfg);
    assert!(
        ev.log().contains("corrupt segment quarantined"),
        "{}",
        ev.log()
    );
    let (st, health) = send(&c, "GET", &ev.admin_url("/healthz"), &[], "").await;
    assert_eq!(st, 200);
    assert!(health.contains("00000000000000000000.log"), "{health}");
    assert_eq!(publish(&c, &ev, "t", "after", &[]).await, 202);
    assert!(
        wait_until(Duration::from_secs(30), || rx
            .ids()
            .contains(&"after".to_string()))
        .await
    );
    let out = std::process::Command::new(evmesh_bin())
        .args(["fsck", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("QUARANTINED"));
}
