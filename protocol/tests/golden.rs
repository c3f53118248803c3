//! Golden bytes: the exact frames of a few small messages, written out by hand. A change
//! of the wire format (field order, integer width, byte order, variant order) fails here.
//! The same bytes are the worked examples of `docs/PROTOCOL.md`; keep the two in step.

mod common;

use common::*;
use corral_protocol::frame::{decode_frame, decode_payload, FrameError};
use corral_protocol::{
    ClientMessage, CreateMode, CreateRequest, ErrorCode, ErrorInfo, EventKind, Hello, HelloReply,
    LockEvent, LockKind, LockRequest, Op, OpResult, Request, Response, ServerMessage,
    SessionGranted, SessionRequest, Stat, WatchEvent, DEFAULT_MAX_FRAME_BYTES, MAGIC,
    PROTOCOL_VERSION,
};

/// The `Lock` request of the golden frames and of PROTOCOL.md's worked example.
fn lock_request() -> ClientMessage {
    ClientMessage::Request(Request {
        xid: 7,
        op: Op::Lock(LockRequest {
            lock: "/l".into(),
            kind: LockKind::Semaphore { permits: 3 },
            try_only: false,
            lease: Some(9),
            lock_delay_ms: 1000,
            data: b"me".to_vec(),
        }),
    })
}

/// The `LockGranted` message of the golden frames and of PROTOCOL.md's worked example.
fn lock_granted() -> ServerMessage {
    ServerMessage::LockGranted(LockEvent {
        lock: "/l".into(),
        node: "/l/s-0000000001".into(),
        token: 12,
        zxid: 15,
    })
}

/// Checks that `msg` encodes to `expected_hex` (a whole frame) and decodes back from it.
fn golden<M: Message>(msg: M, expected_hex: &str) {
    let expected = hex(expected_hex);
    let actual = frame(&msg);
    assert_eq!(
        to_hex(&actual),
        to_hex(&expected),
        "wire format of {msg:?} changed"
    );
    let (decoded, used) = decode_frame::<M>(&expected, MAX)
        .expect("golden bytes decode")
        .expect("golden bytes are a whole frame");
    assert_eq!(decoded, msg);
    assert_eq!(used, expected.len());
}

#[test]
fn hello_new_session() {
    golden(
        Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 0),
        "00 00 00 1a
         4c 52 52 43
         01 00
         00 00 00 00
         10 27 00 00 00 00 00 00
         00 00 00 00 00 00 00 00",
    );
}

#[test]
fn hello_resume_session() {
    golden(
        Hello::new(
            SessionRequest::Resume {
                session_id: 42,
                secret: 0x0123_4567_89ab_cdef,
            },
            17,
        ),
        "00 00 00 22
         4c 52 52 43
         01 00
         01 00 00 00
         2a 00 00 00 00 00 00 00
         ef cd ab 89 67 45 23 01
         11 00 00 00 00 00 00 00",
    );
}

#[test]
fn hello_reply_accepted() {
    golden(
        HelloReply::Accepted(SessionGranted {
            session_id: 5,
            secret: 0x0123_4567_89ab_cdef,
            ttl_ms: 10_000,
            node_id: 1,
            zxid: 5,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u64,
            next_xid: 1,
        }),
        "00 00 00 3c
         00 00 00 00
         05 00 00 00 00 00 00 00
         ef cd ab 89 67 45 23 01
         10 27 00 00 00 00 00 00
         01 00 00 00 00 00 00 00
         05 00 00 00 00 00 00 00
         00 00 11 00 00 00 00 00
         01 00 00 00 00 00 00 00",
    );
}

#[test]
fn hello_reply_refused() {
    golden(
        HelloReply::Refused(ErrorInfo::new(ErrorCode::ProtocolMismatch, "bad")),
        "00 00 00 14
         01 00 00 00
         11 00 00 00
         03 00 00 00 00 00 00 00 62 61 64
         00",
    );
}

#[test]
fn request_get_data() {
    golden(
        ClientMessage::Request(Request {
            xid: 1,
            op: Op::GetData {
                path: "/a".into(),
                watch: false,
            },
        }),
        "00 00 00 1b
         00 00 00 00
         01 00 00 00 00 00 00 00
         03 00 00 00
         02 00 00 00 00 00 00 00 2f 61
         00",
    );
}

#[test]
fn request_ping() {
    golden(
        ClientMessage::Request(Request {
            xid: 2,
            op: Op::Ping,
        }),
        "00 00 00 10
         00 00 00 00
         02 00 00 00 00 00 00 00
         08 00 00 00",
    );
}

#[test]
fn request_create_ephemeral_sequential() {
    golden(
        ClientMessage::Request(Request {
            xid: 3,
            op: Op::Create(CreateRequest {
                path: "/lock-".into(),
                data: Vec::new(),
                mode: CreateMode::EphemeralSequential,
                make_parents: false,
            }),
        }),
        "00 00 00 2b
         00 00 00 00
         03 00 00 00 00 00 00 00
         00 00 00 00
         06 00 00 00 00 00 00 00 2f 6c 6f 63 6b 2d
         00 00 00 00 00 00 00 00
         03 00 00 00
         00",
    );
}

#[test]
fn request_set_data_at_version() {
    golden(
        ClientMessage::Request(Request {
            xid: 4,
            op: Op::SetData {
                path: "/a".into(),
                data: b"hi".to_vec(),
                version: Some(1),
            },
        }),
        "00 00 00 29
         00 00 00 00
         04 00 00 00 00 00 00 00
         04 00 00 00
         02 00 00 00 00 00 00 00 2f 61
         02 00 00 00 00 00 00 00 68 69
         01 01 00 00 00",
    );
}

#[test]
fn request_lock() {
    golden(
        lock_request(),
        "00 00 00 3e
         00 00 00 00
         07 00 00 00 00 00 00 00
         0d 00 00 00
         02 00 00 00 00 00 00 00 2f 6c
         03 00 00 00
         03 00 00 00
         00
         01 09 00 00 00 00 00 00 00
         e8 03 00 00 00 00 00 00
         02 00 00 00 00 00 00 00 6d 65",
    );
}

#[test]
fn request_release() {
    golden(
        ClientMessage::Request(Request {
            xid: 8,
            op: Op::Release {
                node: "/l/x".into(),
                token: 9,
            },
        }),
        "00 00 00 24
         00 00 00 00
         08 00 00 00 00 00 00 00
         15 00 00 00
         04 00 00 00 00 00 00 00 2f 6c 2f 78
         09 00 00 00 00 00 00 00",
    );
}

#[test]
fn request_get_children_page() {
    golden(
        ClientMessage::Request(Request {
            xid: 3,
            op: Op::GetChildrenPage {
                path: "/d".into(),
                after: "a".into(),
                max_names: 100,
                max_bytes: 65536,
            },
        }),
        "00 00 00 2b
         00 00 00 00
         03 00 00 00 00 00 00 00
         16 00 00 00
         02 00 00 00 00 00 00 00 2f 64
         01 00 00 00 00 00 00 00 61
         64 00 00 00
         00 00 01 00",
    );
}

#[test]
fn response_pong() {
    golden(
        ServerMessage::Response(Response {
            xid: 2,
            zxid: 7,
            result: Ok(OpResult::Pong),
        }),
        "00 00 00 1c
         00 00 00 00
         02 00 00 00 00 00 00 00
         07 00 00 00 00 00 00 00
         00 00 00 00
         08 00 00 00",
    );
}

#[test]
fn response_data_with_stat() {
    golden(
        ServerMessage::Response(Response {
            xid: 6,
            zxid: 9,
            result: Ok(OpResult::Data {
                data: b"hi".to_vec(),
                stat: Stat {
                    czxid: 3,
                    mzxid: 5,
                    pzxid: 3,
                    ctime_ms: 1_700_000_000_000,
                    mtime_ms: 1_700_000_000_500,
                    version: 1,
                    cversion: 0,
                    ephemeral_owner: 0,
                    data_length: 2,
                    num_children: 0,
                },
            }),
        }),
        "00 00 00 66
         00 00 00 00
         06 00 00 00 00 00 00 00
         09 00 00 00 00 00 00 00
         00 00 00 00
         03 00 00 00
         02 00 00 00 00 00 00 00 68 69
         03 00 00 00 00 00 00 00
         05 00 00 00 00 00 00 00
         03 00 00 00 00 00 00 00
         00 68 e5 cf 8b 01 00 00
         f4 69 e5 cf 8b 01 00 00
         01 00 00 00
         00 00 00 00
         00 00 00 00 00 00 00 00
         02 00 00 00
         00 00 00 00",
    );
}

#[test]
fn response_error_no_node() {
    golden(
        ServerMessage::Response(Response {
            xid: 1,
            zxid: 7,
            result: Err(ErrorInfo::new(ErrorCode::NoNode, "/a")),
        }),
        "00 00 00 27
         00 00 00 00
         01 00 00 00 00 00 00 00
         07 00 00 00 00 00 00 00
         01 00 00 00
         07 00 00 00
         02 00 00 00 00 00 00 00 2f 61
         00",
    );
}

#[test]
fn response_error_of_multi_op() {
    golden(
        ServerMessage::Response(Response {
            xid: 5,
            zxid: 9,
            result: Err(ErrorInfo::new(ErrorCode::BadVersion, "").at_op(1)),
        }),
        "00 00 00 29
         00 00 00 00
         05 00 00 00 00 00 00 00
         09 00 00 00 00 00 00 00
         01 00 00 00
         08 00 00 00
         00 00 00 00 00 00 00 00
         01 01 00 00 00",
    );
}

#[test]
fn watch_event() {
    golden(
        ServerMessage::Watch(WatchEvent {
            kind: EventKind::NodeDataChanged,
            path: "/a".into(),
            zxid: 9,
        }),
        "00 00 00 1a
         01 00 00 00
         02 00 00 00
         02 00 00 00 00 00 00 00 2f 61
         09 00 00 00 00 00 00 00",
    );
}

#[test]
fn lock_granted_event() {
    golden(
        lock_granted(),
        "00 00 00 35
         03 00 00 00
         02 00 00 00 00 00 00 00 2f 6c
         0f 00 00 00 00 00 00 00 2f 6c 2f 73 2d 30 30 30 30 30 30 30 30 30 31
         0c 00 00 00 00 00 00 00
         0f 00 00 00 00 00 00 00",
    );
}

#[test]
fn goodbye() {
    golden(
        ServerMessage::Goodbye(ErrorInfo::new(ErrorCode::SessionMoved, "moved")),
        "00 00 00 16
         02 00 00 00
         0d 00 00 00
         05 00 00 00 00 00 00 00 6d 6f 76 65 64
         00",
    );
}

#[test]
fn constants() {
    assert_eq!(MAGIC, 0x4352_524C);
    assert_eq!(&MAGIC.to_be_bytes(), b"CRRL");
    // On the wire the magic is a little-endian u32 like every integer in a payload, so
    // its bytes read "LRRC".
    assert_eq!(
        &payload(&Hello::new(SessionRequest::New { ttl_ms: 1 }, 0))[..4],
        b"LRRC"
    );
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(DEFAULT_MAX_FRAME_BYTES, 1_114_112);
}

/// The wire value of an error code is its position in the enum; codes are only appended.
#[test]
fn error_code_wire_values_are_stable() {
    for (position, code) in ALL_ERROR_CODES.iter().enumerate() {
        let index = u32::try_from(position).expect("few codes");
        assert_eq!(error_code_index(*code), index, "{code:?}");
        assert_eq!(payload(code), index.to_le_bytes().to_vec(), "{code:?}");
        let decoded: ErrorCode = decode_payload(&index.to_le_bytes()).expect("a known code");
        assert_eq!(decoded, *code);
        assert!(!code.description().is_empty());
        assert_eq!(code.to_string(), format!("{code:?}"));
    }
    // A few spelled out, as a reader of PROTOCOL.md would see them.
    assert_eq!(payload(&ErrorCode::SystemError), hex("00 00 00 00"));
    assert_eq!(payload(&ErrorCode::NoNode), hex("07 00 00 00"));
    assert_eq!(payload(&ErrorCode::BadVersion), hex("08 00 00 00"));
    assert_eq!(payload(&ErrorCode::NodeExists), hex("0a 00 00 00"));
    assert_eq!(payload(&ErrorCode::SessionExpired), hex("0c 00 00 00"));
    assert_eq!(payload(&ErrorCode::SessionMoved), hex("0d 00 00 00"));
    assert_eq!(payload(&ErrorCode::FrameTooLarge), hex("10 00 00 00"));
    assert_eq!(payload(&ErrorCode::LimitExceeded), hex("12 00 00 00"));
    assert_eq!(payload(&ErrorCode::StaleRequest), hex("14 00 00 00"));
    assert_eq!(payload(&ErrorCode::Unavailable), hex("15 00 00 00"));
    assert_eq!(payload(&ErrorCode::AuthFailed), hex("16 00 00 00"));
    assert_eq!(payload(&ErrorCode::LockHeld), hex("17 00 00 00"));
    assert_eq!(payload(&ErrorCode::NotLockOwner), hex("18 00 00 00"));
    assert_eq!(payload(&ErrorCode::LockNotHeld), hex("19 00 00 00"));
    assert_eq!(payload(&ErrorCode::NoLease), hex("1a 00 00 00"));
    assert_eq!(payload(&ErrorCode::Deadlock), hex("1b 00 00 00"));
    // One past the last code is not a code.
    assert!(matches!(
        decode_payload::<ErrorCode>(&28u32.to_le_bytes()),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn retryable_codes() {
    let retryable: Vec<ErrorCode> = ALL_ERROR_CODES
        .iter()
        .copied()
        .filter(|c| c.is_retryable())
        .collect();
    assert_eq!(
        retryable,
        [
            ErrorCode::ConnectionLoss,
            ErrorCode::OperationTimeout,
            ErrorCode::Unavailable
        ]
    );
}

/// Prints the table of error codes in `docs/PROTOCOL.md` (run with `--nocapture`), and
/// checks the document lists each code with its index and description.
#[test]
fn protocol_md_lists_every_error_code() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/PROTOCOL.md exists");
    let mut missing = Vec::new();
    for (index, code) in ALL_ERROR_CODES.iter().enumerate() {
        let row = format!("| {index} | `{code:?}` | {} |", code.description());
        println!("{row}");
        if !doc.contains(&row) {
            missing.push(row);
        }
    }
    assert!(
        missing.is_empty(),
        "PROTOCOL.md lacks these rows:\n{}",
        missing.join("\n")
    );
}

/// The golden frames appear in `docs/PROTOCOL.md` as worked examples.
#[test]
fn protocol_md_shows_the_golden_frames() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/PROTOCOL.md exists");
    // The document's hex dumps, with all whitespace removed, contain each frame.
    // A dump line is hex bytes, optionally followed by a `#` comment.
    let is_byte = |w: &str| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit());
    let doc_hex: String = doc
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|t| !t.is_empty() && t.split_whitespace().all(is_byte))
        .flat_map(str::split_whitespace)
        .collect();
    let examples: Vec<(&str, Vec<u8>)> = vec![
        (
            "Hello (new session)",
            frame(&Hello::new(SessionRequest::New { ttl_ms: 10_000 }, 0)),
        ),
        (
            "Request GetData",
            frame(&ClientMessage::Request(Request {
                xid: 1,
                op: Op::GetData {
                    path: "/a".into(),
                    watch: false,
                },
            })),
        ),
        (
            "Response Pong",
            frame(&ServerMessage::Response(Response {
                xid: 2,
                zxid: 7,
                result: Ok(OpResult::Pong),
            })),
        ),
        (
            "Response NoNode",
            frame(&ServerMessage::Response(Response {
                xid: 1,
                zxid: 7,
                result: Err(ErrorInfo::new(ErrorCode::NoNode, "/a")),
            })),
        ),
        (
            "Watch",
            frame(&ServerMessage::Watch(WatchEvent {
                kind: EventKind::NodeDataChanged,
                path: "/a".into(),
                zxid: 9,
            })),
        ),
        ("Request Lock", frame(&lock_request())),
        ("LockGranted", frame(&lock_granted())),
    ];
    for (name, bytes) in examples {
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            doc_hex.contains(&want),
            "PROTOCOL.md lacks the frame of {name}: {}",
            to_hex(&bytes)
        );
    }
}
