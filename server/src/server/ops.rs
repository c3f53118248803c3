//! The IO shell's operations side: answering the admin endpoint from the core task,
//! completing status reports with what only the shell knows, and timing requests for
//! the metrics.

use super::{CoreMsg, CoreShell};
use crate::admin::{AdminRequest, ADMIN_QUEUE_REQUESTS};
use crate::node::Node;
use crate::status::{core_status, ShellFacts};
use corral_protocol::{Op, OpResult, ServerMessage, ServerStatus};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::mpsc;

/// Requests timed per connection at most (more are answered but not timed).
const MAX_TIMED_REQUESTS: usize = 16 * 1024;
/// Queued lock requests whose wait is timed per connection at most.
const MAX_TIMED_LOCK_WAITS: usize = 4 * 1024;

/// What the shell knows about its node that the core does not.
#[derive(Debug, Clone)]
pub(super) struct ShellInfo {
    /// The other members: id and peer address.
    pub(super) members: Vec<(u64, String)>,
    /// The sizes of the data directory's log and snapshots, measured off the core.
    pub(super) disk_usage: std::sync::Arc<super::disk_usage::DiskUsage>,
    /// The admin endpoint's address.
    pub(super) admin_addr: Option<String>,
}

impl CoreShell {
    fn facts(&self) -> ShellFacts {
        let usage = &self.info.disk_usage;
        ShellFacts {
            members: self
                .info
                .members
                .iter()
                .map(|(id, addr)| {
                    let up = self.transport.as_ref().is_some_and(|t| t.is_link_up(*id));
                    (*id, addr.clone(), up)
                })
                .collect(),
            log_bytes: usage.log_bytes(),
            snapshot_bytes: usage.snapshot_bytes(),
            admin_addr: self.info.admin_addr.clone(),
        }
    }

    /// The node's full status.
    fn status(&self, node: &Node) -> ServerStatus {
        let mut status = core_status(node);
        self.facts().complete(&mut status);
        status
    }

    /// Answers a question of the admin endpoint.
    pub(super) fn admin(&mut self, node: &mut Node, request: AdminRequest) {
        match request {
            AdminRequest::Status(tx) => {
                let _ = tx.send((self.status(node), node.stats()));
            }
            AdminRequest::Snapshot(tx) => {
                let _ = tx.send(node.machine().image());
            }
        }
    }

    /// A status answer from the core, completed with the shell's facts.
    pub(super) fn complete_status(&self, msg: &mut ServerMessage) {
        if let ServerMessage::Response(r) = msg {
            if let Ok(OpResult::ServerStatus(status)) = &mut r.result {
                self.facts().complete(status);
            }
        }
    }
}

/// Starts the admin endpoint: its questions reach the core task through its inbox.
pub(super) fn start_admin(
    listener: crate::admin::BoundAdmin,
    core_tx: mpsc::Sender<CoreMsg>,
    stop: tokio::sync::oneshot::Receiver<()>,
    core_running: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (admin_tx, mut admin_rx) = mpsc::channel::<AdminRequest>(ADMIN_QUEUE_REQUESTS);
    tokio::spawn(async move {
        while let Some(request) = admin_rx.recv().await {
            if core_tx.send(CoreMsg::Admin(request)).await.is_err() {
                return;
            }
        }
    });
    let metrics = crate::metrics::install();
    tokio::spawn(crate::admin::serve(
        listener,
        admin_tx,
        core_running,
        metrics,
        async move {
            let _ = stop.await;
        },
    ));
}

/// Times one connection's requests from arrival to answer, for the metrics.
#[derive(Debug, Default)]
pub(super) struct RequestTimer {
    /// Requests waiting for their answer, by xid: op name, whether a write, whether a
    /// lock acquisition, arrival.
    waiting: HashMap<u64, (&'static str, bool, bool, Instant)>,
    /// Queued lock requests by queue node: when they were requested.
    lock_waits: HashMap<String, Instant>,
}

impl RequestTimer {
    /// A request arrived.
    pub(super) fn arrived(&mut self, xid: u64, op: &Op) {
        // A waiter that leaves its queue is never granted: stop timing its wait (or the
        // table fills with them and later waits go untimed).
        if let Op::Unlock { node } | Op::Release { node, .. } = op {
            self.lock_waits.remove(node);
        }
        if self.waiting.len() < MAX_TIMED_REQUESTS {
            let is_lock = crate::metrics::is_lock(op);
            self.waiting
                .insert(xid, (op.name(), op.is_write(), is_lock, Instant::now()));
        }
    }

    /// A message is about to be sent on the connection.
    pub(super) fn sending(&mut self, msg: &ServerMessage) {
        match msg {
            ServerMessage::Response(r) => {
                let Some((op, is_write, is_lock, at)) = self.waiting.remove(&r.xid) else {
                    return;
                };
                let seconds = at.elapsed().as_secs_f64();
                crate::metrics::record_request(op, is_write, seconds, r);
                if is_lock && crate::metrics::record_lock_answer(seconds, r) {
                    // A multi-lock group is granted in one transaction: its first
                    // node's grant ends the wait.
                    let node = match &r.result {
                        Ok(OpResult::Queued { node, .. }) => Some(node),
                        Ok(OpResult::MultiLocked { nodes, .. }) => nodes.first().map(|n| &n.node),
                        _ => None,
                    };
                    if let Some(node) = node {
                        if self.lock_waits.len() < MAX_TIMED_LOCK_WAITS {
                            self.lock_waits.insert(node.clone(), at);
                        }
                    }
                }
            }
            ServerMessage::LockGranted(event) => {
                if let Some(at) = self.lock_waits.remove(&event.node) {
                    crate::metrics::record_lock_granted_after_wait(at.elapsed().as_secs_f64());
                }
            }
            ServerMessage::LockLost(event) => {
                self.lock_waits.remove(&event.node);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_protocol::{LockKind, LockRequest, Response};

    fn queued(xid: u64, node: &str) -> ServerMessage {
        ServerMessage::Response(Response {
            xid,
            zxid: xid,
            result: Ok(OpResult::Queued {
                node: node.into(),
                token: xid,
            }),
        })
    }

    /// A queued request that leaves its queue (Unlock or Release of its node) is no
    /// longer timed: the table does not fill with waits that never end.
    #[test]
    fn a_withdrawn_lock_wait_is_no_longer_timed() {
        let mut timer = RequestTimer::default();
        let lock = Op::Lock(LockRequest {
            lock: "/l".into(),
            kind: LockKind::Exclusive,
            try_only: false,
            lease: None,
            lock_delay_ms: 0,
            data: Vec::new(),
        });
        for (xid, node) in [(1, "/l/x-0000000001"), (2, "/l/x-0000000002")] {
            timer.arrived(xid, &lock);
            timer.sending(&queued(xid, node));
        }
        assert_eq!(timer.lock_waits.len(), 2);
        timer.arrived(
            3,
            &Op::Unlock {
                node: "/l/x-0000000001".into(),
            },
        );
        timer.arrived(
            4,
            &Op::Release {
                node: "/l/x-0000000002".into(),
                token: 2,
            },
        );
        assert!(timer.lock_waits.is_empty(), "{:?}", timer.lock_waits);
    }
}
