//! A real RocketMQ for the integration tests: a name server and a broker
//! (`rocketmq-namesrv-rust`, `rocketmq-broker-rust`, crates.io 1.0.0), started as child
//! processes on free loopback ports with a store in a temporary folder, deleted afterwards.
//!
//! The binaries are found at `$ROCKETMQ_BIN_DIR`, else where `scripts/rocketmq-broker.sh
//! install` (and `scripts/test.sh`) puts them; when they are missing, the first test that needs
//! them runs that install (a one-time build of about 20 minutes; concurrent callers wait on a
//! lock). A test that cannot get a broker fails; it is never skipped.
//!
//! What the broker needs, learnt here: `brokerIP1=127.0.0.1` (otherwise it advertises a
//! non-loopback address), a `ROCKETMQ_HOME`, a small `mappedFileSizeCommitLog`,
//! `autoCreateTopicEnable` for tests, and clients must wait until it has registered with the
//! name server before the first send.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("ROCKETMQ_BIN_DIR") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rocketmq-broker.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("install")
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(status.success(), "installing the RocketMQ broker failed");
    let out = Command::new("bash")
        .arg(&script)
        .arg("path")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub mod client;
pub mod compliance;

/// A running name server and broker.
pub struct RocketMq {
    dir: tempfile::TempDir,
    bin: PathBuf,
    namesrv_port: u16,
    broker_port: u16,
    namesrv: Option<Child>,
    broker: Option<Child>,
    /// Broker starts so far (each gets its own log file).
    starts: u32,
}

impl RocketMq {
    /// Starts both and waits until the broker has registered with the name server.
    pub fn start() -> RocketMq {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut r = RocketMq {
            dir,
            bin: bin_dir(),
            namesrv_port: free_port(),
            broker_port: free_port(),
            namesrv: None,
            broker: None,
            starts: 0,
        };
        std::fs::create_dir_all(r.dir.path().join("home"))
            .unwrap_or_else(|e| panic!("creating the RocketMQ home: {e}"));
        r.start_namesrv();
        r.start_broker();
        r
    }

    /// The name server address clients use.
    pub fn namesrv(&self) -> String {
        format!("127.0.0.1:{}", self.namesrv_port)
    }

    /// The logs of the name server and of the broker's latest start (for failure messages).
    pub fn logs(&self) -> String {
        format!(
            "--- name server\n{}\n--- broker\n{}",
            self.log("namesrv.log"),
            self.log(&format!("broker-{}.log", self.starts))
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn spawn(&self, mut cmd: Command, log: &str) -> Child {
        let f = std::fs::File::create(self.dir.path().join(log))
            .unwrap_or_else(|e| panic!("creating {log}: {e}"));
        let f2 = f.try_clone().unwrap_or_else(|e| panic!("{e}"));
        cmd.env("ROCKETMQ_HOME", self.dir.path().join("home"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()))
    }

    fn start_namesrv(&mut self) {
        let mut cmd = Command::new(self.bin.join("rocketmq-namesrv-rust"));
        cmd.arg("--listenPort")
            .arg(self.namesrv_port.to_string())
            .arg("--bindAddress")
            .arg("127.0.0.1")
            .arg("--rocketmqHome")
            .arg(self.dir.path().join("home"));
        self.namesrv = Some(self.spawn(cmd, "namesrv.log"));
        assert!(
            wait_port(self.namesrv_port, Duration::from_secs(30)),
            "the RocketMQ name server did not start:\n{}",
            self.log("namesrv.log")
        );
    }

    fn start_broker(&mut self) {
        let props = format!(
            "brokerClusterName=DefaultCluster\nbrokerName=evmesh-test\nbrokerId=0\nnamesrvAddr={}\nbrokerIP1=127.0.0.1\nlistenPort={}\nhaListenPort={}\nstorePathRootDir={}\nmappedFileSizeCommitLog=67108864\nmappedFileSizeConsumeQueue=600000\nautoCreateTopicEnable=true\n",
            self.namesrv(),
            self.broker_port,
            free_port(),
            self.dir.path().join("store").display()
        );
        let conf = self.dir.path().join("broker.properties");
        std::fs::write(&conf, props).unwrap_or_else(|e| panic!("writing the broker config: {e}"));
        let mut cmd = Command::new(self.bin.join("rocketmq-broker-rust"));
        cmd.arg("-c").arg(&conf);
        self.starts += 1;
        let log = format!("broker-{}.log", self.starts);
        let child = self.spawn(cmd, &log);
        self.broker = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.log(&log);
            // The broker registers, then checks that its store is writable and rolls its
            // start back if not; the most common reason is a disk more than 90% full (its
            // hard limit, counted as (size - available) / size).
            if text.contains("Rolling back broker startup") {
                let df = Command::new("df")
                    .arg("-h")
                    .arg(self.dir.path())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "the RocketMQ broker gave up starting; it refuses to when (size - available) / size of its disk is over 90%:\n{df}\n{text}"
                );
            }
            if text.contains("started successfully")
                && text.contains("Register broker to name remoting_server success")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the RocketMQ broker did not register:\n{}",
                self.log(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the broker (`kill -9`), keeping its store.
    pub fn stop_broker(&mut self) {
        if let Some(mut c) = self.broker.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and store.
    pub fn restart_broker(&mut self) {
        self.stop_broker();
        self.start_broker();
    }
}

impl Drop for RocketMq {
    fn drop(&mut self) {
        for c in [self.broker.take(), self.namesrv.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
