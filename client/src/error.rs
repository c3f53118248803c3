//! The client's error type.

use crate::lock::LockLoss;
use corral_protocol::deadlock::{parse_cycle, WaitStep};
use corral_protocol::{ErrorCode, ErrorInfo, FrameError};
use std::sync::Arc;
use std::time::Duration;

/// A `Result` whose error is the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a client call can fail with.
///
/// Match on the variant for conditions the client itself detects, and on
/// [`Error::code`] for conditions the server reports:
///
/// ```
/// use corral_client::{Error, ErrorCode, ErrorInfo};
///
/// let err = Error::from(ErrorInfo::from_code(ErrorCode::NoNode));
/// match err.code() {
///     Some(ErrorCode::NoNode) => println!("nothing there"),
///     Some(ErrorCode::NodeExists) => println!("already there"),
///     _ if err.is_retryable() => println!("try again"),
///     _ => println!("giving up: {err}"),
/// }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error (no node, bad version, node exists, ...).
    #[error("{0}")]
    Server(ErrorInfo),
    /// The connection was lost and could not be re-established in time to resend the
    /// request; a write may or may not have been applied.
    #[error("connection lost; the request may or may not have been applied")]
    ConnectionLoss,
    /// The session expired (its ephemeral nodes are gone). Every later call on this
    /// client fails the same way: make a new [`Client`](crate::Client).
    #[error("session expired; create a new client")]
    SessionExpired,
    /// The request did not complete within `request_timeout`; a write may or may not
    /// have been applied.
    #[error("request timed out after {0:?}; it may or may not have been applied")]
    Timeout(Duration),
    /// The client was closed with [`Client::close`](crate::Client::close) (or the
    /// session was taken over by another connection).
    #[error("client is closed")]
    Closed,
    /// A socket error while connecting.
    #[error("io: {0}")]
    Io(Arc<std::io::Error>),
    /// A frame could not be encoded or decoded, or the server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The path was rejected client-side by
    /// [`validate_path`](corral_protocol::path::validate_path) before anything was sent.
    #[error("{0}")]
    InvalidPath(ErrorInfo),
    /// The configuration is unusable (no address, a zero limit, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A watch event stream fell behind and this many events were dropped for it.
    #[error("watch stream lagged: {skipped} events were dropped")]
    Lagged {
        /// Number of events lost.
        skipped: u64,
    },
    /// The connection was lost and this persistent watch was registered again on a new
    /// one (ZooKeeper's `setWatches`): changes with a zxid after `since_zxid` (that of
    /// the last response before the connection was lost: events that came after it may
    /// be among these) and up to `until_zxid` (the server's when the watch was back)
    /// may have fired no event on it; every later change does. Re-read the state you
    /// watch. The stream goes on.
    #[error(
        "watch registered again after a reconnect: changes after zxid {since_zxid} up to \
         {until_zxid} may have fired no event"
    )]
    WatchResumed {
        /// The zxid of the last response before the connection was lost.
        since_zxid: u64,
        /// The server's zxid when it answered the re-registration.
        until_zxid: u64,
    },
    /// The watch was removed with [`Client::remove_watches`](crate::Client::remove_watches)
    /// before it fired.
    #[error("the watch was removed")]
    WatchRemoved,
    /// A lock request was lost while it waited, or as it was granted, for this reason
    /// (its lease expired, or its lease's or session's safe deadline had passed, so the
    /// grant could not be trusted); or a held lock was found lost. Acquiring again may
    /// succeed.
    #[error("lock lost: {0}")]
    LockLost(LockLoss),
    /// The lease is lost: its safe deadline passed without an acknowledged renewal, the
    /// server no longer has it, or it was revoked. Grant a new one.
    #[error("lease lost: it expired, was revoked, or its safe deadline passed")]
    LeaseLost,
    /// A lock request was refused because waiting would have closed a cycle of
    /// sessions waiting for each other (server code `Deadlock`). The request left no
    /// trace; the locks this session already holds are still held: release some of them
    /// (or all) before trying again, or the same cycle forms again.
    #[error("{}", .0.info)]
    Deadlock(Box<Deadlock>),
}

/// What [`Error::Deadlock`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    /// The cycle, starting with this session's refused wait; empty if the server's
    /// message did not name one.
    pub cycle: Vec<WaitStep>,
    /// The server's error (code `Deadlock`).
    pub info: ErrorInfo,
}

impl Error {
    /// The protocol error code this error corresponds to, if any.
    ///
    /// Server errors give their own code; `ConnectionLoss`, `SessionExpired`, `Timeout`
    /// and `InvalidPath` give the matching code, `LockLost` gives `LockNotHeld` and
    /// `LeaseLost` gives `NoLease`; the others give `None`.
    ///
    /// ```
    /// use corral_client::{Error, ErrorCode};
    /// assert_eq!(Error::SessionExpired.code(), Some(ErrorCode::SessionExpired));
    /// assert_eq!(Error::Closed.code(), None);
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(info) | Error::InvalidPath(info) => Some(info.code),
            Error::Deadlock(d) => Some(d.info.code),
            Error::ConnectionLoss => Some(ErrorCode::ConnectionLoss),
            Error::SessionExpired => Some(ErrorCode::SessionExpired),
            Error::Timeout(_) => Some(ErrorCode::OperationTimeout),
            Error::LockLost(_) => Some(ErrorCode::LockNotHeld),
            Error::LeaseLost => Some(ErrorCode::NoLease),
            _ => None,
        }
    }

    /// Whether the same call may succeed if made again (on this client: it reconnects
    /// by itself). Retrying a write that failed this way may apply it twice unless it is
    /// idempotent (a conditional write, or a create that may fail with `NodeExists`).
    ///
    /// ```
    /// use corral_client::Error;
    /// assert!(Error::ConnectionLoss.is_retryable());
    /// assert!(!Error::SessionExpired.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::ConnectionLoss | Error::Timeout(_) | Error::Io(_) | Error::LockLost(_) => true,
            Error::Server(info) => info.code.is_retryable(),
            _ => false,
        }
    }

    /// Whether the error is the server's answer with this code.
    ///
    /// ```
    /// use corral_client::{Error, ErrorCode, ErrorInfo};
    /// let err = Error::from(ErrorInfo::from_code(ErrorCode::BadVersion));
    /// assert!(err.is(ErrorCode::BadVersion));
    /// ```
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code() == Some(code)
    }

    /// The wait-for cycle of a [`Error::Deadlock`], if this is one.
    ///
    /// ```
    /// use corral_client::{Error, ErrorCode, ErrorInfo};
    /// let info = ErrorInfo::new(
    ///     ErrorCode::Deadlock,
    ///     "waiting on /a would deadlock: a cycle of 2 sessions\n\
    ///      session 0x5 waits for session 0x7 on /a\n\
    ///      session 0x7 waits for session 0x5 on /b",
    /// );
    /// let err = Error::from(info);
    /// let cycle = err.deadlock_cycle().expect("a deadlock");
    /// assert_eq!((cycle[0].session, cycle[0].waits_for, cycle[1].lock.as_str()), (5, 7, "/b"));
    /// ```
    pub fn deadlock_cycle(&self) -> Option<&[WaitStep]> {
        match self {
            Error::Deadlock(d) => Some(&d.cycle),
            _ => None,
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Error::Protocol(message.into())
    }
}

impl From<ErrorInfo> for Error {
    /// Maps a wire error to the client error, turning the codes the client handles
    /// itself (`SessionExpired`, `ConnectionLoss`) into their own variants.
    fn from(info: ErrorInfo) -> Self {
        match info.code {
            ErrorCode::SessionExpired => Error::SessionExpired,
            ErrorCode::ConnectionLoss => Error::ConnectionLoss,
            ErrorCode::Deadlock => Error::Deadlock(Box::new(Deadlock {
                cycle: parse_cycle(&info.message).unwrap_or_default(),
                info,
            })),
            _ => Error::Server(info),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(Arc::new(err))
    }
}

impl From<FrameError> for Error {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::Io(io) => Error::from(io),
            FrameError::TooLarge { len, max } => Error::Server(ErrorInfo::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {len} bytes exceeds max_frame_bytes = {max}"),
            )),
            other => Error::Protocol(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_map_to_variants() {
        assert!(matches!(
            Error::from(ErrorInfo::from_code(ErrorCode::SessionExpired)),
            Error::SessionExpired
        ));
        assert!(matches!(
            Error::from(ErrorInfo::from_code(ErrorCode::ConnectionLoss)),
            Error::ConnectionLoss
        ));
        let no_node = Error::from(ErrorInfo::new(ErrorCode::NoNode, "/a"));
        assert!(matches!(&no_node, Error::Server(i) if i.message == "/a"));
        assert_eq!(no_node.code(), Some(ErrorCode::NoNode));
        assert!(!no_node.is_retryable());
    }

    #[test]
    fn retryable() {
        assert!(Error::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(Error::from(ErrorInfo::from_code(ErrorCode::Unavailable)).is_retryable());
        assert!(Error::from(std::io::Error::other("x")).is_retryable());
        for e in [
            Error::SessionExpired,
            Error::Closed,
            Error::WatchRemoved,
            Error::Lagged { skipped: 1 },
            Error::WatchResumed {
                since_zxid: 1,
                until_zxid: 2,
            },
        ] {
            assert!(!e.is_retryable(), "{e}");
        }
    }

    #[test]
    fn lock_errors() {
        let lost = Error::LockLost(LockLoss::DeadlinePassed);
        assert!(lost.is(ErrorCode::LockNotHeld) && lost.is_retryable());
        assert!(Error::LeaseLost.is(ErrorCode::NoLease) && !Error::LeaseLost.is_retryable());
    }

    #[test]
    fn frame_errors() {
        let e = Error::from(FrameError::TooLarge { len: 10, max: 5 });
        assert_eq!(e.code(), Some(ErrorCode::FrameTooLarge));
        let e = Error::from(FrameError::Malformed("bad".into()));
        assert!(matches!(e, Error::Protocol(_)));
    }
}
