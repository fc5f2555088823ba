//! WASM plugins end to end: example plugins built from source, loaded by the real binary.
#![allow(clippy::unwrap_used)] // helpers of a test crate: a panic is a failed test

use evmesh_test_kit::*;
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn plugins() -> PathBuf {
    example_plugins()
}

fn wasm(dir: &std::path::Path, name: &str) -> String {
    dir.join(format!("{name}.wasm")).display().to_string()
}

async fn post_json(c: &HttpClient, ev: &Evmesh, topic: &str, id: &str, data: &str) -> u16 {
    let body = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/shop","type":"order","datacontenttype":"application/json","data":{data}}}"#
    );
    send(
        c,
        "POST",
        &ev.url(&format!("/topics/{topic}")),
        &[("content-type", "application/cloudevents+json")],
        body,
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugins_filter_enrich_split_and_route() {
    let dir = plugins();
    let tmp = tempfile::tempdir().unwrap();
    let paid = Receiver::start(Behaviour::default()).await;
    let lines = Receiver::start(Behaviour::default()).await;
    let normal = Receiver::start(Behaviour::default()).await;
    let urgent = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        r#"subscriptions:
  - name: paid
    topic: orders
    filters:
      - wasm: {{ uses: "{filter}", with: {{ field: status, equals: paid }} }}
    transforms:
      - wasm: {{ uses: "{enrich}", with: {{ type: order.enriched }} }}
    sink: {{ type: webhook, url: "{paid}" }}
  - name: lines
    topic: orders
    transforms:
      - wasm: {{ uses: "{split}" }}
    sink: {{ type: webhook, url: "{lines}" }}
  - name: triage
    topic: orders
    transforms:
      - wasm: {{ uses: "{router}", with: {{ urgent: orders.urgent }} }}
    sink: {{ type: webhook, url: "{normal}" }}
  - name: urgent
    topic: orders.urgent
    start: earliest
    sink: {{ type: webhook, url: "{urgent}" }}
"#,
        filter = wasm(&dir, "json_field_filter"),
        enrich = wasm(&dir, "enrich"),
        split = wasm(&dir, "split_lines"),
        router = wasm(&dir, "router"),
        paid = paid.url(),
        lines = lines.url(),
        normal = normal.url(),
        urgent = urgent.url(),
    );
    let ev = Evmesh::start(&tmp.path().join("d"), &cfg);
    let c = client();
    assert_eq!(post_json(&c, &ev, "orders", "o1", r#"{"status":"paid","customer":"ada","priority":"high","lines":[{"sku":"a"},{"sku":"b"},{"sku":"c"}]}"#).await, 202);
    assert_eq!(
        post_json(
            &c,
            &ev,
            "orders",
            "o2",
            r#"{"status":"open","customer":"bob","priority":"low"}"#
        )
        .await,
        202
    );

    assert!(
        wait_until(WAIT, || paid.count() == 1
            && lines.count() == 4
            && normal.count() == 1
            && urgent.count() == 1)
        .await,
        "paid {} lines {} normal {} urgent {}",
        paid.count(),
        lines.count(),
        normal.count(),
        urgent.count()
    );
    let p = &paid.events()[0];
    assert_eq!(p.header("ce-id").as_deref(), Some("o1"));
    assert_eq!(p.header("ce-type").as_deref(), Some("order.enriched"));
    assert_eq!(p.header("ce-customer").as_deref(), Some("ada"));
    assert_eq!(p.header("ce-enrichedby").as_deref(), Some("evmesh-wasm"));
    let mut ids = lines.ids();
    ids.sort();
    assert_eq!(
        ids,
        vec!["o1-0", "o1-1", "o1-2", "o2"],
        "o1 fans out into its three lines; o2 has none"
    );
    assert_eq!(
        urgent.ids(),
        vec!["o1"],
        "high priority is routed to orders.urgent"
    );
    assert_eq!(
        normal.ids(),
        vec!["o2"],
        "the rest is delivered to the subscription's sink"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_fail_only_their_batches_and_dead_letter_with_the_reason() {
    let dir = plugins();
    let tmp = tempfile::tempdir().unwrap();
    let healthy = Receiver::start(Behaviour::default()).await;
    let never = Receiver::start(Behaviour::default()).await;
    let bad = |name: &str, plugin: &str, limits: &str| {
        format!(
            "  - name: {name}\n    topic: t\n    filters:\n      - wasm: {{ uses: \"{}\"{limits} }}\n    sink: {{ type: webhook, url: \"{}\" }}\n    delivery: {{ retry: 1, backoffDelay: PT0.05S }}\n",
            wasm(&dir, plugin),
            never.url()
        )
    };
    let cfg = format!(
        "subscriptions:\n{}{}{}{}",
        bad("trap", "bad_trap", ""),
        bad("loop", "bad_loop", ", timeout: PT0.05S"),
        bad("hog", "bad_memory", ", max_memory: 8388608"),
        webhook_sub("healthy", "t", &healthy.url(), ""),
    );
    let ev = Evmesh::start(&tmp.path().join("d"), &cfg);
    let c = client();
    for i in 0..5 {
        assert_eq!(publish(&c, &ev, "t", &format!("e{i}"), &[]).await, 202);
    }
    assert!(
        wait_until(WAIT, || healthy.count() == 5).await,
        "the healthy subscription got {}",
        healthy.count()
    );
    for (sub, needle) in [
        ("trap", "wasm trap: wasm `unreachable` instruction executed"),
        ("loop", "ran past its 50 ms deadline"),
        ("hog", "memory"),
    ] {
        let dead = dead_letters(&c, &ev, sub, 5).await;
        assert_eq!(dead.len(), 5, "{sub}: {dead:?}");
        let reason = dead[0]["deadletterreason"].as_str().unwrap();
        assert!(
            !reason.contains('\n'),
            "{sub}: the reason is one line: {reason}"
        );
        assert!(reason.contains(needle), "{sub}: {reason}");
        assert_eq!(
            dead[0]["deadletterattempts"], 2,
            "{sub}: attempts = 1 + retry"
        );
    }
    assert_eq!(never.count(), 0);
    // Still serving.
    assert_eq!(publish(&c, &ev, "t", "after", &[]).await, 202);
    assert!(wait_until(WAIT, || healthy.count() == 6).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_wasm_file_swaps_the_plugin_without_losing_events() {
    let dir = plugins();
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live.wasm");
    std::fs::copy(dir.join("json_field_filter.wasm"), &live).unwrap();
    let rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n  - name: s\n    topic: t\n    filters:\n      - wasm: {{ uses: \"{}\", with: {{ field: status, equals: paid }} }}\n    sink: {{ type: webhook, url: \"{}\" }}\n    delivery: {{ retry: 0 }}\n",
        live.display(),
        rx.url()
    );
    let ev = Evmesh::start(&tmp.path().join("d"), &cfg);
    let c = client();
    assert_eq!(
        post_json(&c, &ev, "t", "before", r#"{"status":"paid"}"#).await,
        202
    );
    assert!(wait_until(WAIT, || rx.count() == 1).await);
    // Swap in the trapping filter: later events fail and are dead-lettered, none is lost.
    let staged = tmp.path().join("staged.wasm");
    std::fs::copy(dir.join("bad_trap.wasm"), &staged).unwrap();
    std::fs::rename(&staged, &live).unwrap();
    assert!(
        wait_until(WAIT, || ev.log().contains("plugin reloaded")).await,
        "{}",
        ev.log()
    );
    assert_eq!(
        post_json(&c, &ev, "t", "after", r#"{"status":"paid"}"#).await,
        202
    );
    let dead = dead_letters(&c, &ev, "s", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "after");
    assert_eq!(rx.ids(), vec!["before"]);
}

#[test]
fn a_transform_plugin_used_as_a_filter_is_a_config_error() {
    let dir = plugins();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("c.yaml");
    std::fs::write(
        &file,
        format!(
            "subscriptions:\n  - name: s\n    topic: t\n    filters:\n      - wasm: {{ uses: \"{}\" }}\n    sink: {{ type: webhook, url: \"http://127.0.0.1:9/\" }}\n  - name: m\n    topic: t\n    transforms:\n      - wasm: {{ uses: \"/nonexistent.wasm\" }}\n    sink: {{ type: webhook, url: \"http://127.0.0.1:9/\" }}\n",
            wasm(&dir, "enrich")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(evmesh_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("subscriptions[0].filters[0].wasm") && text.contains("filter world"),
        "{text}"
    );
    assert!(
        text.contains("subscriptions[1].transforms[0].wasm")
            && text.contains("cannot read the component"),
        "{text}"
    );
}
