use super::*;
use evmesh_core::component::ComponentSpec;
use evmesh_core::{Data, DataKind, ExtValue};
use proptest::prelude::*;
use serde_json::json;

fn sub(filters: Vec<FilterConfig>, delivery: Option<DeliverySpec>) -> SubscriptionConfig {
    SubscriptionConfig {
        filters,
        delivery,
        max_in_flight: 1,
        ..SubscriptionConfig::new("s", "t", ComponentSpec::webhook("http://x/"))
    }
}

fn filters(json: serde_json::Value) -> Vec<FilterConfig> {
    serde_json::from_value(json).unwrap()
}

#[test]
fn subscription_delivery_replaces_the_default_as_a_whole() {
    let default = DeliverySpec {
        retry: 3,
        ..Default::default()
    };
    let own = DeliverySpec {
        retry: 7,
        ..Default::default()
    };
    let r = Route::compile(sub(vec![], None), Origin::Config, Some(&default)).unwrap();
    assert_eq!(r.delivery.retry, 3);
    let r = Route::compile(sub(vec![], Some(own)), Origin::Config, Some(&default)).unwrap();
    assert_eq!(r.delivery.retry, 7);
    let r = Route::compile(sub(vec![], None), Origin::Api, None).unwrap();
    assert_eq!(r.delivery.retry, 10);
    assert_eq!(r.reply_topic(), "t");
}

#[test]
fn dialects_nest_inside_all_any_not_and_errors_carry_paths() {
    let f = filters(json!([
        {"any": [{"cesql": "type LIKE 'order.%'"}, {"pattern": {"subject": [{"prefix": "inv"}]}}]},
        {"not": {"exact": {"source": "blocked"}}}
    ]));
    let r = Route::compile(sub(f, None), Origin::Config, None).unwrap();
    let mut e = Event::new("1", "shop", "order.created");
    assert!(r.matches(&e));
    e.ty = "x".into();
    let why = r.explain_filter(&e).unwrap();
    assert!(
        why.starts_with("filters[0].any: no alternative matched"),
        "{why}"
    );

    let bad = filters(json!([{"all": [{"cesql": "type = "}]}, {"pattern": {"a": []}}]));
    let err = Route::compile(sub(bad, None), Origin::Config, None)
        .err()
        .unwrap();
    let paths: Vec<&str> = err.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["filters[0].all[0].cesql", "filters[1].pattern"]);
}

#[test]
fn explain_shows_transform_output() {
    let mut s = sub(filters(json!([{"exact": {"type": "t"}}])), None);
    s.transforms = serde_json::from_value(json!([{"set": {"type": "t2"}}])).unwrap();
    let r = Route::compile(s, Origin::Config, None).unwrap();
    let ex = r.explain(&Event::new("1", "s", "t"));
    assert!(ex.matches);
    assert_eq!(ex.transformed.unwrap().unwrap()[0].ty, "t2");
    let ex = r.explain(&Event::new("1", "s", "u"));
    assert_eq!(
        ex.reason.as_deref(),
        Some("filters[0].exact.type: \"u\" is not \"t\"")
    );
}

/// A random subscription in one of the dialects, over a small vocabulary so that matches happen.
fn arb_filters() -> impl Strategy<Value = Vec<FilterConfig>> {
    let val = prop::sample::select(vec!["a", "b", "ab", "ba", "abc"]);
    let attr = prop::sample::select(vec!["type", "source", "subject", "ext"]);
    let one = (0..6u8, attr, val).prop_map(|(kind, a, v)| match kind {
        0 => json!({"exact": {a: v}}),
        1 => json!({"prefix": {a: v}}),
        2 => json!({"suffix": {a: v}}),
        3 => json!({"cesql": format!("{a} = '{v}'")}),
        4 => json!({"pattern": {a: [v, "zz"]}}),
        _ => json!({"not": {"exact": {a: v}}}),
    });
    prop::collection::vec(one, 0..3)
        .prop_map(|v| serde_json::from_value(serde_json::Value::Array(v)).unwrap())
}

fn arb_event() -> impl Strategy<Value = Event> {
    let val = prop::sample::select(vec!["a", "b", "ab", "ba", "abc", "c"]);
    (
        val.clone(),
        val.clone(),
        prop::option::of(val.clone()),
        prop::option::of(val),
    )
        .prop_map(|(t, s, subj, ext)| {
            let mut e = Event::new("1", s, t);
            e.subject = subj.map(str::to_owned);
            if let Some(x) = ext {
                e.set_extension("ext", ExtValue::String(x.into()));
            }
            e.data = Some(Data {
                kind: DataKind::Json,
                bytes: bytes_of("{}"),
            });
            e
        })
}

fn bytes_of(s: &'static str) -> bytes::Bytes {
    bytes::Bytes::from_static(s.as_bytes())
}

proptest! {
    #[test]
    fn index_agrees_with_linear_evaluation(subs in prop::collection::vec(arb_filters(), 1..40), events in prop::collection::vec(arb_event(), 1..20)) {
        let routes: Vec<Arc<Route>> = subs.into_iter().map(|f| Arc::new(Route::compile(sub(f, None), Origin::Config, None).unwrap())).collect();
        let idx = TopicIndex::build(routes);
        for e in &events {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            idx.matching(e, &mut a);
            idx.matching_linear(e, &mut b);
            prop_assert_eq!(a, b);
        }
    }
}

/// Plugins that stand in for WASM modules: the filter keeps ids starting with `k`, the
/// transform appends `!` to the type.
struct Plugins;

struct KeepK;
impl BatchFilter for KeepK {
    fn filter_batch(&self, events: &[&Event]) -> Result<Vec<bool>, String> {
        Ok(events.iter().map(|e| e.id.starts_with('k')).collect())
    }
    fn describe(&self) -> String {
        "wasm filter keep-k".into()
    }
}

struct Bang;
impl BatchTransform for Bang {
    fn transform_batch(&self, events: &[&Event]) -> Result<Vec<Vec<Routed>>, String> {
        Ok(events
            .iter()
            .map(|e| {
                let mut e = (*e).clone();
                e.ty.push('!');
                vec![(None, e)]
            })
            .collect())
    }
    fn describe(&self) -> String {
        "wasm transform bang".into()
    }
}

impl PluginLoader for Plugins {
    fn filter(
        &self,
        _: &evmesh_core::config::WasmPluginConfig,
    ) -> Result<Arc<dyn BatchFilter>, String> {
        Ok(Arc::new(KeepK))
    }
    fn transform(
        &self,
        _: &evmesh_core::config::WasmPluginConfig,
    ) -> Result<Arc<dyn BatchTransform>, String> {
        Ok(Arc::new(Bang))
    }
}

/// A subscription of a pure filter, a plugin filter and another pure filter, then a built-in
/// and a plugin transform.
fn mixed_route() -> Route {
    let mut s = sub(
        filters(json!([
            {"exact": {"type": "t"}},
            {"wasm": {"uses": "keep-k.wasm"}},
            {"prefix": {"source": "/s"}},
        ])),
        None,
    );
    s.transforms = serde_json::from_value(json!([
        {"set": {"type": "t2"}},
        {"wasm": {"uses": "bang.wasm"}},
    ]))
    .unwrap();
    Route::compile_with(s, Origin::Config, None, Some(&Plugins)).unwrap()
}

fn runs(f: impl FnOnce(&mut dyn FnMut(StepRun))) -> Vec<(String, Option<bool>, bool)> {
    let mut out = Vec::new();
    f(&mut |r: StepRun| {
        assert!(r.ended >= r.started);
        out.push((r.path, r.matched, r.plugin.is_some()))
    });
    out
}

#[test]
fn each_filter_and_transform_step_is_reported_with_its_place() {
    let r = mixed_route();
    let ok = Event::new("k1", "/s", "t");
    // The pure filters one by one, numbered as in the config (the plugin filter is [1]).
    assert_eq!(
        runs(|t| r.trace_filters(&Event::new("k1", "/x", "t"), t)),
        [
            ("filters[0]".to_owned(), Some(true), false),
            ("filters[2]".to_owned(), Some(false), false)
        ]
    );
    // The transform chain, step by step.
    let mut out = None;
    let steps = runs(|t| out = Some(r.transform_traced(ok.clone(), Some(t))));
    assert_eq!(
        steps,
        [
            ("transforms[0]".to_owned(), None, false),
            ("transforms[1]".to_owned(), None, true)
        ]
    );
    assert_eq!(out.unwrap().unwrap()[0].1.ty, "t2!");
    // A batch: the plugin filter reports on every event it saw; the transforms only on the
    // events that passed it.
    let dropped = Event::new("x2", "/s", "t");
    let mut seen: Vec<(usize, String, Option<bool>)> = Vec::new();
    let prepared = r.prepare_batch_traced(
        &[&ok, &dropped],
        Some(&mut |i, run: StepRun| seen.push((i, run.path, run.matched))),
    );
    assert!(matches!(&prepared[0], Prepared::Outputs(o) if o[0].1.ty == "t2!"));
    assert!(matches!(prepared[1], Prepared::Skip));
    seen.sort();
    assert_eq!(
        seen,
        [
            (0, "filters[1]".to_owned(), Some(true)),
            (0, "transforms[0]".to_owned(), None),
            (0, "transforms[1]".to_owned(), None),
            (1, "filters[1]".to_owned(), Some(false)),
        ]
    );
    // Reasons name the filter's place in the config too.
    assert_eq!(
        r.explain(&Event::new("k1", "/x", "t")).reason.as_deref(),
        Some("filters[2].prefix.source: \"/x\" does not start with \"/s\"")
    );
    assert_eq!(
        r.explain(&Event::new("x1", "/s", "t")).reason.as_deref(),
        Some("filters[1].wasm: wasm filter keep-k rejected the event")
    );
}
