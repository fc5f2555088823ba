//! `server.tcp`: the EventMesh TCP listener (default `127.0.0.1:10000`, EventMesh's port).

use crate::EventMesh;
use evmesh_core::component::{Check, Kind};
use evmesh_core::config::ConfigError;
use evmesh_ingress::listener::{ListenAddress, ListenerConfig, ListenerContext, ListenerHandle};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// `server.tcp`: the address (`off` turns the listener off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TcpListenerConfig(pub ListenAddress);

impl TcpListenerConfig {
    pub fn default_value() -> serde_yaml::Value {
        "127.0.0.1:10000".into()
    }

    fn off(&self) -> bool {
        self.0 .0 == "off"
    }
}

impl Kind for TcpListenerConfig {
    const KIND: &'static str = "tcp";
}

impl Check for TcpListenerConfig {
    fn check(&self) -> Vec<ConfigError> {
        if self.off() {
            Vec::new()
        } else {
            self.0.check()
        }
    }
}

impl ListenerConfig for TcpListenerConfig {
    fn label(&self) -> &'static str {
        "tcp"
    }

    fn enabled(&self) -> bool {
        !self.off()
    }

    fn start(&self, cx: ListenerContext) -> BoxFuture<'static, Result<ListenerHandle, String>> {
        let addr = self.0 .0.clone();
        Box::pin(async move {
            let em = EventMesh::get(&cx).await?;
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            let mut stop = cx.stop.clone();
            let task = tokio::spawn(async move {
                let mut sessions = tokio::task::JoinSet::new();
                let counted = evmesh_metrics::global().protocol("tcp");
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = stop.changed() => break,
                    };
                    match accepted {
                        Ok((stream, peer)) => {
                            let open = counted.open();
                            let session =
                                crate::session::run(stream, peer, cx.clone(), em.groups.clone());
                            sessions.spawn(async move {
                                let _open = open;
                                session.await
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "tcp accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                    while sessions.try_join_next().is_some() {}
                }
                drop(listener);
                let _ = tokio::time::timeout(cx.drain, async {
                    while sessions.join_next().await.is_some() {}
                })
                .await;
            });
            Ok(ListenerHandle { addr: local, task })
        })
    }
}
