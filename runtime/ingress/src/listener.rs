//! Listeners: the ways in (HTTP ingest, the admin API, later the TCP protocol and the EventMesh
//! API). Each kind owns its settings (under its name in `server:`) and starts from the shared
//! context: the publish path, the supervisor (a protocol whose clients subscribe registers them
//! as live push targets), the log and the state store.

use crate::publish::PublishPath;
use crate::reply::Replies;
use crate::{Handler, Resp};
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
    /// Request-reply: this instance's reply topic and waiting requests.
    pub replies: Arc<Replies>,
    /// Builds sinks from specs (a protocol's webhook targets).
    pub sinks: evmesh_delivery::SinkFactory,
    /// More HTTP APIs served on the HTTP ingest port (the EventMesh API).
    pub routes: Arc<HttpRoutes>,
    /// This instance's stable id (in its state store).
    pub instance: String,
    /// State that several listeners of one protocol share (set up once, found by type).
    pub shared: Arc<Shared>,
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
    /// Whether to start it at all (a listener may be turned `off`).
    fn enabled(&self) -> bool {
        true
    }
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

/// An HTTP API served on the HTTP ingest port beside ingest itself.
pub trait HttpRoute: Handler {
    /// Whether this request is the route's (checked in registration order, before ingest).
    fn matches(&self, req: &http::Request<hyper::body::Incoming>) -> bool;
}

/// The HTTP APIs registered for the ingest port.
#[derive(Default)]
pub struct HttpRoutes {
    routes: std::sync::RwLock<Vec<Arc<dyn HttpRoute>>>,
}

impl HttpRoutes {
    pub fn add(&self, route: Arc<dyn HttpRoute>) {
        if let Ok(mut r) = self.routes.write() {
            r.push(route);
        }
    }

    /// The route that takes `req`, if any.
    pub fn find(&self, req: &http::Request<hyper::body::Incoming>) -> Option<Arc<dyn HttpRoute>> {
        self.routes
            .read()
            .ok()?
            .iter()
            .find(|r| r.matches(req))
            .cloned()
    }
}

/// Keeps `Resp` in this module's public surface for route implementors.
pub type RouteResponse = Resp;

/// Values shared between listeners, one per type (the EventMesh consumer groups, which its TCP
/// listener and HTTP API both serve).
#[derive(Default)]
pub struct Shared {
    map: tokio::sync::Mutex<
        std::collections::HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>,
    >,
}

impl Shared {
    /// The value of type `T`, made by `init` the first time (once, even when asked
    /// concurrently).
    pub async fn get_or_init<T, F, Fut>(&self, init: F) -> Result<Arc<T>, String>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Arc<T>, String>>,
    {
        let mut map = self.map.lock().await;
        if let Some(v) = map.get(&std::any::TypeId::of::<T>()) {
            return v
                .clone()
                .downcast::<T>()
                .map_err(|_| "a shared value of the wrong type".to_owned());
        }
        let v = init().await?;
        map.insert(std::any::TypeId::of::<T>(), v.clone());
        Ok(v)
    }
}
