//! The evmesh client SDK.
//!
//! - [`Publisher`]: publish over HTTP or over the EventMesh TCP protocol (`publish`,
//!   `publish_batch`, `request` for request-reply); every call resolves once evmesh has the
//!   events durably.
//! - [`Subscriber`]: a `Stream` of [`Delivery`]s over TCP, each acknowledged explicitly
//!   ([`Delivery::ack`]), that reconnects and resubscribes by itself after a server restart or
//!   a network cut, so nothing is lost.
//! - [`webhook`]: a receiver to run inside an application, for subscriptions that push to it
//!   over HTTP (binary, structured, or EventMesh's push format).
//! - [`protocol`]: the EventMesh TCP wire format (the server uses it too).
//!
//! Events are [`cloudevents::Event`]s (the `cloudevents-sdk` crate, re-exported).
//!
//! ```no_run
//! # async fn demo() -> Result<(), evmesh_sdk::SdkError> {
//! use evmesh_sdk::cloudevents::{EventBuilder, EventBuilderV10};
//! use evmesh_sdk::AttributesReader;
//! use futures_util::StreamExt;
//!
//! let id = evmesh_sdk::ClientId::new("shop");
//! let publisher = evmesh_sdk::Publisher::tcp("127.0.0.1:10000", id.clone()).await?;
//! let cfg = evmesh_sdk::SubscriberConfig::new("127.0.0.1:10000", "audit", "orders", id);
//! let mut subscriber = evmesh_sdk::Subscriber::connect(cfg).await?;
//!
//! let event = EventBuilderV10::new()
//!     .id("1")
//!     .source("/shop")
//!     .ty("order.created")
//!     .build()
//!     .map_err(|e| evmesh_sdk::SdkError::Invalid(e.to_string()))?;
//! publisher.publish("orders", &event).await?;
//! if let Some(delivery) = subscriber.next().await {
//!     assert_eq!(delivery.event.id(), "1");
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```

mod conn;
pub mod protocol;
mod publisher;
mod subscriber;
pub mod webhook;

pub use cloudevents;
pub use cloudevents::event::AttributesReader;
pub use publisher::Publisher;
pub use subscriber::{Delivery, Subscriber, SubscriberConfig};

use protocol::UserAgent;
use std::time::Duration;

/// Everything that can go wrong, in one place.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("the connection to evmesh broke")]
    Disconnected,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("evmesh refused ({code}): {message}")]
    Refused { code: i32, message: String },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Who a client is, as evmesh sees it (EventMesh's user agent). A subscriber that comes back
/// with the same id gets the BROADCASTING events sent while it was away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId {
    pub subsystem: String,
    pub host: String,
    pub pid: i64,
    pub username: String,
    pub password: String,
}

impl ClientId {
    /// This process on this host, as `subsystem`.
    pub fn new(subsystem: &str) -> ClientId {
        ClientId {
            subsystem: subsystem.to_owned(),
            host: std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned()),
            pid: i64::from(std::process::id()),
            username: String::new(),
            password: String::new(),
        }
    }

    /// The same client, named by a stable `instance` instead of the process id (for a
    /// broadcasting subscriber that must be recognised after a restart).
    pub fn instance(mut self, instance: i64) -> ClientId {
        self.pid = instance;
        self
    }

    pub(crate) fn agent(&self, purpose: &str, group: &str) -> UserAgent {
        UserAgent {
            env: "evmesh".into(),
            subsystem: self.subsystem.clone(),
            pid: self.pid,
            host: self.host.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            purpose: purpose.to_owned(),
            consumer_group: group.to_owned(),
            producer_group: if purpose == "pub" {
                self.subsystem.clone()
            } else {
                String::new()
            },
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..UserAgent::default()
        }
    }
}
