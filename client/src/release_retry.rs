//! Background releases that the server answered with a transient error, waiting to be
//! sent again. Pure (no IO; the clock and the jitter come in as arguments), so it is
//! unit tested on its own.
//!
//! The connection task releases queue nodes nobody waits for any more (a dropped guard,
//! a given-up acquire, a lock answer that found no caller, an orphan found by a re-read)
//! and resends such a release after every reconnect until it is answered. An answer can
//! be an error that says nothing about the node: the server cannot take writes now
//! (`Unavailable`: no quorum, a failed disk, too many proposals waiting), an internal
//! error, a limit. Until the release succeeds the node stays in the queue, holding or
//! blocking the lock for as long as the session lives, so the task sends it again after
//! a pause that doubles with every failure (with jitter, up to a ceiling), for as long as
//! the session lives. There is at most one entry per request (keyed by its first node and
//! token), so the entries never outnumber the nodes the session holds.

use crate::lock_registry::RequestNodes;
use corral_protocol::ErrorCode;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The pause after a release's first failure.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Whether a release the server answered with `code` is worth sending again as it is.
/// `false` for what cannot change by retrying: the node is not (or no longer) this
/// session's, the request is malformed, or the session is over (which ends the client
/// anyway).
pub(crate) fn worth_retrying(code: ErrorCode) -> bool {
    use ErrorCode::*;
    match code {
        // The server could not apply it now; a release is idempotent, so sending it again
        // (with a new xid, which also settles `StaleRequest`) is safe.
        SystemError | ConnectionLoss | OperationTimeout | Unavailable | LimitExceeded
        | StaleRequest => true,
        // Not this session's node, not a lock, or a request this server cannot take;
        // `RuntimeInconsistency` is a server bug that a retry would only repeat.
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

#[derive(Debug)]
struct Entry {
    nodes: RequestNodes,
    /// Failed attempts in a row.
    failures: u32,
    /// When to send it again; `None` while an attempt is on its way.
    due: Option<Instant>,
}

/// The releases to send again, keyed by the request's first node and its token.
#[derive(Debug, Default)]
pub(crate) struct ReleaseRetries {
    entries: BTreeMap<(String, u64), Entry>,
}

fn key(nodes: &RequestNodes) -> (String, u64) {
    (nodes.node.node.clone(), nodes.node.token)
}

impl ReleaseRetries {
    /// A release of `nodes` failed with an error [`worth_retrying`] at `now`: schedules
    /// it again and returns the pause. The pause doubles from [`FIRST_PAUSE`] with each
    /// failure in a row, up to `ceiling`, and is then drawn from its upper half
    /// (`jitter` in `[0, 1)`).
    pub(crate) fn failed(
        &mut self,
        nodes: &RequestNodes,
        now: Instant,
        jitter: f64,
        ceiling: Duration,
    ) -> Duration {
        let entry = self.entries.entry(key(nodes)).or_insert_with(|| Entry {
            nodes: nodes.clone(),
            failures: 0,
            due: None,
        });
        let doublings = entry.failures.min(16);
        entry.failures = entry.failures.saturating_add(1);
        let full = FIRST_PAUSE
            .saturating_mul(1 << doublings)
            .min(ceiling.max(FIRST_PAUSE));
        let pause = full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        // A pause beyond the clock's range (a huge ceiling) never comes.
        entry.due = now.checked_add(pause);
        pause
    }

    /// A release of `nodes` was answered (or failed for good): nothing more to send.
    pub(crate) fn done(&mut self, nodes: &RequestNodes) {
        self.entries.remove(&key(nodes));
    }

    /// When the next release is due, if one waits.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.entries.values().filter_map(|e| e.due).min()
    }

    /// The releases due at `now`, marked as on their way.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<RequestNodes> {
        self.entries
            .values_mut()
            .filter(|e| e.due.is_some_and(|due| due <= now))
            .map(|e| {
                e.due = None;
                e.nodes.clone()
            })
            .collect()
    }

    /// Removes every entry (the session's lease ran out while disconnected: attempts on
    /// their way were failed), for the caller to mark their locks for a sweep.
    pub(crate) fn drain(&mut self) -> Vec<RequestNodes> {
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|e| e.nodes)
            .collect()
    }

    /// Number of releases waiting or on their way.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_retried_and_the_others_are_not() {
        assert!(worth_retrying(ErrorCode::Unavailable));
        assert!(worth_retrying(ErrorCode::SystemError));
        assert!(worth_retrying(ErrorCode::LimitExceeded));
        assert!(!worth_retrying(ErrorCode::NotLockOwner));
        assert!(!worth_retrying(ErrorCode::NoNode));
        assert!(!worth_retrying(ErrorCode::BadArguments));
        assert!(!worth_retrying(ErrorCode::SessionExpired));
    }

    #[test]
    fn pauses_double_up_to_the_ceiling_and_one_entry_per_request() {
        let mut r = ReleaseRetries::default();
        let now = Instant::now();
        let a = RequestNodes::one("/l/x-1", 7);
        let ceiling = Duration::from_millis(500);
        assert_eq!(r.failed(&a, now, 1.0, ceiling), FIRST_PAUSE);
        assert_eq!(r.failed(&a, now, 1.0, ceiling), FIRST_PAUSE * 2);
        assert_eq!(r.failed(&a, now, 0.0, ceiling), FIRST_PAUSE * 4 / 2);
        for _ in 0..40 {
            assert!(r.failed(&a, now, 1.0, ceiling) <= ceiling);
        }
        assert_eq!(r.failed(&a, now, 1.0, ceiling), ceiling);
        // A ceiling below the first pause does not make it spin.
        let b = RequestNodes::one("/l/x-2", 8);
        assert_eq!(r.failed(&b, now, 1.0, Duration::ZERO), FIRST_PAUSE);
        assert_eq!(r.len(), 2, "one entry per request, however often it fails");
        // Another node of the same path (a later one) is another request.
        r.failed(&RequestNodes::one("/l/x-1", 9), now, 1.0, ceiling);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn due_releases_are_taken_once_and_answered_ones_forgotten() {
        let mut r = ReleaseRetries::default();
        let now = Instant::now();
        let a = RequestNodes::one("/l/x-1", 7);
        let b = RequestNodes::one("/m/x-1", 7);
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
        assert_eq!(r.failed(&a, now, 1.0, ceiling), FIRST_PAUSE * 2);
        r.done(&a);
        r.done(&b);
        assert_eq!(r.len(), 0);
        assert_eq!(r.next_due(), None);
        r.failed(&a, now, 1.0, ceiling);
        assert_eq!(r.drain(), vec![a]);
        assert_eq!(r.len(), 0);
    }
}
