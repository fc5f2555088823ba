//! An attempt that ends without a verdict (a sink that panics drops the event's ack handle) is
//! retried per the subscription's policy, on the real embedded store, in-process.
#![allow(clippy::unwrap_used)]

use evmesh_core::component::ComponentSpec;
use evmesh_core::config::SubscriptionConfig;
use evmesh_core::sink::{Delivered, Sink, SinkError};
use evmesh_core::Event;
use evmesh_delivery::Supervisor;
use evmesh_log::{EmbeddedLog, FsyncPolicy, LogOptions, MAX_RECORD_BYTES};
use evmesh_router::Origin;
use evmesh_store::{EventLog, StateDir, StateStore};
use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Panics on its first `panics` calls, then delivers.
struct Panicky {
    panics: usize,
    calls: Arc<AtomicUsize>,
    delivered: Arc<AtomicUsize>,
}

impl Sink for Panicky {
    fn deliver<'a>(
        &'a self,
        _event: &'a Event,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.panics {
                panic!("the sink broke (on purpose, call {n})");
            }
            self.delivered.fetch_add(1, Ordering::SeqCst);
            Ok(Delivered::default())
        })
    }

    fn describe(&self) -> String {
        "panicky".into()
    }
}

async fn run(panics: usize, retry: u32) -> (usize, usize, Arc<dyn EventLog>, Arc<Supervisor>) {
    let dir = tempfile::tempdir().unwrap();
    let state: Arc<dyn StateStore> = Arc::new(StateDir::open(dir.path()).unwrap());
    let store: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(
            LogOptions {
                data_dir: dir.path().to_owned(),
                fsync: FsyncPolicy::Never,
                fsync_interval: Duration::from_millis(10),
                segment_bytes: 1 << 20,
                retention: None,
                max_record_bytes: MAX_RECORD_BYTES,
            },
            state.as_ref(),
        )
        .unwrap(),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let (c2, d2) = (calls.clone(), delivered.clone());
    let factory: evmesh_delivery::SinkFactory = Arc::new(move |_, _| {
        Ok(Arc::new(Panicky {
            panics,
            calls: c2.clone(),
            delivered: d2.clone(),
        }) as Arc<dyn Sink>)
    });
    let sup = Supervisor::new(
        store.clone(),
        state,
        factory,
        None,
        Duration::from_secs(5),
        None,
    );
    let mut sub = SubscriptionConfig::new("s", "t", ComponentSpec::webhook("http://127.0.0.1:1/"));
    sub.delivery = Some(evmesh_core::config::DeliverySpec {
        retry,
        backoff_delay: evmesh_core::duration::IsoDuration(Duration::from_millis(10)),
        ..Default::default()
    });
    sup.start(sub, Origin::Config).await.unwrap();
    store
        .append("t", &[Event::new("e1", "/t", "t")])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let done = delivered.load(Ordering::SeqCst) == 1
            || !sup.dead_letters("s").await.unwrap().is_empty();
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::mem::forget(dir); // the store still writes in the background
    (
        calls.load(Ordering::SeqCst),
        delivered.load(Ordering::SeqCst),
        store,
        sup,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_lost_to_a_panicking_sink_is_dispatched_again() {
    let (calls, delivered, _, sup) = run(2, 5).await;
    assert_eq!(delivered, 1, "the event was never dispatched again");
    assert_eq!(calls, 3);
    assert!(sup.dead_letters("s").await.unwrap().is_empty());
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_attempts_count_against_the_retry_budget() {
    let (calls, delivered, _, sup) = run(usize::MAX, 2).await;
    assert_eq!(delivered, 0);
    assert_eq!(calls, 3, "1 attempt + 2 retries");
    let dead = sup.dead_letters("s").await.unwrap();
    assert_eq!(dead.len(), 1);
    sup.shutdown().await;
}
