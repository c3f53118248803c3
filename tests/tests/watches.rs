//! Watches: one-shot data, exists and child watches fire once with the right kind and
//! path; persistent and recursive watches keep firing until removed; a watch event
//! reaches the client before the answer to any later request; and watches are
//! re-registered after a reconnect, firing for what changed while the client was away.

use corral_client::{
    AddWatchMode, Client, ClientConfig, ConnectionState, CreateMode, Error, ErrorCode, EventKind,
    WatchEvent, WatchStream, Watcher, WatcherKind,
};
use corral_tests::proxy::{Mode, Proxy};
use corral_tests::TestServer;
use futures::FutureExt;
use std::net::SocketAddr;
use std::time::Duration;

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

async fn fired(watcher: Watcher) -> WatchEvent {
    tokio::time::timeout(WAIT, watcher)
        .await
        .expect("the watch fires in time")
        .expect("an event, not an error")
}

fn assert_event(event: &WatchEvent, kind: EventKind, path: &str) {
    assert_eq!((event.kind, event.path.as_str()), (kind, path), "{event:?}");
}

/// The next item of a stream, bounded.
async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(WAIT, stream.recv()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Everything already delivered to a stream, without waiting.
fn drain(stream: &mut WatchStream) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while let Some(Some(item)) = stream.recv().now_or_never() {
        out.push(item.expect("an event"));
    }
    out
}

/// Waits (bounded) for the client to reach a state matching `want`.
async fn wait_state(
    states: &mut corral_client::StateStream,
    want: impl Fn(&ConnectionState) -> bool,
) {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(state) = states.recv().await {
            if want(&state) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "state not reached: {found:?}");
}

/// Cuts the proxy, waits until the client noticed, lets `away` run, then heals it and
/// waits until the client is connected again.
async fn while_disconnected<F: std::future::Future<Output = ()>>(
    proxy: &Proxy,
    client: &Client,
    away: F,
) {
    let mut states = client.state_events();
    let session = client.session_id();
    proxy.set_mode(Mode::Cut);
    wait_state(&mut states, |s| *s == ConnectionState::Disconnected).await;
    away.await;
    proxy.set_mode(Mode::Pass);
    wait_state(&mut states, ConnectionState::is_connected).await;
    assert_eq!(client.session_id(), session, "same session after reconnect");
}

#[tokio::test]
async fn one_shot_watches_fire_once_with_the_right_kind_and_path() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let mut all = a.watch_events();
    b.create("/x", b"0".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");

    // Data watch: fired by the first change only.
    let (data, _, watcher) = a.get_data_watch("/x").await.expect("get_data_watch");
    assert_eq!(data, b"0");
    let stat1 = b.set_data("/x", b"1".to_vec(), None).await.expect("set");
    b.set_data("/x", b"2".to_vec(), None).await.expect("set");
    let event = fired(watcher).await;
    assert_event(&event, EventKind::NodeDataChanged, "/x");
    assert_eq!(
        event.zxid, stat1.mzxid,
        "the zxid of the change that fired it"
    );
    a.sync("/").await.expect("sync");
    let events = drain(&mut all);
    assert_eq!(events, vec![event], "one event for two changes");

    // Exists watch on a missing node: fires on creation.
    let (stat, watcher) = a.exists_watch("/y").await.expect("exists_watch");
    assert!(stat.is_none());
    let created = b
        .create_with(corral_client::CreateRequest {
            path: "/y".into(),
            data: vec![],
            mode: CreateMode::Persistent,
            make_parents: false,
        })
        .await
        .expect("create");
    let event = fired(watcher).await;
    assert_event(&event, EventKind::NodeCreated, "/y");
    assert_eq!(event.zxid, created.stat.czxid);

    // Exists watch on an existing node: fires on a data change, then on deletion.
    let (stat, watcher) = a.exists_watch("/y").await.expect("exists_watch");
    assert!(stat.is_some());
    b.set_data("/y", b"v".to_vec(), None).await.expect("set");
    assert_event(&fired(watcher).await, EventKind::NodeDataChanged, "/y");
    let (_, watcher) = a.exists_watch("/y").await.expect("exists_watch");
    b.delete("/y", None).await.expect("delete");
    assert_event(&fired(watcher).await, EventKind::NodeDeleted, "/y");

    // Data watch: fires on deletion.
    let (_, _, watcher) = a.get_data_watch("/x").await.expect("get_data_watch");
    b.delete("/x", None).await.expect("delete");
    assert_event(&fired(watcher).await, EventKind::NodeDeleted, "/x");

    // Child watch: not fired by the parent's data or a grandchild, fired by a child.
    b.create("/p", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    b.create("/p/c", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let (children, _, mut watcher) = a.get_children_watch("/p").await.expect("watch");
    assert_eq!(children, vec!["c".to_string()]);
    b.set_data("/p", b"d".to_vec(), None).await.expect("set");
    b.create("/p/c/g", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("grandchild");
    b.set_data("/p/c", b"d".to_vec(), None).await.expect("set");
    a.sync("/").await.expect("sync");
    assert!(watcher.try_take().is_none(), "not fired by those changes");
    b.delete("/p/c/g", None).await.expect("delete");
    b.delete("/p/c", None).await.expect("delete");
    assert_event(&fired(watcher).await, EventKind::NodeChildrenChanged, "/p");
    // Child watch: fires NodeDeleted when the node itself goes.
    let (_, _, watcher) = a.get_children_watch("/p").await.expect("watch");
    b.delete("/p", None).await.expect("delete");
    assert_event(&fired(watcher).await, EventKind::NodeDeleted, "/p");

    // Two watches of one session on one node: both fire, from one event.
    b.create("/z", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    drain(&mut all);
    let (_, _, w1) = a.get_data_watch("/z").await.expect("watch");
    let (_, w2) = a.exists_watch("/z").await.expect("watch");
    b.set_data("/z", b"1".to_vec(), None).await.expect("set");
    let (e1, e2) = (fired(w1).await, fired(w2).await);
    assert_eq!(e1, e2);
    a.sync("/").await.expect("sync");
    assert_eq!(drain(&mut all), vec![e1], "the session gets one event");

    // A client's own writes fire its own watches too.
    let (_, _, watcher) = a.get_data_watch("/z").await.expect("watch");
    a.set_data("/z", b"self".to_vec(), None).await.expect("set");
    assert_event(&fired(watcher).await, EventKind::NodeDataChanged, "/z");
}

#[tokio::test]
async fn persistent_watches_keep_firing_until_removed() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let mut stream = a
        .add_watch("/pw", AddWatchMode::Persistent)
        .await
        .expect("add_watch on a missing node");

    b.create("/pw", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    for i in 0..3 {
        b.set_data("/pw", vec![i], None).await.expect("set");
    }
    b.create("/pw/c", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("child");
    b.set_data("/pw/c", b"ignored".to_vec(), None)
        .await
        .expect("child data: not reported by a non-recursive watch");
    b.delete("/pw/c", None).await.expect("delete child");
    b.delete("/pw", None).await.expect("delete");
    b.create("/pw", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("again");
    let expected = [
        EventKind::NodeCreated,
        EventKind::NodeDataChanged,
        EventKind::NodeDataChanged,
        EventKind::NodeDataChanged,
        EventKind::NodeChildrenChanged,
        EventKind::NodeChildrenChanged,
        EventKind::NodeDeleted,
        EventKind::NodeCreated,
    ];
    let mut last_zxid = 0;
    for kind in expected {
        let event = next_event(&mut stream).await;
        assert_event(&event, kind, "/pw");
        assert!(event.zxid > last_zxid, "zxid order");
        last_zxid = event.zxid;
    }
    a.sync("/").await.expect("sync");
    assert!(drain(&mut stream).is_empty(), "nothing more");

    // Removing it ends the stream and stops the events.
    let mut all = a.watch_events();
    a.remove_watches("/pw", WatcherKind::Persistent)
        .await
        .expect("remove");
    match tokio::time::timeout(WAIT, stream.recv()).await {
        Ok(Some(Err(Error::WatchRemoved))) => {}
        other => panic!("expected WatchRemoved, got {other:?}"),
    }
    b.set_data("/pw", b"after".to_vec(), None)
        .await
        .expect("set");
    a.sync("/").await.expect("sync");
    assert!(drain(&mut all).is_empty(), "no event after removal");
    match a.remove_watches("/pw", WatcherKind::Persistent).await {
        Err(Error::Server(info)) => assert_eq!(info.code, ErrorCode::NoWatcher),
        other => panic!("expected NoWatcher, got {other:?}"),
    }
}

#[tokio::test]
async fn recursive_watches_see_the_whole_subtree() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    let mut stream = a
        .add_watch("/rw", AddWatchMode::PersistentRecursive)
        .await
        .expect("add_watch");
    b.create("/rw", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    b.create("/rw/a", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    b.create("/rw/a/b", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    // A sibling whose name merely starts with the watched one is outside.
    b.create("/rwx", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    b.create("/rwx/y", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    b.set_data("/rw/a/b", b"x".to_vec(), None)
        .await
        .expect("set");
    b.delete("/rw/a/b", None).await.expect("delete");
    let seq = b
        .create("/rw/a/s-", b"".to_vec(), CreateMode::EphemeralSequential)
        .await
        .expect("create");
    b.close().await.expect("close: the ephemeral goes");
    let expected = [
        (EventKind::NodeCreated, "/rw"),
        (EventKind::NodeCreated, "/rw/a"),
        (EventKind::NodeCreated, "/rw/a/b"),
        (EventKind::NodeDataChanged, "/rw/a/b"),
        (EventKind::NodeDeleted, "/rw/a/b"),
        (EventKind::NodeCreated, seq.as_str()),
        (EventKind::NodeDeleted, seq.as_str()),
    ];
    for (kind, path) in expected {
        assert_event(&next_event(&mut stream).await, kind, path);
    }
    a.sync("/").await.expect("sync");
    assert!(
        drain(&mut stream).is_empty(),
        "no child-list events, nothing from /rwx"
    );

    // Both kinds on one path, removed together.
    let mut plain = a
        .add_watch("/rw", AddWatchMode::Persistent)
        .await
        .expect("add_watch");
    a.set_data("/rw", b"1".to_vec(), None).await.expect("set");
    assert_event(
        &next_event(&mut stream).await,
        EventKind::NodeDataChanged,
        "/rw",
    );
    assert_event(
        &next_event(&mut plain).await,
        EventKind::NodeDataChanged,
        "/rw",
    );
    a.remove_watches("/rw", WatcherKind::Any)
        .await
        .expect("remove");
    for s in [&mut stream, &mut plain] {
        match tokio::time::timeout(WAIT, s.recv()).await {
            Ok(Some(Err(Error::WatchRemoved))) => {}
            other => panic!("expected WatchRemoved, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn removing_one_shot_watches() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    b.create("/r", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    for (path, kind) in [
        ("/r", WatcherKind::Data),
        ("/r", WatcherKind::Children),
        ("/r", WatcherKind::Persistent),
        ("/r", WatcherKind::Any),
        ("/nothing", WatcherKind::Any),
    ] {
        match a.remove_watches(path, kind).await {
            Err(Error::Server(info)) => assert_eq!(info.code, ErrorCode::NoWatcher, "{kind:?}"),
            other => panic!("{path} {kind:?}: expected NoWatcher, got {other:?}"),
        }
    }
    let (_, _, data) = a.get_data_watch("/r").await.expect("watch");
    let (_, _, child) = a.get_children_watch("/r").await.expect("watch");
    // Removing the child watch leaves the data watch.
    a.remove_watches("/r", WatcherKind::Children)
        .await
        .expect("remove children");
    assert!(matches!(
        tokio::time::timeout(WAIT, child).await,
        Ok(Err(Error::WatchRemoved))
    ));
    match a.remove_watches("/r", WatcherKind::Children).await {
        Err(Error::Server(info)) => assert_eq!(info.code, ErrorCode::NoWatcher),
        other => panic!("expected NoWatcher, got {other:?}"),
    }
    let mut all = a.watch_events();
    b.create("/r/c", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    b.set_data("/r", b"x".to_vec(), None).await.expect("set");
    assert_event(&fired(data).await, EventKind::NodeDataChanged, "/r");
    a.sync("/").await.expect("sync");
    let events = drain(&mut all);
    assert_eq!(events.len(), 1, "no child event after removal: {events:?}");

    // A removed data watch never fires.
    let (_, _, data) = a.get_data_watch("/r").await.expect("watch");
    a.remove_watches("/r", WatcherKind::Data)
        .await
        .expect("remove");
    assert!(matches!(
        tokio::time::timeout(WAIT, data).await,
        Ok(Err(Error::WatchRemoved))
    ));
    b.set_data("/r", b"y".to_vec(), None).await.expect("set");
    a.sync("/").await.expect("sync");
    assert!(drain(&mut all).is_empty());
}

#[tokio::test]
async fn a_watch_event_arrives_before_the_answer_to_a_later_request() {
    let server = TestServer::start(&[]);
    let a = connect(&server.addr()).await;
    let b = connect(&server.addr()).await;
    b.create("/o", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    for i in 0..30u32 {
        // Data watch, then a read of the same node.
        let (_, _, mut watcher) = a.get_data_watch("/o").await.expect("watch");
        let stat = b
            .set_data("/o", i.to_be_bytes().to_vec(), None)
            .await
            .expect("set");
        let (data, read) = a.get_data("/o").await.expect("get");
        assert_eq!((data, read), (i.to_be_bytes().to_vec(), stat));
        let event = watcher
            .try_take()
            .unwrap_or_else(|| panic!("round {i}: the event did not precede the answer"))
            .expect("event");
        assert_event(&event, EventKind::NodeDataChanged, "/o");
        assert_eq!(event.zxid, stat.mzxid);

        // Child watch, then a read of another node.
        let (_, _, mut watcher) = a.get_children_watch("/o").await.expect("watch");
        let child = format!("/o/c{i}");
        b.create(&child, b"".to_vec(), CreateMode::Persistent)
            .await
            .expect("create");
        assert!(a.exists("/").await.expect("exists").is_some());
        let event = watcher
            .try_take()
            .unwrap_or_else(|| panic!("round {i}: the child event did not precede"))
            .expect("event");
        assert_event(&event, EventKind::NodeChildrenChanged, "/o");

        // Exists watch on a missing node, then a sync.
        let missing = format!("/m{i}");
        let (_, mut watcher) = a.exists_watch(&missing).await.expect("watch");
        b.create(&missing, b"".to_vec(), CreateMode::Ephemeral)
            .await
            .expect("create");
        a.sync("/").await.expect("sync");
        let event = watcher
            .try_take()
            .unwrap_or_else(|| panic!("round {i}: the exists event did not precede"))
            .expect("event");
        assert_event(&event, EventKind::NodeCreated, &missing);

        // The watcher's own write: the event comes before the write's answer.
        let (_, _, mut watcher) = a.get_data_watch("/o").await.expect("watch");
        let stat = a.set_data("/o", b"own".to_vec(), None).await.expect("set");
        let event = watcher
            .try_take()
            .unwrap_or_else(|| panic!("round {i}: the own-write event did not precede"))
            .expect("event");
        assert_eq!(event.zxid, stat.mzxid);
    }
}

#[tokio::test]
async fn watches_rearmed_after_a_reconnect_fire_for_nodes_created_or_deleted_meanwhile() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let a = Client::connect(via(&proxy)).await.expect("connect");
    let b = connect(&server.addr()).await;
    for path in ["/gone", "/gone-too", "/quiet"] {
        b.create(path, b"".to_vec(), CreateMode::Persistent)
            .await
            .expect("create");
    }
    let (_, created) = a.exists_watch("/new").await.expect("watch");
    let (_, _, gone) = a.get_data_watch("/gone").await.expect("watch");
    let (_, _, gone_too) = a.get_children_watch("/gone-too").await.expect("watch");
    let (_, _, mut quiet) = a.get_data_watch("/quiet").await.expect("watch");
    let (_, _, mut quiet_children) = a.get_children_watch("/quiet").await.expect("watch");
    let (_, mut still_missing) = a.exists_watch("/later").await.expect("watch");
    let mut persistent = a
        .add_watch("/quiet", AddWatchMode::Persistent)
        .await
        .expect("add_watch");

    while_disconnected(&proxy, &a, async {
        b.create("/new", b"".to_vec(), CreateMode::Persistent)
            .await
            .expect("create");
        b.delete("/gone", None).await.expect("delete");
        b.delete("/gone-too", None).await.expect("delete");
    })
    .await;

    assert_event(&fired(created).await, EventKind::NodeCreated, "/new");
    assert_event(&fired(gone).await, EventKind::NodeDeleted, "/gone");
    assert_event(&fired(gone_too).await, EventKind::NodeDeleted, "/gone-too");
    a.sync("/").await.expect("sync");
    assert!(quiet.try_take().is_none(), "nothing changed /quiet");
    assert!(
        quiet_children.try_take().is_none(),
        "nothing changed /quiet"
    );
    assert!(still_missing.try_take().is_none(), "/later was not created");

    // The untouched watches are armed again on the server: they fire later.
    b.set_data("/quiet", b"now".to_vec(), None)
        .await
        .expect("set");
    assert_event(&fired(quiet).await, EventKind::NodeDataChanged, "/quiet");
    b.create("/quiet/c", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    assert_event(
        &fired(quiet_children).await,
        EventKind::NodeChildrenChanged,
        "/quiet",
    );
    b.create("/later", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    assert_event(
        &fired(still_missing).await,
        EventKind::NodeCreated,
        "/later",
    );
    // So is the persistent watch. Like ZooKeeper's, it does not replay what it missed,
    // but its stream says so first, with the range of zxids that fired nothing.
    match tokio::time::timeout(WAIT, persistent.recv()).await {
        Ok(Some(Err(corral_client::Error::WatchResumed {
            since_zxid,
            until_zxid,
        }))) => assert!(since_zxid < until_zxid, "{since_zxid} .. {until_zxid}"),
        other => panic!("expected WatchResumed, got {other:?}"),
    }
    assert_event(
        &next_event(&mut persistent).await,
        EventKind::NodeDataChanged,
        "/quiet",
    );
    assert_event(
        &next_event(&mut persistent).await,
        EventKind::NodeChildrenChanged,
        "/quiet",
    );
}

#[tokio::test]
async fn watches_rearmed_after_a_reconnect_fire_for_changes_made_meanwhile() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let a = Client::connect(via(&proxy)).await.expect("connect");
    let b = connect(&server.addr()).await;
    for path in ["/d", "/p"] {
        b.create(path, b"".to_vec(), CreateMode::Persistent)
            .await
            .expect("create");
    }
    let (_, _, data) = a.get_data_watch("/d").await.expect("watch");
    let (_, _, child) = a.get_children_watch("/p").await.expect("watch");

    let mut stat_d = None;
    while_disconnected(&proxy, &a, async {
        stat_d = Some(b.set_data("/d", b"x".to_vec(), None).await.expect("set"));
        b.create("/p/c", b"".to_vec(), CreateMode::Persistent)
            .await
            .expect("create");
    })
    .await;

    let event = fired(data).await;
    assert_event(&event, EventKind::NodeDataChanged, "/d");
    assert!(event.zxid >= stat_d.expect("set").mzxid);
    assert_event(&fired(child).await, EventKind::NodeChildrenChanged, "/p");
}

#[tokio::test]
async fn set_watches_fires_for_what_changed_after_the_given_zxid() {
    // The server side of re-registration, driven with the raw protocol: the client
    // library must send the last zxid it saw *before* the reconnect.
    use corral_protocol::{Op, OpResult, ServerMessage, WatchSet};
    use corral_tests::raw::RawSession;

    let server = TestServer::start(&[]);
    let b = connect(&server.addr()).await;
    for path in ["/d", "/p", "/same", "/gone"] {
        b.create(path, b"".to_vec(), CreateMode::Persistent)
            .await
            .expect("create");
    }
    let before = b.last_zxid();
    b.set_data("/d", b"x".to_vec(), None).await.expect("set");
    b.create("/p/c", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    b.create("/new", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    b.delete("/gone", None).await.expect("delete");

    let mut s = RawSession::new_session(&server.addr(), 10_000).await;
    let watches = WatchSet {
        data: vec!["/d".into(), "/same".into(), "/gone".into()],
        exist: vec!["/new".into(), "/absent".into()],
        child: vec!["/p".into(), "/same".into()],
        persistent: vec![],
        persistent_recursive: vec![],
    };
    let r = s
        .request(
            1,
            Op::SetWatches {
                last_zxid: before,
                watches,
            },
        )
        .await;
    assert_eq!(r.result, Ok(OpResult::WatchesUpdated));
    let mut got: Vec<(EventKind, String)> =
        s.events.iter().map(|e| (e.kind, e.path.clone())).collect();
    got.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        got,
        vec![
            (EventKind::NodeDataChanged, "/d".to_string()),
            (EventKind::NodeDeleted, "/gone".to_string()),
            (EventKind::NodeCreated, "/new".to_string()),
            (EventKind::NodeChildrenChanged, "/p".to_string()),
        ]
    );
    // The others were registered: a later change fires them.
    b.set_data("/same", b"y".to_vec(), None).await.expect("set");
    match s.next().await {
        Some(ServerMessage::Watch(e)) => {
            assert_eq!(
                (e.kind, e.path.as_str()),
                (EventKind::NodeDataChanged, "/same")
            )
        }
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn an_exists_watch_on_an_existing_node_survives_a_reconnect() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let a = Client::connect(via(&proxy)).await.expect("connect");
    let b = connect(&server.addr()).await;
    b.create("/x", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let (stat, mut watcher) = a.exists_watch("/x").await.expect("watch");
    assert!(stat.is_some());

    while_disconnected(&proxy, &a, async {}).await;
    a.sync("/").await.expect("sync");
    assert!(watcher.try_take().is_none(), "nothing changed /x");
    // The watch must still be armed on the server.
    b.set_data("/x", b"changed".to_vec(), None)
        .await
        .expect("set");
    assert_event(&fired(watcher).await, EventKind::NodeDataChanged, "/x");
}

#[tokio::test]
async fn an_exists_watch_on_an_existing_node_is_not_fired_by_unrelated_writes_after_a_reconnect() {
    let server = TestServer::start(&[]);
    let proxy = proxy_to(&server).await;
    let a = Client::connect(via(&proxy)).await.expect("connect");
    let b = connect(&server.addr()).await;
    b.create("/x", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let (stat, mut watcher) = a.exists_watch("/x").await.expect("watch");
    assert!(stat.is_some());

    while_disconnected(&proxy, &a, async {
        b.create("/unrelated", b"".to_vec(), CreateMode::Persistent)
            .await
            .expect("create");
    })
    .await;
    a.sync("/").await.expect("sync");
    if let Some(event) = watcher.try_take() {
        panic!("/x did not change, yet the watch fired: {event:?}");
    }
    b.delete("/x", None).await.expect("delete");
    assert_event(&fired(watcher).await, EventKind::NodeDeleted, "/x");
}
