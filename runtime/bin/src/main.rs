//! The `evmesh` binary: CLI, config loading, wiring, signals. The components it can run are
//! listed in [`registry`]; [`plan`] checks a configuration against them.

mod admin;
mod cli;
mod plan;
mod registry;
mod reload;
mod sidecar;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use evmesh_core::config::{self, Config};
use evmesh_core::transform::PluginLoader;
use evmesh_delivery::Supervisor;
use evmesh_ingress::listener::{HttpRoutes, ListenerContext, Shared};
use evmesh_ingress::reply::Replies;
use evmesh_ingress::PublishPath;
use evmesh_router::Origin;
use evmesh_store::{EventLog, LogContext, StateDir, StateStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The hot path allocates small buffers per event; mimalloc handles that with less contention
/// than glibc's allocator (measured with `evmesh-bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "evmesh",
    version,
    about = "A serverless event mesh: durable CloudEvents ingest, filtering and at-least-once delivery"
)]
struct Cli {
    /// How log lines are written to stderr: `text` for a person, `json` (one object a line)
    /// for a log pipeline.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mesh (HTTP ingest on 127.0.0.1:10105, admin on 127.0.0.1:10106 by default).
    Serve {
        /// YAML configuration file; every key can also be set as EVMESH_SECTION__KEY.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the event log and state live (overrides store.dataDir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// `sidecar`: beside one application (loopback listeners, one worker thread,
        /// forwarding to --upstream); `standalone`: a broker.
        #[arg(long, env = "EVMESH_PROFILE", value_enum, default_value_t = sidecar::Profile::Standalone)]
        profile: sidecar::Profile,
        /// Forward every topic to this upstream at least once: another evmesh
        /// (http://HOST:PORT) or Kafka (kafka://HOST:PORT[,…]). Required with --profile sidecar.
        #[arg(long, env = "EVMESH_UPSTREAM")]
        upstream: Option<String>,
    },
    /// Publish one event to a running evmesh (binary mode over HTTP).
    Publish(cli::PublishArgs),
    /// Follow a topic: print each event as it is stored (structured JSON, one a line).
    Tail(cli::TailArgs),
    /// The subscriptions of a running evmesh.
    Subscriptions {
        #[command(subcommand)]
        cmd: cli::SubscriptionsCmd,
    },
    /// A subscription's dead-letter list: list it, deliver it again.
    Deadletters {
        #[command(subcommand)]
        cmd: cli::DeadlettersCmd,
    },
    /// Check a configuration file and print every error with its path.
    Validate { file: PathBuf },
    /// Check a data directory offline: every segment's records and CRCs, every state file.
    Fsck {
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// The log filter: `RUST_LOG` (default `info`). The RocketMQ client logs its routine work
/// (heartbeats, rebalances, shutdown reports) at info and warn; evmesh reports what matters of
/// it itself, so the client is held to errors unless `RUST_LOG` names it.
fn log_filter(rust_log: Option<&str>) -> String {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    if spec.contains("rocketmq") {
        spec.to_owned()
    } else {
        format!("{spec},rocketmq_client_rust=error,rocketmq_transport=error,rocketmq_runtime=error")
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    let result = match cli.command {
        Command::Serve {
            config,
            data_dir,
            profile,
            upstream,
        } => serve_command(config, data_dir, profile, upstream.as_deref()),
        Command::Validate { file } => validate(&file),
        Command::Publish(a) => client(cli::publish(a)),
        Command::Tail(a) => client(cli::tail(a)),
        Command::Subscriptions { cmd } => client(cli::subscriptions(cmd)),
        Command::Deadletters { cmd } => client(cli::deadletters(cmd)),
        Command::Fsck { data_dir } => fsck(&data_dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("evmesh: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a client command on a small runtime; exit 0 when it succeeded.
fn client(f: impl std::future::Future<Output = Result<()>>) -> Result<std::process::ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn serve_command(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    profile: sidecar::Profile,
    upstream: Option<&str>,
) -> Result<std::process::ExitCode> {
    let upstream = upstream
        .map(sidecar::Upstream::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let rt = match profile {
        sidecar::Profile::Standalone => runtime()?,
        sidecar::Profile::Sidecar => {
            if upstream.is_none() {
                bail!("--profile sidecar needs --upstream (or EVMESH_UPSTREAM): where to forward what the application publishes");
            }
            small_allocator();
            // Small and quick to start: one worker thread (TOKIO_WORKER_THREADS overrides),
            // few blocking threads.
            let workers = std::env::var("TOKIO_WORKER_THREADS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(1);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .max_blocking_threads(4)
                .enable_all()
                .build()
                .context("starting the async runtime")?
        }
    };
    rt.block_on(serve(config, data_dir, profile, upstream))
}

/// mimalloc commits its first arena eagerly (about 8 MB resident at idle). A sidecar asks it
/// not to; the allocator reads the setting when the process starts, so evmesh starts itself
/// again once with it set (same process id, same arguments; a few milliseconds). Set
/// `MIMALLOC_ARENA_EAGER_COMMIT` yourself to choose otherwise.
fn small_allocator() {
    const VAR: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "0")
        .exec();
    // `exec` returns only when it failed: go on with the allocator as it is.
    tracing::warn!(error = %err, "could not restart with a smaller allocator footprint; going on");
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
    config::parse(&text, env_vars())
}

/// The configuration with every component checked; every error with its path.
fn checked(path: Option<&Path>) -> Result<(Config, plan::Plan), Vec<String>> {
    // Rendered once each: the document's checks and a component's may see the same problem.
    let render = |errs: &[config::ConfigError]| {
        let mut out: Vec<String> = Vec::new();
        for e in errs.iter().map(ToString::to_string) {
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    };
    let cfg = load_config(path).map_err(|errs| render(&errs.0))?;
    let mut errors = config::check(&cfg);
    match plan::plan(&cfg) {
        Ok(plan) if errors.is_empty() => Ok((cfg, plan)),
        Ok(_) => Err(render(&errors)),
        Err(more) => {
            errors.extend(more);
            Err(render(&errors))
        }
    }
}

fn validate(file: &Path) -> Result<std::process::ExitCode> {
    match checked(Some(file)) {
        Ok((cfg, _)) => {
            println!(
                "{}: ok ({} subscriptions)",
                file.display(),
                cfg.subscriptions.len()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in errors {
                println!("{e}");
            }
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

fn fsck(dir: &Path) -> Result<std::process::ExitCode> {
    let report = evmesh_log::fsck(dir).with_context(|| format!("checking {}", dir.display()))?;
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
    profile: sidecar::Profile,
    upstream: Option<sidecar::Upstream>,
) -> Result<std::process::ExitCode> {
    let (mut cfg, plan) = match checked(config_path.as_deref()) {
        Ok(x) => x,
        Err(errors) => bail!("invalid configuration:\n{}", errors.join("\n")),
    };
    let data_dir_flag = data_dir.clone();
    if let Some(d) = data_dir {
        cfg.store.data_dir = d;
    }
    if evmesh_telemetry::init(&cfg.telemetry.tracing) {
        tracing::info!(
            endpoint = cfg
                .telemetry
                .tracing
                .otlp_endpoint
                .as_deref()
                .unwrap_or_default(),
            sample_ratio = cfg.telemetry.tracing.sample_ratio,
            "tracing: exporting spans over OTLP/HTTP"
        );
    }
    // Relative paths are taken against the working directory at start-up, once.
    let data_dir = std::path::absolute(&cfg.store.data_dir)
        .with_context(|| format!("resolving {}", cfg.store.data_dir.display()))?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let state: Arc<dyn StateStore> = Arc::new(
        StateDir::open(&data_dir)
            .with_context(|| format!("opening the state in {}", data_dir.display()))?,
    );
    let log: Arc<dyn EventLog> = plan
        .log
        .open(LogContext {
            data_dir: data_dir.clone(),
            state: state.clone(),
        })
        .await
        .map_err(anyhow::Error::msg)?;
    let drain = cfg.server.shutdown_timeout.0;
    // The engine starts with the first plugin a subscription uses.
    let loader: Arc<dyn PluginLoader> = Arc::new(evmesh_plugin_host::WasmLoader::lazy(
        Some(&data_dir.join("plugin-cache")),
        Some(Duration::from_secs(1)),
    ));
    let supervisor = Supervisor::new(
        log.clone(),
        state.clone(),
        plan::sink_factory(),
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
    for s in admin::load_api_subscriptions(state.as_ref())? {
        if cfg.subscriptions.iter().any(|c| c.name == s.name) {
            tracing::warn!(subscription = %s.name, "an API-created subscription has the name of a config one; the config one wins");
            continue;
        }
        if let Err(e) = supervisor.start(s.clone(), Origin::Api).await {
            tracing::error!(subscription = %s.name, error = %e, "could not restart an API-created subscription");
        }
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publisher = PublishPath::new(log.clone());
    let mut sources = std::collections::BTreeMap::new();
    for (name, src) in plan.sources {
        let source = src
            .build(&name)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("starting source {name:?}"))?;
        let Some(spec) = cfg.sources.iter().find(|s| s.name == name) else {
            bail!("source {name:?} is planned but not in the configuration");
        };
        sources.insert(
            name.clone(),
            reload::RunningSource::start(spec, source, &publisher),
        );
    }
    let reloader = reload::Reloader {
        path: config_path.clone(),
        current: cfg.clone(),
        supervisor: supervisor.clone(),
        publisher: publisher.clone(),
        sources,
        data_dir: data_dir_flag,
    };
    let instance = instance_id(state.as_ref())?;
    let replies = Replies::start(&supervisor, publisher.clone(), &instance)
        .await
        .context("starting request-reply")?;
    let lcx = ListenerContext {
        publisher,
        supervisor: supervisor.clone(),
        log: log.clone(),
        state,
        replies,
        sinks: plan::sink_factory(),
        routes: Arc::new(HttpRoutes::default()),
        instance,
        shared: Arc::new(Shared::default()),
        max_body_bytes: cfg.server.max_body_bytes,
        drain,
        stop: stop_rx.clone(),
    };
    for install in registry::protocols() {
        install(&lcx).await.map_err(anyhow::Error::msg)?;
    }
    let readiness = admin::Readiness::of(&lcx)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut listeners = Vec::new();
    for (key, l) in plan.listeners {
        if !l.enabled() {
            tracing::info!("the {key} listener is off");
            continue;
        }
        let h = l
            .start(lcx.clone())
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("starting the {key} listener (server.{key})"))?;
        tracing::info!("{} listening on {}", l.label(), h.addr);
        if profile == sidecar::Profile::Sidecar && !h.addr.ip().is_loopback() {
            tracing::warn!("sidecar profile: the {key} listener is on {}, reachable from outside this host; a sidecar usually listens on 127.0.0.1 only", h.addr);
        }
        listeners.push(h);
    }
    let forwarding =
        upstream.map(|u| sidecar::forward(u, supervisor.clone(), log.clone(), stop_rx.clone()));
    let gc = supervisor.spawn_gc(Duration::from_secs(5), stop_rx.clone());
    let reloading = tokio::spawn(reloader.run(Duration::from_secs(1), stop_rx.clone()));
    readiness.set_ready();
    tracing::info!("evmesh ready");

    wait_for_signal().await?;
    tracing::info!("shutting down: no new requests; finishing in-flight deliveries");
    let _ = stop_tx.send(true);
    for l in listeners {
        let _ = l.task.await;
    }
    if let Some(f) = forwarding {
        let _ = f.await;
    }
    if let Ok(reloader) = reloading.await {
        for (_, s) in reloader.sources {
            s.stop().await;
        }
    }
    supervisor.shutdown().await;
    let _ = gc.await;
    log.close().await;
    tracing::info!("shutdown complete");
    Ok(std::process::ExitCode::SUCCESS)
}

/// This instance's stable id, made once and kept in the state store (it names the instance's
/// request-reply topic).
fn instance_id(state: &dyn StateStore) -> Result<String> {
    const DOC: &str = "instance-id";
    if let Some(b) = state.load_document(DOC)? {
        let id = String::from_utf8_lossy(&b).trim().to_owned();
        if config::validate_name(&id).is_ok() {
            return Ok(id);
        }
    }
    let id = format!("{:016x}", fastrand::u64(..));
    state.save_document(DOC, id.as_bytes())?;
    Ok(id)
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

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn the_rocketmq_client_is_held_to_errors_unless_rust_log_names_it() {
        assert_eq!(
            log_filter(None),
            "info,rocketmq_client_rust=error,rocketmq_transport=error,rocketmq_runtime=error"
        );
        assert!(log_filter(Some("debug")).starts_with("debug,rocketmq_client_rust=error"));
        assert_eq!(
            log_filter(Some("info,rocketmq_client_rust=debug")),
            "info,rocketmq_client_rust=debug"
        );
        assert!(log_filter(Some("  ")).starts_with("info,"));
    }
}
