//! Lock workloads.
//!
//! - [`check_resource`] (workload `lock`): the fenced resource's own log, in the order
//!   the resource decided: accepted tokens never go down, between a holder's read and
//!   its write no other holder's operation was accepted (mutual exclusion as seen by the
//!   resource), and every accepted write is the value it replaced plus one (no lost
//!   update).
//! - [`check_tokens`]: fencing tokens of granted acquires strictly increase in
//!   real-time order (an acquire that completed before another was invoked has the
//!   smaller token), and no token is granted twice.
//! - [`check_intervals`] (both lock workloads): the intervals in which clients believed
//!   they held the lock, from the acquire's answer to the release's invocation or the
//!   moment the client saw the lock lost. Overlaps are counted; they are expected when
//!   clients are paused longer than their TTL or clocks are skewed (that is why fencing
//!   tokens exist) and a violation otherwise.

use super::Check;
use crate::history::{pairs, Event, Kind};

/// A time in the history, in seconds, for messages.
fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

/// Checks the fenced resource's log (events `resource-read` / `resource-write`).
pub fn check_resource(history: &[Event], workload: &str) -> Check {
    let mut c = Check::new("lock: fenced resource (mutual exclusion, no lost update)");
    let mut current: u64 = 0;
    let mut highest: u64 = 0;
    // The last accepted operation: (process, token, was a read).
    let mut last: Option<(u64, u64, bool, u64)> = None;
    for e in history
        .iter()
        .filter(|e| e.workload == workload && e.kind == Kind::Event)
    {
        let is_read = e.f == "resource-read";
        if !is_read && e.f != "resource-write" {
            continue;
        }
        let token = e.token.unwrap_or(0);
        if e.error.is_some() {
            c.count("rejected stale token", 1);
            continue;
        }
        c.count(if is_read { "reads" } else { "writes" }, 1);
        if token < highest {
            c.fail(format!(
                "event {} at {}: token {token} accepted after token {highest}",
                e.index,
                secs(e.time)
            ));
        }
        highest = highest.max(token);
        if !is_read {
            match last {
                Some((p, t, true, _)) if p == e.process && t == token => {}
                Some((p, t, _, idx)) => c.fail(format!(
                    "event {} at {}: write by process {} (token {token}) follows event {idx} \
                     by process {p} (token {t}), not its own read: two holders in the \
                     critical section",
                    e.index,
                    secs(e.time),
                    e.process
                )),
                None => c.fail(format!(
                    "event {}: write by process {} without a read",
                    e.index, e.process
                )),
            }
            let v = e.value.unwrap_or(0);
            if v != current + 1 {
                c.fail(format!(
                    "event {} at {}: process {} (token {token}) wrote {v} over {current}: \
                     lost update",
                    e.index,
                    secs(e.time),
                    e.process
                ));
            }
            current = v;
        }
        last = Some((e.process, token, is_read, e.index));
    }
    c.count("final value", current);
    c
}

/// Checks that granted tokens strictly increase in real-time order.
pub fn check_tokens(history: &[Event], workload: &str) -> Check {
    let mut c = Check::new(&format!(
        "{workload}: fencing tokens increase in real-time order"
    ));
    let mut granted: Vec<(u64, u64, u64, u64)> = Vec::new(); // (call, ret, token, index)
    for p in pairs(history, workload)
        .into_iter()
        .filter(|p| p.invoke.f == "acquire")
    {
        c.count("acquires", 1);
        match (p.outcome(), p.done) {
            (Kind::Ok, Some(done)) => match done.token {
                Some(t) => granted.push((p.invoke.time, done.time, t, done.index)),
                None => c.fail(format!("event {}: a grant without a token", done.index)),
            },
            (Kind::Fail, _) => c.count("acquires failed", 1),
            _ => c.count("acquires indeterminate", 1),
        }
    }
    c.count("grants", granted.len() as u64);
    let mut by_token = granted.clone();
    by_token.sort_by_key(|g| g.2);
    for w in by_token.windows(2) {
        if w[0].2 == w[1].2 {
            c.fail(format!(
                "token {} granted twice (events {} and {})",
                w[0].2, w[0].3, w[1].3
            ));
        }
    }
    // Sweep the grants in call order, with the largest token among those that had
    // returned before the call.
    let mut by_ret = granted.clone();
    by_ret.sort_by_key(|g| g.1);
    let mut by_call = granted;
    by_call.sort_by_key(|g| g.0);
    let mut best: Option<(u64, u64)> = None; // (token, index)
    let mut i = 0;
    for g in &by_call {
        while i < by_ret.len() && by_ret[i].1 < g.0 {
            if best.is_none_or(|(t, _)| by_ret[i].2 > t) {
                best = Some((by_ret[i].2, by_ret[i].3));
            }
            i += 1;
        }
        if let Some((t, idx)) = best {
            if g.2 <= t {
                c.fail(format!(
                    "event {}: token {} granted after the grant of token {t} (event {idx}) \
                     had completed",
                    g.3, g.2
                ));
            }
        }
    }
    c
}

/// One interval in which a client believed it held the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub process: u64,
    pub token: u64,
    pub start: u64,
    pub end: u64,
}

/// The hold intervals of a lock workload.
pub fn intervals(history: &[Event], workload: &str) -> Vec<Held> {
    let mut open: std::collections::HashMap<u64, Held> = std::collections::HashMap::new();
    let mut out = Vec::new();
    let end_of_history = history.last().map_or(0, |e| e.time);
    for e in history.iter().filter(|e| e.workload == workload) {
        let closes = (e.kind == Kind::Invoke && (e.f == "release" || e.f == "acquire"))
            || (e.kind == Kind::Event && (e.f == "lost" || e.f == "process-killed"));
        if closes {
            if let Some(mut h) = open.remove(&e.process) {
                h.end = e.time;
                out.push(h);
            }
        }
        if e.kind == Kind::Ok && e.f == "acquire" {
            open.insert(
                e.process,
                Held {
                    process: e.process,
                    token: e.token.unwrap_or(0),
                    start: e.time,
                    end: end_of_history,
                },
            );
        }
    }
    out.extend(open.into_values());
    out.sort_by_key(|h| (h.start, h.process));
    out
}

/// How long after a client pause or a clock fault ends overlaps are still blamed on
/// it, in nanoseconds (a resumed client notices its loss at once; a skewed node's
/// lease deadlines are restarted within a TTL).
pub const EXCUSE_AFTER_NS: u64 = 10_000_000_000;

/// The intervals in which clients were paused or a node's clock rate was skewed (plus
/// [`EXCUSE_AFTER_NS`]): unfenced mutual exclusion is not guaranteed then.
pub fn excuses(history: &[Event]) -> Vec<(u64, u64)> {
    let end = history.last().map_or(0, |e| e.time);
    let mut open: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in history.iter().filter(|e| e.workload == "nemesis") {
        // A wall-clock offset moves only entry times (leases run on monotonic clocks):
        // it excuses nothing. A rate change does (a fast leader expires leases early).
        let rate = e
            .items
            .as_ref()
            .is_some_and(|i| i.iter().any(|s| s.contains("run at")));
        match e.f.as_str() {
            "start-pause-client" => {
                open.insert(&e.f[6..], e.time);
            }
            "start-clock" if rate => {
                open.insert(&e.f[6..], e.time);
            }
            "stop-pause-client" | "stop-clock" => {
                if let Some(s) = open.remove(&e.f[5..]) {
                    out.push((s, e.time + EXCUSE_AFTER_NS));
                }
            }
            "heal-all" => {
                for (_, s) in open.drain() {
                    out.push((s, e.time + EXCUSE_AFTER_NS));
                }
            }
            _ => {}
        }
    }
    out.extend(open.into_values().map(|s| (s, end + EXCUSE_AFTER_NS)));
    out
}

/// Counts overlapping hold intervals. An overlap is a violation unless it meets one of
/// the `excused` intervals (a client paused past its TTL, a clock skewed: unfenced
/// mutual exclusion is then not guaranteed, which is why fencing tokens exist).
/// How soon after a node installed a snapshot from the leader an unexplained overlap is
/// attributed to the known bug (jepsen/README.md, "Findings"), in nanoseconds.
pub const AFTER_INSTALL_NS: u64 = 5_000_000_000;

pub fn check_intervals(
    history: &[Event],
    workload: &str,
    excused: &[(u64, u64)],
    strict: bool,
) -> Check {
    let mut c = Check::new(&format!(
        "{workload}: clients that believed they held the lock at once"
    ));
    let installs: Vec<(u64, String)> = history
        .iter()
        .filter(|e| e.workload == "cluster" && e.f == "snapshot-install")
        .map(|e| (e.time, e.key.clone().unwrap_or_default()))
        .collect();
    let held = intervals(history, workload);
    c.count("hold intervals", held.len() as u64);
    let mut overlap_ns: u64 = 0;
    let mut overlaps = Vec::new();
    for (i, a) in held.iter().enumerate() {
        for b in held[i + 1..].iter() {
            if b.start >= a.end {
                // Sorted by start: no later interval overlaps `a` either... unless a
                // later one starts earlier, which sorting rules out.
                break;
            }
            if a.process != b.process {
                overlap_ns += a.end.min(b.end) - b.start;
                overlaps.push((*a, *b));
            }
        }
    }
    c.count("overlapping pairs", overlaps.len() as u64);
    c.count("overlap ms", overlap_ns / 1_000_000);
    let mut excused_count = 0u64;
    let mut shown = 0;
    for (a, b) in &overlaps {
        let (from, to) = (b.start, a.end.min(b.end));
        let overlaps_allowed = excused.iter().any(|(s, e)| *s <= to && from <= *e);
        if overlaps_allowed {
            excused_count += 1;
        }
        if shown >= 5 && overlaps_allowed {
            continue;
        }
        shown += 1;
        let text = format!(
            "process {} (token {}, {}..{}) and process {} (token {}, {}..{}) both believed \
             they held the lock",
            a.process,
            a.token,
            secs(a.start),
            secs(a.end),
            b.process,
            b.token,
            secs(b.start),
            secs(b.end)
        );
        let install = installs
            .iter()
            .rev()
            .find(|(t, _)| *t <= from && from - *t <= AFTER_INSTALL_NS);
        if overlaps_allowed {
            c.notes.push(text);
        } else if let Some((t, node)) = install {
            c.known_bug(
                strict,
                format!(
                    "{text}, {} ms after {node} installed a snapshot from the leader (two \
                     grants of one exclusive lock)",
                    (from - t) / 1_000_000
                ),
            );
        } else {
            c.fail(text);
        }
    }
    c.count(
        "overlapping pairs excused by pauses or clocks",
        excused_count,
    );
    if excused_count > 0 {
        c.notes.push(format!(
            "{excused_count} overlaps while clients were paused past their TTL or clocks were \
             skewed: expected without fencing, and the reason fencing tokens exist"
        ));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;

    fn ev(time: u64, process: u64, kind: Kind, f: &str) -> Event {
        Event::new(time, process, "lock", kind, f)
    }

    fn with_token(mut e: Event, t: u64) -> Event {
        e.token = Some(t);
        e
    }

    fn resource(time: u64, process: u64, f: &str, token: u64, value: u64) -> Event {
        let mut e = with_token(ev(time, process, Kind::Event, f), token);
        e.value = Some(value);
        e
    }

    fn number(mut h: Vec<Event>) -> Vec<Event> {
        for (i, e) in h.iter_mut().enumerate() {
            e.index = i as u64;
        }
        h
    }

    /// Two clients, one after the other, each acquiring, incrementing and releasing.
    fn good() -> Vec<Event> {
        number(vec![
            ev(0, 1, Kind::Invoke, "acquire"),
            ev(1, 2, Kind::Invoke, "acquire"),
            with_token(ev(2, 1, Kind::Ok, "acquire"), 10),
            resource(3, 1, "resource-read", 10, 0),
            resource(4, 1, "resource-write", 10, 1),
            ev(5, 1, Kind::Invoke, "release"),
            ev(6, 1, Kind::Ok, "release"),
            with_token(ev(7, 2, Kind::Ok, "acquire"), 12),
            resource(8, 2, "resource-read", 12, 1),
            resource(9, 2, "resource-write", 12, 2),
            ev(10, 2, Kind::Invoke, "release"),
            ev(11, 2, Kind::Ok, "release"),
        ])
    }

    #[test]
    fn a_clean_history_passes_every_lock_check() {
        let h = good();
        let r = check_resource(&h, "lock");
        assert_eq!(r.valid, Validity::Valid, "{r:?}");
        assert_eq!(r.stat("final value"), 2);
        assert_eq!(check_tokens(&h, "lock").valid, Validity::Valid);
        let i = check_intervals(&h, "lock", &[], false);
        assert_eq!(i.valid, Validity::Valid, "{i:?}");
        assert_eq!(i.stat("hold intervals"), 2);
    }

    #[test]
    fn interleaved_holders_and_lost_updates_are_caught() {
        // Both read 0 and both write 1: the second write is a lost update and follows
        // the other's read.
        let h = number(vec![
            with_token(ev(0, 1, Kind::Ok, "acquire"), 10),
            with_token(ev(0, 2, Kind::Ok, "acquire"), 11),
            resource(1, 1, "resource-read", 10, 0),
            resource(2, 2, "resource-read", 11, 0),
            resource(3, 2, "resource-write", 11, 1),
            resource(4, 1, "resource-write", 10, 1),
        ]);
        let r = check_resource(&h, "lock");
        assert_eq!(r.valid, Validity::Invalid);
        let text = r.problems.join("\n");
        assert!(text.contains("lost update"), "{text}");
        assert!(text.contains("two holders"), "{text}");
        assert!(text.contains("accepted after token 11"), "{text}");
    }

    #[test]
    fn rejected_stale_tokens_are_not_violations() {
        let mut h = good();
        let mut stale = resource(12, 1, "resource-write", 10, 2);
        stale.error = Some("stale token".into());
        h.push(stale);
        let h = number(h);
        let r = check_resource(&h, "lock");
        assert_eq!(r.valid, Validity::Valid);
        assert_eq!(r.stat("rejected stale token"), 1);
    }

    #[test]
    fn tokens_that_go_back_in_real_time_are_caught() {
        // Process 2 asks after process 1 was granted token 10, and gets 9.
        let h = number(vec![
            ev(0, 1, Kind::Invoke, "acquire"),
            with_token(ev(2, 1, Kind::Ok, "acquire"), 10),
            ev(3, 2, Kind::Invoke, "acquire"),
            with_token(ev(7, 2, Kind::Ok, "acquire"), 9),
        ]);
        let r = check_tokens(&h, "lock");
        assert_eq!(r.valid, Validity::Invalid);
        // Concurrent acquires may be granted in either order.
        let h = number(vec![
            ev(0, 1, Kind::Invoke, "acquire"),
            ev(1, 2, Kind::Invoke, "acquire"),
            with_token(ev(5, 1, Kind::Ok, "acquire"), 20),
            with_token(ev(6, 2, Kind::Ok, "acquire"), 19),
        ]);
        assert_eq!(check_tokens(&h, "lock").valid, Validity::Valid);
        // A token granted twice is always wrong.
        let h = number(vec![
            ev(0, 1, Kind::Invoke, "acquire"),
            ev(1, 2, Kind::Invoke, "acquire"),
            with_token(ev(5, 1, Kind::Ok, "acquire"), 20),
            with_token(ev(6, 2, Kind::Ok, "acquire"), 20),
        ]);
        assert_eq!(check_tokens(&h, "lock").valid, Validity::Invalid);
    }

    #[test]
    fn overlapping_beliefs_fail_unless_pauses_explain_them() {
        let h = number(vec![
            with_token(ev(0, 1, Kind::Ok, "acquire"), 10),
            with_token(ev(5, 2, Kind::Ok, "acquire"), 11),
            ev(7, 1, Kind::Invoke, "release"),
            ev(9, 2, Kind::Invoke, "release"),
        ]);
        let strict = check_intervals(&h, "lock", &[], false);
        assert_eq!(strict.valid, Validity::Invalid);
        assert_eq!(strict.stat("overlapping pairs"), 1);
        let lenient = check_intervals(&h, "lock", &[(6, 7)], false);
        assert_eq!(lenient.valid, Validity::Valid);
        assert_eq!(lenient.stat("overlapping pairs"), 1);
        // A pause long before does not excuse it.
        let unrelated = check_intervals(&h, "lock", &[(0, 1)], false);
        assert_eq!(unrelated.valid, Validity::Invalid);
        // Shortly after a snapshot install: the known bug, a violation only if strict.
        let mut install = Event::new(3, 0, "cluster", Kind::Event, "snapshot-install");
        install.key = Some("n2".into());
        let mut with_install = h.clone();
        with_install.insert(0, install);
        let with_install = number(with_install);
        let known = check_intervals(&with_install, "lock", &[], false);
        assert_eq!(known.valid, Validity::Valid);
        assert_eq!(known.known_bugs.len(), 1);
        assert_eq!(
            check_intervals(&with_install, "lock", &[], true).valid,
            Validity::Invalid
        );
        // A loss the client noticed ends its interval.
        let mut lost = ev(4, 1, Kind::Event, "lost");
        lost.token = Some(10);
        let h = number(vec![
            with_token(ev(0, 1, Kind::Ok, "acquire"), 10),
            lost,
            with_token(ev(5, 2, Kind::Ok, "acquire"), 11),
            ev(9, 2, Kind::Invoke, "release"),
        ]);
        assert_eq!(
            check_intervals(&h, "lock", &[], false).valid,
            Validity::Valid
        );
    }
}
