//! Transforms are pure and synchronous, like filters. One input yields no event (dropped), one,
//! or several (fan-out); WASM transforms implement the same trait.

use crate::event::Event;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(pub String);

pub trait Transform: Send + Sync + 'static {
    fn apply(&self, event: Event) -> Result<Vec<Event>, TransformError>;
}

/// One output of a transform: an event, and the topic it is routed to (`None`: the
/// subscription's own sink).
pub type Routed = (Option<String>, Event);

/// A transform evaluated a batch at a time that can fail as a whole (a WASM plugin). The answer
/// has one entry per input: its outputs (none: dropped).
pub trait BatchTransform: Send + Sync + 'static {
    fn transform_batch(&self, events: &[&Event]) -> Result<Vec<Vec<Routed>>, String>;
    fn describe(&self) -> String;
}

/// Builds plugin filters and transforms from their config (the binary wires the WASM host in).
pub trait PluginLoader: Send + Sync + 'static {
    fn filter(
        &self,
        cfg: &crate::config::WasmPluginConfig,
    ) -> Result<std::sync::Arc<dyn crate::filter::BatchFilter>, String>;
    fn transform(
        &self,
        cfg: &crate::config::WasmPluginConfig,
    ) -> Result<std::sync::Arc<dyn BatchTransform>, String>;
}
