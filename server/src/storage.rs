//! The durable log of a single node: recovery at start-up, and the thread that persists
//! batches and snapshots for the node core.
//!
//! Layout of the data directory: `wal/` holds the write-ahead log (one record per log
//! entry; the record's lsn is the entry's log index, which is its zxid) and `snapshots/`
//! holds state machine images. Recovery loads the newest valid snapshot and replays the
//! records after it.

use crate::disk::Disk;
use crate::machine::{MachineImage, MachineLimits, StateMachine};
use crate::node::{decode_entry, Input};
use crate::snapshot;
use crate::wal::{StorageError, Wal, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// Snapshots kept on disk (the newest is used; older ones are fallbacks).
pub(crate) const SNAPSHOTS_KEPT: usize = 2;

/// What the storage thread is asked to do, in order.
#[derive(Debug)]
pub enum StorageCommand {
    /// Append these records, sync once, then report `Persisted { batch }`.
    Persist {
        batch: u64,
        records: Vec<Vec<u8>>,
        /// If set, the lsn the first record must get (single-node mode: lsn = index).
        first_lsn: Option<u64>,
        /// The first record is a checkpoint: compact the log before it once durable.
        starts_with_checkpoint: bool,
    },
    /// Encode and save a snapshot at `index`, then compact the log through it.
    Snapshot { index: u64, image: MachineImage },
    /// Cluster mode: make the replicated storage durable, then report `Persisted`.
    Sync { batch: u64 },
}

/// What the storage thread writes to.
#[derive(Debug)]
pub enum Backend {
    /// Single node: the write-ahead log of entries, and the snapshot recovery started from.
    Local {
        wal: Box<Wal>,
        snapshot_index: Option<u64>,
    },
    /// Cluster member: the replicated storage that OmniPaxos owns, synced through its handle.
    Paxos(crate::replication::storage::SyncHandle),
}

/// Group-commit figures, for logs and the issue notes.
#[derive(Debug, Default, Clone, Copy)]
pub struct StorageStats {
    /// Number of syncs (fsyncs when enabled).
    pub syncs: u64,
    /// Entries made durable.
    pub entries: u64,
    /// Total time spent in sync, microseconds.
    pub sync_micros: u64,
}

/// The state recovered from a data directory.
#[derive(Debug)]
pub struct Recovered {
    pub machine: StateMachine,
    pub wal: Wal,
    /// Entries replayed from the log on top of the snapshot.
    pub replayed: u64,
    /// The index of the snapshot recovery started from, if any.
    pub snapshot_index: Option<u64>,
    /// Bytes cut from a torn tail.
    pub truncated_bytes: u64,
}

/// Errors at start-up that stop the server with a clear message.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("snapshot {index} cannot be decoded: {reason}")]
    BadSnapshot { index: u64, reason: String },
    #[error("log record {lsn} cannot be decoded: {reason}")]
    BadRecord { lsn: u64, reason: String },
    #[error(
        "the log ends at index {log_end} but the newest snapshot is at {snapshot}; \
         records between them are missing"
    )]
    Gap { snapshot: u64, log_end: u64 },
    #[error(
        "the log starts at index {log_start} but the newest readable snapshot is at \
         {snapshot}; records between them are missing (a damaged or deleted snapshot?)"
    )]
    Missing { snapshot: u64, log_start: u64 },
}

fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

pub(crate) fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Loads the newest snapshot and replays the log after it.
pub fn recover(
    data_dir: &Path,
    limits: MachineLimits,
    wal_options: WalOptions,
) -> Result<Recovered, RecoveryError> {
    recover_on(&Disk::Real, data_dir, limits, wal_options)
}

/// [`recover`] on the given disk.
pub fn recover_on(
    disk: &Disk,
    data_dir: &Path,
    limits: MachineLimits,
    wal_options: WalOptions,
) -> Result<Recovered, RecoveryError> {
    let snap_dir = snapshot_dir(data_dir);
    // Durably: the data directory itself is created here on a first start, and a power
    // loss must not take it (and the log inside it) away after writes were acknowledged.
    crate::wal::create_dir_durable(disk, &snap_dir, wal_options.fsync)?;
    let mut snapshot_index = None;
    let mut machine = match snapshot::load_latest_on(disk, &snap_dir)? {
        Some(snap) => {
            snapshot_index = Some(snap.index);
            let (m, _): (StateMachine, usize) =
                bincode::serde::decode_from_slice(&snap.data, bincode::config::standard())
                    .map_err(|e| RecoveryError::BadSnapshot {
                        index: snap.index,
                        reason: e.to_string(),
                    })?;
            tracing::info!(index = snap.index, "loaded snapshot");
            let mut m: StateMachine = m;
            m.set_limits(limits);
            m
        }
        None => StateMachine::new(limits),
    };
    let (wal, found) = Wal::open_on(disk, &wal_dir(data_dir), wal_options)?;
    let snapshot_zxid = machine.last_zxid();
    if wal.last_lsn() < snapshot_zxid {
        return Err(RecoveryError::Gap {
            snapshot: snapshot_zxid,
            log_end: wal.last_lsn(),
        });
    }
    // The log must reach back to the snapshot: starting from an older snapshot (or none)
    // because the newest one is damaged, a log compacted past it would replay onto a
    // state with the entries between them missing, and the node would serve it.
    if wal.first_lsn() > snapshot_zxid + 1 {
        return Err(RecoveryError::Missing {
            snapshot: snapshot_zxid,
            log_start: wal.first_lsn(),
        });
    }
    let mut replayed = 0;
    for (lsn, bytes) in found.records {
        if lsn <= snapshot_zxid {
            continue;
        }
        let entry = decode_entry(&bytes).map_err(|e| RecoveryError::BadRecord {
            lsn,
            reason: e.to_string(),
        })?;
        machine.apply(lsn, &entry);
        replayed += 1;
    }
    Ok(Recovered {
        machine,
        wal,
        replayed,
        snapshot_index,
        truncated_bytes: found.truncated_bytes,
    })
}

/// Runs the storage loop on the current (dedicated) thread until `commands` closes.
/// Every outcome is reported to the node core through `report`.
pub fn run_storage_thread(
    data_dir: PathBuf,
    backend: Backend,
    commands: mpsc::Receiver<StorageCommand>,
    report: impl Fn(Input) -> bool,
) -> StorageStats {
    let (mut wal, snapshot_index) = match backend {
        Backend::Local {
            wal,
            snapshot_index,
        } => (wal, snapshot_index),
        Backend::Paxos(handle) => return run_paxos_sync(handle, commands, report),
    };
    let mut stats = StorageStats::default();
    let mut failed = false;
    // Indexes of the snapshots on disk, oldest first. The log is compacted only through
    // the oldest one, and only once there are `SNAPSHOTS_KEPT` of them, so that recovery
    // can fall back to it if the newest is damaged (with one, that would be the newest).
    let mut kept: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    kept.extend(snapshot_index);
    // Snapshots are encoded and written by their own thread so that a large one holds up
    // neither the core nor group commit; at most one is being written, a newer one
    // arriving meanwhile is skipped (the next one will come).
    let (snap_tx, snap_rx) = mpsc::sync_channel::<(u64, MachineImage)>(1);
    let (saved_tx, saved_rx) = mpsc::channel::<u64>();
    let snap_dir = snapshot_dir(&data_dir);
    let writer = std::thread::Builder::new()
        .name("corral-snapshot".into())
        .spawn(move || {
            while let Ok((index, image)) = snap_rx.recv() {
                let started = Instant::now();
                let saved = image.encode_snapshot().and_then(|data| {
                    snapshot::save(&snap_dir, index, &data, SNAPSHOTS_KEPT)
                        .map(|()| data.len())
                        .map_err(|e| e.to_string())
                });
                match saved {
                    Ok(bytes) => {
                        metrics::counter!(crate::metrics::SNAPSHOTS, "result" => "saved")
                            .increment(1);
                        tracing::info!(
                            index,
                            bytes,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "snapshot saved"
                        );
                        let _ = saved_tx.send(index);
                    }
                    // The log still has everything: a failed snapshot costs only recovery time.
                    Err(e) => {
                        metrics::counter!(crate::metrics::SNAPSHOTS, "result" => "failed")
                            .increment(1);
                        tracing::error!(index, error = %e, "snapshot failed")
                    }
                }
            }
        });
    let snap_tx = match writer {
        Ok(_) => Some(snap_tx),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the snapshot thread; snapshots are off");
            None
        }
    };
    while let Ok(command) = commands.recv() {
        while let Ok(index) = saved_rx.try_recv() {
            kept.push_back(index);
            while kept.len() > SNAPSHOTS_KEPT {
                kept.pop_front();
            }
            if let Some(oldest) = kept.front().filter(|_| kept.len() >= SNAPSHOTS_KEPT) {
                match wal.compact_through(*oldest) {
                    Ok(()) => metrics::counter!(crate::metrics::COMPACTIONS).increment(1),
                    Err(e) => tracing::warn!(error = %e, "log compaction failed"),
                }
            }
        }
        match command {
            StorageCommand::Persist {
                batch,
                records,
                first_lsn,
                starts_with_checkpoint,
            } => {
                if failed {
                    report(Input::PersistFailed {
                        error: "the log failed earlier".into(),
                    });
                    continue;
                }
                match persist(
                    &mut wal,
                    &records,
                    first_lsn,
                    starts_with_checkpoint,
                    &mut stats,
                ) {
                    Ok(()) => {
                        report(Input::Persisted { batch });
                    }
                    Err(e) => {
                        failed = true;
                        tracing::error!(error = %e, "write-ahead log failed");
                        report(Input::PersistFailed {
                            error: e.to_string(),
                        });
                    }
                }
            }
            StorageCommand::Sync { batch } => {
                tracing::error!(batch, "unexpected cluster sync on a single node");
            }
            StorageCommand::Snapshot { index, image } => {
                if let Some(tx) = &snap_tx {
                    if tx.try_send((index, image)).is_err() {
                        tracing::info!(
                            index,
                            "a snapshot is still being written; skipping this one"
                        );
                    }
                }
            }
        }
    }
    stats
}

/// The storage loop of a cluster member: each `Sync` makes everything OmniPaxos wrote
/// so far durable with one fsync.
fn run_paxos_sync(
    handle: crate::replication::storage::SyncHandle,
    commands: mpsc::Receiver<StorageCommand>,
    report: impl Fn(Input) -> bool,
) -> StorageStats {
    let mut stats = StorageStats::default();
    while let Ok(command) = commands.recv() {
        match command {
            StorageCommand::Sync { batch } => {
                let started = Instant::now();
                let before = handle.stats();
                if let Err(e) = handle.sync() {
                    // OmniPaxos cannot take back what it promised or accepted, and the
                    // next storage write would panic inside it: stop now, loudly, and
                    // let the restart recover from what the disk holds.
                    tracing::error!(error = %e, "syncing the replicated log failed; exiting");
                    eprintln!("corral: syncing the replicated log failed: {e}");
                    std::process::exit(70);
                }
                stats.syncs += 1;
                stats.sync_micros += started.elapsed().as_micros() as u64;
                let after = handle.stats();
                if after.syncs > before.syncs {
                    metrics::histogram!(crate::metrics::FSYNC_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!(crate::metrics::FSYNC_BATCH)
                        .record((after.records_appended - before.records_appended) as f64);
                }
                metrics::counter!(crate::metrics::COMPACTIONS).absolute(after.checkpoints);
                report(Input::Persisted { batch });
            }
            other => tracing::error!(?other, "unexpected storage command in cluster mode"),
        }
    }
    stats
}

/// Appends a batch, checks its first lsn, syncs once, and compacts before a checkpoint
/// (the storage thread's `Persist`; also used by the simulator).
pub(crate) fn persist(
    wal: &mut Wal,
    records: &[Vec<u8>],
    first_lsn: Option<u64>,
    starts_with_checkpoint: bool,
    stats: &mut StorageStats,
) -> Result<(), StorageError> {
    let mut first = None;
    for bytes in records {
        let lsn = wal.append(bytes)?;
        first.get_or_insert(lsn);
    }
    if let (Some(expected), Some(got)) = (first_lsn, first) {
        if expected != got {
            return Err(StorageError::Corrupt(format!(
                "log index {expected} would be written as record {got}"
            )));
        }
    }
    let started = Instant::now();
    wal.sync()?;
    metrics::histogram!(crate::metrics::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(crate::metrics::FSYNC_BATCH).record(records.len() as f64);
    if let (true, Some(first)) = (starts_with_checkpoint, first) {
        wal.compact_through(first - 1)?;
    }
    stats.syncs += 1;
    stats.entries += records.len() as u64;
    stats.sync_micros += started.elapsed().as_micros() as u64;
    Ok(())
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
