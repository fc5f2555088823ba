//! Routing: events whose `data.priority` is `high` are published to the topic named in
//! `with: {urgent: ...}` instead of being delivered to this subscription's sink.
use evmesh_plugin::{EventRef, Routed};
use serde_json::Value;

#[evmesh_plugin::transform]
fn route(e: &EventRef) -> Routed {
    let high = e
        .data
        .and_then(|d| serde_json::from_slice::<Value>(d).ok())
        .is_some_and(|v| v.get("priority").and_then(Value::as_str) == Some("high"));
    // An empty topic means: deliver to the subscription's own sink.
    let topic = if high { evmesh_plugin::config("urgent").unwrap_or("urgent") } else { "" };
    Routed { topic: topic.to_owned(), event: e.to_owned_event() }
}
