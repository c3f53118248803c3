//! Sessions: after the final heal, every ephemeral of a client the nemesis killed must
//! be gone within TTL + election time (plus a fixed slack for polling), counted from the
//! heal, the client's death or the last leader change before the removal, whichever is
//! last: a new leader restarts every session's deadline at full TTL (by design, so that
//! a failover never expires a healthy client), and restarted nodes take a while to
//! elect one. Leader changes come from the nodes' logs (`cluster` events).
//!
//! Every observation that still lists a dead client's node is held to that bound (from
//! the heal, the death, or the last leader change before that observation). And a live
//! client's own ephemeral must persist: its `exists` answering "no node" (`own ephemeral
//! is gone`) is a violation unless the client was told within the bound that its
//! session expired.
//!
//! Events (workload `session`): `ephemeral` (a client created its node: `path`),
//! `process-killed` (the harness killed the client), `final-check` (the reference time
//! after healing; `value` is the bound in ms), and `observe` (the harness listed the
//! ephemerals: `items`).

use super::{Check, Validity};
use crate::history::{Event, Kind};
use std::collections::BTreeMap;

/// The bound when the history has no `final-check` (TTL 3 s + election 400 ms + 1 s).
const DEFAULT_BOUND_MS: u64 = 4_400;

pub fn check(history: &[Event], workload: &str) -> Check {
    let mut c = Check::new(
        "session: dead clients' ephemerals vanish within TTL + election; live ones stay",
    );
    let mut ephemerals: BTreeMap<u64, String> = BTreeMap::new();
    let mut killed: BTreeMap<u64, u64> = BTreeMap::new();
    let mut reference: Option<(u64, u64)> = None;
    let mut observations: Vec<(u64, Vec<String>)> = Vec::new();
    let leader_changes: Vec<u64> = history
        .iter()
        .filter(|e| e.workload == "cluster" && e.f == "leader")
        .map(|e| e.time)
        .collect();
    for e in history
        .iter()
        .filter(|e| e.workload == workload && e.kind == Kind::Event)
    {
        match e.f.as_str() {
            "ephemeral" => {
                if let Some(p) = &e.path {
                    ephemerals.insert(e.process, p.clone());
                }
            }
            "process-killed" => {
                killed.insert(e.process, e.time);
            }
            "final-check" => reference = Some((e.time, e.value.unwrap_or(0))),
            "observe" => observations.push((e.time, e.items.clone().unwrap_or_default())),
            _ => {}
        }
    }
    check_live(
        &mut c,
        history,
        workload,
        reference.map_or(DEFAULT_BOUND_MS, |r| r.1),
    );
    // A killed client's ephemerals: the one it reported, and any node named after it
    // (`p<process>-s<session>`) that the observations list, e.g. one whose create
    // was applied but never answered (the client cannot report it, and it must vanish
    // all the same: every session of a killed process is dead).
    let mut dead: Vec<(u64, String, u64)> = Vec::new();
    for (p, t) in &killed {
        let prefix = format!("p{p}-s");
        let mut paths: std::collections::BTreeSet<String> =
            ephemerals.get(p).cloned().into_iter().collect();
        let reported: Vec<String> = paths
            .iter()
            .map(|path| path.rsplit('/').next().unwrap_or(path).to_string())
            .collect();
        for (_, items) in &observations {
            for i in items {
                if i.starts_with(&prefix) && !reported.contains(i) {
                    paths.insert(i.clone());
                }
            }
        }
        dead.extend(paths.into_iter().map(|path| (*p, path, *t)));
    }
    c.count("ephemerals of killed clients", dead.len() as u64);
    let Some((heal, bound_ms)) = reference else {
        if c.valid == Validity::Valid {
            c.valid = Validity::Unknown;
        }
        c.notes.push("no final check was made".into());
        return c;
    };
    let mut worst: u64 = 0;
    for (process, path, died) in dead {
        let from = heal.max(died);
        let name = path.rsplit('/').next().unwrap_or(&path);
        let path = &path;
        let listed = |items: &Vec<String>| items.iter().any(|i| i == name || i == path);
        // Every observation that still lists the node must be within the bound of the
        // heal, the death, or the last leader change before that observation (a new
        // leader restarts every session's deadline).
        let mut late = false;
        for (t, _) in observations
            .iter()
            .filter(|(t, items)| *t >= from && listed(items))
        {
            let since = leader_changes
                .iter()
                .filter(|l| **l <= *t)
                .fold(from, |a, l| a.max(*l));
            let ms = (t - since) / 1_000_000;
            worst = worst.max(ms);
            if ms > bound_ms && !late {
                late = true;
                c.fail(format!(
                    "process {process}: {path} still listed at {:.3}s, {ms} ms after the heal, \
                     its death or the last leader change before, more than {bound_ms} ms",
                    *t as f64 / 1e9
                ));
            }
        }
        let gone = observations
            .iter()
            .find(|(t, items)| *t >= from && !listed(items));
        match gone {
            Some((t, _)) => {
                let since = leader_changes
                    .iter()
                    .filter(|l| **l <= *t)
                    .fold(from, |a, l| a.max(*l));
                let ms = t.saturating_sub(since) / 1_000_000;
                worst = worst.max(ms);
                if ms > bound_ms && !late {
                    c.fail(format!(
                        "process {process}: {path} vanished {ms} ms after the heal (or the last \
                         leader change), more than {bound_ms} ms"
                    ));
                }
            }
            None => c.fail(format!(
                "process {process}: {path} still exists at the last observation ({} after \
                 the heal; bound {bound_ms} ms)",
                observations
                    .last()
                    .map_or("none".to_string(), |(t, _)| format!(
                        "{} ms",
                        t.saturating_sub(from) / 1_000_000
                    ))
            )),
        }
    }
    c.count("slowest removal ms", worst);
    c
}

/// Whether an error text says the session expired.
fn expired(text: &str) -> bool {
    text.to_ascii_lowercase().contains("expired")
}

/// A live client's own ephemeral must exist: the worker's `exists` answered "no node"
/// (`own ephemeral is gone`) is a violation unless that client's session expired, i.e.
/// the client was told so (an error or state naming the expiry) within `bound_ms` after,
/// before it created a new ephemeral.
fn check_live(c: &mut Check, history: &[Event], workload: &str, bound_ms: u64) {
    let bound = bound_ms * 1_000_000;
    let mut by_process: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
    for e in history.iter().filter(|e| e.workload == workload) {
        by_process.entry(e.process).or_default().push(e);
    }
    let mut gone_count = 0u64;
    for (process, events) in &by_process {
        for (i, e) in events.iter().enumerate() {
            if !(e.f == "exists" && e.error.as_deref() == Some("own ephemeral is gone")) {
                continue;
            }
            gone_count += 1;
            let excused = events[i + 1..]
                .iter()
                .take_while(|l| l.f != "ephemeral")
                .take_while(|l| l.time <= e.time + bound)
                .any(|l| l.error.as_deref().is_some_and(expired));
            if excused {
                c.count("own ephemeral gone, session expired", 1);
            } else {
                c.fail(format!(
                    "process {process}: event {} at {:.3}s: its own ephemeral was gone while its \
                     session was not expired",
                    e.index,
                    e.time as f64 / 1e9
                ));
            }
        }
    }
    c.count("own ephemeral gone", gone_count);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(time_ms: u64, process: u64, f: &str) -> Event {
        Event::new(time_ms * 1_000_000, process, "session", Kind::Event, f)
    }

    fn history(gone_at_ms: u64) -> Vec<Event> {
        let mut eph = ev(0, 1, "ephemeral");
        eph.path = Some("/s/p1".into());
        let mut fin = ev(1000, 0, "final-check");
        fin.value = Some(3000);
        let mut present = ev(1100, 0, "observe");
        present.items = Some(vec!["p1".into(), "p2".into()]);
        let mut gone = ev(gone_at_ms, 0, "observe");
        gone.items = Some(vec!["p2".into()]);
        vec![eph, ev(500, 1, "process-killed"), fin, present, gone]
    }

    #[test]
    fn removal_within_the_bound_passes_and_late_removal_fails() {
        assert_eq!(check(&history(2500), "session").valid, Validity::Valid);
        assert_eq!(check(&history(9000), "session").valid, Validity::Invalid);
        // A leader change after the heal restarts the TTL: counted from there.
        let mut h = history(6000);
        h.insert(3, ev(3500, 0, "leader"));
        h[3].workload = "cluster".into();
        assert_eq!(check(&h, "session").valid, Validity::Valid);
        assert_eq!(check(&history(6000), "session").valid, Validity::Invalid);
        let mut h = history(2500);
        h.pop();
        assert_eq!(check(&h, "session").valid, Validity::Invalid);
    }

    fn observe(time_ms: u64, items: &[&str]) -> Event {
        let mut e = ev(time_ms, 0, "observe");
        e.items = Some(items.iter().map(|s| s.to_string()).collect());
        e
    }

    #[test]
    fn an_overdue_ephemeral_is_not_excused_by_a_later_leader_change() {
        // Heal at 1 s, bound 3 s; still listed at 8 s with no leader change before.
        let mut eph = ev(0, 1, "ephemeral");
        eph.path = Some("/jepsen/session/p1-s5".into());
        let mut fin = ev(1000, 0, "final-check");
        fin.value = Some(3000);
        let mut h = vec![
            eph,
            ev(500, 1, "process-killed"),
            fin,
            observe(1100, &["p1-s5"]),
            observe(8000, &["p1-s5"]),
        ];
        let mut late_leader = ev(8500, 0, "leader");
        late_leader.workload = "cluster".into();
        h.push(late_leader);
        h.push(observe(9000, &[]));
        let c = check(&h, "session");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(
            c.problems.join(" ").contains("still listed at 8.000s"),
            "{c:?}"
        );
        // A leader change before the late observation restarts the deadline.
        h[5].time = 6_000 * 1_000_000;
        assert_eq!(check(&h, "session").valid, Validity::Valid);
    }

    #[test]
    fn a_live_clients_own_ephemeral_must_not_vanish() {
        let history = |then_expired: bool| {
            let mut eph = ev(0, 1, "ephemeral");
            eph.path = Some("/jepsen/session/p1-s5".into());
            let mut fin = ev(10_000, 0, "final-check");
            fin.value = Some(3000);
            let mut gone = Event::new(2_001_000_000, 1, "session", Kind::Fail, "exists");
            gone.error = Some("own ephemeral is gone".into());
            let mut after = Event::new(3_001_000_000, 1, "session", Kind::Ok, "exists");
            if then_expired {
                after.kind = Kind::Fail;
                after.error = Some("session expired; create a new client".into());
            }
            vec![
                eph,
                Event::new(2_000_000_000, 1, "session", Kind::Invoke, "exists"),
                gone,
                Event::new(3_000_000_000, 1, "session", Kind::Invoke, "exists"),
                after,
                fin,
                observe(10_250, &[]),
            ]
        };
        let c = check(&history(false), "session");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert_eq!(c.stat("own ephemeral gone"), 1);
        // Gone because the session expired (the client is told so next): no violation.
        let c = check(&history(true), "session");
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("own ephemeral gone, session expired"), 1);
    }
}

/// One history per anomaly the session checker exists to catch, each next to the same
/// history without it.
#[cfg(test)]
mod anomaly_tests {
    use super::*;

    fn ev(time_ms: u64, process: u64, f: &str) -> Event {
        Event::new(time_ms * 1_000_000, process, "session", Kind::Event, f)
    }

    fn ephemeral(time_ms: u64, process: u64, name: &str) -> Event {
        let mut e = ev(time_ms, process, "ephemeral");
        e.path = Some(format!("/jepsen/session/{name}"));
        e
    }

    fn observe(time_ms: u64, items: &[&str]) -> Event {
        let mut e = ev(time_ms, 0, "observe");
        e.items = Some(items.iter().map(|s| s.to_string()).collect());
        e
    }

    /// Clients 1 (killed at 500 ms) and 2 (alive); heal at 1 s, bound 3 s; polls every
    /// 250 ms from 1.1 s to 6.1 s. `p1_until`: the last poll listing 1's node.
    fn history(p1_until: u64) -> Vec<Event> {
        let mut fin = ev(1000, 0, "final-check");
        fin.value = Some(3000);
        let mut h = vec![
            ephemeral(0, 1, "p1-s5"),
            ephemeral(0, 2, "p2-s6"),
            ev(500, 1, "process-killed"),
            fin,
        ];
        for t in (1100..=6100).step_by(250) {
            h.push(observe(
                t,
                if t <= p1_until {
                    &["p1-s5", "p2-s6"]
                } else {
                    &["p2-s6"]
                },
            ));
        }
        h
    }

    #[test]
    fn a_killed_clients_ephemeral_that_vanishes_in_time_passes() {
        let c = check(&history(3600), "session");
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
    }

    #[test]
    fn a_killed_clients_ephemeral_that_never_vanishes_is_caught() {
        let c = check(&history(u64::MAX), "session");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("still listed"), "{c:?}");
    }

    #[test]
    fn a_killed_clients_ephemeral_that_vanishes_late_is_caught() {
        let c = check(&history(4600), "session");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
    }

    /// Before the fix only the ephemeral the client had reported was followed: one
    /// whose create was applied but not answered (the client was killed waiting for
    /// the answer, or before it printed the event) could stay for ever.
    #[test]
    fn an_unreported_ephemeral_of_a_killed_client_must_vanish_too() {
        let mut h = history(3600);
        for e in h.iter_mut().filter(|e| e.f == "observe") {
            if let Some(items) = e.items.as_mut() {
                items.push("p1-s9".into());
            }
        }
        let c = check(&h, "session");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("p1-s9"), "{c:?}");
        // Another process's node with a similar name is not the killed client's.
        let mut h = history(3600);
        for e in h.iter_mut().filter(|e| e.f == "observe") {
            if let Some(items) = e.items.as_mut() {
                items.push("p11-s9".into());
            }
        }
        assert_eq!(check(&h, "session").valid, Validity::Valid);
    }

    #[test]
    fn a_live_clients_ephemeral_may_vanish_only_with_its_session() {
        let gone = |then: &str| {
            let mut h = history(3600);
            let mut inv = Event::new(2_000_000_000, 2, "session", Kind::Invoke, "exists");
            inv.path = Some("/jepsen/session/p2-s6".into());
            let mut e = Event::new(2_001_000_000, 2, "session", Kind::Fail, "exists");
            e.error = Some("own ephemeral is gone".into());
            h.push(inv);
            h.push(e);
            let mut next = Event::new(2_300_000_000, 2, "session", Kind::Fail, "exists");
            next.error = Some(then.into());
            h.push(Event::new(
                2_200_000_000,
                2,
                "session",
                Kind::Invoke,
                "exists",
            ));
            h.push(next);
            check(&h, "session")
        };
        assert_eq!(
            gone("session expired; create a new client").valid,
            Validity::Valid
        );
        assert_eq!(gone("connection lost").valid, Validity::Invalid);
    }
}
