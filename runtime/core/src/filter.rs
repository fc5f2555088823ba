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
