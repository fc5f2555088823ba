//! Subscriptions as the runtime sees them: config compiled into filter trees and transform
//! chains, and an index that finds the subscriptions an event may match without scanning every
//! filter.

mod index;

pub use index::{IndexStats, TopicIndex};

use evmesh_core::config::{ConfigError, DeliverySpec, FilterConfig, SubscriptionConfig};
use evmesh_core::filter::{BatchFilter, Filter};
use evmesh_core::transform::{BatchTransform, PluginLoader, Routed, Transform, TransformError};
use evmesh_core::Event;
use evmesh_filter_attributes::AttrFilter;
use evmesh_filter_cesql::Cesql;
use evmesh_filter_pattern::PatternFilter;
use std::sync::Arc;
use std::time::SystemTime;

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
    /// Made by a protocol on behalf of its clients (EventMesh consumer groups): changed through
    /// that protocol (subscribe / unsubscribe), persisted by it.
    Protocol,
    /// evmesh's own (the reply topic of request-reply).
    Internal,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
            Origin::Protocol => "protocol",
            Origin::Internal => "internal",
        }
    }

    /// Whether the admin API may change or delete it.
    pub fn is_api_managed(self) -> bool {
        self == Origin::Api
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
            FilterConfig::Wasm(_) => {
                errors.push(ConfigError::new(
                    format!("{path}.wasm"),
                    "wasm filters go at the top level of filters, not inside all/any/not",
                ));
                Node::All(Vec::new())
            }
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

/// One step of a transform chain.
pub enum Step {
    Builtin(Box<dyn Transform>),
    Plugin(Arc<dyn BatchTransform>),
}

/// What a route's plugin steps made of one event.
#[derive(Debug)]
pub enum Prepared {
    /// Dropped by a plugin filter or transform.
    Skip,
    /// Outputs to deliver (`None` topic) or to publish to a topic.
    Outputs(Vec<Routed>),
    /// A plugin failed on the batch: retry per the delivery policy, then dead-letter.
    Failed(String),
}

/// One filter or transform of a subscription that ran on an event: what a traced event's span
/// records. Plugins run a batch at a time; each event of the batch gets the batch's times.
#[derive(Debug, Clone)]
pub struct StepRun {
    /// `filter` or `transform`.
    pub kind: &'static str,
    /// Where the step is in the subscription: `filters[1]`, `transforms[0]`.
    pub path: String,
    /// The plugin, for a WASM step.
    pub plugin: Option<String>,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// A filter's verdict.
    pub matched: Option<bool>,
    pub error: Option<String>,
}

impl StepRun {
    fn filter(path: String, started: SystemTime, matched: bool) -> StepRun {
        StepRun {
            kind: "filter",
            path,
            plugin: None,
            started,
            ended: SystemTime::now(),
            matched: Some(matched),
            error: None,
        }
    }

    fn transform(i: usize, started: SystemTime, error: Option<String>) -> StepRun {
        StepRun {
            kind: "transform",
            path: format!("transforms[{i}]"),
            plugin: None,
            started,
            ended: SystemTime::now(),
            matched: None,
            error,
        }
    }
}

/// A subscription ready to run.
pub struct Route {
    pub config: SubscriptionConfig,
    pub origin: Origin,
    /// The pure filters (indexable, evaluated per event).
    pub filter: Arc<dyn Filter>,
    /// Plugin filters, evaluated a batch at a time after `filter`.
    pub plugin_filters: Vec<Arc<dyn BatchFilter>>,
    pub steps: Vec<Step>,
    pub delivery: DeliverySpec,
    /// The pure filters one by one (`filter` is their conjunction), with their places in
    /// `config.filters`; and the places of the plugin filters.
    tree: Arc<Node>,
    tree_at: Vec<usize>,
    plugin_filters_at: Vec<usize>,
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
        Self::compile_with(config, origin, default_delivery, None)
    }

    /// As [`Route::compile`], with a loader for `wasm` filters and transforms.
    pub fn compile_with(
        config: SubscriptionConfig,
        origin: Origin,
        default_delivery: Option<&DeliverySpec>,
        plugins: Option<&dyn PluginLoader>,
    ) -> Result<Route, RouterError> {
        let mut errors = Vec::new();
        let mut plugin_filters = Vec::new();
        let mut plugin_filters_at = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut tree_at = Vec::new();
        for (i, f) in config.filters.iter().enumerate() {
            match (f, plugins) {
                (FilterConfig::Wasm(w), Some(l)) => match l.filter(w) {
                    Ok(p) => {
                        plugin_filters.push(p);
                        plugin_filters_at.push(i);
                    }
                    Err(e) => errors.push(ConfigError::new(format!("filters[{i}].wasm"), e)),
                },
                (FilterConfig::Wasm(_), None) => errors.push(ConfigError::new(
                    format!("filters[{i}].wasm"),
                    "WASM plugins are not available here",
                )),
                _ => {
                    nodes.push(Node::compile(f, &format!("filters[{i}]"), &mut errors));
                    tree_at.push(i);
                }
            }
        }
        let mut transforms = Vec::new();
        for (i, t) in config.transforms.iter().enumerate() {
            match (t, plugins) {
                (evmesh_core::config::TransformConfig::Wasm(w), Some(l)) => match l.transform(w) {
                    Ok(p) => transforms.push(Step::Plugin(p)),
                    Err(e) => errors.push(ConfigError::new(format!("transforms[{i}].wasm"), e)),
                },
                (evmesh_core::config::TransformConfig::Wasm(_), None) => {
                    errors.push(ConfigError::new(
                        format!("transforms[{i}].wasm"),
                        "WASM plugins are not available here",
                    ))
                }
                _ => match evmesh_filter_transform::compile(t, &format!("transforms[{i}]")) {
                    Ok(t) => transforms.push(Step::Builtin(t)),
                    Err(e) => errors.push(ConfigError::new(e.path, e.message)),
                },
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
        let tree = Arc::new(Node::All(nodes));
        Ok(Route {
            config,
            origin,
            filter: tree.clone(),
            plugin_filters,
            steps: transforms,
            delivery,
            tree,
            tree_at,
            plugin_filters_at,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.filter.matches(e)
    }

    /// Runs each pure filter on its own (the conjunction is what [`Route::matches`] decides),
    /// reporting each: the spans of a traced event.
    pub fn trace_filters(&self, e: &Event, out: &mut dyn FnMut(StepRun)) {
        let Node::All(nodes) = &*self.tree else {
            return;
        };
        for (node, at) in nodes.iter().zip(&self.tree_at) {
            let started = SystemTime::now();
            let matched = node.matches(e);
            out(StepRun::filter(format!("filters[{at}]"), started, matched));
        }
    }

    /// Why an event does not match, or `None` when it does.
    pub fn explain_filter(&self, e: &Event) -> Option<String> {
        let Node::All(nodes) = &*self.tree else {
            return self.tree.explain(e, "");
        };
        nodes
            .iter()
            .zip(&self.tree_at)
            .find_map(|(n, at)| n.explain(e, &format!("filters[{at}]")))
    }

    /// Whether events must go through [`Route::prepare_batch`] (plugin filters or transforms).
    pub fn has_plugins(&self) -> bool {
        !self.plugin_filters.is_empty() || self.steps.iter().any(|s| matches!(s, Step::Plugin(_)))
    }

    /// Whether there are transforms at all.
    pub fn has_transforms(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Runs the transform chain; an empty result means the event was dropped. Plugin steps run
    /// on a batch of one.
    pub fn transform(&self, e: Event) -> Result<Vec<Event>, TransformError> {
        let routed = self.transform_routed(e)?;
        Ok(routed.into_iter().map(|(_, e)| e).collect())
    }

    /// The transform chain with routing: outputs a plugin sent to another topic carry it.
    pub fn transform_routed(&self, e: Event) -> Result<Vec<Routed>, TransformError> {
        self.transform_traced(e, None)
    }

    /// [`Route::transform_routed`], reporting each step that ran to `trace`.
    pub fn transform_traced(
        &self,
        e: Event,
        mut trace: Option<&mut dyn FnMut(StepRun)>,
    ) -> Result<Vec<Routed>, TransformError> {
        let mut events: Vec<Routed> = vec![(None, e)];
        for (i, t) in self.steps.iter().enumerate() {
            let mut next = Vec::with_capacity(events.len());
            let started = SystemTime::now();
            let mut result = Ok(());
            for (topic, ev) in events {
                if topic.is_some() {
                    next.push((topic, ev)); // routed away: later steps do not apply
                    continue;
                }
                let ran = match t {
                    Step::Builtin(b) => b
                        .apply(ev)
                        .map(|v| next.extend(v.into_iter().map(|e| (None, e))))
                        .map_err(|err| err.to_string()),
                    Step::Plugin(p) => p
                        .transform_batch(&[&ev])
                        .map(|mut out| next.extend(out.pop().unwrap_or_default())),
                };
                if let Err(err) = ran {
                    result = Err(format!("transforms[{i}]: {err}"));
                    break;
                }
            }
            if let Some(trace) = trace.as_mut() {
                let mut run = StepRun::transform(i, started, result.as_ref().err().cloned());
                run.plugin = self.plugin_of(t);
                trace(run);
            }
            result.map_err(TransformError)?;
            events = next;
        }
        Ok(events)
    }

    fn plugin_of(&self, step: &Step) -> Option<String> {
        match step {
            Step::Plugin(p) => Some(p.describe()),
            Step::Builtin(_) => None,
        }
    }

    /// Runs the plugin filters, then the transform chain, over a batch of events that passed
    /// the pure filters: one plugin call per step for the whole batch. A plugin failure fails
    /// the events it was called on.
    pub fn prepare_batch(&self, events: &[&Event]) -> Vec<Prepared> {
        self.prepare_batch_traced(events, None)
    }

    /// [`Route::prepare_batch`], reporting each step that ran on event `i` to `trace(i, ...)`
    /// (the caller picks which events it traces).
    pub fn prepare_batch_traced(
        &self,
        events: &[&Event],
        mut trace: Option<&mut dyn FnMut(usize, StepRun)>,
    ) -> Vec<Prepared> {
        let mut keep = vec![true; events.len()];
        for (f, at) in self.plugin_filters.iter().zip(&self.plugin_filters_at) {
            let idx: Vec<usize> = (0..events.len()).filter(|i| keep[*i]).collect();
            if idx.is_empty() {
                break;
            }
            let batch: Vec<&Event> = idx.iter().map(|i| events[*i]).collect();
            let started = SystemTime::now();
            let result = f.filter_batch(&batch);
            if let Some(trace) = trace.as_mut() {
                for (k, i) in idx.iter().enumerate() {
                    let matched = matches!(&result, Ok(bits) if bits.get(k) == Some(&true));
                    let mut run = StepRun::filter(format!("filters[{at}]"), started, matched);
                    run.plugin = Some(f.describe());
                    run.error = result.as_ref().err().cloned();
                    trace(*i, run);
                }
            }
            match result {
                Ok(bits) => {
                    for (k, i) in idx.iter().enumerate() {
                        keep[*i] = bits.get(k).copied().unwrap_or(false);
                    }
                }
                Err(msg) => {
                    return keep
                        .iter()
                        .map(|k| {
                            if *k {
                                Prepared::Failed(msg.clone())
                            } else {
                                Prepared::Skip
                            }
                        })
                        .collect();
                }
            }
        }
        // Per input: its current outputs, or a failure.
        let mut state: Vec<Result<Vec<Routed>, String>> = events
            .iter()
            .zip(&keep)
            .map(|(e, k)| {
                Ok(if *k {
                    vec![(None, (*e).clone())]
                } else {
                    Vec::new()
                })
            })
            .collect();
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Builtin(b) => {
                    for (k, st) in state.iter_mut().enumerate() {
                        let Ok(outs) = st else { continue };
                        if outs.is_empty() {
                            continue; // dropped earlier
                        }
                        let started = SystemTime::now();
                        let mut next = Vec::with_capacity(outs.len());
                        let mut failed = None;
                        for (topic, ev) in outs.drain(..) {
                            if topic.is_some() {
                                next.push((topic, ev));
                                continue;
                            }
                            match b.apply(ev) {
                                Ok(v) => next.extend(v.into_iter().map(|e| (None, e))),
                                Err(err) => {
                                    failed = Some(format!("transforms[{i}]: {err}"));
                                    break;
                                }
                            }
                        }
                        if let Some(trace) = trace.as_mut() {
                            trace(k, StepRun::transform(i, started, failed.clone()));
                        }
                        *st = match failed {
                            Some(m) => Err(m),
                            None => Ok(next),
                        };
                    }
                }
                Step::Plugin(p) => {
                    let mut owners: Vec<usize> = Vec::new();
                    let mut batch: Vec<&Event> = Vec::new();
                    for (k, st) in state.iter().enumerate() {
                        if let Ok(outs) = st {
                            for (topic, ev) in outs {
                                if topic.is_none() {
                                    owners.push(k);
                                    batch.push(ev);
                                }
                            }
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let started = SystemTime::now();
                    let result = p.transform_batch(&batch);
                    drop(batch);
                    if let Some(trace) = trace.as_mut() {
                        let mut last = None;
                        for &k in &owners {
                            if last == Some(k) {
                                continue; // one span per input event, however many outputs
                            }
                            last = Some(k);
                            let error = result
                                .as_ref()
                                .err()
                                .map(|m| format!("transforms[{i}]: {m}"));
                            let mut run = StepRun::transform(i, started, error);
                            run.plugin = Some(p.describe());
                            trace(k, run);
                        }
                    }
                    match result {
                        Ok(results) => {
                            for outs in state.iter_mut().flatten() {
                                outs.retain(|(t, _)| t.is_some());
                            }
                            for (owner, outs) in owners.into_iter().zip(results) {
                                if let Some(Ok(o)) = state.get_mut(owner) {
                                    o.extend(outs);
                                }
                            }
                        }
                        Err(msg) => {
                            for k in owners {
                                state[k] = Err(format!("transforms[{i}]: {msg}"));
                            }
                        }
                    }
                }
            }
        }
        state
            .into_iter()
            .zip(keep)
            .map(|(st, k)| match (st, k) {
                (_, false) => Prepared::Skip,
                (Err(m), _) => Prepared::Failed(m),
                (Ok(outs), _) if outs.is_empty() => Prepared::Skip,
                (Ok(outs), _) => Prepared::Outputs(outs),
            })
            .collect()
    }

    /// Whether an event matches, why not, and what the transforms would make of it.
    pub fn explain(&self, e: &Event) -> Explanation {
        let mut reason = self.explain_filter(e);
        if reason.is_none() {
            for (f, at) in self.plugin_filters.iter().zip(&self.plugin_filters_at) {
                reason = match f.filter_batch(&[e]) {
                    Ok(bits) if bits.first() == Some(&true) => None,
                    Ok(_) => Some(format!(
                        "filters[{at}].wasm: {} rejected the event",
                        f.describe()
                    )),
                    Err(m) => Some(format!("filters[{at}].wasm: {m}")),
                };
                if reason.is_some() {
                    break;
                }
            }
        }
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
