//! Detached requests (sent on behalf of a dropped handle or a caller that gave up, see
//! [`Detached`]) until they are answered, and those the server answered with a
//! transient error, waiting to be sent again. Pure (no IO; the clock and the jitter
//! come in as arguments), so it is unit tested on its own.
//!
//! The connection task sends some requests nobody waits for: releases of queue nodes
//! (a dropped guard, a given-up acquire, a lock answer that found no caller, an orphan
//! found by a re-read), revokes of leases (a dropped lease, a lock's dedicated lease at
//! its release), deletes of nodes their owner gave up on (a double barrier
//! participant's own node at its deadline), and re-reads of locks whose re-read after a
//! reconnect was refused (a waiter granted while away learns it only from one). Each is
//! resent after every reconnect until
//! it is answered. An answer can be an error that says nothing about the request: the
//! server cannot take writes now (`Unavailable`: no quorum, a failed disk, too many
//! proposals waiting), an internal error, a limit. Until the request succeeds, a
//! released node stays in the queue, holding or blocking its lock; a revoked lease lives
//! on, with its locks, until its TTL; a double barrier participant's node keeps the
//! others waiting until the session ends. So the task sends it again after a pause that
//! doubles with every failure (with jitter, up to a ceiling), for as long as the session
//! lives. Each request is tracked from when it is sent until it is answered (or fails
//! for good), at most one entry per key (the node and token of a release, the lease of a
//! revoke, the path of a delete, the lock of a re-read), so the entries never outnumber what the session holds
//! and sends.
//!
//! A request sent again goes out after the requests the session made meanwhile. For a
//! release (one queue node, named by its token) or a revoke (lease ids are not reused)
//! that changes nothing, but a delete names its node by path: sent again after this
//! session created that path anew (a double barrier entered again), it would delete the
//! new node. Such a create **supersedes** the delete: it is not sent again (whether the
//! old node is still there or not, the path then exists, as the later create wanted).

use crate::connection::Detached;
use corral_protocol::{ErrorCode, MultiOp, Op};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The pause after a request's first failure.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Whether a detached request the server answered with `code` is worth sending again
/// as it is. `false` for what cannot change by retrying: the node or lease is not (or
/// no longer) this session's, the request is malformed, or the session is over (which
/// ends the client anyway). Every detached request is safe to send again: a release
/// names its node by token, a revoke its lease by id, and a delete (of the node's path,
/// at any version) is superseded by a later create of the path (see the module docs).
pub(crate) fn worth_retrying(code: ErrorCode) -> bool {
    use ErrorCode::*;
    match code {
        // The server could not apply it now; the request is idempotent, so sending it
        // again (with a new xid, which also settles `StaleRequest`) is safe.
        SystemError | ConnectionLoss | OperationTimeout | Unavailable | LimitExceeded
        | StaleRequest => true,
        // Not this session's node or lease, not a lock, already gone, or a request this
        // server cannot take; `RuntimeInconsistency` is a server bug that a retry would
        // only repeat.
        RuntimeInconsistency
        | Malformed
        | Unimplemented
        | BadArguments
        | NoNode
        | BadVersion
        | NoChildrenForEphemerals
        | NodeExists
        | NotEmpty
        | InvalidPath
        | DataTooLarge
        | FrameTooLarge
        | NoWatcher
        | LockHeld
        | NotLockOwner
        | LockNotHeld
        | NoLease
        | Deadlock => false,
        // The session is over (the connection task ends the client on these).
        SessionExpired | SessionMoved | AuthFailed | ProtocolMismatch => false,
    }
}

/// Whether an answer with `code` means that `what` has nothing left to do: the lease
/// to revoke (`NoLease`) or the node to delete (`NoNode`) is already gone.
pub(crate) fn already_done(what: &Detached, code: ErrorCode) -> bool {
    matches!(
        (what, code),
        (Detached::RevokeLease { .. }, ErrorCode::NoLease)
            | (Detached::Delete { .. }, ErrorCode::NoNode)
    )
}

/// What one entry stands for: at most one entry per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// A release: the request's first node and its token.
    Release(String, u64),
    /// A revoke: the lease id.
    RevokeLease(u64),
    /// A delete: the path.
    Delete(String),
    /// A lock's re-read: the lock.
    ReadLock(String),
}

fn key(what: &Detached) -> Key {
    match what {
        Detached::Release(nodes) => Key::Release(nodes.node.node.clone(), nodes.node.token),
        Detached::RevokeLease { lease_id } => Key::RevokeLease(*lease_id),
        Detached::Delete { path } => Key::Delete(path.clone()),
        Detached::ReadLock { lock, .. } => Key::ReadLock(lock.clone()),
    }
}

/// The paths `op` creates as they are named (not sequential nodes, whose names get a
/// counter).
fn created_paths(op: &Op) -> Vec<&str> {
    match op {
        Op::Create(c) if !c.mode.is_sequential() => vec![c.path.as_str()],
        Op::Multi(ops) => ops
            .iter()
            .filter_map(|o| match o {
                MultiOp::Create(c) if !c.mode.is_sequential() => Some(c.path.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug)]
struct Entry {
    what: Detached,
    /// Failed attempts in a row.
    failures: u32,
    /// When to send it again; `None` while an attempt is on its way.
    due: Option<Instant>,
    /// A later request of the session made sending it again wrong (see the module
    /// docs): once the attempt on its way is answered, it is done.
    superseded: bool,
}

/// The detached requests on their way or to send again, one entry per key.
#[derive(Debug, Default)]
pub(crate) struct DetachedRetries {
    entries: BTreeMap<Key, Entry>,
}

impl DetachedRetries {
    /// An attempt of `what` is on its way: tracks it until it is answered (an entry
    /// waiting to be sent again waits no more, as one attempt of it is enough).
    pub(crate) fn sent(&mut self, what: &Detached) {
        self.entries
            .entry(key(what))
            .or_insert_with(|| Entry {
                what: what.clone(),
                failures: 0,
                due: None,
                superseded: false,
            })
            .due = None;
    }

    /// The session sends `op`: a delete waiting to be sent again of a path `op` creates
    /// is dropped, one on its way is not sent again (see the module docs).
    pub(crate) fn sending(&mut self, op: &Op) {
        for path in created_paths(op) {
            let key = Key::Delete(path.to_string());
            if let Some(entry) = self.entries.get_mut(&key) {
                if entry.due.is_some() {
                    self.entries.remove(&key);
                } else {
                    entry.superseded = true;
                }
            }
        }
    }

    /// An attempt of `what` failed with an error [`worth_retrying`] at `now`: schedules
    /// it again and returns the pause, or `None` if it is superseded (and now done). The
    /// pause doubles from [`FIRST_PAUSE`] with each failure in a row, up to `ceiling`,
    /// and is then drawn from its upper half (`jitter` in `[0, 1)`).
    pub(crate) fn failed(
        &mut self,
        what: &Detached,
        now: Instant,
        jitter: f64,
        ceiling: Duration,
    ) -> Option<Duration> {
        let key = key(what);
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            what: what.clone(),
            failures: 0,
            due: None,
            superseded: false,
        });
        if entry.superseded {
            self.entries.remove(&key);
            return None;
        }
        let doublings = entry.failures.min(16);
        entry.failures = entry.failures.saturating_add(1);
        let full = FIRST_PAUSE
            .saturating_mul(1 << doublings)
            .min(ceiling.max(FIRST_PAUSE));
        let pause = full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        // A pause beyond the clock's range (a huge ceiling) never comes.
        entry.due = now.checked_add(pause);
        Some(pause)
    }

    /// `what` was answered (or failed for good): nothing more to send.
    pub(crate) fn done(&mut self, what: &Detached) {
        self.entries.remove(&key(what));
    }

    /// When the next request is due, if one waits.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.due).min()
    }

    /// The requests due at `now`, marked as on their way.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Detached> {
        self.entries
            .values_mut()
            .filter(|e| e.due.is_some_and(|due| due <= now))
            .map(|e| {
                e.due = None;
                e.what.clone()
            })
            .collect()
    }

    /// Removes every release (the session's lease ran out while disconnected: attempts
    /// on their way were failed), for the caller to mark their locks for a sweep, which
    /// also finds a node whose release was applied or not. Revokes and deletes have no
    /// such sweep: they stay.
    pub(crate) fn drain_releases(&mut self) -> Vec<Detached> {
        let (releases, others) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(_, e)| matches!(e.what, Detached::Release(_)));
        self.entries = others;
        releases.into_values().map(|e| e.what).collect()
    }

    /// Number of requests waiting or on their way.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock_registry::RequestNodes;
    use corral_protocol::{CreateMode, CreateRequest};

    fn release(node: &str, token: u64) -> Detached {
        Detached::Release(RequestNodes::one(node, token))
    }

    fn delete(path: &str) -> Detached {
        Detached::Delete { path: path.into() }
    }

    fn create(path: &str, mode: CreateMode) -> CreateRequest {
        CreateRequest {
            path: path.into(),
            data: Vec::new(),
            mode,
            make_parents: false,
        }
    }

    #[test]
    fn transient_errors_are_retried_and_the_others_are_not() {
        assert!(worth_retrying(ErrorCode::Unavailable));
        assert!(worth_retrying(ErrorCode::SystemError));
        assert!(worth_retrying(ErrorCode::LimitExceeded));
        assert!(worth_retrying(ErrorCode::OperationTimeout));
        assert!(worth_retrying(ErrorCode::StaleRequest));
        assert!(!worth_retrying(ErrorCode::NotLockOwner));
        assert!(!worth_retrying(ErrorCode::NoNode));
        assert!(!worth_retrying(ErrorCode::NoLease));
        assert!(!worth_retrying(ErrorCode::BadArguments));
        assert!(!worth_retrying(ErrorCode::SessionExpired));
    }

    #[test]
    fn a_revoke_answered_no_lease_and_a_delete_answered_no_node_are_done() {
        let revoke = Detached::RevokeLease { lease_id: 9 };
        assert!(already_done(&revoke, ErrorCode::NoLease));
        assert!(!already_done(&revoke, ErrorCode::NoNode));
        assert!(!already_done(&revoke, ErrorCode::Unavailable));
        assert!(already_done(&delete("/b/me"), ErrorCode::NoNode));
        assert!(!already_done(&delete("/b/me"), ErrorCode::NoLease));
        assert!(!already_done(&delete("/b/me"), ErrorCode::Unavailable));
        // A release answered `NoNode` is reported: the node should have been there.
        assert!(!already_done(&release("/l/x-1", 7), ErrorCode::NoNode));
    }

    #[test]
    fn pauses_double_up_to_the_ceiling_and_one_entry_per_request() {
        let mut r = DetachedRetries::default();
        let now = Instant::now();
        let a = release("/l/x-1", 7);
        let ceiling = Duration::from_millis(500);
        assert_eq!(r.failed(&a, now, 1.0, ceiling), Some(FIRST_PAUSE));
        assert_eq!(r.failed(&a, now, 1.0, ceiling), Some(FIRST_PAUSE * 2));
        assert_eq!(r.failed(&a, now, 0.0, ceiling), Some(FIRST_PAUSE * 4 / 2));
        for _ in 0..40 {
            assert!(r.failed(&a, now, 1.0, ceiling) <= Some(ceiling));
        }
        assert_eq!(r.failed(&a, now, 1.0, ceiling), Some(ceiling));
        // A ceiling below the first pause does not make it spin.
        let b = release("/l/x-2", 8);
        assert_eq!(r.failed(&b, now, 1.0, Duration::ZERO), Some(FIRST_PAUSE));
        assert_eq!(r.len(), 2, "one entry per request, however often it fails");
        // Another node of the same path (a later one) is another request.
        r.failed(&release("/l/x-1", 9), now, 1.0, ceiling);
        assert_eq!(r.len(), 3);
        // Revokes are keyed by lease, deletes by path, each apart from the releases.
        let revoke = Detached::RevokeLease { lease_id: 7 };
        assert_eq!(r.failed(&revoke, now, 1.0, ceiling), Some(FIRST_PAUSE));
        assert_eq!(r.failed(&revoke, now, 1.0, ceiling), Some(FIRST_PAUSE * 2));
        assert_eq!(
            r.failed(&delete("/l/x-1"), now, 1.0, ceiling),
            Some(FIRST_PAUSE)
        );
        r.failed(&Detached::RevokeLease { lease_id: 8 }, now, 1.0, ceiling);
        assert_eq!(r.len(), 6);
    }

    #[test]
    fn due_requests_are_taken_once_and_answered_ones_forgotten() {
        let mut r = DetachedRetries::default();
        let now = Instant::now();
        let a = release("/l/x-1", 7);
        let b = Detached::RevokeLease { lease_id: 3 };
        let c = delete("/b/me");
        let ceiling = Duration::from_secs(2);
        r.failed(&a, now, 1.0, ceiling);
        r.failed(&b, now, 1.0, ceiling);
        r.failed(&b, now, 1.0, ceiling);
        assert_eq!(r.next_due(), Some(now + FIRST_PAUSE));
        assert!(r.take_due(now).is_empty());
        assert_eq!(r.take_due(now + FIRST_PAUSE), vec![a.clone()]);
        // On its way: not due again, still counted.
        assert_eq!(r.next_due(), Some(now + FIRST_PAUSE * 2));
        assert_eq!(r.take_due(now + FIRST_PAUSE * 2), vec![b.clone()]);
        assert_eq!(r.next_due(), None);
        assert_eq!(r.len(), 2);
        // Failed again: the pause keeps growing.
        assert_eq!(r.failed(&a, now, 1.0, ceiling), Some(FIRST_PAUSE * 2));
        r.done(&a);
        r.done(&b);
        assert_eq!(r.len(), 0);
        assert_eq!(r.next_due(), None);
        // Tracked from the first attempt; a failure after it schedules it.
        r.sent(&c);
        assert_eq!(r.len(), 1);
        assert_eq!(r.next_due(), None);
        r.failed(&c, now, 1.0, ceiling);
        assert_eq!(r.next_due(), Some(now + FIRST_PAUSE));
        // Sent again some other way meanwhile: one attempt on its way is enough.
        r.sent(&c);
        assert_eq!(r.next_due(), None);
        assert!(r.take_due(now + ceiling).is_empty());
        r.done(&c);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_lapse_drains_the_releases_and_keeps_the_others() {
        let mut r = DetachedRetries::default();
        let now = Instant::now();
        let ceiling = Duration::from_secs(2);
        let a = release("/l/x-1", 7);
        let b = Detached::RevokeLease { lease_id: 3 };
        let c = delete("/b/me");
        r.failed(&a, now, 1.0, ceiling);
        r.sent(&b);
        r.failed(&c, now, 1.0, ceiling);
        assert_eq!(r.drain_releases(), vec![a]);
        assert_eq!(r.len(), 2);
        assert_eq!(r.take_due(now + FIRST_PAUSE), vec![c]);
    }

    #[test]
    fn a_later_create_of_the_path_supersedes_a_delete() {
        let mut r = DetachedRetries::default();
        let now = Instant::now();
        let ceiling = Duration::from_secs(2);
        let me = delete("/b/me");
        // Waiting to be sent again: dropped at once.
        r.failed(&me, now, 1.0, ceiling);
        r.sending(&Op::Create(create("/b/me", CreateMode::Ephemeral)));
        assert_eq!(r.len(), 0);
        assert_eq!(r.next_due(), None);
        // On its way: done once answered, whatever the answer.
        r.sent(&me);
        r.sending(&Op::Multi(vec![MultiOp::Create(create(
            "/b/me",
            CreateMode::Persistent,
        ))]));
        assert_eq!(r.len(), 1);
        assert_eq!(r.failed(&me, now, 1.0, ceiling), None);
        assert_eq!(r.len(), 0);
        // Other paths, sequential creates, other requests and other kinds are left be.
        r.sent(&me);
        let revoke = Detached::RevokeLease { lease_id: 3 };
        r.sent(&revoke);
        r.sending(&Op::Create(create("/b/other", CreateMode::Ephemeral)));
        r.sending(&Op::Create(create(
            "/b/me",
            CreateMode::EphemeralSequential,
        )));
        r.sending(&Op::Delete {
            path: "/b/me".into(),
            version: None,
        });
        assert_eq!(r.failed(&me, now, 1.0, ceiling), Some(FIRST_PAUSE));
        assert_eq!(r.failed(&revoke, now, 1.0, ceiling), Some(FIRST_PAUSE));
        assert_eq!(r.len(), 2);
    }
}
