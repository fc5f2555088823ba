//! The connector compliance kit: one set of black-box checks that every sink and every source
//! runs against its real destination or broker, through the real binary. A connector's test
//! file implements [`SinkHarness`] or [`SourceHarness`] and calls [`check_sink`] or
//! [`check_source`].
//!
//! Sinks: delivery in binary and structured mode (ids, attributes and data intact), at least
//! once across a `kill -9` of evmesh mid-stream, per-key order with `ordering: key`,
//! dead-lettering of a non-retryable refusal (one attempt, the reason kept), and a large
//! payload. Sources: every record arrives (ids and data intact) in binary and structured mode,
//! at least once across a `kill -9`, and a large payload.

use crate::{client, dead_letters, send, wait_until, Behaviour, Evmesh, HttpClient, Receiver};
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

/// How an event travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Binary => "binary",
            Mode::Structured => "structured",
        }
    }
}

/// An event as a destination holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub id: String,
    pub ty: String,
    /// The `partitionkey` extension (or the record key, where the protocol has one).
    pub key: Option<String>,
    pub data: Vec<u8>,
}

/// One place a sink delivers to (a webhook, a Kafka topic), created fresh per check.
pub trait Destination: Send + Sync {
    /// The sink's YAML, as a flow mapping: `{ type: webhook, url: "…" }`.
    fn sink_yaml(&self) -> String;
    /// Everything the destination holds now, in the order it holds it (per key, that is the
    /// order evmesh delivered in).
    fn received(&self) -> BoxFuture<'_, Vec<Received>>;
}

/// A sink connector under test.
pub trait SinkHarness: Sync {
    /// A fresh destination that takes events in `mode`.
    fn destination(&self, mode: Mode) -> BoxFuture<'_, Box<dyn Destination>>;
    /// A destination that refuses every event in a way that no retry can fix.
    fn refusing(&self) -> BoxFuture<'_, Box<dyn Destination>>;
    /// Extra top-level YAML for evmesh's config (a store section, say); usually empty.
    fn extra_config(&self) -> String {
        String::new()
    }
}

/// A record to produce upstream of a source.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub key: String,
    pub data: Vec<u8>,
    pub mode: Mode,
}

/// A source connector under test.
pub trait SourceHarness: Sync {
    /// The source's YAML as one list item (`  - name: …`), writing into evmesh topic `into`,
    /// starting from the earliest record.
    fn source_yaml(&self, name: &str, into: &str) -> String;
    /// Produces the records upstream as CloudEvents in their mode; returns once the broker
    /// has them.
    fn produce<'a>(&'a self, upstream: &'a str, records: &'a [Record]) -> BoxFuture<'a, ()>;
    /// A fresh upstream (a topic, a queue) to produce to; its name.
    fn upstream(&self) -> BoxFuture<'_, String>;
}

const WAIT: Duration = Duration::from_secs(90);

fn event_json(id: &str, key: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/compliance","type":"compliance.check","partitionkey":"{key}","datacontenttype":"application/json","data":{data}}}"#
    )
}

async fn publish_batch(c: &HttpClient, ev: &Evmesh, topic: &str, events: &[String]) {
    let body = format!("[{}]", events.join(","));
    let (st, msg) = send(
        c,
        "POST",
        &ev.url(&format!("/topics/{topic}")),
        &[("content-type", "application/cloudevents-batch+json")],
        body,
    )
    .await;
    assert_eq!(st, 202, "publish: {msg}");
}

fn config(extra: &str, subs: &[String]) -> String {
    format!("{extra}\nsubscriptions:\n{}", subs.concat())
}

fn sub(name: &str, sink: &str, extra: &str) -> String {
    format!("  - name: {name}\n    topic: {name}\n    sink: {sink}\n{extra}")
}

async fn wait_for(dest: &dyn Destination, n: usize, what: &str, ev: &Evmesh) -> Vec<Received> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = dest.received().await;
        let ids: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
        if ids.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {} of {n} distinct events arrived; log:\n{}",
            ids.len(),
            ev.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs every sink check. `dir` is a scratch folder for evmesh's data.
pub async fn check_sink(h: &dyn SinkHarness, dir: &Path) {
    sink_modes(h, &dir.join("modes")).await;
    sink_order(h, &dir.join("order")).await;
    sink_dead_letters(h, &dir.join("dead")).await;
    sink_large(h, &dir.join("large")).await;
    sink_restart(h, &dir.join("restart")).await;
}

/// Binary and structured mode: ids, type, key and data arrive as published.
async fn sink_modes(h: &dyn SinkHarness, dir: &Path) {
    let bin = h.destination(Mode::Binary).await;
    let st = h.destination(Mode::Structured).await;
    let ev = Evmesh::start(
        dir,
        &config(
            &h.extra_config(),
            &[
                sub("binary", &bin.sink_yaml(), "    start: earliest\n"),
                sub("structured", &st.sink_yaml(), "    start: earliest\n"),
            ],
        ),
    );
    let c = client();
    for topic in ["binary", "structured"] {
        let events: Vec<String> = (0..20)
            .map(|i| {
                event_json(
                    &format!("{topic}-{i}"),
                    &format!("k{i}"),
                    &format!("{{\"n\":{i}}}"),
                )
            })
            .collect();
        publish_batch(&c, &ev, topic, &events).await;
    }
    for (topic, dest) in [("binary", &bin), ("structured", &st)] {
        let got = wait_for(dest.as_ref(), 20, &format!("{topic} mode"), &ev).await;
        let by_id: HashMap<&str, &Received> = got.iter().map(|r| (r.id.as_str(), r)).collect();
        for i in 0..20 {
            let id = format!("{topic}-{i}");
            let r = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(r.ty, "compliance.check", "{topic}: {r:?}");
            assert_eq!(
                r.key.as_deref(),
                Some(format!("k{i}").as_str()),
                "{topic}: {r:?}"
            );
            let data: serde_json::Value = serde_json::from_slice(&r.data)
                .unwrap_or_else(|e| panic!("{topic} {id}: data is not the JSON sent: {e}"));
            assert_eq!(data, serde_json::json!({ "n": i }), "{topic}: {r:?}");
        }
    }
}

/// `ordering: key`: each key's events arrive in the order they were published.
async fn sink_order(h: &dyn SinkHarness, dir: &Path) {
    let dest = h.destination(Mode::Binary).await;
    let ev = Evmesh::start(
        dir,
        &config(
            &h.extra_config(),
            &[sub(
                "ordered",
                &dest.sink_yaml(),
                "    start: earliest\n    ordering: key\n    maxInFlight: 64\n",
            )],
        ),
    );
    let c = client();
    let n = 600;
    let events: Vec<String> = (0..n)
        .map(|i| event_json(&format!("o{i}"), &format!("key{}", i % 6), &i.to_string()))
        .collect();
    for chunk in events.chunks(100) {
        publish_batch(&c, &ev, "ordered", chunk).await;
    }
    let got = wait_for(dest.as_ref(), n, "ordering: key", &ev).await;
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in got {
        if !seen.insert(r.id.clone()) {
            continue; // a redelivery after a retry: at least once
        }
        let seq: i64 = String::from_utf8_lossy(&r.data).parse().unwrap_or(-1);
        let key = r.key.clone().unwrap_or_default();
        let prev = last.insert(key.clone(), seq).unwrap_or(-1);
        assert!(seq > prev, "key {key}: {} arrived after {prev}", seq);
    }
}

/// A refusal that no retry can fix goes to the dead-letter list after one attempt, with why.
/// The events carry 4 KiB of data, so a destination may refuse them for their size.
async fn sink_dead_letters(h: &dyn SinkHarness, dir: &Path) {
    let dest = h.refusing().await;
    let ev = Evmesh::start(
        dir,
        &config(
            &h.extra_config(),
            &[sub(
                "refused",
                &dest.sink_yaml(),
                "    start: earliest\n    delivery: { retry: 5, backoffDelay: PT0.01S }\n",
            )],
        ),
    );
    let c = client();
    let data = format!("\"{}\"", "d".repeat(4096));
    let events: Vec<String> = (0..3)
        .map(|i| event_json(&format!("r{i}"), "k", &data))
        .collect();
    publish_batch(&c, &ev, "refused", &events).await;
    let dead = dead_letters(&c, &ev, "refused", 3).await;
    assert_eq!(dead.len(), 3, "log:\n{}", ev.log());
    for d in &dead {
        assert_eq!(d["deadletterattempts"], 1, "not retried: {d}");
        assert!(
            d["deadletterreason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{d}"
        );
        assert_eq!(d["deadlettersubscription"], "refused");
    }
}

/// A 512 KiB event arrives whole.
async fn sink_large(h: &dyn SinkHarness, dir: &Path) {
    let dest = h.destination(Mode::Binary).await;
    let ev = Evmesh::start(
        dir,
        &config(
            &h.extra_config(),
            &[sub("large", &dest.sink_yaml(), "    start: earliest\n")],
        ),
    );
    let c = client();
    let big = format!("\"{}\"", "z".repeat(512 * 1024));
    publish_batch(&c, &ev, "large", &[event_json("big", "k", &big)]).await;
    let got = wait_for(dest.as_ref(), 1, "large payload", &ev).await;
    assert_eq!(got[0].data.len(), big.len());
    assert_eq!(got[0].data, big.as_bytes());
}

/// `kill -9` while delivering; after the restart every event arrives (duplicates allowed).
async fn sink_restart(h: &dyn SinkHarness, dir: &Path) {
    let dest = h.destination(Mode::Binary).await;
    let cfg = config(
        &h.extra_config(),
        &[sub("restart", &dest.sink_yaml(), "    start: earliest\n")],
    );
    let mut ev = Evmesh::start(dir, &cfg);
    let c = client();
    let n = 3000;
    let events: Vec<String> = (0..n)
        .map(|i| event_json(&format!("x{i}"), &format!("k{}", i % 10), &i.to_string()))
        .collect();
    for chunk in events.chunks(500) {
        publish_batch(&c, &ev, "restart", chunk).await;
    }
    // Kill once some (not all) have gone out.
    let start = std::time::Instant::now();
    while dest.received().await.is_empty() && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ev.kill9();
    let ev = Evmesh::start(dir, &cfg);
    let got = wait_for(dest.as_ref(), n, "after kill -9", &ev).await;
    let ids: BTreeSet<String> = got.into_iter().map(|r| r.id).collect();
    for i in 0..n {
        assert!(
            ids.contains(&format!("x{i}")),
            "x{i} lost across the restart"
        );
    }
}

/// Runs every source check. `dir` is a scratch folder for evmesh's data.
pub async fn check_source(h: &dyn SourceHarness, dir: &Path) {
    source_modes_and_large(h, &dir.join("modes")).await;
    source_restart(h, &dir.join("restart")).await;
}

fn records(prefix: &str, n: usize, mode: Mode) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            id: format!("{prefix}{i}"),
            key: format!("k{}", i % 5),
            data: format!("{{\"i\":{i}}}").into_bytes(),
            mode,
        })
        .collect()
}

async fn source_with_hook(h: &dyn SourceHarness, dir: &Path) -> (Evmesh, Receiver, String, String) {
    let upstream = h.upstream().await;
    let rx = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "sources:\n{}subscriptions:\n  - name: hook\n    topic: fromsource\n    start: earliest\n    sink: {{ type: webhook, url: \"{}\" }}\n",
        h.source_yaml("compliance", "fromsource").replace("UPSTREAM", &upstream),
        rx.url()
    );
    let ev = Evmesh::start(dir, &cfg);
    (ev, rx, upstream, cfg)
}

async fn wait_hook(rx: &Receiver, ids: &[String], ev: &Evmesh, what: &str) {
    let ok = wait_until(WAIT, || {
        let got: BTreeSet<String> = rx.ids().into_iter().collect();
        ids.iter().all(|i| got.contains(i))
    })
    .await;
    let got: BTreeSet<String> = rx.ids().into_iter().collect();
    let missing: Vec<&String> = ids.iter().filter(|i| !got.contains(*i)).collect();
    assert!(
        ok,
        "{what}: {} records missing, e.g. {:?}; log:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        ev.log()
    );
}

/// Binary and structured records arrive with their ids and data; so does a 512 KiB one.
async fn source_modes_and_large(h: &dyn SourceHarness, dir: &Path) {
    let (ev, rx, upstream, _) = source_with_hook(h, dir).await;
    let mut all = records("b", 30, Mode::Binary);
    all.extend(records("s", 30, Mode::Structured));
    all.push(Record {
        id: "large".into(),
        key: "k".into(),
        data: format!("\"{}\"", "q".repeat(512 * 1024)).into_bytes(),
        mode: Mode::Binary,
    });
    h.produce(&upstream, &all).await;
    let ids: Vec<String> = all.iter().map(|r| r.id.clone()).collect();
    wait_hook(&rx, &ids, &ev, "source modes").await;
    let by_id: HashMap<String, Vec<u8>> = rx
        .events()
        .into_iter()
        .filter_map(|g| g.header("ce-id").map(|id| (id, g.body.to_vec())))
        .collect();
    for r in &all {
        assert_eq!(
            by_id.get(&r.id).map(Vec::len),
            Some(r.data.len()),
            "{} ({:?}): data changed",
            r.id,
            r.mode
        );
        assert_eq!(by_id[&r.id], r.data, "{}", r.id);
    }
}

/// `kill -9` mid-stream; after the restart every record arrives.
async fn source_restart(h: &dyn SourceHarness, dir: &Path) {
    let (mut ev, rx, upstream, cfg) = source_with_hook(h, dir).await;
    let first = records("f", 1500, Mode::Binary);
    h.produce(&upstream, &first).await;
    let start = std::time::Instant::now();
    while rx.count() < 100 && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ev.kill9();
    let second = records("g", 500, Mode::Binary);
    h.produce(&upstream, &second).await;
    let ev = Evmesh::start(dir, &cfg);
    let ids: Vec<String> = first.iter().chain(&second).map(|r| r.id.clone()).collect();
    wait_hook(&rx, &ids, &ev, "after kill -9").await;
}

/// The webhook as a [`SinkHarness`]: a real HTTP receiver per destination.
pub struct WebhookHarness;

struct WebhookDestination {
    rx: Receiver,
    mode: Mode,
}

impl Destination for WebhookDestination {
    fn sink_yaml(&self) -> String {
        format!(
            "{{ type: webhook, mode: {}, url: \"{}\" }}",
            self.mode.as_str(),
            self.rx.url()
        )
    }

    fn received(&self) -> BoxFuture<'_, Vec<Received>> {
        let got = self.rx.events();
        let mode = self.mode;
        Box::pin(async move {
            got.into_iter()
                .map(|g| match mode {
                    Mode::Binary => Received {
                        id: g.header("ce-id").unwrap_or_default(),
                        ty: g.header("ce-type").unwrap_or_default(),
                        key: g.header("ce-partitionkey"),
                        data: g.body.to_vec(),
                    },
                    Mode::Structured => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&g.body).unwrap_or_default();
                        Received {
                            id: v["id"].as_str().unwrap_or_default().to_owned(),
                            ty: v["type"].as_str().unwrap_or_default().to_owned(),
                            key: v["partitionkey"].as_str().map(str::to_owned),
                            data: serde_json::to_vec(&v["data"]).unwrap_or_default(),
                        }
                    }
                })
                .collect()
        })
    }
}

impl SinkHarness for WebhookHarness {
    fn destination(&self, mode: Mode) -> BoxFuture<'_, Box<dyn Destination>> {
        Box::pin(async move {
            Box::new(WebhookDestination {
                rx: Receiver::start(Behaviour::default()).await,
                mode,
            }) as Box<dyn Destination>
        })
    }

    fn refusing(&self) -> BoxFuture<'_, Box<dyn Destination>> {
        Box::pin(async move {
            let rx = Receiver::start(Behaviour {
                fail_first: usize::MAX,
                fail_status: 422,
                ..Default::default()
            })
            .await;
            Box::new(WebhookDestination {
                rx,
                mode: Mode::Binary,
            }) as Box<dyn Destination>
        })
    }
}
