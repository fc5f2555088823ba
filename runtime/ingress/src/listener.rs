//! Listeners: the ways in (HTTP ingest, the admin API, later the TCP protocol and the EventMesh
//! API). Each kind owns its settings (under its name in `server:`) and starts from the shared
//! context: the publish path, the supervisor (a protocol whose clients subscribe registers them
//! as live push targets), the log and the state store.

use crate::publish::PublishPath;
use evmesh_core::component::{Check, Kind};
use evmesh_core::config::{typed, ConfigError};
use evmesh_delivery::Supervisor;
use evmesh_store::{EventLog, StateStore};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a listener is started with.
#[derive(Clone)]
pub struct ListenerContext {
    pub publisher: Arc<PublishPath>,
    pub supervisor: Arc<Supervisor>,
    pub log: Arc<dyn EventLog>,
    pub state: Arc<dyn StateStore>,
    /// `server.maxBodyBytes`.
    pub max_body_bytes: usize,
    /// How long shutdown waits for open requests.
    pub drain: Duration,
    /// Turns true at shutdown: stop accepting, finish what is open.
    pub stop: watch::Receiver<bool>,
}

/// A running listener.
pub struct ListenerHandle {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// A listener's settings.
pub trait ListenerConfig: Check + Send + Sync + 'static {
    /// What it is, for logs (`http ingest`, `admin`).
    fn label(&self) -> &'static str;
    /// Binds and serves until `cx.stop`.
    fn start(&self, cx: ListenerContext) -> BoxFuture<'static, Result<ListenerHandle, String>>;
}

/// One known listener: its key under `server:` and its default settings.
pub struct ListenerEntry {
    pub key: &'static str,
    pub default: fn() -> Value,
    parse: ParseFn,
}

type ParseFn = fn(Value, &str) -> Result<Box<dyn ListenerConfig>, Vec<ConfigError>>;

/// The listener kind `C`, under `server.<C::KIND>`, with `default` settings when not named.
pub fn listener<C>(default: fn() -> Value) -> ListenerEntry
where
    C: ListenerConfig + DeserializeOwned + Kind,
{
    ListenerEntry {
        key: C::KIND,
        default,
        parse: |v, path| {
            let c: C = typed(v, path).map_err(|e| vec![e])?;
            let errors: Vec<ConfigError> = c.check().into_iter().map(|e| e.under(path)).collect();
            if errors.is_empty() {
                Ok(Box::new(c))
            } else {
                Err(errors)
            }
        },
    }
}

impl ListenerEntry {
    pub fn parse(&self, v: Value, path: &str) -> Result<Box<dyn ListenerConfig>, Vec<ConfigError>> {
        (self.parse)(v, path)
    }
}

/// A listen address (`IP:PORT`) as a listener's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ListenAddress(pub String);

impl ListenAddress {
    pub fn check(&self) -> Vec<ConfigError> {
        if self.0.parse::<SocketAddr>().is_ok() {
            Vec::new()
        } else {
            vec![ConfigError::new(
                "",
                format!(
                    "invalid listen address {:?} (expected IP:PORT such as 127.0.0.1:10105)",
                    self.0
                ),
            )]
        }
    }
}
