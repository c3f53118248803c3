//! The node core, without IO: inputs in, outputs out.
//!
//! A [`Node`] owns the state machine, the watch registry, the session tracker, the
//! per-connection request queues, and the log of entries that are proposed but not yet
//! durable. It never touches a socket, a file or a clock: the IO shell (`server.rs`)
//! feeds it [`Input`]s stamped with the time, and carries out the [`Output`]s it
//! returns, in order. The simulator of a later issue is another such shell.
//!
//! Order of effects (as in raft-rs): the shell persists a `Persist` batch (one fsync)
//! and only then reports `Persisted`; the node applies durable entries in log order and
//! only then answers the clients. So no client hears of a write the disk does not have.
//!
//! Per connection, responses go out in request order (ZooKeeper's FIFO client order):
//! a write is proposed as soon as it arrives (so writes pipeline into one fsync), but a
//! read is evaluated only when every earlier request of its connection is answered, so
//! it sees the connection's own earlier writes.

use crate::compaction::{self, CompactionPoints};
use crate::machine::{
    Applied, Entry, EntryBody, LockChange, MachineImage, MachineLimits, StateMachine, WriteKind,
};
use crate::replication::log::{Decided, InstallJob, PaxosLog, PeerMsg};
use crate::tracker::SessionTracker;
use crate::watches::{WatchKind, WatchManager};
use corral_protocol::{
    path::validate_path, AddWatchMode, ErrorCode, ErrorInfo, Hello, HelloReply, Op, OpResult,
    Request, Response, ServerMessage, SessionGranted, SessionRequest, WatchEvent,
    CHILDREN_PAGE_HEADROOM_BYTES, MAGIC, OP_COUNT, PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Encodes a log entry as stored in the write-ahead log.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(entry, bincode::config::standard())
}

/// Decodes a log entry stored by [`encode_entry`].
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, bincode::error::DecodeError> {
    let (entry, _) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    Ok(entry)
}

/// Identifies one client connection; chosen by the shell, never reused.
pub type ConnId = u64;

/// The time at which an input happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (any origin); drives session expiry.
    pub mono_ms: u64,
    /// Wall-clock milliseconds since the Unix epoch; stamped into entries (ctime, mtime).
    pub wall_ms: i64,
}

/// Settings of the node core.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (reported to clients).
    pub node_id: u64,
    /// Limits of the replicated state machine.
    pub machine: MachineLimits,
    /// Most sessions alive at once.
    pub max_sessions: usize,
    /// Most requests queued on one connection before new ones are refused.
    pub max_pending_requests_per_connection: usize,
    /// Most watches one session may register on this node.
    pub max_watches_per_session: usize,
    /// Largest the tree may grow ([`StateMachine::state_bytes`]): writes that would take
    /// it past this are refused before they are proposed.
    pub max_state_bytes: u64,
    /// Smallest session TTL granted.
    pub min_session_ttl_ms: u64,
    /// Largest session TTL granted.
    pub max_session_ttl_ms: u64,
    /// Take a snapshot after this many entries since the last one (a cluster: compaction
    /// points at the multiples of this, [`crate::compaction`]).
    pub snapshot_every_entries: u64,
    /// Take a snapshot once the entries since the last one reach this many bytes (a
    /// cluster: the leader marks a compaction point).
    pub snapshot_every_bytes: u64,
    /// Largest frame the server accepts (reported to clients).
    pub max_frame_bytes: usize,
    /// A gap between two ticks longer than this means the node was stalled (paused,
    /// swapped out): session deadlines restart at full TTL instead of expiring everyone.
    pub stall_threshold_ms: u64,
}

/// Something that happened to the node.
#[derive(Debug)]
pub enum Input {
    /// A connection sent its handshake. `secret` is fresh randomness from the shell for
    /// a new session (the core draws no random numbers itself).
    Hello {
        conn: ConnId,
        hello: Hello,
        secret: u64,
    },
    /// A connection sent a request.
    Request { conn: ConnId, request: Request },
    /// A connection sent a request for an operation this version does not know (a
    /// newer client's): it is answered `Unimplemented`.
    UnknownOp {
        conn: ConnId,
        xid: u64,
        op_index: u32,
    },
    /// A connection is gone.
    Disconnected { conn: ConnId },
    /// The persist batch `batch` is durable.
    Persisted { batch: u64 },
    /// Persisting the outstanding batch failed: the disk cannot be trusted.
    PersistFailed { error: String },
    /// Time passed.
    Tick,
    /// A message from another node of the cluster.
    Peer { from: u64, msg: PeerMsg },
    /// The link to a peer was (re)established; `version` is the peer protocol version it
    /// speaks, which says which entries the peer can decode.
    LinkUp { peer: u64, version: u16 },
    /// The link to a peer broke.
    LinkDown { peer: u64 },
    /// The server is shutting down: say goodbye to every connection.
    Shutdown,
    /// The snapshot of an [`Output::Decode`] was decoded (or could not be).
    Decoded {
        /// The job's [`InstallJob::index`].
        index: u64,
        machine: Result<Box<StateMachine>, String>,
    },
}

impl Input {
    /// The input's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Hello { .. } => "hello",
            Input::Request { .. } => "request",
            Input::UnknownOp { .. } => "unknown-op",
            Input::Disconnected { .. } => "disconnected",
            Input::Persisted { .. } => "persisted",
            Input::PersistFailed { .. } => "persist-failed",
            Input::Tick => "tick",
            Input::Peer { .. } => "peer",
            Input::LinkUp { .. } => "link-up",
            Input::LinkDown { .. } => "link-down",
            Input::Shutdown => "shutdown",
            Input::Decoded { .. } => "decoded",
        }
    }
}

/// Something the shell must do, in the order given.
#[derive(Debug)]
pub enum Output {
    /// Answer a handshake. After a `Refused` the shell closes the connection.
    HelloReply { conn: ConnId, reply: HelloReply },
    /// Send a message on a connection.
    Send { conn: ConnId, msg: ServerMessage },
    /// Close a connection after sending what is queued for it.
    Close { conn: ConnId },
    /// Append these records to the write-ahead log in order and make them durable (one
    /// fsync), then report `Persisted { batch }`. At most one batch is outstanding at a
    /// time: the next one collects everything written meanwhile (group commit).
    Persist {
        /// Identifies the batch.
        batch: u64,
        /// Encoded records.
        records: Vec<Vec<u8>>,
        /// In single-node mode the lsn the first record must get (lsn = log index).
        first_lsn: Option<u64>,
        /// The first record is a checkpoint of the whole log: once durable, everything
        /// before it may be deleted.
        starts_with_checkpoint: bool,
    },
    /// Cluster mode: make everything the replicated storage buffered durable (one fsync),
    /// then report `Persisted { batch }`.
    Sync { batch: u64 },
    /// Send a message to another node (dropped if the link is down: senders retry).
    PeerSend { to: u64, msg: PeerMsg },
    /// Save this image of the state machine at log index `index` (encoded where it is
    /// written, off the core: [`MachineImage::encode_snapshot`]); the log up to it may
    /// then be compacted.
    Snapshot { index: u64, image: MachineImage },
    /// Decode this snapshot from the leader off the core (it may take seconds), then
    /// report `Decoded` with the machine. Meanwhile the node applies nothing more.
    Decode(InstallJob),
}

#[derive(Debug)]
enum PendingState {
    /// A read (or local op) waiting for its turn.
    Queued,
    /// A write proposed to the log, waiting to be applied.
    Proposed,
    /// Answered, waiting for earlier requests of the connection.
    Done(Response),
}

#[derive(Debug)]
struct Pending {
    xid: u64,
    op: Op,
    state: PendingState,
}

#[derive(Debug, Default)]
struct Conn {
    session: Option<u64>,
    queue: VecDeque<Pending>,
    /// The session's latest `Acknowledge` on this connection (0: none): every request
    /// of the session below this xid has been answered. Carried by the session's next
    /// writes proposed from here ([`EntryBody::AckedWrite`]).
    answered_below: u64,
}

/// Entries proposed but not yet durable (the single-node log).
#[derive(Debug)]
pub struct LocalLog {
    /// Index of the next entry proposed.
    next_index: u64,
    /// Proposed entries not yet handed to the shell.
    unsent: Vec<(u64, Entry)>,
    /// Entries handed to the shell in a `Persist` and not yet reported durable.
    in_flight: Vec<(u64, Entry)>,
    /// The batch number of `in_flight`.
    batch: u64,
}

/// Where entries go: a local durable log (one node) or the replicated log (a cluster).
#[derive(Debug)]
pub enum Log {
    /// Single node: the node orders, persists and applies entries itself.
    Local(LocalLog),
    /// Cluster member: OmniPaxos orders entries.
    Paxos(Box<PaxosLog>),
}

impl Log {
    /// A single-node log continuing after `last_index`.
    pub fn local(last_index: u64) -> Log {
        Log::Local(LocalLog {
            next_index: last_index + 1,
            unsent: Vec::new(),
            in_flight: Vec::new(),
            batch: 0,
        })
    }
}

/// Counters of this node since it started, and the size of its state (the metrics
/// endpoint exposes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// The tree's estimated size now ([`StateMachine::state_bytes`]); a gauge, not a counter.
    pub state_bytes: u64,
    /// Lock requests granted at once (answered `Locked`).
    pub locks_granted_at_once: u64,
    /// Lock requests queued (answered `Queued`).
    pub locks_queued: u64,
    /// Grants pushed to waiting sessions on this node.
    pub locks_granted_later: u64,
    /// `try_only` requests refused because the lock was held.
    pub lock_tries_failed: u64,
    /// Held locks released because their holder's session or lease expired.
    pub locks_abandoned_cleaned: u64,
    /// Lock losses pushed to sessions on this node.
    pub locks_lost: u64,
    /// Releases refused (another session's node) or of locks no longer held.
    pub lock_releases_failed: u64,
    /// Sessions expired.
    pub sessions_expired: u64,
    /// Leader changes seen.
    pub leader_changes: u64,
    /// Lock requests refused with `Deadlock` because they would have closed a cycle of
    /// waiting sessions (counted on every node that applied them).
    pub deadlocks_broken: u64,
    /// Snapshots installed from the leader (this node was too far behind).
    pub snapshots_installed: u64,
    /// Log compactions this node started as leader (cluster) or snapshots it took
    /// (single node).
    pub snapshots_taken: u64,
    /// Log compactions this node put off for want of an image of its own of the point
    /// (cluster; `PaxosLog::compaction_counts`).
    pub compactions_deferred: u64,
    /// Log compactions this node made with a tail encoded on its core, after putting
    /// them off twice (cluster).
    pub compactions_with_tail: u64,
}

/// A report of live sessions sent to the leader, with the keepalives waiting for it.
#[derive(Debug)]
struct AliveBatch {
    sessions: Vec<u64>,
    waiters: Vec<Keepalive>,
    sent_tick: u64,
}

/// Something a follower answers only once the leader has renewed the session.
#[derive(Debug)]
enum Keepalive {
    /// A ping or lease renewal: (connection, xid, answer).
    Request(ConnId, u64, OpResult),
    /// A session resumed on this node: accepting it tells the client its session lives.
    Resume {
        conn: ConnId,
        session: u64,
        secret: u64,
        ttl_ms: u64,
    },
    /// Leader: a follower's report, acknowledged (with the sessions this leader does not
    /// have) once leadership is confirmed.
    Ack {
        peer: u64,
        batch: u64,
        /// The sessions of the report: those gone when the barrier is decided are named
        /// in the acknowledgement (an expiry decided before the barrier counts).
        sessions: Vec<u64>,
    },
}

impl Keepalive {
    /// The client connection waiting for this keepalive's answer, if one is.
    fn conn(&self) -> Option<ConnId> {
        match self {
            Keepalive::Request(conn, ..) | Keepalive::Resume { conn, .. } => Some(*conn),
            Keepalive::Ack { .. } => None,
        }
    }
}

/// Ticks after which an unacknowledged report is resent.
const ALIVE_RESEND_TICKS: u64 = 10;

/// Most unacknowledged session reports a follower keeps; beyond, they are folded into one.
const MAX_ALIVE_REPORTS_IN_FLIGHT: usize = 16;

/// Keepalives are hurried (see [`Node::hurry_keepalives`]) only while fewer reports (on
/// a follower) or confirming barriers (on a leader) than this are unanswered, so a node
/// cut off from the majority falls back to one per tick.
const MAX_HURRIED_IN_FLIGHT: usize = 4;

/// What the deterministic simulator observes inside a node (test and `sim` builds only,
/// and only after [`Node::enable_probe`]).
#[cfg(any(test, feature = "sim"))]
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // test-only instrumentation; boxing buys nothing
pub enum Probe {
    /// An entry was applied.
    Applied {
        /// The entry.
        entry: Entry,
        /// What applying it did: its zxid, result, tree changes, lock events and the
        /// sessions it ended.
        applied: Applied,
    },
    /// A snapshot replaced the state; the node is now at `zxid`.
    Installed {
        /// The zxid of the state it replaced.
        from: u64,
        /// The zxid of the snapshot.
        zxid: u64,
    },
    /// This node proposed the expiry of these sessions at its monotonic time `mono_ms`.
    ExpiryProposed {
        /// The sessions and leases.
        sessions: Vec<u64>,
        /// The node's monotonic clock.
        mono_ms: u64,
    },
}

/// The node core. See the module documentation.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    machine: StateMachine,
    watches: WatchManager,
    tracker: SessionTracker,
    log: Log,
    conns: BTreeMap<ConnId, Conn>,
    /// Which connection each attached session is on.
    session_conns: BTreeMap<u64, ConnId>,
    /// New sessions proposed, by secret, with the connection that asked.
    pending_opens: BTreeMap<u64, ConnId>,
    /// `GrantLease` writes this node proposed and has not seen applied, by (session,
    /// xid): each may open a lease, so `max_sessions` counts them.
    pending_grants: BTreeSet<(u64, u64)>,
    last_snapshot_index: u64,
    /// The compaction points applied (a cluster), and the bytes applied since the last
    /// point or snapshot.
    points: CompactionPoints,
    /// Set when the disk failed: writes are refused, reads still served.
    disk_failed: Option<String>,
    last_tick_ms: Option<u64>,
    /// The committed zxid at the tick before the last one, and at the last one: what a
    /// follower must have applied to be ready ([`Node::committed_a_tick_ago`]; `u64::MAX`
    /// until there are two).
    committed_at_ticks: [u64; 2],
    /// Barriers proposed by this node, with the `sync` requests waiting on each.
    barriers: BTreeMap<u64, Vec<(ConnId, u64)>>,
    /// A barrier proposed during the current input, which later syncs may share.
    open_barrier: Option<u64>,
    next_barrier: u64,
    /// Sessions that spoke to this follower since its last report to the leader.
    alive: BTreeSet<u64>,
    /// Keepalives (pings, lease renewals) answered once the leader acknowledges the next
    /// report, so a client never believes in a renewal the leader does not have.
    alive_waiters: Vec<Keepalive>,
    /// Reports sent and not acknowledged yet, by batch number.
    alive_inflight: BTreeMap<u64, AliveBatch>,
    /// Leader: keepalives waiting for the barrier that confirms its leadership.
    keepalive_barriers: BTreeMap<u64, Vec<Keepalive>>,
    next_alive_batch: u64,
    ticks: u64,
    /// Whether this node was the leader in the accept phase at the last tick.
    leading: bool,
    /// The lock-delay end for which a nudge entry was proposed.
    delay_nudged: Option<i64>,
    stats: NodeStats,
    now: Now,
    outputs: Vec<Output>,
    peer_out: Vec<(u64, PeerMsg)>,
    #[cfg(any(test, feature = "sim"))]
    probe: Option<Vec<Probe>>,
}

impl Node {
    /// A node over a recovered state machine (the snapshot plus the replayed log).
    /// Every session's deadline starts at full TTL from `now`.
    pub fn new(config: NodeConfig, machine: StateMachine, log: Log, now: Now) -> Node {
        let mut tracker = SessionTracker::default();
        for s in machine.sessions() {
            tracker.add(s.id, s.ttl_ms, now.mono_ms);
        }
        let watches = WatchManager::new(config.max_watches_per_session);
        Node {
            last_snapshot_index: machine.last_zxid(),
            points: CompactionPoints::new(
                config.snapshot_every_entries,
                config.snapshot_every_bytes,
                machine.last_zxid(),
            ),
            config,
            machine,
            watches,
            tracker,
            log,
            conns: BTreeMap::new(),
            session_conns: BTreeMap::new(),
            pending_opens: BTreeMap::new(),
            pending_grants: BTreeSet::new(),
            disk_failed: None,
            last_tick_ms: None,
            committed_at_ticks: [u64::MAX; 2],
            barriers: BTreeMap::new(),
            open_barrier: None,
            // Barrier and report numbers must not repeat across restarts: an old
            // incarnation's barrier decided late, or a late acknowledgement of its report,
            // would otherwise answer the new incarnation's waiters. Start from the wall
            // clock (ms, shifted to leave room for the numbers used per millisecond).
            next_barrier: ((now.wall_ms.max(0) as u64) << 7).max(1),
            alive: BTreeSet::new(),
            alive_waiters: Vec::new(),
            alive_inflight: BTreeMap::new(),
            keepalive_barriers: BTreeMap::new(),
            next_alive_batch: ((now.wall_ms.max(0) as u64) << 20).max(1),
            ticks: 0,
            leading: false,
            delay_nudged: None,
            stats: NodeStats::default(),
            now,
            outputs: Vec::new(),
            peer_out: Vec::new(),
            #[cfg(any(test, feature = "sim"))]
            probe: None,
        }
    }

    /// Starts recording [`Probe`] events (the simulator drains them after every input).
    #[cfg(any(test, feature = "sim"))]
    pub fn enable_probe(&mut self) {
        self.probe.get_or_insert_with(Vec::new);
    }

    /// The [`Probe`] events recorded since the last call.
    #[cfg(any(test, feature = "sim"))]
    pub fn take_probe(&mut self) -> Vec<Probe> {
        self.probe.as_mut().map(std::mem::take).unwrap_or_default()
    }

    #[cfg(any(test, feature = "sim"))]
    fn record(&mut self, event: impl FnOnce() -> Probe) {
        if let Some(p) = &mut self.probe {
            p.push(event());
        }
    }

    /// Whether this node decides session expiry (the single node, or the cluster leader).
    pub fn is_leader(&self) -> bool {
        match &self.log {
            Log::Local(_) => true,
            Log::Paxos(p) => p.is_leader(),
        }
    }

    /// The current leader's id, if known.
    pub fn leader(&self) -> Option<u64> {
        match &self.log {
            Log::Local(_) => Some(self.config.node_id),
            Log::Paxos(p) => p.leader(),
        }
    }

    /// The state machine (for status and tests).
    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }

    /// Counters since start, and the state's size now.
    pub fn stats(&self) -> NodeStats {
        let counts = match &self.log {
            Log::Paxos(log) => log.compaction_counts(),
            Log::Local(_) => Default::default(),
        };
        NodeStats {
            state_bytes: self.machine.state_bytes(),
            compactions_deferred: counts.deferred,
            compactions_with_tail: counts.with_tail,
            ..self.stats
        }
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// Whether this node is a member of a replicated cluster (not a single node).
    pub fn is_cluster_member(&self) -> bool {
        matches!(self.log, Log::Paxos(_))
    }

    /// Whether this node joined with an empty data directory and has not yet been synced
    /// by a leader (it takes part in no quorum meanwhile; see `replication::join`).
    pub fn is_catching_up(&self) -> bool {
        matches!(&self.log, Log::Paxos(p) if p.is_catching_up())
    }

    /// The highest zxid this node knows to be committed (decided).
    pub fn committed_zxid(&self) -> u64 {
        match &self.log {
            Log::Local(_) => self.machine.last_zxid(),
            Log::Paxos(p) => p.decided_idx() as u64,
        }
    }

    /// The zxid this node knew to be committed at the tick before its last one: a
    /// follower that has not applied it lags by more than a tick. Entries committed since
    /// may still wait for this node's own log write, as they do for a moment under any
    /// write load, so readiness does not hold them against it. `u64::MAX` before the
    /// node's second tick: a node that has just started has not yet heard where the
    /// cluster is, and is not ready before it has.
    pub fn committed_a_tick_ago(&self) -> u64 {
        self.committed_at_ticks[0]
    }

    /// Total watches registered on this node.
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Whether this node proposed entries that are not applied yet (shutdown waits).
    pub fn has_unapplied(&self) -> bool {
        match &self.log {
            Log::Local(l) => !l.unsent.is_empty() || !l.in_flight.is_empty(),
            Log::Paxos(p) => p.forwarded_len() > 0,
        }
    }

    /// Handles one input at time `now` and ends the pass ([`Node::end_pass`]); returns
    /// what the shell must do, in order.
    pub fn handle(&mut self, now: Now, input: Input) -> Vec<Output> {
        let mut outputs = self.take_in(now, input);
        outputs.extend(self.end_pass(now));
        outputs
    }

    /// Handles one input at time `now` without flushing the replicated log: what it
    /// proposed, and the replication messages it caused, wait for [`Node::end_pass`].
    /// Returns what the shell must do now, in order (answers that need no log step).
    ///
    /// A shell that takes in several inputs before ending the pass lets OmniPaxos
    /// gather them: the entries proposed in a pass leave in one `AcceptDecide` per
    /// follower, and a follower's acceptances of them in one `Accepted`, instead of one
    /// of each per input. Deferring the flush only delays messages and syncs, which
    /// the protocol already allows for.
    pub fn take_in(&mut self, now: Now, input: Input) -> Vec<Output> {
        self.now = now;
        match input {
            Input::Hello {
                conn,
                hello,
                secret,
            } => self.on_hello(conn, hello, secret),
            Input::Request { conn, request } => self.on_request(conn, request),
            Input::UnknownOp {
                conn,
                xid,
                op_index,
            } => {
                let msg = format!(
                    "this server knows operations 0 to {}, not {op_index}: it is older than \
                     the client (upgrade the servers first)",
                    OP_COUNT - 1
                );
                self.answer_early(conn, xid, ErrorInfo::new(ErrorCode::Unimplemented, msg));
            }
            Input::Disconnected { conn } => self.on_disconnected(conn),
            Input::Persisted { batch } => self.on_persisted(batch),
            Input::Decoded { index, machine } => self.on_decoded(index, machine),
            Input::PersistFailed { error } => self.on_persist_failed(error),
            Input::Tick => self.on_tick(),
            Input::Shutdown => self.on_shutdown(),
            Input::Peer { from, msg } => self.on_peer(from, msg),
            Input::LinkUp { peer, version } => {
                if let Log::Paxos(p) = &mut self.log {
                    p.on_link_up(peer, version, self.now.wall_ms);
                }
            }
            Input::LinkDown { peer } => {
                if let Log::Paxos(p) = &mut self.log {
                    p.on_link_down(peer);
                }
            }
        }
        self.open_barrier = None;
        std::mem::take(&mut self.outputs)
    }

    /// Ends a pass of inputs at time `now`: flushes the replicated log (OmniPaxos's
    /// outgoing messages, the next sync, the entries decided meanwhile) and returns what
    /// the shell must do, in order. What it applies (a session opened, a renewal) is
    /// stamped with `now`, when its answer leaves, not with the last input's time.
    pub fn end_pass(&mut self, now: Now) -> Vec<Output> {
        self.now = now;
        self.hurry_keepalives();
        self.flush_log();
        for (to, msg) in self.peer_out.drain(..) {
            self.outputs.push(Output::PeerSend { to, msg });
        }
        std::mem::take(&mut self.outputs)
    }

    fn on_hello(&mut self, conn: ConnId, hello: Hello, secret: u64) {
        self.conns.insert(conn, Conn::default());
        if hello.magic != MAGIC || hello.version != PROTOCOL_VERSION {
            let msg = format!(
                "client speaks magic {:#x} version {}, server speaks magic {:#x} version {}",
                hello.magic, hello.version, MAGIC, PROTOCOL_VERSION
            );
            return self.refuse(conn, ErrorInfo::new(ErrorCode::ProtocolMismatch, msg));
        }
        if hello.last_zxid_seen > self.machine.last_zxid() {
            let msg = format!(
                "this server is at zxid {} but the client has seen zxid {}; try another server",
                self.machine.last_zxid(),
                hello.last_zxid_seen
            );
            return self.refuse(conn, ErrorInfo::new(ErrorCode::Unavailable, msg));
        }
        match hello.session {
            SessionRequest::New { ttl_ms } => {
                if let Some(err) = &self.disk_failed {
                    let msg = format!("node cannot write to its disk ({err}); try another server");
                    return self.refuse(conn, ErrorInfo::new(ErrorCode::Unavailable, msg));
                }
                if let Err(e) = self.room_for_a_session() {
                    return self.refuse(conn, e);
                }
                let ttl_ms = ttl_ms.clamp(
                    self.config.min_session_ttl_ms,
                    self.config.max_session_ttl_ms,
                );
                self.pending_opens.insert(secret, conn);
                if let Err(e) = self.propose(EntryBody::OpenSession { secret, ttl_ms }) {
                    self.pending_opens.remove(&secret);
                    self.refuse(conn, e);
                }
            }
            SessionRequest::Resume { session_id, secret } => {
                let Some(session) = self.machine.session(session_id) else {
                    let msg = format!("session {session_id:#x} has expired or never existed");
                    return self.refuse(conn, ErrorInfo::new(ErrorCode::SessionExpired, msg));
                };
                if session.lease_of != 0 {
                    let msg = format!("{session_id:#x} is a lease, not a session");
                    return self.refuse(conn, ErrorInfo::new(ErrorCode::AuthFailed, msg));
                }
                if self.tracker.is_expiring(session_id) {
                    let msg = format!("session {session_id:#x} is being expired");
                    return self.refuse(conn, ErrorInfo::new(ErrorCode::SessionExpired, msg));
                }
                if session.secret != secret {
                    let msg = format!("wrong secret for session {session_id:#x}");
                    return self.refuse(conn, ErrorInfo::new(ErrorCode::AuthFailed, msg));
                }
                let ttl_ms = session.ttl_ms;
                if let Some(old) = self.session_conns.get(&session_id).copied() {
                    let msg = format!("session {session_id:#x} was resumed on another connection");
                    self.goodbye(old, ErrorInfo::new(ErrorCode::SessionMoved, msg));
                }
                if matches!(self.log, Log::Paxos(_)) {
                    // A node cut off from the leader (or a leader cut off from the
                    // majority) must not tell a client its session lives: accept once a
                    // leader confirmed after this arrived has renewed it.
                    self.touch(session_id);
                    self.alive_waiters.push(Keepalive::Resume {
                        conn,
                        session: session_id,
                        secret,
                        ttl_ms,
                    });
                    return;
                }
                self.attach(conn, session_id, secret, ttl_ms);
            }
        }
    }

    fn refuse(&mut self, conn: ConnId, error: ErrorInfo) {
        self.remove_conn(conn);
        self.outputs.push(Output::HelloReply {
            conn,
            reply: HelloReply::Refused(error),
        });
        self.outputs.push(Output::Close { conn });
    }

    /// Sends a final message and closes a connection, detaching its session.
    fn goodbye(&mut self, conn: ConnId, error: ErrorInfo) {
        self.detach(conn);
        self.remove_conn(conn);
        self.outputs.push(Output::Send {
            conn,
            msg: ServerMessage::Goodbye(error),
        });
        self.outputs.push(Output::Close { conn });
    }

    fn attach(&mut self, conn: ConnId, session_id: u64, secret: u64, ttl_ms: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.session = Some(session_id);
        self.session_conns.insert(session_id, conn);
        self.touch(session_id);
        self.outputs.push(Output::HelloReply {
            conn,
            reply: HelloReply::Accepted(SessionGranted {
                session_id,
                secret,
                ttl_ms,
                node_id: self.config.node_id,
                zxid: self.machine.last_zxid(),
                max_frame_bytes: self.config.max_frame_bytes as u64,
                next_xid: self.machine.last_xid(session_id) + 1,
            }),
        });
    }

    /// Forgets which session a connection carried, and the session's watches on this node.
    fn detach(&mut self, conn: ConnId) {
        let Some(session) = self.conns.get_mut(&conn).and_then(|c| c.session.take()) else {
            return;
        };
        if self.session_conns.get(&session) == Some(&conn) {
            self.session_conns.remove(&session);
            self.watches.remove_session(session);
        }
    }

    fn on_disconnected(&mut self, conn: ConnId) {
        self.detach(conn);
        self.remove_conn(conn);
    }

    /// Forgets a closed connection, with the keepalives waiting for its answers: nobody
    /// would read them, and while no confirmation can come (a follower cut off from its
    /// leader, a leader cut off from its followers) they would be kept as long as the
    /// cut lasts, one more with every client that reconnects to this node and gives up
    /// on it.
    /// A session this node proposed for connection `conn` was opened: attach it. If the
    /// connection closed meanwhile (the client gave up on its handshake), nobody knows
    /// the session's secret and nobody can ever use it: close it now, rather than let it
    /// hold a `max_sessions` place until its TTL (a reconnect storm during a failover
    /// would otherwise leave one per attempt).
    fn opened(&mut self, conn: ConnId, session_id: u64, secret: u64, ttl_ms: u64) {
        if self.conns.contains_key(&conn) {
            return self.attach(conn, session_id, secret, ttl_ms);
        }
        tracing::debug!(
            session = session_id,
            "closing a session whose handshake's connection closed before it opened"
        );
        if let Err(e) = self.propose(EntryBody::CloseSession { session_id }) {
            tracing::warn!(session = session_id, error = %e, "cannot close an orphaned session");
        }
    }

    fn remove_conn(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        let other = |w: &Keepalive| w.conn() != Some(conn);
        self.alive_waiters.retain(other);
        for batch in self.alive_inflight.values_mut() {
            batch.waiters.retain(other);
        }
        for waiters in self.keepalive_barriers.values_mut() {
            waiters.retain(other);
        }
        // A barrier left without waiters has nothing to confirm: its entry, once decided,
        // finds no waiters, as for a barrier proposed by an earlier leadership.
        self.keepalive_barriers
            .retain(|_, waiters| !waiters.is_empty());
    }

    /// Checks the node core's own invariants (the simulator calls it after every step):
    /// every keepalive waiting for an answer belongs to an open connection, and no
    /// keepalive barrier is kept without waiters.
    pub fn check_invariants(&self) -> Result<(), String> {
        let waiting = self
            .alive_waiters
            .iter()
            .chain(self.alive_inflight.values().flat_map(|b| b.waiters.iter()))
            .chain(self.keepalive_barriers.values().flatten());
        for waiter in waiting {
            if let Some(conn) = waiter.conn().filter(|c| !self.conns.contains_key(c)) {
                return Err(format!(
                    "a keepalive waits for an answer to connection {conn}, which is closed"
                ));
            }
        }
        if let Some((barrier, _)) = self.keepalive_barriers.iter().find(|(_, w)| w.is_empty()) {
            return Err(format!(
                "keepalive barrier {barrier} is kept without waiters"
            ));
        }
        Ok(())
    }

    /// Answers a request with an error at once, ahead of the connection's queue. Safe
    /// for errors: they reveal no state, and clients match responses by xid.
    fn answer_early(&mut self, conn: ConnId, xid: u64, error: ErrorInfo) {
        let response = Response {
            xid,
            zxid: self.machine.last_zxid(),
            result: Err(error),
        };
        self.outputs.push(Output::Send {
            conn,
            msg: ServerMessage::Response(response),
        });
    }

    fn on_request(&mut self, conn: ConnId, request: Request) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(session) = c.session else {
            let msg = "a request arrived before the session was established".to_string();
            return self.goodbye(conn, ErrorInfo::new(ErrorCode::BadArguments, msg));
        };
        let Request { xid, op } = request;
        if c.queue.len() >= self.config.max_pending_requests_per_connection {
            let msg = format!(
                "{} requests are pending on this connection, the limit \
                 max_pending_requests_per_connection is {}",
                c.queue.len(),
                self.config.max_pending_requests_per_connection
            );
            let error = ErrorInfo::new(ErrorCode::LimitExceeded, msg);
            return self.answer_early(conn, xid, error);
        }
        self.touch(session);
        if let Op::Acknowledge { answered_below } = &op {
            // Taken in at once, so the writes that follow it carry it. Capped at this
            // request's own xid: every request before it may be answered, not it.
            if let Some(c) = self.conns.get_mut(&conn) {
                c.answered_below = c.answered_below.max((*answered_below).min(xid));
            }
        }
        if let Op::RenewLease { lease_id } = &op {
            // The renewal counts from its arrival, even if its answer waits behind earlier
            // requests of the connection (a write waiting for its fsync): the lease must
            // not expire in between.
            if self
                .machine
                .session(*lease_id)
                .is_some_and(|l| l.lease_of == session)
            {
                self.touch(*lease_id);
            }
        }
        let replicated = matches!(self.log, Log::Paxos(_));
        let state = if op.is_write() {
            // Limits that depend on this node's settings are checked here, before the
            // write is proposed: applying it must not depend on them.
            if let Err(e) = self
                .machine
                .admit(&op)
                .and_then(|()| self.admit_lease(&op))
                .and_then(|()| self.admit_state_growth(&op))
            {
                PendingState::Done(Response {
                    xid,
                    zxid: self.machine.last_zxid(),
                    result: Err(e),
                })
            } else if let Some(err) = &self.disk_failed {
                let msg = format!("node cannot write to its disk ({err}); try another server");
                PendingState::Done(Response {
                    xid,
                    zxid: self.machine.last_zxid(),
                    result: Err(ErrorInfo::new(ErrorCode::Unavailable, msg)),
                })
            } else {
                let body = match &op {
                    Op::CloseSession => EntryBody::CloseSession {
                        session_id: session,
                    },
                    Op::GrantLease { ttl_ms } => self.client_write(
                        conn,
                        session,
                        xid,
                        Op::GrantLease {
                            ttl_ms: (*ttl_ms).clamp(
                                self.config.min_session_ttl_ms,
                                self.config.max_session_ttl_ms,
                            ),
                        },
                    ),
                    _ => self.client_write(conn, session, xid, op.clone()),
                };
                match self.propose(body) {
                    Ok(()) => {
                        if matches!(op, Op::GrantLease { .. }) {
                            self.pending_grants.insert((session, xid));
                        }
                        PendingState::Proposed
                    }
                    Err(e) => PendingState::Done(Response {
                        xid,
                        zxid: self.machine.last_zxid(),
                        result: Err(e),
                    }),
                }
            }
        } else if replicated && matches!(op, Op::Ping | Op::RenewLease { .. }) {
            // A keepalive is answered once a leader confirmed after it arrived has it
            // (see `alive_waiters`).
            match self.evaluate_local(conn, session, op.clone()) {
                Ok(result) => {
                    self.alive_waiters
                        .push(Keepalive::Request(conn, xid, result));
                    PendingState::Proposed
                }
                Err(e) => PendingState::Done(Response {
                    xid,
                    zxid: self.machine.last_zxid(),
                    result: Err(e),
                }),
            }
        } else if let Some(path) =
            sync_path(&op).filter(|_| replicated && !crate::faults::active().sync_without_barrier)
        {
            // In a cluster, a sync passes through the log: once this node applies the
            // barrier, it has applied every write acknowledged before the sync started.
            match validate_path(path).and_then(|()| self.barrier()) {
                Ok(id) => {
                    self.barriers.entry(id).or_default().push((conn, xid));
                    PendingState::Proposed
                }
                Err(e) => PendingState::Done(Response {
                    xid,
                    zxid: self.machine.last_zxid(),
                    result: Err(e),
                }),
            }
        } else {
            PendingState::Queued
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.queue.push_back(Pending { xid, op, state });
        }
        self.drain(conn);
    }

    /// Sends the answers at the head of a connection's queue, evaluating reads whose
    /// turn has come.
    fn drain(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let Some(front) = c.queue.front_mut() else {
                return;
            };
            let session = c.session.unwrap_or(0);
            let response = match &mut front.state {
                PendingState::Proposed => return,
                PendingState::Done(_) => match c.queue.pop_front() {
                    Some(Pending {
                        state: PendingState::Done(r),
                        ..
                    }) => r,
                    _ => return,
                },
                PendingState::Queued => {
                    let Some(Pending { xid, op, .. }) = c.queue.pop_front() else {
                        return;
                    };
                    let result = self.evaluate_local(conn, session, op);
                    Response {
                        xid,
                        zxid: self.machine.last_zxid(),
                        result,
                    }
                }
            };
            self.outputs.push(Output::Send {
                conn,
                msg: ServerMessage::Response(response),
            });
        }
    }

    /// The item and byte limits of a page (`GetChildrenPage`, `GetLocksPage`): the
    /// client's, the bytes also within this server's frame, less the envelope's room.
    fn page_limits(&self, max_items: u32, max_bytes: u32) -> (usize, usize) {
        let max_bytes = usize::try_from(max_bytes)
            .unwrap_or(usize::MAX)
            .min(self.config.max_frame_bytes)
            .saturating_sub(CHILDREN_PAGE_HEADROOM_BYTES);
        (usize::try_from(max_items).unwrap_or(usize::MAX), max_bytes)
    }

    /// Answers a read or a local (watch) operation from the applied state.
    fn evaluate_local(
        &mut self,
        conn: ConnId,
        session: u64,
        op: Op,
    ) -> Result<OpResult, ErrorInfo> {
        match op {
            Op::Exists { path, watch } => {
                let stat = self.machine.exists(&path)?;
                if watch {
                    let kind = if stat.is_some() {
                        WatchKind::Data
                    } else {
                        WatchKind::Exist
                    };
                    self.watches.add(session, &path, kind)?;
                }
                Ok(OpResult::Exists(stat))
            }
            Op::GetData { path, watch } => {
                let (data, stat) = self.machine.get_data(&path)?;
                if watch {
                    self.watches.add(session, &path, WatchKind::Data)?;
                }
                Ok(OpResult::Data { data, stat })
            }
            Op::GetChildren { path, watch } => {
                // The listing is cut to what fits in a frame: a longer one is refused
                // before anything is copied or a watch left, with the way out.
                let max_bytes = self
                    .config
                    .max_frame_bytes
                    .saturating_sub(CHILDREN_PAGE_HEADROOM_BYTES);
                let (children, stat, more) =
                    self.machine
                        .children_page(&path, "", usize::MAX, max_bytes)?;
                if more {
                    let msg = format!(
                        "the {} children of {path} do not fit in max_frame_bytes = {}; \
                         list them page by page (GetChildrenPage)",
                        stat.num_children, self.config.max_frame_bytes
                    );
                    return Err(ErrorInfo::new(ErrorCode::LimitExceeded, msg));
                }
                if watch {
                    self.watches.add(session, &path, WatchKind::Child)?;
                }
                Ok(OpResult::Children { children, stat })
            }
            Op::GetChildrenPage {
                path,
                after,
                max_names,
                max_bytes,
            } => {
                let (max_names, max_bytes) = self.page_limits(max_names, max_bytes);
                let (children, stat, more) = self
                    .machine
                    .children_page(&path, &after, max_names, max_bytes)?;
                Ok(OpResult::ChildrenPage {
                    children,
                    stat,
                    more,
                })
            }
            // Single node: every acknowledged write is already applied.
            Op::Sync { path } => {
                validate_path(&path)?;
                Ok(OpResult::Synced)
            }
            // A keepalive is never acknowledged for a session whose expiry this node has
            // proposed: the expiry is ahead of it in the log, and the client would believe
            // in a session that is about to end.
            Op::Ping if self.tracker.is_expiring(session) => Err(ErrorInfo::new(
                ErrorCode::SessionExpired,
                format!("session {session:#x} is being expired"),
            )),
            Op::Ping => Ok(OpResult::Pong),
            // Taken in when it arrived (`on_request`).
            Op::Acknowledge { .. } => Ok(OpResult::Pong),
            Op::AddWatch { path, mode } => {
                validate_path(&path)?;
                let kind = match mode {
                    AddWatchMode::Persistent => WatchKind::Persistent,
                    AddWatchMode::PersistentRecursive => WatchKind::PersistentRecursive,
                };
                self.watches.add(session, &path, kind)?;
                Ok(OpResult::WatchesUpdated)
            }
            Op::RemoveWatches { path, kind } => {
                validate_path(&path)?;
                self.watches.remove(session, &path, kind)?;
                Ok(OpResult::WatchesUpdated)
            }
            Op::SetWatches { last_zxid, watches } => {
                let events =
                    self.watches
                        .set_watches(session, last_zxid, &watches, &self.machine)?;
                for event in events {
                    self.outputs.push(Output::Send {
                        conn,
                        msg: ServerMessage::Watch(event),
                    });
                }
                Ok(OpResult::WatchesUpdated)
            }
            Op::RenewLease { lease_id } => {
                let lease = self
                    .machine
                    .session(lease_id)
                    .filter(|l| l.lease_of == session && !self.tracker.is_expiring(lease_id))
                    .ok_or_else(|| {
                        ErrorInfo::new(
                            ErrorCode::NoLease,
                            format!("lease {lease_id:#x} does not exist (expired or revoked)"),
                        )
                    })?;
                let ttl_ms = lease.ttl_ms;
                self.touch(lease_id);
                Ok(OpResult::Lease { lease_id, ttl_ms })
            }
            Op::GetLocks { path } => Ok(OpResult::Locks(self.machine.locks_under(&path)?)),
            Op::GetLockGroup { node } => Ok(OpResult::Locks(self.machine.lock_group(&node)?)),
            Op::GetLocksPage {
                path,
                after,
                max_locks,
                max_bytes,
            } => {
                let (max_locks, max_bytes) = self.page_limits(max_locks, max_bytes);
                let (locks, more) = self
                    .machine
                    .locks_page(&path, &after, max_locks, max_bytes)?;
                Ok(OpResult::LocksPage { locks, more })
            }
            // The core's part; the shell fills in what only it knows (crate::status).
            Op::ServerStatus => Ok(OpResult::ServerStatus(Box::new(
                crate::status::core_status(self),
            ))),
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
            | Op::LockMany(_) => Err(ErrorInfo::new(
                ErrorCode::RuntimeInconsistency,
                "write evaluated as a read",
            )),
        }
    }

    /// The client of `session` spoke: its session lives a TTL from now. A follower also
    /// reports it to the leader, which decides expiry.
    fn touch(&mut self, session: u64) {
        self.tracker.touch(session, self.now.mono_ms);
        if matches!(self.log, Log::Paxos(_)) && !self.is_leader() {
            self.alive.insert(session);
        }
    }

    /// The entry of a client write that arrived on `conn`: the newest variant every
    /// member decodes (always the newest on a single node): an `AckedWrite`, which
    /// keeps its session's order and carries its latest acknowledgement, else an
    /// `OrderedWrite`, else a `Write`.
    fn client_write(&self, conn: ConnId, session_id: u64, xid: u64, op: Op) -> EntryBody {
        let kind = match &self.log {
            Log::Local(_) => WriteKind::Acked,
            Log::Paxos(p) => WriteKind::for_peer_version(p.members_version()),
        };
        let answered_below = self.conns.get(&conn).map_or(0, |c| c.answered_below);
        EntryBody::client(kind, session_id, xid, op, answered_below)
    }

    /// Proposes an entry. Returns an error for the client if it cannot be proposed.
    fn propose(&mut self, body: EntryBody) -> Result<(), ErrorInfo> {
        let entry = Entry::new(self.now.wall_ms, body);
        match &mut self.log {
            Log::Local(log) => {
                let index = log.next_index;
                log.next_index += 1;
                log.unsent.push((index, entry));
                Ok(())
            }
            Log::Paxos(log) => log
                .propose(entry, &mut self.peer_out)
                .map_err(|why| ErrorInfo::new(ErrorCode::Unavailable, why)),
        }
    }

    /// Proposes a barrier (shared by every sync of the current input) and returns its id.
    fn barrier(&mut self) -> Result<u64, ErrorInfo> {
        if let Some(id) = self.open_barrier {
            return Ok(id);
        }
        let id = self.fresh_barrier_id();
        self.propose(EntryBody::Noop { barrier: id })?;
        self.open_barrier = Some(id);
        Ok(id)
    }

    /// A barrier id unique per node and per process lifetime (node id in the high bits).
    fn fresh_barrier_id(&mut self) -> u64 {
        let id = (self.config.node_id << 48) | (self.next_barrier & ((1 << 48) - 1));
        self.next_barrier += 1;
        id
    }

    /// Hands the next batch to the shell if none is outstanding.
    fn flush_log(&mut self) {
        match &mut self.log {
            Log::Local(log) => {
                if !log.in_flight.is_empty() || log.unsent.is_empty() {
                    return;
                }
                log.in_flight = std::mem::take(&mut log.unsent);
                log.batch += 1;
                let batch = log.batch;
                let first_lsn = log.in_flight.first().map(|(i, _)| *i);
                let mut records = Vec::with_capacity(log.in_flight.len());
                let mut failure = None;
                for (index, entry) in &log.in_flight {
                    match encode_entry(entry) {
                        Ok(bytes) => records.push(bytes),
                        Err(error) => {
                            failure = Some(format!("cannot encode entry {index}: {error}"));
                            break;
                        }
                    }
                }
                match failure {
                    // Cannot happen for well-formed entries; fail loudly but keep serving.
                    Some(error) => self.on_persist_failed(error),
                    None => self.outputs.push(Output::Persist {
                        batch,
                        records,
                        first_lsn,
                        starts_with_checkpoint: false,
                    }),
                }
            }
            Log::Paxos(log) => {
                if let Some(batch) = log.flush(&mut self.peer_out) {
                    self.outputs.push(Output::Sync { batch });
                }
                self.apply_decided();
            }
        }
    }

    fn on_persisted(&mut self, batch: u64) {
        match &mut self.log {
            Log::Local(log) => {
                if log.batch != batch {
                    return;
                }
                let in_flight = std::mem::take(&mut log.in_flight);
                for (index, entry) in in_flight {
                    let applied = self.machine.apply(index, &entry);
                    self.points.count(entry_bytes(&entry));
                    self.after_apply(&entry, applied);
                }
                let applied = self.machine.last_zxid();
                if applied.saturating_sub(self.last_snapshot_index)
                    >= self.config.snapshot_every_entries
                    || self.points.bytes_since() >= self.config.snapshot_every_bytes
                {
                    self.take_snapshot();
                    self.points.point(applied);
                }
            }
            Log::Paxos(log) => {
                log.persisted(batch, &mut self.peer_out);
                self.apply_decided();
            }
        }
    }

    /// Applies what the replicated log decided and this node holds durably.
    fn apply_decided(&mut self) {
        let Log::Paxos(log) = &mut self.log else {
            return;
        };
        let decided = log.take_decided();
        for d in decided {
            match d {
                Decided::Entry(zxid, entry) => {
                    let applied = if crate::faults::active().apply_with_local_time {
                        let local = Entry {
                            wall_ms: self.now.wall_ms,
                            ..entry.clone()
                        };
                        self.machine.apply(zxid, &local)
                    } else {
                        self.machine.apply(zxid, &entry)
                    };
                    self.after_apply(&entry, applied);
                    // Compaction points are the same on every node, so each has an image
                    // of its live state at the point the leader compacts to (no replay of
                    // the log when the snapshot is made).
                    if self.points.applied(zxid, &entry, entry_bytes(&entry)) {
                        if let Log::Paxos(log) = &self.log {
                            log.offer_image(&self.machine);
                        }
                    }
                }
                Decided::Install(job) => {
                    tracing::info!(
                        from = self.machine.last_zxid(),
                        to = job.index,
                        "decoding a snapshot from the leader (this node is behind its compaction)"
                    );
                    self.outputs.push(Output::Decode(job));
                }
            }
        }
        if !self.is_leader() {
            return;
        }
        if let Log::Paxos(log) = &mut self.log {
            // Not while this node's image of the last point is still being encoded: the
            // new point would get no image (offers are skipped meanwhile), so the
            // compaction to it would be put off, or made with the previous image and
            // every entry since encoded into the log on the core. Points are then as far
            // apart as encoding an image takes, if that is longer.
            if !log.encoding_image() && self.points.marker_due() {
                tracing::debug!(
                    bytes = self.points.bytes_since(),
                    "marking a compaction point (snapshot_every_bytes)"
                );
                if let Err(e) = log.append_untracked(compaction::marker(self.now.wall_ms)) {
                    tracing::debug!(error = %e, "cannot mark a compaction point");
                }
            }
        }
        // The leader compacts to the compaction point before the last one it reached:
        // every node offered its image of that point an interval ago, so each finds it
        // ready (images are encoded on a thread of their own) and none replays the log.
        // A node without its own image of it compacts to an older one, waits or skips
        // (`compaction::compaction_at_own_image`).
        let point = self.points.compact_to();
        let installing = matches!(&self.log, Log::Paxos(log) if log.installing());
        if point > self.last_snapshot_index && !installing {
            self.last_snapshot_index = point;
            self.stats.snapshots_taken += 1;
            if let Log::Paxos(log) = &mut self.log {
                log.compact(point as usize);
            }
        }
    }

    /// A snapshot from the leader was decoded: install it, then apply what follows it.
    fn on_decoded(&mut self, index: u64, machine: Result<Box<StateMachine>, String>) {
        let Log::Paxos(log) = &mut self.log else {
            return;
        };
        if !log.install_done(index, machine.is_ok()) {
            if let Ok(machine) = machine {
                crate::free::free_elsewhere(machine);
            }
            return;
        }
        match machine {
            Ok(machine) => {
                self.install(*machine);
                self.apply_decided();
            }
            Err(error) => tracing::error!(
                index,
                %error,
                zxid = self.machine.last_zxid(),
                "cannot install the leader's snapshot; this node stays behind until the next one"
            ),
        }
    }

    /// Tells the sessions connected here of their lock grants and losses.
    fn send_lock_events(&mut self, events: &[LockChange]) {
        for change in events {
            if change.granted && crate::faults::active().lose_lock_grant_event {
                continue;
            }
            let Some(conn) = self.session_conns.get(&change.session).copied() else {
                continue;
            };
            let msg = if change.granted {
                self.stats.locks_granted_later += 1;
                ServerMessage::LockGranted(change.event.clone())
            } else {
                self.stats.locks_lost += 1;
                ServerMessage::LockLost(change.event.clone())
            };
            self.outputs.push(Output::Send { conn, msg });
        }
    }

    /// Replaces the state with a snapshot from the leader (this node was too far behind).
    fn install(&mut self, machine: StateMachine) {
        tracing::info!(
            from = self.machine.last_zxid(),
            to = machine.last_zxid(),
            "installing a snapshot from the leader"
        );
        let before = std::mem::replace(&mut self.machine, machine);
        #[cfg(any(test, feature = "sim"))]
        let from = before.last_zxid();
        self.points = CompactionPoints::new(
            self.config.snapshot_every_entries,
            self.config.snapshot_every_bytes,
            self.machine.last_zxid(),
        );
        // Watches fire for what the skipped entries changed, before any answer below
        // (they carry the installed zxid): DESIGN.md invariant 7.
        let events = self.watches.catch_up(&before, &self.machine);
        if !crate::faults::active().silent_install {
            for (session, event) in events {
                self.send_event(session, event);
            }
        }
        // Requests waiting here whose entries are inside the snapshot were never seen
        // applied: writes are answered from the deduplication table (below, after the
        // events).
        let mut answers: Vec<(ConnId, u64, Result<OpResult, ErrorInfo>)> = Vec::new();
        for (conn, c) in &self.conns {
            let Some(session) = c.session else {
                continue;
            };
            for p in &c.queue {
                if !matches!(p.state, PendingState::Proposed) || !p.op.is_write() {
                    continue;
                }
                if let Some(result) = self.machine.cached_result(session, p.xid) {
                    answers.push((*conn, p.xid, result));
                }
            }
        }
        // So do lock grants and losses: a waiter here would otherwise wait for a grant
        // made, or a loss suffered, while this node was behind.
        let answered: Vec<(u64, OpResult)> = answers
            .iter()
            .filter_map(|(conn, _, result)| {
                let session = self.conns.get(conn)?.session?;
                Some((session, result.as_ref().ok()?.clone()))
            })
            .collect();
        let lock_events = before.lock_catch_up(&self.machine, &answered);
        self.send_lock_events(&lock_events);
        // Freeing the replaced state costs about a fifth of decoding it.
        crate::free::free_elsewhere(before);
        self.stats.snapshots_installed += 1;
        self.machine.set_limits(self.config.machine);
        self.last_snapshot_index = self.machine.last_zxid();
        #[cfg(any(test, feature = "sim"))]
        {
            let zxid = self.machine.last_zxid();
            self.record(|| Probe::Installed { from, zxid });
        }
        self.tracker = SessionTracker::default();
        for s in self.machine.sessions() {
            self.tracker.add(s.id, s.ttl_ms, self.now.mono_ms);
        }
        if let Log::Paxos(p) = &mut self.log {
            p.settle_installed(&self.machine);
        }
        // Grants whose entries were inside the snapshot are never seen applied here.
        let machine = &self.machine;
        self.pending_grants.retain(|&(session, xid)| {
            machine.session(session).is_some() && machine.last_xid(session) < xid
        });
        let gone: Vec<u64> = self
            .session_conns
            .keys()
            .copied()
            .filter(|s| self.machine.session(*s).is_none())
            .collect();
        for session in gone {
            if let Some(conn) = self.session_conns.get(&session).copied() {
                let msg = format!("session {session:#x} expired while this server was behind");
                self.goodbye(conn, ErrorInfo::new(ErrorCode::SessionExpired, msg));
            }
        }
        // Answer the writes found above (a connection closed by the goodbyes is skipped
        // by `complete_on`), attach opened sessions, and pass pending syncs through a
        // new barrier.
        let zxid = self.machine.last_zxid();
        for (conn, xid, result) in answers {
            self.complete_on(conn, xid, zxid, result);
        }
        let opens: Vec<(u64, ConnId)> = self.pending_opens.iter().map(|(s, c)| (*s, *c)).collect();
        for (secret, conn) in opens {
            if let Some(session) = self.machine.session_by_secret(secret).cloned() {
                self.pending_opens.remove(&secret);
                self.opened(conn, session.id, secret, session.ttl_ms);
            }
        }
        // Keepalives waiting for a leadership barrier: confirmed again by the next one.
        for (_, waiters) in std::mem::take(&mut self.keepalive_barriers) {
            self.alive_waiters.extend(waiters);
        }
        let waiting: Vec<(ConnId, u64)> = std::mem::take(&mut self.barriers)
            .into_values()
            .flatten()
            .collect();
        if !waiting.is_empty() {
            match self.barrier() {
                Ok(id) => {
                    self.barriers.insert(id, waiting);
                }
                Err(e) => {
                    for (conn, xid) in waiting {
                        self.complete_on(conn, xid, zxid, Err(e.clone()));
                    }
                }
            }
        }
    }

    fn take_snapshot(&mut self) {
        let index = self.machine.last_zxid();
        self.last_snapshot_index = index;
        self.stats.snapshots_taken += 1;
        let image = self.machine.image();
        self.outputs.push(Output::Snapshot { index, image });
    }

    /// Delivers the effects of one applied entry: watch events first, then answers.
    fn after_apply(&mut self, entry: &Entry, applied: Applied) {
        let zxid = applied.zxid;
        #[cfg(any(test, feature = "sim"))]
        self.record(|| Probe::Applied {
            entry: entry.clone(),
            applied: applied.clone(),
        });
        for change in &applied.changes {
            for (session, event) in self.watches.trigger(change, zxid) {
                self.send_event(session, event);
            }
        }
        self.stats.locks_abandoned_cleaned += u64::from(applied.locks_abandoned);
        for lost in applied.lock_events.iter().filter(|c| !c.granted) {
            tracing::info!(
                zxid,
                lock = %lost.event.lock,
                node = %lost.event.node,
                session = lost.session,
                token = lost.event.token,
                "lock released: its session or lease expired"
            );
        }
        self.send_lock_events(&applied.lock_events);
        match &*entry.body {
            EntryBody::OpenSession { secret, ttl_ms } => {
                // The session id is the zxid of its creation.
                self.tracker.add(zxid, *ttl_ms, self.now.mono_ms);
                if let Some(conn) = self.pending_opens.remove(secret) {
                    self.opened(conn, zxid, *secret, *ttl_ms);
                }
            }
            EntryBody::Write {
                session_id, xid, ..
            }
            | EntryBody::OrderedWrite {
                session_id, xid, ..
            }
            | EntryBody::AckedWrite {
                session_id, xid, ..
            } => {
                self.pending_grants.remove(&(*session_id, *xid));
                if let Some(Ok(OpResult::Lease { lease_id, ttl_ms })) = &applied.result {
                    if self.machine.session(*lease_id).is_some() {
                        self.tracker.add(*lease_id, *ttl_ms, self.now.mono_ms);
                    }
                }
                if let Some(Err(e)) = &applied.result {
                    if e.code == ErrorCode::Deadlock {
                        self.stats.deadlocks_broken += 1;
                        if self.is_leader() {
                            tracing::warn!(zxid, "deadlock broken: {}", e.message);
                        }
                    }
                }
                if let Some(result) = applied.result {
                    if self.session_conns.contains_key(session_id) {
                        self.count_lock_result(&result);
                    }
                    self.complete(*session_id, *xid, zxid, result);
                }
            }
            EntryBody::CloseSession { session_id } => {
                if let Some(conn) = self.session_conns.get(session_id).copied() {
                    if let Some(result) = applied.result {
                        self.complete_close(conn, zxid, result);
                    }
                }
            }
            EntryBody::Noop { barrier } => {
                for (conn, xid) in self.barriers.remove(barrier).unwrap_or_default() {
                    self.complete_on(conn, xid, zxid, Ok(OpResult::Synced));
                }
                if let Some(waiters) = self.keepalive_barriers.remove(barrier) {
                    self.answer_keepalives(waiters, &[]);
                }
            }
            EntryBody::ExpireSessions { .. } => {}
        }
        for session in applied.ended_sessions {
            self.tracker.remove(session);
            // Its grants still in the log can only fail now.
            let grants: Vec<(u64, u64)> = self
                .pending_grants
                .range((session, 0)..=(session, u64::MAX))
                .copied()
                .collect();
            for grant in grants {
                self.pending_grants.remove(&grant);
            }
            if let Some(conn) = self.session_conns.get(&session).copied() {
                let msg = format!("session {session:#x} expired or was closed");
                self.goodbye(conn, ErrorInfo::new(ErrorCode::SessionExpired, msg));
            }
            self.watches.remove_session(session);
        }
    }

    fn count_lock_result(&mut self, result: &Result<OpResult, ErrorInfo>) {
        match result {
            Ok(OpResult::Locked { .. }) => self.stats.locks_granted_at_once += 1,
            Ok(OpResult::Queued { .. }) => self.stats.locks_queued += 1,
            Ok(OpResult::MultiLocked { granted: true, .. }) => {
                self.stats.locks_granted_at_once += 1
            }
            Ok(OpResult::MultiLocked { granted: false, .. }) => self.stats.locks_queued += 1,
            Ok(OpResult::Unlocked { released: false }) => self.stats.lock_releases_failed += 1,
            Err(e) if e.code == ErrorCode::LockHeld => self.stats.lock_tries_failed += 1,
            Err(e) if e.code == ErrorCode::NotLockOwner => self.stats.lock_releases_failed += 1,
            _ => {}
        }
    }

    fn send_event(&mut self, session: u64, event: WatchEvent) {
        if let Some(conn) = self.session_conns.get(&session).copied() {
            self.outputs.push(Output::Send {
                conn,
                msg: ServerMessage::Watch(event),
            });
        }
    }

    /// Records the result of an applied write for the request waiting on it.
    fn complete(&mut self, session: u64, xid: u64, zxid: u64, result: Result<OpResult, ErrorInfo>) {
        if let Some(conn) = self.session_conns.get(&session).copied() {
            self.complete_on(conn, xid, zxid, result);
        }
    }

    /// Records the result for the request `xid` waiting on connection `conn`.
    fn complete_on(
        &mut self,
        conn: ConnId,
        xid: u64,
        zxid: u64,
        result: Result<OpResult, ErrorInfo>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let waiting = c
            .queue
            .iter_mut()
            .find(|p| p.xid == xid && matches!(p.state, PendingState::Proposed));
        if let Some(p) = waiting {
            p.state = PendingState::Done(Response { xid, zxid, result });
            self.drain(conn);
        }
    }

    /// A close answered: every earlier answer, then `Closed`, then the connection ends.
    fn complete_close(&mut self, conn: ConnId, zxid: u64, result: Result<OpResult, ErrorInfo>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let waiting = c.queue.iter_mut().find(|p| {
            matches!(p.op, Op::CloseSession) && matches!(p.state, PendingState::Proposed)
        });
        let Some(p) = waiting else {
            return;
        };
        let close_xid = p.xid;
        p.state = PendingState::Done(Response {
            xid: close_xid,
            zxid,
            result,
        });
        // The requests before the close that still wait are keepalives (in a cluster
        // they wait for the leader's confirmation, which comes after the close applied):
        // the connection ends with the close, so they are answered now, in order,
        // instead of being dropped with it (and the close's answer behind them). None
        // was confirmed, so none is acknowledged: a `Pong` or a renewed lease would tell
        // the client its session or lease lived a TTL from when it sent the keepalive,
        // which the leader may never have heard of (it may have proposed the session's
        // expiry meanwhile: soak seed 25141448, a client believing in its session 21 ms
        // past its expiry). A lease renewal is `NoLease` if the lease ended with the
        // close. Nothing else can wait there; should anything, it is answered rather
        // than left behind.
        let mut refusals: BTreeMap<u64, ErrorInfo> = self
            .take_keepalives(conn)
            .into_iter()
            .map(|(xid, would_answer)| {
                let refusal = match would_answer {
                    OpResult::Lease { lease_id, .. }
                        if self.machine.session(lease_id).is_none() =>
                    {
                        ErrorInfo::new(
                            ErrorCode::NoLease,
                            format!("lease {lease_id:#x} ended with its session's close"),
                        )
                    }
                    _ => ErrorInfo::new(
                        ErrorCode::OperationTimeout,
                        "the session was closed before the leader confirmed this keepalive: \
                         it renewed nothing",
                    ),
                };
                (xid, refusal)
            })
            .collect();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        for p in c.queue.iter_mut() {
            if p.xid == close_xid && matches!(p.op, Op::CloseSession) {
                break;
            }
            if !matches!(p.state, PendingState::Proposed) {
                continue;
            }
            let refusal = refusals.remove(&p.xid).unwrap_or_else(|| {
                ErrorInfo::new(
                    ErrorCode::SystemError,
                    "the session was closed before this request was answered; it may or \
                     may not have been applied",
                )
            });
            let result = Err(refusal);
            p.state = PendingState::Done(Response {
                xid: p.xid,
                zxid,
                result,
            });
        }
        self.drain(conn);
        self.detach(conn);
        self.remove_conn(conn);
        self.outputs.push(Output::Close { conn });
    }

    /// Takes out the keepalives of connection `conn` still waiting for the leader's
    /// confirmation: (xid, the answer they would get).
    fn take_keepalives(&mut self, conn: ConnId) -> Vec<(u64, OpResult)> {
        let mut taken = Vec::new();
        let mut take = |waiters: &mut Vec<Keepalive>| {
            waiters.retain(|w| match w {
                Keepalive::Request(c, xid, result) if *c == conn => {
                    taken.push((*xid, result.clone()));
                    false
                }
                _ => true,
            })
        };
        take(&mut self.alive_waiters);
        for batch in self.alive_inflight.values_mut() {
            take(&mut batch.waiters);
        }
        for waiters in self.keepalive_barriers.values_mut() {
            take(waiters);
        }
        self.keepalive_barriers
            .retain(|_, waiters| !waiters.is_empty());
        taken
    }

    fn on_persist_failed(&mut self, error: String) {
        tracing::error!(
            %error,
            "the write-ahead log failed; this node now refuses writes and serves reads only \
             until it is restarted on a working disk"
        );
        let lost: Vec<(u64, Entry)> = match &mut self.log {
            Log::Local(log) => std::mem::take(&mut log.in_flight)
                .into_iter()
                .chain(std::mem::take(&mut log.unsent))
                .collect(),
            // A cluster node cannot take back what OmniPaxos has: it must stop.
            Log::Paxos(_) => Vec::new(),
        };
        self.disk_failed = Some(error.clone());
        let failure = ErrorInfo::new(
            ErrorCode::SystemError,
            format!("the server could not make the write durable: {error}; it was not applied"),
        );
        for (_, entry) in lost {
            match &*entry.body {
                EntryBody::Write {
                    session_id, xid, ..
                }
                | EntryBody::OrderedWrite {
                    session_id, xid, ..
                }
                | EntryBody::AckedWrite {
                    session_id, xid, ..
                } => {
                    self.pending_grants.remove(&(*session_id, *xid));
                    self.complete(
                        *session_id,
                        *xid,
                        self.machine.last_zxid(),
                        Err(failure.clone()),
                    )
                }
                EntryBody::CloseSession { session_id } => {
                    if let Some(conn) = self.session_conns.get(session_id).copied() {
                        self.complete_close(conn, self.machine.last_zxid(), Err(failure.clone()));
                    }
                }
                EntryBody::OpenSession { secret, .. } => {
                    if let Some(conn) = self.pending_opens.remove(secret) {
                        self.refuse(conn, failure.clone());
                    }
                }
                EntryBody::ExpireSessions { session_ids } => {
                    for &s in session_ids {
                        // Not expired after all; the tracker will propose again, and
                        // be refused, until the node is restarted.
                        self.tracker.touch(s, self.now.mono_ms);
                    }
                }
                EntryBody::Noop { barrier } => {
                    for (conn, xid) in self.barriers.remove(barrier).unwrap_or_default() {
                        self.complete_on(conn, xid, self.machine.last_zxid(), Err(failure.clone()));
                    }
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.now.mono_ms;
        if let Some(last) = self.last_tick_ms {
            let gap = now.saturating_sub(last);
            if gap > self.config.stall_threshold_ms {
                tracing::warn!(
                    gap_ms = gap,
                    "node was stalled; restarting every session deadline at full TTL"
                );
                // The expiries proposed before the stall stay: they are still ahead in
                // the log (one lost with a leadership change is forgotten below, when
                // the change is seen), and a keepalive or resume of their sessions
                // must not be acknowledged meanwhile.
                self.tracker.restart_deadlines(now);
            }
        }
        self.last_tick_ms = Some(now);
        self.committed_at_ticks = [self.committed_at_ticks[1], self.committed_zxid()];
        if let Log::Paxos(log) = &mut self.log {
            self.ticks += 1;
            if let Some(leader) = log.tick(&mut self.peer_out) {
                let me = self.config.node_id;
                tracing::info!(node = me, leader = ?leader, "leader changed");
                self.stats.leader_changes += 1;
                // Whoever leads now cannot know when clients last spoke to the old
                // leader: every session gets a full TTL (etcd's lessor does the same).
                if !crate::faults::active().keep_deadlines_on_leader_change {
                    self.tracker.restart_all(now);
                }
                // Reports the old leader did not acknowledge go to the new one.
                for b in self.alive_inflight.values_mut() {
                    b.sent_tick = 0;
                }
                // Keepalives waiting here for a barrier of our own leadership stay: the
                // barrier decides. Those waiting for a report move to the next one.
            }
            // The term really starts when this node leads in the accept phase: until a
            // majority promised, the previous leader still led and renewed sessions (and
            // the election may take longer than a TTL). Restart the deadlines again then.
            let leading = self.is_leader();
            if leading && !self.leading && !crate::faults::active().keep_deadlines_on_leader_change
            {
                self.tracker.restart_all(now);
            }
            self.leading = leading;
            if !self.is_leader() {
                // Waiting for a barrier we proposed as leader: a report to the leader
                // now answers them instead.
                for (_, waiters) in std::mem::take(&mut self.keepalive_barriers) {
                    self.alive_waiters.extend(waiters);
                }
                self.report_waiting_keepalives();
                self.report_alive();
                return;
            }
            self.confirm_keepalives();
        }
        if self.disk_failed.is_some() {
            return;
        }
        // A lock-delay ends only when an entry with a later time is applied: propose one.
        if let Some(end) = self.machine.next_lock_delay_end() {
            if end <= self.now.wall_ms && self.delay_nudged != Some(end) {
                self.delay_nudged = Some(end);
                let barrier = self.fresh_barrier_id();
                let _ = self.propose(EntryBody::Noop { barrier });
            }
        }
        let expired = self.tracker.take_expired(now);
        if !expired.is_empty() {
            tracing::info!(sessions = ?expired, "expiring sessions");
            let count = expired.len() as u64;
            #[cfg(any(test, feature = "sim"))]
            {
                let sessions = expired.clone();
                self.record(|| Probe::ExpiryProposed {
                    sessions,
                    mono_ms: now,
                });
            }
            match self.propose(EntryBody::ExpireSessions {
                session_ids: expired,
            }) {
                // Counted once proposed: a refused proposal is proposed again later.
                Ok(()) => self.stats.sessions_expired += count,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot propose session expiry");
                    self.tracker.restart_all(now);
                }
            }
        }
    }

    /// Follower: sends the sessions heard from since the last report to the leader, and
    /// resends reports the leader has not acknowledged.
    fn report_alive(&mut self) {
        let Some(leader) = self.leader().filter(|l| *l != self.config.node_id) else {
            return;
        };
        if !self.alive.is_empty() || !self.alive_waiters.is_empty() {
            let batch = self.next_alive_batch;
            self.next_alive_batch += 1;
            fold_reports(
                &mut self.alive_inflight,
                &mut self.alive,
                &mut self.alive_waiters,
            );
            let sessions: Vec<u64> = std::mem::take(&mut self.alive).into_iter().collect();
            self.peer_out.push((
                leader,
                PeerMsg::Alive {
                    batch,
                    sessions: sessions.clone(),
                },
            ));
            self.alive_inflight.insert(
                batch,
                AliveBatch {
                    sessions,
                    waiters: std::mem::take(&mut self.alive_waiters),
                    sent_tick: self.ticks,
                },
            );
        }
        let ticks = self.ticks;
        for (batch, b) in self.alive_inflight.iter_mut() {
            if ticks - b.sent_tick >= ALIVE_RESEND_TICKS {
                b.sent_tick = ticks;
                self.peer_out.push((
                    leader,
                    PeerMsg::Alive {
                        batch: *batch,
                        sessions: b.sessions.clone(),
                    },
                ));
            }
        }
    }

    /// Leader: keepalives that arrived since the last tick wait for a barrier proposed
    /// now; when it is decided, this node was still the leader after they arrived, so
    /// the renewals it recorded are the cluster's.
    fn confirm_keepalives(&mut self) {
        // Reports this node sent while it was a follower: answered like the others.
        for (_, b) in std::mem::take(&mut self.alive_inflight) {
            self.alive_waiters.extend(b.waiters);
        }
        if self.alive_waiters.is_empty() {
            return;
        }
        let id = self.fresh_barrier_id();
        // Untracked: forwarded to (and decided by) a later leader, the barrier would prove
        // nothing about this node's leadership (a deposed leader would answer keepalives
        // that the new leader never saw).
        let entry = Entry::new(self.now.wall_ms, EntryBody::Noop { barrier: id });
        let appended = match &mut self.log {
            Log::Paxos(log) => log.append_untracked(entry).is_ok(),
            Log::Local(_) => false,
        };
        if appended {
            let waiters = std::mem::take(&mut self.alive_waiters);
            self.keepalive_barriers.insert(id, waiters);
        }
    }

    /// Keepalives that hold answers back are reported (follower) or confirmed (leader)
    /// at the end of the pass instead of at the next tick. Responses go in request order
    /// per connection, so a ping sent among a client's requests held the answers behind
    /// it for up to two ticks (the follower's report, then the leader's barrier): a lock
    /// released just after a client's periodic ping took 12 to 60 ms instead of 1. Held
    /// back: a ping or renewal whose connection has other requests waiting, a resumed
    /// session (its client waits to be accepted), and on a leader every follower report
    /// (it cannot tell a hurried one from a tick's). Lone pings of idle sessions still wait
    /// for the tick, so they cost a report and a barrier per tick, not one per ping.
    fn hurry_keepalives(&mut self) {
        if !matches!(self.log, Log::Paxos(_)) {
            return;
        }
        let conns = &self.conns;
        let holds_back = |k: &Keepalive| match k {
            Keepalive::Request(conn, ..) => conns.get(conn).is_some_and(|c| c.queue.len() > 1),
            Keepalive::Resume { .. } | Keepalive::Ack { .. } => true,
        };
        if !self.alive_waiters.iter().any(holds_back) {
            return;
        }
        if self.is_leader() {
            if self.leading && self.keepalive_barriers.len() < MAX_HURRIED_IN_FLIGHT {
                self.confirm_keepalives();
            }
        } else if self.alive_inflight.len() < MAX_HURRIED_IN_FLIGHT {
            self.report_alive();
        }
    }

    /// Follower: the keepalives waiting to be answered must be in the next report, or
    /// the leader's acknowledgement would not cover them (those this node collected while
    /// it led were renewed only on its own tracker). Acknowledgements this node owed
    /// other followers as leader are dropped: they resend their reports to the new leader.
    fn report_waiting_keepalives(&mut self) {
        let waiters = std::mem::take(&mut self.alive_waiters);
        for waiter in waiters {
            match &waiter {
                Keepalive::Ack { .. } => continue,
                Keepalive::Request(conn, _, result) => {
                    if let Some(session) = self.conns.get(conn).and_then(|c| c.session) {
                        self.alive.insert(session);
                    }
                    if let OpResult::Lease { lease_id, .. } = result {
                        self.alive.insert(*lease_id);
                    }
                }
                Keepalive::Resume { session, .. } => {
                    self.alive.insert(*session);
                }
            }
            self.alive_waiters.push(waiter);
        }
    }

    /// Answers waiting keepalives of one acknowledged report; `gone` lists the sessions
    /// the leader does not have any more.
    fn answer_report(&mut self, batch: u64, gone: &[u64]) {
        let waiters = self
            .alive_inflight
            .remove(&batch)
            .map(|b| b.waiters)
            .unwrap_or_default();
        self.answer_keepalives(waiters, gone);
    }

    fn answer_keepalives(&mut self, waiters: Vec<Keepalive>, gone: &[u64]) {
        let zxid = self.machine.last_zxid();
        for waiter in waiters {
            match waiter {
                Keepalive::Request(conn, xid, result) => {
                    let session = self.conns.get(&conn).and_then(|c| c.session);
                    let lease = match &result {
                        OpResult::Lease { lease_id, .. } => Some(*lease_id),
                        _ => None,
                    };
                    // Gone by the leader's word, or by this node's state now (an expiry
                    // decided while the keepalive waited has been applied by now).
                    let gone_now = |s: u64| gone.contains(&s) || self.machine.session(s).is_none();
                    let answer = if lease.is_some_and(gone_now) {
                        Err(ErrorInfo::new(
                            ErrorCode::NoLease,
                            "the lease expired: the leader no longer has it",
                        ))
                    } else if session.is_some_and(gone_now) {
                        Err(ErrorInfo::new(
                            ErrorCode::SessionExpired,
                            "the session expired: the leader no longer has it",
                        ))
                    } else {
                        Ok(result)
                    };
                    self.complete_on(conn, xid, zxid, answer)
                }
                Keepalive::Ack {
                    peer,
                    batch,
                    sessions,
                } => {
                    // Computed now, not when the report arrived: an expiry decided before
                    // the confirming barrier has been applied by now.
                    let gone = sessions
                        .into_iter()
                        .filter(|s| {
                            self.machine.session(*s).is_none() || self.tracker.is_expiring(*s)
                        })
                        .collect();
                    self.peer_out
                        .push((peer, PeerMsg::AliveAck { batch, gone }));
                }
                Keepalive::Resume {
                    conn,
                    session,
                    secret,
                    ttl_ms,
                } => {
                    let live = self.machine.session(session).is_some()
                        && !self.tracker.is_expiring(session)
                        && !gone.contains(&session);
                    if !self.conns.contains_key(&conn) {
                        continue;
                    }
                    if live {
                        if let Some(old) = self.session_conns.get(&session).copied() {
                            if old != conn {
                                let msg = format!(
                                    "session {session:#x} was resumed on another connection"
                                );
                                self.goodbye(old, ErrorInfo::new(ErrorCode::SessionMoved, msg));
                            }
                        }
                        self.attach(conn, session, secret, ttl_ms);
                    } else {
                        let msg = format!("session {session:#x} has expired");
                        self.refuse(conn, ErrorInfo::new(ErrorCode::SessionExpired, msg));
                    }
                }
            }
        }
    }

    /// `LimitExceeded` once `max_sessions` sessions and leases (a lease is a session
    /// without a connection, tracked and expired like one) are open or being opened
    /// (an open or a `GrantLease` this node proposed and has not seen applied).
    fn room_for_a_session(&self) -> Result<(), ErrorInfo> {
        let live = self.tracker.len() + self.pending_opens.len() + self.pending_grants.len();
        if live < self.config.max_sessions {
            return Ok(());
        }
        let msg = format!(
            "{live} sessions and leases are open, the limit max_sessions is {}",
            self.config.max_sessions
        );
        Err(ErrorInfo::new(ErrorCode::LimitExceeded, msg))
    }

    /// A `GrantLease` takes a session's room: refused like a new session at the limit.
    fn admit_lease(&self, op: &Op) -> Result<(), ErrorInfo> {
        match op {
            Op::GrantLease { .. } => self.room_for_a_session(),
            _ => Ok(()),
        }
    }

    /// Refuses a write that would take the tree past `max_state_bytes`. Writes that add
    /// nothing (deletes, releases, smaller data) always pass, so a full tree can be
    /// emptied. Writes admitted on several nodes at once can overshoot the limit by what
    /// they add together: it bounds memory, it is not an exact quota.
    fn admit_state_growth(&self, op: &Op) -> Result<(), ErrorInfo> {
        let growth = self.machine.state_growth(op);
        let now = self.machine.state_bytes();
        let max = self.config.max_state_bytes;
        if growth == 0 || now.saturating_add(growth) <= max {
            return Ok(());
        }
        let msg = format!(
            "the tree takes about {now} bytes and this write would add about {growth}, \
             over the limit max_state_bytes = {max}; delete nodes to make room"
        );
        Err(ErrorInfo::new(ErrorCode::LimitExceeded, msg))
    }

    fn on_peer(&mut self, from: u64, msg: PeerMsg) {
        match msg {
            PeerMsg::Alive { batch, sessions } => {
                if self.is_leader() {
                    for session in &sessions {
                        if self.machine.session(*session).is_some()
                            && !self.tracker.is_expiring(*session)
                            && !crate::faults::active().ignore_alive_reports
                        {
                            self.tracker.touch(*session, self.now.mono_ms);
                        }
                    }
                    self.alive_waiters.push(Keepalive::Ack {
                        peer: from,
                        batch,
                        sessions,
                    });
                }
                return;
            }
            PeerMsg::AliveAck { batch, gone } => {
                self.answer_report(batch, &gone);
                return;
            }
            _ => {}
        }
        let Log::Paxos(log) = &mut self.log else {
            tracing::warn!(from, "peer message on a single node; ignored");
            return;
        };
        if matches!(msg, PeerMsg::PromiseQuery) {
            let reply = PeerMsg::PromiseReply(log.promise(), log.accepted_idx());
            self.peer_out.push((from, reply));
            return;
        }
        log.on_peer(from, msg);
    }

    fn on_shutdown(&mut self) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            let msg = "the server is shutting down; reconnect to another server";
            self.goodbye(conn, ErrorInfo::new(ErrorCode::Unavailable, msg));
        }
    }
}

/// The path of a `Sync`.
fn sync_path(op: &Op) -> Option<&str> {
    match op {
        Op::Sync { path } => Some(path),
        _ => None,
    }
}

/// Follower, about to send a session report: if `MAX_ALIVE_REPORTS_IN_FLIGHT` reports
/// wait for the leader's acknowledgement (a partition that kept its ballot acknowledges
/// nothing), they are folded into the new one (their sessions into `alive`, their
/// waiting keepalives into `waiters`), so that they stay bounded by the sessions and the
/// waiting keepalives instead of growing by one per tick. An acknowledgement of a folded
/// report names a batch that is gone and answers nothing; the new report's answers them
/// all, as the leader renews its sessions after it arrived.
fn fold_reports(
    inflight: &mut BTreeMap<u64, AliveBatch>,
    alive: &mut BTreeSet<u64>,
    waiters: &mut Vec<Keepalive>,
) {
    if inflight.len() < MAX_ALIVE_REPORTS_IN_FLIGHT {
        return;
    }
    for (_, old) in std::mem::take(inflight) {
        alive.extend(old.sessions);
        waiters.extend(old.waiters);
    }
}

/// The bytes of `entry` as sent to a peer, which the compaction intervals bound.
fn entry_bytes(entry: &Entry) -> u64 {
    corral_protocol::frame::frame_len(entry) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single_node() -> Node {
        let config = NodeConfig {
            node_id: 1,
            machine: MachineLimits::default(),
            max_sessions: 100,
            max_pending_requests_per_connection: 100,
            max_watches_per_session: 100,
            max_state_bytes: u64::MAX,
            min_session_ttl_ms: 1_000,
            max_session_ttl_ms: 60_000,
            snapshot_every_entries: 1_000,
            snapshot_every_bytes: u64::MAX,
            max_frame_bytes: corral_protocol::DEFAULT_MAX_FRAME_BYTES,
            stall_threshold_ms: 10_000,
        };
        let machine = StateMachine::new(MachineLimits::default());
        Node::new(config, machine, Log::local(0), NOW)
    }

    const NOW: Now = Now {
        mono_ms: 1_000,
        wall_ms: 1_700_000_000_000,
    };

    /// The batches a pass handed to the shell to persist.
    fn persisted_batches(outputs: &[Output]) -> Vec<u64> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Persist { batch, .. } => Some(*batch),
                _ => None,
            })
            .collect()
    }

    /// A client that gives up on its handshake (its connection closes) before the new
    /// session is opened leaves a session nobody knows the secret of: it is closed at
    /// once instead of holding a `max_sessions` place until its TTL. A session whose
    /// connection is still there is attached as ever.
    #[test]
    fn a_session_opened_after_its_handshake_connection_closed_is_closed() {
        let hello = || Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 0);
        for gives_up in [false, true] {
            let mut node = single_node();
            let out = node.handle(
                NOW,
                Input::Hello {
                    conn: 7,
                    hello: hello(),
                    secret: 42,
                },
            );
            assert_eq!(persisted_batches(&out), [1]);
            if gives_up {
                node.handle(NOW, Input::Disconnected { conn: 7 });
            }
            let out = node.handle(NOW, Input::Persisted { batch: 1 });
            assert_eq!(node.machine().session_count(), 1, "opened");
            if !gives_up {
                assert!(persisted_batches(&out).is_empty(), "{out:?}");
                assert!(node.session_conns.contains_key(&node.machine().last_zxid()));
                continue;
            }
            assert_eq!(persisted_batches(&out), [2], "a close is proposed");
            node.handle(NOW, Input::Persisted { batch: 2 });
            assert_eq!(node.machine().session_count(), 0, "and applied");
            assert_eq!(node.tracker.len(), 0);
        }
    }

    /// The node at `mono_ms` on the monotonic clock (the wall clock moves alike).
    fn at(mono_ms: u64) -> Now {
        Now {
            mono_ms,
            wall_ms: NOW.wall_ms + (mono_ms - NOW.mono_ms) as i64,
        }
    }

    /// Opens a session of `ttl_ms` on connection `conn` of a single node and returns
    /// its id (the node's first batch must be the open).
    fn open_session(node: &mut Node, conn: ConnId, ttl_ms: u64, now: Now) -> u64 {
        let hello = Hello::new(SessionRequest::New { ttl_ms }, 0);
        let out = node.handle(
            now,
            Input::Hello {
                conn,
                hello,
                secret: 1_000 + conn,
            },
        );
        let batches = persisted_batches(&out);
        assert_eq!(batches.len(), 1, "{out:?}");
        let out = node.handle(now, Input::Persisted { batch: batches[0] });
        out.iter()
            .find_map(|o| match o {
                Output::HelloReply {
                    conn: c,
                    reply: HelloReply::Accepted(g),
                } if *c == conn => Some(g.session_id),
                _ => None,
            })
            .unwrap_or_else(|| panic!("session granted: {out:?}"))
    }

    /// A single node also snapshots once the entries since its last snapshot reach
    /// `snapshot_every_bytes`, however few they are.
    #[test]
    fn a_single_node_snapshots_after_snapshot_every_bytes_of_entries() {
        let mut node = single_node();
        node.config.snapshot_every_bytes = 100 << 10;
        open_session(&mut node, 1, 10_000, NOW);
        let mut snapshots = Vec::new();
        for xid in 1..=6u64 {
            let set = Op::SetData {
                path: "/".into(),
                data: vec![7; 40 << 10],
                version: None,
            };
            let out = node.handle(NOW, request(1, xid, set));
            let batches = persisted_batches(&out);
            assert_eq!(batches.len(), 1, "{out:?}");
            let out = node.handle(NOW, Input::Persisted { batch: batches[0] });
            snapshots.extend(out.iter().filter_map(|o| match o {
                Output::Snapshot { index, .. } => Some((xid, *index)),
                _ => None,
            }));
        }
        // The open is entry 1; the third set (entry 4) passes 100 KB, and so does the
        // sixth (the third since).
        assert_eq!(snapshots, [(3, 4), (6, 7)]);
    }

    /// The responses sent to `conn`, in order.
    fn responses(outputs: &[Output], conn: ConnId) -> Vec<&Response> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send {
                    conn: c,
                    msg: ServerMessage::Response(r),
                } if *c == conn => Some(r),
                _ => None,
            })
            .collect()
    }

    /// A single node whose expiry of a session is proposed and not yet durable when a
    /// stall (a gap between ticks) restarts every deadline must not acknowledge a
    /// keepalive, or accept a resume, of that session: its expiry is in the log ahead
    /// of them and will apply; the client would believe in a lease (and locks) that
    /// end a moment later.
    #[test]
    fn a_stall_does_not_let_a_session_being_expired_be_kept_alive() {
        let mut node = single_node();
        let session = open_session(&mut node, 1, 1_000, NOW);
        node.handle(NOW, Input::Tick);
        // Silent past its TTL: its expiry is proposed, and its batch is being synced.
        let out = node.handle(at(2_500), Input::Tick);
        let expiry = persisted_batches(&out);
        assert_eq!(expiry.len(), 1, "the expiry is proposed: {out:?}");
        // The node stalls (SIGSTOP, swap) with the batch in flight; the next tick
        // restarts every deadline.
        let later = at(2_500 + 10_001);
        node.handle(later, Input::Tick);
        let out = node.handle(
            later,
            Input::Request {
                conn: 1,
                request: Request {
                    xid: 1,
                    op: Op::Ping,
                },
            },
        );
        let answers = responses(&out, 1);
        assert_eq!(answers.len(), 1, "{out:?}");
        assert!(
            matches!(&answers[0].result, Err(e) if e.code == ErrorCode::SessionExpired),
            "a ping of a session whose expiry is in the log: {:?}",
            answers[0].result
        );
        let secret = node.machine().session(session).map(|s| s.secret);
        let hello = Hello::new(
            SessionRequest::Resume {
                session_id: session,
                secret: secret.unwrap_or_default(),
            },
            0,
        );
        let out = node.handle(
            later,
            Input::Hello {
                conn: 2,
                hello,
                secret: 0,
            },
        );
        assert!(
            out.iter().any(|o| matches!(
                o,
                Output::HelloReply {
                    conn: 2,
                    reply: HelloReply::Refused(e),
                } if e.code == ErrorCode::SessionExpired
            )),
            "a resume of a session whose expiry is in the log: {out:?}"
        );
        node.handle(later, Input::Persisted { batch: expiry[0] });
        assert!(node.machine().session(session).is_none(), "expired");
    }

    /// `max_sessions` counts the leases being granted, not only those applied: a client
    /// that pipelines `GrantLease` requests faster than the log makes them durable
    /// cannot open more sessions and leases than the limit.
    #[test]
    fn pipelined_lease_grants_do_not_pass_max_sessions() {
        let mut node = single_node();
        let max = node.config.max_sessions;
        node.config.max_pending_requests_per_connection = 4 * max;
        open_session(&mut node, 1, 10_000, NOW);
        let mut out = Vec::new();
        for xid in 1..=2 * max as u64 {
            out.extend(node.take_in(
                NOW,
                Input::Request {
                    conn: 1,
                    request: Request {
                        xid,
                        op: Op::GrantLease { ttl_ms: 10_000 },
                    },
                },
            ));
        }
        out.extend(node.end_pass(NOW));
        for batch in persisted_batches(&out) {
            node.handle(NOW, Input::Persisted { batch });
        }
        assert!(
            node.machine().session_count() <= max,
            "{} sessions and leases, max_sessions {max}",
            node.machine().session_count()
        );
        assert_eq!(node.machine().session_count(), max, "up to the limit");
    }

    /// Three cluster nodes on simulated disks, with a network that delivers every
    /// message at once and in order, and syncs that complete at once: a deterministic
    /// stage for what a cluster member's core does with its clients.
    struct Cluster {
        nodes: Vec<Node>,
        syncs: Vec<crate::replication::storage::SyncHandle>,
        /// Inputs waiting, in order, by node index.
        queue: VecDeque<(usize, Input)>,
        /// What the nodes sent their clients: (node index, output).
        client: Vec<(usize, Output)>,
        mono_ms: u64,
        /// A node cut off from the others: messages to and from it are lost.
        cut: Option<usize>,
        /// Largest peer message the links carry; a larger one resets its link.
        peer_frame_bytes: usize,
        /// A node whose log writes are held (a slow disk): its sync batches wait here.
        slow_disk: Option<(usize, Vec<u64>)>,
    }

    /// What a [`Cluster`] is made with.
    struct Stage {
        snapshot_every_entries: u64,
        snapshot_every_bytes: u64,
        peer_frame_bytes: usize,
    }

    impl Default for Stage {
        fn default() -> Stage {
            Stage {
                snapshot_every_entries: 1_000,
                snapshot_every_bytes: u64::MAX,
                peer_frame_bytes: usize::MAX,
            }
        }
    }

    const TICK_MS: u64 = 10;

    impl Cluster {
        fn new() -> Cluster {
            Cluster::with(Stage::default())
        }

        fn with(stage: Stage) -> Cluster {
            use crate::disk::{Disk, SimDisk};
            use crate::replication::log::PaxosSettings;
            use crate::replication::storage::PaxosStorageConfig;
            use crate::replication::{open_cluster_on, ClusterSettings};
            let limits = MachineLimits::default();
            let mut nodes = Vec::new();
            let mut syncs = Vec::new();
            for id in 1..=3u64 {
                let config = PaxosStorageConfig::new(
                    crate::wal::WalOptions {
                        segment_bytes: 64 << 20,
                        fsync: true,
                        preallocate_bytes: 0,
                    },
                    limits,
                );
                let settings = ClusterSettings {
                    node_id: id,
                    members: vec![1, 2, 3],
                    election_ticks: 5,
                    resend_ticks: 5,
                    log: PaxosSettings {
                        forward_retry_ticks: 5,
                        election_ticks: 5,
                        max_forwarded_entries: 1024,
                        max_forward_batch_bytes: (stage.peer_frame_bytes / 2)
                            .min(corral_protocol::DEFAULT_MAX_FRAME_BYTES),
                        limits,
                        encode_images_in_background: false,
                    },
                };
                let disk = Disk::Sim(SimDisk::new(id));
                let recovered =
                    open_cluster_on(&disk, std::path::Path::new("/data/paxos"), config, settings)
                        .unwrap_or_else(|e| panic!("open node {id}: {e}"));
                let (machine, log) = recovered.start(None).expect("start");
                syncs.push(log.sync_handle());
                let mut node_config = single_node().config;
                node_config.node_id = id;
                node_config.snapshot_every_entries = stage.snapshot_every_entries;
                node_config.snapshot_every_bytes = stage.snapshot_every_bytes;
                nodes.push(Node::new(
                    node_config,
                    machine,
                    Log::Paxos(Box::new(log)),
                    NOW,
                ));
            }
            let mut cluster = Cluster {
                nodes,
                syncs,
                queue: VecDeque::new(),
                client: Vec::new(),
                mono_ms: NOW.mono_ms,
                cut: None,
                peer_frame_bytes: stage.peer_frame_bytes,
                slow_disk: None,
            };
            for n in 0..3 {
                for peer in (1..=3).filter(|p| *p != n as u64 + 1) {
                    let version = crate::replication::transport::PEER_PROTOCOL_VERSION;
                    cluster
                        .queue
                        .push_back((n, Input::LinkUp { peer, version }));
                }
            }
            cluster.run_until("a leader", 500, |c| {
                c.nodes.iter().filter(|n| n.is_leader()).count() == 1
                    && c.nodes.iter().all(|n| n.leader().is_some())
            });
            cluster
        }

        fn now(&self) -> Now {
            at(self.mono_ms)
        }

        /// Carries out a node's outputs.
        fn dispatch(&mut self, n: usize, outputs: Vec<Output>) {
            for output in outputs {
                match output {
                    Output::PeerSend { to, msg } => {
                        let from = n as u64 + 1;
                        let to = to as usize - 1;
                        if self.cut == Some(n) || self.cut == Some(to) {
                            continue;
                        }
                        if corral_protocol::frame::frame_len(&msg) > self.peer_frame_bytes {
                            // The transport cannot send it: the link is reset.
                            let peer = to as u64 + 1;
                            let version = crate::replication::transport::PEER_PROTOCOL_VERSION;
                            self.queue.push_back((n, Input::LinkDown { peer }));
                            self.queue.push_back((n, Input::LinkUp { peer, version }));
                            continue;
                        }
                        self.queue.push_back((to, Input::Peer { from, msg }));
                    }
                    Output::Decode(job) => {
                        let index = job.index;
                        let machine = job.decode().map(Box::new);
                        self.queue.push_back((n, Input::Decoded { index, machine }));
                    }
                    Output::Sync { batch } => match &mut self.slow_disk {
                        Some((slow, held)) if *slow == n => held.push(batch),
                        _ => {
                            self.syncs[n].sync().expect("sync");
                            self.queue.push_back((n, Input::Persisted { batch }));
                        }
                    },
                    Output::Persist { .. } => {
                        panic!("unexpected in this cluster: {output:?}")
                    }
                    Output::Snapshot { .. } => {}
                    client => self.client.push((n, client)),
                }
            }
        }

        /// Delivers every waiting input, and what they cause.
        fn settle(&mut self) {
            while let Some((n, input)) = self.queue.pop_front() {
                let now = self.now();
                let outputs = self.nodes[n].handle(now, input);
                self.dispatch(n, outputs);
            }
        }

        /// Ticks every node once, then settles.
        fn tick(&mut self) {
            self.mono_ms += TICK_MS;
            for n in 0..self.nodes.len() {
                self.queue.push_back((n, Input::Tick));
                self.settle();
            }
        }

        /// Ticks until `done` holds, at most `ticks` times.
        fn run_until(&mut self, what: &str, ticks: usize, done: impl Fn(&Cluster) -> bool) {
            self.settle();
            for _ in 0..ticks {
                if done(self) {
                    return;
                }
                self.tick();
            }
            assert!(done(self), "no {what} after {ticks} ticks");
        }

        /// Takes in these inputs at node `n` in one pass, then settles.
        fn pass(&mut self, n: usize, inputs: Vec<Input>) {
            let now = self.now();
            for input in inputs {
                let outputs = self.nodes[n].take_in(now, input);
                self.dispatch(n, outputs);
            }
            let outputs = self.nodes[n].end_pass(now);
            self.dispatch(n, outputs);
            self.settle();
        }

        /// Opens a session on connection `conn` of node `n`; returns its id.
        fn open_session(&mut self, n: usize, conn: ConnId) -> u64 {
            let hello = Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 0);
            self.pass(
                n,
                vec![Input::Hello {
                    conn,
                    hello,
                    secret: 7_000 + conn,
                }],
            );
            self.run_until("session", 100, |c| c.granted(conn).is_some());
            self.granted(conn).unwrap_or_default()
        }

        fn granted(&self, conn: ConnId) -> Option<u64> {
            self.client.iter().find_map(|(_, o)| match o {
                Output::HelloReply {
                    conn: c,
                    reply: HelloReply::Accepted(g),
                } if *c == conn => Some(g.session_id),
                _ => None,
            })
        }

        /// What connection `conn` received, in order.
        fn received(&self, conn: ConnId) -> Vec<&Output> {
            self.client
                .iter()
                .map(|(_, o)| o)
                .filter(|o| match o {
                    Output::Send { conn: c, .. }
                    | Output::Close { conn: c }
                    | Output::HelloReply { conn: c, .. } => *c == conn,
                    _ => false,
                })
                .collect()
        }

        /// Ends the cut: the cut node's links to the others are re-established.
        fn heal(&mut self) {
            let Some(cut) = self.cut.take() else {
                return;
            };
            let version = crate::replication::transport::PEER_PROTOCOL_VERSION;
            for other in (0..self.nodes.len()).filter(|o| *o != cut) {
                for (n, peer) in [(cut, other as u64 + 1), (other, cut as u64 + 1)] {
                    self.queue.push_back((n, Input::LinkDown { peer }));
                    self.queue.push_back((n, Input::LinkUp { peer, version }));
                }
            }
        }

        fn leader_index(&self) -> usize {
            (0..3)
                .find(|n| self.nodes[*n].is_leader())
                .expect("a leader")
        }

        fn follower(&self) -> usize {
            (0..3)
                .find(|n| !self.nodes[*n].is_leader())
                .expect("a follower")
        }
    }

    /// Creates a persistent node at `path`, its parent existing.
    fn persistent(path: &str) -> Op {
        Op::Create(corral_protocol::CreateRequest {
            path: path.into(),
            data: Vec::new(),
            mode: corral_protocol::CreateMode::Persistent,
            make_parents: false,
        })
    }

    fn request(conn: ConnId, xid: u64, op: Op) -> Input {
        Input::Request {
            conn,
            request: Request { xid, op },
        }
    }

    /// A follower that missed more entries than a peer message holds is caught up: the
    /// leader marks a compaction point every `snapshot_every_bytes` of entries, so what
    /// its log keeps past its compaction, which the catch-up message carries after the
    /// state's image, stays within a frame. With compaction points only every
    /// `snapshot_every_entries` (here never), the catch-up of 3 MiB of writes at the
    /// smallest peer frame limit the configuration accepts could not be sent: its link
    /// was reset, and the same message built again, until a compaction covered what the
    /// follower lacked.
    #[test]
    fn a_follower_behind_by_more_than_a_frame_of_entries_catches_up() {
        let peer_frame_bytes = 2 * corral_protocol::DEFAULT_MAX_FRAME_BYTES;
        let mut cluster = Cluster::with(Stage {
            snapshot_every_entries: 1_000_000,
            snapshot_every_bytes: peer_frame_bytes as u64 / 8,
            peer_frame_bytes,
        });
        let leader = cluster.leader_index();
        let behind = cluster.follower();
        cluster.open_session(leader, 1);
        let create = persistent("/big");
        cluster.pass(leader, vec![request(1, 1, create)]);
        cluster.cut = Some(behind);
        let writes = 12u64;
        for xid in 2..2 + writes {
            let set = Op::SetData {
                path: "/big".into(),
                data: vec![xid as u8; 256 << 10],
                version: None,
            };
            cluster.pass(leader, vec![request(1, xid, set)]);
            cluster.run_until("the write", 50, |c| {
                c.received(1).iter().any(|o| {
                    matches!(o, Output::Send { msg: ServerMessage::Response(r), .. } if r.xid == xid)
                })
            });
        }
        let missed = cluster.nodes[leader].machine().last_zxid()
            - cluster.nodes[behind].machine().last_zxid();
        assert!(
            missed >= writes,
            "the follower missed the writes ({missed} entries)"
        );
        cluster.heal();
        cluster.run_until("catch-up of the follower", 300, |c| {
            c.nodes[behind].machine().last_zxid() == c.nodes[leader].machine().last_zxid()
        });
        let data = |n: usize| {
            cluster.nodes[n]
                .machine()
                .get_data("/big")
                .map(|(data, stat)| (data.first().copied(), stat.version))
        };
        assert_eq!(data(behind), data(leader));
        for node in &cluster.nodes {
            node.check_invariants().expect("node invariants");
        }
    }

    /// A follower is ready while it has applied what it knew committed a tick ago: under
    /// writes a follower often knows an entry committed before its own log holds it (the
    /// leader and the other follower made the majority), and readiness must not flap
    /// then. One whose log write stays stuck for longer lags, and is not ready until the
    /// write completes.
    #[test]
    fn a_follower_waiting_for_its_own_log_write_is_ready_for_a_tick() {
        let mut cluster = Cluster::new();
        let leader = cluster.leader_index();
        let slow = cluster.follower();
        cluster.open_session(leader, 1);
        cluster.tick();
        cluster.tick();
        let ready = |c: &Cluster| crate::status::core_status(&c.nodes[slow]).ready;
        assert!(ready(&cluster), "caught up");
        cluster.slow_disk = Some((slow, Vec::new()));
        let create = persistent("/a");
        cluster.pass(leader, vec![request(1, 1, create)]);
        cluster.run_until("the write decided on the slow follower", 50, |c| {
            c.nodes[slow].committed_zxid() > c.nodes[slow].machine().last_zxid()
        });
        assert!(ready(&cluster), "its own log write is under way");
        cluster.tick();
        assert!(ready(&cluster), "committed for less than a tick");
        cluster.tick();
        assert!(!ready(&cluster), "lagging by more than a tick");
        let (_, held) = cluster.slow_disk.take().expect("held");
        cluster.syncs[slow].sync().expect("sync");
        for batch in held {
            cluster.queue.push_back((slow, Input::Persisted { batch }));
        }
        cluster.settle();
        assert_eq!(
            cluster.nodes[slow].machine().last_zxid(),
            cluster.nodes[slow].committed_zxid()
        );
        assert!(ready(&cluster), "caught up again");
    }

    /// A `CloseSession` pipelined behind keepalives on a cluster member: the close
    /// applies before the keepalives are confirmed (that waits for the leader's next
    /// report or barrier), and every request of the connection is still answered, in
    /// order, `Closed` last, before the connection ends: the ping as it would have
    /// been, the renewal of a lease that ended with the session `NoLease`.
    #[test]
    fn a_close_behind_keepalives_is_answered() {
        for on_leader in [false, true] {
            let mut cluster = Cluster::new();
            let n = if on_leader {
                (0..3).find(|n| cluster.nodes[*n].is_leader()).unwrap_or(0)
            } else {
                cluster.follower()
            };
            cluster.open_session(n, 1);
            cluster.pass(n, vec![request(1, 1, Op::GrantLease { ttl_ms: 10_000 })]);
            cluster.run_until("lease", 100, |c| {
                c.received(1)
                    .iter()
                    .any(|o| matches!(o, Output::Send { .. }))
            });
            let lease_id = match cluster.received(1).last() {
                Some(Output::Send {
                    msg:
                        ServerMessage::Response(Response {
                            result: Ok(OpResult::Lease { lease_id, .. }),
                            ..
                        }),
                    ..
                }) => *lease_id,
                other => panic!("a lease: {other:?}"),
            };
            cluster.pass(
                n,
                vec![
                    request(1, 2, Op::Ping),
                    request(1, 3, Op::RenewLease { lease_id }),
                    request(1, 4, Op::CloseSession),
                ],
            );
            cluster.run_until("close", 100, |c| {
                c.received(1)
                    .iter()
                    .any(|o| matches!(o, Output::Close { .. }))
            });
            let received = cluster.received(1);
            let answers: Vec<(u64, Result<&OpResult, ErrorCode>)> = received
                .iter()
                .filter_map(|o| match o {
                    Output::Send {
                        msg: ServerMessage::Response(r),
                        ..
                    } => Some((r.xid, r.result.as_ref().map_err(|e| e.code))),
                    _ => None,
                })
                .skip(1)
                .collect();
            assert_eq!(
                answers,
                [
                    (2, Err(ErrorCode::OperationTimeout)),
                    (3, Err(ErrorCode::NoLease)),
                    (4, Ok(&OpResult::Closed))
                ],
                "on the {}: {received:?}",
                if on_leader { "leader" } else { "follower" }
            );
            assert!(
                matches!(received.last(), Some(Output::Close { conn: 1 })),
                "{received:?}"
            );
            for node in &cluster.nodes {
                node.check_invariants().expect("node invariants");
            }
        }
    }

    /// A ping with another request of its connection behind it is reported (follower)
    /// and confirmed (leader) at the end of the pass, not at the next tick: answers go in
    /// request order, so a ping waiting for a tick held the write behind it for up to two
    /// ticks. A lone ping still waits for the tick.
    #[test]
    fn a_keepalive_holding_answers_back_does_not_wait_for_a_tick() {
        for on_leader in [false, true] {
            let mut cluster = Cluster::new();
            let n = if on_leader {
                cluster.leader_index()
            } else {
                cluster.follower()
            };
            cluster.open_session(n, 1);
            let answered = |c: &Cluster| -> Vec<u64> {
                c.received(1)
                    .iter()
                    .filter_map(|o| match o {
                        Output::Send {
                            msg: ServerMessage::Response(r),
                            ..
                        } if r.result.is_ok() => Some(r.xid),
                        _ => None,
                    })
                    .collect()
            };
            let on = if on_leader { "leader" } else { "follower" };
            cluster.pass(n, vec![request(1, 1, Op::Ping)]);
            cluster.settle();
            assert_eq!(
                answered(&cluster),
                Vec::<u64>::new(),
                "a lone ping waits, on the {on}"
            );
            let create = persistent("/a");
            cluster.pass(n, vec![request(1, 2, create)]);
            cluster.settle();
            assert_eq!(answered(&cluster), [1, 2], "no tick needed, on the {on}");
            for node in &cluster.nodes {
                node.check_invariants().expect("node invariants");
            }
        }
    }

    fn waiter(xid: u64) -> Keepalive {
        Keepalive::Request(1, xid, OpResult::Pong)
    }

    /// Unacknowledged session reports are folded into the next one at the limit: a
    /// follower cut off from its leader keeps a bounded number of them.
    #[test]
    fn unacknowledged_reports_are_folded_at_the_limit() {
        let mut inflight = BTreeMap::new();
        let (mut alive, mut waiters) = (BTreeSet::new(), Vec::new());
        for batch in 0..MAX_ALIVE_REPORTS_IN_FLIGHT as u64 - 1 {
            inflight.insert(
                batch,
                AliveBatch {
                    sessions: vec![7, 100 + batch],
                    waiters: vec![waiter(batch)],
                    sent_tick: batch,
                },
            );
        }
        fold_reports(&mut inflight, &mut alive, &mut waiters);
        assert_eq!(
            inflight.len(),
            MAX_ALIVE_REPORTS_IN_FLIGHT - 1,
            "under the limit"
        );
        assert!(alive.is_empty() && waiters.is_empty());
        inflight.insert(
            99,
            AliveBatch {
                sessions: vec![7],
                waiters: vec![waiter(99)],
                sent_tick: 99,
            },
        );
        fold_reports(&mut inflight, &mut alive, &mut waiters);
        assert!(inflight.is_empty());
        let want: BTreeSet<u64> = std::iter::once(7)
            .chain((0..MAX_ALIVE_REPORTS_IN_FLIGHT as u64 - 1).map(|b| 100 + b))
            .collect();
        assert_eq!(alive, want, "every session once");
        assert_eq!(waiters.len(), MAX_ALIVE_REPORTS_IN_FLIGHT, "every waiter");
    }
}
