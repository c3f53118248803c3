//! Simulated clients: they speak the protocol to a node (handshake, requests, pushed
//! messages), keep a session alive, move it to another node when a connection breaks or a
//! request takes too long (resending every unanswered request with its xid, except the
//! writes they sometimes give up on: see [`SimClient::give_up_writes`]), and run a
//! random workload: register writes, linearizable reads (sync, then read), plain reads,
//! sequential and ephemeral creates, leases, and lock cycles (lock, guarded write,
//! unlock), of one lock or of a multi-lock's group (`LockMany` of two or three locks,
//! granted together, guarded by a write that checks them all, released with any one of
//! its nodes), each lock exclusive, read-write (taken for reading or writing) or a
//! semaphore by its family (`SimConfig::lock_families`). They record the register
//! operations for the linearizability check and tell the simulator what they believe
//! (which locks they hold, how, until when their lease is safe).

use super::check::{value_of, Violation, ViolationKind};
use super::rng::SimRng;
use super::watch::{watchable, ChangeLog, ClientWatches};
use crate::node::ConnId;
use corral_checker::versioned::{Input as RegisterInput, Output as RegisterOutput};
use corral_protocol::{
    AddWatchMode, CreateMode, CreateRequest, ErrorCode, ErrorInfo, Hello, HelloReply, LockKind,
    LockRequest, LockedNode, MultiLockItem, MultiLockRequest, MultiOp, MultiResult, Op, OpResult,
    Request, Response, ServerMessage, SessionRequest,
};
use std::collections::{BTreeMap, BTreeSet};

/// What the network delivers to a client.
#[derive(Debug, Clone)]
pub enum ToClient {
    /// The handshake answer.
    Hello(HelloReply),
    /// A message after the handshake.
    Msg(ServerMessage),
    /// The connection is closed (by the server, or broken).
    Closed,
}

/// What a client asks the simulator to do.
#[derive(Debug)]
pub enum CAction {
    /// Open connection `conn` to `node` and send `hello`.
    Connect {
        conn: ConnId,
        node: u64,
        hello: Hello,
    },
    /// Send a request on a connection.
    Send { conn: ConnId, request: Request },
    /// Close a connection.
    Drop { conn: ConnId },
    /// The client now believes it holds `lock` as `kind` (checked against the other
    /// clients' beliefs: see [`conflicts`]).
    Believe {
        lock: String,
        token: u64,
        kind: LockKind,
    },
    /// A write of `(session, xid)` was acknowledged at `zxid`.
    Ack { session: u64, xid: u64, zxid: u64 },
    /// A keepalive of `session` (session or lease) sent at `sent_us` was acknowledged.
    KeepaliveAck {
        session: u64,
        ttl_ms: u64,
        sent_us: u64,
    },
    /// The probe acquired `lock`.
    ProbeAcquired { lock: String },
    /// A response with zxid `at_zxid` arrived on a connection attached at `attached_zxid`
    /// while the client still waited for the grant of `nodes` (fencing token `token`):
    /// a grant applied by that server after the attach must have been pushed before
    /// (checked against the zxid of each node's grant).
    AwaitingGrant {
        nodes: Vec<String>,
        token: u64,
        attached_zxid: u64,
        at_zxid: u64,
    },
    /// The client gave up waiting for its queue node `node` (fencing token `token`)
    /// while connected through `conn`, having been answered "queued" at `answered_zxid`
    /// (checked: was the grant made and not told?).
    GaveUp {
        node: String,
        token: u64,
        conn: Option<ConnId>,
        answered_zxid: u64,
    },
    /// Something the client saw breaks an invariant.
    Violation(Violation),
    /// A line for the trace.
    Note(String),
}

/// One operation of the register history.
#[derive(Debug, Clone)]
pub struct HistOp {
    /// The client.
    pub client: usize,
    /// The register (a path).
    pub key: String,
    /// What was asked.
    pub input: RegisterInput,
    /// What was answered (`None`: unknown).
    pub output: Option<RegisterOutput>,
    /// Invocation, µs.
    pub call_us: u64,
    /// Completion, µs (`None`: never learned).
    pub ret_us: Option<u64>,
    /// The operation certainly had no effect and is left out.
    pub dropped: bool,
}

/// Settings shared by the clients of a run.
#[derive(Debug, Clone)]
pub struct ClientCfg {
    /// Cluster size.
    pub nodes: u64,
    /// Session TTL asked for, ms.
    pub ttl_ms: u64,
    /// Register keys.
    pub keys: usize,
    /// Locks.
    pub locks: usize,
    /// Lock-delay on the locks, ms.
    pub lock_delay_ms: u64,
    /// A request unanswered this long moves the session to another node, µs.
    pub request_timeout_us: u64,
    /// Clock rate, parts per million.
    pub rate_ppm: i64,
    /// Every successful answer renews the session in the client's view, not only
    /// keepalives (what `corral-client` did before it was fixed).
    pub renew_on_any_answer: bool,
    /// `SimConfig::seen_on_events`.
    pub seen_on_events: bool,
    /// `SimConfig::give_up_per_mille` (workload clients).
    pub give_up_per_mille: u64,
    /// `SimConfig::ack_every`.
    pub ack_every: u64,
    /// `SimConfig::multi_lock_per_mille`.
    pub multi_lock_per_mille: u64,
    /// `SimConfig::lock_families`.
    pub lock_families: Vec<LockKind>,
    /// `SimConfig::watch_per_mille`.
    pub watch_per_mille: u64,
    /// `SimConfig::revoke_per_mille`.
    pub revoke_per_mille: u64,
    /// `SimConfig::cas_per_mille`.
    pub cas_per_mille: u64,
    /// `SimConfig::list_locks_per_mille`.
    pub list_locks_per_mille: u64,
    /// `SimConfig::container_weight`.
    pub container_weight: u64,
    /// Clients in the run (whose ephemeral nodes a client may watch).
    pub clients: usize,
}

/// What a client does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Creates the nodes the workload uses, then works.
    Setup,
    /// Runs the random workload.
    Worker,
    /// After the faults heal: acquires every lock once.
    Probe,
}

/// Where a client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Working.
    Active,
    /// Finishing: no new tasks; then closes or abandons its session.
    WindDown,
    /// Finished.
    Done,
}

#[derive(Debug)]
struct CConn {
    id: ConnId,
    node: u64,
    ready: bool,
    /// The server's zxid when it attached the session (its `SessionGranted`).
    attached_zxid: u64,
    hello_sent_us: u64,
    hello_sent_local: u64,
    resume: bool,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    id: u64,
    ttl_ms: u64,
    ka_sent_local: u64,
}

#[derive(Debug)]
struct Session {
    id: u64,
    secret: u64,
    ttl_ms: u64,
    /// Client-local µs at which the last acknowledged keepalive was sent.
    ka_sent_local: u64,
    lease: Option<Lease>,
}

#[derive(Debug, Clone)]
enum Purpose {
    Setup,
    Write(usize),
    Sync(usize),
    Read(usize),
    PlainRead,
    Create,
    Lock {
        lock: String,
        kind: LockKind,
        lease: Option<u64>,
    },
    LockMany {
        lease: Option<u64>,
        kinds: BTreeMap<String, LockKind>,
    },
    Unlock,
    Fenced(usize),
    Ping,
    Renew(u64),
    GrantLease,
    Revoke,
    Close,
    /// Re-reads the waiting request whose first queue node is `node` (after a
    /// reconnect: a grant pushed meanwhile went to no one).
    Recheck {
        node: String,
    },
    Acknowledge,
    /// Re-registers the watches after a reconnect.
    SetWatches,
    Other,
}

#[derive(Debug)]
struct Pending {
    op: Op,
    purpose: Purpose,
    /// The latest send (resends after a reconnect move it).
    sent_us: u64,
    sent_local: u64,
    /// The first send: a deduplicated write took effect no earlier than this.
    first_sent_us: u64,
    first_sent_local: u64,
    /// The client's last zxid when the request was sent.
    zxid_at_send: u64,
    /// Part of the current task (its end ends the task).
    task: bool,
}

/// A lock the client believes it holds.
#[derive(Debug, Clone)]
pub struct Belief {
    /// The queue node.
    pub node: String,
    /// The fencing token.
    pub token: u64,
    /// The lease it is held under (`None`: the session).
    pub lease: Option<u64>,
    /// Its kind (who else may hold the lock meanwhile).
    pub kind: LockKind,
    /// Real µs until which the client believes it (its safe deadline).
    pub safe_until_us: u64,
}

/// Whether a hold of kind `a` and one of kind `b`, `others` holds of the lock besides
/// the first, may not coexist: anything with an exclusive or write hold, and more than
/// `permits` holds of a semaphore.
pub fn conflicts(a: LockKind, b: LockKind, others: usize) -> bool {
    match (a, b) {
        (LockKind::Read, LockKind::Read) => false,
        (LockKind::Semaphore { permits }, LockKind::Semaphore { .. }) => others >= permits as usize,
        _ => true,
    }
}

/// One queue node of a lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QNode {
    lock: String,
    node: String,
    kind: LockKind,
}

impl QNode {
    fn group(nodes: &[LockedNode], kinds: &BTreeMap<String, LockKind>) -> Vec<QNode> {
        nodes
            .iter()
            .map(|n| QNode {
                lock: n.lock.clone(),
                node: n.node.clone(),
                kind: kinds.get(&n.lock).copied().unwrap_or(LockKind::Exclusive),
            })
            .collect()
    }
}

/// A task's lock request: one lock (`Lock`), or a multi-lock's group (`LockMany`), whose
/// nodes share one token and are granted, held and released together.
#[derive(Debug)]
enum Task {
    Idle {
        until_us: u64,
    },
    Busy,
    Waiting {
        nodes: Vec<QNode>,
        token: u64,
        lease: Option<u64>,
        /// The nodes whose `LockGranted` arrived (a group's come together, one each).
        told: BTreeSet<String>,
        /// The zxid of the answer that said "queued".
        answered_zxid: u64,
        deadline_us: u64,
    },
    Holding {
        nodes: Vec<QNode>,
        token: u64,
        release_us: u64,
        fenced: bool,
    },
}

/// A simulated client.
#[derive(Debug)]
pub struct SimClient {
    /// Index.
    pub id: usize,
    /// What it does.
    pub role: Role,
    /// Where it is.
    pub mode: Mode,
    /// Stopped (SIGSTOP).
    pub paused: bool,
    cfg: ClientCfg,
    rng: SimRng,
    conn: Option<CConn>,
    session: Option<Session>,
    next_xid: u64,
    /// The last `Acknowledge`'s `answered_below`.
    acked_below: u64,
    /// Highest zxid seen.
    pub last_zxid: u64,
    pending: BTreeMap<u64, Pending>,
    task: Task,
    /// Locks it believes it holds.
    pub believed: BTreeMap<String, Belief>,
    next_connect_us: u64,
    node_cursor: u64,
    values: u64,
    creates: u32,
    next_ping_local: u64,
    setup_left: Vec<Op>,
    /// For the probe: locks still to acquire (a semaphore once per permit).
    probe_left: Vec<String>,
    /// For the probe: the permits of a semaphore it holds while it asks for the next.
    probe_held: Vec<(String, u64)>,
    /// Chance (per mille) of giving up on writes when the session is resumed.
    give_up_per_mille: u64,
    /// Draws of the give-ups (a stream of their own: a run in which no client gives up
    /// is the run it was before clients could).
    give_up_rng: SimRng,
    /// Draws of the multi-locks (a stream of their own: a run without them is the run it
    /// was before clients sent them).
    multi_rng: SimRng,
    /// Draws of the kind of a read-write lock's requests (a stream of their own: a run
    /// with exclusive locks only is the run it was before).
    kind_rng: SimRng,
    /// Draws of the watches (a stream of their own: a run without watches is the run it
    /// was before clients set them).
    watch_rng: SimRng,
    /// Draws of lease revocations (a stream of its own, like `watch_rng`).
    revoke_rng: SimRng,
    /// Draws of the compare-and-sets (a stream of its own, like `watch_rng`).
    cas_rng: SimRng,
    /// Draws of the lock listings (a stream of its own, like `watch_rng`).
    list_rng: SimRng,
    /// Draws of the container tasks (a stream of its own, like `watch_rng`).
    box_rng: SimRng,
    /// The version of each register key this client last learned (from a read or its
    /// own write): what its compare-and-sets expect.
    versions: BTreeMap<String, u32>,
    /// The one-shot watches it holds.
    pub watches: ClientWatches,
    /// Multi-lock groups it held.
    pub groups_held: u64,
    /// Setup finished (for the setup client).
    pub setup_done: bool,
    dropped_on_wind_down: Option<ConnId>,
    /// Grants pushed before the `Queued` (or queued `MultiLocked`) answer they belong
    /// to (an answer can wait for earlier requests of the connection; pushed events do
    /// not), by token and node (names are reused when a lock's directory is reaped and
    /// created again; tokens are not, but a group's nodes share one).
    early_grants: BTreeSet<(u64, String)>,
    /// Losses pushed before the `Queued` answer they belong to, by token (as after a
    /// snapshot install that skipped the entries granting and losing the node: the
    /// install's events go before the answers it releases). The real client keeps such
    /// early events too (`LockRegistry::register`).
    early_losses: BTreeSet<(u64, String)>,
}

fn reg_key(i: usize) -> String {
    format!("/reg/k{i}")
}

fn lock_name(i: usize) -> String {
    format!("/locks/l{i}")
}

fn fenced_key(lock: &str) -> String {
    format!("/fenced/{}", corral_protocol::path::name(lock))
}

/// The version a register write's answer gives its key: a `SetData`'s, or the last
/// `SetData` of a multi (a guarded write sets one register, last).
fn written_version(result: &OpResult) -> Option<u32> {
    match result {
        OpResult::SetData { stat } => Some(stat.version),
        OpResult::Multi(results) => results.iter().rev().find_map(|r| match r {
            MultiResult::SetData { stat } => Some(stat.version),
            _ => None,
        }),
        _ => None,
    }
}

/// Errors that leave a write's effect unknown.
fn indeterminate(e: &ErrorInfo) -> bool {
    matches!(
        e.code,
        ErrorCode::Unavailable
            | ErrorCode::SystemError
            | ErrorCode::LimitExceeded
            | ErrorCode::OperationTimeout
            | ErrorCode::StaleRequest
            | ErrorCode::SessionExpired
            | ErrorCode::ConnectionLoss
            | ErrorCode::RuntimeInconsistency
    )
}

impl SimClient {
    /// A client.
    pub fn new(id: usize, role: Role, cfg: ClientCfg, seed: u64) -> SimClient {
        let give_up_per_mille = cfg.give_up_per_mille;
        let mut rng = SimRng::stream(seed, 1000 + id as u64);
        let node_cursor = rng.range(0, cfg.nodes);
        let mut setup_left = Vec::new();
        if role == Role::Setup {
            let mk = |path: String| {
                Op::Create(CreateRequest {
                    path,
                    data: 0u64.to_le_bytes().to_vec(),
                    mode: CreateMode::Persistent,
                    make_parents: true,
                })
            };
            for i in 0..cfg.keys {
                setup_left.push(mk(reg_key(i)));
            }
            for i in 0..cfg.locks {
                setup_left.push(mk(fenced_key(&lock_name(i))));
            }
            setup_left.push(mk("/seq".to_string()));
            setup_left.push(mk("/eph".to_string()));
            setup_left.reverse();
        }
        // A semaphore is probed once per permit, the permits held until the last is
        // granted: every permit came back, not only one.
        let probe_left = if role == Role::Probe {
            (0..cfg.locks)
                .rev()
                .flat_map(|i| {
                    let permits = match cfg.lock_families.get(i) {
                        Some(LockKind::Semaphore { permits }) => *permits as usize,
                        _ => 1,
                    };
                    std::iter::repeat_n(lock_name(i), permits)
                })
                .collect()
        } else {
            Vec::new()
        };
        SimClient {
            id,
            setup_done: role != Role::Setup,
            role,
            mode: Mode::Active,
            paused: false,
            cfg,
            rng,
            conn: None,
            session: None,
            next_xid: 1,
            acked_below: 0,
            last_zxid: 0,
            pending: BTreeMap::new(),
            task: Task::Idle { until_us: 0 },
            believed: BTreeMap::new(),
            next_connect_us: 0,
            node_cursor,
            values: 0,
            creates: 0,
            next_ping_local: 0,
            setup_left,
            probe_left,
            probe_held: Vec::new(),
            give_up_per_mille,
            give_up_rng: SimRng::stream(seed, 2000 + id as u64),
            multi_rng: SimRng::stream(seed, 3000 + id as u64),
            kind_rng: SimRng::stream(seed, 4000 + id as u64),
            watch_rng: SimRng::stream(seed, 5000 + id as u64),
            revoke_rng: SimRng::stream(seed, 6000 + id as u64),
            cas_rng: SimRng::stream(seed, 7000 + id as u64),
            list_rng: SimRng::stream(seed, 8000 + id as u64),
            box_rng: SimRng::stream(seed, 9000 + id as u64),
            versions: BTreeMap::new(),
            watches: ClientWatches::default(),
            groups_held: 0,
            dropped_on_wind_down: None,
            early_grants: BTreeSet::new(),
            early_losses: BTreeSet::new(),
        }
    }

    /// The client's clock (µs) at real time `now`.
    pub fn local(&self, now: u64) -> u64 {
        (i128::from(now) + i128::from(now) * i128::from(self.cfg.rate_ppm) / 1_000_000) as u64
    }

    /// The real time at which the client's clock reads `local`.
    pub fn real_of(&self, local: u64) -> u64 {
        (i128::from(local) * 1_000_000 / (1_000_000 + i128::from(self.cfg.rate_ppm))) as u64 + 1
    }

    /// Requests sent and not answered.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The oldest unanswered request's send time.
    pub fn oldest_pending_us(&self) -> Option<u64> {
        self.pending.values().map(|p| p.sent_us).min()
    }

    /// The session id, if any.
    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    /// The connection, if any: (conn, node).
    pub fn connection(&self) -> Option<(ConnId, u64)> {
        self.conn.as_ref().map(|c| (c.id, c.node))
    }

    /// Stops working: finish the current task, then close or abandon the session.
    pub fn wind_down(&mut self) {
        if self.mode == Mode::Active && self.role != Role::Probe {
            self.mode = Mode::WindDown;
            if self.session.is_none() && self.pending.is_empty() {
                self.mode = Mode::Done;
                if let Some(c) = self.conn.take() {
                    self.dropped_on_wind_down = Some(c.id);
                }
            }
        }
    }

    /// A connection the client closed when it stopped (the simulator closes it).
    pub fn take_dropped(&mut self) -> Option<ConnId> {
        self.dropped_on_wind_down.take()
    }

    fn margin_us(ttl_ms: u64) -> u64 {
        (ttl_ms / 10).max(50) * 1000
    }

    fn safe_until_local(&self, lease: Option<u64>) -> u64 {
        let Some(s) = &self.session else {
            return 0;
        };
        let (sent, ttl) = match (lease, s.lease) {
            (Some(id), Some(l)) if l.id == id => (l.ka_sent_local, l.ttl_ms),
            (Some(_), _) => return 0,
            (None, _) => (s.ka_sent_local, s.ttl_ms),
        };
        (sent + ttl * 1000).saturating_sub(Self::margin_us(ttl))
    }

    fn refresh_beliefs(&mut self) {
        let updates: Vec<(String, u64)> = self
            .believed
            .iter()
            .map(|(l, b)| (l.clone(), self.real_of(self.safe_until_local(b.lease))))
            .collect();
        for (l, until) in updates {
            if let Some(b) = self.believed.get_mut(&l) {
                b.safe_until_us = b.safe_until_us.max(until);
            }
        }
    }

    /// Timers: connect, time out requests, keepalives, the task.
    pub fn on_wake(
        &mut self,
        now: u64,
        next_conn: &mut ConnId,
        hist: &mut Vec<HistOp>,
    ) -> Vec<CAction> {
        let mut out = Vec::new();
        if self.paused || self.mode == Mode::Done {
            return out;
        }
        // Beliefs past their safe deadline end: the lock must be considered lost.
        let local = self.local(now);
        let expired: Vec<String> = self
            .believed
            .iter()
            .filter(|(_, b)| now >= b.safe_until_us)
            .map(|(l, _)| l.clone())
            .collect();
        for l in expired {
            self.believed.remove(&l);
            out.push(CAction::Note(format!(
                "c{} considers {l} lost (safe deadline)",
                self.id
            )));
        }
        match &self.conn {
            None => {
                if now >= self.next_connect_us {
                    self.connect(now, next_conn, &mut out);
                }
                return out;
            }
            Some(c) if !c.ready => {
                if now.saturating_sub(c.hello_sent_us) > self.cfg.request_timeout_us {
                    self.drop_conn(now, &mut out, "handshake timeout");
                }
                return out;
            }
            Some(_) => {}
        }
        // After the faults heal, requests are not retried elsewhere: the node a request
        // went to must answer it (or close the connection), which is what the liveness
        // check holds it to.
        if let Some(oldest) = self
            .oldest_pending_us()
            .filter(|_| self.mode == Mode::Active)
        {
            if now.saturating_sub(oldest) > self.cfg.request_timeout_us {
                self.drop_conn(now, &mut out, "request timeout");
                return out;
            }
        }
        // Keepalives every TTL/3 (client clock).
        if let Some(s) = &self.session {
            if local >= self.next_ping_local {
                let ttl = s.ttl_ms;
                let lease = s.lease;
                self.next_ping_local = local + ttl * 1000 / 3;
                self.send(now, Op::Ping, Purpose::Ping, false, &mut out);
                if let Some(l) = lease {
                    self.send(
                        now,
                        Op::RenewLease { lease_id: l.id },
                        Purpose::Renew(l.id),
                        false,
                        &mut out,
                    );
                }
            }
        }
        self.advance_task(now, hist, &mut out);
        out
    }

    fn connect(&mut self, now: u64, next_conn: &mut ConnId, out: &mut Vec<CAction>) {
        *next_conn += 1;
        let conn = *next_conn;
        self.node_cursor = self.node_cursor % self.cfg.nodes + 1;
        let node = self.node_cursor;
        let session = match &self.session {
            Some(s) => SessionRequest::Resume {
                session_id: s.id,
                secret: s.secret,
            },
            None => SessionRequest::New {
                ttl_ms: self.cfg.ttl_ms,
            },
        };
        let resume = self.session.is_some();
        self.conn = Some(CConn {
            id: conn,
            node,
            ready: false,
            hello_sent_us: now,
            hello_sent_local: self.local(now),
            attached_zxid: 0,
            resume,
        });
        out.push(CAction::Connect {
            conn,
            node,
            hello: Hello::new(session, self.last_zxid),
        });
    }

    fn drop_conn(&mut self, now: u64, out: &mut Vec<CAction>, why: &str) {
        if let Some(c) = self.conn.take() {
            out.push(CAction::Drop { conn: c.id });
            out.push(CAction::Note(format!(
                "c{} drops conn {} to n{} ({why})",
                self.id, c.id, c.node
            )));
        }
        self.next_connect_us = now + 1_000 + self.rng.range(0, 20_000);
    }

    /// Forgets the session (expired, closed or abandoned): pending requests end with
    /// unknown outcomes, beliefs end now.
    fn lose_session(&mut self, now: u64, hist: &mut [HistOp], out: &mut Vec<CAction>, why: &str) {
        out.push(CAction::Note(format!(
            "c{} loses session {:#x} ({why})",
            self.id,
            self.session.as_ref().map_or(0, |s| s.id)
        )));
        self.session = None;
        self.believed.clear();
        self.watches.clear();
        for (_, p) in std::mem::take(&mut self.pending) {
            match p.purpose {
                Purpose::Write(h) | Purpose::Fenced(h) => {
                    // Unknown: it may still have been applied.
                    hist[h].output = None;
                    hist[h].ret_us = None;
                }
                Purpose::Sync(h) | Purpose::Read(h) => hist[h].dropped = true,
                _ => {}
            }
        }
        self.task = Task::Idle {
            until_us: now + self.rng.range(0, 20_000),
        };
        if self.mode == Mode::WindDown {
            self.mode = Mode::Done;
        }
    }

    /// Releases the queue node `node` created with `token` (a task request).
    fn release(&mut self, now: u64, node: String, token: u64, out: &mut Vec<CAction>) {
        self.send(now, Op::Release { node, token }, Purpose::Unlock, true, out);
    }

    /// Whether a hold under the lease ends with its revocation
    /// (`SimConfig::revoke_per_mille`; draws from `revoke_rng` only).
    fn revoke_chance(&mut self) -> bool {
        self.cfg.revoke_per_mille > 0 && self.revoke_rng.chance(self.cfg.revoke_per_mille)
    }

    /// Revokes the lease `id` (a task request): the server releases every lock held or
    /// awaited under it, and the client believes none of them from now on and takes a
    /// new lease later.
    fn revoke(&mut self, now: u64, id: u64, out: &mut Vec<CAction>) {
        if let Some(s) = &mut self.session {
            if s.lease.is_some_and(|l| l.id == id) {
                s.lease = None;
            }
        }
        self.believed.retain(|_, b| b.lease != Some(id));
        out.push(CAction::Note(format!("c{} revokes lease {id:#x}", self.id)));
        self.send(
            now,
            Op::RevokeLease { lease_id: id },
            Purpose::Revoke,
            true,
            out,
        );
    }

    /// Releases a request's nodes: a group goes with any one of its nodes, drawn at random
    /// (the server releases the others in the same transaction).
    fn release_nodes(&mut self, now: u64, nodes: &[QNode], token: u64, out: &mut Vec<CAction>) {
        let i = if nodes.len() > 1 {
            self.multi_rng.range(0, nodes.len() as u64) as usize
        } else {
            0
        };
        if let Some(n) = nodes.get(i) {
            self.release(now, n.node.clone(), token, out);
        }
    }

    /// The client no longer believes it holds any lock of `nodes` (each still believed
    /// through that node).
    fn forget_nodes(&mut self, nodes: &[QNode]) {
        for n in nodes {
            if self.believed.get(&n.lock).is_some_and(|b| b.node == n.node) {
                self.believed.remove(&n.lock);
            }
        }
    }

    fn send(
        &mut self,
        now: u64,
        op: Op,
        purpose: Purpose,
        task: bool,
        out: &mut Vec<CAction>,
    ) -> u64 {
        if op.is_write() {
            self.acknowledge(now, out);
        }
        let xid = self.next_xid;
        self.next_xid += 1;
        let local = self.local(now);
        if let Some(c) = &self.conn {
            if c.ready {
                out.push(CAction::Send {
                    conn: c.id,
                    request: Request {
                        xid,
                        op: op.clone(),
                    },
                });
            }
        }
        self.pending.insert(
            xid,
            Pending {
                op,
                purpose,
                sent_us: now,
                sent_local: local,
                first_sent_us: now,
                first_sent_local: local,
                zxid_at_send: self.last_zxid,
                task,
            },
        );
        if task {
            self.task = Task::Busy;
        }
        xid
    }

    /// Before a write: tells the node that every request below the lowest xid still
    /// awaiting an answer has been answered (as `corral-client` does), once that moved
    /// `ack_every` past the last acknowledgement. Writes the client gave up on count as
    /// answered: it never sends them again, so the node may forget them.
    fn acknowledge(&mut self, now: u64, out: &mut Vec<CAction>) {
        if self.cfg.ack_every == 0 || !self.conn.as_ref().is_some_and(|c| c.ready) {
            return;
        }
        let answered_below = self.pending.keys().next().copied().unwrap_or(self.next_xid);
        if answered_below < self.acked_below + self.cfg.ack_every {
            return;
        }
        self.acked_below = answered_below;
        let op = Op::Acknowledge { answered_below };
        self.send(now, op, Purpose::Acknowledge, false, out);
    }

    fn task_pending(&self) -> bool {
        self.pending.values().any(|p| p.task)
    }

    fn next_value(&mut self) -> u64 {
        self.values += 1;
        ((self.id as u64 + 1) << 40) | self.values
    }

    /// A lock listing or a server status (draws from `list_rng` only; `sim/reads.rs`
    /// checks the answer): `GetLocks` of one lock or of `/locks`, a page of `/locks`
    /// after a lock's name or a name between two, at most 1 to 3 locks, sometimes
    /// within a small byte budget (a page holds one lock however small the budget), or
    /// `ServerStatus`.
    fn listing_or_status(&mut self) -> Op {
        let lock = lock_name(self.list_rng.range(0, self.cfg.locks as u64) as usize);
        match self.list_rng.range(0, 5) {
            0 => Op::GetLocks { path: lock },
            1 => Op::GetLocks {
                path: "/locks".to_string(),
            },
            2 => Op::ServerStatus,
            _ => {
                let after = match self.list_rng.range(0, 3) {
                    0 => String::new(),
                    1 => lock,
                    _ => format!("{lock}x"),
                };
                Op::GetLocksPage {
                    path: "/locks".to_string(),
                    after,
                    max_locks: self.list_rng.range_incl(1, 3) as u32,
                    max_bytes: if self.list_rng.chance(250) {
                        1
                    } else {
                        1 << 20
                    },
                }
            }
        }
    }

    /// A compare-and-set of register `key` to `v` (draws from `cas_rng` only): it
    /// expects the version this client last learned (now and then another, near it), as
    /// a conditional `SetData`, or as a multi that checks the version and then sets, or
    /// sets and then checks the version the set made (so a failed check must undo the
    /// set). All three take effect exactly when the version is the one expected.
    fn compare_and_set(&mut self, key: &str, v: u64) -> (RegisterInput, Op) {
        let known = self.versions.get(key).copied().unwrap_or(0);
        let expect = if self.cas_rng.chance(100) {
            self.cas_rng
                .range_incl(known.saturating_sub(1).into(), u64::from(known) + 1) as u32
        } else {
            known
        };
        let path = key.to_string();
        let data = v.to_le_bytes().to_vec();
        let op = match self.cas_rng.range(0, 3) {
            0 => Op::SetData {
                path,
                data,
                version: Some(expect),
            },
            1 => Op::Multi(vec![
                MultiOp::Check {
                    path: path.clone(),
                    version: expect,
                },
                MultiOp::SetData {
                    path,
                    data,
                    version: None,
                },
            ]),
            _ => Op::Multi(vec![
                MultiOp::SetData {
                    path: path.clone(),
                    data,
                    version: None,
                },
                MultiOp::Check {
                    path,
                    version: expect + 1,
                },
            ]),
        };
        (RegisterInput::Cas { expect, new: v }, op)
    }

    fn advance_task(&mut self, now: u64, hist: &mut Vec<HistOp>, out: &mut Vec<CAction>) {
        if self.session.is_none() {
            return;
        }
        match &self.task {
            Task::Busy => {}
            Task::Idle { until_us } => {
                if now >= *until_us {
                    self.start_task(now, hist, out);
                }
            }
            Task::Waiting {
                deadline_us,
                nodes,
                token,
                answered_zxid,
                ..
            } => {
                if now >= *deadline_us || self.mode == Mode::WindDown && self.role != Role::Probe {
                    let (nodes, token, answered_zxid) = (nodes.clone(), *token, *answered_zxid);
                    let conn = self.conn.as_ref().map(|c| c.id);
                    for n in &nodes {
                        out.push(CAction::Note(format!(
                            "c{} gives up waiting for {}",
                            self.id, n.node
                        )));
                        out.push(CAction::GaveUp {
                            node: n.node.clone(),
                            token,
                            conn,
                            answered_zxid,
                        });
                    }
                    self.release_nodes(now, &nodes, token, out);
                }
            }
            Task::Holding {
                nodes,
                token,
                release_us,
                fenced,
            } => {
                let (nodes, node_token, release_us, fenced) =
                    (nodes.clone(), *token, *release_us, *fenced);
                let all_believed = nodes.iter().all(|n| self.believed.contains_key(&n.lock));
                if !all_believed && self.role != Role::Probe {
                    // Lost (safe deadline passed, or a LockLost): release what may be left
                    // (of a group, every node goes with one).
                    self.forget_nodes(&nodes);
                    self.release_nodes(now, &nodes, node_token, out);
                } else if !fenced && self.role != Role::Probe {
                    let Some(token) = nodes
                        .first()
                        .and_then(|n| self.believed.get(&n.lock))
                        .map(|b| b.token)
                    else {
                        return;
                    };
                    // A group's guarded write checks every lock of the group and writes
                    // the register of one of them.
                    let target = if nodes.len() > 1 {
                        self.multi_rng.range(0, nodes.len() as u64) as usize
                    } else {
                        0
                    };
                    let Some(lock) = nodes.get(target).map(|n| n.lock.clone()) else {
                        return;
                    };
                    let v = self.next_value();
                    let key = fenced_key(&lock);
                    let h = hist.len();
                    hist.push(HistOp {
                        client: self.id,
                        key: key.clone(),
                        input: RegisterInput::Write(v),
                        output: None,
                        call_us: now,
                        ret_us: None,
                        dropped: false,
                    });
                    let mut ops: Vec<MultiOp> = nodes
                        .iter()
                        .map(|n| MultiOp::CheckLock {
                            lock: n.lock.clone(),
                            token,
                        })
                        .collect();
                    ops.push(MultiOp::SetData {
                        path: key,
                        data: v.to_le_bytes().to_vec(),
                        version: None,
                    });
                    self.task = Task::Holding {
                        nodes,
                        token: node_token,
                        release_us,
                        fenced: true,
                    };
                    // Not a task request: the hold continues while it is in flight.
                    self.send(now, Op::Multi(ops), Purpose::Fenced(h), false, out);
                } else if now >= release_us || self.mode == Mode::WindDown {
                    let lease = nodes
                        .first()
                        .and_then(|n| self.believed.get(&n.lock))
                        .and_then(|b| b.lease);
                    self.forget_nodes(&nodes);
                    match lease.filter(|_| self.revoke_chance()) {
                        Some(id) => self.revoke(now, id, out),
                        None => self.release_nodes(now, &nodes, node_token, out),
                    }
                }
            }
        }
    }

    fn start_task(&mut self, now: u64, hist: &mut Vec<HistOp>, out: &mut Vec<CAction>) {
        match self.role {
            Role::Setup if !self.setup_done => {
                match self.setup_left.pop() {
                    Some(op) => {
                        self.send(now, op, Purpose::Setup, true, out);
                    }
                    None => {
                        self.setup_done = true;
                        out.push(CAction::Note("setup done".to_string()));
                        self.task = Task::Idle { until_us: now };
                    }
                }
                return;
            }
            Role::Probe => {
                match self.probe_left.last().cloned() {
                    Some(lock) => {
                        // A read-write lock (family `Write`) is probed for writing: then
                        // nobody else may hold it.
                        let kind = self.family_of(&lock);
                        let op = Op::Lock(LockRequest {
                            lock: lock.clone(),
                            kind,
                            try_only: false,
                            lease: None,
                            lock_delay_ms: self.cfg.lock_delay_ms,
                            data: Vec::new(),
                        });
                        let purpose = Purpose::Lock {
                            lock,
                            kind,
                            lease: None,
                        };
                        self.send(now, op, purpose, true, out);
                    }
                    None => {
                        self.mode = Mode::WindDown;
                        self.send(now, Op::CloseSession, Purpose::Close, true, out);
                    }
                }
                return;
            }
            _ => {}
        }
        if self.mode == Mode::WindDown {
            if self.rng.chance(700) {
                self.believed.clear();
                self.send(now, Op::CloseSession, Purpose::Close, true, out);
            } else {
                out.push(CAction::Note(format!("c{} abandons its session", self.id)));
                self.believed.clear();
                if let Some(c) = self.conn.take() {
                    out.push(CAction::Drop { conn: c.id });
                }
                self.lose_session(now, hist, out, "abandoned");
                self.mode = Mode::Done;
            }
            return;
        }
        let has_lease = self.session.as_ref().is_some_and(|s| s.lease.is_some());
        let weights = [
            25,
            20,
            5,
            if self.creates < 30 { 8 } else { 0 },
            if self.cfg.locks > 0 { 25 } else { 0 },
            4,
            2,
            1,
            if has_lease { 0 } else { 3 },
            self.cfg.container_weight,
        ];
        match self.rng.weighted(&weights) {
            0 => {
                let key = reg_key(self.rng.range(0, self.cfg.keys as u64) as usize);
                let v = self.next_value();
                let cas = self.cfg.cas_per_mille > 0 && self.cas_rng.chance(self.cfg.cas_per_mille);
                let (input, op) = if cas {
                    self.compare_and_set(&key, v)
                } else {
                    let op = Op::SetData {
                        path: key.clone(),
                        data: v.to_le_bytes().to_vec(),
                        version: None,
                    };
                    (RegisterInput::Write(v), op)
                };
                let h = hist.len();
                hist.push(HistOp {
                    client: self.id,
                    key,
                    input,
                    output: None,
                    call_us: now,
                    ret_us: None,
                    dropped: false,
                });
                self.send(now, op, Purpose::Write(h), true, out);
            }
            1 => {
                let n = self.cfg.keys + self.cfg.locks;
                let i = self.rng.range(0, n as u64) as usize;
                let key = if i < self.cfg.keys {
                    reg_key(i)
                } else {
                    fenced_key(&lock_name(i - self.cfg.keys))
                };
                let h = hist.len();
                hist.push(HistOp {
                    client: self.id,
                    key: key.clone(),
                    input: RegisterInput::Read,
                    output: None,
                    call_us: now,
                    ret_us: None,
                    dropped: false,
                });
                self.send(
                    now,
                    Op::Sync {
                        path: "/".to_string(),
                    },
                    Purpose::Sync(h),
                    true,
                    out,
                );
                let watch = watchable(&key) && self.watch_chance();
                self.send(
                    now,
                    Op::GetData { path: key, watch },
                    Purpose::Read(h),
                    true,
                    out,
                );
            }
            2 if self.watch_chance() => {
                let op = self.watch_read();
                self.send(now, op, Purpose::PlainRead, true, out);
            }
            2 => {
                let key = reg_key(self.rng.range(0, self.cfg.keys as u64) as usize);
                let op = if self.cfg.list_locks_per_mille > 0
                    && self.list_rng.chance(self.cfg.list_locks_per_mille)
                {
                    self.listing_or_status()
                } else {
                    Op::GetData {
                        path: key,
                        watch: false,
                    }
                };
                self.send(now, op, Purpose::PlainRead, true, out);
            }
            3 => {
                self.creates += 1;
                let op = Op::Create(CreateRequest {
                    path: "/seq/s-".to_string(),
                    data: format!("c{}", self.id).into_bytes(),
                    mode: CreateMode::PersistentSequential,
                    make_parents: false,
                });
                self.send(now, op, Purpose::Create, true, out);
            }
            4 if self.cfg.locks > 1
                && self.cfg.multi_lock_per_mille > 0
                && self.multi_rng.chance(self.cfg.multi_lock_per_mille) =>
            {
                self.lock_many(now, out);
            }
            4 => {
                let lock = lock_name(self.rng.range(0, self.cfg.locks as u64) as usize);
                let kind = self.request_kind(&lock);
                let lease = self
                    .session
                    .as_ref()
                    .and_then(|s| s.lease)
                    .filter(|_| self.rng.chance(500))
                    .map(|l| l.id);
                let op = Op::Lock(LockRequest {
                    lock: lock.clone(),
                    kind,
                    try_only: self.rng.chance(200),
                    lease,
                    lock_delay_ms: self.cfg.lock_delay_ms,
                    data: Vec::new(),
                });
                self.send(now, op, Purpose::Lock { lock, kind, lease }, true, out);
            }
            5 => {
                let n = self.rng.range(0, 3);
                let path = format!("/eph/c{}-{n}", self.id);
                let op = if self.rng.chance(500) {
                    Op::Create(CreateRequest {
                        path,
                        data: Vec::new(),
                        mode: CreateMode::Ephemeral,
                        make_parents: false,
                    })
                } else {
                    Op::Delete {
                        path,
                        version: None,
                    }
                };
                self.send(now, op, Purpose::Other, true, out);
            }
            6 => {
                self.believed.clear();
                self.send(now, Op::CloseSession, Purpose::Close, true, out);
            }
            7 => {
                out.push(CAction::Note(format!("c{} abandons its session", self.id)));
                self.believed.clear();
                if let Some(c) = self.conn.take() {
                    out.push(CAction::Drop { conn: c.id });
                }
                self.lose_session(now, hist, out, "abandoned");
                self.next_connect_us = now + self.rng.range(0, 50_000);
            }
            9 => {
                let watch = self.cfg.watch_per_mille > 0;
                let (mut op, read) = super::containers::task(&mut self.box_rng, self.id, watch);
                // Now and then a read adds a persistent watch on the containers instead,
                // which must be told of every change there, reaping included.
                if read && watch && self.box_rng.chance(125) {
                    let (path, recursive) = super::containers::watched(&mut self.box_rng);
                    if !self.watches.has_persistent(&path, recursive) {
                        let mode = if recursive {
                            AddWatchMode::PersistentRecursive
                        } else {
                            AddWatchMode::Persistent
                        };
                        op = Op::AddWatch { path, mode };
                    }
                }
                let purpose = if read {
                    Purpose::PlainRead
                } else {
                    Purpose::Other
                };
                self.send(now, op, purpose, true, out);
            }
            _ => {
                let ttl_ms = self.cfg.ttl_ms;
                self.send(
                    now,
                    Op::GrantLease { ttl_ms },
                    Purpose::GrantLease,
                    true,
                    out,
                );
            }
        }
    }

    /// Whether a read sets a watch (`SimConfig::watch_per_mille`; draws from `watch_rng`
    /// only, and only in runs with watches).
    fn watch_chance(&mut self) -> bool {
        self.cfg.watch_per_mille > 0 && self.watch_rng.chance(self.cfg.watch_per_mille)
    }

    /// A read that sets a one-shot watch: on a register key's data, on whether some
    /// client's ephemeral node exists, or on the ephemeral nodes' parent's children; or a
    /// page of `/eph`'s or `/reg`'s children (no watch; `sim/reads.rs` checks it); or
    /// (one in eight) a persistent watch, plain or recursive, on a register key, `/reg`,
    /// `/eph` or an ephemeral node, if not held yet; or (one in eight) the removal of a
    /// watch it holds.
    fn watch_read(&mut self) -> Op {
        if self.watch_rng.chance(125) {
            let (pick, any) = (self.watch_rng.next_u64(), self.watch_rng.chance(250));
            if let Some(op) = self.watches.removal(pick, any) {
                return op;
            }
        }
        if self.watch_rng.chance(125) {
            let path = match self.watch_rng.range(0, 4) {
                0 => reg_key(self.watch_rng.range(0, self.cfg.keys as u64) as usize),
                1 => "/eph".to_string(),
                2 => "/reg".to_string(),
                _ => self.some_ephemeral(),
            };
            let recursive = self.watch_rng.chance(500);
            if !self.watches.has_persistent(&path, recursive) {
                let mode = if recursive {
                    AddWatchMode::PersistentRecursive
                } else {
                    AddWatchMode::Persistent
                };
                return Op::AddWatch { path, mode };
            }
        }
        match self.watch_rng.range(0, 5) {
            0 => Op::GetData {
                path: reg_key(self.watch_rng.range(0, self.cfg.keys as u64) as usize),
                watch: true,
            },
            4 => {
                // A page of `/eph`'s or `/reg`'s children (no watch), after a name that
                // may or may not exist.
                let (path, after) = if self.watch_rng.chance(500) {
                    let eph = self.some_ephemeral();
                    ("/eph", corral_protocol::path::name(&eph).to_string())
                } else {
                    let i = self.watch_rng.range(0, self.cfg.keys as u64) as usize;
                    ("/reg", format!("k{i}"))
                };
                let after = if self.watch_rng.chance(300) {
                    String::new()
                } else {
                    after
                };
                Op::GetChildrenPage {
                    path: path.to_string(),
                    after,
                    max_names: self.watch_rng.range_incl(1, 3) as u32,
                    max_bytes: 1 << 20,
                }
            }
            1 => Op::GetChildren {
                path: "/eph".to_string(),
                watch: true,
            },
            _ => {
                let path = self.some_ephemeral();
                if self.watch_rng.chance(500) {
                    Op::Exists { path, watch: true }
                } else {
                    Op::GetData { path, watch: true }
                }
            }
        }
    }

    /// The path of an ephemeral node some client may create (it may exist or not).
    fn some_ephemeral(&mut self) -> String {
        let owner = self.watch_rng.range(0, self.cfg.clients.max(1) as u64);
        let n = self.watch_rng.range(0, 3);
        format!("/eph/c{owner}-{n}")
    }

    /// After an event on `path`, mostly reads it again with a new watch, as a cache of
    /// the node would (not a task: the client's workload goes on meanwhile).
    fn rearm(&mut self, path: &str, now: u64, out: &mut Vec<CAction>) {
        if self.mode != Mode::Active || !self.watch_rng.chance(700) {
            return;
        }
        let path = path.to_string();
        let op = if path == "/eph" {
            Op::GetChildren { path, watch: true }
        } else if path.starts_with("/eph/") {
            Op::Exists { path, watch: true }
        } else {
            Op::GetData { path, watch: true }
        };
        self.send(now, op, Purpose::PlainRead, false, out);
    }

    /// Sends a `LockMany` of two or three distinct locks, in a random order, sometimes
    /// under the lease, sometimes `try_only` (draws from `multi_rng` only).
    fn lock_many(&mut self, now: u64, out: &mut Vec<CAction>) {
        let most = self.cfg.locks.min(3) as u64;
        let count = self.multi_rng.range_incl(2, most) as usize;
        let mut left: Vec<usize> = (0..self.cfg.locks).collect();
        let mut chosen = Vec::with_capacity(count);
        while chosen.len() < count && !left.is_empty() {
            let i = self.multi_rng.range(0, left.len() as u64) as usize;
            chosen.push(left.swap_remove(i));
        }
        let lease = self
            .session
            .as_ref()
            .and_then(|s| s.lease)
            .filter(|_| self.multi_rng.chance(500))
            .map(|l| l.id);
        let locks: Vec<MultiLockItem> = chosen
            .into_iter()
            .map(|i| {
                let lock = lock_name(i);
                MultiLockItem {
                    kind: self.request_kind(&lock),
                    lock,
                }
            })
            .collect();
        let kinds = locks.iter().map(|l| (l.lock.clone(), l.kind)).collect();
        let op = Op::LockMany(MultiLockRequest {
            locks,
            try_only: self.multi_rng.chance(200),
            lease,
            lock_delay_ms: self.cfg.lock_delay_ms,
            data: Vec::new(),
        });
        self.send(now, op, Purpose::LockMany { lease, kinds }, true, out);
    }

    /// The family of `lock` (`SimConfig::lock_families`): `Write` for a read-write lock.
    fn family_of(&self, lock: &str) -> LockKind {
        (0..self.cfg.locks)
            .find(|i| lock_name(*i) == lock)
            .and_then(|i| self.cfg.lock_families.get(i).copied())
            .unwrap_or(LockKind::Exclusive)
    }

    /// The kind to request `lock` with: its family's, or for a read-write lock read or
    /// write at random (from `kind_rng`, drawn only then).
    fn request_kind(&mut self, lock: &str) -> LockKind {
        match self.family_of(lock) {
            LockKind::Write | LockKind::Read if self.kind_rng.chance(500) => LockKind::Read,
            LockKind::Write | LockKind::Read => LockKind::Write,
            family => family,
        }
    }

    /// A message from the network.
    pub fn on_msg(
        &mut self,
        conn: ConnId,
        msg: ToClient,
        now: u64,
        hist: &mut Vec<HistOp>,
        changes: &ChangeLog,
    ) -> Vec<CAction> {
        let mut out = Vec::new();
        if self.conn.as_ref().map(|c| c.id) != Some(conn) {
            return out;
        }
        match msg {
            ToClient::Closed => {
                self.conn = None;
                self.next_connect_us = now + 1_000 + self.rng.range(0, 20_000);
            }
            ToClient::Hello(HelloReply::Accepted(g)) => self.on_accepted(g, now, hist, &mut out),
            ToClient::Hello(HelloReply::Refused(e)) => {
                out.push(CAction::Note(format!(
                    "c{} refused by n{}: {:?}",
                    self.id,
                    self.conn.as_ref().map_or(0, |c| c.node),
                    e.code
                )));
                if matches!(e.code, ErrorCode::SessionExpired | ErrorCode::AuthFailed)
                    && self.conn.as_ref().is_some_and(|c| c.resume)
                {
                    self.lose_session(now, hist, &mut out, "refused on resume");
                }
                self.conn = None;
                self.next_connect_us = now + 1_000 + self.rng.range(0, 20_000);
            }
            ToClient::Msg(ServerMessage::Response(r)) => {
                self.on_response(r, now, hist, changes, &mut out)
            }
            ToClient::Msg(ServerMessage::Goodbye(e)) => {
                out.push(CAction::Note(format!("c{} goodbye: {:?}", self.id, e.code)));
                if e.code == ErrorCode::SessionExpired && self.session.is_some() {
                    self.lose_session(now, hist, &mut out, "goodbye");
                }
                self.conn = None;
                self.next_connect_us = now + 1_000 + self.rng.range(0, 20_000);
            }
            ToClient::Msg(ServerMessage::LockGranted(ev)) => {
                self.last_zxid = self.last_zxid.max(ev.zxid);
                let complete = match &mut self.task {
                    Task::Waiting { nodes, told, .. }
                        if nodes.iter().any(|n| n.node == ev.node) =>
                    {
                        told.insert(ev.node.clone());
                        nodes.iter().all(|n| told.contains(&n.node))
                    }
                    _ => {
                        if self.early_grants.len() >= 64 {
                            self.early_grants.pop_first();
                        }
                        self.early_grants.insert((ev.token, ev.node));
                        false
                    }
                };
                if complete {
                    if let Task::Waiting {
                        nodes,
                        token,
                        lease,
                        ..
                    } = &self.task
                    {
                        let (nodes, token, lease) = (nodes.clone(), *token, *lease);
                        self.granted(nodes, token, lease, now, &mut out);
                    }
                }
            }
            ToClient::Msg(ServerMessage::LockLost(ev)) => {
                self.last_zxid = self.last_zxid.max(ev.zxid);
                if self
                    .believed
                    .get(&ev.lock)
                    .is_some_and(|b| b.node == ev.node)
                {
                    self.believed.remove(&ev.lock);
                    out.push(CAction::Note(format!("c{} lost {}", self.id, ev.lock)));
                }
                // A group is lost with any of its nodes.
                if let Task::Holding { nodes, .. } = &self.task {
                    if nodes.iter().any(|n| n.node == ev.node) {
                        let nodes = nodes.clone();
                        self.forget_nodes(&nodes);
                    }
                }
                if matches!(&self.task, Task::Waiting { nodes, .. } if nodes.iter().any(|n| n.node == ev.node))
                {
                    self.task = Task::Idle { until_us: now };
                } else {
                    if self.early_losses.len() >= 64 {
                        self.early_losses.pop_first();
                    }
                    self.early_losses.insert((ev.token, ev.node));
                }
            }
            ToClient::Msg(ServerMessage::Watch(ev)) => {
                self.last_zxid = self.last_zxid.max(ev.zxid);
                if let Err(v) = self.watches.on_event(self.id, &ev, changes, now) {
                    out.push(CAction::Violation(v));
                }
                if self.cfg.seen_on_events {
                    self.watches.saw(ev.zxid);
                }
                self.rearm(&ev.path, now, &mut out);
            }
        }
        out
    }

    fn on_accepted(
        &mut self,
        g: corral_protocol::SessionGranted,
        now: u64,
        hist: &mut [HistOp],
        out: &mut Vec<CAction>,
    ) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        c.ready = true;
        c.attached_zxid = g.zxid;
        let (sent_us, sent_local, node) = (c.hello_sent_us, c.hello_sent_local, c.node);
        if g.zxid < self.last_zxid {
            out.push(CAction::Violation(Violation {
                kind: ViolationKind::WentBackInTime,
                at_us: now,
                detail: format!(
                    "client {} had seen zxid {} but n{node} accepted it at zxid {}",
                    self.id, self.last_zxid, g.zxid
                ),
            }));
        }
        self.last_zxid = self.last_zxid.max(g.zxid);
        let resumed = matches!(&self.session, Some(s) if s.id == g.session_id);
        match &mut self.session {
            Some(s) if s.id == g.session_id => {
                s.ka_sent_local = s.ka_sent_local.max(sent_local);
            }
            _ => {
                self.watches.clear();
                self.session = Some(Session {
                    id: g.session_id,
                    secret: g.secret,
                    ttl_ms: g.ttl_ms,
                    ka_sent_local: sent_local,
                    lease: None,
                });
                self.next_ping_local = 0;
            }
        }
        out.push(CAction::KeepaliveAck {
            session: g.session_id,
            ttl_ms: g.ttl_ms,
            sent_us,
        });
        self.refresh_beliefs();
        out.push(CAction::Note(format!(
            "c{} attached to n{node} session {:#x} next_xid {}",
            self.id, g.session_id, g.next_xid
        )));
        self.next_xid = self.next_xid.max(g.next_xid);
        // A node keeps acknowledgements per connection: tell this one at the next write.
        self.acked_below = 0;
        if resumed {
            self.give_up_writes(now, hist, out);
        }
        // The watches go first (as `corral-client` sends them), with a new `SetWatches`:
        // one still unanswered on the old connection is not resent.
        self.pending
            .retain(|_, p| !matches!(p.purpose, Purpose::SetWatches));
        let resync = self
            .watches
            .resync_op()
            .map(|op| self.send(now, op, Purpose::SetWatches, false, out));
        if let Some(xid) = resync {
            self.watches.resync_sent(xid);
        }
        // Resend everything unanswered, in xid order, with the same xids.
        let conn = self.conn.as_ref().map_or(0, |c| c.id);
        let local = self.local(now);
        for (xid, p) in self.pending.iter_mut() {
            if Some(*xid) == resync {
                continue;
            }
            p.sent_us = now;
            p.sent_local = local;
            out.push(CAction::Send {
                conn,
                request: Request {
                    xid: *xid,
                    op: p.op.clone(),
                },
            });
        }
        if let Task::Waiting { nodes, .. } = &self.task {
            // One lock is re-read with `GetLocks`, a group with `GetLockGroup`.
            let op = match nodes.as_slice() {
                [one] => Op::GetLocks {
                    path: one.lock.clone(),
                },
                _ => Op::GetLockGroup {
                    node: nodes.first().map(|n| n.node.clone()).unwrap_or_default(),
                },
            };
            let node = nodes.first().map(|n| n.node.clone()).unwrap_or_default();
            self.send(now, op, Purpose::Recheck { node }, false, out);
        }
    }

    /// On resuming the session, sometimes gives up on some unanswered writes instead of
    /// resending them, as `corral-client` does with a call whose caller stopped waiting
    /// (its timeout passed, or its future was dropped): at random (`give_up_per_mille`),
    /// a random non-empty subset of them. A copy may still be on its way to the log (a
    /// node cut off from the leader keeps resending what it forwarded), so each one's
    /// outcome is unknown in the history, as when the session is lost; the client goes
    /// on with new requests, with higher xids.
    ///
    /// Only the calls the real client lets go of (`Then::must_complete` in
    /// `client/src/connection.rs`): register writes, guarded writes, sequential and
    /// ephemeral creates and deletes. Lock requests, releases and closes are resent until
    /// answered there too (and the probe's liveness check relies on it); setup creates
    /// the nodes the workload needs, and leases keep their own bookkeeping. Only while
    /// working: after the faults heal every request must be answered by its node.
    fn give_up_writes(&mut self, now: u64, hist: &mut [HistOp], out: &mut Vec<CAction>) {
        if self.give_up_per_mille == 0 || self.mode != Mode::Active {
            return;
        }
        let candidates: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p.purpose,
                    Purpose::Write(_) | Purpose::Fenced(_) | Purpose::Create | Purpose::Other
                )
            })
            .map(|(xid, _)| *xid)
            .collect();
        if candidates.is_empty() || !self.give_up_rng.chance(self.give_up_per_mille) {
            return;
        }
        let mut chosen: Vec<u64> = candidates
            .iter()
            .copied()
            .filter(|_| self.give_up_rng.chance(500))
            .collect();
        if chosen.is_empty() {
            chosen.push(candidates[0]);
        }
        for xid in chosen {
            let Some(p) = self.pending.remove(&xid) else {
                continue;
            };
            if let Purpose::Write(h) | Purpose::Fenced(h) = p.purpose {
                // Unknown: it may still be applied, at any time from now on.
                hist[h].output = None;
                hist[h].ret_us = None;
            }
            out.push(CAction::Note(format!(
                "c{} gives up on xid {xid} ({}): not resent",
                self.id,
                super::check::describe_op(&p.op)
            )));
        }
        if matches!(self.task, Task::Busy) && !self.task_pending() {
            self.task = Task::Idle {
                until_us: now + self.give_up_rng.range(0, 30_000),
            };
        }
    }

    /// The request's nodes are granted (every node of a group).
    fn granted(
        &mut self,
        nodes: Vec<QNode>,
        token: u64,
        lease: Option<u64>,
        now: u64,
        out: &mut Vec<CAction>,
    ) {
        let safe_until_us = self.real_of(self.safe_until_local(lease));
        if self.role == Role::Probe {
            for n in &nodes {
                if let Some(i) = self.probe_left.iter().rposition(|l| *l == n.lock) {
                    self.probe_left.remove(i);
                }
                if self.probe_left.contains(&n.lock) {
                    // A semaphore's permit: held while the next one is asked for.
                    self.probe_held.push((n.node.clone(), token));
                    self.task = Task::Idle { until_us: now };
                    continue;
                }
                out.push(CAction::ProbeAcquired {
                    lock: n.lock.clone(),
                });
                self.release(now, n.node.clone(), token, out);
                for (node, token) in std::mem::take(&mut self.probe_held) {
                    self.release(now, node, token, out);
                }
            }
            return;
        }
        if now >= safe_until_us {
            // A grant after the safe deadline is refused and released.
            for n in &nodes {
                out.push(CAction::Note(format!(
                    "c{} refuses a late grant of {}",
                    self.id, n.lock
                )));
            }
            self.release_nodes(now, &nodes, token, out);
            return;
        }
        for n in &nodes {
            self.believed.insert(
                n.lock.clone(),
                Belief {
                    node: n.node.clone(),
                    token,
                    lease,
                    safe_until_us,
                    kind: n.kind,
                },
            );
            out.push(CAction::Believe {
                lock: n.lock.clone(),
                token,
                kind: n.kind,
            });
        }
        if nodes.len() > 1 {
            self.groups_held += 1;
        }
        let hold = self.rng.range(0, 150_000);
        self.task = Task::Holding {
            nodes,
            token,
            release_us: now + hold,
            fenced: false,
        };
    }

    /// The request's nodes are queued: wait for their grants, unless they were pushed
    /// (or the nodes lost) before this answer.
    #[allow(clippy::too_many_arguments)]
    fn queued(
        &mut self,
        nodes: Vec<QNode>,
        token: u64,
        lease: Option<u64>,
        answered_zxid: u64,
        now: u64,
        out: &mut Vec<CAction>,
    ) {
        let keys: Vec<(u64, String)> = nodes.iter().map(|n| (token, n.node.clone())).collect();
        if keys.iter().any(|k| self.early_losses.contains(k)) {
            // Granted and lost before this answer arrived (if granted at all): nothing
            // to wait for (a group goes with any of its nodes).
            for k in &keys {
                self.early_losses.remove(k);
                self.early_grants.remove(k);
            }
            out.push(CAction::Note(format!(
                "c{} lost {} before its answer arrived",
                self.id,
                nodes.first().map_or("", |n| n.node.as_str())
            )));
            return;
        }
        let told: BTreeSet<String> = keys
            .iter()
            .filter(|k| self.early_grants.remove(k))
            .map(|(_, node)| node.clone())
            .collect();
        if told.len() == nodes.len() {
            self.granted(nodes, token, lease, now, out);
            return;
        }
        let wait = 4 * self.cfg.ttl_ms * 1000;
        self.task = Task::Waiting {
            nodes,
            token,
            lease,
            told,
            answered_zxid,
            deadline_us: now + wait,
        };
    }

    /// A re-read of the waiting request whose first node is `first`: granted, still
    /// waiting, or gone.
    fn rechecked(
        &mut self,
        first: &str,
        result: &Result<OpResult, ErrorInfo>,
        now: u64,
        out: &mut Vec<CAction>,
    ) {
        let Task::Waiting {
            nodes,
            token,
            lease,
            ..
        } = &self.task
        else {
            return;
        };
        if nodes.first().map(|n| n.node.as_str()) != Some(first) {
            return;
        }
        let (nodes, token, lease) = (nodes.clone(), *token, *lease);
        match result {
            Ok(OpResult::Locks(locks)) => {
                let granted: Vec<Option<bool>> = nodes
                    .iter()
                    .map(|n| {
                        locks
                            .iter()
                            .find(|l| l.lock == n.lock)
                            .and_then(|l| l.queue.iter().find(|e| e.node == n.node))
                            .map(|e| e.granted)
                    })
                    .collect();
                if granted.iter().any(Option::is_none) {
                    self.task = Task::Idle { until_us: now };
                } else if granted.iter().all(|g| *g == Some(true)) {
                    self.granted(nodes, token, lease, now, out);
                }
            }
            Err(e) if e.code == ErrorCode::NoNode => self.task = Task::Idle { until_us: now },
            _ => {}
        }
    }

    fn on_response(
        &mut self,
        r: Response,
        now: u64,
        hist: &mut Vec<HistOp>,
        changes: &ChangeLog,
        out: &mut Vec<CAction>,
    ) {
        let Some(p) = self.pending.remove(&r.xid) else {
            return;
        };
        // Every grant this server applied since it attached the session came before the
        // response, as every event up to its zxid of the watches registered here.
        if let (
            Task::Waiting {
                nodes, token, told, ..
            },
            Some(c),
        ) = (&self.task, &self.conn)
        {
            out.push(CAction::AwaitingGrant {
                nodes: nodes
                    .iter()
                    .filter(|n| !told.contains(&n.node))
                    .map(|n| n.node.clone())
                    .collect(),
                token: *token,
                attached_zxid: c.attached_zxid,
                at_zxid: r.zxid,
            });
        }
        self.watches
            .resync_answered(r.xid, r.result.is_ok(), r.zxid);
        let node = self.conn.as_ref().map_or(0, |c| c.node);
        if let Err(v) = self.watches.check_due(self.id, node, r.zxid, changes, now) {
            out.push(CAction::Violation(v));
        }
        self.watches.answered(&p.op, &r.result, r.zxid);
        if let Err(v) = self.watches.removed(self.id, &p.op, &r.result, now) {
            out.push(CAction::Violation(v));
        }
        self.watches.saw(r.zxid);
        if let Err(v) = super::reads::check(self.id, node, &p.op, &r.result, r.zxid, changes, now) {
            out.push(CAction::Violation(v));
        }
        let session = self.session.as_ref().map_or(0, |s| s.id);
        let is_read = matches!(p.op, Op::GetData { .. });
        if is_read && r.result.is_ok() && r.zxid < p.zxid_at_send {
            out.push(CAction::Violation(Violation {
                kind: ViolationKind::WentBackInTime,
                at_us: now,
                detail: format!(
                    "client {} read at zxid {} after having seen zxid {}",
                    self.id, r.zxid, p.zxid_at_send
                ),
            }));
        }
        self.last_zxid = self.last_zxid.max(r.zxid);
        if self.cfg.renew_on_any_answer && r.result.is_ok() {
            if let Some(s) = &mut self.session {
                s.ka_sent_local = s.ka_sent_local.max(p.first_sent_local);
                out.push(CAction::KeepaliveAck {
                    session: s.id,
                    ttl_ms: s.ttl_ms,
                    sent_us: p.first_sent_us,
                });
            }
            self.refresh_beliefs();
        }
        if p.op.is_write() {
            if r.result.is_ok() {
                out.push(CAction::Ack {
                    session,
                    xid: r.xid,
                    zxid: r.zxid,
                });
            }
        }
        match p.purpose {
            Purpose::Write(h) | Purpose::Fenced(h) => {
                let key = hist[h].key.clone();
                let output = match (&hist[h].input, &r.result) {
                    (RegisterInput::Cas { expect, .. }, Ok(_)) => {
                        self.versions.insert(key, expect + 1);
                        Some(RegisterOutput::Cas(true))
                    }
                    (RegisterInput::Cas { .. }, Err(e)) if e.code == ErrorCode::BadVersion => {
                        Some(RegisterOutput::Cas(false))
                    }
                    (_, Ok(result)) => {
                        let version = written_version(result);
                        if let Some(version) = version {
                            self.versions.insert(key, version);
                        }
                        Some(RegisterOutput::Written(version))
                    }
                    (_, Err(e)) if indeterminate(e) => None,
                    (_, Err(_)) => {
                        hist[h].dropped = true;
                        None
                    }
                };
                if output.is_some() {
                    hist[h].output = output;
                    hist[h].ret_us = Some(now);
                }
            }
            Purpose::Sync(h) => {
                if r.result.is_err() {
                    hist[h].dropped = true;
                }
            }
            Purpose::Read(h) => match &r.result {
                Ok(OpResult::Data { data, stat }) if !hist[h].dropped => {
                    hist[h].output = Some(RegisterOutput::Read((value_of(data), stat.version)));
                    hist[h].ret_us = Some(now);
                    self.versions.insert(hist[h].key.clone(), stat.version);
                }
                _ => hist[h].dropped = true,
            },
            Purpose::Ping => {
                if r.result.is_ok() {
                    if let Some(s) = &mut self.session {
                        s.ka_sent_local = s.ka_sent_local.max(p.sent_local);
                        out.push(CAction::KeepaliveAck {
                            session: s.id,
                            ttl_ms: s.ttl_ms,
                            sent_us: p.sent_us,
                        });
                    }
                    self.refresh_beliefs();
                }
            }
            Purpose::Renew(id) => {
                if let Ok(OpResult::Lease { lease_id, ttl_ms }) = &r.result {
                    if let Some(l) = self.session.as_mut().and_then(|s| s.lease.as_mut()) {
                        if l.id == *lease_id {
                            l.ka_sent_local = l.ka_sent_local.max(p.sent_local);
                        }
                    }
                    out.push(CAction::KeepaliveAck {
                        session: *lease_id,
                        ttl_ms: *ttl_ms,
                        sent_us: p.sent_us,
                    });
                    self.refresh_beliefs();
                } else if let Some(s) = &mut self.session {
                    if s.lease.is_some_and(|l| l.id == id) {
                        s.lease = None;
                        self.believed.retain(|_, b| b.lease != Some(id));
                    }
                }
            }
            Purpose::GrantLease => {
                // A retried grant is answered from the dedup table: the lease began when
                // the first attempt was applied, so it counts from the first send.
                if let Ok(OpResult::Lease { lease_id, ttl_ms }) = &r.result {
                    if let Some(s) = &mut self.session {
                        s.lease = Some(Lease {
                            id: *lease_id,
                            ttl_ms: *ttl_ms,
                            ka_sent_local: p.first_sent_local,
                        });
                    }
                    out.push(CAction::KeepaliveAck {
                        session: *lease_id,
                        ttl_ms: *ttl_ms,
                        sent_us: p.first_sent_us,
                    });
                }
            }
            Purpose::Lock { lock, kind, lease } => match r.result {
                Ok(OpResult::Locked { node, token }) => {
                    let nodes = vec![QNode { lock, node, kind }];
                    self.granted(nodes, token, lease, now, out);
                }
                Ok(OpResult::Queued { node, token }) => {
                    let nodes = vec![QNode { lock, node, kind }];
                    self.queued(nodes, token, lease, r.zxid, now, out);
                }
                Ok(_) | Err(_) => {}
            },
            Purpose::LockMany { lease, kinds } => {
                if let Ok(OpResult::MultiLocked { granted, nodes }) = &r.result {
                    let token = nodes.first().map_or(0, |n| n.token);
                    let group = QNode::group(nodes, &kinds);
                    if *granted {
                        self.granted(group, token, lease, now, out);
                    } else {
                        self.queued(group, token, lease, r.zxid, now, out);
                    }
                }
            }
            Purpose::Recheck { node } => self.rechecked(&node, &r.result, now, out),
            Purpose::Close => {
                if matches!(r.result, Ok(OpResult::Closed)) {
                    let sid = self.session_id().unwrap_or(0);
                    out.push(CAction::Note(format!(
                        "c{} closed session {sid:#x}",
                        self.id
                    )));
                    self.session = None;
                    self.believed.clear();
                    self.watches.clear();
                    for (_, q) in std::mem::take(&mut self.pending) {
                        if let Purpose::Write(h) | Purpose::Fenced(h) = q.purpose {
                            hist[h].output = None;
                            hist[h].ret_us = None;
                        }
                        if let Purpose::Sync(h) | Purpose::Read(h) = q.purpose {
                            hist[h].dropped = true;
                        }
                    }
                    if self.mode == Mode::WindDown {
                        self.mode = Mode::Done;
                    }
                }
            }
            Purpose::Setup
            | Purpose::PlainRead
            | Purpose::Create
            | Purpose::Unlock
            | Purpose::Revoke
            | Purpose::Acknowledge
            | Purpose::SetWatches
            | Purpose::Other => {}
        }
        if matches!(self.task, Task::Busy) && !self.task_pending() {
            let pause = self.rng.range(0, 30_000);
            self.task = Task::Idle {
                until_us: now + pause,
            };
        }
    }
}
