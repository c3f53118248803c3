//! The `corral` processes: one per node namespace, started with `ip netns exec` (which
//! execs in place, so the child's pid is the server's), killed with SIGKILL, paused with
//! SIGSTOP / SIGCONT, and given clock faults through the server's test-only clock hook
//! (`server/src/clock.rs`: a file with an offset and a rate).

use crate::netns::{Net, CLIENT_PORT, PEER_PORT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Server settings of a run.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub tick_ms: u64,
    pub election_timeout_ms: u64,
    pub min_session_ttl_ms: u64,
    /// `--snapshot-every-entries`, if not the server's default.
    pub snapshot_every_entries: Option<u64>,
    /// `--snapshot-every-bytes`, if not the server's default.
    pub snapshot_every_bytes: Option<u64>,
    /// Fault switches to turn on (`CORRAL_TEST_FAULTS`), for runs that must fail.
    pub faults: Option<String>,
}

#[derive(Debug)]
struct NodeProc {
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
    leader: Arc<Mutex<Option<u64>>>,
    faults_active: Arc<AtomicBool>,
    starts: u32,
}

/// Something a node logged that the history should show: (node, what, from, to).
/// `what` is `snapshot-install` (entries `from..to` arrived as a snapshot, so no watch
/// fired for them on that node) or `leader` (`to` is the leader it now follows).
pub type NodeNote = (usize, &'static str, u64, u64);

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The cluster's processes.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    settings: ServerSettings,
    peers: String,
    nodes: Vec<NodeProc>,
    notes: Option<std::sync::mpsc::Sender<NodeNote>>,
}

fn leader_of(line: &str) -> Option<Option<u64>> {
    if !line.contains("leader changed") {
        return None;
    }
    let rest = &line[line.find("leader=")? + "leader=".len()..];
    if rest.starts_with("None") {
        return Some(None);
    }
    let rest = rest.strip_prefix("Some(")?;
    let end = rest.find(')')?;
    rest[..end].trim().parse().ok().map(Some)
}

impl Cluster {
    pub fn new(net: &Net, bin: &Path, settings: ServerSettings, run_dir: &Path) -> Cluster {
        let peers = (1..=net.nodes())
            .map(|i| format!("{i}={}:{PEER_PORT}", Net::node_ip(i)))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=net.nodes())
            .map(|id| NodeProc {
                ns: net.node_ns(id),
                dir: run_dir.join(format!("n{id}")),
                child: None,
                paused: false,
                leader: Arc::new(Mutex::new(None)),
                faults_active: Arc::new(AtomicBool::new(false)),
                starts: 0,
            })
            .collect();
        Cluster {
            bin: bin.to_path_buf(),
            settings,
            peers,
            nodes,
            notes: None,
        }
    }

    /// Where to send what the nodes log that belongs in the history.
    pub fn set_notes(&mut self, tx: std::sync::mpsc::Sender<NodeNote>) {
        self.notes = Some(tx);
    }

    /// The client addresses of every node.
    pub fn servers(&self) -> Vec<String> {
        (1..=self.nodes.len())
            .map(|i| format!("{}:{CLIENT_PORT}", Net::node_ip(i)))
            .collect()
    }

    fn node(&mut self, id: usize) -> Result<&mut NodeProc, String> {
        self.nodes
            .get_mut(id.wrapping_sub(1))
            .ok_or_else(|| format!("no node {id}"))
    }

    /// Starts node `id` (a no-op if it runs).
    pub fn start(&mut self, id: usize) -> Result<(), String> {
        let bin = self.bin.clone();
        let peers = self.peers.clone();
        let notes = self.notes.clone();
        let s = self.settings.clone();
        let n = self.node(id)?;
        if n.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&n.dir).map_err(|e| format!("{}: {e}", n.dir.display()))?;
        let clock = n.dir.join("clock");
        if !clock.exists() {
            std::fs::write(&clock, "0 1.0\n").map_err(|e| format!("{}: {e}", clock.display()))?;
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.ns])
            .arg(&bin)
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &format!("{}:{CLIENT_PORT}", Net::node_ip(id))])
            .arg("--data-dir")
            .arg(n.dir.join("data"))
            .args(["--tick-ms", &s.tick_ms.to_string()])
            .args(["--election-timeout-ms", &s.election_timeout_ms.to_string()])
            .args(["--min-session-ttl-ms", &s.min_session_ttl_ms.to_string()])
            .env("RUST_LOG", "warn,corral_server::node=info")
            .env("NO_COLOR", "1")
            .env("CORRAL_TEST_CLOCK_FILE", &clock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // A single node runs without peers (the local write-ahead log).
        if peers.contains(',') {
            cmd.args(["--peers", &peers]);
        }
        if let Some(n) = s.snapshot_every_entries {
            cmd.args(["--snapshot-every-entries", &n.to_string()]);
        }
        if let Some(n) = s.snapshot_every_bytes {
            cmd.args(["--snapshot-every-bytes", &n.to_string()]);
        }
        if let Some(f) = &s.faults {
            cmd.env("CORRAL_TEST_FAULTS", f);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start node {id}: {e}"))?;
        n.starts += 1;
        let log_path = n.dir.join("server.log");
        let leader = n.leader.clone();
        let faults = n.faults_active.clone();
        *leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(stderr) = child.stderr.take() {
            let generation = n.starts;
            std::thread::spawn(move || {
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .ok();
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "==== start #{generation} ====");
                }
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(l) = leader_of(&line) {
                        *leader.lock().unwrap_or_else(|p| p.into_inner()) = l;
                        if let Some(tx) = &notes {
                            let _ = tx.send((id, "leader", 0, l.unwrap_or(0)));
                        }
                    }
                    if line.contains("installing a snapshot from the leader") {
                        if let (Some(from), Some(to), Some(tx)) = (
                            number_after(&line, "from="),
                            number_after(&line, "to="),
                            &notes,
                        ) {
                            let _ = tx.send((id, "snapshot-install", from, to));
                        }
                    }
                    if line.contains("TEST FAULT SWITCHES ACTIVE") {
                        faults.store(true, Ordering::SeqCst);
                    }
                    if let Some(f) = log.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                }
            });
        }
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    pub fn is_running(&self, id: usize) -> bool {
        self.nodes
            .get(id.wrapping_sub(1))
            .is_some_and(|n| n.child.is_some())
    }

    /// SIGKILL (a no-op if it does not run).
    pub fn kill9(&mut self, id: usize) -> Result<(), String> {
        let n = self.node(id)?;
        if let Some(mut child) = n.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        n.paused = false;
        Ok(())
    }

    fn signal(&mut self, id: usize, sig: Signal) -> Result<bool, String> {
        let n = self.node(id)?;
        let Some(child) = &n.child else {
            return Ok(false);
        };
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, sig).map_err(|e| format!("{sig} to node {id}: {e}"))?;
        Ok(true)
    }

    pub fn pause(&mut self, id: usize) -> Result<(), String> {
        if self.signal(id, Signal::SIGSTOP)? {
            self.node(id)?.paused = true;
        }
        Ok(())
    }

    pub fn resume(&mut self, id: usize) -> Result<(), String> {
        self.signal(id, Signal::SIGCONT)?;
        self.node(id)?.paused = false;
        Ok(())
    }

    /// Sets a node's clock offset (wall clock) and rate (both clocks).
    pub fn set_clock(&mut self, id: usize, offset_ms: i64, rate: f64) -> Result<(), String> {
        let n = self.node(id)?;
        let path = n.dir.join("clock");
        std::fs::create_dir_all(&n.dir).map_err(|e| format!("{}: {e}", n.dir.display()))?;
        let tmp = n.dir.join("clock.tmp");
        std::fs::write(&tmp, format!("{offset_ms} {rate}\n"))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The leader most running nodes name, if a majority of the cluster agrees.
    pub fn leader(&self) -> Option<usize> {
        let mut votes = std::collections::BTreeMap::<u64, usize>::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some() && !n.paused) {
            if let Some(l) = *n.leader.lock().unwrap_or_else(|p| p.into_inner()) {
                *votes.entry(l).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .find(|(l, v)| *v > self.nodes.len() / 2 && self.is_running(*l as usize))
            .map(|(l, _)| l as usize)
    }

    /// Whether every running node logged that its test fault switches are on.
    pub fn faults_confirmed(&self) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .all(|n| n.faults_active.load(Ordering::SeqCst))
    }

    /// Heals node-local faults: resumes paused nodes, restarts dead ones, resets clocks.
    pub fn heal(&mut self) -> Result<(), String> {
        for id in 1..=self.nodes.len() {
            self.set_clock(id, 0, 1.0)?;
            self.resume(id)?;
            self.start(id)?;
        }
        Ok(())
    }

    /// Kills every process (used at the end and on errors).
    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = kill(pid, Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::leader_of;

    #[test]
    fn leader_lines_parse() {
        let l =
            "2026-01-01T00:00:00Z  INFO corral_server::node: leader changed node=1 leader=Some(3)";
        assert_eq!(leader_of(l), Some(Some(3)));
        assert_eq!(leader_of("leader changed node=1 leader=None"), Some(None));
        assert_eq!(leader_of("something else"), None);
        let l = "INFO corral_server::node: installing a snapshot from the leader from=8347 to=8384";
        assert_eq!(super::number_after(l, "from="), Some(8347));
        assert_eq!(super::number_after(l, "to="), Some(8384));
    }
}
