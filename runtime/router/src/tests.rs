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
