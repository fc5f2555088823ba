//! Transforms are pure and synchronous, like filters. One input yields no event (dropped), one,
//! or several (fan-out); WASM transforms implement the same trait.

use crate::event::Event;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(pub String);

pub trait Transform: Send + Sync + 'static {
    fn apply(&self, event: Event) -> Result<Vec<Event>, TransformError>;
}
