//! The scripted fake server the client's integration tests run against: a listener on
//! 127.0.0.1 that speaks the real protocol codec, whose test decides every answer.
//!
//! Every wait is bounded with [`bounded`]; nothing sleeps to synchronise. Not every test
//! binary uses every item.
#![allow(dead_code)]

use corral_client::{Client, ClientConfig, ConnectionState, ErrorInfo};
use corral_protocol::{
    ClientMessage, Codec, Hello, HelloReply, Op, OpResult, Request, Response, ServerMessage,
    SessionGranted, DEFAULT_MAX_FRAME_BYTES,
};
use futures::{SinkExt, StreamExt};
use std::future::Future;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// The session id the fake server grants.
pub const SESSION: u64 = 42;
/// The secret of that session.
pub const SECRET: u64 = 7;

/// `f`, or a panic naming `what` if it takes longer than [`WAIT`].
pub async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The grant of session [`SESSION`] with this TTL, zxid and next xid.
pub fn granted(ttl_ms: u64, zxid: u64, next_xid: u64) -> SessionGranted {
    SessionGranted {
        session_id: SESSION,
        secret: SECRET,
        ttl_ms,
        node_id: 1,
        zxid,
        max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u64,
        next_xid,
    }
}

/// A connection before its handshake is answered.
pub type HelloFramed = Framed<TcpStream, Codec<Hello, HelloReply>>;

/// A listener whose connections the test accepts and answers itself.
pub struct FakeServer {
    pub listener: TcpListener,
    pub address: String,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = bounded("bind", TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("local addr").to_string();
        FakeServer { listener, address }
    }

    /// A client configuration with this server as its only address.
    pub fn config(&self) -> ClientConfig {
        ClientConfig::new([self.address.clone()])
    }

    /// Accepts a connection and reads its hello.
    pub async fn hello(&self) -> (HelloFramed, Hello) {
        let (stream, _) = bounded("accept", self.listener.accept())
            .await
            .expect("accept");
        let mut framed = Framed::new(stream, Codec::new(DEFAULT_MAX_FRAME_BYTES));
        let hello = bounded("hello", framed.next())
            .await
            .expect("a hello frame")
            .expect("a valid hello");
        (framed, hello)
    }

    /// Accepts a connection and grants it `session`.
    pub async fn accept(&self, session: SessionGranted) -> (Conn, Hello) {
        let (mut framed, hello) = self.hello().await;
        bounded("grant", framed.send(HelloReply::Accepted(session)))
            .await
            .expect("send grant");
        let conn = Conn {
            framed: framed.map_codec(|c| c.retype()),
        };
        (conn, hello)
    }

    /// A client connected with `config`, on a session of `ttl_ms` granted by this
    /// server, and the server side of its connection.
    pub async fn connect_with(&self, config: ClientConfig, ttl_ms: u64) -> (Client, Conn) {
        let connecting = tokio::spawn(Client::connect(config));
        let (conn, _) = self.accept(granted(ttl_ms, 1, 1)).await;
        let client = bounded("connect", connecting)
            .await
            .expect("join")
            .expect("connect");
        (client, conn)
    }

    /// [`connect_with`](Self::connect_with) the default configuration.
    pub async fn connect(&self, ttl_ms: u64) -> (Client, Conn) {
        self.connect_with(self.config(), ttl_ms).await
    }
}

/// The server side of an established connection.
pub struct Conn {
    pub framed: Framed<TcpStream, Codec<ClientMessage, ServerMessage>>,
}

impl Conn {
    /// The next request, pings included.
    pub async fn recv_any(&mut self) -> Request {
        bounded("a request", self.next_request()).await
    }

    /// The next request that is not a ping or an acknowledgement; those are answered on
    /// the way. Bounded as a whole: keepalives do not extend the wait.
    pub async fn recv(&mut self) -> Request {
        bounded("a request other than a ping", async {
            loop {
                let request = self.next_request().await;
                if matches!(request.op, Op::Ping | Op::Acknowledge { .. }) {
                    self.reply(request.xid, 0, Ok(OpResult::Pong)).await;
                    continue;
                }
                return request;
            }
        })
        .await
    }

    async fn next_request(&mut self) -> Request {
        let message = self
            .framed
            .next()
            .await
            .expect("connection open")
            .expect("a valid frame");
        let ClientMessage::Request(request) = message;
        request
    }

    pub async fn send(&mut self, message: ServerMessage) {
        bounded("send", self.framed.send(message))
            .await
            .expect("send");
    }

    pub async fn reply(&mut self, xid: u64, zxid: u64, result: Result<OpResult, ErrorInfo>) {
        self.send(ServerMessage::Response(Response { xid, zxid, result }))
            .await;
    }

    /// Waits until the client closes the connection.
    pub async fn closed(&mut self) {
        loop {
            match bounded("the client to close", self.framed.next()).await {
                None | Some(Err(_)) => return,
                Some(Ok(ClientMessage::Request(r)))
                    if matches!(r.op, Op::Ping | Op::Acknowledge { .. }) => {}
                Some(Ok(other)) => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// The next request other than a ping, while `task` (which should be waiting for its
/// answer) runs: panics with how the task ended if it ends first (a panic in it, say).
pub async fn recv_while<T: std::fmt::Debug>(
    conn: &mut Conn,
    task: &mut tokio::task::JoinHandle<T>,
) -> Request {
    tokio::select! {
        ended = task => panic!("the task ended before its request arrived: {ended:?}"),
        request = conn.recv() => request,
    }
}

/// Waits until the client's connection state is `want`.
pub async fn wait_state(client: &Client, want: ConnectionState) {
    let mut states = client.state_events();
    if client.state() == want {
        return;
    }
    bounded("state change", async {
        while let Some(state) = states.recv().await {
            if state == want {
                return;
            }
        }
        panic!(
            "state stream ended before {want:?}; now {:?}",
            client.state()
        );
    })
    .await;
}
