//! One TCP connection to evmesh (or any EventMesh runtime): a writer task and a reader task.
//! Answers are matched to their requests by `seq`; frames the server starts (pushes) go to a
//! channel of their own.

use crate::protocol::{Command, Decoder, Frame, Header, UserAgent};
use crate::SdkError;
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Frame>>>>;

pub(crate) struct Conn {
    out: mpsc::Sender<Frame>,
    pending: Pending,
    seq: AtomicU64,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Conn {
    /// Connects and says hello; `pushes` receives the frames the server starts.
    pub async fn open(
        addr: &str,
        agent: &UserAgent,
        pushes: Option<mpsc::Sender<Frame>>,
    ) -> Result<Arc<Conn>, SdkError> {
        let stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| SdkError::Connect(format!("{addr}: timed out")))?
                .map_err(|e| SdkError::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (out, mut out_rx) = mpsc::channel::<Frame>(1024);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        // Writer: batches what is queued into one write.
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            while let Some(f) = out_rx.recv().await {
                buf.clear();
                if f.encode(&mut buf).is_err() {
                    continue;
                }
                while let Ok(more) = out_rx.try_recv() {
                    if more.encode(&mut buf).is_err() || buf.len() > 1 << 20 {
                        break;
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let p2 = pending.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut dec = Decoder::default();
            'read: loop {
                loop {
                    match dec.decode(&mut buf) {
                        Ok(Some(f)) => {
                            let waiter = if is_answer(f.header.cmd) {
                                p2.lock().ok().and_then(|mut p| p.remove(&f.header.seq))
                            } else {
                                None
                            };
                            match (waiter, &pushes) {
                                (Some(w), _) => {
                                    let _ = w.send(f);
                                }
                                (None, Some(tx)) => {
                                    if tx.send(f).await.is_err() {
                                        break 'read;
                                    }
                                }
                                (None, None) => {}
                            }
                        }
                        Ok(None) => break,
                        Err(e) if e.is_recoverable() => {
                            tracing::warn!(error = %e, "a frame from the server was skipped")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the server sent an unreadable frame");
                            break 'read;
                        }
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // Everyone waiting learns the connection is gone.
            if let Ok(mut p) = p2.lock() {
                p.clear();
            }
            let _ = closed_tx.send(true);
        });
        let conn = Arc::new(Conn {
            out,
            pending,
            seq: AtomicU64::new(fastrand::u64(1..1 << 40)),
            closed,
        });
        let body = serde_json::to_vec(agent).map_err(|e| SdkError::Protocol(e.to_string()))?;
        let hello = Frame::new(Header::new(Command::HELLO_REQUEST, conn.next_seq()), body);
        let answer = conn.call(hello, Duration::from_secs(10)).await?;
        check(&answer)?;
        Ok(conn)
    }

    pub fn next_seq(&self) -> String {
        self.seq.fetch_add(1, Ordering::Relaxed).to_string()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Sends a frame without waiting for anything.
    pub async fn send(&self, f: Frame) -> Result<(), SdkError> {
        self.out.send(f).await.map_err(|_| SdkError::Disconnected)
    }

    /// Sends a frame and waits for the answer with the same `seq`.
    pub async fn call(&self, f: Frame, timeout: Duration) -> Result<Frame, SdkError> {
        let rx = self.expect(&f.header.seq);
        self.send(f).await?;
        Self::wait(rx, timeout).await
    }

    /// Registers interest in the answer to `seq` (before sending, so it cannot be missed).
    pub fn expect(&self, seq: &str) -> oneshot::Receiver<Frame> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(seq.to_owned(), tx);
        }
        rx
    }

    pub async fn wait(rx: oneshot::Receiver<Frame>, timeout: Duration) -> Result<Frame, SdkError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(_)) => Err(SdkError::Disconnected),
            Err(_) => Err(SdkError::Timeout(timeout)),
        }
    }

    /// Sends heartbeats until the connection closes.
    pub fn keep_alive(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(c) = me.upgrade() else { return };
                if c.is_closed() {
                    return;
                }
                let hb = Frame::bare(Header::new(Command::HEARTBEAT_REQUEST, c.next_seq()));
                let _ = c.call(hb, every).await;
            }
        });
    }
}

/// Frames that answer a client's request (matched by `seq`).
fn is_answer(cmd: Command) -> bool {
    matches!(
        cmd,
        Command::HELLO_RESPONSE
            | Command::HEARTBEAT_RESPONSE
            | Command::SUBSCRIBE_RESPONSE
            | Command::UNSUBSCRIBE_RESPONSE
            | Command::LISTEN_RESPONSE
            | Command::CLIENT_GOODBYE_RESPONSE
            | Command::ASYNC_MESSAGE_TO_SERVER_ACK
            | Command::BROADCAST_MESSAGE_TO_SERVER_ACK
            | Command::RESPONSE_TO_CLIENT
    )
}

/// An answer's code as a result.
pub(crate) fn check(f: &Frame) -> Result<(), SdkError> {
    if f.header.code == 0 {
        Ok(())
    } else {
        Err(SdkError::Refused {
            code: f.header.code,
            message: f.header.desc.clone(),
        })
    }
}
