//! Operations commands: `status` (a table of every server), `health` (exit status for
//! monitors), `snapshot save` (a backup through a server's admin endpoint).

use corral_client::{Client, ClientConfig, Error};
use corral_protocol::{Role, ServerStatus};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Time allowed to each server to grant a session and answer.
const SERVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest backup `snapshot save` accepts by default, in bytes.
const DEFAULT_MAX_BACKUP_BYTES: u64 = 4 << 30;
/// The first bytes of a backup file (see the server's `backup` module).
const BACKUP_MAGIC: &[u8; 8] = b"CORRALBK";
/// Bytes of a backup file's header: magic, format version, zxid, image length, CRC-32.
const BACKUP_HEADER_BYTES: usize = 8 + 4 + 8 + 8 + 4;
/// Most bytes of a refusal's body shown in a message.
const REFUSAL_BYTES: u64 = 4096;

/// A positive duration (`--stall-timeout`).
fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = super::duration::parse_duration(text)?;
    if d.is_zero() {
        return Err(String::from("must be more than 0"));
    }
    Ok(d)
}

/// `corralctl snapshot ...`
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Save a backup of the state (the image a server has applied, at one zxid) to FILE.
    ///
    /// Asks the servers for their admin endpoint (or uses --admin) and downloads
    /// /snapshot from the leader first, then from the other servers that answered, in
    /// the order of -s: a server that cannot be reached, answers 429 (a backup is being
    /// taken there) or 503 (its core is busy or starting), or whose answer stalls or
    /// breaks off, is reported on stderr and the next one is tried. Exits 1 when none
    /// sent a backup, or at once on a refusal that another server would repeat (too
    /// large, not a backup, FILE not writable). FILE is replaced only by a complete
    /// backup: it is written to FILE.tmp (removed on failure), fsynced and renamed.
    /// Restore with `corral restore --from FILE --data-dir DIR` (docs/OPERATIONS.md).
    Save {
        /// Where to write the backup (written to FILE.tmp, then renamed).
        file: PathBuf,
        /// Admin endpoints (host:port, comma-separated) to download from, tried in this
        /// order, instead of asking the servers.
        #[arg(long)]
        admin: Option<String>,
        /// Refuse a backup larger than this many bytes.
        #[arg(long, default_value_t = DEFAULT_MAX_BACKUP_BYTES)]
        max_bytes: u64,
        /// Give up on a server whose answer brings no byte for this long (then try
        /// the next one). The server gives up on a reader that takes nothing for 30 s.
        #[arg(long, value_parser = positive_duration, default_value = "30s")]
        stall_timeout: Duration,
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

/// The admin endpoints to download a backup from, in order: the leader's (or a single
/// node's) first, then the others in the order of -s.
fn admin_candidates(rows: &[Row]) -> Vec<String> {
    let mut answered: Vec<&ServerStatus> = rows.iter().filter_map(|r| r.status.as_ref()).collect();
    // Stable: the followers keep the order of -s.
    answered.sort_by_key(|s| !matches!(s.role, Role::Leader | Role::Standalone));
    let mut out: Vec<String> = Vec::new();
    for admin in answered.iter().filter_map(|s| s.admin_addr.as_ref()) {
        if !out.contains(admin) {
            out.push(admin.clone());
        }
    }
    out
}

/// Why one server did not give a backup.
#[derive(Debug)]
enum Failure {
    /// Worth asking the next server: unreachable, busy (429), unavailable (503), or its
    /// answer stalled or broke off.
    Next(String),
    /// Another server would fail the same way (or the fault is here).
    Stop(String),
}

/// A temporary file removed when dropped, unless kept.
struct TmpFile {
    path: PathBuf,
    kept: bool,
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A saved backup.
struct Saved {
    zxid: u64,
    bytes: u64,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Downloads `/snapshot` from `admin` into `tmp` (then renamed to `file`).
async fn download(
    admin: &str,
    file: &Path,
    tmp: &Path,
    max_bytes: u64,
    stall_timeout: Duration,
) -> Result<Saved, Failure> {
    let mut answer = corral_client::admin::get_stream(admin, "/snapshot", stall_timeout)
        .await
        .map_err(|e| Failure::Next(format!("cannot reach it: {e}")))?;
    if answer.status != 200 {
        let status = answer.status;
        let text = match answer.read_all(REFUSAL_BYTES).await {
            Ok(r) => r.text().trim().to_string(),
            Err(e) => e.to_string(),
        };
        let why = format!("answered {status}: {text}");
        return Err(match status {
            429 | 503 => Failure::Next(why),
            _ => Failure::Stop(why),
        });
    }
    let local = |e: std::io::Error| Failure::Stop(format!("{}: {e}", tmp.display()));
    let mut out = TmpFile {
        path: tmp.to_path_buf(),
        kept: false,
    };
    let mut writer = std::fs::File::create(tmp).map_err(local)?;
    let mut header = Vec::with_capacity(BACKUP_HEADER_BYTES);
    let mut bytes = 0u64;
    loop {
        let piece = match answer.next_piece().await {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            Err(e) => return Err(Failure::Next(format!("{e} after {bytes} bytes"))),
        };
        bytes += piece.len() as u64;
        if bytes > max_bytes {
            return Err(Failure::Stop(format!(
                "the backup exceeds --max-bytes {max_bytes}"
            )));
        }
        let wanted = BACKUP_HEADER_BYTES.saturating_sub(header.len());
        header.extend_from_slice(&piece[..wanted.min(piece.len())]);
        writer.write_all(&piece).map_err(local)?;
    }
    if header.len() < BACKUP_HEADER_BYTES || &header[..8] != BACKUP_MAGIC {
        return Err(Failure::Stop(String::from("it did not send a backup")));
    }
    let zxid = le_u64(&header[12..]);
    let expected = BACKUP_HEADER_BYTES as u64 + le_u64(&header[20..]);
    if bytes != expected {
        return Err(Failure::Next(format!(
            "the backup is cut short: {bytes} of {expected} bytes"
        )));
    }
    writer.sync_all().map_err(local)?;
    drop(writer);
    std::fs::rename(tmp, file).map_err(|e| Failure::Stop(format!("{}: {e}", file.display())))?;
    out.kept = true;
    // The new name is durable once its directory is: "saved" must survive a power cut.
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Failure::Stop(format!("{}: {e}", dir.display())))?;
    Ok(Saved { zxid, bytes })
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
        stall_timeout,
    } = command;
    let candidates = match admin {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
        None => admin_candidates(&survey(servers).await),
    };
    if candidates.is_empty() {
        eprintln!(
            "corralctl: snapshot save: no server answered with an admin endpoint (use --admin)"
        );
        return Ok(ExitCode::from(1));
    }
    let mut tmp = file.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut failures = Vec::new();
    for (i, admin) in candidates.iter().enumerate() {
        match download(admin, &file, &tmp, max_bytes, stall_timeout).await {
            Ok(saved) => {
                if json {
                    super::emit(serde_json::json!({
                        "file": file.display().to_string(),
                        "zxid": saved.zxid,
                        "bytes": saved.bytes,
                        "admin": admin,
                    }))?;
                } else {
                    super::emit(format!(
                        "saved backup at zxid {} ({} bytes) from {admin} to {}",
                        saved.zxid,
                        saved.bytes,
                        file.display()
                    ))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(Failure::Stop(why)) => {
                eprintln!("corralctl: snapshot save: {admin}: {why}");
                return Ok(ExitCode::from(1));
            }
            Err(Failure::Next(why)) => {
                if i + 1 < candidates.len() {
                    eprintln!("corralctl: snapshot save: {admin}: {why}; trying the next server");
                }
                failures.push(format!("{admin}: {why}"));
            }
        }
    }
    eprintln!(
        "corralctl: snapshot save: no server sent a backup ({})",
        failures.join("; ")
    );
    Ok(ExitCode::from(1))
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
    fn backups_come_from_the_leader_first_then_the_others_in_order() {
        let with = |address: &str, role: Role, admin: Option<&str>| {
            let mut r = row(address, Some(true));
            if let Some(s) = r.status.as_mut() {
                s.role = role;
                s.admin_addr = admin.map(String::from);
            }
            r
        };
        let rows = [
            with("a", Role::Follower, Some("a:1")),
            row("b", None),
            with("c", Role::Candidate, None),
            with("d", Role::Follower, Some("d:1")),
            with("e", Role::Leader, Some("e:1")),
        ];
        assert_eq!(admin_candidates(&rows), ["e:1", "a:1", "d:1"]);
        assert!(admin_candidates(&[row("b", None)]).is_empty());
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
