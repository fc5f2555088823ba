//! One stream: a partition of a topic as one subscription reads it. It reads ahead, hands
//! events to their attempts (never more than `maxInFlight` at once, one at a time per key with
//! `ordering: key`), and records progress: the committed cursor (the lowest offset not yet
//! finished, persisted every 100 ms, on change, and at shutdown) or, for per-event brokers, an
//! acknowledgement per finished event.

use crate::attempt::deliver;
use crate::{backoff_delay, fanout, Ctx, CursorBoard, DeliveryError};
use evmesh_core::ack::{tokio_free, AckHandle, AckStatus};
use evmesh_core::config::{Ordering, StartPosition};
use evmesh_core::Event;
use evmesh_router::Prepared;
use evmesh_store::{CursorState, PartitionLog, Progress, StoredEvent};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// An event handed to the stream's dispatcher, with what the plugin steps made of it.
struct Job {
    se: StoredEvent,
    prep: Option<Prepared>,
}

pub(crate) struct Stream {
    ctx: Arc<Ctx>,
    log: Arc<dyn PartitionLog>,
    /// The topic (and partition) for logs and the cursor board.
    topic: String,
    filtered: bool,
    read_pos: u64,
    /// Offsets handed out and not yet finished (running, ready or queued behind their key),
    /// with their key and when the stream took them in.
    pending: BTreeMap<u64, (Option<String>, Instant)>,
    /// `evmesh_subscription_lag_events` and the oldest pending event's age, set as progress
    /// is recorded.
    gauges: evmesh_metrics::StreamGauges,
    attempts: Arc<Mutex<BTreeMap<u64, u32>>>,
    /// Attempts running now, by offset. Never more than `maxInFlight`.
    running: HashMap<u64, StoredEvent>,
    /// Events free to start as soon as a slot is free.
    ready: VecDeque<Job>,
    key_busy: HashSet<String>,
    key_queue: HashMap<String, VecDeque<Job>>,
    /// Attempts that ended without a verdict (the delivery task panicked or was lost), waiting
    /// for their backoff before they are dispatched again.
    delayed: Vec<(tokio::time::Instant, StoredEvent)>,
    done_tx: mpsc::UnboundedSender<(u64, AckStatus)>,
    done_rx: mpsc::UnboundedReceiver<(u64, AckStatus)>,
    board: CursorBoard,
    saved: Option<CursorState>,
    /// A save handed to the cursor saver and not finished yet (at most one a stream).
    saving: Option<Arc<crate::saver::Pending>>,
    drain_timeout: Duration,
    /// The shared topic reader (the main topic's stream only).
    pub(crate) membership: Option<fanout::Membership>,
}

impl Stream {
    pub(crate) fn open(
        ctx: Arc<Ctx>,
        log: Arc<dyn PartitionLog>,
        topic: String,
        filtered: bool,
        start: StartPosition,
        board: CursorBoard,
        drain_timeout: Duration,
    ) -> Result<Stream, DeliveryError> {
        let name = ctx.route.name().to_owned();
        let (state, fresh) = match log.load_cursor()? {
            Some(s) => (s, false),
            None => {
                let committed = match start {
                    StartPosition::Earliest => 0,
                    StartPosition::Latest => *log.watch_end().borrow(),
                };
                (
                    CursorState {
                        committed,
                        attempts: BTreeMap::new(),
                    },
                    true,
                )
            }
        };
        if fresh {
            log.save_cursor(&state)?;
        }
        let gauges = evmesh_metrics::global().stream(&name, &topic);
        if let Ok(mut b) = board.lock() {
            b.insert((name, topic.clone()), state.committed);
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(Stream {
            gauges,
            ctx,
            log,
            topic,
            filtered,
            read_pos: state.committed,
            pending: BTreeMap::new(),
            attempts: Arc::new(Mutex::new(state.attempts.clone())),
            running: HashMap::new(),
            ready: VecDeque::new(),
            key_busy: HashSet::new(),
            key_queue: HashMap::new(),
            delayed: Vec::new(),
            done_tx,
            done_rx,
            board,
            saved: Some(state),
            saving: None,
            drain_timeout,
            membership: None,
        })
    }

    fn max_in_flight(&self) -> usize {
        self.ctx.route.config.max_in_flight
    }

    fn committed(&self) -> u64 {
        self.pending.keys().next().copied().unwrap_or(self.read_pos)
    }

    /// Whether the stream may take more events in: nothing waits for a slot, a slot is free,
    /// and the read-ahead (events queued behind their key) is bounded.
    fn has_room(&self) -> bool {
        self.ready.is_empty()
            && self.running.len() < self.max_in_flight()
            && self.pending.len() < self.max_in_flight() * 16
    }

    /// The cursor as it stands now, and the lag gauges set from it.
    fn cursor_now(&mut self) -> CursorState {
        let committed = self.committed();
        let lag = match self.log.progress() {
            Progress::Cursor => self.log.watch_end().borrow().saturating_sub(committed),
            Progress::PerEvent => self.pending.len() as u64,
        };
        let oldest = self
            .pending
            .values()
            .next()
            .map(|(_, at)| at.elapsed())
            .unwrap_or_default();
        self.gauges.set(lag, oldest);
        let attempts: BTreeMap<u64, u32> = self
            .attempts
            .lock()
            .map(|a| a.range(committed..).map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        CursorState {
            committed,
            attempts,
        }
    }

    /// A cursor saved (durably): the board that garbage collection reads learns it.
    fn saved(&mut self, state: CursorState) {
        if let Ok(mut b) = self.board.lock() {
            b.insert(
                (self.ctx.route.name().to_owned(), self.topic.clone()),
                state.committed,
            );
        }
        self.saved = Some(state);
    }

    /// The periodic save: handed to the cursor saver's thread (an fsync per save must not
    /// stop the async workers: 1,000 subscriptions would otherwise hold them in fsyncs), at
    /// most one in flight a stream; a change made meanwhile is saved on a later tick.
    fn persist(&mut self) {
        if let Some(p) = &self.saving {
            match p.result() {
                None => {
                    self.cursor_now(); // the gauges still move
                    return;
                }
                Some(Ok(state)) => {
                    self.saving = None;
                    self.saved(state);
                }
                Some(Err(e)) => {
                    self.saving = None;
                    tracing::error!(subscription = %self.ctx.route.name(), error = %e, "could not persist the cursor");
                }
            }
        }
        let state = self.cursor_now();
        if self.saved.as_ref() == Some(&state) {
            return;
        }
        self.saving = Some(crate::saver::submit(self.log.clone(), state));
    }

    /// The last save, at shutdown: waits for a save in flight (so it cannot land after this
    /// one), then saves on this thread.
    fn persist_final(&mut self) {
        if let Some(p) = self.saving.take() {
            if let Some(Ok(state)) = p.wait(Duration::from_secs(10)) {
                self.saved(state);
            }
        }
        let state = self.cursor_now();
        if self.saved.as_ref() == Some(&state) {
            return;
        }
        match self.log.save_cursor(&state) {
            Ok(()) => self.saved(state),
            Err(e) => {
                tracing::error!(subscription = %self.ctx.route.name(), error = %e, "could not persist the cursor")
            }
        }
    }

    /// When the next delayed re-dispatch is due.
    fn next_delayed(&self) -> Option<tokio::time::Instant> {
        self.delayed.iter().map(|(at, _)| *at).min()
    }

    /// Dispatches the delayed events whose backoff is over.
    fn release_delayed(&mut self) {
        let now = tokio::time::Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.delayed = later;
        for (_, se) in due {
            // Its key (if any) is still held, so it goes first among its key's events.
            let prep = self.prepare_one(&se);
            match prep {
                Some(Prepared::Skip) => {
                    self.finish_offset(se.offset);
                }
                prep => self.ready.push_front(Job { se, prep }),
            }
        }
        self.pump();
    }

    /// The plugin steps for one event being dispatched again on its own.
    fn prepare_one(&self, se: &StoredEvent) -> Option<Prepared> {
        if !self.filtered || !self.ctx.route.has_plugins() {
            return None;
        }
        let route = self.ctx.route.clone();
        tokio::task::block_in_place(|| route.prepare_batch(&[&se.event]))
            .into_iter()
            .next()
    }

    pub(crate) async fn run(mut self) {
        let mut end_rx = self.log.watch_end();
        let mut stop = self.ctx.stop.clone();
        let mut last_persist = Instant::now();
        let persist_every = Duration::from_millis(100);
        loop {
            while let Ok((offset, status)) = self.done_rx.try_recv() {
                self.finish(offset, status);
            }
            if self.ctx.stopping() {
                break;
            }
            if !self.delayed.is_empty() {
                self.release_delayed();
            }
            if last_persist.elapsed() >= persist_every {
                self.persist();
                last_persist = Instant::now();
            }
            let end = *end_rx.borrow_and_update();
            let room = self.has_room();
            let wake = self
                .next_delayed()
                .unwrap_or_else(|| tokio::time::Instant::now() + persist_every)
                .min(tokio::time::Instant::now() + persist_every);
            if let Some(m) = self.membership.as_mut() {
                if m.in_sync.load(std::sync::atomic::Ordering::SeqCst) {
                    if room {
                        tokio::select! {
                            b = m.rx.recv() => match b {
                                Some(b) => self.take_batch(b),
                                None => m.in_sync.store(false, std::sync::atomic::Ordering::SeqCst),
                            },
                            Some((offset, status)) = self.done_rx.recv() => self.finish(offset, status),
                            _ = stop.changed() => {}
                            _ = tokio::time::sleep_until(wake) => {}
                        }
                    } else {
                        tokio::select! {
                            Some((offset, status)) = self.done_rx.recv() => self.finish(offset, status),
                            _ = stop.changed() => {}
                            _ = tokio::time::sleep_until(wake) => {}
                        }
                    }
                    continue;
                }
                // Dropped (or never joined): use what was queued before, then read ourselves.
                let mut queued = Vec::new();
                while let Ok(b) = m.rx.try_recv() {
                    queued.push(b);
                }
                let joined = queued.is_empty() && room && m.try_join(self.read_pos);
                for b in queued {
                    self.take_batch(b);
                }
                if joined {
                    continue;
                }
            }
            if room && self.read_pos < end {
                let want = self.max_in_flight().saturating_sub(self.running.len());
                match self.log.read(self.read_pos, want.clamp(1, 512)).await {
                    Ok(batch) => {
                        let matched: Vec<StoredEvent> = batch
                            .events
                            .into_iter()
                            .filter(|se| {
                                if !self.filtered {
                                    return true;
                                }
                                let route = &self.ctx.route;
                                if let Some(parent) = crate::attempt::sampled_parent(&se.event) {
                                    let mut trace = |run| {
                                        crate::attempt::step_run_span(
                                            route.name(),
                                            &se.event,
                                            &parent,
                                            run,
                                        )
                                    };
                                    route.trace_filters(&se.event, &mut trace);
                                }
                                route.matches(&se.event)
                            })
                            .collect();
                        self.dispatch_all(matched);
                        self.read_pos = batch.next.max(self.read_pos);
                    }
                    Err(e) => {
                        tracing::error!(subscription = %self.ctx.route.name(), topic = %self.topic, error = %e, "reading the log failed; retrying in 1s");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                Some((offset, status)) = self.done_rx.recv() => self.finish(offset, status),
                r = end_rx.changed() => { if r.is_err() { break } }
                _ = stop.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        // Shutdown: running deliveries finish their attempt (bounded), then the cursor is saved.
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some((offset, status))) => self.finish(offset, status),
                _ => break,
            }
        }
        self.persist_final();
        self.gauges.forget();
    }

    /// Events the shared reader already matched, and where its batch ends.
    fn take_batch(&mut self, b: fanout::Batch) {
        if b.next <= self.read_pos {
            return;
        }
        let read_pos = self.read_pos;
        let events: Vec<StoredEvent> = b
            .events
            .into_iter()
            .filter(|se| se.offset >= read_pos)
            .collect();
        self.dispatch_all(events);
        self.read_pos = b.next;
    }

    /// Dispatches events that passed the pure filters; plugin filters and transforms run here,
    /// one call per plugin for the whole batch.
    fn dispatch_all(&mut self, events: Vec<StoredEvent>) {
        if events.is_empty() {
            return;
        }
        if !self.filtered || !self.ctx.route.has_plugins() {
            for se in events {
                self.dispatch_matched(Job { se, prep: None });
            }
        } else {
            let route = self.ctx.route.clone();
            let prepared = tokio::task::block_in_place(|| {
                let refs: Vec<&Event> = events.iter().map(|se| &*se.event).collect();
                let parents: Vec<_> = refs
                    .iter()
                    .map(|e| crate::attempt::sampled_parent(e))
                    .collect();
                if parents.iter().all(Option::is_none) {
                    return route.prepare_batch(&refs);
                }
                // Each plugin filter and transform that ran on a traced event: a span.
                let mut trace = |i: usize, run| {
                    if let (Some(e), Some(Some(p))) = (refs.get(i), parents.get(i)) {
                        crate::attempt::step_run_span(route.name(), e, p, run);
                    }
                };
                route.prepare_batch_traced(&refs, Some(&mut trace))
            });
            for (se, prep) in events.into_iter().zip(prepared) {
                if !matches!(prep, Prepared::Skip) {
                    self.dispatch_matched(Job {
                        se,
                        prep: Some(prep),
                    });
                }
            }
        }
        self.pump();
    }

    fn dispatch_matched(&mut self, job: Job) {
        let key = match self.ctx.route.config.ordering {
            Ordering::Key => job.se.event.partition_key(),
            Ordering::None => None,
        };
        self.pending
            .insert(job.se.offset, (key.clone(), Instant::now()));
        match key {
            Some(k) if self.key_busy.contains(&k) => {
                self.key_queue.entry(k).or_default().push_back(job);
            }
            Some(k) => {
                self.key_busy.insert(k);
                self.ready.push_back(job);
            }
            None => self.ready.push_back(job),
        }
    }

    /// Starts ready events while fewer than `maxInFlight` attempts run.
    fn pump(&mut self) {
        while self.running.len() < self.max_in_flight() && !self.ctx.stopping() {
            let Some(job) = self.ready.pop_front() else {
                break;
            };
            self.start(job);
        }
    }

    fn start(&mut self, job: Job) {
        let Job { se, prep } = job;
        self.running.insert(se.offset, se.clone());
        let tx = self.done_tx.clone();
        let ack = AckHandle::new(
            se.offset,
            tokio_free::Sender::new(move |m| {
                let _ = tx.send(m);
            }),
        );
        let ctx = self.ctx.clone();
        let attempts = self.attempts.clone();
        tokio::spawn(async move {
            let status = deliver(&ctx, se.offset, se.event, &attempts, prep).await;
            ack.resolve(status);
        });
    }

    fn finish(&mut self, offset: u64, status: AckStatus) {
        let Some(se) = self.running.remove(&offset) else {
            return;
        };
        if status == AckStatus::Retry && !self.ctx.stopping() {
            // The attempt ended without a verdict while nothing is stopping: the task was
            // lost (a sink that panicked). It counts as a failed attempt and is dispatched
            // again after its backoff; its key stays held so order is kept.
            let made = match self.attempts.lock() {
                Ok(mut a) => {
                    let n = a.entry(offset).or_insert(0);
                    *n = n.saturating_add(1);
                    *n
                }
                Err(_) => 1,
            };
            let delay = backoff_delay(&self.ctx.route.delivery, made);
            tracing::warn!(subscription = %self.ctx.route.name(), topic = %self.topic, offset, attempt = made, "a delivery attempt ended without a result (the sink failed); retrying per the policy");
            self.delayed.push((tokio::time::Instant::now() + delay, se));
            self.pump();
            return;
        }
        if status == AckStatus::Retry {
            // Shutting down: left pending, delivered again after the restart.
            self.release_key(offset);
            return;
        }
        self.ctx.metrics.finished(match status {
            AckStatus::DeadLettered => evmesh_metrics::Outcome::DeadLettered,
            AckStatus::Skipped => evmesh_metrics::Outcome::Skipped,
            _ => evmesh_metrics::Outcome::Delivered,
        });
        self.finish_offset(offset);
    }

    /// The event at `offset` is done for good: forget it and let its key move on.
    fn finish_offset(&mut self, offset: u64) {
        if let Ok(mut a) = self.attempts.lock() {
            a.remove(&offset);
        }
        if self.log.progress() == Progress::PerEvent {
            if let Err(e) = self.log.ack(offset) {
                // Not acknowledged: the broker delivers it again (at least once).
                tracing::warn!(subscription = %self.ctx.route.name(), topic = %self.topic, offset, error = %e, "acknowledging an event failed; it will be delivered again");
            }
        }
        self.release_key(offset);
        self.pending.remove(&offset);
        self.pump();
    }

    /// Hands the key of `offset` to the next event queued behind it, or frees it.
    fn release_key(&mut self, offset: u64) {
        let Some(k) = self.pending.get(&offset).and_then(|(k, _)| k.clone()) else {
            return;
        };
        match self.key_queue.get_mut(&k).and_then(VecDeque::pop_front) {
            Some(job) if !self.ctx.stopping() => self.ready.push_back(job),
            _ => {
                self.key_queue.remove(&k);
                self.key_busy.remove(&k);
            }
        }
    }
}
