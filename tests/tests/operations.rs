//! Every operation and every error code a client can reach, through the real client
//! library against a real server: creates in all five modes, deletes, set_data with the
//! stat bookkeeping, children listings, sequential naming, containers, multi (success,
//! rollback, check), sync and the state size limit. Errors the client library refuses to send (invalid paths)
//! are also sent with the raw protocol to check the server's own validation.

use corral_client::{
    Client, ClientConfig, CreateMode, CreateRequest, Error, ErrorCode, LockOptions, MultiOp,
    MultiResult, Stat,
};
use corral_protocol::{Op, OpResult};
use corral_tests::raw::RawSession;
use corral_tests::{test_seed, TestServer};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The wall clock in milliseconds since the Unix epoch (the server's mtime unit).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn connect(server: &TestServer) -> Client {
    Client::connect(ClientConfig::new([server.addr()]))
        .await
        .expect("connect")
}

fn req(path: &str, data: &[u8], mode: CreateMode, make_parents: bool) -> CreateRequest {
    CreateRequest {
        path: path.to_string(),
        data: data.to_vec(),
        mode,
        make_parents,
    }
}

/// The server's error code of a failed call (panics on success or a non-server error).
fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> ErrorCode {
    match result {
        Err(Error::Server(info)) => info.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn stat_of(result: Option<Stat>, path: &str) -> Stat {
    result.unwrap_or_else(|| panic!("{path} should exist"))
}

/// The ten-digit sequence suffix of a sequential node's name.
fn seq_suffix(path: &str, prefix: &str) -> u64 {
    let suffix = path
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{path} starts with {prefix}"));
    assert_eq!(suffix.len(), 10, "ten digits in {path}");
    assert!(suffix.bytes().all(|b| b.is_ascii_digit()), "digits: {path}");
    suffix.parse().expect("a number")
}

#[tokio::test]
async fn create_in_every_mode_sets_the_stat() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    let session = c.session_id();

    let before = wall_ms();
    let p = c
        .create_with(req("/p", b"hello", CreateMode::Persistent, false))
        .await
        .expect("persistent");
    let after = wall_ms();
    assert_eq!(p.path, "/p");
    let s = p.stat;
    assert!(s.czxid > 0);
    assert_eq!((s.mzxid, s.pzxid), (s.czxid, s.czxid), "new node: {s:?}");
    assert_eq!((s.version, s.cversion, s.num_children), (0, 0, 0));
    assert_eq!(s.ephemeral_owner, 0);
    assert_eq!(s.data_length, 5);
    assert!(s.ctime_ms == s.mtime_ms, "{s:?}");
    assert!(
        (before..=after).contains(&s.ctime_ms),
        "ctime stamped at the create"
    );
    assert_eq!(
        c.get_data("/p").await.expect("get"),
        (b"hello".to_vec(), s),
        "get_data returns what create returned"
    );

    let e = c
        .create_with(req("/p/e", b"", CreateMode::Ephemeral, false))
        .await
        .expect("ephemeral");
    assert_eq!(e.path, "/p/e");
    assert_eq!(e.stat.ephemeral_owner, session);
    assert_eq!(e.stat.data_length, 0);
    assert!(e.stat.czxid > s.czxid);

    let ps = c
        .create("/p/ps-", b"x".to_vec(), CreateMode::PersistentSequential)
        .await
        .expect("persistent sequential");
    assert_eq!(seq_suffix(&ps, "/p/ps-"), 0);
    assert_eq!(
        stat_of(c.exists(&ps).await.expect("exists"), &ps).ephemeral_owner,
        0
    );

    let es = c
        .create("/p/es-", b"y".to_vec(), CreateMode::EphemeralSequential)
        .await
        .expect("ephemeral sequential");
    assert_eq!(
        seq_suffix(&es, "/p/es-"),
        1,
        "one counter per parent, shared by all prefixes"
    );
    assert_eq!(
        stat_of(c.exists(&es).await.expect("exists"), &es).ephemeral_owner,
        session
    );

    let k = c
        .create_with(req("/k", b"", CreateMode::Container, false))
        .await
        .expect("container");
    assert_eq!(k.path, "/k");
    assert_eq!(k.stat.ephemeral_owner, 0);
    // A container that never had a child stays.
    assert!(c.exists("/k").await.expect("exists").is_some());

    // The parent's stat followed its children.
    let (children, ps_stat) = c.get_children_with_stat("/p").await.expect("children");
    assert_eq!(children.len(), 3);
    assert_eq!(ps_stat.num_children, 3);
    assert_eq!(ps_stat.cversion, 3);
    assert_eq!(
        ps_stat.version, 0,
        "children do not change the data version"
    );
    assert_eq!(ps_stat.mzxid, s.czxid, "children do not change mzxid");
    let es_stat = stat_of(c.exists(&es).await.expect("exists"), &es);
    assert_eq!(
        ps_stat.pzxid, es_stat.czxid,
        "pzxid is the last child change"
    );

    // make_parents: missing parents are persistent, the leaf has the requested mode.
    let deep = c
        .create_with(req("/a/b/c", b"leaf", CreateMode::Ephemeral, true))
        .await
        .expect("make_parents");
    assert_eq!(deep.path, "/a/b/c");
    for parent in ["/a", "/a/b"] {
        let st = stat_of(c.exists(parent).await.expect("exists"), parent);
        assert_eq!(st.ephemeral_owner, 0, "{parent} is persistent");
        assert_eq!(st.czxid, deep.stat.czxid, "created in the same transaction");
        assert_eq!(st.num_children, 1);
    }
    // Sequential with make_parents: the new parent's counter starts at 0.
    let q = c
        .create_with(req(
            "/q1/q2/n-",
            b"",
            CreateMode::PersistentSequential,
            true,
        ))
        .await
        .expect("sequential with parents");
    assert_eq!(seq_suffix(&q.path, "/q1/q2/n-"), 0);
    // make_parents on an existing parent is a plain create.
    let again = c
        .create_with(req("/a/b/d", b"", CreateMode::Persistent, true))
        .await
        .expect("existing parent");
    assert_eq!(again.path, "/a/b/d");
}

#[tokio::test]
async fn create_errors() {
    let server = TestServer::start(&["--max-data-bytes", "100"]);
    let c = connect(&server).await;
    c.create("/x", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");

    assert_eq!(
        code(c.create("/x", b"".to_vec(), CreateMode::Persistent).await),
        ErrorCode::NodeExists
    );
    assert_eq!(
        code(c.create("/x", b"".to_vec(), CreateMode::Ephemeral).await),
        ErrorCode::NodeExists
    );
    assert_eq!(
        code(c.create("/", b"".to_vec(), CreateMode::Persistent).await),
        ErrorCode::NodeExists,
        "the root always exists"
    );
    assert_eq!(
        code(
            c.create("/missing/y", b"".to_vec(), CreateMode::Persistent)
                .await
        ),
        ErrorCode::NoNode
    );
    assert_eq!(
        code(
            c.create(
                "/missing/y-",
                b"".to_vec(),
                CreateMode::PersistentSequential
            )
            .await
        ),
        ErrorCode::NoNode
    );

    // Ephemeral nodes cannot have children, with or without make_parents.
    c.create("/eph", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral");
    assert_eq!(
        code(
            c.create("/eph/child", b"".to_vec(), CreateMode::Persistent)
                .await
        ),
        ErrorCode::NoChildrenForEphemerals
    );
    assert_eq!(
        code(
            c.create_with(req("/eph/a/b", b"", CreateMode::Persistent, true))
                .await
        ),
        ErrorCode::NoChildrenForEphemerals
    );
    assert!(c.exists("/eph/a").await.expect("exists").is_none());

    // Data size limit: exactly max_data_bytes is fine, one more is not.
    assert_eq!(
        code(
            c.create("/big", vec![1u8; 101], CreateMode::Persistent)
                .await
        ),
        ErrorCode::DataTooLarge
    );
    assert!(c.exists("/big").await.expect("exists").is_none());
    c.create("/big", vec![1u8; 100], CreateMode::Persistent)
        .await
        .expect("at the limit");
    assert_eq!(
        code(c.set_data("/big", vec![2u8; 101], None).await),
        ErrorCode::DataTooLarge
    );
    assert_eq!(c.get_data("/big").await.expect("get").0, vec![1u8; 100]);

    // Invalid paths are refused by the client before anything is sent.
    for bad in ["x", "", "/x/", "/a//b", "/a/./b", "/a/../b", "/a\u{1}b"] {
        match c.create(bad, b"".to_vec(), CreateMode::Persistent).await {
            Err(Error::InvalidPath(info)) => assert_eq!(info.code, ErrorCode::InvalidPath),
            other => panic!("{bad:?}: expected a client-side InvalidPath, got {other:?}"),
        }
    }
    let long = format!("/{}", "a".repeat(1024));
    assert!(matches!(
        c.create(&long, b"".to_vec(), CreateMode::Persistent).await,
        Err(Error::InvalidPath(_))
    ));
    for call in [
        c.delete("nope", None).await.map(|_| ()),
        c.set_data("/a/", b"".to_vec(), None).await.map(|_| ()),
        c.get_data("//").await.map(|_| ()),
        c.get_children("rel").await.map(|_| ()),
        c.exists("/.").await.map(|_| ()),
        c.sync("x").await,
    ] {
        assert!(matches!(call, Err(Error::InvalidPath(_))), "{call:?}");
    }
    // A sequential prefix may end in '/' (the name is just the counter).
    let bare = c
        .create("/x/", b"".to_vec(), CreateMode::PersistentSequential)
        .await
        .expect("bare sequential");
    assert_eq!(seq_suffix(&bare, "/x/"), 0);
    // The client is still fine after all those errors.
    assert!(c.exists("/x").await.expect("exists").is_some());
}

#[tokio::test]
async fn the_server_validates_paths_itself() {
    let server = TestServer::start(&[]);
    let mut s = RawSession::new_session(&server.addr(), 10_000).await;
    let create = |path: &str, mode| {
        Op::Create(CreateRequest {
            path: path.to_string(),
            data: vec![],
            mode,
            make_parents: false,
        })
    };
    let ops = vec![
        create("nope", CreateMode::Persistent),
        create("/a//b", CreateMode::Persistent),
        create("/a/", CreateMode::Persistent),
        create("/x/../y-", CreateMode::PersistentSequential),
        create("", CreateMode::Persistent),
        Op::Delete {
            path: "/a/".into(),
            version: None,
        },
        Op::SetData {
            path: "rel".into(),
            data: vec![],
            version: None,
        },
        Op::GetData {
            path: "/a/./b".into(),
            watch: false,
        },
        Op::GetChildren {
            path: "x".into(),
            watch: false,
        },
        Op::Exists {
            path: "//".into(),
            watch: true,
        },
        Op::Multi(vec![
            MultiOp::Check {
                path: "/".into(),
                version: 0,
            },
            MultiOp::Delete {
                path: "bad".into(),
                version: None,
            },
        ]),
        Op::Sync { path: "s".into() },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let xid = i as u64 + 1;
        let described = format!("{op:?}");
        let r = s.request(xid, op).await;
        let e = r.result.expect_err(&format!("{described} must be refused"));
        assert_eq!(e.code, ErrorCode::InvalidPath, "{described}: {e}");
        if described.starts_with("Multi") {
            assert_eq!(e.op_index, Some(1), "{e:?}");
        }
    }
    // Nothing was created, and the session still works.
    let r = s
        .request(
            100,
            Op::GetChildren {
                path: "/".into(),
                watch: false,
            },
        )
        .await;
    match r.result {
        Ok(OpResult::Children { children, .. }) => assert!(children.is_empty(), "{children:?}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn delete_errors_and_versions() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    assert_eq!(code(c.delete("/none", None).await), ErrorCode::NoNode);
    assert_eq!(code(c.delete("/", None).await), ErrorCode::BadArguments);

    c.create("/d", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    c.create("/d/child", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    assert_eq!(code(c.delete("/d", None).await), ErrorCode::NotEmpty);
    // Version is checked before emptiness (as in ZooKeeper).
    assert_eq!(code(c.delete("/d", Some(7)).await), ErrorCode::BadVersion);

    c.set_data("/d/child", b"1".to_vec(), None)
        .await
        .expect("set"); // version 1
    assert_eq!(
        code(c.delete("/d/child", Some(0)).await),
        ErrorCode::BadVersion
    );
    assert_eq!(
        code(c.delete("/d/child", Some(2)).await),
        ErrorCode::BadVersion
    );
    assert!(c.exists("/d/child").await.expect("exists").is_some());
    let before = stat_of(c.exists("/d").await.expect("exists"), "/d");
    c.delete("/d/child", Some(1)).await.expect("version match");
    assert!(c.exists("/d/child").await.expect("exists").is_none());
    let after = stat_of(c.exists("/d").await.expect("exists"), "/d");
    assert_eq!(after.num_children, 0);
    assert_eq!(after.cversion, before.cversion + 1);
    assert!(after.pzxid > before.pzxid);
    assert_eq!(code(c.delete("/d/child", None).await), ErrorCode::NoNode);
    c.delete("/d", Some(0)).await.expect("empty now");
    assert!(c.exists("/d").await.expect("exists").is_none());
}

#[tokio::test]
async fn set_data_versions_and_stats() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    assert_eq!(
        code(c.set_data("/none", b"x".to_vec(), None).await),
        ErrorCode::NoNode
    );
    let created = c
        .create_with(req("/s", b"v0", CreateMode::Persistent, false))
        .await
        .expect("create")
        .stat;
    let mut prev = created;
    for i in 1..=5u32 {
        let data = format!("value number {i}");
        // Conditional and unconditional writes alternate.
        let version = (i % 2 == 0).then_some(prev.version);
        let before = wall_ms();
        let stat = c
            .set_data("/s", data.clone().into_bytes(), version)
            .await
            .expect("set_data");
        let after = wall_ms();
        assert_eq!(stat.version, i, "the version counts data changes");
        assert!(stat.mzxid > prev.mzxid, "mzxid moves: {prev:?} -> {stat:?}");
        assert!(stat.mtime_ms >= prev.mtime_ms);
        // mtime is stamped by this write (same host, same clock).
        assert!(
            (before..=after).contains(&stat.mtime_ms),
            "mtime {} outside the call's window {before}..={after}",
            stat.mtime_ms
        );
        assert_eq!(stat.czxid, created.czxid);
        assert_eq!(stat.ctime_ms, created.ctime_ms);
        assert_eq!(stat.pzxid, created.pzxid, "no child changed");
        assert_eq!(stat.cversion, 0);
        assert_eq!(stat.num_children, 0);
        assert_eq!(stat.ephemeral_owner, 0);
        assert_eq!(stat.data_length as usize, data.len());
        assert!(c.last_zxid() >= stat.mzxid);
        let (read, read_stat) = c.get_data("/s").await.expect("get");
        assert_eq!(read, data.as_bytes());
        assert_eq!(read_stat, stat, "get_data sees the stat set_data returned");
        prev = stat;
    }
    assert_eq!(
        code(c.set_data("/s", b"x".to_vec(), Some(4)).await),
        ErrorCode::BadVersion
    );
    assert_eq!(
        code(c.set_data("/s", b"x".to_vec(), Some(6)).await),
        ErrorCode::BadVersion
    );
    let (data, stat) = c.get_data("/s").await.expect("get");
    assert_eq!(data, b"value number 5");
    assert_eq!(stat, prev, "failed writes change nothing");
    // Empty data.
    let stat = c.set_data("/s", Vec::new(), Some(5)).await.expect("empty");
    assert_eq!((stat.version, stat.data_length), (6, 0));

    // An ephemeral's owner and a parent's child counters through set_data.
    c.create("/s/e", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("create");
    let e = c.set_data("/s/e", b"z".to_vec(), None).await.expect("set");
    assert_eq!(e.ephemeral_owner, c.session_id());
    let parent = c.set_data("/s", b"p".to_vec(), None).await.expect("set");
    assert_eq!(parent.num_children, 1);
    assert_eq!(parent.cversion, 1);
    assert_eq!(parent.pzxid, e.czxid);
    assert!(parent.mzxid > parent.pzxid);
}

#[tokio::test]
async fn children_are_listed_sorted() {
    let seed = test_seed("children_are_listed_sorted");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    c.create("/dir", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    assert!(c.get_children("/dir").await.expect("empty").is_empty());
    assert_eq!(code(c.get_children("/none").await), ErrorCode::NoNode);
    assert_eq!(code(c.get_data("/none").await), ErrorCode::NoNode);
    assert_eq!(c.exists("/none").await.expect("exists"), None);

    let alphabet: Vec<char> = "aAzZ09-_.~éß".chars().collect();
    let mut names: Vec<String> = (0..40)
        .map(|i| {
            let len = rng.gen_range(1..8);
            let mut s: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            s.push_str(&i.to_string());
            s
        })
        .filter(|s| s != "." && s != "..")
        .collect();
    names.shuffle(&mut rng);
    for name in &names {
        c.create(
            &format!("/dir/{name}"),
            b"".to_vec(),
            CreateMode::Persistent,
        )
        .await
        .expect("create child");
    }
    let (listed, stat) = c.get_children_with_stat("/dir").await.expect("children");
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listed, expected, "children sorted by name (byte order)");
    assert_eq!(stat.num_children as usize, names.len());
    // Deleting some keeps the rest sorted.
    for name in names.iter().take(10) {
        c.delete(&format!("/dir/{name}"), None)
            .await
            .expect("delete");
    }
    let mut rest: Vec<String> = names.iter().skip(10).cloned().collect();
    rest.sort();
    assert_eq!(c.get_children("/dir").await.expect("children"), rest);
    assert_eq!(
        c.get_children("/").await.expect("root"),
        vec!["dir".to_string()]
    );
}

/// A server may allow larger frames than a client. A response over the client's own
/// `max_frame_bytes` fails that one request with `FrameTooLarge`, and the connection goes
/// on; the client used to drop the connection, reconnect and ask again until the
/// request timed out.
#[tokio::test]
async fn a_response_over_the_clients_frame_limit_fails_that_request_alone() {
    let server = TestServer::start(&["--max-frame-bytes", "262144", "--max-data-bytes", "200000"]);
    let writer = connect(&server).await;
    writer
        .create("/big", vec![7; 100_000], CreateMode::Persistent)
        .await
        .expect("create /big");
    writer
        .create("/small", b"ok".to_vec(), CreateMode::Persistent)
        .await
        .expect("create /small");
    let config = ClientConfig::new([server.addr()]).with_max_frame_bytes(16_384);
    let c = Client::connect(config).await.expect("connect");
    // After a first answer, the connection is established (and reported).
    c.get_data("/small").await.expect("a first read");
    let mut states = c.state_events();
    let err = c
        .get_data("/big")
        .await
        .expect_err("a response over 16 KiB");
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge), "{err}");
    assert!(err.to_string().contains("max_frame_bytes = 16384"), "{err}");
    let (data, _) = c.get_data("/small").await.expect("the next read");
    assert_eq!(data, b"ok");
    // The same connection served both: no transition since.
    assert!(
        futures::FutureExt::now_or_never(states.recv()).is_none(),
        "the connection changed state: {:?}",
        c.state()
    );
}

/// A directory too large for one frame is listed page by page: pages keep to the
/// smaller of the client's and the server's frame limits, and together hold every child
/// once, in order. A child added between pages is reported by `changed`.
#[tokio::test]
async fn a_directory_too_large_for_a_frame_is_listed_in_pages() {
    let server = TestServer::start(&["--max-data-bytes", "1000", "--max-frame-bytes", "16384"]);
    let writer = connect(&server).await;
    writer
        .create("/dir", Vec::new(), CreateMode::Persistent)
        .await
        .expect("create /dir");
    // 1,500 names of 16 bytes, 24 bytes each in a listing: about 36 KiB.
    let names: Vec<String> = (0..1500).map(|i| format!("child-{i:010}")).collect();
    let creates = names.iter().map(|name| {
        writer.create_with(req(
            &format!("/dir/{name}"),
            b"",
            CreateMode::Persistent,
            false,
        ))
    });
    for created in futures::future::join_all(creates).await {
        created.expect("create child");
    }
    let too_large = writer.get_children("/dir").await.expect_err("over a frame");
    assert_eq!(
        too_large.code(),
        Some(ErrorCode::LimitExceeded),
        "{too_large}"
    );
    assert!(
        too_large.to_string().contains("page by page"),
        "the error names the way out: {too_large}"
    );

    // A client whose own limit is lower than the server's gets pages that fit it.
    let config = ClientConfig::new([server.addr()]).with_max_frame_bytes(4096);
    let c = Client::connect(config).await.expect("connect");
    let mut pages = c.children_pages("/dir", 10_000);
    let mut listed = Vec::new();
    let mut count = 0;
    while let Some(page) = pages.next_page().await.expect("a page") {
        count += 1;
        assert!(!page.children.is_empty(), "page {count} is empty");
        let bytes: usize = page.children.iter().map(|n| n.len() + 8).sum();
        assert!(bytes <= 4096, "page {count}: {bytes} bytes of names");
        assert_eq!(page.more, listed.len() + page.children.len() < names.len());
        listed.extend(page.children);
    }
    assert_eq!(listed, names, "every child once, in order");
    assert!(count > 10, "{count} pages of at most 4 KiB");
    assert!(!pages.changed());
    assert_eq!(pages.next_page().await.expect("after the end"), None);

    // Pages of at most 7 names; a child created and one deleted between two pages.
    let mut pages = c.children_pages("/dir", 7);
    let first = pages
        .next_page()
        .await
        .expect("page")
        .expect("a first page");
    assert_eq!(first.children, names[..7]);
    writer
        .create("/dir/child-9", Vec::new(), CreateMode::Persistent)
        .await
        .expect("create a late child");
    writer
        .delete(&format!("/dir/{}", names[7]), None)
        .await
        .expect("delete an early child");
    let second = pages
        .next_page()
        .await
        .expect("page")
        .expect("a second page");
    assert_eq!(second.children, names[8..15]);
    assert!(pages.changed(), "cversion moved between the pages");
    assert_eq!(
        code(c.get_children_page("/none", "", 10).await),
        ErrorCode::NoNode
    );
}

#[tokio::test]
async fn sequential_names_use_a_per_parent_counter_that_never_goes_back() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    for dir in ["/q1", "/q2"] {
        c.create(dir, b"".to_vec(), CreateMode::Persistent)
            .await
            .expect("create");
    }
    let mut last = None;
    for i in 0..5u64 {
        let p = c
            .create("/q1/n-", b"".to_vec(), CreateMode::PersistentSequential)
            .await
            .expect("sequential");
        assert_eq!(p, format!("/q1/n-{i:010}"));
        last = Some(p);
    }
    // Another parent has its own counter.
    let other = c
        .create("/q2/n-", b"".to_vec(), CreateMode::EphemeralSequential)
        .await
        .expect("sequential");
    assert_eq!(other, "/q2/n-0000000000");
    // Deleting the newest does not let its number be handed out again.
    c.delete(&last.expect("created"), None)
        .await
        .expect("delete");
    c.delete("/q1/n-0000000000", None).await.expect("delete");
    let p = c
        .create("/q1/n-", b"".to_vec(), CreateMode::PersistentSequential)
        .await
        .expect("sequential");
    assert_eq!(p, "/q1/n-0000000005");
    // Plain creates do not advance the counter; other prefixes share it.
    c.create("/q1/plain", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("plain");
    let p = c
        .create("/q1/other-", b"".to_vec(), CreateMode::EphemeralSequential)
        .await
        .expect("sequential");
    assert_eq!(p, "/q1/other-0000000006");
    // A failed sequential create (data too large would be refused; use a bad parent
    // instead) does not advance any counter.
    assert_eq!(
        code(
            c.create(
                "/q1/plain/x/n-",
                b"".to_vec(),
                CreateMode::PersistentSequential
            )
            .await
        ),
        ErrorCode::NoNode
    );
    let p = c
        .create("/q1/", b"".to_vec(), CreateMode::PersistentSequential)
        .await
        .expect("sequential");
    assert_eq!(p, "/q1/0000000007");
    // Sequential children of the root.
    let p = c
        .create("/r-", b"".to_vec(), CreateMode::PersistentSequential)
        .await
        .expect("root child");
    assert_eq!(p, "/r-0000000000");
    // Many concurrent sequential creates get distinct, gap-free numbers.
    let futures: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            async move {
                c.create("/q2/c-", b"".to_vec(), CreateMode::PersistentSequential)
                    .await
                    .expect("concurrent sequential")
            }
        })
        .collect();
    let mut got: Vec<u64> = futures::future::join_all(futures)
        .await
        .iter()
        .map(|p| seq_suffix(p, "/q2/c-"))
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<u64>>());
}

#[tokio::test]
async fn containers_go_with_their_last_child_cascading() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    c.create("/keep", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("persistent parent");
    // /keep/c1 and /keep/c1/c2 are containers (make_parents with Container mode).
    c.create_with(req("/keep/c1/c2", b"", CreateMode::Container, true))
        .await
        .expect("containers");
    c.create("/keep/c1/c2/leaf", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("leaf");
    c.create("/keep/c1/c2/leaf2", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("leaf2");
    let keep_before = stat_of(c.exists("/keep").await.expect("exists"), "/keep");

    c.delete("/keep/c1/c2/leaf", None).await.expect("delete");
    assert!(
        c.exists("/keep/c1/c2").await.expect("exists").is_some(),
        "a container with a child left stays"
    );
    c.delete("/keep/c1/c2/leaf2", None).await.expect("delete");
    // Reaped in the same transaction: visible at once.
    assert!(c.exists("/keep/c1/c2").await.expect("exists").is_none());
    assert!(
        c.exists("/keep/c1").await.expect("exists").is_none(),
        "cascades to the container parent"
    );
    let keep = stat_of(c.exists("/keep").await.expect("exists"), "/keep");
    assert_eq!(keep.num_children, 0, "a persistent parent is not reaped");
    assert_eq!(keep.cversion, keep_before.cversion + 1);

    // A container emptied by its child's session ending.
    c.create("/box", b"".to_vec(), CreateMode::Container)
        .await
        .expect("container");
    let other = connect(&server).await;
    other
        .create("/box/eph", b"".to_vec(), CreateMode::Ephemeral)
        .await
        .expect("ephemeral child");
    other.close().await.expect("close");
    assert!(c.exists("/box").await.expect("exists").is_none());

    // A multi that empties a container and refills it keeps it.
    c.create("/box2", b"".to_vec(), CreateMode::Container)
        .await
        .expect("container");
    c.create("/box2/a", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("child");
    c.transaction()
        .delete("/box2/a", None)
        .create("/box2/b", b"".to_vec(), CreateMode::Persistent)
        .commit()
        .await
        .expect("multi");
    assert_eq!(
        c.get_children("/box2").await.expect("kept"),
        vec!["b".to_string()]
    );
}

#[tokio::test]
async fn multi_applies_everything_under_one_zxid() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    c.create("/m", b"old".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    c.create("/m/gone", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let results = c
        .multi(vec![
            MultiOp::Check {
                path: "/m".into(),
                version: 0,
            },
            MultiOp::Create(req("/m/new", b"n", CreateMode::Persistent, false)),
            MultiOp::Create(req("/m/seq-", b"", CreateMode::PersistentSequential, false)),
            MultiOp::SetData {
                path: "/m".into(),
                data: b"new".to_vec(),
                version: Some(0),
            },
            MultiOp::Delete {
                path: "/m/gone".into(),
                version: None,
            },
            // Later ops see the effects of earlier ones.
            MultiOp::Check {
                path: "/m".into(),
                version: 1,
            },
            MultiOp::SetData {
                path: "/m/new".into(),
                data: b"n2".to_vec(),
                version: Some(0),
            },
        ])
        .await
        .expect("multi");
    assert_eq!(results.len(), 7);
    assert_eq!(results[0], MultiResult::Checked);
    let MultiResult::Created {
        path,
        stat: created,
    } = &results[1]
    else {
        panic!("{:?}", results[1]);
    };
    assert_eq!(path, "/m/new");
    let zxid = created.czxid;
    let MultiResult::Created { path: seq, stat } = &results[2] else {
        panic!("{:?}", results[2]);
    };
    assert_eq!(seq, "/m/seq-0000000000");
    assert_eq!(stat.czxid, zxid, "one zxid for every op");
    let MultiResult::SetData { stat } = &results[3] else {
        panic!("{:?}", results[3]);
    };
    assert_eq!((stat.mzxid, stat.version), (zxid, 1));
    assert_eq!(results[4], MultiResult::Deleted);
    assert_eq!(results[5], MultiResult::Checked);
    let MultiResult::SetData { stat } = &results[6] else {
        panic!("{:?}", results[6]);
    };
    assert_eq!((stat.mzxid, stat.czxid, stat.version), (zxid, zxid, 1));
    assert_eq!(c.last_zxid(), zxid);

    let (data, m) = c.get_data("/m").await.expect("get");
    assert_eq!(data, b"new");
    assert_eq!(m.pzxid, zxid);
    assert_eq!(
        c.get_children("/m").await.expect("children"),
        vec!["new".to_string(), "seq-0000000000".to_string()]
    );
    assert_eq!(c.get_data("/m/new").await.expect("get").0, b"n2");

    // An empty multi succeeds with no results.
    assert!(c.multi(Vec::new()).await.expect("empty multi").is_empty());
}

#[tokio::test]
async fn a_failed_multi_changes_nothing_and_names_the_failing_op() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    let observer = connect(&server).await;
    c.create("/r", b"orig".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    c.create("/r/old", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let (_, before) = c.get_data("/r").await.expect("get");

    let cases: Vec<(Vec<MultiOp>, u32, ErrorCode)> = vec![
        (
            vec![
                MultiOp::Create(req("/r/x", b"", CreateMode::Persistent, false)),
                MultiOp::SetData {
                    path: "/r".into(),
                    data: b"new".to_vec(),
                    version: None,
                },
                MultiOp::Delete {
                    path: "/nope".into(),
                    version: None,
                },
            ],
            2,
            ErrorCode::NoNode,
        ),
        (
            vec![
                MultiOp::Delete {
                    path: "/r/old".into(),
                    version: None,
                },
                MultiOp::Check {
                    path: "/r".into(),
                    version: 5,
                },
            ],
            1,
            ErrorCode::BadVersion,
        ),
        (
            vec![
                MultiOp::Create(req("/r/s-", b"", CreateMode::PersistentSequential, false)),
                MultiOp::Create(req("/r/x", b"", CreateMode::Ephemeral, false)),
                MultiOp::Create(req("/r/x", b"", CreateMode::Persistent, false)),
            ],
            2,
            ErrorCode::NodeExists,
        ),
        (
            vec![
                MultiOp::Create(req("/r/e", b"", CreateMode::Ephemeral, false)),
                MultiOp::Create(req("/r/e/c", b"", CreateMode::Persistent, false)),
            ],
            1,
            ErrorCode::NoChildrenForEphemerals,
        ),
        (
            vec![MultiOp::Delete {
                path: "/r".into(),
                version: None,
            }],
            0,
            ErrorCode::NotEmpty,
        ),
        (
            vec![
                MultiOp::SetData {
                    path: "/r".into(),
                    data: b"v".to_vec(),
                    version: Some(0),
                },
                MultiOp::SetData {
                    path: "/r".into(),
                    data: b"w".to_vec(),
                    version: Some(0),
                },
            ],
            1,
            ErrorCode::BadVersion,
        ),
        (
            vec![
                MultiOp::Delete {
                    path: "/r/old".into(),
                    version: None,
                },
                MultiOp::Check {
                    path: "/r/old".into(),
                    version: 0,
                },
            ],
            1,
            ErrorCode::NoNode,
        ),
        (
            vec![
                MultiOp::Create(req("/r/p1/p2/leaf", b"", CreateMode::Container, true)),
                MultiOp::Create(req("/r/p1/s-", b"", CreateMode::EphemeralSequential, false)),
                MultiOp::Delete {
                    path: "/r/p1/p2/leaf".into(),
                    version: Some(3),
                },
            ],
            2,
            ErrorCode::BadVersion,
        ),
    ];
    for (ops, index, expected) in cases {
        let described = format!("{ops:?}");
        match c.multi(ops).await {
            Err(Error::Server(info)) => {
                assert_eq!(info.code, expected, "{described}: {info}");
                assert_eq!(info.op_index, Some(index), "{described}: {info:?}");
            }
            other => panic!("{described}: expected a failure, got {other:?}"),
        }
        // Nothing is visible, to this client or another.
        for client in [&c, &observer] {
            let (data, stat) = client.get_data("/r").await.expect("get");
            assert_eq!(data, b"orig");
            assert_eq!(stat, before, "{described}");
            assert_eq!(
                client.get_children("/r").await.expect("children"),
                vec!["old".to_string()],
                "{described}"
            );
        }
    }
    // The rolled-back sequential create did not use up a number.
    let p = c
        .create("/r/s-", b"".to_vec(), CreateMode::PersistentSequential)
        .await
        .expect("sequential");
    assert_eq!(p, "/r/s-0000000000");

    // The builder API reports the same way.
    let err = c
        .transaction()
        .check("/r", 0)
        .create("/r/t", b"".to_vec(), CreateMode::Persistent)
        .check("/missing", 0)
        .commit()
        .await
        .expect_err("must fail");
    match err {
        Error::Server(info) => {
            assert_eq!((info.code, info.op_index), (ErrorCode::NoNode, Some(2)));
            assert!(info.message.contains("/missing"), "{info}");
        }
        other => panic!("{other:?}"),
    }
    assert!(c.exists("/r/t").await.expect("exists").is_none());
}

#[tokio::test]
async fn check_ops() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    c.create("/v", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    c.set_data("/v", b"1".to_vec(), None).await.expect("set");
    let ok = c
        .transaction()
        .check("/v", 1)
        .check("/", 0)
        .commit()
        .await
        .expect("checks pass");
    assert_eq!(ok, vec![MultiResult::Checked, MultiResult::Checked]);
    for (path, version, expected) in [
        ("/v", 0, ErrorCode::BadVersion),
        ("/v", 2, ErrorCode::BadVersion),
        ("/w", 0, ErrorCode::NoNode),
    ] {
        match c.transaction().check(path, version).commit().await {
            Err(Error::Server(info)) => {
                assert_eq!((info.code, info.op_index), (expected, Some(0)))
            }
            other => panic!("check {path}@{version}: {other:?}"),
        }
    }
    // A guarded write: applied only while the guard holds.
    c.transaction()
        .check("/v", 1)
        .set_data("/v", b"2".to_vec(), None)
        .commit()
        .await
        .expect("guard holds");
    assert!(c
        .transaction()
        .check("/v", 1)
        .set_data("/v", b"3".to_vec(), None)
        .commit()
        .await
        .is_err());
    assert_eq!(c.get_data("/v").await.expect("get").0, b"2");
}

#[tokio::test]
async fn sync_makes_other_clients_writes_visible() {
    let server = TestServer::start(&[]);
    let writer = connect(&server).await;
    let reader = connect(&server).await;
    for i in 0..20 {
        let path = format!("/sync{i}");
        let stat = writer
            .create_with(req(&path, b"w", CreateMode::Persistent, false))
            .await
            .expect("create")
            .stat;
        reader.sync(&path).await.expect("sync");
        let (data, read) = reader.get_data(&path).await.expect("visible after sync");
        assert_eq!((data.as_slice(), read), (&b"w"[..], stat));
        assert!(reader.last_zxid() >= stat.czxid);
    }
    reader.sync("/").await.expect("sync the root");
    // A path that does not exist is fine: the barrier covers the whole tree.
    reader.sync("/does/not/exist").await.expect("sync");
}

#[tokio::test]
async fn server_limits_are_reported_as_errors() {
    let server = TestServer::start(&["--max-watches-per-session", "2", "--max-sessions", "2"]);
    let c = connect(&server).await;
    c.create("/w", b"".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let (_, _, _w1) = c.get_data_watch("/w").await.expect("first watch");
    let (_, _w2) = c.exists_watch("/other").await.expect("second watch");
    match c.get_children_watch("/w").await {
        Err(Error::Server(info)) => {
            assert_eq!(info.code, ErrorCode::LimitExceeded);
            assert!(info.message.contains("max_watches_per_session"), "{info}");
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    match c
        .add_watch("/w", corral_client::AddWatchMode::Persistent)
        .await
    {
        Err(e) => assert!(e.is(ErrorCode::LimitExceeded), "{e}"),
        Ok(_) => panic!("a third watch was accepted"),
    }
    // Re-adding a watch the session holds is not a new one; plain reads still work.
    let (_, _, _w3) = c.get_data_watch("/w").await.expect("same watch again");
    assert!(c.get_children("/w").await.expect("read").is_empty());

    // Sessions: the limit counts live sessions; a closed one frees its slot.
    let second = connect(&server).await;
    match Client::connect(ClientConfig::new([server.addr()])).await {
        Err(Error::Server(info)) => {
            assert_eq!(info.code, ErrorCode::LimitExceeded);
            assert!(info.message.contains("max_sessions"), "{info}");
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    second.close().await.expect("close");
    let third = connect(&server).await;
    third.sync("/").await.expect("works");
}

#[tokio::test]
async fn data_over_the_frame_limit_is_refused_by_the_client() {
    let server = TestServer::start(&[]);
    let c = connect(&server).await;
    // Over max_data_bytes (1 MiB) but within a frame: the server refuses it.
    assert_eq!(
        code(
            c.create("/d", vec![0u8; (1 << 20) + 1], CreateMode::Persistent)
                .await
        ),
        ErrorCode::DataTooLarge
    );
    // Over the frame limit: the client cannot even send it.
    match c
        .create("/d", vec![0u8; 2 << 20], CreateMode::Persistent)
        .await
    {
        Err(e) => assert!(e.is(ErrorCode::FrameTooLarge), "{e}"),
        Ok(p) => panic!("created {p}"),
    }
    // Exactly max_data_bytes fits, and the connection is still fine.
    c.create("/d", vec![9u8; 1 << 20], CreateMode::Persistent)
        .await
        .expect("1 MiB");
    let (data, stat) = c.get_data("/d").await.expect("get");
    assert_eq!((data.len(), stat.data_length), (1 << 20, 1 << 20));
}

/// `max_state_bytes` bounds the tree: once it is full, writes that would add to it
/// (creates, locks, larger data) are refused with `LimitExceeded` naming the setting,
/// and those that add nothing (deletes, releases, smaller data) go on, so the tree
/// can be emptied and used again.
#[tokio::test]
async fn a_full_tree_refuses_growth_and_can_be_emptied() {
    // Each znode counts its path, its data and 450 bytes: the root and about 30
    // znodes of 100 bytes fit.
    let server = TestServer::start(&["--max-state-bytes", "20000"]);
    let c = connect(&server).await;
    let mut created = Vec::new();
    let refused = loop {
        let path = format!("/n{}", created.len());
        match c.create(&path, vec![1; 100], CreateMode::Persistent).await {
            Ok(_) => created.push(path),
            Err(e) => break e,
        }
        assert!(
            created.len() < 100,
            "max_state_bytes never refused a create"
        );
    };
    assert!(refused.is(ErrorCode::LimitExceeded), "{refused}");
    assert!(refused.to_string().contains("max_state_bytes"), "{refused}");
    assert!(created.len() >= 25, "only {} znodes fit", created.len());
    let lock = c
        .lock("/locks/full", LockOptions::default())
        .try_acquire()
        .await;
    let err = lock.expect_err("a lock adds a queue node");
    assert!(err.is(ErrorCode::LimitExceeded), "{err}");
    // Growing a node's data is refused; shrinking it is not.
    assert_eq!(
        code(c.set_data("/n0", vec![2; 1000], None).await),
        ErrorCode::LimitExceeded
    );
    c.set_data("/n0", vec![2; 10], None)
        .await
        .expect("smaller data");
    // A multi that only deletes passes; deleting makes room again.
    c.multi(vec![MultiOp::Delete {
        path: created.pop().expect("one"),
        version: None,
    }])
    .await
    .expect("a multi of deletes");
    for path in created.drain(1..) {
        c.delete(&path, None).await.expect("delete");
    }
    let guard = c
        .lock("/locks/full", LockOptions::default())
        .try_acquire()
        .await
        .expect("room for a lock")
        .expect("the lock is free");
    guard.release().await.expect("release");
    c.create("/again", vec![1; 100], CreateMode::Persistent)
        .await
        .expect("room again");
}
