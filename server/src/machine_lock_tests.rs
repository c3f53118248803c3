//! Tests of the lock engine through `StateMachine::apply`: grants, events, fencing tokens,
//! leases, lock-delay, `CheckLock`, the lifetime of a lock's state, and a property test
//! of random lock histories.

use super::*;
use crate::deadlock::QueueCounts;
use crate::locks::{self, LockFamily};
use corral_protocol::{LockEntry, MultiLockItem, MultiLockRequest};
use proptest::prelude::*;

/// Wall time of the first entry.
const T0: i64 = 1_700_000_000_000;

/// Drives a machine with consecutive zxids, per-session xids and a settable clock.
struct H {
    m: StateMachine,
    zxid: u64,
    /// The wall time of the next entry; every entry advances it by 1 ms.
    now: i64,
    xids: BTreeMap<u64, u64>,
    /// Check the tree's and the locks' invariants after every entry.
    checked: bool,
    /// A second machine fed the same entries that, every `reinstall_every` entries, is
    /// replaced by a snapshot of itself (encoded and decoded, as a node installing a
    /// snapshot does); each entry must give it the same `Applied` as `m`.
    shadow: Option<StateMachine>,
    reinstall_every: u64,
    /// The entry variant of client writes (their rules: `Txn::queue_names_only`).
    kind: WriteKind,
}

impl H {
    fn new() -> H {
        H {
            m: StateMachine::new(MachineLimits {
                max_data_bytes: 64,
                dedup_window: 8,
            }),
            zxid: 0,
            now: T0,
            xids: BTreeMap::new(),
            checked: true,
            shadow: None,
            reinstall_every: 1,
            kind: WriteKind::Plain,
        }
    }

    /// Sends client writes as this entry variant.
    fn with_kind(mut self, kind: WriteKind) -> H {
        self.kind = kind;
        self
    }

    /// Follows every entry with a shadow machine reinstalled from a snapshot every
    /// `every` entries (see `shadow`).
    fn with_shadow(mut self, every: u64) -> H {
        self.shadow = Some(self.m.clone());
        self.reinstall_every = every.max(1);
        self
    }

    fn apply(&mut self, body: EntryBody) -> Applied {
        self.zxid += 1;
        let wall_ms = self.now;
        self.now += 1;
        let entry = Entry::new(wall_ms, body);
        let applied = self.m.apply(self.zxid, &entry);
        assert_eq!(self.m.last_zxid(), self.zxid);
        if let Some(shadow) = &mut self.shadow {
            if self.zxid.is_multiple_of(self.reinstall_every) {
                let bytes = bincode::serde::encode_to_vec(&*shadow, bincode::config::standard())
                    .expect("encoding a snapshot");
                let (back, _): (StateMachine, usize) =
                    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                        .expect("decoding a snapshot");
                *shadow = back;
            }
            let got = shadow.apply(self.zxid, &entry);
            assert_eq!(
                got, applied,
                "a reinstalled machine diverged at zxid {}",
                self.zxid
            );
            assert_eq!(
                shadow.state_hash(),
                self.m.state_hash(),
                "zxid {}",
                self.zxid
            );
        }
        if self.checked {
            if let Err(e) = self.m.check_invariants() {
                panic!("invariants broken after zxid {}: {e}", self.zxid);
            }
            if let Err(e) = check_locks(&self.m, wall_ms) {
                panic!("lock invariants broken after zxid {}: {e}", self.zxid);
            }
        }
        applied
    }

    fn open(&mut self) -> u64 {
        let applied = self.apply(EntryBody::OpenSession {
            secret: 7,
            ttl_ms: 10_000,
        });
        assert_eq!(applied.result, Some(Ok(OpResult::Pong)));
        applied.zxid
    }

    fn write(&mut self, session_id: u64, op: Op) -> Applied {
        let xid = self.xids.entry(session_id).or_insert(0);
        *xid += 1;
        let xid = *xid;
        self.apply(EntryBody::client(self.kind, session_id, xid, op, 0))
    }

    fn lock_with(&mut self, s: u64, req: LockRequest) -> Applied {
        self.write(s, Op::Lock(req))
    }

    fn lock(&mut self, s: u64, lock: &str, kind: LockKind) -> Applied {
        self.lock_with(s, req(lock, kind))
    }

    fn unlock(&mut self, s: u64, node: &str) -> Applied {
        self.write(
            s,
            Op::Unlock {
                node: node.to_string(),
            },
        )
    }

    fn release(&mut self, s: u64, node: &str, token: u64) -> Applied {
        self.write(
            s,
            Op::Release {
                node: node.to_string(),
                token,
            },
        )
    }

    fn grant_lease(&mut self, s: u64, ttl_ms: u64) -> u64 {
        let applied = self.write(s, Op::GrantLease { ttl_ms });
        match applied.result {
            Some(Ok(OpResult::Lease {
                lease_id,
                ttl_ms: t,
            })) => {
                assert_eq!(lease_id, applied.zxid, "a lease id is its zxid");
                assert_eq!(t, ttl_ms);
                lease_id
            }
            other => panic!("GrantLease: {other:?}"),
        }
    }

    fn expire(&mut self, ids: Vec<u64>) -> Applied {
        self.apply(EntryBody::ExpireSessions { session_ids: ids })
    }

    fn noop(&mut self) -> Applied {
        self.apply(EntryBody::Noop { barrier: 0 })
    }

    /// The granted queue nodes of `lock`, in queue order.
    fn holders(&self, lock: &str) -> Vec<String> {
        self.queue(lock)
            .into_iter()
            .filter(|e| e.granted)
            .map(|e| e.node)
            .collect()
    }

    /// The queue of `lock` as `GetLocks` describes it (empty if there is no such lock).
    fn queue(&self, lock: &str) -> Vec<LockEntry> {
        self.state(lock).map(|s| s.queue).unwrap_or_default()
    }

    fn state(&self, lock: &str) -> Option<LockState> {
        self.m
            .locks_under(lock)
            .expect("a valid path")
            .into_iter()
            .find(|s| s.lock == lock)
    }

    fn czxid(&self, path: &str) -> u64 {
        self.m
            .exists(path)
            .expect("valid")
            .unwrap_or_else(|| panic!("{path} exists"))
            .czxid
    }

    fn node_exists(&self, path: &str) -> bool {
        self.m.exists(path).expect("valid").is_some()
    }
}

fn req(lock: &str, kind: LockKind) -> LockRequest {
    LockRequest {
        lock: lock.to_string(),
        kind,
        try_only: false,
        lease: None,
        lock_delay_ms: 0,
        data: Vec::new(),
    }
}

fn sem(permits: u32) -> LockKind {
    LockKind::Semaphore { permits }
}

/// The node and token of a `Locked` answer.
fn locked(applied: &Applied) -> (String, u64) {
    match &applied.result {
        Some(Ok(OpResult::Locked { node, token })) => (node.clone(), *token),
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// The node and token of a `Queued` answer.
fn queued(applied: &Applied) -> (String, u64) {
    match &applied.result {
        Some(Ok(OpResult::Queued { node, token })) => (node.clone(), *token),
        other => panic!("expected Queued, got {other:?}"),
    }
}

fn code(applied: &Applied) -> ErrorCode {
    match &applied.result {
        Some(Err(e)) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn released(applied: &Applied) -> bool {
    match &applied.result {
        Some(Ok(OpResult::Unlocked { released })) => *released,
        other => panic!("expected Unlocked, got {other:?}"),
    }
}

/// (session, node, token, zxid) of the grant events of an entry.
fn grants(applied: &Applied) -> Vec<(u64, String, u64, u64)> {
    events(applied, true)
}

/// (session, node, token, zxid) of the loss events of an entry.
fn losses(applied: &Applied) -> Vec<(u64, String, u64, u64)> {
    events(applied, false)
}

fn events(applied: &Applied, granted: bool) -> Vec<(u64, String, u64, u64)> {
    applied
        .lock_events
        .iter()
        .filter(|c| c.granted == granted)
        .map(|c| {
            assert_eq!(
                Some(c.event.lock.as_str()),
                corral_protocol::path::parent(&c.event.node),
                "an event's lock is its node's parent"
            );
            (c.session, c.event.node.clone(), c.event.token, c.event.zxid)
        })
        .collect()
}

/// Who must hold a lock whose queue is `q` when no lock-delay is running.
fn expected_holders(q: &[(&str, LockKind)], family: LockFamily) -> BTreeSet<String> {
    let take = |n: usize| q.iter().take(n).map(|(name, _)| name.to_string()).collect();
    match family {
        LockFamily::Exclusive => take(1),
        LockFamily::Semaphore(n) => take(n as usize),
        LockFamily::ReadWrite => match q.first() {
            Some((name, LockKind::Write)) => BTreeSet::from([name.to_string()]),
            _ => q
                .iter()
                .take_while(|(_, k)| *k == LockKind::Read)
                .map(|(name, _)| name.to_string())
                .collect(),
        },
    }
}

/// The invariants of the lock state after an entry stamped `now`: every lock's directory
/// exists and holds its granted nodes; no more holders than the family allows; a delay
/// that ran out by `now` was cleared; and without a running delay the holders are exactly
/// those the rules name (FIFO, fair read-write): nothing is left waiting behind a free lock.
fn check_locks(m: &StateMachine, now: i64) -> Result<(), String> {
    // Multi-lock nodes are granted only when their whole group is eligible.
    let eligible: BTreeMap<&str, BTreeSet<String>> = m
        .locks
        .iter()
        .map(|(lock, meta)| {
            let q = locks::queue(&m.tree, lock, meta.family);
            (lock.as_str(), expected_holders(&q, meta.family))
        })
        .collect();
    let whole_group_eligible = |node: &str| -> bool {
        let Some(gid) = m.group_of(node) else {
            return true;
        };
        m.tree
            .iter()
            .filter(|(p, _)| m.group_of(p) == Some(gid))
            .all(|(p, _)| {
                corral_protocol::path::parent(p).is_some_and(|lock| {
                    eligible
                        .get(lock)
                        .is_some_and(|e| e.contains(corral_protocol::path::name(p)))
                        && m.locks.get(lock).is_some_and(|meta| !meta.delayed(now))
                })
            })
    };
    for (lock, meta) in &m.locks {
        let dir = m
            .tree
            .get(lock)
            .ok_or_else(|| format!("{lock}: lock state without a directory"))?;
        for name in &meta.granted {
            if !dir.children.contains(name) {
                return Err(format!("{lock}: granted {name} is not a child"));
            }
            if locks::kind_of(name, meta.family).is_none() || locks::sequence(name).is_none() {
                return Err(format!("{lock}: granted {name} is not a queue node"));
            }
        }
        if meta.delayed_until_ms != 0 && meta.delayed_until_ms <= now {
            return Err(format!(
                "{lock}: delay until {} not cleared at {now}",
                meta.delayed_until_ms
            ));
        }
        let q = locks::queue(&m.tree, lock, meta.family);
        let kind = |name: &String| q.iter().find(|(n, _)| *n == name.as_str()).map(|(_, k)| *k);
        let granted = meta.granted.len();
        match meta.family {
            LockFamily::Exclusive if granted > 1 => {
                return Err(format!("{lock}: {granted} exclusive holders"));
            }
            LockFamily::Semaphore(n) if granted > n as usize => {
                return Err(format!("{lock}: {granted} holders of a semaphore({n})"));
            }
            LockFamily::ReadWrite => {
                let writers = meta
                    .granted
                    .iter()
                    .filter(|n| kind(n) == Some(LockKind::Write))
                    .count();
                if writers > 1 || (writers == 1 && granted > 1) {
                    return Err(format!("{lock}: holders {:?}", meta.granted));
                }
            }
            _ => {}
        }
        let in_groups = q.iter().any(|(name, _)| {
            m.group_of(&corral_protocol::path::join(lock, name))
                .is_some()
        });
        let expected: BTreeSet<String> = expected_holders(&q, meta.family)
            .into_iter()
            .filter(|name| whole_group_eligible(&corral_protocol::path::join(lock, name)))
            .collect();
        if meta.delayed(now) {
            if !meta.granted.is_subset(&expected) {
                return Err(format!(
                    "{lock}: holders {:?} during a delay, queue {q:?}",
                    meta.granted
                ));
            }
        } else if meta.granted != expected {
            return Err(format!(
                "{lock}: holders {:?}, expected {expected:?} (queue {q:?})",
                meta.granted
            ));
        }
        if !q.is_empty() && granted == 0 && !meta.delayed(now) && !in_groups {
            return Err(format!("{lock}: waiters and no holder, no delay"));
        }
    }
    Ok(())
}

/// Checks that a `Deadlock` refusal of `session`'s request on `lock` names a real cycle
/// of the state after the entry: the first step is the request's; every other step's
/// session has a waiting node on its lock with a node of the session it waits for ahead
/// of it; the steps close the cycle; and it passes through at least two locks.
fn check_cycle(m: &StateMachine, session: u64, lock: &str, message: &str) -> Result<(), String> {
    let cycle = corral_protocol::deadlock::parse_cycle(message)
        .ok_or_else(|| format!("no cycle in {message:?}"))?;
    let first = &cycle[0];
    if first.session != session || first.lock != lock {
        return Err(format!("the first step {first:?} is not the request's"));
    }
    for (i, step) in cycle.iter().enumerate() {
        let next = &cycle[(i + 1) % cycle.len()];
        if step.waits_for != next.session || step.session == step.waits_for {
            return Err(format!("steps {i} and the next do not chain: {cycle:?}"));
        }
        let q = m.locks_under(&step.lock).map_err(|e| e.to_string())?;
        let q = q
            .iter()
            .find(|s| s.lock == step.lock)
            .map(|s| s.queue.clone())
            .unwrap_or_default();
        if i == 0 {
            // The refused request: a node of `waits_for` is in the queue (it would be
            // behind it).
            if !q.iter().any(|e| e.session == step.waits_for) {
                return Err(format!("step 0 {step:?}: nobody of it in {q:?}"));
            }
            continue;
        }
        let waiting = q
            .iter()
            .rposition(|e| e.session == step.session && !e.granted)
            .ok_or_else(|| format!("step {i} {step:?}: no waiting node in {q:?}"))?;
        if !q[..waiting].iter().any(|e| e.session == step.waits_for) {
            return Err(format!("step {i} {step:?}: nobody of it ahead in {q:?}"));
        }
    }
    let locks: BTreeSet<&str> = cycle.iter().map(|s| s.lock.as_str()).collect();
    if locks.len() < 2 {
        return Err(format!("a cycle within one lock: {cycle:?}"));
    }
    Ok(())
}

// ----- exclusive locks -----

#[test]
fn exclusive_locks_are_granted_in_fifo_order_with_increasing_tokens() {
    let mut h = H::new();
    let (a, b, c) = (h.open(), h.open(), h.open());

    let la = h.lock(a, "/l", LockKind::Exclusive);
    let (na, ta) = locked(&la);
    assert_eq!(na, "/l/x-0000000000");
    assert_eq!(ta, la.zxid, "the token is the zxid of the Lock");
    assert_eq!(ta, h.czxid(&na));
    assert!(
        la.lock_events.is_empty(),
        "no event for a grant answered Locked"
    );
    assert!(h.m.tree().get("/l").expect("the directory").container);
    assert_eq!(
        h.m.tree()
            .get(&na)
            .expect("queue node")
            .stat
            .ephemeral_owner,
        a
    );

    let lb = h.lock(b, "/l", LockKind::Exclusive);
    let (nb, tb) = queued(&lb);
    assert_eq!(nb, "/l/x-0000000001");
    assert_eq!(tb, h.czxid(&nb));
    assert!(lb.lock_events.is_empty());
    let lc = h.lock(c, "/l", LockKind::Exclusive);
    let (nc, tc) = queued(&lc);
    assert_eq!(nc, "/l/x-0000000002");
    assert!(ta < tb && tb < tc);
    assert_eq!(h.holders("/l"), vec![na.clone()]);
    let (children, _) = h.m.get_children("/l").expect("exists");
    assert_eq!(
        children,
        vec!["x-0000000000", "x-0000000001", "x-0000000002"]
    );

    // Releasing the holder grants the next waiter, to its session, in the same zxid.
    let ua = h.unlock(a, &na);
    assert!(released(&ua));
    assert_eq!(grants(&ua), vec![(b, nb.clone(), tb, ua.zxid)]);
    assert!(losses(&ua).is_empty());
    assert_eq!(h.holders("/l"), vec![nb.clone()]);
    assert!(!h.node_exists(&na));

    let ub = h.unlock(b, &nb);
    assert_eq!(grants(&ub), vec![(c, nc.clone(), tc, ub.zxid)]);
    assert_eq!(h.holders("/l"), vec![nc.clone()]);

    // A newcomer queues behind c, with a larger token.
    let ud = h.lock(a, "/l", LockKind::Exclusive);
    let (nd, td) = queued(&ud);
    assert!(td > tc);
    let uc = h.unlock(c, &nc);
    assert_eq!(grants(&uc), vec![(a, nd, td, uc.zxid)]);
}

#[test]
fn try_only_on_a_held_lock_fails_without_touching_the_tree() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    // try_only on a free lock takes it.
    let mut try_req = req("/t", LockKind::Exclusive);
    try_req.try_only = true;
    let (na, _) = locked(&h.lock_with(a, try_req.clone()));

    let tree = h.m.tree_hash();
    let state = h.m.state_hash();
    let nodes = h.m.node_count();
    let cversion = h.m.exists("/t").expect("valid").expect("dir").cversion;
    let applied = h.lock_with(b, try_req.clone());
    assert_eq!(code(&applied), ErrorCode::LockHeld);
    assert!(applied.changes.is_empty());
    assert!(applied.lock_events.is_empty());
    assert_eq!(
        h.m.tree_hash(),
        tree,
        "no node, no counter, no stat changed"
    );
    assert_ne!(h.m.state_hash(), state, "the entry still took a zxid");
    assert_eq!(h.m.node_count(), nodes);
    assert_eq!(h.m.exists("/t").expect("v").expect("d").cversion, cversion);
    assert_eq!(h.m.ephemerals(b).count(), 0);
    // The sequence counter did not move either.
    let (nb, _) = queued(&h.lock(b, "/t", LockKind::Exclusive));
    assert_eq!(nb, "/t/x-0000000001");
    // Once the holder is gone, the waiter b holds the lock: a try still fails.
    h.unlock(a, &na);
    assert_eq!(code(&h.lock_with(a, try_req)), ErrorCode::LockHeld);
    assert_eq!(h.holders("/t"), vec![nb]);
}

#[test]
fn unlock_is_idempotent_and_checks_the_owner() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let (na, _) = locked(&h.lock(a, "/u", LockKind::Exclusive));
    let (nb, _) = queued(&h.lock(b, "/u", LockKind::Exclusive));

    let tree = h.m.tree_hash();
    let wrong = h.unlock(b, &na);
    assert_eq!(code(&wrong), ErrorCode::NotLockOwner);
    assert_eq!(h.m.tree_hash(), tree);
    assert_eq!(h.holders("/u"), vec![na.clone()]);

    // Not a queue node: the directory itself, or a node outside any lock.
    assert_eq!(code(&h.unlock(a, "/u")), ErrorCode::BadArguments);
    assert_eq!(code(&h.unlock(a, "bad")), ErrorCode::InvalidPath);
    assert!(!released(&h.unlock(a, "/u/x-0000000099")));

    let first = h.unlock(a, &na);
    assert!(released(&first));
    assert_eq!(grants(&first).len(), 1);
    // Again (a new xid): nothing to release.
    let again = h.unlock(a, &na);
    assert!(!released(&again));
    assert!(again.changes.is_empty() && again.lock_events.is_empty());
    // A retry of the first xid gets the first answer.
    let xid = h.xids[&a] - 1;
    let retry = h.apply(EntryBody::Write {
        session_id: a,
        xid,
        op: Op::Unlock { node: na.clone() },
    });
    assert_eq!(retry.result, first.result);
    assert!(retry.changes.is_empty());
    assert_eq!(h.holders("/u"), vec![nb]);
}

#[test]
fn release_names_one_node_even_when_its_path_comes_back() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let (old, t1) = locked(&h.lock(a, "/r", LockKind::Exclusive));
    assert!(released(&h.release(a, &old, t1)));
    assert!(
        h.m.exists("/r").expect("valid").is_none(),
        "the directory went"
    );
    // The directory is created again, its counter at 0: the same path, a new node, and
    // the same session holds it (another task of the same client, say).
    let (again, t2) = locked(&h.lock(a, "/r", LockKind::Exclusive));
    assert_eq!((again.as_str(), t1 == t2), (old.as_str(), false));

    // A late release of the first node (a retry, a dropped guard) releases nothing.
    let tree = h.m.tree_hash();
    let stale = h.release(a, &old, t1);
    assert!(!released(&stale));
    assert!(stale.changes.is_empty() && stale.lock_events.is_empty());
    assert_eq!(h.m.tree_hash(), tree);
    assert_eq!(h.holders("/r"), vec![again.clone()]);
    // Nor does another session's, with either token: the old node is gone for it too,
    // the new one is not its own.
    assert!(!released(&h.release(b, &old, t1)));
    assert_eq!(code(&h.release(b, &again, t2)), ErrorCode::NotLockOwner);
    assert_eq!(code(&h.release(b, "/r", t2)), ErrorCode::BadArguments);
    assert_eq!(code(&h.release(b, "bad", t2)), ErrorCode::InvalidPath);
    // By path, an `Unlock` takes whatever node has the path now.
    let (nb, tb) = queued(&h.lock(b, "/r", LockKind::Exclusive));
    let by_path = h.unlock(a, &old);
    assert!(released(&by_path));
    assert_eq!(grants(&by_path).len(), 1);
    assert_eq!(h.holders("/r"), vec![nb.clone()]);
    assert!(released(&h.release(b, &nb, tb)));
}

#[test]
fn releasing_a_waiter_grants_nobody() {
    let mut h = H::new();
    let (a, b, c) = (h.open(), h.open(), h.open());
    let (na, _) = locked(&h.lock(a, "/w", LockKind::Exclusive));
    let (nb, _) = queued(&h.lock(b, "/w", LockKind::Exclusive));
    let (nc, tc) = queued(&h.lock(c, "/w", LockKind::Exclusive));
    let ub = h.unlock(b, &nb);
    assert!(released(&ub));
    assert!(ub.lock_events.is_empty());
    assert_eq!(h.holders("/w"), vec![na.clone()]);
    let ua = h.unlock(a, &na);
    assert_eq!(grants(&ua), vec![(c, nc, tc, ua.zxid)]);
}

// ----- semaphores and read-write locks -----

#[test]
fn a_semaphore_of_three_with_five_requests() {
    let mut h = H::new();
    let s: Vec<u64> = (0..5).map(|_| h.open()).collect();
    let mut nodes = Vec::new();
    for (i, &session) in s.iter().enumerate() {
        let applied = h.lock(session, "/sem", sem(3));
        let (node, token) = if i < 3 {
            locked(&applied)
        } else {
            queued(&applied)
        };
        assert_eq!(node, format!("/sem/s-{i:010}"));
        nodes.push((node, token));
    }
    assert_eq!(h.holders("/sem").len(), 3);
    let mut try_req = req("/sem", sem(3));
    try_req.try_only = true;
    assert_eq!(code(&h.lock_with(s[0], try_req)), ErrorCode::LockHeld);
    // Other families and other permit counts cannot join.
    let tree = h.m.tree_hash();
    assert_eq!(code(&h.lock(s[0], "/sem", sem(4))), ErrorCode::BadArguments);
    assert_eq!(
        code(&h.lock(s[0], "/sem", LockKind::Exclusive)),
        ErrorCode::BadArguments
    );
    assert_eq!(h.m.tree_hash(), tree);

    // A waiter leaves: nobody is granted.
    let u = h.unlock(s[4], &nodes[4].0);
    assert!(u.lock_events.is_empty());
    // A holder leaves: the first waiter is granted.
    let u = h.unlock(s[1], &nodes[1].0);
    assert_eq!(
        grants(&u),
        vec![(s[3], nodes[3].0.clone(), nodes[3].1, u.zxid)]
    );
    assert_eq!(
        h.holders("/sem"),
        vec![nodes[0].0.clone(), nodes[2].0.clone(), nodes[3].0.clone()]
    );
    // Zero permits is refused.
    assert_eq!(
        code(&h.lock(s[0], "/sem0", sem(0))),
        ErrorCode::BadArguments
    );
    assert!(!h.node_exists("/sem0"));
}

#[test]
fn read_write_locks_are_fair() {
    let mut h = H::new();
    let (a, b, c, d) = (h.open(), h.open(), h.open(), h.open());
    let (r1, _) = locked(&h.lock(a, "/rw", LockKind::Read));
    let (r2, _) = locked(&h.lock(b, "/rw", LockKind::Read));
    let (w3, t3) = queued(&h.lock(c, "/rw", LockKind::Write));
    // A read behind a waiting write waits: writers are not starved.
    let (r4, t4) = queued(&h.lock(d, "/rw", LockKind::Read));
    assert_eq!(
        (r1.as_str(), r2.as_str(), w3.as_str(), r4.as_str()),
        (
            "/rw/r-0000000000",
            "/rw/r-0000000001",
            "/rw/w-0000000002",
            "/rw/r-0000000003"
        )
    );
    assert_eq!(h.holders("/rw"), vec![r1.clone(), r2.clone()]);
    let mut try_read = req("/rw", LockKind::Read);
    try_read.try_only = true;
    assert_eq!(code(&h.lock_with(a, try_read)), ErrorCode::LockHeld);

    let u = h.unlock(a, &r1);
    assert!(u.lock_events.is_empty(), "one reader still holds it");
    let u = h.unlock(b, &r2);
    assert_eq!(grants(&u), vec![(c, w3.clone(), t3, u.zxid)]);
    assert_eq!(h.holders("/rw"), vec![w3.clone()]);
    let u = h.unlock(c, &w3);
    assert_eq!(grants(&u), vec![(d, r4.clone(), t4, u.zxid)]);
    assert_eq!(h.holders("/rw"), vec![r4]);
}

#[test]
fn a_request_of_another_family_is_refused() {
    let mut h = H::new();
    let a = h.open();
    h.lock(a, "/x", LockKind::Exclusive);
    h.lock(a, "/r", LockKind::Write);
    let tree = h.m.tree_hash();
    for (lock, kind) in [
        ("/x", LockKind::Read),
        ("/x", LockKind::Write),
        ("/x", sem(1)),
        ("/r", LockKind::Exclusive),
        ("/r", sem(2)),
    ] {
        let applied = h.lock(a, lock, kind);
        assert_eq!(code(&applied), ErrorCode::BadArguments, "{lock} {kind:?}");
        assert!(applied.changes.is_empty());
    }
    assert_eq!(h.m.tree_hash(), tree);
    // The root and ephemeral nodes cannot be locks.
    assert_eq!(
        code(&h.lock(a, "/", LockKind::Exclusive)),
        ErrorCode::BadArguments
    );
    assert_eq!(
        code(&h.lock(a, "/x/x-0000000000", LockKind::Exclusive)),
        ErrorCode::NoChildrenForEphemerals
    );
    assert_eq!(
        code(&h.lock(a, "x", LockKind::Exclusive)),
        ErrorCode::InvalidPath
    );
    assert_eq!(h.m.tree_hash(), tree);
}

// ----- leases -----

#[test]
fn a_lease_expiry_loses_its_locks_but_not_the_session() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let lease = h.grant_lease(a, 3_000);
    assert_eq!(h.m.session(lease).expect("lease").lease_of, a);

    let mut under = req("/ls", LockKind::Exclusive);
    under.lease = Some(lease);
    let (na, ta) = locked(&h.lock_with(a, under.clone()));
    assert_eq!(h.m.tree().get(&na).expect("n").stat.ephemeral_owner, lease);
    let (nb, tb) = queued(&h.lock(b, "/ls", LockKind::Exclusive));
    // A second request under the lease waits, and is lost with it too.
    let (na2, ta2) = queued(&h.lock_with(a, under.clone()));
    let q = h.queue("/ls");
    assert_eq!((q[0].session, q[0].lease, q[0].token), (a, lease, ta));
    assert_eq!((q[1].session, q[1].lease), (b, b));

    // Leases are checked: another session's lease, or a lease that does not exist.
    let mut other = under.clone();
    assert_eq!(code(&h.lock_with(b, other.clone())), ErrorCode::NoLease);
    other.lease = Some(999_999);
    assert_eq!(code(&h.lock_with(a, other)), ErrorCode::NoLease);
    // The owner can unlock a node held under its lease; another session cannot.
    let (na3, _) = queued(&h.lock_with(a, under));
    assert_eq!(code(&h.unlock(b, &na3)), ErrorCode::NotLockOwner);
    assert!(released(&h.unlock(a, &na3)));

    let e = h.expire(vec![lease]);
    assert_eq!(e.ended_sessions, vec![lease]);
    assert_eq!(
        e.locks_abandoned, 1,
        "the held node; the waiting one is not counted"
    );
    assert_eq!(
        losses(&e),
        vec![(a, na.clone(), ta, e.zxid), (a, na2.clone(), ta2, e.zxid)]
    );
    assert_eq!(grants(&e), vec![(b, nb.clone(), tb, e.zxid)]);
    // Losses come before the grant they make room for.
    assert!(!e.lock_events[0].granted);
    assert!(h.m.session(a).is_some(), "the owner session lives on");
    assert!(h.m.session(lease).is_none());
    assert!(!h.node_exists(&na) && !h.node_exists(&na2));
    assert_eq!(h.holders("/ls"), vec![nb]);
    // The lease is gone for good.
    let mut again = req("/ls", LockKind::Exclusive);
    again.lease = Some(lease);
    assert_eq!(code(&h.lock_with(a, again)), ErrorCode::NoLease);
    assert_eq!(
        code(&h.write(a, Op::RevokeLease { lease_id: lease })),
        ErrorCode::NoLease
    );
}

#[test]
fn revoking_a_lease_releases_its_locks_without_delay() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let lease = h.grant_lease(a, 5_000);
    let mut under = req("/rv", LockKind::Exclusive);
    under.lease = Some(lease);
    under.lock_delay_ms = 1_000;
    let (na, _) = locked(&h.lock_with(a, under));
    let (nb, tb) = queued(&h.lock(b, "/rv", LockKind::Exclusive));
    assert_eq!(
        code(&h.write(b, Op::RevokeLease { lease_id: lease })),
        ErrorCode::NoLease,
        "only the owner revokes"
    );
    let r = h.write(a, Op::RevokeLease { lease_id: lease });
    assert!(released(&r));
    assert_eq!(grants(&r), vec![(b, nb, tb, r.zxid)]);
    assert!(losses(&r).is_empty(), "a revocation is a release");
    assert!(!h.node_exists(&na));
    assert!(h.m.session(lease).is_none());
    assert_eq!(h.m.next_lock_delay_end(), None);
}

#[test]
fn closing_a_session_releases_the_locks_of_its_leases() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let lease = h.grant_lease(a, 5_000);
    let mut under = req("/cl", LockKind::Exclusive);
    under.lease = Some(lease);
    under.lock_delay_ms = 1_000;
    let (na, _) = locked(&h.lock_with(a, under));
    let (nb, tb) = queued(&h.lock(b, "/cl", LockKind::Exclusive));
    let c = h.apply(EntryBody::CloseSession { session_id: a });
    assert_eq!(c.result, Some(Ok(OpResult::Closed)));
    assert_eq!(c.ended_sessions, vec![lease, a]);
    assert!(!h.node_exists(&na));
    assert!(h.m.session(lease).is_none());
    // A close is a release: no delay, no loss events, the waiter is granted at once.
    assert!(losses(&c).is_empty());
    assert_eq!(grants(&c), vec![(b, nb, tb, c.zxid)]);
    assert_eq!(h.m.next_lock_delay_end(), None);
}

#[test]
fn a_session_expiry_takes_its_leases_locks_with_the_lock_delay() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let lease = h.grant_lease(a, 5_000);
    let mut under = req("/se", LockKind::Exclusive);
    under.lease = Some(lease);
    under.lock_delay_ms = 500;
    locked(&h.lock_with(a, under));
    let (nb, tb) = queued(&h.lock(b, "/se", LockKind::Exclusive));
    let t = h.now;
    let e = h.expire(vec![a]);
    assert_eq!(e.ended_sessions, vec![lease, a]);
    assert_eq!(e.locks_abandoned, 1);
    // The session's connection ends with Goodbye: no LockLost, and the delay runs.
    assert!(e.lock_events.is_empty());
    assert_eq!(h.m.next_lock_delay_end(), Some(t + 500));
    h.now = t + 500;
    let n = h.noop();
    assert_eq!(grants(&n), vec![(b, nb, tb, n.zxid)]);
}

// ----- lock-delay -----

#[test]
fn lock_delay_holds_grants_back_after_an_expiry() {
    let mut h = H::new();
    let (a, b, c) = (h.open(), h.open(), h.open());
    let mut first = req("/d", LockKind::Exclusive);
    first.lock_delay_ms = 1_000;
    let (na, _) = locked(&h.lock_with(a, first));
    let (nb, tb) = queued(&h.lock(b, "/d", LockKind::Exclusive));
    assert_eq!(h.m.next_lock_delay_end(), None);

    let t = h.now;
    let e = h.expire(vec![a]);
    assert!(e.lock_events.is_empty(), "no grant during the delay");
    assert_eq!(e.locks_abandoned, 1);
    assert!(!h.node_exists(&na));
    assert_eq!(h.m.next_lock_delay_end(), Some(t + 1_000));
    let st = h.state("/d").expect("the lock lives on with its waiter");
    assert_eq!((st.lock_delay_ms, st.delayed_until_ms), (1_000, t + 1_000));
    assert!(h.holders("/d").is_empty());

    // During the delay: try_only fails, new requests queue.
    let mut try_req = req("/d", LockKind::Exclusive);
    try_req.try_only = true;
    assert_eq!(code(&h.lock_with(c, try_req)), ErrorCode::LockHeld);
    let (nc, _) = queued(&h.lock(c, "/d", LockKind::Exclusive));
    h.now = t + 999;
    let n = h.noop();
    assert!(n.lock_events.is_empty(), "1 ms early");
    assert!(h.holders("/d").is_empty());

    h.now = t + 1_000;
    let n = h.noop();
    assert_eq!(grants(&n), vec![(b, nb.clone(), tb, n.zxid)]);
    assert_eq!(h.holders("/d"), vec![nb]);
    assert_eq!(h.m.next_lock_delay_end(), None);
    assert_eq!(h.state("/d").expect("lock").delayed_until_ms, 0);
    assert_eq!(h.queue("/d")[1].node, nc);
}

#[test]
fn lock_delay_ends_with_whatever_entry_comes_next() {
    // Not only a Noop: any entry stamped late enough grants the waiters, including a
    // Lock request (the waiters ahead of it are granted first, with events).
    let mut h = H::new();
    let (a, b, c) = (h.open(), h.open(), h.open());
    let mut first = req("/d2", sem(2));
    first.lock_delay_ms = 100;
    locked(&h.lock_with(a, first));
    let (nb, tb) = locked(&h.lock(b, "/d2", sem(2)));
    let (nc, tc) = queued(&h.lock(c, "/d2", sem(2)));
    let t = h.now;
    h.expire(vec![a]);
    assert_eq!(h.holders("/d2"), vec![nb.clone()]);
    h.now = t + 100;
    let l = h.lock(b, "/d2", sem(2));
    let (nb2, _) = queued(&l);
    assert_eq!(grants(&l), vec![(c, nc.clone(), tc, l.zxid)]);
    assert_eq!(h.holders("/d2"), vec![nb, nc]);
    assert!(h.queue("/d2").iter().any(|e| e.node == nb2 && !e.granted));
    let _ = tb;
}

#[test]
fn a_release_with_a_delay_configured_grants_at_once() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let mut first = req("/r", LockKind::Exclusive);
    first.lock_delay_ms = 60_000;
    let (na, _) = locked(&h.lock_with(a, first));
    let (nb, tb) = queued(&h.lock(b, "/r", LockKind::Exclusive));
    let u = h.unlock(a, &na);
    assert_eq!(grants(&u), vec![(b, nb, tb, u.zxid)]);
    assert_eq!(h.m.next_lock_delay_end(), None);
    // A waiter that expires starts no delay either.
    let (c, d) = (h.open(), h.open());
    let (nc, _) = queued(&h.lock(c, "/r", LockKind::Exclusive));
    let (nd, td) = queued(&h.lock(d, "/r", LockKind::Exclusive));
    let e = h.expire(vec![c]);
    assert!(e.lock_events.is_empty());
    assert_eq!(e.locks_abandoned, 0, "a waiter abandons nothing");
    assert!(!h.node_exists(&nc));
    assert_eq!(h.m.next_lock_delay_end(), None);
    let u = h.apply(EntryBody::CloseSession { session_id: b });
    assert_eq!(grants(&u), vec![(d, nd, td, u.zxid)]);
}

#[test]
fn next_lock_delay_end_is_the_earliest_running_delay() {
    let mut h = H::new();
    let s: Vec<u64> = (0..4).map(|_| h.open()).collect();
    for (lock, delay, holder, waiter) in [("/p", 3_000, s[0], s[1]), ("/q", 1_000, s[2], s[3])] {
        let mut r = req(lock, LockKind::Exclusive);
        r.lock_delay_ms = delay;
        locked(&h.lock_with(holder, r));
        queued(&h.lock(waiter, lock, LockKind::Exclusive));
    }
    assert_eq!(h.m.next_lock_delay_end(), None);
    let t = h.now;
    h.expire(vec![s[0], s[2]]);
    assert_eq!(h.m.next_lock_delay_end(), Some(t + 1_000));
    h.now = t + 1_000;
    h.noop();
    assert_eq!(h.m.next_lock_delay_end(), Some(t + 3_000));
    assert_eq!(h.holders("/q").len(), 1);
    assert!(h.holders("/p").is_empty());
    h.now = t + 5_000;
    h.noop();
    assert_eq!(h.m.next_lock_delay_end(), None);
    assert_eq!(h.holders("/p").len(), 1);
}

// ----- CheckLock -----

#[test]
fn check_lock_in_a_multi_guards_writes_by_fencing_token() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let setup = h.write(
        a,
        Op::Create(CreateRequest {
            path: "/data".into(),
            data: Vec::new(),
            mode: CreateMode::Persistent,
            make_parents: false,
        }),
    );
    assert!(matches!(setup.result, Some(Ok(_))));
    let (na, ta) = locked(&h.lock(a, "/g", LockKind::Exclusive));
    let (_, tb) = queued(&h.lock(b, "/g", LockKind::Exclusive));
    let guarded = |token: u64, data: &[u8]| {
        Op::Multi(vec![
            MultiOp::CheckLock {
                lock: "/g".into(),
                token,
            },
            MultiOp::SetData {
                path: "/data".into(),
                data: data.to_vec(),
                version: None,
            },
            MultiOp::Create(CreateRequest {
                path: "/data/w-".into(),
                data: Vec::new(),
                mode: CreateMode::PersistentSequential,
                make_parents: false,
            }),
        ])
    };
    let ok = h.write(a, guarded(ta, b"a"));
    match &ok.result {
        Some(Ok(OpResult::Multi(results))) => {
            assert_eq!(results[0], MultiResult::LockChecked);
            assert_eq!(results.len(), 3);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.m.get_data("/data").expect("exists").0, b"a".to_vec());

    // A waiter's token does not hold the lock.
    let tree = h.m.tree_hash();
    let e = h.write(b, guarded(tb, b"b"));
    assert_eq!(code(&e), ErrorCode::LockNotHeld);
    assert_eq!(h.m.tree_hash(), tree);

    // After the release, the former holder's guarded write fails as a whole, even when
    // the check comes last.
    h.unlock(a, &na);
    let tree = h.m.tree_hash();
    let late = Op::Multi(vec![
        MultiOp::SetData {
            path: "/data".into(),
            data: b"stale".to_vec(),
            version: None,
        },
        MultiOp::CheckLock {
            lock: "/g".into(),
            token: ta,
        },
    ]);
    let e = h.write(a, late);
    match &e.result {
        Some(Err(err)) => {
            assert_eq!((err.code, err.op_index), (ErrorCode::LockNotHeld, Some(1)));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.changes.is_empty());
    assert_eq!(h.m.tree_hash(), tree);
    assert_eq!(h.m.get_data("/data").expect("exists").0, b"a".to_vec());
    assert_eq!(h.m.get_children("/data").expect("exists").0.len(), 1);
    // The new holder's token passes.
    assert!(matches!(
        h.write(b, guarded(tb, b"b")).result,
        Some(Ok(OpResult::Multi(_)))
    ));
    // Not a lock, or a bad path.
    assert_eq!(
        code(&h.write(
            b,
            Op::Multi(vec![MultiOp::CheckLock {
                lock: "/data".into(),
                token: tb,
            }])
        )),
        ErrorCode::LockNotHeld
    );
    assert_eq!(
        code(&h.write(
            b,
            Op::Multi(vec![MultiOp::CheckLock {
                lock: "g".into(),
                token: tb,
            }])
        )),
        ErrorCode::InvalidPath
    );
}

#[test]
fn check_lock_sees_a_release_earlier_in_the_same_multi() {
    let mut h = H::new();
    let a = h.open();
    let (na, ta) = locked(&h.lock(a, "/m", LockKind::Exclusive));
    let tree = h.m.tree_hash();
    let e = h.write(
        a,
        Op::Multi(vec![
            MultiOp::Delete {
                path: na.clone(),
                version: None,
            },
            MultiOp::CheckLock {
                lock: "/m".into(),
                token: ta,
            },
        ]),
    );
    assert_eq!(code(&e), ErrorCode::LockNotHeld);
    assert_eq!(h.m.tree_hash(), tree);
    assert_eq!(h.holders("/m"), vec![na]);
}

// ----- the lifetime of a lock -----

#[test]
fn the_lock_directory_goes_with_its_last_queue_node_and_its_state_is_forgotten() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let (na, _) = locked(&h.lock(a, "/deep/er/lk", LockKind::Exclusive));
    for p in ["/deep", "/deep/er", "/deep/er/lk"] {
        assert!(h.m.tree().get(p).expect(p).container, "{p} is a container");
    }
    let (nb, _) = queued(&h.lock(b, "/deep/er/lk", LockKind::Exclusive));
    h.unlock(a, &na);
    assert!(h.node_exists("/deep/er/lk"));
    let u = h.unlock(b, &nb);
    for p in ["/deep/er/lk", "/deep/er", "/deep"] {
        assert!(!h.node_exists(p), "{p} was reaped");
        assert!(u.changes.contains(&Change {
            path: p.to_string(),
            kind: EventKind::NodeDeleted
        }));
    }
    assert!(h.m.locks_under("/").expect("valid").is_empty());
    assert!(h.m.locks.is_empty());
    // A new lock of another family on the same path, with a fresh counter.
    let (r, _) = locked(&h.lock(a, "/deep/er/lk", LockKind::Read));
    assert_eq!(r, "/deep/er/lk/r-0000000000");
    let (r2, _) = locked(&h.lock(b, "/deep/er/lk", LockKind::Read));
    assert_eq!(r2, "/deep/er/lk/r-0000000001");

    // Session ends reap it too.
    let e = h.expire(vec![a, b]);
    assert!(e.lock_events.is_empty());
    assert!(!h.node_exists("/deep"));
    assert!(h.m.locks.is_empty());
}

#[test]
fn a_lock_on_an_existing_persistent_node_keeps_its_state() {
    let mut h = H::new();
    let a = h.open();
    h.write(
        a,
        Op::Create(CreateRequest {
            path: "/p".into(),
            data: Vec::new(),
            mode: CreateMode::Persistent,
            make_parents: false,
        }),
    );
    let (n, _) = locked(&h.lock(a, "/p", LockKind::Exclusive));
    h.unlock(a, &n);
    assert!(h.node_exists("/p"));
    assert_eq!(h.m.locks_under("/p").expect("valid").len(), 1);
    assert_eq!(
        code(&h.lock(a, "/p", LockKind::Read)),
        ErrorCode::BadArguments
    );
    // Deleting the directory forgets the lock.
    let d = h.write(
        a,
        Op::Delete {
            path: "/p".into(),
            version: None,
        },
    );
    assert_eq!(d.result, Some(Ok(OpResult::Deleted)));
    assert!(h.m.locks.is_empty());
}

#[test]
fn locks_under_describes_the_locks_at_and_below_a_path() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let lease = h.grant_lease(b, 4_000);
    let mut l1 = req("/x/l1", LockKind::Exclusive);
    l1.lock_delay_ms = 250;
    let (n1, t1) = locked(&h.lock_with(a, l1));
    let mut l1b = req("/x/l1", LockKind::Exclusive);
    l1b.lease = Some(lease);
    let (n1b, t1b) = queued(&h.lock_with(b, l1b));
    let (n2, t2) = locked(&h.lock(b, "/x/l2", sem(2)));
    let (ny, _) = locked(&h.lock(a, "/xy", LockKind::Write));
    // Sorts between "/x" and "/x/...": not below /x either.
    locked(&h.lock(a, "/x-y", LockKind::Exclusive));

    let under_x = h.m.locks_under("/x").expect("valid");
    assert_eq!(
        under_x,
        vec![
            LockState {
                lock: "/x/l1".into(),
                lock_delay_ms: 250,
                delayed_until_ms: 0,
                queue: vec![
                    LockEntry {
                        node: n1,
                        kind: LockKind::Exclusive,
                        session: a,
                        lease: a,
                        token: t1,
                        granted: true,
                    },
                    LockEntry {
                        node: n1b,
                        kind: LockKind::Exclusive,
                        session: b,
                        lease,
                        token: t1b,
                        granted: false,
                    },
                ],
            },
            LockState {
                lock: "/x/l2".into(),
                lock_delay_ms: 0,
                delayed_until_ms: 0,
                queue: vec![LockEntry {
                    node: n2,
                    kind: sem(2),
                    session: b,
                    lease: b,
                    token: t2,
                    granted: true,
                }],
            },
        ],
        "/xy and /x-y are not below /x"
    );
    let all: Vec<String> =
        h.m.locks_under("/")
            .expect("valid")
            .into_iter()
            .map(|s| s.lock)
            .collect();
    assert_eq!(all, vec!["/x-y", "/x/l1", "/x/l2", "/xy"]);
    assert_eq!(h.m.locks_under("/x-y").expect("valid").len(), 1);
    assert_eq!(h.m.locks_under("/x/l2").expect("valid").len(), 1);
    assert_eq!(h.queue("/xy")[0].node, ny);
    assert!(h.m.locks_under("/nothing/here").expect("valid").is_empty());
    assert_eq!(
        h.m.locks_under("x").expect_err("invalid").code,
        ErrorCode::InvalidPath
    );
}

/// `GetLocksPage`: paging through the locks at and below a path lists exactly what
/// `GetLocks` describes, in order, whatever the page's lock and byte limits; each page
/// keeps to both limits but holds at least one lock while any remain.
#[test]
fn locks_pages_list_what_locks_under_describes_within_their_limits() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let names = [
        "/x", "/x-y", "/xy", "/x0", "/y/1", "/y/2/a", "/y/2/b", "/y-1", "/y0", "/z",
    ];
    // "/x" is a lock, so nothing below it is: the rest are beside it.
    for name in names {
        locked(&h.lock(a, name, LockKind::Exclusive));
        queued(&h.lock(b, name, LockKind::Exclusive));
    }
    let one = h.m.locks_under("/y/1").expect("valid").remove(0);
    let one_lock = one.encoded_bytes_bound();
    for path in ["/", "/x", "/y", "/y/2", "/y/2/a", "/nothing"] {
        let whole = h.m.locks_under(path).expect("valid");
        for (max_locks, max_bytes) in [
            (usize::MAX, usize::MAX),
            (1, usize::MAX),
            (3, usize::MAX),
            (usize::MAX, 0),
            (usize::MAX, 2 * one_lock + 1),
            (2, 3 * one_lock),
        ] {
            let mut listed = Vec::new();
            let mut after = String::new();
            loop {
                let (page, more) =
                    h.m.locks_page(path, &after, max_locks, max_bytes)
                        .expect("valid");
                let bytes: usize = page.iter().map(LockState::encoded_bytes_bound).sum();
                assert!(
                    page.len() <= max_locks && (bytes <= max_bytes || page.len() == 1),
                    "{path} ({max_locks}, {max_bytes}): {} locks, {bytes} bytes",
                    page.len()
                );
                assert!(
                    !page.is_empty() || !more,
                    "{path}: an empty page before the end"
                );
                if let Some(last) = page.last() {
                    after = last.lock.clone();
                }
                listed.extend(page);
                if !more {
                    break;
                }
            }
            assert_eq!(listed, whole, "{path} ({max_locks}, {max_bytes})");
        }
    }
    // A page that starts after a name that is no lock, or past the end.
    let names_of =
        |page: Vec<LockState>| -> Vec<String> { page.into_iter().map(|s| s.lock).collect() };
    let (page, more) = h.m.locks_page("/", "/y/0", 2, usize::MAX).expect("valid");
    assert_eq!(
        (names_of(page), more),
        (vec!["/y/1".into(), "/y/2/a".into()], true)
    );
    let (page, more) = h.m.locks_page("/y", "/zz", 2, usize::MAX).expect("valid");
    assert!(page.is_empty() && !more);
    assert_eq!(
        h.m.locks_page("y", "", 1, 1).expect_err("invalid").code,
        ErrorCode::InvalidPath
    );
}

#[test]
fn a_retried_lock_is_not_queued_twice() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    locked(&h.lock(a, "/rt", LockKind::Exclusive));
    let first = h.lock(b, "/rt", LockKind::Exclusive);
    queued(&first);
    let xid = h.xids[&b];
    let retry = h.apply(EntryBody::Write {
        session_id: b,
        xid,
        op: Op::Lock(req("/rt", LockKind::Exclusive)),
    });
    assert_eq!(retry.result, first.result);
    assert!(retry.changes.is_empty());
    assert_eq!(h.queue("/rt").len(), 2);
}

#[test]
fn deleting_a_queue_node_releases_like_unlock_for_its_owner_only() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let (na, _) = locked(&h.lock(a, "/dl", LockKind::Exclusive));
    let (nb, tb) = queued(&h.lock(b, "/dl", LockKind::Exclusive));
    // Another session cannot take the lock from its holder with a plain delete.
    let d = h.write(
        b,
        Op::Delete {
            path: na.clone(),
            version: None,
        },
    );
    assert_eq!(code(&d), ErrorCode::NotLockOwner);
    // The owner can (a release, e.g. inside a multi).
    let d = h.write(
        a,
        Op::Delete {
            path: na,
            version: None,
        },
    );
    assert_eq!(d.result, Some(Ok(OpResult::Deleted)));
    assert_eq!(grants(&d), vec![(b, nb, tb, d.zxid)]);
}

// ----- bugs -----

#[test]
fn lock_delay_survives_the_expiry_of_the_last_queue_node() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let mut first = req("/only", LockKind::Exclusive);
    first.lock_delay_ms = 1_000;
    locked(&h.lock_with(a, first));
    let t = h.now;
    h.expire(vec![a]);
    assert_eq!(
        h.m.next_lock_delay_end(),
        Some(t + 1_000),
        "the delay runs although nobody waits"
    );
    // A request during the delay must wait: the paused former holder may still act.
    h.now = t + 10;
    let during = h.lock(b, "/only", LockKind::Exclusive);
    let (nb, tb) = queued(&during);
    h.now = t + 1_000;
    let n = h.noop();
    assert_eq!(grants(&n), vec![(b, nb, tb, n.zxid)]);
}

#[test]
fn a_lock_that_fails_leaves_nothing_behind() {
    let mut h = H::new();
    h.checked = false;
    let a = h.open();
    // Data over max_data_bytes is refused before it is proposed (`admit`).
    let mut big = req("/new/lock", LockKind::Exclusive);
    big.data = vec![0; 65]; // max_data_bytes is 64
    let refused = h.m.admit(&Op::Lock(big)).expect_err("over max_data_bytes");
    assert_eq!(refused.code, ErrorCode::DataTooLarge);
    let long = req(&format!("/new/{}", "k".repeat(1_017)), LockKind::Exclusive); // 1,022 bytes
    assert!(validate_path(&long.lock).is_ok());
    let tree = h.m.tree_hash();
    let applied = h.lock_with(a, long);
    assert_eq!(code(&applied), ErrorCode::InvalidPath);
    assert!(applied.changes.is_empty(), "{:?}", applied.changes);
    assert!(!h.node_exists("/new"));
    assert_eq!(h.m.tree_hash(), tree);
}

#[test]
fn a_queue_node_path_never_exceeds_the_path_limit() {
    let mut h = H::new();
    h.checked = false;
    let a = h.open();
    let lock = format!("/{}", "k".repeat(1_014)); // 1,015 bytes
    assert!(validate_path(&lock).is_ok());
    let applied = h.lock(a, &lock, LockKind::Exclusive);
    match &applied.result {
        Some(Ok(OpResult::Locked { node, .. })) => {
            assert!(validate_path(node).is_ok(), "{} bytes", node.len());
            assert!(released(&h.unlock(a, node)));
        }
        Some(Err(e)) => {
            assert_eq!(e.code, ErrorCode::InvalidPath);
            assert!(applied.changes.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        h.m.check_invariants().is_ok(),
        "{:?}",
        h.m.check_invariants()
    );
}

#[test]
fn a_revoked_lease_is_reported_as_ended() {
    let mut h = H::new();
    let a = h.open();
    let lease = h.grant_lease(a, 5_000);
    let r = h.write(a, Op::RevokeLease { lease_id: lease });
    assert!(released(&r));
    assert_eq!(r.ended_sessions, vec![lease]);
}

// ----- property test -----

/// The family of one of the three locks of a history, and its lock-delay.
#[derive(Debug, Clone, Copy)]
struct LockSpec {
    family: LockFamily,
    delay_ms: u64,
}

fn lock_spec() -> impl Strategy<Value = LockSpec> {
    (
        prop_oneof![
            Just(LockFamily::Exclusive),
            Just(LockFamily::ReadWrite),
            (1u32..4).prop_map(LockFamily::Semaphore),
        ],
        prop_oneof![Just(0u64), Just(700), Just(2_500)],
    )
        .prop_map(|(family, delay_ms)| LockSpec { family, delay_ms })
}

/// One step; sessions, leases and queue nodes are picked by index among the live ones.
#[derive(Debug, Clone)]
enum Step {
    Lock {
        session: usize,
        lock: usize,
        /// For read-write locks: write (true) or read.
        write: bool,
        try_only: bool,
        /// Use one of the session's leases, if it has one.
        lease: bool,
    },
    Unlock {
        session: usize,
        lock: usize,
        node: usize,
        /// `None`: by path (`Unlock`); `Some(right)`: a `Release` with the node's token,
        /// or with a token no node of that path has.
        token: Option<bool>,
    },
    Expire(Vec<usize>),
    Close(usize),
    Open,
    GrantLease(usize),
    ExpireLease(usize),
    RevokeLease(usize),
    Noop,
    /// A plain create of a node named like a queue node (prefix `kind` of
    /// `QUEUE_PREFIXES`) in a lock's path, or (`deep`) below such a name with
    /// `make_parents`: refused while the path is a lock, and it keeps the path from
    /// becoming one.
    Stray {
        session: usize,
        lock: usize,
        kind: usize,
        seq: u64,
        deep: bool,
    },
    /// A plain delete of a node that `Stray` made in a lock's path (the deepest first).
    Unstray {
        session: usize,
        lock: usize,
    },
}

const QUEUE_PREFIXES: [&str; 4] = ["x-", "r-", "w-", "s-"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0usize..4, 0usize..3, any::<bool>(), proptest::bool::weighted(0.2),
               proptest::bool::weighted(0.3))
            .prop_map(|(session, lock, write, try_only, lease)| Step::Lock {
                session, lock, write, try_only, lease
            }),
        6 => (0usize..4, 0usize..3, 0usize..8, proptest::option::of(any::<bool>()))
            .prop_map(|(session, lock, node, token)| Step::Unlock { session, lock, node, token }),
        1 => proptest::collection::vec(0usize..4, 1..3).prop_map(Step::Expire),
        1 => (0usize..4).prop_map(Step::Close),
        2 => Just(Step::Open),
        1 => (0usize..4).prop_map(Step::GrantLease),
        1 => (0usize..4).prop_map(Step::ExpireLease),
        1 => (0usize..4).prop_map(Step::RevokeLease),
        1 => Just(Step::Noop),
        1 => (0usize..4, 0usize..3, 0usize..4, 0u64..12, any::<bool>())
            .prop_map(|(session, lock, kind, seq, deep)| Step::Stray { session, lock, kind, seq, deep }),
        1 => (0usize..4, 0usize..3).prop_map(|(session, lock)| Step::Unstray { session, lock }),
    ]
}

const LOCKS: [&str; 3] = ["/locks/a", "/locks/b", "/c"];

/// Runs a history against `m`, checking the lock invariants after every step; returns
/// the entries applied.
fn run_history(
    specs: &[LockSpec; 3],
    steps: &[(Step, i64)],
    m: &mut StateMachine,
) -> Result<Vec<(u64, Entry)>, TestCaseError> {
    let mut entries = Vec::new();
    let mut xids: BTreeMap<u64, u64> = BTreeMap::new();
    let mut now = T0;
    // The token of the latest holder of each exclusive lock (by path, across re-creation:
    // tokens are zxids, so they keep increasing).
    let mut last_token: BTreeMap<&str, u64> = BTreeMap::new();
    let sessions = |m: &StateMachine| -> Vec<u64> {
        m.sessions()
            .filter(|s| s.lease_of == 0)
            .map(|s| s.id)
            .collect()
    };
    let leases = |m: &StateMachine| -> Vec<u64> {
        m.sessions()
            .filter(|s| s.lease_of != 0)
            .map(|s| s.id)
            .collect()
    };
    let pick = |ids: &[u64], i: usize| ids.get(i % ids.len().max(1)).copied().unwrap_or(424_242);
    // (lock, node, token) of every granted queue node.
    let granted_set = |m: &StateMachine| -> BTreeSet<(String, String, u64)> {
        m.locks
            .iter()
            .flat_map(|(lock, meta)| {
                meta.granted.iter().map(move |name| {
                    let node = corral_protocol::path::join(lock, name);
                    let token = m.tree.get(&node).map_or(0, |n| n.stat.czxid);
                    (lock.clone(), node, token)
                })
            })
            .collect()
    };
    let mut steps_with_opens: Vec<(Step, i64)> = vec![(Step::Open, 0); 4];
    steps_with_opens.extend(steps.iter().cloned());
    for (i, (step, dt)) in steps_with_opens.iter().enumerate() {
        now += dt;
        let zxid = m.last_zxid() + 1;
        let live = sessions(m);
        let body = match step.clone() {
            Step::Open => {
                if live.len() >= 4 {
                    EntryBody::Noop { barrier: 0 }
                } else {
                    EntryBody::OpenSession {
                        secret: zxid,
                        ttl_ms: 10_000,
                    }
                }
            }
            Step::Lock {
                session,
                lock,
                write,
                try_only,
                lease,
            } => {
                let session_id = pick(&live, session);
                let spec = specs[lock];
                let kind = match spec.family {
                    LockFamily::Exclusive => LockKind::Exclusive,
                    LockFamily::ReadWrite if write => LockKind::Write,
                    LockFamily::ReadWrite => LockKind::Read,
                    LockFamily::Semaphore(permits) => LockKind::Semaphore { permits },
                };
                let lease = if lease {
                    m.sessions()
                        .find(|s| s.lease_of == session_id)
                        .map(|s| s.id)
                } else {
                    None
                };
                let xid = xids.entry(session_id).or_insert(0);
                *xid += 1;
                EntryBody::Write {
                    session_id,
                    xid: *xid,
                    op: Op::Lock(LockRequest {
                        lock: LOCKS[lock].to_string(),
                        kind,
                        try_only,
                        lease,
                        lock_delay_ms: spec.delay_ms,
                        data: vec![lock as u8],
                    }),
                }
            }
            Step::Unlock {
                session,
                lock,
                node,
                token,
            } => {
                let session_id = pick(&live, session);
                let q: Vec<String> = m
                    .tree
                    .get(LOCKS[lock])
                    .map(|d| d.children.iter().cloned().collect())
                    .unwrap_or_default();
                let node = match q.get(node % q.len().max(1)) {
                    Some(name) => corral_protocol::path::join(LOCKS[lock], name),
                    None => format!("{}/x-0000000999", LOCKS[lock]),
                };
                let xid = xids.entry(session_id).or_insert(0);
                *xid += 1;
                let czxid = m.tree.get(&node).map_or(0, |n| n.stat.czxid);
                let op = match token {
                    None => Op::Unlock { node },
                    Some(right) => Op::Release {
                        node,
                        token: if right { czxid } else { czxid + 1 },
                    },
                };
                EntryBody::Write {
                    session_id,
                    xid: *xid,
                    op,
                }
            }
            Step::Expire(ss) => EntryBody::ExpireSessions {
                session_ids: ss.iter().map(|&s| pick(&live, s)).collect(),
            },
            Step::Close(s) => EntryBody::CloseSession {
                session_id: pick(&live, s),
            },
            Step::GrantLease(s) => {
                let session_id = pick(&live, s);
                let xid = xids.entry(session_id).or_insert(0);
                *xid += 1;
                EntryBody::Write {
                    session_id,
                    xid: *xid,
                    op: Op::GrantLease { ttl_ms: 3_000 },
                }
            }
            Step::ExpireLease(l) => EntryBody::ExpireSessions {
                session_ids: vec![pick(&leases(m), l)],
            },
            Step::RevokeLease(l) => {
                let lease_id = pick(&leases(m), l);
                let session_id = m
                    .session(lease_id)
                    .map_or_else(|| pick(&live, l), |s| s.lease_of);
                let xid = xids.entry(session_id).or_insert(0);
                *xid += 1;
                EntryBody::Write {
                    session_id,
                    xid: *xid,
                    op: Op::RevokeLease { lease_id },
                }
            }
            Step::Noop => EntryBody::Noop { barrier: 0 },
            Step::Stray {
                session,
                lock,
                kind,
                seq,
                deep,
            } => {
                let session_id = pick(&live, session);
                let name = format!("{}{seq:010}", QUEUE_PREFIXES[kind]);
                let mut path = corral_protocol::path::join(LOCKS[lock], &name);
                if deep {
                    path.push_str("/d");
                }
                let xid = xids.entry(session_id).or_insert(0);
                *xid += 1;
                EntryBody::Write {
                    session_id,
                    xid: *xid,
                    op: Op::Create(CreateRequest {
                        path,
                        data: Vec::new(),
                        mode: CreateMode::Persistent,
                        make_parents: true,
                    }),
                }
            }
            Step::Unstray { session, lock } => {
                let session_id = pick(&live, session);
                // A persistent child of the lock's path, or its child `d` first.
                let stray = m.tree.get(LOCKS[lock]).and_then(|dir| {
                    dir.children.iter().find_map(|name| {
                        let path = corral_protocol::path::join(LOCKS[lock], name);
                        let node = m.tree.get(&path)?;
                        (node.stat.ephemeral_owner == 0).then(|| {
                            if node.children.is_empty() {
                                path
                            } else {
                                corral_protocol::path::join(&path, "d")
                            }
                        })
                    })
                });
                let xid = xids.entry(session_id).or_insert(0);
                *xid += 1;
                EntryBody::Write {
                    session_id,
                    xid: *xid,
                    op: Op::Delete {
                        path: stray.unwrap_or_else(|| format!("{}/x-0000000999", LOCKS[lock])),
                        version: None,
                    },
                }
            }
        };
        let entry = Entry::new(now, body);
        let before = granted_set(m);
        let tree_before = m.tree_hash();
        // A lock-delay ending with this entry may reap a directory kept for it, whatever
        // the entry itself does.
        let delay_ends = m.next_lock_delay_end().is_some_and(|end| end <= now);
        // For an Unlock or a Release: whose node it names, before it goes.
        let unlock_owner = match &*entry.body {
            EntryBody::Write {
                op: Op::Unlock { node },
                ..
            } => m
                .tree
                .get(node)
                .map(|n| owner_session(&m.sessions, n.stat.ephemeral_owner)),
            EntryBody::Write {
                op: Op::Release { node, token },
                ..
            } => m
                .tree
                .get(node)
                .filter(|n| n.stat.czxid == *token)
                .map(|n| owner_session(&m.sessions, n.stat.ephemeral_owner)),
            _ => None,
        };
        let applied = m.apply(zxid, &entry);
        let ctx = || format!("step {i} {step:?} at {now}");
        if let Err(e) = m.check_invariants() {
            return Err(TestCaseError::fail(format!("{}: {e}", ctx())));
        }
        if let Err(e) = check_locks(m, now) {
            return Err(TestCaseError::fail(format!("{}: {e}", ctx())));
        }
        let after = granted_set(m);
        // Held nodes that went in an expiry are counted as abandoned; nothing else is.
        let abandoned = match *entry.body {
            EntryBody::ExpireSessions { .. } => before
                .difference(&after)
                .filter(|(_, node, _)| m.tree.get(node).is_none())
                .count(),
            _ => 0,
        };
        prop_assert_eq!(applied.locks_abandoned as usize, abandoned, "{}", ctx());

        // The answer agrees with the state.
        let mut answered_locked = None;
        if let EntryBody::Write { session_id, op, .. } = &*entry.body {
            let result = applied.result.clone().expect("a write has a result");
            if result.is_err() && !delay_ends {
                prop_assert!(applied.changes.is_empty(), "{}", ctx());
                prop_assert_eq!(m.tree_hash(), tree_before, "{}", ctx());
            }
            match (op, &result) {
                (Op::Lock(r), Ok(OpResult::Locked { node, token })) => {
                    prop_assert!(
                        after.contains(&(r.lock.clone(), node.clone(), *token)),
                        "{}",
                        ctx()
                    );
                    prop_assert_eq!(*token, zxid);
                    answered_locked = Some(node.clone());
                }
                (Op::Lock(r), Ok(OpResult::Queued { node, token })) => {
                    prop_assert!(!r.try_only, "{}: a try queued", ctx());
                    prop_assert!(
                        !after.contains(&(r.lock.clone(), node.clone(), *token)),
                        "{}",
                        ctx()
                    );
                    prop_assert_eq!(*token, zxid);
                }
                (Op::Lock(r), Err(e)) if e.code == ErrorCode::Deadlock => {
                    prop_assert!(!r.try_only, "{}: a try refused as a deadlock", ctx());
                    let checked = check_cycle(m, *session_id, &r.lock, &e.message);
                    prop_assert!(checked.is_ok(), "{}: {:?}", ctx(), checked);
                }
                (Op::Lock(r), Err(e)) if e.code == ErrorCode::BadArguments => {
                    // Only a path that is no lock yet and holds a stray.
                    let stray = m.tree.get(&r.lock).is_some_and(|dir| {
                        !m.locks.contains_key(&r.lock) && locks::first_queue_name(dir).is_some()
                    });
                    prop_assert!(stray, "{}: {e}", ctx());
                }
                (Op::Create(c), Ok(OpResult::Created { .. })) => {
                    let lock = LOCKS.iter().find(|l| c.path.starts_with(*l)).copied();
                    prop_assert!(
                        lock.is_some_and(|l| !m.locks.contains_key(l)),
                        "{}: a node created in a lock",
                        ctx()
                    );
                }
                (Op::Create(c), Err(e)) => {
                    let lock = LOCKS.iter().find(|l| c.path.starts_with(*l)).copied();
                    let ok = match e.code {
                        ErrorCode::BadArguments => {
                            delay_ends || lock.is_some_and(|l| m.locks.contains_key(l))
                        }
                        ErrorCode::NodeExists
                        | ErrorCode::NoChildrenForEphemerals
                        | ErrorCode::SessionExpired => true,
                        _ => false,
                    };
                    prop_assert!(ok, "{}: {e}", ctx());
                }
                (Op::Delete { .. }, Ok(OpResult::Deleted)) => {}
                (Op::Delete { .. }, Err(e)) => {
                    prop_assert!(
                        matches!(e.code, ErrorCode::NoNode | ErrorCode::SessionExpired),
                        "{}: {e}",
                        ctx()
                    );
                }
                (Op::Lock(r), Err(e)) => {
                    let expected = if m.session(*session_id).is_none() {
                        ErrorCode::SessionExpired
                    } else {
                        ErrorCode::LockHeld
                    };
                    prop_assert_eq!(e.code, expected, "{}: {:?}", ctx(), r);
                }
                (Op::Unlock { .. } | Op::Release { .. }, Ok(OpResult::Unlocked { released })) => {
                    prop_assert_eq!(*released, unlock_owner.is_some(), "{}", ctx());
                    prop_assert!(
                        unlock_owner.is_none() || unlock_owner == Some(*session_id),
                        "{}",
                        ctx()
                    );
                }
                (Op::Unlock { node } | Op::Release { node, .. }, Err(e))
                    if e.code == ErrorCode::BadArguments =>
                {
                    // A stray, in a path that is no lock.
                    let dir = corral_protocol::path::parent(node).unwrap_or("/");
                    prop_assert!(!m.locks.contains_key(dir), "{}: {e}", ctx());
                }
                (Op::Unlock { .. } | Op::Release { .. }, Err(e)) => {
                    let expected = if m.session(*session_id).is_none() {
                        ErrorCode::SessionExpired
                    } else {
                        ErrorCode::NotLockOwner
                    };
                    prop_assert_eq!(e.code, expected, "{}", ctx());
                    if expected == ErrorCode::NotLockOwner {
                        prop_assert!(unlock_owner.is_some_and(|o| o != *session_id));
                    }
                }
                (Op::GrantLease { .. }, Ok(OpResult::Lease { lease_id, .. })) => {
                    prop_assert_eq!(*lease_id, zxid);
                }
                (Op::RevokeLease { .. }, Ok(OpResult::Unlocked { released: true })) => {}
                (Op::GrantLease { .. } | Op::RevokeLease { .. }, Err(e)) => {
                    prop_assert!(
                        matches!(e.code, ErrorCode::SessionExpired | ErrorCode::NoLease),
                        "{}: {e}",
                        ctx()
                    );
                }
                (op, result) => {
                    return Err(TestCaseError::fail(format!(
                        "{}: {op:?} answered {result:?}",
                        ctx()
                    )))
                }
            }
        }

        // Every new holder is told, once, unless its own answer said Locked; nobody else
        // is told of a grant.
        let mut told: Vec<(String, String, u64)> = Vec::new();
        for change in &applied.lock_events {
            let ev = &change.event;
            prop_assert_eq!(ev.zxid, zxid);
            let key = (ev.lock.clone(), ev.node.clone(), ev.token);
            if change.granted {
                prop_assert!(after.contains(&key), "{}: grant of {:?}", ctx(), key);
                let owner = m.tree.get(&ev.node).map(|n| n.stat.ephemeral_owner);
                prop_assert_eq!(
                    Some(change.session),
                    owner.map(|o| owner_session(&m.sessions, o)),
                    "{}",
                    ctx()
                );
                told.push(key);
            } else {
                // Losses: only on a lease's expiry, for nodes that are gone.
                prop_assert!(
                    matches!(*entry.body, EntryBody::ExpireSessions { .. }),
                    "{}",
                    ctx()
                );
                prop_assert!(m.tree.get(&ev.node).is_none(), "{}", ctx());
                prop_assert!(m.session(change.session).is_some(), "{}", ctx());
            }
        }
        let mut newly: Vec<(String, String, u64)> = after
            .difference(&before)
            .filter(|(_, node, _)| Some(node) != answered_locked.as_ref())
            .cloned()
            .collect();
        newly.sort();
        told.sort();
        prop_assert_eq!(told, newly, "{}", ctx());

        // Fencing tokens of successive holders of an exclusive lock strictly increase.
        for (l, spec) in LOCKS.iter().zip(specs) {
            if spec.family != LockFamily::Exclusive {
                continue;
            }
            let holder = after.iter().find(|(lock, _, _)| lock.as_str() == *l);
            if let Some((_, _, token)) = holder {
                let last = last_token.entry(*l).or_insert(0);
                if *token != *last {
                    prop_assert!(*token > *last, "{}: token {} after {}", ctx(), token, last);
                    *last = *token;
                }
            }
        }
        entries.push((zxid, entry));
    }
    Ok(entries)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_lock_histories_keep_the_lock_invariants(
        specs in (lock_spec(), lock_spec(), lock_spec()),
        steps in proptest::collection::vec((step(), 0i64..1_200), 1..80),
    ) {
        let specs = [specs.0, specs.1, specs.2];
        let limits = MachineLimits { max_data_bytes: 64, dedup_window: 8 };
        let mut a = StateMachine::new(limits);
        let entries = run_history(&specs, &steps, &mut a)?;
        let mut b = StateMachine::new(limits);
        for (zxid, entry) in &entries {
            b.apply(*zxid, entry);
        }
        prop_assert_eq!(a.state_hash(), b.state_hash());
        prop_assert_eq!(&a.locks, &b.locks);
        // A snapshot carries the lock state.
        let bytes = bincode::serde::encode_to_vec(&a, bincode::config::standard())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (c, _): (StateMachine, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(c.state_hash(), a.state_hash());
        prop_assert_eq!(&c.locks, &a.locks);
        prop_assert_eq!(c.next_lock_delay_end(), a.next_lock_delay_end());
        prop_assert_eq!(
            a.locks_under("/").map_err(|e| TestCaseError::fail(e.to_string()))?,
            b.locks_under("/").map_err(|e| TestCaseError::fail(e.to_string()))?
        );
    }
}

#[path = "machine_deadlock_tests.rs"]
mod deadlock_tests;

/// Entries by zxid, in order.
type History = Vec<(u64, Entry)>;

/// The entries of a random lock history, `cut` (clamped to their number), and a machine
/// that applied the entries before `cut`.
fn history_cut_at(
    specs: &[LockSpec; 3],
    steps: &[(Step, i64)],
    cut: usize,
) -> Result<(History, usize, StateMachine), TestCaseError> {
    let limits = MachineLimits {
        max_data_bytes: 64,
        dedup_window: 8,
    };
    let entries = run_history(specs, steps, &mut StateMachine::new(limits))?;
    let cut = cut.min(entries.len());
    let mut live = StateMachine::new(limits);
    for (zxid, entry) in &entries[..cut] {
        live.apply(*zxid, entry);
    }
    Ok((entries, cut, live))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A node that installs a snapshot taken at any zxid of a lock history and applies
    /// the rest of the log behaves exactly like a node that applied everything: same
    /// answers, same grant and loss events, same tree changes, same state.
    #[test]
    fn a_machine_restored_from_a_snapshot_applies_like_the_live_one(
        specs in (lock_spec(), lock_spec(), lock_spec()),
        steps in proptest::collection::vec((step(), 0i64..1_200), 1..80),
        cut in 0usize..80,
    ) {
        let (entries, cut, mut live) = history_cut_at(&[specs.0, specs.1, specs.2], &steps, cut)?;
        let bytes = bincode::serde::encode_to_vec(&live, bincode::config::standard())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (mut installed, _): (StateMachine, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(installed.state_hash(), live.state_hash());
        for (zxid, entry) in &entries[cut..] {
            let want = live.apply(*zxid, entry);
            let got = installed.apply(*zxid, entry);
            prop_assert_eq!(&got, &want, "zxid {} after a snapshot at {}", zxid, cut);
            prop_assert_eq!(installed.state_hash(), live.state_hash(), "zxid {}", zxid);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A node that skips the entries after `cut` by installing a snapshot tells its
    /// clients (`lock_catch_up`) of exactly the grants those entries made that still
    /// stand, and of every loss they reported to a session that lives on.
    #[test]
    fn lock_catch_up_reports_what_the_skipped_entries_did(
        specs in (lock_spec(), lock_spec(), lock_spec()),
        steps in proptest::collection::vec((step(), 0i64..1_200), 1..80),
        cut in 0usize..80,
    ) {
        let (entries, cut, mut live) = history_cut_at(&[specs.0, specs.1, specs.2], &steps, cut)?;
        let old = live.clone();
        // (session, node, token) of the grants (events and `Locked` answers) and of the
        // loss events of the skipped entries.
        let mut granted: BTreeSet<(u64, String, u64)> = BTreeSet::new();
        let mut lost: BTreeSet<(u64, String, u64)> = BTreeSet::new();
        // The answers of the skipped writes, as a node answers them after the install.
        let mut answered: Vec<(u64, OpResult)> = Vec::new();
        for (zxid, entry) in &entries[cut..] {
            let applied = live.apply(*zxid, entry);
            for c in &applied.lock_events {
                let key = (c.session, c.event.node.clone(), c.event.token);
                if c.granted { granted.insert(key); } else { lost.insert(key); }
            }
            if let (EntryBody::Write { session_id, .. }, Some(Ok(result))) = (&*entry.body, &applied.result) {
                if let OpResult::Locked { node, token } = result {
                    granted.insert((*session_id, node.clone(), *token));
                }
                answered.push((*session_id, result.clone()));
            }
        }
        let held = |m: &StateMachine| -> BTreeSet<(String, u64)> {
            m.locks
                .iter()
                .flat_map(|(lock, meta)| meta.granted.iter().map(move |name| corral_protocol::path::join(lock, name)))
                .filter_map(|node| Some((node.clone(), m.tree.get(&node)?.stat.czxid)))
                .collect()
        };
        let (held_before, held_after) = (held(&old), held(&live));
        let zxid = live.last_zxid();
        let caught = old.lock_catch_up(&live, &answered);
        for c in &caught {
            prop_assert_eq!(c.event.zxid, zxid);
        }
        let caught_grants: BTreeSet<(u64, String, u64)> = caught
            .iter()
            .filter(|c| c.granted)
            .map(|c| (c.session, c.event.node.clone(), c.event.token))
            .collect();
        let standing: BTreeSet<(u64, String, u64)> = granted
            .into_iter()
            .filter(|(_, node, token)| {
                let key = (node.clone(), *token);
                held_after.contains(&key) && !held_before.contains(&key)
            })
            .collect();
        prop_assert_eq!(caught_grants, standing, "cut at {}", cut);
        let caught_losses: BTreeSet<(u64, String, u64)> = caught
            .iter()
            .filter(|c| !c.granted)
            .map(|c| (c.session, c.event.node.clone(), c.event.token))
            .collect();
        for loss in lost.iter().filter(|(s, _, _)| live.session(*s).is_some()) {
            prop_assert!(caught_losses.contains(loss), "cut at {}: {:?} missed", cut, loss);
        }
        for (session, node, token) in &caught_losses {
            prop_assert!(live.session(*session).is_some());
            prop_assert!(live.tree.get(node).is_none_or(|n| n.stat.czxid != *token));
        }
    }
}

/// The cost of a handoff on a lock with a long queue: the holder releases and the next
/// waiter is granted (one entry), then the released session queues again at the tail
/// (one entry), with `n` waiters. Run with
/// `cargo test -p corral-server --release --lib handoff_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release with --nocapture"]
fn handoff_cost_with_long_queues() {
    use std::time::Instant;
    for (family, kind) in [
        ("exclusive", LockKind::Exclusive),
        ("write", LockKind::Write),
        ("read-write mix", LockKind::Read),
        ("semaphore(4)", LockKind::Semaphore { permits: 4 }),
    ] {
        for n in [256usize, 10_000] {
            let mut h = H::new();
            h.checked = false;
            let sessions: Vec<u64> = (0..n).map(|_| h.open()).collect();
            // Every third node of the mix is a write, the others reads.
            let kind_of = |i: usize| match kind {
                LockKind::Read if i.is_multiple_of(3) => LockKind::Write,
                k => k,
            };
            let mut nodes: std::collections::VecDeque<(u64, String, LockKind)> = sessions
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let k = kind_of(i);
                    let node = match &h.lock(s, "/q", k).result {
                        Some(Ok(OpResult::Locked { node, .. } | OpResult::Queued { node, .. })) => {
                            node.clone()
                        }
                        other => panic!("expected a queue node, got {other:?}"),
                    };
                    (s, node, k)
                })
                .collect();
            let cycles = if n > 1_000 { 200 } else { 2_000 };
            let started = Instant::now();
            for _ in 0..cycles {
                let (s, node, k) = nodes.pop_front().expect("a queue node");
                assert!(released(&h.unlock(s, &node)));
                let node = match &h.lock(s, "/q", k).result {
                    Some(Ok(OpResult::Queued { node, .. } | OpResult::Locked { node, .. })) => {
                        node.clone()
                    }
                    other => panic!("expected a queue node, got {other:?}"),
                };
                nodes.push_back((s, node, k));
            }
            let per = started.elapsed() / cycles;
            println!("{family}, {n} waiters: release + requeue {per:?} per cycle");
        }
    }
}

/// The cost of an entry that touches no lock while many locks are held. Run with
/// `cargo test -p corral-server --release --lib held_locks_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release with --nocapture"]
fn held_locks_cost() {
    use std::time::Instant;
    for n in [100usize, 10_000, 100_000] {
        let mut h = H::new();
        h.checked = false;
        let s = h.open();
        for i in 0..n {
            locked(&h.lock(s, &format!("/held/{i}"), LockKind::Exclusive));
        }
        h.write(
            s,
            Op::Create(CreateRequest {
                path: "/k".to_string(),
                data: Vec::new(),
                mode: CreateMode::Persistent,
                make_parents: false,
            }),
        );
        let entries = 20_000u32;
        let started = Instant::now();
        for _ in 0..entries {
            h.write(
                s,
                Op::SetData {
                    path: "/k".to_string(),
                    data: b"v".to_vec(),
                    version: None,
                },
            );
        }
        let per = started.elapsed() / entries;
        println!("{n} locks held: a plain write applies in {per:?}");
    }
}

/// The cost of opening and closing a session while many others are open. Run with
/// `cargo test -p corral-server --release --lib open_sessions_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release with --nocapture"]
fn open_sessions_cost() {
    use std::time::Instant;
    for n in [100usize, 10_000, 100_000] {
        let mut h = H::new();
        h.checked = false;
        for _ in 0..n {
            h.open();
        }
        let cycles = 5_000u32;
        let started = Instant::now();
        for _ in 0..cycles {
            let s = h.open();
            let closed = h.apply(EntryBody::CloseSession { session_id: s });
            assert_eq!(closed.result, Some(Ok(OpResult::Closed)));
        }
        let per = started.elapsed() / cycles;
        println!("{n} sessions open: opening and closing one more takes {per:?}");
    }
}

/// What applying the benchmark's lock cycles costs: 64 sessions acquiring and releasing
/// locks drawn from 1,000 names (`corral-bench --clients 64 --locks 1000`), with the
/// default limits (a deduplication window of 1,024). Run with
/// `cargo test -p corral-server --release --lib lock_cycle_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release with --nocapture"]
fn lock_cycle_cost() {
    use std::time::Instant;
    let mut h = H::new();
    h.m = StateMachine::new(MachineLimits::default());
    h.checked = false;
    let sessions: Vec<u64> = (0..64).map(|_| h.open()).collect();
    // A fixed xorshift sequence of lock names; a name two sessions draw at once queues the
    // second, as in the benchmark.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut draw = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 1_000
    };
    let mut cycle = |h: &mut H, rounds: u32| {
        for _ in 0..rounds {
            let mut held = Vec::with_capacity(sessions.len());
            for &s in &sessions {
                let lock = format!("/bench/lock-{}", draw());
                let node = match h.lock(s, &lock, LockKind::Exclusive).result {
                    Some(Ok(
                        OpResult::Locked { node, token } | OpResult::Queued { node, token },
                    )) => (node, token),
                    other => panic!("expected a queue node, got {other:?}"),
                };
                held.push((s, node));
            }
            for (s, (node, token)) in held {
                h.release(s, &node, token);
            }
        }
    };
    cycle(&mut h, 200);
    for _ in 0..3 {
        let rounds = 2_000u32;
        let started = Instant::now();
        cycle(&mut h, rounds);
        let per = started.elapsed() / (rounds * 64);
        println!("64 sessions over 1,000 locks: acquire + release applies in {per:?}");
    }
}

/// What a snapshot of a large state costs: taking its image (on the core), cloning the
/// whole machine (derived indexes included), and encoding it (on a thread of its own).
/// Run with
/// `cargo test -p corral-server --release --lib snapshot_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release with --nocapture"]
fn snapshot_cost() {
    use std::time::Instant;
    let mut h = H::new();
    h.checked = false;
    let s = h.open();
    for i in 0..100_000 {
        locked(&h.lock(s, &format!("/held/{i}"), LockKind::Exclusive));
    }
    for _ in 0..3 {
        let t = Instant::now();
        let taken = h.m.image();
        let imaged = t.elapsed();
        drop(taken);
        let t = Instant::now();
        let copy = h.m.clone();
        let cloned = t.elapsed();
        let t = Instant::now();
        let image =
            crate::replication::storage::MachineSnapshot::from_machine(&h.m).expect("encodes");
        let encoded = t.elapsed();
        let t = Instant::now();
        drop(copy);
        let dropped = t.elapsed();
        let bytes = image.image().map_or(0, <[u8]>::len);
        // What a follower installing it does on its core: decode, then free its old state.
        let t = Instant::now();
        let decoded = image.into_machine(h.m.limits()).expect("decodes");
        let decode = t.elapsed();
        let t = Instant::now();
        drop(decoded);
        let freed = t.elapsed();
        println!(
            "100,000 locks held, {bytes} bytes: image {imaged:?}, clone {cloned:?}, drop {dropped:?}, encode {encoded:?}, decode {decode:?}, free a decoded machine {freed:?}"
        );
    }
}

/// A retried `Lock` whose first answer was `Queued` is answered `Locked` once its node is
/// granted (its grant event went to a connection the client had lost), `Queued` while
/// it waits, and `LockNotHeld` once the node is gone; nothing is applied again either
/// way.
#[test]
fn a_retried_queued_lock_reports_a_grant_made_since() {
    let mut h = H::new();
    let (a, b) = (h.open(), h.open());
    let (na, ta) = locked(&h.lock(a, "/r", LockKind::Exclusive));
    let first = h.lock(b, "/r", LockKind::Exclusive);
    let (nb, tb) = queued(&first);
    let xid = h.xids[&b];
    let retry = |h: &mut H| {
        h.apply(EntryBody::Write {
            session_id: b,
            xid,
            op: Op::Lock(req("/r", LockKind::Exclusive)),
        })
    };
    let waiting = retry(&mut h);
    assert_eq!(
        waiting.result, first.result,
        "still queued: the first answer"
    );
    assert!(waiting.changes.is_empty());
    h.release(a, &na, ta);
    assert_eq!(h.holders("/r"), vec![nb.clone()]);
    let count = h.m.node_count();
    let after = retry(&mut h);
    assert_eq!(locked(&after), (nb.clone(), tb));
    assert!(after.changes.is_empty() && after.lock_events.is_empty());
    assert_eq!(h.m.node_count(), count, "no second queue node");
    assert_eq!(
        h.m.cached_result(b, xid),
        Some(Ok(OpResult::Locked {
            node: nb.clone(),
            token: tb
        }))
    );
    // Gone since (released): `LockNotHeld`, and no node created again.
    h.release(b, &nb, tb);
    let count = h.m.node_count();
    let gone = retry(&mut h);
    assert_eq!(code(&gone), ErrorCode::LockNotHeld, "{gone:?}");
    assert!(gone.changes.is_empty());
    assert_eq!(h.m.node_count(), count);
}

// ----- what a lock's directory may hold -----

fn create(path: &str, mode: CreateMode, make_parents: bool) -> Op {
    Op::Create(CreateRequest {
        path: path.into(),
        data: Vec::new(),
        mode,
        make_parents,
    })
}

/// A node that already has a child named like a queue node cannot become a lock: the
/// child would join the queue without being one (no session owns it, so it would hold
/// an exclusive lock for good, or a permit more than a semaphore has), and the wait-for
/// index kept entry by entry would not know it while one rebuilt from a snapshot would
/// (the shadow machine, reinstalled before every entry, would answer differently).
#[test]
fn a_node_with_a_child_named_like_a_queue_node_cannot_become_a_lock() {
    let mut h = H::new().with_shadow(1);
    let a = h.open();
    let b = h.open();
    h.write(b, create("/s", CreateMode::Persistent, false));
    let plain = h.write(b, create("/s/s-", CreateMode::PersistentSequential, false));
    assert!(
        matches!(&plain.result, Some(Ok(OpResult::Created { path, .. })) if path == "/s/s-0000000000"),
        "{plain:?}"
    );
    let tree = h.m.tree_hash();
    for kind in [sem(2), LockKind::Exclusive, LockKind::Read, LockKind::Write] {
        let refused = h.lock(a, "/s", kind);
        assert_eq!(code(&refused), ErrorCode::BadArguments, "{kind:?}");
        assert!(refused.changes.is_empty());
    }
    let many = h.write(
        a,
        Op::LockMany(MultiLockRequest {
            locks: vec![
                MultiLockItem {
                    lock: "/t".into(),
                    kind: LockKind::Exclusive,
                },
                MultiLockItem {
                    lock: "/s".into(),
                    kind: sem(2),
                },
            ],
            try_only: false,
            lease: None,
            lock_delay_ms: 0,
            data: Vec::new(),
        }),
    );
    assert_eq!(code(&many), ErrorCode::BadArguments);
    assert_eq!(
        h.m.tree_hash(),
        tree,
        "a refused request leaves nothing behind"
    );
    // Other children are no queue nodes and do not stop it; without the look-alike the
    // lock works, with both permits for lock requests.
    h.write(b, create("/s/config", CreateMode::Persistent, false));
    h.write(b, create("/s/x-notanumber", CreateMode::Persistent, false));
    h.write(
        b,
        Op::Delete {
            path: "/s/s-0000000000".into(),
            version: None,
        },
    );
    locked(&h.lock(a, "/s", sem(2)));
    locked(&h.lock(b, "/s", sem(2)));
    assert_eq!(h.holders("/s").len(), 2);
}

/// The same through lock requests alone: a lock named like a queue node
/// (`/n/s-0000000005`) makes `/n` its parent; `/n` cannot then become a semaphore whose
/// queue that directory would take a permit of.
#[test]
fn a_lock_named_like_a_queue_node_keeps_its_parent_from_becoming_a_lock() {
    let mut h = H::new().with_shadow(1);
    let (a, c) = (h.open(), h.open());
    locked(&h.lock(c, "/n/s-0000000005", LockKind::Exclusive));
    assert_eq!(code(&h.lock(a, "/n", sem(2))), ErrorCode::BadArguments);
    // Once that lock and its directory are gone, /n (a container) went with them.
    let (node, _) = locked(&h.lock(c, "/m/x-0000000001", LockKind::Exclusive));
    assert!(released(&h.unlock(c, &node)));
    assert!(!h.node_exists("/m/x-0000000001"));
    locked(&h.lock(a, "/m", LockKind::Exclusive));
}

/// Nothing but its queue nodes is created in a lock's directory, also as a missing
/// parent (`make_parents`) of a create or of another lock's directory.
#[test]
fn make_parents_creates_nothing_inside_a_lock() {
    let mut h = H::new().with_shadow(1);
    let (a, b) = (h.open(), h.open());
    locked(&h.lock(a, "/n", LockKind::Exclusive));
    let tree = h.m.tree_hash();
    for mode in [
        CreateMode::Persistent,
        CreateMode::Ephemeral,
        CreateMode::Container,
    ] {
        let refused = h.write(b, create("/n/x-0000000005/deep", mode, true));
        assert_eq!(code(&refused), ErrorCode::BadArguments, "{mode:?}");
    }
    let multi = h.write(
        b,
        Op::Multi(vec![MultiOp::Create(CreateRequest {
            path: "/n/x-0000000009/deep/er".into(),
            data: Vec::new(),
            mode: CreateMode::Persistent,
            make_parents: true,
        })]),
    );
    assert!(
        matches!(&multi.result, Some(Err(e)) if e.code == ErrorCode::BadArguments),
        "{multi:?}"
    );
    assert_eq!(
        code(&h.lock(b, "/n/x-0000000007/inner", LockKind::Exclusive)),
        ErrorCode::BadArguments
    );
    // Without make_parents the missing parent is what the create reports, as before.
    assert_eq!(
        code(&h.write(
            b,
            create("/n/x-0000000005/deep", CreateMode::Persistent, false)
        )),
        ErrorCode::NoNode
    );
    assert_eq!(h.m.tree_hash(), tree);
    assert_eq!(h.holders("/n").len(), 1);
    // Elsewhere make_parents works as ever.
    let deep = h.write(b, create("/o/p/q", CreateMode::Persistent, true));
    assert!(
        matches!(deep.result, Some(Ok(OpResult::Created { .. }))),
        "{deep:?}"
    );
}

/// `lock_counts` (what the status and every metrics scrape read) agrees with describing
/// every lock: exclusive, read-write and semaphore queues with holders and waiters, a
/// lock emptied and one under a running lock-delay.
#[test]
fn lock_counts_agree_with_the_described_queues() {
    let mut h = H::new();
    let s: Vec<u64> = (0..4).map(|_| h.open()).collect();
    h.lock(s[0], "/x", LockKind::Exclusive);
    h.lock(s[1], "/x", LockKind::Exclusive);
    h.lock(s[2], "/x", LockKind::Exclusive);
    h.lock(s[0], "/rw", LockKind::Read);
    h.lock(s[1], "/rw", LockKind::Read);
    h.lock(s[2], "/rw", LockKind::Write);
    h.lock(s[3], "/rw", LockKind::Read);
    h.lock(s[0], "/sem", LockKind::Semaphore { permits: 2 });
    h.lock(s[1], "/sem", LockKind::Semaphore { permits: 2 });
    h.lock(s[2], "/sem", LockKind::Semaphore { permits: 2 });
    let gone = h.lock(s[3], "/gone", LockKind::Exclusive);
    if let Some(Ok(OpResult::Locked { node, token })) = gone.result {
        h.release(s[3], &node, token);
    }
    let described = h.m.locks_under("/").expect("locks");
    let mut expected = QueueCounts::default();
    for lock in described.iter().filter(|l| !l.queue.is_empty()) {
        expected.locks += 1;
        for entry in &lock.queue {
            if entry.granted {
                expected.held += 1;
            } else {
                expected.waiting += 1;
            }
        }
    }
    let three_five_five = QueueCounts {
        locks: 3,
        held: 5,
        waiting: 5,
    };
    assert_eq!(expected, three_five_five, "{described:?}");
    assert_eq!(h.m.lock_counts(), expected, "from the wait-for index");
    // A decoded machine has no index until its next entry: counted from the state.
    let bytes = bincode::serde::encode_to_vec(&h.m, bincode::config::standard()).expect("encode");
    let (back, _): (StateMachine, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
    assert_eq!(back.lock_counts(), expected, "from the state");
}

/// What the status's lock counts cost on the core task with 100,000 held locks. Run
/// with `cargo test -p corral-server --release --lib lock_counts_cost -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement; run in release with --nocapture"]
fn lock_counts_cost() {
    let mut h = H::new();
    h.m = StateMachine::new(MachineLimits::default());
    h.checked = false;
    let sessions: Vec<u64> = (0..100).map(|_| h.open()).collect();
    for i in 0..100_000u64 {
        let s = sessions[(i % 100) as usize];
        h.lock(s, &format!("/app/locks/lock-{i}"), LockKind::Exclusive);
    }
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let described = h.m.locks_under("/").expect("locks").len();
        let describing = started.elapsed();
        let started = std::time::Instant::now();
        let locks = h.m.lock_counts().locks;
        let counting = started.elapsed();
        assert_eq!(locks as usize, described);
        println!("{locks} locks: described in {describing:?}, counted in {counting:?}");
    }
}

fn delete(path: &str) -> Op {
    Op::Delete {
        path: path.into(),
        version: None,
    }
}

/// A node that becomes a lock may keep children that are not queue nodes (PROTOCOL:
/// only a child named like a queue node stops it). Those are plain nodes: any session
/// deletes them, as in ZooKeeper, while queue nodes stay guarded by their owner. They
/// used to be refused with `NotLockOwner` (owned by "session 0x0"), so a container
/// lock directory holding one could never go, nor could its lock's state. `Unlock` and
/// `Release` name queue nodes only: a plain child is `BadArguments`, not deleted. These
/// are the rules of `AckedWrite` entries; older entries keep theirs (below).
#[test]
fn a_plain_child_of_a_lock_directory_is_no_queue_node() {
    let mut h = H::new().with_shadow(1).with_kind(WriteKind::Acked);
    let (a, b) = (h.open(), h.open());
    h.write(b, create("/c", CreateMode::Container, false));
    h.write(b, create("/c/config", CreateMode::Persistent, false));
    h.write(b, create("/c/mine", CreateMode::Ephemeral, false));
    let (na, _) = locked(&h.lock(a, "/c", LockKind::Exclusive));
    let (nb, tb) = queued(&h.lock(b, "/c", LockKind::Exclusive));
    // Queue nodes: guarded as before.
    assert_eq!(code(&h.write(b, delete(&na))), ErrorCode::NotLockOwner);
    // Plain children: neither lock operations nor queue nodes.
    for op in [
        Op::Unlock {
            node: "/c/mine".into(),
        },
        Op::Release {
            node: "/c/config".into(),
            token: h.czxid("/c/config"),
        },
    ] {
        let refused = h.write(b, op);
        assert_eq!(code(&refused), ErrorCode::BadArguments, "{refused:?}");
    }
    assert!(h.node_exists("/c/mine") && h.node_exists("/c/config"));
    // Another session deletes b's plain ephemeral, in a multi too.
    let m = h.write(
        a,
        Op::Multi(vec![MultiOp::Delete {
            path: "/c/mine".into(),
            version: None,
        }]),
    );
    assert!(matches!(m.result, Some(Ok(OpResult::Multi(_)))), "{m:?}");
    // Releasing the holder grants the waiter, the plain child keeps the directory.
    let r = h.release(a, &na, h.czxid(&na));
    assert_eq!(grants(&r), vec![(b, nb.clone(), tb, r.zxid)]);
    assert!(released(&h.unlock(b, &nb)));
    assert!(h.node_exists("/c"), "its plain child keeps the container");
    assert!(h.state("/c").is_some());
    // Deleting the last child reaps the container and forgets the lock.
    let d = h.write(a, delete("/c/config"));
    assert_eq!(d.result, Some(Ok(OpResult::Deleted)), "{d:?}");
    assert!(!h.node_exists("/c"), "the emptied container is reaped");
    assert!(h.state("/c").is_none());
    // A new lock of another family may take the path.
    locked(&h.lock(b, "/c", LockKind::Read));

    // An older entry applies as it always did, on every node alike: the plain child
    // counts as another session's queue node.
    for kind in [WriteKind::Plain, WriteKind::Ordered] {
        let mut h = H::new().with_shadow(1).with_kind(kind);
        let (a, b) = (h.open(), h.open());
        h.write(b, create("/c", CreateMode::Container, false));
        h.write(b, create("/c/config", CreateMode::Persistent, false));
        locked(&h.lock(a, "/c", LockKind::Exclusive));
        assert_eq!(
            code(&h.write(a, delete("/c/config"))),
            ErrorCode::NotLockOwner
        );
    }
}

/// PROTOCOL: "a lock nested inside another lock ... is refused with `BadArguments`".
/// Creating inside a lock is refused, but a node that was inside a directory before it
/// became a lock could itself become one (or hold a new one below it), and a node
/// with a lock below it could become a lock. Each is refused under the rules of
/// `AckedWrite` entries, and a refused `LockMany` leaves nothing behind; older entries
/// keep accepting them (below).
#[test]
fn a_lock_is_never_nested_in_another() {
    let mut h = H::new().with_shadow(1).with_kind(WriteKind::Acked);
    let (a, b) = (h.open(), h.open());
    for p in ["/p", "/p/c", "/p/c/d", "/q", "/q/r"] {
        h.write(b, create(p, CreateMode::Persistent, false));
    }
    locked(&h.lock(a, "/p", LockKind::Exclusive));
    locked(&h.lock(a, "/q/r", LockKind::Exclusive));
    let tree = h.m.tree_hash();
    // Inside /p: an existing child, a grandchild, a new node below a child.
    for inner in ["/p/c", "/p/c/d", "/p/c/new"] {
        let refused = h.lock(b, inner, LockKind::Exclusive);
        assert_eq!(
            code(&refused),
            ErrorCode::BadArguments,
            "{inner}: {refused:?}"
        );
    }
    // Around /q/r.
    let refused = h.lock(b, "/q", LockKind::Exclusive);
    assert_eq!(code(&refused), ErrorCode::BadArguments, "{refused:?}");
    let refused = h.write(
        b,
        Op::LockMany(MultiLockRequest {
            locks: vec![
                MultiLockItem {
                    lock: "/fresh".into(),
                    kind: LockKind::Exclusive,
                },
                MultiLockItem {
                    lock: "/p/c".into(),
                    kind: LockKind::Exclusive,
                },
            ],
            try_only: false,
            lease: None,
            lock_delay_ms: 0,
            data: Vec::new(),
        }),
    );
    assert_eq!(code(&refused), ErrorCode::BadArguments, "{refused:?}");
    assert_eq!(
        h.m.tree_hash(),
        tree,
        "refused requests leave nothing behind"
    );
    let names: Vec<String> =
        h.m.locks_under("/")
            .expect("valid")
            .into_iter()
            .map(|s| s.lock)
            .collect();
    assert_eq!(names, ["/p", "/q/r"]);
    // Beside them, locks work as ever.
    locked(&h.lock(b, "/q/s", LockKind::Exclusive));

    // An older entry applies as it always did.
    let mut h = H::new().with_shadow(1).with_kind(WriteKind::Ordered);
    let (a, b) = (h.open(), h.open());
    h.write(b, create("/p", CreateMode::Persistent, false));
    h.write(b, create("/p/c", CreateMode::Persistent, false));
    locked(&h.lock(a, "/p", LockKind::Exclusive));
    locked(&h.lock(b, "/p/c", LockKind::Exclusive));
}

/// `lock_delay_ms` is a `u64`; the delay's end is computed as an `i64` wall time with
/// `delay_ms as i64`, so a delay of 2^63 ms or more (a client asking for "never grant
/// after an expiry", such as `u64::MAX`) would wrap to a negative end and run no delay
/// at all: the waiter granted in the expiring transaction itself, while the paused
/// former holder may still act. Such a request is refused before it is proposed
/// (`admit`: applying existing entries must not change), and the longest delay allowed
/// holds grants back for good.
#[test]
fn a_lock_delay_past_i64_max_is_refused_and_the_longest_holds_grants_back() {
    let mut h = H::new().with_shadow(1);
    let (a, b, c) = (h.open(), h.open(), h.open());
    let mut too_long = req("/forever", LockKind::Exclusive);
    too_long.lock_delay_ms = MAX_LOCK_DELAY_MS + 1;
    let refused = h.m.admit(&Op::Lock(too_long.clone())).expect_err("refused");
    assert_eq!(refused.code, ErrorCode::BadArguments, "{refused}");
    let many = Op::LockMany(MultiLockRequest {
        locks: vec![MultiLockItem {
            lock: "/forever".into(),
            kind: LockKind::Exclusive,
        }],
        try_only: false,
        lease: None,
        lock_delay_ms: u64::MAX,
        data: Vec::new(),
    });
    assert_eq!(
        h.m.admit(&many).map_err(|e| e.code),
        Err(ErrorCode::BadArguments)
    );
    let mut first = req("/forever", LockKind::Exclusive);
    first.lock_delay_ms = MAX_LOCK_DELAY_MS;
    h.m.admit(&Op::Lock(first.clone()))
        .expect("the longest is admitted");
    locked(&h.lock_with(a, first));
    let (nb, _) = queued(&h.lock(b, "/forever", LockKind::Exclusive));
    let e = h.expire(vec![a]);
    assert!(
        grants(&e).is_empty(),
        "{nb} granted despite the delay: {e:?}"
    );
    assert_eq!(e.locks_abandoned, 1);
    let state = h.state("/forever").expect("the lock");
    assert_eq!(state.delayed_until_ms, i64::MAX);
    h.now += 1_000_000_000_000;
    assert!(grants(&h.noop()).is_empty());
    let mut try_only = req("/forever", LockKind::Exclusive);
    try_only.try_only = true;
    assert_eq!(code(&h.lock_with(c, try_only)), ErrorCode::LockHeld);
    assert_eq!(h.holders("/forever"), Vec::<String>::new());
}

/// What a write costs right after an image of the state was taken (every compaction
/// point), when the state holds large values: the first write into each part of the
/// tree shared with the image copies that part. Run with
/// `cargo test -p corral-server --release --lib write_after_image_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run in release with --nocapture"]
fn write_after_image_cost() {
    use std::time::Instant;
    let mut h = H::new();
    h.m = StateMachine::new(MachineLimits::default());
    h.checked = false;
    let s = h.open();
    let nodes = 256;
    let value = vec![7u8; 1 << 20];
    for i in 0..nodes {
        h.write(
            s,
            Op::Create(CreateRequest {
                path: format!("/big{i:03}"),
                data: value.clone(),
                mode: CreateMode::Persistent,
                make_parents: false,
            }),
        );
    }
    let set_all = |h: &mut H, round: u8| {
        let started = Instant::now();
        for i in 0..nodes {
            h.write(
                s,
                Op::SetData {
                    path: format!("/big{i:03}"),
                    data: vec![round; 1 << 20],
                    version: None,
                },
            );
        }
        started.elapsed()
    };
    for round in 0..3 {
        let image = h.m.image();
        let after_image = set_all(&mut h, round);
        drop(image);
        let without = set_all(&mut h, round);
        println!(
            "{nodes} sets of 1 MiB values: {after_image:?} right after an image, {without:?} without"
        );
    }
}
