//! Every metric evmesh exports, declared in one place (the names are a public interface; see
//! `docs/metrics.md`), and the handles the event path uses.
//!
//! The event path never takes a lock for a metric: each component gets its handles once (a
//! subscription's counters and latency histogram when it starts, a plugin's when it loads) and
//! then only touches atomics. Per-topic ingest counters, whose topics are only known per
//! request, sit behind a per-thread cache of handles. Values that are cheaper to read than to
//! track (a subscription's lag, the store's size) are set by their owner at its own pace or
//! when `/metrics` is scraped.
//!
//! Exposition uses `prometheus-client` (OpenMetrics text, which Prometheus scrapes).

mod histogram;

pub use histogram::LatencyHistogram;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    subscription: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    subscription: String,
    /// The topic, with `@<partition>` past partition 0 of a partitioned store.
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOutcomeLabels {
    plugin: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Why an ingest request was refused (`evmesh_events_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a valid CloudEvent (missing or bad attributes, bad JSON, unsupported mode).
    Malformed,
    /// Larger than `server.maxBodyBytes` or than the store accepts.
    TooLarge,
    /// An invalid or reserved topic name.
    InvalidTopic,
    /// The store could not take it now (the publisher should retry).
    Unavailable,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::TooLarge => "too_large",
            Rejection::InvalidTopic => "invalid_topic",
            Rejection::Unavailable => "unavailable",
        }
    }
}

/// How one event's delivery ended (`evmesh_deliveries_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    DeadLettered,
    /// A plugin filter dropped it after it was read.
    Skipped,
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    accepted: Family<TopicLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    deliveries: Family<OutcomeLabels, Counter>,
    retries: Family<SubscriptionLabels, Counter>,
    dead_letters: Family<SubscriptionLabels, Counter>,
    attempt_seconds: Family<SubscriptionLabels, LatencyHistogram>,
    lag: Family<StreamLabels, Gauge>,
    oldest_age: Family<StreamLabels, FloatGauge>,
    dead_letter_depth: Family<SubscriptionLabels, Gauge>,
    store_bytes: Family<TopicLabels, Gauge>,
    store_segments: Family<TopicLabels, Gauge>,
    plugin_calls: Family<PluginOutcomeLabels, Counter>,
    plugin_seconds: Family<PluginLabels, LatencyHistogram>,
    connections: Family<ProtocolLabels, Gauge>,
    connections_total: Family<ProtocolLabels, Counter>,
}

/// The process's one set of metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("evmesh");
        let m = Metrics {
            registry: Registry::default(),
            accepted: Family::default(),
            rejected: Family::default(),
            deliveries: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            attempt_seconds: Family::default(),
            lag: Family::default(),
            oldest_age: Family::default(),
            dead_letter_depth: Family::default(),
            store_bytes: Family::default(),
            store_segments: Family::default(),
            plugin_calls: Family::default(),
            plugin_seconds: Family::default(),
            connections: Family::default(),
            connections_total: Family::default(),
        };
        r.register(
            "events_accepted",
            "Events stored durably and acknowledged to their publisher, by topic",
            m.accepted.clone(),
        );
        r.register(
            "events_rejected",
            "Ingest requests refused, by reason (malformed, too_large, invalid_topic, unavailable)",
            m.rejected.clone(),
        );
        r.register(
            "deliveries",
            "Events finished by a subscription, by outcome (delivered, dead_lettered, skipped)",
            m.deliveries.clone(),
        );
        r.register(
            "delivery_retries",
            "Delivery attempts that failed and were retried",
            m.retries.clone(),
        );
        r.register(
            "dead_letters",
            "Events dead-lettered by a subscription",
            m.dead_letters.clone(),
        );
        r.register_with_unit(
            "delivery_attempt_duration",
            "Time of one delivery attempt to the sink",
            Unit::Seconds,
            m.attempt_seconds.clone(),
        );
        r.register(
            "subscription_lag_events",
            "Events of a subscription's topic not yet finished (stored, not acknowledged)",
            m.lag.clone(),
        );
        r.register_with_unit(
            "subscription_oldest_pending_age",
            "How long the oldest unfinished event has waited since the subscription read it",
            Unit::Seconds,
            m.oldest_age.clone(),
        );
        r.register(
            "dead_letter_depth",
            "Events in a subscription's dead-letter list (not yet re-driven)",
            m.dead_letter_depth.clone(),
        );
        r.register_with_unit(
            "store_size",
            "Bytes of the embedded log's segments, by topic",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        r.register(
            "store_segments",
            "Segment files of the embedded log, by topic",
            m.store_segments.clone(),
        );
        r.register(
            "plugin_calls",
            "WASM plugin calls, by plugin and outcome (ok, error)",
            m.plugin_calls.clone(),
        );
        r.register_with_unit(
            "plugin_call_duration",
            "Time of one WASM plugin call (a batch of events)",
            Unit::Seconds,
            m.plugin_seconds.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open now, by protocol (http, admin, tcp)",
            m.connections.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted, by protocol",
            m.connections_total.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// `n` events stored in `topic` and acknowledged.
    pub fn accepted(&self, topic: &str, n: u64) {
        thread_local! {
            static ACCEPTED: RefCell<HashMap<String, Counter>> = RefCell::new(HashMap::new());
        }
        ACCEPTED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(c) = cache.get(topic) {
                c.inc_by(n);
                return;
            }
            if cache.len() >= 4096 {
                cache.clear(); // topics come and go; keep the cache bounded
            }
            let c = self.accepted.get_or_create_owned(&TopicLabels {
                topic: topic.to_owned(),
            });
            c.inc_by(n);
            cache.insert(topic.to_owned(), c);
        });
    }

    /// A request refused (rare: the family's lock is fine here).
    pub fn rejected(&self, reason: Rejection) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// The handles of one subscription, made once when it starts.
    pub fn subscription(&self, name: &str) -> SubscriptionMetrics {
        let sub = SubscriptionLabels {
            subscription: name.to_owned(),
        };
        let outcome = |o: &str| {
            self.deliveries.get_or_create_owned(&OutcomeLabels {
                subscription: name.to_owned(),
                outcome: o.to_owned(),
            })
        };
        SubscriptionMetrics {
            name: name.to_owned(),
            delivered: outcome("delivered"),
            dead_lettered: outcome("dead_lettered"),
            skipped: outcome("skipped"),
            retries: self.retries.get_or_create_owned(&sub),
            dead_letters: self.dead_letters.get_or_create_owned(&sub),
            attempt_seconds: self.attempt_seconds.get_or_create_owned(&sub),
        }
    }

    /// Drops a removed subscription's series.
    pub fn forget_subscription(&self, name: &str) {
        let sub = SubscriptionLabels {
            subscription: name.to_owned(),
        };
        for o in ["delivered", "dead_lettered", "skipped"] {
            self.deliveries.remove(&OutcomeLabels {
                subscription: name.to_owned(),
                outcome: o.to_owned(),
            });
        }
        self.retries.remove(&sub);
        self.dead_letters.remove(&sub);
        self.attempt_seconds.remove(&sub);
        self.dead_letter_depth.remove(&sub);
        // Its streams' lag gauges go when each stream ends (`StreamGauges::forget`).
    }

    /// The lag gauges of one stream (a subscription reading one topic partition).
    pub fn stream(&self, subscription: &str, topic: &str) -> StreamGauges {
        let labels = StreamLabels {
            subscription: subscription.to_owned(),
            topic: topic.to_owned(),
        };
        StreamGauges {
            lag: self.lag.get_or_create_owned(&labels),
            oldest_age: self.oldest_age.get_or_create_owned(&labels),
            labels,
        }
    }

    /// Sets a subscription's dead-letter list length (at scrape time).
    pub fn set_dead_letter_depth(&self, subscription: &str, depth: u64) {
        self.dead_letter_depth
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_owned(),
            })
            .set(saturating_i64(depth));
    }

    /// Sets the embedded log's usage of one topic (at scrape time).
    pub fn set_store_usage(&self, topic: &str, bytes: u64, segments: u64) {
        let t = TopicLabels {
            topic: topic.to_owned(),
        };
        self.store_bytes
            .get_or_create(&t)
            .set(saturating_i64(bytes));
        self.store_segments
            .get_or_create(&t)
            .set(saturating_i64(segments));
    }

    /// Forgets every topic's store usage (before setting it afresh: deleted topics go).
    pub fn clear_store_usage(&self) {
        self.store_bytes.clear();
        self.store_segments.clear();
    }

    /// The handles of one plugin, made once when it loads.
    pub fn plugin(&self, name: &str) -> PluginMetrics {
        let outcome = |o: &str| {
            self.plugin_calls.get_or_create_owned(&PluginOutcomeLabels {
                plugin: name.to_owned(),
                outcome: o.to_owned(),
            })
        };
        PluginMetrics {
            ok: outcome("ok"),
            error: outcome("error"),
            seconds: self.plugin_seconds.get_or_create_owned(&PluginLabels {
                plugin: name.to_owned(),
            }),
        }
    }

    /// The handles of one protocol's connections, made once per listener.
    pub fn protocol(&self, protocol: &str) -> ProtocolMetrics {
        let p = ProtocolLabels {
            protocol: protocol.to_owned(),
        };
        ProtocolMetrics {
            open: self.connections.get_or_create_owned(&p),
            total: self.connections_total.get_or_create_owned(&p),
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One subscription's handles: atomics only.
#[derive(Clone, Debug)]
pub struct SubscriptionMetrics {
    name: String,
    delivered: Counter,
    dead_lettered: Counter,
    skipped: Counter,
    retries: Counter,
    dead_letters: Counter,
    attempt_seconds: LatencyHistogram,
}

impl SubscriptionMetrics {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn finished(&self, outcome: Outcome) {
        match outcome {
            Outcome::Delivered => self.delivered.inc(),
            Outcome::DeadLettered => {
                self.dead_letters.inc();
                self.dead_lettered.inc()
            }
            Outcome::Skipped => self.skipped.inc(),
        };
    }

    /// One attempt took `took`; `retried` says it failed and another follows.
    pub fn attempt(&self, took: Duration, retried: bool) {
        self.attempt_seconds.observe(took);
        if retried {
            self.retries.inc();
        }
    }
}

/// One stream's lag gauges, set by the stream as it records progress.
#[derive(Clone, Debug)]
pub struct StreamGauges {
    lag: Gauge,
    oldest_age: FloatGauge,
    labels: StreamLabels,
}

impl StreamGauges {
    pub fn set(&self, lag: u64, oldest_age: Duration) {
        self.lag.set(saturating_i64(lag));
        self.oldest_age.set(oldest_age.as_secs_f64());
    }

    /// Removes the series (the stream stopped for good).
    pub fn forget(&self) {
        let m = global();
        m.lag.remove(&self.labels);
        m.oldest_age.remove(&self.labels);
    }
}

/// One plugin's handles.
#[derive(Clone, Debug)]
pub struct PluginMetrics {
    ok: Counter,
    error: Counter,
    seconds: LatencyHistogram,
}

impl PluginMetrics {
    pub fn call(&self, took: Duration, ok: bool) {
        self.seconds.observe(took);
        if ok {
            self.ok.inc();
        } else {
            self.error.inc();
        }
    }
}

/// One protocol's connection gauges.
#[derive(Clone, Debug)]
pub struct ProtocolMetrics {
    open: Gauge,
    total: Counter,
}

impl ProtocolMetrics {
    /// Counts a connection open until the guard drops.
    pub fn open(&self) -> ConnectionGuard {
        self.total.inc();
        self.open.inc();
        ConnectionGuard(self.open.clone())
    }
}

/// Decrements the open-connections gauge when the connection ends.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
