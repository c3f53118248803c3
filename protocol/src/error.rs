//! Error codes carried on the wire, modelled on ZooKeeper's `KeeperException.Code`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What went wrong with a request, as a stable code.
///
/// The names follow ZooKeeper where ZooKeeper has the same condition, so that a
/// ZooKeeper-compatible front end can map them one to one. New codes are only
/// ever appended: the position of a variant is its wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// An internal error on the server; the request may or may not have taken effect.
    SystemError,
    /// The server's state contradicts itself (a bug); the request had no effect.
    RuntimeInconsistency,
    /// The connection to the server was lost before the answer arrived.
    ConnectionLoss,
    /// A frame or message could not be decoded.
    Malformed,
    /// The server does not implement this request.
    Unimplemented,
    /// The operation did not complete in time.
    OperationTimeout,
    /// An argument is out of range or inconsistent with the others.
    BadArguments,
    /// The node does not exist.
    NoNode,
    /// The expected version did not match the node's version.
    BadVersion,
    /// Ephemeral nodes cannot have children.
    NoChildrenForEphemerals,
    /// The node already exists.
    NodeExists,
    /// The node has children and cannot be deleted.
    NotEmpty,
    /// The session has expired; its ephemeral nodes are gone. Open a new session.
    SessionExpired,
    /// The session was resumed on another connection; this connection no longer owns it.
    SessionMoved,
    /// The path is not a valid znode path.
    InvalidPath,
    /// The node's data is larger than the server's `max_data_bytes`.
    DataTooLarge,
    /// A frame was larger than the receiver's `max_frame_bytes`.
    FrameTooLarge,
    /// The peer speaks a different protocol version or is not a corral peer.
    ProtocolMismatch,
    /// A server limit (connections, sessions, watches, pending requests, a response over
    /// the frame limit, the tree's size `max_state_bytes`) was reached.
    LimitExceeded,
    /// No watch matched a remove-watch request.
    NoWatcher,
    /// The request's sequence number is older than the deduplication window of the
    /// session, so the server can no longer tell whether it was applied; or the write
    /// reached the log after a later write of its session, and was not applied (a
    /// session's writes apply in xid order).
    StaleRequest,
    /// The server cannot serve the request now (no quorum, shutting down, behind the
    /// client's last seen zxid, a failed disk); retry elsewhere.
    Unavailable,
    /// The session secret did not match.
    AuthFailed,
    /// A `try` lock request found the lock held (or, for a semaphore, all permits taken).
    LockHeld,
    /// A release (`Unlock`, `Release`) or a `Delete` names a lock queue node that belongs
    /// to another session.
    NotLockOwner,
    /// A `CheckLock` found that the token no longer holds the lock: a guarded write from
    /// a former holder.
    LockNotHeld,
    /// The lease does not exist (expired, revoked, or never granted).
    NoLease,
    /// The lock request would close a cycle of sessions waiting for each other.
    Deadlock,
}

impl ErrorCode {
    /// A sentence a person can act on, describing the code in general terms.
    pub fn description(self) -> &'static str {
        use ErrorCode::*;
        match self {
            SystemError => "internal server error; the request may or may not have been applied",
            RuntimeInconsistency => "server state is inconsistent; the request was not applied",
            ConnectionLoss => {
                "connection to the server was lost; the request may or may not have been applied"
            }
            Malformed => "the message could not be decoded; check client and server versions",
            Unimplemented => "the server does not implement this request (an operation newer than the server)",
            OperationTimeout => "the operation did not complete in time",
            BadArguments => "invalid arguments",
            NoNode => "no node at this path",
            BadVersion => "the node's version differs from the expected version",
            NoChildrenForEphemerals => "ephemeral nodes cannot have children",
            NodeExists => "a node already exists at this path",
            NotEmpty => "the node has children; delete them first",
            SessionExpired => "the session has expired and its ephemeral nodes were deleted",
            SessionMoved => "the session is now attached to another connection",
            InvalidPath => "invalid path",
            DataTooLarge => "data is larger than the server allows (max_data_bytes)",
            FrameTooLarge => "frame is larger than allowed (max_frame_bytes)",
            ProtocolMismatch => "protocol mismatch: not a corral peer or a different version",
            LimitExceeded => "a server limit was reached; retry later or raise the limit",
            NoWatcher => "no such watch is registered",
            StaleRequest => {
                "the request is older than the session's deduplication window (it may or may not have been applied), or reached the log after a later write of its session (not applied)"
            }
            Unavailable => "the server cannot serve requests now; retry on another node",
            AuthFailed => "the session secret does not match",
            LockHeld => "the lock is held by someone else",
            NotLockOwner => "the lock node belongs to another session",
            LockNotHeld => "the fencing token no longer holds the lock",
            NoLease => "no such lease: it expired, was revoked, or never existed",
            Deadlock => "waiting for this lock would deadlock",
        }
    }

    /// Whether a request that failed with this code is worth retrying unchanged
    /// (possibly on another server).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::ConnectionLoss | ErrorCode::Unavailable | ErrorCode::OperationTimeout
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self)
    }
}

/// An error as sent on the wire: a code plus a specific message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorInfo {
    /// The stable code.
    pub code: ErrorCode,
    /// A specific message, e.g. naming the path and the expected version.
    pub message: String,
    /// For a failed `multi`, the index of the operation that failed.
    pub op_index: Option<u32>,
}

impl ErrorInfo {
    /// An error with a specific message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorInfo {
            code,
            message: message.into(),
            op_index: None,
        }
    }

    /// An error whose message is the code's general description.
    pub fn from_code(code: ErrorCode) -> Self {
        ErrorInfo::new(code, code.description())
    }

    /// The same error, marked as caused by operation `index` of a `multi`.
    pub fn at_op(mut self, index: usize) -> Self {
        self.op_index = Some(u32::try_from(index).unwrap_or(u32::MAX));
        self
    }
}
