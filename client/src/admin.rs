//! A minimal HTTP/1.1 client (hyper) for a corral server's admin endpoint
//! (`/metrics`, `/health`, `/ready`, `/status`, `/snapshot`). Used by `corralctl
//! snapshot save` and by tests.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;

/// Time allowed to connect and receive the response headers.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin endpoint's answer.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl AdminResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// An answer whose body has not been read yet: [`AdminStream::next_piece`] reads it as
/// it arrives, each piece within the stall timeout.
#[derive(Debug)]
pub struct AdminStream {
    /// The HTTP status code.
    pub status: u16,
    body: hyper::body::Incoming,
    stall_timeout: Duration,
    what: String,
}

/// `GET http://{addr}{path}`, up to the response headers (connection and headers within
/// [`ADMIN_TIMEOUT`]); the body is read with [`AdminStream::next_piece`], which fails
/// when no byte of it arrives for `stall_timeout`.
pub async fn get_stream(
    addr: &str,
    path: &str,
    stall_timeout: Duration,
) -> std::io::Result<AdminStream> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .map_err(other)?;
        sender.send_request(request).await.map_err(other)
    };
    let response = tokio::time::timeout(ADMIN_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{addr}{path}: no answer within {ADMIN_TIMEOUT:?}"),
            )
        })??;
    Ok(AdminStream {
        status: response.status().as_u16(),
        body: response.into_body(),
        stall_timeout,
        what: format!("{addr}{path}"),
    })
}

impl AdminStream {
    /// The next piece of the body, `None` at its end. Fails with
    /// [`std::io::ErrorKind::TimedOut`] if nothing arrives for the stall timeout, and
    /// with another error if the connection breaks before the end.
    pub async fn next_piece(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            let frame = match tokio::time::timeout(self.stall_timeout, self.body.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the body stalled (no data for {:?})", self.stall_timeout),
                    ))
                }
            };
            let Some(frame) = frame else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| other(format!("the body broke off: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
    }

    /// The whole body; fails if it exceeds `max_body_bytes`.
    pub async fn read_all(mut self, max_body_bytes: u64) -> std::io::Result<AdminResponse> {
        let mut out = Vec::new();
        while let Some(data) = self.next_piece().await? {
            if out.len() as u64 + data.len() as u64 > max_body_bytes {
                return Err(other(format!(
                    "the answer of {} exceeds {max_body_bytes} bytes",
                    self.what
                )));
            }
            out.extend_from_slice(&data);
        }
        Ok(AdminResponse {
            status: self.status,
            body: out,
        })
    }
}

/// `GET http://{addr}{path}`; fails if the body exceeds `max_body_bytes` or stalls for
/// [`ADMIN_TIMEOUT`].
pub async fn get(addr: &str, path: &str, max_body_bytes: u64) -> std::io::Result<AdminResponse> {
    get_stream(addr, path, ADMIN_TIMEOUT)
        .await?
        .read_all(max_body_bytes)
        .await
}
