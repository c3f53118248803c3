//! Atomic multi-locks: [`Client::lock_many`] builds a [`MultiLockBuilder`] whose acquire
//! methods return a [`MultiLockGuard`] holding every lock of the set, with one fencing
//! token per lock.
//!
//! All or nothing happens on the server (`Op::LockMany`): the session is queued on every
//! lock and granted all of them in one transaction once it can hold them all at once,
//! so nobody ever sees part of the set held. Its queue nodes keep their places: a lock
//! of the set that is free is not taken by a later request meanwhile. Releasing any
//! node releases all, in one transaction; so does the expiry of the lease they are held
//! under. Like every lock request, a multi-lock that would close a cycle of waiting
//! sessions is refused with [`Error::Deadlock`].

use crate::client::{check_path, unexpected, Client};
use crate::connection::Then;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseOptions};
use crate::lock::{
    answer_deadline, answered_by, deadline_after, detach_release, lease_changed, lock_answer_error,
    no_time_left, release_held, wait_for_grants, Attempt, LockLoss, LockOptions,
};
use crate::lock_registry::{RequestNodes, SlotStatus};
use corral_protocol::{
    ErrorCode, LockKind, LockedNode, MultiLockItem, MultiLockRequest, MultiOp, Op, OpResult,
};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// A set of locks with their options, from [`Client::lock_many`]; acquire it as many
/// times as needed.
///
/// ```no_run
/// use corral_client::{LockKind, LockOptions};
/// use std::time::Duration;
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let accounts = client
///     .lock_many(["/locks/account/17", "/locks/account/42"], LockOptions::default())
///     .with_kind("/locks/account/42", LockKind::Write);
/// if let Some(guard) = accounts.acquire_timeout(Duration::from_secs(2)).await? {
///     println!("tokens {:?}", guard.tokens());
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MultiLockBuilder {
    client: Client,
    locks: Vec<(String, LockKind)>,
    options: LockOptions,
}

impl MultiLockBuilder {
    /// Asks for `lock` as `kind` instead of `options.kind` (a lock not in the set is
    /// added).
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// use corral_client::LockKind;
    /// let set = client
    ///     .lock_many(["/a"], Default::default())
    ///     .with_kind("/b", LockKind::Read);
    /// assert_eq!(set.locks().len(), 2);
    /// # }
    /// ```
    pub fn with_kind(mut self, lock: &str, kind: LockKind) -> Self {
        match self.locks.iter_mut().find(|(l, _)| l == lock) {
            Some(entry) => entry.1 = kind,
            None => self.locks.push((lock.to_string(), kind)),
        }
        self
    }

    /// The locks and the kinds asked for, in request order.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let set = client.lock_many(["/a", "/b"], Default::default());
    /// assert_eq!(set.locks()[1].0, "/b");
    /// # }
    /// ```
    pub fn locks(&self) -> &[(String, LockKind)] {
        &self.locks
    }

    /// Waits until every lock is granted (all in one transaction). Dropping the future
    /// leaves every queue (in the background).
    ///
    /// Fails with [`Error::Deadlock`] if waiting would close a cycle of waiting
    /// sessions, [`Error::LockLost`] if the request was lost while it waited, and with
    /// `BadArguments` for an empty set, more than
    /// [`MAX_LOCKS_PER_MULTI_LOCK`](corral_protocol::MAX_LOCKS_PER_MULTI_LOCK) locks, a
    /// lock named twice or nested in another, or a kind of another family than a lock's.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a", "/b"], Default::default()).acquire().await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<MultiLockGuard> {
        match self.run(false, None).await? {
            Some(guard) => Ok(guard),
            None => Err(Error::protocol("a blocking acquire ended without a grant")),
        }
    }

    /// Takes every lock only if all are free now: `Ok(None)` otherwise (nothing is left
    /// behind).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// match client.lock_many(["/a", "/b"], Default::default()).try_acquire().await? {
    ///     Some(guard) => println!("got both: {:?}", guard.tokens()),
    ///     None => println!("busy"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<Option<MultiLockGuard>> {
        self.run(true, None).await
    }

    /// Like [`acquire`](Self::acquire), waiting for at most `timeout` (then every queue
    /// is left and `Ok(None)` returned). A grant that arrived by then wins. A timeout too
    /// large for the clock (`Duration::MAX`) means none.
    ///
    /// As for [`LockBuilder::acquire_timeout`](crate::LockBuilder::acquire_timeout), the
    /// request's answer is awaited for at least
    /// [`ACQUIRE_ANSWER_GRACE`](crate::ACQUIRE_ANSWER_GRACE) (1 s) even if the timeout
    /// is shorter, so locks that are all free are taken even with a zero timeout (a
    /// request sent with no time left only tries), and a server that cannot answer
    /// makes the call return `Ok(None)` within `max(timeout, 1 s)`. A request that is
    /// not granted leaves no queue node behind.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let set = client.lock_many(["/a", "/b"], Default::default());
    /// let Some(guard) = set.acquire_timeout(Duration::from_millis(500)).await? else {
    ///     return Ok(());
    /// };
    /// # Ok(()) }
    /// ```
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Option<MultiLockGuard>> {
        self.run(false, deadline_after(timeout)).await
    }

    async fn run(
        &self,
        try_only: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<MultiLockGuard>> {
        let client = &self.client;
        let mut attempt = Attempt::new(client);
        for (lock, _) in &self.locks {
            if let Err(e) = check_path(lock) {
                attempt.failed();
                return Err(e);
            }
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
        let request = MultiLockRequest {
            locks: self
                .locks
                .iter()
                .map(|(lock, kind)| MultiLockItem {
                    lock: lock.clone(),
                    kind: *kind,
                })
                .collect(),
            try_only: try_only || out_of_time,
            lease: lease.as_ref().map(Lease::id),
            lock_delay_ms: u64::try_from(self.options.lock_delay.as_millis()).unwrap_or(u64::MAX),
            data: self.options.data.clone(),
        };
        let then = Then::LockMany {
            locks: self.locks.iter().map(|(l, _)| l.clone()).collect(),
        };
        // Its answer is honoured if it comes by `answer_by` (see `LockBuilder::run`).
        let reply = match answered_by(answer_by, client.call(Op::LockMany(request), then)).await {
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
        let nodes = match &reply.result {
            OpResult::MultiLocked { nodes, .. } => nodes.clone(),
            other => {
                attempt.failed();
                return Err(unexpected("lock_many", other));
            }
        };
        // Releasing one node releases the whole group on the server.
        let Some(request) = RequestNodes::of_group(&nodes) else {
            attempt.failed();
            return Err(Error::protocol("a multi-lock answer without nodes"));
        };
        attempt.node = Some(request.clone());
        let mut statuses = reply.locks;
        if statuses.len() != nodes.len() {
            attempt.failed();
            return Err(Error::protocol("a multi-lock answer without its statuses"));
        }
        // One node per lock asked for, in request order: anything else would be a guard
        // for part of the set (the attempt's drop releases what was answered).
        if !nodes
            .iter()
            .map(|n| n.lock.as_str())
            .eq(self.locks.iter().map(|(lock, _)| lock.as_str()))
        {
            attempt.failed();
            let answered: Vec<&str> = nodes.iter().map(|n| n.lock.as_str()).collect();
            return Err(Error::protocol(format!(
                "a multi-lock answer for {answered:?}, not for the {} locks asked for",
                self.locks.len()
            )));
        }

        // Wait for every grant (they come in one transaction).
        if !wait_for_grants(
            client,
            &mut statuses,
            lease.as_ref(),
            deadline,
            &mut attempt,
            &request,
        )
        .await?
        {
            return Ok(None);
        }

        attempt.node = None;
        let guard = MultiLockGuard {
            inner: Arc::new(Inner {
                client: client.clone(),
                nodes,
                request,
                kinds: self.locks.iter().map(|(_, k)| *k).collect(),
                lease,
                dedicated,
                session_gaps: client.session().lease_gaps,
                released: AtomicBool::new(false),
                statuses,
                lost: OnceLock::new(),
            }),
        };
        if let Some(loss) = guard.inner.loss_now() {
            tracing::info!("multi-lock granted too late to be held ({loss}); releasing");
            attempt.failed();
            drop(guard);
            return Err(Error::LockLost(loss));
        }
        attempt.granted();
        Ok(Some(guard))
    }
}

struct Inner {
    client: Client,
    nodes: Vec<LockedNode>,
    /// The same nodes, to release them.
    request: RequestNodes,
    kinds: Vec<LockKind>,
    lease: Option<Lease>,
    dedicated: bool,
    session_gaps: u64,
    released: AtomicBool,
    statuses: Vec<watch::Receiver<SlotStatus>>,
    /// The first loss seen (see the single lock's guard): final.
    lost: OnceLock<LockLoss>,
}

impl Inner {
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
        for status in &self.statuses {
            if let SlotStatus::Ended(loss) = &*status.borrow() {
                return Some(*loss);
            }
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

    /// As for a single lock's guard: once the set is lost, not later than now.
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

/// A set of held locks, from a [`MultiLockBuilder`]. Dropping it releases them all in
/// the background; [`release`](Self::release) does it now.
///
/// Every lock has its own fencing token ([`token`](Self::token)); within one grant they
/// are equal (the zxid of the request), and for each lock they increase from holder to
/// holder like any lock's. The set is lost as a whole: if one lock goes (its lease
/// expired, the session ended), all do.
///
/// ```no_run
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let guard = client.lock_many(["/a", "/b"], Default::default()).acquire().await?;
/// client
///     .transaction()
///     .check_lock("/a", guard.token("/a").expect("in the set"))
///     .check_lock("/b", guard.token("/b").expect("in the set"))
///     .set_data("/ledger", b"moved".to_vec(), None)
///     .commit()
///     .await?;
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub struct MultiLockGuard {
    inner: Arc<Inner>,
}

impl fmt::Debug for MultiLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiLockGuard")
            .field("nodes", &self.inner.nodes)
            .field("kinds", &self.inner.kinds)
            .field("lease", &self.inner.lease.as_ref().map(Lease::id))
            .finish_non_exhaustive()
    }
}

impl MultiLockGuard {
    /// The fencing token of `lock`, if it is in the set.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a", "/b"], Default::default()).acquire().await?;
    /// assert_eq!(guard.token("/a"), guard.token("/b"));
    /// assert_eq!(guard.token("/c"), None);
    /// # Ok(()) }
    /// ```
    pub fn token(&self, lock: &str) -> Option<u64> {
        self.inner
            .nodes
            .iter()
            .find(|n| n.lock == lock)
            .map(|n| n.token)
    }

    /// (lock, fencing token) of every lock, in request order.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a", "/b"], Default::default()).acquire().await?;
    /// for (lock, token) in guard.tokens() {
    ///     println!("{lock}: {token}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn tokens(&self) -> Vec<(String, u64)> {
        self.inner
            .nodes
            .iter()
            .map(|n| (n.lock.clone(), n.token))
            .collect()
    }

    /// The queue nodes that hold the locks, in request order.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a"], Default::default()).acquire().await?;
    /// assert!(guard.nodes()[0].node.starts_with("/a/x-"));
    /// # Ok(()) }
    /// ```
    pub fn nodes(&self) -> &[LockedNode] {
        &self.inner.nodes
    }

    /// The `CheckLock` operations for a multi guarded by every lock of the set.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a", "/b"], Default::default()).acquire().await?;
    /// let mut ops = guard.check_ops();
    /// ops.push(corral_client::MultiOp::SetData { path: "/x".into(), data: vec![], version: None });
    /// client.multi(ops).await?;
    /// # Ok(()) }
    /// ```
    pub fn check_ops(&self) -> Vec<MultiOp> {
        self.inner
            .nodes
            .iter()
            .map(|n| crate::lock::check_lock(&n.lock, n.token))
            .collect()
    }

    /// Until when every lock is certainly held (see [`LockGuard::safe_deadline`](crate::LockGuard::safe_deadline));
    /// once the set is lost or released, not later than now.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a"], Default::default()).acquire().await?;
    /// let left = guard.safe_deadline() - tokio::time::Instant::now();
    /// # Ok(()) }
    /// ```
    pub fn safe_deadline(&self) -> Instant {
        self.inner.safe_deadline()
    }

    /// Whether the set is still held as far as the client can tell. Once false, false
    /// forever.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a"], Default::default()).acquire().await?;
    /// assert!(guard.is_held());
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self) -> bool {
        self.inner.loss_now().is_none()
    }

    /// Resolves when the set is lost, with why (see [`LockGuard::lost`](crate::LockGuard::lost)).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a", "/b"], Default::default()).acquire().await?;
    /// tokio::spawn(guard.lost());
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LockLoss> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let mut statuses = inner.statuses.clone();
            let mut lease_state = inner.lease.as_ref().map(Lease::state_receiver);
            loop {
                if let Some(loss) = inner.loss_now() {
                    return loss;
                }
                let deadline = inner.safe_deadline();
                tokio::select! {
                    closed = any_closed_or_changed(&mut statuses) => {
                        if closed {
                            return inner.loss_now().unwrap_or(LockLoss::SessionEnded);
                        }
                    }
                    () = lease_changed(&mut lease_state) => {}
                    () = sleep_until(deadline) => {}
                }
            }
        }
    }

    /// Releases every lock of the set, in one transaction (and revokes a dedicated
    /// lease). `Ok(true)` if this released them; `Ok(false)` if they were already gone.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock_many(["/a", "/b"], Default::default()).acquire().await?;
    /// assert!(guard.release().await?);
    /// assert!(!guard.release().await?);
    /// # Ok(()) }
    /// ```
    pub async fn release(&self) -> Result<bool> {
        let inner = &self.inner;
        if inner.released.load(Ordering::SeqCst) {
            return Ok(false);
        }
        // Releasing one node releases the group, in one transaction.
        let lease = inner.lease.as_ref().filter(|_| inner.dedicated);
        release_held(&inner.client, inner.request.clone(), &inner.released, lease).await
    }
}

/// Resolves when any of the statuses changes: `true` if one can no longer change (the
/// connection task stopped tracking it), whatever it was.
async fn any_closed_or_changed(statuses: &mut [watch::Receiver<SlotStatus>]) -> bool {
    let waits = statuses
        .iter_mut()
        .map(|s| Box::pin(async move { s.changed().await.is_err() }));
    let (closed, _, _) = futures::future::select_all(waits).await;
    closed
}

impl Drop for MultiLockGuard {
    fn drop(&mut self) {
        let inner = &self.inner;
        if inner.released.swap(true, Ordering::SeqCst) {
            return;
        }
        detach_release(&inner.client, inner.request.clone());
        if inner.dedicated {
            if let Some(lease) = &inner.lease {
                lease.revoke_in_background();
            }
        }
    }
}

impl Client {
    /// A set of locks to acquire all or nothing with `options` (every lock as
    /// `options.kind` unless [`MultiLockBuilder::with_kind`] says otherwise). See
    /// [`MultiLockBuilder`].
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let both = client
    ///     .lock_many(["/locks/from", "/locks/to"], Default::default())
    ///     .acquire()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn lock_many<I, S>(&self, locks: I, options: LockOptions) -> MultiLockBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let kind = options.kind;
        MultiLockBuilder {
            client: self.clone(),
            locks: locks.into_iter().map(|l| (l.into(), kind)).collect(),
            options,
        }
    }
}
