//! Snapshot files: a checksummed image of the state machine at a log position,
//! written atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! # On-disk format
//!
//! One file per snapshot, named `snap-{index:020}.bin` so that names sort like numbers:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "CORLSNAP"
//!      8     4  format version, u32 LE (currently 1)
//!     12     8  index, u64 LE (must match the file name)
//!     20     8  data length, u64 LE (must match the file size minus the header)
//!     28     4  CRC-32 of the data, u32 LE
//!     32     4  CRC-32 of bytes 0..32 (the header above), u32 LE
//!     36     -  data
//! ```
//!
//! # Crash-safety argument
//!
//! `save` writes the whole file under a temporary name (`snap-{index:020}.bin.tmp`),
//! fsyncs it, renames it to its final name and fsyncs the directory. A crash before the
//! rename leaves only a temporary file, which `load_latest` ignores and removes; after the
//! rename the final name refers to complete, synced contents. Old snapshots are deleted
//! only after the new one is durable. Should a snapshot still be damaged later (bit rot, a
//! lying disk), `load_latest` falls back to the next older one that verifies, which is
//! only useful if the caller kept the log records after it: compact the log only up to
//! the *oldest* snapshot retained.

use crate::disk::Disk;
use crate::wal::{create_dir_durable, io_err, sync_dir, StorageError};
use std::path::{Path, PathBuf};

/// First bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"CORLSNAP";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header in front of the data.
pub const HEADER_BYTES: usize = 36;

const PREFIX: &str = "snap-";
const SUFFIX: &str = ".bin";
const TMP_SUFFIX: &str = ".tmp";
/// Appended to a snapshot that cannot be decoded when recovery skips it.
const DAMAGED_SUFFIX: &str = ".damaged";
const DIGITS: usize = 20;

/// A loaded snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// The position it covers (opaque to this module: the caller's log index or lsn).
    pub index: u64,
    /// The caller's bytes.
    pub data: Vec<u8>,
    /// Their CRC-32, as the header holds it (verified against them).
    pub crc: u32,
}

/// Writes a snapshot for `index` into `dir`, then keeps only the newest `keep` files.
///
/// Creates `dir` if needed. When this returns `Ok` the snapshot is durable. The snapshot
/// just written is never deleted, even with `keep == 0` or when newer snapshots exist;
/// saving the same index twice replaces the file atomically. A failure to delete old
/// snapshots is logged, not returned: the new snapshot is already durable.
pub fn save(dir: &Path, index: u64, data: &[u8], keep: usize) -> Result<(), StorageError> {
    save_on(&Disk::Real, dir, index, data, keep)
}

/// [`save`] on the given disk.
pub fn save_on(
    disk: &Disk,
    dir: &Path,
    index: u64,
    data: &[u8],
    keep: usize,
) -> Result<(), StorageError> {
    create_dir_durable(disk, dir, true)?;
    write_on(disk, dir, index, data, Durability::Synced)?;
    retain_newest(disk, dir, index, keep);
    Ok(())
}

/// Writes the snapshot for `index` into the existing directory `dir` (temporary file,
/// fsync, rename, fsync of the directory) and deletes no other; returns the CRC-32 of
/// `data`.
pub fn write_on(
    disk: &Disk,
    dir: &Path,
    index: u64,
    data: &[u8],
    durability: Durability,
) -> Result<u32, StorageError> {
    let fsync = durability != Durability::NotSynced;
    let name = snapshot_name(index);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let header = encode_header(index, data);
    if let Err(e) = write_file(disk, &tmp, &header, data, durability) {
        // Best effort: a leftover is also removed by `load_latest` and `indexes_on`.
        let _ = disk.remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = disk.rename(&tmp, &path) {
        let _ = disk.remove_file(&tmp);
        return Err(io_err(&path)(e));
    }
    if fsync {
        sync_dir(disk, dir)?;
    }
    Ok(read_u32(&header, 28))
}

/// Loads and verifies the snapshot for exactly `index` in `dir`.
pub fn load_on(disk: &Disk, dir: &Path, index: u64) -> Result<Snapshot, StorageError> {
    let path = dir.join(snapshot_name(index));
    let bytes = disk.read(&path).map_err(io_err(&path))?;
    decode(bytes, index)
        .map_err(|reason| StorageError::Corrupt(format!("{}: {reason}", path.display())))
}

/// Deletes the snapshot for `index` in `dir`. The deletion is not made durable: a file
/// that comes back after a crash is simply unreferenced.
pub fn remove_on(disk: &Disk, dir: &Path, index: u64) -> std::io::Result<()> {
    disk.remove_file(&dir.join(snapshot_name(index)))
}

/// The indexes of the snapshots in `dir`, oldest first; removes the temporary files a
/// crashed write left. Call it only while no write runs on the same directory.
pub fn indexes_on(disk: &Disk, dir: &Path) -> Result<Vec<u64>, StorageError> {
    let listing = list(disk, dir)?;
    for tmp in &listing.temporaries {
        tracing::warn!(path = %tmp.display(), "removing temporary snapshot file left by a crash");
        if let Err(e) = disk.remove_file(tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove temporary snapshot file");
        }
    }
    Ok(listing.snapshots.into_iter().map(|(i, _)| i).collect())
}

/// Loads the newest snapshot in `dir` whose checksum verifies (skipping damaged ones,
/// with a warning), or `None` if there is none (or `dir` does not exist).
///
/// Temporary files left by a crashed `save` are removed. Call it only while no `save`
/// runs on the same directory (at startup).
pub fn load_latest(dir: &Path) -> Result<Option<Snapshot>, StorageError> {
    load_latest_on(&Disk::Real, dir)
}

/// [`load_latest`] on the given disk.
pub fn load_latest_on(disk: &Disk, dir: &Path) -> Result<Option<Snapshot>, StorageError> {
    let listing = match list(disk, dir) {
        Ok(listing) => listing,
        Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    for tmp in &listing.temporaries {
        tracing::warn!(path = %tmp.display(), "removing temporary snapshot file left by a crash");
        if let Err(e) = disk.remove_file(tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove temporary snapshot file");
        }
    }
    for (index, path) in listing.snapshots.iter().rev() {
        let bytes = match disk.read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping unreadable snapshot");
                continue;
            }
        };
        match decode(bytes, *index) {
            Ok(snapshot) => return Ok(Some(snapshot)),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "skipping damaged snapshot");
                set_aside(disk, dir, path);
            }
        }
    }
    Ok(None)
}

/// Renames a damaged snapshot to `<name>.damaged` (kept for inspection): it no longer
/// counts as one of the snapshots a later save keeps, so the older good snapshot that
/// recovery fell back to, and that the log still reaches back to, is not deleted in its
/// place. Best effort: on failure the file stays and is skipped again next time.
fn set_aside(disk: &Disk, dir: &Path, path: &Path) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(DAMAGED_SUFFIX);
    let renamed = disk
        .rename(path, Path::new(&aside))
        .and_then(|()| disk.sync_dir(dir));
    match renamed {
        Ok(()) => tracing::warn!(path = ?aside, "damaged snapshot set aside"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot set a damaged snapshot aside")
        }
    }
}

fn snapshot_name(index: u64) -> String {
    format!("{PREFIX}{index:0width$}{SUFFIX}", width = DIGITS)
}

/// The index in a snapshot file name, or `None` if it is not one.
fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn encode_header(index: u64, data: &[u8]) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&index.to_le_bytes());
    header[20..28].copy_from_slice(&(data.len() as u64).to_le_bytes());
    header[28..32].copy_from_slice(&crc32fast::hash(data).to_le_bytes());
    let header_crc = crc32fast::hash(&header[0..32]);
    header[32..36].copy_from_slice(&header_crc.to_le_bytes());
    header
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Verifies a snapshot file's bytes and returns its contents, or why it is damaged.
fn decode(mut bytes: Vec<u8>, expected_index: u64) -> Result<Snapshot, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "file of {} bytes is shorter than the header",
            bytes.len()
        ));
    }
    if bytes[0..8] != MAGIC {
        return Err("bad magic".to_string());
    }
    let header_crc = read_u32(&bytes, 32);
    if crc32fast::hash(&bytes[0..32]) != header_crc {
        return Err("header checksum mismatch".to_string());
    }
    let version = read_u32(&bytes, 8);
    if version != FORMAT_VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    let index = read_u64(&bytes, 12);
    if index != expected_index {
        return Err(format!("header index {index} does not match the file name"));
    }
    let data_len = read_u64(&bytes, 20);
    let actual_len = (bytes.len() - HEADER_BYTES) as u64;
    if data_len != actual_len {
        return Err(format!(
            "header says {data_len} data bytes, file holds {actual_len}"
        ));
    }
    let crc = read_u32(&bytes, 28);
    if crc32fast::hash(&bytes[HEADER_BYTES..]) != crc {
        return Err("data checksum mismatch".to_string());
    }
    bytes.drain(..HEADER_BYTES);
    Ok(Snapshot {
        index,
        data: bytes,
        crc,
    })
}

/// How [`write_on`] makes a snapshot file durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Not synced at all (benchmarks of the CPU path): durable only once the operating
    /// system writes it back.
    NotSynced,
    /// Synced every [`SYNC_EVERY_BYTES`] and at the end.
    Synced,
    /// Like `Synced`, and after each of those syncs the writer waits as long as writing
    /// and syncing that part took: the file gets at most about half of the disk's time,
    /// and the write-ahead log's syncs on the same disk are not held up for long.
    Paced,
}

/// A snapshot file is synced after every this many bytes written.
pub const SYNC_EVERY_BYTES: usize = 4 << 20;

/// Creates (or truncates) `path`, writes `header` and `data`, and syncs it as
/// `durability` says.
///
/// The data is synced every [`SYNC_EVERY_BYTES`] rather than once at the end: one
/// `fsync` of a whole image (tens of megabytes) keeps the disk busy for a second, and
/// every sync of the write-ahead log on the same disk waits behind it.
fn write_file(
    disk: &Disk,
    path: &Path,
    header: &[u8],
    data: &[u8],
    durability: Durability,
) -> Result<(), StorageError> {
    let fsync =
        durability != Durability::NotSynced && !crate::faults::active().unsynced_snapshot_files;
    let mut file = disk.create_truncate(path).map_err(io_err(path))?;
    file.write_all(header).map_err(io_err(path))?;
    for chunk in data.chunks(SYNC_EVERY_BYTES) {
        let started = std::time::Instant::now();
        file.write_all(chunk).map_err(io_err(path))?;
        if fsync && chunk.len() == SYNC_EVERY_BYTES {
            file.sync_data().map_err(io_err(path))?;
            if durability == Durability::Paced {
                std::thread::sleep(started.elapsed());
            }
        }
    }
    if fsync {
        file.sync_all().map_err(io_err(path))?;
    }
    Ok(())
}

/// The snapshot and temporary files of a directory.
struct Listing {
    /// Sorted by index, oldest first.
    snapshots: Vec<(u64, PathBuf)>,
    temporaries: Vec<PathBuf>,
}

fn list(disk: &Disk, dir: &Path) -> Result<Listing, StorageError> {
    let mut listing = Listing {
        snapshots: Vec::new(),
        temporaries: Vec::new(),
    };
    for (name, path) in disk.list(dir).map_err(io_err(dir))? {
        let name = name.as_str();
        if let Some(index) = parse_snapshot_name(name) {
            listing.snapshots.push((index, path));
        } else if name.starts_with(PREFIX) && name.ends_with(TMP_SUFFIX) {
            listing.temporaries.push(path);
        }
    }
    listing.temporaries.sort();
    listing.snapshots.sort_by_key(|(index, _)| *index);
    Ok(listing)
}

/// Deletes all snapshots but the newest `keep` (at least one) and the one at `just_written`.
/// Failures are logged: the caller's snapshot is already durable.
fn retain_newest(disk: &Disk, dir: &Path, just_written: u64, keep: usize) {
    let listing = match list(disk, dir) {
        Ok(listing) => listing,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list snapshots for cleanup");
            return;
        }
    };
    let keep = keep.max(1);
    let mut removed = false;
    for (index, path) in listing.snapshots.iter().rev().skip(keep) {
        if *index == just_written {
            continue;
        }
        match disk.remove_file(path) {
            Ok(()) => removed = true,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete old snapshot");
            }
        }
    }
    if removed {
        if let Err(e) = sync_dir(disk, dir) {
            tracing::warn!(error = %e, "cannot fsync snapshot directory after cleanup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn indexes(dir: &Path) -> Vec<u64> {
        list(&Disk::Real, dir)
            .expect("list")
            .snapshots
            .iter()
            .map(|s| s.0)
            .collect()
    }

    fn load(dir: &Path) -> Option<Snapshot> {
        load_latest(dir).expect("load_latest")
    }

    fn path_of(dir: &Path, index: u64) -> PathBuf {
        dir.join(snapshot_name(index))
    }

    #[test]
    fn save_and_load_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a").join("snaps");
        assert!(load(&dir).is_none(), "missing directory means no snapshot");
        save(&dir, 42, b"state at 42", 3).expect("save");
        assert!(path_of(&dir, 42).exists());
        assert!(dir.join("snap-00000000000000000042.bin").exists());
        let snap = load(&dir).expect("a snapshot");
        assert_eq!(snap.index, 42);
        assert_eq!(snap.data, b"state at 42");

        save(&dir, 43, b"", 3).expect("save empty");
        let snap = load(&dir).expect("a snapshot");
        assert_eq!(snap.index, 43);
        assert!(snap.data.is_empty());
    }

    #[test]
    fn empty_directory_has_no_snapshot() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(load(tmp.path()).is_none());
    }

    #[test]
    fn keeps_only_the_newest_n() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for i in 1..=5u64 {
            save(tmp.path(), i * 10, format!("s{i}").as_bytes(), 2).expect("save");
        }
        assert_eq!(indexes(tmp.path()), vec![40, 50]);
        let snap = load(tmp.path()).expect("a snapshot");
        assert_eq!((snap.index, snap.data), (50, b"s5".to_vec()));

        // keep == 0 still keeps the one just written.
        save(tmp.path(), 60, b"s6", 0).expect("save");
        assert_eq!(indexes(tmp.path()), vec![60]);
    }

    #[test]
    fn never_deletes_the_snapshot_just_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        save(tmp.path(), 100, b"new", 1).expect("save");
        save(tmp.path(), 50, b"old", 1).expect("save");
        assert_eq!(indexes(tmp.path()), vec![50, 100]);
        assert_eq!(load(tmp.path()).expect("a snapshot").index, 100);
    }

    #[test]
    fn saving_the_same_index_replaces_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        save(tmp.path(), 7, b"first", 2).expect("save");
        save(tmp.path(), 7, b"second", 2).expect("save");
        assert_eq!(indexes(tmp.path()), vec![7]);
        assert_eq!(load(tmp.path()).expect("a snapshot").data, b"second");
    }

    #[test]
    fn damaged_newest_falls_back_to_older() {
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 6] = [
            ("data bit flip", |b| {
                let n = b.len();
                b[n - 1] ^= 1;
            }),
            ("header bit flip", |b| b[13] ^= 0x10),
            ("truncated data", |b| b.truncate(b.len() - 1)),
            ("truncated header", |b| b.truncate(10)),
            ("trailing garbage", |b| b.extend_from_slice(b"xx")),
            ("empty file", |b| b.clear()),
        ];
        for (what, damage) in damages {
            let tmp = tempfile::tempdir().expect("tempdir");
            save(tmp.path(), 1, b"older", 3).expect("save");
            save(tmp.path(), 2, b"newer state", 3).expect("save");
            let newest = path_of(tmp.path(), 2);
            let mut bytes = fs::read(&newest).expect("read");
            damage(&mut bytes);
            fs::write(&newest, bytes).expect("write");
            let snap = load(tmp.path()).expect("a snapshot");
            assert_eq!((snap.index, snap.data), (1, b"older".to_vec()), "{what}");
        }
    }

    #[test]
    fn renamed_snapshot_is_rejected() {
        let tmp = tempfile::tempdir().expect("tempdir");
        save(tmp.path(), 1, b"one", 3).expect("save");
        save(tmp.path(), 2, b"two", 3).expect("save");
        fs::copy(path_of(tmp.path(), 1), path_of(tmp.path(), 3)).expect("copy");
        assert_eq!(load(tmp.path()).expect("a snapshot").index, 2);
    }

    #[test]
    fn all_damaged_means_none() {
        let tmp = tempfile::tempdir().expect("tempdir");
        save(tmp.path(), 1, b"one", 3).expect("save");
        fs::write(path_of(tmp.path(), 1), b"garbage").expect("write");
        assert!(load(tmp.path()).is_none());
    }

    #[test]
    fn leftover_temp_file_is_ignored_and_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        save(tmp.path(), 5, b"five", 3).expect("save");
        // A crash during the save of index 9: a partial temporary file.
        let leftover = tmp.path().join(format!("{}{TMP_SUFFIX}", snapshot_name(9)));
        fs::write(&leftover, &encode_header(9, b"nine")[..20]).expect("write");
        let snap = load(tmp.path()).expect("a snapshot");
        assert_eq!((snap.index, snap.data), (5, b"five".to_vec()));
        assert!(!leftover.exists());

        // A later save of the same index is not disturbed by a leftover either.
        fs::write(&leftover, b"junk").expect("write");
        save(tmp.path(), 9, b"nine", 3).expect("save");
        assert!(!leftover.exists());
        assert_eq!(load(tmp.path()).expect("a snapshot").data, b"nine");
    }

    #[test]
    fn simulated_crash_keeps_saved_snapshots_only() {
        use crate::disk::SimDisk;
        let sim = SimDisk::new(5);
        let disk = Disk::Sim(sim.clone());
        let dir = Path::new("/data/snapshots");
        save_on(&disk, dir, 7, b"seven", 2).expect("save");
        // A save interrupted before its rename leaves only a temporary file.
        let tmp = dir.join(format!("{}{TMP_SUFFIX}", snapshot_name(9)));
        let mut f = disk.create_truncate(&tmp).expect("create");
        f.write_all(&encode_header(9, b"nine")).expect("write");
        sim.crash(&mut |n| (n, 0));
        let snap = load_latest_on(&disk, dir)
            .expect("load")
            .expect("a snapshot");
        assert_eq!((snap.index, snap.data), (7, b"seven".to_vec()));
        assert!(
            !disk.exists(&tmp),
            "the crash dropped the unsynced temporary file"
        );
    }

    #[test]
    fn written_files_survive_a_crash_and_are_listed_loaded_and_removed() {
        use crate::disk::SimDisk;
        let sim = SimDisk::new(6);
        let disk = Disk::Sim(sim.clone());
        let dir = Path::new("/data/images");
        create_dir_durable(&disk, dir, true).expect("dir");
        // Larger than a sync chunk, and not a multiple of one.
        let big: Vec<u8> = (0..2 * SYNC_EVERY_BYTES + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let crc = write_on(&disk, dir, 40, &big, Durability::Synced).expect("write");
        assert_eq!(crc, crc32fast::hash(&big));
        write_on(&disk, dir, 50, b"fifty", Durability::Synced).expect("write");
        // Not synced: gone (or damaged) after the crash.
        write_on(&disk, dir, 60, b"sixty", Durability::NotSynced).expect("write");
        sim.crash(&mut |n| (n, 0));
        assert_eq!(load_on(&disk, dir, 40).expect("load").data, big);
        assert!(
            load_on(&disk, dir, 60).is_err(),
            "an unsynced file is not durable"
        );
        remove_on(&disk, dir, 50).expect("remove");
        let listed = indexes_on(&disk, dir).expect("list");
        assert!(
            listed.starts_with(&[40]) && !listed.contains(&50),
            "{listed:?}"
        );
        assert!(matches!(
            load_on(&disk, dir, 50),
            Err(StorageError::Io { .. })
        ));
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_snapshot_name(&snapshot_name(0)), Some(0));
        assert_eq!(
            parse_snapshot_name(&snapshot_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_snapshot_name("snap-1.bin"), None);
        assert_eq!(
            parse_snapshot_name("snap-00000000000000000001.bin.tmp"),
            None
        );
    }
}
