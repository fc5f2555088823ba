//! Shared reading of a topic: one reader per topic reads each event once, asks the topic's
//! [`TopicIndex`] which subscriptions match, and hands each *in-sync* subscription only its own
//! events together with the offset the batch ends at (so its cursor moves past what it was not
//! sent).
//!
//! A subscription starts in catch-up mode, reading the log itself with its own filter. When its
//! read position reaches the reader's (checked under the fan-out lock, the same lock the reader
//! holds when it advances), it joins. The reader never waits for anyone: if a subscription's
//! channel is full, or it joined after the index the batch was matched with, it is dropped back
//! to catch-up mode and reads the missed range itself. So one slow subscription never holds back
//! another, and none ever misses an event.

use evmesh_router::{Route, TopicIndex};
use evmesh_store::{LocalTopic, StoredEvent};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Events for one subscription, and where the batch they came from ends.
pub struct Batch {
    pub events: Vec<StoredEvent>,
    pub next: u64,
}

struct Member {
    route: Arc<Route>,
    tx: mpsc::Sender<Batch>,
    in_sync: Arc<AtomicBool>,
    /// The index generation that first included this member.
    gen: u64,
    /// Where the last batch sent to it ended, and when it was sent.
    sent: u64,
    sent_at: Instant,
}

impl Member {
    /// Sends a batch; false if the member's channel is full (it then reads for itself).
    fn send(&mut self, events: Vec<StoredEvent>, next: u64, now: Instant) -> bool {
        let ok = self.tx.try_send(Batch { events, next }).is_ok();
        if ok {
            self.sent = next;
            self.sent_at = now;
        }
        ok
    }

    /// A batch with no events for this member only moves its cursor: it is sent when the
    /// cursor is `PROGRESS_EVERY` offsets or `PROGRESS_AFTER` behind (or the reader idles),
    /// not on every read, so 1,000 subscriptions of which one matches do not wake 1,000 tasks
    /// per event.
    fn progress_due(&self, next: u64, now: Instant) -> bool {
        next >= self.sent.saturating_add(PROGRESS_EVERY)
            || now.saturating_duration_since(self.sent_at) >= PROGRESS_AFTER
    }
}

struct State {
    pos: u64,
    members: HashMap<String, Member>,
    index: Arc<TopicIndex>,
    /// Member name of each route in `index`.
    names: Arc<Vec<String>>,
    gen: u64,
}

pub struct TopicFanout {
    topic: String,
    state: Mutex<State>,
}

/// A subscription's end of the fan-out.
pub struct Membership {
    pub rx: mpsc::Receiver<Batch>,
    pub in_sync: Arc<AtomicBool>,
    fanout: Arc<TopicFanout>,
    name: String,
}

impl Membership {
    /// Joins the shared reader if `read_pos` is exactly where it is.
    pub fn try_join(&self, read_pos: u64) -> bool {
        let Ok(st) = self.fanout.state.lock() else {
            return false;
        };
        if st.pos == read_pos && st.members.contains_key(&self.name) {
            self.in_sync.store(true, Ordering::SeqCst);
            tracing::debug!(subscription = %self.name, offset = read_pos, "joined the shared topic reader");
            true
        } else {
            false
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.fanout.unregister(&self.name);
    }
}

/// Batches queued per subscription before it is dropped to catch-up mode.
const CHANNEL: usize = 16;
const READ_BATCH: usize = 512;
const PROGRESS_EVERY: u64 = 4096;
const PROGRESS_AFTER: Duration = Duration::from_millis(100);

impl TopicFanout {
    fn rebuild(st: &mut State) {
        let mut names: Vec<String> = st.members.keys().cloned().collect();
        names.sort();
        let routes = names
            .iter()
            .filter_map(|n| st.members.get(n).map(|m| m.route.clone()))
            .collect();
        st.gen += 1;
        st.index = Arc::new(TopicIndex::build(routes));
        st.names = Arc::new(names);
    }

    pub fn register(self: &Arc<Self>, name: &str, route: Arc<Route>) -> Membership {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let in_sync = Arc::new(AtomicBool::new(false));
        if let Ok(mut st) = self.state.lock() {
            let gen = st.gen + 1;
            let sent = st.pos;
            st.members.insert(
                name.to_owned(),
                Member {
                    route,
                    tx,
                    in_sync: in_sync.clone(),
                    gen,
                    sent,
                    sent_at: Instant::now(),
                },
            );
            Self::rebuild(&mut st);
        }
        Membership {
            rx,
            in_sync,
            fanout: self.clone(),
            name: name.to_owned(),
        }
    }

    fn unregister(&self, name: &str) {
        if let Ok(mut st) = self.state.lock() {
            if st.members.remove(name).is_some() {
                Self::rebuild(&mut st);
            }
        }
    }

    /// Reads the topic once for everyone in sync, until `stop`.
    pub async fn run(self: Arc<Self>, local: Arc<dyn LocalTopic>, mut stop: watch::Receiver<bool>) {
        let mut end_rx = local.watch_end();
        let mut matched: Vec<usize> = Vec::new();
        loop {
            if *stop.borrow() {
                return;
            }
            let end = *end_rx.borrow_and_update();
            let snapshot = {
                let Ok(mut st) = self.state.lock() else {
                    return;
                };
                if st.pos < end
                    && !st
                        .members
                        .values()
                        .any(|m| m.in_sync.load(Ordering::SeqCst))
                {
                    // Nobody to read for: members catch up on their own.
                    st.pos = end;
                }
                if st.pos >= end {
                    // Idle: members still owed the progress of batches without their events
                    // get it now.
                    let (pos, now) = (st.pos, Instant::now());
                    for m in st.members.values_mut() {
                        if m.in_sync.load(Ordering::SeqCst)
                            && m.sent < pos
                            && !m.send(Vec::new(), pos, now)
                        {
                            m.in_sync.store(false, Ordering::SeqCst);
                        }
                    }
                }
                (st.pos < end).then(|| (st.pos, st.index.clone(), st.names.clone(), st.gen))
            };
            let Some((pos, index, names, gen)) = snapshot else {
                tokio::select! {
                    r = end_rx.changed() => if r.is_err() { return },
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            };
            let batch = match local.read(pos, READ_BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(topic = %self.topic, error = %e, "shared read failed; members fall back to their own reads");
                    if let Ok(st) = self.state.lock() {
                        for m in st.members.values() {
                            m.in_sync.store(false, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut per: HashMap<usize, Vec<StoredEvent>> = HashMap::new();
            let tracing = evmesh_telemetry::enabled();
            for se in &batch.events {
                matched.clear();
                index.matching(&se.event, &mut matched);
                let parent = tracing
                    .then(|| crate::attempt::sampled_parent(&se.event))
                    .flatten();
                if let Some(parent) = parent {
                    // Each subscription's filters, one span each, on traced events.
                    for route in index.routes() {
                        let mut trace = |run| {
                            crate::attempt::step_run_span(route.name(), &se.event, &parent, run)
                        };
                        route.trace_filters(&se.event, &mut trace);
                    }
                }
                for &i in &matched {
                    per.entry(i).or_default().push(se.clone());
                }
            }
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            if st.pos != pos {
                continue; // skipped ahead meanwhile; nothing was sent
            }
            let mut by_name: HashMap<&str, Vec<StoredEvent>> = HashMap::new();
            for (i, evs) in per {
                if let Some(n) = names.get(i) {
                    by_name.insert(n.as_str(), evs);
                }
            }
            let now = Instant::now();
            for (name, m) in st.members.iter_mut() {
                if !m.in_sync.load(Ordering::SeqCst) {
                    continue;
                }
                if m.gen > gen {
                    m.in_sync.store(false, Ordering::SeqCst);
                    continue;
                }
                let events = by_name.remove(name.as_str()).unwrap_or_default();
                if events.is_empty() && !m.progress_due(batch.next, now) {
                    continue;
                }
                if !m.send(events, batch.next, now) {
                    m.in_sync.store(false, Ordering::SeqCst);
                    tracing::debug!(subscription = %name, offset = pos, "fell behind the shared reader; catching up on its own");
                }
            }
            st.pos = batch.next.max(pos);
        }
    }
}

/// The fan-outs of every topic.
#[derive(Default)]
pub struct Fanouts {
    map: Mutex<HashMap<String, Arc<TopicFanout>>>,
}

impl Fanouts {
    /// The topic's fan-out, starting its reader on first use.
    pub fn get(
        &self,
        topic: &str,
        local: &Arc<dyn LocalTopic>,
        stop: &watch::Receiver<bool>,
    ) -> Option<Arc<TopicFanout>> {
        let mut map = self.map.lock().ok()?;
        if let Some(f) = map.get(topic) {
            return Some(f.clone());
        }
        let f = Arc::new(TopicFanout {
            topic: topic.to_owned(),
            state: Mutex::new(State {
                pos: *local.watch_end().borrow(),
                members: HashMap::new(),
                index: Arc::new(TopicIndex::default()),
                names: Arc::new(Vec::new()),
                gen: 0,
            }),
        });
        tokio::spawn(f.clone().run(local.clone(), stop.clone()));
        map.insert(topic.to_owned(), f.clone());
        Some(f)
    }
}
