//! Image files: a node's own compaction images, each in a file of its own next to the
//! log, so that the log's records refer to them instead of holding them (see "Image
//! files" in the parent module's documentation).

use super::MachineSnapshot;
use crate::disk::Disk;
use crate::machine::Entry;
use crate::snapshot::Durability;
use crate::wal::StorageError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// A snapshot image in a file of its own (a [`crate::snapshot`] file named by the
/// image's zxid, in the images directory next to the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ImageFile {
    pub(super) zxid: u64,
    pub(super) bytes: u64,
    /// CRC-32 of the image (the file's header holds it too).
    pub(super) crc: u32,
}

/// A snapshot as a record stores it when its image is in a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FiledSnapshot {
    pub(super) image: ImageFile,
    pub(super) tail: Vec<Entry>,
}

impl FiledSnapshot {
    /// The snapshot this stands for, without its image (loaded from the file at the end
    /// of replay, see [`super::PaxosStorage::open_on`]).
    pub(super) fn without_image(self) -> MachineSnapshot {
        MachineSnapshot {
            image_zxid: self.image.zxid,
            image: None,
            tail: self.tail,
        }
    }

    pub(super) fn covers(&self) -> u64 {
        self.image.zxid + self.tail.len() as u64
    }
}

/// Serializes exactly like a [`FiledSnapshot`] with this image file and tail.
#[derive(Serialize)]
pub(super) struct FiledSnapshotRef<'a> {
    pub(super) image: ImageFile,
    pub(super) tail: &'a [Entry],
}

/// An image of the node's own state known to be durable in its image file.
#[derive(Debug, Clone)]
pub(super) struct FiledImage {
    pub(super) bytes: Arc<Vec<u8>>,
    pub(super) file: ImageFile,
}

/// The image file that holds `s`'s image, if any of `filed` does.
pub(super) fn file_of(s: &MachineSnapshot, filed: &[FiledImage]) -> Option<ImageFile> {
    let image = s.image.as_ref()?;
    filed
        .iter()
        .find(|f| Arc::ptr_eq(&f.bytes, image) && f.file.zxid == s.image_zxid)
        .map(|f| f.file)
}

/// The directory of a node's image files, next to its log.
#[derive(Debug)]
pub(super) struct ImageDir {
    pub(super) disk: Disk,
    pub(super) dir: std::path::PathBuf,
    pub(super) fsync: bool,
}

/// The images directory inside the log's directory.
pub(super) const IMAGES_DIR: &str = "images";

impl ImageDir {
    /// Writes `image`'s image to its file and makes it durable; `None` (logged) if that
    /// fails.
    pub(super) fn write(&self, image: &MachineSnapshot) -> Option<FiledImage> {
        let bytes = image.image.clone()?;
        let zxid = image.image_zxid;
        let started = Instant::now();
        let durability = match (&self.disk, self.fsync) {
            (_, false) => Durability::NotSynced,
            // The simulator's disk takes no time.
            #[cfg(any(test, feature = "sim"))]
            (Disk::Sim(_), true) => Durability::Synced,
            (Disk::Real, true) => Durability::Paced,
        };
        match crate::snapshot::write_on(&self.disk, &self.dir, zxid, &bytes, durability) {
            Ok(crc) => {
                tracing::debug!(
                    zxid,
                    bytes = bytes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "wrote an image file"
                );
                let file = ImageFile {
                    zxid,
                    bytes: bytes.len() as u64,
                    crc,
                };
                Some(FiledImage { bytes, file })
            }
            Err(e) => {
                tracing::warn!(zxid, error = %e, "cannot write an image file; the image goes into the log");
                None
            }
        }
    }

    /// At open: creates the directory if needed, loads the image of the recovered
    /// snapshot from `file` (where the last snapshot record replayed keeps it) and
    /// deletes every other image file (none is referred to any more: the offers they
    /// were written for ended with the process).
    pub(super) fn recover(
        &self,
        file: Option<ImageFile>,
        snapshot: Option<&mut MachineSnapshot>,
    ) -> Result<Vec<FiledImage>, StorageError> {
        crate::wal::create_dir_durable(&self.disk, &self.dir, self.fsync)?;
        let mut filed = Vec::new();
        if let (Some(file), Some(snapshot)) = (file, snapshot) {
            let loaded = crate::snapshot::load_on(&self.disk, &self.dir, file.zxid)?;
            // The file's header CRC was verified against its data while loading.
            let (len, crc) = (loaded.data.len() as u64, loaded.crc);
            if len != file.bytes || crc != file.crc {
                return Err(StorageError::Corrupt(format!(
                    "the image file of zxid {} holds {len} bytes with checksum {crc:#x}, \
                     the log expects {} bytes with checksum {:#x}",
                    file.zxid, file.bytes, file.crc
                )));
            }
            tracing::info!(
                zxid = file.zxid,
                bytes = file.bytes,
                "loaded the snapshot image from its file"
            );
            let bytes = Arc::new(loaded.data);
            snapshot.image = Some(bytes.clone());
            filed.push(FiledImage { bytes, file });
        }
        let unreferenced = crate::snapshot::indexes_on(&self.disk, &self.dir)?
            .into_iter()
            .filter(|zxid| filed.iter().all(|f| f.file.zxid != *zxid))
            .collect();
        self.remove(unreferenced);
        Ok(filed)
    }

    /// Deletes the image files of these zxids (failures are logged: an unreferenced
    /// file is deleted again at the next start).
    pub(super) fn remove(&self, zxids: Vec<u64>) {
        for zxid in zxids {
            match crate::snapshot::remove_on(&self.disk, &self.dir, zxid) {
                Ok(()) => tracing::debug!(zxid, "deleted an image file"),
                Err(e) => tracing::warn!(zxid, error = %e, "cannot delete an image file"),
            }
        }
    }
}
