//! The orchestrator: sets up the hosts, starts the cluster and the client processes,
//! runs the nemesis schedule, heals, lets the cluster recover, reads final states, and
//! hands the history to the checkers.

use crate::history::{mono_ns, Event, Kind, Writer, NEMESIS};
use crate::nemesis::{partition_links, schedule, Family};
use crate::netns::Net;
use crate::nodes::{Cluster, ServerSettings};
use crate::worker::WorkerSpec;
use corral_client::{Client, ClientConfig, CreateMode, ErrorCode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Names per page of the final read of the `sequential` workload's nodes.
const FINAL_READ_PAGE_NAMES: u32 = 10_000;

/// The workloads.
pub const WORKLOADS: [&str; 8] = [
    "lock",
    "unfenced",
    "multilock",
    "shared",
    "register",
    "sequential",
    "watch",
    "session",
];

/// A run's settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub workloads: Vec<String>,
    pub nemeses: Vec<Family>,
    pub time: Duration,
    pub quiet: Duration,
    pub nodes: usize,
    pub clients: usize,
    pub seed: u64,
    pub dir: PathBuf,
    pub corral_bin: PathBuf,
    pub ttl_ms: u64,
    pub keys: u64,
    pub settings: ServerSettings,
    pub check_time_limit: Duration,
}

/// What the orchestrator and the resource share: the history being written, and which
/// lock clients believe they hold the lock now (the client-pause nemesis picks one).
struct Hist {
    writer: Writer,
    t0: u64,
    holding: HashMap<u64, bool>,
    error: Option<String>,
}

type Shared = Arc<Mutex<Hist>>;

fn record(h: &Shared, e: Event) {
    let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(
        e.workload.as_str(),
        "lock" | "unfenced" | "multilock" | "shared"
    ) && e.process != NEMESIS
    {
        match (e.kind, e.f.as_str()) {
            (Kind::Ok, "acquire") => {
                h.holding.insert(e.process, true);
            }
            (Kind::Invoke, "release") | (Kind::Event, "lost") => {
                h.holding.insert(e.process, false);
            }
            _ => {}
        }
    }
    if let Err(err) = h.writer.append(e) {
        h.error
            .get_or_insert(format!("cannot write the history: {err}"));
    }
}

fn now(h: &Shared) -> u64 {
    let t0 = h.lock().unwrap_or_else(|p| p.into_inner()).t0;
    mono_ns().saturating_sub(t0)
}

fn nemesis_event(h: &Shared, f: &str, what: String) {
    let mut e = Event::new(now(h), NEMESIS, "nemesis", Kind::Event, f);
    e.items = Some(vec![what.clone()]);
    println!("jepsen: {:>7.2}s {f}: {what}", e.time as f64 / 1e9);
    record(h, e);
}

/// The fenced resource: a counter that accepts a request only if its token is at
/// least the highest it has seen (what `FencingValidator` does for an outside store).
/// It writes its decisions into the history itself, in the order it makes them.
async fn resource_server(listener: tokio::net::UnixListener, h: Shared) {
    let state = Arc::new(Mutex::new((0u64, 0u64))); // (value, highest token)
    let mut conns = 0u64;
    while conns < 100_000 {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        conns += 1;
        let h = h.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(req) = serde_json::from_str::<serde_json::Value>(&line) else {
                    return;
                };
                let process = req.get("process").and_then(|v| v.as_u64()).unwrap_or(0);
                let token = req.get("token").and_then(|v| v.as_u64()).unwrap_or(0);
                let value = req.get("value").and_then(|v| v.as_u64()).unwrap_or(0);
                let is_write = req.get("op").and_then(|v| v.as_str()) == Some("write");
                let answer = {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    let f = if is_write {
                        "resource-write"
                    } else {
                        "resource-read"
                    };
                    let mut e = Event::new(now(&h), process, "lock", Kind::Event, f);
                    e.token = Some(token);
                    let answer = if token < s.1 {
                        e.error = Some(format!("stale token (highest seen {})", s.1));
                        e.value = Some(value);
                        serde_json::json!({"ok": false})
                    } else {
                        s.1 = token;
                        if is_write {
                            s.0 = value;
                        }
                        e.value = Some(s.0);
                        serde_json::json!({"ok": true, "value": s.0})
                    };
                    record(&h, e);
                    answer
                };
                let mut out = answer.to_string();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The client processes.
struct Workers {
    exe: PathBuf,
    base: WorkerSpec,
    h: Shared,
    next_process: u64,
    /// process -> (pid, workload, task that reads its output and waits for it)
    running: BTreeMap<u64, (u32, String, tokio::task::JoinHandle<()>)>,
    children: Arc<Mutex<HashMap<u64, tokio::process::Child>>>,
    dir: PathBuf,
}

impl Workers {
    fn spawn(&mut self, workload: &str) -> Result<u64, String> {
        self.next_process += 1;
        let process = self.next_process;
        let mut spec = self.base.clone();
        spec.workload = workload.to_string();
        spec.process = process;
        spec.seed = self.base.seed.wrapping_mul(31).wrapping_add(process);
        spec.root = format!("/jepsen/{workload}");
        let json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
        let stderr = std::fs::File::create(self.dir.join(format!("worker-{process}.log")))
            .map_err(|e| format!("worker log: {e}"))?;
        let mut child = tokio::process::Command::new(&self.exe)
            .args(["worker", "--spec", &json])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(process, child);
        let h = self.h.clone();
        let task = tokio::spawn(async move {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(e) => record(&h, e),
                    Err(err) => eprintln!("jepsen: worker {process}: bad line {line:?}: {err}"),
                }
            }
        });
        self.running
            .insert(process, (pid, workload.to_string(), task));
        Ok(process)
    }

    fn signal(&self, process: u64, sig: Signal) {
        if let Some((pid, _, _)) = self.running.get(&process) {
            let _ = kill(Pid::from_raw(*pid as i32), sig);
        }
    }

    fn of(&self, workload: &str) -> Vec<u64> {
        self.running
            .iter()
            .filter(|(_, (_, w, _))| w == workload)
            .map(|(p, _)| *p)
            .collect()
    }

    /// SIGKILL and forget.
    async fn kill9(&mut self, process: u64) {
        self.signal(process, Signal::SIGCONT);
        let child = self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&process);
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
        if let Some((_, _, task)) = self.running.remove(&process) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Waits (bounded) for every worker to finish after its deadline; kills the rest.
    async fn finish(&mut self, grace: Duration) {
        let children: Vec<(u64, tokio::process::Child)> = self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (process, mut child) in children {
            self.signal(process, Signal::SIGCONT);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                eprintln!("jepsen: worker {process} did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
        for (_, (_, _, task)) in std::mem::take(&mut self.running) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// A fault in force, to undo at its stop.
#[derive(Debug)]
enum Active {
    Partition,
    Loss,
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    PausedClient(u64),
    Clock(usize),
}

struct Nemesis {
    rng: StdRng,
    active: HashMap<Family, Active>,
}

fn lock_cluster(c: &Arc<Mutex<Cluster>>) -> std::sync::MutexGuard<'_, Cluster> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl Nemesis {
    async fn start(
        &mut self,
        family: Family,
        net: &Net,
        cluster: &Arc<Mutex<Cluster>>,
        workers: &mut Workers,
        h: &Shared,
        ttl_ms: u64,
    ) -> Result<(), String> {
        let n = net.nodes();
        let mut nodes: Vec<usize> = (1..=n).collect();
        nodes.shuffle(&mut self.rng);
        let leader = lock_cluster(cluster).leader();
        let active = match family {
            Family::Partition => {
                let variant = self.rng.gen_range(0..4);
                let (links, what) = partition_links(n, variant, leader, &mut self.rng);
                net.partition(&links)?;
                nemesis_event(h, "start-partition", what);
                Active::Partition
            }
            Family::Loss => {
                let p = self.rng.gen_range(0.1..0.4);
                net.set_loss(p)?;
                nemesis_event(
                    h,
                    "start-loss",
                    format!("drop {:.0}% of peer packets", p * 100.0),
                );
                Active::Loss
            }
            Family::Kill => {
                let count = match self.rng.gen_range(0..3) {
                    0 => 1,
                    1 => n.div_ceil(2) - 1,
                    _ => n,
                }
                .max(1);
                let victims: Vec<usize> = nodes[..count].to_vec();
                {
                    let mut c = lock_cluster(cluster);
                    for v in &victims {
                        c.kill9(*v)?;
                    }
                }
                nemesis_event(h, "start-kill", format!("kill -9 nodes {victims:?}"));
                // Clients holding ephemerals die too (session workload).
                let sessions = workers.of("session");
                if let Some(p) = sessions.choose(&mut self.rng).copied() {
                    workers.kill9(p).await;
                    let mut e = Event::new(now(h), p, "session", Kind::Event, "process-killed");
                    e.error = Some("kill -9 by the nemesis".into());
                    record(h, e);
                    let q = workers.spawn("session")?;
                    nemesis_event(
                        h,
                        "kill-client",
                        format!("kill -9 client {p}; client {q} replaces it"),
                    );
                }
                Active::Killed(victims)
            }
            Family::Pause => {
                let holders: Vec<u64> = {
                    let hist = h.lock().unwrap_or_else(|p| p.into_inner());
                    hist.holding
                        .iter()
                        .filter(|(_, held)| **held)
                        .map(|(p, _)| *p)
                        .collect()
                };
                let live: Vec<u64> = holders
                    .into_iter()
                    .filter(|p| workers.running.contains_key(p))
                    .collect();
                if !live.is_empty() && self.rng.gen_bool(0.5) {
                    let p = live[self.rng.gen_range(0..live.len())];
                    workers.signal(p, Signal::SIGSTOP);
                    nemesis_event(
                        h,
                        "start-pause-client",
                        format!("SIGSTOP client {p} (holding the lock) for longer than the TTL ({ttl_ms} ms)"),
                    );
                    Active::PausedClient(p)
                } else {
                    let victim = if self.rng.gen_bool(0.5) {
                        leader.unwrap_or(nodes[0])
                    } else {
                        nodes[0]
                    };
                    lock_cluster(cluster).pause(victim)?;
                    nemesis_event(
                        h,
                        "start-pause",
                        format!(
                            "SIGSTOP node {victim}{}",
                            if leader == Some(victim) {
                                " (leader)"
                            } else {
                                ""
                            }
                        ),
                    );
                    Active::Paused(vec![victim])
                }
            }
            Family::Clock => {
                let victim = nodes[0];
                let (offset, rate, what) = if self.rng.gen_bool(0.5) {
                    let offset = self.rng.gen_range(-60_000i64..60_000);
                    (
                        offset,
                        1.0,
                        format!("node {victim} wall clock {offset:+} ms"),
                    )
                } else {
                    let rate = [0.5, 0.8, 1.25, 2.0][self.rng.gen_range(0..4)];
                    (0, rate, format!("node {victim} clocks run at {rate}x"))
                };
                lock_cluster(cluster).set_clock(victim, offset, rate)?;
                nemesis_event(h, "start-clock", what);
                Active::Clock(victim)
            }
        };
        self.active.insert(family, active);
        Ok(())
    }

    fn stop(
        &mut self,
        family: Family,
        net: &Net,
        cluster: &Arc<Mutex<Cluster>>,
        workers: &Workers,
        h: &Shared,
    ) -> Result<(), String> {
        let Some(active) = self.active.remove(&family) else {
            return Ok(());
        };
        match active {
            Active::Partition => {
                net.heal_partition()?;
                nemesis_event(h, "stop-partition", "healed".into());
            }
            Active::Loss => {
                net.heal_loss()?;
                nemesis_event(h, "stop-loss", "no loss".into());
            }
            Active::Killed(v) => {
                let mut c = lock_cluster(cluster);
                for id in &v {
                    c.start(*id)?;
                }
                nemesis_event(h, "stop-kill", format!("restarted nodes {v:?}"));
            }
            Active::Paused(v) => {
                let mut c = lock_cluster(cluster);
                for id in &v {
                    c.resume(*id)?;
                }
                nemesis_event(h, "stop-pause", format!("SIGCONT nodes {v:?}"));
            }
            Active::PausedClient(p) => {
                workers.signal(p, Signal::SIGCONT);
                nemesis_event(h, "stop-pause-client", format!("SIGCONT client {p}"));
            }
            Active::Clock(id) => {
                lock_cluster(cluster).set_clock(id, 0, 1.0)?;
                nemesis_event(h, "stop-clock", format!("node {id} clock reset"));
            }
        }
        Ok(())
    }
}

/// A client of the orchestrator's own (setup and final reads), retried until `within`.
async fn admin_client(servers: &[String], within: Duration) -> Result<Client, String> {
    let deadline = tokio::time::Instant::now() + within;
    let config = ClientConfig::new(servers.iter().map(String::as_str))
        .with_session_ttl(Duration::from_secs(10))
        .with_request_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(2));
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match Client::connect(config.clone()).await {
            Ok(c) => match c.sync("/").await {
                Ok(()) => return Ok(c),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("the cluster did not become available: {last}"))
}

async fn ensure(client: &Client, path: &str, data: &str) -> Result<(), String> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match client
            .create(path, data.as_bytes().to_vec(), CreateMode::Persistent)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.is(ErrorCode::NodeExists) => return Ok(()),
            Err(e) if attempts < 20 && e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(format!("cannot create {path}: {e}")),
        }
    }
}

/// What a run produced, for the checkers and the report.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub heal_ns: u64,
    pub end_ns: u64,
    pub faults_confirmed: Option<bool>,
}

/// Runs the whole test inside the clients' namespace; returns when the history is
/// complete. The cluster and the workers are stopped before it returns.
pub async fn orchestrate(opts: &Options, net: &Net) -> Result<RunInfo, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let t0 = mono_ns();
    let h: Shared = Arc::new(Mutex::new(Hist {
        writer: Writer::create(&opts.dir.join("history.jsonl"))
            .map_err(|e| format!("history.jsonl: {e}"))?,
        t0,
        holding: HashMap::new(),
        error: None,
    }));
    let cluster = Arc::new(Mutex::new(Cluster::new(
        net,
        &opts.corral_bin,
        opts.settings.clone(),
        &opts.dir,
    )));
    // What the nodes log that the checkers need (snapshot installs, leader changes)
    // goes into the history as events of the "cluster" workload.
    let (notes_tx, notes_rx) = std::sync::mpsc::channel::<crate::nodes::NodeNote>();
    {
        let h = h.clone();
        std::thread::spawn(move || {
            while let Ok((node, what, from, to)) = notes_rx.recv() {
                let mut e = Event::new(now(&h), NEMESIS, "cluster", Kind::Event, what);
                e.key = Some(format!("n{node}"));
                if what == "snapshot-install" {
                    e.value = Some(from);
                    e.zxid = Some(to);
                } else {
                    e.value = Some(to);
                }
                record(&h, e);
            }
        });
    }
    {
        let mut c = lock_cluster(&cluster);
        c.set_notes(notes_tx);
        for id in 1..=net.nodes() {
            c.start(id)?;
        }
    }
    let servers = lock_cluster(&cluster).servers();
    println!("jepsen: cluster {servers:?} starting");
    let admin = admin_client(&servers, Duration::from_secs(60)).await?;
    let faults_confirmed = if opts.settings.faults.is_some() {
        let ok = lock_cluster(&cluster).faults_confirmed();
        if !ok {
            return Err(
                "--inject-fault was given but the servers did not report their fault \
                        switches: build corral with `--features sim` (see jepsen/README.md)"
                    .into(),
            );
        }
        Some(ok)
    } else {
        None
    };
    ensure(&admin, "/jepsen", "").await?;
    for w in &opts.workloads {
        ensure(&admin, &format!("/jepsen/{w}"), "").await?;
    }
    if opts.workloads.iter().any(|w| w == "watch") {
        for k in 0..3 {
            ensure(&admin, &format!("/jepsen/watch/k{k}"), "0").await?;
        }
    }
    let _ = admin.close().await;
    // Unix socket paths are short (108 bytes): not in the run directory.
    let sock = std::env::temp_dir().join(format!("corral-jepsen-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener =
        tokio::net::UnixListener::bind(&sock).map_err(|e| format!("resource socket: {e}"))?;
    let resource = tokio::spawn(resource_server(listener, h.clone()));

    // Times, from t0.
    let start_ns = mono_ns() - t0;
    let fault_end = Duration::from_nanos(start_ns) + opts.time;
    let end = fault_end + opts.quiet;
    let request_timeout_ms = 3_000;
    let mut workers = Workers {
        exe,
        base: WorkerSpec {
            workload: String::new(),
            process: 0,
            servers: servers.clone(),
            seed: opts.seed,
            t0_ns: t0,
            until_ns: t0 + end.as_nanos() as u64,
            ttl_ms: opts.ttl_ms,
            request_timeout_ms,
            resource: Some(sock.clone()),
            keys: opts.keys,
            root: String::new(),
        },
        h: h.clone(),
        next_process: 0,
        running: BTreeMap::new(),
        children: Arc::new(Mutex::new(HashMap::new())),
        dir: opts.dir.clone(),
    };
    for w in &opts.workloads {
        for _ in 0..opts.clients {
            workers.spawn(w)?;
        }
    }
    println!(
        "jepsen: {} clients running {:?}; faults {:?} for {:?}, then {:?} quiet",
        workers.running.len(),
        opts.workloads,
        opts.nemeses.iter().map(|f| f.name()).collect::<Vec<_>>(),
        opts.time,
        opts.quiet
    );

    let steps = schedule(
        &opts.nemeses,
        opts.seed,
        Duration::from_nanos(start_ns) + Duration::from_secs(3),
        fault_end,
    );
    let mut nemesis = Nemesis {
        rng: StdRng::seed_from_u64(opts.seed ^ 0x5eed),
        active: HashMap::new(),
    };
    let base = tokio::time::Instant::now() - Duration::from_nanos(mono_ns() - t0);
    for step in &steps {
        tokio::time::sleep_until(base + step.at).await;
        let r = if step.start {
            nemesis
                .start(step.family, net, &cluster, &mut workers, &h, opts.ttl_ms)
                .await
        } else {
            nemesis.stop(step.family, net, &cluster, &workers, &h)
        };
        if let Err(e) = r {
            nemesis_event(&h, "nemesis-error", e);
        }
    }
    tokio::time::sleep_until(base + fault_end).await;
    // Heal everything, then watch the cluster recover.
    let families: Vec<Family> = nemesis.active.keys().copied().collect();
    for f in families {
        if let Err(e) = nemesis.stop(f, net, &cluster, &workers, &h) {
            nemesis_event(&h, "nemesis-error", e);
        }
    }
    net.heal_partition()?;
    net.heal_loss()?;
    lock_cluster(&cluster).heal()?;
    for p in workers.running.keys() {
        workers.signal(*p, Signal::SIGCONT);
    }
    nemesis_event(&h, "heal-all", "every fault stopped; quiet phase".into());
    let heal_ns = now(&h);

    // Sessions: the dead clients' ephemerals must vanish within TTL + election time.
    if opts.workloads.iter().any(|w| w == "session") {
        let bound_ms = opts.ttl_ms + opts.settings.election_timeout_ms + 1_000;
        let mut e = Event::new(heal_ns, NEMESIS, "session", Kind::Event, "final-check");
        e.value = Some(bound_ms);
        record(&h, e);
        let deadline =
            base + Duration::from_nanos(heal_ns) + Duration::from_millis(bound_ms + 3_000);
        // A fresh client: the setup client's session may have died in the faults.
        let mut observer: Option<Client> = None;
        let mut polls = 0;
        while tokio::time::Instant::now() < deadline && polls < 1_000 {
            polls += 1;
            if observer.as_ref().is_none_or(|c| c.state().is_terminal()) {
                observer = admin_client(&servers, Duration::from_secs(2)).await.ok();
            }
            if let Some(c) = &observer {
                if let Ok(children) = c.get_children("/jepsen/session").await {
                    let mut e = Event::new(now(&h), NEMESIS, "session", Kind::Event, "observe");
                    e.items = Some(children);
                    record(&h, e);
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    tokio::time::sleep_until(base + end).await;
    workers
        .finish(Duration::from_millis(request_timeout_ms * 3 + 5_000))
        .await;

    // Final reads.
    if opts.workloads.iter().any(|w| w == "sequential") {
        let admin = admin_client(&servers, Duration::from_secs(30)).await?;
        // Page by page: a long run creates about 100 nodes a second, more than one frame
        // lists after 15 minutes. Nothing deletes these nodes, so every node that existed
        // when the first page was read (every acknowledged create) is listed, whatever a
        // late write adds meanwhile.
        let mut children = Vec::new();
        let mut pages = admin.children_pages("/jepsen/sequential", FINAL_READ_PAGE_NAMES);
        loop {
            match pages.next_page().await {
                Ok(Some(page)) => children.extend(page.children),
                Ok(None) => break,
                Err(e) => return Err(format!("final read of /jepsen/sequential: {e}")),
            }
        }
        let mut items = Vec::new();
        for name in children {
            let (data, _) = admin
                .get_data(&format!("/jepsen/sequential/{name}"))
                .await
                .map_err(|e| format!("final read of {name}: {e}"))?;
            items.push(format!("{name}={}", String::from_utf8_lossy(&data)));
        }
        let mut e = Event::new(now(&h), NEMESIS, "sequential", Kind::Event, "final");
        e.items = Some(items);
        record(&h, e);
    }
    resource.abort();
    let _ = std::fs::remove_file(&sock);
    let end_ns = now(&h);
    lock_cluster(&cluster).stop_all();
    let mut hist = h.lock().unwrap_or_else(|p| p.into_inner());
    hist.writer
        .flush()
        .map_err(|e| format!("history.jsonl: {e}"))?;
    if let Some(e) = hist.error.take() {
        return Err(e);
    }
    Ok(RunInfo {
        heal_ns,
        end_ns,
        faults_confirmed,
    })
}

/// Where a run's files go: `<out>/<unix time>-<seed>`.
pub fn run_dir(out: &Path, seed: u64) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    out.join(format!("{secs}-{seed}"))
}
