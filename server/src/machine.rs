//! The replicated state machine: znode tree, sessions, and the deduplication table.
//!
//! Deterministic: `apply` is a pure function of the current state, the entry and its
//! zxid. No clock, no IO, no randomness; time arrives as `Entry::wall_ms`, stamped by
//! the node that proposed the entry. Ordered maps wherever iteration order can reach
//! replicated state.

use corral_protocol::{EventKind, ErrorInfo, Op, OpResult, Stat};
use serde::{Deserialize, Serialize};

/// Limits that are part of the replicated behaviour (every node must use the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineLimits {
    /// Largest data of one node, in bytes.
    pub max_data_bytes: usize,
    /// How many recent write results each session remembers for deduplication.
    pub dedup_window: usize,
}

impl Default for MachineLimits {
    fn default() -> Self {
        MachineLimits {
            max_data_bytes: 1 << 20,
            dedup_window: 1024,
        }
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Wall-clock time stamped by the proposer, milliseconds since the Unix epoch
    /// (ctime/mtime of nodes created or changed by this entry).
    pub wall_ms: i64,
    /// What the entry does.
    pub body: EntryBody,
}

/// What a log entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    /// Open a session; its id is the zxid of this entry.
    OpenSession { secret: u64, ttl_ms: u64 },
    /// Close a session (client asked): delete its ephemerals.
    CloseSession { session_id: u64 },
    /// Expire sessions (decided by the leader): delete their ephemerals, in this order.
    ExpireSessions { session_ids: Vec<u64> },
    /// A client write (`Op::is_write`, except `CloseSession`), deduplicated by (session, xid).
    Write { session_id: u64, xid: u64, op: Op },
    /// Does nothing (barriers for `sync`, leader no-ops).
    Noop,
}

/// A change to the tree, in the order it happened; watches are fired from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: EventKind,
}

/// What applying one entry did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The entry's zxid.
    pub zxid: u64,
    /// For `Write` and `CloseSession`: the result for the client; for `OpenSession`:
    /// `Ok(OpResult::Pong)` if opened. Duplicates (a retried xid) return the cached result.
    pub result: Option<Result<OpResult, ErrorInfo>>,
    /// Tree changes in order (empty for duplicates and failures).
    pub changes: Vec<Change>,
    /// Sessions that ceased to exist in this entry (closed or expired).
    pub ended_sessions: Vec<u64>,
}

/// A session as the replicated state knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: u64,
    pub secret: u64,
    pub ttl_ms: u64,
}

/// The replicated state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateMachine {}

impl StateMachine {
    /// An empty tree holding only the root `/`, with no sessions, at zxid 0.
    pub fn new(limits: MachineLimits) -> Self {
        let _ = limits;
        unimplemented!()
    }

    /// The zxid of the last applied entry (0 if none).
    pub fn last_zxid(&self) -> u64 {
        unimplemented!()
    }

    /// Applies one entry at `zxid`, which must be greater than `last_zxid()`.
    pub fn apply(&mut self, zxid: u64, entry: &Entry) -> Applied {
        let _ = (zxid, entry);
        unimplemented!()
    }

    pub fn exists(&self, path: &str) -> Result<Option<Stat>, ErrorInfo> {
        let _ = path;
        unimplemented!()
    }

    pub fn get_data(&self, path: &str) -> Result<(Vec<u8>, Stat), ErrorInfo> {
        let _ = path;
        unimplemented!()
    }

    pub fn get_children(&self, path: &str) -> Result<(Vec<String>, Stat), ErrorInfo> {
        let _ = path;
        unimplemented!()
    }

    pub fn session(&self, session_id: u64) -> Option<&Session> {
        let _ = session_id;
        unimplemented!()
    }

    /// Every live session, in id order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        std::iter::empty()
    }

    /// The highest xid of a write this session had applied (0 if none).
    pub fn last_xid(&self, session_id: u64) -> u64 {
        let _ = session_id;
        unimplemented!()
    }

    /// A hash of the whole replicated state, equal on nodes that applied the same entries.
    pub fn state_hash(&self) -> u64 {
        unimplemented!()
    }

    /// Number of znodes (including the root).
    pub fn node_count(&self) -> usize {
        unimplemented!()
    }
}
