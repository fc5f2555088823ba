//! A subscription as written in the document: its topic, filters, transforms, sink, and
//! Knative's delivery spec.

use super::filter::check_filter;
use super::{join, validate_name, validate_topic, ConfigError, FilterConfig, TransformConfig};
use crate::component::ComponentSpec;
use crate::duration::IsoDuration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Knative's DeliverySpec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    /// Retries after the first attempt: attempts = 1 + retry.
    #[serde(default = "default_retry")]
    pub retry: u32,
    #[serde(default)]
    pub backoff_policy: BackoffPolicy,
    #[serde(default = "default_backoff_delay")]
    pub backoff_delay: IsoDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: IsoDuration,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout")]
    pub timeout: IsoDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Where events that cannot be delivered go (any sink type).
    pub dead_letter_sink: Option<Box<ComponentSpec>>,
}

fn default_retry() -> u32 {
    10
}
fn default_backoff_delay() -> IsoDuration {
    IsoDuration(Duration::from_millis(200))
}
fn default_backoff_max() -> IsoDuration {
    IsoDuration(Duration::from_secs(30))
}
fn default_timeout() -> IsoDuration {
    IsoDuration(Duration::from_secs(10))
}

impl Default for DeliverySpec {
    fn default() -> Self {
        DeliverySpec {
            retry: default_retry(),
            backoff_policy: BackoffPolicy::default(),
            backoff_delay: default_backoff_delay(),
            backoff_max: default_backoff_max(),
            timeout: default_timeout(),
            dead_letter_sink: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    #[default]
    Exponential,
    Linear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub name: String,
    pub topic: String,
    /// AND'ed; none means every event of the topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
    /// Applied in order to events that passed the filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<TransformConfig>,
    /// Where the events go: a component spec (`type:` plus that sink's own settings).
    pub sink: ComponentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Topic that events returned by the sink are published to (default: `topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Deliveries of this subscription running at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub ordering: Ordering,
    /// Where a new subscription starts reading its topic.
    #[serde(default)]
    pub start: StartPosition,
}

fn default_max_in_flight() -> usize {
    64
}

impl SubscriptionConfig {
    /// A subscription with every optional setting at its default (no filters, no transforms,
    /// the default delivery), for code that builds subscriptions rather than reading YAML.
    pub fn new(name: impl Into<String>, topic: impl Into<String>, sink: ComponentSpec) -> Self {
        SubscriptionConfig {
            name: name.into(),
            topic: topic.into(),
            filters: Vec::new(),
            transforms: Vec::new(),
            sink,
            delivery: None,
            reply: None,
            max_in_flight: default_max_in_flight(),
            ordering: Ordering::default(),
            start: StartPosition::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Deliveries run concurrently with no order guarantee.
    #[default]
    None,
    /// Events with the same `partitionkey` are delivered one at a time, in log order.
    Key,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    /// Only events published after the subscription was created.
    #[default]
    Latest,
    /// Everything still in the log.
    Earliest,
}

/// Checks one subscription; `base` is its path in the document. The sink's own settings are
/// checked by the sink's component (through the registry).
pub fn check_subscription(s: &SubscriptionConfig, base: &str, errors: &mut Vec<ConfigError>) {
    if let Err(e) = validate_name(&s.name) {
        errors.push(ConfigError::new(join(base, "name"), e));
    }
    if let Err(e) = validate_topic(&s.topic) {
        errors.push(ConfigError::new(join(base, "topic"), e));
    }
    if let Some(r) = &s.reply {
        if let Err(e) = validate_topic(r) {
            errors.push(ConfigError::new(join(base, "reply"), e));
        }
    }
    if s.max_in_flight == 0 || s.max_in_flight > 10_000 {
        errors.push(ConfigError::new(
            join(base, "maxInFlight"),
            "must be between 1 and 10000",
        ));
    }
    for (i, f) in s.filters.iter().enumerate() {
        check_filter(f, &join(base, &format!("filters[{i}]")), errors);
    }
    if let Some(d) = &s.delivery {
        check_delivery(d, &join(base, "delivery"), errors);
    }
}

pub(crate) fn check_delivery(d: &DeliverySpec, base: &str, errors: &mut Vec<ConfigError>) {
    if d.backoff_delay.0.is_zero() {
        errors.push(ConfigError::new(
            join(base, "backoffDelay"),
            "must be greater than zero",
        ));
    }
    if d.backoff_max.0 < d.backoff_delay.0 {
        errors.push(ConfigError::new(
            join(base, "backoffMax"),
            format!(
                "{} is shorter than backoffDelay {}",
                d.backoff_max, d.backoff_delay
            ),
        ));
    }
    if d.timeout.0.is_zero() {
        errors.push(ConfigError::new(
            join(base, "timeout"),
            "must be greater than zero",
        ));
    }
}
