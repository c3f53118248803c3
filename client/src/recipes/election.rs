//! Leader election on an exclusive lock, as etcd's `concurrency.Election` offers it:
//! campaign, resign, proclaim, find the leader, observe leadership changes.
//!
//! The candidates queue on an exclusive lock named after the election; each queue node
//! carries its candidate's data. The leader is the granted queue entry (the server
//! grants in FIFO order, so the next leader is the oldest remaining candidate), and
//! leadership is lost exactly when that lock is: on resignation, when the candidate's
//! session (or the lease it campaigned under) ends, or at the client-side safe deadline
//! when renewals stop being acknowledged.

use crate::client::Client;
use crate::error::Result;
use crate::lock::{LockGuard, LockLoss, LockOptions};
use crate::watcher::Watcher;
use corral_protocol::{ErrorCode, LockEntry, LockKind, LockState};
use futures::stream::{BoxStream, Stream, StreamExt};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Least time an observer waits before looking again for the grant that ends a
/// lock-delay (in case its clock is ahead of the leader's).
const DELAY_RECHECK: Duration = Duration::from_millis(50);

/// A leader election: candidates campaign, one at a time leads.
///
/// ```no_run
/// use corral_client::recipes::Election;
/// # async fn do_the_work() {}
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let election = Election::new(&client, "/election/scheduler", "host-1:8080");
/// let leadership = election.campaign().await?; // waits until elected
/// tokio::select! {
///     why = leadership.lost() => eprintln!("no longer leader: {why}"),
///     () = do_the_work() => {}
/// }
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    name: String,
    data: Vec<u8>,
    options: LockOptions,
}

/// The current leader of an [`Election`]: its queue entry and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderInfo {
    /// The leader's queue node.
    pub node: String,
    /// The fencing token of its leadership (strictly increasing across leaders).
    pub token: u64,
    /// The leader's session.
    pub session: u64,
    /// The lease it leads under (its session id when it leads under the session).
    pub lease: u64,
    /// The candidate data it campaigned with (or proclaimed since).
    pub data: Vec<u8>,
}

impl LeaderInfo {
    fn new(entry: &LockEntry, data: Vec<u8>) -> Self {
        LeaderInfo {
            node: entry.node.clone(),
            token: entry.token,
            session: entry.session,
            lease: entry.lease,
            data,
        }
    }
}

impl Election {
    /// The election named `name` (the lock whose queue holds the candidates), for a
    /// candidate that announces itself with `candidate_data` (an address, a host name:
    /// whatever followers need to find the leader). Candidates are held under the
    /// session unless [`with_options`](Self::with_options) says otherwise.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let election = corral_client::recipes::Election::new(&client, "/election/db", "10.0.0.7");
    /// assert_eq!(election.name(), "/election/db");
    /// # }
    /// ```
    pub fn new(client: &Client, name: &str, candidate_data: impl Into<Vec<u8>>) -> Self {
        Election {
            client: client.clone(),
            name: name.to_string(),
            data: candidate_data.into(),
            options: LockOptions::default(),
        }
    }

    /// Campaigns with these lock options (TTL, lease, lock-delay); their kind and data
    /// are ignored (the lock is exclusive and carries the candidate data).
    ///
    /// ```no_run
    /// use corral_client::{recipes::Election, LockOptions};
    /// use std::time::Duration;
    /// # fn demo(client: corral_client::Client) {
    /// // Leadership ends 5 s after renewals stop, even if the session lives on.
    /// let election = Election::new(&client, "/election/db", "10.0.0.7")
    ///     .with_options(LockOptions::default().with_ttl(Duration::from_secs(5)));
    /// # }
    /// ```
    pub fn with_options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// The election's name.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let election = corral_client::recipes::Election::new(&client, "/election/db", "");
    /// assert_eq!(election.name(), "/election/db");
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock_options(&self) -> LockOptions {
        self.options
            .clone()
            .with_kind(LockKind::Exclusive)
            .with_data(self.data.clone())
    }

    /// Joins the candidates and waits until elected. Dropping the future withdraws the
    /// candidacy. Fails like [`LockBuilder::acquire`](crate::LockBuilder::acquire).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let election = corral_client::recipes::Election::new(&client, "/election/db", "me");
    /// let leadership = election.campaign().await?;
    /// println!("leading with token {}", leadership.token());
    /// # Ok(()) }
    /// ```
    pub async fn campaign(&self) -> Result<Leadership> {
        let guard = self
            .client
            .lock(&self.name, self.lock_options())
            .acquire()
            .await?;
        Ok(Leadership {
            client: self.client.clone(),
            guard,
        })
    }

    /// Like [`campaign`](Self::campaign), withdrawing after `timeout` (`Ok(None)`). The
    /// request's answer is awaited for at least
    /// [`ACQUIRE_ANSWER_GRACE`](crate::ACQUIRE_ANSWER_GRACE) (1 s): with nobody leading or
    /// waiting, the candidate is elected even with a zero timeout or one shorter than a
    /// round trip, and `campaign_timeout(Duration::ZERO)` is a try. See
    /// [`LockBuilder::acquire_timeout`](crate::LockBuilder::acquire_timeout).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let election = corral_client::recipes::Election::new(&client, "/election/db", "me");
    /// match election.campaign_timeout(Duration::from_secs(5)).await? {
    ///     Some(leadership) => println!("elected: {}", leadership.token()),
    ///     None => println!("someone else leads"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn campaign_timeout(&self, timeout: Duration) -> Result<Option<Leadership>> {
        let guard = self
            .client
            .lock(&self.name, self.lock_options())
            .acquire_timeout(timeout)
            .await?;
        Ok(guard.map(|guard| Leadership {
            client: self.client.clone(),
            guard,
        }))
    }

    /// The current leader, or `None` if nobody leads (no candidates, or a lock-delay
    /// after a leader's expiry is running). Reads the lock's queue and then the
    /// leader's node; if the leader leaves in between, reads again.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let election = corral_client::recipes::Election::new(&client, "/election/db", "");
    /// if let Some(leader) = election.leader().await? {
    ///     println!("leader at {}", String::from_utf8_lossy(&leader.data));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        loop {
            let state = lock_state(&self.client, &self.name).await?;
            let Some(entry) = state.as_ref().and_then(granted) else {
                return Ok(None);
            };
            match self.client.get_data(&entry.node).await {
                Ok((data, stat)) if is_node_of(entry, stat.czxid) => {
                    return Ok(Some(LeaderInfo::new(entry, data)))
                }
                // The leader left between the two reads (its path may name a later
                // candidate's node by now): look again.
                Ok(_) => continue,
                Err(e) if e.is(ErrorCode::NoNode) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A stream of the election's leaders: first the current one, then every change
    /// (a new leader, no leader, or new data proclaimed by the leader), as `None` when
    /// nobody leads. Changes are found with one-shot child and data watches on the
    /// lock's directory and the leader's node. The stream works when polled and keeps no
    /// backlog: a reader that polls late gets the latest state, not every intermediate
    /// one (poll it from a task of its own to see each). The stream ends after an error
    /// (such as the session ending); observe again to go on.
    ///
    /// Two cases have no watch event on the election:
    ///
    /// - After a leader's lease expires on a lock with a lock-delay, the next candidate
    ///   is granted when the delay ends without any node changing. The observer then
    ///   reports `None` and looks again at the delay's end (by the local clock, at least
    ///   50 ms later).
    /// - A multi-lock ([`Client::lock_many`]) that names the election's lock queues
    ///   there like a candidate, but its node, once first, waits without leading until
    ///   every lock of its set can be granted: its grant comes from its other locks. The
    ///   observer reports `None` meanwhile, finds those locks ([`Client::lock_group`],
    ///   once per such multi-lock) and watches their queues
    ///   and lock-delays as well, so it reports the multi-lock's holder as the leader
    ///   (with the multi-lock's data) when it is granted.
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let election = corral_client::recipes::Election::new(&client, "/election/db", "");
    /// let mut leaders = election.observe();
    /// while let Some(leader) = leaders.next().await {
    ///     match leader? {
    ///         Some(l) => println!("leader: {}", String::from_utf8_lossy(&l.data)),
    ///         None => println!("no leader"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn observe(&self) -> LeaderStream {
        let observer = Observer {
            client: self.client.clone(),
            name: self.name.clone(),
            last: None,
            group: None,
        };
        let inner = futures::stream::unfold(Some(observer), |state| async move {
            let mut observer = state?;
            match observer.next_change().await {
                Ok(leader) => Some((Ok(leader), Some(observer))),
                Err(e) => Some((Err(e), None)),
            }
        });
        LeaderStream {
            inner: inner.boxed(),
        }
    }
}

/// The state of the lock named `name`, if it is one.
async fn lock_state(client: &Client, name: &str) -> Result<Option<LockState>> {
    let locks = client.locks(name).await?;
    Ok(locks.into_iter().find(|l| l.lock == name))
}

/// The entry that holds the lock.
fn granted(state: &LockState) -> Option<&LockEntry> {
    state.queue.iter().find(|e| e.granted)
}

/// Whether the node created at `czxid` is `entry`'s. A path does not name one node for
/// good: the lock's directory is a container, and when it is created again its sequence
/// counter restarts, so a later candidate's node can have the path a leader's had. The
/// entry's token is its node's creation zxid.
fn is_node_of(entry: &LockEntry, czxid: u64) -> bool {
    entry.token == czxid
}

/// When to look again for a grant held back by a lock-delay, if one is: a waiting
/// candidate, nobody granted, and a delay running.
fn delay_recheck(state: &LockState) -> Option<Instant> {
    if state.queue.is_empty() || granted(state).is_some() {
        return None;
    }
    delay_end(state)
}

/// When the lock-delay running on a lock ends, if one does: at `delayed_until_ms` (the
/// leader's wall clock), looked for by the local clock at least [`DELAY_RECHECK`] from
/// now.
fn delay_end(state: &LockState) -> Option<Instant> {
    if state.delayed_until_ms <= 0 {
        return None;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let left = u64::try_from(state.delayed_until_ms.saturating_sub(now_ms)).unwrap_or(0);
    // A delay beyond what the clock can represent never ends: no recheck.
    Instant::now().checked_add(Duration::from_millis(left).max(DELAY_RECHECK))
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The first entry of the queue if it waits while no lock-delay runs: a node of a
/// multi-lock ([`Client::lock_many`]) that keeps its place until every lock of its set
/// can be granted (any other first node of an exclusive lock holds it).
fn waiting_group_head(state: &LockState) -> Option<&LockEntry> {
    let head = state.queue.first()?;
    (!head.granted && state.delayed_until_ms <= 0).then_some(head)
}

/// The locks other than `name` of the multi-lock whose node `head` waits first in the
/// election's queue (one transaction creates the nodes of one request only, so its
/// token names them). They may be anywhere in the tree: `GetLockGroup` reads just
/// those. A server older than that request is asked for every lock's queue instead
/// (`GetLocks` on `/`; a listing too large for one frame fails, with `LimitExceeded`,
/// and ends the observer's stream).
async fn group_locks(client: &Client, name: &str, head: &LockEntry) -> Result<Vec<String>> {
    let locks = match client.lock_group(&head.node).await {
        Ok(locks) => locks,
        // Gone meanwhile: the election's queue, read again, shows it.
        Err(e) if e.is(ErrorCode::NoNode) => Vec::new(),
        Err(e) if e.is(ErrorCode::Unimplemented) => client.locks("/").await?,
        Err(e) => return Err(e),
    };
    Ok(locks
        .into_iter()
        .filter(|l| l.lock != name && l.queue.iter().any(|e| e.token == head.token))
        .map(|l| l.lock)
        .collect())
}

/// Watches another lock of a waiting multi-lock: its queue (a node leaving it may let
/// the multi-lock be granted) with a child watch, and returns when its lock-delay ends
/// if one runs (the end grants with no node changing). No watch if the lock is gone:
/// the multi-lock went with it, which the election's own queue shows.
async fn watch_other_lock(
    client: &Client,
    lock: &str,
) -> Result<(Option<Watcher>, Option<Instant>)> {
    let watcher = match client.get_children_watch(lock).await {
        Ok((_, _, watcher)) => Some(watcher),
        Err(e) if e.is(ErrorCode::NoNode) => None,
        Err(e) => return Err(e),
    };
    let delay = lock_state(client, lock).await?.as_ref().and_then(delay_end);
    Ok((watcher, delay))
}

/// Resolves when `watcher` fires (or fails), or never if there is none.
async fn maybe_fired(watcher: Option<Watcher>) -> Result<()> {
    match watcher {
        Some(w) => w.await.map(drop),
        None => std::future::pending().await,
    }
}

/// Resolves when any of `watchers` fires (or fails), or never if there are none.
async fn any_fired(watchers: Vec<Watcher>) -> Result<()> {
    if watchers.is_empty() {
        return std::future::pending().await;
    }
    let (fired, _, _) = futures::future::select_all(watchers).await;
    fired.map(drop)
}

/// Resolves at `at`, or never.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Observer {
    client: Client,
    name: String,
    /// What was last reported (`None`: nothing yet).
    last: Option<Option<LeaderInfo>>,
    /// The multi-lock found waiting first in the queue, if any: its token and its
    /// other locks, whose queues decide when it is granted.
    group: Option<(u64, Vec<String>)>,
}

impl Observer {
    /// Waits until the leader differs from what was last reported, and returns it.
    async fn next_change(&mut self) -> Result<Option<LeaderInfo>> {
        let client = &self.client;
        let name = self.name.as_str();
        loop {
            // Watch first, then read: a change after the read fires a watch.
            let dir_watch = match client.get_children_watch(name).await {
                Ok((_, _, watcher)) => watcher,
                Err(e) if e.is(ErrorCode::NoNode) => {
                    let (stat, watcher) = client.exists_watch(name).await?;
                    if stat.is_some() {
                        continue; // created meanwhile: watch its children
                    }
                    watcher
                }
                Err(e) => return Err(e),
            };
            // A multi-lock first in the queue is granted by its other locks, with no
            // change here: watch their queues too, before reading, like the directory.
            let mut group_watches = Vec::new();
            let mut recheck = None;
            if let Some((_, locks)) = &self.group {
                for lock in locks {
                    let (watcher, delay) = watch_other_lock(client, lock).await?;
                    group_watches.extend(watcher);
                    recheck = earliest(recheck, delay);
                }
            }
            let state = lock_state(client, name).await?;
            let (current, data_watch) = match state.as_ref().and_then(granted) {
                Some(entry) => match client.get_data_watch(&entry.node).await {
                    Ok((data, stat, watcher)) if is_node_of(entry, stat.czxid) => {
                        (Some(LeaderInfo::new(entry, data)), Some(watcher))
                    }
                    // The leader just left (the child watch has fired; its path may
                    // name a later candidate's node by now): read again.
                    Ok(_) => continue,
                    Err(e) if e.is(ErrorCode::NoNode) => continue,
                    Err(e) => return Err(e),
                },
                None => {
                    recheck = earliest(recheck, state.as_ref().and_then(delay_recheck));
                    (None, None)
                }
            };
            match state.as_ref().and_then(waiting_group_head) {
                Some(head) if self.group.as_ref().map(|(token, _)| *token) != Some(head.token) => {
                    // Newly first: find its other locks, then watch them and read again.
                    let locks = group_locks(client, name, head).await?;
                    self.group = Some((head.token, locks));
                    continue;
                }
                Some(_) => {}
                None => self.group = None,
            }
            if self.last.as_ref() != Some(&current) {
                self.last = Some(current.clone());
                return Ok(current);
            }
            tokio::select! {
                fired = dir_watch => { fired?; }
                fired = maybe_fired(data_watch) => fired?,
                fired = any_fired(group_watches) => fired?,
                () = sleep_until_some(recheck) => {}
            }
        }
    }
}

/// The stream of leaders from [`Election::observe`]: `Ok(Some(leader))` or `Ok(None)`
/// (nobody leads) for the current state and each change; it ends after an `Err`.
///
/// ```no_run
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let election = corral_client::recipes::Election::new(&client, "/election/db", "");
/// let mut leaders = election.observe();
/// let now = leaders.recv().await.transpose()?.flatten();
/// println!("leader now: {now:?}");
/// # Ok(()) }
/// ```
pub struct LeaderStream {
    inner: BoxStream<'static, Result<Option<LeaderInfo>>>,
}

impl LeaderStream {
    /// The next item; the same as `StreamExt::next` without importing it.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let mut leaders = corral_client::recipes::Election::new(&client, "/e", "").observe();
    /// while let Some(leader) = leaders.recv().await {
    ///     println!("{:?}", leader?.map(|l| l.token));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Option<Result<Option<LeaderInfo>>> {
        self.inner.next().await
    }
}

impl fmt::Debug for LeaderStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderStream").finish_non_exhaustive()
    }
}

impl Stream for LeaderStream {
    type Item = Result<Option<LeaderInfo>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// Leadership won by [`Election::campaign`]: the lock grant behind it. Leadership ends
/// when the lock is lost ([`lost`](Self::lost) resolves) or on [`resign`](Self::resign);
/// dropping it resigns in the background.
///
/// ```no_run
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let election = corral_client::recipes::Election::new(&client, "/election/db", "me");
/// let leadership = election.campaign().await?;
/// // Guard every leader-only write with the leadership's token.
/// client
///     .transaction()
///     .check_lock(leadership.name(), leadership.token())
///     .set_data("/config", b"by the leader".to_vec(), None)
///     .commit()
///     .await?;
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Leadership {
    client: Client,
    guard: LockGuard,
}

impl Leadership {
    /// The fencing token of this leadership: strictly increasing across leaders.
    ///
    /// ```no_run
    /// # async fn demo(e: corral_client::recipes::Election) -> corral_client::Result<()> {
    /// let leadership = e.campaign().await?;
    /// println!("term {}", leadership.token());
    /// # Ok(()) }
    /// ```
    pub fn token(&self) -> u64 {
        self.guard.token()
    }

    /// The leader's queue node.
    ///
    /// ```no_run
    /// # async fn demo(e: corral_client::recipes::Election) -> corral_client::Result<()> {
    /// let leadership = e.campaign().await?;
    /// assert!(leadership.node().starts_with(e.name()));
    /// # Ok(()) }
    /// ```
    pub fn node(&self) -> &str {
        self.guard.node()
    }

    /// The election's name.
    ///
    /// ```no_run
    /// # async fn demo(e: corral_client::recipes::Election) -> corral_client::Result<()> {
    /// let leadership = e.campaign().await?;
    /// assert_eq!(leadership.name(), e.name());
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        self.guard.name()
    }

    /// Whether this candidate still leads as far as the client can tell (once false,
    /// false for good).
    ///
    /// ```no_run
    /// # async fn demo(e: corral_client::recipes::Election) -> corral_client::Result<()> {
    /// let leadership = e.campaign().await?;
    /// assert!(leadership.is_leader());
    /// # Ok(()) }
    /// ```
    pub fn is_leader(&self) -> bool {
        self.guard.is_held()
    }

    /// Resolves when leadership is lost, with why (the lock's loss; also
    /// [`LockLoss::Released`] after [`resign`](Self::resign)). Owns what it needs.
    ///
    /// ```no_run
    /// # async fn demo(e: corral_client::recipes::Election) -> corral_client::Result<()> {
    /// let leadership = e.campaign().await?;
    /// let lost = leadership.lost();
    /// tokio::spawn(async move { eprintln!("leadership lost: {}", lost.await) });
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LockLoss> + Send + 'static {
        self.guard.lost()
    }

    /// Gives up leadership, so that the next candidate is elected. `Ok(true)` if this
    /// ended it, `Ok(false)` if it had already ended.
    ///
    /// ```no_run
    /// # async fn demo(e: corral_client::recipes::Election) -> corral_client::Result<()> {
    /// let leadership = e.campaign().await?;
    /// assert!(leadership.resign().await?);
    /// # Ok(()) }
    /// ```
    pub async fn resign(&self) -> Result<bool> {
        self.guard.release().await
    }

    /// Replaces the data observers see for this leader (etcd's `Proclaim`), fenced:
    /// fails with `LockNotHeld` unless this candidate still leads.
    ///
    /// ```no_run
    /// # async fn demo(e: corral_client::recipes::Election) -> corral_client::Result<()> {
    /// let leadership = e.campaign().await?;
    /// leadership.proclaim(b"10.0.0.7:9090".to_vec()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn proclaim(&self, data: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .transaction()
            .check_lock(self.guard.name(), self.guard.token())
            .set_data(self.guard.node(), data, None)
            .commit()
            .await
            .map(drop)
    }

    /// The lock guard behind the leadership (for [`LockGuard::check_op`],
    /// [`LockGuard::safe_deadline`], [`LockGuard::renew`]).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client, e: corral_client::recipes::Election) -> corral_client::Result<()> {
    /// let leadership = e.campaign().await?;
    /// client.multi(vec![leadership.guard().check_op()]).await?;
    /// # Ok(()) }
    /// ```
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }
}
