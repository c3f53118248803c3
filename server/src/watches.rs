//! Watch registry of one node. Not replicated: each node fires the watches its own
//! clients registered, from the changes its apply step reports, in zxid order.
//!
//! Semantics follow ZooKeeper (3.6+):
//!
//! | change on `p`         | fires on `p`                                    | on ancestors of `p` |
//! |-----------------------|-------------------------------------------------|---------------------|
//! | `NodeCreated`         | Data, Exist, Persistent, PersistentRecursive    | PersistentRecursive |
//! | `NodeDeleted`         | Data, Exist, Child, Persistent, PersistentRecursive | PersistentRecursive |
//! | `NodeDataChanged`     | Data, Exist, Persistent, PersistentRecursive    | PersistentRecursive |
//! | `NodeChildrenChanged` | Child, Persistent                               | nothing             |
//!
//! Data, Exist and Child watches are one-shot: removed when they fire. A session receives
//! each event at most once per change, however many of its watches match.
//!
//! The registry is indexed both by path (to fire: one lookup per change plus one per
//! ancestor when recursive watches exist, never a scan) and by session (to drop a
//! session's watches without a scan). Every watch is one bit in a per-(path, session) mask.

use crate::machine::{Change, StateMachine};
use corral_protocol::path::{parent, validate_path};
use corral_protocol::{ErrorCode, ErrorInfo, EventKind, Stat, WatchEvent, WatchSet, WatcherKind};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The default for [`WatchManager::default`]: watches one session may hold.
pub const DEFAULT_MAX_WATCHES_PER_SESSION: usize = 10_000;

/// The kind of one registered watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchKind {
    /// One-shot, from `get_data`: fires on data change and deletion (and creation).
    Data,
    /// One-shot, from `exists`: fires on creation, data change and deletion.
    Exist,
    /// One-shot, from `get_children`: fires on a change to the children list or deletion.
    Child,
    /// Stays registered; fires on every kind of event on the node itself.
    Persistent,
    /// Stays registered; fires on creation, deletion and data change of the node and of
    /// every descendant (not on children-list changes).
    PersistentRecursive,
}

const DATA: u8 = 1;
const EXIST: u8 = 1 << 1;
const CHILD: u8 = 1 << 2;
const PERSISTENT: u8 = 1 << 3;
const RECURSIVE: u8 = 1 << 4;
const ALL: u8 = DATA | EXIST | CHILD | PERSISTENT | RECURSIVE;

fn bit(kind: WatchKind) -> u8 {
    match kind {
        WatchKind::Data => DATA,
        WatchKind::Exist => EXIST,
        WatchKind::Child => CHILD,
        WatchKind::Persistent => PERSISTENT,
        WatchKind::PersistentRecursive => RECURSIVE,
    }
}

/// The watches one session holds.
#[derive(Debug, Default)]
struct SessionWatches {
    /// Paths on which the session holds at least one watch.
    paths: HashSet<String>,
    /// Number of (path, kind) watches.
    count: usize,
}

/// Counters shared by the removal paths.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    recursive: usize,
}

impl Counts {
    /// Accounts for `bits` removed from `session`'s mask on `path`; `now` is the mask after.
    fn removed(
        &mut self,
        by_session: &mut HashMap<u64, SessionWatches>,
        session: u64,
        path: &str,
        bits: u8,
        now: u8,
    ) {
        if bits == 0 {
            return;
        }
        let n = bits.count_ones() as usize;
        self.total -= n;
        if bits & RECURSIVE != 0 {
            self.recursive -= 1;
        }
        if let Some(watches) = by_session.get_mut(&session) {
            watches.count -= n;
            if now == 0 {
                watches.paths.remove(path);
            }
            if watches.count == 0 {
                by_session.remove(&session);
            }
        }
    }
}

/// All watches on this node, keyed by session.
#[derive(Debug)]
pub struct WatchManager {
    max_watches_per_session: usize,
    /// Path → session → bit mask of kinds. Sessions in id order, so events come out in a
    /// deterministic order.
    by_path: HashMap<String, BTreeMap<u64, u8>>,
    by_session: HashMap<u64, SessionWatches>,
    counts: Counts,
}

impl Default for WatchManager {
    /// A registry with [`DEFAULT_MAX_WATCHES_PER_SESSION`].
    fn default() -> Self {
        WatchManager::new(DEFAULT_MAX_WATCHES_PER_SESSION)
    }
}

impl WatchManager {
    /// A registry that allows at most `max_watches_per_session` watches per session.
    pub fn new(max_watches_per_session: usize) -> Self {
        WatchManager {
            max_watches_per_session,
            by_path: HashMap::new(),
            by_session: HashMap::new(),
            counts: Counts::default(),
        }
    }

    /// The per-session limit.
    pub fn max_watches_per_session(&self) -> usize {
        self.max_watches_per_session
    }

    /// Number of watches `session` holds.
    pub fn session_len(&self, session: u64) -> usize {
        self.by_session.get(&session).map_or(0, |w| w.count)
    }

    /// Whether `session` holds a watch of `kind` on `path`.
    pub fn contains(&self, session: u64, path: &str, kind: WatchKind) -> bool {
        self.mask(session, path) & bit(kind) != 0
    }

    fn mask(&self, session: u64, path: &str) -> u8 {
        self.by_path
            .get(path)
            .and_then(|m| m.get(&session))
            .copied()
            .unwrap_or(0)
    }

    fn limit_error(&self, session: u64, wanted: usize) -> ErrorInfo {
        ErrorInfo::new(
            ErrorCode::LimitExceeded,
            format!(
                "session {session:#x} holds {} watches and asked for {wanted} more; \
                 the limit is max_watches_per_session = {}",
                self.session_len(session),
                self.max_watches_per_session
            ),
        )
    }

    /// Registers a watch (idempotent). Fails with `LimitExceeded` over the limit.
    pub fn add(&mut self, session: u64, path: &str, kind: WatchKind) -> Result<(), ErrorInfo> {
        validate_path(path)?;
        if self.contains(session, path, kind) {
            return Ok(());
        }
        if self.session_len(session) >= self.max_watches_per_session {
            return Err(self.limit_error(session, 1));
        }
        self.insert(session, path, kind);
        Ok(())
    }

    /// Adds a watch known to be absent, without checks.
    fn insert(&mut self, session: u64, path: &str, kind: WatchKind) {
        let b = bit(kind);
        let mask = match self.by_path.get_mut(path) {
            Some(sessions) => sessions.entry(session).or_insert(0),
            None => self
                .by_path
                .entry(path.to_string())
                .or_default()
                .entry(session)
                .or_insert(0),
        };
        debug_assert_eq!(*mask & b, 0, "insert of a present watch");
        let first_on_path = *mask == 0;
        *mask |= b;
        let watches = self.by_session.entry(session).or_default();
        if first_on_path {
            watches.paths.insert(path.to_string());
        }
        watches.count += 1;
        self.counts.total += 1;
        if b == RECURSIVE {
            self.counts.recursive += 1;
        }
    }

    /// Removes the session's watches of `kind` on `path`; `NoWatcher` if none matched.
    ///
    /// `Data` removes data and exists watches, `Children` child watches, `Persistent` both
    /// persistent kinds, `Any` everything.
    pub fn remove(&mut self, session: u64, path: &str, kind: WatcherKind) -> Result<(), ErrorInfo> {
        let bits = match kind {
            WatcherKind::Data => DATA | EXIST,
            WatcherKind::Children => CHILD,
            WatcherKind::Persistent => PERSISTENT | RECURSIVE,
            WatcherKind::Any => ALL,
        };
        let no_watcher = || {
            ErrorInfo::new(
                ErrorCode::NoWatcher,
                format!("session {session:#x} has no {kind:?} watch on {path}"),
            )
        };
        let sessions = self.by_path.get_mut(path).ok_or_else(no_watcher)?;
        let mask = sessions.get_mut(&session).ok_or_else(no_watcher)?;
        let removed = *mask & bits;
        if removed == 0 {
            return Err(no_watcher());
        }
        *mask &= !bits;
        let now = *mask;
        if now == 0 {
            sessions.remove(&session);
            if sessions.is_empty() {
                self.by_path.remove(path);
            }
        }
        self.counts
            .removed(&mut self.by_session, session, path, removed, now);
        Ok(())
    }

    /// Drops every watch of a session (disconnected, closed or expired).
    pub fn remove_session(&mut self, session: u64) {
        let Some(watches) = self.by_session.remove(&session) else {
            return;
        };
        for path in watches.paths {
            if let Some(sessions) = self.by_path.get_mut(&path) {
                if let Some(mask) = sessions.remove(&session) {
                    if mask & RECURSIVE != 0 {
                        self.counts.recursive -= 1;
                    }
                }
                if sessions.is_empty() {
                    self.by_path.remove(&path);
                }
            }
        }
        self.counts.total -= watches.count;
    }

    /// The events one change fires, per session, removing the one-shot watches it fires.
    /// Ordered by session id; at most one event per session.
    pub fn trigger(&mut self, change: &Change, zxid: u64) -> Vec<(u64, WatchEvent)> {
        // (kinds that fire on the path itself, one-shot kinds among them)
        let (fire, one_shot) = match change.kind {
            EventKind::NodeCreated | EventKind::NodeDataChanged => {
                (DATA | EXIST | PERSISTENT | RECURSIVE, DATA | EXIST)
            }
            EventKind::NodeDeleted => (ALL, DATA | EXIST | CHILD),
            EventKind::NodeChildrenChanged => (CHILD | PERSISTENT, CHILD),
        };
        let mut fired: Vec<u64> = Vec::new();
        let path = change.path.as_str();
        let Self {
            by_path,
            by_session,
            counts,
            ..
        } = self;
        let mut emptied = false;
        if let Some(sessions) = by_path.get_mut(path) {
            sessions.retain(|&session, mask| {
                if *mask & fire == 0 {
                    return true;
                }
                fired.push(session);
                let removed = *mask & one_shot;
                *mask &= !one_shot;
                counts.removed(by_session, session, path, removed, *mask);
                *mask != 0
            });
            emptied = sessions.is_empty();
        }
        if emptied {
            by_path.remove(path);
        }
        let skip_deletion = crate::faults::active().recursive_skips_deletions
            && change.kind == EventKind::NodeDeleted;
        if counts.recursive > 0 && change.kind != EventKind::NodeChildrenChanged && !skip_deletion {
            let mut cursor = parent(path);
            while let Some(ancestor) = cursor {
                if let Some(sessions) = by_path.get(ancestor) {
                    fired.extend(
                        sessions
                            .iter()
                            .filter(|(_, mask)| **mask & RECURSIVE != 0)
                            .map(|(&session, _)| session),
                    );
                }
                cursor = parent(ancestor);
            }
        }
        fired.sort_unstable();
        fired.dedup();
        fired
            .into_iter()
            .map(|session| {
                let event = WatchEvent {
                    kind: change.kind,
                    path: change.path.clone(),
                    zxid,
                };
                (session, event)
            })
            .collect()
    }

    /// Re-registers watches after a reconnect, with ZooKeeper's `setWatches` semantics
    /// against the current state; returns the events that fire at once.
    ///
    /// - data watch: node missing → `NodeDeleted`; `mzxid > last_zxid` →
    ///   `NodeDataChanged`; otherwise registered.
    /// - exist watch: node exists → `NodeCreated`; otherwise registered.
    /// - child watch: node missing → `NodeDeleted`; `pzxid > last_zxid` →
    ///   `NodeChildrenChanged`; otherwise registered.
    /// - persistent watches: registered.
    ///
    /// At most one event of each kind fires per path: a data and a child watch on a node
    /// that is gone give one `NodeDeleted` (ZooKeeper sends two; one event per change is
    /// what the connection promises, and a persistent watch on the path or above it would
    /// otherwise be told twice). Events carry the machine's `last_zxid`. All or nothing:
    /// an invalid path (`InvalidPath`) or going over the limit (`LimitExceeded`) changes
    /// nothing.
    pub fn set_watches<'w>(
        &mut self,
        session: u64,
        last_zxid: u64,
        watches: &'w WatchSet,
        machine: &StateMachine,
    ) -> Result<Vec<WatchEvent>, ErrorInfo> {
        let zxid = machine.last_zxid();
        let last_zxid = if crate::faults::active().set_watches_from_now {
            zxid
        } else {
            last_zxid
        };
        let mut events = Vec::new();
        let mut fired: HashSet<(EventKind, &str)> = HashSet::new();
        let mut register: Vec<(&str, WatchKind)> = Vec::new();
        let mut fire = |kind: EventKind, path: &'w str| {
            if fired.insert((kind, path)) {
                events.push(WatchEvent {
                    kind,
                    path: path.to_string(),
                    zxid,
                });
            }
        };
        for path in &watches.data {
            match machine.exists(path)? {
                None => fire(EventKind::NodeDeleted, path),
                Some(stat) if stat.mzxid > last_zxid => fire(EventKind::NodeDataChanged, path),
                Some(_) => register.push((path, WatchKind::Data)),
            }
        }
        for path in &watches.exist {
            match machine.exists(path)? {
                Some(_) => fire(EventKind::NodeCreated, path),
                None => register.push((path, WatchKind::Exist)),
            }
        }
        for path in &watches.child {
            match machine.exists(path)? {
                None => fire(EventKind::NodeDeleted, path),
                Some(stat) if stat.pzxid > last_zxid => fire(EventKind::NodeChildrenChanged, path),
                Some(_) => register.push((path, WatchKind::Child)),
            }
        }
        for path in &watches.persistent {
            validate_path(path)?;
            register.push((path, WatchKind::Persistent));
        }
        for path in &watches.persistent_recursive {
            validate_path(path)?;
            register.push((path, WatchKind::PersistentRecursive));
        }
        register.sort_unstable();
        register.dedup();
        register.retain(|&(path, kind)| !self.contains(session, path, kind));
        if self.session_len(session) + register.len() > self.max_watches_per_session {
            return Err(self.limit_error(session, register.len()));
        }
        for (path, kind) in register {
            self.insert(session, path, kind);
        }
        Ok(events)
    }

    /// The events this node's watches would have fired for the entries a snapshot install
    /// skipped (`old` is the state before the install, `new` the installed one), with
    /// ZooKeeper's reconnect (`setWatches`) semantics: the old and new state are compared
    /// at each watched path, and under each recursive watch at every path of the old or
    /// new subtree; one-shot watches are consumed as usual. Returns `(session, event)` in
    /// delivery order; every event carries `new.last_zxid()`.
    ///
    /// Per path, by stat (czxid, mzxid, pzxid, cversion):
    /// - absent → present: `NodeCreated`; present → absent: `NodeDeleted`;
    /// - recreated (czxid differs): `NodeDeleted` then `NodeCreated`;
    /// - mzxid differs (or a recreated node was written since): `NodeDataChanged`;
    /// - pzxid or cversion differs (or a recreated node has had children changes):
    ///   `NodeChildrenChanged`.
    ///
    /// Intermediate changes collapse: a watched path gets at most one event of each kind,
    /// and a node created and deleted inside the skipped range fires nothing. Cost: one
    /// lookup per watched path, plus the size of the old and new subtrees under each
    /// recursive watch (installs are rare; overlapping recursive watches walk once).
    pub fn catch_up(&mut self, old: &StateMachine, new: &StateMachine) -> Vec<(u64, WatchEvent)> {
        let zxid = new.last_zxid();
        let mut watched: Vec<(String, bool)> = self
            .by_path
            .iter()
            .map(|(path, sessions)| {
                let recursive = sessions.values().any(|mask| mask & RECURSIVE != 0);
                (path.clone(), recursive)
            })
            .collect();
        watched.sort_unstable();
        let (old_tree, new_tree) = (old.tree(), new.tree());
        let mut seen: HashSet<String> = HashSet::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut diff = |path: &str, changes: &mut Vec<Change>| {
            if !seen.insert(path.to_string()) {
                return;
            }
            let before = old_tree.get(path).map(|n| &n.stat);
            let after = new_tree.get(path).map(|n| &n.stat);
            for kind in stat_diff(before, after) {
                changes.push(Change {
                    kind,
                    path: path.to_string(),
                });
            }
        };
        for (path, recursive) in &watched {
            diff(path, &mut changes);
            if !recursive {
                continue;
            }
            // Merge the two sorted subtrees: every path present before or after.
            let mut a = old_tree.descendants(path).map(|(p, _)| p).peekable();
            let mut b = new_tree.descendants(path).map(|(p, _)| p).peekable();
            loop {
                let next = match (a.peek(), b.peek()) {
                    (None, None) => break,
                    (Some(&x), None) => {
                        a.next();
                        x
                    }
                    (None, Some(&y)) => {
                        b.next();
                        y
                    }
                    (Some(&x), Some(&y)) => match x.cmp(y) {
                        std::cmp::Ordering::Less => {
                            a.next();
                            x
                        }
                        std::cmp::Ordering::Greater => {
                            b.next();
                            y
                        }
                        std::cmp::Ordering::Equal => {
                            a.next();
                            b.next();
                            x
                        }
                    },
                };
                diff(next, &mut changes);
            }
        }
        changes
            .iter()
            .flat_map(|change| self.trigger(change, zxid))
            .collect()
    }

    /// Total watches registered.
    pub fn len(&self) -> usize {
        self.counts.total
    }

    /// Whether no watch is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The events that turn a path's `before` stat into its `after` stat, collapsed (see
/// [`WatchManager::catch_up`]).
fn stat_diff(before: Option<&Stat>, after: Option<&Stat>) -> Vec<EventKind> {
    let since_creation = |n: &Stat| {
        let mut kinds = vec![EventKind::NodeCreated];
        if n.mzxid != n.czxid {
            kinds.push(EventKind::NodeDataChanged);
        }
        if n.pzxid != n.czxid || n.cversion != 0 {
            kinds.push(EventKind::NodeChildrenChanged);
        }
        kinds
    };
    match (before, after) {
        (None, None) => Vec::new(),
        (None, Some(n)) => since_creation(n),
        (Some(_), None) => vec![EventKind::NodeDeleted],
        (Some(o), Some(n)) if o.czxid != n.czxid => {
            let mut kinds = vec![EventKind::NodeDeleted];
            kinds.extend(since_creation(n));
            kinds
        }
        (Some(o), Some(n)) => {
            let mut kinds = Vec::new();
            if o.mzxid != n.mzxid {
                kinds.push(EventKind::NodeDataChanged);
            }
            if o.pzxid != n.pzxid || o.cversion != n.cversion {
                kinds.push(EventKind::NodeChildrenChanged);
            }
            kinds
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Entry, EntryBody, MachineLimits};
    use corral_protocol::{CreateMode, CreateRequest, Op};
    use WatchKind::*;

    fn change(path: &str, kind: EventKind) -> Change {
        Change {
            path: path.to_string(),
            kind,
        }
    }

    /// The sessions `kind` on `path` fires for.
    fn fire(w: &mut WatchManager, path: &str, kind: EventKind) -> Vec<u64> {
        let events = w.trigger(&change(path, kind), 42);
        for (_, e) in &events {
            assert_eq!((e.path.as_str(), e.kind, e.zxid), (path, kind, 42));
        }
        events.into_iter().map(|(s, _)| s).collect()
    }

    fn manager() -> WatchManager {
        WatchManager::new(100)
    }

    #[test]
    fn one_shot_watches_fire_on_their_events_once() {
        use EventKind::*;
        // (watch kind, events that fire it)
        let table: [(WatchKind, &[EventKind]); 3] = [
            (Data, &[NodeCreated, NodeDeleted, NodeDataChanged]),
            (Exist, &[NodeCreated, NodeDeleted, NodeDataChanged]),
            (Child, &[NodeDeleted, NodeChildrenChanged]),
        ];
        for (kind, fires_on) in table {
            for event in [
                NodeCreated,
                NodeDeleted,
                NodeDataChanged,
                NodeChildrenChanged,
            ] {
                let mut w = manager();
                w.add(1, "/a", kind).expect("add");
                let expected: Vec<u64> = if fires_on.contains(&event) {
                    vec![1]
                } else {
                    vec![]
                };
                assert_eq!(fire(&mut w, "/a", event), expected, "{kind:?} on {event:?}");
                // Other paths never fire it.
                assert!(fire(&mut w, "/a/b", event).is_empty());
                assert!(fire(&mut w, "/", event).is_empty());
                if expected.is_empty() {
                    assert_eq!(w.len(), 1);
                } else {
                    assert!(w.is_empty(), "one-shot {kind:?} removed after firing");
                    assert!(fire(&mut w, "/a", event).is_empty());
                }
            }
        }
    }

    #[test]
    fn persistent_watches_fire_on_everything_and_stay() {
        let mut w = manager();
        w.add(1, "/a", Persistent).expect("add");
        for event in [
            EventKind::NodeCreated,
            EventKind::NodeDataChanged,
            EventKind::NodeChildrenChanged,
            EventKind::NodeDeleted,
        ] {
            assert_eq!(fire(&mut w, "/a", event), vec![1]);
            assert!(fire(&mut w, "/a/b", event).is_empty(), "not recursive");
        }
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn recursive_watches_fire_for_descendants_except_children_changes() {
        let mut w = manager();
        w.add(1, "/a", PersistentRecursive).expect("add");
        w.add(2, "/", PersistentRecursive).expect("add");
        w.add(3, "/a/b", PersistentRecursive).expect("add");
        assert_eq!(
            fire(&mut w, "/a/b/c", EventKind::NodeCreated),
            vec![1, 2, 3]
        );
        assert_eq!(
            fire(&mut w, "/a/b", EventKind::NodeDataChanged),
            vec![1, 2, 3]
        );
        assert_eq!(fire(&mut w, "/a", EventKind::NodeDeleted), vec![1, 2]);
        assert_eq!(fire(&mut w, "/ab", EventKind::NodeCreated), vec![2]);
        assert_eq!(fire(&mut w, "/", EventKind::NodeDataChanged), vec![2]);
        assert!(fire(&mut w, "/a", EventKind::NodeChildrenChanged).is_empty());
        assert!(fire(&mut w, "/a/b/c", EventKind::NodeChildrenChanged).is_empty());
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn a_session_gets_one_event_per_change_and_order_is_by_session() {
        let mut w = manager();
        for s in [9, 3, 5] {
            w.add(s, "/a", Data).expect("add");
            w.add(s, "/a", Exist).expect("add");
            w.add(s, "/a", Child).expect("add");
            w.add(s, "/a", Persistent).expect("add");
            w.add(s, "/a", PersistentRecursive).expect("add");
            w.add(s, "/", PersistentRecursive).expect("add");
        }
        assert_eq!(w.len(), 18);
        assert_eq!(fire(&mut w, "/a", EventKind::NodeDeleted), vec![3, 5, 9]);
        // The one-shots are gone, the persistent ones stay.
        assert_eq!(w.len(), 9);
        for s in [3, 5, 9] {
            assert_eq!(w.session_len(s), 3);
            assert!(!w.contains(s, "/a", Data));
            assert!(w.contains(s, "/a", Persistent));
        }
    }

    #[test]
    fn remove_by_watcher_kind() {
        let mut w = manager();
        let all = [Data, Exist, Child, Persistent, PersistentRecursive];
        for k in all {
            w.add(1, "/a", k).expect("add");
        }
        w.remove(1, "/a", WatcherKind::Data).expect("data");
        assert!(!w.contains(1, "/a", Data) && !w.contains(1, "/a", Exist));
        assert_eq!(
            w.remove(1, "/a", WatcherKind::Data).expect_err("gone").code,
            ErrorCode::NoWatcher
        );
        w.remove(1, "/a", WatcherKind::Persistent)
            .expect("persistent");
        assert!(!w.contains(1, "/a", Persistent) && !w.contains(1, "/a", PersistentRecursive));
        assert_eq!(w.len(), 1);
        w.remove(1, "/a", WatcherKind::Children).expect("children");
        assert!(w.is_empty());
        for k in all {
            w.add(1, "/a", k).expect("add");
        }
        w.add(2, "/a", Data).expect("add");
        w.remove(1, "/a", WatcherKind::Any).expect("any");
        assert_eq!(w.len(), 1);
        assert!(w.contains(2, "/a", Data), "another session's watch stays");
        let e = w.remove(1, "/a", WatcherKind::Any).expect_err("none");
        assert_eq!(e.code, ErrorCode::NoWatcher);
        assert_eq!(
            w.remove(1, "/zz", WatcherKind::Children)
                .expect_err("none")
                .code,
            ErrorCode::NoWatcher
        );
        // After removal nothing fires for session 1.
        assert_eq!(fire(&mut w, "/a", EventKind::NodeDeleted), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn the_limit_counts_distinct_watches_per_session() {
        let mut w = WatchManager::new(2);
        w.add(1, "/a", Data).expect("add");
        w.add(1, "/a", Data).expect("idempotent");
        w.add(1, "/b", Child).expect("add");
        let e = w.add(1, "/c", Data).expect_err("over the limit");
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert!(
            e.message.contains("max_watches_per_session = 2"),
            "{}",
            e.message
        );
        w.add(2, "/c", Data)
            .expect("another session has its own budget");
        assert_eq!(
            w.add(1, "bad", Data).expect_err("invalid").code,
            ErrorCode::InvalidPath
        );
        // Firing frees room.
        fire(&mut w, "/a", EventKind::NodeDataChanged);
        w.add(1, "/c", Data).expect("room again");
        assert_eq!(w.max_watches_per_session(), 2);
    }

    #[test]
    fn remove_session_drops_everything_of_that_session() {
        let mut w = manager();
        w.add(1, "/a", Data).expect("add");
        w.add(1, "/a", PersistentRecursive).expect("add");
        w.add(1, "/b", Child).expect("add");
        w.add(2, "/a", Data).expect("add");
        w.remove_session(1);
        w.remove_session(77);
        assert_eq!(w.len(), 1);
        assert_eq!(w.session_len(1), 0);
        assert_eq!(
            fire(&mut w, "/a/x", EventKind::NodeCreated),
            Vec::<u64>::new()
        );
        assert_eq!(fire(&mut w, "/a", EventKind::NodeDeleted), vec![2]);
        assert!(w.is_empty());
        assert!(w.by_path.is_empty() && w.by_session.is_empty());
        assert_eq!(w.counts.recursive, 0);
    }

    /// A machine with /d (data set after creation) holding /d/k, at a known zxid each.
    fn machine() -> (StateMachine, u64, u64) {
        let mut m = StateMachine::new(MachineLimits::default());
        let entry = |body| Entry::new(0, body);
        m.apply(
            1,
            &entry(EntryBody::OpenSession {
                secret: 1,
                ttl_ms: 1,
            }),
        );
        let create = |path: &str| {
            Op::Create(CreateRequest {
                path: path.into(),
                data: vec![],
                mode: CreateMode::Persistent,
                make_parents: false,
            })
        };
        m.apply(
            2,
            &entry(EntryBody::Write {
                session_id: 1,
                xid: 1,
                op: create("/d"),
            }),
        );
        m.apply(
            3,
            &entry(EntryBody::Write {
                session_id: 1,
                xid: 2,
                op: create("/d/k"),
            }),
        );
        m.apply(
            4,
            &entry(EntryBody::Write {
                session_id: 1,
                xid: 3,
                op: Op::SetData {
                    path: "/d".into(),
                    data: b"x".to_vec(),
                    version: None,
                },
            }),
        );
        m.apply(5, &entry(EntryBody::Noop { barrier: 0 }));
        (m, 3, 4) // pzxid of /d, mzxid of /d
    }

    fn kinds(events: &[WatchEvent]) -> Vec<(EventKind, &str)> {
        events.iter().map(|e| (e.kind, e.path.as_str())).collect()
    }

    #[test]
    fn set_watches_fires_what_was_missed_and_registers_the_rest() {
        let (m, pzxid, mzxid) = machine();
        let mut w = manager();
        // Seen everything: nothing fires, all register.
        let set = WatchSet {
            data: vec!["/d".into()],
            exist: vec!["/nope".into()],
            child: vec!["/d".into()],
            persistent: vec!["/p".into()],
            persistent_recursive: vec!["/".into()],
        };
        let events = w.set_watches(7, mzxid, &set, &m).expect("ok");
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(w.session_len(7), 5);
        assert!(w.contains(7, "/nope", Exist) && w.contains(7, "/d", Child));

        // Seen only up to before the data change: data fires, child registers; the data
        // and child watches on the deleted `/gone` give one `NodeDeleted`, not two.
        let mut w = manager();
        let set = WatchSet {
            data: vec!["/d".into(), "/gone".into()],
            exist: vec!["/d/k".into(), "/nope".into()],
            child: vec!["/d".into(), "/gone".into()],
            ..WatchSet::default()
        };
        let events = w.set_watches(7, pzxid, &set, &m).expect("ok");
        assert_eq!(
            kinds(&events),
            vec![
                (EventKind::NodeDataChanged, "/d"),
                (EventKind::NodeDeleted, "/gone"),
                (EventKind::NodeCreated, "/d/k"),
            ]
        );
        assert!(events.iter().all(|e| e.zxid == m.last_zxid()));
        assert!(w.contains(7, "/nope", Exist));
        assert!(w.contains(7, "/d", Child));
        assert_eq!(w.len(), 2);

        // Seen before the child was added: the child watch fires.
        let mut w = manager();
        let set = WatchSet {
            child: vec!["/d".into()],
            ..WatchSet::default()
        };
        let events = w.set_watches(7, pzxid - 1, &set, &m).expect("ok");
        assert_eq!(kinds(&events), vec![(EventKind::NodeChildrenChanged, "/d")]);
        assert!(w.is_empty());
    }

    #[test]
    fn set_watches_is_all_or_nothing() {
        let (m, _, mzxid) = machine();
        let mut w = WatchManager::new(2);
        w.add(7, "/x", Data).expect("add");
        let set = WatchSet {
            persistent: vec!["/p".into(), "/q".into()],
            ..WatchSet::default()
        };
        let e = w.set_watches(7, mzxid, &set, &m).expect_err("over");
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert_eq!(w.len(), 1);
        let set = WatchSet {
            persistent: vec!["/p".into(), "/p".into()],
            data: vec!["/x".into()],
            ..WatchSet::default()
        };
        // /x missing: the data watch fires instead of registering; /p counted once.
        let events = w.set_watches(7, mzxid, &set, &m).expect("fits");
        assert_eq!(kinds(&events), vec![(EventKind::NodeDeleted, "/x")]);
        assert_eq!(w.len(), 2);
        let set = WatchSet {
            exist: vec!["/ok".into()],
            child: vec!["bad".into()],
            ..WatchSet::default()
        };
        let mut w = manager();
        let e = w.set_watches(7, mzxid, &set, &m).expect_err("invalid");
        assert_eq!(e.code, ErrorCode::InvalidPath);
        assert!(w.is_empty());
    }

    #[test]
    fn machine_changes_fire_the_expected_watches() {
        let (mut m, _, _) = machine();
        let mut w = manager();
        w.add(10, "/d/k", Exist).expect("add");
        w.add(11, "/d", Child).expect("add");
        w.add(12, "/d", PersistentRecursive).expect("add");
        let applied = m.apply(
            6,
            &Entry::new(
                0,
                EntryBody::Write {
                    session_id: 1,
                    xid: 4,
                    op: Op::Delete {
                        path: "/d/k".into(),
                        version: None,
                    },
                },
            ),
        );
        let mut fired = Vec::new();
        for c in &applied.changes {
            for (s, e) in w.trigger(c, applied.zxid) {
                fired.push((s, e.kind, e.path));
            }
        }
        assert_eq!(
            fired,
            vec![
                (10, EventKind::NodeDeleted, "/d/k".to_string()),
                (12, EventKind::NodeDeleted, "/d/k".to_string()),
                (11, EventKind::NodeChildrenChanged, "/d".to_string()),
            ]
        );
        assert_eq!(w.len(), 1);
    }

    fn write(m: &mut StateMachine, zxid: u64, op: Op) {
        let applied = m.apply(
            zxid,
            &Entry::new(
                0,
                EntryBody::Write {
                    session_id: 1,
                    xid: zxid,
                    op,
                },
            ),
        );
        assert!(
            matches!(applied.result, Some(Ok(_))),
            "{zxid}: {:?}",
            applied.result
        );
    }

    fn create_op(path: &str) -> Op {
        Op::Create(CreateRequest {
            path: path.into(),
            data: vec![],
            mode: CreateMode::Persistent,
            make_parents: false,
        })
    }

    fn set_op(path: &str) -> Op {
        Op::SetData {
            path: path.into(),
            data: b"y".to_vec(),
            version: None,
        }
    }

    fn delete_op(path: &str) -> Op {
        Op::Delete {
            path: path.into(),
            version: None,
        }
    }

    #[test]
    fn catch_up_fires_what_an_installed_snapshot_skipped() {
        let (mut old, _, _) = machine();
        write(&mut old, 6, create_op("/quiet"));
        write(&mut old, 7, create_op("/re"));
        write(&mut old, 8, create_op("/d/k/deep"));
        // The entries the install skips: 9..=16.
        let mut new = old.clone();
        write(&mut new, 9, set_op("/d"));
        write(&mut new, 10, set_op("/d"));
        write(&mut new, 11, create_op("/d/n"));
        write(&mut new, 12, delete_op("/d/k/deep"));
        write(&mut new, 13, delete_op("/d/k"));
        write(&mut new, 14, create_op("/e"));
        write(&mut new, 15, delete_op("/re"));
        write(&mut new, 16, create_op("/re"));
        write(&mut new, 17, create_op("/short"));
        write(&mut new, 18, delete_op("/short"));
        let mut w = manager();
        w.add(10, "/d", Data).expect("add");
        w.add(11, "/d", Child).expect("add");
        w.add(12, "/e", Exist).expect("add");
        w.add(13, "/d", Persistent).expect("add");
        w.add(14, "/d", PersistentRecursive).expect("add");
        w.add(15, "/d/k", Data).expect("add");
        w.add(16, "/quiet", Data).expect("add");
        w.add(16, "/quiet", Child).expect("add");
        w.add(17, "/", PersistentRecursive).expect("add");
        w.add(18, "/re", Data).expect("add");
        w.add(19, "/short", Exist).expect("add");
        let fired: Vec<(u64, EventKind, String)> = w
            .catch_up(&old, &new)
            .into_iter()
            .inspect(|(_, e)| assert_eq!(e.zxid, 18))
            .map(|(s, e)| (s, e.kind, e.path))
            .collect();
        use EventKind::*;
        let expected: Vec<(u64, EventKind, String)> = [
            // "/" itself: its children changed (only a Child or Persistent watch there fires).
            (10, NodeDataChanged, "/d"),
            (13, NodeDataChanged, "/d"),
            (14, NodeDataChanged, "/d"),
            (17, NodeDataChanged, "/d"),
            (11, NodeChildrenChanged, "/d"),
            (13, NodeChildrenChanged, "/d"),
            (14, NodeDeleted, "/d/k"),
            (15, NodeDeleted, "/d/k"),
            (17, NodeDeleted, "/d/k"),
            (14, NodeDeleted, "/d/k/deep"),
            (17, NodeDeleted, "/d/k/deep"),
            (14, NodeCreated, "/d/n"),
            (17, NodeCreated, "/d/n"),
            (12, NodeCreated, "/e"),
            (17, NodeCreated, "/e"),
            (18, NodeDeleted, "/re"),
            (17, NodeDeleted, "/re"),
            (17, NodeCreated, "/re"),
        ]
        .into_iter()
        .map(|(s, k, p)| (s, k, p.to_string()))
        .collect();
        let mut got_sorted = fired.clone();
        let mut want_sorted = expected.clone();
        got_sorted.sort_by_key(|e| format!("{e:?}"));
        want_sorted.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(got_sorted, want_sorted, "fired in order: {fired:?}");
        // Per session, events come in path order, a path's events in the order above.
        let of = |events: &[(u64, EventKind, String)], s: u64| -> Vec<(EventKind, String)> {
            events
                .iter()
                .filter(|e| e.0 == s)
                .map(|e| (e.1, e.2.clone()))
                .collect()
        };
        for s in 10..=19 {
            assert_eq!(of(&fired, s), of(&expected, s), "session {s}");
        }
        // One-shot watches that fired are gone; the others and the persistent ones stay.
        assert!(!w.contains(10, "/d", Data) && !w.contains(11, "/d", Child));
        assert!(!w.contains(12, "/e", Exist) && !w.contains(15, "/d/k", Data));
        assert!(!w.contains(18, "/re", Data));
        assert!(w.contains(16, "/quiet", Data) && w.contains(16, "/quiet", Child));
        assert!(
            w.contains(19, "/short", Exist),
            "created and deleted: collapsed"
        );
        assert!(w.contains(13, "/d", Persistent) && w.contains(14, "/d", PersistentRecursive));
        assert!(w.contains(17, "/", PersistentRecursive));
        w.check_consistency().expect("consistent");
        // Nothing changed: nothing fires.
        assert!(w.catch_up(&new, &new).is_empty());
    }

    #[test]
    fn stat_diff_collapses_to_one_event_per_kind() {
        let stat = |czxid, mzxid, pzxid, cversion| Stat {
            czxid,
            mzxid,
            pzxid,
            cversion,
            ..Stat::default()
        };
        use EventKind::*;
        assert!(stat_diff(None, None).is_empty());
        assert_eq!(stat_diff(None, Some(&stat(5, 5, 5, 0))), vec![NodeCreated]);
        assert_eq!(
            stat_diff(None, Some(&stat(5, 6, 7, 1))),
            vec![NodeCreated, NodeDataChanged, NodeChildrenChanged]
        );
        assert_eq!(stat_diff(Some(&stat(5, 5, 5, 0)), None), vec![NodeDeleted]);
        let s = stat(5, 6, 7, 1);
        assert!(stat_diff(Some(&s), Some(&s)).is_empty());
        assert_eq!(
            stat_diff(Some(&s), Some(&stat(5, 9, 7, 1))),
            vec![NodeDataChanged]
        );
        assert_eq!(
            stat_diff(Some(&s), Some(&stat(5, 6, 9, 3))),
            vec![NodeChildrenChanged]
        );
        assert_eq!(
            stat_diff(Some(&s), Some(&stat(8, 8, 8, 0))),
            vec![NodeDeleted, NodeCreated]
        );
    }

    impl WatchManager {
        /// The two indexes and the counters agree.
        fn check_consistency(&self) -> Result<(), String> {
            let mut total = 0;
            let mut recursive = 0;
            let mut per_session: HashMap<u64, usize> = HashMap::new();
            for (path, sessions) in &self.by_path {
                if sessions.is_empty() {
                    return Err(format!("empty session map on {path}"));
                }
                for (&s, &mask) in sessions {
                    if mask == 0 {
                        return Err(format!("empty mask for {s} on {path}"));
                    }
                    let paths = self.by_session.get(&s).map(|w| &w.paths);
                    if !paths.is_some_and(|p| p.contains(path)) {
                        return Err(format!("{path} missing from session {s}'s paths"));
                    }
                    let n = mask.count_ones() as usize;
                    total += n;
                    *per_session.entry(s).or_default() += n;
                    if mask & RECURSIVE != 0 {
                        recursive += 1;
                    }
                }
            }
            for (s, w) in &self.by_session {
                if per_session.get(s).copied() != Some(w.count) {
                    return Err(format!("session {s}: count {} is wrong", w.count));
                }
                if w.paths.len() != self.by_path.values().filter(|m| m.contains_key(s)).count() {
                    return Err(format!("session {s}: stale paths"));
                }
            }
            if per_session.len() != self.by_session.len() {
                return Err("sessions without an entry".to_string());
            }
            if (total, recursive) != (self.counts.total, self.counts.recursive) {
                return Err(format!(
                    "counts {:?} but {total} watches, {recursive} recursive",
                    self.counts
                ));
            }
            Ok(())
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Add(u64, usize, WatchKind),
        Remove(u64, usize, WatcherKind),
        RemoveSession(u64),
        Trigger(usize, EventKind),
    }

    const PATHS: [&str; 5] = ["/", "/a", "/a/b", "/b", "/a/b/c"];

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let kind = prop_oneof![
            Just(Data),
            Just(Exist),
            Just(Child),
            Just(Persistent),
            Just(PersistentRecursive)
        ];
        let watcher = prop_oneof![
            Just(WatcherKind::Data),
            Just(WatcherKind::Children),
            Just(WatcherKind::Persistent),
            Just(WatcherKind::Any)
        ];
        let event = prop_oneof![
            Just(EventKind::NodeCreated),
            Just(EventKind::NodeDeleted),
            Just(EventKind::NodeDataChanged),
            Just(EventKind::NodeChildrenChanged)
        ];
        prop_oneof![
            4 => (1u64..4, 0..PATHS.len(), kind).prop_map(|(s, p, k)| Step::Add(s, p, k)),
            1 => (1u64..4, 0..PATHS.len(), watcher).prop_map(|(s, p, k)| Step::Remove(s, p, k)),
            1 => (1u64..4).prop_map(Step::RemoveSession),
            3 => (0..PATHS.len(), event).prop_map(|(p, e)| Step::Trigger(p, e)),
        ]
    }

    proptest::proptest! {
        #[test]
        fn indexes_and_counts_stay_consistent(
            steps in proptest::collection::vec(step(), 1..80)
        ) {
            let mut w = WatchManager::new(6);
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Step::Add(s, p, k) => {
                        let before = w.session_len(s);
                        match w.add(s, PATHS[p], k) {
                            Ok(()) => proptest::prop_assert!(w.contains(s, PATHS[p], k)),
                            Err(e) => {
                                proptest::prop_assert_eq!(e.code, ErrorCode::LimitExceeded);
                                proptest::prop_assert_eq!(before, 6);
                            }
                        }
                    }
                    Step::Remove(s, p, k) => {
                        let _ = w.remove(s, PATHS[p], k);
                    }
                    Step::RemoveSession(s) => w.remove_session(s),
                    Step::Trigger(p, e) => {
                        let fired = w.trigger(&change(PATHS[p], e), i as u64);
                        let sessions: Vec<u64> = fired.iter().map(|(s, _)| *s).collect();
                        let mut sorted = sessions.clone();
                        sorted.sort_unstable();
                        sorted.dedup();
                        proptest::prop_assert_eq!(sessions, sorted);
                    }
                }
                if let Err(e) = w.check_consistency() {
                    return Err(proptest::test_runner::TestCaseError::fail(
                        format!("after step {i} {step:?}: {e}"),
                    ));
                }
            }
        }
    }
}
