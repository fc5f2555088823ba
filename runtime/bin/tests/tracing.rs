//! Traces: one published event gives one connected trace (publish → store → filters,
//! transforms, delivery attempts → the receiver), exported over OTLP/HTTP to a real
//! OpenTelemetry collector (Rotel, from `scripts/otel-collector.sh`), whose receiver decodes the
//! requests strictly and whose debug exporter prints every span it accepted.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running collector: OTLP in on `addr`, the decoded spans printed to `out`.
struct Collector {
    child: Child,
    addr: SocketAddr,
    out: PathBuf,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Collector {
    fn start(dir: &Path) -> Collector {
        let (http, grpc) = (free_addr(), free_addr());
        let out = dir.join("collector.out");
        let child = Command::new(cached_tool("OTEL_COLLECTOR_BIN", "otel-collector.sh"))
            .arg("start")
            .args(["--otlp-http-endpoint", &http.to_string()])
            .args(["--otlp-grpc-endpoint", &grpc.to_string()])
            .args(["--exporter", "blackhole"])
            .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .args(["--batch-timeout", "50ms"])
            .arg("--pid-file")
            .arg(dir.join("collector.pid"))
            .arg("--log-file")
            .arg(dir.join("collector.log"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(http).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the collector did not listen on {http}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Collector {
            child,
            addr: http,
            out,
        }
    }

    /// Every span the collector accepted, from its debug exporter's print-out, as
    /// `{service, traceId, spanId, parentSpanId?, name, kind, status, attributes: {k: v}}`.
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        parse_spans(&text)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the debug exporter's detailed print-out: `Resource attributes:` then `-> k: Str(v)`
/// lines, then per span `Span #n`, `    Field : value` lines and its `Attributes:`.
fn parse_spans(text: &str) -> Vec<Value> {
    let mut spans: Vec<Value> = Vec::new();
    let mut service = String::new();
    let mut in_resource = false;
    for line in text.lines() {
        let t = line.trim();
        if t == "Resource attributes:" {
            in_resource = true;
        } else if t.starts_with("ScopeSpans #") {
            in_resource = false;
        } else if t.starts_with("Span #") {
            spans.push(json!({ "service": service, "attributes": {} }));
        } else if let Some(attr) = t.strip_prefix("-> ") {
            let Some((k, v)) = attr.split_once(": ") else {
                continue;
            };
            // Str(x), Int(n), Bool(b): keep what is inside the parentheses.
            let v = v
                .split_once('(')
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .unwrap_or(v);
            if in_resource {
                if k == "service.name" {
                    service = v.to_owned();
                }
            } else if let Some(span) = spans.last_mut() {
                span["attributes"][k] = v.into();
            }
        } else if let (Some(span), Some((k, v))) = (spans.last_mut(), t.split_once(" : ")) {
            let v = v.trim();
            let key = match k.trim() {
                "Trace ID" => "traceId",
                "Parent ID" => "parentSpanId",
                "ID" => "spanId",
                "Name" => "name",
                "Kind" => "kind",
                "Status code" => "status",
                _ => continue,
            };
            // A field printed empty (a root span's `Parent ID`) is left out.
            if !v.is_empty() {
                span[key] = v.into();
            }
        }
    }
    spans
}

fn find<'a>(spans: &'a [Value], trace: &str, name: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| s["traceId"] == trace && s["name"] == name)
}

#[test]
fn the_collector_print_out_parses() {
    let text = "ResourceSpans #0\nResource attributes:\n     -> service.name: Str(svc)\nScopeSpans #0\nSpan #0\n    Trace ID       : 4bf9\n    Parent ID      : \n    ID             : 00f0\n    Name           : publish t\n    Kind           : SPAN_KIND_SERVER\nStart time: 1000\n    Status code    : STATUS_CODE_OK\nAttributes:\n     -> evmesh.matched: Str(true)\n     -> n: Int(2)\n";
    let spans = parse_spans(text);
    assert_eq!(
        spans,
        vec![json!({
            "service": "svc", "traceId": "4bf9", "spanId": "00f0", "name": "publish t",
            "kind": "SPAN_KIND_SERVER", "status": "STATUS_CODE_OK",
            "attributes": {"evmesh.matched": "true", "n": "2"},
        })]
    );
}

fn plugin(name: &str) -> String {
    example_plugins()
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

/// The spans of `trace` named `name`.
fn named<'a>(spans: &'a [Value], trace: &str, name: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["traceId"] == trace && s["name"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_published_event_gives_one_connected_trace() {
    let dir = tempfile::tempdir().unwrap();
    let otlp = Collector::start(dir.path());
    let hook = Receiver::start(Behaviour::default()).await;
    let shaped = Receiver::start(Behaviour::default()).await;
    let paid = Receiver::start(Behaviour::default()).await;
    // audit: two built-in filters; shaped: a built-in and a WASM transform; paid: a WASM
    // filter that rejects the event (its data is not JSON).
    let cfg = format!(
        "telemetry:\n  tracing:\n    otlpEndpoint: http://{}/v1/traces\n    serviceName: evmesh-test\nsubscriptions:\n{}{}{}",
        otlp.addr,
        webhook_sub(
            "audit",
            "t",
            &hook.url(),
            "    filters:\n      - exact: { type: test.event }\n      - cesql: \"source LIKE '/te%'\"\n"
        ),
        webhook_sub(
            "shaped",
            "t",
            &shaped.url(),
            &format!(
                "    transforms:\n      - set: {{ type: audited }}\n      - wasm: {{ uses: \"{}\", with: {{ type: enriched }} }}\n",
                plugin("enrich")
            )
        ),
        webhook_sub(
            "paid",
            "t",
            &paid.url(),
            &format!(
                "    filters:\n      - wasm: {{ uses: \"{}\", with: {{ field: status, equals: paid }} }}\n",
                plugin("json_field_filter")
            )
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
    assert!(
        wait_until(Duration::from_secs(20), || hook.count() == 1
            && shaped.count() == 1)
        .await
    );
    let mut all = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            all = otlp.spans();
            find(&all, trace, "deliver audit").is_some()
                && find(&all, trace, "deliver shaped").is_some()
                && find(&all, trace, "publish t").is_some()
                && find(&all, trace, "store append").is_some()
                && named(&all, trace, "filter audit").len() == 2
                && named(&all, trace, "transform shaped").len() == 2
                && named(&all, trace, "filter paid").len() == 1
        })
        .await,
        "spans: {all:#?}"
    );
    let publish_span = find(&all, trace, "publish t").unwrap();
    assert_eq!(publish_span["parentSpanId"], caller);
    assert_eq!(publish_span["kind"], "SPAN_KIND_SERVER");
    let p_id = publish_span["spanId"].as_str().unwrap();
    let store = find(&all, trace, "store append").unwrap();
    assert_eq!(store["parentSpanId"], p_id);
    let deliver = find(&all, trace, "deliver audit").unwrap();
    assert_eq!(deliver["parentSpanId"], p_id);
    assert_eq!(deliver["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(deliver["status"], "STATUS_CODE_OK");
    assert_eq!(deliver["attributes"]["evmesh.subscription"], "audit");
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

    // Each filter and each transform step is a span, a child of the publish span, with its
    // place in the subscription, its verdict, and the plugin for a WASM step.
    let step = |s: &Value| s["attributes"]["evmesh.step"].as_str().unwrap().to_owned();
    let mut filters: Vec<&Value> = named(&all, trace, "filter audit");
    filters.sort_by_key(|s| step(s));
    assert_eq!(
        filters.iter().map(|s| step(s)).collect::<Vec<_>>(),
        ["filters[0]", "filters[1]"]
    );
    for f in &filters {
        assert_eq!(f["parentSpanId"], p_id);
        assert_eq!(f["attributes"]["evmesh.matched"], "true", "{f}");
        assert!(f["attributes"].get("evmesh.plugin").is_none(), "{f}");
    }
    let wasm_filter = named(&all, trace, "filter paid")[0];
    assert_eq!(wasm_filter["parentSpanId"], p_id);
    assert_eq!(step(wasm_filter), "filters[0]");
    assert_eq!(wasm_filter["attributes"]["evmesh.matched"], "false");
    assert!(
        wasm_filter["attributes"]["evmesh.plugin"]
            .as_str()
            .unwrap()
            .contains("json_field_filter"),
        "{wasm_filter}"
    );
    let mut transforms: Vec<&Value> = named(&all, trace, "transform shaped");
    transforms.sort_by_key(|s| step(s));
    assert_eq!(step(transforms[0]), "transforms[0]");
    assert!(transforms[0]["attributes"].get("evmesh.plugin").is_none());
    assert_eq!(step(transforms[1]), "transforms[1]");
    assert!(transforms[1]["attributes"]["evmesh.plugin"]
        .as_str()
        .unwrap()
        .contains("enrich"));
    for t in &transforms {
        assert_eq!(t["parentSpanId"], p_id);
        assert_eq!(t["status"], "STATUS_CODE_OK");
    }
    assert_eq!(
        find(&all, trace, "deliver shaped").unwrap()["parentSpanId"],
        p_id
    );
    assert_eq!(
        shaped.events()[0].header("ce-type").as_deref(),
        Some("enriched")
    );
    assert_eq!(paid.count(), 0);
    // Every span of the trace is one of these (one connected tree, rooted at the caller).
    let ids: Vec<&str> = [publish_span, store, deliver]
        .iter()
        .map(|s| s["spanId"].as_str().unwrap())
        .collect();
    for s in all.iter().filter(|s| s["traceId"] == trace) {
        assert_eq!(s["service"], "evmesh-test", "{s}");
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
            all = otlp.spans();
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
