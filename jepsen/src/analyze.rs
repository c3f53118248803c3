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
    pub workloads: Vec<String>,
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

/// Checks a history.
pub fn analyze(
    history: &[Event],
    seed: u64,
    nemeses: &[String],
    grace: Duration,
    time_limit: Duration,
    strict: bool,
) -> Summary {
    let workloads = workloads_of(history);
    let excused = lock::excuses(history);
    let mut checks = Vec::new();
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
    checks.push(recovery(history, heal, grace));
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
        seed,
        workloads,
        nemeses: nemeses.to_vec(),
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
