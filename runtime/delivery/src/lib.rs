//! Delivery: for each subscription, read its topic from the cursor, filter, deliver at least
//! once with retries and backoff, dead-letter what cannot be delivered, publish replies, and
//! move the cursor only past events whose acknowledgement says they are finished.
//!
//! Each subscription runs two streams: its topic, and `__redrive.<name>` (events an operator
//! re-drove out of its dead-letter list). A stream reads ahead up to `maxInFlight` deliveries;
//! its cursor is the lowest offset not yet finished, persisted every 100 ms, on change, and at
//! shutdown.

mod backoff;
mod fanout;

use evmesh_core::ack::{tokio_free, AckHandle, AckStatus};
use evmesh_core::config::{DeliverySpec, Ordering, SinkConfig, StartPosition, SubscriptionConfig};
use evmesh_core::sink::{RetryHint, Sink, SinkError};
use evmesh_core::{Event, ExtValue};
use evmesh_router::{Origin, Prepared, Route};
use evmesh_store::{CursorState, GroupConsumption, PartitionLog, Store, StoredEvent, TopicLog};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use backoff::backoff_delay;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("subscription {name:?}: {message}")]
    Sink { name: String, message: String },
    #[error("subscription {0:?} already exists")]
    Exists(String),
    #[error(transparent)]
    Invalid(#[from] evmesh_router::RouterError),
    #[error(transparent)]
    Store(#[from] evmesh_store::StoreError),
}

/// Builds running sinks from their config (the binary wires the connector crates in here).
pub type SinkFactory = Arc<dyn Fn(&SinkConfig) -> Result<Arc<dyn Sink>, String> + Send + Sync>;

/// The dead-letter list of a subscription lives in this internal topic.
fn dlq_topic(subscription: &str) -> String {
    format!("__dlq.{subscription}")
}

/// Events re-driven from the dead-letter list are delivered again from this internal topic.
fn redrive_topic(subscription: &str) -> String {
    format!("__redrive.{subscription}")
}

/// Extensions added to a dead-lettered event.
pub mod deadletter {
    pub const REASON: &str = "deadletterreason";
    pub const ATTEMPTS: &str = "deadletterattempts";
    pub const STATUS: &str = "deadletterstatus";
    pub const SUBSCRIPTION: &str = "deadlettersubscription";
    pub const ALL: &[&str] = &[REASON, ATTEMPTS, STATUS, SUBSCRIPTION];
}

/// Persisted cursors, by (subscription, topic), for garbage collection.
type CursorBoard = Arc<Mutex<HashMap<(String, String), u64>>>;

struct Running {
    route: Arc<Route>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Runs every subscription and manages them at runtime.
pub struct Supervisor {
    store: Arc<dyn Store>,
    factory: SinkFactory,
    default_delivery: Option<DeliverySpec>,
    subs: tokio::sync::Mutex<HashMap<String, Running>>,
    board: CursorBoard,
    drain_timeout: Duration,
    fanouts: fanout::Fanouts,
    stop_all: watch::Sender<bool>,
    plugins: Option<Arc<dyn evmesh_core::transform::PluginLoader>>,
}

impl Supervisor {
    pub fn new(
        store: Arc<dyn Store>,
        factory: SinkFactory,
        default_delivery: Option<DeliverySpec>,
        drain_timeout: Duration,
        plugins: Option<Arc<dyn evmesh_core::transform::PluginLoader>>,
    ) -> Arc<Self> {
        Arc::new(Supervisor {
            store,
            factory,
            default_delivery,
            subs: tokio::sync::Mutex::new(HashMap::new()),
            board: Arc::new(Mutex::new(HashMap::new())),
            drain_timeout,
            fanouts: fanout::Fanouts::default(),
            stop_all: watch::channel(false).0,
            plugins,
        })
    }

    /// Builds the sinks and starts a subscription (replacing none).
    pub async fn start(
        &self,
        config: SubscriptionConfig,
        origin: Origin,
    ) -> Result<(), DeliveryError> {
        let name = config.name.clone();
        let mut subs = self.subs.lock().await;
        if subs.contains_key(&name) {
            return Err(DeliveryError::Exists(name));
        }
        let route = Arc::new(Route::compile_with(
            config,
            origin,
            self.default_delivery.as_ref(),
            self.plugins.as_deref(),
        )?);
        let sink = (self.factory)(&route.config.sink).map_err(|message| DeliveryError::Sink {
            name: name.clone(),
            message,
        })?;
        let dls = match &route.delivery.dead_letter_sink {
            Some(c) => Some((self.factory)(c).map_err(|message| DeliveryError::Sink {
                name: name.clone(),
                message: format!("deadLetterSink: {message}"),
            })?),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            route: route.clone(),
            sink,
            dls,
            store: self.store.clone(),
            stop: stop_rx,
        });
        let mut tasks = Vec::new();
        for (topic, filtered, start) in [
            (route.config.topic.clone(), true, route.config.start),
            (redrive_topic(&name), false, StartPosition::Earliest),
        ] {
            if let Some(group) = self.store.consume_group(&name, &topic, start).await? {
                tasks.push(tokio::spawn(run_group(
                    ctx.clone(),
                    topic,
                    filtered,
                    group,
                    self.board.clone(),
                    self.drain_timeout,
                )));
                continue;
            }
            let log = Arc::new(TopicLog {
                store: self.store.clone(),
                subscription: name.clone(),
                topic: topic.clone(),
            });
            let mut stream = Stream::open(
                ctx.clone(),
                log,
                topic.clone(),
                filtered,
                start,
                self.board.clone(),
                self.drain_timeout,
            )?;
            if filtered {
                stream.membership = self
                    .fanouts
                    .get(&topic, &self.store, &self.stop_all.subscribe())
                    .map(|f| f.register(&name, route.clone()));
            }
            tasks.push(tokio::spawn(stream.run()));
        }
        tracing::info!(subscription = %name, topic = %route.config.topic, sink = %ctx.sink.describe(), "subscription started");
        subs.insert(name, Running { route, stop, tasks });
        Ok(())
    }

    /// Stops a subscription, letting in-flight deliveries finish and persisting its cursor.
    pub async fn stop(&self, name: &str) -> Option<Arc<Route>> {
        let running = self.subs.lock().await.remove(name)?;
        let _ = running.stop.send(true);
        for t in running.tasks {
            let _ = t.await;
        }
        if let Ok(mut b) = self.board.lock() {
            b.retain(|(s, _), _| s != name);
        }
        tracing::info!(subscription = %name, "subscription stopped");
        Some(running.route)
    }

    /// Stops a subscription and removes everything it kept: cursors, retry state, its
    /// dead-letter list and re-drive topic, so a new subscription of the same name starts clean.
    pub async fn remove(&self, name: &str) -> Result<Option<Arc<Route>>, DeliveryError> {
        let route = self.stop(name).await;
        self.store.delete_subscription_state(name)?;
        for topic in [dlq_topic(name), redrive_topic(name)] {
            self.store.delete_topic(&topic).await?;
        }
        Ok(route)
    }

    /// The subscription's dead-letter list: the events from its cursor to the end, and where
    /// that end is.
    pub async fn dead_letters(&self, name: &str) -> Result<(Vec<Event>, u64), DeliveryError> {
        let topic = dlq_topic(name);
        let mut from = self
            .store
            .load_cursor(name, &topic)?
            .map_or(0, |c| c.committed);
        let mut out = Vec::new();
        loop {
            let b = self.store.read(&topic, from, 1000).await?;
            let progressed = b.next > from;
            from = b.next.max(from);
            if b.events.is_empty() && !progressed {
                break;
            }
            out.extend(b.events.into_iter().map(|e| Arc::unwrap_or_clone(e.event)));
        }
        Ok((out, from))
    }

    /// Moves the dead-letter list to the re-drive topic (without the dead-letter extensions),
    /// where the subscription delivers it again; then empties the list. Says how many moved.
    pub async fn redrive(&self, name: &str) -> Result<usize, DeliveryError> {
        let (mut events, end) = self.dead_letters(name).await?;
        for e in &mut events {
            for ext in deadletter::ALL {
                e.remove_extension(ext);
            }
        }
        if !events.is_empty() {
            self.store.append(&redrive_topic(name), &events).await?;
        }
        let state = CursorState {
            committed: end,
            ..Default::default()
        };
        self.store.save_cursor(name, &dlq_topic(name), &state)?;
        Ok(events.len())
    }

    pub async fn routes(&self) -> Vec<Arc<Route>> {
        let mut v: Vec<_> = self
            .subs
            .lock()
            .await
            .values()
            .map(|r| r.route.clone())
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    pub async fn route(&self, name: &str) -> Option<Arc<Route>> {
        self.subs.lock().await.get(name).map(|r| r.route.clone())
    }

    /// Stops everything (graceful shutdown).
    pub async fn shutdown(&self) {
        let _ = self.stop_all.send(true);
        let names: Vec<String> = self.subs.lock().await.keys().cloned().collect();
        let mut handles = Vec::new();
        {
            let subs = self.subs.lock().await;
            for n in &names {
                if let Some(r) = subs.get(n) {
                    let _ = r.stop.send(true);
                }
            }
        }
        for n in names {
            let running = self.subs.lock().await.remove(&n);
            if let Some(r) = running {
                handles.extend(r.tasks);
            }
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// Deletes fully acknowledged segments, periodically.
    pub fn spawn_gc(
        self: &Arc<Self>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                me.collect_garbage().await;
            }
        })
    }

    pub async fn collect_garbage(&self) {
        let board = self.board.lock().map(|b| b.clone()).unwrap_or_default();
        // Topics read by a subscription that has not yet persisted a cursor are left alone.
        let starting: HashSet<String> = {
            let subs = self.subs.lock().await;
            subs.values()
                .flat_map(|r| [r.route.config.topic.clone(), redrive_topic(r.route.name())])
                .filter(|t| !board.keys().any(|(_, bt)| bt == t))
                .collect()
        };
        for topic in self.store.topics() {
            if starting.contains(&topic) || topic.starts_with("__dlq.") {
                continue;
            }
            let keep = board
                .iter()
                .filter(|((_, t), _)| *t == topic)
                .map(|(_, c)| *c)
                .min()
                .unwrap_or_else(|| *self.store.watch_end(&topic).borrow());
            if let Err(e) = self.store.collect_garbage(&topic, keep) {
                tracing::warn!(topic = %topic, error = %e, "segment clean-up failed");
            }
        }
    }
}

#[derive(Clone)]
struct Ctx {
    route: Arc<Route>,
    sink: Arc<dyn Sink>,
    dls: Option<Arc<dyn Sink>>,
    store: Arc<dyn Store>,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Runs one stream per partition the consumer group gives this instance, each stopping when
/// its partition is revoked or the subscription stops.
async fn run_group(
    ctx: Arc<Ctx>,
    topic: String,
    filtered: bool,
    mut group: GroupConsumption,
    board: CursorBoard,
    drain_timeout: Duration,
) {
    let mut stop = ctx.stop.clone();
    let mut streams: Vec<JoinHandle<()>> = Vec::new();
    loop {
        if ctx.stopping() {
            break;
        }
        tokio::select! {
            a = group.assignments.recv() => {
                let Some(a) = a else { break };
                let (part_stop, part_stop_rx) = watch::channel(false);
                let mut sub_stop = ctx.stop.clone();
                let mut revoked = a.revoked;
                tokio::spawn(async move {
                    loop {
                        if *sub_stop.borrow() || *revoked.borrow() {
                            break;
                        }
                        tokio::select! {
                            r = sub_stop.changed() => if r.is_err() { break },
                            r = revoked.changed() => if r.is_err() { break },
                        }
                    }
                    let _ = part_stop.send(true);
                });
                let part_ctx = Arc::new(Ctx {
                    stop: part_stop_rx,
                    ..(*ctx).clone()
                });
                let label = format!("{topic}#{}", a.partition);
                match Stream::open(part_ctx, a.log, label.clone(), filtered, StartPosition::Earliest, board.clone(), drain_timeout) {
                    Ok(s) => {
                        tracing::info!(subscription = %ctx.route.name(), partition = %label, "partition assigned");
                        streams.push(tokio::spawn(s.run()));
                    }
                    Err(e) => tracing::error!(subscription = %ctx.route.name(), partition = %label, error = %e, "could not start reading a partition"),
                }
                streams.retain(|h| !h.is_finished());
            }
            _ = stop.changed() => {}
        }
    }
    for h in streams {
        let _ = h.await;
    }
    drop(group);
}

/// An event handed to the stream's dispatcher, with what the plugin steps made of it.
struct Job {
    se: StoredEvent,
    prep: Option<Prepared>,
}

struct Stream {
    ctx: Arc<Ctx>,
    log: Arc<dyn PartitionLog>,
    /// The topic (and partition) for logs and the cursor board.
    topic: String,
    filtered: bool,
    read_pos: u64,
    /// Offsets handed out and not yet finished (running, ready or queued behind their key).
    pending: BTreeMap<u64, Option<String>>,
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
    drain_timeout: Duration,
    /// The shared topic reader (the main topic's stream only).
    membership: Option<fanout::Membership>,
}

impl Stream {
    fn open(
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
        if let Ok(mut b) = board.lock() {
            b.insert((name, topic.clone()), state.committed);
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(Stream {
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

    fn persist(&mut self) {
        let committed = self.committed();
        let attempts: BTreeMap<u64, u32> = self
            .attempts
            .lock()
            .map(|a| a.range(committed..).map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        let state = CursorState {
            committed,
            attempts,
        };
        if self.saved.as_ref() == Some(&state) {
            return;
        }
        let name = self.ctx.route.name().to_owned();
        match self.log.save_cursor(&state) {
            Ok(()) => {
                if let Ok(mut b) = self.board.lock() {
                    b.insert((name, self.topic.clone()), committed);
                }
                self.saved = Some(state);
            }
            Err(e) => {
                tracing::error!(subscription = %name, error = %e, "could not persist the cursor")
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

    async fn run(mut self) {
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
                            .filter(|se| !self.filtered || self.ctx.route.matches(&se.event))
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
        self.persist();
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
                route.prepare_batch(&refs)
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
        self.pending.insert(job.se.offset, key.clone());
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
        self.finish_offset(offset);
    }

    /// The event at `offset` is done for good: forget it and let its key move on.
    fn finish_offset(&mut self, offset: u64) {
        if let Ok(mut a) = self.attempts.lock() {
            a.remove(&offset);
        }
        self.release_key(offset);
        self.pending.remove(&offset);
        self.pump();
    }

    /// Hands the key of `offset` to the next event queued behind it, or frees it.
    fn release_key(&mut self, offset: u64) {
        let Some(k) = self.pending.get(&offset).cloned().flatten() else {
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

/// Transforms the event, then delivers what comes out under the subscription's policy; says
/// how it ended. A built-in transform failure dead-letters the original event with the reason;
/// a plugin failure is retried per the policy first (plugins can fail transiently: deadlines).
async fn deliver(
    ctx: &Ctx,
    offset: u64,
    event: Arc<Event>,
    attempts: &Mutex<BTreeMap<u64, u32>>,
    prep: Option<Prepared>,
) -> AckStatus {
    let outputs = match prep {
        Some(Prepared::Skip) => return AckStatus::Skipped,
        Some(Prepared::Outputs(o)) => o,
        Some(Prepared::Failed(msg)) => {
            match retry_plugins(ctx, offset, &event, attempts, msg).await {
                Ok(Some(o)) => o,
                Ok(None) => return AckStatus::Skipped,
                Err(status) => return status,
            }
        }
        None if !ctx.route.has_transforms() => {
            return deliver_one(ctx, offset, &event, attempts).await
        }
        None => match ctx.route.transform_routed((*event).clone()) {
            Ok(o) => o,
            Err(e) => {
                let err = SinkError::not_retryable(format!("transform failed: {e}"));
                return dead_letter(ctx, &event, 0, err).await;
            }
        },
    };
    let mut status = AckStatus::Skipped;
    for (topic, out) in outputs {
        let s = match topic {
            Some(t) => match publish(ctx, &t, &out, "a routed event").await {
                Published::Stored => AckStatus::Delivered,
                Published::Stopped => AckStatus::Retry,
                Published::Refused(why) => {
                    let err = SinkError::not_retryable(format!(
                        "the event routed to topic {t:?} cannot be stored: {why}"
                    ));
                    dead_letter(ctx, &event, 0, err).await
                }
            },
            None => deliver_one(ctx, offset, &out, attempts).await,
        };
        match s {
            AckStatus::Retry => return AckStatus::Retry,
            AckStatus::DeadLettered => status = AckStatus::DeadLettered,
            s if status == AckStatus::Skipped => status = s,
            _ => {}
        }
        if let Ok(mut a) = attempts.lock() {
            a.remove(&offset);
        }
    }
    status
}

/// Runs a route's plugin steps again for one event whose batch failed, with the delivery
/// policy's backoff; after the last attempt the event is dead-lettered with the plugin's error.
async fn retry_plugins(
    ctx: &Ctx,
    offset: u64,
    event: &Event,
    attempts: &Mutex<BTreeMap<u64, u32>>,
    first_error: String,
) -> Result<Option<Vec<evmesh_core::transform::Routed>>, AckStatus> {
    let spec = &ctx.route.delivery;
    let max_attempts = spec.retry.saturating_add(1);
    let mut made = attempts
        .lock()
        .map(|a| a.get(&offset).copied().unwrap_or(0))
        .unwrap_or(0)
        + 1;
    let mut last = first_error;
    let mut stop = ctx.stop.clone();
    loop {
        if let Ok(mut a) = attempts.lock() {
            a.insert(offset, made);
        }
        if made >= max_attempts {
            let err = SinkError::not_retryable(last);
            return Err(dead_letter(ctx, event, made, err).await);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff_delay(spec, made)) => {}
            _ = stop.changed() => return Err(AckStatus::Retry),
        }
        let route = ctx.route.clone();
        let again = tokio::task::block_in_place(|| route.prepare_batch(&[event]));
        made += 1;
        match again.into_iter().next() {
            Some(Prepared::Outputs(o)) => {
                if let Ok(mut a) = attempts.lock() {
                    a.remove(&offset);
                }
                return Ok(Some(o));
            }
            Some(Prepared::Skip) | None => return Ok(None),
            Some(Prepared::Failed(m)) => last = m,
        }
    }
}

/// How storing an event that delivery produced (a reply, a routed output) ended.
enum Published {
    Stored,
    /// Shutdown came first; nothing is finished.
    Stopped,
    /// The store will never take it (too large, say): the cause goes to the dead-letter path.
    Refused(String),
}

/// Stores an event durably, retrying transient failures until it is stored.
async fn publish(ctx: &Ctx, topic: &str, event: &Event, what: &str) -> Published {
    let mut wait = Duration::from_millis(100);
    loop {
        match ctx.store.append(topic, std::slice::from_ref(event)).await {
            Ok(_) => return Published::Stored,
            Err(e) if e.is_permanent() => return Published::Refused(e.to_string()),
            Err(e) => {
                tracing::error!(subscription = %ctx.route.name(), topic = %topic, error = %e, "storing {what} failed; retrying");
                if ctx.stopping() {
                    return Published::Stopped;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Delivers one event under the subscription's policy; says how it ended.
async fn deliver_one(
    ctx: &Ctx,
    offset: u64,
    event: &Event,
    attempts: &Mutex<BTreeMap<u64, u32>>,
) -> AckStatus {
    let spec = &ctx.route.delivery;
    let max_attempts = spec.retry.saturating_add(1);
    let mut made = attempts
        .lock()
        .map(|a| a.get(&offset).copied().unwrap_or(0))
        .unwrap_or(0);
    let mut stop = ctx.stop.clone();
    let mut last: Option<SinkError> = None;
    loop {
        if made >= max_attempts {
            let err = last.unwrap_or_else(|| {
                SinkError::retryable(
                    "every attempt failed (some before a restart or a lost attempt)",
                )
            });
            return dead_letter(ctx, event, made, err).await;
        }
        if ctx.stopping() {
            return AckStatus::Retry;
        }
        let result = ctx.sink.deliver(event, spec.timeout.0).await;
        made += 1;
        match result {
            Ok(delivered) => {
                if let Some(reply) = delivered.reply {
                    let topic = ctx.route.reply_topic().to_owned();
                    match publish(ctx, &topic, &reply, "a reply").await {
                        Published::Stored => {}
                        Published::Stopped => return AckStatus::Retry,
                        Published::Refused(why) => {
                            let err = SinkError::not_retryable(format!(
                                "delivered, but the reply cannot be stored in topic {topic:?}: {why}"
                            ));
                            return dead_letter(ctx, event, made, err).await;
                        }
                    }
                }
                return AckStatus::Delivered;
            }
            Err(e) => {
                if let Ok(mut a) = attempts.lock() {
                    a.insert(offset, made);
                }
                tracing::info!(subscription = %ctx.route.name(), offset, attempt = made, error = %e, "delivery attempt failed");
                if e.hint == RetryHint::NotRetryable {
                    return dead_letter(ctx, event, made, e).await;
                }
                if made >= max_attempts {
                    last = Some(e);
                    continue;
                }
                let delay = match e.hint {
                    RetryHint::RetryAfter(d) => d,
                    _ => backoff_delay(spec, made),
                };
                last = Some(e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return AckStatus::Retry,
                }
            }
        }
    }
}

async fn dead_letter(ctx: &Ctx, event: &Event, attempts: u32, err: SinkError) -> AckStatus {
    let name = ctx.route.name();
    let mut event = event.clone();
    event.set_extension(deadletter::REASON, ExtValue::String(err.message.clone()));
    event.set_extension(deadletter::ATTEMPTS, ExtValue::Integer(i64::from(attempts)));
    if let Some(s) = err.status {
        event.set_extension(deadletter::STATUS, ExtValue::Integer(i64::from(s)));
    }
    event.set_extension(deadletter::SUBSCRIPTION, ExtValue::String(name.to_owned()));
    tracing::warn!(subscription = %name, id = %event.id, attempts, reason = %err.message, "dead-lettering an event");
    let spec = &ctx.route.delivery;
    let mut n = 0u32;
    let mut stop = ctx.stop.clone();
    loop {
        let result = match &ctx.dls {
            Some(dls) => dls
                .deliver(&event, spec.timeout.0)
                .await
                .map(|_| ())
                .map_err(|e| e.message),
            None => match ctx
                .store
                .append(&dlq_topic(name), std::slice::from_ref(&event))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() && event.data.is_some() => {
                    // The event itself is too large to keep: keep its attributes and the
                    // reason, so the list still says what was lost and why.
                    tracing::error!(subscription = %name, id = %event.id, error = %e, "the dead-lettered event is too large for the store; keeping it without its data");
                    event.data = None;
                    event.set_extension(
                        deadletter::REASON,
                        ExtValue::String(format!("{} (data dropped: {e})", err.message)),
                    );
                    continue;
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match result {
            Ok(()) => return AckStatus::DeadLettered,
            Err(e) => {
                n = n.saturating_add(1);
                tracing::warn!(subscription = %name, attempt = n, error = %e, "the dead-letter destination refused an event; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff_delay(spec, n)) => {}
                    _ = stop.changed() => return AckStatus::Retry,
                }
            }
        }
    }
}
