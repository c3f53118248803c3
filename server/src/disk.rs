//! The file-system operations the write-ahead log and the snapshot files use, behind one
//! small interface: the real disk (`std::fs`) in production, and, for the deterministic
//! simulator and tests, an in-memory disk with crash semantics.
//!
//! Only what [`crate::wal`] and [`crate::snapshot`] need is here: create a directory,
//! list it, read a file, open one for appending, create or truncate one, write, sync
//! (`fdatasync` / `fsync`), cut to a length, rename, remove, and sync a directory.
//!
//! # The simulated disk (`SimDisk`, with the `sim` feature or in tests)
//!
//! Every file has *current* bytes (what reads see) and *durable* bytes (what survives a
//! crash). `sync_data`/`sync_all` make the current bytes durable. Directory entries
//! (create, rename, remove, new directories) change the current namespace at once and
//! become durable when their directory is synced (`sync_dir`), as on a POSIX file system
//! without `dirsync`.
//!
//! [`SimDisk::crash`] turns the disk into what a machine would find after a power cut:
//! the durable namespace, the durable contents of every file, and, for the file written
//! last, possibly a random prefix of the bytes written after its last sync (a torn
//! record), sometimes followed by zeros (the size was updated, the data never written).
//!
//! Faults, all off by default: [`SimDisk::arm_crash_in_sync`] makes the next sync fail
//! after the write and before the data is durable (the simulator then crashes the node:
//! this is how it tears the last record of a batch); [`SimDiskFaults::lying_fsync`]
//! makes every sync report success without making anything durable (the "skipped fsync"
//! bug); [`SimDiskFaults::fail_sync_per_mille`] makes a sync fail with an IO error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[cfg(any(test, feature = "sim"))]
pub use sim::{SimDisk, SimDiskFaults, SimDiskStats};

/// Where files live.
#[derive(Debug, Clone, Default)]
pub enum Disk {
    /// The real file system.
    #[default]
    Real,
    /// An in-memory disk with crash semantics (simulator and tests).
    #[cfg(any(test, feature = "sim"))]
    Sim(SimDisk),
}

/// An open file of a [`Disk`].
#[derive(Debug)]
pub enum DiskFile {
    /// A real file.
    Real(File),
    /// A file of a simulated disk.
    #[cfg(any(test, feature = "sim"))]
    Sim(sim::SimFile),
}

impl Disk {
    /// Whether something exists at `path`.
    pub fn exists(&self, path: &Path) -> bool {
        match self {
            Disk::Real => path.exists(),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.exists(path),
        }
    }

    /// Creates `path` and its missing ancestors (not durable until their parents are
    /// synced).
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            Disk::Real => fs::create_dir_all(path),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.create_dir_all(path),
        }
    }

    /// Makes the creation, renaming and removal of the entries of `dir` durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self {
            Disk::Real => File::open(dir).and_then(|d| d.sync_all()),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.sync_dir(dir),
        }
    }

    /// The entries of `dir` as (file name, path); names that are not UTF-8 are skipped.
    /// Unsorted.
    pub fn list(&self, dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
        match self {
            Disk::Real => {
                let mut out = Vec::new();
                for entry in fs::read_dir(dir)? {
                    let entry = entry?;
                    if let Some(name) = entry.file_name().to_str() {
                        out.push((name.to_string(), entry.path()));
                    }
                }
                Ok(out)
            }
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.list(dir),
        }
    }

    /// The whole contents of a file.
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        match self {
            Disk::Real => fs::read(path),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.read(path),
        }
    }

    /// Opens an existing file for reading and positioned writes ([`DiskFile::write_at`]).
    pub fn open_write(&self, path: &Path) -> io::Result<DiskFile> {
        match self {
            Disk::Real => OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map(DiskFile::Real),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.open(path, false, false).map(DiskFile::Sim),
        }
    }

    /// Creates a new, empty file for reading and positioned writes; fails if it exists.
    pub fn create_new_write(&self, path: &Path) -> io::Result<DiskFile> {
        match self {
            Disk::Real => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map(DiskFile::Real),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.open(path, true, false).map(DiskFile::Sim),
        }
    }

    /// Creates a file for writing, or truncates it if it exists (`File::create`).
    pub fn create_truncate(&self, path: &Path) -> io::Result<DiskFile> {
        match self {
            Disk::Real => File::create(path).map(DiskFile::Real),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.open(path, false, true).map(DiskFile::Sim),
        }
    }

    /// Renames a file, replacing `to` if it exists.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        match self {
            Disk::Real => fs::rename(from, to),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.rename(from, to),
        }
    }

    /// Removes a file.
    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        match self {
            Disk::Real => fs::remove_file(path),
            #[cfg(any(test, feature = "sim"))]
            Disk::Sim(d) => d.remove_file(path),
        }
    }
}

impl DiskFile {
    /// Reads from the current position to the end.
    pub fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            DiskFile::Real(f) => f.read_to_end(buf),
            #[cfg(any(test, feature = "sim"))]
            DiskFile::Sim(f) => f.read_to_end(buf),
        }
    }

    /// Writes all of `data` at the end (the files are opened for appending or freshly
    /// created).
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.write_all(data),
            #[cfg(any(test, feature = "sim"))]
            DiskFile::Sim(f) => f.write_all(data),
        }
    }

    /// Writes all of `data` at byte `offset`. The simulated disk only appends (`offset`
    /// must be the file's length): it has no model of overwritten durable bytes, so the
    /// write-ahead log does not preallocate on it.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => std::os::unix::fs::FileExt::write_all_at(f, data, offset),
            #[cfg(any(test, feature = "sim"))]
            DiskFile::Sim(f) => f.append_at(offset, data),
        }
    }

    /// `fdatasync`: the contents are durable when this returns `Ok`.
    pub fn sync_data(&self) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.sync_data(),
            #[cfg(any(test, feature = "sim"))]
            DiskFile::Sim(f) => f.sync(),
        }
    }

    /// `fsync`: contents and metadata are durable when this returns `Ok`.
    pub fn sync_all(&mut self) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.sync_all(),
            #[cfg(any(test, feature = "sim"))]
            DiskFile::Sim(f) => f.sync(),
        }
    }

    /// Truncates or extends (with zeros) the file to `len` bytes.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.set_len(len),
            #[cfg(any(test, feature = "sim"))]
            DiskFile::Sim(f) => f.set_len(len),
        }
    }
}

#[cfg(any(test, feature = "sim"))]
mod sim {
    use std::collections::BTreeMap;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

    /// Seeded faults of a simulated disk (all off by default).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct SimDiskFaults {
        /// Every sync reports success without making anything durable (a bug to catch).
        pub lying_fsync: bool,
        /// A sync fails with an IO error with this probability, in thousandths.
        pub fail_sync_per_mille: u32,
        /// A write that would make the disk's files hold more than this many bytes in
        /// all fails with `StorageFull` (ENOSPC) and writes nothing (`None`: no limit).
        pub capacity_bytes: Option<u64>,
    }

    /// Counters of a simulated disk.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct SimDiskStats {
        /// Successful file syncs.
        pub syncs: u64,
        /// Bytes written.
        pub bytes_written: u64,
        /// File handles opened.
        pub handles_opened: u64,
        /// Crashes.
        pub crashes: u64,
        /// Crashes that kept part of the unsynced bytes (a torn tail).
        pub torn_tails: u64,
        /// Syncs failed on purpose.
        pub failed_syncs: u64,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Node {
        Dir,
        File(u64),
    }

    #[derive(Debug, Default)]
    struct FileData {
        /// What reads see.
        current: Vec<u8>,
        /// While `diverged` is `None`, the durable bytes are `current[..synced]`.
        synced: usize,
        /// The durable bytes, when `current` no longer starts with them (cut after the
        /// last sync).
        diverged: Option<Vec<u8>>,
    }

    impl FileData {
        fn durable(&self) -> &[u8] {
            match &self.diverged {
                Some(d) => d,
                None => &self.current[..self.synced],
            }
        }

        fn make_durable(&mut self) {
            self.diverged = None;
            self.synced = self.current.len();
        }
    }

    #[derive(Debug, Default)]
    struct Fs {
        names: BTreeMap<PathBuf, Node>,
        durable_names: BTreeMap<PathBuf, Node>,
        files: BTreeMap<u64, FileData>,
        next_ino: u64,
        /// Bumped by every crash: handles of an earlier generation are dead.
        generation: u64,
        last_written: Option<u64>,
        faults: SimDiskFaults,
        /// The next sync fails after writing and before anything is durable.
        crash_in_sync: bool,
        /// Set when an armed sync failed: every later call fails until `crash`.
        halted: bool,
        /// Seed of the fault decisions (xorshift).
        rng: u64,
        stats: SimDiskStats,
    }

    impl Fs {
        fn next_random(&mut self) -> u64 {
            // xorshift64*: deterministic, seeded by the simulator.
            let mut x = self.rng.max(1);
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn check(&self, generation: u64) -> io::Result<()> {
            if self.halted || generation != self.generation {
                return Err(io::Error::other("simulated disk: the node crashed"));
            }
            Ok(())
        }

        fn parent_is_dir(&self, path: &Path) -> io::Result<()> {
            match path.parent() {
                None => Ok(()),
                Some(p) if p.as_os_str().is_empty() || p == Path::new("/") => Ok(()),
                Some(p) => match self.names.get(p) {
                    Some(Node::Dir) => Ok(()),
                    _ => Err(not_found(p)),
                },
            }
        }

        fn file(&mut self, ino: u64) -> io::Result<&mut FileData> {
            self.files
                .get_mut(&ino)
                .ok_or_else(|| io::Error::other("simulated disk: file vanished"))
        }

        fn sync_file(&mut self, ino: u64) -> io::Result<()> {
            if self.crash_in_sync {
                self.crash_in_sync = false;
                self.halted = true;
                return Err(io::Error::other("simulated crash during fsync"));
            }
            if self.faults.fail_sync_per_mille > 0
                && self.next_random() % 1000 < u64::from(self.faults.fail_sync_per_mille)
            {
                self.stats.failed_syncs += 1;
                return Err(io::Error::other("simulated fsync failure (EIO)"));
            }
            if self.faults.lying_fsync {
                return Ok(());
            }
            self.file(ino)?.make_durable();
            self.stats.syncs += 1;
            Ok(())
        }
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("simulated disk: {} not found", path.display()),
        )
    }

    fn lock(fs: &Mutex<Fs>) -> MutexGuard<'_, Fs> {
        fs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An in-memory disk with crash semantics; cheap to clone (clones share the disk).
    /// See the module documentation.
    #[derive(Debug, Clone, Default)]
    pub struct SimDisk {
        fs: Arc<Mutex<Fs>>,
    }

    /// An open file of a [`SimDisk`].
    #[derive(Debug)]
    pub struct SimFile {
        fs: Arc<Mutex<Fs>>,
        ino: u64,
        generation: u64,
        /// Read position (reads only happen right after opening).
        pos: usize,
    }

    impl SimDisk {
        /// An empty disk whose fault decisions are drawn from `seed`.
        pub fn new(seed: u64) -> SimDisk {
            let disk = SimDisk::default();
            lock(&disk.fs).rng = seed | 1;
            disk
        }

        /// Sets the faults.
        pub fn set_faults(&self, faults: SimDiskFaults) {
            lock(&self.fs).faults = faults;
        }

        /// The faults in force.
        pub fn faults(&self) -> SimDiskFaults {
            lock(&self.fs).faults
        }

        /// Makes the next file sync fail after its write and before anything is durable,
        /// as if the machine lost power during the `fdatasync`. Every later call fails
        /// until [`SimDisk::crash`].
        pub fn arm_crash_in_sync(&self) {
            lock(&self.fs).crash_in_sync = true;
        }

        /// Counters.
        pub fn stats(&self) -> SimDiskStats {
            lock(&self.fs).stats
        }

        /// Bytes of all files in the current namespace.
        pub fn bytes(&self) -> u64 {
            let fs = lock(&self.fs);
            fs.names
                .values()
                .filter_map(|n| match n {
                    Node::File(ino) => fs.files.get(ino).map(|f| f.current.len() as u64),
                    Node::Dir => None,
                })
                .sum()
        }

        /// A power cut: keeps what was durable; the file written last may keep a random
        /// prefix of its unsynced bytes (`tear_draw` decides: it is given the number of
        /// unsynced bytes and returns how many to keep, and how many zeros to add after
        /// them). Open handles die.
        pub fn crash(&self, tear_draw: &mut dyn FnMut(usize) -> (usize, usize)) {
            let mut fs = lock(&self.fs);
            fs.stats.crashes += 1;
            fs.generation += 1;
            fs.halted = false;
            fs.crash_in_sync = false;
            let last = fs.last_written.take();
            // The namespace: durable entries whose parents are durable directories.
            let durable = std::mem::take(&mut fs.durable_names);
            let mut names = BTreeMap::new();
            for (path, node) in durable {
                let parent_ok = match path.parent() {
                    None => true,
                    Some(p) if p.as_os_str().is_empty() || p == Path::new("/") => true,
                    Some(p) => names.get(p) == Some(&Node::Dir),
                };
                if parent_ok {
                    names.insert(path, node);
                }
            }
            let live: std::collections::BTreeSet<u64> = names
                .values()
                .filter_map(|n| match n {
                    Node::File(ino) => Some(*ino),
                    Node::Dir => None,
                })
                .collect();
            fs.files.retain(|ino, _| live.contains(ino));
            let mut torn = false;
            for (ino, f) in fs.files.iter_mut() {
                let mut keep = f.durable().to_vec();
                if Some(*ino) == last && f.diverged.is_none() && f.current.len() > f.synced {
                    let pending = &f.current[f.synced..];
                    let (n, zeros) = tear_draw(pending.len());
                    let n = n.min(pending.len());
                    keep.extend_from_slice(&pending[..n]);
                    keep.extend(std::iter::repeat_n(0u8, zeros));
                    torn |= n > 0 || zeros > 0;
                }
                f.current = keep;
                f.make_durable();
            }
            if torn {
                fs.stats.torn_tails += 1;
            }
            fs.durable_names = names.clone();
            fs.names = names;
        }

        /// Deletes everything (a new, empty disk).
        pub fn wipe(&self) {
            let mut fs = lock(&self.fs);
            fs.generation += 1;
            fs.halted = false;
            fs.crash_in_sync = false;
            fs.names.clear();
            fs.durable_names.clear();
            fs.files.clear();
            fs.last_written = None;
        }

        pub(super) fn exists(&self, path: &Path) -> bool {
            path == Path::new("/") || lock(&self.fs).names.contains_key(path)
        }

        pub(super) fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            let mut fs = lock(&self.fs);
            if fs.halted {
                return Err(io::Error::other("simulated disk: the node crashed"));
            }
            let mut missing = Vec::new();
            let mut cursor = Some(path);
            while let Some(p) = cursor {
                if p.as_os_str().is_empty() || p == Path::new("/") {
                    break;
                }
                match fs.names.get(p) {
                    Some(Node::Dir) => break,
                    Some(Node::File(_)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("simulated disk: {} is a file", p.display()),
                        ))
                    }
                    None => missing.push(p.to_path_buf()),
                }
                cursor = p.parent();
            }
            for p in missing {
                fs.names.insert(p, Node::Dir);
            }
            Ok(())
        }

        pub(super) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            let mut fs = lock(&self.fs);
            if fs.halted {
                return Err(io::Error::other("simulated disk: the node crashed"));
            }
            let is_root = dir == Path::new("/") || dir.as_os_str().is_empty();
            if !is_root && fs.names.get(dir) != Some(&Node::Dir) {
                return Err(not_found(dir));
            }
            if fs.faults.lying_fsync {
                return Ok(());
            }
            let child_of = |p: &Path| match p.parent() {
                Some(parent) => parent == dir || (is_root && parent.as_os_str().is_empty()),
                None => false,
            };
            let gone: Vec<PathBuf> = fs
                .durable_names
                .keys()
                .filter(|p| child_of(p) && !fs.names.contains_key(*p))
                .cloned()
                .collect();
            for p in gone {
                fs.durable_names.remove(&p);
            }
            let now: Vec<(PathBuf, Node)> = fs
                .names
                .iter()
                .filter(|(p, _)| child_of(p))
                .map(|(p, n)| (p.clone(), *n))
                .collect();
            fs.durable_names.extend(now);
            Ok(())
        }

        pub(super) fn list(&self, dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
            let fs = lock(&self.fs);
            let is_root = dir == Path::new("/");
            if !is_root && fs.names.get(dir) != Some(&Node::Dir) {
                return Err(not_found(dir));
            }
            Ok(fs
                .names
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| {
                    let name = p.file_name()?.to_str()?.to_string();
                    Some((name, p.clone()))
                })
                .collect())
        }

        pub(super) fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let fs = lock(&self.fs);
            match fs.names.get(path) {
                Some(Node::File(ino)) => Ok(fs
                    .files
                    .get(ino)
                    .map(|f| f.current.clone())
                    .unwrap_or_default()),
                Some(Node::Dir) => Err(io::Error::other("simulated disk: is a directory")),
                None => Err(not_found(path)),
            }
        }

        pub(super) fn open(
            &self,
            path: &Path,
            create_new: bool,
            truncate: bool,
        ) -> io::Result<SimFile> {
            let mut fs = lock(&self.fs);
            if fs.halted {
                return Err(io::Error::other("simulated disk: the node crashed"));
            }
            fs.parent_is_dir(path)?;
            let ino = match fs.names.get(path).copied() {
                Some(Node::Dir) => return Err(io::Error::other("simulated disk: is a directory")),
                Some(Node::File(_)) if create_new => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("simulated disk: {} exists", path.display()),
                    ))
                }
                Some(Node::File(ino)) => {
                    if truncate {
                        let f = fs.file(ino)?;
                        if f.diverged.is_none() && f.synced > 0 {
                            f.diverged = Some(f.current[..f.synced].to_vec());
                        }
                        f.current.clear();
                    }
                    ino
                }
                None if create_new || truncate => {
                    fs.next_ino += 1;
                    let ino = fs.next_ino;
                    fs.files.insert(ino, FileData::default());
                    fs.names.insert(path.to_path_buf(), Node::File(ino));
                    ino
                }
                None => return Err(not_found(path)),
            };
            fs.stats.handles_opened += 1;
            Ok(SimFile {
                fs: Arc::clone(&self.fs),
                ino,
                generation: fs.generation,
                pos: 0,
            })
        }

        pub(super) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let mut fs = lock(&self.fs);
            if fs.halted {
                return Err(io::Error::other("simulated disk: the node crashed"));
            }
            fs.parent_is_dir(to)?;
            let node = fs.names.remove(from).ok_or_else(|| not_found(from))?;
            fs.names.insert(to.to_path_buf(), node);
            Ok(())
        }

        pub(super) fn remove_file(&self, path: &Path) -> io::Result<()> {
            let mut fs = lock(&self.fs);
            if fs.halted {
                return Err(io::Error::other("simulated disk: the node crashed"));
            }
            match fs.names.get(path) {
                Some(Node::File(_)) => {
                    fs.names.remove(path);
                    Ok(())
                }
                Some(Node::Dir) => Err(io::Error::other("simulated disk: is a directory")),
                None => Err(not_found(path)),
            }
        }
    }

    impl SimFile {
        pub(super) fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
            let mut fs = lock(&self.fs);
            fs.check(self.generation)?;
            let f = fs.file(self.ino)?;
            let rest = &f.current[self.pos.min(f.current.len())..];
            buf.extend_from_slice(rest);
            let n = rest.len();
            self.pos += n;
            Ok(n)
        }

        pub(super) fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
            self.append(data)
        }

        fn append(&self, data: &[u8]) -> io::Result<()> {
            let mut fs = lock(&self.fs);
            fs.check(self.generation)?;
            if let Some(capacity) = fs.faults.capacity_bytes {
                let used: u64 = fs.files.values().map(|f| f.current.len() as u64).sum();
                if used + data.len() as u64 > capacity {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "simulated disk: no space left on device",
                    ));
                }
            }
            fs.last_written = Some(self.ino);
            fs.stats.bytes_written += data.len() as u64;
            fs.file(self.ino)?.current.extend_from_slice(data);
            Ok(())
        }

        pub(super) fn append_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let len = {
                let mut fs = lock(&self.fs);
                fs.check(self.generation)?;
                fs.file(self.ino)?.current.len() as u64
            };
            if offset != len {
                return Err(io::Error::other(format!(
                    "simulated disk: a write at {offset} into a file of {len} bytes (only appends are modelled)"
                )));
            }
            self.append(data)
        }

        pub(super) fn sync(&self) -> io::Result<()> {
            let mut fs = lock(&self.fs);
            fs.check(self.generation)?;
            fs.sync_file(self.ino)
        }

        pub(super) fn set_len(&self, len: u64) -> io::Result<()> {
            let mut fs = lock(&self.fs);
            fs.check(self.generation)?;
            let f = fs.file(self.ino)?;
            let len = usize::try_from(len).map_err(io::Error::other)?;
            if len < f.synced && f.diverged.is_none() {
                f.diverged = Some(f.current[..f.synced].to_vec());
            }
            f.current.resize(len, 0);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> (SimDisk, Disk) {
        let d = SimDisk::new(7);
        (d.clone(), Disk::Sim(d))
    }

    fn keep_nothing(_: usize) -> (usize, usize) {
        (0, 0)
    }

    #[test]
    fn synced_bytes_survive_a_crash_and_unsynced_do_not() {
        let (s, d) = sim();
        d.create_dir_all(Path::new("/data/wal")).expect("mkdir");
        d.sync_dir(Path::new("/")).expect("sync /");
        d.sync_dir(Path::new("/data")).expect("sync /data");
        let p = Path::new("/data/wal/a");
        let mut f = d.create_new_write(p).expect("create");
        d.sync_dir(Path::new("/data/wal")).expect("sync dir");
        f.write_all(b"hello").expect("write");
        f.sync_data().expect("sync");
        f.write_all(b" world").expect("write");
        s.crash(&mut keep_nothing);
        assert_eq!(d.read(p).expect("read"), b"hello");
        assert!(f.write_all(b"x").is_err(), "handles die with the crash");
    }

    #[test]
    fn a_torn_tail_keeps_a_prefix_of_the_last_write() {
        let (s, d) = sim();
        let p = Path::new("/f");
        let mut f = d.create_new_write(p).expect("create");
        d.sync_dir(Path::new("/")).expect("sync dir");
        f.write_all(b"abc").expect("write");
        f.sync_data().expect("sync");
        f.write_all(b"defgh").expect("write");
        s.crash(&mut |n| {
            assert_eq!(n, 5);
            (2, 3)
        });
        assert_eq!(d.read(p).expect("read"), b"abcde\0\0\0");
        assert_eq!(s.stats().torn_tails, 1);
    }

    #[test]
    fn directory_entries_need_a_directory_sync() {
        let (s, d) = sim();
        let mut f = d.create_new_write(Path::new("/a")).expect("create");
        f.write_all(b"x").expect("write");
        f.sync_data().expect("sync");
        s.crash(&mut keep_nothing);
        assert!(
            !d.exists(Path::new("/a")),
            "creation was never made durable"
        );

        let mut f = d.create_truncate(Path::new("/b.tmp")).expect("create");
        f.write_all(b"new").expect("write");
        f.sync_all().expect("sync");
        d.rename(Path::new("/b.tmp"), Path::new("/b"))
            .expect("rename");
        d.sync_dir(Path::new("/")).expect("sync dir");
        d.remove_file(Path::new("/b")).expect("remove");
        s.crash(&mut keep_nothing);
        assert_eq!(d.read(Path::new("/b")).expect("read"), b"new");
        assert!(!d.exists(Path::new("/b.tmp")));
    }

    #[test]
    fn a_cut_after_the_last_sync_is_undone_by_a_crash() {
        let (s, d) = sim();
        let p = Path::new("/f");
        let mut f = d.create_new_write(p).expect("create");
        d.sync_dir(Path::new("/")).expect("sync dir");
        f.write_all(b"abcdef").expect("write");
        f.sync_data().expect("sync");
        f.set_len(2).expect("cut");
        assert_eq!(d.read(p).expect("read"), b"ab");
        s.crash(&mut keep_nothing);
        assert_eq!(d.read(p).expect("read"), b"abcdef");
    }

    #[test]
    fn an_armed_sync_fails_and_halts_the_disk() {
        let (s, d) = sim();
        let p = Path::new("/f");
        let mut f = d.create_new_write(p).expect("create");
        d.sync_dir(Path::new("/")).expect("sync dir");
        s.arm_crash_in_sync();
        f.write_all(b"abc").expect("write");
        assert!(f.sync_data().is_err());
        assert!(d.create_truncate(Path::new("/g")).is_err(), "halted");
        s.crash(&mut |n| (n, 0));
        assert_eq!(d.read(p).expect("read"), b"abc");
    }

    #[test]
    fn a_lying_fsync_keeps_nothing() {
        let (s, d) = sim();
        d.sync_dir(Path::new("/")).expect("sync dir");
        let mut f = d.create_new_write(Path::new("/f")).expect("create");
        d.sync_dir(Path::new("/")).expect("sync dir");
        s.set_faults(SimDiskFaults {
            lying_fsync: true,
            ..SimDiskFaults::default()
        });
        f.write_all(b"abc").expect("write");
        f.sync_data().expect("sync says yes");
        s.crash(&mut keep_nothing);
        assert_eq!(d.read(Path::new("/f")).expect("read"), b"");
    }

    #[test]
    fn list_shows_direct_children() {
        let (_, d) = sim();
        d.create_dir_all(Path::new("/x/y")).expect("mkdir");
        d.create_new_write(Path::new("/x/a")).expect("create");
        d.create_new_write(Path::new("/x/y/b")).expect("create");
        let mut names: Vec<String> = d
            .list(Path::new("/x"))
            .expect("list")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        assert_eq!(names, vec!["a", "y"]);
    }
}
