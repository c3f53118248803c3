//! Prometheus metrics (the `metrics` facade with the `metrics-exporter-prometheus`
//! recorder), rendered by the admin endpoint's `/metrics`.
//!
//! Who records what:
//! - the IO shell (`server.rs`): connections, requests by op and outcome with their
//!   latency, lock acquire outcomes and wait times (it sees every request and every
//!   message sent to a connection);
//! - the storage thread (`storage.rs`): fsync latency, batch sizes, snapshots,
//!   compactions and checkpoints;
//! - the node core keeps plain counters ([`NodeStats`]) and the shell copies them into
//!   counters at each scrape ([`export_node`]), together with gauges read from the
//!   core's state ([`ServerStatus`]). The core itself records nothing and reads no clock.
//!
//! Every metric is described in `docs/OPERATIONS.md`.

use crate::node::NodeStats;
use corral_protocol::{ErrorCode, Op, OpResult, Response, Role, ServerStatus};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Buckets of the latency histograms, in seconds (100 us .. 30 s).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Buckets of the lock wait histogram, in seconds (1 ms .. 10 min).
const LOCK_WAIT_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];
/// Buckets of the batch size histogram, in entries or records.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Requests by op and outcome (`ok` or the error code).
pub const REQUESTS: &str = "corral_requests_total";
/// Request latency by op, from arrival on the connection to the answer being queued.
pub const REQUEST_SECONDS: &str = "corral_request_duration_seconds";
/// Latency of successful write requests (proposal, replication to a quorum, fsync,
/// apply).
pub const COMMIT_SECONDS: &str = "corral_commit_duration_seconds";
/// Lock requests by outcome: locked, queued, held (try refused), deadlock, error.
pub const LOCK_ACQUIRES: &str = "corral_lock_acquires_total";
/// Time from a lock request to its grant (answered `Locked` or pushed `LockGranted`).
pub const LOCK_WAIT_SECONDS: &str = "corral_lock_wait_seconds";
/// Connections accepted.
pub const CONNECTIONS_ACCEPTED: &str = "corral_connections_accepted_total";
/// Connections refused, by reason.
pub const CONNECTIONS_REJECTED: &str = "corral_connections_rejected_total";
/// Connections open now.
pub const CONNECTIONS_OPEN: &str = "corral_connections_open";
/// fsync (or fdatasync) latency.
pub const FSYNC_SECONDS: &str = "corral_fsync_duration_seconds";
/// Entries (single node) or log records (cluster) made durable by one fsync.
pub const FSYNC_BATCH: &str = "corral_fsync_batch_size";
/// Snapshots written, by result.
pub const SNAPSHOTS: &str = "corral_snapshots_total";
/// Time to decode a snapshot from the leader for an install (off the core; the node
/// applies nothing meanwhile).
pub const SNAPSHOT_DECODE_SECONDS: &str = "corral_snapshot_decode_seconds";
/// Log compactions (single node: segments deleted behind a snapshot; cluster:
/// checkpoint records written).
pub const COMPACTIONS: &str = "corral_log_compactions_total";
/// Inputs the node core took at least [`CORE_STALL`] to handle: meanwhile the node
/// answered nobody and sent nothing to its peers.
pub const CORE_STALLS: &str = "corral_core_stalls_total";
/// The znode tree's estimated size ([`crate::machine::StateMachine::state_bytes`]), the figure
/// `max_state_bytes` limits.
pub const STATE_BYTES: &str = "corral_state_bytes";
/// What counts as a core stall (see [`CORE_STALLS`]).
pub const CORE_STALL: std::time::Duration = std::time::Duration::from_millis(50);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once); `None` if another recorder was installed.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(LOCK_WAIT_SECONDS.into()), LOCK_WAIT_BUCKETS_SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FSYNC_BATCH.into()), BATCH_BUCKETS));
            let handle = match builder.map(|b| b.install_recorder()) {
                Ok(Ok(h)) => h,
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics is empty");
                    return None;
                }
            };
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "Requests by op and outcome (ok or the error code)"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Request latency by op, arrival to answer"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Latency of successful writes: proposal, replication, fsync, apply"
    );
    describe_counter!(
        LOCK_ACQUIRES,
        "Lock requests by outcome: locked, queued, held, deadlock, error"
    );
    describe_histogram!(
        LOCK_WAIT_SECONDS,
        Unit::Seconds,
        "Time from a lock request to its grant"
    );
    describe_counter!(
        CORE_STALLS,
        "Inputs the node core took 50 ms or more to handle"
    );
    describe_counter!(CONNECTIONS_ACCEPTED, "Client connections accepted");
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Client connections refused, by reason"
    );
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open");
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Write-ahead log fsync latency"
    );
    describe_histogram!(
        FSYNC_BATCH,
        "Entries (single node) or records (cluster) per fsync"
    );
    describe_counter!(SNAPSHOTS, "Snapshots written, by result");
    describe_histogram!(
        SNAPSHOT_DECODE_SECONDS,
        Unit::Seconds,
        "Decoding a snapshot from the leader for an install (the node applies nothing meanwhile)"
    );
    describe_counter!(
        COMPACTIONS,
        "Log compactions (segments deleted, or checkpoints written)"
    );
    for (name, help, _) in node_counters(&NodeStats::default()) {
        describe_counter!(name, help);
    }
    for (name, help, _) in status_gauges(&empty_status()) {
        describe_gauge!(name, help);
    }
    describe_gauge!(
        "corral_peer_up",
        "Whether the link to a peer is up (1) or down (0)"
    );
    describe_gauge!(
        STATE_BYTES,
        Unit::Bytes,
        "Estimated size of the znode tree, compared with max_state_bytes"
    );
}

/// Defines the export of [`NodeStats`]: each field becomes the counter
/// `corral_<field>_total`. A new field of `NodeStats` needs one line here.
macro_rules! node_counters {
    ($($field:ident => $help:literal,)*) => {
        /// The node's counters as (metric name, help, value).
        pub fn node_counters(stats: &NodeStats) -> Vec<(&'static str, &'static str, u64)> {
            vec![$((concat!("corral_", stringify!($field), "_total"), $help, stats.$field),)*]
        }
    };
}

node_counters! {
    locks_granted_at_once => "Lock requests granted at once",
    locks_queued => "Lock requests queued behind a holder",
    locks_granted_later => "Grants pushed to waiting sessions on this node",
    lock_tries_failed => "try-only lock requests refused because the lock was held",
    locks_abandoned_cleaned => "Held locks released because their session or lease expired",
    locks_lost => "Lock losses pushed to sessions on this node",
    lock_releases_failed => "Releases refused or of locks no longer held",
    sessions_expired => "Sessions and leases this node expired (as leader)",
    leader_changes => "Leader changes seen by this node",
    snapshots_installed => "Snapshots installed from the leader (catch-up of a lagging node)",
    snapshots_taken => "Snapshots taken (single node) or log compactions asked for as leader",
    compactions_deferred => "Log compactions put off (skipped, waiting, or at an older image) for want of this node's own image of the point",
    compactions_with_tail => "Log compactions made with a tail encoded on the node's core, after being put off twice",
    deadlocks_broken => "Lock requests refused with Deadlock because they would have closed a wait cycle",
}

/// The gauges read from a status as (metric name, help, value).
pub fn status_gauges(s: &ServerStatus) -> Vec<(&'static str, &'static str, f64)> {
    let role = |r: Role| if s.role == r { 1.0 } else { 0.0 };
    vec![
        (
            "corral_is_leader",
            "1 if this node leads its cluster (or is a single node)",
            role(Role::Leader) + role(Role::Standalone),
        ),
        (
            "corral_has_leader",
            "1 if this node knows a leader",
            if s.leader.is_some() { 1.0 } else { 0.0 },
        ),
        (
            "corral_ready",
            "1 if this node is ready (see /ready)",
            if s.ready { 1.0 } else { 0.0 },
        ),
        (
            "corral_applied_zxid",
            "zxid of the last entry applied here",
            s.applied_zxid as f64,
        ),
        (
            "corral_committed_zxid",
            "zxid of the last entry known committed here",
            s.committed_zxid as f64,
        ),
        (
            "corral_log_bytes",
            "Bytes of the write-ahead log on disk",
            s.log_bytes as f64,
        ),
        (
            "corral_snapshot_bytes",
            "Bytes of snapshot files on disk",
            s.snapshot_bytes as f64,
        ),
        (
            "corral_sessions",
            "Live sessions and leases",
            s.sessions as f64,
        ),
        (
            "corral_watches",
            "Watches registered on this node",
            s.watches as f64,
        ),
        ("corral_znodes", "Znodes in the tree", s.znodes as f64),
        (
            "corral_locks",
            "Locks with at least one holder or waiter",
            s.locks as f64,
        ),
        (
            "corral_locks_held",
            "Queue nodes holding their lock",
            s.locks_held as f64,
        ),
        (
            "corral_locks_waiting",
            "Queue nodes waiting for their lock (sum of queue lengths)",
            s.locks_waiting as f64,
        ),
    ]
}

fn empty_status() -> ServerStatus {
    ServerStatus {
        node_id: 0,
        role: Role::Standalone,
        leader: None,
        members: Vec::new(),
        applied_zxid: 0,
        committed_zxid: 0,
        log_bytes: 0,
        snapshot_bytes: 0,
        sessions: 0,
        connections: 0,
        watches: 0,
        znodes: 0,
        locks: 0,
        locks_held: 0,
        locks_waiting: 0,
        admin_addr: None,
        ready: false,
        version: String::new(),
    }
}

/// Copies the node's counters and state into the registry (at each scrape).
pub fn export_node(stats: &NodeStats, status: &ServerStatus) {
    for (name, _, value) in node_counters(stats) {
        metrics::counter!(name).absolute(value);
    }
    for (name, _, value) in status_gauges(status) {
        metrics::gauge!(name).set(value);
    }
    metrics::gauge!(STATE_BYTES).set(stats.state_bytes as f64);
    for m in &status.members {
        let peer = m.node_id.to_string();
        metrics::gauge!("corral_peer_up", "peer" => peer).set(if m.reachable { 1.0 } else { 0.0 });
    }
}

/// The label of an outcome: `ok`, or the error code in snake case.
pub fn outcome(result: &Result<OpResult, corral_protocol::ErrorInfo>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(e) => error_label(e.code),
    }
}

fn error_label(code: ErrorCode) -> String {
    let name = format!("{code:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Records one answered request.
pub fn record_request(op: &'static str, is_write: bool, seconds: f64, response: &Response) {
    metrics::counter!(REQUESTS, "op" => op, "outcome" => outcome(&response.result)).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "op" => op).record(seconds);
    if is_write && response.result.is_ok() {
        metrics::histogram!(COMMIT_SECONDS).record(seconds);
    }
}

/// Records the answer to a lock request; returns whether the request now waits in the
/// queue (its wait ends with a `LockGranted`).
pub fn record_lock_answer(seconds: f64, response: &Response) -> bool {
    let outcome = match &response.result {
        Ok(OpResult::Locked { .. }) => "locked",
        Ok(OpResult::Queued { .. }) => "queued",
        Ok(OpResult::MultiLocked { granted: true, .. }) => "locked",
        Ok(OpResult::MultiLocked { granted: false, .. }) => "queued",
        Err(e) if e.code == ErrorCode::LockHeld => "held",
        Err(e) if e.code == ErrorCode::Deadlock => "deadlock",
        _ => "error",
    };
    metrics::counter!(LOCK_ACQUIRES, "outcome" => outcome).increment(1);
    if outcome == "locked" {
        metrics::histogram!(LOCK_WAIT_SECONDS).record(seconds);
    }
    outcome == "queued"
}

/// Records the grant of a request that waited.
pub fn record_lock_granted_after_wait(seconds: f64) {
    metrics::histogram!(LOCK_WAIT_SECONDS).record(seconds);
}

/// Whether an op is a lock acquisition.
pub fn is_lock(op: &Op) -> bool {
    matches!(op, Op::Lock(_) | Op::LockMany(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_become_snake_case_labels() {
        assert_eq!(error_label(ErrorCode::LockHeld), "lock_held");
        assert_eq!(error_label(ErrorCode::NoNode), "no_node");
    }

    #[test]
    fn every_counter_is_named_after_its_field() {
        let stats = NodeStats {
            leader_changes: 3,
            ..NodeStats::default()
        };
        let counters = node_counters(&stats);
        let found = counters
            .iter()
            .find(|(name, _, _)| *name == "corral_leader_changes_total")
            .map(|(_, _, v)| *v);
        assert_eq!(found, Some(3));
        assert!(counters
            .iter()
            .all(|(n, _, _)| n.starts_with("corral_") && n.ends_with("_total")));
    }
}
