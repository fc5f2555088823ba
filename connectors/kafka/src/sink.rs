//! The Kafka sink: one idempotent producer per subscription sink.

use crate::binding;
use crate::config::{KafkaAcks, KafkaCompression, KafkaMode, KafkaSinkConfig};
use crate::{client_config, client_error, owned_headers, KafkaConnectorError, Renewing};
use evmesh_core::component::{SinkConfig, SinkContext};
use evmesh_core::sink::{Delivered, Sink, SinkError, SinkHealth};
use evmesh_core::Event;
use futures_util::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl SinkConfig for KafkaSinkConfig {
    fn build(&self, _cx: &SinkContext) -> Result<Arc<dyn Sink>, String> {
        KafkaSink::new(self)
            .map(|s| Arc::new(s) as Arc<dyn Sink>)
            .map_err(|e| e.to_string())
    }
}

pub struct KafkaSink {
    producer: Renewing,
    topic: String,
    mode: KafkaMode,
    key: String,
    brokers: String,
    health: Mutex<SinkHealth>,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaSinkConfig) -> Result<Self, KafkaConnectorError> {
        let mut c = client_config(&cfg.brokers, &Default::default());
        c.set(
            "acks",
            match cfg.acks {
                KafkaAcks::All => "all",
                KafkaAcks::Leader => "1",
                KafkaAcks::None => "0",
            },
        )
        .set("enable.idempotence", cfg.idempotence.to_string())
        .set(
            "compression.type",
            match cfg.compression {
                KafkaCompression::None => "none",
                KafkaCompression::Gzip => "gzip",
                KafkaCompression::Snappy => "snappy",
                KafkaCompression::Lz4 => "lz4",
            },
        )
        .set("linger.ms", cfg.linger.0.as_millis().to_string());
        if let Some(b) = cfg.batch_size {
            c.set("batch.size", b.to_string());
        }
        for (k, v) in &cfg.properties {
            c.set(k, v);
        }
        let producer =
            Renewing::new(c, format!("sink {}", cfg.topic)).map_err(client_error(&cfg.brokers))?;
        Ok(KafkaSink {
            producer,
            topic: cfg.topic.clone(),
            mode: cfg.mode,
            key: cfg.key.clone(),
            brokers: cfg.brokers.clone(),
            health: Mutex::new(SinkHealth::Unknown),
        })
    }

    /// Hands one event to the producer's queue.
    fn send(
        &self,
        producer: &rdkafka::producer::FutureProducer,
        event: &Event,
    ) -> Result<DeliveryFuture, KafkaError> {
        let mut rec = binding::encode(event, self.mode, &self.key);
        // W3C trace context of this delivery attempt, as a record header (a traced consumer
        // continues the trace).
        if let Some(cx) = evmesh_core::trace::current() {
            rec.headers
                .retain(|(k, _)| k != evmesh_core::trace::TRACEPARENT);
            rec.headers.push((
                evmesh_core::trace::TRACEPARENT.to_owned(),
                cx.to_string().into_bytes(),
            ));
            if let Some(state) = evmesh_core::trace::current_state() {
                rec.headers
                    .retain(|(k, _)| k != evmesh_core::trace::TRACESTATE);
                rec.headers.push((
                    evmesh_core::trace::TRACESTATE.to_owned(),
                    state.into_bytes(),
                ));
            }
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(owned_headers(&rec.headers));
        if let Some(k) = rec.key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = rec.value.as_deref() {
            record = record.payload(v);
        }
        producer.send_result(record).map_err(|(e, _)| e)
    }

    /// Waits for the broker's answer on one queued event.
    async fn settle(
        &self,
        sent: Result<DeliveryFuture, KafkaError>,
        timeout: Duration,
    ) -> Result<Delivered, SinkError> {
        match sent {
            Err(e) => Err(classify(&self.topic, e)),
            Ok(fut) => match tokio::time::timeout(timeout, fut).await {
                Err(_) => Err(SinkError::retryable(format!(
                    "kafka topic {}: no acknowledgement within {timeout:?}",
                    self.topic
                ))),
                Ok(Err(_)) => Err(SinkError::retryable("kafka producer was replaced")),
                Ok(Ok(Err((e, _)))) => Err(classify(&self.topic, e)),
                Ok(Ok(Ok(_))) => Ok(Delivered::default()),
            },
        }
    }

    fn record_outcome(
        &self,
        ok: bool,
        last_error: Option<&SinkError>,
        producer: &Arc<rdkafka::producer::FutureProducer>,
        timeout: Duration,
    ) {
        if ok {
            self.producer.progressed();
        } else {
            self.producer.check(producer, timeout * 2);
        }
        if let Ok(mut h) = self.health.lock() {
            *h = match last_error {
                None => SinkHealth::Ready,
                Some(e) => SinkHealth::Unhealthy(e.message.clone()),
            };
        }
    }
}

/// Errors that another attempt cannot fix.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
        )
    )
}

impl Sink for KafkaSink {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        let producer = self.producer.get();
        let sent = self.send(&producer, event);
        Box::pin(async move {
            let result = self.settle(sent, timeout).await;
            self.record_outcome(result.is_ok(), result.as_ref().err(), &producer, timeout);
            result
        })
    }

    /// Queues every event before waiting, so the producer sends them in its own batches.
    fn deliver_batch<'a>(
        &'a self,
        events: &'a [&'a Event],
        timeout: Duration,
    ) -> BoxFuture<'a, Vec<Result<Delivered, SinkError>>> {
        let producer = self.producer.get();
        let sent: Vec<_> = events.iter().map(|e| self.send(&producer, e)).collect();
        Box::pin(async move {
            let mut out = Vec::with_capacity(sent.len());
            for s in sent {
                out.push(self.settle(s, timeout).await);
            }
            let last_error = out.iter().rev().find_map(|r| r.as_ref().err());
            self.record_outcome(last_error.is_none(), last_error, &producer, timeout);
            out
        })
    }

    fn health(&self) -> SinkHealth {
        self.health
            .lock()
            .map(|h| h.clone())
            .unwrap_or(SinkHealth::Unknown)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let producer = self.producer.get();
        Box::pin(async move {
            let _ =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        })
    }

    fn describe(&self) -> String {
        format!("kafka {}/{}", self.brokers, self.topic)
    }
}

fn classify(topic: &str, e: KafkaError) -> SinkError {
    let message = format!("kafka topic {topic}: {e}");
    if permanent(&e) {
        SinkError::not_retryable(message)
    } else {
        SinkError::retryable(message)
    }
}
