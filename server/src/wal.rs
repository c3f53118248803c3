//! Append-only, checksummed write-ahead log in segment files.
//!
//! Records are opaque byte strings numbered by the log with a log sequence number (lsn)
//! starting at 1. Appends are buffered; `sync` writes them and `fdatasync`s once (group
//! commit). On open, a torn or corrupt tail of the last segment is detected and cut.

use std::path::Path;

/// Errors of the log; all IO errors are reported, never panicked on.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt log: {0}")]
    Corrupt(String),
}

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// Start a new segment once the current one reaches this size.
    pub segment_bytes: u64,
    /// Call `fdatasync` in `sync` (turn off only for tests and benchmarks of the CPU path).
    pub fsync: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            fsync: true,
        }
    }
}

/// What `open` found.
#[derive(Debug)]
pub struct Recovered {
    /// Every intact record, oldest first, with its lsn.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Bytes cut from a torn or corrupt tail (0 if the log was clean).
    pub truncated_bytes: u64,
}

/// The log.
#[derive(Debug)]
pub struct Wal {}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and recovers its records.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), StorageError> {
        let _ = (dir, options);
        unimplemented!()
    }

    /// Buffers a record; returns its lsn. Not durable until `sync`.
    pub fn append(&mut self, record: &[u8]) -> Result<u64, StorageError> {
        let _ = record;
        unimplemented!()
    }

    /// Writes buffered records and makes them durable (one fdatasync).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        unimplemented!()
    }

    /// The lsn of the last appended record (0 if none).
    pub fn last_lsn(&self) -> u64 {
        unimplemented!()
    }

    /// Deletes whole segments whose records all have lsn <= `lsn` (after a snapshot).
    pub fn compact_through(&mut self, lsn: u64) -> Result<(), StorageError> {
        let _ = lsn;
        unimplemented!()
    }

    /// Total bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        unimplemented!()
    }
}
