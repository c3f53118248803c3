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
//! - Workload `multilock` writes each event once per lock it concerns (`key`):
//!   [`lock_history`] splits out one lock's history, which gets [`check_tokens`] and
//!   [`check_intervals`] as the `unfenced` lock does (holders of one lock and of groups
//!   containing it never overlap), and [`check_group_tokens`] checks that a token, the
//!   zxid of one request, is granted to one process only, whatever the lock.
//! - Workload `shared` (a read-write lock and a semaphore): each lock's history gets
//!   [`check_tokens`] and [`check_shared`], which allows readers together and at most
//!   `permits` semaphore holders, with the same excuses as [`check_intervals`].

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
    // token -> (process, event index) of its first use: a token belongs to one hold,
    // so to one process.
    let mut owner: std::collections::HashMap<u64, (u64, u64)> = std::collections::HashMap::new();
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
        let (first, idx) = *owner.entry(token).or_insert((e.process, e.index));
        if first != e.process {
            c.fail(format!(
                "event {} at {}: process {} used token {token}, which process {first} used \
                 (event {idx}): one token, two holders",
                e.index,
                secs(e.time),
                e.process
            ));
        }
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

/// The workload name given to lock `key`'s events of a multi-lock workload.
pub fn lock_label(workload: &str, key: &str) -> String {
    format!("{workload} {key}")
}

/// One lock's history in a multi-lock workload: its events (those whose `key` is `key`),
/// renamed [`lock_label`], and the cluster's events (leaders, installs), which
/// [`check_intervals`] reads.
pub fn lock_history(history: &[Event], workload: &str, key: &str) -> Vec<Event> {
    let label = lock_label(workload, key);
    history
        .iter()
        .filter(|e| {
            e.workload == "cluster" || (e.workload == workload && e.key.as_deref() == Some(key))
        })
        .map(|e| {
            let mut e = e.clone();
            if e.workload == workload {
                e.workload = label.clone();
            }
            e
        })
        .collect()
}

/// The locks (`key`s) of a multi-lock workload's events.
pub fn lock_keys(history: &[Event], workload: &str) -> std::collections::BTreeSet<String> {
    history
        .iter()
        .filter(|e| e.workload == workload)
        .filter_map(|e| e.key.clone())
        .collect()
}

/// A granted token names one request (a `Lock` or `LockMany` transaction): one process
/// holds it, whichever of its locks the grant is of.
pub fn check_group_tokens(history: &[Event], workload: &str) -> Check {
    let mut c = Check::new(&format!(
        "{workload}: every token is granted to one process"
    ));
    let mut owner: std::collections::HashMap<u64, (u64, u64)> = std::collections::HashMap::new();
    for e in history
        .iter()
        .filter(|e| e.workload == workload && e.kind == Kind::Ok && e.f == "acquire")
    {
        c.count("lock grants", 1);
        let Some(token) = e.token else {
            c.fail(format!("event {}: a grant without a token", e.index));
            continue;
        };
        let (p, idx) = *owner.entry(token).or_insert((e.process, e.index));
        if p != e.process {
            c.fail(format!(
                "event {}: token {token} granted to process {} (lock {}), and to process {p} \
                 (event {idx})",
                e.index,
                e.process,
                e.key.as_deref().unwrap_or("?")
            ));
        }
    }
    c.count("tokens", owner.len() as u64);
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
    // Lines of different processes are not strictly in time order: holds still open at
    // the end close just after the latest time in the history (they were held then),
    // never before they started.
    let end_of_history = history
        .iter()
        .map(|e| e.time)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    for e in history.iter().filter(|e| e.workload == workload) {
        let closes = (e.kind == Kind::Invoke && (e.f == "release" || e.f == "acquire"))
            || (e.kind == Kind::Event && (e.f == "lost" || e.f == "process-killed"));
        // A `lost` names the token of the hold it ends: one of an earlier hold (its
        // watcher raced the release) must not end the current one early, which would
        // hide an overlap.
        let other_hold = e.f == "lost"
            && e.token
                .zip(open.get(&e.process))
                .is_some_and(|(t, h)| t != h.token);
        if closes && !other_hold {
            if let Some(mut h) = open.remove(&e.process) {
                h.end = e.time.max(h.start);
                out.push(h);
            }
        }
        if e.kind == Kind::Ok && e.f == "acquire" {
            let previous = open.insert(
                e.process,
                Held {
                    process: e.process,
                    token: e.token.unwrap_or(0),
                    start: e.time,
                    end: end_of_history,
                },
            );
            // A grant while a hold is open (its release's or this acquire's invocation
            // missing from the history): the earlier hold lasted until now at least.
            if let Some(mut h) = previous {
                h.end = e.time.max(h.start);
                out.push(h);
            }
        }
    }
    out.extend(open.into_values().map(|mut h| {
        h.end = h.end.max(h.start);
        h
    }));
    out.sort_by_key(|h| (h.start, h.process));
    out
}

/// How long after a client pause or a clock fault ends a grant is still blamed on it,
/// by default, in nanoseconds: the harness's session TTL (3 s) plus its election
/// timeout (400 ms). A lease that expired early during the fault is re-granted within a
/// TTL, a new leader within an election timeout. `analyze` uses the run's own settings.
pub const DEFAULT_EXCUSE_TAIL_NS: u64 = 3_400_000_000;

/// What makes an overlap of two holds possible without a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// This client process was SIGSTOPped while it held the lock (it cannot notice
    /// that its lease expired; fencing tokens exist for this).
    ClientPaused(u64),
    /// This node's clocks ran at another rate (a fast leader expires leases early). A
    /// wall-clock offset moves only entry times (leases run on monotonic clocks): it
    /// excuses nothing.
    ClockRate(u64),
}

/// A fault window: `from` its start to `to` its end plus the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Excuse {
    pub cause: Cause,
    pub from: u64,
    pub to: u64,
}

/// The number after `word ` in a nemesis description ("SIGSTOP client 7 ...",
/// "node 2 clocks run at 2x").
fn number_after(text: &str, word: &str) -> Option<u64> {
    let rest = &text[text.find(word)? + word.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The fault windows in which unfenced mutual exclusion is not guaranteed: client
/// pauses (per paused process) and clock-rate faults (per node), each extended by
/// `tail_ns` after it ended. Faults still active at the end run to the end of the
/// history plus the tail.
pub fn excuses(history: &[Event], tail_ns: u64) -> Vec<Excuse> {
    let end = history.iter().map(|e| e.time).max().unwrap_or(0);
    let mut open: std::collections::HashMap<&'static str, (Cause, u64)> =
        std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in history.iter().filter(|e| e.workload == "nemesis") {
        let what = e
            .items
            .as_ref()
            .and_then(|i| i.first())
            .map_or("", String::as_str);
        match e.f.as_str() {
            "start-pause-client" => {
                if let Some(p) = number_after(what, "client") {
                    open.insert("pause-client", (Cause::ClientPaused(p), e.time));
                }
            }
            "start-clock" if what.contains("run at") => {
                if let Some(n) = number_after(what, "node") {
                    open.insert("clock", (Cause::ClockRate(n), e.time));
                }
            }
            "stop-pause-client" | "stop-clock" => {
                if let Some((cause, from)) = open.remove(&e.f[5..]) {
                    out.push(Excuse {
                        cause,
                        from,
                        to: e.time + tail_ns,
                    });
                }
            }
            "heal-all" => {
                for (_, (cause, from)) in open.drain() {
                    out.push(Excuse {
                        cause,
                        from,
                        to: e.time + tail_ns,
                    });
                }
            }
            _ => {}
        }
    }
    out.extend(open.into_values().map(|(cause, from)| Excuse {
        cause,
        from,
        to: end + tail_ns,
    }));
    out
}

/// The nodes' reports of who leads (`cluster` events `leader`): (time, leader), in
/// time order.
fn leader_reports(history: &[Event]) -> Vec<(u64, u64)> {
    let mut leaders: Vec<(u64, u64)> = history
        .iter()
        .filter(|e| e.workload == "cluster" && e.f == "leader")
        .filter_map(|e| e.value.filter(|l| *l != 0).map(|l| (e.time, l)))
        .collect();
    leaders.sort_unstable();
    leaders
}

/// Holds of a shared lock (workload `shared`, one lock's history from [`lock_history`]):
/// a read-write lock (`permits` `None`) holds a writer alone or any number of readers; a
/// semaphore holds at most `permits` at once. A grant beyond that is a violation unless
/// enough of the holds already open are excused by [`excuse_for`] (their client paused
/// past its TTL, a leader's clock rate skewed): every conflicting one for a read-write
/// lock, all but `permits - 1` of them for a semaphore. The kinds come from the grants'
/// `lock_kind` (`write` conflicts with every hold; anything else only with a `write`).
pub fn check_shared(
    history: &[Event],
    workload: &str,
    permits: Option<u32>,
    excused: &[Excuse],
) -> Check {
    let what = match permits {
        Some(n) => format!("at most {n} holders at once"),
        None => "a writer alone or readers together".to_string(),
    };
    let mut c = Check::new(&format!("{workload}: {what}"));
    let leaders = leader_reports(history);
    let writes: std::collections::HashSet<(u64, u64)> = history
        .iter()
        .filter(|e| e.workload == workload && e.kind == Kind::Ok && e.f == "acquire")
        .filter(|e| e.lock_kind.as_deref() == Some("write"))
        .map(|e| (e.process, e.token.unwrap_or(0)))
        .collect();
    let is_write = |h: &Held| writes.contains(&(h.process, h.token));
    let held = intervals(history, workload);
    c.count("hold intervals", held.len() as u64);
    let (mut shared, mut beyond, mut excused_count) = (0u64, 0u64, 0u64);
    for (i, b) in held.iter().enumerate() {
        // The other processes' holds open when `b` was granted (sorted by start).
        let open: Vec<&Held> = held[..i]
            .iter()
            .filter(|a| a.process != b.process && a.end > b.start)
            .collect();
        let conflicting: Vec<&Held> = match permits {
            Some(n) if open.len() >= n as usize => open.clone(),
            Some(_) => Vec::new(),
            None if is_write(b) => open.clone(),
            None => open.iter().copied().filter(|a| is_write(a)).collect(),
        };
        if conflicting.is_empty() {
            shared += u64::from(!open.is_empty());
            continue;
        }
        beyond += 1;
        let unexcused: Vec<&&Held> = conflicting
            .iter()
            .filter(|a| excuse_for(a, b, excused, &leaders).is_none())
            .collect();
        let allowed = permits.map_or(0, |n| n as usize - 1);
        if unexcused.len() <= allowed {
            excused_count += 1;
            continue;
        }
        c.fail(format!(
            "process {} (token {}{}, granted at {}) held it with {} ({} open holds, {} of \
             them not excused by a pause or a clock)",
            b.process,
            b.token,
            if is_write(b) { ", write" } else { "" },
            secs(b.start),
            unexcused
                .iter()
                .map(|a| format!(
                    "process {} (token {}{}, {}..{})",
                    a.process,
                    a.token,
                    if is_write(a) { ", write" } else { "" },
                    secs(a.start),
                    secs(a.end)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            open.len(),
            unexcused.len()
        ));
    }
    c.count("grants shared with another holder", shared);
    c.count("grants beyond what the lock allows", beyond);
    c.count("of them excused by pauses or clocks", excused_count);
    c
}

/// Whether `node` was the leader (as any node reported it, `cluster` events `leader`)
/// at some moment in `[from, to]`: the last report before `from`, or one in between.
fn was_leader(reports: &[(u64, u64)], node: u64, from: u64, to: u64) -> bool {
    let before = reports.iter().rev().find(|(t, _)| *t < from);
    before.is_some_and(|(_, l)| *l == node)
        || reports
            .iter()
            .any(|(t, l)| *l == node && from <= *t && *t <= to)
}

/// The excuse for the overlap of `a` (the earlier holder) and `b`, if any: `a`'s
/// process was paused, after `a` was granted, from before `b`'s grant until (the tail
/// after) it, or a
/// clock-rate fault, on a node that was the leader since the fault began, was in force
/// (with its tail) when `b` was granted.
pub fn excuse_for(a: &Held, b: &Held, excused: &[Excuse], leaders: &[(u64, u64)]) -> Option<Cause> {
    excused
        .iter()
        .find(|x| {
            x.from <= b.start
                && b.start <= x.to
                && match x.cause {
                    // Paused while it held the lock (the nemesis pauses holders): a pause
                    // that ended before `a` was granted explains nothing of `a`.
                    Cause::ClientPaused(p) => p == a.process && a.start <= x.from,
                    Cause::ClockRate(n) => was_leader(leaders, n, x.from, b.start),
                }
        })
        .map(|x| x.cause)
}

/// How soon after a node installed a snapshot from the leader an unexplained overlap is
/// attributed to the known bug (jepsen/README.md, "Findings"), in nanoseconds.
pub const AFTER_INSTALL_NS: u64 = 5_000_000_000;

/// Counts overlapping hold intervals. An overlap of an earlier hold `a` and a later `b`
/// is a violation unless [`excuse_for`] finds a fault that explains it (`a`'s client
/// paused past its TTL, a leader's clock rate skewed: unfenced mutual exclusion is then
/// not guaranteed, which is why fencing tokens exist).
pub fn check_intervals(
    history: &[Event],
    workload: &str,
    excused: &[Excuse],
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
    let leaders = leader_reports(history);
    let held = intervals(history, workload);
    c.count("hold intervals", held.len() as u64);
    let mut overlap_ns: u64 = 0;
    let mut overlaps = Vec::new();
    for (i, a) in held.iter().enumerate() {
        for b in held[i + 1..].iter() {
            if b.start >= a.end {
                // Sorted by start: no later interval overlaps `a` either.
                break;
            }
            if a.process != b.process {
                overlap_ns += a.end.min(b.end).saturating_sub(b.start);
                overlaps.push((*a, *b));
            }
        }
    }
    c.count("overlapping pairs", overlaps.len() as u64);
    c.count("overlap ms", overlap_ns / 1_000_000);
    let mut excused_count = 0u64;
    let mut shown = 0;
    for (a, b) in &overlaps {
        let from = b.start;
        let cause = excuse_for(a, b, excused, &leaders);
        if cause.is_some() {
            excused_count += 1;
        }
        if shown >= 5 && cause.is_some() {
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
        if let Some(cause) = cause {
            c.notes.push(match cause {
                Cause::ClientPaused(p) => format!("{text}: client {p} was paused"),
                Cause::ClockRate(n) => {
                    format!("{text}: the clocks of node {n} (leader) were skewed")
                }
            });
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
            "{excused_count} overlaps while the earlier holder was paused past its TTL or a \
             leader's clock rate was skewed: expected without fencing, and the reason fencing \
             tokens exist"
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
        let paused = |p, from, to| Excuse {
            cause: Cause::ClientPaused(p),
            from,
            to,
        };
        let lenient = check_intervals(&h, "lock", &[paused(1, 4, 7)], false);
        assert_eq!(lenient.valid, Validity::Valid);
        assert_eq!(lenient.stat("overlapping pairs"), 1);
        // A pause long before does not excuse it, nor one of the later holder.
        let unrelated = check_intervals(&h, "lock", &[paused(1, 0, 1)], false);
        assert_eq!(unrelated.valid, Validity::Invalid);
        let later = check_intervals(&h, "lock", &[paused(2, 4, 7)], false);
        assert_eq!(later.valid, Validity::Invalid);
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

    fn keyed(time: u64, process: u64, kind: Kind, f: &str, key: &str) -> Event {
        let mut e = Event::new(time, process, "multilock", kind, f);
        e.key = Some(key.to_string());
        e
    }

    /// A multi-lock history is checked lock by lock: a group's hold of `b` overlapping a
    /// single hold of `b` is caught on `b` and nowhere else, and one token granted to two
    /// processes (on different locks) is caught by the group check.
    #[test]
    fn multi_lock_histories_are_checked_per_lock_and_per_token() {
        let group = |t0: u64, p: u64, token: u64| {
            ["a", "b"].into_iter().flat_map(move |k| {
                [
                    keyed(t0, p, Kind::Invoke, "acquire", k),
                    with_token(keyed(t0 + 1, p, Kind::Ok, "acquire", k), token),
                    with_token(keyed(t0 + 10, p, Kind::Invoke, "release", k), token),
                ]
            })
        };
        let single = |t0: u64, p: u64, token: u64| {
            [
                keyed(t0, p, Kind::Invoke, "acquire", "b"),
                with_token(keyed(t0 + 1, p, Kind::Ok, "acquire", "b"), token),
                with_token(keyed(t0 + 10, p, Kind::Invoke, "release", "b"), token),
            ]
        };
        let verdicts = |h: Vec<Event>| {
            let mut h = h;
            h.sort_by_key(|e| e.time);
            let h = number(h);
            let per_lock: Vec<(String, Validity, Validity)> = lock_keys(&h, "multilock")
                .into_iter()
                .map(|k| {
                    let one = lock_history(&h, "multilock", &k);
                    let label = lock_label("multilock", &k);
                    assert!(one.iter().all(|e| e.workload == label));
                    (
                        k,
                        check_tokens(&one, &label).valid,
                        check_intervals(&one, &label, &[], true).valid,
                    )
                })
                .collect();
            (per_lock, check_group_tokens(&h, "multilock").valid)
        };
        let ok = Validity::Valid;
        let bad = Validity::Invalid;
        // One after the other: valid everywhere.
        let h: Vec<Event> = group(0, 1, 10).chain(single(20, 2, 11)).collect();
        let keys = |v: &[(String, Validity, Validity)]| {
            v.iter().map(|(k, ..)| k.clone()).collect::<Vec<_>>()
        };
        let (per_lock, tokens) = verdicts(h);
        assert_eq!(keys(&per_lock), ["a", "b"]);
        assert!(
            per_lock.iter().all(|(_, t, i)| *t == ok && *i == ok),
            "{per_lock:?}"
        );
        assert_eq!(tokens, ok);
        // The single hold of b begins inside the group's: b alone is invalid.
        let h: Vec<Event> = group(0, 1, 10).chain(single(5, 2, 11)).collect();
        let (per_lock, tokens) = verdicts(h);
        assert_eq!(per_lock, vec![("a".into(), ok, ok), ("b".into(), ok, bad)]);
        assert_eq!(tokens, ok);
        // Token 10 granted to process 1 (a, b) and to process 2 (b) later.
        let h: Vec<Event> = group(0, 1, 10).chain(single(20, 2, 10)).collect();
        let (_, tokens) = verdicts(h);
        assert_eq!(tokens, bad);
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;
    use crate::checker::Validity;

    /// A hold of `p` on the lock, `kind` `read`, `write` or `semaphore`, from `start` to
    /// `end` with token `token` (acquire, grant, release invocation).
    fn hold(p: u64, kind: &str, token: u64, start: u64, end: u64) -> Vec<Event> {
        let ev = |time: u64, k: Kind, f: &str| {
            let mut e = Event::new(time, p, "shared rw", k, f);
            e.lock_kind = Some(kind.to_string());
            e.token = (k != Kind::Invoke || f == "release").then_some(token);
            e
        };
        vec![
            ev(start.saturating_sub(1), Kind::Invoke, "acquire"),
            ev(start, Kind::Ok, "acquire"),
            ev(end, Kind::Invoke, "release"),
        ]
    }

    fn history(holds: Vec<Vec<Event>>) -> Vec<Event> {
        let mut h: Vec<Event> = holds.into_iter().flatten().collect();
        h.sort_by_key(|e| e.time);
        for (i, e) in h.iter_mut().enumerate() {
            e.index = i as u64;
        }
        h
    }

    fn paused(p: u64, from: u64, to: u64) -> Excuse {
        Excuse {
            cause: Cause::ClientPaused(p),
            from,
            to,
        }
    }

    /// Readers together pass, a writer with anyone fails unless every holder it overlaps
    /// was paused; a semaphore of 2 holds two, a third fails unless all but one of the
    /// holders before it were paused.
    #[test]
    fn shared_holds_are_checked_by_kind() {
        let check = |holds, permits, excused: &[Excuse]| {
            check_shared(&history(holds), "shared rw", permits, excused)
        };
        let readers = || vec![hold(1, "read", 10, 10, 100), hold(2, "read", 11, 20, 80)];
        let c = check(readers(), None, &[]);
        assert_eq!(c.valid, Validity::Valid, "{:?}", c.problems);
        assert_eq!(c.stat("grants shared with another holder"), 1);
        let mut with_writer = readers();
        with_writer.push(hold(3, "write", 12, 50, 90));
        assert_eq!(
            check(with_writer.clone(), None, &[]).valid,
            Validity::Invalid
        );
        // One of the two readers paused is not enough; both are.
        let one = [paused(1, 40, 60)];
        assert_eq!(
            check(with_writer.clone(), None, &one).valid,
            Validity::Invalid
        );
        let both = [paused(1, 40, 60), paused(2, 40, 60)];
        let c = check(with_writer, None, &both);
        assert_eq!(c.valid, Validity::Valid, "{:?}", c.problems);
        assert_eq!(c.stat("of them excused by pauses or clocks"), 1);
        // A reader granted while a writer holds fails too.
        let c = check(
            vec![hold(1, "write", 10, 10, 100), hold(2, "read", 11, 20, 80)],
            None,
            &[],
        );
        assert_eq!(c.valid, Validity::Invalid);
        // A semaphore of 2.
        let two = || {
            vec![
                hold(1, "semaphore", 10, 10, 100),
                hold(2, "semaphore", 11, 20, 80),
            ]
        };
        assert_eq!(check(two(), Some(2), &[]).valid, Validity::Valid);
        let mut three = two();
        three.push(hold(3, "semaphore", 12, 50, 90));
        assert_eq!(check(three.clone(), Some(2), &[]).valid, Validity::Invalid);
        let c = check(three, Some(2), &[paused(2, 40, 60)]);
        assert_eq!(c.valid, Validity::Valid, "{:?}", c.problems);
        // One after the other: nothing shared, nothing beyond.
        let c = check(
            vec![hold(1, "write", 10, 10, 20), hold(2, "write", 11, 30, 40)],
            None,
            &[],
        );
        assert_eq!(c.valid, Validity::Valid);
        assert_eq!(c.stat("grants beyond what the lock allows"), 0);
    }
}

#[cfg(test)]
mod excuse_tests {
    use super::*;
    use crate::checker::Validity;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;
    const TAIL: u64 = DEFAULT_EXCUSE_TAIL_NS;

    fn number(mut h: Vec<Event>) -> Vec<Event> {
        for (i, e) in h.iter_mut().enumerate() {
            e.index = i as u64;
        }
        h
    }

    fn ev(time: u64, process: u64, workload: &str, kind: Kind, f: &str) -> Event {
        Event::new(time, process, workload, kind, f)
    }

    fn tok(mut e: Event, t: u64) -> Event {
        e.token = Some(t);
        e
    }

    fn nemesis(time: u64, f: &str, what: &str) -> Event {
        let mut e = ev(time, 0, "nemesis", Kind::Event, f);
        e.items = Some(vec![what.to_string()]);
        e
    }

    fn leader(time: u64, reporter: &str, node: u64) -> Event {
        let mut e = ev(time, 0, "cluster", Kind::Event, "leader");
        e.key = Some(reporter.into());
        e.value = Some(node);
        e
    }

    /// Clients 1 and 2 both believe they hold `lock` from 10.2 s to 11.2 s.
    fn double_grant() -> Vec<Event> {
        vec![
            ev(10 * S, 1, "lock", Kind::Invoke, "acquire"),
            tok(ev(10 * S + MS, 1, "lock", Kind::Ok, "acquire"), 100),
            ev(10 * S + 100 * MS, 2, "lock", Kind::Invoke, "acquire"),
            tok(ev(10 * S + 200 * MS, 2, "lock", Kind::Ok, "acquire"), 101),
            tok(
                ev(11 * S + 200 * MS, 1, "lock", Kind::Invoke, "release"),
                100,
            ),
            tok(
                ev(11 * S + 300 * MS, 2, "lock", Kind::Invoke, "release"),
                101,
            ),
        ]
    }

    fn verdict(h: Vec<Event>) -> Check {
        let h = number(h);
        check_intervals(&h, "lock", &excuses(&h, TAIL), true)
    }

    #[test]
    fn an_overlap_is_excused_only_by_a_pause_of_the_earlier_holder_around_the_grant() {
        assert_eq!(verdict(double_grant()).valid, Validity::Invalid);
        // Another client (9, of another workload) paused 9 s before: no excuse.
        let mut h = vec![
            nemesis(
                S / 2,
                "start-pause-client",
                "SIGSTOP client 9 (holding the lock) for longer than the TTL (3000 ms)",
            ),
            nemesis(S, "stop-pause-client", "SIGCONT client 9"),
        ];
        h.extend(double_grant());
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert_eq!(c.stat("overlapping pairs excused by pauses or clocks"), 0);
        // The later holder (2) paused around the grant: no excuse either.
        let mut h = double_grant();
        h.insert(
            1,
            nemesis(
                10 * S + 50 * MS,
                "start-pause-client",
                "SIGSTOP client 2 (holding the lock)",
            ),
        );
        h.push(nemesis(15 * S, "stop-pause-client", "SIGCONT client 2"));
        assert_eq!(verdict(h).valid, Validity::Invalid);
        // The earlier holder (1) paused from before 2's grant: excused.
        let mut h = double_grant();
        h.insert(
            2,
            nemesis(
                10 * S + 50 * MS,
                "start-pause-client",
                "SIGSTOP client 1 (holding the lock)",
            ),
        );
        h.push(nemesis(15 * S, "stop-pause-client", "SIGCONT client 1"));
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("overlapping pairs excused by pauses or clocks"), 1);
        // The earlier holder's pause ended more than the tail before 2's grant: no excuse.
        let mut h = vec![
            nemesis(
                5 * S,
                "start-pause-client",
                "SIGSTOP client 1 (holding the lock)",
            ),
            nemesis(6 * S, "stop-pause-client", "SIGCONT client 1"),
        ];
        h.extend(double_grant());
        assert_eq!(verdict(h).valid, Validity::Invalid);
    }

    #[test]
    fn a_clock_rate_fault_excuses_an_overlap_only_on_a_leader_and_not_an_offset() {
        let with = |fault: &str, leader_node: u64| {
            let mut h = vec![
                leader(S, "n1", leader_node),
                nemesis(9 * S, "start-clock", fault),
            ];
            h.extend(double_grant());
            h.push(nemesis(12 * S, "stop-clock", "node 2 clock reset"));
            verdict(h)
        };
        assert_eq!(with("node 2 clocks run at 2x", 2).valid, Validity::Valid);
        // A follower's clock: no excuse.
        assert_eq!(with("node 2 clocks run at 2x", 3).valid, Validity::Invalid);
        // A wall-clock offset moves no lease deadline.
        assert_eq!(
            with("node 2 wall clock +30000 ms", 2).valid,
            Validity::Invalid
        );
    }

    #[test]
    fn open_holds_close_at_the_latest_time_in_the_history_not_the_last_lines() {
        let h = number(vec![
            tok(ev(100 * MS, 1, "unfenced", Kind::Ok, "acquire"), 1),
            tok(ev(150 * MS, 2, "unfenced", Kind::Ok, "acquire"), 2),
            // A line written later but stamped earlier (another worker's).
            ev(120 * MS, 3, "register", Kind::Invoke, "read"),
        ]);
        let held = intervals(&h, "unfenced");
        assert!(
            held.iter()
                .all(|x| x.end > x.start && x.end == 150 * MS + 1),
            "{held:?}"
        );
        let c = check_intervals(&h, "unfenced", &[], true);
        assert_eq!(c.stat("overlapping pairs"), 1);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
    }
}

/// One history per anomaly the lock checkers exist to catch, each next to the same
/// history without it.
#[cfg(test)]
mod anomaly_tests {
    use super::*;
    use crate::checker::Validity;

    const MS: u64 = 1_000_000;

    fn number(mut h: Vec<Event>) -> Vec<Event> {
        for (i, e) in h.iter_mut().enumerate() {
            e.index = i as u64;
        }
        h
    }

    fn ev(workload: &str, time: u64, process: u64, kind: Kind, f: &str) -> Event {
        Event::new(time * MS, process, workload, kind, f)
    }

    fn tok(mut e: Event, t: u64) -> Event {
        e.token = Some(t);
        e
    }

    /// The resource's decision: accepted (`value` is the counter after it) or rejected.
    fn res(time: u64, process: u64, f: &str, token: u64, value: u64, ok: bool) -> Event {
        let mut e = tok(ev("lock", time, process, Kind::Event, f), token);
        e.value = Some(value);
        if !ok {
            e.error = Some("stale token (highest seen 12)".into());
        }
        e
    }

    /// One whole hold of the fenced lock: acquire, read `v`, write `v + 1`, release.
    fn hold(t: u64, process: u64, token: u64, v: u64) -> Vec<Event> {
        vec![
            ev("lock", t, process, Kind::Invoke, "acquire"),
            tok(ev("lock", t + 1, process, Kind::Ok, "acquire"), token),
            res(t + 2, process, "resource-read", token, v, true),
            res(t + 3, process, "resource-write", token, v + 1, true),
            tok(ev("lock", t + 4, process, Kind::Invoke, "release"), token),
            tok(ev("lock", t + 5, process, Kind::Ok, "release"), token),
        ]
    }

    fn all_lock_checks(h: &[Event]) -> Vec<Check> {
        vec![
            check_resource(h, "lock"),
            check_tokens(h, "lock"),
            check_intervals(h, "lock", &excuses(h, DEFAULT_EXCUSE_TAIL_NS), true),
        ]
    }

    fn invalid_names(h: Vec<Event>) -> Vec<String> {
        all_lock_checks(&number(h))
            .into_iter()
            .filter(|c| c.valid != Validity::Valid)
            .map(|c| c.name)
            .collect()
    }

    fn clean() -> Vec<Event> {
        let mut h = hold(0, 1, 10, 0);
        h.extend(hold(10, 2, 12, 1));
        h.extend(hold(20, 1, 15, 2));
        h
    }

    #[test]
    fn the_clean_fenced_history_passes_every_check() {
        assert!(invalid_names(clean()).is_empty());
    }

    #[test]
    fn a_write_accepted_with_a_stale_token_is_caught() {
        // Process 1 held token 10, was paused, and writes after process 2 (token 12)
        // wrote: the resource must reject it.
        let mut h = clean();
        h.truncate(12);
        h.push(res(30, 1, "resource-write", 10, 3, false));
        assert!(
            invalid_names(h.clone()).is_empty(),
            "rejected: fencing worked"
        );
        h.pop();
        h.push(res(30, 1, "resource-write", 10, 3, true));
        let c = check_resource(&number(h), "lock");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c
            .problems
            .join(" ")
            .contains("token 10 accepted after token 12"));
    }

    #[test]
    fn a_read_accepted_with_a_token_that_went_backwards_is_caught() {
        let mut h = hold(0, 1, 12, 0);
        h.extend(hold(10, 2, 10, 1));
        // The resource accepted 10 after 12; the grants are also out of order.
        assert_eq!(
            invalid_names(h),
            vec![
                "lock: fenced resource (mutual exclusion, no lost update)",
                "lock: fencing tokens increase in real-time order"
            ]
        );
    }

    #[test]
    fn a_token_reused_by_a_second_holder_is_caught_at_the_resource_and_in_the_grants() {
        let mut h = hold(0, 1, 10, 0);
        h.extend(hold(10, 2, 10, 1));
        let c = check_resource(&number(h.clone()), "lock");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(
            c.problems.join(" ").contains("one token, two holders"),
            "{c:?}"
        );
        assert_eq!(check_tokens(&number(h), "lock").valid, Validity::Invalid);
        // Even when the grants were not recorded (only the resource's log).
        let h: Vec<Event> = number(
            hold(0, 1, 10, 0)
                .into_iter()
                .chain(hold(10, 2, 10, 1))
                .filter(|e| e.kind == Kind::Event)
                .collect(),
        );
        assert_eq!(check_resource(&h, "lock").valid, Validity::Invalid);
    }

    #[test]
    fn a_lost_update_is_caught() {
        let mut h = clean();
        // Process 2 read 1 but the write stored 1 again (an increment lost).
        h[9].value = Some(1);
        h[14].value = Some(1);
        h[15].value = Some(2);
        let c = check_resource(&number(h), "lock");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("lost update"), "{c:?}");
    }

    #[test]
    fn two_holders_in_the_critical_section_are_caught_even_with_tokens_in_order() {
        // 2's read and write come between 1's read and its write, which carries a
        // token (13) above every other and the value after 2's: accepted tokens never
        // go down, no token has two users, no increment is lost; only the interleaving
        // is wrong.
        let h = vec![
            res(1, 1, "resource-read", 10, 0, true),
            res(3, 2, "resource-read", 12, 0, true),
            res(4, 2, "resource-write", 12, 1, true),
            res(5, 1, "resource-write", 13, 2, true),
        ];
        let c = check_resource(&number(h), "lock");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert_eq!(c.stat("problems"), 1, "{c:?}");
        let text = c.problems.join(" ");
        assert!(text.contains("two holders"), "{text}");
    }

    #[test]
    fn two_unfenced_holders_at_once_are_caught_and_sequential_ones_are_not() {
        let h = |second_grant: u64| {
            number(vec![
                ev("unfenced", 0, 1, Kind::Invoke, "acquire"),
                tok(ev("unfenced", 1, 1, Kind::Ok, "acquire"), 10),
                ev("unfenced", 2, 2, Kind::Invoke, "acquire"),
                tok(ev("unfenced", second_grant, 2, Kind::Ok, "acquire"), 11),
                tok(ev("unfenced", 100, 1, Kind::Invoke, "release"), 10),
                tok(ev("unfenced", 101, 1, Kind::Ok, "release"), 10),
                tok(ev("unfenced", 200, 2, Kind::Invoke, "release"), 11),
                tok(ev("unfenced", 201, 2, Kind::Ok, "release"), 11),
            ])
        };
        let check = |h: &[Event]| check_intervals(h, "unfenced", &excuses(h, 0), true);
        let c = check(&h(50));
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert_eq!(c.stat("overlapping pairs"), 1);
        assert_eq!(check(&h(102)).valid, Validity::Valid);
        assert_eq!(check_tokens(&h(102), "unfenced").valid, Validity::Valid);
    }

    #[test]
    fn a_late_lost_event_of_an_earlier_hold_does_not_end_the_current_one() {
        // Process 1's watcher of its hold with token 10 reports the loss after the
        // process was granted token 20; process 2 is granted while 1 still holds 20.
        let h = number(vec![
            tok(ev("unfenced", 1, 1, Kind::Ok, "acquire"), 10),
            tok(ev("unfenced", 5, 1, Kind::Invoke, "release"), 10),
            tok(ev("unfenced", 7, 1, Kind::Ok, "acquire"), 20),
            tok(ev("unfenced", 8, 1, Kind::Event, "lost"), 10),
            tok(ev("unfenced", 9, 2, Kind::Ok, "acquire"), 21),
            tok(ev("unfenced", 12, 1, Kind::Invoke, "release"), 20),
            tok(ev("unfenced", 13, 2, Kind::Invoke, "release"), 21),
        ]);
        let c = check_intervals(&h, "unfenced", &[], true);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        // The loss of the current hold does end it.
        let mut h = h;
        h[3].token = Some(20);
        assert_eq!(
            check_intervals(&h, "unfenced", &[], true).valid,
            Validity::Valid
        );
    }

    #[test]
    fn indeterminate_acquires_and_releases_are_judged_by_what_the_client_knew() {
        // Process 2's acquire times out (indeterminate) while 1 holds: 2 never believed
        // it held the lock, so nothing overlaps, and no token is compared.
        let mut timed_out = ev("unfenced", 6, 2, Kind::Info, "acquire");
        timed_out.error = Some("timed out".into());
        // Process 1's release times out: it stopped using the lock when it asked, so a
        // grant to 3 after that is no overlap; one before it is.
        let h = |grant3: u64| {
            number(vec![
                ev("unfenced", 0, 1, Kind::Invoke, "acquire"),
                tok(ev("unfenced", 1, 1, Kind::Ok, "acquire"), 10),
                ev("unfenced", 2, 2, Kind::Invoke, "acquire"),
                timed_out.clone(),
                ev("unfenced", 8, 3, Kind::Invoke, "acquire"),
                tok(ev("unfenced", 20, 1, Kind::Invoke, "release"), 10),
                tok(ev("unfenced", 25, 1, Kind::Info, "release"), 10),
                tok(ev("unfenced", grant3, 3, Kind::Ok, "acquire"), 11),
                tok(ev("unfenced", 40, 3, Kind::Invoke, "release"), 11),
            ])
        };
        let ok = h(21);
        assert_eq!(
            check_intervals(&ok, "unfenced", &[], true).valid,
            Validity::Valid
        );
        let t = check_tokens(&ok, "unfenced");
        assert_eq!(t.valid, Validity::Valid, "{t:?}");
        assert_eq!(t.stat("acquires indeterminate"), 1);
        assert_eq!(
            check_intervals(&h(19), "unfenced", &[], true).valid,
            Validity::Invalid
        );
    }

    #[test]
    fn a_crashed_or_killed_holder_is_judged_by_what_is_known() {
        // Process 1 holds 10 and is killed at 20: it held until then, so 2's grant at
        // 15 overlaps and 2's grant at 25 does not.
        let h = |grant2: u64| {
            number(vec![
                tok(ev("unfenced", 1, 1, Kind::Ok, "acquire"), 10),
                ev("unfenced", 20, 1, Kind::Event, "process-killed"),
                ev("unfenced", 2, 2, Kind::Invoke, "acquire"),
                tok(ev("unfenced", grant2, 2, Kind::Ok, "acquire"), 11),
                tok(ev("unfenced", 40, 2, Kind::Invoke, "release"), 11),
            ])
        };
        assert_eq!(
            check_intervals(&h(25), "unfenced", &[], true).valid,
            Validity::Valid
        );
        assert_eq!(
            check_intervals(&h(15), "unfenced", &[], true).valid,
            Validity::Invalid
        );
        // A client that crashed without a trace while holding is taken to hold to the
        // end: a later grant overlaps (the harness must record deaths).
        let h = number(vec![
            tok(ev("unfenced", 1, 1, Kind::Ok, "acquire"), 10),
            ev("unfenced", 2, 2, Kind::Invoke, "acquire"),
            tok(ev("unfenced", 25, 2, Kind::Ok, "acquire"), 11),
        ]);
        assert_eq!(
            check_intervals(&h, "unfenced", &[], true).valid,
            Validity::Invalid
        );
        // An acquire whose client died before the answer (no completion) holds nothing
        // and has no token to compare.
        let h = number(vec![
            ev("unfenced", 0, 1, Kind::Invoke, "acquire"),
            tok(ev("unfenced", 1, 2, Kind::Ok, "acquire"), 11),
            tok(ev("unfenced", 30, 2, Kind::Invoke, "release"), 11),
        ]);
        assert_eq!(
            check_intervals(&h, "unfenced", &[], true).valid,
            Validity::Valid
        );
        let t = check_tokens(&h, "unfenced");
        assert_eq!(
            (t.valid, t.stat("acquires indeterminate")),
            (Validity::Valid, 1)
        );
    }

    /// A grant recorded while the process's previous hold was still open (the release
    /// invocation missing) used to replace that hold, which then overlapped nothing.
    #[test]
    fn a_hold_replaced_by_a_grant_without_a_release_still_counts() {
        let h = number(vec![
            tok(ev("unfenced", 1, 1, Kind::Ok, "acquire"), 10),
            tok(ev("unfenced", 5, 2, Kind::Ok, "acquire"), 11),
            tok(ev("unfenced", 7, 2, Kind::Invoke, "release"), 11),
            tok(ev("unfenced", 8, 1, Kind::Ok, "acquire"), 12),
            tok(ev("unfenced", 20, 1, Kind::Invoke, "release"), 12),
        ]);
        let c = check_intervals(&h, "unfenced", &[], true);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert_eq!(c.stat("hold intervals"), 3);
    }

    /// A pause that ended before the earlier holder was granted the lock does not
    /// explain the overlap (valid without the fix: the pause's tail covered the grant).
    #[test]
    fn a_pause_before_the_earlier_hold_began_excuses_nothing() {
        const S: u64 = 1_000_000_000;
        let nemesis = |t: u64, f: &str, what: &str| {
            let mut e = Event::new(t, 0, "nemesis", Kind::Event, f);
            e.items = Some(vec![what.into()]);
            e
        };
        let h = |paused_at: u64| {
            let mut h = vec![
                nemesis(
                    paused_at,
                    "start-pause-client",
                    "SIGSTOP client 1 (holding the lock)",
                ),
                nemesis(paused_at + S, "stop-pause-client", "SIGCONT client 1"),
                tok(Event::new(7 * S, 1, "unfenced", Kind::Ok, "acquire"), 10),
                tok(Event::new(8 * S, 2, "unfenced", Kind::Ok, "acquire"), 11),
                tok(
                    Event::new(9 * S, 1, "unfenced", Kind::Invoke, "release"),
                    10,
                ),
                tok(
                    Event::new(10 * S, 2, "unfenced", Kind::Invoke, "release"),
                    11,
                ),
            ];
            h.sort_by_key(|e| e.time);
            let h = number(h);
            check_intervals(&h, "unfenced", &excuses(&h, DEFAULT_EXCUSE_TAIL_NS), true)
        };
        // Paused 5..6 s, granted at 7 s: no excuse for 2's grant at 8 s.
        let c = h(5 * S);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        // Paused at 7.5 s while holding: excused.
        let c = h(7 * S + S / 2);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
    }
}
