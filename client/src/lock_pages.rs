//! Listing locks page by page, for more locks than one frame describes.

use crate::client::{check_path, unexpected, Client};
use crate::error::Result;
use corral_protocol::{ErrorCode, LockState, Op, OpResult};

/// One page of the locks at and below a path, from [`Client::get_locks_page`] or
/// [`LocksPages::next_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocksPage {
    /// The locks, in path order.
    pub locks: Vec<LockState>,
    /// Whether locks remain after the last one of this page.
    pub more: bool,
}

impl Client {
    /// One page of the locks at and below `path`: those named after `after` in byte
    /// order (`""` for the first page), at most `max_locks` of them and as many as fit in
    /// this client's and the server's `max_frame_bytes`, but at least one while any
    /// remain. Each page is read from one state of the server; locks taken or released
    /// between pages may or may not be listed. Fails with `Unimplemented` from a server
    /// older than this request ([`locks_pages`](Self::locks_pages) then falls back to
    /// [`locks`](Self::locks)).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let page = client.get_locks_page("/jobs", "", 500).await?;
    /// if page.more {
    ///     let after = page.locks.last().map(|l| l.lock.as_str()).unwrap_or("");
    ///     let _next = client.get_locks_page("/jobs", after, 500).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_locks_page(
        &self,
        path: &str,
        after: &str,
        max_locks: u32,
    ) -> Result<LocksPage> {
        check_path(path)?;
        let op = Op::GetLocksPage {
            path: path.to_string(),
            after: after.to_string(),
            max_locks,
            max_bytes: u32::try_from(self.max_frame_bytes()).unwrap_or(u32::MAX),
        };
        match self.call_plain(op).await? {
            OpResult::LocksPage { locks, more } => Ok(LocksPage { locks, more }),
            other => Err(unexpected("get_locks_page", &other)),
        }
    }

    /// Pages through all the locks at and below `path`, `page_locks` at a time (see
    /// [`get_locks_page`](Self::get_locks_page)); every lock that exists from the first
    /// page to the last is listed exactly once, in path order. From a server older than
    /// paged lock listings, the first page is the whole [`locks`](Self::locks) answer
    /// (which fails with `LimitExceeded` if it does not fit in a frame).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let mut pages = client.locks_pages("/", 500);
    /// let mut waiting = 0;
    /// while let Some(page) = pages.next_page().await? {
    ///     for lock in &page.locks {
    ///         waiting += lock.queue.iter().filter(|e| !e.granted).count();
    ///     }
    /// }
    /// println!("{waiting} waiters");
    /// # Ok(()) }
    /// ```
    pub fn locks_pages(&self, path: &str, page_locks: u32) -> LocksPages {
        LocksPages {
            client: self.clone(),
            path: path.to_string(),
            page_locks,
            after: Some(String::new()),
        }
    }
}

/// The pages of the locks at and below a path, in order, from [`Client::locks_pages`].
#[derive(Debug)]
pub struct LocksPages {
    client: Client,
    path: String,
    page_locks: u32,
    /// Where the next page starts; `None` after the last page.
    after: Option<String>,
}

impl LocksPages {
    /// The next page, or `None` after the last one. An error (the connection failed, an
    /// invalid path) leaves the position unchanged, so the call can be retried.
    pub async fn next_page(&mut self) -> Result<Option<LocksPage>> {
        let Some(after) = &self.after else {
            return Ok(None);
        };
        let page = match self
            .client
            .get_locks_page(&self.path, after, self.page_locks)
            .await
        {
            Ok(page) => page,
            // An older server: everything at once, as the only page.
            Err(e) if after.is_empty() && e.is(ErrorCode::Unimplemented) => LocksPage {
                locks: self.client.locks(&self.path).await?,
                more: false,
            },
            Err(e) => return Err(e),
        };
        self.after = match page.locks.last() {
            Some(last) if page.more => Some(last.lock.clone()),
            _ => None,
        };
        Ok(Some(page))
    }
}
