//! The WASM filter alone, in-process: cost per event by batch size, against the same logic in
//! native Rust and the built-in pattern doing the same test, and the cost of a fresh instance.
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 --manifest-path plugins/examples/Cargo.toml
//! cargo bench -p evmesh-plugin-host --bench wasm      # or PLUGIN=path/to/filter.wasm
//! ```
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use std::time::{Duration, Instant};

fn main() {
    let plugin = std::env::var_os("PLUGIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/target/wasm32-wasip2/release/json_field_filter.wasm")
        });
    wasm_bench(plugin.exists().then_some(plugin.as_path()));
}

/// The WASM filter alone, in-process: cost per event by batch size against the built-in
/// pattern that does the same, and the cost of a fresh instance.
fn wasm_bench(plugin: Option<&std::path::Path>) {
    use evmesh_core::filter::{BatchFilter, Filter};
    let Some(path) = plugin else {
        println!("wasm             skipped: build the example plugins first, or set PLUGIN=path/to/json_field_filter.wasm");
        return;
    };
    let engine = match evmesh_plugin_host::PluginEngine::new(None) {
        Ok(e) => e,
        Err(e) => {
            println!("wasm             failed: {e}");
            return;
        }
    };
    let loader = evmesh_plugin_host::WasmLoader::new(engine, None);
    let cfg = evmesh_core::config::WasmPluginConfig {
        uses: path.to_owned(),
        with: [
            ("field".to_string(), "status".to_string()),
            ("equals".to_string(), "paid".to_string()),
        ]
        .into(),
        max_memory: 64 << 20,
        timeout: evmesh_core::duration::IsoDuration(Duration::from_secs(1)),
    };
    let t0 = Instant::now();
    let wasm = match loader.load_filter(&cfg) {
        Ok(f) => f,
        Err(e) => {
            println!("wasm             failed: {e}");
            return;
        }
    };
    let load = t0.elapsed();
    let builtin = match evmesh_filter_pattern::PatternFilter::compile(
        &serde_json::json!({"data": {"status": ["paid"]}}),
    ) {
        Ok(f) => f,
        Err(e) => {
            println!("wasm             failed: {e}");
            return;
        }
    };
    let events: Vec<evmesh_core::Event> = (0..512)
        .map(|i| {
            let mut e = evmesh_core::Event::new(format!("{i}"), "/bench", "bench.event");
            e.datacontenttype = Some("application/json".into());
            let status = if i % 2 == 0 { "paid" } else { "open" };
            e.data = Some(evmesh_core::Data {
                kind: evmesh_core::DataKind::Json,
                bytes: Bytes::from(format!(r#"{{"status":"{status}","seq":{i},"pad":"0123456789012345678901234567890123456789"}}"#)),
            });
            e
        })
        .collect();
    let refs: Vec<&evmesh_core::Event> = events.iter().collect();
    let time = |f: &mut dyn FnMut() -> usize, per_call: usize| {
        let start = Instant::now();
        let mut n = 0usize;
        let mut kept = 0usize;
        while start.elapsed() < Duration::from_millis(500) {
            kept += f();
            n += per_call;
        }
        std::hint::black_box(kept);
        start.elapsed().as_nanos() as f64 / n as f64
    };
    let b = time(
        &mut || refs.iter().filter(|e| builtin.matches(e)).count(),
        refs.len(),
    );
    println!("wasm             built-in pattern (same test)  {b:>7.0} ns/event");
    // The plugin's own logic compiled natively: what running it inside WASM adds is the rest.
    let native_logic = |e: &&evmesh_core::Event| -> bool {
        e.data
            .as_ref()
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d.bytes).ok())
            .is_some_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("paid"))
    };
    let nat = time(
        &mut || refs.iter().filter(|e| native_logic(e)).count(),
        refs.len(),
    );
    println!("wasm             same logic, native Rust       {nat:>7.0} ns/event");
    for batch in [1usize, 16, 64, 512] {
        let ns = time(
            &mut || {
                refs.chunks(batch)
                    .map(|c| {
                        wasm.filter_batch(c)
                            .map(|v| v.iter().filter(|k| **k).count())
                            .unwrap_or(0)
                    })
                    .sum()
            },
            refs.len(),
        );
        println!("wasm             WASM filter, batches of {batch:>3}  {ns:>7.0} ns/event  (WASM overhead {:>6.0} ns/event over native)", ns - nat);
    }
    match wasm.plugin().measure_instantiation(200) {
        Ok(d) => println!("wasm             instantiation {:>7.1} µs (after compile; first load incl. compile/cache {:.1} ms)", d.as_secs_f64() * 1e6, load.as_secs_f64() * 1e3),
        Err(e) => println!("wasm             instantiation failed: {e}"),
    }
}
