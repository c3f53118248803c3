//! The accepting side: the peer listener, the acceptor's half of the handshake (with the
//! identity step of version 2: the member check and the admission of a peer's
//! connection against its registered one, see "Two processes with one node id" in the
//! transport's documentation), and one reader per peer that hands decoded messages to
//! the node.

use super::bulk::{decode_off_worker, Inbound, PeerFrames};
use super::{
    PeerEvent, PeerHello, PeerHelloReply, PeerIdentity, Shared, ACCEPT_ERROR_BACKOFF,
    DUPLICATE_NODE_REFUSAL, HANDSHAKE_MAX_FRAME_BYTES, HANDSHAKE_SLOTS, IDENTITY_PEER_VERSION,
    REFUSAL_TIMEOUT,
};
use corral_protocol::{Codec, FrameError};
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// The established inbound connection of one peer, in [`Shared::inbound`].
#[derive(Debug)]
pub(super) struct Registered {
    conn_id: u64,
    /// The peer protocol version the connection was accepted at (its dialer's proposal).
    version: u16,
    /// The incarnation its dialer announced (`None` at version 1).
    incarnation: Option<u64>,
    /// The dialer's address, as this node sees it.
    addr: SocketAddr,
    /// When it last delivered a frame (or was registered), in milliseconds since
    /// [`Shared::epoch`].
    activity: Arc<AtomicU64>,
    /// Closes the connection.
    cancel: CancellationToken,
    /// Cancelled once the connection's task no longer delivers messages (after it
    /// unregistered).
    ended: CancellationToken,
}

impl Registered {
    /// The peer protocol version the connection was accepted at.
    pub(super) fn version(&self) -> u16 {
        self.version
    }

    /// The incarnation its dialer announced (`None` at version 1).
    pub(super) fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }
}

/// The connections accepted whose hello has not passed the acceptor's checks yet, oldest
/// first, each with its handshake slot: while they hold it, the slot can be taken from
/// them.
///
/// Anyone who reaches the peer port can open connections that send nothing, and open
/// them again as the handshake timeout closes them: holding every slot that way used to
/// turn away every peer that dialed (after a restart, or a link that broke) for as long
/// as it went on. A dialer sends its hello as soon as it is connected, so a connection
/// that is still silent when the slots run out is the oldest suspect: a newcomer takes
/// the slot of the oldest such connection, which is closed. Only a connection whose
/// hello passed the checks (magic, version, cluster id, node ids) keeps its slot for
/// the rest of its handshake.
#[derive(Default)]
struct Unproven {
    next_id: u64,
    /// Oldest first: id, the connection's cancellation, its slot.
    queue: VecDeque<(u64, CancellationToken, OwnedSemaphorePermit)>,
}

/// A connection's place in [`Unproven`]; leaves it when dropped.
struct Claim {
    unproven: Arc<Mutex<Unproven>>,
    id: u64,
    /// Cancelled when another connection took its slot.
    evicted: CancellationToken,
}

impl Claim {
    /// The connection's hello passed the checks: takes its slot out of [`Unproven`], for
    /// good. `None` if another connection took it meanwhile.
    fn prove(&self) -> Option<OwnedSemaphorePermit> {
        let mut unproven = self.unproven.lock().unwrap_or_else(PoisonError::into_inner);
        let at = unproven.queue.iter().position(|(id, ..)| *id == self.id)?;
        unproven.queue.remove(at).map(|(_, _, permit)| permit)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Frees the slot if the connection ends before its hello was checked.
        drop(self.prove());
    }
}

/// A handshake slot for a new connection: a free one, or else the slot of the oldest
/// connection whose hello has not passed the checks yet (it is closed). `None` when
/// every slot holds a connection past its hello.
fn claim_slot(
    slots: &Arc<Semaphore>,
    unproven: &Arc<Mutex<Unproven>>,
    root: &CancellationToken,
) -> Option<(Claim, bool)> {
    let mut guard = unproven.lock().unwrap_or_else(PoisonError::into_inner);
    let (permit, evicted_one) = match slots.clone().try_acquire_owned() {
        Ok(permit) => (permit, false),
        Err(_) => {
            let (_, evicted, permit) = guard.queue.pop_front()?;
            evicted.cancel();
            (permit, true)
        }
    };
    let id = guard.next_id;
    guard.next_id += 1;
    let evicted = root.child_token();
    guard.queue.push_back((id, evicted.clone(), permit));
    drop(guard);
    let claim = Claim {
        unproven: unproven.clone(),
        id,
        evicted,
    };
    Some((claim, evicted_one))
}

/// Accepts peer connections until the transport stops; drops the listener on return.
pub(super) async fn accept_loop<M>(shared: Arc<Shared<M>>, listener: TcpListener)
where
    M: DeserializeOwned + Send + 'static,
{
    let node = shared.config.node_id;
    let slots = Arc::new(Semaphore::new(HANDSHAKE_SLOTS));
    let unproven = Arc::new(Mutex::new(Unproven::default()));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.root.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => match claim_slot(&slots, &unproven, &shared.root) {
                Some((claim, evicted_one)) => {
                    if evicted_one {
                        tracing::debug!(
                            node,
                            %addr,
                            limit = HANDSHAKE_SLOTS,
                            "every handshake slot taken: the oldest connection without a hello is closed to make room"
                        );
                    }
                    shared.spawn(serve(shared.clone(), stream, addr, claim));
                }
                None => {
                    tracing::warn!(
                        node,
                        %addr,
                        limit = HANDSHAKE_SLOTS,
                        "peer connection refused: too many connections in handshake"
                    );
                }
            },
            Err(e) => {
                tracing::warn!(node, error = %e, "accepting a peer connection failed");
                tokio::select! {
                    biased;
                    _ = shared.root.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
}

/// A connection in the acceptor's handshake, reading `In` and writing replies.
type HandshakeFramed<In> = Framed<TcpStream, Codec<In, PeerHelloReply>>;

/// One accepted connection: handshake, replace the peer's older connection, read.
async fn serve<M>(shared: Arc<Shared<M>>, stream: TcpStream, addr: SocketAddr, claim: Claim)
where
    M: DeserializeOwned + Send + 'static,
{
    let node = shared.config.node_id;
    let handshake_timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    let deadline = Instant::now() + handshake_timeout;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(
        stream,
        Codec::<PeerHello, PeerHelloReply>::new(HANDSHAKE_MAX_FRAME_BYTES),
    );
    let first = match bounded(&claim.evicted, deadline, framed.next()).await {
        Bounded::Cancelled => {
            if !shared.root.is_cancelled() {
                tracing::debug!(node, %addr, "connection without a hello closed: its handshake slot was needed");
            }
            return;
        }
        Bounded::TimedOut => None,
        Bounded::Done(first) => Some(first),
    };
    let reason = match first {
        Some(Some(Ok(hello))) => Ok(hello),
        Some(Some(Err(e))) => Err(format!("malformed handshake: {e}")),
        Some(None) => {
            tracing::debug!(node, %addr, "peer connection closed before its handshake");
            return;
        }
        None => Err(format!("no handshake within {handshake_timeout:?}")),
    };
    let hello = match reason {
        Ok(hello) => hello,
        Err(reason) => {
            return refuse(
                &shared,
                &claim.evicted,
                &mut framed,
                addr,
                None,
                Severity::Warn,
                reason,
            )
            .await;
        }
    };
    let check = hello.check(shared.config.cluster_id, node, |id| {
        shared.peers.contains_key(&id)
    });
    if let Err(reason) = check {
        let from = Some(hello.from);
        return refuse(
            &shared,
            &claim.evicted,
            &mut framed,
            addr,
            from,
            Severity::Warn,
            reason,
        )
        .await;
    }
    // Past the checks: the slot is this connection's until its handshake ends.
    let Some(permit) = claim.prove() else {
        return;
    };
    drop(claim);
    let peer = hello.from;
    let version = hello.version;
    // Nothing but the identity (version 2 and later) is read with this codec.
    let mut framed = framed.map_codec(|c| c.retype::<PeerIdentity, PeerHelloReply>());

    // The identity step: only a dialer at version 2 or later sends the frame, and only
    // once the hello is accepted (see `PeerIdentity`).
    let incarnation = if version >= IDENTITY_PEER_VERSION {
        if !send_reply(&shared.root, &mut framed, deadline, node, peer, addr).await {
            return;
        }
        let identity = match bounded(&shared.root, deadline, framed.next()).await {
            Bounded::Cancelled => return,
            Bounded::TimedOut => {
                let reason = format!("no identity within {handshake_timeout:?}");
                let from = Some(peer);
                return refuse(
                    &shared,
                    &shared.root,
                    &mut framed,
                    addr,
                    from,
                    Severity::Warn,
                    reason,
                )
                .await;
            }
            Bounded::Done(None) => {
                tracing::debug!(node, peer, %addr, "peer connection closed before its identity");
                return;
            }
            Bounded::Done(Some(Err(e))) => {
                let reason = format!("malformed identity: {e}");
                let from = Some(peer);
                return refuse(
                    &shared,
                    &shared.root,
                    &mut framed,
                    addr,
                    from,
                    Severity::Warn,
                    reason,
                )
                .await;
            }
            Bounded::Done(Some(Ok(identity))) => identity,
        };
        if let Err(reason) = identity.check_members(peer, node, &shared.members) {
            let from = Some(peer);
            return refuse(
                &shared,
                &shared.root,
                &mut framed,
                addr,
                from,
                Severity::Error,
                reason,
            )
            .await;
        }
        Some(identity.incarnation)
    } else {
        None
    };

    // Register as the peer's connection, unless another live process holds the id.
    let wait_until = deadline.min(Instant::now() + handshake_timeout / 2);
    let arrival = Arrival {
        peer,
        addr,
        version,
        incarnation,
    };
    let (registration, older, cancel, activity) = match admit(&shared, &arrival, wait_until).await {
        Admission::Admitted {
            registration,
            older,
            cancel,
            activity,
        } => (registration, older, cancel, activity),
        Admission::Refused(reason) => {
            let from = Some(peer);
            return refuse(
                &shared,
                &shared.root,
                &mut framed,
                addr,
                from,
                Severity::Error,
                reason,
            )
            .await;
        }
        Admission::Cancelled => return,
    };
    // Registered before its `Accepted`, so that deciding and registering are one step
    // under the lock. The older connection, out of the registry now, is closed at once
    // (whether or not the reply gets through: no unregistered reader may go on
    // delivering), and waited for, so its last messages are delivered (or abandoned)
    // before this one's first. If the reply fails, dropping the registration
    // unregisters this one.
    if let Some(older) = &older {
        tracing::info!(
            node,
            peer,
            %addr,
            "a new connection from the peer replaces its older one"
        );
        older.cancel.cancel();
    }
    if !send_reply(&cancel, &mut framed, deadline, node, peer, addr).await {
        return;
    }
    if let Some(older) = older {
        // Prompt: every wait of a connection task ends on its cancellation.
        older.ended.cancelled().await;
        if cancel.is_cancelled() {
            return;
        }
    }
    drop(permit);

    tracing::info!(node, peer, %addr, version, ?incarnation, "inbound peer connection up");
    let max = shared.config.max_frame_bytes;
    let frames = framed.map_codec(|_| PeerFrames::<M>::new(max));
    match read(&shared, peer, frames, &cancel, &activity).await {
        ReadEnd::Cancelled => {
            tracing::info!(node, peer, %addr, "inbound peer connection closed")
        }
        ReadEnd::PeerClosed => {
            tracing::info!(node, peer, %addr, "inbound peer connection closed by the peer")
        }
        ReadEnd::Frame(FrameError::Io(e)) => {
            tracing::info!(node, peer, %addr, error = %e, "inbound peer connection failed")
        }
        ReadEnd::Frame(e) => {
            tracing::warn!(node, peer, %addr, error = %e, "bad frame from peer; closing its connection")
        }
    }
    drop(registration);
}

/// Sends `Accepted` by `deadline`, unless `cancel` is cancelled first. False if the
/// connection is to be dropped.
async fn send_reply(
    cancel: &CancellationToken,
    framed: &mut HandshakeFramed<PeerIdentity>,
    deadline: Instant,
    node: u64,
    peer: u64,
    addr: SocketAddr,
) -> bool {
    match bounded(cancel, deadline, framed.send(PeerHelloReply::Accepted)).await {
        Bounded::Done(Ok(())) => true,
        Bounded::Cancelled => false,
        Bounded::TimedOut => {
            tracing::info!(node, peer, %addr, "peer did not read its handshake reply");
            false
        }
        Bounded::Done(Err(e)) => {
            tracing::info!(node, peer, %addr, error = %e, "peer connection failed in handshake");
            false
        }
    }
}

/// A connection that passed the handshake's checks and asks to be its peer's.
struct Arrival {
    peer: u64,
    addr: SocketAddr,
    version: u16,
    incarnation: Option<u64>,
}

/// The outcome of [`admit`].
enum Admission<'a, M> {
    /// Registered as the peer's connection; `older` (if any) is to be closed and waited
    /// for before reading.
    Admitted {
        registration: Registration<'a, M>,
        older: Option<Registered>,
        cancel: CancellationToken,
        activity: Arc<AtomicU64>,
    },
    /// Another live process holds the peer id: the reason, for the refusal.
    Refused(String),
    /// The transport is stopping.
    Cancelled,
}

/// What the registered connection of a peer means for a newcomer.
enum Verdict {
    /// No connection, the same process (same incarnation) reconnecting, or a version-1
    /// connection on either side: the newcomer replaces it.
    Replace,
    /// Another incarnation's connection, quiet for `quiet`: presumed dead (the
    /// half-open connection of a restarted peer); the newcomer replaces it.
    ReplaceQuiet {
        incarnation: u64,
        addr: SocketAddr,
        quiet: Duration,
    },
    /// Another incarnation's connection that is alive: the newcomer waits for it to end
    /// (`ended`) or to go quiet (at `quiet_at`), and is refused if neither happens in
    /// time.
    Alive {
        incarnation: u64,
        addr: SocketAddr,
        quiet: Duration,
        ended: CancellationToken,
        quiet_at: Instant,
    },
}

/// Judges `arrival` against the peer's registered connection (see the module
/// documentation, "Two processes with one node id").
fn judge(
    registered: Option<&Registered>,
    arrival: &Arrival,
    epoch: Instant,
    now: Instant,
    quiet_bound: Duration,
) -> Verdict {
    let Some(old) = registered else {
        return Verdict::Replace;
    };
    let (Some(old_incarnation), Some(new_incarnation)) = (old.incarnation, arrival.incarnation)
    else {
        return Verdict::Replace;
    };
    if old_incarnation == new_incarnation {
        return Verdict::Replace;
    }
    let last = epoch + Duration::from_millis(old.activity.load(Ordering::Relaxed));
    let quiet = now.saturating_duration_since(last);
    if quiet >= quiet_bound {
        Verdict::ReplaceQuiet {
            incarnation: old_incarnation,
            addr: old.addr,
            quiet,
        }
    } else {
        Verdict::Alive {
            incarnation: old_incarnation,
            addr: old.addr,
            quiet,
            ended: old.ended.clone(),
            quiet_at: last + quiet_bound,
        }
    }
}

/// Registers `arrival` as its peer's connection, or refuses it while another live
/// process (another incarnation) holds the peer id: it waits, until `wait_until`, for
/// the older connection to end or go quiet for `inbound_quiet_ms`. The decision and the
/// registration are one step under the lock.
async fn admit<'a, M>(
    shared: &'a Shared<M>,
    arrival: &Arrival,
    wait_until: Instant,
) -> Admission<'a, M> {
    let node = shared.config.node_id;
    let peer = arrival.peer;
    let quiet_bound = Duration::from_millis(shared.config.inbound_quiet_ms);
    loop {
        let now = Instant::now();
        let (ended, wake) = {
            let mut inbound = shared
                .inbound
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match judge(inbound.get(&peer), arrival, shared.epoch, now, quiet_bound) {
                Verdict::Alive {
                    incarnation,
                    addr,
                    quiet,
                    ended,
                    quiet_at,
                } => {
                    if now >= wait_until {
                        return Admission::Refused(format!(
                            "{DUPLICATE_NODE_REFUSAL} {peer}: incarnation {:#018x} from {} is \
                             refused while incarnation {incarnation:#018x} from {addr} is \
                             connected and alive (its last message {} ms ago); stop one of \
                             the two processes or give it a node id of its own",
                            arrival.incarnation.unwrap_or_default(),
                            arrival.addr,
                            quiet.as_millis()
                        ));
                    }
                    (ended, quiet_at.min(wait_until))
                }
                verdict => {
                    if let Verdict::ReplaceQuiet {
                        incarnation,
                        addr,
                        quiet,
                    } = verdict
                    {
                        tracing::warn!(
                            node,
                            peer,
                            new_incarnation = %format_args!("{:#018x}", arrival.incarnation.unwrap_or_default()),
                            new_addr = %arrival.addr,
                            old_incarnation = %format_args!("{incarnation:#018x}"),
                            old_addr = %addr,
                            quiet_ms = quiet.as_millis() as u64,
                            "a new process of the peer replaces a connection of another process \
                             that has been quiet for longer than inbound_quiet_ms (presumed dead: \
                             a restarted peer)"
                        );
                    }
                    let cancel = shared.root.child_token();
                    let ended = CancellationToken::new();
                    let activity = Arc::new(AtomicU64::new(millis_since(shared.epoch, now)));
                    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
                    let older = inbound.insert(
                        peer,
                        Registered {
                            conn_id,
                            version: arrival.version,
                            incarnation: arrival.incarnation,
                            addr: arrival.addr,
                            activity: activity.clone(),
                            cancel: cancel.clone(),
                            ended: ended.clone(),
                        },
                    );
                    let registration = Registration {
                        shared,
                        peer,
                        conn_id,
                        ended,
                    };
                    return Admission::Admitted {
                        registration,
                        older,
                        cancel,
                        activity,
                    };
                }
            }
        };
        tokio::select! {
            biased;
            _ = shared.root.cancelled() => return Admission::Cancelled,
            _ = ended.cancelled() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Milliseconds from `epoch` to `at`.
fn millis_since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// Unregisters an inbound connection (unless a newer one replaced it) and then signals
/// that it is finished (`ended`), however its task ends.
struct Registration<'a, M> {
    shared: &'a Shared<M>,
    peer: u64,
    conn_id: u64,
    ended: CancellationToken,
}

impl<M> Drop for Registration<'_, M> {
    fn drop(&mut self) {
        let mut inbound = self
            .shared
            .inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if inbound
            .get(&self.peer)
            .is_some_and(|r| r.conn_id == self.conn_id)
        {
            inbound.remove(&self.peer);
        }
        drop(inbound);
        self.ended.cancel();
    }
}

/// Why an inbound connection's reader stopped.
enum ReadEnd {
    Cancelled,
    PeerClosed,
    Frame(FrameError),
}

/// Hands every message of the connection to the node, in order, waiting for room in
/// the events channel (backpressure onto this connection only). Large frames are
/// decoded on a blocking thread, before the next frame is read.
async fn read<M: DeserializeOwned + Send + 'static>(
    shared: &Shared<M>,
    from: u64,
    mut frames: Framed<TcpStream, PeerFrames<M>>,
    cancel: &CancellationToken,
    activity: &AtomicU64,
) -> ReadEnd {
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => return ReadEnd::Cancelled,
            next = frames.next() => next,
        };
        activity.store(
            millis_since(shared.epoch, Instant::now()),
            Ordering::Relaxed,
        );
        let msg = match next {
            Some(Ok(Inbound::Decoded(msg))) => msg,
            Some(Ok(Inbound::Large(payload))) => {
                let decoded = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return ReadEnd::Cancelled,
                    decoded = decode_off_worker(payload) => decoded,
                };
                match decoded {
                    Ok(msg) => msg,
                    Err(e) => return ReadEnd::Frame(e),
                }
            }
            Some(Err(e)) => return ReadEnd::Frame(e),
            None => return ReadEnd::PeerClosed,
        };
        let sent = tokio::select! {
            biased;
            _ = cancel.cancelled() => return ReadEnd::Cancelled,
            sent = shared.events.send(PeerEvent::Message { from, msg }) => sent,
        };
        if sent.is_err() {
            shared.events_closed();
            return ReadEnd::Cancelled;
        }
    }
}

/// How loudly a refusal is logged.
#[derive(Debug, Clone, Copy)]
enum Severity {
    /// A stranger or a transient problem.
    Warn,
    /// A misconfiguration of the cluster that only the operator can fix (member lists
    /// that differ, two processes with one node id).
    Error,
}

/// Logs a refused handshake and tells the dialer why (unless `cancel` is cancelled
/// first: the transport stops, or the connection's handshake slot was taken before its
/// hello passed the checks), then the connection is closed.
async fn refuse<M, In>(
    shared: &Shared<M>,
    cancel: &CancellationToken,
    framed: &mut HandshakeFramed<In>,
    addr: SocketAddr,
    claimed_from: Option<u64>,
    severity: Severity,
    reason: String,
) {
    let node = shared.config.node_id;
    match severity {
        Severity::Warn => {
            tracing::warn!(node, %addr, claimed_from, %reason, "peer handshake refused")
        }
        Severity::Error => {
            tracing::error!(node, %addr, claimed_from, %reason, "peer handshake refused: misconfigured cluster")
        }
    }
    let reply = PeerHelloReply::Refused { reason };
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let _ = bounded(cancel, deadline, framed.send(reply)).await;
}

/// The outcome of [`bounded`].
enum Bounded<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

/// Runs `fut` until `deadline` at most, and not past the cancellation of `cancel`.
async fn bounded<T>(
    cancel: &CancellationToken,
    deadline: Instant,
    fut: impl Future<Output = T>,
) -> Bounded<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Bounded::Cancelled,
        r = tokio::time::timeout_at(deadline, fut) => match r {
            Ok(v) => Bounded::Done(v),
            Err(_) => Bounded::TimedOut,
        },
    }
}
