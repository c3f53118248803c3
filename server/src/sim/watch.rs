//! Watches in the simulation: the one-shot watches each client holds, and the changes of
//! the decided log that must fire them.
//!
//! Simulated clients set one-shot watches (`GetData`, `Exists` and `GetChildren` with
//! `watch: true`) on the register keys and the ephemeral nodes (see [`watchable`]), and
//! persistent watches (`AddWatch`), plain or recursive, on the register keys, `/reg`,
//! `/eph` and the ephemeral nodes (which come and go), and re-register them with
//! `SetWatches` first thing after every reconnect, with the zxid of the last response
//! they got on a connection whose watches were all registered, as `corral-client` does
//! (not an event's: events share zxids). The checks, against the changes every node reports as it applies an entry
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
//!   child watch must fire on any change of its kind; so must an exist watch (the node
//!   was absent), except that a node created and deleted before the `SetWatches` that
//!   re-registered it (absent then) or inside an install fires nothing. A persistent
//!   watch must have been told of every change to its node up to Z (a recursive one: to
//!   its node and every node under it, children-list changes aside) that came after the
//!   watch was registered on the connection, by an event on that node at the change's
//!   zxid or later. A re-registered persistent watch fires nothing for what changed
//!   while the client was away (the client is told so: `Error::WatchResumed`). A
//!   snapshot install on the client's server collapses the changes it skips into one
//!   event per kind at its zxid, and a node absent both before and after it fires
//!   nothing: such a change is excused only if it lies inside an install of the
//!   server's current incarnation ([`ChangeLog::installed`]).
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
    under("/reg", path) || under("/eph", path)
}

/// Whether `path` is `root` or a node under it.
fn under(root: &str, path: &str) -> bool {
    root == "/"
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
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

/// The stat fields of a node that its recorded changes determine ([`ChangeLog::stat_at`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoggedStat {
    /// The zxid of its creation.
    pub czxid: u64,
    /// The zxid of its last data change (its creation if none).
    pub mzxid: u64,
    /// The zxid of the last child added or removed (its creation if none).
    pub pzxid: u64,
    /// Data changes since its creation.
    pub version: u32,
    /// Children added or removed since its creation.
    pub cversion: u32,
}

/// The decided log's changes to the tree, its lock grants and its sessions, from the
/// first report of each zxid (every node makes the same changes at a zxid: the state
/// hashes say so): what watch events, reads (`sim/reads.rs`) and reaping
/// (`sim/containers.rs`) are checked against.
#[derive(Debug, Default)]
pub struct ChangeLog {
    /// Every zxid reported.
    known: BTreeSet<u64>,
    /// Every zxid up to this one is known.
    contiguous: u64,
    /// The changes to each node, by zxid.
    by_path: BTreeMap<String, BTreeMap<u64, Vec<EventKind>>>,
    /// The snapshot installs of each node's current incarnation, by node id: the zxids
    /// before and after.
    installs: BTreeMap<u64, Vec<(u64, u64)>>,
    /// The zxid that granted each queue node, by (node, token).
    grants: BTreeMap<(String, u64), u64>,
    /// The ids of the sessions and leases begun (each the zxid that began it).
    sessions_begun: BTreeSet<u64>,
    /// How many sessions and leases ended, by the zxid that ended them.
    sessions_ended: BTreeMap<u64, usize>,
}

impl ChangeLog {
    /// A node applied (or replayed) the entry at `zxid`, which made `changes`. Returns
    /// whether this was the zxid's first report (later ones change nothing).
    pub fn record(&mut self, zxid: u64, changes: &[Change]) -> bool {
        if !self.known.insert(zxid) {
            return false;
        }
        while self.known.contains(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        for c in changes {
            self.by_path
                .entry(c.path.clone())
                .or_default()
                .entry(zxid)
                .or_default()
                .push(c.kind);
        }
        true
    }

    /// The entry at `zxid` granted queue node `node`, created with `token` (at once, or
    /// after it waited; a retry answered "granted" later keeps the first zxid).
    pub fn granted(&mut self, node: &str, token: u64, zxid: u64) {
        let at = self.grants.entry((node.to_string(), token)).or_insert(zxid);
        *at = (*at).min(zxid);
    }

    /// The session or lease `id` began (at zxid `id`).
    pub fn session_began(&mut self, id: u64) {
        self.sessions_begun.insert(id);
    }

    /// The entry at `zxid` ended `count` sessions and leases.
    pub fn sessions_ended(&mut self, zxid: u64, count: usize) {
        if count > 0 {
            self.sessions_ended.insert(zxid, count);
        }
    }

    /// How many sessions and leases were live at `zxid`.
    pub fn sessions_at(&self, zxid: u64) -> usize {
        let begun = self.sessions_begun.range(..=zxid).count();
        let ended: usize = self.sessions_ended.range(..=zxid).map(|(_, n)| n).sum();
        begun.saturating_sub(ended)
    }

    /// The zxid of the entry that granted queue node `node` with `token`.
    pub fn grant_zxid(&self, node: &str, token: u64) -> Option<u64> {
        self.grants.get(&(node.to_string(), token)).copied()
    }

    /// Node `node` installed a snapshot, from the state at zxid `from` to the one at `to`.
    pub fn installed(&mut self, node: u64, from: u64, to: u64) {
        self.installs.entry(node).or_default().push((from, to));
    }

    /// Node `node` crashed: its installs no longer excuse anything (a client's watches
    /// on it went with the connection).
    pub fn restarted(&mut self, node: u64) {
        self.installs.remove(&node);
    }

    /// Whether the change to `path` at `zxid` may have fired nothing on node `node`: it
    /// lies inside one of the node's installs, and the node was absent at both its ends.
    fn collapsed(&self, node: u64, path: &str, zxid: u64) -> bool {
        self.installs.get(&node).is_some_and(|installs| {
            installs.iter().any(|&(from, to)| {
                from < zxid
                    && zxid <= to
                    && self.exists_at(path, from) != Some(true)
                    && self.exists_at(path, to) != Some(true)
            })
        })
    }

    /// The changes to `path` after `after` and up to `upto`, by zxid.
    fn between<'a>(
        &'a self,
        path: &str,
        after: u64,
        upto: u64,
    ) -> impl DoubleEndedIterator<Item = (&'a u64, &'a Vec<EventKind>)> + 'a {
        self.by_path
            .get(path)
            .filter(|_| upto > after)
            .into_iter()
            .flat_map(move |m| m.range(after + 1..=upto))
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
        self.between(path, after, upto)
            .find_map(|(z, kinds)| kinds.iter().find(|k| fires(**k, kind)).map(|k| (*z, *k)))
    }

    /// Whether `path` had a change of kind `kind` after `after` and up to `upto`.
    fn changed(&self, path: &str, kind: EventKind, after: u64, upto: u64) -> bool {
        self.between(path, after, upto)
            .any(|(_, kinds)| kinds.contains(&kind))
    }

    /// The last change to `path` after `after` and up to `upto` that a persistent watch
    /// on node `node` must have told (`recursive`: children-list changes aside), unless an
    /// install there collapsed it into nothing.
    fn untold(
        &self,
        node: u64,
        path: &str,
        recursive: bool,
        after: u64,
        upto: u64,
    ) -> Option<(u64, EventKind)> {
        self.between(path, after, upto)
            .rev()
            .find_map(|(z, kinds)| {
                let kind = kinds
                    .iter()
                    .rev()
                    .find(|k| !recursive || **k != EventKind::NodeChildrenChanged)?;
                (!self.collapsed(node, path, *z)).then_some((*z, *kind))
            })
    }

    /// Whether every zxid up to `zxid` is known (so are its changes).
    pub fn complete_to(&self, zxid: u64) -> bool {
        zxid <= self.contiguous
    }

    /// How many nodes the tree held at `zxid`, the root included.
    pub fn znodes_at(&self, zxid: u64) -> usize {
        1 + self
            .by_path
            .keys()
            .filter(|p| self.exists_at(p, zxid) == Some(true))
            .count()
    }

    /// The names of the children of `parent` at `zxid`, sorted.
    pub fn children_at(&self, parent: &str, zxid: u64) -> Vec<String> {
        self.paths_under(parent)
            .filter(|p| corral_protocol::path::parent(p) == Some(parent))
            .filter(|p| self.exists_at(p, zxid) == Some(true))
            .map(|p| corral_protocol::path::name(p).to_string())
            .collect()
    }

    /// The paths with changes at `root` or under it.
    fn paths_under<'a>(&'a self, root: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.by_path
            .range::<str, _>((std::ops::Bound::Included(root), std::ops::Bound::Unbounded))
            .map(|(p, _)| p.as_str())
            .take_while(move |p| p.starts_with(root))
            .filter(move |p| under(root, p))
    }

    /// The zxid of the last creation of `path` at or before `zxid`.
    pub fn created_at(&self, path: &str, zxid: u64) -> Option<u64> {
        self.by_path
            .get(path)?
            .range(..=zxid)
            .rev()
            .find_map(|(z, kinds)| kinds.contains(&EventKind::NodeCreated).then_some(*z))
    }

    /// The stat fields the decided log sets for the node at `path` at `zxid`, counted
    /// back to its last creation (`tree.rs`: a creation starts them at its zxid, each
    /// data change and each child added or removed advances them): `None` if the node
    /// did not exist then, or its creation is not known (the root).
    pub fn stat_at(&self, path: &str, zxid: u64) -> Option<LoggedStat> {
        let mut stat = LoggedStat::default();
        let (mut mzxid, mut pzxid) = (None, None);
        for (z, kinds) in self.by_path.get(path)?.range(..=zxid).rev() {
            for kind in kinds.iter().rev() {
                match kind {
                    EventKind::NodeDeleted => return None,
                    EventKind::NodeCreated => {
                        stat.czxid = *z;
                        stat.mzxid = mzxid.unwrap_or(*z);
                        stat.pzxid = pzxid.unwrap_or(*z);
                        return Some(stat);
                    }
                    EventKind::NodeDataChanged => {
                        stat.version += 1;
                        mzxid.get_or_insert(*z);
                    }
                    EventKind::NodeChildrenChanged => {
                        stat.cversion += 1;
                        pzxid.get_or_insert(*z);
                    }
                }
            }
        }
        None
    }

    /// Whether the node at `path` exists at `zxid`, from its last creation or deletion
    /// (`None`: neither is known).
    pub fn exists_at(&self, path: &str, zxid: u64) -> Option<bool> {
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
    /// zxid `at` from node `node` arrived ahead of: the change that had to fire it, if
    /// any. `upto`: the zxid at which a `SetWatches` re-registered it (0 if none).
    fn missed(
        &self,
        node: u64,
        path: &str,
        (kind, since, upto): (WatchKind, u64, u64),
        at: u64,
    ) -> Option<(u64, EventKind)> {
        let first = self.first_firing(path, kind, since, at)?;
        if kind != WatchKind::Exist || self.exists_at(path, at) == Some(true) {
            return Some(first);
        }
        // The node was absent when the watch was set and is absent now: a creation and
        // deletion may have collapsed into nothing before the re-registration (the node
        // absent then) or inside an install; any other change must have fired it.
        self.between(path, since, at).find_map(|(z, kinds)| {
            let k = kinds.iter().find(|k| fires(**k, kind))?;
            let collapsed = (*z <= upto && self.exists_at(path, upto) != Some(true))
                || self.collapsed(node, path, *z);
            (!collapsed).then_some((*z, *k))
        })
    }
}

/// The one-shot watches a simulated client holds, and what it saw.
#[derive(Debug, Default)]
pub struct ClientWatches {
    /// Each one-shot watch with the zxid it counts from, and the zxid at which a
    /// `SetWatches` on this connection re-registered it (0: set here).
    held: BTreeMap<(String, WatchKind), (u64, u64)>,
    /// Each persistent watch, by path and whether it is recursive: the zxid it counts
    /// from on this connection.
    persistent: BTreeMap<(String, bool), u64>,
    /// Per path, the highest zxid of an event on this connection.
    told: BTreeMap<String, u64>,
    /// The highest zxid of a response on a connection whose watches were all registered
    /// (what `SetWatches` sends). Not of an event: events share a zxid (a multi's
    /// changes, an install's collapsed events), and a connection lost between them
    /// loses the rest (soak seed 25279965).
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
            (Op::AddWatch { path, mode }, Ok(_)) => {
                let recursive = *mode == AddWatchMode::PersistentRecursive;
                self.persistent
                    .entry((path.clone(), recursive))
                    .or_insert(zxid);
                None
            }
            _ => None,
        };
        if let Some((path, kind)) = set {
            // A watch already held stays as it was: the server keeps one per kind.
            self.held.entry((path.clone(), kind)).or_insert((zxid, 0));
        }
    }

    /// A response at `zxid` on the current connection.
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
                    .map(|(since, _)| (k, since))
            })
            .collect();
        let spurious = |detail: String| {
            Err(Violation {
                kind: ViolationKind::WatchSpurious,
                at_us: now,
                detail,
            })
        };
        let told = self.told.entry(ev.path.clone()).or_default();
        *told = (*told).max(ev.zxid);
        // The earliest zxid a persistent watch this event fires counts from.
        let persistent = self
            .persistent
            .iter()
            .filter(|((root, recursive), _)| {
                if *recursive {
                    ev.kind != EventKind::NodeChildrenChanged && under(root, &ev.path)
                } else {
                    *root == ev.path
                }
            })
            .map(|(_, since)| *since)
            .min();
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

    /// A response with zxid `at` arrived from node `node`: every change up to it that
    /// fires a watch the client holds must have been told (unless the watches are being
    /// re-registered).
    pub fn check_due(
        &self,
        client: usize,
        node: u64,
        at: u64,
        changes: &ChangeLog,
        now: u64,
    ) -> Result<(), Violation> {
        if self.resync.is_some() {
            return Ok(());
        }
        for ((path, kind), &(since, upto)) in &self.held {
            if let Some((z, change)) = changes.missed(node, path, (*kind, since, upto), at) {
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
        for ((root, recursive), since) in &self.persistent {
            let paths: Vec<&str> = if *recursive {
                changes.paths_under(root).collect()
            } else {
                vec![root.as_str()]
            };
            for path in paths {
                let told = self.told.get(path).copied().unwrap_or(0);
                let after = (*since).max(told);
                if let Some((z, change)) = changes.untold(node, path, *recursive, after, at) {
                    let what = if *recursive {
                        "recursive watch on"
                    } else {
                        "watch on"
                    };
                    return Err(Violation {
                        kind: ViolationKind::WatchNotFired,
                        at_us: now,
                        detail: format!(
                            "client {client} got a response at zxid {at} from n{node} but no \
                             event on {path} since zxid {told} for its persistent {what} \
                             {root} (counting from zxid {since}), which {change:?} at zxid \
                             {z} fires"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The connection changed: the `SetWatches` to send before anything else, if the
    /// client holds watches. Each watch now counts from the zxid sent, if earlier.
    pub fn resync_op(&mut self) -> Option<Op> {
        self.resync = None;
        self.last_event_zxid = 0;
        self.told.clear();
        if self.held.is_empty() && self.persistent.is_empty() {
            return None;
        }
        let mut watches = WatchSet::default();
        for (path, recursive) in self.persistent.keys() {
            if *recursive {
                watches.persistent_recursive.push(path.clone());
            } else {
                watches.persistent.push(path.clone());
            }
        }
        for ((path, kind), (since, _)) in self.held.iter_mut() {
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
            for since in self.persistent.values_mut() {
                *since = zxid;
            }
            for (_, upto) in self.held.values_mut() {
                *upto = zxid;
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
                self.persistent.keys().nth(i - self.held.len())?.0.clone(),
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
            && (self.has_persistent(path, false) || self.has_persistent(path, true));
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
            self.persistent.remove(&(path.clone(), false));
            self.persistent.remove(&(path.clone(), true));
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

    /// Whether the client holds a persistent watch on `path` (`recursive` or not).
    pub fn has_persistent(&self, path: &str, recursive: bool) -> bool {
        self.persistent.contains_key(&(path.to_string(), recursive))
    }

    /// The session ended: its watches with it.
    pub fn clear(&mut self) {
        self.held.clear();
        self.persistent.clear();
        self.told.clear();
        self.resync = None;
    }
}

/// A change of kind `kind` to `path`, for the tests of the checks.
#[cfg(test)]
pub(super) fn change(kind: EventKind, path: &str) -> Change {
    Change {
        kind,
        path: path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> ChangeLog {
        let mut log = ChangeLog::default();
        log.record(1, &[change(EventKind::NodeCreated, "/eph")]);
        log.record(
            2,
            &[
                change(EventKind::NodeCreated, "/eph/c0-0"),
                change(EventKind::NodeChildrenChanged, "/eph"),
            ],
        );
        log.record(
            3,
            &[
                change(EventKind::NodeDeleted, "/eph/c0-0"),
                change(EventKind::NodeChildrenChanged, "/eph"),
            ],
        );
        log.record(4, &[change(EventKind::NodeCreated, "/eph/c1-0")]);
        log
    }

    /// A persistent watch must be told of a node created and deleted after it counts,
    /// unless an install on its server skipped both (absent before and after it).
    #[test]
    fn an_install_excuses_only_a_node_absent_at_both_its_ends() {
        let mut log = log();
        let deleted = Some((3, EventKind::NodeDeleted));
        assert_eq!(log.untold(1, "/eph/c0-0", false, 0, 4), deleted);
        log.installed(2, 1, 4);
        assert_eq!(log.untold(1, "/eph/c0-0", false, 0, 4), deleted, "not n1's");
        assert_eq!(log.untold(2, "/eph/c0-0", false, 0, 4), None);
        // Present at the install's start: the install fires its deletion.
        log.installed(1, 2, 4);
        assert_eq!(log.untold(1, "/eph/c0-0", false, 0, 4), deleted);
        // Created inside, present at the end: fires its creation.
        assert_eq!(
            log.untold(2, "/eph/c1-0", false, 0, 4),
            Some((4, EventKind::NodeCreated))
        );
        log.restarted(2);
        assert_eq!(log.untold(2, "/eph/c0-0", false, 0, 4), deleted);
    }

    /// A recursive watch is owed an event for every change under its node except
    /// children-list changes; a plain one for every change to its node.
    #[test]
    fn recursive_watches_are_owed_their_descendants_changes() {
        let log = log();
        let mut w = ClientWatches::default();
        let add = |path: &str, mode| Op::AddWatch {
            path: path.to_string(),
            mode,
        };
        w.answered(
            &add("/eph", AddWatchMode::PersistentRecursive),
            &Ok(OpResult::WatchesUpdated),
            1,
        );
        let due = |w: &ClientWatches, at| w.check_due(0, 1, at, &log, 0);
        assert!(due(&w, 1).is_ok());
        let err = due(&w, 2).expect_err("the creation under /eph is owed");
        assert!(err.detail.contains("on /eph/c0-0"), "{}", err.detail);
        let ev = |kind, path: &str, zxid| WatchEvent {
            kind,
            path: path.to_string(),
            zxid,
        };
        w.on_event(0, &ev(EventKind::NodeCreated, "/eph/c0-0", 2), &log, 0)
            .expect("a change it fires");
        assert!(due(&w, 2).is_ok(), "/eph's children change is not owed");
        assert!(due(&w, 3).is_err(), "the deletion is owed");
        w.on_event(0, &ev(EventKind::NodeDeleted, "/eph/c0-0", 3), &log, 0)
            .expect("a change it fires");
        assert!(due(&w, 3).is_ok());
        let err = w
            .on_event(0, &ev(EventKind::NodeChildrenChanged, "/eph", 3), &log, 0)
            .expect_err("a recursive watch fires no children change");
        assert_eq!(err.kind, ViolationKind::WatchSpurious);
        // A plain persistent watch on /eph is owed its children changes.
        let mut w = ClientWatches::default();
        w.answered(
            &add("/eph", AddWatchMode::Persistent),
            &Ok(OpResult::WatchesUpdated),
            1,
        );
        let err = due(&w, 3).expect_err("owed");
        assert!(err.detail.contains("NodeChildrenChanged"), "{}", err.detail);
        w.on_event(0, &ev(EventKind::NodeChildrenChanged, "/eph", 3), &log, 0)
            .expect("a change it fires");
        assert!(due(&w, 4).is_ok(), "/eph/c1-0 is not its node");
    }

    /// An exist watch must be told of a creation even if the node is gone again by
    /// the next response, unless the creation and deletion came before the `SetWatches`
    /// that re-registered it or inside an install on its server.
    #[test]
    fn an_exist_watch_is_owed_a_creation_undone_since() {
        let mut log = log();
        let exists = Op::Exists {
            path: "/eph/c0-0".to_string(),
            watch: true,
        };
        let set = |w: &mut ClientWatches| w.answered(&exists, &Ok(OpResult::Exists(None)), 1);
        let mut w = ClientWatches::default();
        set(&mut w);
        let err = w.check_due(0, 1, 3, &log, 0).expect_err("owed");
        assert!(
            err.detail.contains("NodeCreated at zxid 2"),
            "{}",
            err.detail
        );
        // Re-registered at zxid 3, counting from 1: the node is absent at both.
        let mut w = ClientWatches::default();
        set(&mut w);
        w.saw(1);
        assert!(matches!(
            w.resync_op(),
            Some(Op::SetWatches { last_zxid: 1, .. })
        ));
        w.resync_sent(7);
        w.resync_answered(7, true, 3);
        assert!(w.check_due(0, 1, 3, &log, 0).is_ok());
        // Skipped by an install on its server.
        let mut w = ClientWatches::default();
        set(&mut w);
        log.installed(1, 1, 3);
        assert!(w.check_due(0, 1, 3, &log, 0).is_ok());
        assert!(w.check_due(0, 2, 3, &log, 0).is_err(), "not n2's");
    }
}
