//! Deadlock detection over the lock queues: the wait-for graph between sessions.
//!
//! **What "waits for" means.** A queue node that is not eligible (see
//! [`crate::locks::eligible`]) waits for nodes ahead of it in its lock's queue:
//!
//! - an exclusive, write or semaphore node waits for *every* node ahead of it (FIFO: it
//!   cannot overtake them, so a cycle through queue order is a real deadlock). For a
//!   semaphore this is conservative: a node behind a full semaphore needs only some of
//!   the nodes ahead to go, but any of them may be the one in the cycle;
//! - a read node waits for the write nodes ahead of it (and, through them, for
//!   everything ahead of those);
//! - an eligible node (a multi-lock member that waits for its other locks) waits for
//!   nothing in that lock.
//!
//! A node leaves its queue when its session releases it, which a session that waits
//! does not do: a session waits for the sessions owning the nodes its waiting nodes
//! wait for. A deadlock is a cycle of sessions **through at least two locks**. A cycle
//! within one lock's queue only arises when a session queues behind its own node
//! (re-entrancy: `A` holds `L`, `B` waits, `A` asks for `L` again); a client may run
//! independent tasks on one session (a pool of workers taking turns on one lock), so
//! that is not reported. Across locks a session is taken for one actor: its holdings
//! wait for all of its waits.
//!
//! **Incremental.** These edges depend on queue order only, so a waiting node's edges
//! never grow: only a new waiting node adds edges, and grants, releases and expiries
//! only remove them. Every state is therefore deadlock-free if every new wait that would
//! close a cycle is refused: the check runs once per new waiting request, as a search
//! from the new node over the part of the graph it reaches, looking for its own
//! session. Edges are not stored: they are read off [`WaitIndex`], a per-lock ordered
//! index of the queues (predecessor and nearest-writer lookups in O(log n)) with each
//! session's waiting and granted nodes and the sessions with nodes in several locks,
//! updated for the locks each entry touched. The search has two phases: the owners of
//! the nodes ahead of the new node in its own queue that also wait in another lock (a
//! cycle must leave this lock, and their waits here are covered by this phase), found
//! by a plain scan of the queue or, when fewer sessions span several locks than the
//! queue is long, by looking up those sessions' nodes; then a depth-first search
//! through the other locks, where any node of the session closes a cycle. A search
//! costs O(min(nodes ahead in its own queue, spanning sessions x log n)) plus O(nodes
//! reached elsewhere x log n).
//!
//! **Victim.** The request that would close the cycle: the youngest wait in it. It is
//! refused with `Deadlock` naming the cycle and creates nothing, so the sessions already
//! waiting proceed as before. Detection runs in the apply step, so every node refuses
//! the same request (see ARCHITECTURE.md).

use crate::locks::{self, LockFamily, LockMeta};
use crate::tree::Tree;
use corral_protocol::deadlock::WaitStep;
use corral_protocol::LockKind;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

/// One queue node as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QNode {
    /// Its kind.
    pub kind: LockKind,
    /// The session owning it (the lease's owner for a node held under a lease).
    pub session: u64,
    /// Whether it holds the lock.
    pub granted: bool,
}

/// The queue of one lock, by sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockQueue {
    family: LockFamily,
    nodes: BTreeMap<u64, QNode>,
    /// Sequence numbers of the write nodes.
    writers: BTreeSet<u64>,
}

impl LockQueue {
    /// An empty queue of a lock of `family`.
    fn new(family: LockFamily) -> LockQueue {
        LockQueue {
            family,
            nodes: BTreeMap::new(),
            writers: BTreeSet::new(),
        }
    }

    /// The queue of `lock` in the replicated state.
    pub fn from_state(
        tree: &Tree,
        lock: &str,
        meta: &LockMeta,
        owner_session: impl Fn(u64) -> u64,
    ) -> LockQueue {
        let mut q = LockQueue::new(meta.family);
        for (name, kind) in locks::queue(tree, lock, meta.family) {
            let (Some(seq), Some(node)) = (
                locks::sequence(name),
                tree.get(&corral_protocol::path::join(lock, name)),
            ) else {
                continue;
            };
            q.nodes.insert(
                seq,
                QNode {
                    kind,
                    session: owner_session(node.stat.ephemeral_owner),
                    granted: meta.granted.contains(name),
                },
            );
            if kind == LockKind::Write {
                q.writers.insert(seq);
            }
        }
        q
    }

    /// Whether the node at `seq` (`u64::MAX`: a new node at the tail) of `kind` is
    /// eligible: it waits for nothing in this lock.
    fn eligible(&self, seq: u64, kind: LockKind) -> bool {
        match (self.family, kind) {
            (LockFamily::Semaphore(n), _) => {
                self.nodes.range(..seq).take(n as usize).count() < n as usize
            }
            (_, LockKind::Read) => self.writers.range(..seq).next_back().is_none(),
            _ => self.nodes.range(..seq).next_back().is_none(),
        }
    }

    /// The node a waiting node at `seq` of `kind` waits for first (the rest of what it
    /// waits for is ahead of that one): the nearest write node ahead for a read, the
    /// node just ahead otherwise; `None` when it is eligible.
    fn first_blocker(&self, seq: u64, kind: LockKind) -> Option<u64> {
        if self.eligible(seq, kind) {
            return None;
        }
        match kind {
            LockKind::Read => self.writers.range(..seq).next_back().copied(),
            _ => self.nodes.range(..seq).next_back().map(|(s, _)| *s),
        }
    }

    /// The node just ahead of `seq`.
    fn pred(&self, seq: u64) -> Option<u64> {
        self.nodes.range(..seq).next_back().map(|(s, _)| *s)
    }

    /// Nodes in queue order.
    pub fn nodes(&self) -> impl Iterator<Item = (u64, &QNode)> {
        self.nodes.iter().map(|(s, n)| (*s, n))
    }
}

/// The lock queues, indexed for the wait-for search. Derived from the replicated state
/// (rebuilt after a snapshot is loaded, updated after every entry), never serialized;
/// ordered maps, so searches visit nodes in the same order on every node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitIndex {
    built: bool,
    /// By lock path. The key is shared (a reference count, not a copy) by the lock's
    /// pairs in `waiting` and `held`.
    queues: BTreeMap<Arc<str>, LockQueue>,
    /// Per session, its waiting (not granted) nodes: (lock, sequence number).
    waiting: BTreeMap<u64, BTreeSet<(Arc<str>, u64)>>,
    /// Per session, its granted nodes: (lock, sequence number).
    held: BTreeMap<u64, BTreeSet<(Arc<str>, u64)>>,
    /// The sessions with nodes in more than one lock: the only ones through which a
    /// wait can leave a lock (see `find_cycle`).
    spanning: BTreeSet<u64>,
    /// What [`WaitIndex::counts`] reports, kept by every change above.
    counts: QueueCounts,
}

/// Locks with at least one queue node, and their queue nodes that hold and that wait.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Locks whose queue is not empty.
    pub locks: u64,
    /// Queue nodes holding their lock.
    pub held: u64,
    /// Queue nodes waiting.
    pub waiting: u64,
}

impl QueueCounts {
    /// Counts one queue node in (`add`) or out of `granted`'s total.
    fn node(&mut self, granted: bool, add: bool) {
        let total = if granted {
            &mut self.held
        } else {
            &mut self.waiting
        };
        *total = if add {
            total.saturating_add(1)
        } else {
            total.saturating_sub(1)
        };
    }

    /// Counts a queue that became non-empty (`add`) or empty.
    fn queue(&mut self, add: bool) {
        self.locks = if add {
            self.locks.saturating_add(1)
        } else {
            self.locks.saturating_sub(1)
        };
    }
}

/// One entry of the search's stack.
#[derive(Clone, Copy)]
struct Step {
    /// The visit.
    at: usize,
    /// A waiting node of a session hopped into (else a node that must go).
    waiting: bool,
    /// The session whose waiting node began the walk through this lock.
    waiter: u64,
}

/// What a search visited: a node reached from `parent`, by a hop from a node of the
/// session owning this one's (`hop`) or by queue order.
struct Visit<'a> {
    parent: usize,
    lock: &'a str,
    seq: u64,
    /// The session owning the node.
    session: u64,
    hop: bool,
}

impl WaitIndex {
    /// Whether the index reflects the state (false after a snapshot was loaded).
    pub fn is_built(&self) -> bool {
        self.built
    }

    /// Marks the index as built (after every lock was set).
    pub fn mark_built(&mut self) {
        self.built = true;
    }

    /// Forgets everything (before a rebuild).
    pub fn clear(&mut self) {
        *self = WaitIndex::default();
    }

    /// Replaces the queue of `lock` (`None`: the lock is gone).
    pub fn set_lock(&mut self, lock: &str, queue: Option<LockQueue>) {
        if let Some((key, old)) = self.queues.remove_entry(lock) {
            for (seq, n) in &old.nodes {
                remove_pair(self.by_status(n.granted), n.session, &key, *seq);
                self.respan(n.session);
                self.counts.node(n.granted, false);
            }
            if !old.nodes.is_empty() {
                self.counts.queue(false);
            }
        }
        let Some(queue) = queue else {
            return;
        };
        let key: Arc<str> = Arc::from(lock);
        for (seq, n) in &queue.nodes {
            insert_pair(self.by_status(n.granted), n.session, &key, *seq);
            self.respan(n.session);
            self.counts.node(n.granted, true);
        }
        if !queue.nodes.is_empty() {
            self.counts.queue(true);
        }
        self.queues.insert(key, queue);
    }

    /// Adds a queue node (an entry created it).
    pub fn insert_node(&mut self, lock: &str, family: LockFamily, seq: u64, node: QNode) {
        let key = self.key_or_insert(lock, family);
        let Some(q) = self.queues.get_mut(lock) else {
            return;
        };
        if q.nodes.insert(seq, node).is_some() {
            return;
        }
        if q.nodes.len() == 1 {
            self.counts.queue(true);
        }
        if node.kind == LockKind::Write {
            q.writers.insert(seq);
        }
        self.counts.node(node.granted, true);
        insert_pair(self.by_status(node.granted), node.session, &key, seq);
        self.respan(node.session);
    }

    /// Removes a queue node (an entry deleted it).
    pub fn remove_node(&mut self, lock: &str, seq: u64) {
        let Some(key) = self.key(lock) else {
            return;
        };
        let Some(q) = self.queues.get_mut(lock) else {
            return;
        };
        let Some(node) = q.nodes.remove(&seq) else {
            return;
        };
        if q.nodes.is_empty() {
            self.counts.queue(false);
        }
        q.writers.remove(&seq);
        self.counts.node(node.granted, false);
        remove_pair(self.by_status(node.granted), node.session, &key, seq);
        self.respan(node.session);
    }

    /// Marks a node as granted (grants are only ever undone by deleting the node).
    pub fn mark_granted(&mut self, lock: &str, seq: u64) {
        let Some(key) = self.key(lock) else {
            return;
        };
        let Some(node) = self
            .queues
            .get_mut(lock)
            .and_then(|q| q.nodes.get_mut(&seq))
        else {
            return;
        };
        if node.granted {
            return;
        }
        node.granted = true;
        self.counts.node(false, false);
        self.counts.node(true, true);
        let session = node.session;
        remove_pair(&mut self.waiting, session, &key, seq);
        insert_pair(&mut self.held, session, &key, seq);
    }

    /// Forgets a lock whose state is gone.
    pub fn remove_lock(&mut self, lock: &str) {
        let seqs: Vec<u64> = self
            .queues
            .get(lock)
            .map(|q| q.nodes.keys().copied().collect())
            .unwrap_or_default();
        for seq in seqs {
            self.remove_node(lock, seq);
        }
        self.queues.remove(lock);
    }

    /// Makes sure `lock` has a (possibly empty) queue.
    pub fn ensure_lock(&mut self, lock: &str, family: LockFamily) {
        self.key_or_insert(lock, family);
    }

    /// The shared key of `lock`'s queue, if it has one.
    fn key(&self, lock: &str) -> Option<Arc<str>> {
        self.queues.get_key_value(lock).map(|(key, _)| key.clone())
    }

    /// The shared key of `lock`'s queue, made with an empty queue if there is none.
    fn key_or_insert(&mut self, lock: &str, family: LockFamily) -> Arc<str> {
        if let Some(key) = self.key(lock) {
            return key;
        }
        let key: Arc<str> = Arc::from(lock);
        self.queues.insert(key.clone(), LockQueue::new(family));
        key
    }

    /// The per-session node sets of granted (`held`) or waiting nodes.
    fn by_status(&mut self, granted: bool) -> &mut BTreeMap<u64, BTreeSet<(Arc<str>, u64)>> {
        if granted {
            &mut self.held
        } else {
            &mut self.waiting
        }
    }

    /// Keeps `spanning` in step with `session`'s nodes. Each set is ordered by lock, so
    /// its first and last pairs show whether it has more than one.
    fn respan(&mut self, session: u64) {
        let mut locks = [self.waiting.get(&session), self.held.get(&session)]
            .into_iter()
            .flatten()
            .flat_map(|set| [set.first(), set.last()])
            .flatten()
            .map(|(lock, _)| lock);
        let spans = locks.next().is_some_and(|first| locks.any(|l| l != first));
        if spans {
            self.spanning.insert(session);
        } else {
            self.spanning.remove(&session);
        }
    }

    /// The indexed queue of `lock`.
    pub fn queue(&self, lock: &str) -> Option<&LockQueue> {
        self.queues.get(lock)
    }

    /// Locks with a queue, and their nodes that hold and that wait. O(1).
    pub fn counts(&self) -> QueueCounts {
        self.counts
    }

    /// Number of waiting nodes.
    pub fn waiting_count(&self) -> usize {
        self.waiting.values().map(BTreeSet::len).sum()
    }

    /// Whether a new node of `kind` appended to `lock`'s queue would wait for nothing
    /// there (lock-delay aside).
    pub fn eligible_at_tail(&self, lock: &str, kind: LockKind) -> bool {
        self.queues
            .get(lock)
            .is_none_or(|q| q.eligible(u64::MAX, kind))
    }

    /// The cycle that `session` waiting with new nodes on `new` (lock, kind) would close,
    /// if any: the steps from `session` round to it. Visits only the part of the graph
    /// the new nodes reach.
    pub fn find_cycle(&self, session: u64, new: &[(&str, LockKind)]) -> Option<Vec<WaitStep>> {
        let mut visits: Vec<Visit<'_>> = Vec::new();
        let mut stack: Vec<Step> = Vec::new();
        // Sessions hopped into from a root scan, per root lock, and from the general
        // search (which pushes all of their waiting nodes).
        let mut root_hops: HashSet<(u64, &str)> = HashSet::new();
        let mut hops: HashSet<u64> = HashSet::new();
        // 1. Root scans. A new node waits for every node from its first blocker down.
        // A cycle within its own lock is not reported, so what matters there is only
        // the owners of those nodes that also wait in *another* lock: their waits in
        // this lock are walks over nodes this scan covers anyway. A plain scan, with no
        // bookkeeping per node, so a long queue costs little.
        for (lock, kind) in new.iter() {
            let Some((lock, q)) = self.queues.get_key_value(*lock) else {
                continue;
            };
            let lock: &str = lock;
            let Some(first) = q.first_blocker(u64::MAX, *kind) else {
                continue;
            };
            let root = visits.len();
            visits.push(Visit {
                parent: root,
                lock,
                seq: u64::MAX,
                session,
                hop: false,
            });
            for (seq, owner) in self.escapes(lock, q, first, session) {
                if hops.contains(&owner) || !root_hops.insert((owner, lock)) {
                    continue;
                }
                visits.push(Visit {
                    parent: root,
                    lock,
                    seq,
                    session: owner,
                    hop: false,
                });
                let from = visits.len() - 1;
                self.push_waits(&mut visits, &mut stack, from, owner, Some(lock));
            }
        }
        // 2. The general search, every path of which has left its root lock: any node
        // of `session` reached closes a cycle through at least two locks.
        // Nodes whose predecessors are explored: (lock, seq, waiter), where `waiter` is
        // the session whose waiting node began the walk through this lock when it has
        // other nodes there (its own nodes are skipped), else 0 (walks of waiters
        // without nodes of their own there are the same, so they are shared).
        let mut seen: HashSet<(&str, u64, u64)> = HashSet::new();
        while let Some(step) = stack.pop() {
            let (lock, seq) = (visits[step.at].lock, visits[step.at].seq);
            let Some(q) = self.queues.get(lock) else {
                continue;
            };
            let Some(n) = q.nodes.get(&seq) else { continue };
            if step.waiting {
                // A waiting node of a session hopped into: the walk of its lock starts
                // at what it waits for first.
                if let Some(first) = q.first_blocker(seq, n.kind) {
                    visits.push(Visit {
                        parent: step.at,
                        lock,
                        seq: first,
                        session: q.nodes.get(&first).map_or(0, |n| n.session),
                        hop: false,
                    });
                    stack.push(Step {
                        at: visits.len() - 1,
                        waiting: false,
                        waiter: n.session,
                    });
                }
                continue;
            }
            // A node that must go, with everything ahead of it, for the waiter to go on.
            let own = self.nodes_in(step.waiter, lock) > 1;
            let key_waiter = if own { step.waiter } else { 0 };
            if !seen.insert((lock, seq, key_waiter)) {
                continue;
            }
            if n.session == session {
                return Some(Self::cycle(&visits, step.at, session));
            }
            if let Some(pred) = q.pred(seq) {
                visits.push(Visit {
                    parent: step.at,
                    lock,
                    seq: pred,
                    session: q.nodes.get(&pred).map_or(0, |n| n.session),
                    hop: false,
                });
                stack.push(Step {
                    at: visits.len() - 1,
                    ..step
                });
            }
            // A wait for one's own node is not a wait (see the module docs).
            if n.session == step.waiter || !hops.insert(n.session) {
                continue;
            }
            // Its owner releases it only once every one of its waiting nodes is granted.
            self.push_waits(&mut visits, &mut stack, step.at, n.session, None);
        }
        None
    }

    /// The nodes of `lock` from `first` to the head of its queue whose owners (other
    /// than `session`) also wait in another lock, as (sequence number, owner), nearest
    /// first: where a root scan may leave its lock. Such an owner has nodes in two
    /// locks, so when fewer sessions span locks than the queue is long, their nodes
    /// are looked up instead of scanning the queue: a new waiter behind n others then
    /// costs O(spanning sessions x log n) here, not O(n) (nothing when every session
    /// has nodes in one lock only, the common case).
    fn escapes(&self, lock: &str, q: &LockQueue, first: u64, session: u64) -> Vec<(u64, u64)> {
        if self.spanning.len() >= q.nodes.len() {
            return self.escapes_by_scan(lock, q, first, session);
        }
        let leaves = |owner: u64| owner != session && self.waits_outside(owner, lock);
        let Some(key) = self.key(lock) else {
            return Vec::new();
        };
        let range = (key.clone(), 0)..=(key, first);
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &owner in &self.spanning {
            if self.nodes_in(owner, lock) == 0 || !leaves(owner) {
                continue;
            }
            for set in [self.waiting.get(&owner), self.held.get(&owner)]
                .into_iter()
                .flatten()
            {
                out.extend(set.range(range.clone()).map(|(_, seq)| (*seq, owner)));
            }
        }
        out.sort_unstable_by_key(|&(seq, _)| std::cmp::Reverse(seq));
        // Every test (the random lock-order simulation included) checks the lookup
        // against the scan.
        debug_assert_eq!(out, self.escapes_by_scan(lock, q, first, session));
        out
    }

    /// [`Self::escapes`] by a plain scan of the queue.
    fn escapes_by_scan(
        &self,
        lock: &str,
        q: &LockQueue,
        first: u64,
        session: u64,
    ) -> Vec<(u64, u64)> {
        q.nodes
            .range(..=first)
            .rev()
            .filter(|(_, n)| n.session != session && self.waits_outside(n.session, lock))
            .map(|(seq, n)| (*seq, n.session))
            .collect()
    }

    /// Whether `session` has a waiting node in a lock other than `lock`.
    fn waits_outside(&self, session: u64, lock: &str) -> bool {
        self.waiting.get(&session).is_some_and(|set| {
            set.first().is_some_and(|(l, _)| &**l != lock)
                || set.last().is_some_and(|(l, _)| &**l != lock)
        })
    }

    /// Pushes a hop from visit `from` (a node of `owner`) to each of `owner`'s waiting
    /// nodes, except those in `skip`.
    fn push_waits<'a>(
        &'a self,
        visits: &mut Vec<Visit<'a>>,
        stack: &mut Vec<Step>,
        from: usize,
        owner: u64,
        skip: Option<&str>,
    ) {
        for (wlock, wseq) in self.waiting.get(&owner).into_iter().flatten().rev() {
            if skip == Some(&**wlock) {
                continue;
            }
            let Some((wlock, wq)) = self.queues.get_key_value(&**wlock) else {
                continue;
            };
            visits.push(Visit {
                parent: from,
                lock: wlock,
                seq: *wseq,
                session: wq.nodes.get(wseq).map_or(0, |n| n.session),
                hop: true,
            });
            stack.push(Step {
                at: visits.len() - 1,
                waiting: true,
                waiter: owner,
            });
        }
    }

    /// How many nodes `session` has in `lock`'s queue.
    fn nodes_in(&self, session: u64, lock: &str) -> usize {
        let Some(key) = self.key(lock) else {
            return 0;
        };
        let range = (key.clone(), 0)..=(key, u64::MAX);
        [self.waiting.get(&session), self.held.get(&session)]
            .into_iter()
            .flatten()
            .map(|set| set.range(range.clone()).count())
            .sum()
    }

    /// The steps of the cycle ending at visit `end` (a node of `session`).
    fn cycle(visits: &[Visit<'_>], end: usize, session: u64) -> Vec<WaitStep> {
        let mut path = vec![end];
        let mut at = end;
        while visits[at].parent != at {
            at = visits[at].parent;
            path.push(at);
        }
        path.reverse();
        // path[0] is the new node of `session`. Each hop ends the step of the current
        // waiter (it waits for the owner of the node hopped from) and starts the owner's.
        let mut steps = Vec::new();
        let mut waiter = session;
        let mut lock = visits[path[0]].lock;
        for w in path.windows(2) {
            let (from, to) = (&visits[w[0]], &visits[w[1]]);
            if to.hop {
                steps.push(WaitStep {
                    session: waiter,
                    lock: lock.to_string(),
                    waits_for: from.session,
                });
                waiter = from.session;
                lock = to.lock;
            }
        }
        steps.push(WaitStep {
            session: waiter,
            lock: lock.to_string(),
            waits_for: session,
        });
        steps
    }
}

/// Adds (lock, seq) to `session`'s set.
fn insert_pair(
    sets: &mut BTreeMap<u64, BTreeSet<(Arc<str>, u64)>>,
    session: u64,
    lock: &Arc<str>,
    seq: u64,
) {
    sets.entry(session).or_default().insert((lock.clone(), seq));
}

/// Removes (lock, seq) from `session`'s set, and the set once empty.
fn remove_pair(
    sets: &mut BTreeMap<u64, BTreeSet<(Arc<str>, u64)>>,
    session: u64,
    lock: &Arc<str>,
    seq: u64,
) {
    if let Some(set) = sets.get_mut(&session) {
        set.remove(&(lock.clone(), seq));
        if set.is_empty() {
            sets.remove(&session);
        }
    }
}
