//! The corral node.
//!
//! - [`machine`]: the deterministic replicated state machine (znode tree, sessions, dedup).
//! - [`watches`]: this node's watch registry.
//! - [`tracker`]: session expiry deadlines.
//! - [`node`]: the node core without IO, driven by inputs, producing outputs.
//! - [`wal`], [`snapshot`], [`storage`]: durability.
//! - [`server`]: the IO shell (listener, connections, core task, storage thread).
//! - [`config`]: flags, TOML file and defaults.

pub mod clock;
pub mod config;
pub mod disk;
pub mod faults;
pub mod locks;
pub mod machine;
pub mod node;
pub mod replication;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
pub mod snapshot;
pub mod storage;
pub mod tracker;
pub mod tree;
pub mod wal;
pub mod watches;
