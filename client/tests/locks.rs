//! The lock API against the scripted fake server (see `common/`): what the client sends
//! and how it treats the answers when acquiring, giving up, renewing and releasing,
//! including when the server is slow, gone, or answers with an error.
//!
//! Every wait is bounded; nothing sleeps to synchronise.

mod common;

use common::{bounded, granted, recv_while, FakeServer, SESSION};
use corral_client::{Client, ErrorCode, ErrorInfo, LockGuard, LockOptions};
use corral_protocol::{LockEntry, LockKind, LockState, LockedNode, Op, OpResult};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn locked(node: &str, token: u64) -> OpResult {
    OpResult::Locked {
        node: node.into(),
        token,
    }
}

/// `client` acquires `/l`, which the server grants at once: `/l/x-0000000001`, token 2.
async fn held(client: &Client, conn: &mut common::Conn) -> LockGuard {
    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move { client.lock("/l", LockOptions::default()).acquire().await }
    });
    let lock = recv_while(conn, &mut acquire).await;
    conn.reply(lock.xid, 2, Ok(locked("/l/x-0000000001", 2)))
        .await;
    bounded("acquire", acquire)
        .await
        .expect("join")
        .expect("acquire")
}

/// A timeout too large to add to the clock (`Duration::MAX`, a common way to say "no
/// timeout") means no deadline: the acquire waits for its grant instead of panicking.
#[tokio::test]
async fn acquire_timeout_of_duration_max_waits_without_a_deadline() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;

    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .lock("/l", LockOptions::default())
                .acquire_timeout(Duration::MAX)
                .await
        }
    });
    let lock = recv_while(&mut conn, &mut acquire).await;
    assert!(matches!(lock.op, Op::Lock(_)), "{:?}", lock.op);
    conn.reply(lock.xid, 2, Ok(locked("/l/x-0000000001", 2)))
        .await;
    let guard = bounded("acquire_timeout", acquire)
        .await
        .expect("join")
        .expect("acquire")
        .expect("granted");
    assert_eq!(guard.token(), 2);

    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .lock_many(["/a", "/b"], LockOptions::default())
                .acquire_timeout(Duration::MAX)
                .await
        }
    });
    let lock = recv_while(&mut conn, &mut acquire).await;
    assert!(matches!(lock.op, Op::LockMany(_)), "{:?}", lock.op);
    let nodes = ["/a", "/b"]
        .iter()
        .map(|lock| LockedNode {
            lock: lock.to_string(),
            node: format!("{lock}/x-0000000000"),
            token: 3,
        })
        .collect();
    conn.reply(
        lock.xid,
        3,
        Ok(OpResult::MultiLocked {
            granted: true,
            nodes,
        }),
    )
    .await;
    let guard = bounded("lock_many acquire_timeout", acquire)
        .await
        .expect("join")
        .expect("acquire")
        .expect("granted");
    assert_eq!(
        guard.tokens(),
        vec![("/a".to_string(), 3), ("/b".to_string(), 3)]
    );
}

fn queued(node: &str, token: u64) -> OpResult {
    OpResult::Queued {
        node: node.into(),
        token,
    }
}

/// Spawns `acquire_timeout(timeout)` of the exclusive lock `/l`.
fn spawn_acquire_timeout(
    client: &Client,
    timeout: Duration,
) -> JoinHandle<corral_client::Result<Option<LockGuard>>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .lock("/l", LockOptions::default())
            .acquire_timeout(timeout)
            .await
    })
}

/// Spawns `acquire` of the exclusive lock `/l` held under a dedicated lease
/// ([`LockOptions::with_ttl`], `LEASE_TTL_MS`).
fn spawn_acquire_with_ttl(client: &Client) -> JoinHandle<corral_client::Result<LockGuard>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .lock(
                "/l",
                LockOptions::default().with_ttl(Duration::from_millis(LEASE_TTL_MS)),
            )
            .acquire()
            .await
    })
}

/// How much later than its timeout a give-up may return on a loaded machine; far below
/// the session TTL and request timeout the give-up must not wait for.
const SLACK: Duration = Duration::from_millis(1_000);

/// `acquire_timeout(t)` gives up after `t` even when the server cannot be reached: it
/// does not wait for its withdrawal (a `Release`, which could not be sent until a
/// reconnect or the end of the session's lease) but hands it to the background, which
/// sends it once the session is resumed.
#[tokio::test]
async fn acquire_timeout_returns_at_its_deadline_while_disconnected_and_leaves_the_queue_later() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(6_000).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let mut acquire = spawn_acquire_timeout(&client, timeout);
    let lock = recv_while(&mut conn, &mut acquire).await;
    assert!(matches!(lock.op, Op::Lock(_)), "{:?}", lock.op);
    conn.reply(lock.xid, 2, Ok(queued("/l/x-0000000001", 2)))
        .await;
    // The connection drops while the request waits; the server answers no handshake.
    drop(conn);
    let outcome = bounded("acquire_timeout", acquire).await.expect("join");
    let took = started.elapsed();
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
    assert!(
        took < timeout + SLACK,
        "acquire_timeout({timeout:?}) returned after {took:?}"
    );
    assert_eq!(client.lock_stats().timed_out, 1);

    // Once the session is resumed the queue node is released.
    let (mut conn, _) = server.accept(granted(6_000, 2, lock.xid + 1)).await;
    loop {
        let request = conn.recv().await;
        match request.op {
            Op::GetLocks { .. } => {
                conn.reply(request.xid, 2, Ok(OpResult::Locks(Vec::new())))
                    .await
            }
            Op::Release { node, token } => {
                assert_eq!((node.as_str(), token), ("/l/x-0000000001", 2));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The same with a connected but slow server (a leader election, a stalled disk):
/// `acquire_timeout(t)` does not wait for the answer to its withdrawal.
#[tokio::test]
async fn acquire_timeout_returns_at_its_deadline_when_the_server_is_slow_to_answer_the_withdrawal()
{
    let server = FakeServer::start().await;
    let config = server.config().with_request_timeout(Duration::from_secs(4));
    let (client, mut conn) = server.connect_with(config, 10_000).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let mut acquire = spawn_acquire_timeout(&client, timeout);
    let lock = recv_while(&mut conn, &mut acquire).await;
    conn.reply(lock.xid, 2, Ok(queued("/l/x-0000000001", 2)))
        .await;
    // The withdrawal arrives; the server does not answer it yet.
    let release = conn.recv().await;
    assert_eq!(
        release.op,
        Op::Release {
            node: "/l/x-0000000001".into(),
            token: 2
        }
    );
    let outcome = bounded("acquire_timeout", acquire).await.expect("join");
    let took = started.elapsed();
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
    assert!(
        took < timeout + SLACK,
        "acquire_timeout({timeout:?}) returned after {took:?}"
    );
    conn.reply(release.xid, 3, Ok(OpResult::Unlocked { released: true }))
        .await;
}

/// `LockGuard::renew` of a lock held under the session pings, and that ping counts as a
/// renewal of the session like the background keepalive's: the safe deadline it returns
/// is measured from when the ping was sent (not from the last keepalive, nor from when
/// the answer arrived), minus the margin.
#[tokio::test]
async fn renew_of_a_session_held_lock_returns_a_deadline_measured_from_its_ping() {
    let server = FakeServer::start().await;
    // The background keepalive would come after 10 s.
    let ttl = Duration::from_secs(30);
    let margin = ttl / 10;
    let (client, mut conn) = server.connect(30_000).await;
    let guard = held(&client, &mut conn).await;
    let before = guard.safe_deadline();

    let called = Instant::now();
    let renew = tokio::spawn(async move {
        let at = guard.renew().await;
        (guard, at)
    });
    let ping = conn.recv_any().await;
    assert_eq!(ping.op, Op::Ping);
    // The ping was sent by now.
    let received = Instant::now();
    conn.reply(ping.xid, 2, Ok(OpResult::Pong)).await;
    let (guard, at) = bounded("renew", renew).await.expect("join");
    let at = at.expect("renew");
    assert!(
        at >= called + ttl - margin,
        "renew() returned a safe deadline {:?} before the one its ping earned",
        (called + ttl - margin).saturating_duration_since(at)
    );
    assert!(
        at <= received + ttl - margin,
        "renew() measured the deadline from after its ping was sent"
    );
    assert!(at > before);
    assert_eq!(guard.safe_deadline(), at);
    assert_eq!(client.session_safe_deadline(), at);
}

fn unavailable() -> ErrorInfo {
    ErrorInfo::new(
        ErrorCode::Unavailable,
        "100000 proposals are waiting to be applied (max_forwarded_entries)",
    )
}

/// A dropped guard's release, answered with a transient error (`Unavailable`: the
/// server's disk failed, or too many proposals wait), is sent again, after a pause, until
/// it succeeds: it used to be only logged, leaving the node held for the session's life.
#[tokio::test]
async fn a_dropped_guards_release_is_sent_again_after_a_transient_error_until_it_succeeds() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let guard = held(&client, &mut conn).await;
    drop(guard);
    let release = Op::Release {
        node: "/l/x-0000000001".into(),
        token: 2,
    };
    for attempt in 0..3 {
        let request = conn.recv().await;
        assert_eq!(request.op, release, "attempt {attempt}");
        conn.reply(request.xid, 3, Err(unavailable())).await;
    }
    let request = conn.recv().await;
    assert_eq!(request.op, release);
    conn.reply(request.xid, 4, Ok(OpResult::Unlocked { released: true }))
        .await;
    drop(client);
}

/// The leases' TTL in these tests: far beyond any wait of theirs, so a lease that goes
/// away was revoked, not expired.
const LEASE_TTL_MS: u64 = 600_000;

/// `client` is granted lease `0x55` with [`LEASE_TTL_MS`].
async fn granted_lease(client: &Client, conn: &mut common::Conn) -> corral_client::Lease {
    let mut grant = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .grant_lease(Duration::from_millis(LEASE_TTL_MS))
                .await
        }
    });
    let request = recv_while(conn, &mut grant).await;
    assert_eq!(
        request.op,
        Op::GrantLease {
            ttl_ms: LEASE_TTL_MS
        }
    );
    let lease = OpResult::Lease {
        lease_id: 0x55,
        ttl_ms: LEASE_TTL_MS,
    };
    conn.reply(request.xid, 2, Ok(lease)).await;
    bounded("grant_lease", grant)
        .await
        .expect("join")
        .expect("grant_lease")
}

/// A dropped lease's revoke, answered with transient errors (`Unavailable`,
/// `OperationTimeout`), is sent again until the server applies it, long before the
/// lease's TTL: it used to be only logged, and the lease (with its locks) lived on
/// until its TTL.
#[tokio::test]
async fn a_dropped_leases_revoke_is_sent_again_after_a_transient_error_until_it_succeeds() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let lease = granted_lease(&client, &mut conn).await;
    assert_eq!(lease.id(), 0x55);
    drop(lease);
    let revoke = Op::RevokeLease { lease_id: 0x55 };
    let timeout = ErrorInfo::new(ErrorCode::OperationTimeout, "not applied in time");
    for (attempt, error) in [unavailable(), timeout, unavailable()]
        .into_iter()
        .enumerate()
    {
        let request = conn.recv().await;
        assert_eq!(request.op, revoke, "attempt {attempt}");
        conn.reply(request.xid, 3, Err(error)).await;
    }
    // Applied: the lease is gone on the server now, not at its TTL.
    let request = conn.recv().await;
    assert_eq!(request.op, revoke);
    conn.reply(request.xid, 4, Ok(OpResult::Unlocked { released: true }))
        .await;
    drop(client);
}

/// A lease dropped while the client is disconnected, and still unsent when the
/// session's lease runs out client side (calls then fail with `ConnectionLoss`): its
/// revoke is kept, and sent once the session is resumed (it used to be failed and
/// forgotten).
#[tokio::test]
async fn a_leases_revoke_survives_a_lapse_and_is_sent_once_the_session_is_resumed() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(600).await;
    let lease = granted_lease(&client, &mut conn).await;
    // The connection drops; the server answers no handshake for now.
    drop(conn);
    drop(lease);
    // Calls go in order: once this one fails fast, the session has lapsed and the
    // revoke handed over before it has been dealt with.
    let lapsed = bounded("a call while lapsed", client.exists("/x")).await;
    assert!(
        matches!(lapsed, Err(corral_client::Error::ConnectionLoss)),
        "{lapsed:?}"
    );
    let (mut conn, _) = server.accept(granted(600, 3, 100)).await;
    let request = conn.recv().await;
    assert_eq!(request.op, Op::RevokeLease { lease_id: 0x55 });
    conn.reply(request.xid, 4, Ok(OpResult::Unlocked { released: true }))
        .await;
    drop(client);
}

/// A guard holding its lock under a dedicated lease ([`LockOptions::with_ttl`]) is
/// dropped: the release and the lease's revoke, both answered with a transient error,
/// are both sent again until they succeed.
#[tokio::test]
async fn a_dropped_guards_release_and_dedicated_lease_revoke_are_both_sent_again() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut acquire = spawn_acquire_with_ttl(&client);
    let mut lease_id = None;
    loop {
        let request = recv_while(&mut conn, &mut acquire).await;
        match request.op {
            Op::GrantLease { .. } => {
                lease_id = Some(0x66);
                let lease = OpResult::Lease {
                    lease_id: 0x66,
                    ttl_ms: LEASE_TTL_MS,
                };
                conn.reply(request.xid, 2, Ok(lease)).await;
            }
            Op::Lock(l) => {
                assert_eq!(l.lease, lease_id, "held under its dedicated lease");
                conn.reply(request.xid, 3, Ok(locked("/l/x-0000000001", 3)))
                    .await;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let guard = bounded("acquire", acquire)
        .await
        .expect("join")
        .expect("acquire");
    drop(guard);
    let release = Op::Release {
        node: "/l/x-0000000001".into(),
        token: 3,
    };
    let revoke = Op::RevokeLease { lease_id: 0x66 };
    let (mut releases, mut revokes) = (0, 0);
    while releases < 2 || revokes < 2 {
        let request = conn.recv().await;
        let count = if request.op == release {
            &mut releases
        } else if request.op == revoke {
            &mut revokes
        } else {
            panic!("unexpected {:?}", request.op)
        };
        *count += 1;
        let answer = match (*count, &request.op) {
            (1, _) => Err(unavailable()),
            (2, _) => Ok(OpResult::Unlocked { released: true }),
            (n, op) => panic!("{op:?} sent a {n}th time after it succeeded"),
        };
        conn.reply(request.xid, 4, answer).await;
    }
    drop(client);
}

/// A lock answer that arrives after its caller gave up is released by the connection
/// task; when that release fails with a transient error, the node stays tracked, so
/// the re-read after a reconnect covers its lock and releases it (the node used to be
/// dropped from tracking at once: nothing looked at it again for the session's life).
#[tokio::test]
async fn an_unwanted_lock_answers_node_whose_release_failed_is_swept_after_a_reconnect() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let acquire = spawn_acquire_timeout(&client, Duration::from_millis(200));
    let lock = conn.recv().await;
    assert!(matches!(lock.op, Op::Lock(_)), "{:?}", lock.op);
    // The answer comes after the caller gave up.
    let outcome = bounded("acquire_timeout", acquire).await.expect("join");
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
    conn.reply(lock.xid, 2, Ok(locked("/l/x-0000000001", 2)))
        .await;
    let release = Op::Release {
        node: "/l/x-0000000001".into(),
        token: 2,
    };
    let request = conn.recv().await;
    assert_eq!(request.op, release);
    conn.reply(request.xid, 3, Err(unavailable())).await;

    // A reconnect, before or after the release is sent again.
    drop(conn);
    let (mut conn, _) = server.accept(granted(10_000, 3, request.xid + 1)).await;
    let ours = LockEntry {
        node: "/l/x-0000000001".into(),
        kind: LockKind::Exclusive,
        session: SESSION,
        lease: SESSION,
        token: 2,
        granted: true,
    };
    let (mut reread, mut released) = (false, false);
    while !(reread && released) {
        let request = conn.recv().await;
        match request.op {
            Op::GetLocks { path } if path == "/l" => {
                reread = true;
                let queue = if released {
                    Vec::new()
                } else {
                    vec![ours.clone()]
                };
                let state = LockState {
                    lock: "/l".into(),
                    lock_delay_ms: 0,
                    delayed_until_ms: 0,
                    queue,
                };
                conn.reply(request.xid, 4, Ok(OpResult::Locks(vec![state])))
                    .await;
            }
            op if op == release => {
                released = true;
                conn.reply(request.xid, 5, Ok(OpResult::Unlocked { released: true }))
                    .await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(client);
}

/// Two concurrent `release()` calls of one guard: the server releases the node for the
/// one it applies first (`released: true`), and that call says so, whichever of the two
/// calls finishes first (with tasks on several threads, either may).
#[tokio::test]
async fn concurrent_releases_of_one_guard_report_the_release_the_server_made() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let guard = held(&client, &mut conn).await;

    let first = guard.release();
    let second = guard.release();
    tokio::pin!(first, second);
    // One poll each hands their requests to the connection, in this order.
    assert!(futures::poll!(&mut first).is_pending());
    assert!(futures::poll!(&mut second).is_pending());
    let release = Op::Release {
        node: "/l/x-0000000001".into(),
        token: 2,
    };
    let a = conn.recv().await;
    let b = conn.recv().await;
    assert_eq!((&a.op, &b.op), (&release, &release));
    assert!(a.xid < b.xid);
    conn.reply(a.xid, 3, Ok(OpResult::Unlocked { released: true }))
        .await;
    conn.reply(b.xid, 4, Ok(OpResult::Unlocked { released: false }))
        .await;
    // The second call finishes first.
    let second = bounded("the second release", second)
        .await
        .expect("release");
    let first = bounded("the first release", first).await.expect("release");
    assert_eq!((first, second), (true, false));
    assert_eq!(client.lock_stats().released, 1, "{:?}", client.lock_stats());
    assert!(!guard.is_held());
}

/// The next request other than a ping must be the revoke of `lease_id`; answered.
async fn expect_revoke(conn: &mut common::Conn, lease_id: u64, zxid: u64) {
    let request = conn.recv().await;
    assert_eq!(request.op, Op::RevokeLease { lease_id });
    conn.reply(
        request.xid,
        zxid,
        Ok(OpResult::Unlocked { released: false }),
    )
    .await;
}

fn lease(lease_id: u64) -> OpResult {
    OpResult::Lease {
        lease_id,
        ttl_ms: LEASE_TTL_MS,
    }
}

/// A `grant_lease` future dropped while its `GrantLease` waits for its answer (a
/// `select!` that took another branch): the lease the server grants nonetheless is
/// revoked in the background. It used to be granted to nobody, never renewed nor
/// revoked, living until its TTL.
#[tokio::test]
async fn a_lease_granted_after_its_caller_left_is_revoked() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut grant = Box::pin(client.grant_lease(Duration::from_millis(LEASE_TTL_MS)));
    // One poll hands the request to the connection.
    assert!(futures::poll!(&mut grant).is_pending());
    let request = conn.recv().await;
    assert_eq!(
        request.op,
        Op::GrantLease {
            ttl_ms: LEASE_TTL_MS
        }
    );
    drop(grant);
    conn.reply(request.xid, 2, Ok(lease(0x77))).await;
    expect_revoke(&mut conn, 0x77, 3).await;
    drop(client);
}

/// The same when the answer reached the call but the call was dropped before reading
/// it: the dropped call revokes the lease.
#[tokio::test]
async fn a_lease_grant_dropped_unread_is_revoked() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut grant = Box::pin(client.grant_lease(Duration::from_millis(LEASE_TTL_MS)));
    assert!(futures::poll!(&mut grant).is_pending());
    let request = conn.recv().await;
    assert!(matches!(request.op, Op::GrantLease { .. }), "{request:?}");
    conn.reply(request.xid, 2, Ok(lease(0x78))).await;
    // Answers are handed over in order: once this one is read, the grant's answer
    // waits in the call, unread.
    let mut marker = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/marker").await }
    });
    let exists = recv_while(&mut conn, &mut marker).await;
    assert!(matches!(exists.op, Op::Exists { .. }), "{exists:?}");
    conn.reply(exists.xid, 2, Ok(OpResult::Exists(None))).await;
    bounded("exists", marker)
        .await
        .expect("join")
        .expect("exists");
    drop(grant);
    expect_revoke(&mut conn, 0x78, 3).await;
    drop(client);
}

/// An `acquire` of a lock with a `ttl` aborted while its dedicated lease's grant waits
/// for its answer: that lease is revoked, and no lock request is sent.
#[tokio::test]
async fn a_dedicated_lease_granted_after_the_acquire_was_aborted_is_revoked() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut acquire = spawn_acquire_with_ttl(&client);
    let request = recv_while(&mut conn, &mut acquire).await;
    assert!(matches!(request.op, Op::GrantLease { .. }), "{request:?}");
    acquire.abort();
    let aborted = bounded("the aborted acquire", acquire).await;
    assert!(aborted.is_err_and(|e| e.is_cancelled()));
    conn.reply(request.xid, 2, Ok(lease(0x79))).await;
    expect_revoke(&mut conn, 0x79, 3).await;
    drop(client);
}

/// A `GrantLease` sent, then lost with its connection, whose caller left meanwhile: it
/// is sent again after the reconnect (it may have been granted: the server answers a
/// resent xid with the same lease), and the lease it answers with is revoked. It used
/// to be dropped as abandoned, leaving a lease that may have been granted to live until
/// its TTL.
#[tokio::test]
async fn a_lease_grant_lost_to_a_reconnect_after_its_caller_left_is_resent_and_revoked() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut grant = Box::pin(client.grant_lease(Duration::from_millis(LEASE_TTL_MS)));
    assert!(futures::poll!(&mut grant).is_pending());
    let request = conn.recv().await;
    assert!(matches!(request.op, Op::GrantLease { .. }), "{request:?}");
    drop(grant);
    drop(conn);
    let (mut conn, _) = server.accept(granted(10_000, 2, request.xid + 1)).await;
    let resent = conn.recv().await;
    assert_eq!(resent, request, "the grant is resent with its xid");
    conn.reply(resent.xid, 3, Ok(lease(0x7a))).await;
    expect_revoke(&mut conn, 0x7a, 4).await;
    drop(client);
}

/// A `grant_lease` dropped before its request could be sent (the client is
/// reconnecting) is not sent at all: no lease to revoke.
#[tokio::test]
async fn a_lease_grant_dropped_before_it_was_sent_is_not_sent() {
    use futures::SinkExt;
    let server = FakeServer::start().await;
    let (client, conn) = server.connect(10_000).await;
    drop(conn);
    // The client is reconnecting: it takes no calls until the handshake is answered.
    let (mut framed, _) = server.hello().await;
    let mut grant = Box::pin(client.grant_lease(Duration::from_millis(LEASE_TTL_MS)));
    assert!(futures::poll!(&mut grant).is_pending());
    drop(grant);
    // Calls go in order: this one comes next.
    let mut marker = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/marker").await }
    });
    bounded(
        "grant",
        framed.send(corral_protocol::HelloReply::Accepted(granted(10_000, 2, 1))),
    )
    .await
    .expect("send grant");
    let mut conn = common::Conn {
        framed: framed.map_codec(|c| c.retype()),
    };
    let request = recv_while(&mut conn, &mut marker).await;
    assert!(matches!(request.op, Op::Exists { .. }), "{request:?}");
    conn.reply(request.xid, 2, Ok(OpResult::Exists(None))).await;
    bounded("exists", marker)
        .await
        .expect("join")
        .expect("exists");
    drop(client);
}

/// `Lease::revoke` given up before its answer (an outer `timeout`, a `select!` that took
/// another branch) while the client is reconnecting: the revoke still reaches the server
/// once the session is resumed. It used to be dropped as a call nobody waits for, while
/// the lease already counted as revoked client side (so neither its drop nor a second
/// `revoke()` sent it): the lease and its locks lived on until its TTL.
#[tokio::test]
async fn a_lease_revoke_given_up_before_its_answer_still_reaches_the_server() {
    use corral_protocol::HelloReply;
    use futures::SinkExt;
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let lease = granted_lease(&client, &mut conn).await;
    // The connection drops: the client is reconnecting, and takes no calls until the
    // handshake is answered.
    drop(conn);
    let (mut framed, _) = server.hello().await;
    let mut revoke = Box::pin(lease.revoke());
    // One poll hands the request to the client.
    assert!(futures::poll!(&mut revoke).is_pending());
    drop(revoke);
    assert!(lease.is_lost(), "a revoked lease counts as lost at once");
    // Calls go in order: this one comes after whatever the revoke left behind.
    let mut marker = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/marker").await }
    });
    bounded(
        "grant",
        framed.send(HelloReply::Accepted(granted(10_000, 2, 100))),
    )
    .await
    .expect("send grant");
    let mut conn = common::Conn {
        framed: framed.map_codec(|c| c.retype()),
    };
    let request = recv_while(&mut conn, &mut marker).await;
    assert_eq!(
        request.op,
        Op::RevokeLease { lease_id: 0x55 },
        "the revoke was dropped with its caller"
    );
    conn.reply(request.xid, 3, Ok(OpResult::Unlocked { released: true }))
        .await;
    let request = recv_while(&mut conn, &mut marker).await;
    assert!(matches!(request.op, Op::Exists { .. }), "{request:?}");
    conn.reply(request.xid, 3, Ok(OpResult::Exists(None))).await;
    bounded("exists", marker)
        .await
        .expect("join")
        .expect("exists");
    drop(lease);
    drop(client);
}

/// Once a guard is lost (here a `LockLost` pushed by the server) its safe deadline is
/// no longer in the future: code that bounds its work by `safe_deadline()` stops. It
/// used to go on naming the session's deadline, seconds ahead, for a lock someone else
/// may hold now. The same for a revoked lease's `safe_deadline()`.
#[tokio::test]
async fn a_lost_guards_safe_deadline_has_passed() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let guard = held(&client, &mut conn).await;
    assert!(guard.safe_deadline() > Instant::now());
    conn.send(corral_protocol::ServerMessage::LockLost(
        corral_protocol::LockEvent {
            lock: "/l".into(),
            node: "/l/x-0000000001".into(),
            token: 2,
            zxid: 5,
        },
    ))
    .await;
    let loss = bounded("the loss", guard.lost()).await;
    assert_eq!(loss, corral_client::LockLoss::LeaseExpired);
    assert!(!guard.is_held());
    let left = guard
        .safe_deadline()
        .saturating_duration_since(Instant::now());
    assert_eq!(
        left,
        Duration::ZERO,
        "a lost lock is 'held' for {left:?} more"
    );

    let lease = granted_lease(&client, &mut conn).await;
    assert!(lease.safe_deadline() > Instant::now());
    let mut revoke = tokio::spawn({
        let lease = lease.clone();
        async move { lease.revoke().await }
    });
    let request = recv_while(&mut conn, &mut revoke).await;
    assert_eq!(request.op, Op::RevokeLease { lease_id: 0x55 });
    conn.reply(request.xid, 6, Ok(OpResult::Unlocked { released: true }))
        .await;
    assert!(bounded("revoke", revoke)
        .await
        .expect("join")
        .expect("revoke"));
    let left = lease
        .safe_deadline()
        .saturating_duration_since(Instant::now());
    assert_eq!(
        left,
        Duration::ZERO,
        "a revoked lease is alive {left:?} more"
    );

    // A multi-lock's guard, released.
    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .lock_many(["/a", "/b"], LockOptions::default())
                .acquire()
                .await
        }
    });
    let request = recv_while(&mut conn, &mut acquire).await;
    let nodes = ["/a", "/b"]
        .iter()
        .map(|lock| LockedNode {
            lock: lock.to_string(),
            node: format!("{lock}/x-0000000000"),
            token: 7,
        })
        .collect();
    let locked = OpResult::MultiLocked {
        granted: true,
        nodes,
    };
    conn.reply(request.xid, 7, Ok(locked)).await;
    let guard = bounded("lock_many", acquire)
        .await
        .expect("join")
        .expect("acquire");
    assert!(guard.safe_deadline() > Instant::now());
    let mut release = tokio::spawn(async move { (guard.release().await, guard) });
    let request = recv_while(&mut conn, &mut release).await;
    assert!(matches!(request.op, Op::Release { .. }), "{request:?}");
    conn.reply(request.xid, 8, Ok(OpResult::Unlocked { released: true }))
        .await;
    let (released, guard) = bounded("release", release).await.expect("join");
    assert!(released.expect("release"));
    let left = guard
        .safe_deadline()
        .saturating_duration_since(Instant::now());
    assert_eq!(
        left,
        Duration::ZERO,
        "a released multi-lock is held {left:?} more"
    );
    drop(client);
}

/// The background renewal of a lease whose acknowledgement comes after the safe
/// deadline passed: the lease is lost for good client side, so it is revoked, as when
/// the deadline passes with no answer at all. It used to be left alone, and that late
/// renewal had just given the lease, and its locks, a whole TTL more on the server.
///
/// Real time (the crate's tests have no paused clock: tokio's `test-util` is not
/// enabled), with wide windows: TTL 2 s, margin 1.2 s (safe deadline at 800 ms), a
/// renewal every 700 ms, given up 700 ms after it is sent. The renewal sent at 700 ms
/// is answered as soon as the lease is lost (800 ms), 600 ms before it is given up.
#[tokio::test]
async fn a_renewal_acknowledged_after_the_safe_deadline_revokes_the_lease() {
    use corral_client::{LeaseOptions, Renewal};
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut grant = tokio::spawn({
        let client = client.clone();
        async move {
            let options = LeaseOptions::new(Duration::from_secs(2))
                .with_renewal(Renewal::Every(Duration::from_millis(700)))
                .with_margin(Duration::from_millis(1_200));
            client.grant_lease_with(options).await
        }
    });
    let request = recv_while(&mut conn, &mut grant).await;
    let ttl = OpResult::Lease {
        lease_id: 0x55,
        ttl_ms: 2_000,
    };
    conn.reply(request.xid, 2, Ok(ttl.clone())).await;
    let lease = bounded("grant_lease", grant)
        .await
        .expect("join")
        .expect("grant_lease");
    let renewal = conn.recv().await;
    assert_eq!(renewal.op, Op::RenewLease { lease_id: 0x55 });
    bounded("the lease's loss", lease.lost()).await;
    conn.reply(renewal.xid, 3, Ok(ttl)).await;
    let request = conn.recv().await;
    assert_eq!(
        request.op,
        Op::RevokeLease { lease_id: 0x55 },
        "a lease lost client side was left alive on the server"
    );
    conn.reply(request.xid, 4, Ok(OpResult::Unlocked { released: true }))
        .await;
    assert!(lease.is_lost());
    drop(client);
}

/// `LockGuard::is_held` (and `MultiLockGuard::is_held`) is final once false: a guard
/// whose session's safe deadline passed while the client was away stays lost after the
/// session is resumed, even when the resumed session's terms move its deadline back into
/// the future (here the server grants a longer TTL on resume, so the resume counts no
/// gap). It used to say "held" again, after `lost()` had resolved with `DeadlinePassed`.
#[tokio::test]
async fn a_guard_once_lost_stays_lost_after_the_session_is_resumed() {
    use corral_client::LockLoss;
    use corral_protocol::HelloReply;
    use futures::SinkExt;
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(1_000).await;
    let guard = held(&client, &mut conn).await;
    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .lock_many(["/a", "/b"], LockOptions::default())
                .acquire()
                .await
        }
    });
    let request = recv_while(&mut conn, &mut acquire).await;
    let nodes = ["/a", "/b"]
        .iter()
        .map(|lock| LockedNode {
            lock: lock.to_string(),
            node: format!("{lock}/x-0000000000"),
            token: 3,
        })
        .collect();
    let locked = OpResult::MultiLocked {
        granted: true,
        nodes,
    };
    conn.reply(request.xid, 3, Ok(locked)).await;
    let both = bounded("lock_many", acquire)
        .await
        .expect("join")
        .expect("acquire");
    // The connection drops; the server holds the handshake until the guards are lost.
    drop(conn);
    let (mut framed, _) = server.hello().await;
    let loss = bounded("the loss", guard.lost()).await;
    assert_eq!(loss, LockLoss::DeadlinePassed);
    assert_eq!(bounded("the loss", both.lost()).await, loss);
    assert!(!guard.is_held() && !both.is_held());
    bounded(
        "grant",
        framed.send(HelloReply::Accepted(granted(10_000, 3, 100))),
    )
    .await
    .expect("send grant");
    let mut conn = common::Conn {
        framed: framed.map_codec(|c| c.retype()),
    };
    // The re-reads after the resume (sent once the new terms are taken in) find every
    // node still there and held.
    for _ in 0..3 {
        let request = conn.recv().await;
        let Op::GetLocks { path } = request.op else {
            panic!("unexpected {request:?}");
        };
        let (node, token) = match path.as_str() {
            "/l" => ("/l/x-0000000001".to_string(), 2),
            lock => (format!("{lock}/x-0000000000"), 3),
        };
        let ours = LockEntry {
            node,
            kind: LockKind::Exclusive,
            session: SESSION,
            lease: SESSION,
            token,
            granted: true,
        };
        let state = LockState {
            lock: path,
            lock_delay_ms: 0,
            delayed_until_ms: 0,
            queue: vec![ours],
        };
        conn.reply(request.xid, 4, Ok(OpResult::Locks(vec![state])))
            .await;
    }
    assert!(
        client.session_safe_deadline() > Instant::now(),
        "the resumed session's deadline is ahead again"
    );
    assert!(!guard.is_held(), "a lost guard says it is held again");
    assert!(!both.is_held(), "a lost multi-lock says it is held again");
    assert_eq!(bounded("lost() again", guard.lost()).await, loss);
    assert_eq!(bounded("lost() again", both.lost()).await, loss);
    drop(client);
}

/// A multi-lock answer that does not name one node per lock asked for, in request order
/// (a server of another version, a bug): the acquire fails with a protocol error and
/// releases what it was answered, instead of returning a guard that holds only part of
/// the set (`token` of a lock in the set then being `None`). It used to return that
/// guard as if it held every lock.
#[tokio::test]
async fn a_multi_lock_answer_missing_a_lock_is_refused_and_released() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .lock_many(["/a", "/b"], LockOptions::default())
                .acquire()
                .await
        }
    });
    let request = recv_while(&mut conn, &mut acquire).await;
    assert!(matches!(request.op, Op::LockMany(_)), "{request:?}");
    let partial = OpResult::MultiLocked {
        granted: true,
        nodes: vec![LockedNode {
            lock: "/a".into(),
            node: "/a/x-0000000000".into(),
            token: 3,
        }],
    };
    conn.reply(request.xid, 3, Ok(partial)).await;
    let outcome = bounded("lock_many", acquire).await.expect("join");
    match outcome {
        Err(corral_client::Error::Protocol(_)) => {}
        Ok(guard) => panic!("a guard for part of the set: {:?}", guard.tokens()),
        Err(e) => panic!("unexpected {e:?}"),
    }
    let request = conn.recv().await;
    assert_eq!(
        request.op,
        Op::Release {
            node: "/a/x-0000000000".into(),
            token: 3
        }
    );
    conn.reply(request.xid, 4, Ok(OpResult::Unlocked { released: true }))
        .await;
    drop(client);
}

/// A waiter whose grant came while it was disconnected learns it from the re-read of its
/// lock after the reconnect. That re-read refused with a transient error (the
/// connection's pending-request limit, say) is sent again after a pause: it used to be
/// only logged, and the waiter waited for good while the server held the lock for it.
#[tokio::test]
async fn a_lock_reread_refused_after_a_reconnect_is_sent_again_and_finds_the_grant() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move { client.lock("/l", LockOptions::default()).acquire().await }
    });
    let lock = recv_while(&mut conn, &mut acquire).await;
    conn.reply(lock.xid, 2, Ok(queued("/l/x-0000000002", 3)))
        .await;
    // Disconnected; the grant is made meanwhile, and its event is lost.
    drop(conn);
    let (mut conn, _) = server.accept(granted(10_000, 4, lock.xid + 1)).await;
    let reread = recv_while(&mut conn, &mut acquire).await;
    assert_eq!(reread.op, Op::GetLocks { path: "/l".into() });
    let full = ErrorInfo::new(
        ErrorCode::LimitExceeded,
        "1024 requests are pending on this connection",
    );
    conn.reply(reread.xid, 4, Err(full)).await;
    // Sent again, and answered with the grant.
    let again = recv_while(&mut conn, &mut acquire).await;
    assert_eq!(again.op, Op::GetLocks { path: "/l".into() });
    let state = LockState {
        lock: "/l".into(),
        lock_delay_ms: 0,
        delayed_until_ms: 0,
        queue: vec![LockEntry {
            node: "/l/x-0000000002".into(),
            kind: LockKind::Exclusive,
            session: SESSION,
            lease: SESSION,
            token: 3,
            granted: true,
        }],
    };
    conn.reply(again.xid, 4, Ok(OpResult::Locks(vec![state])))
        .await;
    let guard = bounded("acquire", acquire)
        .await
        .expect("join")
        .expect("acquire");
    assert_eq!(guard.token(), 3);
    assert!(guard.is_held());
}

/// A multi-lock request to send again after a reconnect that is over the new server's
/// `max_frame_bytes` fails with `FrameTooLarge` instead of being sent; the first server
/// may have queued it, so its locks are re-read and this session's nodes there that
/// nobody tracks are released.
#[tokio::test]
async fn a_lock_request_not_sent_again_for_the_new_servers_frame_limit_is_swept() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let locks: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|name| format!("/{}", name.repeat(600)))
        .collect();
    let mut acquire = tokio::spawn({
        let client = client.clone();
        let locks = locks.clone();
        async move {
            client
                .lock_many(locks, LockOptions::default())
                .acquire()
                .await
        }
    });
    let request = recv_while(&mut conn, &mut acquire).await;
    assert!(matches!(request.op, Op::LockMany(_)), "{:?}", request.op);
    // Lost with the connection; the next server takes frames of at most 1 KiB.
    drop(conn);
    let mut small = granted(10_000, 4, request.xid + 1);
    small.max_frame_bytes = 1024;
    let (mut conn, _) = server.accept(small).await;
    let mut reread = Vec::new();
    for _ in 0..locks.len() {
        let request = conn.recv().await;
        let Op::GetLocks { path } = request.op else {
            panic!("a re-read of the locks first, got {request:?}");
        };
        reread.push(path.clone());
        // The first server had queued the request: a node of this session in each.
        let state = LockState {
            lock: path.clone(),
            lock_delay_ms: 0,
            delayed_until_ms: 0,
            queue: vec![LockEntry {
                node: format!("{path}/x-0000000000"),
                kind: LockKind::Exclusive,
                session: SESSION,
                lease: SESSION,
                token: 3,
                granted: true,
            }],
        };
        conn.reply(request.xid, 4, Ok(OpResult::Locks(vec![state])))
            .await;
    }
    reread.sort();
    assert_eq!(reread, locks);
    let err = bounded("lock_many", acquire)
        .await
        .expect("join")
        .expect_err("over the new server's limit");
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");
    // Every node found is released.
    let mut released = Vec::new();
    while released.len() < locks.len() {
        let request = conn.recv().await;
        let Op::Release { node, token: 3 } = request.op else {
            panic!("a release, got {request:?}");
        };
        released.push(node);
        conn.reply(request.xid, 5, Ok(OpResult::Unlocked { released: true }))
            .await;
    }
    released.sort();
    let nodes: Vec<String> = locks.iter().map(|l| format!("{l}/x-0000000000")).collect();
    assert_eq!(released, nodes);
}

/// A lease grant in flight when the session lapses (no server reached within its TTL)
/// fails for its caller with `ConnectionLoss`, but is sent again after the resume: the
/// server may have granted it, and the lease it answers (from its deduplication table,
/// if it was) finds no caller and is revoked. It used to be forgotten, and a lease
/// granted then held a `max_sessions` place until its TTL.
#[tokio::test]
async fn a_lease_grant_in_flight_at_a_lapse_is_sent_again_and_its_lease_revoked() {
    use corral_client::Error;
    use corral_protocol::HelloReply;
    use futures::SinkExt;
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(1_000).await;
    let mut grant = tokio::spawn({
        let client = client.clone();
        async move { client.grant_lease(Duration::from_millis(5_000)).await }
    });
    let request = recv_while(&mut conn, &mut grant).await;
    assert_eq!(request.op, Op::GrantLease { ttl_ms: 5_000 });
    // The connection drops; the server holds the handshake until the session lapsed.
    drop(conn);
    let (mut framed, _) = server.hello().await;
    let err = bounded("grant_lease", grant)
        .await
        .expect("join")
        .expect_err("lapsed");
    assert!(matches!(err, Error::ConnectionLoss), "{err}");
    bounded(
        "grant",
        framed.send(HelloReply::Accepted(granted(10_000, 3, request.xid + 1))),
    )
    .await
    .expect("send grant");
    let mut conn = common::Conn {
        framed: framed.map_codec(|c| c.retype()),
    };
    let resent = conn.recv().await;
    assert_eq!(resent, request, "sent again with its xid");
    let lease = OpResult::Lease {
        lease_id: 0x77,
        ttl_ms: 5_000,
    };
    conn.reply(resent.xid, 3, Ok(lease)).await;
    let revoke = conn.recv().await;
    assert_eq!(revoke.op, Op::RevokeLease { lease_id: 0x77 });
    conn.reply(revoke.xid, 4, Ok(OpResult::Unlocked { released: true }))
        .await;
    drop(client);
}

/// A lock request answered `LockNotHeld` (a request resent after a reconnect whose queue
/// node was granted and lost, or released, meanwhile: see PROTOCOL, "Xids and
/// deduplication") fails the acquire as a node lost while waiting does: `LockLost(Gone)`,
/// retryable. The same for a multi-lock.
#[tokio::test]
async fn a_lock_answered_lock_not_held_is_a_lost_node() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    for many in [false, true] {
        let mut acquire = tokio::spawn({
            let client = client.clone();
            async move {
                if many {
                    client
                        .lock_many(["/a", "/b"], LockOptions::default())
                        .acquire()
                        .await
                        .map(|_| ())
                } else {
                    client
                        .lock("/l", LockOptions::default())
                        .acquire()
                        .await
                        .map(|_| ())
                }
            }
        });
        let request = recv_while(&mut conn, &mut acquire).await;
        assert_eq!(matches!(request.op, Op::LockMany(_)), many, "{request:?}");
        let gone = ErrorInfo::new(ErrorCode::LockNotHeld, "the queue node is gone");
        conn.reply(request.xid, 9, Err(gone)).await;
        let outcome = bounded("the acquire", acquire).await.expect("join");
        match outcome {
            Err(e @ corral_client::Error::LockLost(corral_client::LockLoss::Gone)) => {
                assert!(e.is_retryable(), "{e}");
            }
            other => panic!("many {many}: {other:?}"),
        }
    }
    drop(client);
}
