//! Registers: per-key read / write / compare-and-set on znodes, checked for
//! linearizability with `corral-checker` (Wing-Gong-Lowe search with memoisation, one
//! key at a time, with a time limit that answers "unknown").
//!
//! A register is a znode: its state is (value, version). A read returns both; a write
//! sets the value and bumps the version; a compare-and-set is `set_data` with an
//! expected version (ZooKeeper's conditional write), which fails with `BadVersion` when
//! the version differs. Writes and compare-and-sets that end in `info` (timeout, lost
//! connection) may have happened at any time after their invocation, or never; a write
//! that definitely failed is left out; reads that failed are left out. The model
//! ([`VersionedRegister`]) is shared with the simulator, in `corral-checker`.

use super::{Check, Validity};
use crate::history::{pairs, Event, Kind};
use corral_checker::versioned::{Input, Output, VersionedRegister};
use corral_checker::{check_partitioned, Limits, Operation, PartitionedOutcome};
use std::time::Duration;

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

/// What a definite answer says the register held: `(value, version)` at the operation's
/// linearization point (a read's state; the state a write left).
struct Seen {
    value: u64,
    version: u32,
    is_write: bool,
    call: u64,
    ret: u64,
    process: u64,
}

/// Necessary conditions of linearizability for one key's operations, checked without a
/// search: each version of a linearization is one state, written by one operation, so
///
/// - a version is seen with one value only (version 0 with the initial 0);
/// - a value that only one operation wrote is seen at one version only (that write's,
///   if its answer named it);
/// - a read's value was written by a write or successful (or indeterminate)
///   compare-and-set invoked before the read returned, and its version is at most the
///   number of such operations;
/// - versions never go down in real time: a read sees at least the version of every
///   read or write that returned before it was invoked, a write makes a higher one.
///
/// These catch the usual anomalies (a value never written, a stale read, an
/// acknowledged write lost under a later one) at once, however many indeterminate
/// writes would make the search exponential. Returns the problems found.
pub fn precheck(ops: &[Operation<Input, Output>]) -> Vec<String> {
    let mut problems = Vec::new();
    let show = |s: &Seen| {
        format!(
            "process {} {} ({}, version {}) [{:.3}s..{:.3}s]",
            s.process,
            if s.is_write { "wrote" } else { "read" },
            s.value,
            s.version,
            s.call as f64 / 1e9,
            s.ret as f64 / 1e9
        )
    };
    // Operations that may have written, by value, and all their call times (sorted).
    let mut writers: std::collections::HashMap<u64, Vec<&Operation<Input, Output>>> =
        std::collections::HashMap::new();
    let mut write_calls: Vec<u64> = Vec::new();
    for o in ops {
        let new = match (&o.input, &o.output) {
            (Input::Write(v), _) => *v,
            (Input::Cas { new, .. }, Some(Output::Cas(true)) | None) => *new,
            _ => continue,
        };
        writers.entry(new).or_default().push(o);
        write_calls.push(o.call);
    }
    write_calls.sort_unstable();
    let mut seen: Vec<Seen> = Vec::new();
    for o in ops {
        let Some(ret) = o.ret else { continue };
        match (&o.input, &o.output) {
            (Input::Read, Some(Output::Read((value, version)))) => seen.push(Seen {
                value: *value,
                version: *version,
                is_write: false,
                call: o.call,
                ret,
                process: o.process,
            }),
            (Input::Write(value), Some(Output::Written(Some(version)))) => seen.push(Seen {
                value: *value,
                version: *version,
                is_write: true,
                call: o.call,
                ret,
                process: o.process,
            }),
            _ => {}
        }
    }
    // One value per version, starting with the initial state.
    let mut at_version: std::collections::HashMap<u32, (u64, Option<&Seen>)> =
        std::collections::HashMap::from([(0, (0, None))]);
    for s in &seen {
        let (value, first) = *at_version.entry(s.version).or_insert((s.value, Some(s)));
        if value != s.value {
            problems.push(format!(
                "{} but {}: one version, two values (a lost or a phantom write)",
                show(s),
                first.map_or("version 0 is the initial value 0".to_string(), show)
            ));
        }
    }
    // One version per value written once.
    let mut of_value: std::collections::HashMap<u64, &Seen> = std::collections::HashMap::new();
    for s in &seen {
        let once = writers.get(&s.value).is_some_and(|w| w.len() == 1) && s.value != 0;
        if !once {
            continue;
        }
        let first = *of_value.entry(s.value).or_insert(s);
        if first.version != s.version {
            problems.push(format!(
                "{} but {}: a value written once, seen at two versions",
                show(s),
                show(first)
            ));
        }
    }
    for s in seen.iter().filter(|s| !s.is_write) {
        let initial = s.value == 0 && s.version == 0;
        let written_before = writers
            .get(&s.value)
            .is_some_and(|w| w.iter().any(|o| o.call <= s.ret));
        if !initial && !written_before {
            problems.push(format!(
                "{}: no write of {} was invoked before the read returned",
                show(s),
                s.value
            ));
        }
        let possible = write_calls.partition_point(|c| *c <= s.ret);
        if s.version as usize > possible {
            problems.push(format!(
                "{}: only {possible} writes were invoked before the read returned",
                show(s)
            ));
        }
    }
    // Real time: sweep in call order with the highest version returned before.
    let mut by_ret: Vec<&Seen> = seen.iter().collect();
    by_ret.sort_by_key(|s| s.ret);
    let mut by_call: Vec<&Seen> = seen.iter().collect();
    by_call.sort_by_key(|s| s.call);
    let mut best: Option<&Seen> = None;
    let mut i = 0;
    for s in by_call {
        while i < by_ret.len() && by_ret[i].ret < s.call {
            if best.is_none_or(|b| by_ret[i].version > b.version) {
                best = Some(by_ret[i]);
            }
            i += 1;
        }
        if let Some(b) = best {
            let behind = if s.is_write {
                s.version <= b.version
            } else {
                s.version < b.version
            };
            if behind {
                problems.push(format!(
                    "{} after {} had returned: the version went back (a stale read or a lost \
                     write)",
                    show(s),
                    show(b)
                ));
            }
        }
    }
    problems
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
    let mut by_key: std::collections::BTreeMap<String, Vec<Operation<Input, Output>>> =
        std::collections::BTreeMap::new();
    for (k, o) in ops {
        by_key.entry(k).or_default().push(o);
    }
    c.count("keys", by_key.len() as u64);
    // Keys that fail the quick necessary conditions are not searched.
    let mut searched = Vec::new();
    for (key, key_ops) in by_key {
        let problems = precheck(&key_ops);
        if problems.is_empty() {
            searched.extend(key_ops.into_iter().map(|o| (key.clone(), o)));
            continue;
        }
        c.count("keys refuted without a search", 1);
        c.fail(format!(
            "key {key}: not linearizable: {}{}",
            problems[..problems.len().min(3)].join("; "),
            if problems.len() > 3 {
                format!(" (and {} more)", problems.len() - 3)
            } else {
                String::new()
            }
        ));
    }
    let limits = Limits {
        time: time_limit,
        ..Limits::default()
    };
    match check_partitioned(&VersionedRegister, searched, limits) {
        PartitionedOutcome::Linearizable => {}
        PartitionedOutcome::Unknown(why) => {
            // A key refuted by the precheck keeps the check invalid.
            if c.valid == Validity::Valid {
                c.valid = Validity::Unknown;
            }
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
    fn hopeless_searches_end_in_time() {
        // Many concurrent indeterminate writes and a read nobody can explain. Without
        // the precheck the search tried every subset of the writes and answered unknown.
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
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        // A linearizable one of the same shape is found (the read of the 20th write
        // after all 20).
        h.pop();
        h.push(op(3, 1, Kind::Ok, "read", Some(20), Some(20)));
        assert_eq!(
            check(&h, "register", Duration::from_secs(5)).valid,
            Validity::Valid
        );
    }
}

/// One history per anomaly the register checker exists to catch, each next to the same
/// history without it, with and without many indeterminate writes around (which made
/// the search exponential: a violation then came out "unknown").
#[cfg(test)]
mod anomaly_tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// An operation on key k0 from `call` to `ret` ms: `Some(kind)` completes it.
    fn op(
        process: u64,
        f: &str,
        input: (Option<u64>, Option<u32>),
        call: u64,
        done: Option<(Kind, Option<u64>, Option<u32>)>,
        ret: u64,
    ) -> Vec<Event> {
        let mut inv = Event::new(call * MS, process, "register", Kind::Invoke, f);
        inv.key = Some("k0".into());
        (inv.value, inv.version) = input;
        let mut out = vec![inv];
        if let Some((kind, value, version)) = done {
            let mut d = Event::new(ret * MS, process, "register", kind, f);
            d.key = Some("k0".into());
            (d.value, d.version) = (value, version);
            out.push(d);
        }
        out
    }

    fn write(process: u64, v: u64, call: u64, ret: u64, version: u32) -> Vec<Event> {
        op(
            process,
            "write",
            (Some(v), None),
            call,
            Some((Kind::Ok, None, Some(version))),
            ret,
        )
    }

    fn read(process: u64, call: u64, ret: u64, v: u64, version: u32) -> Vec<Event> {
        op(
            process,
            "read",
            (None, None),
            call,
            Some((Kind::Ok, Some(v), Some(version))),
            ret,
        )
    }

    fn info_write(process: u64, v: u64, call: u64) -> Vec<Event> {
        op(
            process,
            "write",
            (Some(v), None),
            call,
            Some((Kind::Info, None, None)),
            call + 1,
        )
    }

    /// 18 indeterminate writes (values 1001..1018) by processes 20.., invoked at `call`.
    fn noise(call: u64) -> Vec<Event> {
        (0..18)
            .flat_map(|i| info_write(20 + i, 1001 + i, call))
            .collect()
    }

    fn verdict(parts: Vec<Vec<Event>>) -> Check {
        let h: Vec<Event> = parts.into_iter().flatten().collect();
        let started = std::time::Instant::now();
        let c = check(&h, "register", Duration::from_secs(2));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        c
    }

    /// A acknowledged at version 1, then B at version 2, then reads.
    fn two_writes() -> Vec<Vec<Event>> {
        vec![write(1, 501, 0, 1, 1), write(2, 502, 2, 3, 2)]
    }

    #[test]
    fn a_clean_history_passes_with_or_without_indeterminate_writes() {
        let mut h = two_writes();
        h.push(read(3, 4, 5, 502, 2));
        assert_eq!(verdict(h.clone()).valid, Validity::Valid);
        // With the noise invoked after the reads, nothing changes.
        h.push(noise(10));
        h.push(read(3, 20, 21, 1005, 3));
        assert_eq!(verdict(h).valid, Validity::Valid);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught() {
        for noisy in [false, true] {
            let mut h = two_writes();
            h.push(read(3, 4, 5, 777, 2));
            if noisy {
                h.push(noise(0));
            }
            let c = verdict(h);
            assert_eq!(c.valid, Validity::Invalid, "{c:?}");
            assert!(c.problems[0].contains("no write of 777"), "{c:?}");
        }
    }

    #[test]
    fn a_stale_read_is_caught() {
        for noisy in [false, true] {
            // B (version 2) had been acknowledged; the read then sees A.
            let mut h = two_writes();
            h.push(read(3, 4, 5, 501, 1));
            if noisy {
                h.push(noise(4));
            }
            let c = verdict(h);
            assert_eq!(c.valid, Validity::Invalid, "{c:?}");
            assert!(c.problems[0].contains("went back"), "{c:?}");
        }
    }

    #[test]
    fn an_older_value_after_a_newer_one_was_read_is_caught() {
        for noisy in [false, true] {
            // B and A written concurrently; one reader sees B (version 2), a later one A.
            let mut h = vec![write(1, 501, 0, 10, 1), write(2, 502, 0, 10, 2)];
            h.push(read(3, 11, 12, 502, 2));
            h.push(read(4, 13, 14, 501, 1));
            if noisy {
                h.push(noise(11));
            }
            assert_eq!(verdict(h).valid, Validity::Invalid);
            // The same reads the other way round are fine.
            let mut h = vec![write(1, 501, 0, 10, 1), write(2, 502, 0, 10, 2)];
            h.push(read(4, 11, 12, 501, 1));
            h.push(read(3, 13, 14, 502, 2));
            // (While the writes were running.)
            h[2] = read(4, 5, 6, 501, 1);
            if noisy {
                h.push(noise(11));
            }
            assert_eq!(verdict(h).valid, Validity::Valid);
        }
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        for noisy in [false, true] {
            // A was acknowledged at version 1; B, invoked after, at version 1 too: A's
            // write was lost (overwritten in place).
            let mut h = vec![write(1, 501, 0, 1, 1), write(2, 502, 2, 3, 1)];
            if noisy {
                h.push(noise(2));
            }
            assert_eq!(verdict(h).valid, Validity::Invalid);
            // Or B is read at version 1 after A was acknowledged at version 1.
            let mut h = vec![write(1, 501, 0, 1, 1), info_write(2, 502, 2)];
            h.push(read(3, 4, 5, 502, 1));
            if noisy {
                h.push(noise(2));
            }
            assert_eq!(verdict(h).valid, Validity::Invalid);
        }
    }

    #[test]
    fn indeterminate_writes_may_apply_late_or_never_but_not_before_their_call() {
        let mut h = vec![write(1, 501, 0, 1, 1), info_write(2, 502, 2)];
        // Never seen.
        h.push(read(3, 10, 11, 501, 1));
        assert_eq!(verdict(h.clone()).valid, Validity::Valid);
        // Seen late, after a read that did not see it yet.
        h.push(read(3, 100, 101, 502, 2));
        assert_eq!(verdict(h).valid, Validity::Valid);
        // Seen before it was invoked.
        let h = vec![
            write(1, 501, 0, 1, 1),
            read(3, 2, 3, 502, 2),
            info_write(2, 502, 5),
        ];
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        // Seen at a version no count of writes reaches.
        let h = vec![
            write(1, 501, 0, 1, 1),
            info_write(2, 502, 2),
            read(3, 10, 11, 502, 5),
        ];
        assert_eq!(verdict(h).valid, Validity::Invalid);
    }

    #[test]
    fn what_only_the_search_sees_is_still_caught() {
        // The quick conditions hold (compare-and-set answers carry no version); the
        // search finds that both could not succeed on version 1.
        let h = vec![
            write(1, 501, 0, 1, 1),
            op(
                2,
                "cas",
                (Some(601), Some(1)),
                2,
                Some((Kind::Ok, None, None)),
                5,
            ),
            op(
                3,
                "cas",
                (Some(602), Some(1)),
                2,
                Some((Kind::Ok, None, None)),
                5,
            ),
        ];
        let ops: Vec<_> = operations(&h.iter().flatten().cloned().collect::<Vec<_>>(), "register")
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert!(precheck(&ops).is_empty());
        assert_eq!(verdict(h).valid, Validity::Invalid);
    }
}
