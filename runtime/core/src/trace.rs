//! W3C trace context (`traceparent`), as the CloudEvents distributed-tracing extension and
//! HTTP/Kafka headers carry it, and the context of the delivery attempt running now, which
//! sinks put on the wire so that a trace crosses evmesh.

use std::fmt;

/// The CloudEvents extension (and W3C header) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// A span's place in a trace: `00-<trace id>-<span id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` for anything W3C says to ignore (bad length,
    /// version `ff`, all-zero ids, non-hex).
    pub fn parse(s: &str) -> Option<TraceContext> {
        let s = s.trim();
        let mut parts = s.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four fields; later versions may add some after them.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        hex_byte(version)?;
        let trace_id: [u8; 16] = hex(trace)?;
        let span_id: [u8; 8] = hex(span)?;
        let [flags]: [u8; 1] = hex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace's root.
    pub fn root(sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: nonzero(),
            span_id: nonzero(),
            sampled,
        }
    }

    /// A child span of this one, in the same trace.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: nonzero(),
            ..*self
        }
    }

    pub fn trace_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    pub fn span_hex(&self) -> String {
        to_hex(&self.span_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_hex(),
            self.span_hex(),
            u8::from(self.sampled)
        )
    }
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let mut b = [0u8; N];
        for x in &mut b {
            *x = fastrand::u8(..);
        }
        if b != [0; N] {
            return b;
        }
    }
}

fn hex_byte(s: &str) -> Option<u8> {
    if s.len() != 2
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_byte(s.get(i * 2..i * 2 + 2)?)?;
    }
    Some(out)
}

pub fn to_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

tokio::task_local! {
    static ATTEMPT: (TraceContext, Option<String>);
}

/// Runs `f` (a delivery attempt) with `cx` as the current span and `state` as its vendor
/// trace state: a sink that can carry trace context ([`current`], [`current_state`]) sends
/// them as its hop's parent.
pub async fn with_attempt<F: std::future::Future>(
    cx: Option<TraceContext>,
    state: Option<String>,
    f: F,
) -> F::Output {
    match cx {
        Some(cx) => ATTEMPT.scope((cx, state), f).await,
        None => f.await,
    }
}

/// The delivery attempt's span, inside [`with_attempt`].
pub fn current() -> Option<TraceContext> {
    ATTEMPT.try_with(|c| c.0).ok()
}

/// The delivery attempt's `tracestate`, inside [`with_attempt`].
pub fn current_state() -> Option<String> {
    ATTEMPT.try_with(|c| c.1.clone()).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_values_are_ignored() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = TraceContext::parse(s).unwrap();
        assert!(cx.sampled);
        assert_eq!(cx.to_string(), s);
        assert_eq!(cx.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = cx.child();
        assert_eq!(child.trace_id, cx.trace_id);
        assert_ne!(child.span_id, cx.span_id);
        assert!(
            !TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[tokio::test]
    async fn the_attempt_context_is_visible_inside_its_scope_only() {
        let cx = TraceContext::root(true);
        assert_eq!(current(), None);
        let seen = with_attempt(Some(cx), Some("k=v".into()), async {
            (current(), current_state())
        })
        .await;
        assert_eq!(seen, (Some(cx), Some("k=v".to_owned())));
        assert_eq!(current(), None);
        assert_eq!(current_state(), None);
    }
}
