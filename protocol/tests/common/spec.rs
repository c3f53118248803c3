//! An encoder written by hand from `docs/PROTOCOL.md`, without serde or bincode, the way a
//! client in another language would write it. The tests check that it produces exactly
//! the bytes the crate produces, so the document and the code cannot drift apart.

use super::{
    add_watch_mode_index, client_message_index, create_mode_index, error_code_index,
    event_kind_index, hello_reply_index, lock_kind_index, multi_op_index, multi_result_index,
    op_index, op_result_index, server_message_index, session_request_index, watcher_kind_index,
};
use corral_protocol::{
    ClientMessage, CreateRequest, ErrorInfo, Hello, HelloReply, LockEntry, LockEvent, LockKind,
    LockRequest, LockState, MultiLockRequest, MultiOp, MultiResult, Op, OpResult, Request,
    Response, Role, ServerMessage, ServerStatus, SessionRequest, Stat, WatchEvent, WatchSet,
};

/// Payload bytes under construction.
#[derive(Debug, Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// A variant index.
    fn tag(&mut self, index: u32) {
        self.u32(index);
    }
    /// Length (u64) then the bytes; used for strings (UTF-8) and byte arrays alike.
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
    }
    fn string(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn strings(&mut self, v: &[String]) {
        self.u64(v.len() as u64);
        for s in v {
            self.string(s);
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.u32(x);
            }
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                self.u64(x);
            }
        }
    }
    fn stat(&mut self, s: &Stat) {
        self.u64(s.czxid);
        self.u64(s.mzxid);
        self.u64(s.pzxid);
        self.i64(s.ctime_ms);
        self.i64(s.mtime_ms);
        self.u32(s.version);
        self.u32(s.cversion);
        self.u64(s.ephemeral_owner);
        self.u32(s.data_length);
        self.u32(s.num_children);
    }
    fn error_info(&mut self, e: &ErrorInfo) {
        self.tag(error_code_index(e.code));
        self.string(&e.message);
        self.opt_u32(e.op_index);
    }
    fn create_request(&mut self, c: &CreateRequest) {
        self.string(&c.path);
        self.bytes(&c.data);
        self.tag(create_mode_index(c.mode));
        self.bool(c.make_parents);
    }
    fn watch_set(&mut self, w: &WatchSet) {
        self.strings(&w.data);
        self.strings(&w.exist);
        self.strings(&w.child);
        self.strings(&w.persistent);
        self.strings(&w.persistent_recursive);
    }
    fn lock_kind(&mut self, k: LockKind) {
        self.tag(lock_kind_index(k));
        if let LockKind::Semaphore { permits } = k {
            self.u32(permits);
        }
    }
    fn lock_request(&mut self, r: &LockRequest) {
        self.string(&r.lock);
        self.lock_kind(r.kind);
        self.bool(r.try_only);
        self.opt_u64(r.lease);
        self.u64(r.lock_delay_ms);
        self.bytes(&r.data);
    }
    fn multi_lock_request(&mut self, r: &MultiLockRequest) {
        self.u64(r.locks.len() as u64);
        for item in &r.locks {
            self.string(&item.lock);
            self.lock_kind(item.kind);
        }
        self.bool(r.try_only);
        self.opt_u64(r.lease);
        self.u64(r.lock_delay_ms);
        self.bytes(&r.data);
    }
    fn lock_entry(&mut self, e: &LockEntry) {
        self.string(&e.node);
        self.lock_kind(e.kind);
        self.u64(e.session);
        self.u64(e.lease);
        self.u64(e.token);
        self.bool(e.granted);
    }
    fn lock_state(&mut self, l: &LockState) {
        self.string(&l.lock);
        self.u64(l.lock_delay_ms);
        self.i64(l.delayed_until_ms);
        self.u64(l.queue.len() as u64);
        for e in &l.queue {
            self.lock_entry(e);
        }
    }
    fn lock_event(&mut self, e: &LockEvent) {
        self.string(&e.lock);
        self.string(&e.node);
        self.u64(e.token);
        self.u64(e.zxid);
    }
    fn multi_op(&mut self, m: &MultiOp) {
        self.tag(multi_op_index(m));
        match m {
            MultiOp::Create(c) => self.create_request(c),
            MultiOp::Delete { path, version } => {
                self.string(path);
                self.opt_u32(*version);
            }
            MultiOp::SetData {
                path,
                data,
                version,
            } => {
                self.string(path);
                self.bytes(data);
                self.opt_u32(*version);
            }
            MultiOp::Check { path, version } => {
                self.string(path);
                self.u32(*version);
            }
            MultiOp::CheckLock { lock, token } => {
                self.string(lock);
                self.u64(*token);
            }
        }
    }
    fn op(&mut self, op: &Op) {
        self.tag(op_index(op));
        match op {
            Op::Create(c) => self.create_request(c),
            Op::Delete { path, version } => {
                self.string(path);
                self.opt_u32(*version);
            }
            Op::Exists { path, watch }
            | Op::GetData { path, watch }
            | Op::GetChildren { path, watch } => {
                self.string(path);
                self.bool(*watch);
            }
            Op::SetData {
                path,
                data,
                version,
            } => {
                self.string(path);
                self.bytes(data);
                self.opt_u32(*version);
            }
            Op::Multi(ops) => {
                self.u64(ops.len() as u64);
                for m in ops {
                    self.multi_op(m);
                }
            }
            Op::Sync { path } => self.string(path),
            Op::Ping | Op::CloseSession => {}
            Op::AddWatch { path, mode } => {
                self.string(path);
                self.tag(add_watch_mode_index(*mode));
            }
            Op::RemoveWatches { path, kind } => {
                self.string(path);
                self.tag(watcher_kind_index(*kind));
            }
            Op::SetWatches { last_zxid, watches } => {
                self.u64(*last_zxid);
                self.watch_set(watches);
            }
            Op::Lock(r) => self.lock_request(r),
            Op::Unlock { node } => self.string(node),
            Op::GrantLease { ttl_ms } => self.u64(*ttl_ms),
            Op::RenewLease { lease_id } | Op::RevokeLease { lease_id } => self.u64(*lease_id),
            Op::GetLocks { path } => self.string(path),
            Op::GetLockGroup { node } => self.string(node),
            Op::GetLocksPage {
                path,
                after,
                max_locks,
                max_bytes,
            } => {
                self.string(path);
                self.string(after);
                self.u32(*max_locks);
                self.u32(*max_bytes);
            }
            Op::ServerStatus => {}
            Op::LockMany(r) => self.multi_lock_request(r),
            Op::Release { node, token } => {
                self.string(node);
                self.u64(*token);
            }
            Op::GetChildrenPage {
                path,
                after,
                max_names,
                max_bytes,
            } => {
                self.string(path);
                self.string(after);
                self.u32(*max_names);
                self.u32(*max_bytes);
            }
            Op::Acknowledge { answered_below } => self.u64(*answered_below),
        }
    }
    fn multi_result(&mut self, r: &MultiResult) {
        self.tag(multi_result_index(r));
        match r {
            MultiResult::Created { path, stat } => {
                self.string(path);
                self.stat(stat);
            }
            MultiResult::Deleted | MultiResult::Checked | MultiResult::LockChecked => {}
            MultiResult::SetData { stat } => self.stat(stat),
        }
    }
    fn op_result(&mut self, r: &OpResult) {
        self.tag(op_result_index(r));
        match r {
            OpResult::Created { path, stat } => {
                self.string(path);
                self.stat(stat);
            }
            OpResult::Exists(stat) => match stat {
                None => self.u8(0),
                Some(s) => {
                    self.u8(1);
                    self.stat(s);
                }
            },
            OpResult::Data { data, stat } => {
                self.bytes(data);
                self.stat(stat);
            }
            OpResult::SetData { stat } => self.stat(stat),
            OpResult::Children { children, stat } => {
                self.strings(children);
                self.stat(stat);
            }
            OpResult::Multi(results) => {
                self.u64(results.len() as u64);
                for r in results {
                    self.multi_result(r);
                }
            }
            OpResult::Locked { node, token } | OpResult::Queued { node, token } => {
                self.string(node);
                self.u64(*token);
            }
            OpResult::Unlocked { released } => self.bool(*released),
            OpResult::Lease { lease_id, ttl_ms } => {
                self.u64(*lease_id);
                self.u64(*ttl_ms);
            }
            OpResult::Locks(locks) => {
                self.u64(locks.len() as u64);
                for l in locks {
                    self.lock_state(l);
                }
            }
            OpResult::ServerStatus(st) => self.server_status(st),
            OpResult::ChildrenPage {
                children,
                stat,
                more,
            } => {
                self.strings(children);
                self.stat(stat);
                self.bool(*more);
            }
            OpResult::LocksPage { locks, more } => {
                self.u64(locks.len() as u64);
                for l in locks {
                    self.lock_state(l);
                }
                self.bool(*more);
            }
            OpResult::MultiLocked { granted, nodes } => {
                self.bool(*granted);
                self.u64(nodes.len() as u64);
                for n in nodes {
                    self.string(&n.lock);
                    self.string(&n.node);
                    self.u64(n.token);
                }
            }
            OpResult::Deleted
            | OpResult::Synced
            | OpResult::Pong
            | OpResult::Closed
            | OpResult::WatchesUpdated => {}
        }
    }
    fn server_status(&mut self, s: &ServerStatus) {
        self.u64(s.node_id);
        self.tag(match s.role {
            Role::Standalone => 0,
            Role::Leader => 1,
            Role::Follower => 2,
            Role::Candidate => 3,
        });
        self.opt_u64(s.leader);
        self.u64(s.members.len() as u64);
        for m in &s.members {
            self.u64(m.node_id);
            self.string(&m.peer_addr);
            self.bool(m.reachable);
        }
        for v in [
            s.applied_zxid,
            s.committed_zxid,
            s.log_bytes,
            s.snapshot_bytes,
            s.sessions,
            s.connections,
            s.watches,
            s.znodes,
            s.locks,
            s.locks_held,
            s.locks_waiting,
        ] {
            self.u64(v);
        }
        match &s.admin_addr {
            None => self.u8(0),
            Some(a) => {
                self.u8(1);
                self.string(a);
            }
        }
        self.bool(s.ready);
        self.string(&s.version);
    }
    fn request(&mut self, r: &Request) {
        self.u64(r.xid);
        self.op(&r.op);
    }
    fn response(&mut self, r: &Response) {
        self.u64(r.xid);
        self.u64(r.zxid);
        match &r.result {
            Ok(ok) => {
                self.tag(0);
                self.op_result(ok);
            }
            Err(e) => {
                self.tag(1);
                self.error_info(e);
            }
        }
    }
    fn watch_event(&mut self, w: &WatchEvent) {
        self.tag(event_kind_index(w.kind));
        self.string(&w.path);
        self.u64(w.zxid);
    }
}

/// The payload of a `Hello`, per the document.
pub fn hello(h: &Hello) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(h.magic);
    w.u16(h.version);
    w.tag(session_request_index(&h.session));
    match &h.session {
        SessionRequest::New { ttl_ms } => w.u64(*ttl_ms),
        SessionRequest::Resume { session_id, secret } => {
            w.u64(*session_id);
            w.u64(*secret);
        }
    }
    w.u64(h.last_zxid_seen);
    w.0
}

/// The payload of a `HelloReply`, per the document.
pub fn hello_reply(r: &HelloReply) -> Vec<u8> {
    let mut w = Writer::default();
    w.tag(hello_reply_index(r));
    match r {
        HelloReply::Accepted(g) => {
            for v in [
                g.session_id,
                g.secret,
                g.ttl_ms,
                g.node_id,
                g.zxid,
                g.max_frame_bytes,
                g.next_xid,
            ] {
                w.u64(v);
            }
        }
        HelloReply::Refused(e) => w.error_info(e),
    }
    w.0
}

/// The payload of a `ClientMessage`, per the document.
pub fn client_message(m: &ClientMessage) -> Vec<u8> {
    let mut w = Writer::default();
    w.tag(client_message_index(m));
    match m {
        ClientMessage::Request(r) => w.request(r),
    }
    w.0
}

/// The payload of a `ServerMessage`, per the document.
pub fn server_message(m: &ServerMessage) -> Vec<u8> {
    let mut w = Writer::default();
    w.tag(server_message_index(m));
    match m {
        ServerMessage::Response(r) => w.response(r),
        ServerMessage::Watch(e) => w.watch_event(e),
        ServerMessage::Goodbye(e) => w.error_info(e),
        ServerMessage::LockGranted(e) | ServerMessage::LockLost(e) => w.lock_event(e),
    }
    w.0
}

/// A whole frame: the payload's length as a big-endian u32, then the payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("test payloads are small");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}
