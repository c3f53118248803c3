//! The client against a scripted fake server on 127.0.0.1, speaking the real protocol
//! codec: handshake, pipelining, resend after a dropped connection, watch
//! re-registration, keepalive, close, timeouts, and session expiry.
//!
//! The harness is in `common/`; every wait is bounded, nothing sleeps to synchronise.

mod common;

use common::{bounded, granted, wait_state, FakeServer, SECRET, SESSION};
use corral_client::{
    Client, ClientConfig, ConnectionState, CreateMode, Error, ErrorCode, ErrorInfo, EventKind,
    WatchEvent,
};
use corral_protocol::{HelloReply, Op, OpResult, ServerMessage, SessionRequest, Stat, WatchSet};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpListener;

/// `client.get_data_watch(path)`, which the server answers at `zxid`: its watcher.
async fn data_watch(
    client: &Client,
    conn: &mut common::Conn,
    path: &'static str,
    zxid: u64,
) -> corral_client::Watcher {
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.get_data_watch(path).await }
    });
    let request = conn.recv().await;
    assert_eq!(
        request.op,
        Op::GetData {
            path: path.into(),
            watch: true
        }
    );
    conn.reply(
        request.xid,
        zxid,
        Ok(OpResult::Data {
            data: b"old".to_vec(),
            stat: Stat::default(),
        }),
    )
    .await;
    let (_, _, watcher) = bounded("get_data_watch", call)
        .await
        .expect("join")
        .expect("get_data_watch");
    watcher
}

fn path_of(op: &Op) -> &str {
    match op {
        Op::GetData { path, .. } | Op::Exists { path, .. } => path,
        Op::Create(c) => &c.path,
        other => panic!("unexpected op {other:?}"),
    }
}

#[tokio::test]
async fn handshake_then_pipelined_requests_matched_by_xid() {
    let server = FakeServer::start().await;
    let config = server.config();
    let connecting = tokio::spawn(Client::connect(config));
    let (mut conn, hello) = server.accept(granted(10_000, 5, 100)).await;
    assert_eq!(hello.session, SessionRequest::New { ttl_ms: 10_000 });
    assert_eq!(hello.last_zxid_seen, 0);
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    assert_eq!(client.session_id(), SESSION);
    assert_eq!(client.last_zxid(), 5);
    assert_eq!(client.session_ttl(), Duration::from_millis(10_000));
    assert_eq!(
        client.state(),
        ConnectionState::Connected {
            address: server.address.clone()
        }
    );

    // Eight concurrent reads: all eight reach the server before any is answered.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.get_data(&format!("/n{i}")).await })
        })
        .collect();
    let mut requests = Vec::new();
    for _ in 0..8 {
        requests.push(conn.recv().await);
    }
    let xids: Vec<u64> = requests.iter().map(|r| r.xid).collect();
    assert!(xids.windows(2).all(|w| w[0] < w[1]), "xids {xids:?}");
    assert!(xids[0] >= 100, "xids start at next_xid: {xids:?}");
    for (i, request) in requests.iter().enumerate() {
        let path = path_of(&request.op).to_string();
        let stat = Stat {
            version: u32::try_from(i).expect("small"),
            ..Stat::default()
        };
        let result = Ok(OpResult::Data {
            data: path.into_bytes(),
            stat,
        });
        conn.reply(request.xid, 10 + i as u64, result).await;
    }
    for (i, call) in calls.into_iter().enumerate() {
        let (data, _stat) = bounded("answer", call)
            .await
            .expect("join")
            .expect("get_data");
        assert_eq!(data, format!("/n{i}").into_bytes());
    }
    assert_eq!(client.last_zxid(), 17);

    // Invalid paths never reach the server.
    assert!(matches!(
        client.get_data("no-slash").await,
        Err(Error::InvalidPath(_))
    ));
    // Server errors come back typed.
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.delete("/missing", Some(3)).await }
    });
    let request = conn.recv().await;
    assert_eq!(
        request.op,
        Op::Delete {
            path: "/missing".into(),
            version: Some(3)
        }
    );
    conn.reply(
        request.xid,
        17,
        Err(ErrorInfo::new(ErrorCode::NoNode, "/missing")),
    )
    .await;
    let err = bounded("delete", call)
        .await
        .expect("join")
        .expect_err("no node");
    assert_eq!(err.code(), Some(ErrorCode::NoNode));
}

#[tokio::test]
async fn resends_with_the_same_xid_and_reregisters_watches_after_a_drop() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 5, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let mut states = client.state_events();

    // A data watch, answered at zxid 6.
    let watcher = data_watch(&client, &mut conn, "/w", 6).await;

    // A create whose answer is lost with the connection.
    let create = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .create("/x", b"payload".to_vec(), CreateMode::Persistent)
                .await
        }
    });
    let first = conn.recv().await;
    assert!(matches!(&first.op, Op::Create(c) if c.path == "/x"));
    drop(conn);

    // The client resumes its session with what it has seen...
    let (mut conn, hello) = server.accept(granted(10_000, 6, first.xid)).await;
    assert_eq!(
        hello.session,
        SessionRequest::Resume {
            session_id: SESSION,
            secret: SECRET
        }
    );
    assert_eq!(hello.last_zxid_seen, 6);
    // ...re-registers its watch first, with a fresh, higher xid (watches are per
    // connection: a resent request may need them)...
    let set_watches = conn.recv().await;
    // ...then resends the create with its original xid.
    let resent = conn.recv().await;
    assert_eq!(resent, first);
    assert!(set_watches.xid > resent.xid);
    assert_eq!(
        set_watches.op,
        Op::SetWatches {
            last_zxid: 6,
            watches: WatchSet {
                data: vec!["/w".into()],
                ..WatchSet::default()
            }
        }
    );
    // The watch fires for a change made while the client was away; the server applied
    // the create once and answers.
    let changed = WatchEvent {
        kind: EventKind::NodeDataChanged,
        path: "/w".into(),
        zxid: 7,
    };
    conn.send(ServerMessage::Watch(changed.clone())).await;
    conn.reply(set_watches.xid, 7, Ok(OpResult::WatchesUpdated))
        .await;
    conn.reply(
        resent.xid,
        7,
        Ok(OpResult::Created {
            path: "/x".into(),
            stat: Stat::default(),
        }),
    )
    .await;

    let created = bounded("create", create)
        .await
        .expect("join")
        .expect("create");
    assert_eq!(created, "/x");
    assert_eq!(bounded("watch", watcher).await.expect("event"), changed);

    // The state went through a disconnection and back.
    let mut seen = Vec::new();
    bounded("states", async {
        while let Some(state) = states.recv().await {
            let connected = state.is_connected();
            seen.push(state);
            if connected {
                break;
            }
        }
    })
    .await;
    assert_eq!(seen.first(), Some(&ConnectionState::Disconnected));
    assert!(seen.contains(&ConnectionState::Connecting), "{seen:?}");
    assert!(client.state().is_connected());

    // New requests continue above every xid used so far.
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/x").await }
    });
    let request = conn.recv().await;
    assert!(request.xid > set_watches.xid);
    conn.reply(request.xid, 7, Ok(OpResult::Exists(Some(Stat::default()))))
        .await;
    assert!(bounded("exists", call)
        .await
        .expect("join")
        .expect("exists")
        .is_some());
}

/// A request to send again after a reconnect whose frame is over the new server's
/// `max_frame_bytes` (the servers' limits differ) fails with `FrameTooLarge` instead of
/// being sent, which would only end that connection too, and the next, while it stayed
/// pending; the session goes on on the new connection.
#[tokio::test]
async fn a_request_over_the_new_servers_frame_limit_fails_instead_of_being_sent_again() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let set = tokio::spawn({
        let client = client.clone();
        async move { client.set_data("/big", vec![7u8; 64 * 1024], None).await }
    });
    let first = conn.recv().await;
    assert!(matches!(&first.op, Op::SetData { path, .. } if path == "/big"));
    drop(conn);

    let mut smaller = granted(10_000, 1, first.xid);
    smaller.max_frame_bytes = 16 * 1024;
    let (mut conn, _) = server.accept(smaller).await;
    let err = bounded("set", set)
        .await
        .expect("join")
        .expect_err("over the new server's limit");
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");
    assert!(err.to_string().contains("not sent again"), "{err}");

    // The big frame was not sent: the next request the server reads is the next call.
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/x").await }
    });
    let request = conn.recv().await;
    assert!(matches!(&request.op, Op::Exists { path, .. } if path == "/x"));
    assert!(request.xid > first.xid);
    conn.reply(request.xid, 2, Ok(OpResult::Exists(None))).await;
    assert_eq!(
        bounded("exists", call)
            .await
            .expect("join")
            .expect("exists"),
        None
    );
    assert!(client.state().is_connected());
}

#[tokio::test]
async fn session_expired_fails_pending_and_future_calls() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let mut events = client.watch_events();

    let (_, watcher) = {
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.exists_watch("/e").await }
        });
        let request = conn.recv().await;
        conn.reply(request.xid, 1, Ok(OpResult::Exists(None))).await;
        bounded("exists_watch", call)
            .await
            .expect("join")
            .expect("exists_watch")
    };
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.get_data("/p").await }
    });
    conn.recv().await;
    conn.send(ServerMessage::Goodbye(ErrorInfo::from_code(
        ErrorCode::SessionExpired,
    )))
    .await;

    let err = bounded("pending call", pending)
        .await
        .expect("join")
        .expect_err("expired");
    assert!(matches!(err, Error::SessionExpired), "{err:?}");
    assert!(matches!(
        bounded("watcher", watcher).await,
        Err(Error::SessionExpired)
    ));
    assert!(matches!(
        bounded("events", events.recv()).await,
        Some(Err(Error::SessionExpired))
    ));
    wait_state(&client, ConnectionState::Expired).await;
    assert!(matches!(
        client.exists("/a").await,
        Err(Error::SessionExpired)
    ));
    assert!(!Error::SessionExpired.is_retryable());
    // Closing an expired client is fine.
    assert!(client.close().await.is_ok());
}

#[tokio::test]
async fn resume_refused_as_expired_ends_the_client() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.sync("/").await }
    });
    conn.recv().await;
    drop(conn);
    let (mut framed, hello) = server.hello().await;
    assert!(matches!(hello.session, SessionRequest::Resume { .. }));
    bounded(
        "refuse",
        framed.send(HelloReply::Refused(ErrorInfo::from_code(
            ErrorCode::SessionExpired,
        ))),
    )
    .await
    .expect("send");
    let err = bounded("pending", pending)
        .await
        .expect("join")
        .expect_err("expired");
    assert!(matches!(err, Error::SessionExpired));
    assert_eq!(client.state(), ConnectionState::Expired);
}

#[tokio::test]
async fn idle_client_pings_and_requests_time_out() {
    let server = FakeServer::start().await;
    let config = server
        .config()
        .with_request_timeout(Duration::from_millis(200));
    let connecting = tokio::spawn(Client::connect(config));
    // A 900 ms TTL: a ping is due every 300 ms.
    let (mut conn, _) = server.accept(granted(900, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let initial_lease = client.lease_deadline();
    let ping = conn.recv_any().await;
    assert_eq!(ping.op, Op::Ping);
    conn.reply(ping.xid, 1, Ok(OpResult::Pong)).await;
    // Answers are handled in order: once this one is back, so is the pong.
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/a").await }
    });
    let request = conn.recv().await;
    conn.reply(request.xid, 1, Ok(OpResult::Exists(None))).await;
    assert_eq!(
        bounded("exists", call)
            .await
            .expect("join")
            .expect("exists"),
        None
    );
    // The answered requests renewed the lease, from when they were sent.
    assert!(client.lease_deadline() > initial_lease);

    // The server never answers this one.
    let err = client.get_data("/slow").await.expect_err("timeout");
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(path_of(&conn.recv().await.op), "/slow");
}

#[tokio::test]
async fn close_ends_the_session_and_the_client() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let closing = tokio::spawn({
        let client = client.clone();
        async move { client.close().await }
    });
    let request = conn.recv().await;
    assert_eq!(request.op, Op::CloseSession);
    conn.reply(request.xid, 2, Ok(OpResult::Closed)).await;
    bounded("close", closing)
        .await
        .expect("join")
        .expect("close");
    wait_state(&client, ConnectionState::Closed).await;
    assert!(matches!(client.exists("/a").await, Err(Error::Closed)));
    conn.closed().await;
}

#[tokio::test]
async fn dropping_every_handle_closes_the_session() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    drop(client.clone());
    drop(client);
    let request = conn.recv().await;
    assert_eq!(request.op, Op::CloseSession);
    conn.reply(request.xid, 2, Ok(OpResult::Closed)).await;
    conn.closed().await;
}

#[tokio::test]
async fn unreachable_servers_fail_calls_with_connection_loss_after_the_lease() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(300, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.get_data("/p").await }
    });
    conn.recv().await;
    // The server goes away for good.
    drop(conn);
    drop(server);
    let err = bounded("pending", pending)
        .await
        .expect("join")
        .expect_err("connection loss");
    assert!(matches!(err, Error::ConnectionLoss), "{err:?}");
    assert!(matches!(
        client.exists("/q").await,
        Err(Error::ConnectionLoss)
    ));
    assert!(!client.state().is_connected());
    // Closing while nothing can be reached closes locally.
    client.close().await.expect("close");
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[tokio::test]
async fn connect_skips_a_dead_server() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let server = FakeServer::start().await;
    let config = ClientConfig::new([dead.clone(), server.address.clone()])
        .with_connect_timeout(Duration::from_secs(2));
    let connecting = tokio::spawn(Client::connect(config));
    let (_conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    assert!(client.state().is_connected());

    // With only dead servers, connect fails with a retryable error.
    let err = Client::connect(ClientConfig::new([dead]))
        .await
        .expect_err("nobody listens");
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn in_flight_limit_holds_back_extra_requests() {
    let server = FakeServer::start().await;
    let config = server.config().with_max_in_flight(2);
    let connecting = tokio::spawn(Client::connect(config));
    let (mut conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.exists(&format!("/n{i}")).await })
        })
        .collect();
    let a = conn.recv().await;
    let b = conn.recv().await;
    // The third waits for a slot: nothing more arrives while two are unanswered.
    let third = tokio::time::timeout(Duration::from_millis(300), conn.framed.next()).await;
    assert!(third.is_err(), "a third request was sent: {third:?}");
    conn.reply(a.xid, 1, Ok(OpResult::Exists(None))).await;
    let c = conn.recv().await;
    assert!(c.xid > b.xid);
    conn.reply(b.xid, 1, Ok(OpResult::Exists(None))).await;
    conn.reply(c.xid, 1, Ok(OpResult::Exists(None))).await;
    for call in calls {
        assert_eq!(
            bounded("call", call).await.expect("join").expect("exists"),
            None
        );
    }
}

#[tokio::test]
async fn persistent_watch_stream_and_removal() {
    use corral_client::{AddWatchMode, WatcherKind};

    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let mut all = client.watch_events();

    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .add_watch("/jobs", AddWatchMode::PersistentRecursive)
                .await
        }
    });
    let request = conn.recv().await;
    assert_eq!(
        request.op,
        Op::AddWatch {
            path: "/jobs".into(),
            mode: AddWatchMode::PersistentRecursive
        }
    );
    conn.reply(request.xid, 2, Ok(OpResult::WatchesUpdated))
        .await;
    let mut stream = bounded("add_watch", call)
        .await
        .expect("join")
        .expect("add_watch");

    for (zxid, path) in [(3, "/jobs/a"), (4, "/elsewhere"), (5, "/jobs/a/b")] {
        conn.send(ServerMessage::Watch(WatchEvent {
            kind: EventKind::NodeCreated,
            path: path.into(),
            zxid,
        }))
        .await;
    }
    for want in [3, 5] {
        let event = bounded("event", stream.next())
            .await
            .expect("open")
            .expect("event");
        assert_eq!(event.zxid, want);
    }
    // The all-events stream sees everything, watched or not.
    for want in [3, 4, 5] {
        let event = bounded("event", all.recv())
            .await
            .expect("open")
            .expect("event");
        assert_eq!(event.zxid, want);
    }

    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .remove_watches("/jobs", WatcherKind::Persistent)
                .await
        }
    });
    let request = conn.recv().await;
    conn.reply(request.xid, 5, Ok(OpResult::WatchesUpdated))
        .await;
    bounded("remove", call)
        .await
        .expect("join")
        .expect("remove");
    assert!(matches!(
        bounded("end", stream.next()).await,
        Some(Err(Error::WatchRemoved))
    ));
    assert!(bounded("end", stream.next()).await.is_none());
}

#[tokio::test]
async fn transaction_builds_one_multi() {
    use corral_protocol::{MultiOp, MultiResult};

    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    // Paths are checked before anything is sent.
    let bad = client
        .transaction()
        .check("/ok", 1)
        .delete("bad", None)
        .commit()
        .await;
    assert!(matches!(bad, Err(Error::InvalidPath(_))));

    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .transaction()
                .check("/cfg", 3)
                .set_data("/cfg", b"v".to_vec(), Some(3))
                .create("/q/", Vec::new(), CreateMode::PersistentSequential)
                .commit()
                .await
        }
    });
    let request = conn.recv().await;
    let Op::Multi(ops) = &request.op else {
        panic!("not a multi: {:?}", request.op);
    };
    assert_eq!(ops.len(), 3);
    assert_eq!(
        ops[0],
        MultiOp::Check {
            path: "/cfg".into(),
            version: 3
        }
    );
    let results = vec![
        MultiResult::Checked,
        MultiResult::SetData {
            stat: Stat::default(),
        },
        MultiResult::Created {
            path: "/q/0000000001".into(),
            stat: Stat::default(),
        },
    ];
    conn.reply(request.xid, 9, Ok(OpResult::Multi(results.clone())))
        .await;
    assert_eq!(
        bounded("multi", call).await.expect("join").expect("multi"),
        results
    );
}

/// Runs `corralctl` against the fake server, which answers its one request with
/// `answer` and then its close.
async fn corralctl(
    server: &FakeServer,
    args: &[&str],
    answer: Result<OpResult, ErrorInfo>,
) -> (Op, std::process::Output) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_corralctl"))
        .arg("-s")
        .arg(&server.address)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn corralctl");
    let (mut conn, _) = server.accept(granted(10_000, 1, 1)).await;
    let request = conn.recv().await;
    conn.reply(request.xid, 2, answer).await;
    let close = conn.recv().await;
    assert_eq!(close.op, Op::CloseSession);
    conn.reply(close.xid, 3, Ok(OpResult::Closed)).await;
    let output = bounded("corralctl", child.wait_with_output())
        .await
        .expect("corralctl output");
    (request.op, output)
}

#[tokio::test]
async fn corralctl_prints_text_hex_json_and_errors() {
    let server = FakeServer::start().await;
    let data = |bytes: &[u8]| {
        Ok(OpResult::Data {
            data: bytes.to_vec(),
            stat: Stat::default(),
        })
    };

    let (op, out) = corralctl(&server, &["get", "/a"], data(b"hello")).await;
    assert_eq!(
        op,
        Op::GetData {
            path: "/a".into(),
            watch: false
        }
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let (_, out) = corralctl(&server, &["--json", "get", "/b"], data(&[0xff, 0x01])).await;
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!(json["data"], "ff01");
    assert_eq!(json["encoding"], "hex");
    assert_eq!(json["stat"]["version"], 0);

    let no_node = Err(ErrorInfo::new(ErrorCode::NoNode, "no node at /c"));
    let (_, out) = corralctl(&server, &["stat", "/c"], no_node).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("corralctl: "), "{stderr}");
    assert!(stderr.contains("NoNode"), "{stderr}");
}

/// Events do not move the zxid a reconnect's `SetWatches` sends; responses do. Several
/// events share one zxid (the changes of one multi; the events of a snapshot install,
/// which carry the installed zxid), so a connection lost after the first of them loses
/// the others: `/b`'s watch must be registered again from the last response's zxid, so
/// that the server fires it for the change the lost event told of.
#[tokio::test]
async fn events_sharing_a_zxid_do_not_count_as_seen_until_a_response() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 5, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let mut watchers = Vec::new();
    for path in ["/a", "/b"] {
        watchers.push(data_watch(&client, &mut conn, path, 10).await);
    }
    // A multi at zxid 20 changed both; /a's event arrives, then the connection is lost.
    let a_changed = WatchEvent {
        kind: EventKind::NodeDataChanged,
        path: "/a".into(),
        zxid: 20,
    };
    conn.send(ServerMessage::Watch(a_changed.clone())).await;
    let mut watchers = watchers.into_iter();
    let a = watchers.next().expect("/a");
    assert_eq!(bounded("/a's event", a).await.expect("event"), a_changed);
    drop(conn);

    let (mut conn, hello) = server.accept(granted(10_000, 20, 3)).await;
    assert_eq!(hello.last_zxid_seen, 20, "never back in time");
    let again = conn.recv().await;
    assert_eq!(
        again.op,
        Op::SetWatches {
            last_zxid: 10,
            watches: WatchSet {
                data: vec!["/b".into()],
                ..WatchSet::default()
            }
        }
    );
    let b_changed = WatchEvent {
        kind: EventKind::NodeDataChanged,
        path: "/b".into(),
        zxid: 20,
    };
    conn.send(ServerMessage::Watch(b_changed.clone())).await;
    conn.reply(again.xid, 20, Ok(OpResult::WatchesUpdated))
        .await;
    let b = watchers.next().expect("/b");
    assert_eq!(bounded("/b's event", b).await.expect("event"), b_changed);
}

/// The events a `SetWatches` fires at once carry the server's current zxid, not the
/// changes' own: if the connection is lost before its answer, the next `SetWatches`
/// still asks from the zxid seen before the reconnect, so the changes whose events were
/// lost with the connection fire again instead of being skipped.
#[tokio::test]
async fn watches_registered_again_keep_the_last_zxid_until_the_server_answers() {
    let server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let (mut conn, _) = server.accept(granted(10_000, 5, 1)).await;
    let client = bounded("connect", connecting)
        .await
        .expect("join")
        .expect("connect");
    let mut watchers = Vec::new();
    for path in ["/a", "/b"] {
        watchers.push(data_watch(&client, &mut conn, path, 10).await);
    }
    drop(conn);

    // Both nodes changed while the client was away (zxids 40 and 55, the server is at
    // 60). The first re-registration fires /a's event, stamped 60, then the connection
    // is lost before /b's event and the answer.
    let (mut conn, _) = server.accept(granted(10_000, 60, 3)).await;
    let first = conn.recv().await;
    let both = WatchSet {
        data: vec!["/a".into(), "/b".into()],
        ..WatchSet::default()
    };
    assert_eq!(
        first.op,
        Op::SetWatches {
            last_zxid: 10,
            watches: both
        }
    );
    let a_changed = WatchEvent {
        kind: EventKind::NodeDataChanged,
        path: "/a".into(),
        zxid: 60,
    };
    conn.send(ServerMessage::Watch(a_changed.clone())).await;
    let mut watchers = watchers.into_iter();
    let a = watchers.next().expect("/a");
    assert_eq!(bounded("/a's event", a).await.expect("event"), a_changed);
    drop(conn);

    // /b's change (zxid 55) must still fire: the client asks from zxid 10 again.
    let (mut conn, _) = server.accept(granted(10_000, 60, 4)).await;
    let second = conn.recv().await;
    assert_eq!(
        second.op,
        Op::SetWatches {
            last_zxid: 10,
            watches: WatchSet {
                data: vec!["/b".into()],
                ..WatchSet::default()
            }
        }
    );
    let b_changed = WatchEvent {
        kind: EventKind::NodeDataChanged,
        path: "/b".into(),
        zxid: 60,
    };
    conn.send(ServerMessage::Watch(b_changed.clone())).await;
    conn.reply(second.xid, 60, Ok(OpResult::WatchesUpdated))
        .await;
    let b = watchers.next().expect("/b");
    assert_eq!(bounded("/b's event", b).await.expect("event"), b_changed);

    // Answered: the next reconnect asks from the zxid reached.
    let exists = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/c").await }
    });
    let request = conn.recv().await;
    conn.reply(request.xid, 61, Ok(OpResult::Exists(None)))
        .await;
    bounded("exists", exists)
        .await
        .expect("join")
        .expect("exists");
    let watcher = tokio::spawn({
        let client = client.clone();
        async move { client.exists_watch("/d").await }
    });
    let request = conn.recv().await;
    conn.reply(request.xid, 62, Ok(OpResult::Exists(None)))
        .await;
    // Kept: a watch nobody listens to is not registered again.
    let _d = bounded("exists_watch", watcher)
        .await
        .expect("join")
        .expect("exists_watch");
    drop(conn);
    let (mut conn, _) = server.accept(granted(10_000, 62, 7)).await;
    let third = conn.recv().await;
    assert!(
        matches!(&third.op, Op::SetWatches { last_zxid: 62, .. }),
        "{:?}",
        third.op
    );
}

#[tokio::test]
async fn a_call_given_up_before_it_was_sent_is_not_sent() {
    let server = FakeServer::start().await;
    let config = server
        .config()
        .with_max_in_flight(1)
        .with_request_timeout(Duration::from_millis(500));
    let (client, mut conn) = server.connect_with(config, 10_000).await;
    // The only slot is taken by a read the server does not answer yet...
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/a").await }
    });
    let a = conn.recv().await;
    // ...so a create waits for it, and its caller gives up (request_timeout).
    let create = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .create("/queue/n-", Vec::new(), CreateMode::PersistentSequential)
                .await
        }
    });
    let err = bounded("the create to time out", create)
        .await
        .expect("join")
        .expect_err("timed out");
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let _ = bounded("the first call", first).await;
    conn.reply(a.xid, 1, Ok(OpResult::Exists(None))).await;
    // The caller was told it timed out and will likely retry: the create must not
    // reach the server (a second sequential node). The next request is a later call's.
    let later = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/c").await }
    });
    let next = conn.recv().await;
    assert_eq!(
        next.op,
        Op::Exists {
            path: "/c".into(),
            watch: false
        },
        "a call its caller gave up on was sent"
    );
    conn.reply(next.xid, 1, Ok(OpResult::Exists(None))).await;
    assert_eq!(
        bounded("the later call", later)
            .await
            .expect("join")
            .expect("exists"),
        None
    );
}

#[tokio::test]
async fn remove_watches_resent_after_a_drop_finds_the_watch_registered_again() {
    use corral_client::{AddWatchMode, WatcherKind};

    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.add_watch("/jobs", AddWatchMode::Persistent).await }
    });
    let request = conn.recv().await;
    conn.reply(request.xid, 2, Ok(OpResult::WatchesUpdated))
        .await;
    let mut stream = bounded("add_watch", call)
        .await
        .expect("join")
        .expect("add_watch");

    // A removal whose answer is lost with the connection.
    let remove = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .remove_watches("/jobs", WatcherKind::Persistent)
                .await
        }
    });
    let first = conn.recv().await;
    assert!(matches!(first.op, Op::RemoveWatches { .. }), "{first:?}");
    drop(conn);

    // The new connection has no watches until `SetWatches` registers them again; a
    // server answers a removal that comes first with `NoWatcher` (and the watch the
    // caller removed would then be registered again after it).
    let (mut conn, _) = server.accept(granted(10_000, 2, first.xid)).await;
    let mut registered = false;
    let mut removed = None;
    for _ in 0..2 {
        let request = conn.recv().await;
        let result = match &request.op {
            Op::SetWatches { watches, .. } => {
                assert_eq!(watches.persistent, vec!["/jobs".to_string()]);
                registered = true;
                Ok(OpResult::WatchesUpdated)
            }
            Op::RemoveWatches { .. } => {
                assert_eq!(request, first, "resent with its xid");
                removed = Some(registered);
                if registered {
                    registered = false;
                    Ok(OpResult::WatchesUpdated)
                } else {
                    Err(ErrorInfo::new(ErrorCode::NoWatcher, "/jobs"))
                }
            }
            other => panic!("unexpected {other:?}"),
        };
        conn.reply(request.xid, 2, result).await;
    }
    assert_eq!(removed, Some(true), "the removal came before SetWatches");
    assert!(
        !registered,
        "the removed watch stays registered on the server"
    );
    bounded("remove", remove)
        .await
        .expect("join")
        .expect("remove_watches");
    assert!(matches!(
        bounded("end", stream.next()).await,
        Some(Err(Error::WatchRemoved))
    ));
}

#[tokio::test]
async fn connect_returns_a_connected_client() {
    let server = FakeServer::start().await;
    let config = server.config();
    let address = server.address.clone();
    let accepting = tokio::spawn(async move {
        let (conn, _) = server.accept(granted(10_000, 1, 1)).await;
        (server, conn)
    });
    // Awaited here, not in a task: nothing else runs between its return and the check.
    let client = bounded("connect", Client::connect(config))
        .await
        .expect("connect");
    assert_eq!(client.state(), ConnectionState::Connected { address });
    let (_server, _conn) = bounded("accept", accepting).await.expect("join");
}

/// A server that grants a session whose next xid is near the top of the range (no
/// session ever counts that far) is refused at the handshake: the client would run out
/// of xids at its next request (an overflow panic in a debug build, a wrap to xids the
/// session already used in a release one).
#[tokio::test]
async fn a_grant_with_an_absurd_next_xid_is_refused() {
    let server = FakeServer::start().await;
    let config = server
        .config()
        .with_connect_timeout(Duration::from_millis(500));
    let connecting = tokio::spawn(Client::connect(config));
    server.accept(granted(10_000, 1, u64::MAX)).await;
    let result = bounded("connect", connecting).await.expect("join");
    let Err(err) = result else {
        panic!("the grant was accepted");
    };
    assert!(err.to_string().contains("xid"), "{err}");
}

/// Sets `/a` `n` times, one after the other, answering each; returns every request the
/// client sent meanwhile (pings answered and left out), and answers `Acknowledge`s with
/// `ack_answer`.
async fn sets_one_by_one(
    client: &Client,
    conn: &mut common::Conn,
    n: usize,
    ack_answer: fn() -> Result<OpResult, ErrorInfo>,
) -> Vec<corral_protocol::Request> {
    let mut seen = Vec::new();
    for i in 0..n {
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.set_data("/a", vec![i as u8], None).await }
        });
        loop {
            let request = conn.recv_any().await;
            seen.push(request.clone());
            match request.op {
                Op::Ping => {
                    seen.pop();
                    conn.reply(request.xid, 1, Ok(OpResult::Pong)).await;
                }
                Op::Acknowledge { .. } => conn.reply(request.xid, 1, ack_answer()).await,
                Op::SetData { .. } => {
                    let stat = Stat::default();
                    conn.reply(request.xid, 1, Ok(OpResult::SetData { stat }))
                        .await;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        bounded("set", call).await.expect("join").expect("set");
    }
    seen
}

/// Before a write, once the lowest xid awaiting an answer moved 16 past the last
/// acknowledgement, the client tells the server which xids it will never send again
/// (`Acknowledge`), so the server can forget their results; a server that does not
/// know the operation (`Unimplemented`) is not sent another.
#[tokio::test]
async fn acknowledges_answered_xids_before_writes_until_the_server_does_not_know_how() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(60_000).await;
    let pong = || Ok(OpResult::Pong);
    let seen = sets_one_by_one(&client, &mut conn, 40, pong).await;
    let acks: Vec<(usize, u64, u64)> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.op {
            Op::Acknowledge { answered_below } => Some((i, r.xid, answered_below)),
            _ => None,
        })
        .collect();
    // Xids 1 to 15 are sets; the 16th set is preceded by an acknowledgement of all
    // of them (nothing else awaits an answer), and so is the set once 16 more xids
    // (the acknowledgement's own included) were answered.
    assert_eq!(
        acks.iter().map(|a| (a.1, a.2)).collect::<Vec<_>>(),
        [(16, 16), (32, 32)],
        "{seen:?}"
    );
    for (i, _, _) in &acks {
        assert!(
            matches!(seen[i + 1].op, Op::SetData { .. }),
            "a write follows each: {seen:?}"
        );
    }

    // A server that answers `Unimplemented` gets no more of them.
    let unknown = || {
        Err(ErrorInfo::new(
            ErrorCode::Unimplemented,
            "unknown operation 23",
        ))
    };
    let seen = sets_one_by_one(&client, &mut conn, 20, unknown).await;
    let acks = seen
        .iter()
        .filter(|r| matches!(r.op, Op::Acknowledge { .. }))
        .count();
    assert_eq!(acks, 1, "{seen:?}");
    let seen = sets_one_by_one(&client, &mut conn, 40, unknown).await;
    assert!(
        seen.iter().all(|r| matches!(r.op, Op::SetData { .. })),
        "{seen:?}"
    );
}

/// A server older than the `Unimplemented` rule ends the connection on an operation it
/// cannot decode (`Goodbye(Malformed)`): the client resumes its session, resends its
/// write (not the acknowledgement), and sends no more acknowledgements.
#[tokio::test]
async fn a_server_that_ends_the_connection_on_acknowledge_is_not_sent_another() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(60_000).await;
    let pong = || Ok(OpResult::Pong);
    sets_one_by_one(&client, &mut conn, 15, pong).await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.set_data("/a", b"x".to_vec(), None).await }
    });
    let ack = conn.recv_any().await;
    assert_eq!(ack.op, Op::Acknowledge { answered_below: 16 });
    let write = conn.recv_any().await;
    assert!(matches!(write.op, Op::SetData { .. }), "{write:?}");
    let malformed = ErrorInfo::new(ErrorCode::Malformed, "unknown variant index 23");
    conn.send(ServerMessage::Goodbye(malformed)).await;
    drop(conn);

    let (mut conn, _) = server.accept(granted(60_000, 1, write.xid)).await;
    let resent = conn.recv_any().await;
    assert_eq!(resent, write);
    let stat = Stat::default();
    conn.reply(write.xid, 2, Ok(OpResult::SetData { stat }))
        .await;
    bounded("set", call).await.expect("join").expect("set");
    let seen = sets_one_by_one(&client, &mut conn, 40, pong).await;
    assert!(
        seen.iter().all(|r| matches!(r.op, Op::SetData { .. })),
        "{seen:?}"
    );
}

/// `locks_pages` against a server older than `GetLocksPage`: the `Unimplemented` answer
/// to the first page makes it ask `GetLocks` once and return that as the only page.
#[tokio::test]
async fn locks_pages_fall_back_to_one_get_locks_on_an_older_server() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let lock = corral_protocol::LockState {
        lock: "/l/a".into(),
        lock_delay_ms: 0,
        delayed_until_ms: 0,
        queue: Vec::new(),
    };
    let listing = tokio::spawn(async move {
        let mut pages = client.locks_pages("/l", 100);
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await? {
            all.push(page);
        }
        Ok::<_, Error>(all)
    });
    let first = conn.recv().await;
    assert!(
        matches!(&first.op, Op::GetLocksPage { path, after, max_locks: 100, .. }
            if path == "/l" && after.is_empty()),
        "{:?}",
        first.op
    );
    let older = ErrorInfo::new(ErrorCode::Unimplemented, "an older server");
    conn.reply(first.xid, 1, Err(older)).await;
    let whole = conn.recv().await;
    assert_eq!(whole.op, Op::GetLocks { path: "/l".into() });
    conn.reply(whole.xid, 1, Ok(OpResult::Locks(vec![lock.clone()])))
        .await;
    let pages = bounded("the listing", listing)
        .await
        .expect("join")
        .expect("listed");
    assert_eq!(
        pages,
        [corral_client::LocksPage {
            locks: vec![lock],
            more: false
        }]
    );
}

/// A persistent watch registered again after a reconnect fires nothing for what changed
/// while the client was away (ZooKeeper's semantics), and its stream says so: once the
/// server answers the `SetWatches`, the stream reads `WatchResumed` with the zxid range
/// that may have fired no event, then goes on with the next events. A reconnect while
/// nothing changed (the answer at the zxid the client had seen) says nothing.
#[tokio::test]
async fn a_persistent_watch_stream_is_told_of_a_reconnect_and_goes_on() {
    use corral_client::AddWatchMode;

    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let mut all = client.watch_events();
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .add_watch("/jobs", AddWatchMode::PersistentRecursive)
                .await
        }
    });
    let request = conn.recv().await;
    conn.reply(request.xid, 10, Ok(OpResult::WatchesUpdated))
        .await;
    let mut stream = bounded("add_watch", call)
        .await
        .expect("join")
        .expect("add_watch");
    let event = |zxid| WatchEvent {
        kind: EventKind::NodeCreated,
        path: "/jobs/a".into(),
        zxid,
    };
    drop(conn);

    let (mut conn, _) = server.accept(granted(10_000, 25, 2)).await;
    let again = conn.recv().await;
    assert!(
        matches!(&again.op, Op::SetWatches { last_zxid: 10, watches }
            if watches.persistent_recursive == ["/jobs"]),
        "{:?}",
        again.op
    );
    conn.reply(again.xid, 25, Ok(OpResult::WatchesUpdated))
        .await;
    conn.send(ServerMessage::Watch(event(26))).await;
    match bounded("the resume", stream.next()).await {
        Some(Err(Error::WatchResumed {
            since_zxid: 10,
            until_zxid: 25,
        })) => {}
        other => panic!("expected WatchResumed from 10 to 25, got {other:?}"),
    }
    let next = bounded("the next event", stream.next()).await;
    assert_eq!(
        next.expect("the stream goes on").expect("an event"),
        event(26)
    );
    // The stream of every event is told too.
    assert!(matches!(
        bounded("the resume, on every event's stream", all.recv()).await,
        Some(Err(Error::WatchResumed {
            since_zxid: 10,
            until_zxid: 25
        }))
    ));
    let next = bounded("the next of every event", all.recv()).await;
    assert_eq!(next.expect("goes on").expect("an event"), event(26));
    // A response at zxid 26 says every event up to it was delivered (an event alone
    // does not: others may share its zxid).
    let exists = tokio::spawn({
        let client = client.clone();
        async move { client.exists("/c").await }
    });
    let request = conn.recv().await;
    conn.reply(request.xid, 26, Ok(OpResult::Exists(None)))
        .await;
    bounded("exists", exists)
        .await
        .expect("join")
        .expect("exists");

    // Nothing changed while away this time: no resume, just the next event.
    drop(conn);
    let (mut conn, _) = server.accept(granted(10_000, 26, 3)).await;
    let again = conn.recv().await;
    assert!(
        matches!(&again.op, Op::SetWatches { last_zxid: 26, .. }),
        "{:?}",
        again.op
    );
    conn.reply(again.xid, 26, Ok(OpResult::WatchesUpdated))
        .await;
    conn.send(ServerMessage::Watch(event(27))).await;
    let next = bounded("the event after", stream.next()).await;
    assert_eq!(next.expect("open").expect("an event"), event(27));
}
