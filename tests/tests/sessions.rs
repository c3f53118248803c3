//! Sessions: ephemeral nodes die with their session (closed, dropped or expired), a
//! session survives a lost connection and resumes on a new one, and a write whose
//! reply was lost is applied exactly once when it is resent.
//!
//! Links are broken with the in-process proxy (`corral_tests::proxy`); the exact resend
//! of a request id is done with the raw protocol (`corral_tests::raw`).

use corral_client::{
    Client, ClientConfig, ConnectionState, CreateMode, CreateRequest, Error, ErrorCode, EventKind,
};
use corral_protocol::{Op, OpResult, ServerMessage, SessionRequest};
use corral_tests::proxy::{Mode, Proxy};
use corral_tests::raw::RawSession;
use corral_tests::{eventually, TestServer};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(addr: &str) -> Client {
    Client::connect(ClientConfig::new([addr]))
        .await
        .expect("connect")
}

/// A client config for going through a proxy: quick to notice a dead link and quick
/// to retry.
fn via(proxy: &Proxy, ttl: Duration) -> ClientConfig {
    ClientConfig::new([proxy.addr().to_string()])
        .with_session_ttl(ttl)
        .with_connect_timeout(Duration::from_millis(300))
        .with_max_backoff(Duration::from_millis(100))
        .with_request_timeout(WAIT)
}

async fn proxy_to(server: &TestServer) -> Proxy {
    let target: SocketAddr = server.addr().parse().expect("server address");
    Proxy::start(target).await.expect("start proxy")
}

/// Waits (bounded) until the state stream yields a state matching `want`; returns the
/// states seen on the way, that one included.
async fn wait_state(
    states: &mut corral_client::StateStream,
    what: &str,
    want: impl Fn(&ConnectionState) -> bool,
) -> Vec<ConnectionState> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(state) = states.recv().await {
            seen.push(state.clone());
            if want(&state) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "waiting for {what}: states seen {seen:?} ({found:?})"
    );
    seen
}

fn seq_create(path: &str) -> Op {
    Op::Create(CreateRequest {
        path: path.to_string(),
        data: b"once".to_vec(),
        mode: CreateMode::PersistentSequential,
        make_parents: false,
    })
}

#[tokio::test]
async fn ephemerals_vanish_when_the_session_is_closed() {
    let server = TestServer::start(&[]);
    let owner = connect(&server.addr()).await;
    let other = connect(&server.addr()).await;
    owner
        .create("/e1", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    owner
        .create("/dir", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("persistent");
    let seq = owner
        .create("/dir/e-", b"".to_vec(), CreateMode::EphemeralSequential)
        .await
        .expect("ephemeral sequential");
    let (stat, mut watcher) = other.exists_watch("/e1").await.expect("watch");
    assert_eq!(stat.map(|s| s.ephemeral_owner), Some(owner.session_id()));
    let (_, _, mut children) = other.get_children_watch("/dir").await.expect("watch");

    owner.close().await.expect("close");
    assert_eq!(owner.state(), ConnectionState::Closed);
    // Visible at once to anyone who asks after the close returned...
    assert!(other.exists("/e1").await.expect("exists").is_none());
    assert!(other.exists(&seq).await.expect("exists").is_none());
    assert!(other.get_children("/dir").await.expect("ls").is_empty());
    assert!(
        other.exists("/dir").await.expect("exists").is_some(),
        "persistent nodes stay"
    );
    // ...and the watches fired before those answers.
    let event = watcher
        .try_take()
        .expect("fired before the later answer")
        .expect("event");
    assert_eq!(
        (event.kind, event.path.as_str()),
        (EventKind::NodeDeleted, "/e1")
    );
    let event = children.try_take().expect("fired").expect("event");
    assert_eq!(
        (event.kind, event.path.as_str()),
        (EventKind::NodeChildrenChanged, "/dir")
    );
    // The closed client refuses calls; closing again is fine.
    assert!(matches!(owner.exists("/").await, Err(Error::Closed)));
    owner.close().await.expect("close twice");
}

#[tokio::test]
async fn dropping_every_handle_ends_the_session() {
    let server = TestServer::start(&[]);
    let other = connect(&server.addr()).await;
    let owner = connect(&server.addr()).await;
    owner
        .create("/dropped", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let (_, watcher) = other.exists_watch("/dropped").await.expect("watch");
    let clone = owner.clone();
    drop(owner);
    assert!(
        other.exists("/dropped").await.expect("exists").is_some(),
        "a clone still holds the session"
    );
    drop(clone);
    // Well before the 10 s TTL: the background task closes the session.
    let event = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the session ends soon after the last handle is dropped")
        .expect("event");
    assert_eq!(event.kind, EventKind::NodeDeleted);
}

#[tokio::test]
async fn ephemerals_vanish_when_the_session_expires() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let ttl = Duration::from_millis(600);
    let doomed = Client::connect(via(&proxy, ttl)).await.expect("connect");
    assert_eq!(doomed.session_ttl(), ttl);
    let observer = connect(&server.addr()).await;
    doomed
        .create("/lease", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    doomed
        .create("/lease-", b"".to_vec(), CreateMode::EphemeralSequential)
        .await
        .expect("ephemeral sequential");
    let (stat, watcher) = observer.exists_watch("/lease").await.expect("watch");
    assert!(stat.is_some());
    let (_, own_watch) = doomed.exists_watch("/lease").await.expect("own watch");
    let mut states = doomed.state_events();

    // A partition TCP does not notice: the server hears nothing more from the client.
    proxy.set_mode(Mode::Blackhole);
    let cut_at = Instant::now();
    let event = tokio::time::timeout(WAIT, watcher)
        .await
        .expect("the session expires within the bound")
        .expect("event");
    let after = cut_at.elapsed();
    assert_eq!(
        (event.kind, event.path.as_str()),
        (EventKind::NodeDeleted, "/lease")
    );
    // The client pings every TTL/3, so the server last heard of it at most 200 ms
    // before the cut: expiring sooner than 400 ms after it would be premature.
    assert!(
        after >= Duration::from_millis(350),
        "expired after {after:?}"
    );
    assert!(observer.get_children("/").await.expect("ls").is_empty());

    // Once it can reach the server again the client learns that its session is gone.
    proxy.set_mode(Mode::Pass);
    let seen = wait_state(&mut states, "Expired", |s| *s == ConnectionState::Expired).await;
    assert!(
        seen.contains(&ConnectionState::Disconnected),
        "disconnected first: {seen:?}"
    );
    assert_eq!(doomed.state(), ConnectionState::Expired);
    // Its watches end with the same error (the deletion happened while it was away).
    assert!(matches!(
        tokio::time::timeout(WAIT, own_watch).await,
        Ok(Err(Error::SessionExpired))
    ));
    assert!(matches!(
        doomed.exists("/").await,
        Err(Error::SessionExpired)
    ));
    assert!(matches!(
        doomed
            .create("/again", b"".to_vec(), CreateMode::Persistent)
            .await,
        Err(Error::SessionExpired)
    ));
}

#[tokio::test]
async fn a_session_resumes_on_a_new_connection() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let client = Client::connect(via(&proxy, Duration::from_secs(5)))
        .await
        .expect("connect");
    let observer = connect(&server.addr()).await;
    let session = client.session_id();
    client
        .create("/mine", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let mut states = client.state_events();

    proxy.set_mode(Mode::Cut);
    wait_state(&mut states, "Disconnected", |s| {
        *s == ConnectionState::Disconnected
    })
    .await;
    // A call made while disconnected waits for the new connection.
    let during = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .create("/during", b"d".to_vec(), CreateMode::Ephemeral)
                .await
        })
    };
    // The session (and its ephemeral) lives on while the client is away.
    let stat = observer.exists("/mine").await.expect("exists");
    assert_eq!(stat.map(|s| s.ephemeral_owner), Some(session));

    proxy.set_mode(Mode::Pass);
    wait_state(&mut states, "Connected", ConnectionState::is_connected).await;
    assert_eq!(client.session_id(), session, "the same session");
    let created = tokio::time::timeout(WAIT, during)
        .await
        .expect("the waiting call completes")
        .expect("task")
        .expect("create after the reconnect");
    assert_eq!(created, "/during");
    for path in ["/mine", "/during"] {
        let stat = client.exists(path).await.expect("exists");
        assert_eq!(stat.map(|s| s.ephemeral_owner), Some(session), "{path}");
    }
    // Several more cuts in a row: still the same session.
    for _ in 0..3 {
        proxy.set_mode(Mode::Cut);
        wait_state(&mut states, "Disconnected", |s| {
            *s == ConnectionState::Disconnected
        })
        .await;
        proxy.set_mode(Mode::Pass);
        wait_state(&mut states, "Connected", ConnectionState::is_connected).await;
        client.sync("/").await.expect("works");
    }
    assert_eq!(client.session_id(), session);
    client.close().await.expect("close");
    assert!(observer.exists("/mine").await.expect("exists").is_none());
}

#[tokio::test]
async fn a_write_whose_reply_was_lost_is_applied_once_by_the_client() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let client = Client::connect(via(&proxy, Duration::from_secs(10)))
        .await
        .expect("connect");
    let observer = connect(&server.addr()).await;
    client
        .create("/q", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");

    let mut states = client.state_events();
    proxy.set_mode(Mode::DropReplies);
    let create = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .create("/q/n-", b"x".to_vec(), CreateMode::PersistentSequential)
                .await
        })
    };
    // The server applied it; the client has not heard.
    let children = eventually("the create to be applied", WAIT, || {
        let observer = observer.clone();
        async move {
            let children = observer.get_children("/q").await.ok()?;
            (!children.is_empty()).then_some(children)
        }
    })
    .await;
    assert_eq!(children, vec!["n-0000000000".to_string()]);
    assert!(!create.is_finished(), "the reply was dropped");

    // Force a reconnect: the client resends the create with its original xid. (Wait
    // for the cut to be noticed: mode changes in quick succession coalesce.)
    proxy.set_mode(Mode::Cut);
    wait_state(&mut states, "Disconnected", |s| {
        *s == ConnectionState::Disconnected
    })
    .await;
    proxy.set_mode(Mode::Pass);
    let path = tokio::time::timeout(WAIT, create)
        .await
        .expect("the create completes after the reconnect")
        .expect("task")
        .expect("create");
    assert_eq!(path, "/q/n-0000000000", "the first application's answer");
    assert_eq!(
        observer.get_children("/q").await.expect("ls"),
        vec!["n-0000000000".to_string()],
        "applied exactly once"
    );
    let next = client
        .create("/q/n-", b"".to_vec(), CreateMode::PersistentSequential)
        .await
        .expect("create");
    assert_eq!(next, "/q/n-0000000001", "the counter advanced once");
}

#[tokio::test]
async fn a_resent_request_id_gets_the_first_answer() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let observer = connect(&server.addr()).await;
    observer
        .create("/q", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");

    let mut first = RawSession::new_session(&proxy.addr().to_string(), 10_000).await;
    let (session_id, secret) = (first.granted.session_id, first.granted.secret);
    assert_eq!(first.granted.next_xid, 1);
    let r = first.request(1, Op::Ping).await;
    assert_eq!(r.result, Ok(OpResult::Pong));

    proxy.set_mode(Mode::DropReplies);
    first.send(2, seq_create("/q/n-")).await;
    eventually("the create to be applied", WAIT, || {
        let observer = observer.clone();
        async move { (observer.get_children("/q").await.ok()?.len() == 1).then_some(()) }
    })
    .await;
    let applied = "/q/n-0000000000";
    let stat = observer
        .exists(applied)
        .await
        .expect("exists")
        .expect("applied");
    proxy.set_mode(Mode::Cut);

    // Resume the session on a new connection (directly) and resend the same xid.
    let mut second = RawSession::open(
        &server.addr(),
        SessionRequest::Resume { session_id, secret },
        observer.last_zxid(),
    )
    .await
    .expect("resume");
    assert_eq!(second.granted.session_id, session_id);
    assert_eq!(
        second.granted.next_xid, 3,
        "one past the highest write xid applied"
    );
    let again = second.request(2, seq_create("/q/n-")).await;
    let expected = Ok(OpResult::Created {
        path: applied.to_string(),
        stat,
    });
    assert_eq!(
        again.result, expected,
        "the answer of the first application"
    );
    // And once more: still identical.
    let third = second.request(2, seq_create("/q/n-")).await;
    assert_eq!(third.result, again.result);
    assert_eq!(
        observer.get_children("/q").await.expect("ls"),
        vec!["n-0000000000".to_string()],
        "exactly one node"
    );
    // A new xid is a new write; an old one still gets its remembered answer.
    let new = second.request(3, seq_create("/q/n-")).await;
    match &new.result {
        Ok(OpResult::Created { path, .. }) => assert_eq!(path, "/q/n-0000000001"),
        other => panic!("{other:?}"),
    }
    let old = second.request(2, seq_create("/q/n-")).await;
    assert_eq!(old.result, expected);
    // A remembered failure is replayed too, even once the cause is gone.
    let fail = second
        .request(
            4,
            Op::Delete {
                path: "/q".into(),
                version: None,
            },
        )
        .await;
    assert_eq!(
        fail.result.as_ref().map_err(|e| e.code),
        Err(ErrorCode::NotEmpty)
    );
    assert_eq!(observer.get_children("/q").await.expect("ls").len(), 2);
}

#[tokio::test]
async fn request_ids_older_than_the_dedup_window_are_stale() {
    let server = TestServer::start(&[]);
    let mut s = RawSession::new_session(&server.addr(), 10_000).await;
    let first = s.request(1, seq_create("/n-")).await;
    assert!(first.result.is_ok(), "{first:?}");
    // 1,100 more writes, pipelined in batches under the per-connection queue limit.
    let mut xid = 1;
    for _ in 0..11 {
        for _ in 0..100 {
            xid += 1;
            s.send(
                xid,
                Op::SetData {
                    path: "/n-0000000000".into(),
                    data: xid.to_be_bytes().to_vec(),
                    version: None,
                },
            )
            .await;
        }
        for _ in 0..100 {
            let r = s.response().await;
            assert!(r.result.is_ok(), "{r:?}");
        }
    }
    let stale = s.request(1, seq_create("/n-")).await;
    let e = stale.result.expect_err("older than the window");
    assert_eq!(e.code, ErrorCode::StaleRequest, "{e}");
    // Not applied again.
    let r = s
        .request(
            xid + 1,
            Op::GetChildren {
                path: "/".into(),
                watch: false,
            },
        )
        .await;
    match r.result {
        Ok(OpResult::Children { children, .. }) => {
            assert_eq!(children, vec!["n-0000000000".to_string()])
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn acknowledged_results_are_forgotten_by_the_next_write() {
    let server = TestServer::start(&[]);
    let client = connect(&server.addr()).await;
    client
        .create("/acks", Vec::new(), CreateMode::Persistent)
        .await
        .expect("create");
    corral_tests::raw::acknowledged_results_are_forgotten(&server.addr(), "/acks").await;
}

#[tokio::test]
async fn resuming_needs_the_secret_and_moves_the_session() {
    let server = TestServer::start(&[]);
    let client = connect(&server.addr()).await;
    let session_id = client.session_id();

    let wrong = RawSession::open(
        &server.addr(),
        SessionRequest::Resume {
            session_id,
            secret: 0x1234,
        },
        0,
    )
    .await
    .expect_err("wrong secret");
    assert_eq!(wrong.code, ErrorCode::AuthFailed, "{wrong}");
    let unknown = RawSession::open(
        &server.addr(),
        SessionRequest::Resume {
            session_id: 999_999,
            secret: 1,
        },
        0,
    )
    .await
    .expect_err("unknown session");
    assert_eq!(unknown.code, ErrorCode::SessionExpired, "{unknown}");
    client.sync("/").await.expect("the client is not disturbed");

    // A raw session taken over by another connection: the first one is told.
    let mut first = RawSession::new_session(&server.addr(), 10_000).await;
    let (id, secret) = (first.granted.session_id, first.granted.secret);
    let _second = RawSession::open(
        &server.addr(),
        SessionRequest::Resume {
            session_id: id,
            secret,
        },
        0,
    )
    .await
    .expect("resume");
    match first.next().await {
        Some(ServerMessage::Goodbye(e)) => assert_eq!(e.code, ErrorCode::SessionMoved),
        other => panic!("expected a goodbye, got {other:?}"),
    }
}

#[tokio::test]
async fn the_requested_ttl_is_clamped_to_the_server_limits() {
    let server = TestServer::start(&["--max-session-ttl-ms", "5000"]);
    for (asked, granted) in [(50, 200), (1_000, 1_000), (60_000, 5_000)] {
        let c = Client::connect(
            ClientConfig::new([server.addr()]).with_session_ttl(Duration::from_millis(asked)),
        )
        .await
        .expect("connect");
        assert_eq!(
            c.session_ttl(),
            Duration::from_millis(granted),
            "asked {asked}"
        );
        c.close().await.expect("close");
    }
}

#[tokio::test]
async fn calls_fail_with_connection_loss_once_the_lease_may_have_run_out() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let ttl = Duration::from_millis(600);
    let client = Client::connect(via(&proxy, ttl)).await.expect("connect");
    let observer = connect(&server.addr()).await;
    client
        .create("/gone-soon", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let (_, deleted) = observer.exists_watch("/gone-soon").await.expect("watch");
    let mut states = client.state_events();

    proxy.set_mode(Mode::Cut);
    wait_state(&mut states, "Disconnected", |s| {
        *s == ConnectionState::Disconnected
    })
    .await;
    let lease = client.lease_deadline();
    // A call made now waits while the session may be alive, then fails: the client
    // cannot know whether its session survived.
    let started = Instant::now();
    let result = client.exists("/").await;
    assert!(
        matches!(result, Err(Error::ConnectionLoss)),
        "expected ConnectionLoss, got {result:?}"
    );
    assert!(
        std::time::Instant::now() + Duration::from_millis(50) >= lease,
        "failed only once the lease could have run out (after {:?})",
        started.elapsed()
    );
    assert!(result.expect_err("failed").is_retryable());
    // The server expired it meanwhile (the closed connection does not end it at once).
    let event = tokio::time::timeout(WAIT, deleted)
        .await
        .expect("expiry")
        .expect("event");
    assert_eq!(event.kind, EventKind::NodeDeleted);
    // Later calls fail fast with the same error while the link is down.
    let t = Instant::now();
    assert!(matches!(
        client.exists("/").await,
        Err(Error::ConnectionLoss)
    ));
    assert!(t.elapsed() < Duration::from_secs(2));
    // When the link comes back the client learns the session is gone.
    proxy.set_mode(Mode::Pass);
    wait_state(&mut states, "Expired", |s| *s == ConnectionState::Expired).await;
    assert!(matches!(
        client.exists("/").await,
        Err(Error::SessionExpired)
    ));
}

#[tokio::test]
async fn a_client_dropped_during_an_outage_does_not_keep_its_session_alive() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let ttl = Duration::from_secs(3);
    let client = Client::connect(via(&proxy, ttl)).await.expect("connect");
    let observer = connect(&server.addr()).await;
    client
        .create("/zombie", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    let (_, deleted) = observer.exists_watch("/zombie").await.expect("watch");
    // The state stream does not keep the client alive.
    let mut states = client.state_events();

    // The application drops its last handle while the link silently loses everything:
    // the close the background task sends on its behalf is lost.
    proxy.set_mode(Mode::Blackhole);
    drop(client);
    wait_state(&mut states, "Disconnected", |s| {
        *s == ConnectionState::Disconnected
    })
    .await;
    // The link comes back while the session is still alive: the task resumes it...
    proxy.set_mode(Mode::Pass);
    let seen = wait_state(&mut states, "Connected or final", |s| {
        s.is_connected() || s.is_terminal()
    })
    .await;
    assert!(
        seen.last().is_some_and(ConnectionState::is_connected),
        "the scenario needs the session resumed: {seen:?}"
    );
    // ...and must end it (no one holds the client), not keep it alive with pings:
    // within two TTLs the ephemeral (a lock, say) must be released.
    let event = tokio::time::timeout(2 * ttl, deleted)
        .await
        .expect("the dropped client's session ends")
        .expect("event");
    assert_eq!(event.kind, EventKind::NodeDeleted);
}

#[tokio::test]
async fn close_answers_the_requests_sent_before_it() {
    let server = TestServer::start(&[]);
    let client = connect(&server.addr()).await;
    let observer = connect(&server.addr()).await;
    let writes: Vec<_> = (0..50)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .create(&format!("/w{i:02}"), b"".to_vec(), CreateMode::Persistent)
                    .await
            })
        })
        .collect();
    // Let every write reach the client's queue first (they are queued in order).
    eventually("the writes to be queued or answered", WAIT, || {
        let observer = observer.clone();
        async move { (observer.get_children("/").await.ok()?.len() >= 10).then_some(()) }
    })
    .await;
    client.close().await.expect("close");
    let mut ok = 0;
    for w in writes {
        match w.await.expect("task") {
            Ok(_) => ok += 1,
            // Calls that had not reached the connection when the close was queued.
            Err(Error::Closed) => {}
            Err(e) => panic!("a write sent before the close failed: {e}"),
        }
    }
    let children = observer.get_children("/").await.expect("ls");
    assert_eq!(
        children.len(),
        ok,
        "every answered write is there, nothing else"
    );
    assert!(ok >= 10);
}

#[tokio::test]
async fn calls_time_out_after_the_request_timeout() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let client = Client::connect(
        via(&proxy, Duration::from_secs(10)).with_request_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connect");
    client
        .create("/t", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    proxy.set_mode(Mode::Blackhole);
    let started = Instant::now();
    let result = client.get_data("/t").await;
    let took = started.elapsed();
    match result {
        Err(Error::Timeout(limit)) => assert_eq!(limit, Duration::from_millis(500)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let write = client.set_data("/t", b"x".to_vec(), None).await;
    let err = write.expect_err("timed out");
    assert!(
        err.is(ErrorCode::OperationTimeout) && err.is_retryable(),
        "{err}"
    );
}

#[tokio::test]
async fn connect_reports_why_it_failed() {
    // Nothing listens on a port that was just freed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    match Client::connect(ClientConfig::new([format!("127.0.0.1:{port}")])).await {
        Err(e) => assert!(e.is_retryable(), "a refused connection is retryable: {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    let empty: [&str; 0] = [];
    assert!(matches!(
        Client::connect(ClientConfig::new(empty)).await,
        Err(Error::InvalidConfig(_))
    ));
    // A server that refuses new sessions (it is full) says so.
    let server = TestServer::start(&["--max-sessions", "1"]);
    let _only = connect(&server.addr()).await;
    match Client::connect(ClientConfig::new([server.addr()])).await {
        Err(e) => assert!(e.is(ErrorCode::LimitExceeded), "{e}"),
        Ok(_) => panic!("over max_sessions"),
    }
}

/// A lease is a session without a connection (tracked and expired like one), so it
/// takes one of `max_sessions`' places: granting one at the limit is `LimitExceeded`,
/// as a new session is, and revoking one makes room again.
#[tokio::test]
async fn leases_count_against_max_sessions() {
    let server = TestServer::start(&["--max-sessions", "3"]);
    let addr = server.addr();
    let mut raw = RawSession::new_session(&addr, 20_000).await;
    let mut leases = Vec::new();
    for xid in 1..=3u64 {
        match raw
            .request(xid, Op::GrantLease { ttl_ms: 20_000 })
            .await
            .result
        {
            Ok(OpResult::Lease { lease_id, .. }) => leases.push(lease_id),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::LimitExceeded, "{e}");
                assert!(e.message.contains("max_sessions"), "{e}");
            }
        }
    }
    assert_eq!(
        leases.len(),
        2,
        "one session and two leases fill max_sessions = 3"
    );
    match Client::connect(ClientConfig::new([addr.clone()])).await {
        Err(e) => assert!(e.is(ErrorCode::LimitExceeded), "{e}"),
        Ok(_) => panic!("a session over max_sessions"),
    }
    let revoked = raw
        .request(
            4,
            Op::RevokeLease {
                lease_id: leases[0],
            },
        )
        .await;
    assert!(revoked.result.is_ok(), "{revoked:?}");
    let _room = connect(&addr).await;
}
