//! Shared by the integration tests: proptest strategies for every message type and every
//! variant, the variant index of every enum (written as exhaustive matches, so that adding
//! a variant fails to compile here until the tests and `docs/PROTOCOL.md` are updated), an
//! independent encoder written from `docs/PROTOCOL.md`, and small helpers.
//!
//! Not every test binary uses every item.
#![allow(dead_code)]

pub mod spec;

use bytes::BytesMut;
use corral_protocol::frame::{decode_frame, encode_frame, frame_to_vec, LENGTH_PREFIX_BYTES};
use corral_protocol::{
    AddWatchMode, ClientMessage, Codec, CreateMode, CreateRequest, ErrorCode, ErrorInfo, EventKind,
    Hello, HelloReply, LockEntry, LockEvent, LockKind, LockRequest, LockState, LockedNode,
    MemberStatus, MultiLockItem, MultiLockRequest, MultiOp, MultiResult, Op, OpResult, Request,
    Response, Role, ServerMessage, ServerStatus, SessionGranted, SessionRequest, Stat, WatchEvent,
    WatchSet, WatcherKind, DEFAULT_MAX_FRAME_BYTES, MAGIC, PROTOCOL_VERSION,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use tokio_util::codec::{Decoder, Encoder};

/// The limit used by the tests unless they say otherwise.
pub const MAX: usize = DEFAULT_MAX_FRAME_BYTES;

/// Everything the generic tests need of a message type.
pub trait Message: Serialize + DeserializeOwned + PartialEq + Debug + Clone {}
impl<T: Serialize + DeserializeOwned + PartialEq + Debug + Clone> Message for T {}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Any string, control characters and non-ASCII included (the codec does not validate
/// paths; that is the server's job).
pub fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..8).prop_map(|chars| chars.into_iter().collect())
}

/// Mostly realistic paths, sometimes any string.
pub fn path() -> impl Strategy<Value = String> {
    prop_oneof![Just("/".to_string()), "(/[a-z0-9._-]{1,6}){1,3}", text(),]
}

/// Node data.
pub fn data() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..48)
}

prop_compose! {
    pub fn stat()(
        czxid in any::<u64>(),
        mzxid in any::<u64>(),
        pzxid in any::<u64>(),
        ctime_ms in any::<i64>(),
        mtime_ms in any::<i64>(),
        version in any::<u32>(),
        cversion in any::<u32>(),
        ephemeral_owner in any::<u64>(),
        data_length in any::<u32>(),
        num_children in any::<u32>(),
    ) -> Stat {
        Stat {
            czxid,
            mzxid,
            pzxid,
            ctime_ms,
            mtime_ms,
            version,
            cversion,
            ephemeral_owner,
            data_length,
            num_children,
        }
    }
}

pub fn create_mode() -> impl Strategy<Value = CreateMode> {
    prop_oneof![
        Just(CreateMode::Persistent),
        Just(CreateMode::PersistentSequential),
        Just(CreateMode::Ephemeral),
        Just(CreateMode::EphemeralSequential),
        Just(CreateMode::Container),
    ]
}

pub fn watcher_kind() -> impl Strategy<Value = WatcherKind> {
    prop_oneof![
        Just(WatcherKind::Data),
        Just(WatcherKind::Children),
        Just(WatcherKind::Persistent),
        Just(WatcherKind::Any),
    ]
}

pub fn add_watch_mode() -> impl Strategy<Value = AddWatchMode> {
    prop_oneof![
        Just(AddWatchMode::Persistent),
        Just(AddWatchMode::PersistentRecursive),
    ]
}

pub fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        Just(EventKind::NodeCreated),
        Just(EventKind::NodeDeleted),
        Just(EventKind::NodeDataChanged),
        Just(EventKind::NodeChildrenChanged),
    ]
}

pub fn lock_kind() -> impl Strategy<Value = LockKind> {
    prop_oneof![
        Just(LockKind::Exclusive),
        Just(LockKind::Read),
        Just(LockKind::Write),
        any::<u32>().prop_map(|permits| LockKind::Semaphore { permits }),
    ]
}

prop_compose! {
    pub fn lock_request()(
        lock in path(),
        kind in lock_kind(),
        try_only in any::<bool>(),
        lease in option::of(any::<u64>()),
        lock_delay_ms in any::<u64>(),
        data in data(),
    ) -> LockRequest {
        LockRequest { lock, kind, try_only, lease, lock_delay_ms, data }
    }
}

prop_compose! {
    pub fn multi_lock_request()(
        locks in vec((path(), lock_kind()).prop_map(|(lock, kind)| MultiLockItem { lock, kind }), 0..4),
        try_only in any::<bool>(),
        lease in option::of(any::<u64>()),
        lock_delay_ms in any::<u64>(),
        data in data(),
    ) -> MultiLockRequest {
        MultiLockRequest { locks, try_only, lease, lock_delay_ms, data }
    }
}

prop_compose! {
    pub fn locked_node()(lock in path(), node in path(), token in any::<u64>()) -> LockedNode {
        LockedNode { lock, node, token }
    }
}

prop_compose! {
    pub fn lock_entry()(
        node in path(),
        kind in lock_kind(),
        session in any::<u64>(),
        lease in any::<u64>(),
        token in any::<u64>(),
        granted in any::<bool>(),
    ) -> LockEntry {
        LockEntry { node, kind, session, lease, token, granted }
    }
}

prop_compose! {
    pub fn lock_state()(
        lock in path(),
        lock_delay_ms in any::<u64>(),
        delayed_until_ms in any::<i64>(),
        queue in vec(lock_entry(), 0..3),
    ) -> LockState {
        LockState { lock, lock_delay_ms, delayed_until_ms, queue }
    }
}

prop_compose! {
    pub fn lock_event()(
        lock in path(),
        node in path(),
        token in any::<u64>(),
        zxid in any::<u64>(),
    ) -> LockEvent {
        LockEvent { lock, node, token, zxid }
    }
}

/// Every error code, in wire order (the position is the wire value).
pub const ALL_ERROR_CODES: [ErrorCode; 28] = [
    ErrorCode::SystemError,
    ErrorCode::RuntimeInconsistency,
    ErrorCode::ConnectionLoss,
    ErrorCode::Malformed,
    ErrorCode::Unimplemented,
    ErrorCode::OperationTimeout,
    ErrorCode::BadArguments,
    ErrorCode::NoNode,
    ErrorCode::BadVersion,
    ErrorCode::NoChildrenForEphemerals,
    ErrorCode::NodeExists,
    ErrorCode::NotEmpty,
    ErrorCode::SessionExpired,
    ErrorCode::SessionMoved,
    ErrorCode::InvalidPath,
    ErrorCode::DataTooLarge,
    ErrorCode::FrameTooLarge,
    ErrorCode::ProtocolMismatch,
    ErrorCode::LimitExceeded,
    ErrorCode::NoWatcher,
    ErrorCode::StaleRequest,
    ErrorCode::Unavailable,
    ErrorCode::AuthFailed,
    ErrorCode::LockHeld,
    ErrorCode::NotLockOwner,
    ErrorCode::LockNotHeld,
    ErrorCode::NoLease,
    ErrorCode::Deadlock,
];

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(&ALL_ERROR_CODES[..])
}

prop_compose! {
    pub fn error_info()(
        code in error_code(),
        message in text(),
        op_index in option::of(any::<u32>()),
    ) -> ErrorInfo {
        ErrorInfo { code, message, op_index }
    }
}

prop_compose! {
    pub fn create_request()(
        path in path(),
        data in data(),
        mode in create_mode(),
        make_parents in any::<bool>(),
    ) -> CreateRequest {
        CreateRequest { path, data, mode, make_parents }
    }
}

pub fn multi_op() -> impl Strategy<Value = MultiOp> {
    prop_oneof![
        create_request().prop_map(MultiOp::Create),
        (path(), option::of(any::<u32>()))
            .prop_map(|(path, version)| MultiOp::Delete { path, version }),
        (path(), data(), option::of(any::<u32>())).prop_map(|(path, data, version)| {
            MultiOp::SetData {
                path,
                data,
                version,
            }
        }),
        (path(), any::<u32>()).prop_map(|(path, version)| MultiOp::Check { path, version }),
        (path(), any::<u64>()).prop_map(|(lock, token)| MultiOp::CheckLock { lock, token }),
    ]
}

prop_compose! {
    pub fn watch_set()(
        data in vec(path(), 0..3),
        exist in vec(path(), 0..3),
        child in vec(path(), 0..3),
        persistent in vec(path(), 0..3),
        persistent_recursive in vec(path(), 0..3),
    ) -> WatchSet {
        WatchSet { data, exist, child, persistent, persistent_recursive }
    }
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        create_request().prop_map(Op::Create),
        (path(), option::of(any::<u32>())).prop_map(|(path, version)| Op::Delete { path, version }),
        (path(), any::<bool>()).prop_map(|(path, watch)| Op::Exists { path, watch }),
        (path(), any::<bool>()).prop_map(|(path, watch)| Op::GetData { path, watch }),
        (path(), data(), option::of(any::<u32>())).prop_map(|(path, data, version)| {
            Op::SetData {
                path,
                data,
                version,
            }
        }),
        (path(), any::<bool>()).prop_map(|(path, watch)| Op::GetChildren { path, watch }),
        vec(multi_op(), 0..5).prop_map(Op::Multi),
        path().prop_map(|path| Op::Sync { path }),
        Just(Op::Ping),
        Just(Op::CloseSession),
        (path(), add_watch_mode()).prop_map(|(path, mode)| Op::AddWatch { path, mode }),
        (path(), watcher_kind()).prop_map(|(path, kind)| Op::RemoveWatches { path, kind }),
        (any::<u64>(), watch_set())
            .prop_map(|(last_zxid, watches)| Op::SetWatches { last_zxid, watches }),
        lock_request().prop_map(Op::Lock),
        path().prop_map(|node| Op::Unlock { node }),
        any::<u64>().prop_map(|ttl_ms| Op::GrantLease { ttl_ms }),
        any::<u64>().prop_map(|lease_id| Op::RenewLease { lease_id }),
        any::<u64>().prop_map(|lease_id| Op::RevokeLease { lease_id }),
        path().prop_map(|path| Op::GetLocks { path }),
        Just(Op::ServerStatus),
        multi_lock_request().prop_map(Op::LockMany),
        (path(), any::<u64>()).prop_map(|(node, token)| Op::Release { node, token }),
        (path(), text(), any::<u32>(), any::<u32>()).prop_map(
            |(path, after, max_names, max_bytes)| Op::GetChildrenPage {
                path,
                after,
                max_names,
                max_bytes,
            }
        ),
        any::<u64>().prop_map(|answered_below| Op::Acknowledge { answered_below }),
        path().prop_map(|node| Op::GetLockGroup { node }),
        (path(), text(), any::<u32>(), any::<u32>()).prop_map(
            |(path, after, max_locks, max_bytes)| Op::GetLocksPage {
                path,
                after,
                max_locks,
                max_bytes,
            }
        ),
    ]
}

pub fn multi_result() -> impl Strategy<Value = MultiResult> {
    prop_oneof![
        (path(), stat()).prop_map(|(path, stat)| MultiResult::Created { path, stat }),
        Just(MultiResult::Deleted),
        stat().prop_map(|stat| MultiResult::SetData { stat }),
        Just(MultiResult::Checked),
        Just(MultiResult::LockChecked),
    ]
}

pub fn op_result() -> impl Strategy<Value = OpResult> {
    prop_oneof![
        (path(), stat()).prop_map(|(path, stat)| OpResult::Created { path, stat }),
        Just(OpResult::Deleted),
        option::of(stat()).prop_map(OpResult::Exists),
        (data(), stat()).prop_map(|(data, stat)| OpResult::Data { data, stat }),
        stat().prop_map(|stat| OpResult::SetData { stat }),
        (vec(text(), 0..4), stat())
            .prop_map(|(children, stat)| OpResult::Children { children, stat }),
        vec(multi_result(), 0..5).prop_map(OpResult::Multi),
        Just(OpResult::Synced),
        Just(OpResult::Pong),
        Just(OpResult::Closed),
        Just(OpResult::WatchesUpdated),
        (path(), any::<u64>()).prop_map(|(node, token)| OpResult::Locked { node, token }),
        (path(), any::<u64>()).prop_map(|(node, token)| OpResult::Queued { node, token }),
        any::<bool>().prop_map(|released| OpResult::Unlocked { released }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(lease_id, ttl_ms)| OpResult::Lease { lease_id, ttl_ms }),
        vec(lock_state(), 0..3).prop_map(OpResult::Locks),
        server_status().prop_map(|s| OpResult::ServerStatus(Box::new(s))),
        (any::<bool>(), vec(locked_node(), 0..3))
            .prop_map(|(granted, nodes)| OpResult::MultiLocked { granted, nodes }),
        (vec(text(), 0..4), stat(), any::<bool>()).prop_map(|(children, stat, more)| {
            OpResult::ChildrenPage {
                children,
                stat,
                more,
            }
        }),
        (vec(lock_state(), 0..3), any::<bool>())
            .prop_map(|(locks, more)| OpResult::LocksPage { locks, more }),
    ]
}

prop_compose! {
    pub fn server_status()(
        node_id in any::<u64>(),
        role in prop_oneof![Just(Role::Standalone), Just(Role::Leader), Just(Role::Follower), Just(Role::Candidate)],
        leader in option::of(any::<u64>()),
        members in vec((any::<u64>(), text(), any::<bool>()), 0..3),
        figures in vec(any::<u64>(), 11),
        admin_addr in option::of(text()),
        ready in any::<bool>(),
        version in text(),
    ) -> ServerStatus {
        ServerStatus {
            node_id,
            role,
            leader,
            members: members
                .into_iter()
                .map(|(node_id, peer_addr, reachable)| MemberStatus { node_id, peer_addr, reachable })
                .collect(),
            applied_zxid: figures[0],
            committed_zxid: figures[1],
            log_bytes: figures[2],
            snapshot_bytes: figures[3],
            sessions: figures[4],
            connections: figures[5],
            watches: figures[6],
            znodes: figures[7],
            locks: figures[8],
            locks_held: figures[9],
            locks_waiting: figures[10],
            admin_addr,
            ready,
            version,
        }
    }
}

prop_compose! {
    pub fn request()(xid in any::<u64>(), op in op()) -> Request {
        Request { xid, op }
    }
}

prop_compose! {
    pub fn response()(
        xid in any::<u64>(),
        zxid in any::<u64>(),
        result in prop_oneof![op_result().prop_map(Ok), error_info().prop_map(Err)],
    ) -> Response {
        Response { xid, zxid, result }
    }
}

prop_compose! {
    pub fn watch_event()(kind in event_kind(), path in path(), zxid in any::<u64>()) -> WatchEvent {
        WatchEvent { kind, path, zxid }
    }
}

pub fn session_request() -> impl Strategy<Value = SessionRequest> {
    prop_oneof![
        any::<u64>().prop_map(|ttl_ms| SessionRequest::New { ttl_ms }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(session_id, secret)| SessionRequest::Resume { session_id, secret }),
    ]
}

prop_compose! {
    pub fn hello()(
        magic in prop_oneof![Just(MAGIC), any::<u32>()],
        version in prop_oneof![Just(PROTOCOL_VERSION), any::<u16>()],
        session in session_request(),
        last_zxid_seen in any::<u64>(),
    ) -> Hello {
        Hello { magic, version, session, last_zxid_seen }
    }
}

prop_compose! {
    pub fn session_granted()(
        session_id in any::<u64>(),
        secret in any::<u64>(),
        ttl_ms in any::<u64>(),
        node_id in any::<u64>(),
        zxid in any::<u64>(),
        max_frame_bytes in any::<u64>(),
        next_xid in any::<u64>(),
    ) -> SessionGranted {
        SessionGranted { session_id, secret, ttl_ms, node_id, zxid, max_frame_bytes, next_xid }
    }
}

pub fn hello_reply() -> impl Strategy<Value = HelloReply> {
    prop_oneof![
        session_granted().prop_map(HelloReply::Accepted),
        error_info().prop_map(HelloReply::Refused),
    ]
}

pub fn client_message() -> impl Strategy<Value = ClientMessage> {
    request().prop_map(ClientMessage::Request)
}

pub fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        3 => response().prop_map(ServerMessage::Response),
        1 => watch_event().prop_map(ServerMessage::Watch),
        1 => error_info().prop_map(ServerMessage::Goodbye),
        1 => lock_event().prop_map(ServerMessage::LockGranted),
        1 => lock_event().prop_map(ServerMessage::LockLost),
    ]
}

/// One message of any of the four top-level types, with its frame.
#[derive(Debug, Clone)]
pub enum AnyMessage {
    Hello(Hello),
    HelloReply(HelloReply),
    Client(ClientMessage),
    Server(ServerMessage),
}

impl AnyMessage {
    /// The message's frame.
    pub fn frame(&self) -> Vec<u8> {
        match self {
            AnyMessage::Hello(m) => frame(m),
            AnyMessage::HelloReply(m) => frame(m),
            AnyMessage::Client(m) => frame(m),
            AnyMessage::Server(m) => frame(m),
        }
    }
}

pub fn any_message() -> impl Strategy<Value = AnyMessage> {
    prop_oneof![
        hello().prop_map(AnyMessage::Hello),
        hello_reply().prop_map(AnyMessage::HelloReply),
        client_message().prop_map(AnyMessage::Client),
        server_message().prop_map(AnyMessage::Server),
    ]
}

// ---------------------------------------------------------------------------------------
// Variant indices: the u32 written before an enum's fields. Exhaustive on purpose.
// ---------------------------------------------------------------------------------------

pub fn session_request_index(v: &SessionRequest) -> u32 {
    match v {
        SessionRequest::New { .. } => 0,
        SessionRequest::Resume { .. } => 1,
    }
}

pub fn hello_reply_index(v: &HelloReply) -> u32 {
    match v {
        HelloReply::Accepted(_) => 0,
        HelloReply::Refused(_) => 1,
    }
}

pub fn client_message_index(v: &ClientMessage) -> u32 {
    match v {
        ClientMessage::Request(_) => 0,
    }
}

pub fn server_message_index(v: &ServerMessage) -> u32 {
    match v {
        ServerMessage::Response(_) => 0,
        ServerMessage::Watch(_) => 1,
        ServerMessage::Goodbye(_) => 2,
        ServerMessage::LockGranted(_) => 3,
        ServerMessage::LockLost(_) => 4,
    }
}

pub fn op_index(v: &Op) -> u32 {
    match v {
        Op::Create(_) => 0,
        Op::Delete { .. } => 1,
        Op::Exists { .. } => 2,
        Op::GetData { .. } => 3,
        Op::SetData { .. } => 4,
        Op::GetChildren { .. } => 5,
        Op::Multi(_) => 6,
        Op::Sync { .. } => 7,
        Op::Ping => 8,
        Op::CloseSession => 9,
        Op::AddWatch { .. } => 10,
        Op::RemoveWatches { .. } => 11,
        Op::SetWatches { .. } => 12,
        Op::Lock(_) => 13,
        Op::Unlock { .. } => 14,
        Op::GrantLease { .. } => 15,
        Op::RenewLease { .. } => 16,
        Op::RevokeLease { .. } => 17,
        Op::GetLocks { .. } => 18,
        Op::ServerStatus => 19,
        Op::LockMany(_) => 20,
        Op::Release { .. } => 21,
        Op::GetChildrenPage { .. } => 22,
        Op::Acknowledge { .. } => 23,
        Op::GetLockGroup { .. } => 24,
        Op::GetLocksPage { .. } => 25,
    }
}

pub fn multi_op_index(v: &MultiOp) -> u32 {
    match v {
        MultiOp::Create(_) => 0,
        MultiOp::Delete { .. } => 1,
        MultiOp::SetData { .. } => 2,
        MultiOp::Check { .. } => 3,
        MultiOp::CheckLock { .. } => 4,
    }
}

pub fn op_result_index(v: &OpResult) -> u32 {
    match v {
        OpResult::Created { .. } => 0,
        OpResult::Deleted => 1,
        OpResult::Exists(_) => 2,
        OpResult::Data { .. } => 3,
        OpResult::SetData { .. } => 4,
        OpResult::Children { .. } => 5,
        OpResult::Multi(_) => 6,
        OpResult::Synced => 7,
        OpResult::Pong => 8,
        OpResult::Closed => 9,
        OpResult::WatchesUpdated => 10,
        OpResult::Locked { .. } => 11,
        OpResult::Queued { .. } => 12,
        OpResult::Unlocked { .. } => 13,
        OpResult::Lease { .. } => 14,
        OpResult::Locks(_) => 15,
        OpResult::ServerStatus(_) => 16,
        OpResult::MultiLocked { .. } => 17,
        OpResult::ChildrenPage { .. } => 18,
        OpResult::LocksPage { .. } => 19,
    }
}

pub fn multi_result_index(v: &MultiResult) -> u32 {
    match v {
        MultiResult::Created { .. } => 0,
        MultiResult::Deleted => 1,
        MultiResult::SetData { .. } => 2,
        MultiResult::Checked => 3,
        MultiResult::LockChecked => 4,
    }
}

pub fn lock_kind_index(v: LockKind) -> u32 {
    match v {
        LockKind::Exclusive => 0,
        LockKind::Read => 1,
        LockKind::Write => 2,
        LockKind::Semaphore { .. } => 3,
    }
}

pub fn create_mode_index(v: CreateMode) -> u32 {
    match v {
        CreateMode::Persistent => 0,
        CreateMode::PersistentSequential => 1,
        CreateMode::Ephemeral => 2,
        CreateMode::EphemeralSequential => 3,
        CreateMode::Container => 4,
    }
}

pub fn watcher_kind_index(v: WatcherKind) -> u32 {
    match v {
        WatcherKind::Data => 0,
        WatcherKind::Children => 1,
        WatcherKind::Persistent => 2,
        WatcherKind::Any => 3,
    }
}

pub fn add_watch_mode_index(v: AddWatchMode) -> u32 {
    match v {
        AddWatchMode::Persistent => 0,
        AddWatchMode::PersistentRecursive => 1,
    }
}

pub fn event_kind_index(v: EventKind) -> u32 {
    match v {
        EventKind::NodeCreated => 0,
        EventKind::NodeDeleted => 1,
        EventKind::NodeDataChanged => 2,
        EventKind::NodeChildrenChanged => 3,
    }
}

pub fn error_code_index(v: ErrorCode) -> u32 {
    use ErrorCode::*;
    match v {
        SystemError => 0,
        RuntimeInconsistency => 1,
        ConnectionLoss => 2,
        Malformed => 3,
        Unimplemented => 4,
        OperationTimeout => 5,
        BadArguments => 6,
        NoNode => 7,
        BadVersion => 8,
        NoChildrenForEphemerals => 9,
        NodeExists => 10,
        NotEmpty => 11,
        SessionExpired => 12,
        SessionMoved => 13,
        InvalidPath => 14,
        DataTooLarge => 15,
        FrameTooLarge => 16,
        ProtocolMismatch => 17,
        LimitExceeded => 18,
        NoWatcher => 19,
        StaleRequest => 20,
        Unavailable => 21,
        AuthFailed => 22,
        LockHeld => 23,
        NotLockOwner => 24,
        LockNotHeld => 25,
        NoLease => 26,
        Deadlock => 27,
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The frame of `msg` under the default limit.
pub fn frame<M: Serialize>(msg: &M) -> Vec<u8> {
    frame_to_vec(msg, MAX).expect("a generated message fits the default frame limit")
}

/// The payload of `msg` (its frame without the length prefix).
pub fn payload<M: Serialize>(msg: &M) -> Vec<u8> {
    frame(msg)[LENGTH_PREFIX_BYTES..].to_vec()
}

/// The u32 variant index at the start of an encoded enum.
pub fn leading_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

/// Decodes a hex string; whitespace is ignored.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("hex digits are ASCII");
            u8::from_str_radix(text, 16).expect("a hex digit")
        })
        .collect()
}

/// Lower-case hex, a space between bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces the length prefix of `frame` with the actual payload length.
pub fn patch_length(frame: &mut [u8]) {
    let len = u32::try_from(frame.len() - LENGTH_PREFIX_BYTES).expect("test frames are small");
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// Checks that `msg` survives `encode_frame` + `decode_frame` and the codec, and that the
/// frame is a big-endian payload length followed by the payload.
pub fn check_roundtrip<M: Message>(msg: &M) -> Result<(), TestCaseError> {
    let frame = frame(msg);
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    prop_assert_eq!(len + LENGTH_PREFIX_BYTES, frame.len());

    // encode_frame appends to what is already in the buffer.
    let mut buf = BytesMut::from(&b"xyz"[..]);
    encode_frame(msg, &mut buf, MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&buf[..3], b"xyz");
    prop_assert_eq!(&buf[3..], &frame[..]);

    // decode_frame, alone and with bytes after the frame.
    let (decoded, used) = decode_frame::<M>(&frame, MAX)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .ok_or_else(|| TestCaseError::fail("a whole frame decoded as incomplete"))?;
    prop_assert_eq!(&decoded, msg);
    prop_assert_eq!(used, frame.len());
    let mut longer = frame.clone();
    longer.extend_from_slice(&[0xAB; 7]);
    let (decoded, used) = decode_frame::<M>(&longer, MAX)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .ok_or_else(|| TestCaseError::fail("a whole frame decoded as incomplete"))?;
    prop_assert_eq!(&decoded, msg);
    prop_assert_eq!(used, frame.len());

    // The codec: two frames in a row, decoded one by one.
    let mut codec = Codec::<M, M>::new(MAX);
    let mut buf = BytesMut::new();
    for _ in 0..2 {
        codec
            .encode(msg.clone(), &mut buf)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    prop_assert_eq!(buf.len(), 2 * frame.len());
    prop_assert_eq!(&buf[..frame.len()], &frame[..]);
    prop_assert_eq!(&buf[frame.len()..], &frame[..]);
    for remaining in [frame.len(), 0] {
        let decoded = codec
            .decode(&mut buf)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded.as_ref(), Some(msg));
        prop_assert_eq!(buf.len(), remaining);
    }
    prop_assert!(codec
        .decode(&mut buf)
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .is_none());
    Ok(())
}
