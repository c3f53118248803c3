//! The server's reader of client frames, which answers a request for an operation it does
//! not know instead of dropping the connection.
//!
//! A newer client may send an operation this version has no variant for. Its frame is
//! intact (the length prefix delimits it), so the reader skips it and reports the
//! request's `xid`; the server answers that request alone with `Unimplemented`, as
//! ZooKeeper does for an unknown opcode, and the client's other requests go on. Any other
//! undecodable frame is still an error that ends the connection.

use crate::frame::{
    check_frame, decode_head, decode_payload, reserve_frame, FrameError, LENGTH_PREFIX_BYTES,
};
use crate::message::ClientMessage;
use crate::op::OP_COUNT;
use bytes::{Buf, BytesMut};
use serde::Deserialize;
use tokio_util::codec::Decoder;

/// Bytes that start an encoded `ClientMessage::Request`: the message tag (u32), the
/// request's `xid` (u64) and the operation's tag (u32).
pub const REQUEST_HEAD_BYTES: usize = 4 + 8 + 4;

/// One item read from a client connection after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingRequest {
    /// A message this version decodes.
    Message(ClientMessage),
    /// A request for an operation this version does not know (tag `op_index`, at least
    /// [`OP_COUNT`]), skipped.
    UnknownOp {
        /// The request's `xid`.
        xid: u64,
        /// The operation's tag.
        op_index: u32,
    },
}

/// The fields that start an encoded `ClientMessage::Request` (variant 0), in order.
#[derive(Deserialize)]
enum Head {
    Request { xid: u64, op_index: u32 },
}

/// The `xid` and operation tag of a request payload whose operation is unknown here.
fn unknown_op(payload: &[u8]) -> Option<(u64, u32)> {
    match decode_head::<Head, REQUEST_HEAD_BYTES>(payload)? {
        Head::Request { xid, op_index } if op_index >= OP_COUNT => Some((xid, op_index)),
        Head::Request { .. } => None,
    }
}

/// Decodes [`IncomingRequest`] items from frames of at most `max_frame_bytes`.
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    max_frame_bytes: usize,
}

impl RequestDecoder {
    /// A decoder that refuses frames larger than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        RequestDecoder { max_frame_bytes }
    }
}

impl Decoder for RequestDecoder {
    type Item = IncomingRequest;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<IncomingRequest>, FrameError> {
        let Some(total) = check_frame(src, self.max_frame_bytes)? else {
            reserve_frame(src);
            return Ok(None);
        };
        let payload = &src[LENGTH_PREFIX_BYTES..total];
        let item = match decode_payload::<ClientMessage>(payload) {
            Ok(message) => Ok(IncomingRequest::Message(message)),
            Err(e) => match unknown_op(payload) {
                Some((xid, op_index)) => Ok(IncomingRequest::UnknownOp { xid, op_index }),
                None => Err(e),
            },
        };
        src.advance(total);
        item.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use crate::op::{Op, Request};

    fn frame(payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(payload);
        buf
    }

    /// A request payload with operation tag `op_index` and `body` after it.
    fn request_payload(xid: u64, op_index: u32, body: &[u8]) -> Vec<u8> {
        let mut p = 0u32.to_le_bytes().to_vec();
        p.extend_from_slice(&xid.to_le_bytes());
        p.extend_from_slice(&op_index.to_le_bytes());
        p.extend_from_slice(body);
        p
    }

    fn ping(xid: u64) -> BytesMut {
        let mut buf = BytesMut::new();
        let msg = ClientMessage::Request(Request { xid, op: Op::Ping });
        encode_frame(&msg, &mut buf, usize::MAX).expect("encodes");
        buf
    }

    #[test]
    fn an_unknown_operation_is_reported_and_the_next_frame_reads() {
        let mut src = frame(&request_payload(9, OP_COUNT + 4, b"whatever follows"));
        src.extend_from_slice(&ping(10));
        let mut decoder = RequestDecoder::new(4096);
        let first = decoder.decode(&mut src).expect("decodes");
        let unknown = IncomingRequest::UnknownOp {
            xid: 9,
            op_index: OP_COUNT + 4,
        };
        assert_eq!(first, Some(unknown));
        let second = decoder.decode(&mut src).expect("decodes");
        let ping = ClientMessage::Request(Request {
            xid: 10,
            op: Op::Ping,
        });
        assert_eq!(second, Some(IncomingRequest::Message(ping)));
        assert!(src.is_empty());
    }

    #[test]
    fn a_malformed_known_operation_is_still_an_error() {
        // Tag 5 (GetChildren) with a truncated body.
        let mut src = frame(&request_payload(9, 5, &[1, 0]));
        let result = RequestDecoder::new(4096).decode(&mut src);
        assert!(
            matches!(result, Err(FrameError::Malformed(_))),
            "{result:?}"
        );
        // Not a request at all.
        let mut src = frame(&[7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let result = RequestDecoder::new(4096).decode(&mut src);
        assert!(result.is_err(), "{result:?}");
    }

    /// `OP_COUNT` is the number of `Op` variants: the first tag past them is an unknown
    /// variant to the decoder, the last one is not.
    #[test]
    fn op_count_matches_the_op_enum() {
        let decode = |tag: u32| {
            let config = bincode::config::standard()
                .with_little_endian()
                .with_fixed_int_encoding()
                .with_limit::<64>();
            match bincode::serde::decode_from_slice::<Op, _>(&tag.to_le_bytes(), config) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        let past = decode(OP_COUNT);
        assert!(past.contains("variant index"), "tag {OP_COUNT}: {past}");
        let last = decode(OP_COUNT - 1);
        assert!(
            !last.contains("variant index"),
            "tag {}: {last}",
            OP_COUNT - 1
        );
    }
}
