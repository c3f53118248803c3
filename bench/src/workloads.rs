//! The workloads. Each call is one run (one repetition) on one target and returns a
//! [`RunOutcome`]; the driver repeats them and interleaves the targets.

use crate::cluster::Cluster;
use crate::stats::{thin, Dist};
use crate::targets::{key_name, lock_name, Conn, Kind, Target};
use crate::BoxError;
use futures::future::join_all;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

/// Most latency samples kept per run in the JSON (evenly spaced in sorted order).
const KEEP_SAMPLES: usize = 500;

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// Operations (lock cycles, writes, reads, creations) completed per second of the
    /// measured window; `None` for latency-only workloads.
    pub ops_per_s: Option<f64>,
    /// Latency of each measured operation, in ms.
    pub latency: Dist,
    /// Up to [`KEEP_SAMPLES`] of those latencies, sorted.
    pub samples_ms: Vec<f64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Anything else worth knowing about the run (the node killed, stuck clients).
    pub note: Option<String>,
    /// CPU time the three server processes used in the measured window, per operation
    /// (ms), from /proc: what decides throughput once the cores are saturated.
    pub server_cpu_ms_per_op: Option<f64>,
    /// The same for this driver process (the clients), which shares the machine.
    pub client_cpu_ms_per_op: Option<f64>,
}

impl RunOutcome {
    fn new(
        ops_per_s: Option<f64>,
        latencies: &[f64],
        errors: u64,
        first_error: Option<String>,
    ) -> Self {
        RunOutcome {
            ops_per_s,
            latency: Dist::of(latencies),
            samples_ms: thin(latencies, KEEP_SAMPLES),
            errors,
            first_error,
            note: None,
            server_cpu_ms_per_op: None,
            client_cpu_ms_per_op: None,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CPU time (user + system) of a process so far, in ms (`None` if it is gone).
fn cpu_ms(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split(' ').collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based), in clock
    // ticks of 10 ms (USER_HZ is 100 on Linux).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10.0)
}

/// CPU ms of the servers (summed) and of this process.
fn cpu_snapshot(servers: &[u32]) -> (Option<f64>, Option<f64>) {
    let mut total = 0.0;
    for pid in servers {
        match cpu_ms(&pid.to_string()) {
            Some(ms) => total += ms,
            None => return (None, cpu_ms("self")),
        }
    }
    ((!servers.is_empty()).then_some(total), cpu_ms("self"))
}

/// Opens `n` pinned connections, a few dozen at a time, within 60 s.
async fn connect_many(target: &Target, n: usize) -> Result<Vec<Arc<Conn>>, BoxError> {
    let work = async {
        let mut conns = Vec::with_capacity(n);
        let indices: Vec<usize> = (0..n).collect();
        for chunk in indices.chunks(32) {
            for r in join_all(chunk.iter().map(|&c| target.connect_pinned(c))).await {
                conns.push(Arc::new(r?));
            }
        }
        Ok::<_, BoxError>(conns)
    };
    timeout(Duration::from_secs(60), work)
        .await
        .map_err(|_| format!("connecting {n} clients took over 60 s"))?
}

/// Closes connections (ends their sessions and leases), 30 s at most.
async fn close_all(conns: Vec<Arc<Conn>>) {
    let closes = conns.into_iter().map(|c| async move {
        if let Ok(conn) = Arc::try_unwrap(c) {
            conn.close().await;
        }
    });
    let _ = timeout(Duration::from_secs(30), join_all(closes)).await;
}

/// What each client of a closed loop does, again and again.
#[derive(Debug, Clone, Copy)]
pub enum LoadOp {
    /// Acquire and release one of `locks` lock names, chosen uniformly.
    Lock { locks: usize },
    /// Overwrite one of `keys` keys (16-byte values).
    Put { keys: usize },
    /// Read one of `keys` keys.
    Get { keys: usize },
    /// Create a lease on the client's connection (revoked in the background).
    Lease,
}

async fn one_op(conn: &Conn, kind: Kind, op: LoadOp, rng: &mut StdRng) -> Result<(), BoxError> {
    match op {
        LoadOp::Lock { locks } => {
            let name = lock_name(kind, rng.gen_range(0..locks.max(1)));
            let held = conn.acquire(&name).await?;
            conn.release(held).await
        }
        LoadOp::Put { keys } => {
            let key = key_name(kind, rng.gen_range(0..keys.max(1)));
            conn.put(&key, b"0123456789abcdef").await
        }
        LoadOp::Get { keys } => {
            conn.get(&key_name(kind, rng.gen_range(0..keys.max(1))))
                .await
        }
        LoadOp::Lease => match conn.lease_cycle().await? {
            Some(_) => Ok(()),
            None => Err("no leases on this target".into()),
        },
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

/// `clients` clients (own connection and session each, spread over the nodes), each
/// doing `op` in a closed loop: `warmup` unmeasured, then `duration` measured. An
/// operation counts if it started and finished inside the measured window.
pub async fn closed_loop(
    target: &Target,
    servers: &[u32],
    clients: usize,
    op: LoadOp,
    warmup: Duration,
    duration: Duration,
) -> Result<RunOutcome, BoxError> {
    let conns = connect_many(target, clients).await?;
    let measure_start = Instant::now() + warmup;
    let end = measure_start + duration;
    let cpu = {
        let servers = servers.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_start).await;
            let a = cpu_snapshot(&servers);
            tokio::time::sleep_until(end).await;
            let b = cpu_snapshot(&servers);
            (a, b)
        })
    };
    let kind = target.kind;
    let mut tasks = Vec::with_capacity(clients);
    for (c, conn) in conns.iter().enumerate() {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64 * 7919 + 1);
            let mut tally = Tally::default();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = one_op(&conn, kind, op, &mut rng).await;
                let t1 = Instant::now();
                match r {
                    Ok(()) => {
                        if t0 >= measure_start && t1 <= end {
                            tally.latencies.push(ms(t1 - t0));
                        }
                    }
                    Err(e) => {
                        if t0 >= measure_start {
                            tally.errors += 1;
                            tally.first_error.get_or_insert_with(|| e.to_string());
                        }
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    let mut stuck = 0;
    let grace = end + Duration::from_secs(15);
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(grace, task).await {
            Ok(Ok(t)) => {
                all.latencies.extend(t.latencies);
                all.errors += t.errors;
                if all.first_error.is_none() {
                    all.first_error = t.first_error;
                }
            }
            _ => {
                abort.abort();
                stuck += 1;
            }
        }
    }
    close_all(conns).await;
    let rate = all.latencies.len() as f64 / duration.as_secs_f64();
    let mut out = RunOutcome::new(Some(rate), &all.latencies, all.errors, all.first_error);
    let ops = all.latencies.len() as f64;
    if let Ok(((s0, c0), (s1, c1))) = cpu.await {
        if ops > 0.0 {
            out.server_cpu_ms_per_op = s0.zip(s1).map(|(a, b)| (b - a) / ops);
            out.client_cpu_ms_per_op = c0.zip(c1).map(|(a, b)| (b - a) / ops);
        }
    }
    if stuck > 0 {
        out.note = Some(format!(
            "{stuck} clients still busy 15 s after the end, aborted"
        ));
    }
    Ok(out)
}

/// One client acquires and releases one lock again and again, alone. With a `pause`,
/// every cycle sleeps that long between its acquire and its release (not counted), so
/// each release is a write after the cluster sat idle. Paused and back-to-back cycles
/// are separate runs: a back-to-back cycle right after an idle release is slower
/// (about 0.15 ms on the machine of docs/BENCHMARKS.md), so interleaving them would
/// count part of the idle cost in the back-to-back cell.
pub async fn uncontended(
    target: &Target,
    node: usize,
    warmup: usize,
    cycles: usize,
    pause: Duration,
) -> Result<RunOutcome, BoxError> {
    let conn = target.connect_pinned(node).await?;
    let name = lock_name(target.kind, 0);
    let mut tally = Tally::default();
    for i in 0..warmup + cycles {
        let mut paused_for = Duration::ZERO;
        let t0 = Instant::now();
        let r = timeout(Duration::from_secs(10) + pause, async {
            let held = conn.acquire(&name).await?;
            if !pause.is_zero() {
                let p0 = Instant::now();
                sleep(pause).await;
                paused_for = p0.elapsed();
            }
            conn.release(held).await
        })
        .await
        .unwrap_or_else(|_| Err("no answer in 10 s".into()));
        let t1 = Instant::now();
        match r {
            Ok(()) if i >= warmup => tally.latencies.push(ms(t1 - t0 - paused_for)),
            Ok(()) => {}
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
                if tally.errors > 20 {
                    break;
                }
            }
        }
    }
    conn.close().await;
    Ok(RunOutcome::new(
        None,
        &tally.latencies,
        tally.errors,
        tally.first_error,
    ))
}

/// Two clients on different nodes take turns on one lock: one holds it, the other
/// waits in the queue (for `queued_for`), the holder releases; the sample is the time
/// from the release call to the waiter's acquire returning. A waiter that gets the lock
/// while it is still held is counted as an error ("exclusion violated").
pub async fn handoff(
    target: &Target,
    node: usize,
    warmup: usize,
    n: usize,
    queued_for: Duration,
) -> Result<RunOutcome, BoxError> {
    let a = Arc::new(target.connect_pinned(node).await?);
    let b = Arc::new(target.connect_pinned(node + 1).await?);
    let name = lock_name(target.kind, 1);
    let mut tally = Tally::default();
    let (mut holder, mut waiter) = (a.clone(), b.clone());
    let mut held = timeout(Duration::from_secs(10), holder.acquire(&name))
        .await
        .map_err(|_| "first acquire: no answer in 10 s")??;
    for i in 0..warmup + n {
        let w = waiter.clone();
        let lock = name.clone();
        let task = tokio::spawn(async move {
            let r = w.acquire(&lock).await;
            (r, Instant::now())
        });
        sleep(queued_for).await;
        if task.is_finished() {
            tally.errors += 1;
            tally
                .first_error
                .get_or_insert_with(|| "exclusion violated: the waiter got a held lock".into());
        }
        let t0 = Instant::now();
        holder.release(held).await?;
        let (r, t1) = timeout(Duration::from_secs(10), task)
            .await
            .map_err(|_| "the waiter got no grant within 10 s of the release")??;
        held = r?;
        if i >= warmup {
            tally.latencies.push(ms(t1 - t0));
        }
        std::mem::swap(&mut holder, &mut waiter);
    }
    holder.release(held).await?;
    drop((holder, waiter));
    close_all(vec![a, b]).await;
    Ok(RunOutcome::new(
        None,
        &tally.latencies,
        tally.errors,
        tally.first_error,
    ))
}

/// `workers` loops that each open a new connection with its session (corral, ZooKeeper)
/// or its lease (etcd: connect and `LeaseGrant`), and close it in the background.
pub async fn sessions(
    target: &Target,
    workers: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<RunOutcome, BoxError> {
    let measure_start = Instant::now() + warmup;
    let end = measure_start + duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut closes = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                match timeout(Duration::from_secs(10), target.connect_pinned(w)).await {
                    Ok(Ok(conn)) => {
                        let t1 = Instant::now();
                        if t0 >= measure_start && t1 <= end {
                            tally.latencies.push(ms(t1 - t0));
                        }
                        closes.push(tokio::spawn(conn.close()));
                    }
                    Ok(Err(e)) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| e.to_string());
                        sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        tally.errors += 1;
                        tally
                            .first_error
                            .get_or_insert_with(|| "no session in 10 s".into());
                    }
                }
            }
            let _ = timeout(Duration::from_secs(20), join_all(closes)).await;
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = timeout(Duration::from_secs(60), task)
            .await
            .map_err(|_| "a session worker hung")??;
        all.latencies.extend(t.latencies);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let rate = all.latencies.len() as f64 / duration.as_secs_f64();
    Ok(RunOutcome::new(
        Some(rate),
        &all.latencies,
        all.errors,
        all.first_error,
    ))
}

/// Kills the leader and measures the time from the kill to the first successful
/// acquire issued after it. One client with every node's address; from the kill on, a
/// new acquire attempt (on a fresh lock name, so a node stranded by an earlier attempt
/// cannot block it) starts every `probe_every`, until one succeeds. Then the killed
/// node is started again and the cluster is given time to settle.
pub async fn recovery(
    target: &Target,
    cluster: &Cluster,
    rep: usize,
    probe_every: Duration,
    settle: Duration,
) -> Result<RunOutcome, BoxError> {
    let kind = target.kind;
    let conn = Arc::new(timeout(Duration::from_secs(20), target.connect_all()).await??);
    // The service works before the kill.
    for i in 0..20 {
        let name = lock_name(kind, i);
        let held = timeout(Duration::from_secs(10), conn.acquire(&name)).await??;
        conn.release(held).await?;
    }
    let leader = cluster.leader(target).await?;
    let killed_at = Instant::now();
    let pid = cluster.kill(kind, leader)?;
    let max_attempts = crate::targets::FAILOVER_NAMES / 5;
    let hard_end = killed_at + Duration::from_secs(30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Instant, String>>();
    let mut attempts = Vec::new();
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let mut recovered: Option<Instant> = None;
    let mut next_probe = killed_at;
    while recovered.is_none() && Instant::now() < hard_end {
        if attempts.len() < max_attempts && Instant::now() >= next_probe {
            // Fresh names from the failover range that `prepare` made for ZooKeeper.
            let name =
                crate::targets::failover_lock_name(kind, rep * max_attempts + attempts.len());
            let conn = conn.clone();
            let tx = tx.clone();
            attempts.push(tokio::spawn(async move {
                let r = async {
                    let held = conn.acquire(&name).await?;
                    let at = Instant::now();
                    let _ = conn.release(held).await;
                    Ok::<_, BoxError>(at)
                }
                .await;
                let _ = tx.send(r.map_err(|e| e.to_string()));
            }));
            next_probe += probe_every;
            if attempts.len() >= max_attempts {
                next_probe = hard_end;
            }
        }
        let wait = next_probe
            .min(hard_end)
            .saturating_duration_since(Instant::now());
        if let Ok(Some(r)) = timeout(wait.max(Duration::from_millis(1)), rx.recv()).await {
            match r {
                Ok(at) => recovered = Some(recovered.map_or(at, |r: Instant| r.min(at))),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    for a in &attempts {
        a.abort();
    }
    let n_attempts = attempts.len();
    drop(attempts);
    // Close in the background, bounded: the client may still be reconnecting.
    if let Ok(conn) = Arc::try_unwrap(conn) {
        let _ = timeout(Duration::from_secs(5), conn.close()).await;
    }
    cluster.restart(kind, leader).await?;
    wait_healthy(target, leader).await?;
    sleep(settle).await;
    let Some(at) = recovered else {
        return Err(format!("no acquire succeeded within 30 s of killing node {leader}").into());
    };
    let mut out = RunOutcome::new(None, &[ms(at - killed_at)], errors, first_error);
    out.note = Some(format!(
        "killed node {leader} (pid {pid}), the leader; {n_attempts} attempts started"
    ));
    Ok(out)
}

/// Waits (60 s at most) until a client pinned to node `node` can take a lock.
pub async fn wait_healthy(target: &Target, node: usize) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let conn = target.connect_pinned(node - 1).await?;
            let name = lock_name(target.kind, 2);
            let r = async {
                let held = conn.acquire(&name).await?;
                conn.release(held).await
            }
            .await;
            conn.close().await;
            r
        };
        match timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer in 10 s".into(),
        }
        sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "{} node {node} not healthy within 60 s: {last}",
        target.kind
    )
    .into())
}
