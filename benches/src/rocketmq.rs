//! RocketMQ scenarios, against a name server and broker you start
//! (`scripts/rocketmq-broker.sh start`): HTTP → evmesh → RocketMQ sink (throughput of messages
//! that reached the topic, latency publish → consumed), and RocketMQ as the store (ingest:
//! publisher answered after `SEND_OK`; end to end: publish → webhook).

use crate::{binary_request, drive, e2e_with, evmesh, stop_graceful, BenchArgs, Report};
use anyhow::{anyhow, Result};
use bytes::Bytes;
use cheetah_string::CheetahString;
use rocketmq_client_rust::{DefaultLitePullConsumer, DefaultMQProducer};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

async fn create_topic(namesrv: &str, topic: &str, queues: i32) -> Result<()> {
    let rt = evmesh_connector_rocketmq::client::runtime()?;
    let mut p = DefaultMQProducer::builder(rt)
        .producer_group(format!("bench_topics_{}", std::process::id()))
        .name_server_addr(namesrv)
        .build();
    p.start().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = p
        .create_topic("TBW102", topic, queues, HashMap::new())
        .await
    {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "creating {topic}: {}",
                evmesh_connector_rocketmq::client::describe(&e)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.shutdown().await;
    Ok(())
}

pub async fn run(
    scenario: &str,
    dir: &std::path::Path,
    args: &BenchArgs,
    namesrv: &str,
    payload: Bytes,
) -> Result<Report> {
    let pid = std::process::id();
    let store = format!(
        "store: {{ type: rocketmq, namesrv: \"{namesrv}\", topicPrefix: \"bench{pid}_\", groupPrefix: \"bench{pid}_\", queues: 4 }}\n"
    );
    match scenario {
        "rocketmq-sink" => sink(dir, args, namesrv, payload).await,
        "rocketmq-store-ingest" => {
            let (mut child, addr) = evmesh(args, dir, scenario, &[], &store)?;
            let mut r = drive(scenario, addr, args, binary_request(payload), 1).await;
            stop_graceful(&mut child);
            r.note = "publisher answered after the broker's SEND_OK".into();
            Ok(r)
        }
        _ => {
            e2e_with(
                dir,
                args,
                payload,
                false,
                "    start: earliest\n",
                scenario,
                &store,
            )
            .await
        }
    }
}

async fn sink(
    dir: &std::path::Path,
    args: &BenchArgs,
    namesrv: &str,
    payload: Bytes,
) -> Result<Report> {
    let topic = format!("evmesh_bench_sink_{}", std::process::id());
    create_topic(namesrv, &topic, 4).await?;
    let rt = evmesh_connector_rocketmq::client::runtime()?;
    let consumer = DefaultLitePullConsumer::builder(rt)
        .consumer_group(format!("{topic}_reader"))
        .name_server_addr(namesrv)
        .auto_commit(false)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .build()?;
    consumer.subscribe(&topic).await?;
    consumer.start().await?;
    let received = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let (r2, l2) = (received.clone(), lat.clone());
    let reader = tokio::spawn(async move {
        loop {
            for m in consumer.poll_with_timeout(200).await {
                r2.fetch_add(1, Ordering::Relaxed);
                let sent: Option<u128> = m
                    .properties()
                    .get(&CheetahString::from_static_str("CE_benchts"))
                    .and_then(|v| v.as_str().parse().ok());
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
        }
    });
    let cfg = format!(
        "subscriptions:\n  - name: bench\n    topic: bench\n    maxInFlight: 1024\n    sink: {{ type: rocketmq, namesrv: \"{namesrv}\", topic: {topic} }}\n"
    );
    let (mut child, addr) = evmesh(args, dir, "rocketmq-sink", &[], &cfg)?;
    let start = Instant::now();
    let ingest = drive("rocketmq-sink", addr, args, binary_request(payload), 1).await;
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    while received.load(Ordering::Relaxed) < ingest.requests && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    stop_graceful(&mut child);
    reader.abort();
    let delivered = received.load(Ordering::Relaxed);
    let mut acks = ingest.latencies_us.clone();
    acks.sort_unstable();
    let p99_ack = acks
        .get(((acks.len() as f64 - 1.0) * 0.99).round() as usize)
        .map_or(0.0, |v| f64::from(*v) / 1000.0);
    Ok(Report {
        name: "rocketmq-sink".into(),
        events: delivered,
        requests: delivered,
        errors: ingest.errors + ingest.requests.saturating_sub(delivered),
        elapsed,
        latencies_us: lat.lock().map(|l| l.clone()).unwrap_or_default(),
        note: format!(
            "{delivered} of {} published reached RocketMQ; ingest {:.0} events/s (p99 ack {p99_ack:.1} ms); latency is publish→consumed",
            ingest.requests,
            ingest.requests as f64 / ingest.elapsed.as_secs_f64(),
        ),
    })
}
