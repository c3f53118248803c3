//! Server configuration: command-line flags, an optional TOML file, and defaults.
//!
//! Precedence: a flag given on the command line, else the key in the `--config` file,
//! else the default. Every value is validated before the server starts, with a message
//! that names the setting.

use clap::Parser;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The default client port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2281";

/// Defines the config fields once: the CLI flag struct, the TOML struct (all optional,
/// unknown keys rejected), the resolved `Config`, and the merge.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ;)*) => {
        /// corral: a distributed lock and coordination service (server).
        ///
        /// With no arguments, starts a single node listening on 127.0.0.1:2281 with its
        /// data in ./corral-data.
        #[derive(Debug, Parser)]
        #[command(name = "corral", version, about, long_about = None)]
        pub struct Cli {
            /// TOML file with settings (keys as the long flags, with '_' for '-').
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            /// Log format: text or json.
            #[arg(long, value_name = "FORMAT")]
            pub log_format: Option<LogFormat>,
            /// Log filter, e.g. "info" or "corral_server=debug" (overrides RUST_LOG).
            #[arg(long, value_name = "FILTER")]
            pub log: Option<String>,
            $( $(#[doc = $doc])* #[arg(long)] pub $name: Option<$ty>, )*
        }

        /// The settings a TOML config file may hold.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            pub log_format: Option<LogFormat>,
            pub log: Option<String>,
            $( pub $name: Option<$ty>, )*
        }

        /// Resolved settings.
        #[derive(Debug, Clone)]
        pub struct Config {
            pub log_format: LogFormat,
            pub log: Option<String>,
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    log_format: LogFormat::Text,
                    log: None,
                    $( $name: $default, )*
                }
            }
        }

        impl Config {
            fn merge(cli: Cli, file: FileConfig) -> Config {
                let d = Config::default();
                Config {
                    log_format: cli.log_format.or(file.log_format).unwrap_or(d.log_format),
                    log: cli.log.or(file.log).or(d.log),
                    $( $name: cli.$name.or(file.$name).unwrap_or(d.$name), )*
                }
            }
        }
    };
}

settings! {
    /// Address the client listener binds.
    listen: SocketAddr = DEFAULT_LISTEN.parse().expect("valid default address");
    /// Directory of the write-ahead log and snapshots (created if missing).
    data_dir: PathBuf = PathBuf::from("corral-data");
    /// This node's id (1..=N in a cluster).
    node_id: u64 = 1;
    /// The cluster's members as `ID=HOST:PORT` pairs separated by commas, this node
    /// included (the address is the peer port). Empty: a single node.
    peers: String = String::new();
    /// Identifies the cluster; peers with another id are refused.
    cluster_id: u64 = 1;
    /// Time without a leader's heartbeat after which a new leader is elected, in
    /// milliseconds (rounded down to a multiple of tick_ms). A crashed leader is replaced in about 200 ms
    /// whatever this is (its connections are reset, and the followers then run their
    /// rounds at one per tick); a leader cut off without a reset costs two to three of
    /// these. It must exceed the longest stall of a node's core, which grows with the
    /// state (docs/OPERATIONS.md, "State size"), or a stalled leader loses the
    /// leadership. The minimum session TTL must be at least
    /// 1.5 x this value.
    election_timeout_ms: u64 = 1000;
    /// Most messages queued for one peer; more are dropped (the protocol resends).
    peer_queue_messages: usize = 8192;
    /// Largest frame accepted from a client, in bytes.
    max_frame_bytes: usize = corral_protocol::DEFAULT_MAX_FRAME_BYTES;
    /// Largest frame exchanged with a peer, in bytes. A follower that fell behind the
    /// last compaction catches up from one message holding the whole state's image
    /// (about 160 bytes per znode), so this bounds the state a cluster can hold; at most
    /// 4 GiB (a frame's length prefix is 32 bits).
    max_peer_frame_bytes: usize = 1 << 30;
    /// Largest data of one znode, in bytes.
    max_data_bytes: usize = 1 << 20;
    /// Largest the znode tree may grow, in bytes as the node estimates it (every
    /// znode's path and data plus 450 bytes, about what it takes in memory): a write
    /// that would take it past this (a create, a lock, a set to larger data) is refused
    /// with LimitExceeded; reads, deletes and releases go on. In a cluster at most
    /// max_peer_frame_bytes, so a follower can always be caught up with the state's image.
    max_state_bytes: u64 = 1 << 30;
    /// Most client connections at once; more are refused with LimitExceeded.
    max_connections: usize = 10_000;
    /// Most sessions alive at once.
    max_sessions: usize = 100_000;
    /// Most requests queued on one connection.
    max_pending_requests_per_connection: usize = 1024;
    /// Most watches one session may register.
    max_watches_per_session: usize = 100_000;
    /// Most server messages queued for one connection, measured when a round of the node
    /// core first sends to it: a client whose queue is still over this (or over
    /// max_queued_bytes_per_connection) does not read, and is disconnected with
    /// Goodbye(LimitExceeded). The messages of one round (a burst of events from one
    /// entry or request) are always queued whole.
    max_queued_messages_per_connection: usize = 4096;
    /// Most bytes of server messages queued for one connection (as
    /// max_queued_messages_per_connection); at least max_frame_bytes.
    max_queued_bytes_per_connection: usize = 64 << 20;
    /// Longest a write to a client may wait for room in its socket, in milliseconds; a
    /// client that accepts no bytes for this long is disconnected.
    write_stall_timeout_ms: u64 = 10_000;
    /// Smallest session TTL granted, in milliseconds.
    min_session_ttl_ms: u64 = 2_000;
    /// Largest session TTL granted, in milliseconds.
    max_session_ttl_ms: u64 = 120_000;
    /// Interval of the node's clock tick (session expiry resolution), in milliseconds.
    tick_ms: u64 = 50;
    /// Time allowed for a new connection to send its handshake, and then for the node to
    /// answer it (a cluster member with no leader cannot: it refuses with Unavailable), in
    /// milliseconds.
    handshake_timeout_ms: u64 = 5_000;
    /// Take a snapshot (and compact the log) every this many entries.
    snapshot_every_entries: u64 = 100_000;
    /// Take a snapshot (and compact the log) once the entries since the last one reach
    /// this many bytes (0: only every snapshot_every_entries). In a cluster at most an
    /// eighth of max_peer_frame_bytes is used: a follower that fell behind is caught up
    /// with the state's image and the entries past the leader's compaction (up to two of
    /// these intervals), in one message.
    snapshot_every_bytes: u64 = 128 << 20;
    /// Size at which the write-ahead log starts a new segment file, in bytes.
    wal_segment_bytes: u64 = 64 << 20;
    /// fsync the write-ahead log before acknowledging writes. Turning this off loses
    /// acknowledged writes on power failure; only for tests and experiments.
    fsync: bool = true;
    /// Address of the admin HTTP endpoint (/metrics, /health, /ready, /status,
    /// /snapshot); `off` disables it.
    admin_listen: String = crate::admin::DEFAULT_ADMIN_LISTEN.to_string();
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting that cannot work, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads the config file named by `--config` (if any), merges it under the flags,
    /// and validates the result.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                toml::from_str(&text)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?
            }
        };
        let config = Config::merge(cli, file);
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.node_id == 0 {
            return fail("node_id must be at least 1".into());
        }
        if self.max_data_bytes == 0 {
            return fail("max_data_bytes must be positive".into());
        }
        let needed = self.max_data_bytes + 4096;
        if self.max_frame_bytes < needed {
            return fail(format!(
                "max_frame_bytes ({}) must be at least max_data_bytes + 4096 = {needed}, so a \
                 maximal node fits in one frame",
                self.max_frame_bytes
            ));
        }
        if self.max_frame_bytes > corral_protocol::frame::DECODE_LIMIT_BYTES {
            return fail(format!(
                "max_frame_bytes must be at most {} (64 MiB)",
                corral_protocol::frame::DECODE_LIMIT_BYTES
            ));
        }
        let peer_needed = 2 * self.max_frame_bytes;
        if self.max_peer_frame_bytes < peer_needed {
            return fail(format!(
                "max_peer_frame_bytes ({}) must be at least 2 x max_frame_bytes = \
                 {peer_needed}: forwarded client writes go to the leader in batches of up to \
                 half of it, and one client write must fit in a batch",
                self.max_peer_frame_bytes
            ));
        }
        if self.max_peer_frame_bytes > corral_protocol::frame::MAX_PAYLOAD_BYTES {
            return fail(format!(
                "max_peer_frame_bytes must be at most {} (4 GiB - 1)",
                corral_protocol::frame::MAX_PAYLOAD_BYTES
            ));
        }
        if self.max_state_bytes == 0 {
            return fail("max_state_bytes must be positive".into());
        }
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_sessions", self.max_sessions),
            (
                "max_pending_requests_per_connection",
                self.max_pending_requests_per_connection,
            ),
            ("max_watches_per_session", self.max_watches_per_session),
            (
                "max_queued_messages_per_connection",
                self.max_queued_messages_per_connection,
            ),
        ] {
            if v == 0 {
                return fail(format!("{name} must be positive"));
            }
        }
        if self.max_queued_bytes_per_connection < self.max_frame_bytes {
            return fail(format!(
                "max_queued_bytes_per_connection ({}) must be at least max_frame_bytes ({}), \
                 so a maximal response fits in the queue",
                self.max_queued_bytes_per_connection, self.max_frame_bytes
            ));
        }
        if self.write_stall_timeout_ms == 0 {
            return fail("write_stall_timeout_ms must be positive".into());
        }
        if self.tick_ms == 0 || self.tick_ms > 1_000 {
            return fail(format!("tick_ms must be in 1..=1000, not {}", self.tick_ms));
        }
        if self.min_session_ttl_ms < 4 * self.tick_ms {
            return fail(format!(
                "min_session_ttl_ms ({}) must be at least 4 x tick_ms ({})",
                self.min_session_ttl_ms,
                4 * self.tick_ms
            ));
        }
        if self.min_session_ttl_ms > self.max_session_ttl_ms {
            return fail(format!(
                "min_session_ttl_ms ({}) is larger than max_session_ttl_ms ({})",
                self.min_session_ttl_ms, self.max_session_ttl_ms
            ));
        }
        if self.snapshot_every_entries == 0 {
            return fail("snapshot_every_entries must be positive".into());
        }
        if self.wal_segment_bytes < 4096 {
            return fail("wal_segment_bytes must be at least 4096".into());
        }
        let peers = self.peer_map()?;
        if !peers.is_empty() {
            if !peers.contains_key(&self.node_id) {
                return fail(format!(
                    "node_id {} is not one of the peers ({})",
                    self.node_id, self.peers
                ));
            }
            if peers.len() < 2 {
                return fail("a cluster needs at least 2 peers (3 or 5 recommended)".into());
            }
            if self.max_state_bytes > self.max_peer_frame_bytes as u64 {
                return fail(format!(
                    "max_state_bytes ({}) must be at most max_peer_frame_bytes ({}) in a \
                     cluster: a follower that fell behind is caught up with one message \
                     holding the state's image",
                    self.max_state_bytes, self.max_peer_frame_bytes
                ));
            }
            if self.election_timeout_ms < 2 * self.tick_ms {
                return fail(format!(
                    "election_timeout_ms ({}) must be at least 2 x tick_ms ({})",
                    self.election_timeout_ms,
                    2 * self.tick_ms
                ));
            }
            // A session TTL shorter than an election would expire healthy clients on
            // every failover (etcd enforces 1.5x too).
            let min_ttl = self.election_timeout_ms * 3 / 2;
            if self.min_session_ttl_ms < min_ttl {
                return fail(format!(
                    "min_session_ttl_ms ({}) must be at least 1.5 x election_timeout_ms = {min_ttl}",
                    self.min_session_ttl_ms
                ));
            }
        }
        Ok(())
    }

    /// The snapshot (compaction) interval in bytes that applies: `snapshot_every_bytes`,
    /// in a cluster at most an eighth of `max_peer_frame_bytes`; `u64::MAX` when it is 0
    /// (off).
    pub fn effective_snapshot_every_bytes(&self) -> u64 {
        let clustered = self.peer_map().map(|p| !p.is_empty()).unwrap_or(false);
        if self.snapshot_every_bytes == 0 {
            u64::MAX
        } else if clustered {
            self.snapshot_every_bytes
                .min(self.max_peer_frame_bytes as u64 / 8)
                .max(1)
        } else {
            self.snapshot_every_bytes
        }
    }

    /// The cluster members by id (empty for a single node).
    pub fn peer_map(&self) -> Result<BTreeMap<u64, SocketAddr>, ConfigError> {
        let mut map = BTreeMap::new();
        for item in self
            .peers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (id, addr) = item.split_once('=').ok_or_else(|| {
                ConfigError(format!("peers: {item:?} is not of the form ID=HOST:PORT"))
            })?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| ConfigError(format!("peers: {id:?} is not a node id")))?;
            if id == 0 {
                return Err(ConfigError("peers: node ids start at 1".into()));
            }
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|e| ConfigError(format!("peers: {addr:?}: {e}")))?;
            if map.insert(id, addr).is_some() {
                return Err(ConfigError(format!("peers: node {id} is listed twice")));
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("corral").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(cli(&[])).expect("defaults");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.fsync);
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("corral.toml");
        std::fs::write(&path, "tick_ms = 20\nmax_sessions = 7\n").expect("write");
        let p = path.to_str().expect("utf8");
        let c = Config::load(cli(&["--config", p, "--tick-ms", "30"])).expect("load");
        assert_eq!(c.tick_ms, 30);
        assert_eq!(c.max_sessions, 7);
        assert_eq!(c.max_connections, Config::default().max_connections);
    }

    #[test]
    fn unknown_key_and_bad_values_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("corral.toml");
        std::fs::write(&path, "tick_msec = 20\n").expect("write");
        let err = Config::load(cli(&["--config", path.to_str().expect("utf8")]))
            .expect_err("unknown key");
        assert!(err.to_string().contains("tick_msec"), "{err}");
        let err = Config::load(cli(&["--max-frame-bytes", "1000"])).expect_err("small frame");
        assert!(err.to_string().contains("max_frame_bytes"), "{err}");
        let err = Config::load(cli(&["--min-session-ttl-ms", "10"])).expect_err("small ttl");
        assert!(err.to_string().contains("min_session_ttl_ms"), "{err}");
        let err = Config::load(cli(&["--max-peer-frame-bytes", "2000000"]))
            .expect_err("peer frames smaller than two client frames");
        assert!(err.to_string().contains("max_peer_frame_bytes"), "{err}");
        let err = Config::load(cli(&["--max-queued-bytes-per-connection", "1000"]))
            .expect_err("a queue smaller than one frame");
        assert!(
            err.to_string().contains("max_queued_bytes_per_connection"),
            "{err}"
        );
        let err = Config::load(cli(&["--write-stall-timeout-ms", "0"])).expect_err("no stall");
        assert!(err.to_string().contains("write_stall_timeout_ms"), "{err}");
        let err = Config::load(cli(&["--max-peer-frame-bytes", "5000000000"]))
            .expect_err("peer frames over the 32-bit length prefix");
        assert!(err.to_string().contains("max_peer_frame_bytes"), "{err}");
        let err = Config::load(cli(&["--max-state-bytes", "0"])).expect_err("no state");
        assert!(err.to_string().contains("max_state_bytes"), "{err}");
        let peers = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
        let err = Config::load(cli(&["--peers", peers, "--max-state-bytes", "2000000000"]))
            .expect_err("a cluster's state larger than a peer frame");
        assert!(err.to_string().contains("max_state_bytes"), "{err}");
        // A single node's state is not sent to peers.
        Config::load(cli(&["--max-state-bytes", "8000000000"])).expect("single node");
    }

    /// A cluster compacts at most every eighth of a peer frame of entries, so that the
    /// entries a catch-up carries after the image (two intervals, up to four when the
    /// leader skips compactions for want of its own image) fit a frame.
    #[test]
    fn a_clusters_byte_interval_is_at_most_an_eighth_of_a_peer_frame() {
        let peers = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
        let frame = "--max-peer-frame-bytes=16777216";
        let c = Config::load(cli(&["--peers", peers, frame, "--max-state-bytes=1000000"]))
            .expect("cluster");
        assert_eq!(c.snapshot_every_bytes, 128 << 20);
        assert_eq!(c.effective_snapshot_every_bytes(), 2 << 20);
        let off = "--snapshot-every-bytes=0";
        let c = Config::load(cli(&[
            "--peers",
            peers,
            frame,
            "--max-state-bytes=1000000",
            off,
        ]))
        .expect("cluster");
        assert_eq!(c.effective_snapshot_every_bytes(), u64::MAX, "off");
        let c = Config::load(cli(&[frame])).expect("single node");
        assert_eq!(c.effective_snapshot_every_bytes(), 128 << 20, "not clamped");
    }
}
