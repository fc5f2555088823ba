//! Hot reload: on SIGHUP, or when the config file changes, read it again, check it, and apply
//! the difference without a restart: subscriptions added, changed (filters, plugins, sinks,
//! delivery) and removed, the default delivery spec, sources. A changed subscription stops
//! (its in-flight deliveries finish, its cursor is saved) and starts again from that cursor,
//! so no event is lost or delivered twice. A new config that does not pass every check is
//! refused with its errors and the running one stays. Listener, store and telemetry settings
//! need a restart; a reload that changes them says so.

use crate::checked;
use evmesh_core::component::SourceContext;
use evmesh_core::config::{Config, SourceSpec, SubscriptionConfig};
use evmesh_core::publish::Publish;
use evmesh_delivery::Supervisor;
use evmesh_ingress::PublishPath;
use evmesh_router::Origin;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running source: its spec as written, and how to stop it.
pub struct RunningSource {
    spec: SourceSpec,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningSource {
    pub fn start(
        spec: &SourceSpec,
        source: Box<dyn evmesh_core::component::Source>,
        publisher: &Arc<PublishPath>,
    ) -> RunningSource {
        let (stop, stop_rx) = watch::channel(false);
        let cx = SourceContext {
            name: spec.name.clone(),
            publisher: publisher.clone() as Arc<dyn Publish>,
            stop: stop_rx,
        };
        RunningSource {
            spec: spec.clone(),
            stop,
            task: tokio::spawn(source.run(cx)),
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub struct Reloader {
    pub path: Option<PathBuf>,
    pub current: Config,
    pub supervisor: Arc<Supervisor>,
    pub publisher: Arc<PublishPath>,
    pub sources: BTreeMap<String, RunningSource>,
    /// `--data-dir`, which overrides the file's `store.dataDir` at every load.
    pub data_dir: Option<PathBuf>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Reloader {
    /// The file's modification time and length, to notice a change.
    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(self.path.as_ref()?).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Reloads on SIGHUP and when the file changes (checked every `every`), until `stop`.
    pub async fn run(mut self, every: Duration, mut stop: watch::Receiver<bool>) -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGHUP handler; reload on file changes only");
                None
            }
        };
        let mut seen = self.stamp();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = stop.changed() => return self,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = tick.tick() => {
                    let now = self.stamp();
                    if now == seen || now.is_none() {
                        continue;
                    }
                    "the config file changed"
                }
            };
            seen = self.stamp();
            self.reload(why).await;
        }
    }

    /// Reads, checks and applies the config file once.
    pub async fn reload(&mut self, why: &str) -> Option<Applied> {
        let Some(path) = self.path.clone() else {
            tracing::warn!(
                "{why}: evmesh was started without --config; there is nothing to reload"
            );
            return None;
        };
        tracing::info!(file = %path.display(), "{why}: reloading the configuration");
        let (cfg, plan) = match checked(Some(&path)) {
            Ok(x) => x,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("reload refused: {e}");
                }
                tracing::error!(
                    errors = errors.len(),
                    "the new configuration was refused; the running one stays"
                );
                return None;
            }
        };
        let mut cfg = cfg;
        if let Some(d) = &self.data_dir {
            cfg.store.data_dir = d.clone();
        }
        let old = std::mem::replace(&mut self.current, cfg.clone());
        for (what, same) in [
            ("server", old.server == cfg.server),
            ("store", old.store == cfg.store),
            ("telemetry", old.telemetry == cfg.telemetry),
        ] {
            if !same {
                tracing::warn!("the `{what}` section changed; it takes effect at the next restart");
            }
        }
        let mut applied = Applied::default();
        let default_changed = old.delivery != cfg.delivery;
        if default_changed {
            self.supervisor.set_default_delivery(cfg.delivery.clone());
        }
        self.apply_subscriptions(&old, &cfg, default_changed, &mut applied)
            .await;
        self.apply_sources(&old, &cfg, plan.sources, &mut applied)
            .await;
        tracing::info!(
            added = ?applied.added,
            changed = ?applied.changed,
            removed = ?applied.removed,
            "configuration reloaded"
        );
        Some(applied)
    }

    async fn apply_subscriptions(
        &self,
        old: &Config,
        new: &Config,
        default_changed: bool,
        applied: &mut Applied,
    ) {
        let before: BTreeMap<&str, &SubscriptionConfig> = old
            .subscriptions
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        let after: BTreeMap<&str, &SubscriptionConfig> = new
            .subscriptions
            .iter()
            .map(|s| (s.name.as_str(), s))
            .collect();
        for name in before.keys().filter(|n| !after.contains_key(*n)) {
            if self.config_owned(name).await {
                self.supervisor.stop(name).await;
                applied.removed.push((*name).to_owned());
            }
        }
        for (name, sub) in &after {
            match before.get(name) {
                None => {
                    if let Some(r) = self.supervisor.route(name).await {
                        tracing::warn!(subscription = %name, origin = r.origin.as_str(), "a subscription of this name already runs; the config one is not started");
                        continue;
                    }
                    match self.supervisor.start((*sub).clone(), Origin::Config).await {
                        Ok(()) => applied.added.push((*name).to_owned()),
                        Err(e) => {
                            tracing::error!(subscription = %name, error = %e, "could not start an added subscription")
                        }
                    }
                }
                Some(was) => {
                    let uses_default = sub.delivery.is_none();
                    if *was == *sub && !(default_changed && uses_default) {
                        continue;
                    }
                    if !self.config_owned(name).await {
                        continue;
                    }
                    self.supervisor.stop(name).await;
                    match self.supervisor.start((*sub).clone(), Origin::Config).await {
                        Ok(()) => applied.changed.push((*name).to_owned()),
                        Err(e) => {
                            tracing::error!(subscription = %name, error = %e, "the changed subscription did not start; starting it as it was");
                            if let Err(e) =
                                self.supervisor.start((*was).clone(), Origin::Config).await
                            {
                                tracing::error!(subscription = %name, error = %e, "the subscription as it was did not start either");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether the running subscription `name` is the config file's to change.
    async fn config_owned(&self, name: &str) -> bool {
        self.supervisor
            .route(name)
            .await
            .is_some_and(|r| r.origin == Origin::Config)
    }

    async fn apply_sources(
        &mut self,
        old: &Config,
        new: &Config,
        mut built: Vec<(String, Box<dyn evmesh_core::component::SourceConfig>)>,
        applied: &mut Applied,
    ) {
        let wanted: BTreeMap<&str, &SourceSpec> =
            new.sources.iter().map(|s| (s.name.as_str(), s)).collect();
        let names: Vec<String> = self.sources.keys().cloned().collect();
        for name in names {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|s| self.sources.get(&name).is_some_and(|r| r.spec == **s));
            if !keep {
                if let Some(r) = self.sources.remove(&name) {
                    r.stop().await;
                }
                if !wanted.contains_key(name.as_str()) {
                    applied.removed.push(format!("sources/{name}"));
                }
            }
        }
        for (name, spec) in wanted {
            if self.sources.contains_key(name) {
                continue;
            }
            let Some(i) = built.iter().position(|(n, _)| n == name) else {
                continue;
            };
            let (_, cfg) = built.swap_remove(i);
            match cfg.build(name) {
                Ok(source) => {
                    self.sources.insert(
                        name.to_owned(),
                        RunningSource::start(spec, source, &self.publisher),
                    );
                    let label = format!("sources/{name}");
                    if old.sources.iter().any(|s| s.name == name) {
                        applied.changed.push(label);
                    } else {
                        applied.added.push(label);
                    }
                }
                Err(e) => tracing::error!(source = %name, error = %e, "could not start a source"),
            }
        }
    }
}
