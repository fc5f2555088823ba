//! Consumer groups: the EventMesh way to subscribe. A group on a topic is one evmesh
//! subscription whose sink is the group's members: live TCP sessions and webhook URLs, mixed.
//!
//! - CLUSTERING: one subscription per (group, topic); each event goes to one member (round
//!   robin over the members that can take one now).
//! - BROADCASTING: one subscription per (group, topic, member): each member gets every event,
//!   with its own position. A member is a client identity (host, pid, subsystem) or a URL, so
//!   a client that comes back gets what was sent while it was away.
//!
//! An event pushed to a session stays unacknowledged until the client acks it; if the session
//! dies first, the event goes to another member (or waits for one). A group with no member
//! connected keeps its events (its subscription runs on and waits): groups are persisted in the
//! state store (`eventmesh-groups.json`) and come back after a restart. A group goes away when
//! its last member unsubscribes explicitly.

use crate::session::{PushError, SessionHandle};
use evmesh_core::component::{ComponentSpec, SinkContext};
use evmesh_core::config::{validate_name, DeliverySpec, StartPosition, SubscriptionConfig};
use evmesh_core::duration::IsoDuration;
use evmesh_core::sink::{Delivered, Sink, SinkError, SinkHealth};
use evmesh_core::Event;
use evmesh_delivery::{SinkFactory, Supervisor};
use evmesh_router::Origin;
use evmesh_sdk::protocol::{Command, SubscriptionMode, SubscriptionType};
use evmesh_store::StateStore;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The state document holding the groups.
const DOCUMENT: &str = "eventmesh-groups.json";

/// What identifies a group's subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    pub group: String,
    pub topic: String,
    pub mode: SubscriptionMode,
    #[serde(rename = "type")]
    pub ty: SubscriptionType,
    /// BROADCASTING only: the member (client identity or URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

impl GroupKey {
    /// The subscription's name: `em.<group>.<topic>[.<member hash>]`.
    pub fn name(&self) -> Result<String, String> {
        validate_name(&self.group).map_err(|e| format!("consumer group {:?}: {e}", self.group))?;
        let mut name = format!("em.{}.{}", self.group, self.topic);
        if let Some(m) = &self.member {
            name.push_str(&format!(".{:016x}", fnv(m)));
        }
        validate_name(&name)
            .map_err(|e| format!("group {:?} on {:?}: {e}", self.group, self.topic))?;
        Ok(name)
    }
}

/// A stable hash (FNV-1a) for member names.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A webhook member as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookMember {
    pub url: String,
    /// `eventmesh` (EventMesh's push format, the default), `binary` or `structured`.
    pub mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    key: GroupKey,
    #[serde(default)]
    webhooks: Vec<WebhookMember>,
}

/// One group's members and its running subscription.
pub struct Group {
    pub key: GroupKey,
    pub name: String,
    sessions: Mutex<Vec<Arc<SessionHandle>>>,
    webhooks: Mutex<Vec<(WebhookMember, Arc<dyn Sink>)>>,
    /// Rings when members come or go, or a session has room again.
    pub changed: Arc<Notify>,
    next: AtomicUsize,
}

enum Target {
    Session(Arc<SessionHandle>),
    Webhook(Arc<dyn Sink>),
}

impl Group {
    fn targets(&self) -> Vec<Target> {
        let mut v: Vec<Target> = self
            .sessions
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|s| s.can_take())
                    .cloned()
                    .map(Target::Session)
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(w) = self.webhooks.lock() {
            v.extend(w.iter().map(|(_, s)| Target::Webhook(s.clone())));
        }
        v
    }

    fn is_empty(&self) -> bool {
        self.sessions.lock().map(|s| s.is_empty()).unwrap_or(true)
            && self.webhooks.lock().map(|w| w.is_empty()).unwrap_or(true)
    }

    fn push_command(&self) -> Command {
        match (self.key.ty, self.key.mode) {
            (SubscriptionType::SYNC, _) => Command::REQUEST_TO_CLIENT,
            (_, SubscriptionMode::BROADCASTING) => Command::BROADCAST_MESSAGE_TO_CLIENT,
            _ => Command::ASYNC_MESSAGE_TO_CLIENT,
        }
    }

    /// One attempt: a member takes the event (a session acks it, a webhook answers), within
    /// `timeout`. A session that dies or is full passes the event to another member; with no
    /// member able to take it, the attempt waits for one and then fails as retryable.
    async fn deliver(&self, event: &Event, timeout: Duration) -> Result<Delivered, SinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a change while we look is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let targets = self.targets();
            let n = targets.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for k in 0..n {
                match &targets[(start + k) % n] {
                    Target::Webhook(w) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        return w.deliver(event, left).await;
                    }
                    Target::Session(s) => {
                        let push = s.push(event, &self.key.topic, self.push_command());
                        match tokio::time::timeout_at(deadline, push).await {
                            Ok(Ok(())) => return Ok(Delivered::default()),
                            Ok(Err(PushError::Gone | PushError::Full)) => continue,
                            Err(_) => {
                                return Err(SinkError::retryable(format!(
                                    "group {}: no ack from the client within {} ms",
                                    self.key.group,
                                    timeout.as_millis()
                                )))
                            }
                        }
                    }
                }
            }
            // Nobody could take it now: wait for a change (a member joins, a window opens),
            // holding no member meanwhile (a closed session must be free to go).
            drop(targets);
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(SinkError::retryable(format!(
                    "no member of consumer group {} is listening on {}",
                    self.key.group, self.key.topic
                )));
            }
        }
    }
}

struct GroupSink(Arc<Group>);

impl Sink for GroupSink {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        Box::pin(self.0.deliver(event, timeout))
    }

    fn health(&self) -> SinkHealth {
        if self.0.targets().is_empty() {
            SinkHealth::Unhealthy(format!(
                "no member of group {} is connected",
                self.0.key.group
            ))
        } else {
            SinkHealth::Ready
        }
    }

    fn describe(&self) -> String {
        format!(
            "eventmesh group {} ({:?})",
            self.0.key.group, self.0.key.mode
        )
    }
}

/// Every group of this instance.
pub struct Groups {
    supervisor: Arc<Supervisor>,
    state: Arc<dyn StateStore>,
    sinks: SinkFactory,
    groups: tokio::sync::Mutex<HashMap<String, Arc<Group>>>,
}

impl Groups {
    /// The registry, with the saved groups running again (waiting for their members).
    pub async fn restore(
        supervisor: Arc<Supervisor>,
        state: Arc<dyn StateStore>,
        sinks: SinkFactory,
    ) -> Result<Arc<Groups>, String> {
        let g = Arc::new(Groups {
            supervisor,
            state,
            sinks,
            groups: tokio::sync::Mutex::new(HashMap::new()),
        });
        let saved: Vec<Saved> = match g.state.load_document(DOCUMENT).map_err(|e| e.to_string())? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| format!("{DOCUMENT}: {e}"))?,
            None => Vec::new(),
        };
        for s in saved {
            let group = match g.ensure(&s.key).await {
                Ok(group) => group,
                Err(e) => {
                    tracing::error!(group = %s.key.group, topic = %s.key.topic, error = %e, "could not restore an EventMesh group");
                    continue;
                }
            };
            for w in s.webhooks {
                if let Err(e) = g.attach_webhook(&group, w) {
                    tracing::error!(group = %s.key.group, error = %e, "could not restore a webhook member");
                }
            }
        }
        Ok(g)
    }

    /// The group's subscription, started if needed.
    async fn ensure(&self, key: &GroupKey) -> Result<Arc<Group>, String> {
        let name = key.name()?;
        let mut groups = self.groups.lock().await;
        if let Some(g) = groups.get(&name) {
            return Ok(g.clone());
        }
        let group = Arc::new(Group {
            key: key.clone(),
            name: name.clone(),
            sessions: Mutex::new(Vec::new()),
            webhooks: Mutex::new(Vec::new()),
            changed: Arc::new(Notify::new()),
            next: AtomicUsize::new(0),
        });
        let mut sub = SubscriptionConfig::new(
            name.clone(),
            key.topic.clone(),
            ComponentSpec::new("eventmesh")
                .with("group", key.group.clone())
                .with("mode", format!("{:?}", key.mode)),
        );
        sub.start = StartPosition::Latest;
        sub.max_in_flight = 1000;
        // Members come and go: an event waits for one rather than being dead-lettered for
        // the lack of one. A webhook member's refusal (4xx) still dead-letters.
        sub.delivery = Some(DeliverySpec {
            retry: u32::MAX,
            backoff_delay: IsoDuration(Duration::from_millis(100)),
            backoff_max: IsoDuration(Duration::from_secs(2)),
            ..Default::default()
        });
        self.supervisor
            .start_with_sink(sub, Origin::Protocol, Arc::new(GroupSink(group.clone())))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(group = %key.group, topic = %key.topic, mode = ?key.mode, subscription = %name, "eventmesh group started");
        groups.insert(name, group.clone());
        Ok(group)
    }

    /// A session joins a group.
    pub async fn join(
        &self,
        key: &GroupKey,
        session: Arc<SessionHandle>,
    ) -> Result<Arc<Group>, String> {
        let group = self.ensure(key).await?;
        if let Ok(mut s) = group.sessions.lock() {
            if !s.iter().any(|x| Arc::ptr_eq(x, &session)) {
                s.push(session);
            }
        }
        group.changed.notify_waiters();
        self.persist().await;
        Ok(group)
    }

    /// A session leaves a group: `explicit` (it unsubscribed) removes the group when nobody
    /// is left; a session that died leaves the group waiting for members.
    pub async fn leave(&self, name: &str, session: &SessionHandle, explicit: bool) {
        let group = self.groups.lock().await.get(name).cloned();
        let Some(group) = group else { return };
        if let Ok(mut s) = group.sessions.lock() {
            s.retain(|x| x.id() != session.id());
        }
        group.changed.notify_waiters();
        if explicit && group.is_empty() {
            self.remove(name).await;
        }
    }

    fn attach_webhook(&self, group: &Group, w: WebhookMember) -> Result<(), String> {
        let spec = ComponentSpec::webhook(w.url.clone()).with("mode", w.mode.clone());
        let cx = SinkContext {
            subscription: group.name.clone(),
            topic: group.key.topic.clone(),
            ordering: Default::default(),
        };
        let sink = (self.sinks)(&spec, &cx)?;
        if let Ok(mut ws) = group.webhooks.lock() {
            ws.retain(|(m, _)| m.url != w.url);
            ws.push((w, sink));
        }
        group.changed.notify_waiters();
        Ok(())
    }

    /// A webhook URL joins a group (the EventMesh HTTP subscribe).
    pub async fn add_webhook(&self, key: &GroupKey, w: WebhookMember) -> Result<(), String> {
        let group = self.ensure(key).await?;
        self.attach_webhook(&group, w)?;
        self.persist().await;
        Ok(())
    }

    /// A webhook URL leaves every group of `group` on `topic`; says whether it was in one.
    pub async fn remove_webhook(&self, group: &str, topic: &str, url: &str) -> bool {
        let candidates: Vec<Arc<Group>> = self
            .groups
            .lock()
            .await
            .values()
            .filter(|g| g.key.group == group && g.key.topic == topic)
            .cloned()
            .collect();
        let mut found = false;
        for g in candidates {
            let had = g
                .webhooks
                .lock()
                .map(|mut ws| {
                    let before = ws.len();
                    ws.retain(|(m, _)| m.url != url);
                    ws.len() != before
                })
                .unwrap_or(false);
            found |= had;
            if had && g.is_empty() {
                self.remove(&g.name).await;
            }
        }
        self.persist().await;
        found
    }

    async fn remove(&self, name: &str) {
        self.groups.lock().await.remove(name);
        if let Err(e) = self.supervisor.remove(name).await {
            tracing::warn!(subscription = %name, error = %e, "removing an EventMesh group left state behind");
        }
        tracing::info!(subscription = %name, "eventmesh group removed (its last member unsubscribed)");
        self.persist().await;
    }

    async fn persist(&self) {
        let saved: Vec<Saved> = self
            .groups
            .lock()
            .await
            .values()
            .map(|g| Saved {
                key: g.key.clone(),
                webhooks: g
                    .webhooks
                    .lock()
                    .map(|w| w.iter().map(|(m, _)| m.clone()).collect())
                    .unwrap_or_default(),
            })
            .collect();
        match serde_json::to_vec_pretty(&saved) {
            Ok(b) => {
                if let Err(e) = self.state.save_document(DOCUMENT, &b) {
                    tracing::error!(error = %e, "could not save the EventMesh groups");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not encode the EventMesh groups"),
        }
    }
}
