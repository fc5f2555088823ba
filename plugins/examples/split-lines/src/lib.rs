//! Fan-out: an order event whose data is `{"order": ..., "lines": [...]}` becomes one event per
//! line item (`type: order.line`, id `<id>-<n>`, data: the line). Other events pass unchanged.
use evmesh_plugin::{Event, EventRef, ExtValue};
use serde_json::Value;

#[evmesh_plugin::transform]
fn split(e: &EventRef) -> Vec<Event> {
    let Some(Ok(v)) = e.data.map(serde_json::from_slice::<Value>) else {
        return vec![e.to_owned_event()];
    };
    let Some(lines) = v.get("lines").and_then(Value::as_array) else {
        return vec![e.to_owned_event()];
    };
    lines
        .iter()
        .enumerate()
        .map(|(n, line)| {
            let mut out = e.to_owned_event();
            out.id = format!("{}-{n}", e.id);
            out.ty = "order.line".into();
            out.datacontenttype = Some("application/json".into());
            out.data = Some(line.to_string().into_bytes());
            out.set_extension("linenumber", ExtValue::Int(n as i64));
            out
        })
        .collect()
}
