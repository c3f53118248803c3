//! A double barrier: a fixed group of processes starts and finishes a computation
//! together (ZooKeeper's double barrier recipe, Curator's `DistributedDoubleBarrier`).

use super::{deadline_after, until};
use crate::client::Client;
use crate::connection::{Detached, Then};
use crate::error::{Error, Result};
use corral_protocol::path::join;
use corral_protocol::{CreateMode, CreateRequest, ErrorCode, ErrorInfo, EventKind};
use std::time::Duration;
use tokio::time::Instant;

/// The name of the node that tells everyone the group is complete.
const READY: &str = "ready";

/// A double barrier for `member_qty` participants (Curator's
/// `DistributedDoubleBarrier`, the ZooKeeper recipe): [`enter`](Self::enter) returns
/// once all of them have entered, [`leave`](Self::leave) once all of them have left.
///
/// Each participant is an ephemeral child `<path>/<id>` (so a participant whose
/// session ends counts as gone). Entering sets an exists watch on `<path>/ready` before
/// creating its own node; whoever sees the group complete creates `ready`, which wakes
/// everyone at once. Leaving follows the recipe: the lowest participant waits for the
/// highest to go, the others delete their node and wait for the lowest, until nobody is
/// left; then `ready` is deleted for the next round. Every wait is on an exists watch.
///
/// ```no_run
/// use corral_client::recipes::DoubleBarrier;
/// # async fn compute() {}
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let barrier = DoubleBarrier::new(&client, "/barriers/job-7", 3);
/// barrier.enter().await?; // all three are in
/// compute().await;
/// barrier.leave().await?; // all three are done
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DoubleBarrier {
    client: Client,
    path: String,
    member_qty: usize,
    id: String,
}

impl DoubleBarrier {
    /// A participant of the double barrier at `path` for `member_qty` participants,
    /// with a random id.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/barriers/b", 3);
    /// assert_eq!(b.member_qty(), 3);
    /// # }
    /// ```
    pub fn new(client: &Client, path: &str, member_qty: usize) -> Self {
        DoubleBarrier {
            client: client.clone(),
            path: path.to_string(),
            member_qty,
            id: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Uses this participant id (a node name, unique in the group, not `ready`).
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/barriers/b", 3).with_id("worker-1");
    /// assert_eq!(b.node(), "/barriers/b/worker-1");
    /// # }
    /// ```
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id.to_string();
        self
    }

    /// The barrier's node.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/barriers/b", 3);
    /// assert_eq!(b.path(), "/barriers/b");
    /// # }
    /// ```
    pub fn path(&self) -> &str {
        &self.path
    }

    /// This participant's id.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/barriers/b", 3);
    /// println!("I am {}", b.id());
    /// # }
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This participant's node, `<path>/<id>`.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/b", 2).with_id("x");
    /// assert_eq!(b.node(), "/b/x");
    /// # }
    /// ```
    pub fn node(&self) -> String {
        join(&self.path, &self.id)
    }

    /// How many participants make the group.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// assert_eq!(corral_client::recipes::DoubleBarrier::new(&client, "/b", 4).member_qty(), 4);
    /// # }
    /// ```
    pub fn member_qty(&self) -> usize {
        self.member_qty
    }

    /// Enters, and waits until all `member_qty` participants have entered.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/barriers/b", 3);
    /// b.enter().await?;
    /// # Ok(()) }
    /// ```
    pub async fn enter(&self) -> Result<()> {
        self.enter_until(None).await.map(drop)
    }

    /// Like [`enter`](Self::enter), for at most `timeout`: `false` if this participant
    /// had not seen the group complete by then. It then returns at once and its node is
    /// removed again in the background (after its create, if that is still on its way;
    /// resent after reconnects until answered, and sent again after a transient error,
    /// unless this participant enters again meanwhile).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/barriers/b", 3);
    /// if !b.enter_timeout(Duration::from_secs(10)).await? {
    ///     println!("the others did not come");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn enter_timeout(&self, timeout: Duration) -> Result<bool> {
        self.enter_until(deadline_after(Some(timeout))).await
    }

    /// Leaves (deletes this participant's node in turn), and waits until every
    /// participant has left.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/barriers/b", 3);
    /// b.enter().await?;
    /// b.leave().await?;
    /// # Ok(()) }
    /// ```
    pub async fn leave(&self) -> Result<()> {
        self.leave_until(None).await.map(drop)
    }

    /// Like [`leave`](Self::leave), for at most `timeout`: `false` if others were
    /// still there by then. This participant's node is removed either way: at the
    /// timeout, in the background (resent after reconnects until answered, and sent
    /// again after a transient error, unless this participant enters again meanwhile).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let b = corral_client::recipes::DoubleBarrier::new(&client, "/barriers/b", 3);
    /// if !b.leave_timeout(Duration::from_secs(10)).await? {
    ///     println!("some participants are still working");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn leave_timeout(&self, timeout: Duration) -> Result<bool> {
        self.leave_until(deadline_after(Some(timeout))).await
    }

    fn ready(&self) -> String {
        join(&self.path, READY)
    }

    /// The participants now (names, sorted), without `ready`; none if the barrier's
    /// node does not exist.
    async fn participants(&self) -> Result<Vec<String>> {
        match self.client.get_children(&self.path).await {
            Ok(mut children) => {
                children.retain(|c| c != READY);
                children.sort();
                Ok(children)
            }
            Err(e) if e.is(ErrorCode::NoNode) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn delete_quietly(&self, path: &str) -> Result<()> {
        match self.client.delete(path, None).await {
            Err(e) if !e.is(ErrorCode::NoNode) => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes this participant's node in the background, after every request already
    /// handed to the connection (a create still on its way, say): requests go out in
    /// the order they were made, and a session's writes apply in that order. Resent
    /// after reconnects until answered, and sent again after a transient error, unless
    /// this participant creates its node anew meanwhile (entering again).
    fn delete_in_background(&self) {
        let what = Detached::Delete { path: self.node() };
        self.client.detach(what.op(), Then::Detached(what));
    }

    async fn enter_until(&self, deadline: Option<Instant>) -> Result<bool> {
        if self.id == READY {
            return Err(Error::Server(ErrorInfo::new(
                ErrorCode::BadArguments,
                format!("{READY} is reserved in a double barrier"),
            )));
        }
        match until(deadline, self.enter_now()).await {
            Some(outcome) => outcome.map(|()| true),
            None => {
                // Given up: withdraw, whether or not the create got through, without
                // waiting (the server may be slow or out of reach).
                self.delete_in_background();
                Ok(false)
            }
        }
    }

    async fn enter_now(&self) -> Result<()> {
        let ready = self.ready();
        // Watch `ready` before joining: its creation, which needs this node, fires it.
        let (ready_stat, mut ready_watch) = self.client.exists_watch(&ready).await?;
        let request = CreateRequest {
            path: self.node(),
            data: Vec::new(),
            mode: CreateMode::Ephemeral,
            make_parents: true,
        };
        match self.client.create_with(request).await {
            Err(e) if !e.is(ErrorCode::NodeExists) => return Err(e),
            _ => {}
        }
        if ready_stat.is_some() {
            return Ok(());
        }
        loop {
            if self.participants().await?.len() >= self.member_qty {
                let request = CreateRequest {
                    path: ready.clone(),
                    data: Vec::new(),
                    mode: CreateMode::Persistent,
                    make_parents: true,
                };
                return match self.client.create_with(request).await {
                    Err(e) if !e.is(ErrorCode::NodeExists) => Err(e),
                    _ => Ok(()),
                };
            }
            let event = ready_watch.await?;
            if event.kind == EventKind::NodeCreated {
                return Ok(());
            }
            // A stale `ready` went away (or changed): watch again.
            let (stat, watcher) = self.client.exists_watch(&ready).await?;
            if stat.is_some() {
                return Ok(());
            }
            ready_watch = watcher;
        }
    }

    async fn leave_until(&self, deadline: Option<Instant>) -> Result<bool> {
        match until(deadline, self.leave_now()).await {
            Some(outcome) => outcome.map(|()| true),
            None => {
                self.delete_in_background();
                Ok(false)
            }
        }
    }

    async fn leave_now(&self) -> Result<()> {
        let ours = self.node();
        loop {
            let participants = self.participants().await?;
            let present = participants.contains(&self.id);
            let others: Vec<&String> = participants.iter().filter(|p| **p != self.id).collect();
            let (Some(lowest_other), Some(highest_other)) = (others.first(), others.last()) else {
                // Nobody else is left.
                if present {
                    self.delete_quietly(&ours).await?;
                }
                break;
            };
            let lowest = participants.first().map(String::as_str);
            let target = if present && lowest == Some(self.id.as_str()) {
                // The lowest goes last: wait for the highest.
                highest_other
            } else {
                if present {
                    self.delete_quietly(&ours).await?;
                }
                lowest_other
            };
            let (stat, watcher) = self.client.exists_watch(&join(&self.path, target)).await?;
            if stat.is_some() {
                watcher.await?;
            }
        }
        self.delete_quietly(&self.ready()).await
    }
}
