//! Replication basics on a real 3-node cluster: a leader is elected and every node
//! serves clients; a write on any node is visible on every node (at once on the node
//! that took it, after `sync` on the others); a restarted follower and a follower whose
//! data directory was wiped catch up (the latter through a snapshot, the log being
//! compacted); after `kill -9` of the whole cluster every acknowledged write is back and
//! zxids keep increasing; nodes with different `max_data_bytes` apply writes alike; a
//! node refuses another member's data directory.

use corral_client::{Client, CreateMode, CreateRequest};
use corral_tests::cluster::TestCluster;
use std::collections::BTreeSet;
use std::time::Instant;

/// Creates `count` persistent nodes `{parent}/{prefix}-{i}` (parent made as needed),
/// pipelined on one client; returns the largest czxid.
async fn write_many(client: &Client, parent: &str, prefix: &str, count: usize) -> u64 {
    let calls = (0..count).map(|i| {
        let client = client.clone();
        let path = format!("{parent}/{prefix}-{i:04}");
        async move {
            client
                .create_with(CreateRequest {
                    path,
                    data: format!("v{i}").into_bytes(),
                    mode: CreateMode::Persistent,
                    make_parents: true,
                })
                .await
                .expect("create")
                .stat
                .czxid
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .max()
        .unwrap_or(0)
}

/// Syncs `client` and checks that `parent` holds exactly `expected`, with their data.
async fn assert_children(client: &Client, node: u64, parent: &str, expected: &BTreeSet<String>) {
    client.sync("/").await.expect("sync");
    let children: BTreeSet<String> = client
        .get_children(parent)
        .await
        .expect("children")
        .into_iter()
        .collect();
    assert_eq!(
        &children, expected,
        "node {node}: children of {parent} differ from what was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_a_leader_and_every_node_serves_reads_and_writes() {
    let started = Instant::now();
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    println!(
        "leader {leader} elected {:?} after the processes were started",
        started.elapsed()
    );
    let mut clients = Vec::new();
    for id in cluster.ids() {
        clients.push((id, cluster.connect(id).await));
    }
    for (id, client) in &clients {
        let path = format!("/written-on-{id}");
        let data = format!("from node {id}").into_bytes();
        let created = client
            .create(&path, data.clone(), CreateMode::Persistent)
            .await
            .expect("create");
        assert_eq!(created, path);
        // Read your own write on the same node, without sync.
        let (got, stat) = client.get_data(&path).await.expect("own write is visible");
        assert_eq!(got, data, "node {id}: own write");
        let set = client
            .set_data(&path, b"changed".to_vec(), Some(stat.version))
            .await
            .expect("set_data");
        assert_eq!(set.version, stat.version + 1);
        let (got, stat2) = client.get_data(&path).await.expect("own set is visible");
        assert_eq!(got, b"changed", "node {id}: own set");
        assert_eq!(stat2, set);
        // Every other node, after sync.
        for (other, reader) in &clients {
            reader.sync("/").await.expect("sync");
            let (got, seen) = reader
                .get_data(&path)
                .await
                .unwrap_or_else(|e| panic!("node {other} after sync: {path}: {e}"));
            assert_eq!(got, b"changed", "node {other} sees the write made on {id}");
            assert_eq!(seen, set, "node {other}: same stat as node {id}");
        }
    }
    // Deletes replicate too.
    let (_, last) = &clients[2];
    last.delete("/written-on-1", None).await.expect("delete");
    for (other, reader) in &clients {
        reader.sync("/").await.expect("sync");
        assert!(
            reader
                .exists("/written-on-1")
                .await
                .expect("exists")
                .is_none(),
            "node {other} still has a deleted node"
        );
    }
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let follower = cluster.follower().await;
    let leader = cluster.leader().await;
    let writer = cluster.connect(leader).await;
    write_many(&writer, "/before", "n", 20).await;
    cluster.kill(follower);
    // The two others are a majority: writes go on.
    write_many(&writer, "/during", "n", 100).await;
    cluster.restart(follower).await;
    let reader = cluster.connect(follower).await;
    let before: BTreeSet<String> = (0..20).map(|i| format!("n-{i:04}")).collect();
    let during: BTreeSet<String> = (0..100).map(|i| format!("n-{i:04}")).collect();
    assert_children(&reader, follower, "/before", &before).await;
    assert_children(&reader, follower, "/during", &during).await;
    // And it takes part again: a write through it is acknowledged and seen everywhere.
    reader
        .create("/after-restart", b"x".to_vec(), CreateMode::Persistent)
        .await
        .expect("write through the restarted follower");
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_catches_up_through_a_snapshot() {
    let mut cluster = TestCluster::start(3, &["--snapshot-every-entries", "50"]).await;
    let follower = cluster.follower().await;
    let leader = cluster.leader().await;
    let writer = cluster.connect(leader).await;
    // A few hundred entries: the log is compacted several times over.
    write_many(&writer, "/data", "n", 300).await;
    cluster.wipe(follower).await;
    assert_eq!(
        cluster.snapshot_installs(follower),
        0,
        "a wiped node starts empty"
    );
    let reader = cluster.connect(follower).await;
    let expected: BTreeSet<String> = (0..300).map(|i| format!("n-{i:04}")).collect();
    assert_children(&reader, follower, "/data", &expected).await;
    let (data, _) = reader.get_data("/data/n-0123").await.expect("get_data");
    assert_eq!(data, b"v123");
    assert!(
        cluster.snapshot_installs(follower) >= 1,
        "the wiped follower caught up without installing a snapshot:\n{}",
        cluster.log_tail(follower)
    );
    // Handed to a decoder off the core first.
    assert!(
        cluster.log_contains(follower, "decoding a snapshot from the leader"),
        "{}",
        cluster.log_tail(follower)
    );
    // Writes after the catch-up reach it through the log.
    write_many(&writer, "/later", "n", 10).await;
    cluster.assert_converged().await;
}

/// Compaction images are written to files of their own (`paxos/images/`), and the log
/// only refers to them: after `kill -9` of the whole cluster every node recovers its
/// state from its image file and the records after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_from_their_compaction_image_files() {
    const EVERY: u64 = 50;
    let mut cluster = TestCluster::start(3, &["--snapshot-every-entries", "50"]).await;
    let leader = cluster.leader().await;
    let writer = cluster.connect(leader).await;
    let ids: Vec<u64> = cluster.ids().collect();
    let mut expected = BTreeSet::new();
    // Rounds of writes, each waiting for every node's image of the last compaction point
    // (an image still being encoded when the next point comes is skipped, and the
    // compaction at that point then keeps a tail instead).
    for round in 0..6 {
        write_many(&writer, "/data", &format!("r{round}"), 50).await;
        expected.extend((0..50).map(|i| format!("r{round}-{i:04}")));
        let point = writer.last_zxid() / EVERY * EVERY;
        for &id in &ids {
            let images = cluster.data_dir(id).join("paxos").join("images");
            let what = format!("node {id}'s image file of zxid {point}");
            corral_tests::eventually(&what, std::time::Duration::from_secs(15), || {
                let newest = std::fs::read_dir(&images)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix("snap-")?
                            .strip_suffix(".bin")?
                            .parse::<u64>()
                            .ok()
                    })
                    .max();
                async move { newest.is_some_and(|z| z >= point).then_some(()) }
            })
            .await;
        }
    }
    drop(writer);
    cluster.kill_all();
    cluster.restart_all().await;
    for &id in &ids {
        assert!(
            cluster.log_contains(id, "loaded the snapshot image from its file"),
            "node {id} did not recover from an image file:\n{}",
            cluster.log_tail(id)
        );
    }
    let leader = cluster.leader().await;
    let reader = cluster.connect(leader).await;
    assert_children(&reader, leader, "/data", &expected).await;
    write_many(&reader, "/later", "n", 10).await;
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_kill_and_restart_keeps_acknowledged_writes() {
    let mut cluster = TestCluster::start(3, &[]).await;
    cluster.leader().await;
    let mut max_zxid = 0;
    let mut expected = BTreeSet::new();
    for id in cluster.ids() {
        let client = cluster.connect(id).await;
        let top = write_many(&client, &format!("/node-{id}"), "n", 30).await;
        max_zxid = max_zxid.max(top).max(client.last_zxid());
        for i in 0..30 {
            expected.insert(format!("/node-{id}/n-{i:04}"));
        }
    }
    cluster.kill_all();
    let restarted = Instant::now();
    cluster.restart_all().await;
    let leader = cluster.leader().await;
    println!(
        "after a full restart, leader {leader} agreed {:?} after the processes were started",
        restarted.elapsed()
    );
    for id in cluster.ids() {
        let client = cluster.connect(id).await;
        client.sync("/").await.expect("sync");
        for path in &expected {
            assert!(
                client.exists(path).await.expect("exists").is_some(),
                "node {id} lost the acknowledged {path}"
            );
        }
        let created = client
            .create_with(CreateRequest {
                path: format!("/after-restart-{id}"),
                data: Vec::new(),
                mode: CreateMode::Persistent,
                make_parents: false,
            })
            .await
            .expect("write after the restart");
        assert!(
            created.stat.czxid > max_zxid,
            "node {id}: zxid {} after the restart is not above {max_zxid} handed out before",
            created.stat.czxid
        );
        max_zxid = created.stat.czxid;
    }
    cluster.assert_converged().await;
}

/// Nodes whose `max_data_bytes` differ, as while a rolling restart changes it, still
/// apply every write alike: the node a write arrives at checks the data against its own
/// limit, and applying does not look at it. (Applying used to check it: a write made
/// through the node with the higher limit was applied there and refused on the others,
/// and the replicas' trees diverged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_data_limits_apply_writes_alike() {
    let mut cluster = TestCluster::start(3, &[]).await;
    for id in [2, 3] {
        cluster
            .restart_with(id, &["--max-data-bytes", "1000"])
            .await;
    }
    cluster.leader().await;
    let data = vec![7u8; 10_000];
    let raised = cluster.connect(1).await;
    raised
        .create("/big", data.clone(), CreateMode::Persistent)
        .await
        .expect("node 1 (1 MiB limit) admits 10 KB");
    let lowered = cluster.connect(2).await;
    let refused = lowered
        .create("/big-2", data.clone(), CreateMode::Persistent)
        .await
        .expect_err("node 2 (1,000-byte limit) refuses 10 KB");
    assert!(
        refused.is(corral_client::ErrorCode::DataTooLarge),
        "{refused}"
    );
    for id in cluster.ids() {
        let reader = cluster.connect(id).await;
        reader.sync("/").await.expect("sync");
        let (got, _) = reader
            .get_data("/big")
            .await
            .unwrap_or_else(|e| panic!("node {id}: /big: {e}"));
        assert_eq!(got.len(), data.len(), "node {id} applied the write");
    }
    cluster.assert_converged().await;
}

/// A `Sync` checks its path on a cluster member as on a single node: `InvalidPath`,
/// not a barrier that ignores it.
#[tokio::test]
async fn a_sync_of_an_invalid_path_is_refused_in_a_cluster_too() {
    use corral_protocol::{ErrorCode, Op, OpResult};
    use corral_tests::raw::RawSession;
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    for id in [leader, follower] {
        let mut raw = RawSession::new_session(&cluster.direct_client_addr(id), 10_000).await;
        let refused = raw
            .request(
                1,
                Op::Sync {
                    path: "no-slash".into(),
                },
            )
            .await;
        assert_eq!(
            refused.result.map_err(|e| e.code),
            Err(ErrorCode::InvalidPath),
            "node {id}"
        );
        let synced = raw.request(2, Op::Sync { path: "/".into() }).await;
        assert_eq!(synced.result, Ok(OpResult::Synced), "node {id}");
    }
}

/// Each member's data directory records which node of which cluster it belongs to. Two
/// followers started on each other's data (their directories swapped, as when two
/// hosts' configurations are) refuse to start, and so does a node started with another
/// cluster id; back on their own data they rejoin with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_on_another_members_data_directory() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let client = cluster.connect(leader).await;
    client
        .create("/before", b"kept".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let others: Vec<u64> = cluster.ids().filter(|id| *id != leader).collect();
    let (a, b) = (others[0], others[1]);
    cluster.kill(a);
    cluster.kill(b);
    let swap = |cluster: &TestCluster| {
        let (pa, pb) = (
            cluster.data_dir(a).join("paxos"),
            cluster.data_dir(b).join("paxos"),
        );
        let aside = cluster.data_dir(a).join("paxos-aside");
        std::fs::rename(&pa, &aside).expect("move a's state aside");
        std::fs::rename(&pb, &pa).expect("b's state to a");
        std::fs::rename(&aside, &pb).expect("a's state to b");
    };
    swap(&cluster);
    for (node, owner) in [(a, b), (b, a)] {
        let refused = cluster.start_refused(node, &[]).await;
        assert!(
            refused.contains(&format!("Paxos state of node {owner} of cluster 1"))
                && refused.contains(&format!("configured as node {node} of cluster 1")),
            "node {node}: {refused}"
        );
    }
    swap(&cluster);
    let refused = cluster.start_refused(a, &["--cluster-id", "9"]).await;
    assert!(
        refused.contains(&format!("node {a} of cluster 1"))
            && refused.contains(&format!("configured as node {a} of cluster 9")),
        "{refused}"
    );

    cluster.restart(a).await;
    cluster.restart(b).await;
    client
        .create("/after", Vec::new(), CreateMode::Persistent)
        .await
        .expect("a write with the whole cluster back");
    for id in [a, b] {
        let on = cluster.connect(id).await;
        on.sync("/").await.expect("sync");
        let (data, _) = on.get_data("/before").await.expect("the write before");
        assert_eq!(data, b"kept", "node {id}");
        assert!(
            on.exists("/after").await.expect("exists").is_some(),
            "node {id}"
        );
    }
}
