//! The client's reader of server frames, which survives a response too large for it.
//!
//! A server may allow larger frames than a client (its `max_frame_bytes` is its own), so a
//! read can produce a response the client refuses to buffer. Closing the connection then
//! would only make the client reconnect and resend the same read. Instead the decoder
//! reads the head of such a frame (the response's `xid` and `zxid`), discards the rest
//! as it arrives without buffering it, and yields [`Incoming::Oversized`], so the client
//! fails that one request and keeps the connection.

use crate::frame::{check_frame, decode_head, Codec, FrameError, LENGTH_PREFIX_BYTES};
use crate::message::ServerMessage;
use bytes::{Buf, BytesMut};
use serde::Deserialize;
use tokio_util::codec::Decoder;

/// Bytes of a response frame's payload that [`Incoming::Oversized`] is read from: the
/// `ServerMessage` tag (u32), then the response's `xid` and `zxid` (u64 each).
pub const RESPONSE_HEAD_BYTES: usize = 4 + 8 + 8;

/// One item read from a server connection after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message within the limit.
    Message(ServerMessage),
    /// A response over the reader's `max_frame_bytes`, skipped.
    Oversized(OversizedResponse),
}

/// What is known of a response that was too large to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OversizedResponse {
    /// The `xid` of the request it answers.
    pub xid: u64,
    /// Its `zxid` (for a successful write, the transaction's).
    pub zxid: u64,
    /// The payload length the server sent.
    pub len: usize,
    /// The reader's limit it exceeded.
    pub max: usize,
}

/// The fields that start an encoded `ServerMessage::Response` (variant 0), in order;
/// `RESPONSE_HEAD_BYTES` of them. Any other variant fails to decode as this.
#[derive(Deserialize)]
enum Head {
    Response { xid: u64, zxid: u64 },
}

/// Decodes [`Incoming`] items: server messages up to `max_frame_bytes`, and the heads of
/// larger responses, whose remaining bytes it then drops. A frame over the limit that is
/// not a response (nothing else the server sends can be that large) is
/// [`FrameError::TooLarge`], after which the stream cannot be resynchronised.
#[derive(Debug)]
pub struct ServerDecoder {
    codec: Codec<ServerMessage, ()>,
    /// Bytes of a skipped frame still to be dropped.
    skip: usize,
}

impl ServerDecoder {
    /// A decoder that buffers frames up to `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        ServerDecoder {
            codec: Codec::new(max_frame_bytes),
            skip: 0,
        }
    }

    /// The limit it enforces.
    pub fn max_frame_bytes(&self) -> usize {
        self.codec.max_frame_bytes()
    }

    /// Drops buffered bytes of a skipped frame; true once none remain to be dropped.
    fn drain(&mut self, src: &mut BytesMut) -> bool {
        let n = self.skip.min(src.len());
        src.advance(n);
        self.skip -= n;
        self.skip == 0
    }
}

impl<In, Out> From<Codec<In, Out>> for ServerDecoder {
    /// The same limit as a handshake codec, for the messages that follow the handshake.
    fn from(codec: Codec<In, Out>) -> Self {
        ServerDecoder::new(codec.max_frame_bytes())
    }
}

impl Decoder for ServerDecoder {
    type Item = Incoming;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        if !self.drain(src) {
            return Ok(None);
        }
        let max = self.max_frame_bytes();
        let len = match check_frame(src, max) {
            Ok(_) => return Ok(self.codec.decode(src)?.map(Incoming::Message)),
            Err(FrameError::TooLarge { len, .. }) => len,
            Err(e) => return Err(e),
        };
        let head_end = LENGTH_PREFIX_BYTES + RESPONSE_HEAD_BYTES;
        let Some(payload) = src.get(LENGTH_PREFIX_BYTES..head_end) else {
            reserve_frame_head(src);
            return Ok(None);
        };
        let Some(Head::Response { xid, zxid }) = decode_head::<Head, RESPONSE_HEAD_BYTES>(payload)
        else {
            return Err(FrameError::TooLarge { len, max });
        };
        self.skip = LENGTH_PREFIX_BYTES + len;
        self.drain(src);
        Ok(Some(Incoming::Oversized(OversizedResponse {
            xid,
            zxid,
            len,
            max,
        })))
    }
}

/// Room for the head of a frame, never for the whole of an oversized one.
fn reserve_frame_head(src: &mut BytesMut) {
    src.reserve((LENGTH_PREFIX_BYTES + RESPONSE_HEAD_BYTES).saturating_sub(src.len()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use crate::op::{OpResult, Response};
    use crate::{ErrorCode, ErrorInfo, WatchEvent};

    fn frame(msg: &ServerMessage) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(msg, &mut buf, usize::MAX).expect("encodes");
        buf
    }

    fn data(xid: u64, zxid: u64, bytes: usize) -> ServerMessage {
        ServerMessage::Response(Response {
            xid,
            zxid,
            result: Ok(OpResult::Data {
                data: vec![7; bytes],
                stat: Default::default(),
            }),
        })
    }

    fn ping(xid: u64) -> ServerMessage {
        ServerMessage::Response(Response {
            xid,
            zxid: 3,
            result: Ok(OpResult::Pong),
        })
    }

    /// Feeds `bytes` in chunks of `chunk`: every decoded item, and the most bytes the
    /// decoder left buffered after a chunk.
    fn feed(max: usize, bytes: &[u8], chunk: usize) -> (Vec<Incoming>, usize) {
        let mut decoder = ServerDecoder::new(max);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        let mut kept = 0;
        for piece in bytes.chunks(chunk) {
            src.extend_from_slice(piece);
            while let Some(item) = decoder.decode(&mut src).expect("decodes") {
                out.push(item);
            }
            kept = kept.max(src.len());
        }
        (out, kept)
    }

    #[test]
    fn an_oversized_response_is_skipped_and_the_next_frame_reads() {
        let mut bytes = frame(&data(41, 9, 100_000));
        let big_len = bytes.len() - LENGTH_PREFIX_BYTES;
        bytes.extend_from_slice(&frame(&ping(42)));
        for chunk in [1, 7, 20, 1000, 200_000] {
            let (out, kept) = feed(4096, &bytes, chunk);
            let skipped = OversizedResponse {
                xid: 41,
                zxid: 9,
                len: big_len,
                max: 4096,
            };
            let expected = vec![Incoming::Oversized(skipped), Incoming::Message(ping(42))];
            assert_eq!(out, expected, "chunk {chunk}");
            // Nothing of the skipped frame stays buffered beyond what one read brought.
            assert!(kept < chunk.max(64), "chunk {chunk}: kept {kept} bytes");
        }
    }

    #[test]
    fn messages_within_the_limit_decode_as_before() {
        let event = ServerMessage::Watch(WatchEvent {
            kind: crate::EventKind::NodeCreated,
            path: "/a".into(),
            zxid: 5,
        });
        let mut bytes = frame(&event);
        bytes.extend_from_slice(&frame(&data(1, 2, 100)));
        let (out, _) = feed(4096, &bytes, 3);
        let expected = vec![Incoming::Message(event), Incoming::Message(data(1, 2, 100))];
        assert_eq!(out, expected);
    }

    #[test]
    fn an_oversized_frame_that_is_not_a_response_is_fatal() {
        let goodbye =
            ServerMessage::Goodbye(ErrorInfo::new(ErrorCode::Unavailable, "x".repeat(5000)));
        let mut decoder = ServerDecoder::new(4096);
        let mut src = frame(&goodbye);
        match decoder.decode(&mut src) {
            Err(FrameError::TooLarge { max: 4096, .. }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn a_handshake_codec_converts_with_its_limit() {
        let codec = Codec::<crate::HelloReply, crate::Hello>::new(5000);
        assert_eq!(ServerDecoder::from(codec).max_frame_bytes(), 5000);
    }
}
