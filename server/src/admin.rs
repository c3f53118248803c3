//! The admin HTTP endpoint (axum), on its own port (`admin_listen`):
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /health` | 200 `ok` while the node core answers (liveness), else 503; 200 `starting: ...` while the node starts |
//! | `GET /ready` | 200 when the node is ready for clients (see [`ServerStatus::ready`]), else 503; JSON status either way |
//! | `GET /status` | the node's [`ServerStatus`] as JSON, plus `starting` and `core_unresponsive` |
//!
//! | `GET /snapshot` | a backup: the applied state machine image (see [`crate::backup`]) |
//!
//! While the node starts (its core does not run yet), `/status` and `/ready` answer the
//! same JSON as afterwards, built from the settings ([`crate::status::starting_status`])
//! and marked `"starting": true`; `/ready` with 503. When the running core does not
//! answer within [`CORE_ANSWER_TIMEOUT`], both answer 503 with that same JSON marked
//! `"core_unresponsive": true` (never a plain-text body: tools parse it).
//!
//! Handlers talk to the core task through a bounded channel of [`AdminRequest`]s and
//! wait at most [`CORE_ANSWER_TIMEOUT`] for the answer.

use crate::config::{Config, ConfigError};
use crate::node::NodeStats;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use corral_protocol::ServerStatus;
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// The default admin address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:2291";
/// How long a handler waits for the core task, in all: for room in its queue and for its
/// answer. `/health` answers within it (503 when the core did not answer).
pub const CORE_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Capacity of the channel from the admin handlers to the core task.
pub const ADMIN_QUEUE_REQUESTS: usize = 64;
/// Most admin connections at once; further ones are closed as they are accepted (the
/// admin port has no authentication: it must not be a way to use up the process's file
/// handles, which the log and the client port need).
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// An admin connection that sends nothing, or takes none of what it is sent, for this
/// long is closed (a kept-alive connection between two scrapes too).
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin port's listener: at most [`ADMIN_MAX_CONNECTIONS`] connections, each closed
/// after [`ADMIN_IDLE_TIMEOUT`] without progress either way.
struct AdminListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

/// An accepted admin connection; its place is freed when it is dropped.
struct AdminConn {
    io: crate::stall::StallLimited<tokio::net::TcpStream>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (AdminConn, SocketAddr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let io = crate::stall::StallLimited::new(
                        stream,
                        ADMIN_IDLE_TIMEOUT,
                        Some(ADMIN_IDLE_TIMEOUT),
                    );
                    return (
                        AdminConn {
                            io,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                Err(_) => {
                    tracing::warn!(
                        %addr,
                        limit = ADMIN_MAX_CONNECTIONS,
                        "admin endpoint: too many connections; closing a new one"
                    );
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for AdminConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for AdminConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A question for the core task.
#[derive(Debug)]
pub enum AdminRequest {
    /// The node's status and counters.
    Status(oneshot::Sender<(ServerStatus, NodeStats)>),
    /// An image of the applied state, for a backup (encoded by the endpoint with
    /// [`crate::backup::encode_image`], off the core).
    Snapshot(oneshot::Sender<crate::machine::MachineImage>),
}

impl Config {
    /// The admin address, or `None` when disabled (`off` or empty).
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let value = self.admin_listen.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        value
            .parse()
            .map(Some)
            .map_err(|e| ConfigError(format!("admin_listen: {value:?}: {e}")))
    }
}

/// A bound admin listener, with what `/status` and `/ready` answer while the node starts
/// (before the core, which knows the node's state, runs).
#[derive(Debug)]
pub struct BoundAdmin {
    listener: TcpListener,
    starting_status: ServerStatus,
}

impl BoundAdmin {
    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn new(listener: TcpListener, config: &Config) -> BoundAdmin {
        let peers = config.peer_map().unwrap_or_default();
        let members: Vec<(u64, String)> = peers
            .iter()
            .filter(|(id, _)| **id != config.node_id)
            .map(|(id, a)| (*id, a.to_string()))
            .collect();
        let local = listener.local_addr().ok().map(|a| a.to_string());
        let starting_status =
            crate::status::starting_status(config.node_id, !peers.is_empty(), &members, local);
        BoundAdmin {
            listener,
            starting_status,
        }
    }
}

/// Binds the admin listener. A failure to bind the *default* address (another corral
/// on this host) is logged and the node runs without admin endpoint; a failure to bind
/// an address the operator chose stops the server.
pub async fn bind(config: &Config) -> Result<Option<BoundAdmin>, String> {
    let Some(addr) = config.admin_addr().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(BoundAdmin::new(l, config))),
        Err(e) if config.admin_listen.trim() == DEFAULT_ADMIN_LISTEN => {
            tracing::warn!(%addr, error = %e, "cannot bind the default admin address; running without admin endpoint (set admin_listen)");
            Ok(None)
        }
        Err(e) => Err(format!("cannot listen on admin_listen {addr}: {e}")),
    }
}

#[derive(Clone)]
struct AdminState {
    core: mpsc::Sender<AdminRequest>,
    /// False while the node starts (a new cluster member waiting for its peers): the
    /// core task does not run yet.
    core_running: Arc<AtomicBool>,
    metrics: Option<PrometheusHandle>,
    /// One backup at a time: an image is held in memory while it is sent.
    snapshots: Arc<Semaphore>,
    /// What `/status` and `/ready` answer while the node starts (and, marked
    /// `core_unresponsive`, when the core does not answer).
    starting_status: Arc<ServerStatus>,
    /// How long a handler waits for the core ([`CORE_ANSWER_TIMEOUT`]; shorter in tests).
    core_timeout: Duration,
}

/// Serves the admin endpoint until `shutdown` resolves.
pub async fn serve(
    admin: BoundAdmin,
    core: mpsc::Sender<AdminRequest>,
    core_running: Arc<AtomicBool>,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(
        admin,
        core,
        core_running,
        metrics,
        shutdown,
        CORE_ANSWER_TIMEOUT,
    )
    .await;
}

/// [`serve`], with the wait for the core's answers as a parameter (the tests shorten it).
async fn serve_with(
    admin: BoundAdmin,
    core: mpsc::Sender<AdminRequest>,
    core_running: Arc<AtomicBool>,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    core_timeout: Duration,
) {
    if let Some(handle) = metrics.clone() {
        // Histograms keep their samples until upkeep drains them into the buckets.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let BoundAdmin {
        listener,
        starting_status,
    } = admin;
    let state = AdminState {
        core,
        core_running,
        metrics,
        snapshots: Arc::new(Semaphore::new(1)),
        starting_status: Arc::new(starting_status),
        core_timeout,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/snapshot", get(snapshot))
        .with_state(state);
    let listener = AdminListener {
        inner: listener,
        permits: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

async fn ask<T>(
    state: &AdminState,
    make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
) -> Option<T> {
    ask_within(&state.core, make, state.core_timeout).await
}

/// Puts a question to the core and waits for the answer, both within `limit`: one
/// deadline for the whole exchange (the wait for room in the queue used to come on top
/// of the wait for the answer, so `/health` could take twice the documented 5 s).
async fn ask_within<T>(
    core: &mpsc::Sender<AdminRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
    limit: Duration,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    let exchange = async move {
        core.send(make(tx)).await.ok()?;
        rx.await.ok()
    };
    tokio::time::timeout(limit, exchange).await.ok()?
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the node core did not answer in time\n",
    )
        .into_response()
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    let Some(handle) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response();
    };
    if starting(&state) {
        // Not ready, not leading, no leader known: said rather than left out until the
        // core runs (its first answer sets them all).
        for name in ["corral_is_leader", "corral_has_leader", "corral_ready"] {
            metrics::gauge!(name).set(0.0);
        }
        return (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response();
    }
    // Counters and gauges of the core are copied in at each scrape; if the core does
    // not answer, the last values are served.
    if let Some((status, stats)) = ask(&state, AdminRequest::Status).await {
        crate::metrics::export_node(&stats, &status);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

fn starting(state: &AdminState) -> bool {
    !state.core_running.load(Ordering::Acquire)
}

const STARTING: &str = "starting: waiting for a majority of the other nodes\n";

async fn health(State(state): State<AdminState>) -> Response {
    if starting(&state) {
        return (StatusCode::OK, STARTING).into_response();
    }
    match ask(&state, AdminRequest::Status).await {
        Some(_) => (StatusCode::OK, "ok\n").into_response(),
        None => unavailable(),
    }
}

/// Where a status that `/status` and `/ready` send comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The node core answered.
    Core,
    /// The node starts: its core does not run yet.
    Starting,
    /// The core runs but did not answer within the deadline.
    Unresponsive,
}

/// A status as `/status` and `/ready` send it: the [`ServerStatus`] fields, plus
/// `starting` (true while the node starts and its core does not run yet) and
/// `core_unresponsive` (true when the running core did not answer in time: the status
/// is then the one known without the core, as while starting).
fn status_json(status: &ServerStatus, source: Source) -> Json<serde_json::Value> {
    let mut value = match serde_json::to_value(status) {
        Ok(v) => v,
        Err(_) => serde_json::Value::Object(serde_json::Map::new()),
    };
    if let Some(fields) = value.as_object_mut() {
        fields.insert("starting".into(), (source == Source::Starting).into());
        fields.insert(
            "core_unresponsive".into(),
            (source == Source::Unresponsive).into(),
        );
    }
    Json(value)
}

/// What `/status` and `/ready` answer when the core did not answer in time: 503 with
/// the status known without the core (node id, members' addresses, admin address,
/// version; not ready), marked `"core_unresponsive": true`. It used to be a plain-text
/// body, which the tools that parse these answers as JSON could not read.
fn unresponsive_status(state: &AdminState) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        status_json(&state.starting_status, Source::Unresponsive),
    )
        .into_response()
}

async fn ready(State(state): State<AdminState>) -> Response {
    if starting(&state) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            status_json(&state.starting_status, Source::Starting),
        )
            .into_response();
    }
    match ask(&state, AdminRequest::Status).await {
        Some((status, _)) => {
            let code = if status.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, status_json(&status, Source::Core)).into_response()
        }
        None => unresponsive_status(&state),
    }
}

async fn status(State(state): State<AdminState>) -> Response {
    if starting(&state) {
        // The status of a starting node is known: it answers like any other (200), not
        // ready; `/ready` is the one that says 503.
        return status_json(&state.starting_status, Source::Starting).into_response();
    }
    match ask(&state, AdminRequest::Status).await {
        Some((status, _)) => status_json(&status, Source::Core).into_response(),
        // Unlike a starting node's, this status is not the node's: 503.
        None => unresponsive_status(&state),
    }
}

/// The pieces a backup's body is sent in.
const BACKUP_PIECE_BYTES: usize = 256 * 1024;

async fn snapshot(State(state): State<AdminState>) -> Response {
    if starting(&state) {
        return (StatusCode::SERVICE_UNAVAILABLE, STARTING).into_response();
    }
    let Ok(_permit) = state.snapshots.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "a backup is being taken; try again\n",
        )
            .into_response();
    };
    let Some(image) = ask(&state, AdminRequest::Snapshot).await else {
        return unavailable();
    };
    let encoded = tokio::task::spawn_blocking(move || crate::backup::encode_image(&image)).await;
    match encoded.map_err(|e| e.to_string()) {
        Ok(Ok(bytes)) => {
            metrics::counter!(crate::metrics::SNAPSHOTS, "result" => "backup").increment(1);
            // One backup at a time means until it is sent, not until the handler returns:
            // the body holds the permit, and goes out in pieces, each taken when the
            // socket has room for it (a client that stops reading is closed after
            // ADMIN_IDLE_TIMEOUT), so the permit goes with the last piece.
            let bytes = bytes::Bytes::from(bytes);
            let pieces: Vec<bytes::Bytes> = (0..bytes.len())
                .step_by(BACKUP_PIECE_BYTES)
                .map(|at| bytes.slice(at..(at + BACKUP_PIECE_BYTES).min(bytes.len())))
                .collect();
            let body = futures::stream::iter(pieces).map(move |piece| {
                let _held = &_permit;
                Ok::<_, std::convert::Infallible>(piece)
            });
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
        Ok(Err(e)) | Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let cli =
            crate::config::Cli::parse_from(std::iter::once("corral").chain(args.iter().copied()));
        Config::load(cli).expect("valid settings")
    }

    #[test]
    fn admin_address_default_off_and_invalid() {
        assert_eq!(
            config(&[])
                .admin_addr()
                .expect("default")
                .map(|a| a.to_string()),
            Some(DEFAULT_ADMIN_LISTEN.to_string())
        );
        assert_eq!(
            config(&["--admin-listen", "off"])
                .admin_addr()
                .expect("off"),
            None
        );
        assert_eq!(
            config(&["--admin-listen", ""]).admin_addr().expect("empty"),
            None
        );
        let err = config(&["--admin-listen", "nowhere"])
            .admin_addr()
            .expect_err("bad");
        assert!(err.to_string().contains("admin_listen"), "{err}");
    }

    /// A core whose queue is full and that takes the question just before the limit,
    /// then never answers: the handler gives up at the limit, not at twice the limit.
    #[tokio::test]
    async fn a_question_to_the_core_waits_at_most_the_limit_in_all() {
        let limit = Duration::from_millis(1000);
        let (core, mut inbox) = mpsc::channel::<AdminRequest>(1);
        let (filler, _unanswered) = oneshot::channel();
        core.send(AdminRequest::Status(filler)).await.expect("room");
        let slow_core = tokio::spawn(async move {
            tokio::time::sleep(limit * 8 / 10).await;
            let mut held = Vec::new();
            // Takes both questions and answers neither.
            while let Some(request) = inbox.recv().await {
                held.push(request);
            }
        });
        let asked = tokio::time::Instant::now();
        let answer = ask_within(&core, AdminRequest::Status, limit).await;
        let took = asked.elapsed();
        assert!(answer.is_none());
        assert!(took >= limit, "{took:?}");
        assert!(
            took < limit * 14 / 10,
            "gave up after {took:?}, limit {limit:?}"
        );
        slow_core.abort();
    }

    /// `GET path` over a fresh connection: the status code and the body.
    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (code, body.to_string())
    }

    /// A node core that does not answer (stalled, or busy past the deadline): `/status`
    /// and `/ready` answer 503 with the status known without the core, as JSON marked
    /// `core_unresponsive` (they used to answer plain text, which tools parsing them as
    /// JSON could not read).
    #[tokio::test]
    async fn status_and_ready_answer_json_when_the_core_does_not_answer() {
        let config = config(&[
            "--node-id",
            "2",
            "--peers",
            "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
        ]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = BoundAdmin::new(listener, &config);
        let addr = admin.local_addr().expect("addr");
        let (core, mut inbox) = mpsc::channel::<AdminRequest>(ADMIN_QUEUE_REQUESTS);
        // Takes every question and answers none.
        let stalled_core = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(request) = inbox.recv().await {
                held.push(request);
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            admin,
            core,
            Arc::new(AtomicBool::new(true)),
            None,
            async move {
                let _ = stopped.await;
            },
            Duration::from_millis(200),
        ));
        for path in ["/status", "/ready"] {
            let (code, body) = http_get(addr, path).await;
            assert_eq!(code, 503, "{path}: {body}");
            let value: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
            assert_eq!(value["core_unresponsive"], true, "{path}: {value}");
            assert_eq!(value["starting"], false, "{path}: {value}");
            let status: ServerStatus = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("{path}: not a status ({e}): {value}"));
            assert_eq!((status.node_id, status.ready), (2, false), "{path}");
            assert_eq!(status.leader, None, "{path}");
            assert_eq!(status.members.len(), 2, "{path}: {value}");
            assert_eq!(status.admin_addr, Some(addr.to_string()), "{path}");
        }
        // /health stays a liveness probe: 503, plain text.
        let (code, body) = http_get(addr, "/health").await;
        assert_eq!(code, 503, "{body}");
        let _ = stop.send(());
        server.await.expect("the endpoint stops");
        stalled_core.abort();
    }

    #[tokio::test]
    async fn an_address_the_operator_chose_must_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let err = bind(&config(&["--admin-listen", &addr]))
            .await
            .expect_err("in use");
        assert!(err.contains("admin_listen"), "{err}");
        assert!(bind(&config(&["--admin-listen", "off"]))
            .await
            .expect("off")
            .is_none());
    }
}
