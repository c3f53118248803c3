//! Durability of a single node across crashes and restarts: acknowledged writes
//! survive `kill -9` under load, a torn tail of the write-ahead log is cut at start-up,
//! damage in an earlier segment stops the server with a clear error, snapshots compact
//! the log, and a graceful shutdown keeps sessions for clients that come back.
//!
//! The WAL format (server/src/wal.rs): segments `<data_dir>/wal/wal-<20-digit lsn>.log`,
//! each a sequence of records `[u32 LE len][u32 LE crc][payload]`.

use corral_client::{Client, ClientConfig, ConnectionState, CreateMode, Error, ErrorCode};
use corral_tests::{eventually, test_seed, TestServer};
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn config(addr: &str) -> ClientConfig {
    ClientConfig::new([addr])
        .with_connect_timeout(Duration::from_millis(500))
        .with_max_backoff(Duration::from_millis(100))
}

/// Connects, retrying (bounded) while a restarted server comes up.
async fn connect(addr: &str) -> Client {
    eventually("a session with the server", WAIT, || {
        let config = config(addr);
        async move { Client::connect(config).await.ok() }
    })
    .await
}

// ----- the WAL on disk -----

fn wal_dir(server: &TestServer) -> PathBuf {
    server.data_dir().join("wal")
}

/// The segment files, oldest first, with their first lsn.
fn segments(server: &TestServer) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(wal_dir(server))
        .expect("read the wal directory")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
            (digits.len() == 20).then_some(())?;
            Some((digits.parse().ok()?, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The intact records of a segment: (offset, payload length).
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        let mut hasher = crc32fast_like::Hasher::new();
        hasher.update(&bytes[at..at + 4]);
        hasher.update(payload);
        if hasher.finalize() != crc {
            break;
        }
        out.push((at, len));
        at += 8 + len;
    }
    out
}

/// CRC-32 (IEEE), as crc32fast computes it; the tests crate does not depend on it.
mod crc32fast_like {
    pub struct Hasher(u32);

    impl Hasher {
        pub fn new() -> Self {
            Hasher(0xffff_ffff)
        }

        pub fn update(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 ^= u32::from(b);
                for _ in 0..8 {
                    let mask = (self.0 & 1).wrapping_neg();
                    self.0 = (self.0 >> 1) ^ (0xedb8_8320 & mask);
                }
            }
        }

        pub fn finalize(self) -> u32 {
            !self.0
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn node_data(i: usize) -> Vec<u8> {
    format!("data of node {i}").into_bytes()
}

// ----- (a) kill -9 under load -----

/// What one writer task knows at the end.
#[derive(Debug, Default)]
struct WriterLog {
    /// Acknowledged state per path: (data, zxid of the write).
    acked: BTreeMap<String, (Vec<u8>, u64)>,
    /// A write that was sent but not acknowledged (it may or may not have been applied).
    in_doubt: Option<(String, Vec<u8>)>,
    writes: usize,
}

async fn writer(
    addr: String,
    task: u64,
    seed: u64,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(task));
    let mut log = WriterLog::default();
    let Ok(client) =
        Client::connect(config(&addr).with_request_timeout(Duration::from_secs(3))).await
    else {
        // Only if the kill came before this writer got going.
        return log;
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut paths: Vec<String> = Vec::new();
    for k in 0..5_000u32 {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break;
        }
        let data = {
            let mut d = format!("t{task}-w{k}-").into_bytes();
            let extra = rng.gen_range(0..200);
            d.extend((0..extra).map(|_| rng.gen_range(b'a'..=b'z')));
            d
        };
        let create = paths.is_empty() || rng.gen_bool(0.4);
        let path = if create {
            format!("/load/t{task}-{k}")
        } else {
            paths[rng.gen_range(0..paths.len())].clone()
        };
        log.in_doubt = Some((path.clone(), data.clone()));
        let result = if create {
            client
                .create_with(corral_client::CreateRequest {
                    path: path.clone(),
                    data: data.clone(),
                    mode: CreateMode::Persistent,
                    make_parents: false,
                })
                .await
                .map(|c| c.stat.czxid)
        } else {
            client
                .set_data(&path, data.clone(), None)
                .await
                .map(|s| s.mzxid)
        };
        match result {
            Ok(zxid) => {
                log.in_doubt = None;
                log.acked.insert(path.clone(), (data, zxid));
                if create {
                    paths.push(path);
                }
                log.writes += 1;
                acked.fetch_add(1, Ordering::SeqCst);
            }
            // The server is gone (killed): stop with this write in doubt.
            Err(_) => break,
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_under_load() {
    let seed = test_seed("acknowledged_writes_survive_kill_9_under_load");
    kill_under_load(seed, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_under_load_with_snapshots() {
    let seed = test_seed("acknowledged_writes_survive_kill_9_under_load_with_snapshots");
    // Snapshots and log compaction run all the time, so the kill may hit one.
    kill_under_load(
        seed,
        &[
            "--snapshot-every-entries",
            "97",
            "--wal-segment-bytes",
            "8192",
        ],
    )
    .await;
}

async fn kill_under_load(seed: u64, extra_args: &[&str]) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut server = TestServer::start(extra_args);
    let addr = server.addr();
    let setup = connect(&addr).await;
    setup
        .create("/load", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");

    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..8)
        .map(|t| tokio::spawn(writer(addr.clone(), t, seed, acked.clone(), stop.clone())))
        .collect();
    // Kill somewhere in the middle of the load.
    let kill_after = rng.gen_range(800..2500);
    let started = Instant::now();
    // (Or after 2 s on a slow disk: the writers go on for 4 s.)
    eventually("writes to be acknowledged", Duration::from_secs(20), || {
        let n = acked.load(Ordering::SeqCst);
        let late = started.elapsed() >= Duration::from_secs(2);
        async move { (n >= kill_after || (late && n > 0)).then_some(()) }
    })
    .await;
    server.kill();
    stop.store(true, Ordering::SeqCst);
    println!(
        "killed after {} acknowledged writes ({:?})",
        acked.load(Ordering::SeqCst),
        started.elapsed()
    );
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.expect("writer task"));
    }
    drop(setup);

    server.restart();
    let c = connect(&server.addr()).await;
    let mut max_acked = 0;
    let mut checked = 0;
    for log in &logs {
        for (path, (data, zxid)) in &log.acked {
            max_acked = max_acked.max(*zxid);
            let in_doubt = log
                .in_doubt
                .as_ref()
                .filter(|(p, _)| p == path)
                .map(|(_, d)| d);
            let (found, stat) = c
                .get_data(path)
                .await
                .unwrap_or_else(|e| panic!("acknowledged {path} is lost: {e}"));
            if &found == data {
                assert_eq!(stat.mzxid, *zxid, "{path}: the acknowledged write");
            } else {
                assert_eq!(
                    Some(&found),
                    in_doubt,
                    "{path}: neither the acknowledged data nor the write in doubt"
                );
                assert!(stat.mzxid > *zxid);
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
    let total: usize = logs.iter().map(|l| l.writes).sum();
    println!("{total} acknowledged writes, {checked} nodes checked");
    assert!(total > 0);
    // The tree holds the acknowledged creates, and nothing that was never attempted.
    let children = c.get_children("/load").await.expect("ls");
    for log in &logs {
        for path in log.acked.keys() {
            assert!(children.contains(&path[6..].to_string()), "{path} listed");
        }
    }
    let attempted: usize = logs
        .iter()
        .map(|l| {
            l.acked.len()
                + usize::from(
                    l.in_doubt
                        .as_ref()
                        .is_some_and(|(p, _)| !l.acked.contains_key(p)),
                )
        })
        .sum();
    assert!(
        children.len() <= attempted,
        "{} > {attempted}",
        children.len()
    );
    // New writes come after everything acknowledged before the crash.
    let created = c
        .create_with(corral_client::CreateRequest {
            path: "/after".into(),
            data: vec![],
            mode: CreateMode::Persistent,
            make_parents: false,
        })
        .await
        .expect("write after restart");
    assert!(
        created.stat.czxid > max_acked,
        "zxid {} after the crash, {max_acked} acknowledged before",
        created.stat.czxid
    );
}

// ----- (b) torn tail -----

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut the last record in the middle of its payload.
    CutPayload,
    /// Cut the last record in the middle of its header.
    CutHeader,
    /// Append random bytes after the last record.
    Garbage(u64),
    /// Append a zero-filled block (preallocated space).
    Zeros,
}

async fn torn_tail(damage: Damage) {
    let mut server = TestServer::start(&[]);
    let c = connect(&server.addr()).await;
    let n = 20;
    let mut last_zxid = 0;
    for i in 0..n {
        last_zxid = c
            .create_with(corral_client::CreateRequest {
                path: format!("/t{i:02}"),
                data: node_data(i),
                mode: CreateMode::Persistent,
                make_parents: false,
            })
            .await
            .expect("create")
            .stat
            .czxid;
    }
    server.kill();
    drop(c);

    let segs = segments(&server);
    let (_, last) = segs.last().expect("a segment");
    let mut bytes = std::fs::read(last).expect("read segment");
    let recs = records(&bytes);
    let end = recs.last().map(|(o, l)| o + 8 + l).expect("a record");
    // Behind the last record: only the log's preallocated room (zeros), which the
    // damage below replaces.
    assert!(
        bytes[end..].iter().all(|b| *b == 0),
        "the segment ends with an intact record, then zeros"
    );
    bytes.truncate(end);
    let (offset, len) = *recs.last().expect("a record");
    let last_name = format!("/t{:02}", n - 1);
    assert!(
        contains(&bytes[offset + 8..offset + 8 + len], last_name.as_bytes()),
        "the last record is the create of {last_name}"
    );
    let last_survives = match damage {
        Damage::CutPayload => {
            bytes.truncate(offset + 8 + len / 2);
            false
        }
        Damage::CutHeader => {
            bytes.truncate(offset + 5);
            false
        }
        Damage::Garbage(seed) => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut junk = vec![0u8; rng.gen_range(1..300)];
            rng.fill_bytes(&mut junk);
            bytes.extend_from_slice(&junk);
            true
        }
        Damage::Zeros => {
            bytes.extend_from_slice(&[0u8; 4096]);
            true
        }
    };
    std::fs::write(last, &bytes).expect("damage the segment");

    server.restart();
    let c = connect(&server.addr()).await;
    for i in 0..n - 1 {
        let (data, _) = c
            .get_data(&format!("/t{i:02}"))
            .await
            .unwrap_or_else(|e| panic!("/t{i:02} lost: {e}"));
        assert_eq!(data, node_data(i));
    }
    assert_eq!(
        c.exists(&last_name).await.expect("exists").is_some(),
        last_survives,
        "{damage:?}: the last record"
    );
    // New writes work and get zxids after what is on disk.
    let after = c
        .create_with(corral_client::CreateRequest {
            path: "/after".into(),
            data: b"after".to_vec(),
            mode: CreateMode::Persistent,
            make_parents: false,
        })
        .await
        .expect("write after recovery");
    if last_survives {
        assert!(after.stat.czxid > last_zxid);
    } else {
        assert!(after.stat.czxid >= last_zxid);
    }
    c.set_data("/t00", b"changed".to_vec(), Some(0))
        .await
        .expect("set after recovery");

    // The cut was made durable: no stale bytes come back behind the new records.
    server.kill();
    drop(c);
    server.restart();
    let c = connect(&server.addr()).await;
    assert_eq!(c.get_data("/after").await.expect("after").0, b"after");
    assert_eq!(c.get_data("/t00").await.expect("t00").0, b"changed");
    assert_eq!(
        c.exists(&last_name).await.expect("exists").is_some(),
        last_survives
    );
    assert_eq!(
        c.get_children("/").await.expect("ls").len(),
        n - 1 + usize::from(last_survives) + 1
    );
}

#[tokio::test]
async fn a_torn_tail_cut_in_a_payload_is_dropped_at_start_up() {
    torn_tail(Damage::CutPayload).await;
}

#[tokio::test]
async fn a_torn_tail_cut_in_a_header_is_dropped_at_start_up() {
    torn_tail(Damage::CutHeader).await;
}

#[tokio::test]
async fn garbage_after_the_last_record_is_dropped_at_start_up() {
    torn_tail(Damage::Garbage(test_seed(
        "garbage_after_the_last_record_is_dropped_at_start_up",
    )))
    .await;
}

#[tokio::test]
async fn a_zero_filled_tail_is_dropped_at_start_up() {
    torn_tail(Damage::Zeros).await;
}

// ----- (c) corruption in an earlier segment -----

#[tokio::test]
async fn corruption_in_an_earlier_segment_stops_the_server_with_a_clear_error() {
    damage_is_refused(|_| vec![0, 1], 3).await;
}

/// A flipped byte in the middle of the active segment, with synced records after it, is
/// damage, not a torn tail: the server used to cut every record from there on (writes it
/// had acknowledged) and start, giving their zxids to new writes.
#[tokio::test]
async fn corruption_in_the_middle_of_the_last_segment_stops_the_server_with_a_clear_error() {
    damage_is_refused(|segs| vec![segs.len() - 1], 1).await;
}

/// Writes 80 nodes with 4 KiB segments, then, for each segment `victims` picks, flips a
/// byte in the payload of a record in its middle and checks that the server refuses to
/// start, naming the damage, and changes nothing; with the byte restored it starts with
/// everything.
async fn damage_is_refused(victims: impl Fn(&[(u64, PathBuf)]) -> Vec<usize>, min_segments: usize) {
    let mut server = TestServer::start(&["--wal-segment-bytes", "4096"]);
    let c = connect(&server.addr()).await;
    let n = 80;
    for i in 0..n {
        c.create_with(corral_client::CreateRequest {
            path: format!("/c{i:03}"),
            data: vec![b'x'; 100],
            mode: CreateMode::Persistent,
            make_parents: false,
        })
        .await
        .expect("create");
    }
    server.kill();
    drop(c);
    let segs = segments(&server);
    assert!(segs.len() >= min_segments, "several segments: {segs:?}");

    for victim in victims(&segs) {
        let (_, path) = &segs[victim];
        let original = std::fs::read(path).expect("read segment");
        let recs = records(&original);
        assert!(recs.len() >= 3, "{path:?} holds records");
        let (offset, len) = recs[recs.len() / 2];
        let mut bytes = original.clone();
        bytes[offset + 8 + len / 2] ^= 0x40;
        std::fs::write(path, &bytes).expect("flip a byte");

        let err = server
            .try_restart()
            .expect_err("the server must refuse a damaged segment");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        assert!(
            err.contains(&format!("offset {offset}")) || err.contains(name),
            "the error names the damaged file or offset: {err}"
        );
        assert!(err.to_lowercase().contains("corrupt"), "{err}");
        assert!(
            !err.contains("exit status: 0") && err.contains("exit status"),
            "non-zero exit: {err}"
        );
        // Nothing was cut: with the byte restored, everything is back.
        let after_refusal = std::fs::read(path).expect("read segment");
        assert_eq!(after_refusal, bytes, "the refusing server changed nothing");
        std::fs::write(path, &original).expect("restore");
        assert_eq!(segments(&server), segs, "no segment was removed");
    }
    server.restart();
    let c = connect(&server.addr()).await;
    let children = c.get_children("/").await.expect("ls");
    assert_eq!(children.len(), n);
    assert_eq!(
        c.get_data("/c000").await.expect("get").0,
        vec![b'x'; 100],
        "data intact"
    );
}

// ----- (d) snapshots -----

async fn create_many(c: &Client, prefix: &str, range: std::ops::Range<usize>) {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(100) {
        let futures: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let c = c.clone();
                let path = format!("{prefix}/n{i:04}");
                async move {
                    c.create(&path, node_data(i), CreateMode::Persistent)
                        .await
                        .unwrap_or_else(|e| panic!("create {path}: {e}"))
                }
            })
            .collect();
        futures::future::join_all(futures).await;
    }
}

async fn assert_all_present(c: &Client, prefix: &str, n: usize) {
    let children = c.get_children(prefix).await.expect("ls");
    assert_eq!(children.len(), n, "all {n} nodes are present");
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(200) {
        let futures: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let c = c.clone();
                async move {
                    let path = format!("{prefix}/n{i:04}");
                    let (data, _) = c
                        .get_data(&path)
                        .await
                        .unwrap_or_else(|e| panic!("{path}: {e}"));
                    assert_eq!(data, node_data(i), "{path}");
                }
            })
            .collect();
        futures::future::join_all(futures).await;
    }
}

fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("snap-") && n.ends_with(".bin"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn snapshots_compact_the_log_and_recovery_uses_them() {
    let mut server = TestServer::start(&[
        "--snapshot-every-entries",
        "100",
        "--wal-segment-bytes",
        "4096",
    ]);
    let c = connect(&server.addr()).await;
    c.create("/s", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let n = 1000;
    create_many(&c, "/s", 0..n).await;
    let last_zxid = c.last_zxid();
    assert!(last_zxid > n as u64);

    // Snapshots are written by the storage thread after the writes are answered: wait
    // for the last one (within 100 entries of the end) and for the older ones to go.
    let snap_dir = server.data_dir().join("snapshots");
    let (snaps, segs) = eventually("snapshots and a compacted log", WAIT, || {
        let snaps = snapshot_files(&snap_dir);
        let newest = snaps
            .last()
            .and_then(|n| n["snap-".len()..n.len() - ".bin".len()].parse::<u64>().ok())
            .unwrap_or(0);
        let segs = segments(&server);
        let compacted = segs
            .first()
            .is_some_and(|(first, _)| *first > last_zxid / 2);
        let done = snaps.len() == 2 && newest + 100 > last_zxid && compacted;
        async move { done.then_some((snaps, segs)) }
    })
    .await;
    println!("snapshots {snaps:?}, {} wal segments left", segs.len());
    assert!(snaps.len() <= 2, "only the newest two are kept: {snaps:?}");
    // Without compaction the log would need about one segment per 4 KiB written;
    // what is left covers only the records after the older snapshot.
    let wal_bytes: u64 = segs
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let first_lsn = segs.first().expect("a segment").0;
    let records_left = last_zxid + 1 - first_lsn;
    let per_record = wal_bytes as f64 / records_left as f64;
    let segments_written = (last_zxid as f64 * per_record / 4096.0).floor() as usize;
    assert!(
        segs.len() * 2 < segments_written,
        "{} segments left of about {segments_written}",
        segs.len()
    );

    // A clean restart: SIGTERM exits 0, everything is there.
    drop(c);
    let status = server.terminate_status().expect("the server exits in time");
    assert!(status.success(), "clean exit: {status}");
    server.restart();
    let c = connect(&server.addr()).await;
    assert_all_present(&c, "/s", n).await;
    let created = c
        .create_with(corral_client::CreateRequest {
            path: "/s/after".into(),
            data: vec![],
            mode: CreateMode::Persistent,
            make_parents: false,
        })
        .await
        .expect("write after restart");
    assert!(created.stat.czxid > last_zxid);
    c.delete("/s/after", None).await.expect("delete");

    // More writes across another snapshot, then a crash: snapshot plus log tail.
    create_many(&c, "/s", n..n + 150).await;
    server.kill();
    drop(c);
    server.restart();
    let c = connect(&server.addr()).await;
    assert_all_present(&c, "/s", n + 150).await;
}

// ----- (e) graceful shutdown -----

#[tokio::test]
async fn sigterm_exits_cleanly_and_sessions_survive_the_restart() {
    let mut server = TestServer::start(&[]);
    let client = Client::connect(
        config(&server.addr())
            .with_session_ttl(Duration::from_secs(10))
            .with_request_timeout(WAIT),
    )
    .await
    .expect("connect");
    let session = client.session_id();
    client
        .create("/mine", b"e".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let before = client
        .create("/durable", b"d".to_vec(), CreateMode::Persistent)
        .await
        .expect("persistent");
    assert_eq!(before, "/durable");
    let zxid_before = client.last_zxid();
    let mut states = client.state_events();

    let status = server.terminate_status().expect("the server exits in time");
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let seen = tokio::time::timeout(WAIT, async {
        let mut seen = Vec::new();
        while let Some(state) = states.recv().await {
            let done = state == ConnectionState::Disconnected;
            seen.push(state);
            if done {
                break;
            }
        }
        seen
    })
    .await
    .expect("the client notices the shutdown");
    assert_eq!(
        seen.last(),
        Some(&ConnectionState::Disconnected),
        "{seen:?}"
    );

    // A call made while the server is down waits for it.
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.set_data("/durable", b"d2".to_vec(), Some(0)).await })
    };
    server.restart();
    let connected = tokio::time::timeout(WAIT, async {
        while let Some(state) = states.recv().await {
            if state.is_connected() {
                return true;
            }
            if state.is_terminal() {
                return false;
            }
        }
        false
    })
    .await;
    assert_eq!(
        connected,
        Ok(true),
        "the client resumes ({:?})",
        client.state()
    );
    assert_eq!(client.session_id(), session, "the same session");
    let stat = tokio::time::timeout(WAIT, pending)
        .await
        .expect("in time")
        .expect("task")
        .expect("the waiting call succeeds");
    assert_eq!(stat.version, 1);
    assert!(stat.mzxid > zxid_before);

    let other = connect(&server.addr()).await;
    let mine = other.exists("/mine").await.expect("exists");
    assert_eq!(
        mine.map(|s| s.ephemeral_owner),
        Some(session),
        "the ephemeral survived with its session"
    );
    assert_eq!(other.get_data("/durable").await.expect("get").0, b"d2");
    client.close().await.expect("close");
    assert!(other.exists("/mine").await.expect("exists").is_none());
    assert!(matches!(client.exists("/").await, Err(Error::Closed)));
}

#[tokio::test]
async fn sessions_and_their_ephemerals_survive_kill_9() {
    let mut server = TestServer::start(&[]);
    let client = Client::connect(
        config(&server.addr())
            .with_session_ttl(Duration::from_secs(10))
            .with_request_timeout(WAIT),
    )
    .await
    .expect("connect");
    let session = client.session_id();
    client
        .create("/lock", b"held".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let mut states = client.state_events();
    server.kill();
    let disconnected = tokio::time::timeout(WAIT, async {
        while let Some(state) = states.recv().await {
            if state == ConnectionState::Disconnected {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(disconnected, Ok(true));
    server.restart();
    // The restarted node gives every session a full TTL to come back.
    let stat = tokio::time::timeout(WAIT, client.exists("/lock"))
        .await
        .expect("in time")
        .expect("the session resumes");
    assert_eq!(stat.map(|s| s.ephemeral_owner), Some(session));
    assert_eq!(client.session_id(), session);
    // Another client cannot take the lock while the owner lives.
    let other = connect(&server.addr()).await;
    match other
        .create("/lock", b"mine".to_vec(), CreateMode::Ephemeral)
        .await
    {
        Err(e) => assert!(e.is(ErrorCode::NodeExists), "{e}"),
        Ok(p) => panic!("created {p} while the owner's session lives"),
    }
}

#[tokio::test]
async fn a_changed_max_data_bytes_applies_after_a_restart_from_a_snapshot() {
    let mut server =
        TestServer::start(&["--max-data-bytes", "100", "--snapshot-every-entries", "10"]);
    let c = connect(&server.addr()).await;
    create_many(&c, "", 0..20).await;
    let snap_dir = server.data_dir().join("snapshots");
    eventually("a snapshot", WAIT, || {
        let n = snapshot_files(&snap_dir).len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    drop(c);
    assert!(server.terminate_status().is_some_and(|s| s.success()));

    // Without a snapshot a changed limit applies at once (the log is replayed into a
    // machine built from the configuration); it must not depend on whether a snapshot
    // happens to exist.
    server.set_extra_args(&["--max-data-bytes", "1000", "--snapshot-every-entries", "10"]);
    server.restart();
    let c = connect(&server.addr()).await;
    c.create("/big", vec![7u8; 500], CreateMode::Persistent)
        .await
        .expect("500 bytes are within the new max_data_bytes of 1000");
}

/// A write answered before a crash and resent after it (same session, same xid) is
/// not applied again: the deduplication table is durable, in the log and in snapshots.
async fn resend_after_crash(extra_args: &[&str]) {
    use corral_protocol::{CreateRequest, Op, OpResult, SessionRequest};
    use corral_tests::raw::RawSession;

    let mut server = TestServer::start(extra_args);
    let mut s = RawSession::new_session(&server.addr(), 10_000).await;
    let (session_id, secret) = (s.granted.session_id, s.granted.secret);
    let create = || {
        Op::Create(CreateRequest {
            path: "/job-".into(),
            data: b"once".to_vec(),
            mode: CreateMode::PersistentSequential,
            make_parents: false,
        })
    };
    let first = s.request(1, create()).await;
    let Ok(OpResult::Created { path, .. }) = &first.result else {
        panic!("{first:?}");
    };
    assert_eq!(path, "/job-0000000000");
    // Enough later writes of the same session to cross snapshots, if configured.
    for xid in 2..=60 {
        let r = s
            .request(
                xid,
                Op::SetData {
                    path: "/job-0000000000".into(),
                    data: xid.to_be_bytes().to_vec(),
                    version: None,
                },
            )
            .await;
        assert!(r.result.is_ok(), "{r:?}");
    }
    server.kill();
    drop(s);
    server.restart();

    let mut s = eventually("the session to resume", WAIT, || {
        let addr = server.addr();
        async move {
            RawSession::open(&addr, SessionRequest::Resume { session_id, secret }, 0)
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(
        s.granted.next_xid, 61,
        "the server remembers the highest xid"
    );
    let again = s.request(1, create()).await;
    assert_eq!(again.result, first.result, "the remembered answer");
    let c = connect(&server.addr()).await;
    assert_eq!(
        c.get_children("/").await.expect("ls"),
        vec!["job-0000000000".to_string()],
        "applied once"
    );
}

#[tokio::test]
async fn a_write_resent_after_a_crash_is_not_applied_twice() {
    resend_after_crash(&[]).await;
}

#[tokio::test]
async fn a_write_resent_after_a_crash_is_not_applied_twice_with_snapshots() {
    resend_after_crash(&["--snapshot-every-entries", "10"]).await;
}

#[tokio::test]
async fn sessions_that_do_not_come_back_expire_after_a_restart() {
    use corral_protocol::{CreateRequest, Op};
    use corral_tests::raw::RawSession;

    let mut server = TestServer::start(&[]);
    // A raw session, so that nothing resumes it behind the test's back.
    let mut gone = RawSession::new_session(&server.addr(), 800).await;
    let r = gone
        .request(
            1,
            Op::Create(CreateRequest {
                path: "/orphan".into(),
                data: vec![],
                mode: CreateMode::Ephemeral,
                make_parents: false,
            }),
        )
        .await;
    assert!(r.result.is_ok(), "{r:?}");
    server.kill();
    drop(gone);
    server.restart();
    let c = connect(&server.addr()).await;
    let (stat, watcher) = c.exists_watch("/orphan").await.expect("watch");
    assert!(stat.is_some(), "the session is recovered with the log");
    let restarted = Instant::now();
    let event = tokio::time::timeout(WAIT, watcher)
        .await
        .expect("the orphaned session expires")
        .expect("event");
    assert_eq!(event.kind, corral_client::EventKind::NodeDeleted);
    // A full TTL from the restart, not from when the client went silent.
    assert!(
        restarted.elapsed() >= Duration::from_millis(500),
        "expired {:?} after the restart",
        restarted.elapsed()
    );
}
