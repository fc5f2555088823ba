//! Delivery: for each subscription, read its topic, filter, deliver at least once with retries
//! and backoff, dead-letter what cannot be delivered, publish replies, and record progress only
//! past events whose acknowledgement says they are finished.
//!
//! Each subscription runs two streams: its topic, and `__redrive.<name>` (events an operator
//! re-drove out of its dead-letter list). How a stream reads is the event log's choice
//! ([`Consumption`]): by itself (the embedded log; one shared reader per topic serves every
//! subscription in sync, see [`fanout`]) or as a member of a consumer group (one stream per
//! assigned partition). See [`stream`] for the stream itself, [`attempt`] for one event's way
//! out and [`deadletter`] for the dead-letter bookkeeping.

mod attempt;
mod backoff;
pub mod deadletter;
mod fanout;
mod saver;
mod stream;

use evmesh_core::component::{ComponentSpec, SinkContext};
use evmesh_core::config::{DeliverySpec, StartPosition, SubscriptionConfig};
use evmesh_core::sink::{Sink, SinkHealth};
use evmesh_core::Event;
use evmesh_router::{Origin, Route};
use evmesh_store::{Consumption, EventLog, GroupConsumption, LocalPartition, StateStore};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stream::Stream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use backoff::backoff_delay;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("subscription {name:?}: {message}")]
    Sink { name: String, message: String },
    #[error("subscription {0:?} already exists")]
    Exists(String),
    #[error("no subscription named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Invalid(#[from] evmesh_router::RouterError),
    #[error(transparent)]
    Store(#[from] evmesh_store::StoreError),
}

/// Builds running sinks from their spec (the binary's registry knows every sink kind).
pub type SinkFactory =
    Arc<dyn Fn(&ComponentSpec, &SinkContext) -> Result<Arc<dyn Sink>, String> + Send + Sync>;

/// The state document listing paused subscriptions.
const PAUSED: &str = "paused.json";

/// Persisted cursors, by (subscription, topic), for garbage collection.
pub(crate) type CursorBoard = Arc<Mutex<HashMap<(String, String), u64>>>;

struct Running {
    route: Arc<Route>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sinks: Vec<Arc<dyn Sink>>,
    /// Paused: no stream runs; the cursor stays where it was.
    paused: bool,
}

/// Runs every subscription and manages them at runtime.
pub struct Supervisor {
    log: Arc<dyn EventLog>,
    state: Arc<dyn StateStore>,
    factory: SinkFactory,
    /// The document's `delivery:` (a reload may change it).
    default_delivery: std::sync::RwLock<Option<DeliverySpec>>,
    subs: tokio::sync::Mutex<HashMap<String, Running>>,
    board: CursorBoard,
    drain_timeout: Duration,
    fanouts: fanout::Fanouts,
    stop_all: watch::Sender<bool>,
    plugins: Option<Arc<dyn evmesh_core::transform::PluginLoader>>,
}

impl Supervisor {
    pub fn new(
        log: Arc<dyn EventLog>,
        state: Arc<dyn StateStore>,
        factory: SinkFactory,
        default_delivery: Option<DeliverySpec>,
        drain_timeout: Duration,
        plugins: Option<Arc<dyn evmesh_core::transform::PluginLoader>>,
    ) -> Arc<Self> {
        Arc::new(Supervisor {
            log,
            state,
            factory,
            default_delivery: std::sync::RwLock::new(default_delivery),
            subs: tokio::sync::Mutex::new(HashMap::new()),
            board: Arc::new(Mutex::new(HashMap::new())),
            drain_timeout,
            fanouts: fanout::Fanouts::default(),
            stop_all: watch::channel(false).0,
            plugins,
        })
    }

    /// Builds the sinks from the subscription's config and starts it (replacing none).
    pub async fn start(
        &self,
        config: SubscriptionConfig,
        origin: Origin,
    ) -> Result<(), DeliveryError> {
        let cx = SinkContext {
            subscription: config.name.clone(),
            topic: config.topic.clone(),
            ordering: config.ordering,
        };
        let sink = (self.factory)(&config.sink, &cx).map_err(|message| DeliveryError::Sink {
            name: config.name.clone(),
            message,
        })?;
        self.start_with_sink(config, origin, sink).await
    }

    /// Starts a subscription that pushes to `sink`, a live target (connected sessions of a
    /// protocol listener) rather than one built from `config.sink`.
    pub async fn start_with_sink(
        &self,
        config: SubscriptionConfig,
        origin: Origin,
        sink: Arc<dyn Sink>,
    ) -> Result<(), DeliveryError> {
        let name = config.name.clone();
        let mut subs = self.subs.lock().await;
        if subs.contains_key(&name) {
            return Err(DeliveryError::Exists(name));
        }
        let route = Arc::new(Route::compile_with(
            config,
            origin,
            self.default_delivery
                .read()
                .ok()
                .and_then(|d| d.clone())
                .as_ref(),
            self.plugins.as_deref(),
        )?);
        let dls = match &route.delivery.dead_letter_sink {
            Some(c) => {
                let cx = SinkContext {
                    subscription: name.clone(),
                    topic: route.config.topic.clone(),
                    ordering: route.config.ordering,
                };
                Some(
                    (self.factory)(c, &cx).map_err(|message| DeliveryError::Sink {
                        name: name.clone(),
                        message: format!("deadLetterSink: {message}"),
                    })?,
                )
            }
            None => None,
        };
        let mut sinks = vec![sink];
        sinks.extend(dls);
        let paused = self.paused_names().contains(&name);
        let (stop, tasks) = if paused {
            tracing::info!(subscription = %name, "subscription paused (resume it through the admin API)");
            (watch::channel(true).0, Vec::new())
        } else {
            self.spawn_streams(&route, &sinks).await?
        };
        subs.insert(
            name,
            Running {
                route,
                stop,
                tasks,
                sinks,
                paused,
            },
        );
        Ok(())
    }

    /// Starts the streams of a subscription (its topic and its re-drive topic) delivering to
    /// `sinks` (the sink, then the dead-letter sink if any).
    async fn spawn_streams(
        &self,
        route: &Arc<Route>,
        sinks: &[Arc<dyn Sink>],
    ) -> Result<(watch::Sender<bool>, Vec<JoinHandle<()>>), DeliveryError> {
        let name = route.name().to_owned();
        let Some(sink) = sinks.first().cloned() else {
            return Err(DeliveryError::Sink {
                name,
                message: "no sink".into(),
            });
        };
        let dls = sinks.get(1).cloned();
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            route: route.clone(),
            sink: sink.clone(),
            dls: dls.clone(),
            log: self.log.clone(),
            stop: stop_rx,
            metrics: evmesh_metrics::global().subscription(&name),
        });
        let mut tasks = Vec::new();
        for (topic, filtered, start) in [
            (route.config.topic.clone(), true, route.config.start),
            (
                deadletter::redrive_topic(&name),
                false,
                StartPosition::Earliest,
            ),
        ] {
            match self.log.consume(&name, &topic, start).await? {
                Consumption::Group(group) => {
                    tasks.push(tokio::spawn(run_group(
                        ctx.clone(),
                        topic,
                        filtered,
                        group,
                        self.board.clone(),
                        self.drain_timeout,
                    )));
                }
                Consumption::Local(local) => {
                    let part = Arc::new(LocalPartition {
                        topic: local.clone(),
                        state: self.state.clone(),
                        consumer: name.clone(),
                        name: topic.clone(),
                    });
                    let mut stream = Stream::open(
                        ctx.clone(),
                        part,
                        topic.clone(),
                        filtered,
                        start,
                        self.board.clone(),
                        self.drain_timeout,
                    )?;
                    if filtered {
                        stream.membership = self
                            .fanouts
                            .get(&topic, &local, &self.stop_all.subscribe())
                            .map(|f| f.register(&name, route.clone()));
                    }
                    tasks.push(tokio::spawn(stream.run()));
                }
            }
        }
        tracing::info!(subscription = %name, topic = %route.config.topic, sink = %ctx.sink.describe(), "subscription started");
        Ok((stop, tasks))
    }

    /// The subscriptions an operator paused (kept in the state store, so a restart or a
    /// reload keeps them paused).
    fn paused_names(&self) -> Vec<String> {
        match self.state.load_document(PAUSED) {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn save_paused(&self, names: &[String]) -> Result<(), DeliveryError> {
        let bytes = serde_json::to_vec(names).map_err(|e| DeliveryError::Sink {
            name: String::new(),
            message: e.to_string(),
        })?;
        Ok(self.state.save_document(PAUSED, &bytes)?)
    }

    /// Whether the subscription is paused; `None` when there is none of that name.
    pub async fn is_paused(&self, name: &str) -> Option<bool> {
        self.subs.lock().await.get(name).map(|r| r.paused)
    }

    /// Pauses a subscription: its streams stop (in-flight deliveries finish, the cursor is
    /// saved) and nothing is delivered until [`Supervisor::resume`]; events keep being stored.
    /// Says whether it was running.
    pub async fn pause(&self, name: &str) -> Result<bool, DeliveryError> {
        let tasks = {
            let mut subs = self.subs.lock().await;
            let Some(r) = subs.get_mut(name) else {
                return Err(DeliveryError::NotFound(name.to_owned()));
            };
            if r.paused {
                return Ok(false);
            }
            r.paused = true;
            let _ = r.stop.send(true);
            std::mem::take(&mut r.tasks)
        };
        for t in tasks {
            let _ = t.await;
        }
        let mut names = self.paused_names();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
            self.save_paused(&names)?;
        }
        tracing::info!(subscription = %name, "subscription paused");
        Ok(true)
    }

    /// Resumes a paused subscription from its cursor; says whether it was paused.
    pub async fn resume(&self, name: &str) -> Result<bool, DeliveryError> {
        let mut names = self.paused_names();
        names.retain(|n| n != name);
        let mut subs = self.subs.lock().await;
        let Some(r) = subs.get_mut(name) else {
            return Err(DeliveryError::NotFound(name.to_owned()));
        };
        self.save_paused(&names)?;
        if !r.paused {
            return Ok(false);
        }
        let (stop, tasks) = self.spawn_streams(&r.route, &r.sinks).await?;
        r.stop = stop;
        r.tasks = tasks;
        r.paused = false;
        tracing::info!(subscription = %name, "subscription resumed");
        Ok(true)
    }

    /// Moves a subscription's cursor on its topic to `offset` (clamped to the topic's end)
    /// and delivers from there again: events before it are skipped, events after it are
    /// delivered again. Only for topics this instance reads by itself (the embedded log).
    /// Returns the offset it starts from.
    pub async fn replay(&self, name: &str, offset: u64) -> Result<u64, DeliveryError> {
        let Some(hk) = self.log.housekeeping() else {
            return Err(DeliveryError::Unsupported(
                "replay moves a cursor of the embedded log; a broker-backed store keeps consumer-group offsets in the broker (reset them there)".into(),
            ));
        };
        let route = self
            .route(name)
            .await
            .ok_or_else(|| DeliveryError::NotFound(name.to_owned()))?;
        let topic = route.config.topic.clone();
        let at = offset.min(hk.end(&topic));
        let was_paused = self.is_paused(name).await == Some(true);
        if !was_paused {
            self.pause(name).await?;
        }
        self.state.save_cursor(
            name,
            &topic,
            &evmesh_store::CursorState {
                committed: at,
                attempts: Default::default(),
            },
        )?;
        if let Ok(mut b) = self.board.lock() {
            b.insert((name.to_owned(), topic.clone()), at);
        }
        if !was_paused {
            self.resume(name).await?;
        }
        tracing::info!(subscription = %name, topic = %topic, offset = at, "subscription replays from an offset");
        Ok(at)
    }

    /// Sets the delivery spec of subscriptions that have none (for those started from now on:
    /// a reload restarts the running ones it concerns).
    pub fn set_default_delivery(&self, d: Option<DeliverySpec>) {
        if let Ok(mut g) = self.default_delivery.write() {
            *g = d;
        }
    }

    /// Stops a subscription, letting in-flight deliveries finish and persisting its cursor,
    /// then closes its sinks.
    pub async fn stop(&self, name: &str) -> Option<Arc<Route>> {
        let running = self.subs.lock().await.remove(name)?;
        let _ = running.stop.send(true);
        for t in running.tasks {
            let _ = t.await;
        }
        for s in &running.sinks {
            s.close().await;
        }
        if let Ok(mut b) = self.board.lock() {
            b.retain(|(s, _), _| s != name);
        }
        evmesh_metrics::global().forget_subscription(name);
        tracing::info!(subscription = %name, "subscription stopped");
        Some(running.route)
    }

    /// Stops a subscription and removes everything it kept: cursors, retry state, its
    /// dead-letter list and re-drive topic, so a new subscription of the same name starts clean.
    pub async fn remove(&self, name: &str) -> Result<Option<Arc<Route>>, DeliveryError> {
        let route = self.stop(name).await;
        let mut names = self.paused_names();
        if names.iter().any(|n| n == name) {
            names.retain(|n| n != name);
            self.save_paused(&names)?;
        }
        deadletter::remove(self.log.as_ref(), self.state.as_ref(), name).await?;
        Ok(route)
    }

    /// The subscription's dead-letter list, oldest first.
    pub async fn dead_letters(&self, name: &str) -> Result<Vec<Event>, DeliveryError> {
        Ok(
            deadletter::list(self.log.as_ref(), self.state.as_ref(), name)
                .await?
                .0,
        )
    }

    /// Delivers the dead-letter list again (see [`deadletter::redrive`]); says how many.
    pub async fn redrive(&self, name: &str) -> Result<usize, DeliveryError> {
        Ok(deadletter::redrive(self.log.as_ref(), self.state.as_ref(), name).await?)
    }

    /// Drops the subscription's dead-letter list (as listed now); says how many went.
    pub async fn purge_dead_letters(&self, name: &str) -> Result<usize, DeliveryError> {
        let (events, ends) = deadletter::list(self.log.as_ref(), self.state.as_ref(), name).await?;
        deadletter::clear(self.state.as_ref(), name, &ends)?;
        Ok(events.len())
    }

    /// Re-driven events of a subscription not yet finished (delivered or dead-lettered again),
    /// where the log says its end without a read (the embedded log); `None` elsewhere or when
    /// the subscription is not running.
    pub fn redrive_pending(&self, name: &str) -> Option<u64> {
        self.pending(name, &deadletter::redrive_topic(name))
    }

    /// Events of `topic` the subscription has not finished yet (as of its last saved cursor),
    /// where the log says its end without a read; `None` elsewhere.
    pub fn pending(&self, name: &str, topic: &str) -> Option<u64> {
        let hk = self.log.housekeeping()?;
        let topic = topic.to_owned();
        let committed = self
            .board
            .lock()
            .ok()?
            .get(&(name.to_owned(), topic.clone()))
            .copied()?;
        Some(hk.end(&topic).saturating_sub(committed))
    }

    /// Records a source could not store, oldest first.
    pub async fn source_dead_letters(&self, source: &str) -> Result<Vec<Event>, DeliveryError> {
        Ok(deadletter::list_source(self.log.as_ref(), source).await?)
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

    /// What each subscription's sink knows of its health.
    pub async fn sink_health(&self) -> Vec<(String, SinkHealth)> {
        let subs = self.subs.lock().await;
        let mut v: Vec<_> = subs
            .iter()
            .filter_map(|(n, r)| r.sinks.first().map(|s| (n.clone(), s.health())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Stops everything (graceful shutdown), then closes every sink.
    pub async fn shutdown(&self) {
        let _ = self.stop_all.send(true);
        let mut running = Vec::new();
        {
            let mut subs = self.subs.lock().await;
            for r in subs.values() {
                let _ = r.stop.send(true);
            }
            running.extend(subs.drain().map(|(_, r)| r));
        }
        for r in &mut running {
            for h in r.tasks.drain(..) {
                let _ = h.await;
            }
        }
        for r in &running {
            for s in &r.sinks {
                s.close().await;
            }
        }
    }

    /// Deletes fully acknowledged segments, periodically (logs that manage their own files).
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
        let Some(hk) = self.log.housekeeping() else {
            return;
        };
        let board = self.board.lock().map(|b| b.clone()).unwrap_or_default();
        // Topics read by a subscription that has not yet persisted a cursor are left alone.
        let starting: HashSet<String> = {
            let subs = self.subs.lock().await;
            subs.values()
                .flat_map(|r| {
                    [
                        r.route.config.topic.clone(),
                        deadletter::redrive_topic(r.route.name()),
                    ]
                })
                .filter(|t| !board.keys().any(|(_, bt)| bt == t))
                .collect()
        };
        let topics = match self.log.topics().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "listing topics for clean-up failed");
                return;
            }
        };
        for topic in topics {
            if starting.contains(&topic) || deadletter::is_dead_letter_topic(&topic) {
                continue;
            }
            let keep = board
                .iter()
                .filter(|((_, t), _)| *t == topic)
                .map(|(_, c)| *c)
                .min()
                .unwrap_or_else(|| hk.end(&topic));
            if let Err(e) = hk.collect_garbage(&topic, keep) {
                tracing::warn!(topic = %topic, error = %e, "segment clean-up failed");
            }
        }
    }
}

#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) route: Arc<Route>,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) dls: Option<Arc<dyn Sink>>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) stop: watch::Receiver<bool>,
    /// The subscription's counters and latency histogram (atomics; made once).
    pub(crate) metrics: evmesh_metrics::SubscriptionMetrics,
}

impl Ctx {
    pub(crate) fn stopping(&self) -> bool {
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

#[cfg(test)]
mod tests;
