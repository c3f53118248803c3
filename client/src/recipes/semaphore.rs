//! A distributed counting semaphore on `LockKind::Semaphore`.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::lock::{LockBuilder, LockGuard, LockLoss, LockOptions};
use corral_protocol::{ErrorCode, ErrorInfo, LockKind};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// A distributed counting semaphore (Curator's `InterProcessSemaphoreV2`): at most
/// `permits` holders at a time, granted in FIFO order by the server.
///
/// Each [`Permit`] is a lock grant with its own fencing token; dropping it gives the
/// permit back in the background. Every request on one name must ask for the same
/// number of permits (another number fails with `BadArguments`).
///
/// ```no_run
/// use corral_client::recipes::Semaphore;
/// use std::time::Duration;
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let downloads = Semaphore::new(&client, "/limits/downloads", 3);
/// let permit = downloads.acquire().await?;
/// // ... at most three of these run at once, cluster-wide ...
/// permit.release().await?;
/// if let Some(permit) = downloads.acquire_timeout(Duration::from_secs(1)).await? {
///     println!("permit {}", permit.token());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    client: Client,
    name: String,
    permits: u32,
    options: LockOptions,
}

impl Semaphore {
    /// The semaphore named `name` with `permits` permits, held under the session.
    ///
    /// ```no_run
    /// use corral_client::recipes::Semaphore;
    /// # fn demo(client: corral_client::Client) {
    /// let s = Semaphore::new(&client, "/limits/db", 2);
    /// assert_eq!(s.permits(), 2);
    /// # }
    /// ```
    pub fn new(client: &Client, name: &str, permits: u32) -> Self {
        Semaphore {
            client: client.clone(),
            name: name.to_string(),
            permits,
            options: LockOptions::default(),
        }
    }

    /// Acquires with these options (TTL, lease, data; their `kind` is ignored).
    ///
    /// ```no_run
    /// use corral_client::{recipes::Semaphore, LockOptions};
    /// use std::time::Duration;
    /// # fn demo(client: corral_client::Client) {
    /// let s = Semaphore::new(&client, "/limits/db", 2)
    ///     .with_options(LockOptions::default().with_ttl(Duration::from_secs(5)));
    /// # }
    /// ```
    pub fn with_options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// The semaphore's name.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let s = corral_client::recipes::Semaphore::new(&client, "/limits/db", 2);
    /// assert_eq!(s.name(), "/limits/db");
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of permits.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// assert_eq!(corral_client::recipes::Semaphore::new(&client, "/s", 5).permits(), 5);
    /// # }
    /// ```
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Waits in the queue for a permit. Dropping the future leaves the queue.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let s = corral_client::recipes::Semaphore::new(&client, "/limits/db", 2);
    /// let permit = s.acquire().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<Permit> {
        self.builder()?.acquire().await.map(Permit::from)
    }

    /// Takes a permit only if one is free now (`Ok(None)` otherwise; nothing is left in
    /// the queue).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let s = corral_client::recipes::Semaphore::new(&client, "/limits/db", 2);
    /// match s.try_acquire().await? {
    ///     Some(permit) => println!("permit {}", permit.token()),
    ///     None => println!("all permits taken"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<Option<Permit>> {
        Ok(self.builder()?.try_acquire().await?.map(Permit::from))
    }

    /// Waits for a permit for at most `timeout`: `Ok(None)` then, having left the
    /// queue. The request's answer is awaited for at least
    /// [`ACQUIRE_ANSWER_GRACE`](crate::ACQUIRE_ANSWER_GRACE) (1 s): a free permit is
    /// taken even with a zero timeout or one shorter than a round trip
    /// (`acquire_timeout(Duration::ZERO)` is a try). See
    /// [`LockBuilder::acquire_timeout`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let s = corral_client::recipes::Semaphore::new(&client, "/limits/db", 2);
    /// let Some(permit) = s.acquire_timeout(Duration::from_millis(500)).await? else {
    ///     return Ok(());
    /// };
    /// # Ok(()) }
    /// ```
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Option<Permit>> {
        Ok(self
            .builder()?
            .acquire_timeout(timeout)
            .await?
            .map(Permit::from))
    }

    /// How many permits are held now (by anyone), as the server reports.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let s = corral_client::recipes::Semaphore::new(&client, "/limits/db", 2);
    /// println!("{} of {} permits in use", s.in_use().await?, s.permits());
    /// # Ok(()) }
    /// ```
    pub async fn in_use(&self) -> Result<u32> {
        let locks = self.client.locks(&self.name).await?;
        let held = locks
            .iter()
            .filter(|l| l.lock == self.name)
            .flat_map(|l| l.queue.iter())
            .filter(|e| e.granted)
            .count();
        Ok(u32::try_from(held).unwrap_or(u32::MAX))
    }

    fn builder(&self) -> Result<LockBuilder> {
        if self.permits == 0 {
            return Err(Error::Server(ErrorInfo::new(
                ErrorCode::BadArguments,
                format!("semaphore {} needs at least one permit", self.name),
            )));
        }
        let kind = LockKind::Semaphore {
            permits: self.permits,
        };
        Ok(self
            .client
            .lock(&self.name, self.options.clone().with_kind(kind)))
    }
}

/// A permit of a [`Semaphore`]: a lock grant. Dropping it gives the permit back in the
/// background; [`release`](Self::release) does it now.
///
/// ```no_run
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let s = corral_client::recipes::Semaphore::new(&client, "/limits/db", 2);
/// let permit = s.acquire().await?;
/// tokio::select! {
///     why = permit.lost() => eprintln!("permit lost: {why}"),
///     () = async { /* work */ } => {}
/// }
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Permit {
    guard: LockGuard,
}

impl From<LockGuard> for Permit {
    fn from(guard: LockGuard) -> Self {
        Permit { guard }
    }
}

impl Permit {
    /// The fencing token of this grant.
    ///
    /// ```no_run
    /// # async fn demo(s: corral_client::recipes::Semaphore) -> corral_client::Result<()> {
    /// let permit = s.acquire().await?;
    /// println!("token {}", permit.token());
    /// # Ok(()) }
    /// ```
    pub fn token(&self) -> u64 {
        self.guard.token()
    }

    /// The queue node that holds the permit.
    ///
    /// ```no_run
    /// # async fn demo(s: corral_client::recipes::Semaphore) -> corral_client::Result<()> {
    /// let permit = s.acquire().await?;
    /// assert!(permit.node().starts_with(s.name()));
    /// # Ok(()) }
    /// ```
    pub fn node(&self) -> &str {
        self.guard.node()
    }

    /// Whether the permit is still held as far as the client can tell.
    ///
    /// ```no_run
    /// # async fn demo(s: corral_client::recipes::Semaphore) -> corral_client::Result<()> {
    /// let permit = s.acquire().await?;
    /// assert!(permit.is_held());
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self) -> bool {
        self.guard.is_held()
    }

    /// Until when the permit is certainly held; see [`LockGuard::safe_deadline`].
    ///
    /// ```no_run
    /// # async fn demo(s: corral_client::recipes::Semaphore) -> corral_client::Result<()> {
    /// let permit = s.acquire().await?;
    /// let left = permit.safe_deadline() - tokio::time::Instant::now();
    /// # Ok(()) }
    /// ```
    pub fn safe_deadline(&self) -> Instant {
        self.guard.safe_deadline()
    }

    /// Resolves when the permit is lost (or released), with why; see
    /// [`LockGuard::lost`].
    ///
    /// ```no_run
    /// # async fn demo(s: corral_client::recipes::Semaphore) -> corral_client::Result<()> {
    /// let permit = s.acquire().await?;
    /// let lost = permit.lost();
    /// tokio::spawn(async move { eprintln!("permit gone: {}", lost.await) });
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LockLoss> + Send + 'static {
        self.guard.lost()
    }

    /// Gives the permit back: `Ok(true)` if this released it, `Ok(false)` if it was
    /// already gone; see [`LockGuard::release`].
    ///
    /// ```no_run
    /// # async fn demo(s: corral_client::recipes::Semaphore) -> corral_client::Result<()> {
    /// let permit = s.acquire().await?;
    /// assert!(permit.release().await?);
    /// # Ok(()) }
    /// ```
    pub async fn release(&self) -> Result<bool> {
        self.guard.release().await
    }

    /// The underlying lock guard (for [`LockGuard::check_op`], [`LockGuard::renew`]).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client, s: corral_client::recipes::Semaphore) -> corral_client::Result<()> {
    /// let permit = s.acquire().await?;
    /// client.multi(vec![permit.guard().check_op()]).await?;
    /// # Ok(()) }
    /// ```
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// The underlying lock guard, by value.
    ///
    /// ```no_run
    /// # async fn demo(s: corral_client::recipes::Semaphore) -> corral_client::Result<()> {
    /// let guard: corral_client::LockGuard = s.acquire().await?.into_guard();
    /// # Ok(()) }
    /// ```
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }
}
