//! Requests a client can make and the results the server answers with.

use crate::error::ErrorInfo;
use serde::{Deserialize, Serialize};

/// Metadata of a znode, with ZooKeeper's fields and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stat {
    /// The zxid of the transaction that created the node.
    pub czxid: u64,
    /// The zxid of the transaction that last changed the node's data.
    pub mzxid: u64,
    /// The zxid of the transaction that last added or removed a child.
    pub pzxid: u64,
    /// Creation time, milliseconds since the Unix epoch, as stamped by the leader.
    pub ctime_ms: i64,
    /// Last data change time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    /// Number of changes to the node's data.
    pub version: u32,
    /// Number of changes to the node's children.
    pub cversion: u32,
    /// The session that owns this ephemeral node, or 0 for a non-ephemeral node.
    pub ephemeral_owner: u64,
    /// Length of the node's data in bytes.
    pub data_length: u32,
    /// Number of children.
    pub num_children: u32,
}

/// How a node is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CreateMode {
    /// Lives until deleted.
    Persistent,
    /// Persistent, with a per-parent counter of ten zero-padded digits appended to the name.
    PersistentSequential,
    /// Deleted when the creating session ends.
    Ephemeral,
    /// Ephemeral and sequential.
    EphemeralSequential,
    /// Persistent, but deleted by the server once its last child is deleted.
    Container,
}

impl CreateMode {
    /// Whether the node dies with its session.
    pub fn is_ephemeral(self) -> bool {
        matches!(
            self,
            CreateMode::Ephemeral | CreateMode::EphemeralSequential
        )
    }

    /// Whether a counter is appended to the name.
    pub fn is_sequential(self) -> bool {
        matches!(
            self,
            CreateMode::PersistentSequential | CreateMode::EphemeralSequential
        )
    }
}

/// Arguments of a create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The path of the node (for sequential nodes: the prefix of the name).
    pub path: String,
    /// The initial data.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// How the node is created.
    pub mode: CreateMode,
    /// Create missing parents as persistent nodes (containers if `mode` is `Container`).
    pub make_parents: bool,
}

/// Which kind of watch a remove-watches request removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WatcherKind {
    /// Data and exists watches.
    Data,
    /// Child watches.
    Children,
    /// Persistent watches (recursive or not).
    Persistent,
    /// Every kind.
    Any,
}

/// The mode of a persistent watch added with [`Op::AddWatch`] (ZooKeeper 3.6 `addWatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddWatchMode {
    /// Fires on data changes, creation and deletion of the node, and changes to its children
    /// list; stays registered.
    Persistent,
    /// Fires on creation, deletion and data changes of the node and every descendant;
    /// stays registered.
    PersistentRecursive,
}

/// One operation of an atomic [`Op::Multi`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MultiOp {
    /// Create a node.
    Create(CreateRequest),
    /// Delete a node, optionally only at an expected version.
    Delete {
        /// The node.
        path: String,
        /// The expected version, or `None` for any.
        version: Option<u32>,
    },
    /// Replace a node's data, optionally only at an expected version.
    SetData {
        /// The node.
        path: String,
        /// The new data.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// The expected version, or `None` for any.
        version: Option<u32>,
    },
    /// Fail the transaction unless the node exists at this version.
    Check {
        /// The node.
        path: String,
        /// The expected version.
        version: u32,
    },
    /// Fail the transaction with `LockNotHeld` unless the fencing `token` currently holds
    /// the lock named `lock` (the holder's queue node was created at zxid `token` and is
    /// granted). Guards writes to corral itself against a former holder.
    CheckLock {
        /// The lock's name (its directory node).
        lock: String,
        /// The fencing token of the grant.
        token: u64,
    },
}

/// The result of one operation of a successful multi.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MultiResult {
    /// The node was created at this path (with the sequence suffix, if any).
    Created {
        /// The actual path.
        path: String,
        /// The new node's stat.
        stat: Stat,
    },
    /// The node was deleted.
    Deleted,
    /// The data was set.
    SetData {
        /// The node's stat after the change.
        stat: Stat,
    },
    /// The check passed.
    Checked,
    /// The lock check passed.
    LockChecked,
}

/// Watches to re-register after reconnecting; see [`Op::SetWatches`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchSet {
    /// Paths with a one-shot data watch (from `get_data`).
    pub data: Vec<String>,
    /// Paths with a one-shot exists watch.
    pub exist: Vec<String>,
    /// Paths with a one-shot child watch.
    pub child: Vec<String>,
    /// Paths with a persistent watch.
    pub persistent: Vec<String>,
    /// Paths with a persistent recursive watch.
    pub persistent_recursive: Vec<String>,
}

impl WatchSet {
    /// Total number of watches in the set.
    pub fn len(&self) -> usize {
        self.data.len()
            + self.exist.len()
            + self.child.len()
            + self.persistent.len()
            + self.persistent_recursive.len()
    }

    /// Whether the set holds no watch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What kind of lock a [`LockRequest`] asks for. Every request on one lock must use the
/// same family: exclusive, read-write, or a semaphore with the same number of permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// One holder at a time.
    Exclusive,
    /// Shared with other readers; granted when no writer is queued ahead (fair: a waiting
    /// writer is not overtaken by later readers).
    Read,
    /// Exclusive with respect to readers and writers.
    Write,
    /// Up to `permits` holders at a time.
    Semaphore {
        /// Number of holders allowed at once.
        permits: u32,
    },
}

/// Arguments of [`Op::Lock`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    /// The lock's name: a node whose children form the queue (created as a container,
    /// with missing parents, if absent). Queue entries are ephemeral sequential nodes
    /// named `<prefix>-<ten digits>`, visible with `get_children`.
    pub lock: String,
    /// The kind of lock.
    pub kind: LockKind,
    /// Fail at once with `LockHeld` instead of queueing (and leave no node behind).
    pub try_only: bool,
    /// Hold the lock under this lease instead of the session (see [`Op::GrantLease`]).
    pub lease: Option<u64>,
    /// Lock-delay: after a holder's lease expires (not after a release), grant nobody
    /// for this long, in milliseconds, so that a paused former holder can notice. Set
    /// by the request that creates the lock; 0 for none.
    pub lock_delay_ms: u64,
    /// Data stored in the queue node (e.g. who holds it).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// One lock of a [`MultiLockRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiLockItem {
    /// The lock's name (its directory node, created as a container if absent).
    pub lock: String,
    /// The kind asked for on this lock.
    pub kind: LockKind,
}

/// Arguments of [`Op::LockMany`]: a set of distinct locks acquired all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiLockRequest {
    /// The locks, at least one and at most [`MAX_LOCKS_PER_MULTI_LOCK`], no name twice.
    pub locks: Vec<MultiLockItem>,
    /// Fail at once with `LockHeld` unless every lock would be granted now (and leave
    /// no node behind).
    pub try_only: bool,
    /// Hold the locks under this lease instead of the session.
    pub lease: Option<u64>,
    /// Lock-delay in milliseconds for the locks this request creates (0: none).
    pub lock_delay_ms: u64,
    /// Data stored in every queue node.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// What an [`OpResult::ChildrenPage`] or an [`OpResult::LocksPage`] keeps free for its
/// envelope (message and result tags, xid, zxid, stat, the list's length, `more`): a
/// page's names take at most `min(max_bytes, server's max_frame_bytes) -
/// CHILDREN_PAGE_HEADROOM_BYTES` bytes encoded, a name costing its length plus 8; a
/// page's locks as much, each costing at most [`LockState::encoded_bytes_bound`].
pub const CHILDREN_PAGE_HEADROOM_BYTES: usize = 1024;

/// The most locks one [`Op::LockMany`] may name.
pub const MAX_LOCKS_PER_MULTI_LOCK: usize = 64;

/// One queue node of a [`OpResult::MultiLocked`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedNode {
    /// The lock's name.
    pub lock: String,
    /// The queue node.
    pub node: String,
    /// The fencing token (the zxid of the `LockMany`, the same for every node).
    pub token: u64,
}

/// One queue entry of a lock, for [`OpResult::Locks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    /// The queue node's path.
    pub node: String,
    /// Its kind.
    pub kind: LockKind,
    /// The session holding or waiting.
    pub session: u64,
    /// The lease it is held under (the session id when it is held under the session).
    pub lease: u64,
    /// The fencing token (the node's creation zxid).
    pub token: u64,
    /// Whether it holds the lock.
    pub granted: bool,
}

/// A lock and its queue, for [`OpResult::Locks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// The lock's name.
    pub lock: String,
    /// Lock-delay configured on the lock, in milliseconds.
    pub lock_delay_ms: u64,
    /// Until when (leader wall clock, ms since the epoch) nobody is granted after an
    /// expiry; 0 if no delay is running.
    pub delayed_until_ms: i64,
    /// Holders and waiters in queue order.
    pub queue: Vec<LockEntry>,
}

impl LockState {
    /// An upper bound on this lock's encoded size in bytes, computed without encoding:
    /// what a [`OpResult::LocksPage`] counts against its byte budget.
    ///
    /// ```
    /// use corral_protocol::LockState;
    /// let lock = LockState {
    ///     lock: "/jobs/a".into(),
    ///     lock_delay_ms: 0,
    ///     delayed_until_ms: 0,
    ///     queue: Vec::new(),
    /// };
    /// assert!(lock.encoded_bytes_bound() >= "/jobs/a".len());
    /// ```
    pub fn encoded_bytes_bound(&self) -> usize {
        // The name (length prefix and bytes), the lock-delay, the running delay and the
        // queue's length; per entry its node, kind (tag and permits), session, lease,
        // token and granted flag.
        let entries: usize = self.queue.iter().map(|e| e.node.len() + 48).sum();
        self.lock.len() + 32 + entries
    }
}

/// A request operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create a node.
    Create(CreateRequest),
    /// Delete a node (it must have no children).
    Delete {
        /// The node.
        path: String,
        /// The expected version, or `None` for any.
        version: Option<u32>,
    },
    /// The node's stat, or `None`; optionally leave a one-shot exists watch (fires on
    /// create, delete, or data change).
    Exists {
        /// The node.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// The node's data and stat; optionally leave a one-shot data watch.
    GetData {
        /// The node.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// Replace the node's data.
    SetData {
        /// The node.
        path: String,
        /// The new data.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// The expected version, or `None` for any.
        version: Option<u32>,
    },
    /// The node's children (names, sorted) and stat; optionally leave a one-shot child watch.
    GetChildren {
        /// The node.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// Apply all operations atomically under one zxid, or none of them.
    Multi(Vec<MultiOp>),
    /// Wait until every write acknowledged before this request is visible on this server.
    Sync {
        /// The path (kept for ZooKeeper compatibility; the barrier covers the whole tree).
        path: String,
    },
    /// Keep the session alive. The server answers with `Pong`.
    Ping,
    /// End the session now: its ephemeral nodes are deleted.
    CloseSession,
    /// Add a persistent watch.
    AddWatch {
        /// The node (need not exist).
        path: String,
        /// Persistent or persistent recursive.
        mode: AddWatchMode,
    },
    /// Remove this connection's watches of a kind on a path.
    RemoveWatches {
        /// The node.
        path: String,
        /// Which kind.
        kind: WatcherKind,
    },
    /// Re-register watches after a reconnect. For every one-shot watch whose node changed
    /// after `last_zxid`, the matching event fires at once, so no change is missed while
    /// the client was away.
    SetWatches {
        /// The zxid of the last response the client got. Not of an event: events share
        /// zxids (a multi's changes, a snapshot install's collapsed events), and one lost
        /// with the connection after another of its zxid arrived would be skipped.
        last_zxid: u64,
        /// The watches.
        watches: WatchSet,
    },
    /// Acquire a lock: answered `Locked` if granted at once, `Queued` if the request
    /// waits (a `LockGranted` message follows when it is granted), or `LockHeld` for a
    /// `try_only` request that would wait.
    Lock(LockRequest),
    /// Release a lock or leave its queue, by queue node path. Idempotent: answers
    /// `Unlocked { released: false }` if no node has that path; `NotLockOwner` if it
    /// belongs to another session. A path can name several nodes over time (a lock's
    /// directory is a container: recreated, its sequence counter starts again at 0), so a
    /// holder releases with [`Op::Release`], which names its node exactly.
    Unlock {
        /// The queue node from `Locked` or `Queued`.
        node: String,
    },
    /// Create a lease with its own TTL, owned by this session (it ends with the session
    /// at the latest). Locks acquired under it are released when it expires.
    GrantLease {
        /// Requested TTL, clamped to the server's session TTL limits.
        ttl_ms: u64,
    },
    /// Renew a lease: it lives a TTL from when the leader receives this. Answered only
    /// once the node that decides expiry has the renewal.
    RenewLease {
        /// The lease.
        lease_id: u64,
    },
    /// End a lease now, releasing every lock held under it.
    RevokeLease {
        /// The lease.
        lease_id: u64,
    },
    /// Describe the locks at and below a path.
    GetLocks {
        /// The path.
        path: String,
    },
    /// Describe the server answering (role, leader, zxids, sizes, counts). A read that
    /// the server answers from its own state, without the log.
    ServerStatus,
    /// Acquire several locks all or nothing: the session is queued on every one and is
    /// granted all of them in one transaction, when it can hold all at once. Answered
    /// `MultiLocked` (granted at once, or queued: a `LockGranted` message per lock
    /// follows, all with the same zxid), `LockHeld` for a `try_only` request that would
    /// wait, or `Deadlock` if waiting would close a cycle of waiting sessions.
    LockMany(MultiLockRequest),
    /// Release a held lock or leave a lock's queue: the queue node `node` created with
    /// fencing `token` (both from `Locked`, `Queued` or `MultiLocked`). Idempotent and
    /// exact: answers `Unlocked { released: false }` if that node is gone, even when a
    /// later node has the same path; `NotLockOwner` if it belongs to another session.
    /// Releasing one node of a multi-lock releases the whole group.
    Release {
        /// The queue node's path.
        node: String,
        /// The fencing token it was answered with (its creation zxid).
        token: u64,
    },
    /// One page of the node's children: the names after `after`, sorted, at most
    /// `max_names` of them and as many as fit in `max_bytes` (and in the server's own
    /// `max_frame_bytes`), but always at least one if any remain. For listings too large
    /// for one frame. Each page is read from one state; compare the pages'
    /// `stat.cversion` to know whether children changed between them.
    GetChildrenPage {
        /// The node.
        path: String,
        /// List the names strictly after this one in byte order; `""` for the first page.
        after: String,
        /// Most names in the page.
        max_names: u32,
        /// The largest response the client accepts (its `max_frame_bytes`).
        max_bytes: u32,
    },
    /// Tell the server that every request of this session with an xid below
    /// `answered_below` has been answered, so none of them will be sent again: the
    /// session's next write lets the replicated state forget their remembered results
    /// (see "Xids and deduplication" in PROTOCOL.md). Answered `Pong`. Not a write: it
    /// is not deduplicated and changes nothing until the session writes. A server older
    /// than this operation answers `Unimplemented`; stop sending it then.
    Acknowledge {
        /// One past the highest xid below which every request was answered: the lowest
        /// xid still awaiting an answer, or the next xid if none does. The server caps
        /// it at this request's own xid.
        answered_below: u64,
    },
    /// Describe the locks of the request that created a queue node: for a node of a
    /// `LockMany`, every lock that request queued on (the node's own included), in
    /// request order; for any other queue node, its own lock. Answered `Locks`, or
    /// `NoNode` if `node` is not a lock's queue node now. It costs what the group
    /// holds, where `GetLocks` on `/` would describe every lock. A server older than
    /// this operation answers `Unimplemented`.
    GetLockGroup {
        /// The queue node's path.
        node: String,
    },
    /// One page of the locks at and below a path (what `GetLocks` describes, for more
    /// locks than one frame holds): those whose names sort strictly after `after` in
    /// byte order, in that order, at most `max_locks` of them and as many as fit in
    /// `max_bytes` (and in the server's own `max_frame_bytes`), but always at least one
    /// if any remain. Each page is read from one state. A server older than this
    /// operation answers `Unimplemented`.
    GetLocksPage {
        /// The path.
        path: String,
        /// List the locks strictly after this name; `""` for the first page.
        after: String,
        /// Most locks in the page.
        max_locks: u32,
        /// The largest response the client accepts (its `max_frame_bytes`).
        max_bytes: u32,
    },
}

/// How many operations this protocol version knows: an [`Op`] tag at or above it is an
/// operation of a newer version, which a server answers with `Unimplemented`.
pub const OP_COUNT: u32 = 26;

impl Op {
    /// Whether this operation changes replicated state (and so goes through the log and
    /// is deduplicated by sequence number).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Create(_)
                | Op::Delete { .. }
                | Op::SetData { .. }
                | Op::Multi(_)
                | Op::CloseSession
                | Op::Lock(_)
                | Op::Unlock { .. }
                | Op::Release { .. }
                | Op::GrantLease { .. }
                | Op::RevokeLease { .. }
                | Op::LockMany(_)
        )
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create(_) => "create",
            Op::Delete { .. } => "delete",
            Op::Exists { .. } => "exists",
            Op::GetData { .. } => "get_data",
            Op::SetData { .. } => "set_data",
            Op::GetChildren { .. } => "get_children",
            Op::Multi(_) => "multi",
            Op::Sync { .. } => "sync",
            Op::Ping => "ping",
            Op::CloseSession => "close_session",
            Op::AddWatch { .. } => "add_watch",
            Op::RemoveWatches { .. } => "remove_watches",
            Op::SetWatches { .. } => "set_watches",
            Op::Lock(_) => "lock",
            Op::Unlock { .. } => "unlock",
            Op::GrantLease { .. } => "grant_lease",
            Op::RenewLease { .. } => "renew_lease",
            Op::RevokeLease { .. } => "revoke_lease",
            Op::GetLocks { .. } => "get_locks",
            Op::ServerStatus => "server_status",
            Op::LockMany(_) => "lock_many",
            Op::Release { .. } => "release",
            Op::GetChildrenPage { .. } => "get_children_page",
            Op::Acknowledge { .. } => "acknowledge",
            Op::GetLockGroup { .. } => "get_lock_group",
            Op::GetLocksPage { .. } => "get_locks_page",
        }
    }
}

/// The successful result of an [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// The node was created at this path (with the sequence suffix, if any).
    Created {
        /// The actual path.
        path: String,
        /// The new node's stat.
        stat: Stat,
    },
    /// The node was deleted.
    Deleted,
    /// The node's stat, or `None` if it does not exist.
    Exists(Option<Stat>),
    /// The node's data and stat.
    Data {
        /// The data.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// The stat.
        stat: Stat,
    },
    /// The stat after a set_data.
    SetData {
        /// The stat.
        stat: Stat,
    },
    /// Children names (sorted) and the parent's stat.
    Children {
        /// Child names, not full paths.
        children: Vec<String>,
        /// The parent's stat.
        stat: Stat,
    },
    /// Per-operation results of a successful multi, in order.
    Multi(Vec<MultiResult>),
    /// Every write acknowledged before the sync is now visible here.
    Synced,
    /// Answer to a ping.
    Pong,
    /// The session is closed.
    Closed,
    /// The watch was added, or watches were removed or re-registered.
    WatchesUpdated,
    /// The lock is held: the queue node and the fencing token (the zxid that created
    /// the node; tokens of one lock strictly increase across holders).
    Locked {
        /// The queue node.
        node: String,
        /// The fencing token.
        token: u64,
    },
    /// The request waits in the queue; a `LockGranted` message follows on grant.
    Queued {
        /// The queue node.
        node: String,
        /// The fencing token the grant will carry.
        token: u64,
    },
    /// Released (`true`), or there was nothing to release (`false`: already released,
    /// or lost when its lease expired).
    Unlocked {
        /// Whether a held or queued node was deleted.
        released: bool,
    },
    /// A lease was granted or renewed.
    Lease {
        /// The lease id.
        lease_id: u64,
        /// Its TTL.
        ttl_ms: u64,
    },
    /// The locks at and below the path of a `GetLocks`, or of a `GetLockGroup`'s group.
    Locks(Vec<LockState>),
    /// The answering server's status.
    ServerStatus(Box<crate::status::ServerStatus>),
    /// The answer to a `LockMany`: one queue node per requested lock, in request order.
    MultiLocked {
        /// Whether every lock is held now (`false`: queued on all of them; a
        /// `LockGranted` per node follows, all in the same transaction).
        granted: bool,
        /// The queue nodes with their fencing tokens.
        nodes: Vec<LockedNode>,
    },
    /// One page of a node's children.
    ChildrenPage {
        /// Child names, not full paths, sorted.
        children: Vec<String>,
        /// The parent's stat when this page was read.
        stat: Stat,
        /// Whether names remain after the last one of this page.
        more: bool,
    },
    /// One page of the locks at and below a path, from a `GetLocksPage`.
    LocksPage {
        /// The locks, in path order.
        locks: Vec<LockState>,
        /// Whether locks remain after the last one of this page.
        more: bool,
    },
}

/// A request: a client-chosen id plus an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Strictly increasing per session, starting at `SessionGranted::next_xid` (at least
    /// 1). Matches the response to the request, and for writes is the sequence number
    /// that deduplicates retries: a client that resends a request after a lost answer
    /// must reuse its `xid`, and must never reuse an `xid` for a different request (the
    /// server would answer with the first request's result).
    pub xid: u64,
    /// What to do.
    pub op: Op,
}

/// A response to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The `xid` of the request.
    pub xid: u64,
    /// The zxid of the server's applied state when it answered (the transaction's own zxid
    /// for a successful write). Clients remember the highest they saw.
    pub zxid: u64,
    /// The outcome.
    pub result: Result<OpResult, ErrorInfo>,
}
