//! Append-only, checksummed write-ahead log in segment files.
//!
//! Records are opaque byte strings numbered by the log with a log sequence number (lsn)
//! starting at 1. Appends are buffered; `sync` writes them and `fdatasync`s once (group
//! commit). On open, a torn or corrupt tail of the last segment is detected and cut.
//!
//! # On-disk format
//!
//! The log is a directory of segment files. Each segment is named after the lsn of its
//! first record, zero-padded to 20 digits so that names sort like numbers:
//! `wal-00000000000000000001.log`, `wal-00000000000000000213.log`, ... Files with other
//! names are ignored. A segment is a plain sequence of records, with no file header:
//!
//! ```text
//! +----------------+----------------+---------------------+
//! | len: u32 LE    | crc: u32 LE    | payload: len bytes  |
//! +----------------+----------------+---------------------+
//!   crc = CRC-32 (IEEE, crc32fast) of the 4 length bytes followed by the payload
//! ```
//!
//! The lsn of a record is not stored: it is the segment's first lsn plus the record's
//! position in the segment. Lsns are contiguous across segments; a segment that does not
//! start where the previous one ended is corruption. A payload is at most
//! [`MAX_RECORD_BYTES`]; a larger length field is never valid. An all-zero header is never
//! a valid record (the CRC-32 of four zero bytes is not zero), so zeros can never be
//! mistaken for a record.
//!
//! **Preallocated room.** Behind the last record of the active segment the file may hold
//! zeros ([`WalOptions::preallocate_bytes`]): each batch is written at the segment's
//! logical end (`pwrite`, not an append), and when one reaches past the room, the next
//! stretch of zeros is written with it. Zeros from the first undecodable header to the
//! end of a file are the clean end of its records, in any segment; anything else there
//! is damage, as before. `open` cuts the room of the active segment (the file then ends
//! at its records) and writes new room with the next batch.
//!
//! # Crash-safety argument
//!
//! * `sync` writes one batch at the logical end of the active (last) segment, in order
//!   and contiguously: one `write` of framed records, or, for a record appended with
//!   shared parts ([`Wal::append_parts`], a snapshot image), one of its header and one per
//!   part, read from the shared buffers (plus, past the preallocated room, one write of
//!   zeros after the batch), and then one `fdatasync`. The bytes are the same as if the
//!   record had been framed into the buffer. Only after `fdatasync` returns are the
//!   batch's lsns reported durable (`synced_lsn`). A crash before that can leave any
//!   part of the batch, or garbage, or zeros at the end of the last segment, never in an
//!   earlier one. A batch written into
//!   room overwrites only zeros that no record was ever read from; a crash that tears it
//!   leaves records, then garbage or zeros, as at a file's end. Room that cannot be
//!   written (a full disk) is skipped with a warning: the batch before it is written and
//!   synced all the same, and the batches after it extend the file.
//! * A new segment is created only when a batch is about to be written and the active
//!   segment is full: at that point every byte of the old segment is already synced. The
//!   new file is created empty and the directory is fsynced before any record is written
//!   into it, so a synced record can never live in a file whose directory entry is lost.
//!   Hence every non-last segment is complete, and damage there is real data loss: `open`
//!   fails with [`StorageError::Corrupt`] naming the file and offset instead of cutting.
//! * In the last segment, `open` keeps the longest prefix of intact records and truncates
//!   the rest (`set_len`, then `fsync`), logging a warning and reporting the count in
//!   [`Recovered::truncated_bytes`]. The cut is made durable before new records are
//!   appended, so stale bytes can never reappear behind new records. A crash leaves
//!   each sector of the unsynced batch written or zero, so damage followed by an intact
//!   record is a torn write only if the damaged record shows an unwritten (zero) sector;
//!   otherwise it is damage to synced records (bit rot, a stray write), and `open` fails
//!   with [`StorageError::Corrupt`] instead of cutting acknowledged records. Damage that
//!   no intact record follows cannot be told from a torn tail and is cut.
//! * Compaction deletes whole segments oldest first and fsyncs the directory after each
//!   deletion, so a crash leaves a contiguous suffix of segments (no gap), and never
//!   touches the active segment.
//! * Creating the log directory fsyncs its parent (and every newly created ancestor's
//!   parent), so the directory itself survives a crash.
//!
//! # Failure policy
//!
//! After any IO error in `sync` the log is *poisoned*: the state of the file and of the
//! kernel's page cache is unknown (on Linux a failed `fsync` may drop the dirty pages and
//! clear the error, so a retried `fsync` can succeed without the data being on disk).
//! Every later `append`, `sync` and `compact_through` returns [`StorageError::Poisoned`];
//! the records of the failed batch and any buffered after it must be treated as *not*
//! durable (some of them may still turn up after a reopen, like any unacknowledged
//! write). The only way forward is to drop the `Wal` and [`Wal::open`] the directory
//! again, which recovers whatever is intact on disk.
//!
//! Records buffered but not synced when the `Wal` is dropped are lost; `Drop` does not
//! sync. The log does not lock its directory: only one process may open it at a time.

use crate::disk::{Disk, DiskFile};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest payload of one record, in bytes. Larger appends are rejected, and a larger
/// length field found during recovery marks the record as torn or corrupt.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Bytes of framing in front of every payload (length and checksum).
pub const RECORD_HEADER_BYTES: usize = 8;

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";
const SEGMENT_DIGITS: usize = 20;

/// After a sync, a batch buffer that grew beyond this is shrunk back, so that one huge
/// batch does not pin its memory forever.
const RETAINED_BUFFER_BYTES: usize = 1 << 20;

/// Errors of the log; all IO errors are reported, never panicked on.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operating-system call failed on `path`.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data on disk is damaged where damage cannot be explained by a crash.
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// `append` was given a record larger than [`MAX_RECORD_BYTES`].
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Size of the rejected record.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier `sync` failed; the log must be dropped and reopened.
    #[error("write-ahead log failed earlier and must be reopened")]
    Poisoned,
}

/// Maps an `io::Error` to [`StorageError::Io`] naming `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Fsyncs a directory, making the creation, renaming or deletion of its entries durable.
pub(crate) fn sync_dir(disk: &Disk, dir: &Path) -> Result<(), StorageError> {
    disk.sync_dir(dir).map_err(io_err(dir))
}

/// Creates `dir` and any missing ancestors; when `fsync`, fsyncs the parent of every
/// directory it created so that the new directories survive a crash.
pub(crate) fn create_dir_durable(disk: &Disk, dir: &Path, fsync: bool) -> Result<(), StorageError> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(p) = cursor {
        if p.as_os_str().is_empty() || disk.exists(p) {
            break;
        }
        missing.push(p);
        cursor = p.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    disk.create_dir_all(dir).map_err(io_err(dir))?;
    if fsync {
        // Outermost first: its parent existed before.
        for created in missing.iter().rev() {
            let parent = match created.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(disk, parent)?;
        }
    }
    Ok(())
}

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// Start a new segment once the current one reaches this size. A segment can exceed
    /// it by at most one batch: batches are never split across segments.
    pub segment_bytes: u64,
    /// Call `fdatasync` in `sync` (turn off only for tests and benchmarks of the CPU path).
    /// Also governs the directory fsyncs.
    pub fsync: bool,
    /// Zero-filled room written ahead of the end of the active segment, this many bytes
    /// at a time, whenever a batch reaches past it (0: none). An `fdatasync` of records
    /// written into room that already exists changes no file metadata, so the file
    /// system needs no journal commit for it: one commit per this many bytes instead of
    /// one per sync (as ZooKeeper's `preAllocSize` and etcd's segment preallocation do).
    /// Must be 0 on the simulated disk, which only appends.
    pub preallocate_bytes: u64,
}

/// The default [`WalOptions::preallocate_bytes`].
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 1 << 20;

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            fsync: true,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
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

/// One segment file as the open log knows it.
#[derive(Debug)]
struct Segment {
    /// Lsn of its first record (also its name).
    first_lsn: u64,
    path: PathBuf,
    /// Bytes written and synced into it.
    bytes: u64,
    /// The file's length: `bytes` plus the zero-filled room ahead of them (active
    /// segment only; see [`WalOptions::preallocate_bytes`]).
    allocated: u64,
}

/// The log.
#[derive(Debug)]
pub struct Wal {
    disk: Disk,
    dir: PathBuf,
    options: WalOptions,
    /// Oldest first; never empty; the last one is the active segment.
    segments: Vec<Segment>,
    /// Handle of the active segment, shared with the [`PendingSync`]s that write to it: a
    /// sync opens no file handle of its own, so running out of them (EMFILE) cannot fail
    /// the log.
    active: Arc<DiskFile>,
    /// Records appended since the last sync, before those in `buf`: pieces closed by a
    /// record with shared parts ([`Wal::append_parts`]).
    pieces: Vec<Piece>,
    /// Framed records appended since the last sync, after `pieces`.
    buf: Vec<u8>,
    /// The buffer of the last batch, given back by `finish_sync` for the next one.
    spare: Vec<u8>,
    /// Lsn the next `append` returns.
    next_lsn: u64,
    /// Highest lsn known to be durable.
    synced_lsn: u64,
    /// Between [`Wal::begin_sync`] and [`Wal::finish_sync`].
    sync_in_flight: bool,
    poisoned: bool,
}

/// A piece of a record given to [`Wal::append_parts`]: bytes of its own, or a range of a
/// shared buffer, which is read when the batch is written instead of being copied into
/// the log's buffer (a snapshot's image, tens of megabytes, is not copied on the caller's
/// thread).
#[derive(Debug, Clone)]
pub enum Part {
    /// Bytes of its own.
    Owned(Vec<u8>),
    /// `range` of a shared buffer (an out-of-bounds range reads as nothing).
    Shared(Arc<Vec<u8>>, Range<usize>),
}

impl Part {
    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Part::Owned(v) => v,
            Part::Shared(buf, range) => buf.get(range.clone()).unwrap_or_default(),
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Buffered records of one batch, in log order.
#[derive(Debug)]
enum Piece {
    /// Framed records, headers included.
    Framed(Vec<u8>),
    /// One record whose header (length, checksum) is computed when it is written.
    Record(Vec<Part>),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Framed(bytes) => bytes.len(),
            Piece::Record(parts) => {
                RECORD_HEADER_BYTES + parts.iter().map(Part::len).sum::<usize>()
            }
        }
    }
}

/// The write and the `fdatasync` of one batch that [`Wal::begin_sync`] placed in the
/// active segment and left to do, on the segment's shared handle.
#[derive(Debug)]
pub struct PendingSync {
    file: Arc<DiskFile>,
    path: PathBuf,
    /// Where the batch goes in the segment.
    offset: u64,
    /// The records, in order.
    batch: Vec<Piece>,
    /// Zeros to write behind the batch: the next stretch of preallocated room (0: none).
    room_bytes: u64,
    fsync: bool,
    /// Every record up to this lsn is durable once the sync succeeds.
    through_lsn: u64,
}

impl PendingSync {
    /// Writes the batch (one `write` per piece: framed records, or the header and each
    /// part of a record with shared parts; then one of zeros past the preallocated room)
    /// and runs the `fdatasync` (none when fsync is off). Needs no access to the log.
    pub fn wait(&mut self) -> Result<(), StorageError> {
        let mut at = self.offset;
        for piece in &self.batch {
            match piece {
                Piece::Framed(bytes) => write_at(&self.file, &self.path, at, bytes)?,
                Piece::Record(parts) => {
                    let len = parts.iter().map(Part::len).sum::<usize>();
                    // Checked by `append_parts`.
                    let len_bytes = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
                    let mut crc = crc32fast::Hasher::new();
                    crc.update(&len_bytes);
                    for part in parts {
                        crc.update(part.bytes());
                    }
                    let mut header = [0u8; RECORD_HEADER_BYTES];
                    header[..4].copy_from_slice(&len_bytes);
                    header[4..].copy_from_slice(&crc.finalize().to_le_bytes());
                    write_at(&self.file, &self.path, at, &header)?;
                    let mut part_at = at + RECORD_HEADER_BYTES as u64;
                    for part in parts {
                        write_at(&self.file, &self.path, part_at, part.bytes())?;
                        part_at += part.len() as u64;
                    }
                }
            }
            at += piece.len() as u64;
        }
        if self.room_bytes > 0 {
            // The syncs of the batches that follow then change no file metadata (the
            // `fdatasync` below makes this one's new length durable too). The room only
            // saves time: when it cannot be written (a full disk, a file size limit),
            // the batch itself is written all the same, the `fdatasync` below decides
            // whether it is durable, and the next batches extend the file as they go.
            let zeros = vec![0u8; usize::try_from(self.room_bytes).unwrap_or(usize::MAX)];
            if let Err(e) = write_at(&self.file, &self.path, at, &zeros) {
                tracing::warn!(
                    path = %self.path.display(),
                    room_bytes = self.room_bytes,
                    error = %e,
                    "cannot preallocate room in the log segment; writing on without it"
                );
            }
        }
        if self.fsync {
            self.file.sync_data().map_err(io_err(&self.path))?;
        }
        Ok(())
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and recovers its records.
    ///
    /// A torn or corrupt tail of the last segment is cut (and the cut made durable); damage
    /// anywhere else, or a gap in the lsns between segments, is [`StorageError::Corrupt`].
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), StorageError> {
        Wal::open_on(&Disk::Real, dir, options)
    }

    /// [`Wal::open`] on the given disk (the simulator's, or the real one).
    pub fn open_on(
        disk: &Disk,
        dir: &Path,
        options: WalOptions,
    ) -> Result<(Wal, Recovered), StorageError> {
        create_dir_durable(disk, dir, options.fsync)?;
        let found = list_segments(disk, dir)?;

        if found.is_empty() {
            let path = dir.join(segment_name(1));
            let active = create_segment(disk, dir, &path, options.fsync)?;
            let wal = Wal {
                disk: disk.clone(),
                dir: dir.to_path_buf(),
                options,
                segments: vec![Segment {
                    first_lsn: 1,
                    path,
                    bytes: 0,
                    allocated: 0,
                }],
                active: Arc::new(active),
                pieces: Vec::new(),
                buf: Vec::new(),
                spare: Vec::new(),
                next_lsn: 1,
                synced_lsn: 0,
                sync_in_flight: false,
                poisoned: false,
            };
            let recovered = Recovered {
                records: Vec::new(),
                truncated_bytes: 0,
            };
            return Ok((wal, recovered));
        }

        let last_index = found.len() - 1;
        let mut records = Vec::new();
        let mut segments = Vec::with_capacity(found.len());
        let mut truncated_bytes = 0u64;
        let mut expected: Option<u64> = None;
        let mut active = None;

        for (i, (first_lsn, path)) in found.into_iter().enumerate() {
            if first_lsn == 0 {
                return Err(StorageError::Corrupt(format!(
                    "{}: segment claims to start at lsn 0",
                    path.display()
                )));
            }
            if let Some(expected) = expected {
                if first_lsn != expected {
                    return Err(StorageError::Corrupt(format!(
                        "{}: segment starts at lsn {first_lsn} but the previous segment ends \
                         before lsn {expected}",
                        path.display()
                    )));
                }
            }
            let is_last = i == last_index;

            let (bytes, mut file) = if is_last {
                let mut file = disk.open_write(&path).map_err(io_err(&path))?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).map_err(io_err(&path))?;
                (bytes, Some(file))
            } else {
                (disk.read(&path).map_err(io_err(&path))?, None)
            };

            let scan = scan(&bytes);
            let valid_len = scan.valid_len as u64;
            let damaged = scan.damage.is_some();
            if let Some(reason) = scan.damage {
                let offset = scan.valid_len;
                match file {
                    Some(_) if scan.not_torn => {
                        return Err(StorageError::Corrupt(format!(
                            "{}: {reason} at offset {offset}, and intact records follow it: \
                             damage to synced records, not a torn write (cutting there would \
                             drop {} bytes of records that were acknowledged)",
                            path.display(),
                            bytes.len() - offset
                        )));
                    }
                    Some(ref mut f) => {
                        let cut = bytes.len() as u64 - valid_len;
                        tracing::warn!(
                            path = %path.display(),
                            offset,
                            cut_bytes = cut,
                            kept_records = scan.records.len(),
                            %reason,
                            "cutting torn tail of the write-ahead log"
                        );
                        f.set_len(valid_len).map_err(io_err(&path))?;
                        if options.fsync {
                            f.sync_all().map_err(io_err(&path))?;
                        }
                        truncated_bytes = cut;
                    }
                    None => {
                        return Err(StorageError::Corrupt(format!(
                            "{}: {reason} at offset {offset} in a sealed segment",
                            path.display()
                        )));
                    }
                }
            }

            let mut lsn = first_lsn;
            for payload in scan.records {
                records.push((lsn, payload));
                lsn = lsn.checked_add(1).ok_or_else(|| {
                    StorageError::Corrupt(format!("{}: lsn overflow", path.display()))
                })?;
            }
            expected = Some(lsn);
            if !damaged && (bytes.len() as u64) > valid_len {
                // The zero-filled room preallocated ahead of the records (a clean end):
                // cut it, so that the file ends at its records again; new room is written
                // with the next batch.
                if let Some(ref mut f) = file {
                    tracing::debug!(
                        path = %path.display(),
                        room = bytes.len() as u64 - valid_len,
                        "cutting the preallocated room of the active log segment"
                    );
                    f.set_len(valid_len).map_err(io_err(&path))?;
                    if options.fsync {
                        f.sync_all().map_err(io_err(&path))?;
                    }
                }
            }
            segments.push(Segment {
                first_lsn,
                path,
                bytes: valid_len,
                allocated: valid_len,
            });
            if let Some(f) = file {
                active = Some(f);
            }
        }

        let (Some(active), Some(next_lsn)) = (active, expected) else {
            // Unreachable: the loop ran at least once and its last iteration set both.
            return Err(StorageError::Corrupt(
                "internal error: no active segment after recovery".to_string(),
            ));
        };
        let wal = Wal {
            disk: disk.clone(),
            dir: dir.to_path_buf(),
            options,
            segments,
            active: Arc::new(active),
            pieces: Vec::new(),
            buf: Vec::new(),
            spare: Vec::new(),
            next_lsn,
            synced_lsn: next_lsn - 1,
            sync_in_flight: false,
            poisoned: false,
        };
        Ok((
            wal,
            Recovered {
                records,
                truncated_bytes,
            },
        ))
    }

    /// Buffers a record; returns its lsn. Not durable until `sync`.
    ///
    /// Fails with [`StorageError::RecordTooLarge`] (consuming no lsn) if the record is
    /// larger than [`MAX_RECORD_BYTES`], and with [`StorageError::Poisoned`] after a failed
    /// sync.
    pub fn append(&mut self, record: &[u8]) -> Result<u64, StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        let too_large = StorageError::RecordTooLarge {
            len: record.len(),
            max: MAX_RECORD_BYTES,
        };
        if record.len() > MAX_RECORD_BYTES {
            return Err(too_large);
        }
        let len = u32::try_from(record.len()).map_err(|_| too_large)?;
        let len_bytes = len.to_le_bytes();
        self.buf.reserve(RECORD_HEADER_BYTES + record.len());
        self.buf.extend_from_slice(&len_bytes);
        self.buf
            .extend_from_slice(&record_crc(len_bytes, record).to_le_bytes());
        self.buf.extend_from_slice(record);
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Buffers a record made of `parts`, like [`Wal::append`]. Shared parts are not
    /// copied: their bytes are read when the batch is written (the buffers must not
    /// change meanwhile, which an `Arc<Vec<u8>>` nobody can mutate guarantees).
    pub fn append_parts(&mut self, parts: Vec<Part>) -> Result<u64, StorageError> {
        if !parts.iter().any(|p| matches!(p, Part::Shared(..))) {
            return self.append(&concat(&parts));
        }
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        let len = parts.iter().map(Part::len).sum::<usize>();
        if len > MAX_RECORD_BYTES {
            return Err(StorageError::RecordTooLarge {
                len,
                max: MAX_RECORD_BYTES,
            });
        }
        if !self.buf.is_empty() {
            let framed = std::mem::take(&mut self.buf);
            self.pieces.push(Piece::Framed(framed));
        }
        self.pieces.push(Piece::Record(parts));
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Writes buffered records and makes them durable (one fdatasync).
    ///
    /// If the active segment is full, a new one is created first. On error the log is
    /// poisoned (see the module documentation): the batch is not durable and every later
    /// call fails until the log is reopened.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        match self.begin_sync()? {
            Some(mut pending) => {
                let result = pending.wait();
                self.finish_sync(pending, result)
            }
            None => Ok(()),
        }
    }

    /// The first half of [`Wal::sync`]: places the buffered records at the end of the
    /// active segment (rotating first if it is full) and returns the write and the
    /// `fdatasync` still to do, on the segment's shared handle, so that the caller can
    /// run them without holding whatever guards this log (appends may continue
    /// meanwhile: they are buffered for the next sync; a batch of a large snapshot takes
    /// a while to write). `None` if nothing is buffered. The records are durable only once
    /// [`PendingSync::wait`] succeeded and [`Wal::finish_sync`] took its result; until
    /// then `synced_lsn` does not cover them and no other sync may begin.
    pub fn begin_sync(&mut self) -> Result<Option<PendingSync>, StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        if self.sync_in_flight {
            return Err(StorageError::Corrupt(
                "a write-ahead log sync began while another was in flight".to_string(),
            ));
        }
        if self.buf.is_empty() && self.pieces.is_empty() {
            return Ok(None);
        }
        match self.write_batch() {
            Ok(pending) => {
                self.sync_in_flight = true;
                Ok(Some(pending))
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// The second half of [`Wal::sync`]: records the outcome of the pending `fdatasync`.
    /// On success every record written by [`Wal::begin_sync`] is durable; on failure the
    /// log is poisoned.
    pub fn finish_sync(
        &mut self,
        pending: PendingSync,
        result: Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.sync_in_flight = false;
        if let Some(Piece::Framed(mut framed)) = pending.batch.into_iter().last() {
            framed.clear();
            if framed.capacity() > RETAINED_BUFFER_BYTES {
                framed.shrink_to(RETAINED_BUFFER_BYTES);
            }
            self.spare = framed;
        }
        if let Err(e) = result {
            return Err(self.poison(e));
        }
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        self.synced_lsn = self.synced_lsn.max(pending.through_lsn);
        Ok(())
    }

    fn poison(&mut self, e: StorageError) -> StorageError {
        self.poisoned = true;
        self.buf = Vec::new();
        self.pieces = Vec::new();
        tracing::error!(error = %e, "write-ahead log sync failed; the log is poisoned");
        e
    }

    fn write_batch(&mut self) -> Result<PendingSync, StorageError> {
        if self.active_segment().bytes > 0
            && self.active_segment().bytes >= self.options.segment_bytes
        {
            self.rotate()?;
        }
        let segment = self.active_segment();
        let path = segment.path.clone();
        let (offset, allocated) = (segment.bytes, segment.allocated);
        let file = Arc::clone(&self.active);
        let mut batch = std::mem::take(&mut self.pieces);
        let framed = std::mem::replace(&mut self.buf, std::mem::take(&mut self.spare));
        if !framed.is_empty() || batch.is_empty() {
            batch.push(Piece::Framed(framed));
        }
        let written = batch.iter().map(Piece::len).sum::<usize>() as u64;
        let end = offset + written;
        let room = self.options.preallocate_bytes;
        let room_bytes = if room > 0 && end > allocated { room } else { 0 };
        if let Some(segment) = self.segments.last_mut() {
            segment.bytes += written;
            if room_bytes > 0 {
                segment.allocated = end + room_bytes;
            }
        }
        Ok(PendingSync {
            file,
            path,
            offset,
            batch,
            room_bytes,
            fsync: self.options.fsync,
            through_lsn: self.next_lsn - 1,
        })
    }

    /// Starts a new, empty segment for the records from `synced_lsn + 1` on. Called only
    /// when everything before is synced.
    fn rotate(&mut self) -> Result<(), StorageError> {
        let first_lsn = self.synced_lsn + 1;
        let path = self.dir.join(segment_name(first_lsn));
        let file = create_segment(&self.disk, &self.dir, &path, self.options.fsync)?;
        self.segments.push(Segment {
            first_lsn,
            path,
            bytes: 0,
            allocated: 0,
        });
        self.active = Arc::new(file);
        Ok(())
    }

    fn active_segment(&self) -> &Segment {
        // `segments` is never empty: `open` creates or finds at least one and
        // compaction never removes the last.
        &self.segments[self.segments.len() - 1]
    }

    /// The lsn of the last appended record (0 if none).
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// The lsn of the last record known to be durable (written and synced).
    pub fn synced_lsn(&self) -> u64 {
        self.synced_lsn
    }

    /// The lsn of the oldest record still on disk; `last_lsn() + 1` when compaction or
    /// recovery left no record.
    pub fn first_lsn(&self) -> u64 {
        self.segments[0].first_lsn
    }

    /// Deletes whole segments whose records all have lsn <= `lsn` (after a snapshot).
    ///
    /// The active segment is never deleted. Segments go oldest first with a directory fsync
    /// after each, so a crash in the middle leaves no gap.
    pub fn compact_through(&mut self, lsn: u64) -> Result<(), StorageError> {
        self.detach_through(lsn)?.delete()
    }

    /// [`Wal::compact_through`] in two halves: the log stops counting the segments here,
    /// and the files are deleted by [`ObsoleteSegments::delete`], which needs no access to
    /// the log (a caller holding a lock around it can release it first: deleting segments
    /// of 64 MiB with a directory fsync after each took the core's writes 85 to 250 ms
    /// of waiting under a stream of 1 MiB writes).
    pub fn detach_through(&mut self, lsn: u64) -> Result<ObsoleteSegments, StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        let mut paths = Vec::new();
        while self.segments.len() > 1 {
            let last_of_oldest = self.segments[1].first_lsn.saturating_sub(1);
            if last_of_oldest > lsn {
                break;
            }
            paths.push(self.segments.remove(0).path);
        }
        Ok(ObsoleteSegments {
            disk: self.disk.clone(),
            dir: self.dir.clone(),
            paths,
            fsync: self.options.fsync,
        })
    }

    /// Total bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// Segments the log no longer counts ([`Wal::detach_through`]), to delete oldest first.
#[derive(Debug)]
#[must_use = "the segments stay on disk until deleted"]
pub struct ObsoleteSegments {
    disk: Disk,
    dir: PathBuf,
    paths: Vec<PathBuf>,
    fsync: bool,
}

impl ObsoleteSegments {
    /// Whether there is nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Adds segments detached later (newer ones), to delete after these.
    pub fn extend(&mut self, later: ObsoleteSegments) {
        self.paths.extend(later.paths);
    }

    /// Deletes the segments oldest first, with a directory fsync after each, so that a
    /// crash in the middle leaves no gap. A segment that cannot be deleted stops the
    /// deletion: it and the later ones stay on disk, older records than the log needs,
    /// until the log is opened again and compacts them.
    pub fn delete(self) -> Result<(), StorageError> {
        for path in &self.paths {
            match self.disk.remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path)(e)),
            }
            tracing::debug!(path = %path.display(), "compacted write-ahead log segment");
            if self.fsync {
                sync_dir(&self.disk, &self.dir)?;
            }
        }
        Ok(())
    }
}

/// The checksum stored with a record: CRC-32 of the length bytes, then the payload.
/// Writes `bytes` at `at` (nothing for no bytes).
fn write_at(file: &DiskFile, path: &Path, at: u64, bytes: &[u8]) -> Result<(), StorageError> {
    if bytes.is_empty() {
        return Ok(());
    }
    file.write_at(at, bytes).map_err(io_err(path))
}

/// The bytes of `parts`, one after the other.
fn concat(parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(Part::len).sum());
    for part in parts {
        out.extend_from_slice(part.bytes());
    }
    out
}

fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_bytes);
    hasher.update(payload);
    hasher.finalize()
}

fn segment_name(first_lsn: u64) -> String {
    format!(
        "{SEGMENT_PREFIX}{first_lsn:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

/// The first lsn encoded in a segment file name, or `None` if it is not one.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files in `dir`, sorted by first lsn.
fn list_segments(disk: &Disk, dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    for (name, path) in disk.list(dir).map_err(io_err(dir))? {
        let name = name.as_str();
        match parse_segment_name(name) {
            Some(lsn) => found.push((lsn, path)),
            None if name.starts_with(SEGMENT_PREFIX) && name.ends_with(SEGMENT_SUFFIX) => {
                tracing::warn!(file = name, "ignoring file with a malformed segment name");
            }
            None => {}
        }
    }
    found.sort_by_key(|(lsn, _)| *lsn);
    Ok(found)
}

/// Creates a new, empty segment file and makes its directory entry durable.
/// Creates, in a directory without segments, an empty log whose first record will get
/// lsn `first_lsn` (a restored node's log continues after its snapshot).
pub fn create_empty_at(dir: &Path, first_lsn: u64, fsync: bool) -> Result<(), StorageError> {
    let disk = Disk::Real;
    create_dir_durable(&disk, dir, fsync)?;
    if !list_segments(&disk, dir)?.is_empty() {
        return Err(StorageError::Corrupt(format!(
            "{}: the log already has segments",
            dir.display()
        )));
    }
    let path = dir.join(segment_name(first_lsn.max(1)));
    let file = create_segment(&disk, dir, &path, fsync)?;
    drop(file);
    Ok(())
}

fn create_segment(
    disk: &Disk,
    dir: &Path,
    path: &Path,
    fsync: bool,
) -> Result<DiskFile, StorageError> {
    let file = disk.create_new_write(path).map_err(io_err(path))?;
    if fsync {
        sync_dir(disk, dir)?;
    }
    Ok(file)
}

/// The result of parsing one segment's bytes.
struct Scan {
    /// Payloads of the intact records, in order.
    records: Vec<Vec<u8>>,
    /// Length of the prefix made of intact records.
    valid_len: usize,
    /// Why parsing stopped before the end of the bytes, if it did. Zeros up to the end
    /// (preallocated room) are a clean end, not damage: an all-zero header is never a
    /// valid record, and a torn write that left zeros *and* other bytes is damage.
    damage: Option<String>,
    /// The damage cannot be a torn write: intact records follow it (see
    /// [`damage_is_not_torn`]).
    not_torn: bool,
}

fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        match decode(&bytes[offset..]) {
            Ok((payload, used)) => {
                records.push(payload.to_vec());
                offset += used;
            }
            Err(reason) => {
                let room = bytes[offset..].iter().all(|b| *b == 0);
                return Scan {
                    records,
                    valid_len: offset,
                    not_torn: !room && damage_is_not_torn(bytes, offset),
                    damage: (!room).then_some(reason),
                };
            }
        }
    }
    Scan {
        records,
        valid_len: offset,
        damage: None,
        not_torn: false,
    }
}

/// Sectors are written whole: a crash during a write leaves each 512-byte sector of it
/// either written or as it was (zeros: preallocated room, or a file extended first).
const SECTOR_BYTES: usize = 512;

/// Whether the undecodable record at `at` cannot be the work of a write a crash
/// interrupted: it is complete (its length fits the file) and an intact record follows
/// it, yet none of its bytes shows an unwritten sector (zeros from its start up to a
/// sector boundary, or a whole zero sector inside it). An interrupted write leaves the
/// bytes of its batch written or zero, so a record of it that fails its checksum while a
/// later one reached the disk has zeros where a sector was not written; other damage
/// before an intact record happened to synced bytes (bit rot, a stray write).
///
/// Damage that no intact record follows (the last record, a length running past the
/// end, a length over the limit) is taken as a torn tail: it cannot be told apart from
/// one, as the module documentation says.
fn damage_is_not_torn(bytes: &[u8], at: usize) -> bool {
    let Some(header) = bytes.get(at..at + RECORD_HEADER_BYTES) else {
        return false;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_RECORD_BYTES {
        return false;
    }
    let end = at + RECORD_HEADER_BYTES + len;
    if end > bytes.len() || decode(&bytes[end..]).is_err() {
        return false;
    }
    let span = &bytes[at..end];
    // Zeros from the record's first byte up to a sector boundary.
    let leading_zeros = span.iter().take_while(|b| **b == 0).count();
    let next_boundary = (at / SECTOR_BYTES + 1) * SECTOR_BYTES;
    if at + leading_zeros >= next_boundary {
        return false;
    }
    // A whole zero sector inside the record.
    let mut sector = next_boundary;
    while sector + SECTOR_BYTES <= end {
        if bytes[sector..sector + SECTOR_BYTES].iter().all(|b| *b == 0) {
            return false;
        }
        sector += SECTOR_BYTES;
    }
    true
}

/// Decodes the record at the start of `rest`: its payload and its framed size, or why it
/// is not intact.
fn decode(rest: &[u8]) -> Result<(&[u8], usize), String> {
    let Some(header) = rest.get(..RECORD_HEADER_BYTES) else {
        return Err(format!(
            "incomplete record header ({} of {RECORD_HEADER_BYTES} bytes)",
            rest.len()
        ));
    };
    let len_bytes = [header[0], header[1], header[2], header[3]];
    let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_RECORD_BYTES {
        return Err(format!(
            "record length {len} exceeds the limit of {MAX_RECORD_BYTES}"
        ));
    }
    let end = RECORD_HEADER_BYTES + len;
    let Some(payload) = rest.get(RECORD_HEADER_BYTES..end) else {
        return Err(format!(
            "incomplete record ({} of {len} payload bytes)",
            rest.len() - RECORD_HEADER_BYTES
        ));
    };
    let crc = record_crc(len_bytes, payload);
    if crc != stored_crc {
        return Err(format!(
            "checksum mismatch (stored {stored_crc:08x}, computed {crc:08x})"
        ));
    }
    Ok((payload, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs::{self, OpenOptions};

    fn opts(segment_bytes: u64, fsync: bool) -> WalOptions {
        WalOptions {
            segment_bytes,
            fsync,
            preallocate_bytes: 0,
        }
    }

    fn with_room(segment_bytes: u64, room: u64) -> WalOptions {
        WalOptions {
            preallocate_bytes: room,
            ..opts(segment_bytes, false)
        }
    }

    /// Appends and syncs records `from..to` (20-byte payloads) one sync each.
    fn append_synced(wal: &mut Wal, from: u64, to: u64) {
        for i in from..to {
            let lsn = wal.append(&payload(i, 20)).expect("append");
            assert_eq!(lsn, i);
            wal.sync().expect("sync");
        }
    }

    fn payloads(rec: &Recovered) -> Vec<(u64, Vec<u8>)> {
        rec.records.clone()
    }

    /// A sync writes and syncs through the segment's shared handle: it opens none of its
    /// own (each one used to `dup` the segment's, so a process out of file handles, EMFILE,
    /// failed its log like a failing disk).
    #[test]
    fn a_sync_opens_no_file_handle() {
        use crate::disk::SimDisk;
        let sim = SimDisk::new(5);
        let disk = Disk::Sim(sim.clone());
        let dir = Path::new("/wal");
        let (mut wal, _) = Wal::open_on(&disk, dir, opts(1 << 20, true)).expect("open");
        let before = sim.stats().handles_opened;
        append_synced(&mut wal, 1, 101);
        assert_eq!(sim.stats().handles_opened, before, "no handle per sync");
        drop(wal);
        let (_, rec) = Wal::open_on(&disk, dir, opts(1 << 20, true)).expect("reopen");
        assert_eq!(rec.records.len(), 100);
    }

    /// A disk too full for the preallocated room still takes the batches: the room is
    /// skipped (it used to fail the sync, and with it the log, though the batch fit).
    #[test]
    fn a_disk_without_space_for_the_room_still_takes_the_batches() {
        use crate::disk::{SimDisk, SimDiskFaults};
        let sim = SimDisk::new(4);
        let disk = Disk::Sim(sim.clone());
        let dir = Path::new("/wal");
        sim.set_faults(SimDiskFaults {
            capacity_bytes: Some(16 << 10),
            ..SimDiskFaults::default()
        });
        let options = WalOptions {
            segment_bytes: 1 << 20,
            fsync: true,
            preallocate_bytes: 1 << 20,
        };
        let (mut wal, _) = Wal::open_on(&disk, dir, options).expect("open");
        for i in 1..=10 {
            let lsn = wal.append(&payload(i, 20)).expect("append");
            assert_eq!(lsn, i);
            wal.sync()
                .expect("a batch that fits is durable without its room");
        }
        drop(wal);
        let (_, rec) = Wal::open_on(&disk, dir, options).expect("reopen");
        let want: Vec<(u64, Vec<u8>)> = (1..=10).map(|i| (i, payload(i, 20))).collect();
        assert_eq!(payloads(&rec), want);
        // A batch that does not fit still fails.
        let (mut wal, _) = Wal::open_on(&disk, dir, options).expect("reopen");
        wal.append(&payload(11, 32 << 10)).expect("append");
        assert!(wal.sync().is_err(), "no room for the batch itself");
    }

    #[test]
    fn preallocated_room_is_a_clean_end_and_new_records_go_into_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let (mut wal, _) = open(dir, with_room(1 << 20, 4096));
        append_synced(&mut wal, 1, 11);
        let seg = segment_files(dir)[0].1.clone();
        // 10 records of 28 framed bytes, and room up to 4,096 bytes past the first batch.
        assert_eq!(wal.disk_bytes(), 280);
        assert_eq!(file_len(&seg), 28 + 4096);
        drop(wal);

        let (mut wal, rec) = open(dir, with_room(1 << 20, 4096));
        assert_eq!(rec.truncated_bytes, 0, "room is not damage");
        let want: Vec<(u64, Vec<u8>)> = (1..11).map(|i| (i, payload(i, 20))).collect();
        assert_eq!(payloads(&rec), want);
        assert_eq!(file_len(&seg), 280, "open cuts the room");
        append_synced(&mut wal, 11, 21);
        drop(wal);

        let (_, rec) = open(dir, with_room(1 << 20, 4096));
        let want: Vec<(u64, Vec<u8>)> = (1..21).map(|i| (i, payload(i, 20))).collect();
        assert_eq!(payloads(&rec), want);
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn a_record_with_shared_parts_is_written_in_place_between_framed_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let (mut wal, _) = open(dir, with_room(1 << 20, 64));
        let image = Arc::new((0..200u8).collect::<Vec<u8>>());
        assert_eq!(wal.append(b"before").expect("append"), 1);
        let parts = vec![
            Part::Owned(b"<".to_vec()),
            Part::Shared(image.clone(), 10..150),
            Part::Owned(b">".to_vec()),
        ];
        assert_eq!(wal.append_parts(parts).expect("parts"), 2);
        assert_eq!(wal.append(b"after").expect("append"), 3);
        // Parts without a shared buffer are a plain record.
        let plain = vec![Part::Owned(b"a".to_vec()), Part::Owned(b"b".to_vec())];
        assert_eq!(wal.append_parts(plain).expect("plain"), 4);
        wal.sync().expect("sync");
        let big = MAX_RECORD_BYTES + 1;
        let too_large = vec![Part::Shared(Arc::new(vec![0; big]), 0..big)];
        assert!(matches!(
            wal.append_parts(too_large),
            Err(StorageError::RecordTooLarge { .. })
        ));
        drop(wal);

        let (_, rec) = open(dir, with_room(1 << 20, 64));
        let middle = [&b"<"[..], &image[10..150], &b">"[..]].concat();
        assert_eq!(
            payloads(&rec),
            vec![
                (1, b"before".to_vec()),
                (2, middle),
                (3, b"after".to_vec()),
                (4, b"ab".to_vec())
            ]
        );
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn a_torn_batch_in_preallocated_room_is_cut() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let (mut wal, _) = open(dir, with_room(1 << 20, 4096));
        append_synced(&mut wal, 1, 6);
        drop(wal);
        let seg = segment_files(dir)[0].1.clone();
        // A batch torn by a crash: part of a record in the room, zeros after it.
        modify_file(&seg, |b| b[140..150].copy_from_slice(&[7u8; 10]));
        let (mut wal, rec) = open(dir, with_room(1 << 20, 4096));
        assert_eq!(rec.records.len(), 5);
        assert!(rec.truncated_bytes > 0, "garbage in the room is damage");
        assert_eq!(file_len(&seg), 140);
        append_synced(&mut wal, 6, 8);
        drop(wal);
        let (_, rec) = open(dir, with_room(1 << 20, 4096));
        let want: Vec<(u64, Vec<u8>)> = (1..8).map(|i| (i, payload(i, 20))).collect();
        assert_eq!(payloads(&rec), want);
    }

    #[test]
    fn sealed_segments_keep_their_room_and_read_back_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        // 100-byte segments (four records each) with 64 bytes of room at a time: every
        // sealed segment ends in zeros.
        let (mut wal, _) = open(dir, with_room(100, 64));
        append_synced(&mut wal, 1, 14);
        drop(wal);
        let files = segment_files(dir);
        assert_eq!(files.len(), 4);
        assert!(
            file_len(&files[0].1) > 112,
            "a sealed segment keeps its room"
        );
        let (wal, rec) = open(dir, with_room(100, 64));
        assert_eq!(rec.truncated_bytes, 0);
        let want: Vec<(u64, Vec<u8>)> = (1..14).map(|i| (i, payload(i, 20))).collect();
        assert_eq!(payloads(&rec), want);
        // Garbage after the zeros of a sealed segment is still corruption.
        drop(wal);
        let len = file_len(&files[0].1) as usize;
        modify_file(&files[0].1, |b| b[len - 1] = 1);
        match Wal::open(dir, with_room(100, 64)) {
            Err(StorageError::Corrupt(msg)) => assert!(msg.contains("sealed"), "{msg}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    fn payload(i: u64, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
    }

    fn open(dir: &Path, o: WalOptions) -> (Wal, Recovered) {
        Wal::open(dir, o).expect("open wal")
    }

    fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
        list_segments(&Disk::Real, dir).expect("list segments")
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).expect("metadata").len()
    }

    fn truncate_file(path: &Path, len: u64) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(len))
            .expect("truncate");
    }

    fn modify_file(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(path).expect("read");
        f(&mut bytes);
        fs::write(path, bytes).expect("write");
    }

    /// Payload size used by `build_standard`: framed records are 28 bytes.
    const STD_PAYLOAD: usize = 20;
    const STD_RECORDS: u64 = 10;

    /// Ten 20-byte records synced one by one with 100-byte segments: segments hold lsns
    /// 1-4, 5-8 and 9-10. Returns the records.
    fn build_standard(dir: &Path) -> Vec<(u64, Vec<u8>)> {
        let (mut wal, rec) = open(dir, opts(100, false));
        assert!(rec.records.is_empty());
        let mut expected = Vec::new();
        for i in 1..=STD_RECORDS {
            let p = payload(i, STD_PAYLOAD);
            assert_eq!(wal.append(&p).expect("append"), i);
            wal.sync().expect("sync");
            expected.push((i, p));
        }
        let segs = segment_files(dir);
        assert_eq!(
            segs.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![1, 5, 9],
            "unexpected segment layout"
        );
        expected
    }

    #[test]
    fn simulated_crash_keeps_synced_records_and_cuts_a_torn_batch() {
        use crate::disk::SimDisk;
        let sim = SimDisk::new(3);
        let disk = Disk::Sim(sim.clone());
        let dir = Path::new("/data/wal");
        let mut expected = Vec::new();
        {
            let (mut wal, rec) = Wal::open_on(&disk, dir, opts(64, true)).expect("open");
            assert!(rec.records.is_empty());
            for i in 1..=20u64 {
                let p = payload(i, 10);
                wal.append(&p).expect("append");
                expected.push((i, p));
                if i % 5 == 0 {
                    wal.sync().expect("sync");
                }
            }
            // A batch cut by a power loss during its fsync.
            wal.append(&payload(21, 30)).expect("append");
            wal.append(&payload(22, 30)).expect("append");
            sim.arm_crash_in_sync();
            assert!(wal.sync().is_err());
        }
        // Ten bytes of the batch reach the disk (inside the first record), then zeros.
        sim.crash(&mut |pending| (pending.min(10), 3));
        assert_eq!(sim.stats().torn_tails, 1);
        let (mut wal, rec) = Wal::open_on(&disk, dir, opts(64, true)).expect("reopen");
        assert_eq!(rec.records, expected);
        assert!(rec.truncated_bytes > 0);
        assert_eq!(wal.append(b"next").expect("append"), 21);
        wal.sync().expect("sync");
        drop(wal);
        sim.crash(&mut |_| (0, 0));
        let (_, rec) = Wal::open_on(&disk, dir, opts(64, true)).expect("reopen");
        assert_eq!(rec.records.len(), 21);
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn zero_header_is_never_valid() {
        assert_ne!(record_crc([0; 4], &[]), 0);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(1), "wal-00000000000000000001.log");
        assert_eq!(parse_segment_name(&segment_name(12345)), Some(12345));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("wal-1.log"), None);
        assert_eq!(parse_segment_name("wal-0000000000000000000x.log"), None);
        assert_eq!(parse_segment_name("snap-00000000000000000001.bin"), None);
    }

    #[test]
    fn round_trip_across_segments() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("nested").join("wal");
        let mut expected = Vec::new();
        {
            let (mut wal, rec) = open(&dir, opts(64, true));
            assert!(rec.records.is_empty());
            assert_eq!(rec.truncated_bytes, 0);
            assert_eq!(wal.last_lsn(), 0);
            for i in 1..=50u64 {
                let p = payload(i, (i as usize * 7) % 40);
                assert_eq!(wal.append(&p).expect("append"), i);
                expected.push((i, p));
                if i % 3 == 0 {
                    wal.sync().expect("sync");
                    assert_eq!(wal.synced_lsn(), i);
                }
            }
            wal.sync().expect("sync");
            assert_eq!(wal.last_lsn(), 50);
            let on_disk: u64 = segment_files(&dir).iter().map(|s| file_len(&s.1)).sum();
            assert_eq!(wal.disk_bytes(), on_disk);
        }
        assert!(segment_files(&dir).len() > 3, "expected several segments");
        {
            let (mut wal, rec) = open(&dir, opts(64, true));
            assert_eq!(rec.records, expected);
            assert_eq!(rec.truncated_bytes, 0);
            assert_eq!(wal.last_lsn(), 50);
            assert_eq!(wal.first_lsn(), 1);
            for i in 51..=60u64 {
                let p = payload(i, 10);
                assert_eq!(wal.append(&p).expect("append"), i);
                expected.push((i, p));
            }
            wal.sync().expect("sync");
        }
        let (_wal, rec) = open(&dir, opts(64, true));
        assert_eq!(rec.records, expected);
    }

    #[test]
    fn unsynced_records_are_lost_and_lsns_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let (mut wal, _) = open(tmp.path(), opts(1024, false));
            wal.append(b"a").expect("append");
            wal.sync().expect("sync");
            wal.append(b"b").expect("append");
            assert_eq!(wal.last_lsn(), 2);
            assert_eq!(wal.synced_lsn(), 1);
        }
        let (mut wal, rec) = open(tmp.path(), opts(1024, false));
        assert_eq!(rec.records, vec![(1, b"a".to_vec())]);
        assert_eq!(wal.append(b"c").expect("append"), 2);
    }

    #[test]
    fn empty_records_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        {
            let (mut wal, _) = open(tmp.path(), opts(1024, false));
            wal.append(b"").expect("append");
            wal.append(b"x").expect("append");
            wal.append(b"").expect("append");
            wal.sync().expect("sync");
        }
        let (_, rec) = open(tmp.path(), opts(1024, false));
        assert_eq!(
            rec.records,
            vec![(1, vec![]), (2, b"x".to_vec()), (3, vec![])]
        );
    }

    #[test]
    fn torn_tail_at_every_offset_of_the_last_record() {
        let frame = (RECORD_HEADER_BYTES + STD_PAYLOAD) as u64;
        let probe = tempfile::tempdir().expect("tempdir");
        build_standard(probe.path());
        let (_, last_path) = segment_files(probe.path()).pop().expect("a segment");
        let full = file_len(&last_path);
        let start = full - frame;

        for cut in start..full {
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut expected = build_standard(tmp.path());
            expected.pop();
            let (_, last) = segment_files(tmp.path()).pop().expect("a segment");
            truncate_file(&last, cut);
            {
                let (mut wal, rec) = open(tmp.path(), opts(100, false));
                assert_eq!(rec.records, expected, "cut at {cut}");
                assert_eq!(rec.truncated_bytes, cut - start, "cut at {cut}");
                assert_eq!(file_len(&last), start, "cut at {cut}");
                assert_eq!(wal.last_lsn(), STD_RECORDS - 1);
                let p = payload(99, 5);
                assert_eq!(wal.append(&p).expect("append"), STD_RECORDS);
                wal.sync().expect("sync");
                expected.push((STD_RECORDS, p));
            }
            let (wal, rec) = open(tmp.path(), opts(100, false));
            assert_eq!(rec.records, expected, "cut at {cut}, after re-append");
            assert_eq!(rec.truncated_bytes, 0);
            assert_eq!(wal.last_lsn(), STD_RECORDS);
        }
    }

    #[test]
    fn bit_flip_in_last_record_is_cut() {
        let frame = RECORD_HEADER_BYTES + STD_PAYLOAD;
        for byte in 0..frame {
            for bit in 0..8 {
                let tmp = tempfile::tempdir().expect("tempdir");
                let mut expected = build_standard(tmp.path());
                expected.pop();
                let (_, last) = segment_files(tmp.path()).pop().expect("a segment");
                let full = file_len(&last);
                let start = full as usize - frame;
                modify_file(&last, |b| b[start + byte] ^= 1 << bit);
                let (mut wal, rec) = open(tmp.path(), opts(100, false));
                assert_eq!(rec.records, expected, "flip byte {byte} bit {bit}");
                assert_eq!(rec.truncated_bytes, frame as u64);
                assert_eq!(wal.append(b"next").expect("append"), STD_RECORDS);
            }
        }
    }

    #[test]
    fn bit_flip_in_an_earlier_segment_is_corrupt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        build_standard(tmp.path());
        let segs = segment_files(tmp.path());
        let middle = &segs[1].1;
        // Second record of the middle segment, inside its payload.
        let offset = RECORD_HEADER_BYTES + STD_PAYLOAD;
        modify_file(middle, |b| b[offset + 10] ^= 0x40);
        let before = fs::read(middle).expect("read");
        match Wal::open(tmp.path(), opts(100, false)) {
            Err(StorageError::Corrupt(msg)) => {
                assert!(msg.contains("wal-00000000000000000005.log"), "{msg}");
                assert!(msg.contains(&format!("offset {offset}")), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Nothing was cut.
        assert_eq!(fs::read(middle).expect("read"), before);
    }

    /// Damage in the middle of the last segment, with intact records after it, is not a
    /// torn write (a crash leaves the unsynced tail's blocks written or zero, never other
    /// bytes before intact records): the records from there on were synced and
    /// acknowledged. Open used to cut them all as a "torn tail" and carry on, reusing
    /// their lsns (in single-node mode, their zxids and fencing tokens).
    #[test]
    fn bit_rot_before_intact_records_of_the_last_segment_is_corrupt() {
        for (name, offset) in [("payload", RECORD_HEADER_BYTES + 5), ("checksum", 5)] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (mut wal, _) = open(tmp.path(), opts(1 << 20, false));
            append_synced(&mut wal, 1, 21);
            drop(wal);
            let (_, path) = segment_files(tmp.path()).pop().expect("a segment");
            // The third record (of 28 framed bytes each).
            let at = 2 * (RECORD_HEADER_BYTES + 20) + offset;
            modify_file(&path, |b| b[at] ^= 0x10);
            let before = fs::read(&path).expect("read");
            match Wal::open(tmp.path(), opts(1 << 20, false)) {
                Err(StorageError::Corrupt(msg)) => {
                    assert!(
                        msg.contains("wal-00000000000000000001.log"),
                        "{name}: {msg}"
                    );
                    assert!(msg.contains("offset 56"), "{name}: {msg}");
                }
                Err(e) => panic!("{name}: refused, but not as corrupt: {e}"),
                Ok((_, rec)) => panic!(
                    "{name}: opened with {} of 20 synced records",
                    rec.records.len()
                ),
            }
            // Nothing was cut.
            assert_eq!(fs::read(&path).expect("read"), before, "{name}");
        }
    }

    /// A crash during a batch's write can leave any of its blocks unwritten (zeros, the
    /// preallocated room or a file extended first) while later ones reached the disk:
    /// intact records after a damaged one are then part of the same unsynced batch, and
    /// the tail is cut from the damaged record on, as before.
    #[test]
    fn a_batch_torn_by_an_unwritten_block_is_cut_though_intact_records_follow() {
        const BLOCK: usize = 4096;
        // 300-byte records, 308 framed: the batch of records 5..=40 spans several blocks.
        let frame = RECORD_HEADER_BYTES + 300;
        for block in 0..2 {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (mut wal, _) = open(tmp.path(), with_room(1 << 20, 1 << 16));
            let mut expected = Vec::new();
            for i in 1..=4u64 {
                let p = payload(i, 300);
                wal.append(&p).expect("append");
                wal.sync().expect("sync");
                expected.push((i, p));
            }
            for i in 5..=40u64 {
                wal.append(&payload(i, 300)).expect("append");
            }
            wal.sync().expect("sync");
            drop(wal);
            let (_, path) = segment_files(tmp.path()).pop().expect("a segment");
            // Block 0 holds the synced records and the batch's first ones: its unwritten
            // state is the old one (records 1-4, zeros after them). Block 1 lies wholly
            // inside the batch.
            let synced_end = 4 * frame;
            let zeroed = if block == 0 {
                synced_end..BLOCK
            } else {
                BLOCK..2 * BLOCK
            };
            modify_file(&path, |b| b[zeroed.clone()].fill(0));
            let damaged = if block == 0 {
                synced_end
            } else {
                // The record the block starts in.
                BLOCK / frame * frame
            };
            let kept = damaged / frame;
            expected.extend((5..=kept as u64).map(|i| (i, payload(i, 300))));
            let (_, rec) = Wal::open(tmp.path(), with_room(1 << 20, 1 << 16))
                .unwrap_or_else(|e| panic!("block {block}: {e}"));
            assert_eq!(rec.records.len(), kept, "block {block}");
            assert_eq!(rec.records, expected, "block {block}");
            assert_eq!(file_len(&path), damaged as u64, "block {block}");
        }
    }

    #[test]
    fn torn_earlier_segment_is_corrupt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        build_standard(tmp.path());
        let segs = segment_files(tmp.path());
        let first = &segs[0].1;
        truncate_file(first, file_len(first) - 3);
        assert!(matches!(
            Wal::open(tmp.path(), opts(100, false)),
            Err(StorageError::Corrupt(_))
        ));
    }

    #[test]
    fn gap_between_segments_is_corrupt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        build_standard(tmp.path());
        let segs = segment_files(tmp.path());
        fs::remove_file(&segs[1].1).expect("remove");
        match Wal::open(tmp.path(), opts(100, false)) {
            Err(StorageError::Corrupt(msg)) => assert!(msg.contains("lsn 9"), "{msg}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn zero_filled_tail_is_room_and_is_cut() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let expected = build_standard(tmp.path());
        let (_, last) = segment_files(tmp.path()).pop().expect("a segment");
        let len = file_len(&last);
        modify_file(&last, |b| b.extend(std::iter::repeat_n(0u8, 4096)));
        let (_, rec) = open(tmp.path(), opts(100, false));
        assert_eq!(rec.records, expected);
        assert_eq!(
            rec.truncated_bytes, 0,
            "zeros at the end are room, not damage"
        );
        assert_eq!(file_len(&last), len, "but they are cut");

        // Zeros over the last record itself (size updated, data never written): the
        // same as room, so the record is gone (it was never synced).
        let frame = RECORD_HEADER_BYTES + STD_PAYLOAD;
        modify_file(&last, |b| {
            let n = b.len();
            b[n - frame..].fill(0);
        });
        let (_, rec) = open(tmp.path(), opts(100, false));
        assert_eq!(rec.records, expected[..expected.len() - 1]);
        assert_eq!(file_len(&last), len - frame as u64);
    }

    #[test]
    fn oversized_length_in_tail_is_cut() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let expected = build_standard(tmp.path());
        let (_, last) = segment_files(tmp.path()).pop().expect("a segment");
        let len = (MAX_RECORD_BYTES as u32 + 1).to_le_bytes();
        let crc = record_crc(len, &[]).to_le_bytes();
        modify_file(&last, |b| {
            b.extend_from_slice(&len);
            b.extend_from_slice(&crc);
            b.extend_from_slice(&[7; 32]);
        });
        let (_, rec) = open(tmp.path(), opts(100, false));
        assert_eq!(rec.records, expected);
        assert_eq!(rec.truncated_bytes, 40);
    }

    #[test]
    fn oversized_record_is_rejected_on_append() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = open(tmp.path(), opts(1024, false));
        let big = vec![0u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            wal.append(&big),
            Err(StorageError::RecordTooLarge { .. })
        ));
        assert_eq!(wal.append(b"ok").expect("append"), 1);
    }

    #[test]
    fn compaction_removes_only_covered_inactive_segments() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let expected = build_standard(tmp.path());
        let (mut wal, _) = open(tmp.path(), opts(100, false));
        let firsts = |dir: &Path| segment_files(dir).iter().map(|s| s.0).collect::<Vec<_>>();

        wal.compact_through(3).expect("compact");
        assert_eq!(firsts(tmp.path()), vec![1, 5, 9]);
        wal.compact_through(4).expect("compact");
        assert_eq!(firsts(tmp.path()), vec![5, 9]);
        assert_eq!(wal.first_lsn(), 5);
        wal.compact_through(9).expect("compact");
        assert_eq!(firsts(tmp.path()), vec![9]);
        // Everything covered, but the active segment stays.
        wal.compact_through(u64::MAX).expect("compact");
        assert_eq!(firsts(tmp.path()), vec![9]);
        let on_disk: u64 = segment_files(tmp.path())
            .iter()
            .map(|s| file_len(&s.1))
            .sum();
        assert_eq!(wal.disk_bytes(), on_disk);
        drop(wal);

        let (mut wal, rec) = open(tmp.path(), opts(100, false));
        assert_eq!(rec.records, expected[8..]);
        assert_eq!(wal.first_lsn(), 9);
        assert_eq!(wal.append(b"x").expect("append"), 11);
    }

    #[test]
    fn empty_active_segment_after_compaction_keeps_lsn() {
        let tmp = tempfile::tempdir().expect("tempdir");
        build_standard(tmp.path());
        let (_, last) = segment_files(tmp.path()).pop().expect("a segment");
        truncate_file(&last, 0);
        {
            let (mut wal, rec) = open(tmp.path(), opts(100, false));
            assert_eq!(rec.records.len(), 8);
            assert_eq!(wal.last_lsn(), 8);
            wal.compact_through(8).expect("compact");
        }
        let (mut wal, rec) = open(tmp.path(), opts(100, false));
        assert!(rec.records.is_empty());
        assert_eq!(wal.last_lsn(), 8);
        assert_eq!(wal.first_lsn(), 9);
        assert_eq!(wal.append(b"x").expect("append"), 9);
    }

    #[test]
    fn foreign_files_are_ignored() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let expected = build_standard(tmp.path());
        fs::write(tmp.path().join("README"), b"hello").expect("write");
        fs::write(tmp.path().join("wal-7.log"), b"junk").expect("write");
        let (_, rec) = open(tmp.path(), opts(100, false));
        assert_eq!(rec.records, expected);
    }

    #[test]
    fn failed_sync_poisons_the_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wal");
        let (mut wal, _) = open(&dir, opts(8, false));
        wal.append(b"first record").expect("append");
        wal.sync().expect("sync");
        // The active segment is full: the next sync must create a new segment, which
        // fails once the directory is gone.
        fs::remove_dir_all(&dir).expect("remove dir");
        wal.append(b"second").expect("append");
        assert!(matches!(wal.sync(), Err(StorageError::Io { .. })));
        assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
        assert!(matches!(wal.append(b"x"), Err(StorageError::Poisoned)));
        assert!(matches!(
            wal.compact_through(1),
            Err(StorageError::Poisoned)
        ));
        assert_eq!(wal.synced_lsn(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<u8>),
        /// A record of an owned prefix, a range of a shared buffer and an owned suffix.
        AppendShared(Vec<u8>, Vec<u8>, u8, u8, Vec<u8>),
        Sync,
        /// A sync in two halves, with these records appended between them (while the
        /// batch is being written): they wait for the next sync.
        SplitSync(Vec<Vec<u8>>),
        Reopen,
        /// Close, cut the last segment file to `n % (len + 1)` bytes, reopen.
        CutTail(u16),
        Compact(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Op::Append),
            2 => (
                prop::collection::vec(any::<u8>(), 0..8),
                prop::collection::vec(any::<u8>(), 0..40),
                any::<u8>(),
                any::<u8>(),
                prop::collection::vec(any::<u8>(), 0..8),
            )
                .prop_map(|(a, b, c, d, e)| Op::AppendShared(a, b, c, d, e)),
            3 => Just(Op::Sync),
            2 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3)
                .prop_map(Op::SplitSync),
            1 => Just(Op::Reopen),
            1 => any::<u16>().prop_map(Op::CutTail),
            1 => any::<u8>().prop_map(Op::Compact),
        ]
    }

    /// In-memory model: the durable records (lsn = index + 1), the pending ones, and the
    /// highest lsn compaction was allowed to drop.
    struct Model {
        durable: Vec<Vec<u8>>,
        pending: Vec<Vec<u8>>,
        compacted: u64,
    }

    impl Model {
        fn check(&self, wal: &Wal, rec: &Recovered) -> Result<(), TestCaseError> {
            let first = wal.first_lsn();
            prop_assert!(first >= 1);
            prop_assert!(
                first <= self.compacted + 1,
                "record after the compaction point lost: first {first}, compacted {}",
                self.compacted
            );
            prop_assert!(first <= self.durable.len() as u64 + 1);
            let expected: Vec<(u64, Vec<u8>)> = self
                .durable
                .iter()
                .enumerate()
                .skip(first as usize - 1)
                .map(|(i, p)| (i as u64 + 1, p.clone()))
                .collect();
            prop_assert_eq!(&rec.records, &expected);
            prop_assert_eq!(wal.last_lsn(), self.durable.len() as u64);
            prop_assert_eq!(wal.synced_lsn(), self.durable.len() as u64);
            Ok(())
        }
    }

    fn run_ops(segment_bytes: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let o = opts(segment_bytes, false);
        let mut model = Model {
            durable: Vec::new(),
            pending: Vec::new(),
            compacted: 0,
        };
        let (mut wal, rec) = open(dir, o);
        model.check(&wal, &rec)?;
        for op in ops {
            match op {
                Op::Append(p) => {
                    let lsn = wal.append(&p).expect("append");
                    model.pending.push(p);
                    prop_assert_eq!(lsn, (model.durable.len() + model.pending.len()) as u64);
                }
                Op::AppendShared(prefix, shared, from, len, suffix) => {
                    let from = usize::from(from) % (shared.len() + 1);
                    let to = (from + usize::from(len)).min(shared.len());
                    let record = [&prefix[..], &shared[from..to], &suffix[..]].concat();
                    let parts = vec![
                        Part::Owned(prefix),
                        Part::Shared(Arc::new(shared), from..to),
                        Part::Owned(suffix),
                    ];
                    let lsn = wal.append_parts(parts).expect("append parts");
                    model.pending.push(record);
                    prop_assert_eq!(lsn, (model.durable.len() + model.pending.len()) as u64);
                }
                Op::Sync => {
                    wal.sync().expect("sync");
                    model.durable.append(&mut model.pending);
                }
                Op::SplitSync(later) => {
                    let pending = wal.begin_sync().expect("begin");
                    prop_assert_eq!(pending.is_some(), !model.pending.is_empty());
                    let through = (model.durable.len() + model.pending.len()) as u64;
                    model.durable.append(&mut model.pending);
                    for p in later {
                        wal.append(&p).expect("append while a batch is written");
                        model.pending.push(p);
                    }
                    if let Some(mut pending) = pending {
                        let result = pending.wait();
                        wal.finish_sync(pending, result).expect("finish");
                    }
                    prop_assert_eq!(wal.synced_lsn(), through);
                }
                Op::Reopen => {
                    drop(wal);
                    model.pending.clear();
                    let (w, rec) = open(dir, o);
                    wal = w;
                    prop_assert_eq!(rec.truncated_bytes, 0);
                    model.check(&wal, &rec)?;
                }
                Op::CutTail(n) => {
                    drop(wal);
                    model.pending.clear();
                    let (first, path) = segment_files(dir).pop().expect("a segment");
                    let len = file_len(&path);
                    // Frame ends of the model's records in the last segment.
                    let mut end = 0u64;
                    let mut ends = Vec::new();
                    for p in model.durable.iter().skip(first as usize - 1) {
                        end += (RECORD_HEADER_BYTES + p.len()) as u64;
                        ends.push(end);
                    }
                    prop_assert_eq!(end, len);
                    let new_len = u64::from(n) % (len + 1);
                    truncate_file(&path, new_len);
                    let survivors = ends.iter().take_while(|&&e| e <= new_len).count();
                    let kept_end = if survivors == 0 {
                        0
                    } else {
                        ends[survivors - 1]
                    };
                    model.durable.truncate(first as usize - 1 + survivors);
                    // A cut that leaves only zeros (a torn header of an empty record)
                    // reads as preallocated room: cut too, but not counted as damage.
                    let left = fs::read(&path).expect("read");
                    let room = left[kept_end as usize..].iter().all(|b| *b == 0);
                    let (w, rec) = open(dir, o);
                    wal = w;
                    let cut = if room { 0 } else { new_len - kept_end };
                    prop_assert_eq!(rec.truncated_bytes, cut);
                    prop_assert_eq!(file_len(&path), kept_end);
                    model.check(&wal, &rec)?;
                }
                Op::Compact(n) => {
                    // Mostly within the log, sometimes beyond its end.
                    let lsn = u64::from(n) % (model.durable.len() as u64 + 3);
                    wal.compact_through(lsn).expect("compact");
                    model.compacted = model.compacted.max(lsn);
                }
            }
        }
        drop(wal);
        model.pending.clear();
        let (wal, rec) = open(dir, o);
        prop_assert_eq!(rec.truncated_bytes, 0);
        model.check(&wal, &rec)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 128,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn synced_and_uncut_records_always_recover(
            segment_bytes in 1u64..200,
            ops in prop::collection::vec(op(), 1..80),
        ) {
            run_ops(segment_bytes, ops)?;
        }
    }
}
