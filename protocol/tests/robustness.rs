//! Hostile input: random bytes and damaged frames decode to a message or an error, never a
//! panic; frames over the limit are refused as soon as their length prefix is known, and
//! messages over the limit are not encoded.

mod common;

use bytes::BytesMut;
use common::*;
use corral_protocol::frame::{
    check_frame, decode_frame, decode_payload, encode_frame, FrameError, LENGTH_PREFIX_BYTES,
};
use corral_protocol::{
    ClientMessage, Codec, Hello, HelloReply, Incoming, IncomingRequest, Op, Request,
    RequestDecoder, ServerDecoder, ServerMessage, DEFAULT_MAX_FRAME_BYTES, OP_COUNT,
};
use proptest::collection::vec;
use proptest::prelude::*;
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};

/// The allocation limit inside `frame::wire_config` (private there; keep in step).
const DECODE_LIMIT_BYTES: usize = 64 << 20;

/// Runs `decoder` over `bytes` until it needs more bytes or fails, handing `check` each
/// item with the bytes it was read from; `check` says whether to go on.
fn each_item<D: Decoder>(
    mut decoder: D,
    bytes: &[u8],
    mut check: impl FnMut(D::Item, &[u8]) -> Result<bool, TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let mut consumed = 0;
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(item)) => {
                let used = before - buf.len();
                if !check(item, &bytes[consumed..consumed + used])? {
                    return Ok(());
                }
                consumed += used;
            }
            Ok(None) | Err(_) => return Ok(()),
        }
    }
}

/// Feeds `bytes` to `decode_frame` and to the codec (in a loop until it needs more bytes
/// or fails). Whatever decodes must re-encode to exactly the bytes it came from: the
/// encoding is canonical, so a damaged frame cannot decode to a message that encodes
/// differently.
fn decode_anything<M: Message>(bytes: &[u8], max: usize) -> Result<(), TestCaseError> {
    if let Ok(Some((msg, used))) = decode_frame::<M>(bytes, max) {
        prop_assert_eq!(&frame_of(&msg, max)?, &bytes[..used]);
    }
    each_item(Codec::<M, M>::new(max), bytes, |msg, frame| {
        prop_assert!(frame.len() >= LENGTH_PREFIX_BYTES);
        prop_assert_eq!(&frame_of(&msg, max)?, frame);
        Ok(true)
    })
}

fn frame_of<M: Message>(msg: &M, max: usize) -> Result<Vec<u8>, TestCaseError> {
    corral_protocol::frame::frame_to_vec(msg, max)
        .map_err(|e| TestCaseError::fail(format!("a decoded message does not re-encode: {e}")))
}

fn decode_as_every_type(bytes: &[u8], max: usize) -> Result<(), TestCaseError> {
    decode_anything::<Hello>(bytes, max)?;
    decode_anything::<HelloReply>(bytes, max)?;
    decode_anything::<ClientMessage>(bytes, max)?;
    decode_anything::<ServerMessage>(bytes, max)?;
    decode_with_readers(bytes, max)
}

/// Feeds `bytes` to the connection readers, the client's `ServerDecoder` and the server's
/// `RequestDecoder`, until they need more bytes or fail: what they read as a message must
/// re-encode to its frame, and what they skip must be one whole frame (an oversized
/// response from its prefix on, an unknown operation's request).
fn decode_with_readers(bytes: &[u8], max: usize) -> Result<(), TestCaseError> {
    each_item(ServerDecoder::new(max), bytes, |item, frame| match item {
        Incoming::Message(msg) => {
            prop_assert_eq!(&frame_of(&msg, max)?, frame);
            Ok(true)
        }
        Incoming::Oversized(o) => {
            prop_assert!(o.len > max);
            // The rest of it is dropped as it arrives: stop here.
            Ok(false)
        }
    })?;
    each_item(RequestDecoder::new(max), bytes, |item, frame| {
        match item {
            IncomingRequest::Message(msg) => prop_assert_eq!(&frame_of(&msg, max)?, frame),
            IncomingRequest::UnknownOp { op_index, .. } => {
                prop_assert!(op_index >= OP_COUNT);
                let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                prop_assert_eq!(len as usize + LENGTH_PREFIX_BYTES, frame.len());
            }
        }
        Ok(true)
    })
}

/// A damage done to a valid frame.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit anywhere (prefix included).
    FlipBit(prop::sample::Index, u8),
    /// Cut the payload short and fix the length prefix to match.
    Truncate(prop::sample::Index),
    /// Insert bytes inside the payload and fix the length prefix to match.
    Insert(prop::sample::Index, Vec<u8>),
    /// Overwrite bytes inside the payload (length unchanged).
    Overwrite(prop::sample::Index, Vec<u8>),
    /// Append bytes after the payload, inside the frame (length prefix fixed).
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), vec(any::<u8>(), 1..16))
            .prop_map(|(i, g)| Mutation::Insert(i, g)),
        1 => (any::<prop::sample::Index>(), vec(any::<u8>(), 1..9))
            .prop_map(|(i, g)| Mutation::Overwrite(i, g)),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

fn apply(frame: &mut Vec<u8>, m: &Mutation) {
    let payload_len = frame.len() - LENGTH_PREFIX_BYTES;
    match m {
        Mutation::FlipBit(i, bit) => {
            let at = i.index(frame.len());
            frame[at] ^= 1 << bit;
        }
        Mutation::Truncate(i) => {
            frame.truncate(LENGTH_PREFIX_BYTES + i.index(payload_len.max(1)));
            patch_length(frame);
        }
        Mutation::Insert(i, garbage) => {
            let at = LENGTH_PREFIX_BYTES + i.index(payload_len + 1);
            frame.splice(at..at, garbage.iter().copied());
            patch_length(frame);
        }
        Mutation::Overwrite(i, garbage) => {
            if payload_len > 0 {
                let at = LENGTH_PREFIX_BYTES + i.index(payload_len);
                for (k, g) in garbage.iter().enumerate() {
                    if let Some(b) = frame.get_mut(at + k) {
                        *b = *g;
                    }
                }
            }
        }
        Mutation::Append(garbage) => {
            frame.extend_from_slice(garbage);
            patch_length(frame);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    // (d) random bytes and damaged frames: Ok or Err, never a panic.

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        decode_as_every_type(&bytes, MAX)?;
    }

    #[test]
    fn random_payloads_with_a_valid_prefix_never_panic(payload in vec(any::<u8>(), 0..512)) {
        // Most random prefixes announce a frame far over the limit; give random payloads
        // a correct length so that the message decoder itself sees them.
        let mut f = vec![0u8; LENGTH_PREFIX_BYTES];
        f.extend_from_slice(&payload);
        patch_length(&mut f);
        decode_as_every_type(&f, MAX)?;
    }

    #[test]
    fn random_payloads_after_a_valid_tag_never_panic(
        tag in 0u32..6,
        op in 0u32..20,
        rest in vec(any::<u8>(), 0..256),
    ) {
        // Random bytes after plausible leading variant indices reach deeper into the
        // decoder than uniformly random bytes do.
        let mut payload = tag.to_le_bytes().to_vec();
        payload.extend_from_slice(&rest[..rest.len().min(8)]);
        payload.extend_from_slice(&op.to_le_bytes());
        payload.extend_from_slice(&rest[rest.len().min(8)..]);
        let f = spec::frame(&payload);
        decode_as_every_type(&f, MAX)?;
    }

    #[test]
    fn damaged_frames_never_panic(
        msg in any_message(),
        mutations in vec(mutation(), 1..4),
        max in prop_oneof![Just(MAX), 0usize..256],
    ) {
        let mut f = msg.frame();
        for m in &mutations {
            apply(&mut f, m);
        }
        decode_as_every_type(&f, max)?;
    }

    #[test]
    fn damaged_frames_followed_by_a_valid_one_never_panic(
        first in any_message(),
        mutation in mutation(),
        second in any_message(),
    ) {
        let mut f = first.frame();
        apply(&mut f, &mutation);
        f.extend_from_slice(&second.frame());
        decode_as_every_type(&f, MAX)?;
    }

    // (e) a length prefix over the limit is refused as soon as the 4 bytes are there.

    #[test]
    fn oversized_prefix_is_refused_at_once(
        max in prop_oneof![Just(MAX), 0usize..4096],
        excess in 1u64..=u64::from(u32::MAX),
        tail in vec(any::<u8>(), 0..16),
    ) {
        let len = (max as u64 + excess).min(u64::from(u32::MAX));
        prop_assume!(len > max as u64);
        let len = len as u32;
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let expect = |r: Result<(), FrameError>| match r {
            Err(FrameError::TooLarge { len: l, max: m }) => {
                prop_assert_eq!(l, len as usize);
                prop_assert_eq!(m, max);
                Ok(())
            }
            other => Err(TestCaseError::fail(format!("expected TooLarge, got {other:?}"))),
        };
        expect(check_frame(&bytes, max).map(|_| ()))?;
        expect(decode_frame::<ClientMessage>(&bytes, max).map(|_| ()))?;
        let mut codec = Codec::<Hello, HelloReply>::new(max);
        let mut buf = BytesMut::from(&bytes[..]);
        expect(codec.decode(&mut buf).map(|_| ()))?;
        // The bytes stay: the connection cannot be resynchronised and is closed.
        prop_assert_eq!(&buf[..], &bytes[..]);
        // With fewer than 4 bytes nothing is known yet.
        for end in 0..LENGTH_PREFIX_BYTES {
            prop_assert!(matches!(check_frame(&bytes[..end], max), Ok(None)));
        }
    }

    // (f) encoding a message over the limit fails with TooLarge and leaves the buffer as
    // it was; a message within the limit is appended.

    #[test]
    fn encoding_respects_the_limit(
        msg in server_message(),
        max in 0usize..160,
        existing in vec(any::<u8>(), 0..32),
    ) {
        let payload_len = payload(&msg).len();
        let mut buf = BytesMut::from(&existing[..]);
        let mut codec = Codec::<ServerMessage, ServerMessage>::new(max);
        let results = [
            encode_frame(&msg, &mut buf, max),
            codec.encode(msg.clone(), &mut buf),
        ];
        for result in results {
            if payload_len > max {
                match result {
                    Err(FrameError::TooLarge { len, max: m }) => {
                        prop_assert_eq!(len, payload_len);
                        prop_assert_eq!(m, max);
                    }
                    other => return Err(TestCaseError::fail(format!("expected TooLarge, got {other:?}"))),
                }
            } else {
                prop_assert!(result.is_ok());
            }
        }
        let mut expected = existing.clone();
        if payload_len <= max {
            for _ in 0..2 {
                expected.extend_from_slice(&frame(&msg));
            }
        }
        prop_assert_eq!(&buf[..], &expected[..]);
    }
}

/// Payloads that claim huge strings, byte arrays and sequences fail quickly instead of
/// allocating what they claim (bincode checks claims against `DECODE_LIMIT_BYTES`).
#[test]
fn huge_length_claims_fail_without_allocating_them() {
    // ClientMessage::Request { xid: 1, op: GetData { path: <claimed length>, .. } }.
    let get_data = |claim: u64| {
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&3u32.to_le_bytes());
        p.extend_from_slice(&claim.to_le_bytes());
        p.extend_from_slice(b"/a");
        p
    };
    // ClientMessage::Request { xid: 1, op: Multi(<claimed count>) }.
    let multi = |claim: u64| {
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&6u32.to_le_bytes());
        p.extend_from_slice(&claim.to_le_bytes());
        p
    };
    // ServerMessage::Response { .., Ok(Children { children: <claimed count>, .. }) }.
    let children = |claim: u64| {
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&[0u8; 16]);
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&5u32.to_le_bytes());
        p.extend_from_slice(&claim.to_le_bytes());
        p
    };
    let claims = [
        u64::MAX,
        u64::MAX / 2,
        1 << 40,
        u64::from(u32::MAX),
        DECODE_LIMIT_BYTES as u64 + 1,
        DEFAULT_MAX_FRAME_BYTES as u64 * 4,
        3,
    ];
    let started = Instant::now();
    for claim in claims {
        for payload in [get_data(claim), multi(claim)] {
            let r = decode_payload::<ClientMessage>(&payload);
            assert!(
                matches!(r, Err(FrameError::Malformed(_))),
                "claim {claim}: {r:?}"
            );
        }
        let r = decode_payload::<ServerMessage>(&children(claim));
        assert!(
            matches!(r, Err(FrameError::Malformed(_))),
            "claim {claim}: {r:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "rejecting length claims took {:?}",
        started.elapsed()
    );
}

/// Malformed payloads and trailing bytes are reported as such, and the codec skips the
/// bad frame (the caller decides to close the connection).
#[test]
fn malformed_and_trailing_bytes_are_distinguished() {
    let msg = ClientMessage::Request(Request {
        xid: 7,
        op: Op::Ping,
    });
    let mut f = frame(&msg);
    f.extend_from_slice(&[0, 0]);
    patch_length(&mut f);
    assert!(matches!(
        decode_frame::<ClientMessage>(&f, MAX),
        Err(FrameError::TrailingBytes { trailing: 2 })
    ));

    // An unknown Op variant index (far past the last one, so new ops do not change it).
    let mut bad = frame(&msg);
    bad[LENGTH_PREFIX_BYTES + 12..LENGTH_PREFIX_BYTES + 16].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(
        decode_frame::<ClientMessage>(&bad, MAX),
        Err(FrameError::Malformed(_))
    ));

    // The codec consumes a bad frame whole, so a following good frame is still readable.
    let mut buf = BytesMut::from(&bad[..]);
    buf.extend_from_slice(&frame(&msg));
    let mut codec = Codec::<ClientMessage, ServerMessage>::new(MAX);
    assert!(codec.decode(&mut buf).is_err());
    assert_eq!(buf.len(), frame(&msg).len());
    assert_eq!(codec.decode(&mut buf).expect("valid"), Some(msg));

    // A bool other than 0 or 1, an Option tag other than 0 or 1, and invalid UTF-8.
    let get = ClientMessage::Request(Request {
        xid: 1,
        op: Op::GetData {
            path: "/a".into(),
            watch: false,
        },
    });
    let mut f = frame(&get);
    let last = f.len() - 1;
    f[last] = 2;
    assert!(matches!(
        decode_frame::<ClientMessage>(&f, MAX),
        Err(FrameError::Malformed(_))
    ));
    let mut f = frame(&get);
    f[LENGTH_PREFIX_BYTES + 24] = 0xFF; // first byte of "/a"
    assert!(matches!(
        decode_frame::<ClientMessage>(&f, MAX),
        Err(FrameError::Malformed(_))
    ));
    let del = ClientMessage::Request(Request {
        xid: 1,
        op: Op::Delete {
            path: "/a".into(),
            version: None,
        },
    });
    let mut f = frame(&del);
    let last = f.len() - 1;
    f[last] = 2;
    assert!(matches!(
        decode_frame::<ClientMessage>(&f, MAX),
        Err(FrameError::Malformed(_))
    ));
}

/// A message just over the default limit (1 MiB of data plus more than 64 KiB of path) is
/// refused by the encoder, and the buffer keeps what it had.
#[test]
fn a_message_over_the_default_limit_is_not_encoded() {
    let msg = ClientMessage::Request(Request {
        xid: 1,
        op: Op::SetData {
            path: "/big".into(),
            data: vec![7; DEFAULT_MAX_FRAME_BYTES],
            version: None,
        },
    });
    let mut buf = BytesMut::from(&b"kept"[..]);
    let r = encode_frame(&msg, &mut buf, DEFAULT_MAX_FRAME_BYTES);
    match r {
        Err(FrameError::TooLarge { len, max }) => {
            assert!(len > max);
            assert_eq!(max, DEFAULT_MAX_FRAME_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(&buf[..], b"kept");

    // 1 MiB of data fits.
    let fits = ClientMessage::Request(Request {
        xid: 1,
        op: Op::SetData {
            path: "/big".into(),
            data: vec![7; 1 << 20],
            version: None,
        },
    });
    encode_frame(&fits, &mut buf, DEFAULT_MAX_FRAME_BYTES).expect("1 MiB of data fits");
    let (decoded, _) = decode_frame::<ClientMessage>(&buf[4..], DEFAULT_MAX_FRAME_BYTES)
        .expect("decodes")
        .expect("complete");
    assert_eq!(decoded, fits);
}

/// Frames over the client limit (64 MiB) work where a codec allows them (the server's peer
/// transport, whose snapshots carry a whole state): a 65 MiB message round-trips through
/// a codec with a larger limit, and a codec at the client limit refuses it from its
/// length prefix.
#[test]
fn a_frame_over_the_client_limit_passes_a_codec_that_allows_it() {
    let big = ClientMessage::Request(Request {
        xid: 9,
        op: Op::SetData {
            path: "/snapshot".into(),
            data: vec![3; DECODE_LIMIT_BYTES + (1 << 20)],
            version: None,
        },
    });
    let allows = 2 * DECODE_LIMIT_BYTES;
    let mut buf = BytesMut::new();
    Codec::<ClientMessage, ClientMessage>::new(allows)
        .encode(big.clone(), &mut buf)
        .expect("encodes under the larger limit");
    assert!(buf.len() > DECODE_LIMIT_BYTES);
    let mut at_client_limit = Codec::<ClientMessage, ClientMessage>::new(DECODE_LIMIT_BYTES);
    assert!(matches!(
        at_client_limit.decode(&mut buf.clone()),
        Err(FrameError::TooLarge { .. })
    ));
    let decoded = Codec::<ClientMessage, ClientMessage>::new(allows)
        .decode(&mut buf)
        .expect("decodes under the larger limit")
        .expect("complete");
    assert_eq!(decoded, big);
    assert!(buf.is_empty());
}
