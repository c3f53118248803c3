//! The public client handle.

use crate::backoff::{random_start, Backoff};
use crate::config::ClientConfig;
use crate::connection::{Call, Reply, SessionStatus, Shared, Task, Then};
use crate::error::{Error, Result};
use crate::lock::LockCounters;
use crate::lock_registry::RequestNodes;
use crate::multi::Transaction;
use crate::registry::OneShotKind;
use crate::state::{ConnectionState, StatePublisher, StateStream};
use crate::transport::{self, HandshakeError};
use crate::watcher::{WatchStream, Watcher};
use corral_protocol::path::validate_path;
use corral_protocol::{
    AddWatchMode, CreateMode, CreateRequest, ErrorCode, Hello, MultiOp, MultiResult, Op, OpResult,
    SessionRequest, Stat, WatcherKind,
};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

/// Calls queued for the connection task beyond those in flight.
const CALL_QUEUE: usize = 128;

/// A node created by [`Client::create_with`].
///
/// ```no_run
/// use corral_client::{CreateMode, CreateRequest};
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let created = client
///     .create_with(CreateRequest {
///         path: "/queue/item-".into(),
///         data: Vec::new(),
///         mode: CreateMode::PersistentSequential,
///         make_parents: true,
///     })
///     .await?;
/// println!("{} (czxid {})", created.path, created.stat.czxid);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The actual path (with the sequence suffix for sequential nodes).
    pub path: String,
    /// The new node's stat.
    pub stat: Stat,
}

/// A handle on a corral session.
///
/// Cheap to clone (an `Arc` inside); every clone uses the same session and connection,
/// and many tasks may call it at once: their requests are pipelined on one connection
/// by a background task. The session ends when [`close`](Self::close) is called or when
/// the last clone is dropped (the background task then closes it).
///
/// Calls fail with [`Error::Timeout`] after `request_timeout`; they survive a reconnect
/// (they are resent), and fail with [`Error::SessionExpired`] once the session is gone.
///
/// ```no_run
/// use corral_client::{Client, ClientConfig, CreateMode};
///
/// # async fn demo() -> corral_client::Result<()> {
/// let client = Client::connect(ClientConfig::new(["127.0.0.1:2281"])).await?;
/// client.create("/app", b"v1".to_vec(), CreateMode::Persistent).await?;
/// let (data, stat) = client.get_data("/app").await?;
/// assert_eq!(data, b"v1");
/// client.set_data("/app", b"v2".to_vec(), Some(stat.version)).await?;
/// client.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    calls: mpsc::Sender<Call>,
    shared: Arc<Shared>,
    request_timeout: Duration,
    /// The client's `max_frame_bytes`: the largest response it reads.
    max_frame_bytes: usize,
    lock_counters: LockCounters,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let session = self.inner.shared.session();
        f.debug_struct("Client")
            .field("session_id", &format_args!("{:#x}", session.session_id))
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

pub(crate) fn check_path(path: &str) -> Result<()> {
    validate_path(path).map_err(Error::InvalidPath)
}

/// Checks a create's path; a sequential node's path is a prefix, checked with a
/// sequence number appended (so `/queue/` is a valid prefix).
fn check_create_path(path: &str, mode: CreateMode) -> Result<()> {
    if mode.is_sequential() {
        validate_path(&format!("{path}0000000000")).map_err(Error::InvalidPath)
    } else {
        check_path(path)
    }
}

fn check_multi_op(op: &MultiOp) -> Result<()> {
    match op {
        MultiOp::Create(request) => check_create_path(&request.path, request.mode),
        MultiOp::Delete { path, .. }
        | MultiOp::SetData { path, .. }
        | MultiOp::Check { path, .. } => check_path(path),
        MultiOp::CheckLock { lock, .. } => check_path(lock),
    }
}

/// The receiving end of a call's answer. If the caller gives up (its future is dropped,
/// say its task was aborted) after the connection task handed the answer over but
/// before reading it, a lock answer in it names a queue node nobody will release, and a
/// lease grant a lease nobody will renew or revoke: the drop releases or revokes it in
/// the background, as the connection task does with an answer that finds no caller at
/// all.
struct Answer<'a> {
    client: &'a Client,
    rx: oneshot::Receiver<Result<Reply>>,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        // Closed first, so that an answer comes either before (read here) or not at all
        // (the task's send fails, and it releases the node itself).
        self.rx.close();
        let Ok(Ok(reply)) = self.rx.try_recv() else {
            return;
        };
        if let Some(lease_id) = reply.lease {
            tracing::debug!(lease = lease_id, "lease grant dropped unread; revoking");
            crate::lease::detach_revoke(self.client, lease_id);
        }
        let nodes = match &reply.result {
            OpResult::Locked { node, token } | OpResult::Queued { node, token } => {
                Some(RequestNodes::one(node, *token))
            }
            OpResult::MultiLocked { nodes, .. } => RequestNodes::of_group(nodes),
            _ => None,
        };
        if let Some(nodes) = nodes {
            tracing::debug!(node = %nodes.node.node, "lock answer dropped unread; releasing");
            crate::lock::detach_release(self.client, nodes);
        }
    }
}

pub(crate) fn unexpected(op: &str, result: &OpResult) -> Error {
    let got = match result {
        OpResult::Created { .. } => "Created",
        OpResult::Deleted => "Deleted",
        OpResult::Exists(_) => "Exists",
        OpResult::Data { .. } => "Data",
        OpResult::SetData { .. } => "SetData",
        OpResult::Children { .. } => "Children",
        OpResult::ChildrenPage { .. } => "ChildrenPage",
        OpResult::Multi(_) => "Multi",
        OpResult::Synced => "Synced",
        OpResult::Pong => "Pong",
        OpResult::Closed => "Closed",
        OpResult::WatchesUpdated => "WatchesUpdated",
        OpResult::Locked { .. } => "Locked",
        OpResult::Queued { .. } => "Queued",
        OpResult::Unlocked { .. } => "Unlocked",
        OpResult::Lease { .. } => "Lease",
        OpResult::Locks(_) => "Locks",
        OpResult::LocksPage { .. } => "LocksPage",
        OpResult::ServerStatus(_) => "ServerStatus",
        OpResult::MultiLocked { .. } => "MultiLocked",
    };
    Error::protocol(format!("the server answered {op} with {got}"))
}

impl Client {
    /// Opens a new session with one of `config.addresses` (starting at a random one and
    /// trying each once) and starts the background task that keeps it.
    ///
    /// Fails with the last server's error if none of them grants a session; such an
    /// error [`is_retryable`](Error::is_retryable) when trying again may help.
    /// Must be called within a tokio runtime.
    ///
    /// ```no_run
    /// use corral_client::{Client, ClientConfig};
    /// use std::time::Duration;
    ///
    /// # async fn demo() -> corral_client::Result<()> {
    /// let config = ClientConfig::new(["10.0.0.1:2281", "10.0.0.2:2281", "10.0.0.3:2281"])
    ///     .with_session_ttl(Duration::from_secs(6));
    /// let client = Client::connect(config).await?;
    /// println!("session {:#x}", client.session_id());
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let servers = config.addresses.len();
        let mut backoff = Backoff::new(servers, random_start(servers), config.max_backoff);
        let ttl_ms = u64::try_from(config.session_ttl.as_millis()).unwrap_or(u64::MAX);
        let hello = Hello::new(SessionRequest::New { ttl_ms }, 0);
        let state = StatePublisher::new(ConnectionState::Connecting);
        let mut last_error = Error::ConnectionLoss;
        for _ in 0..servers {
            let index = backoff.next_server();
            let Some(address) = config.addresses.get(index) else {
                break;
            };
            let started = Instant::now();
            let attempt = transport::open(
                address,
                &hello,
                config.max_frame_bytes,
                config.connect_timeout,
            )
            .await;
            match attempt {
                Ok((transport, granted)) => {
                    // Connected before the task first runs: a caller reading the state
                    // as soon as `connect` returns must not see `Connecting`.
                    state.set(ConnectionState::Connected {
                        address: address.clone(),
                    });
                    let shared = Arc::new(Shared {
                        state,
                        events: broadcast::Sender::new(config.event_buffer),
                        session: Mutex::new(Task::initial_status(&granted, started)),
                    });
                    let (calls, calls_rx) = mpsc::channel(CALL_QUEUE);
                    let request_timeout = config.request_timeout;
                    let max_frame_bytes = config.max_frame_bytes;
                    let task =
                        Task::new(config, shared.clone(), calls_rx, &granted, backoff, started);
                    tokio::spawn(task.run(transport));
                    return Ok(Client {
                        inner: Arc::new(Inner {
                            calls,
                            shared,
                            request_timeout,
                            max_frame_bytes,
                            lock_counters: LockCounters::default(),
                        }),
                    });
                }
                Err(HandshakeError::Refused(info)) => {
                    tracing::debug!(%address, "session refused: {info}");
                    if info.code == ErrorCode::ProtocolMismatch {
                        return Err(Error::Server(info));
                    }
                    last_error = Error::from(info);
                }
                Err(HandshakeError::Failed(e)) => {
                    tracing::debug!(%address, "cannot connect: {e}");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    // ----- plumbing -----

    /// The error for a call the task can no longer take.
    pub(crate) fn finished_error(&self) -> Error {
        match self.state() {
            ConnectionState::Expired => Error::SessionExpired,
            _ => Error::Closed,
        }
    }

    pub(crate) async fn call(&self, op: Op, then: Then) -> Result<Reply> {
        let (reply, answer) = oneshot::channel();
        let call = Call { op, then, reply };
        let mut answer = Answer {
            client: self,
            rx: answer,
        };
        let exchange = async {
            self.inner
                .calls
                .send(call)
                .await
                .map_err(|_| self.finished_error())?;
            (&mut answer.rx).await.map_err(|_| self.finished_error())?
        };
        let limit = self.inner.request_timeout;
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(limit)),
        }
    }

    /// The largest response this client reads (`ClientConfig::max_frame_bytes`).
    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.inner.max_frame_bytes
    }

    pub(crate) async fn call_plain(&self, op: Op) -> Result<OpResult> {
        self.call(op, Then::Nothing).await.map(|reply| reply.result)
    }

    /// Hands a request to the background task without waiting for it (from `Drop`):
    /// nobody gets the answer. With `Then::Detached` it is resent until answered. If
    /// the task is gone, so is the session, and there is nothing left to do.
    pub(crate) fn detach(&self, op: Op, then: Then) {
        let (reply, _ignored) = oneshot::channel();
        let call = Call { op, then, reply };
        match self.inner.calls.try_send(call) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(call)) => {
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        let calls = self.inner.calls.clone();
                        runtime.spawn(async move {
                            let _ = calls.send(call).await;
                        });
                    }
                    Err(_) => tracing::warn!(
                        "dropped a background {} outside a tokio runtime with a full queue",
                        call.op.name()
                    ),
                }
            }
        }
    }

    /// Pings the server and counts the acknowledgement as a renewal of the session's
    /// lease, from when the ping was sent, like the background keepalive's.
    pub(crate) async fn keepalive(&self) -> Result<()> {
        let then = Then::Keepalive {
            sent_at: Instant::now(),
        };
        match self.call(Op::Ping, then).await?.result {
            OpResult::Pong => Ok(()),
            other => Err(unexpected("ping", &other)),
        }
    }

    pub(crate) fn lock_counters(&self) -> &LockCounters {
        &self.inner.lock_counters
    }

    // ----- writes -----

    /// Creates a node and returns its actual path (with the sequence suffix for
    /// sequential modes). Fails with `NodeExists` if it exists and `NoNode` if its
    /// parent does not.
    ///
    /// ```no_run
    /// use corral_client::CreateMode;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let me = client
    ///     .create("/election/n-", Vec::new(), CreateMode::EphemeralSequential)
    ///     .await?;
    /// println!("I am {me}");
    /// # Ok(()) }
    /// ```
    pub async fn create(
        &self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: CreateMode,
    ) -> Result<String> {
        let created = self
            .create_with(CreateRequest {
                path: path.to_string(),
                data: data.into(),
                mode,
                make_parents: false,
            })
            .await?;
        Ok(created.path)
    }

    /// Creates a node with every option of [`CreateRequest`] (such as `make_parents`)
    /// and returns its path and stat.
    ///
    /// ```no_run
    /// use corral_client::{CreateMode, CreateRequest};
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let created = client
    ///     .create_with(CreateRequest {
    ///         path: "/services/api/instance-1".into(),
    ///         data: b"10.0.0.7:8080".to_vec(),
    ///         mode: CreateMode::Ephemeral,
    ///         make_parents: true,
    ///     })
    ///     .await?;
    /// println!("{} created at zxid {}", created.path, created.stat.czxid);
    /// # Ok(()) }
    /// ```
    pub async fn create_with(&self, request: CreateRequest) -> Result<Created> {
        check_create_path(&request.path, request.mode)?;
        match self.call_plain(Op::Create(request)).await? {
            OpResult::Created { path, stat } => Ok(Created { path, stat }),
            other => Err(unexpected("create", &other)),
        }
    }

    /// Deletes a node that has no children, only at `version` if one is given.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// client.delete("/tmp/job-1", None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, path: &str, version: Option<u32>) -> Result<()> {
        check_path(path)?;
        let op = Op::Delete {
            path: path.to_string(),
            version,
        };
        match self.call_plain(op).await? {
            OpResult::Deleted => Ok(()),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Replaces a node's data, only at `version` if one is given (compare and set), and
    /// returns the new stat.
    ///
    /// ```no_run
    /// use corral_client::ErrorCode;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let (data, stat) = client.get_data("/counter").await?;
    /// let next = (String::from_utf8_lossy(&data).parse::<u64>().unwrap_or(0) + 1).to_string();
    /// match client.set_data("/counter", next, Some(stat.version)).await {
    ///     Ok(stat) => println!("now version {}", stat.version),
    ///     Err(e) if e.is(ErrorCode::BadVersion) => println!("lost the race; retry"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_data(
        &self,
        path: &str,
        data: impl Into<Vec<u8>>,
        version: Option<u32>,
    ) -> Result<Stat> {
        check_path(path)?;
        let op = Op::SetData {
            path: path.to_string(),
            data: data.into(),
            version,
        };
        match self.call_plain(op).await? {
            OpResult::SetData { stat } => Ok(stat),
            other => Err(unexpected("set_data", &other)),
        }
    }

    /// Applies every operation atomically, under one zxid, or none of them. On failure
    /// the error's [`ErrorInfo::op_index`](corral_protocol::ErrorInfo::op_index) names
    /// the operation that failed. See also [`transaction`](Self::transaction).
    ///
    /// ```no_run
    /// use corral_client::MultiOp;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let results = client
    ///     .multi(vec![
    ///         MultiOp::Check { path: "/config".into(), version: 3 },
    ///         MultiOp::SetData { path: "/config".into(), data: b"new".to_vec(), version: None },
    ///     ])
    ///     .await?;
    /// assert_eq!(results.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn multi(&self, ops: Vec<MultiOp>) -> Result<Vec<MultiResult>> {
        for op in &ops {
            check_multi_op(op)?;
        }
        match self.call_plain(Op::Multi(ops)).await? {
            OpResult::Multi(results) => Ok(results),
            other => Err(unexpected("multi", &other)),
        }
    }

    /// Starts building an atomic multi-operation.
    ///
    /// ```no_run
    /// use corral_client::CreateMode;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// client
    ///     .transaction()
    ///     .check("/config", 3)
    ///     .create("/config/audit-", b"changed".to_vec(), CreateMode::PersistentSequential)
    ///     .set_data("/config", b"new".to_vec(), Some(3))
    ///     .commit()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction::new(self)
    }

    // ----- reads -----

    /// The node's stat, or `None` if it does not exist.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// if client.exists("/ready").await?.is_some() {
    ///     println!("ready");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn exists(&self, path: &str) -> Result<Option<Stat>> {
        check_path(path)?;
        let op = Op::Exists {
            path: path.to_string(),
            watch: false,
        };
        match self.call_plain(op).await? {
            OpResult::Exists(stat) => Ok(stat),
            other => Err(unexpected("exists", &other)),
        }
    }

    /// Like [`exists`](Self::exists), and leaves a one-shot watch that fires when the
    /// node is created, deleted or its data changes (it is left whether or not the node
    /// exists).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let (stat, watcher) = client.exists_watch("/ready").await?;
    /// if stat.is_none() {
    ///     let event = watcher.await?;
    ///     println!("{:?}", event.kind);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn exists_watch(&self, path: &str) -> Result<(Option<Stat>, Watcher)> {
        check_path(path)?;
        let (tx, watcher) = Watcher::channel();
        let op = Op::Exists {
            path: path.to_string(),
            watch: true,
        };
        let then = Then::OneShot {
            path: path.to_string(),
            kind: OneShotKind::Exist,
            tx,
        };
        match self.call(op, then).await?.result {
            OpResult::Exists(stat) => Ok((stat, watcher)),
            other => Err(unexpected("exists", &other)),
        }
    }

    /// The node's data and stat. Fails with `NoNode` if it does not exist.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let (data, stat) = client.get_data("/config").await?;
    /// println!("{} bytes, version {}", data.len(), stat.version);
    /// # Ok(()) }
    /// ```
    pub async fn get_data(&self, path: &str) -> Result<(Vec<u8>, Stat)> {
        check_path(path)?;
        let op = Op::GetData {
            path: path.to_string(),
            watch: false,
        };
        match self.call_plain(op).await? {
            OpResult::Data { data, stat } => Ok((data, stat)),
            other => Err(unexpected("get_data", &other)),
        }
    }

    /// Like [`get_data`](Self::get_data), and leaves a one-shot watch that fires when
    /// the node's data changes or the node is deleted.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// loop {
    ///     let (data, _stat, watcher) = client.get_data_watch("/config").await?;
    ///     println!("config: {}", String::from_utf8_lossy(&data));
    ///     watcher.await?;
    /// }
    /// # }
    /// ```
    pub async fn get_data_watch(&self, path: &str) -> Result<(Vec<u8>, Stat, Watcher)> {
        check_path(path)?;
        let (tx, watcher) = Watcher::channel();
        let op = Op::GetData {
            path: path.to_string(),
            watch: true,
        };
        let then = Then::OneShot {
            path: path.to_string(),
            kind: OneShotKind::Data,
            tx,
        };
        match self.call(op, then).await?.result {
            OpResult::Data { data, stat } => Ok((data, stat, watcher)),
            other => Err(unexpected("get_data", &other)),
        }
    }

    /// The names (not paths) of the node's children, sorted.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// for name in client.get_children("/services").await? {
    ///     println!("{name}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_children(&self, path: &str) -> Result<Vec<String>> {
        self.get_children_with_stat(path)
            .await
            .map(|(children, _)| children)
    }

    /// The names of the node's children, sorted, and the node's stat.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let (children, stat) = client.get_children_with_stat("/queue").await?;
    /// assert_eq!(children.len() as u32, stat.num_children);
    /// # Ok(()) }
    /// ```
    pub async fn get_children_with_stat(&self, path: &str) -> Result<(Vec<String>, Stat)> {
        check_path(path)?;
        let op = Op::GetChildren {
            path: path.to_string(),
            watch: false,
        };
        match self.call_plain(op).await? {
            OpResult::Children { children, stat } => Ok((children, stat)),
            other => Err(unexpected("get_children", &other)),
        }
    }

    /// Like [`get_children_with_stat`](Self::get_children_with_stat), and leaves a
    /// one-shot watch that fires when a child is added or removed or the node is
    /// deleted.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let (children, _stat, watcher) = client.get_children_watch("/workers").await?;
    /// println!("{} workers", children.len());
    /// watcher.await?;
    /// println!("membership changed");
    /// # Ok(()) }
    /// ```
    pub async fn get_children_watch(&self, path: &str) -> Result<(Vec<String>, Stat, Watcher)> {
        check_path(path)?;
        let (tx, watcher) = Watcher::channel();
        let op = Op::GetChildren {
            path: path.to_string(),
            watch: true,
        };
        let then = Then::OneShot {
            path: path.to_string(),
            kind: OneShotKind::Child,
            tx,
        };
        match self.call(op, then).await?.result {
            OpResult::Children { children, stat } => Ok((children, stat, watcher)),
            other => Err(unexpected("get_children", &other)),
        }
    }

    /// Waits until every write acknowledged (to anyone) before this call is visible on
    /// the server this client is connected to. Read after `sync` for an up-to-date view.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// client.sync("/").await?;
    /// let fresh = client.get_data("/config").await?;
    /// # Ok(()) }
    /// ```
    pub async fn sync(&self, path: &str) -> Result<()> {
        check_path(path)?;
        let op = Op::Sync {
            path: path.to_string(),
        };
        match self.call_plain(op).await? {
            OpResult::Synced => Ok(()),
            other => Err(unexpected("sync", &other)),
        }
    }

    /// The status of the server this client is connected to (role, leader, zxids,
    /// sizes, counts): see [`corral_protocol::ServerStatus`].
    pub async fn server_status(&self) -> Result<corral_protocol::ServerStatus> {
        match self.call_plain(Op::ServerStatus).await? {
            OpResult::ServerStatus(status) => Ok(*status),
            other => Err(unexpected("server_status", &other)),
        }
    }

    // ----- watches -----

    /// Adds a persistent watch and returns the stream of its events. It stays until
    /// [`remove_watches`](Self::remove_watches) (with `Persistent` or `Any`) or the end
    /// of the session, and survives reconnects: after one the stream reads
    /// [`Error::WatchResumed`] (changes made while the client was away fired no event)
    /// and goes on. Adding the same watch again joins it.
    ///
    /// `Persistent` reports creation, deletion and data changes of the node and changes
    /// of its children list; `PersistentRecursive` reports creation, deletion and data
    /// changes of the node and every descendant.
    ///
    /// ```no_run
    /// use corral_client::AddWatchMode;
    /// use futures::StreamExt;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let mut events = client.add_watch("/jobs", AddWatchMode::PersistentRecursive).await?;
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     println!("{:?} {}", event.kind, event.path);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn add_watch(&self, path: &str, mode: AddWatchMode) -> Result<WatchStream> {
        check_path(path)?;
        let op = Op::AddWatch {
            path: path.to_string(),
            mode,
        };
        let then = Then::Persistent {
            path: path.to_string(),
            mode,
        };
        let reply = self.call(op, then).await?;
        match (reply.result, reply.stream) {
            (OpResult::WatchesUpdated, Some(rx)) => Ok(WatchStream::new(rx)),
            (other, _) => Err(unexpected("add_watch", &other)),
        }
    }

    /// Removes this session's watches of `kind` on `path`. Their one-shot
    /// [`Watcher`]s resolve to, and their streams end with, [`Error::WatchRemoved`].
    /// Fails with `NoWatcher` if none matched.
    ///
    /// ```no_run
    /// use corral_client::WatcherKind;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// client.remove_watches("/jobs", WatcherKind::Persistent).await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove_watches(&self, path: &str, kind: WatcherKind) -> Result<()> {
        check_path(path)?;
        let op = Op::RemoveWatches {
            path: path.to_string(),
            kind,
        };
        let then = Then::RemoveWatches {
            path: path.to_string(),
            kind,
        };
        match self.call(op, then).await?.result {
            OpResult::WatchesUpdated => Ok(()),
            other => Err(unexpected("remove_watches", &other)),
        }
    }

    /// A stream of every watch event this session receives, whichever watch fired it
    /// (including events no [`Watcher`] or stream waits for any more), from now on.
    ///
    /// Bounded by `event_buffer`: a reader that falls behind loses the oldest events and
    /// reads [`Error::Lagged`] instead. After a reconnect that registered persistent
    /// watches again it reads [`Error::WatchResumed`], as their own streams do. It ends
    /// with the error that finished the client ([`Error::SessionExpired`] or
    /// [`Error::Closed`]).
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// # async fn demo(client: corral_client::Client) {
    /// let mut events = client.watch_events();
    /// while let Some(item) = events.next().await {
    ///     match item {
    ///         Ok(event) => println!("{event:?}"),
    ///         Err(e) => eprintln!("{e}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn watch_events(&self) -> WatchStream {
        // Subscribe before looking at the state so the final error is not missed.
        let rx = self.inner.shared.events.subscribe();
        if self.state().is_terminal() {
            return WatchStream::ended(self.finished_error());
        }
        WatchStream::new(rx)
    }

    // ----- session -----

    /// Ends the session: its ephemeral nodes are deleted and every later call fails with
    /// [`Error::Closed`]. Requests sent before `close` are answered first. Closing a
    /// closed or expired client succeeds. If no server can be reached before the session
    /// lease runs out, the client closes locally and the session expires on the server
    /// after its TTL.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// client.close().await?;
    /// assert!(client.state().is_terminal());
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) -> Result<()> {
        if self.state().is_terminal() {
            return Ok(());
        }
        match self.call(Op::CloseSession, Then::Close).await {
            Ok(reply) => match reply.result {
                OpResult::Closed => Ok(()),
                other => Err(unexpected("close", &other)),
            },
            Err(Error::Closed | Error::SessionExpired) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The current connection state.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// println!("{}", client.state());
    /// # }
    /// ```
    pub fn state(&self) -> ConnectionState {
        self.inner.shared.state.get()
    }

    /// A stream of the connection state's changes from now on; see [`StateStream`].
    ///
    /// ```no_run
    /// use corral_client::ConnectionState;
    /// use futures::StreamExt;
    /// # async fn demo(client: corral_client::Client) {
    /// let mut states = client.state_events();
    /// while let Some(state) = states.next().await {
    ///     if state == ConnectionState::Expired {
    ///         eprintln!("session lost; rebuild");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn state_events(&self) -> StateStream {
        self.inner.shared.state.subscribe()
    }

    /// The session id (never 0).
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// println!("session {:#x}", client.session_id());
    /// # }
    /// ```
    pub fn session_id(&self) -> u64 {
        self.session().session_id
    }

    /// The session TTL the server granted.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// println!("ttl {:?}", client.session_ttl());
    /// # }
    /// ```
    pub fn session_ttl(&self) -> Duration {
        self.session().ttl
    }

    /// The highest zxid this client has seen (in responses, events and handshakes).
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// println!("seen up to zxid {}", client.last_zxid());
    /// # }
    /// ```
    pub fn last_zxid(&self) -> u64 {
        self.session().last_zxid
    }

    /// Until when the session is certainly alive on the server: the time the last
    /// renewal the server acknowledged was *sent* (the handshake, the background
    /// keepalive's ping, or [`LockGuard::renew`](crate::LockGuard::renew)'s), plus the
    /// TTL. Other requests do not count: a follower answers them without renewing the
    /// session. After it the server may
    /// have expired the session (and deleted its ephemeral nodes, releasing its locks)
    /// even if the client has not heard so yet. Subtract a margin for clock-rate
    /// differences before relying on it.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let margin = std::time::Duration::from_millis(500);
    /// let safe = std::time::Instant::now() + margin < client.lease_deadline();
    /// # }
    /// ```
    pub fn lease_deadline(&self) -> std::time::Instant {
        self.session().lease_deadline.into_std()
    }

    pub(crate) fn session(&self) -> SessionStatus {
        self.inner.shared.session()
    }
}
