//! Async Rust client for **corral**, a ZooKeeper-style coordination service.
//!
//! A [`Client`] holds a session with a corral cluster: a lease that the client keeps
//! alive in the background and that the servers end when the client goes silent for
//! longer than its TTL. Ephemeral nodes live as long as their session, which is what
//! locks, leader election and service registration are built from.
//!
//! # Quick start
//!
//! ```no_run
//! use corral_client::{Client, ClientConfig, CreateMode, ErrorCode};
//!
//! #[tokio::main]
//! async fn main() -> corral_client::Result<()> {
//!     let client = Client::connect(ClientConfig::new(["127.0.0.1:2281"])).await?;
//!
//!     // Write, read, compare-and-set.
//!     match client.create("/app", b"v1".to_vec(), CreateMode::Persistent).await {
//!         Ok(_) => {}
//!         Err(e) if e.is(ErrorCode::NodeExists) => {}
//!         Err(e) => return Err(e),
//!     }
//!     let (data, stat) = client.get_data("/app").await?;
//!     println!("{}", String::from_utf8_lossy(&data));
//!     client.set_data("/app", b"v2".to_vec(), Some(stat.version)).await?;
//!
//!     // Be told about the next change.
//!     let (_data, _stat, watcher) = client.get_data_watch("/app").await?;
//!     tokio::spawn(async move {
//!         if let Ok(event) = watcher.await {
//!             println!("{:?} on {}", event.kind, event.path);
//!         }
//!     });
//!
//!     // An ephemeral node disappears with the session.
//!     client.create("/app/alive", Vec::new(), CreateMode::Ephemeral).await?;
//!     client.close().await?;
//!     Ok(())
//! }
//! ```
//!
//! # How it behaves
//!
//! - **Pipelining.** Every clone of a `Client` shares one connection, owned by a
//!   background task; requests from many tasks are in flight at once (up to
//!   `max_in_flight`) and answered in order.
//! - **Reconnects.** When a connection drops the client resumes the session on the next
//!   server, resends unanswered requests with their original request ids (the server
//!   applies a retried write once) and re-registers its watches; the server fires at once
//!   the one-shot watches whose nodes changed meanwhile, and the stream of each persistent
//!   watch reads [`Error::WatchResumed`] (what changed meanwhile fired nothing there, as
//!   in ZooKeeper). Watch [`state_events`](Client::state_events).
//! - **Failures.** Calls time out after `request_timeout` ([`Error::Timeout`]); calls that
//!   cannot be resent while the session may still be alive fail with
//!   [`Error::ConnectionLoss`]; once the session has expired every call fails with
//!   [`Error::SessionExpired`] and the application builds a new `Client`.
//! - **Watches.** One-shot watches are futures ([`Watcher`]); persistent watches and
//!   [`Client::watch_events`] are bounded streams ([`WatchStream`]) that tell a slow
//!   reader how many events it lost instead of blocking the client.
//!
//! The `corralctl` binary of this crate is a command-line client built on this API.
//!
//! # Locks
//!
//! [`Client::lock`] names a lock and its [`LockOptions`]; [`LockBuilder::acquire`] waits
//! in the server's fair queue, [`try_acquire`](LockBuilder::try_acquire) never waits,
//! [`acquire_timeout`](LockBuilder::acquire_timeout) gives up (and leaves the queue)
//! after a while. Exclusive, read-write and semaphore locks are supported.
//!
//! ```no_run
//! use corral_client::{Client, ClientConfig, LockOptions};
//! use std::time::Duration;
//!
//! # async fn demo() -> corral_client::Result<()> {
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:2281"])).await?;
//! let options = LockOptions::default().with_ttl(Duration::from_secs(5));
//! let guard = client.lock("/locks/report", options).acquire().await?;
//! // Guard writes to corral with the fencing token: a former holder cannot write.
//! client
//!     .transaction()
//!     .check_lock(guard.name(), guard.token())
//!     .set_data("/report", b"done".to_vec(), None)
//!     .commit()
//!     .await?;
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! - **Held under what.** A lock is held under the session by default, or under a
//!   [`Lease`] with its own TTL (`LockOptions::ttl` creates one for the lock, renewed
//!   every third of the TTL): a holder whose renewals stop loses the lock after that TTL
//!   even while its session lives.
//! - **The client's view of its lease.** The client counts a lease (or the session) as
//!   certainly alive only until its *safe deadline*: the send time of the last
//!   acknowledged renewal, plus the TTL, minus a margin for clock-rate differences
//!   (`max(ttl / 10, 50 ms)`). [`LockGuard::lost`] resolves at that deadline if renewals
//!   stop being acknowledged (also while disconnected), on a loss the server reports, or
//!   when the session ends, whichever comes first: before the server can grant the lock
//!   to anyone else.
//! - **Waiting is not holding.** A grant that arrives after the lease's (or session's)
//!   safe deadline passed is not reported as held: the acquire fails with
//!   [`Error::LockLost`] and the node is released.
//! - **Fencing.** Every grant has a fencing token ([`LockGuard::token`]), strictly
//!   increasing across holders. Check it on every guarded write: in a multi for corral
//!   itself ([`LockGuard::check_op`], [`Transaction::check_lock`]), with a
//!   [`FencingValidator`] for outside resources.
//! - **Several locks at once.** [`Client::lock_many`] acquires a set of locks all or
//!   nothing on the server ([`MultiLockGuard`], one fencing token per lock; releasing
//!   releases all). A lock request whose wait would close a cycle of sessions waiting
//!   for each other fails with [`Error::Deadlock`], naming the cycle
//!   ([`Error::deadlock_cycle`]); the others go on once the refused session releases
//!   what it holds.
//! - **Cleanup.** Dropping a guard releases the lock, dropping a pending acquire (or
//!   an acquire giving up at its timeout) leaves the queue, dropping a [`Lease`] (or a
//!   guard with a dedicated one) revokes it, all in the background; such requests
//!   (and a double barrier participant's delete of its node when it gives up) are resent
//!   until answered, sent again after a growing pause (up to `max_backoff`) while the
//!   server answers them with a transient error such as `Unavailable`, for as long as
//!   the session lives, and a lock request is never orphaned by a lost answer.

#![warn(missing_docs)]

pub mod admin;
mod backoff;
mod children;
mod client;
mod config;
mod connection;
mod detached_retry;
mod error;
mod fencing;
mod lease;
mod lock;
mod lock_pages;
mod lock_registry;
mod multi;
mod multi_lock;
mod pending;
pub mod recipes;
mod registry;
mod state;
mod transport;
mod watcher;

pub use children::{ChildrenPage, ChildrenPages};
pub use client::{Client, Created};
pub use config::{ClientConfig, SERVER_DEDUP_WINDOW};
pub use error::{Deadlock, Error, Result};
pub use fencing::{FencingError, FencingValidator};
pub use lease::{Lease, LeaseOptions, Renewal};
pub use lock::{
    check_lock, LockBuilder, LockGuard, LockLoss, LockOptions, LockStats, ACQUIRE_ANSWER_GRACE,
};
pub use lock_pages::{LocksPage, LocksPages};
pub use multi::Transaction;
pub use multi_lock::{MultiLockBuilder, MultiLockGuard};
pub use state::{ConnectionState, StateStream};
pub use watcher::{WatchStream, Watcher};

pub use corral_protocol::deadlock::WaitStep;
/// Path helpers (`validate_path`, `parent`, `name`, `join`) from the protocol crate.
pub use corral_protocol::path;
pub use corral_protocol::{
    AddWatchMode, CreateMode, CreateRequest, ErrorCode, ErrorInfo, EventKind, LockEntry, LockKind,
    LockState, LockedNode, MultiOp, MultiResult, Stat, WatchEvent, WatcherKind,
};
