//! Consumption with per-event acknowledgement, through an in-memory partition that records
//! what was acknowledged (the shape RabbitMQ, NATS JetStream, Redis Streams and MQTT adapters
//! take), and a subscription pushing to a live target.

use super::*;
use evmesh_core::sink::{Delivered, SinkError};
use evmesh_store::{
    AppendAck, Assignment, CursorState, PartitionLog, Progress, ReadBatch, StoreError, StoredEvent,
};
use futures_util::future::BoxFuture;
use std::collections::BTreeSet;
use tokio::sync::mpsc;

/// One partition whose broker acknowledges each message on its own.
struct PerEventPartition {
    events: Vec<StoredEvent>,
    end: watch::Sender<u64>,
    acked: Mutex<Vec<u64>>,
}

impl PartitionLog for PerEventPartition {
    fn read(&self, from: u64, max: usize) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        let events: Vec<StoredEvent> = self
            .events
            .iter()
            .filter(|e| e.offset >= from)
            .take(max)
            .cloned()
            .collect();
        let next = events.last().map_or(from, |e| e.offset + 1);
        Box::pin(async move { Ok(ReadBatch { events, next }) })
    }
    fn watch_end(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }
    fn progress(&self) -> Progress {
        Progress::PerEvent
    }
    fn load_cursor(&self) -> Result<Option<CursorState>, StoreError> {
        Ok(Some(CursorState::default()))
    }
    fn save_cursor(&self, _state: &CursorState) -> Result<(), StoreError> {
        Ok(())
    }
    fn ack(&self, offset: u64) -> Result<(), StoreError> {
        self.acked
            .lock()
            .map_err(|_| StoreError::Closed)?
            .push(offset);
        Ok(())
    }
}

/// A log whose topics are read through one per-event partition.
struct PerEventLog {
    part: Arc<PerEventPartition>,
    /// Held: a dropped sender means the partition was taken away.
    revoked: watch::Sender<bool>,
}

impl EventLog for PerEventLog {
    fn append(&self, _: &str, _: &[Event]) -> BoxFuture<'static, Result<AppendAck, StoreError>> {
        Box::pin(async { Err(StoreError::Unsupported("read-only".into())) })
    }
    fn partitions(&self, _: &str) -> BoxFuture<'static, Result<Vec<i32>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn read(
        &self,
        _: &str,
        _: i32,
        _: u64,
        _: usize,
    ) -> BoxFuture<'static, Result<ReadBatch, StoreError>> {
        Box::pin(async { Ok(ReadBatch::default()) })
    }
    fn consume(
        &self,
        _: &str,
        topic: &str,
        _: StartPosition,
    ) -> BoxFuture<'static, Result<Consumption, StoreError>> {
        let (tx, rx) = mpsc::unbounded_channel();
        if !topic.starts_with("__") {
            let _ = tx.send(Assignment {
                partition: 0,
                log: self.part.clone(),
                revoked: self.revoked.subscribe(),
            });
        }
        Box::pin(async move {
            Ok(Consumption::Group(GroupConsumption {
                assignments: rx,
                membership: Box::new(tx),
            }))
        })
    }
    fn delete_topic(&self, _: &str) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn topics(&self) -> BoxFuture<'static, Result<Vec<String>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn close(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    fn describe(&self) -> String {
        "per-event test log".into()
    }
}

/// Fails the first attempt of odd offsets (so events finish out of order), records the rest.
struct Flaky {
    seen: Mutex<BTreeSet<String>>,
    delivered: Mutex<Vec<String>>,
}

impl Sink for Flaky {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        Box::pin(async move {
            let first = self
                .seen
                .lock()
                .map(|mut s| s.insert(event.id.clone()))
                .unwrap_or(false);
            let odd = event.id.ends_with(['1', '3', '5', '7', '9']);
            if first && odd {
                return Err(SinkError::retryable("first attempt fails"));
            }
            if let Ok(mut d) = self.delivered.lock() {
                d.push(event.id.clone());
            }
            Ok(Delivered::default())
        })
    }
    fn describe(&self) -> String {
        "flaky".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_event_partitions_acknowledge_each_finished_event_once() {
    let events: Vec<StoredEvent> = (0..20u64)
        .map(|i| StoredEvent {
            offset: i,
            event: Arc::new(Event::new(format!("e{i}"), "/t", "t")),
        })
        .collect();
    let part = Arc::new(PerEventPartition {
        events,
        end: watch::channel(20).0,
        acked: Mutex::new(Vec::new()),
    });
    let log: Arc<dyn EventLog> = Arc::new(PerEventLog {
        part: part.clone(),
        revoked: watch::channel(false).0,
    });
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state: Arc<dyn StateStore> =
        Arc::new(evmesh_store::StateDir::open(dir.path()).unwrap_or_else(|e| panic!("{e}")));
    let nobody: SinkFactory = Arc::new(|_, _| Err("no sinks from config here".into()));
    let sup = Supervisor::new(log, state, nobody, None, Duration::from_secs(5), None);
    let sink = Arc::new(Flaky {
        seen: Mutex::new(BTreeSet::new()),
        delivered: Mutex::new(Vec::new()),
    });
    let mut sub = SubscriptionConfig::new("s", "t", ComponentSpec::new("live"));
    sub.delivery = Some(DeliverySpec {
        backoff_delay: evmesh_core::duration::IsoDuration(Duration::from_millis(5)),
        ..Default::default()
    });
    sup.start_with_sink(sub, Origin::Api, sink.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while part.acked.lock().map(|a| a.len()).unwrap_or(0) < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sup.shutdown().await;
    let acked = part.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let unique: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(acked.len(), 20, "each event acknowledged once: {acked:?}");
    assert_eq!(unique, (0..20).collect());
    // Acknowledged as each finished, not in offset order: the odd ones were retried.
    assert_ne!(acked, (0..20).collect::<Vec<u64>>());
    assert_eq!(sink.delivered.lock().map(|d| d.len()).unwrap_or(0), 20);
}
