//! The commands for a person at a terminal, run as a person would, against a running evmesh.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use std::process::Output;
use std::time::Duration;

async fn evmesh(args: &[&str]) -> Output {
    tokio::process::Command::new(evmesh_bin())
        .args(args)
        .env_remove("EVMESH_URL")
        .env_remove("EVMESH_ADMIN_URL")
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_tail_and_list_subscriptions_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub("audit", "orders", &rx.url(), "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let server = ev.url("");
    let admin = ev.admin_url("");

    let out = evmesh(&[
        "publish",
        "--topic",
        "orders",
        "--type",
        "order.created",
        "--id",
        "o1",
        "--data",
        r#"{"n":1}"#,
        "--ext",
        "partitionkey=k1",
        "--server",
        &server,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "published o1 to orders at offset 0\n");
    assert!(wait_until(Duration::from_secs(20), || rx.count() == 1).await);
    let got = &rx.events()[0];
    assert_eq!(got.header("ce-type").as_deref(), Some("order.created"));
    assert_eq!(got.header("ce-source").as_deref(), Some("/evmesh/cli"));
    assert_eq!(got.header("ce-partitionkey").as_deref(), Some("k1"));
    assert_eq!(
        got.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(got.body, r#"{"n":1}"#.as_bytes());

    // A second event from a file, with a generated id.
    let file = dir.path().join("data.json");
    std::fs::write(&file, r#"{"n":2}"#).unwrap();
    let at_file = format!("@{}", file.display());
    let out = evmesh(&[
        "publish",
        "--topic",
        "orders",
        "--type",
        "order.created",
        "--data",
        &at_file,
        "--server",
        &server,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Tail from the start: the two stored events, then one published while it waits.
    let tail = tokio::process::Command::new(evmesh_bin())
        .args([
            "tail", "--topic", "orders", "--from", "earliest", "--count", "3", "--admin", &admin,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c = client();
    assert_eq!(publish(&c, &ev, "orders", "o3", &[]).await, 202);
    let out = tokio::time::timeout(Duration::from_secs(20), tail.wait_with_output())
        .await
        .expect("tail did not stop after --count events")
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "o1");
    assert_eq!(lines[0]["data"], serde_json::json!({"n": 1}));
    assert_eq!(lines[1]["data"], serde_json::json!({"n": 2}));
    assert_eq!(lines[2]["id"], "o3");

    let out = evmesh(&["subscriptions", "list", "--admin", &admin]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let rows: Vec<Vec<&str>> = listing
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], vec!["NAME", "TOPIC", "SINK", "ORIGIN", "STATE"]);
    assert_eq!(rows[1][..3], ["audit", "orders", "webhook"], "{listing}");
    assert_eq!(rows[1][3], rx.url(), "{listing}");
    assert_eq!(rows[1][4..], ["config", "running"], "{listing}");

    // Pause, resume, and replay from the start with progress until caught up.
    let out = evmesh(&["subscriptions", "pause", "audit", "--admin", &admin]).await;
    assert_eq!(
        text(&out.stdout),
        "audit: paused\n",
        "{}",
        text(&out.stderr)
    );
    let out = evmesh(&["subscriptions", "pause", "audit", "--admin", &admin]).await;
    assert_eq!(text(&out.stdout), "audit: already paused\n");
    let out = evmesh(&["subscriptions", "resume", "audit", "--admin", &admin]).await;
    assert_eq!(text(&out.stdout), "audit: running\n");
    let before = rx.count();
    let out = evmesh(&[
        "subscriptions",
        "replay",
        "audit",
        "--from",
        "earliest",
        "--admin",
        &admin,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "audit replayed orders from offset 0; it has caught up\n"
    );
    assert!(
        text(&out.stderr).lines().last().unwrap().ends_with("] 3/3"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(rx.count(), before + 3);

    // Errors are evmesh's own message, and a non-zero exit.
    let out = evmesh(&[
        "publish", "--topic", "__x", "--type", "t", "--server", &server,
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not published (400 Bad Request)"),
        "{}",
        text(&out.stderr)
    );
    let out = evmesh(&["subscriptions", "list", "--admin", "http://127.0.0.1:1"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is it running?"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadletters_redrive_shows_progress_until_every_event_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver fails the first 40 requests: with no retries, 40 events are dead-lettered.
    let rx = Receiver::start(Behaviour {
        fail_first: 40,
        fail_status: 503,
        ..Default::default()
    })
    .await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub("flaky", "t", &rx.url(), "    delivery: { retry: 0 }\n")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    for i in 0..40 {
        assert_eq!(publish(&c, &ev, "t", &format!("d{i}"), &[]).await, 202);
    }
    assert_eq!(dead_letters(&c, &ev, "flaky", 40).await.len(), 40);
    let admin = ev.admin_url("");

    let out = evmesh(&["deadletters", "list", "flaky", "--admin", &admin]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert_eq!(listing.lines().count(), 41, "{listing}");
    assert!(listing.lines().nth(1).unwrap().contains("503"), "{listing}");

    let out = evmesh(&["deadletters", "redrive", "flaky", "--admin", &admin]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .starts_with("re-drove 40 events of flaky's dead-letter list; every one is finished"),
        "{}",
        text(&out.stdout)
    );
    // Without a terminal, the bar is a line per tenth; the last says all 40 are done.
    let progress = text(&out.stderr);
    assert!(
        progress.lines().last().unwrap().ends_with("] 40/40"),
        "{progress}"
    );
    // Finished means delivered here: the receiver took every one.
    assert_eq!(rx.count(), 40);
    let mut ids = rx.ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);

    let out = evmesh(&["deadletters", "redrive", "nope", "--admin", &admin]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no subscription named"),
        "{}",
        text(&out.stderr)
    );
}
