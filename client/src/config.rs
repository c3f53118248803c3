//! Client configuration.

use crate::error::{Error, Result};
use corral_protocol::DEFAULT_MAX_FRAME_BYTES;
use std::time::Duration;

/// The server deduplicates the last this many writes of a session; more writes in flight
/// could not be safely resent after a reconnect.
///
/// ```
/// use corral_client::{ClientConfig, SERVER_DEDUP_WINDOW};
/// let config = ClientConfig::default().with_max_in_flight(SERVER_DEDUP_WINDOW);
/// assert!(config.validate().is_ok());
/// ```
pub const SERVER_DEDUP_WINDOW: usize = 1024;

/// How a [`Client`](crate::Client) connects and what it allows itself.
///
/// Build it with [`ClientConfig::new`] and the `with_*` methods, or with `Default` and
/// struct update syntax:
///
/// ```
/// use corral_client::ClientConfig;
/// use std::time::Duration;
///
/// let a = ClientConfig::new(["10.0.0.1:2281", "10.0.0.2:2281"])
///     .with_session_ttl(Duration::from_secs(15));
/// let b = ClientConfig {
///     addresses: vec!["127.0.0.1:2281".into()],
///     request_timeout: Duration::from_secs(5),
///     ..ClientConfig::default()
/// };
/// assert!(a.validate().is_ok() && b.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Servers as `host:port`; the client starts at a random one and moves round robin
    /// on failure.
    pub addresses: Vec<String>,
    /// The session TTL to ask for (the server may clamp it). Default 10 s.
    pub session_ttl: Duration,
    /// Time allowed for one TCP connect plus handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// Time allowed for a call from start to answer, queueing and reconnects included;
    /// past it the call fails with [`Error::Timeout`]. Default 30 s.
    pub request_timeout: Duration,
    /// Most requests in flight on the connection at once; more callers wait. At most
    /// [`SERVER_DEDUP_WINDOW`]. Default 512.
    pub max_in_flight: usize,
    /// Largest frame sent or accepted, in bytes (the smaller of this and the server's
    /// limit is used for sending). A response over it is skipped, and its request fails
    /// with `FrameTooLarge`; the connection stays. Default [`DEFAULT_MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// Buffered events per watch event stream before a slow reader loses events (it is
    /// then told with [`Error::Lagged`]). Default 1024.
    pub event_buffer: usize,
    /// Longest pause between reconnect rounds (exponential backoff with jitter up to
    /// this), and between attempts of a background request (a dropped guard's release,
    /// a dropped lease's revoke, a double barrier's delete) that the server answered
    /// with a transient error. Default 2 s.
    pub max_backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            addresses: vec!["127.0.0.1:2281".to_string()],
            session_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 512,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            event_buffer: 1024,
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl ClientConfig {
    /// The default configuration with these server addresses.
    ///
    /// ```
    /// let config = corral_client::ClientConfig::new(["127.0.0.1:2281"]);
    /// assert_eq!(config.addresses.len(), 1);
    /// ```
    pub fn new<I, S>(addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            addresses: addresses.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }

    /// Parses a comma-separated address list such as `"a:2281,b:2281"`.
    ///
    /// ```
    /// let config = corral_client::ClientConfig::from_address_list("a:1, b:2");
    /// assert_eq!(config.addresses, ["a:1", "b:2"]);
    /// ```
    pub fn from_address_list(list: &str) -> Self {
        ClientConfig::new(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }

    /// Sets [`session_ttl`](Self::session_ttl).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = corral_client::ClientConfig::default().with_session_ttl(Duration::from_secs(6));
    /// ```
    pub fn with_session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = corral_client::ClientConfig::default().with_connect_timeout(Duration::from_secs(1));
    /// ```
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = corral_client::ClientConfig::default().with_request_timeout(Duration::from_secs(3));
    /// ```
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    ///
    /// ```
    /// let c = corral_client::ClientConfig::default().with_max_in_flight(64);
    /// ```
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// Sets [`max_frame_bytes`](Self::max_frame_bytes).
    ///
    /// ```
    /// let c = corral_client::ClientConfig::default().with_max_frame_bytes(1 << 16);
    /// ```
    pub fn with_max_frame_bytes(mut self, max: usize) -> Self {
        self.max_frame_bytes = max;
        self
    }

    /// Sets [`event_buffer`](Self::event_buffer).
    ///
    /// ```
    /// let c = corral_client::ClientConfig::default().with_event_buffer(64);
    /// ```
    pub fn with_event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = corral_client::ClientConfig::default().with_max_backoff(Duration::from_millis(500));
    /// ```
    pub fn with_max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Checks the limits; [`Client::connect`](crate::Client::connect) calls it.
    ///
    /// ```
    /// let bad = corral_client::ClientConfig::default().with_max_in_flight(0);
    /// assert!(bad.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let fail = |why: String| Err(Error::InvalidConfig(why));
        if self.addresses.is_empty() {
            return fail("no server address".into());
        }
        if let Some(bad) = self.addresses.iter().find(|a| a.trim().is_empty()) {
            return fail(format!("empty server address {bad:?}"));
        }
        if self.session_ttl < Duration::from_millis(30) {
            return fail(format!("session_ttl {:?} is too short", self.session_ttl));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return fail("connect_timeout and request_timeout must be positive".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight > SERVER_DEDUP_WINDOW {
            return fail(format!(
                "max_in_flight {} must be in 1..={SERVER_DEDUP_WINDOW} (the server's dedup window)",
                self.max_in_flight
            ));
        }
        if self.max_frame_bytes < 1024 {
            return fail(format!(
                "max_frame_bytes {} is too small",
                self.max_frame_bytes
            ));
        }
        if self.event_buffer == 0 {
            return fail("event_buffer must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = ClientConfig::default();
        assert_eq!(c.session_ttl, Duration::from_secs(10));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.max_in_flight, 512);
        assert_eq!(c.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn address_list() {
        let c = ClientConfig::from_address_list("a:1,,b:2 ");
        assert_eq!(c.addresses, vec!["a:1".to_string(), "b:2".to_string()]);
        assert!(ClientConfig::from_address_list(" , ").validate().is_err());
    }

    #[test]
    fn limits() {
        let ok = ClientConfig::default();
        assert!(ok.clone().with_max_in_flight(1024).validate().is_ok());
        assert!(ok.clone().with_max_in_flight(1025).validate().is_err());
        assert!(ok.clone().with_max_in_flight(0).validate().is_err());
        assert!(ok.clone().with_event_buffer(0).validate().is_err());
        assert!(ok
            .clone()
            .with_request_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(ok.with_session_ttl(Duration::ZERO).validate().is_err());
    }
}
