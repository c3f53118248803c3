//! The status a node reports ([`corral_protocol::ServerStatus`]): the core's part is
//! computed from the node's state ([`core_status`], no IO); the IO shell completes it
//! with what only it knows ([`ShellFacts::complete`]: peer links, disk usage, the admin
//! address). One type serves `corralctl status` (through `Op::ServerStatus`) and the
//! admin port's `/status`.

use crate::node::Node;
use corral_protocol::{MemberStatus, Role, ServerStatus};

/// The part of the status the node core knows. `ready` assumes the leader is reachable;
/// the shell corrects it.
pub fn core_status(node: &Node) -> ServerStatus {
    let me = node.node_id();
    let leader = node.leader();
    let role = if !node.is_cluster_member() {
        Role::Standalone
    } else if node.is_leader() {
        Role::Leader
    } else if leader.is_some_and(|l| l != me) {
        Role::Follower
    } else {
        Role::Candidate
    };
    let machine = node.machine();
    let applied_zxid = machine.last_zxid();
    let committed_zxid = node.committed_zxid().max(applied_zxid);
    let locks = machine.lock_counts();
    let ready = match role {
        Role::Standalone | Role::Leader => true,
        // Everything committed a tick ago is applied (what was committed since may still
        // wait for this node's own log write: under writes that is true most of the
        // time, and a healthy follower would flap). A node catching up after joining with
        // an empty disk knows no committed zxid yet.
        Role::Follower => applied_zxid >= node.committed_a_tick_ago() && !node.is_catching_up(),
        Role::Candidate => false,
    };
    ServerStatus {
        node_id: me,
        role,
        leader,
        members: Vec::new(),
        applied_zxid,
        committed_zxid,
        log_bytes: 0,
        snapshot_bytes: 0,
        sessions: machine.session_count() as u64,
        connections: node.connection_count() as u64,
        watches: node.watch_count() as u64,
        znodes: machine.node_count() as u64,
        locks: locks.locks,
        locks_held: locks.held,
        locks_waiting: locks.waiting,
        admin_addr: None,
        ready,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The status a node reports while it starts, before its core runs (a new cluster
/// member waiting for its peers, or the moment recovery takes): the same fields as
/// [`core_status`] completed by the shell, with what only the core knows (leader,
/// zxids, counts) at none or 0, every link reported down and `ready` false. The role
/// is `candidate` for a cluster member (it knows no leader), `standalone` for a single
/// node. The admin endpoint marks it `"starting": true`.
pub fn starting_status(
    node_id: u64,
    cluster: bool,
    members: &[(u64, String)],
    admin_addr: Option<String>,
) -> ServerStatus {
    ServerStatus {
        node_id,
        role: if cluster {
            Role::Candidate
        } else {
            Role::Standalone
        },
        leader: None,
        members: members
            .iter()
            .map(|(id, addr)| MemberStatus {
                node_id: *id,
                peer_addr: addr.clone(),
                reachable: false,
            })
            .collect(),
        applied_zxid: 0,
        committed_zxid: 0,
        log_bytes: 0,
        snapshot_bytes: 0,
        sessions: 0,
        connections: 0,
        watches: 0,
        znodes: 0,
        locks: 0,
        locks_held: 0,
        locks_waiting: 0,
        admin_addr,
        ready: false,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// What the shell knows and the core does not.
#[derive(Debug, Clone, Default)]
pub struct ShellFacts {
    /// The other members: id, peer address, whether the link to it is up.
    pub members: Vec<(u64, String, bool)>,
    /// Bytes of the write-ahead log on disk.
    pub log_bytes: u64,
    /// Bytes of snapshot files on disk.
    pub snapshot_bytes: u64,
    /// The admin endpoint's address.
    pub admin_addr: Option<String>,
}

impl ShellFacts {
    /// Fills the shell's part into a status the core produced.
    pub fn complete(&self, status: &mut ServerStatus) {
        status.members = self
            .members
            .iter()
            .map(|(id, addr, up)| MemberStatus {
                node_id: *id,
                peer_addr: addr.clone(),
                reachable: *up,
            })
            .collect();
        status.log_bytes = self.log_bytes;
        status.snapshot_bytes = self.snapshot_bytes;
        status.admin_addr = self.admin_addr.clone();
        // A leader that reaches no majority, or a follower that cannot reach its
        // leader, is not ready.
        if status.role == Role::Leader {
            let up = self.members.iter().filter(|(_, _, up)| *up).count();
            status.ready &= (up + 1) * 2 > self.members.len() + 1;
        }
        if status.role == Role::Follower {
            let leader_up = status
                .leader
                .and_then(|l| self.members.iter().find(|(id, _, _)| *id == l))
                .is_some_and(|(_, _, up)| *up);
            status.ready &= leader_up;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, leader: Option<u64>) -> ServerStatus {
        ServerStatus {
            node_id: 1,
            role,
            leader,
            members: Vec::new(),
            applied_zxid: 5,
            committed_zxid: 5,
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
            ready: true,
            version: String::new(),
        }
    }

    fn facts(links: &[(u64, bool)]) -> ShellFacts {
        ShellFacts {
            members: links
                .iter()
                .map(|(id, up)| (*id, format!("h:{id}"), *up))
                .collect(),
            ..ShellFacts::default()
        }
    }

    #[test]
    fn a_leader_is_ready_only_with_a_majority_of_links() {
        let mut s = status(Role::Leader, Some(1));
        facts(&[(2, true), (3, false)]).complete(&mut s);
        assert!(s.ready, "1 + 1 of 3 is a majority");
        let mut s = status(Role::Leader, Some(1));
        facts(&[(2, false), (3, false)]).complete(&mut s);
        assert!(!s.ready);
        assert_eq!(s.members.len(), 2);
    }

    #[test]
    fn a_starting_node_is_not_ready_and_knows_no_leader() {
        let s = starting_status(2, true, &[(1, "h:1".into()), (3, "h:3".into())], None);
        assert_eq!(
            (s.node_id, s.role, s.leader, s.ready),
            (2, Role::Candidate, None, false)
        );
        assert!(s.members.iter().all(|m| !m.reachable) && s.members.len() == 2);
        let s = starting_status(1, false, &[], Some("a:1".into()));
        assert_eq!(s.role, Role::Standalone);
        assert!(!s.ready && s.admin_addr.as_deref() == Some("a:1"));
    }

    #[test]
    fn a_follower_is_ready_only_with_its_leader_reachable() {
        let mut s = status(Role::Follower, Some(3));
        facts(&[(2, true), (3, false)]).complete(&mut s);
        assert!(!s.ready);
        let mut s = status(Role::Follower, Some(3));
        facts(&[(2, false), (3, true)]).complete(&mut s);
        assert!(s.ready);
    }
}
