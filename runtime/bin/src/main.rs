//! The `evmesh` binary: CLI, config loading, wiring, signals.

mod admin;
mod bench;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use evmesh_core::config::{self, Config, SinkConfig, StoreConfig};
use evmesh_core::transform::PluginLoader;
use evmesh_delivery::{SinkFactory, Supervisor};
use evmesh_ingress::{Ingest, IngestOptions};
use evmesh_router::Origin;
use evmesh_store::{EmbeddedStore, Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The hot path allocates small buffers per event; mimalloc handles that with less contention
/// than glibc's allocator (measured with `evmesh bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "evmesh",
    version,
    about = "A serverless event mesh: durable CloudEvents ingest, filtering and at-least-once delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mesh (HTTP ingest on 127.0.0.1:10105, admin on 127.0.0.1:10106 by default).
    Serve {
        /// YAML configuration file; every key can also be set as EVMESH_SECTION__KEY.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the event log and cursors live (overrides store.dataDir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration file and print every error with its path.
    Validate { file: PathBuf },
    /// Check a data directory offline: every segment's records and CRCs, every state file.
    Fsck {
        #[arg(long, default_value = "./evmesh-data")]
        data_dir: PathBuf,
    },
    /// Measure ingest and delivery throughput and latency against a real server on loopback.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve { config, data_dir } => {
            runtime().and_then(|rt| rt.block_on(serve(config, data_dir)))
        }
        Command::Validate { file } => validate(&file),
        Command::Fsck { data_dir } => fsck(&data_dir),
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(bench::run(args))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("evmesh: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// Loads the config file (or none) with environment overrides.
fn load_config(path: Option<&Path>) -> Result<Config, config::ConfigErrors> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            config::ConfigErrors(vec![config::ConfigError::new(
                "",
                format!("cannot read {}: {e}", p.display()),
            )])
        })?,
        None => String::new(),
    };
    config::load(&text, env_vars())
}

/// Builds running sinks from config: the one place that knows every connector.
pub fn sink_factory() -> SinkFactory {
    Arc::new(|cfg: &SinkConfig| match cfg {
        SinkConfig::Webhook(w) => evmesh_connector_webhook::WebhookSink::new(w)
            .map(|s| Arc::new(s) as Arc<dyn evmesh_core::sink::Sink>)
            .map_err(|e| e.to_string()),
        SinkConfig::Kafka(k) => evmesh_connector_kafka::KafkaSink::new(k)
            .map(|s| Arc::new(s) as Arc<dyn evmesh_core::sink::Sink>)
            .map_err(|e| e.to_string()),
    })
}

/// What only building the components finds: filter and transform compile errors, sinks
/// that cannot be built. Each with its path in the document.
fn component_errors(cfg: &Config) -> Vec<String> {
    let factory = sink_factory();
    let mut errors = Vec::new();
    let needs_plugins = cfg.subscriptions.iter().any(|s| {
        s.filters
            .iter()
            .any(|f| matches!(f, config::FilterConfig::Wasm(_)))
            || s.transforms
                .iter()
                .any(|t| matches!(t, config::TransformConfig::Wasm(_)))
    });
    let loader: Option<Box<dyn PluginLoader>> = if needs_plugins {
        match evmesh_plugin_host::PluginEngine::new(None) {
            Ok(engine) => Some(Box::new(evmesh_plugin_host::WasmLoader::new(engine, None))),
            Err(e) => {
                errors.push(format!("plugins: {e}"));
                None
            }
        }
    } else {
        None
    };
    for (i, s) in cfg.subscriptions.iter().enumerate() {
        if let Err(e) = evmesh_router::Route::compile_with(
            s.clone(),
            Origin::Config,
            cfg.delivery.as_ref(),
            loader.as_deref(),
        ) {
            errors.extend(e.errors().iter().map(|e| format!("subscriptions[{i}].{e}")));
        }
        if let Err(e) = factory(&s.sink) {
            errors.push(format!("subscriptions[{i}].sink: {e}"));
        }
    }
    errors
}

fn validate(file: &Path) -> Result<std::process::ExitCode> {
    match load_config(Some(file)) {
        Ok(cfg) => {
            let errors = component_errors(&cfg);
            if errors.is_empty() {
                println!(
                    "{}: ok ({} subscriptions)",
                    file.display(),
                    cfg.subscriptions.len()
                );
                Ok(std::process::ExitCode::SUCCESS)
            } else {
                for e in errors {
                    println!("{e}");
                }
                Ok(std::process::ExitCode::FAILURE)
            }
        }
        Err(errs) => {
            for e in &errs.0 {
                println!("{e}");
            }
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

fn fsck(dir: &Path) -> Result<std::process::ExitCode> {
    let report = evmesh_store::fsck(dir).with_context(|| format!("checking {}", dir.display()))?;
    println!(
        "checked {} segments, {} records",
        report.segments, report.records
    );
    for p in &report.torn_tails {
        println!(
            "torn tail (repaired at next start): {} at byte {} (offset {})",
            p.segment.display(),
            p.byte_offset,
            p.record
        );
    }
    for p in &report.corrupt {
        println!(
            "CORRUPT: topic {} segment {} at byte {} (offset {}): {}",
            p.topic,
            p.segment.display(),
            p.byte_offset,
            p.record,
            p.reason
        );
    }
    for q in &report.quarantined {
        println!("QUARANTINED: {}", q.display());
    }
    for s in &report.bad_state_files {
        println!("BAD STATE FILE: {s}");
    }
    if report.is_clean() {
        println!("clean");
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        Ok(std::process::ExitCode::FAILURE)
    }
}

async fn serve(
    config_path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> Result<std::process::ExitCode> {
    let mut cfg = match load_config(config_path.as_deref()) {
        Ok(c) => c,
        Err(errs) => bail!("invalid configuration:\n{errs}"),
    };
    let errors = component_errors(&cfg);
    if !errors.is_empty() {
        bail!("invalid configuration:\n{}", errors.join("\n"));
    }
    if let Some(d) = data_dir {
        cfg.store.set_data_dir(d);
    }
    // Relative paths are taken against the working directory at start-up, once.
    let data_dir = std::path::absolute(cfg.store.data_dir())
        .with_context(|| format!("resolving {}", cfg.store.data_dir().display()))?;
    cfg.store.set_data_dir(data_dir.clone());
    let store: Arc<dyn Store> = match &cfg.store {
        StoreConfig::Embedded(sc) => {
            let opts = StoreOptions {
                data_dir: sc.data_dir.clone(),
                fsync: sc.fsync,
                fsync_interval: sc.fsync_interval.0,
                segment_bytes: sc.segment_bytes,
                retention: sc.retention.map(|r| r.0),
                max_record_bytes: sc.max_record_bytes,
            };
            let store = EmbeddedStore::open(opts)
                .with_context(|| format!("opening the store in {}", sc.data_dir.display()))?;
            tracing::info!(data_dir = %sc.data_dir.display(), fsync = ?sc.fsync, "store opened");
            Arc::new(store)
        }
        StoreConfig::Kafka(kc) => {
            let store = evmesh_connector_kafka::KafkaStore::open(kc)
                .await
                .with_context(|| format!("connecting to the Kafka store at {}", kc.brokers))?;
            tracing::info!(brokers = %kc.brokers, topic_prefix = %kc.topic_prefix, "kafka store opened");
            Arc::new(store)
        }
    };
    let drain = cfg.server.shutdown_timeout.0;
    let engine = evmesh_plugin_host::PluginEngine::new(Some(&data_dir.join("plugin-cache")))
        .context("starting the WASM plugin engine")?;
    let loader: Arc<dyn PluginLoader> = Arc::new(evmesh_plugin_host::WasmLoader::new(
        engine,
        Some(Duration::from_secs(1)),
    ));
    let supervisor = Supervisor::new(
        store.clone(),
        sink_factory(),
        cfg.delivery.clone(),
        drain,
        Some(loader),
    );
    for s in &cfg.subscriptions {
        supervisor
            .start(s.clone(), Origin::Config)
            .await
            .with_context(|| format!("starting subscription {:?}", s.name))?;
    }
    for s in store.load_api_subscriptions()? {
        if cfg.subscriptions.iter().any(|c| c.name == s.name) {
            tracing::warn!(subscription = %s.name, "an API-created subscription has the name of a config one; the config one wins");
            continue;
        }
        if let Err(e) = supervisor.start(s.clone(), Origin::Api).await {
            tracing::error!(subscription = %s.name, error = %e, "could not restart an API-created subscription");
        }
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sources = Vec::new();
    for src in &cfg.sources {
        match src {
            config::SourceConfig::Kafka(k) => {
                let source = evmesh_connector_kafka::KafkaSource::new(k)
                    .with_context(|| format!("starting source {:?}", k.name))?;
                sources.push(tokio::spawn(source.run(store.clone(), stop_rx.clone())));
            }
        }
    }
    let ingest = Ingest::new(
        store.clone(),
        IngestOptions {
            max_body_bytes: cfg.server.max_body_bytes,
        },
    );
    let http = evmesh_ingress::serve(&cfg.server.http, ingest, stop_rx.clone(), drain).await?;
    tracing::info!("http ingest listening on {}", http.addr);
    let admin_state =
        admin::Admin::new(store.clone(), supervisor.clone(), cfg.server.max_body_bytes);
    let admin =
        evmesh_ingress::serve(&cfg.server.admin, admin_state, stop_rx.clone(), drain).await?;
    tracing::info!("admin listening on {}", admin.addr);
    let gc = supervisor.spawn_gc(Duration::from_secs(5), stop_rx.clone());

    wait_for_signal().await?;
    tracing::info!("shutting down: no new requests; finishing in-flight deliveries");
    let _ = stop_tx.send(true);
    let _ = http.task.await;
    let _ = admin.task.await;
    for s in sources {
        let _ = s.await;
    }
    supervisor.shutdown().await;
    let _ = gc.await;
    store.close().await;
    tracing::info!("shutdown complete");
    Ok(std::process::ExitCode::SUCCESS)
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
