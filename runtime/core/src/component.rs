//! Components own their config (Vector's `SinkConfig::build`): a connector crate defines a serde
//! struct for its settings, checks them ([`Check`]) and builds the running component from them
//! ([`SinkConfig::build`], [`SourceConfig::build`]). The document holds each as a
//! [`ComponentSpec`] (`type:` plus the component's own keys); the registry in the binary lists
//! the known kinds, one line each, and turns a spec into the component's config with every
//! error at its path.

use crate::config::{join, typed, ConfigError};
use crate::publish::{Publish, PublishError};
use crate::sink::Sink;
use crate::Event;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use std::sync::Arc;
use tokio::sync::watch;

/// A component as written in the document: its `type` and the rest of its keys, which only the
/// component knows.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSpec {
    pub kind: String,
    pub settings: Mapping,
}

impl ComponentSpec {
    pub fn new(kind: impl Into<String>) -> Self {
        ComponentSpec {
            kind: kind.into(),
            settings: Mapping::new(),
        }
    }

    /// Adds a setting (for code that builds specs rather than reading YAML).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.settings.insert(Value::from(key), value.into());
        self
    }

    /// A webhook sink in binary mode.
    pub fn webhook(url: impl Into<String>) -> Self {
        ComponentSpec::new("webhook").with("url", url.into())
    }

    /// The settings as the component's own config type, checked; errors are under `base`.
    pub fn parse<C: DeserializeOwned + Check>(&self, base: &str) -> Result<C, Vec<ConfigError>> {
        let cfg: C = typed(Value::Mapping(self.settings.clone()), base).map_err(|e| vec![e])?;
        let errors: Vec<ConfigError> = cfg.check().into_iter().map(|e| e.under(base)).collect();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }
}

impl Serialize for ComponentSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = Mapping::new();
        m.insert(Value::from("type"), Value::from(self.kind.clone()));
        for (k, v) in &self.settings {
            m.insert(k.clone(), v.clone());
        }
        m.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ComponentSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut settings = Mapping::deserialize(d)?;
        let kind = match settings.remove("type") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`type` must be a string, found {other:?}"
                )))
            }
            None => return Err(D::Error::custom("missing field `type`")),
        };
        Ok(ComponentSpec { kind, settings })
    }
}

/// Checks a component's settings beyond what serde expresses. Paths are relative to the
/// component (`url`, `headers.x-key`); the registry places them in the document.
pub trait Check {
    fn check(&self) -> Vec<ConfigError> {
        Vec::new()
    }
}

/// A component kind's name in the document (`type: webhook`).
pub trait Kind {
    const KIND: &'static str;
}

/// What building a sink may use.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The subscription the sink delivers for.
    pub subscription: String,
    /// The topic it reads.
    pub topic: String,
    /// The subscription's ordering: with [`Ordering::Key`], a sink whose destination has
    /// partitions keeps the events of one key on one of them.
    pub ordering: crate::config::Ordering,
}

/// A sink's settings.
pub trait SinkConfig: Check + Send + Sync + 'static {
    /// Builds the running sink; fails with a message that says what to fix.
    fn build(&self, cx: &SinkContext) -> Result<Arc<dyn Sink>, String>;
}

/// A source's settings.
pub trait SourceConfig: Check + Send + Sync + 'static {
    /// Builds the source (connects, joins its group); it reads once it runs.
    fn build(&self, name: &str) -> Result<Box<dyn Source>, String>;
}

/// An inbound connector: reads records from elsewhere into evmesh topics.
pub trait Source: Send + 'static {
    /// Runs until `cx.stop` turns true. Every record goes through [`SourceContext::publish`],
    /// which answers once it is durable; only then may the source commit its own position
    /// (offsets, acknowledgements) upstream.
    fn run(self: Box<Self>, cx: SourceContext) -> BoxFuture<'static, ()>;
}

/// What a running source is given.
#[derive(Clone)]
pub struct SourceContext {
    pub name: String,
    pub publisher: Arc<dyn Publish>,
    pub stop: watch::Receiver<bool>,
}

impl SourceContext {
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stores `events` in `topic`, in order. Resolves `Ok` once every one is durable, or, for
    /// an event the store will never take (too large), kept in this source's dead-letter list
    /// with the reason, so one bad record never stalls the source. `Err` is a transient
    /// failure: nothing may be committed upstream, try again.
    pub async fn publish(&self, topic: &str, events: &[Event]) -> Result<(), PublishError> {
        match self.publisher.publish(topic, events).await {
            Ok(_) => Ok(()),
            Err(e) if !e.is_permanent() => Err(e),
            Err(_) => {
                // Find the culprits one by one; the others are stored in order.
                for e in events {
                    match self.publisher.publish(topic, std::slice::from_ref(e)).await {
                        Ok(_) => {}
                        Err(err) if err.is_permanent() => {
                            let why = err.to_string();
                            tracing::warn!(source = %self.name, id = %e.id, reason = %why, "a record cannot be stored; kept in the source's dead-letter list");
                            self.publisher
                                .dead_letter_source(&self.name, e.clone(), &why)
                                .await?;
                        }
                        Err(other) => return Err(other),
                    }
                }
                Ok(())
            }
        }
    }
}

/// One known kind of component `T` (a sink, a source, a log): its name and how its settings
/// become its config.
pub struct Entry<T: ?Sized> {
    kind: &'static str,
    parse: ParseFn<T>,
}

type ParseFn<T> =
    Box<dyn Fn(&ComponentSpec, &str) -> Result<Box<T>, Vec<ConfigError>> + Send + Sync>;

impl<T: ?Sized + 'static> Entry<T> {
    /// The kind `C::KIND`, boxed as `T` by `into` (an unsizing closure: `|c| Box::new(c)`).
    pub fn new<C>(into: fn(C) -> Box<T>) -> Self
    where
        C: DeserializeOwned + Check + Kind + 'static,
    {
        Entry {
            kind: C::KIND,
            parse: Box::new(move |spec, base| spec.parse::<C>(base).map(into)),
        }
    }
}

/// The sink kind `C`.
pub fn sink<C: SinkConfig + DeserializeOwned + Kind>() -> Entry<dyn SinkConfig> {
    Entry::new(|c: C| Box::new(c) as Box<dyn SinkConfig>)
}

/// The source kind `C`.
pub fn source<C: SourceConfig + DeserializeOwned + Kind>() -> Entry<dyn SourceConfig> {
    Entry::new(|c: C| Box::new(c) as Box<dyn SourceConfig>)
}

/// Every known kind of one sort of component.
pub struct Kinds<T: ?Sized> {
    /// What they are, for messages ("sink").
    what: &'static str,
    entries: Vec<Entry<T>>,
}

impl<T: ?Sized> Kinds<T> {
    pub fn new(what: &'static str, entries: Vec<Entry<T>>) -> Self {
        Kinds { what, entries }
    }

    /// The known kind names, sorted.
    pub fn known(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.entries.iter().map(|e| e.kind).collect();
        v.sort_unstable();
        v
    }

    /// The spec's settings as its kind's config; `base` is the spec's path in the document.
    /// An unknown kind is an error that lists the known ones.
    pub fn parse(&self, spec: &ComponentSpec, base: &str) -> Result<Box<T>, Vec<ConfigError>> {
        match self.entries.iter().find(|e| e.kind == spec.kind) {
            Some(e) => (e.parse)(spec, base),
            None => Err(vec![ConfigError::new(
                join(base, "type"),
                format!(
                    "unknown {} type {:?} (known: {})",
                    self.what,
                    spec.kind,
                    self.known().join(", ")
                ),
            )]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Echo {
        word: String,
    }
    impl Check for Echo {
        fn check(&self) -> Vec<ConfigError> {
            if self.word.is_empty() {
                vec![ConfigError::new("word", "must not be empty")]
            } else {
                Vec::new()
            }
        }
    }
    impl Kind for Echo {
        const KIND: &'static str = "echo";
    }
    trait Said {
        fn said(&self) -> &str;
    }
    impl Said for Echo {
        fn said(&self) -> &str {
            &self.word
        }
    }

    fn kinds() -> Kinds<dyn Said> {
        Kinds::new(
            "sink",
            vec![Entry::new(|c: Echo| Box::new(c) as Box<dyn Said>)],
        )
    }

    #[test]
    fn specs_round_trip_and_parse_into_their_kind() {
        let spec: ComponentSpec = serde_yaml::from_str("{type: echo, word: hi}").unwrap();
        assert_eq!(spec.kind, "echo");
        let back = serde_yaml::to_string(&spec).unwrap();
        assert!(back.starts_with("type: echo"), "{back}");
        assert_eq!(kinds().parse(&spec, "s.sink").unwrap().said(), "hi");
    }

    #[test]
    fn errors_carry_their_path_and_unknown_kinds_list_the_known_ones() {
        let k = kinds();
        let bad: ComponentSpec = serde_yaml::from_str("{type: echo, wrd: hi}").unwrap();
        let e = k.parse(&bad, "subscriptions[1].sink").err().unwrap();
        assert!(
            e[0].to_string().starts_with("subscriptions[1].sink"),
            "{e:?}"
        );
        assert!(e[0].to_string().contains("wrd"), "{e:?}");
        let empty: ComponentSpec = serde_yaml::from_str("{type: echo, word: ''}").unwrap();
        let e = k.parse(&empty, "x.sink").err().unwrap();
        assert_eq!(e[0].to_string(), "x.sink.word: must not be empty");
        let unknown: ComponentSpec = serde_yaml::from_str("{type: ehco}").unwrap();
        let e = k.parse(&unknown, "x.sink").err().unwrap();
        assert_eq!(
            e[0].to_string(),
            "x.sink.type: unknown sink type \"ehco\" (known: echo)"
        );
        assert!(serde_yaml::from_str::<ComponentSpec>("{word: x}").is_err());
    }
}
