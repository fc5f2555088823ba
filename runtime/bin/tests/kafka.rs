//! Kafka end to end: the real `evmesh` binary against a real Kafka-protocol broker (tansu, one
//! per test on a free port), with an rdkafka producer and consumer on the test's side.
//!
//! tansu 0.6's in-memory engine answers a fetch with the record batches that *start* at or
//! after the fetch offset, so a consumer resuming in the middle of a multi-record batch would
//! never see the rest of that batch. Every producer here (evmesh's included, through
//! `properties`) therefore writes one record per batch (`batch.num.messages: 1`). With Apache
//! Kafka this setting is not needed.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::compliance::{check_sink, check_source};
use evmesh_test_kit::*;
use evmesh_test_tansu::compliance::KafkaHarness;
use evmesh_test_tansu::{produce, producer, Tansu};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// One record as a test consumer saw it.
#[derive(Debug, Clone)]
struct Rec {
    partition: i32,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    value: Vec<u8>,
}

/// Reads every partition of `topic` from the beginning, without a group.
fn read_all(
    brokers: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    timeout: Duration,
) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "evmesh-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    headers.insert(
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(Rec {
                partition: m.partition(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                headers,
                value: m.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    out
}

fn sink_sub(name: &str, topic: &str, brokers: &str, kafka_topic: &str, extra_sink: &str) -> String {
    format!(
        "  - name: {name}\n    topic: {topic}\n    start: earliest\n    sink: {{ type: kafka, brokers: \"{brokers}\", topic: {kafka_topic}, properties: {{ batch.num.messages: \"1\" }}{extra_sink} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_writes_binary_and_structured_records_keyed_by_partitionkey() {
    let broker = Tansu::start();
    broker.create_topic("out-bin", 1);
    broker.create_topic("out-str", 1);
    let b = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "subscriptions:\n{}{}",
        sink_sub("tobin", "in", &b, "out-bin", ""),
        sink_sub(
            "tostr",
            "in",
            &b,
            "out-str",
            ", mode: structured, key: subject"
        ),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    let (status, body) = send(
        &c,
        "POST",
        &ev.url("/topics/in"),
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "a%20b%251"),
            ("ce-source", "/orders"),
            ("ce-type", "order.created"),
            ("ce-subject", "sub-1"),
            ("ce-partitionkey", "cust-7"),
            ("ce-priority", "5"),
            ("content-type", "application/json"),
        ],
        r#"{"total": 12}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");

    let bin = read_all(&b, "out-bin", 1, 1, WAIT);
    assert_eq!(bin.len(), 1, "the binary-mode record arrived");
    let r = &bin[0];
    assert_eq!(r.key.as_deref(), Some("cust-7"), "key from partitionkey");
    assert_eq!(
        r.headers["ce_id"], "a b%1",
        "raw UTF-8, no percent-encoding"
    );
    assert_eq!(r.headers["ce_specversion"], "1.0");
    assert_eq!(r.headers["ce_type"], "order.created");
    assert_eq!(r.headers["ce_source"], "/orders");
    assert_eq!(r.headers["ce_priority"], "5");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.value, br#"{"total": 12}"#);

    let st = read_all(&b, "out-str", 1, 1, WAIT);
    assert_eq!(st.len(), 1, "the structured-mode record arrived");
    let r = &st[0];
    assert_eq!(
        r.key.as_deref(),
        Some("sub-1"),
        "key from the configured attribute"
    );
    assert!(r.headers["content-type"].starts_with("application/cloudevents+json"));
    let v: Value = serde_json::from_slice(&r.value).unwrap();
    assert_eq!(v["id"], "a b%1");
    assert_eq!(v["partitionkey"], "cust-7");
    assert_eq!(v["data"]["total"], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_reads_every_mode_and_the_binding_scenarios_into_a_webhook() {
    let broker = Tansu::start();
    broker.create_topic("ext", 2);
    let b = broker.brokers();
    let rx = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "sources:\n  - name: fromkafka\n    type: kafka\n    brokers: \"{b}\"\n    topics: [ext]\n    group: evmesh-src\n    into: inbound\n    start: earliest\nsubscriptions:\n{}",
        webhook_sub("hook", "inbound", &rx.url(), "    start: earliest\n")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let p = producer(&b);

    // The Kafka protocol binding scenarios, as records.
    let feature = std::fs::read_to_string(
        conformance_dir().join("cloudevents-conformance/features/kafka-protocol-binding.feature"),
    )
    .unwrap();
    let scenarios = parse_feature(&feature);
    assert_eq!(
        scenarios.len(),
        3,
        "binary plus two structured content types"
    );
    for (i, s) in scenarios.iter().enumerate() {
        let headers: Vec<(&str, &str)> = s
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        produce(&p, "ext", Some(&format!("k{i}")), &headers, &s.payload);
    }
    // A plain record (not a CloudEvent).
    produce(
        &p,
        "ext",
        Some("plain-key"),
        &[("content-type", "text/plain")],
        "hello",
    );
    p.flush(Duration::from_secs(10)).unwrap();

    assert!(
        wait_until(WAIT, || rx.count() >= 4).await,
        "got {}; log:\n{}",
        rx.count(),
        ev.log()
    );
    let got = rx.events();
    let from_scenarios: Vec<_> = got
        .iter()
        .filter(|g| g.header("ce-id").as_deref() == Some("1234-1234-1234"))
        .collect();
    assert_eq!(from_scenarios.len(), 3, "one event per scenario");
    // Every scenario expects the same attributes and data.
    for g in from_scenarios {
        for s in &scenarios {
            for (k, v) in &s.attributes {
                let h = if k == "datacontenttype" {
                    "content-type".to_owned()
                } else {
                    format!("ce-{k}")
                };
                assert_eq!(g.header(&h).as_deref(), Some(v.as_str()), "{k}");
            }
            let data: Value = serde_json::from_slice(&g.body).unwrap();
            assert_eq!(data, s.data, "data");
        }
    }
    let plain = got
        .iter()
        .find(|g| g.header("ce-type").as_deref() == Some("dev.evmesh.kafka.record"))
        .expect("the plain record, wrapped");
    assert_eq!(plain.header("ce-source").as_deref(), Some("kafka://ext"));
    assert_eq!(
        plain.header("ce-partitionkey").as_deref(),
        Some("plain-key")
    );
    assert_eq!(plain.header("ce-kafkatopic").as_deref(), Some("ext"));
    assert_eq!(plain.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(&plain.body[..], b"hello");
    let id = plain.header("ce-id").unwrap();
    assert!(id.starts_with("ext-"), "{id}");
}

struct Scenario {
    headers: Vec<(String, String)>,
    payload: String,
    attributes: Vec<(String, String)>,
    data: Value,
}

/// The Gherkin file's scenarios (and the outline's examples) as records and expectations.
fn parse_feature(text: &str) -> Vec<Scenario> {
    let mut out = Vec::new();
    for block in text.split("Scenario").skip(1) {
        let parts: Vec<&str> = block.split("\"\"\"").collect();
        let payload = parts[1].trim().to_owned();
        let data: Value = serde_json::from_str(parts[3].trim()).unwrap();
        let rows = |s: &str| -> Vec<Vec<String>> {
            s.lines()
                .map(str::trim)
                .filter(|l| l.starts_with('|'))
                .map(|l| {
                    l.trim_matches('|')
                        .split('|')
                        .map(|c| c.trim().to_owned())
                        .collect()
                })
                .collect()
        };
        let before = rows(parts[2].split("Then the attributes are").next().unwrap());
        let after_then = parts[2].split("Then the attributes are").nth(1).unwrap();
        let attributes: Vec<(String, String)> = rows(after_then)
            .into_iter()
            .skip(1)
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        let headers: Vec<(String, String)> = before
            .into_iter()
            .skip(1)
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        let examples = parts.get(4).map(|s| rows(s)).unwrap_or_default();
        if examples.is_empty() {
            out.push(Scenario {
                headers,
                payload,
                attributes,
                data,
            });
        } else {
            for ex in examples.iter().skip(1) {
                let subst = |v: &str| v.replace("<contentType>", &ex[0]);
                out.push(Scenario {
                    headers: headers.iter().map(|(k, v)| (k.clone(), subst(v))).collect(),
                    payload: payload.clone(),
                    attributes: attributes.clone(),
                    data: data.clone(),
                });
            }
        }
    }
    out
}

/// Every id once (at least) and, per key, first deliveries in publication order.
fn check_keyed(recs: &[Rec], n: usize) {
    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut key_partition: HashMap<String, i32> = HashMap::new();
    for r in recs {
        let id = r.headers["ce_id"].clone();
        if !seen.insert(id) {
            continue;
        }
        let key = r.key.clone().unwrap();
        let seq: i64 = r.headers["ce_seq"].parse().unwrap();
        if let Some(prev) = last.get(&key) {
            assert!(*prev < seq, "key {key}: {seq} after {prev}");
        }
        last.insert(key.clone(), seq);
        let p = *key_partition.entry(key.clone()).or_insert(r.partition);
        assert_eq!(p, r.partition, "one key, one partition");
    }
    assert_eq!(seen.len(), n, "every event arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_http_to_kafka_all_there_in_key_order() {
    let broker = Tansu::start();
    broker.create_topic("keyed", 3);
    let b = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "subscriptions:\n{}    ordering: key\n    maxInFlight: 256\n",
        sink_sub("tokafka", "orders", &b, "keyed", "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    const N: usize = 10_000;
    publish_keyed(&c, &ev, "orders", 0..N).await;
    let recs =
        tokio::task::spawn_blocking(move || read_all(&b, "keyed", 3, N, Duration::from_secs(120)))
            .await
            .unwrap();
    check_keyed(&recs, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_no_event() {
    let mut broker = Tansu::start();
    broker.create_topic("restart", 1);
    let b = broker.brokers();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "delivery: {{ retry: 1000, backoffPolicy: exponential, backoffDelay: PT0.1S, backoffMax: PT1S, timeout: PT5S }}\nsubscriptions:\n{}    ordering: key\n",
        sink_sub("tokafka", "orders", &b, "restart", "")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    publish_keyed(&c, &ev, "orders", 0..500).await;
    let b2 = b.clone();
    let first = tokio::task::spawn_blocking(move || read_all(&b2, "restart", 1, 500, WAIT))
        .await
        .unwrap();
    check_keyed(&first, 500);

    // The broker goes away while publishing goes on: evmesh keeps accepting (its own log) and
    // the sink keeps retrying.
    broker.stop();
    publish_keyed(&c, &ev, "orders", 500..1000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // tansu's memory engine comes back empty: the topic is made again, as an operator would.
    broker.restart();
    broker.create_topic("restart", 1);
    publish_keyed(&c, &ev, "orders", 1000..1500).await;
    let b2 = b.clone();
    let second = tokio::task::spawn_blocking(move || {
        read_all(&b2, "restart", 1, 1000, Duration::from_secs(120))
    })
    .await
    .unwrap();
    let ids: HashSet<String> = second.iter().map(|r| r.headers["ce_id"].clone()).collect();
    let missing: Vec<usize> = (500..1500)
        .filter(|i| !ids.contains(&format!("e{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events lost, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        ev.log()
    );
}

fn kafka_store_cfg(b: &str, extra: &str) -> String {
    format!(
        "store:\n  type: kafka\n  brokers: \"{b}\"\n  partitions: 3\n  sessionTimeout: PT3S\n  properties: {{ batch.num.messages: \"1\" }}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_store_delivers_and_dead_letters() {
    let broker = Tansu::start();
    let b = broker.brokers();
    let ok = Receiver::start(Behaviour::default()).await;
    let bad = Receiver::start(Behaviour {
        fail_first: usize::MAX,
        fail_status: 400,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_store_cfg(
        &b,
        &format!(
            "subscriptions:\n{}{}",
            webhook_sub("good", "orders", &ok.url(), "    start: earliest\n"),
            webhook_sub("broken", "orders", &bad.url(), "    start: earliest\n")
        ),
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let c = client();
    for i in 0..20 {
        assert_eq!(publish(&c, &ev, "orders", &format!("e{i}"), &[]).await, 202);
    }
    assert!(
        wait_until(WAIT, || ok.count() >= 20).await,
        "{}; log:\n{}",
        ok.count(),
        ev.log()
    );
    let ids: HashSet<String> = ok.ids().into_iter().collect();
    assert_eq!(ids.len(), 20);
    // Steady state: a second wave is delivered exactly once.
    let before = ok.count();
    for i in 20..1020 {
        assert_eq!(publish(&c, &ev, "orders", &format!("e{i}"), &[]).await, 202);
    }
    let unique = || ok.ids().into_iter().collect::<HashSet<_>>().len();
    assert!(wait_until(WAIT, || unique() >= 1020).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        ok.count() - before,
        1000,
        "one delivery per event in steady state"
    );
    let dead = dead_letters(&c, &ev, "broken", 1020).await;
    assert_eq!(
        dead.len(),
        1020,
        "every refused event is in the dead-letter list"
    );
    assert_eq!(dead[0]["deadletterstatus"], 400);
    // The events are Kafka records in the store's topic.
    let recs = tokio::task::spawn_blocking(move || read_all(&b, "evmesh.orders", 3, 1020, WAIT))
        .await
        .unwrap();
    assert_eq!(recs.len(), 1020);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_subscription_and_one_dies_by_kill9() {
    let broker = Tansu::start();
    let b = broker.brokers();
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
    let mut a = Evmesh::start(&dir.path().join("a"), &kafka_store_cfg(&b, &sub("a")));
    let bb = Evmesh::start(&dir.path().join("b"), &kafka_store_cfg(&b, &sub("b")));
    let c = client();
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    const N: usize = 3000;
    // Publish through both instances; those publishes that were answered 202 must arrive.
    let publisher = {
        let c = c.clone();
        let acked = acked.clone();
        let (ua, ub) = (a.url("/topics/work"), bb.url("/topics/work"));
        tokio::spawn(async move {
            for i in 0..N {
                let url = if i % 2 == 0 { &ua } else { &ub };
                let id = format!("e{i}");
                let h = [
                    ("ce-specversion", "1.0"),
                    ("ce-id", id.as_str()),
                    ("ce-source", "/t"),
                    ("ce-type", "t"),
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
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    // Both instances work on the subscription before one dies.
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
        bb.log()
    );
    a.kill9();
    publisher.await.unwrap();
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() > N / 2, "most publishes were answered");
    let delivered = || rx.ids().into_iter().collect::<HashSet<String>>();
    let all = wait_until(Duration::from_secs(120), || {
        let d = delivered();
        acked.iter().all(|id| d.contains(id))
    })
    .await;
    let d = delivered();
    let missing: Vec<&String> = acked.iter().filter(|id| !d.contains(*id)).collect();
    assert!(
        all,
        "{} acknowledged events never delivered, e.g. {:?}; b:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        bb.log()
    );
    eprintln!(
        "kill -9 of one of two instances: {} acknowledged, {} deliveries, {} duplicates",
        acked.len(),
        rx.count(),
        rx.count() - d.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_resumes_after_kill9_without_skipping_a_record() {
    let broker = Tansu::start();
    broker.create_topic("feed", 2);
    let b = broker.brokers();
    let rx = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // `start: latest` applies to a group without commits only: the restart must resume at the
    // committed offsets, not jump to the end (the Dapr redeploy bug).
    let cfg = format!(
        "sources:\n  - name: feed\n    type: kafka\n    brokers: \"{b}\"\n    topics: [feed]\n    group: evmesh-feed\n    into: feed\n    start: latest\nsubscriptions:\n{}",
        webhook_sub("hook", "feed", &rx.url(), "    start: earliest\n")
    );
    let data = dir.path().join("d");
    let mut ev = Evmesh::start(&data, &cfg);
    let p = producer(&b);
    // The group joins before anything is produced (with `latest`, earlier records are not its).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let value = |i: usize| format!("record-{i}");
    for i in 0..2000 {
        produce(&p, "feed", Some(&format!("k{}", i % 7)), &[], &value(i));
    }
    p.flush(Duration::from_secs(10)).unwrap();
    assert!(
        wait_until(WAIT, || rx.count() >= 300).await,
        "log:\n{}",
        ev.log()
    );
    ev.kill9();
    for i in 2000..3000 {
        produce(&p, "feed", Some(&format!("k{}", i % 7)), &[], &value(i));
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let ev = Evmesh::start(&data, &cfg);
    let bodies = || {
        rx.events()
            .into_iter()
            .map(|g| String::from_utf8_lossy(&g.body).into_owned())
            .collect::<HashSet<String>>()
    };
    let all = wait_until(Duration::from_secs(90), || bodies().len() >= 3000).await;
    let got = bodies();
    let missing: Vec<usize> = (0..3000).filter(|i| !got.contains(&value(*i))).collect();
    assert!(
        all && missing.is_empty(),
        "{} records skipped, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        ev.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_record_too_large_to_store_is_dead_lettered_and_the_rest_flows() {
    let broker = Tansu::start();
    broker.create_topic("big", 1);
    let b = broker.brokers();
    let rx = Receiver::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "store: {{ maxRecordBytes: 4096 }}\nsources:\n  - name: big\n    type: kafka\n    brokers: \"{b}\"\n    topics: [big]\n    group: evmesh-big\n    into: big\n    start: earliest\nsubscriptions:\n{}",
        webhook_sub("hook", "big", &rx.url(), "    start: earliest\n")
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let p = producer(&b);
    produce(&p, "big", Some("k"), &[], "small-0");
    produce(&p, "big", Some("k"), &[], &"L".repeat(10_000));
    for i in 1..5 {
        produce(&p, "big", Some("k"), &[], &format!("small-{i}"));
    }
    p.flush(Duration::from_secs(10)).unwrap();
    assert!(
        wait_until(WAIT, || rx.count() == 5).await,
        "the oversize record stalled the source; log:\n{}",
        ev.log()
    );
    let c = client();
    let (st, body) = send(
        &c,
        "GET",
        &ev.admin_url("/sources/big/deadletters"),
        &[],
        "",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let dead: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(dead.len(), 1, "{body}");
    let reason = dead[0]["deadletterreason"].as_str().unwrap();
    assert!(reason.contains("larger than the store accepts"), "{reason}");
    assert_eq!(dead[0]["deadlettersource"], "big");
    assert_eq!(dead[0]["kafkaoffset"], 1, "{}", dead[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_passes_the_connector_compliance_kit() {
    let h = KafkaHarness::new(Tansu::start());
    let dir = tempfile::tempdir().unwrap();
    check_sink(&h, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_passes_the_connector_compliance_kit() {
    let h = KafkaHarness::new(Tansu::start());
    let dir = tempfile::tempdir().unwrap();
    check_source(&h, dir.path()).await;
}
