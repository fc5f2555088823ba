//! Deliberately broken: traps (panics) on every batch. Used by the isolation tests.
use evmesh_plugin::EventRef;

#[evmesh_plugin::filter]
fn boom(e: &EventRef) -> bool {
    panic!("bad-trap refuses event {}", e.id)
}
