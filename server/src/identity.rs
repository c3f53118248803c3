//! The identity of a cluster member's data: which node of which cluster its Paxos state
//! belongs to, recorded in the Paxos directory and checked at every start.
//!
//! A member's Paxos state is its promises and acceptances. Started under another node id
//! (two hosts' configurations swapped, a directory copied to the wrong host) it would
//! vote as that node with this one's memory: the real node's promises would be forgotten
//! and this one's counted twice, and two different values could be chosen for one log
//! index. Started in another cluster (a directory of cluster A under cluster B's
//! configuration), it would offer A's log to B. etcd (the member id in its WAL) and
//! ZooKeeper (`myid` in the data directory) refuse both; so does corral.
//!
//! The file is written durably (a temporary file, fsynced, renamed, directory fsynced)
//! the first time a node starts as a member, including after a wiped directory or a
//! restore, which start without it. A directory from before this file adopts the
//! configured identity. A mismatch stops the node with an error that says what to do.

use crate::disk::Disk;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The file in the Paxos directory that holds the identity.
pub const IDENTITY_FILE: &str = "member";

/// Written first under this name, then renamed to [`IDENTITY_FILE`].
const IDENTITY_TEMP: &str = "member.tmp";

/// Which member of which cluster a data directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberIdentity {
    /// The node id (`node_id`).
    pub node_id: u64,
    /// The cluster id (`cluster_id`).
    pub cluster_id: u64,
}

/// Why a data directory cannot be started as the configured member.
#[derive(Debug)]
pub enum IdentityError {
    /// The directory belongs to another node or another cluster.
    Mismatch {
        path: PathBuf,
        recorded: MemberIdentity,
        configured: MemberIdentity,
    },
    /// The identity file cannot be read as one.
    Malformed { path: PathBuf, reason: String },
    /// Reading or writing it failed.
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Mismatch {
                path,
                recorded,
                configured,
            } => write!(
                f,
                "the data directory holds the Paxos state of node {} of cluster {} ({}), \
                 but this node is configured as node {} of cluster {}: a member's promises \
                 and acceptances are its own, and started as another member it could let \
                 two different values be chosen. Start every node with its own data \
                 directory; to replace a node, start it with an empty data directory (it \
                 joins and catches up). If the cluster id of every node was changed on \
                 purpose, remove {} on each node before starting it",
                recorded.node_id,
                recorded.cluster_id,
                path.display(),
                configured.node_id,
                configured.cluster_id,
                path.display()
            ),
            IdentityError::Malformed { path, reason } => write!(
                f,
                "{}: not a member identity ({reason}); it records which node of which \
                 cluster this data directory belongs to: fix it, or remove it to record \
                 the configured one again",
                path.display()
            ),
            IdentityError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for IdentityError {}

/// Checks the identity recorded in the Paxos directory `dir` against `configured`.
/// `Ok(true)`: recorded and the same; `Ok(false)`: none recorded yet (a new, wiped or
/// restored directory, or one from before the file).
pub fn check(disk: &Disk, dir: &Path, configured: MemberIdentity) -> Result<bool, IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    if !disk.exists(&path) {
        return Ok(false);
    }
    let bytes = disk.read(&path).map_err(|source| IdentityError::Io {
        path: path.clone(),
        source,
    })?;
    let recorded = parse(&bytes).map_err(|reason| IdentityError::Malformed {
        path: path.clone(),
        reason,
    })?;
    if recorded == configured {
        Ok(true)
    } else {
        Err(IdentityError::Mismatch {
            path,
            recorded,
            configured,
        })
    }
}

/// Records `identity` in the Paxos directory `dir` (which exists), durably.
pub fn record(disk: &Disk, dir: &Path, identity: MemberIdentity) -> Result<(), IdentityError> {
    let temp = dir.join(IDENTITY_TEMP);
    let path = dir.join(IDENTITY_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { path, source }
    };
    let mut file = disk.create_truncate(&temp).map_err(io(&temp))?;
    file.write_all(render(identity).as_bytes())
        .map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    drop(file);
    disk.rename(&temp, &path).map_err(io(&path))?;
    disk.sync_dir(dir).map_err(io(dir))
}

fn render(identity: MemberIdentity) -> String {
    format!(
        "# The cluster member this data directory belongs to: corral refuses to start it\n\
         # as another node or in another cluster.\n\
         node_id = {}\n\
         cluster_id = {}\n",
        identity.node_id, identity.cluster_id
    )
}

fn parse(bytes: &[u8]) -> Result<MemberIdentity, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let (mut node_id, mut cluster_id) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("{line:?} is not `key = value`"));
        };
        let slot = match key.trim() {
            "node_id" => &mut node_id,
            "cluster_id" => &mut cluster_id,
            other => return Err(format!("unknown key {other:?}")),
        };
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{line:?}: not a number"))?;
        if slot.replace(value).is_some() {
            return Err(format!("{} given twice", key.trim()));
        }
    }
    match (node_id, cluster_id) {
        (Some(node_id), Some(cluster_id)) => Ok(MemberIdentity {
            node_id,
            cluster_id,
        }),
        _ => Err("node_id and cluster_id are both required".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: MemberIdentity = MemberIdentity {
        node_id: 1,
        cluster_id: 7,
    };

    #[test]
    fn a_directory_records_its_member_once_and_refuses_any_other() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let disk = Disk::Real;
        assert!(!check(&disk, dir.path(), ONE).expect("nothing recorded"));
        record(&disk, dir.path(), ONE).expect("record");
        assert!(check(&disk, dir.path(), ONE).expect("the same member"));
        assert!(!dir.path().join(IDENTITY_TEMP).exists());
        for other in [
            MemberIdentity { node_id: 2, ..ONE },
            MemberIdentity {
                cluster_id: 8,
                ..ONE
            },
        ] {
            let e = check(&disk, dir.path(), other).expect_err("another member");
            assert!(
                matches!(e, IdentityError::Mismatch { recorded, configured, .. }
                if recorded == ONE && configured == other)
            );
            let message = e.to_string();
            assert!(
                message.contains("node 1 of cluster 7")
                    && message.contains(&format!(
                        "node {} of cluster {}",
                        other.node_id, other.cluster_id
                    )),
                "{message}"
            );
        }
    }

    #[test]
    fn a_malformed_identity_is_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let disk = Disk::Real;
        for (text, why) in [
            (&b"node_id = 1\n"[..], "both required"),
            (b"node_id = 1\ncluster_id = x\n", "not a number"),
            (b"node_id = 1\nnode_id = 2\ncluster_id = 7\n", "twice"),
            (b"node_id: 1\n", "key = value"),
            (
                b"node_id = 1\ncluster_id = 7\nrole = leader\n",
                "unknown key",
            ),
            (b"\xff\xfe", "UTF-8"),
        ] {
            std::fs::write(dir.path().join(IDENTITY_FILE), text).expect("write");
            let e = check(&disk, dir.path(), ONE).expect_err("malformed");
            assert!(
                matches!(e, IdentityError::Malformed { .. }) && e.to_string().contains(why),
                "{e}"
            );
        }
        // Comments and blank lines are fine; so is the rendered form.
        std::fs::write(
            dir.path().join(IDENTITY_FILE),
            "\n# hand-written\n  cluster_id=7\nnode_id =1\n",
        )
        .expect("write");
        assert!(check(&disk, dir.path(), ONE).expect("read"));
        assert_eq!(parse(render(ONE).as_bytes()), Ok(ONE));
    }
}
