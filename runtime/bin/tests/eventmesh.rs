//! The EventMesh protocols against the real binary: TCP consumer groups in both modes with
//! several SDK clients, a member killed mid-stream, an SDK subscriber riding through a restart
//! of evmesh, request-reply over HTTP and TCP, the EventMesh HTTP API with a receiver written
//! to EventMesh's push format (in Node.js), and bad frames.
#![allow(clippy::unwrap_used)]

use bytes::{BufMut, BytesMut};
use evmesh_sdk::cloudevents::{Event, EventBuilder, EventBuilderV10};
use evmesh_sdk::protocol::{Command, Decoder, Frame, Header, UserAgent};
use evmesh_sdk::{AttributesReader, ClientId, Delivery, Publisher, Subscriber, SubscriberConfig};
use evmesh_test_kit::*;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

fn event(id: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("/test")
        .ty("test.event")
        .data("text/plain", format!("data-{id}"))
        .build()
        .unwrap()
}

/// Collects every delivery of a subscriber (acking each) into `got`.
fn collect(mut sub: Subscriber, got: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(d) = sub.next().await {
            got.lock().unwrap().push(d.event.id().to_owned());
            d.ack().await.unwrap();
        }
    })
}

fn tcp(ev: &Evmesh) -> String {
    ev.tcp.expect("the tcp listener is on").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustering_shares_a_groups_events_and_broadcasting_gives_each_member_all() {
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start(&dir.path().join("d"), "");
    let addr = tcp(&ev);
    let mut handles = Vec::new();
    let mut clustered = Vec::new();
    let mut broadcast = Vec::new();
    for i in 0..2 {
        let got = Arc::new(Mutex::new(Vec::new()));
        let cfg = SubscriberConfig::new(&addr, "workers", "jobs", ClientId::new("w").instance(i));
        handles.push(collect(
            Subscriber::connect(cfg).await.unwrap(),
            got.clone(),
        ));
        clustered.push(got);
        let got = Arc::new(Mutex::new(Vec::new()));
        let cfg = SubscriberConfig::new(&addr, "auditors", "jobs", ClientId::new("a").instance(i))
            .broadcasting();
        handles.push(collect(
            Subscriber::connect(cfg).await.unwrap(),
            got.clone(),
        ));
        broadcast.push(got);
    }
    let publisher = Publisher::tcp(&addr, ClientId::new("shop")).await.unwrap();
    let events: Vec<Event> = (0..200).map(|i| event(&format!("j{i}"))).collect();
    for chunk in events.chunks(50) {
        publisher.publish_batch("jobs", chunk).await.unwrap();
    }
    let all: BTreeSet<String> = (0..200).map(|i| format!("j{i}")).collect();
    let union = || -> BTreeSet<String> {
        clustered
            .iter()
            .flat_map(|g| g.lock().unwrap().clone())
            .collect()
    };
    assert!(
        wait_until(WAIT, || union() == all).await,
        "clustering: {} of 200",
        union().len()
    );
    for g in &clustered {
        let n = g.lock().unwrap().len();
        assert!(n > 0 && n < 200, "each member takes a share, got {n}");
    }
    for (i, g) in broadcast.iter().enumerate() {
        let ok = wait_until(WAIT, || {
            g.lock().unwrap().iter().cloned().collect::<BTreeSet<_>>() == all
        })
        .await;
        assert!(ok, "broadcast member {i} got {}", g.lock().unwrap().len());
    }
    for h in handles {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_leaves_nothing_behind_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start(&dir.path().join("d"), "");
    let addr = tcp(&ev);
    // The doomed member takes events and never acks them, then its process dies.
    let doomed_cfg = SubscriberConfig::new(&addr, "g", "t", ClientId::new("doomed").instance(1));
    let mut doomed = Subscriber::connect(doomed_cfg).await.unwrap();
    let survivor_got = Arc::new(Mutex::new(Vec::new()));
    let cfg = SubscriberConfig::new(&addr, "g", "t", ClientId::new("survivor").instance(2));
    let survivor = collect(
        Subscriber::connect(cfg).await.unwrap(),
        survivor_got.clone(),
    );
    let publisher = Publisher::http(&format!("http://{}", ev.http)).unwrap();
    let events: Vec<Event> = (0..300).map(|i| event(&format!("k{i}"))).collect();
    publisher.publish_batch("t", &events).await.unwrap();
    let mut held: Vec<Delivery> = Vec::new();
    while held.len() < 20 {
        let d = tokio::time::timeout(WAIT, doomed.next())
            .await
            .unwrap()
            .unwrap();
        held.push(d);
    }
    drop(held);
    drop(doomed); // the connection closes with 20+ pushes unacknowledged
    let all: BTreeSet<String> = (0..300).map(|i| format!("k{i}")).collect();
    let got = || {
        survivor_got
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert!(
        wait_until(WAIT, || got() == all).await,
        "the survivor got {} of 300; log:\n{}",
        got().len(),
        ev.log()
    );
    survivor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_subscriber_rides_through_a_restart_of_evmesh() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    // Fixed ports, so the client finds the server again after the restart.
    let port = free_port();
    let tcp_addr = format!("127.0.0.1:{port}");
    let env = [("EVMESH_SERVER__TCP", tcp_addr.as_str())];
    let mut ev = Evmesh::start_with_env(&data, "", &env);
    let got = Arc::new(Mutex::new(Vec::new()));
    let cfg = SubscriberConfig::new(&tcp_addr, "g", "t", ClientId::new("steady"));
    let sub = collect(Subscriber::connect(cfg).await.unwrap(), got.clone());
    let p = Publisher::http(&format!("http://{}", ev.http)).unwrap();
    let first: Vec<Event> = (0..100).map(|i| event(&format!("a{i}"))).collect();
    p.publish_batch("t", &first).await.unwrap();
    assert!(wait_until(WAIT, || got.lock().unwrap().len() >= 50).await);
    assert!(ev.terminate().success());
    // Published while the subscriber is away from a live server: kept for its group.
    let ev = Evmesh::start_with_env(&data, "", &env);
    let p = Publisher::http(&format!("http://{}", ev.http)).unwrap();
    let second: Vec<Event> = (0..100).map(|i| event(&format!("b{i}"))).collect();
    p.publish_batch("t", &second).await.unwrap();
    let want: BTreeSet<String> = first
        .iter()
        .chain(&second)
        .map(|e| e.id().to_owned())
        .collect();
    let have = || got.lock().unwrap().iter().cloned().collect::<BTreeSet<_>>();
    assert!(
        wait_until(WAIT, || have() == want).await,
        "{} of 200 after the restart; missing e.g. {:?}; log:\n{}",
        have().len(),
        want.difference(&have()).take(5).collect::<Vec<_>>(),
        ev.log()
    );
    sub.abort();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_over_http_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    // A webhook responder answers requests on topic "prices" with a reply event.
    let responder = evmesh_sdk::webhook::serve("127.0.0.1:0", |req| async move {
        let reply = EventBuilderV10::new()
            .id(format!("re-{}", req.id()))
            .source("/pricer")
            .ty("price.quoted")
            .data("application/json", serde_json::json!({"for": req.id()}))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Some(reply))
    })
    .await
    .unwrap();
    let cfg = format!(
        "subscriptions:\n{}",
        webhook_sub(
            "pricer",
            "prices",
            &format!("http://{}/", responder.addr()),
            ""
        )
    );
    let ev = Evmesh::start(&dir.path().join("d"), &cfg);
    let addr = tcp(&ev);
    // A TCP responder answers requests on topic "rpc".
    let cfg = SubscriberConfig::new(&addr, "rpc-servers", "rpc", ClientId::new("rpc")).requests();
    let mut server = Subscriber::connect(cfg).await.unwrap();
    let serving = tokio::spawn(async move {
        while let Some(d) = server.next().await {
            assert!(d.is_request());
            let reply = EventBuilderV10::new()
                .id(format!("answer-{}", d.event.id()))
                .source("/rpc")
                .ty("rpc.answer")
                .build()
                .unwrap();
            d.reply(reply).await.unwrap();
        }
    });
    let http = Publisher::http(&format!("http://{}", ev.http)).unwrap();
    let over_tcp = Publisher::tcp(&addr, ClientId::new("caller"))
        .await
        .unwrap();
    for (name, p) in [("http", &http), ("tcp", &over_tcp)] {
        let r = p
            .request(
                "prices",
                &event(&format!("q-{name}")),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}; log:\n{}", ev.log()));
        assert_eq!(r.id(), format!("re-q-{name}"));
        let r = p
            .request("rpc", &event(&format!("r-{name}")), Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}; log:\n{}", ev.log()));
        assert_eq!(r.id(), format!("answer-r-{name}"));
    }
    // Nobody answers on "void": a timeout, said as such.
    let err = http
        .request("void", &event("nobody"), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, evmesh_sdk::SdkError::Timeout(_)), "{err}");
    serving.abort();
}

/// A receiver written to EventMesh's push format, in Node.js: it reads the form fields as
/// EventMesh's Java SDK does and answers `{"retCode":0}`.
const EVENTMESH_RECEIVER: &str = r#"
const http = require('http');
const qs = require('querystring');
const srv = http.createServer((req, res) => {
  let body = '';
  req.on('data', (c) => body += c);
  req.on('end', () => {
    const f = qs.parse(body);
    process.stdout.write(JSON.stringify({code: req.headers['code'], ctype: req.headers['content-type'],
      topic: f.topic, uniqueid: f.uniqueid, content: f.content}) + '\n');
    res.writeHead(200, {'content-type': 'application/json'});
    res.end(JSON.stringify({retCode: 0}));
  });
});
srv.listen(0, '127.0.0.1', () => process.stdout.write(JSON.stringify({port: srv.address().port}) + '\n'));
"#;

struct Node {
    child: std::process::Child,
    port: u16,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Node {
    fn start(script: &str) -> Node {
        use std::io::BufRead;
        let mut child = std::process::Command::new("node")
            .arg("-e")
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                match v.get("port").and_then(|p| p.as_u64()) {
                    Some(p) => tx.send(p as u16).unwrap(),
                    None => s2.lock().unwrap().push(v),
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        Node { child, port, seen }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eventmesh_http_api_subscribes_pushes_in_eventmesh_format_and_unsubscribes() {
    let node = Node::start(EVENTMESH_RECEIVER);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut ev = Evmesh::start(&data, "");
    let c = client();
    let url = format!("http://127.0.0.1:{}/callback", node.port);
    let sub = serde_json::json!({"url": url, "consumerGroup": "emgroup",
        "topic": [{"topic": "emtopic", "mode": "CLUSTERING", "type": "ASYNC"}]});
    let (st, body) = send(
        &c,
        "POST",
        &ev.url("/eventmesh/subscribe/local"),
        &[],
        sub.to_string(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["retCode"],
        0
    );
    // An EventMesh message over the JSON API.
    let msg =
        serde_json::json!({"uniqueId": "m1", "content": "hello", "properties": {"region": "eu"}});
    let (st, body) = send(
        &c,
        "POST",
        &ev.url("/eventmesh/publish/emtopic"),
        &[],
        msg.to_string(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    // A send in the Java client's form-encoded protocol (request code 104).
    let form = "producergroup=p&topic=emtopic&content=from-form&uniqueId=m2&bizseqno=b2&ttl=3000";
    let (st, body) = send(
        &c,
        "POST",
        &ev.url("/"),
        &[
            ("code", "104"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        form,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        wait_until(WAIT, || node.seen.lock().unwrap().len() >= 2).await,
        "log:\n{}",
        ev.log()
    );
    let seen = node.seen.lock().unwrap().clone();
    let mut ids = Vec::new();
    for s in &seen {
        assert_eq!(s["code"], "105", "{s}");
        assert!(s["ctype"]
            .as_str()
            .unwrap()
            .starts_with("application/x-www-form-urlencoded"));
        assert_eq!(s["topic"], "emtopic");
        let content: serde_json::Value =
            serde_json::from_str(s["content"].as_str().unwrap()).unwrap();
        ids.push(content["id"].as_str().unwrap().to_owned());
        assert_eq!(s["uniqueid"], content["id"]);
    }
    ids.sort();
    assert_eq!(ids, vec!["m1", "m2"]);
    // The subscription survives a restart of evmesh.
    assert!(ev.terminate().success());
    let ev = Evmesh::start(&data, "");
    let msg = serde_json::json!({"uniqueId": "m3", "content": "after restart"});
    let (st, _) = send(
        &c,
        "POST",
        &ev.url("/eventmesh/publish/emtopic"),
        &[],
        msg.to_string(),
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        wait_until(WAIT, || node.seen.lock().unwrap().len() >= 3).await,
        "log:\n{}",
        ev.log()
    );
    // Unsubscribe: nothing more arrives.
    let unsub = serde_json::json!({"url": url, "consumerGroup": "emgroup", "topic": ["emtopic"]});
    let (st, body) = send(
        &c,
        "POST",
        &ev.url("/eventmesh/unsubscribe/local"),
        &[],
        unsub.to_string(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let msg = serde_json::json!({"uniqueId": "m4", "content": "nobody"});
    let (st, _) = send(
        &c,
        "POST",
        &ev.url("/eventmesh/publish/emtopic"),
        &[],
        msg.to_string(),
    )
    .await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(node.seen.lock().unwrap().len(), 3);
    // Bad input gets a specific answer.
    let (st, body) = send(&c, "POST", &ev.url("/eventmesh/subscribe/local"), &[], "{}").await;
    assert_eq!(st, 400);
    assert!(body.contains("\"retCode\":1"), "{body}");
    let (st, body) = send(&c, "POST", &ev.url("/"), &[("code", "999")], "").await;
    assert_eq!(st, 400, "{body}");
}

fn raw_frame(header: &str, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(b"EventMesh0000");
    b.put_i32((8 + header.len() + body.len()) as i32);
    b.put_i32(header.len() as i32);
    b.put_slice(header.as_bytes());
    b.put_slice(body);
    b.to_vec()
}

/// Reads frames until one satisfies `want`.
async fn read_until(
    s: &mut tokio::net::TcpStream,
    buf: &mut BytesMut,
    want: impl Fn(&Frame) -> bool,
) -> Frame {
    let mut dec = Decoder::default();
    loop {
        while let Some(f) = dec.decode(buf).unwrap() {
            if want(&f) {
                return f;
            }
        }
        let n = tokio::time::timeout(WAIT, s.read_buf(buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server closed the connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_oversize_frames_leave_the_server_and_other_sessions_up() {
    let dir = tempfile::tempdir().unwrap();
    let ev = Evmesh::start(&dir.path().join("d"), "");
    let addr = tcp(&ev);
    // A healthy session, open the whole time.
    let healthy = Publisher::tcp(&addr, ClientId::new("healthy"))
        .await
        .unwrap();
    healthy.publish("t", &event("before")).await.unwrap();

    // Garbage: the server closes that connection (and says why in its log).
    let mut g = tokio::net::TcpStream::connect(&addr).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let n = tokio::time::timeout(WAIT, g.read_to_end(&mut sink))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the connection is closed");
    // A wrong version, likewise.
    let mut v = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut bad = raw_frame(r#"{"cmd":"HEARTBEAT_REQUEST","seq":"1"}"#, b"");
    bad[9..13].copy_from_slice(b"9999");
    v.write_all(&bad).await.unwrap();
    let n = tokio::time::timeout(WAIT, v.read_to_end(&mut sink))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    // Truncated: half a frame, then the client goes away.
    let mut t = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let f = raw_frame(r#"{"cmd":"HEARTBEAT_REQUEST","seq":"1"}"#, b"");
    t.write_all(&f[..f.len() / 2]).await.unwrap();
    drop(t);

    // Oversize: answered with an error, and the connection goes on.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let agent = serde_json::to_vec(&UserAgent {
        subsystem: "raw".into(),
        purpose: "pub".into(),
        ..UserAgent::default()
    })
    .unwrap();
    s.write_all(&raw_frame(r#"{"cmd":"HELLO_REQUEST","seq":"h"}"#, &agent))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let hello = read_until(&mut s, &mut buf, |f| f.header.seq == "h").await;
    assert_eq!(hello.header.code, 0);
    let huge = vec![b'x'; 5 * 1024 * 1024];
    s.write_all(&raw_frame(
        r#"{"cmd":"ASYNC_MESSAGE_TO_SERVER","seq":"big","properties":{"topic":"t"}}"#,
        &huge,
    ))
    .await
    .unwrap();
    let refused = read_until(&mut s, &mut buf, |f| f.header.seq == "big").await;
    assert_eq!(refused.header.cmd, Command::ASYNC_MESSAGE_TO_SERVER_ACK);
    assert_ne!(refused.header.code, 0);
    assert!(
        refused.header.desc.contains("4 MiB"),
        "{}",
        refused.header.desc
    );
    let ok_body = br#"{"specversion":"1.0","id":"small","source":"/s","type":"t"}"#;
    s.write_all(&raw_frame(
        r#"{"cmd":"ASYNC_MESSAGE_TO_SERVER","seq":"s1","properties":{"topic":"t"}}"#,
        ok_body,
    ))
    .await
    .unwrap();
    let acked = read_until(&mut s, &mut buf, |f| f.header.seq == "s1").await;
    assert_eq!(acked.header.code, 0, "{}", acked.header.desc);
    // A frame before HELLO, an unknown command, an invalid event: answered, not fatal.
    let mut n = tokio::net::TcpStream::connect(&addr).await.unwrap();
    n.write_all(&raw_frame(
        r#"{"cmd":"ASYNC_MESSAGE_TO_SERVER","seq":"early"}"#,
        ok_body,
    ))
    .await
    .unwrap();
    let mut nbuf = BytesMut::new();
    let early = read_until(&mut n, &mut nbuf, |f| f.header.seq == "early").await;
    assert_ne!(early.header.code, 0);
    s.write_all(&raw_frame(
        r#"{"cmd":"ASYNC_MESSAGE_TO_SERVER","seq":"inv","properties":{"topic":"t"}}"#,
        b"{\"id\":1}",
    ))
    .await
    .unwrap();
    let inv = read_until(&mut s, &mut buf, |f| f.header.seq == "inv").await;
    assert_ne!(inv.header.code, 0);

    // The healthy session never noticed.
    healthy.publish("t", &event("after")).await.unwrap();
    assert!(ev.log().contains("unreadable frame"), "{}", ev.log());
    let _ = Header::new(Command::HEARTBEAT_REQUEST, "x");
    let _: BTreeMap<String, String> = BTreeMap::new();
}
