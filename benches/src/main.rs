//! `evmesh-bench`: throughput and latency of the real `evmesh` binary over loopback.
//!
//! Every scenario starts a fresh server as a child process (the `evmesh` binary built beside
//! this one, or `--evmesh PATH`) and drives it with `--connections` keep-alive HTTP/1.1
//! connections for `--seconds`. The baseline is a bare hyper server (this binary with
//! `--bare-server`) that reads the body and answers 202, measured in the same run, so the
//! figures can be read as a fraction of what the machine's HTTP stack allows.
//!
//! The subscription matcher and the WASM filter have in-process micro-benchmarks of their own:
//! `cargo bench -p evmesh-router --bench matcher` and `cargo bench -p evmesh-plugin-host
//! --bench wasm`.
// The RocketMQ client's types nest deeply enough to need more than the default.
#![recursion_limit = "256"]

mod ops;
mod rocketmq;
mod scale;
mod tcp;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Parser)]
#[command(
    name = "evmesh-bench",
    about = "Throughput and latency of the real evmesh binary over loopback"
)]
pub struct BenchArgs {
    /// The evmesh binary (default: the one beside this binary).
    #[arg(long)]
    evmesh: Option<std::path::PathBuf>,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Event data size in bytes for single-event scenarios.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Events per request in the batched scenario.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Scenarios to run (comma-separated): bare, binary-always, binary-interval, binary-never,
    /// batch, e2e, e2e-batch, e2e-filter-none/builtin/wasm, tcp-publish-1, tcp-publish-64 (SDK
    /// publishers over the EventMesh TCP protocol), tcp-push-1, tcp-push-8 (SDK subscribers),
    /// kafka-sink, kafka-store-ingest, kafka-store-e2e (these three need --kafka),
    /// rocketmq-sink, rocketmq-store-ingest, rocketmq-store-e2e (these three need --rocketmq),
    /// sidecar-footprint, standalone-footprint (start-up to ready, idle RSS), latency-1k
    /// (publish → local webhook at 1,000 events/s next to a direct POST; also latency-5k, …),
    /// tracing-cost, metrics-ops; bare-relay (a store-less hyper relay to the same webhook, the
    /// ceiling for e2e); how cost grows: scale-subs (1-1,000 subscriptions on a topic, all or 1%
    /// matching), scale-topics (1-10,000 topics), scale-payload (256 B-1 MiB), backlog
    /// (`--backlog` events behind a paused subscription: RSS, then catch-up for --seconds).
    #[arg(long, default_value = "bare,binary-always,binary-interval,batch,e2e")]
    scenarios: String,
    /// A WASM filter component for the `e2e-filter-wasm` scenario (e.g. the example
    /// `plugins/examples/target/wasm32-wasip2/release/json_field_filter.wasm`).
    #[arg(long)]
    plugin: Option<std::path::PathBuf>,
    /// Kafka bootstrap servers for the `kafka-sink`, `kafka-store-ingest` and `kafka-store-e2e`
    /// scenarios (e.g. a broker from `scripts/kafka-broker.sh start`).
    #[arg(long)]
    kafka: Option<String>,
    /// A RocketMQ name server for the `rocketmq-*` scenarios (e.g. from
    /// `scripts/rocketmq-broker.sh start`: 127.0.0.1:9876).
    #[arg(long)]
    rocketmq: Option<String>,
    /// Events behind the paused subscription in the `backlog` scenario.
    #[arg(long, default_value_t = 10_000_000)]
    backlog: u64,
    /// Also write every figure to this file as JSON (one object a scenario, with the ratio to
    /// bare hyper in the same run), so runs can be compared.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Run only the bare baseline server and print its address (the other scenarios start
    /// it this way).
    #[arg(long)]
    bare_server: bool,
    /// Run only the bare relay (a hyper server that POSTs each request to this address with a
    /// pooled hyper client, then answers 202): the ceiling of any store-less relay here.
    #[arg(long)]
    bare_relay: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    use clap::Parser;
    let args = BenchArgs::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("evmesh-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("evmesh-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub(crate) struct Report {
    pub(crate) name: String,
    pub(crate) events: u64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latencies_us: Vec<u32>,
    pub(crate) note: String,
}

/// The `p` quantile of sorted microseconds, in milliseconds (0 when there are none).
pub(crate) fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

impl Report {
    /// p50, p99 and p999 latency in milliseconds.
    fn percentiles_ms(&self) -> [f64; 3] {
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        [0.5, 0.99, 0.999].map(|p| percentile_ms(&l, p))
    }

    fn json(&self, bare_rps: Option<f64>) -> serde_json::Value {
        let [p50, p99, p999] = self.percentiles_ms();
        let secs = self.elapsed.as_secs_f64();
        let rps = self.requests as f64 / secs;
        serde_json::json!({
            "scenario": self.name,
            "events_per_s": self.events as f64 / secs,
            "requests_per_s": rps,
            "p50_ms": p50,
            "p99_ms": p99,
            "p999_ms": p999,
            "errors": self.errors,
            "requests_vs_bare": bare_rps.map(|b| rps / b),
            "note": self.note,
        })
    }

    fn print(&self) {
        let [p50, p99, p999] = self.percentiles_ms();
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{:<16} {:>10.0} events/s {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  errors {}{}",
            self.name,
            self.events as f64 / secs,
            self.requests as f64 / secs,
            p50,
            p99,
            p999,
            self.errors,
            if self.note.is_empty() { String::new() } else { format!("  ({})", self.note) }
        );
    }
}

async fn run(args: BenchArgs) -> Result<std::process::ExitCode> {
    if args.bare_server {
        bare_server().await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(target) = args.bare_relay {
        bare_relay(target).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let dir = std::env::temp_dir().join(format!("evmesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "evmesh bench: {} connections, {} s per scenario, {}-byte events, batches of {} ({} cores)",
        args.connections,
        args.seconds,
        args.payload,
        args.batch,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let mut bare_rps = None;
    let mut figures = Vec::new();
    for scenario in args.scenarios.split(',').map(str::trim) {
        let report = match scenario {
            "bare" => {
                let mut child = spawn(&self_exe()?, &["--bare-server"], &[])?;
                let addr = wait_addr(&mut child, "bare server listening on ", None)?;
                let r = drive(
                    "bare-hyper",
                    addr,
                    &args,
                    binary_request(payload.clone()),
                    1,
                )
                .await;
                stop(child);
                bare_rps = Some(r.requests as f64 / r.elapsed.as_secs_f64());
                r
            }
            "binary-always" | "binary-interval" | "binary-never" => {
                let policy = scenario.trim_start_matches("binary-");
                let (mut child, addr) = evmesh(
                    &args,
                    &dir,
                    scenario,
                    &[("EVMESH_STORE__FSYNC", policy)],
                    "",
                )?;
                let mut r = drive(scenario, addr, &args, binary_request(payload.clone()), 1).await;
                stop_graceful(&mut child);
                if let Some(b) = bare_rps {
                    r.note = format!(
                        "{:.0}% of bare hyper",
                        100.0 * r.requests as f64 / r.elapsed.as_secs_f64() / b
                    );
                }
                r
            }
            "batch" => {
                let (mut child, addr) = evmesh(&args, &dir, scenario, &[], "")?;
                let body = batch_body(args.batch);
                let req = move |_: u64| {
                    (
                        vec![(
                            "content-type",
                            "application/cloudevents-batch+json".to_owned(),
                        )],
                        body.clone(),
                    )
                };
                let mut r = drive("batch", addr, &args, req, args.batch as u64).await;
                r.note = format!("{} events/request, fsync always", args.batch);
                stop_graceful(&mut child);
                r
            }
            "e2e" => e2e(&dir, &args, payload.clone(), false, "", "e2e").await?,
            "bare-relay" => e2e_with(&dir, &args, payload.clone(), false, "", scenario, "").await?,
            "e2e-batch" => e2e(&dir, &args, payload.clone(), true, "", "e2e-batch").await?,
            "e2e-filter-none" => e2e(&dir, &args, payload.clone(), true, "", scenario).await?,
            "e2e-filter-builtin" => {
                let f = "    filters:\n      - pattern: { data: { status: [paid] } }\n";
                e2e(&dir, &args, payload.clone(), true, f, scenario).await?
            }
            "e2e-filter-wasm" => {
                let Some(p) = &args.plugin else {
                    println!(
                        "{scenario:<16} skipped: pass --plugin path/to/json_field_filter.wasm"
                    );
                    continue;
                };
                let f = format!(
                    "    filters:\n      - wasm: {{ uses: \"{}\", with: {{ field: status, equals: paid }} }}\n",
                    p.display()
                );
                e2e(&dir, &args, payload.clone(), true, &f, scenario).await?
            }
            "kafka-sink" | "kafka-store-ingest" | "kafka-store-e2e" => {
                let Some(brokers) = args.kafka.clone() else {
                    println!("{scenario:<16} skipped: pass --kafka HOST:PORT (scripts/kafka-broker.sh start)");
                    continue;
                };
                // One record per producer batch: tansu 0.6 cannot resume a consumer inside a
                // multi-record batch (see docs/kafka.md).
                let store = format!(
                    "store: {{ type: kafka, brokers: \"{brokers}\", topicPrefix: \"bench{0}.\", groupPrefix: \"bench{0}.\", properties: {{ batch.num.messages: \"1\" }} }}\n",
                    std::process::id()
                );
                match scenario {
                    "kafka-sink" => kafka_sink(&dir, &args, &brokers, payload.clone()).await?,
                    "kafka-store-ingest" => {
                        let (mut child, addr) = evmesh(&args, &dir, scenario, &[], &store)?;
                        let mut r =
                            drive(scenario, addr, &args, binary_request(payload.clone()), 1).await;
                        stop_graceful(&mut child);
                        r.note = "publisher answered after Kafka acknowledged (acks=all)".into();
                        r
                    }
                    _ => {
                        e2e_with(
                            &dir,
                            &args,
                            payload.clone(),
                            false,
                            "    start: earliest\n",
                            scenario,
                            &store,
                        )
                        .await?
                    }
                }
            }
            "rocketmq-sink" | "rocketmq-store-ingest" | "rocketmq-store-e2e" => {
                let Some(namesrv) = args.rocketmq.clone() else {
                    println!("{scenario:<16} skipped: pass --rocketmq HOST:PORT (scripts/rocketmq-broker.sh start)");
                    continue;
                };
                rocketmq::run(scenario, &dir, &args, &namesrv, payload.clone()).await?
            }
            "tcp-publish-1" | "tcp-publish-64" => {
                let n = if scenario.ends_with("-64") { 64 } else { 1 };
                let mut r = tcp::publish(&args, &dir, scenario, n, payload.clone()).await?;
                if let Some(b) = bare_rps {
                    r.note.push_str(&format!(
                        "; {:.0}% of bare hyper",
                        100.0 * r.events as f64 / r.elapsed.as_secs_f64() / b
                    ));
                }
                r
            }
            "tcp-push-1" | "tcp-push-8" => {
                let n = if scenario.ends_with("-8") { 8 } else { 1 };
                tcp::push(&args, &dir, scenario, n, payload.clone()).await?
            }
            "sidecar-footprint" | "standalone-footprint" => {
                ops::footprint(&args, &dir, scenario == "sidecar-footprint").await?;
                continue;
            }
            s if s.starts_with("latency-") => {
                // latency-1k, latency-5k, latency-500: events per second.
                let rate = s.trim_start_matches("latency-");
                let rate: u64 = match rate.strip_suffix('k') {
                    Some(k) => k.parse::<u64>().map(|k| k * 1000),
                    None => rate.parse(),
                }
                .with_context(|| format!("scenario {s}: a rate like latency-1k"))?;
                ops::latency_at_rate(&args, &dir, rate).await?;
                continue;
            }
            "tracing-cost" => {
                ops::tracing_cost(&args, &dir).await?;
                continue;
            }
            "metrics-ops" => {
                ops::metrics_ops()?;
                continue;
            }
            "scale-subs" => {
                figures.extend(scale::subscriptions(&args, &dir).await?);
                continue;
            }
            "scale-topics" => {
                figures.extend(scale::topics(&args, &dir).await?);
                continue;
            }
            "scale-payload" => {
                figures.extend(scale::payloads(&args, &dir).await?);
                continue;
            }
            "backlog" => {
                figures.extend(scale::backlog(&args, &dir, args.backlog).await?);
                continue;
            }
            other => bail!("unknown scenario {other:?}"),
        };
        let mut report = report;
        if let (Some(b), false) = (bare_rps, report.note.contains("of bare hyper")) {
            if report.name != "bare-hyper" {
                let rps = report.requests as f64 / report.elapsed.as_secs_f64();
                let sep = if report.note.is_empty() { "" } else { "; " };
                report.note = format!("{}{sep}{:.0}% of bare hyper", report.note, 100.0 * rps / b);
            }
        }
        report.print();
        figures.push(report.json(bare_rps));
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "connections": args.connections,
            "seconds": args.seconds,
            "payload": args.payload,
            "scenarios": figures,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(std::process::ExitCode::SUCCESS)
}

type ReqFn = dyn Fn(u64) -> (Vec<(&'static str, String)>, Bytes) + Send + Sync;

pub(crate) fn binary_request(
    payload: Bytes,
) -> impl Fn(u64) -> (Vec<(&'static str, String)>, Bytes) + Send + Sync + Clone {
    move |n: u64| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        (
            vec![
                ("ce-specversion", "1.0".to_owned()),
                ("ce-id", format!("b{n}")),
                ("ce-source", "/bench".to_owned()),
                ("ce-type", "bench.event".to_owned()),
                ("ce-benchts", now.to_string()),
                ("content-type", "application/octet-stream".to_owned()),
            ],
            payload.clone(),
        )
    }
}

fn batch_body(n: usize) -> Bytes {
    let mut s = String::from("[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"specversion":"1.0","id":"e{i}","source":"/bench","type":"bench.event","datacontenttype":"application/json","data":{{"status":"paid","seq":{i},"pad":"0123456789012345678901234567890123456789012345678901234567890123"}}}}"#
        ));
    }
    s.push(']');
    Bytes::from(s)
}

fn self_exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("locating evmesh-bench")
}

/// The evmesh binary: `--evmesh`, or the one cargo built beside this binary.
fn evmesh_exe(args: &BenchArgs) -> Result<std::path::PathBuf> {
    if let Some(p) = &args.evmesh {
        return Ok(p.clone());
    }
    let me = self_exe()?;
    let bin = me.with_file_name("evmesh");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p evmesh) or pass --evmesh",
            bin.display()
        );
    }
    Ok(bin)
}

fn spawn(exe: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Result<Child> {
    let mut c = Command::new(exe);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "warn,evmesh=info");
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().context("starting a server")
}

/// Reads the child's log until `marker` names its address and, when `ready` is given, until
/// that line too (every listener of the server is bound by then).
fn wait_addr(child: &mut Child, marker: &str, ready: Option<&str>) -> Result<SocketAddr> {
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let mut addr: Option<SocketAddr> = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(p) = line.find(marker) {
            addr = Some(line[p + marker.len()..].trim().parse()?);
        }
        let done = match ready {
            Some(r) => line.contains(r),
            None => addr.is_some(),
        };
        if let (true, Some(addr)) = (done, addr) {
            // Keep draining so the child never blocks on a full pipe (and show the server's
            // log with BENCH_SERVER_LOG=1).
            let show = std::env::var_os("BENCH_SERVER_LOG").is_some();
            std::thread::spawn(move || {
                for l in lines.map_while(Result::ok) {
                    if show {
                        eprintln!("  | {l}");
                    }
                }
            });
            return Ok(addr);
        }
    }
    bail!("the server exited before listening")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn stop_graceful(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

pub(crate) fn evmesh(
    args: &BenchArgs,
    dir: &std::path::Path,
    name: &str,
    env: &[(&str, &str)],
    config: &str,
) -> Result<(Child, SocketAddr)> {
    let data = dir.join(name);
    let _ = std::fs::remove_dir_all(&data);
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, config)?;
    let mut all = vec![
        ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
        ("EVMESH_SERVER__ADMIN", "127.0.0.1:0"),
    ];
    all.extend_from_slice(env);
    let data_s = data.display().to_string();
    let cfg_s = cfg.display().to_string();
    let mut child = spawn(
        &evmesh_exe(args)?,
        &["serve", "--config", &cfg_s, "--data-dir", &data_s],
        &all,
    )?;
    let addr = wait_addr(
        &mut child,
        "http ingest listening on ",
        Some("evmesh ready"),
    )?;
    Ok((child, addr))
}

pub(crate) async fn drive(
    name: &str,
    addr: SocketAddr,
    args: &BenchArgs,
    make: impl Fn(u64) -> (Vec<(&'static str, String)>, Bytes) + Send + Sync + 'static,
    events_per_request: u64,
) -> Report {
    let make: Arc<ReqFn> = Arc::new(make);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..args.connections {
        let (make, counter) = (make.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut ok = 0u64;
            let mut errors = 0u64;
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return (lat, ok, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut send, conn)) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await
            else {
                return (lat, ok, 1);
            };
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (headers, body) = make(n);
                let mut b = http::Request::post(format!("http://{addr}/topics/bench"));
                for (k, v) in headers {
                    b = b.header(k, v);
                }
                let Ok(req) = b.body(Full::new(body)) else {
                    errors += 1;
                    continue;
                };
                let t = Instant::now();
                match send.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status.as_u16() == 202 {
                            ok += 1;
                            lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, ok, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let (mut requests, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((l, o, e)) = t.await {
            latencies_us.extend(l);
            requests += o;
            errors += e;
        }
    }
    Report {
        name: name.to_owned(),
        events: requests * events_per_request,
        requests,
        errors,
        elapsed: start.elapsed(),
        latencies_us,
        note: String::new(),
    }
}

/// Ingest + webhook delivery: throughput is what reached the webhook; latency is publish →
/// webhook, from the timestamp each event carries.
async fn e2e(
    dir: &std::path::Path,
    args: &BenchArgs,
    payload: Bytes,
    batched: bool,
    filters: &str,
    name: &str,
) -> Result<Report> {
    e2e_with(dir, args, payload, batched, filters, name, "").await
}

/// HTTP ingest → evmesh → Kafka sink, measured by a consumer on the sink's topic: throughput
/// is records that reached Kafka, latency is publish → record consumed.
async fn kafka_sink(
    dir: &std::path::Path,
    args: &BenchArgs,
    brokers: &str,
    payload: Bytes,
) -> Result<Report> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let topic = format!("evmesh-bench-sink-{}", std::process::id());
    ensure_topic(brokers, &topic, 3).await?;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let received = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let (r2, l2) = (received.clone(), lat.clone());
    let reader = tokio::spawn(async move {
        while let Ok(m) = consumer.recv().await {
            r2.fetch_add(1, Ordering::Relaxed);
            let sent: Option<u128> = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "ce_benchts")
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse().ok())
            });
            if let Some(sent) = sent {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_micros())
                    .unwrap_or(0);
                if let Ok(mut l) = l2.lock() {
                    l.push(now.saturating_sub(sent).min(u128::from(u32::MAX)) as u32);
                }
            }
        }
    });
    let cfg = format!(
        "subscriptions:\n  - name: bench\n    topic: bench\n    maxInFlight: 1024\n    sink: {{ type: kafka, brokers: \"{brokers}\", topic: {topic} }}\n"
    );
    let (mut child, addr) = evmesh(args, dir, "kafka-sink", &[], &cfg)?;
    let start = Instant::now();
    let ingest = drive("kafka-sink", addr, args, binary_request(payload), 1).await;
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    while received.load(Ordering::Relaxed) < ingest.requests && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    stop_graceful(&mut child);
    reader.abort();
    let delivered = received.load(Ordering::Relaxed);
    Ok(Report {
        name: "kafka-sink".into(),
        events: delivered,
        requests: delivered,
        errors: ingest.errors + ingest.requests.saturating_sub(delivered),
        elapsed,
        latencies_us: lat.lock().map(|l| l.clone()).unwrap_or_default(),
        note: format!(
            "{delivered} of {} published reached Kafka; ingest {:.0} events/s (p99 ack {:.1} ms); latency is publish→consumed",
            ingest.requests,
            ingest.requests as f64 / ingest.elapsed.as_secs_f64(),
            {
                let mut l = ingest.latencies_us.clone();
                l.sort_unstable();
                l.get(((l.len() as f64 - 1.0) * 0.99).round() as usize).map_or(0.0, |v| f64::from(*v) / 1000.0)
            }
        ),
    })
}

pub(crate) async fn e2e_with(
    dir: &std::path::Path,
    args: &BenchArgs,
    payload: Bytes,
    batched: bool,
    filters: &str,
    name: &str,
    store: &str,
) -> Result<Report> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    // Distinct ids, so duplicate deliveries show as such (single-event scenarios: every
    // request has its own id).
    let ids = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let (r2, l2, i2) = (received.clone(), lat.clone(), ids.clone());
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (r, l, i) = (r2.clone(), l2.clone(), i2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (r, l, i) = (r.clone(), l.clone(), i.clone());
                    async move {
                        let sent: Option<u128> = req
                            .headers()
                            .get("ce-benchts")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                        if let Some(id) = req.headers().get("ce-id").and_then(|v| v.to_str().ok()) {
                            if let Ok(mut i) = i.lock() {
                                i.insert(id.to_owned());
                            }
                        }
                        let _ = req.into_body().collect().await;
                        r.fetch_add(1, Ordering::Relaxed);
                        if let Some(sent) = sent {
                            let now = SystemTime::now()
                                .duration_since(UNIX_EPOCH)
                                .map(|d| d.as_micros())
                                .unwrap_or(0);
                            if let Ok(mut l) = l.lock() {
                                l.push(now.saturating_sub(sent).min(u128::from(u32::MAX)) as u32);
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
    let cfg = format!(
        "{store}subscriptions:\n  - name: bench\n    topic: bench\n    maxInFlight: 512\n{filters}    sink: {{ type: webhook, url: \"http://{hook}/hook\" }}\n"
    );
    let (mut child, addr) = if name == "bare-relay" {
        let mut child = spawn(&self_exe()?, &["--bare-relay", &hook.to_string()], &[])?;
        let addr = wait_addr(&mut child, "bare server listening on ", None)?;
        (child, addr)
    } else {
        evmesh(args, dir, name, &[], &cfg)?
    };
    let start = Instant::now();
    let mut ingest = if batched {
        let n = args.batch;
        let req = move |_: u64| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0);
            let body = batch_body(n).to_vec();
            let text = String::from_utf8_lossy(&body).replace(
                "\"type\":\"bench.event\"",
                &format!("\"type\":\"bench.event\",\"benchts\":\"{now}\""),
            );
            (
                vec![(
                    "content-type",
                    "application/cloudevents-batch+json".to_owned(),
                )],
                Bytes::from(text),
            )
        };
        // A bounded amount with few connections, so the run measures draining the backlog.
        let few = BenchArgs {
            evmesh: None,
            connections: 8,
            seconds: (args.seconds / 4).max(2),
            payload: args.payload,
            batch: args.batch,
            scenarios: String::new(),
            bare_server: false,
            bare_relay: None,
            json: None,
            plugin: None,
            kafka: None,
            rocketmq: None,
            backlog: 0,
        };
        drive(name, addr, &few, req, n as u64).await
    } else {
        drive(name, addr, args, binary_request(payload), 1).await
    };
    ingest.requests = ingest.events;
    // Wait for delivery to drain (bounded).
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    while received.load(Ordering::Relaxed) < ingest.requests && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    stop_graceful(&mut child);
    server.abort();
    let delivered = received.load(Ordering::Relaxed);
    let distinct = ids.lock().map(|i| i.len() as u64).unwrap_or(0);
    let latencies_us = lat.lock().map(|l| l.clone()).unwrap_or_default();
    let counted = if batched {
        format!("delivered {delivered}")
    } else {
        format!(
            "delivered {distinct} distinct ({} duplicate deliveries)",
            delivered.saturating_sub(distinct)
        )
    };
    let delivered = if batched { delivered } else { distinct };
    Ok(Report {
        name: name.into(),
        events: delivered,
        requests: delivered,
        errors: ingest.errors + ingest.requests.saturating_sub(delivered),
        elapsed,
        latencies_us,
        note: format!(
            "{counted} of {} published; ingest {:.0} events/s; latency is publish→webhook{}",
            ingest.requests,
            ingest.requests as f64 / ingest.elapsed.as_secs_f64(),
            if batched {
                ", and includes the backlog that batched ingest builds"
            } else {
                ""
            }
        ),
    })
}

async fn bare_server() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("bare server listening on {}", listener.local_addr()?);
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                let mut resp = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                *resp.status_mut() = http::StatusCode::ACCEPTED;
                Ok::<_, std::convert::Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

/// A store-less relay: each request is POSTed to `target` (pooled keep-alive connections) and
/// answered 202 once the target answered. What e2e would cost with no log, no routing and no
/// CloudEvents parsing.
async fn bare_relay(target: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("bare server listening on {}", listener.local_addr()?);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build_http();
    loop {
        let (s, _) = listener.accept().await?;
        let _ = s.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let client = client.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut out = http::Request::post(format!("http://{target}/hook"));
                    for (k, v) in &parts.headers {
                        if k.as_str().starts_with("ce-") || k == http::header::CONTENT_TYPE {
                            out = out.header(k, v);
                        }
                    }
                    let status = match out.body(Full::new(body)) {
                        Ok(r) => match client.request(r).await {
                            Ok(resp) => {
                                let ok = resp.status().is_success();
                                let _ = resp.into_body().collect().await;
                                if ok {
                                    202
                                } else {
                                    502
                                }
                            }
                            Err(_) => 502,
                        },
                        Err(_) => 500,
                    };
                    let mut resp = http::Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() =
                        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

/// Creates a Kafka topic for the bench (an existing one is fine).
async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&new], &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("creating topic {t}: {code}"),
        }
    }
    Ok(())
}
