//! Locks in the replicated state: which queue nodes hold each lock.
//!
//! A lock is a directory node (a container) whose children are ephemeral sequential
//! queue nodes, one per request: `x-` exclusive, `r-` read, `w-` write, `s-` semaphore,
//! followed by the parent's ten-digit counter. Queue order is the counter's order. Who
//! holds the lock is recorded explicitly in [`LockMeta::granted`] and changes only here,
//! in the apply step, so grants are part of the replicated state:
//!
//! - **exclusive** and **semaphore(n)**: the earliest waiting nodes are granted while
//!   fewer than 1 (n) hold it — FIFO, so each waiter depends only on those ahead of it
//!   (precisely: a node is eligible among the first 1 (n) of the queue);
//! - **read-write** (fair): a read node is granted when no write node is ahead of it; a
//!   write node when it is first in the queue. A waiting writer blocks later readers, so
//!   writers are not starved;
//! - **multi-locks** (`LockMany`): a node of a group is granted only when every node of
//!   the group is eligible in its lock; until then it keeps its place in each queue and
//!   the nodes behind it wait (no partial holdings, no starvation of multi-locks);
//! - **lock-delay**: when a holder's node goes because its lease expired (not on a
//!   release), nobody is granted until the entry time passes `delayed_until_ms`.
//!
//! The fencing token of a grant is the zxid that created the queue node: strictly
//! increasing for one lock, across holders, leader changes and restarts.

use corral_protocol::{ErrorCode, ErrorInfo, LockEntry, LockKind, LockState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ops::Bound;

use crate::tree::Tree;

/// The family of a lock: every request on one lock must belong to the same family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockFamily {
    /// Exclusive locks.
    Exclusive,
    /// Read and write locks.
    ReadWrite,
    /// A semaphore with this many permits.
    Semaphore(u32),
}

impl LockFamily {
    /// The family of a request kind.
    pub fn of(kind: LockKind) -> LockFamily {
        match kind {
            LockKind::Exclusive => LockFamily::Exclusive,
            LockKind::Read | LockKind::Write => LockFamily::ReadWrite,
            LockKind::Semaphore { permits } => LockFamily::Semaphore(permits),
        }
    }
}

/// The name prefix of a queue node of this kind.
pub fn prefix(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Exclusive => "x-",
        LockKind::Read => "r-",
        LockKind::Write => "w-",
        LockKind::Semaphore { .. } => "s-",
    }
}

/// The kind of a queue node, from its name.
pub fn kind_of(name: &str, family: LockFamily) -> Option<LockKind> {
    match (name.get(..2)?, family) {
        ("x-", LockFamily::Exclusive) => Some(LockKind::Exclusive),
        ("r-", LockFamily::ReadWrite) => Some(LockKind::Read),
        ("w-", LockFamily::ReadWrite) => Some(LockKind::Write),
        ("s-", LockFamily::Semaphore(permits)) => Some(LockKind::Semaphore { permits }),
        _ => None,
    }
}

/// The sequence number of a queue node (the ten digits after the prefix).
pub fn sequence(name: &str) -> Option<u64> {
    name.get(2..)?.parse().ok()
}

/// Whether `name` has the form of a queue node of any kind: a kind's prefix and a number.
pub fn is_queue_name(name: &str) -> bool {
    matches!(name.get(..2), Some("x-" | "r-" | "w-" | "s-")) && sequence(name).is_some()
}

/// The first child of `dir` named like a queue node ([`is_queue_name`]): a range read
/// per kind's prefix, so a directory with many other children costs O(log n).
pub fn first_queue_name(dir: &crate::tree::Node) -> Option<&str> {
    ["r-", "s-", "w-", "x-"].into_iter().find_map(|prefix| {
        dir.children
            .range(prefix.to_string()..)
            .take_while(|name| name.starts_with(prefix))
            .find(|name| is_queue_name(name))
            .map(String::as_str)
    })
}

/// The replicated state of one lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockMeta {
    /// Which requests it takes.
    pub family: LockFamily,
    /// Lock-delay after an expiry, in milliseconds (0: none).
    pub delay_ms: u64,
    /// Entry time before which nobody is granted (0: no delay running).
    pub delayed_until_ms: i64,
    /// Names of the queue nodes that hold the lock.
    pub granted: BTreeSet<String>,
}

impl LockMeta {
    /// A lock with nobody in it.
    pub fn new(family: LockFamily, delay_ms: u64) -> LockMeta {
        LockMeta {
            family,
            delay_ms,
            delayed_until_ms: 0,
            granted: BTreeSet::new(),
        }
    }

    /// Checks that a request of `kind` fits this lock.
    pub fn admits(&self, lock: &str, kind: LockKind) -> Result<(), ErrorInfo> {
        if LockFamily::of(kind) == self.family {
            return Ok(());
        }
        Err(ErrorInfo::new(
            ErrorCode::BadArguments,
            format!(
                "{lock} is a {:?} lock; a {kind:?} request cannot join its queue",
                self.family
            ),
        ))
    }

    /// Whether a delay is holding grants back at `now_ms`.
    pub fn delayed(&self, now_ms: i64) -> bool {
        self.delayed_until_ms > now_ms
    }
}

/// The locks whose lock-delay runs, by the entry time it ends: derived from the locks'
/// [`LockMeta::delayed_until_ms`] (not serialized; rebuilt after a snapshot is loaded),
/// so that an entry finds the delays that ended without visiting every lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelayIndex {
    built: bool,
    ends: BTreeSet<(i64, String)>,
}

impl DelayIndex {
    /// The index of these locks.
    pub fn of<'a>(locks: impl Iterator<Item = (&'a String, &'a LockMeta)>) -> DelayIndex {
        DelayIndex {
            built: true,
            ends: locks
                .filter(|(_, m)| m.delayed_until_ms != 0)
                .map(|(l, m)| (m.delayed_until_ms, l.clone()))
                .collect(),
        }
    }

    /// Whether the index reflects the state (false after a snapshot was decoded).
    pub fn is_built(&self) -> bool {
        self.built
    }

    /// Records that `lock`'s delay end changed from `before` to `after` (0: none).
    pub fn moved(&mut self, lock: &str, before: i64, after: i64) {
        if before == after {
            return;
        }
        if before != 0 {
            self.ends.remove(&(before, lock.to_string()));
        }
        if after != 0 {
            self.ends.insert((after, lock.to_string()));
        }
    }

    /// The locks whose delay ended by `now_ms`.
    pub fn ended(&self, now_ms: i64) -> impl Iterator<Item = &str> {
        self.ends
            .range(..(now_ms.saturating_add(1), String::new()))
            .map(|(_, lock)| lock.as_str())
    }

    /// The earliest end of a running delay.
    pub fn first_end(&self) -> Option<i64> {
        self.ends.first().map(|(end, _)| *end)
    }
}

/// The queue of a lock in order: (name, kind), skipping children that are not queue
/// nodes of the lock's family. Borrows the names: every entry that touches a lock reads
/// its queue, which may be long.
pub fn queue<'t>(tree: &'t Tree, lock: &str, family: LockFamily) -> Vec<(&'t str, LockKind)> {
    let Some(dir) = tree.get(lock) else {
        return Vec::new();
    };
    let mut q: Vec<(u64, &str, LockKind)> = dir
        .children
        .iter()
        .filter_map(|name| Some((sequence(name)?, name.as_str(), kind_of(name, family)?)))
        .collect();
    q.sort_unstable_by_key(|(seq, _, _)| *seq);
    q.into_iter().map(|(_, name, kind)| (name, kind)).collect()
}

/// Sequence numbers below this have exactly ten digits, so names of one kind sort by
/// name in queue order.
const TEN_DIGITS: u64 = 10_000_000_000;

/// The queue of a lock in order, lazily: (name, kind), as [`queue`] returns it.
///
/// A directory keeps its children sorted by name, and the names of one kind are a
/// prefix and a zero-padded ten-digit counter, so each kind's nodes already sit in queue
/// order: exclusive and semaphore queues are one range of the children, a read-write
/// queue the merge of two. Taking the first k nodes therefore costs O(k + log n),
/// whatever the length of the queue, where sorting the children would cost O(n log n).
/// (A directory whose counter passed ten digits falls back to the sort.)
pub fn ordered<'t>(
    tree: &'t Tree,
    lock: &str,
    family: LockFamily,
) -> Box<dyn Iterator<Item = (&'t str, LockKind)> + 't> {
    let Some(dir) = tree.get(lock) else {
        return Box::new(std::iter::empty());
    };
    if dir.next_seq > TEN_DIGITS {
        return Box::new(queue(tree, lock, family).into_iter());
    }
    let run = move |kind: LockKind| {
        let prefix = self::prefix(kind);
        dir.children
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |name| name.starts_with(prefix))
            .filter(|name| sequence(name).is_some())
            .map(move |name| (name.as_str(), kind))
    };
    match family {
        LockFamily::Exclusive => Box::new(run(LockKind::Exclusive)),
        LockFamily::Semaphore(permits) => Box::new(run(LockKind::Semaphore { permits })),
        LockFamily::ReadWrite => Box::new(Merge {
            a: run(LockKind::Read).peekable(),
            b: run(LockKind::Write).peekable(),
        }),
    }
}

/// Two runs of queue nodes in queue order, merged by sequence number (the ten digits
/// after the prefix, compared as text).
struct Merge<A: Iterator, B: Iterator> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<'t, A, B> Iterator for Merge<A, B>
where
    A: Iterator<Item = (&'t str, LockKind)>,
    B: Iterator<Item = (&'t str, LockKind)>,
{
    type Item = (&'t str, LockKind);

    fn next(&mut self) -> Option<Self::Item> {
        let take_a = match (self.a.peek(), self.b.peek()) {
            (Some((a, _)), Some((b, _))) => a[2..] < b[2..],
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_a {
            self.a.next()
        } else {
            self.b.next()
        }
    }
}

/// Whether a new request of `kind` would be granted at once (for `try_only`).
pub fn would_grant(tree: &Tree, lock: &str, meta: &LockMeta, kind: LockKind, now_ms: i64) -> bool {
    if meta.delayed(now_ms) {
        return false;
    }
    let mut q = ordered(tree, lock, meta.family);
    match kind {
        LockKind::Exclusive | LockKind::Write => q.next().is_none(),
        // No write node anywhere in the queue: one look at the directory.
        LockKind::Read => tree.get(lock).is_none_or(|dir| {
            let writes = prefix(LockKind::Write);
            dir.children
                .range::<_, str>((Bound::Included(writes), Bound::Unbounded))
                .next()
                .is_none_or(|name| !name.starts_with(writes))
        }),
        LockKind::Semaphore { permits } => q.take(permits as usize).count() < permits as usize,
    }
}

/// The queue nodes that may hold the lock, in queue order, counting every node ahead,
/// granted or not (a node of a multi-lock that waits for its other locks keeps its
/// place): exclusive and write nodes when first, semaphore(n) nodes among the first n,
/// read nodes when no write node is ahead. Reads the queue only as far as a node can
/// still be eligible.
pub fn eligible<'t>(
    q: impl Iterator<Item = (&'t str, LockKind)>,
    family: LockFamily,
) -> impl Iterator<Item = &'t str> {
    let grant_all = crate::faults::active().grant_without_predecessor;
    let mut writer_ahead = false;
    q.enumerate()
        .map_while(move |(i, (name, kind))| {
            let ok = match (family, kind) {
                _ if grant_all => true,
                (LockFamily::Semaphore(n), _) if i >= n as usize => return None,
                (LockFamily::Semaphore(_), _) => true,
                // Nothing behind a write (or behind the first exclusive node) can be.
                _ if writer_ahead => return None,
                (_, LockKind::Read) => true,
                _ if i > 0 => return None,
                _ => true,
            };
            writer_ahead |= kind != LockKind::Read;
            Some((name, ok))
        })
        .filter_map(|(name, ok)| ok.then_some(name))
}

/// What [`regrant`] did.
#[derive(Debug, Default)]
pub struct Regrant {
    /// Single nodes newly granted, in queue order.
    pub granted: Vec<String>,
    /// Nodes of multi-locks that are eligible here but not granted: granted only when
    /// every node of their group is eligible (see `machine.rs`).
    pub group_ready: Vec<String>,
}

/// Drops grants of nodes that are gone and grants whoever may hold the lock now: the
/// eligible nodes (see [`eligible`]), except members of a multi-lock (`in_group`), which
/// are reported instead. Nothing is granted while a lock-delay runs. O(holders x log n)
/// for a queue of n.
pub fn regrant(
    tree: &Tree,
    lock: &str,
    meta: &mut LockMeta,
    now_ms: i64,
    in_group: impl Fn(&str) -> bool,
) -> Regrant {
    match tree.get(lock) {
        // Granted names are queue nodes of the lock's family: present means queued.
        Some(dir) => meta.granted.retain(|name| dir.children.contains(name)),
        None => meta.granted.clear(),
    }
    let mut out = Regrant::default();
    if meta.delayed(now_ms) {
        return out;
    }
    meta.delayed_until_ms = 0;
    for name in eligible(ordered(tree, lock, meta.family), meta.family) {
        if meta.granted.contains(name) {
            continue;
        }
        if in_group(&corral_protocol::path::join(lock, name)) {
            out.group_ready.push(name.to_string());
        } else {
            meta.granted.insert(name.to_string());
            out.granted.push(name.to_string());
        }
    }
    out
}

/// Whether the node `name` is eligible in its lock now (see [`eligible`]) and no delay
/// holds grants back.
pub fn eligible_now(tree: &Tree, lock: &str, meta: &LockMeta, name: &str, now_ms: i64) -> bool {
    if meta.delayed(now_ms) {
        return false;
    }
    eligible(ordered(tree, lock, meta.family), meta.family).any(|n| n == name)
}

/// The public description of a lock; `owner_session` maps a node's ephemeral owner
/// (a session or a lease) to its session.
pub fn describe(
    tree: &Tree,
    lock: &str,
    meta: &LockMeta,
    owner_session: impl Fn(u64) -> u64,
) -> LockState {
    let queue = queue(tree, lock, meta.family)
        .into_iter()
        .filter_map(|(name, kind)| {
            let path = corral_protocol::path::join(lock, name);
            let node = tree.get(&path)?;
            let lease = node.stat.ephemeral_owner;
            Some(LockEntry {
                granted: meta.granted.contains(name),
                node: path,
                kind,
                session: owner_session(lease),
                lease,
                token: node.stat.czxid,
            })
        })
        .collect();
    LockState {
        lock: lock.to_string(),
        lock_delay_ms: meta.delay_ms,
        delayed_until_ms: meta.delayed_until_ms,
        queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for kind in [
            LockKind::Exclusive,
            LockKind::Read,
            LockKind::Write,
            LockKind::Semaphore { permits: 3 },
        ] {
            let family = LockFamily::of(kind);
            let name = format!("{}{:010}", prefix(kind), 42);
            assert_eq!(kind_of(&name, family), Some(kind));
            assert_eq!(sequence(&name), Some(42));
        }
        assert_eq!(kind_of("x-0000000001", LockFamily::ReadWrite), None);
        assert_eq!(sequence("x-abc"), None);
    }

    /// A tree with the directory `/l` holding children with these names.
    fn tree_with(names: &[String]) -> Tree {
        let mut tree = Tree::new();
        let mut txn = crate::tree::Txn::new(1, 0);
        let mut create = |path: String| {
            let req = corral_protocol::CreateRequest {
                path,
                data: Vec::new(),
                mode: corral_protocol::CreateMode::Persistent,
                make_parents: false,
            };
            tree.create(&mut txn, 0, &req).expect("create");
        };
        create("/l".to_string());
        for name in names {
            create(format!("/l/{name}"));
        }
        tree
    }

    /// The eligibility rules as a whole-queue pass (what `eligible` computes lazily).
    fn eligible_reference(q: &[(&str, LockKind)], family: LockFamily) -> Vec<String> {
        let mut out = Vec::new();
        let mut writer_ahead = false;
        for (i, (name, kind)) in q.iter().enumerate() {
            let ok = match (family, kind) {
                (LockFamily::Semaphore(n), _) => i < n as usize,
                (_, LockKind::Read) => !writer_ahead,
                _ => i == 0,
            };
            writer_ahead |= *kind == LockKind::Write;
            if ok {
                out.push(name.to_string());
            }
        }
        out
    }

    fn family_strategy() -> impl Strategy<Value = LockFamily> {
        prop_oneof![
            Just(LockFamily::Exclusive),
            Just(LockFamily::ReadWrite),
            (1u32..4).prop_map(LockFamily::Semaphore),
        ]
    }

    /// Child names: queue nodes of every kind with distinct counters, and names that
    /// are no queue node of any family.
    fn names_strategy() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_map(
            0u64..60,
            prop_oneof![
                4 => Just("r-"),
                4 => Just("w-"),
                2 => Just("x-"),
                2 => Just("s-"),
                1 => Just("other-"),
            ],
            0..24,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(seq, prefix)| format!("{prefix}{seq:010}"))
                .chain(["r-abc".to_string(), "w".to_string()])
                .collect()
        })
    }

    proptest! {
        /// The lazy queue is the sorted queue, and the lazy eligible prefix is the
        /// whole-queue rule's answer, for every family and mix of children.
        #[test]
        fn lazy_queue_matches_the_sorted_queue(
            names in names_strategy(),
            family in family_strategy(),
        ) {
            let tree = tree_with(&names);
            let sorted = queue(&tree, "/l", family);
            let lazy: Vec<(&str, LockKind)> = ordered(&tree, "/l", family).collect();
            prop_assert_eq!(&lazy, &sorted);
            let expected = eligible_reference(&sorted, family);
            let got: Vec<String> =
                eligible(ordered(&tree, "/l", family), family).map(str::to_string).collect();
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn counters_past_ten_digits_fall_back_to_sorting() {
        let names: Vec<String> = ["x-9999999999", "x-10000000000", "x-0000000007"]
            .map(str::to_string)
            .to_vec();
        let mut tree = tree_with(&names);
        tree.node_mut("/l").expect("the directory").next_seq = 10_000_000_001;
        let lazy: Vec<&str> = ordered(&tree, "/l", LockFamily::Exclusive)
            .map(|(n, _)| n)
            .collect();
        assert_eq!(lazy, ["x-0000000007", "x-9999999999", "x-10000000000"]);
        assert!(ordered(&tree, "/missing", LockFamily::Exclusive)
            .next()
            .is_none());
    }
}
