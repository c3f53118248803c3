//! A barrier that holds processes back while one node exists (Curator's
//! `DistributedBarrier`).

use super::{deadline_after, until};
use crate::client::Client;
use crate::error::Result;
use corral_protocol::{CreateMode, CreateRequest, ErrorCode, EventKind};
use std::time::Duration;
use tokio::time::Instant;

/// A barrier (Curator's `DistributedBarrier`): while its node exists, processes that
/// [`wait_on_barrier`](Self::wait_on_barrier) wait; removing the node lets them all
/// through. The node is persistent: the barrier stays set when the process that set it
/// goes away.
///
/// ```no_run
/// use corral_client::recipes::Barrier;
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let barrier = Barrier::new(&client, "/barriers/deploy");
/// barrier.set_barrier().await?;
/// // Elsewhere: barrier.wait_on_barrier().await? blocks ...
/// barrier.remove_barrier().await?; // ... until this.
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Barrier {
    client: Client,
    path: String,
}

impl Barrier {
    /// The barrier whose node is `path`.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let barrier = corral_client::recipes::Barrier::new(&client, "/barriers/b");
    /// assert_eq!(barrier.path(), "/barriers/b");
    /// # }
    /// ```
    pub fn new(client: &Client, path: &str) -> Self {
        Barrier {
            client: client.clone(),
            path: path.to_string(),
        }
    }

    /// The barrier's node.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let barrier = corral_client::recipes::Barrier::new(&client, "/barriers/b");
    /// assert_eq!(barrier.path(), "/barriers/b");
    /// # }
    /// ```
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Sets the barrier: creates its node (and missing parents). Setting a set barrier
    /// is fine.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// corral_client::recipes::Barrier::new(&client, "/barriers/b").set_barrier().await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_barrier(&self) -> Result<()> {
        let request = CreateRequest {
            path: self.path.clone(),
            data: Vec::new(),
            mode: CreateMode::Persistent,
            make_parents: true,
        };
        match self.client.create_with(request).await {
            Ok(_) => Ok(()),
            Err(e) if e.is(ErrorCode::NodeExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the barrier: deletes its node, letting every waiter through. Removing a
    /// removed barrier is fine.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// corral_client::recipes::Barrier::new(&client, "/barriers/b").remove_barrier().await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove_barrier(&self) -> Result<()> {
        match self.client.delete(&self.path, None).await {
            Ok(()) => Ok(()),
            Err(e) if e.is(ErrorCode::NoNode) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the barrier is set now.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let set = corral_client::recipes::Barrier::new(&client, "/barriers/b").is_set().await?;
    /// # Ok(()) }
    /// ```
    pub async fn is_set(&self) -> Result<bool> {
        Ok(self.client.exists(&self.path).await?.is_some())
    }

    /// Waits until the barrier is removed (returns at once if it is not set), with an
    /// exists watch on its node. A removal lets the waiter through even if the barrier
    /// is set again before the waiter could look at the node again.
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// corral_client::recipes::Barrier::new(&client, "/barriers/b").wait_on_barrier().await?;
    /// println!("through");
    /// # Ok(()) }
    /// ```
    pub async fn wait_on_barrier(&self) -> Result<()> {
        self.wait(None).await.map(drop)
    }

    /// Like [`wait_on_barrier`](Self::wait_on_barrier), for at most `timeout`: `true`
    /// if the barrier was removed (or not set), `false` if it was still set at the
    /// timeout.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let barrier = corral_client::recipes::Barrier::new(&client, "/barriers/b");
    /// if !barrier.wait_on_barrier_timeout(Duration::from_secs(5)).await? {
    ///     println!("still set after 5 s");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_on_barrier_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait(deadline_after(Some(timeout))).await
    }

    /// Waits for the node to be gone or deleted; the whole wait (calls included) ends
    /// at `deadline` with `false`.
    async fn wait(&self, deadline: Option<Instant>) -> Result<bool> {
        let gone = async {
            loop {
                let (stat, watcher) = self.client.exists_watch(&self.path).await?;
                if stat.is_none() {
                    return Ok(());
                }
                // Fires on the node's deletion: the barrier was removed, which lets its
                // waiters through even if it has been set again since (looking again
                // would miss the removal). Or on a data change: look again.
                if watcher.await?.kind == EventKind::NodeDeleted {
                    return Ok(());
                }
            }
        };
        match until(deadline, gone).await {
            None => Ok(false),
            Some(outcome) => outcome.map(|()| true),
        }
    }
}
