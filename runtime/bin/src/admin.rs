//! The admin API: runtime subscription management, dead-letter lists, health. A listener
//! like any other (`server.admin`).

use bytes::Bytes;
use evmesh_core::component::{Check, Kind};
use evmesh_core::config::{self, ConfigError, SubscriptionConfig};
use evmesh_core::format;
use evmesh_core::sink::SinkHealth;
use evmesh_delivery::Supervisor;
use evmesh_ingress::listener::{ListenAddress, ListenerConfig, ListenerContext, ListenerHandle};
use evmesh_ingress::{error, json, read_body, Handler, Resp};
use evmesh_router::Origin;
use evmesh_store::{EventLog, StateStore, StoreError};
use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

/// `server.admin`: the admin listener's address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AdminConfig(pub ListenAddress);

impl Kind for AdminConfig {
    const KIND: &'static str = "admin";
}

impl Check for AdminConfig {
    fn check(&self) -> Vec<ConfigError> {
        self.0.check()
    }
}

impl AdminConfig {
    pub fn default_value() -> serde_yaml::Value {
        "127.0.0.1:10106".into()
    }
}

impl ListenerConfig for AdminConfig {
    fn label(&self) -> &'static str {
        "admin"
    }

    fn start(&self, cx: ListenerContext) -> BoxFuture<'static, Result<ListenerHandle, String>> {
        let addr = self.0 .0.clone();
        Box::pin(async move {
            let readiness = Readiness::of(&cx).await?;
            let admin = Arc::new(Admin {
                readiness,
                stop: cx.stop.clone(),
                log: cx.log.clone(),
                state: cx.state.clone(),
                supervisor: cx.supervisor.clone(),
                max_body: cx.max_body_bytes,
                changes: tokio::sync::Mutex::new(()),
            });
            let h = evmesh_ingress::serve(&addr, "admin", admin, cx.stop.clone(), cx.drain)
                .await
                .map_err(|e| e.to_string())?;
            Ok(ListenerHandle {
                addr: h.addr,
                task: h.task,
            })
        })
    }
}

/// Whether start-up has finished: the store open, every subscription and source started,
/// every listener bound. Shared between the binary and the admin listener.
#[derive(Default)]
pub struct Readiness(std::sync::atomic::AtomicBool);

impl Readiness {
    /// The process's one readiness flag.
    pub async fn of(cx: &ListenerContext) -> Result<Arc<Readiness>, String> {
        cx.shared
            .get_or_init(|| async { Ok(Arc::new(Readiness::default())) })
            .await
    }

    pub fn set_ready(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The state document holding the subscriptions made through the admin API.
const API_SUBSCRIPTIONS: &str = "subscriptions.json";

/// The subscriptions made through the admin API, as saved.
pub fn load_api_subscriptions(
    state: &dyn StateStore,
) -> Result<Vec<SubscriptionConfig>, StoreError> {
    match state.load_document(API_SUBSCRIPTIONS)? {
        None => Ok(Vec::new()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::State {
            path: API_SUBSCRIPTIONS.into(),
            reason: e.to_string(),
        }),
    }
}

pub struct Admin {
    readiness: Arc<Readiness>,
    stop: tokio::sync::watch::Receiver<bool>,
    log: Arc<dyn EventLog>,
    state: Arc<dyn StateStore>,
    supervisor: Arc<Supervisor>,
    max_body: usize,
    /// Serializes changes to the set of subscriptions.
    changes: tokio::sync::Mutex<()>,
}

impl Admin {
    /// `GET /metrics`: Prometheus (OpenMetrics text). What is cheaper to read than to track
    /// (the store's files, dead-letter list lengths) is read now.
    async fn metrics(&self) -> Resp {
        let m = evmesh_metrics::global();
        if let Some(hk) = self.log.housekeeping() {
            m.clear_store_usage();
            for u in hk.usage() {
                m.set_store_usage(&u.topic, u.bytes, u.segments);
            }
        }
        for r in self.supervisor.routes().await {
            let name = r.name();
            if let Some(d) =
                evmesh_delivery::deadletter::depth(self.log.as_ref(), self.state.as_ref(), name)
            {
                m.set_dead_letter_depth(name, d);
            }
        }
        let mut r = http::Response::new(http_body_util::Full::new(Bytes::from(m.render())));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(evmesh_metrics::CONTENT_TYPE),
        );
        r
    }

    /// `GET /topics[?all=true]`: the topics with what the log knows of them (evmesh's own,
    /// `__…`, only with `all`).
    async fn topics(&self, query: Option<&str>) -> Resp {
        let all = query_param(query, "all").is_some_and(|v| v == "true");
        let mut names = match self.log.topics().await {
            Ok(t) => t,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        names.retain(|t| all || !t.starts_with("__"));
        names.sort();
        let usage = self
            .log
            .housekeeping()
            .map(|h| h.usage())
            .unwrap_or_default();
        let mut out = Vec::new();
        for name in names {
            let mut v = serde_json::json!({ "name": name });
            if let Ok(p) = self.log.partitions(&name).await {
                v["partitions"] = p.len().into();
            }
            if let Some(hk) = self.log.housekeeping() {
                v["endOffset"] = hk.end(&name).into();
            }
            if let Some(u) = usage.iter().find(|u| u.topic == name) {
                v["bytes"] = u.bytes.into();
                v["segments"] = u.segments.into();
            }
            out.push(v);
        }
        json(StatusCode::OK, &serde_json::Value::Array(out))
    }

    /// `GET /topics/{topic}/events?from=earliest|latest|N&max=100&wait=PT5S&partition=0`:
    /// stored events from an offset as a CloudEvents batch, waiting up to `wait` for the first
    /// one (long poll); `evmesh-next-offset` says where to continue. Joins no consumer group and
    /// moves no cursor (`evmesh tail` uses it).
    async fn events(&self, topic: &str, query: Option<&str>) -> Resp {
        if let Err(e) = evmesh_store::safe_component(topic) {
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        let bad = |what: &str, v: &str| {
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{what} {v:?} is not valid (see GET /topics/{{topic}}/events in the README)"
                ),
            )
        };
        let partition = match query_param(query, "partition")
            .as_deref()
            .map(str::parse::<i32>)
        {
            None => 0,
            Some(Ok(p)) if p >= 0 => p,
            Some(_) => {
                return bad(
                    "partition",
                    &query_param(query, "partition").unwrap_or_default(),
                )
            }
        };
        let max = match query_param(query, "max")
            .as_deref()
            .map(str::parse::<usize>)
        {
            None => 100,
            Some(Ok(n)) if (1..=1000).contains(&n) => n,
            Some(_) => {
                return bad(
                    "max (1-1000)",
                    &query_param(query, "max").unwrap_or_default(),
                )
            }
        };
        let wait = match query_param(query, "wait") {
            None => std::time::Duration::ZERO,
            Some(w) => match evmesh_core::duration::IsoDuration::parse(&w) {
                Some(d) if d.0 <= std::time::Duration::from_secs(60) => d.0,
                _ => return bad("wait (an ISO 8601 duration up to PT60S)", &w),
            },
        };
        let from = query_param(query, "from").unwrap_or_else(|| "earliest".into());
        let mut at = match from.as_str() {
            "earliest" => 0,
            "latest" => match self.end_of(topic, partition).await {
                Ok(e) => e,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            },
            n => match n.parse::<u64>() {
                Ok(n) => n,
                Err(_) => return bad("from (earliest, latest or an offset)", n),
            },
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let batch = match self.log.read(topic, partition, at, max).await {
                Ok(b) => b,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            };
            at = batch.next.max(at);
            if !batch.events.is_empty() || tokio::time::Instant::now() >= deadline {
                let events: Vec<evmesh_core::Event> =
                    batch.events.iter().map(|se| (*se.event).clone()).collect();
                let mut r = batch_response(&events);
                r.headers_mut()
                    .insert("evmesh-next-offset", http::HeaderValue::from(at));
                return r;
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = stop.changed() => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
            }
        }
    }

    /// One past the newest offset of a partition.
    async fn end_of(&self, topic: &str, partition: i32) -> Result<u64, StoreError> {
        if let Some(hk) = self.log.housekeeping() {
            return Ok(hk.end(topic));
        }
        let mut at = 0;
        loop {
            let b = self.log.read(topic, partition, at, 1000).await?;
            if b.events.is_empty() {
                return Ok(b.next.max(at));
            }
            at = b.next.max(at);
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        if let ["subscriptions" | "sources", name, ..] = segs.as_slice() {
            if let Err(e) = config::validate_name(name) {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("subscription name {name:?}: {e}"),
                );
            }
        }
        match (method.clone(), segs.as_slice()) {
            (Method::GET, ["healthz"]) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ok",
                    "storeProblems": self.log.housekeeping().map(|h| h.problems()).unwrap_or_default(),
                }),
            ),
            (Method::GET, ["readyz"]) => self.readyz().await,
            (Method::GET, ["metrics"]) => self.metrics().await,
            (Method::GET, ["subscriptions"]) => {
                let mut out = Vec::new();
                // evmesh's own (the request-reply topic) are not the user's to see or change.
                for r in self.supervisor.routes().await {
                    if r.origin != Origin::Internal {
                        let mut v = describe(&r.config, r.origin);
                        v["state"] = self.state_of(r.name()).await.into();
                        out.push(v);
                    }
                }
                json(StatusCode::OK, &serde_json::Value::Array(out))
            }
            (Method::GET, ["topics"]) => self.topics(req.uri().query()).await,
            (Method::GET, ["topics", topic, "events"]) => {
                let topic = topic.to_string();
                self.events(&topic, req.uri().query()).await
            }
            (Method::GET, ["subscriptions", name]) => match self.supervisor.route(name).await {
                Some(r) => {
                    let mut v = describe(&r.config, r.origin);
                    v["state"] = self.state_of(name).await.into();
                    json(StatusCode::OK, &v)
                }
                None => not_found(name),
            },
            (Method::PUT, ["subscriptions", name]) => {
                let name = name.to_string();
                self.put(name, req).await
            }
            (Method::DELETE, ["subscriptions", name]) => self.delete(name).await,
            (Method::GET, ["subscriptions", name, "deadletters"]) => self.deadletters(name).await,
            (Method::DELETE, ["subscriptions", name, "deadletters"]) => {
                self.purge_deadletters(name).await
            }
            (Method::GET, ["subscriptions", name, "deadletters", id]) => {
                self.deadletter(name, id).await
            }
            (Method::POST, ["subscriptions", name, "pause"]) => self.pause_resume(name, true).await,
            (Method::POST, ["subscriptions", name, "resume"]) => {
                self.pause_resume(name, false).await
            }
            (Method::GET, ["subscriptions", name, "replay"]) => {
                let Some(r) = self.supervisor.route(name).await else {
                    return not_found(name);
                };
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "pending": self.supervisor.pending(name, &r.config.topic) }),
                )
            }
            (Method::POST, ["subscriptions", name, "replay"]) => {
                let name = name.to_string();
                self.replay(&name, req.uri().query()).await
            }
            (Method::POST, ["subscriptions", name, "redrive"]) => self.redrive(name).await,
            (Method::GET, ["subscriptions", name, "redrive"]) => {
                if self.supervisor.route(name).await.is_none() {
                    return not_found(name);
                }
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "pending": self.supervisor.redrive_pending(name) }),
                )
            }
            (Method::GET, ["sources", name, "deadletters"]) => self.source_deadletters(name).await,
            (Method::POST | Method::GET, ["subscriptions", name, "explain"]) => {
                let name = name.to_string();
                self.explain(&name, req).await
            }
            (_, ["healthz" | "readyz" | "metrics" | "topics"])
            | (_, ["topics", _, "events"])
            | (_, ["subscriptions"])
            | (_, ["subscriptions", _])
            | (_, ["subscriptions", _, _])
            | (_, ["subscriptions", _, "deadletters", _])
            | (_, ["sources", _, _]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no admin route for {path}")),
        }
    }

    /// Ready (200) once start-up has finished and until shutdown begins (503 otherwise), with
    /// what each subscription's sink knows of its destination. A failing destination does not
    /// make the process unready: ingest still works and the events wait, retried.
    async fn readyz(&self) -> Resp {
        let status = if *self.stop.borrow() {
            "stopping"
        } else if self.readiness.is_ready() {
            "ready"
        } else {
            "starting"
        };
        // evmesh's own subscriptions (the request-reply topic) are not the user's.
        let internal: std::collections::HashSet<String> = self
            .supervisor
            .routes()
            .await
            .into_iter()
            .filter(|r| r.origin == Origin::Internal)
            .map(|r| r.config.name.clone())
            .collect();
        let sinks: Vec<serde_json::Value> = self
            .supervisor
            .sink_health()
            .await
            .into_iter()
            .filter(|(name, _)| !internal.contains(name))
            .map(|(name, h)| match h {
                SinkHealth::Unknown => serde_json::json!({"subscription": name, "sink": "unknown"}),
                SinkHealth::Ready => serde_json::json!({"subscription": name, "sink": "ready"}),
                SinkHealth::Unhealthy(why) => {
                    serde_json::json!({"subscription": name, "sink": "unhealthy", "reason": why})
                }
            })
            .collect();
        let code = if status == "ready" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(code, &serde_json::json!({"status": status, "sinks": sinks}))
    }

    async fn put(&self, name: String, req: Request<Incoming>) -> Resp {
        let (_, body) = match read_body(req, self.max_body).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        // JSON is YAML, so one parser takes both.
        let mut value: serde_yaml::Value = match serde_yaml::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid JSON/YAML body: {e}"),
                )
            }
        };
        if let Some(m) = value.as_mapping_mut() {
            match m.get("name").and_then(|v| v.as_str()) {
                Some(n) if n != name => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("name {n:?} in the body differs from {name:?} in the path"),
                    )
                }
                _ => {
                    m.insert("name".into(), name.clone().into());
                }
            }
        }
        let sub = match config::subscription_from_value(value) {
            Ok(s) => s,
            Err(errs) => {
                let list: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": list.join("; "), "errors": list}),
                );
            }
        };
        let _g = self.changes.lock().await;
        let existed = match self.supervisor.route(&name).await {
            Some(r) if !r.origin.is_api_managed() => {
                return error(
                    StatusCode::CONFLICT,
                    managed_elsewhere(&name, r.origin, "change"),
                )
            }
            Some(_) => true,
            None => false,
        };
        // Check the sinks before touching the running one.
        let sink_errors = crate::plan::sink_errors(&sub, "");
        if !sink_errors.is_empty() {
            let list: Vec<String> = sink_errors.iter().map(ToString::to_string).collect();
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": list.join("; "), "errors": list}),
            );
        }
        if existed {
            self.supervisor.stop(&name).await;
        }
        if let Err(e) = self.supervisor.start(sub.clone(), Origin::Api).await {
            if let evmesh_delivery::DeliveryError::Invalid(r) = &e {
                let list: Vec<String> = r.errors().iter().map(ToString::to_string).collect();
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": list.join("; "), "errors": list}),
                );
            }
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
        if let Err(e) = self.persist().await {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the subscription runs but was not persisted: {e}"),
            );
        }
        let status = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        json(status, &describe(&sub, Origin::Api))
    }

    async fn delete(&self, name: &str) -> Resp {
        let _g = self.changes.lock().await;
        match self.supervisor.route(name).await {
            None => return not_found(name),
            Some(r) if !r.origin.is_api_managed() => {
                return error(
                    StatusCode::CONFLICT,
                    managed_elsewhere(name, r.origin, "remove"),
                )
            }
            Some(_) => {}
        }
        if let Err(e) = self.supervisor.remove(name).await {
            tracing::warn!(subscription = %name, error = %e, "could not remove all of the subscription's state");
        }
        if let Err(e) = self.persist().await {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("deleted, but the change was not persisted: {e}"),
            );
        }
        let mut r = Resp::new(http_body_util::Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }

    async fn persist(&self) -> Result<(), StoreError> {
        let api: Vec<SubscriptionConfig> = self
            .supervisor
            .routes()
            .await
            .into_iter()
            .filter(|r| r.origin == Origin::Api)
            .map(|r| r.config.clone())
            .collect();
        let bytes = serde_json::to_vec_pretty(&api).map_err(|e| StoreError::State {
            path: API_SUBSCRIPTIONS.into(),
            reason: e.to_string(),
        })?;
        self.state.save_document(API_SUBSCRIPTIONS, &bytes)
    }

    async fn purge_deadletters(&self, name: &str) -> Resp {
        if self.supervisor.route(name).await.is_none() {
            return not_found(name);
        }
        let _g = self.changes.lock().await;
        match self.supervisor.purge_dead_letters(name).await {
            Ok(n) => json(StatusCode::OK, &serde_json::json!({ "purged": n })),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("purge failed: {e}"),
            ),
        }
    }

    /// One dead letter by its event id, in structured mode.
    async fn deadletter(&self, name: &str, id: &str) -> Resp {
        if self.supervisor.route(name).await.is_none() {
            return not_found(name);
        }
        match self.supervisor.dead_letters(name).await {
            Ok(events) => match events.iter().find(|e| e.id == id) {
                Some(e) => {
                    let mut body = Vec::new();
                    format::encode_structured(e, &mut body);
                    let mut r = Resp::new(http_body_util::Full::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/cloudevents+json"),
                    );
                    r
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no dead letter with id {id:?} in {name:?}'s list"),
                ),
            },
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn state_of(&self, name: &str) -> &'static str {
        match self.supervisor.is_paused(name).await {
            Some(true) => "paused",
            _ => "running",
        }
    }

    /// `POST /subscriptions/{name}/pause|resume`.
    async fn pause_resume(&self, name: &str, pause: bool) -> Resp {
        match self.supervisor.route(name).await {
            None => return not_found(name),
            Some(r) if matches!(r.origin, Origin::Protocol | Origin::Internal) => {
                return error(
                    StatusCode::CONFLICT,
                    managed_elsewhere(name, r.origin, if pause { "pause" } else { "resume" }),
                )
            }
            Some(_) => {}
        }
        let _g = self.changes.lock().await;
        let r = if pause {
            self.supervisor.pause(name).await
        } else {
            self.supervisor.resume(name).await
        };
        match r {
            Ok(changed) => json(
                StatusCode::OK,
                &serde_json::json!({ "subscription": name, "state": if pause { "paused" } else { "running" }, "changed": changed }),
            ),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    /// `POST /subscriptions/{name}/replay?from=earliest|latest|OFFSET|RFC3339-TIME`.
    async fn replay(&self, name: &str, query: Option<&str>) -> Resp {
        let Some(route) = self.supervisor.route(name).await else {
            return not_found(name);
        };
        if matches!(route.origin, Origin::Protocol | Origin::Internal) {
            return error(
                StatusCode::CONFLICT,
                managed_elsewhere(name, route.origin, "replay"),
            );
        }
        let Some(from) = query_param(query, "from") else {
            return error(
                StatusCode::BAD_REQUEST,
                "say where to replay from: ?from=earliest, latest, an offset or an RFC 3339 time",
            );
        };
        let topic = route.config.topic.clone();
        let offset = match from.as_str() {
            "earliest" => 0,
            "latest" => u64::MAX,
            f => match f.parse::<u64>() {
                Ok(n) => n,
                Err(_) => match chrono::DateTime::parse_from_rfc3339(f) {
                    Ok(t) => match self.first_at_or_after(&topic, t).await {
                        Ok(o) => o,
                        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                    },
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "from={f:?} is not earliest, latest, an offset or an RFC 3339 time"
                            ),
                        )
                    }
                },
            },
        };
        let _g = self.changes.lock().await;
        match self.supervisor.replay(name, offset).await {
            Ok(at) => json(
                StatusCode::OK,
                &serde_json::json!({ "subscription": name, "topic": topic, "from": at }),
            ),
            Err(e @ evmesh_delivery::DeliveryError::Unsupported(_)) => {
                error(StatusCode::CONFLICT, e.to_string())
            }
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    /// The offset of the first event whose `time` is at or after `t` (events without a `time`
    /// are passed over); the topic's end when there is none.
    async fn first_at_or_after(
        &self,
        topic: &str,
        t: chrono::DateTime<chrono::FixedOffset>,
    ) -> Result<u64, StoreError> {
        let mut at = 0;
        loop {
            let b = self.log.read(topic, 0, at, 1000).await?;
            if b.events.is_empty() {
                return Ok(b.next.max(at));
            }
            for se in &b.events {
                let when = se
                    .event
                    .time
                    .as_deref()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
                if when.is_some_and(|w| w >= t) {
                    return Ok(se.offset);
                }
            }
            at = b.next.max(at);
        }
    }

    async fn deadletters(&self, name: &str) -> Resp {
        if self.supervisor.route(name).await.is_none() {
            return not_found(name);
        }
        match self.supervisor.dead_letters(name).await {
            Ok(events) => batch_response(&events),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    /// Records a source could not store (too large), with the reason, oldest first.
    async fn source_deadletters(&self, name: &str) -> Resp {
        match self.supervisor.source_dead_letters(name).await {
            Ok(events) => batch_response(&events),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn redrive(&self, name: &str) -> Resp {
        if self.supervisor.route(name).await.is_none() {
            return not_found(name);
        }
        let _g = self.changes.lock().await;
        match self.supervisor.redrive(name).await {
            Ok(n) => json(StatusCode::OK, &serde_json::json!({"redriven": n})),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("redrive failed: {e}"),
            ),
        }
    }
}

impl Admin {
    /// Does this event match the subscription; if not, which filter said no and why; and what
    /// would the transforms make of it.
    async fn explain(&self, name: &str, req: Request<Incoming>) -> Resp {
        let Some(route) = self.supervisor.route(name).await else {
            return not_found(name);
        };
        let (parts, body) = match read_body(req, self.max_body).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let events = match evmesh_ingress::decode_events(&parts, body) {
            Ok(e) => e,
            Err(r) => return *r,
        };
        let Some(event) = events.into_iter().next() else {
            return error(StatusCode::BAD_REQUEST, "send one CloudEvent to explain");
        };
        let ex = route.explain(&event);
        let transformed = match ex.transformed {
            None => serde_json::Value::Null,
            Some(Ok(events)) => {
                let mut buf = Vec::new();
                format::encode_batch(&events, &mut buf);
                serde_json::from_slice(&buf).unwrap_or_default()
            }
            Some(Err(e)) => serde_json::json!({"error": e.to_string()}),
        };
        json(
            StatusCode::OK,
            &serde_json::json!({"matches": ex.matches, "reason": ex.reason, "transformed": transformed}),
        )
    }
}

fn batch_response(events: &[evmesh_core::Event]) -> Resp {
    let mut body = Vec::new();
    format::encode_batch(events, &mut body);
    let mut r = Resp::new(http_body_util::Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/cloudevents-batch+json"),
    );
    r
}

/// Why the admin API does not change a subscription made elsewhere.
fn managed_elsewhere(name: &str, origin: Origin, verb: &str) -> String {
    match origin {
        Origin::Config => {
            format!("subscription {name:?} is declared in the config file; {verb} it there")
        }
        Origin::Protocol => format!(
            "subscription {name:?} belongs to an EventMesh consumer group; {verb} it with the EventMesh API (unsubscribe)"
        ),
        _ => format!("subscription {name:?} is evmesh's own"),
    }
}

fn not_found(name: &str) -> Resp {
    error(
        StatusCode::NOT_FOUND,
        format!("no subscription named {name:?}"),
    )
}

fn describe(cfg: &SubscriptionConfig, origin: Origin) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    v["origin"] = origin.as_str().into();
    v
}

impl Handler for Admin {
    fn call(self: Arc<Self>, req: Request<Incoming>) -> BoxFuture<'static, Resp> {
        Box::pin(async move { self.handle(req).await })
    }
}

/// A query parameter, percent-decoded.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}
