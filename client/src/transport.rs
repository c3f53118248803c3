//! Opening a connection: TCP connect plus the `Hello` handshake, with a time limit.
//!
//! The socket is split into a read half, framed by the protocol codec, and a write half
//! that the connection task writes encoded frames to itself. Splitting lets the task keep
//! reading responses while a large write is only partly sent, so neither side can block
//! the other (a single `Framed` would stop reading while its `send` waits for a flush).

use crate::error::Error;
use corral_protocol::frame::frame_to_vec;
use corral_protocol::{Codec, ErrorInfo, Hello, HelloReply, ServerDecoder, SessionGranted};
use futures::StreamExt;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

/// The highest `next_xid` a server may grant: half the range, far beyond any session.
const MAX_GRANTED_NEXT_XID: u64 = u64::MAX / 2;

/// The read half of an established connection, decoding server messages (and skipping
/// responses over the client's `max_frame_bytes`).
pub(crate) type Reader = FramedRead<OwnedReadHalf, ServerDecoder>;

/// A connection whose session is established.
#[derive(Debug)]
pub(crate) struct Transport {
    /// Frames from the server.
    pub reader: Reader,
    /// Where encoded frames go.
    pub writer: OwnedWriteHalf,
    /// The `host:port` it is connected to.
    pub address: String,
}

/// Why a handshake did not give a session.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The server answered `Refused`.
    Refused(ErrorInfo),
    /// The connection failed, timed out, or the server broke the protocol.
    Failed(Error),
}

impl From<Error> for HandshakeError {
    fn from(err: Error) -> Self {
        HandshakeError::Failed(err)
    }
}

/// Connects to `address`, sends `hello` and waits for the answer, all within `timeout`.
pub(crate) async fn open(
    address: &str,
    hello: &Hello,
    max_frame_bytes: usize,
    timeout: Duration,
) -> Result<(Transport, SessionGranted), HandshakeError> {
    match tokio::time::timeout(timeout, handshake(address, hello, max_frame_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Failed(io_error(
            address,
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no session within the connect timeout of {timeout:?}"),
            ),
        ))),
    }
}

/// An IO error that names the server.
fn io_error(address: &str, err: std::io::Error) -> Error {
    Error::from(std::io::Error::new(err.kind(), format!("{address}: {err}")))
}

async fn handshake(
    address: &str,
    hello: &Hello,
    max_frame_bytes: usize,
) -> Result<(Transport, SessionGranted), HandshakeError> {
    let io = |e| io_error(address, e);
    let stream = TcpStream::connect(address).await.map_err(io)?;
    // Requests are small and pipelined: send each at once.
    stream.set_nodelay(true).map_err(io)?;
    let (read_half, mut writer) = stream.into_split();
    let hello_frame = frame_to_vec(hello, max_frame_bytes).map_err(Error::from)?;
    writer.write_all(&hello_frame).await.map_err(io)?;
    let mut reader = FramedRead::new(read_half, Codec::<HelloReply, Hello>::new(max_frame_bytes));
    let reply = match reader.next().await {
        Some(Ok(reply)) => reply,
        Some(Err(e)) => return Err(Error::from(e).into()),
        None => {
            return Err(Error::protocol(format!(
                "{address} closed the connection during the handshake"
            ))
            .into())
        }
    };
    match reply {
        HelloReply::Accepted(granted) => {
            if granted.session_id == 0 {
                return Err(Error::protocol("server granted session id 0").into());
            }
            // xids count a session's requests from 1: no server gets near the top of the
            // range, and a client counting from there would run out (or wrap).
            if granted.next_xid > MAX_GRANTED_NEXT_XID {
                return Err(Error::protocol(format!(
                    "server expects xid {} next, beyond any session's count",
                    granted.next_xid
                ))
                .into());
            }
            // Keep whatever the reader already buffered; only the decoder changes.
            let reader = reader.map_decoder(ServerDecoder::from);
            let transport = Transport {
                reader,
                writer,
                address: address.to_string(),
            };
            Ok((transport, granted))
        }
        HelloReply::Refused(info) => Err(HandshakeError::Refused(info)),
    }
}
