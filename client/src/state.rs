//! The connection state a client reports, and the stream of its changes.

use futures::stream::{BoxStream, Stream, StreamExt};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{broadcast, watch};

/// Where a [`Client`](crate::Client) stands with the servers.
///
/// The usual life is `Connecting`, `Connected`, then, if the connection drops,
/// `Disconnected`, `Connecting`, `Connected` again (same session), and finally `Closed`
/// (after [`Client::close`](crate::Client::close)) or `Expired`. `Expired` and `Closed`
/// are final.
///
/// ```
/// use corral_client::ConnectionState;
/// let s = ConnectionState::Connected { address: "127.0.0.1:2281".into() };
/// assert!(s.is_connected() && !s.is_terminal());
/// assert!(ConnectionState::Expired.is_terminal());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening a connection and attaching the session to it.
    Connecting,
    /// The session is attached to a connection with this server.
    Connected {
        /// The `host:port` the client is connected to.
        address: String,
    },
    /// The connection was lost; the client is about to reconnect. Calls wait (up to
    /// `request_timeout`) while the session may still be alive, and fail with
    /// [`Error::ConnectionLoss`](crate::Error::ConnectionLoss) once it may not.
    Disconnected,
    /// The session expired: its ephemeral nodes are gone and every call fails with
    /// [`Error::SessionExpired`](crate::Error::SessionExpired). Final.
    Expired,
    /// The client was closed (or its session taken over by another connection). Final.
    Closed,
}

impl ConnectionState {
    /// Whether the session is attached to a live connection.
    ///
    /// ```
    /// assert!(!corral_client::ConnectionState::Connecting.is_connected());
    /// ```
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// Whether this state is final (`Expired` or `Closed`).
    ///
    /// ```
    /// assert!(corral_client::ConnectionState::Closed.is_terminal());
    /// ```
    pub fn is_terminal(&self) -> bool {
        matches!(self, ConnectionState::Expired | ConnectionState::Closed)
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionState::Connecting => f.write_str("connecting"),
            ConnectionState::Connected { address } => write!(f, "connected to {address}"),
            ConnectionState::Disconnected => f.write_str("disconnected"),
            ConnectionState::Expired => f.write_str("session expired"),
            ConnectionState::Closed => f.write_str("closed"),
        }
    }
}

/// Publishes the state: the current value for [`Client::state`](crate::Client::state)
/// and every transition for [`StateStream`]s.
#[derive(Debug)]
pub(crate) struct StatePublisher {
    /// The current state, with the number of its transition.
    current: watch::Sender<(u64, ConnectionState)>,
    /// Every transition, numbered: a stream that lagged and skipped to the current state
    /// drops the older transitions still buffered by their numbers.
    changes: broadcast::Sender<(u64, ConnectionState)>,
}

/// Transitions buffered per [`StateStream`] before a slow reader skips some.
const STATE_BUFFER: usize = 64;

impl StatePublisher {
    pub(crate) fn new(initial: ConnectionState) -> Self {
        StatePublisher {
            current: watch::Sender::new((0, initial)),
            changes: broadcast::Sender::new(STATE_BUFFER),
        }
    }

    pub(crate) fn get(&self) -> ConnectionState {
        self.current.borrow().1.clone()
    }

    /// Publishes `state` unless it is the current one; once terminal, nothing changes.
    pub(crate) fn set(&self, state: ConnectionState) {
        let mut seq = 0;
        let changed = self.current.send_if_modified(|(number, current)| {
            if *current == state || current.is_terminal() {
                false
            } else {
                *number += 1;
                seq = *number;
                *current = state.clone();
                true
            }
        });
        if changed {
            // No subscriber is fine.
            let _ = self.changes.send((seq, state));
        }
    }

    pub(crate) fn subscribe(&self) -> StateStream {
        // Subscribe before reading the state, so a final transition published in
        // between is not missed.
        let changes = self.changes.subscribe();
        let current = self.get();
        if current.is_terminal() {
            return StateStream {
                inner: futures::stream::once(async move { current }).boxed(),
            };
        }
        StateStream::new(changes, self.current.subscribe())
    }
}

/// A stream of [`ConnectionState`] transitions, from
/// [`Client::state_events`](crate::Client::state_events).
///
/// It yields every transition after its creation, in order. A reader that falls more
/// than 64 transitions behind skips to the current state. The stream ends after the
/// final state (`Expired` or `Closed`) or when the client is dropped.
///
/// ```no_run
/// use futures::StreamExt;
/// # async fn demo(client: corral_client::Client) {
/// let mut states = client.state_events();
/// while let Some(state) = states.next().await {
///     println!("client is {state}");
/// }
/// # }
/// ```
pub struct StateStream {
    inner: BoxStream<'static, ConnectionState>,
}

impl StateStream {
    fn new(
        changes: broadcast::Receiver<(u64, ConnectionState)>,
        current: watch::Receiver<(u64, ConnectionState)>,
    ) -> Self {
        // `skip_to`: after a lag, the transitions up to this number were skipped (the
        // current state was yielded instead); older ones still buffered are dropped, so
        // the stream never goes back to an earlier state.
        let inner = futures::stream::unfold(
            (changes, current, 0u64, false),
            |(mut changes, current, mut skip_to, done)| async move {
                if done {
                    return None;
                }
                let state = loop {
                    match changes.recv().await {
                        Ok((seq, _)) if seq <= skip_to => {}
                        Ok((_, state)) => break state,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let (seq, state) = current.borrow().clone();
                            skip_to = seq;
                            break state;
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                };
                let done = state.is_terminal();
                Some((state, (changes, current, skip_to, done)))
            },
        );
        StateStream {
            inner: inner.boxed(),
        }
    }

    /// The next transition; the same as `StreamExt::next` without importing it.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) {
    /// let mut states = client.state_events();
    /// let next = states.recv().await;
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<ConnectionState> {
        self.inner.next().await
    }
}

impl fmt::Debug for StateStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStream").finish_non_exhaustive()
    }
}

impl Stream for StateStream {
    type Item = ConnectionState;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn transitions_then_end_at_terminal() {
        let p = StatePublisher::new(ConnectionState::Connecting);
        let mut s = p.subscribe();
        let connected = ConnectionState::Connected {
            address: "x:1".into(),
        };
        p.set(connected.clone());
        p.set(connected.clone()); // no change, no event
        p.set(ConnectionState::Disconnected);
        p.set(ConnectionState::Expired);
        p.set(ConnectionState::Connecting); // terminal is final
        assert_eq!(p.get(), ConnectionState::Expired);
        assert_eq!(s.recv().await, Some(connected));
        assert_eq!(s.recv().await, Some(ConnectionState::Disconnected));
        assert_eq!(s.recv().await, Some(ConnectionState::Expired));
        assert_eq!(s.recv().await, None);
        // Subscribing after the end yields the final state and ends.
        let mut late = p.subscribe();
        assert_eq!(late.recv().await, Some(ConnectionState::Expired));
        assert_eq!(late.recv().await, None);
    }

    #[tokio::test]
    async fn lagging_reader_never_goes_back_to_older_states() {
        let p = StatePublisher::new(ConnectionState::Connecting);
        let mut s = p.subscribe();
        let connected = |i: usize| ConnectionState::Connected {
            address: format!("h:{i}"),
        };
        for i in 0..(STATE_BUFFER * 2) {
            p.set(connected(i));
        }
        // Lagged: the current state, and then only what comes after it.
        assert_eq!(s.recv().await, Some(connected(STATE_BUFFER * 2 - 1)));
        let next = futures::FutureExt::now_or_never(s.recv());
        assert_eq!(next, None, "an older state after the current one");
        p.set(ConnectionState::Disconnected);
        assert_eq!(s.recv().await, Some(ConnectionState::Disconnected));
        p.set(ConnectionState::Closed);
        assert_eq!(s.recv().await, Some(ConnectionState::Closed));
        assert_eq!(s.recv().await, None);
    }

    #[tokio::test]
    async fn lagging_reader_skips_to_current() {
        let p = StatePublisher::new(ConnectionState::Connecting);
        let mut s = p.subscribe();
        for i in 0..(STATE_BUFFER * 2) {
            p.set(ConnectionState::Connected {
                address: format!("h:{i}"),
            });
        }
        p.set(ConnectionState::Closed);
        assert_eq!(s.recv().await, Some(ConnectionState::Closed));
        assert_eq!(s.recv().await, None);
    }
}
