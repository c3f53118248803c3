//! Containers the simulated clients make themselves, and the check that the decided log
//! reaps them as PROTOCOL.md says (`CreateMode::Container`: "deleted by the server once
//! its last child is deleted"; ARCHITECTURE.md: in the same entry, cascading upward
//! through container parents).
//!
//! Clients (`SimConfig::container_weight`) create containers under [`BOX`]: `/box`
//! itself, `/box/b0` and `/box/b1` (with `make_parents`, so `/box` comes as a container
//! too), and `/box/bN/d` under them; and their own ephemeral leaves `c<client>-<k>` in
//! any of the `bN` and `d` containers. A container's name never starts with `c`, a
//! leaf's always does. Clients also delete leaves and containers, swap one leaf for
//! another in a multi (the container must stay), set a container's data (alone, or in
//! a multi that may empty it and check its version), list the containers' children,
//! read their data and stats and ask whether they exist (checked by `sim/reads.rs`
//! against [`ChangeLog`]), with one-shot watches, and add persistent watches, plain
//! or recursive, on `/box` and the `bN` (checked by `sim/watch.rs`: reaping fires them
//! like any deletion).
//!
//! [`check`] looks at each entry's changes, from its first report:
//!
//! - **Reaped when emptied**: a container that lost a child in the entry and has no
//!   child after it is deleted in the same entry.
//! - **Only when emptied**: a container deleted in an entry lost a child in it, or the
//!   entry deletes it by name (a `Delete`, alone or in a multi).
//!
//! Session ends (close, expiry) delete leaves too, so reaping runs under every fault.

use super::rng::SimRng;
use super::watch::ChangeLog;
use crate::machine::{Change, Entry};
use corral_protocol::path::{name, parent};
use corral_protocol::{CreateMode, CreateRequest, EventKind, MultiOp, Op};

/// Where the simulated clients' containers live.
pub const BOX: &str = "/box";

/// Whether `path` is one of the simulated containers (`/box` or under it, with a name
/// that does not start with `c`).
pub fn is_container(path: &str) -> bool {
    let inside = path
        .strip_prefix(BOX)
        .is_some_and(|r| r.is_empty() || r.starts_with('/'));
    inside && !name(path).starts_with('c')
}

fn create(path: &str, mode: CreateMode) -> CreateRequest {
    CreateRequest {
        path: path.to_string(),
        data: Vec::new(),
        mode,
        make_parents: mode == CreateMode::Container,
    }
}

/// A container task of client `client`, drawn from `rng` alone, on `/box/b0` or
/// `/box/b1`, or the `d` under it, and the client's leaves `c<client>-0` and `-1` there:
/// create the container (with its missing parents, as containers); create a leaf
/// (`NoNode` if the container is missing); create both in one multi; delete a leaf;
/// swap one leaf for the other in a multi (the container keeps a child); delete the
/// container (`NotEmpty` while it has children); a multi that deletes a leaf and then
/// fails (the delete is undone, nothing is reaped); set the container's data, at any
/// version or an expected one; a multi that deletes a leaf, sets the container's data
/// and checks its version (reaped after its data changed if the leaf was its last
/// child and the check holds; else nothing happened); or a read (`watch`: the read may
/// set a watch): the children of `/box` or of the container, a page of them, whether
/// the container or a leaf exists, or its data. Also returns whether the task is a
/// read.
pub fn task(rng: &mut SimRng, client: usize, watch: bool) -> (Op, bool) {
    let b = format!("{BOX}/b{}", rng.range(0, 2));
    let dir = if rng.chance(333) { format!("{b}/d") } else { b };
    let k = rng.range(0, 2);
    let leaf = format!("{dir}/c{client}-{k}");
    let delete_leaf = MultiOp::Delete {
        path: leaf.clone(),
        version: None,
    };
    let write = match rng.range(0, 17) {
        0 | 1 => Op::Create(create(&dir, CreateMode::Container)),
        2..=4 => Op::Create(create(&leaf, CreateMode::Ephemeral)),
        5 => Op::Multi(vec![
            MultiOp::Create(create(&dir, CreateMode::Container)),
            MultiOp::Create(create(&leaf, CreateMode::Ephemeral)),
        ]),
        6 | 7 => Op::Delete {
            path: leaf,
            version: None,
        },
        8 => {
            let other = format!("{dir}/c{client}-{}", 1 - k);
            Op::Multi(vec![
                delete_leaf,
                MultiOp::Create(create(&other, CreateMode::Ephemeral)),
            ])
        }
        9 => Op::Delete {
            path: dir,
            version: None,
        },
        10 => Op::Multi(vec![
            delete_leaf,
            MultiOp::Check {
                path: dir,
                version: u32::MAX,
            },
        ]),
        11 => Op::SetData {
            path: dir,
            data: vec![k as u8],
            version: rng.chance(500).then(|| rng.range(0, 3) as u32),
        },
        12 => Op::Multi(vec![
            delete_leaf,
            MultiOp::SetData {
                path: dir.clone(),
                data: vec![k as u8],
                version: None,
            },
            MultiOp::Check {
                path: dir,
                version: rng.range(0, 3) as u32,
            },
        ]),
        _ => {
            let watch = watch && rng.chance(500);
            let read = match rng.range(0, 6) {
                0 => Op::GetChildren {
                    path: if rng.chance(300) {
                        BOX.to_string()
                    } else {
                        dir
                    },
                    watch,
                },
                1 => Op::GetChildrenPage {
                    path: dir,
                    after: if rng.chance(500) {
                        String::new()
                    } else {
                        format!("c{client}-0")
                    },
                    max_names: rng.range_incl(1, 2) as u32,
                    max_bytes: 1 << 20,
                },
                2 => Op::Exists { path: dir, watch },
                3 => Op::Exists { path: leaf, watch },
                4 => Op::GetData { path: dir, watch },
                _ => Op::GetData { path: leaf, watch },
            };
            return (read, true);
        }
    };
    (write, false)
}

/// A container for a persistent watch, drawn from `rng`: `/box` or one of `/box/b0`,
/// `/box/b1`, and whether the watch is recursive.
pub fn watched(rng: &mut SimRng) -> (String, bool) {
    let path = if rng.chance(500) {
        BOX.to_string()
    } else {
        format!("{BOX}/b{}", rng.range(0, 2))
    };
    (path, rng.chance(500))
}

/// Whether `entry` deletes `path` by name.
fn deletes(entry: &Entry, path: &str) -> bool {
    let Some((_, _, op)) = entry.body.client_write() else {
        return false;
    };
    match op {
        Op::Delete { path: p, .. } => p == path,
        Op::Multi(ops) => ops
            .iter()
            .any(|o| matches!(o, MultiOp::Delete { path: p, .. } if p == path)),
        _ => false,
    }
}

/// Checks the container changes of `entry`, decided at `zxid`, which made `changes`
/// (already recorded in `log`). Returns how many containers it reaped, or what is wrong.
pub fn check(zxid: u64, entry: &Entry, changes: &[Change], log: &ChangeLog) -> Result<u64, String> {
    let deleted = |path: &str| {
        changes
            .iter()
            .any(|c| c.kind == EventKind::NodeDeleted && c.path == path)
    };
    let lost_child = |container: &str| {
        changes
            .iter()
            .any(|c| c.kind == EventKind::NodeDeleted && parent(&c.path) == Some(container))
    };
    let mut reaped = 0;
    for c in changes.iter().filter(|c| c.kind == EventKind::NodeDeleted) {
        let path = c.path.as_str();
        if is_container(path) && !deletes(entry, path) {
            if !lost_child(path) {
                return Err(format!(
                    "container {path} deleted at zxid {zxid}, which neither deleted it nor \
                     any child of it"
                ));
            }
            reaped += 1;
        }
        let Some(container) = parent(path).filter(|p| is_container(p)) else {
            continue;
        };
        if !deleted(container)
            && log.complete_to(zxid)
            && log.children_at(container, zxid).is_empty()
        {
            return Err(format!(
                "container {container} lost its last child {path} at zxid {zxid} and stayed"
            ));
        }
    }
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::super::watch::change;
    use super::*;
    use crate::machine::EntryBody;
    use corral_protocol::EventKind::{NodeChildrenChanged, NodeCreated, NodeDeleted};

    fn write(op: Op) -> Entry {
        Entry::new(
            0,
            EntryBody::Write {
                session_id: 1,
                xid: 1,
                op,
            },
        )
    }

    fn delete(path: &str) -> Op {
        Op::Delete {
            path: path.to_string(),
            version: None,
        }
    }

    /// `/box/b0/d` holds `c1-0`; `/box/b1` holds `c2-0` and `c2-1`.
    fn log() -> ChangeLog {
        let mut log = ChangeLog::default();
        log.record(
            1,
            &[change(NodeCreated, "/box"), change(NodeCreated, "/box/b0")],
        );
        log.record(2, &[change(NodeCreated, "/box/b0/d")]);
        log.record(3, &[change(NodeCreated, "/box/b0/d/c1-0")]);
        log.record(4, &[change(NodeCreated, "/box/b1")]);
        log.record(5, &[change(NodeCreated, "/box/b1/c2-0")]);
        log.record(6, &[change(NodeCreated, "/box/b1/c2-1")]);
        log
    }

    fn checked(zxid: u64, entry: &Entry, changes: &[Change]) -> Result<u64, String> {
        let mut log = log();
        log.record(zxid, changes);
        check(zxid, entry, changes, &log)
    }

    /// The last leaf of a nested container goes: the container and every container
    /// above it left empty go in the same entry; stopping short is caught.
    #[test]
    fn an_emptied_container_is_reaped_in_the_same_entry_cascading() {
        let entry = write(delete("/box/b0/d/c1-0"));
        let full = [
            change(NodeDeleted, "/box/b0/d/c1-0"),
            change(NodeChildrenChanged, "/box/b0/d"),
            change(NodeDeleted, "/box/b0/d"),
            change(NodeChildrenChanged, "/box/b0"),
            change(NodeDeleted, "/box/b0"),
            change(NodeChildrenChanged, "/box"),
        ];
        // `/box` keeps `/box/b1`.
        assert_eq!(checked(7, &entry, &full), Ok(2));
        let short = &full[..4];
        let err = checked(7, &entry, short).expect_err("/box/b0 stayed empty");
        assert!(err.contains("/box/b0 lost its last child"), "{err}");
    }

    /// A container that keeps a child, or gets a new one in the same entry, stays; one
    /// deleted by name needs no lost child; one deleted with no child lost and no delete
    /// of it is caught.
    #[test]
    fn only_an_emptied_container_is_reaped() {
        let one_of_two = [change(NodeDeleted, "/box/b1/c2-0")];
        assert_eq!(
            checked(7, &write(delete("/box/b1/c2-0")), &one_of_two),
            Ok(0)
        );
        let swap = write(Op::Multi(vec![
            MultiOp::Delete {
                path: "/box/b0/d/c1-0".to_string(),
                version: None,
            },
            MultiOp::Create(corral_protocol::CreateRequest {
                path: "/box/b0/d/c1-1".to_string(),
                data: Vec::new(),
                mode: corral_protocol::CreateMode::Ephemeral,
                make_parents: false,
            }),
        ]));
        let swapped = [
            change(NodeDeleted, "/box/b0/d/c1-0"),
            change(NodeCreated, "/box/b0/d/c1-1"),
        ];
        assert_eq!(checked(7, &swap, &swapped), Ok(0));
        let leaf_gone_late = [change(NodeDeleted, "/box/b0/d/c1-0")];
        assert!(checked(7, &write(delete("/box/b0/d/c1-0")), &leaf_gone_late).is_err());
        let by_name = [
            change(NodeDeleted, "/box/b0/d/c1-0"),
            change(NodeDeleted, "/box/b0/d"),
        ];
        let multi = write(Op::Multi(vec![
            MultiOp::Delete {
                path: "/box/b0/d/c1-0".to_string(),
                version: None,
            },
            MultiOp::Delete {
                path: "/box/b0/d".to_string(),
                version: None,
            },
        ]));
        // `/box/b0` lost its last child too and stayed: caught.
        assert!(checked(7, &multi, &by_name).is_err());
        let spurious = [change(NodeDeleted, "/box/b1")];
        let err = checked(7, &write(delete("/box/b1/c2-0")), &spurious).expect_err("not emptied");
        assert!(err.contains("neither deleted it"), "{err}");
    }

    #[test]
    fn containers_are_named_apart_from_leaves() {
        assert!(is_container("/box"));
        assert!(is_container("/box/b0"));
        assert!(is_container("/box/b1/d"));
        assert!(!is_container("/box/b1/c3-0"));
        assert!(!is_container("/boxes"));
        assert!(!is_container("/eph/c0-1"));
    }
}
