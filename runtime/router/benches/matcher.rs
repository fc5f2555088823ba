//! The subscription matcher alone, in-process: mixed dialects (exact, prefix, suffix, CESQL
//! with an equality conjunct, JSON patterns) for 1, 100 and 10,000 subscriptions, indexed vs
//! evaluated one by one. `cargo bench -p evmesh-router --bench matcher`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    matcher_bench();
}

/// The subscription matcher alone: mixed dialects (exact, prefix, suffix, CESQL with an
/// equality conjunct, JSON patterns), indexed vs evaluated one by one.
fn matcher_bench() {
    use evmesh_core::component::ComponentSpec;
    use evmesh_core::config::{FilterConfig, SubscriptionConfig};
    use evmesh_router::{Origin, Route, TopicIndex};
    let sub = |i: usize, filters: serde_json::Value| SubscriptionConfig {
        filters: serde_json::from_value::<Vec<FilterConfig>>(filters).unwrap_or_default(),
        ..SubscriptionConfig::new(
            format!("s{i}"),
            "t",
            ComponentSpec::webhook("http://127.0.0.1/"),
        )
    };
    let make = |n: usize| -> TopicIndex {
        let routes = (0..n)
            .map(|i| {
                let f = match i % 10 {
                    0..=4 => serde_json::json!([{"exact": {"type": format!("t{i}")}}, {"prefix": {"source": "shop/"}}]),
                    5 | 6 => serde_json::json!([{"prefix": {"source": format!("shop/{i}/")}}]),
                    7 => serde_json::json!([{"suffix": {"subject": format!(".{i}")}}]),
                    8 => serde_json::json!([{"cesql": format!("type = 't{i}' AND source LIKE 'shop/%'")}]),
                    _ => serde_json::json!([{"pattern": {"type": [format!("t{i}")], "source": [{"prefix": "shop/"}]}}]),
                };
                Arc::new(Route::compile(sub(i, f), Origin::Config, None).expect("bench filters compile"))
            })
            .collect();
        TopicIndex::build(routes)
    };
    for n in [1usize, 100, 10_000] {
        let idx = make(n);
        let events: Vec<evmesh_core::Event> = (0..1024)
            .map(|k| {
                let i = (k * 7919) % (n + n / 4 + 1);
                let mut e = evmesh_core::Event::new(
                    format!("{k}"),
                    format!("shop/{i}/eu"),
                    format!("t{i}"),
                );
                e.subject = Some(format!("doc.{i}"));
                e
            })
            .collect();
        let stats = idx.stats();
        let mut out = Vec::new();
        let mut matched = 0usize;
        let run = |linear: bool, out: &mut Vec<usize>, matched: &mut usize| {
            let budget = Duration::from_millis(if linear && n > 1000 { 300 } else { 700 });
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < budget {
                for e in &events {
                    out.clear();
                    if linear {
                        idx.matching_linear(e, out);
                    } else {
                        idx.matching(e, out);
                    }
                    *matched += out.len();
                }
                count += events.len() as u64;
            }
            start.elapsed().as_nanos() as f64 / count as f64
        };
        let indexed = run(false, &mut out, &mut matched);
        let linear = run(true, &mut out, &mut matched);
        println!(
            "match {n:>6} subs  indexed {indexed:>8.0} ns/event ({:>9.0} events/s)  linear {linear:>10.0} ns/event  [{} indexed, {} unindexed]",
            1e9 / indexed,
            stats.indexed,
            stats.residual
        );
        std::hint::black_box(matched);
    }
}
