//! Dead-letter bookkeeping, in one place: the internal topics that hold a subscription's
//! dead-letter list (`__dlq.<name>`), the events re-driven out of it (`__redrive.<name>`), and
//! the records a source could not store (`__sourcedlq.<name>`); the extensions a dead-lettered
//! event carries; listing, re-driving and removing them.
//!
//! A dead-letter list's read position is a cursor in the state store (consumer = the
//! subscription, topic = the list's topic, `@<partition>` appended past partition 0).

use evmesh_core::{Event, ExtValue};
use evmesh_store::{read_to_end, CursorState, EventLog, StateStore, StoreError};
use std::sync::Arc;

pub const REASON: &str = "deadletterreason";
pub const ATTEMPTS: &str = "deadletterattempts";
pub const STATUS: &str = "deadletterstatus";
pub const SUBSCRIPTION: &str = "deadlettersubscription";
/// On records a source could not store: the source's name.
pub const SOURCE: &str = "deadlettersource";
pub const ALL: &[&str] = &[REASON, ATTEMPTS, STATUS, SUBSCRIPTION];

/// The dead-letter list of a subscription lives in this internal topic.
pub(crate) fn dlq_topic(subscription: &str) -> String {
    format!("__dlq.{subscription}")
}

/// Events re-driven from the dead-letter list are delivered again from this internal topic.
pub(crate) fn redrive_topic(subscription: &str) -> String {
    format!("__redrive.{subscription}")
}

/// Records a source could not store, with the reason.
pub fn source_dlq_topic(source: &str) -> String {
    format!("__sourcedlq.{source}")
}

/// Whether a topic holds dead letters (never cleaned up by segment collection).
pub(crate) fn is_dead_letter_topic(topic: &str) -> bool {
    topic.starts_with("__dlq.") || topic.starts_with("__sourcedlq.")
}

fn cursor_key(topic: &str, partition: i32) -> String {
    if partition == 0 {
        topic.to_owned()
    } else {
        format!("{topic}@{partition}")
    }
}

/// A subscription's dead-letter list: the events from its cursor to the end, and where each
/// partition ended (for [`clear`]).
pub async fn list(
    log: &dyn EventLog,
    state: &dyn StateStore,
    subscription: &str,
) -> Result<(Vec<Event>, Vec<(i32, u64)>), StoreError> {
    let topic = dlq_topic(subscription);
    let mut starts = Vec::new();
    for p in log.partitions(&topic).await? {
        let at = state
            .load_cursor(subscription, &cursor_key(&topic, p))?
            .map_or(0, |c| c.committed);
        starts.push((p, at));
    }
    let (events, ends) = read_to_end(log, &topic, |p| {
        starts
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(0, |(_, at)| *at)
    })
    .await?;
    Ok((
        events
            .into_iter()
            .map(|e| Arc::unwrap_or_clone(e.event))
            .collect(),
        ends.into_iter().collect(),
    ))
}

/// How many events a subscription's dead-letter list holds, where the log can say without
/// reading them (a log that manages its own files); `None` elsewhere.
pub fn depth(log: &dyn EventLog, state: &dyn StateStore, subscription: &str) -> Option<u64> {
    let hk = log.housekeeping()?;
    let topic = dlq_topic(subscription);
    let at = state
        .load_cursor(subscription, &cursor_key(&topic, 0))
        .ok()
        .flatten()
        .map_or(0, |c| c.committed);
    Some(hk.end(&topic).saturating_sub(at))
}

/// Marks the list as read up to `ends` (as [`list`] returned them).
pub fn clear(
    state: &dyn StateStore,
    subscription: &str,
    ends: &[(i32, u64)],
) -> Result<(), StoreError> {
    let topic = dlq_topic(subscription);
    for (p, end) in ends {
        let c = CursorState {
            committed: *end,
            ..Default::default()
        };
        state.save_cursor(subscription, &cursor_key(&topic, *p), &c)?;
    }
    Ok(())
}

/// Moves the dead-letter list to the re-drive topic (without the dead-letter extensions),
/// where the subscription delivers it again; then empties the list. Says how many moved.
pub async fn redrive(
    log: &dyn EventLog,
    state: &dyn StateStore,
    subscription: &str,
) -> Result<usize, StoreError> {
    let (mut events, ends) = list(log, state, subscription).await?;
    for e in &mut events {
        for ext in ALL {
            e.remove_extension(ext);
        }
    }
    if !events.is_empty() {
        log.append(&redrive_topic(subscription), &events).await?;
    }
    clear(state, subscription, &ends)?;
    Ok(events.len())
}

/// Removes a subscription's dead-letter list, re-drive topic and every cursor it kept.
pub async fn remove(
    log: &dyn EventLog,
    state: &dyn StateStore,
    subscription: &str,
) -> Result<(), StoreError> {
    state.delete_consumer(subscription)?;
    for topic in [dlq_topic(subscription), redrive_topic(subscription)] {
        log.delete_topic(&topic).await?;
    }
    Ok(())
}

/// What a source's dead-letter list keeps of a record the store refused: its attributes
/// (plain Kafka records carry their coordinates as extensions) and the reason; not its data,
/// when the data is what did not fit.
pub fn source_dead_letter(event: Event, source: &str, reason: &str) -> Event {
    let mut e = event;
    let size = e.data.as_ref().map_or(0, |d| d.bytes.len());
    e.data = None;
    e.set_extension(
        REASON,
        ExtValue::String(format!("{reason} (data of {size} bytes dropped)")),
    );
    e.set_extension(SOURCE, ExtValue::String(source.to_owned()));
    e
}

/// A source's dead-letter list, oldest first.
pub async fn list_source(log: &dyn EventLog, source: &str) -> Result<Vec<Event>, StoreError> {
    let (events, _) = read_to_end(log, &source_dlq_topic(source), |_| 0).await?;
    Ok(events
        .into_iter()
        .map(|e| Arc::unwrap_or_clone(e.event))
        .collect())
}
