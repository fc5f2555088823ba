//! Commands for a person at a terminal, talking to a running evmesh over its HTTP APIs:
//! publish an event, follow a topic, list subscriptions, list and re-drive dead letters (with
//! a progress bar while the re-driven events are delivered).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Where the running evmesh is.
#[derive(Args, Clone)]
pub struct Target {
    /// Its admin API.
    #[arg(
        long,
        env = "EVMESH_ADMIN_URL",
        default_value = "http://127.0.0.1:10106"
    )]
    admin: String,
}

#[derive(Args)]
pub struct PublishArgs {
    /// The topic to publish to.
    #[arg(long)]
    topic: String,
    /// The event's `type`.
    #[arg(long = "type")]
    kind: String,
    /// The event's `source`.
    #[arg(long, default_value = "/evmesh/cli")]
    source: String,
    /// The event's `id` (a random one when absent).
    #[arg(long)]
    id: Option<String>,
    /// The event's `subject`.
    #[arg(long)]
    subject: Option<String>,
    /// The data (`@FILE` reads a file, `-` reads stdin).
    #[arg(long)]
    data: Option<String>,
    /// The data's media type.
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// An extension attribute, `NAME=VALUE` (repeatable): `--ext partitionkey=order-7`.
    #[arg(long = "ext", value_parser = name_value)]
    extensions: Vec<(String, String)>,
    /// Its HTTP ingest.
    #[arg(long, env = "EVMESH_URL", default_value = "http://127.0.0.1:10105")]
    server: String,
}

#[derive(Args)]
pub struct TailArgs {
    /// The topic to follow.
    #[arg(long)]
    topic: String,
    /// Where to start: `latest` (only new events), `earliest`, or an offset.
    #[arg(long, default_value = "latest")]
    from: String,
    /// The partition (a partitioned event store).
    #[arg(long, default_value_t = 0)]
    partition: i32,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand)]
pub enum SubscriptionsCmd {
    /// One line per subscription: name, topic, sink, origin, state.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Stop delivering (events keep being stored; the cursor stays).
    Pause {
        subscription: String,
        #[command(flatten)]
        target: Target,
    },
    /// Deliver again from the cursor.
    Resume {
        subscription: String,
        #[command(flatten)]
        target: Target,
    },
    /// Deliver again from an offset, `earliest`, `latest` or an RFC 3339 time, showing
    /// progress until the subscription has caught up.
    Replay {
        subscription: String,
        #[arg(long)]
        from: String,
        /// Return at once, without waiting for the deliveries.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
pub enum DeadlettersCmd {
    /// The dead-letter list of a subscription: one event a line with why it was dead-lettered.
    List {
        subscription: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delivers a subscription's dead-letter list again, showing progress until every
    /// re-driven event is finished.
    Redrive {
        subscription: String,
        /// Return once re-driven, without waiting for the deliveries.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        target: Target,
    },
}

fn name_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_ascii_lowercase(), v.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes)> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(body))
            .with_context(|| format!("invalid request to {url}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .with_context(|| format!("cannot reach evmesh at {url}; is it running?"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("reading the answer of {url}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// A GET whose answer must be 2xx; the error carries evmesh's message.
    async fn get_ok(&self, url: &str) -> Result<(http::HeaderMap, Bytes)> {
        let (st, h, body) = self.send(Method::GET, url, &[], Bytes::new()).await?;
        if !st.is_success() {
            bail!("{url}: {st}: {}", message(&body));
        }
        Ok((h, body))
    }
}

/// evmesh's error message out of an error answer.
fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn publish(a: PublishArgs) -> Result<()> {
    let id =
        a.id.clone()
            .unwrap_or_else(|| format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)));
    let data = match a.data.as_deref() {
        None => Bytes::new(),
        Some("-") => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).context("reading stdin")?;
            Bytes::from(v)
        }
        Some(d) => match d.strip_prefix('@') {
            Some(path) => {
                Bytes::from(std::fs::read(path).with_context(|| format!("reading {path}"))?)
            }
            None => Bytes::from(d.to_owned()),
        },
    };
    let mut headers: Vec<(String, String)> = vec![
        ("ce-specversion".into(), "1.0".into()),
        ("ce-id".into(), id.clone()),
        ("ce-source".into(), a.source.clone()),
        ("ce-type".into(), a.kind.clone()),
    ];
    if let Some(s) = &a.subject {
        headers.push(("ce-subject".into(), s.clone()));
    }
    if !data.is_empty() {
        headers.push(("content-type".into(), a.content_type.clone()));
    }
    for (k, v) in &a.extensions {
        headers.push((format!("ce-{k}"), v.clone()));
    }
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url = format!("{}/topics/{}", base(&a.server), encode(&a.topic));
    let (st, _, body) = Http::new().send(Method::POST, &url, &refs, data).await?;
    if !st.is_success() {
        bail!("not published ({st}): {}", message(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!(
        "published {id} to {} at offset {}",
        a.topic,
        v["firstOffset"]
            .as_u64()
            .map_or("?".into(), |o| o.to_string())
    );
    Ok(())
}

pub async fn tail(a: TailArgs) -> Result<()> {
    let http = Http::new();
    let mut from = a.from.clone();
    let mut seen = 0usize;
    let mut out = std::io::stdout().lock();
    loop {
        let url = format!(
            "{}/topics/{}/events?from={}&partition={}&wait=PT10S&max=100",
            base(&a.target.admin),
            encode(&a.topic),
            encode(&from),
            a.partition
        );
        let answer = tokio::select! {
            r = http.get_ok(&url) => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (headers, body) = answer;
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body)
            .with_context(|| format!("{url} answered something other than a batch"))?;
        for e in events {
            writeln!(out, "{e}").context("writing to stdout")?;
            seen += 1;
            if a.count.is_some_and(|n| seen >= n) {
                return Ok(());
            }
        }
        out.flush().context("writing to stdout")?;
        from = headers
            .get("evmesh-next-offset")
            .and_then(|v| v.to_str().ok())
            .context("the answer has no evmesh-next-offset")?
            .to_owned();
    }
}

pub async fn subscriptions(cmd: SubscriptionsCmd) -> Result<()> {
    let target = match cmd {
        SubscriptionsCmd::List { target } => target,
        SubscriptionsCmd::Pause {
            subscription,
            target,
        } => return pause_resume(&subscription, "pause", &target).await,
        SubscriptionsCmd::Resume {
            subscription,
            target,
        } => return pause_resume(&subscription, "resume", &target).await,
        SubscriptionsCmd::Replay {
            subscription,
            from,
            no_wait,
            target,
        } => return replay(&subscription, &from, no_wait, &target).await,
    };
    let url = format!("{}/subscriptions", base(&target.admin));
    let (_, body) = Http::new().get_ok(&url).await?;
    let subs: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .with_context(|| format!("{url} answered something other than a list"))?;
    let rows: Vec<[String; 5]> = subs
        .iter()
        .map(|s| {
            let sink = &s["sink"];
            let kind = sink["type"].as_str().unwrap_or("?");
            let dest = ["url", "topic", "brokers", "namesrv"]
                .iter()
                .find_map(|k| sink[*k].as_str())
                .map(|d| format!("{kind} {d}"))
                .unwrap_or_else(|| kind.to_owned());
            [
                s["name"].as_str().unwrap_or("?").to_owned(),
                s["topic"].as_str().unwrap_or("?").to_owned(),
                dest,
                s["origin"].as_str().unwrap_or("?").to_owned(),
                s["state"].as_str().unwrap_or("?").to_owned(),
            ]
        })
        .collect();
    print_table(&["NAME", "TOPIC", "SINK", "ORIGIN", "STATE"], &rows);
    Ok(())
}

async fn pause_resume(name: &str, action: &str, target: &Target) -> Result<()> {
    let url = format!(
        "{}/subscriptions/{}/{action}",
        base(&target.admin),
        encode(name)
    );
    let (st, _, body) = Http::new()
        .send(Method::POST, &url, &[], Bytes::new())
        .await?;
    if !st.is_success() {
        bail!("not done ({st}): {}", message(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let state = v["state"].as_str().unwrap_or("?");
    if v["changed"] == true {
        println!("{name}: {state}");
    } else {
        println!("{name}: already {state}");
    }
    Ok(())
}

async fn replay(name: &str, from: &str, no_wait: bool, target: &Target) -> Result<()> {
    let http = Http::new();
    let url = format!(
        "{}/subscriptions/{}/replay",
        base(&target.admin),
        encode(name)
    );
    let (st, _, body) = http
        .send(
            Method::POST,
            &format!("{url}?from={}", encode(from)),
            &[],
            Bytes::new(),
        )
        .await?;
    if !st.is_success() {
        bail!("not replayed ({st}): {}", message(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let at = v["from"].as_u64().unwrap_or(0);
    let topic = v["topic"].as_str().unwrap_or("?").to_owned();
    if no_wait {
        println!("{name} replays {topic} from offset {at}");
        return Ok(());
    }
    watch_pending(&http, &url, &format!("replay {name}"), 0, || {
        format!("{name} replayed {topic} from offset {at}; it has caught up")
    })
    .await
}

/// Shows progress from `GET url` (`{"pending": N}`) until nothing is pending.
/// `at_least`: how many events the operation is known to have started (they may be done
/// before the first look).
async fn watch_pending(
    http: &Http,
    url: &str,
    label: &str,
    at_least: u64,
    done: impl FnOnce() -> String,
) -> Result<()> {
    let (_, body) = http.get_ok(url).await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(pending) = v["pending"].as_u64() else {
        println!("{label}: started (this event store does not report progress)");
        return Ok(());
    };
    let total = pending.max(at_least);
    let mut bar = Progress::new(label, total);
    let mut pending = pending;
    loop {
        bar.show(total.saturating_sub(pending));
        if pending == 0 {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => {
                bar.finish();
                println!("stopped watching; it goes on in evmesh");
                return Ok(());
            }
        }
        let (_, body) = http.get_ok(url).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        pending = v["pending"].as_u64().unwrap_or(0);
    }
    bar.finish();
    println!("{}", done());
    Ok(())
}

fn print_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let mut width = head.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub async fn deadletters(cmd: DeadlettersCmd) -> Result<()> {
    match cmd {
        DeadlettersCmd::List {
            subscription,
            target,
        } => {
            let url = format!(
                "{}/subscriptions/{}/deadletters",
                base(&target.admin),
                encode(&subscription)
            );
            let (_, body) = Http::new().get_ok(&url).await?;
            let events: Vec<serde_json::Value> = serde_json::from_slice(&body)
                .with_context(|| format!("{url} answered something other than a batch"))?;
            let rows: Vec<[String; 4]> = events
                .iter()
                .map(|e| {
                    let s = |k: &str| match &e[k] {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => String::new(),
                        v => v.to_string(),
                    };
                    [
                        s("id"),
                        s("type"),
                        s("deadletterattempts"),
                        s("deadletterreason"),
                    ]
                })
                .collect();
            print_table(&["ID", "TYPE", "ATTEMPTS", "REASON"], &rows);
            Ok(())
        }
        DeadlettersCmd::Redrive {
            subscription,
            no_wait,
            target,
        } => redrive(&subscription, no_wait, &target).await,
    }
}

async fn redrive(name: &str, no_wait: bool, target: &Target) -> Result<()> {
    let http = Http::new();
    let url = format!(
        "{}/subscriptions/{}/redrive",
        base(&target.admin),
        encode(name)
    );
    let (st, _, body) = http.send(Method::POST, &url, &[], Bytes::new()).await?;
    if !st.is_success() {
        bail!("not re-driven ({st}): {}", message(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let total = v["redriven"].as_u64().unwrap_or(0);
    if total == 0 || no_wait {
        println!("re-drove {total} events of {name}'s dead-letter list");
        return Ok(());
    }
    // Progress: the re-driven events not yet finished, as evmesh counts them.
    watch_pending(&http, &url, &format!("redrive {name}"), total, || {
        format!("re-drove {total} events of {name}'s dead-letter list; every one is finished (delivered, or dead-lettered again: see `evmesh deadletters list {name}`)")
    })
    .await
}

/// A progress bar on stderr: redrawn in place on a terminal, a line per change of 10%
/// otherwise.
struct Progress {
    label: String,
    total: u64,
    tty: bool,
    last: Option<u64>,
}

impl Progress {
    fn new(label: &str, total: u64) -> Progress {
        Progress {
            label: label.to_owned(),
            total,
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn show(&mut self, done: u64) {
        let done = done.min(self.total);
        let tenth = done * 10 / self.total.max(1);
        if !self.tty
            && self
                .last
                .is_some_and(|l| l * 10 / self.total.max(1) == tenth)
        {
            return;
        }
        self.last = Some(done);
        let filled = (done * 30 / self.total.max(1)) as usize;
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(30 - filled));
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{} [{bar}] {done}/{}", self.label, self.total);
        } else {
            let _ = writeln!(err, "{} [{bar}] {done}/{}", self.label, self.total);
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
