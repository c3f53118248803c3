//! Feeds arbitrary bytes to the frame decoder for every message type the protocol has,
//! as a connection would: decode frames in a loop until the codec needs more bytes or
//! fails. Nothing may panic, and every message that decodes must re-encode to exactly the
//! bytes of its frame (the encoding is canonical) and decode again to itself.
//!
//! Run with `cargo +nightly fuzz run decode` from `protocol/` (see docs/PROTOCOL.md).
#![no_main]

use bytes::BytesMut;
use corral_protocol::frame::frame_to_vec;
use corral_protocol::{ClientMessage, Codec, Hello, HelloReply, ServerMessage};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use tokio_util::codec::Decoder;

/// A small limit as well as the default one, so that both the size check and large
/// frames are exercised.
const LIMITS: [usize; 2] = [64, corral_protocol::DEFAULT_MAX_FRAME_BYTES];

fn decode_all<M>(data: &[u8], max: usize)
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut codec = Codec::<M, M>::new(max);
    let mut buf = BytesMut::from(data);
    let mut offset = 0;
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(msg)) => {
                let used = before - buf.len();
                let frame = frame_to_vec(&msg, max).expect("a decoded message re-encodes");
                assert_eq!(
                    frame,
                    &data[offset..offset + used],
                    "re-encoding differs from the input frame"
                );
                let mut again = BytesMut::from(&frame[..]);
                let decoded = codec
                    .decode(&mut again)
                    .expect("a re-encoded message decodes")
                    .expect("a re-encoded message is a whole frame");
                assert_eq!(decoded, msg);
                assert!(again.is_empty());
                offset += used;
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for max in LIMITS {
        decode_all::<Hello>(data, max);
        decode_all::<HelloReply>(data, max);
        decode_all::<ClientMessage>(data, max);
        decode_all::<ServerMessage>(data, max);
    }
});
