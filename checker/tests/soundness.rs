//! Soundness of the Wing-Gong-Lowe search (regression tests from a review of the
//! checker): hand-made invalid histories must not be reported linearizable, and a
//! search that gives up must answer Unknown, never Linearizable. The search is also
//! compared with a brute force on random small histories.

use corral_checker::{
    check, check_partitioned, Limits, Operation, Outcome, PartitionedOutcome, Register,
    RegisterInput, RegisterOutput,
};
use std::time::Duration;

type Op = Operation<RegisterInput<u64>, RegisterOutput<u64>>;

fn w(p: u64, v: u64, call: u64, ret: u64) -> Op {
    Operation {
        process: p,
        input: RegisterInput::Write(v),
        output: Some(RegisterOutput::Written),
        call,
        ret: Some(ret),
    }
}
fn r(p: u64, v: u64, call: u64, ret: u64) -> Op {
    Operation {
        process: p,
        input: RegisterInput::Read,
        output: Some(RegisterOutput::Value(v)),
        call,
        ret: Some(ret),
    }
}
fn info_w(p: u64, v: u64, call: u64) -> Op {
    Operation {
        process: p,
        input: RegisterInput::Write(v),
        output: None,
        call,
        ret: None,
    }
}
fn cas(p: u64, e: u64, n: u64, ok: Option<bool>, call: u64, ret: Option<u64>) -> Op {
    Operation {
        process: p,
        input: RegisterInput::Cas { expect: e, new: n },
        output: ok.map(RegisterOutput::Swapped),
        call,
        ret,
    }
}
fn run(h: &[Op]) -> Outcome {
    check(&Register { initial: 0 }, h, Limits::default())
}

#[test]
fn a_read_of_a_value_never_written_is_a_violation() {
    assert!(run(&[w(1, 1, 0, 1), r(2, 42, 2, 3)]).is_violation());
    // Even concurrent with everything, and with indeterminate writes of other values.
    assert!(run(&[info_w(1, 1, 0), info_w(3, 2, 0), r(2, 42, 0, 100)]).is_violation());
}

#[test]
fn duplicate_write_values_do_not_hide_a_resurrected_value() {
    // 5, then 6 (both completed), then 5 again with no second write of 5: invalid.
    let h = [w(1, 5, 0, 1), r(2, 5, 2, 3), w(1, 6, 4, 5), r(2, 5, 6, 7)];
    assert!(run(&h).is_violation());
    // A second completed write of 5 that finished before the 6 does not help either.
    let h = [w(1, 5, 0, 1), w(3, 5, 0, 2), w(1, 6, 4, 5), r(2, 5, 6, 7)];
    assert!(run(&h).is_violation());
}

#[test]
fn an_indeterminate_write_takes_effect_at_most_once_and_not_before_its_call() {
    let h = [
        info_w(1, 7, 10),
        r(2, 7, 0, 5), // before the call
    ];
    assert!(run(&h).is_violation());
    let h = [
        info_w(1, 7, 0),
        r(2, 7, 1, 2),
        w(3, 8, 3, 4),
        r(2, 7, 5, 6), // 7 again: would need the info write twice
    ];
    assert!(run(&h).is_violation());
}

#[test]
fn an_indeterminate_cas_is_deterministic_in_its_state() {
    // The info CAS 0 -> 9 can only apply where the value is 0; after the write of 1
    // completed it cannot apply any more, so reading 9 after that is impossible.
    let h = [w(1, 1, 0, 1), cas(2, 0, 9, None, 2, None), r(3, 9, 10, 11)];
    assert!(run(&h).is_violation());
}

#[test]
fn two_successful_cas_from_the_same_value_are_a_violation() {
    let h = [
        cas(1, 0, 1, Some(true), 0, Some(10)),
        cas(2, 0, 2, Some(true), 0, Some(10)),
    ];
    assert!(run(&h).is_violation());
}

#[test]
fn a_search_that_hits_its_budget_is_unknown_never_linearizable() {
    let mut h = Vec::new();
    for c in 0..16u64 {
        h.push(info_w(c, c + 1, 0));
    }
    h.push(r(99, 1000, 1, 2));
    let tiny_memo = Limits {
        time: Duration::from_secs(60),
        max_cache: 10,
    };
    match check(&Register { initial: 0 }, &h, tiny_memo) {
        Outcome::Unknown(_) | Outcome::NotLinearizable(_) => {}
        Outcome::Linearizable => panic!("memo budget reported linearizable"),
    }
    let tiny_time = Limits {
        time: Duration::from_nanos(1),
        max_cache: usize::MAX,
    };
    match check(&Register { initial: 0 }, &h, tiny_time) {
        Outcome::Unknown(_) | Outcome::NotLinearizable(_) => {}
        Outcome::Linearizable => panic!("time budget reported linearizable"),
    }
}

#[test]
fn partitioned_unknown_then_violation_reports_the_violation_and_unknown_is_not_lost() {
    let mut h: Vec<(&str, Op)> = Vec::new();
    for c in 0..16u64 {
        h.push(("a", info_w(c, c + 1, 0)));
    }
    h.push(("a", r(99, 1000, 1, 2)));
    h.push(("b", w(1, 1, 0, 1)));
    h.push(("b", r(2, 0, 2, 3)));
    let limits = Limits {
        time: Duration::from_nanos(1),
        max_cache: usize::MAX,
    };
    match check_partitioned(&Register { initial: 0 }, h, limits) {
        PartitionedOutcome::NotLinearizable { .. } | PartitionedOutcome::Unknown(_) => {}
        PartitionedOutcome::Linearizable => panic!("an unknown key was folded into linearizable"),
    }
    // Only an unknown key: Unknown, not Linearizable.
    let mut h: Vec<(&str, Op)> = Vec::new();
    for c in 0..16u64 {
        h.push(("a", info_w(c, c + 1, 0)));
    }
    h.push(("a", r(99, 1000, 1, 2)));
    h.push(("b", w(1, 1, 0, 1)));
    assert!(matches!(
        check_partitioned(&Register { initial: 0 }, h, limits),
        PartitionedOutcome::Unknown(_) | PartitionedOutcome::NotLinearizable { .. }
    ));
}

#[test]
fn same_instant_return_and_call_are_read_as_concurrent() {
    // Documented leniency: an operation that returned at t and one called at the same
    // t are taken as overlapping. With nanosecond CLOCK_MONOTONIC stamps this matters
    // only for exact ties; recorded here so a reader knows.
    let h = [w(1, 1, 0, 5), r(2, 0, 5, 6)];
    assert_eq!(run(&h), Outcome::Linearizable);
    let h = [w(1, 1, 0, 5), r(2, 0, 6, 7)];
    assert!(run(&h).is_violation());
}

/// Brute force: some order of the operations (indeterminate ones optional) that respects
/// real time (a before b when a returned strictly before b was called) and the model.
fn brute(h: &[Op]) -> bool {
    fn go(h: &[Op], used: &mut Vec<bool>, state: u64, remaining_definite: usize) -> bool {
        if remaining_definite == 0 {
            return true;
        }
        for i in 0..h.len() {
            if used[i] {
                continue;
            }
            // i may go next only if no unused op must precede it.
            let blocked = (0..h.len())
                .any(|j| !used[j] && j != i && h[j].ret.is_some_and(|rj| rj < h[i].call));
            if blocked {
                continue;
            }
            let next = match (&h[i].input, &h[i].output) {
                (RegisterInput::Read, None) => Some(state),
                (RegisterInput::Read, Some(RegisterOutput::Value(v))) => {
                    (*v == state).then_some(state)
                }
                (RegisterInput::Write(v), _) => Some(*v),
                (RegisterInput::Cas { expect, new }, None) => {
                    Some(if *expect == state { *new } else { state })
                }
                (RegisterInput::Cas { expect, new }, Some(RegisterOutput::Swapped(true))) => {
                    (*expect == state).then_some(*new)
                }
                (RegisterInput::Cas { expect, .. }, Some(RegisterOutput::Swapped(false))) => {
                    (*expect != state).then_some(state)
                }
                _ => None,
            };
            if let Some(s) = next {
                used[i] = true;
                let d = usize::from(h[i].ret.is_some());
                if go(h, used, s, remaining_definite - d) {
                    used[i] = false;
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    let definite = h.iter().filter(|o| o.ret.is_some()).count();
    go(h, &mut vec![false; h.len()], 0, definite)
}

#[test]
fn wgl_agrees_with_brute_force_on_random_small_histories() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut disagreements = Vec::new();
    let (mut yes, mut no) = (0, 0);
    for _ in 0..4000 {
        let n = 1 + rnd(6) as usize;
        let mut h = Vec::new();
        for p in 0..n as u64 {
            let call = rnd(10);
            let ret = if rnd(5) == 0 {
                None
            } else {
                Some(call + rnd(6))
            };
            let v = rnd(3);
            let (input, output) = match rnd(3) {
                0 => (RegisterInput::Read, Some(RegisterOutput::Value(v))),
                1 => (RegisterInput::Write(v), Some(RegisterOutput::Written)),
                _ => (
                    RegisterInput::Cas {
                        expect: rnd(3),
                        new: v,
                    },
                    Some(RegisterOutput::Swapped(rnd(2) == 0)),
                ),
            };
            let output = if ret.is_none() { None } else { output };
            if ret.is_none() && input == RegisterInput::Read {
                continue;
            }
            h.push(Operation {
                process: p,
                input,
                output,
                call,
                ret,
            });
        }
        let wgl = matches!(run(&h), Outcome::Linearizable);
        if wgl {
            yes += 1
        } else {
            no += 1
        }
        if wgl != brute(&h) {
            disagreements.push(format!("wgl={wgl} {h:?}"));
        }
    }
    assert!(
        yes > 500 && no > 500,
        "degenerate sample: {yes} linearizable, {no} not"
    );
    assert!(
        disagreements.is_empty(),
        "{}",
        disagreements[..disagreements.len().min(3)].join("\n")
    );
}

/// Small histories that are not linearizable must be reported so, not "unknown",
/// within the time limit, with many indeterminate writes around: equal ones are
/// interchangeable (the search takes them in call order), which before made the search
/// try every subset (2^30 here).
#[test]
fn small_violations_among_many_equal_indeterminate_writes_are_decided_in_time() {
    let limits = Limits {
        time: Duration::from_secs(2),
        max_cache: 4_000_000,
    };
    let noise = |h: &mut Vec<Op>, call: u64| {
        for c in 0..30u64 {
            h.push(info_w(100 + c, 7, call + c % 3));
        }
    };
    let decide = |h: &[Op]| {
        let started = std::time::Instant::now();
        let o = check(&Register { initial: 0 }, h, limits);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        o
    };
    // A value never written.
    let mut h = vec![w(1, 1, 0, 1), r(2, 42, 10, 11)];
    noise(&mut h, 2);
    assert!(decide(&h).is_violation());
    // A stale read: 1 then 2 acknowledged, 1 read after.
    let mut h = vec![w(1, 1, 0, 1), w(1, 2, 2, 3), r(2, 1, 10, 11)];
    noise(&mut h, 0);
    assert!(decide(&h).is_violation());
    // An older value after a newer one was read.
    let mut h = vec![
        w(1, 1, 0, 10),
        w(3, 2, 0, 10),
        r(2, 2, 11, 12),
        r(2, 1, 13, 14),
    ];
    noise(&mut h, 0);
    assert!(decide(&h).is_violation());
    // The noise is seen, then the value before it, with no write of it in between.
    let mut h = vec![w(1, 1, 0, 1), r(2, 7, 10, 11), r(2, 1, 12, 13)];
    noise(&mut h, 2);
    assert!(decide(&h).is_violation());
    // ... unless written again.
    h.push(w(4, 1, 11, 12));
    assert_eq!(decide(&h), Outcome::Linearizable);
    // And a valid history of the same shape is decided too.
    let mut h = vec![w(1, 1, 0, 1), r(2, 7, 10, 11), r(2, 7, 12, 13)];
    noise(&mut h, 2);
    assert_eq!(decide(&h), Outcome::Linearizable);
}

/// The interchange of equal indeterminate operations against the brute force, on
/// random histories where they are common (half the operations, two values).
#[test]
fn wgl_agrees_with_brute_force_when_equal_indeterminate_writes_abound() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut yes, mut no) = (0, 0);
    for _ in 0..3000 {
        let n = 2 + rnd(7) as usize;
        let mut h = Vec::new();
        for p in 0..n as u64 {
            let call = rnd(8);
            let v = rnd(2) + 1;
            if rnd(2) == 0 {
                h.push(if rnd(4) == 0 {
                    cas(p, rnd(3), v, None, call, None)
                } else {
                    info_w(p, v, call)
                });
                continue;
            }
            let ret = call + rnd(5);
            h.push(match rnd(3) {
                0 => w(p, v, call, ret),
                _ => r(p, rnd(3), call, ret),
            });
        }
        let wgl = matches!(run(&h), Outcome::Linearizable);
        if wgl {
            yes += 1
        } else {
            no += 1
        }
        assert_eq!(wgl, brute(&h), "{h:?}");
    }
    assert!(yes > 300 && no > 300, "degenerate sample: {yes} / {no}");
}

/// Indeterminate writes of distinct values that nobody reads are made equal by
/// `Register::prepare`: the probes of the review (18 such writes around a read of a
/// value never written, a read going back to the initial value, a value read after a
/// newer one) came out "unknown" after 10 s in a release build; now decided at once.
#[test]
fn unread_distinct_indeterminate_writes_do_not_make_small_violations_unknown() {
    let limits = Limits {
        time: Duration::from_secs(2),
        max_cache: 4_000_000,
    };
    let decide = |h: &[Op]| {
        let started = std::time::Instant::now();
        let o = check(&Register { initial: 0 }, h, limits);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        o
    };
    let noise = |h: &mut Vec<Op>, call: u64| {
        for c in 0..18u64 {
            h.push(info_w(100 + c, c + 1, call));
        }
    };
    let mut h = Vec::new();
    noise(&mut h, 0);
    h.push(r(99, 1000, 1, 2));
    assert!(decide(&h).is_violation());
    let mut h = vec![w(98, 500, 0, 10), r(99, 500, 21, 22), r(99, 0, 25, 26)];
    noise(&mut h, 20);
    assert!(decide(&h).is_violation());
    let mut h = vec![
        w(98, 500, 0, 10),
        r(99, 500, 11, 12),
        r(99, 1, 13, 14),
        r(99, 500, 15, 16),
    ];
    noise(&mut h, 0);
    assert!(decide(&h).is_violation());
    // One of them read, then the value before it again: still decided.
    let mut h = vec![w(98, 500, 0, 10), r(99, 5, 11, 12), r(99, 500, 13, 14)];
    noise(&mut h, 0);
    assert!(decide(&h).is_violation());
    // And the valid variants.
    let mut h = vec![w(98, 500, 0, 10), r(99, 5, 11, 12), r(99, 5, 13, 14)];
    noise(&mut h, 0);
    assert_eq!(decide(&h), Outcome::Linearizable);
    let mut h = vec![w(98, 500, 0, 10), r(99, 500, 11, 12)];
    noise(&mut h, 0);
    h.push(r(99, 7, 13, 14));
    assert_eq!(decide(&h), Outcome::Linearizable);
}

/// A search that gives up still answers Unknown: indeterminate writes of distinct
/// values that are each read (so not made equal) and a final read nobody wrote.
#[test]
fn a_hard_search_gives_up_as_unknown() {
    let mut h = Vec::new();
    for c in 0..18u64 {
        h.push(info_w(100 + c, c + 1, 0));
        h.push(r(200 + c, c + 1, 1, 100));
    }
    h.push(r(99, 1000, 200, 201));
    let limits = Limits {
        time: Duration::from_millis(1),
        max_cache: usize::MAX,
    };
    match check(&Register { initial: 0 }, &h, limits) {
        Outcome::Unknown(why) => assert!(why.contains("time limit"), "{why}"),
        other => panic!("expected unknown, got {other:?}"),
    }
}
