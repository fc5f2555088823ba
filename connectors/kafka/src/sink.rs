//! The Kafka sink: one idempotent producer per subscription sink.

use crate::binding;
use crate::{client_config, client_error, owned_headers, KafkaConnectorError, Renewing};
use evmesh_core::config::{KafkaAcks, KafkaCompression, KafkaMode, KafkaSinkConfig};
use evmesh_core::sink::{Delivered, Sink, SinkError};
use evmesh_core::Event;
use futures_util::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use std::time::Duration;

pub struct KafkaSink {
    producer: Renewing,
    topic: String,
    mode: KafkaMode,
    key: String,
    brokers: String,
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
        })
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
        let rec = binding::encode(event, self.mode, &self.key);
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(owned_headers(&rec.headers));
        if let Some(k) = rec.key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = rec.value.as_deref() {
            record = record.payload(v);
        }
        let producer = self.producer.get();
        let sent = producer.send_result(record).map_err(|(e, _)| e);
        Box::pin(async move {
            let result = match sent {
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
            };
            match &result {
                Ok(_) => self.producer.progressed(),
                Err(_) => self.producer.check(&producer, timeout * 2),
            }
            result
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
