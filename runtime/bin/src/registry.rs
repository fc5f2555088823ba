//! Every kind of component evmesh knows, one line each. Adding a connector is a new crate and
//! its line here (and its dependency line in this crate's `Cargo.toml`); `type:` values that are
//! not listed are refused with the list of these.

use evmesh_core::component::{sink, source, Kinds, SinkConfig, SourceConfig};
use evmesh_ingress::listener::{listener, ListenerEntry};
use evmesh_store::{log, LogConfig};

/// `subscriptions[].sink` and `deadLetterSink`.
pub fn sinks() -> Kinds<dyn SinkConfig> {
    Kinds::new(
        "sink",
        vec![
            sink::<evmesh_connector_webhook::WebhookSinkConfig>(),
            sink::<evmesh_connector_kafka::KafkaSinkConfig>(),
            sink::<evmesh_connector_rocketmq::RocketMqSinkConfig>(),
            sink::<evmesh_connector_console::ConsoleSinkConfig>(),
        ],
    )
}

/// `sources[]`.
pub fn sources() -> Kinds<dyn SourceConfig> {
    Kinds::new(
        "source",
        vec![
            source::<evmesh_connector_kafka::KafkaSourceConfig>(),
            source::<evmesh_connector_rocketmq::RocketMqSourceConfig>(),
        ],
    )
}

/// `store` (the event log).
pub fn logs() -> Kinds<dyn LogConfig> {
    Kinds::new(
        "store",
        vec![
            log::<evmesh_log::EmbeddedLogConfig>(),
            log::<evmesh_connector_kafka::KafkaStoreConfig>(),
            log::<evmesh_connector_rocketmq::RocketMqStoreConfig>(),
        ],
    )
}

/// The listeners under `server:`, started in this order.
pub fn listeners() -> Vec<ListenerEntry> {
    vec![
        listener::<evmesh_ingress::HttpIngestConfig>(
            evmesh_ingress::HttpIngestConfig::default_value,
        ),
        listener::<crate::admin::AdminConfig>(crate::admin::AdminConfig::default_value),
        listener::<evmesh_eventmesh::TcpListenerConfig>(
            evmesh_eventmesh::TcpListenerConfig::default_value,
        ),
    ]
}

/// Protocols set up before the listeners start (state they share, HTTP APIs on the ingest
/// port).
pub fn protocols() -> Vec<Protocol> {
    vec![evmesh_eventmesh::install]
}

/// Sets up a protocol.
pub type Protocol = for<'a> fn(
    &'a evmesh_ingress::listener::ListenerContext,
) -> futures_util::future::BoxFuture<'a, Result<(), String>>;
