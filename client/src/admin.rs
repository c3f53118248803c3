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

/// `GET http://{addr}{path}`; fails if the body exceeds `max_body_bytes`.
pub async fn get(addr: &str, path: &str, max_body_bytes: u64) -> std::io::Result<AdminResponse> {
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
            std::io::Error::new(std::io::ErrorKind::TimedOut, "admin request timed out")
        })??;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(other)?;
        if let Some(data) = frame.data_ref() {
            if out.len() as u64 + data.len() as u64 > max_body_bytes {
                return Err(other(format!(
                    "the answer of {addr}{path} exceeds {max_body_bytes} bytes"
                )));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(AdminResponse { status, body: out })
}
