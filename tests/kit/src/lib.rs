//! The integration suite's kit: the real `evmesh` binary as a child process, real HTTP
//! receivers that record what they get (one in Rust, one in Node.js), a small HTTP client, and
//! the connector compliance checks ([`compliance`]) every sink and source runs.
// Test support: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

pub mod compliance;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shared conformance folder, beside the repository.
pub fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance")
}

/// The repository's root.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tool the suite installs into the cache (Helm, the OpenTelemetry collector): `$env` when
/// set (scripts/test.sh sets it), else the path `scripts/<script> path` prints. Fails, naming
/// the script to run, when it is not installed.
pub fn cached_tool(env: &str, script: &str) -> PathBuf {
    let script = repo_dir().join("scripts").join(script);
    let bin = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let out = Command::new(&script)
            .arg("path")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    });
    assert!(
        bin.is_file(),
        "{} is not installed: run {} install (scripts/test.sh does)",
        bin.display(),
        script.display()
    );
    bin
}

/// The `evmesh` binary under test: `$EVMESH_BIN`, or the one nextest names, or the one cargo
/// built beside the running test (`target/<profile>/evmesh`).
/// Builds every example WASM plugin from source (once per run; cargo makes concurrent builds
/// wait) and returns the folder of the `.wasm` files.
pub fn example_plugins() -> PathBuf {
    let root = repo_dir();
    let manifest = root.join("plugins/examples/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("running cargo for the example plugins");
    assert!(
        out.status.success(),
        "building the example plugins failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.join("plugins/examples/target/wasm32-wasip2/release")
}

pub fn evmesh_bin() -> PathBuf {
    if let Some(p) =
        std::env::var_os("EVMESH_BIN").or_else(|| std::env::var_os("NEXTEST_BIN_EXE_evmesh"))
    {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("evmesh");
    assert!(
        bin.exists(),
        "{} is missing: build it (cargo build -p evmesh) or set EVMESH_BIN",
        bin.display()
    );
    bin
}

/// A running `evmesh serve`.
pub struct Evmesh {
    child: Option<Child>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// The EventMesh TCP listener, when it is on.
    pub tcp: Option<SocketAddr>,
    pub log: Arc<Mutex<String>>,
    /// What the process printed on standard output (the console sink writes there).
    pub stdout: Arc<Mutex<String>>,
    pub data_dir: PathBuf,
}

impl Evmesh {
    pub fn start(data_dir: &Path, config: &str) -> Evmesh {
        Self::start_with_env(data_dir, config, &[])
    }

    pub fn start_with_env(data_dir: &Path, config: &str, env: &[(&str, &str)]) -> Evmesh {
        std::fs::create_dir_all(data_dir).unwrap();
        let cfg_path = data_dir.with_extension("yaml");
        std::fs::write(&cfg_path, config).unwrap();
        let mut cmd = Command::new(evmesh_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--data-dir")
            .arg(data_dir)
            .env("EVMESH_SERVER__HTTP", "127.0.0.1:0")
            .env("EVMESH_SERVER__ADMIN", "127.0.0.1:0")
            .env("EVMESH_SERVER__TCP", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, data_dir)
    }

    /// Runs `evmesh <args>` in `cwd` with only `env` added (no flags or ports of the kit's).
    pub fn start_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Evmesh {
        let mut cmd = Command::new(evmesh_bin());
        cmd.args(args).current_dir(cwd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, &cwd.join("evmesh-data"))
    }

    fn spawn(mut cmd: Command, data_dir: &Path) -> Evmesh {
        // The kit's own variable is not the server's business.
        cmd.env_remove("EVMESH_BIN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning evmesh");
        let stderr = child.stderr.take().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let (out, out2) = (child.stdout.take().unwrap(), stdout.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = out2.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                for (marker, which) in [
                    ("http ingest listening on ", 0),
                    ("admin listening on ", 1),
                    ("tcp listening on ", 2),
                ] {
                    if let Some(pos) = line.find(marker) {
                        // The address ends the text line; in a JSON log line a quote follows.
                        let rest = &line[pos + marker.len()..];
                        let end = rest
                            .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
                            .unwrap_or(rest.len());
                        let addr: SocketAddr = rest[..end].parse().unwrap();
                        let _ = tx.send((which, addr));
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut http = None;
        let mut admin = None;
        let mut tcp = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        // The listeners start in order (http, admin, tcp); the ready line says all are up.
        let log3 = log.clone();
        let ready = move || log3.lock().unwrap().contains("evmesh ready");
        while http.is_none() || admin.is_none() || !ready() {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("evmesh did not start; log:\n{}", log.lock().unwrap());
            }
            match rx.recv_timeout(left) {
                Ok((0, a)) => http = Some(a),
                Ok((1, a)) => admin = Some(a),
                Ok((_, a)) => tcp = Some(a),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => {
                    let _ = child.kill();
                    panic!("evmesh did not start; log:\n{}", log.lock().unwrap());
                }
            }
        }
        while let Ok((k, a)) = rx.try_recv() {
            if k == 2 {
                tcp = Some(a);
            }
        }
        Evmesh {
            child: Some(child),
            http: http.unwrap(),
            admin: admin.unwrap(),
            tcp,
            log,
            stdout,
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("already stopped");
        let pid = c.id() as i32;
        send_sigterm(pid);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("evmesh did not exit after SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Evmesh {
    /// Sends SIGHUP (reload the configuration).
    pub fn hangup(&self) {
        let pid = self.child.as_ref().expect("stopped").id();
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("stopped").id()
    }

    /// The configuration file `start`/`start_with_env` wrote.
    pub fn config_path(&self) -> PathBuf {
        self.data_dir.with_extension("yaml")
    }
}

fn send_sigterm(pid: i32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for Evmesh {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Got {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// How a receiver answers.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer the first N requests with `fail_status`.
    pub fail_first: usize,
    pub fail_status: u16,
    pub retry_after: Option<u64>,
    /// Answer 2xx with this structured-mode event body (a reply).
    pub reply: Option<String>,
    pub delay: Duration,
}

/// A local port bound but not listening: connections to it are refused (a receiver that is
/// down), and, bound without `SO_REUSEADDR`, no other test process can take it meanwhile, as
/// one could take a port that was merely closed.
pub struct ReservedPort {
    socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(false).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        ReservedPort { socket, addr }
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub seen: Arc<Mutex<usize>>,
    /// TCP connections accepted.
    pub connections: Arc<Mutex<usize>>,
    /// Requests being handled now, and the most there ever were at once.
    pub concurrency: Arc<Mutex<(usize, usize)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(b: Behaviour) -> Receiver {
        Self::start_on("127.0.0.1:0", b).await
    }

    pub async fn start_on(addr: &str, b: Behaviour) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, b)
    }

    /// Starts listening on a port held by [`ReservedPort`]: until then, connections to it were
    /// refused, as by a receiver that is down, and no other process could take the port.
    pub fn start_reserved(port: ReservedPort, b: Behaviour) -> Receiver {
        let listener = port.socket.listen(1024).unwrap();
        Self::serve(listener, b)
    }

    fn serve(listener: tokio::net::TcpListener, b: Behaviour) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(0usize));
        let connections = Arc::new(Mutex::new(0usize));
        let concurrency = Arc::new(Mutex::new((0usize, 0usize)));
        let (g, s, cn) = (got.clone(), seen.clone(), connections.clone());
        let cc = concurrency.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                *cn.lock().unwrap() += 1;
                let (g, s, b, cc) = (g.clone(), s.clone(), b.clone(), cc.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (g, s, b, cc) = (g.clone(), s.clone(), b.clone(), cc.clone());
                        async move {
                            {
                                let mut c = cc.lock().unwrap();
                                c.0 += 1;
                                c.1 = c.1.max(c.0);
                            }
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            if !b.delay.is_zero() {
                                tokio::time::sleep(b.delay).await;
                            }
                            let n = {
                                let mut s = s.lock().unwrap();
                                *s += 1;
                                *s
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                            if n <= b.fail_first {
                                *resp.status_mut() = StatusCode::from_u16(b.fail_status).unwrap();
                                if let Some(ra) = b.retry_after {
                                    resp.headers_mut()
                                        .insert("retry-after", ra.to_string().parse().unwrap());
                                }
                            } else {
                                g.lock().unwrap().push(Got {
                                    headers: parts.headers,
                                    body,
                                });
                                if let Some(r) = &b.reply {
                                    *resp.body_mut() = Full::new(Bytes::from(r.clone()));
                                    resp.headers_mut().insert(
                                        "content-type",
                                        "application/cloudevents+json".parse().unwrap(),
                                    );
                                }
                            }
                            cc.lock().unwrap().0 -= 1;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            got,
            seen,
            connections,
            concurrency,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn attempts(&self) -> usize {
        *self.seen.lock().unwrap()
    }

    pub fn events(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    pub fn ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|g| g.header("ce-id"))
            .collect()
    }

    /// The most requests this receiver ever handled at once.
    pub fn max_concurrency(&self) -> usize {
        self.concurrency.lock().unwrap().1
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// A webhook receiver written in another stack: Node.js's `http` server, which is strict about
/// HTTP/1.1 (it answers 400 to a request without `Host`). It records what it saw of each
/// request: the request line as parsed, and the headers.
pub struct NodeReceiver {
    child: Child,
    pub port: u16,
    pub seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

const NODE_RECEIVER: &str = r#"
const http = require('http');
const status = parseInt(process.argv[1] || '200', 10);
const srv = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    process.stdout.write(JSON.stringify({
      method: req.method, url: req.url, version: req.httpVersion,
      headers: req.headers, body: Buffer.concat(chunks).toString('utf8'),
    }) + '\n');
    res.writeHead(status, {'content-type': 'text/plain'});
    res.end('ok');
  });
});
srv.on('clientError', (err, socket) => {
  process.stdout.write(JSON.stringify({clientError: String(err.code || err)}) + '\n');
  socket.end('HTTP/1.1 400 Bad Request\r\n\r\n');
});
srv.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({port: srv.address().port}) + '\n');
});
"#;

impl NodeReceiver {
    /// Starts `node` answering every request with `status`.
    pub fn start(status: u16) -> NodeReceiver {
        let mut child = Command::new("node")
            .arg("-e")
            .arg(NODE_RECEIVER)
            .arg(status.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting node (Node.js is installed by scripts/test.sh)");
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(p) = v.get("port").and_then(|p| p.as_u64()) {
                    let _ = tx.send(p as u16);
                } else {
                    s2.lock().unwrap().push(v);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("node receiver did not start");
        NodeReceiver { child, port, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for NodeReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(512)
        .build(HttpConnector::new())
}

pub async fn send(
    c: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (u16, String) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Full::new(body.into())).unwrap())
        .await
        .expect("request failed");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Publishes one minimal binary-mode event.
pub async fn publish(
    c: &HttpClient,
    ev: &Evmesh,
    topic: &str,
    id: &str,
    extra: &[(&str, &str)],
) -> u16 {
    let mut h = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/test"),
        ("ce-type", "test.event"),
        ("content-type", "text/plain"),
    ];
    h.extend_from_slice(extra);
    send(
        c,
        "POST",
        &ev.url(&format!("/topics/{topic}")),
        &h,
        format!("data-{id}"),
    )
    .await
    .0
}

/// Publishes events `e{i}` for `ids` in batches of 100, keyed `k{i % 50}` (partition key)
/// with a `seq` extension `i` and JSON data `{"i": i}`: the input of the keyed-order checks.
pub async fn publish_keyed(c: &HttpClient, ev: &Evmesh, topic: &str, ids: std::ops::Range<usize>) {
    let all: Vec<usize> = ids.collect();
    for chunk in all.chunks(100) {
        let batch: Vec<serde_json::Value> = chunk
            .iter()
            .map(|i| {
                serde_json::json!({
                    "specversion": "1.0", "id": format!("e{i}"), "source": "/t", "type": "t",
                    "partitionkey": format!("k{}", i % 50), "seq": *i as i64,
                    "datacontenttype": "application/json", "data": {"i": i}
                })
            })
            .collect();
        let (s, b) = send(
            c,
            "POST",
            &ev.url(&format!("/topics/{topic}")),
            &[("content-type", "application/cloudevents-batch+json")],
            serde_json::to_vec(&batch).unwrap(),
        )
        .await;
        assert_eq!(s, 202, "{b}");
    }
}

pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A webhook subscription in YAML.
pub fn webhook_sub(name: &str, topic: &str, url: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    topic: {topic}\n    sink: {{ type: webhook, url: \"{url}\" }}\n{extra}"
    )
}

/// Polls a subscription's dead-letter list until it holds at least `n` events (or gives up).
pub async fn dead_letters(
    c: &HttpClient,
    ev: &Evmesh,
    sub: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    let mut dead = Vec::new();
    for _ in 0..300 {
        let (_, b) = send(
            c,
            "GET",
            &ev.admin_url(&format!("/subscriptions/{sub}/deadletters")),
            &[],
            "",
        )
        .await;
        dead = serde_json::from_str::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        if dead.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dead
}
