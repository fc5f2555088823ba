//! A bounded keep-alive pool of HTTP/1.1 connections to one webhook.
//!
//! At most `max` connections exist; a delivery takes an idle one (most recently used first) or
//! opens one if under the cap, else waits. Connections are never opened speculatively: under
//! saturation a racing pool keeps opening sockets and runs the host out of ephemeral ports.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Semaphore;

pub struct Pool {
    host: String,
    port: u16,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    permits: Semaphore,
}

impl Pool {
    pub fn new(host: String, port: u16, max: usize) -> Pool {
        Pool {
            host,
            port,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max.max(1)),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("connecting to {}:{} timed out", self.host, self.port))?
        .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                format!(
                    "HTTP handshake with {}:{}: {}",
                    self.host,
                    self.port,
                    error_chain(&e)
                )
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// Sends one request (built by `make`) and reads the whole response (up to `max_body`
    /// bytes). A request that fails on a reused connection the server had already closed is
    /// sent once more on a fresh connection; that costs no delivery attempt.
    ///
    /// `timeout` starts once a connection slot is free: waiting for the pool is not part of
    /// the attempt, so an event is never failed for an attempt that never left the process.
    pub async fn send<E>(
        &self,
        make: impl Fn() -> Result<Request<Full<Bytes>>, E>,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(http::response::Parts, Result<Bytes, String>), SendError<E>> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::Io("the webhook sink is shut down".to_owned()))?;
        tokio::time::timeout(timeout, self.exchange(make, max_body))
            .await
            .map_err(|_| SendError::Timeout)?
    }

    async fn exchange<E>(
        &self,
        make: impl Fn() -> Result<Request<Full<Bytes>>, E>,
        max_body: usize,
    ) -> Result<(http::response::Parts, Result<Bytes, String>), SendError<E>> {
        let mut fresh_only = false;
        loop {
            let (mut conn, reused) = self.checkout(fresh_only).await.map_err(SendError::Io)?;
            let req = make().map_err(SendError::Build)?;
            let resp: Response<hyper::body::Incoming> = match conn.send_request(req).await {
                Ok(r) => r,
                Err(e)
                    if reused
                        && (e.is_canceled() || e.is_incomplete_message() || e.is_closed()) =>
                {
                    fresh_only = true;
                    continue;
                }
                Err(e) => {
                    return Err(SendError::Io(format!(
                        "request to {}:{} failed: {}",
                        self.host,
                        self.port,
                        error_chain(&e)
                    )))
                }
            };
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| e.to_string());
            if body.is_ok() && !conn.is_closed() {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.push(conn);
                }
            }
            return Ok((parts, body));
        }
    }

    async fn checkout(&self, fresh_only: bool) -> Result<(SendRequest<Full<Bytes>>, bool), String> {
        if fresh_only {
            return Ok((self.connect().await?, false));
        }
        loop {
            let c = self.idle.lock().ok().and_then(|mut v| v.pop());
            match c {
                Some(mut c) if !c.is_closed() => {
                    if c.ready().await.is_ok() {
                        return Ok((c, true));
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        Ok((self.connect().await?, false))
    }
}

/// Why a send failed: the request could not be built, or the exchange failed.
pub enum SendError<E> {
    Build(E),
    Io(String),
    /// No complete response within the attempt's timeout.
    Timeout,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
