//! Sessions: after the final heal, every ephemeral of a client the nemesis killed must
//! be gone within TTL + election time (plus a fixed slack for polling), counted from the
//! heal, the client's death or the last leader change before the removal, whichever is
//! last: a new leader restarts every session's deadline at full TTL (by design, so that
//! a failover never expires a healthy client), and restarted nodes take a while to
//! elect one. Leader changes come from the nodes' logs (`cluster` events).
//!
//! Events (workload `session`): `ephemeral` (a client created its node: `path`),
//! `process-killed` (the harness killed the client), `final-check` (the reference time
//! after healing; `value` is the bound in ms), and `observe` (the harness listed the
//! ephemerals: `items`).

use super::{Check, Validity};
use crate::history::{Event, Kind};
use std::collections::BTreeMap;

pub fn check(history: &[Event], workload: &str) -> Check {
    let mut c = Check::new("session: dead clients' ephemerals vanish within TTL + election");
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
    let dead: Vec<(u64, &String, u64)> = killed
        .iter()
        .filter_map(|(p, t)| ephemerals.get(p).map(|path| (*p, path, *t)))
        .collect();
    c.count("clients killed with an ephemeral", dead.len() as u64);
    let Some((heal, bound_ms)) = reference else {
        c.valid = Validity::Unknown;
        c.notes.push("no final check was made".into());
        return c;
    };
    let mut worst: u64 = 0;
    for (process, path, died) in dead {
        let from = heal.max(died);
        let name = path.rsplit('/').next().unwrap_or(path);
        let gone = observations
            .iter()
            .find(|(t, items)| *t >= from && !items.iter().any(|i| i == name || i == path));
        match gone {
            Some((t, _)) => {
                let from = leader_changes
                    .iter()
                    .filter(|l| **l <= *t)
                    .fold(from, |a, l| a.max(*l));
                let ms = (t - from) / 1_000_000;
                worst = worst.max(ms);
                if ms > bound_ms {
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
}
