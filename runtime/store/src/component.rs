//! An event log as a configurable component: each kind (embedded, kafka, …) owns its config
//! struct and how it opens; the registry in the binary lists the kinds.

use crate::{EventLog, StateStore};
use evmesh_core::component::Check;
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;

/// What opening a log may use.
#[derive(Clone)]
pub struct LogContext {
    /// The instance's local folder (absolute): the embedded log keeps its segments here.
    pub data_dir: PathBuf,
    /// The instance's state store, opened before the log.
    pub state: Arc<dyn StateStore>,
}

/// The config of one kind of event log (`store: {type: …}`).
pub trait LogConfig: Check + Send + Sync + 'static {
    /// Opens (or connects to) the log; fails with a message that says what to fix.
    fn open(&self, cx: LogContext) -> BoxFuture<'static, Result<Arc<dyn EventLog>, String>>;
}

/// The log kind `C`.
pub fn log<C>() -> evmesh_core::component::Entry<dyn LogConfig>
where
    C: LogConfig + serde::de::DeserializeOwned + evmesh_core::component::Kind,
{
    evmesh_core::component::Entry::new(|c: C| Box::new(c) as Box<dyn LogConfig>)
}
