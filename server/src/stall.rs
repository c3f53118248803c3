//! A socket that fails an operation which makes no progress for too long, so that a peer
//! that stops reading (or, when asked, stops sending) cannot hold a task, its permit and
//! its buffers forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps `inner`: a write (or flush, or shutdown) that the socket accepts no byte of for
/// `write_stall` fails with `TimedOut`, and so does a read that gets no byte for
/// `read_idle`, if given.
#[derive(Debug)]
pub struct StallLimited<S> {
    inner: S,
    write_stall: Duration,
    read_idle: Option<Duration>,
    /// Armed while a write waits for room in the socket.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Armed while a read waits for bytes.
    read_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> StallLimited<S> {
    /// `inner` with the given limits.
    pub fn new(inner: S, write_stall: Duration, read_idle: Option<Duration>) -> Self {
        StallLimited {
            inner,
            write_stall,
            read_idle,
            write_timer: None,
            read_timer: None,
        }
    }
}

/// The inner operation answered `ready`: progress (or an error), the timer restarts.
/// Pending: waits with the timer, and fails once it runs out.
fn check<T>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    what: &str,
    cx: &mut Context<'_>,
    ready: Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    if ready.is_ready() {
        *timer = None;
        return ready;
    }
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer {what} for {} ms", limit.as_millis()),
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl<S> StallLimited<S> {
    /// A write-side poll's outcome, failed once the stream accepted no bytes for the
    /// write stall limit.
    fn check_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        ready: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        check(
            &mut self.write_timer,
            self.write_stall,
            "accepted no bytes",
            cx,
            ready,
        )
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallLimited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let ready = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check_write(cx, ready)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ready = Pin::new(&mut this.inner).poll_flush(cx);
        this.check_write(cx, ready)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ready = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check_write(cx, ready)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallLimited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ready = Pin::new(&mut this.inner).poll_read(cx, buf);
        match this.read_idle {
            Some(limit) => check(&mut this.read_timer, limit, "sent nothing", cx, ready),
            None => ready,
        }
    }
}
