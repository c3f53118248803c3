//! The coordination recipes (`corral_client::recipes`) against a real single-node
//! server: a fair read-write lock, a semaphore, leader election (campaign, resign,
//! proclaim, failover, `leader()` and `observe()`), a barrier and a double barrier.
//!
//! Every wait is bounded with `tokio::time::timeout` on an event (a watch, a future, a
//! stream item); nothing sleeps to synchronise.

use corral_client::recipes::{
    Barrier, DoubleBarrier, Election, LeaderInfo, ReadWriteLock, Semaphore,
};
use corral_client::{Client, ClientConfig, CreateMode, ErrorCode, LockKind, LockLoss, LockOptions};
use corral_tests::proxy::{Mode, Proxy};
use corral_tests::TestServer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Waits (with child and exists watches, bounded) until the children of `path` satisfy
/// `want` (a missing node has no children), and returns them.
async fn children_until(
    client: &Client,
    path: &str,
    what: &str,
    want: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    bounded(what, async {
        loop {
            match client.get_children_watch(path).await {
                Ok((children, _, watcher)) => {
                    if want(&children) {
                        return children;
                    }
                    let _ = watcher.await;
                }
                Err(e) if e.is(ErrorCode::NoNode) => {
                    let (stat, watcher) = client.exists_watch(path).await.expect("exists");
                    if stat.is_none() {
                        if want(&[]) {
                            return Vec::new();
                        }
                        let _ = watcher.await;
                    }
                }
                Err(e) => panic!("get_children {path}: {e}"),
            }
        }
    })
    .await
}

/// A loopback proxy to one server that counts the frames the server sends to the client
/// and can hold them back, one at a time: to let other clients change the tree between
/// two reads of one call, at a point the test chooses.
#[derive(Debug)]
struct Gate {
    addr: SocketAddr,
    shared: Arc<GateShared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct GateShared {
    /// Frames from the server wait for a permit while this is set.
    closed: AtomicBool,
    permits: tokio::sync::Semaphore,
    /// Frames that reached the proxy from the server so far.
    arrived: tokio::sync::watch::Sender<u64>,
}

impl Gate {
    async fn start(target: &str) -> Gate {
        let target: SocketAddr = target.parse().expect("server address");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(GateShared {
            closed: AtomicBool::new(false),
            permits: tokio::sync::Semaphore::new(0),
            arrived: tokio::sync::watch::Sender::new(0),
        });
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = (client.set_nodelay(true), server.set_nodelay(true));
                        let (mut cr, mut cw) = client.into_split();
                        let (mut sr, mut sw) = server.into_split();
                        let up = tokio::io::copy(&mut cr, &mut sw);
                        let down = Gate::frames(&mut sr, &mut cw, &shared);
                        tokio::select! {
                            _ = up => {}
                            () = down => {}
                        }
                    });
                }
            }
        });
        Gate { addr, shared, task }
    }

    /// Forwards the server's frames (a big-endian `u32` length, then the payload),
    /// each only once the gate lets it through.
    async fn frames(
        from: &mut tokio::net::tcp::OwnedReadHalf,
        to: &mut tokio::net::tcp::OwnedWriteHalf,
        shared: &GateShared,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let mut len = [0u8; 4];
            if from.read_exact(&mut len).await.is_err() {
                return;
            }
            let Ok(size) = usize::try_from(u32::from_be_bytes(len)) else {
                return;
            };
            let mut frame = len.to_vec();
            frame.resize(4 + size, 0);
            if from.read_exact(&mut frame[4..]).await.is_err() {
                return;
            }
            // Decided before the frame is counted: a test that closes the gate once it
            // saw `n` frames arrive holds back the later ones, not the `n`th.
            let hold = shared.closed.load(Ordering::SeqCst);
            shared.arrived.send_modify(|n| *n += 1);
            if hold {
                match shared.permits.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
            }
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Frames that reached the gate from the server so far.
    fn arrived(&self) -> u64 {
        *self.shared.arrived.borrow()
    }

    /// Holds back every frame from now on, until [`step`](Self::step) or
    /// [`open`](Self::open).
    fn close(&self) {
        let left = self.shared.permits.available_permits();
        self.shared.permits.forget_permits(left);
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    /// Lets one held frame through.
    fn step(&self) {
        self.shared.permits.add_permits(1);
    }

    /// Lets every frame through, held ones included.
    fn open(&self) {
        self.shared.closed.store(false, Ordering::SeqCst);
        self.shared.permits.add_permits(1 << 20);
    }

    /// Waits (bounded) until `count` frames in all reached the gate from the server.
    async fn arrived_at_least(&self, count: u64, what: &str) {
        let mut arrived = self.shared.arrived.subscribe();
        bounded(what, arrived.wait_for(|n| *n >= count))
            .await
            .expect("the gate is alive");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The granted flags of a lock's queue, in queue order.
/// An election's observer run in a task of its own, so that it waits for the next change
/// all along and every report is taken as it comes. Dropped, it stops.
struct Observing {
    reports: tokio::sync::mpsc::UnboundedReceiver<Option<LeaderInfo>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observing {
    fn start(election: &Election) -> Observing {
        let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
        let mut leaders = election.observe();
        let task = tokio::spawn(async move {
            while let Some(report) = leaders.recv().await {
                let report = report.expect("no error");
                if reports_tx.send(report).is_err() {
                    return;
                }
            }
        });
        Observing { reports, task }
    }

    /// The next report, bounded.
    async fn next(&mut self, what: &str) -> Option<LeaderInfo> {
        bounded(what, self.reports.recv())
            .await
            .expect("the observer goes on")
    }
}

impl Drop for Observing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn granted(client: &Client, lock: &str) -> Vec<bool> {
    let locks = client.locks(lock).await.expect("locks");
    let state = locks
        .iter()
        .find(|l| l.lock == lock)
        .expect("the lock is listed");
    state.queue.iter().map(|e| e.granted).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_lock_shares_reads_excludes_writes_and_does_not_starve_writers() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let c = connect(&server.addr()).await;
    let w = connect(&server.addr()).await;
    let rw = |client: &Client| ReadWriteLock::new(client, "/rw");

    // Two readers at once.
    let r1 = rw(&a).read().acquire().await.expect("reader a");
    let r2 = rw(&b)
        .read()
        .try_acquire()
        .await
        .expect("try")
        .expect("a second reader shares the lock");
    assert_eq!((r1.kind(), r2.kind()), (LockKind::Read, LockKind::Read));
    // The writer is excluded while they read.
    assert!(rw(&w).write().try_acquire().await.expect("try").is_none());
    let writer = tokio::spawn({
        let lock = rw(&w).write();
        async move { lock.acquire().await }
    });
    children_until(&a, "/rw", "the writer to queue", |c| c.len() == 3).await;
    // Fair: a reader arriving after the waiting writer does not overtake it...
    assert!(rw(&c).read().try_acquire().await.expect("try").is_none());
    let late_reader = tokio::spawn({
        let lock = rw(&c).read();
        async move { lock.acquire().await }
    });
    children_until(&a, "/rw", "the late reader to queue", |c| c.len() == 4).await;
    assert_eq!(granted(&a, "/rw").await, [true, true, false, false]);
    // ...and the writer gets the lock as soon as the readers ahead of it are done.
    r1.release().await.expect("release");
    r2.release().await.expect("release");
    let wg = bounded("the writer", writer)
        .await
        .expect("task")
        .expect("writer");
    assert_eq!(wg.kind(), LockKind::Write);
    assert!(wg.token() > r2.token());
    assert_eq!(
        granted(&a, "/rw").await,
        [true, false],
        "the late reader waits"
    );
    // Mixing in an exclusive request is refused.
    let err = a
        .lock("/rw", LockOptions::default())
        .try_acquire()
        .await
        .expect_err("exclusive on a read-write lock");
    assert!(err.is(ErrorCode::BadArguments), "{err}");
    wg.release().await.expect("release");
    let lr = bounded("the late reader", late_reader)
        .await
        .expect("task")
        .expect("reader");
    lr.release().await.expect("release");

    // A stream of overlapping readers does not starve a writer.
    let stop = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(AtomicUsize::new(0));
    let rounds = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let client = connect(&server.addr()).await;
        let (stop, inside, rounds) = (stop.clone(), inside.clone(), rounds.clone());
        readers.push(tokio::spawn(async move {
            let lock = ReadWriteLock::new(&client, "/rw");
            while !stop.load(Ordering::SeqCst) {
                let guard = lock.read().acquire().await.expect("reader");
                inside.fetch_add(1, Ordering::SeqCst);
                client.get_data("/").await.expect("read while holding");
                rounds.fetch_add(1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.expect("release");
            }
        }));
    }
    // Let the stream get going: wait (on the queue, bounded) until readers hold it.
    children_until(&a, "/rw", "readers to hold the lock", |c| !c.is_empty()).await;
    for _ in 0..3 {
        let guard = rw(&w)
            .write()
            .acquire_timeout(WAIT)
            .await
            .expect("writer")
            .expect("a writer is not starved by a stream of readers");
        assert_eq!(
            inside.load(Ordering::SeqCst),
            0,
            "no reader inside with a writer"
        );
        guard.release().await.expect("release");
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        bounded("a reader to stop", reader)
            .await
            .expect("reader task");
    }
    assert!(rounds.load(Ordering::SeqCst) > 0);
}

/// As documented, unlike Curator's: not re-entrant, no downgrade. A read request of the
/// session that holds the write side waits behind its own write node (and is not
/// refused as a deadlock); once the write side is released it is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_lock_is_not_reentrant_and_a_writer_does_not_downgrade() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let rw = ReadWriteLock::new(&a, "/rw-self");
    let writer = rw.write().acquire().await.expect("writer");
    assert!(
        rw.read().try_acquire().await.expect("try").is_none(),
        "the writer's own read request would wait"
    );
    let reader = tokio::spawn({
        let read = rw.read();
        async move { read.acquire().await }
    });
    children_until(&a, "/rw-self", "the read request to queue", |c| {
        c.len() == 2
    })
    .await;
    assert_eq!(granted(&a, "/rw-self").await, [true, false]);
    assert!(
        !reader.is_finished(),
        "the read request waits for its own writer"
    );
    assert!(writer.release().await.expect("release"));
    let reader = bounded("the read grant", reader)
        .await
        .expect("task")
        .expect("reader");
    assert!(reader.release().await.expect("release"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_admits_at_most_its_permits() {
    const TASKS: usize = 4;
    const ROUNDS: usize = 4;
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let sem = Semaphore::new(&a, "/sem", 2);
    assert_eq!(sem.permits(), 2);
    assert_eq!(sem.in_use().await.expect("in use"), 0);
    let p1 = sem.acquire().await.expect("first permit");
    let p2 = Semaphore::new(&b, "/sem", 2)
        .try_acquire()
        .await
        .expect("try")
        .expect("a second permit is free");
    assert!(p1.is_held() && p2.is_held());
    assert_ne!(p1.token(), p2.token());
    assert_eq!(sem.in_use().await.expect("in use"), 2);
    assert!(
        sem.try_acquire().await.expect("try").is_none(),
        "both permits taken"
    );
    assert!(sem
        .acquire_timeout(Duration::from_millis(200))
        .await
        .expect("timeout is not an error")
        .is_none());
    assert!(p1.release().await.expect("release"));
    let p3 = sem
        .try_acquire()
        .await
        .expect("try")
        .expect("a permit came back");
    drop(p3); // given back in the background
    drop(p2);
    children_until(&a, "/sem", "the permits to be given back", |c| c.is_empty()).await;
    // Another number of permits on the same name is refused.
    let held = sem.acquire().await.expect("permit");
    let err = Semaphore::new(&b, "/sem", 3)
        .try_acquire()
        .await
        .expect_err("wrong permit count");
    assert!(err.is(ErrorCode::BadArguments), "{err}");
    held.release().await.expect("release");
    assert!(Semaphore::new(&a, "/sem0", 0).try_acquire().await.is_err());

    // Four tasks contend: never more than two inside at once.
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let client = connect(&server.addr()).await;
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let sem = Semaphore::new(&client, "/sem", 2);
            for _ in 0..ROUNDS {
                let permit = sem.acquire().await.expect("permit");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                assert!(now <= 2, "{now} holders of a 2-permit semaphore");
                // Some work with the permit: a fenced round trip.
                client
                    .multi(vec![permit.guard().check_op()])
                    .await
                    .expect("the permit is held");
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(permit.release().await.expect("release"));
            }
        }));
    }
    for task in tasks {
        bounded("a semaphore task", task).await.expect("task");
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "at most 2 at once: {most}");
}

/// The next leader an observer reports.
async fn next_leader(
    leaders: &mut corral_client::recipes::LeaderStream,
    what: &str,
) -> Option<LeaderInfo> {
    bounded(what, leaders.recv())
        .await
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_resign_proclaim_failover_and_observe() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let observer = connect(&server.addr()).await;
    let ea = Election::new(&a, "/election/svc", "a");
    let eb = Election::new(&b, "/election/svc", "b");
    let watching = Election::new(&observer, "/election/svc", "");
    let mut leaders = watching.observe();
    assert_eq!(next_leader(&mut leaders, "the first report").await, None);
    assert_eq!(watching.leader().await.expect("leader"), None);

    // The first candidate wins; the second waits and sees the first as leader.
    let la = ea.campaign().await.expect("a elected");
    assert!(la.is_leader());
    let seen = next_leader(&mut leaders, "a as leader")
        .await
        .expect("a leads");
    assert_eq!((seen.data.as_slice(), seen.token), (&b"a"[..], la.token()));
    assert_eq!(
        (seen.node.as_str(), seen.session),
        (la.node(), a.session_id())
    );
    let b_campaign = tokio::spawn({
        let eb = eb.clone();
        async move { eb.campaign().await }
    });
    children_until(&a, "/election/svc", "b to be a candidate", |c| c.len() == 2).await;
    let from_b = eb.leader().await.expect("leader").expect("a leads");
    assert_eq!(from_b, seen, "b observes a as the leader");
    assert!(!b_campaign.is_finished());

    // a resigns: b is elected.
    let a_lost = la.lost();
    assert!(la.resign().await.expect("resign"));
    assert_eq!(bounded("a's loss", a_lost).await, LockLoss::Released);
    let lb = bounded("b's election", b_campaign)
        .await
        .expect("task")
        .expect("b elected");
    assert!(lb.token() > la.token());
    let seen = next_leader(&mut leaders, "b as leader")
        .await
        .expect("b leads");
    assert_eq!((seen.data.as_slice(), seen.token), (&b"b"[..], lb.token()));

    // The leader proclaims new data; observers see it.
    lb.proclaim("b, v2").await.expect("proclaim");
    let seen = next_leader(&mut leaders, "b's new data")
        .await
        .expect("b leads");
    assert_eq!(
        (seen.data.as_slice(), seen.token),
        (&b"b, v2"[..], lb.token())
    );
    assert_eq!(
        watching.leader().await.expect("leader").map(|l| l.data),
        Some(b"b, v2".to_vec())
    );

    // a campaigns again and waits; b's session ends: failover to a.
    let a_campaign = tokio::spawn({
        let ea = ea.clone();
        async move { ea.campaign().await }
    });
    children_until(&a, "/election/svc", "a to be a candidate", |c| c.len() == 2).await;
    let b_lost = lb.lost();
    b.close().await.expect("close b's session");
    assert_eq!(bounded("b's loss", b_lost).await, LockLoss::SessionEnded);
    assert!(!lb.is_leader());
    let la2 = bounded("a's election", a_campaign)
        .await
        .expect("task")
        .expect("a elected after b's session ended");
    assert!(la2.token() > lb.token());
    let seen = next_leader(&mut leaders, "a as leader again")
        .await
        .expect("a leads");
    assert_eq!((seen.data.as_slice(), seen.token), (&b"a"[..], la2.token()));
    // A former leader cannot proclaim.
    assert!(lb.proclaim("stale").await.is_err(), "b no longer leads");

    // Nobody left: no leader.
    assert!(la2.resign().await.expect("resign"));
    assert_eq!(next_leader(&mut leaders, "no leader").await, None);
    assert_eq!(watching.leader().await.expect("leader"), None);
    // A timed campaign with nobody else around is elected at once.
    let lc = ea
        .campaign_timeout(WAIT)
        .await
        .expect("campaign")
        .expect("elected");
    let seen = next_leader(&mut leaders, "a once more")
        .await
        .expect("a leads");
    assert_eq!(seen.token, lc.token());
    drop(lc); // resigns in the background
    assert_eq!(next_leader(&mut leaders, "no leader again").await, None);
}

/// A zero timeout is a try: a campaign with nobody leading is elected and a free permit
/// is taken; behind a leader, or with every permit taken, it returns `None` and leaves no
/// queue node behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_timeout_campaign_or_permit_takes_what_is_free_and_queues_nothing() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;

    let ea = Election::new(&a, "/election/zero", "a");
    let eb = Election::new(&b, "/election/zero", "b");
    let la = ea
        .campaign_timeout(Duration::ZERO)
        .await
        .expect("campaign")
        .expect("elected with nobody else around");
    assert!(la.is_leader());
    assert!(eb
        .campaign_timeout(Duration::ZERO)
        .await
        .expect("campaign")
        .is_none());
    assert_eq!(
        b.get_children("/election/zero").await.expect("ls"),
        [corral_client::path::name(la.node())],
        "b is not left a candidate"
    );

    let sa = Semaphore::new(&a, "/sem-zero", 1);
    let sb = Semaphore::new(&b, "/sem-zero", 1);
    let permit = sa
        .acquire_timeout(Duration::ZERO)
        .await
        .expect("acquire")
        .expect("a free permit is taken");
    assert!(sb
        .acquire_timeout(Duration::ZERO)
        .await
        .expect("acquire")
        .is_none());
    assert_eq!(
        b.get_children("/sem-zero").await.expect("ls"),
        [corral_client::path::name(permit.node())],
        "b is not left waiting"
    );
    assert_eq!(b.lock_stats().timed_out, 2);
}

/// A timeout shorter than the round trip: the answer is honoured, whatever arrives after
/// the deadline. Through a gate that holds the answer back until the timeout has passed,
/// a campaign in an empty election is won; one behind a leader (answered `Queued`) is
/// withdrawn, leaving no candidate node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_answered_after_its_timeout_is_elected_if_granted_and_withdrawn_if_queued() {
    let server = TestServer::start(&[]);
    let gate = Gate::start(&server.addr()).await;
    // A long session: no pings through the gate while it holds frames back.
    let config = ClientConfig::new([gate.addr()]).with_session_ttl(Duration::from_secs(60));
    let slow = Client::connect(config).await.expect("connect");
    let other = connect(&server.addr()).await;
    let limit = Duration::from_millis(200);
    let slow_election = Election::new(&slow, "/election/rtt", "slow");
    // Campaigns with `limit`, its answer held at the gate until the deadline has passed.
    let campaign_late = async || {
        let before = gate.arrived();
        gate.close();
        let campaign = tokio::spawn({
            let election = slow_election.clone();
            async move { election.campaign_timeout(limit).await }
        });
        gate.arrived_at_least(before + 1, "the answer to the campaign")
            .await;
        // The request was sent after the deadline was set: it has passed now.
        tokio::time::sleep(limit).await;
        assert!(!campaign.is_finished(), "the campaign waits for its answer");
        gate.open();
        bounded("the campaign", campaign)
            .await
            .expect("task")
            .expect("campaign")
    };

    let elected = campaign_late()
        .await
        .expect("elected: the answer said granted");
    assert!(elected.is_leader());
    assert!(elected.resign().await.expect("resign"));

    let leader = Election::new(&other, "/election/rtt", "other")
        .campaign()
        .await
        .expect("other elected");
    assert!(campaign_late().await.is_none(), "queued behind a leader");
    children_until(&other, "/election/rtt", "the candidacy withdrawn", |c| {
        c == [corral_client::path::name(leader.node())]
    })
    .await;
    assert_eq!(slow.lock_stats().timed_out, 1);
}

/// A server that does not answer an acquire with a timeout costs the caller at most
/// `max(timeout, ACQUIRE_ANSWER_GRACE)`, not the client's `request_timeout`: the call
/// gives up with `Ok(None)`, and the answer that comes later (here: granted, the lock
/// was free) is withdrawn in the background, leaving no queue node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_whose_answer_does_not_come_gives_up_after_the_grace_and_leaves_nothing() {
    let server = TestServer::start(&[]);
    let gate = Gate::start(&server.addr()).await;
    // request_timeout far beyond the test's bound: giving up must come from the grace.
    let config = ClientConfig::new([gate.addr()])
        .with_session_ttl(Duration::from_secs(60))
        .with_request_timeout(Duration::from_secs(120));
    let slow = Client::connect(config).await.expect("connect");
    let other = connect(&server.addr()).await;
    let before = gate.arrived();
    gate.close();
    let acquire = tokio::spawn({
        let slow = slow.clone();
        async move {
            slow.lock("/locks/unanswered", LockOptions::default())
                .acquire_timeout(Duration::from_millis(100))
                .await
        }
    });
    gate.arrived_at_least(before + 1, "the answer to the lock request")
        .await;
    let outcome = bounded("the acquire to give up", acquire)
        .await
        .expect("task")
        .expect("no error: a timeout");
    assert!(outcome.is_none(), "the answer never reached the caller");
    assert_eq!(slow.lock_stats().timed_out, 1);
    gate.open();
    children_until(
        &other,
        "/locks/unanswered",
        "the late grant withdrawn",
        |c| c.is_empty(),
    )
    .await;
}

/// An election's directory is a container: when its last candidate leaves it goes, and
/// the next candidate's node, in a new directory, gets the path the last leader's had.
/// `leader()` and `observe()` read the queue and then the leader's node by path; if the
/// leader leaves and a new candidate is elected in between, the node at that path is the
/// new leader's, and must not be reported as the data of the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_observe_never_pair_a_leader_with_the_data_of_a_later_node_of_its_path() {
    let server = TestServer::start(&[]);
    let gate = Gate::start(&server.addr()).await;
    // A long session: no pings through the gate while it holds frames back.
    let config = ClientConfig::new([gate.addr()]).with_session_ttl(Duration::from_secs(60));
    let observer = Client::connect(config).await.expect("connect");
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let ea = Election::new(&a, "/election/reuse", "a");
    let eb = Election::new(&b, "/election/reuse", "b");
    let watching = Election::new(&observer, "/election/reuse", "");

    // leader(): a leads when the queue is read; before the leader's node is read, a
    // resigns and b is elected with a node of the same path.
    let la = ea.campaign().await.expect("a elected");
    let before = gate.arrived();
    gate.close();
    let asked = tokio::spawn({
        let watching = watching.clone();
        async move { watching.leader().await }
    });
    gate.arrived_at_least(before + 1, "the answer to the queue read")
        .await;
    assert!(la.resign().await.expect("resign"));
    let lb = eb.campaign().await.expect("b elected");
    assert_eq!(lb.node(), la.node(), "b's node has the path a's had");
    gate.open();
    let seen = bounded("leader()", asked)
        .await
        .expect("task")
        .expect("leader")
        .expect("b leads");
    assert_eq!(
        (seen.token, seen.session, seen.data.as_slice()),
        (lb.token(), b.session_id(), &b"b"[..]),
        "leader() reports b, with b's data"
    );

    // observe(): likewise, between its queue read and its read of the leader's node.
    let mut leaders = watching.observe();
    let before = gate.arrived();
    gate.close();
    let first = tokio::spawn(async move { leaders.recv().await });
    gate.arrived_at_least(before + 1, "the answer to the children read")
        .await;
    gate.step();
    gate.arrived_at_least(before + 2, "the answer to the queue read")
        .await;
    assert!(lb.resign().await.expect("resign"));
    let la = ea.campaign().await.expect("a elected again");
    assert_eq!(la.node(), lb.node(), "a's node has the path b's had");
    gate.open();
    let seen = bounded("the first report", first)
        .await
        .expect("task")
        .expect("the stream goes on")
        .expect("no error")
        .expect("a leads");
    assert_eq!(
        (seen.token, seen.session, seen.data.as_slice()),
        (la.token(), a.session_id(), &b"a"[..]),
        "observe() reports a, with a's data"
    );
}

/// A multi-lock (`lock_many`) that names an election's lock takes the election's queue
/// like a candidate, but its node there waits, first in the queue and not holding, until
/// every lock of its set can be granted: then it holds them all, with no node of the
/// election changing. Observers still report it as the leader once granted: when another
/// lock of its set is released, and when a lock-delay on another lock of its set ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_reports_a_multi_lock_granted_the_election_by_its_other_locks() {
    let server = TestServer::start(&[]);
    let holder = connect(&server.addr()).await;
    let grouper = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let observer = connect(&server.addr()).await;
    let name = "/election/mixed";
    let mut observing = Observing::start(&Election::new(&observer, name, ""));
    assert_eq!(observing.next("the first report").await, None);

    // Another lock of the set is held: the multi-lock's node waits first in the
    // election's queue, and b, a candidate, behind it.
    let other = holder
        .lock("/mixed/other", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    let group = tokio::spawn({
        let set = grouper.lock_many(
            [name, "/mixed/other"],
            LockOptions::default().with_data(b"group".to_vec()),
        );
        async move { set.acquire().await }
    });
    children_until(&b, name, "the multi-lock to queue", |c| c.len() == 1).await;
    let b_campaign = tokio::spawn({
        let eb = Election::new(&b, name, "b");
        async move { eb.campaign().await }
    });
    children_until(&b, name, "b to be a candidate", |c| c.len() == 2).await;
    assert_eq!(granted(&b, name).await, [false, false]);
    assert_eq!(
        Election::new(&b, name, "").leader().await.expect("leader"),
        None
    );

    // The other lock is released: the set is granted, and the observer sees it lead.
    assert!(other.release().await.expect("release"));
    let set = bounded("the multi-lock's grant", group)
        .await
        .expect("task")
        .expect("granted");
    let seen = observing
        .next("the multi-lock as leader")
        .await
        .expect("the multi-lock leads");
    assert_eq!(
        (seen.token, seen.session, seen.data.as_slice()),
        (
            set.token(name).expect("in the set"),
            grouper.session_id(),
            &b"group"[..]
        )
    );
    // Released, b is elected (its grant changes nothing either: the release does).
    assert!(set.release().await.expect("release"));
    let lb = bounded("b's election", b_campaign)
        .await
        .expect("task")
        .expect("b elected");
    let seen = observing.next("b as leader").await.expect("b leads");
    assert_eq!(seen.token, lb.token());
    assert!(lb.resign().await.expect("resign"));
    assert_eq!(observing.next("no leader").await, None);

    // The other lock's holder lets its lease expire, which starts that lock's
    // lock-delay: the set is granted when the delay ends, with no node changing then.
    let delayed = holder
        .lock(
            "/mixed/delayed",
            LockOptions::default()
                .with_ttl(Duration::from_secs(1))
                .with_renewal(corral_client::Renewal::Manual)
                .with_lock_delay(Duration::from_secs(1)),
        )
        .acquire()
        .await
        .expect("acquire");
    let group = tokio::spawn({
        let set = grouper.lock_many(
            [name, "/mixed/delayed"],
            LockOptions::default().with_data(b"group 2".to_vec()),
        );
        async move { set.acquire().await }
    });
    let lost = delayed.lost();
    let set = bounded("the multi-lock's grant after the delay", group)
        .await
        .expect("task")
        .expect("granted");
    assert_eq!(bounded("the expiry", lost).await, LockLoss::LeaseExpired);
    let seen = observing
        .next("the multi-lock as leader after the delay")
        .await
        .expect("the multi-lock leads");
    assert_eq!(
        (seen.token, seen.data.as_slice()),
        (set.token(name).expect("in the set"), &b"group 2"[..])
    );
}

/// The observer finds a waiting multi-lock's other locks with `GetLockGroup`, which
/// reads that group alone: with more locks than one frame can describe (`GetLocks` on
/// `/` refused), it still reports the multi-lock as the leader once its other lock is
/// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_finds_a_multi_locks_other_locks_among_more_than_a_frame_describes() {
    let server = TestServer::start(&["--max-data-bytes", "1000", "--max-frame-bytes", "8192"]);
    let holder = connect(&server.addr()).await;
    let grouper = connect(&server.addr()).await;
    let observer = connect(&server.addr()).await;
    let name = "/election/crowded";
    let names: Vec<String> = (0..200).map(|i| format!("/crowd/lock-{i:03}")).collect();
    let guards = futures::future::try_join_all(names.iter().map(|n| {
        let lock = holder.lock(n, LockOptions::default());
        async move { lock.acquire().await }
    }))
    .await
    .expect("acquire the crowd");
    let everything = observer
        .locks("/")
        .await
        .expect_err("too large for a frame");
    assert_eq!(
        everything.code(),
        Some(ErrorCode::LimitExceeded),
        "{everything}"
    );

    let mut observing = Observing::start(&Election::new(&observer, name, ""));
    assert_eq!(observing.next("the first report").await, None);
    let other = &names[117];
    let group = tokio::spawn({
        let set = grouper.lock_many(
            [name, other.as_str()],
            LockOptions::default().with_data(b"group".to_vec()),
        );
        async move { set.acquire().await }
    });
    let queued = children_until(&observer, name, "the multi-lock to queue", |c| c.len() == 1).await;
    let node = format!("{name}/{}", queued[0]);
    let described: Vec<String> = observer
        .lock_group(&node)
        .await
        .expect("its group")
        .into_iter()
        .map(|l| l.lock)
        .collect();
    assert_eq!(described, [name, other.as_str()]);

    // Its other lock is released: the set is granted, and the observer sees it lead.
    let mut guards = guards;
    assert!(guards.remove(117).release().await.expect("release"));
    let set = bounded("the multi-lock's grant", group)
        .await
        .expect("task")
        .expect("granted");
    let seen = observing
        .next("the multi-lock as leader")
        .await
        .expect("the multi-lock leads");
    assert_eq!(
        (seen.token, seen.data.as_slice()),
        (set.token(name).expect("in the set"), &b"group"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_session_cannot_be_renewed_loses_leadership_before_the_next_is_elected() {
    let server = TestServer::start(&[]);
    let target: SocketAddr = server.addr().parse().expect("server address");
    let proxy = Proxy::start(target).await.expect("proxy");
    let config = ClientConfig::new([proxy.addr().to_string()])
        .with_session_ttl(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_millis(300))
        .with_max_backoff(Duration::from_millis(100));
    let a = Client::connect(config).await.expect("connect");
    let b = connect(&server.addr()).await;
    let ttl = Duration::from_secs(1);
    let la = Election::new(&a, "/election/lease", "a")
        .with_options(
            LockOptions::default()
                .with_ttl(ttl)
                .with_lock_delay(Duration::from_secs(1)),
        )
        .campaign()
        .await
        .expect("a elected");
    let eb = Election::new(&b, "/election/lease", "b");
    let mut observing = Observing::start(&eb);
    let seen = observing.next("a as leader").await.expect("a leads");
    assert_eq!(seen.token, la.token());
    let b_campaign = tokio::spawn({
        let eb = eb.clone();
        async move {
            let leadership = eb.campaign().await;
            (tokio::time::Instant::now(), leadership)
        }
    });
    children_until(&b, "/election/lease", "b to be a candidate", |c| {
        c.len() == 2
    })
    .await;
    let a_lost = la.lost();
    proxy.set_mode(Mode::Blackhole);
    assert_eq!(
        bounded("a's loss", a_lost).await,
        LockLoss::DeadlinePassed,
        "renewals stopped getting through"
    );
    let lost_at = tokio::time::Instant::now();
    let (elected_at, lb) = bounded("b's election", b_campaign).await.expect("task");
    let lb = lb.expect("b elected after a's lease expired");
    assert!(elected_at >= lost_at, "a knew before b was elected");
    // Nobody leads during the lock-delay after a's expiry; b's grant at its end changes
    // no node, so the observer looks again when the delay ends and reports b.
    let mut seen = observing.next("the next report").await;
    if seen.is_none() {
        seen = observing.next("b as leader after the lock-delay").await;
    } else {
        println!("the observer missed the lock-delay (a slow machine?)");
    }
    let seen = seen.expect("b leads");
    assert_eq!((seen.data.as_slice(), seen.token), (&b"b"[..], lb.token()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_holds_waiters_until_removed() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let barrier = Barrier::new(&a, "/barriers/b1");
    // Not set: nobody waits.
    assert!(!barrier.is_set().await.expect("is set"));
    bounded("an unset barrier", barrier.wait_on_barrier())
        .await
        .expect("wait");
    barrier.set_barrier().await.expect("set");
    barrier
        .set_barrier()
        .await
        .expect("setting it again is fine");
    assert!(barrier.is_set().await.expect("is set"));
    assert!(!barrier
        .wait_on_barrier_timeout(Duration::from_millis(200))
        .await
        .expect("wait"));

    let removed = Arc::new(AtomicBool::new(false));
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let client = connect(&server.addr()).await;
        let removed = removed.clone();
        waiters.push(tokio::spawn(async move {
            Barrier::new(&client, "/barriers/b1")
                .wait_on_barrier()
                .await
                .expect("wait");
            assert!(removed.load(Ordering::SeqCst), "through only after removal");
        }));
    }
    // Some unrelated change to the node does not let anyone through.
    a.set_data("/barriers/b1", b"x".to_vec(), None)
        .await
        .expect("set data");
    let timed = Barrier::new(&a, "/barriers/b1")
        .wait_on_barrier_timeout(Duration::from_millis(200))
        .await
        .expect("wait");
    assert!(!timed, "still set");
    removed.store(true, Ordering::SeqCst);
    barrier.remove_barrier().await.expect("remove");
    barrier
        .remove_barrier()
        .await
        .expect("removing it again is fine");
    for waiter in waiters {
        bounded("a waiter to pass", waiter).await.expect("waiter");
    }
    assert!(barrier
        .wait_on_barrier_timeout(Duration::from_millis(200))
        .await
        .expect("wait"));
}

/// Removing a barrier lets its waiters through, even if it is set again before a waiter
/// got to look at the node again (its connection is slow, here held back by a proxy):
/// the waiter's watch saw the node deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_removed_and_set_again_at_once_lets_its_waiters_through() {
    let server = TestServer::start(&[]);
    let gate = Gate::start(&server.addr()).await;
    let config = ClientConfig::new([gate.addr()]).with_session_ttl(Duration::from_secs(60));
    let slow = Client::connect(config).await.expect("connect");
    let a = connect(&server.addr()).await;
    let barrier = Barrier::new(&a, "/barriers/again");
    barrier.set_barrier().await.expect("set");
    let before = gate.arrived();
    let waiter = tokio::spawn({
        let barrier = Barrier::new(&slow, "/barriers/again");
        async move { barrier.wait_on_barrier().await }
    });
    // The waiter's exists read (which leaves its watch) is answered: it waits.
    gate.arrived_at_least(before + 1, "the waiter's exists read")
        .await;
    gate.close();
    barrier.remove_barrier().await.expect("remove");
    gate.arrived_at_least(before + 2, "the waiter's watch event")
        .await;
    barrier.set_barrier().await.expect("set again");
    gate.open();
    bounded("the waiter to pass", waiter)
        .await
        .expect("task")
        .expect("wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_barrier_enters_and_leaves_together() {
    let server = TestServer::start(&[]);
    let watcher = connect(&server.addr()).await;
    let entered = Arc::new(AtomicUsize::new(0));
    let leaving = Arc::new(AtomicUsize::new(0));
    let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel();
    // Participant `id` enters, reports it, waits for its turn to leave, leaves.
    let participant = |id: &'static str, go_leave: tokio::sync::oneshot::Receiver<()>| {
        let addr = server.addr();
        let (entered, leaving) = (entered.clone(), leaving.clone());
        let entered_tx = entered_tx.clone();
        tokio::spawn(async move {
            let client = connect(&addr).await;
            let barrier = DoubleBarrier::new(&client, "/db", 3).with_id(id);
            barrier.enter().await.expect("enter");
            entered.fetch_add(1, Ordering::SeqCst);
            entered_tx.send(id).expect("the test listens");
            go_leave.await.expect("told to leave");
            leaving.fetch_add(1, Ordering::SeqCst);
            barrier.leave().await.expect("leave");
            assert_eq!(leaving.load(Ordering::SeqCst), 3, "left only when all left");
            let left: Vec<String> = client
                .get_children("/db")
                .await
                .expect("children")
                .into_iter()
                .filter(|c| c != "ready")
                .collect();
            assert!(left.is_empty(), "nobody is left: {left:?}");
            client.close().await.expect("close");
        })
    };
    let (leave0, go0) = tokio::sync::oneshot::channel();
    let (leave1, go1) = tokio::sync::oneshot::channel();
    let (leave2, go2) = tokio::sync::oneshot::channel();
    let p1 = participant("p1", go1);
    let p2 = participant("p2", go2);
    children_until(&watcher, "/db", "two participants to enter", |c| {
        c.iter().filter(|n| *n != "ready").count() == 2
    })
    .await;
    assert_eq!(
        entered.load(Ordering::SeqCst),
        0,
        "two of three cannot enter"
    );
    assert!(watcher.exists("/db/ready").await.expect("exists").is_none());
    let p0 = participant("p0", go0);
    children_until(&watcher, "/db", "the group to be complete", |c| {
        c.iter().any(|n| n == "ready")
    })
    .await;
    // Everyone enters (each reports it before waiting for its turn to leave).
    for _ in 0..3 {
        bounded("everyone to enter", entered_rx.recv())
            .await
            .expect("a participant entered");
    }
    assert_eq!(entered.load(Ordering::SeqCst), 3);

    // p1 and p2 leave; p0, the lowest, has not: they wait for it.
    leave1.send(()).expect("p1 listens");
    leave2.send(()).expect("p2 listens");
    children_until(&watcher, "/db", "p1 and p2 to delete their nodes", |c| {
        let mut people: Vec<&String> = c.iter().filter(|n| *n != "ready").collect();
        people.sort();
        people == ["p0"]
    })
    .await;
    assert!(
        !p1.is_finished() && !p2.is_finished(),
        "p0 has not left yet"
    );
    leave0.send(()).expect("p0 listens");
    for (name, p) in [("p0", p0), ("p1", p1), ("p2", p2)] {
        bounded(name, p).await.expect("participant");
    }
    children_until(&watcher, "/db", "the barrier to be clean", |c| c.is_empty()).await;

    // Alone, an enter with a timeout gives up and withdraws.
    let lonely = DoubleBarrier::new(&watcher, "/db", 2);
    assert!(!lonely
        .enter_timeout(Duration::from_millis(300))
        .await
        .expect("enter"));
    assert!(watcher
        .exists(&lonely.node())
        .await
        .expect("exists")
        .is_none());
    // A participant with a node of another's making is still fine to leave.
    watcher
        .create("/db/other", Vec::new(), CreateMode::Ephemeral)
        .await
        .expect("create");
    let other = DoubleBarrier::new(&watcher, "/db", 1).with_id("other");
    assert!(other.leave_timeout(WAIT).await.expect("leave"));
    assert!(watcher.exists("/db/other").await.expect("exists").is_none());
}
