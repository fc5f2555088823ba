//! The RocketMQ components' settings, each checked where it is defined: the sink, the source,
//! and RocketMQ as the event store.

use crate::names;
use evmesh_core::component::{Check, Kind};
use evmesh_core::config::{validate_topic, ConfigError, StartPosition};
use evmesh_core::duration::IsoDuration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Sends each event to a RocketMQ topic; delivered means the broker answered `SEND_OK`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RocketMqSinkConfig {
    /// Name servers, `host:port`, several separated by `;`.
    pub namesrv: String,
    /// The RocketMQ topic (RocketMQ's rules: letters, digits, `_`, `-`, `%`, `|`).
    pub topic: String,
    /// The message tag (consumers filter on it), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The attribute whose value becomes the message's `KEYS` (RocketMQ indexes keys, so a
    /// message can be looked up by them).
    #[serde(default = "default_keys")]
    pub keys: String,
    #[serde(default)]
    pub mode: RocketMqMode,
    /// The producer group evmesh's producers join (one producer per name server list is
    /// shared by every sink of the process).
    #[serde(default = "default_producer_group")]
    pub producer_group: String,
    /// The largest message body sent, in bytes; a larger event is dead-lettered (it would
    /// fail every attempt). RocketMQ brokers take 4 MiB by default.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
}

fn default_max_message_size() -> usize {
    4 * 1024 * 1024
}

fn default_keys() -> String {
    "id".into()
}

fn default_producer_group() -> String {
    "evmesh_producer".into()
}

/// How an event is laid out in a RocketMQ message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RocketMqMode {
    /// `CE_<attribute>` properties, the data as the body.
    #[default]
    Binary,
    /// An `application/cloudevents+json` body.
    Structured,
}

/// How the members of a consumer group share a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageModel {
    /// Each message goes to one member of the group (offsets kept by the broker).
    #[default]
    Clustering,
    /// Every member gets every message (offsets kept by each member, on its disk).
    Broadcasting,
}

/// Consumes RocketMQ messages into an evmesh topic; consumption is committed to the broker
/// only after the events are durably stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RocketMqSourceConfig {
    /// Name servers, `host:port`, several separated by `;`.
    pub namesrv: String,
    pub topic: String,
    /// The consumer group (its committed offsets are where a restart resumes).
    pub group: String,
    /// Which tags to take: `*` (all), `a || b`.
    #[serde(default = "default_tag_filter", alias = "tag_filter")]
    pub tag_filter: String,
    /// The evmesh topic the events are written to.
    pub into: String,
    #[serde(default, alias = "message_model")]
    pub message_model: MessageModel,
    /// Where a group without committed offsets starts. Committed offsets always win.
    #[serde(default)]
    pub start: StartPosition,
    /// The `type` given to messages that are not CloudEvents.
    #[serde(default = "default_message_type", alias = "message_type")]
    pub message_type: String,
}

fn default_tag_filter() -> String {
    "*".into()
}

fn default_message_type() -> String {
    "dev.evmesh.rocketmq.message".into()
}

/// RocketMQ as the event store: one RocketMQ topic per evmesh topic, one consumer group per
/// subscription; several evmesh instances on the same cluster share the delivery work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RocketMqStoreConfig {
    /// Name servers, `host:port`, several separated by `;`.
    pub namesrv: String,
    /// RocketMQ topic of evmesh topic `t` is `<topicPrefix><t>` (with `.` and `_` escaped).
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Consumer group of subscription `s` is `<groupPrefix><s>` (escaped the same way).
    #[serde(default = "default_prefix")]
    pub group_prefix: String,
    /// Queues of the topics evmesh creates (the unit of work sharing and of key order).
    #[serde(default = "default_queues")]
    pub queues: u32,
    /// How long a send may take before it counts as failed.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: IsoDuration,
}

fn default_prefix() -> String {
    "evmesh_".into()
}

fn default_queues() -> u32 {
    4
}

fn default_send_timeout() -> IsoDuration {
    IsoDuration(Duration::from_secs(5))
}

impl Kind for RocketMqSinkConfig {
    const KIND: &'static str = "rocketmq";
}

impl Kind for RocketMqSourceConfig {
    const KIND: &'static str = "rocketmq";
}

impl Kind for RocketMqStoreConfig {
    const KIND: &'static str = "rocketmq";
}

impl Check for RocketMqSinkConfig {
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        check_namesrv(&self.namesrv, &mut errors);
        check_resource(&self.topic, "topic", &mut errors);
        check_resource(&self.producer_group, "producerGroup", &mut errors);
        if let Some(tag) = &self.tag {
            if tag.is_empty() || tag.contains("||") || tag.contains(['\u{1}', '\u{2}']) {
                errors.push(ConfigError::new(
                    "tag",
                    format!("{tag:?} is not a tag (one non-empty word, no \"||\")"),
                ));
            }
        }
        if self.max_message_size == 0 {
            errors.push(ConfigError::new("maxMessageSize", "must be at least 1"));
        }
        if evmesh_core::event::validate_extension_name(&self.keys).is_err() {
            errors.push(ConfigError::new(
                "keys",
                format!("{:?} is not an attribute name", self.keys),
            ));
        }
        errors
    }
}

impl Check for RocketMqSourceConfig {
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        check_namesrv(&self.namesrv, &mut errors);
        check_resource(&self.topic, "topic", &mut errors);
        check_resource(&self.group, "group", &mut errors);
        if self.tag_filter.trim().is_empty() {
            errors.push(ConfigError::new(
                "tagFilter",
                "must not be empty (use \"*\" for every tag)",
            ));
        }
        if let Err(e) = validate_topic(&self.into) {
            errors.push(ConfigError::new("into", e));
        }
        errors
    }
}

impl Check for RocketMqStoreConfig {
    fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        check_namesrv(&self.namesrv, &mut errors);
        for (path, prefix) in [
            ("topicPrefix", &self.topic_prefix),
            ("groupPrefix", &self.group_prefix),
        ] {
            if !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            {
                errors.push(ConfigError::new(
                    path,
                    format!("{prefix:?} may only contain letters, digits, '_' and '-'"),
                ));
            }
            if prefix.len() > 64 {
                errors.push(ConfigError::new(path, "must be at most 64 characters"));
            }
        }
        if !(1..=1024).contains(&self.queues) {
            errors.push(ConfigError::new("queues", "must be 1 to 1024"));
        }
        if self.send_timeout.0 < Duration::from_millis(100) {
            errors.push(ConfigError::new("sendTimeout", "must be at least PT0.1S"));
        }
        errors
    }
}

fn check_namesrv(namesrv: &str, errors: &mut Vec<ConfigError>) {
    let ok = !namesrv.trim().is_empty()
        && namesrv.split(';').all(|b| {
            b.trim()
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        });
    if !ok {
        errors.push(ConfigError::new(
            "namesrv",
            format!("{namesrv:?} is not a name server list (expected host:port[;host:port...])"),
        ));
    }
}

/// A topic or group evmesh names directly: RocketMQ's rules.
fn check_resource(name: &str, path: &str, errors: &mut Vec<ConfigError>) {
    if let Err(e) = names::validate_resource(name) {
        errors.push(ConfigError::new(path, e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmesh_core::component::ComponentSpec;

    fn spec(yaml: &str) -> ComponentSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn sink_source_and_store_parse_with_defaults() {
        let s: RocketMqSinkConfig =
            spec("{type: rocketmq, namesrv: '127.0.0.1:9876', topic: orders, tag: created}")
                .parse("s.sink")
                .unwrap();
        assert_eq!(s.keys, "id");
        assert_eq!(s.mode, RocketMqMode::Binary);
        assert_eq!(s.tag.as_deref(), Some("created"));
        let src: RocketMqSourceConfig = spec(
            "{type: rocketmq, namesrv: 'a:9876;b:9876', topic: orders, group: g, tag_filter: 'a || b', into: orders}",
        )
        .parse("sources[0]")
        .unwrap();
        assert_eq!(src.tag_filter, "a || b");
        assert_eq!(src.message_model, MessageModel::Clustering);
        assert_eq!(src.start, StartPosition::Latest);
        let src: RocketMqSourceConfig = spec(
            "{type: rocketmq, namesrv: 'a:9876', topic: t, group: g, into: t, messageModel: broadcasting}",
        )
        .parse("sources[0]")
        .unwrap();
        assert_eq!(src.message_model, MessageModel::Broadcasting);
        assert_eq!(src.tag_filter, "*");
        let st: RocketMqStoreConfig = spec("{type: rocketmq, namesrv: '127.0.0.1:9876'}")
            .parse("store")
            .unwrap();
        assert_eq!(st.queues, 4);
        assert_eq!(st.topic_prefix, "evmesh_");
    }

    #[test]
    fn config_errors_name_the_field() {
        let paths = |r: Result<(), Vec<ConfigError>>| -> Vec<String> {
            r.err()
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.path)
                .collect()
        };
        let sink = paths(
            spec("{type: rocketmq, namesrv: nohost, topic: 'a.b', keys: 'Not An Attr'}")
                .parse::<RocketMqSinkConfig>("sink")
                .map(|_| ()),
        );
        for want in ["sink.namesrv", "sink.topic", "sink.keys"] {
            assert!(sink.contains(&want.to_owned()), "{want}: {sink:?}");
        }
        let src = paths(
            spec(
                "{type: rocketmq, namesrv: 'a:1', topic: t, group: '', tagFilter: ' ', into: __x}",
            )
            .parse::<RocketMqSourceConfig>("sources[0]")
            .map(|_| ()),
        );
        for want in [
            "sources[0].group",
            "sources[0].tagFilter",
            "sources[0].into",
        ] {
            assert!(src.contains(&want.to_owned()), "{want}: {src:?}");
        }
        let store = paths(
            spec("{type: rocketmq, namesrv: 'a:1', topicPrefix: 'a.b', queues: 0}")
                .parse::<RocketMqStoreConfig>("store")
                .map(|_| ()),
        );
        for want in ["store.topicPrefix", "store.queues"] {
            assert!(store.contains(&want.to_owned()), "{want}: {store:?}");
        }
    }
}
