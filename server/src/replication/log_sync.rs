//! Outgoing OmniPaxos log syncs made consistent with the snapshot they carry.
//!
//! A log sync (in a follower's `Promise` or a leader's `AcceptSync`) says: install this
//! decided snapshot, which covers the log up to `sync_idx`, then put `suffix` at
//! `sync_idx`. OmniPaxos 0.2.4 builds it from the sender's decided index: `sync_idx` is
//! the decided index, the suffix starts there, and the snapshot is the whole stored one
//! (`Complete`) when the receiver is behind the sender's compacted index.
//!
//! That holds only while the sender's log is not compacted past its decided index, and
//! OmniPaxos can break it. A leader in its prepare phase that receives a `PrepareReq`
//! from a node whose promise it has already counted stops counting that promise, but
//! keeps the log sync it took from it as the most up-to-date one. When the remaining
//! promises make a majority, the leader adopts that log sync, whose snapshot covers the
//! entries decided at that node, while its own decided index is the highest of the
//! promises it still counts, which can be lower. Its log is then compacted past its
//! decided index, and every log sync it sends carries a snapshot that covers more than
//! `sync_idx` and a suffix taken from an index it no longer holds (the storage returns
//! none). A receiver would put the entries it accepts next at the wrong indexes. (Soak
//! seed 6003939: a follower applied at zxid 297 the entry the leader had at 299.)
//!
//! The fix is to send what the sync means: `sync_idx` is the index the snapshot covers,
//! and the suffix is the sender's log from there. Every entry in the snapshot is decided
//! (it was decided where the snapshot was made), so the receiver may compact and apply
//! it even though the decided index it knows is lower; the indexes of everything after
//! it are the sender's.

use crate::machine::Entry;
use crate::replication::storage::PaxosStorage;
use omnipaxos::messages::sequence_paxos::PaxosMsg;
use omnipaxos::messages::Message;
use omnipaxos::storage::SnapshotType;
use omnipaxos::util::{LogEntry, LogSync};
use omnipaxos::OmniPaxos;

/// Rewrites the log sync of an outgoing `Promise` or `AcceptSync` whose `Complete`
/// snapshot covers more than its `sync_idx` (module documentation). An error means the
/// sync cannot be made consistent and must not be sent.
pub(super) fn fit_outgoing(
    op: &OmniPaxos<Entry, PaxosStorage>,
    msg: &mut Message<Entry>,
) -> Result<(), String> {
    let Message::SequencePaxos(m) = msg else {
        return Ok(());
    };
    let sync = match &mut m.msg {
        PaxosMsg::Promise(p) => match &mut p.log_sync {
            Some(sync) => sync,
            None => return Ok(()),
        },
        PaxosMsg::AcceptSync(a) => &mut a.log_sync,
        _ => return Ok(()),
    };
    let log = SenderLog {
        compacted_idx: op.get_compacted_idx(),
        accepted_idx: op.get_accepted_idx(),
    };
    fit(sync, |from, to| op.read_entries(from..to), log)
}

/// The sender's log: compacted up to `compacted_idx`, accepted up to `accepted_idx` (a
/// stop sign included).
#[derive(Debug, Clone, Copy)]
struct SenderLog {
    compacted_idx: usize,
    accepted_idx: usize,
}

/// [`fit_outgoing`] on one log sync; `read` reads the sender's log like
/// `OmniPaxos::read_entries`.
fn fit(
    sync: &mut LogSync<Entry>,
    read: impl Fn(usize, usize) -> Option<Vec<LogEntry<Entry>>>,
    log: SenderLog,
) -> Result<(), String> {
    let end = log
        .accepted_idx
        .saturating_sub(usize::from(sync.stopsign.is_some()));
    let covers = match &sync.decided_snapshot {
        Some(SnapshotType::Complete(s)) => {
            usize::try_from(s.covers()).map_err(|e| e.to_string())?
        }
        _ => 0,
    };
    if covers <= sync.sync_idx {
        // The same compaction past the decided index leaves a sync without a whole
        // snapshot (a receiver whose decided index is past ours) starting before our
        // log, which the storage cannot read: nothing can be sent that fits.
        if sync.sync_idx < log.compacted_idx && sync.sync_idx + sync.suffix.len() < end {
            return Err(format!(
                "its suffix of {} goes at {}, before the log's compacted index {}, and the \
                 log ends at {end}",
                sync.suffix.len(),
                sync.sync_idx,
                log.compacted_idx
            ));
        }
        return Ok(());
    }
    if end < covers {
        return Err(format!(
            "its snapshot covers {covers} entries but the log ends at {end}"
        ));
    }
    let mut suffix = Vec::with_capacity(end - covers);
    if end > covers {
        for e in read(covers, end).unwrap_or_default() {
            match e {
                LogEntry::Decided(entry) | LogEntry::Undecided(entry) => suffix.push(entry),
                other => {
                    return Err(format!(
                        "reading the log from {covers} to {end} gave {other:?}"
                    ))
                }
            }
        }
    }
    if suffix.len() != end - covers {
        return Err(format!(
            "reading the log from {covers} to {end} gave {} entries",
            suffix.len()
        ));
    }
    tracing::warn!(
        sync_idx = sync.sync_idx,
        snapshot_covers = covers,
        suffix = suffix.len(),
        "a log sync's snapshot covers more than its sync index; sending the suffix from \
         the snapshot's end"
    );
    sync.sync_idx = covers;
    sync.suffix = suffix;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::EntryBody;
    use crate::replication::storage::MachineSnapshot;
    use omnipaxos::storage::Snapshot;

    fn entry(i: u64) -> Entry {
        Entry::new(i as i64, EntryBody::Noop { barrier: i })
    }

    fn barrier(e: &Entry) -> u64 {
        match &*e.body {
            EntryBody::Noop { barrier } => *barrier,
            other => panic!("unexpected entry {other:?}"),
        }
    }

    /// A sender with entries [0, `log_end`), compacted to `compacted`.
    fn reader(
        compacted: usize,
        log_end: usize,
    ) -> impl Fn(usize, usize) -> Option<Vec<LogEntry<Entry>>> {
        move |from, to| {
            assert!(from >= compacted && to <= log_end, "read {from}..{to}");
            Some(
                (from..to)
                    .map(|i| LogEntry::Undecided(entry(i as u64)))
                    .collect(),
            )
        }
    }

    fn log(compacted_idx: usize, accepted_idx: usize) -> SenderLog {
        SenderLog {
            compacted_idx,
            accepted_idx,
        }
    }

    fn complete(covers: u64, sync_idx: usize, suffix: Vec<Entry>) -> LogSync<Entry> {
        let tail: Vec<Entry> = (0..covers).map(entry).collect();
        let snapshot = <MachineSnapshot as Snapshot<Entry>>::create(&tail);
        LogSync {
            decided_snapshot: Some(SnapshotType::Complete(snapshot)),
            suffix,
            sync_idx,
            stopsign: None,
        }
    }

    #[test]
    fn a_snapshot_past_the_sync_index_takes_the_suffix_from_its_end() {
        // Compacted to 305, decided 303 (what OmniPaxos sent: sync_idx 303, nothing after).
        let mut sync = complete(305, 303, Vec::new());
        fit(&mut sync, reader(305, 307), log(305, 307)).expect("fits");
        assert_eq!(sync.sync_idx, 305);
        let got: Vec<u64> = sync.suffix.iter().map(barrier).collect();
        assert_eq!(got, vec![305, 306]);
    }

    #[test]
    fn a_consistent_sync_is_left_alone() {
        let mut sync = complete(300, 300, vec![entry(300)]);
        fit(&mut sync, |_, _| panic!("no read needed"), log(300, 301)).expect("fits");
        assert_eq!(sync.sync_idx, 300);
        assert_eq!(sync.suffix.len(), 1);
    }

    #[test]
    fn a_snapshot_that_ends_the_log_gets_an_empty_suffix() {
        let mut sync = complete(305, 303, Vec::new());
        fit(&mut sync, |_, _| panic!("nothing to read"), log(305, 305)).expect("fits");
        assert_eq!(sync.sync_idx, 305);
        assert!(sync.suffix.is_empty());
    }

    #[test]
    fn a_log_that_cannot_supply_the_suffix_is_an_error() {
        let mut sync = complete(305, 303, Vec::new());
        let err = fit(&mut sync, |_, _| None, log(305, 307)).expect_err("cannot fit");
        assert!(err.contains("gave 0 entries"), "{err}");
        let err = fit(&mut sync, |_, _| None, log(305, 304)).expect_err("cannot fit");
        assert!(err.contains("log ends at 304"), "{err}");
    }

    #[test]
    fn a_suffix_the_log_no_longer_holds_is_an_error() {
        // A delta for a receiver past our decided index: empty, at our decided index 303,
        // below our compacted index 305, so the storage returned no suffix.
        let empty = <MachineSnapshot as Snapshot<Entry>>::create(&[]);
        let mut sync = LogSync {
            decided_snapshot: Some(SnapshotType::Delta(empty)),
            suffix: Vec::new(),
            sync_idx: 303,
            stopsign: None,
        };
        let err = fit(&mut sync, |_, _| None, log(305, 307)).expect_err("cannot fit");
        assert!(
            err.contains("before the log's compacted index 305"),
            "{err}"
        );
        // The same sync from a log that starts at 303 is what OmniPaxos means.
        let mut sync = LogSync {
            decided_snapshot: None,
            suffix: vec![entry(303), entry(304)],
            sync_idx: 303,
            stopsign: None,
        };
        fit(&mut sync, |_, _| panic!("no read needed"), log(300, 305)).expect("fits");
        assert_eq!(sync.sync_idx, 303);
    }
}
