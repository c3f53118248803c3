//! Plain reads in the simulation: a read is served from the answering node's applied
//! state, and its response carries the zxid of that state (PROTOCOL.md, "Reads"). The
//! world records every change of the decided log ([`ChangeLog`]), and the answer must be
//! that state exactly (`ReadMismatch` otherwise):
//!
//! - a child list or page names the children existing at the zxid;
//! - whether a node exists (a read of it answered, or `NoNode`) matches its last
//!   creation or deletion up to the zxid;
//! - the stat of a read node (`Exists`, `GetData`, `GetChildren`, `GetChildrenPage`)
//!   has the creation zxid, the zxids and counts of its data and child changes since,
//!   and the number of children that the recorded changes give;
//! - lock listings (`GetLocks`, `GetLocksPage`) of `/locks` or one lock name the locks
//!   existing at the zxid, each with its queue nodes existing then, in creation order,
//!   each with its creation zxid as its token, and granted exactly if an entry up to the
//!   zxid granted it (at once, or after it waited);
//! - a `ServerStatus` is the answering node's, at the zxid of its response, with as many
//!   sessions and leases, znodes, locks and queue nodes as existed then, as many of them
//!   held as were granted by then.
//!
//! Register values are checked by the linearizability check instead.

use super::check::{Violation, ViolationKind};
use super::watch::{ChangeLog, LoggedStat};
use corral_protocol::{ErrorCode, ErrorInfo, LockState, Op, OpResult, Role, ServerStatus, Stat};

/// The node a read of one node (`Exists`, `GetData`, `GetChildren`, `GetChildrenPage`)
/// asks about.
fn read_node(op: &Op) -> Option<&str> {
    match op {
        Op::Exists { path, .. }
        | Op::GetData { path, .. }
        | Op::GetChildren { path, .. }
        | Op::GetChildrenPage { path, .. } => Some(path),
        _ => None,
    }
}

/// The node a read of one node asks about, and whether its answer says it exists (`None`
/// for any other read or answer).
fn found(op: &Op, result: &Result<OpResult, ErrorInfo>) -> Option<(String, bool)> {
    let path = read_node(op)?;
    let found = match result {
        Ok(OpResult::Exists(stat)) => stat.is_some(),
        Ok(OpResult::Data { .. } | OpResult::Children { .. } | OpResult::ChildrenPage { .. }) => {
            true
        }
        Err(e) if e.code == ErrorCode::NoNode => false,
        _ => return None,
    };
    Some((path.to_string(), found))
}

/// The node whose stat a read answered with, and that stat.
fn stat_of<'a>(op: &'a Op, result: &'a Result<OpResult, ErrorInfo>) -> Option<(&'a str, &'a Stat)> {
    let path = read_node(op)?;
    match result {
        Ok(
            OpResult::Exists(Some(stat))
            | OpResult::Data { stat, .. }
            | OpResult::Children { stat, .. }
            | OpResult::ChildrenPage { stat, .. },
        ) => Some((path, stat)),
        _ => None,
    }
}

/// What is wrong with `stat`, read of `path` at `zxid`: its zxids, versions and number
/// of children must be those of the recorded changes.
fn stat_mismatch(path: &str, stat: &Stat, zxid: u64, changes: &ChangeLog) -> Option<String> {
    let logged = changes.stat_at(path, zxid)?;
    let children = changes.children_at(path, zxid).len();
    let read = LoggedStat {
        czxid: stat.czxid,
        mzxid: stat.mzxid,
        pzxid: stat.pzxid,
        version: stat.version,
        cversion: stat.cversion,
    };
    (read != logged || stat.num_children as usize != children).then(|| {
        format!(
            "{read:?} with {} children, but the log made it {logged:?} with {children}",
            stat.num_children
        )
    })
}

/// The root of the simulated locks.
const LOCKS: &str = "/locks";

/// The locks at `path` and below at `zxid` (for `/locks` or one lock), by path.
fn locks_at(path: &str, zxid: u64, changes: &ChangeLog) -> Vec<String> {
    if path == LOCKS {
        changes
            .children_at(LOCKS, zxid)
            .into_iter()
            .map(|name| corral_protocol::path::join(LOCKS, &name))
            .collect()
    } else if changes.exists_at(path, zxid) == Some(true) {
        vec![path.to_string()]
    } else {
        Vec::new()
    }
}

/// Whether `path` is `/locks` or a lock under it, whose changes are all recorded.
fn lock_listing(path: &str) -> bool {
    path == LOCKS || corral_protocol::path::parent(path) == Some(LOCKS)
}

/// What is wrong with `listed`, the locks a listing at `zxid` described, against those
/// expected (by path, in order): each must be one, with its queue as it was then.
fn lock_mismatch(
    listed: &[LockState],
    expected: &[String],
    zxid: u64,
    changes: &ChangeLog,
) -> Option<String> {
    let names: Vec<&str> = listed.iter().map(|l| l.lock.as_str()).collect();
    if names != expected.iter().map(String::as_str).collect::<Vec<_>>() {
        return Some(format!("the locks {names:?}, but {expected:?} existed"));
    }
    for lock in listed {
        let mut queue: Vec<String> = lock
            .queue
            .iter()
            .map(|e| corral_protocol::path::name(&e.node).to_string())
            .collect();
        queue.sort();
        let existing = changes.children_at(&lock.lock, zxid);
        if queue != existing {
            return Some(format!(
                "the queue {queue:?} of {}, but {existing:?} existed",
                lock.lock
            ));
        }
        let mut last = 0;
        for e in &lock.queue {
            let created = changes.created_at(&e.node, zxid);
            if created != Some(e.token) {
                return Some(format!(
                    "{} with token {}, but it was created at zxid {created:?}",
                    e.node, e.token
                ));
            }
            if e.token < last {
                return Some(format!(
                    "the queue of {} out of creation order at {}",
                    lock.lock, e.node
                ));
            }
            let grant = changes.grant_zxid(&e.node, e.token);
            if e.granted != grant.is_some_and(|g| g <= zxid) {
                return Some(format!(
                    "{} {}, but its grant was at zxid {grant:?}",
                    e.node,
                    if e.granted { "granted" } else { "waiting" }
                ));
            }
            last = e.token;
        }
    }
    None
}

/// What is wrong with `status`, answered by node `node` at `zxid`.
fn status_mismatch(
    status: &ServerStatus,
    node: u64,
    zxid: u64,
    changes: &ChangeLog,
) -> Option<String> {
    let locks = locks_at(LOCKS, zxid, changes);
    // Per lock with queue nodes: how many, and how many of them were granted by then.
    let queued: Vec<(usize, usize)> = locks
        .iter()
        .map(|lock| {
            let nodes = changes.children_at(lock, zxid);
            let held = nodes
                .iter()
                .filter(|name| {
                    let node = corral_protocol::path::join(lock, name);
                    let token = changes.created_at(&node, zxid);
                    token
                        .and_then(|t| changes.grant_zxid(&node, t))
                        .is_some_and(|g| g <= zxid)
                })
                .count();
            (nodes.len(), held)
        })
        .filter(|(n, _)| *n > 0)
        .collect();
    let nodes: usize = queued.iter().map(|(n, _)| n).sum();
    let held: usize = queued.iter().map(|(_, h)| h).sum();
    let leads = status.leader == Some(status.node_id);
    if status.node_id != node {
        Some(format!("node {}'s status from node {node}", status.node_id))
    } else if status.applied_zxid != zxid || status.committed_zxid < zxid {
        Some(format!(
            "applied zxid {} and committed {} in a response at zxid {zxid}",
            status.applied_zxid, status.committed_zxid
        ))
    } else if !matches!(
        (status.role, leads),
        (Role::Standalone, true)
            | (Role::Leader, true)
            | (Role::Follower, false)
            | (Role::Candidate, _)
    ) {
        Some(format!(
            "role {:?} with leader {:?}",
            status.role, status.leader
        ))
    } else if status.sessions != changes.sessions_at(zxid) as u64 {
        Some(format!(
            "{} sessions, but {} sessions and leases were live",
            status.sessions,
            changes.sessions_at(zxid)
        ))
    } else if status.znodes != changes.znodes_at(zxid) as u64 {
        Some(format!(
            "{} znodes, but {} existed",
            status.znodes,
            changes.znodes_at(zxid)
        ))
    } else if status.locks != queued.len() as u64
        || status.locks_held != held as u64
        || status.locks_held + status.locks_waiting != nodes as u64
    {
        Some(format!(
            "{} locks, {} held and {} waiting, but {} locks with {nodes} queue nodes, \
             {held} of them granted, existed",
            status.locks,
            status.locks_held,
            status.locks_waiting,
            queued.len()
        ))
    } else {
        None
    }
}

/// Checks the answer `result` at `zxid` of a read `op`, from node `node`, against the
/// recorded changes.
pub fn check(
    client: usize,
    node: u64,
    op: &Op,
    result: &Result<OpResult, ErrorInfo>,
    zxid: u64,
    changes: &ChangeLog,
    now: u64,
) -> Result<(), Violation> {
    if !changes.complete_to(zxid) {
        return Ok(());
    }
    let mismatch = |what: String| {
        Err(Violation {
            kind: ViolationKind::ReadMismatch,
            at_us: now,
            detail: format!("client {client} read {what} at zxid {zxid}"),
        })
    };
    match (op, result) {
        (Op::GetChildren { path, .. }, Ok(OpResult::Children { children, .. })) => {
            let expected = changes.children_at(path, zxid);
            if *children != expected {
                return mismatch(format!(
                    "children {children:?} of {path}, but {expected:?} existed"
                ));
            }
        }
        (
            Op::GetChildrenPage {
                path,
                after,
                max_names,
                ..
            },
            Ok(OpResult::ChildrenPage { children, more, .. }),
        ) => {
            let expected: Vec<String> = changes
                .children_at(path, zxid)
                .into_iter()
                .filter(|name| name.as_str() > after.as_str())
                .collect();
            let fits = children.len() <= (*max_names).max(1) as usize
                && (!children.is_empty() || expected.is_empty());
            let prefix = expected.get(..children.len()) == Some(children.as_slice());
            if !fits || !prefix || *more != (expected.len() > children.len()) {
                return mismatch(format!(
                    "the page {children:?} (more: {more}) of {path} after {after:?}, at \
                     most {max_names} names, but {expected:?} existed after it"
                ));
            }
        }
        (Op::GetLocks { path }, Ok(OpResult::Locks(locks))) if lock_listing(path) => {
            let expected = locks_at(path, zxid, changes);
            if let Some(wrong) = lock_mismatch(locks, &expected, zxid, changes) {
                return mismatch(format!("the locks of {path}: {wrong}"));
            }
        }
        (
            Op::GetLocksPage {
                path,
                after,
                max_locks,
                ..
            },
            Ok(OpResult::LocksPage { locks, more }),
        ) if lock_listing(path) => {
            let expected: Vec<String> = locks_at(path, zxid, changes)
                .into_iter()
                .filter(|lock| lock.as_str() > after.as_str())
                .collect();
            let fits = locks.len() <= (*max_locks).max(1) as usize
                && (!locks.is_empty() || expected.is_empty());
            let first = expected.get(..locks.len()).unwrap_or(&[]);
            let wrong = lock_mismatch(locks, first, zxid, changes);
            if !fits || wrong.is_some() || *more != (expected.len() > locks.len()) {
                let names: Vec<&str> = locks.iter().map(|l| l.lock.as_str()).collect();
                return mismatch(format!(
                    "the page {names:?} (more: {more}) of the locks of {path} after \
                     {after:?}, at most {max_locks}, but {expected:?} existed after it{}",
                    wrong.map(|w| format!(": {w}")).unwrap_or_default()
                ));
            }
        }
        (Op::ServerStatus, Ok(OpResult::ServerStatus(status))) => {
            if let Some(wrong) = status_mismatch(status, node, zxid, changes) {
                return mismatch(format!("the server status: {wrong}"));
            }
        }
        _ => {}
    }
    if let Some((path, found)) = found(op, result) {
        let exists = path == "/" || changes.exists_at(&path, zxid) == Some(true);
        if found != exists {
            return mismatch(format!(
                "that {path} {}, but it {}",
                if found { "exists" } else { "does not exist" },
                if exists { "existed" } else { "did not exist" }
            ));
        }
    }
    if let Some((path, stat)) = stat_of(op, result) {
        if let Some(wrong) = stat_mismatch(path, stat, zxid, changes) {
            return mismatch(format!("the stat of {path}: {wrong}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::watch::change;
    use super::*;
    use corral_protocol::{EventKind, Stat};

    /// `/eph` created at 1; its child `c0-0` created at 2 and deleted at 4, `c1-0`
    /// created at 3, `c2-1` at 5.
    fn log() -> ChangeLog {
        let mut log = ChangeLog::default();
        let child = |kind, path| {
            [
                change(kind, path),
                change(EventKind::NodeChildrenChanged, "/eph"),
            ]
        };
        log.record(1, &[change(EventKind::NodeCreated, "/eph")]);
        log.record(2, &child(EventKind::NodeCreated, "/eph/c0-0"));
        log.record(3, &child(EventKind::NodeCreated, "/eph/c1-0"));
        log.record(4, &child(EventKind::NodeDeleted, "/eph/c0-0"));
        log.record(5, &child(EventKind::NodeCreated, "/eph/c2-1"));
        log
    }

    /// A stat with these zxids, counts and number of children.
    fn stat(
        czxid: u64,
        mzxid: u64,
        pzxid: u64,
        version: u32,
        cversion: u32,
        children: u32,
    ) -> Stat {
        Stat {
            czxid,
            mzxid,
            pzxid,
            version,
            cversion,
            num_children: children,
            ..Stat::default()
        }
    }

    /// The stat of `/eph` at `zxid`, in [`log`].
    fn eph_stat(zxid: u64) -> Stat {
        let (pzxid, children) = match zxid {
            1 => (1, 0),
            2 => (2, 1),
            3 => (3, 2),
            4 => (4, 1),
            _ => (5, 2),
        };
        stat(1, 1, pzxid, 0, pzxid as u32 - 1, children)
    }

    fn page(after: &str, max_names: u32) -> Op {
        Op::GetChildrenPage {
            path: "/eph".to_string(),
            after: after.to_string(),
            max_names,
            max_bytes: 1 << 20,
        }
    }

    /// A page of `/eph` as answered at `zxid`.
    fn answer(children: &[&str], more: bool, zxid: u64) -> Result<OpResult, ErrorInfo> {
        Ok(OpResult::ChildrenPage {
            children: children.iter().map(|c| c.to_string()).collect(),
            stat: eph_stat(zxid),
            more,
        })
    }

    /// A page names the first children after its cursor that existed at its zxid, says
    /// whether more remain, and holds at least one name while any remain.
    #[test]
    fn a_children_page_is_the_state_at_its_zxid() {
        let log = log();
        let ok = |op: &Op, r, zxid| check(0, 1, op, &r, zxid, &log, 0).is_ok();
        assert!(ok(&page("", 1), answer(&["c0-0"], true, 3), 3));
        assert!(ok(&page("", 3), answer(&["c0-0", "c1-0"], false, 3), 3));
        assert!(ok(&page("c0-0", 3), answer(&["c1-0", "c2-1"], false, 5), 5));
        assert!(ok(&page("c1-0", 2), answer(&["c2-1"], false, 5), 5));
        assert!(ok(&page("c2-1", 2), answer(&[], false, 5), 5));
        assert!(
            !ok(&page("", 3), answer(&["c0-0", "c1-0"], false, 4), 4),
            "deleted at 4"
        );
        assert!(
            !ok(&page("", 1), answer(&["c1-0"], false, 5), 5),
            "more remain"
        );
        assert!(
            !ok(&page("", 2), answer(&["c1-0", "c2-1"], true, 5), 5),
            "none remain"
        );
        assert!(
            ok(&page("", 2), answer(&["c1-0"], true, 5), 5),
            "a byte limit may cut"
        );
        assert!(
            !ok(&page("c0-0", 2), answer(&[], false, 5), 5),
            "empty while any remain"
        );
        assert!(
            !ok(&page("", 1), answer(&["c1-0", "c2-1"], false, 5), 5),
            "over max_names"
        );
        assert!(
            ok(&page("", 1), answer(&["c1-0"], true, 9), 9),
            "zxid 9 is not known yet"
        );
    }

    /// A lock and its queue: (node, token, granted).
    fn lock(name: &str, queue: &[(&str, u64, bool)]) -> LockState {
        LockState {
            lock: name.to_string(),
            lock_delay_ms: 0,
            delayed_until_ms: 0,
            queue: queue
                .iter()
                .map(|(node, token, granted)| corral_protocol::LockEntry {
                    node: format!("{name}/{node}"),
                    kind: corral_protocol::LockKind::Exclusive,
                    session: 1,
                    lease: 1,
                    token: *token,
                    granted: *granted,
                })
                .collect(),
        }
    }

    /// Lock `/locks/a` queued at 1 (granted at once) and 2 (granted at 4), `/locks/b`
    /// at 3 (granted at once); `a`'s nodes released at 4 and 5, the last with its
    /// directory.
    fn locks_log() -> ChangeLog {
        let mut log = ChangeLog::default();
        log.record(
            1,
            &[
                change(EventKind::NodeCreated, "/locks/a"),
                change(EventKind::NodeCreated, "/locks/a/n-1"),
            ],
        );
        log.record(2, &[change(EventKind::NodeCreated, "/locks/a/n-2")]);
        log.record(
            3,
            &[
                change(EventKind::NodeCreated, "/locks/b"),
                change(EventKind::NodeCreated, "/locks/b/n-3"),
            ],
        );
        log.record(4, &[change(EventKind::NodeDeleted, "/locks/a/n-1")]);
        log.record(
            5,
            &[
                change(EventKind::NodeDeleted, "/locks/a/n-2"),
                change(EventKind::NodeDeleted, "/locks/a"),
            ],
        );
        log.granted("/locks/a/n-1", 1, 1);
        log.granted("/locks/b/n-3", 3, 3);
        log.granted("/locks/a/n-2", 2, 4);
        log
    }

    /// A lock listing names the locks existing at its zxid, each with the queue nodes
    /// existing then, in creation order, each with its creation zxid as its token and
    /// granted exactly if granted by then.
    #[test]
    fn a_lock_listing_is_the_state_at_its_zxid() {
        let log = locks_log();
        let all = Op::GetLocks {
            path: "/locks".to_string(),
        };
        let ok = |op: &Op, locks: Vec<LockState>, zxid| {
            check(0, 1, op, &Ok(OpResult::Locks(locks)), zxid, &log, 0).is_ok()
        };
        let a2 = || lock("/locks/a", &[("n-1", 1, true), ("n-2", 2, false)]);
        let b = || lock("/locks/b", &[("n-3", 3, true)]);
        assert!(ok(&all, vec![a2(), b()], 3));
        assert!(ok(
            &all,
            vec![lock("/locks/a", &[("n-2", 2, true)]), b()],
            4
        ));
        assert!(ok(&all, vec![b()], 5));
        assert!(!ok(&all, vec![a2()], 3), "a lock left out");
        assert!(!ok(&all, vec![a2(), b()], 4), "a released node listed");
        assert!(
            !ok(&all, vec![lock("/locks/a", &[("n-2", 2, false)]), b()], 3),
            "a node left out"
        );
        assert!(
            !ok(&all, vec![lock("/locks/a", &[("n-2", 2, false)]), b()], 4),
            "a granted node listed as waiting"
        );
        assert!(
            !ok(
                &all,
                vec![lock("/locks/a", &[("n-1", 1, true), ("n-2", 2, true)]), b()],
                3
            ),
            "a waiting node listed as granted"
        );
        assert!(
            !ok(
                &all,
                vec![
                    lock("/locks/a", &[("n-1", 1, true), ("n-2", 1, false)]),
                    b()
                ],
                3
            ),
            "a token that is not the creation zxid"
        );
        assert!(
            !ok(
                &all,
                vec![
                    lock("/locks/a", &[("n-2", 2, false), ("n-1", 1, true)]),
                    b()
                ],
                3
            ),
            "out of creation order"
        );
        let one = Op::GetLocks {
            path: "/locks/a".to_string(),
        };
        assert!(ok(&one, vec![a2()], 3));
        assert!(ok(&one, vec![], 5));
        assert!(!ok(&one, vec![a2()], 5), "reaped at 5");
        let page = |after: &str, max_locks| Op::GetLocksPage {
            path: "/locks".to_string(),
            after: after.to_string(),
            max_locks,
            max_bytes: 1,
        };
        let paged = |op: &Op, locks: Vec<LockState>, more, zxid| {
            check(
                0,
                1,
                op,
                &Ok(OpResult::LocksPage { locks, more }),
                zxid,
                &log,
                0,
            )
            .is_ok()
        };
        assert!(paged(&page("", 1), vec![a2()], true, 3));
        assert!(paged(&page("/locks/a", 3), vec![b()], false, 3));
        assert!(paged(&page("/locks/ax", 3), vec![b()], false, 3));
        assert!(paged(&page("/locks/b", 3), vec![], false, 3));
        assert!(
            !paged(&page("/locks/a", 3), vec![a2(), b()], false, 3),
            "an inclusive cursor"
        );
        assert!(!paged(&page("", 1), vec![a2()], false, 3), "more remain");
        assert!(
            !paged(&page("", 1), vec![], false, 3),
            "empty while any remain"
        );
    }

    /// A server status is the answering node's, at its response's zxid, with the locks
    /// and queue nodes existing then, as many held as were granted by then.
    #[test]
    fn a_server_status_is_the_state_at_its_zxid() {
        let log = locks_log();
        let status =
            |node_id, role, leader, applied_zxid, locks, locks_held, locks_waiting| ServerStatus {
                node_id,
                role,
                leader,
                members: Vec::new(),
                applied_zxid,
                committed_zxid: applied_zxid,
                log_bytes: 0,
                snapshot_bytes: 0,
                sessions: 0,
                connections: 0,
                watches: 0,
                znodes: log.znodes_at(applied_zxid) as u64,
                locks,
                locks_held,
                locks_waiting,
                admin_addr: None,
                ready: true,
                version: String::new(),
            };
        let ok = |s: ServerStatus, zxid| {
            let r = Ok(OpResult::ServerStatus(Box::new(s)));
            check(0, 1, &Op::ServerStatus, &r, zxid, &log, 0).is_ok()
        };
        assert!(ok(status(1, Role::Leader, Some(1), 2, 1, 1, 1), 2));
        assert!(ok(status(1, Role::Leader, Some(1), 1, 1, 1, 0), 1));
        assert!(
            ok(status(1, Role::Candidate, Some(1), 2, 1, 1, 1), 2),
            "elected, preparing"
        );
        assert!(ok(status(1, Role::Candidate, None, 2, 1, 1, 1), 2));
        assert!(
            !ok(status(2, Role::Follower, Some(1), 2, 1, 1, 1), 2),
            "another node's"
        );
        assert!(
            !ok(status(1, Role::Leader, Some(1), 1, 1, 1, 0), 2),
            "another zxid"
        );
        assert!(
            !ok(status(1, Role::Follower, Some(1), 2, 1, 1, 1), 2),
            "follows itself"
        );
        assert!(
            !ok(status(1, Role::Leader, Some(2), 2, 1, 1, 1), 2),
            "leads for another"
        );
        assert!(
            !ok(status(1, Role::Leader, Some(1), 2, 1, 1, 0), 2),
            "a waiter left out"
        );
        assert!(
            !ok(status(1, Role::Leader, Some(1), 2, 2, 1, 1), 2),
            "a lock too many"
        );
        assert!(
            !ok(status(1, Role::Leader, Some(1), 2, 1, 2, 0), 2),
            "the waiter counted as held"
        );
        let mut one_more = status(1, Role::Leader, Some(1), 2, 1, 1, 1);
        one_more.znodes += 1;
        assert!(!ok(one_more, 2), "a znode too many");
        let mut a_session = status(1, Role::Leader, Some(1), 2, 1, 1, 1);
        a_session.sessions = 1;
        assert!(!ok(a_session, 2), "a session that never began");
        assert!(ok(status(1, Role::Leader, Some(1), 4, 2, 2, 0), 4));
        assert!(
            !ok(status(1, Role::Leader, Some(1), 4, 2, 1, 1), 4),
            "the new holder counted as waiting"
        );
    }

    /// A read node's stat has the zxids and counts of its recorded changes since its
    /// last creation, at the read's zxid.
    #[test]
    fn a_stat_is_the_state_at_its_zxid() {
        let mut log = log();
        let set = change(EventKind::NodeDataChanged, "/eph");
        log.record(6, std::slice::from_ref(&set));
        // A multi that deletes and creates `/eph/c1-0` again and sets its data twice.
        log.record(
            7,
            &[
                change(EventKind::NodeDataChanged, "/eph/c1-0"),
                change(EventKind::NodeDeleted, "/eph/c1-0"),
                change(EventKind::NodeChildrenChanged, "/eph"),
                change(EventKind::NodeCreated, "/eph/c1-0"),
                change(EventKind::NodeChildrenChanged, "/eph"),
                change(EventKind::NodeDataChanged, "/eph/c1-0"),
                change(EventKind::NodeDataChanged, "/eph/c1-0"),
            ],
        );
        let ok = |path: &str, stat: Stat, zxid| {
            let op = Op::GetData {
                path: path.to_string(),
                watch: false,
            };
            let data = Ok(OpResult::Data {
                data: Vec::new(),
                stat,
            });
            check(0, 1, &op, &data, zxid, &log, 0).is_ok()
        };
        // (node, stat read, at zxid, why)
        let right = [
            ("/eph", eph_stat(5), 5, "before the data change"),
            ("/eph", stat(1, 6, 5, 1, 4, 2), 6, "after it"),
            ("/eph", stat(1, 6, 7, 1, 6, 2), 7, "after the multi"),
            ("/eph/c1-0", stat(3, 3, 3, 0, 0, 0), 6, "before the multi"),
            ("/eph/c1-0", stat(7, 7, 7, 2, 0, 0), 7, "created again"),
            ("/eph", stat(0, 0, 0, 0, 0, 0), 9, "zxid 9 is not known yet"),
        ];
        let wrong = [
            ("/eph", stat(1, 6, 5, 0, 4, 2), 6, "a data change missed"),
            ("/eph", stat(1, 5, 5, 1, 4, 2), 6, "mzxid not advanced"),
            ("/eph", stat(1, 6, 5, 1, 3, 2), 6, "a child change missed"),
            ("/eph", stat(1, 6, 6, 1, 4, 2), 6, "pzxid moved by data"),
            ("/eph", stat(1, 6, 5, 1, 4, 3), 6, "a child too many"),
            ("/eph/c1-0", stat(3, 7, 7, 3, 0, 0), 7, "past a deletion"),
        ];
        for (path, stat, zxid, why) in right {
            assert!(ok(path, stat, zxid), "{path} at {zxid}: {why}");
        }
        for (path, stat, zxid, why) in wrong {
            assert!(!ok(path, stat, zxid), "{path} at {zxid}: {why}");
        }
    }

    /// Whether an ephemeral node exists is read from the state at the zxid.
    #[test]
    fn an_ephemeral_node_exists_as_of_the_zxid() {
        let log = log();
        let exists = Op::Exists {
            path: "/eph/c0-0".to_string(),
            watch: false,
        };
        let some = Ok(OpResult::Exists(Some(stat(2, 2, 2, 0, 0, 0))));
        assert!(check(0, 1, &exists, &some, 3, &log, 0).is_ok());
        let err = check(0, 1, &exists, &some, 4, &log, 0).expect_err("deleted at 4");
        assert_eq!(err.kind, ViolationKind::ReadMismatch);
        let get = Op::GetData {
            path: "/eph/c0-0".to_string(),
            watch: true,
        };
        let no_node = Err(ErrorInfo::new(ErrorCode::NoNode, "gone"));
        assert!(check(0, 1, &get, &no_node, 4, &log, 0).is_ok());
        assert!(check(0, 1, &get, &no_node, 2, &log, 0).is_err());
    }
}
