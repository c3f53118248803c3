//! The status of one server, as answered to [`crate::Op::ServerStatus`] and served as JSON
//! on the admin port's `/status`.

use serde::{Deserialize, Serialize};

/// The role of a server in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A single node: it orders, persists and applies entries itself.
    Standalone,
    /// The cluster member that orders entries and decides session expiry.
    Leader,
    /// A cluster member that knows of a leader other than itself.
    Follower,
    /// A cluster member that knows of no leader (an election is running, or it is cut
    /// off), or that was elected and does not lead yet: it is still gathering the
    /// majority's promises and logs (then [`ServerStatus::leader`] names itself).
    Candidate,
}

/// Another member of the cluster as this server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's node id.
    pub node_id: u64,
    /// Its peer address, as configured.
    pub peer_addr: String,
    /// Whether this server's outgoing link to it is up.
    pub reachable: bool,
}

/// What one server reports about itself. Every figure is this server's own view; a
/// follower's `committed_zxid` can lag the leader's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's node id.
    pub node_id: u64,
    /// Its role.
    pub role: Role,
    /// The leader this server knows of, if any: the elected one, which may still be
    /// preparing to lead (its own role then `Candidate`).
    pub leader: Option<u64>,
    /// The other cluster members (empty for a single node).
    pub members: Vec<MemberStatus>,
    /// The zxid of the last entry applied to this server's state.
    pub applied_zxid: u64,
    /// The zxid of the last entry this server knows to be committed (decided).
    pub committed_zxid: u64,
    /// Bytes of the write-ahead log on disk: its files' lengths, the zero-filled room
    /// preallocated ahead of its end included (a cluster member's compaction image files
    /// under `paxos/images/` too).
    pub log_bytes: u64,
    /// Bytes of snapshot files on disk (single node; a cluster member's snapshots are in
    /// its log and image files, counted in `log_bytes`).
    pub snapshot_bytes: u64,
    /// Live sessions (leases included) in the replicated state.
    pub sessions: u64,
    /// Client connections on this server whose handshake reached its core: those
    /// carrying a session, and those whose session is still being opened or confirmed.
    pub connections: u64,
    /// Watches registered on this server.
    pub watches: u64,
    /// Znodes in the tree.
    pub znodes: u64,
    /// Locks (lock directories with at least one queue node).
    pub locks: u64,
    /// Queue nodes that hold their lock.
    pub locks_held: u64,
    /// Queue nodes waiting for their lock.
    pub locks_waiting: u64,
    /// Address of the admin HTTP endpoint, if enabled.
    pub admin_addr: Option<String>,
    /// Whether this server is ready for clients: a single node; a leader whose links
    /// reach a majority; or a follower that knows a leader, reaches it, and has applied
    /// what it knows to be committed.
    pub ready: bool,
    /// The server's version (the `corral` crate version).
    pub version: String,
}
