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
//!
//! # An interrupted restore
//!
//! A restore that stops half-way (killed, power cut, full disk) must leave a directory
//! that start refuses and that a second restore takes over:
//!
//! - A single node's restore writes the snapshot (a temporary file renamed into place)
//!   and then the empty log that continues after it. Until the log exists, start
//!   refuses the directory (the log does not reach the snapshot); before the snapshot
//!   is in place there is nothing of the image to start from. A second restore replaces
//!   a directory that holds nothing but this backup's snapshot, temporary snapshot
//!   files and log segments without a record ([`holds_only_this_restore`]): whatever
//!   state it is in, no node has written to it, so nothing is lost.
//! - A cluster member's restore builds its `paxos/` under [`PAXOS_STAGING`] and renames
//!   it into place at the end; a second restore removes a leftover staging directory.
//! - Both write the marker [`RESTORE_MARKER`] (durably) before anything else and remove
//!   it last. Start refuses a directory that holds it, whatever else is there (even
//!   nothing yet: a restore stopped before its snapshot was in place would otherwise
//!   start an empty node), and a second restore takes over everything in it.

use crate::config::Config;
use crate::machine::{MachineImage, MachineLimits, StateMachine};
use std::path::Path;

/// The first bytes of a backup file.
pub const MAGIC: &[u8; 8] = b"CORRALBK";
/// The format version written.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the image.
pub const HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 4;
/// Where a cluster member's restore builds its `paxos/` directory before renaming it
/// into place (inside the data directory: the same file system, even when the data
/// directory is a mount point).
pub const PAXOS_STAGING: &str = "paxos.restoring";
/// The file a restore keeps in the data directory while it runs: start refuses a
/// directory that holds it, and a restore replaces whatever such a directory holds.
pub const RESTORE_MARKER: &str = "RESTORE-IN-PROGRESS";

/// Why a backup cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a corral backup: {0}")]
    Format(String),
    #[error("the backup's image cannot be decoded: {0}")]
    Decode(String),
    #[error("{0}")]
    Io(String),
    #[error(
        "the data directory {0} is not empty: restore only into a new or empty directory \
         (or one that holds nothing but an unfinished restore of the same backup)"
    )]
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

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io(format!("{}: {e}", path.display()))
}

/// Whether `dir` holds nothing but (part of) what restoring a single node from this
/// backup writes, and no log record: entries `snapshots/` and `wal/` only; in
/// `snapshots/`, the snapshot at `zxid` holding exactly `image`, and temporary snapshot
/// files; in `wal/`, log segments of zero bytes only (an empty log, or one a refused
/// start created). No node has written to such a directory (every write is a log
/// record, and a snapshot of any other state differs from the image), so replacing it
/// with the restore loses nothing. Anything else, even a symbolic link, is not ours.
pub fn holds_only_this_restore(dir: &Path, zxid: u64, image: &[u8]) -> Result<bool, BackupError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(io_error(&path))?.is_dir();
        let ours = match entry.file_name().to_str() {
            Some("snapshots") if is_dir => snapshots_hold_only(&path, zxid, image)?,
            Some("wal") if is_dir => log_has_no_record(&path)?,
            _ => false,
        };
        if !ours {
            return Ok(false);
        }
    }
    Ok(true)
}

fn snapshots_hold_only(dir: &Path, zxid: u64, image: &[u8]) -> Result<bool, BackupError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if !entry.file_type().map_err(io_error(dir))?.is_file() {
            return Ok(false);
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Ok(false);
        };
        let Some(rest) = name.strip_prefix("snap-") else {
            return Ok(false);
        };
        if rest.ends_with(".tmp") {
            continue;
        }
        let index = rest
            .strip_suffix(".bin")
            .and_then(|d| d.parse::<u64>().ok());
        if index != Some(zxid) {
            return Ok(false);
        }
        match crate::snapshot::load_on(&crate::disk::Disk::Real, dir, zxid) {
            Ok(snapshot) if snapshot.data == image => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn log_has_no_record(dir: &Path) -> Result<bool, BackupError> {
    use std::io::Read;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let segment = name
            .to_str()
            .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"));
        if !segment || !entry.file_type().map_err(io_error(&path))?.is_file() {
            return Ok(false);
        }
        // Zeros are room a log writes ahead of its end; a record is never all zeros.
        let mut file = std::fs::File::open(&path).map_err(io_error(&path))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io_error(&path))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|b| *b != 0) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether `dir` holds nothing but a cluster member's unfinished restore: the staging
/// directory [`PAXOS_STAGING`].
fn holds_only_a_staged_restore(dir: &Path) -> Result<bool, BackupError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let is_dir = entry.file_type().map_err(io_error(dir))?.is_dir();
        if !(is_dir && entry.file_name() == PAXOS_STAGING) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes what an unfinished restore left in `dir` (which holds nothing else).
fn remove_unfinished_restore(dir: &Path) -> Result<(), BackupError> {
    for name in ["wal", "snapshots", PAXOS_STAGING] {
        let path = dir.join(name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Writes the backup `from` into `config.data_dir`, which must be missing or empty (or
/// hold nothing but an unfinished restore of the same backup, which is replaced: see
/// the module documentation), as the data directory of the node `config` describes (a
/// single node, or a member of the cluster in `config.peers`). Returns the zxid of the
/// image. Start the node normally afterwards; in a cluster, restore the same backup on
/// every member first.
pub fn restore(config: &Config, from: &Path) -> Result<u64, BackupError> {
    let limits = MachineLimits {
        max_data_bytes: config.max_data_bytes,
        ..MachineLimits::default()
    };
    let bytes =
        std::fs::read(from).map_err(|e| BackupError::Io(format!("{}: {e}", from.display())))?;
    let machine = decode(&bytes, limits)?;
    let dir = &config.data_dir;
    let zxid = machine.last_zxid();
    let image = &bytes[HEADER_BYTES..];
    let storage = |e: &dyn std::fmt::Display| BackupError::Storage(e.to_string());
    let members = config.peer_map().map_err(|e| storage(&e))?;
    let marker = dir.join(RESTORE_MARKER);
    if marker.is_file() {
        // Everything here is an unfinished restore's.
        remove_all_but(dir, RESTORE_MARKER)?;
    } else if !is_empty_dir(dir)? {
        let ours = if members.is_empty() {
            holds_only_this_restore(dir, zxid, image)?
        } else {
            holds_only_a_staged_restore(dir)?
        };
        if !ours {
            return Err(BackupError::NotEmpty(dir.display().to_string()));
        }
        remove_unfinished_restore(dir)?;
    }
    begin_restore_on(&crate::disk::Disk::Real, dir)?;
    if members.is_empty() {
        // A snapshot at the image's zxid, then an empty log that continues after it (in
        // this order: a snapshot without its log is refused by start).
        crate::snapshot::save(
            &crate::storage::snapshot_dir(dir),
            zxid,
            image,
            crate::storage::SNAPSHOTS_KEPT,
        )
        .map_err(|e| storage(&e))?;
        crate::wal::create_empty_at(&dir.join("wal"), zxid + 1, true).map_err(|e| storage(&e))?;
    } else {
        // OmniPaxos storage whose log is compacted up to the image and decided there,
        // built under a temporary name and renamed into place once durable.
        use crate::replication::storage::{MachineSnapshot, PaxosStorage};
        use omnipaxos::storage::{Storage, StorageOp};
        let options = crate::wal::WalOptions {
            segment_bytes: config.wal_segment_bytes,
            fsync: true,
            preallocate_bytes: crate::wal::DEFAULT_PREALLOCATE_BYTES,
        };
        let staging = dir.join(PAXOS_STAGING);
        let mut s = PaxosStorage::open(&staging, options, limits).map_err(|e| storage(&e))?;
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
        drop(s);
        let paxos = dir.join("paxos");
        std::fs::rename(&staging, &paxos).map_err(io_error(&paxos))?;
        sync_dir(dir)?;
    }
    std::fs::remove_file(&marker).map_err(io_error(&marker))?;
    sync_dir(dir)?;
    Ok(zxid)
}

/// Creates `dir` if needed and the marker [`RESTORE_MARKER`] in it, durably: the parent
/// of every directory created is fsynced, so that a power cut after the restore cannot
/// take the data directory away (the node would start as a new, empty one).
fn begin_restore_on(disk: &crate::disk::Disk, dir: &Path) -> Result<(), BackupError> {
    crate::wal::create_dir_durable(disk, dir, true)
        .map_err(|e| BackupError::Storage(e.to_string()))?;
    let marker = dir.join(RESTORE_MARKER);
    disk.create_truncate(&marker)
        .and_then(|mut f| f.sync_all())
        .map_err(io_error(&marker))?;
    crate::wal::sync_dir(disk, dir).map_err(|e| BackupError::Storage(e.to_string()))
}

/// Removes every entry of `dir` but `keep`.
fn remove_all_but(dir: &Path, keep: &str) -> Result<(), BackupError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if entry.file_name() == keep {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().map_err(io_error(&path))?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(io_error(&path))?;
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(dir: &Path, peers: &[&str]) -> Config {
        let mut args = vec!["corral", "--data-dir"];
        let dir = dir.to_str().expect("utf-8 path");
        args.push(dir);
        args.extend_from_slice(peers);
        Config::load(crate::config::Cli::parse_from(args)).expect("valid settings")
    }

    fn backup_file(dir: &Path) -> std::path::PathBuf {
        let file = dir.join("backup");
        let bytes = encode(&StateMachine::new(MachineLimits::default())).expect("encode");
        std::fs::write(&file, bytes).expect("write");
        file
    }

    #[test]
    fn only_an_untouched_restore_of_the_same_backup_is_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = backup_file(tmp.path());
        let bytes = std::fs::read(&file).expect("read");
        let image = &bytes[HEADER_BYTES..];
        let data = tmp.path().join("data");
        let config = config(&data, &[]);
        restore(&config, &file).expect("restore");
        assert!(holds_only_this_restore(&data, 0, image).expect("check"));
        // Again over its own work: replaced.
        restore(&config, &file).expect("restore over a restore nobody wrote to");

        // A log record (any byte that is not room) means a node wrote: refused.
        let segment = std::fs::read_dir(data.join("wal"))
            .expect("wal")
            .next()
            .expect("a segment")
            .expect("entry")
            .path();
        std::fs::write(&segment, [0, 0, 7, 0]).expect("write");
        assert!(!holds_only_this_restore(&data, 0, image).expect("check"));
        assert!(matches!(
            restore(&config, &file),
            Err(BackupError::NotEmpty(_))
        ));
        std::fs::write(&segment, [0u8; 16]).expect("write");
        assert!(holds_only_this_restore(&data, 0, image).expect("check"));

        // Another image, another snapshot index, or a file of someone else: refused.
        assert!(!holds_only_this_restore(&data, 0, b"another image").expect("check"));
        assert!(!holds_only_this_restore(&data, 5, image).expect("check"));
        std::fs::write(data.join("notes.txt"), b"mine").expect("write");
        assert!(!holds_only_this_restore(&data, 0, image).expect("check"));
        assert!(matches!(
            restore(&config, &file),
            Err(BackupError::NotEmpty(_))
        ));
    }

    /// A restore that stopped at any point leaves its marker: start refuses the
    /// directory (even one the restore had not written anything else to yet), and the
    /// next restore takes over whatever is there, a finished `paxos/` included.
    #[test]
    fn an_unfinished_restore_is_refused_by_start_and_taken_over_by_restore() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = backup_file(tmp.path());
        for peers in [
            &[][..],
            &["--node-id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"][..],
        ] {
            let data = tmp.path().join(format!("data-{}", peers.len()));
            let config = config(&data, peers);
            std::fs::create_dir_all(&data).expect("mkdir");
            std::fs::write(data.join(RESTORE_MARKER), b"").expect("marker");
            let refused = crate::server::check_layout(&data, !peers.is_empty())
                .expect_err("start refuses an unfinished restore");
            assert!(refused.to_string().contains("restore"), "{refused}");
            // What a stopped restore may have left: any of its files.
            std::fs::create_dir_all(data.join("paxos")).expect("mkdir");
            std::fs::create_dir_all(data.join("snapshots")).expect("mkdir");
            std::fs::write(data.join("snapshots").join("snap-x.tmp"), b"half").expect("write");
            restore(&config, &file).expect("restore takes over");
            assert!(!data.join(RESTORE_MARKER).exists());
            assert!(!data.join("snapshots").join("snap-x.tmp").exists());
            crate::server::check_layout(&data, !peers.is_empty()).expect("a finished restore");
        }
    }

    /// The data directory a restore creates must survive a power cut: the restore
    /// fsyncs the parent of every directory it creates, as the log does. It used to
    /// fsync only the new directory itself, so a power cut after a successful restore
    /// could take the whole directory (marker, snapshot and log) away, and the node then
    /// started as a new, empty one.
    #[test]
    fn the_data_directory_a_restore_creates_survives_a_power_cut() {
        use crate::disk::{Disk, SimDisk};
        let sim = SimDisk::new(1);
        let disk = Disk::Sim(sim.clone());
        crate::wal::create_dir_durable(&disk, Path::new("/srv"), true).expect("mkdir");
        let dir = Path::new("/srv/corral/data");
        begin_restore_on(&disk, dir).expect("begin");
        sim.crash(&mut |_| (0, 0));
        assert!(
            disk.exists(&dir.join(RESTORE_MARKER)),
            "the data directory and its marker are gone after a power cut"
        );
    }

    #[test]
    fn a_member_restore_replaces_its_leftover_staging_directory_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = backup_file(tmp.path());
        let data = tmp.path().join("data");
        let config = config(
            &data,
            &["--node-id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"],
        );
        std::fs::create_dir_all(data.join(PAXOS_STAGING)).expect("mkdir");
        std::fs::write(data.join(PAXOS_STAGING).join("wal-x.log"), b"half").expect("write");
        restore(&config, &file).expect("restore over an unfinished one");
        assert!(data.join("paxos").is_dir());
        assert!(!data.join(PAXOS_STAGING).exists());
        assert!(matches!(
            restore(&config, &file),
            Err(BackupError::NotEmpty(_))
        ));
    }
}
