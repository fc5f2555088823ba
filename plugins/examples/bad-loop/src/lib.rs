//! Deliberately broken: never returns. The host's deadline (epoch interruption) stops it.
use evmesh_plugin::EventRef;

#[evmesh_plugin::filter]
fn spin(e: &EventRef) -> bool {
    let mut x = e.id.len() as u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
