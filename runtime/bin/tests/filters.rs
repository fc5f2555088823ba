//! Filter dialects and transforms through the real binary.
#![allow(clippy::unwrap_used)] // helpers of a test crate: a panic is a failed test

use evmesh_test_kit::*;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn structured(id: &str, ty: &str, source: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","type":"{ty}","source":"{source}","datacontenttype":"application/json","data":{data}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cesql_pattern_and_transforms_route_and_reshape_events() {
    let dir = tempfile::tempdir().unwrap();
    let big = Receiver::start(Behaviour::default()).await;
    let eu = Receiver::start(Behaviour::default()).await;
    let shaped = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        r#"subscriptions:
  - name: big
    topic: orders
    filters:
      - cesql: "source LIKE 'shop/%' AND INT(amount) > 100"
    sink: {{ type: webhook, url: "{}" }}
  - name: eu
    topic: orders
    filters:
      - any:
          - pattern: {{ data: {{ region: ["eu"], total: [{{ numeric: [">=", 10] }}] }} }}
          - cesql: "subject = 'vip'"
    sink: {{ type: webhook, url: "{}" }}
  - name: shaped
    topic: orders
    filters:
      - exact: {{ type: order.created }}
    transforms:
      - set: {{ type: order.summary, customer: "$.data.customer" }}
      - template:
          transformerType: template
          value: '{{"who":"$.data.customer","total":"$.data.total","none":"$.data.missing"}}'
          template: '{{"text":"${{who}} paid ${{total}}","n":${{none}},"keep":"${{undefined}}"}}'
    sink: {{ type: webhook, url: "{}" }}
    delivery: {{ retry: 1, backoffDelay: PT0.01S }}
"#,
        big.url(),
        eu.url(),
        shaped.url()
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let post = |body: String, extra: Vec<(&'static str, &'static str)>| {
        let c = c.clone();
        let url = ev.url("/topics/orders");
        async move {
            let mut h = vec![("content-type", "application/cloudevents+json")];
            h.extend(extra);
            send(&c, "POST", &url, &h, body).await.0
        }
    };
    // e1: big (amount 150 from shop/), not eu, shaped.
    let e1 = r#"{"specversion":"1.0","id":"e1","type":"order.created","source":"shop/eu","amount":"150","datacontenttype":"application/json","data":{"customer":"ada","total":150,"region":"us"}}"#;
    assert_eq!(post(e1.into(), vec![]).await, 202);
    // e2: eu by pattern, not big (amount too small), shaped.
    let e2 = r#"{"specversion":"1.0","id":"e2","type":"order.created","source":"shop/eu","amount":"5","datacontenttype":"application/json","data":{"customer":"bob","total":12,"region":"eu"}}"#;
    assert_eq!(post(e2.into(), vec![]).await, 202);
    // e3: eu by the CESQL alternative only; not shaped (type differs).
    assert_eq!(
        post(
            structured("e3", "order.paid", "web/x", "{}")
                .replace("\"data\"", "\"subject\":\"vip\",\"data\""),
            vec![]
        )
        .await,
        202
    );
    // e4: shaped, but its data is not JSON, so the transform fails: dead-lettered with the reason.
    let e4 = r#"{"specversion":"1.0","id":"e4","type":"order.created","source":"shop/eu","datacontenttype":"text/plain","data":"plain text"}"#;
    assert_eq!(post(e4.into(), vec![]).await, 202);

    assert!(
        wait_until(WAIT, || big.count() == 1
            && eu.count() == 2
            && shaped.count() == 2)
        .await,
        "big {} eu {} shaped {}",
        big.count(),
        eu.count(),
        shaped.count()
    );
    assert_eq!(big.ids(), vec!["e1"]);
    let mut eu_ids = eu.ids();
    eu_ids.sort();
    assert_eq!(eu_ids, vec!["e2", "e3"]);
    let s = shaped
        .events()
        .into_iter()
        .find(|g| g.header("ce-id").as_deref() == Some("e1"))
        .unwrap();
    assert_eq!(s.header("ce-type").as_deref(), Some("order.summary"));
    assert_eq!(s.header("ce-customer").as_deref(), Some("ada"));
    let body: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"text": "ada paid 150", "n": null, "keep": "${undefined}"})
    );

    let dead = dead_letters(&c, &ev, "shaped", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "e4");
    let reason = dead[0]["deadletterreason"].as_str().unwrap();
    assert!(
        reason.contains("transform failed") && reason.contains("not JSON"),
        "{reason}"
    );
    assert_eq!(
        dead[0]["type"], "order.created",
        "the original event is dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_which_filter_rejected_an_event_and_what_transforms_make() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub("audit", "orders", &rx.url(),
            "    filters:\n      - exact: { type: order.created }\n      - prefix: { source: \"shop/\" }\n    transforms:\n      - set: { type: audited }\n")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let url = ev.admin_url("/subscriptions/audit/explain");
    let ce = |source: &'static str| {
        vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-type", "order.created"),
            ("ce-source", source),
        ]
    };
    let (st, body) = send(&c, "POST", &url, &ce("web/x"), "").await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["matches"], false);
    assert_eq!(
        v["reason"],
        "filters[1].prefix.source: \"web/x\" does not start with \"shop/\""
    );
    let (_, body) = send(&c, "POST", &url, &ce("shop/1"), "").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["matches"], true);
    assert_eq!(v["transformed"][0]["type"], "audited");
    assert_eq!(rx.count(), 0, "explain delivers nothing");
}

#[test]
fn invalid_cesql_and_patterns_are_refused_at_load_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        r#"subscriptions:
  - name: a
    topic: t
    filters:
      - cesql: "type = 'x' AND ("
    sink: { type: webhook, url: "http://127.0.0.1:9/x" }
  - name: b
    topic: t
    filters:
      - not: { pattern: { detail: { state: [ { anything-but: null } ] } } }
    sink: { type: webhook, url: "http://127.0.0.1:9/x" }
  - name: c
    topic: t
    transforms:
      - template: { transformerType: template, value: { a: "$.data[*]" }, template: "${a}" }
    sink: { type: webhook, url: "http://127.0.0.1:9/x" }
"#,
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
        text.contains("subscriptions[0].filters[0].cesql: parse error at position 16"),
        "{text}"
    );
    assert!(
        text.contains(
            "subscriptions[1].filters[0].not.pattern: invalid event pattern at detail.state"
        ),
        "{text}"
    );
    assert!(
        text.contains("subscriptions[2].transforms[0].template.value.a"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscriptions_each_get_exactly_their_events() {
    const SUBS: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Behaviour::default()).await;
    let mut cfg = String::from("subscriptions:\n");
    for i in 0..SUBS {
        let filter = match i % 4 {
            0 => format!("[{{ exact: {{ type: t{i} }} }}]"),
            1 => format!("[{{ cesql: \"type = 't{i}'\" }}]"),
            2 => format!("[{{ pattern: {{ type: [t{i}] }} }}]"),
            _ => format!("[{{ prefix: {{ type: t{i}. }} }}]"),
        };
        cfg.push_str(&format!(
            "  - {{ name: s{i}, topic: many, filters: {filter}, sink: {{ type: webhook, url: \"{}\", headers: {{ x-sub: s{i} }} }} }}\n",
            rx.url()
        ));
    }
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let mut expected = Vec::new();
    for k in 0..360 {
        let i = k % (SUBS + 30); // some types match nobody
        let ty = if i % 4 == 3 {
            format!("t{i}.x")
        } else {
            format!("t{i}")
        };
        let id = format!("e{k}");
        let h = [
            ("ce-specversion", "1.0"),
            ("ce-id", id.as_str()),
            ("ce-source", "/m"),
            ("ce-type", ty.as_str()),
        ];
        assert_eq!(
            send(&c, "POST", &ev.url("/topics/many"), &h, "").await.0,
            202
        );
        if i < SUBS {
            expected.push((format!("s{i}"), id));
        }
    }
    assert!(
        wait_until(WAIT, || rx.count() >= expected.len()).await,
        "{} of {}",
        rx.count(),
        expected.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got: Vec<(String, String)> = rx
        .events()
        .iter()
        .map(|g| (g.header("x-sub").unwrap(), g.header("ce-id").unwrap()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}
