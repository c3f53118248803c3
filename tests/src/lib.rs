//! Support for integration tests: start, kill and restart real `corral` processes.
//!
//! Every server listens on an ephemeral port of 127.0.0.1 (it prints the bound address
//! on stdout, which is how the harness learns it) and keeps its data in a temporary
//! directory that outlives restarts of the process and is removed with the harness.

pub mod cluster;
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
    /// The admin endpoint's address, as the process printed it.
    admin: std::sync::Arc<std::sync::Mutex<Option<String>>>,
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
            admin: Default::default(),
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

    /// The admin endpoint's address (`127.0.0.1:port`, a new port at each start).
    pub fn admin_addr(&self) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(a) = self.admin.lock().ok().and_then(|a| a.clone()) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "the server printed no admin address"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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
            .args(["--admin-listen", "127.0.0.1:0"])
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
        let admin = self.admin.clone();
        if let Ok(mut a) = admin.lock() {
            *a = None;
        }
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("corral listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                if let Some(addr) = line.strip_prefix("corral admin listening on ") {
                    if let Ok(mut a) = admin.lock() {
                        *a = Some(addr.trim().to_string());
                    }
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

/// Path of the `corralctl` binary: `CORRALCTL_BIN` if set, else the one cargo built next
/// to this test executable (building it if needed), like [`corral_bin`].
pub fn corralctl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("CORRALCTL_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let bin = profile_dir.join("corralctl");
        if !bin.exists() {
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "-p", "corral-client", "--bin", "corralctl"]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd
                .status()
                .expect("run cargo build for the corralctl binary");
            assert!(status.success(), "building the corralctl binary failed");
        }
        bin
    })
    .clone()
}

/// The seed of a randomized test: `CORRAL_TEST_SEED` if set (to replay a failure), else
/// a fresh one. Printed either way, so a failing run can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("CORRAL_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("CORRAL_TEST_SEED must be an unsigned integer"),
        Err(_) => rand::random::<u64>(),
    };
    println!("{test}: seed {seed} (replay with CORRAL_TEST_SEED={seed})");
    seed
}

impl TestServer {
    /// Like [`restart`](Self::restart), but for a server that may refuse to start: returns
    /// `Err` with the exit status and everything the process wrote on stderr if it exits
    /// before it listens (bounded by the start timeout), instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        let listen = format!("127.0.0.1:{}", self.port().unwrap_or(0));
        let mut child = Command::new(corral_bin())
            .args(["--listen", &listen, "--data-dir"])
            .arg(self.data_dir.path())
            .args(["--tick-ms", "10", "--min-session-ttl-ms", "200"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("CORRAL_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corral");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let admin = self.admin.clone();
        if let Ok(mut a) = admin.lock() {
            *a = None;
        }
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("corral listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                if let Some(addr) = line.strip_prefix("corral admin listening on ") {
                    if let Ok(mut a) = admin.lock() {
                        *a = Some(addr.trim().to_string());
                    }
                }
            }
        });
        // Collect stderr (and pass it on, so a running server's log still shows).
        let collected = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let errors = {
            let collected = collected.clone();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stderr).lines();
                while let Some(Ok(line)) = lines.next() {
                    eprintln!("{line}");
                    if let Ok(mut c) = collected.lock() {
                        c.push_str(&line);
                        c.push('\n');
                    }
                }
            })
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => {
                    self.addr = Some(addr);
                    self.child = Some(child);
                    return Ok(());
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the process is exiting.
                    let status = child
                        .wait()
                        .map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
                    let _ = errors.join();
                    let text = collected.lock().map(|c| c.clone()).unwrap_or_default();
                    return Err(format!("exit: {status}\nstderr:\n{text}"));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                let _ = errors.join();
                let text = collected.lock().map(|c| c.clone()).unwrap_or_default();
                return Err(format!("exit: {status}\nstderr:\n{text}"));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait();
                return Err(format!(
                    "corral did not start within {START_TIMEOUT:?} (exit: {status:?})"
                ));
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit
    /// status, or `None` if there was no process or it did not exit in time (it is then
    /// killed).
    pub fn terminate_status(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }
}

/// Frame-level access to a server for tests that must control request ids exactly
/// (resending an xid on a resumed session, sending what the client library refuses).
pub mod raw {
    use corral_protocol::{
        ClientMessage, Codec, ErrorInfo, Hello, HelloReply, Op, Request, Response, ServerMessage,
        SessionGranted, SessionRequest, WatchEvent, DEFAULT_MAX_FRAME_BYTES,
    };
    use futures::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio::net::TcpStream;
    use tokio_util::codec::Framed;

    /// How long a raw session waits for one frame.
    pub const RAW_WAIT: Duration = Duration::from_secs(10);

    /// A connection with an attached session, speaking frames.
    #[derive(Debug)]
    pub struct RawSession {
        framed: Framed<TcpStream, Codec<ServerMessage, ClientMessage>>,
        /// What the server granted in the handshake.
        pub granted: SessionGranted,
        /// Watch events received while waiting for responses, in order.
        pub events: Vec<WatchEvent>,
    }

    impl RawSession {
        /// Connects to `addr` and performs the handshake; `Err` with the refusal.
        pub async fn open(
            addr: &str,
            session: SessionRequest,
            last_zxid_seen: u64,
        ) -> Result<RawSession, ErrorInfo> {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut framed: Framed<TcpStream, Codec<HelloReply, Hello>> =
                Framed::new(stream, Codec::new(DEFAULT_MAX_FRAME_BYTES));
            framed
                .send(Hello::new(session, last_zxid_seen))
                .await
                .expect("send hello");
            let reply = tokio::time::timeout(RAW_WAIT, framed.next())
                .await
                .expect("hello reply in time")
                .expect("a reply frame")
                .expect("a valid reply");
            match reply {
                HelloReply::Accepted(granted) => Ok(RawSession {
                    framed: framed.map_codec(|c| c.retype()),
                    granted,
                    events: Vec::new(),
                }),
                HelloReply::Refused(info) => Err(info),
            }
        }

        /// Opens a new session with this TTL.
        pub async fn new_session(addr: &str, ttl_ms: u64) -> RawSession {
            RawSession::open(addr, SessionRequest::New { ttl_ms }, 0)
                .await
                .expect("session granted")
        }

        /// Sends one request without waiting.
        pub async fn send(&mut self, xid: u64, op: Op) {
            self.framed
                .send(ClientMessage::Request(Request { xid, op }))
                .await
                .expect("send request");
        }

        /// The next frame, or `None` if the server closed the connection.
        pub async fn next(&mut self) -> Option<ServerMessage> {
            tokio::time::timeout(RAW_WAIT, self.framed.next())
                .await
                .expect("a frame in time")
                .map(|r| r.expect("a valid frame"))
        }

        /// The next response (events before it are kept in `events`); panics on a
        /// goodbye or a closed connection.
        pub async fn response(&mut self) -> Response {
            loop {
                match self.next().await {
                    Some(ServerMessage::Response(r)) => return r,
                    Some(ServerMessage::Watch(e)) => self.events.push(e),
                    other => panic!("expected a response, got {other:?}"),
                }
            }
        }

        /// Sends a request and waits for its response.
        pub async fn request(&mut self, xid: u64, op: Op) -> Response {
            self.send(xid, op).await;
            let r = self.response().await;
            assert_eq!(r.xid, xid, "response to the request just sent");
            r
        }
    }

    /// On a new session at `addr`: after an `Acknowledge`, the session's next write lets
    /// the server forget the results of the writes below it. A copy of such a write is
    /// then refused (`StaleRequest`) and not applied again, where without the
    /// acknowledgement the server would answer it from its deduplication table; a write
    /// above it still gets its remembered result. Paths are under `prefix` (which must
    /// exist).
    pub async fn acknowledged_results_are_forgotten(addr: &str, prefix: &str) {
        use corral_protocol::{CreateMode, CreateRequest, ErrorCode, OpResult};
        let create = |name: u64| {
            Op::Create(CreateRequest {
                path: format!("{prefix}/w{name}"),
                data: Vec::new(),
                mode: CreateMode::Persistent,
                make_parents: false,
            })
        };
        let mut s = RawSession::new_session(addr, 10_000).await;
        for xid in 1..=10 {
            let r = s.request(xid, create(xid)).await;
            assert!(r.result.is_ok(), "{r:?}");
        }
        // Before any acknowledgement, a copy of write 3 gets its remembered result.
        let copy = s.request(3, create(3)).await;
        assert!(
            matches!(copy.result, Ok(OpResult::Created { .. })),
            "{copy:?}"
        );
        let ack = s.request(11, Op::Acknowledge { answered_below: 8 }).await;
        assert_eq!(ack.result, Ok(OpResult::Pong));
        // The next write (a delete of write 3's node) carries the acknowledgement.
        let delete = Op::Delete {
            path: format!("{prefix}/w3"),
            version: None,
        };
        let r = s.request(12, delete).await;
        assert!(r.result.is_ok(), "{r:?}");
        let copy = s.request(3, create(3)).await;
        let refusal = copy.result.expect_err("forgotten: stale");
        assert_eq!(refusal.code, ErrorCode::StaleRequest, "{refusal}");
        let exists = Op::Exists {
            path: format!("{prefix}/w3"),
            watch: false,
        };
        let r = s.request(13, exists).await;
        assert_eq!(r.result, Ok(OpResult::Exists(None)), "not applied again");
        let copy = s.request(9, create(9)).await;
        match copy.result {
            Ok(OpResult::Created { path, .. }) => assert_eq!(path, format!("{prefix}/w9")),
            other => panic!("write 9 is above the acknowledgement: {other:?}"),
        }
    }
}

impl TestServer {
    /// Replaces the extra arguments given at start (for the next `restart`), e.g. to
    /// restart a node with a changed setting over the same data directory.
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    }
}
