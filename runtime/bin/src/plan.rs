//! The whole configuration checked against the registry before anything starts: each
//! component's settings parsed and checked by its own code, every subscription compiled, every
//! problem reported at once with its path in the document.

use crate::registry;
use evmesh_core::component::{SinkConfig, SinkContext, SourceConfig};
use evmesh_core::config::{Config, ConfigError, FilterConfig, TransformConfig};
use evmesh_core::transform::PluginLoader;
use evmesh_delivery::SinkFactory;
use evmesh_ingress::listener::ListenerConfig;
use evmesh_router::Origin;
use evmesh_store::LogConfig;
use std::sync::{Arc, LazyLock};

static SINKS: LazyLock<evmesh_core::component::Kinds<dyn SinkConfig>> =
    LazyLock::new(registry::sinks);

/// What the configuration asks to run, checked.
pub struct Plan {
    pub log: Box<dyn LogConfig>,
    pub sources: Vec<(String, Box<dyn SourceConfig>)>,
    /// In the registry's order, each with its key under `server:`.
    pub listeners: Vec<(&'static str, Box<dyn ListenerConfig>)>,
}

/// The keys of `server:` that are not a listener's.
const SERVER_KEYS: &[&str] = &["maxBodyBytes", "shutdownTimeout"];

/// Checks everything; `Err` holds every problem found.
pub fn plan(cfg: &Config) -> Result<Plan, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let log = registry::logs()
        .parse(&cfg.store.log, "store")
        .map_err(|e| errors.extend(e))
        .ok();
    let kinds = registry::sources();
    let mut sources = Vec::new();
    for (i, s) in cfg.sources.iter().enumerate() {
        match kinds.parse(&s.spec, &format!("sources[{i}]")) {
            Ok(c) => sources.push((s.name.clone(), c)),
            Err(e) => errors.extend(e),
        }
    }
    let entries = registry::listeners();
    for key in cfg.server.listeners.keys() {
        if !entries.iter().any(|e| e.key == key) {
            let mut known: Vec<&str> = entries.iter().map(|e| e.key).collect();
            known.extend(SERVER_KEYS);
            known.sort_unstable();
            errors.push(ConfigError::new(
                format!("server.{key}"),
                format!("unknown key (known: {})", known.join(", ")),
            ));
        }
    }
    let mut listeners = Vec::new();
    for e in &entries {
        let value = cfg
            .server
            .listeners
            .get(e.key)
            .cloned()
            .unwrap_or_else(e.default);
        match e.parse(value, &format!("server.{}", e.key)) {
            Ok(l) => listeners.push((e.key, l)),
            Err(errs) => errors.extend(errs),
        }
    }
    if let Some(d) = cfg
        .delivery
        .as_ref()
        .and_then(|d| d.dead_letter_sink.as_ref())
    {
        errors.extend(
            SINKS
                .parse(d, "delivery.deadLetterSink")
                .err()
                .unwrap_or_default(),
        );
    }
    errors.extend(subscription_errors(cfg));
    match log {
        Some(log) if errors.is_empty() => Ok(Plan {
            log,
            sources,
            listeners,
        }),
        _ => Err(errors),
    }
}

/// What only compiling the subscriptions finds (filter and transform errors, plugins that do
/// not load) and their sinks' own checks.
fn subscription_errors(cfg: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let needs_plugins = cfg.subscriptions.iter().any(|s| {
        s.filters.iter().any(|f| matches!(f, FilterConfig::Wasm(_)))
            || s.transforms
                .iter()
                .any(|t| matches!(t, TransformConfig::Wasm(_)))
    });
    let loader: Option<Box<dyn PluginLoader>> = if needs_plugins {
        match evmesh_plugin_host::PluginEngine::new(None) {
            Ok(engine) => Some(Box::new(evmesh_plugin_host::WasmLoader::new(engine, None))),
            Err(e) => {
                errors.push(ConfigError::new("plugins", e.to_string()));
                None
            }
        }
    } else {
        None
    };
    for (i, s) in cfg.subscriptions.iter().enumerate() {
        let base = format!("subscriptions[{i}]");
        if let Err(e) = evmesh_router::Route::compile_with(
            s.clone(),
            Origin::Config,
            cfg.delivery.as_ref(),
            loader.as_deref(),
        ) {
            errors.extend(e.errors().iter().cloned().map(|e| e.under(&base)));
        }
        errors.extend(sink_errors(s, &base));
    }
    errors
}

/// The checks of a subscription's sink and dead-letter sink (by their own components).
pub fn sink_errors(s: &evmesh_core::config::SubscriptionConfig, base: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    errors.extend(
        SINKS
            .parse(&s.sink, format!("{base}.sink").trim_start_matches('.'))
            .err()
            .unwrap_or_default(),
    );
    if let Some(d) = s
        .delivery
        .as_ref()
        .and_then(|d| d.dead_letter_sink.as_ref())
    {
        let path = format!("{base}.delivery.deadLetterSink");
        errors.extend(
            SINKS
                .parse(d, path.trim_start_matches('.'))
                .err()
                .unwrap_or_default(),
        );
    }
    errors
}

/// Builds running sinks from their specs, for the supervisor.
pub fn sink_factory() -> SinkFactory {
    Arc::new(|spec, cx: &SinkContext| {
        let cfg = SINKS.parse(spec, "sink").map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        cfg.build(cx)
    })
}
