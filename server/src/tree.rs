//! The znode tree: nodes keyed by full path, their stats, the per-owner index of ephemeral
//! nodes, and the write primitives the state machine is built from.
//!
//! Every write primitive checks all its preconditions before it changes anything, so a
//! failed operation never leaves a partial change behind. Inside a `multi`, the successful
//! operations record what they changed in an undo log, and a failure rolls the log back in
//! reverse order; nothing is cloned up front (deleted nodes and replaced data are moved into
//! the log, not copied).
//!
//! Deterministic: ordered maps only; time comes in as a value.

use crate::machine::Change;
use corral_protocol::path::{join, name, parent, validate_path};
use corral_protocol::{CreateMode, CreateRequest, ErrorCode, ErrorInfo, EventKind, Stat};
use serde::{Deserialize, Serialize};

/// One znode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's data, shared: the tree's maps are persistent, and the first write into
    /// a part of the tree that an image (a compaction point's) still shares copies every
    /// node of that part, which copied their data too (256 sets of 1 MiB values right
    /// after an image took twice as long: `write_after_image_cost`).
    #[serde(with = "shared_bytes")]
    pub data: std::sync::Arc<[u8]>,
    /// The node's stat (`num_children` and `data_length` always match `children` and `data`).
    pub stat: Stat,
    /// Names (not paths) of the children, sorted.
    pub children: imbl::OrdSet<String>,
    /// The next sequence number for a sequential child. Only ever increases, so a name is
    /// never handed out twice under the same parent, even after deletes.
    pub next_seq: u64,
    /// Whether this is a container node (deleted once its last child is deleted).
    pub container: bool,
}

impl Node {
    fn new(data: &[u8], zxid: u64, wall_ms: i64, owner: u64, container: bool) -> Node {
        let stat = Stat {
            czxid: zxid,
            mzxid: zxid,
            pzxid: zxid,
            ctime_ms: wall_ms,
            mtime_ms: wall_ms,
            version: 0,
            cversion: 0,
            ephemeral_owner: owner,
            data_length: len_u32(data.len()),
            num_children: 0,
        };
        Node {
            data: data.into(),
            stat,
            children: imbl::OrdSet::new(),
            next_seq: 0,
            container,
        }
    }

    /// Whether the node is ephemeral.
    pub fn is_ephemeral(&self) -> bool {
        self.stat.ephemeral_owner != 0
    }
}

/// Serializes shared data exactly as `serde_bytes` does a `Vec<u8>` (the image and log
/// formats stay the same).
mod shared_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(data: &Arc<[u8]>, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::serialize(&**data, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[u8]>, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(bytes.into_vec().into())
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// What a write transaction is doing right now: its zxid and time, where its changes go, the
/// undo log (inside a `multi`), and the parents that lost a child (container candidates).
#[derive(Debug)]
pub(crate) struct Txn {
    /// The entry's zxid.
    pub zxid: u64,
    /// The entry's wall time.
    pub wall_ms: i64,
    /// The tree changes, in order.
    pub changes: Vec<Change>,
    /// `Some` inside a multi: what to undo if a later operation fails.
    pub undo: Option<Vec<Undo>>,
    /// Containers that lost a child during the transaction, in order; those that are empty
    /// at the end of the transaction are deleted.
    pub emptied: Vec<String>,
    /// Lock grants and losses, in order.
    pub lock_events: Vec<crate::machine::LockChange>,
    /// Held locks released by an expiry.
    pub locks_abandoned: u32,
    /// The lock rules of `AckedWrite` entries (`machine::EntryBody::AckedWrite`): only a
    /// child named like a queue node of the lock's kind is in its queue, and a lock is
    /// refused inside or around another. Older entries apply the rules they were
    /// written under (ARCHITECTURE.md, "Versioned entries").
    pub queue_names_only: bool,
}

impl Txn {
    pub fn new(zxid: u64, wall_ms: i64) -> Txn {
        Txn {
            zxid,
            wall_ms,
            changes: Vec::new(),
            undo: None,
            emptied: Vec::new(),
            lock_events: Vec::new(),
            locks_abandoned: 0,
            queue_names_only: false,
        }
    }

    fn change(&mut self, path: impl Into<String>, kind: EventKind) {
        self.changes.push(Change {
            path: path.into(),
            kind,
        });
    }

    fn record(&mut self, undo: impl FnOnce() -> Undo) {
        if let Some(log) = self.undo.as_mut() {
            log.push(undo());
        }
    }
}

/// The parent's state before a child was added or removed.
#[derive(Debug)]
pub(crate) struct ParentBefore {
    stat: Stat,
    next_seq: u64,
}

/// One reversible change to the tree.
#[derive(Debug)]
pub(crate) enum Undo {
    /// A node was created at `path` (it has no children when undone).
    Created { path: String, parent: ParentBefore },
    /// The node at `path` was deleted; here it is.
    Deleted {
        path: String,
        node: Node,
        parent: ParentBefore,
    },
    /// The data of `path` was replaced; here are the old data and stat.
    DataSet {
        path: String,
        data: std::sync::Arc<[u8]>,
        stat: Stat,
    },
}

fn err(code: ErrorCode, message: String) -> ErrorInfo {
    ErrorInfo::new(code, message)
}

/// The parent of a validated non-root path.
fn parent_of(path: &str) -> Result<&str, ErrorInfo> {
    parent(path).ok_or_else(|| {
        err(
            ErrorCode::BadArguments,
            format!("the root has no parent (path {path:?})"),
        )
    })
}

fn check_version(node: &Node, path: &str, expected: Option<u32>) -> Result<(), ErrorInfo> {
    match expected {
        Some(v) if v != node.stat.version => Err(err(
            ErrorCode::BadVersion,
            format!("version of {path} is {}, expected {v}", node.stat.version),
        )),
        _ => Ok(()),
    }
}

/// What a znode counts for in [`Tree::state_bytes`] besides its path and data: its stat,
/// its entry in its parent's children, and the maps' own bookkeeping. Measured: 300,000
/// znodes of 64 bytes under short paths grow the resident set by 553 bytes each, which
/// `state_bytes` counts within 2 % (`state_bytes_against_memory` in `machine.rs`).
pub const ZNODE_OVERHEAD_BYTES: u64 = 450;

/// What one znode counts for in [`Tree::state_bytes`].
pub(crate) fn znode_bytes(path: &str, data_len: usize) -> u64 {
    (path.len() as u64)
        .saturating_add(data_len as u64)
        .saturating_add(ZNODE_OVERHEAD_BYTES)
}

/// The znode tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TreeFields")]
pub struct Tree {
    /// Every node by full path, the root `/` included.
    nodes: imbl::OrdMap<String, Node>,
    /// Paths of the ephemeral nodes of each owner session (no empty sets).
    ephemerals: imbl::OrdMap<u64, imbl::OrdSet<String>>,
    /// The sum of [`znode_bytes`] over `nodes`: derived, not encoded (counted again when
    /// a tree is decoded), kept up to date by the primitives below.
    #[serde(skip)]
    bytes: u64,
}

/// The encoded fields of a [`Tree`], in its order: a decoded tree counts its bytes.
#[derive(Deserialize)]
struct TreeFields {
    nodes: imbl::OrdMap<String, Node>,
    ephemerals: imbl::OrdMap<u64, imbl::OrdSet<String>>,
}

impl From<TreeFields> for Tree {
    fn from(fields: TreeFields) -> Tree {
        let bytes = count_bytes(&fields.nodes);
        Tree {
            nodes: fields.nodes,
            ephemerals: fields.ephemerals,
            bytes,
        }
    }
}

fn count_bytes(nodes: &imbl::OrdMap<String, Node>) -> u64 {
    nodes.iter().fold(0u64, |sum, (path, node)| {
        sum.saturating_add(znode_bytes(path, node.data.len()))
    })
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// A tree holding only the root, created at zxid 0, time 0.
    pub fn new() -> Tree {
        let mut nodes = imbl::OrdMap::new();
        nodes.insert("/".to_string(), Node::new(&[], 0, 0, 0, false));
        Tree {
            bytes: znode_bytes("/", 0),
            nodes,
            ephemerals: imbl::OrdMap::new(),
        }
    }

    /// An estimate of the memory the tree takes, in bytes: every znode's path and data,
    /// plus [`ZNODE_OVERHEAD_BYTES`] each. O(1). Nodes compare it with their
    /// `max_state_bytes` before they propose a write that would add to it.
    pub fn state_bytes(&self) -> u64 {
        self.bytes
    }

    /// The node at `path`, if any (no validation).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// A node to change by hand (tests that need a state no entry makes quickly).
    #[cfg(test)]
    pub(crate) fn node_mut(&mut self, path: &str) -> Option<&mut Node> {
        self.nodes.get_mut(path)
    }

    /// Number of nodes, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty (never: the root always exists).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// Every strict descendant of `path` (not `path` itself), in path order. Costs the
    /// size of the subtree, not of the tree.
    pub fn descendants<'a>(&'a self, path: &str) -> impl Iterator<Item = (&'a str, &'a Node)> {
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        self.nodes
            .range::<_, str>((
                std::ops::Bound::Excluded(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(|(p, n)| (p.as_str(), n))
    }

    /// The paths of the ephemeral nodes `owner` owns, sorted.
    pub fn ephemerals_of(&self, owner: u64) -> impl Iterator<Item = &str> {
        self.ephemerals
            .get(&owner)
            .into_iter()
            .flat_map(|set| set.iter().map(String::as_str))
    }

    /// Owners with at least one ephemeral node, in id order.
    pub fn ephemeral_owners(&self) -> impl Iterator<Item = u64> + '_ {
        self.ephemerals.keys().copied()
    }

    /// A validated path's node, or `NoNode`.
    pub fn lookup(&self, path: &str) -> Result<&Node, ErrorInfo> {
        validate_path(path)?;
        self.nodes
            .get(path)
            .ok_or_else(|| err(ErrorCode::NoNode, format!("no node at {path}")))
    }

    // ----- primitives: each adds or removes exactly one node and records its undo -----

    /// Inserts `node` at `path` under the existing `parent_path`; no checks. With
    /// `sequential`, also advances the parent's sequence counter.
    fn insert_node(
        &mut self,
        txn: &mut Txn,
        path: String,
        parent_path: &str,
        node: Node,
        sequential: bool,
    ) {
        let owner = node.stat.ephemeral_owner;
        let zxid = txn.zxid;
        let parent = self
            .nodes
            .get_mut(parent_path)
            .expect("insert_node: the caller checked that the parent exists");
        let before = ParentBefore {
            stat: parent.stat,
            next_seq: parent.next_seq,
        };
        if sequential {
            parent.next_seq = parent.next_seq.saturating_add(1);
        }
        parent.children.insert(name(&path).to_string());
        parent.stat.num_children = len_u32(parent.children.len());
        parent.stat.cversion = parent.stat.cversion.wrapping_add(1);
        parent.stat.pzxid = zxid;
        if owner != 0 {
            self.ephemerals
                .entry(owner)
                .or_default()
                .insert(path.clone());
        }
        txn.change(path.clone(), EventKind::NodeCreated);
        txn.change(parent_path, EventKind::NodeChildrenChanged);
        txn.record(|| Undo::Created {
            path: path.clone(),
            parent: before,
        });
        self.bytes = self
            .bytes
            .saturating_add(znode_bytes(&path, node.data.len()));
        self.nodes.insert(path, node);
    }

    /// Removes the childless node at `path` (not the root); no checks beyond that.
    fn remove_node(&mut self, txn: &mut Txn, path: &str) -> Result<(), ErrorInfo> {
        let parent_path = parent_of(path)?;
        let node = self
            .nodes
            .remove(path)
            .expect("remove_node: the caller checked that the node exists");
        debug_assert!(node.children.is_empty(), "removing {path} with children");
        self.bytes = self
            .bytes
            .saturating_sub(znode_bytes(path, node.data.len()));
        let parent = self
            .nodes
            .get_mut(parent_path)
            .expect("remove_node: every non-root node has a parent");
        let before = ParentBefore {
            stat: parent.stat,
            next_seq: parent.next_seq,
        };
        parent.children.remove(name(path));
        parent.stat.num_children = len_u32(parent.children.len());
        parent.stat.cversion = parent.stat.cversion.wrapping_add(1);
        parent.stat.pzxid = txn.zxid;
        let parent_is_container = parent.container;
        let owner = node.stat.ephemeral_owner;
        if owner != 0 {
            self.forget_ephemeral(owner, path);
        }
        txn.change(path, EventKind::NodeDeleted);
        txn.change(parent_path, EventKind::NodeChildrenChanged);
        if parent_is_container {
            txn.emptied.push(parent_path.to_string());
        }
        if let Some(log) = txn.undo.as_mut() {
            log.push(Undo::Deleted {
                path: path.to_string(),
                node,
                parent: before,
            });
        }
        Ok(())
    }

    fn forget_ephemeral(&mut self, owner: u64, path: &str) {
        if let Some(set) = self.ephemerals.get_mut(&owner) {
            set.remove(path);
            if set.is_empty() {
                self.ephemerals.remove(&owner);
            }
        }
    }

    /// Reverts the changes recorded in `log`, newest first.
    pub(crate) fn rollback(&mut self, log: Vec<Undo>) {
        for undo in log.into_iter().rev() {
            match undo {
                Undo::Created { path, parent } => {
                    let node = self
                        .nodes
                        .remove(&path)
                        .expect("rollback: a created node is still there");
                    if node.stat.ephemeral_owner != 0 {
                        self.forget_ephemeral(node.stat.ephemeral_owner, &path);
                    }
                    self.bytes = self
                        .bytes
                        .saturating_sub(znode_bytes(&path, node.data.len()));
                    self.restore_parent(&path, parent, false);
                }
                Undo::Deleted { path, node, parent } => {
                    if node.stat.ephemeral_owner != 0 {
                        self.ephemerals
                            .entry(node.stat.ephemeral_owner)
                            .or_default()
                            .insert(path.clone());
                    }
                    self.restore_parent(&path, parent, true);
                    self.bytes = self
                        .bytes
                        .saturating_add(znode_bytes(&path, node.data.len()));
                    self.nodes.insert(path, node);
                }
                Undo::DataSet { path, data, stat } => {
                    let node = self
                        .nodes
                        .get_mut(&path)
                        .expect("rollback: a node whose data was set is still there");
                    self.bytes = self
                        .bytes
                        .saturating_sub(node.data.len() as u64)
                        .saturating_add(data.len() as u64);
                    node.data = data;
                    node.stat = stat;
                }
            }
        }
    }

    fn restore_parent(&mut self, path: &str, before: ParentBefore, add_child: bool) {
        let parent_path = parent(path).expect("rollback: a created node is not the root");
        let parent = self
            .nodes
            .get_mut(parent_path)
            .expect("rollback: the parent is still there");
        if add_child {
            parent.children.insert(name(path).to_string());
        } else {
            parent.children.remove(name(path));
        }
        parent.stat = if crate::faults::active().rollback_keeps_child_counts {
            Stat {
                cversion: parent.stat.cversion,
                pzxid: parent.stat.pzxid,
                ..before.stat
            }
        } else {
            before.stat
        };
        parent.next_seq = before.next_seq;
    }

    // ----- operations -----

    /// Creates a node for `session`; returns its actual path and stat.
    pub(crate) fn create(
        &mut self,
        txn: &mut Txn,
        session: u64,
        req: &CreateRequest,
    ) -> Result<(String, Stat), ErrorInfo> {
        let sequential = req.mode.is_sequential();
        // A sequential request names a prefix ("/locks/lock-" or even "/locks/"); validate
        // it with a stand-in ten-digit suffix, so the final path fits the length limit.
        if sequential {
            validate_path(&corral_protocol::path::sequential(&req.path, 0))?;
        } else {
            validate_path(&req.path)?;
            if req.path == "/" {
                return Err(err(
                    ErrorCode::NodeExists,
                    "the root / always exists".to_string(),
                ));
            }
        }
        // A sequential prefix of "/" names a child of the root.
        let parent_path = parent(&req.path).unwrap_or("/");

        // Find the nearest existing ancestor; collect the missing ones (nearest first).
        let mut missing: Vec<&str> = Vec::new();
        let mut cursor = parent_path;
        let existing = loop {
            match self.nodes.get(cursor) {
                Some(node) => break node,
                None => {
                    if !req.make_parents {
                        return Err(err(
                            ErrorCode::NoNode,
                            format!("parent {cursor} of {} does not exist", req.path),
                        ));
                    }
                    missing.push(cursor);
                    cursor = parent_of(cursor)?;
                }
            }
        };
        if existing.is_ephemeral() {
            return Err(err(
                ErrorCode::NoChildrenForEphemerals,
                format!(
                    "cannot create {} under the ephemeral node {cursor}",
                    req.path
                ),
            ));
        }
        let path = if sequential {
            // Missing parents are created fresh, with their counter at 0.
            let seq = if missing.is_empty() {
                existing.next_seq
            } else {
                0
            };
            let path = corral_protocol::path::sequential(&req.path, seq);
            // Past 9,999,999,999 the counter takes more than the ten digits validated
            // above, and the name may no longer fit the path limit.
            validate_path(&path)?;
            path
        } else {
            req.path.clone()
        };
        if missing.is_empty() && self.nodes.contains_key(&path) {
            return Err(err(
                ErrorCode::NodeExists,
                format!("node {path} already exists"),
            ));
        }

        // All checks passed: change the tree.
        let container = req.mode == CreateMode::Container;
        let (zxid, wall_ms) = (txn.zxid, txn.wall_ms);
        // `missing` and `parent_path` borrow the request, not the tree. Each missing
        // ancestor's parent is the next one in `missing`, the last one's is `cursor`.
        for (i, dir) in missing.iter().enumerate().rev() {
            let above = missing.get(i + 1).copied().unwrap_or(cursor);
            let node = Node::new(&[], zxid, wall_ms, 0, container);
            self.insert_node(txn, dir.to_string(), above, node, false);
        }
        let owner = if req.mode.is_ephemeral() { session } else { 0 };
        let node = Node::new(&req.data, zxid, wall_ms, owner, container);
        let stat = node.stat;
        self.insert_node(txn, path.clone(), parent_path, node, sequential);
        Ok((path, stat))
    }

    /// Deletes a childless node, optionally only at an expected version.
    pub(crate) fn delete(
        &mut self,
        txn: &mut Txn,
        path: &str,
        version: Option<u32>,
    ) -> Result<(), ErrorInfo> {
        validate_path(path)?;
        if path == "/" {
            return Err(err(
                ErrorCode::BadArguments,
                "the root / cannot be deleted".to_string(),
            ));
        }
        let node = self
            .nodes
            .get(path)
            .ok_or_else(|| err(ErrorCode::NoNode, format!("no node at {path}")))?;
        check_version(node, path, version)?;
        if !node.children.is_empty() {
            return Err(err(
                ErrorCode::NotEmpty,
                format!("{path} has {} children", node.children.len()),
            ));
        }
        self.remove_node(txn, path)
    }

    /// Replaces a node's data, optionally only at an expected version; returns the new stat.
    pub(crate) fn set_data(
        &mut self,
        txn: &mut Txn,
        path: &str,
        data: &[u8],
        version: Option<u32>,
    ) -> Result<Stat, ErrorInfo> {
        validate_path(path)?;
        let node = self
            .nodes
            .get_mut(path)
            .ok_or_else(|| err(ErrorCode::NoNode, format!("no node at {path}")))?;
        check_version(node, path, version)?;
        let old_stat = node.stat;
        let old_data = std::mem::replace(&mut node.data, data.into());
        self.bytes = self
            .bytes
            .saturating_sub(old_data.len() as u64)
            .saturating_add(data.len() as u64);
        node.stat.version = node.stat.version.wrapping_add(1);
        node.stat.mzxid = txn.zxid;
        node.stat.mtime_ms = txn.wall_ms;
        node.stat.data_length = len_u32(node.data.len());
        let stat = node.stat;
        txn.change(path, EventKind::NodeDataChanged);
        if let Some(log) = txn.undo.as_mut() {
            log.push(Undo::DataSet {
                path: path.to_string(),
                data: old_data,
                stat: old_stat,
            });
        }
        Ok(stat)
    }

    /// Fails unless the node exists at `version`.
    pub(crate) fn check(&self, path: &str, version: u32) -> Result<(), ErrorInfo> {
        let node = self.lookup(path)?;
        check_version(node, path, Some(version))
    }

    /// Deletes every ephemeral node of `owner`, in path order.
    pub(crate) fn delete_ephemerals(&mut self, txn: &mut Txn, owner: u64) {
        let Some(paths) = self.ephemerals.remove(&owner) else {
            return;
        };
        for path in &paths {
            // Ephemerals have no children; the owner's set is already gone.
            if self.nodes.contains_key(path.as_str()) {
                if let Err(e) = self.remove_node(txn, path) {
                    debug_assert!(false, "deleting ephemeral {path}: {e}");
                }
            }
        }
    }

    /// Deletes the containers among the parents that lost a child in this transaction and
    /// are now empty, cascading upward through container parents.
    pub(crate) fn reap_containers(&mut self, txn: &mut Txn) {
        let mut i = 0;
        let first_level = txn.emptied.len();
        while i < txn.emptied.len() {
            if i == first_level && crate::faults::active().reaping_stops_at_one_level {
                break;
            }
            let path = std::mem::take(&mut txn.emptied[i]);
            i += 1;
            let reap = match self.nodes.get(path.as_str()) {
                Some(node) => node.container && node.children.is_empty() && path != "/",
                None => false,
            };
            if reap {
                // remove_node pushes the container's parent onto `emptied`: the cascade.
                if let Err(e) = self.remove_node(txn, &path) {
                    debug_assert!(false, "reaping container {path}: {e}");
                }
            }
        }
        txn.emptied.clear();
    }

    /// Checks the structural invariants of the tree; `live` says whether a session exists.
    pub fn check_invariants(&self, live: impl Fn(u64) -> bool) -> Result<(), String> {
        let root = self.nodes.get("/").ok_or("the root / is missing")?;
        if root.is_ephemeral() || root.container {
            return Err("the root is ephemeral or a container".to_string());
        }
        let counted = count_bytes(&self.nodes);
        if self.bytes != counted {
            return Err(format!(
                "state_bytes is {} but the nodes count for {counted}",
                self.bytes
            ));
        }
        let mut ephemeral_count = 0usize;
        for (path, node) in &self.nodes {
            if validate_path(path).is_err() {
                return Err(format!("invalid path {path:?} in the tree"));
            }
            if node.stat.num_children as usize != node.children.len() {
                return Err(format!(
                    "{path}: num_children {} but {} children",
                    node.stat.num_children,
                    node.children.len()
                ));
            }
            if node.stat.data_length as usize != node.data.len() {
                return Err(format!(
                    "{path}: data_length {} but {} bytes of data",
                    node.stat.data_length,
                    node.data.len()
                ));
            }
            for child in &node.children {
                if !self.nodes.contains_key(&join(path, child)) {
                    return Err(format!("{path} lists child {child:?} that does not exist"));
                }
            }
            if let Some(parent_path) = parent(path) {
                let parent = self
                    .nodes
                    .get(parent_path)
                    .ok_or_else(|| format!("{path}: parent {parent_path} is missing"))?;
                if !parent.children.contains(name(path)) {
                    return Err(format!(
                        "{path}: not listed among the children of {parent_path}"
                    ));
                }
                if node.stat.czxid > parent.stat.pzxid {
                    return Err(format!(
                        "{path}: czxid {} is after the parent's pzxid {}",
                        node.stat.czxid, parent.stat.pzxid
                    ));
                }
            }
            if node.is_ephemeral() {
                ephemeral_count += 1;
                let owner = node.stat.ephemeral_owner;
                if !node.children.is_empty() {
                    return Err(format!("ephemeral {path} has children"));
                }
                if node.container {
                    return Err(format!("ephemeral {path} is a container"));
                }
                if !live(owner) {
                    return Err(format!("ephemeral {path} is owned by dead session {owner}"));
                }
                if !self
                    .ephemerals
                    .get(&owner)
                    .is_some_and(|set| set.contains(path))
                {
                    return Err(format!(
                        "ephemeral {path} missing from session {owner}'s set"
                    ));
                }
            }
            if node.stat.mzxid < node.stat.czxid || node.stat.pzxid < node.stat.czxid {
                return Err(format!("{path}: mzxid or pzxid before czxid"));
            }
        }
        let mut indexed = 0usize;
        for (owner, set) in &self.ephemerals {
            if set.is_empty() {
                return Err(format!("session {owner} has an empty ephemeral set"));
            }
            for path in set {
                indexed += 1;
                match self.nodes.get(path) {
                    Some(node) if node.stat.ephemeral_owner == *owner => {}
                    _ => {
                        return Err(format!(
                            "session {owner}'s ephemeral {path} is not its ephemeral node"
                        ))
                    }
                }
            }
        }
        if indexed != ephemeral_count {
            return Err(format!(
                "{ephemeral_count} ephemeral nodes but {indexed} in the owner index"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq_req(path: &str) -> CreateRequest {
        CreateRequest {
            path: path.to_string(),
            data: Vec::new(),
            mode: CreateMode::PersistentSequential,
            make_parents: false,
        }
    }

    /// A sequential name gets an eleventh digit once the parent's counter passes
    /// 9,999,999,999: a prefix that fits the path limit with ten digits no longer does
    /// with eleven. The create is refused (`InvalidPath`) and changes nothing, instead of
    /// putting a path over the limit into the tree (which `check_invariants` reports,
    /// and which no request could name again).
    #[test]
    fn a_sequential_name_past_ten_digits_still_fits_the_path_limit() {
        let mut tree = Tree::new();
        let mut txn = Txn::new(1, 0);
        let dir = CreateRequest {
            path: "/q".to_string(),
            data: Vec::new(),
            mode: CreateMode::Persistent,
            make_parents: false,
        };
        tree.create(&mut txn, 0, &dir).expect("create /q");
        // "/q/" + name + ten digits is exactly 1,024 bytes.
        let prefix = format!("/q/{}", "n".repeat(1024 - 3 - 10));
        tree.node_mut("/q").expect("/q").next_seq = 9_999_999_999;
        let mut txn = Txn::new(2, 0);
        let (last, _) = tree
            .create(&mut txn, 0, &seq_req(&prefix))
            .expect("ten digits fit");
        assert_eq!(last.len(), 1024);
        assert!(last.ends_with("9999999999"));
        let before = tree.clone();
        let mut txn = Txn::new(3, 0);
        let refused = tree
            .create(&mut txn, 0, &seq_req(&prefix))
            .expect_err("eleven digits do not fit");
        assert_eq!(refused.code, ErrorCode::InvalidPath);
        assert!(txn.changes.is_empty());
        assert_eq!(tree, before, "a refused create changes nothing");
        tree.check_invariants(|_| true).expect("invariants");
        // A shorter prefix under the same parent still gets its eleven digits.
        let mut txn = Txn::new(4, 0);
        let (path, _) = tree.create(&mut txn, 0, &seq_req("/q/s-")).expect("fits");
        assert_eq!(path, "/q/s-10000000000");
        tree.check_invariants(|_| true).expect("invariants");
    }
}
