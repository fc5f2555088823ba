//! Apache EventMesh compatibility, so EventMesh users move over by changing an address:
//!
//! - [`TcpListenerConfig`] (`server.tcp`, default `127.0.0.1:10000`): EventMesh's TCP protocol
//!   (wire format in `evmesh_sdk::protocol`), sessions in [`session`].
//! - The EventMesh HTTP API on the HTTP ingest port ([`http_api`]).
//! - Consumer groups mixing TCP sessions and webhook URLs ([`groups`]), CLUSTERING and
//!   BROADCASTING, at least once, persisted across restarts.
//!
//! Both ways in share one [`EventMesh`] (the groups), set up once by [`install`].

mod convert;
pub mod groups;
pub mod http_api;
pub mod session;
mod tcp;

pub use tcp::TcpListenerConfig;

use evmesh_ingress::listener::ListenerContext;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// What the EventMesh listeners share.
pub struct EventMesh {
    pub groups: Arc<groups::Groups>,
}

impl EventMesh {
    /// The instance's EventMesh state, set up the first time: saved groups restarted, the
    /// HTTP API added to the ingest port.
    pub async fn get(cx: &ListenerContext) -> Result<Arc<EventMesh>, String> {
        cx.shared
            .get_or_init(|| async {
                let groups = groups::Groups::restore(
                    cx.supervisor.clone(),
                    cx.state.clone(),
                    cx.sinks.clone(),
                )
                .await?;
                cx.routes.add(Arc::new(http_api::EventMeshApi {
                    cx: cx.clone(),
                    groups: groups.clone(),
                }));
                Ok(Arc::new(EventMesh { groups }))
            })
            .await
    }
}

/// Sets up EventMesh compatibility before the listeners start (the registry calls this, so
/// the HTTP API is there even with the TCP listener off).
pub fn install(cx: &ListenerContext) -> BoxFuture<'_, Result<(), String>> {
    Box::pin(async move { EventMesh::get(cx).await.map(|_| ()) })
}
