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

/// Whether a new request of `kind` would be granted at once (for `try_only`).
pub fn would_grant(tree: &Tree, lock: &str, meta: &LockMeta, kind: LockKind, now_ms: i64) -> bool {
    if meta.delayed(now_ms) {
        return false;
    }
    let q = queue(tree, lock, meta.family);
    match kind {
        LockKind::Exclusive | LockKind::Write => q.is_empty(),
        LockKind::Read => q.iter().all(|(_, k)| *k == LockKind::Read),
        LockKind::Semaphore { permits } => (q.len() as u64) < u64::from(permits),
    }
}

/// Which queue positions may hold the lock, counting every node ahead, granted or not
/// (a node of a multi-lock that waits for its other locks keeps its place):
/// exclusive and write nodes when first, semaphore(n) nodes among the first n, read nodes
/// when no write node is ahead.
pub fn eligible(q: &[(&str, LockKind)], family: LockFamily) -> Vec<bool> {
    let mut out = Vec::with_capacity(q.len());
    let mut writer_ahead = false;
    let grant_all = crate::faults::active().grant_without_predecessor;
    for (i, (_, kind)) in q.iter().enumerate() {
        let ok = match (family, kind) {
            (LockFamily::Semaphore(n), _) => i < n as usize,
            (LockFamily::Exclusive, _) if grant_all => true,
            (_, LockKind::Read) => !writer_ahead,
            _ => i == 0,
        };
        writer_ahead |= *kind == LockKind::Write;
        out.push(ok);
    }
    out
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
/// are reported instead. Nothing is granted while a lock-delay runs.
pub fn regrant(
    tree: &Tree,
    lock: &str,
    meta: &mut LockMeta,
    now_ms: i64,
    in_group: impl Fn(&str) -> bool,
) -> Regrant {
    let q = queue(tree, lock, meta.family);
    meta.granted
        .retain(|name| q.iter().any(|(n, _)| *n == name.as_str()));
    let mut out = Regrant::default();
    if meta.delayed(now_ms) {
        return out;
    }
    meta.delayed_until_ms = 0;
    for ((name, _), ok) in q.iter().zip(eligible(&q, meta.family)) {
        if !ok || meta.granted.contains(*name) {
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
    let q = queue(tree, lock, meta.family);
    let ok = eligible(&q, meta.family);
    q.iter().zip(ok).any(|((n, _), ok)| ok && *n == name)
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
}
