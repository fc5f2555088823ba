//! RocketMQ end to end: the real `evmesh` binary against a real RocketMQ name server and broker
//! (`rocketmq-namesrv-rust` and `rocketmq-broker-rust`, one pair per test on free ports), with
//! the test's own RocketMQ producer and consumer.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::compliance::{check_sink, check_source};
use evmesh_test_kit::*;
use evmesh_test_rocketmq::client::{create_topic, send as rmq_send, In, Out, Reader};
use evmesh_test_rocketmq::compliance::RocketMqHarness;
use evmesh_test_rocketmq::RocketMq;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn rocketmq_sink_sub(
    name: &str,
    topic: &str,
    namesrv: &str,
    rmq_topic: &str,
    extra: &str,
) -> String {
    format!(
        "  - name: {name}\n    topic: {topic}\n    start: earliest\n    sink: {{ type: rocketmq, namesrv: \"{namesrv}\", topic: {rmq_topic}{extra} }}\n"
    )
}

fn store_cfg(namesrv: &str, rest: &str) -> String {
    format!("store:\n  type: rocketmq\n  namesrv: \"{namesrv}\"\n  queues: 4\n{rest}")
}

/// Every id at least once and, per key, one queue and first deliveries in publication order.
fn check_keyed(msgs: &[In], n: usize) {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut key_queue: HashMap<String, i32> = HashMap::new();
    // The consumer interleaves queues; within a queue it reads in offset order.
    let mut sorted: Vec<&In> = msgs.iter().collect();
    sorted.sort_by_key(|m| (m.queue, m.offset));
    for m in sorted {
        let id = m.properties["CE_id"].clone();
        if !seen.insert(id) {
            continue;
        }
        let key = m.properties["CE_partitionkey"].clone();
        let seq: i64 = m.properties["CE_seq"].parse().unwrap();
        if let Some(prev) = last.get(&key) {
            assert!(*prev < seq, "key {key}: {seq} after {prev}");
        }
        last.insert(key.clone(), seq);
        let q = *key_queue.entry(key.clone()).or_insert(m.queue);
        assert_eq!(q, m.queue, "one key, one queue");
    }
    assert_eq!(seen.len(), n, "every event arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocketmq_sink_passes_the_connector_compliance_kit() {
    let h = RocketMqHarness::new(RocketMq::start());
    let dir = tempfile::tempdir().unwrap();
    check_sink(&h, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocketmq_source_passes_the_connector_compliance_kit() {
    let h = RocketMqHarness::new(RocketMq::start());
    let dir = tempfile::tempdir().unwrap();
    check_source(&h, dir.path()).await;
}

/// HTTP → evmesh → RocketMQ (binary mode, a tag, keys) → evmesh's RocketMQ source (tag filter)
/// → a webhook: the attributes, the data and the mapping survive both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_and_source_round_trip_through_rocketmq() {
    let mq = RocketMq::start();
    let ns = mq.namesrv();
    create_topic(&ns, "roundtrip", 2).await;
    let rx = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "sources:\n  - name: back\n    type: rocketmq\n    namesrv: \"{ns}\"\n    topic: roundtrip\n    group: evmesh_back\n    tag_filter: created\n    into: back\n    start: earliest\nsubscriptions:\n{}{}",
        rocketmq_sink_sub("out", "orders", &ns, "roundtrip", ", tag: created, keys: partitionkey"),
        webhook_sub("hook", "back", &rx.url(), "    start: earliest\n")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let (s, b) = send(
        &c,
        "POST",
        &ev.url("/topics/orders"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "order-1"),
            ("ce-source", "/shop"),
            ("ce-type", "order.created"),
            ("ce-subject", "orders/1"),
            ("ce-time", "2026-12-02T08:00:00Z"),
            ("ce-partitionkey", "customer-7"),
            (
                "ce-traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("content-type", "application/json"),
        ],
        r#"{"total":42}"#,
    )
    .await;
    assert_eq!(s, 202, "{b}");
    // A message from another producer with another tag is not taken.
    rmq_send(
        &ns,
        "roundtrip",
        &[Out {
            tag: Some("cancelled".into()),
            properties: vec![
                ("CE_specversion".into(), "1.0".into()),
                ("CE_id".into(), "other".into()),
                ("CE_source".into(), "/x".into()),
                ("CE_type".into(), "x".into()),
            ],
            body: b"x".to_vec(),
            ..Default::default()
        }],
    )
    .await;
    assert!(
        wait_until(WAIT, || rx.count() >= 1).await,
        "nothing came back; log:\n{}",
        ev.log()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rx.events();
    assert_eq!(
        rx.ids(),
        vec!["order-1".to_string()],
        "only the tagged message"
    );
    let g = &got[0];
    assert_eq!(g.header("ce-type").as_deref(), Some("order.created"));
    assert_eq!(g.header("ce-source").as_deref(), Some("/shop"));
    assert_eq!(g.header("ce-subject").as_deref(), Some("orders/1"));
    assert_eq!(g.header("ce-time").as_deref(), Some("2026-12-02T08:00:00Z"));
    assert_eq!(g.header("ce-partitionkey").as_deref(), Some("customer-7"));
    assert!(g.header("ce-traceparent").is_some());
    assert_eq!(
        g.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(&g.body[..], br#"{"total":42}"#);
    // On the wire: the CloudEvents RocketMQ binding.
    let mut reader = Reader::new(&ns, "roundtrip").await;
    let msgs = reader.wait_for(2, WAIT).await.to_vec();
    let m = msgs
        .iter()
        .find(|m| m.properties.get("CE_id").map(String::as_str) == Some("order-1"))
        .unwrap();
    assert_eq!(m.tag.as_deref(), Some("created"));
    assert_eq!(m.keys.as_deref(), Some("customer-7"));
    assert_eq!(m.properties["CE_specversion"], "1.0");
    assert_eq!(m.properties["CE_contenttype"], "application/json");
    assert_eq!(m.body, br#"{"total":42}"#);
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_http_to_rocketmq_all_there_in_key_order() {
    let mq = RocketMq::start();
    let ns = mq.namesrv();
    create_topic(&ns, "keyed", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "subscriptions:\n{}    ordering: key\n    maxInFlight: 256\n",
        rocketmq_sink_sub("torocketmq", "orders", &ns, "keyed", "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    const N: usize = 10_000;
    publish_keyed(&c, &ev, "orders", 0..N).await;
    let mut reader = Reader::new(&ns, "keyed").await;
    let msgs = reader.wait_for(N, Duration::from_secs(180)).await.to_vec();
    assert!(msgs.len() >= N, "{} of {N}; log:\n{}", msgs.len(), ev.log());
    check_keyed(&msgs, N);
    reader.close().await;
}

/// A sink topic nobody created is created by a broker with `autoCreateTopicEnable` (as the
/// test broker has), as with a Java producer; later events use its route and batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_to_a_topic_not_yet_created_creates_it_on_an_auto_creating_broker() {
    let mq = RocketMq::start();
    let ns = mq.namesrv();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "subscriptions:\n{}",
        rocketmq_sink_sub("torocketmq", "orders", &ns, "made_on_first_send", "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    assert_eq!(publish(&c, &ev, "orders", "first", &[]).await, 202);
    let mut reader = Reader::new(&ns, "made_on_first_send").await;
    assert_eq!(
        reader.wait_for(1, WAIT).await.len(),
        1,
        "log:\n{}",
        ev.log()
    );
    publish_keyed(&c, &ev, "orders", 0..300).await;
    let msgs = reader.wait_for(301, WAIT).await;
    let ids: HashSet<&str> = msgs
        .iter()
        .map(|m| m.properties["CE_id"].as_str())
        .collect();
    assert!(ids.contains("first"));
    assert!(
        (0..300).all(|i| ids.contains(format!("e{i}").as_str())),
        "{} ids",
        ids.len()
    );
    reader.close().await;
}

/// The sink keeps retrying while the broker is down; what evmesh acknowledged arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_survives_a_broker_restart_without_losing_an_event() {
    let mut mq = RocketMq::start();
    let ns = mq.namesrv();
    create_topic(&ns, "restart", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "delivery: {{ retry: 1000, backoffPolicy: exponential, backoffDelay: PT0.1S, backoffMax: PT1S, timeout: PT5S }}\nsubscriptions:\n{}    ordering: key\n",
        rocketmq_sink_sub("torocketmq", "orders", &ns, "restart", "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    publish_keyed(&c, &ev, "orders", 0..500).await;
    let mut reader = Reader::new(&ns, "restart").await;
    assert!(reader.wait_for(500, WAIT).await.len() >= 500);
    reader.close().await;
    mq.stop_broker();
    publish_keyed(&c, &ev, "orders", 500..1000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    mq.restart_broker();
    publish_keyed(&c, &ev, "orders", 1000..1500).await;
    let mut reader = Reader::new(&ns, "restart").await;
    let msgs = reader
        .wait_for(1500, Duration::from_secs(180))
        .await
        .to_vec();
    let ids: HashSet<String> = msgs.iter().map(|m| m.properties["CE_id"].clone()).collect();
    let missing: Vec<usize> = (0..1500)
        .filter(|i| !ids.contains(&format!("e{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events lost, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        ev.log()
    );
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocketmq_store_delivers_in_key_order_and_dead_letters() {
    let mq = RocketMq::start();
    let ns = mq.namesrv();
    let ok = Receiver::start(Behaviour::default()).await;
    let bad = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 400,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_cfg(
        &ns,
        &format!(
            "subscriptions:\n{}    ordering: key\n{}",
            webhook_sub("good", "orders", &ok.url(), "    start: earliest\n"),
            webhook_sub("broken", "orders", &bad.url(), "    start: earliest\n")
        ),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    const N: usize = 1000;
    publish_keyed(&c, &ev, "orders", 0..N).await;
    let unique = || ok.ids().into_iter().collect::<HashSet<_>>().len();
    assert!(
        wait_until(WAIT, || unique() >= N).await,
        "{} of {N}; log:\n{}",
        unique(),
        ev.log()
    );
    // Per key, first deliveries in publication order.
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut seen = HashSet::new();
    for g in ok.events() {
        let id = g.header("ce-id").unwrap();
        if !seen.insert(id) {
            continue;
        }
        let key = g.header("ce-partitionkey").unwrap();
        let seq: i64 = g.header("ce-seq").unwrap().parse().unwrap();
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(prev < seq, "key {key}: {seq} after {prev}");
        }
    }
    // Steady state: one delivery per event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ok.count(), N, "one delivery per event in steady state");
    let dead = dead_letters(&c, &ev, "broken", N).await;
    assert_eq!(
        dead.len(),
        N,
        "every refused event is in the dead-letter list"
    );
    assert_eq!(dead[0]["deadletterstatus"], 400);
    // The events are messages of the store's topic, structured mode.
    let mut reader = Reader::new(&ns, "evmesh_orders").await;
    let msgs = reader.wait_for(N, WAIT).await.to_vec();
    assert_eq!(msgs.len(), N);
    assert!(msgs[0].properties["CE_contenttype"].starts_with("application/cloudevents+json"));
    reader.close().await;
}

/// Publishes one event at a time through `urls` (alternating), every 2 ms, until `stop`;
/// records those answered 202.
fn spawn_publisher(
    c: HttpClient,
    urls: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let url = &urls[i % urls.len()];
            let id = format!("e{i}");
            let key = format!("k{}", i % 16);
            let h = [
                ("ce-specversion", "1.0"),
                ("ce-id", id.as_str()),
                ("ce-source", "/t"),
                ("ce-type", "t"),
                ("ce-partitionkey", key.as_str()),
            ];
            let mut req = http::Request::builder().method("POST").uri(url.as_str());
            for (k, v) in h {
                req = req.header(k, v);
            }
            let req = req
                .body(http_body_util::Full::new(bytes::Bytes::from("x")))
                .unwrap();
            if let Ok(r) = c.request(req).await {
                if r.status() == 202 {
                    acked.lock().unwrap().push(id);
                }
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        i
    })
}

async fn assert_all_delivered(rx: &Receiver, acked: &[String], log: impl Fn() -> String) {
    let delivered = || rx.ids().into_iter().collect::<HashSet<String>>();
    let all = wait_until(Duration::from_secs(180), || {
        let d = delivered();
        acked.iter().all(|id| d.contains(id))
    })
    .await;
    let d = delivered();
    let missing: Vec<&String> = acked.iter().filter(|id| !d.contains(*id)).collect();
    assert!(
        all,
        "{} acknowledged events never delivered, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        log()
    );
}

/// On the RocketMQ store, the broker is killed and restarted while publishing and delivery go
/// on: every publish that was answered 202 is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocketmq_store_loses_no_acknowledged_event_across_a_broker_restart() {
    let mut mq = RocketMq::start();
    let ns = mq.namesrv();
    let rx = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_cfg(
        &ns,
        &format!(
            "delivery: {{ retry: 1000, backoffDelay: PT0.1S, backoffMax: PT1S }}\nsubscriptions:\n{}",
            webhook_sub("hook", "work", &rx.url(), "    start: earliest\n")
        ),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = spawn_publisher(
        client(),
        vec![ev.url("/topics/work")],
        stop.clone(),
        acked.clone(),
    );
    assert!(
        wait_until(WAIT, || rx.count() >= 200).await,
        "log:\n{}",
        ev.log()
    );
    mq.stop_broker();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.lock().unwrap().len();
    mq.restart_broker();
    // Publishing works again after the restart.
    let recovered = wait_until(WAIT, || acked.lock().unwrap().len() >= before + 300).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let tried = publisher.await.unwrap();
    assert!(recovered, "publishing did not recover; log:\n{}", ev.log());
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert_all_delivered(&rx, &acked, || ev.log()).await;
    eprintln!(
        "broker restart: {} of {tried} publishes acknowledged, {} deliveries",
        acked.len(),
        rx.count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_subscription_on_the_rocketmq_store_and_one_dies_by_kill9() {
    let mq = RocketMq::start();
    let ns = mq.namesrv();
    let rx = Receiver::start(Behaviour {
        delay: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sub = |who: &str| {
        format!(
            "subscriptions:\n  - name: shared\n    topic: work\n    start: earliest\n    sink: {{ type: webhook, url: \"{}\", headers: {{ x-instance: {who} }} }}\n",
            rx.url()
        )
    };
    let mut a = Evmesh::start(&dir.path().join("a"), &store_cfg(&ns, &sub("a")));
    let b = Evmesh::start(&dir.path().join("b"), &store_cfg(&ns, &sub("b")));
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = spawn_publisher(
        client(),
        vec![a.url("/topics/work"), b.url("/topics/work")],
        stop.clone(),
        acked.clone(),
    );
    let both = wait_until(WAIT, || {
        let ev = rx.events();
        ev.iter()
            .any(|g| g.header("x-instance").as_deref() == Some("a"))
            && ev
                .iter()
                .any(|g| g.header("x-instance").as_deref() == Some("b"))
    })
    .await;
    assert!(
        both,
        "both instances deliver; a:\n{}\nb:\n{}",
        a.log(),
        b.log()
    );
    a.kill9();
    // Publishing goes on (through b; a's share fails) for a while after the kill.
    let before = acked.lock().unwrap().len();
    let more = wait_until(WAIT, || acked.lock().unwrap().len() >= before + 500).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    publisher.await.unwrap();
    assert!(more, "b kept taking publishes; b:\n{}", b.log());
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert_all_delivered(&rx, &acked, || b.log()).await;
    let d: HashSet<String> = rx.ids().into_iter().collect();
    eprintln!(
        "kill -9 of one of two instances: {} acknowledged, {} deliveries, {} duplicates",
        acked.len(),
        rx.count(),
        rx.count() - d.len()
    );
}
