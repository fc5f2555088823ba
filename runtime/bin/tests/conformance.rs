//! Third-party CloudEvents conformance material, run against the real binary: every valid event
//! reaches a webhook unchanged, every invalid one is refused with a 4xx and never delivered.
#![allow(clippy::unwrap_used)] // helpers of a test crate: a panic is a failed test

use evmesh_test_kit::*;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

async fn setup() -> (tempfile::TempDir, Evmesh, Receiver, Receiver) {
    let dir = tempfile::tempdir().unwrap();
    let binary = Receiver::start(Behaviour::default()).await;
    let structured = Receiver::start(Behaviour::default()).await;
    let cfg = format!(
        "subscriptions:\n{}  - name: structured\n    topic: conf\n    sink: {{ type: webhook, url: \"{}\", mode: structured }}\n",
        webhook_sub("bin", "conf", &binary.url(), ""),
        structured.url()
    );
    let ev = Evmesh::start(&dir.path().join("data"), &cfg);
    (dir, ev, binary, structured)
}

fn load(name: &str) -> Vec<Value> {
    let path = conformance_dir()
        .join("cloudevents-conformance-format-tests/format/json")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["tests"].as_array().unwrap().clone()
}

/// The event as a consumer must see it: the input minus members that are null.
fn without_nulls(v: &Value) -> Value {
    let mut o = v.as_object().unwrap().clone();
    o.retain(|_, v| !v.is_null());
    Value::Object(o)
}

fn assert_binary_matches(got: &Got, want: &Value, case: &str) {
    for (k, v) in want.as_object().unwrap() {
        if v.is_null() || k == "data" || k == "data_base64" {
            continue;
        }
        let expect = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let header = if k == "datacontenttype" {
            "content-type".to_owned()
        } else {
            format!("ce-{k}")
        };
        let raw = got
            .header(&header)
            .unwrap_or_else(|| panic!("{case}: missing header {header}"));
        let decoded = evmesh_core::http_binding::percent_decode(raw.as_bytes()).unwrap();
        assert_eq!(decoded, expect, "{case}: header {header}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_format_valid_events_are_delivered_unchanged() {
    let (_dir, ev, bin, structured) = setup().await;
    let c = client();
    let cases = load("valid-events.json");
    assert!(cases.len() >= 10);
    for (i, case) in cases.iter().enumerate() {
        let name = case["id"].as_str().unwrap();
        let event = &case["event"];
        let (status, body) = send(
            &c,
            "POST",
            &ev.url("/topics/conf"),
            &[("content-type", "application/cloudevents+json")],
            event.to_string(),
        )
        .await;
        assert_eq!(status, 202, "{name}: {body}");
        assert!(
            wait_until(WAIT, || bin.count() > i && structured.count() > i).await,
            "{name} not delivered"
        );
        let got = &structured.events()[i];
        let delivered: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(
            delivered,
            without_nulls(event),
            "{name}: structured delivery differs"
        );
        let got = &bin.events()[i];
        assert_binary_matches(got, event, name);
        if let Some(Value::String(text)) = event.get("data") {
            assert_eq!(got.body, text.as_bytes(), "{name}: data bytes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_format_invalid_events_are_refused_and_never_delivered() {
    let (_dir, ev, bin, _structured) = setup().await;
    let c = client();
    let cases = load("invalid-events.json");
    assert!(cases.len() >= 25);
    for case in &cases {
        let name = case["id"].as_str().unwrap();
        let (status, body) = send(
            &c,
            "POST",
            &ev.url("/topics/conf"),
            &[("content-type", "application/cloudevents+json")],
            case["event"].to_string(),
        )
        .await;
        assert_eq!(status, 400, "{name} was not refused: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}: no error message"
        );
        assert!(
            err["attribute"].is_string(),
            "{name}: error names no attribute: {body}"
        );
    }
    // A sentinel proves delivery works, and that nothing invalid went before it.
    assert_eq!(publish(&c, &ev, "conf", "sentinel", &[]).await, 202);
    assert!(wait_until(WAIT, || bin.count() == 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bin.ids(), vec!["sentinel".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_batches_are_accepted_or_refused_whole() {
    let (_dir, ev, bin, structured) = setup().await;
    let c = client();
    let mut expected = 0;
    for case in load("valid-batches.json") {
        let name = case["id"].as_str().unwrap();
        let batch = case["batch"].as_array().unwrap();
        let (status, body) = send(
            &c,
            "POST",
            &ev.url("/topics/conf"),
            &[("content-type", "application/cloudevents-batch+json")],
            case["batch"].to_string(),
        )
        .await;
        assert_eq!(status, 202, "{name}: {body}");
        let n = batch.len();
        assert!(
            wait_until(WAIT, || structured.count() >= expected + n).await,
            "{name}: events missing"
        );
        // Deliveries run concurrently, so compare the batch as a multiset.
        let mut got: Vec<String> = structured.events()[expected..expected + n]
            .iter()
            .map(|g| {
                serde_json::from_slice::<Value>(&g.body)
                    .unwrap()
                    .to_string()
            })
            .collect();
        let mut want: Vec<String> = batch.iter().map(|e| without_nulls(e).to_string()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name}");
        expected += n;
    }
    for case in load("invalid-batches.json") {
        let name = case["id"].as_str().unwrap();
        let (status, body) = send(
            &c,
            "POST",
            &ev.url("/topics/conf"),
            &[("content-type", "application/cloudevents-batch+json")],
            case["batch"].to_string(),
        )
        .await;
        assert_eq!(status, 400, "{name}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert!(err["index"].is_u64(), "{name}: no batch index in {body}");
    }
    assert_eq!(publish(&c, &ev, "conf", "sentinel", &[]).await, 202);
    assert!(wait_until(WAIT, || bin.count() == expected + 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        bin.count(),
        expected + 1,
        "an invalid batch was partly delivered"
    );
}

/// One event of the cloudevents/conformance YAML files.
struct YamlCase {
    mode: Option<String>,
    attrs: Vec<(String, String)>,
    exts: Vec<(String, String)>,
    transport: Vec<(String, String)>,
    data: String,
}

fn scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => {
            let s = n.to_string();
            if s.contains('.') {
                s
            } else {
                format!("{s}.0")
            }
        }
        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
    }
}

fn yaml_cases() -> Vec<(String, YamlCase)> {
    let base = conformance_dir().join("cloudevents-conformance/yaml");
    let mut out = Vec::new();
    for file in [
        "v1.yaml",
        "v03.yaml",
        "v1.0/v1_minimum.yaml",
        "v0.3/v03_minimum.yaml",
    ] {
        let text = std::fs::read_to_string(base.join(file)).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            let ca = v["ContextAttributes"].as_mapping().unwrap();
            let mut attrs = Vec::new();
            let mut exts = Vec::new();
            for (k, val) in ca {
                let k = k.as_str().unwrap().to_owned();
                if k == "Extensions" {
                    for (ek, ev) in val.as_mapping().unwrap() {
                        exts.push((ek.as_str().unwrap().to_owned(), scalar(ev)));
                    }
                } else {
                    attrs.push((k, scalar(val)));
                }
            }
            let transport = v
                .get("TransportExtensions")
                .and_then(|t| t.as_mapping())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.as_str().unwrap().to_owned(), scalar(v)))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                format!("{file}#{i}"),
                YamlCase {
                    mode: v.get("Mode").map(scalar),
                    attrs,
                    exts,
                    transport,
                    data: v.get("Data").map(scalar).unwrap_or_default(),
                },
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_yaml_events_arrive_byte_for_byte() {
    let (_dir, ev, bin, _structured) = setup().await;
    let c = client();
    let cases = yaml_cases();
    assert!(cases.len() >= 15, "found {} cases", cases.len());
    let mut n = 0;
    for (name, case) in &cases {
        let modes: Vec<&str> = match case.mode.as_deref() {
            Some(m) => vec![m],
            None => vec!["binary", "structured"],
        };
        let ct = case
            .attrs
            .iter()
            .find(|(k, _)| k == "datacontenttype")
            .map(|(_, v)| v.clone());
        for mode in modes {
            let (status, body) = if mode == "binary" {
                let mut h: Vec<(String, String)> = Vec::new();
                for (k, v) in &case.attrs {
                    if k == "datacontenttype" {
                        h.push(("content-type".into(), v.clone()));
                    } else {
                        h.push((
                            format!("ce-{k}"),
                            evmesh_core::http_binding::percent_encode(v),
                        ));
                    }
                }
                for (k, v) in &case.exts {
                    h.push((
                        format!("ce-{k}"),
                        evmesh_core::http_binding::percent_encode(v),
                    ));
                }
                h.extend(case.transport.iter().cloned());
                let hr: Vec<(&str, &str)> =
                    h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                send(&c, "POST", &ev.url("/topics/conf"), &hr, case.data.clone()).await
            } else {
                let mut o = serde_json::Map::new();
                for (k, v) in case.attrs.iter().chain(case.exts.iter()) {
                    o.insert(k.clone(), Value::String(v.clone()));
                }
                let json_data = ct.as_deref().is_none_or(|c| c.contains("json"));
                let mut text = Value::Object(o).to_string();
                text.pop();
                if json_data {
                    text.push_str(",\"data\":");
                    text.push_str(&case.data);
                } else {
                    text.push_str(",\"data\":");
                    text.push_str(&Value::String(case.data.clone()).to_string());
                }
                text.push('}');
                send(
                    &c,
                    "POST",
                    &ev.url("/topics/conf"),
                    &[("content-type", "application/cloudevents+json")],
                    text,
                )
                .await
            };
            assert_eq!(status, 202, "{name} ({mode}): {body}");
            assert!(
                wait_until(WAIT, || bin.count() > n).await,
                "{name} ({mode}) not delivered"
            );
            let got = &bin.events()[n];
            n += 1;
            for (k, v) in case.attrs.iter().chain(case.exts.iter()) {
                let header = if k == "datacontenttype" {
                    "content-type".to_owned()
                } else {
                    format!("ce-{k}")
                };
                let raw = got
                    .header(&header)
                    .unwrap_or_else(|| panic!("{name} ({mode}): no {header}"));
                let decoded = evmesh_core::http_binding::percent_decode(raw.as_bytes()).unwrap();
                assert_eq!(&decoded, v, "{name} ({mode}): {header}");
            }
            // In structured mode JSON data is a JSON value: whitespace around it is not part of it.
            let json_value =
                mode == "structured" && ct.as_deref().is_none_or(|c| c.contains("json"));
            let want = if json_value {
                case.data.trim_end()
            } else {
                case.data.as_str()
            };
            assert_eq!(got.body, want.as_bytes(), "{name} ({mode}): data bytes");
        }
    }
}

/// The Gherkin scenarios of the HTTP binding, sent as the raw requests they describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_binding_feature_scenarios() {
    let (_dir, ev, bin, _structured) = setup().await;
    let feature = std::fs::read_to_string(
        conformance_dir().join("cloudevents-conformance/features/http-protocol-binding.feature"),
    )
    .unwrap();
    let mut n = 0;
    for scenario in feature.split("Scenario Outline:").skip(1) {
        let blocks: Vec<&str> = scenario.split("\"\"\"").collect();
        let request = blocks[1];
        let expected_json: Value = serde_json::from_str(blocks[3].trim()).unwrap();
        let table: Vec<Vec<String>> = scenario
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_owned())
                    .collect()
            })
            .collect();
        let examples_at = table
            .iter()
            .position(|r| r == &vec!["contentType".to_string()])
            .unwrap();
        let attrs: Vec<(String, String)> = table[1..examples_at]
            .iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        for ex in &table[examples_at + 1..] {
            let ct = &ex[0];
            let text = dedent(request).replace("<contentType>", ct);
            let (head, body) = text.split_once("\n\n").unwrap();
            let mut lines: Vec<String> = head.lines().map(str::to_owned).collect();
            lines[0] = "POST /topics/conf HTTP/1.1".into();
            lines.retain(|l| !l.to_ascii_lowercase().starts_with("content-length"));
            lines.push(format!("Content-Length: {}", body.len()));
            lines.push("Connection: close".into());
            let raw = format!("{}\r\n\r\n{}", lines.join("\r\n"), body);
            let mut s = tokio::net::TcpStream::connect(ev.http).await.unwrap();
            s.write_all(raw.as_bytes()).await.unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(resp.starts_with("HTTP/1.1 202"), "{ct}: {resp}");
            assert!(
                wait_until(WAIT, || bin.count() > n).await,
                "{ct}: not delivered"
            );
            let got = &bin.events()[n];
            n += 1;
            for (k, v) in &attrs {
                let v = v.replace("<contentType>", ct);
                let header = if k == "datacontenttype" {
                    "content-type".to_owned()
                } else {
                    format!("ce-{k}")
                };
                assert_eq!(
                    got.header(&header).as_deref(),
                    Some(v.as_str()),
                    "{ct}: {k}"
                );
            }
            let data: Value = serde_json::from_slice(&got.body).unwrap();
            assert_eq!(data, expected_json, "{ct}: data");
        }
    }
    assert_eq!(n, 4, "expected the 4 scenario examples");
}

fn dedent(s: &str) -> String {
    let lines: Vec<&str> = s.lines().skip_while(|l| l.trim().is_empty()).collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: Vec<String> = lines
        .iter()
        .map(|l| {
            if l.len() >= indent {
                l[indent..].to_owned()
            } else {
                String::new()
            }
        })
        .collect();
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.join("\n")
}
