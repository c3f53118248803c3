//! The client lock API against a real single-node server: mutual exclusion with a fenced
//! counter, try and timeout leaving no queue node behind, a zero timeout taking a free
//! lock, cancelled acquires leaving the queue, idempotent release, ownership, grants
//! missed while disconnected, "waiting is not holding", and a lease-held lock lost after
//! its TTL when renewals stop, with the holder told before anyone else is granted.
//!
//! Every wait is bounded with `tokio::time::timeout` on an event (a watch, a future);
//! nothing sleeps to synchronise.

use corral_client::{
    Client, ClientConfig, ConnectionState, CreateMode, Error, ErrorCode, LeaseOptions, LockKind,
    LockLoss, LockOptions, Renewal,
};
use corral_tests::proxy::{Mode, Proxy};
use corral_tests::TestServer;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(addr: &str) -> Client {
    Client::connect(ClientConfig::new([addr]))
        .await
        .expect("connect")
}

async fn proxy_to(server: &TestServer) -> Proxy {
    let target: SocketAddr = server.addr().parse().expect("server address");
    Proxy::start(target).await.expect("start proxy")
}

fn via(proxy: &Proxy) -> ClientConfig {
    ClientConfig::new([proxy.addr().to_string()])
        .with_session_ttl(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_millis(300))
        .with_max_backoff(Duration::from_millis(100))
        .with_request_timeout(WAIT)
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits (with child and exists watches, bounded) until the children of `lock` satisfy
/// `want` (a missing lock has no children), and returns them.
async fn children_until(
    client: &Client,
    lock: &str,
    what: &str,
    want: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    bounded(what, async {
        loop {
            match client.get_children_watch(lock).await {
                Ok((children, _, watcher)) => {
                    if want(&children) {
                        return children;
                    }
                    let _ = watcher.await;
                }
                Err(e) if e.is(ErrorCode::NoNode) => {
                    let (stat, watcher) = client.exists_watch(lock).await.expect("exists");
                    if stat.is_none() {
                        if want(&[]) {
                            return Vec::new();
                        }
                        let _ = watcher.await;
                    }
                }
                Err(e) => panic!("get_children {lock}: {e}"),
            }
        }
    })
    .await
}

fn name_of(node: &str) -> String {
    corral_client::path::name(node).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exclusive_lock_serializes_a_fenced_counter() {
    const TASKS: usize = 8;
    const ROUNDS: u64 = 5;
    let server = TestServer::start(&[]);
    let setup = connect(&server.addr()).await;
    setup
        .create("/counter", b"0 0".to_vec(), CreateMode::Persistent)
        .await
        .expect("counter");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let addr = server.addr();
            tokio::spawn(async move {
                let client = connect(&addr).await;
                let lock = client.lock("/locks/counter", LockOptions::default());
                let mut tokens = Vec::new();
                for _ in 0..ROUNDS {
                    let guard = timeout(3 * WAIT, lock.acquire())
                        .await
                        .expect("granted in time")
                        .expect("acquire");
                    assert!(guard.is_held());
                    // Read, modify, write without a version check: only mutual
                    // exclusion prevents a lost update.
                    let (data, _) = client.get_data("/counter").await.expect("read");
                    let text = String::from_utf8(data).expect("utf-8");
                    let mut fields = text.split(' ').map(|f| f.parse::<u64>().expect("number"));
                    let (count, last) =
                        (fields.next().expect("count"), fields.next().expect("token"));
                    assert!(
                        guard.token() > last,
                        "fencing tokens strictly increase: {} after {last}",
                        guard.token()
                    );
                    client
                        .transaction()
                        .check_lock(guard.name(), guard.token())
                        .set_data("/counter", format!("{} {}", count + 1, guard.token()), None)
                        .commit()
                        .await
                        .expect("fenced write by the holder");
                    tokens.push(guard.token());
                    assert!(guard.release().await.expect("release"));
                }
                let stats = client.lock_stats();
                assert_eq!((stats.granted, stats.released), (ROUNDS, ROUNDS));
                assert_eq!(stats.failed + stats.cancelled + stats.timed_out, 0);
                client.close().await.expect("close");
                tokens
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.extend(bounded("a task", task).await.expect("task"));
    }
    let (data, _) = setup.get_data("/counter").await.expect("read");
    let text = String::from_utf8(data).expect("utf-8");
    let expected_count = TASKS as u64 * ROUNDS;
    let highest = tokens.iter().copied().max().expect("tokens");
    assert_eq!(
        text,
        format!("{expected_count} {highest}"),
        "no lost update"
    );
    let mut unique = tokens.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), tokens.len(), "every grant has its own token");
    // Every queue node is gone, and the lock's container with them.
    children_until(&setup, "/locks/counter", "the lock to be empty", |c| {
        c.is_empty()
    })
    .await;
}

#[tokio::test]
async fn try_acquire_of_a_held_lock_leaves_no_node_behind() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let held = a
        .lock("/try", LockOptions::default())
        .try_acquire()
        .await
        .expect("try")
        .expect("free, so taken");
    for options in [
        LockOptions::default(),
        LockOptions::default().with_ttl(Duration::from_secs(2)),
    ] {
        let got = b
            .lock("/try", options)
            .try_acquire()
            .await
            .expect("try answers");
        assert!(got.is_none(), "the lock is held");
    }
    assert_eq!(
        b.get_children("/try").await.expect("ls"),
        vec![name_of(held.node())]
    );
    assert_eq!(b.lock_stats().try_failed, 2);
    assert!(held.release().await.expect("release"));
    let now_free = b
        .lock("/try", LockOptions::default())
        .try_acquire()
        .await
        .expect("try");
    assert!(now_free.is_some_and(|g| g.is_held()));
}

#[tokio::test]
async fn an_acquire_that_times_out_leaves_the_queue() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let held = a
        .lock("/slow", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    let started = Instant::now();
    let limit = Duration::from_millis(300);
    let got = b
        .lock("/slow", LockOptions::default())
        .acquire_timeout(limit)
        .await
        .expect("timeout is not an error");
    assert!(got.is_none());
    assert!(started.elapsed() >= limit);
    assert_eq!(
        b.get_children("/slow").await.expect("ls"),
        vec![name_of(held.node())],
        "the waiter left the queue"
    );
    assert_eq!(b.lock_stats().timed_out, 1);
    // Free, a timed acquire is granted at once.
    held.release().await.expect("release");
    let guard = b
        .lock("/slow", LockOptions::default())
        .acquire_timeout(limit)
        .await
        .expect("acquire")
        .expect("granted");
    assert!(guard.token() > held.token());
}

/// A zero timeout is a try (as Curator's `acquire(0, unit)`): the request is sent and its
/// answer honoured, so a free lock is taken, also with a dedicated lease to grant first
/// and for a multi-lock; a held one is not waited for, and nothing is left behind: no
/// queue node, no lease.
#[tokio::test]
async fn a_zero_timeout_takes_a_free_lock_and_leaves_nothing_behind_on_a_held_one() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let sessions = b.server_status().await.expect("status").sessions;
    let options = [
        LockOptions::default(),
        LockOptions::default().with_ttl(Duration::from_secs(2)),
    ];
    for options in options.clone() {
        let guard = b
            .lock("/zero", options)
            .acquire_timeout(Duration::ZERO)
            .await
            .expect("acquire")
            .expect("a free lock is taken with a zero timeout");
        assert!(guard.is_held());
        assert!(guard.release().await.expect("release"));
    }
    let held = a
        .lock("/zero", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    for options in options {
        let got = b
            .lock("/zero", options)
            .acquire_timeout(Duration::ZERO)
            .await
            .expect("a timeout is not an error");
        assert!(got.is_none(), "the lock is held");
    }
    assert_eq!(
        b.get_children("/zero").await.expect("ls"),
        vec![name_of(held.node())],
        "nothing queued"
    );
    let stats = b.lock_stats();
    assert_eq!(
        (stats.granted, stats.timed_out, stats.try_failed),
        (2, 2, 0)
    );

    // A multi-lock likewise: taken if every lock is free, else nothing is queued.
    let set = b.lock_many(["/zero-m", "/zero-n"], LockOptions::default());
    let guard = set
        .acquire_timeout(Duration::ZERO)
        .await
        .expect("acquire")
        .expect("free locks are taken with a zero timeout");
    assert!(guard.release().await.expect("release"));
    let held_n = a
        .lock("/zero-n", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    let got = set
        .acquire_timeout(Duration::ZERO)
        .await
        .expect("a timeout is not an error");
    assert!(got.is_none(), "one of the locks is held");
    assert!(b.exists("/zero-m").await.expect("exists").is_none());
    assert_eq!(
        b.get_children("/zero-n").await.expect("ls"),
        vec![name_of(held_n.node())]
    );
    // No lease is left either (the dedicated ones were revoked).
    assert_eq!(b.server_status().await.expect("status").sessions, sessions);
}

#[tokio::test]
async fn a_dropped_pending_acquire_leaves_the_queue_and_the_next_waiter_is_granted() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let c = connect(&server.addr()).await;
    let held = a
        .lock("/q", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");

    let waiting = tokio::spawn({
        let lock = b.lock("/q", LockOptions::default());
        async move { lock.acquire().await }
    });
    let children = children_until(&a, "/q", "b to queue", |c| c.len() == 2).await;
    let b_node = children[1].clone();
    waiting.abort();
    assert!(bounded("the cancelled acquire", waiting)
        .await
        .is_err_and(|e| e.is_cancelled()));
    assert_eq!(b.lock_stats().cancelled, 1);
    children_until(&a, "/q", "b to leave the queue", |c| {
        c.len() == 1 && !c.contains(&b_node)
    })
    .await;

    let next = tokio::spawn({
        let lock = c.lock("/q", LockOptions::default());
        async move { lock.acquire().await }
    });
    let children = children_until(&a, "/q", "c to queue", |c| c.len() == 2).await;
    assert!(held.release().await.expect("release"));
    let guard = bounded("c's grant", next)
        .await
        .expect("task")
        .expect("acquire");
    assert_eq!(name_of(guard.node()), children[1]);
    assert!(guard.token() > held.token());
    assert!(guard.is_held());
}

#[tokio::test]
async fn release_is_idempotent_and_only_the_owner_may_release() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let guard = a
        .lock("/r", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");

    // Another session cannot release it.
    let err = b.unlock(guard.node()).await.expect_err("not the owner");
    assert!(err.is(ErrorCode::NotLockOwner), "{err}");
    assert!(guard.is_held());

    assert!(guard.release().await.expect("first release"));
    assert!(!guard.release().await.expect("second release: already gone"));
    assert!(!guard.is_held());
    assert_eq!(
        bounded("lost after release", guard.lost()).await,
        LockLoss::Released
    );
    assert!(!a.unlock(guard.node()).await.expect("unlock of a gone node"));
    let stats = a.lock_stats();
    assert_eq!(
        (stats.granted, stats.released, stats.failed_releases),
        (1, 1, 0)
    );
    // A guarded write with the released token fails.
    let err = a
        .transaction()
        .check_lock("/r", guard.token())
        .create("/after", Vec::new(), CreateMode::Persistent)
        .commit()
        .await
        .expect_err("released");
    assert!(err.is(ErrorCode::LockNotHeld), "{err}");

    // Dropping a guard releases it in the background.
    let dropped = a
        .lock("/r", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    let node = dropped.node().to_string();
    drop(dropped);
    children_until(&b, "/r", "the dropped guard's release", |c| {
        !c.contains(&name_of(&node))
    })
    .await;
}

/// A lock's directory is a container: it goes when its queue empties, and created again
/// its sequence counter restarts, so a later node can have the very path of an earlier
/// one. Releasing the earlier node (a guard whose lease expired, a late retry) must not
/// release the later one, not even when the same session holds it.
#[tokio::test]
async fn releasing_a_lost_lock_leaves_a_later_node_of_the_same_path_alone() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let short = LockOptions::default()
        .with_ttl(Duration::from_millis(300))
        .with_renewal(Renewal::Manual);
    let lost = a.lock("/again", short).acquire().await.expect("acquire");
    // The server expires the unrenewed lease: the node goes, and the directory with it.
    children_until(&b, "/again", "the lease's expiry", |c| c.is_empty()).await;
    assert!(b.exists("/again").await.expect("exists").is_none());

    // Another task of the same client takes the lock: the same path, a new node.
    let later = a
        .lock("/again", LockOptions::default())
        .acquire()
        .await
        .expect("acquire again");
    assert_eq!(later.node(), lost.node());
    assert!(later.token() > lost.token());

    assert!(!lost.release().await.expect("release of the lost lock"));
    assert!(later.is_held());
    let locks = b.locks("/again").await.expect("locks");
    let queue: Vec<(u64, bool)> = locks
        .iter()
        .flat_map(|l| l.queue.iter().map(|e| (e.token, e.granted)))
        .collect();
    assert_eq!(queue, vec![(later.token(), true)], "the later node is held");
    // Nobody else gets it while it is held.
    assert!(b
        .lock("/again", LockOptions::default())
        .try_acquire()
        .await
        .expect("try")
        .is_none());
    assert!(later.release().await.expect("release"));
}

#[tokio::test]
async fn read_write_locks_and_the_lock_listing() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let read = |c: &Client| c.lock("/rw", LockOptions::default().with_kind(LockKind::Read));
    let r1 = read(&a).acquire().await.expect("reader a");
    let r2 = read(&b).acquire().await.expect("reader b");
    let writer = tokio::spawn({
        let lock = b.lock("/rw", LockOptions::default().with_kind(LockKind::Write));
        async move { lock.acquire().await }
    });
    children_until(&a, "/rw", "the writer to queue", |c| c.len() == 3).await;
    let locks = a.locks("/").await.expect("locks");
    let rw = locks.iter().find(|l| l.lock == "/rw").expect("listed");
    let granted: Vec<bool> = rw.queue.iter().map(|e| e.granted).collect();
    assert_eq!(granted, vec![true, true, false]);
    assert_eq!(rw.queue[0].session, a.session_id());
    assert_eq!(rw.queue[0].token, r1.token());
    // A new reader does not overtake the waiting writer.
    assert!(read(&a).try_acquire().await.expect("try").is_none());
    r1.release().await.expect("release");
    r2.release().await.expect("release");
    let w = bounded("the writer", writer)
        .await
        .expect("task")
        .expect("writer");
    assert_eq!(w.kind(), LockKind::Write);
    assert!(w.token() > r2.token());
    // A request of another family is refused.
    let err = a
        .lock("/rw", LockOptions::default())
        .try_acquire()
        .await
        .expect_err("exclusive on a read-write lock");
    assert!(err.is(ErrorCode::BadArguments), "{err}");
}

#[tokio::test]
async fn a_grant_made_while_the_waiter_is_disconnected_reaches_it_after_the_reconnect() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let a = connect(&server.addr()).await;
    let b = Client::connect(via(&proxy)).await.expect("connect");
    let held = a
        .lock("/away", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    let waiting = tokio::spawn({
        let lock = b.lock("/away", LockOptions::default());
        async move { lock.acquire().await }
    });
    children_until(&a, "/away", "b to queue", |c| c.len() == 2).await;

    let mut states = b.state_events();
    proxy.set_mode(Mode::Cut);
    bounded("b disconnected", async {
        while let Some(s) = states.recv().await {
            if s == ConnectionState::Disconnected {
                break;
            }
        }
    })
    .await;
    // Granted while b is away: the pushed event is lost with the connection.
    held.release().await.expect("release");
    let locks = a.locks("/away").await.expect("locks");
    assert!(locks[0].queue[0].granted, "granted on the server");
    proxy.set_mode(Mode::Pass);
    let guard = bounded("b's grant after the reconnect", waiting)
        .await
        .expect("task")
        .expect("acquire");
    assert!(guard.is_held());
    assert_eq!(guard.token(), locks[0].queue[0].token);
}

#[tokio::test]
async fn a_grant_after_the_waiters_safe_deadline_is_not_reported_as_held() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let held = a
        .lock("/late", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    // b waits under a lease it does not renew: its safe deadline passes while it waits
    // (a TTL minus 10 %), before the server expires the lease (a full TTL).
    let ttl = Duration::from_secs(3);
    let lease = b
        .grant_lease_with(LeaseOptions::new(ttl).with_renewal(Renewal::Manual))
        .await
        .expect("lease");
    let waiting = tokio::spawn({
        let lock = b.lock("/late", LockOptions::default().with_lease(lease.clone()));
        async move { lock.acquire().await }
    });
    children_until(&a, "/late", "b to queue", |c| c.len() == 2).await;
    timeout(2 * ttl, lease.lost())
        .await
        .expect("the lease's safe deadline passes");
    assert!(lease.is_lost());
    // Granted now, while the server still has the lease.
    held.release().await.expect("release");
    let result = bounded("b's acquire", waiting).await.expect("task");
    match result {
        Err(Error::LockLost(LockLoss::DeadlinePassed)) => {}
        other => panic!("a late grant must not be held: {other:?}"),
    }
    let stats = b.lock_stats();
    assert_eq!((stats.granted, stats.failed), (0, 1));
    // ...and b gave it back: the lock is free for a.
    children_until(&a, "/late", "b's node to go", |c| c.is_empty()).await;
    assert!(a
        .lock("/late", LockOptions::default())
        .try_acquire()
        .await
        .expect("try")
        .is_some());
}

#[tokio::test]
async fn a_lease_lock_whose_renewals_stop_is_lost_before_anyone_else_gets_it() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let a = Client::connect(via(&proxy)).await.expect("connect");
    let b = connect(&server.addr()).await;
    b.create("/data", b"a".to_vec(), CreateMode::Persistent)
        .await
        .expect("data");
    let ttl = Duration::from_secs(1);
    let guard = a
        .lock("/leased", LockOptions::default().with_ttl(ttl))
        .acquire()
        .await
        .expect("acquire");
    let lease = guard.lease().expect("a dedicated lease").clone();
    assert_eq!(lease.ttl(), ttl);
    let old = guard.token();
    // Renewals keep it well past its TTL while they get through.
    // (A renewal has no event to wait on: poll, bounded.)
    let first_deadline = guard.safe_deadline();
    corral_tests::eventually("renewals to extend the deadline", WAIT, || {
        let extended = guard.safe_deadline() > first_deadline + ttl;
        async move { extended.then_some(()) }
    })
    .await;
    assert!(guard.is_held());
    let lost = guard.lost();
    tokio::pin!(lost);

    let waiting = tokio::spawn({
        let lock = b.lock("/leased", LockOptions::default());
        async move {
            let guard = lock.acquire().await;
            (Instant::now(), guard)
        }
    });
    children_until(&b, "/leased", "b to queue", |c| c.len() == 2).await;

    // The holder's link goes silent: renewals stop being acknowledged.
    proxy.set_mode(Mode::Blackhole);
    let loss = timeout(5 * ttl, &mut lost)
        .await
        .expect("the holder learns it lost the lock");
    let lost_at = Instant::now();
    assert_eq!(loss, LockLoss::DeadlinePassed);
    assert!(!guard.is_held());
    let deadline = guard.safe_deadline();
    assert!(lost_at >= deadline, "not before the safe deadline");
    assert!(
        lost_at <= deadline + Duration::from_millis(50),
        "at the safe deadline (timer slack only): {:?} late",
        lost_at - deadline
    );

    // The server expires the lease and grants the lock to the next waiter, after the
    // holder knew.
    let (granted_at, b_guard) = bounded("b's grant", waiting).await.expect("task");
    let b_guard = b_guard.expect("b acquires");
    assert!(granted_at >= lost_at, "granted before the holder knew");
    assert!(b_guard.token() > old);

    // A write guarded by the old token fails; the new holder's succeeds.
    let err = b
        .transaction()
        .check_lock("/leased", old)
        .set_data("/data", b"stale".to_vec(), None)
        .commit()
        .await
        .expect_err("stale token");
    assert!(err.is(ErrorCode::LockNotHeld), "{err}");
    b.multi(vec![
        b_guard.check_op(),
        corral_client::MultiOp::SetData {
            path: "/data".into(),
            data: b"b".to_vec(),
            version: None,
        },
    ])
    .await
    .expect("fenced write by the new holder");
    assert_eq!(b.get_data("/data").await.expect("read").0, b"b");
}
