//! A builder for atomic multi-operations.

use crate::client::Client;
use crate::error::Result;
use corral_protocol::{CreateMode, CreateRequest, MultiOp, MultiResult};

/// Operations to apply atomically, built with [`Client::transaction`] and applied with
/// [`commit`](Self::commit): all of them under one zxid, or none.
///
/// ```no_run
/// use corral_client::{CreateMode, MultiResult};
/// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
/// let results = client
///     .transaction()
///     .create("/jobs/job-", b"payload".to_vec(), CreateMode::PersistentSequential)
///     .delete("/jobs/claimed", None)
///     .commit()
///     .await?;
/// if let MultiResult::Created { path, .. } = &results[0] {
///     println!("queued {path}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction<'a> {
    client: &'a Client,
    ops: Vec<MultiOp>,
}

impl<'a> Transaction<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Transaction {
            client,
            ops: Vec::new(),
        }
    }

    /// Adds a create of a node without missing parents.
    ///
    /// ```no_run
    /// # use corral_client::CreateMode;
    /// # fn demo(client: corral_client::Client) {
    /// let tx = client.transaction().create("/a", Vec::new(), CreateMode::Persistent);
    /// # }
    /// ```
    pub fn create(self, path: &str, data: impl Into<Vec<u8>>, mode: CreateMode) -> Self {
        self.create_with(CreateRequest {
            path: path.to_string(),
            data: data.into(),
            mode,
            make_parents: false,
        })
    }

    /// Adds a create with every option of [`CreateRequest`].
    ///
    /// ```no_run
    /// # use corral_client::{CreateMode, CreateRequest};
    /// # fn demo(client: corral_client::Client) {
    /// let tx = client.transaction().create_with(CreateRequest {
    ///     path: "/a/b/c".into(),
    ///     data: Vec::new(),
    ///     mode: CreateMode::Persistent,
    ///     make_parents: true,
    /// });
    /// # }
    /// ```
    pub fn create_with(mut self, request: CreateRequest) -> Self {
        self.ops.push(MultiOp::Create(request));
        self
    }

    /// Adds a delete, only at `version` if one is given.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let tx = client.transaction().delete("/a", Some(2));
    /// # }
    /// ```
    pub fn delete(mut self, path: &str, version: Option<u32>) -> Self {
        self.ops.push(MultiOp::Delete {
            path: path.to_string(),
            version,
        });
        self
    }

    /// Adds a data replacement, only at `version` if one is given.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let tx = client.transaction().set_data("/a", b"x".to_vec(), None);
    /// # }
    /// ```
    pub fn set_data(mut self, path: &str, data: impl Into<Vec<u8>>, version: Option<u32>) -> Self {
        self.ops.push(MultiOp::SetData {
            path: path.to_string(),
            data: data.into(),
            version,
        });
        self
    }

    /// Adds a check that the node exists at `version`.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// let tx = client.transaction().check("/a", 4);
    /// # }
    /// ```
    pub fn check(mut self, path: &str, version: u32) -> Self {
        self.ops.push(MultiOp::Check {
            path: path.to_string(),
            version,
        });
        self
    }

    /// Adds a check that the fencing `token` currently holds `lock`: the whole
    /// transaction fails with `LockNotHeld` otherwise, so a former holder of the lock
    /// cannot write. See [`LockGuard::check_op`](crate::LockGuard::check_op).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let guard = client.lock("/locks/config", Default::default()).acquire().await?;
    /// client
    ///     .transaction()
    ///     .check_lock(guard.name(), guard.token())
    ///     .set_data("/config", b"new".to_vec(), None)
    ///     .commit()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn check_lock(mut self, lock: &str, token: u64) -> Self {
        self.ops.push(MultiOp::CheckLock {
            lock: lock.to_string(),
            token,
        });
        self
    }

    /// The operations so far.
    ///
    /// ```no_run
    /// # fn demo(client: corral_client::Client) {
    /// assert!(client.transaction().ops().is_empty());
    /// # }
    /// ```
    pub fn ops(&self) -> &[MultiOp] {
        &self.ops
    }

    /// Applies the operations atomically; see [`Client::multi`].
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// client.transaction().check("/a", 1).delete("/a", None).commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit(self) -> Result<Vec<MultiResult>> {
        self.client.multi(self.ops).await
    }
}
