//! Traces: one published event gives one connected trace (publish → store → delivery attempt →
//! the receiver), exported over OTLP/HTTP to a receiver that reads the OTLP JSON encoding.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use serde_json::Value;
use std::time::Duration;

/// Every span the OTLP receiver got, flattened.
fn spans(otlp: &Receiver) -> Vec<Value> {
    let mut out = Vec::new();
    for got in otlp.events() {
        assert_eq!(
            got.header("content-type").as_deref(),
            Some("application/json")
        );
        let req: Value = serde_json::from_slice(&got.body).unwrap();
        for rs in req["resourceSpans"].as_array().unwrap() {
            assert_eq!(
                rs["resource"]["attributes"][0],
                serde_json::json!({"key": "service.name", "value": {"stringValue": "evmesh-test"}})
            );
            for ss in rs["scopeSpans"].as_array().unwrap() {
                out.extend(ss["spans"].as_array().unwrap().iter().cloned());
            }
        }
    }
    out
}

fn find<'a>(spans: &'a [Value], trace: &str, name: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| s["traceId"] == trace && s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_published_event_gives_one_connected_trace() {
    let dir = tempfile::tempdir().unwrap();
    let otlp = Receiver::start(Behaviour::default()).await;
    let hook = Receiver::start(Behaviour::default()).await;
    let shaped = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "telemetry:\n  tracing:\n    otlpEndpoint: http://{}/v1/traces\n    serviceName: evmesh-test\nsubscriptions:\n{}{}",
        otlp.addr,
        webhook_sub("audit", "t", &hook.url(), ""),
        webhook_sub(
            "shaped",
            "t",
            &shaped.url(),
            "    transforms:\n      - set: { type: audited }\n"
        )
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();

    // A publisher that traces: its span is the parent (W3C header).
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{caller}-01");
    assert_eq!(
        publish(
            &c,
            &ev,
            "t",
            "e1",
            &[("traceparent", &tp), ("tracestate", "vendor=abc")]
        )
        .await,
        202
    );
    assert!(wait_until(Duration::from_secs(20), || hook.count() == 1).await);
    let mut all = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            all = spans(&otlp);
            find(&all, trace, "deliver audit").is_some()
                && find(&all, trace, "publish t").is_some()
                && find(&all, trace, "store append").is_some()
                && find(&all, trace, "transform shaped").is_some()
                && find(&all, trace, "deliver shaped").is_some()
                && find(&all, trace, "filter audit").is_some()
                && find(&all, trace, "filter shaped").is_some()
        })
        .await,
        "spans: {all:#?}"
    );
    let publish_span = find(&all, trace, "publish t").unwrap();
    assert_eq!(publish_span["parentSpanId"], caller);
    assert_eq!(publish_span["kind"], 2);
    let p_id = publish_span["spanId"].as_str().unwrap();
    let store = find(&all, trace, "store append").unwrap();
    assert_eq!(store["parentSpanId"], p_id);
    let deliver = find(&all, trace, "deliver audit").unwrap();
    assert_eq!(deliver["parentSpanId"], p_id);
    assert_eq!(deliver["status"]["code"], 1);
    let d_id = deliver["spanId"].as_str().unwrap();
    // The receiver's parent is the delivery attempt; the event carries the publish span.
    let got = &hook.events()[0];
    assert_eq!(
        got.header("traceparent").unwrap(),
        format!("00-{trace}-{d_id}-01")
    );
    assert_eq!(
        got.header("ce-traceparent").unwrap(),
        format!("00-{trace}-{p_id}-01")
    );
    // Vendor trace state travels with the context.
    assert_eq!(got.header("tracestate").as_deref(), Some("vendor=abc"));
    // Each subscription's filter verdict is a child of the publish span.
    for sub in ["audit", "shaped"] {
        let f = find(&all, trace, &format!("filter {sub}")).unwrap();
        assert_eq!(f["parentSpanId"], p_id);
        assert!(
            f["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["key"] == "evmesh.matched" && a["value"]["stringValue"] == "true"),
            "{f}"
        );
    }
    // The other subscription's transform and attempt are children of the same publish span.
    let transform = find(&all, trace, "transform shaped").unwrap();
    assert_eq!(transform["parentSpanId"], p_id);
    assert_eq!(
        find(&all, trace, "deliver shaped").unwrap()["parentSpanId"],
        p_id
    );
    assert_eq!(
        shaped.events()[0].header("ce-type").as_deref(),
        Some("audited")
    );
    // Every span of the trace is one of these (one connected tree, rooted at the caller).
    let ids: Vec<&str> = [publish_span, store, deliver]
        .iter()
        .map(|s| s["spanId"].as_str().unwrap())
        .collect();
    for s in all.iter().filter(|s| s["traceId"] == trace) {
        let parent = s["parentSpanId"].as_str().unwrap();
        assert!(parent == caller || ids.contains(&parent), "{s}");
    }

    // A publisher that does not trace: evmesh starts the trace, still one tree.
    assert_eq!(publish(&c, &ev, "t", "e2", &[]).await, 202);
    assert!(wait_until(Duration::from_secs(20), || hook.count() == 2).await);
    let got = hook.events()[1].clone();
    let tp = got
        .header("traceparent")
        .expect("the delivery carries a traceparent");
    let new_trace = tp.split('-').nth(1).unwrap().to_owned();
    assert_ne!(new_trace, trace);
    assert!(
        wait_until(Duration::from_secs(20), || {
            all = spans(&otlp);
            find(&all, &new_trace, "deliver audit").is_some()
        })
        .await
    );
    let root = find(&all, &new_trace, "publish t").unwrap();
    assert!(root.get("parentSpanId").is_none(), "{root}");
    assert_eq!(
        find(&all, &new_trace, "deliver audit").unwrap()["parentSpanId"],
        root["spanId"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_a_traceparent_passes_through_and_nothing_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub("audit", "t", &hook.url(), "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        publish(&c, &ev, "t", "e1", &[("ce-traceparent", tp)]).await,
        202
    );
    assert_eq!(publish(&c, &ev, "t", "e2", &[]).await, 202);
    assert!(wait_until(Duration::from_secs(20), || hook.count() == 2).await);
    // Deliveries run concurrently: find each event by its id.
    let got = hook.events();
    let by_id = |id: &str| {
        got.iter()
            .find(|g| g.header("ce-id").as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let (e1, e2) = (by_id("e1"), by_id("e2"));
    // The event's own context is the hop's parent, unchanged; an untraced event gets none.
    assert_eq!(e1.header("traceparent").as_deref(), Some(tp));
    assert_eq!(e1.header("ce-traceparent").as_deref(), Some(tp));
    assert_eq!(e2.header("traceparent"), None);
    assert_eq!(e2.header("ce-traceparent"), None);
}

#[test]
fn tracing_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "telemetry:\n  tracing:\n    otlpEndpoint: collector:4318\n    sampleRatio: 1.5\n",
    )
    .unwrap();
    let out = std::process::Command::new(evmesh_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("telemetry.tracing.sampleRatio: 1.5 is not between 0.0 and 1.0"),
        "{text}"
    );
    assert!(
        text.contains(
            "telemetry.tracing.otlpEndpoint: \"collector:4318\" is not an http:// or https:// URL"
        ),
        "{text}"
    );
}
