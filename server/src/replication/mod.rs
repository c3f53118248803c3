//! Replication over OmniPaxos: the replicated log around OmniPaxos ([`log`]), its durable
//! storage on the write-ahead log ([`storage`]), the peer transport ([`transport`]), the
//! correction of outgoing log syncs (`log_sync`), and one log sync per promise
//! (`repeated_promise`).

pub mod join;
pub mod log;
mod log_sync;
mod repeated_promise;
pub mod storage;
pub mod transport;

use crate::disk::Disk;
use crate::machine::{MachineLimits, StateMachine};
use crate::wal::{StorageError, WalOptions};
use log::{PaxosLog, PaxosSettings};
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::{ClusterConfig, OmniPaxosConfig, ServerConfig};
use std::path::{Path, PathBuf};
use storage::{PaxosStorage, PaxosStorageConfig};

/// How a cluster member is set up.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's id.
    pub node_id: u64,
    /// Every member's id, this node included.
    pub members: Vec<u64>,
    /// OmniPaxos ticks without a leader heartbeat before an election.
    pub election_ticks: u64,
    /// OmniPaxos ticks before a possibly lost message is resent.
    pub resend_ticks: u64,
    /// Replicated-log settings.
    pub log: PaxosSettings,
}

/// Why a cluster member could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the stored snapshot cannot be loaded: {0}")]
    Snapshot(String),
    #[error("OmniPaxos refused the configuration: {0}")]
    Config(String),
}

/// One decided entry applied during recovery, and what applying it did.
#[cfg(any(test, feature = "sim"))]
pub type Replayed = (crate::machine::Entry, crate::machine::Applied);

/// A cluster member recovered from its data directory, before OmniPaxos runs.
pub struct RecoveredCluster {
    /// The state machine: the stored snapshot plus every decided entry after it.
    pub machine: StateMachine,
    /// Whether the data directory held no Paxos state at all (a new or wiped node).
    pub fresh: bool,
    /// Whether the node joined with an empty data directory and has not yet accepted
    /// an `AcceptSync` from an established leader (see [`join`]).
    pub catching_up: bool,
    /// The decided entries replayed, the snapshot's tail and then the log after it, with
    /// their results (the simulator's checker learns of them: a node that crashed between
    /// deciding and applying an entry may apply it only here).
    #[cfg(any(test, feature = "sim"))]
    pub replayed: Vec<Replayed>,
    storage: PaxosStorage,
    settings: ClusterSettings,
    disk: Disk,
    dir: PathBuf,
}

impl std::fmt::Debug for RecoveredCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveredCluster")
            .field("zxid", &self.machine.last_zxid())
            .field("fresh", &self.fresh)
            .field("catching_up", &self.catching_up)
            .finish()
    }
}

impl RecoveredCluster {
    /// The handle the storage thread syncs with.
    pub fn sync_handle(&self) -> storage::SyncHandle {
        self.storage.sync_handle()
    }

    /// Starts OmniPaxos over the storage. `adopt_promise` is the highest ballot a
    /// majority of the other nodes reported, for a node that starts with an empty data
    /// directory: it is stored as this node's promise first, so that the node cannot
    /// accept proposals of a leader that the cluster already superseded (which a wiped
    /// acceptor, having forgotten its promise, otherwise would). If one of those
    /// nodes had accepted an entry the cluster is running: the node then catches up
    /// before it votes (see [`join`]); otherwise nothing was ever decided and the node
    /// joins as a normal member (a new cluster).
    pub fn start(
        mut self,
        adopt_promise: Option<join::Joined>,
    ) -> Result<(StateMachine, PaxosLog), ClusterError> {
        use omnipaxos::storage::Storage;
        if let Some(joined) = adopt_promise {
            let ballot = joined.promise;
            let marker = if !joined.catch_up {
                join::remove_marker(&self.disk, &self.dir)
            } else {
                // Durable before the promise: a restart must still know it catches up.
                join::write_marker(&self.disk, &self.dir)
            };
            marker.map_err(|source| {
                ClusterError::Storage(StorageError::Io {
                    path: self.dir.join(join::MARKER_FILE).display().to_string(),
                    source,
                })
            })?;
            self.catching_up = joined.catch_up;
            self.storage
                .set_promise(ballot)
                .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
            self.storage.sync()?;
        }
        let catching_up = self.catching_up;
        let sync = self.storage.sync_handle();
        let settings = self.settings;
        let server_config = ServerConfig {
            pid: settings.node_id,
            election_tick_timeout: settings.election_ticks.max(1),
            resend_message_tick_timeout: settings.resend_ticks.max(1),
            ..ServerConfig::default()
        };
        let cluster_config = ClusterConfig {
            configuration_id: 1,
            nodes: settings.members.clone(),
            flexible_quorum: None,
        };
        let mut op = OmniPaxosConfig {
            cluster_config,
            server_config,
        }
        .build(self.storage)
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        if op.get_promise().pid == settings.node_id && !catching_up {
            // This node had promised its own ballot (it led, or stood for election)
            // before it stopped. OmniPaxos 0.2.4 restarts it as a follower in recovery,
            // and its ballot leader election then elects that same ballot again, which
            // Sequence Paxos ignores (not above the promise): nobody leads it, the other
            // nodes ignore its requests (its ballot is above theirs), and the nodes that
            // promised it stay out of the cluster for good. Stand for election with a
            // higher ballot instead.
            op.try_become_leader();
        }
        let applied = self.machine.last_zxid() as usize;
        let mut log = PaxosLog::new(
            op,
            sync,
            settings.node_id,
            settings.log,
            applied,
            &settings.members,
        );
        if catching_up {
            tracing::info!(
                node = settings.node_id,
                promise = ?log.promise(),
                "catching up: this node joined with an empty data directory; it takes part in no quorum until a leader has synced its log to it"
            );
            log.set_catching_up();
        }
        Ok((self.machine, log))
    }
}

/// Opens the replicated storage in `dir` and rebuilds the state machine from it.
pub fn open_cluster(
    dir: &Path,
    wal_options: WalOptions,
    limits: MachineLimits,
    settings: ClusterSettings,
) -> Result<RecoveredCluster, ClusterError> {
    let config = PaxosStorageConfig {
        encode_checkpoints_in_background: true,
        ..PaxosStorageConfig::new(wal_options, limits)
    };
    open_cluster_on(&Disk::Real, dir, config, settings)
}

/// [`open_cluster`] on the given disk with the given storage settings (the simulator).
pub fn open_cluster_on(
    disk: &Disk,
    dir: &Path,
    config: PaxosStorageConfig,
    settings: ClusterSettings,
) -> Result<RecoveredCluster, ClusterError> {
    use omnipaxos::storage::Storage;
    let limits = config.limits;
    let storage = PaxosStorage::open_on(disk, dir, config)?;
    let fresh = storage.promise().is_none() && storage.log_end() == 0;
    // A node that joined with an empty disk has caught up once it accepted in some
    // round (the accepted round is written in one atomic record with the synced log).
    let mut catching_up = false;
    if join::has_marker(disk, dir) {
        let accepted = storage
            .get_accepted_round()
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?
            .unwrap_or_default();
        if accepted != Ballot::default() {
            join::remove_marker(disk, dir).map_err(|source| StorageError::Io {
                path: dir.join(join::MARKER_FILE).display().to_string(),
                source,
            })?;
        } else {
            catching_up = !fresh;
        }
    }
    #[cfg(any(test, feature = "sim"))]
    let mut replayed = Vec::new();
    let mut machine = match storage.snapshot() {
        Some(s) => s
            .clone()
            .into_machine_seeing(limits, |_entry, _applied| {
                #[cfg(any(test, feature = "sim"))]
                replayed.push((_entry.clone(), _applied));
            })
            .map_err(ClusterError::Snapshot)?,
        None => StateMachine::new(limits),
    };
    machine.set_limits(limits);
    let decided = storage.decided_idx();
    let from = machine.last_zxid() as usize;
    if from < decided {
        let entries = storage
            .get_entries(from, decided)
            .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        for entry in entries {
            let zxid = machine.last_zxid() + 1;
            let _applied = machine.apply(zxid, &entry);
            #[cfg(any(test, feature = "sim"))]
            replayed.push((entry, _applied));
        }
    }
    Ok(RecoveredCluster {
        machine,
        fresh,
        catching_up,
        #[cfg(any(test, feature = "sim"))]
        replayed,
        storage,
        settings,
        disk: disk.clone(),
        dir: dir.to_path_buf(),
    })
}
