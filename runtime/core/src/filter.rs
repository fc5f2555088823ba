//! Filters are pure and synchronous; every dialect compiles to this trait.

use crate::event::Event;

pub trait Filter: Send + Sync + 'static {
    fn matches(&self, event: &Event) -> bool;

    /// Why the event did not match, naming the filter's path (`filters[1].prefix.source: …`),
    /// or `None` when it matches.
    fn explain(&self, event: &Event, path: &str) -> Option<String>;
}

/// Matches everything: a subscription with no filters.
pub struct MatchAll;

impl Filter for MatchAll {
    fn matches(&self, _: &Event) -> bool {
        true
    }

    fn explain(&self, _: &Event, _: &str) -> Option<String> {
        None
    }
}

/// A filter evaluated a batch at a time that can fail (a WASM plugin that traps or runs past its
/// deadline). A failure fails the whole batch; its events follow the delivery policy.
pub trait BatchFilter: Send + Sync + 'static {
    fn filter_batch(&self, events: &[&Event]) -> Result<Vec<bool>, String>;
    fn describe(&self) -> String;
}
