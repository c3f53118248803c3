//! `corral-bench`: corral side by side with etcd and ZooKeeper, in the same run.
//!
//! ```sh
//! bench/run.sh            # installs, builds, starts the three clusters, runs this, stops them
//! ```
//!
//! The driver expects the clusters of `bench/cluster.sh` (3 nodes each on loopback) and
//! runs every workload on every target, repeating each `--runs` times with the targets'
//! order rotated between repetitions, so every ratio comes from runs made minutes apart
//! at most under the same machine load. It prints progress and a table, and writes
//! `results.json`, `results.md` and SVG plots into `--out`. See docs/BENCHMARKS.md.

mod cluster;
mod report;
mod stats;
mod targets;
mod workloads;

use clap::Parser;
use cluster::Cluster;
use report::{CellReport, Metric, RunRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use targets::{Kind, Target};
use tokio::time::{sleep, timeout, Instant};
use workloads::{LoadOp, RunOutcome};

/// Errors of the driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The workloads, in the issue's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Workload {
    /// (1) acquire+release latency, one client, no contention.
    Uncontended,
    /// (2) time from a holder's release to the next waiter's grant.
    Handoff,
    /// (3) acquire/release cycles per second: clients x lock names.
    Throughput,
    /// (4) plain writes and reads per second.
    Kv,
    /// (5) session and lease creation rate.
    Sessions,
    /// (6) leader kill to the next successful acquire.
    Recovery,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmarks corral side by side with etcd and ZooKeeper"
)]
struct Args {
    /// Targets to run, in this order on the first repetition.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "corral,etcd,zk"
    )]
    targets: Vec<Kind>,
    /// corral client addresses (node 1 first).
    #[arg(
        long,
        default_value = "127.0.0.1:24281,127.0.0.1:24282,127.0.0.1:24283"
    )]
    corral: String,
    /// etcd client addresses.
    #[arg(
        long,
        default_value = "127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
    )]
    etcd: String,
    /// ZooKeeper client addresses.
    #[arg(
        long,
        default_value = "127.0.0.1:21811,127.0.0.1:21812,127.0.0.1:21813"
    )]
    zk: String,
    /// The clusters' state directory (pid and log files; see bench/cluster.sh).
    #[arg(long, env = "BENCH_DATA", default_value = "bench/data")]
    bench_data: PathBuf,
    /// The cluster control script (for restarting a killed leader).
    #[arg(long, default_value = "bench/cluster.sh")]
    cluster_script: PathBuf,
    /// Workloads to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "uncontended,handoff,throughput,kv,sessions,recovery"
    )]
    workloads: Vec<Workload>,
    /// Repetitions of every measurement (medians are over these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Throughput: client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Throughput: lock name counts.
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
    locks: Vec<usize>,
    /// Throughput: extra cells as CLIENTSxLOCKS (the issue's target cell by default).
    #[arg(long, value_delimiter = ',', default_value = "64x1000,8x1")]
    extra: Vec<String>,
    /// Unmeasured seconds at the start of every closed-loop run.
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// Measured seconds of every closed-loop run.
    #[arg(long, default_value_t = 4.0)]
    duration_s: f64,
    /// Uncontended: measured cycles per run (after --warmup-cycles).
    #[arg(long, default_value_t = 1000)]
    cycles: usize,
    /// Adds the `uncontended-idle` cell: runs of half as many cycles (after half the
    /// warm-up), each with this pause between its acquire and its release, ms, not
    /// counted in the latency. With 15 (the handoff's queue time) it shows what a write
    /// costs after the cluster sat idle, as the handoff's release does. The
    /// `uncontended` cell stays back to back, in runs of its own.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Uncontended and handoff: unmeasured cycles first.
    #[arg(long, default_value_t = 100)]
    warmup_cycles: usize,
    /// Handoff: measured handoffs per run (fewer for long queue times: a run's queueing
    /// takes at most about 12 s, and at least 30 handoffs are measured).
    #[arg(long, default_value_t = 150)]
    handoffs: usize,
    /// Handoff: how long the waiter waits in the queue before the release, ms; a cell
    /// per value. A waiter queued for less than 100 ms meets etcd's watch before etcd
    /// has synced it (etcd syncs a watch that starts at a past revision every 100 ms),
    /// so 200 shows each service's handoff once its waiter is settled.
    #[arg(long, value_delimiter = ',', default_value = "15,200")]
    queued_ms: Vec<u64>,
    /// Plain writes and reads: client counts.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    kv_clients: Vec<usize>,
    /// Sessions and leases: concurrent creators.
    #[arg(long, default_value_t = 16)]
    session_workers: usize,
    /// Recovery: leader kills per target.
    #[arg(long, default_value_t = 3)]
    recovery_runs: usize,
    /// Recovery: seconds the cluster is given after the killed node is back.
    #[arg(long, default_value_t = 3.0)]
    settle_s: f64,
    /// Seconds of unmeasured lock and write load per target before anything is
    /// measured (JVM JIT, caches).
    #[arg(long, default_value_t = 15.0)]
    global_warmup_s: f64,
    /// A shorter matrix: clients 1,16,64; locks 1,100; 3 s runs; fewer cycles.
    #[arg(long)]
    quick: bool,
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = "bench/results/latest")]
    out: PathBuf,
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// One measurement to repeat on every target.
#[derive(Debug, Clone)]
struct Cell {
    workload: &'static str,
    label: String,
    metric: Metric,
    clients: Option<usize>,
    locks: Option<usize>,
    job: Job,
}

#[derive(Debug, Clone, Copy)]
enum Job {
    /// `idle`: cycles with a pause between acquire and release (see `--pause-ms`).
    Uncontended {
        idle: bool,
    },
    Handoff {
        queued_ms: u64,
    },
    Load {
        clients: usize,
        op: LoadOp,
    },
    Sessions,
    Recovery,
}

fn plan(args: &Args) -> Result<Vec<Cell>, BoxError> {
    let mut cells = Vec::new();
    let mut workloads = args.workloads.clone();
    workloads.sort();
    workloads.dedup();
    for w in workloads {
        match w {
            Workload::Uncontended => {
                cells.push(Cell {
                    workload: "uncontended",
                    label: "acquire+release, 1 client".into(),
                    metric: Metric::Latency,
                    clients: Some(1),
                    locks: Some(1),
                    job: Job::Uncontended { idle: false },
                });
                if args.pause_ms > 0 {
                    cells.push(Cell {
                        workload: "uncontended-idle",
                        label: format!("acquire, {} ms idle, release", args.pause_ms),
                        metric: Metric::Latency,
                        clients: Some(1),
                        locks: Some(1),
                        job: Job::Uncontended { idle: true },
                    });
                }
            }
            Workload::Handoff => {
                for (i, &queued_ms) in args.queued_ms.iter().enumerate() {
                    // The first keeps the plain name (results and plots of earlier runs).
                    let workload: &'static str = if i == 0 {
                        "handoff"
                    } else {
                        Box::leak(format!("handoff-{queued_ms}ms").into_boxed_str())
                    };
                    cells.push(Cell {
                        workload,
                        label: format!("release to next grant, waiter queued {queued_ms} ms"),
                        metric: Metric::Latency,
                        clients: Some(2),
                        locks: Some(1),
                        job: Job::Handoff { queued_ms },
                    });
                }
            }
            Workload::Throughput => {
                let mut pairs: Vec<(usize, usize)> = Vec::new();
                for &l in &args.locks {
                    for &c in &args.clients {
                        pairs.push((c, l));
                    }
                }
                for e in args.extra.iter().filter(|e| !e.trim().is_empty()) {
                    let (c, l) = e
                        .split_once('x')
                        .ok_or_else(|| format!("--extra {e}: expected CLIENTSxLOCKS"))?;
                    pairs.push((c.parse()?, l.parse()?));
                }
                let mut seen = std::collections::BTreeSet::new();
                pairs.retain(|p| seen.insert(*p));
                for (c, l) in pairs {
                    cells.push(Cell {
                        workload: "throughput",
                        label: format!("{c} clients, {l} locks"),
                        metric: Metric::Throughput,
                        clients: Some(c),
                        locks: Some(l),
                        job: Job::Load {
                            clients: c,
                            op: LoadOp::Lock { locks: l },
                        },
                    });
                }
            }
            Workload::Kv => {
                for &c in &args.kv_clients {
                    for (name, op) in [
                        ("write", LoadOp::Put { keys: 1000 }),
                        ("read", LoadOp::Get { keys: 1000 }),
                    ] {
                        cells.push(Cell {
                            workload: if name == "write" {
                                "kv-write"
                            } else {
                                "kv-read"
                            },
                            label: format!("{name}s, {c} clients, 1000 keys"),
                            metric: Metric::Throughput,
                            clients: Some(c),
                            locks: None,
                            job: Job::Load { clients: c, op },
                        });
                    }
                }
            }
            Workload::Sessions => {
                let n = args.session_workers;
                cells.push(Cell {
                    workload: "sessions",
                    label: format!("new connection + session/lease, {n} at once"),
                    metric: Metric::Throughput,
                    clients: Some(n),
                    locks: None,
                    job: Job::Sessions,
                });
                cells.push(Cell {
                    workload: "leases",
                    label: format!("lease on an open connection, {n} clients"),
                    metric: Metric::Throughput,
                    clients: Some(n),
                    locks: None,
                    job: Job::Load {
                        clients: n,
                        op: LoadOp::Lease,
                    },
                });
            }
            Workload::Recovery => cells.push(Cell {
                workload: "recovery",
                label: "leader SIGKILL to next acquire".into(),
                metric: Metric::Latency,
                clients: Some(1),
                locks: None,
                job: Job::Recovery,
            }),
        }
    }
    Ok(cells)
}

struct Ctx {
    args: Args,
    cluster: Cluster,
    warmup: Duration,
    duration: Duration,
}

async fn run_one(
    ctx: &Ctx,
    cell: &Cell,
    target: &Target,
    rep: usize,
) -> Result<RunOutcome, BoxError> {
    let args = &ctx.args;
    if target.kind == Kind::Etcd {
        compact_etcd(target).await?;
    }
    match cell.job {
        Job::Uncontended { idle } => {
            // The idle cell runs half as many cycles: each takes the pause besides.
            let (warmup, cycles, pause) = if idle {
                let pause = Duration::from_millis(args.pause_ms);
                (args.warmup_cycles / 2, args.cycles / 2, pause)
            } else {
                (args.warmup_cycles, args.cycles, Duration::ZERO)
            };
            workloads::uncontended(target, rep, warmup, cycles, pause).await
        }
        Job::Handoff { queued_ms } => {
            let queued = Duration::from_millis(queued_ms);
            let n = args
                .handoffs
                .min((12_000 / queued_ms.max(1)) as usize)
                .max(30);
            let warmup = (args.warmup_cycles / 5).min(n / 3);
            workloads::handoff(target, rep, warmup, n, queued).await
        }
        Job::Load { clients, op } => {
            if matches!(op, LoadOp::Lease) && target.kind == Kind::Zk {
                return Err("ZooKeeper has no leases (its sessions are in the row above)".into());
            }
            let servers = ctx.server_pids(target.kind);
            workloads::closed_loop(target, &servers, clients, op, ctx.warmup, ctx.duration).await
        }
        Job::Sessions => {
            workloads::sessions(target, args.session_workers, ctx.warmup, ctx.duration).await
        }
        Job::Recovery => {
            let settle = Duration::from_secs_f64(args.settle_s);
            workloads::recovery(target, &ctx.cluster, rep, Duration::from_millis(20), settle).await
        }
    }
}

/// Compacts etcd's history to its current revision (etcd slows as history grows).
async fn compact_etcd(target: &Target) -> Result<(), BoxError> {
    let work = async {
        let urls: Vec<String> = target
            .endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect();
        let mut client = etcd_client::Client::connect(&urls, None).await?;
        let rev = client
            .get("bench/compact-probe", None)
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        if rev > 1 {
            let options = etcd_client::CompactionOptions::new().with_physical();
            match client.compact(rev, Some(options)).await {
                Ok(_) => {}
                // Compacted already (nothing written since).
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok::<_, BoxError>(())
    };
    timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| "etcd compaction took over 30 s")?
}

/// Connects (retrying for up to 90 s: a cluster may still be electing), creates the
/// lock directories and keys, and puts unmeasured load on the target.
async fn prepare(ctx: &Ctx, target: &Target, max_locks: usize) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let conn = loop {
        match timeout(Duration::from_secs(10), target.connect_pinned(0)).await {
            Ok(Ok(conn)) => match timeout(Duration::from_secs(10), conn.put_probe()).await {
                Ok(Ok(())) => break conn,
                Ok(Err(e)) if Instant::now() > deadline => return Err(e),
                Err(_) if Instant::now() > deadline => return Err("no answer".into()),
                _ => conn.close().await,
            },
            Ok(Err(e)) if Instant::now() > deadline => return Err(e),
            Err(_) if Instant::now() > deadline => return Err("connect timed out".into()),
            _ => {}
        }
        sleep(Duration::from_millis(500)).await;
    };
    let t = Instant::now();
    timeout(
        Duration::from_secs(300),
        conn.prepare(max_locks, 1000, b"0123456789abcdef"),
    )
    .await
    .map_err(|_| "preparing the lock directories and keys took over 300 s")??;
    conn.close().await;
    eprintln!(
        "  {}: prepared in {:.1} s",
        target.kind,
        t.elapsed().as_secs_f64()
    );
    if ctx.args.global_warmup_s > 0.0 {
        let d = Duration::from_secs_f64(ctx.args.global_warmup_s / 2.0);
        let locks = workloads::closed_loop(
            target,
            &[],
            32,
            LoadOp::Lock { locks: 100 },
            Duration::ZERO,
            d,
        )
        .await?;
        let puts = workloads::closed_loop(
            target,
            &[],
            32,
            LoadOp::Put { keys: 1000 },
            Duration::ZERO,
            d,
        )
        .await?;
        eprintln!(
            "  {}: warmed up: {:.0} lock cycles/s, {:.0} writes/s",
            target.kind,
            locks.ops_per_s.unwrap_or(0.0),
            puts.ops_per_s.unwrap_or(0.0)
        );
    }
    if target.kind == Kind::Etcd {
        compact_etcd(target).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.clients = vec![1, 16, 64];
        args.locks = vec![1, 100];
        args.duration_s = args.duration_s.min(3.0);
        args.cycles = args.cycles.min(500);
        args.handoffs = args.handoffs.min(60);
        args.global_warmup_s = args.global_warmup_s.min(10.0);
    }
    if let Err(e) = run(args).await {
        eprintln!("corral-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let cells = plan(&args)?;
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|&kind| Target {
            kind,
            endpoints: split(match kind {
                Kind::Corral => &args.corral,
                Kind::Etcd => &args.etcd,
                Kind::Zk => &args.zk,
            }),
        })
        .collect();
    if targets.is_empty() {
        return Err("no targets".into());
    }
    let max_locks = args
        .locks
        .iter()
        .copied()
        .chain([1000])
        .max()
        .unwrap_or(1000);
    let ctx = Ctx {
        cluster: Cluster {
            dir: args.bench_data.clone(),
            script: args.cluster_script.clone(),
        },
        warmup: Duration::from_secs_f64(args.warmup_s),
        duration: Duration::from_secs_f64(args.duration_s),
        args,
    };
    std::fs::create_dir_all(&ctx.args.out)?;
    let started = std::time::SystemTime::now();
    let clock = Instant::now();

    eprintln!("== preparing and warming up {} target(s)", targets.len());
    for target in &targets {
        prepare(&ctx, target, max_locks)
            .await
            .map_err(|e| format!("{}: {e}", target.kind))?;
    }

    let total: usize = cells
        .iter()
        .map(|c| {
            let reps = if matches!(c.job, Job::Recovery) {
                ctx.args.recovery_runs
            } else {
                ctx.args.runs
            };
            let n = targets
                .iter()
                .filter(|t| !(c.workload == "leases" && t.kind == Kind::Zk))
                .count();
            reps * n
        })
        .sum();
    let mut done = 0;
    let mut reports = Vec::new();
    eprintln!("== {} cells, {total} runs", cells.len());
    for cell in &cells {
        let reps = if matches!(cell.job, Job::Recovery) {
            ctx.args.recovery_runs
        } else {
            ctx.args.runs
        };
        let mut runs: BTreeMap<Kind, Vec<RunRecord>> = BTreeMap::new();
        for rep in 0..reps {
            for i in 0..targets.len() {
                let target = &targets[(i + rep) % targets.len()];
                if cell.workload == "leases" && target.kind == Kind::Zk {
                    continue; // ZooKeeper has no leases: its sessions are the row above.
                }
                let bound = ctx.warmup + ctx.duration + Duration::from_secs(180);
                let t = Instant::now();
                let result = timeout(bound, run_one(&ctx, cell, target, rep))
                    .await
                    .unwrap_or_else(|_| Err(format!("run took over {} s", bound.as_secs()).into()));
                done += 1;
                let record = RunRecord::new(rep, result);
                eprintln!(
                    "[{done:>3}/{total}] {:>5.0}s {:<11} {:<42} {:<9} run {}/{}: {} ({:.1} s)",
                    clock.elapsed().as_secs_f64(),
                    cell.workload,
                    cell.label,
                    target.kind.to_string(),
                    rep + 1,
                    reps,
                    record.brief(cell.metric),
                    t.elapsed().as_secs_f64()
                );
                runs.entry(target.kind).or_default().push(record);
            }
        }
        reports.push(CellReport::new(
            cell.workload,
            cell.label.clone(),
            cell.metric,
            cell.clients,
            cell.locks,
            runs,
        ));
    }

    let meta = report::Meta::gather(started, clock.elapsed(), &ctx.args_json(), &targets).await;
    let table = report::table(&reports, &args_targets(&targets));
    println!("{table}");
    report::write_all(&ctx.args.out, &meta, &reports, &targets)?;
    eprintln!("results in {}", ctx.args.out.display());
    Ok(())
}

fn args_targets(targets: &[Target]) -> Vec<Kind> {
    targets.iter().map(|t| t.kind).collect()
}

impl Ctx {
    /// The pids of the target's three server processes (empty if any is unknown).
    fn server_pids(&self, kind: Kind) -> Vec<u32> {
        let pids: Vec<u32> = (1..=3).filter_map(|i| self.cluster.pid(kind, i)).collect();
        if pids.len() == 3 {
            pids
        } else {
            Vec::new()
        }
    }

    fn args_json(&self) -> serde_json::Value {
        let a = &self.args;
        serde_json::json!({
            "runs": a.runs,
            "clients": a.clients,
            "locks": a.locks,
            "extra": a.extra,
            "warmup_s": a.warmup_s,
            "duration_s": a.duration_s,
            "cycles": a.cycles,
            "warmup_cycles": a.warmup_cycles,
            "handoffs": a.handoffs,
            "queued_ms": a.queued_ms,
            "kv_clients": a.kv_clients,
            "session_workers": a.session_workers,
            "recovery_runs": a.recovery_runs,
            "global_warmup_s": a.global_warmup_s,
            "quick": a.quick,
            "session_ttl_s": targets::SESSION_TTL.as_secs(),
        })
    }
}
