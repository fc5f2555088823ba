//! Deliberately broken: allocates until the host's memory cap stops it.
use evmesh_plugin::EventRef;

#[evmesh_plugin::filter]
fn hog(_e: &EventRef) -> bool {
    let mut v: Vec<Vec<u8>> = Vec::new();
    loop {
        v.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&v);
    }
}
