//! Transport tests over loopback. No sleeps: every wait is for an event, bounded by
//! `WAIT`.

use super::outbound::Backoff;
use super::*;
use corral_protocol::Codec;
use futures::{SinkExt, StreamExt};
use rand::{rngs::StdRng, SeedableRng};
use serde::Deserialize;
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// Upper bound on any single wait; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(10);
const CLUSTER: u64 = 7;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum TestMsg {
    Seq(u64),
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Bulky for TestMsg {
    fn may_be_bulky(&self) -> bool {
        matches!(self, TestMsg::Blob(_))
    }
}

struct TestNode {
    id: u64,
    addr: SocketAddr,
    transport: Transport<TestMsg>,
    events: mpsc::Receiver<PeerEvent<TestMsg>>,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A loopback address nobody listens on.
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback()).expect("bind");
    listener.local_addr().expect("local address")
}

fn config(node_id: u64, listen: SocketAddr, peers: BTreeMap<u64, SocketAddr>) -> PeerConfig {
    PeerConfig {
        node_id,
        listen,
        peers,
        max_frame_bytes: 1 << 20,
        send_queue_messages: 4096,
        connect_timeout_ms: 5_000,
        backoff_min_ms: 5,
        backoff_max_ms: 100,
        cluster_id: CLUSTER,
        inbound_quiet_ms: 60_000,
    }
}

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=debug`).
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

async fn start_node(config: PeerConfig, bound: Bound) -> TestNode {
    init_logging();
    let (tx, events) = mpsc::channel(64);
    let id = config.node_id;
    let addr = bound.local_addr();
    let transport = bound.start(config, tx).await.expect("start");
    TestNode {
        id,
        addr,
        transport,
        events,
    }
}

/// Starts one transport per id, each configured with all the others.
async fn cluster(ids: &[u64]) -> Vec<TestNode> {
    let mut bound = Vec::new();
    for _ in ids {
        bound.push(Bound::bind(loopback()).await.expect("bind"));
    }
    let addrs: BTreeMap<u64, SocketAddr> = ids
        .iter()
        .zip(&bound)
        .map(|(&id, b)| (id, b.local_addr()))
        .collect();
    let mut nodes = Vec::new();
    for (&id, b) in ids.iter().zip(bound) {
        let peers = others(&addrs, id);
        nodes.push(start_node(config(id, b.local_addr(), peers), b).await);
    }
    nodes
}

fn others(addrs: &BTreeMap<u64, SocketAddr>, me: u64) -> BTreeMap<u64, SocketAddr> {
    addrs
        .iter()
        .filter(|(&id, _)| id != me)
        .map(|(&id, &addr)| (id, addr))
        .collect()
}

async fn next_event(node: &mut TestNode) -> PeerEvent<TestMsg> {
    timeout(WAIT, node.events.recv())
        .await
        .expect("timed out waiting for a peer event")
        .expect("events channel closed")
}

async fn wait_links_up(node: &mut TestNode, peers: &[u64]) {
    let mut missing: BTreeSet<u64> = peers.iter().copied().collect();
    while !missing.is_empty() {
        match next_event(node).await {
            PeerEvent::LinkUp { peer, version } => {
                assert!(missing.remove(&peer), "second LinkUp {peer}");
                assert_eq!(
                    version, PEER_PROTOCOL_VERSION,
                    "node {}: link to {peer} up at version {version}",
                    node.id
                );
            }
            other => panic!("node {}: unexpected {other:?} while links come up", node.id),
        }
    }
}

async fn all_links_up(nodes: &mut [TestNode]) {
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    for node in nodes.iter_mut() {
        let peers: Vec<u64> = ids.iter().copied().filter(|&p| p != node.id).collect();
        wait_links_up(node, &peers).await;
    }
}

/// Receives `count` numbered messages from each of `from`, asserting each peer's order
/// and that nothing else arrives.
async fn expect_sequences(node: &mut TestNode, from: &[u64], count: u64) {
    let mut next: BTreeMap<u64, u64> = from.iter().map(|&p| (p, 0)).collect();
    let mut remaining = count * from.len() as u64;
    while remaining > 0 {
        match next_event(node).await {
            PeerEvent::Message {
                from,
                msg: TestMsg::Seq(n),
            } => {
                let expected = next
                    .get_mut(&from)
                    .expect("a message from an expected peer");
                assert_eq!(
                    n, *expected,
                    "node {} got message {n} from {from} out of order",
                    node.id
                );
                *expected += 1;
                remaining -= 1;
            }
            other => panic!("node {}: unexpected {other:?}", node.id),
        }
    }
}

fn send_sequence(node: &TestNode, to: u64, count: u64) {
    for n in 0..count {
        node.transport
            .send(to, TestMsg::Seq(n))
            .expect("send on a live link with room");
    }
}

async fn stop(node: &TestNode) {
    node.transport.shutdown();
    timeout(WAIT, node.transport.closed())
        .await
        .expect("transport tasks stop after shutdown");
}

/// Opens a raw connection, sends `hello` and returns the reply (the connection is left
/// open).
async fn raw_handshake(
    addr: SocketAddr,
    hello: PeerHello,
) -> (
    PeerHelloReply,
    Framed<TcpStream, Codec<PeerHelloReply, PeerHello>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut framed = Framed::new(stream, Codec::<PeerHelloReply, PeerHello>::new(1024));
    framed.send(hello).await.expect("send hello");
    let reply = timeout(WAIT, framed.next())
        .await
        .expect("a reply in time")
        .expect("a reply before the end of stream")
        .expect("a well-formed reply");
    (reply, framed)
}

/// The incarnation `raw_peer` announces: every raw peer of a test is one process.
const RAW_INCARNATION: u64 = 0x5eed_0001;

/// A raw dialer's connection after the identity step.
type RawIdentified = Framed<TcpStream, Codec<PeerHelloReply, PeerIdentity>>;

/// Opens a raw connection and goes through the whole handshake at version 2 as `from`
/// with `identity`: returns the second reply (the hello's must be `Accepted`); the
/// connection is left open.
async fn raw_identify(
    addr: SocketAddr,
    from: u64,
    to: u64,
    identity: PeerIdentity,
) -> (PeerHelloReply, RawIdentified) {
    let (reply, framed) = raw_handshake(addr, PeerHello::new(CLUSTER, from, to)).await;
    assert_eq!(reply, PeerHelloReply::Accepted, "the hello is accepted");
    let mut framed = framed.map_codec(|c| c.retype::<PeerHelloReply, PeerIdentity>());
    framed.send(identity).await.expect("send the identity");
    let reply = timeout(WAIT, framed.next())
        .await
        .expect("a second reply in time")
        .expect("a second reply before the end of stream")
        .expect("a well-formed second reply");
    (reply, framed)
}

/// The identity of a member of `members` (sorted here) with `incarnation`.
fn identity(members: &[u64], incarnation: u64) -> PeerIdentity {
    let mut members = members.to_vec();
    members.sort_unstable();
    PeerIdentity {
        members,
        incarnation,
    }
}

/// A raw dialer that completed the handshake as `from` of the members {`from`, `to`}
/// with `incarnation`, ready to send `TestMsg` frames.
async fn raw_peer_as(
    addr: SocketAddr,
    from: u64,
    to: u64,
    incarnation: u64,
) -> Framed<TcpStream, Codec<(), TestMsg>> {
    let (reply, framed) = raw_identify(addr, from, to, identity(&[from, to], incarnation)).await;
    assert_eq!(reply, PeerHelloReply::Accepted);
    framed.map_codec(|c| c.retype())
}

/// [`raw_peer_as`] with [`RAW_INCARNATION`].
async fn raw_peer(addr: SocketAddr, from: u64, to: u64) -> Framed<TcpStream, Codec<(), TestMsg>> {
    raw_peer_as(addr, from, to, RAW_INCARNATION).await
}

/// Asserts that the identity step is refused and the connection closed; returns the
/// reason.
async fn identity_refused(addr: SocketAddr, from: u64, to: u64, identity: PeerIdentity) -> String {
    let (reply, mut framed) = raw_identify(addr, from, to, identity).await;
    let PeerHelloReply::Refused { reason } = reply else {
        panic!("the identity was accepted");
    };
    let after = timeout(WAIT, framed.next()).await.expect("closed in time");
    assert!(
        matches!(after, None | Some(Err(_))),
        "the connection must be closed after a refusal, got {after:?}"
    );
    reason
}

/// Asserts the handshake is refused and the connection closed; returns the reason.
async fn refused(addr: SocketAddr, hello: PeerHello) -> String {
    let (reply, mut framed) = raw_handshake(addr, hello).await;
    let PeerHelloReply::Refused { reason } = reply else {
        panic!("{hello:?} was accepted");
    };
    let after = timeout(WAIT, framed.next()).await.expect("closed in time");
    assert!(
        matches!(after, None | Some(Err(_))),
        "the connection must be closed after a refusal, got {after:?}"
    );
    reason
}

/// Asserts that the other side closes the connection; returns what it sent first.
async fn expect_closed(mut stream: TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    // An error (connection reset) also means closed.
    let _ = timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("the connection is closed in time");
    received
}

#[tokio::test]
async fn every_pair_exchanges_messages_in_order() {
    const COUNT: u64 = 1_000;
    let ids = [1, 2, 3];
    let mut nodes = cluster(&ids).await;
    all_links_up(&mut nodes).await;
    for node in &nodes {
        for &to in ids.iter().filter(|&&p| p != node.id) {
            send_sequence(node, to, COUNT);
        }
    }
    // Draining one node at a time is fine: the others' readers wait (backpressure), and
    // their queues hold what they were given.
    for node in nodes.iter_mut() {
        let from: Vec<u64> = ids.iter().copied().filter(|&p| p != node.id).collect();
        expect_sequences(node, &from, COUNT).await;
    }
    for node in &nodes {
        assert!(ids
            .iter()
            .filter(|&&p| p != node.id)
            .all(|&p| node.transport.is_link_up(p)));
    }
    for node in &nodes {
        stop(node).await;
    }
}

/// Messages that may be large are encoded on a blocking thread and written past the
/// writer's buffer, frames over `DECODE_INLINE_MAX_BYTES` are decoded on a blocking
/// thread: mixed with small messages, every one arrives whole and in order.
#[tokio::test]
async fn large_messages_keep_their_order_among_small_ones() {
    let bound = [
        Bound::bind(loopback()).await.expect("bind"),
        Bound::bind(loopback()).await.expect("bind"),
    ];
    let addrs = [bound[0].local_addr(), bound[1].local_addr()];
    let mut nodes = Vec::new();
    for (i, b) in bound.into_iter().enumerate() {
        let (me, peer) = (i as u64 + 1, 2 - i as u64);
        let mut cfg = config(me, addrs[i], [(peer, addrs[1 - i])].into());
        cfg.max_frame_bytes = 16 << 20;
        nodes.push(start_node(cfg, b).await);
    }
    all_links_up(&mut nodes).await;
    let large = bulk::DECODE_INLINE_MAX_BYTES + 1;
    let blob = |len: usize, fill: u8| TestMsg::Blob(vec![fill; len]);
    let sent = vec![
        TestMsg::Seq(0),
        blob(3 * large, 1),
        TestMsg::Seq(1),
        blob(100, 2),
        blob(large, 3),
        blob(large - 64, 4),
        TestMsg::Seq(2),
        blob(5 * large, 5),
        TestMsg::Seq(3),
    ];
    for msg in &sent {
        nodes[0].transport.send(2, msg.clone()).expect("send");
    }
    for expected in sent {
        match next_event(&mut nodes[1]).await {
            PeerEvent::Message { from: 1, msg } => assert!(
                msg == expected,
                "got {} where {} was sent",
                describe(&msg),
                describe(&expected)
            ),
            other => panic!("unexpected {}", describe_event(&other)),
        }
    }
    for node in &nodes {
        stop(node).await;
    }
}

fn describe(msg: &TestMsg) -> String {
    match msg {
        TestMsg::Seq(n) => format!("Seq({n})"),
        TestMsg::Blob(b) => format!("Blob of {} bytes ({:?}..)", b.len(), b.first()),
    }
}

fn describe_event(event: &PeerEvent<TestMsg>) -> String {
    match event {
        PeerEvent::Message { from, msg } => format!("message {} from {from}", describe(msg)),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn restarted_peer_goes_down_then_up_and_messages_flow_again() {
    const COUNT: u64 = 100;
    let mut nodes = cluster(&[1, 2, 3]).await;
    all_links_up(&mut nodes).await;

    let old = nodes.pop().expect("node 3");
    let addr3 = old.addr;
    stop(&old).await;
    drop(old);
    for node in nodes.iter_mut() {
        assert_eq!(next_event(node).await, PeerEvent::LinkDown { peer: 3 });
        assert_eq!(
            node.transport.send(3, TestMsg::Seq(0)),
            Err(SendError::Disconnected)
        );
    }

    let bound = Bound::bind(addr3)
        .await
        .expect("bind the same address again");
    let peers = nodes.iter().map(|n| (n.id, n.addr)).collect();
    let mut new3 = start_node(config(3, addr3, peers), bound).await;
    wait_links_up(&mut new3, &[1, 2]).await;
    for node in nodes.iter_mut() {
        assert_eq!(
            next_event(node).await,
            PeerEvent::LinkUp {
                peer: 3,
                version: PEER_PROTOCOL_VERSION
            }
        );
    }

    for node in &nodes {
        send_sequence(node, 3, COUNT);
        send_sequence(&new3, node.id, COUNT);
    }
    expect_sequences(&mut new3, &[1, 2], COUNT).await;
    for node in nodes.iter_mut() {
        expect_sequences(node, &[3], COUNT).await;
    }
    for node in nodes.iter().chain([&new3]) {
        stop(node).await;
    }
}

#[tokio::test]
async fn unreachable_peer_gets_nothing_queued() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let mut cfg = config(1, bound.local_addr(), [(2, dead_addr())].into());
    cfg.send_queue_messages = 16;
    let node = start_node(cfg, bound).await;
    for n in 0..10_000 {
        assert_eq!(
            node.transport.send(2, TestMsg::Seq(n)),
            Err(SendError::Disconnected)
        );
        assert_eq!(node.transport.queued(2), 0);
        if n % 100 == 0 {
            // Let the dialer run (and fail) in between.
            tokio::task::yield_now().await;
        }
    }
    assert!(!node.transport.is_link_up(2));
    assert_eq!(
        node.transport.send(9, TestMsg::Seq(0)),
        Err(SendError::UnknownPeer(9))
    );
    assert_eq!(
        node.transport.send(1, TestMsg::Seq(0)),
        Err(SendError::UnknownPeer(1))
    );
    stop(&node).await;
}

#[tokio::test]
async fn stalled_peer_fills_the_bounded_queue_and_the_link_is_reset() {
    const QUEUE: usize = 8;
    let fake = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let bound = Bound::bind(loopback()).await.expect("bind");
    let mut cfg = config(
        1,
        bound.local_addr(),
        [(2, fake.local_addr().expect("address"))].into(),
    );
    cfg.send_queue_messages = QUEUE;
    let mut node = start_node(cfg, bound).await;

    // The fake peer accepts the handshake, then never reads.
    let (stream, _) = timeout(WAIT, fake.accept())
        .await
        .expect("dialed in time")
        .expect("accept");
    let mut framed = Framed::new(stream, Codec::<PeerHello, PeerHelloReply>::new(1024));
    let hello = timeout(WAIT, framed.next())
        .await
        .expect("hello in time")
        .expect("a hello")
        .expect("a well-formed hello");
    assert_eq!(hello, PeerHello::new(CLUSTER, 1, 2));
    let (_, framed) = fake_accepts_identity(framed).await;
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::LinkUp {
            peer: 2,
            version: PEER_PROTOCOL_VERSION
        }
    );

    let blob = vec![0xAB_u8; 64 << 10];
    let mut accepted = 0u64;
    let error = loop {
        match node.transport.send(2, TestMsg::Blob(blob.clone())) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(node.transport.queued(2) <= QUEUE);
        assert!(accepted < 100_000, "the queue never filled");
        // Let the writer drain into the socket until the socket buffers are full.
        tokio::task::yield_now().await;
    };
    assert_eq!(error, SendError::QueueFull);
    assert!(accepted >= QUEUE as u64);
    assert_eq!(next_event(&mut node).await, PeerEvent::LinkDown { peer: 2 });
    assert_eq!(node.transport.queued(2), 0);
    // The fake peer never answers a new handshake, so the link stays down.
    assert_eq!(
        node.transport.send(2, TestMsg::Seq(0)),
        Err(SendError::Disconnected)
    );
    stop(&node).await;
    drop(framed);
}

#[tokio::test]
async fn bad_handshakes_are_refused_and_do_not_disturb_links() {
    const COUNT: u64 = 50;
    let mut nodes = cluster(&[1, 2]).await;
    all_links_up(&mut nodes).await;
    let addr = nodes[0].addr;
    let good = PeerHello::new(CLUSTER, 2, 1);
    let cases = [
        (
            PeerHello {
                cluster_id: CLUSTER + 1,
                ..good
            },
            "cluster",
        ),
        (PeerHello { from: 99, ..good }, "not a configured peer"),
        (PeerHello { to: 5, ..good }, "expected node 5"),
        (
            PeerHello {
                magic: corral_protocol::MAGIC,
                ..good
            },
            "magic",
        ),
        (
            PeerHello {
                version: 99,
                ..good
            },
            "version",
        ),
    ];
    for (hello, expected) in cases {
        let reason = refused(addr, hello).await;
        assert!(
            reason.contains(expected),
            "{reason:?} should mention {expected:?}"
        );
    }

    // Garbage: its first four bytes announce a frame far over the handshake limit.
    let mut garbage = TcpStream::connect(addr).await.expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: corral\r\n\r\n")
        .await
        .expect("write");
    expect_closed(garbage).await;
    // A connection that closes half-way through its hello.
    let mut truncated = TcpStream::connect(addr).await.expect("connect");
    truncated
        .write_all(&[0, 0, 0, 30, 1, 2])
        .await
        .expect("write");
    truncated.shutdown().await.expect("shutdown");
    expect_closed(truncated).await;

    // The established links saw nothing of it.
    send_sequence(&nodes[0], 2, COUNT);
    send_sequence(&nodes[1], 1, COUNT);
    expect_sequences(&mut nodes[0], &[2], COUNT).await;
    expect_sequences(&mut nodes[1], &[1], COUNT).await;
    assert!(nodes[0].transport.is_link_up(2));
    assert!(nodes[1].transport.is_link_up(1));
    for node in &nodes {
        stop(node).await;
    }
}

#[tokio::test]
async fn newer_inbound_connection_replaces_the_older_and_bad_frames_close() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let mut cfg = config(1, addr, [(2, dead_addr())].into());
    cfg.max_frame_bytes = 1024;
    let mut node = start_node(cfg, bound).await;
    let from2 = |n| PeerEvent::Message {
        from: 2,
        msg: TestMsg::Seq(n),
    };

    let mut first = raw_peer(addr, 2, 1).await;
    first.send(TestMsg::Seq(1)).await.expect("send");
    assert_eq!(next_event(&mut node).await, from2(1));

    let mut second = raw_peer(addr, 2, 1).await;
    let end = timeout(WAIT, first.next())
        .await
        .expect("older closed in time");
    assert!(matches!(end, None | Some(Err(_))), "got {end:?}");
    second.send(TestMsg::Seq(2)).await.expect("send");
    assert_eq!(next_event(&mut node).await, from2(2));

    // A frame over max_frame_bytes closes the connection.
    let mut stream = second.into_inner();
    stream
        .write_all(&(1u32 << 20).to_be_bytes())
        .await
        .expect("write");
    assert!(expect_closed(stream).await.is_empty());

    // A malformed frame (an enum tag no message has) closes the connection.
    let mut stream = raw_peer(addr, 2, 1).await.into_inner();
    stream
        .write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    assert!(expect_closed(stream).await.is_empty());

    // The peer reconnects and is heard again; nothing else was delivered meanwhile.
    let mut fresh = raw_peer(addr, 2, 1).await;
    fresh.send(TestMsg::Seq(3)).await.expect("send");
    assert_eq!(next_event(&mut node).await, from2(3));
    stop(&node).await;
}

#[tokio::test]
async fn silent_connections_time_out_and_handshakes_are_bounded() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let mut cfg = config(1, addr, [(2, dead_addr())].into());
    cfg.connect_timeout_ms = 200;
    let node = start_node(cfg, bound).await;
    let silent = TcpStream::connect(addr).await.expect("connect");
    let mut framed = Framed::new(silent, Codec::<PeerHelloReply, PeerHello>::new(1024));
    let reply = timeout(WAIT, framed.next())
        .await
        .expect("refused in time")
        .expect("a refusal")
        .expect("a well-formed refusal");
    assert!(
        matches!(&reply, PeerHelloReply::Refused { reason } if reason.contains("no handshake")),
        "got {reply:?}"
    );
    stop(&node).await;

    // With a long timeout, silent connections hold every handshake slot; one more
    // takes the slot of the oldest, which is closed at once, without a reply.
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let node = start_node(config(1, addr, [(2, dead_addr())].into()), bound).await;
    let mut silent = Vec::new();
    for _ in 0..HANDSHAKE_SLOTS {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let oldest = silent.remove(0);
    silent.push(TcpStream::connect(addr).await.expect("connect"));
    assert!(expect_closed(oldest).await.is_empty());
    // Once they leave, a peer gets through (their slots come back asynchronously, so
    // a dialer may be turned away a few times first, as a real one would).
    drop(silent);
    let accepted = timeout(WAIT, async {
        loop {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let mut framed = Framed::new(stream, Codec::<PeerHelloReply, PeerHello>::new(1024));
            framed
                .send(PeerHello::new(CLUSTER, 2, 1))
                .await
                .expect("send hello");
            if let Some(Ok(reply)) = framed.next().await {
                break reply;
            }
        }
    })
    .await
    .expect("a handshake gets through in time");
    assert_eq!(accepted, PeerHelloReply::Accepted);
    stop(&node).await;
}

#[tokio::test]
async fn invalid_configurations_are_rejected() {
    let (tx, _rx) = mpsc::channel::<PeerEvent<TestMsg>>(1);
    let base = config(1, loopback(), [(2, dead_addr())].into());
    let invalid = [
        PeerConfig {
            peers: [(1, dead_addr())].into(),
            ..base.clone()
        },
        PeerConfig {
            send_queue_messages: 0,
            ..base.clone()
        },
        PeerConfig {
            backoff_min_ms: 0,
            ..base.clone()
        },
        PeerConfig {
            backoff_max_ms: 1,
            ..base.clone()
        },
        PeerConfig {
            max_frame_bytes: 0,
            ..base.clone()
        },
        PeerConfig {
            inbound_quiet_ms: 0,
            ..base.clone()
        },
        PeerConfig {
            peers: (2..=MAX_MEMBERS as u64 + 1)
                .map(|id| (id, dead_addr()))
                .collect(),
            ..base.clone()
        },
    ];
    for cfg in invalid {
        let result = Transport::start(cfg.clone(), tx.clone()).await;
        assert!(
            matches!(result, Err(TransportError::Config(_))),
            "{cfg:?} should be rejected"
        );
    }
}

#[test]
fn backoff_grows_exponentially_with_jitter_within_bounds() {
    let seed: u64 = rand::random();
    println!("backoff seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (min, max) = (10u64, 1_000u64);
    let mut backoff = Backoff::new(min, max);
    for attempt in 0..64u32 {
        let delay = backoff.next_delay(&mut rng).as_millis() as u64;
        let ceiling = min.saturating_mul(1 << (attempt + 1).min(40)).min(max);
        let floor = (ceiling / 2).max(min);
        assert!(
            (floor..=ceiling).contains(&delay),
            "attempt {attempt}: {delay} ms outside {floor}..={ceiling} (seed {seed})"
        );
    }
    backoff.reset();
    let first = backoff.next_delay(&mut rng).as_millis() as u64;
    assert!((min..=2 * min).contains(&first), "seed {seed}");
}

// Version negotiation.

/// The acceptor's end of a connection to a fake peer, in its handshake.
type FakeAccepted = Framed<TcpStream, Codec<PeerHello, PeerHelloReply>>;

/// Accepts the next connection on a fake peer's listener and reads its hello.
async fn next_hello(listener: &tokio::net::TcpListener) -> (PeerHello, FakeAccepted) {
    let (stream, _) = timeout(WAIT, listener.accept())
        .await
        .expect("dialed in time")
        .expect("accept");
    let mut framed = Framed::new(stream, Codec::<PeerHello, PeerHelloReply>::new(1024));
    let hello = timeout(WAIT, framed.next())
        .await
        .expect("hello in time")
        .expect("a hello")
        .expect("a well-formed hello");
    (hello, framed)
}

/// Answers `hello` as a binary that speaks only version 1 does: its refusal's words are
/// fixed forever. True if it accepted.
async fn answer_as_version_1(hello: &PeerHello, framed: &mut FakeAccepted) -> bool {
    let reply = if hello.version == 1 {
        PeerHelloReply::Accepted
    } else {
        PeerHelloReply::Refused {
            reason: format!(
                "unsupported peer protocol version {} (this node speaks 1)",
                hello.version
            ),
        }
    };
    let accepted = reply == PeerHelloReply::Accepted;
    framed.send(reply).await.expect("send the reply");
    accepted
}

/// A node whose only peer, 2, is a fake listening at `fake`.
async fn node_with_fake_peer(fake: SocketAddr, backoff_ms: u64) -> TestNode {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let mut cfg = config(1, bound.local_addr(), [(2, fake)].into());
    cfg.backoff_min_ms = backoff_ms;
    cfg.backoff_max_ms = backoff_ms;
    start_node(cfg, bound).await
}

/// A fake acceptor's end after the identity step.
type FakeIdentified = Framed<TcpStream, Codec<PeerIdentity, PeerHelloReply>>;

/// Accepts a version-2 hello the fake peer read, reads the dialer's identity and
/// returns it, with the connection before the second reply.
async fn fake_reads_identity(mut framed: FakeAccepted) -> (PeerIdentity, FakeIdentified) {
    framed
        .send(PeerHelloReply::Accepted)
        .await
        .expect("send the first reply");
    let mut framed = framed.map_codec(|c| c.retype::<PeerIdentity, PeerHelloReply>());
    let identity = timeout(WAIT, framed.next())
        .await
        .expect("an identity in time")
        .expect("an identity")
        .expect("a well-formed identity");
    (identity, framed)
}

/// Accepts a version-2 hello and the identity that follows; returns the identity.
async fn fake_accepts_identity(framed: FakeAccepted) -> (PeerIdentity, FakeIdentified) {
    let (identity, mut framed) = fake_reads_identity(framed).await;
    framed
        .send(PeerHelloReply::Accepted)
        .await
        .expect("send the second reply");
    (identity, framed)
}

/// Reads one message a node sent on the fake peer's accepted connection.
async fn fake_reads<In>(
    framed: Framed<TcpStream, Codec<In, PeerHelloReply>>,
) -> (TestMsg, Framed<TcpStream, Codec<TestMsg, ()>>) {
    let mut frames = framed.map_codec(|c| c.retype::<TestMsg, ()>());
    let msg = timeout(WAIT, frames.next())
        .await
        .expect("a message in time")
        .expect("a message")
        .expect("a well-formed message");
    (msg, frames)
}

#[tokio::test]
async fn new_nodes_link_at_the_highest_version() {
    let mut nodes = cluster(&[1, 2]).await;
    // `wait_links_up` checks every `LinkUp` is at PEER_PROTOCOL_VERSION.
    all_links_up(&mut nodes).await;
    assert_eq!(PEER_PROTOCOL_VERSION, 3);
    assert_eq!(
        PEER_PROTOCOL_VERSION,
        crate::machine::ACKED_WRITE_PEER_VERSION
    );
    assert_eq!(nodes[0].transport.link_version(2), Some(3));
    assert_eq!(nodes[1].transport.link_version(1), Some(3));
    // A delivered message shows the acceptor has registered the connection.
    send_sequence(&nodes[0], 2, 1);
    send_sequence(&nodes[1], 1, 1);
    expect_sequences(&mut nodes[0], &[2], 1).await;
    expect_sequences(&mut nodes[1], &[1], 1).await;
    assert_eq!(nodes[0].transport.inbound_version(2), Some(3));
    assert_eq!(nodes[1].transport.inbound_version(1), Some(3));
    // Equal member lists: the identity step passed, with each process's incarnation.
    assert_eq!(
        nodes[0].transport.inbound_incarnation(2),
        Some(nodes[1].transport.incarnation())
    );
    assert_eq!(
        nodes[1].transport.inbound_incarnation(1),
        Some(nodes[0].transport.incarnation())
    );
    assert_ne!(
        nodes[0].transport.incarnation(),
        nodes[1].transport.incarnation()
    );
    assert_eq!(nodes[0].transport.inbound_version(9), None);
    assert_eq!(nodes[0].transport.link_version(9), None);
    for node in &nodes {
        stop(node).await;
    }
}

/// Against a binary that speaks only version 1, the dialer falls back at once, one
/// version at a time (the backoff here is longer than the test's bound), and the link
/// comes up at version 1.
#[tokio::test]
async fn new_dialer_falls_back_promptly_to_an_old_acceptors_version() {
    let fake = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let mut node = node_with_fake_peer(fake.local_addr().expect("address"), 60_000).await;

    for version in [3, 2] {
        let (hello, mut framed) = next_hello(&fake).await;
        assert_eq!(
            hello,
            PeerHello {
                version,
                ..PeerHello::new(CLUSTER, 1, 2)
            }
        );
        framed
            .send(PeerHelloReply::Refused {
                reason: format!("unsupported peer protocol version {version} (this node speaks 1)"),
            })
            .await
            .expect("send the refusal");
        // The old acceptor never receives the identity: the dialer sends it only after
        // an `Accepted`, and closes after the refusal.
        assert!(framed.read_buffer().is_empty());
        assert!(expect_closed(framed.into_inner()).await.is_empty());
    }

    let (hello, mut framed) = next_hello(&fake).await;
    assert_eq!(
        hello,
        PeerHello {
            version: 1,
            ..PeerHello::new(CLUSTER, 1, 2)
        }
    );
    assert!(answer_as_version_1(&hello, &mut framed).await);
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::LinkUp {
            peer: 2,
            version: 1
        }
    );
    assert_eq!(node.transport.link_version(2), Some(1));
    node.transport.send(2, TestMsg::Seq(7)).expect("send");
    let (msg, frames) = fake_reads(framed).await;
    assert_eq!(msg, TestMsg::Seq(7));
    stop(&node).await;
    drop(frames);
}

/// Against a binary that speaks versions 1 and 2 (refusing 3 as the current one words
/// it), the dialer falls back at once to 2, runs that version's identity step, and the
/// link comes up at version 2: the cluster then proposes `OrderedWrite`, not
/// `AckedWrite`.
#[tokio::test]
async fn new_dialer_falls_back_to_version_2_with_its_identity_step() {
    let fake = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let mut node = node_with_fake_peer(fake.local_addr().expect("address"), 60_000).await;

    let (hello, mut framed) = next_hello(&fake).await;
    assert_eq!(hello, PeerHello::new(CLUSTER, 1, 2));
    assert_eq!(hello.version, 3);
    framed
        .send(PeerHelloReply::Refused {
            reason: "unsupported peer protocol version 3 (this node speaks 1 to 2)".into(),
        })
        .await
        .expect("send the refusal");
    assert!(expect_closed(framed.into_inner()).await.is_empty());

    let (hello, framed) = next_hello(&fake).await;
    assert_eq!(hello.version, 2);
    let (identity, framed) = fake_accepts_identity(framed).await;
    assert_eq!(identity.members, [1, 2]);
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::LinkUp {
            peer: 2,
            version: 2
        }
    );
    assert_eq!(node.transport.link_version(2), Some(2));
    assert_eq!(
        crate::machine::WriteKind::for_peer_version(2),
        crate::machine::WriteKind::Ordered
    );
    stop(&node).await;
    drop(framed);
}

/// After a link at version 1 ends (the old peer stopped), the next attempt proposes the
/// highest version again: a peer restarted with a new binary is seen as upgraded. A peer
/// that refuses every version gets one prompt fallback per attempt, and each attempt
/// after the backoff starts at the highest version.
#[tokio::test]
async fn every_new_attempt_starts_at_the_highest_version() {
    let fake = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let fake_addr = fake.local_addr().expect("address");
    let mut node = node_with_fake_peer(fake_addr, 5).await;

    // The old binary: refuses 3 and 2, accepts 1.
    for version in [3, 2] {
        let (hello, mut framed) = next_hello(&fake).await;
        assert_eq!(hello.version, version);
        assert!(!answer_as_version_1(&hello, &mut framed).await);
        drop(framed);
    }
    let (hello, mut framed) = next_hello(&fake).await;
    assert_eq!(hello.version, 1);
    assert!(answer_as_version_1(&hello, &mut framed).await);
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::LinkUp {
            peer: 2,
            version: 1
        }
    );

    // It stops; the new binary accepts 3.
    drop(framed);
    assert_eq!(next_event(&mut node).await, PeerEvent::LinkDown { peer: 2 });
    assert_eq!(node.transport.link_version(2), None);
    let (hello, framed) = next_hello(&fake).await;
    assert_eq!(hello, PeerHello::new(CLUSTER, 1, 2));
    let (identity, framed) = fake_accepts_identity(framed).await;
    assert_eq!(identity.members, [1, 2]);
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::LinkUp {
            peer: 2,
            version: 3
        }
    );
    assert_eq!(node.transport.link_version(2), Some(3));

    // It stops again; now it refuses every version as unsupported.
    drop(framed);
    assert_eq!(next_event(&mut node).await, PeerEvent::LinkDown { peer: 2 });
    let mut proposed = Vec::new();
    for _ in 0..6 {
        let (hello, mut framed) = next_hello(&fake).await;
        proposed.push(hello.version);
        framed
            .send(PeerHelloReply::Refused {
                reason: format!(
                    "unsupported peer protocol version {} (this node speaks 4 to 5)",
                    hello.version
                ),
            })
            .await
            .expect("send the refusal");
    }
    assert_eq!(proposed, [3, 2, 1, 3, 2, 1]);
    assert!(!node.transport.is_link_up(2));
    stop(&node).await;
}

/// Another refusal is not a version refusal: no fallback, the next attempt (after the
/// backoff) proposes the highest version again.
#[tokio::test]
async fn other_refusals_do_not_lower_the_version() {
    let fake = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let node = node_with_fake_peer(fake.local_addr().expect("address"), 5).await;
    for _ in 0..3 {
        let (hello, mut framed) = next_hello(&fake).await;
        assert_eq!(hello.version, PEER_PROTOCOL_VERSION);
        framed
            .send(PeerHelloReply::Refused {
                reason: "wrong cluster id 7 (this node belongs to cluster 8)".into(),
            })
            .await
            .expect("send the refusal");
    }
    stop(&node).await;
}

/// A binary that speaks only version 1 dials with a version-1 hello: accepted, and its
/// messages delivered.
#[tokio::test]
async fn old_dialer_is_accepted_by_a_new_acceptor() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let mut node = start_node(config(1, addr, [(2, dead_addr())].into()), bound).await;
    let old_hello = PeerHello {
        version: 1,
        ..PeerHello::new(CLUSTER, 2, 1)
    };
    let (reply, framed) = raw_handshake(addr, old_hello).await;
    assert_eq!(reply, PeerHelloReply::Accepted);
    let mut old = framed.map_codec(|c| c.retype::<(), TestMsg>());
    old.send(TestMsg::Seq(1)).await.expect("send");
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::Message {
            from: 2,
            msg: TestMsg::Seq(1)
        }
    );
    assert_eq!(node.transport.inbound_version(2), Some(1));
    assert_eq!(node.transport.inbound_incarnation(2), None);

    // The peer restarts with a new binary: its new connection is at the newest version.
    let mut new = raw_peer(addr, 2, 1).await;
    new.send(TestMsg::Seq(2)).await.expect("send");
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::Message {
            from: 2,
            msg: TestMsg::Seq(2)
        }
    );
    assert_eq!(
        node.transport.inbound_version(2),
        Some(PEER_PROTOCOL_VERSION)
    );
    assert_eq!(node.transport.inbound_incarnation(2), Some(RAW_INCARNATION));
    stop(&node).await;
}

#[tokio::test]
async fn versions_outside_the_range_are_refused() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let node = start_node(config(1, addr, [(2, dead_addr())].into()), bound).await;
    for version in [
        MIN_PEER_PROTOCOL_VERSION - 1,
        PEER_PROTOCOL_VERSION + 1,
        u16::MAX,
    ] {
        let hello = PeerHello {
            version,
            ..PeerHello::new(CLUSTER, 2, 1)
        };
        let reason = refused(addr, hello).await;
        // In the words old binaries use, which dialers recognise.
        assert!(
            reason.starts_with(&format!("unsupported peer protocol version {version} ")),
            "{reason:?}"
        );
        assert!(wire::is_version_refusal(&reason));
    }
    for version in MIN_PEER_PROTOCOL_VERSION..=PEER_PROTOCOL_VERSION {
        let hello = PeerHello {
            version,
            ..PeerHello::new(CLUSTER, 2, 1)
        };
        let (reply, _) = raw_handshake(addr, hello).await;
        assert_eq!(reply, PeerHelloReply::Accepted, "version {version}");
    }
    stop(&node).await;
}

// Member lists and incarnations (the identity step of version 2).

/// The acceptor refuses a dialer whose member list differs (naming both lists), closes,
/// and the dialer's messages never reach the node.
#[tokio::test]
async fn an_acceptor_refuses_a_different_member_list() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let peers = [(2, dead_addr()), (3, dead_addr())].into();
    let mut node = start_node(config(1, addr, peers), bound).await;
    for members in [&[1, 2][..], &[1, 2, 3, 4], &[1, 2, 4], &[]] {
        let reason = identity_refused(addr, 2, 1, identity(members, RAW_INCARNATION)).await;
        assert!(reason.starts_with(MEMBERS_REFUSAL), "{reason:?}");
        assert!(
            reason.contains(&format!("{members:?}")) && reason.contains("[1, 2, 3]"),
            "{reason:?} names both lists"
        );
        assert_eq!(node.transport.inbound_version(2), None);
    }
    // The same ids are accepted (no addresses are compared: the raw peer's own address
    // is not the one node 1 has for it).
    let (reply, framed) = raw_identify(addr, 3, 1, identity(&[3, 2, 1], 9)).await;
    assert_eq!(reply, PeerHelloReply::Accepted);
    let mut peer = framed.map_codec(|c| c.retype::<(), TestMsg>());
    peer.send(TestMsg::Seq(5)).await.expect("send");
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::Message {
            from: 3,
            msg: TestMsg::Seq(5)
        }
    );
    stop(&node).await;
}

/// A dialer refused at the identity step gets no `LinkUp`, does not fall back to version
/// 1, and retries after its backoff.
#[tokio::test]
async fn a_dialer_refused_for_its_member_list_never_links_and_retries() {
    let fake = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("bind");
    let mut node = node_with_fake_peer(fake.local_addr().expect("address"), 5).await;
    for _ in 0..3 {
        let (hello, framed) = next_hello(&fake).await;
        assert_eq!(hello, PeerHello::new(CLUSTER, 1, 2));
        let (identity, mut framed) = fake_reads_identity(framed).await;
        assert_eq!(identity.members, [1, 2]);
        assert_eq!(identity.incarnation, node.transport.incarnation());
        framed
            .send(PeerHelloReply::Refused {
                reason: format!(
                    "{MEMBERS_REFUSAL}: node 1 has members [1, 2], node 2 has [2, 3, 4]"
                ),
            })
            .await
            .expect("send the refusal");
    }
    // The dialer works one attempt at a time, and a link would have been reported
    // before the next attempt: three attempts and no event.
    assert!(matches!(
        node.events.try_recv(),
        Err(mpsc::error::TryRecvError::Empty)
    ));
    assert!(!node.transport.is_link_up(2));
    stop(&node).await;
}

/// A second process that claims a connected peer's node id (another incarnation) is
/// refused while the first one's connection is alive; the first keeps delivering, and
/// reconnects of the first process (same incarnation) still replace its connection.
#[tokio::test]
async fn a_second_live_process_with_the_same_node_id_is_refused() {
    const FIRST: u64 = 0xaaaa;
    const SECOND: u64 = 0xbbbb;
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let mut cfg = config(1, addr, [(2, dead_addr())].into());
    // The acceptor waits up to half of this for the older connection to end.
    cfg.connect_timeout_ms = 1_000;
    let mut node = start_node(cfg, bound).await;
    let from2 = |n| PeerEvent::Message {
        from: 2,
        msg: TestMsg::Seq(n),
    };

    let mut first = raw_peer_as(addr, 2, 1, FIRST).await;
    first.send(TestMsg::Seq(1)).await.expect("send");
    assert_eq!(next_event(&mut node).await, from2(1));

    let reason = identity_refused(addr, 2, 1, identity(&[1, 2], SECOND)).await;
    assert!(
        reason.starts_with(&format!("{DUPLICATE_NODE_REFUSAL} 2")),
        "{reason:?}"
    );
    assert!(
        reason.contains(&format!("{FIRST:#018x}")) && reason.contains(&format!("{SECOND:#018x}")),
        "{reason:?} names both incarnations"
    );
    assert_eq!(node.transport.inbound_incarnation(2), Some(FIRST));
    first.send(TestMsg::Seq(2)).await.expect("send");
    assert_eq!(next_event(&mut node).await, from2(2));

    // The first process reconnects: its new connection replaces the old one.
    let mut again = raw_peer_as(addr, 2, 1, FIRST).await;
    let end = timeout(WAIT, first.next())
        .await
        .expect("older closed in time");
    assert!(matches!(end, None | Some(Err(_))), "got {end:?}");
    again.send(TestMsg::Seq(3)).await.expect("send");
    assert_eq!(next_event(&mut node).await, from2(3));
    stop(&node).await;
}

/// A restarted peer whose old connection is half-open (its host went away without
/// closing it: the connection stays, silent) is not locked out: once that connection
/// has been quiet for `inbound_quiet_ms`, the new process replaces it.
#[tokio::test]
async fn a_restarted_peer_replaces_its_quiet_half_open_connection() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let mut cfg = config(1, addr, [(2, dead_addr())].into());
    cfg.inbound_quiet_ms = 150;
    let mut node = start_node(cfg, bound).await;

    let mut old = raw_peer_as(addr, 2, 1, 0x01d).await;
    old.send(TestMsg::Seq(1)).await.expect("send");
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::Message {
            from: 2,
            msg: TestMsg::Seq(1)
        }
    );
    // The old process is gone but its connection is not closed: the new process is
    // accepted (after the old connection's quiet time) and the old one closed.
    let mut new = raw_peer_as(addr, 2, 1, 0x2e3).await;
    assert_eq!(node.transport.inbound_incarnation(2), Some(0x2e3));
    let end = timeout(WAIT, old.next()).await.expect("old closed in time");
    assert!(matches!(end, None | Some(Err(_))), "got {end:?}");
    new.send(TestMsg::Seq(2)).await.expect("send");
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::Message {
            from: 2,
            msg: TestMsg::Seq(2)
        }
    );
    stop(&node).await;
}

/// A peer restarted after an orderly exit is accepted at once, even when its new process
/// dials before the acceptor has read the old connection's end: the acceptor waits for
/// that end instead of taking the new process for a second one.
#[tokio::test]
async fn a_peer_restarted_after_an_orderly_exit_is_accepted() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let mut node = start_node(config(1, addr, [(2, dead_addr())].into()), bound).await;
    for (n, incarnation) in [0x10_u64, 0x20, 0x30].into_iter().enumerate() {
        let mut process = raw_peer_as(addr, 2, 1, incarnation).await;
        process.send(TestMsg::Seq(n as u64)).await.expect("send");
        assert_eq!(
            next_event(&mut node).await,
            PeerEvent::Message {
                from: 2,
                msg: TestMsg::Seq(n as u64)
            }
        );
        assert_eq!(node.transport.inbound_incarnation(2), Some(incarnation));
        // Exits: closes its connection; the next process dials right away.
        drop(process);
    }
    stop(&node).await;
}

/// Connections that never send a hello do not lock peers out: with every handshake slot
/// held by silent connections (anyone who reaches the peer port can open them, and
/// reopen them as they time out), a peer's connection evicts the oldest of them and
/// gets through. Connections that sent a valid hello keep their slots: once every slot
/// holds one, a newcomer is still closed at once.
#[tokio::test]
async fn silent_connections_do_not_lock_peers_out() {
    let bound = Bound::bind(loopback()).await.expect("bind");
    let addr = bound.local_addr();
    let mut cfg = config(1, addr, [(2, dead_addr())].into());
    cfg.connect_timeout_ms = 60_000;
    let mut node = start_node(cfg, bound).await;
    let mut silent = Vec::new();
    for _ in 0..HANDSHAKE_SLOTS {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Node 2 dials while every slot is held (the handshake timeout is a minute away).
    let mut peer = timeout(WAIT, raw_peer(addr, 2, 1))
        .await
        .expect("the peer's handshake completes while silent connections hold the slots");
    peer.send(TestMsg::Seq(1)).await.expect("send");
    assert_eq!(
        next_event(&mut node).await,
        PeerEvent::Message {
            from: 2,
            msg: TestMsg::Seq(1)
        }
    );
    // The oldest silent connection made room and was closed.
    assert!(expect_closed(silent.remove(0)).await.is_empty());

    // Connections past a valid hello (here: stalled before their identity) are not
    // evicted: once they hold every slot, one more is closed without a reply.
    let mut stalled = Vec::new();
    for _ in 0..HANDSHAKE_SLOTS {
        let (reply, framed) = raw_handshake(addr, PeerHello::new(CLUSTER, 2, 1)).await;
        assert_eq!(reply, PeerHelloReply::Accepted);
        stalled.push(framed);
    }
    let extra = TcpStream::connect(addr).await.expect("connect");
    assert!(expect_closed(extra).await.is_empty());
    // None of them was evicted: each completes its handshake.
    for framed in stalled {
        let mut framed = framed.map_codec(|c| c.retype::<PeerHelloReply, PeerIdentity>());
        framed
            .send(identity(&[1, 2], RAW_INCARNATION))
            .await
            .expect("send the identity");
        let reply = timeout(WAIT, framed.next()).await.expect("a reply in time");
        assert!(
            matches!(reply, Some(Ok(PeerHelloReply::Accepted))),
            "a stalled handshake kept its slot: {reply:?}"
        );
    }
    stop(&node).await;
}
