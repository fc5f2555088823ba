//! The hand-off between a broker consumer group's fetch loop and the reader of one assigned
//! partition, shared by the stores that consume through a broker's groups (Kafka, RocketMQ).

use crate::{ReadBatch, StoredEvent};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::watch;

/// Fetched events of one partition waiting for its reader, in offset order, with the
/// back-pressure state of the fetch: the fetch loop pushes, the reader takes; fetching is
/// paused past `high` buffered events and resumed once the reader brings it below half.
pub struct FetchBuffer {
    events: Mutex<VecDeque<StoredEvent>>,
    end: watch::Sender<u64>,
    high: usize,
    paused: AtomicBool,
    revoked: watch::Sender<bool>,
}

impl FetchBuffer {
    /// An empty buffer whose next expected offset is `next`.
    pub fn new(next: u64, high: usize) -> Self {
        FetchBuffer {
            events: Mutex::new(VecDeque::new()),
            end: watch::channel(next).0,
            high: high.max(2),
            paused: AtomicBool::new(false),
            revoked: watch::channel(false).0,
        }
    }

    /// The offset the next pushed event should have (one past the newest pushed).
    pub fn expected(&self) -> u64 {
        *self.end.borrow()
    }

    /// Buffers an event; true when the fetch of this partition should pause now (said once
    /// per pause).
    pub fn push(&self, event: StoredEvent) -> bool {
        let next = event.offset + 1;
        let len = match self.events.lock() {
            Ok(mut b) => {
                b.push_back(event);
                b.len()
            }
            Err(_) => 0,
        };
        self.end.send_replace(next);
        len >= self.high && !self.paused.swap(true, Ordering::SeqCst)
    }

    /// Up to `max` buffered events from `from` (older ones are dropped), and whether the
    /// fetch should resume now (said once per pause, never after the partition was revoked).
    pub fn take(&self, from: u64, max: usize) -> (ReadBatch, bool) {
        let mut events = Vec::new();
        let mut resume = false;
        if let Ok(mut b) = self.events.lock() {
            while b.front().is_some_and(|e| e.offset < from) {
                b.pop_front();
            }
            while events.len() < max {
                match b.pop_front() {
                    Some(e) => events.push(e),
                    None => break,
                }
            }
            resume = b.len() < self.high / 2
                && !*self.revoked.borrow()
                && self.paused.swap(false, Ordering::SeqCst);
        }
        let next = events.last().map_or(from, |e| e.offset + 1);
        (ReadBatch { events, next }, resume)
    }

    /// One past the newest buffered offset, observable for changes.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// The group took the partition away.
    pub fn revoke(&self) {
        self.revoked.send_replace(true);
    }

    /// Turns true when the partition is revoked.
    pub fn watch_revoked(&self) -> watch::Receiver<bool> {
        self.revoked.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(offset: u64) -> StoredEvent {
        StoredEvent {
            offset,
            event: std::sync::Arc::new(evmesh_core::Event::new(format!("e{offset}"), "/t", "t")),
        }
    }

    #[test]
    fn pauses_once_at_the_mark_and_resumes_once_below_half() {
        let b = FetchBuffer::new(10, 4);
        assert_eq!(b.expected(), 10);
        assert!(!b.push(ev(10)));
        assert!(!b.push(ev(11)));
        assert!(!b.push(ev(12)));
        assert!(b.push(ev(13)), "the fourth event reaches the mark");
        assert!(!b.push(ev(14)), "a pause is said once");
        assert_eq!(b.expected(), 15);
        assert_eq!(*b.watch_end().borrow(), 15);
        let (batch, resume) = b.take(11, 2);
        let offsets: Vec<u64> = batch.events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![11, 12], "events before `from` are dropped");
        assert_eq!(batch.next, 13);
        assert!(!resume, "two left is not below half of four");
        let (batch, resume) = b.take(13, 1);
        assert_eq!(batch.next, 14);
        assert!(resume);
        let (batch, resume) = b.take(14, 10);
        assert_eq!(batch.events.len(), 1);
        assert!(!resume, "a resume is said once");
        let (batch, _) = b.take(15, 10);
        assert!(batch.events.is_empty());
        assert_eq!(batch.next, 15);
    }

    #[test]
    fn a_revoked_partition_is_never_resumed() {
        let b = FetchBuffer::new(0, 2);
        let revoked = b.watch_revoked();
        b.push(ev(0));
        assert!(b.push(ev(1)));
        b.revoke();
        assert!(revoked.has_changed().unwrap_or(false));
        let (batch, resume) = b.take(0, 10);
        assert_eq!(batch.events.len(), 2);
        assert!(!resume);
    }
}
