use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn counters_and_histograms_render_with_their_documented_names() {
    let m = global();
    m.accepted("metrics.unit", 3);
    m.accepted("metrics.unit", 2);
    m.rejected(Rejection::TooLarge);
    let s = m.subscription("metrics-unit");
    s.finished(Outcome::Delivered);
    s.attempt(Duration::from_millis(3), true);
    s.attempt(Duration::from_millis(40), false);
    let text = m.render();
    assert_eq!(
        line(
            &text,
            "evmesh_events_accepted_total{topic=\"metrics.unit\"}"
        ),
        Some("evmesh_events_accepted_total{topic=\"metrics.unit\"} 5"),
        "{text}"
    );
    assert!(line(&text, "evmesh_events_rejected_total{reason=\"too_large\"}").is_some());
    assert_eq!(
        line(
            &text,
            "evmesh_deliveries_total{subscription=\"metrics-unit\",outcome=\"delivered\"}"
        ),
        Some("evmesh_deliveries_total{subscription=\"metrics-unit\",outcome=\"delivered\"} 1")
    );
    assert_eq!(
        line(
            &text,
            "evmesh_delivery_retries_total{subscription=\"metrics-unit\"}"
        ),
        Some("evmesh_delivery_retries_total{subscription=\"metrics-unit\"} 1")
    );
    // Cumulative buckets: 3 ms is under 5 ms, 40 ms under 50 ms.
    assert_eq!(
        line(&text, "evmesh_delivery_attempt_duration_seconds_bucket{le=\"0.005\",subscription=\"metrics-unit\"}"),
        Some("evmesh_delivery_attempt_duration_seconds_bucket{le=\"0.005\",subscription=\"metrics-unit\"} 1")
    );
    assert_eq!(
        line(&text, "evmesh_delivery_attempt_duration_seconds_bucket{le=\"+Inf\",subscription=\"metrics-unit\"}"),
        Some("evmesh_delivery_attempt_duration_seconds_bucket{le=\"+Inf\",subscription=\"metrics-unit\"} 2")
    );
    assert_eq!(
        line(
            &text,
            "evmesh_delivery_attempt_duration_seconds_count{subscription=\"metrics-unit\"}"
        ),
        Some("evmesh_delivery_attempt_duration_seconds_count{subscription=\"metrics-unit\"} 2")
    );
    assert!(text.ends_with("# EOF\n"));

    m.forget_subscription("metrics-unit");
    assert!(!m.render().contains("subscription=\"metrics-unit\""));
}

#[test]
fn accepted_counts_from_many_threads_add_up() {
    let m = global();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..1000 {
                    global().accepted("metrics.threads", 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a counting thread panicked");
    }
    assert!(m
        .render()
        .contains("evmesh_events_accepted_total{topic=\"metrics.threads\"} 4000"));
}

#[test]
fn connection_guards_count_open_connections() {
    let p = global().protocol("unit-proto");
    let a = p.open();
    let b = p.open();
    drop(a);
    let text = global().render();
    assert!(
        text.contains("evmesh_connections_open{protocol=\"unit-proto\"} 1"),
        "{text}"
    );
    assert!(text.contains("evmesh_connections_total{protocol=\"unit-proto\"} 2"));
    drop(b);
    assert!(global()
        .render()
        .contains("evmesh_connections_open{protocol=\"unit-proto\"} 0"));
}
