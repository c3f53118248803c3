//! Support for integration tests: start, kill and restart real `corral` processes.
//!
//! Every server listens on an ephemeral port of 127.0.0.1 (it prints the bound address
//! on stdout, which is how the harness learns it) and keeps its data in a temporary
//! directory that outlives restarts of the process and is removed with the harness.

pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the `corral` binary: `CORRAL_BIN` if set, else the one cargo built next to
/// this test executable (building it if `cargo test -p corral-tests` did not).
pub fn corral_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("CORRAL_BIN") {
            return PathBuf::from(bin);
        }
        // target/<profile>/deps/<test exe> -> target/<profile>/corral
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let bin = profile_dir.join("corral");
        if !bin.exists() {
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "-p", "corral-server", "--bin", "corral"]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build for the corral binary");
            assert!(status.success(), "building the corral binary failed");
        }
        bin
    })
    .clone()
}

/// A `corral` server process with its own data directory.
#[derive(Debug)]
pub struct TestServer {
    child: Option<Child>,
    addr: Option<String>,
    data_dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl TestServer {
    /// Starts a server with test-friendly defaults (fast ticks, short minimum TTL) plus
    /// `extra_args`.
    pub fn start(extra_args: &[&str]) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let mut server = TestServer {
            child: None,
            addr: None,
            data_dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn(None);
        server
    }

    /// The client address, `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        self.addr.clone().expect("server is running")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    fn spawn(&mut self, port: Option<u16>) {
        let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
        let mut child = Command::new(corral_bin())
            .args(["--listen", &listen, "--data-dir"])
            .arg(self.data_dir.path())
            .args(["--tick-ms", "10", "--min-session-ttl-ms", "200"])
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("CORRAL_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn corral");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("corral listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => self.addr = Some(addr),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!("corral did not start within {START_TIMEOUT:?} (exit: {status:?})");
            }
        }
        self.child = Some(child);
    }

    fn port(&self) -> Option<u16> {
        self.addr
            .as_deref()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Starts the process again on the same port and data directory (after `kill` or
    /// `terminate`).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port();
        self.spawn(port);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every few milliseconds until it returns `Some`, or panics after
/// `timeout` naming `what`. For conditions with no event to wait on (a process state, a
/// file): never a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
