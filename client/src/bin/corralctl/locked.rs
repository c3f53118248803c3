//! `corralctl lock` and `corralctl elect`: run a command while holding a lock (or
//! several, acquired all at once) or leading an election, and stop it if that ends
//! first.

use crate::duration::{parse_duration, show_duration};
use clap::Args;
use corral_client::recipes::Election;
use corral_client::{Client, Error, LockGuard, LockKind, LockLoss, LockOptions, MultiLockGuard};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The lock was not acquired (`--try` found it held, or `--timeout` passed).
pub const EXIT_NOT_ACQUIRED: u8 = 1;
/// The lock (or leadership) was lost while the command ran: it was stopped.
pub const EXIT_LOCK_LOST: u8 = 75;
/// The command could not be found.
const EXIT_NOT_FOUND: u8 = 127;
/// The command could not be started for another reason.
const EXIT_CANNOT_RUN: u8 = 126;
/// Longest wait for the release after the command exited.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses `exclusive`, `read`, `write` or `semaphore:N`.
fn parse_kind(text: &str) -> Result<LockKind, String> {
    match text {
        "exclusive" => Ok(LockKind::Exclusive),
        "read" => Ok(LockKind::Read),
        "write" => Ok(LockKind::Write),
        other => match other.strip_prefix("semaphore:").map(str::parse::<u32>) {
            Some(Ok(permits)) if permits > 0 => Ok(LockKind::Semaphore { permits }),
            _ => Err(format!(
                "{other:?} is not a lock kind (exclusive, read, write or semaphore:N with N > 0)"
            )),
        },
    }
}

/// How the command is run: shared by `lock` and `elect`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// When the lock is lost: how long the command gets after SIGTERM before SIGKILL.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "5s")]
    pub kill_grace: Duration,
    /// Run the command in corralctl's process group, as the terminal's foreground job
    /// (for interactive commands). Then only the command itself, not the processes it
    /// started, is signalled when the lock is lost.
    #[arg(long)]
    pub foreground: bool,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (the node whose children form its queue). Several names take
    /// every lock at once (`LockMany`): granted all together or not at all, with one
    /// fencing token, and lost (then released) together.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Hold the lock under a lease of this TTL, renewed every third of it: if renewals
    /// stop getting through, the lock is lost after the TTL. Default: under the session.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Give up (exit 1) if the lock is not granted within this time.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, conflicts_with = "try_only")]
    pub timeout: Option<Duration>,
    /// Fail at once (exit 1) if the lock is held.
    #[arg(long = "try")]
    pub try_only: bool,
    /// exclusive, read, write, or semaphore:N.
    #[arg(long, value_name = "KIND", value_parser = parse_kind, default_value = "exclusive")]
    pub kind: LockKind,
    /// Lock-delay set on the lock if this request creates it: after a holder's lease
    /// expires, nobody is granted for this long.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "0s")]
    pub lock_delay: Duration,
    /// Data stored in the queue node (UTF-8 text; see --data-file). Default:
    /// corralctl's pid.
    #[arg(long)]
    pub data: Option<String>,
    /// Read the queue node's data from this file instead, as raw bytes; `-` reads it
    /// from stdin (to its end: CMD then finds nothing more there).
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub data_file: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name (the lock whose queue holds the candidates).
    pub name: String,
    /// Candidate data that observers see for the leader (UTF-8 text; see
    /// --data-file). Default: corralctl's pid.
    #[arg(long)]
    pub data: Option<String>,
    /// Read the candidate data from this file instead, as raw bytes; `-` reads it from
    /// stdin (to its end: CMD then finds nothing more there).
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub data_file: Option<PathBuf>,
    /// Lead under a lease of this TTL (see `lock --ttl`). Default: under the session.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Give up (exit 1) if not elected within this time.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    #[command(flatten)]
    pub run: RunArgs,
}

impl LockArgs {
    /// The queue node's data (from --data or --data-file), read before corralctl
    /// connects.
    pub fn load_data(&self, max: usize) -> Result<Option<Vec<u8>>, Error> {
        crate::data::load(self.data.as_deref(), self.data_file.as_deref(), max)
    }
}

impl ElectArgs {
    /// The candidate data (from --data or --data-file), read before corralctl connects.
    pub fn load_data(&self, max: usize) -> Result<Option<Vec<u8>>, Error> {
        crate::data::load(self.data.as_deref(), self.data_file.as_deref(), max)
    }
}

fn default_data(data: Option<Vec<u8>>) -> Vec<u8> {
    data.unwrap_or_else(|| format!("corralctl pid {}", std::process::id()).into_bytes())
}

/// The signals corralctl passes on to the command (or that stop a wait for the lock).
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    quit: Signal,
    suspend: Signal,
}

/// SIGTSTP (a terminal's Ctrl-Z), as Linux numbers it.
const SIGTSTP: i32 = 20;

#[derive(Debug, Clone, Copy)]
struct Received {
    number: u8,
    name: &'static str,
}

impl Signals {
    fn new() -> Result<Self, Error> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            // Ctrl-\ reaches only corralctl's process group, not the command's: without
            // this, corralctl died of it and left the command running without the lock.
            quit: signal(SignalKind::quit())?,
            // Ctrl-Z, likewise: corralctl stopped, its keepalives stopped with it, and
            // the command ran on while the lock expired. Now both stop (see `suspend`).
            suspend: signal(SignalKind::from_raw(SIGTSTP))?,
        })
    }

    /// The next signal to act on; a Ctrl-Z meanwhile stops corralctl (there is no
    /// command yet) until the shell continues it.
    async fn recv_or_stop(&mut self) -> Received {
        loop {
            let received = self.recv().await;
            if received.number != 20 {
                return received;
            }
            stop_self().await;
        }
    }

    async fn recv(&mut self) -> Received {
        async fn next(s: &mut Signal) {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = next(&mut self.interrupt) => Received { number: 2, name: "INT" },
            () = next(&mut self.terminate) => Received { number: 15, name: "TERM" },
            () = next(&mut self.hangup) => Received { number: 1, name: "HUP" },
            () = next(&mut self.quit) => Received { number: 3, name: "QUIT" },
            () = next(&mut self.suspend) => Received { number: 20, name: "TSTP" },
        }
    }
}

/// Who gets the signals: the command's process group, or the command alone.
#[derive(Debug, Clone, Copy)]
struct Target {
    pid: Option<u32>,
    group: bool,
}

impl Target {
    /// Sends a signal with kill(1) (this crate has no unsafe code for kill(2)); false if
    /// it could not be sent.
    async fn signal(&self, name: &str) -> bool {
        let Some(pid) = self.pid else {
            return false;
        };
        let target = if self.group {
            format!("-{pid}")
        } else {
            pid.to_string()
        };
        Command::new("kill")
            .args(["-s", name, "--", &target])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success())
    }
}

/// Stops corralctl (SIGSTOP, as Ctrl-Z would have without its handler); returns once
/// the shell continued it.
async fn stop_self() {
    let _ = Command::new("kill")
        .args(["-s", "STOP", "--", &std::process::id().to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

/// The exit code that tells how the command ended (128 + N for signal N).
fn exit_code_of(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(255)),
        (None, None) => ExitCode::from(1),
    }
}

fn interrupted(what: &str, signal: Received) -> ExitCode {
    eprintln!(
        "corralctl: SIG{} while waiting for {what}; gave up",
        signal.name
    );
    ExitCode::from(128 + signal.number)
}

/// Stops the command after the lock was lost: SIGTERM, then SIGKILL after the grace
/// period (to the whole process group once the command has exited or the grace ran
/// out, so that nothing it started keeps working without the lock).
async fn stop(child: &mut Child, target: Target, grace: Duration) {
    if !target.signal("TERM").await {
        let _ = child.start_kill();
    }
    let exited = tokio::time::timeout(grace, child.wait()).await.is_ok();
    if target.group {
        target.signal("KILL").await;
    } else if !exited {
        let _ = child.start_kill();
    }
    if !exited {
        let _ = child.wait().await;
    }
}

/// What the command runs under: one lock (or leadership), or a multi-lock's set.
#[derive(Clone, Copy)]
enum Held<'a> {
    One(&'a LockGuard),
    Many(&'a MultiLockGuard),
}

impl Held<'_> {
    fn is_held(&self) -> bool {
        match self {
            Held::One(g) => g.is_held(),
            Held::Many(g) => g.is_held(),
        }
    }

    fn lost(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = LockLoss> + Send>> {
        match self {
            Held::One(g) => Box::pin(g.lost()),
            Held::Many(g) => Box::pin(g.lost()),
        }
    }

    async fn release(&self) -> Result<bool, Error> {
        match self {
            Held::One(g) => g.release().await,
            Held::Many(g) => g.release().await,
        }
    }

    /// The lock names, for messages.
    fn names(&self) -> String {
        match self {
            Held::One(g) => g.name().to_string(),
            Held::Many(g) => g
                .nodes()
                .iter()
                .map(|n| n.lock.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Runs the command while `guard` holds, and returns corralctl's exit code.
async fn supervise(
    guard: Held<'_>,
    env: &[(&str, String)],
    run: &RunArgs,
    signals: &mut Signals,
    what: &str,
) -> ExitCode {
    let Some((program, args)) = run.command.split_first() else {
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let mut command = Command::new(program);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    if !run.foreground {
        command.process_group(0);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("corralctl: cannot run {program}: {e}");
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            });
        }
    };
    let target = Target {
        pid: child.id(),
        group: !run.foreground,
    };
    let lost = guard.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            biased;
            loss = &mut lost => {
                eprintln!("corralctl: lock lost ({what}: {loss}); stopping {program}");
                stop(&mut child, target, run.kill_grace).await;
                return ExitCode::from(EXIT_LOCK_LOST);
            }
            status = child.wait() => {
                if !guard.is_held() {
                    // Lost by the time the command ended: its work was not protected.
                    eprintln!("corralctl: lock lost ({what}) before {program} exited");
                    return ExitCode::from(EXIT_LOCK_LOST);
                }
                return match status {
                    Ok(status) => exit_code_of(status),
                    Err(e) => {
                        eprintln!("corralctl: waiting for {program}: {e}");
                        ExitCode::from(EXIT_CANNOT_RUN)
                    }
                };
            }
            received = signals.recv() => {
                if received.number == 20 {
                    // Ctrl-Z: the command stops too (in the foreground the terminal
                    // already told it), then corralctl. While they are stopped no
                    // keepalive goes out, so the lock may expire: the command is
                    // continued only if it is still held.
                    if target.group {
                        target.signal("TSTP").await;
                    }
                    stop_self().await;
                    if !guard.is_held() {
                        eprintln!("corralctl: lock lost ({what}) while stopped; stopping {program}");
                        target.signal("CONT").await;
                        stop(&mut child, target, run.kill_grace).await;
                        return ExitCode::from(EXIT_LOCK_LOST);
                    }
                    if target.group {
                        target.signal("CONT").await;
                    }
                    continue;
                }
                // In the foreground the terminal already sent Ctrl-C or Ctrl-\ to the
                // command.
                if target.group || !matches!(received.number, 2 | 3) {
                    target.signal(received.name).await;
                }
            }
        }
    }
}

/// Releases what is still held after the command exited (bounded; the session's close
/// releases it anyway).
async fn release(guard: Held<'_>) {
    if !guard.is_held() {
        return;
    }
    match tokio::time::timeout(RELEASE_TIMEOUT, guard.release()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("corralctl: releasing {}: {e}", guard.names()),
        Err(_) => eprintln!("corralctl: releasing {} timed out", guard.names()),
    }
}

/// A description of who holds `name`, for the `--try` message (best effort).
async fn holders(client: &Client, name: &str) -> String {
    let Ok(locks) = client.locks(name).await else {
        return String::new();
    };
    let sessions: Vec<String> = locks
        .iter()
        .filter(|l| l.lock == name)
        .flat_map(|l| l.queue.iter())
        .filter(|e| e.granted)
        .map(|e| format!("{:#x}", e.session))
        .collect();
    if sessions.is_empty() {
        String::new()
    } else {
        format!(" (by session {})", sessions.join(", "))
    }
}

/// `corralctl lock`; `data` is what [`LockArgs::load_data`] read.
pub async fn lock(
    client: &Client,
    server: &str,
    args: LockArgs,
    data: Option<Vec<u8>>,
) -> Result<ExitCode, Error> {
    let mut signals = Signals::new()?;
    let data = default_data(data);
    let len = data.len();
    let mut options = LockOptions::default()
        .with_kind(args.kind)
        .with_lock_delay(args.lock_delay)
        .with_data(data);
    if let Some(ttl) = args.ttl {
        options = options.with_ttl(ttl);
    }
    if let [name] = args.names.as_slice() {
        let lock = client.lock(name, options);
        let attempt = async {
            match (args.try_only, args.timeout) {
                (true, _) => lock.try_acquire().await,
                (false, Some(timeout)) => lock.acquire_timeout(timeout).await,
                (false, None) => lock.acquire().await.map(Some),
            }
        };
        let acquired = tokio::select! {
            acquired = attempt => acquired.map_err(|e| crate::data::explain(e, len))?,
            received = signals.recv_or_stop() => return Ok(interrupted("the lock", received)),
        };
        let Some(guard) = acquired else {
            return Ok(not_acquired(client, &args).await);
        };
        let env = [
            ("CORRAL_LOCK_TOKEN", guard.token().to_string()),
            ("CORRAL_LOCK_NAME", guard.name().to_string()),
            ("CORRAL_LOCK_NODE", guard.node().to_string()),
            ("CORRAL_SERVER", server.to_string()),
        ];
        let held = Held::One(&guard);
        let code = supervise(held, &env, &args.run, &mut signals, name).await;
        release(held).await;
        return Ok(code);
    }
    let locks = client.lock_many(args.names.iter().cloned(), options);
    let attempt = async {
        match (args.try_only, args.timeout) {
            (true, _) => locks.try_acquire().await,
            (false, Some(timeout)) => locks.acquire_timeout(timeout).await,
            (false, None) => locks.acquire().await.map(Some),
        }
    };
    let acquired = tokio::select! {
        acquired = attempt => acquired.map_err(|e| crate::data::explain(e, len))?,
        received = signals.recv_or_stop() => return Ok(interrupted("the locks", received)),
    };
    let Some(guard) = acquired else {
        return Ok(not_acquired(client, &args).await);
    };
    // One line per lock, in the order given (paths hold no control characters).
    let lines = |f: fn(&corral_client::LockedNode) -> &str| {
        guard.nodes().iter().map(f).collect::<Vec<_>>().join("\n")
    };
    let token = guard.nodes().first().map_or(0, |n| n.token);
    let env = [
        ("CORRAL_LOCK_TOKEN", token.to_string()),
        ("CORRAL_LOCK_NAME", lines(|n| n.lock.as_str())),
        ("CORRAL_LOCK_NODE", lines(|n| n.node.as_str())),
        ("CORRAL_SERVER", server.to_string()),
    ];
    let held = Held::Many(&guard);
    let what = held.names();
    let code = supervise(held, &env, &args.run, &mut signals, &what).await;
    release(held).await;
    Ok(code)
}

/// Says why the lock (or locks) was not acquired: who holds it (`--try`), or how long
/// corralctl waited.
async fn not_acquired(client: &Client, args: &LockArgs) -> ExitCode {
    if args.try_only {
        let mut told = false;
        for name in &args.names {
            let by = holders(client, name).await;
            if args.names.len() == 1 || !by.is_empty() {
                eprintln!("corralctl: lock {name} is held{by}");
                told = true;
            }
        }
        if !told {
            eprintln!(
                "corralctl: locks {} are not all free",
                args.names.join(", ")
            );
        }
    } else {
        let waited = args.timeout.map(show_duration).unwrap_or_default();
        let what = match args.names.as_slice() {
            [one] => format!("lock {one}"),
            many => format!("locks {}", many.join(", ")),
        };
        eprintln!("corralctl: timed out after {waited} waiting for {what}");
    }
    ExitCode::from(EXIT_NOT_ACQUIRED)
}

/// `corralctl elect`; `data` is what [`ElectArgs::load_data`] read.
pub async fn elect(
    client: &Client,
    server: &str,
    args: ElectArgs,
    data: Option<Vec<u8>>,
) -> Result<ExitCode, Error> {
    let mut signals = Signals::new()?;
    let mut options = LockOptions::default();
    if let Some(ttl) = args.ttl {
        options = options.with_ttl(ttl);
    }
    let data = default_data(data);
    let len = data.len();
    let election = Election::new(client, &args.name, data).with_options(options);
    let attempt = async {
        match args.timeout {
            Some(timeout) => election.campaign_timeout(timeout).await,
            None => election.campaign().await.map(Some),
        }
    };
    let elected = tokio::select! {
        elected = attempt => elected.map_err(|e| crate::data::explain(e, len))?,
        received = signals.recv_or_stop() => return Ok(interrupted("leadership", received)),
    };
    let Some(leadership) = elected else {
        let waited = args.timeout.map(show_duration).unwrap_or_default();
        eprintln!("corralctl: not elected in {} within {waited}", args.name);
        return Ok(ExitCode::from(EXIT_NOT_ACQUIRED));
    };
    let env = [
        ("CORRAL_LEADER_TOKEN", leadership.token().to_string()),
        ("CORRAL_LEADER_NODE", leadership.node().to_string()),
        ("CORRAL_ELECTION_NAME", args.name.clone()),
        ("CORRAL_SERVER", server.to_string()),
    ];
    let what = format!("leadership of {}", args.name);
    let held = Held::One(leadership.guard());
    let code = supervise(held, &env, &args.run, &mut signals, &what).await;
    release(held).await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(parse_kind("exclusive"), Ok(LockKind::Exclusive));
        assert_eq!(parse_kind("read"), Ok(LockKind::Read));
        assert_eq!(parse_kind("write"), Ok(LockKind::Write));
        assert_eq!(
            parse_kind("semaphore:3"),
            Ok(LockKind::Semaphore { permits: 3 })
        );
        for bad in ["", "shared", "semaphore", "semaphore:0", "semaphore:x"] {
            assert!(parse_kind(bad).is_err(), "{bad:?}");
        }
    }
}
