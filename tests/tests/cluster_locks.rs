//! The lock service on a real 3-node cluster, each test on a cluster of its own.
//!
//! 1. 32 clients spread over the nodes contend on one lock and update a counter with
//!    writes fenced by `check_lock`: no update is lost, released tokens cannot write, and
//!    tokens strictly increase in grant order.
//! 2. `try_acquire` and `acquire_timeout` leave no queue node behind; a dropped waiter
//!    leaves the queue and the next one is granted.
//! 3. A holder that stops renewing (its link blackholed, its follower cut off, or its
//!    leader cut off) loses the lock after its TTL, knows it no later than the next
//!    waiter is granted, and its fenced writes are refused once it is back.
//! 4. Lock-delay holds grants back after an expiry, not after a release.
//! 5. Killing the leader keeps held locks held (leases restarted, not expired), queued
//!    waiters in FIFO order, and tokens increasing.
//! 6. Read-write locks and semaphores with clients on different nodes.
//! 7. `kill -9` of the whole cluster with a lock held: the next grants' tokens are above
//!    every earlier one.
//! 8. Multi-locks across a leader kill and a wiped node's catch-up through a snapshot: a
//!    held set stays held, a queued set keeps its places and is granted all at once, and
//!    every node describes the same groups.
//!
//! Also prints (never asserts) latency and throughput figures.
//!
//! Every wait is bounded: events (watches, futures) with a timeout, or polls with a
//! deadline; nothing sleeps to synchronise. The tests take one process-wide mutex, so
//! that the load of one cluster does not skew the timings of another (2-core machines).

use corral_client::{
    Client, ClientConfig, CreateMode, ErrorCode, EventKind, LockGuard, LockKind, LockLoss,
    LockOptions,
};
use corral_tests::cluster::{quick_config, PinnedClient, TestCluster};
use corral_tests::eventually;
use corral_tests::proxy::Mode;
use futures::FutureExt;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// Bound of every single wait.
const WAIT: Duration = Duration::from_secs(15);

/// One cluster at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(ttl: Duration) -> ClientConfig {
    quick_config(Vec::<String>::new())
        .with_session_ttl(ttl)
        .with_request_timeout(Duration::from_secs(10))
}

/// A client with only node `id` in its address list.
async fn connect_to(cluster: &TestCluster, id: u64, ttl: Duration) -> Client {
    let addr = cluster.direct_client_addr(id);
    eventually(&format!("a session on node {id}"), WAIT, || {
        let config = quick_config([addr.clone()])
            .with_session_ttl(ttl)
            .with_request_timeout(Duration::from_secs(10));
        async move { Client::connect(config).await.ok() }
    })
    .await
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

fn name_of(node: &str) -> String {
    corral_client::path::name(node).to_string()
}

fn wall_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The leader, once a majority has named the same one for half a second (bounded):
/// right after a start the first leader is sometimes replaced at once, and the tests
/// that give nodes roles need the roles to hold.
async fn stable_leader(cluster: &mut TestCluster) -> u64 {
    let stable_for = Duration::from_millis(500);
    let deadline = Instant::now() + WAIT;
    let mut leader = cluster.leader().await;
    let mut since = Instant::now();
    loop {
        if cluster.current_leader() != Some(leader) {
            leader = cluster.leader().await;
            since = Instant::now();
        } else if since.elapsed() >= stable_for {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "no leader stayed for {stable_for:?} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The nodes other than `leader`, in id order.
fn followers(cluster: &TestCluster, leader: u64) -> (u64, u64) {
    let others: Vec<u64> = cluster.ids().filter(|id| *id != leader).collect();
    (others[0], others[1])
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

/// The children of `lock` after a `sync` (none if it does not exist).
async fn synced_children(client: &Client, lock: &str) -> Vec<String> {
    client.sync(lock).await.expect("sync");
    match client.get_children(lock).await {
        Ok(children) => children,
        Err(e) if e.is(ErrorCode::NoNode) => Vec::new(),
        Err(e) => panic!("get_children {lock}: {e}"),
    }
}

/// The queue of `lock` as (node name, granted), after a `sync`.
async fn queue_of(client: &Client, lock: &str) -> Vec<(String, bool)> {
    client.sync(lock).await.expect("sync");
    let locks = client.locks(lock).await.expect("locks");
    locks
        .iter()
        .find(|l| l.lock == lock)
        .map(|l| {
            l.queue
                .iter()
                .map(|e| (name_of(&e.node), e.granted))
                .collect()
        })
        .unwrap_or_default()
}

/// An acquire in a task of its own: when it returned, and what.
type Waiting = JoinHandle<(Instant, corral_client::Result<LockGuard>)>;

fn spawn_acquire(client: &Client, lock: &str, options: LockOptions) -> Waiting {
    let builder = client.lock(lock, options);
    tokio::spawn(async move {
        let result = builder.acquire().await;
        (Instant::now(), result)
    })
}

/// Spawns an acquire and waits (through `observer`) until its queue node appears;
/// returns the task and the node's name.
async fn queue_up(
    observer: &Client,
    client: &Client,
    lock: &str,
    options: LockOptions,
) -> (Waiting, String) {
    let before: BTreeSet<String> = synced_children(observer, lock).await.into_iter().collect();
    let waiting = spawn_acquire(client, lock, options);
    let children = children_until(observer, lock, "a waiter to queue", |c| {
        c.len() == before.len() + 1
    })
    .await;
    let node = children
        .into_iter()
        .find(|c| !before.contains(c))
        .expect("the new queue node");
    (waiting, node)
}

async fn granted(what: &str, waiting: Waiting) -> (Instant, LockGuard) {
    let (at, result) = bounded(what, waiting).await.expect("acquire task");
    (at, result.unwrap_or_else(|e| panic!("{what}: {e}")))
}

/// A write of `path` guarded by `token` on `lock`, retried (bounded) while the client
/// fails over; fails for good with `LockNotHeld` and other definite errors.
async fn fenced_write(
    client: &Client,
    lock: &str,
    token: u64,
    path: &str,
    data: &str,
) -> corral_client::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = client
            .transaction()
            .check_lock(lock, token)
            .set_data(path, data.as_bytes().to_vec(), None)
            .commit()
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(e)
                if e.is_retryable()
                    && !e.is(ErrorCode::LockNotHeld)
                    && Instant::now() < deadline =>
            {
                eprintln!("note: a fenced write of {path} is retried after: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    format!(
        "n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    )
}

// ---------------------------------------------------------------------------------
// 1. Contention with a fenced counter.
// ---------------------------------------------------------------------------------

/// One grant as its holder saw it.
#[derive(Debug, Clone)]
struct Grant {
    /// When `acquire` returned.
    at: Instant,
    token: u64,
    /// The counter value the holder read (and wrote plus one).
    read: u64,
    client: usize,
}

const COUNTER_LOCK: &str = "/locks/counter";

async fn contender(
    k: usize,
    client: Client,
    started: Instant,
    run: Duration,
    max_rounds: usize,
) -> (Vec<Grant>, u64) {
    let lock = client.lock(COUNTER_LOCK, LockOptions::default());
    let mut grants = Vec::new();
    let mut stale_refused = 0u64;
    for round in 0..max_rounds {
        if round > 0 && started.elapsed() >= run {
            break;
        }
        let guard = bounded("a grant", lock.acquire())
            .await
            .unwrap_or_else(|e| panic!("client {k}: acquire: {e}"));
        let at = Instant::now();
        assert!(guard.is_held(), "client {k}: a fresh grant is held");
        // Read, modify, write without a version check: only mutual exclusion (and the
        // read being at least as new as the grant) prevents a lost update.
        let (data, _) = client.get_data("/counter").await.expect("read the counter");
        let text = String::from_utf8(data).expect("utf-8");
        let read: u64 = text
            .parse()
            .unwrap_or_else(|_| panic!("client {k}: the counter holds {text:?}"));
        client
            .transaction()
            .check_lock(guard.name(), guard.token())
            .set_data("/counter", (read + 1).to_string().into_bytes(), None)
            .commit()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "client {k}: the holder's fenced write (token {}) failed: {e}",
                    guard.token()
                )
            });
        grants.push(Grant {
            at,
            token: guard.token(),
            read,
            client: k,
        });
        let token = guard.token();
        assert!(guard.release().await.expect("release"), "client {k}");
        if round % 2 == 1 {
            // No longer a holder: a write fenced with the released token is refused.
            let result = client
                .transaction()
                .check_lock(COUNTER_LOCK, token)
                .set_data("/counter", b"stale".to_vec(), None)
                .commit()
                .await;
            match result {
                Err(e) if e.is(ErrorCode::LockNotHeld) => stale_refused += 1,
                other => panic!(
                    "client {k}: a write fenced with released token {token} was not refused: \
                     {other:?}"
                ),
            }
        }
    }
    let stats = client.lock_stats();
    assert_eq!(
        (stats.granted, stats.released),
        (grants.len() as u64, grants.len() as u64),
        "client {k}: {stats:?}"
    );
    assert_eq!(stats.failed + stats.cancelled + stats.timed_out, 0);
    client.close().await.expect("close");
    (grants, stale_refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_on_three_nodes_serialize_a_fenced_counter() {
    const CLIENTS: usize = 32;
    const RUN: Duration = Duration::from_millis(2500);
    const MAX_ROUNDS: usize = 200;
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let setup = connect_to(&cluster, leader, Duration::from_secs(10)).await;
    setup
        .create("/counter", b"0".to_vec(), CreateMode::Persistent)
        .await
        .expect("counter");
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let node = (k % 3) as u64 + 1;
        clients.push(connect_to(&cluster, node, Duration::from_secs(10)).await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| tokio::spawn(contender(k, client, started, RUN, MAX_ROUNDS)))
        .collect();
    let mut grants: Vec<Grant> = Vec::new();
    let mut stale_refused = 0;
    for task in tasks {
        let (g, s) = bounded("a contender", task).await.expect("contender task");
        grants.extend(g);
        stale_refused += s;
    }
    let elapsed = started.elapsed();
    let total = grants.len() as u64;

    // No update lost: the counter counts the successful fenced writes...
    setup.sync("/").await.expect("sync");
    let (data, _) = setup.get_data("/counter").await.expect("read");
    assert_eq!(
        String::from_utf8(data).expect("utf-8"),
        total.to_string(),
        "the counter must equal the number of successful fenced writes"
    );
    // ...and every holder read a different value: no two holders overlapped.
    let mut reads: Vec<u64> = grants.iter().map(|g| g.read).collect();
    reads.sort_unstable();
    assert_eq!(reads, (0..total).collect::<Vec<_>>(), "reads 0..{total}");
    // Tokens strictly increase in grant order (by when acquire returned, and by the
    // counter value read, which must agree).
    grants.sort_by_key(|g| g.at);
    for pair in grants.windows(2) {
        assert!(
            pair[1].token > pair[0].token,
            "client {} was granted token {} after client {} had token {}",
            pair[1].client,
            pair[1].token,
            pair[0].client,
            pair[0].token
        );
        assert_eq!(
            pair[1].read,
            pair[0].read + 1,
            "grant order and counter order agree"
        );
    }
    let holders: BTreeSet<usize> = grants.iter().map(|g| g.client).collect();
    assert_eq!(holders.len(), CLIENTS, "every client got the lock (FIFO)");
    assert!(stale_refused > 0);
    println!(
        "contention: {CLIENTS} clients on 3 nodes, {total} fenced updates in {:.2} s \
         ({:.0} grants/s), {stale_refused} writes with released tokens refused",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    children_until(&setup, COUNTER_LOCK, "the lock to be empty", |c| {
        c.is_empty()
    })
    .await;
}

// ---------------------------------------------------------------------------------
// 2. try / timeout / cancelled waiters.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_and_timeout_leave_no_node_and_a_dropped_waiter_leaves_the_queue() {
    const LOCK: &str = "/locks/t";
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let (f1, f2) = followers(&cluster, leader);
    let ttl = Duration::from_secs(10);
    let a = connect_to(&cluster, leader, ttl).await;
    let b = connect_to(&cluster, f1, ttl).await;
    let c = connect_to(&cluster, f2, ttl).await;
    a.create("/data", Vec::new(), CreateMode::Persistent)
        .await
        .expect("data");
    let held = a
        .lock(LOCK, LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    let held_name = name_of(held.node());

    let limit = Duration::from_millis(300);
    for client in [&b, &c] {
        for options in [
            LockOptions::default(),
            LockOptions::default().with_ttl(Duration::from_secs(2)),
        ] {
            let got = client
                .lock(LOCK, options.clone())
                .try_acquire()
                .await
                .expect("try answers");
            assert!(got.is_none(), "the lock is held");
            let started = Instant::now();
            let got = client
                .lock(LOCK, options)
                .acquire_timeout(limit)
                .await
                .expect("a timeout is not an error");
            assert!(got.is_none(), "the lock is held");
            assert!(started.elapsed() >= limit);
        }
        let stats = client.lock_stats();
        assert_eq!((stats.try_failed, stats.timed_out), (2, 2), "{stats:?}");
    }
    // Nothing left behind, on any node. `acquire_timeout` returns at its deadline (or
    // `ACQUIRE_ANSWER_GRACE` after sending, if its answer has not come by then) and
    // withdraws a queued request in the background, so the withdrawal may apply a
    // little later.
    let only_holder = vec![held_name.clone()];
    children_until(&a, LOCK, "the timed-out requests to be withdrawn", |ch| {
        ch == only_holder.as_slice()
    })
    .await;
    for client in [&a, &b, &c] {
        assert_eq!(
            synced_children(client, LOCK).await,
            vec![held_name.clone()],
            "only the holder's node is left"
        );
    }

    // b queues, then c; b's acquire is dropped: b leaves, c is next.
    let (b_waiting, b_node) = queue_up(&a, &b, LOCK, LockOptions::default()).await;
    let (c_waiting, c_node) = queue_up(&a, &c, LOCK, LockOptions::default()).await;
    b_waiting.abort();
    assert!(bounded("the cancelled acquire", b_waiting)
        .await
        .is_err_and(|e| e.is_cancelled()));
    assert_eq!(b.lock_stats().cancelled, 1);
    let want = vec![held_name.clone(), c_node.clone()];
    children_until(&a, LOCK, "b to leave the queue", |ch| ch == want.as_slice()).await;
    assert!(!want.contains(&b_node));
    assert!(!c_waiting.is_finished(), "c waits behind the holder");
    assert!(held.release().await.expect("release"));
    let (_, guard) = granted("c's grant", c_waiting).await;
    assert_eq!(name_of(guard.node()), c_node);
    assert!(guard.token() > held.token());
    assert!(guard.is_held());
    fenced_write(&c, LOCK, guard.token(), "/data", "c")
        .await
        .expect("the new holder writes");
    assert!(guard.release().await.expect("release"));
    children_until(&a, LOCK, "the lock to be empty", |c| c.is_empty()).await;
    for client in [&a, &b, &c] {
        assert!(synced_children(client, LOCK).await.is_empty());
    }
}

// ---------------------------------------------------------------------------------
// 3. A holder that stops renewing.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// The holder's links (to every node) go silent: a paused process.
    Blackhole,
    /// The follower the holder is connected to is cut from the other nodes.
    IsolateFollower,
    /// The leader the holder is connected to is cut from the other nodes.
    IsolateLeader,
}

async fn a_holder_that_stops_renewing_loses_the_lock(stall: Stall) {
    const LOCK: &str = "/locks/stall";
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = stable_leader(&mut cluster).await;
    let (follower, _) = followers(&cluster, leader);
    // The holder on the node that stalls, the waiter on another one.
    let (home, waiter_node) = match stall {
        Stall::IsolateLeader => (leader, follower),
        Stall::Blackhole | Stall::IsolateFollower => (follower, leader),
    };
    let holder: PinnedClient = cluster.pinned(home, config(Duration::from_secs(4))).await;
    if stall != Stall::Blackhole {
        // It stays on its node, as a client that cannot reach the others.
        for id in cluster.ids().filter(|id| *id != home) {
            holder.link(id).set_mode(Mode::Cut);
        }
    }
    let waiter = connect_to(&cluster, waiter_node, Duration::from_secs(10)).await;
    waiter
        .create("/data", b"init".to_vec(), CreateMode::Persistent)
        .await
        .expect("data");
    let ttl = Duration::from_secs(1);
    let guard = Arc::new(
        holder
            .client
            .lock(LOCK, LockOptions::default().with_ttl(ttl))
            .acquire()
            .await
            .expect("acquire"),
    );
    let old = guard.token();
    fenced_write(&holder.client, LOCK, old, "/data", "holder")
        .await
        .expect("the holder writes");

    // The waiter notes, the moment it is granted, whether the holder still counted
    // itself the holder.
    let waiting = tokio::spawn({
        let lock = waiter.lock(LOCK, LockOptions::default());
        let holder_guard = guard.clone();
        async move {
            let result = lock.acquire().await;
            let at = Instant::now();
            (at, holder_guard.is_held(), result)
        }
    });
    children_until(&waiter, LOCK, "the waiter to queue", |c| c.len() == 2).await;
    let lost_task = tokio::spawn({
        let lost = guard.lost();
        async move {
            let why = lost.await;
            (Instant::now(), why)
        }
    });

    assert_eq!(
        cluster.current_leader(),
        Some(leader),
        "{stall:?}: leadership moved during the setup; the roles no longer hold"
    );
    let stalled_at = Instant::now();
    match stall {
        Stall::Blackhole => {
            for id in cluster.ids() {
                holder.link(id).set_mode(Mode::Blackhole);
            }
        }
        Stall::IsolateFollower | Stall::IsolateLeader => cluster.isolate(home),
    }
    let (granted_at, holder_held_then, result) =
        bounded("the waiter's grant", waiting).await.expect("task");
    let next = result.expect("the waiter acquires");
    println!(
        "{stall:?}: waiter granted {:.0} ms after the stall (lease TTL {ttl:?}); the holder's \
         safe deadline was {:.0} ms after the stall",
        ms(granted_at - stalled_at),
        ms(guard.safe_deadline().saturating_duration_since(stalled_at))
    );
    assert!(
        !holder_held_then,
        "{stall:?}: the waiter was granted {:.0} ms after the stall while the holder still \
         counted itself the holder (its safe deadline: {:.0} ms after the stall)",
        ms(granted_at - stalled_at),
        ms(guard.safe_deadline().saturating_duration_since(stalled_at))
    );
    assert!(
        guard.safe_deadline() <= granted_at,
        "{stall:?}: granted before the holder's safe deadline"
    );
    let (lost_at, why) = bounded("the holder's loss", lost_task).await.expect("task");
    println!(
        "{stall:?}: holder reported the loss ({why}) {:.0} ms after the stall, {:.0} ms \
         before the waiter's grant",
        ms(lost_at - stalled_at),
        ms(granted_at.saturating_duration_since(lost_at))
    );
    assert!(
        lost_at <= granted_at,
        "{stall:?}: the holder reported the loss {:.1} ms after the waiter was granted",
        ms(lost_at - granted_at)
    );
    assert_eq!(why, LockLoss::DeadlinePassed);
    assert!(next.token() > old, "tokens increase");
    assert!(next.is_held());

    // The holder resumes.
    match stall {
        Stall::Blackhole => {
            // Close the silenced connections (their bytes are gone), then let new ones
            // through: a process that wakes up and reconnects.
            for id in cluster.ids() {
                holder.link(id).set_mode(Mode::Cut);
            }
            for id in cluster.ids() {
                holder.link(id).set_mode(Mode::Pass);
            }
        }
        Stall::IsolateFollower | Stall::IsolateLeader => {
            cluster.heal_all();
            for id in cluster.ids() {
                holder.link(id).set_mode(Mode::Pass);
            }
        }
    }
    let result = bounded(
        "the resumed holder's fenced write",
        fenced_write(&holder.client, LOCK, old, "/data", "stale holder"),
    )
    .await;
    match result {
        Err(e) if e.is(ErrorCode::LockNotHeld) => {}
        other => panic!("{stall:?}: a fenced write of the former holder got {other:?}"),
    }
    assert!(!guard.is_held());
    assert!(
        guard.lost().now_or_never().is_some(),
        "lost() stays resolved"
    );
    assert!(
        holder.client.state().is_connected(),
        "{stall:?}: the holder is back: {}",
        holder.client.state()
    );
    fenced_write(&waiter, LOCK, next.token(), "/data", "next")
        .await
        .expect("the new holder writes");
    waiter.sync("/").await.expect("sync");
    assert_eq!(waiter.get_data("/data").await.expect("read").0, b"next");
    assert!(
        !guard.release().await.expect("release of a lost lock"),
        "nothing to release"
    );
    assert!(next.release().await.expect("release"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_the_lock_after_its_ttl() {
    let _serial = SERIAL.lock().await;
    a_holder_that_stops_renewing_loses_the_lock(Stall::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_on_an_isolated_follower_loses_the_lock_after_its_ttl() {
    let _serial = SERIAL.lock().await;
    a_holder_that_stops_renewing_loses_the_lock(Stall::IsolateFollower).await;
}

/// Fails: an isolated leader keeps believing it leads (OmniPaxos keeps its promise in
/// the accept phase until it hears a higher ballot) and keeps answering pings and lease
/// renewals at once, so the holder's safe deadline keeps moving forward while the
/// majority's new leader expires the lease and grants the lock to the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_on_an_isolated_leader_loses_the_lock_after_its_ttl() {
    let _serial = SERIAL.lock().await;
    a_holder_that_stops_renewing_loses_the_lock(Stall::IsolateLeader).await;
}

// ---------------------------------------------------------------------------------
// 4. Lock-delay.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_holds_back_the_next_grant_after_an_expiry_not_after_a_release() {
    const EXPIRED: &str = "/locks/delay-expired";
    const RELEASED: &str = "/locks/delay-released";
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let (f1, f2) = followers(&cluster, leader);
    let delay = Duration::from_secs(1);
    let ttl = Duration::from_secs(1);
    let options = LockOptions::default().with_ttl(ttl).with_lock_delay(delay);

    // After an expiry.
    let holder = cluster.pinned(f1, config(Duration::from_secs(4))).await;
    let observer = connect_to(&cluster, leader, Duration::from_secs(10)).await;
    let waiter = connect_to(&cluster, f2, Duration::from_secs(10)).await;
    let guard = holder
        .client
        .lock(EXPIRED, options.clone())
        .acquire()
        .await
        .expect("acquire");
    let state = observer.locks(EXPIRED).await.expect("locks");
    assert_eq!(state[0].lock_delay_ms, 1000, "set by the creating request");
    let waiting = tokio::spawn({
        let lock = waiter.lock(EXPIRED, LockOptions::default());
        async move {
            let result = lock.acquire().await;
            (Instant::now(), wall_ms(), result)
        }
    });
    children_until(&observer, EXPIRED, "the waiter to queue", |c| c.len() == 2).await;
    let (stat, deleted) = observer.exists_watch(guard.node()).await.expect("exists");
    assert!(stat.is_some());
    for id in cluster.ids() {
        holder.link(id).set_mode(Mode::Blackhole);
    }
    let event = bounded("the holder's node to expire", deleted)
        .await
        .expect("watch event");
    let deleted_at = Instant::now();
    let deleted_wall = wall_ms();
    assert_eq!(event.kind, EventKind::NodeDeleted);
    let state = observer.locks(EXPIRED).await.expect("locks");
    let delayed_until = state[0].delayed_until_ms;
    assert!(
        delayed_until > 0,
        "a lock-delay runs after the expiry: {state:?}"
    );
    let expired_wall = delayed_until - 1000;
    assert!(
        state[0].queue.iter().all(|e| !e.granted),
        "nobody holds it during the delay: {state:?}"
    );
    let (granted_at, granted_wall, result) =
        bounded("the waiter's grant", waiting).await.expect("task");
    let next = result.expect("the waiter acquires");
    println!(
        "lock-delay {delay:?}: expiry stamped at wall {expired_wall} (seen {} ms later), \
         waiter granted {} ms after the expiry ({:.0} ms after the deletion was seen)",
        deleted_wall - expired_wall,
        granted_wall - expired_wall,
        ms(granted_at - deleted_at)
    );
    assert!(
        granted_wall >= delayed_until,
        "granted at wall {granted_wall}, before the delay ended at {delayed_until}"
    );
    assert!(next.token() > guard.token());
    assert!(!guard.is_held());
    assert!(next.release().await.expect("release"));

    // After a clean release: no delay.
    let holder2 = connect_to(&cluster, f1, Duration::from_secs(10)).await;
    let held = holder2
        .lock(RELEASED, options.clone())
        .acquire()
        .await
        .expect("acquire");
    let (waiting, _) = queue_up(&observer, &waiter, RELEASED, LockOptions::default()).await;
    let released_at = Instant::now();
    assert!(held.release().await.expect("release"));
    let (granted_at, next) = granted("the grant after a release", waiting).await;
    let handoff = granted_at - released_at;
    println!(
        "lock-delay {delay:?}: after a clean release the waiter was granted in {:.1} ms",
        ms(handoff)
    );
    assert!(
        handoff < delay / 2,
        "a release starts no lock-delay, yet the grant took {handoff:?}"
    );
    let state = observer.locks(RELEASED).await.expect("locks");
    assert_eq!(state[0].delayed_until_ms, 0, "{state:?}");
    assert!(next.release().await.expect("release"));
}

// ---------------------------------------------------------------------------------
// 5. Leader killed with locks held and waiters queued.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_keeps_holders_and_the_waiters_fifo_order() {
    const L1: &str = "/locks/k1";
    const L2: &str = "/locks/k2";
    const L3: &str = "/locks/k3";
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]).await;
    let old = stable_leader(&mut cluster).await;
    let (f1, f2) = followers(&cluster, old);
    let session_ttl = Duration::from_secs(4);
    let lease_ttl = Duration::from_secs(3);
    let cfg = config(session_ttl);
    let observer = connect_to(&cluster, f2, Duration::from_secs(10)).await;
    for p in ["/d1", "/d2"] {
        observer
            .create(p, Vec::new(), CreateMode::Persistent)
            .await
            .expect("data");
    }

    // h1 holds L1 under a lease, connected to the leader; h2 holds L2 under its
    // session, on a follower.
    let h1 = cluster.pinned(old, cfg.clone()).await;
    let h2 = cluster.pinned(f1, cfg.clone()).await;
    let g1 = h1
        .client
        .lock(L1, LockOptions::default().with_ttl(lease_ttl))
        .acquire()
        .await
        .expect("h1 acquires");
    let g2 = h2
        .client
        .lock(L2, LockOptions::default())
        .acquire()
        .await
        .expect("h2 acquires");
    // Three waiters on L1 (one on each node, the first under a lease), one on L2.
    let mut waiters: Vec<(PinnedClient, Waiting, String)> = Vec::new();
    for (home, options) in [
        (old, LockOptions::default().with_ttl(lease_ttl)),
        (f1, LockOptions::default()),
        (f2, LockOptions::default()),
    ] {
        let w = cluster.pinned(home, cfg.clone()).await;
        let (waiting, node) = queue_up(&observer, &w.client, L1, options).await;
        waiters.push((w, waiting, node));
    }
    let v = cluster.pinned(f2, cfg.clone()).await;
    let (v_waiting, _) = queue_up(&observer, &v.client, L2, LockOptions::default()).await;
    let mut tokens_before = vec![g1.token(), g2.token()];
    for l in [L1, L2] {
        let state = observer.locks(l).await.expect("locks");
        tokens_before.extend(state[0].queue.iter().map(|e| e.token));
    }
    let max_before = tokens_before.iter().copied().max().expect("tokens");
    let zxid_before = observer.last_zxid().max(h1.client.last_zxid());

    assert_eq!(
        cluster.current_leader(),
        Some(old),
        "leadership moved during the setup"
    );
    cluster.kill(old);
    let killed_at = Instant::now();
    let new = cluster.leader_other_than(Some(old)).await;
    println!(
        "leader {old} killed; node {new} leads {:.0} ms later",
        ms(killed_at.elapsed())
    );
    let pinned: Vec<&PinnedClient> = [&h1, &h2, &v]
        .into_iter()
        .chain(waiters.iter().map(|(w, _, _)| w))
        .collect();
    for p in &pinned {
        eventually("every client back on a live node", WAIT, || {
            let node = p.connected_node();
            async move { node.filter(|n| *n != old).map(|_| ()) }
        })
        .await;
    }
    fenced_write(&h1.client, L1, g1.token(), "/d1", "h1 after the change")
        .await
        .expect("h1 still holds L1");
    fenced_write(&h2.client, L2, g2.token(), "/d2", "h2 after the change")
        .await
        .expect("h2 still holds L2");

    // Past a full lease TTL after the kill (and the new leader's restart of every
    // deadline), the holders still hold: poll, bounded, that nothing changes.
    let lost1 = g1.lost();
    let lost2 = g2.lost();
    tokio::pin!(lost1, lost2);
    let watch_until = killed_at + lease_ttl + Duration::from_millis(1000);
    while Instant::now() < watch_until {
        assert!(g1.is_held() && g2.is_held(), "a holder lost its lock");
        assert!((&mut lost1).now_or_never().is_none(), "h1's lost() fired");
        assert!((&mut lost2).now_or_never().is_none(), "h2's lost() fired");
        for (i, (_, waiting, _)) in waiters.iter().enumerate() {
            assert!(!waiting.is_finished(), "waiter {i} finished early");
        }
        assert!(!v_waiting.is_finished(), "L2's waiter finished early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fenced_write(&h1.client, L1, g1.token(), "/d1", "h1 later")
        .await
        .expect("h1 still holds L1 a lease TTL later");
    fenced_write(&h2.client, L2, g2.token(), "/d2", "h2 later")
        .await
        .expect("h2 still holds L2 a lease TTL later");

    // FIFO: releases hand the lock to the waiters in their queue order.
    let mut previous = (g1.token(), "h1".to_string());
    assert!(g1.release().await.expect("h1 releases"));
    let mut rest: Vec<(PinnedClient, Waiting, String)> = waiters.into_iter().collect();
    let mut index = 0;
    while !rest.is_empty() {
        let (w, waiting, node) = rest.remove(0);
        let (_, guard) = granted(&format!("waiter {index}'s grant"), waiting).await;
        assert_eq!(name_of(guard.node()), node, "granted in queue order");
        assert!(
            guard.token() > previous.0,
            "waiter {index}'s token {} is not above {}'s {}",
            guard.token(),
            previous.1,
            previous.0
        );
        let queue = queue_of(&observer, L1).await;
        let granted_nodes: Vec<&String> =
            queue.iter().filter(|(_, g)| *g).map(|(n, _)| n).collect();
        assert_eq!(granted_nodes, vec![&node], "only the head holds: {queue:?}");
        for (_, later, _) in &rest {
            assert!(!later.is_finished(), "a later waiter was granted early");
        }
        fenced_write(&w.client, L1, guard.token(), "/d1", &format!("w{index}"))
            .await
            .expect("the new holder writes");
        previous = (guard.token(), format!("waiter {index}"));
        assert!(guard.release().await.expect("release"));
        index += 1;
    }
    assert!(g2.release().await.expect("h2 releases"));
    let (_, vg) = granted("L2's waiter", v_waiting).await;
    assert!(vg.token() > g2.token());
    // A request made after the change is above everything before it.
    let fresh = connect_to(&cluster, new, Duration::from_secs(10)).await;
    let g3 = fresh
        .lock(L3, LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    assert!(
        g3.token() > max_before && g3.token() > zxid_before,
        "token {} after the change, {max_before} (zxid {zxid_before}) before",
        g3.token()
    );
}

// ---------------------------------------------------------------------------------
// 6. Read-write locks and semaphores.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_locks_and_semaphores_across_nodes() {
    const RW: &str = "/locks/rw";
    const SEM: &str = "/locks/sem";
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]).await;
    cluster.leader().await;
    let ttl = Duration::from_secs(10);
    let mut c = Vec::new();
    for id in cluster.ids() {
        c.push(connect_to(&cluster, id, ttl).await);
    }
    c[0].create("/table", Vec::new(), CreateMode::Persistent)
        .await
        .expect("data");
    let read = LockOptions::default().with_kind(LockKind::Read);
    let write = LockOptions::default().with_kind(LockKind::Write);

    // Readers on nodes 1 and 2 share.
    let r1 = c[0]
        .lock(RW, read.clone())
        .acquire()
        .await
        .expect("reader 1");
    let r2 = bounded("reader 2", c[1].lock(RW, read.clone()).acquire())
        .await
        .expect("reader 2");
    assert!(r1.is_held() && r2.is_held());
    // A writer on node 3 waits; a reader after it waits too (fair).
    let (w_waiting, w_node) = queue_up(&c[0], &c[2], RW, write.clone()).await;
    assert!(c[0]
        .lock(RW, read.clone())
        .try_acquire()
        .await
        .expect("try")
        .is_none());
    let (r3_waiting, r3_node) = queue_up(&c[0], &c[1], RW, read.clone()).await;
    let queue = queue_of(&c[2], RW).await;
    let flags: Vec<bool> = queue.iter().map(|(_, g)| *g).collect();
    assert_eq!(flags, vec![true, true, false, false], "{queue:?}");
    fenced_write(&c[0], RW, r1.token(), "/table", "read-checked")
        .await
        .expect("a reader's token holds the lock");
    assert!(r1.release().await.expect("release"));
    let queue = queue_of(&c[2], RW).await;
    assert!(
        !queue.iter().any(|(n, g)| *n == w_node && *g),
        "the writer waits for the second reader: {queue:?}"
    );
    assert!(r2.release().await.expect("release"));
    let (_, w) = granted("the writer", w_waiting).await;
    let queue = queue_of(&c[0], RW).await;
    assert_eq!(
        queue,
        vec![(w_node.clone(), true), (r3_node.clone(), false)],
        "the writer is alone"
    );
    assert!(!r3_waiting.is_finished());
    assert!(w.token() > r2.token());
    fenced_write(&c[2], RW, w.token(), "/table", "written")
        .await
        .expect("the writer writes");
    let stale = fenced_write(&c[0], RW, r1.token(), "/table", "stale").await;
    assert!(stale.is_err_and(|e| e.is(ErrorCode::LockNotHeld)));
    assert!(w.release().await.expect("release"));
    let (_, r3) = granted("the reader after the writer", r3_waiting).await;
    assert!(r3.token() > w.token());
    assert!(r3.release().await.expect("release"));

    // Semaphore(2): two share, a third waits for a permit.
    let sem = LockOptions::default().with_kind(LockKind::Semaphore { permits: 2 });
    let s1 = c[0].lock(SEM, sem.clone()).acquire().await.expect("s1");
    let s2 = c[1].lock(SEM, sem.clone()).acquire().await.expect("s2");
    assert!(c[2]
        .lock(SEM, sem.clone())
        .try_acquire()
        .await
        .expect("try")
        .is_none());
    let (s3_waiting, _) = queue_up(&c[0], &c[2], SEM, sem.clone()).await;
    assert!(s1.release().await.expect("release"));
    let (_, s3) = granted("the third permit holder", s3_waiting).await;
    assert!(s2.is_held() && s3.is_held());
    assert!(s2.release().await.expect("release"));
    assert!(s3.release().await.expect("release"));

    // Under load: six clients (two per node) cycle; never more than two hold, as seen
    // by the holders and by an auditor reading the server's lock state.
    let holders = Arc::new(AtomicUsize::new(0));
    let max_holders = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..6usize {
        let client = connect_to(&cluster, (k % 3) as u64 + 1, ttl).await;
        client
            .create(&format!("/sem-{k}"), Vec::new(), CreateMode::Persistent)
            .await
            .expect("data");
        let (holders, max_holders, sem) = (holders.clone(), max_holders.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let lock = client.lock(SEM, sem);
            let mut cycles = 0u64;
            while started.elapsed() < Duration::from_millis(1500) && cycles < 200 {
                let guard = bounded("a permit", lock.acquire()).await.expect("acquire");
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                max_holders.fetch_max(now, Ordering::SeqCst);
                assert!(now <= 2, "{now} semaphore holders at once");
                fenced_write(
                    &client,
                    SEM,
                    guard.token(),
                    &format!("/sem-{k}"),
                    &cycles.to_string(),
                )
                .await
                .expect("a permit holder writes");
                holders.fetch_sub(1, Ordering::SeqCst);
                assert!(guard.release().await.expect("release"));
                cycles += 1;
            }
            cycles
        }));
    }
    let auditor = tokio::spawn({
        let client = c[2].clone();
        let stop = stop.clone();
        async move {
            let mut reads = 0u64;
            let mut max_granted = 0usize;
            while !stop.load(Ordering::SeqCst) && reads < 10_000 {
                let locks = client.locks(SEM).await.expect("locks");
                let granted = locks
                    .iter()
                    .find(|l| l.lock == SEM)
                    .map(|l| l.queue.iter().filter(|e| e.granted).count())
                    .unwrap_or(0);
                assert!(granted <= 2, "{granted} permits granted: {locks:?}");
                max_granted = max_granted.max(granted);
                reads += 1;
            }
            (reads, max_granted)
        }
    });
    let mut cycles = 0;
    for task in tasks {
        cycles += bounded("a semaphore client", task).await.expect("task");
    }
    stop.store(true, Ordering::SeqCst);
    let (reads, max_granted) = bounded("the auditor", auditor).await.expect("task");
    println!(
        "semaphore(2): {cycles} cycles by 6 clients, at most {} holders seen by the clients, \
         {max_granted} granted in {reads} reads of the lock state",
        max_holders.load(Ordering::SeqCst)
    );
    assert!(max_holders.load(Ordering::SeqCst) <= 2);
}

// ---------------------------------------------------------------------------------
// 7. Full-cluster kill -9.
// ---------------------------------------------------------------------------------

/// The locks of a queue node's request as `client`'s node describes them
/// (`GetLockGroup`, after a `sync`): each lock, and whether the request's node there
/// holds it, in request order.
async fn group_on(client: &Client, node: &str) -> Vec<(String, bool)> {
    client.sync("/").await.expect("sync");
    let locks = client.lock_group(node).await.expect("a queue node");
    let token = locks
        .iter()
        .flat_map(|l| &l.queue)
        .find(|e| e.node == node)
        .map(|e| e.token)
        .unwrap_or_else(|| panic!("{node} is not in its own group: {locks:?}"));
    locks
        .iter()
        .map(|l| {
            let entry = l.queue.iter().find(|e| e.token == token);
            (l.lock.clone(), entry.expect("the request's node").granted)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_locks_survive_a_leader_kill_and_a_snapshot_install() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &["--snapshot-every-entries", "50"]).await;
    let old = stable_leader(&mut cluster).await;
    let (f1, f2) = followers(&cluster, old);
    let cfg = config(Duration::from_secs(6));
    let a = cluster.pinned(f1, cfg.clone()).await;
    let b = cluster.pinned(f2, cfg.clone()).await;
    let held = a
        .client
        .lock_many(["/m/a", "/m/b"], LockOptions::default())
        .acquire()
        .await
        .expect("a's set");
    let queued = tokio::spawn({
        let set = b.client.lock_many(["/m/b", "/m/c"], LockOptions::default());
        async move { set.acquire().await }
    });
    children_until(&a.client, "/m/b", "b's set to queue", |c| c.len() == 2).await;
    let b_node = {
        let state = a.client.locks("/m/c").await.expect("locks");
        state[0].queue[0].node.clone()
    };
    // Enough writes for several compactions, so a wiped node catches up from an image.
    let filler = connect_to(&cluster, f1, Duration::from_secs(10)).await;
    let writes = (0..200).map(|i| {
        let filler = filler.clone();
        async move {
            filler
                .create(&format!("/fill-{i:03}"), Vec::new(), CreateMode::Persistent)
                .await
                .expect("create")
        }
    });
    futures::future::join_all(writes).await;

    // The leader goes, and comes back wiped: it catches up through a snapshot.
    cluster.kill(old);
    let new = cluster.leader_other_than(Some(old)).await;
    cluster.wipe(old).await;
    eventually("the wiped node to catch up", WAIT, || {
        let installs = cluster.snapshot_installs(old);
        async move { (installs >= 1).then_some(()) }
    })
    .await;
    println!("leader {old} killed and wiped, node {new} leads");
    assert!(held.is_held(), "a's set was lost across the leader change");
    let a_nodes = held.nodes().to_vec();
    for id in cluster.ids() {
        let on = connect_to(&cluster, id, Duration::from_secs(10)).await;
        assert_eq!(
            group_on(&on, &a_nodes[0].node).await,
            [("/m/a".to_string(), true), ("/m/b".to_string(), true)],
            "a's set as node {id} describes it"
        );
        assert_eq!(
            group_on(&on, &b_node).await,
            [("/m/b".to_string(), false), ("/m/c".to_string(), false)],
            "b's set as node {id} describes it"
        );
    }

    // a releases: b's set is granted, both locks in one transaction.
    let a_token = held.token("/m/b").expect("in the set");
    assert!(held.release().await.expect("release"));
    let b_set = bounded("b's set", queued)
        .await
        .expect("task")
        .expect("b's set granted");
    let tokens = b_set.tokens();
    assert!(
        tokens
            .iter()
            .all(|(_, t)| *t > a_token && *t == tokens[0].1),
        "{tokens:?}"
    );
    for id in cluster.ids() {
        let on = connect_to(&cluster, id, Duration::from_secs(10)).await;
        assert_eq!(
            group_on(&on, &b_node).await,
            [("/m/b".to_string(), true), ("/m/c".to_string(), true)],
            "b's set as node {id} describes it once granted"
        );
    }
    assert!(b_set.release().await.expect("release"));
    cluster.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_increasing_after_a_full_cluster_kill_and_restart() {
    const LOCK: &str = "/locks/crash";
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let all: Vec<String> = cluster
        .ids()
        .map(|id| cluster.direct_client_addr(id))
        .collect();
    let cfg = quick_config(all)
        .with_session_ttl(Duration::from_secs(10))
        .with_request_timeout(Duration::from_secs(10));
    // Some history.
    let x = connect_to(&cluster, 1, Duration::from_secs(10)).await;
    let y = connect_to(&cluster, 2, Duration::from_secs(10)).await;
    x.create("/crash-data", Vec::new(), CreateMode::Persistent)
        .await
        .expect("data");
    let mut tokens = Vec::new();
    for round in 0..6 {
        let client = if round % 2 == 0 { &x } else { &y };
        let g = client
            .lock(LOCK, LockOptions::default())
            .acquire()
            .await
            .expect("acquire");
        tokens.push(g.token());
        assert!(g.release().await.expect("release"));
    }
    let c = Client::connect(cfg.clone()).await.expect("holder connects");
    let w = Client::connect(cfg.clone()).await.expect("waiter connects");
    let guard = c
        .lock(LOCK, LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    tokens.push(guard.token());
    let (w_waiting, _) = queue_up(&x, &w, LOCK, LockOptions::default()).await;
    let zxid_before = x.last_zxid().max(c.last_zxid()).max(w.last_zxid());
    let max_before = tokens.iter().copied().max().expect("tokens");
    assert!(tokens.windows(2).all(|p| p[1] > p[0]), "{tokens:?}");
    drop((x, y));

    cluster.kill_all();
    let killed_at = Instant::now();
    cluster.restart_all().await;
    let new = cluster.leader().await;
    println!("full restart: leader {leader} before, {new} after");
    for (who, client) in [("holder", &c), ("waiter", &w)] {
        eventually(&format!("the {who} to resume its session"), WAIT, || {
            let state = client.state();
            async move { state.is_connected().then_some(()) }
        })
        .await;
    }
    c.sync("/")
        .await
        .expect("the holder's session serves again");
    println!(
        "full restart: the holder's session served again {:.0} ms after the kill",
        ms(killed_at.elapsed())
    );
    assert!(
        guard.is_held(),
        "the holder came back within its TTL and still holds"
    );
    fenced_write(&c, LOCK, guard.token(), "/crash-data", "after restart")
        .await
        .expect("the holder's lock survived the restart");
    let n = connect_to(&cluster, new, Duration::from_secs(10)).await;
    let (n_waiting, _) = queue_up(&n, &n, LOCK, LockOptions::default()).await;
    assert!(!w_waiting.is_finished());
    assert!(guard.release().await.expect("release"));
    let (_, wg) = granted("the waiter queued before the crash", w_waiting).await;
    assert!(
        wg.token() > max_before,
        "token {} after the restart, {max_before} before",
        wg.token()
    );
    assert!(wg.release().await.expect("release"));
    let (_, ng) = granted("the waiter queued after the restart", n_waiting).await;
    assert!(
        ng.token() > wg.token() && ng.token() > zxid_before,
        "token {} of a request after the restart; zxid {zxid_before} was seen before",
        ng.token()
    );
    fenced_write(&n, LOCK, ng.token(), "/crash-data", "n")
        .await
        .expect("the new holder writes");
    assert!(ng.release().await.expect("release"));
}

// ---------------------------------------------------------------------------------
// Figures (printed, never asserted).
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_latency_and_throughput_figures() {
    const CYCLES: usize = 200;
    const HANDOFFS: usize = 100;
    const CLIENTS: usize = 64;
    const NAMES: usize = 1000;
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = stable_leader(&mut cluster).await;
    let (f1, f2) = followers(&cluster, leader);
    let ttl = Duration::from_secs(10);

    // Uncontended acquire + release.
    for (label, node) in [("follower", f1), ("leader", leader)] {
        let client = connect_to(&cluster, node, ttl).await;
        let lock = client.lock(&format!("/perf/u-{label}"), LockOptions::default());
        let mut samples = Vec::with_capacity(CYCLES);
        for i in 0..CYCLES + 10 {
            let started = Instant::now();
            let guard = bounded("an uncontended acquire", lock.acquire())
                .await
                .expect("acquire");
            guard.release().await.expect("release");
            if i >= 10 {
                samples.push(started.elapsed());
            }
        }
        println!(
            "uncontended acquire+release on the {label} (node {node}): {}",
            summary(samples)
        );
        client.close().await.expect("close");
    }

    // Handoff: release sent -> the waiter's grant received, between two followers.
    {
        const LOCK: &str = "/perf/handoff";
        let a = connect_to(&cluster, f1, ttl).await;
        let b = connect_to(&cluster, f2, ttl).await;
        let clients = [a, b];
        let mut holder = clients[0]
            .lock(LOCK, LockOptions::default())
            .acquire()
            .await
            .expect("acquire");
        let mut samples = Vec::with_capacity(HANDOFFS);
        for i in 0..HANDOFFS {
            let next = &clients[(i + 1) % 2];
            let current = &clients[i % 2];
            let (waiting, _) = queue_up(current, next, LOCK, LockOptions::default()).await;
            let released_at = Instant::now();
            assert!(holder.release().await.expect("release"));
            let (granted_at, guard) = granted("a handoff", waiting).await;
            samples.push(granted_at - released_at);
            holder = guard;
        }
        holder.release().await.expect("release");
        println!(
            "handoff (release sent -> next waiter granted), clients on nodes {f1} and {f2}: {}",
            summary(samples)
        );
    }

    // Throughput: 64 clients over 1,000 lock names.
    let run = Duration::from_secs(3);
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        clients.push(connect_to(&cluster, (k % 3) as u64 + 1, ttl).await);
    }
    let cycles = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| {
            let cycles = cycles.clone();
            tokio::spawn(async move {
                let mut i = 0usize;
                while started.elapsed() < run && i < 100_000 {
                    let name = format!("/perf/t/{}", (k * 7919 + i * 104_729) % NAMES);
                    let guard = bounded("a throughput acquire", {
                        client.lock(&name, LockOptions::default()).acquire()
                    })
                    .await
                    .expect("acquire");
                    guard.release().await.expect("release");
                    cycles.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                client.close().await.expect("close");
            })
        })
        .collect();
    for task in tasks {
        bounded("a throughput client", task).await.expect("task");
    }
    let elapsed = started.elapsed();
    let total = cycles.load(Ordering::Relaxed);
    println!(
        "throughput: {CLIENTS} clients on 3 nodes over {NAMES} lock names: {total} \
         acquire/release cycles in {:.2} s = {:.0} cycles/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}
