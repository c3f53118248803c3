//! Single-node recovery when a snapshot is damaged: the log must reach back to the
//! snapshot recovery falls back to, and recovery must refuse a log that does not.

use super::*;
use crate::machine::{Entry, EntryBody};
use crate::node::encode_entry;
use std::time::Duration;

fn options() -> WalOptions {
    WalOptions {
        // About ten records per segment, so that compaction deletes some.
        segment_bytes: 256,
        fsync: false,
        preallocate_bytes: 0,
    }
}

fn entry(i: u64) -> Entry {
    Entry::new(
        1_000 + i as i64,
        EntryBody::OpenSession {
            secret: i,
            ttl_ms: 10_000,
        },
    )
}

fn machine_through(n: u64) -> StateMachine {
    let mut m = StateMachine::new(MachineLimits::default());
    for i in 1..=n {
        m.apply(i, &entry(i));
    }
    m
}

fn damage(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(path, &bytes).expect("write");
}

fn snapshot_path(dir: &Path, index: u64) -> PathBuf {
    snapshot_dir(dir).join(format!("snap-{index:020}.bin"))
}

/// A log that starts after the newest snapshot recovery can read (here: its only
/// snapshot is damaged) is refused, not replayed onto a state missing what the deleted
/// segments held.
#[test]
fn recovery_refuses_a_log_that_starts_after_its_newest_readable_snapshot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let image = machine_through(100)
        .image()
        .encode_snapshot()
        .expect("encode");
    snapshot::save(&snapshot_dir(dir), 100, &image, SNAPSHOTS_KEPT).expect("save");
    crate::wal::create_empty_at(&wal_dir(dir), 101, false).expect("log");
    let (mut wal, _) = Wal::open(&wal_dir(dir), options()).expect("open");
    for i in 101..=150 {
        wal.append(&encode_entry(&entry(i)).expect("encode"))
            .expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let whole = recover(dir, MachineLimits::default(), options()).expect("recover");
    assert_eq!(whole.machine.sessions().count(), 150);
    drop(whole);

    damage(&snapshot_path(dir, 100));
    match recover(dir, MachineLimits::default(), options()) {
        Err(RecoveryError::Missing {
            snapshot: 0,
            log_start: 101,
        }) => {}
        Err(e) => panic!("refused, but not as missing records: {e}"),
        Ok(r) => panic!(
            "recovered {} of 150 sessions from a log starting at 101 and no snapshot",
            r.machine.sessions().count()
        ),
    }
}

/// The storage thread compacts the log only through the older of two snapshots: with a
/// single one (the first, or the one a restart loaded), the log keeps everything, so a
/// damaged snapshot costs replay time, not data.
#[test]
fn a_single_node_keeps_its_log_back_to_before_its_only_snapshot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let recovered = recover(dir, MachineLimits::default(), options()).expect("fresh");
    let (commands, rx) = mpsc::channel::<StorageCommand>();
    let (report, reports) = mpsc::channel::<Input>();
    let data_dir = dir.to_path_buf();
    let thread = std::thread::spawn(move || {
        run_storage_thread(
            data_dir,
            Backend::Local {
                wal: Box::new(recovered.wal),
                snapshot_index: None,
            },
            rx,
            move |input| report.send(input).is_ok(),
        )
    });
    let persist = |i: u64| {
        commands
            .send(StorageCommand::Persist {
                batch: i,
                records: vec![encode_entry(&entry(i)).expect("encode")],
                first_lsn: Some(i),
                starts_with_checkpoint: false,
            })
            .expect("send");
        match reports.recv_timeout(Duration::from_secs(10)) {
            Ok(Input::Persisted { batch }) => assert_eq!(batch, i),
            other => panic!("unexpected report {other:?}"),
        }
    };
    for i in 1..=100 {
        persist(i);
    }
    commands
        .send(StorageCommand::Snapshot {
            index: 100,
            image: machine_through(100).image(),
        })
        .expect("send");
    // Every persist after the snapshot is written gives the thread a chance to compact:
    // 50 of them after the file appears.
    let mut i = 101;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !snapshot_path(dir, 100).exists() {
        assert!(std::time::Instant::now() < deadline, "no snapshot written");
        persist(i);
        i += 1;
    }
    for _ in 0..50 {
        persist(i);
        i += 1;
    }
    drop(commands);
    thread.join().expect("storage thread");
    let last = i - 1;
    let first_segment = std::fs::read_dir(wal_dir(dir))
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .min()
        .expect("a segment");
    assert_eq!(first_segment, "wal-00000000000000000001.log");

    damage(&snapshot_path(dir, 100));
    let r = recover(dir, MachineLimits::default(), options()).expect("recover from the log");
    assert_eq!(r.machine.last_zxid(), last);
    assert_eq!(r.machine.sessions().count() as u64, last);
}

/// A snapshot recovery skips as damaged is set aside (`.damaged`), so the next save keeps
/// the good older one it fell back to instead of the damaged newer one.
#[test]
fn a_damaged_snapshot_is_set_aside_and_a_later_save_keeps_the_good_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let snaps = tmp.path().join("snapshots");
    let image = |n: u64| {
        machine_through(n)
            .image()
            .encode_snapshot()
            .expect("encode")
    };
    snapshot::save(&snaps, 100, &image(100), SNAPSHOTS_KEPT).expect("save 100");
    snapshot::save(&snaps, 200, &image(200), SNAPSHOTS_KEPT).expect("save 200");
    damage(&snaps.join(format!("snap-{:020}.bin", 200)));
    let loaded = snapshot::load_latest(&snaps).expect("load").expect("one");
    assert_eq!(loaded.index, 100);
    snapshot::save(&snaps, 300, &image(300), SNAPSHOTS_KEPT).expect("save 300");
    let mut names: Vec<String> = std::fs::read_dir(&snaps)
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("snap-{:020}.bin", 100),
            format!("snap-{:020}.bin.damaged", 200),
            format!("snap-{:020}.bin", 300),
        ]
    );
}
