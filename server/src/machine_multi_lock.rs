//! Multi-locks (`LockMany`) and deadlock checks in the state machine. A child module of
//! `machine.rs`, so it works on the machine's fields directly.
//!
//! A `LockMany` creates one ordinary queue node per lock, all owned by the same session
//! or lease and created by the same entry (so they share one fencing token, the entry's
//! zxid), and records them as a **group**. A group's nodes keep their places in their
//! queues; they are granted together, in one entry, when every one of them is eligible
//! in its lock ([`locks::eligible`]), so nobody ever sees part of a group granted.
//! When any node of a group goes (release, delete, expiry), the rest go in the same
//! entry: releasing one releases all.

use super::*;
use crate::deadlock::LockQueue;
use corral_protocol::deadlock::deadlock_error;
use corral_protocol::{LockedNode, MultiLockRequest, MAX_LOCKS_PER_MULTI_LOCK};

/// The multi-lock groups, part of the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiLocks {
    /// Node paths of each group, by group id (the zxid of its `LockMany`), in request
    /// order.
    groups: imbl::OrdMap<u64, Vec<String>>,
    /// The group of each node that belongs to one.
    group_of: imbl::OrdMap<String, u64>,
}

impl MultiLocks {
    /// Whether `node` (a path) belongs to a group.
    pub fn contains(&self, node: &str) -> bool {
        self.group_of.contains_key(node)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there is no group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

impl StateMachine {
    /// The wait-for index computed from scratch.
    pub(super) fn fresh_wait_index(&self) -> WaitIndex {
        let mut index = WaitIndex::default();
        for (lock, meta) in &self.locks {
            let q =
                LockQueue::from_state(&self.tree, lock, meta, |o| owner_session(&self.sessions, o));
            index.set_lock(lock, Some(q));
        }
        index.mark_built();
        index
    }

    /// Brings the wait-for index up to date with an entry: the queue nodes it created
    /// and deleted, the grants it made, the locks it forgot. O(changes + holders of the
    /// locks touched), whatever the length of the queues.
    pub(super) fn update_wait_index(&mut self, txn: &Txn) {
        let mut touched: BTreeSet<&str> = BTreeSet::new();
        for change in &txn.changes {
            let created = match change.kind {
                EventKind::NodeCreated => true,
                EventKind::NodeDeleted => false,
                _ => continue,
            };
            if !created && !self.locks.contains_key(&change.path) {
                // A lock directory that went with its state.
                self.waits.remove_lock(&change.path);
            }
            let Some(lock) = corral_protocol::path::parent(&change.path) else {
                continue;
            };
            let name = corral_protocol::path::name(&change.path);
            let Some(seq) = locks::sequence(name) else {
                continue;
            };
            if !created {
                self.waits.remove_node(lock, seq);
                touched.insert(lock);
                continue;
            }
            let Some(meta) = self.locks.get(lock) else {
                continue;
            };
            let (Some(kind), Some(node)) = (
                locks::kind_of(name, meta.family),
                self.tree.get(&change.path),
            ) else {
                continue;
            };
            let q = crate::deadlock::QNode {
                kind,
                session: owner_session(&self.sessions, node.stat.ephemeral_owner),
                // A node granted by the entry that created it goes straight into `held`.
                granted: meta.granted.contains(name),
            };
            self.waits.insert_node(lock, meta.family, seq, q);
            touched.insert(lock);
        }
        for event in &txn.lock_events {
            touched.insert(event.event.lock.as_str());
        }
        for lock in touched {
            let Some(meta) = self.locks.get(lock) else {
                continue;
            };
            self.waits.ensure_lock(lock, meta.family);
            for name in &meta.granted {
                if let Some(seq) = locks::sequence(name) {
                    self.waits.mark_granted(lock, seq);
                }
            }
        }
    }

    /// The `Deadlock` error if `session` waiting with new nodes on `new` would close a
    /// cycle.
    pub(super) fn check_deadlock(
        &self,
        session: u64,
        new: &[(&str, LockKind)],
    ) -> Result<(), ErrorInfo> {
        let waits: Vec<(&str, LockKind)> = new
            .iter()
            .filter(|(lock, kind)| !self.waits.eligible_at_tail(lock, *kind))
            .copied()
            .collect();
        if waits.is_empty() {
            return Ok(());
        }
        match self.waits.find_cycle(session, &waits) {
            Some(cycle) => {
                let error = deadlock_error(&cycle);
                tracing::debug!(zxid = self.last_zxid, "refused: {}", error.message);
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// Deletes the remaining nodes of every group that lost a node in this entry, and
    /// forgets those groups.
    pub(super) fn cascade_groups(&mut self, txn: &mut Txn) {
        let broken: BTreeSet<u64> = txn
            .changes
            .iter()
            .filter(|c| c.kind == EventKind::NodeDeleted)
            .filter_map(|c| self.multi.group_of.get(&c.path).copied())
            .collect();
        for gid in broken {
            let Some(nodes) = self.multi.groups.remove(&gid) else {
                continue;
            };
            for node in nodes {
                self.multi.group_of.remove(&node);
                if self.tree.get(&node).is_some() {
                    if let Err(e) = self.tree.delete(txn, &node, None) {
                        tracing::error!(%node, "cannot release a multi-lock node: {e}");
                    }
                }
            }
        }
    }

    /// Grants every group among `gids` whose nodes are all eligible, pushing a grant
    /// event per node (none for `quiet`, whose answer carries the grant). Returns
    /// whether `quiet` was granted.
    pub(super) fn grant_groups(
        &mut self,
        txn: &mut Txn,
        gids: &BTreeSet<u64>,
        quiet: Option<u64>,
    ) -> bool {
        let mut quiet_granted = false;
        for gid in gids {
            let Some(nodes) = self.multi.groups.get(gid) else {
                continue;
            };
            let ready = nodes.iter().all(|node| {
                let (Some(lock), name) = (
                    corral_protocol::path::parent(node),
                    corral_protocol::path::name(node),
                ) else {
                    return false;
                };
                self.locks.get(lock).is_some_and(|meta| {
                    !meta.granted.contains(name)
                        && locks::eligible_now(&self.tree, lock, meta, name, txn.wall_ms)
                })
            });
            if !ready {
                continue;
            }
            for node in nodes.clone() {
                let (Some(lock), name) = (
                    corral_protocol::path::parent(&node),
                    corral_protocol::path::name(&node),
                ) else {
                    continue;
                };
                if let Some(meta) = self.locks.get_mut(lock) {
                    meta.granted.insert(name.to_string());
                }
                if Some(*gid) == quiet {
                    quiet_granted = true;
                    continue;
                }
                let Some(n) = self.tree.get(&node) else {
                    continue;
                };
                txn.lock_events.push(LockChange {
                    session: owner_session(&self.sessions, n.stat.ephemeral_owner),
                    granted: true,
                    event: LockEvent {
                        lock: lock.to_string(),
                        token: fencing_token(&node, n.stat.czxid),
                        node: node.clone(),
                        zxid: txn.zxid,
                    },
                });
            }
        }
        quiet_granted
    }

    /// The group of a node, if any.
    pub(super) fn group_of(&self, node: &str) -> Option<u64> {
        self.multi.group_of.get(node).copied()
    }

    /// Describes the locks of the request that created the queue node `node`
    /// (`GetLockGroup`): every lock of its group, in request order, or its own lock if
    /// it belongs to no group. O(the group's queues), whatever the number of locks.
    pub fn lock_group(&self, node: &str) -> Result<Vec<LockState>, ErrorInfo> {
        validate_path(node)?;
        let not_queued = || {
            ErrorInfo::new(
                ErrorCode::NoNode,
                format!("{node} is not a lock's queue node"),
            )
        };
        let describe = |lock: &str| {
            let (lock, meta) = self.locks.get_key_value(lock)?;
            Some(locks::describe(&self.tree, lock, meta, |o| {
                owner_session(&self.sessions, o)
            }))
        };
        let members = match self.group_of(node) {
            Some(gid) => self.multi.groups.get(&gid).cloned().unwrap_or_default(),
            None => vec![node.to_string()],
        };
        let states: Vec<LockState> = members
            .iter()
            .filter_map(|member| describe(corral_protocol::path::parent(member)?))
            .collect();
        // Only a queue node names a group: anything else (another child of a lock's
        // directory, a lock, an unrelated path) is no queue node.
        let queued = states
            .iter()
            .any(|s| s.queue.iter().any(|e| e.node == node));
        if queued {
            Ok(states)
        } else {
            Err(not_queued())
        }
    }

    /// `LockMany`: joins every lock's queue, all or nothing.
    pub(super) fn lock_many(
        &mut self,
        txn: &mut Txn,
        session: u64,
        req: &MultiLockRequest,
    ) -> Result<OpResult, ErrorInfo> {
        let bad = |m: String| Err(ErrorInfo::new(ErrorCode::BadArguments, m));
        if req.locks.is_empty() || req.locks.len() > MAX_LOCKS_PER_MULTI_LOCK {
            return bad(format!(
                "a multi-lock names 1 to {MAX_LOCKS_PER_MULTI_LOCK} locks, not {}",
                req.locks.len()
            ));
        }
        for (i, item) in req.locks.iter().enumerate() {
            validate_path(&item.lock)?;
            if item.lock == "/" {
                return bad("the root / cannot be a lock".into());
            }
            if let LockKind::Semaphore { permits: 0 } = item.kind {
                return bad("a semaphore needs at least one permit".into());
            }
            for other in &req.locks[..i] {
                if corral_protocol::path::is_within(&item.lock, &other.lock)
                    || corral_protocol::path::is_within(&other.lock, &item.lock)
                {
                    return bad(format!(
                        "a multi-lock cannot name {} and {} (the same lock, or one inside the other)",
                        other.lock, item.lock
                    ));
                }
            }
        }
        let owner = match req.lease {
            Some(lease) => {
                self.own_lease(session, lease)?;
                lease
            }
            None => session,
        };
        for item in &req.locks {
            if let Some(meta) = self.locks.get(&item.lock) {
                meta.admits(&item.lock, item.kind)?;
            }
            let queue_prefix = corral_protocol::path::join(&item.lock, locks::prefix(item.kind));
            validate_path(&corral_protocol::path::sequential(&queue_prefix, 0))?;
        }
        if req.try_only {
            for item in &req.locks {
                let fresh = LockMeta::new(LockFamily::of(item.kind), req.lock_delay_ms);
                let meta = self.locks.get(&item.lock).unwrap_or(&fresh);
                if !locks::would_grant(&self.tree, &item.lock, meta, item.kind, txn.wall_ms) {
                    let holders: Vec<&String> = meta.granted.iter().collect();
                    return Err(ErrorInfo::new(
                        ErrorCode::LockHeld,
                        format!("{} is held (by {holders:?})", item.lock),
                    ));
                }
            }
        }
        let new: Vec<(&str, LockKind)> = req
            .locks
            .iter()
            .map(|i| (i.lock.as_str(), i.kind))
            .collect();
        self.check_deadlock(session, &new)?;
        // Create the directories and nodes; a failure undoes them all.
        txn.undo = Some(Vec::new());
        let created = self.create_queue_nodes(txn, session, owner, req);
        let nodes = match created {
            Ok(nodes) => {
                txn.undo = None;
                nodes
            }
            Err(e) => {
                if let Some(log) = txn.undo.take() {
                    self.tree.rollback(log);
                }
                txn.changes.clear();
                txn.emptied.clear();
                return Err(e);
            }
        };
        let gid = txn.zxid;
        for (item, (node, _)) in req.locks.iter().zip(&nodes) {
            if !self.locks.contains_key(&item.lock) {
                let fresh = LockMeta::new(LockFamily::of(item.kind), req.lock_delay_ms);
                self.locks.insert(item.lock.clone(), fresh);
            }
            self.multi.group_of.insert(node.clone(), gid);
        }
        self.multi
            .groups
            .insert(gid, nodes.iter().map(|(n, _)| n.clone()).collect());
        for item in &req.locks {
            self.regrant(txn, &item.lock, None);
        }
        let granted = self.grant_groups(txn, &BTreeSet::from([gid]), Some(gid));
        Ok(OpResult::MultiLocked {
            granted,
            nodes: req
                .locks
                .iter()
                .zip(nodes)
                .map(|(item, (node, czxid))| LockedNode {
                    lock: item.lock.clone(),
                    token: fencing_token(&node, czxid),
                    node,
                })
                .collect(),
        })
    }

    /// Creates the directory (if missing) and one queue node per lock of `req`.
    fn create_queue_nodes(
        &mut self,
        txn: &mut Txn,
        session: u64,
        owner: u64,
        req: &MultiLockRequest,
    ) -> Result<Vec<(String, u64)>, ErrorInfo> {
        let mut nodes = Vec::with_capacity(req.locks.len());
        for item in &req.locks {
            self.ensure_lock_dir(txn, session, &item.lock)?;
            let create = CreateRequest {
                path: corral_protocol::path::join(&item.lock, locks::prefix(item.kind)),
                data: req.data.clone(),
                mode: CreateMode::EphemeralSequential,
                make_parents: false,
            };
            let (node, stat) = self.tree.create(txn, owner, &create)?;
            nodes.push((node, stat.czxid));
        }
        Ok(nodes)
    }

    /// The multi-lock invariants: every group node exists, the index agrees with the
    /// groups, and a group is granted whole or not at all; and the wait-for index
    /// equals one built from scratch.
    pub(super) fn check_multi_lock_invariants(&self) -> Result<(), String> {
        for (gid, nodes) in &self.multi.groups {
            let mut granted = 0;
            for node in nodes {
                if self.tree.get(node).is_none() {
                    return Err(format!("multi-lock {gid}: node {node} is gone"));
                }
                if self.multi.group_of.get(node) != Some(gid) {
                    return Err(format!("multi-lock {gid}: {node} is not indexed"));
                }
                let held = corral_protocol::path::parent(node).is_some_and(|lock| {
                    self.locks
                        .get(lock)
                        .is_some_and(|m| m.granted.contains(corral_protocol::path::name(node)))
                });
                granted += usize::from(held);
            }
            if granted != 0 && granted != nodes.len() {
                return Err(format!(
                    "multi-lock {gid}: {granted} of {} nodes granted",
                    nodes.len()
                ));
            }
        }
        if self.multi.group_of.len() != self.multi.groups.values().map(Vec::len).sum::<usize>() {
            return Err("multi-lock node index has stale entries".into());
        }
        if self.waits.is_built() && self.waits != self.fresh_wait_index() {
            return Err("the wait-for index differs from the state".into());
        }
        if self.delays.is_built() && self.delays != locks::DelayIndex::of(self.locks.iter()) {
            return Err("the lock-delay index differs from the state".into());
        }
        if self.leases.built && self.leases != LeaseIndex::of(&self.sessions) {
            return Err("the lease index differs from the state".into());
        }
        Ok(())
    }
}
