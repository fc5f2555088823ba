//! The wasmtime host for evmesh plugins (`plugins/wit`).
//!
//! - One [`PluginEngine`]: component model, the pooling instance allocator, epoch interruption
//!   driven by a 1 ms ticker thread, and wasmtime's on-disk compilation cache (keyed by the
//!   component's hash and the engine's settings), so a restart does not recompile.
//! - Each plugin is compiled once into an `InstancePre`; instances are created from it, kept and
//!   reused across batches, each in its own `Store` with a memory cap (`StoreLimits`) and a
//!   deadline per call (epochs).
//! - A call that traps, runs past its deadline or grows memory past the cap fails that batch
//!   only: the instance is thrown away and the next batch gets a fresh one.
//! - Hot reload: the file is watched; a changed component is compiled and swapped in between
//!   batches, so no batch runs half on the old and half on the new plugin.

use evmesh_core::config::WasmPluginConfig;
use evmesh_core::filter::BatchFilter;
use evmesh_core::transform::{BatchTransform, PluginLoader, Routed};
use evmesh_core::{Data, DataKind, Event, ExtValue, SpecVersion};
use evmesh_plugin_frame as frame;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod filter_bindings {
    wasmtime::component::bindgen!({ world: "filter", path: "../wit" });
}

mod transform_bindings {
    wasmtime::component::bindgen!({ world: "transform", path: "../wit" });
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("plugin {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// Milliseconds per epoch tick.
const TICK: Duration = Duration::from_millis(1);

/// The shared engine and its epoch ticker.
pub struct PluginEngine {
    engine: Engine,
    stop: Arc<AtomicBool>,
}

impl PluginEngine {
    /// `cache_dir`: where compiled components are kept between runs.
    pub fn new(cache_dir: Option<&Path>) -> Result<Arc<PluginEngine>, PluginError> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true);
        cfg.epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(512)
            .total_core_instances(1024)
            .total_memories(1024)
            .total_tables(1024)
            .max_memory_size(1 << 30);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if let Some(dir) = cache_dir {
            // wasmtime wants an absolute cache path; a relative one is taken against the
            // working directory, like every other path evmesh is given.
            let dir = std::path::absolute(dir).map_err(|e| {
                PluginError::Engine(format!("compile cache in {}: {e}", dir.display()))
            })?;
            let mut cc = wasmtime::CacheConfig::new();
            cc.with_directory(&dir);
            let cache = wasmtime::Cache::new(cc).map_err(|e| {
                PluginError::Engine(format!("compile cache in {}: {e}", dir.display()))
            })?;
            cfg.cache(Some(cache));
        }
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Engine(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e2, s2) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("evmesh-wasm-epoch".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e2.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("starting the epoch ticker: {e}")))?;
        Ok(Arc::new(PluginEngine { engine, stop }))
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: Arc<str>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn host_log(plugin: &str, level: u8, message: &str) {
    match level {
        0 | 1 => tracing::debug!(plugin, "{message}"),
        2 => tracing::info!(plugin, "{message}"),
        3 => tracing::warn!(plugin, "{message}"),
        _ => tracing::error!(plugin, "{message}"),
    }
}

impl filter_bindings::evmesh::plugin::host::Host for State {
    fn log(&mut self, level: filter_bindings::evmesh::plugin::host::Level, message: String) {
        host_log(&self.plugin, level as u8, &message)
    }
    fn counter(&mut self, name: String, delta: u64) {
        tracing::debug!(plugin = %self.plugin, counter = %name, delta, "plugin counter");
    }
}

impl transform_bindings::evmesh::plugin::host::Host for State {
    fn log(&mut self, level: transform_bindings::evmesh::plugin::host::Level, message: String) {
        host_log(&self.plugin, level as u8, &message)
    }
    fn counter(&mut self, name: String, delta: u64) {
        tracing::debug!(plugin = %self.plugin, counter = %name, delta, "plugin counter");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Filter,
    Transform,
}

enum Pre {
    Filter(filter_bindings::FilterPre<State>),
    Transform(transform_bindings::TransformPre<State>),
}

enum Bound {
    Filter(filter_bindings::Filter),
    Transform(transform_bindings::Transform),
}

struct Loaded {
    gen: u64,
    pre: Pre,
    stamp: (SystemTime, u64),
}

struct Instance {
    gen: u64,
    store: Store<State>,
    bound: Bound,
}

/// One loaded plugin with its instances.
pub struct Plugin {
    engine: Arc<PluginEngine>,
    kind: Kind,
    path: PathBuf,
    name: Arc<str>,
    config: Vec<(String, String)>,
    max_memory: usize,
    timeout_ticks: u64,
    current: RwLock<Arc<Loaded>>,
    idle: Mutex<Vec<Instance>>,
    gens: AtomicU64,
    /// `evmesh_plugin_calls_total` and `evmesh_plugin_call_duration_seconds` (atomics).
    metrics: evmesh_metrics::PluginMetrics,
}

fn stamp(path: &Path) -> Result<(SystemTime, u64), std::io::Error> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len()))
}

impl Plugin {
    fn load(
        engine: &Arc<PluginEngine>,
        kind: Kind,
        cfg: &WasmPluginConfig,
    ) -> Result<Arc<Plugin>, PluginError> {
        let err = |message: String| PluginError::Load {
            path: cfg.uses.clone(),
            message,
        };
        // Relative to the working directory at load, so a later change of it cannot move it.
        let path = std::path::absolute(&cfg.uses).unwrap_or_else(|_| cfg.uses.clone());
        let first = compile(engine, kind, &path, 1).map_err(err)?;
        let p = Arc::new(Plugin {
            engine: engine.clone(),
            kind,
            path,
            name: Arc::from(cfg.uses.display().to_string()),
            config: cfg
                .with
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_memory: cfg.max_memory,
            timeout_ticks: (cfg.timeout.0.as_millis() as u64).max(1),
            current: RwLock::new(Arc::new(first)),
            idle: Mutex::new(Vec::new()),
            gens: AtomicU64::new(1),
            metrics: evmesh_metrics::global().plugin(&cfg.uses.display().to_string()),
        });
        // Instantiate once now, so a plugin that cannot start is a configuration error.
        let inst = p.instantiate().map_err(err)?;
        p.checkin(inst);
        Ok(p)
    }

    fn instantiate(&self) -> Result<Instance, String> {
        let loaded = self
            .current
            .read()
            .map_err(|_| "plugin state poisoned".to_owned())?
            .clone();
        let state = State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.max_memory)
                .instances(16)
                .trap_on_grow_failure(true)
                .build(),
            plugin: self.name.clone(),
        };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.timeout_ticks.saturating_mul(10));
        let bound = match &loaded.pre {
            Pre::Filter(p) => {
                let b = p
                    .instantiate(&mut store)
                    .map_err(|e| format!("instantiating: {e:#}"))?;
                b.call_init(&mut store, &self.config)
                    .map_err(|e| format!("init trapped: {e:#}"))?
                    .map_err(|e| format!("init refused the configuration: {e}"))?;
                Bound::Filter(b)
            }
            Pre::Transform(p) => {
                let b = p
                    .instantiate(&mut store)
                    .map_err(|e| format!("instantiating: {e:#}"))?;
                b.call_init(&mut store, &self.config)
                    .map_err(|e| format!("init trapped: {e:#}"))?
                    .map_err(|e| format!("init refused the configuration: {e}"))?;
                Bound::Transform(b)
            }
        };
        Ok(Instance {
            gen: loaded.gen,
            store,
            bound,
        })
    }

    fn checkout(&self) -> Result<Instance, String> {
        let gen = self.current.read().map(|c| c.gen).unwrap_or(0);
        loop {
            let i = self.idle.lock().ok().and_then(|mut v| v.pop());
            match i {
                Some(i) if i.gen == gen => return Ok(i),
                Some(_) => continue,
                None => return self.instantiate(),
            }
        }
    }

    fn checkin(&self, i: Instance) {
        let gen = self.current.read().map(|c| c.gen).unwrap_or(0);
        if i.gen == gen {
            if let Ok(mut v) = self.idle.lock() {
                if v.len() < 8 {
                    v.push(i);
                }
            }
        }
    }

    /// Runs one call on a pooled instance; a trap or a deadline discards the instance.
    fn call(&self, frame: &[u8]) -> Result<Vec<u8>, String> {
        let began = std::time::Instant::now();
        let r = self.call_pooled(frame);
        self.metrics.call(began.elapsed(), r.is_ok());
        r
    }

    fn call_pooled(&self, frame: &[u8]) -> Result<Vec<u8>, String> {
        let mut inst = self.checkout()?;
        inst.store.set_epoch_deadline(self.timeout_ticks);
        let frame = frame.to_vec();
        let r = match &inst.bound {
            Bound::Filter(b) => b.call_filter_batch(&mut inst.store, &frame),
            Bound::Transform(b) => b.call_transform_batch(&mut inst.store, &frame),
        };
        match r {
            Ok(Ok(out)) => {
                self.checkin(inst);
                Ok(out)
            }
            Ok(Err(msg)) => {
                self.checkin(inst);
                Err(format!("plugin {} failed the batch: {msg}", self.name))
            }
            Err(trap) => {
                // One line for the dead-letter reason: the trap kind, or the root cause
                // (the full error carries a multi-line wasm backtrace, logged at debug).
                tracing::debug!(plugin = %self.name, error = ?trap, "plugin trap details");
                let why = match trap.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => {
                        format!("ran past its {} ms deadline", self.timeout_ticks)
                    }
                    Some(t) => format!("wasm trap: {t}"),
                    None => trap.root_cause().to_string(),
                };
                tracing::warn!(plugin = %self.name, reason = %why, "plugin trapped; its instance is discarded");
                Err(format!("plugin {} trapped: {why}", self.name))
            }
        }
    }

    /// Recompiles when the file changed; returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.path).map_err(|e| e.to_string())?;
        let old = self
            .current
            .read()
            .map(|c| c.stamp)
            .map_err(|_| "poisoned".to_owned())?;
        if now == old {
            return Ok(false);
        }
        let gen = self.gens.fetch_add(1, Ordering::SeqCst) + 1;
        let loaded = compile(&self.engine, self.kind, &self.path, gen)?;
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(loaded);
        }
        if let Ok(mut v) = self.idle.lock() {
            v.clear();
        }
        tracing::info!(plugin = %self.name, "plugin reloaded");
        Ok(true)
    }

    /// Watches the file and reloads on change until the plugin is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            let Some(p) = weak.upgrade() else { return };
            if let Err(e) = p.reload_if_changed() {
                tracing::warn!(plugin = %p.name, error = %e, "plugin reload failed; keeping the loaded version");
            }
        });
    }
}

fn compile(engine: &PluginEngine, kind: Kind, path: &Path, gen: u64) -> Result<Loaded, String> {
    let st = stamp(path).map_err(|e| format!("cannot read the component: {e}"))?;
    let component = Component::from_file(&engine.engine, path)
        .map_err(|e| format!("not a valid component: {e:#}"))?;
    let mut linker: Linker<State> = Linker::new(&engine.engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(|e| format!("linking WASI: {e:#}"))?;
    let pre =
        match kind {
            Kind::Filter => {
                filter_bindings::Filter::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
                    .map_err(|e| format!("linking the host interface: {e:#}"))?;
                let ip = linker
                    .instantiate_pre(&component)
                    .map_err(|e| format!("the component does not fit the filter world: {e:#}"))?;
                Pre::Filter(filter_bindings::FilterPre::new(ip).map_err(|e| {
                    format!("the component does not export the filter world: {e:#}")
                })?)
            }
            Kind::Transform => {
                transform_bindings::Transform::add_to_linker::<State, HasSelf<State>>(
                    &mut linker,
                    |s| s,
                )
                .map_err(|e| format!("linking the host interface: {e:#}"))?;
                let ip = linker.instantiate_pre(&component).map_err(|e| {
                    format!("the component does not fit the transform world: {e:#}")
                })?;
                Pre::Transform(transform_bindings::TransformPre::new(ip).map_err(|e| {
                    format!("the component does not export the transform world: {e:#}")
                })?)
            }
        };
    Ok(Loaded {
        gen,
        pre,
        stamp: st,
    })
}

fn encode_events(events: &[&Event]) -> Vec<u8> {
    let mut f = Vec::with_capacity(events.len() * 256);
    frame::begin_events(events.len(), &mut f);
    for e in events {
        frame::encode_event(
            frame::EventParts {
                specversion: e.specversion.as_str(),
                id: &e.id,
                source: &e.source,
                ty: &e.ty,
                optional: [
                    e.datacontenttype.as_deref(),
                    e.dataschema.as_deref(),
                    e.subject.as_deref(),
                    e.time.as_deref(),
                ],
                extensions: e.extensions.iter().map(|(n, v)| {
                    let v = match v {
                        ExtValue::String(s) => frame::Ext::Str(s),
                        ExtValue::Bool(b) => frame::Ext::Bool(*b),
                        ExtValue::Integer(i) => frame::Ext::Int(*i),
                    };
                    (n.as_str(), v)
                }),
                ext_count: e.extensions.len(),
                data: e.data.as_ref().map(|d| &d.bytes[..]),
            },
            &mut f,
        );
    }
    f
}

fn to_event(r: &frame::EventRef<'_>) -> Result<Event, String> {
    let specversion = SpecVersion::parse(r.specversion)
        .ok_or_else(|| format!("unknown specversion {:?}", r.specversion))?;
    let data = r.data.map(|d| {
        let json = r
            .datacontenttype
            .is_some_and(evmesh_core::format::is_json_content_type)
            && serde_json::from_slice::<serde::de::IgnoredAny>(d).is_ok();
        Data {
            kind: if json {
                DataKind::Json
            } else {
                DataKind::Binary
            },
            bytes: bytes::Bytes::copy_from_slice(d),
        }
    });
    let e = Event {
        specversion,
        id: r.id.to_owned(),
        source: r.source.to_owned(),
        ty: r.ty.to_owned(),
        datacontenttype: r.datacontenttype.map(str::to_owned),
        dataschema: r.dataschema.map(str::to_owned),
        subject: r.subject.map(str::to_owned),
        time: r.time.map(str::to_owned),
        extensions: r
            .extensions()
            .map(|(n, v)| {
                let v = match v {
                    frame::Ext::Str(s) => ExtValue::String(s.to_owned()),
                    frame::Ext::Bool(b) => ExtValue::Bool(b),
                    frame::Ext::Int(i) => ExtValue::Integer(i),
                };
                (n.to_owned(), v)
            })
            .collect(),
        data,
    };
    e.validate()
        .map_err(|err| format!("the plugin produced an invalid event: {err}"))?;
    Ok(e)
}

impl Plugin {
    /// Creates (and drops) `n` fresh instances from the compiled plugin; the mean time of one.
    /// For benchmarks: this is the cost a trap or a reload adds.
    pub fn measure_instantiation(&self, n: u32) -> Result<Duration, String> {
        let start = std::time::Instant::now();
        for _ in 0..n.max(1) {
            drop(self.instantiate()?);
        }
        Ok(start.elapsed() / n.max(1))
    }
}

/// A WASM filter.
pub struct WasmFilter(Arc<Plugin>);

impl WasmFilter {
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.0
    }
}

impl BatchFilter for WasmFilter {
    fn filter_batch(&self, events: &[&Event]) -> Result<Vec<bool>, String> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.0.call(&encode_events(events))?;
        if out.len() != events.len().div_ceil(8) {
            return Err(format!(
                "plugin {} answered a bitmap of {} bytes for {} events",
                self.0.name,
                out.len(),
                events.len()
            ));
        }
        Ok((0..events.len()).map(|i| frame::bit(&out, i)).collect())
    }

    fn describe(&self) -> String {
        format!("wasm filter {}", self.0.name)
    }
}

/// A WASM transform.
pub struct WasmTransform(Arc<Plugin>);

impl BatchTransform for WasmTransform {
    fn transform_batch(&self, events: &[&Event]) -> Result<Vec<Vec<Routed>>, String> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.0.call(&encode_events(events))?;
        let decoded = frame::decode_outputs(&out, events.len())
            .map_err(|e| format!("plugin {}: {e}", self.0.name))?;
        decoded
            .iter()
            .map(|outs| {
                outs.iter()
                    .map(|(topic, e)| {
                        if let Some(t) = topic {
                            evmesh_core::config::validate_topic(t)
                                .map_err(|m| format!("plugin routed to an invalid topic: {m}"))?;
                        }
                        Ok((topic.map(str::to_owned), to_event(e)?))
                    })
                    .collect()
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!("wasm transform {}", self.0.name)
    }
}

/// The loader the binary hands to the router.
pub struct WasmLoader {
    engine: std::sync::OnceLock<Result<Arc<PluginEngine>, String>>,
    /// Where a lazily started engine keeps compiled modules.
    cache_dir: Option<std::path::PathBuf>,
    watch: Option<Duration>,
}

impl WasmLoader {
    /// `watch`: how often plugin files are checked for changes (None: never).
    pub fn new(engine: Arc<PluginEngine>, watch: Option<Duration>) -> WasmLoader {
        WasmLoader {
            engine: std::sync::OnceLock::from(Ok(engine)),
            cache_dir: None,
            watch,
        }
    }

    /// A loader whose engine starts with the first plugin: a process that uses none never
    /// reserves the engine's memory pool or starts its threads.
    pub fn lazy(cache_dir: Option<&Path>, watch: Option<Duration>) -> WasmLoader {
        WasmLoader {
            engine: std::sync::OnceLock::new(),
            cache_dir: cache_dir.map(Path::to_path_buf),
            watch,
        }
    }

    fn engine(&self) -> Result<&Arc<PluginEngine>, String> {
        self.engine
            .get_or_init(|| {
                PluginEngine::new(self.cache_dir.as_deref())
                    .map_err(|e| format!("starting the WASM plugin engine: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn load(&self, kind: Kind, cfg: &WasmPluginConfig) -> Result<Arc<Plugin>, String> {
        let p = Plugin::load(self.engine()?, kind, cfg).map_err(|e| e.to_string())?;
        if let Some(every) = self.watch {
            p.watch(every);
        }
        Ok(p)
    }
}

impl WasmLoader {
    /// Loads a filter plugin, typed (benchmarks and tools).
    pub fn load_filter(&self, cfg: &WasmPluginConfig) -> Result<WasmFilter, String> {
        Ok(WasmFilter(self.load(Kind::Filter, cfg)?))
    }
}

impl PluginLoader for WasmLoader {
    fn filter(&self, cfg: &WasmPluginConfig) -> Result<Arc<dyn BatchFilter>, String> {
        Ok(Arc::new(WasmFilter(self.load(Kind::Filter, cfg)?)))
    }

    fn transform(&self, cfg: &WasmPluginConfig) -> Result<Arc<dyn BatchTransform>, String> {
        Ok(Arc::new(WasmTransform(self.load(Kind::Transform, cfg)?)))
    }
}
