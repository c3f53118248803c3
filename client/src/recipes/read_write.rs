//! A fair distributed read-write lock: typed access to `LockKind::Read` and
//! `LockKind::Write` on one lock.

use crate::client::Client;
use crate::lock::{LockBuilder, LockOptions};
use corral_protocol::LockKind;

/// A distributed read-write lock (Curator's `InterProcessReadWriteLock`): any number of
/// readers at once, or one writer.
///
/// Fairness is the server's: a read request is granted when no write request is queued
/// ahead of it, a write request when it is first in the queue. So a waiting writer holds
/// back the readers that come after it and cannot be starved by a stream of readers.
///
/// [`read`](Self::read) and [`write`](Self::write) return ordinary [`LockBuilder`]s (with
/// `acquire`, `try_acquire`, `acquire_timeout`) whose guards carry fencing tokens; the
/// options given with [`with_options`](Self::with_options) (TTL, lease, lock-delay,
/// data) apply to both, with the kind set by the method. Every request on the lock must
/// be a read or a write request: mixing in exclusive or semaphore requests on the same
/// name fails with `BadArguments`.
///
/// Unlike Curator's, it is not re-entrant and cannot be downgraded: every request is a
/// queue node of its own, and a request of a session that already holds the write side
/// (or, for a write request, any side) waits behind that session's own node. A writer
/// that asks for the read side before releasing the write side waits for itself for
/// ever (the server does not report a wait within one lock as a deadlock: it is common
/// with several tasks on one session). Release the write side first.
///
/// ```no_run
/// use corral_client::recipes::ReadWriteLock;
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let table = ReadWriteLock::new(&client, "/locks/table");
/// {
///     let reader = table.read().acquire().await?;
///     // ... read, alongside other readers ...
///     reader.release().await?;
/// }
/// let writer = table.write().acquire().await?;
/// // ... write, alone; fence the writes with writer.token() ...
/// writer.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ReadWriteLock {
    client: Client,
    name: String,
    options: LockOptions,
}

impl ReadWriteLock {
    /// The read-write lock named `name` (a node whose children form its queue), with
    /// default options (held under the session).
    ///
    /// ```no_run
    /// use corral_client::recipes::ReadWriteLock;
    /// # fn demo(client: corral_client::Client) {
    /// let lock = ReadWriteLock::new(&client, "/locks/table");
    /// assert_eq!(lock.name(), "/locks/table");
    /// # }
    /// ```
    pub fn new(client: &Client, name: &str) -> Self {
        ReadWriteLock {
            client: client.clone(),
            name: name.to_string(),
            options: LockOptions::default(),
        }
    }

    /// Acquires with these options (their `kind` is ignored: [`read`](Self::read) and
    /// [`write`](Self::write) set it).
    ///
    /// ```no_run
    /// use corral_client::recipes::ReadWriteLock;
    /// use corral_client::LockOptions;
    /// use std::time::Duration;
    /// # fn demo(client: corral_client::Client) {
    /// let lock = ReadWriteLock::new(&client, "/locks/table")
    ///     .with_options(LockOptions::default().with_ttl(Duration::from_secs(5)));
    /// # }
    /// ```
    pub fn with_options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// The lock's name.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let lock = corral_client::recipes::ReadWriteLock::new(&client, "/locks/t");
    /// assert_eq!(lock.name(), "/locks/t");
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared side: a [`LockBuilder`] for read requests.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lock = corral_client::recipes::ReadWriteLock::new(&client, "/locks/table");
    /// if let Some(reader) = lock.read().acquire_timeout(Duration::from_secs(1)).await? {
    ///     assert_eq!(reader.kind(), corral_client::LockKind::Read);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read(&self) -> LockBuilder {
        self.builder(LockKind::Read)
    }

    /// The exclusive side: a [`LockBuilder`] for write requests.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lock = corral_client::recipes::ReadWriteLock::new(&client, "/locks/table");
    /// match lock.write().try_acquire().await? {
    ///     Some(writer) => println!("writing with token {}", writer.token()),
    ///     None => println!("readers or a writer hold it"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn write(&self) -> LockBuilder {
        self.builder(LockKind::Write)
    }

    fn builder(&self, kind: LockKind) -> LockBuilder {
        self.client
            .lock(&self.name, self.options.clone().with_kind(kind))
    }
}
