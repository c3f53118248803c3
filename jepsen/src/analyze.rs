//! Runs the checkers that fit a history and writes `results.json`.

use crate::checker::{lock, register, sequential, session, watch, Check, Validity};
use crate::history::{Event, Kind};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub valid: Validity,
    pub seed: u64,
    /// The workloads present in the history.
    pub workloads: Vec<String>,
    /// The workloads the run was asked for (`check DIR` reads them back): one that left
    /// no event in the history is a violation.
    pub requested_workloads: Vec<String>,
    /// How long after a client pause or clock fault ends an overlap of lock holds is
    /// still blamed on it (session TTL + election timeout of the run), in ms.
    pub excuse_tail_ms: u64,
    pub nemeses: Vec<String>,
    pub events: usize,
    /// Faults started, by kind (`start-partition`, ...).
    pub faults: std::collections::BTreeMap<String, u64>,
    pub checks: Vec<Check>,
}

/// Workloads present in a history.
pub fn workloads_of(history: &[Event]) -> Vec<String> {
    let set: BTreeSet<&str> = history
        .iter()
        .map(|e| e.workload.as_str())
        .filter(|w| *w != "nemesis" && *w != "cluster")
        .collect();
    set.into_iter().map(str::to_string).collect()
}

/// After the heal, every workload must complete operations again.
fn recovery(history: &[Event], heal_ns: Option<u64>, grace: Duration) -> Check {
    let mut c = Check::new("recovery: every workload completes operations after the heal");
    let Some(heal) = heal_ns else {
        c.valid = Validity::Unknown;
        c.notes.push("no heal-all event".into());
        return c;
    };
    let from = heal + grace.as_nanos() as u64;
    for w in workloads_of(history) {
        let ok = history
            .iter()
            .filter(|e| e.workload == w && e.kind == Kind::Ok && e.time >= from)
            .count() as u64;
        let invoked = history
            .iter()
            .filter(|e| e.workload == w && e.kind == Kind::Invoke)
            .count();
        if invoked == 0 {
            continue;
        }
        c.count(&format!("{w}: ok after heal + {grace:?}"), ok);
        if ok == 0 {
            c.fail(format!(
                "{w}: no operation succeeded after the heal (+{grace:?}): the cluster did not recover"
            ));
        }
    }
    c
}

/// What [`analyze`] needs besides the history.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub nemeses: Vec<String>,
    /// The workloads asked for (every one must have left events).
    pub requested: Vec<String>,
    /// After the heal, how long the cluster has to recover.
    pub grace: Duration,
    /// Per key, for the linearizability search.
    pub time_limit: Duration,
    /// See [`Summary::excuse_tail_ms`].
    pub excuse_tail: Duration,
    pub strict: bool,
}

/// Checks a history.
pub fn analyze(history: &[Event], opts: &Options) -> Summary {
    let strict = opts.strict;
    let time_limit = opts.time_limit;
    let workloads = workloads_of(history);
    let excused = lock::excuses(history, opts.excuse_tail.as_nanos() as u64);
    let mut checks = Vec::new();
    for w in &opts.requested {
        if !workloads.contains(w) {
            let mut c = Check::new(&format!("{w}: the workload ran"));
            c.fail(format!(
                "workload {w} was requested but left no event in the history: nothing of it \
                 was tested"
            ));
            checks.push(c);
        }
    }
    for w in &workloads {
        match w.as_str() {
            "lock" => {
                checks.push(lock::check_resource(history, "lock"));
                checks.push(lock::check_tokens(history, "lock"));
                checks.push(lock::check_intervals(history, "lock", &excused, strict));
            }
            "unfenced" => {
                checks.push(lock::check_tokens(history, "unfenced"));
                checks.push(lock::check_intervals(history, "unfenced", &excused, strict));
            }
            "shared" => {
                checks.push(lock::check_group_tokens(history, "shared"));
                for key in lock::lock_keys(history, "shared") {
                    let one = lock::lock_history(history, "shared", &key);
                    let label = lock::lock_label("shared", &key);
                    let permits = (key == crate::worker::SHARED_SEMAPHORE)
                        .then_some(crate::worker::SHARED_PERMITS);
                    checks.push(lock::check_tokens(&one, &label));
                    checks.push(lock::check_shared(&one, &label, permits, &excused));
                }
            }
            "multilock" => {
                checks.push(lock::check_group_tokens(history, "multilock"));
                for key in lock::lock_keys(history, "multilock") {
                    let one = lock::lock_history(history, "multilock", &key);
                    let label = lock::lock_label("multilock", &key);
                    checks.push(lock::check_tokens(&one, &label));
                    checks.push(lock::check_intervals(&one, &label, &excused, strict));
                }
            }
            "register" => checks.push(register::check(history, "register", time_limit)),
            "sequential" => checks.push(sequential::check(history, "sequential")),
            "watch" => checks.push(watch::check(history, "watch", strict)),
            "session" => checks.push(session::check(history, "session")),
            _ => {}
        }
    }
    let heal = history
        .iter()
        .rev()
        .find(|e| e.workload == "nemesis" && e.f == "heal-all")
        .map(|e| e.time);
    checks.push(recovery(history, heal, opts.grace));
    let mut faults = std::collections::BTreeMap::new();
    for e in history
        .iter()
        .filter(|e| e.workload == "nemesis" && e.f.starts_with("start-"))
    {
        *faults.entry(e.f.clone()).or_default() += 1;
    }
    let valid = if checks.iter().any(|c| c.valid == Validity::Invalid) {
        Validity::Invalid
    } else if checks.iter().any(|c| c.valid == Validity::Unknown) {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    Summary {
        valid,
        seed: opts.seed,
        workloads,
        requested_workloads: opts.requested.clone(),
        excuse_tail_ms: opts.excuse_tail.as_millis() as u64,
        nemeses: opts.nemeses.clone(),
        events: history.len(),
        faults,
        checks,
    }
}

/// Prints the summary and writes `results.json`.
pub fn write_summary(summary: &Summary, dir: &Path) -> Result<(), String> {
    let json = serde_json::to_string_pretty(summary).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("results.json"), json).map_err(|e| format!("results.json: {e}"))?;
    println!(
        "\n== results ({} events, seed {})",
        summary.events, summary.seed
    );
    for c in &summary.checks {
        println!("[{:?}] {}", c.valid, c.name);
        let stats: Vec<String> = c.stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !stats.is_empty() {
            println!("    {}", stats.join(", "));
        }
        for p in &c.problems {
            println!("    PROBLEM: {p}");
        }
        for k in &c.known_bugs {
            println!("    KNOWN BUG: {k}");
        }
        for n in c.notes.iter().take(6) {
            println!("    note: {n}");
        }
    }
    println!("faults started: {:?}", summary.faults);
    println!("overall: {:?}", summary.valid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_workload_without_events_is_a_violation() {
        let mut h = vec![Event::new(60, 0, "nemesis", Kind::Event, "heal-all")];
        for (i, kind) in [Kind::Invoke, Kind::Ok].into_iter().enumerate() {
            let mut e = Event::new(70 + i as u64, 1, "register", kind, "read");
            e.index = i as u64 + 1;
            e.key = Some("w0-k0".into());
            e.value = Some(0);
            e.version = Some(0);
            h.push(e);
        }
        let opts = |requested: &[&str]| Options {
            seed: 1,
            nemeses: vec![],
            requested: requested.iter().map(|s| s.to_string()).collect(),
            grace: Duration::from_nanos(1),
            time_limit: Duration::from_secs(5),
            excuse_tail: Duration::from_millis(3_400),
            strict: true,
        };
        let s = analyze(&h, &opts(&["register", "watch"]));
        assert_eq!(s.valid, Validity::Invalid);
        let missing: Vec<&Check> = s
            .checks
            .iter()
            .filter(|c| c.name == "watch: the workload ran")
            .collect();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].valid, Validity::Invalid);
        assert_eq!(s.requested_workloads, vec!["register", "watch"]);
        assert_eq!(analyze(&h, &opts(&["register"])).valid, Validity::Valid);
    }
}

/// `analyze` runs each workload's checkers: one anomaly per workload, in one history,
/// is reported by that workload's check, and the history without them is valid.
#[cfg(test)]
mod wiring_tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ev(t: u64, p: u64, w: &str, kind: Kind, f: &str) -> Event {
        Event::new(t * MS, p, w, kind, f)
    }

    fn with(mut e: Event, set: impl FnOnce(&mut Event)) -> Event {
        set(&mut e);
        e
    }

    /// A clean history of every workload; `bad` names the workloads to break.
    fn history(bad: &[&str]) -> Vec<Event> {
        let is_bad = |w: &str| bad.contains(&w);
        let mut h = Vec::new();
        for w in ["lock", "unfenced"] {
            // Process 1 holds 1..10; process 2 is granted at 20, or at 5 when broken.
            let g2 = if is_bad(w) { 5 } else { 20 };
            h.push(ev(0, 1, w, Kind::Invoke, "acquire"));
            h.push(with(ev(1, 1, w, Kind::Ok, "acquire"), |e| {
                e.token = Some(10)
            }));
            h.push(ev(2, 2, w, Kind::Invoke, "acquire"));
            h.push(with(ev(g2, 2, w, Kind::Ok, "acquire"), |e| {
                e.token = Some(11)
            }));
            h.push(with(ev(10, 1, w, Kind::Invoke, "release"), |e| {
                e.token = Some(10)
            }));
            h.push(with(ev(30, 2, w, Kind::Invoke, "release"), |e| {
                e.token = Some(11)
            }));
        }
        // Multi-locks: process 1 holds a and b 1..10; process 2 is granted b (alone) at
        // 20, or at 5 when broken; process 3 holds c throughout.
        let keyed = |t, p, kind, f, key: &str, token: Option<u64>| {
            with(ev(t, p, "multilock", kind, f), |e| {
                e.key = Some(key.to_string());
                e.token = token;
            })
        };
        let g2 = if is_bad("multilock") { 5 } else { 20 };
        for key in ["a", "b"] {
            h.push(keyed(0, 1, Kind::Invoke, "acquire", key, None));
            h.push(keyed(1, 1, Kind::Ok, "acquire", key, Some(10)));
            h.push(keyed(10, 1, Kind::Invoke, "release", key, Some(10)));
        }
        h.push(keyed(2, 2, Kind::Invoke, "acquire", "b", None));
        h.push(keyed(g2, 2, Kind::Ok, "acquire", "b", Some(11)));
        h.push(keyed(30, 2, Kind::Invoke, "release", "b", Some(11)));
        h.push(keyed(0, 3, Kind::Invoke, "acquire", "c", None));
        h.push(keyed(1, 3, Kind::Ok, "acquire", "c", Some(9)));
        // Shared locks: processes 1 and 2 read rw together 1..10; process 3 writes it
        // at 20, or at 5 when broken.
        let shared = |t, p, kind, f, lock_kind: &str, token: Option<u64>| {
            with(ev(t, p, "shared", kind, f), |e| {
                e.key = Some("rw".to_string());
                e.lock_kind = Some(lock_kind.to_string());
                e.token = token;
            })
        };
        let w = if is_bad("shared") { 5 } else { 20 };
        for (p, token) in [(1, 30), (2, 31)] {
            h.push(shared(0, p, Kind::Invoke, "acquire", "read", None));
            h.push(shared(1, p, Kind::Ok, "acquire", "read", Some(token)));
            h.push(shared(10, p, Kind::Invoke, "release", "read", Some(token)));
        }
        h.push(shared(2, 3, Kind::Invoke, "acquire", "write", None));
        h.push(shared(w, 3, Kind::Ok, "acquire", "write", Some(32)));
        h.push(shared(30, 3, Kind::Invoke, "release", "write", Some(32)));
        // register: a write of 5 (version 1), then a read of 5, or of 0 (stale).
        let key = |mut e: Event| {
            e.key = Some("w0-k0".into());
            e
        };
        h.push(key(with(
            ev(0, 3, "register", Kind::Invoke, "write"),
            |e| e.value = Some(5),
        )));
        h.push(key(with(ev(1, 3, "register", Kind::Ok, "write"), |e| {
            e.version = Some(1)
        })));
        h.push(key(ev(2, 3, "register", Kind::Invoke, "read")));
        let (v, ver) = if is_bad("register") { (0, 0) } else { (5, 1) };
        h.push(key(with(ev(3, 3, "register", Kind::Ok, "read"), |e| {
            (e.value, e.version) = (Some(v), Some(ver))
        })));
        // sequential: two creates; the final read lacks the first when broken.
        for (i, t) in [0u64, 10].into_iter().enumerate() {
            h.push(with(ev(t, 4, "sequential", Kind::Invoke, "create"), |e| {
                e.value = Some(100 + i as u64)
            }));
            h.push(with(ev(t + 1, 4, "sequential", Kind::Ok, "create"), |e| {
                e.path = Some(format!("/jepsen/sequential/item-{i:010}"))
            }));
        }
        let mut items = vec!["item-0000000000=100", "item-0000000001=101"];
        if is_bad("sequential") {
            items.remove(0);
        }
        h.push(with(ev(70, 0, "sequential", Kind::Event, "final"), |e| {
            e.items = Some(items.iter().map(|s| s.to_string()).collect())
        }));
        // watch: one acknowledged write (zxid 11), delivered unless broken.
        h.push(with(ev(0, 5, "watch", Kind::Event, "watching"), |e| {
            e.zxid = Some(10)
        }));
        h.push(with(ev(1, 6, "watch", Kind::Invoke, "write"), |e| {
            e.key = Some("k0".into())
        }));
        h.push(with(ev(2, 6, "watch", Kind::Ok, "write"), |e| {
            (e.key, e.zxid) = (Some("k0".into()), Some(11))
        }));
        if !is_bad("watch") {
            h.push(with(ev(3, 5, "watch", Kind::Event, "event"), |e| {
                (e.path, e.zxid) = (Some("/jepsen/watch/k0".into()), Some(11))
            }));
        }
        h.push(with(ev(40, 5, "watch", Kind::Event, "watch-end"), |e| {
            e.zxid = Some(11)
        }));
        // session: client 7 killed at 5 ms; its node gone at 60 ms, or never.
        h.push(with(ev(0, 7, "session", Kind::Event, "ephemeral"), |e| {
            e.path = Some("/jepsen/session/p7-s1".into())
        }));
        h.push(ev(5, 7, "session", Kind::Event, "process-killed"));
        h.push(with(
            ev(50, 0, "session", Kind::Event, "final-check"),
            |e| e.value = Some(3000),
        ));
        let left: Vec<String> = if is_bad("session") {
            vec!["p7-s1".into()]
        } else {
            vec![]
        };
        h.push(with(ev(60, 0, "session", Kind::Event, "observe"), |e| {
            e.items = Some(left)
        }));
        // The heal, and an operation of every workload after it.
        h.push(ev(50, 0, "nemesis", Kind::Event, "heal-all"));
        for (p, w) in [
            (1, "lock"),
            (1, "unfenced"),
            (1, "multilock"),
            (1, "shared"),
            (3, "register"),
            (4, "sequential"),
        ] {
            h.push(ev(80, p, w, Kind::Ok, "noop"));
        }
        h.push(ev(80, 6, "watch", Kind::Ok, "noop"));
        h.push(ev(80, 7, "session", Kind::Ok, "noop"));
        h.sort_by_key(|e| e.time);
        for (i, e) in h.iter_mut().enumerate() {
            e.index = i as u64;
        }
        h
    }

    fn options() -> Options {
        Options {
            seed: 1,
            nemeses: vec![],
            requested: [
                "lock",
                "unfenced",
                "multilock",
                "shared",
                "register",
                "sequential",
                "watch",
                "session",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            grace: Duration::from_millis(10),
            time_limit: Duration::from_secs(5),
            excuse_tail: Duration::from_millis(3_400),
            strict: true,
        }
    }

    #[test]
    fn each_workloads_anomaly_is_reported_by_its_own_check() {
        let s = analyze(&history(&[]), &options());
        let bad: Vec<&str> = s
            .checks
            .iter()
            .filter(|c| c.valid != Validity::Valid)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(s.valid, Validity::Valid, "{bad:?}");
        for w in [
            "lock",
            "unfenced",
            "multilock",
            "shared",
            "register",
            "sequential",
            "watch",
            "session",
        ] {
            let s = analyze(&history(&[w]), &options());
            let bad: Vec<&str> = s
                .checks
                .iter()
                .filter(|c| c.valid != Validity::Valid)
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(s.valid, Validity::Invalid, "{w}");
            assert!(
                !bad.is_empty() && bad.iter().all(|n| n.starts_with(w)),
                "{w}: {bad:?}"
            );
        }
    }
}
