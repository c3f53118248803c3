//! The IO shell of a single node: the client listener, one task per connection, the
//! task that owns the node core, and the storage thread.
//!
//! ```text
//!  connection tasks --CoreMsg--> core task (owns Node) --StorageCommand--> storage thread
//!        ^                          |    ^                                     |
//!        +------ ToConn (bounded) --+    +---------- Persisted / Failed -------+
//! ```
//!
//! Every queue is bounded: a connection's outgoing queue by
//! `max_queued_messages_per_connection` and `max_queued_bytes_per_connection`, measured
//! when a core round first sends to it (see [`OutQueue`]: a client that does not read is
//! disconnected, one that reads survives a burst larger than the limits), and a write to
//! a client by `write_stall_timeout_ms`; the core's inbox by `CORE_INBOX` (connection
//! readers wait: backpressure), the peer transport's events channel, which the core reads directly, by `CORE_INBOX` too, and the
//! storage queue by the node core itself, which has at most one batch outstanding.

mod disk_usage;
mod ops;

use crate::config::Config;
use crate::machine::MachineLimits;
use crate::machine::StateMachine;
use crate::node::{ConnId, Input, Log, Node, NodeConfig, Now, Output};
use crate::replication::log::{PaxosSettings, PeerMsg};
use crate::replication::transport::{Bound, PeerConfig, PeerEvent, Transport};
use crate::replication::{open_cluster, ClusterSettings, RecoveredCluster};
use crate::storage::{self, Backend, StorageCommand, StorageStats};
use crate::wal::WalOptions;
use corral_protocol::{
    ClientMessage, Codec, ErrorCode, ErrorInfo, FrameError, Hello, HelloReply, IncomingRequest,
    RequestDecoder, Response, ServerMessage,
};
use futures::{SinkExt, StreamExt};
use omnipaxos::ballot_leader_election::Ballot;
use ops::{start_admin, RequestTimer, ShellInfo};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{Framed, FramedRead, FramedWrite};

/// Capacity of the core task's inbox.
const CORE_INBOX: usize = 16 * 1024;
/// Inputs the core handles before it yields to dispatch and the timer.
const CORE_BATCH: usize = 1024;
/// Inputs the core takes in before it ends a pass ([`Node::end_pass`]): the entries
/// and acknowledgements of a pass leave together, and the first of them waits for at
/// most this many inputs' handling.
const PASS_INPUTS: usize = 64;
/// How long a refused connection gets to read its refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections refused over `max_connections` are logged at most once per this interval
/// (with how many were refused): a client connecting in a loop must not flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Time a shutdown waits for outstanding writes to become durable.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client disconnected for not reading gets to take its `Goodbye` (and the
/// rest of a frame already started) before its socket is closed without it.
const NOT_READING_GOODBYE_TIMEOUT: Duration = Duration::from_millis(200);

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot recover the data directory {dir}: {reason}")]
    Recovery { dir: String, reason: String },
    #[error("{0}")]
    Config(String),
    /// The data directory belongs to another cluster member (`crate::identity`).
    #[error("{0}")]
    Identity(crate::identity::IdentityError),
    #[error("cannot start the storage thread: {0}")]
    Thread(std::io::Error),
    /// The node core stopped before shutdown (it panicked: an invariant of the
    /// replicated log or its storage failed). The process exits so that a supervisor
    /// restarts it from its disk, instead of keeping ports open without serving.
    #[error("the node core stopped: {0}")]
    CoreFailed(String),
}

/// Messages to the core task.
#[derive(Debug)]
enum CoreMsg {
    /// A new connection and its outgoing queue (sent before its `Hello`).
    Register {
        conn: ConnId,
        out: OutQueue,
    },
    Input(Input),
    /// A question from the admin endpoint.
    Admin(crate::admin::AdminRequest),
}

/// Messages from the core task to one connection task.
#[derive(Debug)]
enum ToConn {
    Hello(HelloReply),
    /// A message and its size on the wire, as counted in the queue's level.
    Msg {
        msg: ServerMessage,
        bytes: usize,
    },
    Close,
}

/// What waits in one connection's outgoing queue: the messages the core queued that the
/// connection's writer has not taken yet (it takes one when the socket has room for it).
#[derive(Debug, Default)]
struct QueueLevel {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl QueueLevel {
    fn add(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn take(&self, bytes: usize) {
        self.messages.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// (messages, bytes) queued.
    fn get(&self) -> (usize, usize) {
        (
            self.messages.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Limits of one connection's outgoing queue.
#[derive(Debug, Clone, Copy)]
struct QueueLimits {
    max_messages: usize,
    max_bytes: usize,
}

/// The core's end of one connection's outgoing queue.
///
/// The channel itself is unbounded; its bound is enforced by the core, per round of the
/// core task ([`CoreShell::round`]): the first time a round sends to the connection, the
/// queue is measured, and a queue over `max_queued_messages_per_connection` or
/// `max_queued_bytes_per_connection` means the client did not read what earlier rounds
/// sent it: it is disconnected. Everything one round sends is queued whole, so a burst of
/// one entry or request (the events of a `SetWatches`, of a `Multi` under a recursive
/// watch, of an expiry) reaches a client that reads it even if it is larger than the
/// limits; the queue then holds at most the limits plus one round's messages.
#[derive(Debug)]
struct OutQueue {
    tx: mpsc::UnboundedSender<ToConn>,
    level: Arc<QueueLevel>,
    /// Ends the connection at once, with this goodbye (if the socket takes it).
    drop_now: oneshot::Sender<ErrorInfo>,
    /// The last round that measured this queue.
    measured_round: u64,
}

/// The clock of the shell: monotonic from start-up, plus the wall clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
}

impl Clock {
    fn now(&self) -> Now {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        // The identity unless the Jepsen harness enabled its clock hook (clock.rs).
        let (mono_ms, wall_ms) =
            crate::clock::adjust(self.start.elapsed().as_millis() as u64, wall_ms);
        Now { mono_ms, wall_ms }
    }
}

/// A node bound to its ports and recovered from its data directory, ready to run.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listener: TcpListener,
    /// The admin endpoint's listener (`None`: disabled).
    admin: Option<crate::admin::BoundAdmin>,
    mode: Mode,
    backend: Backend,
}

/// What the data directory held.
#[derive(Debug)]
enum Mode {
    Single {
        machine: Box<StateMachine>,
        log: Log,
    },
    Cluster {
        recovered: Box<RecoveredCluster>,
        /// The bound peer listener and the transport settings.
        bound: Bound,
        peer_config: PeerConfig,
    },
}

fn machine_limits(config: &Config) -> MachineLimits {
    MachineLimits {
        max_data_bytes: config.max_data_bytes,
        ..MachineLimits::default()
    }
}

/// File handles the server needs besides its client connections: log segments,
/// snapshots and images, peers, the admin port's connections, the runtime.
const RESERVED_FILE_HANDLES: u64 = 256 + crate::admin::ADMIN_MAX_CONNECTIONS as u64;

/// Raises the process's soft limit of open files to its hard limit, as Go's runtime does
/// (a service manager's default soft limit is often 1,024, below `max_connections`), and
/// warns if it stays below what `max_connections` needs. Running out of file handles is
/// not a disk failure, but a log segment or snapshot the log cannot open looks like one.
fn raise_open_files_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?limit.current, to = ?limit.maximum, "raised the open-files limit")
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
    let needed = max_connections as u64 + RESERVED_FILE_HANDLES;
    if let Some(now) = getrlimit(Resource::Nofile).current {
        if now < needed {
            tracing::warn!(
                limit = now,
                needed,
                "the open-files limit is below max_connections plus what the server needs \
                 besides: raise it (ulimit -n, systemd LimitNOFILE) or lower max_connections"
            );
        }
    }
}

/// Refuses a data directory that holds an unfinished restore ([`crate::backup`]), or the
/// other mode's data: a single node's (`wal/`, `snapshots/`) for a cluster member, or a
/// cluster member's (`paxos/`) for a single node. The node would find no state of its
/// own there and start empty without a word (a backup restored for the other mode, or a
/// flag forgotten at a restart).
pub(crate) fn check_layout(dir: &std::path::Path, cluster: bool) -> Result<(), ServerError> {
    if dir.join(crate::backup::RESTORE_MARKER).exists() {
        return Err(ServerError::Config(format!(
            "the data directory {} holds a restore that did not finish ({}): run the same \
             `corral restore` again, which takes it over, then start the node",
            dir.display(),
            crate::backup::RESTORE_MARKER
        )));
    }
    let single = dir.join("wal").exists() || dir.join("snapshots").exists();
    let member = dir.join("paxos").exists();
    let problem = match (cluster, single, member) {
        (true, true, false) => Some(
            "holds a single node's data (wal/, snapshots/) but this node is started as a \
             cluster member (--peers): start it without --peers, or restore the backup \
             with --peers into an empty directory",
        ),
        (false, false, true) => Some(
            "holds a cluster member's data (paxos/) but this node is started as a single \
             node: start it with its --peers, or restore the backup without --peers into \
             an empty directory",
        ),
        _ => None,
    };
    match problem {
        Some(problem) => Err(ServerError::Config(format!(
            "the data directory {} {problem}",
            dir.display()
        ))),
        None => Ok(()),
    }
}

/// Why a cluster member's data directory could not be opened.
enum OpenMemberError {
    Identity(crate::identity::IdentityError),
    Recovery(String),
}

impl OpenMemberError {
    fn in_dir(self, dir: String) -> ServerError {
        match self {
            OpenMemberError::Identity(e) => ServerError::Identity(e),
            OpenMemberError::Recovery(reason) => ServerError::Recovery { dir, reason },
        }
    }
}

/// Opens a cluster member's Paxos directory after checking that it is this member's
/// (`crate::identity`), and records the identity there if it holds none yet.
fn open_member(
    paxos_dir: &std::path::Path,
    identity: crate::identity::MemberIdentity,
    wal_options: WalOptions,
    limits: MachineLimits,
    settings: ClusterSettings,
) -> Result<RecoveredCluster, OpenMemberError> {
    let disk = crate::disk::Disk::Real;
    let recorded =
        crate::identity::check(&disk, paxos_dir, identity).map_err(OpenMemberError::Identity)?;
    let recovered = open_cluster(paxos_dir, wal_options, limits, settings)
        .map_err(|e| OpenMemberError::Recovery(e.to_string()))?;
    if !recorded {
        crate::identity::record(&disk, paxos_dir, identity).map_err(OpenMemberError::Identity)?;
        tracing::info!(
            node = identity.node_id,
            cluster = identity.cluster_id,
            file = %paxos_dir.join(crate::identity::IDENTITY_FILE).display(),
            "recorded which member this data directory belongs to"
        );
    }
    Ok(recovered)
}

impl Server {
    /// Recovers the data directory and binds the listeners.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        raise_open_files_limit(config.max_connections);
        let limits = machine_limits(&config);
        let wal_options = WalOptions {
            segment_bytes: config.wal_segment_bytes,
            fsync: config.fsync,
            preallocate_bytes: crate::wal::DEFAULT_PREALLOCATE_BYTES,
        };
        let members = config
            .peer_map()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        check_layout(&config.data_dir, !members.is_empty())?;
        let dir = config.data_dir.clone();
        let (mode, backend) = if members.is_empty() {
            let recovered =
                tokio::task::spawn_blocking(move || storage::recover(&dir, limits, wal_options))
                    .await
                    .map_err(|e| ServerError::Thread(std::io::Error::other(e)))?
                    .map_err(|source| ServerError::Recovery {
                        dir: config.data_dir.display().to_string(),
                        reason: source.to_string(),
                    })?;
            tracing::info!(
                dir = %config.data_dir.display(),
                zxid = recovered.machine.last_zxid(),
                replayed = recovered.replayed,
                truncated_bytes = recovered.truncated_bytes,
                sessions = recovered.machine.sessions().count(),
                "recovered data directory"
            );
            let log = Log::local(recovered.machine.last_zxid());
            let backend = Backend::Local {
                wal: Box::new(recovered.wal),
                snapshot_index: recovered.snapshot_index,
            };
            let machine = Box::new(recovered.machine);
            (Mode::Single { machine, log }, backend)
        } else {
            let election_ticks = (config.election_timeout_ms / config.tick_ms).max(2);
            let settings = ClusterSettings {
                node_id: config.node_id,
                members: members.keys().copied().collect(),
                election_ticks,
                resend_ticks: election_ticks,
                log: PaxosSettings {
                    forward_retry_ticks: election_ticks,
                    election_ticks,
                    max_forwarded_entries: 64 * 1024,
                    max_forward_batch_bytes: config.max_peer_frame_bytes / 2,
                    limits,
                    encode_images_in_background: true,
                },
            };
            let paxos_dir = config.data_dir.join("paxos");
            let identity = crate::identity::MemberIdentity {
                node_id: config.node_id,
                cluster_id: config.cluster_id,
            };
            let data_dir = config.data_dir.display().to_string();
            let recovered = tokio::task::spawn_blocking(move || {
                open_member(&paxos_dir, identity, wal_options, limits, settings)
            })
            .await
            .map_err(|e| ServerError::Thread(std::io::Error::other(e)))?
            .map_err(|e| e.in_dir(data_dir))?;
            tracing::info!(
                dir = %config.data_dir.display(),
                node = config.node_id,
                zxid = recovered.machine.last_zxid(),
                fresh = recovered.fresh,
                sessions = recovered.machine.sessions().count(),
                "recovered cluster member"
            );
            let backend = Backend::Paxos(recovered.sync_handle());
            let peer_addr = members[&config.node_id];
            let bound = Bound::bind(peer_addr)
                .await
                .map_err(|e| ServerError::Config(e.to_string()))?;
            let others = members
                .iter()
                .filter(|(id, _)| **id != config.node_id)
                .map(|(id, addr)| (*id, *addr))
                .collect();
            let peer_config = PeerConfig {
                node_id: config.node_id,
                listen: peer_addr,
                peers: others,
                max_frame_bytes: config.max_peer_frame_bytes,
                send_queue_messages: config.peer_queue_messages,
                connect_timeout_ms: config.election_timeout_ms.max(100),
                backoff_min_ms: config.tick_ms,
                backoff_max_ms: config.election_timeout_ms.max(config.tick_ms),
                cluster_id: config.cluster_id,
                // A live node sends every peer a leader-election heartbeat at least once
                // per election timeout: two without a message mean the connection is dead
                // (when another process of the same node id connects).
                inbound_quiet_ms: 2 * config.election_timeout_ms.max(config.tick_ms),
            };
            let mode = Mode::Cluster {
                recovered: Box::new(recovered),
                bound,
                peer_config,
            };
            (mode, backend)
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let admin = crate::admin::bind(&config)
            .await
            .map_err(ServerError::Config)?;
        Ok(Server {
            config,
            listener,
            admin,
            mode,
            backend,
        })
    }

    /// The address the client listener is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address the admin endpoint is bound to, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then stops accepting, says goodbye to every
    /// client, waits for outstanding writes to become durable, and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<StorageStats, ServerError> {
        let admin_addr = self.admin_addr();
        let Server {
            config,
            listener,
            admin,
            mode,
            backend,
        } = self;
        let members = config.peer_map().unwrap_or_default();
        let shell_info = ShellInfo {
            members: members
                .iter()
                .filter(|(id, _)| **id != config.node_id)
                .map(|(id, addr)| (*id, addr.to_string()))
                .collect(),
            disk_usage: disk_usage::DiskUsage::start(config.data_dir.clone()).await,
            admin_addr: admin_addr.map(|a| a.to_string()),
        };
        tokio::pin!(shutdown);
        let clock = Clock {
            start: Instant::now(),
        };
        let node_config = NodeConfig {
            node_id: config.node_id,
            machine: machine_limits(&config),
            max_sessions: config.max_sessions,
            max_pending_requests_per_connection: config.max_pending_requests_per_connection,
            max_watches_per_session: config.max_watches_per_session,
            max_state_bytes: config.max_state_bytes,
            min_session_ttl_ms: config.min_session_ttl_ms,
            max_session_ttl_ms: config.max_session_ttl_ms,
            snapshot_every_entries: config.snapshot_every_entries,
            snapshot_every_bytes: config.effective_snapshot_every_bytes(),
            max_frame_bytes: config.max_frame_bytes,
            stall_threshold_ms: (config.min_session_ttl_ms / 2).max(4 * config.tick_ms),
        };

        let (core_tx, core_rx) = mpsc::channel::<CoreMsg>(CORE_INBOX);
        // The admin endpoint serves from the start: while a new member waits for its
        // peers, /health says it is alive and /ready that it is not ready.
        let core_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        if let Some(listener) = admin {
            start_admin(
                listener,
                core_tx.clone(),
                admin_stop_rx,
                core_running.clone(),
            );
        }
        let (storage_tx, storage_rx) = std::sync::mpsc::channel::<StorageCommand>();
        let report_tx = core_tx.clone();
        let data_dir = config.data_dir.clone();
        let storage_thread = std::thread::Builder::new()
            .name("corral-storage".into())
            .spawn(move || {
                storage::run_storage_thread(data_dir, backend, storage_rx, |input| {
                    report_tx.blocking_send(CoreMsg::Input(input)).is_ok()
                })
            })
            .map_err(ServerError::Thread)?;

        let (node, peers) = match mode {
            Mode::Single { machine, log } => {
                (Node::new(node_config, *machine, log, clock.now()), None)
            }
            Mode::Cluster {
                recovered,
                bound,
                peer_config,
            } => {
                let (events_tx, mut events_rx) = mpsc::channel::<PeerEvent<PeerMsg>>(CORE_INBOX);
                let others: Vec<u64> = peer_config.peers.keys().copied().collect();
                let transport = bound
                    .start(peer_config, events_tx)
                    .await
                    .map_err(|e| ServerError::Config(e.to_string()))?;
                let adopt = if recovered.fresh {
                    let retry = Duration::from_millis(config.election_timeout_ms.max(50));
                    let joined = tokio::select! {
                        b = learn_promise(&transport, &mut events_rx, &others, retry) => b,
                        _ = &mut shutdown => None,
                    };
                    let Some(ballot) = joined else {
                        transport.shutdown();
                        return Ok(StorageStats::default());
                    };
                    Some(ballot)
                } else {
                    None
                };
                let (machine, log) = tokio::task::spawn_blocking(move || recovered.start(adopt))
                    .await
                    .map_err(|e| ServerError::Thread(std::io::Error::other(e)))?
                    .map_err(|e| ServerError::Config(e.to_string()))?;
                let node = Node::new(node_config, machine, Log::Paxos(Box::new(log)), clock.now());
                // Links that came up while joining: let OmniPaxos resend what it may
                // have lost on them.
                for peer in &others {
                    if let Some(version) = transport.link_version(*peer) {
                        let _ = core_tx
                            .send(CoreMsg::Input(Input::LinkUp {
                                peer: *peer,
                                version,
                            }))
                            .await;
                    }
                }
                (node, Some((transport, events_rx)))
            }
        };

        let transport = peers.as_ref().map(|(t, _)| t.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let core = tokio::spawn(run_core(
            node,
            clock,
            core_rx,
            core_tx.downgrade(),
            storage_tx,
            peers,
            Duration::from_millis(config.tick_ms),
            stop_rx,
            shell_info,
            QueueLimits {
                max_messages: config.max_queued_messages_per_connection,
                max_bytes: config.max_queued_bytes_per_connection,
            },
        ));
        core_running.store(true, std::sync::atomic::Ordering::Release);

        accept_loop(&config, &listener, &core_tx, shutdown).await;
        drop(listener);
        tracing::info!("shutting down: no longer accepting connections");
        let _ = stop_tx.send(());
        let _ = admin_stop_tx.send(());
        drop(core_tx);
        let core_failed = match core.await {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(error = %e, "core task failed");
                Some(e.to_string())
            }
        };
        if let Some(t) = &transport {
            t.shutdown();
        }
        let stats = tokio::task::spawn_blocking(move || storage_thread.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        tracing::info!(
            syncs = stats.syncs,
            entries = stats.entries,
            entries_per_sync = if stats.syncs > 0 {
                stats.entries as f64 / stats.syncs as f64
            } else {
                0.0
            },
            mean_sync_us = stats.sync_micros.checked_div(stats.syncs).unwrap_or(0),
            "storage closed"
        );
        match core_failed {
            Some(why) => Err(ServerError::CoreFailed(why)),
            None => Ok(stats),
        }
    }
}

async fn accept_loop(
    config: &Config,
    listener: &TcpListener,
    core_tx: &mpsc::Sender<CoreMsg>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut next_conn: ConnId = 1;
    // Refusals over max_connections since the last line about them, and its time.
    let mut refused: u64 = 0;
    let mut refusal_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            // The core stopped on its own (a panic): nobody would serve a new connection.
            _ = core_tx.closed() => {
                tracing::error!("the node core stopped; shutting down");
                return;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let conn = next_conn;
        next_conn += 1;
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                metrics::counter!(crate::metrics::CONNECTIONS_ACCEPTED).increment(1);
                let settings = ConnSettings {
                    max_frame_bytes: config.max_frame_bytes,
                    handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
                    write_stall_timeout: Duration::from_millis(config.write_stall_timeout_ms),
                };
                let core_tx = core_tx.clone();
                tokio::spawn(async move {
                    let open = metrics::gauge!(crate::metrics::CONNECTIONS_OPEN);
                    open.increment(1.0);
                    serve_connection(conn, stream, peer, core_tx, settings).await;
                    open.decrement(1.0);
                    drop(permit);
                });
            }
            Err(_) => {
                metrics::counter!(crate::metrics::CONNECTIONS_REJECTED, "reason" => "max_connections").increment(1);
                refused += 1;
                if refusal_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                    tracing::warn!(
                        %peer,
                        limit = config.max_connections,
                        refused,
                        "connection refused: too many connections (`refused` counts the \
                         refusals since the last such line; one per {REFUSAL_LOG_INTERVAL:?} at most)"
                    );
                    refusal_logged = Some(Instant::now());
                    refused = 0;
                }
                let msg = format!(
                    "the server has {} connections, the limit max_connections",
                    config.max_connections
                );
                let max = config.max_frame_bytes;
                tokio::spawn(async move {
                    let reply = HelloReply::Refused(ErrorInfo::new(ErrorCode::LimitExceeded, msg));
                    let mut framed = Framed::new(stream, Codec::<Hello, HelloReply>::new(max));
                    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, framed.send(reply)).await;
                });
            }
        }
    }
}

/// A node starting with an empty data directory learns the highest ballot promised by
/// a majority of the cluster's other nodes (which must include a member of any quorum
/// that promised a ballot this node may have promised before its disk was wiped). Nodes
/// that are themselves joining answer with the default ballot and accepted index 0, so a
/// new cluster whose nodes all start empty gets going. If one of the answers reports an
/// accepted entry the node then catches up before it votes (`replication::join`, done by
/// `RecoveredCluster::start`).
/// Returns `None` if the transport closes.
async fn learn_promise(
    transport: &Transport<PeerMsg>,
    events: &mut mpsc::Receiver<PeerEvent<PeerMsg>>,
    others: &[u64],
    retry: Duration,
) -> Option<crate::replication::join::Joined> {
    let cluster_size = others.len() + 1;
    let needed = (cluster_size / 2 + 1).min(others.len());
    let mut replies: BTreeMap<u64, (Ballot, u64)> = BTreeMap::new();
    let mut ticker = tokio::time::interval(retry);
    tracing::info!(
        needed,
        "empty data directory: learning the cluster's highest promised ballot before voting"
    );
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                for peer in others.iter().filter(|p| !replies.contains_key(p)) {
                    let _ = transport.send(*peer, PeerMsg::PromiseQuery);
                }
            }
            event = events.recv() => match event? {
                PeerEvent::Message { from, msg: PeerMsg::PromiseReply(ballot, accepted) } => {
                    replies.insert(from, (ballot, accepted));
                    if replies.len() >= needed {
                        let joined = crate::replication::join::Joined::from_replies(replies.values());
                        tracing::info!(ballot = ?joined.promise, catch_up = joined.catch_up, from = ?replies.keys().collect::<Vec<_>>(), "adopting the cluster's promise");
                        return Some(joined);
                    }
                }
                PeerEvent::Message { from, msg: PeerMsg::PromiseQuery } => {
                    let _ = transport.send(from, PeerMsg::PromiseReply(Ballot::default(), 0));
                }
                // Everything else is for the running node; OmniPaxos resends it.
                _ => {}
            }
        }
    }
}

/// The task that owns the node core.
#[allow(clippy::too_many_arguments)]
async fn run_core(
    mut node: Node,
    clock: Clock,
    mut inbox: mpsc::Receiver<CoreMsg>,
    own_inbox: mpsc::WeakSender<CoreMsg>,
    storage: std::sync::mpsc::Sender<StorageCommand>,
    peers: Option<(Transport<PeerMsg>, mpsc::Receiver<PeerEvent<PeerMsg>>)>,
    tick: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    info: ShellInfo,
    queue_limits: QueueLimits,
) {
    let (transport, mut peer_events) = match peers {
        Some((t, events)) => (Some(t), Some(events)),
        None => (None, None),
    };
    let mut core = CoreShell {
        conns: HashMap::new(),
        queue_limits,
        round: 0,
        inbox: own_inbox,
        storage,
        transport,
        info,
        pass_inputs: 0,
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping: Option<Instant> = None;
    loop {
        core.round += 1;
        if let Some(since) = stopping {
            if !node.has_unapplied() || since.elapsed() > SHUTDOWN_DRAIN_TIMEOUT {
                if node.has_unapplied() {
                    tracing::error!("shutdown: outstanding writes did not become durable in time");
                }
                return;
            }
        }
        tokio::select! {
            // The tick goes first: under sustained load the inbox is never empty, and a
            // node whose ticks starve sends no heartbeats, so its followers elect
            // another leader.
            biased;
            _ = ticker.tick() => core.input(&mut node, clock, Input::Tick),
            msg = inbox.recv() => match msg {
                Some(msg) => core.handle(&mut node, clock, msg),
                None => return,
            },
            // Peer messages come straight from the transport's readers, not through
            // the inbox: one task hand-off fewer on every replication step.
            Some(event) = recv_peer(&mut peer_events) => core.peer_event(&mut node, clock, event),
            _ = &mut stop, if stopping.is_none() => {
                stopping = Some(Instant::now());
                core.input(&mut node, clock, Input::Shutdown);
            }
        }
        for _ in 0..CORE_BATCH {
            match inbox.try_recv() {
                Ok(msg) => core.handle(&mut node, clock, msg),
                Err(_) => break,
            }
        }
        if let Some(events) = &mut peer_events {
            for _ in 0..CORE_BATCH {
                match events.try_recv() {
                    Ok(event) => core.peer_event(&mut node, clock, event),
                    Err(_) => break,
                }
            }
        }
        core.end_pass(&mut node, clock);
    }
}

/// The next peer event, or never for a single node.
async fn recv_peer(
    events: &mut Option<mpsc::Receiver<PeerEvent<PeerMsg>>>,
) -> Option<PeerEvent<PeerMsg>> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// The core task's own state: where outputs go.
struct CoreShell {
    conns: HashMap<ConnId, OutQueue>,
    queue_limits: QueueLimits,
    /// Counts the core task's rounds (one wake-up: the inputs it takes in, then the end
    /// of the node's pass); outgoing queues are measured once per round.
    round: u64,
    /// The core's own inbox, for work done elsewhere on its behalf (weak: the core
    /// task still ends when every other sender is gone).
    inbox: mpsc::WeakSender<CoreMsg>,
    storage: std::sync::mpsc::Sender<StorageCommand>,
    transport: Option<Transport<PeerMsg>>,
    info: ShellInfo,
    /// Inputs taken in since the node's pass last ended.
    pass_inputs: usize,
}

/// Logs and counts an input (or a pass's end) that kept the core busy for long.
fn note_stall(kind: &'static str, started: Instant) {
    let took = started.elapsed();
    if took >= crate::metrics::CORE_STALL {
        metrics::counter!(crate::metrics::CORE_STALLS).increment(1);
        tracing::warn!(
            input = kind,
            ms = took.as_millis() as u64,
            "the node core was busy with one input; it answered nobody meanwhile"
        );
    }
}

impl CoreShell {
    fn handle(&mut self, node: &mut Node, clock: Clock, msg: CoreMsg) {
        match msg {
            CoreMsg::Register { conn, out } => {
                self.conns.insert(conn, out);
            }
            CoreMsg::Input(input) => {
                if let Input::Disconnected { conn } = &input {
                    self.conns.remove(conn);
                }
                self.input(node, clock, input)
            }
            CoreMsg::Admin(request) => self.admin(node, request),
        }
    }

    fn peer_event(&mut self, node: &mut Node, clock: Clock, event: PeerEvent<PeerMsg>) {
        let input = match event {
            PeerEvent::Message { from, msg } => Input::Peer { from, msg },
            PeerEvent::LinkUp { peer, version } => Input::LinkUp { peer, version },
            PeerEvent::LinkDown { peer, .. } => Input::LinkDown { peer },
        };
        self.input(node, clock, input);
    }

    /// Takes one input into the node's pass (and the disconnections its outputs cause);
    /// ends the pass once it holds [`PASS_INPUTS`] inputs.
    fn input(&mut self, node: &mut Node, clock: Clock, input: Input) {
        let mut pending = vec![input];
        while let Some(input) = pending.pop() {
            let kind = input.kind();
            let started = Instant::now();
            let outputs = node.take_in(clock.now(), input);
            note_stall(kind, started);
            self.pass_inputs += 1;
            self.dispatch_all(outputs, &mut pending);
        }
        if self.pass_inputs >= PASS_INPUTS {
            self.end_pass(node, clock);
        }
    }

    /// Ends the node's pass: its log's messages and sync go out, decided entries are
    /// applied and answered.
    fn end_pass(&mut self, node: &mut Node, clock: Clock) {
        loop {
            self.pass_inputs = 0;
            let started = Instant::now();
            let outputs = node.end_pass(clock.now());
            note_stall("end-of-pass", started);
            let mut pending = Vec::new();
            self.dispatch_all(outputs, &mut pending);
            if pending.is_empty() {
                return;
            }
            for input in pending {
                self.input(node, clock, input);
            }
        }
    }

    /// Carries out outputs; a connection that must be dropped goes to `gone`.
    fn dispatch_all(&mut self, outputs: Vec<Output>, gone: &mut Vec<Input>) {
        for output in outputs {
            if let Some(conn) = self.dispatch(output) {
                gone.push(Input::Disconnected { conn });
            }
        }
    }

    /// Carries out one output; returns a connection that must be dropped because it
    /// does not keep up.
    fn dispatch(&mut self, output: Output) -> Option<ConnId> {
        let (conn, message) = match output {
            Output::HelloReply { conn, reply } => (conn, ToConn::Hello(reply)),
            Output::Send { conn, mut msg } => {
                self.complete_status(&mut msg);
                let bytes = corral_protocol::frame::frame_len(&msg);
                (conn, ToConn::Msg { msg, bytes })
            }
            Output::Close { conn } => {
                // The writer sends what is queued before it (a Goodbye), then closes.
                if let Some(out) = self.conns.remove(&conn) {
                    let _ = out.tx.send(ToConn::Close);
                }
                return None;
            }
            Output::Persist {
                batch,
                records,
                first_lsn,
                starts_with_checkpoint,
            } => {
                let command = StorageCommand::Persist {
                    batch,
                    records,
                    first_lsn,
                    starts_with_checkpoint,
                };
                if self.storage.send(command).is_err() {
                    tracing::error!("storage thread is gone");
                }
                return None;
            }
            Output::PeerSend { to, msg } => {
                match &self.transport {
                    // A full queue or a down link drops the message: OmniPaxos resends
                    // after reconnecting, and forwards are retried.
                    Some(t) => {
                        let _ = t.send(to, msg);
                    }
                    None => tracing::warn!(to, "a single node has no peers; message dropped"),
                }
                return None;
            }
            Output::Sync { batch } => {
                if self.storage.send(StorageCommand::Sync { batch }).is_err() {
                    tracing::error!("storage thread is gone");
                }
                return None;
            }
            Output::Snapshot { index, image } => {
                let _ = self.storage.send(StorageCommand::Snapshot { index, image });
                return None;
            }
            Output::Decode(job) => {
                let inbox = self.inbox.clone();
                tokio::task::spawn_blocking(move || {
                    let index = job.index;
                    let started = Instant::now();
                    let machine = job.decode().map(Box::new);
                    metrics::histogram!(crate::metrics::SNAPSHOT_DECODE_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    tracing::info!(
                        index,
                        ms = started.elapsed().as_millis() as u64,
                        ok = machine.is_ok(),
                        "decoded a snapshot from the leader"
                    );
                    if let Some(inbox) = inbox.upgrade() {
                        let _ =
                            inbox.blocking_send(CoreMsg::Input(Input::Decoded { index, machine }));
                    }
                });
                return None;
            }
        };
        let out = self.conns.get_mut(&conn)?;
        if out.measured_round != self.round {
            out.measured_round = self.round;
            let (messages, bytes) = out.level.get();
            let limits = self.queue_limits;
            if messages > limits.max_messages || bytes > limits.max_bytes {
                tracing::warn!(
                    conn,
                    messages,
                    bytes,
                    max_messages = limits.max_messages,
                    max_bytes = limits.max_bytes,
                    "client does not read its messages; disconnecting it"
                );
                let reason = ErrorInfo::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "the client did not read its messages: {messages} messages \
                         ({bytes} bytes) were waiting for it, over \
                         max_queued_messages_per_connection = {} or \
                         max_queued_bytes_per_connection = {}",
                        limits.max_messages, limits.max_bytes
                    ),
                );
                if let Some(out) = self.conns.remove(&conn) {
                    let _ = out.drop_now.send(reason);
                }
                return Some(conn);
            }
        }
        if let ToConn::Msg { bytes, .. } = &message {
            out.level.add(*bytes);
        }
        if out.tx.send(message).is_err() {
            // The connection task is gone; it reports its disconnection itself.
            self.conns.remove(&conn);
        }
        None
    }
}

#[derive(Debug, Clone, Copy)]
struct ConnSettings {
    max_frame_bytes: usize,
    handshake_timeout: Duration,
    /// Longest a write to the client may wait for room in its socket.
    write_stall_timeout: Duration,
}

/// Why a connection's serving loop ended.
enum Ended {
    /// The client closed its side, or the core closed the connection.
    Closed,
    /// The client sent a frame that cannot be decoded.
    BadFrame(FrameError),
    /// The core disconnected the client for not reading; this is its goodbye.
    NotReading(ErrorInfo),
    /// Writing to the client failed or stalled.
    WriteFailed(FrameError),
}

/// The error a client gets for a frame it sent that could not be decoded.
fn frame_error_info(e: &FrameError) -> ErrorInfo {
    let code = match e {
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::Malformed,
    };
    ErrorInfo::new(code, e.to_string())
}

async fn serve_connection(
    conn: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    core: mpsc::Sender<CoreMsg>,
    settings: ConnSettings,
) {
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(
        stream,
        Codec::<Hello, HelloReply>::new(settings.max_frame_bytes),
    );
    let hello = match tokio::time::timeout(settings.handshake_timeout, framed.next()).await {
        Ok(Some(Ok(hello))) => hello,
        Ok(Some(Err(e))) => {
            metrics::counter!(crate::metrics::CONNECTIONS_REJECTED, "reason" => "bad_handshake")
                .increment(1);
            tracing::info!(conn, %peer, error = %e, "bad handshake");
            let reply = HelloReply::Refused(frame_error_info(&e));
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, framed.send(reply)).await;
            return;
        }
        Ok(None) => return,
        Err(_) => {
            metrics::counter!(crate::metrics::CONNECTIONS_REJECTED, "reason" => "handshake_timeout").increment(1);
            let msg = format!("no handshake within {:?}", settings.handshake_timeout);
            let reply = HelloReply::Refused(ErrorInfo::new(ErrorCode::OperationTimeout, msg));
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, framed.send(reply)).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<ToConn>();
    let level = Arc::new(QueueLevel::default());
    let (drop_now, dropped) = oneshot::channel::<ErrorInfo>();
    // Never resolves unless the core disconnects the client for not reading (the core
    // dropping the sender otherwise is no reason to stop).
    let dropped = async move {
        match dropped.await {
            Ok(reason) => reason,
            Err(_) => std::future::pending().await,
        }
    };
    let mut dropped = std::pin::pin!(dropped);
    let secret = rand::random::<u64>();
    let out = OutQueue {
        tx,
        level: level.clone(),
        drop_now,
        measured_round: 0,
    };
    if core.send(CoreMsg::Register { conn, out }).await.is_err()
        || core
            .send(CoreMsg::Input(Input::Hello {
                conn,
                hello,
                secret,
            }))
            .await
            .is_err()
    {
        return;
    }
    // The node answers at once, or once the log opened the session (or a leader
    // confirmed a resumed one). A member with no leader cannot: the client gives up
    // meanwhile, and the task must not keep its slot for as long as the cut lasts.
    let answer = tokio::time::timeout(settings.handshake_timeout, async {
        loop {
            let message = tokio::select! {
                message = rx.recv() => message,
                _ = &mut dropped => return None,
            };
            match message {
                Some(ToConn::Hello(reply)) => return Some(reply),
                Some(ToConn::Msg { bytes, .. }) => level.take(bytes),
                Some(ToConn::Close) | None => return None,
            }
        }
    })
    .await;
    let reply = match answer {
        Ok(Some(reply)) => reply,
        Ok(None) => return disconnected(&core, conn).await,
        Err(_) => {
            metrics::counter!(crate::metrics::CONNECTIONS_REJECTED, "reason" => "handshake_unanswered").increment(1);
            let msg = format!(
                "the node could not answer the handshake within {:?} (no leader?); try \
                 another server",
                settings.handshake_timeout
            );
            let reply = HelloReply::Refused(ErrorInfo::new(ErrorCode::Unavailable, msg));
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, framed.send(reply)).await;
            return disconnected(&core, conn).await;
        }
    };
    let accepted = matches!(reply, HelloReply::Accepted(_));
    if let HelloReply::Refused(info) = &reply {
        let reason = crate::metrics::outcome(&Err(info.clone()));
        metrics::counter!(crate::metrics::CONNECTIONS_REJECTED, "reason" => reason).increment(1);
    }
    let replied = tokio::time::timeout(settings.write_stall_timeout, framed.send(reply)).await;
    if !matches!(replied, Ok(Ok(()))) || !accepted {
        return disconnected(&core, conn).await;
    }
    // Separate halves, not `framed.split()`: its sink holds each message until the next
    // one or a flush, so an encoding error (a response over max_frame_bytes) would
    // surface there, after `feed` returned, and close the connection instead of
    // becoming an error response.
    let parts = framed.into_parts();
    let codec = parts.codec.retype::<ClientMessage, ServerMessage>();
    let (read_half, write_half) = parts.io.into_split();
    let decoder = RequestDecoder::new(settings.max_frame_bytes);
    let mut source = FramedRead::new(read_half, decoder);
    // Requests the client pipelined behind its hello.
    source.read_buffer_mut().extend_from_slice(&parts.read_buf);
    let mut sink = FramedWrite::new(
        crate::stall::StallLimited::new(write_half, settings.write_stall_timeout, None),
        codec,
    );

    let timer = std::sync::Mutex::new(RequestTimer::default());
    let reader = async {
        // Requests for unknown operations are answered one by one; only the first is
        // logged, or one connection could write log lines at any rate it liked.
        let mut unknown_ops = 0u64;
        loop {
            let input = match source.next().await {
                Some(Ok(IncomingRequest::Message(ClientMessage::Request(request)))) => {
                    if let Ok(mut t) = timer.lock() {
                        t.arrived(request.xid, &request.op);
                    }
                    Input::Request { conn, request }
                }
                Some(Ok(IncomingRequest::UnknownOp { xid, op_index })) => {
                    unknown_ops += 1;
                    if unknown_ops == 1 {
                        tracing::info!(
                            conn,
                            %peer,
                            xid,
                            op_index,
                            "request for an unknown operation (the client is newer than this \
                             server; later ones on this connection are not logged)"
                        );
                    }
                    Input::UnknownOp {
                        conn,
                        xid,
                        op_index,
                    }
                }
                Some(Err(e)) => return Ended::BadFrame(e),
                None => return Ended::Closed,
            };
            if core.send(CoreMsg::Input(input)).await.is_err() {
                return Ended::Closed;
            }
        }
    };
    // The core holds the only sender: once it closed the connection (or was gone), the
    // writer sees the end of the queue.
    let writer = async {
        while let Some(message) = rx.recv().await {
            let msg = match message {
                ToConn::Msg { msg, bytes } => {
                    level.take(bytes);
                    msg
                }
                ToConn::Hello(_) => continue,
                ToConn::Close => break,
            };
            if let Ok(mut t) = timer.lock() {
                t.sending(&msg);
            }
            if let Err(e) = feed(&mut sink, msg).await {
                return Ended::WriteFailed(e);
            }
            if rx.is_empty() {
                if let Err(e) = sink.flush().await {
                    return Ended::WriteFailed(e);
                }
            }
        }
        Ended::Closed
    };
    let ended = tokio::select! {
        ended = reader => ended,
        ended = writer => ended,
        reason = &mut dropped => Ended::NotReading(reason),
    };
    match ended {
        Ended::Closed => {
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, sink.close()).await;
        }
        Ended::BadFrame(e) => {
            tracing::info!(conn, %peer, error = %e, "closing connection after a bad frame");
            let goodbye = ServerMessage::Goodbye(frame_error_info(&e));
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, sink.send(goodbye)).await;
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, sink.close()).await;
        }
        Ended::NotReading(reason) => {
            // The socket is full: the goodbye goes out only if it has room at once.
            let goodbye = ServerMessage::Goodbye(reason);
            let _ = tokio::time::timeout(NOT_READING_GOODBYE_TIMEOUT, sink.send(goodbye)).await;
        }
        Ended::WriteFailed(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            tracing::warn!(conn, %peer, error = %e, "client does not read; closing its connection");
        }
        Ended::WriteFailed(e) => {
            tracing::info!(conn, %peer, error = %e, "closing connection: writing to the client failed");
        }
    }
    // Whatever was queued for the connection is freed with it.
    drop(rx);
    disconnected(&core, conn).await;
}

/// Queues a message on the socket; a response too large for a frame becomes an error
/// response instead.
async fn feed<S>(sink: &mut S, msg: ServerMessage) -> Result<(), FrameError>
where
    S: futures::Sink<ServerMessage, Error = FrameError> + Unpin,
{
    let fallback = match &msg {
        ServerMessage::Response(r) => Some((r.xid, r.zxid)),
        _ => None,
    };
    match sink.feed(msg).await {
        Err(FrameError::TooLarge { len, max }) => match fallback {
            Some((xid, zxid)) => {
                let error = ErrorInfo::new(
                    ErrorCode::LimitExceeded,
                    format!("the response of {len} bytes exceeds max_frame_bytes = {max}"),
                );
                sink.feed(ServerMessage::Response(Response {
                    xid,
                    zxid,
                    result: Err(error),
                }))
                .await
            }
            None => Ok(()),
        },
        other => other,
    }
}

async fn disconnected(core: &mpsc::Sender<CoreMsg>, conn: ConnId) {
    let _ = core
        .send(CoreMsg::Input(Input::Disconnected { conn }))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core that stopped on its own (a panic drops its inbox) ends the accept loop, so
    /// that the process shuts down and exits with an error instead of accepting
    /// connections nobody serves.
    #[tokio::test]
    async fn the_accept_loop_ends_when_the_core_is_gone() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (core_tx, core_rx) = mpsc::channel::<CoreMsg>(1);
        drop(core_rx);
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            accept_loop(
                &Config::default(),
                &listener,
                &core_tx,
                std::future::pending(),
            ),
        )
        .await;
        assert!(ended.is_ok(), "the accept loop kept running without a core");
    }

    /// A handshake the node core does not answer (a cluster member with no leader to
    /// open the session or to confirm a resumed one) is refused with `Unavailable` after
    /// `handshake_timeout_ms`, and the connection ends and is reported gone. The task
    /// used to wait for the answer for as long as the cut lasted, holding its
    /// `max_connections` slot after the client had given up, one more with every retry.
    #[tokio::test]
    async fn a_handshake_the_core_does_not_answer_is_refused_in_time() {
        const WAIT: Duration = Duration::from_secs(10);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (core_tx, mut core_rx) = mpsc::channel::<CoreMsg>(16);
        let settings = ConnSettings {
            max_frame_bytes: corral_protocol::DEFAULT_MAX_FRAME_BYTES,
            handshake_timeout: Duration::from_millis(200),
            write_stall_timeout: WAIT,
        };
        let client = tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let max = corral_protocol::DEFAULT_MAX_FRAME_BYTES;
            let mut framed = Framed::new(stream, Codec::<HelloReply, Hello>::new(max));
            let hello = Hello::new(corral_protocol::SessionRequest::New { ttl_ms: 10_000 }, 0);
            framed.send(hello).await.expect("send the hello");
            tokio::time::timeout(WAIT, framed.next()).await
        });
        let (stream, peer) = listener.accept().await.expect("accept");
        let served = tokio::spawn(serve_connection(7, stream, peer, core_tx, settings));
        // The core: takes the registration and the hello, and answers nothing.
        let mut queues = Vec::new();
        let gone = tokio::time::timeout(WAIT, async {
            while let Some(msg) = core_rx.recv().await {
                match msg {
                    CoreMsg::Register { out, .. } => queues.push(out),
                    CoreMsg::Input(Input::Disconnected { conn }) => return Some(conn),
                    _ => {}
                }
            }
            None
        })
        .await;
        assert_eq!(queues.len(), 1, "the connection registered");
        assert_eq!(
            gone,
            Ok(Some(7)),
            "the unanswered connection was not reported gone"
        );
        match client.await.expect("client task") {
            Ok(Some(Ok(HelloReply::Refused(e)))) => {
                assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let ended = tokio::time::timeout(WAIT, served).await;
        assert!(ended.is_ok(), "the connection's task did not end");
    }
}
