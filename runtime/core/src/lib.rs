//! evmesh's shared vocabulary: the event, its formats, the component traits and the parts of
//! the configuration every component shares. No network or disk I/O lives here.

pub mod ack;
pub mod component;
pub mod config;
pub mod duration;
pub mod event;
pub mod filter;
pub mod format;
pub mod http_binding;
pub mod publish;
pub mod sdk;
pub mod sink;
pub mod trace;
pub mod transform;

pub use event::{Data, DataKind, Event, EventError, ExtValue, SpecVersion};
pub use format::DecodeError;
