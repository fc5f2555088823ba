//! Kafka as the connector compliance kit sees it (`evmesh_test_kit::compliance`): a fresh topic
//! per sink destination (3 partitions) read by a consumer of the test's own, and a fresh topic
//! per source upstream.
#![allow(clippy::unwrap_used)]

use crate::{produce, producer, Tansu};
use evmesh_test_kit::compliance::{
    Destination, Mode, Received, Record, SinkHarness, SourceHarness,
};
use futures_util::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::Producer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Kafka as the compliance kit sees it.
pub struct KafkaHarness {
    broker: Tansu,
    n: std::sync::atomic::AtomicUsize,
}

impl KafkaHarness {
    pub fn new(broker: Tansu) -> Self {
        KafkaHarness {
            broker,
            n: Default::default(),
        }
    }

    fn topic(&self, prefix: &str, partitions: u32) -> String {
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let t = format!("{prefix}-{n}");
        self.broker.create_topic(&t, partitions);
        t
    }
}

struct KafkaDestination {
    brokers: String,
    topic: String,
    mode: Mode,
    extra: &'static str,
    consumer: Mutex<BaseConsumer>,
    got: Mutex<Vec<Received>>,
}

impl KafkaDestination {
    fn new(brokers: &str, topic: &str, mode: Mode, extra: &'static str) -> Self {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("compliance-{topic}"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        KafkaDestination {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            mode,
            extra,
            consumer: Mutex::new(c),
            got: Mutex::new(Vec::new()),
        }
    }

    fn decode(
        &self,
        headers: &BTreeMap<String, String>,
        key: Option<String>,
        value: Vec<u8>,
    ) -> Received {
        match self.mode {
            Mode::Binary => Received {
                id: headers.get("ce_id").cloned().unwrap_or_default(),
                ty: headers.get("ce_type").cloned().unwrap_or_default(),
                key,
                data: value,
            },
            Mode::Structured => {
                let v: Value = serde_json::from_slice(&value).unwrap_or_default();
                Received {
                    id: v["id"].as_str().unwrap_or_default().to_owned(),
                    ty: v["type"].as_str().unwrap_or_default().to_owned(),
                    key,
                    data: serde_json::to_vec(&v["data"]).unwrap_or_default(),
                }
            }
        }
    }
}

impl Destination for KafkaDestination {
    fn sink_yaml(&self) -> String {
        format!(
            "{{ type: kafka, brokers: \"{}\", topic: {}, mode: {}, properties: {{ batch.num.messages: \"1\"{} }} }}",
            self.brokers,
            self.topic,
            self.mode.as_str(),
            self.extra
        )
    }

    fn received(&self) -> BoxFuture<'_, Vec<Received>> {
        Box::pin(async move {
            let c = self.consumer.lock().unwrap();
            let mut got = self.got.lock().unwrap();
            let mut idle = 0;
            while idle < 3 {
                match c.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        idle = 0;
                        let mut headers = BTreeMap::new();
                        if let Some(h) = m.headers() {
                            for h in h.iter() {
                                headers.insert(
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                );
                            }
                        }
                        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                        let value = m.payload().unwrap_or_default().to_vec();
                        got.push(self.decode(&headers, key, value));
                    }
                    _ => idle += 1,
                }
            }
            got.clone()
        })
    }
}

impl SinkHarness for KafkaHarness {
    fn destination(&self, mode: Mode) -> BoxFuture<'_, Box<dyn Destination>> {
        let topic = self.topic("sink", 3);
        let b = self.broker.brokers();
        Box::pin(async move {
            Box::new(KafkaDestination::new(&b, &topic, mode, "")) as Box<dyn Destination>
        })
    }

    /// Records over the producer's `message.max.bytes` are refused for good (the check's
    /// events carry 4 KiB).
    fn refusing(&self) -> BoxFuture<'_, Box<dyn Destination>> {
        let topic = self.topic("refusing", 3);
        let b = self.broker.brokers();
        Box::pin(async move {
            Box::new(KafkaDestination::new(
                &b,
                &topic,
                Mode::Binary,
                ", message.max.bytes: \"1000\"",
            )) as Box<dyn Destination>
        })
    }
}

impl SourceHarness for KafkaHarness {
    fn source_yaml(&self, name: &str, into: &str) -> String {
        format!(
            "  - name: {name}\n    type: kafka\n    brokers: \"{}\"\n    topics: [UPSTREAM]\n    group: evmesh-UPSTREAM\n    into: {into}\n    start: earliest\n",
            self.broker.brokers()
        )
    }

    fn upstream(&self) -> BoxFuture<'_, String> {
        let t = self.topic("src", 1);
        Box::pin(async move { t })
    }

    fn produce<'a>(&'a self, upstream: &'a str, records: &'a [Record]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let p = producer(&self.broker.brokers());
            for r in records {
                let data = String::from_utf8_lossy(&r.data);
                match r.mode {
                    Mode::Binary => produce(
                        &p,
                        upstream,
                        Some(&r.key),
                        &[
                            ("ce_specversion", "1.0"),
                            ("ce_id", &r.id),
                            ("ce_source", "/compliance"),
                            ("ce_type", "compliance.record"),
                            ("content-type", "application/json"),
                        ],
                        &data,
                    ),
                    Mode::Structured => produce(
                        &p,
                        upstream,
                        Some(&r.key),
                        &[("content-type", "application/cloudevents+json")],
                        &format!(
                            r#"{{"specversion":"1.0","id":"{}","source":"/compliance","type":"compliance.record","datacontenttype":"application/json","data":{data}}}"#,
                            r.id
                        ),
                    ),
                }
            }
            p.flush(Duration::from_secs(30)).unwrap();
        })
    }
}
