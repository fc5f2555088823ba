//! The CLI: `validate` and start-up errors.
#![allow(clippy::unwrap_used)] // helpers of a test crate: a panic is a failed test

use evmesh_test_kit::evmesh_bin;
use std::process::Command;

fn evmesh() -> Command {
    Command::new(evmesh_bin())
}

#[test]
fn validate_prints_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        r#"
subscriptions:
  - name: a
    topic: orders
    sink: { type: webhook, url: "http://127.0.0.1:1/x" }
  - name: b
    topic: "bad topic"
    sink: { type: webhook, url: "http://127.0.0.1:1/x" }
  - name: c
    topic: orders
    sink: { type: webhook, url: "http://127.0.0.1:1/x" }
    delivery: { backoffDelay: "5 s" }
"#,
    )
    .unwrap();
    let out = evmesh().arg("validate").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("subscriptions[2].delivery.backoffDelay: invalid ISO-8601 duration \"5 s\""),
        "{text}"
    );

    std::fs::write(&file, "subscriptions:\n  - {name: a, topic: t, sink: {type: webhook, url: 'https://x/'}}\n  - {name: a, topic: t, sink: {type: webhook, url: 'http://x/'}}\n").unwrap();
    let out = evmesh().arg("validate").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("subscriptions[0].sink.url"), "{text}");
    assert!(
        text.contains("subscriptions[1].name: duplicate subscription name"),
        "{text}"
    );
}

#[test]
fn validate_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.yaml");
    std::fs::write(&file, "delivery: { retry: 3 }\nsubscriptions:\n  - {name: a, topic: t, sink: {type: webhook, url: 'http://127.0.0.1:9/x'}}\n").unwrap();
    let out = evmesh().arg("validate").arg(&file).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 subscriptions)"));
}

#[test]
fn serve_refuses_a_bad_config_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "server: { htp: x }\n").unwrap();
    let out = evmesh()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid configuration") && err.contains("htp"),
        "{err}"
    );
}

#[test]
fn environment_overrides_are_validated_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = evmesh()
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .env("EVMESH_SERVER__HTTP", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.http: invalid listen address"));
}
