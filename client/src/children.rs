//! Listing a node's children page by page, for directories too large for one frame.

use crate::client::{check_path, unexpected, Client};
use crate::error::Result;
use corral_protocol::{Op, OpResult, Stat};

/// One page of a node's children, from [`Client::get_children_page`] or
/// [`ChildrenPages::next_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildrenPage {
    /// Child names (not paths), sorted in byte order.
    pub children: Vec<String>,
    /// The parent's stat when the page was read.
    pub stat: Stat,
    /// Whether names remain after the last one of this page.
    pub more: bool,
}

impl Client {
    /// One page of the node's children: the names after `after` in byte order (`""` for
    /// the first page), at most `max_names` of them and as many as fit in this client's
    /// and the server's `max_frame_bytes`, but at least one while any remain.
    ///
    /// Each page is read from one state of the server. Pages read at different times may
    /// differ in what they saw: compare their `stat.cversion` (equal means no child was
    /// added or removed in between), or use [`children_pages`](Self::children_pages),
    /// which does. A listing that fits in one frame is simpler with
    /// [`get_children`](Self::get_children).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let page = client.get_children_page("/jobs", "", 1000).await?;
    /// if page.more {
    ///     let after = page.children.last().map(String::as_str).unwrap_or("");
    ///     let _next = client.get_children_page("/jobs", after, 1000).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_children_page(
        &self,
        path: &str,
        after: &str,
        max_names: u32,
    ) -> Result<ChildrenPage> {
        check_path(path)?;
        let op = Op::GetChildrenPage {
            path: path.to_string(),
            after: after.to_string(),
            max_names,
            max_bytes: u32::try_from(self.max_frame_bytes()).unwrap_or(u32::MAX),
        };
        match self.call_plain(op).await? {
            OpResult::ChildrenPage {
                children,
                stat,
                more,
            } => Ok(ChildrenPage {
                children,
                stat,
                more,
            }),
            other => Err(unexpected("get_children_page", &other)),
        }
    }

    /// Pages through all of the node's children, `page_names` names at a time (see
    /// [`get_children_page`](Self::get_children_page)).
    ///
    /// ```no_run
    /// # async fn demo(client: corral_client::Client) -> corral_client::Result<()> {
    /// let mut pages = client.children_pages("/jobs", 1000);
    /// let mut count = 0;
    /// while let Some(page) = pages.next_page().await? {
    ///     count += page.children.len();
    /// }
    /// if pages.changed() {
    ///     println!("about {count} children (they changed while listed)");
    /// } else {
    ///     println!("{count} children");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn children_pages(&self, path: &str, page_names: u32) -> ChildrenPages {
        ChildrenPages {
            client: self.clone(),
            path: path.to_string(),
            page_names,
            after: Some(String::new()),
            first_cversion: None,
            changed: false,
        }
    }
}

/// The pages of a node's children in order, from [`Client::children_pages`].
///
/// Every name that stays a child from the first page to the last is listed exactly once,
/// in byte order. A name added or removed meanwhile may or may not be listed; if none
/// was, [`changed`](Self::changed) is `false` and the pages together are the listing
/// at one moment, as [`Client::get_children`] would have returned it.
#[derive(Debug)]
pub struct ChildrenPages {
    client: Client,
    path: String,
    page_names: u32,
    /// Where the next page starts; `None` after the last page.
    after: Option<String>,
    first_cversion: Option<u32>,
    changed: bool,
}

impl ChildrenPages {
    /// The next page, or `None` after the last one. An error (the node was deleted,
    /// the connection failed) leaves the position unchanged, so the call can be retried.
    pub async fn next_page(&mut self) -> Result<Option<ChildrenPage>> {
        let Some(after) = &self.after else {
            return Ok(None);
        };
        let page = self
            .client
            .get_children_page(&self.path, after, self.page_names)
            .await?;
        let first = *self.first_cversion.get_or_insert(page.stat.cversion);
        self.changed |= page.stat.cversion != first;
        self.after = match page.children.last() {
            Some(last) if page.more => Some(last.clone()),
            _ => None,
        };
        Ok(Some(page))
    }

    /// Whether a child was added or removed between the first page and the latest one
    /// read (their `stat.cversion` differ).
    pub fn changed(&self) -> bool {
        self.changed
    }
}
