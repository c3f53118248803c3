//! The sizes of the data directory's log and snapshots, as status reports and metrics
//! give them, measured off the core task.
//!
//! Measuring walks directories (a `readdir` and a `stat` per file). Done on the core
//! task for every status request (each `/metrics` scrape, each `ServerStatus`), a slow
//! or stuck disk would stall every client with it. A task measures instead, at start-up
//! and then every [`REFRESH`] on a blocking thread, and the core reads the latest
//! figures; a measurement that hangs stops the refreshes, never the core.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the sizes are measured again.
pub(super) const REFRESH: Duration = Duration::from_secs(1);

/// The latest sizes, shared between the measuring task and the core.
#[derive(Debug, Default)]
pub(super) struct DiskUsage {
    log_bytes: AtomicU64,
    snapshot_bytes: AtomicU64,
}

impl DiskUsage {
    /// Measures `data_dir` once (on a blocking thread) and starts a task that measures
    /// it again every [`REFRESH`] for as long as the returned value is alive.
    pub(super) async fn start(data_dir: PathBuf) -> Arc<DiskUsage> {
        let usage = Arc::new(DiskUsage::default());
        refresh(&data_dir, &usage).await;
        let weak = Arc::downgrade(&usage);
        tokio::spawn(keep_measuring(data_dir, weak));
        usage
    }

    /// Bytes of the write-ahead log on disk (a single node's `wal/`, or a member's
    /// `paxos/`).
    pub(super) fn log_bytes(&self) -> u64 {
        self.log_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of snapshot files on disk.
    pub(super) fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }
}

async fn keep_measuring(data_dir: PathBuf, usage: Weak<DiskUsage>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(usage) = usage.upgrade() else {
            return; // the server is gone
        };
        refresh(&data_dir, &usage).await;
    }
}

async fn refresh(data_dir: &Path, usage: &DiskUsage) {
    let dir = data_dir.to_path_buf();
    let measured = tokio::task::spawn_blocking(move || measure(&dir)).await;
    match measured {
        Ok((log, snapshots)) => {
            usage.log_bytes.store(log, Ordering::Relaxed);
            usage.snapshot_bytes.store(snapshots, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!("measuring the data directory failed: {e}"),
    }
}

/// (log bytes, snapshot bytes) of the data directory.
fn measure(data_dir: &Path) -> (u64, u64) {
    (
        dir_bytes(&data_dir.join("wal")) + dir_bytes(&data_dir.join("paxos")),
        dir_bytes(&crate::storage::snapshot_dir(data_dir)),
    )
}

/// Bytes of the files under `dir` (0 if it does not exist).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sizes_are_measured_at_start_and_the_task_ends_with_its_owner() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("paxos/sub")).expect("mkdir");
        std::fs::write(dir.path().join("paxos/a"), [0u8; 100]).expect("write");
        std::fs::write(dir.path().join("paxos/sub/b"), [0u8; 20]).expect("write");
        std::fs::create_dir_all(crate::storage::snapshot_dir(dir.path())).expect("mkdir");
        std::fs::write(crate::storage::snapshot_dir(dir.path()).join("s"), [0u8; 7])
            .expect("write");
        let usage = DiskUsage::start(dir.path().to_path_buf()).await;
        assert_eq!((usage.log_bytes(), usage.snapshot_bytes()), (120, 7));
        let weak = Arc::downgrade(&usage);
        drop(usage);
        assert!(
            weak.upgrade().is_none(),
            "the task holds no strong reference"
        );
        assert_eq!(measure(&dir.path().join("missing")), (0, 0));
    }
}
