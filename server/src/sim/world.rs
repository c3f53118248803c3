//! The simulated world: nodes with their disks and clocks, the network between them, the
//! client connections, the event queue, the faults, and the checks after every step.

use super::check::{Checks, Violation, ViolationKind};
use super::client::{conflicts, CAction, ClientCfg, HistOp, Mode, Role, SimClient, ToClient};
use super::plan::{FaultKind, PlannedFault, Shape, SimConfig, Target};
use super::rng::SimRng;
use super::watch::ChangeLog;
use super::{fmt_time, Stats};
use crate::disk::{Disk, SimDisk, SimDiskFaults};
use crate::machine::{Applied, Entry, EntryBody, MachineLimits, StateMachine};
use crate::node::{ConnId, Input, Log, Node, NodeConfig, Now, Output, Probe};
use crate::replication::log::{PaxosSettings, PeerMsg};
use crate::replication::storage::{PaxosStorageConfig, SyncHandle};
use crate::replication::{open_cluster_on, ClusterSettings, RecoveredCluster};
use crate::wal::WalOptions;
use corral_protocol::{ErrorInfo, Hello, HelloReply, LockEvent, LockKind, Op, OpResult, Request};
use omnipaxos::ballot_leader_election::Ballot;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::path::Path;

/// The queue nodes an applied entry granted after they waited.
fn granted_after_waiting(applied: &Applied) -> Vec<LockEvent> {
    applied
        .lock_events
        .iter()
        .filter(|c| c.granted)
        .map(|c| c.event.clone())
        .collect()
}

/// Whether a start failed on an IO error (worth a restart) rather than on damage.
fn io_failure(e: &crate::replication::ClusterError) -> bool {
    use crate::replication::ClusterError;
    use crate::wal::StorageError;
    matches!(
        e,
        ClusterError::Storage(StorageError::Io { .. } | StorageError::Poisoned)
    )
}

/// Wall clock of the simulation's start (2024-01-01), ms since the epoch.
const WALL_EPOCH_MS: i64 = 1_704_067_200_000;
/// Lines of trace kept for a report.
const TRACE_LINES: usize = 4_000;
/// How long decoding a snapshot for an install takes, in microseconds (one in ten
/// takes a hundred times longer: a large state).
const DECODE_US: (u64, u64) = (200, 10_000);
/// Longest time a message pushed by a server takes to reach a connected client that is
/// not paused: connection delays are at most 1.5 ms each and keep their order, so this
/// leaves room for a long queue ahead of it.
const GRANT_TOLD_WITHIN_US: u64 = 50_000;

#[derive(Debug)]
enum ToServer {
    Hello(Hello),
    Request(Request),
    Disconnected,
}

#[derive(Debug)]
enum Ev {
    Tick {
        node: usize,
        inc: u64,
    },
    Restart {
        node: usize,
    },
    JoinQuery {
        node: usize,
        inc: u64,
    },
    Peer {
        from: u64,
        to: usize,
        inc: u64,
        epoch: u64,
        bytes: Vec<u8>,
    },
    Reconnect {
        from: u64,
        to: u64,
        epoch: u64,
    },
    /// The sender's transport reports its link to `peer` established (`up`) or broken.
    Link {
        node: usize,
        inc: u64,
        peer: u64,
        up: bool,
    },
    DiskDone {
        node: usize,
        inc: u64,
        batch: u64,
    },
    /// A snapshot from the leader finished decoding for an install.
    Decoded {
        node: usize,
        inc: u64,
        index: u64,
        machine: Result<Box<StateMachine>, String>,
    },
    ToServer {
        node: usize,
        inc: u64,
        conn: ConnId,
        msg: ToServer,
    },
    ToClient {
        client: usize,
        conn: ConnId,
        msg: ToClient,
    },
    ClientWake {
        client: usize,
    },
    /// The node's core ends its pass of inputs (`Node::end_pass`).
    EndPass {
        node: usize,
        inc: u64,
    },
    FaultStart {
        index: usize,
    },
    FaultEnd {
        index: usize,
    },
    Heal,
    ProbeStart,
    /// A step of a rolling upgrade: the node now runs a server with the newest peer
    /// protocol, and its links are re-established (as its restart would).
    Upgrade {
        node: usize,
    },
    /// An operator restarts a node whose log failed.
    OperatorRestart {
        node: usize,
        inc: u64,
    },
    LivenessCheck,
    ConvergeCheck,
}

struct Sched {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sched {
    fn cmp(&self, other: &Self) -> Ordering {
        // A max-heap: the earliest event is the greatest.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Joining {
    recovered: RecoveredCluster,
    replies: BTreeMap<u64, (Ballot, u64)>,
}

struct Up {
    node: Node,
    backend: Backend,
    conns: BTreeSet<ConnId>,
    /// Inputs taken into the core's open pass (0: none open).
    pass_inputs: usize,
}

/// What a node's storage thread works on.
enum Backend {
    /// Cluster member: the Paxos storage, synced through its handle.
    Paxos(SyncHandle),
    /// Single node: the write-ahead log of entries and the snapshot files.
    Local(Box<LocalStore>),
}

/// A batch handed to the single node's storage thread: (batch, records, first lsn,
/// starts with a checkpoint).
type PendingBatch = (u64, Vec<Vec<u8>>, Option<u64>, bool);

/// The single node's storage thread, as in `storage::run_storage_thread`.
struct LocalStore {
    wal: crate::wal::Wal,
    /// The batch handed over and not yet written.
    pending: Option<PendingBatch>,
    /// Snapshot indexes on disk, oldest first.
    kept: VecDeque<u64>,
    /// The log failed earlier: every later batch fails (the node serves reads only).
    failed: bool,
}

enum NodeState {
    Down,
    Joining(Box<Joining>),
    Up(Box<Up>),
}

struct SimNode {
    id: u64,
    disk: SimDisk,
    rate_ppm: i64,
    wall_skew_ms: i64,
    /// Local µs at process start (the monotonic clock's origin).
    start_local_us: u64,
    inc: u64,
    state: NodeState,
    paused: bool,
    held: Vec<Ev>,
    /// The applied zxid last checked.
    checked_zxid: u64,
    /// When this node's applied zxid first reached each value it took (cleared when it
    /// goes back, as after a restart).
    applied_at: BTreeMap<u64, u64>,
    changes: u64,
    leader: Option<u64>,
    restart_pending: bool,
    /// Runs a server that speaks the newest peer protocol: false until its step of a
    /// simulated rolling upgrade (`SimConfig::upgrade_at_ms`), true otherwise.
    upgraded: bool,
}

/// One direction of a peer connection, as the transport promises it: messages sent
/// while it is up arrive in order, a prefix of them; any loss ends it (`epoch` changes),
/// and the sender hears `LinkUp` when the next one is established.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    epoch: u64,
    up: bool,
    /// Delivery time of the last message (FIFO).
    last_at: u64,
}

struct ConnInfo {
    client: usize,
    node: usize,
    inc: u64,
    client_open: bool,
    server_open: bool,
    to_server_at: u64,
    to_client_at: u64,
    session: Option<u64>,
    /// When the server attached the session to this connection.
    attached_at: Option<u64>,
}

/// The whole simulation.
pub(super) struct World {
    cfg: SimConfig,
    plan: Vec<PlannedFault>,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Sched>,
    rng: SimRng,
    nodes: Vec<SimNode>,
    pub(super) clients: Vec<SimClient>,
    client_cfg: ClientCfg,
    conns: BTreeMap<ConnId, ConnInfo>,
    next_conn: ConnId,
    partitions: BTreeMap<usize, BTreeSet<(u64, u64)>>,
    links: BTreeMap<(u64, u64), Link>,
    pub checks: Checks,
    /// The tree changes of the decided log, for the watch checks.
    changes: ChangeLog,
    pub hist: Vec<HistOp>,
    pub trace: VecDeque<String>,
    pub trace_hash: u64,
    pub violation: Option<Violation>,
    pub stats: Stats,
    workload_start_us: Option<u64>,
    heal_us: Option<u64>,
    /// Snapshot decodes (start, end), for the liveness bounds (`decode_slack_us`).
    decodes: Vec<(u64, u64)>,
    probe: Option<usize>,
    probe_acquired: BTreeMap<String, u64>,
    done: bool,
    trace_all: bool,
    paused_client_events: BTreeMap<usize, Vec<Ev>>,
    /// When each paused client last resumed.
    resumed_at: BTreeMap<usize, u64>,
    paused_nodes: BTreeMap<usize, (usize, u64)>,
    lock_checked: bool,
}

impl World {
    pub(super) fn new(cfg: SimConfig) -> World {
        let plan = cfg.plan();
        let mut rng = SimRng::stream(cfg.seed, 3);
        let mut nodes = Vec::new();
        for i in 0..cfg.nodes {
            let rate = rng.range_incl(0, 2 * cfg.clock_ppm as u64) as i64 - cfg.clock_ppm;
            let disk = SimDisk::new(rng.next_u64());
            disk.set_faults(SimDiskFaults {
                lying_fsync: cfg.switches.skip_fsync,
                fail_sync_per_mille: cfg.disk.fail_sync_per_mille,
                capacity_bytes: None,
            });
            nodes.push(SimNode {
                id: i as u64 + 1,
                disk,
                rate_ppm: rate,
                wall_skew_ms: rng.range_incl(0, 400) as i64 - 200,
                start_local_us: 0,
                inc: 0,
                state: NodeState::Down,
                paused: false,
                held: Vec::new(),
                checked_zxid: 0,
                applied_at: BTreeMap::new(),
                changes: 0,
                leader: None,
                restart_pending: false,
                upgraded: cfg.upgrade_at_ms.is_none(),
            });
        }
        let request_timeout_us = (4 * cfg.election_ms).max(cfg.session_ttl_ms) * 1000;
        let client_cfg = ClientCfg {
            nodes: cfg.nodes as u64,
            ttl_ms: cfg.session_ttl_ms,
            keys: cfg.keys,
            locks: cfg.locks,
            lock_delay_ms: cfg.lock_delay_ms,
            request_timeout_us,
            rate_ppm: 0,
            renew_on_any_answer: cfg.renew_on_any_answer,
            seen_on_events: cfg.seen_on_events,
            give_up_per_mille: cfg.give_up_per_mille,
            ack_every: cfg.ack_every,
            multi_lock_per_mille: cfg.multi_lock_per_mille,
            lock_families: cfg.lock_families.clone(),
            watch_per_mille: cfg.watch_per_mille,
            revoke_per_mille: cfg.revoke_per_mille,
            cas_per_mille: cfg.cas_per_mille,
            list_locks_per_mille: cfg.list_locks_per_mille,
            container_weight: cfg.container_weight,
            clients: cfg.clients,
        };
        let mut clients = Vec::new();
        for i in 0..cfg.clients {
            let rate = rng.range_incl(0, 2 * cfg.clock_ppm as u64) as i64 - cfg.clock_ppm;
            let role = if i == 0 { Role::Setup } else { Role::Worker };
            let c = ClientCfg {
                rate_ppm: rate,
                ..client_cfg.clone()
            };
            clients.push(SimClient::new(i, role, c, cfg.seed));
        }
        let trace_all = std::env::var("CORRAL_SIM_TRACE").is_ok_and(|v| v == "full");
        let mut w = World {
            cfg,
            plan,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng,
            nodes,
            clients,
            client_cfg,
            conns: BTreeMap::new(),
            next_conn: 0,
            partitions: BTreeMap::new(),
            links: BTreeMap::new(),
            checks: Checks::default(),
            changes: ChangeLog::default(),
            hist: Vec::new(),
            trace: VecDeque::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            violation: None,
            stats: Stats::default(),
            workload_start_us: None,
            heal_us: None,
            decodes: Vec::new(),
            probe: None,
            probe_acquired: BTreeMap::new(),
            done: false,
            trace_all,
            paused_client_events: BTreeMap::new(),
            resumed_at: BTreeMap::new(),
            paused_nodes: BTreeMap::new(),
            lock_checked: false,
        };
        for n in 0..w.nodes.len() {
            w.start_node(n);
        }
        if let Some(at_ms) = w.cfg.upgrade_at_ms {
            // One node after another, an election timeout or two apart.
            let step_us = 2 * w.cfg.election_ms * 1000;
            for n in 0..w.nodes.len() {
                w.schedule(at_ms * 1000 + n as u64 * step_us, Ev::Upgrade { node: n });
            }
        }
        let setup = w.now + 1_000;
        w.schedule(setup, Ev::ClientWake { client: 0 });
        w
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Sched {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn note(&mut self, line: String) {
        let line = format!("{} {line}", fmt_time(self.now));
        self.mix_str(&line);
        if self.trace_all {
            eprintln!("{line}");
        }
        if self.trace.len() >= TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn mix_str(&mut self, s: &str) {
        for b in s.bytes() {
            self.trace_hash ^= u64::from(b);
            self.trace_hash = self.trace_hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn violate(&mut self, v: Violation) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION {v}"));
            self.violation = Some(v);
        }
    }

    /// Runs until a violation, the end of the run, or the time limit.
    pub(super) fn run(&mut self) {
        let limit_us = (self.cfg.fault_ms + 120_000) * 1000;
        while let Some(s) = self.queue.pop() {
            if self.violation.is_some() || self.done {
                break;
            }
            self.now = s.at;
            if self.now > limit_us {
                self.violate(Violation {
                    kind: ViolationKind::NotConverged,
                    at_us: self.now,
                    detail: "the run did not finish within its time limit".to_string(),
                });
                break;
            }
            self.stats.events += 1;
            self.step(s.ev);
        }
        self.stats.sim_ms = self.now / 1000;
        for n in &self.nodes {
            let d = n.disk.stats();
            self.stats.torn_tails += d.torn_tails;
            self.stats.syncs += d.syncs;
        }
    }

    // -----------------------------------------------------------------------------------
    // Clocks
    // -----------------------------------------------------------------------------------

    fn local_us(&self, n: usize) -> u64 {
        let now = i128::from(self.now);
        (now + now * i128::from(self.nodes[n].rate_ppm) / 1_000_000) as u64
    }

    fn node_now(&self, n: usize) -> Now {
        let local = self.local_us(n);
        Now {
            mono_ms: (local - self.nodes[n].start_local_us) / 1000,
            wall_ms: WALL_EPOCH_MS + self.nodes[n].wall_skew_ms + (local / 1000) as i64,
        }
    }

    /// Real µs after which node `n`'s clock has advanced by `local_us`.
    fn node_interval(&self, n: usize, local_us: u64) -> u64 {
        (i128::from(local_us) * 1_000_000 / (1_000_000 + i128::from(self.nodes[n].rate_ppm))) as u64
    }

    // -----------------------------------------------------------------------------------
    // Node lifecycle
    // -----------------------------------------------------------------------------------

    /// The state machine's limits: the defaults, with the run's deduplication window.
    fn limits(&self) -> MachineLimits {
        MachineLimits {
            dedup_window: self.cfg.dedup_window,
            ..MachineLimits::default()
        }
    }

    fn settings(&self, id: u64) -> ClusterSettings {
        let limits = self.limits();
        let election_ticks = (self.cfg.election_ms / self.cfg.tick_ms).max(2);
        ClusterSettings {
            node_id: id,
            members: (1..=self.cfg.nodes as u64).collect(),
            election_ticks,
            resend_ticks: election_ticks,
            log: PaxosSettings {
                forward_retry_ticks: election_ticks,
                election_ticks,
                max_forwarded_entries: 64 * 1024,
                // Small, so that a backlog goes as several messages.
                max_forward_batch_bytes: 4096,
                limits,
                encode_images_in_background: false,
            },
        }
    }

    fn node_config(&self, id: u64) -> NodeConfig {
        NodeConfig {
            node_id: id,
            machine: self.limits(),
            max_sessions: 100_000,
            max_pending_requests_per_connection: 10_000,
            max_watches_per_session: 10_000,
            max_state_bytes: u64::MAX,
            min_session_ttl_ms: self.cfg.min_session_ttl_ms,
            max_session_ttl_ms: 120_000,
            snapshot_every_entries: self.cfg.snapshot_every_entries,
            snapshot_every_bytes: self.cfg.snapshot_every_bytes,
            max_frame_bytes: corral_protocol::DEFAULT_MAX_FRAME_BYTES,
            stall_threshold_ms: (self.cfg.min_session_ttl_ms / 2).max(4 * self.cfg.tick_ms),
        }
    }

    fn start_node(&mut self, n: usize) {
        let id = self.nodes[n].id;
        self.nodes[n].inc += 1;
        self.nodes[n].restart_pending = false;
        self.nodes[n].start_local_us = self.local_us(n);
        self.nodes[n].paused = false;
        self.nodes[n].held.clear();
        self.nodes[n].leader = None;
        // The transport starts: new connections both ways.
        self.break_links_of(n);
        let storage = PaxosStorageConfig {
            checkpoint_min_obsolete_bytes: self.cfg.checkpoint_bytes,
            checkpoint_obsolete_per_live_ratio: 1,
            // Every image from its shared buffer, so that the simulated crashes cover
            // that way of writing too.
            shared_image_min_bytes: 0,
            ..PaxosStorageConfig::new(
                WalOptions {
                    segment_bytes: self.cfg.segment_bytes,
                    fsync: true,
                    // The simulated disk only appends.
                    preallocate_bytes: 0,
                },
                self.limits(),
            )
        };
        let disk = Disk::Sim(self.nodes[n].disk.clone());
        if self.nodes.len() == 1 {
            return self.start_single(n, &disk, storage.wal);
        }
        let opened = open_cluster_on(&disk, Path::new("/data/paxos"), storage, self.settings(id));
        match opened {
            Err(e) if io_failure(&e) => self.failed_start(n, &e.to_string()),
            Err(e) => {
                self.violate(Violation {
                    kind: ViolationKind::Recovery,
                    at_us: self.now,
                    detail: format!("node {id} cannot recover its disk: {e}"),
                });
            }
            Ok(mut recovered) => {
                self.note(format!(
                    "n{id} starts (incarnation {}) at zxid {}{}",
                    self.nodes[n].inc,
                    recovered.machine.last_zxid(),
                    if recovered.fresh { ", empty disk" } else { "" }
                ));
                for (entry, applied) in std::mem::take(&mut recovered.replayed) {
                    self.replayed(id, &entry, &applied);
                }
                if recovered.fresh {
                    self.nodes[n].state = NodeState::Joining(Box::new(Joining {
                        recovered,
                        replies: BTreeMap::new(),
                    }));
                    let inc = self.nodes[n].inc;
                    self.schedule(self.now, Ev::JoinQuery { node: n, inc });
                } else {
                    self.finish_start(n, recovered, None);
                }
            }
        }
    }

    fn finish_start(
        &mut self,
        n: usize,
        recovered: RecoveredCluster,
        adopt: Option<crate::replication::join::Joined>,
    ) {
        let id = self.nodes[n].id;
        let started =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recovered.start(adopt)));
        let (machine, log) = match started {
            Ok(Ok(x)) => x,
            Ok(Err(e)) if io_failure(&e) => return self.failed_start(n, &e.to_string()),
            Ok(Err(e)) => {
                return self.violate(Violation {
                    kind: ViolationKind::Recovery,
                    at_us: self.now,
                    detail: format!("node {id} cannot start: {e}"),
                })
            }
            Err(_) => {
                return self.violate(Violation {
                    kind: ViolationKind::Panic,
                    at_us: self.now,
                    detail: format!("node {id} panicked while starting OmniPaxos"),
                })
            }
        };
        if log.is_catching_up() {
            self.note(format!(
                "n{id} catches up: no quorum until a leader syncs its log to it"
            ));
        }
        let sync = log.sync_handle();
        let now = self.node_now(n);
        let mut node = Node::new(
            self.node_config(id),
            machine,
            Log::Paxos(Box::new(log)),
            now,
        );
        node.enable_probe();
        self.nodes[n].checked_zxid = node.machine().last_zxid();
        self.nodes[n].state = NodeState::Up(Box::new(Up {
            node,
            backend: Backend::Paxos(sync),
            conns: BTreeSet::new(),
            pass_inputs: 0,
        }));
        let inc = self.nodes[n].inc;
        let first_tick = self.now + self.rng.range(0, self.cfg.tick_ms * 1000);
        self.schedule(first_tick, Ev::Tick { node: n, inc });
        // The shell reports the links that are already up (OmniPaxos resends on them).
        for p in 0..self.nodes.len() {
            let pid = self.nodes[p].id;
            if p != n && self.links.get(&(id, pid)).is_some_and(|l| l.up) {
                self.schedule(
                    self.now,
                    Ev::Link {
                        node: n,
                        inc,
                        peer: pid,
                        up: true,
                    },
                );
            }
        }
    }

    /// Single-node mode: the node recovers its snapshot and log (`storage::recover_on`)
    /// and runs with the local log.
    fn start_single(&mut self, n: usize, disk: &Disk, wal_options: WalOptions) {
        let id = self.nodes[n].id;
        let limits = self.limits();
        let recovered =
            match crate::storage::recover_on(disk, Path::new("/data"), limits, wal_options) {
                Ok(r) => r,
                Err(crate::storage::RecoveryError::Storage(
                    e @ (crate::wal::StorageError::Io { .. } | crate::wal::StorageError::Poisoned),
                )) => return self.failed_start(n, &e.to_string()),
                Err(e) => {
                    return self.violate(Violation {
                        kind: ViolationKind::Recovery,
                        at_us: self.now,
                        detail: format!("node {id} cannot recover its disk: {e}"),
                    })
                }
            };
        self.note(format!(
            "n{id} starts (incarnation {}) at zxid {} (snapshot {:?}, {} replayed, {} bytes cut)",
            self.nodes[n].inc,
            recovered.machine.last_zxid(),
            recovered.snapshot_index,
            recovered.replayed,
            recovered.truncated_bytes
        ));
        let now = self.node_now(n);
        let last = recovered.machine.last_zxid();
        let mut node = Node::new(
            self.node_config(id),
            recovered.machine,
            Log::local(last),
            now,
        );
        node.enable_probe();
        self.nodes[n].checked_zxid = last;
        let store = LocalStore {
            wal: recovered.wal,
            pending: None,
            kept: recovered.snapshot_index.into_iter().collect(),
            failed: false,
        };
        self.nodes[n].state = NodeState::Up(Box::new(Up {
            node,
            backend: Backend::Local(Box::new(store)),
            conns: BTreeSet::new(),
            pass_inputs: 0,
        }));
        let inc = self.nodes[n].inc;
        let first_tick = self.now + self.rng.range(0, self.cfg.tick_ms * 1000);
        self.schedule(first_tick, Ev::Tick { node: n, inc });
    }

    /// A start that failed on an IO error (an injected disk fault): the process exits
    /// and is started again, as a supervisor would.
    fn failed_start(&mut self, n: usize, why: &str) {
        let id = self.nodes[n].id;
        self.note(format!("n{id} cannot start ({why}): the process exits"));
        let restart = self.rng.range_incl(20_000, 500_000);
        self.crash_node(n, Some(restart), false);
    }

    /// The transport's reconnection backoff: between a tick and an election timeout.
    fn reconnect_delay(&mut self) -> u64 {
        let tick = self.cfg.tick_ms * 1000;
        let election = self.cfg.election_ms * 1000;
        self.rng.range_incl(tick.min(2_000), election.max(tick))
    }

    /// Ends the current connection of a link (if any) and starts re-establishing it.
    fn break_link(&mut self, from: u64, to: u64) {
        let link = self.links.entry((from, to)).or_default();
        let was_up = link.up;
        link.epoch += 1;
        link.up = false;
        let epoch = link.epoch;
        let at = self.now + self.reconnect_delay();
        self.schedule(at, Ev::Reconnect { from, to, epoch });
        // The sender's transport reports the loss (as a reset connection does at once).
        if was_up {
            self.report_link(from, to, false);
        }
    }

    /// Tells node `from`, if it runs, that its link to `to` came up or broke (its
    /// transport's `LinkUp` / `LinkDown`).
    fn report_link(&mut self, from: u64, to: u64, up: bool) {
        let f = from as usize - 1;
        if matches!(self.nodes[f].state, NodeState::Up(_)) {
            let inc = self.nodes[f].inc;
            self.schedule(
                self.now,
                Ev::Link {
                    node: f,
                    inc,
                    peer: to,
                    up,
                },
            );
        }
    }

    /// Breaks every link from and to node `n`.
    fn break_links_of(&mut self, n: usize) {
        let id = self.nodes[n].id;
        for p in 0..self.nodes.len() {
            let pid = self.nodes[p].id;
            if p != n {
                self.break_link(id, pid);
                self.break_link(pid, id);
            }
        }
    }

    fn reconnect(&mut self, from: u64, to: u64, epoch: u64) {
        let link = self.links.get(&(from, to)).copied().unwrap_or_default();
        if link.epoch != epoch || link.up {
            return;
        }
        let f = from as usize - 1;
        let t = to as usize - 1;
        if matches!(self.nodes[f].state, NodeState::Down) {
            // The node restarts with new links.
            return;
        }
        if self.blocked(from, to)
            || matches!(self.nodes[t].state, NodeState::Down)
            || self.nodes[f].paused
        {
            let at = self.now + self.reconnect_delay();
            self.schedule(at, Ev::Reconnect { from, to, epoch });
            return;
        }
        if let Some(l) = self.links.get_mut(&(from, to)) {
            l.up = true;
        }
        self.report_link(from, to, true);
    }

    /// A power cut (or a crashed process): unsynced writes are lost, the last one
    /// possibly torn; connections break; the node restarts after `restart_after_us`.
    fn crash_node(&mut self, n: usize, restart_after_us: Option<u64>, wipe: bool) {
        let id = self.nodes[n].id;
        let was = std::mem::replace(&mut self.nodes[n].state, NodeState::Down);
        let conns: Vec<ConnId> = match &was {
            NodeState::Up(up) => up.conns.iter().copied().collect(),
            _ => Vec::new(),
        };
        drop(was);
        let tear = self.rng.chance(600);
        let mut rng = SimRng::new(self.rng.next_u64());
        if wipe {
            self.nodes[n].disk.wipe();
        } else {
            self.nodes[n].disk.crash(&mut |pending| {
                if !tear || pending == 0 {
                    return (0, 0);
                }
                let keep = rng.range_incl(0, pending as u64) as usize;
                let zeros = if rng.chance(200) {
                    rng.range_incl(1, 64) as usize
                } else {
                    0
                };
                (keep, zeros)
            });
        }
        self.nodes[n].inc += 1;
        self.nodes[n].paused = false;
        self.nodes[n].held.clear();
        self.nodes[n].leader = None;
        self.break_links_of(n);
        self.checks.forget_heard(id);
        self.changes.restarted(id);
        self.stats.crashes += 1;
        self.note(format!(
            "n{id} {}{}",
            if wipe {
                "crashes and loses its disk"
            } else {
                "crashes"
            },
            restart_after_us
                .map(|d| format!(", restarts in {}ms", d / 1000))
                .unwrap_or_default()
        ));
        // Every connection of the node breaks.
        let all: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(c, i)| i.node == n && (i.server_open || conns.contains(c)))
            .map(|(c, _)| *c)
            .collect();
        for conn in all {
            self.server_side_gone(conn);
        }
        if let Some(d) = restart_after_us {
            self.nodes[n].restart_pending = true;
            self.schedule(self.now + d, Ev::Restart { node: n });
        }
    }

    fn server_side_gone(&mut self, conn: ConnId) {
        let Some(info) = self.conns.get_mut(&conn) else {
            return;
        };
        info.server_open = false;
        if info.client_open {
            info.client_open = false;
            let client = info.client;
            let at = info.to_client_at.max(self.now) + 1_000 + self.rng.range(0, 20_000);
            if let Some(i) = self.conns.get_mut(&conn) {
                i.to_client_at = at;
            }
            self.schedule(
                at,
                Ev::ToClient {
                    client,
                    conn,
                    msg: ToClient::Closed,
                },
            );
        }
    }

    // -----------------------------------------------------------------------------------
    // Network
    // -----------------------------------------------------------------------------------

    fn blocked(&self, from: u64, to: u64) -> bool {
        self.partitions.values().any(|p| p.contains(&(from, to)))
    }

    fn healed(&self) -> bool {
        self.heal_us.is_some()
    }

    fn peer_send(&mut self, from: u64, to: u64, msg: PeerMsg) {
        let mut bytes = match bincode::serde::encode_to_vec(&msg, bincode::config::standard()) {
            Ok(b) => b,
            Err(e) => {
                return self.violate(Violation {
                    kind: ViolationKind::Panic,
                    at_us: self.now,
                    detail: format!("cannot encode a peer message: {e}"),
                })
            }
        };
        self.stats.messages += 1;
        self.stats.message_bytes += bytes.len() as u64;
        let Some(t) = (to as usize)
            .checked_sub(1)
            .filter(|t| *t < self.nodes.len())
        else {
            return;
        };
        let net = self.cfg.net;
        let healed = self.healed();
        let link = self.links.get(&(from, to)).copied().unwrap_or_default();
        if net.fifo && !link.up {
            // The transport drops messages while the link is down.
            return;
        }
        let lost = !healed && self.rng.chance(net.loss_per_mille);
        if self.blocked(from, to) || matches!(self.nodes[t].state, NodeState::Down) || lost {
            if lost {
                self.stats.lost += 1;
            }
            if self.trace_all {
                let mut d = format!("{msg:?}");
                d.truncate(160);
                self.note(format!("n{from} -> n{to} LOST: {d}"));
            }
            if net.fifo {
                self.break_link(from, to);
            }
            return;
        }
        // Off the transport's contract (hostile runs only): duplicates and reordering.
        let copies = if !net.fifo && !healed && self.rng.chance(net.dup_per_mille) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let mut delay = self.rng.range_incl(net.delay_min_us, net.delay_max_us);
            if !healed && self.rng.chance(net.spike_per_mille) {
                delay += self.rng.range(0, net.spike_max_us);
            }
            let mut at = self.now + delay;
            if net.fifo {
                at = at.max(link.last_at);
                if let Some(l) = self.links.get_mut(&(from, to)) {
                    l.last_at = at;
                }
            }
            let inc = self.nodes[t].inc;
            let bytes = if copy + 1 == copies {
                std::mem::take(&mut bytes)
            } else {
                bytes.clone()
            };
            self.schedule(
                at,
                Ev::Peer {
                    from,
                    to: t,
                    inc,
                    epoch: link.epoch,
                    bytes,
                },
            );
        }
    }

    fn conn_delay(&mut self) -> u64 {
        self.rng.range_incl(100, 1_500)
    }

    fn deliver_to_client(&mut self, conn: ConnId, msg: ToClient) {
        if self.trace_all {
            let mut d = format!("{msg:?}");
            d.truncate(200);
            self.note(format!("conn {conn} <- {d}"));
        }
        let delay = self.conn_delay();
        let Some(info) = self.conns.get(&conn) else {
            return;
        };
        let client = info.client;
        let at = (self.now + delay).max(info.to_client_at);
        if let Some(i) = self.conns.get_mut(&conn) {
            i.to_client_at = at;
        }
        self.schedule(at, Ev::ToClient { client, conn, msg });
    }

    fn deliver_to_server(&mut self, conn: ConnId, msg: ToServer) {
        let delay = self.conn_delay();
        let Some(info) = self.conns.get(&conn) else {
            return;
        };
        let (node, inc) = (info.node, info.inc);
        let at = (self.now + delay).max(info.to_server_at);
        if let Some(i) = self.conns.get_mut(&conn) {
            i.to_server_at = at;
        }
        self.schedule(
            at,
            Ev::ToServer {
                node,
                inc,
                conn,
                msg,
            },
        );
    }

    // -----------------------------------------------------------------------------------
    // Steps
    // -----------------------------------------------------------------------------------

    fn hold_if_paused(&mut self, n: usize, ev: Ev) -> Option<Ev> {
        if self.nodes[n].paused {
            self.nodes[n].held.push(ev);
            None
        } else {
            Some(ev)
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::EndPass { node, inc } => {
                if self.nodes[node].inc != inc {
                    return;
                }
                if self.hold_if_paused(node, ev).is_some() {
                    self.node_end_pass(node);
                }
            }
            Ev::Tick { node, inc } => {
                if self.nodes[node].inc != inc || self.nodes[node].paused {
                    return;
                }
                if !matches!(self.nodes[node].state, NodeState::Up(_)) {
                    return;
                }
                self.node_input(node, Input::Tick);
                let interval = self.node_interval(node, self.cfg.tick_ms * 1000);
                let jitter = self.rng.range(0, interval / 10 + 1);
                self.schedule(self.now + interval + jitter, Ev::Tick { node, inc });
            }
            Ev::Reconnect { from, to, epoch } => self.reconnect(from, to, epoch),
            Ev::Restart { node } => {
                if matches!(self.nodes[node].state, NodeState::Down) {
                    self.start_node(node);
                }
            }
            Ev::JoinQuery { node, inc } => {
                if self.nodes[node].inc != inc || self.nodes[node].paused {
                    return;
                }
                let NodeState::Joining(j) = &self.nodes[node].state else {
                    return;
                };
                let asked: Vec<u64> = (1..=self.nodes.len() as u64)
                    .filter(|p| *p != self.nodes[node].id && !j.replies.contains_key(p))
                    .collect();
                let me = self.nodes[node].id;
                for p in asked {
                    self.peer_send(me, p, PeerMsg::PromiseQuery);
                }
                let retry = self.cfg.election_ms.max(50) * 1000;
                self.schedule(self.now + retry, Ev::JoinQuery { node, inc });
            }
            ev @ Ev::Peer { .. } => {
                let Ev::Peer {
                    from,
                    to,
                    inc,
                    epoch,
                    ..
                } = &ev
                else {
                    return;
                };
                let (from, to, inc, epoch) = (*from, *to, *inc, *epoch);
                let id = self.nodes[to].id;
                let link = self.links.get(&(from, id)).copied().unwrap_or_default();
                if self.nodes[to].inc != inc || (self.cfg.net.fifo && link.epoch != epoch) {
                    // The connection it was sent on broke: it is lost with it.
                    return;
                }
                if !self.cfg.net.fifo && self.blocked(from, id) {
                    return;
                }
                let Some(Ev::Peer {
                    from, to, bytes, ..
                }) = self.hold_if_paused(to, ev)
                else {
                    return;
                };
                let msg: PeerMsg =
                    match bincode::serde::decode_from_slice(&bytes, bincode::config::standard()) {
                        Ok((m, _)) => m,
                        Err(e) => {
                            return self.violate(Violation {
                                kind: ViolationKind::Panic,
                                at_us: self.now,
                                detail: format!("a peer message does not decode: {e}"),
                            })
                        }
                    };
                if self.trace_all {
                    let mut d = format!("{msg:?}");
                    d.truncate(240);
                    let id = self.nodes[to].id;
                    self.note(format!("n{id} <- n{from}: {d}"));
                }
                if let PeerMsg::Paxos(m) = &msg {
                    if let Err(detail) = super::check::check_log_sync(m) {
                        return self.violate(Violation {
                            kind: ViolationKind::InconsistentLogSync,
                            at_us: self.now,
                            detail,
                        });
                    }
                }
                self.peer_deliver(to, from, msg);
            }
            ev @ Ev::Link { .. } => {
                let Ev::Link { node, inc, .. } = &ev else {
                    return;
                };
                let (node, inc) = (*node, *inc);
                if self.nodes[node].inc != inc {
                    return;
                }
                let Some(Ev::Link { peer, up, .. }) = self.hold_if_paused(node, ev) else {
                    return;
                };
                if matches!(self.nodes[node].state, NodeState::Up(_)) {
                    if self.trace_all {
                        let id = self.nodes[node].id;
                        let what = if up { "up" } else { "down" };
                        self.note(format!("n{id} link {what} to n{peer}"));
                    }
                    let input = if up {
                        // The version the acceptor takes from this dialer: the newest
                        // only between two upgraded nodes.
                        let upgraded = |n: usize| self.nodes[n].upgraded;
                        let version = if upgraded(node) && upgraded(peer as usize - 1) {
                            crate::replication::transport::PEER_PROTOCOL_VERSION
                        } else {
                            self.cfg.old_peer_version
                        };
                        Input::LinkUp { peer, version }
                    } else {
                        Input::LinkDown { peer }
                    };
                    self.node_input(node, input);
                }
            }
            ev @ Ev::DiskDone { .. } => {
                let Ev::DiskDone { node, inc, .. } = &ev else {
                    return;
                };
                let (node, inc) = (*node, *inc);
                if self.nodes[node].inc != inc {
                    return;
                }
                let Some(Ev::DiskDone { batch, .. }) = self.hold_if_paused(node, ev) else {
                    return;
                };
                self.disk_done(node, batch);
            }
            ev @ Ev::Decoded { .. } => {
                let Ev::Decoded { node, inc, .. } = &ev else {
                    return;
                };
                let (node, inc) = (*node, *inc);
                if self.nodes[node].inc != inc {
                    return;
                }
                let Some(Ev::Decoded { index, machine, .. }) = self.hold_if_paused(node, ev) else {
                    return;
                };
                if matches!(self.nodes[node].state, NodeState::Up(_)) {
                    self.node_input(node, Input::Decoded { index, machine });
                }
            }
            ev @ Ev::ToServer { .. } => {
                let Ev::ToServer {
                    node, inc, conn, ..
                } = &ev
                else {
                    return;
                };
                let (node, inc, conn) = (*node, *inc, *conn);
                let alive = self.nodes[node].inc == inc
                    && matches!(self.nodes[node].state, NodeState::Up(_));
                let server_open = self.conns.get(&conn).is_some_and(|c| c.server_open);
                if !alive || !server_open {
                    self.server_side_gone(conn);
                    return;
                }
                let Some(Ev::ToServer { msg, .. }) = self.hold_if_paused(node, ev) else {
                    return;
                };
                self.server_deliver(node, conn, msg);
            }
            ev @ Ev::ToClient { .. } => {
                let Ev::ToClient { client, .. } = &ev else {
                    return;
                };
                let client = *client;
                if self.clients[client].paused {
                    self.client_held(client, ev);
                    return;
                }
                let Ev::ToClient { conn, msg, .. } = ev else {
                    return;
                };
                let closed = matches!(msg, ToClient::Closed);
                let (out, hist) = {
                    let mut hist = std::mem::take(&mut self.hist);
                    let out =
                        self.clients[client].on_msg(conn, msg, self.now, &mut hist, &self.changes);
                    (out, hist)
                };
                self.hist = hist;
                if closed {
                    if let Some(i) = self.conns.get_mut(&conn) {
                        i.client_open = false;
                    }
                }
                self.client_actions(client, out);
            }
            Ev::ClientWake { client } => {
                if self.clients[client].paused {
                    return;
                }
                let mut hist = std::mem::take(&mut self.hist);
                let mut next_conn = self.next_conn;
                let out = self.clients[client].on_wake(self.now, &mut next_conn, &mut hist);
                self.next_conn = next_conn;
                self.hist = hist;
                self.client_actions(client, out);
                if client == 0 && self.workload_start_us.is_none() && self.clients[0].setup_done {
                    self.start_workload();
                }
                if self.clients[client].mode != Mode::Done {
                    let at = self.now + 3_000 + self.rng.range(0, 4_000);
                    self.schedule(at, Ev::ClientWake { client });
                }
            }
            Ev::FaultStart { index } => self.fault_start(index),
            Ev::FaultEnd { index } => self.fault_end(index),
            Ev::Heal => self.heal(),
            Ev::OperatorRestart { node, inc } => {
                // After the heal, the heal itself restarted failed nodes.
                if self.nodes[node].inc == inc && !self.healed() {
                    self.crash_node(node, Some(1_000), false);
                }
            }
            Ev::Upgrade { node } => {
                self.nodes[node].upgraded = true;
                self.note(format!("n{} upgraded", self.nodes[node].id));
                self.break_links_of(node);
            }
            Ev::ProbeStart => {
                let id = self.clients.len();
                let cfg = ClientCfg {
                    rate_ppm: 0,
                    ..self.client_cfg.clone()
                };
                self.clients
                    .push(SimClient::new(id, Role::Probe, cfg, self.cfg.seed));
                self.probe = Some(id);
                self.note(format!("probe client c{id} starts"));
                self.schedule(self.now, Ev::ClientWake { client: id });
            }
            Ev::LivenessCheck => self.liveness_check(),
            Ev::ConvergeCheck => self.converge_check(),
        }
    }

    /// Keeps a message for a paused client until it resumes.
    fn client_held(&mut self, client: usize, ev: Ev) {
        self.paused_client_events
            .entry(client)
            .or_default()
            .push(ev);
    }

    fn start_workload(&mut self) {
        self.workload_start_us = Some(self.now);
        self.note("workload and faults start".to_string());
        for c in 1..self.clients.len() {
            let at = self.now + self.rng.range(0, 5_000);
            self.schedule(at, Ev::ClientWake { client: c });
        }
        let plan = self.plan.clone();
        for (i, f) in plan.iter().enumerate() {
            if self.cfg.skip_faults.contains(&i) {
                continue;
            }
            self.schedule(self.now + f.at_ms * 1000, Ev::FaultStart { index: i });
        }
        let heal = self.now + self.cfg.fault_ms * 1000;
        self.schedule(heal, Ev::Heal);
    }

    // -----------------------------------------------------------------------------------
    // Node inputs and outputs
    // -----------------------------------------------------------------------------------

    /// Takes an input into the node's pass, as the server's core does; the pass ends
    /// once it holds `pass_inputs` inputs, or at an `EndPass` event scheduled when it
    /// opened (within `pass_window_us`, after the events already due).
    fn node_input(&mut self, n: usize, input: Input) {
        let limit = self.cfg.pass_inputs.max(1);
        let inc = self.nodes[n].inc;
        let NodeState::Up(up) = &mut self.nodes[n].state else {
            return;
        };
        up.pass_inputs += 1;
        let taken = up.pass_inputs;
        if taken >= limit {
            up.pass_inputs = 0;
            return self.node_step(n, |node, now| {
                let mut outputs = node.take_in(now, input);
                outputs.extend(node.end_pass(now));
                outputs
            });
        }
        if taken == 1 {
            let at = self.now + self.rng.range_incl(0, self.cfg.pass_window_us);
            self.schedule(at, Ev::EndPass { node: n, inc });
        }
        self.node_step(n, |node, now| node.take_in(now, input));
    }

    /// Ends the node's pass, if one is open.
    fn node_end_pass(&mut self, n: usize) {
        let NodeState::Up(up) = &mut self.nodes[n].state else {
            return;
        };
        if up.pass_inputs == 0 {
            return;
        }
        up.pass_inputs = 0;
        self.node_step(n, |node, now| node.end_pass(now));
    }

    /// Runs one step of the node's core and carries out its outputs.
    fn node_step(&mut self, n: usize, step: impl FnOnce(&mut Node, Now) -> Vec<Output>) {
        let now = self.node_now(n);
        let id = self.nodes[n].id;
        let NodeState::Up(up) = &mut self.nodes[n].state else {
            return;
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let outputs = step(&mut up.node, now);
            let probes = up.node.take_probe();
            (outputs, probes)
        }));
        let (outputs, probes) = match result {
            Ok(x) => x,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return self.violate(Violation {
                    kind: ViolationKind::Panic,
                    at_us: self.now,
                    detail: format!("node {id} panicked: {what}"),
                });
            }
        };
        self.observe(n, probes, now);
        for output in outputs {
            self.dispatch(n, output);
        }
        self.after_node_step(n);
    }

    /// Node `id` replayed `entry` from its disk or a snapshot's tail, which did `applied`.
    fn replayed(&mut self, id: u64, entry: &Entry, applied: &Applied) {
        self.record_changes(entry, applied);
        let zxid = applied.zxid;
        if let Err(v) = self
            .checks
            .on_replayed(id, zxid, entry, &applied.result, self.now)
        {
            self.violate(v);
        }
    }

    /// A node applied or replayed `entry`, which did `applied`: the first report of each
    /// zxid goes into the change log (its tree changes, the queue nodes it granted, at
    /// once or after they waited, and the sessions it began and ended), and its
    /// containers are checked (`sim/containers.rs`).
    fn record_changes(&mut self, entry: &Entry, applied: &Applied) {
        let zxid = applied.zxid;
        if !self.changes.record(zxid, &applied.changes) {
            return;
        }
        for g in granted_after_waiting(applied) {
            self.changes.granted(&g.node, g.token, zxid);
        }
        match (&*entry.body, entry.body.client_write(), &applied.result) {
            (EntryBody::OpenSession { .. }, _, _) => self.changes.session_began(zxid),
            (_, Some((_, _, op)), Some(result)) => {
                for (_, node, token) in super::check::granted_at_once(op, result) {
                    self.changes.granted(node, token, zxid);
                }
                if let (Op::GrantLease { .. }, Ok(OpResult::Lease { lease_id, .. })) = (op, result)
                {
                    self.changes.session_began(*lease_id);
                }
            }
            _ => {}
        }
        self.changes
            .sessions_ended(zxid, applied.ended_sessions.len());
        match super::containers::check(zxid, entry, &applied.changes, &self.changes) {
            Ok(reaped) => self.stats.reaped += reaped,
            Err(detail) => self.violate(Violation {
                kind: ViolationKind::Containers,
                at_us: self.now,
                detail,
            }),
        }
    }

    fn observe(&mut self, n: usize, probes: Vec<Probe>, now: Now) {
        let id = self.nodes[n].id;
        for p in probes {
            let r = match p {
                Probe::Applied { entry, applied } => {
                    let (zxid, result) = (applied.zxid, &applied.result);
                    self.record_changes(&entry, &applied);
                    if let Err(v) = self.check_revoked(n, zxid, &entry, result) {
                        self.violate(v);
                    }
                    let before = self.checks.entries;
                    let granted = granted_after_waiting(&applied);
                    let r = self
                        .checks
                        .on_applied(id, zxid, &entry, result, &granted, self.now);
                    if self.trace_all && self.checks.entries > before {
                        let mut d = format!(
                            "decided {zxid} (n{id}): {} -> {result:?}",
                            super::check::describe_entry(&entry)
                        );
                        d.truncate(220);
                        self.note(d);
                    }
                    r
                }
                Probe::Installed { from, zxid } => {
                    self.stats.installs += 1;
                    self.changes.installed(id, from, zxid);
                    self.note(format!(
                        "n{id} installs a snapshot at zxid {zxid} (from {from})"
                    ));
                    Ok(())
                }
                Probe::ExpiryProposed { sessions, mono_ms } => {
                    self.note(format!("n{id} proposes expiry of {sessions:x?}"));
                    let NodeState::Up(up) = &self.nodes[n].state else {
                        continue;
                    };
                    let _ = now;
                    self.checks.on_expiry_proposed(
                        id,
                        &sessions,
                        mono_ms,
                        up.node.machine(),
                        self.now,
                    )
                }
            };
            if let Err(v) = r {
                self.violate(v);
            }
        }
    }

    /// A `RevokeLease` applied without an error closed the lease (ids are never reused,
    /// so it stays closed in the node's state, however far that has moved on since): a
    /// revocation that left the lease open would leave its locks held until it expired.
    fn check_revoked(
        &self,
        n: usize,
        zxid: u64,
        entry: &Entry,
        result: &Option<Result<OpResult, ErrorInfo>>,
    ) -> Result<(), Violation> {
        let Some((_, _, Op::RevokeLease { lease_id })) = entry.body.client_write() else {
            return Ok(());
        };
        let NodeState::Up(up) = &self.nodes[n].state else {
            return Ok(());
        };
        if !matches!(result, Some(Ok(_))) || up.node.machine().session(*lease_id).is_none() {
            return Ok(());
        }
        Err(Violation {
            kind: ViolationKind::MachineInvariant,
            at_us: self.now,
            detail: format!(
                "n{} applied the revocation of lease {lease_id:#x} at zxid {zxid} without \
                 an error, but the lease is still open",
                self.nodes[n].id
            ),
        })
    }

    fn after_node_step(&mut self, n: usize) {
        let id = self.nodes[n].id;
        let NodeState::Up(up) = &self.nodes[n].state else {
            return;
        };
        if let Err(e) = up.node.check_invariants() {
            self.violate(Violation {
                kind: ViolationKind::NodeInvariant,
                at_us: self.now,
                detail: format!("n{id}: {e}"),
            });
            return;
        }
        let zxid = up.node.machine().last_zxid();
        let leader = up.node.leader();
        if leader != self.nodes[n].leader {
            self.nodes[n].leader = leader;
            self.stats.leader_changes += 1;
            self.note(format!("n{id} sees leader {leader:?}"));
        }
        if zxid != self.nodes[n].checked_zxid {
            if zxid < self.nodes[n].checked_zxid {
                self.nodes[n].applied_at.clear();
            }
            self.nodes[n].applied_at.insert(zxid, self.now);
            self.nodes[n].checked_zxid = zxid;
            self.nodes[n].changes += 1;
            if self.cfg.hash_every_change || self.nodes[n].changes.is_multiple_of(16) {
                let NodeState::Up(up) = &self.nodes[n].state else {
                    return;
                };
                if let Err(v) = self.checks.on_state(id, up.node.machine(), self.now) {
                    self.violate(v);
                }
            }
        }
    }

    fn dispatch(&mut self, n: usize, output: Output) {
        let id = self.nodes[n].id;
        match output {
            Output::HelloReply { conn, reply } => {
                if let HelloReply::Accepted(g) = &reply {
                    let mono = self.node_now(n).mono_ms;
                    self.checks.heard(id, g.session_id, mono);
                    if let Some(i) = self.conns.get_mut(&conn) {
                        i.session = Some(g.session_id);
                        i.attached_at = Some(self.now);
                    }
                }
                self.deliver_to_client(conn, ToClient::Hello(reply));
            }
            Output::Send { conn, msg } => self.deliver_to_client(conn, ToClient::Msg(msg)),
            Output::Close { conn } => {
                if let NodeState::Up(up) = &mut self.nodes[n].state {
                    up.conns.remove(&conn);
                }
                if let Some(info) = self.conns.get_mut(&conn) {
                    info.server_open = false;
                }
                self.deliver_to_client(conn, ToClient::Closed);
            }
            Output::Sync { batch } => {
                if self.trace_all {
                    self.note(format!("n{id} sync {batch} starts"));
                }
                let d = self.cfg.disk;
                let mut latency = self.rng.range_incl(d.latency_min_us, d.latency_max_us);
                if self.rng.chance(10) {
                    latency *= 10;
                }
                let inc = self.nodes[n].inc;
                self.schedule(
                    self.now + latency,
                    Ev::DiskDone {
                        node: n,
                        inc,
                        batch,
                    },
                );
            }
            Output::PeerSend { to, msg } => self.peer_send(id, to, msg),
            Output::Persist {
                batch,
                records,
                first_lsn,
                starts_with_checkpoint,
            } => {
                let NodeState::Up(up) = &mut self.nodes[n].state else {
                    return;
                };
                let Backend::Local(store) = &mut up.backend else {
                    return self.violate(Violation {
                        kind: ViolationKind::Panic,
                        at_us: self.now,
                        detail: format!("node {id}: single-node output in cluster mode"),
                    });
                };
                store.pending = Some((batch, records, first_lsn, starts_with_checkpoint));
                let d = self.cfg.disk;
                let latency = self.rng.range_incl(d.latency_min_us, d.latency_max_us);
                let inc = self.nodes[n].inc;
                self.schedule(
                    self.now + latency,
                    Ev::DiskDone {
                        node: n,
                        inc,
                        batch,
                    },
                );
            }
            Output::Decode(job) => {
                // Decoded on a thread of its own, which takes a while: the node goes on
                // serving from its old state meanwhile, and may lead.
                let index = job.index;
                let mut tail = Vec::new();
                let machine = job
                    .decode_seeing(|entry, applied| tail.push((entry.clone(), applied)))
                    .map(Box::new);
                // Entries of the tail may have been applied nowhere else (a leader that
                // crashed between deciding and applying them).
                for (entry, applied) in tail {
                    self.replayed(id, &entry, &applied);
                }
                let mut latency = self.rng.range_incl(DECODE_US.0, DECODE_US.1);
                if self.rng.chance(10) {
                    latency *= 100;
                }
                let inc = self.nodes[n].inc;
                self.decodes.push((self.now, self.now + latency));
                if self.trace_all {
                    self.note(format!(
                        "n{id} decodes the snapshot of {index} for {latency} us"
                    ));
                }
                self.schedule(
                    self.now + latency,
                    Ev::Decoded {
                        node: n,
                        inc,
                        index,
                        machine,
                    },
                );
            }
            Output::Snapshot { index, image } => {
                // Encoded and written by the snapshot thread a little later (the log keeps
                // everything meanwhile); then the log is compacted through the older kept
                // snapshot.
                let Ok(data) = image.encode_snapshot() else {
                    return;
                };
                let disk = Disk::Sim(self.nodes[n].disk.clone());
                let NodeState::Up(up) = &mut self.nodes[n].state else {
                    return;
                };
                let Backend::Local(store) = &mut up.backend else {
                    return;
                };
                let dir = crate::storage::snapshot_dir(Path::new("/data"));
                // On failure the log still has everything: a failed snapshot costs only
                // recovery time (as in production).
                if crate::snapshot::save_on(
                    &disk,
                    &dir,
                    index,
                    &data,
                    crate::storage::SNAPSHOTS_KEPT,
                )
                .is_ok()
                {
                    self.stats.snapshots += 1;
                    store.kept.push_back(index);
                    while store.kept.len() > crate::storage::SNAPSHOTS_KEPT {
                        store.kept.pop_front();
                    }
                    if let Some(oldest) = store.kept.front() {
                        let _ = store.wal.compact_through(*oldest);
                    }
                }
            }
        }
    }

    fn disk_done(&mut self, n: usize, batch: u64) {
        if !self.healed() && self.rng.chance(self.cfg.disk.crash_in_sync_per_mille) {
            self.nodes[n].disk.arm_crash_in_sync();
        }
        let NodeState::Up(up) = &mut self.nodes[n].state else {
            return;
        };
        let sync = match &mut up.backend {
            Backend::Paxos(sync) => sync.clone(),
            Backend::Local(_) => return self.local_persist(n, batch),
        };
        let synced = sync.sync();
        if self.trace_all {
            let id = self.nodes[n].id;
            self.note(format!("n{id} sync {batch} done: {synced:?}"));
        }
        match synced {
            Ok(()) => self.node_input(n, Input::Persisted { batch }),
            Err(e) => {
                let id = self.nodes[n].id;
                self.note(format!("n{id} sync failed ({e}): the process exits"));
                let restart = self.rng.range_incl(20_000, 500_000);
                self.crash_node(n, Some(restart), false);
            }
        }
    }

    /// Single node: the storage thread writes and syncs the pending batch.
    fn local_persist(&mut self, n: usize, batch: u64) {
        let id = self.nodes[n].id;
        let NodeState::Up(up) = &mut self.nodes[n].state else {
            return;
        };
        let Backend::Local(store) = &mut up.backend else {
            return;
        };
        let Some((b, records, first_lsn, checkpoint)) = store.pending.take() else {
            return;
        };
        if b != batch {
            return;
        }
        let result = if store.failed {
            Err("the log failed earlier".to_string())
        } else {
            let mut stats = crate::storage::StorageStats::default();
            crate::storage::persist(&mut store.wal, &records, first_lsn, checkpoint, &mut stats)
                .map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => self.node_input(n, Input::Persisted { batch }),
            Err(error) if error.contains("simulated crash") => {
                self.note(format!("n{id} loses power during a sync"));
                let restart = self.rng.range_incl(20_000, 500_000);
                self.crash_node(n, Some(restart), false);
            }
            Err(error) => {
                // As in production: the node refuses writes from now on and serves reads;
                // an operator restarts it (here: a little later).
                store.failed = true;
                self.note(format!(
                    "n{id} log failed ({error}); it serves reads until restarted"
                ));
                self.node_input(n, Input::PersistFailed { error });
                let restart = self.rng.range_incl(200_000, 1_000_000);
                let inc = self.nodes[n].inc;
                self.schedule(self.now + restart, Ev::OperatorRestart { node: n, inc });
            }
        }
    }

    fn peer_deliver(&mut self, n: usize, from: u64, msg: PeerMsg) {
        let id = self.nodes[n].id;
        let needed = (self.nodes.len() / 2 + 1).min(self.nodes.len() - 1);
        match &mut self.nodes[n].state {
            NodeState::Down => {}
            NodeState::Joining(j) => match msg {
                PeerMsg::PromiseQuery => {
                    self.peer_send(id, from, PeerMsg::PromiseReply(Ballot::default(), 0));
                }
                PeerMsg::PromiseReply(b, accepted) => {
                    j.replies.insert(from, (b, accepted));
                    if j.replies.len() >= needed {
                        let max =
                            crate::replication::join::Joined::from_replies(j.replies.values());
                        let NodeState::Joining(j) =
                            std::mem::replace(&mut self.nodes[n].state, NodeState::Down)
                        else {
                            return;
                        };
                        self.note(format!("n{id} adopts promise {max:?}"));
                        self.finish_start(n, j.recovered, Some(max));
                    }
                }
                _ => {}
            },
            NodeState::Up(up) => {
                if let PeerMsg::Alive { sessions, .. } = &msg {
                    if up.node.is_leader() {
                        let mono = self.node_now(n).mono_ms;
                        for s in sessions.clone() {
                            self.checks.heard(id, s, mono);
                        }
                    }
                }
                self.node_input(n, Input::Peer { from, msg });
            }
        }
    }

    fn server_deliver(&mut self, n: usize, conn: ConnId, msg: ToServer) {
        let id = self.nodes[n].id;
        let input = match msg {
            ToServer::Hello(hello) => {
                if let NodeState::Up(up) = &mut self.nodes[n].state {
                    up.conns.insert(conn);
                }
                Input::Hello {
                    conn,
                    hello,
                    secret: self.rng.next_u64(),
                }
            }
            ToServer::Request(request) => {
                if self.trace_all {
                    let client = self.conns.get(&conn).map_or(0, |c| c.client);
                    self.note(format!(
                        "n{id} <- c{client} conn {conn}: xid {} {}",
                        request.xid,
                        super::check::describe_op(&request.op)
                    ));
                }
                if let Some(session) = self.conns.get(&conn).and_then(|c| c.session) {
                    let mono = self.node_now(n).mono_ms;
                    self.checks.heard(id, session, mono);
                    if let Op::RenewLease { lease_id } = &request.op {
                        // A renewal of a lease this session owns touches the lease.
                        let owns = match &self.nodes[n].state {
                            NodeState::Up(up) => up
                                .node
                                .machine()
                                .session(*lease_id)
                                .is_some_and(|l| l.lease_of == session),
                            _ => false,
                        };
                        if owns {
                            self.checks.heard(id, *lease_id, mono);
                        }
                    }
                }
                Input::Request { conn, request }
            }
            ToServer::Disconnected => {
                if let NodeState::Up(up) = &mut self.nodes[n].state {
                    up.conns.remove(&conn);
                }
                if let Some(i) = self.conns.get_mut(&conn) {
                    i.server_open = false;
                }
                Input::Disconnected { conn }
            }
        };
        self.node_input(n, input);
    }

    // -----------------------------------------------------------------------------------
    // Clients
    // -----------------------------------------------------------------------------------

    fn client_actions(&mut self, client: usize, actions: Vec<CAction>) {
        for a in actions {
            match a {
                CAction::Connect { conn, node, hello } => {
                    let n = (node - 1) as usize;
                    let inc = self.nodes[n].inc;
                    self.conns.insert(
                        conn,
                        ConnInfo {
                            client,
                            node: n,
                            inc,
                            client_open: true,
                            server_open: true,
                            to_server_at: 0,
                            to_client_at: 0,
                            session: None,
                            attached_at: None,
                        },
                    );
                    if matches!(self.nodes[n].state, NodeState::Up(_)) {
                        self.deliver_to_server(conn, ToServer::Hello(hello));
                    } else {
                        self.server_side_gone(conn);
                    }
                }
                CAction::Send { conn, request } => {
                    if self.conns.get(&conn).is_some_and(|c| c.client_open) {
                        self.deliver_to_server(conn, ToServer::Request(request));
                    }
                }
                CAction::Drop { conn } => {
                    let server_open = match self.conns.get_mut(&conn) {
                        Some(i) => {
                            i.client_open = false;
                            i.server_open
                        }
                        None => false,
                    };
                    if server_open {
                        self.deliver_to_server(conn, ToServer::Disconnected);
                    }
                }
                CAction::Believe { lock, token, kind } => {
                    self.note(format!(
                        "c{client} holds {lock} ({kind:?}) with token {token}"
                    ));
                    // The other clients that believe they hold it now.
                    let others: Vec<(usize, u64, LockKind, u64)> = self
                        .clients
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != client)
                        .filter_map(|(i, c)| c.believed.get(&lock).map(|b| (i, b)))
                        .filter(|(_, b)| b.safe_until_us > self.now)
                        .map(|(i, b)| (i, b.token, b.kind, b.safe_until_us))
                        .collect();
                    let clash = others
                        .iter()
                        .find(|(_, _, other, _)| conflicts(kind, *other, others.len()));
                    if clash.is_none() && !others.is_empty() {
                        self.stats.shared_holds += 1;
                    }
                    if let Some((i, t, other, until)) = clash {
                        let v = Violation {
                            kind: ViolationKind::TwoBelievers,
                            at_us: self.now,
                            detail: format!(
                                "c{client} was granted {lock} ({kind:?}, token {token}) while \
                                 c{i} believes it holds it ({other:?}, token {t}) until {} \
                                 ({} other believers)",
                                fmt_time(*until),
                                others.len()
                            ),
                        };
                        self.violate(v);
                    }
                }
                CAction::Ack { session, xid, zxid } => {
                    if let Err(v) = self.checks.on_ack(session, xid, zxid, self.now) {
                        self.violate(v);
                    }
                }
                CAction::KeepaliveAck {
                    session,
                    ttl_ms,
                    sent_us,
                } => {
                    if let Err(v) = self.checks.on_keepalive_ack(session, ttl_ms, sent_us) {
                        self.violate(v);
                    }
                }
                CAction::ProbeAcquired { lock } => {
                    self.note(format!("probe acquired {lock}"));
                    self.probe_acquired.insert(lock, self.now);
                }
                CAction::AwaitingGrant {
                    nodes,
                    token,
                    attached_zxid,
                    at_zxid,
                } => self.check_grant_pushed(client, &nodes, token, attached_zxid, at_zxid),
                CAction::GaveUp {
                    node,
                    token,
                    conn,
                    answered_zxid,
                } => {
                    self.check_grant_told(client, &node, token, conn, answered_zxid);
                }
                CAction::Violation(v) => self.violate(v),
                CAction::Note(s) => self.note(s),
            }
        }
    }

    /// A waiter got a response with zxid `at_zxid` on a connection whose server attached
    /// its session at `attached_zxid`, still waiting for `nodes` (token `token`): a grant
    /// that server applied after the attach, at or below `at_zxid`, had to be pushed
    /// before the response.
    fn check_grant_pushed(
        &mut self,
        client: usize,
        nodes: &[String],
        token: u64,
        attached_zxid: u64,
        at_zxid: u64,
    ) {
        for node in nodes {
            let Some(zxid) = self.changes.grant_zxid(node, token) else {
                continue;
            };
            if attached_zxid < zxid && zxid <= at_zxid {
                let v = Violation {
                    kind: ViolationKind::GrantNotTold,
                    at_us: self.now,
                    detail: format!(
                        "c{client} got a response at zxid {at_zxid} while waiting for {node} \
                         (token {token}), which its server granted at zxid {zxid}, after \
                         attaching its session at zxid {attached_zxid}, without telling it"
                    ),
                };
                return self.violate(v);
            }
        }
    }

    /// A waiter gave up on its queue node `node`. If the entry that granted it was
    /// applied by the server the waiter has been attached to (through `conn`) since
    /// before that moment, and the waiter was not paused since, the server had to push
    /// the grant, and a pushed message arrives within a few connection delays: the
    /// server never told it (a lost `LockGranted`, as after a snapshot install that
    /// skipped the granting entry). Whatever the connection, the answer that said
    /// "queued" (at `answered_zxid`) must not come after the grant: a retried request
    /// answered from the deduplication table once its node is granted must say so.
    fn check_grant_told(
        &mut self,
        client: usize,
        node: &str,
        token: u64,
        conn: Option<ConnId>,
        answered_zxid: u64,
    ) {
        let Some(zxid) = self.changes.grant_zxid(node, token) else {
            return;
        };
        if zxid <= answered_zxid {
            let v = Violation {
                kind: ViolationKind::GrantNotTold,
                at_us: self.now,
                detail: format!(
                    "c{client} gave up waiting for {node} (token {token}): it was answered \
                     queued at zxid {answered_zxid}, after the grant at zxid {zxid}"
                ),
            };
            self.violate(v);
            return;
        }
        let Some(info) = conn.and_then(|c| self.conns.get(&c)) else {
            return;
        };
        let n = info.node;
        if !info.client_open || !info.server_open || self.nodes[n].inc != info.inc {
            return;
        }
        let Some(attached) = info.attached_at else {
            return;
        };
        let Some(applied) = self.nodes[n]
            .applied_at
            .range(zxid..)
            .next()
            .map(|(_, t)| *t)
        else {
            return;
        };
        let resumed = self.resumed_at.get(&client).copied().unwrap_or(0);
        // Strictly after the attach: a node that restarted recovers its state without
        // pushing anything, and a client that attaches then re-reads its locks instead.
        if attached >= applied || resumed >= applied || self.now < applied + GRANT_TOLD_WITHIN_US {
            return;
        }
        let v = Violation {
            kind: ViolationKind::GrantNotTold,
            at_us: self.now,
            detail: format!(
                "c{client} gave up waiting for {node} (token {token}), granted at zxid {zxid}, \
                 which n{} (its server since {}) applied at {}",
                self.nodes[n].id,
                fmt_time(attached),
                fmt_time(applied)
            ),
        };
        self.violate(v);
    }

    // -----------------------------------------------------------------------------------
    // Faults
    // -----------------------------------------------------------------------------------

    fn resolve(&mut self, t: Target) -> usize {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|n| matches!(self.nodes[*n].state, NodeState::Up(_)))
            .collect();
        let leader = up.iter().copied().find(|n| match &self.nodes[*n].state {
            NodeState::Up(u) => u.node.is_leader(),
            _ => false,
        });
        match t {
            Target::Node(id) => (id as usize - 1).min(self.nodes.len() - 1),
            Target::Leader => {
                leader.unwrap_or_else(|| self.rng.range(0, self.nodes.len() as u64) as usize)
            }
            Target::Follower => {
                let followers: Vec<usize> = (0..self.nodes.len())
                    .filter(|n| Some(*n) != leader)
                    .collect();
                *self.rng.pick(&followers).unwrap_or(&0)
            }
        }
    }

    fn fault_start(&mut self, index: usize) {
        if self.healed() {
            return;
        }
        let f = self.plan[index];
        self.stats.faults += 1;
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        match f.kind {
            FaultKind::Partition(shape) => {
                let mut blocked = BTreeSet::new();
                let n = ids.len();
                match shape {
                    Shape::Halves { salt } => {
                        let mut order = ids.clone();
                        let mut r = SimRng::new(salt);
                        for i in (1..n).rev() {
                            let j = r.range_incl(0, i as u64) as usize;
                            order.swap(i, j);
                        }
                        let (a, b) = order.split_at(n / 2);
                        for x in a {
                            for y in b {
                                blocked.insert((*x, *y));
                                blocked.insert((*y, *x));
                            }
                        }
                    }
                    Shape::Isolate(t) => {
                        let x = ids[self.resolve(t)];
                        for y in &ids {
                            if *y != x {
                                blocked.insert((x, *y));
                                blocked.insert((*y, x));
                            }
                        }
                    }
                    Shape::Ring { salt } => {
                        let mut order = ids.clone();
                        let mut r = SimRng::new(salt);
                        for i in (1..n).rev() {
                            let j = r.range_incl(0, i as u64) as usize;
                            order.swap(i, j);
                        }
                        for i in 0..n {
                            for j in 0..n {
                                let d = (i + n - j) % n;
                                let neighbours = d == 1 || d == n - 1 || d == 0;
                                // 3 nodes: a line (the ends do not talk).
                                let line_cut = n == 3 && ((i == 0 && j == 2) || (i == 2 && j == 0));
                                if !neighbours || line_cut {
                                    blocked.insert((order[i], order[j]));
                                }
                            }
                        }
                    }
                    Shape::OneWay { from, to } => {
                        let a = ids[self.resolve(from)];
                        let mut b = ids[self.resolve(to)];
                        if a == b {
                            b = ids[(self.resolve(to) + 1) % n];
                        }
                        blocked.insert((a, b));
                    }
                }
                self.note(format!(
                    "fault {index}: partition {shape:?} cuts {blocked:?} for {}ms",
                    f.duration_ms
                ));
                for (a, b) in &blocked {
                    let link = self.links.get(&(*a, *b)).copied().unwrap_or_default();
                    if link.up {
                        self.break_link(*a, *b);
                    }
                }
                self.partitions.insert(index, blocked);
                self.schedule(self.now + f.duration_ms * 1000, Ev::FaultEnd { index });
            }
            FaultKind::Crash(t) => {
                let n = self.resolve(t);
                self.note(format!("fault {index}: crash n{}", ids[n]));
                if !matches!(self.nodes[n].state, NodeState::Down) {
                    self.crash_node(n, Some(f.duration_ms * 1000), false);
                }
            }
            FaultKind::Wipe(t) => {
                let n = self.resolve(t);
                self.note(format!("fault {index}: wipe n{}", ids[n]));
                if !matches!(self.nodes[n].state, NodeState::Down) {
                    self.crash_node(n, Some(f.duration_ms * 1000), true);
                }
            }
            FaultKind::CrashAll => {
                self.note(format!("fault {index}: crash every node"));
                for n in 0..self.nodes.len() {
                    if !matches!(self.nodes[n].state, NodeState::Down) {
                        let stagger = self.rng.range(0, 50_000);
                        self.crash_node(n, Some(f.duration_ms * 1000 + stagger), false);
                    }
                }
            }
            FaultKind::Pause(t) => {
                let n = self.resolve(t);
                if matches!(self.nodes[n].state, NodeState::Down) || self.nodes[n].paused {
                    return;
                }
                self.note(format!(
                    "fault {index}: pause n{} for {}ms",
                    ids[n], f.duration_ms
                ));
                self.nodes[n].paused = true;
                self.paused_nodes.insert(index, (n, self.nodes[n].inc));
                self.schedule(self.now + f.duration_ms * 1000, Ev::FaultEnd { index });
            }
            FaultKind::PauseClient(c) => {
                if c >= self.clients.len() || self.clients[c].paused {
                    return;
                }
                self.note(format!("fault {index}: pause c{c} for {}ms", f.duration_ms));
                self.clients[c].paused = true;
                self.schedule(self.now + f.duration_ms * 1000, Ev::FaultEnd { index });
            }
            FaultKind::DropConnection(c) => {
                if let Some((conn, node)) = self.clients.get(c).and_then(|c| c.connection()) {
                    self.note(format!("fault {index}: break c{c}'s connection to n{node}"));
                    let server_open = self.conns.get(&conn).is_some_and(|i| i.server_open);
                    if server_open {
                        self.deliver_to_server(conn, ToServer::Disconnected);
                    }
                    self.server_side_gone(conn);
                }
            }
        }
    }

    fn fault_end(&mut self, index: usize) {
        let f = self.plan[index];
        match f.kind {
            FaultKind::Partition(_) => {
                let Some(blocked) = self.partitions.remove(&index) else {
                    return;
                };
                self.note(format!("fault {index}: partition heals"));
                self.links_healed(blocked);
            }
            FaultKind::Pause(_) => {
                if let Some((n, inc)) = self.paused_nodes.remove(&index) {
                    if self.nodes[n].inc == inc && self.nodes[n].paused {
                        self.resume_node(n);
                    }
                }
            }
            FaultKind::PauseClient(c) => self.resume_client(c),
            _ => {}
        }
    }

    /// Cut links come back at the transport's next reconnection attempt; in hostile
    /// runs (no link epochs) the sender is told at once.
    fn links_healed(&mut self, pairs: BTreeSet<(u64, u64)>) {
        for (a, b) in pairs {
            if self.blocked(a, b) || self.cfg.net.fifo {
                continue;
            }
            let n = a as usize - 1;
            if matches!(self.nodes[n].state, NodeState::Up(_)) {
                let inc = self.nodes[n].inc;
                let at = self.now + self.reconnect_delay();
                self.schedule(
                    at,
                    Ev::Link {
                        node: n,
                        inc,
                        peer: b,
                        up: true,
                    },
                );
            }
        }
    }

    fn resume_node(&mut self, n: usize) {
        let id = self.nodes[n].id;
        self.nodes[n].paused = false;
        self.note(format!("n{id} resumes"));
        let held = std::mem::take(&mut self.nodes[n].held);
        for ev in held {
            self.schedule(self.now, ev);
        }
        let inc = self.nodes[n].inc;
        match &self.nodes[n].state {
            NodeState::Up(_) => self.schedule(self.now, Ev::Tick { node: n, inc }),
            NodeState::Joining(_) => self.schedule(self.now, Ev::JoinQuery { node: n, inc }),
            NodeState::Down => {}
        }
    }

    fn resume_client(&mut self, c: usize) {
        if !self.clients[c].paused {
            return;
        }
        self.clients[c].paused = false;
        self.resumed_at.insert(c, self.now);
        self.note(format!("c{c} resumes"));
        for ev in self.paused_client_events.remove(&c).unwrap_or_default() {
            self.schedule(self.now, ev);
        }
        self.schedule(self.now, Ev::ClientWake { client: c });
    }

    fn heal(&mut self) {
        self.heal_us = Some(self.now);
        self.note("faults heal; clients wind down".to_string());
        let parts: Vec<usize> = self.partitions.keys().copied().collect();
        let mut all = BTreeSet::new();
        for p in parts {
            if let Some(b) = self.partitions.remove(&p) {
                all.extend(b);
            }
        }
        self.links_healed(all);
        for n in 0..self.nodes.len() {
            self.nodes[n].disk.set_faults(SimDiskFaults {
                lying_fsync: self.cfg.switches.skip_fsync,
                fail_sync_per_mille: 0,
                capacity_bytes: None,
            });
            if self.nodes[n].paused {
                self.resume_node(n);
            }
            let failed = match &self.nodes[n].state {
                NodeState::Up(up) => matches!(&up.backend, Backend::Local(s) if s.failed),
                _ => false,
            };
            if failed {
                self.crash_node(n, None, false);
            }
            if matches!(self.nodes[n].state, NodeState::Down) {
                self.start_node(n);
            }
        }
        self.paused_nodes.clear();
        for c in 0..self.clients.len() {
            self.resume_client(c);
            self.clients[c].wind_down();
            if let Some(conn) = self.clients[c].take_dropped() {
                self.client_actions(c, vec![CAction::Drop { conn }]);
            }
        }
        let e = self.cfg.election_ms * 1000;
        self.schedule(self.now + 2 * e, Ev::ProbeStart);
        self.schedule(self.now + self.lock_bound_us(), Ev::LivenessCheck);
    }

    /// After healing, every lock must be acquirable within this long.
    pub(super) fn lock_bound_us(&self) -> u64 {
        let ttl = self.cfg.session_ttl_ms * 1000;
        let e = self.cfg.election_ms * 1000;
        ttl + 4 * e + self.cfg.lock_delay_ms * 1000 + 300_000
    }

    /// How long a node spent decoding a snapshot after the heal, at the most: a leader
    /// that installs one applies nothing meanwhile (no keepalive is confirmed, no grant
    /// is answered), so the liveness bounds start counting only after it. One decode in
    /// ten is modelled at up to a second, more than the lock bound.
    fn decode_slack_us(&self, heal: u64) -> u64 {
        self.decodes
            .iter()
            .map(|&(start, end)| end.saturating_sub(start.max(heal)))
            .max()
            .unwrap_or(0)
    }

    fn request_bound_us(&self) -> u64 {
        let ttl = self.cfg.session_ttl_ms * 1000;
        let e = self.cfg.election_ms * 1000;
        5 * e + 2 * ttl + 2 * self.client_cfg.request_timeout_us + 1_000_000
    }

    fn liveness_check(&mut self) {
        let Some(heal) = self.heal_us else {
            return;
        };
        // Time spent decoding a snapshot does not count (`decode_slack_us`).
        let slack = self.decode_slack_us(heal);
        let waited = (self.now - heal).saturating_sub(slack);
        // Locks first (the earlier deadline), then requests.
        if waited >= self.lock_bound_us() && !self.lock_checked {
            self.lock_checked = true;
            for i in 0..self.cfg.locks {
                let lock = format!("/locks/l{i}");
                if !self.probe_acquired.contains_key(&lock) {
                    let states: Vec<String> = self
                        .nodes
                        .iter()
                        .filter_map(|n| match &n.state {
                            NodeState::Up(up) => Some(format!(
                                "n{} (zxid {}, leader {:?}): {:?}",
                                n.id,
                                up.node.machine().last_zxid(),
                                up.node.leader(),
                                up.node.machine().locks_under(&lock)
                            )),
                            _ => None,
                        })
                        .collect();
                    return self.violate(Violation {
                        kind: ViolationKind::LockNotAcquirable,
                        at_us: self.now,
                        detail: format!(
                            "{lock} was not acquired within {} ms after the faults healed \
                             (TTL {} ms, election {} ms, lock-delay {} ms, {} ms decoding a \
                             snapshot); the nodes say: {}",
                            self.lock_bound_us() / 1000,
                            self.cfg.session_ttl_ms,
                            self.cfg.election_ms,
                            self.cfg.lock_delay_ms,
                            slack / 1000,
                            states.join("; ")
                        ),
                    });
                }
            }
        }
        if waited < self.request_bound_us() {
            let all_done = self
                .clients
                .iter()
                .all(|c| c.mode == Mode::Done && c.pending_count() == 0);
            let at = if all_done {
                self.now
            } else {
                heal + slack + self.request_bound_us()
            };
            if all_done {
                self.schedule(at, Ev::ConvergeCheck);
            } else {
                self.schedule(at.min(self.now + 100_000), Ev::LivenessCheck);
            }
            return;
        }
        for c in &self.clients {
            if c.pending_count() > 0 {
                let detail = format!(
                    "client c{} still has {} unanswered requests {} ms after the faults healed \
                     ({} ms decoding a snapshot; oldest sent at {})",
                    c.id,
                    c.pending_count(),
                    (self.now - heal) / 1000,
                    slack / 1000,
                    fmt_time(c.oldest_pending_us().unwrap_or(0))
                );
                return self.violate(Violation {
                    kind: ViolationKind::RequestStuck,
                    at_us: self.now,
                    detail,
                });
            }
        }
        self.schedule(self.now, Ev::ConvergeCheck);
    }

    fn converge_check(&mut self) {
        let mut states = Vec::new();
        for n in &self.nodes {
            match &n.state {
                NodeState::Up(up) => {
                    let m = up.node.machine();
                    states.push((n.id, m.last_zxid(), m.state_hash()));
                }
                _ => states.push((n.id, 0, 0)),
            }
        }
        let max = states.iter().map(|s| s.1).max().unwrap_or(0);
        let same = states
            .iter()
            .all(|s| s.1 == states[0].1 && s.2 == states[0].2 && s.2 != 0);
        let Some(heal) = self.heal_us else {
            return;
        };
        if same && max >= self.checks.max_zxid {
            self.note(format!("converged at zxid {max}"));
            self.final_checks(max);
            self.done = true;
            return;
        }
        let deadline = heal + self.request_bound_us() + self.lock_bound_us() + 10_000_000;
        if self.now > deadline {
            return self.violate(Violation {
                kind: ViolationKind::NotConverged,
                at_us: self.now,
                detail: format!("nodes (id, zxid, hash) did not converge: {states:x?}"),
            });
        }
        self.schedule(self.now + 50_000, Ev::ConvergeCheck);
    }

    fn final_checks(&mut self, final_zxid: u64) {
        for z in self.checks.acked_zxids() {
            if z > final_zxid {
                return self.violate(Violation {
                    kind: ViolationKind::AckedWriteLost,
                    at_us: self.now,
                    detail: format!(
                        "a write acknowledged at zxid {z} is beyond the converged log's end \
                         {final_zxid}"
                    ),
                });
            }
        }
        for n in 0..self.nodes.len() {
            let id = self.nodes[n].id;
            if let NodeState::Up(up) = &self.nodes[n].state {
                if let Err(v) = self.checks.on_state(id, up.node.machine(), self.now) {
                    return self.violate(v);
                }
            }
        }
    }
}
