//! Joining an existing cluster with an empty data directory (a new or wiped node).
//!
//! A Paxos acceptor that lost its state and rejoins under the same id is not a new
//! acceptor: it may have promised ballots and accepted entries that the rest of the
//! cluster counts on. Two steps make it safe (the full argument is in
//! `docs/ARCHITECTURE.md`, "A wiped disk is not a new node"):
//!
//! 1. **Adopt the promise** (`learn_promise` in the shells): before OmniPaxos starts, the
//!    node stores the highest ballot a majority of the other nodes promised. Any ballot
//!    whose prepare quorum included the node's old incarnation was promised by a member
//!    of that majority, so the node never accepts in a round below one its old self
//!    helped to prepare.
//! 2. **Catch up before voting** (this module): an empty node must not take part in a
//!    prepare quorum, since its empty log would let a leader whose other promisers lag
//!    behind overwrite decided entries. While *catching up* the node
//!    - handles a `Prepare` only when its sender has already completed its prepare
//!      phase: a leader in its accept phase has accepted in its own round, and every
//!      `Prepare` it sends carries `n_accepted == n`; one still preparing has
//!      `n_accepted < n`. Such a leader's log was chosen by a quorum without this node,
//!      and this node's `Promise` only gets it an `AcceptSync` with that log;
//!    - never stands for election: it ignores the heartbeat replies of its ballot
//!      leader election (so it never sees a quorum and never takes over), does not call
//!      `try_become_leader`, and drops any `Prepare` of its own should one appear;
//!    - stops catching up once it accepted an `AcceptSync` (OmniPaxos's accept phase),
//!      which copied the leader's whole log (or snapshot) to it.
//!
//! Catching up survives restarts: a marker file is made durable in the Paxos directory
//! before the adopted promise is written, and a node restarting with the marker whose
//! stored accepted round is still the default (it never accepted an `AcceptSync`: the
//! round and the synced log are one atomic record) catches up again. A node whose
//! stored accepted round is set has caught up; the marker is removed then.
//!
//! When no member of the majority that answered has accepted any entry, nothing was ever
//! decided (a decided entry is accepted by a majority, and every majority of the others
//! meets every such majority outside this node), so there is nothing to catch up: the
//! node starts as a normal member. This is how nodes that all start empty, at slightly
//! different times, elect a first leader, even after one of them has already promised
//! its own ballot (a promise alone is not enough to need catching up: a candidate still
//! in its prepare phase sends `n_accepted < n`, which a catching-up node would ignore,
//! and the cluster would never start).

use crate::disk::Disk;
use crate::machine::Entry;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::ballot_leader_election::HeartbeatMsg;
use omnipaxos::messages::sequence_paxos::PaxosMsg;
use omnipaxos::messages::Message;
use std::io;
use std::path::{Path, PathBuf};

/// What a node starting with an empty data directory learned from a majority of the
/// other nodes (`PeerMsg::PromiseReply`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Joined {
    /// The highest ballot they promised: stored as this node's promise.
    pub promise: Ballot,
    /// Whether one of them accepted an entry: the cluster is running, and this node
    /// catches up before it votes.
    pub catch_up: bool,
}

impl Joined {
    /// Folds the replies `(promise, accepted index)` of a majority of the others.
    pub fn from_replies<'a>(replies: impl IntoIterator<Item = &'a (Ballot, u64)>) -> Joined {
        replies
            .into_iter()
            .fold(Joined::default(), |j, (promise, accepted)| Joined {
                promise: j.promise.max(*promise),
                catch_up: j.catch_up || *accepted > 0,
            })
    }
}

/// Name of the marker file in the Paxos directory.
pub const MARKER_FILE: &str = "joining";

fn marker_path(dir: &Path) -> PathBuf {
    dir.join(MARKER_FILE)
}

/// Whether the directory holds the marker of a node that joined with an empty disk.
pub fn has_marker(disk: &Disk, dir: &Path) -> bool {
    disk.exists(&marker_path(dir))
}

/// Makes the marker durable (file and directory entry).
pub fn write_marker(disk: &Disk, dir: &Path) -> io::Result<()> {
    let mut file = disk.create_truncate(&marker_path(dir))?;
    file.write_all(b"catching up: this node joined with an empty data directory\n")?;
    file.sync_all()?;
    disk.sync_dir(dir)
}

/// Removes the marker, durably.
pub fn remove_marker(disk: &Disk, dir: &Path) -> io::Result<()> {
    if has_marker(disk, dir) {
        disk.remove_file(&marker_path(dir))?;
        disk.sync_dir(dir)?;
    }
    Ok(())
}

/// Whether a node that is catching up lets an incoming OmniPaxos message through.
pub fn admit_incoming(msg: &Message<Entry>) -> bool {
    match msg {
        // Only a leader that completed its prepare phase without this node.
        Message::SequencePaxos(m) => match &m.msg {
            PaxosMsg::Prepare(p) => p.n_accepted == p.n,
            _ => true,
        },
        // Its leader election sees nobody: it never has a quorum, never takes over.
        // (Requests are still answered: the others see a node with ballot round 0
        // that is not happy, which neither blocks nor wins their elections.)
        Message::BLE(b) => !matches!(b.msg, HeartbeatMsg::Reply(_)),
        #[allow(unreachable_patterns)]
        _ => true,
    }
}

/// Whether a node that is catching up sends an outgoing OmniPaxos message.
pub fn admit_outgoing(msg: &Message<Entry>) -> bool {
    !matches!(
        msg,
        Message::SequencePaxos(m) if matches!(m.msg, PaxosMsg::Prepare(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::SimDisk;
    use crate::machine::MachineLimits;
    use crate::replication::log::PaxosSettings;
    use crate::replication::storage::PaxosStorageConfig;
    use crate::replication::{open_cluster_on, ClusterSettings};
    use crate::wal::WalOptions;
    use omnipaxos::ballot_leader_election::Ballot;
    use omnipaxos::messages::ballot_leader_election::{
        BLEMessage, HeartbeatReply, HeartbeatRequest,
    };
    use omnipaxos::messages::sequence_paxos::{PaxosMessage, Prepare, PrepareReq};

    fn prepare(n: u32, n_accepted: u32) -> Message<Entry> {
        Message::SequencePaxos(PaxosMessage {
            from: 2,
            to: 1,
            msg: PaxosMsg::Prepare(Prepare {
                n: Ballot::with(1, n, 0, 2),
                decided_idx: 5,
                n_accepted: Ballot::with(1, n_accepted, 0, 2),
                accepted_idx: 7,
            }),
        })
    }

    #[test]
    fn prepare_admitted_only_from_a_leader_past_its_prepare_phase() {
        assert!(!admit_incoming(&prepare(3, 2)));
        assert!(admit_incoming(&prepare(3, 3)));
        // Another pid in the same round number is another ballot.
        let mut other = prepare(3, 3);
        if let Message::SequencePaxos(PaxosMessage {
            msg: PaxosMsg::Prepare(p),
            ..
        }) = &mut other
        {
            p.n_accepted.pid = 3;
        }
        assert!(!admit_incoming(&other));
        let req = Message::SequencePaxos(PaxosMessage {
            from: 2,
            to: 1,
            msg: PaxosMsg::PrepareReq(PrepareReq {
                n: Ballot::default(),
            }),
        });
        assert!(admit_incoming(&req));
    }

    fn open(disk: &SimDisk) -> crate::replication::RecoveredCluster {
        let limits = MachineLimits::default();
        let config = PaxosStorageConfig::new(
            WalOptions {
                segment_bytes: 1 << 20,
                fsync: true,
                preallocate_bytes: 0,
            },
            limits,
        );
        let settings = ClusterSettings {
            node_id: 1,
            members: vec![1, 2, 3],
            election_ticks: 5,
            resend_ticks: 5,
            log: PaxosSettings {
                forward_retry_ticks: 5,
                election_ticks: 5,
                max_forwarded_entries: 16,
                max_forward_batch_bytes: 1 << 20,
                limits,
                encode_images_in_background: false,
            },
        };
        let disk = Disk::Sim(disk.clone());
        match open_cluster_on(&disk, Path::new("/data/paxos"), config, settings) {
            Ok(r) => r,
            Err(e) => panic!("open: {e}"),
        }
    }

    #[test]
    fn a_node_joining_a_running_cluster_catches_up_across_restarts() {
        let disk = SimDisk::new(7);
        let recovered = open(&disk);
        assert!(recovered.fresh && !recovered.catching_up);
        let adopted = Ballot::with(1, 4, 0, 2);
        let joined = Joined {
            promise: adopted,
            catch_up: true,
        };
        let (_, log) = recovered.start(Some(joined)).expect("start");
        assert!(log.is_catching_up());
        assert_eq!(log.promise(), adopted);
        drop(log);
        // A power cut keeps only what was synced: the marker and the promise were.
        disk.crash(&mut |_| (0, 0));
        let again = open(&disk);
        assert!(!again.fresh, "the adopted promise is on disk");
        assert!(again.catching_up, "the marker keeps it catching up");
        let (_, log) = again.start(None).expect("restart");
        assert!(log.is_catching_up());
        assert_eq!(log.promise(), adopted, "no election of its own");
    }

    /// Bug (fixed): a node that started a moment after another of a new cluster learned
    /// that node's own ballot, took the cluster for a running one and caught up; a
    /// candidate still preparing sends `n_accepted < n`, so no node promised it and the
    /// new cluster never elected a leader (seen in `cluster_faults`). Only an accepted
    /// entry means a running cluster.
    #[test]
    fn a_promise_without_accepted_entries_is_a_new_cluster() {
        let own = Ballot::with(1, 2, 0, 3);
        let new = Joined::from_replies(&[(own, 0), (Ballot::default(), 0)]);
        assert_eq!(new.promise, own);
        assert!(!new.catch_up);
        let running = Joined::from_replies(&[(own, 0), (Ballot::with(1, 1, 0, 2), 7)]);
        assert_eq!(running.promise, own);
        assert!(running.catch_up);
    }

    #[test]
    fn nodes_of_a_new_cluster_do_not_catch_up() {
        let disk = SimDisk::new(8);
        let (_, log) = open(&disk).start(Some(Joined::default())).expect("start");
        assert!(!log.is_catching_up());
        drop(log);
        assert!(!has_marker(
            &Disk::Sim(disk.clone()),
            Path::new("/data/paxos")
        ));
        assert!(!open(&disk).catching_up);
    }

    #[test]
    fn heartbeat_replies_are_ignored_and_own_prepares_dropped() {
        let reply = Message::BLE(BLEMessage {
            from: 2,
            to: 1,
            msg: HeartbeatMsg::Reply(HeartbeatReply {
                round: 1,
                ballot: Ballot::default(),
                leader: Ballot::default(),
                happy: true,
            }),
        });
        let request = Message::BLE(BLEMessage {
            from: 2,
            to: 1,
            msg: HeartbeatMsg::Request(HeartbeatRequest { round: 1 }),
        });
        assert!(!admit_incoming(&reply));
        assert!(admit_incoming(&request));
        assert!(!admit_outgoing(&prepare(3, 2)));
        assert!(admit_outgoing(&request));
    }
}
