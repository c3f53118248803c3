//! Plain reads in the simulation: a read is served from the answering node's applied
//! state, and its response carries the zxid of that state (PROTOCOL.md, "Reads"). For
//! the nodes whose every change the world records ([`ChangeLog`]: `/reg`, `/eph` and
//! what is under them), the answer must be that state exactly: a child list or page
//! names the children existing at the zxid, and whether an ephemeral node exists
//! matches its last creation or deletion up to the zxid (`ReadMismatch` otherwise).
//! Register values are checked by the linearizability check instead.

use super::check::{Violation, ViolationKind};
use super::watch::ChangeLog;
use corral_protocol::{ErrorCode, ErrorInfo, Op, OpResult};

/// The parents whose children are all recorded.
fn listed(path: &str) -> bool {
    path == "/eph" || path == "/reg"
}

/// Checks the answer `result` at `zxid` of a read `op` against the recorded changes.
pub fn check(
    client: usize,
    op: &Op,
    result: &Result<OpResult, ErrorInfo>,
    zxid: u64,
    changes: &ChangeLog,
    now: u64,
) -> Result<(), Violation> {
    if !changes.complete_to(zxid) {
        return Ok(());
    }
    let mismatch = |what: String| {
        Err(Violation {
            kind: ViolationKind::ReadMismatch,
            at_us: now,
            detail: format!("client {client} read {what} at zxid {zxid}"),
        })
    };
    match (op, result) {
        (Op::GetChildren { path, .. }, Ok(OpResult::Children { children, .. })) if listed(path) => {
            let expected = changes.children_at(path, zxid);
            if *children != expected {
                return mismatch(format!(
                    "children {children:?} of {path}, but {expected:?} existed"
                ));
            }
        }
        (
            Op::GetChildrenPage {
                path,
                after,
                max_names,
                ..
            },
            Ok(OpResult::ChildrenPage { children, more, .. }),
        ) if listed(path) => {
            let expected: Vec<String> = changes
                .children_at(path, zxid)
                .into_iter()
                .filter(|name| name.as_str() > after.as_str())
                .collect();
            let fits = children.len() <= (*max_names).max(1) as usize
                && (!children.is_empty() || expected.is_empty());
            let prefix = expected.get(..children.len()) == Some(children.as_slice());
            if !fits || !prefix || *more != (expected.len() > children.len()) {
                return mismatch(format!(
                    "the page {children:?} (more: {more}) of {path} after {after:?}, at \
                     most {max_names} names, but {expected:?} existed after it"
                ));
            }
        }
        (Op::Exists { path, .. } | Op::GetData { path, .. }, _) if path.starts_with("/eph/") => {
            let found = match result {
                Ok(OpResult::Exists(stat)) => stat.is_some(),
                Ok(OpResult::Data { .. }) => true,
                Err(e) if e.code == ErrorCode::NoNode => false,
                _ => return Ok(()),
            };
            let exists = changes.exists_at(path, zxid) == Some(true);
            if found != exists {
                return mismatch(format!(
                    "that {path} {}, but it {}",
                    if found { "exists" } else { "does not exist" },
                    if exists { "existed" } else { "did not exist" }
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Change;
    use corral_protocol::{EventKind, Stat};

    fn log() -> ChangeLog {
        let mut log = ChangeLog::default();
        let change = |kind, path: &str| Change {
            kind,
            path: path.to_string(),
        };
        log.record(1, &[change(EventKind::NodeCreated, "/eph")]);
        log.record(2, &[change(EventKind::NodeCreated, "/eph/c0-0")]);
        log.record(3, &[change(EventKind::NodeCreated, "/eph/c1-0")]);
        log.record(4, &[change(EventKind::NodeDeleted, "/eph/c0-0")]);
        log.record(5, &[change(EventKind::NodeCreated, "/eph/c2-1")]);
        log
    }

    fn page(after: &str, max_names: u32) -> Op {
        Op::GetChildrenPage {
            path: "/eph".to_string(),
            after: after.to_string(),
            max_names,
            max_bytes: 1 << 20,
        }
    }

    fn answer(children: &[&str], more: bool) -> Result<OpResult, ErrorInfo> {
        Ok(OpResult::ChildrenPage {
            children: children.iter().map(|c| c.to_string()).collect(),
            stat: Stat::default(),
            more,
        })
    }

    /// A page names the first children after its cursor that existed at its zxid, says
    /// whether more remain, and holds at least one name while any remain.
    #[test]
    fn a_children_page_is_the_state_at_its_zxid() {
        let log = log();
        let ok = |op: &Op, r, zxid| check(0, op, &r, zxid, &log, 0).is_ok();
        assert!(ok(&page("", 1), answer(&["c0-0"], true), 3));
        assert!(ok(&page("", 3), answer(&["c0-0", "c1-0"], false), 3));
        assert!(ok(&page("c0-0", 3), answer(&["c1-0", "c2-1"], false), 5));
        assert!(ok(&page("c1-0", 2), answer(&["c2-1"], false), 5));
        assert!(ok(&page("c2-1", 2), answer(&[], false), 5));
        assert!(
            !ok(&page("", 3), answer(&["c0-0", "c1-0"], false), 4),
            "deleted at 4"
        );
        assert!(
            !ok(&page("", 1), answer(&["c1-0"], false), 5),
            "more remain"
        );
        assert!(
            !ok(&page("", 2), answer(&["c1-0", "c2-1"], true), 5),
            "none remain"
        );
        assert!(
            ok(&page("", 2), answer(&["c1-0"], true), 5),
            "a byte limit may cut"
        );
        assert!(
            !ok(&page("c0-0", 2), answer(&[], false), 5),
            "empty while any remain"
        );
        assert!(
            !ok(&page("", 1), answer(&["c1-0", "c2-1"], false), 5),
            "over max_names"
        );
        assert!(
            ok(&page("", 1), answer(&["c1-0"], true), 9),
            "zxid 9 is not known yet"
        );
    }

    /// Whether an ephemeral node exists is read from the state at the zxid.
    #[test]
    fn an_ephemeral_node_exists_as_of_the_zxid() {
        let log = log();
        let exists = Op::Exists {
            path: "/eph/c0-0".to_string(),
            watch: false,
        };
        let some = Ok(OpResult::Exists(Some(Stat::default())));
        assert!(check(0, &exists, &some, 3, &log, 0).is_ok());
        let err = check(0, &exists, &some, 4, &log, 0).expect_err("deleted at 4");
        assert_eq!(err.kind, ViolationKind::ReadMismatch);
        let get = Op::GetData {
            path: "/eph/c0-0".to_string(),
            watch: true,
        };
        let no_node = Err(ErrorInfo::new(ErrorCode::NoNode, "gone"));
        assert!(check(0, &get, &no_node, 4, &log, 0).is_ok());
        assert!(check(0, &get, &no_node, 2, &log, 0).is_err());
    }
}
