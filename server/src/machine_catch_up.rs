//! The lock events a node owes its clients when it skips entries by installing a
//! snapshot. A child module of `machine.rs`, so it reads the machine's fields directly.
//!
//! A node that applies every entry tells a connected session of each grant and loss the
//! entry makes (`Applied::lock_events`). A node that was behind and installs the
//! leader's snapshot never sees those entries, so without this a waiter connected to it
//! would wait for a grant that was made while the node was behind. The events are
//! derived by comparing the state before and after the install, as watches are
//! (`Watches::catch_up`); intermediate states collapse: a node granted and released
//! inside the skipped range is not reported.

use super::*;

impl StateMachine {
    /// The lock grants and losses between this (older) state and `new`, each carrying
    /// `new`'s zxid:
    ///
    /// - a grant for every queue node that holds its lock in `new` and did not hold it
    ///   here (a node is its path *and* its creation zxid: a recreated lock directory
    ///   restarts its sequence, so a path alone could name an earlier node);
    /// - a loss, to the lease's owner, for every queue node held under a lease that has
    ///   ended by `new`, whose owner lives on. This over-approximates the losses the
    ///   skipped entries reported: a node its owner released itself before the lease
    ///   ended is reported too. Clients match events by node and token and ignore
    ///   events for nodes they no longer track, so the extra loss is harmless;
    /// - a loss for every queue node named in `answered` (the results of skipped writes
    ///   the node answers from the deduplication table, by session) that is gone by
    ///   `new`: a node created *and* lost inside the skipped range is in neither state,
    ///   and its owner would otherwise wait for it forever.
    pub fn lock_catch_up(
        &self,
        new: &StateMachine,
        answered: &[(u64, OpResult)],
    ) -> Vec<LockChange> {
        let zxid = new.last_zxid;
        let mut out = Vec::new();
        for (lock, meta) in &new.locks {
            for name in &meta.granted {
                let node = corral_protocol::path::join(lock, name);
                let Some(n) = new.tree.get(&node) else {
                    continue;
                };
                let czxid = n.stat.czxid;
                let held_before = self
                    .locks
                    .get(lock)
                    .is_some_and(|m| m.granted.contains(name))
                    && self.tree.get(&node).is_some_and(|o| o.stat.czxid == czxid);
                if held_before {
                    continue;
                }
                out.push(LockChange {
                    session: owner_session(&new.sessions, n.stat.ephemeral_owner),
                    granted: true,
                    event: LockEvent {
                        lock: lock.clone(),
                        token: fencing_token(&node, czxid),
                        node,
                        zxid,
                    },
                });
            }
        }
        // (session, node, token) of the losses, each once.
        let mut lost: BTreeSet<(u64, String, u64)> = BTreeSet::new();
        for lock in self.locks.keys() {
            let Some(dir) = self.tree.get(lock) else {
                continue;
            };
            for name in &dir.children {
                let node = corral_protocol::path::join(lock, name);
                let Some(n) = self.tree.get(&node) else {
                    continue;
                };
                let lease = n.stat.ephemeral_owner;
                let Some(owner) = self.sessions.get(&lease).map(|s| s.info.lease_of) else {
                    continue;
                };
                if owner == 0
                    || new.sessions.contains_key(&lease)
                    || !new.sessions.contains_key(&owner)
                {
                    continue;
                }
                lost.insert((owner, node, n.stat.czxid));
            }
        }
        for (session, result) in answered {
            for (node, token) in queue_nodes(result) {
                let gone = new.tree.get(&node).is_none_or(|n| n.stat.czxid != token);
                if gone && new.sessions.contains_key(session) {
                    lost.insert((*session, node, token));
                }
            }
        }
        for (session, node, token) in lost {
            let Some(lock) = corral_protocol::path::parent(&node) else {
                continue;
            };
            out.push(LockChange {
                session,
                granted: false,
                event: LockEvent {
                    lock: lock.to_string(),
                    node,
                    token,
                    zxid,
                },
            });
        }
        out
    }
}

/// The queue nodes (path, token) a lock answer names.
fn queue_nodes(result: &OpResult) -> Vec<(String, u64)> {
    match result {
        OpResult::Locked { node, token } | OpResult::Queued { node, token } => {
            vec![(node.clone(), *token)]
        }
        OpResult::MultiLocked { nodes, .. } => {
            nodes.iter().map(|n| (n.node.clone(), n.token)).collect()
        }
        _ => Vec::new(),
    }
}
