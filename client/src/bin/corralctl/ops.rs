//! Operations commands: `status` (a table of every server), `health` (exit status for
//! monitors), `snapshot save` (a backup through a server's admin endpoint).

use corral_client::{Client, ClientConfig, Error};
use corral_protocol::{Role, ServerStatus};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Time allowed to each server to grant a session and answer.
const SERVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest backup `snapshot save` accepts by default, in bytes.
const DEFAULT_MAX_BACKUP_BYTES: u64 = 4 << 30;
/// The first bytes of a backup file (see the server's `backup` module).
const BACKUP_MAGIC: &[u8; 8] = b"CORRALBK";

/// `corralctl snapshot ...`
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Save a backup of the state (the image a server has applied, at one zxid) to FILE.
    ///
    /// Asks the servers for their admin endpoint (or uses --admin) and downloads
    /// /snapshot from the leader if it answers, else from the first server that does.
    /// Restore with `corral restore --from FILE --data-dir DIR` (docs/OPERATIONS.md).
    Save {
        /// Where to write the backup (written to FILE.tmp, then renamed).
        file: PathBuf,
        /// Admin endpoint (host:port) to download from, instead of asking the servers.
        #[arg(long)]
        admin: Option<String>,
        /// Refuse a backup larger than this many bytes.
        #[arg(long, default_value_t = DEFAULT_MAX_BACKUP_BYTES)]
        max_bytes: u64,
    },
}

/// What one server answered.
#[derive(Debug, serde::Serialize)]
struct Row {
    address: String,
    status: Option<ServerStatus>,
    error: Option<String>,
}

async fn ask(address: &str) -> Result<ServerStatus, Error> {
    let config = ClientConfig::new([address])
        .with_connect_timeout(SERVER_TIMEOUT)
        .with_request_timeout(SERVER_TIMEOUT);
    let query = async {
        let client = Client::connect(config).await?;
        let status = client.server_status().await;
        let _ = tokio::time::timeout(SERVER_TIMEOUT, client.close()).await;
        status
    };
    match tokio::time::timeout(2 * SERVER_TIMEOUT, query).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(2 * SERVER_TIMEOUT)),
    }
}

/// Asks every server in the list, concurrently.
async fn survey(servers: &str) -> Vec<Row> {
    let addresses: Vec<String> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let answers = futures::future::join_all(addresses.iter().map(|a| ask(a))).await;
    addresses
        .into_iter()
        .zip(answers)
        .map(|(address, r)| match r {
            Ok(status) => Row {
                address,
                status: Some(status),
                error: None,
            },
            Err(e) => Row {
                address,
                status: None,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Standalone => "standalone",
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
    }
}

/// Exit code of `corralctl status` when no server answered.
pub const STATUS_NO_ANSWER: u8 = 1;
/// Exit code of `corralctl status` when some servers answered, but not every server
/// answered and reported itself ready.
pub const STATUS_DEGRADED: u8 = 3;

/// What `corralctl status` exits with, and why (for stderr) when that is not 0: 0 when
/// every server answered and is ready (what a rolling restart waits for before it
/// touches the next node), [`STATUS_NO_ANSWER`] when none answered, [`STATUS_DEGRADED`]
/// when some did not answer or are not ready.
fn status_verdict(rows: &[Row]) -> Result<(), (u8, String)> {
    let unavailable: Vec<&str> = rows
        .iter()
        .filter(|r| r.status.is_none())
        .map(|r| r.address.as_str())
        .collect();
    let not_ready: Vec<&str> = rows
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| !s.ready))
        .map(|r| r.address.as_str())
        .collect();
    if unavailable.len() == rows.len() {
        return Err((
            STATUS_NO_ANSWER,
            format!(
                "no server answered ({} asked: {})",
                rows.len(),
                unavailable.join(", ")
            ),
        ));
    }
    let mut problems = Vec::new();
    if !unavailable.is_empty() {
        problems.push(format!(
            "{} of {} servers did not answer ({})",
            unavailable.len(),
            rows.len(),
            unavailable.join(", ")
        ));
    }
    if !not_ready.is_empty() {
        problems.push(format!(
            "{} of {} servers are not ready ({})",
            not_ready.len(),
            rows.len(),
            not_ready.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err((STATUS_DEGRADED, problems.join("; ")))
    }
}

/// `corralctl status`: one line per server (or the rows as JSON), then the exit code of
/// [`status_verdict`], explained on stderr when it is not 0.
pub async fn status(servers: &str, json: bool) -> Result<ExitCode, Error> {
    let rows = survey(servers).await;
    if rows.is_empty() {
        return Err(Error::Protocol(String::from("no server given (-s)")));
    }
    print_status(&rows, json)?;
    Ok(match status_verdict(&rows) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, why)) => {
            eprintln!("corralctl: status: {why}");
            ExitCode::from(code)
        }
    })
}

fn print_status(rows: &[Row], json: bool) -> Result<(), Error> {
    if json {
        let text =
            serde_json::to_string_pretty(rows).map_err(|e| Error::Protocol(e.to_string()))?;
        super::emit(text)?;
        return Ok(());
    }
    let top = rows
        .iter()
        .filter_map(|r| r.status.as_ref().map(|s| s.committed_zxid))
        .max()
        .unwrap_or(0);
    super::emit(format!(
        "{:<22} {:>4} {:<10} {:>6} {:>12} {:>8} {:>8} {:>6} {:>5}",
        "SERVER", "NODE", "ROLE", "LEADER", "ZXID", "LAG", "SESSIONS", "CONNS", "READY"
    ))?;
    for row in rows {
        let line = match &row.status {
            Some(s) => format!(
                "{:<22} {:>4} {:<10} {:>6} {:>12} {:>8} {:>8} {:>6} {:>5}",
                row.address,
                s.node_id,
                role_name(s.role),
                s.leader.map_or("-".to_string(), |l| l.to_string()),
                s.applied_zxid,
                top.saturating_sub(s.applied_zxid),
                s.sessions,
                s.connections,
                if s.ready { "yes" } else { "no" }
            ),
            None => format!(
                "{:<22} unavailable: {}",
                row.address,
                row.error.as_deref().unwrap_or("no answer")
            ),
        };
        super::emit(line)?;
    }
    Ok(())
}

/// Whether the answers show a cluster with a quorum: a leader that is ready (it reaches
/// a majority), or a ready single node.
fn healthy(rows: &[Row]) -> Result<String, String> {
    let answered: Vec<&ServerStatus> = rows.iter().filter_map(|r| r.status.as_ref()).collect();
    if answered.is_empty() {
        return Err("no server answered (no quorum: a session cannot be opened)".into());
    }
    if let Some(s) = answered
        .iter()
        .find(|s| matches!(s.role, Role::Leader | Role::Standalone) && s.ready)
    {
        return Ok(format!(
            "node {} leads at zxid {}",
            s.node_id, s.committed_zxid
        ));
    }
    // A server answered, so its session was committed by a quorum: healthy if the
    // answering nodes agree on a leader and one of them is ready.
    if let Some(s) = answered.iter().find(|s| s.ready && s.leader.is_some()) {
        return Ok(format!(
            "node {} follows leader {} and is ready",
            s.node_id,
            s.leader.unwrap_or(0)
        ));
    }
    Err("no server reports a ready leader".into())
}

/// `corralctl health`: exit 0 when the cluster has a quorum and a leader, 1 otherwise.
pub async fn health(servers: &str, json: bool) -> Result<ExitCode, Error> {
    let rows = survey(servers).await;
    let verdict = healthy(&rows);
    if json {
        let v = serde_json::json!({
            "healthy": verdict.is_ok(),
            "reason": match &verdict { Ok(m) | Err(m) => m.clone() },
            "servers": rows,
        });
        super::emit(v)?;
    } else {
        match &verdict {
            Ok(m) => super::emit(format!("healthy: {m}"))?,
            Err(m) => super::emit(format!("unhealthy: {m}"))?,
        }
    }
    Ok(if verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `corralctl snapshot save`.
pub async fn snapshot(
    servers: &str,
    command: SnapshotCommand,
    json: bool,
) -> Result<ExitCode, Error> {
    let SnapshotCommand::Save {
        file,
        admin,
        max_bytes,
    } = command;
    let admin = match admin {
        Some(a) => a,
        None => {
            let rows = survey(servers).await;
            let mut answered: Vec<&ServerStatus> =
                rows.iter().filter_map(|r| r.status.as_ref()).collect();
            answered.sort_by_key(|s| !matches!(s.role, Role::Leader | Role::Standalone));
            answered
                .iter()
                .find_map(|s| s.admin_addr.clone())
                .ok_or_else(|| {
                    Error::Protocol(String::from(
                        "no server answered with an admin endpoint (use --admin)",
                    ))
                })?
        }
    };
    let response = corral_client::admin::get(&admin, "/snapshot", max_bytes).await?;
    if response.status != 200 {
        return Err(Error::Protocol(format!(
            "{admin}/snapshot answered {}: {}",
            response.status,
            response.text().trim()
        )));
    }
    let body = response.body;
    if body.len() < 20 || &body[..8] != BACKUP_MAGIC {
        return Err(Error::Protocol(format!(
            "{admin}/snapshot did not send a backup"
        )));
    }
    let mut zxid_bytes = [0u8; 8];
    zxid_bytes.copy_from_slice(&body[12..20]);
    let zxid = u64::from_le_bytes(zxid_bytes);
    let mut tmp = file.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &body)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &file)?;
    // The new name is durable once its directory is: "saved" must survive a power cut.
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    if json {
        super::emit(
            serde_json::json!({"file": file.display().to_string(), "zxid": zxid, "bytes": body.len(), "admin": admin}),
        )?;
    } else {
        super::emit(format!(
            "saved backup at zxid {zxid} ({} bytes) from {admin} to {}",
            body.len(),
            file.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(address: &str, ready: Option<bool>) -> Row {
        Row {
            address: address.to_string(),
            status: ready.map(|ready| ServerStatus {
                node_id: 1,
                role: Role::Follower,
                leader: Some(2),
                members: Vec::new(),
                applied_zxid: 1,
                committed_zxid: 1,
                log_bytes: 0,
                snapshot_bytes: 0,
                sessions: 0,
                connections: 0,
                watches: 0,
                znodes: 1,
                locks: 0,
                locks_held: 0,
                locks_waiting: 0,
                admin_addr: None,
                ready,
                version: String::new(),
            }),
            error: ready.is_none().then(|| String::from("connection refused")),
        }
    }

    #[test]
    fn status_exit_codes() {
        assert!(status_verdict(&[row("a", Some(true)), row("b", Some(true))]).is_ok());
        let (code, why) = status_verdict(&[row("a", None), row("b", None)]).expect_err("none");
        assert_eq!(code, STATUS_NO_ANSWER);
        assert!(
            why.contains("no server answered") && why.contains("a, b"),
            "{why}"
        );
        let (code, why) =
            status_verdict(&[row("a", Some(true)), row("b", None)]).expect_err("one down");
        assert_eq!(code, STATUS_DEGRADED);
        assert!(why.contains("1 of 2 servers did not answer (b)"), "{why}");
        let (code, why) =
            status_verdict(&[row("a", Some(true)), row("b", Some(false))]).expect_err("not ready");
        assert_eq!(code, STATUS_DEGRADED);
        assert!(why.contains("not ready (b)"), "{why}");
    }
}
