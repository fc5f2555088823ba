//! A small HTTP server loop shared by the ingest and admin listeners: HTTP/1.1 with keep-alive
//! and HTTP/2 with prior knowledge (h2c) on the same port, graceful shutdown (stop accepting,
//! let in-flight requests finish).

use crate::{IngressError, Resp};
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub trait Handler: Send + Sync + 'static {
    fn call(self: Arc<Self>, req: http::Request<Incoming>) -> BoxFuture<'static, Resp>;
}

pub struct ServerHandle {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Binds `addr` and serves until `stop` turns true; then waits up to `drain` for open requests.
/// Connections are counted under `protocol` (`evmesh_connections_total{protocol}`).
pub async fn serve<H: Handler>(
    addr: &str,
    protocol: &str,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Result<ServerHandle, IngressError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| IngressError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| IngressError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    let counted = evmesh_metrics::global().protocol(protocol);
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => break,
            };
            let (stream, _) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let h = handler.clone();
            let svc = service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h.call(req).await) }
            });
            // The first bytes decide: the HTTP/2 preface means h2c, anything else HTTP/1.1.
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            let open = counted.open();
            tokio::spawn(async move {
                let _open = open;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
    });
    Ok(ServerHandle { addr: local, task })
}
