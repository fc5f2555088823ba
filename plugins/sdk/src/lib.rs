//! The guest SDK for evmesh plugins.
//!
//! Depend on it under the name `evmesh_plugin`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! evmesh_plugin = { package = "evmesh-plugin-sdk", path = "…/plugins/sdk" }
//! ```
//!
//! then write one function:
//!
//! ```ignore
//! use evmesh_plugin::EventRef;
//!
//! #[evmesh_plugin::filter]
//! fn paid(e: &EventRef) -> bool {
//!     e.ty == "order.paid"
//! }
//! ```
//!
//! and build with `cargo build --target wasm32-wasip2 --release`. The macro generates the
//! batch loop: the frame is decoded without copying (`EventRef` borrows from it), your function
//! runs per event, and the answer is encoded back. Parameters from the subscription's `with:`
//! block are available through [`config`].

pub use evmesh_plugin_frame::{Event, EventRef, Ext, ExtValue};
pub use evmesh_plugin_macros::{filter, transform};
pub use wit_bindgen;

use std::sync::OnceLock;

/// Log levels of the host's `log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

type LogFn = fn(Level, &str);
type CounterFn = fn(&str, u64);

static CONFIG: OnceLock<Vec<(String, String)>> = OnceLock::new();
static HOST: OnceLock<(LogFn, CounterFn)> = OnceLock::new();

/// A parameter from the subscription's `with:` block.
pub fn config(key: &str) -> Option<&'static str> {
    CONFIG
        .get()?
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Writes to evmesh's log.
pub fn log(level: Level, message: &str) {
    if let Some((l, _)) = HOST.get() {
        l(level, message)
    }
}

/// Adds to a counter evmesh keeps for this plugin.
pub fn counter(name: &str, delta: u64) {
    if let Some((_, c)) = HOST.get() {
        c(name, delta)
    }
}

/// An output sent to another topic instead of the subscription's sink.
pub struct Routed {
    pub topic: String,
    pub event: Event,
}

/// What a transform may return for one input event.
pub trait IntoOutputs {
    fn into_outputs(self) -> Result<Vec<(Option<String>, Event)>, String>;
}

impl IntoOutputs for Event {
    fn into_outputs(self) -> Result<Vec<(Option<String>, Event)>, String> {
        Ok(vec![(None, self)])
    }
}

impl IntoOutputs for Option<Event> {
    fn into_outputs(self) -> Result<Vec<(Option<String>, Event)>, String> {
        Ok(self.into_iter().map(|e| (None, e)).collect())
    }
}

impl IntoOutputs for Vec<Event> {
    fn into_outputs(self) -> Result<Vec<(Option<String>, Event)>, String> {
        Ok(self.into_iter().map(|e| (None, e)).collect())
    }
}

impl IntoOutputs for Routed {
    fn into_outputs(self) -> Result<Vec<(Option<String>, Event)>, String> {
        Ok(vec![(Some(self.topic), self.event)])
    }
}

impl IntoOutputs for Vec<Routed> {
    fn into_outputs(self) -> Result<Vec<(Option<String>, Event)>, String> {
        Ok(self.into_iter().map(|r| (Some(r.topic), r.event)).collect())
    }
}

impl<T: IntoOutputs> IntoOutputs for Result<T, String> {
    fn into_outputs(self) -> Result<Vec<(Option<String>, Event)>, String> {
        self.and_then(IntoOutputs::into_outputs)
    }
}

/// Used by the code the macros generate; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn init(
        config: Vec<(String, String)>,
        log: LogFn,
        counter: CounterFn,
    ) -> Result<(), String> {
        let _ = CONFIG.set(config);
        let _ = HOST.set((log, counter));
        Ok(())
    }

    pub fn filter_batch(frame: &[u8], f: fn(&EventRef) -> bool) -> Result<Vec<u8>, String> {
        let events = evmesh_plugin_frame::decode_events(frame).map_err(|e| e.to_string())?;
        Ok(evmesh_plugin_frame::bitmap(
            events.iter().map(f),
            events.len(),
        ))
    }

    pub fn transform_batch<O: IntoOutputs>(
        frame: &[u8],
        f: fn(&EventRef) -> O,
    ) -> Result<Vec<u8>, String> {
        let events = evmesh_plugin_frame::decode_events(frame).map_err(|e| e.to_string())?;
        let results = events
            .iter()
            .map(|e| f(e).into_outputs())
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(frame.len());
        evmesh_plugin_frame::encode_outputs(&results, &mut out);
        Ok(out)
    }
}
