//! A real Kafka-protocol broker for the integration tests: [tansu](https://crates.io/crates/tansu),
//! started as a child process on a free loopback port with its in-memory storage engine.
//!
//! The binary is found at `$TANSU_BIN`, else where `scripts/kafka-broker.sh install` (and
//! `.ci/run`) puts it, else on `PATH`; when none is there, the first test that needs it runs
//! `scripts/kafka-broker.sh install` (a one-time build of about 20-25 minutes; concurrent
//! callers wait on a lock). A test that cannot get a broker fails; it is never skipped.

pub mod compliance;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::ClientConfig;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tansu release the scripts install.
pub const TANSU_VERSION: &str = "0.6.0";

pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home)
            .join(".cache/evmesh-ci")
            .join(format!("tansu-{TANSU_VERSION}"))
            .join("bin/tansu");
        if p.exists() {
            return p;
        }
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("tansu").is_file()));
    if on_path {
        return PathBuf::from("tansu");
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka-broker.sh");
    let status = Command::new(&script)
        .arg("install")
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(status.success(), "{} install failed", script.display());
    let out = Command::new(&script)
        .arg("path")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl Tansu {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start() -> Tansu {
        let mut t = Tansu {
            child: None,
            port: free_port(),
        };
        t.restart();
        t
    }

    /// `host:port` for Kafka clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGKILL): with the in-memory engine, everything it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the broker on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let bin = tansu_bin();
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the tansu broker {}: {e}. Install it with scripts/kafka-broker.sh install (or set TANSU_BIN)",
                    bin.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates a topic (tansu does not create topics on first use).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", name, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("tansu topic create: {e}"));
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A producer that writes one record per batch (what tansu 0.6 needs; see `docs/kafka.md`).
pub fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .expect("creating a test producer")
}

/// Produces one record with headers; panics if the producer's queue refuses it.
pub fn produce(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    value: &str,
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut r: BaseRecord<'_, str, str> = BaseRecord::to(topic).headers(h).payload(value);
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Err((e, _)) = p.send(r) {
        panic!("producing a test record to {topic}: {e}");
    }
}
