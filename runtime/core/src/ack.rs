//! Acknowledgements travel with events: whoever finishes with an event resolves its handle, and
//! only then may the store move the subscription's cursor past it.

use tokio_free::Sender;

/// What became of one event for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// The sink accepted it (and any reply was stored).
    Delivered,
    /// Handed to the dead-letter sink or kept in the dead-letter list.
    DeadLettered,
    /// Filtered out: nothing to deliver.
    Skipped,
    /// Not finished (shutdown): deliver again after restart.
    Retry,
}

/// The handle carried with an event in flight. Dropping it unresolved counts as `Retry`, so an
/// event can never be acknowledged by accident.
pub struct AckHandle {
    offset: u64,
    tx: Option<Sender<(u64, AckStatus)>>,
}

impl AckHandle {
    pub fn new(offset: u64, tx: Sender<(u64, AckStatus)>) -> Self {
        AckHandle {
            offset,
            tx: Some(tx),
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn resolve(mut self, status: AckStatus) {
        if let Some(tx) = self.tx.take() {
            tx.send((self.offset, status));
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            tx.send((self.offset, AckStatus::Retry));
        }
    }
}

/// A tiny channel abstraction so that core stays free of a runtime dependency.
pub mod tokio_free {
    use std::sync::{Arc, Mutex};

    type Callback<T> = Arc<dyn Fn(T) + Send + Sync>;

    /// Sends by calling a callback (the delivery crate plugs a tokio channel in here).
    pub struct Sender<T>(Callback<T>);

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            Sender(self.0.clone())
        }
    }

    impl<T: 'static> Sender<T> {
        pub fn new(f: impl Fn(T) + Send + Sync + 'static) -> Self {
            Sender(Arc::new(f))
        }

        pub fn send(&self, v: T) {
            (self.0)(v)
        }
    }

    /// Collects sent values; for tests.
    pub fn collector<T: Send + 'static>() -> (Sender<T>, Arc<Mutex<Vec<T>>>) {
        let store = Arc::new(Mutex::new(Vec::new()));
        let s = store.clone();
        (
            Sender::new(move |v| {
                if let Ok(mut g) = s.lock() {
                    g.push(v)
                }
            }),
            store,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_an_unresolved_handle_means_retry() {
        let (tx, got) = tokio_free::collector();
        drop(AckHandle::new(7, tx.clone()));
        AckHandle::new(8, tx).resolve(AckStatus::Delivered);
        let got = got.lock().unwrap();
        assert_eq!(*got, vec![(7, AckStatus::Retry), (8, AckStatus::Delivered)]);
    }
}
