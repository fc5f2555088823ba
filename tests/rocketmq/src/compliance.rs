//! RocketMQ as the connector compliance kit sees it (`evmesh_test_kit::compliance`): a fresh
//! topic (4 queues) per sink destination, read from its start by a consumer group of the
//! test's own, and a fresh topic per source upstream.
#![allow(clippy::unwrap_used)]

use crate::client::{create_topic, send, Out, Reader};
use crate::RocketMq;
use evmesh_test_kit::compliance::{
    Destination, Mode, Received, Record, SinkHarness, SourceHarness,
};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};

/// RocketMQ as the compliance kit sees it.
pub struct RocketMqHarness {
    broker: RocketMq,
    n: AtomicUsize,
}

impl RocketMqHarness {
    pub fn new(broker: RocketMq) -> Self {
        RocketMqHarness {
            broker,
            n: AtomicUsize::new(0),
        }
    }

    fn name(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.n.fetch_add(1, Ordering::SeqCst))
    }

    async fn destination_with(&self, mode: Mode, extra: &'static str) -> Box<dyn Destination> {
        let topic = self.name("sink");
        let namesrv = self.broker.namesrv();
        create_topic(&namesrv, &topic, 4).await;
        let reader = Reader::new(&namesrv, &topic).await;
        Box::new(RocketMqDestination {
            namesrv,
            topic,
            mode,
            extra,
            reader: tokio::sync::Mutex::new(reader),
        })
    }
}

struct RocketMqDestination {
    namesrv: String,
    topic: String,
    mode: Mode,
    extra: &'static str,
    reader: tokio::sync::Mutex<Reader>,
}

impl Destination for RocketMqDestination {
    fn sink_yaml(&self) -> String {
        format!(
            "{{ type: rocketmq, namesrv: \"{}\", topic: {}, mode: {}{} }}",
            self.namesrv,
            self.topic,
            self.mode.as_str(),
            self.extra
        )
    }

    fn received(&self) -> BoxFuture<'_, Vec<Received>> {
        Box::pin(async move {
            let mut r = self.reader.lock().await;
            r.drain(3).await;
            r.got
                .iter()
                .map(|m| match self.mode {
                    Mode::Binary => Received {
                        id: m.properties.get("CE_id").cloned().unwrap_or_default(),
                        ty: m.properties.get("CE_type").cloned().unwrap_or_default(),
                        key: m.properties.get("CE_partitionkey").cloned(),
                        data: m.body.clone(),
                    },
                    Mode::Structured => {
                        let v: Value = serde_json::from_slice(&m.body).unwrap_or_default();
                        Received {
                            id: v["id"].as_str().unwrap_or_default().to_owned(),
                            ty: v["type"].as_str().unwrap_or_default().to_owned(),
                            key: v["partitionkey"].as_str().map(str::to_owned),
                            data: serde_json::to_vec(&v["data"]).unwrap_or_default(),
                        }
                    }
                })
                .collect()
        })
    }
}

impl SinkHarness for RocketMqHarness {
    fn destination(&self, mode: Mode) -> BoxFuture<'_, Box<dyn Destination>> {
        Box::pin(self.destination_with(mode, ""))
    }

    /// Messages over the sink's `maxMessageSize` are refused for good (the check's events
    /// carry 4 KiB).
    fn refusing(&self) -> BoxFuture<'_, Box<dyn Destination>> {
        Box::pin(self.destination_with(Mode::Binary, ", maxMessageSize: 1024"))
    }
}

impl SourceHarness for RocketMqHarness {
    fn source_yaml(&self, name: &str, into: &str) -> String {
        format!(
            "  - name: {name}\n    type: rocketmq\n    namesrv: \"{}\"\n    topic: UPSTREAM\n    group: evmesh_UPSTREAM\n    into: {into}\n    start: earliest\n",
            self.broker.namesrv()
        )
    }

    fn upstream(&self) -> BoxFuture<'_, String> {
        let topic = self.name("src");
        let namesrv = self.broker.namesrv();
        Box::pin(async move {
            create_topic(&namesrv, &topic, 2).await;
            topic
        })
    }

    fn produce<'a>(&'a self, upstream: &'a str, records: &'a [Record]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let msgs: Vec<Out> = records
                .iter()
                .map(|r| match r.mode {
                    Mode::Binary => Out {
                        keys: Some(r.key.clone()),
                        tag: None,
                        properties: vec![
                            ("CE_specversion".into(), "1.0".into()),
                            ("CE_id".into(), r.id.clone()),
                            ("CE_source".into(), "/compliance".into()),
                            ("CE_type".into(), "compliance.record".into()),
                            ("CE_contenttype".into(), "application/json".into()),
                        ],
                        body: r.data.clone(),
                    },
                    Mode::Structured => Out {
                        keys: Some(r.key.clone()),
                        tag: None,
                        properties: vec![(
                            "CE_contenttype".into(),
                            "application/cloudevents+json".into(),
                        )],
                        body: format!(
                            r#"{{"specversion":"1.0","id":"{}","source":"/compliance","type":"compliance.record","datacontenttype":"application/json","data":{}}}"#,
                            r.id,
                            String::from_utf8_lossy(&r.data)
                        )
                        .into_bytes(),
                    },
                })
                .collect();
            send(&self.broker.namesrv(), upstream, &msgs).await;
        })
    }
}
