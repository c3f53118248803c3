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
