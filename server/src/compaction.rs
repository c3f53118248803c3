//! Where a cluster compacts its replicated log: the compaction points.
//!
//! Every node takes an image of its live state at each point it applies, and the leader
//! compacts the log to the point before the last one it applied, so that every node has
//! had an interval to make its image of that point and none replays the log (see
//! ARCHITECTURE.md, "Compaction"). Points must therefore be the same on every node. There
//! are two kinds:
//!
//! - **every `snapshot_every_entries` entries**: the zxids that are multiples of it;
//! - **every `snapshot_every_bytes` of entries** (128 MiB by default; 0: none): once the
//!   entries applied since the last
//!   point reach that many bytes (as framed for a peer), the leader appends a marker, an
//!   empty entry with the barrier [`COMPACTION_POINT_BARRIER`], and the zxid where it
//!   applies is a point on every node.
//!
//! The byte bound keeps what the leader's log holds past its compaction (two intervals,
//! each up to `snapshot_every_bytes` plus one entry, and at most [`SKIPS_BEFORE_TAIL`]
//! more while the leader has no image of its own to compact to) small enough for the one
//! message that catches a follower up: an interval of 100,000 large entries used to be
//! more than a peer frame holds, and a follower behind by that much was never caught up
//! until a compaction covered what it lacked.
//!
//! Only the leader counts for the markers, and the count is soft: a new or restarted
//! leader starts from what it applied itself since, so an interval can reach twice the
//! bound then. A node that does not know markers (an older binary during a rolling upgrade)
//! applies one as the empty entry it is and, at a compaction to it, replays its log
//! instead of using an image: slower, not different.

use crate::machine::{Entry, EntryBody};

/// The barrier of the empty entry that marks a compaction point. Node barriers carry
/// their node id (at least 1) in the high 16 bits, and the leader's resync entry is
/// barrier 0, so no other entry carries this one.
pub const COMPACTION_POINT_BARRIER: u64 = 1;

/// The empty entry a leader appends to mark a compaction point.
pub fn marker(wall_ms: i64) -> Entry {
    Entry::new(
        wall_ms,
        EntryBody::Noop {
            barrier: COMPACTION_POINT_BARRIER,
        },
    )
}

/// Whether `entry` marks a compaction point.
pub fn is_marker(entry: &Entry) -> bool {
    matches!(
        &*entry.body,
        EntryBody::Noop {
            barrier: COMPACTION_POINT_BARRIER
        }
    )
}

/// The compaction points a node has applied, and the bytes applied since the last.
#[derive(Debug, Clone)]
pub struct CompactionPoints {
    every_entries: u64,
    every_bytes: u64,
    /// Bytes of the entries applied since the last point.
    bytes_since: u64,
    /// `bytes_since` at which the leader appends its next marker.
    next_marker_at: u64,
    /// The two latest points known, older first.
    recent: [u64; 2],
}

impl CompactionPoints {
    /// The points of a node that has applied the first `last_zxid` entries (recovered
    /// or installed): it knows the multiples of `every_entries` only, not the markers.
    pub fn new(every_entries: u64, every_bytes: u64, last_zxid: u64) -> CompactionPoints {
        let every_entries = every_entries.max(1);
        let every_bytes = every_bytes.max(1);
        let last = last_zxid / every_entries * every_entries;
        CompactionPoints {
            every_entries,
            every_bytes,
            bytes_since: 0,
            next_marker_at: every_bytes,
            recent: [last.saturating_sub(every_entries), last],
        }
    }

    /// Notes that `entry`, of `bytes` framed, applied at `zxid`. True if `zxid` is a
    /// compaction point: the node then offers an image of its state.
    pub fn applied(&mut self, zxid: u64, entry: &Entry, bytes: u64) -> bool {
        if zxid.is_multiple_of(self.every_entries) || is_marker(entry) {
            self.point(zxid);
            return true;
        }
        self.count(bytes);
        false
    }

    /// Notes `zxid` as a point (a single node's snapshot is one wherever it is taken).
    pub fn point(&mut self, zxid: u64) {
        self.recent = [self.recent[1], zxid];
        self.bytes_since = 0;
        self.next_marker_at = self.every_bytes;
    }

    /// Counts `bytes` of entries applied past the last point.
    pub fn count(&mut self, bytes: u64) {
        self.bytes_since = self.bytes_since.saturating_add(bytes);
    }

    /// Leader: whether to append a marker now. Once true, it is true again only after
    /// another `every_bytes` (a marker lost with a leadership is then made up for).
    pub fn marker_due(&mut self) -> bool {
        if self.bytes_since < self.next_marker_at {
            return false;
        }
        self.next_marker_at = self.bytes_since.saturating_add(self.every_bytes);
        true
    }

    /// The point to compact to: the one before the last applied (0: none yet).
    pub fn compact_to(&self) -> u64 {
        self.recent[0]
    }

    /// Bytes of the entries applied since the last point.
    pub fn bytes_since(&self) -> u64 {
        self.bytes_since
    }
}

/// What a node does when its log is to be compacted to `asked`
/// ([`compaction_at_own_image`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnImageCompaction {
    /// Compact to this index now.
    To(usize),
    /// Nothing now; ask again once the image being encoded is offered.
    Wait,
    /// Nothing: the image of a later point will do, at one of the leader's next
    /// compactions.
    Skip,
}

/// Compactions a node skips in a row for want of an image of its own before it compacts
/// with a tail: the image of the next point normally comes within one.
pub const SKIPS_BEFORE_TAIL: u32 = 2;

/// Where a node compacts when its log is to be compacted to `asked` (the leader at the
/// point before its last, a follower where the leader asks), given its compacted index,
/// the points of the images it has offered, whether one is being encoded, and how many
/// compactions it skipped in a row.
///
/// The leader compacts to the point before its last, where every node offered an image
/// an interval ago. But an image can take longer than an interval (it is encoded and
/// written on a niced thread, on a disk the log shares), a point reached while the
/// previous image is still being encoded gets none, and a node that restarted or
/// installed a snapshot has no image of the points before. Compacting there anyway
/// stores the node's previous image with every entry since as the snapshot's tail,
/// encoded into its log on the node's core: on followers, stalls of 0.3 to 5 s under
/// 1 MiB writes at 128 MiB points, and leader changes when they passed the election
/// timeout. So a node compacts to its newest image at or before `asked` (the entries
/// after it stay in its log until the next compaction), or waits for the image being
/// encoded, or skips this compaction (the next point's image will do), and uses a tail
/// only after [`SKIPS_BEFORE_TAIL`] skips in a row (images that cannot be encoded, or
/// points this node does not know). The leader asks its followers for the index it
/// compacted to. Compacting less far than asked is safe: a compaction is local, and
/// what the leader sends a follower depends on what the follower accepted, not on what
/// either compacted; the leader's log then holds up to [`SKIPS_BEFORE_TAIL`] intervals
/// more for a follower's catch-up.
pub fn compaction_at_own_image(
    asked: usize,
    compacted: usize,
    images: &[u64],
    encoding: bool,
    skipped: u32,
) -> OwnImageCompaction {
    let own = images
        .iter()
        .filter_map(|zxid| usize::try_from(*zxid).ok())
        .filter(|zxid| *zxid > compacted && *zxid <= asked)
        .max();
    match own {
        Some(zxid) => OwnImageCompaction::To(zxid),
        None if encoding => OwnImageCompaction::Wait,
        None if skipped < SKIPS_BEFORE_TAIL => OwnImageCompaction::Skip,
        None => OwnImageCompaction::To(asked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write() -> Entry {
        Entry::new(0, EntryBody::Noop { barrier: 1 << 48 })
    }

    #[test]
    fn multiples_of_the_entry_interval_are_points() {
        let mut p = CompactionPoints::new(10, u64::MAX, 25);
        assert_eq!(p.compact_to(), 10, "recovered at 25: the points 10 and 20");
        for zxid in 26..30 {
            assert!(!p.applied(zxid, &write(), 5));
        }
        assert!(p.applied(30, &write(), 5));
        assert_eq!(p.compact_to(), 20);
        assert_eq!(p.bytes_since(), 0);
    }

    #[test]
    fn the_leader_marks_a_point_after_the_byte_interval_and_markers_are_points() {
        let mut p = CompactionPoints::new(1_000, 100, 0);
        assert_eq!(p.compact_to(), 0);
        p.applied(1, &write(), 60);
        assert!(!p.marker_due());
        p.applied(2, &write(), 60);
        assert!(p.marker_due(), "120 bytes since the last point");
        assert!(!p.marker_due(), "one marker per interval");
        p.applied(3, &write(), 60);
        assert!(!p.marker_due(), "its marker is on its way");
        assert!(p.applied(4, &marker(0), 10), "the marker is a point");
        assert_eq!(p.compact_to(), 0, "the one before it");
        for zxid in 5..=6 {
            p.applied(zxid, &write(), 60);
        }
        assert!(p.marker_due());
        assert!(p.applied(7, &marker(0), 10));
        assert_eq!(p.compact_to(), 4);
    }

    #[test]
    fn a_lost_marker_is_made_up_for_after_another_interval() {
        let mut p = CompactionPoints::new(1_000, 100, 0);
        p.applied(1, &write(), 100);
        assert!(p.marker_due());
        p.applied(2, &write(), 99);
        assert!(!p.marker_due());
        p.applied(3, &write(), 1);
        assert!(p.marker_due(), "no marker applied within another interval");
    }

    #[test]
    fn only_the_marker_barrier_marks() {
        assert!(is_marker(&marker(5)));
        for barrier in [0, 2, 1 << 48, u64::MAX] {
            assert!(!is_marker(&Entry::new(0, EntryBody::Noop { barrier })));
        }
    }

    #[test]
    fn a_node_compacts_to_its_own_image_or_waits_for_one() {
        use OwnImageCompaction::*;
        // Its image of the point asked for.
        assert_eq!(
            compaction_at_own_image(200, 100, &[100, 200], false, 0),
            To(200)
        );
        // That one was skipped: its newest image before it, the rest stays in the log.
        assert_eq!(
            compaction_at_own_image(200, 0, &[100, 300], false, 0),
            To(100)
        );
        // Still being encoded: wait for it.
        assert_eq!(compaction_at_own_image(200, 100, &[100], true, 0), Wait);
        assert_eq!(compaction_at_own_image(200, 100, &[100], true, 5), Wait);
        // None: the next point's image will do.
        assert_eq!(
            compaction_at_own_image(200, 100, &[100, 300], false, 0),
            Skip
        );
        assert_eq!(compaction_at_own_image(200, 100, &[100], false, 1), Skip);
        // None after skipping twice in a row: compact as asked (the snapshot keeps a
        // tail).
        let skips = SKIPS_BEFORE_TAIL;
        assert_eq!(
            compaction_at_own_image(200, 100, &[100], false, skips),
            To(200)
        );
        assert_eq!(compaction_at_own_image(200, 0, &[], false, skips), To(200));
    }
}
