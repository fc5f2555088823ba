//! The tests' own RocketMQ clients (rocketmq-client-rust, on evmesh's shared client
//! runtime): make a topic, send messages, read every message of a topic from the start.
#![allow(clippy::unwrap_used)]

use cheetah_string::CheetahString;
use rocketmq_client_rust::{DefaultLitePullConsumer, DefaultMQProducer};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_single::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn producer(namesrv: &str) -> DefaultMQProducer {
    let rt = evmesh_connector_rocketmq::client::runtime().unwrap();
    let mut p = DefaultMQProducer::builder(rt)
        .producer_group(unique("test_producer"))
        .name_server_addr(namesrv)
        .build();
    p.start().await.unwrap();
    p
}

/// Creates `topic` with `queues` queues and waits until it has a route.
pub async fn create_topic(namesrv: &str, topic: &str, queues: i32) {
    let mut p = producer(namesrv).await;
    // Right after the broker registers, the name server may not route the topic topics are
    // created from yet: try again for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = p
        .create_topic("TBW102", topic, queues, HashMap::new())
        .await
    {
        assert!(
            Instant::now() < deadline,
            "creating topic {topic}: {}",
            evmesh_connector_rocketmq::client::describe(&e)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while p
        .fetch_publish_message_queues(topic)
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "topic {topic} has no route");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.shutdown().await;
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct Out {
    pub keys: Option<String>,
    pub tag: Option<String>,
    pub properties: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sends every message, each acknowledged (`SEND_OK`) before the next.
pub async fn send(namesrv: &str, topic: &str, msgs: &[Out]) {
    let mut p = producer(namesrv).await;
    for m in msgs {
        let mut b = Message::builder().topic(topic).body(m.body.clone());
        if let Some(k) = &m.keys {
            b = b.key(k.as_str());
        }
        if let Some(t) = &m.tag {
            b = b.tags(t.as_str());
        }
        for (k, v) in &m.properties {
            b = b.raw_property(k.as_str(), v.as_str()).unwrap();
        }
        let r = p
            .send_with_timeout(b.build().unwrap(), 10_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            r.send_status,
            rocketmq_client_rust::SendStatus::SendOk,
            "{r:?}"
        );
    }
    p.shutdown().await;
}

/// A message as the test consumer read it.
#[derive(Debug, Clone)]
pub struct In {
    pub queue: i32,
    pub offset: i64,
    pub keys: Option<String>,
    pub tag: Option<String>,
    pub properties: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads a topic from its first message in a group of its own.
pub struct Reader {
    consumer: DefaultLitePullConsumer,
    pub got: Vec<In>,
}

impl Reader {
    pub async fn new(namesrv: &str, topic: &str) -> Reader {
        let rt = evmesh_connector_rocketmq::client::runtime().unwrap();
        let c = DefaultLitePullConsumer::builder(rt)
            .consumer_group(unique("test_reader"))
            .name_server_addr(namesrv)
            .auto_commit(false)
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .build()
            .unwrap();
        c.subscribe(topic).await.unwrap();
        c.start().await.unwrap();
        Reader {
            consumer: c,
            got: Vec::new(),
        }
    }

    /// Takes what has arrived until the topic is quiet for `idle` polls of 100 ms.
    pub async fn drain(&mut self, idle: usize) -> &[In] {
        let mut quiet = 0;
        while quiet < idle {
            let msgs = self.consumer.poll_with_timeout(100).await;
            if msgs.is_empty() {
                quiet += 1;
                continue;
            }
            quiet = 0;
            for m in msgs {
                let get = |k: &'static str| {
                    m.properties()
                        .get(&CheetahString::from_static_str(k))
                        .map(|v| v.to_string())
                };
                self.got.push(In {
                    queue: m.queue_id(),
                    offset: m.queue_offset(),
                    keys: get("KEYS"),
                    tag: get("TAGS"),
                    properties: m
                        .properties()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    body: m.body().map(|b| b.to_vec()).unwrap_or_default(),
                });
            }
        }
        &self.got
    }

    /// Reads until `n` messages are here or `timeout` passes.
    pub async fn wait_for(&mut self, n: usize, timeout: Duration) -> &[In] {
        let deadline = Instant::now() + timeout;
        while self.got.len() < n && Instant::now() < deadline {
            self.drain(3).await;
        }
        &self.got
    }

    pub async fn close(self) {
        self.consumer.shutdown().await;
    }
}
