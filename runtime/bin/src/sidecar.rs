//! Forwarding to an upstream, and the sidecar profile that uses it: evmesh beside one
//! application keeps what the application publishes in its local log (the durable outbox),
//! answers the application once it is stored, and forwards every topic to an upstream (another
//! evmesh over HTTP, or Kafka) at least once, while serving local subscriptions too.
//!
//! Each topic gets an internal subscription, `forward.<topic>`, found as topics appear (checked
//! every 200 ms; it reads from the start of the topic, so an event published before its
//! forwarder started is not missed). It retries without limit with backoff: an upstream outage
//! only delays forwarding, and a restart of either side resumes from the saved cursor.

use evmesh_core::component::ComponentSpec;
use evmesh_core::config::{
    BackoffPolicy, DeliverySpec, Ordering, StartPosition, SubscriptionConfig,
};
use evmesh_core::duration::IsoDuration;
use evmesh_delivery::Supervisor;
use evmesh_router::Origin;
use evmesh_store::EventLog;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `--profile`: how evmesh is deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// A broker: every listener as configured, a worker thread per core.
    Standalone,
    /// Beside one application: loopback listeners, one worker thread, forwarding to
    /// `--upstream`.
    Sidecar,
}

/// Where forwarded events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Another evmesh: `POST <base>/topics/<topic>` in binary mode.
    Http(String),
    /// Kafka brokers: the topic of the same name.
    Kafka(String),
}

impl Upstream {
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let s = s.trim();
        if let Some(brokers) = s.strip_prefix("kafka://") {
            if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
                return Err(format!(
                    "upstream {s:?}: expected kafka://HOST:PORT[,HOST:PORT…]"
                ));
            }
            return Ok(Upstream::Kafka(brokers.to_owned()));
        }
        let host = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .map(|r| r.split('/').next().unwrap_or_default());
        match host {
            Some(h) if !h.is_empty() => Ok(Upstream::Http(s.trim_end_matches('/').to_owned())),
            _ => Err(format!(
                "upstream {s:?}: expected http://HOST:PORT (another evmesh) or kafka://HOST:PORT"
            )),
        }
    }

    fn sink(&self, topic: &str) -> ComponentSpec {
        match self {
            Upstream::Http(base) => ComponentSpec::webhook(format!("{base}/topics/{topic}")),
            Upstream::Kafka(brokers) => ComponentSpec::new("kafka")
                .with("brokers", brokers.clone())
                .with("topic", topic.to_owned()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Upstream::Http(b) => b.clone(),
            Upstream::Kafka(b) => format!("kafka://{b}"),
        }
    }
}

/// The forwarding subscription of one topic.
fn forwarder(upstream: &Upstream, topic: &str) -> SubscriptionConfig {
    let mut sub = SubscriptionConfig::new(format!("forward.{topic}"), topic, upstream.sink(topic));
    sub.start = StartPosition::Earliest;
    // Events of one partition key reach the upstream in the order they were published.
    sub.ordering = Ordering::Key;
    sub.max_in_flight = 64;
    sub.delivery = Some(DeliverySpec {
        retry: u32::MAX,
        backoff_policy: BackoffPolicy::Exponential,
        backoff_delay: IsoDuration(Duration::from_millis(50)),
        backoff_max: IsoDuration(Duration::from_secs(5)),
        timeout: IsoDuration(Duration::from_secs(10)),
        ..Default::default()
    });
    sub
}

/// Starts a forwarder for every topic of the log, now and as topics appear, until `stop`.
pub fn forward(
    upstream: Upstream,
    supervisor: Arc<Supervisor>,
    log: Arc<dyn EventLog>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tracing::info!(upstream = %upstream.describe(), "forwarding every topic to the upstream");
    tokio::spawn(async move {
        let mut started: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let topics = match log.topics().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "listing topics to forward failed; trying again");
                    continue;
                }
            };
            for topic in topics {
                // evmesh's own topics (dead letters, replies, re-drives) stay local.
                if topic.starts_with("__") || started.contains(&topic) {
                    continue;
                }
                let sub = forwarder(&upstream, &topic);
                match supervisor.start(sub, Origin::Internal).await {
                    Ok(()) => {
                        tracing::info!(topic = %topic, upstream = %upstream.describe(), "forwarding a topic")
                    }
                    Err(e) => {
                        tracing::error!(topic = %topic, error = %e, "cannot forward this topic")
                    }
                }
                started.insert(topic);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_parsed_with_clear_errors() {
        assert_eq!(
            Upstream::parse("http://10.0.0.5:10105/"),
            Ok(Upstream::Http("http://10.0.0.5:10105".into()))
        );
        assert_eq!(
            Upstream::parse("kafka://k1:9092,k2:9092"),
            Ok(Upstream::Kafka("k1:9092,k2:9092".into()))
        );
        assert!(Upstream::parse("kafka://k1")
            .unwrap_err()
            .contains("kafka://HOST:PORT"));
        assert!(Upstream::parse("10.0.0.5:10105")
            .unwrap_err()
            .contains("expected http://HOST:PORT"));
        let f = forwarder(&Upstream::Http("http://u:1".into()), "orders");
        assert_eq!(f.name, "forward.orders");
        assert_eq!(f.sink, ComponentSpec::webhook("http://u:1/topics/orders"));
        assert_eq!(f.start, StartPosition::Earliest);
    }
}
