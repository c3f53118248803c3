//! What a caller holds to learn about watch events: a one-shot [`Watcher`] future and a
//! [`WatchStream`] of many events.

use crate::error::{Error, Result};
use corral_protocol::WatchEvent;
use futures::stream::{BoxStream, Stream, StreamExt};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{broadcast, oneshot};

/// What the connection task hands to one-shot watchers: the event, or why it will
/// never come.
pub(crate) type WatchOutcome = Result<WatchEvent>;

/// The sending side of a [`Watcher`], kept by the watch registry.
pub(crate) type WatchSender = oneshot::Sender<WatchOutcome>;

/// A one-shot watch left by [`Client::exists_watch`](crate::Client::exists_watch),
/// [`Client::get_data_watch`](crate::Client::get_data_watch) or
/// [`Client::get_children_watch`](crate::Client::get_children_watch).
///
/// It is a future resolving to the [`WatchEvent`] that fired it, or to an error if it can
/// no longer fire: [`Error::SessionExpired`], [`Error::Closed`], [`Error::WatchRemoved`],
/// or a server error if re-registering it after a reconnect failed. Watches survive
/// reconnects: the client re-registers them, and the server fires at once those whose
/// node changed while the client was away. Dropping a `Watcher` is fine (the client
/// stops re-registering a watch nobody waits for).
///
/// ```no_run
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let (data, _stat, watcher) = client.get_data_watch("/config").await?;
/// println!("now: {data:?}");
/// let event = watcher.await?;
/// println!("{:?} on {} at zxid {}", event.kind, event.path, event.zxid);
/// # Ok(()) }
/// ```
pub struct Watcher {
    rx: oneshot::Receiver<WatchOutcome>,
}

impl Watcher {
    pub(crate) fn channel() -> (WatchSender, Watcher) {
        let (tx, rx) = oneshot::channel();
        (tx, Watcher { rx })
    }

    /// The event, if the watch already fired, without waiting. `None` if it has not
    /// fired yet.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let (_stat, mut watcher) = client.exists_watch("/flag").await?;
    /// if let Some(event) = watcher.try_take() {
    ///     println!("already fired: {:?}", event?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn try_take(&mut self) -> Option<Result<WatchEvent>> {
        match self.rx.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(Error::Closed)),
        }
    }
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Future for Watcher {
    type Output = Result<WatchEvent>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|received| match received {
                Ok(outcome) => outcome,
                // The registry dropped the sender without a word: the client is gone.
                Err(_) => Err(Error::Closed),
            })
    }
}

/// Items of a [`WatchStream`] as they travel through the broadcast channel.
pub(crate) type StreamItem = Result<WatchEvent>;

/// A stream of watch events: those of one persistent watch
/// ([`Client::add_watch`](crate::Client::add_watch)), or every event the session
/// receives ([`Client::watch_events`](crate::Client::watch_events)).
///
/// Items are `Ok(event)` in zxid order (several events may share one zxid: the
/// collapsed events fired when the server catches up through a snapshot, or on a
/// reconnect; see docs/PROTOCOL.md, "Watches"). The stream is bounded (`event_buffer` in
/// [`ClientConfig`](crate::ClientConfig)): the client never waits for a slow reader,
/// so a reader that falls behind by more than the buffer loses the oldest events and
/// then reads `Err(Error::Lagged { skipped })` once before the newer ones (re-read the
/// state you watch when you see it). After a reconnect a persistent watch's stream reads
/// `Err(Error::WatchResumed { since_zxid, until_zxid })` once its watch is registered
/// again: changes made while the client was away fired no event (ZooKeeper's
/// semantics), so re-read then too. The stream ends after any other `Err`, saying why no more
/// events will come ([`Error::SessionExpired`], [`Error::Closed`],
/// [`Error::WatchRemoved`]) or, without one, when the client is dropped.
///
/// ```no_run
/// use corral_client::{AddWatchMode, Client, ClientConfig};
/// use futures::StreamExt;
///
/// # async fn demo() -> corral_client::Result<()> {
/// let client = Client::connect(ClientConfig::default()).await?;
/// let mut events = client.add_watch("/jobs", AddWatchMode::PersistentRecursive).await?;
/// while let Some(event) = events.next().await {
///     println!("{:?}", event?);
/// }
/// # Ok(()) }
/// ```
pub struct WatchStream {
    inner: BoxStream<'static, StreamItem>,
}

impl WatchStream {
    pub(crate) fn new(rx: broadcast::Receiver<StreamItem>) -> Self {
        Self::from_receiver(rx)
    }

    /// A stream that yields `err` and ends (for a client that is already finished).
    pub(crate) fn ended(err: Error) -> Self {
        let (tx, rx) = broadcast::channel(1);
        let _ = tx.send(Err(err));
        Self::from_receiver(rx)
    }

    fn from_receiver(rx: broadcast::Receiver<StreamItem>) -> Self {
        let inner = futures::stream::unfold((rx, false), |(mut rx, done)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Ok(Ok(event)) => Some((Ok(event), (rx, false))),
                Ok(Err(err @ Error::WatchResumed { .. })) => Some((Err(err), (rx, false))),
                // Every error but a lag or a resume says no more events will come.
                Ok(Err(err)) => Some((Err(err), (rx, true))),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    Some((Err(Error::Lagged { skipped }), (rx, false)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        WatchStream {
            inner: inner.boxed(),
        }
    }

    /// The next item; the same as `StreamExt::next` without importing it.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) {
    /// let mut all = client.watch_events();
    /// while let Some(Ok(event)) = all.recv().await {
    ///     println!("{event:?}");
    /// }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<Result<WatchEvent>> {
        self.inner.next().await
    }
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_protocol::EventKind;

    fn event(zxid: u64) -> WatchEvent {
        WatchEvent {
            kind: EventKind::NodeDataChanged,
            path: "/a".into(),
            zxid,
        }
    }

    #[tokio::test]
    async fn watcher_resolves_and_reports_drop() {
        let (tx, w) = Watcher::channel();
        assert!(tx.send(Ok(event(3))).is_ok());
        assert_eq!(w.await.ok(), Some(event(3)));

        let (tx, mut w) = Watcher::channel();
        assert!(w.try_take().is_none());
        drop(tx);
        assert!(matches!(w.await, Err(Error::Closed)));
    }

    #[tokio::test]
    async fn stream_reports_lag_then_continues() {
        let (tx, rx) = broadcast::channel(2);
        let mut s = WatchStream::new(rx);
        for z in 1..=4 {
            let _ = tx.send(Ok(event(z)));
        }
        assert!(matches!(
            s.recv().await,
            Some(Err(Error::Lagged { skipped: 2 }))
        ));
        assert_eq!(s.recv().await.and_then(|r| r.ok()), Some(event(3)));
        assert_eq!(s.recv().await.and_then(|r| r.ok()), Some(event(4)));
        drop(tx);
        assert!(s.recv().await.is_none());
    }

    #[tokio::test]
    async fn stream_ends_after_an_error() {
        let (tx, rx) = broadcast::channel(4);
        let mut s = WatchStream::new(rx);
        let _ = tx.send(Ok(event(1)));
        let _ = tx.send(Err(Error::SessionExpired));
        let _ = tx.send(Ok(event(2)));
        assert!(matches!(s.recv().await, Some(Ok(_))));
        assert!(matches!(s.recv().await, Some(Err(Error::SessionExpired))));
        assert!(s.recv().await.is_none());
        let mut ended = WatchStream::ended(Error::Closed);
        assert!(matches!(ended.recv().await, Some(Err(Error::Closed))));
        assert!(ended.recv().await.is_none());
    }
}
