//! The RocketMQ client as evmesh uses it: one client runtime for the process, one started
//! producer per name server list shared by every sink and the store, and the conversions
//! between the binding's values and the client's messages.

use crate::binding::{self, InMessage, OutMessage};
use crate::RocketMqError;
use cheetah_string::CheetahString;
use rocketmq_client_rust::{ClientRuntime, ClientRuntimeConfig, DefaultMQProducer, SendResult};
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

/// One RocketMQ cluster as evmesh's producers see it (per name server list and producer
/// group, shared by every sink and the store of the process): a started producer, the queues
/// of each topic, and one sender per queue that batches.
///
/// Sends to one queue go out in order, in batches: every message waiting when the previous
/// batch left goes in the next one (up to [`BATCH_MESSAGES`] or [`BATCH_BYTES`]), so concurrent
/// publishers and deliveries share round trips (the broker takes a batch in about the time of
/// one message) and one queue keeps the order its messages were handed over in.
pub struct Cluster {
    producer: Arc<DefaultMQProducer>,
    /// Route look-ups and topic creation (these calls take `&mut`).
    meta: tokio::sync::Mutex<DefaultMQProducer>,
    routes: std::sync::Mutex<HashMap<String, (std::time::Instant, Vec<MessageQueue>)>>,
    senders: std::sync::Mutex<HashMap<MessageQueue, tokio::sync::mpsc::UnboundedSender<Pending>>>,
    rr: std::sync::atomic::AtomicUsize,
}

/// Most messages in one batch.
pub const BATCH_MESSAGES: usize = 256;
/// Most body bytes in one batch (RocketMQ's default limit is 4 MiB for the whole batch).
pub const BATCH_BYTES: usize = 1024 * 1024;
/// How long a cached queue list is used before it is looked up again.
const ROUTE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

struct Pending {
    msg: Message,
    size: usize,
    timeout_ms: u64,
    done: tokio::sync::oneshot::Sender<Result<SendResult, rocketmq_client_rust::ClientError>>,
}

impl Cluster {
    /// The shared handle for `namesrv` and producer `group`, started on first use.
    pub async fn get(namesrv: &str, group: &str) -> Result<Arc<Cluster>, RocketMqError> {
        type Clusters = tokio::sync::Mutex<HashMap<(String, String), Arc<Cluster>>>;
        static CLUSTERS: OnceLock<Clusters> = OnceLock::new();
        let clusters = CLUSTERS.get_or_init(Default::default);
        let mut map = clusters.lock().await;
        let key = (namesrv.to_owned(), group.to_owned());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let rt = runtime()?;
        let start = |group: String| {
            let rt = rt.clone();
            async move {
                let mut p = DefaultMQProducer::builder(rt)
                    .producer_group(group)
                    .name_server_addr(namesrv)
                    // evmesh retries through each subscription's policy; one retry inside
                    // the client covers a broker that just went away.
                    .retry_times_when_send_failed(1)
                    .build();
                p.start().await.map_err(|e| {
                    RocketMqError::Client(format!(
                        "starting a producer for {namesrv}: {}",
                        describe(&e)
                    ))
                })?;
                Ok::<_, RocketMqError>(p)
            }
        };
        let producer = start(group.to_owned()).await?;
        let meta = start(format!("{group}_meta")).await?;
        let c = Arc::new(Cluster {
            producer: Arc::new(producer),
            meta: tokio::sync::Mutex::new(meta),
            routes: Default::default(),
            senders: Default::default(),
            rr: Default::default(),
        });
        map.insert(key, c.clone());
        Ok(c)
    }

    /// The queues messages of `topic` can be sent to (cached for a while); empty when the
    /// topic has no route.
    pub async fn queues(&self, topic: &str) -> Vec<MessageQueue> {
        if let Ok(r) = self.routes.lock() {
            if let Some((at, q)) = r.get(topic) {
                if at.elapsed() < ROUTE_TTL && !q.is_empty() {
                    return q.clone();
                }
            }
        }
        let q = self
            .meta
            .lock()
            .await
            .fetch_publish_message_queues(topic)
            .await
            .unwrap_or_default();
        if !q.is_empty() {
            if let Ok(mut r) = self.routes.lock() {
                r.insert(topic.to_owned(), (std::time::Instant::now(), q.clone()));
            }
        }
        q
    }

    /// Forgets the cached queues of `topic` (after a failed send: it may have moved).
    pub fn forget(&self, topic: &str) {
        if let Ok(mut r) = self.routes.lock() {
            r.remove(topic);
        }
    }

    /// Creates (or updates) `topic` with `queues` queues through the topic RocketMQ creates
    /// topics from (`TBW102`).
    pub async fn create_topic(&self, topic: &str, queues: i32) -> Result<(), String> {
        self.meta
            .lock()
            .await
            .create_topic("TBW102", topic, queues, HashMap::new())
            .await
            .map_err(|e| describe(&e))
    }

    /// The next queue of `queues` in turn.
    pub fn round_robin(&self, queues: &[MessageQueue]) -> Option<MessageQueue> {
        if queues.is_empty() {
            return None;
        }
        let i = self.rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % queues.len();
        queues.get(i).cloned()
    }

    /// Sends `msg` on its own, the queue chosen by the client: for a topic with no route yet
    /// (the client asks for one from the topic RocketMQ creates topics from, so a broker with
    /// `autoCreateTopicEnable` creates it). The route is looked up again on the next send.
    pub async fn send_unrouted(
        &self,
        msg: Message,
        timeout: std::time::Duration,
    ) -> Result<Option<SendResult>, rocketmq_client_rust::ClientError> {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let topic = msg.topic().as_str().to_owned();
        let r = self.producer.send_with_timeout(msg, ms).await;
        self.forget(&topic);
        r
    }

    /// Sends `msg` to `mq` through that queue's batching sender; resolves with the broker's
    /// answer for the batch it went in.
    pub async fn send(
        &self,
        mq: MessageQueue,
        msg: Message,
        size: usize,
        timeout: std::time::Duration,
    ) -> Result<SendResult, rocketmq_client_rust::ClientError> {
        self.submit(mq, msg, size, timeout)?.await
    }

    /// Hands `msg` to `mq`'s sender now (messages handed to one queue go out in the order
    /// they were handed over); the returned future resolves with the broker's answer.
    pub fn submit(
        &self,
        mq: MessageQueue,
        msg: Message,
        size: usize,
        timeout: std::time::Duration,
    ) -> Result<
        impl std::future::Future<Output = Result<SendResult, rocketmq_client_rust::ClientError>>,
        rocketmq_client_rust::ClientError,
    > {
        use rocketmq_client_rust::ClientError;
        let stopped = || ClientError::service_failed("the queue's sender stopped");
        let (done, rx) = tokio::sync::oneshot::channel();
        let pending = Pending {
            msg,
            size,
            timeout_ms: u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            done,
        };
        let tx = {
            let mut senders = self.senders.lock().map_err(|_| stopped())?;
            senders
                .entry(mq.clone())
                .or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(send_loop(self.producer.clone(), mq.clone(), rx));
                    tx
                })
                .clone()
        };
        tx.send(pending).map_err(|_| stopped())?;
        Ok(async move { rx.await.map_err(|_| stopped())? })
    }
}

/// One queue's sender: takes what is waiting, sends it as one batch (or one message), hands
/// every waiter the answer, repeats.
async fn send_loop(
    producer: Arc<DefaultMQProducer>,
    mq: MessageQueue,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>,
) {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.size;
        let mut timeout_ms = first.timeout_ms;
        let mut batch = vec![first];
        while batch.len() < BATCH_MESSAGES {
            match rx.try_recv() {
                Ok(p) if bytes + p.size <= BATCH_BYTES => {
                    bytes += p.size;
                    timeout_ms = timeout_ms.min(p.timeout_ms);
                    batch.push(p);
                }
                Ok(p) => {
                    carry = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        let (msgs, waiters): (Vec<Message>, Vec<_>) =
            batch.into_iter().map(|p| (p.msg, p.done)).unzip();
        let result = if msgs.len() == 1 {
            let mut msgs = msgs;
            match msgs.pop() {
                Some(m) => producer
                    .send_to_queue_with_timeout(m, mq.clone(), timeout_ms)
                    .await
                    .and_then(|r| {
                        r.ok_or_else(|| {
                            rocketmq_client_rust::ClientError::illegal_argument("no send result")
                        })
                    }),
                None => continue,
            }
        } else {
            producer
                .send_batch_to_queue_with_timeout(msgs, mq.clone(), timeout_ms)
                .await
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
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
