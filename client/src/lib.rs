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
//!   the watches whose nodes changed meanwhile. Watch [`state_events`](Client::state_events).
//! - **Failures.** Calls time out after `request_timeout` ([`Error::Timeout`]); calls that
//!   cannot be resent while the session may still be alive fail with
//!   [`Error::ConnectionLoss`]; once the session has expired every call fails with
//!   [`Error::SessionExpired`] and the application builds a new `Client`.
//! - **Watches.** One-shot watches are futures ([`Watcher`]); persistent watches and
//!   [`Client::watch_events`] are bounded streams ([`WatchStream`]) that tell a slow
//!   reader how many events it lost instead of blocking the client.
//!
//! The `corralctl` binary of this crate is a command-line client built on this API.

#![warn(missing_docs)]

mod backoff;
mod client;
mod config;
mod connection;
mod error;
mod multi;
mod pending;
mod registry;
mod state;
mod transport;
mod watcher;

pub use client::{Client, Created};
pub use config::{ClientConfig, SERVER_DEDUP_WINDOW};
pub use error::{Error, Result};
pub use multi::Transaction;
pub use state::{ConnectionState, StateStream};
pub use watcher::{WatchStream, Watcher};

/// Path helpers (`validate_path`, `parent`, `name`, `join`) from the protocol crate.
pub use corral_protocol::path;
pub use corral_protocol::{
    AddWatchMode, CreateMode, CreateRequest, ErrorCode, ErrorInfo, EventKind, MultiOp, MultiResult,
    Stat, WatchEvent, WatcherKind,
};
