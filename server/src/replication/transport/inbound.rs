//! The accepting side: the peer listener, the acceptor's half of the handshake, and one
//! reader per peer that hands decoded messages to the node.

use super::bulk::{decode_off_worker, Inbound, PeerFrames};
use super::{
    PeerEvent, PeerHello, PeerHelloReply, Shared, ACCEPT_ERROR_BACKOFF, HANDSHAKE_MAX_FRAME_BYTES,
    HANDSHAKE_SLOTS, REFUSAL_TIMEOUT,
};
use corral_protocol::{Codec, FrameError};
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// The established inbound connection of one peer, in [`Shared::inbound`].
#[derive(Debug)]
pub(super) struct Registered {
    conn_id: u64,
    /// The peer protocol version the connection was accepted at (its dialer's proposal).
    version: u16,
    /// Closes the connection.
    cancel: CancellationToken,
    /// Completes (with an error) when the connection's task no longer delivers messages.
    finished: oneshot::Receiver<()>,
}

impl Registered {
    /// The peer protocol version the connection was accepted at.
    pub(super) fn version(&self) -> u16 {
        self.version
    }
}

/// Accepts peer connections until the transport stops; drops the listener on return.
pub(super) async fn accept_loop<M>(shared: Arc<Shared<M>>, listener: TcpListener)
where
    M: DeserializeOwned + Send + 'static,
{
    let node = shared.config.node_id;
    let slots = Arc::new(Semaphore::new(HANDSHAKE_SLOTS));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.root.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => match slots.clone().try_acquire_owned() {
                Ok(permit) => shared.spawn(serve(shared.clone(), stream, addr, permit)),
                Err(_) => {
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

type HandshakeFramed = Framed<TcpStream, Codec<PeerHello, PeerHelloReply>>;

/// One accepted connection: handshake, replace the peer's older connection, read.
async fn serve<M>(
    shared: Arc<Shared<M>>,
    stream: TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
) where
    M: DeserializeOwned + Send + 'static,
{
    let node = shared.config.node_id;
    let handshake_timeout = Duration::from_millis(shared.config.connect_timeout_ms);
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(
        stream,
        Codec::<PeerHello, PeerHelloReply>::new(HANDSHAKE_MAX_FRAME_BYTES),
    );
    let first = match bounded(&shared.root, handshake_timeout, framed.next()).await {
        Bounded::Cancelled => return,
        Bounded::TimedOut => None,
        Bounded::Done(first) => Some(first),
    };
    let hello = match first {
        Some(Some(Ok(hello))) => hello,
        Some(Some(Err(e))) => {
            let reason = format!("malformed handshake: {e}");
            return refuse(&shared, &mut framed, addr, None, reason).await;
        }
        Some(None) => {
            tracing::debug!(node, %addr, "peer connection closed before its handshake");
            return;
        }
        None => {
            let reason = format!("no handshake within {handshake_timeout:?}");
            return refuse(&shared, &mut framed, addr, None, reason).await;
        }
    };
    let check = hello.check(shared.config.cluster_id, node, |id| {
        shared.peers.contains_key(&id)
    });
    if let Err(reason) = check {
        return refuse(&shared, &mut framed, addr, Some(hello.from), reason).await;
    }
    let peer = hello.from;
    let version = hello.version;
    match bounded(
        &shared.root,
        handshake_timeout,
        framed.send(PeerHelloReply::Accepted),
    )
    .await
    {
        Bounded::Done(Ok(())) => {}
        Bounded::Cancelled => return,
        Bounded::TimedOut => {
            tracing::info!(node, peer, %addr, "peer did not read its handshake reply");
            return;
        }
        Bounded::Done(Err(e)) => {
            tracing::info!(node, peer, %addr, error = %e, "peer connection failed in handshake");
            return;
        }
    }

    // Register as the peer's connection. An older one is closed and waited for, so its
    // last messages are delivered (or abandoned) before this one's first.
    let cancel = shared.root.child_token();
    let (finished_tx, finished_rx) = oneshot::channel::<()>();
    let registration = Registration {
        shared: &shared,
        peer,
        conn_id: shared.next_conn_id.fetch_add(1, Ordering::Relaxed),
        _finished: finished_tx,
    };
    let older = shared
        .inbound
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            peer,
            Registered {
                conn_id: registration.conn_id,
                version,
                cancel: cancel.clone(),
                finished: finished_rx,
            },
        );
    if let Some(older) = older {
        tracing::info!(
            node,
            peer,
            %addr,
            "a new connection from the peer replaces its older one"
        );
        older.cancel.cancel();
        // Prompt: every wait of a connection task ends on its cancellation.
        let _ = older.finished.await;
        if cancel.is_cancelled() {
            return;
        }
    }
    drop(permit);

    tracing::info!(node, peer, %addr, version, "inbound peer connection up");
    let max = shared.config.max_frame_bytes;
    let frames = framed.map_codec(|_| PeerFrames::<M>::new(max));
    match read(&shared, peer, frames, &cancel).await {
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

/// Unregisters an inbound connection (unless a newer one replaced it) and then signals
/// that it is finished, however its task ends.
struct Registration<'a, M> {
    shared: &'a Shared<M>,
    peer: u64,
    conn_id: u64,
    /// Dropped after the unregistration (fields drop after `drop` runs).
    _finished: oneshot::Sender<()>,
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
) -> ReadEnd {
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => return ReadEnd::Cancelled,
            next = frames.next() => next,
        };
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

/// Logs a refused handshake and tells the dialer why, then the connection is closed.
async fn refuse<M>(
    shared: &Shared<M>,
    framed: &mut HandshakeFramed,
    addr: SocketAddr,
    claimed_from: Option<u64>,
    reason: String,
) {
    tracing::warn!(
        node = shared.config.node_id,
        %addr,
        claimed_from,
        %reason,
        "peer handshake refused"
    );
    let reply = PeerHelloReply::Refused { reason };
    let _ = bounded(&shared.root, REFUSAL_TIMEOUT, framed.send(reply)).await;
}

/// The outcome of [`bounded`].
enum Bounded<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

/// Runs `fut` for at most `limit`, and not past the cancellation of `cancel`.
async fn bounded<T>(
    cancel: &CancellationToken,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Bounded<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Bounded::Cancelled,
        r = tokio::time::timeout(limit, fut) => match r {
            Ok(v) => Bounded::Done(v),
            Err(_) => Bounded::TimedOut,
        },
    }
}
