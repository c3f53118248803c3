//! Deliberately injected bugs ("fault switches"), so that tests can show that the
//! deterministic simulator ([`crate::sim`]) catches each class of bug it claims to.
//!
//! Each switch re-creates a plausible mistake in one place of the node. They exist only in
//! test builds and with the `sim` feature; in a production build [`active`] is a constant
//! with every switch off, so the checks compile away. The switches in force are
//! per thread: the simulator runs a whole cluster on one thread and sets them for the
//! duration of a run, so tests running in parallel do not see each other's switches.
//! Switches that change the replicated state machine must be the same on every node
//! (otherwise the nodes would disagree for a reason that is not a bug).

/// Which bugs to inject. All off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultSwitches {
    /// Locks: every waiter is granted at once, without waiting for its predecessors
    /// (breaks "at most one holder", a writer's exclusion and a semaphore's permits).
    pub grant_without_predecessor: bool,
    /// Locks: the fencing token handed out is the queue node's sequence number instead of
    /// its creation zxid; the counter restarts when the lock's directory is reaped
    /// (breaks "tokens strictly increase").
    pub token_from_sequence: bool,
    /// Apply: an entry is applied with the applying node's clock instead of the time the
    /// proposer stamped into it (breaks "same zxid, same state").
    pub apply_with_local_time: bool,
    /// Replication: OmniPaxos messages are sent, and decided entries applied, before the
    /// sync that makes them durable has completed (breaks "no acknowledged write lost"
    /// when nodes crash).
    pub ack_before_durable: bool,
    /// Replication: a leader sends `AcceptDecide` and `Decide` messages whose decided
    /// index it has not made durable itself, i.e. it counts its own acceptance in the
    /// quorum before its fsync (breaks "no acknowledged write lost" when nodes crash).
    pub decide_before_leader_durable: bool,
    /// Storage: every fsync reports success without making anything durable (the
    /// simulator applies it to its disks; breaks "no acknowledged write lost").
    pub skip_fsync: bool,
    /// State machine: a retried write is executed again instead of answered from the
    /// deduplication table (breaks "a retried request takes effect at most once").
    pub skip_dedup: bool,
    /// State machine: an `OrderedWrite` that reaches the log after a later write of its
    /// session is applied instead of refused (breaks "a session's writes apply in xid
    /// order").
    pub apply_out_of_order: bool,
    /// Sessions: a new leader keeps the deadlines it tracked as a follower instead of
    /// restarting them at full TTL (breaks "no session expires while its client's
    /// keepalives are acknowledged").
    pub keep_deadlines_on_leader_change: bool,
    /// Reads: `sync` is answered from the node's applied state without a barrier through
    /// the log (breaks linearizability of sync + read).
    pub sync_without_barrier: bool,
    /// Replication: a forwarded proposal is sent once and never again, even after a
    /// leader change or a timeout (breaks "every pending request completes or fails").
    pub send_forwards_once: bool,
    /// Locks: the `LockGranted` message to a waiting session is not sent (breaks "every
    /// lock becomes acquirable again").
    pub lose_lock_grant_event: bool,
    /// Sessions: the leader acknowledges followers' reports of live sessions without
    /// renewing them (breaks "no session expires while its leader heard from it").
    pub ignore_alive_reports: bool,
    /// Catch-up: the entries after a snapshot from the leader are applied to the old
    /// state while the snapshot is still being decoded, which then replaces it (breaks
    /// "same zxid, same state").
    pub apply_during_install: bool,
    /// Storage: snapshot files (a cluster node's compaction images, a single node's
    /// snapshots) are renamed into place without an fsync of their contents, so the log
    /// may refer to an image a crash then loses (breaks "a node recovers from its own
    /// disk").
    pub unsynced_snapshot_files: bool,
    /// State machine: a retried lock request (`Lock`, `LockMany`) whose first answer was
    /// "queued" is answered so again after its nodes were granted, although the grant
    /// was pushed while the client was away (breaks "every grant is told").
    pub stale_retried_lock_answers: bool,
    /// Watches: a snapshot install fires no events for the changes it skipped (breaks
    /// "every change is told before a later response").
    pub silent_install: bool,
    /// Watches: `SetWatches` compares a node with the zxid the server has reached
    /// instead of the client's `last_zxid`, so what changed while the client was away
    /// fires nothing (breaks "every change is told before a later response").
    pub set_watches_from_now: bool,
    /// Watches: a recursive watch is not told when a node under it is deleted (only
    /// when its own node is), breaking "every change is told before a later response".
    pub recursive_skips_deletions: bool,
    /// State machine: `RevokeLease` answers without closing the lease, so its locks stay
    /// held until it expires (breaks "a revoked lease's locks are released").
    pub revoke_leaves_lease_open: bool,
    /// State machine: a multi that fails keeps what its operations before the failing
    /// one changed, instead of undoing them (breaks "a multi is all or nothing").
    pub multi_keeps_earlier_ops: bool,
    /// Tree: containers are reaped only where an entry itself took a child away, not up
    /// through the container parents that reaping empties (breaks "an emptied container
    /// is deleted, cascading upward").
    pub reaping_stops_at_one_level: bool,
    /// Tree: a failed multi's rollback gives a parent back its children but keeps the
    /// child-change count and zxid (`cversion`, `pzxid`) its undone operations advanced
    /// (breaks "a failed multi changes nothing").
    pub rollback_keeps_child_counts: bool,
}

impl FaultSwitches {
    /// Whether any switch is on.
    pub fn any(&self) -> bool {
        *self != FaultSwitches::default()
    }
}

#[cfg(any(test, feature = "sim"))]
thread_local! {
    static ACTIVE: std::cell::Cell<FaultSwitches> =
        const { std::cell::Cell::new(FaultSwitches {
            grant_without_predecessor: false,
            token_from_sequence: false,
            apply_with_local_time: false,
            ack_before_durable: false,
            decide_before_leader_durable: false,
            skip_fsync: false,
            skip_dedup: false,
            apply_out_of_order: false,
            keep_deadlines_on_leader_change: false,
            sync_without_barrier: false,
            send_forwards_once: false,
            lose_lock_grant_event: false,
            ignore_alive_reports: false,
            apply_during_install: false,
            unsynced_snapshot_files: false,
            stale_retried_lock_answers: false,
            silent_install: false,
            set_watches_from_now: false,
            recursive_skips_deletions: false,
            revoke_leaves_lease_open: false,
            multi_keeps_earlier_ops: false,
            reaping_stops_at_one_level: false,
            rollback_keeps_child_counts: false,
        }) };
}

/// The switches in force on this thread: those [`set`] on it, else the process-wide
/// ones of [`from_env`] (for real `corral` processes built with the `sim` feature).
#[cfg(any(test, feature = "sim"))]
pub fn active() -> FaultSwitches {
    let local = ACTIVE.with(|a| a.get());
    if local.any() {
        local
    } else {
        from_env()
    }
}

/// The environment variable that turns switches on for a whole `corral` process, as a
/// comma-separated list of switch names (e.g. `grant_without_predecessor`). Read only
/// by builds with the `sim` feature: the Jepsen harness (`jepsen/`) uses it to show
/// that its checkers flag a deliberately broken server.
pub const FAULTS_ENV: &str = "CORRAL_TEST_FAULTS";

/// The switches named by [`FAULTS_ENV`] (read once; unknown names are logged and
/// ignored).
#[cfg(any(test, feature = "sim"))]
pub fn from_env() -> FaultSwitches {
    static FROM_ENV: std::sync::OnceLock<FaultSwitches> = std::sync::OnceLock::new();
    *FROM_ENV.get_or_init(|| {
        let mut f = FaultSwitches::default();
        let Ok(list) = std::env::var(FAULTS_ENV) else {
            return f;
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let switch = match name {
                "grant_without_predecessor" => &mut f.grant_without_predecessor,
                "token_from_sequence" => &mut f.token_from_sequence,
                "apply_with_local_time" => &mut f.apply_with_local_time,
                "ack_before_durable" => &mut f.ack_before_durable,
                "skip_fsync" => &mut f.skip_fsync,
                "skip_dedup" => &mut f.skip_dedup,
                "apply_out_of_order" => &mut f.apply_out_of_order,
                "keep_deadlines_on_leader_change" => &mut f.keep_deadlines_on_leader_change,
                "sync_without_barrier" => &mut f.sync_without_barrier,
                "send_forwards_once" => &mut f.send_forwards_once,
                "lose_lock_grant_event" => &mut f.lose_lock_grant_event,
                "ignore_alive_reports" => &mut f.ignore_alive_reports,
                "apply_during_install" => &mut f.apply_during_install,
                "unsynced_snapshot_files" => &mut f.unsynced_snapshot_files,
                "stale_retried_lock_answers" => &mut f.stale_retried_lock_answers,
                "silent_install" => &mut f.silent_install,
                "set_watches_from_now" => &mut f.set_watches_from_now,
                "recursive_skips_deletions" => &mut f.recursive_skips_deletions,
                "revoke_leaves_lease_open" => &mut f.revoke_leaves_lease_open,
                "multi_keeps_earlier_ops" => &mut f.multi_keeps_earlier_ops,
                "reaping_stops_at_one_level" => &mut f.reaping_stops_at_one_level,
                "rollback_keeps_child_counts" => &mut f.rollback_keeps_child_counts,
                other => {
                    tracing::error!(switch = other, "unknown fault switch in {FAULTS_ENV}");
                    continue;
                }
            };
            *switch = true;
        }
        if f.any() {
            tracing::warn!(switches = ?f, "TEST FAULT SWITCHES ACTIVE: this server is deliberately broken");
        }
        f
    })
}

/// The switches in force: none, in a production build.
#[cfg(not(any(test, feature = "sim")))]
#[inline(always)]
pub fn active() -> FaultSwitches {
    FaultSwitches {
        grant_without_predecessor: false,
        token_from_sequence: false,
        apply_with_local_time: false,
        ack_before_durable: false,
        decide_before_leader_durable: false,
        skip_fsync: false,
        skip_dedup: false,
        apply_out_of_order: false,
        keep_deadlines_on_leader_change: false,
        sync_without_barrier: false,
        send_forwards_once: false,
        lose_lock_grant_event: false,
        ignore_alive_reports: false,
        apply_during_install: false,
        unsynced_snapshot_files: false,
        stale_retried_lock_answers: false,
        silent_install: false,
        set_watches_from_now: false,
        recursive_skips_deletions: false,
        revoke_leaves_lease_open: false,
        multi_keeps_earlier_ops: false,
        reaping_stops_at_one_level: false,
        rollback_keeps_child_counts: false,
    }
}

/// Sets the switches in force on this thread (until the returned guard is dropped).
#[cfg(any(test, feature = "sim"))]
pub fn set(switches: FaultSwitches) -> FaultGuard {
    let previous = ACTIVE.with(|a| a.replace(switches));
    FaultGuard { previous }
}

/// Restores the previous switches when dropped.
#[cfg(any(test, feature = "sim"))]
#[derive(Debug)]
pub struct FaultGuard {
    previous: FaultSwitches,
}

#[cfg(any(test, feature = "sim"))]
impl Drop for FaultGuard {
    fn drop(&mut self) {
        let previous = self.previous;
        ACTIVE.with(|a| a.set(previous));
    }
}
