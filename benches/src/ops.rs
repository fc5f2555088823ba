//! The operations figures: the sidecar's start-up time and idle memory, the latency evmesh adds
//! between a publisher and a local webhook at a steady 1,000 events/s, and what metrics and
//! tracing cost.

use crate::{
    binary_request, drive, evmesh, evmesh_exe, percentile_ms, spawn, stop_graceful, wait_addr,
    BenchArgs,
};
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Start-up to ready, and idle RSS, of `evmesh serve` in a profile (5 runs, fresh data each).
pub async fn footprint(args: &BenchArgs, dir: &std::path::Path, sidecar: bool) -> Result<()> {
    let name = if sidecar { "sidecar" } else { "standalone" };
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    for i in 0..5 {
        let data = dir.join(format!("footprint-{name}-{i}"));
        let data_s = data.display().to_string();
        let mut argv = vec!["serve", "--data-dir", &data_s];
        if sidecar {
            // An upstream that is down: forwarding waits; start-up does not depend on it.
            argv.extend(["--profile", "sidecar", "--upstream", "http://127.0.0.1:1"]);
        }
        let began = Instant::now();
        let mut child = spawn(
            &evmesh_exe(args)?,
            &argv,
            &[
                ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
                ("EVMESH_SERVER__ADMIN", "127.0.0.1:0"),
                ("EVMESH_SERVER__TCP", "127.0.0.1:0"),
            ],
        )?;
        wait_addr(
            &mut child,
            "http ingest listening on ",
            Some("evmesh ready"),
        )?;
        starts.push(began.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push(rss_kib(child.id()).unwrap_or(0));
        stop_graceful(&mut child);
        let _ = std::fs::remove_dir_all(&data);
    }
    starts.sort();
    rss.sort_unstable();
    println!(
        "{:<16} start-up to ready: median {:.1} ms (min {:.1}, max {:.1})  idle RSS: median {:.1} MB (max {:.1})",
        format!("{name}-footprint"),
        starts[2].as_secs_f64() * 1e3,
        starts[0].as_secs_f64() * 1e3,
        starts[4].as_secs_f64() * 1e3,
        rss[2] as f64 / 1024.0,
        rss[4] as f64 / 1024.0,
    );
    Ok(())
}

/// A webhook receiver recording one-way latency (`ce-benchts` → arrival).
async fn receiver() -> Result<(SocketAddr, Arc<Mutex<Vec<u32>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let lat = Arc::new(Mutex::new(Vec::<u32>::new()));
    let l2 = lat.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let l = l2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let l = l.clone();
                    async move {
                        let sent: Option<u128> = req
                            .headers()
                            .get("ce-benchts")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                        let _ = req.into_body().collect().await;
                        if let Some(sent) = sent {
                            let d = now_us().saturating_sub(sent).min(u128::from(u32::MAX));
                            if let Ok(mut l) = l.lock() {
                                l.push(d as u32);
                            }
                        }
                        let mut resp = http::Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = http::StatusCode::OK;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok((addr, lat))
}

/// Sends `rate` binary-mode events per second to `url` for `seconds` (each request on a pooled
/// keep-alive connection, started on its tick whatever the previous ones are doing).
async fn steady(url: String, rate: u64, seconds: u64, payload: Bytes) -> u64 {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let make = binary_request(payload);
    let total = rate * seconds;
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        tick.tick().await;
        let (headers, body) = make(n);
        let mut b = http::Request::post(url.as_str());
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let Ok(req) = b.body(Full::new(body)) else {
            continue;
        };
        let (c, e) = (client.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            match c.request(req).await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.into_body().collect().await;
                }
                _ => {
                    e.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    errors.load(std::sync::atomic::Ordering::Relaxed)
}

/// The latency evmesh adds between a publisher and a local webhook at `rate` events/s: the
/// one-way latency publish → webhook through evmesh (sidecar profile, default `fsync: always`,
/// and `fsync: interval`), next to a direct POST to the same webhook at the same rate.
pub async fn latency_at_rate(args: &BenchArgs, dir: &std::path::Path, rate: u64) -> Result<()> {
    let seconds = args.seconds.max(5);
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let report = |name: &str, lat: &Arc<Mutex<Vec<u32>>>, errors: u64| -> (f64, f64) {
        let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        // The first second warms connections and caches up.
        let (p50, p99, p999) = (
            percentile_ms(&l, 0.5),
            percentile_ms(&l, 0.99),
            percentile_ms(&l, 0.999),
        );
        println!(
            "{name:<16} {rate} events/s for {seconds} s: {} arrived  p50 {p50:.3} ms  p99 {p99:.3} ms  p999 {p999:.3} ms  errors {errors}",
            l.len()
        );
        (p50, p99)
    };
    // Direct: the publisher posts to the webhook itself.
    let (hook, lat) = receiver().await?;
    let errors = steady(
        format!("http://{hook}/hook"),
        rate,
        seconds,
        payload.clone(),
    )
    .await;
    let (_, direct_p99) = report("direct-webhook", &lat, errors);
    for fsync in ["always", "interval"] {
        let (hook, lat) = receiver().await?;
        // The sidecar forwards upstream too: a bare server stands in for the upstream.
        let mut up = spawn(&crate::self_exe()?, &["--bare-server"], &[])?;
        let up_addr = wait_addr(&mut up, "bare server listening on ", None)?;
        let cfg = format!(
            "subscriptions:\n  - name: local\n    topic: bench\n    sink: {{ type: webhook, url: \"http://{hook}/hook\" }}\n"
        );
        let upstream = format!("http://{up_addr}");
        let data = dir.join(format!("latency-{fsync}"));
        let _ = std::fs::remove_dir_all(&data);
        let cfg_path = dir.join(format!("latency-{fsync}.yaml"));
        std::fs::write(&cfg_path, cfg)?;
        let (data_s, cfg_s) = (data.display().to_string(), cfg_path.display().to_string());
        let mut child = spawn(
            &evmesh_exe(args)?,
            &[
                "serve",
                "--profile",
                "sidecar",
                "--upstream",
                &upstream,
                "--config",
                &cfg_s,
                "--data-dir",
                &data_s,
            ],
            &[
                ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
                ("EVMESH_SERVER__ADMIN", "127.0.0.1:0"),
                ("EVMESH_SERVER__TCP", "127.0.0.1:0"),
                ("EVMESH_STORE__FSYNC", fsync),
            ],
        )?;
        let addr = wait_addr(
            &mut child,
            "http ingest listening on ",
            Some("evmesh ready"),
        )?;
        let errors = steady(
            format!("http://{addr}/topics/bench"),
            rate,
            seconds,
            payload.clone(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, p99) = report(&format!("sidecar-{fsync}"), &lat, errors);
        println!(
            "{:<16} added p99 over a direct POST: {:.3} ms",
            "",
            p99 - direct_p99
        );
        stop_graceful(&mut child);
        stop_graceful(&mut up);
    }
    Ok(())
}

/// Ingest throughput with tracing off, configured but sampling nothing, sampling 1% and
/// sampling everything (spans exported to a bare server standing in for a collector).
pub async fn tracing_cost(args: &BenchArgs, dir: &std::path::Path) -> Result<()> {
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let mut collector = spawn(&crate::self_exe()?, &["--bare-server"], &[])?;
    let otlp = wait_addr(&mut collector, "bare server listening on ", None)?;
    let mut base = None;
    for (name, ratio) in [
        ("tracing-off", None),
        ("tracing-0%", Some("0.0")),
        ("tracing-1%", Some("0.01")),
        ("tracing-100%", Some("1.0")),
    ] {
        let cfg = match ratio {
            None => String::new(),
            Some(r) => format!(
                "telemetry:\n  tracing:\n    otlpEndpoint: http://{otlp}/v1/traces\n    sampleRatio: {r}\n"
            ),
        };
        let (mut child, addr) = evmesh(
            args,
            dir,
            name,
            &[("EVMESH_STORE__FSYNC", "interval")],
            &cfg,
        )?;
        let mut r = drive(name, addr, args, binary_request(payload.clone()), 1).await;
        stop_graceful(&mut child);
        let rps = r.requests as f64 / r.elapsed.as_secs_f64();
        match base {
            None => {
                base = Some(rps);
                r.note = "ingest, fsync interval".into();
            }
            Some(b) => r.note = format!("{:+.1}% vs tracing off", 100.0 * (rps - b) / b),
        }
        r.print();
    }
    crate::stop_graceful(&mut collector);
    Ok(())
}

/// Nanoseconds of the metric updates one event costs on the event path (ingest counter,
/// delivery outcome, attempt histogram), from two threads at once.
pub fn metrics_ops() -> Result<()> {
    let m = evmesh_metrics::global();
    let n: u64 = 5_000_000;
    let began = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let m = evmesh_metrics::global();
                let sub = m.subscription(&format!("bench{t}"));
                for i in 0..n {
                    m.accepted("bench", 1);
                    sub.finished(evmesh_metrics::Outcome::Delivered);
                    sub.attempt(Duration::from_micros(i % 5000), false);
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a metrics thread panicked"))?;
    }
    let per_event = began.elapsed().as_nanos() as f64 / n as f64;
    let text = m.render();
    println!(
        "{:<16} {per_event:.1} ns per event (ingest counter + delivery outcome + attempt histogram, 2 threads, {} events each); a scrape renders {} bytes",
        "metrics-ops",
        n,
        text.len()
    );
    Ok(())
}
