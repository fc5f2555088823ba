//! The subscription index of one topic.
//!
//! Each subscription is filed under one *key* that every event it matches must satisfy: an
//! `exact` attribute value, a `prefix` or `suffix`, a CESQL `attr = 'literal'` conjunct, or a pattern's
//! top-level list of exact strings. An event then looks up only the keys its own attribute
//! values hit (a hash probe per indexed attribute, one per distinct prefix or suffix length), and the
//! full filter runs only on those candidates plus the few subscriptions with no usable key.
//! Matching allocates nothing when attributes are strings.

use crate::Route;
use evmesh_core::config::FilterConfig;
use evmesh_core::event::AttrRef;
use evmesh_core::Event;
use evmesh_filter_cesql::Cesql;
use evmesh_filter_pattern::PatternFilter;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
struct PrefixIndex {
    /// Distinct prefix lengths, ascending.
    lens: Vec<usize>,
    by_prefix: HashMap<String, Vec<u32>>,
}

/// Candidate lookup for many subscriptions of one topic.
#[derive(Default)]
pub struct TopicIndex {
    routes: Vec<Arc<Route>>,
    exact: Vec<(String, HashMap<String, Vec<u32>>)>,
    prefix: Vec<(String, PrefixIndex)>,
    suffix: Vec<(String, PrefixIndex)>,
    residual: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    pub indexed: usize,
    pub residual: usize,
}

enum Key {
    Exact(String, Vec<String>),
    Prefix(String, String),
    Suffix(String, String),
}

fn key_of(route: &Route) -> Option<Key> {
    let filters = &route.config.filters;
    for f in filters {
        match f {
            FilterConfig::Exact(m) => {
                if let Some((a, v)) = m.iter().next() {
                    return Some(Key::Exact(a.clone(), vec![v.clone()]));
                }
            }
            FilterConfig::Cesql(src) => {
                if let Some((a, v)) = Cesql::compile(src)
                    .ok()
                    .and_then(|c| c.required_equalities().into_iter().next())
                {
                    return Some(Key::Exact(a, vec![v]));
                }
            }
            FilterConfig::Pattern(p) => {
                if let Some((a, vs)) = PatternFilter::compile(p)
                    .ok()
                    .and_then(|f| f.pattern().exact_string_fields().into_iter().next())
                {
                    return Some(Key::Exact(a, vs));
                }
            }
            _ => {}
        }
    }
    filters.iter().find_map(|f| match f {
        FilterConfig::Prefix(m) => m
            .iter()
            .next()
            .map(|(a, v)| Key::Prefix(a.clone(), v.clone())),
        FilterConfig::Suffix(m) => m
            .iter()
            .next()
            .map(|(a, v)| Key::Suffix(a.clone(), v.clone())),
        _ => None,
    })
}

fn slot<'a, T: Default>(v: &'a mut Vec<(String, T)>, attr: &str) -> &'a mut T {
    let i = match v.iter().position(|(a, _)| a == attr) {
        Some(i) => i,
        None => {
            v.push((attr.to_owned(), T::default()));
            v.len() - 1
        }
    };
    &mut v[i].1
}

impl TopicIndex {
    pub fn build(routes: Vec<Arc<Route>>) -> TopicIndex {
        let mut idx = TopicIndex::default();
        for (i, r) in routes.iter().enumerate() {
            let id = i as u32;
            match key_of(r) {
                Some(Key::Exact(attr, values)) => {
                    let m = slot(&mut idx.exact, &attr);
                    let mut values = values;
                    values.sort();
                    values.dedup();
                    for v in values {
                        m.entry(v).or_default().push(id);
                    }
                }
                Some(Key::Prefix(_, p)) | Some(Key::Suffix(_, p)) if p.is_empty() => {
                    idx.residual.push(id)
                }
                Some(Key::Suffix(attr, p)) => {
                    let pi = slot(&mut idx.suffix, &attr);
                    if !pi.lens.contains(&p.len()) {
                        pi.lens.push(p.len());
                        pi.lens.sort_unstable();
                    }
                    pi.by_prefix.entry(p).or_default().push(id);
                }
                Some(Key::Prefix(attr, p)) => {
                    let pi = slot(&mut idx.prefix, &attr);
                    if !pi.lens.contains(&p.len()) {
                        pi.lens.push(p.len());
                        pi.lens.sort_unstable();
                    }
                    pi.by_prefix.entry(p).or_default().push(id);
                }
                None => idx.residual.push(id),
            }
        }
        idx.routes = routes;
        idx
    }

    pub fn stats(&self) -> IndexStats {
        IndexStats {
            indexed: self.routes.len() - self.residual.len(),
            residual: self.residual.len(),
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Appends the indexes (into [`Self::routes`]) of every subscription the event matches.
    pub fn matching(&self, e: &Event, out: &mut Vec<usize>) {
        let start = out.len();
        let check = |id: u32, out: &mut Vec<usize>| {
            if let Some(r) = self.routes.get(id as usize) {
                if r.matches(e) {
                    out.push(id as usize);
                }
            }
        };
        for (attr, m) in &self.exact {
            if let Some(v) = e.attribute(attr) {
                let hit = match v {
                    AttrRef::Str(s) => m.get(s),
                    other => other.with_str(|s| m.get(s)),
                };
                for id in hit.into_iter().flatten() {
                    check(*id, out);
                }
            }
        }
        for (attr, pi) in &self.prefix {
            let Some(AttrRef::Str(s)) = e.attribute(attr) else {
                continue;
            };
            for &len in &pi.lens {
                if len > s.len() {
                    break;
                }
                if s.is_char_boundary(len) {
                    for id in pi.by_prefix.get(&s[..len]).into_iter().flatten() {
                        check(*id, out);
                    }
                }
            }
        }
        for (attr, pi) in &self.suffix {
            let Some(AttrRef::Str(s)) = e.attribute(attr) else {
                continue;
            };
            for &len in &pi.lens {
                if len > s.len() {
                    break;
                }
                let at = s.len() - len;
                if s.is_char_boundary(at) {
                    for id in pi.by_prefix.get(&s[at..]).into_iter().flatten() {
                        check(*id, out);
                    }
                }
            }
        }
        for id in &self.residual {
            check(*id, out);
        }
        if out.len() - start > 1 {
            out[start..].sort_unstable();
            let mut w = start + 1;
            for r in start + 1..out.len() {
                if out[r] != out[w - 1] {
                    out[w] = out[r];
                    w += 1;
                }
            }
            out.truncate(w);
        }
    }

    /// The straightforward evaluation: every filter, in order. The reference the index must
    /// agree with.
    pub fn matching_linear(&self, e: &Event, out: &mut Vec<usize>) {
        for (i, r) in self.routes.iter().enumerate() {
            if r.matches(e) {
                out.push(i);
            }
        }
    }
}
