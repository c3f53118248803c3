//! Deterministic simulation of a corral cluster (the `sim` feature).
//!
//! The whole replicated core runs in one thread from one seed: N real [`Node`] cores (the
//! state machine, session tracker, locks, OmniPaxos and the Paxos storage on the
//! write-ahead log are the production code, not copies) behind a simulated network,
//! simulated disks and simulated clocks, driven by simulated clients. This module is the
//! third shell around the sans-IO node, next to the server and the unit tests.
//!
//! [`Node`]: crate::node::Node
//!
//! # What is simulated
//!
//! - **Time**: a discrete-event loop over simulated microseconds. Every node has its own
//!   clock with its own rate (± `clock_ppm`) and wall-clock offset; its ticks follow its
//!   clock. A paused node (SIGSTOP) is not stepped: messages, client requests and disk
//!   completions wait for it, and when it resumes its clock has jumped (the node's stall
//!   detection must restart its session deadlines).
//! - **Network**: every `PeerMsg` is encoded with bincode when sent and decoded when
//!   delivered (catching serialization bugs), after a seeded delay with occasional
//!   spikes. Links keep the peer transport's contract (`replication/transport.rs`): per
//!   direction, messages arrive in the order sent, a loss ends the link (with every
//!   message sent until it is re-established), and the sender gets `LinkUp` when the
//!   transport reconnects (after a backoff between a tick and an election timeout).
//!   Losses are seeded; partitions cut links: two halves, an isolated leader, follower
//!   or node, a ring (with 3 nodes, a line), one way. Crashes break every link of the
//!   node. A "hostile" mode off that contract (`NetProfile::fifo = false`: reordering,
//!   duplicates, silent losses) exists for exploration, not for CI: OmniPaxos 0.2.4
//!   relies on the contract.
//! - **Disks**: each node has a [`SimDisk`](crate::disk::SimDisk) in memory; a crash
//!   keeps only what was fsynced, and the last write may be torn (a random prefix,
//!   sometimes followed by zeros). Syncs take time; a power cut can hit during a sync
//!   (`crash_in_sync_per_mille`), and a sync can fail (the node exits, as in production,
//!   and restarts). Nodes restart from what their disk holds, through the same recovery
//!   code as the server (`open_cluster_on`), including the empty-disk join that learns a
//!   majority's promise first.
//! - **Clients**: see [`client`]: sessions, keepalives (pings and lease renewals every
//!   TTL/3 on the client's own clock), xids, resends with the same xid on another node
//!   after a broken connection or a request unanswered for a while (not after the
//!   faults heal: then the node must answer), except the writes they give up on when
//!   they resume their session (`give_up_per_mille`: as a caller's timeout does; the
//!   writes' outcome stays unknown), locks under the session or a lease (a hold under
//!   the lease sometimes ended by revoking it: `revoke_per_mille`), one at a
//!   time or two or three at once (`LockMany`, `multi_lock_per_mille`), exclusive,
//!   read-write or semaphores (`lock_families`),
//!   guarded writes (`CheckLock` + `SetData` in a multi), compare-and-sets on a
//!   register's version (`cas_per_mille`: a conditional `SetData`, or a multi with a
//!   `Check` before or after the `SetData`), sync + read, plain reads,
//!   watches (`watch_per_mille`: one-shot data, exist and child watches on the register
//!   keys and the ephemeral nodes, mostly re-armed after their event, and persistent
//!   watches, plain or recursive, on the register keys, `/reg`, `/eph` and the
//!   ephemeral nodes, all re-registered with `SetWatches` first thing after every
//!   reconnect, and sometimes removed with `RemoveWatches`; and pages of `/eph`'s and
//!   `/reg`'s children, checked against the state at their zxid: `sim/reads.rs`),
//!   lock listings and server statuses (`list_locks_per_mille`: `GetLocks`,
//!   `GetLocksPage` and `ServerStatus`, checked the same way), containers of their own
//!   (`container_weight`: nested containers holding the clients' ephemeral leaves,
//!   created, emptied, swapped in multis and read; see [`containers`]),
//!   sequential and ephemeral creates, session close and abandon. Clients, too, have
//!   their own clock rate, and can be paused for longer than their lease. In most seeds
//!   they acknowledge answered xids before writes (`ack_every`; given-up writes count
//!   as answered), so `AckedWrite` entries trim the deduplication tables while copies
//!   of forgotten writes may still be on their way. In a quarter of the seeds the
//!   tables keep 4 to 16 results instead of 1,024 (`dedup_window`), so the window
//!   evicts results too.
//! - **Faults**: a plan drawn from the seed ([`SimConfig::plan`]): partitions, crashes of
//!   one node or of all, pauses of nodes and clients, broken client connections, and
//!   (off by default) wiped disks. After `fault_ms` everything heals.
//! - **Rolling upgrades**: in a quarter of the seeds (`upgrade_at_ms`) the nodes start
//!   as servers of peer protocol 1 or 2 (`old_peer_version`), whose links make every
//!   node propose client writes as `Write` or `OrderedWrite`, and are upgraded one after
//!   another: their links come back at the newest version between upgraded nodes, and
//!   once a node's links to every other member are at it, it proposes `AckedWrite`.
//!   The kinds then share one log, replayed by restarts and carried by snapshots.
//!
//! # What is checked
//!
//! After every step, the invariants of [`check`]: one decided log (no acknowledged write
//! lost), every log sync delivered consistent with its snapshot and, in a promise, with
//! the promiser's log (`check::check_log_sync`), equal state hashes at equal zxids (every time a node's zxid changes, unless
//! `hash_every_change` is off), at most one holder per exclusive lock in every node's
//! state (no reader with a writer, at most `permits` holders of a semaphore), two
//! clients never believing they hold the same lock at the same time unless both holds
//! are shared (reads, or a semaphore's permits, `client::conflicts`) (each
//! client believes until its safe deadline: the send time of its last acknowledged
//! keepalive + TTL − margin), strictly increasing fencing tokens, retried requests taking
//! effect at most once (also after their results were forgotten), a session's
//! `OrderedWrite`s and `AckedWrite`s taking effect in xid order (a write
//! below one its session executed before must be refused), no early session expiry
//! (both on the expiring leader's clock and against the clients' acknowledged
//! keepalives), clients never going back in time, every grant told (a waiter that
//! gets a response with a zxid at or past a grant its server applied after attaching
//! its session has had the `LockGranted` first; one that gives up on a grant its server
//! applied long before, or was answered "queued" after it, was not told), watch events
//! (none without a change
//! since its watch was set, none missing before a response with a later zxid:
//! [`watch`]), reads of child lists, of whether nodes exist, of their stats, of lock listings and of
//! the server status that are the state at their zxid ([`reads`]), containers reaped in the entry that takes their last child and in
//! no other ([`containers`]), and no lease left open by its revocation. After healing: every lock is acquired (a semaphore's permits all at
//! once: none leaked) by a probe client within TTL + 4 elections + lock-delay + 300 ms, every client request
//! is answered, and the nodes converge to one state. Both bounds are extended by the longest time a node spent decoding a snapshot
//! after the heal (one decode in ten is modelled at up to a second, and a leader that
//! installs applies nothing meanwhile). At the end the register history (writes, guarded writes, sync + read) is
//! checked for linearizability with `corral-checker` (Wing–Gong–Lowe, one register per
//! key, unanswered writes as `:info`; a time limit gives "unknown", not a failure).
//!
//! # Seeds, replay, shrinking
//!
//! A run is a pure function of its [`SimConfig`], which [`SimConfig::from_seed`] draws
//! from the seed (the tests may then turn on fault switches or change the fault mix).
//! Running the same configuration twice gives the same trace ([`Report::trace_hash`]).
//! A failing run reports its seed, the command that replays it, and the trace leading to
//! the violation; [`shrink`] then leaves out planned faults one at a time while the same
//! kind of violation still happens, for a shorter reproduction (`CORRAL_SIM_SKIP` lists
//! the faults left out).
//!
//! Environment (read by [`seeds_from_env`] and the tests in `server/tests/sim.rs`):
//! `CORRAL_SIM_SEED=n` runs exactly seed `n`; `CORRAL_SIM_SEEDS=k` runs `k` seeds (from
//! `CORRAL_SIM_FIRST`, default per test);
//! `CORRAL_SIM_SKIP=1,4` leaves out planned faults 1 and 4; `CORRAL_SIM_TRACE=full`
//! prints every trace line as it happens.
//!
//! ```text
//! cargo test -p corral-server --features sim --test sim                 # CI seeds
//! CORRAL_SIM_SEED=42 cargo test -p corral-server --features sim --test sim sim_seeds -- --nocapture
//! CORRAL_SIM_SEEDS=10000 cargo test --release -p corral-server --features sim --test sim sim_soak -- --ignored --nocapture
//! ```
//!
//! # Cost
//!
//! A run is a few seconds of simulated time with 3 (sometimes 5) nodes and 3 to 7
//! clients: roughly 10,000 to 30,000 events. In a debug build that takes about a second
//! (240 seeds in under two minutes on two cores); in release about 20 seeds per second
//! per core. Comparing full state hashes at every zxid change is a good part of that; set
//! `hash_every_change = false` to compare every 16th change only.
//!
//! # What it cannot model
//!
//! The tokio shell itself (`server.rs`: connection tasks, bounded queues, the storage
//! thread, the real transport's handshake, backoff and queue overflow, `learn_promise`,
//! which the simulator re-implements); CPU time (a node's step takes no simulated time,
//! so a slow apply or a huge snapshot never delays anything); disk behaviour beyond
//! "synced bytes survive, the last unsynced write may be torn" (no reordering of
//! unsynced writes across files, no bit rot, no short writes that succeed); wall-clock
//! steps (NTP) and monotonic clocks that stop; memory limits; the real client library
//! (`corral-client`): the simulated clients follow the protocol but are written for the
//! simulator; single-node mode (`Log::Local`, `storage.rs`'s snapshot files); membership changes.

// Test-support code: some pedantic lints are relaxed here.
#![allow(clippy::ptr_arg, clippy::collapsible_if)]

mod check;
mod client;
mod containers;
mod plan;
mod reads;
mod rng;
mod watch;
mod world;

pub use check::{Violation, ViolationKind};
pub use client::HistOp;
pub use plan::{
    DiskProfile, FaultKind, FaultMix, NetProfile, PlannedFault, Shape, SimConfig, Target,
};
pub use rng::SimRng;

use corral_checker::versioned::VersionedRegister;
use corral_checker::{check_partitioned, Limits, Operation, PartitionedOutcome};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Simulated time as seconds with microseconds.
pub fn fmt_time(us: u64) -> String {
    format!("{}.{:06}s", us / 1_000_000, us % 1_000_000)
}

/// Figures of one run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// Peer messages sent.
    pub messages: u64,
    /// Their encoded bytes.
    pub message_bytes: u64,
    /// Peer messages lost.
    pub lost: u64,
    /// Node crashes (including sync failures).
    pub crashes: u64,
    /// Crashes that left a torn last write on disk.
    pub torn_tails: u64,
    /// Successful file syncs.
    pub syncs: u64,
    /// Faults started.
    pub faults: u64,
    /// Snapshots installed.
    pub installs: u64,
    /// Snapshot files written (single node).
    pub snapshots: u64,
    /// Leader changes seen by nodes.
    pub leader_changes: u64,
    /// Entries in the decided log.
    pub entries: u64,
    /// Of them, client writes as `Write` and as `OrderedWrite`.
    pub writes: (u64, u64),
    /// Writes acknowledged to clients.
    pub acked: u64,
    /// State hashes compared.
    pub hash_checks: u64,
    /// Register operations checked for linearizability.
    pub ops: u64,
    /// Of them, compare-and-sets answered: took effect, and `BadVersion`.
    pub cas: (u64, u64),
    /// Containers the clients made that the decided log reaped (`sim/containers.rs`).
    pub reaped: u64,
    /// Multi-lock groups the clients held (every lock of a `LockMany` at once).
    pub groups_held: u64,
    /// Grants of a shared lock (read, semaphore) while another client believed it held
    /// the same lock too.
    pub shared_holds: u64,
    /// Watch events the clients received (each checked: see `watch`).
    pub watch_events: u64,
    /// Times the clients re-registered their watches after a reconnect.
    pub watch_resyncs: u64,
    /// The linearizability verdict.
    pub linearizability: String,
    /// Wall-clock time of the run, ms.
    pub wall_ms: u64,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was run.
    pub config: SimConfig,
    /// The first invariant violated, if any.
    pub violation: Option<Violation>,
    /// The last lines of the trace.
    pub trace: Vec<String>,
    /// A hash of the whole trace: equal for equal runs.
    pub trace_hash: u64,
    /// Figures.
    pub stats: Stats,
}

impl Report {
    /// Whether the run broke an invariant.
    pub fn failed(&self) -> bool {
        self.violation.is_some()
    }

    /// The command that replays this run (`test` names the test that sets the same
    /// configuration apart from the seed).
    pub fn replay_command(&self, test: &str) -> String {
        let mut cmd = format!("CORRAL_SIM_SEED={}", self.config.seed);
        if !self.config.skip_faults.is_empty() {
            let skip: Vec<String> = self
                .config
                .skip_faults
                .iter()
                .map(|i| i.to_string())
                .collect();
            let _ = write!(cmd, " CORRAL_SIM_SKIP={}", skip.join(","));
        }
        let _ = write!(
            cmd,
            " cargo test -p corral-server --features sim --test sim {test} -- --exact --include-ignored --nocapture"
        );
        cmd
    }

    /// A full description: the seed, how to replay, the violation, the configuration,
    /// the faults and the trace.
    pub fn describe(&self, test: &str) -> String {
        let c = &self.config;
        let mut s = String::new();
        match &self.violation {
            Some(v) => {
                let _ = writeln!(s, "corral sim: seed {} FAILED: {v}", c.seed);
            }
            None => {
                let _ = writeln!(s, "corral sim: seed {} passed", c.seed);
            }
        }
        let _ = writeln!(s, "replay: {}", self.replay_command(test));
        let _ = writeln!(
            s,
            "config: {} nodes, {} clients, tick {} ms, election {} ms, TTL {} ms, lock-delay {} \
             ms, snapshot every {} entries or {} bytes, passes of {} inputs within {} µs, clocks ±{} ppm, net {:?}, \
             disk {:?}, switches {:?}, give-ups {}‰, upgrade at {:?} ms from peer protocol \
             {}, acknowledgements every {} xids, multi-locks {}‰, lock kinds {:?}, watches {}‰, \
             lease revocations {}‰, compare-and-sets {}‰, lock listings {}‰, container tasks' weight {}, \
             dedup window {}",
            c.nodes,
            c.clients,
            c.tick_ms,
            c.election_ms,
            c.session_ttl_ms,
            c.lock_delay_ms,
            c.snapshot_every_entries,
            c.snapshot_every_bytes,
            c.pass_inputs,
            c.pass_window_us,
            c.clock_ppm,
            c.net,
            c.disk,
            c.switches,
            c.give_up_per_mille,
            c.upgrade_at_ms,
            c.old_peer_version,
            c.ack_every,
            c.multi_lock_per_mille,
            c.lock_families,
            c.watch_per_mille,
            c.revoke_per_mille,
            c.cas_per_mille,
            c.list_locks_per_mille,
            c.container_weight,
            c.dedup_window
        );
        let _ = writeln!(s, "faults:");
        for (i, f) in c.plan().iter().enumerate() {
            let skipped = if c.skip_faults.contains(&i) {
                " (skipped)"
            } else {
                ""
            };
            let _ = writeln!(s, "  {i}: {f}{skipped}");
        }
        let _ = writeln!(s, "stats: {:?}", self.stats);
        let _ = writeln!(s, "trace ({} lines):", self.trace.len());
        for line in &self.trace {
            let _ = writeln!(s, "  {line}");
        }
        s
    }
}

/// Runs one simulation.
pub fn run(config: &SimConfig) -> Report {
    let started = Instant::now();
    let _switches = crate::faults::set(config.switches);
    let mut world = world::World::new(config.clone());
    world.checks.order_of_all_writes = config.check_order_of_all_writes;
    world.run();
    let mut stats = world.stats.clone();
    stats.entries = world.checks.entries;
    stats.writes = world.checks.writes;
    stats.acked = world.checks.acked;
    stats.hash_checks = world.checks.hash_checks;
    stats.groups_held = world.clients.iter().map(|c| c.groups_held).sum();
    for h in &world.hist {
        match h.output {
            Some(corral_checker::versioned::Output::Cas(true)) => stats.cas.0 += 1,
            Some(corral_checker::versioned::Output::Cas(false)) => stats.cas.1 += 1,
            _ => {}
        }
    }
    stats.watch_events = world.clients.iter().map(|c| c.watches.events).sum();
    stats.watch_resyncs = world.clients.iter().map(|c| c.watches.resyncs).sum();
    if world.violation.is_none() {
        let (verdict, violation, ops) = check_history(&world.hist, config.checker_ms);
        stats.linearizability = verdict;
        stats.ops = ops;
        if let Some(v) = violation {
            world.violation = Some(Violation {
                at_us: world.stats.sim_ms * 1000,
                ..v
            });
        }
    }
    stats.wall_ms = started.elapsed().as_millis() as u64;
    Report {
        config: config.clone(),
        violation: world.violation.take(),
        trace: world.trace.drain(..).collect(),
        trace_hash: world.trace_hash,
        stats,
    }
}

/// Checks the register history; returns the verdict, a violation, and the number of
/// operations checked.
fn check_history(hist: &[HistOp], limit_ms: u64) -> (String, Option<Violation>, u64) {
    let ops: Vec<(String, Operation<_, _>)> = hist
        .iter()
        .filter(|h| !h.dropped)
        .filter(|h| {
            !(matches!(h.input, corral_checker::versioned::Input::Read) && h.output.is_none())
        })
        .map(|h| {
            (
                h.key.clone(),
                Operation {
                    process: h.client as u64,
                    input: h.input.clone(),
                    output: h.output.clone(),
                    call: h.call_us,
                    ret: h.ret_us,
                },
            )
        })
        .collect();
    let n = ops.len() as u64;
    let limits = Limits {
        time: Duration::from_millis(limit_ms),
        ..Limits::default()
    };
    match check_partitioned(&VersionedRegister, ops, limits) {
        PartitionedOutcome::Linearizable => ("linearizable".to_string(), None, n),
        PartitionedOutcome::Unknown(keys) => (format!("unknown: {keys:?}"), None, n),
        PartitionedOutcome::NotLinearizable {
            key,
            violation,
            history,
        } => {
            let mut detail = format!(
                "the history of {key} is not linearizable; longest explanation ({} ops):",
                violation.linearized.len()
            );
            let show = |i: usize, d: &mut String| {
                let o = &history[i];
                let _ = write!(
                    d,
                    "\n    c{} {:?} -> {:?} [{} .. {}]",
                    o.process,
                    o.input,
                    o.output,
                    fmt_time(o.call),
                    o.ret.map(fmt_time).unwrap_or_else(|| "?".to_string())
                );
            };
            let tail = violation.linearized.len().saturating_sub(12);
            for &i in &violation.linearized[tail..] {
                show(i, &mut detail);
            }
            let _ = write!(detail, "\n  cannot place:");
            for &i in &violation.stuck_at {
                show(i, &mut detail);
            }
            let _ = write!(detail, "\n  concurrent or later operations:");
            let stuck_call = violation
                .stuck_at
                .first()
                .map(|&i| history[i].call)
                .unwrap_or(0);
            let mut shown = 0;
            for (i, o) in history.iter().enumerate() {
                let overlaps = o.ret.is_none_or(|r| r >= stuck_call.saturating_sub(50_000));
                if overlaps && !violation.linearized.contains(&i) && shown < 12 {
                    show(i, &mut detail);
                    shown += 1;
                }
            }
            (
                "NOT linearizable".to_string(),
                Some(Violation {
                    kind: ViolationKind::NotLinearizable,
                    at_us: 0,
                    detail,
                }),
                n,
            )
        }
    }
}

/// Leaves out planned faults, one at a time (latest first), as long as the run still
/// breaks the same invariant; at most `max_runs` runs. Returns the smallest failing
/// configuration found and its report.
pub fn shrink(config: &SimConfig, first: &Report, max_runs: usize) -> (SimConfig, Report) {
    let Some(kind) = first.violation.as_ref().map(|v| v.kind) else {
        return (config.clone(), first.clone());
    };
    let plan = config.plan();
    let mut best = config.clone();
    let mut best_report = first.clone();
    let mut runs = 0;
    for i in (0..plan.len()).rev() {
        if best.skip_faults.contains(&i) || runs >= max_runs {
            continue;
        }
        let mut candidate = best.clone();
        candidate.skip_faults.insert(i);
        runs += 1;
        let r = run(&candidate);
        if r.violation.as_ref().is_some_and(|v| v.kind == kind) {
            best = candidate;
            best_report = r;
        }
    }
    (best, best_report)
}

/// The seeds to run: `CORRAL_SIM_SEED` alone if set, else `CORRAL_SIM_SEEDS` (or
/// `default_count`) seeds from `CORRAL_SIM_FIRST` (or `first`).
pub fn seeds_from_env(first: u64, default_count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("CORRAL_SIM_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("CORRAL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default_count);
    let first = std::env::var("CORRAL_SIM_FIRST")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(first);
    (first..first + count).collect()
}

/// The planned faults to leave out, from `CORRAL_SIM_SKIP` (comma-separated indexes).
pub fn skip_from_env() -> std::collections::BTreeSet<usize> {
    std::env::var("CORRAL_SIM_SKIP")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default()
}
