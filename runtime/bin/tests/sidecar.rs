//! The sidecar profile, with the configurations of `examples/sidecar/`: an application
//! publishes to its sidecar, which stores each event before answering and forwards it to an
//! upstream evmesh at least once; the upstream is killed mid-stream and nothing is lost.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use std::path::PathBuf;
use std::time::Duration;

fn example(file: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/sidecar")
        .join(file)
        .to_str()
        .unwrap()
        .to_owned()
}

/// A free port below the kernel's ephemeral range (32768+), so that no connection or
/// `bind(0)` of another test can take it while the upstream restarts on it.
fn stable_port() -> u16 {
    loop {
        let p = 20_000 + fastrand::u16(..10_000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn upstream(dir: &std::path::Path, port: u16, billing: &str) -> Evmesh {
    let http = format!("127.0.0.1:{port}");
    Evmesh::start_in(
        dir,
        &[
            "serve",
            "--config",
            &example("upstream.yaml"),
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ],
        &[
            ("EVMESH_SERVER__HTTP", &http),
            ("EVMESH_SERVER__ADMIN", "127.0.0.1:0"),
            ("EVMESH_SUBSCRIPTIONS__0__SINK__URL", billing),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_forwards_everything_upstream_while_the_upstream_is_killed_and_restarted() {
    let billing = Receiver::start(Behaviour::default()).await;
    let audit = Receiver::start(Behaviour::default()).await;
    let up_dir = tempfile::tempdir().unwrap();
    let port = stable_port();
    let mut up = upstream(up_dir.path(), port, &billing.url());

    let side_dir = tempfile::tempdir().unwrap();
    let upstream_url = format!("http://127.0.0.1:{port}");
    let sidecar = Evmesh::start_in(
        side_dir.path(),
        &[
            "serve",
            "--profile",
            "sidecar",
            "--upstream",
            &upstream_url,
            "--config",
            &example("sidecar.yaml"),
            "--data-dir",
            side_dir.path().join("data").to_str().unwrap(),
        ],
        &[
            ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
            ("EVMESH_SERVER__ADMIN", "127.0.0.1:0"),
            ("EVMESH_SERVER__TCP", "127.0.0.1:0"),
            ("EVMESH_SUBSCRIPTIONS__0__SINK__URL", &audit.url()),
        ],
    );
    // The sidecar restarted itself once with mimalloc's eager arena commit off (a smaller
    // idle footprint): same process, the setting in its environment.
    let environ = std::fs::read(format!("/proc/{}/environ", sidecar.pid())).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == b"MIMALLOC_ARENA_EAGER_COMMIT=0"),
        "the sidecar runs without the allocator setting"
    );
    let c = client();
    for i in 0..300 {
        if i == 100 {
            up.kill9();
        }
        if i == 200 {
            up = upstream(up_dir.path(), port, &billing.url());
        }
        // The application's publishes never wait for the upstream.
        assert_eq!(
            publish(&c, &sidecar, "orders", &format!("o{i}"), &[]).await,
            202
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let distinct = |rx: &Receiver| {
        let mut ids = rx.ids();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    assert!(
        wait_until(Duration::from_secs(60), || distinct(&billing) == 300).await,
        "billing got {} of 300 distinct events\nsidecar log:\n{}\nupstream log:\n{}",
        distinct(&billing),
        sidecar.log(),
        up.log()
    );
    assert!(wait_until(Duration::from_secs(30), || distinct(&audit) == 300).await);
    // The forwarder is evmesh's own: not among the subscriptions an operator manages.
    let (_, subs) = send(&c, "GET", &sidecar.admin_url("/subscriptions"), &[], "").await;
    assert!(!subs.contains("forward."), "{subs}");
    assert!(subs.contains("local-audit"), "{subs}");
    drop(up);
}

#[test]
fn the_sidecar_profile_needs_an_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(evmesh_bin())
        .args(["serve", "--profile", "sidecar"])
        .current_dir(dir.path())
        .env_remove("EVMESH_UPSTREAM")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--profile sidecar needs --upstream"), "{err}");
    let out = std::process::Command::new(evmesh_bin())
        .args(["serve", "--upstream", "10.0.0.1:10105"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected http://HOST:PORT"), "{err}");
}
