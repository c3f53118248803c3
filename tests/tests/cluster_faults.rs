//! Faults on a real 3-node cluster: `kill -9` of the leader under a write load from
//! clients on every node, and network partitions made with the harness's peer proxies.
//!
//! - After the leader dies a new one takes over; no acknowledged write is lost; each
//!   client's acknowledged zxids strictly increase; clients fail over and keep their
//!   sessions and ephemeral nodes. The failover time (leader killed to first write
//!   acknowledged) is printed.
//! - An isolated minority (a follower, or the leader) acknowledges nothing while the
//!   majority goes on; after healing every node holds the same tree. A write left pending
//!   on a deposed leader is answered once the partition heals.
//! - A client's pipelined writes keep their order across a leader change.

use corral_client::{Client, ClientConfig, CreateMode, CreateRequest, Error};
use corral_protocol::{Op, OpResult};
use corral_tests::cluster::{quick_config, PinnedClient, TestCluster};
use corral_tests::eventually;
use corral_tests::proxy::Mode;
use corral_tests::raw::RawSession;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn client_config(ttl: Duration, request_timeout: Duration) -> ClientConfig {
    quick_config(Vec::<String>::new())
        .with_session_ttl(ttl)
        .with_request_timeout(request_timeout)
}

/// What one load worker observed.
#[derive(Debug, Default)]
struct WorkerLog {
    /// Acknowledged creates: path, czxid, when.
    acked: Vec<(String, u64, Instant)>,
    /// Writes that failed with an error that leaves their fate open.
    uncertain: Vec<(String, String)>,
}

async fn load_worker(
    k: usize,
    client: Client,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicUsize>,
    log: Arc<Mutex<WorkerLog>>,
) {
    let mut last_czxid = 0u64;
    let mut last_seen = client.last_zxid();
    let mut seq = 0u64;
    // Bounded: stops when told, and every request is bounded by its timeout.
    while !stop.load(Ordering::SeqCst) && seq < 100_000 {
        seq += 1;
        let path = format!("/load/c{k}-{seq:06}");
        let result = client
            .create_with(CreateRequest {
                path: path.clone(),
                data: seq.to_be_bytes().to_vec(),
                mode: CreateMode::Persistent,
                make_parents: false,
            })
            .await;
        let seen = client.last_zxid();
        assert!(
            seen >= last_seen,
            "client {k}: last seen zxid went back from {last_seen} to {seen}"
        );
        last_seen = seen;
        match result {
            Ok(created) => {
                let czxid = created.stat.czxid;
                assert!(
                    czxid > last_czxid,
                    "client {k}: acknowledged zxid {czxid} of {path} is not above {last_czxid}"
                );
                last_czxid = czxid;
                log.lock()
                    .expect("log")
                    .acked
                    .push((path, czxid, Instant::now()));
                total.fetch_add(1, Ordering::SeqCst);
            }
            // Timeout, ConnectionLoss, Unavailable: the write may or may not be applied.
            Err(e) if e.is_retryable() => {
                log.lock()
                    .expect("log")
                    .uncertain
                    .push((path, e.to_string()));
            }
            Err(e) => panic!("client {k}: create {path} failed for good: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let setup = cluster.connect(leader).await;
    for p in ["/load", "/eph", "/probe"] {
        setup
            .create(p, Vec::new(), CreateMode::Persistent)
            .await
            .expect("create parent");
    }
    let ttl = Duration::from_millis(1500);
    let config = client_config(ttl, Duration::from_secs(10));
    // Two clients on every node; each has every node in its address list.
    let mut clients: Vec<PinnedClient> = Vec::new();
    for k in 0..6u64 {
        let home = k % 3 + 1;
        clients.push(cluster.pinned(home, config.clone()).await);
    }
    let mut sessions = Vec::new();
    for (k, c) in clients.iter().enumerate() {
        c.client
            .create(&format!("/eph/c{k}"), Vec::new(), CreateMode::Ephemeral)
            .await
            .expect("ephemeral");
        sessions.push(c.client.session_id());
    }
    let on_leader: Vec<usize> = (0..clients.len())
        .filter(|k| clients[*k].home == leader)
        .collect();
    let survivor = cluster.ids().find(|id| *id != leader).expect("a follower");
    let probe = cluster.pinned(survivor, config.clone()).await;
    // The probe must not move to the dying leader.
    probe.link(leader).set_mode(Mode::Cut);

    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicUsize::new(0));
    let logs: Vec<Arc<Mutex<WorkerLog>>> = (0..clients.len())
        .map(|_| Arc::new(Mutex::new(WorkerLog::default())))
        .collect();
    let mut workers = Vec::new();
    for (k, c) in clients.iter().enumerate() {
        workers.push(tokio::spawn(load_worker(
            k,
            c.client.clone(),
            stop.clone(),
            total.clone(),
            logs[k].clone(),
        )));
    }
    eventually("writes under load before the kill", WAIT, || {
        let n = total.load(Ordering::SeqCst);
        async move { (n >= 150).then_some(()) }
    })
    .await;

    cluster.kill(leader);
    let killed = Instant::now();
    probe
        .client
        .create("/probe/first", Vec::new(), CreateMode::Persistent)
        .await
        .expect("first write after the kill");
    let failover = killed.elapsed();
    let new_leader = cluster.leader_other_than(Some(leader)).await;
    println!(
        "failover: leader {leader} killed -> first write acknowledged in {failover:?} \
         (new leader {new_leader}, agreed {:?} after the kill)",
        killed.elapsed()
    );

    // Every client makes progress after the kill (those on the dead node fail over).
    let progressed = |k: usize| {
        logs[k]
            .lock()
            .expect("log")
            .acked
            .iter()
            .filter(|(_, _, at)| *at > killed)
            .count()
    };
    eventually("every client writes after the kill", WAIT, || {
        let all = (0..clients.len()).all(|k| progressed(k) >= 20);
        async move { all.then_some(()) }
    })
    .await;
    for k in 0..clients.len() {
        let log = logs[k].lock().expect("log");
        let first_after = log
            .acked
            .iter()
            .find(|(_, _, at)| *at > killed)
            .map(|(_, _, at)| at.duration_since(killed));
        println!(
            "client {k} (started on node {}{}): {} acked, {} uncertain, first ack after the \
             kill at {first_after:?}",
            clients[k].home,
            if on_leader.contains(&k) {
                ", the killed leader"
            } else {
                ""
            },
            log.acked.len(),
            log.uncertain.len()
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        tokio::time::timeout(WAIT, w)
            .await
            .expect("worker stops")
            .expect("worker did not panic");
    }

    // Sessions survived: same ids, not expired, the clients on the dead node moved.
    for (k, c) in clients.iter().enumerate() {
        assert_eq!(c.client.session_id(), sessions[k], "client {k} session");
        assert!(
            !c.client.state().is_terminal(),
            "client {k} lost its session: {}",
            c.client.state()
        );
        if on_leader.contains(&k) {
            assert_ne!(
                c.connected_node(),
                Some(leader),
                "client {k} still on the dead leader"
            );
        }
    }

    // The dead node comes back and catches up; then every node has every acked write.
    cluster.restart(leader).await;
    let acked: Vec<String> = logs
        .iter()
        .flat_map(|l| {
            l.lock()
                .expect("log")
                .acked
                .iter()
                .map(|(p, _, _)| p.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    for id in cluster.ids() {
        let reader = cluster.connect(id).await;
        reader.sync("/").await.expect("sync");
        let children: BTreeSet<String> = reader
            .get_children("/load")
            .await
            .expect("children")
            .into_iter()
            .map(|c| format!("/load/{c}"))
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|p| !children.contains(*p)).collect();
        assert!(
            missing.is_empty(),
            "node {id} lacks {} acknowledged writes, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        for (k, session) in sessions.iter().enumerate() {
            let stat = reader
                .exists(&format!("/eph/c{k}"))
                .await
                .expect("exists")
                .unwrap_or_else(|| panic!("node {id}: ephemeral of client {k} is gone"));
            assert_eq!(stat.ephemeral_owner, *session);
        }
    }
    println!("{} writes acknowledged in all", acked.len());
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_commits_nothing_and_converges_after_healing() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let isolated = cluster.ids().find(|id| *id != leader).expect("follower");
    let other = cluster
        .ids()
        .find(|id| *id != leader && *id != isolated)
        .expect("second follower");
    let setup = cluster.connect(leader).await;
    for p in ["/minority", "/majority"] {
        setup
            .create(p, Vec::new(), CreateMode::Persistent)
            .await
            .expect("parent");
    }
    setup
        .create("/shared", b"0".to_vec(), CreateMode::Persistent)
        .await
        .expect("shared");
    // A client that stays on the isolated node (its links elsewhere are cut), with a
    // request timeout of a few election timeouts and a TTL long enough to outlive it.
    let short = Duration::from_millis(800);
    let minority = cluster
        .pinned(
            isolated,
            client_config(Duration::from_secs(10), short).with_max_backoff(short),
        )
        .await;
    for id in cluster.ids().filter(|id| *id != isolated) {
        minority.link(id).set_mode(Mode::Cut);
    }
    let majority = cluster.connect(other).await;

    cluster.isolate(isolated);
    let isolated_at = Instant::now();
    for i in 0..3 {
        let path = format!("/minority/w{i}");
        let r = minority
            .client
            .create(&path, Vec::new(), CreateMode::Persistent)
            .await;
        assert!(
            matches!(r, Err(Error::Timeout(_))),
            "a write through the isolated node must not be acknowledged, got {r:?}"
        );
    }
    let r = minority
        .client
        .set_data("/shared", b"minority".to_vec(), None)
        .await;
    assert!(matches!(r, Err(Error::Timeout(_))), "set_data got {r:?}");
    let r = minority.client.sync("/").await;
    assert!(
        matches!(r, Err(Error::Timeout(_))),
        "a sync cannot pass the log of an isolated node, got {r:?}"
    );
    println!(
        "isolated node {isolated} refused to acknowledge for {:?}",
        isolated_at.elapsed()
    );
    // The majority goes on, and has seen none of it.
    for i in 0..20 {
        majority
            .create(
                &format!("/majority/m{i}"),
                Vec::new(),
                CreateMode::Persistent,
            )
            .await
            .expect("the majority keeps working");
    }
    majority
        .set_data("/shared", b"majority".to_vec(), None)
        .await
        .expect("set on the majority");
    majority.sync("/").await.expect("sync");
    assert!(
        majority
            .get_children("/minority")
            .await
            .expect("children")
            .is_empty(),
        "a write of the isolated node was committed"
    );
    assert_eq!(
        majority.get_data("/shared").await.expect("get").0,
        b"majority"
    );

    cluster.heal_all();
    // Writes through the healed node work again.
    let healed = cluster
        .pinned(isolated, quick_config(Vec::<String>::new()))
        .await;
    for id in cluster.ids().filter(|id| *id != isolated) {
        healed.link(id).set_mode(Mode::Cut);
    }
    eventually("a write through the healed node", WAIT, || {
        let c = healed.client.clone();
        async move {
            c.create("/after-heal", Vec::new(), CreateMode::Persistent)
                .await
                .ok()
        }
    })
    .await;
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_commits_nothing_and_a_new_leader_takes_over() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let old = cluster.leader().await;
    let setup = cluster.connect(old).await;
    setup
        .create("/w", Vec::new(), CreateMode::Persistent)
        .await
        .expect("parent");
    let short = Duration::from_millis(800);
    let on_old = cluster
        .pinned(old, client_config(Duration::from_secs(10), short))
        .await;
    for id in cluster.ids().filter(|id| *id != old) {
        on_old.link(id).set_mode(Mode::Cut);
    }
    cluster.isolate(old);
    let cut = Instant::now();
    let new = cluster.leader_other_than(Some(old)).await;
    println!(
        "leader {old} isolated: node {new} leads {:?} later",
        cut.elapsed()
    );
    let r = on_old
        .client
        .create("/w/old-leader", Vec::new(), CreateMode::Persistent)
        .await;
    assert!(
        matches!(r, Err(Error::Timeout(_))),
        "a write through the isolated leader must not be acknowledged, got {r:?}"
    );
    let survivor = cluster
        .ids()
        .find(|id| *id != old && *id != new)
        .expect("node");
    let majority = cluster.connect(survivor).await;
    for i in 0..20 {
        majority
            .create(&format!("/w/m{i}"), Vec::new(), CreateMode::Persistent)
            .await
            .expect("the majority keeps working");
    }
    majority.sync("/").await.expect("sync");
    assert!(
        majority
            .exists("/w/old-leader")
            .await
            .expect("exists")
            .is_none(),
        "a write of the isolated old leader was committed"
    );
    cluster.heal_all();
    cluster.assert_converged().await;
}

/// A client waiting on a write made through a leader that is cut off hears back once
/// the partition heals. The entry the old leader appended never commits (the new
/// leader's log replaces it) and the client, still connected, resends nothing: the
/// server itself must propose it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_pending_on_a_deposed_leader_is_answered_after_healing() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let old = cluster.leader().await;
    let setup = cluster.connect(old).await;
    setup
        .create("/w", Vec::new(), CreateMode::Persistent)
        .await
        .expect("parent");
    let on_old = cluster
        .pinned(
            old,
            client_config(Duration::from_secs(20), Duration::from_secs(20)),
        )
        .await;
    for id in cluster.ids().filter(|id| *id != old) {
        on_old.link(id).set_mode(Mode::Cut);
    }
    cluster.isolate(old);
    let pending = {
        let c = on_old.client.clone();
        tokio::spawn(async move {
            c.create("/w/pending", Vec::new(), CreateMode::Persistent)
                .await
        })
    };
    let new = cluster.leader_other_than(Some(old)).await;
    let survivor = cluster
        .ids()
        .find(|id| *id != old && *id != new)
        .expect("node");
    let majority = cluster.connect(survivor).await;
    // The majority moves the log past the old leader's uncommitted entry.
    for i in 0..10 {
        majority
            .create(&format!("/w/m{i}"), Vec::new(), CreateMode::Persistent)
            .await
            .expect("majority write");
    }
    assert!(!pending.is_finished(), "answered while isolated");
    cluster.heal_all();
    let healed = Instant::now();
    // Either outcome is fine (applied, or an error to retry); hanging is not.
    let answer = tokio::time::timeout(Duration::from_secs(5), pending).await;
    let answered_in = healed.elapsed();
    match answer {
        Ok(r) => println!(
            "pending write on the deposed leader answered {answered_in:?} after healing: {:?}",
            r.expect("task")
        ),
        Err(_) => {
            majority.sync("/").await.expect("sync");
            let applied = majority
                .exists("/w/pending")
                .await
                .expect("exists")
                .is_some();
            panic!(
                "a write pending on the deposed leader {old} got no answer within 5 s of \
                 healing (client: {}; the write applied on the majority: {applied})",
                on_old.client.state()
            )
        }
    }
    cluster.assert_converged().await;
}

fn create_op(path: String) -> Op {
    Op::Create(CreateRequest {
        path,
        data: Vec::new(),
        mode: CreateMode::Persistent,
        make_parents: false,
    })
}

/// A client's pipelined writes are applied in the order it sent them (ZooKeeper's FIFO
/// client order), across a change of leader. A raw session on a follower sends creates
/// with explicit xids, every 2 ms, while the leader is killed and a new one elected; the
/// response zxids (each write's own zxid) must increase with the xid, and every
/// acknowledged create must be there afterwards. Several rounds (killing the leader of the
/// moment each time), since which node wins the election varies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_keep_their_order_across_a_leader_change() {
    let mut cluster = TestCluster::start(3, &[]).await;
    for round in 1..=4u64 {
        let leader = cluster.leader().await;
        let follower = cluster.ids().find(|id| *id != leader).expect("follower");
        let parent = format!("/fifo-{round}");
        let mut raw = RawSession::new_session(&cluster.direct_client_addr(follower), 10_000).await;
        let r = raw.request(1, create_op(parent.clone())).await;
        assert!(r.result.is_ok(), "{r:?}");
        let mut xid = 1u64;
        for _ in 0..30 {
            xid += 1;
            raw.send(xid, create_op(format!("{parent}/n-{xid:05}")))
                .await;
        }
        cluster.kill(leader);
        let killed = Instant::now();
        // Keep the pipeline going through the election: a write every 2 ms for 1.5 s.
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        while killed.elapsed() < Duration::from_millis(1500) && xid < 1_000 {
            pace.tick().await;
            xid += 1;
            raw.send(xid, create_op(format!("{parent}/n-{xid:05}")))
                .await;
        }
        let new_leader = cluster.leader_other_than(Some(leader)).await;
        let mut previous: Option<(u64, u64)> = None;
        let mut inversions = Vec::new();
        for expect in 2..=xid {
            let r = raw.response().await;
            assert_eq!(r.xid, expect, "responses come in request order");
            match &r.result {
                Ok(OpResult::Created { stat, path }) => {
                    assert_eq!(path, &format!("{parent}/n-{expect:05}"));
                    assert_eq!(stat.czxid, r.zxid);
                }
                other => panic!("xid {expect}: {other:?}"),
            }
            if let Some((px, pz)) = previous {
                if r.zxid <= pz {
                    inversions.push(((px, pz), (expect, r.zxid)));
                }
            }
            previous = Some((expect, r.zxid));
        }
        println!(
            "round {round}: {} pipelined writes through node {follower}, leader {leader} killed, \
             node {new_leader} took over; {} out of order",
            xid - 1,
            inversions.len()
        );
        // Every acknowledged create is there, on every surviving node.
        for reader_id in cluster.ids().filter(|id| *id != leader) {
            let reader = cluster.connect(reader_id).await;
            reader.sync("/").await.expect("sync");
            let children: BTreeSet<String> = reader
                .get_children(&parent)
                .await
                .expect("children")
                .into_iter()
                .collect();
            let missing = (2..=xid)
                .filter(|x| !children.contains(&format!("n-{x:05}")))
                .count();
            assert_eq!(missing, 0, "node {reader_id} lacks acknowledged creates");
        }
        if let Some((before, after)) = inversions.first() {
            panic!(
                "round {round}: {} writes sent through node {follower} were applied before \
                 writes the client sent earlier on the same connection (new leader {new_leader}), \
                 e.g. (xid, zxid) {before:?} then {after:?}",
                inversions.len()
            );
        }
        cluster.restart(leader).await;
        let back = cluster.connect(leader).await;
        back.sync("/").await.expect("the restarted node syncs");
    }
}

/// Measures (prints) the failover time a few times: leader killed -> first write
/// acknowledged through a surviving node. Only checks that writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_time_after_killing_the_leader() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let mut times = Vec::new();
    for round in 1..=3 {
        let leader = cluster.leader().await;
        let survivor = cluster.ids().find(|id| *id != leader).expect("follower");
        let client = cluster.connect(survivor).await;
        client
            .create(
                &format!("/warm-{round}"),
                Vec::new(),
                CreateMode::Persistent,
            )
            .await
            .expect("write before the kill");
        cluster.kill(leader);
        let killed = Instant::now();
        client
            .create(
                &format!("/after-{round}"),
                Vec::new(),
                CreateMode::Persistent,
            )
            .await
            .expect("write after the kill");
        let took = killed.elapsed();
        let new_leader = cluster.leader_other_than(Some(leader)).await;
        println!(
            "failover round {round}: leader {leader} killed -> write through node {survivor} \
             acknowledged in {took:?} (new leader {new_leader})"
        );
        times.push(took);
        cluster.restart(leader).await;
        let back = cluster.connect(leader).await;
        back.sync("/").await.expect("the restarted node syncs");
    }
    times.sort();
    println!(
        "failover times with election timeout {}ms: {times:?}",
        corral_tests::cluster::ELECTION_TIMEOUT_MS
    );
}

/// Jepsen finding 1: a node that catches up through a snapshot install must still fire
/// the watches its clients hold for what the snapshot covers (no reconnect involved), and
/// deliver those events before any answer carrying a later zxid (DESIGN.md invariant 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_fire_for_what_a_snapshot_install_covered() {
    use corral_protocol::{AddWatchMode, EventKind};
    let mut cluster = TestCluster::start(3, &["--snapshot-every-entries", "20"]).await;
    let leader = cluster.leader().await;
    let behind = cluster.ids().find(|id| *id != leader).expect("follower");
    let writer = cluster.connect(leader).await;
    for p in ["/w", "/w/old", "/flag"] {
        writer
            .create(p, Vec::new(), CreateMode::Persistent)
            .await
            .expect("setup");
    }
    // A raw session on the node that will fall behind: it never reconnects.
    let mut raw = RawSession::new_session(&cluster.direct_client_addr(behind), 60_000).await;
    let mut xid = 0;
    let mut ask = |op: Op| {
        xid += 1;
        (xid, op)
    };
    let setup = [
        ask(Op::Sync { path: "/".into() }),
        ask(Op::GetData {
            path: "/flag".into(),
            watch: true,
        }),
        ask(Op::GetChildren {
            path: "/w".into(),
            watch: true,
        }),
        ask(Op::Exists {
            path: "/new".into(),
            watch: true,
        }),
        ask(Op::AddWatch {
            path: "/w".into(),
            mode: AddWatchMode::PersistentRecursive,
        }),
    ];
    for (x, op) in setup {
        let r = raw.request(x, op).await;
        assert!(r.result.is_ok(), "{r:?}");
    }
    cluster.isolate(behind);
    writer
        .set_data("/flag", b"1".to_vec(), None)
        .await
        .expect("set");
    for i in 0..60 {
        writer
            .create(&format!("/w/n-{i:02}"), Vec::new(), CreateMode::Persistent)
            .await
            .expect("create");
    }
    writer.delete("/w/old", None).await.expect("delete");
    writer
        .create("/new", Vec::new(), CreateMode::Persistent)
        .await
        .expect("create");
    writer.sync("/").await.expect("sync");
    let top = writer.last_zxid();
    cluster.heal_all();
    eventually("a snapshot install on the healed node", WAIT, || {
        let installs = cluster.snapshot_installs(behind);
        async move { (installs >= 1).then_some(()) }
    })
    .await;
    // The next answer carries a zxid past the install: every event comes before it.
    let (x, op) = ask(Op::Sync { path: "/".into() });
    let r = raw.request(x, op).await;
    assert!(r.result.is_ok() && r.zxid >= top, "{r:?}");
    let got: BTreeSet<(String, String)> = raw
        .events
        .iter()
        .map(|e| (format!("{:?}", e.kind), e.path.clone()))
        .collect();
    let mut want: BTreeSet<(String, String)> = [
        (EventKind::NodeDataChanged, "/flag"),
        (EventKind::NodeChildrenChanged, "/w"),
        (EventKind::NodeCreated, "/new"),
        (EventKind::NodeDeleted, "/w/old"),
    ]
    .into_iter()
    .map(|(k, p)| (format!("{k:?}"), p.to_string()))
    .collect();
    want.extend((0..60).map(|i| {
        (
            format!("{:?}", EventKind::NodeCreated),
            format!("/w/n-{i:02}"),
        )
    }));
    // Entries applied through the log before the install fire the same events: the
    // union is what the writes changed, whichever way the node caught up.
    assert_eq!(
        got,
        want,
        "node {behind} installed {} snapshot(s); events: {:?}",
        cluster.snapshot_installs(behind),
        raw.events
    );
    assert!(
        raw.events.iter().all(|e| e.zxid <= r.zxid),
        "{:?}",
        raw.events
    );
}
