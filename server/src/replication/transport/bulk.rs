//! Messages too large for a runtime worker: a log sync that carries the image of a large
//! state is tens of megabytes, and encoding or decoding it takes tens of milliseconds.
//! On a runtime worker that time is taken from every task queued behind it there (the
//! node's core among them), so such messages are encoded and decoded on a blocking
//! thread instead, in order with the rest of their connection.
//!
//! - Inbound, a frame is large by its length prefix: payloads over
//!   [`DECODE_INLINE_MAX_BYTES`] are split off the read buffer undecoded
//!   ([`Inbound::Large`]) and decoded by [`decode_off_worker`].
//! - Outbound, the size is known only after encoding, so the message says whether it may
//!   be large ([`Bulky::may_be_bulky`]); those are encoded by [`encode_off_worker`] and
//!   written straight to the socket, not through the writer's buffer (which would keep
//!   their size allocated).

use bytes::{Buf, BytesMut};
use corral_protocol::frame::LENGTH_PREFIX_BYTES;
use corral_protocol::frame::{check_frame, decode_payload, encode_frame, reserve_frame};
use corral_protocol::FrameError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::time::Instant;
use tokio_util::codec::Decoder;

/// Inbound payloads up to this many bytes are decoded on the reader's task.
pub(super) const DECODE_INLINE_MAX_BYTES: usize = 1 << 20;

/// Encodings or decodings off the workers that take at least this long are logged.
const LOG_AT_MS: u128 = 20;

/// What the transport asks of a message besides its encoding.
pub trait Bulky {
    /// Whether the message may be large (a snapshot, thousands of entries): it is then
    /// encoded on a blocking thread instead of a runtime worker. Only a hint: a large
    /// message that answers `false` is still sent, on the worker.
    fn may_be_bulky(&self) -> bool {
        false
    }
}

/// One frame read from a peer.
pub(super) enum Inbound<M> {
    /// A frame small enough to decode where it was read.
    Decoded(M),
    /// The payload of a frame over [`DECODE_INLINE_MAX_BYTES`], for
    /// [`decode_off_worker`].
    Large(BytesMut),
}

/// The decoder of a peer's messages: small frames decoded, large ones split off.
pub(super) struct PeerFrames<M> {
    max_frame_bytes: usize,
    _types: PhantomData<fn() -> M>,
}

impl<M> PeerFrames<M> {
    pub(super) fn new(max_frame_bytes: usize) -> Self {
        PeerFrames {
            max_frame_bytes,
            _types: PhantomData,
        }
    }
}

impl<M: DeserializeOwned> Decoder for PeerFrames<M> {
    type Item = Inbound<M>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound<M>>, FrameError> {
        let Some(total) = check_frame(src, self.max_frame_bytes)? else {
            reserve_frame(src);
            return Ok(None);
        };
        if total - LENGTH_PREFIX_BYTES > DECODE_INLINE_MAX_BYTES {
            let mut payload = src.split_to(total);
            payload.advance(LENGTH_PREFIX_BYTES);
            return Ok(Some(Inbound::Large(payload)));
        }
        let msg = decode_payload(&src[LENGTH_PREFIX_BYTES..total]);
        src.advance(total);
        msg.map(|m| Some(Inbound::Decoded(m)))
    }
}

/// Decodes a large payload on a blocking thread.
pub(super) async fn decode_off_worker<M>(payload: BytesMut) -> Result<M, FrameError>
where
    M: DeserializeOwned + Send + 'static,
{
    let bytes = payload.len();
    let task = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let msg = decode_payload(&payload);
        (msg, started.elapsed())
    });
    let (msg, took) = task
        .await
        .map_err(|e| FrameError::Malformed(format!("decoding a {bytes}-byte frame failed: {e}")))?;
    if took.as_millis() >= LOG_AT_MS {
        tracing::info!(
            bytes,
            took_ms = took.as_millis() as u64,
            "decoded a large peer message off the runtime workers"
        );
    }
    msg
}

/// Encodes `msg` as one frame on a blocking thread.
pub(super) async fn encode_off_worker<M>(
    msg: M,
    max_frame_bytes: usize,
) -> Result<BytesMut, FrameError>
where
    M: Serialize + Send + 'static,
{
    let task = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut frame = BytesMut::new();
        let result = encode_frame(&msg, &mut frame, max_frame_bytes);
        // The message (a snapshot's entries and image) is freed here, not on the worker.
        drop(msg);
        (result.map(|()| frame), started.elapsed())
    });
    let (frame, took) = task
        .await
        .map_err(|e| FrameError::Encode(format!("encoding a message failed: {e}")))?;
    if took.as_millis() >= LOG_AT_MS {
        tracing::info!(
            bytes = frame.as_ref().map_or(0, BytesMut::len),
            took_ms = took.as_millis() as u64,
            "encoded a large peer message off the runtime workers"
        );
    }
    frame
}
