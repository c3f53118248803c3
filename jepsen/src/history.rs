//! Histories: every operation as invoke / ok / fail / info, one JSON object per line.
//!
//! Workers (one process per client) print [`Event`]s on stdout with absolute
//! `CLOCK_MONOTONIC` times; the orchestrator numbers them, makes the times relative to
//! the start of the run and appends them to `history.jsonl`. `CLOCK_MONOTONIC` is one
//! clock for every process of the machine, so times of different clients compare.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// The process number of the nemesis in a history.
pub const NEMESIS: u64 = 0;

/// What an event says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The operation starts.
    #[default]
    Invoke,
    /// It completed and took effect (or, for reads, returned this).
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// Nobody knows whether it took effect (Jepsen's `:info`).
    Info,
    /// Something observed, not a request (a watch event, a lost lock, a nemesis step).
    Event,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Event {
    /// Position in the history (set by the orchestrator).
    #[serde(default)]
    pub index: u64,
    /// Nanoseconds since the run started (`CLOCK_MONOTONIC`).
    pub time: u64,
    /// Client process (1, 2, ...) or [`NEMESIS`].
    pub process: u64,
    /// The workload ("lock", "unfenced", "register", "sequential", "watch", "session",
    /// "nemesis").
    pub workload: String,
    /// invoke / ok / fail / info / event.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The operation ("acquire", "read", "write", "cas", "create", ...).
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// A compare-and-set's expected version, or a read's / write's resulting version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// A lock's fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zxid: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// Lists (children read at the end, nodes a nemesis acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A lock request's kind (workload `shared`): `read`, `write` or `semaphore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_kind: Option<String>,
}

impl Event {
    /// An event with the common fields set.
    pub fn new(time: u64, process: u64, workload: &str, kind: Kind, f: &str) -> Event {
        Event {
            time,
            process,
            workload: workload.to_string(),
            kind,
            f: f.to_string(),
            ..Event::default()
        }
    }
}

/// An invocation with its completion (if any).
#[derive(Debug, Clone)]
pub struct Pair<'a> {
    pub invoke: &'a Event,
    /// `None` if the process never heard back (the run ended, the process died): the
    /// same as `info`.
    pub done: Option<&'a Event>,
}

impl Pair<'_> {
    /// The completion's kind, `Info` if there is none.
    pub fn outcome(&self) -> Kind {
        self.done.map_or(Kind::Info, |d| d.kind)
    }
    /// The completion time, if known and not indeterminate.
    pub fn ret(&self) -> Option<u64> {
        match self.done {
            Some(d) if d.kind != Kind::Info => Some(d.time),
            _ => None,
        }
    }
}

/// Matches every invocation of a workload with the next completion of the same process
/// (a process has at most one operation outstanding; standalone events are skipped).
pub fn pairs<'a>(history: &'a [Event], workload: &str) -> Vec<Pair<'a>> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut out: Vec<Pair<'a>> = Vec::new();
    for e in history.iter().filter(|e| e.workload == workload) {
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, out.len());
                out.push(Pair {
                    invoke: e,
                    done: None,
                });
            }
            Kind::Ok | Kind::Fail | Kind::Info => {
                if let Some(i) = open.remove(&e.process) {
                    out[i].done = Some(e);
                }
            }
            Kind::Event => {}
        }
    }
    out
}

/// Reads a `history.jsonl` file.
pub fn read(path: &Path) -> Result<Vec<Event>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        out.push(event);
    }
    Ok(out)
}

/// Appends events to a `history.jsonl` file.
#[derive(Debug)]
pub struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    next_index: u64,
}

impl Writer {
    pub fn create(path: &Path) -> std::io::Result<Writer> {
        Ok(Writer {
            out: std::io::BufWriter::new(std::fs::File::create(path)?),
            next_index: 0,
        })
    }

    /// Numbers and writes one event; returns it as written.
    pub fn append(&mut self, mut event: Event) -> std::io::Result<Event> {
        event.index = self.next_index;
        self.next_index += 1;
        let line = serde_json::to_string(&event).map_err(std::io::Error::other)?;
        writeln!(self.out, "{line}")?;
        Ok(event)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for every process on this machine.
pub fn mono_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        // Cannot fail on Linux; a zero would be visible in the history.
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_pair_up() {
        let dir = std::env::temp_dir().join(format!("corral-jepsen-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("history.jsonl");
        let mut w = Writer::create(&path).expect("create");
        let mut a = Event::new(1, 1, "register", Kind::Invoke, "write");
        a.value = Some(3);
        w.append(a).expect("append");
        w.append(Event::new(2, 2, "register", Kind::Invoke, "read"))
            .expect("append");
        w.append(Event::new(3, 1, "register", Kind::Ok, "write"))
            .expect("append");
        w.append(Event::new(4, 2, "watch", Kind::Event, "event"))
            .expect("append");
        w.flush().expect("flush");
        let h = read(&path).expect("read");
        assert_eq!(h.len(), 4);
        assert_eq!(h[3].index, 3);
        assert_eq!(h[0].value, Some(3));
        let p = pairs(&h, "register");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].ret(), Some(3));
        assert_eq!(p[1].outcome(), Kind::Info);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
