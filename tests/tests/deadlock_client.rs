//! Deadlock detection and atomic multi-locks against a real single-node server: a
//! two-lock and a three-lock cycle across clients broken with exactly one `Deadlock`
//! while the others complete; a multi-lock never seen partly held by an observer under
//! contention with single-lock clients; a multi-lock's lease expiry releasing every
//! lock in one transaction.
//!
//! Every wait is bounded with `tokio::time::timeout` on an event; nothing sleeps to
//! synchronise.

use corral_client::{
    Client, ClientConfig, CreateMode, Error, ErrorCode, LockLoss, LockOptions, Renewal, WaitStep,
};
use corral_tests::TestServer;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(addr: &str) -> Client {
    Client::connect(ClientConfig::new([addr]))
        .await
        .expect("connect")
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits (child watches, bounded) until `lock` has `n` queue nodes.
async fn queue_len(client: &Client, lock: &str, n: usize) {
    bounded(&format!("{lock} to have {n} queue nodes"), async {
        loop {
            let (children, _, watcher) = client.get_children_watch(lock).await.expect("children");
            if children.len() == n {
                return;
            }
            let _ = watcher.await;
        }
    })
    .await
}

fn step(session: u64, lock: &str, waits_for: u64) -> WaitStep {
    WaitStep {
        session,
        lock: lock.to_string(),
        waits_for,
    }
}

fn cycle_of(err: &Error) -> Vec<WaitStep> {
    assert!(err.is(ErrorCode::Deadlock), "expected Deadlock, got {err}");
    err.deadlock_cycle().expect("a deadlock").to_vec()
}

#[tokio::test]
async fn a_two_lock_cycle_is_broken_with_one_deadlock_and_the_other_completes() {
    let server = TestServer::start(&[]);
    let (a, b) = (connect(&server.addr()).await, connect(&server.addr()).await);
    let opts = LockOptions::default;
    let a1 = a.lock("/d2/l1", opts()).acquire().await.expect("a: l1");
    let b2 = b.lock("/d2/l2", opts()).acquire().await.expect("b: l2");
    let a_waits = tokio::spawn({
        let lock = a.lock("/d2/l2", opts());
        async move { lock.acquire().await }
    });
    queue_len(&b, "/d2/l2", 2).await;
    let err = b
        .lock("/d2/l1", opts())
        .acquire()
        .await
        .expect_err("b would close the cycle");
    let (sa, sb) = (a.session_id(), b.session_id());
    assert_eq!(
        cycle_of(&err),
        vec![step(sb, "/d2/l1", sa), step(sa, "/d2/l2", sb)]
    );
    // Nothing of b's refused request is left in /d2/l1.
    assert_eq!(b.locks("/d2/l1").await.expect("locks")[0].queue.len(), 1);
    // b gives up what it holds; a completes.
    assert!(b2.release().await.expect("release"));
    let a2 = bounded("a's grant", a_waits)
        .await
        .expect("task")
        .expect("a gets l2");
    assert!(a1.is_held() && a2.is_held());
    assert_eq!(b.lock_stats().failed, 1);
}

#[tokio::test]
async fn a_three_lock_cycle_across_three_clients_is_broken_once() {
    let server = TestServer::start(&[]);
    let c: Vec<Client> = vec![
        connect(&server.addr()).await,
        connect(&server.addr()).await,
        connect(&server.addr()).await,
    ];
    let opts = LockOptions::default;
    let held: Vec<_> = futures_join((0..3).map(|i| c[i].lock(&format!("/d3/l{i}"), opts()))).await;
    // 0 waits for l1 (held by 1), 1 waits for l2 (held by 2).
    let mut waits = Vec::new();
    for i in 0..2 {
        let lock = c[i].lock(&format!("/d3/l{}", i + 1), opts());
        waits.push(tokio::spawn(async move { lock.acquire().await }));
        queue_len(&c[0], &format!("/d3/l{}", i + 1), 2).await;
    }
    // 2 asking for l0 closes 2 -> 0 -> 1 -> 2.
    let err = c[2]
        .lock("/d3/l0", opts())
        .acquire()
        .await
        .expect_err("the cycle is refused");
    let s: Vec<u64> = c.iter().map(Client::session_id).collect();
    assert_eq!(
        cycle_of(&err),
        vec![
            step(s[2], "/d3/l0", s[0]),
            step(s[0], "/d3/l1", s[1]),
            step(s[1], "/d3/l2", s[2]),
        ]
    );
    // 2 gives up l2: 1 completes, releases everything, then 0 completes.
    let mut held = held.into_iter();
    let (g0, g1, g2) = (
        held.next().expect("0"),
        held.next().expect("1"),
        held.next().expect("2"),
    );
    assert!(g2.release().await.expect("release"));
    let mut waits = waits.into_iter();
    let (w0, w1) = (waits.next().expect("0"), waits.next().expect("1"));
    let got1 = bounded("1's grant", w1)
        .await
        .expect("task")
        .expect("1: l2");
    assert!(got1.release().await.expect("release") && g1.release().await.expect("release"));
    let got0 = bounded("0's grant", w0)
        .await
        .expect("task")
        .expect("0: l1");
    assert!(got0.is_held() && g0.is_held());
    let failed: u64 = c.iter().map(|c| c.lock_stats().failed).sum();
    assert_eq!(failed, 1, "exactly one Deadlock");
}

/// Acquires every builder's lock, in order.
async fn futures_join(
    locks: impl Iterator<Item = corral_client::LockBuilder>,
) -> Vec<corral_client::LockGuard> {
    let mut out = Vec::new();
    for lock in locks {
        out.push(lock.acquire().await.expect("acquire"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_lock_is_never_seen_partly_held_under_contention() {
    const ROUNDS: usize = 15;
    let server = TestServer::start(&[]);
    let observer = connect(&server.addr()).await;
    let multi = connect(&server.addr()).await;
    let multi_session = multi.session_id();
    let mut singles = Vec::new();
    for _ in 0..4 {
        singles.push(connect(&server.addr()).await);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Single-lock clients take /m/a or /m/b in turns, one at a time.
    let mut workers = Vec::new();
    for (i, client) in singles.into_iter().enumerate() {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let lock = client.lock(
                if i % 2 == 0 { "/m/a" } else { "/m/b" },
                LockOptions::default(),
            );
            let mut rounds = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let guard = lock.acquire().await.expect("single acquire");
                guard.release().await.expect("release");
                rounds += 1;
            }
            rounds
        }));
    }
    // The multi-lock client takes both, many times.
    let multi_task = tokio::spawn(async move {
        let set = multi.lock_many(["/m/a", "/m/b"], LockOptions::default());
        let mut tokens = Vec::new();
        for _ in 0..ROUNDS {
            let guard = set.acquire().await.expect("multi acquire");
            let t = guard.tokens();
            assert_eq!(t.len(), 2);
            assert_eq!(t[0].1, t[1].1, "one token per lock, from one transaction");
            tokens.push(t[0].1);
            assert!(guard.release().await.expect("release"));
        }
        tokens
    });
    // The observer reads both locks at once, again and again, while the multi runs.
    let mut snapshots = 0;
    let mut seen_whole = 0;
    while !multi_task.is_finished() {
        let locks = observer.locks("/m").await.expect("locks");
        snapshots += 1;
        let mut multi_granted: BTreeMap<&str, bool> = BTreeMap::new();
        for lock in &locks {
            let holders = lock.queue.iter().filter(|e| e.granted).count();
            assert!(
                holders <= 1,
                "two holders of {}: {:?}",
                lock.lock,
                lock.queue
            );
            if let Some(e) = lock.queue.iter().find(|e| e.session == multi_session) {
                multi_granted.insert(&lock.lock, e.granted);
            }
        }
        let granted: Vec<bool> = multi_granted.values().copied().collect();
        if granted.len() == 2 {
            assert_eq!(granted[0], granted[1], "partly held: {locks:?}");
            seen_whole += usize::from(granted[0]);
        }
        // Bounded: the multi-lock finishes well within this many reads.
        assert!(snapshots < 100_000, "the multi-lock client never finished");
    }
    let tokens = bounded("the multi-lock client", multi_task)
        .await
        .expect("task");
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens increase");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        let rounds = bounded("a single-lock client", w).await.expect("task");
        assert!(rounds > 0, "every single-lock client got its lock");
    }
    println!("{snapshots} observations, {seen_whole} with the multi-lock holding both");
}

#[tokio::test]
async fn a_multi_lock_leases_expiry_releases_every_lock_in_one_transaction() {
    let server = TestServer::start(&[]);
    let (a, b) = (connect(&server.addr()).await, connect(&server.addr()).await);
    // Persistent lock directories stay after their queues empty, with the zxid of
    // the last change to their children.
    for dir in ["/e", "/e/a", "/e/b", "/e/c"] {
        b.create(dir, Vec::new(), CreateMode::Persistent)
            .await
            .expect("dir");
    }
    let ttl = Duration::from_secs(1);
    let options = LockOptions::default()
        .with_ttl(ttl)
        .with_renewal(Renewal::Manual);
    let guard = a
        .lock_many(["/e/a", "/e/b", "/e/c"], options)
        .acquire()
        .await
        .expect("multi acquire");
    let lost = guard.lost();
    // b waits for one of them.
    let waiting = tokio::spawn({
        let lock = b.lock("/e/b", LockOptions::default());
        async move { lock.acquire().await }
    });
    queue_len(&b, "/e/b", 2).await;
    // Nothing renews the lease: it expires, and every lock goes with it.
    let loss = timeout(5 * ttl, lost).await.expect("the holder learns");
    assert!(
        matches!(loss, LockLoss::DeadlinePassed | LockLoss::LeaseExpired),
        "{loss}"
    );
    let b_guard = bounded("b's grant", waiting)
        .await
        .expect("task")
        .expect("b gets /e/b");
    assert!(b_guard.token() > guard.token("/e/b").expect("token"));
    queue_len(&b, "/e/a", 0).await;
    queue_len(&b, "/e/c", 0).await;
    let pzxid = |stat: Option<corral_client::Stat>| stat.expect("dir").pzxid;
    let za = pzxid(b.exists("/e/a").await.expect("exists"));
    let zb = pzxid(b.exists("/e/b").await.expect("exists"));
    let zc = pzxid(b.exists("/e/c").await.expect("exists"));
    assert_eq!((za, zb), (zc, zc), "released in one transaction");
    assert!(b_guard.is_held());
}
