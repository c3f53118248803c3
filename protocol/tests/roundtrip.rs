//! Every message type, with every variant, survives encoding and decoding; frames in one
//! buffer decode one by one; every strict prefix of a frame is "incomplete"; and the bytes
//! are exactly those `docs/PROTOCOL.md` describes (checked against a hand-written encoder).

mod common;

use bytes::BytesMut;
use common::*;
use corral_protocol::frame::{check_frame, decode_frame, encode_frame, LENGTH_PREFIX_BYTES};
use corral_protocol::{ClientMessage, Codec, Hello, HelloReply, ServerMessage};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use std::collections::BTreeSet;
use tokio_util::codec::{Decoder, Encoder};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// Every strict prefix of `frame` is "incomplete" for `decode_frame` and the codec (which
/// must then leave the buffer's bytes alone), never an error.
fn check_prefixes<M: Message>(frame: &[u8]) -> Result<(), TestCaseError> {
    let mut codec = Codec::<M, M>::new(MAX);
    for end in 0..frame.len() {
        let prefix = &frame[..end];
        match decode_frame::<M>(prefix, MAX) {
            Ok(None) => {}
            Ok(Some(_)) => return Err(TestCaseError::fail(format!("prefix {end} decoded"))),
            Err(e) => return Err(TestCaseError::fail(format!("prefix {end}: {e}"))),
        }
        prop_assert!(matches!(check_frame(prefix, MAX), Ok(None)));
        let mut buf = BytesMut::from(prefix);
        match codec.decode(&mut buf) {
            Ok(None) => {}
            Ok(Some(_)) => return Err(TestCaseError::fail(format!("prefix {end} decoded"))),
            Err(e) => return Err(TestCaseError::fail(format!("prefix {end}: {e}"))),
        }
        prop_assert_eq!(&buf[..], prefix);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    // (a) round trips, and (g') the bytes match the specification's encoder.

    #[test]
    fn hello_roundtrips(msg in hello()) {
        check_roundtrip(&msg)?;
        prop_assert_eq!(payload(&msg), spec::hello(&msg));
        prop_assert_eq!(frame(&msg), spec::frame(&spec::hello(&msg)));
    }

    #[test]
    fn hello_reply_roundtrips(msg in hello_reply()) {
        check_roundtrip(&msg)?;
        prop_assert_eq!(payload(&msg), spec::hello_reply(&msg));
    }

    #[test]
    fn client_message_roundtrips(msg in client_message()) {
        check_roundtrip(&msg)?;
        prop_assert_eq!(payload(&msg), spec::client_message(&msg));
    }

    #[test]
    fn server_message_roundtrips(msg in server_message()) {
        check_roundtrip(&msg)?;
        prop_assert_eq!(payload(&msg), spec::server_message(&msg));
    }

    // Variant indices sit where the document says, for every type in the protocol.

    #[test]
    fn variant_indices_are_on_the_wire(
        client in client_message(),
        server in server_message(),
        reply in hello_reply(),
        h in hello(),
        m in multi_op(),
        r in multi_result(),
        mode in create_mode(),
        kind in watcher_kind(),
        awm in add_watch_mode(),
        ev in event_kind(),
        code in error_code(),
        lk in lock_kind(),
    ) {
        // ClientMessage tag, then Request { xid: u64, op: Op }.
        let p = payload(&client);
        prop_assert_eq!(leading_u32(&p), client_message_index(&client));
        let ClientMessage::Request(req) = &client;
        prop_assert_eq!(leading_u32(&p[12..]), op_index(&req.op));
        prop_assert_eq!(leading_u32(&payload(&req.op)), op_index(&req.op));

        // ServerMessage tag; a Response is xid, zxid, then the Result tag (Ok 0, Err 1).
        let p = payload(&server);
        prop_assert_eq!(leading_u32(&p), server_message_index(&server));
        if let ServerMessage::Response(resp) = &server {
            match &resp.result {
                Ok(ok) => {
                    prop_assert_eq!(leading_u32(&p[20..]), 0);
                    prop_assert_eq!(leading_u32(&p[24..]), op_result_index(ok));
                }
                Err(e) => {
                    prop_assert_eq!(leading_u32(&p[20..]), 1);
                    prop_assert_eq!(leading_u32(&p[24..]), error_code_index(e.code));
                }
            }
        }

        prop_assert_eq!(leading_u32(&payload(&reply)), hello_reply_index(&reply));
        // Hello: magic u32, version u16, then the SessionRequest tag at offset 6.
        prop_assert_eq!(leading_u32(&payload(&h)[6..]), session_request_index(&h.session));
        prop_assert_eq!(leading_u32(&payload(&m)), multi_op_index(&m));
        prop_assert_eq!(leading_u32(&payload(&r)), multi_result_index(&r));
        prop_assert_eq!(payload(&mode), create_mode_index(mode).to_le_bytes().to_vec());
        prop_assert_eq!(payload(&kind), watcher_kind_index(kind).to_le_bytes().to_vec());
        prop_assert_eq!(payload(&awm), add_watch_mode_index(awm).to_le_bytes().to_vec());
        prop_assert_eq!(payload(&ev), event_kind_index(ev).to_le_bytes().to_vec());
        prop_assert_eq!(payload(&code), error_code_index(code).to_le_bytes().to_vec());
        prop_assert_eq!(leading_u32(&payload(&lk)), lock_kind_index(lk));
    }

    // (b) several frames in one buffer decode one by one, in order, also when the bytes
    // arrive in arbitrary chunks (as from a TCP stream).

    #[test]
    fn concatenated_frames_decode_in_order(
        msgs in vec(server_message(), 1..8),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut all = BytesMut::new();
        let mut codec = Codec::<ServerMessage, ServerMessage>::new(MAX);
        for m in &msgs {
            codec.encode(m.clone(), &mut all).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }

        // decode_frame, walking the offsets.
        let mut offset = 0;
        for m in &msgs {
            let (decoded, used) = decode_frame::<ServerMessage>(&all[offset..], MAX)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .ok_or_else(|| TestCaseError::fail("incomplete"))?;
            prop_assert_eq!(&decoded, m);
            prop_assert_eq!(used, frame(m).len());
            offset += used;
        }
        prop_assert_eq!(offset, all.len());
        prop_assert!(decode_frame::<ServerMessage>(&all[offset..], MAX)
            .map_err(|e| TestCaseError::fail(e.to_string()))?.is_none());

        // The codec over the whole buffer.
        let mut buf = all.clone();
        for m in &msgs {
            let decoded = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.as_ref(), Some(m));
        }
        prop_assert!(buf.is_empty());
        prop_assert!(codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?.is_none());

        // The codec fed in chunks.
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(all.len() + 1)).collect();
        points.push(all.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in points {
            buf.extend_from_slice(&all[start..end]);
            start = end;
            while let Some(m) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                decoded.push(m);
            }
        }
        prop_assert_eq!(decoded, msgs);
        prop_assert!(buf.is_empty());
    }

    /// A page of locks is budgeted by `LockState::encoded_bytes_bound`, without
    /// encoding: it must never be below the real encoded size.
    #[test]
    fn a_lock_states_size_bound_is_never_below_its_encoding(l in lock_state()) {
        let encoded = payload(&l).len();
        prop_assert!(l.encoded_bytes_bound() >= encoded, "{} < {encoded}", l.encoded_bytes_bound());
    }

    #[test]
    fn mixed_handshake_then_messages_decode_in_order(
        h in hello(),
        reqs in vec(client_message(), 0..6),
    ) {
        // A client's byte stream: one Hello then requests, decoded with the codec switched
        // after the first frame, as the server does.
        let mut buf = BytesMut::new();
        encode_frame(&h, &mut buf, MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for r in &reqs {
            encode_frame(r, &mut buf, MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let mut hello_codec = Codec::<Hello, HelloReply>::new(MAX);
        let got = hello_codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got.as_ref(), Some(&h));
        let mut codec = hello_codec.retype::<ClientMessage, ServerMessage>();
        prop_assert_eq!(codec.max_frame_bytes(), MAX);
        for r in &reqs {
            let got = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got.as_ref(), Some(r));
        }
        prop_assert!(buf.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    // (c) every strict prefix of a valid frame is incomplete, never an error.

    #[test]
    fn prefixes_of_hello_are_incomplete(msg in hello()) {
        check_prefixes::<Hello>(&frame(&msg))?;
    }

    #[test]
    fn prefixes_of_hello_reply_are_incomplete(msg in hello_reply()) {
        check_prefixes::<HelloReply>(&frame(&msg))?;
    }

    #[test]
    fn prefixes_of_client_message_are_incomplete(msg in client_message()) {
        check_prefixes::<ClientMessage>(&frame(&msg))?;
    }

    #[test]
    fn prefixes_of_server_message_are_incomplete(msg in server_message()) {
        check_prefixes::<ServerMessage>(&frame(&msg))?;
    }

    #[test]
    fn prefixes_of_concatenated_frames_decode_only_whole_frames(
        msgs in vec(client_message(), 1..4),
    ) {
        // Cut anywhere: the codec returns exactly the frames that are whole.
        let frames: Vec<Vec<u8>> = msgs.iter().map(frame).collect();
        let all: Vec<u8> = frames.concat();
        for end in 0..=all.len() {
            let mut codec = Codec::<ClientMessage, ClientMessage>::new(MAX);
            let mut buf = BytesMut::from(&all[..end]);
            let mut got = Vec::new();
            while let Some(m) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(m);
            }
            let mut whole = 0;
            let mut bytes = 0;
            for f in &frames {
                if bytes + f.len() <= end {
                    bytes += f.len();
                    whole += 1;
                }
                else { break; }
            }
            prop_assert_eq!(&got[..], &msgs[..whole]);
            prop_assert_eq!(buf.len(), end - bytes);
        }
    }
}

/// The strategies reach every variant of every enum (a strategy that silently stopped
/// producing a variant would make the properties above weaker without failing them).
#[test]
fn strategies_cover_every_variant() {
    let mut runner = TestRunner::deterministic();
    let mut ops = BTreeSet::new();
    let mut multi_ops = BTreeSet::new();
    let mut results = BTreeSet::new();
    let mut multi_results = BTreeSet::new();
    let mut codes = BTreeSet::new();
    let mut op_index_present = (false, false);
    let mut server = BTreeSet::new();
    let mut result_tags = BTreeSet::new();
    let mut events = BTreeSet::new();
    let mut modes = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut watch_modes = BTreeSet::new();
    let mut sessions = BTreeSet::new();
    let mut replies = BTreeSet::new();
    let mut lock_kinds = BTreeSet::new();
    let mut lease_present = (false, false);
    let client_strategy = client_message();
    let server_strategy = server_message();
    let hello_strategy = hello();
    let reply_strategy = hello_reply();
    for _ in 0..4000 {
        let ClientMessage::Request(req) = client_strategy
            .new_tree(&mut runner)
            .expect("a value")
            .current();
        ops.insert(op_index(&req.op));
        match &req.op {
            corral_protocol::Op::Multi(ms) => {
                for m in ms {
                    multi_ops.insert(multi_op_index(m));
                    if let corral_protocol::MultiOp::Create(c) = m {
                        modes.insert(create_mode_index(c.mode));
                    }
                }
            }
            corral_protocol::Op::Create(c) => {
                modes.insert(create_mode_index(c.mode));
            }
            corral_protocol::Op::AddWatch { mode, .. } => {
                watch_modes.insert(add_watch_mode_index(*mode));
            }
            corral_protocol::Op::RemoveWatches { kind, .. } => {
                kinds.insert(watcher_kind_index(*kind));
            }
            corral_protocol::Op::Lock(r) => {
                lock_kinds.insert(lock_kind_index(r.kind));
                match r.lease {
                    Some(_) => lease_present.0 = true,
                    None => lease_present.1 = true,
                }
            }
            _ => {}
        }
        let s = server_strategy
            .new_tree(&mut runner)
            .expect("a value")
            .current();
        server.insert(server_message_index(&s));
        match &s {
            ServerMessage::Response(r) => match &r.result {
                Ok(ok) => {
                    result_tags.insert(0);
                    results.insert(op_result_index(ok));
                    if let corral_protocol::OpResult::Multi(rs) = ok {
                        for r in rs {
                            multi_results.insert(multi_result_index(r));
                        }
                    }
                }
                Err(e) => {
                    result_tags.insert(1);
                    codes.insert(error_code_index(e.code));
                    match e.op_index {
                        Some(_) => op_index_present.0 = true,
                        None => op_index_present.1 = true,
                    }
                }
            },
            ServerMessage::Watch(w) => {
                events.insert(event_kind_index(w.kind));
            }
            ServerMessage::Goodbye(e) => {
                codes.insert(error_code_index(e.code));
            }
            ServerMessage::LockGranted(_) | ServerMessage::LockLost(_) => {}
        }
        let h = hello_strategy
            .new_tree(&mut runner)
            .expect("a value")
            .current();
        sessions.insert(session_request_index(&h.session));
        let r = reply_strategy
            .new_tree(&mut runner)
            .expect("a value")
            .current();
        replies.insert(hello_reply_index(&r));
    }
    let all = |n: u32| (0..n).collect::<BTreeSet<u32>>();
    assert_eq!(ops, all(corral_protocol::OP_COUNT), "Op");
    assert_eq!(multi_ops, all(5), "MultiOp");
    assert_eq!(results, all(20), "OpResult");
    assert_eq!(multi_results, all(5), "MultiResult");
    assert_eq!(codes, all(28), "ErrorCode");
    assert_eq!(op_index_present, (true, true), "ErrorInfo.op_index");
    assert_eq!(server, all(5), "ServerMessage");
    assert_eq!(result_tags, all(2), "Result");
    assert_eq!(events, all(4), "EventKind");
    assert_eq!(modes, all(5), "CreateMode");
    assert_eq!(kinds, all(4), "WatcherKind");
    assert_eq!(watch_modes, all(2), "AddWatchMode");
    assert_eq!(sessions, all(2), "SessionRequest");
    assert_eq!(replies, all(2), "HelloReply");
    assert_eq!(lock_kinds, all(4), "LockKind");
    assert_eq!(lease_present, (true, true), "LockRequest.lease");
}

/// A frame whose payload is exactly `max_frame_bytes` long is accepted.
#[test]
fn a_frame_of_exactly_the_limit_is_accepted() {
    let msg = ServerMessage::Watch(corral_protocol::WatchEvent {
        kind: corral_protocol::EventKind::NodeCreated,
        path: "/exactly".into(),
        zxid: 1,
    });
    let f = frame(&msg);
    let max = f.len() - LENGTH_PREFIX_BYTES;
    let (decoded, used) = decode_frame::<ServerMessage>(&f, max)
        .expect("not too large")
        .expect("complete");
    assert_eq!(decoded, msg);
    assert_eq!(used, f.len());
    let mut buf = BytesMut::new();
    encode_frame(&msg, &mut buf, max).expect("fits exactly");
    assert_eq!(&buf[..], &f[..]);
}

proptest! {
    #![proptest_config(config())]

    /// `frame_len` counts exactly the bytes `encode_frame` writes, for every message
    /// (the server's outgoing queues count bytes with it before encoding anything).
    #[test]
    fn frame_len_is_the_length_of_the_encoded_frame(
        server in server_message(),
        client in client_message(),
    ) {
        let mut buf = BytesMut::new();
        encode_frame(&server, &mut buf, usize::MAX).expect("encode");
        prop_assert_eq!(corral_protocol::frame::frame_len(&server), buf.len());
        buf.clear();
        encode_frame(&client, &mut buf, usize::MAX).expect("encode");
        prop_assert_eq!(corral_protocol::frame::frame_len(&client), buf.len());
    }
}
