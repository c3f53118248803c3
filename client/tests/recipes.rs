//! The recipes against the scripted fake server (see `common/`): what they send, and how
//! their timeouts behave when the server is slow or gone.
//!
//! Every wait is bounded; nothing sleeps to synchronise.

mod common;

use common::{bounded, granted, recv_while, Conn, FakeServer};
use corral_client::recipes::{Barrier, DoubleBarrier, Election};
use corral_client::{ErrorCode, ErrorInfo, LockKind};
use corral_protocol::{LockEntry, LockState, Op, OpResult, Stat};
use std::time::Duration;
use tokio::time::Instant;

/// A timeout too large to add to the clock (`Duration::MAX`) means no deadline.
#[tokio::test]
async fn barrier_wait_timeout_of_duration_max_waits_without_a_deadline() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let barrier = Barrier::new(&client, "/b");
    let mut wait =
        tokio::spawn(async move { barrier.wait_on_barrier_timeout(Duration::MAX).await });
    let exists = recv_while(&mut conn, &mut wait).await;
    assert!(matches!(exists.op, Op::Exists { .. }), "{:?}", exists.op);
    conn.reply(exists.xid, 2, Ok(OpResult::Exists(None))).await;
    let through = bounded("wait_on_barrier_timeout", wait)
        .await
        .expect("join")
        .expect("wait");
    assert!(through);
}

/// How much later than its timeout a give-up may return on a loaded machine; far below
/// the session TTL and request timeout the give-up must not wait for.
const SLACK: Duration = Duration::from_millis(1_000);

/// `what(timeout)`, started at `started`, gave up (`Ok(false)`) by its deadline.
fn gave_up_in_time(
    what: &str,
    outcome: &corral_client::Result<bool>,
    started: Instant,
    timeout: Duration,
) {
    let took = started.elapsed();
    assert!(matches!(outcome, Ok(false)), "{what}: {outcome:?}");
    assert!(
        took < timeout + SLACK,
        "{what}({timeout:?}) returned after {took:?}"
    );
}

/// Answers requests (reads and the creates of a double barrier) until the delete of
/// `node` arrives, and returns its xid.
async fn until_deleted(conn: &mut Conn, node: &str) -> u64 {
    loop {
        let request = conn.recv().await;
        match &request.op {
            Op::Exists { .. } => conn.reply(request.xid, 2, Ok(OpResult::Exists(None))).await,
            Op::GetChildren { .. } => {
                let children = OpResult::Children {
                    children: Vec::new(),
                    stat: Stat::default(),
                };
                conn.reply(request.xid, 2, Ok(children)).await
            }
            Op::Create(c) => {
                let created = OpResult::Created {
                    path: c.path.clone(),
                    stat: Stat::default(),
                };
                conn.reply(request.xid, 2, Ok(created)).await
            }
            Op::Delete { path, .. } if path == node => return request.xid,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// `DoubleBarrier::enter_timeout(t)` while the server cannot be reached returns
/// `Ok(false)` at `t`, not an error after the session's lease (its give-up path used to
/// wait for an `exists` and a `delete`); its own node is deleted in the background once
/// the session is resumed.
#[tokio::test]
async fn double_barrier_enter_timeout_returns_false_at_its_deadline_while_disconnected() {
    let server = FakeServer::start().await;
    let (client, conn) = server.connect(6_000).await;
    // The connection drops; the server answers no handshake for now.
    drop(conn);
    let barrier = DoubleBarrier::new(&client, "/b", 2).with_id("me");
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = bounded("enter_timeout", barrier.enter_timeout(timeout)).await;
    gave_up_in_time("enter_timeout", &outcome, started, timeout);

    let (mut conn, _) = server.accept(granted(6_000, 2, 1)).await;
    let delete = until_deleted(&mut conn, "/b/me").await;
    conn.reply(delete, 3, Err(ErrorInfo::new(ErrorCode::NoNode, "/b/me")))
        .await;
}

/// With a slow server, `enter_timeout(t)` returns `Ok(false)` at `t` although its create
/// is still unanswered, and the delete of its node is sent after that create (so the
/// server applies it after the create, whether that succeeds or not).
#[tokio::test]
async fn double_barrier_enter_timeout_gives_up_at_its_deadline_with_its_create_in_flight() {
    let server = FakeServer::start().await;
    let config = server.config().with_request_timeout(Duration::from_secs(4));
    let (client, mut conn) = server.connect_with(config, 10_000).await;
    let barrier = DoubleBarrier::new(&client, "/b", 2).with_id("me");
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let mut enter = tokio::spawn(async move { barrier.enter_timeout(timeout).await });
    let exists = recv_while(&mut conn, &mut enter).await;
    assert!(matches!(exists.op, Op::Exists { .. }), "{:?}", exists.op);
    conn.reply(exists.xid, 2, Ok(OpResult::Exists(None))).await;
    let create = recv_while(&mut conn, &mut enter).await;
    assert!(
        matches!(&create.op, Op::Create(c) if c.path == "/b/me"),
        "{:?}",
        create.op
    );
    // The (slow) server does not answer the create yet.
    let outcome = bounded("enter_timeout", enter).await.expect("join");
    gave_up_in_time("enter_timeout", &outcome, started, timeout);
    let delete = until_deleted(&mut conn, "/b/me").await;
    assert!(delete > create.xid, "the delete was sent before the create");
    let created = OpResult::Created {
        path: "/b/me".into(),
        stat: Stat::default(),
    };
    conn.reply(create.xid, 3, Ok(created)).await;
    conn.reply(delete, 4, Ok(OpResult::Deleted)).await;
}

/// With a slow server, `leave_timeout(t)` returns `Ok(false)` at `t`; its own node is
/// deleted in the background.
#[tokio::test]
async fn double_barrier_leave_timeout_returns_false_at_its_deadline_with_a_slow_server() {
    let server = FakeServer::start().await;
    let config = server.config().with_request_timeout(Duration::from_secs(4));
    let (client, mut conn) = server.connect_with(config, 10_000).await;
    let barrier = DoubleBarrier::new(&client, "/b", 2).with_id("me");
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let mut leave = tokio::spawn(async move { barrier.leave_timeout(timeout).await });
    let children = recv_while(&mut conn, &mut leave).await;
    assert!(
        matches!(children.op, Op::GetChildren { .. }),
        "{:?}",
        children.op
    );
    // The (slow) server does not answer yet.
    let outcome = bounded("leave_timeout", leave).await.expect("join");
    gave_up_in_time("leave_timeout", &outcome, started, timeout);
    let delete = until_deleted(&mut conn, "/b/me").await;
    conn.reply(delete, 3, Ok(OpResult::Deleted)).await;
}

fn unavailable() -> ErrorInfo {
    ErrorInfo::new(ErrorCode::Unavailable, "no quorum")
}

/// A participant that gave up leaving at its deadline deletes its node in the
/// background; answered with transient errors (`Unavailable`, `LimitExceeded`), the
/// delete is sent again until it succeeds: it used to be only logged, and the node
/// stayed until the session ended, blocking the other participants' leave.
#[tokio::test]
async fn double_barrier_background_delete_is_sent_again_after_a_transient_error() {
    let server = FakeServer::start().await;
    let config = server.config().with_request_timeout(Duration::from_secs(4));
    let (client, mut conn) = server.connect_with(config, 10_000).await;
    let barrier = DoubleBarrier::new(&client, "/b", 2).with_id("me");
    let mut leave =
        tokio::spawn(async move { barrier.leave_timeout(Duration::from_millis(300)).await });
    let children = recv_while(&mut conn, &mut leave).await;
    assert!(
        matches!(children.op, Op::GetChildren { .. }),
        "{:?}",
        children.op
    );
    // The (slow) server does not answer yet.
    let outcome = bounded("leave_timeout", leave).await.expect("join");
    assert!(matches!(outcome, Ok(false)), "{outcome:?}");
    let limit = ErrorInfo::new(ErrorCode::LimitExceeded, "too many proposals");
    for error in [unavailable(), limit] {
        let delete = until_deleted(&mut conn, "/b/me").await;
        conn.reply(delete, 3, Err(error)).await;
    }
    let delete = until_deleted(&mut conn, "/b/me").await;
    conn.reply(delete, 4, Ok(OpResult::Deleted)).await;
}

/// A participant that gave up and enters again before its background delete got
/// through creates its node anew: the delete, answered with a transient error after
/// that create was sent, is not sent again, since it would now delete the new node
/// (the later create supersedes it).
#[tokio::test]
async fn double_barrier_background_delete_is_not_sent_again_after_entering_anew() {
    let server = FakeServer::start().await;
    let config = server.config().with_request_timeout(Duration::from_secs(4));
    let (client, mut conn) = server.connect_with(config, 10_000).await;
    let barrier = DoubleBarrier::new(&client, "/b", 2).with_id("me");
    let outcome = {
        let barrier = barrier.clone();
        let mut leave =
            tokio::spawn(async move { barrier.leave_timeout(Duration::from_millis(300)).await });
        let children = recv_while(&mut conn, &mut leave).await;
        assert!(
            matches!(children.op, Op::GetChildren { .. }),
            "{:?}",
            children.op
        );
        bounded("leave_timeout", leave).await.expect("join")
    };
    assert!(matches!(outcome, Ok(false)), "{outcome:?}");
    let delete = until_deleted(&mut conn, "/b/me").await;
    // Entering again (`ready` exists: the group is complete) while the delete is on
    // its way.
    let mut enter = tokio::spawn(async move { barrier.enter().await });
    let exists = recv_while(&mut conn, &mut enter).await;
    assert!(matches!(exists.op, Op::Exists { .. }), "{:?}", exists.op);
    conn.reply(exists.xid, 2, Ok(OpResult::Exists(Some(Stat::default()))))
        .await;
    let create = recv_while(&mut conn, &mut enter).await;
    assert!(
        matches!(&create.op, Op::Create(c) if c.path == "/b/me"),
        "{:?}",
        create.op
    );
    conn.reply(delete, 3, Err(unavailable())).await;
    let created = OpResult::Created {
        path: "/b/me".into(),
        stat: Stat::default(),
    };
    conn.reply(create.xid, 4, Ok(created)).await;
    bounded("enter", enter).await.expect("join").expect("enter");
    // A delete sent again would come within the first pause (at most 100 ms); give it
    // several times that.
    let quiet = Duration::from_millis(600);
    let started = Instant::now();
    while let Ok(request) = tokio::time::timeout_at(started + quiet, conn.recv_any()).await {
        match request.op {
            Op::Ping => conn.reply(request.xid, 0, Ok(OpResult::Pong)).await,
            other => panic!("sent after the node was created anew: {other:?}"),
        }
    }
}

/// A server older than `GetLockGroup` answers it `Unimplemented`: an observer that finds
/// a multi-lock waiting first in the election's queue then reads every lock's queue
/// (`GetLocks` on `/`), finds the multi-lock's other lock by its token there, and
/// watches that lock too.
#[tokio::test]
async fn observe_reads_every_lock_from_a_server_without_get_lock_group() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let waiting = |lock: &str, node: &str| LockState {
        lock: lock.into(),
        lock_delay_ms: 0,
        delayed_until_ms: 0,
        queue: vec![LockEntry {
            node: format!("{lock}/{node}"),
            kind: LockKind::Exclusive,
            session: 9,
            lease: 9,
            token: 5,
            granted: false,
        }],
    };
    let (election, other) = (waiting("/e", "x-0000000001"), waiting("/o", "y-0000000001"));
    let unrelated = LockState {
        lock: "/u".into(),
        lock_delay_ms: 0,
        delayed_until_ms: 0,
        queue: Vec::new(),
    };
    let mut leaders = Election::new(&client, "/e", "").observe();
    let mut first = tokio::spawn(async move { leaders.recv().await });
    let mut seen = Vec::new();
    // Answer what the observer asks until it has watched the other lock's queue.
    while !seen.contains(&"watch /o".to_string()) {
        let request = recv_while(&mut conn, &mut first).await;
        let (what, answer) = match &request.op {
            Op::GetChildren { path, watch: true } => {
                let children = match path.as_str() {
                    "/e" => vec!["x-0000000001".to_string()],
                    "/o" => vec!["y-0000000001".to_string()],
                    other => panic!("no watch on {other} expected"),
                };
                let stat = Stat::default();
                (
                    format!("watch {path}"),
                    Ok(OpResult::Children { children, stat }),
                )
            }
            Op::GetLocks { path } => {
                let locks = match path.as_str() {
                    "/e" => vec![election.clone()],
                    "/o" => vec![other.clone()],
                    "/" => vec![election.clone(), other.clone(), unrelated.clone()],
                    other => panic!("no locks of {other} expected"),
                };
                (format!("locks {path}"), Ok(OpResult::Locks(locks)))
            }
            Op::GetLockGroup { node } => (
                format!("group {node}"),
                Err(ErrorInfo::new(ErrorCode::Unimplemented, "an older server")),
            ),
            other => panic!("unexpected {other:?}"),
        };
        seen.push(what);
        conn.reply(request.xid, 2, answer).await;
    }
    assert_eq!(
        seen,
        [
            "watch /e",
            "locks /e",
            "group /e/x-0000000001",
            "locks /",
            "watch /e",
            "watch /o",
        ]
    );
    // It goes on to report that nobody leads: the multi-lock waits for /o.
    let request = recv_while(&mut conn, &mut first).await;
    assert!(
        matches!(&request.op, Op::GetLocks { path } if path == "/o"),
        "{:?}",
        request.op
    );
    conn.reply(request.xid, 2, Ok(OpResult::Locks(vec![other.clone()])))
        .await;
    let request = recv_while(&mut conn, &mut first).await;
    assert!(
        matches!(&request.op, Op::GetLocks { path } if path == "/e"),
        "{:?}",
        request.op
    );
    conn.reply(request.xid, 2, Ok(OpResult::Locks(vec![election])))
        .await;
    let report = bounded("the first report", first)
        .await
        .expect("join")
        .expect("an item")
        .expect("no error");
    assert_eq!(report, None);
}
