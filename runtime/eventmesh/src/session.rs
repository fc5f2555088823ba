//! One TCP client session: the EventMesh command flow (hello, heartbeat, subscribe,
//! unsubscribe, listen, publish, broadcast, request-reply, goodbye) and the pushes to it.
//!
//! Publishes are pipelined: frames read together are appended together (one append per topic,
//! in the order received) and each is acknowledged (`…_TO_SERVER_ACK`, same `seq`) only once
//! durable. Pushes wait for the client's ack; at most `window` are unacknowledged at once.

use crate::convert;
use crate::groups::{Group, GroupKey, Groups};
use bytes::BytesMut;
use evmesh_core::Event;
use evmesh_ingress::listener::ListenerContext;
use evmesh_sdk::protocol::{
    Command, Decoder, Frame, FrameError, Header, Subscription, SubscriptionMode, UserAgent,
    CLOUDEVENTS, PROTOCOL_DESC, PROTOCOL_TYPE, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

/// Unacknowledged pushes per session unless the client asks for fewer (`unack`).
const DEFAULT_WINDOW: usize = 100;
/// A session that sends nothing (not even a heartbeat) for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why a push did not reach the client.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The session ended (or is not listening).
    Gone,
    /// Its window of unacknowledged pushes is full.
    Full,
}

/// The push side of a session, as groups see it.
pub struct SessionHandle {
    id: u64,
    out: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<String, (oneshot::Sender<()>, tokio::sync::OwnedSemaphorePermit)>>,
    window: Arc<Semaphore>,
    listening: AtomicBool,
    closed: AtomicBool,
    seq: AtomicU64,
    /// The body format the client speaks (from its frames; CloudEvents by default).
    protocol: Mutex<String>,
    /// Groups to wake when this session can take more.
    wake: Mutex<Vec<Arc<Notify>>>,
}

impl SessionHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether a push could go out now.
    pub fn can_take(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
            && !self.closed.load(Ordering::SeqCst)
            && self.window.available_permits() > 0
    }

    /// Pushes `event` and waits for the client's ack.
    pub async fn push(&self, event: &Event, topic: &str, cmd: Command) -> Result<(), PushError> {
        if !self.listening.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            return Err(PushError::Gone);
        }
        let permit = self
            .window
            .clone()
            .try_acquire_owned()
            .map_err(|_| PushError::Full)?;
        let seq = format!("p{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let protocol = self
            .protocol
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|_| CLOUDEVENTS.to_owned());
        let body = convert::outgoing(event, topic, &protocol);
        let header = Header::new(cmd, seq.clone())
            .with_property(PROTOCOL_TYPE, protocol.clone())
            .with_property(PROTOCOL_VERSION, "1.0")
            .with_property(PROTOCOL_DESC, "tcp")
            .with_property("topic", topic);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(seq, (tx, permit));
        }
        if self.out.send(Frame::new(header, body)).await.is_err() {
            return Err(PushError::Gone);
        }
        rx.await.map_err(|_| PushError::Gone)
    }

    /// The client acknowledged the push `seq`.
    fn acked(&self, seq: &str) {
        let done = self.pending.lock().ok().and_then(|mut p| p.remove(seq));
        if let Some((tx, permit)) = done {
            let _ = tx.send(());
            drop(permit);
            self.wake();
        }
    }

    fn wake(&self) {
        if let Ok(w) = self.wake.lock() {
            for n in w.iter() {
                n.notify_waiters();
            }
        }
    }

    /// The session ended: every push waiting on it fails (and goes to another member).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
        self.wake();
    }
}

/// Runs one connection until it ends.
pub async fn run(stream: TcpStream, peer: SocketAddr, cx: ListenerContext, groups: Arc<Groups>) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (out, mut out_rx) = mpsc::channel::<Frame>(4096);
    // The writer stops when the session ends, whoever still holds a sender (a push in flight).
    let (ended_tx, mut ended) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            let f = tokio::select! {
                biased;
                f = out_rx.recv() => match f {
                    Some(f) => f,
                    None => break,
                },
                _ = ended.changed() => {
                    // Flush what is queued (answers to the last frames), then close.
                    while let Ok(f) = out_rx.try_recv() {
                        buf.clear();
                        if f.encode(&mut buf).is_ok() && wr.write_all(&buf).await.is_err() {
                            break;
                        }
                    }
                    break;
                }
            };
            buf.clear();
            if let Err(e) = f.encode(&mut buf) {
                tracing::warn!(error = %e, "a frame to the client could not be encoded");
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
        let _ = wr.shutdown().await;
    });
    let handle = Arc::new(SessionHandle {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        out: out.clone(),
        pending: Mutex::new(HashMap::new()),
        window: Arc::new(Semaphore::new(DEFAULT_WINDOW)),
        listening: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        seq: AtomicU64::new(1),
        protocol: Mutex::new(CLOUDEVENTS.to_owned()),
        wake: Mutex::new(Vec::new()),
    });
    let (pub_tx, pub_rx) = mpsc::channel::<Frame>(4096);
    let publisher = tokio::spawn(publish_loop(pub_rx, out.clone(), cx.clone()));
    let mut s = Session {
        peer,
        cx,
        groups,
        handle: handle.clone(),
        out,
        agent: None,
        joined: Vec::new(),
        publish: pub_tx,
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut dec = Decoder::default();
    let mut stop = s.cx.stop.clone();
    'conn: loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    if !s.handle(f).await {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(FrameError::Oversize { length, header }) => {
                    tracing::warn!(peer = %peer, length, "an oversize frame was refused");
                    if let Some(h) = header {
                        let cmd = ack_of(h.cmd).unwrap_or(h.cmd);
                        let msg = format!("frame of {length} bytes is over the 4 MiB limit");
                        let _ = s.out.send(Frame::bare(h.answer(cmd, 1, msg))).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, reason = %e, "closing a TCP connection that sent an unreadable frame");
                    break 'conn;
                }
            }
        }
        let read = tokio::select! {
            r = tokio::time::timeout(IDLE, rd.read_buf(&mut buf)) => r,
            _ = stop.changed() => break,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::info!(peer = %peer, "closing an idle TCP session (no heartbeat for {}s)", IDLE.as_secs());
                break;
            }
        }
    }
    handle.close();
    for g in std::mem::take(&mut s.joined) {
        s.groups.leave(&g.name, &handle, false).await;
    }
    drop(s);
    // Publishes already read are finished and acknowledged before the connection closes.
    let _ = publisher.await;
    let _ = ended_tx.send(true);
    let _ = writer.await;
    tracing::debug!(peer = %peer, "tcp session ended");
}

/// The ack that answers a command sent to the server.
fn ack_of(cmd: Command) -> Option<Command> {
    Some(match cmd {
        Command::ASYNC_MESSAGE_TO_SERVER => Command::ASYNC_MESSAGE_TO_SERVER_ACK,
        Command::BROADCAST_MESSAGE_TO_SERVER => Command::BROADCAST_MESSAGE_TO_SERVER_ACK,
        Command::REQUEST_TO_SERVER => Command::RESPONSE_TO_CLIENT,
        Command::HELLO_REQUEST => Command::HELLO_RESPONSE,
        Command::SUBSCRIBE_REQUEST => Command::SUBSCRIBE_RESPONSE,
        Command::UNSUBSCRIBE_REQUEST => Command::UNSUBSCRIBE_RESPONSE,
        Command::LISTEN_REQUEST => Command::LISTEN_RESPONSE,
        Command::HEARTBEAT_REQUEST => Command::HEARTBEAT_RESPONSE,
        Command::CLIENT_GOODBYE_REQUEST => Command::CLIENT_GOODBYE_RESPONSE,
        _ => return None,
    })
}

struct Session {
    peer: SocketAddr,
    cx: ListenerContext,
    groups: Arc<Groups>,
    handle: Arc<SessionHandle>,
    out: mpsc::Sender<Frame>,
    agent: Option<UserAgent>,
    joined: Vec<Arc<Group>>,
    publish: mpsc::Sender<Frame>,
}

impl Session {
    async fn answer(&self, req: &Header, code: i32, desc: &str) {
        if let Some(cmd) = ack_of(req.cmd) {
            let _ = self
                .out
                .send(Frame::bare(req.answer(cmd, code, desc)))
                .await;
        }
    }

    /// Handles one frame; false when the session is over.
    async fn handle(&mut self, f: Frame) -> bool {
        let h = &f.header;
        if let Some(p) = h.property(PROTOCOL_TYPE) {
            if let Ok(mut g) = self.handle.protocol.lock() {
                p.clone_into(&mut g);
            }
        }
        match h.cmd {
            Command::HELLO_REQUEST => match f.json::<UserAgent>() {
                Ok(agent) => {
                    if agent.unack > 0 {
                        let extra = DEFAULT_WINDOW.saturating_sub(agent.unack as usize);
                        if let Ok(p) = self
                            .handle
                            .window
                            .clone()
                            .try_acquire_many_owned(extra as u32)
                        {
                            p.forget();
                        }
                    }
                    tracing::info!(peer = %self.peer, subsystem = %agent.subsystem, group = %agent.consumer_group, purpose = %agent.purpose, "tcp client said hello");
                    self.agent = Some(agent);
                    self.answer(h, 0, "success").await;
                }
                Err(e) => self.answer(h, 1, &e.to_string()).await,
            },
            _ if self.agent.is_none() => {
                let desc = "say HELLO_REQUEST first";
                match ack_of(h.cmd) {
                    Some(_) => self.answer(h, 1, desc).await,
                    None => tracing::debug!(peer = %self.peer, cmd = h.cmd.name(), "{desc}"),
                }
            }
            Command::HEARTBEAT_REQUEST => self.answer(h, 0, "success").await,
            Command::SUBSCRIBE_REQUEST => {
                let r = self.subscribe(&f).await;
                let (code, desc) = match &r {
                    Ok(()) => (0, "success".to_owned()),
                    Err(e) => (1, e.clone()),
                };
                self.answer(h, code, &desc).await;
            }
            Command::UNSUBSCRIBE_REQUEST => {
                self.unsubscribe(&f).await;
                self.answer(h, 0, "success").await;
            }
            Command::LISTEN_REQUEST => {
                self.handle.listening.store(true, Ordering::SeqCst);
                self.handle.wake();
                self.answer(h, 0, "success").await;
            }
            Command::ASYNC_MESSAGE_TO_SERVER | Command::BROADCAST_MESSAGE_TO_SERVER => {
                if self.publish.send(f).await.is_err() {
                    return false;
                }
            }
            Command::ASYNC_MESSAGE_TO_CLIENT_ACK
            | Command::BROADCAST_MESSAGE_TO_CLIENT_ACK
            | Command::REQUEST_TO_CLIENT_ACK => self.handle.acked(&h.seq),
            Command::RESPONSE_TO_CLIENT_ACK => {}
            Command::REQUEST_TO_SERVER => self.request(f),
            Command::RESPONSE_TO_SERVER => self.respond(f).await,
            Command::CLIENT_GOODBYE_REQUEST => {
                self.answer(h, 0, "goodbye").await;
                return false;
            }
            other => {
                tracing::debug!(peer = %self.peer, cmd = other.name(), "unsupported command");
                let answer = Frame::bare(h.answer(other, 1, "command not supported by evmesh"));
                let _ = self.out.send(answer).await;
            }
        }
        true
    }

    async fn subscribe(&mut self, f: &Frame) -> Result<(), String> {
        let sub: Subscription = f.json().map_err(|e| e.to_string())?;
        let agent = self.agent.clone().unwrap_or_default();
        if agent.consumer_group.is_empty() {
            return Err("subscribe needs a consumerGroup in HELLO_REQUEST".into());
        }
        for item in sub.topic_list {
            evmesh_core::config::validate_topic(&item.topic)?;
            let member = (item.mode == SubscriptionMode::BROADCASTING).then(|| {
                format!(
                    "{}|{}|{}|{}",
                    agent.host, agent.pid, agent.subsystem, agent.path
                )
            });
            let key = GroupKey {
                group: agent.consumer_group.clone(),
                topic: item.topic.clone(),
                mode: item.mode,
                ty: item.ty,
                member,
            };
            let group = self.groups.join(&key, self.handle.clone()).await?;
            if let Ok(mut w) = self.handle.wake.lock() {
                w.push(group.changed.clone());
            }
            if !self.joined.iter().any(|g| g.name == group.name) {
                self.joined.push(group);
            }
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, f: &Frame) {
        let Ok(sub) = f.json::<Subscription>() else {
            return;
        };
        let topics: Vec<String> = sub.topic_list.into_iter().map(|i| i.topic).collect();
        let (leaving, staying): (Vec<_>, Vec<_>) = std::mem::take(&mut self.joined)
            .into_iter()
            .partition(|g| topics.contains(&g.key.topic));
        self.joined = staying;
        for g in leaving {
            self.groups.leave(&g.name, &self.handle, true).await;
        }
    }

    /// `REQUEST_TO_SERVER`: publish a request and answer `RESPONSE_TO_CLIENT` (same `seq`)
    /// with the reply, or an error code when none came in time.
    fn request(&self, f: Frame) {
        let (out, replies) = (self.out.clone(), self.cx.replies.clone());
        tokio::spawn(async move {
            let h = f.header;
            let answer = match convert::incoming(&h, &f.body) {
                Err(e) => Frame::bare(h.answer(Command::RESPONSE_TO_CLIENT, 1, e)),
                Ok(i) => {
                    let timeout = h
                        .property("ttl")
                        .and_then(|t| t.parse::<u64>().ok())
                        .map_or(Duration::from_secs(10), Duration::from_millis);
                    match replies.request(&i.topic, i.event, timeout).await {
                        Ok(reply) => {
                            let mut body = Vec::with_capacity(256);
                            evmesh_core::format::encode_structured(&reply, &mut body);
                            let hdr = h
                                .answer(Command::RESPONSE_TO_CLIENT, 0, "success")
                                .with_property(PROTOCOL_TYPE, CLOUDEVENTS);
                            Frame::new(hdr, body)
                        }
                        Err(e) => {
                            Frame::bare(h.answer(Command::RESPONSE_TO_CLIENT, 1, e.to_string()))
                        }
                    }
                }
            };
            let _ = out.send(answer).await;
        });
    }

    /// `RESPONSE_TO_SERVER`: the reply to a request this or another instance made; it goes to
    /// the request's reply topic.
    async fn respond(&self, f: Frame) {
        let mut event = match convert::incoming_reply(&f.header, &f.body) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "an unreadable RESPONSE_TO_SERVER was dropped");
                return;
            }
        };
        let Some(to) = event
            .extension(evmesh_core::publish::REPLY_TO)
            .map(|v| v.to_canonical_string())
        else {
            tracing::warn!(peer = %self.peer, id = %event.id, "a RESPONSE_TO_SERVER without replyto was dropped");
            return;
        };
        event.remove_extension(evmesh_core::publish::REPLY_TO);
        if let Err(e) = self.cx.publisher.publish(&to, &[event]).await {
            tracing::warn!(peer = %self.peer, error = %e, "storing a reply failed");
        }
    }
}

/// Appends what the session publishes, in order: everything queued is taken together, one
/// append per topic run, then each frame is acknowledged.
async fn publish_loop(
    mut rx: mpsc::Receiver<Frame>,
    out: mpsc::Sender<Frame>,
    cx: ListenerContext,
) {
    let mut frames = Vec::with_capacity(256);
    while let Some(first) = rx.recv().await {
        frames.clear();
        frames.push(first);
        while frames.len() < 1024 {
            match rx.try_recv() {
                Ok(f) => frames.push(f),
                Err(_) => break,
            }
        }
        let mut i = 0;
        while i < frames.len() {
            // A run of frames for one topic (decodable ones) goes in one append.
            let mut run: Vec<(usize, Event)> = Vec::new();
            let mut topic: Option<String> = None;
            let mut j = i;
            while j < frames.len() {
                match convert::incoming(&frames[j].header, &frames[j].body) {
                    Ok(inc) if topic.as_deref().is_none_or(|t| t == inc.topic) => {
                        topic.get_or_insert(inc.topic);
                        run.push((j, inc.event));
                        j += 1;
                    }
                    Ok(_) => break,
                    Err(e) if run.is_empty() => {
                        let h = &frames[j].header;
                        let cmd = ack_of(h.cmd).unwrap_or(h.cmd);
                        let _ = out.send(Frame::bare(h.answer(cmd, 1, e))).await;
                        j += 1;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(topic) = topic {
                let events: Vec<Event> = run.iter().map(|(_, e)| e.clone()).collect();
                let result = cx.publisher.publish(&topic, &events).await;
                let (code, desc) = match &result {
                    Ok(_) => (0, "success".to_owned()),
                    Err(e) => (1, e.to_string()),
                };
                for (k, _) in &run {
                    let h = &frames[*k].header;
                    let cmd = ack_of(h.cmd).unwrap_or(h.cmd);
                    let _ = out
                        .send(Frame::bare(h.answer(cmd, code, desc.clone())))
                        .await;
                }
            }
            i = j.max(i + 1);
        }
    }
}
