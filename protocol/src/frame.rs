//! Length-prefixed frames: pure encode/decode functions and a `tokio-util` codec on top.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload, which is one
//! message encoded with bincode 2 (see [`wire_config`]). Decoding is two-phase, as in
//! mini-redis: first check that a whole frame is buffered (otherwise the answer is
//! "incomplete", which is not an error), then parse it.

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Upper bound on what one decoded client-protocol message may allocate, whatever its
/// frame claims; also the largest `max_frame_bytes` of a client connection.
pub const DECODE_LIMIT_BYTES: usize = 64 << 20;

/// The largest payload a frame can carry (its length prefix is a `u32`). Only the peer
/// transport of the server, whose messages carry whole state snapshots, allows frames
/// beyond [`DECODE_LIMIT_BYTES`].
pub const MAX_PAYLOAD_BYTES: usize = u32::MAX as usize;

/// The bincode configuration of every payload: little-endian, fixed-width integers
/// (u32 as 4 bytes, u64 as 8, enum tags as u32, lengths as u64), with an allocation limit.
pub fn wire_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<DECODE_LIMIT_BYTES>()
}

/// The size of `msg`'s frame on the wire (length prefix included), counted without
/// encoding it: for limits that count bytes before anything is encoded or queued.
pub fn frame_len<T: Serialize>(msg: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    // A writer that only counts cannot fail; an error in the value would count what it
    // reached, and encoding the frame then fails anyway.
    let _ = bincode::serde::encode_into_writer(msg, &mut size, wire_config());
    LENGTH_PREFIX_BYTES + size.bytes_written
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame's length exceeds the limit; the connection cannot be resynchronised.
    #[error("frame of {len} bytes exceeds max_frame_bytes = {max}")]
    TooLarge {
        /// The claimed or actual payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The payload decoded, but did not use all its bytes.
    #[error("malformed frame: {trailing} trailing bytes after the message")]
    TrailingBytes {
        /// Unused bytes.
        trailing: usize,
    },
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// An IO error on the underlying transport.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends one frame holding `msg` to `dst`. On error `dst` is left as it was.
pub fn encode_frame<T: Serialize>(
    msg: &T,
    dst: &mut BytesMut,
    max_frame_bytes: usize,
) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    let result = bincode::serde::encode_into_std_write(msg, &mut writer, wire_config());
    let dst = writer.into_inner();
    let len = match result {
        Ok(len) => len,
        Err(e) => {
            dst.truncate(start);
            return Err(FrameError::Encode(e.to_string()));
        }
    };
    if len > max_frame_bytes {
        dst.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    let Ok(prefix) = u32::try_from(len) else {
        dst.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    };
    dst[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

/// Encodes `msg` as a standalone frame.
pub fn frame_to_vec<T: Serialize>(msg: &T, max_frame_bytes: usize) -> Result<Vec<u8>, FrameError> {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf, max_frame_bytes)?;
    Ok(buf.to_vec())
}

/// Phase one: the total length (prefix included) of the frame at the start of `src`, or
/// `None` if more bytes are needed. Fails as soon as the prefix announces a frame over
/// the limit, without waiting for its bytes.
pub fn check_frame(src: &[u8], max_frame_bytes: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = src.get(..LENGTH_PREFIX_BYTES) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; LENGTH_PREFIX_BYTES];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    let total = LENGTH_PREFIX_BYTES + len;
    Ok((src.len() >= total).then_some(total))
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    payload: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    let config = bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>();
    bincode::serde::decode_from_slice(payload, config)
}

/// Decodes a `T` from the first bytes of a payload, at most `LIMIT` of them, ignoring what
/// follows: the head of a frame that is not read as a whole (`incoming`, `requests`).
pub(crate) fn decode_head<T: DeserializeOwned, const LIMIT: usize>(payload: &[u8]) -> Option<T> {
    let head = payload.get(..LIMIT)?;
    decode_limited::<T, LIMIT>(head)
        .ok()
        .map(|(value, _)| value)
}

/// Decodes one message from a payload (without the length prefix).
///
/// bincode reserves a string's or byte array's claimed length before reading it, so the
/// allocation limit is chosen from the payload's own size (a valid payload never claims
/// more bytes than it holds): a 30-byte frame cannot make the decoder allocate 64 MiB.
/// Payloads over [`DECODE_LIMIT_BYTES`] reach this function only where a codec allows
/// such frames (the server's peer transport).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let decoded = match payload.len() {
        0..=4096 => decode_limited::<T, 4096>(payload),
        4097..=65536 => decode_limited::<T, 65536>(payload),
        65537..=0x20_0000 => decode_limited::<T, 0x20_0000>(payload),
        0x20_0001..=DECODE_LIMIT_BYTES => decode_limited::<T, DECODE_LIMIT_BYTES>(payload),
        0x400_0001..=0x4000_0000 => decode_limited::<T, 0x4000_0000>(payload),
        _ => decode_limited::<T, MAX_PAYLOAD_BYTES>(payload),
    };
    let (msg, used) = decoded.map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes {
            trailing: payload.len() - used,
        });
    }
    Ok(msg)
}

/// Reserves room in `src` for the rest of the frame that starts it, once its length
/// prefix is buffered, so that one large frame is read with few reallocations. For
/// decoders that found the frame incomplete (and checked its length) with
/// [`check_frame`].
pub fn reserve_frame(src: &mut BytesMut) {
    if let Some(prefix) = src.get(..LENGTH_PREFIX_BYTES) {
        let mut b = [0u8; LENGTH_PREFIX_BYTES];
        b.copy_from_slice(prefix);
        let total = LENGTH_PREFIX_BYTES + u32::from_be_bytes(b) as usize;
        src.reserve(total.saturating_sub(src.len()));
    }
}

/// Decodes the frame at the start of `src`: `Ok(None)` if incomplete, otherwise the
/// message and the number of bytes the frame took.
pub fn decode_frame<T: DeserializeOwned>(
    src: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    match check_frame(src, max_frame_bytes)? {
        None => Ok(None),
        Some(total) => {
            let msg = decode_payload(&src[LENGTH_PREFIX_BYTES..total])?;
            Ok(Some((msg, total)))
        }
    }
}

/// A `tokio-util` codec that decodes frames of `In` and encodes frames of `Out`.
///
/// The handshake is a frame like any other: a client starts with
/// `Codec<HelloReply, Hello>` and switches to `Codec<ServerMessage, ClientMessage>`
/// (see `tokio_util::codec::Framed::map_codec`); the server does the mirror image.
#[derive(Debug)]
pub struct Codec<In, Out> {
    max_frame_bytes: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Codec<In, Out> {
    /// A codec that refuses frames larger than `max_frame_bytes` in either direction.
    pub fn new(max_frame_bytes: usize) -> Self {
        Codec {
            max_frame_bytes,
            _types: PhantomData,
        }
    }

    /// The limit this codec enforces.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The same limit, for other message types.
    pub fn retype<In2, Out2>(&self) -> Codec<In2, Out2> {
        Codec::new(self.max_frame_bytes)
    }
}

impl<In, Out> Clone for Codec<In, Out> {
    fn clone(&self) -> Self {
        Codec::new(self.max_frame_bytes)
    }
}

impl<In: DeserializeOwned, Out> Decoder for Codec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match check_frame(src, self.max_frame_bytes)? {
            None => {
                reserve_frame(src);
                Ok(None)
            }
            Some(total) => {
                let msg = decode_payload(&src[LENGTH_PREFIX_BYTES..total]);
                src.advance(total);
                msg.map(Some)
            }
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for Codec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&item, dst, self.max_frame_bytes)
    }
}
