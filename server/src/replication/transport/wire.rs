//! The handshake frames of the peer protocol and the acceptor's checks.

use serde::{Deserialize, Serialize};

/// First field of every [`PeerHello`]: "CRPR" (corral peer). The client protocol's magic
/// is "CRRL", so a client that dials the peer port, or a peer that dials the client port,
/// is refused at once.
pub const PEER_MAGIC: u32 = u32::from_be_bytes(*b"CRPR");

/// Version of the peer protocol (the handshake and the framing around `M`).
pub const PEER_PROTOCOL_VERSION: u16 = 1;

/// The first frame on every peer connection, sent by the dialer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// Must be [`PEER_MAGIC`].
    pub magic: u32,
    /// Must be [`PEER_PROTOCOL_VERSION`].
    pub version: u16,
    /// Must be the acceptor's cluster id.
    pub cluster_id: u64,
    /// The dialer's node id; must be one of the acceptor's configured peers.
    pub from: u64,
    /// The node id the dialer means to reach; must be the acceptor's.
    pub to: u64,
}

/// The acceptor's answer to a [`PeerHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerHelloReply {
    /// The dialer may send its messages.
    Accepted,
    /// The connection is refused, and closed after this frame.
    Refused {
        /// Why, for the dialer's log.
        reason: String,
    },
}

impl PeerHello {
    /// The hello of node `from` of cluster `cluster_id` dialing node `to`.
    pub fn new(cluster_id: u64, from: u64, to: u64) -> PeerHello {
        PeerHello {
            magic: PEER_MAGIC,
            version: PEER_PROTOCOL_VERSION,
            cluster_id,
            from,
            to,
        }
    }

    /// The acceptor's checks: `Err(reason)` if the connection must be refused.
    pub(super) fn check(
        &self,
        cluster_id: u64,
        me: u64,
        is_peer: impl Fn(u64) -> bool,
    ) -> Result<(), String> {
        if self.magic != PEER_MAGIC {
            return Err(format!(
                "bad magic {:#010x} (expected {PEER_MAGIC:#010x}): not a corral peer",
                self.magic
            ));
        }
        if self.version != PEER_PROTOCOL_VERSION {
            return Err(format!(
                "unsupported peer protocol version {} (this node speaks {PEER_PROTOCOL_VERSION})",
                self.version
            ));
        }
        if self.cluster_id != cluster_id {
            return Err(format!(
                "wrong cluster id {} (this node belongs to cluster {cluster_id})",
                self.cluster_id
            ));
        }
        if self.to != me {
            return Err(format!(
                "the dialer expected node {} but this is node {me}",
                self.to
            ));
        }
        if !is_peer(self.from) {
            return Err(format!(
                "node {} is not a configured peer of node {me}",
                self.from
            ));
        }
        Ok(())
    }
}
