//! The background task that owns the connection.
//!
//! One task per client owns the socket, the request bookkeeping ([`Pending`]) and the
//! watch registry; [`Client`](crate::Client) handles talk to it through a bounded
//! channel of [`Call`]s and get their answers on oneshot channels. Nothing here is
//! behind a mutex: the task is the only owner.
//!
//! While connected the task, in one `select!` loop, reads server messages (always, so a
//! slow reader never stalls the server), writes buffered frames, takes new calls while
//! the in-flight limit and the write buffer allow, sends a ping when the connection has
//! been idle for a third of the session TTL, and gives the connection up when the server
//! has said nothing for two thirds of it.
//!
//! When the connection is lost the task resumes the session on the next server (round
//! robin, backoff with jitter between rounds), re-registers the watches with
//! `SetWatches` (with the zxid of the last response *before* the new handshake, so the
//! server fires what changed meanwhile), resends every unanswered request with its original xid (the
//! server deduplicates writes by xid; one over the new server's `max_frame_bytes` fails
//! with `FrameTooLarge` instead), and then re-reads the locks it tracks (lock events
//! are pushed only to the connection attached at the time). Calls wait meanwhile, until
//! the session lease may have run out: from then on unanswered and new calls fail with
//! `ConnectionLoss` while the task keeps trying to resume. A session the server declares
//! expired ends the client.
//!
//! Some requests must reach the server even if their caller stopped waiting, and are
//! resent after every reconnect until answered: a `CloseSession` (else a dropped client
//! could keep its session, and its locks, alive forever), a lock request (else its
//! queue node would be orphaned: the task releases it when the answer finds no caller),
//! a lease grant (likewise: a lease granted to nobody is revoked; a grant whose caller
//! is gone before it is sent is not sent at all), and the [`Detached`] requests: the
//! releases sent on behalf of dropped guards and pending acquires, the revokes of
//! dropped leases, and the delete of a double barrier participant's node given up at
//! its deadline. A detached request that the server
//! answers with a transient error (`Unavailable`, say) is sent again after a growing
//! pause ([`DetachedRetries`]) until it succeeds, for as long as the session lives. A
//! release's nodes stay tracked meanwhile, so a reconnect's re-read also sweeps them
//! (and takes over from the retry if the lease runs out while disconnected); a revoke
//! or delete is kept through such a lapse and sent once the session is resumed.

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::detached_retry::{already_done, worth_retrying, DetachedRetries};
use crate::error::{Error, Result};
use crate::lease::default_margin;
use crate::lock::{sleep_until_some, LockLoss};
use crate::lock_registry::{LockRegistry, RequestNodes, SlotStatus};
use crate::pending::{Pending, Waiter};
use crate::registry::{split_watch_set, OneShotKind, WatchRegistry};
use crate::state::{ConnectionState, StatePublisher};
use crate::transport::{self, HandshakeError, Transport};
use crate::watcher::{StreamItem, WatchSender};
use bytes::{Buf, Bytes, BytesMut};
use corral_protocol::frame::encode_frame;
use corral_protocol::{
    AddWatchMode, ClientMessage, ErrorCode, ErrorInfo, Hello, Incoming, Op, OpResult,
    OversizedResponse, Request, Response, ServerMessage, SessionGranted, SessionRequest,
    WatchEvent, WatcherKind,
};
use futures::StreamExt;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};

/// Stop taking calls while this many encoded bytes wait to be written (at least one
/// frame always fits).
const MIN_WRITE_BUFFER_BYTES: usize = 256 << 10;

/// How far the lowest xid awaiting an answer moves before the next write is preceded by
/// an `Acknowledge`: a server then remembers about this many of the session's results
/// beyond those in flight (each about 240 bytes), instead of the last 1,024. One small
/// request per this many xids.
const ACKNOWLEDGE_EVERY_XIDS: u64 = 16;

/// What a client handle asks the task to do.
#[derive(Debug)]
pub(crate) struct Call {
    /// The operation.
    pub op: Op,
    /// What to do on success, besides answering.
    pub then: Then,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Reply>>,
}

/// Bookkeeping the task does when a call succeeds, before it answers, so that a watch
/// is in the registry before any later event can arrive.
#[derive(Debug)]
pub(crate) enum Then {
    /// Nothing.
    Nothing,
    /// Record a one-shot watcher.
    OneShot {
        path: String,
        kind: OneShotKind,
        tx: WatchSender,
    },
    /// Record a persistent watch and answer with a receiver of its events.
    Persistent { path: String, mode: AddWatchMode },
    /// Forget the removed watches.
    RemoveWatches { path: String, kind: WatcherKind },
    /// The session is being closed: take no more calls. Resent until answered.
    Close,
    /// A lock request: on `Locked` or `Queued`, track the queue node and answer with a
    /// receiver of its status. Resent until answered; a node whose caller is gone by
    /// then is released.
    Lock { lock: String },
    /// A release by path (`Client::unlock`): the status of the node tracked under that
    /// path ends with `Released`.
    Unlock { node: String },
    /// A holder's release of a request's nodes (the request names the first with its
    /// token): their statuses end with `Released`.
    Release(RequestNodes),
    /// A multi-lock request: on `MultiLocked`, track every queue node and answer with
    /// receivers of their statuses. Resent until answered, like `Lock`.
    LockMany { locks: Vec<String> },
    /// On behalf of a dropped handle: nobody waits for the answer. Resent until
    /// answered.
    Detached(Detached),
    /// A lease grant: on `Lease`, the reply names the lease. Resent until answered,
    /// like `Lock`; a lease whose caller is gone by then is revoked, and a grant whose
    /// caller is gone before it is sent is not sent.
    GrantLease,
    /// A caller's ping (`LockGuard::renew`): acknowledged, it renews the session's lease
    /// like the task's own keepalives, from `sent_at`, which the task sets when it
    /// sends the request (a resend keeps the first send time: earlier is safe).
    Keepalive { sent_at: Instant },
}

/// What a [`Then::Detached`] request does, naming what it is about, so that the task
/// can send it again ([`Detached::op`]) after a transient error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detached {
    /// Releases a request's queue nodes (a dropped guard or pending acquire), like
    /// [`Then::Release`].
    Release(RequestNodes),
    /// Revokes a lease (a dropped lease or a lock's dedicated lease); `NoLease` means
    /// it is done.
    RevokeLease { lease_id: u64 },
    /// Deletes a node its owner gave up on, at any version (a double barrier
    /// participant's own node, at its deadline); `NoNode` means it is done. Not a lock's
    /// queue node.
    Delete { path: String },
    /// Reads a lock again whose re-read after a reconnect failed with a transient error
    /// (the connection's pending-request limit, say): events may have been missed while
    /// away, and a waiter granted meanwhile would otherwise never learn it, while the
    /// server holds the lock for it. Its answer settles the tracked nodes as that
    /// re-read's would (`sweep`: release this session's untracked nodes).
    ReadLock { lock: String, sweep: bool },
}

impl Detached {
    /// The request that does it.
    pub(crate) fn op(&self) -> Op {
        match self {
            Detached::Release(nodes) => nodes.release_op(),
            Detached::RevokeLease { lease_id } => Op::RevokeLease {
                lease_id: *lease_id,
            },
            Detached::Delete { path } => Op::Delete {
                path: path.clone(),
                version: None,
            },
            Detached::ReadLock { lock, .. } => Op::GetLocks { path: lock.clone() },
        }
    }
}

impl fmt::Display for Detached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detached::Release(nodes) => write!(f, "the release of {}", nodes.node.node),
            Detached::RevokeLease { lease_id } => write!(f, "the revoke of lease {lease_id:#x}"),
            Detached::Delete { path } => write!(f, "the delete of {path}"),
            Detached::ReadLock { lock, .. } => write!(f, "the re-read of lock {lock}"),
        }
    }
}

impl Then {
    /// Whether the request must reach the server even if its caller is gone.
    fn must_complete(&self) -> bool {
        matches!(
            self,
            Then::Close
                | Then::Lock { .. }
                | Then::LockMany { .. }
                | Then::GrantLease
                | Then::Detached(_)
        )
    }

    /// Whether a request whose caller is gone before it is sent (it timed out waiting
    /// for an in-flight slot, say) is better not sent: its caller was told it failed
    /// and may retry it, and a write sent now would take effect after all (a second
    /// sequential node, a value set after the caller moved on). A lease grant is not
    /// sent either: nothing to undo then. Releases go out anyway (they only free what
    /// the caller held), and so does what must complete (a lock request is sent and its
    /// node released).
    fn skip_if_abandoned(&self) -> bool {
        match self {
            Then::Nothing
            | Then::OneShot { .. }
            | Then::Persistent { .. }
            | Then::RemoveWatches { .. }
            | Then::Keepalive { .. }
            | Then::GrantLease => true,
            Then::Close
            | Then::Lock { .. }
            | Then::Unlock { .. }
            | Then::Release(_)
            | Then::LockMany { .. }
            | Then::Detached(_) => false,
        }
    }

    /// The locks a request that could leave or remove a queue node is about.
    fn lock_names(&self) -> Vec<String> {
        match self {
            Then::Lock { lock } => vec![lock.clone()],
            Then::LockMany { locks } => locks.clone(),
            Then::Unlock { node } => corral_protocol::path::parent(node)
                .map(str::to_string)
                .into_iter()
                .collect(),
            Then::Release(nodes) | Then::Detached(Detached::Release(nodes)) => nodes
                .all()
                .filter_map(|n| corral_protocol::path::parent(&n.node))
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The result.
    pub result: OpResult,
    /// For `AddWatch`: the events of the watch.
    pub stream: Option<broadcast::Receiver<StreamItem>>,
    /// For `Lock`: the status of the queue node.
    pub lock: Option<watch::Receiver<SlotStatus>>,
    /// For `LockMany`: the statuses of the queue nodes, in request order.
    pub locks: Vec<watch::Receiver<SlotStatus>>,
    /// For `GrantLease`: the id of the lease granted, which must be revoked if the
    /// reply finds nobody to read it.
    pub lease: Option<u64>,
}

/// What the public API can read about the session without asking the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionStatus {
    pub session_id: u64,
    pub ttl: Duration,
    pub node_id: u64,
    pub last_zxid: u64,
    /// Until when the server certainly keeps the session: the send time of the last
    /// renewal it acknowledged (handshake or ping), plus the TTL.
    pub lease_deadline: Instant,
    /// How many times the session's safe deadline (`lease_deadline` minus the default
    /// margin) passed before a renewal was acknowledged: a lock held across such a gap
    /// may have been lost meanwhile, whatever the deadline says now.
    pub lease_gaps: u64,
}

impl SessionStatus {
    /// Until when the session is certainly alive on the server, allowing for
    /// clock-rate differences.
    pub(crate) fn safe_deadline(&self) -> Instant {
        let margin = default_margin(self.ttl).min(self.ttl);
        self.lease_deadline
            .checked_sub(margin)
            .unwrap_or(self.lease_deadline)
    }
}

/// State shared by the task and the client handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub state: StatePublisher,
    pub events: broadcast::Sender<StreamItem>,
    pub session: Mutex<SessionStatus>,
}

impl Shared {
    pub(crate) fn session(&self) -> SessionStatus {
        match self.session.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn update_session(&self, f: impl FnOnce(&mut SessionStatus)) {
        match self.session.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// Who waits for a request the task sent.
#[derive(Debug)]
enum WaitFor {
    /// A caller.
    Call {
        then: Then,
        reply: oneshot::Sender<Result<Reply>>,
    },
    /// The task's own keepalive.
    Ping { sent_at: Instant },
    /// The task's own watch re-registration: the persistent watches in it and the zxid
    /// it was sent with, whose streams learn of the gap when it is answered.
    SetWatches {
        persistent: Vec<(String, bool)>,
        since_zxid: u64,
    },
    /// The task's own re-read of a lock after a reconnect; with `sweep`, this session's
    /// untracked nodes in it are released.
    LockSync { lock: String, sweep: bool },
    /// The task's own `Acknowledge`.
    Acknowledge,
}

impl Waiter for WaitFor {
    fn is_abandoned(&self) -> bool {
        match self {
            WaitFor::Call { then, reply, .. } => !then.must_complete() && reply.is_closed(),
            _ => false,
        }
    }

    fn resend(&self) -> bool {
        matches!(self, WaitFor::Call { .. })
    }
}

/// Why a connection (or the whole task) ended.
#[derive(Debug)]
enum End {
    /// The connection is gone; resume the session elsewhere.
    Lost(String),
    /// The client is finished, in this state, failing what is left with this error.
    Final(ConnectionState, Error),
}

/// The background task.
#[derive(Debug)]
pub(crate) struct Task {
    config: ClientConfig,
    shared: Arc<Shared>,
    calls: mpsc::Receiver<Call>,
    pending: Pending<WaitFor>,
    registry: WatchRegistry,
    backoff: Backoff,
    session_id: u64,
    secret: u64,
    ttl: Duration,
    /// Largest frame the task sends: the smaller of the two sides' limits.
    send_limit: usize,
    last_zxid: u64,
    /// The highest zxid of a response (not of a handshake or an event): the server sends
    /// every event of the changes up to a response's zxid before the response, so every
    /// one has been delivered, and it is what `SetWatches` sends after a reconnect. An
    /// event's zxid says less: several events share one (the changes of one multi, the
    /// events a snapshot install collapses, which carry the installed zxid for changes
    /// made before it), and a connection lost between them loses the rest. It stays put
    /// while `watch_resyncs` is not zero.
    seen_zxid: u64,
    /// This connection's `SetWatches` requests not answered yet. Until they are, the
    /// watches are not all registered again, and the events they fire at once carry the
    /// server's current zxid: a response or event then says nothing about which changes
    /// were delivered, and raising `seen_zxid` on it would make the next reconnect's
    /// `SetWatches` skip the changes whose events were lost with this connection.
    watch_resyncs: usize,
    /// Send time of the last renewal the server acknowledged (handshake or ping).
    lease_from: Instant,
    /// Disconnected for longer than the lease: calls fail fast with `ConnectionLoss`.
    lapsed: bool,
    /// `CloseSession` was queued: no more calls are taken.
    closing: bool,
    /// Every client handle is gone.
    dropped: bool,
    /// Lock queue nodes this session tracks.
    locks: LockRegistry,
    /// Requests the task makes on its own while handling a message (releases of nodes
    /// nobody waits for), sent right after.
    deferred: Vec<Call>,
    /// Detached requests on their way, and those answered with a transient error, to
    /// send again.
    retries: DetachedRetries,
    /// The servers take `Acknowledge` (until one answers it `Unimplemented`).
    acknowledge: bool,
    /// The `answered_below` of the last `Acknowledge` sent on this connection (0: none;
    /// a server keeps it per connection).
    acknowledged_below: u64,
}

impl Task {
    /// A task for the session `granted` obtained with a handshake started at
    /// `handshake_started`.
    pub(crate) fn new(
        config: ClientConfig,
        shared: Arc<Shared>,
        calls: mpsc::Receiver<Call>,
        granted: &SessionGranted,
        backoff: Backoff,
        handshake_started: Instant,
    ) -> Self {
        let registry = WatchRegistry::new(config.event_buffer);
        let pending = Pending::new(granted.next_xid, config.max_in_flight);
        let mut task = Task {
            config,
            shared,
            calls,
            pending,
            registry,
            backoff,
            session_id: granted.session_id,
            secret: granted.secret,
            ttl: Duration::ZERO,
            send_limit: 0,
            last_zxid: granted.zxid,
            seen_zxid: granted.zxid,
            watch_resyncs: 0,
            lease_from: handshake_started,
            lapsed: false,
            closing: false,
            dropped: false,
            locks: LockRegistry::default(),
            deferred: Vec::new(),
            retries: DetachedRetries::default(),
            acknowledge: true,
            acknowledged_below: 0,
        };
        task.adopt(granted, handshake_started);
        task
    }

    /// The initial status published for a new session.
    pub(crate) fn initial_status(granted: &SessionGranted, now: Instant) -> SessionStatus {
        let ttl = Duration::from_millis(granted.ttl_ms);
        SessionStatus {
            session_id: granted.session_id,
            ttl,
            node_id: granted.node_id,
            last_zxid: granted.zxid,
            lease_deadline: now + ttl,
            lease_gaps: 0,
        }
    }

    /// Takes in the terms of a (re)granted session.
    fn adopt(&mut self, granted: &SessionGranted, handshake_started: Instant) {
        // A zero TTL would make the keepalive spin; the server never grants one.
        self.ttl = Duration::from_millis(granted.ttl_ms.max(30));
        let server_limit = usize::try_from(granted.max_frame_bytes).unwrap_or(usize::MAX);
        self.send_limit = self.config.max_frame_bytes.min(server_limit).max(1024);
        // The handshake raises `last_zxid` (the client must never go back in time) but
        // not `seen_zxid`: no event after it has been delivered yet.
        self.observe_zxid(granted.zxid);
        let (ttl, node_id) = (self.ttl, granted.node_id);
        self.shared.update_session(|s| {
            s.ttl = ttl;
            s.node_id = node_id;
        });
        self.renew_lease(handshake_started);
        let lease_from = self.lease_from;
        self.shared
            .update_session(|s| s.lease_deadline = lease_from + ttl);
    }

    /// Runs the session until it ends, starting on the connection of the handshake.
    pub(crate) async fn run(mut self, first: Transport) {
        let mut transport = first;
        let mut resend = Vec::new();
        loop {
            let end = self.serve(transport, resend).await;
            match end {
                End::Final(state, err) => return self.finish(state, err),
                End::Lost(why) => {
                    tracing::info!(session = self.session_id, "connection lost: {why}");
                }
            }
            match self.reconnect().await {
                Ok((next, frames)) => {
                    transport = next;
                    resend = frames;
                }
                Err(End::Final(state, err)) => return self.finish(state, err),
                Err(End::Lost(why)) => {
                    // reconnect only ends with a final state; be safe anyway.
                    return self.finish(ConnectionState::Closed, Error::protocol(why));
                }
            }
        }
    }

    /// Serves one connection: re-registers the watches, resends what `resend` holds,
    /// re-reads the locks, then pipelines calls until the connection or the session
    /// ends.
    async fn serve(&mut self, transport: Transport, resend: Vec<(u64, Bytes)>) -> End {
        let Transport {
            mut reader,
            mut writer,
            address,
        } = transport;
        tracing::debug!(session = self.session_id, %address, "connected");
        self.shared
            .state
            .set(ConnectionState::Connected { address });
        // The watches go first, ahead of the resent requests (as ZooKeeper's client
        // does): watches are per connection, so a resent `RemoveWatches` (or a read of
        // a watched node) must find them registered again. Their fresh xids are above
        // the resent ones; only writes are ordered by xid on the server.
        let mut out = BytesMut::new();
        let watches = self.registry.watch_set();
        self.watch_resyncs = 0;
        self.acknowledged_below = 0;
        if !watches.is_empty() {
            for piece in split_watch_set(watches, self.send_limit / 2) {
                let waiter = WaitFor::SetWatches {
                    persistent: WatchRegistry::persistent_keys(&piece),
                    since_zxid: self.seen_zxid,
                };
                let op = Op::SetWatches {
                    last_zxid: self.seen_zxid,
                    watches: piece,
                };
                match self.push(op, waiter, false, &mut out) {
                    Ok(()) => self.watch_resyncs += 1,
                    Err((_, e)) => {
                        tracing::warn!("cannot re-register watches: {e}");
                        self.registry.fail_all(&e);
                    }
                }
            }
        }
        for (xid, frame) in resend {
            if frame.len() <= self.send_limit {
                out.extend_from_slice(&frame);
                continue;
            }
            // This server takes smaller frames than the one it was sent to: sending it
            // would only end this connection too (`Goodbye(FrameTooLarge)`), and the
            // next one, while the request stays pending.
            tracing::warn!(
                xid,
                bytes = frame.len(),
                max = self.send_limit,
                "a request to send again is over this server's max_frame_bytes; failing it"
            );
            // A lock request or release may have been carried out where it was sent:
            // its locks are re-read below, and this session's nodes nobody tracks in
            // them released.
            if let Some(WaitFor::Call { then, .. }) = self.pending.get(xid) {
                for lock in then.lock_names() {
                    self.locks.suspect(&lock);
                }
            }
            if let Some(end) = self.on_response(not_resent(xid, frame.len(), self.send_limit)) {
                return end;
            }
        }
        // Lock events may have been missed while away: re-read the locks tracked, after
        // the resent lock requests.
        let in_flight: Vec<String> = self
            .pending
            .waiters()
            .filter_map(|w| match w {
                WaitFor::Call { then, .. } => Some(then.lock_names()),
                _ => None,
            })
            .flatten()
            .collect();
        for (lock, sweep) in self.locks.resync_plan(in_flight) {
            let op = Op::GetLocks { path: lock.clone() };
            if let Err((_, e)) = self.push(op, WaitFor::LockSync { lock, sweep }, false, &mut out) {
                tracing::warn!("cannot re-read a lock: {e}");
            }
        }
        self.flush_deferred(&mut out);
        let ping_every = self.ttl / 3;
        let silence_limit = self.ttl * 2 / 3;
        let high_water = MIN_WRITE_BUFFER_BYTES.max(self.send_limit);
        // Pings go out on a fixed schedule, also while other requests flow: only their
        // answers renew the client's view of its lease.
        let mut last_ping = Instant::now();
        let mut last_heard = Instant::now();
        loop {
            let accepting = !self.closing && self.pending.has_room() && out.len() < high_water;
            let retry_due = self.retries.next_due();
            // Unbiased on purpose: a flood of events must not starve writes, new calls
            // or the keepalive.
            tokio::select! {
                message = reader.next() => match message {
                    None => return End::Lost("the server closed the connection".into()),
                    Some(Err(e)) => return End::Lost(format!("read failed: {e}")),
                    Some(Ok(incoming)) => {
                        last_heard = Instant::now();
                        let message = match incoming {
                            Incoming::Message(message) => message,
                            Incoming::Oversized(skipped) => oversized_error(skipped),
                        };
                        if let Some(end) = self.handle(message) {
                            return end;
                        }
                        self.flush_deferred(&mut out);
                    }
                },
                written = writer.write(&out), if !out.is_empty() => match written {
                    Ok(0) => return End::Lost("the connection closed while writing".into()),
                    Ok(n) => out.advance(n),
                    Err(e) => return End::Lost(format!("write failed: {e}")),
                },
                call = self.calls.recv(), if accepting => {
                    match call {
                        Some(call) => self.submit(call, &mut out),
                        // Every handle is gone: end the session rather than let it
                        // linger until it expires.
                        None => {
                            self.dropped = true;
                            self.submit_close_for_dropped_client(&mut out);
                            if !self.closing {
                                return End::Final(ConnectionState::Closed, Error::Closed);
                            }
                        }
                    }
                },
                () = sleep_until(last_ping + ping_every) => {
                    let sent_at = Instant::now();
                    if let Err((_, e)) = self.push(Op::Ping, WaitFor::Ping { sent_at }, false, &mut out) {
                        return End::Lost(format!("cannot encode a ping: {e}"));
                    }
                    last_ping = sent_at;
                },
                () = sleep_until(last_heard + silence_limit) => {
                    return End::Lost(format!("the server said nothing for {silence_limit:?}"));
                },
                () = sleep_until_some(retry_due) => {
                    for what in self.retries.take_due(Instant::now()) {
                        tracing::debug!("sending {what} again");
                        self.defer(what);
                    }
                    self.flush_deferred(&mut out);
                },
            }
        }
    }

    /// Encodes a request and queues it for writing; on failure the waiter comes back.
    fn push(
        &mut self,
        op: Op,
        waiter: WaitFor,
        counted: bool,
        out: &mut BytesMut,
    ) -> std::result::Result<(), (WaitFor, Error)> {
        let limit = self.send_limit;
        let encode = |xid| {
            let message = ClientMessage::Request(Request { xid, op });
            let mut frame = BytesMut::new();
            encode_frame(&message, &mut frame, limit).map(|()| frame.freeze())
        };
        match self.pending.push(waiter, counted, encode) {
            Ok((_, frame)) => {
                out.extend_from_slice(&frame);
                Ok(())
            }
            Err((waiter, e)) => Err((waiter, Error::from(e))),
        }
    }

    fn submit(&mut self, call: Call, out: &mut BytesMut) {
        let Call {
            op,
            mut then,
            reply,
        } = call;
        if let Then::Keepalive { sent_at } = &mut then {
            *sent_at = Instant::now();
        }
        if then.skip_if_abandoned() && reply.is_closed() {
            tracing::debug!("{} given up before it was sent; not sending it", op.name());
            return;
        }
        if op.is_write() {
            self.acknowledge(out);
        }
        // Before it goes out: a later create of a path supersedes a delete of it that
        // waits to be sent again.
        self.retries.sending(&op);
        if let Then::Detached(what) = &then {
            self.retries.sent(what);
        }
        let closing = matches!(then, Then::Close);
        let waiter = WaitFor::Call { then, reply };
        match self.push(op, waiter, true, out) {
            Ok(()) => self.closing |= closing,
            Err((WaitFor::Call { then, reply }, e)) => {
                if let Then::Detached(what) = &then {
                    // It cannot be encoded: sending it again would fail alike.
                    tracing::warn!("{what}, on behalf of a dropped handle, failed: {e}");
                    self.retries.done(what);
                }
                let _ = reply.send(Err(e));
            }
            Err(_) => {}
        }
    }

    /// Before a write: tells the server which of this session's requests will never be
    /// sent again (`Op::Acknowledge`), once that moved [`ACKNOWLEDGE_EVERY_XIDS`] since
    /// the last time, so the write lets the server forget their deduplicated results.
    /// Without it every session would keep its last 1,024 results on every server.
    fn acknowledge(&mut self, out: &mut BytesMut) {
        let answered_below = self.pending.lowest_unanswered();
        if !self.acknowledge
            || answered_below
                < self
                    .acknowledged_below
                    .saturating_add(ACKNOWLEDGE_EVERY_XIDS)
        {
            return;
        }
        let op = Op::Acknowledge { answered_below };
        match self.push(op, WaitFor::Acknowledge, false, out) {
            Ok(()) => self.acknowledged_below = answered_below,
            Err((_, e)) => tracing::debug!("cannot send an acknowledgement: {e}"),
        }
    }

    /// Sends the requests the task deferred while handling a message.
    fn flush_deferred(&mut self, out: &mut BytesMut) {
        for call in std::mem::take(&mut self.deferred) {
            self.submit(call, out);
        }
    }

    /// Sends a detached request nobody waits for (a release of queue nodes, say) as
    /// soon as a connection allows.
    fn defer(&mut self, what: Detached) {
        let (reply, _ignored) = oneshot::channel();
        self.deferred.push(Call {
            op: what.op(),
            then: Then::Detached(what),
            reply,
        });
    }

    fn submit_close_for_dropped_client(&mut self, out: &mut BytesMut) {
        let (reply, _ignored) = oneshot::channel();
        // Nobody waits for the answer, but a close is resent until answered (see
        // `Then::must_complete`): a client nobody holds must not keep its session.
        self.submit(
            Call {
                op: Op::CloseSession,
                then: Then::Close,
                reply,
            },
            out,
        );
    }

    /// Handles one server message; `Some` ends the connection.
    fn handle(&mut self, message: ServerMessage) -> Option<End> {
        match message {
            ServerMessage::Watch(event) => {
                self.on_event(event);
                None
            }
            ServerMessage::Response(response) => self.on_response(response),
            // Routed at once, so a waiter learns of its grant before the caller sees any
            // answer with a later zxid.
            ServerMessage::LockGranted(event) => {
                self.observe_zxid(event.zxid);
                self.locks.on_event(&event, true);
                None
            }
            ServerMessage::LockLost(event) => {
                self.observe_zxid(event.zxid);
                self.locks.on_event(&event, false);
                None
            }
            ServerMessage::Goodbye(info) => {
                tracing::info!(session = self.session_id, "server said goodbye: {info}");
                let acknowledging = || {
                    self.pending
                        .waiters()
                        .any(|w| matches!(w, WaitFor::Acknowledge))
                };
                if info.code == ErrorCode::Malformed && self.acknowledge && acknowledging() {
                    // A server older than the rule that answers unknown operations
                    // `Unimplemented` ends the connection instead.
                    tracing::info!("the server does not know Acknowledge; not sending it again");
                    self.acknowledge = false;
                }
                Some(match fatal(&info) {
                    Some(end) => end,
                    None => End::Lost(format!("server closed the connection: {info}")),
                })
            }
        }
    }

    fn on_event(&mut self, event: WatchEvent) {
        // Not `raise_seen`: see `seen_zxid`.
        self.observe_zxid(event.zxid);
        self.registry.dispatch(&event);
        // No subscriber is fine.
        let _ = self.shared.events.send(Ok(event));
    }

    /// Raises `seen_zxid` to `zxid`, unless watches are being registered again.
    fn raise_seen(&mut self, zxid: u64) {
        if self.watch_resyncs == 0 {
            self.seen_zxid = self.seen_zxid.max(zxid);
        }
    }

    fn on_response(&mut self, response: Response) -> Option<End> {
        self.observe_zxid(response.zxid);
        let Some(entry) = self.pending.complete(response.xid) else {
            self.raise_seen(response.zxid);
            tracing::debug!(xid = response.xid, "response to a request no one waits for");
            return None;
        };
        if matches!(entry.waiter, WaitFor::SetWatches { .. }) {
            // Answered after every event it fired: the last one lets the zxid move on.
            self.watch_resyncs = self.watch_resyncs.saturating_sub(1);
        }
        self.raise_seen(response.zxid);
        match entry.waiter {
            WaitFor::Ping { sent_at } => match response.result {
                Ok(_) => {
                    self.renew_lease(sent_at);
                    None
                }
                Err(info) => fatal(&info),
            },
            WaitFor::LockSync { lock, sweep } => match response.result {
                Ok(result) => {
                    self.reread(&lock, sweep, &result);
                    None
                }
                Err(info) => fatal(&info).or_else(|| {
                    let what = Detached::ReadLock { lock, sweep };
                    if worth_retrying(info.code) {
                        if let Some(pause) = self.retry_later(&what) {
                            tracing::info!("{what} failed ({info}); sending it again in {pause:?}");
                        }
                    } else {
                        tracing::warn!("{what} failed: {info}");
                    }
                    None
                }),
            },
            WaitFor::Acknowledge => match response.result {
                Ok(_) => None,
                Err(info) if info.code == ErrorCode::Unimplemented => {
                    tracing::info!("the server does not know Acknowledge; not sending it again");
                    self.acknowledge = false;
                    None
                }
                Err(info) => fatal(&info).or_else(|| {
                    tracing::debug!("acknowledgement refused: {info}");
                    None
                }),
            },
            WaitFor::SetWatches {
                persistent,
                since_zxid,
            } => match response.result {
                Ok(_) => {
                    // Registered again as of the answer: what changed while the client
                    // was away fired no event on the persistent watches.
                    if self
                        .registry
                        .resumed(&persistent, since_zxid, response.zxid)
                    {
                        // The stream of every event misses them too.
                        let _ = self.shared.events.send(Err(Error::WatchResumed {
                            since_zxid,
                            until_zxid: response.zxid,
                        }));
                    }
                    None
                }
                Err(info) => fatal(&info).or_else(|| {
                    tracing::warn!("the server refused to re-register watches: {info}");
                    self.registry.fail_all(&Error::from(info));
                    None
                }),
            },
            WaitFor::Call { then, reply } => match response.result {
                Ok(result) => {
                    // Not a renewal: a follower answers reads at once and forwards writes
                    // without renewing anything, so only pings (acknowledged after the
                    // leader renewed the session) move the lease deadline: the task's
                    // keepalives and a caller's `Keepalive`.
                    if let Then::Keepalive { sent_at } = then {
                        self.renew_lease(sent_at);
                    }
                    let closed = matches!(result, OpResult::Closed);
                    let locks = match (&then, &result) {
                        (Then::LockMany { .. }, OpResult::MultiLocked { granted, nodes }) => nodes
                            .iter()
                            .map(|n| self.locks.register(&n.lock, &n.node, n.token, *granted))
                            .collect(),
                        _ => Vec::new(),
                    };
                    let lease = match (&then, &result) {
                        (Then::GrantLease, OpResult::Lease { lease_id, .. }) => Some(*lease_id),
                        _ => None,
                    };
                    let (stream, lock) = self.apply(then, &result, response.zxid);
                    let reply = reply.send(Ok(Reply {
                        result,
                        stream,
                        lock,
                        locks,
                        lease,
                    }));
                    if let Err(Ok(unwanted)) = reply {
                        self.unwanted(unwanted);
                    }
                    closed.then_some(End::Final(ConnectionState::Closed, Error::Closed))
                }
                Err(info) => {
                    let end = fatal(&info);
                    if matches!(then, Then::Close) {
                        if self.dropped {
                            // Nobody can retry it: end here, the session expires on
                            // its own once nothing keeps it alive.
                            tracing::warn!(
                                "closing the session of a dropped client failed: {info}"
                            );
                            return Some(
                                end.unwrap_or(End::Final(ConnectionState::Closed, Error::Closed)),
                            );
                        }
                        // The close failed: the session goes on.
                        self.closing = false;
                    }
                    if let Then::Detached(what) = &then {
                        if already_done(what, info.code) {
                            self.retries.done(what);
                        } else if end.is_none() && worth_retrying(info.code) {
                            match self.retry_later(what) {
                                Some(pause) => tracing::info!(
                                    "{what} failed ({info}); sending it again in {pause:?}"
                                ),
                                None => tracing::info!(
                                    "{what} failed ({info}); not sent again: this session \
                                     created the path anew since"
                                ),
                            }
                        } else {
                            self.retries.done(what);
                            tracing::warn!("{what}, on behalf of a dropped handle, failed: {info}");
                        }
                    }
                    let _ = reply.send(Err(Error::from(info)));
                    end
                }
            },
        }
    }

    /// Settles the tracked nodes of `lock` with the answer to its re-read; with `sweep`,
    /// releases this session's nodes in it that nobody tracks.
    fn reread(&mut self, lock: &str, sweep: bool, result: &OpResult) {
        let OpResult::Locks(states) = result else {
            tracing::warn!(%lock, "unexpected answer to a lock re-read: {result:?}");
            return;
        };
        let state = states.iter().find(|s| s.lock == lock);
        for orphan in self.locks.resync(lock, state, self.session_id, sweep) {
            tracing::info!(node = %orphan.node, "releasing a lock node nobody tracks");
            self.defer(Detached::Release(RequestNodes::one(
                &orphan.node,
                orphan.token,
            )));
        }
    }

    /// The registry side of a successful call.
    fn apply(
        &mut self,
        then: Then,
        result: &OpResult,
        zxid: u64,
    ) -> (
        Option<broadcast::Receiver<StreamItem>>,
        Option<watch::Receiver<SlotStatus>>,
    ) {
        match then {
            Then::Nothing
            | Then::Keepalive { .. }
            | Then::Close
            | Then::LockMany { .. }
            | Then::GrantLease => (None, None),
            Then::OneShot { path, kind, tx } => {
                // An exists watch on a node that exists is a data watch (as in
                // ZooKeeper): re-registered as an exist watch after a reconnect, the
                // server would take it for a creation watch.
                let kind = match (kind, result) {
                    (OneShotKind::Exist, OpResult::Exists(Some(_))) => OneShotKind::Data,
                    (kind, _) => kind,
                };
                self.registry.add_one_shot(&path, kind, tx, zxid);
                (None, None)
            }
            Then::Persistent { path, mode } => {
                (Some(self.registry.add_persistent(&path, mode)), None)
            }
            Then::RemoveWatches { path, kind } => {
                self.registry.remove(&path, kind);
                (None, None)
            }
            Then::Lock { lock } => match result {
                OpResult::Locked { node, token } => {
                    (None, Some(self.locks.register(&lock, node, *token, true)))
                }
                OpResult::Queued { node, token } => {
                    (None, Some(self.locks.register(&lock, node, *token, false)))
                }
                _ => (None, None),
            },
            Then::Unlock { node } => {
                self.locks.released(&node, None);
                (None, None)
            }
            Then::Detached(what) => {
                self.retries.done(&what);
                match &what {
                    Detached::Release(nodes) => {
                        for n in nodes.all() {
                            self.locks.released(&n.node, Some(n.token));
                        }
                    }
                    Detached::ReadLock { lock, sweep } => self.reread(lock, *sweep, result),
                    Detached::RevokeLease { .. } | Detached::Delete { .. } => {}
                }
                (None, None)
            }
            Then::Release(nodes) => {
                self.retries.done(&Detached::Release(nodes.clone()));
                for n in nodes.all() {
                    self.locks.released(&n.node, Some(n.token));
                }
                (None, None)
            }
        }
    }

    /// Schedules a detached request that failed with a transient error to be sent again;
    /// returns the pause, or `None` if it is superseded (see [`DetachedRetries`]).
    fn retry_later(&mut self, what: &Detached) -> Option<Duration> {
        self.retries.failed(
            what,
            Instant::now(),
            rand::random::<f64>(),
            self.config.max_backoff,
        )
    }

    /// A detached request that could not get through because the session's lease ran
    /// out while disconnected (it may or may not have been applied). A release's locks
    /// are swept by the re-read after a resume, which also finds a node whose release
    /// was applied or not; a revoke or delete has no such sweep and is sent again once
    /// the session is resumed.
    fn lapsed_detached(&mut self, what: &Detached) {
        if let Detached::ReadLock { .. } = what {
            // A resumed session re-reads every lock it tracks anyway.
            self.retries.done(what);
        } else if let Detached::Release(_) = what {
            self.retries.done(what);
            for lock in Then::Detached(what.clone()).lock_names() {
                self.locks.suspect(&lock);
            }
        } else if let Some(pause) = self.retry_later(what) {
            tracing::debug!("{what} failed (the session lapsed); sending it again in {pause:?}");
        }
    }

    /// A successful answer whose caller is gone: undo what must not outlive it. A lock
    /// answer's nodes stay tracked (nobody listens to them) until their release
    /// succeeds, so that a reconnect's re-read sweeps them if it has not by then. A
    /// granted lease is revoked (nobody would renew or revoke it: it would live until
    /// its TTL).
    fn unwanted(&mut self, reply: Reply) {
        if let Some(lease_id) = reply.lease {
            tracing::debug!(
                lease = lease_id,
                "lease granted after its caller left; revoking"
            );
            self.defer(Detached::RevokeLease { lease_id });
        }
        if !reply.locks.is_empty() {
            if let OpResult::MultiLocked { nodes, .. } = &reply.result {
                tracing::debug!("multi-lock answered after its caller left; releasing");
                if let Some(nodes) = RequestNodes::of_group(nodes) {
                    self.defer(Detached::Release(nodes));
                }
            }
        }
        if reply.lock.is_some() {
            if let OpResult::Locked { node, token } | OpResult::Queued { node, token } =
                reply.result
            {
                tracing::debug!(%node, "lock request answered after its caller left; releasing");
                self.defer(Detached::Release(RequestNodes::one(&node, token)));
            }
        }
    }

    fn observe_zxid(&mut self, zxid: u64) {
        if zxid > self.last_zxid {
            self.last_zxid = zxid;
            self.shared.update_session(|s| s.last_zxid = zxid);
        }
    }

    /// The server acknowledged a ping (the task's keepalive or a caller's
    /// [`Then::Keepalive`]) sent at `sent_at`, after the leader renewed the session: the
    /// session lives at least a TTL from then. An answer that comes after the safe deadline passed extends the
    /// lease but counts a gap (see [`SessionStatus::lease_gaps`]).
    fn renew_lease(&mut self, sent_at: Instant) {
        if sent_at > self.lease_from {
            let safe = self.lease_from + self.ttl.saturating_sub(default_margin(self.ttl));
            let gap = Instant::now() >= safe;
            self.lease_from = sent_at;
            let deadline = sent_at + self.ttl;
            self.shared.update_session(|s| {
                s.lease_deadline = deadline;
                if gap {
                    s.lease_gaps += 1;
                }
            });
        }
    }

    /// Resumes the session on some server. Returns the new connection and the frames
    /// to resend, or the final state if the session cannot be resumed.
    async fn reconnect(&mut self) -> Result<(Transport, Vec<(u64, Bytes)>), End> {
        self.shared.state.set(ConnectionState::Disconnected);
        loop {
            let index = self.backoff.next_server();
            let Some(address) = self.config.addresses.get(index).cloned() else {
                return Err(End::Final(
                    ConnectionState::Closed,
                    Error::InvalidConfig("no server address".into()),
                ));
            };
            self.shared.state.set(ConnectionState::Connecting);
            let hello = Hello::new(
                SessionRequest::Resume {
                    session_id: self.session_id,
                    secret: self.secret,
                },
                self.last_zxid,
            );
            let started = Instant::now();
            let attempt = transport::open(
                &address,
                &hello,
                self.config.max_frame_bytes,
                self.config.connect_timeout,
            );
            match self.while_away(attempt).await? {
                Ok((transport, granted)) if granted.session_id == self.session_id => {
                    self.backoff.succeeded();
                    self.adopt(&granted, started);
                    self.lapsed = false;
                    let frames = self.pending.prepare_resend(granted.next_xid);
                    tracing::info!(
                        session = self.session_id,
                        %address,
                        resent = frames.len(),
                        "session resumed"
                    );
                    return Ok((transport, frames));
                }
                Ok((_, granted)) => tracing::warn!(
                    %address,
                    "asked to resume session {} but got {}",
                    self.session_id,
                    granted.session_id
                ),
                Err(HandshakeError::Refused(info)) => {
                    if let Some(end) = fatal(&info) {
                        return Err(end);
                    }
                    tracing::debug!(%address, "resume refused: {info}");
                }
                Err(HandshakeError::Failed(e)) => {
                    tracing::debug!(%address, "cannot reconnect: {e}");
                }
            }
            let pause = self.backoff.failed_with_jitter();
            if !pause.is_zero() {
                self.shared.state.set(ConnectionState::Disconnected);
                self.while_away(sleep(pause)).await?;
            }
        }
    }

    /// Drives `work` while disconnected. Once the lease has run out, fails every
    /// unanswered request and each new call with `ConnectionLoss` (a close closes the
    /// client at once, and so does dropping every handle).
    async fn while_away<F: Future>(&mut self, work: F) -> Result<F::Output, End> {
        tokio::pin!(work);
        loop {
            let lease_end = self.lease_from + self.ttl;
            tokio::select! {
                biased;
                output = &mut work => return Ok(output),
                () = sleep_until(lease_end), if !self.lapsed => {
                    self.lapse();
                    if self.closing {
                        // The close cannot be delivered in time: close locally, the
                        // session expires on the server after its TTL.
                        return Err(End::Final(ConnectionState::Closed, Error::Closed));
                    }
                },
                call = self.calls.recv(), if self.lapsed => match call {
                    None => return Err(End::Final(ConnectionState::Closed, Error::Closed)),
                    Some(Call { then: Then::Close, reply, .. }) => {
                        // The server cannot be told; the session expires on its own.
                        let _ = reply.send(Ok(Reply {
                            result: OpResult::Closed,
                            stream: None,
                            lock: None,
                            locks: Vec::new(),
                            lease: None,
                        }));
                        return Err(End::Final(ConnectionState::Closed, Error::Closed));
                    }
                    Some(call) => {
                        if let Then::Detached(what) = &call.then {
                            self.lapsed_detached(what);
                        }
                        let _ = call.reply.send(Err(Error::ConnectionLoss));
                    }
                },
            }
        }
    }

    /// The lease ran out while disconnected: whatever waits now fails.
    fn lapse(&mut self) {
        tracing::info!(
            session = self.session_id,
            "no server reached within the session TTL; failing pending calls"
        );
        self.lapsed = true;
        // A lease grant stays pending, its caller told: the server may have granted it,
        // and a lease nobody knows would hold a `max_sessions` place for its TTL. Sent
        // again after the resume (answered from the server's deduplication table if it
        // was applied), its answer finds no caller and the lease is revoked.
        let keep = |waiter: &mut WaitFor| match waiter {
            WaitFor::Call {
                then: Then::GrantLease,
                reply,
            } => {
                let (nobody, _) = oneshot::channel();
                let _ = std::mem::replace(reply, nobody).send(Err(Error::ConnectionLoss));
                true
            }
            _ => false,
        };
        for waiter in self.pending.drain_unless(keep) {
            if let WaitFor::Call { then, reply, .. } = waiter {
                // A lock or release that may or may not have been applied: the queue
                // may hold a node nobody tracks.
                for lock in then.lock_names() {
                    self.locks.suspect(&lock);
                }
                if let Then::Detached(what) = &then {
                    self.lapsed_detached(what);
                }
                let answer = match then {
                    // Closing locally; see `while_away`.
                    Then::Close => Ok(Reply {
                        result: OpResult::Closed,
                        stream: None,
                        lock: None,
                        locks: Vec::new(),
                        lease: None,
                    }),
                    _ => Err(Error::ConnectionLoss),
                };
                let _ = reply.send(answer);
            }
        }
        for call in std::mem::take(&mut self.deferred) {
            for lock in call.then.lock_names() {
                self.locks.suspect(&lock);
            }
            if let Then::Detached(what) = &call.then {
                self.lapsed_detached(what);
            }
        }
        // Releases waiting to be sent again: the re-read after a resume sweeps their
        // locks instead. Revokes and deletes stay, to be sent again after it.
        for what in self.retries.drain_releases() {
            self.lapsed_detached(&what);
        }
    }

    /// Ends the client: publishes the final state and fails everything still waiting.
    fn finish(mut self, state: ConnectionState, err: Error) {
        tracing::info!(session = self.session_id, "client finished: {err}");
        self.shared.state.set(state);
        for waiter in self.pending.drain() {
            if let WaitFor::Call { reply, .. } = waiter {
                let _ = reply.send(Err(err.clone()));
            }
        }
        self.registry.fail_all(&err);
        self.locks.fail_all(LockLoss::SessionEnded);
        let _ = self.shared.events.send(Err(err.clone()));
        self.calls.close();
        while let Ok(call) = self.calls.try_recv() {
            let answer = match call.then {
                // Closing a finished client succeeds.
                Then::Close => Ok(Reply {
                    result: OpResult::Closed,
                    stream: None,
                    lock: None,
                    locks: Vec::new(),
                    lease: None,
                }),
                _ => Err(err.clone()),
            };
            let _ = call.reply.send(answer);
        }
    }
}

/// The answer a request gets when its response was over the client's `max_frame_bytes`
/// and skipped: `FrameTooLarge`, for that request alone; the connection goes on. A write
/// answered this way was carried out, and its zxid is observed like any other.
fn oversized_error(skipped: OversizedResponse) -> ServerMessage {
    let OversizedResponse {
        xid,
        zxid,
        len,
        max,
    } = skipped;
    let message = format!(
        "the response of {len} bytes exceeds this client's max_frame_bytes = {max} \
         (ClientConfig::max_frame_bytes; the server allows more)"
    );
    ServerMessage::Response(Response {
        xid,
        zxid,
        result: Err(ErrorInfo::new(ErrorCode::FrameTooLarge, message)),
    })
}

/// The answer a request to send again after a reconnect gets when its frame of `len`
/// bytes is over the new server's `max_frame_bytes` (`max`): `FrameTooLarge`. It was sent
/// before, so a write may have been carried out: like `ConnectionLoss`, but final.
fn not_resent(xid: u64, len: usize, max: usize) -> Response {
    let message = format!(
        "the request of {len} bytes was not sent again after a reconnect: it exceeds \
         this server's max_frame_bytes = {max} (the server it was first sent to allows \
         more; a write may have been carried out there)"
    );
    Response {
        xid,
        zxid: 0,
        result: Err(ErrorInfo::new(ErrorCode::FrameTooLarge, message)),
    }
}

/// The end a server error means for the whole client, if it is final.
fn fatal(info: &ErrorInfo) -> Option<End> {
    match info.code {
        ErrorCode::SessionExpired => {
            Some(End::Final(ConnectionState::Expired, Error::SessionExpired))
        }
        ErrorCode::SessionMoved | ErrorCode::AuthFailed | ErrorCode::ProtocolMismatch => Some(
            End::Final(ConnectionState::Closed, Error::Server(info.clone())),
        ),
        _ => None,
    }
}
