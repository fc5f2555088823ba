//! The RocketMQ client as evmesh uses it: one client runtime for the process, one started
//! producer per name server list shared by every sink and the store, and the conversions
//! between the binding's values and the client's messages.

use crate::binding::{self, InMessage, OutMessage};
use crate::RocketMqError;
use cheetah_string::CheetahString;
use rocketmq_client_rust::{ClientRuntime, ClientRuntimeConfig, DefaultMQProducer};
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_model::message::MessageQueue;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The client runtime every RocketMQ client of the process shares. The RocketMQ client runs
/// its background work (heartbeats, rebalancing, pulling) on a runtime it owns; evmesh
/// starts that once and keeps it for the life of the process.
pub fn runtime() -> Result<Arc<ClientRuntime>, RocketMqError> {
    static RUNTIME: OnceLock<Result<Arc<ClientRuntime>, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let config = rocketmq_runtime::RuntimeConfig::for_parallelism(
                "evmesh-rocketmq",
                std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            );
            let owner = rocketmq_runtime::RuntimeOwner::plan(config)
                .map_err(|e| format!("RocketMQ client runtime: {e}"))?
                .build()
                .map_err(|e| format!("RocketMQ client runtime: {e}"))?;
            let telemetry = rocketmq_observability::TelemetryRuntimeGuard::noop();
            let rt = ClientRuntime::try_new(
                owner.root_context().component("evmesh"),
                ClientRuntimeConfig::default(),
                telemetry.handle(),
            )
            .map_err(|e| format!("RocketMQ client runtime: {e}"))?;
            // Both live as long as the process: the clients hold on to the runtime.
            std::mem::forget(owner);
            std::mem::forget(telemetry);
            Ok(rt)
        })
        .clone()
        .map_err(RocketMqError::Client)
}

/// A started producer for `namesrv`, shared (producers send to any topic).
pub async fn producer(namesrv: &str, group: &str) -> Result<Arc<DefaultMQProducer>, RocketMqError> {
    type Producers = tokio::sync::Mutex<HashMap<(String, String), Arc<DefaultMQProducer>>>;
    static PRODUCERS: OnceLock<Producers> = OnceLock::new();
    let producers = PRODUCERS.get_or_init(Default::default);
    let mut map = producers.lock().await;
    let key = (namesrv.to_owned(), group.to_owned());
    if let Some(p) = map.get(&key) {
        return Ok(p.clone());
    }
    let mut p = DefaultMQProducer::builder(runtime()?)
        .producer_group(group)
        .name_server_addr(namesrv)
        // evmesh retries through each subscription's policy; one retry inside the client
        // covers a broker that just went away.
        .retry_times_when_send_failed(1)
        .build();
    p.start()
        .await
        .map_err(|e| RocketMqError::Client(format!("starting a producer for {namesrv}: {e}")))?;
    let p = Arc::new(p);
    map.insert(key, p.clone());
    Ok(p)
}

/// A client error with the message the client keeps inside it (its `Display` says only the
/// error class, such as "Argument is invalid").
pub fn describe(e: &rocketmq_client_rust::ClientError) -> String {
    use rocketmq_client_rust::{MQBrokerException, MQClientException};
    let inner = e
        .source_ref::<MQClientException>()
        .map(|x| (x.error_message().map(str::to_owned), x.response_code()))
        .or_else(|| {
            e.source_ref::<MQBrokerException>()
                .map(|x| (x.error_message().map(str::to_owned), x.response_code()))
        });
    match inner {
        Some((Some(m), code)) if code != 0 && code != -1 => format!("{e}: {m} (code {code})"),
        Some((Some(m), _)) => format!("{e}: {m}"),
        _ => e.to_string(),
    }
}

/// A client message from the binding's encoding.
pub fn message(topic: &str, tag: Option<&str>, out: OutMessage) -> Result<Message, String> {
    let mut b = Message::builder().topic(topic).body(out.body);
    if let Some(t) = tag {
        b = b.tags(t);
    }
    if let Some(k) = out.keys {
        b = b.key(k);
    }
    for (n, v) in out.properties {
        b = b
            .raw_property(n.as_str(), v)
            .map_err(|e| format!("property {n}: {e}"))?;
    }
    b.build().map_err(|e| e.to_string())
}

/// The system properties RocketMQ adds, which are not the message's own.
fn system_property(name: &str) -> bool {
    matches!(
        name,
        "KEYS"
            | "TAGS"
            | "WAIT"
            | "UNIQ_KEY"
            | "MIN_OFFSET"
            | "MAX_OFFSET"
            | "TRACE_ON"
            | "CLUSTER"
            | "MSG_REGION"
            | "DELAY"
            | "RETRY_TOPIC"
            | "REAL_TOPIC"
            | "REAL_QID"
            | "CONSUME_START_TIME"
    )
}

/// Decodes a consumed message: a CloudEvent when it is one, else wrapped (with a
/// `decodeerror` extension when it claimed to be one but was not valid).
pub fn event_of(m: &MessageExt, message_type: &str) -> evmesh_core::Event {
    let props: Vec<(&str, &str)> = m
        .properties()
        .iter()
        .filter(|(k, _)| !system_property(k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let uniq = m
        .properties()
        .get(&CheetahString::from_static_str("UNIQ_KEY"))
        .map(|v| v.as_str());
    let keys = m
        .properties()
        .get(&CheetahString::from_static_str("KEYS"))
        .map(|v| v.as_str());
    let tags = m
        .properties()
        .get(&CheetahString::from_static_str("TAGS"))
        .map(|v| v.as_str());
    let body = m.body();
    let body = body.as_deref().unwrap_or_default();
    let inm = InMessage {
        topic: m.topic().as_str(),
        broker: m.broker_name(),
        queue: m.queue_id(),
        offset: m.queue_offset(),
        id: uniq.unwrap_or(m.msg_id().as_str()),
        born_ms: m.born_timestamp(),
        keys,
        tags,
        properties: &props,
        body,
    };
    match binding::decode(&inm) {
        Ok(binding::Decoded::CloudEvent(e)) => *e,
        Ok(binding::Decoded::Plain) => binding::wrap_plain(&inm, message_type),
        Err(err) => {
            tracing::warn!(topic = %inm.topic, queue = inm.queue, offset = inm.offset, error = %err, "message is not a valid CloudEvent; wrapping it");
            let mut e = binding::wrap_plain(&inm, message_type);
            e.set_extension(
                "decodeerror",
                evmesh_core::ExtValue::String(err.to_string()),
            );
            e
        }
    }
}

/// The queue a consumed message came from.
pub fn queue_of(m: &MessageExt) -> MessageQueue {
    MessageQueue::from_parts(m.topic().clone(), m.broker_name(), m.queue_id())
}

/// A queue's partition number in evmesh: the queue id, plus a slot for the broker group
/// (stable: derived from its name) when a topic spans several broker groups.
pub fn partition_of(mq: &MessageQueue, multi_broker: bool) -> i32 {
    if !multi_broker {
        return mq.queue_id();
    }
    let slot = fnv1a(mq.broker_name().as_bytes()) % 2000;
    (slot as i32) * 1000 + mq.queue_id().rem_euclid(1000)
}

fn fnv1a(b: &[u8]) -> u32 {
    // FNV-1a: a stable hash with no extra dependency (only used to spread broker names).
    let mut h: u32 = 0x811c_9dc5;
    for x in b {
        h ^= u32::from(*x);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Java's `String.hashCode` over UTF-16, as RocketMQ's `SelectMessageQueueByHash` uses, so
/// that evmesh puts a key on the queue a Java producer would.
pub fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The queue for `key` among `queues` (Java's hash-selector rule).
pub fn queue_for_key(queues: &[MessageQueue], key: &str) -> Option<MessageQueue> {
    if queues.is_empty() {
        return None;
    }
    let i = java_hash(key).unsigned_abs() as usize % queues.len();
    queues.get(i).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_java() {
        // "hello".hashCode() in Java.
        assert_eq!(java_hash("hello"), 99_162_322);
        assert_eq!(java_hash(""), 0);
        // Overflowing strings wrap as Java's int does.
        assert_eq!(java_hash("order-123456789"), {
            let mut h: i32 = 0;
            for c in "order-123456789".encode_utf16() {
                h = h.wrapping_mul(31).wrapping_add(i32::from(c));
            }
            h
        });
    }

    #[test]
    fn partitions_are_queue_ids_on_one_broker_and_stable_on_many() {
        let q = MessageQueue::from_parts("t", "broker-a", 3);
        assert_eq!(partition_of(&q, false), 3);
        let a = partition_of(&q, true);
        assert_eq!(a, partition_of(&q, true));
        assert_eq!(a % 1000, 3);
        let other = MessageQueue::from_parts("t", "broker-b", 3);
        assert_ne!(a, partition_of(&other, true));
    }
}
