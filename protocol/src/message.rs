//! The handshake and the top-level messages exchanged on a client connection.

use crate::error::ErrorInfo;
use crate::op::{Request, Response};
use serde::{Deserialize, Serialize};

/// The first field of every `Hello`: the u32 0x4352524C ("CRRL" read big-endian). Like
/// every integer on the wire it is little-endian there: bytes `4c 52 52 43`.
pub const MAGIC: u32 = 0x4352_524C;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Default limit on the payload of one frame: 1 MiB of data plus 64 KiB of headroom for
/// the path and the envelope.
pub const DEFAULT_MAX_FRAME_BYTES: usize = (1 << 20) + (64 << 10);

/// Which session a connection wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionRequest {
    /// Open a new session with this time-to-live (the server clamps it to its limits).
    New {
        /// Requested TTL in milliseconds.
        ttl_ms: u64,
    },
    /// Attach an existing, unexpired session to this connection.
    Resume {
        /// The session id from [`SessionGranted`].
        session_id: u64,
        /// The session secret from [`SessionGranted`].
        secret: u64,
    },
}

/// The first frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must be [`MAGIC`].
    pub magic: u32,
    /// The client's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// New or resumed session.
    pub session: SessionRequest,
    /// The highest zxid the client has seen; the server refuses to serve a client whose
    /// view is ahead of its own (it answers `Unavailable`, and the client tries another
    /// server), so a client never goes back in time.
    pub last_zxid_seen: u64,
}

impl Hello {
    /// A hello for this crate's protocol version.
    pub fn new(session: SessionRequest, last_zxid_seen: u64) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            session,
            last_zxid_seen,
        }
    }
}

/// The session the server attached to the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGranted {
    /// Session id (never 0).
    pub session_id: u64,
    /// Secret needed to resume the session on another connection.
    pub secret: u64,
    /// The TTL the server granted (after clamping), in milliseconds.
    pub ttl_ms: u64,
    /// The id of the server node that answered.
    pub node_id: u64,
    /// The zxid of the server's applied state.
    pub zxid: u64,
    /// The largest frame the server accepts.
    pub max_frame_bytes: u64,
    /// The next `xid` the server expects at least (for a resumed session: one past the
    /// highest write sequence number it applied).
    pub next_xid: u64,
}

/// The server's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The connection is attached to a session.
    Accepted(SessionGranted),
    /// The handshake failed; the server closes the connection after this frame.
    Refused(ErrorInfo),
}

/// Every frame a client sends after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// A request.
    Request(Request),
}

/// Kinds of watch events, as in ZooKeeper's `Watcher.Event.EventType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A node was created.
    NodeCreated,
    /// A node was deleted.
    NodeDeleted,
    /// A node's data changed.
    NodeDataChanged,
    /// A node's list of children changed.
    NodeChildrenChanged,
}

/// A watch notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventKind,
    /// The node it happened to.
    pub path: String,
    /// The zxid of the transaction that caused it.
    pub zxid: u64,
}

/// A lock grant or loss pushed by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEvent {
    /// The lock's name.
    pub lock: String,
    /// The queue node.
    pub node: String,
    /// The fencing token.
    pub token: u64,
    /// The zxid of the transaction that granted or released it.
    pub zxid: u64,
}

/// Every frame the server sends after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The answer to a request.
    Response(Response),
    /// A watch fired. Always sent before any response carrying a later zxid.
    Watch(WatchEvent),
    /// The server is closing the connection for this reason (malformed frame, session
    /// expired, shutdown); no more frames follow.
    Goodbye(ErrorInfo),
    /// A queued lock request of this session was granted. Sent before any response with
    /// a later zxid.
    LockGranted(LockEvent),
    /// A lock request of this session (held or queued) was removed because its lease
    /// expired: the lock is lost. (If the session itself expired, the connection ends
    /// with `Goodbye(SessionExpired)` instead.)
    LockLost(LockEvent),
}
