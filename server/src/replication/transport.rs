//! The peer transport: TCP links between the nodes of a cluster, generic over the
//! message type (the node uses OmniPaxos messages).
//!
//! # Topology
//!
//! Every node **dials** every peer for its own outgoing messages (one outbound TCP
//! connection per peer) and **accepts** connections on which it only receives. A pair of
//! nodes is therefore joined by two connections, one per direction, and each connection
//! carries frames in one direction only (after the handshake).
//!
//! # Wire handshake
//!
//! Frames are those of the client protocol ([`corral_protocol::frame`]): a 4-byte
//! big-endian length, then one bincode-encoded message. On every new connection:
//!
//! 1. the dialer sends one [`PeerHello`] frame: `magic: u32` ([`PEER_MAGIC`], "CRPR",
//!    distinct from the client protocol's "CRRL"), `version: u16` (the version it
//!    proposes, see below), `cluster_id: u64`, `from: u64` (the dialer's node id),
//!    `to: u64` (the node id the dialer expects to reach). With the fixed-width encoding
//!    this is a 30-byte payload whose first four bytes are the magic;
//! 2. the acceptor checks, in this order, the magic, that it speaks the version
//!    ([`MIN_PEER_PROTOCOL_VERSION`]`..=`[`PEER_PROTOCOL_VERSION`]), the cluster id, that
//!    `to` is itself and that `from` is one of its configured peers, and answers one
//!    [`PeerHelloReply`] frame: `Accepted`, or `Refused { reason }` after which it closes
//!    the connection. Refusals are logged at warn on both sides (except a version
//!    refusal the dialer falls back from, logged at info). Handshake frames are limited
//!    to 1 KiB, and a connection that does not complete the handshake within
//!    `connect_timeout_ms` is refused;
//! 3. at version 2 and later ([`IDENTITY_PEER_VERSION`]) only, and only after that
//!    `Accepted` (see [`PeerIdentity`] for why it waits), the dialer sends one
//!    [`PeerIdentity`] frame: `members: Vec<u64>` (its cluster's node ids, sorted, both
//!    ends included) and `incarnation: u64` (random per transport start). The acceptor
//!    refuses a member list that is not exactly its own ([`MEMBERS_REFUSAL`], naming
//!    both lists), decides on the incarnation ("Two processes with one node id" below),
//!    and answers a second [`PeerHelloReply`]; these refusals are logged at error on
//!    both sides, since only the operator can fix them, and the dialer retries after its
//!    backoff like after any refusal. A version-1 dialer sends no such frame, and the
//!    acceptor, which knows the version from the hello, reads none;
//! 4. after the last `Accepted`, the dialer sends frames of `M` and never reads anything
//!    but the end of the stream; the acceptor reads frames of `M` (at most
//!    `max_frame_bytes` each) and never writes.
//!
//! The handshake catches misconfiguration (a node of another cluster, a wrong address
//! map, member lists that differ, a node id given to two processes); it is not
//! authentication. Member lists are compared as sets of ids, without addresses: nodes
//! may reach each other through different addresses. Nodes whose lists differ could
//! otherwise count disjoint majorities (node 3 with {1, 2, 3} and node 4 with
//! {3, 4, 5}) and elect two leaders. A version-1 peer's member list is unknown and not
//! checked.
//!
//! # Two processes with one node id
//!
//! The acceptor keeps one inbound connection per peer id, with the incarnation its
//! dialer announced. A new connection with the same incarnation is the same process
//! reconnecting (after its own `LinkDown`): it replaces the older one. One with another
//! incarnation is either the peer restarted or a second process given the same node id
//! (a copied configuration, a node started twice). The acceptor tells them apart by the
//! older connection:
//!
//! - it ended: the peer restarted; the newcomer is accepted. Since the older one's end
//!   may not have been read yet when the new process dials (a restart right after an
//!   orderly exit), the acceptor waits for it up to half of `connect_timeout_ms`;
//! - it delivered nothing for `inbound_quiet_ms` (a node sends every peer a leader
//!   election heartbeat at least once per election timeout): it is presumed dead, the
//!   half-open connection of a process whose host went away without closing it, and is
//!   replaced by the newcomer (logged at warn with both incarnations and addresses), so
//!   a restarted node is never locked out for longer than that;
//! - otherwise it is alive: the newcomer is refused ([`DUPLICATE_NODE_REFUSAL`]), logged
//!   at error on both sides with both incarnations and both remote addresses. Refusing
//!   the newcomer, and not letting the two replace each other, keeps one process per id
//!   in this node's view: two processes with one id, each with its own log, would break
//!   the assumption Paxos's quorums rest on.
//!
//! This is detection, not a guarantee: two such processes may each win at different
//! nodes, and a duplicate whose first process is quiet replaces it. Connections at
//! version 1 carry no incarnation: a newer one replaces the older, as it always did.
//!
//! # Versions
//!
//! The hello's layout and the framing are the same in every version (the acceptor
//! refuses trailing bytes, so the hello can never grow); a version says which messages
//! the acceptor decodes and what follows the hello. Version 1 is the first release;
//! version 2 adds the `EntryBody::OrderedWrite` log entry and the [`PeerIdentity`] step
//! of the handshake; version 3 adds the `EntryBody::AckedWrite` log entry. Binaries that speak only version 1 refuse any
//! other with a reason that begins with [`UNSUPPORTED_VERSION_REFUSAL`], and so does
//! this one for a version outside its range.
//!
//! The dialer proposes [`PEER_PROTOCOL_VERSION`] first. On a version refusal it retries
//! at once (no backoff) one version lower, down to [`MIN_PEER_PROTOCOL_VERSION`]; other
//! refusals, and a version refusal at the minimum, wait for the backoff as before. The
//! fallback lasts for one attempt only: every attempt after a backoff or after a link
//! ended starts again at the highest version, so a peer restarted with a newer binary
//! is seen at its new version by the next link. A new node and an old one thus meet at
//! version 1 in both directions, two new nodes at version 2.
//!
//! [`PeerEvent::LinkUp`] carries the version the outbound link was accepted at, which is
//! what the peer decodes of what this node sends (the node passes it to
//! `PaxosLog::on_link_up`); [`Transport::link_version`] reads it while the link is up.
//! The acceptor records the version each inbound connection was accepted at
//! ([`Transport::inbound_version`]) and its incarnation
//! ([`Transport::inbound_incarnation`]); nothing depends on the version.
//!
//! # What the node can rely on
//!
//! - [`Transport::send`] never blocks. It succeeds only while the outbound link to the
//!   peer is up and its queue (`send_queue_messages`) has room.
//! - **Ordering and gaps.** Messages accepted by `send` between a [`PeerEvent::LinkUp`]
//!   and the following [`PeerEvent::LinkDown`] for a peer are written on one TCP
//!   connection, in order. The peer receives a prefix of them: a message is never
//!   delivered after a later one, and never delivered while an earlier one of the same
//!   link was lost. Any loss (a broken connection, a message dropped because the queue
//!   was full) ends the link: `LinkDown` follows, and the next `LinkUp` starts a new
//!   link. So every loss is followed by a `LinkUp` at which it can be repaired: OmniPaxos
//!   `reconnected(peer)` repairs a follower's (it asks the leader to sync it), and a
//!   leader's is repaired by its next message to the follower, which shows the gap
//!   (`PaxosLog::on_link_up` makes one: an empty entry).
//! - A full queue is treated as a broken link (the peer is dead, partitioned or far
//!   behind): the message is dropped, `send` returns [`SendError::QueueFull`], the
//!   connection is closed, and the link is re-established after a backoff. This bounds
//!   memory and turns a silent stall into a `LinkDown`/`LinkUp` pair.
//! - `LinkUp`/`LinkDown` describe only the **outbound** direction. Messages from a peer
//!   arrive on its own outbound connection, which is independent: they may arrive while
//!   our link to that peer is down. Per peer, link events alternate, starting with
//!   `LinkUp`.
//! - Inbound messages from one peer are delivered in the order the peer sent them on
//!   one connection; when the peer replaces its connection (after its own `LinkDown`),
//!   the older connection is closed and fully drained or abandoned before the newer one
//!   is read, so deliveries never interleave.
//! - Dead links are detected by write errors, by the end of stream on the outbound
//!   connection (the acceptor never writes after the handshake, so a read returning
//!   anything means the link is gone), by TCP keepalive (OS default timing), and by a
//!   full send queue.
//!
//! # Limits
//!
//! Per-peer queues (`send_queue_messages`), frame size (`max_frame_bytes`), inbound
//! connections (one established per configured peer, plus at most
//! [`HANDSHAKE_SLOTS`] in handshake, each with a handshake timeout; a connection that
//! has not sent a valid hello gives its slot up to a newer one when they run out),
//! cluster size
//! ([`MAX_MEMBERS`], so that the identity frame fits the 1 KiB handshake frames).
//!
//! # Files
//!
//! - `transport/wire.rs`: the handshake frames and their checks.
//! - `transport/outbound.rs`: one task per peer that dials, handshakes, writes, and
//!   reconnects with backoff.
//! - `transport/inbound.rs`: the listener, the acceptor's handshake, and the readers.
//! - `transport/bulk.rs`: large messages (snapshots) encoded and decoded on blocking
//!   threads instead of the runtime's workers.

mod bulk;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;
mod wire;

pub use bulk::Bulky;
pub use wire::{
    PeerHello, PeerHelloReply, PeerIdentity, DUPLICATE_NODE_REFUSAL, IDENTITY_PEER_VERSION,
    MAX_MEMBERS, MEMBERS_REFUSAL, MIN_PEER_PROTOCOL_VERSION, PEER_MAGIC, PEER_PROTOCOL_VERSION,
    UNSUPPORTED_VERSION_REFUSAL,
};

use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Connections that may be in the handshake at once on the peer listener. When they
/// are all taken, a new connection takes the slot of the oldest one whose hello has not
/// passed the checks yet, which is closed (a dialer sends its hello at once: silent
/// connections must not lock peers out); if every one has, the new connection is
/// closed as soon as it is accepted.
pub const HANDSHAKE_SLOTS: usize = 8;
/// Largest handshake frame (hello or reply), whatever `max_frame_bytes` is: an
/// unauthenticated connection cannot make the acceptor allocate more.
const HANDSHAKE_MAX_FRAME_BYTES: usize = 1024;
/// Backlog of the peer listener.
const LISTEN_BACKLOG: u32 = 128;
/// Pause after a failed `accept` (usually out of file descriptors), instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long a refused connection gets to read its refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Configuration of the peer transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// This node's id (the OmniPaxos pid).
    pub node_id: u64,
    /// Where to listen for peers (ignored by [`Bound::start`], which is already bound).
    pub listen: SocketAddr,
    /// Every other node of the cluster and its peer address; must not contain `node_id`.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Largest encoded message, in either direction.
    pub max_frame_bytes: usize,
    /// Messages queued per peer before `send` fails (and the link is reset).
    pub send_queue_messages: usize,
    /// Time to connect and complete the handshake, as dialer and as acceptor.
    pub connect_timeout_ms: u64,
    /// Shortest wait before a reconnection attempt.
    pub backoff_min_ms: u64,
    /// Longest wait before a reconnection attempt.
    pub backoff_max_ms: u64,
    /// Identifies the cluster; nodes of different clusters refuse each other.
    pub cluster_id: u64,
    /// How long a peer's inbound connection may deliver nothing and still count as
    /// alive when another process of the same node id (another incarnation) connects:
    /// while it is alive the newcomer is refused; once quiet this long it is presumed
    /// dead and replaced (see the module documentation). Must exceed the longest gap
    /// between two messages of a live peer.
    pub inbound_quiet_ms: u64,
}

impl PeerConfig {
    fn validate(&self) -> Result<(), TransportError> {
        let fail = |msg: String| Err(TransportError::Config(msg));
        if self.peers.contains_key(&self.node_id) {
            return fail(format!(
                "peers contains this node's own id {}",
                self.node_id
            ));
        }
        if self.max_frame_bytes == 0 {
            return fail("max_frame_bytes must be at least 1".into());
        }
        if self.send_queue_messages == 0 {
            return fail("send_queue_messages must be at least 1".into());
        }
        if self.connect_timeout_ms == 0 {
            return fail("connect_timeout_ms must be at least 1".into());
        }
        if self.backoff_min_ms == 0 {
            return fail("backoff_min_ms must be at least 1".into());
        }
        if self.inbound_quiet_ms == 0 {
            return fail("inbound_quiet_ms must be at least 1".into());
        }
        if self.peers.len() + 1 > MAX_MEMBERS {
            return fail(format!(
                "{} members, more than the {MAX_MEMBERS} the peer handshake allows",
                self.peers.len() + 1
            ));
        }
        if self.backoff_max_ms < self.backoff_min_ms {
            return fail(format!(
                "backoff_max_ms ({}) is below backoff_min_ms ({})",
                self.backoff_max_ms, self.backoff_min_ms
            ));
        }
        Ok(())
    }
}

/// What the transport reports to the node, on the `events` channel given to `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent<M> {
    /// A message received from peer `from`.
    Message {
        /// The sending node (as it identified itself in the handshake).
        from: u64,
        /// The message.
        msg: M,
    },
    /// The outbound link to `peer` was (re)established and handshaken: `send` to it
    /// works from now on. Messages sent before may have been lost: call OmniPaxos
    /// `reconnected(peer)`.
    LinkUp {
        /// The peer.
        peer: u64,
        /// The peer protocol version the peer accepted this link at: it decodes what
        /// that version allows, until the link goes down. Between
        /// [`MIN_PEER_PROTOCOL_VERSION`] and [`PEER_PROTOCOL_VERSION`].
        version: u16,
    },
    /// The outbound link to `peer` broke; `send` to it fails until the next `LinkUp`.
    LinkDown {
        /// The peer.
        peer: u64,
    },
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration is inconsistent.
    #[error("invalid peer transport configuration: {0}")]
    Config(String),
    /// The peer listener could not be bound.
    #[error("cannot listen for peers on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Why [`Transport::send`] dropped a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer's queue is full; the link is being reset (expect `LinkDown`).
    #[error("the send queue to the peer is full")]
    QueueFull,
    /// There is no live link to the peer (or the transport is shut down).
    #[error("no link to the peer")]
    Disconnected,
    /// The id is not a configured peer.
    #[error("node {0} is not a configured peer")]
    UnknownPeer(u64),
}

/// A peer listener bound to its address, not yet serving. Lets a caller (or a test)
/// learn the address before the peers' addresses are known.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Bound {
    /// Binds the peer listener (with `SO_REUSEADDR`, so a restarted node can bind the
    /// same address at once, and TCP keepalive, inherited by accepted connections).
    pub async fn bind(listen: SocketAddr) -> Result<Bound, TransportError> {
        let bind_error = |source| TransportError::Bind {
            addr: listen,
            source,
        };
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(bind_error)?;
        socket.set_reuseaddr(true).map_err(bind_error)?;
        socket.set_keepalive(true).map_err(bind_error)?;
        socket.bind(listen).map_err(bind_error)?;
        let listener = socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Bound {
            listener,
            local_addr,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts serving: accepts peers on this listener and dials every configured peer.
    /// `config.listen` is ignored. Must be called within a tokio runtime.
    pub async fn start<M>(
        self,
        config: PeerConfig,
        events: mpsc::Sender<PeerEvent<M>>,
    ) -> Result<Transport<M>, TransportError>
    where
        M: Serialize + DeserializeOwned + Bulky + Send + 'static,
    {
        config.validate()?;
        let root = CancellationToken::new();
        let (alive, _) = watch::channel(());
        let peers = config
            .peers
            .keys()
            .map(|&id| {
                (
                    id,
                    PeerSlot {
                        link: Mutex::new(None),
                    },
                )
            })
            .collect();
        let mut members: Vec<u64> = config.peers.keys().copied().collect();
        members.push(config.node_id);
        members.sort_unstable();
        let shared = Arc::new(Shared {
            local_addr: self.local_addr,
            members,
            incarnation: rand::random(),
            epoch: Instant::now(),
            peers,
            events,
            root: root.clone(),
            alive,
            inbound: Mutex::new(BTreeMap::new()),
            next_conn_id: AtomicU64::new(1),
            config,
        });
        tracing::info!(
            node = shared.config.node_id,
            addr = %self.local_addr,
            members = ?shared.members,
            incarnation = %format_args!("{:#018x}", shared.incarnation),
            "peer transport listening"
        );
        shared.spawn(inbound::accept_loop(shared.clone(), self.listener));
        for (&peer, &addr) in &shared.config.peers {
            shared.spawn(outbound::run_peer(shared.clone(), peer, addr));
        }
        Ok(Transport {
            inner: Arc::new(Inner {
                shared,
                _stop_on_drop: root.drop_guard(),
            }),
        })
    }
}

/// A running peer transport. Cheap to clone; every clone is a handle on the same
/// transport, which stops when [`Transport::shutdown`] is called or the last handle is
/// dropped.
pub struct Transport<M> {
    inner: Arc<Inner<M>>,
}

struct Inner<M> {
    shared: Arc<Shared<M>>,
    _stop_on_drop: DropGuard,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            inner: self.inner.clone(),
        }
    }
}

impl<M> fmt::Debug for Transport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.inner.shared;
        f.debug_struct("Transport")
            .field("node_id", &shared.config.node_id)
            .field("local_addr", &shared.local_addr)
            .field("peers", &shared.config.peers)
            .field("stopped", &shared.root.is_cancelled())
            .finish()
    }
}

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Bulky + Send + 'static,
{
    /// Binds `config.listen` and starts serving (see [`Bound::start`]).
    pub async fn start(
        config: PeerConfig,
        events: mpsc::Sender<PeerEvent<M>>,
    ) -> Result<Transport<M>, TransportError> {
        Bound::bind(config.listen)
            .await?
            .start(config, events)
            .await
    }
}

impl<M> Transport<M> {
    /// The address the peer listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shared.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.shared.config.node_id
    }

    /// This transport's incarnation: random, drawn when it started, announced to every
    /// peer it dials at version 2 and later.
    pub fn incarnation(&self) -> u64 {
        self.inner.shared.incarnation
    }

    /// Queues `msg` for peer `to`. Never blocks. On error the message is dropped; a
    /// full queue also resets the link (see the module documentation).
    pub fn send(&self, to: u64, msg: M) -> Result<(), SendError> {
        let shared = &self.inner.shared;
        let slot = shared.peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        if shared.root.is_cancelled() {
            return Err(SendError::Disconnected);
        }
        let mut link = slot.lock();
        let Some(current) = link.as_ref() else {
            return Err(SendError::Disconnected);
        };
        match current.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(full) = link.take() {
                    full.reset.cancel();
                }
                drop(link);
                tracing::warn!(
                    node = shared.config.node_id,
                    peer = to,
                    queue = shared.config.send_queue_messages,
                    "send queue to peer is full; dropping it and resetting the link"
                );
                Err(SendError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                link.take();
                Err(SendError::Disconnected)
            }
        }
    }

    /// Whether the outbound link to `peer` is up.
    pub fn is_link_up(&self, peer: u64) -> bool {
        self.inner
            .shared
            .peers
            .get(&peer)
            .is_some_and(|slot| slot.lock().is_some())
    }

    /// The peer protocol version the outbound link to `peer` was accepted at (as in its
    /// [`PeerEvent::LinkUp`]), or `None` while the link is down.
    pub fn link_version(&self, peer: u64) -> Option<u16> {
        self.inner
            .shared
            .peers
            .get(&peer)
            .and_then(|slot| slot.lock().as_ref().map(|link| link.version))
    }

    /// The peer protocol version `peer`'s established inbound connection was accepted at
    /// (the version its dialer proposed), or `None` without one. For diagnostics: what
    /// this node may send is decided by [`Transport::link_version`].
    pub fn inbound_version(&self, peer: u64) -> Option<u16> {
        self.inner
            .shared
            .inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .map(|registered| registered.version())
    }

    /// The incarnation `peer`'s established inbound connection announced, or `None`
    /// without one or at version 1. For diagnostics.
    pub fn inbound_incarnation(&self, peer: u64) -> Option<u64> {
        self.inner
            .shared
            .inbound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .and_then(|registered| registered.incarnation())
    }

    /// Messages queued for `peer` and not yet handed to the socket (0 without a link).
    pub fn queued(&self, peer: u64) -> usize {
        self.inner.shared.peers.get(&peer).map_or(0, |slot| {
            slot.lock()
                .as_ref()
                .map_or(0, |link| link.tx.max_capacity() - link.tx.capacity())
        })
    }

    /// Stops the listener, closes every connection and stops every task of this
    /// transport (asynchronously: see [`Transport::closed`]). Idempotent.
    pub fn shutdown(&self) {
        let shared = &self.inner.shared;
        if !shared.root.is_cancelled() {
            tracing::info!(node = shared.config.node_id, "peer transport shutting down");
        }
        shared.root.cancel();
    }

    /// Waits until every task of the transport has stopped (after [`Transport::shutdown`]):
    /// the listener is closed and the address can be bound again.
    pub async fn closed(&self) {
        self.inner.shared.alive.closed().await;
    }
}

/// State shared by the handles and the tasks. Tasks hold this (not [`Inner`]), so the
/// last handle's drop stops them.
struct Shared<M> {
    config: PeerConfig,
    local_addr: SocketAddr,
    /// The cluster's node ids, sorted, this node's included.
    members: Vec<u64>,
    /// This transport's incarnation (see [`PeerIdentity`]).
    incarnation: u64,
    /// Origin of the inbound connections' activity times.
    epoch: Instant,
    /// One slot per configured peer; never changes after start.
    peers: BTreeMap<u64, PeerSlot<M>>,
    events: mpsc::Sender<PeerEvent<M>>,
    /// Cancelled by `shutdown`, by the last handle's drop, or when the node drops the
    /// events receiver.
    root: CancellationToken,
    /// Every task holds a receiver; `closed` waits until none is left.
    alive: watch::Sender<()>,
    /// The established inbound connection of each peer.
    inbound: Mutex<BTreeMap<u64, inbound::Registered>>,
    next_conn_id: AtomicU64,
}

impl<M> Shared<M> {
    /// Spawns a task that [`Transport::closed`] waits for.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let alive = self.alive.subscribe();
        tokio::spawn(async move {
            task.await;
            drop(alive);
        });
    }

    /// Reports an event to the node, waiting for room in the channel. False if the
    /// transport is stopping (then the event is not reported).
    async fn emit(&self, event: PeerEvent<M>) -> bool {
        let sent = tokio::select! {
            biased;
            _ = self.root.cancelled() => return false,
            sent = self.events.send(event) => sent,
        };
        if sent.is_err() {
            self.events_closed();
            return false;
        }
        true
    }

    /// Nobody listens for events any more: the transport has no purpose left.
    fn events_closed(&self) {
        if !self.root.is_cancelled() {
            tracing::info!(
                node = self.config.node_id,
                "peer events receiver dropped; stopping the peer transport"
            );
        }
        self.root.cancel();
    }
}

/// The outbound state of one peer, shared by `send` and the peer's task.
struct PeerSlot<M> {
    /// Some while the link is up.
    link: Mutex<Option<Link<M>>>,
}

impl<M> PeerSlot<M> {
    fn lock(&self) -> MutexGuard<'_, Option<Link<M>>> {
        // Nothing panics while holding the lock; if something did, the slot's value
        // (an optional sender) is still consistent.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A live outbound link.
struct Link<M> {
    /// The bounded queue to the link's writer. The slot holds the only sender, so
    /// taking it out of the slot ends the queue.
    tx: mpsc::Sender<M>,
    /// Cancelled to abandon the link at once (queue overflow); a child of the root.
    reset: CancellationToken,
    /// The peer protocol version the peer accepted the link at.
    version: u16,
}
