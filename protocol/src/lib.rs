//! The corral wire protocol.
//!
//! A client opens a TCP connection and exchanges length-prefixed frames with the server
//! (see [`frame`]). The first client frame is a [`Hello`] (magic number, protocol
//! version, session to open or resume), answered by a [`HelloReply`]. After that the
//! client sends [`ClientMessage`]s and the server sends [`ServerMessage`]s: responses
//! (matched to requests by `xid`, so many requests can be in flight on one connection),
//! watch events, and a final `Goodbye` when the server closes the connection.
//!
//! This crate does no IO; `docs/PROTOCOL.md` specifies the bytes.

pub mod deadlock;
pub mod error;
pub mod frame;
pub mod incoming;
pub mod message;
pub mod op;
pub mod path;
pub mod requests;
pub mod status;

pub use error::{ErrorCode, ErrorInfo};
pub use frame::{Codec, FrameError};
pub use incoming::{Incoming, OversizedResponse, ServerDecoder};
pub use message::{
    ClientMessage, EventKind, Hello, HelloReply, LockEvent, ServerMessage, SessionGranted,
    SessionRequest, WatchEvent, DEFAULT_MAX_FRAME_BYTES, MAGIC, PROTOCOL_VERSION,
};
pub use op::{
    AddWatchMode, CreateMode, CreateRequest, LockEntry, LockKind, LockRequest, LockState,
    LockedNode, MultiLockItem, MultiLockRequest, MultiOp, MultiResult, Op, OpResult, Request,
    Response, Stat, WatchSet, WatcherKind, CHILDREN_PAGE_HEADROOM_BYTES, MAX_LOCKS_PER_MULTI_LOCK,
    OP_COUNT,
};
pub use requests::{IncomingRequest, RequestDecoder};
pub use status::{MemberStatus, Role, ServerStatus};
