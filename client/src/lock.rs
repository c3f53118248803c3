//! Distributed locks: [`Client::lock`] builds a [`LockBuilder`], whose acquire methods
//! return a [`LockGuard`] with a fencing token.
//!
//! The server keeps the queue and decides grants (see `Op::Lock`): a request is answered
//! `Locked` at once or `Queued`, and a queued request is granted later by a pushed
//! `LockGranted` event that the connection task routes to the waiter (see
//! [`crate::lock_registry`]). The client adds what only it can know: when its lease (or
//! session) may have run out on the server, from the send times of acknowledged
//! renewals (see [`crate::lease`]). A grant is only reported as held while that is not
//! the case ("waiting is not holding"), and a guard counts as lost from the moment it
//! is the case, even while disconnected.

use crate::client::{check_path, unexpected, Client};
use crate::connection::{Detached, Then};
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseOptions, LeaseState, Renewal};
use crate::lock_registry::{RequestNodes, SlotStatus};
use corral_protocol::{ErrorCode, LockKind, LockRequest, LockState, MultiOp, Op, OpResult};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// Why a lock is no longer held (or a waiting request no longer waits), as told by
/// [`LockGuard::lost`] and [`Error::LockLost`].
///
/// ```
/// use corral_client::LockLoss;
/// assert_eq!(LockLoss::DeadlinePassed.to_string(),
///     "the safe deadline of its lease or session passed without an acknowledged renewal");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockLoss {
    /// Released by this client ([`LockGuard::release`], or the guard was dropped).
    Released,
    /// The server expired the lease it was held under (renewals stopped reaching it).
    LeaseExpired,
    /// The lease it was held under was revoked.
    LeaseRevoked,
    /// The client-side safe deadline of its lease or session passed without an
    /// acknowledged renewal: the server may have expired it and granted the lock to
    /// someone else. Stop using the lock.
    DeadlinePassed,
    /// The session expired or the client was closed.
    SessionEnded,
    /// The queue node was found gone when the client re-read the lock after a
    /// reconnect (its lease expired while the client was away, or it was deleted).
    Gone,
}

impl fmt::Display for LockLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockLoss::Released => "released",
            LockLoss::LeaseExpired => "its lease expired on the server",
            LockLoss::LeaseRevoked => "its lease was revoked",
            LockLoss::DeadlinePassed => {
                "the safe deadline of its lease or session passed without an acknowledged renewal"
            }
            LockLoss::SessionEnded => "the session ended",
            LockLoss::Gone => "its queue node is gone",
        })
    }
}

/// How to acquire a lock; see [`Client::lock`].
///
/// Build with `Default` and the `with_*` methods, or with struct update syntax:
///
/// ```
/// use corral_client::{LockKind, LockOptions};
/// use std::time::Duration;
/// let writer = LockOptions::default()
///     .with_kind(LockKind::Write)
///     .with_ttl(Duration::from_secs(5))
///     .with_data(b"host-7".to_vec());
/// let reader = LockOptions { kind: LockKind::Read, ..LockOptions::default() };
/// assert_eq!(reader.ttl, None);
/// # let _ = writer;
/// ```
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Exclusive (default), read, write, or a semaphore. Every request on one lock must
    /// use the same family.
    pub kind: LockKind,
    /// `None` (default): the lock is held under the session, until released or the
    /// session ends. `Some(ttl)`: under a lease of its own, created for this lock,
    /// renewed as [`renewal`](Self::renewal) says, and revoked on release: a holder
    /// whose renewals stop loses the lock after `ttl` even if its session lives on.
    pub ttl: Option<Duration>,
    /// Hold the lock under this existing lease instead (takes precedence over `ttl`;
    /// not revoked on release).
    pub lease: Option<Lease>,
    /// How the dedicated lease of a lock with a `ttl` is renewed. Default
    /// [`Renewal::Auto`] (every third of the TTL).
    pub renewal: Renewal,
    /// Lock-delay: after a holder's lease expires (not after a release) nobody is
    /// granted for this long, so that a paused former holder can notice. Set by the
    /// request that creates the lock. Default zero.
    pub lock_delay: Duration,
    /// Data stored in the queue node (who holds it, say), visible to `get_data`.
    pub data: Vec<u8>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            kind: LockKind::Exclusive,
            ttl: None,
            lease: None,
            renewal: Renewal::Auto,
            lock_delay: Duration::ZERO,
            data: Vec::new(),
        }
    }
}

impl LockOptions {
    /// Sets the kind.
    ///
    /// ```
    /// use corral_client::{LockKind, LockOptions};
    /// let o = LockOptions::default().with_kind(LockKind::Semaphore { permits: 3 });
    /// assert_eq!(o.kind, LockKind::Semaphore { permits: 3 });
    /// ```
    pub fn with_kind(mut self, kind: LockKind) -> Self {
        self.kind = kind;
        self
    }

    /// Holds the lock under a dedicated lease of this TTL.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = corral_client::LockOptions::default().with_ttl(Duration::from_secs(2));
    /// assert_eq!(o.ttl, Some(Duration::from_secs(2)));
    /// ```
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Holds the lock under an existing lease.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(std::time::Duration::from_secs(5)).await?;
    /// let o = corral_client::LockOptions::default().with_lease(lease);
    /// # Ok(()) }
    /// ```
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Sets how a dedicated lease is renewed.
    ///
    /// ```
    /// use corral_client::{LockOptions, Renewal};
    /// let o = LockOptions::default().with_renewal(Renewal::Manual);
    /// assert_eq!(o.renewal, Renewal::Manual);
    /// ```
    pub fn with_renewal(mut self, renewal: Renewal) -> Self {
        self.renewal = renewal;
        self
    }

    /// Sets the lock-delay.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = corral_client::LockOptions::default().with_lock_delay(Duration::from_secs(1));
    /// assert_eq!(o.lock_delay, Duration::from_secs(1));
    /// ```
    pub fn with_lock_delay(mut self, lock_delay: Duration) -> Self {
        self.lock_delay = lock_delay;
        self
    }

    /// Sets the data stored in the queue node.
    ///
    /// ```
    /// let o = corral_client::LockOptions::default().with_data(b"me".to_vec());
    /// assert_eq!(o.data, b"me");
    /// ```
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }
}

/// Counters of the lock API, kept with atomics only.
#[derive(Debug, Default)]
pub(crate) struct LockCounters {
    granted: AtomicU64,
    timed_out: AtomicU64,
    try_failed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    wait_total_us: AtomicU64,
    wait_max_us: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) failed_releases: AtomicU64,
}

impl LockCounters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn waited(&self, wait: Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.wait_total_us.fetch_add(us, Ordering::Relaxed);
        self.wait_max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LockStats {
            granted: get(&self.granted),
            timed_out: get(&self.timed_out),
            try_failed: get(&self.try_failed),
            cancelled: get(&self.cancelled),
            failed: get(&self.failed),
            wait_total: Duration::from_micros(get(&self.wait_total_us)),
            wait_max: Duration::from_micros(get(&self.wait_max_us)),
            released: get(&self.released),
            failed_releases: get(&self.failed_releases),
        }
    }
}

/// A snapshot of a client's lock counters, from [`Client::lock_stats`]. Every acquire
/// attempt ends in exactly one of `granted`, `timed_out`, `try_failed`, `cancelled` or
/// `failed`.
///
/// ```no_run
/// # fn demo(client: corral_client::Client) {
/// let stats = client.lock_stats();
/// println!(
///     "{} granted (mean wait {:?}), {} timed out, {} failed releases",
///     stats.granted,
///     stats.mean_wait(),
///     stats.timed_out,
///     stats.failed_releases
/// );
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockStats {
    /// Acquires that returned a guard.
    pub granted: u64,
    /// Acquires that gave up at their timeout.
    pub timed_out: u64,
    /// `try_acquire`s that found the lock held.
    pub try_failed: u64,
    /// Acquires whose future was dropped before they finished.
    pub cancelled: u64,
    /// Acquires that failed with an error.
    pub failed: u64,
    /// Total time granted acquires took, from the call to the grant.
    pub wait_total: Duration,
    /// The longest of those.
    pub wait_max: Duration,
    /// [`LockGuard::release`] calls that released the lock (`Ok(true)`).
    pub released: u64,
    /// [`LockGuard::release`] calls that failed with an error.
    pub failed_releases: u64,
}

impl LockStats {
    /// Mean time a granted acquire took (zero if none).
    ///
    /// ```
    /// assert_eq!(corral_client::LockStats::default().mean_wait(), std::time::Duration::ZERO);
    /// ```
    pub fn mean_wait(&self) -> Duration {
        match u32::try_from(self.granted) {
            Ok(0) => Duration::ZERO,
            Ok(n) => self.wait_total / n,
            Err(_) => self.wait_total / u32::MAX,
        }
    }
}

/// The operation for a multi that fails with `LockNotHeld` unless the fencing `token`
/// currently holds `lock`: the guard on writes to corral itself. See also
/// [`Transaction::check_lock`](crate::Transaction::check_lock) and
/// [`LockGuard::check_op`].
///
/// ```no_run
/// use corral_client::{check_lock, MultiOp};
/// # async fn demo(client: corral_client::Client, token: u64) -> corral_client::Result<()> {
/// client
///     .multi(vec![
///         check_lock("/locks/config", token),
///         MultiOp::SetData { path: "/config".into(), data: b"v2".to_vec(), version: None },
///     ])
///     .await?;
/// # Ok(()) }
/// ```
pub fn check_lock(lock: &str, token: u64) -> MultiOp {
    MultiOp::CheckLock {
        lock: lock.to_string(),
        token,
    }
}

/// A lock of one name with its options, from [`Client::lock`]; acquire it as many
/// times as needed.
///
/// ```no_run
/// use corral_client::LockOptions;
/// use std::time::Duration;
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let lock = client.lock("/locks/report", LockOptions::default());
/// if let Some(guard) = lock.acquire_timeout(Duration::from_secs(2)).await? {
///     println!("token {}", guard.token());
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LockBuilder {
    client: Client,
    name: String,
    options: LockOptions,
}

/// The end an acquire attempt came to, for the counters; an attempt dropped before it
/// records one counts as cancelled, and a queue node it still owns is released.
pub(crate) struct Attempt<'a> {
    client: &'a Client,
    started: Instant,
    recorded: bool,
    /// The queue nodes to release if the attempt ends without handing them over.
    pub(crate) node: Option<RequestNodes>,
}

impl<'a> Attempt<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Attempt {
            client,
            started: Instant::now(),
            recorded: false,
            node: None,
        }
    }

    fn record(&mut self, counter: fn(&LockCounters) -> &AtomicU64) {
        if !self.recorded {
            self.recorded = true;
            LockCounters::add(counter(self.client.lock_counters()));
        }
    }

    pub(crate) fn granted(&mut self) {
        self.node = None;
        self.record(|c| &c.granted);
        self.client.lock_counters().waited(self.started.elapsed());
    }

    pub(crate) fn timed_out(&mut self) {
        self.record(|c| &c.timed_out);
    }

    pub(crate) fn try_failed(&mut self) {
        self.record(|c| &c.try_failed);
    }

    pub(crate) fn failed(&mut self) {
        self.record(|c| &c.failed);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.record(|c| &c.cancelled);
        if let Some(nodes) = self.node.take() {
            detach_release(self.client, nodes);
        }
    }
}

/// Releases a request's queue nodes in the background.
pub(crate) fn detach_release(client: &Client, nodes: RequestNodes) {
    client.detach(nodes.release_op(), Then::Detached(Detached::Release(nodes)));
}

/// Releases the nodes of a granted request (a guard's `release`): `Ok(true)` if the
/// server says this call released them (`released: true`), `Ok(false)` if they were gone;
/// either way `released` is set. The server's answer decides, not which of concurrent
/// calls finishes first: it applies one release, the others find the nodes gone. Then
/// revokes `dedicated_lease`, the lease made for this lock. Counts the outcome.
pub(crate) async fn release_held(
    client: &Client,
    nodes: RequestNodes,
    released: &AtomicBool,
    dedicated_lease: Option<&Lease>,
) -> Result<bool> {
    let outcome = client.call(nodes.release_op(), Then::Release(nodes)).await;
    let released_now = match outcome {
        Ok(reply) => match reply.result {
            OpResult::Unlocked { released } => released,
            other => {
                LockCounters::add(&client.lock_counters().failed_releases);
                return Err(unexpected("unlock", &other));
            }
        },
        // The session is gone, and its locks with it.
        Err(Error::SessionExpired | Error::Closed) => false,
        Err(e) => {
            LockCounters::add(&client.lock_counters().failed_releases);
            return Err(e);
        }
    };
    released.store(true, Ordering::SeqCst);
    if let Some(lease) = dedicated_lease {
        if let Err(e) = lease.revoke().await {
            tracing::debug!(lease = lease.id(), "revoking a released lock's lease: {e}");
        }
    }
    if released_now {
        LockCounters::add(&client.lock_counters().released);
    }
    Ok(released_now)
}

/// The deadline `timeout` from now; `None` (no deadline) if the clock cannot represent it,
/// as for `Duration::MAX`, a common way to say "no timeout".
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// How long past its deadline an acquire with a timeout waits at most for the answers to
/// its requests (a dedicated lease's grant, the lock request): a timeout shorter than a
/// round trip (zero, say) still gets them, so a free lock is taken, and a server that
/// cannot answer (a partition, no quorum) costs at most this beyond the timeout.
pub const ACQUIRE_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Until when an acquire that must be done by `deadline` waits for the answers to its
/// requests: the deadline, but at least [`ACQUIRE_ANSWER_GRACE`] from now.
pub(crate) fn answer_deadline(deadline: Option<Instant>) -> Option<Instant> {
    deadline.map(|at| {
        Instant::now()
            .checked_add(ACQUIRE_ANSWER_GRACE)
            .map_or(at, |floor| at.max(floor))
    })
}

/// `future`, given up at `deadline` (`None` if it passed first; no deadline: never).
pub(crate) async fn answered_by<F: Future>(
    deadline: Option<Instant>,
    future: F,
) -> Option<F::Output> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, future).await.ok(),
        None => Some(future.await),
    }
}

/// Whether a lock request about to be sent with `deadline` has no time left to wait in
/// the queue (a zero timeout, or one used up getting a dedicated lease). It then only
/// tries (`try_only`): the outcome is that of a queued request withdrawn at once, with
/// no queue node created and withdrawn, and no `Deadlock` error for a wait it would not
/// do. The wait for its answer is bounded by [`answer_deadline`], not by `deadline`.
pub(crate) fn no_time_left(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|at| Instant::now() >= at)
}

/// The error of a lock request's answer as the caller sees it: `LockNotHeld` (a
/// request resent after a reconnect whose queue node was granted and lost, or
/// released, meanwhile) is the loss of that node, as if it had been lost while waiting.
pub(crate) fn lock_answer_error(e: Error) -> Error {
    match e {
        Error::Server(info) if info.code == ErrorCode::LockNotHeld => {
            Error::LockLost(LockLoss::Gone)
        }
        e => e,
    }
}

/// Waits until every one of `statuses` (the queue nodes of one request) is granted:
/// `Ok(true)`. At `deadline` (at once if it passed before the request was answered: a
/// timeout shorter than a round trip) it returns `Ok(false)`, leaving the queue in the
/// background (a release of `leave`, every node of the request, that the connection
/// task resends until answered: waiting for it could take until a reconnect, or
/// `request_timeout`); a grant that raced with the deadline and arrived wins. Fails if a
/// node is lost, the lease it would be held under is lost, or the connection task is
/// gone. The attempt records every outcome but a grant, which the caller records once
/// it has checked the lease.
pub(crate) async fn wait_for_grants(
    client: &Client,
    statuses: &mut [watch::Receiver<SlotStatus>],
    lease: Option<&Lease>,
    deadline: Option<Instant>,
    attempt: &mut Attempt<'_>,
    leave: &RequestNodes,
) -> Result<bool> {
    let mut lease_state = lease.map(Lease::state_receiver);
    loop {
        let mut all = true;
        for status in statuses.iter_mut() {
            match status.borrow_and_update().clone() {
                SlotStatus::Granted => {}
                SlotStatus::Waiting => all = false,
                SlotStatus::Ended(loss) => {
                    // Gone on the server (a group goes as a whole): nothing to release.
                    attempt.node = None;
                    attempt.failed();
                    return Err(match loss {
                        LockLoss::SessionEnded => client.finished_error(),
                        loss => Error::LockLost(loss),
                    });
                }
            }
        }
        if all {
            return Ok(true);
        }
        if let Some(loss) = lease.and_then(Lease::loss) {
            // A grant under this lease could not be trusted; the attempt's drop leaves
            // the queue.
            attempt.failed();
            return Err(Error::LockLost(loss));
        }
        tokio::select! {
            biased;
            closed = any_changed(statuses) => {
                if closed {
                    attempt.failed();
                    return Err(client.finished_error());
                }
            }
            () = lease_changed(&mut lease_state) => {}
            () = sleep_until_some(deadline) => {
                if statuses.iter().all(|s| *s.borrow() == SlotStatus::Granted) {
                    return Ok(true);
                }
                attempt.timed_out();
                attempt.node = None;
                detach_release(client, leave.clone());
                return Ok(false);
            }
        }
    }
}

/// Resolves when any of the statuses changes: `true` if one can no longer change (the
/// connection task is gone) while it still waits.
pub(crate) async fn any_changed(statuses: &mut [watch::Receiver<SlotStatus>]) -> bool {
    let waits = statuses.iter_mut().map(|s| {
        Box::pin(async move {
            let changed = s.changed().await;
            changed.is_err() && *s.borrow() == SlotStatus::Waiting
        })
    });
    let (closed, _, _) = futures::future::select_all(waits).await;
    closed
}

/// Resolves at `deadline`, or never.
pub(crate) async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the lease's state changes, or never (no lease, or it is dropped).
pub(crate) async fn lease_changed(state: &mut Option<watch::Receiver<LeaseState>>) {
    match state {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

impl LockBuilder {
    /// The lock's name (the directory node of its queue).
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let lock = client.lock("/locks/a", Default::default());
    /// assert_eq!(lock.name(), "/locks/a");
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The options it is acquired with.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let lock = client.lock("/locks/a", Default::default());
    /// assert!(lock.options().ttl.is_none());
    /// # }
    /// ```
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// Waits in the queue until the lock is granted. Dropping the future leaves the
    /// queue (in the background).
    ///
    /// Fails with [`Error::LockLost`] if the request was lost while it waited or as it
    /// was granted (its lease expired, or its lease's or session's safe deadline had
    /// passed by then: waiting is not holding), with `BadArguments` for a request of
    /// another family than the lock's, with `Deadlock`, and with the usual call errors.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// // ... critical section, fenced with guard.token() ...
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<LockGuard> {
        match self.run(false, None).await? {
            Some(guard) => Ok(guard),
            None => Err(Error::protocol("a blocking acquire ended without a grant")),
        }
    }

    /// Takes the lock only if it is free now: `Ok(None)` if it is held (no queue node
    /// is left behind).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// match client.lock("/locks/a", Default::default()).try_acquire().await? {
    ///     Some(guard) => println!("got it: {}", guard.token()),
    ///     None => println!("busy"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>> {
        self.run(true, None).await
    }

    /// Like [`acquire`](Self::acquire), waiting in the queue for at most `timeout`: then
    /// the request leaves the queue and `Ok(None)` is returned. A grant that arrived by
    /// the time the timeout fired wins: the guard is returned. A timeout too large for
    /// the clock (`Duration::MAX`) means none.
    ///
    /// The request is always sent, and its answer is awaited until the timeout, or
    /// for at least [`ACQUIRE_ANSWER_GRACE`] (1 s) if the timeout is shorter: so a
    /// free lock is taken even with a zero timeout or one shorter than a round trip (as
    /// with Curator's `acquire(0, unit)`), and a server that cannot answer makes the call
    /// return `Ok(None)` within `max(timeout, 1 s)` (an answer that comes later is
    /// withdrawn in the background). A request sent with no time left only tries, like
    /// [`try_acquire`](Self::try_acquire), and queues nothing. The dedicated lease of a
    /// lock with a `ttl` is granted within the same bound. A request that is not
    /// granted leaves no queue node behind.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lock = client.lock("/locks/a", Default::default());
    /// let Some(guard) = lock.acquire_timeout(Duration::from_millis(500)).await? else {
    ///     return Ok(()); // busy
    /// };
    /// # Ok(()) }
    /// ```
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Option<LockGuard>> {
        self.run(false, deadline_after(timeout)).await
    }

    async fn run(&self, try_only: bool, deadline: Option<Instant>) -> Result<Option<LockGuard>> {
        let client = &self.client;
        let mut attempt = Attempt::new(client);
        if let Err(e) = check_path(&self.name) {
            attempt.failed();
            return Err(e);
        }
        let answer_by = answer_deadline(deadline);
        let (lease, dedicated) = match (&self.options.lease, self.options.ttl) {
            (Some(lease), _) => (Some(lease.clone()), false),
            (None, Some(ttl)) => {
                let options = LeaseOptions::new(ttl).with_renewal(self.options.renewal);
                match answered_by(answer_by, client.grant_lease_with(options)).await {
                    None => {
                        attempt.timed_out();
                        return Ok(None);
                    }
                    Some(Err(e)) => {
                        attempt.failed();
                        return Err(e);
                    }
                    Some(Ok(lease)) => (Some(lease), true),
                }
            }
            (None, None) => (None, false),
        };
        if lease.as_ref().is_some_and(Lease::is_lost) {
            attempt.failed();
            return Err(Error::LeaseLost);
        }
        let out_of_time = !try_only && no_time_left(deadline);
        let request = LockRequest {
            lock: self.name.clone(),
            kind: self.options.kind,
            try_only: try_only || out_of_time,
            lease: lease.as_ref().map(Lease::id),
            lock_delay_ms: u64::try_from(self.options.lock_delay.as_millis()).unwrap_or(u64::MAX),
            data: self.options.data.clone(),
        };
        let then = Then::Lock {
            lock: self.name.clone(),
        };
        // The answer, granted at once or queued, is honoured if it comes by `answer_by`
        // (a queued one is withdrawn below if the deadline passed). Given up, or given
        // up by a dropped future, the answer finds no caller and the connection task
        // releases the node.
        let reply = match answered_by(answer_by, client.call(Op::Lock(request), then)).await {
            None => {
                attempt.timed_out();
                return Ok(None);
            }
            Some(Err(e)) if (try_only || out_of_time) && e.is(ErrorCode::LockHeld) => {
                if out_of_time {
                    attempt.timed_out();
                } else {
                    attempt.try_failed();
                }
                return Ok(None);
            }
            Some(Err(e)) => {
                attempt.failed();
                return Err(lock_answer_error(e));
            }
            Some(Ok(reply)) => reply,
        };
        let (node, token) = match &reply.result {
            OpResult::Locked { node, token } | OpResult::Queued { node, token } => {
                (node.clone(), *token)
            }
            other => {
                attempt.failed();
                return Err(unexpected("lock", other));
            }
        };
        let nodes = RequestNodes::one(&node, token);
        attempt.node = Some(nodes.clone());
        let Some(mut status) = reply.lock else {
            attempt.failed();
            return Err(Error::protocol("a lock answer without its status"));
        };

        // Wait for the grant.
        let waited = wait_for_grants(
            client,
            std::slice::from_mut(&mut status),
            lease.as_ref(),
            deadline,
            &mut attempt,
            &nodes,
        )
        .await?;
        if !waited {
            return Ok(None);
        }

        // Granted. Waiting is not holding: the grant counts only if the lease (or
        // session) it is held under is certainly still alive now.
        attempt.node = None;
        let guard = LockGuard {
            inner: Arc::new(GuardInner {
                client: client.clone(),
                name: self.name.clone(),
                node,
                token,
                kind: self.options.kind,
                lease,
                dedicated,
                session_gaps: client.session().lease_gaps,
                released: AtomicBool::new(false),
                status,
                lost: OnceLock::new(),
            }),
        };
        if let Some(loss) = guard.inner.loss_now() {
            tracing::info!(node = %guard.node(), "granted too late to be held ({loss}); releasing");
            attempt.failed();
            // Dropping the guard releases the node (and revokes a dedicated lease).
            drop(guard);
            return Err(Error::LockLost(loss));
        }
        attempt.granted();
        Ok(Some(guard))
    }
}

struct GuardInner {
    client: Client,
    name: String,
    node: String,
    token: u64,
    kind: LockKind,
    lease: Option<Lease>,
    /// The lease was created for this lock and goes with it.
    dedicated: bool,
    /// The session's lease gap count at the grant; another gap means the session's
    /// safe deadline passed at some point since.
    session_gaps: u64,
    released: AtomicBool,
    status: watch::Receiver<SlotStatus>,
    /// The first loss seen: a lost lock stays lost, whatever a later renewal (or a
    /// resumed session's new terms) says about the deadlines.
    lost: OnceLock<LockLoss>,
}

impl GuardInner {
    /// Why the lock is lost, if it may be, as of now. Final: the first loss seen is
    /// kept.
    fn loss_now(&self) -> Option<LockLoss> {
        if let Some(loss) = self.lost.get() {
            return Some(*loss);
        }
        let loss = self.first_loss()?;
        Some(*self.lost.get_or_init(|| loss))
    }

    fn first_loss(&self) -> Option<LockLoss> {
        if self.released.load(Ordering::SeqCst) {
            return Some(LockLoss::Released);
        }
        if let SlotStatus::Ended(loss) = &*self.status.borrow() {
            return Some(*loss);
        }
        if let Some(loss) = self.lease.as_ref().and_then(Lease::loss) {
            return Some(loss);
        }
        if self.client.state().is_terminal() {
            return Some(LockLoss::SessionEnded);
        }
        let session = self.client.session();
        if session.lease_gaps != self.session_gaps || Instant::now() >= session.safe_deadline() {
            return Some(LockLoss::DeadlinePassed);
        }
        None
    }

    /// The earlier of the session's and the lease's safe deadlines; once the lock is
    /// lost, not later than now (a deadline renewed since says nothing about a lock
    /// lost meanwhile).
    fn safe_deadline(&self) -> Instant {
        let session = self.client.session().safe_deadline();
        let deadline = match &self.lease {
            Some(lease) => session.min(lease.safe_deadline()),
            None => session,
        };
        match self.loss_now() {
            Some(_) => deadline.min(Instant::now()),
            None => deadline,
        }
    }
}

/// A held lock, from a [`LockBuilder`]. Dropping it releases the lock in the
/// background; [`release`](Self::release) does it now and says how it went.
///
/// The guard carries the lock's **fencing token** ([`token`](Self::token)): the zxid
/// that created its queue node, strictly increasing from one holder of a lock to the
/// next. Pass it along with every write the lock protects: corral itself checks it in a
/// multi ([`check_op`](Self::check_op)); an outside resource checks it with a
/// [`FencingValidator`](crate::FencingValidator).
///
/// A lock may be lost while it is held: [`lost`](Self::lost) resolves then, and
/// [`is_held`](Self::is_held) turns false for good.
///
/// ```no_run
/// use corral_client::LockOptions;
/// use std::time::Duration;
/// # async fn write_report(_token: u64) {}
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let guard = client
///     .lock("/locks/report", LockOptions::default().with_ttl(Duration::from_secs(5)))
///     .acquire()
///     .await?;
/// tokio::select! {
///     loss = guard.lost() => eprintln!("lost the lock ({loss}): stop"),
///     () = write_report(guard.token()) => {}
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct LockGuard {
    inner: Arc<GuardInner>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.inner.name)
            .field("node", &self.inner.node)
            .field("token", &self.inner.token)
            .field("kind", &self.inner.kind)
            .field("lease", &self.inner.lease.as_ref().map(Lease::id))
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The fencing token: strictly increasing across the holders of this lock.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// println!("fencing token {}", guard.token());
    /// # Ok(()) }
    /// ```
    pub fn token(&self) -> u64 {
        self.inner.token
    }

    /// The queue node that holds the lock.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// assert!(guard.node().starts_with("/locks/a/x-"));
    /// # Ok(()) }
    /// ```
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The lock's name.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// assert_eq!(guard.name(), "/locks/a");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The kind it was acquired as.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// assert_eq!(guard.kind(), corral_client::LockKind::Exclusive);
    /// # Ok(()) }
    /// ```
    pub fn kind(&self) -> LockKind {
        self.inner.kind
    }

    /// The lease it is held under (`None`: the session).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let options = corral_client::LockOptions::default().with_ttl(std::time::Duration::from_secs(3));
    /// let guard = client.lock("/locks/a", options).acquire().await?;
    /// println!("lease {:?}", guard.lease().map(|l| l.id()));
    /// # Ok(()) }
    /// ```
    pub fn lease(&self) -> Option<&Lease> {
        self.inner.lease.as_ref()
    }

    /// Until when the lock is certainly held: the earlier of its lease's and its
    /// session's safe deadlines (send time of the last acknowledged renewal, plus the
    /// TTL, minus the margin). It moves forward as renewals are acknowledged, until the
    /// lock is lost or released: from then on it is not later than now.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// let left = guard.safe_deadline() - tokio::time::Instant::now();
    /// # Ok(()) }
    /// ```
    pub fn safe_deadline(&self) -> Instant {
        self.inner.safe_deadline()
    }

    /// Whether the lock is still held as far as the client can tell: not released, not
    /// reported lost, and its safe deadline has never passed. Once false, false forever.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// assert!(guard.is_held());
    /// guard.release().await?;
    /// assert!(!guard.is_held());
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self) -> bool {
        self.inner.loss_now().is_none()
    }

    /// Resolves when the lock is lost, with why: on a loss the server reports, when the
    /// session ends, or at the safe deadline once renewals stop being acknowledged
    /// (whichever comes first; the deadline fires while disconnected too). Also resolves
    /// (with [`LockLoss::Released`]) once the lock is released. The future owns what it
    /// needs: spawn it or select on it.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// let lost = guard.lost();
    /// tokio::spawn(async move {
    ///     let why = lost.await;
    ///     eprintln!("lock lost: {why}");
    /// });
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LockLoss> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let mut status = inner.status.clone();
            let mut lease_state = inner.lease.as_ref().map(Lease::state_receiver);
            loop {
                if let Some(loss) = inner.loss_now() {
                    return loss;
                }
                let deadline = inner.safe_deadline();
                tokio::select! {
                    changed = status.changed() => {
                        if changed.is_err() {
                            return inner.loss_now().unwrap_or(LockLoss::SessionEnded);
                        }
                    }
                    () = lease_changed(&mut lease_state) => {}
                    () = sleep_until(deadline) => {}
                }
            }
        }
    }

    /// Releases the lock (and revokes its dedicated lease). `Ok(true)` if this released
    /// it; `Ok(false)` if it was already gone: released before (releasing is
    /// idempotent), expired with its lease, or ended with the session. An error (a
    /// lost connection, a timeout) leaves the guard as it was: call again, or drop it
    /// to release in the background.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/a", Default::default()).acquire().await?;
    /// assert!(guard.release().await?);
    /// assert!(!guard.release().await?);
    /// # Ok(()) }
    /// ```
    pub async fn release(&self) -> Result<bool> {
        let inner = &self.inner;
        if inner.released.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let nodes = RequestNodes::one(&inner.node, inner.token);
        let lease = inner.lease.as_ref().filter(|_| inner.dedicated);
        release_held(&inner.client, nodes, &inner.released, lease).await
    }

    /// Renews what the lock is held under now (its lease, or the session with a ping
    /// that counts like a keepalive) and returns the new safe deadline: from when the
    /// renewal was sent, plus the TTL, minus the margin. Fails with
    /// [`Error::LockLost`] if the lock is lost (under the session: also if the session's
    /// safe deadline passed before the ping was acknowledged), [`Error::LeaseLost`] if
    /// its lease is.
    ///
    /// ```no_run
    /// use corral_client::{LockOptions, Renewal};
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let options = LockOptions::default()
    ///     .with_ttl(Duration::from_secs(3))
    ///     .with_renewal(Renewal::Manual);
    /// let guard = client.lock("/locks/a", options).acquire().await?;
    /// for _step in 0..10 {
    ///     let safe_until = guard.renew().await?;
    ///     // ... a step that finishes well before safe_until ...
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn renew(&self) -> Result<Instant> {
        if let Some(loss) = self.inner.loss_now() {
            return Err(Error::LockLost(loss));
        }
        match &self.inner.lease {
            Some(lease) => {
                lease.renew().await?;
            }
            None => self.inner.client.keepalive().await?,
        }
        match self.inner.loss_now() {
            Some(loss) => Err(Error::LockLost(loss)),
            None => Ok(self.safe_deadline()),
        }
    }

    /// The multi operation that fails the whole multi with `LockNotHeld` unless this
    /// guard's token still holds the lock: put it first in every write the lock guards.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/counter", Default::default()).acquire().await?;
    /// let (data, _) = client.get_data("/counter").await?;
    /// client
    ///     .transaction()
    ///     .check_lock(guard.name(), guard.token())
    ///     .set_data("/counter", data, None)
    ///     .commit()
    ///     .await?;
    /// let same = guard.check_op();
    /// # Ok(()) }
    /// ```
    pub fn check_op(&self) -> MultiOp {
        check_lock(&self.inner.name, self.inner.token)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let inner = &self.inner;
        if inner.released.swap(true, Ordering::SeqCst) {
            return;
        }
        detach_release(&inner.client, RequestNodes::one(&inner.node, inner.token));
        if inner.dedicated {
            if let Some(lease) = &inner.lease {
                lease.revoke_in_background();
            }
        }
    }
}

impl Client {
    /// A lock named `name` (a node whose children form its queue; created as a
    /// container, with missing parents, on first use), to acquire with `options`.
    /// See [`LockBuilder`] and the [crate docs](crate#locks).
    ///
    /// ```no_run
    /// use corral_client::{LockKind, LockOptions};
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let exclusive = client.lock("/locks/a", LockOptions::default()).acquire().await?;
    /// let reader = client
    ///     .lock("/locks/table", LockOptions::default().with_kind(LockKind::Read))
    ///     .acquire()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, name: &str, options: LockOptions) -> LockBuilder {
        LockBuilder {
            client: self.clone(),
            name: name.to_string(),
            options,
        }
    }

    /// The locks at and below `path`: their queues, holders and waiters. The answer
    /// must fit in a frame (about 10,000 locks with one holder each at the default
    /// limit; `LimitExceeded` beyond): [`locks_pages`](Self::locks_pages) lists any
    /// number.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// for lock in client.locks("/locks").await? {
    ///     let holders: Vec<_> = lock.queue.iter().filter(|e| e.granted).collect();
    ///     println!("{}: {} holders, {} in queue", lock.lock, holders.len(), lock.queue.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn locks(&self, path: &str) -> Result<Vec<LockState>> {
        check_path(path)?;
        let op = Op::GetLocks {
            path: path.to_string(),
        };
        match self.call_plain(op).await? {
            OpResult::Locks(locks) => Ok(locks),
            other => Err(unexpected("get_locks", &other)),
        }
    }

    /// The locks of the request that created the queue node `node`: every lock a
    /// [`lock_many`](Client::lock_many) queued on (the node's own included), in request
    /// order, or the node's own lock for any other lock request. It reads only those
    /// locks, however many the tree holds. Fails with `NoNode` if `node` is not a lock's
    /// queue node now, and with `Unimplemented` from a server older than this request
    /// (use [`locks`](Client::locks) on `/` then, and look for the node's token).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lock = client.locks("/locks/a").await?.pop();
    /// if let Some(first) = lock.as_ref().and_then(|l| l.queue.first()) {
    ///     for other in client.lock_group(&first.node).await? {
    ///         println!("{} is part of the same request", other.lock);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lock_group(&self, node: &str) -> Result<Vec<LockState>> {
        check_path(node)?;
        let op = Op::GetLockGroup {
            node: node.to_string(),
        };
        match self.call_plain(op).await? {
            OpResult::Locks(locks) => Ok(locks),
            other => Err(unexpected("get_lock_group", &other)),
        }
    }

    /// Releases a lock or leaves its queue by queue node path alone: whatever node has the
    /// path now (for tools; a lock's directory is a container, and created again its
    /// counter restarts, so a path can name a later node than the one you saw).
    /// [`LockGuard::release`] names its node exactly, with its token. `Ok(false)` if no
    /// node has the path; fails with `NotLockOwner` for another session's node.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let released = client.unlock("/locks/a/x-0000000003").await?;
    /// # Ok(()) }
    /// ```
    pub async fn unlock(&self, node: &str) -> Result<bool> {
        check_path(node)?;
        let then = Then::Unlock {
            node: node.to_string(),
        };
        let op = Op::Unlock {
            node: node.to_string(),
        };
        match self.call(op, then).await?.result {
            OpResult::Unlocked { released } => Ok(released),
            other => Err(unexpected("unlock", &other)),
        }
    }

    /// A snapshot of this client's lock counters.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let stats = client.lock_stats();
    /// println!("{} granted, {} cancelled", stats.granted, stats.cancelled);
    /// # }
    /// ```
    pub fn lock_stats(&self) -> LockStats {
        self.lock_counters().snapshot()
    }

    /// Until when the session is certainly alive on the server, allowing for clock-rate
    /// differences: [`lease_deadline`](Self::lease_deadline) minus
    /// `max(ttl / 10, 50 ms)`. Locks held under the session are certainly held until
    /// then.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// if tokio::time::Instant::now() >= client.session_safe_deadline() {
    ///     eprintln!("the session may have expired");
    /// }
    /// # }
    /// ```
    pub fn session_safe_deadline(&self) -> Instant {
        self.session().safe_deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_snapshot_and_mean() {
        let c = LockCounters::default();
        LockCounters::add(&c.granted);
        LockCounters::add(&c.granted);
        LockCounters::add(&c.timed_out);
        c.waited(Duration::from_millis(10));
        c.waited(Duration::from_millis(30));
        let s = c.snapshot();
        assert_eq!((s.granted, s.timed_out, s.cancelled), (2, 1, 0));
        assert_eq!(s.wait_total, Duration::from_millis(40));
        assert_eq!(s.wait_max, Duration::from_millis(30));
        assert_eq!(s.mean_wait(), Duration::from_millis(20));
    }

    #[test]
    fn options_build() {
        let o = LockOptions::default()
            .with_kind(LockKind::Write)
            .with_ttl(Duration::from_secs(1))
            .with_lock_delay(Duration::from_millis(5))
            .with_data(b"x".to_vec());
        assert_eq!(o.kind, LockKind::Write);
        assert_eq!(o.ttl, Some(Duration::from_secs(1)));
        assert_eq!(o.lock_delay, Duration::from_millis(5));
        assert_eq!(o.data, b"x");
        assert_eq!(
            check_lock("/l", 4),
            MultiOp::CheckLock {
                lock: "/l".into(),
                token: 4
            }
        );
    }
}
