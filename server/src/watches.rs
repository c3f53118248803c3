//! Watch registry of one node. Not replicated: each node fires the watches its own
//! clients registered, from the changes its apply step reports, in zxid order.

use crate::machine::{Change, StateMachine};
use corral_protocol::{ErrorInfo, WatchEvent, WatchSet, WatcherKind};

/// The kind of one registered watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchKind {
    Data,
    Exist,
    Child,
    Persistent,
    PersistentRecursive,
}

/// All watches on this node, keyed by session.
#[derive(Debug, Default)]
pub struct WatchManager {}

impl WatchManager {
    /// A registry that allows at most `max_watches_per_session` watches per session.
    pub fn new(max_watches_per_session: usize) -> Self {
        let _ = max_watches_per_session;
        unimplemented!()
    }

    /// Registers a watch (idempotent). Fails with `LimitExceeded` over the limit.
    pub fn add(&mut self, session: u64, path: &str, kind: WatchKind) -> Result<(), ErrorInfo> {
        let _ = (session, path, kind);
        unimplemented!()
    }

    /// Removes the session's watches of `kind` on `path`; `NoWatcher` if none matched.
    pub fn remove(&mut self, session: u64, path: &str, kind: WatcherKind) -> Result<(), ErrorInfo> {
        let _ = (session, path, kind);
        unimplemented!()
    }

    /// Drops every watch of a session (disconnected, closed or expired).
    pub fn remove_session(&mut self, session: u64) {
        let _ = session;
        unimplemented!()
    }

    /// The events one change fires, per session, removing the one-shot watches it fires.
    pub fn trigger(&mut self, change: &Change, zxid: u64) -> Vec<(u64, WatchEvent)> {
        let _ = (change, zxid);
        unimplemented!()
    }

    /// Re-registers watches after a reconnect, with ZooKeeper's `setWatches` semantics
    /// against the current state; returns the events that fire at once.
    pub fn set_watches(
        &mut self,
        session: u64,
        last_zxid: u64,
        watches: &WatchSet,
        machine: &StateMachine,
    ) -> Result<Vec<WatchEvent>, ErrorInfo> {
        let _ = (session, last_zxid, watches, machine);
        unimplemented!()
    }

    /// Total watches registered.
    pub fn len(&self) -> usize {
        unimplemented!()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
