//! The handshake frames of the peer protocol and the acceptor's checks.

use serde::{Deserialize, Serialize};

/// First field of every [`PeerHello`]: "CRPR" (corral peer). The client protocol's magic
/// is "CRRL", so a client that dials the peer port, or a peer that dials the client port,
/// is refused at once.
pub const PEER_MAGIC: u32 = u32::from_be_bytes(*b"CRPR");

/// The highest version of the peer protocol this node speaks, and the one its dialer
/// tries first. Versions share the [`PeerHello`] and the framing around `M`:
///
/// - 1: the first release: the hello and one [`PeerHelloReply`];
/// - 2: the acceptor also decodes `EntryBody::OrderedWrite` log entries
///   (`machine::ORDERED_WRITE_PEER_VERSION`), and the handshake has a second step
///   ([`IDENTITY_PEER_VERSION`]): after the hello's `Accepted`, the dialer sends a
///   [`PeerIdentity`] and the acceptor answers a second [`PeerHelloReply`];
/// - 3: the acceptor also decodes `EntryBody::AckedWrite` log entries
///   (`machine::ACKED_WRITE_PEER_VERSION`); the handshake is version 2's.
pub const PEER_PROTOCOL_VERSION: u16 = 3;

/// The first version whose handshake has the [`PeerIdentity`] step.
pub const IDENTITY_PEER_VERSION: u16 = 2;

/// The lowest version of the peer protocol this node accepts and falls back to.
pub const MIN_PEER_PROTOCOL_VERSION: u16 = 1;

/// How the acceptor's refusal of a version it does not speak begins. Binaries that speak
/// only version 1 refuse any other with "unsupported peer protocol version {v} (this node
/// speaks 1)", so this text is fixed forever: the dialer recognises a version refusal by
/// it and retries at once with a lower version.
pub const UNSUPPORTED_VERSION_REFUSAL: &str = "unsupported peer protocol version";

/// How the acceptor's refusal of a dialer whose member list differs from its own begins.
pub const MEMBERS_REFUSAL: &str = "peer member lists differ";

/// How the acceptor's refusal of a second process that claims a node id already connected
/// from another live process begins.
pub const DUPLICATE_NODE_REFUSAL: &str = "two processes claim node id";

/// Most members a cluster may have: the [`PeerIdentity`] frame (16 bytes plus 8 per
/// member) must fit in the handshake's frame limit (1 KiB).
pub const MAX_MEMBERS: usize = 100;

/// The first frame on every peer connection, sent by the dialer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// Must be [`PEER_MAGIC`].
    pub magic: u32,
    /// The version the dialer proposes; the acceptor accepts any in
    /// [`MIN_PEER_PROTOCOL_VERSION`]`..=`[`PEER_PROTOCOL_VERSION`]. On an accepted link it
    /// is what both sides go by.
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

/// The second frame of the dialer at version [`IDENTITY_PEER_VERSION`] and later, sent
/// only after the acceptor answered its [`PeerHello`] `Accepted`; the acceptor then
/// answers a second [`PeerHelloReply`], and only that one's `Accepted` opens the link.
///
/// Why after the first `Accepted` and not right behind the hello: an acceptor that speaks
/// only version 1 refuses the version-2 hello and closes the connection. Had the dialer
/// already sent this frame, the acceptor would close with unread bytes in its socket,
/// which makes TCP send a reset instead of an orderly end, and a reset may reach the
/// dialer before (and on some systems discard) the refusal whose words the fallback to
/// version 1 depends on. Waiting costs one round trip per connection and leaves nothing
/// to chance: a version-1 acceptor never receives more than the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// The dialer's cluster members, sorted, both ends included; must be the acceptor's.
    /// Only the ids: nodes may reach each other through different addresses.
    pub members: Vec<u64>,
    /// Random, drawn once per transport start (a process start in the server): tells a
    /// reconnection of the same process from a second process with the same node id.
    pub incarnation: u64,
}

impl PeerIdentity {
    /// The acceptor's member check: `Err(reason)`, beginning with [`MEMBERS_REFUSAL`] and
    /// naming both lists, if the dialer `from`'s members are not `mine` (sorted) of node
    /// `me`.
    pub(super) fn check_members(&self, from: u64, me: u64, mine: &[u64]) -> Result<(), String> {
        if self.members == mine {
            return Ok(());
        }
        Err(format!(
            "{MEMBERS_REFUSAL}: node {from} has members {:?}, node {me} has {mine:?}; \
             every node must list the same member ids",
            self.members
        ))
    }
}

impl PeerHello {
    /// The hello of node `from` of cluster `cluster_id` dialing node `to`, proposing
    /// [`PEER_PROTOCOL_VERSION`] (set `version` to propose a lower one).
    pub fn new(cluster_id: u64, from: u64, to: u64) -> PeerHello {
        PeerHello {
            magic: PEER_MAGIC,
            version: PEER_PROTOCOL_VERSION,
            cluster_id,
            from,
            to,
        }
    }

    /// The acceptor's checks: `Err(reason)` if the connection must be refused. A version
    /// outside [`MIN_PEER_PROTOCOL_VERSION`]`..=`[`PEER_PROTOCOL_VERSION`] is refused with
    /// a reason that begins with [`UNSUPPORTED_VERSION_REFUSAL`].
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
        if !(MIN_PEER_PROTOCOL_VERSION..=PEER_PROTOCOL_VERSION).contains(&self.version) {
            return Err(format!(
                "{UNSUPPORTED_VERSION_REFUSAL} {} (this node speaks \
                 {MIN_PEER_PROTOCOL_VERSION} to {PEER_PROTOCOL_VERSION})",
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

/// Whether a refusal's `reason` says the acceptor does not speak the proposed version
/// (in the words of every binary, old ones included).
pub(super) fn is_version_refusal(reason: &str) -> bool {
    reason.starts_with(UNSUPPORTED_VERSION_REFUSAL)
}
