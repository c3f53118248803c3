//! What the failover workload needs from the clusters that `bench/cluster.sh` runs:
//! which node leads, killing it, and starting it again.
//!
//! The script keeps node `i` of target `t` as `$BENCH_DATA/<t>/node<i>.pid` and
//! `.../node<i>.log`; the leader is asked of the nodes themselves (etcd's `Status` RPC,
//! ZooKeeper's `srvr` command) or, for corral, read from its nodes' logs (the latest
//! `leader changed` line of each live node, which the nodes agree on).

use crate::targets::{Kind, Target};
use crate::BoxError;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The clusters' state directory and control script.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub dir: PathBuf,
    pub script: PathBuf,
}

impl Cluster {
    fn node_file(&self, kind: Kind, node: usize, ext: &str) -> PathBuf {
        self.dir
            .join(kind.script_name())
            .join(format!("node{node}.{ext}"))
    }

    /// The pid of node `node` (1-based), if it runs.
    pub fn pid(&self, kind: Kind, node: usize) -> Option<u32> {
        let text = std::fs::read_to_string(self.node_file(kind, node, "pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        // A killed process may linger as a zombie until its parent reaps it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(") ")?.1.split(' ').next()?;
        (state != "Z").then_some(pid)
    }

    /// The node (1-based) that leads now.
    pub async fn leader(&self, target: &Target) -> Result<usize, BoxError> {
        match target.kind {
            Kind::Etcd => {
                for (i, endpoint) in target.endpoints.iter().enumerate() {
                    let options =
                        etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2));
                    let Ok(mut client) =
                        etcd_client::Client::connect([format!("http://{endpoint}")], Some(options))
                            .await
                    else {
                        continue;
                    };
                    if let Ok(status) = client.status().await {
                        let me = status.header().map(|h| h.member_id());
                        if me == Some(status.leader()) {
                            return Ok(i + 1);
                        }
                    }
                }
                Err("no etcd node says it leads".into())
            }
            Kind::Zk => {
                for (i, endpoint) in target.endpoints.iter().enumerate() {
                    if let Ok(text) = four_letter(endpoint, "srvr").await {
                        if text.contains("Mode: leader") {
                            return Ok(i + 1);
                        }
                    }
                }
                Err("no ZooKeeper node says it leads".into())
            }
            Kind::Corral => {
                let mut votes = std::collections::BTreeMap::<usize, usize>::new();
                for node in 1..=target.endpoints.len() {
                    if self.pid(Kind::Corral, node).is_none() {
                        continue;
                    }
                    let log = std::fs::read_to_string(self.node_file(Kind::Corral, node, "log"))
                        .unwrap_or_default();
                    let latest = log
                        .lines()
                        .rev()
                        .find(|l| l.contains("leader changed"))
                        .and_then(corral_leader_of_line);
                    if let Some(leader) = latest {
                        *votes.entry(leader).or_default() += 1;
                    }
                }
                let (leader, n) = votes
                    .into_iter()
                    .max_by_key(|&(_, n)| n)
                    .ok_or("no corral node logged a leader")?;
                if n * 2 <= target.endpoints.len() {
                    return Err(
                        format!("corral nodes disagree on the leader ({n} say {leader})").into(),
                    );
                }
                Ok(leader)
            }
        }
    }

    /// SIGKILLs node `node`; returns its pid.
    pub fn kill(&self, kind: Kind, node: usize) -> Result<u32, BoxError> {
        let pid = self
            .pid(kind, node)
            .ok_or_else(|| format!("{kind} node {node} does not run"))?;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -KILL {pid} failed").into());
        }
        Ok(pid)
    }

    /// Starts node `node` again (`cluster.sh start-node`), bounded to 60 s.
    pub async fn restart(&self, kind: Kind, node: usize) -> Result<(), BoxError> {
        let run = tokio::process::Command::new(&self.script)
            .args(["start-node", kind.script_name(), &node.to_string()])
            .env("BENCH_DATA", &self.dir)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| "cluster.sh start-node took over 60 s")??;
        if !out.status.success() {
            return Err(format!(
                "cluster.sh start-node {kind} {node} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    }
}

/// `leader=Some(N)` of a corral log line, text or JSON format.
fn corral_leader_of_line(line: &str) -> Option<usize> {
    let at = line.find("Some(")?;
    let rest = &line[at + 5..];
    let end = rest.find(')')?;
    rest[..end].parse().ok()
}

/// Sends a ZooKeeper four-letter command and reads the answer (2 s at most).
pub async fn four_letter(endpoint: &str, cmd: &str) -> Result<String, BoxError> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(endpoint).await?;
        s.write_all(cmd.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, BoxError>(out)
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .map_err(|_| "four-letter command timed out")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_corral_leader_lines() {
        let json = r#"{"fields":{"message":"leader changed","node":1,"leader":"Some(3)"}}"#;
        assert_eq!(corral_leader_of_line(json), Some(3));
        assert_eq!(
            corral_leader_of_line("leader changed node=2 leader=Some(1)"),
            Some(1)
        );
        assert_eq!(
            corral_leader_of_line("leader changed node=2 leader=None"),
            None
        );
    }
}
