//! The connection task's side of locks: which queue nodes this session waits for or
//! holds, routing of pushed `LockGranted` / `LockLost` events to them, and what to
//! re-check after a reconnect. Pure (no IO, no clock), unit tested on its own.
//!
//! The server pushes lock events only to the connection the session is attached to at
//! that moment, so an event can be missed while the client is away. After resuming the
//! session the task therefore re-reads (`GetLocks`) every lock it tracks: a waiter
//! granted meanwhile is granted, a node that vanished is lost. Locks where the client
//! may have lost track of a node of its own (a lock or release request that failed
//! without an answer, a tracked node nobody holds any more) are *suspects*: their
//! re-read also releases every node of this session that nobody tracks, so an orphan
//! cannot block the queue for as long as the session lives.
//!
//! A node is identified by its path *and* its fencing token (its creation zxid): a lock's
//! directory is a container, reaped when its queue empties, and when it is created again
//! its sequence counter restarts at 0, so a path can name several nodes over time. An
//! event or a re-read entry for an earlier node of the same name (say, the late grant of
//! a node whose request was given up and released) must never count for a later one.

use crate::lock::LockLoss;
use corral_protocol::{LockEvent, LockState, LockedNode, Op};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tokio::sync::watch;

/// Events for nodes not (yet) tracked that are remembered, in case the answer that
/// names the node arrives after them (possible when answers wait behind earlier
/// requests while events are pushed at once).
const EARLY_EVENTS: usize = 256;

/// One queue node as this client was answered it: its path and its fencing token (its
/// creation zxid). The path alone may name a later node; the pair names one node for
/// good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueNode {
    /// The node's path.
    pub node: String,
    /// Its fencing token.
    pub token: u64,
}

impl QueueNode {
    pub(crate) fn new(node: &str, token: u64) -> QueueNode {
        QueueNode {
            node: node.to_string(),
            token,
        }
    }
}

/// The queue nodes of one lock request: `node`, and for a multi-lock `group`, its other
/// nodes. Releasing `node` releases them all (the server releases a group as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestNodes {
    pub node: QueueNode,
    pub group: Vec<QueueNode>,
}

impl RequestNodes {
    /// The one node of a single lock request.
    pub(crate) fn one(node: &str, token: u64) -> RequestNodes {
        RequestNodes {
            node: QueueNode::new(node, token),
            group: Vec::new(),
        }
    }

    /// The nodes of a multi-lock answer; `None` if it has none.
    pub(crate) fn of_group(nodes: &[LockedNode]) -> Option<RequestNodes> {
        let mut all = nodes.iter().map(|n| QueueNode::new(&n.node, n.token));
        Some(RequestNodes {
            node: all.next()?,
            group: all.collect(),
        })
    }

    /// The request that releases them (and no later node of the same paths).
    pub(crate) fn release_op(&self) -> Op {
        Op::Release {
            node: self.node.node.clone(),
            token: self.node.token,
        }
    }

    /// Every node, the released one first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &QueueNode> {
        std::iter::once(&self.node).chain(&self.group)
    }
}

/// Where one queue node stands, as the task knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotStatus {
    /// In the queue, not granted.
    Waiting,
    /// Granted (the holder still checks its lease's safe deadline).
    Granted,
    /// Gone, for this reason. Final.
    Ended(LockLoss),
}

#[derive(Debug)]
struct Slot {
    lock: String,
    /// The node's fencing token (its creation zxid). Node names are not unique over
    /// time: a lock's directory is a container, and when it is recreated its sequence
    /// counter starts again at 0, so the same path names a new node. Events and re-reads
    /// are matched by path *and* token.
    token: u64,
    tx: watch::Sender<SlotStatus>,
}

/// Every queue node the session tracks, keyed by node path.
#[derive(Debug, Default)]
pub(crate) struct LockRegistry {
    slots: BTreeMap<String, Slot>,
    /// (node, token, granted) events that arrived for untracked nodes, oldest first.
    early: VecDeque<(String, u64, bool)>,
    /// Locks to sweep for orphaned nodes of this session at the next re-read.
    suspects: BTreeSet<String>,
}

/// The status after an event (`granted` or lost) arrives for a node in `status`.
fn after_event(status: &SlotStatus, granted: bool) -> Option<SlotStatus> {
    match (status, granted) {
        (SlotStatus::Waiting, true) => Some(SlotStatus::Granted),
        (SlotStatus::Waiting | SlotStatus::Granted, false) => {
            Some(SlotStatus::Ended(LockLoss::LeaseExpired))
        }
        _ => None,
    }
}

impl LockRegistry {
    /// Tracks `node` of `lock` with fencing `token`, answered as granted or queued, and
    /// returns a receiver of its status. Events that overtook the answer are applied at
    /// once (only those for this very node: same path and token; an event for an
    /// earlier node of the same name is dropped).
    pub(crate) fn register(
        &mut self,
        lock: &str,
        node: &str,
        token: u64,
        granted: bool,
    ) -> watch::Receiver<SlotStatus> {
        let mut status = if granted {
            SlotStatus::Granted
        } else {
            SlotStatus::Waiting
        };
        self.early.retain(|(n, t, g)| {
            if n != node {
                return true;
            }
            if *t == token {
                if let Some(next) = after_event(&status, *g) {
                    status = next;
                }
            }
            false
        });
        let ended = matches!(status, SlotStatus::Ended(_));
        let (tx, rx) = watch::channel(status);
        // The server gives a path to a new node only once the node that had it is gone:
        // an earlier node of this path still tracked here (its loss was missed while
        // disconnected, say) is over.
        if let Some(earlier) = self.slots.remove(node).filter(|s| s.token != token) {
            earlier.tx.send_replace(SlotStatus::Ended(LockLoss::Gone));
        }
        if !ended {
            self.slots.insert(
                node.to_string(),
                Slot {
                    lock: lock.to_string(),
                    token,
                    tx,
                },
            );
        }
        rx
    }

    /// Routes a pushed grant (`granted`) or loss. Returns whether a tracked node took it.
    pub(crate) fn on_event(&mut self, event: &LockEvent, granted: bool) -> bool {
        let Some(slot) = self
            .slots
            .get(&event.node)
            .filter(|slot| slot.token == event.token)
        else {
            if self.early.len() >= EARLY_EVENTS {
                self.early.pop_front();
            }
            self.early
                .push_back((event.node.clone(), event.token, granted));
            return false;
        };
        slot.tx
            .send_if_modified(|status| match after_event(status, granted) {
                Some(next) => {
                    *status = next;
                    true
                }
                None => false,
            });
        if !granted {
            // Nothing more can happen to a node that is gone.
            self.slots.remove(&event.node);
        }
        true
    }

    /// The node was released by this client: the one with `token`, or with `None` (a
    /// release by path) whichever node has the path.
    pub(crate) fn released(&mut self, node: &str, token: Option<u64>) {
        if token.is_some_and(|t| self.slots.get(node).is_some_and(|s| s.token != t)) {
            return;
        }
        if let Some(slot) = self.slots.remove(node) {
            slot.tx.send_replace(SlotStatus::Ended(LockLoss::Released));
        }
    }

    /// Marks a lock for an orphan sweep at the next re-read.
    pub(crate) fn suspect(&mut self, lock: &str) {
        self.suspects.insert(lock.to_string());
    }

    /// The locks to re-read after a reconnect, each with whether to sweep it: every
    /// tracked lock, every lock a request in flight (`in_flight`) is about, and every
    /// suspect. Tracked nodes nobody listens to any more are dropped first, their locks
    /// becoming suspects.
    pub(crate) fn resync_plan(
        &mut self,
        in_flight: impl IntoIterator<Item = String>,
    ) -> Vec<(String, bool)> {
        let mut abandoned = Vec::new();
        self.slots.retain(|_, slot| {
            let keep = !slot.tx.is_closed();
            if !keep {
                abandoned.push(slot.lock.clone());
            }
            keep
        });
        self.suspects.extend(abandoned);
        let mut names: BTreeSet<String> = self.slots.values().map(|s| s.lock.clone()).collect();
        names.extend(in_flight);
        names.extend(self.suspects.iter().cloned());
        names
            .into_iter()
            .map(|name| {
                let sweep = self.suspects.contains(&name);
                (name, sweep)
            })
            .collect()
    }

    /// Applies a re-read of `lock` (`None`: the lock does not exist any more) for
    /// `session`. Returns the nodes of this session to release: with `sweep`, those
    /// nobody tracks.
    pub(crate) fn resync(
        &mut self,
        lock: &str,
        state: Option<&LockState>,
        session: u64,
        sweep: bool,
    ) -> Vec<QueueNode> {
        let entries = state.map(|s| s.queue.as_slice()).unwrap_or_default();
        let mut gone = Vec::new();
        for (node, slot) in self.slots.iter().filter(|(_, s)| s.lock == lock) {
            // A queue entry of the same name but another token is a later node (the
            // directory was recreated): ours is gone.
            match entries
                .iter()
                .find(|e| &e.node == node && e.token == slot.token)
            {
                Some(entry) if entry.granted => {
                    slot.tx.send_if_modified(|status| {
                        if *status == SlotStatus::Waiting {
                            *status = SlotStatus::Granted;
                            true
                        } else {
                            false
                        }
                    });
                }
                Some(_) => {}
                None => {
                    slot.tx.send_replace(SlotStatus::Ended(LockLoss::Gone));
                    gone.push(node.clone());
                }
            }
        }
        for node in gone {
            self.slots.remove(&node);
        }
        if !sweep {
            return Vec::new();
        }
        self.suspects.remove(lock);
        entries
            .iter()
            .filter(|e| e.session == session && !self.slots.contains_key(&e.node))
            .map(|e| QueueNode::new(&e.node, e.token))
            .collect()
    }

    /// Ends every tracked node with `loss` (the session ended).
    pub(crate) fn fail_all(&mut self, loss: LockLoss) {
        for (_, slot) in std::mem::take(&mut self.slots) {
            slot.tx.send_replace(SlotStatus::Ended(loss));
        }
        self.early.clear();
        self.suspects.clear();
    }

    /// Number of tracked nodes.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_protocol::{LockEntry, LockKind};

    fn event(node: &str) -> LockEvent {
        LockEvent {
            lock: "/l".into(),
            node: node.into(),
            token: 7,
            zxid: 9,
        }
    }

    fn entry(node: &str, session: u64, granted: bool) -> LockEntry {
        LockEntry {
            node: node.into(),
            kind: LockKind::Exclusive,
            session,
            lease: session,
            token: 7,
            granted,
        }
    }

    fn state(queue: Vec<LockEntry>) -> LockState {
        LockState {
            lock: "/l".into(),
            lock_delay_ms: 0,
            delayed_until_ms: 0,
            queue,
        }
    }

    #[test]
    fn grants_and_losses_reach_the_node() {
        let mut r = LockRegistry::default();
        let a = r.register("/l", "/l/x-1", 7, false);
        let b = r.register("/l", "/l/x-2", 7, true);
        assert_eq!(*a.borrow(), SlotStatus::Waiting);
        assert_eq!(*b.borrow(), SlotStatus::Granted);
        assert!(r.on_event(&event("/l/x-1"), true));
        assert_eq!(*a.borrow(), SlotStatus::Granted);
        assert!(r.on_event(&event("/l/x-2"), false));
        assert_eq!(*b.borrow(), SlotStatus::Ended(LockLoss::LeaseExpired));
        assert_eq!(r.len(), 1, "a lost node is no longer tracked");
        // A release of an earlier node of the same path leaves this one alone.
        r.released("/l/x-1", Some(6));
        assert_eq!(*a.borrow(), SlotStatus::Granted);
        r.released("/l/x-1", Some(7));
        assert_eq!(*a.borrow(), SlotStatus::Ended(LockLoss::Released));
        assert_eq!(r.len(), 0);
        // By path: whichever node has it.
        let c = r.register("/l", "/l/x-3", 8, true);
        r.released("/l/x-3", None);
        assert_eq!(*c.borrow(), SlotStatus::Ended(LockLoss::Released));
    }

    #[test]
    fn a_new_node_of_a_tracked_path_ends_the_earlier_one() {
        let mut r = LockRegistry::default();
        let earlier = r.register("/l", "/l/x-0", 7, true);
        let later = r.register("/l", "/l/x-0", 9, true);
        assert_eq!(*earlier.borrow(), SlotStatus::Ended(LockLoss::Gone));
        assert_eq!(*later.borrow(), SlotStatus::Granted);
        assert_eq!(r.len(), 1);
        // Events of the earlier node do not reach the later one.
        let mut lost = event("/l/x-0");
        lost.token = 7;
        r.on_event(&lost, false);
        assert_eq!(*later.borrow(), SlotStatus::Granted);
    }

    #[test]
    fn events_that_overtake_the_answer_are_applied_on_registration() {
        let mut r = LockRegistry::default();
        assert!(!r.on_event(&event("/l/x-1"), true));
        assert!(!r.on_event(&event("/l/x-9"), false));
        let a = r.register("/l", "/l/x-1", 7, false);
        assert_eq!(*a.borrow(), SlotStatus::Granted);
        let gone = r.register("/l", "/l/x-9", 7, false);
        assert_eq!(*gone.borrow(), SlotStatus::Ended(LockLoss::LeaseExpired));
        assert_eq!(r.len(), 1);
        // Consumed: a later registration of the same name starts afresh.
        let again = r.register("/l", "/l/x-9", 7, false);
        assert_eq!(*again.borrow(), SlotStatus::Waiting);
    }

    #[test]
    fn early_events_are_bounded() {
        let mut r = LockRegistry::default();
        for i in 0..(EARLY_EVENTS + 10) {
            r.on_event(&event(&format!("/l/x-{i}")), true);
        }
        assert_eq!(r.early.len(), EARLY_EVENTS);
        // The oldest were dropped.
        assert_eq!(
            *r.register("/l", "/l/x-0", 7, false).borrow(),
            SlotStatus::Waiting
        );
    }

    #[test]
    fn resync_grants_missed_grants_and_ends_vanished_nodes() {
        let mut r = LockRegistry::default();
        let waiting = r.register("/l", "/l/x-1", 7, false);
        let still = r.register("/l", "/l/x-2", 7, false);
        let held = r.register("/l", "/l/x-0", 7, true);
        let other = r.register("/m", "/m/x-0", 7, true);
        let plan = r.resync_plan(vec!["/n".to_string()]);
        assert_eq!(
            plan,
            vec![
                ("/l".to_string(), false),
                ("/m".to_string(), false),
                ("/n".to_string(), false)
            ]
        );
        let s = state(vec![entry("/l/x-1", 5, true), entry("/l/x-2", 5, false)]);
        let orphans = r.resync("/l", Some(&s), 5, false);
        assert!(orphans.is_empty());
        assert_eq!(*waiting.borrow(), SlotStatus::Granted);
        assert_eq!(*still.borrow(), SlotStatus::Waiting);
        assert_eq!(*held.borrow(), SlotStatus::Ended(LockLoss::Gone));
        // A lock that no longer exists: everything tracked in it is gone.
        r.resync("/m", None, 5, false);
        assert_eq!(*other.borrow(), SlotStatus::Ended(LockLoss::Gone));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn abandoned_nodes_make_their_lock_a_suspect_whose_orphans_are_released() {
        let mut r = LockRegistry::default();
        let kept = r.register("/l", "/l/x-1", 7, true);
        drop(r.register("/l", "/l/x-2", 7, false));
        r.suspect("/k");
        let plan = r.resync_plan(Vec::new());
        assert_eq!(
            plan,
            vec![("/k".to_string(), true), ("/l".to_string(), true)]
        );
        let s = state(vec![
            entry("/l/x-1", 5, true),
            entry("/l/x-2", 5, false),
            entry("/l/x-3", 6, false),
        ]);
        // Only this session's untracked node: not the tracked one, not another session's.
        assert_eq!(
            r.resync("/l", Some(&s), 5, true),
            vec![QueueNode::new("/l/x-2", 7)]
        );
        assert_eq!(*kept.borrow(), SlotStatus::Granted);
        // Swept: no longer a suspect.
        assert_eq!(
            r.resync_plan(Vec::new()),
            vec![("/k".to_string(), true), ("/l".to_string(), false)]
        );
        // Without sweep nothing is released.
        assert!(r.resync("/l", Some(&s), 5, false).is_empty());
    }

    /// The double grant of Jepsen finding 2: a lock request answered after its caller
    /// gave up is released, and a grant of that node that arrives once it is no longer
    /// tracked is kept as an early event. Once the lock's queue empties, its directory
    /// (a container) is reaped; recreated, its counter restarts at 0, so this session's
    /// next request may get the very same path while another session holds the lock.
    /// The stale grant must not be taken for the new node's.
    #[test]
    fn a_stale_event_for_an_earlier_node_of_the_same_name_is_not_applied() {
        let mut r = LockRegistry::default();
        let ev = |node: &str, token: u64| LockEvent {
            lock: "/l".into(),
            node: node.into(),
            token,
            zxid: token + 5,
        };
        // The caller left; the late answer registers the node, which stays tracked until
        // its release succeeds.
        drop(r.register("/l", "/l/x-0000000001", 100, false));
        r.released("/l/x-0000000001", Some(100));
        // A grant of it arrives after that: for an untracked node.
        assert!(!r.on_event(&ev("/l/x-0000000001", 100), true));
        // Later, a new directory: another session holds x-0000000000, ours queues as x-1.
        let new = r.register("/l", "/l/x-0000000001", 300, false);
        assert_eq!(
            *new.borrow(),
            SlotStatus::Waiting,
            "granted by a stale event"
        );
        // Its own grant still works, and so does an early event with the right token.
        assert!(r.on_event(&ev("/l/x-0000000001", 300), true));
        assert_eq!(*new.borrow(), SlotStatus::Granted);
        assert!(!r.on_event(&ev("/l/x-0000000002", 301), true));
        let early = r.register("/l", "/l/x-0000000002", 301, false);
        assert_eq!(*early.borrow(), SlotStatus::Granted);
        // An event for an earlier node of a tracked name does not touch the slot.
        let waiting = r.register("/l", "/l/x-0000000003", 400, false);
        assert!(!r.on_event(&ev("/l/x-0000000003", 200), true));
        assert_eq!(*waiting.borrow(), SlotStatus::Waiting);
        // A re-read that shows the same name granted under another token: ours is gone.
        let mut other = entry("/l/x-0000000003", 5, true);
        other.token = 500;
        r.resync("/l", Some(&state(vec![other])), 5, false);
        assert_eq!(*waiting.borrow(), SlotStatus::Ended(LockLoss::Gone));
    }

    #[test]
    fn fail_all_ends_everything() {
        let mut r = LockRegistry::default();
        let a = r.register("/l", "/l/x-1", 7, true);
        r.suspect("/l");
        r.fail_all(LockLoss::SessionEnded);
        assert_eq!(*a.borrow(), SlotStatus::Ended(LockLoss::SessionEnded));
        assert_eq!(r.len(), 0);
        assert!(r.resync_plan(Vec::new()).is_empty());
    }
}
