//! Evaluating compiled filters allocates nothing in the common case (string attributes, CESQL
//! with up to three function arguments, attribute-only patterns), and neither does the index.
#![allow(clippy::unwrap_used)]

use evmesh_core::component::ComponentSpec;
use evmesh_core::config::{FilterConfig, SubscriptionConfig};
use evmesh_core::Event;
use evmesh_router::{Origin, Route, TopicIndex};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn route(i: usize, filters: serde_json::Value) -> Arc<Route> {
    let cfg = SubscriptionConfig {
        filters: serde_json::from_value::<Vec<FilterConfig>>(filters).unwrap(),
        ..SubscriptionConfig::new(format!("s{i}"), "t", ComponentSpec::webhook("http://x/"))
    };
    Arc::new(Route::compile(cfg, Origin::Config, None).unwrap())
}

#[test]
fn filter_evaluation_and_index_lookups_do_not_allocate() {
    let routes = vec![
        route(
            0,
            serde_json::json!([{"exact": {"type": "order.created"}}, {"prefix": {"source": "shop/"}}]),
        ),
        route(
            1,
            serde_json::json!([{"any": [{"suffix": {"subject": ".pdf"}}, {"not": {"exact": {"region": "us"}}}]}]),
        ),
        route(
            2,
            serde_json::json!([{"cesql": "type = 'order.created' AND source LIKE 'shop/%' AND LENGTH(subject) > 3"}]),
        ),
        route(
            3,
            serde_json::json!([{"pattern": {"type": ["order.created", "order.paid"], "source": [{"prefix": "shop/"}], "region": [{"anything-but": "us"}]}}]),
        ),
    ];
    let index = TopicIndex::build(routes.clone());
    let mut e = Event::new("1", "shop/eu", "order.created");
    e.subject = Some("invoice.pdf".into());
    e.set_extension("region", evmesh_core::ExtValue::String("eu".into()));
    let mut out = Vec::with_capacity(16);
    // Warm up (lazy statics, first-use buffers).
    for r in &routes {
        assert!(r.matches(&e), "{}", r.name());
    }
    index.matching(&e, &mut out);
    assert_eq!(out, vec![0, 1, 2, 3]);

    let region = Region::new(GLOBAL);
    let mut hits = 0;
    for _ in 0..1000 {
        for r in &routes {
            hits += usize::from(r.matches(&e));
        }
        out.clear();
        index.matching(&e, &mut out);
        hits += out.len();
    }
    let allocs = region.change().allocations;
    assert_eq!(hits, 8000);
    assert_eq!(
        allocs, 0,
        "{allocs} allocations in 8,000 filter evaluations and 1,000 index lookups"
    );
}
