//! Talks to a real server at the frame level: handshakes, malformed and oversized frames,
//! connection limits. A misbehaving connection gets an error and is closed; nobody else
//! notices.

use corral_protocol::frame::encode_frame;
use corral_protocol::{
    AddWatchMode, ClientMessage, Codec, ErrorCode, Hello, HelloReply, MultiOp, Op, OpResult,
    Request, ServerMessage, SessionRequest, DEFAULT_MAX_FRAME_BYTES, OP_COUNT,
};
use corral_tests::TestServer;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(10);

type Handshake = Framed<TcpStream, Codec<HelloReply, Hello>>;
type Session = Framed<TcpStream, Codec<ServerMessage, ClientMessage>>;

async fn hello(addr: &str, hello: Hello) -> (Handshake, HelloReply) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut framed = Framed::new(stream, Codec::new(DEFAULT_MAX_FRAME_BYTES));
    framed.send(hello).await.expect("send hello");
    let reply = tokio::time::timeout(WAIT, framed.next())
        .await
        .expect("hello reply in time")
        .expect("a reply frame")
        .expect("a valid reply");
    (framed, reply)
}

async fn session(addr: &str) -> Session {
    let (framed, reply) = hello(addr, Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 0)).await;
    assert!(matches!(reply, HelloReply::Accepted(_)), "{reply:?}");
    framed.map_codec(|c| c.retype())
}

async fn request(s: &mut Session, xid: u64, op: Op) -> ServerMessage {
    s.send(ClientMessage::Request(Request { xid, op }))
        .await
        .expect("send request");
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("response in time")
        .expect("a frame")
        .expect("a valid frame")
}

/// Asserts that a ping with this xid is answered on the session.
async fn assert_pong(s: &mut Session, xid: u64) {
    match request(s, xid, Op::Ping).await {
        ServerMessage::Response(r) => assert_eq!(r.result, Ok(OpResult::Pong)),
        other => panic!("unexpected {other:?}"),
    }
}

/// A request to create a persistent node at `path` holding `data`.
fn create_op(path: String, data: Vec<u8>) -> Op {
    Op::Create(corral_protocol::CreateRequest {
        path,
        data,
        mode: corral_protocol::CreateMode::Persistent,
        make_parents: false,
    })
}

async fn assert_works(addr: &str) {
    let mut s = session(addr).await;
    assert_pong(&mut s, 1).await;
}

/// Reads until EOF (bounded), returning everything the server sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "server did not close the connection in time");
    out
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    corral_protocol::frame::decode_frame::<T>(bytes, DEFAULT_MAX_FRAME_BYTES)
        .expect("valid frame")
        .expect("complete frame")
        .0
}

#[tokio::test]
async fn wrong_magic_or_version_is_refused_cleanly() {
    let server = TestServer::start(&[]);
    let mut bad = Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 0);
    bad.magic = 0xdead_beef;
    let (_, reply) = hello(&server.addr(), bad).await;
    match reply {
        HelloReply::Refused(e) => assert_eq!(e.code, ErrorCode::ProtocolMismatch),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut future = Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 0);
    future.version = 99;
    let (_, reply) = hello(&server.addr(), future).await;
    match reply {
        HelloReply::Refused(e) => {
            assert_eq!(e.code, ErrorCode::ProtocolMismatch);
            assert!(
                e.message.contains("99"),
                "message names the version: {}",
                e.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_works(&server.addr()).await;
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_only_their_connection() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut bystander = session(&addr).await;

    // Garbage instead of a handshake.
    let mut raw = TcpStream::connect(&addr).await.expect("connect");
    raw.write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let reply: HelloReply = decode(&read_to_close(&mut raw).await);
    match reply {
        HelloReply::Refused(e) => assert_eq!(e.code, ErrorCode::Malformed),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // An oversized frame after a good handshake: rejected as soon as its length is read.
    let s = session(&addr).await;
    let mut raw = s.into_inner();
    raw.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    let msg: ServerMessage = decode(&read_to_close(&mut raw).await);
    match msg {
        ServerMessage::Goodbye(e) => assert_eq!(e.code, ErrorCode::FrameTooLarge),
        other => panic!("expected a goodbye, got {other:?}"),
    }

    // A well-framed but undecodable message after a good handshake.
    let s = session(&addr).await;
    let mut raw = s.into_inner();
    raw.write_all(&[0, 0, 0, 4, 0x77, 0x77, 0x77, 0x77])
        .await
        .expect("write");
    let msg: ServerMessage = decode(&read_to_close(&mut raw).await);
    match msg {
        ServerMessage::Goodbye(e) => assert_eq!(e.code, ErrorCode::Malformed),
        other => panic!("expected a goodbye, got {other:?}"),
    }

    // The bystander never noticed.
    assert_pong(&mut bystander, 1).await;
}

#[tokio::test]
async fn a_large_request_under_the_limit_is_served_and_one_over_is_refused() {
    let server = TestServer::start(&["--max-data-bytes", "1000", "--max-frame-bytes", "8192"]);
    let mut s = session(&server.addr()).await;
    let create = |len: usize| create_op("/big".into(), vec![7u8; len]);
    match request(&mut s, 1, create(1001)).await {
        ServerMessage::Response(r) => {
            let e = r.result.expect_err("data over max_data_bytes");
            assert_eq!(e.code, ErrorCode::DataTooLarge);
        }
        other => panic!("unexpected {other:?}"),
    }
    match request(&mut s, 2, create(1000)).await {
        ServerMessage::Response(r) => assert!(r.result.is_ok(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    // A frame over max_frame_bytes: the connection is closed with FrameTooLarge.
    let mut frame = bytes::BytesMut::new();
    encode_frame(
        &ClientMessage::Request(Request {
            xid: 3,
            op: create(9000),
        }),
        &mut frame,
        usize::MAX,
    )
    .expect("encode");
    let mut raw = s.into_inner();
    raw.write_all(&frame).await.expect("write");
    let msg: ServerMessage = decode(&read_to_close(&mut raw).await);
    match msg {
        ServerMessage::Goodbye(e) => assert_eq!(e.code, ErrorCode::FrameTooLarge),
        other => panic!("expected a goodbye, got {other:?}"),
    }
    assert_works(&server.addr()).await;
}

/// A response that does not fit in a frame is answered with a `LimitExceeded` error on
/// the same connection, which stays usable: a multi whose results are longer than
/// `max_frame_bytes` (the connection's writer finds out when it encodes the answer; it
/// used to close the connection without a word, and a client then reconnected and asked
/// again until its request timed out), and a directory listing that long (refused
/// before it is built, naming the paged listing, which works).
#[tokio::test]
async fn a_response_over_the_frame_limit_is_an_error_and_the_connection_stays() {
    let server = TestServer::start(&["--max-data-bytes", "1000", "--max-frame-bytes", "8192"]);
    let mut s = session(&server.addr()).await;
    let create = |path: String| create_op(path, Vec::new());
    match request(&mut s, 1, create("/dir".into())).await {
        ServerMessage::Response(r) => assert!(r.result.is_ok(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    // 600 names of 16 bytes, each with an 8-byte length: about 14 KiB of listing.
    let children = 600u64;
    for i in 0..children {
        let xid = 2 + i;
        let op = create(format!("/dir/child-{i:010}"));
        s.feed(ClientMessage::Request(Request { xid, op }))
            .await
            .expect("send request");
    }
    s.flush().await.expect("flush");
    for _ in 0..children {
        match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(Ok(ServerMessage::Response(r)))) => assert!(r.result.is_ok(), "{r:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let list = Op::GetChildren {
        path: "/dir".into(),
        watch: false,
    };
    match request(&mut s, 10_000, list).await {
        ServerMessage::Response(r) => {
            assert_eq!(r.xid, 10_000);
            let e = r.result.expect_err("a listing over max_frame_bytes");
            assert_eq!(e.code, ErrorCode::LimitExceeded, "{e:?}");
            assert!(e.message.contains("max_frame_bytes"), "{}", e.message);
            assert!(e.message.contains("GetChildrenPage"), "{}", e.message);
        }
        other => panic!("unexpected {other:?}"),
    }
    let page = Op::GetChildrenPage {
        path: "/dir".into(),
        after: String::new(),
        max_names: 10,
        max_bytes: u32::MAX,
    };
    match request(&mut s, 10_001, page).await {
        ServerMessage::Response(r) => match r.result {
            Ok(OpResult::ChildrenPage { children, more, .. }) => {
                assert_eq!(children.len(), 10);
                assert_eq!(children[0], "child-0000000000");
                assert!(more);
            }
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
    // 150 creates of 21-byte paths: about 7 KiB of request, 14 KiB of results.
    let multi = Op::Multi(
        (0..150)
            .map(|i| match create(format!("/dir/multi-{i:010}")) {
                Op::Create(c) => MultiOp::Create(c),
                other => unreachable!("create_op made {other:?}"),
            })
            .collect(),
    );
    match request(&mut s, 10_002, multi).await {
        ServerMessage::Response(r) => {
            assert_eq!(r.xid, 10_002);
            let e = r.result.expect_err("results over max_frame_bytes");
            assert_eq!(e.code, ErrorCode::LimitExceeded, "{e:?}");
            assert!(
                e.message.contains("exceeds max_frame_bytes"),
                "{}",
                e.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_pong(&mut s, 10_003).await;
}

/// A request for an operation this server does not know (a newer client's) is answered
/// `Unimplemented`, and the connection goes on; it used to be a malformed frame that
/// ended the connection, and with it every other request in flight on it.
#[tokio::test]
async fn an_unknown_operation_is_unimplemented_and_the_connection_stays() {
    let server = TestServer::start(&[]);
    let mut s = session(&server.addr()).await;
    // ClientMessage::Request { xid: 5, op: <tag OP_COUNT + 7> { some bytes } }.
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&5u64.to_le_bytes());
    payload.extend_from_slice(&(OP_COUNT + 7).to_le_bytes());
    payload.extend_from_slice(b"a future operation's fields");
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    s.get_mut().write_all(&frame).await.expect("send the frame");
    match tokio::time::timeout(WAIT, s.next()).await {
        Ok(Some(Ok(ServerMessage::Response(r)))) => {
            assert_eq!(r.xid, 5);
            let e = r.result.expect_err("an unknown operation");
            assert_eq!(e.code, ErrorCode::Unimplemented, "{e:?}");
            assert!(e.message.contains("upgrade the servers"), "{}", e.message);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_pong(&mut s, 6).await;
}

/// A server started with `--log info` whose log the test reads.
struct LoggedServer {
    child: std::process::Child,
    addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread that collects the log; it ends with the process.
    log_reader: Option<std::thread::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl LoggedServer {
    fn start(extra_args: &[&str]) -> LoggedServer {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let data = tempfile::tempdir().expect("data directory");
        let mut child = Command::new(corral_tests::corral_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "off",
                "--log",
                "info",
            ])
            .arg("--data-dir")
            .arg(data.path())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corral");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let collected = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Ok(mut log) = collected.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("corral listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server listens");
        LoggedServer {
            child,
            addr,
            log,
            log_reader: Some(log_reader),
            _data: data,
        }
    }

    /// Lines of the log so far that contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .map(|log| log.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }
}

impl LoggedServer {
    /// Kills the server and returns its whole log (everything it wrote before it died).
    fn kill_and_read_log(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A frame holding a request for operation `OP_COUNT + 7`, which no server knows.
fn unknown_op_frame(xid: u64) -> Vec<u8> {
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&xid.to_le_bytes());
    payload.extend_from_slice(&(OP_COUNT + 7).to_le_bytes());
    payload.extend_from_slice(b"a future operation's fields");
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// A client that sends requests for unknown operations (answered one by one, the
/// connection stays) does not write a line to the server's log for each of them: it
/// used to, at `info`, so one connection could flood the log at any rate it liked (and a
/// newer client did during a rolling upgrade). The first one per connection is logged.
#[tokio::test]
async fn requests_for_unknown_operations_do_not_flood_the_log() {
    const REQUESTS: u64 = 200;
    let server = LoggedServer::start(&[]);
    let mut s = session(&server.addr).await;
    let frames: Vec<u8> = (1..=REQUESTS).flat_map(unknown_op_frame).collect();
    s.get_mut()
        .write_all(&frames)
        .await
        .expect("send the frames");
    for xid in 1..=REQUESTS {
        match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(Ok(ServerMessage::Response(r)))) => {
                assert_eq!(r.xid, xid);
                let e = r.result.expect_err("an unknown operation");
                assert_eq!(e.code, ErrorCode::Unimplemented, "{e:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_pong(&mut s, REQUESTS + 1).await;
    // A marker: once the log shows this bad handshake, it shows every line written
    // before it, those of the unknown operations included.
    let mut raw = TcpStream::connect(&server.addr).await.expect("connect");
    raw.write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let _ = read_to_close(&mut raw).await;
    corral_tests::eventually("the marker in the log", WAIT, || {
        let seen = server.count("bad handshake") > 0;
        async move { seen.then_some(()) }
    })
    .await;
    let lines = server.count("unknown operation");
    assert!(
        lines <= 1,
        "{lines} log lines for {REQUESTS} unknown operations on one connection"
    );
}

/// Connections refused over `max_connections` do not write a log line each: a client
/// (or an attacker) connecting in a loop used to write a warning per attempt, at any
/// rate it liked. Refusals are logged at most once per interval, with their count.
#[tokio::test]
async fn refusals_over_max_connections_do_not_flood_the_log() {
    const ATTEMPTS: usize = 50;
    let server = LoggedServer::start(&["--max-connections", "1"]);
    let _held = session(&server.addr).await;
    for _ in 0..ATTEMPTS {
        let mut raw = TcpStream::connect(&server.addr).await.expect("connect");
        let reply: HelloReply = decode(&read_to_close(&mut raw).await);
        match reply {
            HelloReply::Refused(e) => assert_eq!(e.code, ErrorCode::LimitExceeded),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let log = server.kill_and_read_log();
    let lines = log
        .lines()
        .filter(|l| l.contains("too many connections"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for {ATTEMPTS} refused connections:\n{log}"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_a_reason() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let addr = server.addr();
    let _a = session(&addr).await;
    let _b = session(&addr).await;
    let mut raw = TcpStream::connect(&addr).await.expect("connect");
    let reply: HelloReply = decode(&read_to_close(&mut raw).await);
    match reply {
        HelloReply::Refused(e) => {
            assert_eq!(e.code, ErrorCode::LimitExceeded);
            assert!(e.message.contains("max_connections"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(_a);
    // The freed slot is usable again (the server notices the close asynchronously).
    a_slot_frees_up(&addr, "a connection slot to free up").await;
}

/// Waits (bounded) until a new client is accepted: the server gave back a slot.
async fn a_slot_frees_up(addr: &str, what: &str) {
    corral_tests::eventually(what, WAIT, || {
        let addr = addr.to_string();
        async move {
            let stream = TcpStream::connect(&addr).await.ok()?;
            let mut framed: Handshake = Framed::new(stream, Codec::new(DEFAULT_MAX_FRAME_BYTES));
            framed
                .send(Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 0))
                .await
                .ok()?;
            match tokio::time::timeout(WAIT, framed.next()).await {
                Ok(Some(Ok(HelloReply::Accepted(_)))) => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

/// Reads what the server still sends until the connection ends (bounded): the frames
/// before the end, and the `Goodbye` if one came. Panics if the server keeps the
/// connection open.
async fn read_until_closed(s: &mut Session) -> (usize, Option<corral_protocol::ErrorInfo>) {
    let mut frames = 0usize;
    let mut goodbye = None;
    loop {
        match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(Ok(ServerMessage::Goodbye(e)))) => goodbye = Some(e),
            Ok(Some(Ok(_))) => frames += 1,
            // The end of the stream, or a reset: closed either way.
            Ok(Some(Err(_))) | Ok(None) => return (frames, goodbye),
            Err(_) => panic!(
                "the server still holds the connection open ({frames} frames read, then \
                 nothing for {WAIT:?})"
            ),
        }
    }
}

/// A client that sends reads of 256 KiB one at a time (so the socket buffers fill
/// first, then the server's queue) and never reads the answers is disconnected, and its
/// connection really ends: with `--max-connections 1` a new client gets in, and the slow
/// one, reading at last, reaches the end of the stream.
async fn a_client_that_does_not_read_is_disconnected(extra_args: &[&str]) {
    let mut args = vec!["--max-connections", "1"];
    args.extend_from_slice(extra_args);
    let server = TestServer::start(&args);
    let addr = server.addr();
    let mut s = session(&addr).await;
    match request(&mut s, 1, create_op("/big".into(), vec![7u8; 256 * 1024])).await {
        ServerMessage::Response(r) => assert!(r.result.is_ok(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let mut sent = 0;
    for xid in 2..202 {
        let op = Op::GetData {
            path: "/big".into(),
            watch: false,
        };
        if s.send(ClientMessage::Request(Request { xid, op }))
            .await
            .is_err()
        {
            break; // the server closed the connection
        }
        sent += 1;
        // Pacing, not synchronisation: the answers pile up one by one.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a_slot_frees_up(
        &addr,
        "the slot of the client that does not read to free up",
    )
    .await;
    let (frames, goodbye) = read_until_closed(&mut s).await;
    eprintln!("sent {sent} reads; read {frames} frames, then the end; goodbye: {goodbye:?}");
    if let Some(e) = goodbye {
        assert_eq!(e.code, ErrorCode::LimitExceeded, "{e:?}");
    }
}

#[tokio::test]
async fn a_client_over_the_queued_messages_limit_is_disconnected_and_frees_its_slot() {
    a_client_that_does_not_read_is_disconnected(&["--max-queued-messages-per-connection", "8"])
        .await;
}

#[tokio::test]
async fn a_client_over_the_queued_bytes_limit_is_disconnected_and_frees_its_slot() {
    // 2 MiB: eight answers of 256 KiB.
    a_client_that_does_not_read_is_disconnected(&["--max-queued-bytes-per-connection", "2097152"])
        .await;
}

/// A client that stops reading while the server writes to it is disconnected after
/// `write_stall_timeout_ms`, even though its queue never grows over the limits (nothing
/// more is sent to it): its slot frees up and its socket is closed.
#[tokio::test]
async fn a_client_whose_socket_accepts_nothing_is_disconnected_after_the_write_stall_timeout() {
    let server = TestServer::start(&["--max-connections", "1", "--write-stall-timeout-ms", "300"]);
    let addr = server.addr();
    let mut s = session(&addr).await;
    match request(&mut s, 1, create_op("/big".into(), vec![7u8; 1 << 20])).await {
        ServerMessage::Response(r) => assert!(r.result.is_ok(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    // 40 MiB of answers, more than the socket buffers hold, but 40 messages and under the
    // default 64 MiB byte limit: only the stall timeout can end this connection.
    for xid in 2..42 {
        let op = Op::GetData {
            path: "/big".into(),
            watch: false,
        };
        s.feed(ClientMessage::Request(Request { xid, op }))
            .await
            .expect("feed");
    }
    s.flush().await.expect("flush");
    a_slot_frees_up(&addr, "the slot of the stalled client to free up").await;
    let (frames, goodbye) = read_until_closed(&mut s).await;
    assert!(
        frames < 41,
        "the stalled client got every answer ({frames} frames)"
    );
    assert!(goodbye.is_none(), "{goodbye:?}");
}

/// One transaction that fires more events for one session than its queue holds (a
/// `Multi` creating many nodes under a recursive watch) reaches a watcher that reads
/// them: the burst of one round is queued whole, and the watcher stays connected.
#[tokio::test]
async fn a_burst_of_events_larger_than_the_queue_reaches_a_watcher_that_reads() {
    const N: usize = 300;
    let server = TestServer::start(&["--max-queued-messages-per-connection", "16"]);
    let addr = server.addr();
    let mut m = session(&addr).await;
    match request(&mut m, 1, create_op("/d".into(), vec![])).await {
        ServerMessage::Response(r) => assert!(r.result.is_ok(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let mut w = session(&addr).await;
    let watch = Op::AddWatch {
        path: "/d".into(),
        mode: AddWatchMode::PersistentRecursive,
    };
    match request(&mut w, 1, watch).await {
        ServerMessage::Response(r) => assert!(r.result.is_ok(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        while got < N {
            match tokio::time::timeout(WAIT, w.next()).await {
                Ok(Some(Ok(ServerMessage::Watch(_)))) => got += 1,
                Ok(Some(Ok(other))) => panic!("unexpected {other:?} after {got} events"),
                Ok(Some(Err(e))) => panic!("bad frame {e} after {got} events"),
                Ok(None) => panic!("the server closed the watcher's connection after {got} events"),
                Err(_) => panic!("only {got} of {N} events came"),
            }
        }
        // Still connected and served.
        assert_pong(&mut w, 2).await;
    });
    let ops = (0..N)
        .map(|i| match create_op(format!("/d/c{i}"), vec![]) {
            Op::Create(c) => MultiOp::Create(c),
            _ => unreachable!("create_op makes a Create"),
        })
        .collect();
    match request(&mut m, 2, Op::Multi(ops)).await {
        ServerMessage::Response(r) => assert!(r.result.is_ok(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    reader
        .await
        .expect("the watcher got every event and stayed connected");
}

#[tokio::test]
async fn a_client_ahead_of_the_server_is_sent_elsewhere() {
    let server = TestServer::start(&[]);
    let (_, reply) = hello(
        &server.addr(),
        Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 1_000_000),
    )
    .await;
    match reply {
        HelloReply::Refused(e) => assert_eq!(e.code, ErrorCode::Unavailable),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start(&[]);
    let mut s = session(&server.addr()).await;
    let n = 200u64;
    for xid in 1..=n {
        let op = if xid % 2 == 0 {
            Op::Exists {
                path: format!("/n{}", xid - 1),
                watch: false,
            }
        } else {
            Op::Create(corral_protocol::CreateRequest {
                path: format!("/n{xid}"),
                data: vec![],
                mode: corral_protocol::CreateMode::Persistent,
                make_parents: false,
            })
        };
        s.feed(ClientMessage::Request(Request { xid, op }))
            .await
            .expect("feed");
    }
    s.flush().await.expect("flush");
    for xid in 1..=n {
        let msg = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("in time")
            .expect("frame")
            .expect("valid");
        let ServerMessage::Response(r) = msg else {
            panic!("unexpected {msg:?}");
        };
        assert_eq!(r.xid, xid, "responses come in request order");
        if xid % 2 == 0 {
            // The read sees the connection's own preceding write.
            assert!(matches!(r.result, Ok(OpResult::Exists(Some(_)))), "{r:?}");
        }
    }
}
