use super::*;
use evmesh_core::Data;
use serde_json::json;

#[test]
fn cloudevent_attributes_and_json_data_are_addressable() {
    let mut e = Event::new("1", "shop/eu", "order.created");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(Data::binary(
        br#"{"order":{"total":150,"lines":[{"sku":"a"},{"sku":"b"}]}}"#.to_vec(),
    ));
    let f = PatternFilter::compile(&json!({
        "type": ["order.created"],
        "source": [{"prefix": "shop/"}],
        "data": {"order": {"total": [{"numeric": [">", 100]}], "lines.sku": ["b"]}}
    }))
    .unwrap();
    assert!(f.matches(&e));
    let f =
        PatternFilter::compile(&json!({"data": {"order": {"total": [{"numeric": ["<", 100]}]}}}))
            .unwrap();
    assert!(!f.matches(&e));
    assert!(f
        .explain(&e, "filters[0]")
        .unwrap()
        .starts_with("filters[0].pattern.data.order.total"));
}

#[test]
fn invalid_patterns_are_refused() {
    assert!(Pattern::compile(&json!({"a": []})).is_err());
    assert!(Pattern::compile(&json!({"a": "x"})).is_err());
    assert!(Pattern::compile(&json!({"a": [{"wildcard": "a**"}]})).is_err());
}

mod fast_path {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #[test]
        fn attribute_fast_path_agrees_with_flattening(
            ty in prop::sample::select(vec!["a", "ab", "b", "A"]),
            subject in prop::option::of(prop::sample::select(vec!["a", "ab", "x.pdf"])),
            n in prop::option::of(-3i64..3),
            kind in 0..7u8,
        ) {
            let pattern = match kind {
                0 => json!({"type": ["a", "b"]}),
                1 => json!({"type": [{"prefix": "a"}], "subject": [{"exists": true}]}),
                2 => json!({"subject": [{"exists": false}]}),
                3 => json!({"type": [{"anything-but": ["a"]}]}),
                4 => json!({"n": [{"numeric": [">", 0]}]}),
                5 => json!({"$or": [{"type": [{"equals-ignore-case": "a"}]}, {"subject": [{"suffix": ".pdf"}]}]}),
                _ => json!({"type": [{"wildcard": "*b"}]}),
            };
            let f = PatternFilter::compile(&pattern).unwrap();
            prop_assert!(f.attributes_only);
            let mut e = Event::new("1", "s", ty);
            e.subject = subject.map(str::to_owned);
            if let Some(n) = n {
                e.set_extension("n", ExtValue::Integer(n));
            }
            prop_assert_eq!(f.matches(&e), f.pattern.matches_flat(&Flat::from_event(&e)));
        }
    }
}
