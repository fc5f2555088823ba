//! One event's way out: transforms, attempts under the subscription's policy (retries with
//! backoff, `Retry-After`), replies stored durably, and the dead-letter path.

use crate::{backoff_delay, deadletter, Ctx};
use evmesh_core::ack::AckStatus;
use evmesh_core::sink::{RetryHint, SinkError};
use evmesh_core::trace::{self, TraceContext};
use evmesh_core::{Event, ExtValue};
use evmesh_router::{Prepared, StepRun};
use evmesh_telemetry::Attr;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Transforms the event, then delivers what comes out under the subscription's policy; says
/// how it ended. A built-in transform failure dead-letters the original event with the reason;
/// a plugin failure is retried per the policy first (plugins can fail transiently: deadlines).
pub(crate) async fn deliver(
    ctx: &Ctx,
    offset: u64,
    event: Arc<Event>,
    attempts: &Mutex<BTreeMap<u64, u32>>,
    prep: Option<Prepared>,
) -> AckStatus {
    let outputs = match prep {
        Some(Prepared::Skip) => return AckStatus::Skipped,
        Some(Prepared::Outputs(o)) => o,
        Some(Prepared::Failed(msg)) => {
            match retry_plugins(ctx, offset, &event, attempts, msg).await {
                Ok(Some(o)) => o,
                Ok(None) => return AckStatus::Skipped,
                Err(status) => return status,
            }
        }
        None if !ctx.route.has_transforms() => {
            return deliver_one(ctx, offset, &event, attempts).await
        }
        None => {
            let routed = if let Some(parent) = sampled_parent(&event) {
                let name = ctx.route.name();
                let mut trace = |run| step_run_span(name, &event, &parent, run);
                ctx.route
                    .transform_traced((*event).clone(), Some(&mut trace))
            } else {
                ctx.route.transform_routed((*event).clone())
            };
            match routed {
                Ok(o) => o,
                Err(e) => {
                    let err = SinkError::not_retryable(format!("transform failed: {e}"));
                    return dead_letter(ctx, &event, 0, err).await;
                }
            }
        }
    };
    let mut status = AckStatus::Skipped;
    for (topic, out) in outputs {
        let s = match topic {
            Some(t) => match publish(ctx, &t, &out, "a routed event").await {
                Published::Stored => AckStatus::Delivered,
                Published::Stopped => AckStatus::Retry,
                Published::Refused(why) => {
                    let err = SinkError::not_retryable(format!(
                        "the event routed to topic {t:?} cannot be stored: {why}"
                    ));
                    dead_letter(ctx, &event, 0, err).await
                }
            },
            None => deliver_one(ctx, offset, &out, attempts).await,
        };
        match s {
            AckStatus::Retry => return AckStatus::Retry,
            AckStatus::DeadLettered => status = AckStatus::DeadLettered,
            s if status == AckStatus::Skipped => status = s,
            _ => {}
        }
        if let Ok(mut a) = attempts.lock() {
            a.remove(&offset);
        }
    }
    status
}

/// Runs a route's plugin steps again for one event whose batch failed, with the delivery
/// policy's backoff; after the last attempt the event is dead-lettered with the plugin's error.
async fn retry_plugins(
    ctx: &Ctx,
    offset: u64,
    event: &Event,
    attempts: &Mutex<BTreeMap<u64, u32>>,
    first_error: String,
) -> Result<Option<Vec<evmesh_core::transform::Routed>>, AckStatus> {
    let spec = &ctx.route.delivery;
    let max_attempts = spec.retry.saturating_add(1);
    let mut made = attempts
        .lock()
        .map(|a| a.get(&offset).copied().unwrap_or(0))
        .unwrap_or(0)
        + 1;
    let mut last = first_error;
    let mut stop = ctx.stop.clone();
    loop {
        if let Ok(mut a) = attempts.lock() {
            a.insert(offset, made);
        }
        if made >= max_attempts {
            let err = SinkError::not_retryable(last);
            return Err(dead_letter(ctx, event, made, err).await);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff_delay(spec, made)) => {}
            _ = stop.changed() => return Err(AckStatus::Retry),
        }
        let route = ctx.route.clone();
        let again = tokio::task::block_in_place(|| route.prepare_batch(&[event]));
        made += 1;
        match again.into_iter().next() {
            Some(Prepared::Outputs(o)) => {
                if let Ok(mut a) = attempts.lock() {
                    a.remove(&offset);
                }
                return Ok(Some(o));
            }
            Some(Prepared::Skip) | None => return Ok(None),
            Some(Prepared::Failed(m)) => last = m,
        }
    }
}

/// How storing an event that delivery produced (a reply, a routed output) ended.
enum Published {
    Stored,
    /// Shutdown came first; nothing is finished.
    Stopped,
    /// The store will never take it (too large, say): the cause goes to the dead-letter path.
    Refused(String),
}

/// Stores an event durably, retrying transient failures until it is stored.
async fn publish(ctx: &Ctx, topic: &str, event: &Event, what: &str) -> Published {
    let mut wait = Duration::from_millis(100);
    loop {
        match ctx.log.append(topic, std::slice::from_ref(event)).await {
            Ok(_) => return Published::Stored,
            Err(e) if e.is_permanent() => return Published::Refused(e.to_string()),
            Err(e) => {
                tracing::error!(subscription = %ctx.route.name(), topic = %topic, error = %e, "storing {what} failed; retrying");
                if ctx.stopping() {
                    return Published::Stopped;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Delivers one event under the subscription's policy; says how it ended.
async fn deliver_one(
    ctx: &Ctx,
    offset: u64,
    event: &Event,
    attempts: &Mutex<BTreeMap<u64, u32>>,
) -> AckStatus {
    let spec = &ctx.route.delivery;
    let max_attempts = spec.retry.saturating_add(1);
    let mut made = attempts
        .lock()
        .map(|a| a.get(&offset).copied().unwrap_or(0))
        .unwrap_or(0);
    let mut stop = ctx.stop.clone();
    let mut last: Option<SinkError> = None;
    loop {
        if made >= max_attempts {
            let err = last.unwrap_or_else(|| {
                SinkError::retryable(
                    "every attempt failed (some before a restart or a lost attempt)",
                )
            });
            return dead_letter(ctx, event, made, err).await;
        }
        if ctx.stopping() {
            return AckStatus::Retry;
        }
        let began = std::time::Instant::now();
        let (parent, cx) = attempt_context(event);
        let started = std::time::SystemTime::now();
        let state = match event.extension(trace::TRACESTATE) {
            Some(ExtValue::String(s)) if cx.is_some() => Some(s.clone()),
            _ => None,
        };
        let result = trace::with_attempt(cx, state, ctx.sink.deliver(event, spec.timeout.0)).await;
        made += 1;
        let retried =
            matches!(&result, Err(e) if e.hint != RetryHint::NotRetryable && made < max_attempts);
        ctx.metrics.attempt(began.elapsed(), retried);
        if let (Some(p), Some(cx)) = (parent, cx) {
            if cx != p {
                evmesh_telemetry::record(evmesh_telemetry::Span {
                    cx,
                    parent: Some(p.span_id),
                    name: format!("deliver {}", ctx.route.name()),
                    kind: evmesh_telemetry::Kind::Client,
                    start: started,
                    end: std::time::SystemTime::now(),
                    attributes: vec![
                        (
                            "evmesh.subscription",
                            Attr::Str(ctx.route.name().to_owned()),
                        ),
                        ("evmesh.sink", Attr::Str(ctx.sink.describe())),
                        ("evmesh.attempt", Attr::Int(i64::from(made))),
                        ("cloudevents.event_id", Attr::Str(event.id.clone())),
                    ],
                    error: result.as_ref().err().map(|e| e.message.clone()),
                });
            }
        }
        match result {
            Ok(delivered) => {
                if let Some(mut reply) = delivered.reply {
                    // A request's reply goes to the requester's reply topic; any other reply
                    // to the subscription's `reply` topic (Knative).
                    let topic = evmesh_core::publish::answer(event, &mut reply)
                        .unwrap_or_else(|| ctx.route.reply_topic().to_owned());
                    match publish(ctx, &topic, &reply, "a reply").await {
                        Published::Stored => {}
                        Published::Stopped => return AckStatus::Retry,
                        Published::Refused(why) => {
                            let err = SinkError::not_retryable(format!(
                                "delivered, but the reply cannot be stored in topic {topic:?}: {why}"
                            ));
                            return dead_letter(ctx, event, made, err).await;
                        }
                    }
                }
                return AckStatus::Delivered;
            }
            Err(e) => {
                if let Ok(mut a) = attempts.lock() {
                    a.insert(offset, made);
                }
                tracing::info!(subscription = %ctx.route.name(), offset, attempt = made, error = %e, "delivery attempt failed");
                if e.hint == RetryHint::NotRetryable {
                    return dead_letter(ctx, event, made, e).await;
                }
                if made >= max_attempts {
                    last = Some(e);
                    continue;
                }
                let delay = match e.hint {
                    RetryHint::RetryAfter(d) => d,
                    _ => backoff_delay(spec, made),
                };
                last = Some(e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return AckStatus::Retry,
                }
            }
        }
    }
}

/// The event's sampled trace context, when tracing is on: its filters, transforms and
/// attempts get spans, children of it.
pub(crate) fn sampled_parent(event: &Event) -> Option<TraceContext> {
    if !evmesh_telemetry::enabled() {
        return None;
    }
    attempt_context(event).0.filter(|p| p.sampled)
}

/// Records the span of one filter or transform of subscription `name` that ran on a traced
/// event (`filter <name>`, `transform <name>`): a child of `parent`, the event's sampled
/// context.
pub(crate) fn step_run_span(name: &str, event: &Event, parent: &TraceContext, run: StepRun) {
    let mut attributes = vec![
        ("evmesh.subscription", Attr::Str(name.to_owned())),
        ("evmesh.step", Attr::Str(run.path)),
        ("cloudevents.event_id", Attr::Str(event.id.clone())),
    ];
    if let Some(p) = run.plugin {
        attributes.push(("evmesh.plugin", Attr::Str(p)));
    }
    if let Some(m) = run.matched {
        attributes.push(("evmesh.matched", Attr::Str(m.to_string())));
    }
    evmesh_telemetry::record(evmesh_telemetry::Span {
        cx: parent.child(),
        parent: Some(parent.span_id),
        name: format!("{} {name}", run.kind),
        kind: evmesh_telemetry::Kind::Internal,
        start: run.started,
        end: run.ended,
        attributes,
        error: run.error,
    });
}

/// The event's trace context (its `traceparent` extension) and the one this attempt sends:
/// a child span when tracing is on, else the event's own, passed through unchanged.
fn attempt_context(event: &Event) -> (Option<TraceContext>, Option<TraceContext>) {
    let parent = match event.extension(trace::TRACEPARENT) {
        Some(ExtValue::String(s)) => TraceContext::parse(s),
        _ => None,
    };
    let cx = match parent {
        Some(p) if evmesh_telemetry::enabled() => Some(p.child()),
        p => p,
    };
    (parent, cx)
}

async fn dead_letter(ctx: &Ctx, event: &Event, attempts: u32, err: SinkError) -> AckStatus {
    let name = ctx.route.name();
    let mut event = event.clone();
    event.set_extension(deadletter::REASON, ExtValue::String(err.message.clone()));
    event.set_extension(deadletter::ATTEMPTS, ExtValue::Integer(i64::from(attempts)));
    if let Some(s) = err.status {
        event.set_extension(deadletter::STATUS, ExtValue::Integer(i64::from(s)));
    }
    event.set_extension(deadletter::SUBSCRIPTION, ExtValue::String(name.to_owned()));
    tracing::warn!(subscription = %name, id = %event.id, attempts, reason = %err.message, "dead-lettering an event");
    let spec = &ctx.route.delivery;
    let mut n = 0u32;
    let mut stop = ctx.stop.clone();
    loop {
        let result = match &ctx.dls {
            Some(dls) => dls
                .deliver(&event, spec.timeout.0)
                .await
                .map(|_| ())
                .map_err(|e| e.message),
            None => match ctx
                .log
                .append(&deadletter::dlq_topic(name), std::slice::from_ref(&event))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() && event.data.is_some() => {
                    // The event itself is too large to keep: keep its attributes and the
                    // reason, so the list still says what was lost and why.
                    tracing::error!(subscription = %name, id = %event.id, error = %e, "the dead-lettered event is too large for the store; keeping it without its data");
                    event.data = None;
                    event.set_extension(
                        deadletter::REASON,
                        ExtValue::String(format!("{} (data dropped: {e})", err.message)),
                    );
                    continue;
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match result {
            Ok(()) => return AckStatus::DeadLettered,
            Err(e) => {
                n = n.saturating_add(1);
                tracing::warn!(subscription = %name, attempt = n, error = %e, "the dead-letter destination refused an event; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff_delay(spec, n)) => {}
                    _ = stop.changed() => return AckStatus::Retry,
                }
            }
        }
    }
}
