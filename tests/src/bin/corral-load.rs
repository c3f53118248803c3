//! `corral-load`: a small closed-loop load generator for a corral server.
//!
//! ```sh
//! cargo run --release -p corral-tests --bin corral-load -- \
//!     --clients 16 --in-flight 1 --op create --duration-s 5 --warmup-s 1
//! ```
//!
//! Each of `--clients` clients is its own [`Client`] (own session and connection) and
//! keeps `--in-flight` requests outstanding: one task per slot issues a request, waits
//! for the answer and issues the next. The run is bounded by `--duration-s` and/or
//! `--requests` (a total over all clients; 5 s if neither is given) after `--warmup-s`
//! of unmeasured load. It reports throughput, the latency of successful requests
//! (p50/p90/p99/p99.9/max, in microseconds) and failures by kind; `--json` prints one
//! JSON object instead.
//!
//! Operations (`--op`): `create` makes new persistent nodes, `set` overwrites one node
//! per slot, `get` reads one node per slot, `mixed` interleaves gets and sets of one node
//! per slot, `--read-pct` of them gets. Values are `--value-bytes` long.
//!
//! All nodes live under a unique prefix `/bench-<pid>-<unix ms>`, deleted at the end
//! (best effort, within `--cleanup-s`).
//!
//! With `--spawn-server` the tool starts `--corral-bin` (default `target/release/corral`)
//! itself on 127.0.0.1:0 with a temporary data directory and the extra `--server-arg`s
//! (e.g. `--server-arg=--fsync=false`), and stops it with SIGTERM at the end. The
//! server's `storage closed` log line (`syncs`, `entries`, `entries_per_sync`,
//! `mean_sync_us`) is reported: the write-ahead log's group-commit factor under this
//! load. The server is discarded, so no cleanup is done and the counts cover the
//! setup, warmup and measured load only.
//!
//! `--server` takes a comma-separated list (e.g. the three nodes of a cluster); client
//! `c` then connects to address `c % n` only, so the connections spread evenly.
//!
//! `--measure-failover` measures a leader failover instead of throughput: one client
//! (with every `--server` address, starting at a random one and moving round robin on
//! failure) keeps one write in flight (`--op create` or `set`), `--kill-after-s` after the
//! start the tool sends SIGKILL to `--kill-pid` (the leader), and it keeps writing until
//! `--after-kill-s` after the first successful write that follows the kill (at most
//! `--failover-max-s` after the kill). It reports the time from the kill to the first
//! successful write (`kill_to_first_ok_ms`; also for the first write issued after the
//! kill), how long no write succeeded (`outage_ms`: from the last success before the kill
//! to the first after it), the longest gap between successes, and the errors seen, with
//! their times relative to the kill.

use clap::{Parser, ValueEnum};
use corral_client::{Client, ClientConfig, CreateMode, Error, ErrorCode, LockOptions, MultiOp};
use futures::stream::{self, StreamExt};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Load generator for a corral server.
#[derive(Debug, Parser)]
#[command(name = "corral-load")]
struct Args {
    /// Server address, or a comma-separated list: client c connects to address c % n
    /// (ignored with --spawn-server).
    #[arg(long, default_value = "127.0.0.1:2281")]
    server: String,
    /// Concurrent clients, each with its own session and connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    clients: u32,
    /// Requests each client keeps in flight.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    in_flight: u32,
    /// Operation to run.
    #[arg(long, value_enum, default_value_t = OpKind::Create)]
    op: OpKind,
    /// Percentage of gets in `--op mixed`.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(0..=100))]
    read_pct: u64,
    /// Measured duration in seconds (default 5 unless --requests is given).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Measured requests in total over all clients.
    #[arg(long)]
    requests: Option<u64>,
    /// Unmeasured load before the measurement, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Size of the values written.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,
    /// Longest time spent deleting the nodes at the end, in seconds.
    #[arg(long, default_value_t = 60.0)]
    cleanup_s: f64,
    /// Start a corral server on 127.0.0.1:0 with a temporary data directory.
    #[arg(long)]
    spawn_server: bool,
    /// The corral binary for --spawn-server.
    #[arg(long, default_value = "target/release/corral")]
    corral_bin: PathBuf,
    /// Extra argument for the spawned server (repeatable), e.g. --server-arg=--fsync=false.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Measure a leader failover: write continuously with one client and SIGKILL
    /// --kill-pid after --kill-after-s.
    #[arg(long, requires = "kill_pid", conflicts_with = "spawn_server")]
    measure_failover: bool,
    /// The process to SIGKILL in --measure-failover (the leader).
    #[arg(long)]
    kill_pid: Option<u32>,
    /// Seconds of writing before the kill.
    #[arg(long, default_value_t = 2.0)]
    kill_after_s: f64,
    /// Seconds of writing after the first successful write that follows the kill.
    #[arg(long, default_value_t = 0.5)]
    after_kill_s: f64,
    /// Longest wait for a successful write after the kill, in seconds.
    #[arg(long, default_value_t = 15.0)]
    failover_max_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OpKind {
    Create,
    Set,
    Get,
    Mixed,
    /// Acquire and release the slot's own lock (exclusive, uncontended): one sample is
    /// the whole cycle, two writes.
    Lock,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every slot task needs to know.
#[derive(Debug)]
struct Plan {
    op: OpKind,
    prefix: String,
    value: Vec<u8>,
    read_pct: u64,
    measure_start: Instant,
    deadline: Option<Instant>,
    /// Measured requests left to claim, if bounded by --requests.
    remaining: Option<AtomicU64>,
}

/// What one slot did.
#[derive(Debug, Default)]
struct SlotResult {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    /// Requests issued (measured or not); for `create`, nodes `s{k}-0..issued` may exist.
    issued: u64,
    last_done: Option<Instant>,
}

fn key_path(prefix: &str, client: usize, slot: usize) -> String {
    format!("{prefix}/c{client}/k{slot}")
}

fn lock_path(prefix: &str, client: usize, slot: usize) -> String {
    format!("{prefix}/c{client}/l{slot}")
}

async fn lock_cycle(client: &Client, name: &str) -> Result<(), Error> {
    let guard = client.lock(name, LockOptions::default()).acquire().await?;
    guard.release().await.map(drop)
}

fn create_path(prefix: &str, client: usize, slot: usize, i: u64) -> String {
    format!("{prefix}/c{client}/s{slot}-{i}")
}

/// A short name for an error: the server's code, else the client error's variant.
fn error_kind(e: &Error) -> String {
    match e.code() {
        Some(code) => format!("{code:?}"),
        None => {
            let debug = format!("{e:?}");
            let end = debug.find(['(', ' ', '{']).unwrap_or(debug.len());
            debug[..end].to_string()
        }
    }
}

async fn run_slot(client: Client, plan: Arc<Plan>, c: usize, k: usize) -> SlotResult {
    let key = key_path(&plan.prefix, c, k);
    let mut result = SlotResult::default();
    loop {
        let start = Instant::now();
        let measured = start >= plan.measure_start;
        if measured {
            if plan.deadline.is_some_and(|d| start >= d) {
                break;
            }
            if let Some(left) = &plan.remaining {
                let claim =
                    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                if claim.is_err() {
                    break;
                }
            }
        }
        let i = result.issued;
        result.issued += 1;
        let read = match plan.op {
            OpKind::Get => true,
            OpKind::Mixed => i % 100 < plan.read_pct,
            OpKind::Create | OpKind::Set | OpKind::Lock => false,
        };
        let outcome = if plan.op == OpKind::Lock {
            lock_cycle(&client, &lock_path(&plan.prefix, c, k)).await
        } else if plan.op == OpKind::Create {
            let path = create_path(&plan.prefix, c, k, i);
            client
                .create(&path, plan.value.clone(), CreateMode::Persistent)
                .await
                .map(drop)
        } else if read {
            client.get_data(&key).await.map(drop)
        } else {
            client
                .set_data(&key, plan.value.clone(), None)
                .await
                .map(drop)
        };
        if !measured {
            continue;
        }
        let done = Instant::now();
        result.last_done = Some(done);
        match outcome {
            Ok(()) => {
                let us = u64::try_from(done.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                result.latencies_us.push(us);
            }
            Err(e) => *result.errors.entry(error_kind(&e)).or_default() += 1,
        }
    }
    result
}

/// Deletes `paths`, in one multi when it can, else one by one (ignoring `NoNode`).
async fn delete_batch(client: &Client, paths: Vec<String>) -> bool {
    let ops = paths
        .iter()
        .map(|path| MultiOp::Delete {
            path: path.clone(),
            version: None,
        })
        .collect();
    if client.multi(ops).await.is_ok() {
        return true;
    }
    let mut ok = true;
    for path in paths {
        match client.delete(&path, None).await {
            Err(e) if !e.is(ErrorCode::NoNode) => ok = false,
            _ => {}
        }
    }
    ok
}

/// Deletes one client's nodes (children, then its parent). `issued[k]` is slot k's
/// request count.
async fn cleanup_client(client: &Client, plan: &Plan, c: usize, issued: &[u64]) -> bool {
    let mut paths = Vec::new();
    for (k, &n) in issued.iter().enumerate() {
        if plan.op == OpKind::Create {
            paths.extend((0..n).map(|i| create_path(&plan.prefix, c, k, i)));
        } else {
            paths.push(key_path(&plan.prefix, c, k));
            if plan.op == OpKind::Lock {
                paths.push(lock_path(&plan.prefix, c, k));
            }
        }
    }
    let batches: Vec<Vec<String>> = paths.chunks(256).map(<[String]>::to_vec).collect();
    let results: Vec<bool> = stream::iter(batches)
        .map(|batch| delete_batch(client, batch))
        .buffer_unordered(8)
        .collect()
        .await;
    let parent = format!("{}/c{c}", plan.prefix);
    results.into_iter().all(|ok| ok) && delete_batch(client, vec![parent]).await
}

/// Percentile `q` (0..=1) of sorted values.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Removes ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The `key=value` fields of a text log line.
fn log_fields(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A `corral` process started by `--spawn-server`.
#[derive(Debug)]
struct SpawnedServer {
    child: Child,
    addr: String,
    stderr: Option<std::thread::JoinHandle<Option<String>>>,
    _data_dir: tempfile::TempDir,
}

impl SpawnedServer {
    fn start(bin: &std::path::Path, extra: &[String]) -> Result<SpawnedServer, BoxError> {
        let data_dir = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let stderr = child.stderr.take().ok_or("no server stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("corral listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        // Drain stderr (so the server never blocks on it) and keep the storage summary.
        let stderr = std::thread::spawn(move || {
            let mut summary = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if line.contains("entries_per_sync") {
                    summary = Some(line);
                } else if line.contains(" ERROR ") || line.contains(" WARN ") {
                    eprintln!("server: {line}");
                }
            }
            summary
        });
        let mut server = SpawnedServer {
            child,
            addr: String::new(),
            stderr: Some(stderr),
            _data_dir: data_dir,
        };
        server.addr = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the spawned server did not report its address within 30 s")?;
        Ok(server)
    }

    /// SIGTERM, a bounded wait for a clean exit, and the `storage closed` log line.
    fn stop(&mut self) -> Option<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!("the server did not exit within 30 s of SIGTERM; killing it");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stderr.take().and_then(|t| t.join().ok()).flatten()
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let mut server = if args.spawn_server {
        Some(SpawnedServer::start(&args.corral_bin, &args.server_arg)?)
    } else {
        None
    };
    let addrs: Vec<String> = match &server {
        Some(s) => vec![s.addr.clone()],
        None => args
            .server
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
    };
    if addrs.is_empty() {
        return Err("--server names no address".into());
    }
    if args.measure_failover {
        let report = run_failover(&args, &addrs).await?;
        if args.json {
            println!("{report}");
        } else {
            print_failover(&report);
        }
        return Ok(());
    }
    let report = run(&args, &addrs, server.is_none()).await;
    let summary = server.as_mut().and_then(SpawnedServer::stop);
    let mut report = report?;
    if server.is_some() {
        let fields = summary.as_deref().map(log_fields).unwrap_or_default();
        let number = |k: &str| fields.get(k).and_then(|v| v.parse::<f64>().ok());
        report["server"] = serde_json::json!({
            "args": args.server_arg,
            "storage_closed": summary,
            "syncs": number("syncs"),
            "entries": number("entries"),
            "entries_per_sync": number("entries_per_sync"),
            "mean_sync_us": number("mean_sync_us"),
        });
    }
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(())
}

/// Connects, sets up, runs the load, cleans up; returns the report.
async fn run(args: &Args, addrs: &[String], cleanup: bool) -> Result<serde_json::Value, BoxError> {
    let clients_n = args.clients as usize;
    let slots_n = args.in_flight as usize;
    let clients = futures::future::try_join_all((0..clients_n).map(|c| {
        let addr = addrs[c % addrs.len()].clone();
        Client::connect(ClientConfig::new([addr]).with_max_in_flight(slots_n.max(512)))
    }))
    .await
    .map_err(|e| format!("cannot connect to {}: {e}", addrs.join(",")))?;

    let millis = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = format!("/bench-{}-{millis}", std::process::id());
    let value = vec![b'x'; args.value_bytes];
    clients[0]
        .create(&prefix, Vec::new(), CreateMode::Persistent)
        .await?;
    futures::future::try_join_all(clients.iter().enumerate().map(|(c, client)| {
        let (prefix, value) = (&prefix, &value);
        async move {
            let parent = format!("{prefix}/c{c}");
            client
                .create(&parent, Vec::new(), CreateMode::Persistent)
                .await?;
            if args.op != OpKind::Create {
                for k in 0..slots_n {
                    let key = key_path(prefix, c, k);
                    client
                        .create(&key, value.clone(), CreateMode::Persistent)
                        .await?;
                }
            }
            Ok::<(), Error>(())
        }
    }))
    .await
    .map_err(|e| format!("setup under {prefix} failed: {e}"))?;

    let duration = match (args.duration_s, args.requests) {
        (None, None) => Some(5.0),
        (d, _) => d,
    };
    let measure_start = Instant::now() + Duration::from_secs_f64(args.warmup_s);
    let plan = Arc::new(Plan {
        op: args.op,
        prefix: prefix.clone(),
        value,
        read_pct: args.read_pct,
        measure_start,
        deadline: duration.map(|d| measure_start + Duration::from_secs_f64(d)),
        remaining: args.requests.map(AtomicU64::new),
    });
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for k in 0..slots_n {
            tasks.push(tokio::spawn(run_slot(client.clone(), plan.clone(), c, k)));
        }
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await?);
    }

    let mut latencies: Vec<u64> = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut end = measure_start;
    for r in &results {
        latencies.extend_from_slice(&r.latencies_us);
        for (kind, n) in &r.errors {
            *errors.entry(kind.clone()).or_default() += n;
        }
        end = end.max(r.last_done.unwrap_or(measure_start));
    }
    latencies.sort_unstable();
    let elapsed = end.duration_since(measure_start).as_secs_f64();
    let ok = latencies.len() as u64;
    let mean = latencies.iter().sum::<u64>().checked_div(ok).unwrap_or(0);

    let mut cleaned = serde_json::Value::Null;
    if cleanup {
        let work = futures::future::join_all(clients.iter().enumerate().map(|(c, client)| {
            let issued: Vec<u64> = results[c * slots_n..(c + 1) * slots_n]
                .iter()
                .map(|r| r.issued)
                .collect();
            let plan = &plan;
            async move { cleanup_client(client, plan, c, &issued).await }
        }));
        let bound = Duration::from_secs_f64(args.cleanup_s);
        let done = match tokio::time::timeout(bound, work).await {
            Ok(all) => {
                all.into_iter().all(|ok| ok)
                    && delete_batch(&clients[0], vec![prefix.clone()]).await
            }
            Err(_) => false,
        };
        if !done {
            eprintln!("cleanup incomplete: nodes may remain under {prefix}");
        }
        cleaned = done.into();
    }
    for client in &clients {
        let _ = client.close().await;
    }

    Ok(serde_json::json!({
        "op": format!("{:?}", args.op).to_lowercase(),
        "servers": addrs,
        "clients": clients_n,
        "in_flight": slots_n,
        "value_bytes": args.value_bytes,
        "prefix": prefix,
        "elapsed_s": elapsed,
        "ok": ok,
        "ops_per_s": if elapsed > 0.0 { ok as f64 / elapsed } else { 0.0 },
        "latency_us": {
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "p999": percentile(&latencies, 0.999),
            "max": latencies.last().copied().unwrap_or(0),
            "mean": mean,
        },
        "errors": errors,
        "cleaned_up": cleaned,
    }))
}

fn print_text(r: &serde_json::Value) {
    println!(
        "{} x {} clients x {} in flight, {} B values: {} ok in {:.2} s = {:.0} ops/s",
        r["op"].as_str().unwrap_or("?"),
        r["clients"],
        r["in_flight"],
        r["value_bytes"],
        r["ok"],
        r["elapsed_s"].as_f64().unwrap_or(0.0),
        r["ops_per_s"].as_f64().unwrap_or(0.0),
    );
    let l = &r["latency_us"];
    println!(
        "latency us: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {})",
        l["p50"], l["p90"], l["p99"], l["p999"], l["max"], l["mean"]
    );
    match r["errors"].as_object() {
        Some(errors) if !errors.is_empty() => {
            let list: Vec<String> = errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("errors: {}", list.join(", "));
        }
        _ => println!("errors: none"),
    }
    if let Some(line) = r["server"]["storage_closed"].as_str() {
        println!("server: {line}");
    }
}

/// One write of the failover run: when it was issued and answered, and its error if any.
#[derive(Debug)]
struct Attempt {
    start: Instant,
    done: Instant,
    error: Option<String>,
}

/// Milliseconds from `from` to `to` (negative if `to` is earlier).
fn ms_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1e3
    } else {
        -(from.duration_since(to).as_secs_f64() * 1e3)
    }
}

/// `--measure-failover`: writes with one request in flight, SIGKILLs `--kill-pid`, and
/// reports how long the writes stopped succeeding.
async fn run_failover(args: &Args, addrs: &[String]) -> Result<serde_json::Value, BoxError> {
    let pid = args.kill_pid.ok_or("--measure-failover needs --kill-pid")?;
    if !matches!(args.op, OpKind::Create | OpKind::Set) {
        return Err("--measure-failover writes: use --op create or --op set".into());
    }
    let client = Client::connect(ClientConfig::new(addrs.iter().cloned()))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", addrs.join(",")))?;
    let millis = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = format!("/failover-{}-{millis}", std::process::id());
    let key = format!("{prefix}/k");
    let value = vec![b'x'; args.value_bytes];
    client
        .create(&prefix, Vec::new(), CreateMode::Persistent)
        .await?;
    client
        .create(&key, value.clone(), CreateMode::Persistent)
        .await?;

    let t0 = Instant::now();
    let kill_at = t0 + Duration::from_secs_f64(args.kill_after_s);
    let hard_end = kill_at + Duration::from_secs_f64(args.failover_max_s);
    let killed: Arc<std::sync::OnceLock<(Instant, Instant, bool, SystemTime)>> = Arc::default();
    let killer = {
        let killed = killed.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(kill_at.into()).await;
            let before = Instant::now();
            let sent = tokio::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .await
                .is_ok_and(|s| s.success());
            let after = Instant::now();
            let _ = killed.set((before, after, sent, SystemTime::now()));
        })
    };

    let after_kill = Duration::from_secs_f64(args.after_kill_s);
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut first_ok_after_kill: Option<Instant> = None;
    let mut i = 0u64;
    loop {
        let start = Instant::now();
        if start >= hard_end {
            break;
        }
        if let Some(&(_, kill_done, _, _)) = killed.get() {
            if first_ok_after_kill.is_some_and(|t| start >= t + after_kill) {
                break;
            }
            if first_ok_after_kill.is_none() {
                first_ok_after_kill = attempts
                    .iter()
                    .find(|a| a.error.is_none() && a.done > kill_done)
                    .map(|a| a.done);
                if first_ok_after_kill.is_some() {
                    continue;
                }
            }
        }
        let n = i;
        i += 1;
        let op = async {
            if args.op == OpKind::Create {
                let path = format!("{prefix}/s-{n}");
                client
                    .create(&path, value.clone(), CreateMode::Persistent)
                    .await
                    .map(drop)
            } else {
                client.set_data(&key, value.clone(), None).await.map(drop)
            }
        };
        let error = match tokio::time::timeout_at(hard_end.into(), op).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(error_kind(&e)),
            Err(_) => Some("NoAnswerBeforeFailoverMax".to_string()),
        };
        let failed = error.is_some();
        attempts.push(Attempt {
            start,
            done: Instant::now(),
            error,
        });
        if failed {
            // Do not spin on an error that comes back at once.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    killer.abort();
    let (kill_before, kill_after, sent, kill_wall) =
        *killed.get().ok_or("the kill never happened")?;
    if !sent {
        return Err(format!("kill -KILL {pid} failed").into());
    }
    let k = kill_after;

    let oks: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_none()).collect();
    let last_ok_before = oks.iter().filter(|a| a.done <= k).map(|a| a.done).max();
    let first_ok = oks.iter().find(|a| a.done > k).map(|a| a.done);
    let first_ok_issued_after = oks.iter().find(|a| a.start > k).map(|a| a.done);
    let mut max_gap_ms = 0f64;
    let mut prev = t0;
    for a in &oks {
        max_gap_ms = max_gap_ms.max(ms_between(prev, a.done));
        prev = a.done;
    }
    let spanning = attempts.iter().find(|a| a.start <= k && a.done > k);
    let mut before_us: Vec<u64> = oks
        .iter()
        .filter(|a| a.done <= kill_before)
        .map(|a| a.done.duration_since(a.start).as_micros() as u64)
        .collect();
    before_us.sort_unstable();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_times = Vec::new();
    for a in attempts.iter().filter(|a| a.error.is_some()) {
        let kind = a.error.clone().unwrap_or_default();
        *errors.entry(kind.clone()).or_default() += 1;
        if error_times.len() < 20 {
            error_times.push(serde_json::json!({
                "kind": kind,
                "issued_ms": ms_between(k, a.start),
                "answered_ms": ms_between(k, a.done),
            }));
        }
    }

    // Best-effort cleanup, bounded.
    let cleanup = async {
        let mut paths: Vec<String> = if args.op == OpKind::Create {
            (0..i).map(|n| format!("{prefix}/s-{n}")).collect()
        } else {
            Vec::new()
        };
        paths.push(key.clone());
        let mut ok = true;
        for batch in paths.chunks(256) {
            ok &= delete_batch(&client, batch.to_vec()).await;
        }
        ok && delete_batch(&client, vec![prefix.clone()]).await
    };
    let cleaned = tokio::time::timeout(Duration::from_secs_f64(args.cleanup_s), cleanup)
        .await
        .unwrap_or(false);
    if !cleaned {
        eprintln!("cleanup incomplete: nodes may remain under {prefix}");
    }
    let _ = client.close().await;

    Ok(serde_json::json!({
        "mode": "failover",
        "op": format!("{:?}", args.op).to_lowercase(),
        "servers": addrs,
        "kill_pid": pid,
        "kill_cmd_ms": ms_between(kill_before, kill_after),
        "kill_unix_ms": kill_wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "kill_to_first_ok_ms": first_ok.map(|t| ms_between(k, t)),
        "kill_to_first_ok_issued_after_kill_ms": first_ok_issued_after.map(|t| ms_between(k, t)),
        "outage_ms": match (last_ok_before, first_ok) {
            (Some(a), Some(b)) => Some(ms_between(a, b)),
            _ => None,
        },
        "last_ok_before_kill_ms": last_ok_before.map(|t| ms_between(k, t)),
        "max_gap_between_oks_ms": max_gap_ms,
        "write_spanning_kill": spanning.map(|a| serde_json::json!({
            "issued_ms": ms_between(k, a.start),
            "answered_ms": ms_between(k, a.done),
            "error": a.error,
        })),
        "writes_before_kill": before_us.len(),
        "latency_before_kill_us": {
            "p50": percentile(&before_us, 0.50),
            "p99": percentile(&before_us, 0.99),
            "max": before_us.last().copied().unwrap_or(0),
        },
        "writes_ok": oks.len(),
        "writes_total": attempts.len(),
        "errors": errors,
        "error_times": error_times,
        "cleaned_up": cleaned,
    }))
}

fn print_failover(r: &serde_json::Value) {
    let ms = |k: &str| match r[k].as_f64() {
        Some(v) => format!("{v:.1} ms"),
        None => "none".to_string(),
    };
    println!(
        "failover: kill -> first ok write {}, (first ok write issued after the kill {}), \
         no successful write for {}, longest gap between successes {}",
        ms("kill_to_first_ok_ms"),
        ms("kill_to_first_ok_issued_after_kill_ms"),
        ms("outage_ms"),
        ms("max_gap_between_oks_ms"),
    );
    println!(
        "writes: {} ok of {}, before the kill p50 {} us p99 {} us; spanning the kill: {}",
        r["writes_ok"],
        r["writes_total"],
        r["latency_before_kill_us"]["p50"],
        r["latency_before_kill_us"]["p99"],
        r["write_spanning_kill"],
    );
    match r["errors"].as_object() {
        Some(errors) if !errors.is_empty() => {
            let list: Vec<String> = errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("errors: {} (times: {})", list.join(", "), r["error_times"]);
        }
        _ => println!("errors: none"),
    }
}
