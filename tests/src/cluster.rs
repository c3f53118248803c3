//! A cluster of real `corral` processes on loopback, with every link between two nodes
//! behind an in-process [`Proxy`] so that tests can partition the cluster without root.
//!
//! # Wiring
//!
//! Node `i` binds its own peer port (its own `--peers` entry is its real address), and
//! names, for every other node `j`, a proxy `P(i->j)` that forwards to `j`'s real peer
//! port. The peer transport dials one outbound connection per peer and only receives on
//! accepted ones, so `P(i->j)` carries exactly the messages from `i` to `j`:
//! [`cut`](TestCluster::cut) sets both `P(i->j)` and `P(j->i)` to [`Mode::Cut`] (every
//! connection closed, new ones refused; the transports notice at once and keep
//! redialling with backoff), [`heal`](TestCluster::heal) sets them back to
//! [`Mode::Pass`].
//!
//! Clients reach node `i` directly ([`direct_client_addr`](TestCluster::direct_client_addr)),
//! through one proxy per node ([`client_addr`](TestCluster::client_addr),
//! [`client_proxy`](TestCluster::client_proxy)), or through proxies of their own
//! ([`pinned`](TestCluster::pinned)): a client that starts on a chosen node and whose
//! links to each node can be cut one by one.
//!
//! # Who leads
//!
//! The servers run with `corral_server::node=info` and the harness reads their stderr,
//! keeping each node's last `leader changed ... leader=Some(N)` line (each node also
//! serves its status on its admin endpoint, [`admin_addr`](TestCluster::admin_addr)). [`leader`](TestCluster::leader) returns the running node that a
//! majority of the cluster's running nodes names.
//!
//! Ports are chosen below the kernel's ephemeral range (and never twice in a process),
//! so they cannot collide with the ports of outgoing connections or of servers started
//! on port 0; they stay the same across restarts.

use crate::corral_bin;
use crate::proxy::{Mode, Proxy};
use corral_client::{Client, ClientConfig, Stat};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long a node gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of the harness's own waits (a leader, a session).
pub const CLUSTER_WAIT: Duration = Duration::from_secs(15);
/// Lines of stderr kept per node (printed when a test fails).
const LOG_LINES: usize = 400;

/// Fast settings for tests (each may be overridden through `extra_args`).
pub const TICK_MS: u64 = 10;
/// Election timeout of the test clusters.
pub const ELECTION_TIMEOUT_MS: u64 = 150;
/// Smallest session TTL of the test clusters (at least 1.5 x the election timeout).
pub const MIN_SESSION_TTL_MS: u64 = 400;

fn default_args() -> Vec<(&'static str, String)> {
    vec![
        ("--tick-ms", TICK_MS.to_string()),
        ("--election-timeout-ms", ELECTION_TIMEOUT_MS.to_string()),
        ("--min-session-ttl-ms", MIN_SESSION_TTL_MS.to_string()),
    ]
}

/// A free port of 127.0.0.1 below the ephemeral range, never handed out twice by this
/// process.
fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(|| Mutex::new(HashSet::new()));
    let low_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (lo, hi) = if low_ephemeral > 12_000 {
        (10_000u16, low_ephemeral)
    } else {
        (
            low_ephemeral.saturating_sub(2_000).max(1_024),
            low_ephemeral,
        )
    };
    for _ in 0..1_000 {
        let port = rand::random::<u16>() % (hi - lo) + lo;
        let mut used = used.lock().unwrap_or_else(|p| p.into_inner());
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free port found below the ephemeral range");
}

/// What the harness learned from one node process's stderr.
#[derive(Debug, Default)]
pub struct NodeLog {
    /// The last lines (ANSI colours removed).
    pub lines: VecDeque<String>,
    /// The leader this node named last (`None` before it named one).
    pub leader: Option<u64>,
    /// How many `leader changed` lines it printed.
    pub leader_changes: usize,
    /// How many snapshots it installed from the leader.
    pub snapshot_installs: usize,
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `leader=Some(3)` -> `Some(Some(3))`, `leader=None` -> `Some(None)`.
fn parse_leader(line: &str) -> Option<Option<u64>> {
    if !line.contains("leader changed") {
        return None;
    }
    let rest = &line[line.find("leader=")? + "leader=".len()..];
    if rest.starts_with("None") {
        return Some(None);
    }
    let rest = rest.strip_prefix("Some(")?;
    let end = rest.find(')')?;
    rest[..end].trim().parse().ok().map(Some)
}

impl NodeLog {
    fn record(&mut self, raw: &str) {
        let line = strip_ansi(raw);
        if let Some(leader) = parse_leader(&line) {
            self.leader = leader;
            self.leader_changes += 1;
        }
        if line.contains("installing a snapshot from the leader") {
            self.snapshot_installs += 1;
        }
        if self.lines.len() >= LOG_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// One member of a [`TestCluster`].
#[derive(Debug)]
struct Member {
    id: u64,
    peer_port: u16,
    client_port: u16,
    /// The admin endpoint's port (fixed across restarts).
    admin_port: u16,
    data_dir: tempfile::TempDir,
    peers_arg: String,
    child: Option<Child>,
    log: Arc<Mutex<NodeLog>>,
    /// Every process of this member so far (for the log dump).
    generation: u32,
    /// Arguments of this node alone, after the cluster's (see `restart_with`).
    own_args: Vec<String>,
}

/// A spawned process waiting for its `corral listening on` line.
struct Starting {
    child: Child,
    addr_rx: std::sync::mpsc::Receiver<String>,
    /// Closed once every line of the process's stderr is in its log.
    stderr_done: std::sync::mpsc::Receiver<()>,
}

impl Member {
    fn spawn(&mut self, args: &[String]) -> Starting {
        let listen = format!("127.0.0.1:{}", self.client_port);
        let mut cmd = Command::new(corral_bin());
        cmd.args(["--node-id", &self.id.to_string()])
            .args(["--peers", &self.peers_arg])
            .args(["--listen", &listen])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin_port)])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("CORRAL_CLUSTER_LOG").unwrap_or_else(|_| {
                    "warn,corral_server::node=info,corral_server::replication::storage=info".into()
                }),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn corral");
        self.generation += 1;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("corral listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let log = Arc::new(Mutex::new(NodeLog::default()));
        self.log = log.clone();
        let (id, generation) = (self.id, self.generation);
        let echo = std::env::var_os("CORRAL_CLUSTER_ECHO").is_some();
        let (done_tx, stderr_done) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _done = done_tx;
            let mut lines = BufReader::new(stderr).lines();
            while let Some(Ok(line)) = lines.next() {
                if echo {
                    eprintln!("[node {id}.{generation}] {line}");
                }
                if let Ok(mut log) = log.lock() {
                    log.record(&line);
                }
            }
        });
        Starting {
            child,
            addr_rx,
            stderr_done,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

/// Waits (off the async runtime) for a spawned node to listen.
async fn await_listening(id: u64, starting: Starting, log: Arc<Mutex<NodeLog>>) -> Child {
    let Starting {
        mut child, addr_rx, ..
    } = starting;
    let got = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(START_TIMEOUT))
        .await
        .expect("join the start waiter");
    if got.is_ok() {
        return child;
    }
    let _ = child.kill();
    let status = child.wait().ok();
    let tail = log
        .lock()
        .map(|l| l.lines.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    panic!("node {id} did not start within {START_TIMEOUT:?} (exit: {status:?})\nstderr:\n{tail}");
}

/// A client whose links to each node are proxies of its own; it started on `home`.
#[derive(Debug)]
pub struct PinnedClient {
    /// The client (its addresses are `links`, in node order).
    pub client: Client,
    /// The node the session was opened on.
    pub home: u64,
    links: Vec<Proxy>,
}

impl PinnedClient {
    /// This client's own link to node `id`.
    pub fn link(&self, id: u64) -> &Proxy {
        &self.links[(id - 1) as usize]
    }

    /// The address (of this client's link) that stands for node `id`.
    pub fn link_addr(&self, id: u64) -> String {
        self.link(id).addr().to_string()
    }

    /// The node the client is connected to now, if any.
    pub fn connected_node(&self) -> Option<u64> {
        match self.client.state() {
            corral_client::ConnectionState::Connected { address } => self
                .links
                .iter()
                .position(|p| p.addr().to_string() == address)
                .map(|i| i as u64 + 1),
            _ => None,
        }
    }
}

/// A cluster of `corral` processes. Dropping it kills them.
#[derive(Debug)]
pub struct TestCluster {
    members: Vec<Member>,
    /// `P(i->j)` by `(i, j)`.
    peer_links: BTreeMap<(u64, u64), Proxy>,
    client_proxies: Vec<Proxy>,
    args: Vec<String>,
}

impl TestCluster {
    /// Starts `n` nodes (ids `1..=n`) with the fast test settings plus `extra_args`
    /// (which may override them), and waits until every node listens. Does not wait
    /// for a leader: see [`leader`](Self::leader).
    pub async fn start(n: usize, extra_args: &[&str]) -> TestCluster {
        assert!(n >= 2, "a cluster has at least 2 nodes");
        let n64 = n as u64;
        let mut args: Vec<String> = Vec::new();
        for (flag, value) in default_args() {
            if !extra_args.contains(&flag) {
                args.push(flag.to_string());
                args.push(value);
            }
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));

        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let admin_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut peer_links = BTreeMap::new();
        for i in 1..=n64 {
            for j in 1..=n64 {
                if i == j {
                    continue;
                }
                let target: SocketAddr = ([127, 0, 0, 1], peer_ports[(j - 1) as usize]).into();
                let proxy = Proxy::start(target).await.expect("start peer proxy");
                peer_links.insert((i, j), proxy);
            }
        }
        let mut client_proxies = Vec::new();
        for port in &client_ports {
            let target: SocketAddr = ([127, 0, 0, 1], *port).into();
            client_proxies.push(Proxy::start(target).await.expect("start client proxy"));
        }
        let mut members = Vec::new();
        for i in 1..=n64 {
            let peers_arg = (1..=n64)
                .map(|j| {
                    let addr = if i == j {
                        format!("127.0.0.1:{}", peer_ports[(i - 1) as usize])
                    } else {
                        peer_links[&(i, j)].addr().to_string()
                    };
                    format!("{j}={addr}")
                })
                .collect::<Vec<_>>()
                .join(",");
            members.push(Member {
                id: i,
                peer_port: peer_ports[(i - 1) as usize],
                client_port: client_ports[(i - 1) as usize],
                admin_port: admin_ports[(i - 1) as usize],
                data_dir: tempfile::tempdir().expect("temporary data directory"),
                peers_arg,
                child: None,
                log: Arc::new(Mutex::new(NodeLog::default())),
                generation: 0,
                own_args: Vec::new(),
            });
        }
        let mut cluster = TestCluster {
            members,
            peer_links,
            client_proxies,
            args,
        };
        let ids: Vec<u64> = cluster.ids().collect();
        cluster.spawn_all(&ids).await;
        cluster
    }

    async fn spawn_all(&mut self, ids: &[u64]) {
        let mut starting = Vec::new();
        for id in ids {
            let mut args = self.args.clone();
            let m = self.member_mut(*id);
            args.extend(m.own_args.iter().cloned());
            m.kill();
            let s = m.spawn(&args);
            starting.push((*id, s, m.log.clone()));
        }
        for (id, s, log) in starting {
            let child = await_listening(id, s, log).await;
            self.member_mut(id).child = Some(child);
        }
    }

    fn member(&self, id: u64) -> &Member {
        &self.members[(id - 1) as usize]
    }

    fn member_mut(&mut self, id: u64) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The node ids, `1..=n`.
    pub fn ids(&self) -> impl Iterator<Item = u64> {
        1..=self.members.len() as u64
    }

    /// Node `id`'s own client address (no proxy).
    pub fn direct_client_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.member(id).client_port)
    }

    /// Node `id`'s admin endpoint, `127.0.0.1:port` (the same across restarts).
    pub fn admin_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.member(id).admin_port)
    }

    /// The address of node `id`'s client proxy.
    pub fn client_addr(&self, id: u64) -> String {
        self.client_proxy(id).addr().to_string()
    }

    /// Every node's client proxy address, in id order.
    pub fn client_addrs(&self) -> Vec<String> {
        self.ids().map(|id| self.client_addr(id)).collect()
    }

    /// The proxy in front of node `id`'s client port.
    pub fn client_proxy(&self, id: u64) -> &Proxy {
        &self.client_proxies[(id - 1) as usize]
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &Path {
        self.member(id).data_dir.path()
    }

    /// Node `id`'s real peer port.
    pub fn peer_port(&self, id: u64) -> u16 {
        self.member(id).peer_port
    }

    /// The proxy carrying messages from node `from` to node `to`.
    pub fn peer_link(&self, from: u64, to: u64) -> &Proxy {
        &self.peer_links[&(from, to)]
    }

    /// Sets both directions between `a` and `b` to `mode`.
    pub fn set_link(&self, a: u64, b: u64, mode: Mode) {
        self.peer_link(a, b).set_mode(mode);
        self.peer_link(b, a).set_mode(mode);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: u64, b: u64) {
        self.set_link(a, b, Mode::Cut);
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal(&self, a: u64, b: u64) {
        self.set_link(a, b, Mode::Pass);
    }

    /// Cuts node `id` from every other node (its clients stay connected).
    pub fn isolate(&self, id: u64) {
        for other in self.ids().filter(|o| *o != id) {
            self.cut(id, other);
        }
    }

    /// Restores every link between nodes.
    pub fn heal_all(&self) {
        for proxy in self.peer_links.values() {
            proxy.set_mode(Mode::Pass);
        }
    }

    /// `kill -9` of node `id`.
    pub fn kill(&mut self, id: u64) {
        self.member_mut(id).kill();
    }

    /// `kill -9` of every node.
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Starts node `id` again on the same ports and data directory (killing it first if
    /// it runs), and waits until it listens.
    pub async fn restart(&mut self, id: u64) {
        self.spawn_all(&[id]).await;
    }

    /// Restarts node `id` with `args` of its own after the cluster's (flags those do not
    /// name): a rolling restart that changes one node's settings.
    pub async fn restart_with(&mut self, id: u64, args: &[&str]) {
        self.member_mut(id).own_args = args.iter().map(|s| s.to_string()).collect();
        self.restart(id).await;
    }

    /// Starts node `id` again (killing it first if it runs), with `args` of its own for
    /// this attempt, expecting it to refuse: waits (bounded) for the process to exit
    /// without listening, and returns its stderr. Panics if it starts.
    pub async fn start_refused(&mut self, id: u64, args: &[&str]) -> String {
        let mut all = self.args.clone();
        let m = self.member_mut(id);
        all.extend(m.own_args.iter().cloned());
        all.extend(args.iter().map(|a| a.to_string()));
        let args = all;
        m.kill();
        let Starting {
            mut child,
            addr_rx,
            stderr_done,
        } = m.spawn(&args);
        let log = m.log.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(addr) = addr_rx.try_recv() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("it started, listening on {addr}"));
                }
                match child.try_wait() {
                    Ok(Some(status)) => {
                        // Every line is logged once stderr closes (bounded, too).
                        let _ = stderr_done.recv_timeout(START_TIMEOUT);
                        return Ok(status);
                    }
                    Ok(None) if std::time::Instant::now() < deadline => {
                        // The exit has no event to wait on: look again shortly.
                        let _ = stderr_done.recv_timeout(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "it neither started nor exited in {START_TIMEOUT:?}"
                        ));
                    }
                    Err(e) => return Err(format!("cannot wait for it: {e}")),
                }
            }
        })
        .await
        .expect("join the start waiter");
        let stderr = log
            .lock()
            .map(|l| l.lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        match outcome {
            Ok(status) if !status.success() => stderr,
            Ok(status) => panic!("node {id} exited with {status} instead of refusing:\n{stderr}"),
            Err(why) => panic!("node {id} was expected to refuse to start, but {why}:\n{stderr}"),
        }
    }

    /// Restarts every node at once.
    pub async fn restart_all(&mut self) {
        let ids: Vec<u64> = self.ids().collect();
        self.spawn_all(&ids).await;
    }

    /// Kills node `id`, deletes everything in its data directory, and starts it again:
    /// a member that lost its disk.
    pub async fn wipe(&mut self, id: u64) {
        self.kill(id);
        let dir = self.data_dir(id).to_path_buf();
        for entry in std::fs::read_dir(&dir).expect("read data directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove data");
            } else {
                std::fs::remove_file(&path).expect("remove data");
            }
        }
        self.restart(id).await;
    }

    /// Whether node `id`'s process runs.
    pub fn is_running(&mut self, id: u64) -> bool {
        self.member_mut(id).is_running()
    }

    /// The leader node `id` named last in its log (since its last start).
    pub fn leader_seen_by(&self, id: u64) -> Option<u64> {
        self.member(id).log.lock().ok().and_then(|l| l.leader)
    }

    /// A running leader named by a majority of the cluster (counting running nodes
    /// only), now.
    pub fn current_leader(&mut self) -> Option<u64> {
        let running: Vec<u64> = self
            .ids()
            .collect::<Vec<_>>()
            .into_iter()
            .filter(|id| self.is_running(*id))
            .collect();
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for id in &running {
            if let Some(l) = self.leader_seen_by(*id) {
                *votes.entry(l).or_default() += 1;
            }
        }
        let majority = self.size() / 2 + 1;
        votes
            .into_iter()
            .find(|(l, v)| *v >= majority && running.contains(l))
            .map(|(l, _)| l)
    }

    /// Waits (bounded by [`CLUSTER_WAIT`]) for a leader a majority agrees on.
    pub async fn leader(&mut self) -> u64 {
        self.leader_other_than(None).await
    }

    /// Waits (bounded) for a majority-agreed leader that is not `old`.
    pub async fn leader_other_than(&mut self, old: Option<u64>) -> u64 {
        let deadline = tokio::time::Instant::now() + CLUSTER_WAIT;
        loop {
            if let Some(l) = self.current_leader().filter(|l| Some(*l) != old) {
                return l;
            }
            if tokio::time::Instant::now() >= deadline {
                let views: Vec<_> = self.ids().map(|id| (id, self.leader_seen_by(id))).collect();
                panic!("no leader agreed by a majority within {CLUSTER_WAIT:?}; views: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Some node other than the current leader (waits for a leader).
    pub async fn follower(&mut self) -> u64 {
        let leader = self.leader().await;
        self.ids()
            .find(|id| *id != leader)
            .expect("a cluster has a follower")
    }

    /// How many snapshots node `id` installed from the leader since its last start.
    pub fn snapshot_installs(&self, id: u64) -> usize {
        self.member(id)
            .log
            .lock()
            .map(|l| l.snapshot_installs)
            .unwrap_or(0)
    }

    /// Whether a line of node `id`'s log (since its last start) contains `needle`.
    pub fn log_contains(&self, id: u64, needle: &str) -> bool {
        self.member(id)
            .log
            .lock()
            .map(|l| l.lines.iter().any(|line| line.contains(needle)))
            .unwrap_or(false)
    }

    /// Node `id`'s last log lines.
    pub fn log_tail(&self, id: u64) -> String {
        self.member(id)
            .log
            .lock()
            .map(|l| l.lines.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// A client with only node `id` (directly) in its address list, retrying (bounded)
    /// while the node cannot grant a session yet.
    pub async fn connect(&self, id: u64) -> Client {
        let addr = self.direct_client_addr(id);
        crate::eventually(&format!("a session on node {id}"), CLUSTER_WAIT, || {
            let config = quick_config([addr.clone()]);
            async move { Client::connect(config).await.ok() }
        })
        .await
    }

    /// A client with every node (its own proxies) in its address list that opens its
    /// session on `home`. `config` gives everything but the addresses.
    pub async fn pinned(&self, home: u64, config: ClientConfig) -> PinnedClient {
        let mut links = Vec::new();
        for id in self.ids() {
            let target: SocketAddr = self.direct_client_addr(id).parse().expect("address");
            links.push(Proxy::start(target).await.expect("start client link"));
        }
        for (i, link) in links.iter().enumerate() {
            if i as u64 + 1 != home {
                link.set_mode(Mode::Cut);
            }
        }
        let addresses: Vec<String> = links.iter().map(|p| p.addr().to_string()).collect();
        let client = crate::eventually(&format!("a session on node {home}"), CLUSTER_WAIT, || {
            let config = ClientConfig {
                addresses: addresses.clone(),
                ..config.clone()
            };
            async move { Client::connect(config).await.ok() }
        })
        .await;
        for link in &links {
            link.set_mode(Mode::Pass);
        }
        PinnedClient {
            client,
            home,
            links,
        }
    }
}

/// A client config that notices a dead server and fails over quickly.
pub fn quick_config<I, S>(addresses: I) -> ClientConfig
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    ClientConfig::new(addresses)
        .with_connect_timeout(Duration::from_millis(500))
        .with_max_backoff(Duration::from_millis(100))
        .with_request_timeout(Duration::from_secs(10))
}

/// Paths with their data and stat, as [`dump_tree`] reads them.
pub type TreeDump = BTreeMap<String, (Vec<u8>, Stat)>;

/// Every node under `root` (itself included) with its data and stat, read through
/// `client` (call `sync` first for an up-to-date view).
pub async fn dump_tree(client: &Client, root: &str) -> TreeDump {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_string()];
    while let Some(path) = todo.pop() {
        let (data, stat) = match client.get_data(&path).await {
            Ok(v) => v,
            Err(e) if e.is(corral_client::ErrorCode::NoNode) => continue,
            Err(e) => panic!("get_data {path}: {e}"),
        };
        let children = match client.get_children(&path).await {
            Ok(c) => c,
            Err(e) if e.is(corral_client::ErrorCode::NoNode) => continue,
            Err(e) => panic!("get_children {path}: {e}"),
        };
        for child in children {
            todo.push(if path == "/" {
                format!("/{child}")
            } else {
                format!("{path}/{child}")
            });
        }
        out.insert(path, (data, stat));
    }
    out
}

/// How the trees under `/` seen through `clients` (each after a `sync`) differ, stats
/// included; `None` if they are identical.
pub async fn tree_difference(clients: &[(u64, Client)]) -> Option<String> {
    let mut first: Option<(u64, TreeDump)> = None;
    for (id, client) in clients {
        if let Err(e) = client.sync("/").await {
            return Some(format!("sync on node {id}: {e}"));
        }
        let tree = dump_tree(client, "/").await;
        match &first {
            None => first = Some((*id, tree)),
            Some((first_id, first_tree)) => {
                if first_tree != &tree {
                    let only_one: Vec<&String> = first_tree
                        .keys()
                        .filter(|p| !tree.contains_key(*p))
                        .chain(tree.keys().filter(|p| !first_tree.contains_key(*p)))
                        .collect();
                    let changed: Vec<&String> = first_tree
                        .iter()
                        .filter(|(p, v)| tree.get(*p).is_some_and(|w| w != *v))
                        .map(|(p, _)| p)
                        .collect();
                    return Some(format!(
                        "nodes {first_id} and {id} differ: paths on one only {only_one:?}, \
                         different data or stat at {changed:?}"
                    ));
                }
            }
        }
    }
    None
}

impl TestCluster {
    /// Waits (bounded by [`CLUSTER_WAIT`]) until every node, after a `sync`, holds the
    /// same tree with the same data and stats; panics with the difference otherwise.
    /// Every node must be running.
    pub async fn assert_converged(&self) {
        let mut clients = Vec::new();
        for id in self.ids() {
            clients.push((id, self.connect(id).await));
        }
        let deadline = tokio::time::Instant::now() + CLUSTER_WAIT;
        loop {
            let Some(why) = tree_difference(&clients).await else {
                break;
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "nodes did not converge within {CLUSTER_WAIT:?}: {why}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (_, client) in clients {
            let _ = client.close().await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
        if std::thread::panicking() || std::env::var_os("CORRAL_CLUSTER_DUMP").is_some() {
            for m in &self.members {
                let tail = m
                    .log
                    .lock()
                    .map(|l| l.lines.iter().cloned().collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default();
                eprintln!(
                    "----- node {} (start #{}) log tail -----\n{tail}",
                    m.id, m.generation
                );
            }
        }
    }
}

/// Operations: graceful stops and restores from a backup.
impl TestCluster {
    /// SIGTERM to node `id`, then waits (bounded) for it to exit; returns whether it
    /// exited cleanly (status 0). A node that does not exit in time is killed.
    pub fn terminate(&mut self, id: u64) -> bool {
        let m = self.member_mut(id);
        let Some(mut child) = m.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
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

    /// Kills every node, empties every data directory, writes the backup `file` into
    /// each with `corral restore` (same node ids and peers), and starts them all again.
    pub async fn restore_all(&mut self, file: &Path) {
        self.kill_all();
        for m in &self.members {
            let dir = m.data_dir.path();
            for entry in std::fs::read_dir(dir).expect("read data directory") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).expect("remove data");
                } else {
                    std::fs::remove_file(&path).expect("remove data");
                }
            }
            let out = Command::new(corral_bin())
                .arg("restore")
                .arg("--from")
                .arg(file)
                .args(["--node-id", &m.id.to_string()])
                .args(["--peers", &m.peers_arg])
                .arg("--data-dir")
                .arg(dir)
                .output()
                .expect("run corral restore");
            assert!(
                out.status.success(),
                "corral restore failed for node {}: {}",
                m.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.restart_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_leader_lines() {
        let line =
            "2025-01-01T00:00:00Z  INFO corral_server::node: leader changed node=2 leader=Some(3)";
        assert_eq!(parse_leader(line), Some(Some(3)));
        let line = "INFO corral_server::node: leader changed node=2 leader=None";
        assert_eq!(parse_leader(line), Some(None));
        assert_eq!(parse_leader("INFO expiring sessions"), None);
        let coloured =
            "\u{1b}[2mleader changed\u{1b}[0m \u{1b}[3mleader\u{1b}[0m\u{1b}[2m=\u{1b}[0mSome(1)";
        assert_eq!(parse_leader(&strip_ansi(coloured)), Some(Some(1)));
    }
}
