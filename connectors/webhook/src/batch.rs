//! `mode: batch`: events that the subscription's streams deliver at about the same time are
//! gathered (up to `maxBatch`, the first waiting at most `linger` for more) and posted as one
//! `application/cloudevents-batch+json` request. Each event's delivery attempt waits for its
//! batch's answer, which counts for every event in it: retries, backoff and dead-lettering stay
//! per event, as in the other modes. Up to 8 batches are in flight at once.

use crate::WebhookSink;
use evmesh_core::sink::{Delivered, Sink, SinkError, SinkHealth};
use evmesh_core::Event;
use futures_util::future::BoxFuture;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

type Pending = (Event, Duration, oneshot::Sender<Result<(), SinkError>>);

/// Batches in flight at once.
const IN_FLIGHT: usize = 8;

pub(crate) struct BatchingSink {
    inner: Arc<WebhookSink>,
    max: usize,
    linger: Duration,
    /// Started with the first delivery (inside the runtime).
    tx: OnceLock<mpsc::Sender<Pending>>,
}

impl BatchingSink {
    pub(crate) fn new(inner: Arc<WebhookSink>, max: usize, linger: Duration) -> BatchingSink {
        BatchingSink {
            inner,
            max: max.max(1),
            linger,
            tx: OnceLock::new(),
        }
    }

    fn queue(&self) -> &mpsc::Sender<Pending> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.max * IN_FLIGHT);
            tokio::spawn(gather(self.inner.clone(), rx, self.max, self.linger));
            tx
        })
    }
}

async fn gather(
    sink: Arc<WebhookSink>,
    mut rx: mpsc::Receiver<Pending>,
    max: usize,
    linger: Duration,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                _ => break,
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let sink = sink.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let timeout = batch
                .iter()
                .map(|(_, t, _)| *t)
                .max()
                .unwrap_or(Duration::from_secs(10));
            let (events, waiters): (Vec<Event>, Vec<_>) =
                batch.into_iter().map(|(e, _, w)| (e, w)).unzip();
            let r = sink.attempt_batch(&events, timeout).await;
            for w in waiters {
                let _ = w.send(r.clone());
            }
        });
    }
}

impl Sink for BatchingSink {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.queue()
                .send((event.clone(), timeout, tx))
                .await
                .map_err(|_| SinkError::retryable("the webhook batcher has stopped"))?;
            match rx.await {
                Ok(r) => r.map(|()| Delivered { reply: None }),
                Err(_) => Err(SinkError::retryable(
                    "the batch was dropped before its answer",
                )),
            }
        })
    }

    fn health(&self) -> SinkHealth {
        self.inner.health()
    }

    fn describe(&self) -> String {
        format!("{} (batches of up to {})", self.inner.describe(), self.max)
    }
}
