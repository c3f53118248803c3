//! Backups: an image of the applied state machine at one zxid, saved with
//! `corralctl snapshot save FILE` (served by the admin endpoint's `/snapshot`), and the
//! restore that writes it into an empty data directory (`corral restore`).
//!
//! File format (little endian): the magic `CORRALBK`, a `u32` format version (1), the
//! `u64` zxid of the image, the `u64` length of the image, the `u32` CRC-32 of the
//! image, then the image (bincode of the state machine, as in snapshots).
//!
//! A restored node starts from the image as if it had applied every entry up to its
//! zxid: new entries get zxids (and fencing tokens) above it. Sessions in the image get
//! a full TTL when the node starts and expire unless their clients resume them.

use crate::config::Config;
use crate::machine::{MachineImage, MachineLimits, StateMachine};
use std::path::Path;

/// The first bytes of a backup file.
pub const MAGIC: &[u8; 8] = b"CORRALBK";
/// The format version written.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the image.
pub const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 4;

/// Why a backup cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a corral backup: {0}")]
    Format(String),
    #[error("the backup's image cannot be decoded: {0}")]
    Decode(String),
    #[error("{0}")]
    Io(String),
    #[error("the data directory {0} is not empty: restore only into a new or empty directory")]
    NotEmpty(String),
    #[error("{0}")]
    Storage(String),
}

/// Encodes the machine as a backup file's bytes.
pub fn encode(machine: &StateMachine) -> Result<Vec<u8>, String> {
    encode_image(&machine.image())
}

/// [`encode`] from an image of the machine ([`StateMachine::image`]), which can be
/// encoded away from the core.
pub fn encode_image(machine: &MachineImage) -> Result<Vec<u8>, String> {
    let image = bincode::serde::encode_to_vec(machine, bincode::config::standard())
        .map_err(|e| format!("cannot encode the state machine: {e}"))?;
    let mut out = Vec::with_capacity(HEADER_BYTES + image.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&machine.last_zxid().to_le_bytes());
    out.extend_from_slice(&(image.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&image).to_le_bytes());
    out.extend_from_slice(&image);
    Ok(out)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Checks a backup's header and checksum and decodes its machine.
pub fn decode(bytes: &[u8], limits: MachineLimits) -> Result<StateMachine, BackupError> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err(BackupError::Format("wrong magic".into()));
    }
    let version = le_u32(&bytes[8..]);
    if version != FORMAT_VERSION {
        return Err(BackupError::Format(format!(
            "format version {version}, this corral reads {FORMAT_VERSION}"
        )));
    }
    let zxid = le_u64(&bytes[12..]);
    let len = le_u64(&bytes[20..]);
    let crc = le_u32(&bytes[28..]);
    let image = &bytes[HEADER_BYTES..];
    if image.len() as u64 != len {
        return Err(BackupError::Format(format!(
            "the image has {} bytes, the header says {len} (truncated file?)",
            image.len()
        )));
    }
    if crc32fast::hash(image) != crc {
        return Err(BackupError::Format(
            "checksum mismatch (damaged file)".into(),
        ));
    }
    let (mut machine, _): (StateMachine, usize) =
        bincode::serde::decode_from_slice(image, bincode::config::standard())
            .map_err(|e| BackupError::Decode(e.to_string()))?;
    if machine.last_zxid() != zxid {
        return Err(BackupError::Format(format!(
            "the header says zxid {zxid}, the image is at {}",
            machine.last_zxid()
        )));
    }
    machine.set_limits(limits);
    Ok(machine)
}

/// Whether `dir` is missing or empty.
pub fn is_empty_dir(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(BackupError::Io(format!("{}: {e}", dir.display()))),
    }
}

/// Writes the backup `from` into `config.data_dir`, which must be missing or empty, as
/// the data directory of the node `config` describes (a single node, or a member of the
/// cluster in `config.peers`). Returns the zxid of the image. Start the node normally
/// afterwards; in a cluster, restore the same backup on every member first.
pub fn restore(config: &Config, from: &Path) -> Result<u64, BackupError> {
    let limits = MachineLimits {
        max_data_bytes: config.max_data_bytes,
        ..MachineLimits::default()
    };
    let bytes =
        std::fs::read(from).map_err(|e| BackupError::Io(format!("{}: {e}", from.display())))?;
    let machine = decode(&bytes, limits)?;
    let dir = &config.data_dir;
    if !is_empty_dir(dir)? {
        return Err(BackupError::NotEmpty(dir.display().to_string()));
    }
    let zxid = machine.last_zxid();
    let storage = |e: &dyn std::fmt::Display| BackupError::Storage(e.to_string());
    let members = config.peer_map().map_err(|e| storage(&e))?;
    if members.is_empty() {
        // A snapshot at the image's zxid and an empty log that continues after it.
        let image = &bytes[HEADER_BYTES..];
        crate::snapshot::save(
            &crate::storage::snapshot_dir(dir),
            zxid,
            image,
            crate::storage::SNAPSHOTS_KEPT,
        )
        .map_err(|e| storage(&e))?;
        crate::wal::create_empty_at(&dir.join("wal"), zxid + 1, true).map_err(|e| storage(&e))?;
    } else {
        // OmniPaxos storage whose log is compacted up to the image and decided there.
        use crate::replication::storage::{MachineSnapshot, PaxosStorage};
        use omnipaxos::storage::{Storage, StorageOp};
        let options = crate::wal::WalOptions {
            segment_bytes: config.wal_segment_bytes,
            fsync: true,
            preallocate_bytes: crate::wal::DEFAULT_PREALLOCATE_BYTES,
        };
        let mut s =
            PaxosStorage::open(&dir.join("paxos"), options, limits).map_err(|e| storage(&e))?;
        let snapshot = MachineSnapshot::from_machine(&machine).map_err(|e| storage(&e))?;
        let idx = zxid as usize;
        s.write_atomically(vec![
            StorageOp::Trim(idx),
            StorageOp::SetCompactedIdx(idx),
            StorageOp::SetSnapshot(Some(snapshot)),
            StorageOp::SetDecidedIndex(idx),
        ])
        .map_err(|e| storage(&format!("{e:?}")))?;
        s.sync().map_err(|e| storage(&e))?;
    }
    Ok(zxid)
}
