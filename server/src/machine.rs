//! The replicated state machine: znode tree, sessions, and the deduplication table.
//!
//! Deterministic: `apply` is a pure function of the current state, the entry and its
//! zxid. No clock, no IO, no randomness; time arrives as `Entry::wall_ms`, stamped by
//! the node that proposed the entry. Ordered maps wherever iteration order can reach
//! replicated state.
//!
//! Semantics worth knowing (ZooKeeper's unless noted):
//! - every entry advances `last_zxid`, even a failed or duplicate write;
//! - a `multi` is all or nothing under one zxid; a failure is rolled back through an undo
//!   log (see [`crate::tree`]), so `tree_hash()` is unchanged, while `state_hash()` still
//!   moves (new `last_zxid`, the failure cached in the session's dedup table);
//! - container nodes emptied by an entry (a delete, a multi, a session's end) are deleted
//!   at the end of that entry, cascading upward, so a multi that deletes a container's
//!   last child and creates a new one keeps the container (ZooKeeper reaps containers
//!   lazily, with the same outcome);
//! - sequential names use a per-parent counter that only sequential creates advance, so
//!   the first sequential child is `prefix0000000000` (ZooKeeper uses the parent's cversion).

use crate::deadlock::WaitIndex;
use crate::locks::{self, LockFamily, LockMeta};
use crate::tree::{Tree, Txn};
use corral_protocol::path::validate_path;
use corral_protocol::{
    CreateMode, CreateRequest, ErrorCode, ErrorInfo, EventKind, LockEvent, LockKind, LockRequest,
    LockState, MultiOp, MultiResult, Op, OpResult, Stat,
};
pub use multi_lock::MultiLocks;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The machine's limits. `max_data_bytes` is the node's own setting: [`StateMachine::admit`]
/// checks a write against it before the write is proposed, and applying never reads it,
/// so nodes may differ in it (while a rolling restart changes it). `dedup_window` is part
/// of the replicated behaviour (which results a retry finds), the same on every node: it
/// is not configurable, and replaying a snapshot's tail uses the image's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineLimits {
    /// Largest data of one node, in bytes.
    pub max_data_bytes: usize,
    /// How many recent write results each session remembers for deduplication.
    pub dedup_window: usize,
}

impl Default for MachineLimits {
    fn default() -> Self {
        MachineLimits {
            max_data_bytes: 1 << 20,
            dedup_window: 1024,
        }
    }
}

/// One log entry.
///
/// The body is shared: OmniPaxos copies entries between its log, its messages and its
/// snapshots (a compaction copies every entry since the previous one, twice), and a
/// copy is then a reference count, not a deep copy of paths and data. Encoded exactly
/// like an unshared body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Wall-clock time stamped by the proposer, milliseconds since the Unix epoch
    /// (ctime/mtime of nodes created or changed by this entry).
    pub wall_ms: i64,
    /// What the entry does.
    pub body: Arc<EntryBody>,
}

impl Entry {
    /// An entry stamped `wall_ms`.
    pub fn new(wall_ms: i64, body: EntryBody) -> Entry {
        Entry {
            wall_ms,
            body: Arc::new(body),
        }
    }
}

/// What a log entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    /// Open a session; its id is the zxid of this entry.
    OpenSession {
        /// The secret a client must show to resume the session.
        secret: u64,
        /// The granted time-to-live, in milliseconds.
        ttl_ms: u64,
    },
    /// Close a session (client asked): delete its ephemerals.
    CloseSession {
        /// The session to close.
        session_id: u64,
    },
    /// Expire sessions (decided by the leader): delete their ephemerals, in this order.
    /// Ids of sessions that no longer exist are skipped.
    ExpireSessions {
        /// The sessions to expire.
        session_ids: Vec<u64>,
    },
    /// A client write (`Op::is_write`, except `CloseSession`), deduplicated by (session, xid).
    Write {
        /// The session that sent the write.
        session_id: u64,
        /// The request's sequence number within the session.
        xid: u64,
        /// The write.
        op: Op,
    },
    /// Changes nothing. A barrier: the node that proposed it answers the `sync` requests
    /// (and linearizable reads) waiting on `barrier` once it is applied.
    Noop {
        /// Chosen by the proposer, unique per proposing node.
        barrier: u64,
    },
    /// A client write like [`EntryBody::Write`] that also keeps its session's order: it
    /// is refused (`StaleRequest`, and never applied) if the session already applied a
    /// write with a higher xid. A copy of a write the client gave up on (a node cut off
    /// from the leader still forwarding it) can otherwise apply after the writes the
    /// client sent next through another node.
    ///
    /// The rule is the entry's: an old `Write` replayed by a newer binary applies as it
    /// did, so nodes never disagree on an entry. Proposed only once every member's link
    /// showed it decodes this variant (peer protocol [`ORDERED_WRITE_PEER_VERSION`]).
    OrderedWrite {
        /// The session that sent the write.
        session_id: u64,
        /// The request's sequence number within the session.
        xid: u64,
        /// The write.
        op: Op,
    },
    /// A client write like [`EntryBody::OrderedWrite`] that also carries the session's
    /// latest acknowledgement (`Op::Acknowledge`) as the node it arrived at had it:
    /// every request of the session below `answered_below` has been answered, so after
    /// applying the write the session's deduplication table forgets their results
    /// (capped at this write's own xid, whose result is kept). A copy of one of those
    /// writes arriving later is then refused as stale instead of applied again. Without
    /// acknowledgements a table holds the last `dedup_window` results whatever the
    /// client still waits for; with them, about what it has in flight.
    ///
    /// Proposed only once every member's link showed it decodes this variant (peer
    /// protocol [`ACKED_WRITE_PEER_VERSION`]).
    AckedWrite {
        /// The session that sent the write.
        session_id: u64,
        /// The request's sequence number within the session.
        xid: u64,
        /// The write.
        op: Op,
        /// The session's requests below this xid have all been answered (0: none known).
        answered_below: u64,
    },
}

/// Which entry variant carries a client write: what every member decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WriteKind {
    /// [`EntryBody::Write`]: a member is below peer protocol 2.
    Plain,
    /// [`EntryBody::OrderedWrite`]: every member decodes it, not `AckedWrite`.
    Ordered,
    /// [`EntryBody::AckedWrite`]: every member decodes it (always on a single node).
    Acked,
}

impl WriteKind {
    /// The newest kind every member decodes, given the lowest peer protocol version of
    /// the members' links.
    pub fn for_peer_version(version: u16) -> WriteKind {
        if version >= ACKED_WRITE_PEER_VERSION {
            WriteKind::Acked
        } else if version >= ORDERED_WRITE_PEER_VERSION {
            WriteKind::Ordered
        } else {
            WriteKind::Plain
        }
    }
}

impl EntryBody {
    /// A client write of this kind; `answered_below` is carried by `Acked` only.
    pub fn client(
        kind: WriteKind,
        session_id: u64,
        xid: u64,
        op: Op,
        answered_below: u64,
    ) -> EntryBody {
        match kind {
            WriteKind::Plain => EntryBody::Write {
                session_id,
                xid,
                op,
            },
            WriteKind::Ordered => EntryBody::OrderedWrite {
                session_id,
                xid,
                op,
            },
            WriteKind::Acked => EntryBody::AckedWrite {
                session_id,
                xid,
                op,
                answered_below,
            },
        }
    }

    /// The session, xid and operation of a client write (`Write`, `OrderedWrite` or
    /// `AckedWrite`).
    pub fn client_write(&self) -> Option<(u64, u64, &Op)> {
        match self {
            EntryBody::Write {
                session_id,
                xid,
                op,
            }
            | EntryBody::OrderedWrite {
                session_id,
                xid,
                op,
            }
            | EntryBody::AckedWrite {
                session_id,
                xid,
                op,
                ..
            } => Some((*session_id, *xid, op)),
            _ => None,
        }
    }

    /// Whether this is a client write held to its session's xid order (`OrderedWrite`
    /// and `AckedWrite`).
    pub fn is_ordered_write(&self) -> bool {
        matches!(
            self,
            EntryBody::OrderedWrite { .. } | EntryBody::AckedWrite { .. }
        )
    }
}

/// The peer protocol version from which a node decodes [`EntryBody::OrderedWrite`].
pub const ORDERED_WRITE_PEER_VERSION: u16 = 2;

/// The longest lock-delay a lock request may ask for, in milliseconds: a delay's end is
/// a wall time in ms since the epoch (`i64`).
pub const MAX_LOCK_DELAY_MS: u64 = i64::MAX as u64;

/// The peer protocol version from which a node decodes [`EntryBody::AckedWrite`].
pub const ACKED_WRITE_PEER_VERSION: u16 = 3;

/// A change to the tree, in the order it happened; watches are fired from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The node that changed.
    pub path: String,
    /// How it changed.
    pub kind: EventKind,
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The entry's zxid.
    pub zxid: u64,
    /// For `Write` and `CloseSession`: the result for the client; for `OpenSession`:
    /// `Ok(OpResult::Pong)` if opened. Duplicates (a retried xid) return the cached result.
    pub result: Option<Result<OpResult, ErrorInfo>>,
    /// Tree changes in order (empty for duplicates and failures).
    pub changes: Vec<Change>,
    /// Sessions (and leases) that ceased to exist in this entry (closed or expired).
    pub ended_sessions: Vec<u64>,
    /// Lock grants and losses to push to the sessions concerned, in order.
    pub lock_events: Vec<LockChange>,
    /// Held locks released because their holder's session or lease expired (abandoned
    /// locks cleaned).
    pub locks_abandoned: u32,
}

/// A lock grant or loss for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockChange {
    /// The session to tell (the owner of the lease, for a lock held under a lease).
    pub session: u64,
    /// Granted (`true`) or lost (`false`).
    pub granted: bool,
    /// What happened.
    pub event: LockEvent,
}

/// A session as the replicated state knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session id: the zxid of the entry that opened it (never 0).
    pub id: u64,
    /// The secret a client must show to resume the session.
    pub secret: u64,
    /// The granted time-to-live, in milliseconds.
    pub ttl_ms: u64,
    /// For a lease: the session that owns it (0 for a session).
    pub lease_of: u64,
}

/// What the replicated state keeps per session besides [`Session`]: the deduplication table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SessionState {
    info: Session,
    /// The highest xid of a write applied for this session (0 if none).
    last_xid: u64,
    /// The highest xid evicted from `recent` (0 if none): older xids are stale.
    dedup_floor: u64,
    /// Results of the most recent writes by xid, at most `MachineLimits::dedup_window`.
    recent: imbl::OrdMap<u64, Result<OpResult, ErrorInfo>>,
}

/// The replicated state.
///
/// Cloning copies the whole tree (for snapshots and tests; `apply` never clones it).
/// Serialized with bincode for snapshots; every map is ordered, so equal states encode to
/// equal bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateMachine {
    limits: MachineLimits,
    last_zxid: u64,
    tree: Tree,
    sessions: imbl::OrdMap<u64, SessionState>,
    /// Locks by name (their directory's path).
    locks: imbl::OrdMap<String, LockMeta>,
    /// Multi-lock groups (`LockMany`).
    multi: MultiLocks,
    /// The lock queues indexed for deadlock detection: derived from the state above,
    /// not serialized (rebuilt after a snapshot is loaded).
    #[serde(skip)]
    waits: WaitIndex,
    /// The running lock-delays by their end: derived from `locks`, not serialized
    /// (rebuilt after a snapshot is loaded).
    #[serde(skip)]
    delays: locks::DelayIndex,
    /// The leases of each session, by owner: derived from `sessions`, not serialized
    /// (rebuilt after a snapshot is loaded), so ending a session does not visit every
    /// other session.
    #[serde(skip)]
    leases: LeaseIndex,
}

/// The replicated part of a [`StateMachine`], which its image holds: encodes exactly
/// like the machine (the same fields in the same order; the derived indexes are not
/// encoded). Made by [`StateMachine::image`] in O(1), since every map in it is
/// persistent, so that it can be encoded on another thread while the machine goes on.
#[derive(Debug, Clone, Serialize)]
pub struct MachineImage {
    limits: MachineLimits,
    last_zxid: u64,
    tree: Tree,
    sessions: imbl::OrdMap<u64, SessionState>,
    locks: imbl::OrdMap<String, LockMeta>,
    multi: MultiLocks,
}

impl MachineImage {
    /// The zxid of the last entry the machine had applied.
    pub fn last_zxid(&self) -> u64 {
        self.last_zxid
    }

    /// The bytes of a single node's snapshot file (bincode, standard configuration),
    /// which recovery decodes as a [`StateMachine`].
    pub fn encode_snapshot(&self) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| format!("encoding the state machine: {e}"))
    }
}

/// Each session's leases ([`Session::lease_of`] inverted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LeaseIndex {
    built: bool,
    by_owner: BTreeMap<u64, BTreeSet<u64>>,
}

impl LeaseIndex {
    fn of(sessions: &imbl::OrdMap<u64, SessionState>) -> LeaseIndex {
        let mut index = LeaseIndex {
            built: true,
            by_owner: BTreeMap::new(),
        };
        for (id, s) in sessions {
            if s.info.lease_of != 0 {
                index.add(s.info.lease_of, *id);
            }
        }
        index
    }

    fn add(&mut self, owner: u64, lease: u64) {
        self.by_owner.entry(owner).or_default().insert(lease);
    }

    fn remove(&mut self, owner: u64, lease: u64) {
        if let Some(set) = self.by_owner.get_mut(&owner) {
            set.remove(&lease);
            if set.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    fn of_owner(&self, owner: u64) -> Vec<u64> {
        self.by_owner
            .get(&owner)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl Default for StateMachine {
    /// Same as `StateMachine::new(MachineLimits::default())`.
    fn default() -> Self {
        StateMachine::new(MachineLimits::default())
    }
}

/// The session a node owner belongs to: the owner itself, or a lease's session.
fn owner_session(sessions: &imbl::OrdMap<u64, SessionState>, owner: u64) -> u64 {
    match sessions.get(&owner) {
        Some(s) if s.info.lease_of != 0 => s.info.lease_of,
        _ => owner,
    }
}

fn session_expired(session_id: u64) -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::SessionExpired,
        format!("session {session_id:#x} does not exist (expired or closed)"),
    )
}

/// A short description of a multi op for error messages: its kind and path.
fn describe(op: &MultiOp) -> (&'static str, &str) {
    match op {
        MultiOp::Create(req) => ("create", req.path.as_str()),
        MultiOp::Delete { path, .. } => ("delete", path.as_str()),
        MultiOp::SetData { path, .. } => ("set_data", path.as_str()),
        MultiOp::Check { path, .. } => ("check", path.as_str()),
        MultiOp::CheckLock { lock, .. } => ("check_lock", lock.as_str()),
    }
}

impl StateMachine {
    /// An empty tree holding only the root `/`, with no sessions, at zxid 0.
    pub fn new(limits: MachineLimits) -> Self {
        StateMachine {
            limits,
            last_zxid: 0,
            tree: Tree::new(),
            sessions: imbl::OrdMap::new(),
            locks: imbl::OrdMap::new(),
            multi: MultiLocks::default(),
            waits: WaitIndex::default(),
            delays: locks::DelayIndex::of(std::iter::empty()),
            leases: LeaseIndex::of(&imbl::OrdMap::new()),
        }
    }

    /// The limits this machine enforces.
    pub fn limits(&self) -> MachineLimits {
        self.limits
    }

    /// Replaces the limits (a snapshot carries the limits of the node that wrote it; the
    /// configured ones win). Every node of a cluster must be configured alike.
    pub fn set_limits(&mut self, limits: MachineLimits) {
        self.limits = limits;
    }

    /// A copy of the replicated state (O(1): its maps are persistent and shared until
    /// either side changes), for encoding an image elsewhere.
    pub fn image(&self) -> MachineImage {
        MachineImage {
            limits: self.limits,
            last_zxid: self.last_zxid,
            tree: self.tree.clone(),
            sessions: self.sessions.clone(),
            locks: self.locks.clone(),
            multi: self.multi.clone(),
        }
    }

    /// The zxid of the last applied entry (0 if none).
    pub fn last_zxid(&self) -> u64 {
        self.last_zxid
    }

    /// The znode tree (read-only), for recipes and checkers that need more than the
    /// request-shaped reads.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Applies one entry at `zxid`, which must be greater than `last_zxid()`.
    ///
    /// An entry at a zxid that is not greater than `last_zxid()` is a bug in the caller: it
    /// is refused without any change (`RuntimeInconsistency` for entries with a result).
    pub fn apply(&mut self, zxid: u64, entry: &Entry) -> Applied {
        if zxid <= self.last_zxid {
            tracing::error!(
                zxid,
                last_zxid = self.last_zxid,
                "refusing an entry whose zxid is not after the last applied one"
            );
            let result = match *entry.body {
                EntryBody::ExpireSessions { .. } | EntryBody::Noop { .. } => None,
                _ => Some(Err(ErrorInfo::new(
                    ErrorCode::RuntimeInconsistency,
                    format!(
                        "entry at zxid {zxid} is not after the last applied zxid {}",
                        self.last_zxid
                    ),
                ))),
            };
            return Applied {
                zxid,
                result,
                changes: Vec::new(),
                ended_sessions: Vec::new(),
                lock_events: Vec::new(),
                locks_abandoned: 0,
            };
        }
        self.last_zxid = zxid;
        self.ensure_indexes();
        let mut txn = Txn::new(zxid, entry.wall_ms);
        let mut ended_sessions = Vec::new();
        let result = match &*entry.body {
            EntryBody::OpenSession { secret, ttl_ms } => {
                self.sessions.insert(
                    zxid,
                    SessionState {
                        info: Session {
                            id: zxid,
                            secret: *secret,
                            ttl_ms: *ttl_ms,
                            lease_of: 0,
                        },
                        last_xid: 0,
                        dedup_floor: 0,
                        recent: imbl::OrdMap::new(),
                    },
                );
                Some(Ok(OpResult::Pong))
            }
            EntryBody::CloseSession { session_id } => {
                Some(self.close(&mut txn, *session_id, &mut ended_sessions))
            }
            EntryBody::ExpireSessions { session_ids } => {
                for &id in session_ids {
                    // Unknown ids (already closed, or listed twice) are skipped.
                    self.expire(&mut txn, id, &mut ended_sessions);
                }
                None
            }
            EntryBody::Write {
                session_id,
                xid,
                op,
            } => Some(self.write(&mut txn, *session_id, *xid, op, false, &mut ended_sessions)),
            EntryBody::OrderedWrite {
                session_id,
                xid,
                op,
            } => Some(self.write(&mut txn, *session_id, *xid, op, true, &mut ended_sessions)),
            EntryBody::AckedWrite {
                session_id,
                xid,
                op,
                answered_below,
            } => {
                txn.queue_names_only = true;
                let result = self.write(&mut txn, *session_id, *xid, op, true, &mut ended_sessions);
                self.forget_answered(*session_id, (*answered_below).min(*xid));
                Some(result)
            }
            EntryBody::Noop { .. } => None,
        };
        self.maintain_locks(&mut txn);
        // A lock whose delay is running keeps its directory (and so its state) even when
        // its queue is empty, so the delay holds for requests arriving meanwhile.
        let wall_ms = txn.wall_ms;
        let locks = &self.locks;
        txn.emptied
            .retain(|dir| !locks.get(dir).is_some_and(|m| m.delayed(wall_ms)));
        self.tree.reap_containers(&mut txn);
        self.forget_reaped_locks(&txn);
        self.update_wait_index(&txn);
        Applied {
            zxid,
            result,
            changes: txn.changes,
            ended_sessions,
            lock_events: txn.lock_events,
            locks_abandoned: txn.locks_abandoned,
        }
    }

    /// Regrants every lock whose queue changed in this entry, and every lock whose delay
    /// ran out by this entry's time.
    fn maintain_locks(&mut self, txn: &mut Txn) {
        self.cascade_groups(txn);
        let mut touched: BTreeSet<String> = txn
            .changes
            .iter()
            .filter(|c| {
                c.kind == EventKind::NodeChildrenChanged && self.locks.contains_key(&c.path)
            })
            .map(|c| c.path.clone())
            .collect();
        touched.extend(self.delays.ended(txn.wall_ms).map(str::to_string));
        let mut groups = BTreeSet::new();
        for lock in touched {
            let was_delayed = self
                .locks
                .get(&lock)
                .is_some_and(|m| m.delayed_until_ms != 0);
            groups.extend(self.regrant(txn, &lock, None));
            // A delay that just ended may leave an empty directory kept for it: reap it.
            let ended = self
                .locks
                .get(&lock)
                .is_some_and(|m| m.delayed_until_ms == 0);
            let empty = self.tree.get(&lock).is_some_and(|d| d.children.is_empty());
            if was_delayed && ended && empty {
                txn.emptied.push(lock);
            }
        }
        self.grant_groups(txn, &groups, None);
    }

    /// Regrants one lock and records grant events (except for `quiet`, the node a `Lock`
    /// request just created, whose answer carries the grant). Returns the multi-lock
    /// groups with a node that became eligible here (see [`Self::grant_groups`]).
    fn regrant(&mut self, txn: &mut Txn, lock: &str, quiet: Option<&str>) -> BTreeSet<u64> {
        let Some(meta) = self.locks.get_mut(lock) else {
            return BTreeSet::new();
        };
        let multi = &self.multi;
        let delayed_until = meta.delayed_until_ms;
        let regrant = locks::regrant(&self.tree, lock, meta, txn.wall_ms, |node| {
            multi.contains(node)
        });
        self.delays
            .moved(lock, delayed_until, meta.delayed_until_ms);
        let groups = regrant
            .group_ready
            .iter()
            .filter_map(|name| self.group_of(&corral_protocol::path::join(lock, name)))
            .collect();
        for name in regrant.granted {
            let node = corral_protocol::path::join(lock, &name);
            if Some(node.as_str()) == quiet {
                continue;
            }
            let Some(n) = self.tree.get(&node) else {
                continue;
            };
            let owner = n.stat.ephemeral_owner;
            txn.lock_events.push(LockChange {
                session: owner_session(&self.sessions, owner),
                granted: true,
                event: LockEvent {
                    lock: lock.to_string(),
                    token: fencing_token(&node, n.stat.czxid),
                    node,
                    zxid: txn.zxid,
                },
            });
        }
        groups
    }

    /// Drops the state of locks whose directory was reaped.
    fn forget_reaped_locks(&mut self, txn: &Txn) {
        for change in &txn.changes {
            if change.kind != EventKind::NodeDeleted {
                continue;
            }
            if let Some(meta) = self.locks.remove(&change.path) {
                self.delays.moved(&change.path, meta.delayed_until_ms, 0);
            }
        }
    }

    /// Ends an expired session or lease. Held locks it loses start their lock-delay, and
    /// a lease's owner is told which locks it lost.
    fn expire(&mut self, txn: &mut Txn, id: u64, ended: &mut Vec<u64>) {
        let lease_of = match self.sessions.get(&id) {
            Some(s) => s.info.lease_of,
            None => return,
        };
        let mut ids = vec![id];
        ids.extend(self.leases_of(id));
        for owner in ids {
            let nodes: Vec<String> = self.tree.ephemerals_of(owner).map(str::to_string).collect();
            for node in nodes {
                let Some(lock) = corral_protocol::path::parent(&node) else {
                    continue;
                };
                let name = corral_protocol::path::name(&node);
                let Some(meta) = self.locks.get_mut(lock) else {
                    continue;
                };
                if meta.granted.contains(name) {
                    txn.locks_abandoned += 1;
                    if meta.delay_ms > 0 {
                        let until = txn.wall_ms.saturating_add(meta.delay_ms as i64);
                        let before = meta.delayed_until_ms;
                        meta.delayed_until_ms = before.max(until);
                        self.delays.moved(lock, before, meta.delayed_until_ms);
                    }
                }
                if lease_of != 0 {
                    if let Some(n) = self.tree.get(&node) {
                        txn.lock_events.push(LockChange {
                            session: lease_of,
                            granted: false,
                            event: LockEvent {
                                lock: lock.to_string(),
                                node: node.clone(),
                                token: n.stat.czxid,
                                zxid: txn.zxid,
                            },
                        });
                    }
                }
            }
        }
        let _ = self.close(txn, id, ended);
    }

    /// Rebuilds the derived indexes (wait-for, lock-delays, leases by owner) from the
    /// replicated state if they are not built (after a snapshot was decoded).
    fn ensure_indexes(&mut self) {
        if !self.delays.is_built() {
            self.delays = locks::DelayIndex::of(self.locks.iter());
        }
        if !self.leases.built {
            self.leases = LeaseIndex::of(&self.sessions);
        }
        if !self.waits.is_built() {
            self.waits = self.fresh_wait_index();
        }
    }

    /// The leases a session owns.
    fn leases_of(&self, session: u64) -> Vec<u64> {
        self.leases.of_owner(session)
    }

    /// Describes the locks at and below `path`.
    pub fn locks_under(&self, path: &str) -> Result<Vec<LockState>, ErrorInfo> {
        validate_path(path)?;
        // The locks within `path` are `path` itself and one key range: the names that
        // start with `path/` sort together (O(log n + k), not a pass over every lock).
        let describe = |(lock, meta): (&String, &LockMeta)| {
            locks::describe(&self.tree, lock, meta, |o| owner_session(&self.sessions, o))
        };
        if path == "/" {
            return Ok(self.locks.iter().map(describe).collect());
        }
        let below = format!("{path}/");
        let itself = self.locks.get_key_value(path);
        let under = self
            .locks
            .range(below.clone()..)
            .take_while(|(lock, _)| lock.starts_with(&below));
        Ok(itself.into_iter().chain(under).map(describe).collect())
    }

    /// One page of the locks at and below `path` (`GetLocksPage`): those named strictly
    /// after `after`, in path order, at most `max_locks` and as many as
    /// [`LockState::encoded_bytes_bound`] says fit in `max_bytes`, but at least one while
    /// any remain; and whether any remain after it. O(log n + the page).
    pub fn locks_page(
        &self,
        path: &str,
        after: &str,
        max_locks: usize,
        max_bytes: usize,
    ) -> Result<(Vec<LockState>, bool), ErrorInfo> {
        use std::ops::Bound;
        validate_path(path)?;
        // `path` itself, then one key range: the names that start with `path/`.
        let below = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        let itself = self
            .locks
            .get_key_value(path)
            .filter(|(lock, _)| lock.as_str() > after);
        let from = if after >= below.as_str() {
            Bound::Excluded(after.to_string())
        } else {
            Bound::Included(below.clone())
        };
        let under = self
            .locks
            .range((from, Bound::Unbounded))
            .take_while(|(lock, _)| lock.starts_with(&below));
        let mut locks = itself.into_iter().chain(under).peekable();
        let mut page = Vec::new();
        let mut bytes = 0usize;
        while let Some((lock, meta)) = locks.peek() {
            if page.len() >= max_locks && !page.is_empty() {
                break;
            }
            let state =
                locks::describe(&self.tree, lock, meta, |o| owner_session(&self.sessions, o));
            let cost = state.encoded_bytes_bound();
            if bytes + cost > max_bytes && !page.is_empty() {
                break;
            }
            bytes += cost;
            page.push(state);
            locks.next();
        }
        Ok((page, locks.peek().is_some()))
    }

    /// The earliest time at which a lock-delay ends, if one is running: the node that
    /// decides expiry proposes an entry then, so the waiters get granted.
    pub fn next_lock_delay_end(&self) -> Option<i64> {
        if self.delays.is_built() {
            return self.delays.first_end();
        }
        // Decoded from a snapshot and not applied to since.
        self.locks
            .values()
            .filter(|m| m.delayed_until_ms != 0)
            .map(|m| m.delayed_until_ms)
            .min()
    }

    /// Ends a session: deletes its ephemerals and forgets it.
    fn close(
        &mut self,
        txn: &mut Txn,
        session_id: u64,
        ended: &mut Vec<u64>,
    ) -> Result<OpResult, ErrorInfo> {
        let Some(closed) = self.sessions.remove(&session_id) else {
            return Err(session_expired(session_id));
        };
        if closed.info.lease_of != 0 {
            self.leases.remove(closed.info.lease_of, session_id);
        }
        // A session's leases end with it.
        for lease in self.leases_of(session_id) {
            self.leases.remove(session_id, lease);
            self.sessions.remove(&lease);
            self.tree.delete_ephemerals(txn, lease);
            ended.push(lease);
        }
        self.tree.delete_ephemerals(txn, session_id);
        ended.push(session_id);
        Ok(OpResult::Closed)
    }

    /// A deduplicated client write; with `in_order` ([`EntryBody::OrderedWrite`]), one
    /// that arrives after a later write of its session is refused.
    fn write(
        &mut self,
        txn: &mut Txn,
        session_id: u64,
        xid: u64,
        op: &Op,
        in_order: bool,
        ended: &mut Vec<u64>,
    ) -> Result<OpResult, ErrorInfo> {
        let Some(session) = self.sessions.get(&session_id) else {
            return Err(session_expired(session_id));
        };
        if let Some(cached) = session.recent.get(&xid) {
            if !crate::faults::active().skip_dedup {
                return self.as_of_now(cached);
            }
        }
        if xid <= session.dedup_floor {
            return Err(ErrorInfo::new(
                ErrorCode::StaleRequest,
                format!(
                    "xid {xid} of session {session_id:#x} is at or below the deduplication \
                     floor {}; it may or may not have been applied",
                    session.dedup_floor
                ),
            ));
        }
        if in_order && xid < session.last_xid && !crate::faults::active().apply_out_of_order {
            // Remembered like any result: a further copy gets the same refusal.
            let refusal = ErrorInfo::new(
                ErrorCode::StaleRequest,
                format!(
                    "xid {xid} of session {session_id:#x} reached the log after the \
                     session's write {}; a session's writes apply in xid order, so this \
                     one was not applied",
                    session.last_xid
                ),
            );
            self.remember(session_id, xid, Err(refusal.clone()));
            return Err(refusal);
        }
        if matches!(op, Op::CloseSession) {
            // Normally sent as `EntryBody::CloseSession`; accepted here too.
            return self.close(txn, session_id, ended);
        }
        let result = self.execute(txn, session_id, op, ended);
        debug_assert!(
            result.is_ok() || txn.changes.is_empty(),
            "a failed write left changes behind"
        );
        self.remember(session_id, xid, result.clone());
        result
    }

    /// Enters the result of write `xid` into its session's deduplication table.
    fn remember(&mut self, session_id: u64, xid: u64, result: Result<OpResult, ErrorInfo>) {
        let window = self.limits.dedup_window;
        let session = self
            .sessions
            .get_mut(&session_id)
            .expect("write: the session was looked up above and writes do not end it");
        session.recent.insert(xid, result);
        session.last_xid = session.last_xid.max(xid);
        while session.recent.len() > window {
            let Some(old) = session.recent.get_min().map(|(xid, _)| *xid) else {
                break;
            };
            session.recent.remove(&old);
            session.dedup_floor = session.dedup_floor.max(old);
        }
    }

    /// Forgets the remembered results of session `session_id`'s writes below xid `below`
    /// (the client has every answer below it: [`EntryBody::AckedWrite`]); a copy of one
    /// of them arriving later is stale. Nothing for a session that is gone.
    fn forget_answered(&mut self, session_id: u64, below: u64) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        if below <= session.dedup_floor.saturating_add(1) {
            return;
        }
        while let Some(old) = session.recent.get_min().map(|(xid, _)| *xid) {
            if old >= below {
                break;
            }
            session.recent.remove(&old);
        }
        session.dedup_floor = below - 1;
    }

    /// Checks a client's write against this node's limits before it is proposed or
    /// forwarded: the data it carries (`DataTooLarge`, `max_data_bytes`). Applying an
    /// entry never depends on a node's settings: nodes whose limits differ (while a rolling
    /// restart changes them) must still apply every entry alike, or their states diverge.
    pub fn admit(&self, op: &Op) -> Result<(), ErrorInfo> {
        let max = self.limits.max_data_bytes;
        // `what` is formatted only for a refusal: a lock request within the limit, the
        // common case, allocates nothing here.
        let check = |data: &[u8], what: std::fmt::Arguments<'_>| {
            if data.len() <= max {
                return Ok(());
            }
            let msg = format!(
                "data of {} bytes for {what} is larger than max_data_bytes = {max}",
                data.len()
            );
            Err(ErrorInfo::new(ErrorCode::DataTooLarge, msg))
        };
        // A delay's end is a wall time in ms (i64): a longer delay would wrap to an end in
        // the past when a holder expires, and run no delay at all. Refused here rather
        // than saturated while applying, which would apply existing entries anew.
        let delay = |lock_delay_ms: u64| {
            if lock_delay_ms <= MAX_LOCK_DELAY_MS {
                return Ok(());
            }
            let msg = format!(
                "lock_delay_ms {lock_delay_ms} is larger than {MAX_LOCK_DELAY_MS}, the \
                 longest delay an end time can express"
            );
            Err(ErrorInfo::new(ErrorCode::BadArguments, msg))
        };
        match op {
            Op::Create(req) => check(&req.data, format_args!("{}", req.path)),
            Op::SetData { path, data, .. } => check(data, format_args!("{path}")),
            Op::Lock(req) => delay(req.lock_delay_ms)
                .and_then(|()| check(&req.data, format_args!("the queue node of {}", req.lock))),
            Op::LockMany(req) => delay(req.lock_delay_ms)
                .and_then(|()| check(&req.data, format_args!("the queue nodes of a multi-lock"))),
            Op::Multi(ops) => ops.iter().enumerate().try_for_each(|(index, op)| {
                let data = match op {
                    MultiOp::Create(req) => &req.data,
                    MultiOp::SetData { data, .. } => data,
                    _ => return Ok(()),
                };
                let (kind, path) = describe(op);
                check(data, format_args!("{path}")).map_err(|e| {
                    let msg = format!("multi op {index} ({kind} {path}) failed: {}", e.message);
                    ErrorInfo::new(e.code, msg).at_op(index)
                })
            }),
            _ => Ok(()),
        }
    }

    /// Executes a write op; on failure nothing has changed.
    fn execute(
        &mut self,
        txn: &mut Txn,
        session_id: u64,
        op: &Op,
        ended: &mut Vec<u64>,
    ) -> Result<OpResult, ErrorInfo> {
        match op {
            Op::Create(req) => {
                self.refuse_lock_dir(&req.path, req.make_parents)?;
                self.tree
                    .create(txn, session_id, req)
                    .map(|(path, stat)| OpResult::Created { path, stat })
            }
            Op::Delete { path, version } => {
                self.own_queue_node(txn, session_id, path)?;
                self.tree
                    .delete(txn, path, *version)
                    .map(|()| OpResult::Deleted)
            }
            Op::SetData {
                path,
                data,
                version,
            } => self
                .tree
                .set_data(txn, path, data, *version)
                .map(|stat| OpResult::SetData { stat }),
            Op::Multi(ops) => self.multi(txn, session_id, ops),
            Op::Lock(req) => self.lock(txn, session_id, req),
            Op::LockMany(req) => self.lock_many(txn, session_id, req),
            Op::Unlock { node } => self.unlock(txn, session_id, node, None),
            Op::Release { node, token } => self.unlock(txn, session_id, node, Some(*token)),
            Op::GrantLease { ttl_ms } => {
                let id = txn.zxid;
                self.leases.add(session_id, id);
                self.sessions.insert(
                    id,
                    SessionState {
                        info: Session {
                            id,
                            secret: 0,
                            ttl_ms: *ttl_ms,
                            lease_of: session_id,
                        },
                        last_xid: 0,
                        dedup_floor: 0,
                        recent: imbl::OrdMap::new(),
                    },
                );
                Ok(OpResult::Lease {
                    lease_id: id,
                    ttl_ms: *ttl_ms,
                })
            }
            Op::RevokeLease { lease_id } => {
                self.own_lease(session_id, *lease_id)?;
                if !crate::faults::active().revoke_leaves_lease_open {
                    self.close(txn, *lease_id, ended)?;
                }
                Ok(OpResult::Unlocked { released: true })
            }
            other => Err(ErrorInfo::new(
                ErrorCode::BadArguments,
                format!("{} is not a write operation", other.name()),
            )),
        }
    }

    /// A plain delete of a lock's queue node releases it like `Unlock` (useful inside a
    /// multi), but only for the session that owns it: anyone else would take the lock
    /// from its holder without telling it.
    fn own_queue_node(&self, txn: &Txn, session: u64, path: &str) -> Result<(), ErrorInfo> {
        if !self.is_queue_node(txn, path) {
            return Ok(());
        }
        let Some(node) = self.tree.get(path) else {
            return Ok(());
        };
        let owner = owner_session(&self.sessions, node.stat.ephemeral_owner);
        if owner == session {
            Ok(())
        } else {
            Err(ErrorInfo::new(
                ErrorCode::NotLockOwner,
                format!("{path} is a lock queue node of session {owner:#x}"),
            ))
        }
    }

    /// Whether `path` is a queue node of a lock. Under the rules of `AckedWrite` entries
    /// (`Txn::queue_names_only`): a child of a lock's directory named like a queue node
    /// of the lock's family; a directory that was a node before it became a lock may
    /// have other children, which are not in its queue (`locks::queue`), and deleting
    /// one releases nothing. Under the older entries' rules: any child of a lock's
    /// directory, so such a plain child could be deleted by no session.
    fn is_queue_node(&self, txn: &Txn, path: &str) -> bool {
        let Some(meta) = corral_protocol::path::parent(path).and_then(|p| self.locks.get(p)) else {
            return false;
        };
        if !txn.queue_names_only {
            return true;
        }
        let name = corral_protocol::path::name(path);
        locks::kind_of(name, meta.family).is_some() && locks::sequence(name).is_some()
    }

    /// Under the rules of `AckedWrite` entries, refuses to make `lock` a lock inside
    /// another lock (below a lock's directory, through a child that was there before that
    /// directory became a lock) or around one (a lock below it). Older entries accepted
    /// both.
    fn refuse_nested_lock(&self, txn: &Txn, lock: &str) -> Result<(), ErrorInfo> {
        if !txn.queue_names_only {
            return Ok(());
        }
        let nested = |other: &str, how: &str| {
            Err(ErrorInfo::new(
                ErrorCode::BadArguments,
                format!("{lock} cannot be a lock {how} the lock {other}"),
            ))
        };
        let mut up = corral_protocol::path::parent(lock);
        while let Some(dir) = up {
            if self.locks.contains_key(dir) {
                return nested(dir, "inside");
            }
            up = corral_protocol::path::parent(dir);
        }
        let below = format!("{lock}/");
        let inner = self
            .locks
            .range(below.clone()..)
            .next()
            .filter(|(inner, _)| inner.starts_with(&below));
        if let Some((inner, _)) = inner {
            return nested(inner, "around");
        }
        Ok(())
    }

    /// Creates a lock's directory (a container, so it goes with its last queue node) if
    /// it does not exist; refuses an ephemeral node as a lock, and an existing node that
    /// is not a lock yet but has a child named like a queue node: that child would join
    /// the queue without being one (owned by no session, it would hold the lock for
    /// good, or a permit more than the semaphore has).
    pub(crate) fn ensure_lock_dir(
        &mut self,
        txn: &mut Txn,
        session: u64,
        lock: &str,
    ) -> Result<(), ErrorInfo> {
        match self.tree.get(lock) {
            Some(dir) if dir.is_ephemeral() => Err(ErrorInfo::new(
                ErrorCode::NoChildrenForEphemerals,
                format!("{lock} is an ephemeral node and cannot be a lock"),
            )),
            Some(dir) if !self.locks.contains_key(lock) => match locks::first_queue_name(dir) {
                Some(name) => Err(ErrorInfo::new(
                    ErrorCode::BadArguments,
                    format!(
                        "{lock} cannot be a lock: its child {name} is named like a lock queue node \
                         but is not one"
                    ),
                )),
                None => self.refuse_nested_lock(txn, lock),
            },
            Some(_) => Ok(()),
            None => {
                self.refuse_lock_dir(lock, true)?;
                self.refuse_nested_lock(txn, lock)?;
                let dir = CreateRequest {
                    path: lock.to_string(),
                    data: Vec::new(),
                    mode: CreateMode::Container,
                    make_parents: true,
                };
                self.tree.create(txn, session, &dir).map(|_| ())
            }
        }
    }

    /// Refuses a plain create inside a lock's directory: its queue takes lock requests
    /// only (a plain node there would join the queue without an owner). With
    /// `make_parents`, the first missing ancestor of `path` would be created in the
    /// nearest existing one, so that is the directory checked.
    fn refuse_lock_dir(&self, path: &str, make_parents: bool) -> Result<(), ErrorInfo> {
        let mut dir = corral_protocol::path::parent(path).unwrap_or("/");
        while make_parents && self.tree.get(dir).is_none() {
            dir = corral_protocol::path::parent(dir).unwrap_or("/");
        }
        if self.locks.contains_key(dir) {
            return Err(ErrorInfo::new(
                ErrorCode::BadArguments,
                format!("{dir} is a lock; nodes are added to its queue with lock requests only"),
            ));
        }
        Ok(())
    }

    /// Checks that `lease` is a live lease of `session`.
    fn own_lease(&self, session: u64, lease: u64) -> Result<(), ErrorInfo> {
        match self.sessions.get(&lease) {
            Some(s) if s.info.lease_of == session => Ok(()),
            Some(_) => Err(ErrorInfo::new(
                ErrorCode::NoLease,
                format!("{lease:#x} is not a lease of session {session:#x}"),
            )),
            None => Err(ErrorInfo::new(
                ErrorCode::NoLease,
                format!("lease {lease:#x} does not exist (expired or revoked)"),
            )),
        }
    }

    /// Joins a lock's queue (or answers `LockHeld` for a try that would wait).
    fn lock(
        &mut self,
        txn: &mut Txn,
        session: u64,
        req: &LockRequest,
    ) -> Result<OpResult, ErrorInfo> {
        validate_path(&req.lock)?;
        if req.lock == "/" {
            return Err(ErrorInfo::new(
                ErrorCode::BadArguments,
                "the root / cannot be a lock",
            ));
        }
        if let LockKind::Semaphore { permits: 0 } = req.kind {
            return Err(ErrorInfo::new(
                ErrorCode::BadArguments,
                "a semaphore needs at least one permit",
            ));
        }
        let owner = match req.lease {
            Some(lease) => {
                self.own_lease(session, lease)?;
                lease
            }
            None => session,
        };
        let existing = self.locks.get(&req.lock);
        if let Some(meta) = existing {
            meta.admits(&req.lock, req.kind)?;
        }
        let fresh = LockMeta::new(LockFamily::of(req.kind), req.lock_delay_ms);
        let meta = existing.unwrap_or(&fresh);
        if req.try_only && !locks::would_grant(&self.tree, &req.lock, meta, req.kind, txn.wall_ms) {
            let holders: Vec<&String> = meta.granted.iter().collect();
            return Err(ErrorInfo::new(
                ErrorCode::LockHeld,
                format!("{} is held (by {holders:?})", req.lock),
            ));
        }
        // The youngest request of a cycle is refused, before anything is created.
        self.check_deadlock(session, &[(req.lock.as_str(), req.kind)])?;
        // Everything that could fail the queue node is checked before the directory is
        // made, so a failed request leaves nothing behind.
        let queue_prefix = corral_protocol::path::join(&req.lock, locks::prefix(req.kind));
        validate_path(&corral_protocol::path::sequential(&queue_prefix, 0))?;
        // The lock's directory: a container, so it goes with its last queue node.
        self.ensure_lock_dir(txn, session, &req.lock)?;
        let create = CreateRequest {
            path: queue_prefix,
            data: req.data.clone(),
            mode: CreateMode::EphemeralSequential,
            make_parents: false,
        };
        let (node, stat) = self.tree.create(txn, owner, &create)?;
        if !self.locks.contains_key(&req.lock) {
            self.locks.insert(req.lock.clone(), fresh);
        }
        self.regrant(txn, &req.lock, Some(&node));
        let granted = self
            .locks
            .get(&req.lock)
            .is_some_and(|m| m.granted.contains(corral_protocol::path::name(&node)));
        let token = fencing_token(&node, stat.czxid);
        Ok(if granted {
            OpResult::Locked { node, token }
        } else {
            OpResult::Queued { node, token }
        })
    }

    /// Releases a lock or leaves its queue: the node at `node`, or with a `token`, only
    /// the node created with that token (a path names a new node once the lock's
    /// directory is recreated). Idempotent.
    fn unlock(
        &mut self,
        txn: &mut Txn,
        session: u64,
        node: &str,
        token: Option<u64>,
    ) -> Result<OpResult, ErrorInfo> {
        validate_path(node)?;
        let Some(n) = self
            .tree
            .get(node)
            .filter(|n| token.is_none_or(|t| fencing_token(node, n.stat.czxid) == t))
        else {
            return Ok(OpResult::Unlocked { released: false });
        };
        let owner = n.stat.ephemeral_owner;
        if !self.is_queue_node(txn, node) {
            return Err(ErrorInfo::new(
                ErrorCode::BadArguments,
                format!("{node} is not a lock queue node"),
            ));
        }
        if owner_session(&self.sessions, owner) != session {
            return Err(ErrorInfo::new(
                ErrorCode::NotLockOwner,
                format!(
                    "{node} belongs to session {:#x}",
                    owner_session(&self.sessions, owner)
                ),
            ));
        }
        self.tree.delete(txn, node, None)?;
        Ok(OpResult::Unlocked { released: true })
    }

    /// Whether the fencing `token` holds `lock` now.
    fn check_lock(&self, lock: &str, token: u64) -> Result<(), ErrorInfo> {
        validate_path(lock)?;
        let holds = self.locks.get(lock).is_some_and(|meta| {
            meta.granted.iter().any(|name| {
                self.tree
                    .get(&corral_protocol::path::join(lock, name))
                    .is_some_and(|n| n.stat.czxid == token)
            })
        });
        if holds {
            Ok(())
        } else {
            Err(ErrorInfo::new(
                ErrorCode::LockNotHeld,
                format!("token {token} does not hold {lock}"),
            ))
        }
    }

    /// All or nothing: each op sees the effects of the earlier ones; the first failure
    /// rolls back the earlier ones through the undo log.
    fn multi(
        &mut self,
        txn: &mut Txn,
        session_id: u64,
        ops: &[MultiOp],
    ) -> Result<OpResult, ErrorInfo> {
        txn.undo = Some(Vec::new());
        let mut results = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let outcome = match op {
                MultiOp::Create(req) => {
                    self.refuse_lock_dir(&req.path, req.make_parents)
                        .and_then(|()| {
                            self.tree
                                .create(txn, session_id, req)
                                .map(|(path, stat)| MultiResult::Created { path, stat })
                        })
                }
                MultiOp::Delete { path, version } => {
                    self.own_queue_node(txn, session_id, path).and_then(|()| {
                        self.tree
                            .delete(txn, path, *version)
                            .map(|()| MultiResult::Deleted)
                    })
                }
                MultiOp::SetData {
                    path,
                    data,
                    version,
                } => self
                    .tree
                    .set_data(txn, path, data, *version)
                    .map(|stat| MultiResult::SetData { stat }),
                MultiOp::Check { path, version } => self
                    .tree
                    .check(path, *version)
                    .map(|()| MultiResult::Checked),
                MultiOp::CheckLock { lock, token } => self
                    .check_lock(lock, *token)
                    .map(|()| MultiResult::LockChecked),
            };
            match outcome {
                Ok(result) => results.push(result),
                Err(e) => {
                    if let Some(log) = txn.undo.take() {
                        if !crate::faults::active().multi_keeps_earlier_ops {
                            self.tree.rollback(log);
                        }
                    }
                    txn.changes.clear();
                    txn.emptied.clear();
                    let (kind, path) = describe(op);
                    return Err(ErrorInfo::new(
                        e.code,
                        format!("multi op {index} ({kind} {path}) failed: {}", e.message),
                    )
                    .at_op(index));
                }
            }
        }
        txn.undo = None;
        Ok(OpResult::Multi(results))
    }

    /// The node's stat, or `None` if it does not exist; `InvalidPath` for a bad path.
    pub fn exists(&self, path: &str) -> Result<Option<Stat>, ErrorInfo> {
        validate_path(path)?;
        Ok(self.tree.get(path).map(|node| node.stat))
    }

    /// The node's data and stat; `InvalidPath` or `NoNode`.
    pub fn get_data(&self, path: &str) -> Result<(Vec<u8>, Stat), ErrorInfo> {
        let node = self.tree.lookup(path)?;
        Ok((node.data.to_vec(), node.stat))
    }

    /// A page of the node's children: the names after `after` (byte order), at most
    /// `max_names` of them and at most `max_bytes` of them encoded (a name costs its
    /// length plus 8), but at least one if any remain; whether more remain; the stat.
    /// `InvalidPath` or `NoNode`.
    pub fn children_page(
        &self,
        path: &str,
        after: &str,
        max_names: usize,
        max_bytes: usize,
    ) -> Result<(Vec<String>, Stat, bool), ErrorInfo> {
        use std::ops::Bound;
        let node = self.tree.lookup(path)?;
        let mut names = node
            .children
            .range::<_, str>((Bound::Excluded(after), Bound::Unbounded))
            .peekable();
        let mut page = Vec::new();
        let mut bytes = 0usize;
        while let Some(name) = names.peek() {
            let cost = name.len() + 8;
            let full = page.len() >= max_names || bytes + cost > max_bytes;
            if full && !page.is_empty() {
                break;
            }
            bytes += cost;
            page.push((*name).clone());
            names.next();
        }
        Ok((page, node.stat, names.peek().is_some()))
    }

    /// The live session with this id, if any.
    pub fn session(&self, session_id: u64) -> Option<&Session> {
        self.sessions.get(&session_id).map(|s| &s.info)
    }

    /// Every live session, in id order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values().map(|s| &s.info)
    }

    /// Number of sessions and leases. O(1).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The paths of the session's ephemeral nodes, sorted.
    pub fn ephemerals(&self, session_id: u64) -> impl Iterator<Item = &str> {
        self.tree.ephemerals_of(session_id)
    }

    /// The highest xid of a write this session had applied (0 if none).
    pub fn last_xid(&self, session_id: u64) -> u64 {
        self.sessions.get(&session_id).map_or(0, |s| s.last_xid)
    }

    /// How many write results the session's deduplication table remembers (0 for a
    /// session that is gone).
    pub fn remembered_results(&self, session_id: u64) -> usize {
        self.sessions.get(&session_id).map_or(0, |s| s.recent.len())
    }

    /// The remembered result of the session's write `xid`, if it was applied and is still
    /// in the deduplication window.
    pub fn cached_result(&self, session_id: u64, xid: u64) -> Option<Result<OpResult, ErrorInfo>> {
        let cached = self.sessions.get(&session_id)?.recent.get(&xid)?;
        Some(self.as_of_now(cached))
    }

    /// A remembered result as the retried request should see it: a lock request that was
    /// `Queued` and whose queue node has since been granted is answered `Locked`. The
    /// client retries after losing its connection, and the grant pushed meanwhile went to
    /// no one; a `Queued` answer would leave it waiting for a grant already made, and the
    /// lock held by a session that does not know it (soak seed 7014017). Only the state
    /// decides, so every node answers the same.
    ///
    /// The same holds for a `LockMany` answered queued (`MultiLocked` not granted): once
    /// its group is granted (all its nodes at once), the retry is answered granted. And
    /// a queued request whose node is gone since (granted and lost with its lease, or
    /// released) is answered `LockNotHeld`: the loss was pushed to no one either, and a
    /// queued answer would leave the client waiting for good (soak seed 25201343).
    fn as_of_now(&self, cached: &Result<OpResult, ErrorInfo>) -> Result<OpResult, ErrorInfo> {
        if crate::faults::active().stale_retried_lock_answers {
            return cached.clone();
        }
        let nodes: Vec<(&str, u64)> = match cached {
            Ok(OpResult::Queued { node, token }) => vec![(node.as_str(), *token)],
            Ok(OpResult::MultiLocked {
                granted: false,
                nodes,
            }) => nodes.iter().map(|n| (n.node.as_str(), n.token)).collect(),
            _ => return cached.clone(),
        };
        let states: Vec<Option<bool>> = nodes
            .iter()
            .map(|(node, token)| self.queue_node_granted(node, *token))
            .collect();
        if let Some((node, token)) = nodes
            .iter()
            .zip(&states)
            .find_map(|(n, state)| state.is_none().then_some(n))
        {
            return Err(ErrorInfo::new(
                ErrorCode::LockNotHeld,
                format!(
                    "the queue node {node} (token {token}) of this lock request is gone: \
                     released, or lost with its session or lease"
                ),
            ));
        }
        if states.iter().any(|s| *s != Some(true)) {
            return cached.clone();
        }
        match cached {
            Ok(OpResult::Queued { node, token }) => Ok(OpResult::Locked {
                node: node.clone(),
                token: *token,
            }),
            Ok(OpResult::MultiLocked { nodes, .. }) => Ok(OpResult::MultiLocked {
                granted: true,
                nodes: nodes.clone(),
            }),
            _ => cached.clone(),
        }
    }

    /// Whether the queue node `node`, created with fencing token `token`, is granted;
    /// `None` if it is gone (a later node of the same name is another node).
    fn queue_node_granted(&self, node: &str, token: u64) -> Option<bool> {
        self.tree
            .get(node)
            .filter(|n| fencing_token(node, n.stat.czxid) == token)?;
        Some(
            corral_protocol::path::parent(node)
                .and_then(|lock| self.locks.get(lock))
                .is_some_and(|m| m.granted.contains(corral_protocol::path::name(node))),
        )
    }

    /// The session opened with this secret, if any (a session's secret is chosen at random
    /// by the node that proposed it).
    pub fn session_by_secret(&self, secret: u64) -> Option<&Session> {
        self.sessions
            .values()
            .map(|s| &s.info)
            .find(|s| s.secret == secret)
    }

    /// A hash of the whole replicated state, equal on nodes that applied the same entries.
    ///
    /// FNV-1a (64 bit) over the canonical bincode encoding of the machine (every map is
    /// ordered): tree with stats and data, sessions, dedup tables, counters, `last_zxid`
    /// and the dedup window, but not the node's own `max_data_bytes`. Costs one pass over
    /// the state.
    pub fn state_hash(&self) -> u64 {
        fnv_of(&(
            self.limits.dedup_window,
            self.last_zxid,
            &self.tree,
            &self.sessions,
            &self.locks,
            &self.multi,
        ))
    }

    /// A hash of the tree alone (nodes, stats, data, counters, ephemeral index), without
    /// sessions, dedup tables or `last_zxid`: equal before and after a failed multi.
    pub fn tree_hash(&self) -> u64 {
        fnv_of(&self.tree)
    }

    /// Number of znodes (including the root).
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    /// How many locks have a queue, and how many of their queue nodes hold and wait.
    /// The status and every metrics scrape ask for it, on the core task, where
    /// describing every lock took 150 to 235 ms at 100,000 locks. O(1) from the wait-for
    /// index; before that index is built (after a snapshot was loaded, until the next
    /// entry), from a fresh build of it.
    pub fn lock_counts(&self) -> crate::deadlock::QueueCounts {
        if self.waits.is_built() {
            return self.waits.counts();
        }
        self.fresh_wait_index().counts()
    }

    /// The tree's estimated size in bytes ([`crate::tree::Tree::state_bytes`]). O(1).
    pub fn state_bytes(&self) -> u64 {
        self.tree.state_bytes()
    }

    /// About how much applying `op` now would add to [`StateMachine::state_bytes`],
    /// without applying it: a create counts its node (not missing parents), a lock its
    /// directory and its queue node, a `SetData` what its data adds to the node's. 0 for a
    /// write that adds no znode and grows no data (deletes, releases, leases), so a node
    /// at its `max_state_bytes` can always be emptied.
    pub fn state_growth(&self, op: &Op) -> u64 {
        let set = |path: &str, data: &[u8]| {
            self.tree.get(path).map_or(0, |node| {
                (data.len() as u64).saturating_sub(node.data.len() as u64)
            })
        };
        // A queue node's name adds about 16 bytes to its directory's path.
        let lock = |lock: &str, data: &[u8]| {
            crate::tree::znode_bytes(lock, 0)
                .saturating_add(crate::tree::znode_bytes(lock, data.len()))
                .saturating_add(16)
        };
        match op {
            Op::Create(req) => crate::tree::znode_bytes(&req.path, req.data.len()),
            Op::SetData { path, data, .. } => set(path, data),
            Op::Lock(req) => lock(&req.lock, &req.data),
            Op::LockMany(req) => req.locks.iter().fold(0, |sum, item| {
                sum.saturating_add(lock(&item.lock, &req.data))
            }),
            Op::Multi(ops) => ops.iter().fold(0, |sum, op| {
                sum.saturating_add(match op {
                    MultiOp::Create(req) => crate::tree::znode_bytes(&req.path, req.data.len()),
                    MultiOp::SetData { path, data, .. } => set(path, data),
                    _ => 0,
                })
            }),
            _ => 0,
        }
    }

    /// Checks the invariants of the replicated state: the tree's (num_children and
    /// data_length match, parents and children agree, ephemerals have no children and are
    /// indexed under a live owner) and the session table's (ids, dedup windows, zxids not
    /// after `last_zxid`). For tests and the simulator; costs one pass over the state.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.tree
            .check_invariants(|owner| self.sessions.contains_key(&owner))?;
        self.check_multi_lock_invariants()?;
        for (path, node) in self.tree.iter() {
            let s = &node.stat;
            if s.czxid.max(s.mzxid).max(s.pzxid) > self.last_zxid {
                return Err(format!(
                    "{path}: a zxid in {s:?} is after last_zxid {}",
                    self.last_zxid
                ));
            }
        }
        for (id, session) in &self.sessions {
            if session.info.id != *id || *id == 0 || *id > self.last_zxid {
                return Err(format!("session {id}: bad id {}", session.info.id));
            }
            if session.recent.len() > self.limits.dedup_window {
                return Err(format!(
                    "session {id}: {} cached results, window {}",
                    session.recent.len(),
                    self.limits.dedup_window
                ));
            }
            if let Some(&(low, _)) = session.recent.get_min() {
                if low <= session.dedup_floor {
                    return Err(format!(
                        "session {id}: cached xid {low} at or below the floor {}",
                        session.dedup_floor
                    ));
                }
            }
            let highest = session
                .recent
                .get_max()
                .map_or(session.dedup_floor, |(x, _)| (*x).max(session.dedup_floor));
            if session.last_xid != highest {
                return Err(format!(
                    "session {id}: last_xid {} but highest seen xid {highest}",
                    session.last_xid
                ));
            }
        }
        Ok(())
    }
}

/// The fencing token of a queue node: its creation zxid (with the
/// `token_from_sequence` fault switch, wrongly, its sequence number).
fn fencing_token(node: &str, czxid: u64) -> u64 {
    if crate::faults::active().token_from_sequence {
        return locks::sequence(corral_protocol::path::name(node)).unwrap_or(0);
    }
    czxid
}

/// 64-bit FNV-1a, fed by bincode's encoder.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
}

impl bincode::enc::write::Writer for Fnv1a {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(Fnv1a::PRIME);
        }
        self.0 = h;
        Ok(())
    }
}

fn fnv_of<T: Serialize>(value: &T) -> u64 {
    let mut hasher = Fnv1a(Fnv1a::OFFSET);
    bincode::serde::encode_into_writer(value, &mut hasher, bincode::config::standard())
        .expect("encoding plain ordered data into a hasher cannot fail");
    hasher.0
}

#[cfg(test)]
impl StateMachine {
    /// Every child of the node and its stat, in one page.
    pub(crate) fn get_children(&self, path: &str) -> Result<(Vec<String>, Stat), ErrorInfo> {
        let (names, stat, _) = self.children_page(path, "", usize::MAX, usize::MAX)?;
        Ok((names, stat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_protocol::{CreateMode, CreateRequest};
    use proptest::prelude::*;

    /// Drives a machine with consecutive zxids and per-session xids.
    struct Harness {
        m: StateMachine,
        zxid: u64,
        xids: BTreeMap<u64, u64>,
    }

    fn create_req(path: &str, mode: CreateMode) -> CreateRequest {
        CreateRequest {
            path: path.to_string(),
            data: path.as_bytes().to_vec(),
            mode,
            make_parents: false,
        }
    }

    fn create_op(path: &str, mode: CreateMode) -> Op {
        Op::Create(create_req(path, mode))
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with_limits(MachineLimits {
                max_data_bytes: 64,
                dedup_window: 4,
            })
        }

        fn with_limits(limits: MachineLimits) -> Harness {
            Harness {
                m: StateMachine::new(limits),
                zxid: 0,
                xids: BTreeMap::new(),
            }
        }

        fn apply(&mut self, body: EntryBody) -> Applied {
            self.zxid += 1;
            let applied = self
                .m
                .apply(self.zxid, &Entry::new(1_000 + self.zxid as i64, body));
            assert_eq!(self.m.last_zxid(), self.zxid);
            if let Err(e) = self.m.check_invariants() {
                panic!("invariants broken after zxid {}: {e}", self.zxid);
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

        fn write_applied(&mut self, session_id: u64, op: Op) -> Applied {
            let xid = self.xids.entry(session_id).or_insert(0);
            *xid += 1;
            let xid = *xid;
            self.apply(EntryBody::Write {
                session_id,
                xid,
                op,
            })
        }

        /// A client's write as a node handles it: admitted, then applied.
        fn write(&mut self, session_id: u64, op: Op) -> Result<OpResult, ErrorInfo> {
            self.m.admit(&op)?;
            self.write_applied(session_id, op)
                .result
                .expect("a write has a result")
        }

        fn create(&mut self, s: u64, path: &str, mode: CreateMode) -> Result<String, ErrorInfo> {
            match self.write(s, create_op(path, mode))? {
                OpResult::Created { path, .. } => Ok(path),
                other => panic!("unexpected {other:?}"),
            }
        }

        fn code(&mut self, s: u64, op: Op) -> ErrorCode {
            match self.write(s, op) {
                Err(e) => e.code,
                Ok(r) => panic!("expected an error, got {r:?}"),
            }
        }
    }

    fn ch(path: &str, kind: EventKind) -> Change {
        Change {
            path: path.to_string(),
            kind,
        }
    }

    fn stat(m: &StateMachine, path: &str) -> Stat {
        m.exists(path).expect("valid").expect("exists")
    }

    #[test]
    fn new_machine_holds_only_the_root() {
        let m = StateMachine::new(MachineLimits::default());
        assert_eq!(m.node_count(), 1);
        assert_eq!(m.last_zxid(), 0);
        assert_eq!(m.exists("/").expect("valid"), Some(Stat::default()));
        assert!(m.check_invariants().is_ok());
        assert_eq!(
            StateMachine::default().state_hash(),
            StateMachine::new(MachineLimits::default()).state_hash()
        );
    }

    #[test]
    fn create_sets_stats_and_reports_changes() {
        let mut h = Harness::new();
        let s = h.open();
        let applied = h.write_applied(s, create_op("/a", CreateMode::Persistent));
        let z = applied.zxid;
        let Some(Ok(OpResult::Created { path, stat: st })) = applied.result else {
            panic!("{:?}", applied.result)
        };
        assert_eq!(path, "/a");
        assert_eq!(
            applied.changes,
            vec![
                ch("/a", EventKind::NodeCreated),
                ch("/", EventKind::NodeChildrenChanged)
            ]
        );
        assert_eq!((st.czxid, st.mzxid, st.pzxid), (z, z, z));
        assert_eq!(
            (st.ctime_ms, st.mtime_ms),
            (1_000 + z as i64, 1_000 + z as i64)
        );
        assert_eq!((st.version, st.cversion, st.ephemeral_owner), (0, 0, 0));
        assert_eq!(st.data_length, 2);
        assert_eq!(stat(&h.m, "/a"), st);
        let root = stat(&h.m, "/");
        assert_eq!((root.cversion, root.pzxid, root.num_children), (1, z, 1));
        assert_eq!(h.m.get_data("/a").expect("exists").0, b"/a".to_vec());
    }

    #[test]
    fn create_error_paths() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/a", CreateMode::Persistent)
            .expect("create /a");
        h.create(s, "/e", CreateMode::Ephemeral).expect("create /e");
        let before = h.m.tree_hash();
        assert_eq!(
            h.code(s, create_op("/x/y", CreateMode::Persistent)),
            ErrorCode::NoNode
        );
        assert_eq!(
            h.code(s, create_op("/a", CreateMode::Persistent)),
            ErrorCode::NodeExists
        );
        assert_eq!(
            h.code(s, create_op("/", CreateMode::Persistent)),
            ErrorCode::NodeExists
        );
        assert_eq!(
            h.code(s, create_op("a", CreateMode::Persistent)),
            ErrorCode::InvalidPath
        );
        assert_eq!(
            h.code(s, create_op("/a/", CreateMode::Persistent)),
            ErrorCode::InvalidPath
        );
        assert_eq!(
            h.code(s, create_op("/e/c", CreateMode::Persistent)),
            ErrorCode::NoChildrenForEphemerals
        );
        let mut big = create_req("/big", CreateMode::Persistent);
        big.data = vec![0; 65];
        assert_eq!(h.code(s, Op::Create(big)), ErrorCode::DataTooLarge);
        let mut fits = create_req("/fits", CreateMode::Persistent);
        fits.data = vec![0; 64];
        assert!(h.write(s, Op::Create(fits)).is_ok());
        // Failures changed nothing in the tree, but every entry advanced last_zxid.
        h.write(
            s,
            Op::Delete {
                path: "/fits".into(),
                version: None,
            },
        )
        .expect("delete");
        assert_ne!(h.m.tree_hash(), before, "pzxid/cversion of / changed");
        let applied = h.apply(EntryBody::Write {
            session_id: 999,
            xid: 1,
            op: create_op("/z", CreateMode::Persistent),
        });
        assert_eq!(
            applied
                .result
                .expect("result")
                .expect_err("no session")
                .code,
            ErrorCode::SessionExpired
        );
        assert!(applied.changes.is_empty());
        assert_eq!(h.m.last_zxid(), applied.zxid);
    }

    #[test]
    fn failed_writes_change_no_tree_state() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/a", CreateMode::Persistent).expect("create");
        h.create(s, "/a/b", CreateMode::Persistent).expect("create");
        let before = h.m.tree_hash();
        for op in [
            create_op("/a", CreateMode::Persistent),
            create_op("/q/r", CreateMode::PersistentSequential),
            Op::Delete {
                path: "/a".into(),
                version: None,
            },
            Op::Delete {
                path: "/a/b".into(),
                version: Some(3),
            },
            Op::SetData {
                path: "/nope".into(),
                data: vec![],
                version: None,
            },
        ] {
            let applied = h.write_applied(s, op);
            assert!(applied.result.expect("result").is_err());
            assert!(applied.changes.is_empty());
            assert_eq!(h.m.tree_hash(), before);
        }
    }

    #[test]
    fn make_parents_creates_persistent_or_container_parents() {
        let mut h = Harness::new();
        let s = h.open();
        let mut req = create_req("/p/q/r", CreateMode::Ephemeral);
        req.make_parents = true;
        let applied = h.write_applied(s, Op::Create(req));
        assert!(matches!(applied.result, Some(Ok(OpResult::Created { .. }))));
        assert_eq!(
            applied.changes,
            vec![
                ch("/p", EventKind::NodeCreated),
                ch("/", EventKind::NodeChildrenChanged),
                ch("/p/q", EventKind::NodeCreated),
                ch("/p", EventKind::NodeChildrenChanged),
                ch("/p/q/r", EventKind::NodeCreated),
                ch("/p/q", EventKind::NodeChildrenChanged),
            ]
        );
        for p in ["/p", "/p/q", "/p/q/r"] {
            assert_eq!(stat(&h.m, p).czxid, applied.zxid);
        }
        assert_eq!(stat(&h.m, "/p").ephemeral_owner, 0);
        assert!(!h.m.tree().get("/p").expect("exists").container);
        assert_eq!(stat(&h.m, "/p/q/r").ephemeral_owner, s);

        let mut req = create_req("/c1/c2/leaf", CreateMode::Container);
        req.make_parents = true;
        h.write(s, Op::Create(req)).expect("create");
        for p in ["/c1", "/c1/c2", "/c1/c2/leaf"] {
            assert!(h.m.tree().get(p).expect("exists").container, "{p}");
        }

        // An ephemeral ancestor still refuses children.
        let mut req = create_req("/p/q/r/s/t", CreateMode::Persistent);
        req.make_parents = true;
        assert_eq!(
            h.code(s, Op::Create(req)),
            ErrorCode::NoChildrenForEphemerals
        );
        // Sequential with missing parents starts the fresh parent's counter at 0.
        let mut req = create_req("/fresh/n-", CreateMode::PersistentSequential);
        req.make_parents = true;
        match h.write(s, Op::Create(req)) {
            Ok(OpResult::Created { path, .. }) => assert_eq!(path, "/fresh/n-0000000000"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn delete_error_paths_and_changes() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/a", CreateMode::Persistent).expect("create");
        h.create(s, "/a/b", CreateMode::Persistent).expect("create");
        let del = |path: &str, version| Op::Delete {
            path: path.into(),
            version,
        };
        assert_eq!(h.code(s, del("/", None)), ErrorCode::BadArguments);
        assert_eq!(h.code(s, del("/zz", None)), ErrorCode::NoNode);
        assert_eq!(h.code(s, del("zz", None)), ErrorCode::InvalidPath);
        assert_eq!(h.code(s, del("/a", None)), ErrorCode::NotEmpty);
        assert_eq!(h.code(s, del("/a/b", Some(1))), ErrorCode::BadVersion);
        let cversion = stat(&h.m, "/a").cversion;
        let applied = h.write_applied(s, del("/a/b", Some(0)));
        assert_eq!(applied.result, Some(Ok(OpResult::Deleted)));
        assert_eq!(
            applied.changes,
            vec![
                ch("/a/b", EventKind::NodeDeleted),
                ch("/a", EventKind::NodeChildrenChanged)
            ]
        );
        let a = stat(&h.m, "/a");
        assert_eq!(
            (a.cversion, a.pzxid, a.num_children),
            (cversion + 1, applied.zxid, 0)
        );
        assert_eq!(h.m.exists("/a/b").expect("valid"), None);
        assert_eq!(h.write(s, del("/a", None)), Ok(OpResult::Deleted));
        assert_eq!(h.m.node_count(), 1);
    }

    #[test]
    fn set_data_error_paths_and_stats() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/a", CreateMode::Persistent).expect("create");
        let set = |path: &str, data: &[u8], version| Op::SetData {
            path: path.into(),
            data: data.to_vec(),
            version,
        };
        assert_eq!(h.code(s, set("/zz", b"x", None)), ErrorCode::NoNode);
        assert_eq!(h.code(s, set("/a", b"x", Some(1))), ErrorCode::BadVersion);
        assert_eq!(
            h.code(s, set("/a", &[1; 65], None)),
            ErrorCode::DataTooLarge
        );
        assert_eq!(h.code(s, set("/a/", b"x", None)), ErrorCode::InvalidPath);
        let created = stat(&h.m, "/a");
        let applied = h.write_applied(s, set("/a", b"hello", Some(0)));
        let Some(Ok(OpResult::SetData { stat: st })) = applied.result else {
            panic!("{:?}", applied.result)
        };
        assert_eq!(st.version, 1);
        assert_eq!(st.mzxid, applied.zxid);
        assert_eq!(st.mtime_ms, 1_000 + applied.zxid as i64);
        assert_eq!(st.czxid, created.czxid);
        assert_eq!(st.data_length, 5);
        assert_eq!(applied.changes, vec![ch("/a", EventKind::NodeDataChanged)]);
        assert_eq!(h.m.get_data("/a").expect("exists"), (b"hello".to_vec(), st));
        assert!(h.write(s, set("/a", b"", None)).is_ok());
        assert_eq!(stat(&h.m, "/a").version, 2);
    }

    #[test]
    fn sequential_names_use_a_per_parent_counter_that_survives_deletes() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/l", CreateMode::Persistent).expect("create");
        h.create(s, "/m", CreateMode::Persistent).expect("create");
        let seq = CreateMode::PersistentSequential;
        assert_eq!(h.create(s, "/l/n-", seq).expect("c"), "/l/n-0000000000");
        assert_eq!(h.create(s, "/l/n-", seq).expect("c"), "/l/n-0000000001");
        // Another parent has its own counter.
        assert_eq!(h.create(s, "/m/n-", seq).expect("c"), "/m/n-0000000000");
        // Non-sequential children do not use the counter.
        h.create(s, "/l/plain", CreateMode::Persistent)
            .expect("create");
        // Deletes do not rewind it.
        for p in ["/l/n-0000000000", "/l/n-0000000001"] {
            h.write(
                s,
                Op::Delete {
                    path: p.into(),
                    version: None,
                },
            )
            .expect("delete");
        }
        assert_eq!(
            h.create(s, "/l/x-", CreateMode::EphemeralSequential)
                .expect("c"),
            "/l/x-0000000002"
        );
        assert_eq!(stat(&h.m, "/l/x-0000000002").ephemeral_owner, s);
        // A prefix ending in '/' or the root itself.
        assert_eq!(h.create(s, "/l/", seq).expect("c"), "/l/0000000003");
        assert_eq!(h.create(s, "/", seq).expect("c"), "/0000000000");
        assert_eq!(h.code(s, create_op("/nope/n-", seq)), ErrorCode::NoNode);
        assert_eq!(h.code(s, create_op("/l//n-", seq)), ErrorCode::InvalidPath);
        let (children, _) = h.m.get_children("/l").expect("exists");
        assert_eq!(children, vec!["0000000003", "plain", "x-0000000002"]);
    }

    #[test]
    fn ephemerals_vanish_when_the_session_closes() {
        let mut h = Harness::new();
        let s = h.open();
        let other = h.open();
        h.create(s, "/d", CreateMode::Persistent).expect("create");
        h.create(s, "/d/e1", CreateMode::Ephemeral).expect("create");
        h.create(s, "/e0", CreateMode::Ephemeral).expect("create");
        h.create(other, "/d/o", CreateMode::Ephemeral)
            .expect("create");
        assert_eq!(h.m.ephemerals(s).collect::<Vec<_>>(), vec!["/d/e1", "/e0"]);

        let applied = h.apply(EntryBody::CloseSession { session_id: s });
        assert_eq!(applied.result, Some(Ok(OpResult::Closed)));
        assert_eq!(applied.ended_sessions, vec![s]);
        assert_eq!(
            applied.changes,
            vec![
                ch("/d/e1", EventKind::NodeDeleted),
                ch("/d", EventKind::NodeChildrenChanged),
                ch("/e0", EventKind::NodeDeleted),
                ch("/", EventKind::NodeChildrenChanged),
            ]
        );
        assert_eq!(stat(&h.m, "/d").pzxid, applied.zxid);
        assert!(h.m.session(s).is_none());
        assert_eq!(h.m.ephemerals(s).count(), 0);
        assert!(h.m.exists("/d/o").expect("valid").is_some());
        // Closing again, or writing on the closed session: SessionExpired.
        let again = h.apply(EntryBody::CloseSession { session_id: s });
        assert_eq!(
            again.result.expect("result").expect_err("gone").code,
            ErrorCode::SessionExpired
        );
        assert!(again.ended_sessions.is_empty());
        assert_eq!(
            h.code(s, create_op("/x", CreateMode::Persistent)),
            ErrorCode::SessionExpired
        );
    }

    #[test]
    fn expiry_deletes_all_ephemerals_of_all_sessions_in_one_zxid() {
        let mut h = Harness::new();
        let a = h.open();
        let b = h.open();
        let c = h.open();
        h.create(a, "/a1", CreateMode::Ephemeral).expect("create");
        h.create(b, "/b1", CreateMode::EphemeralSequential)
            .expect("create");
        h.create(b, "/b2", CreateMode::Ephemeral).expect("create");
        h.create(c, "/c1", CreateMode::Ephemeral).expect("create");
        let applied = h.apply(EntryBody::ExpireSessions {
            session_ids: vec![b, 12345, a, b],
        });
        assert_eq!(applied.result, None);
        assert_eq!(applied.ended_sessions, vec![b, a]);
        let deleted: Vec<&str> = applied
            .changes
            .iter()
            .filter(|c| c.kind == EventKind::NodeDeleted)
            .map(|c| c.path.as_str())
            .collect();
        assert_eq!(deleted, vec!["/b10000000000", "/b2", "/a1"]);
        assert_eq!(applied.changes.len(), 6);
        assert_eq!(stat(&h.m, "/").pzxid, applied.zxid);
        assert_eq!(h.m.sessions().map(|s| s.id).collect::<Vec<_>>(), vec![c]);
        assert!(h.m.exists("/c1").expect("valid").is_some());
    }

    #[test]
    fn containers_are_deleted_with_their_last_child_cascading_upward() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/c", CreateMode::Container).expect("create");
        h.create(s, "/c/d", CreateMode::Container).expect("create");
        h.create(s, "/c/d/k1", CreateMode::Persistent)
            .expect("create");
        h.create(s, "/c/d/k2", CreateMode::Persistent)
            .expect("create");
        h.create(s, "/empty", CreateMode::Container)
            .expect("create");

        let del = |p: &str| Op::Delete {
            path: p.into(),
            version: None,
        };
        let applied = h.write_applied(s, del("/c/d/k1"));
        assert_eq!(applied.changes.len(), 2, "not the last child yet");
        let applied = h.write_applied(s, del("/c/d/k2"));
        assert_eq!(
            applied.changes,
            vec![
                ch("/c/d/k2", EventKind::NodeDeleted),
                ch("/c/d", EventKind::NodeChildrenChanged),
                ch("/c/d", EventKind::NodeDeleted),
                ch("/c", EventKind::NodeChildrenChanged),
                ch("/c", EventKind::NodeDeleted),
                ch("/", EventKind::NodeChildrenChanged),
            ]
        );
        assert_eq!(h.m.exists("/c").expect("valid"), None);
        // A container that never had children stays.
        assert!(h.m.exists("/empty").expect("valid").is_some());

        // A session's end empties a container too.
        h.create(s, "/lock", CreateMode::Container).expect("create");
        h.create(s, "/lock/n-", CreateMode::EphemeralSequential)
            .expect("create");
        let applied = h.apply(EntryBody::CloseSession { session_id: s });
        assert!(applied
            .changes
            .contains(&ch("/lock", EventKind::NodeDeleted)));
        assert_eq!(h.m.exists("/lock").expect("valid"), None);
        assert!(h.m.exists("/empty").expect("valid").is_some());
    }

    #[test]
    fn a_multi_that_refills_a_container_keeps_it() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/c", CreateMode::Container).expect("create");
        h.create(s, "/c/a", CreateMode::Persistent).expect("create");
        let r = h.write(
            s,
            Op::Multi(vec![
                MultiOp::Delete {
                    path: "/c/a".into(),
                    version: None,
                },
                MultiOp::Create(create_req("/c/b", CreateMode::Persistent)),
            ]),
        );
        assert!(r.is_ok(), "{r:?}");
        assert!(h.m.exists("/c").expect("valid").is_some());
        // Create and delete in one multi: the container is reaped at the end.
        let r = h.write(
            s,
            Op::Multi(vec![
                MultiOp::Create(create_req("/c/x", CreateMode::Persistent)),
                MultiOp::Delete {
                    path: "/c/x".into(),
                    version: None,
                },
                MultiOp::Delete {
                    path: "/c/b".into(),
                    version: None,
                },
            ]),
        );
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(h.m.exists("/c").expect("valid"), None);
    }

    #[test]
    fn state_bytes_follow_creates_sets_deletes_failed_multis_and_decoding() {
        use crate::tree::ZNODE_OVERHEAD_BYTES as O;
        let mut h = Harness::new();
        let s = h.open();
        let root = h.m.state_bytes();
        assert_eq!(root, 1 + O);
        // `create_req` stores the path as the data: "/a" counts 2 + 2 + O.
        h.create(s, "/a", CreateMode::Persistent).expect("create");
        assert_eq!(h.m.state_bytes(), root + 4 + O);
        let set = |data: &[u8]| Op::SetData {
            path: "/a".into(),
            data: data.to_vec(),
            version: None,
        };
        h.write(s, set(b"0123456789")).expect("set");
        assert_eq!(h.m.state_bytes(), root + 12 + O);
        // A multi that creates, sets, deletes and then fails changes nothing.
        let before = h.m.state_bytes();
        let code = h.code(
            s,
            Op::Multi(vec![
                MultiOp::Create(create_req("/b", CreateMode::Persistent)),
                MultiOp::SetData {
                    path: "/a".into(),
                    data: vec![0; 60],
                    version: None,
                },
                MultiOp::Delete {
                    path: "/b".into(),
                    version: None,
                },
                MultiOp::Delete {
                    path: "/missing".into(),
                    version: None,
                },
            ]),
        );
        assert_eq!(code, ErrorCode::NoNode);
        assert_eq!(h.m.state_bytes(), before);
        // Ephemerals go with their session; decoding counts the bytes again.
        h.create(s, "/a/e", CreateMode::Ephemeral).expect("create");
        let with_ephemeral = h.m.state_bytes();
        assert_eq!(with_ephemeral, before + 8 + O);
        let bytes =
            bincode::serde::encode_to_vec(&h.m, bincode::config::standard()).expect("encode");
        let (back, _): (StateMachine, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(back.state_bytes(), with_ephemeral);
        h.apply(EntryBody::CloseSession { session_id: s });
        assert_eq!(h.m.state_bytes(), before);
        let s = h.open();
        h.write(
            s,
            Op::Delete {
                path: "/a".into(),
                version: None,
            },
        )
        .expect("delete");
        assert_eq!(h.m.state_bytes(), root);
    }

    /// This process's resident set, in bytes (for the measurements below).
    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        pages * 4096
    }

    /// How `state_bytes` compares with the memory the tree takes: the resident set grown
    /// by creating 300,000 znodes of 64 bytes (short paths, as a job scheduler's). Run with
    /// `cargo test -p corral-server --release --lib state_bytes_against_memory -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement; run in release with --nocapture"]
    fn state_bytes_against_memory() {
        let mut m = StateMachine::new(MachineLimits::default());
        let mut zxid = 0;
        let mut apply = |m: &mut StateMachine, body: EntryBody| {
            zxid += 1;
            m.apply(zxid, &Entry::new(zxid as i64, body))
        };
        apply(
            &mut m,
            EntryBody::OpenSession {
                secret: 1,
                ttl_ms: 10_000,
            },
        );
        let session_id = 1;
        for dir in 0..100 {
            let op = Op::Create(CreateRequest {
                path: format!("/jobs/queue-{dir}"),
                data: Vec::new(),
                mode: CreateMode::Persistent,
                make_parents: true,
            });
            apply(
                &mut m,
                EntryBody::Write {
                    session_id,
                    xid: dir + 1,
                    op,
                },
            );
        }
        let (rss, bytes) = (resident_bytes(), m.state_bytes());
        let count = 300_000u64;
        for i in 0..count {
            let op = Op::Create(CreateRequest {
                path: format!("/jobs/queue-{}/job-", i % 100),
                data: vec![7; 64],
                mode: CreateMode::PersistentSequential,
                make_parents: false,
            });
            apply(
                &mut m,
                EntryBody::Write {
                    session_id,
                    xid: 101 + i,
                    op,
                },
            );
        }
        let grown = resident_bytes().saturating_sub(rss);
        let counted = m.state_bytes() - bytes;
        println!(
            "{count} znodes: resident set +{} MB, state_bytes +{} MB, ratio {:.2}; \
             {} resident bytes per znode",
            grown / 1_000_000,
            counted / 1_000_000,
            grown as f64 / counted as f64,
            grown / count
        );
    }

    /// What the deduplication tables take, with and without acknowledgements: 1,000
    /// sessions each lock and release their own lock 550 times (1,100 writes, past the
    /// 1,024-result window), as `Write` entries or as `AckedWrite`s acknowledging as the
    /// Rust client does (every 16 xids). One mode per process, for a clean resident set:
    /// `CORRAL_ACKED=0` or `1 cargo test -p corral-server --release --lib
    /// dedup_tables_against_memory -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run in release with --nocapture"]
    fn dedup_tables_against_memory() {
        let acked = std::env::var("CORRAL_ACKED").is_ok_and(|v| v == "1");
        let mut m = StateMachine::new(MachineLimits::default());
        let mut zxid = 0;
        let mut apply = |m: &mut StateMachine, body: EntryBody| {
            zxid += 1;
            m.apply(zxid, &Entry::new(zxid as i64, body))
        };
        let sessions: Vec<u64> = (0..1_000)
            .map(|i| {
                apply(
                    &mut m,
                    EntryBody::OpenSession {
                        secret: i,
                        ttl_ms: 10_000,
                    },
                )
                .zxid
            })
            .collect();
        let rss = resident_bytes();
        for (i, &session_id) in sessions.iter().enumerate() {
            for round in 0..550u64 {
                let xid = round * 2 + 1;
                let lock = Op::Lock(LockRequest {
                    lock: format!("/locks/job-{i}"),
                    kind: LockKind::Exclusive,
                    try_only: false,
                    lease: None,
                    lock_delay_ms: 0,
                    data: Vec::new(),
                });
                let body = |xid: u64, op: Op| {
                    let kind = if acked {
                        WriteKind::Acked
                    } else {
                        WriteKind::Plain
                    };
                    EntryBody::client(kind, session_id, xid, op, xid / 16 * 16)
                };
                let granted = apply(&mut m, body(xid, lock));
                let Some(Ok(OpResult::Locked { node, token })) = granted.result else {
                    panic!("not granted: {granted:?}");
                };
                apply(&mut m, body(xid + 1, Op::Release { node, token }));
            }
        }
        let grown = resident_bytes().saturating_sub(rss);
        let remembered: usize = sessions.iter().map(|&s| m.remembered_results(s)).sum();
        println!(
            "acknowledged {acked}: {remembered} results remembered, resident set +{} MB, \
             {} bytes per session",
            grown / 1_000_000,
            grown / sessions.len() as u64
        );
    }

    #[test]
    fn multi_applies_all_under_one_zxid() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/l", CreateMode::Persistent).expect("create");
        let applied = h.write_applied(
            s,
            Op::Multi(vec![
                MultiOp::Create(create_req("/l/n-", CreateMode::EphemeralSequential)),
                MultiOp::SetData {
                    path: "/l/n-0000000000".into(),
                    data: b"x".to_vec(),
                    version: Some(0),
                },
                MultiOp::Check {
                    path: "/l/n-0000000000".into(),
                    version: 1,
                },
                MultiOp::Create(create_req("/l/t", CreateMode::Persistent)),
                MultiOp::Delete {
                    path: "/l/t".into(),
                    version: None,
                },
            ]),
        );
        let z = applied.zxid;
        let Some(Ok(OpResult::Multi(results))) = applied.result else {
            panic!("{:?}", applied.result)
        };
        assert_eq!(results.len(), 5);
        assert!(matches!(&results[0], MultiResult::Created { path, stat }
            if path == "/l/n-0000000000" && stat.czxid == z));
        assert!(matches!(&results[1], MultiResult::SetData { stat } if stat.version == 1));
        assert_eq!(results[2], MultiResult::Checked);
        assert_eq!(results[4], MultiResult::Deleted);
        assert_eq!(applied.changes.len(), 7);
        assert_eq!(stat(&h.m, "/l/n-0000000000").mzxid, z);
        assert_eq!(h.write(s, Op::Multi(vec![])), Ok(OpResult::Multi(vec![])));
    }

    #[test]
    fn failed_multi_rolls_everything_back() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/l", CreateMode::Persistent).expect("create");
        h.create(s, "/l/keep", CreateMode::Ephemeral)
            .expect("create");
        h.create(s, "/c", CreateMode::Container).expect("create");
        h.create(s, "/c/only", CreateMode::Persistent)
            .expect("create");
        let snapshot = h.m.clone();
        let tree_before = h.m.tree_hash();
        let mut deep = create_req("/n1/n2/n3", CreateMode::Persistent);
        deep.make_parents = true;
        let applied = h.write_applied(
            s,
            Op::Multi(vec![
                MultiOp::Create(create_req("/l/n-", CreateMode::EphemeralSequential)),
                MultiOp::Create(deep),
                MultiOp::SetData {
                    path: "/l".into(),
                    data: b"new".to_vec(),
                    version: None,
                },
                MultiOp::Delete {
                    path: "/l/keep".into(),
                    version: None,
                },
                MultiOp::Delete {
                    path: "/c/only".into(),
                    version: None,
                },
                MultiOp::Check {
                    path: "/l".into(),
                    version: 7,
                },
                MultiOp::Create(create_req("/never", CreateMode::Persistent)),
            ]),
        );
        let e = applied
            .result
            .expect("result")
            .expect_err("the check fails");
        assert_eq!(e.code, ErrorCode::BadVersion);
        assert_eq!(e.op_index, Some(5));
        assert!(e.message.contains("multi op 5 (check /l)"), "{}", e.message);
        assert!(applied.changes.is_empty());
        assert_eq!(h.m.tree_hash(), tree_before);
        assert_eq!(h.m.tree(), snapshot.tree());
        assert_eq!(h.m.ephemerals(s).collect::<Vec<_>>(), vec!["/l/keep"]);
        // The sequence counter was rolled back too.
        assert_eq!(
            h.create(s, "/l/n-", CreateMode::PersistentSequential)
                .expect("c"),
            "/l/n-0000000000"
        );

        // Each failure code of a multi op, with its index.
        let cases: Vec<(Vec<MultiOp>, ErrorCode, u32)> = vec![
            (
                vec![MultiOp::Check {
                    path: "/nope".into(),
                    version: 0,
                }],
                ErrorCode::NoNode,
                0,
            ),
            (
                vec![
                    MultiOp::Create(create_req("/m", CreateMode::Persistent)),
                    MultiOp::Create(create_req("/m", CreateMode::Persistent)),
                ],
                ErrorCode::NodeExists,
                1,
            ),
            (
                vec![
                    MultiOp::Create(create_req("/m", CreateMode::Persistent)),
                    MultiOp::Delete {
                        path: "/m".into(),
                        version: None,
                    },
                    MultiOp::SetData {
                        path: "/m".into(),
                        data: vec![],
                        version: None,
                    },
                ],
                ErrorCode::NoNode,
                2,
            ),
            (
                vec![MultiOp::Delete {
                    path: "/l".into(),
                    version: None,
                }],
                ErrorCode::NotEmpty,
                0,
            ),
            (
                vec![MultiOp::Create(create_req(
                    "/l/keep/x",
                    CreateMode::Persistent,
                ))],
                ErrorCode::NoChildrenForEphemerals,
                0,
            ),
        ];
        for (ops, code, index) in cases {
            let before = h.m.tree_hash();
            let e = h.write(s, Op::Multi(ops)).expect_err("fails");
            assert_eq!((e.code, e.op_index), (code, Some(index)), "{e}");
            assert_eq!(h.m.tree_hash(), before);
        }
    }

    #[test]
    fn dedup_returns_the_cached_result_and_refuses_stale_xids() {
        let mut h = Harness::new(); // dedup_window 4
        let s = h.open();
        let w = |xid: u64, op: Op| EntryBody::Write {
            session_id: s,
            xid,
            op,
        };
        let first = h.apply(w(1, create_op("/q/n-", CreateMode::PersistentSequential)));
        assert_eq!(
            first
                .result
                .as_ref()
                .expect("r")
                .as_ref()
                .expect_err("no /q")
                .code,
            ErrorCode::NoNode
        );
        h.apply(w(2, create_op("/q", CreateMode::Persistent)));
        let created = h.apply(w(3, create_op("/q/n-", CreateMode::PersistentSequential)));
        let count = h.m.node_count();
        // The retry returns the first result and creates no second node.
        let retry = h.apply(w(3, create_op("/q/n-", CreateMode::PersistentSequential)));
        assert_eq!(retry.result, created.result);
        assert!(retry.changes.is_empty());
        assert_eq!(h.m.node_count(), count);
        // A failed result is cached too.
        let retry = h.apply(w(1, create_op("/q/n-", CreateMode::PersistentSequential)));
        assert_eq!(retry.result, first.result);
        assert_eq!(h.m.last_xid(s), 3);
        for xid in 4..=6 {
            h.apply(w(
                xid,
                Op::SetData {
                    path: "/q".into(),
                    data: vec![],
                    version: None,
                },
            ));
        }
        assert_eq!(h.m.last_xid(s), 6);
        // The window holds 3..=6; 1 and 2 were evicted.
        let stale = h.apply(w(2, create_op("/q", CreateMode::Persistent)));
        assert_eq!(
            stale.result.expect("r").expect_err("stale").code,
            ErrorCode::StaleRequest
        );
        assert_eq!(h.apply(w(3, Op::Ping)).result, created.result);
        assert_eq!(h.m.last_xid(12345), 0);
        // A read inside a Write is refused (and deduplicated like any result).
        let bad = h.apply(w(7, Op::Ping));
        assert_eq!(
            bad.result.expect("r").expect_err("not a write").code,
            ErrorCode::BadArguments
        );
    }

    /// The bug `OrderedWrite` fixes: a copy of a write the client gave up on (xid 2,
    /// still forwarded by a node cut off from the leader) reaches the log after the
    /// client's next write (xid 3, through another node). As a `Write` it applies late;
    /// as an `OrderedWrite` it is refused, for good, and changes nothing.
    #[test]
    fn an_ordered_write_after_a_later_write_of_its_session_is_refused() {
        let write = |session_id, xid, op| EntryBody::Write {
            session_id,
            xid,
            op,
        };
        let ordered = |session_id, xid, op| EntryBody::OrderedWrite {
            session_id,
            xid,
            op,
        };
        for (in_order, entry) in [
            (false, write as fn(u64, u64, Op) -> EntryBody),
            (true, ordered),
        ] {
            let mut h = Harness::new();
            let s = h.open();
            let other = h.open();
            h.apply(entry(s, 1, create_op("/q", CreateMode::Persistent)));
            h.apply(entry(s, 3, create_op("/q/later", CreateMode::Persistent)));
            let late = h.apply(entry(
                s,
                2,
                create_op("/q/given-up", CreateMode::Persistent),
            ));
            let applied = h.m.get_data("/q/given-up").is_ok();
            assert_eq!(applied, !in_order, "in_order {in_order}: {late:?}");
            if !in_order {
                continue;
            }
            let refusal = late.result.clone().expect("r").expect_err("refused");
            assert_eq!(refusal.code, ErrorCode::StaleRequest);
            assert!(refusal.message.contains("xid order"), "{}", refusal.message);
            assert!(late.changes.is_empty());
            // A further copy gets the same refusal; the session's order is unchanged.
            let again = h.apply(entry(
                s,
                2,
                create_op("/q/given-up", CreateMode::Persistent),
            ));
            assert_eq!(again.result, late.result);
            assert!(h.m.get_data("/q/given-up").is_err());
            assert_eq!(h.m.last_xid(s), 3);
            // A retry of the latest write is still answered from the table, the next
            // xid applies, and another session's order is its own.
            let retry = h.apply(entry(s, 3, create_op("/q/later", CreateMode::Persistent)));
            assert!(matches!(retry.result, Some(Ok(_))), "{retry:?}");
            let next = h.apply(entry(s, 4, create_op("/q/next", CreateMode::Persistent)));
            assert!(matches!(next.result, Some(Ok(_))), "{next:?}");
            let first = h.apply(entry(
                other,
                1,
                create_op("/q/other", CreateMode::Persistent),
            ));
            assert!(matches!(first.result, Some(Ok(_))), "{first:?}");
            h.m.check_invariants().expect("invariants");
        }
    }

    /// An `AckedWrite` lets its session's table forget the results below the client's
    /// acknowledgement (never its own), so a table holds what the client awaits instead
    /// of the last `dedup_window` results; a stray copy of a forgotten write is refused,
    /// never applied again, and a retry of a write above the acknowledgement still gets
    /// its result.
    #[test]
    fn an_acked_write_forgets_the_results_below_the_acknowledgement() {
        let mut h = Harness::with_limits(MachineLimits {
            max_data_bytes: 64,
            dedup_window: 100,
        });
        let s = h.open();
        let acked = |xid: u64, path: String, answered_below: u64| EntryBody::AckedWrite {
            session_id: s,
            xid,
            op: create_op(&path, CreateMode::Persistent),
            answered_below,
        };
        // Unacknowledged, the table keeps every result (within the window).
        for xid in 1..=10 {
            h.apply(acked(xid, format!("/n{xid}"), 0));
        }
        assert_eq!(h.m.remembered_results(s), 10);
        // Xids 1 to 7 answered: forgotten once the next write applies.
        let eleven = h.apply(acked(11, "/n11".into(), 8));
        assert!(matches!(eleven.result, Some(Ok(_))), "{eleven:?}");
        assert_eq!(h.m.remembered_results(s), 4, "8, 9, 10 and 11");
        // A stray copy of a forgotten write is refused and changes nothing.
        let count = h.m.node_count();
        let stray = h.apply(acked(3, "/n3".into(), 0));
        let refusal = stray.result.expect("r").expect_err("stale");
        assert_eq!(refusal.code, ErrorCode::StaleRequest);
        assert!(stray.changes.is_empty());
        assert_eq!(h.m.node_count(), count);
        // A retry of an unacknowledged write gets its remembered result.
        let retry = h.apply(acked(9, "/n9".into(), 8));
        assert_eq!(h.m.cached_result(s, 9), retry.result);
        assert!(matches!(retry.result, Some(Ok(OpResult::Created { .. }))));
        // An acknowledgement past the write's own xid keeps the write's result: it is
        // capped there.
        let twelve = h.apply(acked(12, "/n12".into(), 1_000));
        assert_eq!(h.m.cached_result(s, 12), twelve.result);
        assert_eq!(h.m.remembered_results(s), 1);
        // A lower acknowledgement than one applied before changes nothing.
        h.apply(acked(13, "/n13".into(), 2));
        assert_eq!(h.m.remembered_results(s), 2);
        let stale = h.apply(acked(11, "/n11".into(), 0));
        assert_eq!(
            stale.result.expect("r").expect_err("stale").code,
            ErrorCode::StaleRequest
        );
        // A plain `OrderedWrite` forgets nothing.
        h.apply(EntryBody::OrderedWrite {
            session_id: s,
            xid: 14,
            op: create_op("/n14", CreateMode::Persistent),
        });
        assert_eq!(h.m.remembered_results(s), 3);
        // The trimmed table and its floor survive a snapshot round trip.
        let bytes =
            bincode::serde::encode_to_vec(&h.m, bincode::config::standard()).expect("encode");
        let (mut back, _): (StateMachine, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(back.state_hash(), h.m.state_hash());
        assert_eq!(back.remembered_results(s), 3);
        let zxid = h.m.last_zxid() + 1;
        let stray = back.apply(zxid, &Entry::new(0, acked(10, "/n10".into(), 0)));
        assert_eq!(
            stray.result.expect("r").expect_err("stale").code,
            ErrorCode::StaleRequest
        );
        h.m.check_invariants().expect("invariants");
    }

    /// A snapshot keeps what the order rule needs (each session's highest xid and its
    /// refusals), so a node that installed one decides the next entry as the others do.
    #[test]
    fn the_order_rule_survives_a_snapshot() {
        let mut h = Harness::new();
        let s = h.open();
        let ordered = |xid, path: &str| EntryBody::OrderedWrite {
            session_id: s,
            xid,
            op: create_op(path, CreateMode::Persistent),
        };
        h.apply(ordered(5, "/a"));
        let refused = h.apply(ordered(4, "/b"));
        let bytes =
            bincode::serde::encode_to_vec(&h.m, bincode::config::standard()).expect("encode");
        let (mut back, _): (StateMachine, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(back.state_hash(), h.m.state_hash());
        let zxid = h.m.last_zxid() + 1;
        let again = back.apply(zxid, &Entry::new(0, ordered(4, "/b")));
        assert_eq!(again.result, refused.result);
        let stale = back.apply(zxid + 1, &Entry::new(0, ordered(3, "/c")));
        assert_eq!(
            stale.result.expect("r").expect_err("stale").code,
            ErrorCode::StaleRequest
        );
    }

    #[test]
    fn entries_out_of_zxid_order_are_refused() {
        let mut h = Harness::new();
        let s = h.open();
        let hash = h.m.state_hash();
        let applied = h.m.apply(
            s,
            &Entry::new(
                0,
                EntryBody::OpenSession {
                    secret: 1,
                    ttl_ms: 1,
                },
            ),
        );
        assert_eq!(
            applied.result.expect("r").expect_err("refused").code,
            ErrorCode::RuntimeInconsistency
        );
        assert_eq!(h.m.state_hash(), hash);
    }

    #[test]
    fn reads_validate_and_report_missing_nodes() {
        let mut h = Harness::new();
        let s = h.open();
        for p in ["/b", "/a", "/c", "/a/x"] {
            h.create(s, p, CreateMode::Persistent).expect("create");
        }
        assert_eq!(
            h.m.exists("bad").expect_err("invalid").code,
            ErrorCode::InvalidPath
        );
        assert_eq!(h.m.exists("/zz").expect("valid"), None);
        assert_eq!(
            h.m.get_data("/zz").expect_err("missing").code,
            ErrorCode::NoNode
        );
        assert_eq!(
            h.m.get_data("/a/").expect_err("invalid").code,
            ErrorCode::InvalidPath
        );
        assert_eq!(
            h.m.get_children("/zz").expect_err("missing").code,
            ErrorCode::NoNode
        );
        let (children, st) = h.m.get_children("/").expect("root");
        assert_eq!(children, vec!["a", "b", "c"]);
        assert_eq!(st.num_children, 3);
        assert_eq!(h.m.get_children("/a").expect("a").0, vec!["x"]);
        assert_eq!(h.m.node_count(), 5);
    }

    proptest! {
        /// Paging through a node's children with any limits lists every name once, in
        /// order; each page keeps to its limits unless it holds a single name, which it
        /// always does while names remain.
        #[test]
        fn children_pages_list_every_name_once_within_their_limits(
            names in prop::collection::btree_set("[a-z]{1,12}", 0..40),
            max_names in 0usize..6,
            max_bytes in 0usize..60,
        ) {
            let mut h = Harness::new();
            let s = h.open();
            h.create(s, "/d", CreateMode::Persistent).expect("create /d");
            for name in &names {
                h.create(s, &format!("/d/{name}"), CreateMode::Persistent).expect("create");
            }
            let mut listed = Vec::new();
            let mut after = String::new();
            for _ in 0..=names.len() {
                let (page, stat, more) =
                    h.m.children_page("/d", &after, max_names, max_bytes).expect("page");
                prop_assert_eq!(stat.num_children as usize, names.len());
                let bytes: usize = page.iter().map(|n| n.len() + 8).sum();
                prop_assert!(
                    page.len() == 1 || (page.len() <= max_names && bytes <= max_bytes),
                    "page {:?} over {} names / {} bytes", page, max_names, max_bytes
                );
                prop_assert_eq!(page.is_empty(), listed.len() == names.len());
                listed.extend(page.iter().cloned());
                prop_assert_eq!(more, listed.len() < names.len());
                match page.last() {
                    Some(last) if more => after = last.clone(),
                    _ => break,
                }
            }
            let all: Vec<String> = names.into_iter().collect();
            prop_assert_eq!(listed, all);
        }
    }

    #[test]
    fn a_children_page_starts_after_any_name_and_reports_missing_nodes() {
        let mut h = Harness::new();
        let s = h.open();
        for p in ["/d", "/d/b", "/d/d"] {
            h.create(s, p, CreateMode::Persistent).expect("create");
        }
        // `after` need not be a child: paging goes on after a name deleted meanwhile.
        let (page, _, more) = h.m.children_page("/d", "c", 10, 1000).expect("page");
        assert_eq!((page, more), (vec!["d".to_string()], false));
        let (page, _, more) = h.m.children_page("/d", "d", 10, 1000).expect("page");
        assert_eq!((page, more), (Vec::<String>::new(), false));
        let code = |path| h.m.children_page(path, "", 1, 1).expect_err("error").code;
        assert_eq!(code("/zz"), ErrorCode::NoNode);
        assert_eq!(code("zz"), ErrorCode::InvalidPath);
    }

    /// Applying an entry does not depend on the machine's limits: nodes whose
    /// `max_data_bytes` differ (a rolling restart that changes it) apply writes carrying
    /// more data than the smaller limit alike. The limit is checked when a node admits a
    /// client's write (`admit`), before it is proposed; it used to be checked while
    /// applying, and the two nodes' states diverged.
    #[test]
    fn applying_a_write_does_not_depend_on_the_limits() {
        let limits = |max_data_bytes| MachineLimits {
            max_data_bytes,
            dedup_window: 4,
        };
        let mut small = Harness::with_limits(limits(64));
        let mut large = Harness::with_limits(limits(4096));
        let data = vec![7u8; 100];
        let create = |path: &str| CreateRequest {
            path: path.to_string(),
            data: data.clone(),
            mode: CreateMode::Persistent,
            make_parents: false,
        };
        let lock = Op::Lock(corral_protocol::LockRequest {
            lock: "/l".to_string(),
            kind: corral_protocol::LockKind::Exclusive,
            try_only: false,
            lease: None,
            lock_delay_ms: 0,
            data: data.clone(),
        });
        let writes = [
            Op::Create(create("/a")),
            Op::SetData {
                path: "/a".to_string(),
                data: vec![8; 200],
                version: None,
            },
            Op::Multi(vec![MultiOp::Create(create("/b"))]),
            lock,
        ];
        for op in &writes {
            let refused = small.m.admit(op).expect_err("over the small limit");
            assert_eq!(refused.code, ErrorCode::DataTooLarge, "{op:?}");
            assert!(large.m.admit(op).is_ok(), "{op:?}");
        }
        for h in [&mut small, &mut large] {
            let s = h.open();
            for op in &writes {
                let result = h.write_applied(s, op.clone()).result;
                assert!(matches!(result, Some(Ok(_))), "{op:?}: {result:?}");
            }
        }
        // The same state, whatever each node's max_data_bytes.
        assert_eq!(small.m.state_hash(), large.m.state_hash());
    }

    #[test]
    fn snapshot_round_trip_preserves_the_state_hash() {
        let mut h = Harness::new();
        let s = h.open();
        h.create(s, "/a", CreateMode::Container).expect("create");
        h.create(s, "/a/n-", CreateMode::EphemeralSequential)
            .expect("create");
        h.write(
            s,
            Op::SetData {
                path: "/a".into(),
                data: vec![0, 255, 3],
                version: None,
            },
        )
        .expect("set");
        let bytes =
            bincode::serde::encode_to_vec(&h.m, bincode::config::standard()).expect("encode");
        let (back, used): (StateMachine, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(used, bytes.len());
        assert_eq!(back.state_hash(), h.m.state_hash());
        assert_eq!(back.tree(), h.m.tree());
        assert_eq!(back.last_zxid(), h.m.last_zxid());
        assert_eq!(back.last_xid(s), h.m.last_xid(s));
        assert!(back.check_invariants().is_ok());
        // And the restored machine keeps going identically.
        let mut h2 = Harness {
            m: back,
            zxid: h.zxid,
            xids: h.xids.clone(),
        };
        let r1 = h.create(s, "/a/n-", CreateMode::EphemeralSequential);
        let r2 = h2.create(s, "/a/n-", CreateMode::EphemeralSequential);
        assert_eq!(r1, r2);
        assert_eq!(h.m.state_hash(), h2.m.state_hash());
    }

    #[test]
    fn the_hash_sees_every_part_of_the_state() {
        let mut h = Harness::new();
        let s = h.open();
        let base = h.m.state_hash();
        let mut other = h.m.clone();
        other.apply(h.zxid + 1, &Entry::new(0, EntryBody::Noop { barrier: 0 }));
        assert_ne!(other.state_hash(), base, "last_zxid");
        let mut other = h.m.clone();
        other.apply(
            h.zxid + 1,
            &Entry::new(
                0,
                EntryBody::Write {
                    session_id: s,
                    xid: 9,
                    op: Op::Ping,
                },
            ),
        );
        assert_ne!(other.state_hash(), base, "dedup table");
        h.create(s, "/a", CreateMode::Persistent).expect("create");
        let mut x = h.m.clone();
        let mut y = h.m.clone();
        let set = |data: &[u8]| {
            Entry::new(
                5,
                EntryBody::Write {
                    session_id: s,
                    xid: 100,
                    op: Op::SetData {
                        path: "/a".into(),
                        data: data.to_vec(),
                        version: None,
                    },
                },
            )
        };
        x.apply(h.zxid + 1, &set(b"1"));
        y.apply(h.zxid + 1, &set(b"2"));
        assert_ne!(x.tree_hash(), y.tree_hash(), "data");
    }

    // ----- property tests -----

    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn path_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(0..NAMES.len(), 1..3)
            .prop_map(|segs| segs.iter().map(|&i| format!("/{}", NAMES[i])).collect())
    }

    fn mode_strategy() -> impl Strategy<Value = CreateMode> {
        prop_oneof![
            Just(CreateMode::Persistent),
            Just(CreateMode::PersistentSequential),
            Just(CreateMode::Ephemeral),
            Just(CreateMode::EphemeralSequential),
            Just(CreateMode::Container),
        ]
    }

    fn multi_op_strategy() -> impl Strategy<Value = MultiOp> {
        prop_oneof![
            3 => (path_strategy(), mode_strategy(), any::<bool>(), 0usize..3).prop_map(
                |(path, mode, make_parents, len)| MultiOp::Create(CreateRequest {
                    path,
                    data: vec![7; len],
                    mode,
                    make_parents,
                })
            ),
            1 => (path_strategy(), proptest::option::of(0u32..2))
                .prop_map(|(path, version)| MultiOp::Delete { path, version }),
            1 => (path_strategy(), 0usize..68, proptest::option::of(0u32..2)).prop_map(
                |(path, len, version)| MultiOp::SetData {
                    path,
                    data: vec![1; len],
                    version
                }
            ),
            1 => (path_strategy(), 0u32..2).prop_map(|(path, version)| MultiOp::Check { path, version }),
        ]
    }

    /// One step of a random history; sessions are picked by index among the live ones.
    #[derive(Debug, Clone)]
    enum Step {
        Open,
        Close(usize),
        Expire(Vec<usize>),
        Op(usize, MultiOp),
        Multi(usize, Vec<MultiOp>),
        /// Resend the session's latest xid with whatever op.
        Retry(usize, MultiOp),
        Noop,
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Open),
            1 => (0usize..4).prop_map(Step::Close),
            1 => proptest::collection::vec(0usize..4, 0..3).prop_map(Step::Expire),
            10 => (0usize..4, multi_op_strategy()).prop_map(|(s, op)| Step::Op(s, op)),
            3 => (0usize..4, proptest::collection::vec(multi_op_strategy(), 0..5))
                .prop_map(|(s, ops)| Step::Multi(s, ops)),
            1 => (0usize..4, multi_op_strategy()).prop_map(|(s, op)| Step::Retry(s, op)),
            1 => Just(Step::Noop),
        ]
    }

    fn to_op(op: MultiOp) -> Op {
        match op {
            MultiOp::Create(req) => Op::Create(req),
            MultiOp::Delete { path, version } => Op::Delete { path, version },
            MultiOp::SetData {
                path,
                data,
                version,
            } => Op::SetData {
                path,
                data,
                version,
            },
            // A lone check becomes a one-op multi.
            check @ (MultiOp::Check { .. } | MultiOp::CheckLock { .. }) => Op::Multi(vec![check]),
        }
    }

    /// Turns steps into entries against the sessions of the evolving machine `m`.
    fn run(steps: &[Step], m: &mut StateMachine) -> Result<Vec<Entry>, TestCaseError> {
        let mut entries = Vec::new();
        let mut xids: BTreeMap<u64, u64> = BTreeMap::new();
        let pick = |m: &StateMachine, i: usize| -> u64 {
            let ids: Vec<u64> = m.sessions().map(|s| s.id).collect();
            if ids.is_empty() {
                424_242
            } else {
                ids[i % ids.len()]
            }
        };
        for (i, step) in steps.iter().enumerate() {
            let zxid = m.last_zxid() + 1;
            let body = match step.clone() {
                Step::Open => EntryBody::OpenSession {
                    secret: zxid * 31,
                    ttl_ms: 1_000,
                },
                Step::Close(s) => EntryBody::CloseSession {
                    session_id: pick(m, s),
                },
                Step::Expire(ss) => EntryBody::ExpireSessions {
                    session_ids: ss.iter().map(|&s| pick(m, s)).collect(),
                },
                Step::Op(s, op) => {
                    let session_id = pick(m, s);
                    let xid = xids.entry(session_id).or_insert(0);
                    *xid += 1;
                    EntryBody::Write {
                        session_id,
                        xid: *xid,
                        op: to_op(op),
                    }
                }
                Step::Retry(s, op) => {
                    // The latest xid again (or 0, below anything the session used).
                    let session_id = pick(m, s);
                    let xid = xids.get(&session_id).copied().unwrap_or(0);
                    EntryBody::Write {
                        session_id,
                        xid,
                        op: to_op(op),
                    }
                }
                Step::Multi(s, ops) => {
                    let session_id = pick(m, s);
                    let xid = xids.entry(session_id).or_insert(0);
                    *xid += 1;
                    EntryBody::Write {
                        session_id,
                        xid: *xid,
                        op: Op::Multi(ops),
                    }
                }
                Step::Noop => EntryBody::Noop { barrier: 0 },
            };
            let entry = Entry::new(1_000 * i as i64, body);
            let tree_before = m.tree_hash();
            let applied = m.apply(zxid, &entry);
            if let Err(e) = m.check_invariants() {
                return Err(TestCaseError::fail(format!("after step {i} {step:?}: {e}")));
            }
            prop_assert_eq!(m.last_zxid(), zxid);
            if let (EntryBody::Write { .. }, Some(Err(_))) = (&*entry.body, &applied.result) {
                prop_assert!(applied.changes.is_empty());
                prop_assert_eq!(m.tree_hash(), tree_before, "failed write changed the tree");
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn same_entries_give_same_state(steps in proptest::collection::vec(step_strategy(), 1..60)) {
            let limits = MachineLimits { max_data_bytes: 64, dedup_window: 3 };
            let mut a = StateMachine::new(limits);
            let steps: Vec<Step> = [Step::Open, Step::Open].into_iter().chain(steps).collect();
            let entries = run(&steps, &mut a)?;
            let mut b = StateMachine::new(limits);
            for (i, entry) in entries.iter().enumerate() {
                let applied = b.apply(i as u64 + 1, entry);
                prop_assert!(applied.zxid == i as u64 + 1);
            }
            prop_assert_eq!(a.state_hash(), b.state_hash());
            prop_assert_eq!(a.tree(), b.tree());
            // A snapshot restores the same state.
            let bytes = bincode::serde::encode_to_vec(&a, bincode::config::standard())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (c, _): (StateMachine, usize) =
                bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(c.state_hash(), a.state_hash());
        }
    }
}

#[cfg(test)]
#[path = "machine_lock_tests.rs"]
mod machine_lock_tests;

#[path = "machine_multi_lock.rs"]
mod multi_lock;

#[path = "machine_catch_up.rs"]
mod catch_up;
