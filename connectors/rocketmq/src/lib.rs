//! RocketMQ for evmesh: a sink (each event one message, delivered on `SEND_OK`), a source
//! (messages into an evmesh topic, committed only after they are durable), and
//! [`RocketMqStore`], RocketMQ as the event store so that several evmesh instances share the
//! delivery work through consumer groups.
//!
//! The client is `rocketmq-client-rust`, which speaks RocketMQ's remoting protocol to name
//! servers and brokers (Apache RocketMQ's and the Rust broker's alike). The CloudEvents
//! RocketMQ binding is in [`binding`]; how evmesh names map to RocketMQ's in [`names`].

pub mod binding;
pub mod client;
pub mod config;
pub mod names;
mod sink;
mod source;
mod store;

pub use client::{java_hash, queue_for_key};
pub use config::{
    MessageModel, RocketMqMode, RocketMqSinkConfig, RocketMqSourceConfig, RocketMqStoreConfig,
};
pub use sink::RocketMqSink;
pub use source::RocketMqSource;
pub use store::RocketMqStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RocketMqError {
    /// The client could not start or reach the cluster; says what and why.
    #[error("rocketmq: {0}")]
    Client(String),
}
