//! What a new user meets first, against the real binary: deliveries that strict HTTP peers
//! accept, HTTP/2 ingest, the README's first command, names that cannot reach outside their
//! folder, and the environment of a Kubernetes pod.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_and_dead_letter_sinks_reach_a_strict_nodejs_receiver() {
    let node = NodeReceiver::start(200);
    let refusing = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 400,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "subscriptions:\n{}{}{}",
        webhook_sub("binary", "t", &node.url("/hook?x=1"), ""),
        webhook_sub(
            "structured",
            "t",
            &node.url("/s"),
            "    filters: [ { exact: { type: test.event } } ]\n",
        )
        .replace("url: ", "mode: structured, url: "),
        webhook_sub(
            "dead",
            "t",
            &refusing.url(),
            &format!(
                "    delivery: {{ retry: 0, deadLetterSink: {{ type: webhook, url: \"{}\" }} }}\n",
                node.url("/dlq")
            ),
        ),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    assert_eq!(publish(&c, &ev, "t", "n1", &[]).await, 202);
    assert!(
        wait_until(WAIT, || node.requests().len() >= 3).await,
        "node saw {:?}\nlog:\n{}",
        node.requests(),
        ev.log()
    );
    let reqs = node.requests();
    assert!(
        reqs.iter().all(|r| r.get("clientError").is_none()),
        "node refused a request: {reqs:?}"
    );
    let host = format!("127.0.0.1:{}", node.port);
    let mut urls: Vec<&str> = reqs.iter().map(|r| r["url"].as_str().unwrap()).collect();
    urls.sort();
    assert_eq!(urls, vec!["/dlq", "/hook?x=1", "/s"], "{reqs:?}");
    for r in &reqs {
        assert_eq!(r["method"], "POST");
        assert_eq!(r["version"], "1.1");
        assert_eq!(r["headers"]["host"], host.as_str(), "{r}");
    }
    let binary = reqs.iter().find(|r| r["url"] == "/hook?x=1").unwrap();
    assert_eq!(binary["headers"]["ce-id"], "n1");
    assert_eq!(binary["body"], "data-n1");
    let structured = reqs.iter().find(|r| r["url"] == "/s").unwrap();
    assert!(structured["body"]
        .as_str()
        .unwrap()
        .contains("\"id\":\"n1\""));
    let dead = reqs.iter().find(|r| r["url"] == "/dlq").unwrap();
    assert_eq!(dead["headers"]["ce-deadletterstatus"], "400");
    assert_eq!(dead["headers"]["ce-id"], "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_speaks_http2_with_prior_knowledge_on_the_same_port() {
    use http_body_util::{BodyExt, Full};
    let rx = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start(
        &dir.path().join("d"),
        &format!("subscriptions:\n{}", webhook_sub("s", "t", &rx.url(), "")),
    );
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(ev.url("/topics/t"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "h2")
        .header("ce-source", "/h2")
        .header("ce-type", "t")
        .body(Full::new(bytes::Bytes::from_static(b"over h2")))
        .unwrap();
    let resp = h2.request(req).await.expect("an h2c request");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 202);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"accepted\":1"));
    // HTTP/1.1 keeps working beside it.
    assert_eq!(publish(&client(), &ev, "t", "h1", &[]).await, 202);
    assert!(wait_until(WAIT, || rx.count() == 2).await);
    let mut ids = rx.ids();
    ids.sort();
    assert_eq!(ids, vec!["h1", "h2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_data_dir_and_plugin_cache_work() {
    let rx = Receiver::start(Behaviour::default()).await;
    let cwd = tempfile::tempdir().unwrap();
    // A plugin, so that the plugin engine (started with the first plugin) uses its cache.
    let plugin = example_plugins().join("json_field_filter.wasm");
    std::fs::copy(&plugin, cwd.path().join("f.wasm")).unwrap();
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub(
            "s",
            "t",
            &rx.url(),
            "    filters:\n      - wasm: { uses: f.wasm, with: { field: status, equals: paid } }\n"
        )
    );
    std::fs::write(cwd.path().join("c.yaml"), cfg).unwrap();
    let mut ev = Evmesh::start_in(
        cwd.path(),
        &["serve", "--config", "c.yaml", "--data-dir", "./rel"],
        &[
            ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
            ("EVMESH_SERVER__ADMIN", "127.0.0.1:0"),
        ],
    );
    let c = client();
    let (st, _) = send(
        &c,
        "POST",
        &ev.url("/topics/t"),
        &[("content-type", "application/cloudevents+json")],
        r#"{"specversion":"1.0","id":"r1","source":"/s","type":"t","datacontenttype":"application/json","data":{"status":"paid"}}"#,
    )
    .await;
    assert_eq!(st, 202);
    assert!(wait_until(WAIT, || rx.count() == 1).await, "{}", ev.log());
    assert!(cwd.path().join("rel/topics/t").is_dir());
    assert!(cwd.path().join("rel/plugin-cache").is_dir());
    assert!(ev.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_service_variables_do_not_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start_with_env(
        &dir.path().join("d"),
        "",
        &[
            ("EVMESH_PORT", "tcp://10.96.0.12:10105"),
            ("EVMESH_PORT_10105_TCP", "tcp://10.96.0.12:10105"),
            ("EVMESH_PORT_10105_TCP_ADDR", "10.96.0.12"),
            ("EVMESH_PORT_10105_TCP_PORT", "10105"),
            ("EVMESH_PORT_10105_TCP_PROTO", "tcp"),
            ("EVMESH_SERVICE_HOST", "10.96.0.12"),
            ("EVMESH_SERVICE_PORT", "10105"),
            ("EVMESH_SERVICE_PORT_HTTP", "10105"),
        ],
    );
    assert_eq!(publish(&client(), &ev, "t", "k", &[]).await, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_subscription_names_are_refused_and_the_store_is_untouched() {
    let rx = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start(
        &dir.path().join("d"),
        &format!(
            "subscriptions:\n{}",
            webhook_sub("keep", "t", &rx.url(), "")
        ),
    );
    let c = client();
    assert_eq!(publish(&c, &ev, "t", "before", &[]).await, 202);
    assert!(wait_until(WAIT, || rx.count() == 1).await);
    let body = format!(
        r#"{{"topic":"t","sink":{{"type":"webhook","url":"{}"}}}}"#,
        rx.url()
    );
    let long = "x".repeat(300);
    for name in ["..", ".", "%2E%2E", &long, "a%20b"] {
        let url = ev.admin_url(&format!("/subscriptions/{name}"));
        let (put, msg) = send(&c, "PUT", &url, &[], body.clone()).await;
        assert_eq!(put, 400, "PUT {name}: {msg}");
        let (del, msg) = send(&c, "DELETE", &url, &[], "").await;
        assert!(del == 400 || del == 404, "DELETE {name}: {del} {msg}");
        let (dl, _) = send(&c, "GET", &format!("{url}/deadletters"), &[], "").await;
        assert!(dl == 400 || dl == 404, "GET {name}/deadletters: {dl}");
    }
    // The data is all there: the event is still in its segment and a new one flows.
    assert!(dir.path().join("d/topics/t").is_dir());
    assert!(dir.path().join("d/subscriptions/keep").is_dir());
    assert_eq!(publish(&c, &ev, "t", "after", &[]).await, 202);
    assert!(wait_until(WAIT, || rx.count() == 2).await);
    // A config file with such a name does not start.
    let out = std::process::Command::new(evmesh_bin())
        .arg("validate")
        .arg({
            let p = dir.path().join("bad.yaml");
            std::fs::write(
                &p,
                "subscriptions:\n  - { name: \"..\", topic: t, sink: { type: webhook, url: \"http://127.0.0.1:1/\" } }\n",
            )
            .unwrap();
            p
        })
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("subscriptions[0].name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_subscription_leaves_nothing_to_a_new_one_of_the_same_name() {
    let refusing = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 400,
        ..Default::default()
    })
    .await;
    let ok = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start(&dir.path().join("d"), "");
    let c = client();
    let put = |url: String| {
        let c = c.clone();
        let target = ev.admin_url("/subscriptions/s");
        async move {
            let body = format!(
                r#"{{"topic":"t","sink":{{"type":"webhook","url":"{url}"}},"delivery":{{"retry":0}}}}"#
            );
            send(&c, "PUT", &target, &[], body).await
        }
    };
    assert_eq!(put(refusing.url()).await.0, 201);
    for i in 0..3 {
        assert_eq!(publish(&c, &ev, "t", &format!("d{i}"), &[]).await, 202);
    }
    assert_eq!(dead_letters(&c, &ev, "s", 3).await.len(), 3);
    // Re-drive them once, so the re-drive topic holds events too.
    let (st, _) = send(
        &c,
        "POST",
        &ev.admin_url("/subscriptions/s/redrive"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(dead_letters(&c, &ev, "s", 3).await.len(), 3);
    let (del, _) = send(&c, "DELETE", &ev.admin_url("/subscriptions/s"), &[], "").await;
    assert_eq!(del, 204);
    assert!(!dir.path().join("d/topics/__dlq.s").exists());
    assert!(!dir.path().join("d/topics/__redrive.s").exists());
    // A new "s" delivers only what is published after it and has an empty dead-letter list.
    assert_eq!(put(ok.url()).await.0, 201);
    let (_, list) = send(
        &c,
        "GET",
        &ev.admin_url("/subscriptions/s/deadletters"),
        &[],
        "",
    )
    .await;
    assert_eq!(list.trim(), "[]", "inherited dead letters");
    assert_eq!(publish(&c, &ev, "t", "fresh", &[]).await, 202);
    assert!(wait_until(WAIT, || ok.count() >= 1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ok.ids(), vec!["fresh"], "inherited re-driven events");
}

/// The README's first command exactly: `evmesh serve`, no flags, in an empty folder, on the
/// default ports. Then the first steps of the tour: a subscription through the admin API, a
/// publish, a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_flags_on_default_ports_in_an_empty_folder_delivers() {
    let rx = Receiver::start(Behaviour::default()).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut ev = Evmesh::start_in(cwd.path(), &["serve"], &[]);
    assert_eq!(ev.http.port(), 10105);
    assert_eq!(ev.admin.port(), 10106);
    let c = client();
    let body = format!(
        r#"{{"topic":"orders","sink":{{"type":"webhook","url":"{}"}}}}"#,
        rx.url()
    );
    let (st, msg) = send(
        &c,
        "PUT",
        "http://127.0.0.1:10106/subscriptions/audit",
        &[],
        body,
    )
    .await;
    assert_eq!(st, 201, "{msg}");
    assert_eq!(publish(&c, &ev, "orders", "first", &[]).await, 202);
    assert!(wait_until(WAIT, || rx.count() == 1).await, "{}", ev.log());
    assert!(cwd.path().join("evmesh-data/topics/orders").is_dir());
    assert!(ev.terminate().success());
}
