//! Registers: per-key read / write / compare-and-set on znodes, checked for
//! linearizability with `corral-checker` (Wing-Gong-Lowe search with memoisation, one
//! key at a time, with a time limit that answers "unknown").
//!
//! A register is a znode: its state is (value, version). A read returns both; a write
//! sets the value and bumps the version; a compare-and-set is `set_data` with an
//! expected version (ZooKeeper's conditional write), which fails with `BadVersion` when
//! the version differs. Writes and compare-and-sets that end in `info` (timeout, lost
//! connection) may have happened at any time after their invocation, or never; a write
//! that definitely failed is left out; reads that failed are left out.

use super::{Check, Validity};
use crate::history::{pairs, Event, Kind};
use corral_checker::{check_partitioned, Limits, Model, Operation, PartitionedOutcome};
use std::time::Duration;

/// A znode's data and version.
pub type State = (u64, u32);

/// Register operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    Read,
    Write(u64),
    /// Set to `new` if the version is `expect`.
    Cas {
        expect: u32,
        new: u64,
    },
}

/// Register answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    Read(State),
    /// Written; the new version, if the answer carried it.
    Written(Option<u32>),
    /// Whether the compare-and-set took effect.
    Cas(bool),
}

/// The sequential specification of a versioned register.
#[derive(Debug, Clone, Copy, Default)]
pub struct VersionedRegister;

impl Model for VersionedRegister {
    type State = State;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> State {
        (0, 0)
    }

    fn step(&self, s: &State, input: &Input, output: Option<&Output>) -> Option<State> {
        let (value, version) = *s;
        match (input, output) {
            (Input::Read, None) => Some(*s),
            (Input::Read, Some(Output::Read(seen))) => (seen == s).then_some(*s),
            (Input::Write(v), None) => Some((*v, version + 1)),
            (Input::Write(v), Some(Output::Written(new_version))) => new_version
                .is_none_or(|n| n == version + 1)
                .then_some((*v, version + 1)),
            (Input::Cas { expect, new }, None) => Some(if *expect == version {
                (*new, version + 1)
            } else {
                (value, version)
            }),
            (Input::Cas { expect, new }, Some(Output::Cas(true))) => {
                (*expect == version).then_some((*new, version + 1))
            }
            (Input::Cas { expect, .. }, Some(Output::Cas(false))) => {
                (*expect != version).then_some(*s)
            }
            _ => None,
        }
    }
}

/// The per-key operations of a register history.
pub fn operations(history: &[Event], workload: &str) -> Vec<(String, Operation<Input, Output>)> {
    let mut out = Vec::new();
    for p in pairs(history, workload) {
        let i = p.invoke;
        let Some(key) = i.key.clone() else { continue };
        let input = match i.f.as_str() {
            "read" => Input::Read,
            "write" => Input::Write(i.value.unwrap_or(0)),
            "cas" => Input::Cas {
                expect: i.version.unwrap_or(0),
                new: i.value.unwrap_or(0),
            },
            _ => continue,
        };
        let output = match (p.outcome(), p.done, &input) {
            (Kind::Ok, Some(d), Input::Read) => {
                Some(Output::Read((d.value.unwrap_or(0), d.version.unwrap_or(0))))
            }
            (Kind::Ok, Some(d), Input::Write(_)) => Some(Output::Written(d.version)),
            (Kind::Ok, _, Input::Cas { .. }) => Some(Output::Cas(true)),
            // Only BadVersion says the version differed; any other definite failure
            // (NoNode: the register was not created yet) did nothing.
            (Kind::Fail, Some(d), Input::Cas { .. })
                if d.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("BadVersion")) =>
            {
                Some(Output::Cas(false))
            }
            // A failed read or write did nothing: leave it out.
            (Kind::Fail, _, _) => continue,
            // An indeterminate read tells nothing.
            (_, _, Input::Read) => continue,
            _ => None,
        };
        let ret = if output.is_some() { p.ret() } else { None };
        out.push((
            key,
            Operation {
                process: i.process,
                input,
                output,
                call: i.time,
                ret,
            },
        ));
    }
    out
}

/// Checks a register workload's history.
pub fn check(history: &[Event], workload: &str, time_limit: Duration) -> Check {
    let mut c = Check::new("register: linearizable per key (Wing-Gong-Lowe)");
    let ops = operations(history, workload);
    c.count("operations", ops.len() as u64);
    c.count(
        "indeterminate",
        ops.iter().filter(|(_, o)| o.output.is_none()).count() as u64,
    );
    let keys: std::collections::BTreeSet<&String> = ops.iter().map(|(k, _)| k).collect();
    c.count("keys", keys.len() as u64);
    let limits = Limits {
        time: time_limit,
        ..Limits::default()
    };
    match check_partitioned(&VersionedRegister, ops, limits) {
        PartitionedOutcome::Linearizable => {}
        PartitionedOutcome::Unknown(why) => {
            c.valid = Validity::Unknown;
            for (key, reason) in why {
                c.notes.push(format!("key {key}: {reason}"));
            }
        }
        PartitionedOutcome::NotLinearizable {
            key,
            violation,
            history,
        } => {
            let show = |i: usize| {
                let o = &history[i];
                format!(
                    "process {} {:?} -> {:?} [{:.3}s..{}]",
                    o.process,
                    o.input,
                    o.output,
                    o.call as f64 / 1e9,
                    o.ret
                        .map_or("?".to_string(), |r| format!("{:.3}s", r as f64 / 1e9))
                )
            };
            let tail: Vec<String> = violation
                .linearized
                .iter()
                .rev()
                .take(5)
                .rev()
                .map(|&i| show(i))
                .collect();
            let stuck: Vec<String> = violation.stuck_at.iter().map(|&i| show(i)).collect();
            c.fail(format!(
                "key {key}: not linearizable; longest explanation ends with [{}]; no place \
                 for [{}]",
                tail.join("; "),
                stuck.join("; ")
            ));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        time: u64,
        process: u64,
        kind: Kind,
        f: &str,
        value: Option<u64>,
        version: Option<u32>,
    ) -> Event {
        let mut e = Event::new(time, process, "register", kind, f);
        e.key = Some("k0".into());
        e.value = value;
        e.version = version;
        e
    }

    fn bad_version(mut e: Event) -> Event {
        e.error = Some("BadVersion: version of /k0 is 2, expected 1".into());
        e
    }

    fn run(h: &[Event]) -> Validity {
        check(h, "register", Duration::from_secs(5)).valid
    }

    #[test]
    fn sequential_versions_pass() {
        let h = vec![
            op(0, 1, Kind::Invoke, "write", Some(5), None),
            op(1, 1, Kind::Ok, "write", None, Some(1)),
            op(2, 2, Kind::Invoke, "cas", Some(6), Some(1)),
            op(3, 2, Kind::Ok, "cas", None, None),
            op(4, 1, Kind::Invoke, "cas", Some(7), Some(1)),
            bad_version(op(5, 1, Kind::Fail, "cas", None, None)),
            op(6, 2, Kind::Invoke, "read", None, None),
            op(7, 2, Kind::Ok, "read", Some(6), Some(2)),
        ];
        assert_eq!(run(&h), Validity::Valid);
    }

    #[test]
    fn only_bad_version_counts_as_a_failed_compare_and_set() {
        // A CAS that failed because the register did not exist yet did nothing; read as
        // "the version differed" it would contradict the initial version 0.
        let mut no_node = op(1, 1, Kind::Fail, "cas", None, None);
        no_node.error = Some("NoNode: /k0".into());
        let h = vec![op(0, 1, Kind::Invoke, "cas", Some(7), Some(0)), no_node];
        assert_eq!(run(&h), Validity::Valid);
        let h = vec![
            op(0, 1, Kind::Invoke, "cas", Some(7), Some(0)),
            bad_version(op(1, 1, Kind::Fail, "cas", None, None)),
        ];
        assert_eq!(run(&h), Validity::Invalid);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = vec![
            op(0, 1, Kind::Invoke, "write", Some(5), None),
            op(1, 1, Kind::Ok, "write", None, Some(1)),
            op(2, 2, Kind::Invoke, "read", None, None),
            op(3, 2, Kind::Ok, "read", Some(0), Some(0)),
        ];
        assert_eq!(run(&h), Validity::Invalid);
    }

    #[test]
    fn two_successful_cas_on_one_version_are_caught() {
        let h = vec![
            op(0, 1, Kind::Invoke, "cas", Some(1), Some(0)),
            op(0, 2, Kind::Invoke, "cas", Some(2), Some(0)),
            op(1, 1, Kind::Ok, "cas", None, None),
            op(1, 2, Kind::Ok, "cas", None, None),
        ];
        assert_eq!(run(&h), Validity::Invalid);
    }

    #[test]
    fn info_writes_may_apply_late_but_only_once() {
        // An indeterminate write observed later is fine.
        let h = vec![
            op(0, 1, Kind::Invoke, "write", Some(5), None),
            op(1, 1, Kind::Info, "write", None, None),
            op(2, 2, Kind::Invoke, "read", None, None),
            op(3, 2, Kind::Ok, "read", Some(0), Some(0)),
            op(4, 2, Kind::Invoke, "read", None, None),
            op(5, 2, Kind::Ok, "read", Some(5), Some(1)),
        ];
        assert_eq!(run(&h), Validity::Valid);
        // Observed before it was invoked: impossible.
        let h = vec![
            op(0, 2, Kind::Invoke, "read", None, None),
            op(1, 2, Kind::Ok, "read", Some(5), Some(1)),
            op(2, 1, Kind::Invoke, "write", Some(5), None),
            op(3, 1, Kind::Info, "write", None, None),
        ];
        assert_eq!(run(&h), Validity::Invalid);
        // A failed write must not be seen.
        let h = vec![
            op(0, 1, Kind::Invoke, "write", Some(5), None),
            op(1, 1, Kind::Fail, "write", None, None),
            op(2, 2, Kind::Invoke, "read", None, None),
            op(3, 2, Kind::Ok, "read", Some(5), Some(1)),
        ];
        assert_eq!(run(&h), Validity::Invalid);
    }

    #[test]
    fn keys_are_checked_separately_and_the_bad_one_is_named() {
        let mut h = vec![
            op(0, 1, Kind::Invoke, "write", Some(5), None),
            op(1, 1, Kind::Ok, "write", None, Some(1)),
            op(2, 2, Kind::Invoke, "read", None, None),
            op(3, 2, Kind::Ok, "read", Some(0), Some(0)),
        ];
        for e in &mut h[2..] {
            e.key = Some("k1".into());
        }
        // k0: one write; k1: a read of the initial value. Both fine.
        assert_eq!(run(&h), Validity::Valid);
        h[3].value = Some(9);
        let c = check(&h, "register", Duration::from_secs(5));
        assert_eq!(c.valid, Validity::Invalid);
        assert!(c.problems[0].contains("key k1"), "{:?}", c.problems);
    }

    #[test]
    fn hopeless_searches_answer_unknown_not_hang() {
        // Many concurrent indeterminate writes and a read nobody can explain cheaply.
        let mut h = Vec::new();
        for p in 0..20u64 {
            h.push(op(0, p + 10, Kind::Invoke, "write", Some(p + 1), None));
        }
        for p in 0..20u64 {
            h.push(op(1, p + 10, Kind::Info, "write", None, None));
        }
        h.push(op(2, 1, Kind::Invoke, "read", None, None));
        h.push(op(3, 1, Kind::Ok, "read", Some(999), Some(20)));
        let started = std::time::Instant::now();
        let c = check(&h, "register", Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_ne!(c.valid, Validity::Valid);
    }
}
