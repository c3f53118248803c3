//! What a run looks like: the parameters drawn from the seed, and the schedule of faults.

use super::rng::SimRng;
use crate::faults::FaultSwitches;
use crate::machine::MachineLimits;
use corral_protocol::LockKind;
use std::collections::BTreeSet;
use std::fmt;

/// How the network between nodes behaves in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetProfile {
    /// Shortest one-way delay, microseconds.
    pub delay_min_us: u64,
    /// Longest usual one-way delay, microseconds.
    pub delay_max_us: u64,
    /// Chance (per mille) of a delay spike up to `spike_max_us`.
    pub spike_per_mille: u64,
    /// Longest spike, microseconds.
    pub spike_max_us: u64,
    /// Chance (per mille) that a message is lost.
    pub loss_per_mille: u64,
    /// Chance (per mille) that a message is delivered twice.
    pub dup_per_mille: u64,
    /// The transport's contract (the default): messages on one link arrive in the order
    /// sent, a loss (or a cut) ends the link, and the sender gets `LinkUp` when it is
    /// re-established. `false` ("hostile", off the contract): delays reorder messages,
    /// duplicates happen, and losses are silent.
    pub fifo: bool,
}

/// How the disks behave in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskProfile {
    /// Shortest time a sync takes, microseconds.
    pub latency_min_us: u64,
    /// Longest usual time a sync takes, microseconds.
    pub latency_max_us: u64,
    /// Chance (per mille) that the machine loses power during a sync (the node crashes,
    /// its last write possibly torn).
    pub crash_in_sync_per_mille: u64,
    /// Chance (per mille) that a sync fails with an IO error (the node exits, as in
    /// production, and restarts).
    pub fail_sync_per_mille: u32,
}

/// Which node a fault hits, resolved when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whoever leads at that moment (any node if nobody does).
    Leader,
    /// A node that does not lead at that moment.
    Follower,
    /// This node.
    Node(u64),
}

/// The shape of a network partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Two halves (the larger one has a majority); `salt` picks the split.
    Halves { salt: u64 },
    /// One node cut off from all others.
    Isolate(Target),
    /// Every node talks only to its ring neighbours (5 nodes: everybody still sees a
    /// majority through different neighbours; 3 nodes: a line).
    Ring { salt: u64 },
    /// Messages from one node to another are lost; the other way works.
    OneWay {
        /// Sender whose messages are dropped.
        from: Target,
        /// Receiver.
        to: Target,
    },
}

/// One fault of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Cut links for `duration_ms`.
    Partition(Shape),
    /// Crash a node (a power cut: its unsynced writes are lost) and restart it after
    /// `duration_ms`.
    Crash(Target),
    /// Crash every node at once and restart them after `duration_ms` (staggered).
    CrashAll,
    /// Stop a node (SIGSTOP) for `duration_ms`; its clock keeps running.
    Pause(Target),
    /// Stop a client for `duration_ms`.
    PauseClient(usize),
    /// Break a client's connection.
    DropConnection(usize),
    /// Crash a node and restart it with an empty disk after `duration_ms` (off in the
    /// standard mix: a second wipe before the first wiped node caught up leaves a
    /// majority without its disk, and the cluster then rightly waits for good;
    /// `sim_wiped_disk_seeds` plans at most one per run).
    Wipe(Target),
}

/// A scheduled fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedFault {
    /// When it starts, milliseconds after the workload starts.
    pub at_ms: u64,
    /// How long it lasts.
    pub duration_ms: u64,
    /// What it is.
    pub kind: FaultKind,
}

impl fmt::Display for PlannedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {}ms for {}ms: {:?}",
            self.at_ms, self.duration_ms, self.kind
        )
    }
}

/// Relative frequency of each kind of fault in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultMix {
    /// Partitions.
    pub partitions: u64,
    /// Single-node crashes.
    pub crashes: u64,
    /// Whole-cluster crashes.
    pub crash_all: u64,
    /// Node pauses.
    pub pauses: u64,
    /// Client pauses.
    pub client_pauses: u64,
    /// Broken client connections.
    pub drops: u64,
    /// Wiped disks.
    pub wipes: u64,
}

impl FaultMix {
    /// Every kind except wiped disks.
    pub fn standard() -> FaultMix {
        FaultMix {
            partitions: 6,
            crashes: 4,
            crash_all: 1,
            pauses: 3,
            client_pauses: 2,
            drops: 2,
            wipes: 0,
        }
    }

    /// No faults at all.
    pub fn none() -> FaultMix {
        FaultMix {
            partitions: 0,
            crashes: 0,
            crash_all: 0,
            pauses: 0,
            client_pauses: 0,
            drops: 0,
            wipes: 0,
        }
    }
}

/// Everything that defines a run. [`SimConfig::from_seed`] draws the parameters from the
/// seed; tests then adjust fields (fault switches, fault mix) before running.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed: with the same configuration, the same seed gives the same run.
    pub seed: u64,
    /// Cluster size (3 or 5).
    pub nodes: usize,
    /// Workload clients.
    pub clients: usize,
    /// Length of the faulty phase, milliseconds of simulated time.
    pub fault_ms: u64,
    /// Mean time between the starts of two faults, milliseconds.
    pub fault_gap_ms: u64,
    /// Kinds of faults.
    pub mix: FaultMix,
    /// Node tick, milliseconds.
    pub tick_ms: u64,
    /// Election timeout, milliseconds (a multiple of the tick).
    pub election_ms: u64,
    /// Session TTL the clients ask for, milliseconds.
    pub session_ttl_ms: u64,
    /// Smallest TTL the server grants.
    pub min_session_ttl_ms: u64,
    /// Entries between snapshots (log compaction).
    pub snapshot_every_entries: u64,
    /// WAL segment size, bytes (small, so segments roll and are deleted).
    pub segment_bytes: u64,
    /// Obsolete log bytes before a checkpoint record.
    pub checkpoint_bytes: u64,
    /// Registers (keys) of the linearizability workload.
    pub keys: usize,
    /// Locks of the workload.
    pub locks: usize,
    /// The kind of each lock (`/locks/l<i>`): `Exclusive`; `Write` stands for a
    /// read-write lock, requested `Read` or `Write` at random; `Semaphore`. Shorter than
    /// `locks`: the rest are exclusive.
    pub lock_families: Vec<LockKind>,
    /// Lock-delay set on the locks, milliseconds (0: none).
    pub lock_delay_ms: u64,
    /// Clock rate spread of nodes and clients, parts per million (±).
    pub clock_ppm: i64,
    /// The network.
    pub net: NetProfile,
    /// The disks.
    pub disk: DiskProfile,
    /// Deliberately injected bugs.
    pub switches: FaultSwitches,
    /// Indexes of planned faults to leave out (set by shrinking).
    pub skip_faults: BTreeSet<usize>,
    /// Compare state hashes and check the state machine's invariants whenever a node's
    /// applied zxid changes (otherwise only every 16th change, and at the end).
    pub hash_every_change: bool,
    /// Wall-clock limit of the final linearizability check, milliseconds.
    pub checker_ms: u64,
    /// Clients count every successful answer as a renewal of their session (what
    /// `corral-client` did before it was fixed), not only pings, lease renewals and
    /// handshakes.
    pub renew_on_any_answer: bool,
    /// Clients raise the zxid their next `SetWatches` sends on watch events too, not
    /// only on responses (what `corral-client` did before it was fixed): a connection
    /// lost between two events of one zxid then loses the second.
    pub seen_on_events: bool,
    /// Inputs a node's core takes in before it ends its pass (1: every input flushes
    /// the log at once, as `Node::handle` does).
    pub pass_inputs: usize,
    /// A pass that has not reached `pass_inputs` ends within this many µs of opening.
    pub pass_window_us: u64,
    /// Chance (per mille) that a workload client, resuming its session after its
    /// connection broke, gives up on some of its unanswered writes instead of resending
    /// them, as `corral-client` does with a call whose caller timed out or went away:
    /// their outcome stays unknown, and the client goes on with higher xids (0: never).
    pub give_up_per_mille: u64,
    /// The session write order check (`check.rs`) also holds plain `Write` entries to
    /// their session's xid order, which only `OrderedWrite` entries promise: it then
    /// reports the reordering that `Write` entries allow (a demonstration, not a check).
    /// Nodes propose `Write` entries only while a link is below peer protocol 2, which
    /// the simulated links are not (they speak `PEER_PROTOCOL_VERSION`).
    pub check_order_of_all_writes: bool,
    /// A rolling upgrade: until this time (ms of simulated time) every node runs a server
    /// of an older peer protocol (`old_peer_version`: its links speak version 1, so client
    /// writes are proposed as `Write`, or 2, `OrderedWrite`); from then on the nodes are upgraded one after another, two
    /// election timeouts apart, and their links re-established, and links between
    /// upgraded nodes speak the newest version (`AckedWrite`). `None`: every node runs
    /// the newest from the start.
    pub upgrade_at_ms: Option<u64>,
    /// The peer protocol version of the nodes before a rolling upgrade
    /// (`upgrade_at_ms`): 1 (client writes proposed as `Write`) or 2 (`OrderedWrite`).
    pub old_peer_version: u16,
    /// Workload clients send `Acknowledge` before a write once the lowest xid they
    /// await an answer for has moved this far past their last acknowledgement, so that
    /// `AckedWrite` entries trim the deduplication tables (0: never).
    pub ack_every: u64,
    /// Bytes of entries between compaction points the leader marks
    /// ([`crate::compaction`]); `u64::MAX`: only the multiples of
    /// `snapshot_every_entries` are points.
    pub snapshot_every_bytes: u64,
    /// Chance (per mille) that a workload client's lock task is a multi-lock
    /// (`LockMany` of two or three of the locks, granted and released together) rather
    /// than one lock; only with two locks or more (0: never).
    pub multi_lock_per_mille: u64,
    /// Chance (per mille) that a workload client's read sets a watch (a plain read then
    /// reads a register key, `/eph`'s children, or whether some client's ephemeral node
    /// exists, or adds a persistent watch, plain or recursive, on a register key, `/reg`,
    /// `/eph` or an ephemeral node; a linearizable
    /// read of a register key keeps its key), which the client re-registers after every
    /// reconnect and whose events are checked (`sim/watch.rs`; 0: clients set no
    /// watches).
    pub watch_per_mille: u64,
    /// Chance (per mille) that a workload client ends a hold under its lease by revoking
    /// the lease (`RevokeLease`, which releases every lock held or awaited under it)
    /// rather than releasing the lock; it then takes a new lease later (0: never).
    pub revoke_per_mille: u64,
    /// Chance (per mille) that a workload client's register write is a compare-and-set
    /// on the version it last learned of the key (a conditional `SetData`, or a multi
    /// with a `Check`), checked with the reads and writes as a versioned register
    /// (0: blind writes only).
    pub cas_per_mille: u64,
    /// Chance (per mille) that a workload client's plain read is a lock listing
    /// (`GetLocks` of a lock or of `/locks`, or a `GetLocksPage`) or a `ServerStatus`,
    /// checked against the locks and queue nodes existing at its zxid (`sim/reads.rs`;
    /// 0: none).
    pub list_locks_per_mille: u64,
    /// The weight of container tasks among a workload client's tasks (the others weigh
    /// 80 to 93 together): `sim/containers.rs`'s creates, leaves, deletes, multis and
    /// reads, whose reaping is checked on every entry (0: none).
    pub container_weight: u64,
    /// How many write results each session's deduplication table keeps
    /// (`MachineLimits::dedup_window`, 1,024 in production): small in a quarter of the
    /// seeds, so that results are evicted by the window and not only by acknowledgements.
    pub dedup_window: usize,
}

/// A chance per mille drawn from rng stream `stream` of `seed`: 0 in a quarter of the
/// seeds, otherwise from `low` to `high`.
fn three_seeds_in_four(seed: u64, stream: u64, low: u64, high: u64) -> u64 {
    let mut rng = SimRng::stream(seed, stream);
    if rng.chance(250) {
        0
    } else {
        rng.range_incl(low, high)
    }
}

impl SimConfig {
    /// The parameters of the run for `seed`.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = SimRng::stream(seed, 1);
        let nodes = if rng.chance(250) { 5 } else { 3 };
        let tick_ms = *rng.pick(&[10u64, 20, 25]).unwrap_or(&20);
        let election_ms = tick_ms * rng.range_incl(6, 12);
        let min_ttl = election_ms * 3 / 2;
        let session_ttl_ms = (min_ttl + rng.range_incl(0, 3) * election_ms).max(300);
        // Links keep the transport's contract (in order, any loss ends the link and
        // `LinkUp` follows its re-establishment); `fifo: false` runs break it on purpose.
        let hostile = false;
        let _ = rng.chance(300);
        let net = NetProfile {
            delay_min_us: rng.range_incl(50, 300),
            delay_max_us: rng.range_incl(500, 3_000),
            spike_per_mille: rng.range_incl(0, 20),
            spike_max_us: rng.range_incl(5_000, 80_000),
            loss_per_mille: if hostile {
                rng.range_incl(5, 40)
            } else {
                rng.range_incl(0, 3)
            },
            dup_per_mille: if hostile { rng.range_incl(0, 20) } else { 0 },
            fifo: !hostile,
        };
        let disk = DiskProfile {
            latency_min_us: rng.range_incl(100, 500),
            latency_max_us: rng.range_incl(1_000, 8_000),
            crash_in_sync_per_mille: if rng.chance(300) {
                rng.range_incl(1, 4)
            } else {
                0
            },
            fail_sync_per_mille: if rng.chance(100) { 1 } else { 0 },
        };
        // Drawn from a stream of their own: the other parameters of a seed stay as they
        // were before passes were simulated.
        let mut pass_rng = SimRng::stream(seed, 4);
        let (pass_inputs, pass_window_us) = if pass_rng.chance(250) {
            (1, 0)
        } else {
            (
                pass_rng.range_incl(2, 64) as usize,
                pass_rng.range_incl(0, 500),
            )
        };
        // A stream of its own too, so that the rest of the seed's run stays as it was
        // before clients gave up on writes.
        let mut give_up_rng = SimRng::stream(seed, 5);
        let give_up_per_mille = if give_up_rng.chance(250) {
            0
        } else {
            give_up_rng.range_incl(100, 700)
        };
        let mut upgrade_rng = SimRng::stream(seed, 6);
        let upgrade_at_ms = upgrade_rng
            .chance(250)
            .then(|| upgrade_rng.range_incl(0, 3_000));
        let old_peer_version = if upgrade_rng.chance(500) { 1 } else { 2 };
        let mut ack_rng = SimRng::stream(seed, 7);
        let ack_every = if ack_rng.chance(250) {
            0
        } else {
            *ack_rng.pick(&[1u64, 2, 8, 32]).unwrap_or(&8)
        };
        let mut points_rng = SimRng::stream(seed, 8);
        let snapshot_every_bytes = if points_rng.chance(250) {
            u64::MAX
        } else {
            points_rng.range_incl(1, 16) << 9
        };
        // Each of these workloads is on in three seeds in four, from a stream of its own,
        // so that runs without it stay as they were before it existed.
        let multi_lock_per_mille = three_seeds_in_four(seed, 9, 100, 600);
        let watch_per_mille = three_seeds_in_four(seed, 11, 200, 800);
        let revoke_per_mille = three_seeds_in_four(seed, 12, 100, 500);
        let cas_per_mille = three_seeds_in_four(seed, 13, 200, 700);
        let list_locks_per_mille = three_seeds_in_four(seed, 14, 200, 800);
        let container_weight = three_seeds_in_four(seed, 15, 4, 16);
        let mut window_rng = SimRng::stream(seed, 16);
        let dedup_window = if window_rng.chance(250) {
            window_rng.range_incl(4, 16) as usize
        } else {
            MachineLimits::default().dedup_window
        };
        let mut c = SimConfig {
            seed,
            nodes,
            clients: rng.range_incl(3, 7) as usize,
            fault_ms: rng.range_incl(4_000, 9_000),
            fault_gap_ms: rng.range_incl(300, 1_200),
            mix: FaultMix::standard(),
            tick_ms,
            election_ms,
            session_ttl_ms,
            min_session_ttl_ms: min_ttl,
            snapshot_every_entries: rng.range_incl(40, 400),
            segment_bytes: rng.range_incl(4, 64) << 10,
            checkpoint_bytes: rng.range_incl(16, 128) << 10,
            keys: rng.range_incl(2, 5) as usize,
            locks: rng.range_incl(1, 3) as usize,
            lock_families: Vec::new(),
            lock_delay_ms: if rng.chance(400) {
                rng.range_incl(1, 4) * tick_ms * 5
            } else {
                0
            },
            clock_ppm: rng.range_incl(0, 50_000) as i64,
            net,
            disk,
            switches: FaultSwitches::default(),
            skip_faults: BTreeSet::new(),
            hash_every_change: true,
            checker_ms: 10_000,
            renew_on_any_answer: false,
            seen_on_events: false,
            pass_inputs,
            pass_window_us,
            give_up_per_mille,
            check_order_of_all_writes: false,
            upgrade_at_ms,
            old_peer_version,
            ack_every,
            snapshot_every_bytes,
            multi_lock_per_mille,
            watch_per_mille,
            revoke_per_mille,
            cas_per_mille,
            list_locks_per_mille,
            container_weight,
            dedup_window,
        };
        // Shared locks in three seeds in four, from a stream of their own too.
        let mut family_rng = SimRng::stream(seed, 10);
        let shared = !family_rng.chance(250);
        c.lock_families = (0..c.locks)
            .map(|_| match family_rng.range(0, 4) {
                2 if shared => LockKind::Write,
                3 if shared => LockKind::Semaphore {
                    permits: family_rng.range_incl(2, 3) as u32,
                },
                _ => LockKind::Exclusive,
            })
            .collect();
        c
    }

    /// The faults of this run, in start order (drawn from the seed and the mix; the
    /// skipped ones are still listed).
    pub fn plan(&self) -> Vec<PlannedFault> {
        let mut rng = SimRng::stream(self.seed, 2);
        let m = self.mix;
        let weights = [
            m.partitions,
            m.crashes,
            m.crash_all,
            m.pauses,
            m.client_pauses,
            m.drops,
            m.wipes,
        ];
        let mut plan = Vec::new();
        if weights.iter().all(|w| *w == 0) {
            return plan;
        }
        let ttl = self.session_ttl_ms;
        let election = self.election_ms;
        let mut at = rng.range(0, self.fault_gap_ms);
        while at < self.fault_ms {
            let target = |rng: &mut SimRng, nodes: usize| match rng.range(0, 3) {
                0 => Target::Leader,
                1 => Target::Follower,
                _ => Target::Node(rng.range_incl(1, nodes as u64)),
            };
            let (kind, duration_ms) = match rng.weighted(&weights) {
                0 => {
                    let shape = match rng.range(0, 4) {
                        0 => Shape::Halves {
                            salt: rng.next_u64(),
                        },
                        1 => Shape::Isolate(target(&mut rng, self.nodes)),
                        2 => Shape::Ring {
                            salt: rng.next_u64(),
                        },
                        _ => Shape::OneWay {
                            from: target(&mut rng, self.nodes),
                            to: target(&mut rng, self.nodes),
                        },
                    };
                    (
                        FaultKind::Partition(shape),
                        rng.range_incl(election / 2, 3 * ttl),
                    )
                }
                1 => (
                    FaultKind::Crash(target(&mut rng, self.nodes)),
                    rng.range_incl(20, 2 * ttl),
                ),
                2 => (FaultKind::CrashAll, rng.range_incl(20, ttl)),
                3 => (
                    FaultKind::Pause(target(&mut rng, self.nodes)),
                    rng.range_incl(election / 2, 2 * ttl),
                ),
                4 => (
                    FaultKind::PauseClient(rng.range(0, self.clients as u64) as usize),
                    rng.range_incl(ttl / 4, 2 * ttl),
                ),
                5 => (
                    FaultKind::DropConnection(rng.range(0, self.clients as u64) as usize),
                    0,
                ),
                _ => (
                    FaultKind::Wipe(target(&mut rng, self.nodes)),
                    rng.range_incl(20, ttl),
                ),
            };
            plan.push(PlannedFault {
                at_ms: at,
                duration_ms,
                kind,
            });
            at += rng.range_incl(self.fault_gap_ms / 4, 2 * self.fault_gap_ms);
        }
        plan
    }
}
