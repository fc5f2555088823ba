//! Subscriptions as the runtime sees them: config compiled into filter trees and transform
//! chains, and an index that finds the subscriptions an event may match without scanning every
//! filter.

mod index;

pub use index::{IndexStats, TopicIndex};

use evmesh_core::config::{ConfigError, DeliverySpec, FilterConfig, SubscriptionConfig};
use evmesh_core::filter::Filter;
use evmesh_core::transform::{Transform, TransformError};
use evmesh_core::Event;
use evmesh_filter_attributes::Compiled as AttrFilter;
use evmesh_filter_cesql::Cesql;
use evmesh_filter_pattern::PatternFilter;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("subscription {name:?}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        name: String,
        errors: Vec<ConfigError>,
    },
}

impl RouterError {
    /// The problems, with paths relative to the subscription.
    pub fn errors(&self) -> &[ConfigError] {
        match self {
            RouterError::Invalid { errors, .. } => errors,
        }
    }
}

/// Where a subscription came from, which decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Declared in the config file: changed by editing the file.
    Config,
    /// Created through the admin API: persisted in the store.
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
}

/// A compiled filter tree: every dialect can appear inside `all`, `any` and `not`.
pub enum Node {
    Leaf(Box<dyn Filter>),
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
}

impl Node {
    fn compile(cfg: &FilterConfig, path: &str, errors: &mut Vec<ConfigError>) -> Node {
        match cfg {
            FilterConfig::Exact(_) | FilterConfig::Prefix(_) | FilterConfig::Suffix(_) => {
                match AttrFilter::compile(cfg) {
                    Ok(f) => Node::Leaf(Box::new(f)),
                    Err(e) => {
                        errors.push(ConfigError::new(path, e.to_string()));
                        Node::All(Vec::new())
                    }
                }
            }
            FilterConfig::All(v) => Node::All(
                v.iter()
                    .enumerate()
                    .map(|(i, f)| Node::compile(f, &format!("{path}.all[{i}]"), errors))
                    .collect(),
            ),
            FilterConfig::Any(v) => Node::Any(
                v.iter()
                    .enumerate()
                    .map(|(i, f)| Node::compile(f, &format!("{path}.any[{i}]"), errors))
                    .collect(),
            ),
            FilterConfig::Not(f) => {
                Node::Not(Box::new(Node::compile(f, &format!("{path}.not"), errors)))
            }
            FilterConfig::Cesql(expr) => match Cesql::compile(expr) {
                Ok(c) => Node::Leaf(Box::new(c)),
                Err(e) => {
                    let kind = if e.missing_function {
                        "unknown function"
                    } else {
                        "parse error"
                    };
                    errors.push(ConfigError::new(
                        format!("{path}.cesql"),
                        format!("{kind} {e} in {expr:?}"),
                    ));
                    Node::All(Vec::new())
                }
            },
            FilterConfig::Pattern(p) => match PatternFilter::compile(p) {
                Ok(f) => Node::Leaf(Box::new(f)),
                Err(e) => {
                    errors.push(ConfigError::new(
                        format!("{path}.pattern"),
                        format!("invalid event pattern at {}: {}", e.path, e.message),
                    ));
                    Node::All(Vec::new())
                }
            },
        }
    }
}

impl Filter for Node {
    fn matches(&self, e: &Event) -> bool {
        match self {
            Node::Leaf(f) => f.matches(e),
            Node::All(v) => v.iter().all(|f| f.matches(e)),
            Node::Any(v) => v.iter().any(|f| f.matches(e)),
            Node::Not(f) => !f.matches(e),
        }
    }

    fn explain(&self, e: &Event, path: &str) -> Option<String> {
        match self {
            Node::Leaf(f) => f.explain(e, path),
            Node::All(v) => v.iter().enumerate().find_map(|(i, f)| {
                let p = if path.is_empty() {
                    format!("filters[{i}]")
                } else {
                    format!("{path}.all[{i}]")
                };
                f.explain(e, &p)
            }),
            Node::Any(v) => {
                if v.iter().any(|f| f.matches(e)) {
                    return None;
                }
                let reasons: Vec<String> = v
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| f.explain(e, &format!("{path}.any[{i}]")))
                    .collect();
                Some(format!(
                    "{path}.any: no alternative matched ({})",
                    reasons.join("; ")
                ))
            }
            Node::Not(f) => f
                .matches(e)
                .then(|| format!("{path}.not: the inner filter matched")),
        }
    }
}

/// A subscription ready to run.
pub struct Route {
    pub config: SubscriptionConfig,
    pub origin: Origin,
    pub filter: Arc<dyn Filter>,
    pub transforms: Vec<Box<dyn Transform>>,
    pub delivery: DeliverySpec,
}

/// What `explain` found.
#[derive(Debug)]
pub struct Explanation {
    pub matches: bool,
    pub reason: Option<String>,
    pub transformed: Option<Result<Vec<Event>, TransformError>>,
}

impl Route {
    /// Compiles a subscription; `default_delivery` is the top-level `delivery:` block, which a
    /// subscription's own block replaces as a whole (Knative's precedence). Every problem is
    /// reported, with its path relative to the subscription.
    pub fn compile(
        config: SubscriptionConfig,
        origin: Origin,
        default_delivery: Option<&DeliverySpec>,
    ) -> Result<Route, RouterError> {
        let mut errors = Vec::new();
        let nodes: Vec<Node> = config
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| Node::compile(f, &format!("filters[{i}]"), &mut errors))
            .collect();
        let mut transforms = Vec::new();
        for (i, t) in config.transforms.iter().enumerate() {
            match evmesh_filter_transform::compile(t, &format!("transforms[{i}]")) {
                Ok(t) => transforms.push(t),
                Err(e) => errors.push(ConfigError::new(e.path, e.message)),
            }
        }
        if !errors.is_empty() {
            return Err(RouterError::Invalid {
                name: config.name.clone(),
                errors,
            });
        }
        let delivery = config
            .delivery
            .clone()
            .or_else(|| default_delivery.cloned())
            .unwrap_or_default();
        Ok(Route {
            config,
            origin,
            filter: Arc::new(Node::All(nodes)),
            transforms,
            delivery,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.filter.matches(e)
    }

    /// Why an event does not match, or `None` when it does.
    pub fn explain_filter(&self, e: &Event) -> Option<String> {
        self.filter.explain(e, "")
    }

    /// Runs the transform chain; an empty result means the event was dropped.
    pub fn transform(&self, e: Event) -> Result<Vec<Event>, TransformError> {
        let mut events = vec![e];
        for (i, t) in self.transforms.iter().enumerate() {
            let mut next = Vec::with_capacity(events.len());
            for ev in events {
                next.extend(
                    t.apply(ev)
                        .map_err(|err| TransformError(format!("transforms[{i}]: {err}")))?,
                );
            }
            events = next;
        }
        Ok(events)
    }

    /// Whether an event matches, why not, and what the transforms would make of it.
    pub fn explain(&self, e: &Event) -> Explanation {
        let reason = self.explain_filter(e);
        let matches = reason.is_none() && self.matches(e);
        let transformed = matches.then(|| self.transform(e.clone()));
        Explanation {
            matches,
            reason,
            transformed,
        }
    }

    /// The topic replies go to.
    pub fn reply_topic(&self) -> &str {
        self.config.reply.as_deref().unwrap_or(&self.config.topic)
    }
}

#[cfg(test)]
mod tests;
