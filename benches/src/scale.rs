//! How cost grows with load: subscriptions per topic, topics, payload size, and a backlog of
//! millions of events behind a paused subscription (memory while it builds, catch-up rate
//! after).
//!
//! Every figure here is end to end through the real binary: events published over HTTP (binary
//! mode unless said otherwise), delivered to a local webhook receiver that counts them and the
//! one-way latency each carries (`ce-benchts`).

use crate::{percentile_ms, stop_graceful, BenchArgs};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Bytes under a folder.
fn du(path: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A webhook receiver: counts deliveries (single events, or the events of a batch) and the
/// publish → arrival latency of single events.
struct Receiver {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
        let (r, l) = (received.clone(), latencies.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (r, l) = (r.clone(), l.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let (r, l) = (r.clone(), l.clone());
                        async move {
                            let sent: Option<u128> = req
                                .headers()
                                .get("ce-benchts")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok());
                            let batch = req.headers().get("content-type").is_some_and(|v| {
                                v.as_bytes().starts_with(b"application/cloudevents-batch")
                            });
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let n = match (&body, batch) {
                                (Ok(b), true) => {
                                    serde_json::from_slice::<Vec<serde_json::Value>>(b)
                                        .map_or(0, |v| v.len() as u64)
                                }
                                _ => 1,
                            };
                            r.fetch_add(n, Ordering::Relaxed);
                            if let Some(sent) = sent {
                                let us = now_us().saturating_sub(sent).min(u128::from(u32::MAX));
                                if let Ok(mut l) = l.lock() {
                                    l.push(us as u32);
                                }
                            }
                            let mut resp = http::Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = http::StatusCode::ACCEPTED;
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Ok(Receiver {
            addr,
            received,
            latencies,
            task,
        })
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `n` deliveries arrived or `limit` passed; the time of the last arrival seen.
    async fn wait_for(&self, n: u64, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        let mut last = (self.count(), Instant::now());
        while self.count() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let c = self.count();
            if c != last.0 {
                last = (c, Instant::now());
            }
        }
        if self.count() >= n {
            Instant::now()
        } else {
            last.1
        }
    }

    fn latencies(&self) -> Vec<u32> {
        let mut l = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        l
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request of a load: path, headers, body.
type Request = (String, Vec<(&'static str, String)>, Bytes);

/// Publishes `count` requests (`make(n)` for n in 0..count) over `connections` keep-alive
/// connections as fast as the server answers; returns the requests answered 202 and the time
/// taken. Stops early at `limit`.
async fn publish(
    addr: SocketAddr,
    connections: usize,
    count: u64,
    limit: Duration,
    make: Arc<dyn Fn(u64) -> Request + Send + Sync>,
) -> (u64, u64, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, make) = (next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return (ok, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut send, conn)) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await
            else {
                return (ok, 1);
            };
            tokio::spawn(conn);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() > deadline {
                    return (ok, errors);
                }
                let (path, headers, body) = make(n);
                let mut b = http::Request::post(format!("http://{addr}{path}"));
                for (k, v) in headers {
                    b = b.header(k, v);
                }
                let Ok(req) = b.body(Full::new(body)) else {
                    errors += 1;
                    continue;
                };
                match send.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status.as_u16() == 202 {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => return (ok, errors + 1),
                }
            }
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((o, e)) = t.await {
            ok += o;
            errors += e;
        }
    }
    (ok, errors, start.elapsed())
}

fn binary(path: String, n: u64, payload: &Bytes, extra: Option<(&'static str, String)>) -> Request {
    let mut headers = vec![
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", format!("s{n}")),
        ("ce-source", "/bench".to_owned()),
        ("ce-type", "bench.event".to_owned()),
        ("ce-benchts", now_us().to_string()),
        ("content-type", "application/octet-stream".to_owned()),
    ];
    headers.extend(extra);
    (path, headers, payload.clone())
}

/// A server on a fresh data folder with this config; its ingest address and admin address.
fn server(
    args: &BenchArgs,
    dir: &std::path::Path,
    name: &str,
    config: &str,
    env: &[(&str, &str)],
) -> Result<(Child, SocketAddr, SocketAddr)> {
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let admin_s = admin.to_string();
    // A known admin port (sampled during the run) and no TCP listener; later settings win.
    let mut all = vec![
        ("EVMESH_SERVER__ADMIN", admin_s.as_str()),
        ("EVMESH_SERVER__TCP", "off"),
    ];
    all.extend_from_slice(env);
    let (child, addr) = crate::evmesh(args, dir, name, &all, config)?;
    Ok((child, addr, admin))
}

struct Row {
    label: String,
    published: u64,
    publish_secs: f64,
    deliveries: u64,
    expected: u64,
    deliver_secs: f64,
    latencies: Vec<u32>,
    rss_mib: f64,
    fds: usize,
    errors: u64,
}

impl Row {
    fn print(&self) {
        println!(
            "{:<28} publish {:>9.0} ev/s  deliver {:>9.0}/s ({} of {})  p50 {:>7.2} ms  p99 {:>8.2} ms  RSS {:>6.1} MiB  fds {:>5}{}",
            self.label,
            self.published as f64 / self.publish_secs.max(1e-9),
            self.deliveries as f64 / self.deliver_secs.max(1e-9),
            self.deliveries,
            self.expected,
            percentile_ms(&self.latencies, 0.50),
            percentile_ms(&self.latencies, 0.99),
            self.rss_mib,
            self.fds,
            if self.errors > 0 { format!("  errors {}", self.errors) } else { String::new() },
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.label,
            "published_per_s": self.published as f64 / self.publish_secs.max(1e-9),
            "deliveries_per_s": self.deliveries as f64 / self.deliver_secs.max(1e-9),
            "deliveries": self.deliveries,
            "expected": self.expected,
            "p50_ms": percentile_ms(&self.latencies, 0.50),
            "p99_ms": percentile_ms(&self.latencies, 0.99),
            "rss_mib": self.rss_mib,
            "fds": self.fds,
            "errors": self.errors,
        })
    }
}

/// Samples a process's peak RSS and fd count while a future runs.
struct Sampler {
    peak_rss: Arc<Mutex<(f64, usize)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak_rss = Arc::new(Mutex::new((0.0f64, 0usize)));
        let p = peak_rss.clone();
        let task = tokio::spawn(async move {
            loop {
                let (r, f) = (rss_mib(pid), fds(pid));
                if let Ok(mut p) = p.lock() {
                    p.0 = p.0.max(r);
                    p.1 = p.1.max(f);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler { peak_rss, task }
    }

    fn stop(self) -> (f64, usize) {
        self.task.abort();
        self.peak_rss.lock().map(|p| *p).unwrap_or((0.0, 0))
    }
}

/// What one row publishes: `count` requests from `make` over `connections` connections,
/// stopping early at `limit`.
struct Load {
    connections: usize,
    count: u64,
    limit: Duration,
    make: Arc<dyn Fn(u64) -> Request + Send + Sync>,
}

/// One row: a server started with `cfg`, the load, then a wait for `expected(published)`
/// deliveries at `hook`; the server's peak RSS and descriptors while it ran, and its
/// descriptors when it was ready (returned beside the row). The data folder is removed after.
async fn measure(
    args: &BenchArgs,
    dir: &std::path::Path,
    label: &str,
    cfg: &str,
    hook: &Receiver,
    load: Load,
    expected: impl Fn(u64) -> u64,
) -> Result<(Row, usize)> {
    let (mut child, addr, _) = server(args, dir, label, cfg, &[])?;
    let idle_fds = fds(child.id());
    let sampler = Sampler::start(child.id());
    let start = Instant::now();
    let (ok, errors, took) =
        publish(addr, load.connections, load.count, load.limit, load.make).await;
    let expected = expected(ok);
    let last = hook.wait_for(expected, Duration::from_secs(180)).await;
    let (rss, peak_fds) = sampler.stop();
    stop_graceful(&mut child);
    let _ = std::fs::remove_dir_all(dir.join(label));
    let row = Row {
        label: label.to_owned(),
        published: ok,
        publish_secs: took.as_secs_f64(),
        deliveries: hook.count(),
        expected,
        deliver_secs: last.duration_since(start).as_secs_f64(),
        latencies: hook.latencies(),
        rss_mib: rss,
        fds: peak_fds,
        errors,
    };
    Ok((row, idle_fds))
}

/// 1, 10, 100 and 1,000 webhook subscriptions on one topic: every subscription matching every
/// event, and each event matching 1% of them (an `exact` filter on a `shard` extension with 100
/// values).
pub async fn subscriptions(
    args: &BenchArgs,
    dir: &std::path::Path,
) -> Result<Vec<serde_json::Value>> {
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let mut out = Vec::new();
    for one_percent in [false, true] {
        for n in [1u64, 10, 100, 1000] {
            let hook = Receiver::start().await?;
            let mut cfg = String::from("subscriptions:\n");
            // Each subscription has its own connections to its webhook (up to maxInFlight):
            // about 512 in all, at least 4 a subscription.
            let in_flight = (512 / n).max(4);
            for i in 0..n {
                cfg.push_str(&format!(
                    "  - name: s{i}\n    topic: bench\n    maxInFlight: {in_flight}\n    sink: {{ type: webhook, url: \"http://{}/hook\" }}\n",
                    hook.addr
                ));
                if one_percent {
                    cfg.push_str(&format!(
                        "    filters: [ {{ exact: {{ shard: \"{}\" }} }} ]\n",
                        i % 100
                    ));
                }
            }
            // About 300k deliveries a row (the 1% rows publish a fixed 60k events).
            let events = if one_percent {
                60_000
            } else {
                (300_000 / n).clamp(300, 60_000)
            };
            let matches = |shard: u64| {
                if one_percent {
                    n / 100 + u64::from(shard < n % 100)
                } else {
                    n
                }
            };
            let expected: u64 = (0..events).map(|e| matches(e % 100)).sum();
            let label = format!("subs-{n}-{}", if one_percent { "1pct" } else { "all" });
            let p = payload.clone();
            let make: Arc<dyn Fn(u64) -> Request + Send + Sync> = Arc::new(move |e| {
                binary(
                    "/topics/bench".into(),
                    e,
                    &p,
                    Some(("ce-shard", (e % 100).to_string())),
                )
            });
            let load = Load {
                connections: 64,
                count: events,
                limit: Duration::from_secs(120),
                make,
            };
            let (row, _) = measure(args, dir, &label, &cfg, &hook, load, |_| expected).await?;
            row.print();
            out.push(row.json());
        }
    }
    Ok(out)
}

/// 1, 100 and 10,000 topics, each with one webhook subscription; events published round-robin
/// over the topics for `--seconds`.
pub async fn topics(args: &BenchArgs, dir: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let mut out = Vec::new();
    for n in [1u64, 100, 10_000] {
        let hook = Receiver::start().await?;
        let mut cfg = String::from("subscriptions:\n");
        let in_flight = (512 / n).max(4);
        for i in 0..n {
            cfg.push_str(&format!(
                "  - name: t{i}\n    topic: t{i}\n    maxInFlight: {in_flight}\n    sink: {{ type: webhook, url: \"http://{}/hook\" }}\n",
                hook.addr
            ));
        }
        let label = format!("topics-{n}");
        let p = payload.clone();
        let make: Arc<dyn Fn(u64) -> Request + Send + Sync> =
            Arc::new(move |e| binary(format!("/topics/t{}", e % n), e, &p, None));
        let load = Load {
            connections: args.connections,
            count: u64::MAX,
            limit: Duration::from_secs(args.seconds),
            make,
        };
        let (mut row, idle_fds) = measure(args, dir, &label, &cfg, &hook, load, |ok| ok).await?;
        row.label = format!("{label} (idle fds {idle_fds})");
        row.print();
        out.push(row.json());
    }
    Ok(out)
}

/// Payloads of 256 B, 1 KiB, 64 KiB and 1 MiB, published to one topic with one webhook
/// subscription (fewer connections for the larger ones: 64 KiB × 256 in flight is 16 MiB).
pub async fn payloads(args: &BenchArgs, dir: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for size in [256usize, 1024, 64 * 1024, 1024 * 1024] {
        let hook = Receiver::start().await?;
        let cfg = format!(
            "server: {{ maxBodyBytes: 4194304 }}\nsubscriptions:\n  - name: p\n    topic: bench\n    maxInFlight: 64\n    sink: {{ type: webhook, url: \"http://{}/hook\" }}\n",
            hook.addr
        );
        let label = format!("payload-{size}");
        let payload = Bytes::from(vec![b'x'; size]);
        let make: Arc<dyn Fn(u64) -> Request + Send + Sync> =
            Arc::new(move |e| binary("/topics/bench".into(), e, &payload, None));
        let connections = match size {
            s if s <= 1024 => args.connections,
            s if s <= 64 * 1024 => 64,
            _ => 8,
        };
        let load = Load {
            connections,
            // At most 2 GiB of payload a row.
            count: ((2u64 << 30) / size as u64).min(100_000),
            limit: Duration::from_secs(args.seconds),
            make,
        };
        let (mut row, _) = measure(args, dir, &label, &cfg, &hook, load, |ok| ok).await?;
        row.label = format!("{label} ({connections} conns)");
        row.print();
        println!(
            "{:<28} publish {:.1} MiB/s",
            "",
            row.published as f64 * size as f64 / row.publish_secs.max(1e-9) / (1024.0 * 1024.0)
        );
        out.push(row.json());
    }
    Ok(out)
}

async fn admin_post(admin: SocketAddr, path: &str) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(admin).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{admin}{path}")).body(Full::new(Bytes::new()))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("POST {path}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// A batch of `n` structured events of about 256 bytes each, the publish time in `benchts`.
fn backlog_batch(n: usize, first: u64) -> Bytes {
    let now = now_us();
    let mut s = String::with_capacity(n * 300);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"specversion":"1.0","id":"k{}","source":"/bench","type":"bench.event","benchts":"{now}","datacontenttype":"application/json","data":{{"seq":{},"pad":"{}"}}}}"#,
            first + i as u64,
            first + i as u64,
            "x".repeat(128)
        ));
    }
    s.push(']');
    Bytes::from(s)
}

/// `events` events published (batched, 500 a request) to a topic whose only subscription is
/// paused: RSS sampled as the backlog grows; then the subscription resumes and delivers to a
/// webhook for `--seconds`: the catch-up rate, and RSS while it catches up.
pub async fn backlog(
    args: &BenchArgs,
    dir: &std::path::Path,
    events: u64,
) -> Result<Vec<serde_json::Value>> {
    let hook = Receiver::start().await?;
    let cfg = format!(
        "store: {{ fsync: interval }}\nsubscriptions:\n  - name: behind\n    topic: bench\n    maxInFlight: 512\n    start: earliest\n    sink: {{ type: webhook, url: \"http://{}/hook\" }}\n",
        hook.addr
    );
    let label = "backlog";
    let (mut child, addr, admin) = server(args, dir, label, &cfg, &[])?;
    let pid = child.id();
    admin_post(admin, "/subscriptions/behind/pause")
        .await
        .context("pausing the subscription")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_mib(pid);
    println!("backlog: idle RSS {idle:.1} MiB, fds {}", fds(pid));
    let per = 500u64;
    let requests = events.div_ceil(per);
    let published = Arc::new(AtomicU64::new(0));
    let make: Arc<dyn Fn(u64) -> Request + Send + Sync> = Arc::new(move |r| {
        (
            "/topics/bench".to_owned(),
            vec![(
                "content-type",
                "application/cloudevents-batch+json".to_owned(),
            )],
            backlog_batch(per as usize, r * per),
        )
    });
    let counting = {
        let published = published.clone();
        let make = make.clone();
        Arc::new(move |r: u64| {
            published.fetch_add(per, Ordering::Relaxed);
            make(r)
        }) as Arc<dyn Fn(u64) -> Request + Send + Sync>
    };
    let samples = Arc::new(Mutex::new(Vec::<(u64, f64)>::new()));
    let sampling = {
        let (samples, published) = (samples.clone(), published.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let p = published.load(Ordering::Relaxed);
                if let Ok(mut s) = samples.lock() {
                    s.push((p, rss_mib(pid)));
                }
            }
        })
    };
    let (ok, errors, took) = publish(addr, 8, requests, Duration::from_secs(3600), counting).await;
    sampling.abort();
    let stored = ok * per;
    println!(
        "backlog: {stored} events stored in {:.1} s ({:.0} events/s, {errors} errors), {:.2} GiB on disk",
        took.as_secs_f64(),
        stored as f64 / took.as_secs_f64().max(1e-9),
        du(&dir.join(label)) as f64 / f64::from(1u32 << 30)
    );
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let step = (samples.len() / 10).max(1);
    for (p, r) in samples.iter().step_by(step) {
        println!("backlog:   {:>10} events behind  RSS {r:>6.1} MiB", p);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full = rss_mib(pid);
    println!(
        "backlog: {stored} events behind, settled: RSS {full:.1} MiB (idle {idle:.1}), fds {}",
        fds(pid)
    );
    let sampler = Sampler::start(pid);
    let start = Instant::now();
    admin_post(admin, "/subscriptions/behind/resume").await?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let delivered = hook.count();
    let elapsed = start.elapsed();
    let (peak, peak_fds) = sampler.stop();
    stop_graceful(&mut child);
    println!(
        "backlog: catch-up {:.0} events/s over {:.0} s ({delivered} delivered), peak RSS {peak:.1} MiB, fds {peak_fds}",
        delivered as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir.join(label));
    Ok(vec![serde_json::json!({
        "scenario": "backlog",
        "events": stored,
        "ingest_events_per_s": stored as f64 / took.as_secs_f64().max(1e-9),
        "idle_rss_mib": idle,
        "rss_samples": samples,
        "settled_rss_mib": full,
        "catch_up_per_s": delivered as f64 / elapsed.as_secs_f64(),
        "catch_up_peak_rss_mib": peak,
    })])
}
