//! Watches in the simulation: the one-shot watches each client holds, and the changes of
//! the decided log that must fire them.
//!
//! Simulated clients set one-shot watches (`GetData`, `Exists` and `GetChildren` with
//! `watch: true`) on the register keys and the ephemeral nodes (see [`watchable`]), and
//! persistent watches (`AddWatch`) on the register keys and `/eph` (nodes that are never
//! deleted), and re-register them with `SetWatches` first thing after every reconnect,
//! with the last zxid they saw on a connection whose watches were all registered, as
//! `corral-client` does. The checks, against the changes every node reports as it applies an entry
//! ([`ChangeLog`]), are PROTOCOL.md's guarantees ("Watches"):
//!
//! - **No event without a change** (`WatchSpurious`): events on a connection come in
//!   zxid order, and an event consumes at least one watch
//!   the client holds on its path, and for each, a change that fires a watch of its kind
//!   lies after the zxid the watch counts from and no later than the event's zxid. So a
//!   one-shot watch that fires twice, or an event for a change the client had already
//!   seen, is caught.
//! - **Registrations agree** (`RemoveWatches`, which clients sometimes send for a watch
//!   they hold): the server removes one exactly when the client holds a watch of the
//!   kinds named once every earlier answer is in (`WatchSpurious` if the server had one
//!   the client does not, `WatchNotFired` if it lost one the client holds).
//! - **Every change told before a later response** (`WatchNotFired`): when a response
//!   with zxid Z arrives while every watch the client holds is registered on its
//!   connection, none of them has a change up to Z that must have fired it. A data or
//!   child watch must fire on any change of its kind; an exist watch (the node was absent)
//!   only if the node exists at Z: after a reconnect or a snapshot install changes
//!   collapse, and a node created and deleted meanwhile fires nothing. A persistent
//!   watch must have been told of the last change to its node up to Z (an event at that
//!   change's zxid or later: an install collapses changes into one event at its zxid),
//!   if that change came after the watch was registered on the connection: a
//!   re-registered persistent watch fires nothing for what changed while the client was
//!   away (the client is told so: `Error::WatchResumed`).
//!
//! A watch counts from the zxid of the answer that set it; a `SetWatches` with
//! `last_zxid` L makes it count from L if that is earlier (the server compares the node
//! with L, so a change between L and the watch's zxid may fire it again, as in
//! ZooKeeper).

use super::check::{Violation, ViolationKind};
use crate::machine::Change;
use crate::watches::WatchKind;
use corral_protocol::{
    AddWatchMode, ErrorCode, ErrorInfo, EventKind, Op, OpResult, WatchEvent, WatchSet, WatcherKind,
};
use std::collections::{BTreeMap, BTreeSet};

/// The paths simulated clients watch: the register keys, `/eph` and its children.
pub fn watchable(path: &str) -> bool {
    path.starts_with("/reg/") || path == "/eph" || path.starts_with("/eph/")
}

/// Whether a change of kind `change` to a node fires a one-shot watch of kind `watch` on
/// it (`watches.rs`, the table at the top).
fn fires(change: EventKind, watch: WatchKind) -> bool {
    match change {
        EventKind::NodeCreated | EventKind::NodeDataChanged => {
            matches!(watch, WatchKind::Data | WatchKind::Exist)
        }
        EventKind::NodeDeleted => {
            matches!(watch, WatchKind::Data | WatchKind::Exist | WatchKind::Child)
        }
        EventKind::NodeChildrenChanged => watch == WatchKind::Child,
    }
}

/// The changes of the decided log at the watchable paths, from the first report of each
/// zxid (every node makes the same changes at a zxid: the state hashes say so).
#[derive(Debug, Default)]
pub struct ChangeLog {
    /// Every zxid reported, watchable changes or not.
    known: BTreeSet<u64>,
    /// Every zxid up to this one is known.
    contiguous: u64,
    by_path: BTreeMap<String, BTreeMap<u64, Vec<EventKind>>>,
}

impl ChangeLog {
    /// A node applied (or replayed) the entry at `zxid`, which made `changes`.
    pub fn record(&mut self, zxid: u64, changes: &[Change]) {
        if !self.known.insert(zxid) {
            return;
        }
        while self.known.contains(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        for c in changes.iter().filter(|c| watchable(&c.path)) {
            self.by_path
                .entry(c.path.clone())
                .or_default()
                .entry(zxid)
                .or_default()
                .push(c.kind);
        }
    }

    /// The first change to `path` after `after` and up to `upto` that fires a watch of
    /// kind `kind`.
    fn first_firing(
        &self,
        path: &str,
        kind: WatchKind,
        after: u64,
        upto: u64,
    ) -> Option<(u64, EventKind)> {
        if upto <= after {
            return None;
        }
        self.by_path
            .get(path)?
            .range(after + 1..=upto)
            .find_map(|(z, kinds)| kinds.iter().find(|k| fires(**k, kind)).map(|k| (*z, *k)))
    }

    /// Whether `path` had a change of kind `kind` after `after` and up to `upto`.
    fn changed(&self, path: &str, kind: EventKind, after: u64, upto: u64) -> bool {
        upto > after
            && self.by_path.get(path).is_some_and(|m| {
                m.range(after + 1..=upto)
                    .any(|(_, kinds)| kinds.contains(&kind))
            })
    }

    /// The zxid of the last change to `path` up to `upto`.
    fn last_change(&self, path: &str, upto: u64) -> Option<u64> {
        self.by_path
            .get(path)?
            .range(..=upto)
            .next_back()
            .map(|(z, _)| *z)
    }

    /// Whether the node at `path` exists at `zxid`, from its last creation or deletion
    /// (`None`: neither is known).
    fn exists_at(&self, path: &str, zxid: u64) -> Option<bool> {
        self.by_path
            .get(path)?
            .range(..=zxid)
            .rev()
            .find_map(|(_, kinds)| {
                kinds.iter().rev().find_map(|k| match k {
                    EventKind::NodeCreated => Some(true),
                    EventKind::NodeDeleted => Some(false),
                    _ => None,
                })
            })
    }

    /// The watch of kind `kind` at `path`, counting from `since`, that a response with
    /// zxid `at` arrived ahead of: the change that had to fire it first, if any.
    fn missed(&self, path: &str, kind: WatchKind, since: u64, at: u64) -> Option<(u64, EventKind)> {
        let first = self.first_firing(path, kind, since, at)?;
        match kind {
            // The node was absent: only a node that exists now must have been told.
            WatchKind::Exist => (self.exists_at(path, at) == Some(true)).then_some(first),
            _ => Some(first),
        }
    }
}

/// The one-shot watches a simulated client holds, and what it saw.
#[derive(Debug, Default)]
pub struct ClientWatches {
    /// Each one-shot watch with the zxid it counts from.
    held: BTreeMap<(String, WatchKind), u64>,
    /// Each persistent watch: the zxid it counts from on this connection, and the
    /// highest zxid of an event it got since.
    persistent: BTreeMap<String, (u64, u64)>,
    /// The highest zxid of a response or event on a connection whose watches were all
    /// registered (what `SetWatches` sends).
    seen_zxid: u64,
    /// The `SetWatches` in flight on this connection: until it is answered, the watches
    /// are not all registered again.
    resync: Option<u64>,
    /// Events received (for the report).
    pub events: u64,
    /// `SetWatches` sent (for the report).
    pub resyncs: u64,
    /// The zxid of the last event on this connection (events come in zxid order).
    last_event_zxid: u64,
}

impl ClientWatches {
    /// A read answered at `zxid`: the watch it set, if it asked for one.
    pub fn answered(&mut self, op: &Op, result: &Result<OpResult, ErrorInfo>, zxid: u64) {
        let set = match (op, result) {
            (Op::GetData { path, watch: true }, Ok(_)) => Some((path, WatchKind::Data)),
            (Op::Exists { path, watch: true }, Ok(OpResult::Exists(Some(_)))) => {
                Some((path, WatchKind::Data))
            }
            (Op::Exists { path, watch: true }, Ok(OpResult::Exists(None))) => {
                Some((path, WatchKind::Exist))
            }
            (Op::GetChildren { path, watch: true }, Ok(_)) => Some((path, WatchKind::Child)),
            (
                Op::AddWatch {
                    path,
                    mode: AddWatchMode::Persistent,
                },
                Ok(_),
            ) => {
                self.persistent.entry(path.clone()).or_insert((zxid, zxid));
                None
            }
            _ => None,
        };
        if let Some((path, kind)) = set {
            // A watch already held stays as it was: the server keeps one per kind.
            self.held.entry((path.clone(), kind)).or_insert(zxid);
        }
    }

    /// A response or a pushed event at `zxid` on the current connection.
    pub fn saw(&mut self, zxid: u64) {
        if self.resync.is_none() {
            self.seen_zxid = self.seen_zxid.max(zxid);
        }
    }

    /// A watch event: checks it against the watches it fires (which it removes) and the
    /// changes.
    pub fn on_event(
        &mut self,
        client: usize,
        ev: &WatchEvent,
        changes: &ChangeLog,
        now: u64,
    ) -> Result<(), Violation> {
        self.events += 1;
        if ev.zxid < self.last_event_zxid {
            return Err(Violation {
                kind: ViolationKind::WatchSpurious,
                at_us: now,
                detail: format!(
                    "client {client} got {:?} on {} at zxid {} after an event at zxid {} on \
                     the same connection",
                    ev.kind, ev.path, ev.zxid, self.last_event_zxid
                ),
            });
        }
        self.last_event_zxid = ev.zxid;
        let consumed: Vec<(WatchKind, u64)> = [WatchKind::Data, WatchKind::Exist, WatchKind::Child]
            .into_iter()
            .filter(|k| fires(ev.kind, *k))
            .filter_map(|k| {
                self.held
                    .remove(&(ev.path.clone(), k))
                    .map(|since| (k, since))
            })
            .collect();
        let spurious = |detail: String| {
            Err(Violation {
                kind: ViolationKind::WatchSpurious,
                at_us: now,
                detail,
            })
        };
        let persistent = self.persistent.get_mut(&ev.path).map(|(since, told)| {
            *told = (*told).max(ev.zxid);
            *since
        });
        if consumed.is_empty() && persistent.is_none() {
            return spurious(format!(
                "client {client} got {:?} on {} at zxid {} without a watch there that it fires",
                ev.kind, ev.path, ev.zxid
            ));
        }
        if ev.zxid > changes.contiguous {
            return Ok(());
        }
        if let (true, Some(since)) = (consumed.is_empty(), persistent) {
            // A persistent watch's event names the kind of a change since it counts.
            if !changes.changed(&ev.path, ev.kind, since, ev.zxid) {
                return spurious(format!(
                    "client {client} got {:?} on {} at zxid {} for its persistent watch \
                     counting from zxid {since}, but no such change happened in between",
                    ev.kind, ev.path, ev.zxid
                ));
            }
        }
        for (kind, since) in consumed {
            if changes
                .first_firing(&ev.path, kind, since, ev.zxid)
                .is_none()
            {
                return spurious(format!(
                    "client {client} got {:?} on {} at zxid {} for its {kind:?} watch counting \
                     from zxid {since}, but nothing changed there in between",
                    ev.kind, ev.path, ev.zxid
                ));
            }
        }
        Ok(())
    }

    /// A response with zxid `at` arrived: every change up to it that fires a watch the
    /// client holds must have been told (unless the watches are being re-registered).
    pub fn check_due(
        &self,
        client: usize,
        at: u64,
        changes: &ChangeLog,
        now: u64,
    ) -> Result<(), Violation> {
        if self.resync.is_some() {
            return Ok(());
        }
        for ((path, kind), since) in &self.held {
            if let Some((z, change)) = changes.missed(path, *kind, *since, at) {
                return Err(Violation {
                    kind: ViolationKind::WatchNotFired,
                    at_us: now,
                    detail: format!(
                        "client {client} got a response at zxid {at} but no event for its \
                         {kind:?} watch on {path} (counting from zxid {since}), which \
                         {change:?} at zxid {z} fires"
                    ),
                });
            }
        }
        for (path, (since, told)) in &self.persistent {
            let Some(last) = changes.last_change(path, at) else {
                continue;
            };
            if last > *since && last > *told {
                return Err(Violation {
                    kind: ViolationKind::WatchNotFired,
                    at_us: now,
                    detail: format!(
                        "client {client} got a response at zxid {at} but no event since zxid \
                         {told} for its persistent watch on {path} (counting from zxid \
                         {since}), whose node changed at zxid {last}"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The connection changed: the `SetWatches` to send before anything else, if the
    /// client holds watches. Each watch now counts from the zxid sent, if earlier.
    pub fn resync_op(&mut self) -> Option<Op> {
        self.resync = None;
        self.last_event_zxid = 0;
        if self.held.is_empty() && self.persistent.is_empty() {
            return None;
        }
        let mut watches = WatchSet {
            persistent: self.persistent.keys().cloned().collect(),
            ..WatchSet::default()
        };
        for ((path, kind), since) in self.held.iter_mut() {
            *since = (*since).min(self.seen_zxid);
            match kind {
                WatchKind::Data => watches.data.push(path.clone()),
                WatchKind::Exist => watches.exist.push(path.clone()),
                WatchKind::Child => watches.child.push(path.clone()),
                WatchKind::Persistent | WatchKind::PersistentRecursive => {}
            }
        }
        Some(Op::SetWatches {
            last_zxid: self.seen_zxid,
            watches,
        })
    }

    /// The `SetWatches` of `resync_op` went out with `xid`.
    pub fn resync_sent(&mut self, xid: u64) {
        self.resyncs += 1;
        self.resync = Some(xid);
    }

    /// The answer to the request `xid`: if it is the `SetWatches` in flight, the watches
    /// are registered again (or, refused, gone: the server registers all or none).
    /// Persistent watches count from the answer's zxid `zxid`: what changed while the
    /// client was away fired nothing.
    pub fn resync_answered(&mut self, xid: u64, ok: bool, zxid: u64) {
        if self.resync == Some(xid) {
            self.resync = None;
            if !ok {
                self.held.clear();
                self.persistent.clear();
            }
            for (since, told) in self.persistent.values_mut() {
                *since = zxid;
                *told = zxid;
            }
        }
    }

    /// A `RemoveWatches` to send for a watch the client holds, drawn with `pick` (an
    /// index below the count of its watches), or `None` if it holds none. `any` removes
    /// every kind at the path.
    pub fn removal(&self, pick: u64, any: bool) -> Option<Op> {
        let count = self.held.len() + self.persistent.len();
        if count == 0 {
            return None;
        }
        let i = (pick % count as u64) as usize;
        let (path, kind) = match self.held.keys().nth(i) {
            Some((path, WatchKind::Child)) => (path.clone(), WatcherKind::Children),
            Some((path, _)) => (path.clone(), WatcherKind::Data),
            None => (
                self.persistent.keys().nth(i - self.held.len())?.clone(),
                WatcherKind::Persistent,
            ),
        };
        let kind = if any { WatcherKind::Any } else { kind };
        Some(Op::RemoveWatches { path, kind })
    }

    /// The answer to a `RemoveWatches`: every earlier answer and event is in, so the
    /// server removed a watch exactly if the client holds one of the kinds named, which
    /// it drops.
    pub fn removed(
        &mut self,
        client: usize,
        op: &Op,
        result: &Result<OpResult, ErrorInfo>,
        now: u64,
    ) -> Result<(), Violation> {
        let Op::RemoveWatches { path, kind } = op else {
            return Ok(());
        };
        let covers = |k: WatchKind| match kind {
            WatcherKind::Data => matches!(k, WatchKind::Data | WatchKind::Exist),
            WatcherKind::Children => k == WatchKind::Child,
            WatcherKind::Persistent => false,
            WatcherKind::Any => true,
        };
        let one_shot: Vec<WatchKind> = self
            .held
            .keys()
            .filter(|(p, k)| p == path && covers(*k))
            .map(|(_, k)| *k)
            .collect();
        let persistent = matches!(kind, WatcherKind::Persistent | WatcherKind::Any)
            && self.persistent.contains_key(path);
        let holds = !one_shot.is_empty() || persistent;
        let removed = match result {
            Ok(_) => true,
            Err(e) => e.code == ErrorCode::NoWatcher,
        };
        if !removed {
            // Refused for another reason: the watches stay as they were.
            return Ok(());
        }
        for k in one_shot {
            self.held.remove(&(path.clone(), k));
        }
        if persistent {
            self.persistent.remove(path);
        }
        match result {
            Ok(_) if !holds => Err(Violation {
                kind: ViolationKind::WatchSpurious,
                at_us: now,
                detail: format!(
                    "client {client} removed its {kind:?} watches on {path}, which it did not \
                     hold (fired, or never set), but the server had one"
                ),
            }),
            Err(e) if e.code == ErrorCode::NoWatcher && holds => Err(Violation {
                kind: ViolationKind::WatchNotFired,
                at_us: now,
                detail: format!(
                    "client {client} removed its {kind:?} watch on {path}, which had not \
                     fired, but the server had none: {}",
                    e.message
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the client holds a persistent watch on `path`.
    pub fn has_persistent(&self, path: &str) -> bool {
        self.persistent.contains_key(path)
    }

    /// The session ended: its watches with it.
    pub fn clear(&mut self) {
        self.held.clear();
        self.persistent.clear();
        self.resync = None;
    }
}
