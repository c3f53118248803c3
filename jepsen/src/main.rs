//! `corral-jepsen`: Jepsen-style fault testing of real corral clusters. See
//! `jepsen/README.md`.

mod analyze;
mod checker;
mod history;
mod nemesis;
mod netns;
mod nodes;
mod report;
mod run;
mod worker;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "corral-jepsen",
    about = "Jepsen-style fault testing of real corral clusters (needs root)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Re-check a run directory's history.jsonl (no root needed).
    Check {
        dir: PathBuf,
        /// Time limit of each linearizability search, in seconds.
        #[arg(long, default_value_t = 30)]
        check_time_limit: u64,
        /// Count known corral bugs (README, "Findings") as violations, and fail on an
        /// "unknown" verdict (unless --allow-unknown).
        #[arg(long)]
        strict: bool,
        /// With --strict: an "unknown" verdict (a check that could not decide) does not
        /// fail the run; it is printed as a warning.
        #[arg(long)]
        allow_unknown: bool,
    },
    /// A client process (started by the harness).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Workloads, comma-separated, run at once against one cluster: lock, unfenced,
    /// register, sequential, watch, session, or all.
    #[arg(long, default_value = "lock")]
    workload: String,
    /// Nemeses, comma-separated: partition, loss, kill, pause, clock, all, none.
    #[arg(long, default_value = "partition,kill,pause")]
    nemesis: String,
    /// Seconds of faults (followed by the quiet phase).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Seconds of the final quiet phase (everything healed).
    #[arg(long, default_value_t = 15)]
    quiet: u64,
    /// Cluster size: 1, 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Client processes per workload.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seed of the schedule and of the clients' choices (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Where run directories are created.
    #[arg(long, default_value = "jepsen-runs")]
    out: PathBuf,
    /// The corral server binary (default: `corral` next to this binary).
    #[arg(long)]
    corral_bin: Option<PathBuf>,
    /// Session and lock TTL, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    ttl_ms: u64,
    /// Registers of the register workload.
    #[arg(long, default_value_t = 4)]
    keys: u64,
    /// Server tick, in milliseconds.
    #[arg(long, default_value_t = 20)]
    tick_ms: u64,
    /// Server election timeout, in milliseconds.
    #[arg(long, default_value_t = 400)]
    election_timeout_ms: u64,
    /// Server snapshot (compaction) interval in entries (default: the server's).
    #[arg(long)]
    snapshot_every_entries: Option<u64>,
    /// Server snapshot (compaction) interval in bytes of entries (default: the
    /// server's); small values make the leader mark compaction points often, and lagging
    /// nodes catch up through snapshots.
    #[arg(long)]
    snapshot_every_bytes: Option<u64>,
    /// Turn on test-only fault switches in the servers (e.g. grant_without_predecessor;
    /// needs a corral built with `--features sim`).
    #[arg(long)]
    inject_fault: Option<String>,
    /// Succeed only if the checkers find a violation (for --inject-fault runs).
    #[arg(long)]
    expect_invalid: bool,
    /// Count known corral bugs (jepsen/README.md, "Findings") as violations, and fail
    /// on an "unknown" verdict (unless --allow-unknown).
    #[arg(long)]
    strict: bool,
    /// With --strict: an "unknown" verdict (a check that could not decide) does not fail
    /// the run; it is printed as a warning.
    #[arg(long)]
    allow_unknown: bool,
    /// Install missing tools (iptables) with apt-get.
    #[arg(long, env = "CI")]
    install: bool,
    /// Time limit of each linearizability search, in seconds.
    #[arg(long, default_value_t = 30)]
    check_time_limit: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Worker { spec }) => worker_main(&spec),
        Some(Command::Check {
            dir,
            check_time_limit,
            strict,
            allow_unknown,
        }) => check_main(
            &dir,
            Duration::from_secs(check_time_limit),
            None,
            false,
            strict,
            allow_unknown,
        ),
        None => run_main(cli.run),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn worker_main(spec: &str) -> ExitCode {
    let spec: worker::WorkerSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker: bad spec: {e}");
            return ExitCode::from(2);
        }
    };
    // The client library's own log (reconnects, lock re-reads) goes to the worker's
    // log file in the run directory.
    let filter =
        std::env::var("CORRAL_JEPSEN_CLIENT_LOG").unwrap_or_else(|_| "corral_client=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(worker::run(spec));
    ExitCode::SUCCESS
}

/// What a run knows about itself that its history does not say (`check DIR` reads it
/// back from `results.json`).
struct RunInfo {
    seed: u64,
    nemeses: Vec<String>,
    workloads: Vec<String>,
    excuse_tail: Duration,
}

/// Reads a run's [`RunInfo`] from its `results.json`; what is missing (older runs) is
/// taken from the history: the workloads it has, the default excuse tail.
fn run_info_of(dir: &std::path::Path, history: &[history::Event]) -> RunInfo {
    let prior = std::fs::read_to_string(dir.join("results.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    let strings = |name: &str| -> Option<Vec<String>> {
        prior.as_ref()?.get(name)?.as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
    };
    RunInfo {
        seed: prior
            .as_ref()
            .and_then(|v| v.get("seed")?.as_u64())
            .unwrap_or(0),
        nemeses: strings("nemeses").unwrap_or_default(),
        workloads: strings("requested_workloads").unwrap_or_else(|| analyze::workloads_of(history)),
        excuse_tail: Duration::from_millis(
            prior
                .as_ref()
                .and_then(|v| v.get("excuse_tail_ms")?.as_u64())
                .unwrap_or(checker::lock::DEFAULT_EXCUSE_TAIL_NS / 1_000_000),
        ),
    }
}

fn check_main(
    dir: &std::path::Path,
    time_limit: Duration,
    info: Option<RunInfo>,
    expect_invalid: bool,
    strict: bool,
    allow_unknown: bool,
) -> ExitCode {
    let history = match history::read(&dir.join("history.jsonl")) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("jepsen: {e}");
            return ExitCode::from(2);
        }
    };
    let info = info.unwrap_or_else(|| run_info_of(dir, &history));
    let opts = analyze::Options {
        seed: info.seed,
        nemeses: info.nemeses,
        requested: info.workloads,
        grace: Duration::from_secs(8),
        time_limit,
        excuse_tail: info.excuse_tail,
        strict,
    };
    let summary = analyze::analyze(&history, &opts);
    if let Err(e) = analyze::write_summary(&summary, dir) {
        eprintln!("jepsen: {e}");
    }
    if let Err(e) = report::write(&summary, &history, dir) {
        eprintln!("jepsen: {e}");
    }
    println!("report: {}", dir.join("report.html").display());
    exit_status(summary.valid, expect_invalid, strict, allow_unknown)
}

/// The exit status for an overall verdict: a violation fails (or, with
/// `expect_invalid`, is required); "unknown" fails under `strict` unless
/// `allow_unknown`, and is a warning otherwise.
fn exit_status(
    valid: checker::Validity,
    expect_invalid: bool,
    strict: bool,
    allow_unknown: bool,
) -> ExitCode {
    let invalid = valid == checker::Validity::Invalid;
    if expect_invalid {
        if invalid {
            println!("the injected fault was flagged, as expected");
            ExitCode::SUCCESS
        } else {
            println!("FAILED: the injected fault was NOT flagged");
            ExitCode::FAILURE
        }
    } else if invalid {
        ExitCode::FAILURE
    } else if valid == checker::Validity::Unknown {
        if strict && !allow_unknown {
            println!(
                "FAILED: some checks could not decide (see results.json); --strict needs every \
                 check decided (--allow-unknown accepts undecided checks)"
            );
            ExitCode::FAILURE
        } else {
            println!("warning: some checks could not decide (see results.json)");
            ExitCode::SUCCESS
        }
    } else {
        ExitCode::SUCCESS
    }
}

fn parse_list(list: &str, all: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item {
            "all" => out.extend(all.iter().map(|s| s.to_string())),
            "none" => {}
            other => out.push(other.to_string()),
        }
    }
    out.dedup();
    out
}

fn run_main(args: RunArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jepsen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: RunArgs) -> Result<ExitCode, String> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let workloads = parse_list(&args.workload, &run::WORKLOADS);
    for w in &workloads {
        if !run::WORKLOADS.contains(&w.as_str()) {
            return Err(format!(
                "unknown workload {w:?} ({})",
                run::WORKLOADS.join(", ")
            ));
        }
    }
    if workloads.is_empty() {
        return Err("no workload".into());
    }
    let families: Vec<&str> = nemesis::Family::all().iter().map(|f| f.name()).collect();
    let nemeses = parse_list(&args.nemesis, &families)
        .iter()
        .map(|n| nemesis::Family::parse(n))
        .collect::<Result<Vec<_>, _>>()?;
    if ![1, 3, 5].contains(&args.nodes) {
        return Err("--nodes must be 1, 3 or 5".into());
    }
    let nemesis_names: Vec<String> = nemeses.iter().map(|f| f.name().to_string()).collect();
    println!(
        "jepsen: seed {seed} (replay: --seed {seed} --workload {} --nemesis {} --time {} --nodes {})",
        workloads.join(","),
        if nemesis_names.is_empty() { "none".to_string() } else { nemesis_names.join(",") },
        args.time,
        args.nodes
    );
    let corral_bin = match args.corral_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("corral"),
    };
    if !corral_bin.exists() {
        return Err(format!(
            "no corral binary at {} (build it: cargo build --release --bin corral, or pass \
             --corral-bin)",
            corral_bin.display()
        ));
    }
    let corral_bin = corral_bin.canonicalize().map_err(|e| e.to_string())?;
    netns::check_tools(args.install)?;
    for name in netns::cleanup_leftovers() {
        println!("jepsen: removed namespace {name} left by an earlier run");
    }
    let dir = run::run_dir(&args.out, seed);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir.canonicalize().map_err(|e| e.to_string())?;
    println!("jepsen: run directory {}", dir.display());
    let min_ttl = (args.election_timeout_ms * 3 / 2).max(4 * args.tick_ms);
    let opts = run::Options {
        workloads: workloads.clone(),
        nemeses,
        time: Duration::from_secs(args.time),
        quiet: Duration::from_secs(args.quiet.max(10)),
        nodes: args.nodes,
        clients: args.clients.max(1),
        seed,
        dir: dir.clone(),
        corral_bin,
        ttl_ms: args.ttl_ms.max(min_ttl),
        keys: args.keys.max(1),
        settings: nodes::ServerSettings {
            tick_ms: args.tick_ms,
            election_timeout_ms: args.election_timeout_ms,
            min_session_ttl_ms: min_ttl,
            snapshot_every_entries: args.snapshot_every_entries,
            snapshot_every_bytes: args.snapshot_every_bytes,
            faults: args.inject_fault.clone(),
        },
        check_time_limit: Duration::from_secs(args.check_time_limit),
    };
    let mut net = netns::Net::create(opts.nodes)?;
    // The harness itself (and every client process it starts) lives in the clients'
    // namespace, which no nemesis touches. Entered before the runtime's threads exist.
    netns::enter(&net.client_ns())?;
    let outcome = {
        let rt = runtime()?;
        let result = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
            let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
            tokio::select! {
                r = run::orchestrate(&opts, &net) => r,
                _ = int.recv() => Err("interrupted (SIGINT); cleaning up".to_string()),
                _ = term.recv() => Err("terminated (SIGTERM); cleaning up".to_string()),
            }
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        result
    };
    net.teardown();
    let info = outcome?;
    if let Some(confirmed) = info.faults_confirmed {
        println!("jepsen: servers confirmed their fault switches: {confirmed}");
    }
    println!(
        "jepsen: run finished at {:.1}s (healed at {:.1}s); checking",
        info.end_ns as f64 / 1e9,
        info.heal_ns as f64 / 1e9
    );
    Ok(check_main(
        &dir,
        opts.check_time_limit,
        Some(RunInfo {
            seed,
            nemeses: nemesis_names,
            workloads,
            excuse_tail: Duration::from_millis(opts.ttl_ms + args.election_timeout_ms),
        }),
        args.expect_invalid,
        args.strict,
        args.allow_unknown,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use checker::Validity;

    fn status(v: Validity, expect_invalid: bool, strict: bool, allow_unknown: bool) -> String {
        format!(
            "{:?}",
            exit_status(v, expect_invalid, strict, allow_unknown)
        )
    }

    #[test]
    fn unknown_fails_under_strict_unless_allowed() {
        let ok = format!("{:?}", ExitCode::SUCCESS);
        let failed = format!("{:?}", ExitCode::FAILURE);
        assert_eq!(status(Validity::Unknown, false, true, false), failed);
        assert_eq!(status(Validity::Unknown, false, true, true), ok);
        assert_eq!(status(Validity::Unknown, false, false, false), ok);
        assert_eq!(status(Validity::Valid, false, true, false), ok);
        assert_eq!(status(Validity::Invalid, false, false, true), failed);
        assert_eq!(status(Validity::Invalid, true, true, false), ok);
        assert_eq!(status(Validity::Unknown, true, true, true), failed);
    }

    #[test]
    fn a_recheck_reads_the_requested_workloads_and_tail_back() {
        let dir = std::env::temp_dir().join(format!("corral-jepsen-info-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        std::fs::write(
            dir.join("results.json"),
            r#"{"seed": 7, "nemeses": ["kill"], "requested_workloads": ["lock", "watch"], "excuse_tail_ms": 5000}"#,
        )
        .expect("write");
        let info = run_info_of(&dir, &[]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(info.seed, 7);
        assert_eq!(info.nemeses, vec!["kill"]);
        assert_eq!(info.workloads, vec!["lock", "watch"]);
        assert_eq!(info.excuse_tail, Duration::from_millis(5000));
    }
}
