//! The admin endpoint (`/metrics`, `/health`, `/ready`, `/status`), the status op, and
//! `corralctl status` / `health`, on real servers: the figures must move when the
//! cluster does (an acquire, a leader change, an expired lease).

use corral_client::admin;
use corral_client::LockOptions;
use corral_protocol::{LockKind, LockRequest, Op, OpResult, Role, ServerStatus};
use corral_tests::cluster::{TestCluster, CLUSTER_WAIT};
use corral_tests::raw::RawSession;
use corral_tests::{corralctl_bin, eventually, TestServer};

const BODY_LIMIT_BYTES: u64 = 16 << 20;

async fn get(addr: &str, path: &str) -> admin::AdminResponse {
    admin::get(addr, path, BODY_LIMIT_BYTES)
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

async fn status(addr: &str) -> ServerStatus {
    let r = get(addr, "/status").await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("/status JSON: {e}: {}", r.text()))
}

/// The value of one sample (`name{labels}`) in a Prometheus text page; 0 if absent.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

async fn metric(addr: &str, series: &str) -> f64 {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    sample(&r.text(), series)
}

/// Waits until `series` on `addr` reaches at least `at_least`.
async fn metric_reaches(addr: &str, series: &str, at_least: f64) -> f64 {
    eventually(
        &format!("{series} >= {at_least} on {addr}"),
        CLUSTER_WAIT,
        || async move {
            let v = metric(addr, series).await;
            (v >= at_least).then_some(v)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_endpoints_and_status_op() {
    let server = TestServer::start(&[]);
    let admin = server.admin_addr();
    // Between printing its addresses and starting its core the node says "starting".
    let admin_ = admin.clone();
    eventually("/health ok", CLUSTER_WAIT, || {
        let admin = admin_.clone();
        async move {
            let r = get(&admin, "/health").await;
            (r.status == 200 && r.text().trim() == "ok").then_some(())
        }
    })
    .await;
    assert_eq!(get(&admin, "/ready").await.status, 200);
    assert_eq!(get(&admin, "/no-such-page").await.status, 404);

    let client = corral_tests::cluster::quick_config([server.addr()]);
    let client = corral_client::Client::connect(client)
        .await
        .expect("connect");
    let before = metric(&admin, r#"corral_requests_total{op="create",outcome="ok"}"#).await;
    client
        .create("/a", b"x".to_vec(), corral_client::CreateMode::Persistent)
        .await
        .expect("create");
    let err = client
        .create("/a", b"x".to_vec(), corral_client::CreateMode::Persistent)
        .await;
    assert!(err.is_err());
    let after = metric(&admin, r#"corral_requests_total{op="create",outcome="ok"}"#).await;
    assert_eq!(after, before + 1.0);
    let exists = metric(
        &admin,
        r#"corral_requests_total{op="create",outcome="node_exists"}"#,
    )
    .await;
    assert_eq!(exists, 1.0);
    let page = get(&admin, "/metrics").await.text();
    assert!(
        page.contains("corral_request_duration_seconds_bucket{op=\"create\""),
        "{page}"
    );
    assert!(
        page.contains("corral_fsync_duration_seconds_bucket"),
        "{page}"
    );
    assert!(sample(&page, "corral_connections_open") >= 1.0, "{page}");

    // The status op and /status report the same node.
    let op = client.server_status().await.expect("status op");
    let http = status(&admin).await;
    assert_eq!(op.role, Role::Standalone);
    assert_eq!(op.node_id, http.node_id);
    assert!(op.applied_zxid >= 2 && op.znodes >= 2, "{op:?}");
    assert_eq!(op.admin_addr.as_deref(), Some(admin.as_str()));
    assert!(op.ready && op.sessions >= 1, "{op:?}");
    // The disk use is measured off the core, every second: the log written since the
    // start shows within a few.
    let log_bytes = eventually("the log's size", CLUSTER_WAIT, || async {
        let op = client.server_status().await.expect("status op");
        (op.log_bytes > 0).then_some(op.log_bytes)
    })
    .await;
    assert!(log_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metrics_follow_acquires_leader_changes_and_expiries() {
    let mut cluster = TestCluster::start(3, &[]).await;
    cluster.leader().await;
    let admins: Vec<String> = cluster.ids().map(|id| cluster.admin_addr(id)).collect();
    // Every node gets ready and reports the same leader.
    let statuses = eventually("every node ready, one leader", CLUSTER_WAIT, || {
        let admins = admins.clone();
        async move {
            let mut all = Vec::new();
            for a in &admins {
                all.push(status(a).await);
            }
            let leader = all[0].leader?;
            all.iter()
                .all(|s| s.ready && s.leader == Some(leader))
                .then_some(all)
        }
    })
    .await;
    let leader = statuses[0].leader.expect("a leader");
    let follower = cluster.ids().find(|id| *id != leader).expect("a follower");
    for (s, id) in statuses.iter().zip(cluster.ids()) {
        let addr = cluster.admin_addr(id);
        assert_eq!(s.node_id, id);
        assert_eq!(s.members.len(), 2);
        let expected = if id == leader {
            Role::Leader
        } else {
            Role::Follower
        };
        assert_eq!(s.role, expected);
        assert_eq!(get(&addr, "/ready").await.status, 200);
        assert_eq!(get(&addr, "/health").await.status, 200);
    }

    // An acquire on a follower moves its acquire counter and the held-locks gauge.
    let f_admin = cluster.admin_addr(follower);
    let locked = r#"corral_lock_acquires_total{outcome="locked"}"#;
    let before = metric(&f_admin, locked).await;
    let client = cluster.connect(follower).await;
    let guard = client
        .lock("/locks/a", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    assert_eq!(metric(&f_admin, locked).await, before + 1.0);
    assert!(metric(&f_admin, "corral_locks_granted_at_once_total").await >= 1.0);
    assert!(metric(&f_admin, "corral_locks_held").await >= 1.0);
    let waits = metric(&f_admin, "corral_lock_wait_seconds_count").await;
    assert!(waits >= 1.0, "lock wait histogram count {waits}");
    guard.release().await.expect("release");

    // A lock whose session expires is cleaned as abandoned, on every node.
    let l_admin = cluster.admin_addr(leader);
    let cleaned_before = metric(&l_admin, "corral_locks_abandoned_cleaned_total").await;
    // Only the leader expires sessions, and under load the leader may change: sum them.
    let expired = |admins: Vec<String>| async move {
        let mut sum = 0.0;
        for a in &admins {
            sum += metric(a, "corral_sessions_expired_total").await;
        }
        sum
    };
    let expired_before = expired(admins.clone()).await;
    {
        let mut raw = RawSession::new_session(&cluster.direct_client_addr(follower), 400).await;
        let r = raw
            .request(
                raw.granted.next_xid,
                Op::Lock(LockRequest {
                    lock: "/locks/abandoned".into(),
                    kind: LockKind::Exclusive,
                    try_only: false,
                    lease: None,
                    lock_delay_ms: 0,
                    data: Vec::new(),
                }),
            )
            .await;
        assert!(matches!(r.result, Ok(OpResult::Locked { .. })), "{r:?}");
        // Dropped without a close: the session expires after its TTL.
    }
    metric_reaches(
        &l_admin,
        "corral_locks_abandoned_cleaned_total",
        cleaned_before + 1.0,
    )
    .await;
    metric_reaches(&f_admin, "corral_locks_abandoned_cleaned_total", 1.0).await;
    eventually("a session expiry counted", CLUSTER_WAIT, || {
        let admins = admins.clone();
        async move { (expired(admins).await >= expired_before + 1.0).then_some(()) }
    })
    .await;

    // Killing the leader shows up as a leader change on the others. The leader is read
    // again (under load it may have changed since the start).
    let leader = eventually("one leader", CLUSTER_WAIT, || {
        let admins = admins.clone();
        async move {
            let mut leaders = Vec::new();
            for a in &admins {
                leaders.push(status(a).await.leader);
            }
            let first = leaders[0]?;
            leaders.iter().all(|l| *l == Some(first)).then_some(first)
        }
    })
    .await;
    let others: Vec<String> = cluster
        .ids()
        .filter(|id| *id != leader)
        .map(|id| cluster.admin_addr(id))
        .collect();
    let changes = |admins: Vec<String>| async move {
        let mut sum = 0.0;
        for a in &admins {
            sum += metric(a, "corral_leader_changes_total").await;
        }
        sum
    };
    let changes_before = changes(others.clone()).await;
    cluster.kill(leader);
    let new_leader = cluster.leader_other_than(Some(leader)).await;
    eventually("leader changes counted", CLUSTER_WAIT, || {
        let others = others.clone();
        async move { (changes(others).await >= changes_before + 2.0).then_some(()) }
    })
    .await;
    let n_admin = cluster.admin_addr(new_leader);
    let s = eventually("the new leader reports itself", CLUSTER_WAIT, || {
        let n_admin = n_admin.clone();
        async move {
            let s = status(&n_admin).await;
            (s.role == Role::Leader && s.ready).then_some(s)
        }
    })
    .await;
    let old = s
        .members
        .iter()
        .find(|m| m.node_id == leader)
        .expect("the old leader is a member");
    assert!(!old.reachable, "{s:?}");
    assert!(metric(&n_admin, "corral_is_leader").await == 1.0);
    let page = get(&n_admin, "/metrics").await.text();
    assert_eq!(
        sample(&page, &format!("corral_peer_up{{peer=\"{leader}\"}}")),
        0.0,
        "{page}"
    );
}

fn corralctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(corralctl_bin())
        .args(args)
        .output()
        .expect("run corralctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corralctl_status_and_health() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let servers = cluster
        .ids()
        .map(|id| cluster.direct_client_addr(id))
        .collect::<Vec<_>>()
        .join(",");
    let servers_ = servers.clone();
    let out = eventually("corralctl health says healthy", CLUSTER_WAIT, || {
        let servers = servers_.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || corralctl(&["-s", &servers, "health"]))
                .await
                .expect("join");
            out.status.success().then_some(out)
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("healthy"));

    // `status` exits 0 once every server answers ready; a follower may become ready a
    // little after the cluster is healthy.
    let servers_ = servers.clone();
    let out = eventually(
        "corralctl status says every node is ready",
        CLUSTER_WAIT,
        || {
            let servers = servers_.clone();
            async move {
                let out =
                    tokio::task::spawn_blocking(move || corralctl(&["-s", &servers, "status"]))
                        .await
                        .expect("join");
                out.status.success().then_some(out)
            }
        },
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].contains("ROLE") && lines[0].contains("LAG"),
        "{text}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(" leader ")).count(),
        1,
        "{text}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(" follower ")).count(),
        2,
        "{text}"
    );

    let out = corralctl(&["-s", &servers, "--json", "status"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(3));

    // Without a quorum, health fails.
    let others: Vec<u64> = cluster.ids().filter(|id| *id != leader).collect();
    for id in &others {
        cluster.kill(*id);
    }
    let out = corralctl(&["-s", &servers, "health"]);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("unhealthy"));
    let out = corralctl(&["-s", &servers, "status"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.matches("unavailable").count(), 3, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_is_alive_but_not_ready() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let mut followers = cluster.ids().filter(|id| *id != leader);
    let (down, wiped) = (
        followers.next().expect("a follower"),
        followers.next().expect("another follower"),
    );
    // A wiped node waits for both other nodes' promises; one of them is down.
    cluster.kill(down);
    cluster.wipe(wiped).await;
    let admin = cluster.admin_addr(wiped);
    let health = get(&admin, "/health").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(health.text().starts_with("starting"), "{}", health.text());
    // /ready and /status answer the JSON they answer once started (they used to answer
    // plain text, which broke the tools parsing them during a restart), marked starting.
    let ready = get(&admin, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    let http = get(&admin, "/status").await;
    assert_eq!(http.status, 200, "{}", http.text());
    for r in [&ready, &http] {
        let s: ServerStatus = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("a status while starting: {e}: {}", r.text()));
        assert_eq!(
            (s.node_id, s.role, s.ready),
            (wiped, Role::Candidate, false)
        );
        assert_eq!(s.members.len(), 2, "{s:?}");
        assert_eq!(s.admin_addr.as_deref(), Some(admin.as_str()));
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        assert_eq!(v["starting"], serde_json::json!(true), "{v}");
    }
    let page = get(&admin, "/metrics").await.text();
    assert!(page.lines().any(|l| l == "corral_ready 0"), "{page}");

    cluster.restart(down).await;
    eventually("the wiped node ready", CLUSTER_WAIT, || {
        let admin = admin.clone();
        async move { (get(&admin, "/ready").await.status == 200).then_some(()) }
    })
    .await;
    let s = status(&admin).await;
    assert!(matches!(s.role, Role::Follower | Role::Leader), "{s:?}");
    let v: serde_json::Value =
        serde_json::from_slice(&get(&admin, "/status").await.body).expect("JSON");
    assert_eq!(v["starting"], serde_json::json!(false), "{v}");
    // It was caught up with a snapshot of the leader's state.
    if cluster.snapshot_installs(wiped) > 0 {
        metric_reaches(&admin, "corral_snapshots_installed_total", 1.0).await;
        // Decoded off the core first, and timed.
        metric_reaches(&admin, "corral_snapshot_decode_seconds_count", 1.0).await;
    }
}

/// The admin port takes at most `ADMIN_MAX_CONNECTIONS` connections: further ones are
/// closed as they are accepted (it has no authentication, and idle connections used to
/// pile up without limit until the process ran out of file handles, which failed the
/// log's next sync and refused every client). Once the idle ones go, it answers again.
#[tokio::test]
async fn the_admin_port_caps_its_connections() {
    use tokio::io::AsyncReadExt;
    // corral_server::admin::ADMIN_MAX_CONNECTIONS (the tests drive the binary).
    const ADMIN_MAX_CONNECTIONS: usize = 32;
    let server = TestServer::start(&[]);
    let addr = server.admin_addr();
    let mut idle = Vec::new();
    for _ in 0..ADMIN_MAX_CONNECTIONS {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // Accepted in order: once the server has taken the idle ones, the next is closed.
    let mut extra = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(CLUSTER_WAIT, extra.read(&mut byte))
        .await
        .expect("the connection over the cap is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(idle);
    eventually("the admin port answers again", CLUSTER_WAIT, || async {
        admin::get(&addr, "/health", BODY_LIMIT_BYTES)
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
}

/// One backup at a time, until it is sent: a second `/snapshot` while the first one's
/// body has not been read is refused (429). The permit used to go when the handler
/// returned, before the body was sent, so clients that did not read could each hold an
/// encoded copy of the state in the server's memory.
#[tokio::test]
async fn a_backup_holds_its_place_until_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&[]);
    let addr = server.admin_addr();
    let client = corral_client::Client::connect(corral_client::ClientConfig::new([server.addr()]))
        .await
        .expect("connect");
    // About 24 MB of state: more than the sockets' buffers hold.
    for i in 0..24 {
        client
            .create(
                &format!("/big{i}"),
                vec![i as u8; 1_000_000],
                corral_client::CreateMode::Persistent,
            )
            .await
            .expect("create");
    }
    let mut first = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    first
        .write_all(b"GET /snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 16];
    let n = tokio::time::timeout(CLUSTER_WAIT, first.read(&mut head))
        .await
        .expect("an answer")
        .expect("read");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    // The first backup's body waits, unread.
    let second = get(&addr, "/snapshot").await;
    assert_eq!(second.status, 429, "{}", second.text());
    drop(first);
    let third = eventually("a backup once the first is gone", CLUSTER_WAIT, || async {
        admin::get(&addr, "/snapshot", 64 << 20)
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(third.body.len() > 24_000_000, "{} bytes", third.body.len());
}
