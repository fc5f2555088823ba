use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn empty_document_gives_defaults() {
    let cfg = load("", env(&[])).unwrap();
    assert_eq!(cfg.server.max_body_bytes, 1024 * 1024);
    assert!(cfg.server.listeners.is_empty());
    assert_eq!(cfg.store.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(cfg.store.log.kind, "embedded");
}

#[test]
fn env_overrides_nested_keys() {
    let cfg = load(
        "server: {maxBodyBytes: 10}",
        env(&[
            ("EVMESH_SERVER__HTTP", "127.0.0.1:0"),
            ("EVMESH_SERVER__MAX_BODY_BYTES", "2048"),
            ("EVMESH_STORE__FSYNC", "never"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.server.listeners["http"], Value::from("127.0.0.1:0"));
    assert_eq!(cfg.server.max_body_bytes, 2048);
    assert_eq!(cfg.store.log.kind, "embedded");
    assert_eq!(
        cfg.store.log.settings.get("fsync"),
        Some(&Value::from("never"))
    );
}

#[test]
fn kubernetes_service_variables_are_not_config_paths() {
    let cfg = load(
        "",
        env(&[
            ("EVMESH_PORT", "tcp://10.0.0.7:10105"),
            ("EVMESH_PORT_10105_TCP_ADDR", "10.0.0.7"),
            ("EVMESH_SERVICE_HOST", "10.0.0.7"),
            ("EVMESH_SERVICE_PORT_HTTP", "10105"),
            ("EVMESH_SERVER__HTTP", "127.0.0.1:1"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.server.listeners["http"], Value::from("127.0.0.1:1"));
    // A real override with a typo still fails loudly.
    let err = load("", env(&[("EVMESH_SERVR__HTTP", "x")])).unwrap_err();
    assert!(err.to_string().contains("servr"), "{err}");
}

#[test]
fn full_subscription_example_parses() {
    let text = r#"
subscriptions:
  - name: audit
    topic: orders
    filters:
      - exact:  { type: com.example.order.created }
      - prefix: { source: "shop/" }
      - any:    [ { suffix: { subject: ".pdf" } }, { exact: { subject: "x" } } ]
      - not:    { exact: { datacontenttype: text/plain } }
    sink:
      type: webhook
      url: http://127.0.0.1:8080/hook
      mode: binary
    delivery:
      retry: 5
      backoffPolicy: exponential
      backoffDelay: PT0.2S
      backoffMax: PT30S
      timeout: PT5S
      deadLetterSink: { type: webhook, url: http://127.0.0.1:8081/dlq }
"#;
    let cfg = load(text, env(&[])).unwrap();
    let s = &cfg.subscriptions[0];
    assert_eq!(s.filters.len(), 4);
    assert_eq!(s.delivery.as_ref().unwrap().retry, 5);
    assert!(matches!(s.filters[2], FilterConfig::Any(ref v) if v.len() == 2));
}

#[test]
fn every_error_is_reported_with_its_path() {
    let text = r#"
subscriptions:
  - name: a
    topic: t
    sink: { type: webhook, url: http://x/ }
  - name: b
    topic: t
    sink: { url: http://x/ }
  - name: c
    topic: t
    sink: { type: webhook, url: http://x/ }
    delivery: { backoffDelay: "5 s" }
"#;
    let errs = load(text, env(&[])).unwrap_err().0;
    let rendered: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        rendered
            .iter()
            .any(|e| e
                == "subscriptions[2].delivery.backoffDelay: invalid ISO-8601 duration \"5 s\""),
        "{rendered:?}"
    );
    assert!(
        rendered
            .iter()
            .any(|e| e.starts_with("subscriptions[1].sink")),
        "{rendered:?}"
    );
}

#[test]
fn semantic_errors_are_all_collected() {
    let text = r#"
subscriptions:
  - name: a
    topic: "bad topic"
    sink: { type: webhook, url: "ftp://x" }
  - name: a
    topic: t
    sink: { type: webhook, url: http://x/ }
"#;
    let errs = load(text, env(&[])).unwrap_err().0;
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"subscriptions[0].topic"), "{paths:?}");
    assert!(paths.contains(&"subscriptions[1].name"), "{paths:?}");
}

#[test]
fn names_that_are_not_one_safe_path_component_are_refused() {
    for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    for good in ["a", "a.b", "...", "A-b_9"] {
        assert!(validate_name(good).is_ok(), "{good:?}");
    }
}

#[test]
fn unknown_keys_are_rejected() {
    let errs = load("servr: {http: x}", env(&[])).unwrap_err().0;
    assert!(errs[0].to_string().contains("servr"), "{errs:?}");
    let errs = load(
        "subscriptions: [{name: a, topic: t, sink: {type: x}, bad: 1}]",
        env(&[]),
    )
    .unwrap_err()
    .0;
    assert!(errs[0].to_string().contains("bad"), "{errs:?}");
}

#[test]
fn store_and_sources_keep_their_component_settings() {
    let cfg = load(
            "store: {type: kafka, dataDir: /x, brokers: 'k:1'}\nsources: [{name: in, type: kafka, topics: [a]}]",
            env(&[]),
        )
        .unwrap();
    assert_eq!(cfg.store.data_dir, PathBuf::from("/x"));
    assert_eq!(cfg.store.log.kind, "kafka");
    assert_eq!(
        cfg.store.log.settings.get("brokers"),
        Some(&Value::from("k:1"))
    );
    assert_eq!(cfg.sources[0].name, "in");
    assert_eq!(cfg.sources[0].spec.kind, "kafka");
    assert!(cfg.sources[0].spec.settings.get("name").is_none());
    let back = serde_yaml::to_string(&cfg).unwrap();
    assert_eq!(load(&back, env(&[])).unwrap(), cfg, "{back}");
    let errs = load("sources: [{name: '..', type: kafka}]", env(&[])).unwrap_err();
    assert!(errs.to_string().contains("sources[0].name"), "{errs}");
}
