//! Publishing: over HTTP (`POST /topics/{topic}`) or over the EventMesh TCP protocol. Either
//! way `publish` resolves only when evmesh has the event durably.

use crate::conn::{check, Conn};
use crate::protocol::{self, Command, Frame, Header, UserAgent};
use crate::{ClientId, SdkError};
use bytes::Bytes;
use cloudevents::Event;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Publishes events to evmesh.
///
/// ```no_run
/// # async fn demo() -> Result<(), evmesh_sdk::SdkError> {
/// use evmesh_sdk::cloudevents::{EventBuilder, EventBuilderV10};
/// let publisher = evmesh_sdk::Publisher::http("http://127.0.0.1:10105")?;
/// let event = EventBuilderV10::new()
///     .id("1")
///     .source("/shop")
///     .ty("order.created")
///     .build()
///     .map_err(|e| evmesh_sdk::SdkError::Invalid(e.to_string()))?;
/// publisher.publish("orders", &event).await?;
/// # Ok(()) }
/// ```
pub struct Publisher {
    inner: Inner,
}

enum Inner {
    Http {
        base: String,
        client: Client<HttpConnector, Full<Bytes>>,
    },
    Tcp(TcpPublisher),
}

impl Publisher {
    /// A publisher over HTTP; `base` is the ingest address (`http://127.0.0.1:10105`).
    pub fn http(base: &str) -> Result<Publisher, SdkError> {
        if !base.starts_with("http://") {
            return Err(SdkError::Invalid(format!(
                "{base:?}: the HTTP publisher takes an http:// address"
            )));
        }
        Ok(Publisher {
            inner: Inner::Http {
                base: base.trim_end_matches('/').to_owned(),
                client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            },
        })
    }

    /// A publisher over the TCP protocol (`127.0.0.1:10000`), which reconnects by itself.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), evmesh_sdk::SdkError> {
    /// let id = evmesh_sdk::ClientId::new("billing");
    /// let publisher = evmesh_sdk::Publisher::tcp("127.0.0.1:10000", id).await?;
    /// # Ok(()) }
    /// ```
    pub async fn tcp(addr: &str, id: ClientId) -> Result<Publisher, SdkError> {
        let p = TcpPublisher {
            addr: addr.to_owned(),
            agent: id.agent("pub", ""),
            conn: Mutex::new(None),
        };
        p.conn().await?;
        Ok(Publisher {
            inner: Inner::Tcp(p),
        })
    }

    /// Stores one event in `topic`; resolves once evmesh has it durably.
    pub async fn publish(&self, topic: &str, event: &Event) -> Result<(), SdkError> {
        match &self.inner {
            Inner::Http { base, client } => {
                let body =
                    serde_json::to_vec(event).map_err(|e| SdkError::Invalid(e.to_string()))?;
                let url = format!("{base}/topics/{topic}");
                post(client, &url, "application/cloudevents+json", body).await?;
                Ok(())
            }
            Inner::Tcp(t) => t.publish(topic, std::slice::from_ref(event)).await,
        }
    }

    /// Stores several events in `topic` (over HTTP as one all-or-nothing batch; over TCP as
    /// pipelined frames); resolves once every one is durable.
    pub async fn publish_batch(&self, topic: &str, events: &[Event]) -> Result<(), SdkError> {
        match &self.inner {
            Inner::Http { base, client } => {
                let body =
                    serde_json::to_vec(events).map_err(|e| SdkError::Invalid(e.to_string()))?;
                let url = format!("{base}/topics/{topic}");
                post(client, &url, "application/cloudevents-batch+json", body).await?;
                Ok(())
            }
            Inner::Tcp(t) => t.publish(topic, events).await,
        }
    }

    /// Publishes `event` as a request and waits up to `timeout` for the reply event.
    pub async fn request(
        &self,
        topic: &str,
        event: &Event,
        timeout: Duration,
    ) -> Result<Event, SdkError> {
        match &self.inner {
            Inner::Http { base, client } => {
                let body =
                    serde_json::to_vec(event).map_err(|e| SdkError::Invalid(e.to_string()))?;
                let url = format!(
                    "{base}/topics/{topic}/request?timeout=PT{}S",
                    timeout.as_secs_f64()
                );
                let reply = post(client, &url, "application/cloudevents+json", body).await?;
                serde_json::from_slice(&reply)
                    .map_err(|e| SdkError::Protocol(format!("the reply is not a CloudEvent: {e}")))
            }
            Inner::Tcp(t) => t.request(topic, event, timeout).await,
        }
    }
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Bytes, SdkError> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| SdkError::Invalid(e.to_string()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| SdkError::Connect(format!("{url}: {e}")))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| SdkError::Connect(e.to_string()))?
        .to_bytes();
    if status.is_success() {
        return Ok(body);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    if status == http::StatusCode::GATEWAY_TIMEOUT {
        return Err(SdkError::Timeout(Duration::ZERO));
    }
    Err(SdkError::Refused {
        code: i32::from(status.as_u16()),
        message,
    })
}

/// Publishing over TCP: one connection, replaced when it breaks.
struct TcpPublisher {
    addr: String,
    agent: UserAgent,
    conn: Mutex<Option<Arc<Conn>>>,
}

const ACK_TIMEOUT: Duration = Duration::from_secs(30);

impl TcpPublisher {
    async fn conn(&self) -> Result<Arc<Conn>, SdkError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Conn::open(&self.addr, &self.agent, None).await?;
        c.keep_alive(Duration::from_secs(10));
        *g = Some(c.clone());
        Ok(c)
    }

    fn frame(conn: &Conn, cmd: Command, topic: &str, event: &Event) -> Result<Frame, SdkError> {
        let body = serde_json::to_vec(event).map_err(|e| SdkError::Invalid(e.to_string()))?;
        let h = Header::new(cmd, conn.next_seq())
            .with_property(protocol::PROTOCOL_TYPE, protocol::CLOUDEVENTS)
            .with_property(protocol::PROTOCOL_VERSION, "1.0")
            .with_property(protocol::PROTOCOL_DESC, "tcp")
            .with_property("topic", topic);
        Ok(Frame::new(h, body))
    }

    /// Sends every event, then waits for every ack; on a broken connection, once more on a
    /// fresh one (the server may then hold a duplicate: at least once).
    async fn publish(&self, topic: &str, events: &[Event]) -> Result<(), SdkError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.publish_once(topic, events).await {
                Err(SdkError::Disconnected) if tries < 3 => {
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                other => return other,
            }
        }
    }

    async fn publish_once(&self, topic: &str, events: &[Event]) -> Result<(), SdkError> {
        let conn = self.conn().await?;
        let mut waits = Vec::with_capacity(events.len());
        for e in events {
            let f = Self::frame(&conn, Command::ASYNC_MESSAGE_TO_SERVER, topic, e)?;
            waits.push(conn.expect(&f.header.seq));
            conn.send(f).await?;
        }
        for w in waits {
            check(&Conn::wait(w, ACK_TIMEOUT).await?)?;
        }
        Ok(())
    }

    async fn request(
        &self,
        topic: &str,
        event: &Event,
        timeout: Duration,
    ) -> Result<Event, SdkError> {
        let conn = self.conn().await?;
        let f = Self::frame(&conn, Command::REQUEST_TO_SERVER, topic, event)?;
        let seq = f.header.seq.clone();
        let answer = conn.call(f, timeout).await?;
        check(&answer)?;
        let reply: Event = answer
            .json()
            .map_err(|e| SdkError::Protocol(e.to_string()))?;
        let ack = Frame::bare(Header::new(Command::RESPONSE_TO_CLIENT_ACK, seq));
        let _ = conn.send(ack).await;
        Ok(reply)
    }
}
