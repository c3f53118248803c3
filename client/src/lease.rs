//! Leases with their own TTL ([`Lease`]), and the client's view of when a lease (or the
//! session) is certainly still alive on the server.
//!
//! # The safe deadline
//!
//! Only the server decides when a lease expires: a TTL after it last *received* a
//! renewal. The client cannot know when that was, but it knows a lower bound: when it
//! *sent* a renewal that the server then acknowledged. So the client counts the TTL from
//! the send time of the last acknowledged renewal (or of the grant), never from when the
//! answer arrived, and subtracts a margin for the two clocks running at slightly
//! different rates (default `max(ttl / 10, 50 ms)`):
//!
//! ```text
//! safe_deadline = send time of the last acknowledged renewal + ttl - margin
//! ```
//!
//! Before the safe deadline the lease is certainly alive on the server, and so are the
//! locks held under it: nobody else can have been granted them. At the safe deadline
//! the client considers the lease **lost**, for good, even if a late acknowledgement
//! arrives afterwards: whatever the application was protecting with it must stop. All
//! arithmetic is on [`tokio::time::Instant`] (monotonic; pausable in tests).

use crate::client::{unexpected, Client};
use crate::connection::{Detached, Then};
use crate::error::{Error, Result};
use crate::lock::{deadline_after, sleep_until_some, LockLoss};
use corral_protocol::{ErrorCode, Op, OpResult};
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// The smallest safety margin subtracted from a TTL.
const MIN_MARGIN: Duration = Duration::from_millis(50);

/// The default margin for clock-rate differences: a tenth of the TTL, at least 50 ms.
///
/// Pure, so that the arithmetic is tested on its own.
pub(crate) fn default_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(MIN_MARGIN)
}

/// Until when a lease whose last acknowledged renewal was sent at `acked_from` is
/// certainly alive on the server: `acked_from + ttl - margin` (a margin larger than the
/// TTL leaves no safe time at all).
pub(crate) fn safe_deadline(acked_from: Instant, ttl: Duration, margin: Duration) -> Instant {
    acked_from + ttl.saturating_sub(margin)
}

/// How a [`Lease`] is renewed.
///
/// ```
/// use corral_client::Renewal;
/// use std::time::Duration;
/// assert_eq!(Renewal::default(), Renewal::Auto);
/// let manual = Renewal::Manual;
/// let often = Renewal::Every(Duration::from_millis(200));
/// # let _ = (manual, often);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Renewal {
    /// In the background, every third of the TTL the server granted.
    #[default]
    Auto,
    /// In the background, at this interval (keep it well below the TTL).
    Every(Duration),
    /// Only when the application calls [`Lease::renew`] (or
    /// [`LockGuard::renew`](crate::LockGuard::renew)).
    Manual,
}

/// How to create a [`Lease`] with [`Client::grant_lease_with`].
///
/// ```
/// use corral_client::{LeaseOptions, Renewal};
/// use std::time::Duration;
/// let options = LeaseOptions::new(Duration::from_secs(5))
///     .with_renewal(Renewal::Every(Duration::from_secs(1)))
///     .with_margin(Duration::from_millis(300));
/// assert_eq!(options.ttl, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOptions {
    /// The TTL to ask for; the server clamps it to its session TTL limits.
    pub ttl: Duration,
    /// How the lease is renewed. Default [`Renewal::Auto`].
    pub renewal: Renewal,
    /// Subtracted from the TTL for clock-rate differences; `None` for the default
    /// `max(ttl / 10, 50 ms)` of the granted TTL.
    pub margin: Option<Duration>,
}

impl LeaseOptions {
    /// Options for a lease of this TTL, renewed automatically, with the default margin.
    ///
    /// ```
    /// let options = corral_client::LeaseOptions::new(std::time::Duration::from_secs(3));
    /// assert_eq!(options.margin, None);
    /// ```
    pub fn new(ttl: Duration) -> Self {
        LeaseOptions {
            ttl,
            renewal: Renewal::Auto,
            margin: None,
        }
    }

    /// Sets how the lease is renewed.
    ///
    /// ```
    /// use corral_client::{LeaseOptions, Renewal};
    /// let o = LeaseOptions::new(std::time::Duration::from_secs(3)).with_renewal(Renewal::Manual);
    /// assert_eq!(o.renewal, Renewal::Manual);
    /// ```
    pub fn with_renewal(mut self, renewal: Renewal) -> Self {
        self.renewal = renewal;
        self
    }

    /// Sets the safety margin.
    ///
    /// ```
    /// use std::time::Duration;
    /// let o = corral_client::LeaseOptions::new(Duration::from_secs(3))
    ///     .with_margin(Duration::from_millis(500));
    /// assert_eq!(o.margin, Some(Duration::from_millis(500)));
    /// ```
    pub fn with_margin(mut self, margin: Duration) -> Self {
        self.margin = Some(margin);
        self
    }
}

/// Where a lease stands, client side. Anything but `Live` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Renewed in time so far (the deadline may still pass before anyone looks).
    Live,
    /// The safe deadline passed without an acknowledged renewal.
    DeadlinePassed,
    /// The server says the lease does not exist (it expired), or the session ended.
    Expired,
    /// Revoked by this client (or released with its lock).
    Revoked,
}

impl LeaseState {
    fn loss(self) -> Option<LockLoss> {
        match self {
            LeaseState::Live => None,
            LeaseState::DeadlinePassed => Some(LockLoss::DeadlinePassed),
            LeaseState::Expired => Some(LockLoss::LeaseExpired),
            LeaseState::Revoked => Some(LockLoss::LeaseRevoked),
        }
    }
}

struct LeaseInner {
    client: Client,
    id: u64,
    ttl: Duration,
    margin: Duration,
    /// Send time of the last acknowledged renewal (or of the grant).
    acked_from: Mutex<Instant>,
    state: watch::Sender<LeaseState>,
}

/// A lease with its own TTL, owned by the session (it ends with the session at the
/// latest). Locks acquired under it ([`LockOptions::lease`](crate::LockOptions) or
/// [`LockOptions::ttl`](crate::LockOptions)) are released by the server when it expires,
/// so a holder that stops renewing loses its locks after the lease TTL even while its
/// session lives on.
///
/// Cheap to clone (an `Arc` inside). Renewed in the background (every third of the TTL
/// by default, see [`Renewal`]); see the [module docs](crate#locks) for the safe
/// deadline. When the last clone is dropped the lease is revoked in the background
/// (resent after reconnects until answered, and sent again after a transient error such
/// as `Unavailable`, for as long as the session lives).
///
/// ```no_run
/// use corral_client::{LockOptions};
/// use std::time::Duration;
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let lease = client.grant_lease(Duration::from_secs(5)).await?;
/// let a = client.lock("/locks/a", LockOptions::default().with_lease(lease.clone())).acquire().await?;
/// let b = client.lock("/locks/b", LockOptions::default().with_lease(lease.clone())).acquire().await?;
/// println!("both safe until {:?}", lease.safe_deadline());
/// lease.revoke().await?; // releases a and b at once
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &format_args!("{:#x}", self.inner.id))
            .field("ttl", &self.inner.ttl)
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Wraps a lease the server granted to a request sent at `sent_at`, and starts its
    /// renewal.
    pub(crate) fn start(
        client: Client,
        id: u64,
        ttl: Duration,
        options: &LeaseOptions,
        sent_at: Instant,
    ) -> Lease {
        let margin = options.margin.unwrap_or_else(|| default_margin(ttl));
        let inner = Arc::new(LeaseInner {
            client,
            id,
            ttl,
            margin,
            acked_from: Mutex::new(sent_at),
            state: watch::Sender::new(LeaseState::Live),
        });
        let every = match options.renewal {
            Renewal::Auto => Some(ttl / 3),
            Renewal::Every(every) => Some(every),
            Renewal::Manual => None,
        };
        if let Some(every) = every {
            // At least a millisecond, so that a silly interval cannot spin.
            let every = every.max(Duration::from_millis(1));
            tokio::spawn(keepalive(Arc::downgrade(&inner), every));
        }
        Lease { inner }
    }

    /// The lease id the server assigned.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(std::time::Duration::from_secs(5)).await?;
    /// println!("lease {:#x}", lease.id());
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The TTL the server granted (after clamping).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(std::time::Duration::from_secs(5)).await?;
    /// println!("ttl {:?}", lease.ttl());
    /// # Ok(()) }
    /// ```
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The margin subtracted from the TTL for clock-rate differences.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(std::time::Duration::from_secs(5)).await?;
    /// assert_eq!(lease.margin(), std::time::Duration::from_millis(500));
    /// # Ok(()) }
    /// ```
    pub fn margin(&self) -> Duration {
        self.inner.margin
    }

    /// Until when the lease is certainly alive on the server: the send time of the last
    /// acknowledged renewal (or of the grant) plus the TTL, minus the margin. Once it
    /// has passed the lease is lost for good (see [`is_lost`](Self::is_lost)); once the
    /// lease is lost otherwise (revoked, gone on the server), it is not later than now.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(std::time::Duration::from_secs(5)).await?;
    /// let left = lease.safe_deadline() - tokio::time::Instant::now();
    /// println!("certainly alive for another {left:?}");
    /// # Ok(()) }
    /// ```
    pub fn safe_deadline(&self) -> Instant {
        let deadline = self.inner.safe_deadline();
        // Revoked, or gone on the server: not alive any more, whatever the renewals say.
        match *self.inner.state.borrow() {
            LeaseState::Live => deadline,
            _ => deadline.min(Instant::now()),
        }
    }

    /// Whether the lease is lost from the client's point of view: its safe deadline
    /// passed, the server said it no longer exists, or it was revoked. Final.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(std::time::Duration::from_secs(5)).await?;
    /// if lease.is_lost() {
    ///     eprintln!("stop writing");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.loss().is_some()
    }

    /// Resolves once the lease is lost: at its safe deadline if renewals stop being
    /// acknowledged (also while disconnected), when the server says it is gone, or when
    /// it is revoked.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(std::time::Duration::from_secs(5)).await?;
    /// tokio::select! {
    ///     () = lease.lost() => eprintln!("lease lost: stop"),
    ///     () = async { /* work */ } => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        // Weak, so that waiting for the end does not keep the lease from being revoked
        // when its last handle is dropped.
        let weak = Arc::downgrade(&self.inner);
        let mut state = self.inner.state.subscribe();
        async move {
            loop {
                let deadline = match weak.upgrade() {
                    Some(inner) if inner.loss().is_none() => inner.safe_deadline(),
                    _ => return,
                };
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    () = sleep_until(deadline) => {}
                }
            }
        }
    }

    /// Renews the lease now and returns its new safe deadline. Fails with
    /// [`Error::LeaseLost`] if the lease is already lost (or the server says it no
    /// longer exists), and with the usual call errors otherwise (the lease may then
    /// still be alive; try again before the safe deadline).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// use corral_client::{LeaseOptions, Renewal};
    /// let options = LeaseOptions::new(std::time::Duration::from_secs(5)).with_renewal(Renewal::Manual);
    /// let lease = client.grant_lease_with(options).await?;
    /// let safe_until = lease.renew().await?;
    /// # Ok(()) }
    /// ```
    pub async fn renew(&self) -> Result<Instant> {
        self.inner.renew().await
    }

    /// Revokes the lease: the server releases every lock held under it at once.
    /// `Ok(false)` if it was already gone (expired or revoked). From the moment this
    /// is called the lease counts as lost.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(std::time::Duration::from_secs(5)).await?;
    /// assert!(lease.revoke().await?);
    /// assert!(!lease.revoke().await?);
    /// # Ok(()) }
    /// ```
    pub async fn revoke(&self) -> Result<bool> {
        let before = self.inner.state.send_replace(LeaseState::Revoked);
        if matches!(before, LeaseState::Revoked | LeaseState::Expired) {
            return Ok(false);
        }
        let op = Op::RevokeLease {
            lease_id: self.inner.id,
        };
        // The lease counts as revoked from now on, so nothing else would revoke it: a
        // call given up before its answer (its future dropped) leaves the revoke to the
        // background, as an error does.
        let mut unanswered = RevokeUnlessAnswered {
            client: &self.inner.client,
            lease_id: self.inner.id,
            armed: true,
        };
        let outcome = self.inner.client.call_plain(op).await;
        match outcome {
            Ok(OpResult::Unlocked { released }) => {
                unanswered.armed = false;
                Ok(released)
            }
            Ok(other) => Err(unexpected("revoke_lease", &other)),
            Err(e) if e.is(ErrorCode::NoLease) => {
                unanswered.armed = false;
                Ok(false)
            }
            Err(Error::SessionExpired | Error::Closed) => {
                unanswered.armed = false;
                Ok(false)
            }
            // Sent again once the server can be reached (by `unanswered`'s drop).
            Err(e) => Err(e),
        }
    }

    /// Why the lease is lost, if it is.
    pub(crate) fn loss(&self) -> Option<LockLoss> {
        self.inner.loss()
    }

    /// A receiver of the lease's state, for waiting on its end.
    pub(crate) fn state_receiver(&self) -> watch::Receiver<LeaseState> {
        self.inner.state.subscribe()
    }

    /// Revokes in the background (for a lock released or dropped together with its
    /// dedicated lease).
    pub(crate) fn revoke_in_background(&self) {
        let before = self.inner.state.send_replace(LeaseState::Revoked);
        if !matches!(before, LeaseState::Revoked | LeaseState::Expired) {
            self.inner.detach_revoke();
        }
    }
}

impl LeaseInner {
    fn acked_from(&self) -> Instant {
        match self.acked_from.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn safe_deadline(&self) -> Instant {
        safe_deadline(self.acked_from(), self.ttl, self.margin)
    }

    fn loss(&self) -> Option<LockLoss> {
        let state = *self.state.borrow();
        match state.loss() {
            Some(loss) => Some(loss),
            None if Instant::now() >= self.safe_deadline() => Some(LockLoss::DeadlinePassed),
            None => None,
        }
    }

    /// Ends the lease client side (keeps the first reason); whether this call ended it.
    fn end(&self, state: LeaseState) -> bool {
        self.state.send_if_modified(|s| {
            if *s == LeaseState::Live {
                *s = state;
                true
            } else {
                false
            }
        })
    }

    /// The safe deadline passed: the lease is lost for good, so it is revoked (if this
    /// call is the one that ends it), and the server frees its locks now rather than
    /// at its expiry, which a renewal acknowledged late has just put off by a TTL.
    fn end_at_deadline(&self) {
        if self.end(LeaseState::DeadlinePassed) {
            self.detach_revoke();
        }
    }

    /// An acknowledged renewal sent at `sent_at`. A renewal acknowledged after the safe
    /// deadline passed does not revive the lease.
    fn record_ack(&self, sent_at: Instant) -> Result<Instant> {
        if let Some(_loss) = self.loss() {
            self.end_at_deadline();
            return Err(Error::LeaseLost);
        }
        let mut acked = match self.acked_from.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if sent_at > *acked {
            *acked = sent_at;
        }
        Ok(safe_deadline(*acked, self.ttl, self.margin))
    }

    async fn renew(&self) -> Result<Instant> {
        if self.loss().is_some() {
            self.end_at_deadline();
            return Err(Error::LeaseLost);
        }
        let sent_at = Instant::now();
        let op = Op::RenewLease { lease_id: self.id };
        match self.client.call_plain(op).await {
            Ok(OpResult::Lease { .. }) => self.record_ack(sent_at),
            Ok(other) => Err(unexpected("renew_lease", &other)),
            Err(e) if e.is(ErrorCode::NoLease) => {
                self.end(LeaseState::Expired);
                Err(Error::LeaseLost)
            }
            Err(e @ (Error::SessionExpired | Error::Closed)) => {
                self.end(LeaseState::Expired);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Revokes the lease in the background: resent after reconnects until answered,
    /// and sent again after a transient error, for as long as the session lives.
    fn detach_revoke(&self) {
        detach_revoke(&self.client, self.id);
    }
}

/// Revokes a lease in the background when dropped armed: a [`Lease::revoke`] whose call
/// ended without a final answer (an error, or its future dropped at the await).
struct RevokeUnlessAnswered<'a> {
    client: &'a Client,
    lease_id: u64,
    armed: bool,
}

impl Drop for RevokeUnlessAnswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            detach_revoke(self.client, self.lease_id);
        }
    }
}

/// Revokes lease `lease_id` in the background: resent after reconnects until answered,
/// and sent again after a transient error, for as long as the session lives.
pub(crate) fn detach_revoke(client: &Client, lease_id: u64) {
    let what = Detached::RevokeLease { lease_id };
    client.detach(what.op(), Then::Detached(what));
}

impl Drop for LeaseInner {
    fn drop(&mut self) {
        // The last handle is gone: nobody can use the lease any more. (A lease that
        // ended client side was revoked then, or is gone on the server.)
        if *self.state.borrow() == LeaseState::Live {
            self.detach_revoke();
        }
    }
}

/// Renews the lease every `every` until it ends or every handle is dropped. A renewal
/// that takes longer than `every` is given up (renewals are reads: nothing to undo) and
/// a fresh one is sent, so one lost request cannot stall the lease. Once the safe
/// deadline passes the lease is lost: renewing stops and it is revoked, so the server
/// frees its locks now rather than at expiry.
async fn keepalive(weak: Weak<LeaseInner>, every: Duration) {
    // A period beyond what the clock can represent (`Duration::MAX`) never comes.
    let mut next = deadline_after(every);
    loop {
        let mut state = match weak.upgrade() {
            Some(inner) => inner.state.subscribe(),
            None => return,
        };
        tokio::select! {
            () = sleep_until_some(next) => {}
            // Revoked, or dropped (the sender goes with the lease).
            _ = state.changed() => {}
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if *inner.state.borrow() != LeaseState::Live {
            return;
        }
        if inner.loss().is_some() {
            tracing::info!(lease = inner.id, "lease lost: its safe deadline passed");
            inner.end_at_deadline();
            return;
        }
        next = deadline_after(every);
        match tokio::time::timeout(every, inner.renew()).await {
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(Error::LeaseLost | Error::SessionExpired | Error::Closed)) => return,
            Ok(Err(e)) => tracing::debug!(lease = inner.id, "renewal failed: {e}"),
        }
    }
}

impl Client {
    /// Creates a lease with this TTL (clamped by the server to its session TTL limits),
    /// renewed in the background every third of the TTL. See [`Lease`].
    ///
    /// ```no_run
    /// use corral_client::LockOptions;
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client.grant_lease(Duration::from_secs(5)).await?;
    /// let guard = client
    ///     .lock("/locks/job", LockOptions::default().with_lease(lease.clone()))
    ///     .acquire()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.grant_lease_with(LeaseOptions::new(ttl)).await
    }

    /// Creates a lease with every option of [`LeaseOptions`].
    ///
    /// A call given up before its answer (its future dropped, its task aborted, an outer
    /// timeout) leaves no lease behind: a grant not sent yet is not sent, and a lease
    /// granted to nobody is revoked in the background. So does one failed with
    /// `ConnectionLoss` because the session lapsed while the grant was in flight: the
    /// grant is sent again once the session is resumed, and the lease revoked.
    ///
    /// ```no_run
    /// use corral_client::{LeaseOptions, Renewal};
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let lease = client
    ///     .grant_lease_with(LeaseOptions::new(Duration::from_secs(5)).with_renewal(Renewal::Manual))
    ///     .await?;
    /// lease.renew().await?;
    /// # Ok(()) }
    /// ```
    pub async fn grant_lease_with(&self, options: LeaseOptions) -> Result<Lease> {
        let ttl_ms = u64::try_from(options.ttl.as_millis()).unwrap_or(u64::MAX);
        let sent_at = Instant::now();
        // `Then::GrantLease`: an answer that finds no caller is revoked by the
        // connection task (or by the dropped call's `Answer`, if it came just before).
        let reply = self
            .call(Op::GrantLease { ttl_ms }, Then::GrantLease)
            .await?;
        match reply.result {
            OpResult::Lease { lease_id, ttl_ms } => Ok(Lease::start(
                self.clone(),
                lease_id,
                Duration::from_millis(ttl_ms),
                &options,
                sent_at,
            )),
            other => Err(unexpected("grant_lease", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_tenth_of_the_ttl_at_least_50ms() {
        assert_eq!(
            default_margin(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            default_margin(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            default_margin(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(default_margin(Duration::ZERO), Duration::from_millis(50));
    }

    #[test]
    fn safe_deadline_counts_from_the_send_time() {
        let sent = Instant::now();
        let ttl = Duration::from_secs(2);
        assert_eq!(
            safe_deadline(sent, ttl, default_margin(ttl)),
            sent + Duration::from_millis(1800)
        );
        // A margin as large as the TTL leaves no safe time at all.
        assert_eq!(safe_deadline(sent, ttl, Duration::from_secs(3)), sent);
    }

    #[test]
    fn lease_states_map_to_losses() {
        assert_eq!(LeaseState::Live.loss(), None);
        assert_eq!(
            LeaseState::DeadlinePassed.loss(),
            Some(LockLoss::DeadlinePassed)
        );
        assert_eq!(LeaseState::Expired.loss(), Some(LockLoss::LeaseExpired));
        assert_eq!(LeaseState::Revoked.loss(), Some(LockLoss::LeaseRevoked));
    }
}
