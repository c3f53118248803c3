//! `corralctl`: a command-line client for corral.
//!
//! ```text
//! corralctl -s 127.0.0.1:2281 create /app hello
//! corralctl get /app
//! corralctl --json ls -l /
//! corralctl watch --recursive /app --count 10
//! ```

use clap::{Args, Parser, Subcommand};
use corral_client::{
    AddWatchMode, Client, ClientConfig, CreateMode, CreateRequest, Error, ErrorCode, Stat,
    WatchEvent,
};
use serde_json::{json, Value};
use std::io::Write;
use std::process::ExitCode;

/// Command-line client for corral, a ZooKeeper-style coordination service.
///
/// Each invocation opens a session, runs one command and closes the session. Ephemeral
/// nodes die with the session that created them, so a node created with `--ephemeral`
/// is deleted as soon as corralctl exits.
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

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node and print its actual path.
    ///
    /// An ephemeral node is deleted when corralctl's session ends, that is, as soon as
    /// this command exits: use it to test, not to register anything.
    Create(CreateArgs),
    /// Print a node's data (as UTF-8 when valid, else as hex).
    Get {
        /// The node.
        path: String,
    },
    /// Replace a node's data and print its new stat.
    Set {
        /// The node.
        path: String,
        /// The new data (UTF-8).
        data: String,
        /// Only if the node is at this version.
        #[arg(long)]
        version: Option<u32>,
    },
    /// List a node's children.
    Ls {
        /// The node.
        path: String,
        /// Also show each child's stat (version, data length, children, owner, mtime).
        #[arg(short = 'l')]
        long: bool,
    },
    /// Print a node's stat.
    Stat {
        /// The node.
        path: String,
    },
    /// Delete a node.
    Rm {
        /// The node.
        path: String,
        /// Only if the node is at this version.
        #[arg(long)]
        version: Option<u32>,
        /// Delete the node's descendants first.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Print watch events on a node as they come, until Ctrl-C or --count events.
    Watch {
        /// The node (it need not exist).
        path: String,
        /// Also watch every descendant.
        #[arg(long)]
        recursive: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The node's path (for --sequential: the prefix of its name).
    path: String,
    /// Initial data (UTF-8); empty if omitted.
    data: Option<String>,
    /// Delete the node when this session ends (that is, when corralctl exits).
    #[arg(long, conflicts_with = "container")]
    ephemeral: bool,
    /// Append a per-parent sequence number to the name.
    #[arg(long, conflicts_with = "container")]
    sequential: bool,
    /// Create a container: deleted by the server once its last child is deleted.
    #[arg(long)]
    container: bool,
    /// Create missing parents.
    #[arg(short, long)]
    parents: bool,
}

impl CreateArgs {
    fn mode(&self) -> CreateMode {
        match (self.ephemeral, self.sequential, self.container) {
            (_, _, true) => CreateMode::Container,
            (true, true, _) => CreateMode::EphemeralSequential,
            (true, false, _) => CreateMode::Ephemeral,
            (false, true, _) => CreateMode::PersistentSequential,
            (false, false, _) => CreateMode::Persistent,
        }
    }
}

/// How the CLI shows bytes: as text when valid UTF-8, else as hex.
fn show_data(data: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(data) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (data.iter().map(|b| format!("{b:02x}")).collect(), "hex"),
    }
}

fn stat_json(stat: &Stat) -> Value {
    serde_json::to_value(stat).unwrap_or(Value::Null)
}

fn stat_lines(stat: &Stat) -> String {
    format!(
        "czxid = {}\nmzxid = {}\npzxid = {}\nctime_ms = {}\nmtime_ms = {}\nversion = {}\n\
         cversion = {}\nephemeral_owner = {:#x}\ndata_length = {}\nnum_children = {}",
        stat.czxid,
        stat.mzxid,
        stat.pzxid,
        stat.ctime_ms,
        stat.mtime_ms,
        stat.version,
        stat.cversion,
        stat.ephemeral_owner,
        stat.data_length,
        stat.num_children
    )
}

fn event_json(event: &WatchEvent) -> Value {
    json!({
        "kind": format!("{:?}", event.kind),
        "path": event.path,
        "zxid": event.zxid,
    })
}

/// Writes one line of output; a closed pipe (`corralctl watch | head`) ends quietly.
fn emit(line: impl std::fmt::Display) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(Error::from)
}

impl Command {
    /// The path the command works on, as it must validate (a sequential create's
    /// prefix is checked with a sequence number appended, as the client does).
    fn path_to_check(&self) -> String {
        match self {
            Command::Create(args) if args.sequential => format!("{}0000000000", args.path),
            Command::Create(CreateArgs { path, .. })
            | Command::Get { path }
            | Command::Set { path, .. }
            | Command::Ls { path, .. }
            | Command::Stat { path }
            | Command::Rm { path, .. }
            | Command::Watch { path, .. } => path.clone(),
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    // Fail on a bad path before connecting.
    corral_client::path::validate_path(&cli.command.path_to_check()).map_err(Error::InvalidPath)?;
    let client = Client::connect(ClientConfig::from_address_list(&cli.server)).await?;
    let result = execute(&client, cli.command, cli.json).await;
    // Best effort: the outcome of the command matters more than that of the close.
    let _ = client.close().await;
    result
}

async fn execute(client: &Client, command: Command, json: bool) -> Result<(), Error> {
    match command {
        Command::Create(args) => {
            let created = client
                .create_with(CreateRequest {
                    path: args.path.clone(),
                    data: args.data.clone().unwrap_or_default().into_bytes(),
                    mode: args.mode(),
                    make_parents: args.parents,
                })
                .await?;
            if json {
                emit(json!({ "path": created.path, "stat": stat_json(&created.stat) }))
            } else {
                emit(created.path)
            }
        }
        Command::Get { path } => {
            let (data, stat) = client.get_data(&path).await?;
            let (shown, encoding) = show_data(&data);
            if json {
                emit(json!({
                    "path": path,
                    "data": shown,
                    "encoding": encoding,
                    "stat": stat_json(&stat),
                }))
            } else {
                emit(shown)
            }
        }
        Command::Set {
            path,
            data,
            version,
        } => {
            let stat = client.set_data(&path, data.into_bytes(), version).await?;
            if json {
                emit(json!({ "path": path, "stat": stat_json(&stat) }))
            } else {
                emit(stat_lines(&stat))
            }
        }
        Command::Stat { path } => match client.exists(&path).await? {
            Some(stat) if json => emit(json!({ "path": path, "stat": stat_json(&stat) })),
            Some(stat) => emit(stat_lines(&stat)),
            None => Err(Error::Server(corral_client::ErrorInfo::new(
                ErrorCode::NoNode,
                format!("no node at {path}"),
            ))),
        },
        Command::Ls { path, long } => list(client, &path, long, json).await,
        Command::Rm {
            path,
            version,
            recursive,
        } => {
            if recursive {
                delete_descendants(client, &path).await?;
            }
            client.delete(&path, version).await?;
            if json {
                emit(json!({ "deleted": path }))
            } else {
                Ok(())
            }
        }
        Command::Watch {
            path,
            recursive,
            count,
        } => watch(client, &path, recursive, count, json).await,
    }
}

async fn list(client: &Client, path: &str, long: bool, json: bool) -> Result<(), Error> {
    let children = client.get_children(path).await?;
    if !long {
        return if json {
            emit(json!({ "path": path, "children": children }))
        } else {
            for name in children {
                emit(name)?;
            }
            Ok(())
        };
    }
    let mut rows = Vec::with_capacity(children.len());
    for name in children {
        let child = corral_client::path::join(path, &name);
        // A child deleted since the listing is simply not shown.
        if let Some(stat) = client.exists(&child).await? {
            rows.push((name, stat));
        }
    }
    if json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|(name, stat)| json!({ "name": name, "stat": stat_json(stat) }))
            .collect();
        return emit(json!({ "path": path, "children": rows }));
    }
    for (name, stat) in rows {
        let kind = if stat.ephemeral_owner != 0 {
            format!("e:{:#x}", stat.ephemeral_owner)
        } else {
            "-".to_string()
        };
        emit(format_args!(
            "v{:<5} {:>9}B {:>6} {:>20} {:>14} {name}",
            stat.version, stat.data_length, stat.num_children, kind, stat.mtime_ms
        ))?;
    }
    Ok(())
}

/// Deletes everything below `path`, deepest first. Nodes that vanish meanwhile are fine.
async fn delete_descendants(client: &Client, path: &str) -> Result<(), Error> {
    // Depth-first with an explicit stack: (path, children already deleted?).
    let mut stack = vec![(path.to_string(), false)];
    while let Some((node, expanded)) = stack.pop() {
        if expanded {
            if node != path {
                match client.delete(&node, None).await {
                    Err(e) if e.is(ErrorCode::NoNode) => {}
                    other => other?,
                }
            }
            continue;
        }
        let children = match client.get_children(&node).await {
            Err(e) if e.is(ErrorCode::NoNode) => continue,
            other => other?,
        };
        stack.push((node.clone(), true));
        for name in children {
            stack.push((corral_client::path::join(&node, &name), false));
        }
    }
    Ok(())
}

async fn watch(
    client: &Client,
    path: &str,
    recursive: bool,
    count: Option<u64>,
    json: bool,
) -> Result<(), Error> {
    let mode = if recursive {
        AddWatchMode::PersistentRecursive
    } else {
        AddWatchMode::Persistent
    };
    let mut events = client.add_watch(path, mode).await?;
    let mut seen = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while count.is_none_or(|limit| seen < limit) {
        let item = tokio::select! {
            _ = &mut ctrl_c => break,
            item = events.recv() => item,
        };
        match item {
            None => break,
            Some(Err(Error::Lagged { skipped })) => {
                eprintln!("corralctl: {skipped} events were dropped (output too slow)");
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(event)) => {
                seen += 1;
                if json {
                    emit(event_json(&event))?;
                } else {
                    emit(format_args!(
                        "{:?} {} zxid={}",
                        event.kind, event.path, event.zxid
                    ))?;
                }
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corralctl: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
            Command::Create(args) => {
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
    fn data_display() {
        assert_eq!(show_data(b"hello"), ("hello".to_string(), "utf8"));
        assert_eq!(
            show_data(&[0xff, 0x00, 0x10]),
            ("ff0010".to_string(), "hex")
        );
    }
}
