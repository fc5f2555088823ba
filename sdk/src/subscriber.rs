//! Subscribing over TCP: a stream of deliveries, each acknowledged explicitly. The subscriber
//! keeps itself connected: after a server restart or a network cut it reconnects with backoff,
//! says hello as the same client, subscribes again and listens. Events it had not acknowledged
//! are delivered again by the server (to it or, in a CLUSTERING group, to another member):
//! nothing is lost, and an event may come twice.

use crate::conn::{check, Conn};
use crate::protocol::{
    self, Command, EventMeshMessage, Frame, Header, Subscription, SubscriptionItem,
    SubscriptionMode, SubscriptionType,
};
use crate::{ClientId, SdkError};
use cloudevents::Event;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// What to subscribe to.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// The TCP listener (`127.0.0.1:10000`).
    pub addr: String,
    /// The consumer group: CLUSTERING members share its events; BROADCASTING members each get
    /// all of them.
    pub group: String,
    pub topics: Vec<SubscriptionItem>,
    /// Who this client is; keep it across restarts of the process to get back the
    /// BROADCASTING events sent while it was away.
    pub id: ClientId,
    /// Events pushed to this client and not yet acknowledged, at most.
    pub window: usize,
}

impl SubscriberConfig {
    /// One topic, CLUSTERING, one-way events.
    pub fn new(addr: &str, group: &str, topic: &str, id: ClientId) -> Self {
        SubscriberConfig {
            addr: addr.to_owned(),
            group: group.to_owned(),
            topics: vec![SubscriptionItem {
                topic: topic.to_owned(),
                mode: SubscriptionMode::CLUSTERING,
                ty: SubscriptionType::ASYNC,
            }],
            id,
            window: 100,
        }
    }

    /// Every member gets every event.
    pub fn broadcasting(mut self) -> Self {
        for t in &mut self.topics {
            t.mode = SubscriptionMode::BROADCASTING;
        }
        self
    }

    /// Pushed events are requests this client answers with [`Delivery::reply`].
    pub fn requests(mut self) -> Self {
        for t in &mut self.topics {
            t.ty = SubscriptionType::SYNC;
        }
        self
    }
}

/// One event pushed to this client.
pub struct Delivery {
    pub event: Event,
    /// The topic it was published to.
    pub topic: String,
    seq: String,
    kind: Command,
    conn: Weak<Conn>,
}

impl Delivery {
    /// Acknowledges the event: evmesh will not deliver it again. An ack on a connection that
    /// has since broken is dropped (the event comes again on the new one).
    pub async fn ack(self) -> Result<(), SdkError> {
        let cmd = match self.kind {
            Command::REQUEST_TO_CLIENT => Command::REQUEST_TO_CLIENT_ACK,
            Command::BROADCAST_MESSAGE_TO_CLIENT => Command::BROADCAST_MESSAGE_TO_CLIENT_ACK,
            _ => Command::ASYNC_MESSAGE_TO_CLIENT_ACK,
        };
        match self.conn.upgrade() {
            Some(c) if !c.is_closed() => c.send(Frame::bare(Header::new(cmd, self.seq))).await,
            _ => Ok(()),
        }
    }

    /// Whether the event is a request (a `requests()` subscription).
    pub fn is_request(&self) -> bool {
        self.kind == Command::REQUEST_TO_CLIENT
    }

    /// Answers a request with `reply` (it gets the request's correlation), then acknowledges
    /// the request.
    pub async fn reply(self, mut reply: Event) -> Result<(), SdkError> {
        use cloudevents::event::AttributesReader;
        for key in ["correlationid", "replyto"] {
            if let Some(v) = self.event.extension(key) {
                if reply.extension(key).is_none() {
                    reply.set_extension(key, v.clone());
                }
            }
        }
        let conn = self.conn.upgrade().ok_or(SdkError::Disconnected)?;
        let body = serde_json::to_vec(&reply).map_err(|e| SdkError::Invalid(e.to_string()))?;
        let h = Header::new(Command::RESPONSE_TO_SERVER, conn.next_seq())
            .with_property(protocol::PROTOCOL_TYPE, protocol::CLOUDEVENTS)
            .with_property(protocol::PROTOCOL_VERSION, "1.0");
        conn.send(Frame::new(h, body)).await?;
        let _ = reply.id();
        self.ack().await
    }
}

/// A stream of [`Delivery`]s.
///
/// ```no_run
/// # async fn demo() -> Result<(), evmesh_sdk::SdkError> {
/// use futures_util::StreamExt;
/// let cfg = evmesh_sdk::SubscriberConfig::new(
///     "127.0.0.1:10000",
///     "billing",
///     "orders",
///     evmesh_sdk::ClientId::new("billing"),
/// );
/// let mut sub = evmesh_sdk::Subscriber::connect(cfg).await?;
/// while let Some(d) = sub.next().await {
///     println!("{}", d.event);
///     d.ack().await?;
/// }
/// # Ok(()) }
/// ```
pub struct Subscriber {
    rx: mpsc::Receiver<Delivery>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects (the first connection must succeed) and keeps the subscription going.
    pub async fn connect(cfg: SubscriberConfig) -> Result<Subscriber, SdkError> {
        let (tx, rx) = mpsc::channel(cfg.window.max(1));
        let first = session(&cfg, &tx).await?;
        let task = tokio::spawn(run(cfg, tx, first));
        Ok(Subscriber { rx, task })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Subscriber {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

/// A live session: its connection and the frames it pushes.
struct Session {
    conn: Arc<Conn>,
    pushes: mpsc::Receiver<Frame>,
}

async fn session(
    cfg: &SubscriberConfig,
    _tx: &mpsc::Sender<Delivery>,
) -> Result<Session, SdkError> {
    let (ptx, pushes) = mpsc::channel(cfg.window.max(1) * 2);
    let mut agent = cfg.id.agent("sub", &cfg.group);
    agent.unack = i64::try_from(cfg.window).unwrap_or(100);
    let conn = Conn::open(&cfg.addr, &agent, Some(ptx)).await?;
    conn.keep_alive(Duration::from_secs(10));
    let sub = Subscription {
        topic_list: cfg.topics.clone(),
    };
    let body = serde_json::to_vec(&sub).map_err(|e| SdkError::Invalid(e.to_string()))?;
    let f = Frame::new(
        Header::new(Command::SUBSCRIBE_REQUEST, conn.next_seq()),
        body,
    );
    check(&conn.call(f, Duration::from_secs(10)).await?)?;
    let f = Frame::bare(Header::new(Command::LISTEN_REQUEST, conn.next_seq()));
    check(&conn.call(f, Duration::from_secs(10)).await?)?;
    Ok(Session { conn, pushes })
}

async fn run(cfg: SubscriberConfig, tx: mpsc::Sender<Delivery>, first: Session) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let s = match current.take() {
            Some(s) => s,
            None => match session(&cfg, &tx).await {
                Ok(s) => {
                    tracing::info!(addr = %cfg.addr, group = %cfg.group, "subscriber reconnected");
                    backoff = Duration::from_millis(100);
                    s
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reconnecting failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let Session { conn, mut pushes } = s;
        while let Some(f) = pushes.recv().await {
            let Some(d) = delivery(&f, &conn) else {
                continue;
            };
            if tx.send(d).await.is_err() {
                return; // the subscriber was dropped
            }
        }
        tracing::info!(addr = %cfg.addr, "subscriber connection lost; reconnecting");
    }
}

fn delivery(f: &Frame, conn: &Arc<Conn>) -> Option<Delivery> {
    let kind = f.header.cmd;
    if !matches!(
        kind,
        Command::ASYNC_MESSAGE_TO_CLIENT
            | Command::BROADCAST_MESSAGE_TO_CLIENT
            | Command::REQUEST_TO_CLIENT
    ) {
        return None;
    }
    let topic = f.header.property("topic").unwrap_or_default().to_owned();
    let event = match f.header.property(protocol::PROTOCOL_TYPE) {
        Some(protocol::EVENTMESH_MESSAGE) => {
            from_message(f.json::<EventMeshMessage>().ok()?, &f.header.seq)?
        }
        _ => f.json::<Event>().ok()?,
    };
    Some(Delivery {
        event,
        topic,
        seq: f.header.seq.clone(),
        kind,
        conn: Arc::downgrade(conn),
    })
}

fn from_message(m: EventMeshMessage, seq: &str) -> Option<Event> {
    use cloudevents::{EventBuilder, EventBuilderV10};
    let mut b = EventBuilderV10::new()
        .id(seq)
        .source("/")
        .ty("eventmeshmessage")
        .subject(m.topic.as_str())
        .data("text/plain", m.body);
    for (k, v) in m.properties {
        b = b.extension(&k, v);
    }
    b.build().ok()
}
