//! The EventMesh TCP protocol through the SDK: publish throughput and ack latency with N
//! concurrent publishers, and push throughput to N subscribers of one consumer group.

use crate::{evmesh, stop_graceful, BenchArgs, Report};
use anyhow::Result;
use bytes::Bytes;
use evmesh_sdk::cloudevents::{Event, EventBuilder, EventBuilderV10};
use evmesh_sdk::{ClientId, Publisher, Subscriber, SubscriberConfig};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn event(n: u64, payload: &Bytes) -> Result<Event> {
    Ok(EventBuilderV10::new()
        .id(format!("t{n}"))
        .source("/bench")
        .ty("bench.event")
        .extension("benchts", now_us().to_string())
        .data("application/octet-stream", payload.to_vec())
        .build()?)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `n` SDK publishers over TCP, each publishing one event at a time and waiting for its ack.
pub async fn publish(
    args: &BenchArgs,
    dir: &std::path::Path,
    name: &str,
    n: usize,
    payload: Bytes,
) -> Result<Report> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let (mut child, _) = evmesh(args, dir, name, &[("EVMESH_SERVER__TCP", &addr)], "")?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (addr, payload, counter) = (addr.clone(), payload.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            let id = ClientId::new("bench").instance(i as i64);
            let Ok(p) = Publisher::tcp(&addr, id).await else {
                return (lat, 1);
            };
            while Instant::now() < deadline {
                let k = counter.fetch_add(1, Ordering::Relaxed);
                let Ok(e) = event(k, &payload) else {
                    errors += 1;
                    continue;
                };
                let t = Instant::now();
                match p.publish("bench", &e).await {
                    Ok(()) => lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies_us.extend(l);
            errors += e;
        }
    }
    let elapsed = start.elapsed();
    stop_graceful(&mut child);
    let events = latencies_us.len() as u64;
    Ok(Report {
        name: name.to_owned(),
        events,
        requests: events,
        errors,
        elapsed,
        latencies_us,
        note: format!("{n} SDK publisher(s) over TCP, one event in flight each; latency is publish→ack (durable)"),
    })
}

/// A backlog published over HTTP in batches while `n` SDK subscribers of one CLUSTERING group
/// take and ack it: throughput is acked deliveries per second, latency publish→received.
pub async fn push(
    args: &BenchArgs,
    dir: &std::path::Path,
    name: &str,
    n: usize,
    payload: Bytes,
) -> Result<Report> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let (mut child, http) = evmesh(args, dir, name, &[("EVMESH_SERVER__TCP", &addr)], "")?;
    let received = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::<u32>::new()));
    let mut subs = Vec::new();
    for i in 0..n {
        let cfg = SubscriberConfig::new(
            &addr,
            "bench",
            "bench",
            ClientId::new("sub").instance(i as i64),
        );
        let mut s = Subscriber::connect(cfg).await?;
        let (r, l) = (received.clone(), lat.clone());
        subs.push(tokio::spawn(async move {
            while let Some(d) = s.next().await {
                let sent: Option<u128> = d
                    .event
                    .extension("benchts")
                    .and_then(|v| v.to_string().parse().ok());
                if let Some(sent) = sent {
                    if let Ok(mut l) = l.lock() {
                        l.push(now_us().saturating_sub(sent).min(u128::from(u32::MAX)) as u32);
                    }
                }
                r.fetch_add(1, Ordering::Relaxed);
                if d.ack().await.is_err() {
                    break;
                }
            }
        }));
    }
    let publisher = Publisher::http(&format!("http://{http}"))?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut published = 0u64;
    while Instant::now() < deadline {
        let batch: Vec<Event> = (0..100)
            .map(|k| event(published + k, &payload))
            .collect::<Result<_>>()?;
        publisher.publish_batch("bench", &batch).await?;
        published += 100;
        // Keep the backlog bounded: publishing runs ahead of delivery by at most 20k.
        while published.saturating_sub(received.load(Ordering::Relaxed)) > 20_000
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let drain = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < published && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    stop_graceful(&mut child);
    for s in subs {
        s.abort();
    }
    let delivered = received.load(Ordering::Relaxed);
    Ok(Report {
        name: name.to_owned(),
        events: delivered,
        requests: delivered,
        errors: published.saturating_sub(delivered),
        elapsed,
        latencies_us: lat.lock().map(|l| l.clone()).unwrap_or_default(),
        note: format!("{n} SDK subscriber(s), one CLUSTERING group; {delivered} of {published} published acked; latency publish→received"),
    })
}
