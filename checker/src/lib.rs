//! Linearizability checking of recorded client histories.
//!
//! A history is a list of [`Operation`]s: what a client asked (`input`), what it was told
//! (`output`), when it asked (`call`) and when it heard back (`ret`), in any one clock
//! shared by all clients (the simulator's time, or a Jepsen-style harness's monotonic
//! clock). An operation whose outcome the client never learned (the connection broke, it
//! timed out: Jepsen's `:info`) has `ret: None` and `output: None`: it may have taken
//! effect at any time after its call, or never.
//!
//! [`check`] decides whether some order of the operations, consistent with real time
//! (an operation that returned before another was called comes first) and with the
//! sequential specification of a [`Model`], explains every output. It is the search of
//! Wing and Gong with Lowe's memoisation of (linearized set, state) pairs ("WGL", as in
//! Knossos and Porcupine): operations are linearized just in time, backtracking when a
//! return is reached whose operation is not linearized yet. Indeterminate operations
//! return at the end of time, where linearizing them changes nothing the history shows,
//! so "never happened" needs no special case (a [`Model`] must therefore accept any
//! operation with an unknown output in any state).
//!
//! The search is exponential in the worst case, so it takes a time limit and may answer
//! [`Outcome::Unknown`]. Indeterminate operations are what makes it so: each may or may
//! not have happened, at any time after its call. Those with equal inputs are
//! interchangeable, so the search only ever uses the earliest called of them, in call
//! order (m equal ones cost m + 1 choices, not 2^m subsets). Indeterminate operations
//! with different inputs still multiply the search, so a model may first make equal
//! those that no answer can tell apart ([`Model::prepare`]): [`Register`] gives the
//! indeterminate writes of values no read returns and no compare-and-set expects one
//! value, and [`versioned::VersionedRegister`] does the same. Histories of independent
//! objects (one register per key) should be checked one object at a time
//! ([`check_partitioned`]): Herlihy and Wing's locality makes the whole history
//! linearizable exactly when each part is.
//!
//! Models: [`Register`] (read, write, compare-and-set on one value) and
//! [`versioned::VersionedRegister`] (a znode's value and version: read, write,
//! compare-and-set on the version; what the simulator and the Jepsen harness check).
//! Other harnesses add their own by implementing [`Model`].

pub mod versioned;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The sequential specification of an object.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash + Debug;
    /// An operation's request. Equal requests of indeterminate operations are
    /// interchangeable, which the search uses (see [`check`]).
    type Input: Clone + Debug + Eq + Hash;
    /// An operation's answer.
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` is applied to `state`, if the operation could have
    /// answered `output` there (`None` output: the answer is unknown, anything goes).
    /// `None` when the answer is impossible in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// The history to search instead of `history`, if the model can make it cheaper:
    /// the same operations in the same order, linearizable exactly when `history` is,
    /// typically with the inputs of indeterminate operations that no answer can tell
    /// apart made equal (the search takes equal indeterminate operations as
    /// interchangeable). `None`: search `history` itself.
    fn prepare(
        &self,
        history: &[Operation<Self::Input, Self::Output>],
    ) -> Option<Vec<Operation<Self::Input, Self::Output>>> {
        let _ = history;
        None
    }
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Who performed it (a client id), for reports.
    pub process: u64,
    /// What was asked.
    pub input: I,
    /// What was answered; `None` if unknown.
    pub output: Option<O>,
    /// When it was invoked.
    pub call: u64,
    /// When the answer arrived; `None` if it never did (indeterminate).
    pub ret: Option<u64>,
}

/// Why a history is not linearizable: the longest explanation the search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Indexes (into the checked slice) of the operations of the longest linearizable
    /// prefix found, in linearization order.
    pub linearized: Vec<usize>,
    /// Indexes of the operations that had returned, at that point, without any possible
    /// place in the order (the search backtracked at the first of them).
    pub stuck_at: Vec<usize>,
}

/// The answer of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Some order explains every answer.
    Linearizable,
    /// No order does.
    NotLinearizable(Violation),
    /// The search ran out of time (or of its budget) before deciding.
    Unknown(String),
}

impl Outcome {
    /// Whether the history is known not to be linearizable.
    pub fn is_violation(&self) -> bool {
        matches!(self, Outcome::NotLinearizable(_))
    }
}

/// Limits of one search.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time the search may take.
    pub time: Duration,
    /// Memoised (linearized set, state) pairs the search may keep.
    pub max_cache: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(10),
            max_cache: 4_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// The matching return event (for calls).
    ret_event: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// A fixed-size bit set, hashable, for the memo.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// Checks one object's history against `model`. See the crate documentation.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    limits: Limits,
) -> Outcome {
    let n = history.len();
    if n == 0 {
        return Outcome::Linearizable;
    }
    let started = Instant::now();
    let prepared = model.prepare(history);
    let history = prepared.as_deref().unwrap_or(history);
    // Events in time order: calls before returns at the same instant (overlapping is
    // the lenient reading), indeterminate returns at the end, in call order.
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        order.push((op.call, 0, i));
        let ret = op.ret.unwrap_or(u64::MAX).max(op.call);
        order.push((ret, 1, i));
    }
    order.sort_unstable();
    // Node 0 is the list head (a sentinel); events are 1..=2n.
    let mut events = vec![
        Event {
            op: NIL,
            is_call: false,
            ret_event: NIL,
            prev: NIL,
            next: NIL,
        };
        2 * n + 1
    ];
    let mut ret_of = vec![NIL; n];
    for (pos, &(_, kind, op)) in order.iter().enumerate() {
        let id = pos + 1;
        events[id] = Event {
            op,
            is_call: kind == 0,
            ret_event: NIL,
            prev: id - 1,
            next: if pos + 1 < order.len() { id + 1 } else { NIL },
        };
        if kind == 1 {
            ret_of[op] = id;
        }
    }
    events[0].next = 1;
    for id in 1..=2 * n {
        if events[id].is_call {
            events[id].ret_event = ret_of[events[id].op];
        }
    }

    let lift = |events: &mut Vec<Event>, call: usize| {
        let ret = events[call].ret_event;
        for id in [call, ret] {
            let (p, nx) = (events[id].prev, events[id].next);
            events[p].next = nx;
            if nx != NIL {
                events[nx].prev = p;
            }
        }
    };
    let unlift = |events: &mut Vec<Event>, call: usize| {
        let ret = events[call].ret_event;
        for id in [ret, call] {
            let (p, nx) = (events[id].prev, events[id].next);
            events[p].next = id;
            if nx != NIL {
                events[nx].prev = id;
            }
        }
    };

    let mut state = model.init();
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best: Vec<usize> = Vec::new();
    let mut best_stuck: Vec<usize> = Vec::new();
    // Indeterminate operations with equal requests (no answer, no return) can trade
    // places: in any linearization, the ones used can be taken to be the earliest
    // called, in call order (the k-th used place comes after k calls of the class, so
    // after the k-th earliest). So one is linearized only after the one of its class
    // called just before it: k of m such writes give m + 1 choices, not 2^m subsets.
    let mut twin_before = vec![NIL; n];
    {
        let mut last_of: std::collections::HashMap<&M::Input, usize> =
            std::collections::HashMap::new();
        let mut free: Vec<usize> = (0..n)
            .filter(|&i| history[i].ret.is_none() && history[i].output.is_none())
            .collect();
        // The order of their call events in the list.
        free.sort_by_key(|&i| (history[i].call, i));
        for i in free {
            if let Some(prev) = last_of.insert(&history[i].input, i) {
                twin_before[i] = prev;
            }
        }
    }
    let mut entry = events[0].next;
    let mut iterations: u64 = 0;
    while events[0].next != NIL {
        iterations += 1;
        if iterations.is_multiple_of(4096) && started.elapsed() > limits.time {
            return Outcome::Unknown(format!(
                "time limit of {:?} reached after {iterations} steps ({} of {n} operations \
                 linearized at best)",
                limits.time,
                best.len()
            ));
        }
        if cache.len() > limits.max_cache {
            return Outcome::Unknown(format!(
                "memo limit of {} states reached ({} of {n} operations linearized at best)",
                limits.max_cache,
                best.len()
            ));
        }
        if entry == NIL {
            // Cannot happen: a return event always ends the list of a non-empty history.
            return Outcome::Unknown("internal error: ran off the event list".to_string());
        }
        let e = events[entry];
        if e.is_call {
            let twin = twin_before[e.op];
            if twin != NIL && !linearized.get(twin) {
                entry = e.next;
                continue;
            }
            let op = &history[e.op];
            if let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut key = linearized.clone();
                key.set(e.op);
                if cache.insert((key.clone(), next_state.clone())) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = key;
                    lift(&mut events, entry);
                    entry = events[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            // The operation of this return is not linearized: undo the last choice.
            if stack.len() >= best.len() {
                best = stack.iter().map(|(c, _)| events[*c].op).collect();
                best_stuck = vec![e.op];
            }
            let Some((call, previous)) = stack.pop() else {
                return Outcome::NotLinearizable(Violation {
                    linearized: best,
                    stuck_at: best_stuck,
                });
            };
            state = previous;
            linearized.clear(events[call].op);
            unlift(&mut events, call);
            entry = events[call].next;
        }
    }
    debug_assert_eq!(linearized.count(), n);
    Outcome::Linearizable
}

/// Checks a history of independent objects one object at a time (the time limit applies
/// to each). The result is a violation if any object's history is one (with the first
/// such key), unknown if none is but some search gave up, and linearizable otherwise.
/// Indexes in a reported [`Violation`] are positions in that key's sub-history, which is
/// returned with it.
#[allow(clippy::type_complexity)]
pub fn check_partitioned<K, M>(
    model: &M,
    history: Vec<(K, Operation<M::Input, M::Output>)>,
    limits: Limits,
) -> PartitionedOutcome<K, M::Input, M::Output>
where
    K: Ord + Clone + Debug,
    M: Model,
{
    let mut parts: BTreeMap<K, Vec<Operation<M::Input, M::Output>>> = BTreeMap::new();
    for (k, op) in history {
        parts.entry(k).or_default().push(op);
    }
    let mut unknown = Vec::new();
    for (key, ops) in parts {
        match check(model, &ops, limits) {
            Outcome::Linearizable => {}
            Outcome::NotLinearizable(v) => {
                return PartitionedOutcome::NotLinearizable {
                    key,
                    violation: v,
                    history: ops,
                }
            }
            Outcome::Unknown(why) => unknown.push((key, why)),
        }
    }
    if unknown.is_empty() {
        PartitionedOutcome::Linearizable
    } else {
        PartitionedOutcome::Unknown(unknown)
    }
}

/// The answer of [`check_partitioned`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionedOutcome<K, I, O> {
    /// Every object's history is linearizable.
    Linearizable,
    /// This object's history is not.
    NotLinearizable {
        /// The object.
        key: K,
        /// The longest explanation found.
        violation: Violation,
        /// The object's sub-history (the violation's indexes point into it).
        history: Vec<Operation<I, O>>,
    },
    /// No violation found, but these objects' searches gave up.
    Unknown(Vec<(K, String)>),
}

/// A register's operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterInput<V> {
    /// Read the value.
    Read,
    /// Replace the value.
    Write(V),
    /// Replace the value if it equals `expect`.
    Cas {
        /// The expected value.
        expect: V,
        /// The new value.
        new: V,
    },
}

/// A register's answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOutput<V> {
    /// The value read.
    Value(V),
    /// A write was done.
    Written,
    /// Whether a compare-and-set swapped.
    Swapped(bool),
}

/// One value with read, write and compare-and-set, starting at `initial`.
#[derive(Debug, Clone)]
pub struct Register<V> {
    /// The value before any write.
    pub initial: V,
}

impl<V: Clone + Eq + Hash + Debug> Model for Register<V> {
    type State = V;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> V {
        self.initial.clone()
    }

    fn step(
        &self,
        state: &V,
        input: &RegisterInput<V>,
        output: Option<&RegisterOutput<V>>,
    ) -> Option<V> {
        match (input, output) {
            (RegisterInput::Read, None) => Some(state.clone()),
            (RegisterInput::Read, Some(RegisterOutput::Value(v))) => {
                (v == state).then(|| state.clone())
            }
            (RegisterInput::Write(v), None | Some(RegisterOutput::Written)) => Some(v.clone()),
            (RegisterInput::Cas { expect, new }, None) => Some(if expect == state {
                new.clone()
            } else {
                state.clone()
            }),
            (RegisterInput::Cas { expect, new }, Some(RegisterOutput::Swapped(true))) => {
                (expect == state).then(|| new.clone())
            }
            (RegisterInput::Cas { expect, .. }, Some(RegisterOutput::Swapped(false))) => {
                (expect != state).then(|| state.clone())
            }
            _ => None,
        }
    }

    /// Indeterminate writes (and compare-and-sets' new values) of values that no read
    /// returns and no compare-and-set expects write one of those values instead. Only a
    /// read or a compare-and-set looks at the value, and never at one of these (in any
    /// linearization of either history, a state holding one of them is never read or
    /// compared equal), so the same orders explain both histories.
    fn prepare(
        &self,
        history: &[Operation<RegisterInput<V>, RegisterOutput<V>>],
    ) -> Option<Vec<Operation<RegisterInput<V>, RegisterOutput<V>>>> {
        let mut seen: HashSet<&V> = HashSet::new();
        for o in history {
            match (&o.input, &o.output) {
                (_, Some(RegisterOutput::Value(v))) => {
                    seen.insert(v);
                }
                (RegisterInput::Cas { expect, .. }, _) => {
                    seen.insert(expect);
                }
                _ => {}
            }
        }
        let free = |o: &Operation<RegisterInput<V>, RegisterOutput<V>>| {
            o.ret.is_none() && o.output.is_none()
        };
        let unseen = |o: &Operation<RegisterInput<V>, RegisterOutput<V>>| match &o.input {
            RegisterInput::Write(v) | RegisterInput::Cas { new: v, .. } => {
                (free(o) && !seen.contains(v)).then(|| v.clone())
            }
            RegisterInput::Read => None,
        };
        let one = history.iter().find_map(unseen)?;
        Some(
            history
                .iter()
                .map(|o| {
                    let mut o = o.clone();
                    if unseen(&o).is_some() {
                        match &mut o.input {
                            RegisterInput::Write(v) | RegisterInput::Cas { new: v, .. } => {
                                *v = one.clone();
                            }
                            RegisterInput::Read => {}
                        }
                    }
                    o
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = Operation<RegisterInput<u64>, RegisterOutput<u64>>;

    fn w(process: u64, v: u64, call: u64, ret: u64) -> Op {
        Operation {
            process,
            input: RegisterInput::Write(v),
            output: Some(RegisterOutput::Written),
            call,
            ret: Some(ret),
        }
    }

    fn r(process: u64, v: u64, call: u64, ret: u64) -> Op {
        Operation {
            process,
            input: RegisterInput::Read,
            output: Some(RegisterOutput::Value(v)),
            call,
            ret: Some(ret),
        }
    }

    fn info_w(process: u64, v: u64, call: u64) -> Op {
        Operation {
            process,
            input: RegisterInput::Write(v),
            output: None,
            call,
            ret: None,
        }
    }

    fn reg() -> Register<u64> {
        Register { initial: 0 }
    }

    fn run(h: &[Op]) -> Outcome {
        check(&reg(), h, Limits::default())
    }

    #[test]
    fn empty_and_sequential_histories() {
        assert_eq!(run(&[]), Outcome::Linearizable);
        assert_eq!(
            run(&[w(1, 1, 0, 1), r(2, 1, 2, 3), w(1, 2, 4, 5), r(2, 2, 6, 7)]),
            Outcome::Linearizable
        );
        assert_eq!(run(&[r(1, 0, 0, 1)]), Outcome::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = [w(1, 1, 0, 10), r(2, 0, 11, 12)];
        match run(&h) {
            Outcome::NotLinearizable(v) => {
                assert_eq!(v.linearized, vec![0]);
                assert_eq!(v.stuck_at, vec![1]);
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_operations_may_go_either_way() {
        // The read overlaps the write: both 0 and 1 are fine.
        assert_eq!(run(&[w(1, 1, 0, 10), r(2, 0, 5, 6)]), Outcome::Linearizable);
        assert_eq!(run(&[w(1, 1, 0, 10), r(2, 1, 5, 6)]), Outcome::Linearizable);
        // But two sequential reads by the same overlap cannot go back.
        assert!(run(&[w(1, 1, 0, 10), r(2, 1, 2, 3), r(2, 0, 4, 5)]).is_violation());
    }

    #[test]
    fn indeterminate_writes_may_or_may_not_happen() {
        // Never observed: fine.
        assert_eq!(
            run(&[info_w(1, 1, 0), r(2, 0, 5, 6)]),
            Outcome::Linearizable
        );
        // Observed late: fine, it may take effect any time after its call.
        assert_eq!(
            run(&[info_w(1, 1, 0), r(2, 0, 5, 6), r(2, 1, 100, 101)]),
            Outcome::Linearizable
        );
        // But not before it was called.
        assert!(run(&[r(2, 1, 0, 1), info_w(1, 1, 5)]).is_violation());
        // And it happens once: 1, then 2, then 1 again is impossible.
        assert!(run(&[
            info_w(1, 1, 0),
            w(3, 2, 10, 11),
            r(2, 1, 12, 13),
            r(2, 2, 14, 15),
            r(2, 1, 16, 17)
        ])
        .is_violation());
    }

    #[test]
    fn compare_and_set() {
        let cas = |p, e, n, ok, c, r| Operation {
            process: p,
            input: RegisterInput::Cas { expect: e, new: n },
            output: Some(RegisterOutput::Swapped(ok)),
            call: c,
            ret: Some(r),
        };
        assert_eq!(
            run(&[
                cas(1, 0, 1, true, 0, 1),
                cas(2, 0, 2, false, 2, 3),
                r(3, 1, 4, 5)
            ]),
            Outcome::Linearizable
        );
        assert!(run(&[cas(1, 0, 1, true, 0, 1), cas(2, 0, 2, true, 2, 3)]).is_violation());
    }

    #[test]
    fn partitioned_check_names_the_bad_key() {
        let h = vec![
            ("a", w(1, 1, 0, 1)),
            ("b", w(1, 1, 0, 1)),
            ("a", r(2, 1, 2, 3)),
            ("b", r(2, 0, 2, 3)),
        ];
        match check_partitioned(&reg(), h, Limits::default()) {
            PartitionedOutcome::NotLinearizable { key, history, .. } => {
                assert_eq!(key, "b");
                assert_eq!(history.len(), 2);
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn many_concurrent_writers_finish_quickly() {
        // 8 clients, 40 rounds of overlapping writes and reads of the last write.
        let mut h = Vec::new();
        let mut t = 0;
        for round in 0..40u64 {
            for c in 0..8u64 {
                h.push(w(c, round * 8 + c + 1, t + c, t + 20 + c));
            }
            h.push(r(99, round * 8 + 8, t + 40, t + 41));
            t += 50;
        }
        let started = Instant::now();
        assert_eq!(run(&h), Outcome::Linearizable);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn time_limit_gives_unknown() {
        let mut h = Vec::new();
        for c in 0..18u64 {
            h.push(info_w(c, c + 1, 0));
        }
        // A read of a value nobody wrote forces the whole search space.
        h.push(r(99, 1000, 1, 2));
        let limits = Limits {
            time: Duration::from_millis(1),
            max_cache: 1_000_000_000,
        };
        match check(&reg(), &h, limits) {
            Outcome::Unknown(_) | Outcome::NotLinearizable(_) => {}
            Outcome::Linearizable => panic!("cannot be linearizable"),
        }
    }
}
