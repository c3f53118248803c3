//! The node commands: `create`, `get`, `set`, `ls`, `stat`, `rm`, `watch`.

use crate::{data, emit};
use clap::{Args, Subcommand};
use corral_client::{
    AddWatchMode, Client, CreateMode, CreateRequest, Error, ErrorCode, Stat, WatchEvent,
};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Create a node and print its actual path.
    ///
    /// The data is the DATA argument, or the bytes of a file with -f FILE (-f - reads
    /// stdin); empty if neither is given.
    ///
    /// An ephemeral node is deleted when corralctl's session ends, that is, as soon as
    /// this command exits: use it to test, not to register anything.
    #[command(after_help = "Examples:\n  corralctl create /app \"hello\"\n  \
                            corralctl create /app/logo -f logo.png\n  \
                            curl -s https://example.com/cfg | corralctl create /app/cfg -f -")]
    Create(CreateArgs),
    /// Print a node's data (as UTF-8 when valid, else as hex), or with --raw its bytes
    /// as they are.
    Get {
        /// The node.
        path: String,
        /// Write the data's bytes to stdout unchanged: no hex, no newline added (for
        /// binary data, or to save a node to a file: `get --raw /n > FILE`).
        #[arg(long, conflicts_with = "json")]
        raw: bool,
    },
    /// Replace a node's data and print its new stat.
    ///
    /// The data is the DATA argument, or the bytes of a file with -f FILE (-f - reads
    /// stdin).
    #[command(after_help = "Examples:\n  corralctl set /app/config \"v2\"\n  \
                            corralctl set /app/config -f config.json\n  \
                            gzip -c big.txt | corralctl set /app/blob -f -")]
    Set {
        /// The node.
        path: String,
        /// The new data (UTF-8 text; see -f for a file, stdin or binary data).
        #[arg(required_unless_present = "file")]
        data: Option<String>,
        #[arg(short = 'f', long = "file", visible_alias = "data-file", value_name = "FILE",
              conflicts_with = "data", help = data::FILE_HELP)]
        file: Option<PathBuf>,
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
        /// Only if the node is at this version (with -r, checked before the descendants
        /// are deleted, and again when the node itself is).
        #[arg(long)]
        version: Option<u32>,
        /// Delete the node's descendants first (not for the root, which cannot be
        /// deleted: nothing is).
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
pub struct CreateArgs {
    /// The node's path (for --sequential: the prefix of its name).
    pub path: String,
    /// Initial data (UTF-8 text; see -f for a file, stdin or binary data); empty if
    /// omitted.
    pub data: Option<String>,
    #[arg(short = 'f', long = "file", visible_alias = "data-file", value_name = "FILE",
          conflicts_with = "data", help = data::FILE_HELP)]
    pub file: Option<PathBuf>,
    /// Delete the node when this session ends (that is, when corralctl exits).
    #[arg(long, conflicts_with = "container")]
    pub ephemeral: bool,
    /// Append a per-parent sequence number to the name.
    #[arg(long, conflicts_with = "container")]
    pub sequential: bool,
    /// Create a container: deleted by the server once its last child is deleted.
    #[arg(long)]
    pub container: bool,
    /// Create missing parents.
    #[arg(short, long)]
    pub parents: bool,
}

impl CreateArgs {
    pub fn mode(&self) -> CreateMode {
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
pub fn show_data(data: &[u8]) -> (String, &'static str) {
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

impl NodeCommand {
    /// The path the command works on, as it must validate (a sequential create's
    /// prefix is checked with a sequence number appended, as the client does).
    pub fn path_to_check(&self) -> String {
        match self {
            NodeCommand::Create(args) if args.sequential => format!("{}0000000000", args.path),
            NodeCommand::Create(CreateArgs { path, .. })
            | NodeCommand::Get { path, .. }
            | NodeCommand::Set { path, .. }
            | NodeCommand::Ls { path, .. }
            | NodeCommand::Stat { path }
            | NodeCommand::Rm { path, .. }
            | NodeCommand::Watch { path, .. } => path.clone(),
        }
    }

    /// The command's data (from its argument, a file or stdin), read before corralctl
    /// connects; `None` for a command that takes none, or a create without data.
    pub fn load_data(&self, max: usize) -> Result<Option<Vec<u8>>, Error> {
        match self {
            NodeCommand::Create(args) => {
                data::load(args.data.as_deref(), args.file.as_deref(), max)
            }
            NodeCommand::Set { data, file, .. } => {
                data::load(data.as_deref(), file.as_deref(), max)
            }
            _ => Ok(None),
        }
    }
}

/// Runs `command`; `data` is what [`NodeCommand::load_data`] read for it.
pub async fn execute(
    client: &Client,
    command: NodeCommand,
    data: Option<Vec<u8>>,
    json: bool,
) -> Result<(), Error> {
    match command {
        NodeCommand::Create(args) => {
            let data = data.unwrap_or_default();
            let len = data.len();
            let created = client
                .create_with(CreateRequest {
                    path: args.path.clone(),
                    data,
                    mode: args.mode(),
                    make_parents: args.parents,
                })
                .await
                .map_err(|e| data::explain(e, len))?;
            if json {
                emit(json!({ "path": created.path, "stat": stat_json(&created.stat) }))
            } else {
                emit(created.path)
            }
        }
        NodeCommand::Get { path, raw } => {
            let (data, stat) = client.get_data(&path).await?;
            if raw {
                return write_out(&mut tokio::io::stdout(), data).await;
            }
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
        NodeCommand::Set { path, version, .. } => {
            let data = data.unwrap_or_default();
            let len = data.len();
            let stat = client
                .set_data(&path, data, version)
                .await
                .map_err(|e| data::explain(e, len))?;
            if json {
                emit(json!({ "path": path, "stat": stat_json(&stat) }))
            } else {
                emit(stat_lines(&stat))
            }
        }
        NodeCommand::Stat { path } => match client.exists(&path).await? {
            Some(stat) if json => emit(json!({ "path": path, "stat": stat_json(&stat) })),
            Some(stat) => emit(stat_lines(&stat)),
            None => Err(Error::Server(corral_client::ErrorInfo::new(
                ErrorCode::NoNode,
                format!("no node at {path}"),
            ))),
        },
        NodeCommand::Ls { path, long } => list(client, &path, long, json).await,
        NodeCommand::Rm {
            path,
            version,
            recursive,
        } => {
            if recursive {
                check_deletable(client, &path, version).await?;
                delete_descendants(client, &path).await?;
            }
            client.delete(&path, version).await?;
            if json {
                emit(json!({ "deleted": path }))
            } else {
                Ok(())
            }
        }
        NodeCommand::Watch {
            path,
            recursive,
            count,
        } => watch(client, &path, recursive, count, json).await,
    }
}

/// Names asked for per request: a listing of any size goes page by page.
const PAGE_NAMES: u32 = 1000;

/// Prints the children as their pages arrive (all at once with `--json`), a page per
/// write through [`write_out`]: a reader that stops reading (`ls | less`, paused) used
/// to stop the session's keepalives too, and the listing failed at its next page with
/// "session expired".
async fn list(client: &Client, path: &str, long: bool, json: bool) -> Result<(), Error> {
    use std::fmt::Write as _;
    let mut pages = client.children_pages(path, PAGE_NAMES);
    let mut rows: Vec<Value> = Vec::new();
    let mut out = tokio::io::stdout();
    while let Some(page) = pages.next_page().await? {
        let mut text = String::new();
        if !long {
            for name in page.children {
                if json {
                    rows.push(Value::String(name));
                } else {
                    text.push_str(&name);
                    text.push('\n');
                }
            }
            write_out(&mut out, text).await?;
            continue;
        }
        // The page's stats are asked for together (pipelined on the connection).
        let stats = page.children.iter().map(|name| {
            let child = corral_client::path::join(path, name);
            async move { client.exists(&child).await }
        });
        let stats = futures::future::join_all(stats).await;
        for (name, stat) in page.children.into_iter().zip(stats) {
            // A child deleted since the listing is simply not shown.
            let Some(stat) = stat? else {
                continue;
            };
            if json {
                rows.push(json!({ "name": name, "stat": stat_json(&stat) }));
                continue;
            }
            let kind = if stat.ephemeral_owner != 0 {
                format!("e:{:#x}", stat.ephemeral_owner)
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                text,
                "v{:<5} {:>9}B {:>6} {:>20} {:>14} {name}",
                stat.version, stat.data_length, stat.num_children, kind, stat.mtime_ms
            );
        }
        write_out(&mut out, text).await?;
    }
    if pages.changed() {
        eprintln!("note: children of {path} were added or removed while they were listed");
    }
    if json {
        emit(json!({ "path": path, "children": rows }))
    } else {
        Ok(())
    }
}

/// Fails, before anything is deleted, a recursive delete whose last step (the delete
/// of `path` itself) is bound to fail: of the root, or at a version the node is not
/// at. `rm -r /` and `rm -r --version` of a stale version used to delete every
/// descendant first and only then fail, so a command that reported failure had emptied
/// the tree. (A change between this check and the last step still fails it.)
async fn check_deletable(client: &Client, path: &str, version: Option<u32>) -> Result<(), Error> {
    if path == "/" {
        return Err(Error::Server(corral_client::ErrorInfo::new(
            ErrorCode::BadArguments,
            "the root / cannot be deleted",
        )));
    }
    let Some(expected) = version else {
        return Ok(());
    };
    match client.exists(path).await? {
        Some(stat) if stat.version != expected => {
            Err(Error::Server(corral_client::ErrorInfo::new(
                ErrorCode::BadVersion,
                format!("version of {path} is {}, expected {expected}", stat.version),
            )))
        }
        // Missing: the delete says so, after an empty walk.
        _ => Ok(()),
    }
}

/// Deletes everything below `path`, deepest first. Nodes that vanish meanwhile are fine.
///
/// The children of each page are deleted together (pipelined on the connection); a child
/// that still has children of its own (`NotEmpty`) is emptied the same way first.
async fn delete_descendants(client: &Client, path: &str) -> Result<(), Error> {
    // Depth-first with an explicit stack: (path, children already deleted?).
    let mut stack = vec![(path.to_string(), false)];
    while let Some((node, emptied)) = stack.pop() {
        if emptied {
            if node != path {
                match client.delete(&node, None).await {
                    Err(e) if e.is(ErrorCode::NoNode) => {}
                    other => other?,
                }
            }
            continue;
        }
        stack.push((node.clone(), true));
        let mut pages = client.children_pages(&node, PAGE_NAMES);
        loop {
            let page = match pages.next_page().await {
                Err(e) if e.is(ErrorCode::NoNode) => break,
                Ok(None) => break,
                Ok(Some(page)) => page,
                Err(e) => return Err(e),
            };
            let children: Vec<String> = page
                .children
                .iter()
                .map(|name| corral_client::path::join(&node, name))
                .collect();
            let deletes = children.iter().map(|child| client.delete(child, None));
            let results = futures::future::join_all(deletes).await;
            for (child, result) in children.into_iter().zip(results) {
                match result {
                    Ok(()) => {}
                    Err(e) if e.is(ErrorCode::NoNode) => {}
                    Err(e) if e.is(ErrorCode::NotEmpty) => stack.push((child, false)),
                    Err(e) => return Err(e),
                }
            }
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
    let mut out = tokio::io::stdout();
    while count.is_none_or(|limit| seen < limit) {
        let item = tokio::select! {
            _ = &mut ctrl_c => break,
            item = events.recv() => item,
        };
        let mut line = match item {
            None => break,
            Some(Err(Error::Lagged { skipped })) => {
                eprintln!("corralctl: {skipped} events were dropped (output too slow)");
                continue;
            }
            Some(Err(Error::WatchResumed {
                since_zxid,
                until_zxid,
            })) => {
                eprintln!(
                    "corralctl: reconnected; changes after zxid {since_zxid} up to \
                     {until_zxid} fired no event"
                );
                continue;
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(event)) => {
                seen += 1;
                if json {
                    event_json(&event).to_string()
                } else {
                    format!("{:?} {} zxid={}", event.kind, event.path, event.zxid)
                }
            }
        };
        // Ctrl-C ends the watch even while a reader that stopped reading holds the
        // write up.
        line.push('\n');
        tokio::select! {
            _ = &mut ctrl_c => break,
            written = write_out(&mut out, line) => written?,
        }
    }
    Ok(())
}

/// Writes `text` (or raw bytes) to stdout, and flushes it, without blocking
/// corralctl's only thread: tokio's stdout writes on a blocking thread. A reader that stops reading (`watch |
/// less`, paused) fills the pipe, and a write on the runtime's thread then stopped
/// everything else, the session's keepalives included: the session expired and the
/// watch died (or `ls` failed at its next page). Now the session lives on; a watch's
/// events wait in its stream's buffer, and past it are reported as dropped.
async fn write_out(out: &mut tokio::io::Stdout, text: impl AsRef<[u8]>) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt;
    let text = text.as_ref();
    if text.is_empty() {
        return Ok(());
    }
    out.write_all(text).await?;
    out.flush().await?;
    Ok(())
}
