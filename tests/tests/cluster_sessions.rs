//! Sessions on a real 3-node cluster.
//!
//! - A client whose node is cut from its peers (the client stays connected to it) loses
//!   its session after its TTL: only the leader expires sessions, and it no longer hears
//!   that the client is alive. Its ephemeral nodes vanish for everyone else; once the
//!   partition heals the client is told its session expired.
//! - A client that merely reconnects to another node within its TTL keeps its session
//!   and its ephemeral nodes.
//! - A write whose reply was lost is resent by the client, on another node, with the same
//!   xid, and applied exactly once.

use corral_client::{ClientConfig, ConnectionState, CreateMode, CreateRequest, Error};
use corral_tests::cluster::{quick_config, TestCluster};
use corral_tests::eventually;
use corral_tests::proxy::Mode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn config(ttl: Duration) -> ClientConfig {
    quick_config(Vec::<String>::new())
        .with_session_ttl(ttl)
        .with_request_timeout(Duration::from_secs(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_of_an_isolated_node_loses_its_session_after_its_ttl() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let isolated = cluster.ids().find(|id| *id != leader).expect("follower");
    let ttl = Duration::from_millis(1000);
    let victim = cluster.pinned(isolated, config(ttl)).await;
    assert_eq!(victim.client.session_ttl(), ttl);
    // It stays on its node: no way to the others.
    for id in cluster.ids().filter(|id| *id != isolated) {
        victim.link(id).set_mode(Mode::Cut);
    }
    victim
        .client
        .create("/lock", Vec::new(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let observer = cluster.connect(leader).await;
    observer.sync("/").await.expect("sync");
    assert!(observer.exists("/lock").await.expect("exists").is_some());

    cluster.isolate(isolated);
    let cut = Instant::now();
    // The leader no longer hears of the client: the ephemeral goes after about a TTL.
    let mut still_there_at = Duration::ZERO;
    loop {
        match observer.exists("/lock").await {
            Ok(Some(_)) => still_there_at = cut.elapsed(),
            Ok(None) => break,
            Err(e) => panic!("exists on the leader: {e}"),
        }
        assert!(
            cut.elapsed() < WAIT,
            "the isolated client's ephemeral is still there after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gone_after = cut.elapsed();
    println!(
        "ephemeral of the isolated node's client (TTL {ttl:?}) gone {gone_after:?} after the \
         cut (last seen at {still_there_at:?})"
    );
    assert!(
        gone_after >= ttl / 2,
        "the session expired {gone_after:?} after the cut, well before its TTL {ttl:?}"
    );
    assert!(
        gone_after <= ttl + Duration::from_secs(3),
        "the session outlived its TTL by far: {gone_after:?}"
    );
    // Others may take the lock now.
    observer
        .create("/lock", b"mine".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("the lock is free for the others");

    cluster.heal_all();
    eventually("the isolated client to learn of its expiry", WAIT, || {
        let state = victim.client.state();
        async move { (state == ConnectionState::Expired).then_some(()) }
    })
    .await;
    let r = victim.client.exists("/lock").await;
    assert!(matches!(r, Err(Error::SessionExpired)), "got {r:?}");
    observer.sync("/").await.expect("sync");
    let (data, _) = observer
        .get_data("/lock")
        .await
        .expect("the new owner's lock");
    assert_eq!(data, b"mine");
}

/// A client of a node that is cut from the cluster, but that can still reach the other
/// nodes, moves to them within its TTL and keeps its session (as with ZooKeeper, where a
/// server that loses its quorum drops its clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_of_an_isolated_node_that_can_reach_the_others_keeps_its_session() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let isolated = cluster.ids().find(|id| *id != leader).expect("follower");
    let ttl = Duration::from_millis(1000);
    let c = cluster.pinned(isolated, config(ttl)).await;
    let session = c.client.session_id();
    c.client
        .create("/mine", Vec::new(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let observer = cluster.connect(leader).await;
    cluster.isolate(isolated);
    let cut = Instant::now();
    // For three TTLs the session stays alive, seen from the leader.
    while cut.elapsed() < ttl * 3 {
        let stat = observer
            .exists("/mine")
            .await
            .expect("exists")
            .unwrap_or_else(|| {
                panic!(
                    "{:?} after its node was cut off, the session of a client that can reach \
                     the majority expired (client {}, TTL {ttl:?})",
                    cut.elapsed(),
                    c.client.state()
                )
            });
        assert_eq!(stat.ephemeral_owner, session);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let node = c.connected_node();
    println!("client of the isolated node {isolated} now on node {node:?}");
    assert!(
        node.is_some() && node != Some(isolated),
        "client on {node:?}"
    );
    assert_eq!(c.client.session_id(), session);
    c.client
        .set_data("/mine", b"moved".to_vec(), None)
        .await
        .expect("the session still writes");
}

/// The client's lease (`lease_deadline`: "until when the session is certainly alive on
/// the server") must not outlast the session: a lock holder relies on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_lease_does_not_outlive_its_expired_session() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let isolated = cluster.ids().find(|id| *id != leader).expect("follower");
    let ttl = Duration::from_millis(1000);
    let victim = cluster.pinned(isolated, config(ttl)).await;
    for id in cluster.ids().filter(|id| *id != isolated) {
        victim.link(id).set_mode(Mode::Cut);
    }
    victim
        .client
        .create("/lock", Vec::new(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let observer = cluster.connect(leader).await;
    // What the client goes through meanwhile (reconnects renew nothing by themselves).
    let mut states = victim.client.state_events();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(state) = states.recv().await {
                seen.lock().expect("states").push(state.to_string());
            }
        })
    };
    cluster.isolate(isolated);
    let cut = Instant::now();
    eventually("the isolated client's ephemeral to vanish", WAIT, || {
        let observer = observer.clone();
        async move {
            match observer.exists("/lock").await {
                Ok(None) => Some(()),
                _ => None,
            }
        }
    })
    .await;
    let now = std::time::Instant::now();
    let lease = victim.client.lease_deadline();
    recorder.abort();
    assert!(
        lease <= now,
        "{:?} after the cut the session is expired on the cluster (its lock is free) but the \
         client's lease runs {:?} longer; the client went through {:?} (the isolated node \
         renewed it: a keepalive answered or a resume granted without the leader)",
        now - cut,
        lease - now,
        seen.lock().expect("states")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_moves_to_another_node_within_its_ttl_keeps_its_session() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let ttl = Duration::from_millis(1000);
    // Once on a follower, once on the leader.
    let follower = cluster.ids().find(|id| *id != leader).expect("follower");
    for home in [follower, leader] {
        let c = cluster.pinned(home, config(ttl)).await;
        let session = c.client.session_id();
        let path = format!("/eph-{home}");
        c.client
            .create(&path, Vec::new(), CreateMode::Ephemeral)
            .await
            .expect("ephemeral");
        let mut states = c.client.state_events();
        c.link(home).set_mode(Mode::Cut);
        let moved = Instant::now();
        // The client notices at once (the link closes) and resumes elsewhere.
        let to = tokio::time::timeout(WAIT, async {
            loop {
                match states.recv().await {
                    Some(ConnectionState::Connected { .. }) => break,
                    Some(s) if s.is_terminal() => panic!("client ended: {s}"),
                    Some(_) => {}
                    None => panic!("state stream ended"),
                }
            }
        })
        .await;
        assert!(to.is_ok(), "client did not reconnect");
        let node = c.connected_node().expect("connected");
        assert_ne!(node, home);
        println!(
            "client moved from node {home} to node {node} in {:?}",
            moved.elapsed()
        );
        assert_eq!(
            c.client.session_id(),
            session,
            "same session after the move"
        );
        // Well past the TTL the session and its ephemeral are alive, seen from anywhere.
        let observer = cluster.connect(home).await;
        let until = Instant::now() + ttl * 3;
        let mut checks = 0;
        while Instant::now() < until {
            observer.sync("/").await.expect("sync");
            let stat = observer
                .exists(&path)
                .await
                .expect("exists")
                .unwrap_or_else(|| panic!("ephemeral of a live session vanished (check {checks})"));
            assert_eq!(stat.ephemeral_owner, session);
            checks += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!c.client.state().is_terminal(), "{}", c.client.state());
        c.client
            .set_data(&path, b"still mine".to_vec(), None)
            .await
            .expect("the session still writes");
        c.client.close().await.expect("close");
        observer.sync("/").await.expect("sync");
        assert!(
            observer.exists(&path).await.expect("exists").is_none(),
            "closing the session removed its ephemeral"
        );
    }
}

/// A client that only pings, on a follower, with the smallest TTL the cluster grants:
/// the follower reports it alive to the leader, which alone expires sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_on_a_follower_keeps_its_session() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = cluster.ids().find(|id| *id != leader).expect("follower");
    let ttl = Duration::from_millis(corral_tests::cluster::MIN_SESSION_TTL_MS);
    let idle = cluster.pinned(follower, config(ttl)).await;
    for id in cluster.ids().filter(|id| *id != follower) {
        idle.link(id).set_mode(Mode::Cut);
    }
    idle.client
        .create("/idle", Vec::new(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let session = idle.client.session_id();
    let observer = cluster.connect(leader).await;
    // Watch it from the leader for ten TTLs; the client sends nothing but pings.
    let until = Instant::now() + ttl * 10;
    while Instant::now() < until {
        let stat = observer
            .exists("/idle")
            .await
            .expect("exists")
            .expect("the idle client's ephemeral is alive");
        assert_eq!(stat.ephemeral_owner, session);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(idle.connected_node(), Some(follower));
    assert!(
        !idle.client.state().is_terminal(),
        "{}",
        idle.client.state()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_resent_after_a_lost_reply_is_applied_once() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = cluster.ids().find(|id| *id != leader).expect("follower");
    let observer_node = cluster
        .ids()
        .find(|id| *id != leader && *id != follower)
        .expect("third node");
    let observer = cluster.connect(observer_node).await;
    // Once through a follower (forwarded), once through the leader.
    for home in [follower, leader] {
        let parent = format!("/seq-{home}");
        observer
            .create(&parent, Vec::new(), CreateMode::Persistent)
            .await
            .expect("parent");
        // A TTL long enough that the client does not give the silent link up by itself.
        let c = cluster.pinned(home, config(Duration::from_secs(6))).await;
        c.link(home).set_mode(Mode::DropReplies);
        let create = {
            let client = c.client.clone();
            let prefix = format!("{parent}/item-");
            tokio::spawn(async move {
                client
                    .create_with(CreateRequest {
                        path: prefix,
                        data: b"once".to_vec(),
                        mode: CreateMode::PersistentSequential,
                        make_parents: false,
                    })
                    .await
            })
        };
        // Applied (the reply is lost on the way back).
        eventually("the create to be applied", WAIT, || {
            let observer = observer.clone();
            let parent = parent.clone();
            async move {
                observer.sync("/").await.ok()?;
                let children = observer.get_children(&parent).await.ok()?;
                (!children.is_empty()).then_some(())
            }
        })
        .await;
        assert!(!create.is_finished(), "the reply should have been lost");
        // The client's link breaks: it resumes on another node and resends the request.
        c.link(home).set_mode(Mode::Cut);
        let created = tokio::time::timeout(WAIT, create)
            .await
            .expect("the resent create is answered")
            .expect("task")
            .expect("the resent create succeeds");
        let node = c.connected_node();
        assert_ne!(node, Some(home));
        observer.sync("/").await.expect("sync");
        let children = observer.get_children(&parent).await.expect("children");
        assert_eq!(
            children,
            vec!["item-0000000000".to_string()],
            "the create was applied more than once"
        );
        assert_eq!(created.path, format!("{parent}/item-0000000000"));
        let (data, stat) = observer.get_data(&created.path).await.expect("get");
        assert_eq!(data, b"once");
        assert_eq!(
            stat, created.stat,
            "the resend returned the original result"
        );
        println!("lost reply via node {home}: resent on node {node:?}, applied once");
        // The same xid sequence goes on: the next write is a new one.
        let next = c
            .client
            .create(
                &format!("{parent}/item-"),
                Vec::new(),
                CreateMode::PersistentSequential,
            )
            .await
            .expect("next create");
        assert_eq!(next, format!("{parent}/item-0000000001"));
    }
}

/// Through a follower: its writes carry the session's acknowledgement to the leader in
/// `AckedWrite` entries (every link is at peer protocol 3), and every node forgets the
/// acknowledged results alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_results_are_forgotten_through_a_follower() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let follower = cluster.follower().await;
    let client = cluster.connect(follower).await;
    client
        .create("/acks", Vec::new(), CreateMode::Persistent)
        .await
        .expect("create");
    let addr = cluster.direct_client_addr(follower);
    corral_tests::raw::acknowledged_results_are_forgotten(&addr, "/acks").await;
    cluster.assert_converged().await;
}
