//! The replicated log of a cluster node: OmniPaxos plus what corral adds around it.
//!
//! - **Persist, then send, then apply.** OmniPaxos writes to [`PaxosStorage`], which
//!   buffers records in its write-ahead log. After each input, if anything is buffered and
//!   no sync runs, the node asks the storage thread for one sync (one fsync for everything
//!   buffered so far). Each OmniPaxos message waits until what it depends on is durable:
//!   everything written before it, except a leader's `AcceptDecide` and `Decide`, which
//!   wait only until the leader's own log is durable up to the decided index they carry
//!   (see [`PaxosLog::release`]); messages to one peer keep their order. Decided entries
//!   are applied only up to the accepted index that was durable when the last sync
//!   completed, and no further than where a log sync last replaced entries until a sync
//!   that started after it completes.
//! - **Every proposal is tracked until applied.** A follower does not use OmniPaxos's
//!   `ProposalForward`, which is dropped silently when lost: it sends the entries to the
//!   leader itself. A leader appends them directly, but a leader can be deposed with
//!   entries that never commit (the new leader's log replaces them). So every node keeps
//!   what it proposed until it sees it applied, and proposes it again on every leader
//!   change and every `forward_retry_ticks` without progress. Duplicates are harmless:
//!   writes are deduplicated by (session, xid) in the state machine; a duplicate barrier
//!   or expiry changes nothing; a duplicate session open creates a session nobody holds,
//!   which expires after its TTL.
//! - **Leadership.** The node is leader when OmniPaxos says its own pid is the promised
//!   leader in the accept phase. Only the leader proposes session expiries.

use crate::compaction::OwnImageCompaction;
use crate::machine::{Entry, EntryBody, MachineImage, MachineLimits, StateMachine};
use crate::replication::repeated_promise::RepeatedPromises;
use crate::replication::storage::{MachineSnapshot, PaxosStorage, SyncHandle};
use crate::replication::transport::Bulky;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::sequence_paxos::{Compaction, PaxosMessage, PaxosMsg};
use omnipaxos::messages::Message;
use omnipaxos::util::LogEntry;
use omnipaxos::OmniPaxos;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Messages between cluster nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerMsg {
    /// An OmniPaxos message.
    Paxos(Box<Message<Entry>>),
    /// Entries a follower asks the leader to append (resent until applied).
    Forward(Vec<Entry>),
    /// Sessions and leases whose clients spoke to the sender since its last report: the
    /// leader renews them and answers `AliveAck` with the same batch number.
    Alive {
        /// Chosen by the sender; resent batches keep their number.
        batch: u64,
        /// Session and lease ids.
        sessions: Vec<u64>,
    },
    /// The leader renewed the batch, and confirmed its leadership after receiving it.
    AliveAck {
        /// The batch number.
        batch: u64,
        /// Sessions of the batch that the leader does not have (expired or closed).
        gone: Vec<u64>,
    },
    /// A node that starts with an empty data directory asks for the highest ballot
    /// every other node promised.
    PromiseQuery,
    /// The answer to `PromiseQuery`: the ballot this node promised and its accepted index
    /// (0: it never accepted an entry). Nodes that are joining themselves answer with
    /// the default ballot and 0.
    PromiseReply(Ballot, u64),
}

impl Bulky for PeerMsg {
    /// Log syncs (a promise's or a leader's `AcceptSync`) can carry a snapshot of the
    /// whole state and every entry a peer lacks. They come with leader changes and
    /// reconnections, so encoding each one off the runtime workers costs little.
    fn may_be_bulky(&self) -> bool {
        match self {
            PeerMsg::Paxos(m) => matches!(
                m.as_ref(),
                Message::SequencePaxos(PaxosMessage {
                    msg: PaxosMsg::Promise(_) | PaxosMsg::AcceptSync(_),
                    ..
                })
            ),
            _ => false,
        }
    }
}

/// What applying the log yields, in order.
#[derive(Debug)]
pub enum Decided {
    /// An entry with its zxid.
    Entry(u64, Entry),
    /// A snapshot that replaces the state (this node was behind the leader's compaction).
    /// Nothing after it is taken until [`PaxosLog::install_done`] reports it decoded.
    Install(InstallJob),
}

/// A snapshot from the leader to decode into the state machine that replaces this node's:
/// the decode of a large image takes seconds, so it runs off the core
/// ([`InstallJob::decode`]) while the node goes on serving from the state it has.
#[derive(Debug)]
pub struct InstallJob {
    /// The log index the snapshot covers: the zxid of the state it decodes to.
    pub index: u64,
    snapshot: MachineSnapshot,
    limits: MachineLimits,
}

impl InstallJob {
    /// Decodes the snapshot (its image, then its tail of entries).
    pub fn decode(self) -> Result<StateMachine, String> {
        self.decode_seeing(|_, _| {})
    }

    /// [`Self::decode`], telling `seen` of each tail entry applied (for the simulator's
    /// checker).
    pub fn decode_seeing(
        self,
        seen: impl FnMut(&Entry, crate::machine::Applied),
    ) -> Result<StateMachine, String> {
        let machine = self.snapshot.into_machine_seeing(self.limits, seen)?;
        if machine.last_zxid() != self.index {
            return Err(format!(
                "the snapshot of index {} decodes to zxid {}",
                self.index,
                machine.last_zxid()
            ));
        }
        Ok(machine)
    }
}

/// Heartbeat rounds cut to one tick after the link to the leader broke: one to end the
/// round that may hold the leader's last reply, one to see it silent, and two for this
/// node and the other followers to see each other give up on it (they notice the loss
/// up to a tick apart).
const LEADER_LOSS_ROUND_CUTS: u32 = 4;

/// Settings of the replicated log.
#[derive(Debug, Clone, Copy)]
pub struct PaxosSettings {
    /// Ticks between resends of forwarded entries that are not applied yet.
    pub forward_retry_ticks: u64,
    /// Ticks per heartbeat round of OmniPaxos's leader election (its
    /// `election_tick_timeout`).
    pub election_ticks: u64,
    /// Most entries a follower keeps waiting for the leader; further proposals are refused.
    pub max_forwarded_entries: usize,
    /// Most encoded entry bytes in one `Forward` message, and in one leader's
    /// `AcceptDecide` unless a single entry is larger: a larger backlog goes as several,
    /// in order. Half of `max_peer_frame_bytes` (at least a client's `max_frame_bytes`, so
    /// any one entry fits): a single message over the frame limit would reset the link
    /// and be rebuilt, whole, after every reconnect.
    pub max_forward_batch_bytes: usize,
    /// Limits of the state machine (to rebuild it from snapshots).
    pub limits: MachineLimits,
    /// Encode the images offered for compaction on a thread of their own (the server)
    /// instead of on the core task (the simulator, which must stay deterministic).
    pub encode_images_in_background: bool,
}

#[derive(Debug)]
struct Forwarded {
    entry: Entry,
    /// The leader term in which it was last appended or sent (0: never).
    sent_term: u64,
    /// The tick it was last appended or sent.
    last_sent_tick: u64,
}

/// What identifies an entry across resends.
type EntryKey = (u8, u64, u64);

#[derive(Debug, Clone, Copy)]
struct SyncInFlight {
    batch: u64,
    /// Last lsn buffered when this sync started (durable when it completes).
    lsn: u64,
    /// Accepted index when this sync started (durable when it completes).
    accepted: usize,
    /// The ballot this node led in the accept phase when the sync started, if it did.
    leading: Option<Ballot>,
}

/// What an outgoing OmniPaxos message waits for before it may be sent.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// Every storage record up to this lsn durable (everything OmniPaxos wrote before it
    /// produced the message).
    Lsn(u64),
    /// A leader's `AcceptDecide` or `Decide` of ballot `ballot` announcing `decided`:
    /// the leader's own log durable up to `decided`, accepted in that ballot.
    LeaderDecided { ballot: Ballot, decided: usize },
}

/// An OmniPaxos message waiting for its [`Need`].
#[derive(Debug)]
struct Held {
    /// Production order over all receivers.
    seq: u64,
    msg: PeerMsg,
    need: Need,
}

/// What to do with a held message now.
enum Release {
    Send,
    Hold,
    Drop,
}

/// Compactions a node made, or put off, without an image of its own of the point asked
/// for ([`crate::compaction::compaction_at_own_image`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionCounts {
    /// Put off: skipped, waiting for the image being encoded, or made at an older
    /// image of this node's.
    pub deferred: u64,
    /// Made with the node's previous image and every entry since as the snapshot's
    /// tail, encoded into the log on the core (after skipping twice in a row).
    pub with_tail: u64,
}

/// The cluster node's log.
pub struct PaxosLog {
    op: OmniPaxos<Entry, PaxosStorage>,
    storage: SyncHandle,
    node_id: u64,
    settings: PaxosSettings,
    /// Next OmniPaxos index to apply (zxid of the last applied entry).
    applied_idx: usize,
    /// Accepted index known durable.
    durable_accepted: usize,
    /// Storage lsn known durable.
    durable_lsn: u64,
    /// The ballot this node leads and the accepted index durable in it: set by syncs that
    /// started while this node led that ballot in the accept phase.
    leader_durable: Option<(Ballot, usize)>,
    /// Messages waiting for their [`Need`], per receiver, in the order OmniPaxos
    /// produced them.
    held: BTreeMap<u64, VecDeque<Held>>,
    /// The last [`Held::seq`] given.
    held_seq: u64,
    sync: Option<SyncInFlight>,
    next_batch: u64,
    /// Entries this node proposed and has not seen applied, by proposal number.
    forwarded: BTreeMap<u64, Forwarded>,
    /// The proposal number of each tracked entry, by key.
    forwarded_keys: std::collections::HashMap<EntryKey, u64>,
    next_forward: u64,
    /// Bumped whenever what was sent may be lost (leader change, link to the leader
    /// re-established): every tracked proposal is then sent again, in order.
    term: u64,
    /// Forwards received while this node is the promised leader but not yet accepting;
    /// appended, in order, once it is.
    early_forwards: Vec<Entry>,
    ticks: u64,
    /// Calls of OmniPaxos's `tick` so far: its election clock fires at every multiple
    /// of `election_ticks`.
    op_ticks: u64,
    /// Heartbeat rounds still to cut short to one tick, after the link to the leader
    /// broke (see [`PaxosLog::on_link_down`]).
    round_cuts: u32,
    leader: Option<u64>,
    /// The ballot this node promised when `leader` was last looked at: a new ballot is a
    /// new leadership term even when the same node leads again.
    ballot: Ballot,
    /// The index of the snapshot being decoded for an install ([`Decided::Install`]):
    /// nothing is taken for applying meanwhile.
    installing: Option<usize>,
    /// The index of a snapshot that could not be decoded: not tried again.
    failed_install: Option<usize>,
    /// An image is being encoded on its own thread (see [`PaxosLog::offer_image`]).
    encoding: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// A compaction asked for while this node's image was being encoded: asked again
    /// once it is offered ([`crate::compaction::compaction_at_own_image`]).
    deferred_compaction: Option<usize>,
    /// Compactions skipped in a row for want of an image of this node's own.
    skipped_compactions: u32,
    /// Counts of compactions without this node's own image of the point asked for.
    compaction_counts: CompactionCounts,
    /// Joined with an empty disk and not yet synced by a leader: filtered by [`join`].
    ///
    /// [`join`]: crate::replication::join
    catching_up: bool,
    /// Followers' promises resent while the log sync that answered them is on its way.
    repeated_promises: RepeatedPromises,
    /// OmniPaxos's messages taken out before the pass ended, in order (see
    /// [`PaxosLog::on_peer`]); `flush` sends them ahead of the rest.
    taken: Vec<Message<Entry>>,
    /// Every other member's peer protocol version, as its latest outbound link to it
    /// negotiated (1, the oldest, until a link to it came up): which entries it decodes.
    peer_versions: BTreeMap<u64, u16>,
    /// Encoded bytes of the entries this node appended as leader since OmniPaxos's
    /// messages were last taken out: what its pending `AcceptDecide`s carry (see
    /// [`PaxosLog::leader_append`]).
    appended_bytes: usize,
}

impl std::fmt::Debug for PaxosLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaxosLog")
            .field("node_id", &self.node_id)
            .field("applied_idx", &self.applied_idx)
            .field("leader", &self.leader)
            .field("forwarded", &self.forwarded.len())
            .finish()
    }
}

impl PaxosLog {
    /// Wraps an OmniPaxos instance built over storage whose handle is `storage`, with the
    /// state machine recovered up to `applied_idx`.
    pub fn new(
        op: OmniPaxos<Entry, PaxosStorage>,
        storage: SyncHandle,
        node_id: u64,
        settings: PaxosSettings,
        applied_idx: usize,
        members: &[u64],
    ) -> PaxosLog {
        let durable_accepted = op.get_accepted_idx();
        let durable_lsn = storage.durable_lsn();
        PaxosLog {
            op,
            storage,
            node_id,
            settings,
            applied_idx,
            durable_accepted,
            durable_lsn,
            leader_durable: None,
            installing: None,
            failed_install: None,
            held: BTreeMap::new(),
            held_seq: 0,
            sync: None,
            next_batch: 1,
            forwarded: BTreeMap::new(),
            forwarded_keys: std::collections::HashMap::new(),
            next_forward: 1,
            term: 1,
            early_forwards: Vec::new(),
            ticks: 0,
            op_ticks: 0,
            round_cuts: 0,
            leader: None,
            ballot: Ballot::default(),
            encoding: Default::default(),
            deferred_compaction: None,
            skipped_compactions: 0,
            compaction_counts: CompactionCounts::default(),
            catching_up: false,
            repeated_promises: RepeatedPromises::default(),
            taken: Vec::new(),
            peer_versions: members
                .iter()
                .filter(|m| **m != node_id)
                .map(|m| (*m, 1))
                .collect(),
            appended_bytes: 0,
        }
    }

    /// The lowest peer protocol version among the other members, as their links last
    /// showed it: what every member decodes. An entry only a newer version decodes must
    /// not be proposed below it (a member that cannot decode an entry cannot apply it).
    pub fn members_version(&self) -> u16 {
        self.peer_versions
            .values()
            .copied()
            .min()
            .unwrap_or(crate::replication::transport::PEER_PROTOCOL_VERSION)
    }

    /// This node joined with an empty data directory: it takes part in no quorum until
    /// a leader that completed its prepare phase has synced its log to it.
    pub fn set_catching_up(&mut self) {
        self.catching_up = true;
    }

    /// Whether this node is still catching up after joining with an empty disk.
    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<u64> {
        self.leader
    }

    /// Whether this node is the leader in the accept phase.
    pub fn is_leader(&self) -> bool {
        matches!(self.op.get_current_leader(), Some((pid, true)) if pid == self.node_id)
    }

    /// The decided index (number of decided entries).
    pub fn decided_idx(&self) -> usize {
        self.op.get_decided_idx()
    }

    /// Proposes an entry: appended directly on the leader, forwarded otherwise, and
    /// tracked until applied. Fails when too many proposals already wait.
    pub fn propose(&mut self, entry: Entry, out: &mut Vec<(u64, PeerMsg)>) -> Result<(), String> {
        if self.forwarded.len() >= self.settings.max_forwarded_entries {
            return Err(format!(
                "{} proposals are waiting to be applied (max_forwarded_entries)",
                self.forwarded.len()
            ));
        }
        let key = forward_key(&entry);
        if key.is_none() {
            // Not tracked (session expiries): the leader decides them on its clock at that
            // moment. Kept and resent, a deposed leader's expiry would reach the next
            // leader, which restarted every deadline and may have renewed the session since.
            return self.append_untracked(entry);
        }
        if let Some(id) = key.and_then(|k| self.forwarded_keys.get(&k)).copied() {
            // Already tracked (a client resent it): send it, and what follows, again.
            if let Some(f) = self.forwarded.get_mut(&id) {
                f.sent_term = 0;
            }
            self.send_due(out);
            return Ok(());
        }
        let id = self.next_forward;
        self.next_forward += 1;
        if let Some(key) = key {
            self.forwarded_keys.insert(key, id);
        }
        self.forwarded.insert(
            id,
            Forwarded {
                entry,
                sent_term: 0,
                last_sent_tick: 0,
            },
        );
        self.send_due(out);
        Ok(())
    }

    /// Leader only: appends an entry once, without tracking it. If this node is deposed
    /// before the entry is decided, nobody resends it: for an entry that must be decided
    /// in this node's own leadership or not at all (an expiry decided on this leader's
    /// clock; a barrier that confirms this node still led after something arrived). Such
    /// an entry can still be decided by a later leader that found it accepted by a member
    /// of its quorum, but then that leader was elected after the entry was proposed.
    pub fn append_untracked(&mut self, entry: Entry) -> Result<(), String> {
        if !self.is_leader() {
            return Err("only the leader proposes this entry".to_string());
        }
        self.leader_append(entry)
    }

    /// Appends an entry as leader, keeping every `AcceptDecide` under the peer frame
    /// limit. OmniPaxos merges every entry appended until its messages are taken out
    /// into one `AcceptDecide` per follower, and a pass of the core takes in up to 64
    /// inputs (client writes of up to `max_frame_bytes`, followers' `Forward`s of up to
    /// half the peer frame limit each): one message over `max_peer_frame_bytes`, which
    /// the transport cannot send. Its link was reset, the follower's catch-up sync
    /// carried the same entries, and the followers never accepted them: nothing was
    /// decided again. So once the entries appended since the last take would pass
    /// `max_forward_batch_bytes` (half the limit; any one entry fits in it), the
    /// messages are taken out first, in order (`flush` sends them ahead of the rest),
    /// and the entry starts a new `AcceptDecide`.
    fn leader_append(&mut self, entry: Entry) -> Result<(), String> {
        append_bounded(
            &mut self.op,
            &mut self.taken,
            &mut self.appended_bytes,
            self.settings.max_forward_batch_bytes,
            entry,
        )
    }

    /// Takes OmniPaxos's outgoing messages out now, in order, for `flush` to send ahead
    /// of the rest; the next entry appended starts a new `AcceptDecide`.
    fn take_outgoing(&mut self) {
        self.op.take_outgoing_messages(&mut self.taken);
        self.appended_bytes = 0;
    }

    /// Sends tracked proposals that are due, strictly in proposal order, so that one
    /// client's writes reach the log in the order it sent them, across leader changes:
    /// from the first proposal not sent in this term (or overdue for a retry), every
    /// later one is sent again too, and nothing is sent past a proposal that cannot be
    /// (no leader known, or this node is leader but not yet accepting).
    fn send_due(&mut self, out: &mut Vec<(u64, PeerMsg)>) {
        let retry = self.settings.forward_retry_ticks;
        let (term, ticks) = (self.term, self.ticks);
        let once = crate::faults::active().send_forwards_once;
        let Some(first) = self
            .forwarded
            .iter()
            .find(|(_, f)| {
                if once {
                    return f.sent_term == 0;
                }
                f.sent_term != term || ticks.saturating_sub(f.last_sent_tick) >= retry
            })
            .map(|(id, _)| *id)
        else {
            return;
        };
        let leading = self.is_leader();
        let target = self.leader.filter(|l| *l != self.node_id);
        if !leading && target.is_none() {
            return;
        }
        let max_bytes = self.settings.max_forward_batch_bytes;
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for (_, f) in self.forwarded.range_mut(first..) {
            if leading {
                let appended = append_bounded(
                    &mut self.op,
                    &mut self.taken,
                    &mut self.appended_bytes,
                    max_bytes,
                    f.entry.clone(),
                );
                if appended.is_err() {
                    break;
                }
            } else if let Some(leader) = target {
                let bytes = corral_protocol::frame::frame_len(&f.entry);
                if !batch.is_empty() && batch_bytes + bytes > max_bytes {
                    out.push((leader, PeerMsg::Forward(std::mem::take(&mut batch))));
                    batch_bytes = 0;
                }
                batch.push(f.entry.clone());
                batch_bytes += bytes;
            }
            f.sent_term = term;
            f.last_sent_tick = ticks;
        }
        if let (Some(leader), false) = (target, batch.is_empty()) {
            out.push((leader, PeerMsg::Forward(batch)));
        }
    }

    /// Handles an OmniPaxos message or forwarded entries from peer `from` (as the
    /// transport's handshake identified it).
    pub fn on_peer(&mut self, from: u64, msg: PeerMsg) {
        // OmniPaxos answers, and counts promises and acceptances for, the node a message
        // names: one that names another sender (or receiver) than its link would let a
        // peer speak for another acceptor.
        if let PeerMsg::Paxos(m) = &msg {
            if m.get_sender() != from || m.get_receiver() != self.node_id {
                tracing::warn!(
                    from,
                    sender = m.get_sender(),
                    receiver = m.get_receiver(),
                    "dropped an OmniPaxos message whose sender or receiver is not its link's"
                );
                return;
            }
        }
        match msg {
            PeerMsg::Paxos(m) if self.catching_up => {
                let promise = is_promise(&m);
                if crate::replication::join::admit_incoming(&m) {
                    self.op.handle_incoming(*m);
                }
                if promise {
                    self.take_after_promise();
                }
                if matches!(self.op.get_current_leader(), Some((_, true))) {
                    // Accepted an AcceptSync: holds the log of an established leader.
                    self.catching_up = false;
                    tracing::info!(promise = ?self.op.get_promise(), "caught up");
                }
            }
            PeerMsg::Paxos(m) => {
                let promise = is_promise(&m);
                if self.repeated_promises.admit(from, &m) {
                    match compaction_asked(&m) {
                        Some(asked) => self.compact_at_own_image(asked),
                        None => self.op.handle_incoming(*m),
                    }
                }
                if promise {
                    self.take_after_promise();
                }
            }
            PeerMsg::Forward(mut entries) => {
                // Only what a follower tracks and forwards: an expiry is decided on the
                // leader's own clock, so one from a peer (a bug there) must not apply.
                let before = entries.len();
                entries.retain(|e| forward_key(e).is_some());
                if entries.len() != before {
                    tracing::warn!(
                        from,
                        dropped = before - entries.len(),
                        "dropped forwarded entries that only a leader proposes"
                    );
                }
                if self.is_leader() {
                    self.append_early_forwards();
                    for entry in entries {
                        // A failure (reconfiguration) drops the entry: the follower resends.
                        let _ = self.leader_append(entry);
                    }
                } else if self.op.get_current_leader().map(|(pid, _)| pid) == Some(self.node_id) {
                    // Promised leader, still preparing: keep them, in order, for the
                    // accept phase (dropping some would let later ones overtake them).
                    let room = self
                        .settings
                        .max_forwarded_entries
                        .saturating_sub(self.early_forwards.len());
                    self.early_forwards.extend(entries.into_iter().take(room));
                }
            }
            // Handled by the node core.
            PeerMsg::Alive { .. }
            | PeerMsg::AliveAck { .. }
            | PeerMsg::PromiseQuery
            | PeerMsg::PromiseReply(..) => {}
        }
    }

    /// The ballot this node promised.
    pub fn promise(&self) -> Ballot {
        self.op.get_promise()
    }

    /// The index up to which this node accepted entries (0: none ever).
    pub fn accepted_idx(&self) -> u64 {
        self.op.get_accepted_idx() as u64
    }

    /// A link to `peer`, speaking peer protocol `version`, was (re)established (at entry
    /// time `wall_ms`): OmniPaxos resends what it may have lost, and so do we if it is
    /// the leader (forwards may have been lost with the old link); if this node leads,
    /// it makes `peer` notice what it lost.
    pub fn on_link_up(&mut self, peer: u64, version: u16, wall_ms: i64) {
        if let Some(v) = self.peer_versions.get_mut(&peer) {
            if *v != version {
                tracing::info!(peer, version, "peer protocol version of the peer's link");
            }
            *v = version;
        }
        self.repeated_promises.link_changed(peer);
        self.op.reconnected(peer);
        if self.is_leader() {
            // What the broken link lost (an `AcceptDecide`, a `Decide`) an OmniPaxos leader
            // does not send again, and the `PrepareReq` that `reconnected` sends is acted
            // on only by a leader: the follower would stay behind until the next write.
            // An empty entry is that write: its messages carry a sequence number past the
            // lost ones, so the follower asks to be synced (OmniPaxos's `Recover`).
            let nudge = Entry::new(wall_ms, EntryBody::Noop { barrier: 0 });
            if let Err(e) = self.append_untracked(nudge) {
                tracing::warn!(peer, error = %e, "cannot append the entry that resyncs a follower");
            }
        }
        if self.leader == Some(peer) {
            self.term += 1;
            // The leader is reachable again: elect at the usual pace.
            self.round_cuts = 0;
        }
    }

    /// The outbound link to `peer` broke. When `peer` leads, that is usually a crash
    /// (its connections were reset), so the next heartbeat rounds of the leader election
    /// are cut to one tick each instead of lasting `election_ticks`: the first ends the
    /// round that may still hold the leader's reply, the second shows whether the
    /// leader answers at all, the next ones let this node and the other followers see
    /// each other give up on it and take over. Without this a crashed leader is
    /// replaced after two to three election timeouts; with it, after a few ticks.
    ///
    /// Only timing changes, never what the election decides: a node takes over only
    /// when every node it hears from has given up on the leader and it hears from a
    /// majority, so a follower whose own link flaps cannot depose a leader the others
    /// still hear. Safety never rests on timing (Paxos ballots decide).
    pub fn on_link_down(&mut self, peer: u64) {
        self.repeated_promises.link_changed(peer);
        if self.leader == Some(peer) && !self.is_leader() && !self.catching_up {
            self.round_cuts = LEADER_LOSS_ROUND_CUTS;
        }
    }

    fn append_early_forwards(&mut self) {
        for entry in std::mem::take(&mut self.early_forwards) {
            let _ = self.leader_append(entry);
        }
    }

    /// Advances OmniPaxos's logical clock and resends overdue forwards. Returns whether
    /// the leadership changed (another leader, or a new ballot), and who leads now.
    pub fn tick(&mut self, out: &mut Vec<(u64, PeerMsg)>) -> Option<Option<u64>> {
        self.ticks += 1;
        self.op_tick();
        if self.round_cuts > 0 {
            // End this heartbeat round now (see `on_link_down`).
            self.round_cuts -= 1;
            let round = self.settings.election_ticks.max(1);
            while !self.op_ticks.is_multiple_of(round) {
                self.op_tick();
            }
        }
        let leader = self.op.get_current_leader().map(|(pid, _)| pid);
        let ballot = self.op.get_promise();
        // A node deposed and elected again between two ticks leads a new term: it did
        // not see the keepalives its interim successor acknowledged.
        let changed = (leader != self.leader || ballot != self.ballot).then_some(leader);
        self.leader = leader;
        self.ballot = ballot;
        if changed.is_some() {
            // A deposed leader's uncommitted entries are gone, and forwards to the old
            // leader may be lost: send everything not applied yet again, in order.
            self.term += 1;
            self.round_cuts = 0;
        }
        if let (Some(asked), false) = (self.deferred_compaction, self.encoding_image()) {
            self.compact_at_own_image(asked);
        }
        if self.is_leader() {
            self.append_early_forwards();
        } else if self.leader != Some(self.node_id) {
            // Not leading after all: the followers resend them to whoever leads.
            self.early_forwards.clear();
        }
        self.send_due(out);
        changed
    }

    fn op_tick(&mut self) {
        self.op.tick();
        self.op_ticks += 1;
    }

    /// The handle the storage thread syncs with.
    pub fn sync_handle(&self) -> SyncHandle {
        self.storage.clone()
    }

    /// Takes OmniPaxos's outgoing messages out after it handled a `Promise`, before the
    /// pass ends. A leader in the accept phase answers a follower's promise with an
    /// `AcceptSync` that starts a new message sequence, but OmniPaxos 0.2.4 keeps
    /// pointing at the `AcceptDecide` it queued for that follower earlier (its
    /// `latest_accept_meta`, reset only when its messages are taken) and merges the
    /// entries proposed next into that superseded message, which the follower drops: it
    /// then put the entries after them one index early (soak seed 24000078, passes of
    /// 59 inputs). Taking the messages out resets that pointer, so later entries go in a
    /// new `AcceptDecide` after the sync.
    fn take_after_promise(&mut self) {
        self.take_outgoing();
    }

    /// Collects what OmniPaxos wants sent; returns the id of a sync to run if none is
    /// running and storage has unsynced records. Messages go out as soon as what they
    /// wait for is durable (see [`PaxosLog::release`]), in order per receiver.
    pub fn flush(&mut self, out: &mut Vec<(u64, PeerMsg)>) -> Option<u64> {
        self.note_cuts();
        let mut msgs = std::mem::take(&mut self.taken);
        self.op.take_outgoing_messages(&mut msgs);
        self.appended_bytes = 0;
        if !msgs.is_empty() {
            let lsn = self.storage.last_lsn();
            for mut m in msgs {
                if self.catching_up && !crate::replication::join::admit_outgoing(&m) {
                    continue;
                }
                if let Err(e) = super::log_sync::fit_outgoing(&self.op, &mut m) {
                    // Sent as it is, it would put entries at the wrong indexes; without
                    // it the receiver waits for the next prepare or sync.
                    tracing::error!(to = m.get_receiver(), error = %e, "dropping an inconsistent log sync");
                    continue;
                }
                self.repeated_promises.sent(&m);
                let to = m.get_receiver();
                if matches!(m, Message::BLE(_)) {
                    // Leader election's heartbeats promise nothing and OmniPaxos keeps
                    // none of their state on disk: they go out at once. Held behind a
                    // sync (a compaction's image takes a second or more to write),
                    // they made a leader with one live follower look cut off.
                    out.push((to, PeerMsg::Paxos(Box::new(m))));
                    continue;
                }
                let need = need_of(&m, lsn);
                self.held_seq += 1;
                self.held.entry(to).or_default().push_back(Held {
                    seq: self.held_seq,
                    msg: PeerMsg::Paxos(Box::new(m)),
                    need,
                });
            }
        }
        if crate::faults::active().ack_before_durable {
            for (to, queue) in &mut self.held {
                out.extend(queue.drain(..).map(|h| (*to, h.msg)));
            }
            self.durable_accepted = self.op.get_accepted_idx();
        }
        let mut start = None;
        if self.sync.is_none() {
            if self.storage.has_unsynced() {
                let batch = self.next_batch;
                self.next_batch += 1;
                self.sync = Some(SyncInFlight {
                    batch,
                    lsn: self.storage.last_lsn(),
                    accepted: self.op.get_accepted_idx(),
                    leading: self.leading_ballot(),
                });
                start = Some(batch);
            } else {
                // Nothing to make durable: everything accepted is already on disk.
                let synced = SyncInFlight {
                    batch: 0,
                    lsn: self.storage.last_lsn(),
                    accepted: self.op.get_accepted_idx(),
                    leading: self.leading_ballot(),
                };
                self.mark_durable(synced);
            }
        }
        self.release(out);
        start
    }

    /// The ballot this node leads in the accept phase, if it does.
    fn leading_ballot(&self) -> Option<Ballot> {
        self.is_leader().then(|| self.op.get_promise())
    }

    /// Takes in the entries OmniPaxos replaced since the last look (a log sync that
    /// overwrote part of this node's log): the durable prefix ends before them, and the
    /// sync in flight, which started before the write, does not make them durable. Without
    /// this, a node whose log a sync cut short and then refilled in a new ballot counted
    /// the new entries durable up to its old accepted index at once: a leader applied, and
    /// could answer, an entry a crash then erased (soak seed 7012632).
    fn note_cuts(&mut self) {
        if let Some(cut) = self.storage.take_cut() {
            self.durable_accepted = self.durable_accepted.min(cut);
            if let Some(sync) = &mut self.sync {
                sync.accepted = sync.accepted.min(cut);
            }
        }
    }

    fn mark_durable(&mut self, sync: SyncInFlight) {
        self.durable_lsn = self.durable_lsn.max(sync.lsn);
        self.durable_accepted = self.durable_accepted.max(sync.accepted);
        if let Some(ballot) = sync.leading {
            // Within one ballot the leader's log only grows (compaction keeps indices), so
            // the durable prefix only grows too; a new ballot starts over.
            self.leader_durable = match self.leader_durable {
                Some((b, idx)) if b == ballot => Some((b, idx.max(sync.accepted))),
                _ => Some((ballot, sync.accepted)),
            };
        }
    }

    /// A persist batch is durable: release the messages that waited for it.
    pub fn persisted(&mut self, batch: u64, out: &mut Vec<(u64, PeerMsg)>) {
        self.note_cuts();
        let Some(sync) = self.sync else {
            return;
        };
        if sync.batch != batch {
            return;
        }
        self.sync = None;
        self.mark_durable(sync);
        self.release(out);
    }

    /// Sends the held messages whose needs are met, keeping each receiver's messages in
    /// the order OmniPaxos produced them (its sequence numbers require it): a message
    /// that must wait holds back every later one to the same receiver.
    ///
    /// Why a leader's `AcceptDecide` and `Decide` need not wait for the leader's own
    /// fsync of the entries they carry (docs/ARCHITECTURE.md, "Replicating before the
    /// leader's fsync"): followers acknowledge (`Accepted`, `Promise`) only what their own
    /// disk holds (those wait for `Lsn`), so the only thing that could make a decision
    /// rest on a copy that a crash can erase is the leader counting its own acceptance,
    /// which OmniPaxos does in memory. A decided index therefore leaves this node only
    /// once the leader's own log is durable up to it in the same ballot; and the leader
    /// applies (answers clients) only up to its durable accepted index. A message of a
    /// ballot this node no longer leads that is still waiting is dropped: a follower of
    /// that ballot could otherwise learn a decision only the deposed leader counted, and
    /// OmniPaxos recovers from a lost message (the follower sees a gap in the sequence
    /// numbers and asks to be synced).
    fn release(&mut self, out: &mut Vec<(u64, PeerMsg)>) {
        let mut held = std::mem::take(&mut self.held);
        let mut released = Vec::new();
        for (to, queue) in &mut held {
            // Only a receiver's first message is examined until it leaves: the work is
            // proportional to what is released, however many messages wait.
            while let Some(front) = queue.front() {
                let release = self.release_of(front.need);
                if matches!(release, Release::Hold) {
                    break;
                }
                let Some(h) = queue.pop_front() else {
                    break;
                };
                if matches!(release, Release::Send) {
                    released.push((h.seq, *to, h.msg));
                } else {
                    tracing::debug!(to, "dropping a deposed leader's decision");
                }
            }
        }
        held.retain(|_, queue| !queue.is_empty());
        self.held = held;
        // Out in production order across receivers too, as before the queues were split
        // (the simulator's schedules, and so its seeds, depend on the order of sends).
        released.sort_by_key(|r| r.0);
        out.extend(released.into_iter().map(|(_, to, msg)| (to, msg)));
    }

    fn release_of(&self, need: Need) -> Release {
        match need {
            Need::Lsn(lsn) if lsn <= self.durable_lsn => Release::Send,
            Need::Lsn(_) => Release::Hold,
            Need::LeaderDecided { ballot, decided } => {
                if crate::faults::active().decide_before_leader_durable {
                    return Release::Send;
                }
                match self.leader_durable {
                    Some((b, idx)) if b == ballot && idx >= decided => Release::Send,
                    _ if self.op.get_promise() != ballot || !self.is_leader() => Release::Drop,
                    _ => Release::Hold,
                }
            }
        }
    }

    /// Decided entries that may be applied now (decided and durable here), in order.
    pub fn take_decided(&mut self) -> Vec<Decided> {
        self.note_cuts();
        if self.installing.is_some() && !crate::faults::active().apply_during_install {
            return Vec::new();
        }
        let upto = self.op.get_decided_idx().min(self.durable_accepted);
        if upto <= self.applied_idx {
            return Vec::new();
        }
        let Some(entries) = self.op.read_entries(self.applied_idx..upto) else {
            return Vec::new();
        };
        let mut decided = Vec::with_capacity(entries.len());
        for e in entries {
            match e {
                LogEntry::Decided(entry) | LogEntry::Undecided(entry) => {
                    self.applied_idx += 1;
                    self.settle_forward(&entry);
                    decided.push(Decided::Entry(self.applied_idx as u64, entry));
                }
                LogEntry::Snapshotted(s) => {
                    if self.failed_install == Some(s.trimmed_idx) {
                        break;
                    }
                    self.installing = Some(s.trimmed_idx);
                    decided.push(Decided::Install(InstallJob {
                        index: s.trimmed_idx as u64,
                        snapshot: s.snapshot,
                        limits: self.settings.limits,
                    }));
                    if !crate::faults::active().apply_during_install {
                        break;
                    }
                    self.applied_idx = s.trimmed_idx;
                }
                LogEntry::Trimmed(idx) => {
                    tracing::error!(
                        idx,
                        applied = self.applied_idx,
                        "log trimmed past the applied index without a snapshot"
                    );
                    break;
                }
                LogEntry::StopSign(..) => break,
            }
        }
        decided
    }

    /// Whether a snapshot from the leader is being decoded for an install.
    pub fn installing(&self) -> bool {
        self.installing.is_some()
    }

    /// The install of the snapshot at `index` was decoded (`ok`: the machine replaced
    /// this node's, which is now at `index`) or could not be (it is not tried again; a
    /// later snapshot is). Returns whether that install was the one awaited.
    pub fn install_done(&mut self, index: u64, ok: bool) -> bool {
        if self.installing != Some(index as usize) {
            return false;
        }
        self.installing = None;
        if !ok {
            self.failed_install = Some(index as usize);
        } else if !crate::faults::active().apply_during_install {
            self.applied_idx = index as usize;
        }
        true
    }

    /// Forgets a proposal once it is applied.
    fn settle_forward(&mut self, entry: &Entry) {
        if self.forwarded.is_empty() {
            return;
        }
        let Some(key) = forward_key(entry) else {
            return;
        };
        if let Some(id) = self.forwarded_keys.remove(&key) {
            self.forwarded.remove(&id);
        }
    }

    /// Offers an image of this node's state machine, which has applied exactly the first
    /// `machine.last_zxid()` entries, for the next compaction at that index (see
    /// [`SyncHandle::offer_image`]): the snapshot stored at that compaction is then a
    /// pure image instead of the previous one with every entry since as its tail.
    ///
    /// The machine's replicated state is copied in O(1) (its maps are persistent), so
    /// with `encode_images_in_background` the core only copies it and a thread encodes
    /// it: a state of a million znodes took the core about a second to encode. One image
    /// is encoded at a time; an offer made while the previous one is still being encoded
    /// is skipped (the snapshot of the compaction at that point then keeps a tail until
    /// the next one).
    pub fn offer_image(&self, machine: &StateMachine) {
        let image = machine.image();
        if !self.settings.encode_images_in_background {
            encode_and_offer(&image, &self.storage);
            return;
        }
        if self
            .encoding
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            tracing::warn!(
                zxid = image.last_zxid(),
                "the previous image is still being encoded; skipping this one"
            );
            return;
        }
        let storage = self.storage.clone();
        let encoding = self.encoding.clone();
        let spawned = std::thread::Builder::new()
            .name("corral-image".into())
            .spawn(move || {
                lower_this_threads_priority();
                encode_and_offer(&image, &storage);
                encoding.store(false, std::sync::atomic::Ordering::Release);
            });
        if let Err(e) = spawned {
            self.encoding
                .store(false, std::sync::atomic::Ordering::Release);
            tracing::warn!(error = %e, "cannot start a thread to encode an image; encoding it here");
            encode_and_offer(&machine.image(), &self.storage);
        }
    }

    /// Whether an image offered for compaction is still being encoded: an offer made now
    /// would be skipped.
    pub fn encoding_image(&self) -> bool {
        self.encoding.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Leader: compacts the log through `idx`, or through this node's newest image before
    /// it, and asks every node to compact there too
    /// ([`crate::compaction::compaction_at_own_image`]).
    pub fn compact(&mut self, idx: usize) {
        self.compact_at_own_image(idx);
    }

    /// Compacts the log through `asked` (this node's compaction as leader, or the one the
    /// leader asked for), where this node has an image of its own
    /// ([`crate::compaction::compaction_at_own_image`]). As leader it asks every node
    /// to compact where it did.
    fn compact_at_own_image(&mut self, asked: usize) {
        let compacted = self.op.get_compacted_idx();
        let images = self.storage.offered_image_zxids();
        let encoding = self.encoding_image();
        self.deferred_compaction = None;
        let skipped = self.skipped_compactions;
        match crate::compaction::compaction_at_own_image(
            asked, compacted, &images, encoding, skipped,
        ) {
            OwnImageCompaction::To(idx) => {
                if !images.iter().any(|zxid| usize::try_from(*zxid) == Ok(idx)) {
                    self.compaction_counts.with_tail += 1;
                } else if idx < asked {
                    self.compaction_counts.deferred += 1;
                }
                self.skipped_compactions = 0;
                let local_only = !self.is_leader();
                if let Err(e) = self.op.snapshot(Some(idx), local_only) {
                    tracing::debug!(?e, idx, asked, "snapshot not taken");
                }
                if idx < asked && encoding {
                    self.deferred_compaction = Some(asked);
                }
            }
            OwnImageCompaction::Wait => {
                self.compaction_counts.deferred += 1;
                tracing::debug!(asked, "compaction waits for this node's image");
                self.deferred_compaction = Some(asked);
            }
            OwnImageCompaction::Skip => {
                self.compaction_counts.deferred += 1;
                self.skipped_compactions += 1;
                tracing::debug!(
                    asked,
                    skipped,
                    "compaction skipped: no image of this node's own"
                );
            }
        }
    }

    /// Counts of compactions without this node's own image of the point asked for.
    pub fn compaction_counts(&self) -> CompactionCounts {
        self.compaction_counts
    }

    /// The index this node's log is compacted to.
    pub fn compacted_idx(&self) -> usize {
        self.op.get_compacted_idx()
    }

    /// The node's own pid.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Entries waiting for a leader.
    pub fn forwarded_len(&self) -> usize {
        self.forwarded.len()
    }

    /// After a snapshot install: forgets the tracked session opens the installed state
    /// shows applied. Their entries were inside the snapshot, so this node never saw them
    /// decided and would send them again, and an open applied twice opens a second
    /// session with the same secret, which nobody uses and which holds a `max_sessions`
    /// place until its TTL (the node attached the first to its client after the
    /// install). Other proposals stay: a client write sent again is answered from the
    /// deduplication table (or refused), which its client may still wait for; a close or
    /// a barrier sent again changes nothing.
    pub fn settle_installed(&mut self, machine: &StateMachine) {
        let applied = |entry: &Entry| match &*entry.body {
            EntryBody::OpenSession { secret, .. } => machine.session_by_secret(*secret).is_some(),
            _ => false,
        };
        let settled: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, f)| applied(&f.entry))
            .map(|(id, _)| *id)
            .collect();
        for id in settled {
            if let Some(f) = self.forwarded.remove(&id) {
                if let Some(key) = forward_key(&f.entry) {
                    self.forwarded_keys.remove(&key);
                }
            }
        }
    }
}

/// The nice value of the image thread. Encoding and writing a large state's image takes
/// a CPU for a second or more, on every node at once; at the default priority it
/// competes with the threads that answer requests for the whole time. Niced, it takes
/// what they leave (with 5, about a quarter of a CPU when they use them all), and an
/// image still has a whole `snapshot_every_entries` interval before it is needed.
const IMAGE_THREAD_NICE: i32 = 5;

/// Lowers the calling thread's priority to [`IMAGE_THREAD_NICE`] (on Linux the nice
/// value is per thread); a failure is logged and changes nothing else.
pub(crate) fn lower_this_threads_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, IMAGE_THREAD_NICE) {
        tracing::debug!(error = %e, "cannot lower the image thread's priority");
    }
}

/// Encodes `image` and offers it to the storage for the compaction at its zxid.
fn encode_and_offer(image: &MachineImage, storage: &SyncHandle) {
    let started = std::time::Instant::now();
    match MachineSnapshot::from_image(image) {
        Ok(snapshot) => {
            tracing::debug!(
                zxid = image.last_zxid(),
                bytes = snapshot.image().map_or(0, <[u8]>::len),
                ms = started.elapsed().as_millis() as u64,
                "encoded an image for compaction"
            );
            storage.offer_image(snapshot);
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode an image for compaction"),
    }
}

/// [`PaxosLog::leader_append`] on the fields it uses: appends `entry` to `op` as leader,
/// first taking `op`'s messages out into `taken` if the entries appended since the last
/// take (`appended_bytes`) and this one would pass `max_bytes`.
fn append_bounded(
    op: &mut OmniPaxos<Entry, PaxosStorage>,
    taken: &mut Vec<Message<Entry>>,
    appended_bytes: &mut usize,
    max_bytes: usize,
    entry: Entry,
) -> Result<(), String> {
    let bytes = corral_protocol::frame::frame_len(&entry);
    if *appended_bytes > 0 && appended_bytes.saturating_add(bytes) > max_bytes {
        op.take_outgoing_messages(taken);
        *appended_bytes = 0;
    }
    op.append(entry)
        .map_err(|e| format!("OmniPaxos refused the entry: {e:?}"))?;
    *appended_bytes = appended_bytes.saturating_add(bytes);
    Ok(())
}

/// What an outgoing message waits for (`lsn`: the last storage record buffered when
/// OmniPaxos produced it).
fn need_of(m: &Message<Entry>, lsn: u64) -> Need {
    use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
    match m {
        Message::SequencePaxos(PaxosMessage {
            msg: PaxosMsg::AcceptDecide(a),
            ..
        }) => Need::LeaderDecided {
            ballot: a.n,
            decided: a.decided_idx,
        },
        Message::SequencePaxos(PaxosMessage {
            msg: PaxosMsg::Decide(d),
            ..
        }) => Need::LeaderDecided {
            ballot: d.n,
            decided: d.decided_idx,
        },
        _ => Need::Lsn(lsn),
    }
}

/// What identifies an entry across resends (`None`: not tracked, e.g. expiries, which
/// the leader proposes again by itself if they are lost).
fn forward_key(entry: &Entry) -> Option<EntryKey> {
    match &*entry.body {
        EntryBody::Write {
            session_id, xid, ..
        }
        | EntryBody::OrderedWrite {
            session_id, xid, ..
        }
        | EntryBody::AckedWrite {
            session_id, xid, ..
        } => Some((0, *session_id, *xid)),
        EntryBody::OpenSession { secret, .. } => Some((1, *secret, 0)),
        EntryBody::CloseSession { session_id } => Some((2, *session_id, 0)),
        EntryBody::Noop { barrier } => Some((3, *barrier, 0)),
        EntryBody::ExpireSessions { .. } => None,
    }
}

/// The index of the compaction a leader asks for, if `m` asks for one.
fn compaction_asked(m: &Message<Entry>) -> Option<usize> {
    match m {
        Message::SequencePaxos(PaxosMessage {
            msg: PaxosMsg::Compaction(Compaction::Snapshot(Some(idx))),
            ..
        }) => Some(*idx),
        _ => None,
    }
}

/// Whether a peer message is a Sequence Paxos `Promise`.
fn is_promise(m: &Message<Entry>) -> bool {
    matches!(
        m,
        Message::SequencePaxos(PaxosMessage {
            msg: PaxosMsg::Promise(_),
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::storage::catch_up_data::{self, create};
    use corral_protocol::frame::{decode_payload, encode_frame, LENGTH_PREFIX_BYTES};
    use omnipaxos::messages::sequence_paxos::AcceptSync;
    use omnipaxos::storage::SnapshotType;
    use omnipaxos::util::{LogSync, SequenceNumber};
    use std::time::Instant;

    /// What a catch-up log sync costs the transport: the leader encodes it, the follower
    /// decodes it, and each used to do so on a runtime worker. `cargo test -p
    /// corral-server --release --lib log_sync_wire_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run in release with --nocapture"]
    fn log_sync_wire_cost() {
        let snapshot = catch_up_data::snapshot(300_000, 100_000);
        let msg = PeerMsg::Paxos(Box::new(Message::SequencePaxos(PaxosMessage {
            from: 1,
            to: 2,
            msg: PaxosMsg::AcceptSync(AcceptSync {
                n: Ballot::default(),
                seq_num: SequenceNumber::default(),
                decided_idx: 400_001,
                log_sync: LogSync {
                    decided_snapshot: Some(SnapshotType::Complete(snapshot)),
                    suffix: (400_000..400_100).map(create).collect(),
                    sync_idx: 400_001,
                    stopsign: None,
                },
            }),
        })));
        assert!(msg.may_be_bulky());
        for _ in 0..3 {
            let t = Instant::now();
            let mut frame = bytes::BytesMut::new();
            encode_frame(&msg, &mut frame, u32::MAX as usize).expect("encodes");
            let encoded = t.elapsed();
            let t = Instant::now();
            let decoded: PeerMsg = decode_payload(&frame[LENGTH_PREFIX_BYTES..]).expect("decodes");
            let decode = t.elapsed();
            let t = Instant::now();
            drop(decoded);
            let freed = t.elapsed();
            println!(
                "log sync of 300,000 znodes + 100,000 entries, {} bytes: encode {encoded:?}, decode {decode:?}, free {freed:?}",
                frame.len()
            );
        }
    }
}

#[cfg(test)]
#[path = "log_peer_tests.rs"]
mod peer_tests;
