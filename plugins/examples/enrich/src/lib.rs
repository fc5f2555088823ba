//! Renames the event's type (`with: {type: ...}`) and copies `data.customer` into a
//! `customer` extension; marks the event with an `enrichedby` extension.
use evmesh_plugin::{Event, EventRef, ExtValue};
use serde_json::Value;

#[evmesh_plugin::transform]
fn enrich(e: &EventRef) -> Event {
    let mut out = e.to_owned_event();
    if let Some(t) = evmesh_plugin::config("type") {
        out.ty = t.to_owned();
    }
    if let Some(Ok(v)) = e.data.map(serde_json::from_slice::<Value>) {
        if let Some(c) = v.get("customer").and_then(Value::as_str) {
            out.set_extension("customer", ExtValue::Str(c.to_owned()));
        }
    }
    out.set_extension("enrichedby", ExtValue::Str("evmesh-wasm".into()));
    out
}
