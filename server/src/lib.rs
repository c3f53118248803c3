//! The corral node.
//!
//! - [`machine`]: the deterministic replicated state machine (znode tree, sessions, dedup).
//! - [`watches`]: this node's watch registry.
//! - [`tracker`]: session expiry deadlines.
//! - [`node`]: the node core without IO, driven by inputs, producing outputs.
//! - [`wal`], [`snapshot`], [`storage`]: durability.
//! - [`server`]: the IO shell (listener, connections, core task, storage thread).
//! - [`config`]: flags, TOML file and defaults.
//! - [`admin`], [`metrics`], [`status`], [`backup`]: operations (admin HTTP endpoint,
//!   Prometheus metrics, the status report, backups and restore).

pub mod admin;
pub mod backup;
pub mod clock;
pub mod compaction;
pub mod config;
pub mod deadlock;
pub mod disk;
pub mod faults;
pub mod free;
pub mod identity;
pub mod locks;
pub mod machine;
pub mod metrics;
pub mod node;
pub mod replication;
pub mod server;
#[cfg(feature = "sim")]
pub mod sim;
pub mod snapshot;
pub mod stall;
pub mod status;
pub mod storage;
pub mod tracker;
pub mod tree;
pub mod wal;
pub mod watches;
