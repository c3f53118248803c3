//! Replication over OmniPaxos: the replicated log around OmniPaxos ([`log`]), its durable
//! storage on the write-ahead log ([`storage`]), and the peer transport ([`transport`]).

pub mod log;
pub mod storage;
pub mod transport;

use crate::disk::Disk;
use crate::machine::{MachineLimits, StateMachine};
use crate::wal::{StorageError, WalOptions};
use log::{PaxosLog, PaxosSettings};
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::{ClusterConfig, OmniPaxosConfig, ServerConfig};
use std::path::Path;
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

/// A cluster member recovered from its data directory, before OmniPaxos runs.
pub struct RecoveredCluster {
    /// The state machine: the stored snapshot plus every decided entry after it.
    pub machine: StateMachine,
    /// Whether the data directory held no Paxos state at all (a new or wiped node).
    pub fresh: bool,
    storage: PaxosStorage,
    settings: ClusterSettings,
}

impl std::fmt::Debug for RecoveredCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveredCluster")
            .field("zxid", &self.machine.last_zxid())
            .field("fresh", &self.fresh)
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
    /// acceptor, having forgotten its promise, otherwise would).
    pub fn start(
        mut self,
        adopt_promise: Option<Ballot>,
    ) -> Result<(StateMachine, PaxosLog), ClusterError> {
        use omnipaxos::storage::Storage;
        if let Some(ballot) = adopt_promise {
            self.storage
                .set_promise(ballot)
                .map_err(|e| ClusterError::Snapshot(e.to_string()))?;
            self.storage.sync()?;
        }
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
        if op.get_promise().pid == settings.node_id {
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
        let peers = settings
            .members
            .iter()
            .filter(|m| **m != settings.node_id)
            .count();
        let log = PaxosLog::new(op, sync, settings.node_id, peers, settings.log, applied);
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
    let config = PaxosStorageConfig::new(wal_options, limits);
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
    let mut machine = match storage.snapshot() {
        Some(s) => s
            .clone()
            .into_machine(limits)
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
            machine.apply(zxid, &entry);
        }
    }
    Ok(RecoveredCluster {
        machine,
        fresh,
        storage,
        settings,
    })
}
