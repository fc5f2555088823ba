//! Keeps events whose JSON data has `field` equal to `equals` (both from `with:`).
use evmesh_plugin::EventRef;
use serde_json::Value;

#[evmesh_plugin::filter]
fn keep(e: &EventRef) -> bool {
    let field = evmesh_plugin::config("field").unwrap_or("status");
    let want = evmesh_plugin::config("equals").unwrap_or("");
    let Some(Ok(v)) = e.data.map(serde_json::from_slice::<Value>) else {
        return false;
    };
    let keep = match v.get(field) {
        Some(Value::String(s)) => s == want,
        Some(other) => other.to_string() == want,
        None => false,
    };
    if keep {
        evmesh_plugin::counter("kept", 1);
    }
    keep
}
