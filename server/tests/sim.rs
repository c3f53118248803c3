//! Deterministic simulation of a corral cluster (see `corral_server::sim` for what is
//! simulated and checked).
//!
//! - `sim_seeds`: the seeds CI runs (`CORRAL_SIM_SEEDS`, default 240, spread over the
//!   machine's cores; `CORRAL_SIM_SEED=n` runs only seed `n`, `CORRAL_SIM_SKIP=1,4`
//!   leaves out planned faults, as printed by a failure).
//! - `sim_soak` (ignored): thousands of seeds, for a soak:
//!   `CORRAL_SIM_SEEDS=10000 cargo test --release -p corral-server --features sim --test sim sim_soak -- --ignored --nocapture`.
//! - `sim_replay_is_identical`: the same seed twice gives the same trace.
//! - `fault_*`: each turns on a deliberately injected bug and shows that the simulator
//!   reports the invariant it breaks, with a seed that replays it exactly.
//! - `regression_*`: pinned seeds of bugs the simulator found.
//! - `sim_wiped_disk_seeds`: one wiped disk per run among the standard faults;
//!   `sim_wiped_disks` (ignored) wipes at any time and fails only on safety.

use corral_protocol::LockKind;
use corral_server::faults::FaultSwitches;
use corral_server::machine::ORDERED_WRITE_PEER_VERSION;
use corral_server::replication::transport::PEER_PROTOCOL_VERSION;
use corral_server::sim::{self, FaultMix, Report, SimConfig, ViolationKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

fn configure(seed: u64) -> SimConfig {
    let mut c = SimConfig::from_seed(seed);
    c.skip_faults = sim::skip_from_env();
    c
}

fn summary(seed: u64, r: &Report) -> String {
    format!(
        "seed {seed}: {} nodes, {} events, {} sim ms, {} entries, {} acked, {} crashes, {} \
         faults, {} installs, {} ops {} ({} compare-and-sets set, {} BadVersion), {} \
         multi-locks held, {} shared holds, {} watch events ({} re-registrations), {} \
         containers reaped, {} ms",
        r.config.nodes,
        r.stats.events,
        r.stats.sim_ms,
        r.stats.entries,
        r.stats.acked,
        r.stats.crashes,
        r.stats.faults,
        r.stats.installs,
        r.stats.ops,
        r.stats.linearizability,
        r.stats.cas.0,
        r.stats.cas.1,
        r.stats.groups_held,
        r.stats.shared_holds,
        r.stats.watch_events,
        r.stats.watch_resyncs,
        r.stats.reaped,
        r.stats.wall_ms
    )
}

/// Describes a failure, shrinks it (fewer faults), and panics with both reports.
fn fail(test: &str, report: &Report) -> ! {
    let (_, shrunk) = sim::shrink(&report.config, report, 40);
    panic!(
        "{}\n--- shrunk (planned faults left out while the same violation remains) ---\n{}",
        report.describe(test),
        shrunk.describe(test)
    );
}

/// Runs the seeds on every core; stops at the first failure (the lowest failing seed is
/// reported, shrunk).
fn run_seeds(test: &str, seeds: Vec<u64>) {
    let started = std::time::Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(seeds.len().max(1));
    let next = Arc::new(AtomicU64::new(0));
    let seeds = Arc::new(seeds);
    let failures: Arc<Mutex<Vec<Report>>> = Arc::new(Mutex::new(Vec::new()));
    let verbose = seeds.len() <= 20;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, seeds, failures) = (next.clone(), seeds.clone(), failures.clone());
            std::thread::spawn(move || loop {
                if !failures.lock().map(|f| f.is_empty()).unwrap_or(false) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(seed) = seeds.get(i).copied() else {
                    return;
                };
                let r = sim::run(&configure(seed));
                if verbose {
                    eprintln!("{}", summary(seed, &r));
                }
                if r.failed() {
                    if let Ok(mut f) = failures.lock() {
                        f.push(r);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let mut failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    failures.sort_by_key(|r| r.config.seed);
    if let Some(r) = failures.first() {
        fail(test, r);
    }
    let done = next.load(Ordering::SeqCst).min(seeds.len() as u64);
    eprintln!(
        "{test}: {done} seeds in {:.1?} ({:.2} seeds/s on {threads} threads)",
        started.elapsed(),
        done as f64 / started.elapsed().as_secs_f64()
    );
}

/// The seeds CI runs.
#[test]
fn sim_seeds() {
    run_seeds("sim_seeds", sim::seeds_from_env(1, 240));
}

/// Single-node mode (the local log, snapshot files and log compaction on the simulated
/// disk; crashes, torn batches, failing disks, pauses), seeds from 10,000,000 on.
#[test]
fn sim_single_node_seeds() {
    let seeds = sim::seeds_from_env(10_000_000, 60);
    let started = std::time::Instant::now();
    for seed in &seeds {
        let c = single_node(*seed);
        let r = sim::run(&c);
        if r.failed() {
            fail("sim_single_node_seeds", &r);
        }
    }
    eprintln!(
        "sim_single_node_seeds: {} seeds in {:.1?}",
        seeds.len(),
        started.elapsed()
    );
}

fn single_node(seed: u64) -> SimConfig {
    let mut c = configure(seed);
    c.nodes = 1;
    c.mix.partitions = 0;
    c.mix.crash_all = 0;
    c
}

/// A soak: `CORRAL_SIM_SEEDS=10000 cargo test --release -p corral-server --features sim
/// --test sim sim_soak -- --ignored --nocapture` (seeds from 1,000,000 on, so they differ
/// from CI's).
#[test]
#[ignore = "soak: thousands of seeds, run on demand"]
fn sim_soak() {
    run_seeds("sim_soak", sim::seeds_from_env(1_000_000, 2_000));
}

/// Rolling upgrades: nodes that start as servers of peer protocol 1 (client writes
/// proposed as `Write`) and are upgraded one by one during the faults end up proposing
/// `OrderedWrite`s; both kinds share the log, and every check holds across the switch.
#[test]
fn rolling_upgrades_switch_to_ordered_writes() {
    let mut both = 0;
    let mut count = 0;
    for seed in sim::seeds_from_env(11, 16) {
        let mut c = configure(seed);
        if c.nodes == 1 {
            continue;
        }
        count += 1;
        c.upgrade_at_ms = Some(300 + seed % 7 * 300);
        // Servers of protocol 2 propose `OrderedWrite`s before the upgrade too.
        c.old_peer_version = 1;
        let r = sim::run(&c);
        assert!(
            !r.failed(),
            "{}",
            r.describe("rolling_upgrades_switch_to_ordered_writes")
        );
        let (old, ordered) = r.stats.writes;
        println!("seed {seed}: {old} writes, then {ordered} ordered writes");
        if old > 0 && ordered > 0 {
            both += 1;
        }
    }
    assert!(
        both * 2 >= count,
        "only {both} of {count} runs had both kinds of writes"
    );
}

/// The same configuration gives the same run: trace, events, verdict.
#[test]
fn sim_replay_is_identical() {
    for seed in sim::seeds_from_env(7, 3) {
        let c = configure(seed);
        let a = sim::run(&c);
        let b = sim::run(&c);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}: traces differ");
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert_eq!(a.stats.events, b.stats.events, "seed {seed}");
        assert_eq!(a.violation, b.violation, "seed {seed}");
    }
}

/// Runs seeds with an injected bug until the simulator reports one of `kinds`; checks
/// that replaying that seed reports exactly the same.
fn catches(
    test: &str,
    switches: FaultSwitches,
    kinds: &[ViolationKind],
    adjust: impl Fn(&mut SimConfig),
    max_seeds: u64,
) {
    for seed in sim::seeds_from_env(1, max_seeds) {
        let mut c = configure(seed);
        c.switches = switches;
        adjust(&mut c);
        let r = sim::run(&c);
        let Some(v) = &r.violation else {
            continue;
        };
        assert!(
            kinds.contains(&v.kind),
            "{test}: expected one of {kinds:?}, got:\n{}",
            r.describe(test)
        );
        let again = sim::run(&c);
        assert_eq!(again.violation, r.violation, "{test}: the replay differs");
        assert_eq!(again.trace_hash, r.trace_hash, "{test}: the replay differs");
        eprintln!("{test}: caught {v}\n  replay: {}", r.replay_command(test));
        return;
    }
    panic!("{test}: no violation in {max_seeds} seeds");
}

fn switches(set: impl FnOnce(&mut FaultSwitches)) -> FaultSwitches {
    let mut s = FaultSwitches::default();
    set(&mut s);
    s
}

#[test]
fn fault_grant_without_predecessor_gives_two_holders() {
    catches(
        "fault_grant_without_predecessor_gives_two_holders",
        switches(|s| s.grant_without_predecessor = true),
        &[ViolationKind::TwoHolders],
        |_| {},
        20,
    );
}

/// The same bug on shared locks: every lock a read-write lock or a semaphore (readers
/// with a writer, more holders than permits).
#[test]
fn fault_grant_without_predecessor_breaks_shared_locks_too() {
    catches(
        "fault_grant_without_predecessor_breaks_shared_locks_too",
        switches(|s| s.grant_without_predecessor = true),
        &[ViolationKind::TwoHolders, ViolationKind::TwoBelievers],
        |c| {
            c.lock_families = (0..c.locks)
                .map(|i| {
                    if (c.seed + i as u64).is_multiple_of(2) {
                        LockKind::Write
                    } else {
                        LockKind::Semaphore { permits: 2 }
                    }
                })
                .collect();
        },
        40,
    );
}

#[test]
fn fault_token_from_sequence_breaks_token_order() {
    catches(
        "fault_token_from_sequence_breaks_token_order",
        switches(|s| s.token_from_sequence = true),
        &[ViolationKind::TokenOrder, ViolationKind::FencedOrder],
        |_| {},
        20,
    );
}

#[test]
fn fault_apply_with_local_time_diverges_state() {
    catches(
        "fault_apply_with_local_time_diverges_state",
        switches(|s| s.apply_with_local_time = true),
        &[ViolationKind::StateDivergence],
        |_| {},
        20,
    );
}

#[test]
fn fault_skip_fsync_loses_acknowledged_writes() {
    catches(
        "fault_skip_fsync_loses_acknowledged_writes",
        switches(|s| s.skip_fsync = true),
        &[ViolationKind::AckedWriteLost, ViolationKind::LogDivergence],
        |c| {
            c.mix = FaultMix {
                crash_all: 4,
                ..FaultMix::standard()
            }
        },
        40,
    );
}

/// Snapshot files renamed into place before their contents are durable: after a crash
/// a cluster node's log refers to a compaction image its disk lost (it cannot recover),
/// or a single node's newest snapshot is damaged and the log before it is gone.
#[test]
fn fault_unsynced_snapshot_files_break_recovery() {
    catches(
        "fault_unsynced_snapshot_files_break_recovery",
        switches(|s| s.unsynced_snapshot_files = true),
        &[ViolationKind::Recovery, ViolationKind::AckedWriteLost],
        |c| {
            c.mix = FaultMix {
                crash_all: 4,
                ..FaultMix::standard()
            }
        },
        40,
    );
}

/// Whole-cluster crashes and nothing else, with slow disks: a leader often crashes after
/// sending entries and before its own fsync completes.
fn crashes_all_with_slow_disks(c: &mut SimConfig) {
    c.mix = FaultMix {
        crash_all: 6,
        ..FaultMix::none()
    };
    c.disk.latency_min_us = 5_000;
    c.disk.latency_max_us = 30_000;
}

#[test]
fn fault_ack_before_durable_loses_acknowledged_writes() {
    catches(
        "fault_ack_before_durable_loses_acknowledged_writes",
        switches(|s| s.ack_before_durable = true),
        // OmniPaxos itself may notice first: it panics when a sync would overwrite
        // entries it had decided.
        &[
            ViolationKind::AckedWriteLost,
            ViolationKind::LogDivergence,
            ViolationKind::Panic,
        ],
        crashes_all_with_slow_disks,
        60,
    );
}

/// The leader sends `AcceptDecide` before its own fsync; this shows that counting its
/// own (not yet durable) acceptance in the quorum would be caught.
#[test]
fn fault_decide_before_leader_durable_loses_acknowledged_writes() {
    catches(
        "fault_decide_before_leader_durable_loses_acknowledged_writes",
        switches(|s| s.decide_before_leader_durable = true),
        &[
            ViolationKind::AckedWriteLost,
            ViolationKind::LogDivergence,
            ViolationKind::Panic,
        ],
        crashes_all_with_slow_disks,
        100,
    );
}

/// The configuration of the test above without the fault: whole-cluster crashes with
/// slow disks, where a leader routinely crashes after sending `AcceptDecide` and before
/// its own fsync completes. No violation may appear.
#[test]
fn crashes_with_slow_disks_keep_acknowledged_writes() {
    for seed in sim::seeds_from_env(1, 30) {
        let mut c = configure(seed);
        crashes_all_with_slow_disks(&mut c);
        let r = sim::run(&c);
        if r.failed() {
            fail("crashes_with_slow_disks_keep_acknowledged_writes", &r);
        }
    }
}

#[test]
fn fault_skip_dedup_applies_retries_twice() {
    catches(
        "fault_skip_dedup_applies_retries_twice",
        switches(|s| s.skip_dedup = true),
        &[ViolationKind::DuplicateApply],
        |_| {},
        40,
    );
}

#[test]
fn fault_keep_deadlines_on_leader_change_expires_early() {
    catches(
        "fault_keep_deadlines_on_leader_change_expires_early",
        switches(|s| s.keep_deadlines_on_leader_change = true),
        &[ViolationKind::EarlyExpiry],
        |_| {},
        40,
    );
}

#[test]
fn fault_ignore_alive_reports_expires_heard_sessions() {
    catches(
        "fault_ignore_alive_reports_expires_heard_sessions",
        switches(|s| s.ignore_alive_reports = true),
        &[ViolationKind::ExpiredWhileHeard, ViolationKind::EarlyExpiry],
        |_| {},
        40,
    );
}

/// A node that goes on applying while the leader's snapshot is decoded (off the core)
/// loses what it applied when the decoded state replaces its own.
#[test]
fn fault_apply_during_install_diverges_state() {
    catches(
        "fault_apply_during_install_diverges_state",
        switches(|s| s.apply_during_install = true),
        &[ViolationKind::StateDivergence],
        |_| {},
        20,
    );
}

#[test]
fn fault_sync_without_barrier_is_not_linearizable() {
    catches(
        "fault_sync_without_barrier_is_not_linearizable",
        switches(|s| s.sync_without_barrier = true),
        &[ViolationKind::NotLinearizable],
        |_| {},
        60,
    );
}

#[test]
fn fault_send_forwards_once_leaves_requests_stuck() {
    catches(
        "fault_send_forwards_once_leaves_requests_stuck",
        switches(|s| s.send_forwards_once = true),
        &[
            ViolationKind::RequestStuck,
            ViolationKind::LockNotAcquirable,
            ViolationKind::NotConverged,
        ],
        |_| {},
        40,
    );
}

#[test]
fn fault_lose_lock_grant_event_leaves_waiters_untold() {
    catches(
        "fault_lose_lock_grant_event_leaves_waiters_untold",
        switches(|s| s.lose_lock_grant_event = true),
        &[
            ViolationKind::GrantNotTold,
            ViolationKind::LockNotAcquirable,
        ],
        |_| {},
        40,
    );
}

/// A session's writes apply in xid order. A client gives up on a write (not resent after
/// it resumes its session elsewhere) while the node it sent it through, cut off from the
/// leader, keeps forwarding it; the client's next writes apply first. An `OrderedWrite`
/// that then reaches the log is refused; with the switch it is applied. Every client
/// gives up on writes when it can here (`give_up_per_mille`): 10 of seeds 1 to 200 are
/// caught (27, 45, 46, 50, 57, 58, 83, 155, 182, 190), none without give-ups (300 seeds).
/// `OrderedWrite` entries are proposed only over links at peer protocol 2: below it there
/// is nothing to show.
#[test]
fn fault_apply_out_of_order_breaks_session_write_order() {
    let test = "fault_apply_out_of_order_breaks_session_write_order";
    if PEER_PROTOCOL_VERSION < ORDERED_WRITE_PEER_VERSION {
        eprintln!(
            "{test}: skipped: the links speak peer protocol {PEER_PROTOCOL_VERSION}, \
             OrderedWrite needs {ORDERED_WRITE_PEER_VERSION}"
        );
        return;
    }
    catches(
        test,
        switches(|s| s.apply_out_of_order = true),
        &[ViolationKind::SessionWriteOrder],
        |c| c.give_up_per_mille = 1000,
        100,
    );
}

/// Passes gather replication messages: with the same seeds, 16 clients and no faults,
/// nodes whose core ends a pass only every 64 inputs or 5 ms send fewer peer messages per
/// decided entry (0.69 to 0.82 times as many in these seeds) than nodes that flush their
/// log after every input, and stay correct.
#[test]
fn passes_gather_replication_messages() {
    let test = "passes_gather_replication_messages";
    for seed in sim::seeds_from_env(900, 3) {
        let per_entry = |pass_inputs: usize, pass_window_us: u64| {
            let mut c = configure(seed);
            c.mix = FaultMix::none();
            c.upgrade_at_ms = None;
            c.clients = 16;
            c.pass_inputs = pass_inputs;
            c.pass_window_us = pass_window_us;
            let r = sim::run(&c);
            assert!(!r.failed(), "{}", r.describe(test));
            assert!(r.stats.entries > 100, "{}", summary(seed, &r));
            r.stats.messages as f64 / r.stats.entries as f64
        };
        let alone = per_entry(1, 0);
        let gathered = per_entry(64, 5_000);
        println!("seed {seed}: peer messages per entry {alone:.2} one input per pass, {gathered:.2} in passes");
        assert!(
            gathered < alone * 0.9,
            "seed {seed}: {gathered:.2} peer messages per entry in passes, {alone:.2} without"
        );
    }
}

/// A pinned seed's configuration as it was when its bug was found: each input is its
/// core's whole pass (seeds drawn before passes were simulated kept their schedule).
/// Clients did not give up on writes then either, nor send multi-locks, nor take
/// shared locks (every lock was exclusive), nor set watches, nor revoke leases, nor
/// compare-and-set, nor list locks, nor were nodes upgraded during a run.
fn as_found(mut c: SimConfig) -> SimConfig {
    c.pass_inputs = 1;
    c.pass_window_us = 0;
    c.give_up_per_mille = 0;
    c.multi_lock_per_mille = 0;
    c.lock_families = Vec::new();
    c.watch_per_mille = 0;
    c.revoke_per_mille = 0;
    c.cas_per_mille = 0;
    c.list_locks_per_mille = 0;
    c.container_weight = 0;
    c.dedup_window = corral_server::machine::MachineLimits::default().dedup_window;
    c.upgrade_at_ms = None;
    c
}

/// Runs one pinned configuration and fails with its description if it breaks anything.
fn pinned(test: &str, seed: u64, skip: &[usize]) {
    let mut c = as_found(SimConfig::from_seed(seed));
    c.skip_faults = skip.iter().copied().collect();
    let r = sim::run(&c);
    assert!(!r.failed(), "{}", r.describe(test));
}

/// Checker gap (fixed): a write applied by no node except inside a snapshot's tail (a
/// follower's install, a restart's recovery), then answered from the deduplication table
/// after an install, was reported as an acknowledged write that was lost. The tails
/// replayed there are now reported to the checker like the log a restart replays.
#[test]
fn regression_write_applied_only_in_a_snapshot_tail() {
    pinned(
        "regression_write_applied_only_in_a_snapshot_tail",
        1_008_198,
        &[],
    );
}

/// Bug (fixed): a leader kept its own session expiries among the proposals it resends on
/// every leader change, so a deposed leader's expiry reached the next leader and was
/// decided after the client had renewed its session there (and every expiry was resent
/// forever, every election timeout).
#[test]
fn regression_deposed_leader_expiry_resent() {
    pinned(
        "regression_deposed_leader_expiry_resent",
        1,
        &[0, 2, 3, 4, 5],
    );
}

/// Bug (fixed): a leader confirmed keepalives with a tracked barrier; deposed, it
/// forwarded the barrier to the new leader, which decided it, and the old leader then
/// answered pings that the new leader never saw (the new leader expired the session while
/// its client believed it renewed). Also: keepalives it had collected as leader were
/// answered by the new leader's acknowledgement of a report that did not name them.
#[test]
fn regression_keepalive_barrier_forwarded() {
    pinned(
        "regression_keepalive_barrier_forwarded",
        37,
        &[1, 2, 3, 4, 5],
    );
}

/// Bug (fixed): the leader decided which sessions of a follower's report were gone when
/// the report arrived, but acknowledged it only once its barrier was decided; an expiry
/// decided in between was not named, and the follower answered a ping of an expired
/// session. (Found with `send_forwards_once` on, which only changes the timing here; the
/// run must not report an early expiry.)
#[test]
fn regression_report_acknowledged_after_expiry() {
    let test = "regression_report_acknowledged_after_expiry";
    let mut c = as_found(SimConfig::from_seed(14));
    c.switches.send_forwards_once = true;
    let r = sim::run(&c);
    assert!(
        !matches!(&r.violation, Some(v) if v.kind == ViolationKind::EarlyExpiry),
        "{}",
        r.describe(test)
    );
}

/// Bug (fixed): a node that lost and regained leadership between two ticks was not seen
/// to change leader (only the leader's id was compared, not the ballot): it kept the
/// session deadlines of its previous term and expired, at once, sessions whose keepalives
/// its interim successor had acknowledged.
#[test]
fn regression_leader_regained_keeps_old_deadlines() {
    pinned(
        "regression_leader_regained_keeps_old_deadlines",
        1_000_965,
        &[4, 5],
    );
}

/// Bug (fixed): a node restarted session deadlines when it became the promised leader,
/// not when it started leading (accept phase). Cut off one way from the old leader, it
/// stayed a candidate for a while; the old leader kept renewing sessions meanwhile, and
/// once the new one finally led it expired them on the deadlines of its candidacy.
#[test]
fn regression_deadlines_restarted_before_leading() {
    pinned(
        "regression_deadlines_restarted_before_leading",
        1_002_017,
        &[4],
    );
}

/// Bug (fixed): report numbers (and barrier ids) started at 1 in every incarnation of a
/// node; the leader's late acknowledgement of a report sent before a crash answered the
/// restarted node's first report, which it had never seen (a session resumed on the
/// restarted follower was accepted although the leader expired it).
#[test]
fn regression_report_numbers_reused_after_restart() {
    pinned(
        "regression_report_numbers_reused_after_restart",
        1_000_113,
        &[8],
    );
}

/// Bug (fixed): a node that restarted with its own ballot promised (it led a minority
/// side before it crashed, with a ballot above the majority's leader) was stuck for good:
/// OmniPaxos restarts it as a follower, its leader election picks the same ballot again,
/// which Sequence Paxos ignores; the majority ignores its higher ballot, and the node that
/// had promised it stayed behind with it. It now stands for election with a higher ballot.
#[test]
fn regression_restarted_leader_stuck_on_own_ballot() {
    pinned(
        "regression_restarted_leader_stuck_on_own_ballot",
        1_000_161,
        &[2, 11, 12],
    );
}

/// Whether a violation is about progress after healing (not about safety).
fn is_liveness(kind: ViolationKind) -> bool {
    matches!(
        kind,
        ViolationKind::RequestStuck
            | ViolationKind::LockNotAcquirable
            | ViolationKind::GrantNotTold
            | ViolationKind::NotConverged
    )
}

/// A configuration with wiped disks in the fault mix, at most one of them planned (the
/// later ones are skipped): at most one node is without its disk at any time, which is
/// the precondition of a safe join (`replication/join.rs`).
fn one_wipe(seed: u64) -> SimConfig {
    let mut c = configure(seed);
    c.mix = FaultMix {
        wipes: 2,
        ..FaultMix::standard()
    };
    let wipes = c
        .plan()
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.kind, sim::FaultKind::Wipe(_)))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    c.skip_faults.extend(wipes.into_iter().skip(1));
    c
}

/// One wiped disk per run, among the standard faults: the wiped node joins, catches up
/// before it votes, and every invariant (progress after healing included) holds.
#[test]
fn sim_wiped_disk_seeds() {
    for seed in sim::seeds_from_env(6_000_000, 24) {
        let r = sim::run(&one_wipe(seed));
        if r.failed() {
            fail("sim_wiped_disk_seeds", &r);
        }
    }
}

/// Wiped disks at any time (a node restarted with an empty data directory, which learns
/// the highest promise of a majority of the others and then catches up before it votes).
/// These plans also wipe a second node before the first has caught up: two of three nodes
/// without their disk is beyond what any protocol can survive. Mostly the cluster then
/// waits for good (a progress violation after healing, counted, expected); when the two
/// wiped nodes held entries the third never had, or all three end up empty (they then
/// form a new cluster), the decided log diverges. Safety violations fail the test. With
/// the catch-up fix, seeds 5,000,000..5,002,200: 101 without progress, 6 log divergences;
/// all 6 divergences and the 6 progress failures examined (the first 200 seeds) came
/// after two or three nodes were without their disk at the same time.
#[test]
#[ignore = "explores wipes beyond the fault model; see the report"]
fn sim_wiped_disks() {
    let mut safety = Vec::new();
    let mut liveness = 0;
    let seeds = sim::seeds_from_env(5_000_000, 200);
    let total = seeds.len();
    for seed in seeds {
        let mut c = configure(seed);
        c.mix = FaultMix {
            wipes: 3,
            ..FaultMix::standard()
        };
        let r = sim::run(&c);
        if let Some(v) = &r.violation {
            eprintln!("seed {seed}: {v}");
            if is_liveness(v.kind) {
                liveness += 1;
            } else {
                safety.push(r);
            }
        }
    }
    eprintln!(
        "{total} runs: {} broke a safety invariant, {liveness} made no progress after healing",
        safety.len()
    );
    if let Some(r) = safety.first() {
        let (_, shrunk) = sim::shrink(&r.config, r, 40);
        panic!("{}", shrunk.describe("sim_wiped_disks"));
    }
}

/// Bug (fixed): a node restarted with an empty disk voted as soon as it had adopted the
/// majority's highest promise, before it held what was decided. Here the leader is wiped
/// while both other nodes are up and connected; one of them had not yet accepted the last
/// decided entries (normal replication lag: a 3-node leader decides with one follower).
/// The wiped node and the lagging follower formed the next quorum and decided other
/// entries at those zxids: acknowledged writes were lost. A node that joins a running
/// cluster with an empty disk now catches up first (`replication/join.rs`): it promises
/// only to a leader that completed its prepare phase without it, and stands for no
/// election, until that leader has synced its log to it.
#[test]
fn regression_wiped_leader_loses_decided_entries() {
    let test = "regression_wiped_leader_loses_decided_entries";
    // Seed 5,000,147 with faults 2 to 12 skipped pinned the bug until the leader started
    // replicating before its own fsync; seed 5,000,144 lost an acknowledged write after
    // that change. Both must hold now.
    for (seed, skip) in [(5_000_147, 2..13), (5_000_144, 0..0)] {
        let mut c = as_found(SimConfig::from_seed(seed));
        c.mix = FaultMix {
            wipes: 3,
            ..FaultMix::standard()
        };
        c.skip_faults = skip.collect();
        let r = sim::run(&c);
        assert!(!r.failed(), "{}", r.describe(test));
    }
}

/// What `corral-client` did until it was fixed (it now renews its view of the session
/// only on keepalive answers, and pings on a fixed schedule): it counted every successful
/// answer (reads and writes too) as a renewal of its session, and measured the safe
/// deadline of locks held under the session from it. The server renews a session on the
/// leader only for keepalives (a follower answers reads at once, and forwards writes
/// without renewing anything), so this view can outlive the session. Run on demand: it
/// reports the early expiries of that old behaviour.
#[test]
#[ignore = "demonstrates the old corral-client renewal rule; see the report"]
fn sim_client_renews_on_any_answer() {
    for seed in sim::seeds_from_env(7_000_000, 300) {
        let mut c = configure(seed);
        c.renew_on_any_answer = true;
        let r = sim::run(&c);
        if let Some(v) = &r.violation {
            let (_, shrunk) = sim::shrink(&r.config, &r, 40);
            panic!(
                "seed {seed}: {v}\n{}",
                shrunk.describe("sim_client_renews_on_any_answer")
            );
        }
    }
}

/// What `corral-client` did until it was fixed: it raised the zxid its next `SetWatches`
/// sends on watch events too. Events share a zxid (a multi's changes, the events a
/// snapshot install collapses, which carry the installed zxid), so after one of them a
/// connection lost before the next made the `SetWatches` skip the change of the lost one
/// (soak seed 25279965: two install events at zxid 374, the second lost, and the data
/// watch on `/reg/k2` never fired for its change at zxid 351). Responses alone raise it
/// now: the server sends every event up to a response's zxid before the response. The
/// seed stays a regression test; the old rule is demonstrated on demand by
/// `sim_client_seen_on_events` (since keepalives stopped waiting for a tick, this seed
/// no longer loses the event with it).
#[test]
fn events_sharing_a_zxid_are_not_seen_until_a_response() {
    let mut c = SimConfig::from_seed(25_279_965);
    c.skip_faults = [3].into_iter().collect();
    let r = sim::run(&c);
    assert!(
        !r.failed(),
        "{}",
        r.describe("events_sharing_a_zxid_are_not_seen_until_a_response")
    );
}

/// The old `SetWatches` zxid rule of `corral-client` (see
/// `events_sharing_a_zxid_are_not_seen_until_a_response`), run on demand over seeds: it
/// reports a watch event lost to it. Rare: 12,000 seeds from 90,000,000 found none on
/// 2026-11-25, after seed 25279965 stopped losing one.
#[test]
#[ignore = "demonstrates the old SetWatches zxid rule; see the report"]
fn sim_client_seen_on_events() {
    for seed in sim::seeds_from_env(90_000_000, 1_000) {
        let mut c = SimConfig::from_seed(seed);
        c.seen_on_events = true;
        let r = sim::run(&c);
        if let Some(v) = &r.violation {
            panic!(
                "seed {seed}: {v}\n{}",
                r.describe("sim_client_seen_on_events")
            );
        }
    }
}

/// A network off the transport's contract: messages on a link reordered and duplicated,
/// losses silent (no `LinkUp`). corral's transport never does this (per link, in order,
/// a loss ends the link); OmniPaxos 0.2.4 assumes it. Run on demand to see what breaks.
#[test]
#[ignore = "off the transport's contract; see the report"]
fn sim_hostile_network() {
    for seed in sim::seeds_from_env(8_000_000, 200) {
        let mut c = configure(seed);
        c.net.fifo = false;
        c.net.loss_per_mille = 10;
        c.net.dup_per_mille = 10;
        let r = sim::run(&c);
        if let Some(v) = &r.violation {
            let (_, shrunk) = sim::shrink(&r.config, &r, 40);
            panic!(
                "seed {seed}: {v}\n{}",
                shrunk.describe("sim_hostile_network")
            );
        }
    }
}

/// Bug (fixed): a single node created its data directory (with the snapshot directory)
/// without syncing its parent; the write-ahead log's directory was made durable only
/// inside it. A power loss after a first start lost the whole data directory, with every
/// acknowledged write.
#[test]
fn regression_single_node_data_directory_not_durable() {
    let test = "regression_single_node_data_directory_not_durable";
    let r = sim::run(&as_found(single_node(10_000_000)));
    assert!(!r.failed(), "{}", r.describe(test));
}

/// Bug (fixed): on a single node, a lease renewal queued behind an earlier request of its
/// connection (a write waiting for its fsync) renewed the lease only when its turn came;
/// the lease could expire in between although the renewal had arrived in time.
#[test]
fn regression_single_node_renewal_waits_behind_a_write() {
    let test = "regression_single_node_renewal_waits_behind_a_write";
    let r = sim::run(&as_found(single_node(10_000_547)));
    assert!(!r.failed(), "{}", r.describe(test));
}

/// Bug (fixed): a node answered a ping (or a lease renewal) of a session whose expiry it
/// had already proposed; the expiry then applied, and the client believed in its session
/// for another TTL (single node, where keepalives are answered at once).
#[test]
fn regression_keepalive_answered_while_expiring() {
    let test = "regression_keepalive_answered_while_expiring";
    let r = sim::run(&as_found(single_node(10_001_060)));
    assert!(!r.failed(), "{}", r.describe(test));
}

/// Leader election does not wait for the disk: with every sync taking most of an
/// election timeout (and one in ten ten times that) and no fault at all, a healthy leader
/// keeps its leadership. Heartbeat replies used to wait for the sync of every record
/// written before them, so under steady writes they missed their rounds: 24 to 60 leader
/// changes were seen in each of these runs, against 3 to 12 now (3 is each node seeing
/// the first leader; over seeds 500 to 539 most runs see 3 to 6, and a few 9 to 12, with
/// or without acknowledgements, whose extra requests move the runs), so the bound is
/// four per node. Liveness deadlines assume normal disks and are not checked here.
#[test]
fn slow_disks_do_not_depose_a_healthy_leader() {
    for seed in sim::seeds_from_env(500, 6) {
        let mut c = configure(seed);
        c.mix = FaultMix::none();
        c.upgrade_at_ms = None;
        c.disk.latency_min_us = c.election_ms * 1000 * 6 / 10;
        c.disk.latency_max_us = c.election_ms * 1000 * 9 / 10;
        c.disk.crash_in_sync_per_mille = 0;
        c.disk.fail_sync_per_mille = 0;
        let r = sim::run(&c);
        let test = "slow_disks_do_not_depose_a_healthy_leader";
        if let Some(v) = &r.violation {
            assert!(is_liveness(v.kind), "{}", r.describe(test));
        }
        assert!(
            r.stats.leader_changes <= 4 * c.nodes as u64,
            "seed {seed}: {} leader changes seen; replay: {}",
            r.stats.leader_changes,
            r.replay_command(test)
        );
    }
}

/// Bug (fixed): a leader that stopped counting a promise (its sender asked for a new
/// prepare) kept that promise's log sync and adopted it, so its log was compacted past
/// its decided index; the log syncs it then sent carried a snapshot covering more than
/// their sync index and an empty suffix, and a follower put the next entries two indexes
/// early (`LogDivergence` at zxid 297). Outgoing log syncs are now fitted to their
/// snapshot (`replication/log_sync.rs`), and the simulator checks every log sync it
/// delivers (`InconsistentLogSync`).
#[test]
fn regression_log_sync_snapshot_past_its_sync_index() {
    pinned(
        "regression_log_sync_snapshot_past_its_sync_index",
        6_003_939,
        &[7, 8, 9, 10, 11, 12, 13, 14],
    );
}

/// Bug (fixed): a node counted its log durable up to the highest accepted index any
/// completed sync had covered, even after a log sync cut its log shorter. Leading the next
/// ballot, it refilled the cut indexes and counted the new entries durable at once: it
/// applied an entry only a follower had on disk, a crash of every node erased it, and the
/// node applied another entry at that zxid (`LogDivergence` at zxid 286). A write that
/// replaces entries now lowers the durable index to where it cut (`SyncHandle::take_cut`).
#[test]
fn regression_durable_index_after_a_cut_log() {
    pinned(
        "regression_durable_index_after_a_cut_log",
        7_012_632,
        &[6, 16, 17, 18, 19, 20],
    );
}

/// Bug (fixed): a client whose connection broke while its lock request was queued
/// retried it on another node after the grant; the retry got the remembered `Queued`,
/// the grant event had gone to the lost connection, and the lock stayed held by a session
/// that did not know it (`LockNotAcquirable`). A retried `Lock` now reports a grant made
/// since (`StateMachine::cached_result`).
#[test]
fn regression_retried_lock_learns_its_grant() {
    pinned("regression_retried_lock_learns_its_grant", 7_014_017, &[]);
}

/// Bug (fixed): the same retry after the queue node was granted and lost meanwhile (a
/// group of two semaphore nodes under a lease that expired while the client was away)
/// got the remembered "queued" answer, and the client waited for a grant that had come
/// and gone (`GrantNotTold`: answered queued after the grant). A retry whose node is
/// gone is now answered `LockNotHeld`. Found by the soak once clients took multi-locks
/// and shared locks, so the seed runs as drawn today (not `as_found`); with the retry
/// answers of before (`stale_retried_lock_answers`) it must still fail, or the seed no
/// longer takes this path.
#[test]
fn regression_retried_lock_learns_its_node_is_gone() {
    let mut c = SimConfig::from_seed(25_201_343);
    c.skip_faults = [5, 11, 12, 13, 14, 15].into_iter().collect();
    // As found: before clients set watches.
    c.watch_per_mille = 0;
    c.revoke_per_mille = 0;
    c.cas_per_mille = 0;
    c.list_locks_per_mille = 0;
    c.container_weight = 0;
    c.dedup_window = corral_server::machine::MachineLimits::default().dedup_window;
    let r = sim::run(&c);
    assert!(
        !r.failed(),
        "{}",
        r.describe("regression_retried_lock_learns_its_node_is_gone")
    );
    c.switches = switches(|s| s.stale_retried_lock_answers = true);
    let before = sim::run(&c);
    assert_eq!(
        before.violation.map(|v| v.kind),
        Some(ViolationKind::GrantNotTold),
        "the seed no longer retries a lock request whose node is gone"
    );
}

/// Bug (fixed): a leader in the accept phase answered a follower's promise with an
/// `AcceptSync`, and OmniPaxos 0.2.4 merged the entries proposed next in the same pass into
/// the `AcceptDecide` it had queued for that follower before the sync, which the follower
/// dropped; the follower then put the entries after them one index early
/// (`LogDivergence` at zxid 272). Passes (more than one input per flush) exposed it; the
/// log now takes OmniPaxos's messages out after every promise (`PaxosLog::on_peer`).
#[test]
fn regression_entries_merged_into_a_superseded_accept() {
    pinned_in_passes(
        "regression_entries_merged_into_a_superseded_accept",
        24_000_078,
        (59, 135),
        5..=12,
    );
}

/// Bug (fixed): the end of a pass applied what was decided with the time of the pass's
/// last input, so a session opened (or renewed) there was stamped earlier than its
/// answer left; with passes open for 430 µs of simulated time, a leader proposed the
/// expiry of a session 349 ms after the answer that attached it (TTL 350 ms). The end
/// of a pass now carries its own time (`Node::end_pass(now)`).
#[test]
fn regression_pass_end_stamped_with_an_earlier_time() {
    pinned_in_passes(
        "regression_pass_end_stamped_with_an_earlier_time",
        24_003_041,
        (30, 430),
        5..=7,
    );
}

/// Runs a seed pinned with the passes it draws (`passes`: inputs per pass and window, µs,
/// checked so the seed still reproduces its run; clients do not give up on writes, as
/// when it was found) and fails with its description if it breaks anything.
fn pinned_in_passes(
    test: &str,
    seed: u64,
    passes: (usize, u64),
    skip: std::ops::RangeInclusive<usize>,
) {
    let mut c = SimConfig::from_seed(seed);
    assert_eq!(
        (c.pass_inputs, c.pass_window_us),
        passes,
        "the seed's passes"
    );
    c.skip_faults = skip.collect();
    c.give_up_per_mille = 0;
    c.upgrade_at_ms = None;
    c.watch_per_mille = 0;
    c.revoke_per_mille = 0;
    c.cas_per_mille = 0;
    c.list_locks_per_mille = 0;
    c.container_weight = 0;
    c.dedup_window = corral_server::machine::MachineLimits::default().dedup_window;
    let r = sim::run(&c);
    assert!(!r.failed(), "{}", r.describe(test));
}

/// A retried lock request whose first answer was "queued" must be answered granted once
/// its nodes are (the `LockGranted` pushed meanwhile went to a connection the client had
/// lost). With the switch it is answered queued again, and the client waits for a grant
/// already made: `GrantNotTold` (the answer came after the grant), or the lock is not
/// acquirable after the heal. Single locks had this bug (soak seed 7014017), multi-locks
/// too until the simulator sent them (soak seed 25191590).
#[test]
fn fault_stale_retried_lock_answers_leave_waiters_untold() {
    catches(
        "fault_stale_retried_lock_answers_leave_waiters_untold",
        switches(|s| s.stale_retried_lock_answers = true),
        &[
            ViolationKind::GrantNotTold,
            ViolationKind::LockNotAcquirable,
        ],
        |_| {},
        100,
    );
}

/// Watches must fire for what a snapshot install skipped (the install compares the old
/// and new state at every watched path). With the switch an install fires nothing, and a
/// client then gets a response past a change of a node it watches without the event.
#[test]
fn fault_silent_install_leaves_watches_unfired() {
    catches(
        "fault_silent_install_leaves_watches_unfired",
        switches(|s| s.silent_install = true),
        &[ViolationKind::WatchNotFired],
        |c| c.watch_per_mille = 800,
        100,
    );
}

/// `SetWatches` must fire for what changed since the client's `last_zxid`. With the
/// switch it compares with the server's own zxid, so what changed while the client was
/// away fires nothing.
#[test]
fn fault_set_watches_from_now_loses_events_across_reconnects() {
    catches(
        "fault_set_watches_from_now_loses_events_across_reconnects",
        switches(|s| s.set_watches_from_now = true),
        &[ViolationKind::WatchNotFired],
        |c| c.watch_per_mille = 800,
        100,
    );
}

/// A recursive watch fires for every change under its node but children-list changes.
/// With the switch it is not told when a node under it is deleted, and a client holding
/// one on `/eph` then gets a response past an ephemeral node's deletion without the event.
#[test]
fn fault_recursive_skips_deletions_leaves_watches_unfired() {
    catches(
        "fault_recursive_skips_deletions_leaves_watches_unfired",
        switches(|s| s.recursive_skips_deletions = true),
        &[ViolationKind::WatchNotFired],
        |c| c.watch_per_mille = 800,
        100,
    );
}

/// `RevokeLease` closes the lease, which releases every lock held or awaited under it.
/// With the switch it answers without closing it, and the simulator finds the lease
/// still open in the state of a node that applied the revocation.
#[test]
fn fault_revoke_leaves_lease_open() {
    catches(
        "fault_revoke_leaves_lease_open",
        switches(|s| s.revoke_leaves_lease_open = true),
        &[ViolationKind::MachineInvariant],
        |c| c.revoke_per_mille = 500,
        100,
    );
}

/// A container goes with its last child, and a container parent it leaves empty goes
/// too. With the switch the cascade stops at the first level, which every node does
/// alike; the container check sees the parent stay.
#[test]
fn fault_reaping_stops_at_one_level_is_caught() {
    catches(
        "fault_reaping_stops_at_one_level_is_caught",
        switches(|s| s.reaping_stops_at_one_level = true),
        &[ViolationKind::Containers],
        |c| c.container_weight = 16,
        100,
    );
}

/// A failed multi changes nothing, a parent's stat included. With the switch its
/// rollback gives a parent back its children but not the child-change count and zxid
/// that its undone creations and deletions advanced, which every node does alike (the
/// state hashes agree); a read of the parent's stat, against the decided log's changes,
/// sees it (the container tasks' multis that delete a leaf and then fail).
#[test]
fn fault_rollback_keeps_child_counts_is_caught() {
    catches(
        "fault_rollback_keeps_child_counts_is_caught",
        switches(|s| s.rollback_keeps_child_counts = true),
        &[ViolationKind::ReadMismatch],
        |c| c.container_weight = 16,
        100,
    );
}

/// A multi is all or nothing: one that fails undoes what its operations before the
/// failing one changed. With the switch it keeps them, which every node does alike (the
/// state hashes agree); the clients' compare-and-sets that set and then check the
/// version see it (a `BadVersion` answer whose write took effect), and so does a read
/// of the key's stat (a version the decided log's changes do not account for).
#[test]
fn fault_multi_keeps_earlier_ops_breaks_compare_and_set() {
    catches(
        "fault_multi_keeps_earlier_ops_breaks_compare_and_set",
        switches(|s| s.multi_keeps_earlier_ops = true),
        &[ViolationKind::NotLinearizable, ViolationKind::ReadMismatch],
        |c| c.cas_per_mille = 700,
        100,
    );
}
