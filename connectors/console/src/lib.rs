//! The console sink: prints each delivered event as one line of structured-mode JSON
//! (`application/cloudevents+json`) on standard output or standard error, like Knative's
//! event-display and Vector's console sink. Useful for trying evmesh without a webhook, and for
//! piping events into `jq`.
//!
//! ```yaml
//! sink: { type: console }                 # stdout
//! sink: { type: console, stream: stderr }
//! ```
//!
//! A line is written whole (one `write` of the line under the stream's lock), so concurrent
//! deliveries never interleave. A write error (a closed pipe) is retried per the delivery
//! policy.

use evmesh_core::component::{Check, Kind, SinkConfig, SinkContext};
use evmesh_core::sink::{Delivered, Sink, SinkError};
use evmesh_core::{format, Event};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// `sink: {type: console}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleSinkConfig {
    #[serde(default)]
    pub stream: Stream,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    #[default]
    Stdout,
    Stderr,
}

impl Kind for ConsoleSinkConfig {
    const KIND: &'static str = "console";
}

impl Check for ConsoleSinkConfig {}

impl SinkConfig for ConsoleSinkConfig {
    fn build(&self, _cx: &SinkContext) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(ConsoleSink {
            stream: self.stream,
        }))
    }
}

pub struct ConsoleSink {
    stream: Stream,
}

impl ConsoleSink {
    fn write_line(&self, event: &Event) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(256);
        format::encode_structured(event, &mut line);
        line.push(b'\n');
        match self.stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)?;
                out.flush()
            }
            Stream::Stderr => std::io::stderr().lock().write_all(&line),
        }
    }
}

impl Sink for ConsoleSink {
    fn deliver<'a>(
        &'a self,
        event: &'a Event,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Delivered, SinkError>> {
        let r = self
            .write_line(event)
            .map(|()| Delivered::default())
            .map_err(|e| SinkError::retryable(format!("writing to {:?}: {e}", self.stream)));
        Box::pin(async move { r })
    }

    fn describe(&self) -> String {
        format!("console {:?}", self.stream).to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_takes_a_stream_and_nothing_else() {
        let c: ConsoleSinkConfig = serde_yaml_like("{}");
        assert_eq!(c.stream, Stream::Stdout);
        let c: ConsoleSinkConfig = serde_yaml_like(r#"{"stream":"stderr"}"#);
        assert_eq!(c.stream, Stream::Stderr);
    }

    fn serde_yaml_like(json: &str) -> ConsoleSinkConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }
}
