//! `corralctl`: a command-line client for corral.
//!
//! ```text
//! corralctl -s 127.0.0.1:2281 create /app hello
//! corralctl get /app
//! corralctl set /app/logo -f logo.png          # data from a file (-f - for stdin)
//! corralctl get --raw /app/logo > logo.png     # the bytes as they are
//! corralctl --json ls -l /
//! corralctl watch --recursive /app --count 10
//! corralctl lock --ttl 10s /locks/backup -- ./backup.sh
//! corralctl lock /locks/db /locks/cache -- ./migrate.sh   # both at once, or neither
//! corralctl elect /election/cron --data "$(hostname)" -- ./scheduler
//! corralctl locks /locks
//! ```
//!
//! The commands live in one module per group: `nodes` (create, get, set, ls, stat, rm,
//! watch), `locked` (lock, elect: run a command under a lock) and `locks` (listing).

// A binary's root resolves modules next to itself (src/bin/), so point at its directory.
#[path = "corralctl/data.rs"]
mod data;
#[path = "corralctl/duration.rs"]
mod duration;
#[path = "corralctl/locked.rs"]
mod locked;
#[path = "corralctl/locks.rs"]
mod locks;
#[path = "corralctl/nodes.rs"]
mod nodes;
#[path = "corralctl/ops.rs"]
mod ops;

use clap::{CommandFactory, Parser, Subcommand};
use corral_client::{Client, ClientConfig, Error, ErrorCode};
use corral_protocol::DEFAULT_MAX_FRAME_BYTES;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Bounds of `--max-frame-bytes`: the client's smallest frame, and the server's largest
/// `max_frame_bytes` (a larger one is never sent).
const MIN_FRAME_BYTES: u64 = 1024;
const MAX_FRAME_BYTES: u64 = 64 << 20;

/// Longest wait for the session's close before corralctl exits anyway (the session then
/// expires on the server after its TTL).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Command-line client for corral, a ZooKeeper-style coordination service.
///
/// Each invocation opens a session, runs one command and closes the session. Ephemeral
/// nodes die with the session that created them, so a node created with `--ephemeral`
/// is deleted as soon as corralctl exits.
///
/// Data is given as an argument (UTF-8 text, at most about 128 KiB on Linux), or read
/// as raw bytes from a file with `-f FILE` (`create`, `set`) or `--data-file FILE`
/// (every command that takes data); `-` as FILE reads stdin. `get --raw` writes a
/// node's data to stdout unchanged. Data larger than the default frame limit (1 MiB
/// + 64 KiB) needs `--max-frame-bytes` and a server configured for it.
#[derive(Debug, Parser)]
#[command(name = "corralctl", version, about, long_about)]
struct Cli {
    /// Servers to connect to, comma-separated host:port.
    #[arg(
        short,
        long,
        global = true,
        env = "CORRAL_SERVER",
        default_value = "127.0.0.1:2281"
    )]
    server: String,

    /// Print JSON instead of human-readable output.
    #[arg(long, global = true)]
    json: bool,

    /// Largest frame corralctl sends or accepts, in bytes (1024 to 64 MiB). A node
    /// whose data, or a response, is larger fails with FrameTooLarge: raise this along
    /// with the server's max_frame_bytes (and max_data_bytes) to read and write larger
    /// nodes. (status, health and snapshot do not use it.)
    #[arg(
        long,
        global = true,
        env = "CORRAL_MAX_FRAME_BYTES",
        value_name = "BYTES",
        value_parser = clap::value_parser!(u64).range(MIN_FRAME_BYTES..=MAX_FRAME_BYTES),
        default_value_t = DEFAULT_MAX_FRAME_BYTES as u64
    )]
    max_frame_bytes: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Nodes(nodes::NodeCommand),
    /// Run a command while holding a lock (or several, all at once).
    ///
    /// Waits for the lock (or, with --try / --timeout, gives up with exit code 1), runs
    /// CMD with CORRAL_LOCK_TOKEN (the fencing token: pass it along with every write
    /// the lock protects), CORRAL_LOCK_NAME, CORRAL_LOCK_NODE and CORRAL_SERVER in its
    /// environment, releases the lock when CMD exits and exits with CMD's exit code
    /// (128 + N if a signal N ended it).
    ///
    /// If the lock is lost while CMD runs (its lease or session could not be renewed in
    /// time), CMD's process group gets SIGTERM, then SIGKILL after --kill-grace, and
    /// corralctl exits with 75 after printing "corralctl: lock lost". SIGINT, SIGTERM,
    /// SIGHUP and SIGQUIT sent to corralctl are passed on to CMD. SIGTSTP (Ctrl-Z) stops
    /// CMD and corralctl; when corralctl is continued, so is CMD if the lock is still
    /// held (while stopped no keepalive goes out), else CMD is stopped as above.
    ///
    /// With several names every lock is acquired at once (all or none, never some of
    /// them held while waiting for the others, so two commands that take overlapping
    /// sets in different orders cannot deadlock), under one fencing token;
    /// CORRAL_LOCK_NAME and CORRAL_LOCK_NODE then hold one line per lock, in the order
    /// given, and losing any lock ends them all.
    ///
    /// Exit codes: CMD's own; 1 if the lock was not acquired (or an error); 2 for a
    /// usage error; 75 if the lock was lost; 126/127 if CMD could not be started.
    #[command(
        after_help = "Examples:\n  corralctl lock --ttl 10s --timeout 1m /locks/backup -- ./backup.sh\n  corralctl lock /locks/db /locks/cache -- ./migrate.sh"
    )]
    Lock(locked::LockArgs),
    /// Run a command while leader of an election.
    ///
    /// Campaigns (an exclusive lock whose queue nodes carry the candidates' --data),
    /// waits until elected, runs CMD with CORRAL_LEADER_TOKEN, CORRAL_LEADER_NODE,
    /// CORRAL_ELECTION_NAME and CORRAL_SERVER in its environment, and resigns when CMD
    /// exits. Leadership lost while CMD runs is handled like a lost lock (exit 75).
    #[command(
        after_help = "Example: corralctl elect /election/cron --data \"$(hostname)\" -- ./scheduler"
    )]
    Elect(locked::ElectArgs),
    /// List the locks at and below a path: kind, holders and waiters (node, session,
    /// fencing token, the sessions each waiter waits for, and for a multi-lock waiting
    /// first in a queue the other locks it waits on), lock-delay.
    Locks {
        /// Where to look.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show every server of -s as a table: node id, role, leader, applied zxid, lag
    /// behind the highest committed zxid seen, sessions, connections, readiness.
    ///
    /// Every server is asked on its own (a session each). The table (or, with --json,
    /// the rows) is printed in every case; the exit code says whether the whole list is
    /// up, for scripts such as a rolling restart's "every node ready" check:
    ///
    /// 0 if every server answered and is ready; 1 if no server answered (or an error);
    /// 3 if some answered but at least one did not answer or is not ready. When it is
    /// not 0, stderr names the servers that did not answer or are not ready. For
    /// "does the cluster have a quorum and a leader" use `corralctl health`.
    Status,
    /// Exit 0 if the cluster has a quorum and a ready leader, 1 otherwise.
    Health,
    /// Backups of the replicated state.
    #[command(subcommand)]
    Snapshot(ops::SnapshotCommand),
}

/// Writes one line of output; a closed pipe (`corralctl watch | head`) ends quietly.
fn emit(line: impl std::fmt::Display) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(Error::from)
}

impl Command {
    /// The command's data (its argument, a file or stdin), read before corralctl
    /// connects: at most `max` bytes, the most one request carries.
    fn load_data(&self, max: usize) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Command::Nodes(command) => command.load_data(max),
            Command::Lock(args) => args.load_data(max),
            Command::Elect(args) => args.load_data(max),
            Command::Locks { .. } | Command::Status | Command::Health | Command::Snapshot(_) => {
                Ok(None)
            }
        }
    }

    /// The paths the command works on, as they must validate.
    fn paths_to_check(&self) -> Vec<String> {
        match self {
            Command::Nodes(command) => vec![command.path_to_check()],
            Command::Lock(args) => args.names.clone(),
            Command::Elect(args) => vec![args.name.clone()],
            Command::Locks { path } => vec![path.clone()],
            Command::Status | Command::Health | Command::Snapshot(_) => vec!["/".to_string()],
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    // Fail on a bad path before connecting.
    for path in cli.command.paths_to_check() {
        corral_client::path::validate_path(&path).map_err(Error::InvalidPath)?;
    }
    // Operations commands ask each server on its own.
    match cli.command {
        Command::Status => return ops::status(&cli.server, cli.json).await,
        Command::Health => return ops::health(&cli.server, cli.json).await,
        Command::Snapshot(command) => return ops::snapshot(&cli.server, command, cli.json).await,
        _ => {}
    }
    let max_frame_bytes = usize::try_from(cli.max_frame_bytes).unwrap_or(usize::MAX);
    let config = ClientConfig::from_address_list(&cli.server).with_max_frame_bytes(max_frame_bytes);
    // Read before the session opens: a slow writer on stdin must not hold up its
    // keepalives, and a missing file opens no session.
    let data = cli.command.load_data(config.max_frame_bytes)?;
    let client = Client::connect(config).await?;
    let result = match cli.command {
        Command::Nodes(command) => nodes::execute(&client, command, data, cli.json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Lock(args) => locked::lock(&client, &cli.server, args, data).await,
        Command::Elect(args) => locked::elect(&client, &cli.server, args, data).await,
        Command::Locks { path } => locks::list(&client, &path, cli.json)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Status | Command::Health | Command::Snapshot(_) => Ok(ExitCode::SUCCESS),
    };
    // Best effort: the outcome of the command matters more than that of the close.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await;
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `get --raw --json` is refused by clap; `--json get --raw` (the global flag first)
    // is caught here, as the same usage error.
    if cli.json
        && matches!(
            cli.command,
            Command::Nodes(nodes::NodeCommand::Get { raw: true, .. })
        )
    {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "the argument '--json' cannot be used with '--raw'",
            )
            .exit();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("corralctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let max_frame_bytes = cli.max_frame_bytes;
    let result = runtime.block_on(run(cli));
    // Without waiting for blocking work: a write to stdout that a reader holds up (a
    // `watch` ended by Ctrl-C while its reader stopped reading) must not hold up the
    // exit, as dropping the runtime would.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corralctl: {e}");
            if e.code() == Some(ErrorCode::FrameTooLarge) {
                eprintln!(
                    "corralctl: corralctl sends and accepts frames of at most {max_frame_bytes} \
                     bytes (--max-frame-bytes, CORRAL_MAX_FRAME_BYTES): raise it if the \
                     server's max_frame_bytes allows more"
                );
            }
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_client::{CreateMode, LockKind};
    use nodes::{show_data, NodeCommand};

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "corralctl",
            "create",
            "/a/b",
            "x",
            "--ephemeral",
            "--sequential",
            "-p",
            "-s",
            "h:1,h:2",
        ]);
        let Ok(cli) = cli else {
            panic!("parse failed: {cli:?}");
        };
        assert_eq!(cli.server, "h:1,h:2");
        match cli.command {
            Command::Nodes(NodeCommand::Create(args)) => {
                assert_eq!(args.mode(), CreateMode::EphemeralSequential);
                assert!(args.parents);
                assert_eq!(args.data.as_deref(), Some("x"));
            }
            other => panic!("wrong command {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["corralctl", "create", "/a", "--ephemeral", "--container"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["corralctl", "rm", "-r", "/a", "--version", "3"]).is_ok());
    }

    #[test]
    fn parses_data_sources() {
        use std::path::Path;
        let file = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Nodes(NodeCommand::Create(a))) => (a.data, a.file),
            Ok(Command::Nodes(NodeCommand::Set { data, file, .. })) => (data, file),
            Ok(Command::Lock(a)) => (a.data, a.data_file),
            Ok(Command::Elect(a)) => (a.data, a.data_file),
            other => panic!("{args:?}: {other:?}"),
        };
        let stdin = Some(Path::new("-").to_path_buf());
        assert_eq!(file(&["c", "set", "/a", "-f", "-"]), (None, stdin.clone()));
        assert_eq!(
            file(&["c", "create", "--data-file", "-", "/a"]),
            (None, stdin.clone())
        );
        assert_eq!(
            file(&["c", "lock", "/l", "--data-file", "-", "--", "x"]),
            (None, stdin)
        );
        // `-` as the data argument is the data "-", as it always was.
        assert_eq!(file(&["c", "set", "/a", "-"]), (Some("-".into()), None));
        assert_eq!(
            file(&["c", "elect", "/e", "--data", "-", "--", "x"]),
            (Some("-".into()), None)
        );
        for args in [
            &["c", "set", "/a"][..],
            &["c", "set", "/a", "x", "-f", "y"],
            &["c", "create", "/a", "x", "--file", "y"],
            &["c", "get", "/a", "--raw", "--json"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn parses_max_frame_bytes() {
        let limit = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.max_frame_bytes);
        assert_eq!(
            limit(&["c", "get", "/a"]).ok(),
            Some(DEFAULT_MAX_FRAME_BYTES as u64)
        );
        assert_eq!(
            limit(&["c", "--max-frame-bytes", "4194304", "get", "/a"]).ok(),
            Some(4 << 20)
        );
        assert_eq!(
            limit(&["c", "get", "/a", "--max-frame-bytes", "1024"]).ok(),
            Some(1024)
        );
        for bad in ["1023", "67108865", "1k", ""] {
            assert!(
                limit(&["c", "--max-frame-bytes", bad, "get", "/a"]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_lock_commands() {
        let cli = Cli::try_parse_from([
            "corralctl",
            "lock",
            "/l",
            "--ttl",
            "10s",
            "--timeout",
            "500ms",
            "--kind",
            "write",
            "--lock-delay",
            "1s",
            "--",
            "sh",
            "-c",
            "echo --ttl",
        ]);
        let Ok(cli) = cli else {
            panic!("parse failed: {cli:?}");
        };
        match cli.command {
            Command::Lock(args) => {
                assert_eq!(args.names, ["/l"]);
                assert_eq!(args.ttl, Some(Duration::from_secs(10)));
                assert_eq!(args.timeout, Some(Duration::from_millis(500)));
                assert_eq!(args.kind, LockKind::Write);
                assert_eq!(args.lock_delay, Duration::from_secs(1));
                assert!(!args.try_only && !args.run.foreground);
                assert_eq!(args.run.kill_grace, Duration::from_secs(5));
                assert_eq!(args.run.command, ["sh", "-c", "echo --ttl"]);
            }
            other => panic!("wrong command {other:?}"),
        }
        // Several names, before the options or after them.
        for args in [
            &["corralctl", "lock", "/a", "/b", "--try", "--", "true"][..],
            &["corralctl", "lock", "--try", "/a", "/b", "--", "true"],
        ] {
            match Cli::try_parse_from(args).map(|c| c.command) {
                Ok(Command::Lock(a)) => {
                    assert_eq!(a.names, ["/a", "/b"], "{args:?}");
                    assert!(a.try_only);
                    assert_eq!(a.run.command, ["true"]);
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let usage_errors: &[&[&str]] = &[
            &["corralctl", "lock", "--", "true"],
            &["corralctl", "lock", "/l"],
            &["corralctl", "lock", "/l", "--"],
            &[
                "corralctl",
                "lock",
                "/l",
                "--try",
                "--timeout",
                "1s",
                "--",
                "true",
            ],
            &["corralctl", "lock", "/l", "--ttl", "10", "--", "true"],
            &["corralctl", "lock", "/l", "--kind", "shared", "--", "true"],
            &["corralctl", "elect", "/e"],
        ];
        for args in usage_errors {
            assert!(Cli::try_parse_from(*args).is_err(), "{args:?}");
        }
        let cli = Cli::try_parse_from(["corralctl", "elect", "/e", "--data", "me", "--", "run"]);
        assert!(
            matches!(&cli, Ok(Cli { command: Command::Elect(a), .. }) if a.data.as_deref() == Some("me")),
            "{cli:?}"
        );
        let cli = Cli::try_parse_from(["corralctl", "--json", "locks"]);
        assert!(
            matches!(&cli, Ok(Cli { command: Command::Locks { path }, json: true, .. }) if path == "/"),
            "{cli:?}"
        );
    }

    #[test]
    fn data_display() {
        assert_eq!(show_data(b"hello"), ("hello".to_string(), "utf8"));
        assert_eq!(
            show_data(&[0xff, 0x00, 0x10]),
            ("ff0010".to_string(), "hex")
        );
    }
}
