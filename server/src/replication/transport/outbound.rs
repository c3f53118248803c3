//! The dialing side: one task per peer that connects, handshakes, writes the peer's
//! queue in order, and reconnects with exponential backoff and jitter until shutdown.
//!
//! # Version negotiation
//!
//! Every attempt after a backoff or after a link ended proposes [`PEER_PROTOCOL_VERSION`].
//! When the peer refuses it as a version it does not speak ([`is_version_refusal`], the
//! words every binary uses), the task retries at once, without backoff, one version
//! lower, down to [`MIN_PEER_PROTOCOL_VERSION`]; below that, the refusal is treated like
//! any other. The lower version is never kept for a later attempt, so a peer restarted
//! with a newer binary is seen at its new version by the next link.
//!
//! # Identity
//!
//! At [`IDENTITY_PEER_VERSION`] and later, once the hello is accepted, the dialer sends
//! its [`PeerIdentity`] (this cluster's member ids and the transport's incarnation) and
//! waits for the second reply. A refusal there (member lists that differ, another live
//! process with this node id) is a misconfiguration: logged at error on every attempt,
//! and retried after the backoff like any other refusal, so the link comes up by itself
//! once the configuration is fixed.

use super::bulk::{encode_off_worker, Bulky};
use super::wire::is_version_refusal;
use super::{
    Link, PeerEvent, PeerHello, PeerHelloReply, PeerIdentity, Shared, HANDSHAKE_MAX_FRAME_BYTES,
    IDENTITY_PEER_VERSION, MIN_PEER_PROTOCOL_VERSION, PEER_PROTOCOL_VERSION,
};
use corral_protocol::{Codec, FrameError};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, FramedWrite};
use tokio_util::sync::CancellationToken;

/// Connects to `peer` at `addr` and keeps a link to it until the transport stops.
pub(super) async fn run_peer<M>(shared: Arc<Shared<M>>, peer: u64, addr: SocketAddr)
where
    M: Serialize + Bulky + Send + 'static,
{
    let node = shared.config.node_id;
    let connect_timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    let mut backoff = Backoff::new(shared.config.backoff_min_ms, shared.config.backoff_max_ms);
    // Report the first failure of a streak at info, the rest at debug: a peer that is
    // down for an hour must not flood the log.
    let mut failures_in_a_row: u64 = 0;
    // The version the next attempt proposes.
    let mut version = PEER_PROTOCOL_VERSION;
    // Whether this streak (since the last link ended) already logged a fallback at info:
    // against an old peer, every streak falls back.
    let mut fallback_logged = false;
    loop {
        let attempt = tokio::select! {
            biased;
            _ = shared.root.cancelled() => return,
            attempt = tokio::time::timeout(connect_timeout, dial(&shared, peer, addr, version)) => attempt,
        };
        let proposed = version;
        version = PEER_PROTOCOL_VERSION;
        let failure = match attempt {
            Ok(Ok(stream)) => {
                backoff.reset();
                failures_in_a_row = 0;
                if !run_link(&shared, peer, addr, stream, proposed).await {
                    return;
                }
                fallback_logged = false;
                None
            }
            Ok(Err(DialError::Refused(reason)))
                if proposed > MIN_PEER_PROTOCOL_VERSION && is_version_refusal(&reason) =>
            {
                version = proposed - 1;
                if fallback_logged {
                    tracing::debug!(node, peer, %addr, %reason, proposed, retry = version, "peer refused our protocol version; retrying with a lower one");
                } else {
                    fallback_logged = true;
                    tracing::info!(node, peer, %addr, %reason, proposed, retry = version, "peer refused our protocol version (an older binary?); retrying with a lower one");
                }
                // At once: at most PEER_PROTOCOL_VERSION - MIN_PEER_PROTOCOL_VERSION
                // attempts in a row skip the backoff.
                continue;
            }
            Ok(Err(DialError::Refused(reason))) => {
                tracing::warn!(node, peer, %addr, %reason, version = proposed, "peer refused our handshake");
                None
            }
            Ok(Err(DialError::IdentityRefused(reason))) => {
                tracing::error!(
                    node,
                    peer,
                    %addr,
                    %reason,
                    members = ?shared.members,
                    incarnation = %format_args!("{:#018x}", shared.incarnation),
                    "peer refused our member list or incarnation: the cluster is misconfigured; retrying with backoff"
                );
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no connection and handshake within {connect_timeout:?}"
            )),
        };
        if let Some(error) = failure {
            failures_in_a_row += 1;
            if failures_in_a_row == 1 {
                tracing::info!(node, peer, %addr, %error, "cannot reach peer; retrying with backoff");
            } else {
                tracing::debug!(node, peer, %addr, %error, attempts = failures_in_a_row, "cannot reach peer");
            }
        }
        let delay = backoff.next_delay(&mut rand::thread_rng());
        tokio::select! {
            biased;
            _ = shared.root.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
enum DialError {
    Io(std::io::Error),
    Frame(FrameError),
    Refused(String),
    /// Refused at the identity step (version 2 and later).
    IdentityRefused(String),
    ClosedInHandshake,
    UnexpectedData,
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Io(e) => write!(f, "{e}"),
            DialError::Frame(e) => write!(f, "handshake failed: {e}"),
            DialError::Refused(reason) | DialError::IdentityRefused(reason) => {
                write!(f, "refused: {reason}")
            }
            DialError::ClosedInHandshake => f.write_str("the peer closed during the handshake"),
            DialError::UnexpectedData => f.write_str("the peer sent data after its handshake"),
        }
    }
}

/// Connects and handshakes proposing `version`; the stream is ready for frames of `M`.
async fn dial<M>(
    shared: &Shared<M>,
    peer: u64,
    addr: SocketAddr,
    version: u16,
) -> Result<TcpStream, DialError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(DialError::Io)?;
    socket.set_keepalive(true).map_err(DialError::Io)?;
    socket.set_nodelay(true).map_err(DialError::Io)?;
    let stream = socket.connect(addr).await.map_err(DialError::Io)?;
    let mut framed = Framed::new(
        stream,
        Codec::<PeerHelloReply, PeerHello>::new(HANDSHAKE_MAX_FRAME_BYTES),
    );
    let hello = PeerHello {
        version,
        ..PeerHello::new(shared.config.cluster_id, shared.config.node_id, peer)
    };
    framed.send(hello).await.map_err(DialError::Frame)?;
    match framed.next().await {
        Some(Ok(PeerHelloReply::Accepted)) => {}
        Some(Ok(PeerHelloReply::Refused { reason })) => return Err(DialError::Refused(reason)),
        Some(Err(e)) => return Err(DialError::Frame(e)),
        None => return Err(DialError::ClosedInHandshake),
    }
    let mut framed = framed.map_codec(|c| c.retype::<PeerHelloReply, PeerIdentity>());
    if version >= IDENTITY_PEER_VERSION {
        // Only now: an acceptor that speaks only version 1 has refused the hello above
        // and never receives this frame (see `PeerIdentity`).
        let identity = PeerIdentity {
            members: shared.members.clone(),
            incarnation: shared.incarnation,
        };
        framed.send(identity).await.map_err(DialError::Frame)?;
        match framed.next().await {
            Some(Ok(PeerHelloReply::Accepted)) => {}
            Some(Ok(PeerHelloReply::Refused { reason })) => {
                return Err(DialError::IdentityRefused(reason))
            }
            Some(Err(e)) => return Err(DialError::Frame(e)),
            None => return Err(DialError::ClosedInHandshake),
        }
    }
    let parts = framed.into_parts();
    if !parts.read_buf.is_empty() {
        return Err(DialError::UnexpectedData);
    }
    Ok(parts.io)
}

/// Runs one established link, accepted at `version`: publishes it in the peer's slot,
/// reports `LinkUp`, writes until the link breaks, clears the slot (dropping whatever is
/// still queued), reports `LinkDown`. False if the transport is stopping.
async fn run_link<M>(
    shared: &Shared<M>,
    peer: u64,
    addr: SocketAddr,
    stream: TcpStream,
    version: u16,
) -> bool
where
    M: Serialize + Bulky + Send + 'static,
{
    let node = shared.config.node_id;
    let Some(slot) = shared.peers.get(&peer) else {
        return false;
    };
    let (tx, rx) = mpsc::channel(shared.config.send_queue_messages);
    let reset = shared.root.child_token();
    // The slot is filled before `LinkUp` is reported, so the node can send as soon as it
    // sees the event (typically what OmniPaxos `reconnected` produces).
    *slot.lock() = Some(Link {
        tx,
        reset: reset.clone(),
        version,
    });
    tracing::info!(node, peer, %addr, version, "peer link up");
    let (reported, end) = tokio::join!(
        shared.emit(PeerEvent::LinkUp { peer, version }),
        pump(stream, rx, &reset, shared.config.max_frame_bytes),
    );
    // Only this task fills the slot, so whatever is there is this link's.
    slot.lock().take();
    if !reported || shared.root.is_cancelled() {
        return false;
    }
    if let LinkEnd::Write(e) = &end {
        if !matches!(e, FrameError::Io(_)) {
            // A local problem (typically a message over max_frame_bytes): resetting the
            // link makes OmniPaxos resend, which helps only if the message changes.
            tracing::error!(node, peer, error = %e, "cannot encode a message for a peer; resetting the link");
        }
    }
    tracing::info!(node, peer, %addr, reason = %end, "peer link down");
    shared.emit(PeerEvent::LinkDown { peer }).await
}

/// Why a link ended.
#[derive(Debug)]
enum LinkEnd {
    /// The queue overflowed (or the transport is stopping).
    Reset,
    /// Writing failed, or a message could not be encoded.
    Write(FrameError),
    /// The peer closed the connection.
    PeerClosed,
    /// Reading the connection (to detect its end) failed.
    Read(std::io::Error),
    /// The peer sent bytes, which it never does after the handshake.
    UnexpectedData,
}

impl fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkEnd::Reset => f.write_str("send queue overflowed"),
            LinkEnd::Write(e) => write!(f, "write failed: {e}"),
            LinkEnd::PeerClosed => f.write_str("the peer closed the connection"),
            LinkEnd::Read(e) => write!(f, "connection failed: {e}"),
            LinkEnd::UnexpectedData => f.write_str("the peer sent unexpected data"),
        }
    }
}

/// Writes the queue to the connection in order, feeding frames while more are queued
/// and flushing when the queue is empty, until the link breaks or is reset. Messages that
/// may be large are encoded on a blocking thread and written straight to the socket.
async fn pump<M: Serialize + Bulky + Send + 'static>(
    stream: TcpStream,
    mut rx: mpsc::Receiver<M>,
    reset: &CancellationToken,
    max_frame_bytes: usize,
) -> LinkEnd {
    let (mut read_half, write_half) = stream.into_split();
    let mut sink = FramedWrite::new(write_half, Codec::<(), M>::new(max_frame_bytes));
    let writer = async {
        // `None`: the slot dropped the only sender, which happens only on a reset.
        while let Some(msg) = rx.recv().await {
            if msg.may_be_bulky() {
                let frame = match encode_off_worker(msg, max_frame_bytes).await {
                    Ok(frame) => frame,
                    Err(e) => return LinkEnd::Write(e),
                };
                if let Err(e) = sink.flush().await {
                    return LinkEnd::Write(e);
                }
                if let Err(e) = sink.get_mut().write_all(&frame).await {
                    return LinkEnd::Write(FrameError::Io(e));
                }
            } else if let Err(e) = sink.feed(msg).await {
                return LinkEnd::Write(e);
            }
            if rx.is_empty() {
                if let Err(e) = sink.flush().await {
                    return LinkEnd::Write(e);
                }
            }
        }
        LinkEnd::Reset
    };
    let end_of_stream = async {
        let mut byte = [0u8; 1];
        match read_half.read(&mut byte).await {
            Ok(0) => LinkEnd::PeerClosed,
            Ok(_) => LinkEnd::UnexpectedData,
            Err(e) => LinkEnd::Read(e),
        }
    };
    tokio::select! {
        biased;
        _ = reset.cancelled() => LinkEnd::Reset,
        end = writer => end,
        end = end_of_stream => end,
    }
}

/// Exponential backoff with "equal jitter": attempt `n` waits a uniform time in
/// `[max(min, c/2), c]` where `c = min(max, min * 2^(n+1))`.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    pub(super) fn new(min_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            min_ms,
            max_ms: max_ms.max(min_ms),
            attempt: 0,
        }
    }

    /// Back to the shortest waits (after a successful connection).
    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next attempt.
    pub(super) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let shift = self.attempt.min(32) + 1;
        let ceiling = self.min_ms.saturating_mul(1u64 << shift).min(self.max_ms);
        let floor = (ceiling / 2).max(self.min_ms).min(ceiling);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(rng.gen_range(floor..=ceiling))
    }
}
