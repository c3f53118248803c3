//! `PaxosLog`'s handling of what it sends to and takes from its peers: forwarded
//! proposals stay under the peer frame limit, and an OmniPaxos message must name the
//! sender and receiver of the link it came on; what every member decodes follows its
//! links' peer protocol versions.

use crate::disk::{Disk, SimDisk};
use crate::machine::{Entry, EntryBody, MachineLimits};
use crate::replication::log::{CompactionCounts, Decided, PaxosLog, PaxosSettings, PeerMsg};
use crate::replication::storage::PaxosStorageConfig;
use crate::replication::transport::PEER_PROTOCOL_VERSION;
use crate::replication::{open_cluster_on, ClusterSettings};
use crate::wal::WalOptions;
use corral_protocol::frame::encode_frame;
use corral_protocol::Op;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg, Prepare};
use omnipaxos::messages::Message;
use std::path::Path;

/// The smallest `max_peer_frame_bytes` the server's configuration accepts with the
/// default client `max_frame_bytes` (config.rs: at least 2 x max_frame_bytes).
const MIN_PEER_FRAME_BYTES: usize = 2 * corral_protocol::DEFAULT_MAX_FRAME_BYTES;

fn open_log(disk: &SimDisk, node_id: u64) -> PaxosLog {
    let limits = MachineLimits::default();
    let config = PaxosStorageConfig::new(
        WalOptions {
            segment_bytes: 64 << 20,
            fsync: true,
            preallocate_bytes: 0,
        },
        limits,
    );
    let settings = ClusterSettings {
        node_id,
        members: vec![1, 2, 3],
        election_ticks: 5,
        resend_ticks: 5,
        log: PaxosSettings {
            forward_retry_ticks: 5,
            election_ticks: 5,
            // As in server.rs.
            max_forwarded_entries: 64 * 1024,
            max_forward_batch_bytes: MIN_PEER_FRAME_BYTES / 2,
            limits,
            encode_images_in_background: false,
        },
    };
    let disk = Disk::Sim(disk.clone());
    let recovered = match open_cluster_on(&disk, Path::new("/data/paxos"), config, settings) {
        Ok(r) => r,
        Err(e) => panic!("open: {e}"),
    };
    let (_, log) = recovered.start(None).expect("start");
    log
}

/// A `Prepare` of node 2's ballot, naming `from` and `to` inside the message.
fn prepare(from: u64, to: u64) -> PeerMsg {
    PeerMsg::Paxos(Box::new(Message::SequencePaxos(PaxosMessage {
        from,
        to,
        msg: PaxosMsg::Prepare(Prepare {
            n: Ballot::with(1, 5, 0, 2),
            decided_idx: 0,
            n_accepted: Ballot::default(),
            accepted_idx: 0,
        }),
    })))
}

/// A client write of `data_bytes` bytes (the default max_data_bytes is 1 MiB).
fn big_write(xid: u64, data_bytes: usize) -> Entry {
    Entry::new(
        0,
        EntryBody::Write {
            session_id: 42,
            xid,
            op: Op::SetData {
                path: "/big".into(),
                data: vec![7u8; data_bytes],
                version: None,
            },
        },
    )
}

fn forwards(out: &[(u64, PeerMsg)]) -> Vec<(u64, usize, usize)> {
    out.iter()
        .filter_map(|(to, m)| match m {
            PeerMsg::Forward(entries) => {
                let mut frame = bytes::BytesMut::new();
                encode_frame(m, &mut frame, usize::MAX).expect("encodes");
                Some((*to, entries.len(), frame.len()))
            }
            _ => None,
        })
        .collect()
}

/// A follower's backlog of forwarded proposals goes to the leader as several `Forward`
/// messages, in order, each under the peer frame limit: one message over it would reset
/// the link and be rebuilt, whole, after every reconnect (three pipelined 1 MiB writes
/// did that at the smallest `max_peer_frame_bytes` the configuration accepts).
#[test]
fn a_forwarded_backlog_is_split_under_the_peer_frame_limit() {
    let disk = SimDisk::new(11);
    let mut log = open_log(&disk, 1);
    // Node 2 prepares: node 1 promises it and takes it for the leader.
    log.on_peer(2, prepare(2, 1));
    let mut out = Vec::new();
    log.tick(&mut out);
    assert_eq!(log.leader(), Some(2));
    for xid in 1..=3 {
        log.propose(big_write(xid, 1 << 20), &mut out)
            .expect("proposed");
    }
    // The link to the leader flaps: everything not applied is sent again.
    out.clear();
    log.on_link_down(2);
    log.on_link_up(2, PEER_PROTOCOL_VERSION, 0);
    log.tick(&mut out);
    let sent = forwards(&out);
    assert!(sent.len() >= 2, "{sent:?}");
    assert!(
        sent.iter()
            .all(|(to, _, bytes)| *to == 2 && *bytes <= MIN_PEER_FRAME_BYTES),
        "{sent:?} (limit {MIN_PEER_FRAME_BYTES})"
    );
    let xids: Vec<u64> = out
        .iter()
        .filter_map(|(_, m)| match m {
            PeerMsg::Forward(entries) => Some(entries.iter().filter_map(|e| match &*e.body {
                EntryBody::Write { xid, .. } => Some(*xid),
                _ => None,
            })),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(xids, [1, 2, 3], "every proposal, once, in order");
}

/// OmniPaxos answers, and counts promises and acceptances for, the node a message names:
/// a message whose sender or receiver is not its link's is dropped.
#[test]
fn a_paxos_message_naming_another_node_than_its_link_is_dropped() {
    let disk = SimDisk::new(12);
    let mut log = open_log(&disk, 1);
    // On node 2's link: claims to come from node 3, or is meant for node 3.
    log.on_peer(2, prepare(3, 1));
    log.on_peer(2, prepare(2, 3));
    let mut out = Vec::new();
    log.tick(&mut out);
    assert_eq!(
        log.promise(),
        Ballot::default(),
        "neither prepare was handled"
    );
    assert!(
        !out.iter()
            .any(|(_, m)| matches!(m, PeerMsg::Paxos(_)) && promises(m)),
        "{out:?}"
    );
    // The same prepare, as its link says, is handled.
    log.on_peer(2, prepare(2, 1));
    assert_eq!(log.promise(), Ballot::with(1, 5, 0, 2));
}

fn promises(m: &PeerMsg) -> bool {
    matches!(
        m,
        PeerMsg::Paxos(p) if matches!(
            p.as_ref(),
            Message::SequencePaxos(PaxosMessage { msg: PaxosMsg::Promise(_), .. })
        )
    )
}

/// Three logs exchanging messages, each making its writes durable before its messages
/// that wait for them leave (as the node does every pass).
struct Trio {
    logs: Vec<PaxosLog>,
    /// What each log applied, in order.
    applied: Vec<Vec<Entry>>,
}

impl Trio {
    fn new(seed: u64) -> Trio {
        let logs = (1..=3)
            .map(|id| open_log(&SimDisk::new(seed + id), id))
            .collect();
        Trio {
            logs,
            applied: vec![Vec::new(); 3],
        }
    }

    fn log(&mut self, id: u64) -> &mut PaxosLog {
        &mut self.logs[id as usize - 1]
    }

    /// One round: every log ticks and syncs, then the messages are delivered, except
    /// those `drop` refuses (from, to, message).
    fn round(&mut self, drop: &dyn Fn(u64, u64, &PeerMsg) -> bool) {
        let mut sent = Vec::new();
        for log in &mut self.logs {
            let from = log.node_id();
            let mut out = Vec::new();
            log.tick(&mut out);
            if let Some(batch) = log.flush(&mut out) {
                log.sync_handle().sync().expect("sync");
                log.persisted(batch, &mut out);
            }
            // Applied, as the node does: its own proposals are not resent then.
            for d in log.take_decided() {
                if let Decided::Entry(_, entry) = d {
                    self.applied[from as usize - 1].push(entry);
                }
            }
            sent.extend(out.into_iter().map(|(to, m)| (from, to, m)));
        }
        for (from, to, m) in sent {
            if !drop(from, to, &m) {
                self.log(to).on_peer(from, m);
            }
        }
    }

    /// Rounds without losses until a leader is elected (at most 200): the leader and a
    /// follower.
    fn elect(&mut self) -> (u64, u64) {
        let keep = |_: u64, _: u64, _: &PeerMsg| false;
        for _ in 0..200 {
            if self.leader().is_some() {
                break;
            }
            self.round(&keep);
        }
        let leader = self.leader().expect("a leader within 200 rounds");
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        (leader, follower)
    }

    fn leader(&self) -> Option<u64> {
        self.logs
            .iter()
            .find(|l| l.is_leader())
            .map(|l| l.node_id())
    }
}

fn is_accept_or_decide(m: &PeerMsg) -> bool {
    matches!(
        m,
        PeerMsg::Paxos(p) if matches!(
            p.as_ref(),
            Message::SequencePaxos(PaxosMessage {
                msg: PaxosMsg::AcceptDecide(_) | PaxosMsg::Decide(_),
                ..
            })
        )
    )
}

/// A leader whose link to a follower broke (losing an `AcceptDecide` and a `Decide`)
/// brings the follower up to date when the link is back, without waiting for another
/// write to show the follower the gap: in a quiet cluster it would stay behind (stale
/// reads, clients that saw later zxids refused).
#[test]
fn a_leader_resyncs_a_follower_whose_link_came_back() {
    let mut trio = Trio::new(20);
    let keep = |_: u64, _: u64, _: &PeerMsg| false;
    let (leader, follower) = trio.elect();
    let mut out = Vec::new();
    trio.log(leader)
        .propose(big_write(1, 10), &mut out)
        .expect("proposed");
    // The link from the leader to the follower loses what carries the entry.
    let lossy = move |from: u64, to: u64, m: &PeerMsg| {
        from == leader && to == follower && is_accept_or_decide(m)
    };
    for _ in 0..5 {
        trio.round(&lossy);
    }
    let decided = trio.log(leader).decided_idx();
    assert!(decided >= 1, "decided by the leader and the other follower");
    assert!(
        trio.log(follower).decided_idx() < decided,
        "precondition: behind"
    );
    // The leader's outbound link is re-established; nothing else is written.
    trio.log(leader).on_link_down(follower);
    trio.log(leader)
        .on_link_up(follower, PEER_PROTOCOL_VERSION, 1_000);
    for _ in 0..20 {
        trio.round(&keep);
    }
    assert_eq!(trio.leader(), Some(leader), "the same leader throughout");
    let now = trio.log(leader).decided_idx();
    assert!(now >= decided);
    assert_eq!(trio.log(follower).decided_idx(), now, "caught up");
}

/// A leader appends only what a follower forwards: an expiry, which only a leader
/// decides (on its own clock), is dropped when a peer forwards one.
#[test]
fn a_leader_drops_a_forwarded_expiry() {
    let mut trio = Trio::new(30);
    let keep = |_: u64, _: u64, _: &PeerMsg| false;
    let (leader, follower) = trio.elect();
    let expiry = Entry::new(
        0,
        EntryBody::ExpireSessions {
            session_ids: vec![7],
        },
    );
    trio.log(leader)
        .on_peer(follower, PeerMsg::Forward(vec![expiry, big_write(1, 10)]));
    for _ in 0..10 {
        trio.round(&keep);
    }
    let applied = &trio.applied[leader as usize - 1];
    assert!(
        applied.iter().any(|e| e.body.client_write().is_some()),
        "the write applied: {applied:?}"
    );
    assert!(
        !applied
            .iter()
            .any(|e| matches!(*e.body, EntryBody::ExpireSessions { .. })),
        "no expiry: {applied:?}"
    );
}

impl Trio {
    /// Proposes `n` writes on `leader` and runs rounds until every node applied them;
    /// returns the decided index.
    fn decide_writes(&mut self, leader: u64, n: u64) -> usize {
        let keep = |_: u64, _: u64, _: &PeerMsg| false;
        let mut out = Vec::new();
        for xid in 1..=n {
            self.log(leader)
                .propose(big_write(xid, 10), &mut out)
                .expect("proposed");
        }
        for _ in 0..20 {
            self.round(&keep);
        }
        let decided = self.log(leader).decided_idx();
        assert!(decided >= n as usize);
        for id in 1..=3 {
            assert_eq!(
                self.applied[id as usize - 1].len(),
                decided,
                "node {id} applied all"
            );
        }
        decided
    }

    /// Offers node `id`'s image of its state after the first `at` entries it applied.
    fn offer_image_at(&mut self, id: u64, at: usize) {
        let mut machine = crate::machine::StateMachine::new(MachineLimits::default());
        for (i, entry) in self.applied[id as usize - 1][..at].iter().enumerate() {
            machine.apply(i as u64 + 1, entry);
        }
        self.log(id).offer_image(&machine);
    }

    /// The leader compacts to `idx` (where it has an image of its own), then three rounds.
    fn compact(&mut self, leader: u64, idx: usize) {
        let keep = |_: u64, _: u64, _: &PeerMsg| false;
        self.log(leader).compact(idx);
        for _ in 0..3 {
            self.round(&keep);
        }
    }
}

/// A follower asked to compact where it has no image of its own compacts to its newest
/// image before that point, or skips the compaction, and stores the entries as a tail
/// (encoded on its core) only after two skips in a row
/// (`compaction::compaction_at_own_image`).
#[test]
fn a_follower_compacts_at_its_own_image_and_skips_twice_before_a_tail() {
    let mut trio = Trio::new(40);
    let (leader, follower) = trio.elect();
    let other = (1..=3)
        .find(|id| *id != leader && *id != follower)
        .expect("a third node");
    let decided = trio.decide_writes(leader, 12);
    // The leader has its images of the points; the follower only one of `decided - 4`,
    // the other none.
    let image_at = decided - 4;
    trio.offer_image_at(follower, image_at);
    trio.offer_image_at(leader, decided - 2);
    trio.offer_image_at(leader, decided - 1);
    trio.compact(leader, decided - 2);
    assert_eq!(trio.log(leader).compacted_idx(), decided - 2);
    assert_eq!(
        trio.log(follower).compacted_idx(),
        image_at,
        "at its own image"
    );
    assert_eq!(trio.log(other).compacted_idx(), 0, "skipped once");
    trio.compact(leader, decided - 1);
    assert_eq!(trio.log(leader).compacted_idx(), decided - 1);
    assert_eq!(trio.log(follower).compacted_idx(), image_at, "skipped once");
    assert_eq!(trio.log(other).compacted_idx(), 0, "skipped twice");
    trio.offer_image_at(leader, decided);
    trio.compact(leader, decided);
    assert_eq!(trio.log(leader).compacted_idx(), decided);
    assert_eq!(
        trio.log(follower).compacted_idx(),
        image_at,
        "skipped twice"
    );
    assert_eq!(
        trio.log(other).compacted_idx(),
        decided,
        "as asked, with a tail, after two skips"
    );
}

/// The leader compacts where it has an image of its own too, and asks its followers to
/// compact there: a leader whose image of the point was skipped (the point came while
/// its previous image was being encoded) or that restarted since does not store its
/// previous image with every entry since as a tail.
#[test]
fn a_leader_compacts_at_its_own_image_and_asks_the_followers_there() {
    let mut trio = Trio::new(41);
    let (leader, follower) = trio.elect();
    let other = (1..=3)
        .find(|id| *id != leader && *id != follower)
        .expect("a third node");
    let decided = trio.decide_writes(leader, 12);
    // Every node has an image of `decided - 4`; only the followers one of `decided - 2`.
    for id in [leader, follower, other] {
        trio.offer_image_at(id, decided - 4);
    }
    for id in [follower, other] {
        trio.offer_image_at(id, decided - 2);
    }
    trio.compact(leader, decided - 2);
    for id in [leader, follower, other] {
        assert_eq!(
            trio.log(id).compacted_idx(),
            decided - 4,
            "node {id}: at the leader's own image, not at the point"
        );
    }
    // No image past its compaction: the leader skips twice, then keeps a tail.
    trio.compact(leader, decided - 1);
    trio.compact(leader, decided - 1);
    for id in [leader, follower, other] {
        assert_eq!(
            trio.log(id).compacted_idx(),
            decided - 4,
            "node {id}: skipped"
        );
    }
    trio.compact(leader, decided - 1);
    assert_eq!(
        trio.log(leader).compacted_idx(),
        decided - 1,
        "as asked, with a tail, after two skips"
    );
    // Counted for the metrics: put off three times (an older image, two skips), then
    // made with a tail.
    assert_eq!(
        trio.log(leader).compaction_counts(),
        CompactionCounts {
            deferred: 3,
            with_tail: 1
        }
    );
    assert_eq!(
        trio.log(follower).compaction_counts(),
        CompactionCounts {
            deferred: 1,
            with_tail: 0
        },
        "at its own image of `decided - 4`, then at `decided - 2` for `decided - 1`"
    );
    assert_eq!(
        trio.log(follower).compacted_idx(),
        decided - 2,
        "asked for `decided - 1`: at its own image of `decided - 2`"
    );
}

/// A member counts as decoding the newest entries only once a link to it came up at a
/// version that does, and stops counting as soon as one comes up at an older version
/// (a peer restarted with an older binary during a rolling upgrade).
#[test]
fn members_version_is_the_lowest_version_the_links_showed() {
    let disk = SimDisk::new(12);
    let mut log = open_log(&disk, 1);
    assert_eq!(log.members_version(), 1, "no link yet: the oldest version");
    log.on_link_up(2, 2, 0);
    assert_eq!(log.members_version(), 1, "node 3 not heard yet");
    log.on_link_up(3, 2, 0);
    assert_eq!(log.members_version(), 2);
    // A link going down changes nothing: the peer still runs what it ran.
    log.on_link_down(3);
    assert_eq!(log.members_version(), 2);
    log.on_link_up(3, 1, 0);
    assert_eq!(log.members_version(), 1);
    // A node that is not a member changes nothing.
    log.on_link_up(9, 1, 0);
    log.on_link_up(3, 2, 0);
    assert_eq!(log.members_version(), 2);
}

impl Trio {
    /// One round over links that carry frames of at most `limit` bytes, as the transport
    /// does: a message over it cannot be encoded, so the sender's link to that peer is
    /// reset (it and everything after it on the link this round are lost) and comes up
    /// again. Returns how many links were reset.
    fn round_limited(&mut self, limit: usize) -> usize {
        let mut sent = Vec::new();
        for log in &mut self.logs {
            let from = log.node_id();
            let mut out = Vec::new();
            log.tick(&mut out);
            if let Some(batch) = log.flush(&mut out) {
                log.sync_handle().sync().expect("sync");
                log.persisted(batch, &mut out);
            }
            for d in log.take_decided() {
                if let Decided::Entry(_, entry) = d {
                    self.applied[from as usize - 1].push(entry);
                }
            }
            sent.extend(out.into_iter().map(|(to, m)| (from, to, m)));
        }
        let mut reset = std::collections::BTreeSet::new();
        for (from, to, m) in sent {
            if reset.contains(&(from, to)) {
                continue;
            }
            if corral_protocol::frame::frame_len(&m) > limit {
                reset.insert((from, to));
                continue;
            }
            self.log(to).on_peer(from, m);
        }
        for &(from, to) in &reset {
            self.log(from).on_link_down(to);
            self.log(from).on_link_up(to, PEER_PROTOCOL_VERSION, 1_000);
        }
        reset.len()
    }
}

/// Client writes that arrive at the leader in one pass leave in `AcceptDecide`s that
/// each fit the peer frame limit. OmniPaxos puts every entry appended between two takes
/// of its messages into one `AcceptDecide` per follower: three 1 MiB writes in a pass
/// made one of over 3 MiB at the smallest `max_peer_frame_bytes` the configuration
/// accepts, which the transport cannot send; the link was reset, the follower's catch-up
/// sync carried the same entries, and no follower ever accepted them: nothing was decided
/// again, for good.
#[test]
fn writes_of_one_pass_reach_the_followers_under_the_peer_frame_limit() {
    let mut trio = Trio::new(40);
    let (leader, _) = trio.elect();
    let mut out = Vec::new();
    for xid in 1..=3 {
        trio.log(leader)
            .propose(big_write(xid, 1 << 20), &mut out)
            .expect("proposed");
    }
    assert!(out.is_empty(), "a leader appends its own proposals");
    let mut resets = 0;
    for _ in 0..40 {
        resets += trio.round_limited(MIN_PEER_FRAME_BYTES);
    }
    let decided = trio.log(leader).decided_idx();
    for id in 1..=3u64 {
        let xids: Vec<u64> = trio.applied[id as usize - 1]
            .iter()
            .filter_map(|e| match &*e.body {
                EntryBody::Write { xid, .. } => Some(*xid),
                _ => None,
            })
            .collect();
        assert_eq!(
            xids,
            [1, 2, 3],
            "node {id} applied (leader {leader}, decided {decided}, {resets} links reset)"
        );
    }
    assert_eq!(resets, 0, "no message over the frame limit");
}

/// After a snapshot install, a session open the installed state shows applied (its
/// secret names a session) is no longer tracked: sent again it would open a second
/// session with the same secret that nobody uses, for a whole TTL. Other proposals
/// stay tracked (a client write sent again gets its answer from the dedup table).
#[test]
fn an_install_settles_the_session_opens_it_shows_applied() {
    let disk = SimDisk::new(12);
    let mut log = open_log(&disk, 1);
    log.on_peer(2, prepare(2, 1));
    let mut out = Vec::new();
    log.tick(&mut out);
    assert_eq!(log.leader(), Some(2));
    let open = |secret| {
        Entry::new(
            0,
            EntryBody::OpenSession {
                secret,
                ttl_ms: 10_000,
            },
        )
    };
    for entry in [open(7), open(8), big_write(1, 10)] {
        log.propose(entry, &mut out).expect("proposed");
    }
    assert_eq!(log.forwarded_len(), 3);
    // The installed state opened the session of secret 7 (not 8, not the write's).
    let mut machine = crate::machine::StateMachine::new(MachineLimits::default());
    machine.apply(1, &open(7));
    log.settle_installed(&machine);
    assert_eq!(log.forwarded_len(), 2, "the open of secret 7 is settled");
    // Proposed again (a client resent its hello), it is tracked anew.
    log.propose(open(7), &mut out).expect("proposed");
    assert_eq!(log.forwarded_len(), 3);
}
