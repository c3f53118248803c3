//! The client's side of watches: who waits for which event, routing of incoming events,
//! and the set to re-register after a reconnect. Pure (no IO), unit tested on its own.

use crate::error::Error;
use crate::watcher::{StreamItem, WatchSender};
use corral_protocol::path::is_within;
use corral_protocol::{AddWatchMode, EventKind, WatchEvent, WatchSet, WatcherKind};
use std::collections::BTreeMap;
use tokio::sync::broadcast;

/// The kinds of one-shot watches, as the server keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum OneShotKind {
    /// Left by `get_data`.
    Data,
    /// Left by `exists`.
    Exist,
    /// Left by `get_children`.
    Child,
}

impl OneShotKind {
    /// Whether an event of this kind fires this kind of watch (ZooKeeper's rules).
    fn fired_by(self, kind: EventKind) -> bool {
        use EventKind::*;
        match self {
            OneShotKind::Data | OneShotKind::Exist => {
                matches!(kind, NodeCreated | NodeDeleted | NodeDataChanged)
            }
            OneShotKind::Child => matches!(kind, NodeDeleted | NodeChildrenChanged),
        }
    }

    fn removed_by(self, kind: WatcherKind) -> bool {
        match kind {
            WatcherKind::Data => matches!(self, OneShotKind::Data | OneShotKind::Exist),
            WatcherKind::Children => self == OneShotKind::Child,
            WatcherKind::Persistent => false,
            WatcherKind::Any => true,
        }
    }
}

fn persistent_removed_by(kind: WatcherKind) -> bool {
    matches!(kind, WatcherKind::Persistent | WatcherKind::Any)
}

fn is_recursive(mode: AddWatchMode) -> bool {
    mode == AddWatchMode::PersistentRecursive
}

fn mode_of(recursive: bool) -> AddWatchMode {
    if recursive {
        AddWatchMode::PersistentRecursive
    } else {
        AddWatchMode::Persistent
    }
}

/// Whether a persistent watch in `mode` on `watched` sees `event`.
fn persistent_sees(mode: AddWatchMode, watched: &str, event: &WatchEvent) -> bool {
    match mode {
        AddWatchMode::Persistent => event.path == watched,
        // As in ZooKeeper, recursive watches do not report child-list changes: the
        // creations and deletions of the children themselves are reported instead.
        AddWatchMode::PersistentRecursive => {
            event.kind != EventKind::NodeChildrenChanged && is_within(&event.path, watched)
        }
    }
}

#[derive(Debug)]
struct OneShot {
    tx: WatchSender,
    /// The zxid of the read that left the watch: the reader already saw every change up
    /// to it, so an event for such a change (re-fired by `SetWatches` after a reconnect)
    /// does not fire this watcher.
    seen_zxid: u64,
}

/// Every watch the session holds, client side.
#[derive(Debug)]
pub(crate) struct WatchRegistry {
    one_shot: BTreeMap<(String, OneShotKind), Vec<OneShot>>,
    /// Keyed by path and whether the watch is recursive (`AddWatchMode` is not `Ord`).
    persistent: BTreeMap<(String, bool), broadcast::Sender<StreamItem>>,
    stream_buffer: usize,
}

impl WatchRegistry {
    /// An empty registry whose persistent streams buffer `stream_buffer` events.
    pub(crate) fn new(stream_buffer: usize) -> Self {
        WatchRegistry {
            one_shot: BTreeMap::new(),
            persistent: BTreeMap::new(),
            stream_buffer,
        }
    }

    /// Records a one-shot watcher left by a read answered at `seen_zxid`. Watchers of the
    /// same path and kind whose receiver was dropped are forgotten here: a caller that
    /// re-arms a watch it stopped waiting for (a `select!` over two watches, say) would
    /// otherwise pile them up until the path's next event.
    pub(crate) fn add_one_shot(
        &mut self,
        path: &str,
        kind: OneShotKind,
        tx: WatchSender,
        seen_zxid: u64,
    ) {
        let watchers = self.one_shot.entry((path.to_string(), kind)).or_default();
        watchers.retain(|w| !w.tx.is_closed());
        watchers.push(OneShot { tx, seen_zxid });
    }

    /// Records a persistent watch (or joins the existing one) and returns a receiver of
    /// its events.
    pub(crate) fn add_persistent(
        &mut self,
        path: &str,
        mode: AddWatchMode,
    ) -> broadcast::Receiver<StreamItem> {
        self.persistent
            .entry((path.to_string(), is_recursive(mode)))
            .or_insert_with(|| broadcast::Sender::new(self.stream_buffer))
            .subscribe()
    }

    /// Delivers an event to every watcher it fires; one-shot watchers it fires are
    /// removed. Returns how many watchers it reached.
    pub(crate) fn dispatch(&mut self, event: &WatchEvent) -> usize {
        let mut reached = 0;
        for kind in [OneShotKind::Data, OneShotKind::Exist, OneShotKind::Child] {
            if !kind.fired_by(event.kind) {
                continue;
            }
            let key = (event.path.clone(), kind);
            let Some(watchers) = self.one_shot.remove(&key) else {
                continue;
            };
            let mut kept = Vec::new();
            for w in watchers {
                if event.zxid <= w.seen_zxid {
                    kept.push(w);
                } else if w.tx.send(Ok(event.clone())).is_ok() {
                    reached += 1;
                }
            }
            if !kept.is_empty() {
                self.one_shot.insert(key, kept);
            }
        }
        for ((path, recursive), tx) in &self.persistent {
            if persistent_sees(mode_of(*recursive), path, event) {
                // An error only means nobody listens right now.
                reached += tx.send(Ok(event.clone())).unwrap_or(0);
            }
        }
        reached
    }

    /// Forgets the watches a successful `RemoveWatches(path, kind)` removed, telling
    /// their holders with [`Error::WatchRemoved`].
    pub(crate) fn remove(&mut self, path: &str, kind: WatcherKind) {
        let one_shot_keys: Vec<_> = self
            .one_shot
            .keys()
            .filter(|(p, k)| p == path && k.removed_by(kind))
            .cloned()
            .collect();
        for key in one_shot_keys {
            for w in self.one_shot.remove(&key).unwrap_or_default() {
                let _ = w.tx.send(Err(Error::WatchRemoved));
            }
        }
        if persistent_removed_by(kind) {
            for recursive in [false, true] {
                if let Some(tx) = self.persistent.remove(&(path.to_string(), recursive)) {
                    let _ = tx.send(Err(Error::WatchRemoved));
                }
            }
        }
    }

    /// The watches to re-register after a reconnect. Watches nobody waits for any more
    /// are forgotten first.
    pub(crate) fn watch_set(&mut self) -> WatchSet {
        self.one_shot.retain(|_, watchers| {
            watchers.retain(|w| !w.tx.is_closed());
            !watchers.is_empty()
        });
        self.persistent.retain(|_, tx| tx.receiver_count() > 0);
        let mut set = WatchSet::default();
        for (path, kind) in self.one_shot.keys() {
            let list = match kind {
                OneShotKind::Data => &mut set.data,
                OneShotKind::Exist => &mut set.exist,
                OneShotKind::Child => &mut set.child,
            };
            list.push(path.clone());
        }
        for (path, recursive) in self.persistent.keys() {
            if *recursive {
                set.persistent_recursive.push(path.clone());
            } else {
                set.persistent.push(path.clone());
            }
        }
        set
    }

    /// The persistent watches of a watch set, as registry keys.
    pub(crate) fn persistent_keys(set: &WatchSet) -> Vec<(String, bool)> {
        let exact = set.persistent.iter().map(|p| (p.clone(), false));
        let recursive = set.persistent_recursive.iter().map(|p| (p.clone(), true));
        exact.chain(recursive).collect()
    }

    /// Tells the streams of the persistent watches `keys`, registered again after a
    /// reconnect, that changes in `(since_zxid, until_zxid]` may have fired no event.
    /// Whether any stream was told (a watch still held, and something changed).
    pub(crate) fn resumed(
        &self,
        keys: &[(String, bool)],
        since_zxid: u64,
        until_zxid: u64,
    ) -> bool {
        if until_zxid <= since_zxid {
            return false; // nothing changed while the client was away
        }
        let mut told = false;
        for key in keys {
            if let Some(tx) = self.persistent.get(key) {
                told = true;
                let _ = tx.send(Err(Error::WatchResumed {
                    since_zxid,
                    until_zxid,
                }));
            }
        }
        told
    }

    /// Ends every watch with `err` (session expired, client closed, re-registration
    /// refused).
    pub(crate) fn fail_all(&mut self, err: &Error) {
        for (_, watchers) in std::mem::take(&mut self.one_shot) {
            for w in watchers {
                let _ = w.tx.send(Err(err.clone()));
            }
        }
        for (_, tx) in std::mem::take(&mut self.persistent) {
            let _ = tx.send(Err(err.clone()));
        }
    }

    /// Number of distinct watches (path and kind) held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.one_shot.len() + self.persistent.len()
    }

    /// One-shot watchers kept, live or not.
    #[cfg(test)]
    fn one_shot_watchers(&self) -> usize {
        self.one_shot.values().map(Vec::len).sum()
    }
}

/// Picks one of a watch set's lists.
type ListOf = fn(&mut WatchSet) -> &mut Vec<String>;

/// Splits a watch set into pieces whose paths add up to at most `max_path_bytes` each
/// (at least one path per piece), so that every `SetWatches` fits in a frame.
pub(crate) fn split_watch_set(set: WatchSet, max_path_bytes: usize) -> Vec<WatchSet> {
    let mut pieces = Vec::new();
    let mut current = WatchSet::default();
    let mut bytes = 0;
    let lists: [(Vec<String>, ListOf); 5] = [
        (set.data, |s| &mut s.data),
        (set.exist, |s| &mut s.exist),
        (set.child, |s| &mut s.child),
        (set.persistent, |s| &mut s.persistent),
        (set.persistent_recursive, |s| &mut s.persistent_recursive),
    ];
    for (paths, field) in lists {
        for path in paths {
            // 8 bytes of length prefix per string on the wire.
            let cost = path.len() + 8;
            if bytes + cost > max_path_bytes && !current.is_empty() {
                pieces.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += cost;
            field(&mut current).push(path);
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watcher::Watcher;
    use futures::FutureExt;

    fn ev(kind: EventKind, path: &str, zxid: u64) -> WatchEvent {
        WatchEvent {
            kind,
            path: path.into(),
            zxid,
        }
    }

    fn ready(w: &mut Watcher) -> Option<Result<WatchEvent, Error>> {
        w.now_or_never()
    }

    #[test]
    fn rearming_a_watch_forgets_the_dropped_watchers_of_its_path() {
        let mut r = WatchRegistry::new(8);
        for zxid in 0..100 {
            let (tx, watcher) = Watcher::channel();
            r.add_one_shot("/a", OneShotKind::Data, tx, zxid);
            drop(watcher);
        }
        let (tx, mut live) = Watcher::channel();
        r.add_one_shot("/a", OneShotKind::Data, tx, 100);
        assert_eq!(r.one_shot_watchers(), 1, "only the live watcher is kept");
        // Another path's or kind's watchers are not touched.
        let (tx, _child) = Watcher::channel();
        r.add_one_shot("/a", OneShotKind::Child, tx, 100);
        assert_eq!(r.one_shot_watchers(), 2);
        assert_eq!(r.dispatch(&ev(EventKind::NodeDataChanged, "/a", 101)), 1);
        assert!(matches!(ready(&mut live), Some(Ok(_))));
    }

    #[test]
    fn one_shot_routing_follows_zookeeper() {
        let mut r = WatchRegistry::new(8);
        let (tx_d, mut data) = Watcher::channel();
        let (tx_c, mut child) = Watcher::channel();
        r.add_one_shot("/a", OneShotKind::Data, tx_d, 5);
        r.add_one_shot("/a", OneShotKind::Child, tx_c, 5);
        assert_eq!(r.len(), 2);

        // A data change does not fire the child watch; another path fires nothing.
        assert_eq!(r.dispatch(&ev(EventKind::NodeDataChanged, "/b", 9)), 0);
        assert_eq!(r.dispatch(&ev(EventKind::NodeDataChanged, "/a", 9)), 1);
        assert_eq!(
            ready(&mut data).and_then(|r| r.ok()),
            Some(ev(EventKind::NodeDataChanged, "/a", 9))
        );
        assert!(ready(&mut child).is_none());
        // One-shot: the data watch is gone.
        assert_eq!(r.len(), 1);
        assert_eq!(r.dispatch(&ev(EventKind::NodeDeleted, "/a", 10)), 1);
        assert!(matches!(ready(&mut child), Some(Ok(_))));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn events_the_reader_already_saw_do_not_fire() {
        let mut r = WatchRegistry::new(8);
        let (tx, mut w) = Watcher::channel();
        r.add_one_shot("/a", OneShotKind::Exist, tx, 20);
        assert_eq!(r.dispatch(&ev(EventKind::NodeCreated, "/a", 20)), 0);
        assert!(ready(&mut w).is_none());
        assert_eq!(r.dispatch(&ev(EventKind::NodeDataChanged, "/a", 21)), 1);
        assert!(matches!(ready(&mut w), Some(Ok(_))));
    }

    #[test]
    fn persistent_and_recursive() {
        let mut r = WatchRegistry::new(8);
        let mut exact = r.add_persistent("/a", AddWatchMode::Persistent);
        let mut below = r.add_persistent("/a", AddWatchMode::PersistentRecursive);
        r.dispatch(&ev(EventKind::NodeChildrenChanged, "/a", 1));
        r.dispatch(&ev(EventKind::NodeCreated, "/a/b", 2));
        r.dispatch(&ev(EventKind::NodeCreated, "/ab", 3));
        let got: Vec<u64> = std::iter::from_fn(|| exact.try_recv().ok())
            .filter_map(|r| r.ok().map(|e| e.zxid))
            .collect();
        assert_eq!(got, vec![1]);
        let got: Vec<u64> = std::iter::from_fn(|| below.try_recv().ok())
            .filter_map(|r| r.ok().map(|e| e.zxid))
            .collect();
        assert_eq!(got, vec![2]);
        // Persistent watches stay.
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn remove_tells_the_holders() {
        let mut r = WatchRegistry::new(8);
        let (tx, mut data) = Watcher::channel();
        r.add_one_shot("/a", OneShotKind::Data, tx, 0);
        let (tx, mut child) = Watcher::channel();
        r.add_one_shot("/a", OneShotKind::Child, tx, 0);
        let mut stream = r.add_persistent("/a", AddWatchMode::Persistent);
        r.remove("/a", WatcherKind::Children);
        assert!(matches!(ready(&mut child), Some(Err(Error::WatchRemoved))));
        assert!(ready(&mut data).is_none());
        r.remove("/a", WatcherKind::Any);
        assert!(matches!(ready(&mut data), Some(Err(Error::WatchRemoved))));
        assert!(matches!(stream.try_recv(), Ok(Err(Error::WatchRemoved))));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn watch_set_forgets_abandoned_watches() {
        let mut r = WatchRegistry::new(8);
        let (tx, kept) = Watcher::channel();
        r.add_one_shot("/kept", OneShotKind::Data, tx, 0);
        let (tx, dropped) = Watcher::channel();
        r.add_one_shot("/dropped", OneShotKind::Child, tx, 0);
        drop(dropped);
        let _stream = r.add_persistent("/p", AddWatchMode::PersistentRecursive);
        drop(r.add_persistent("/gone", AddWatchMode::Persistent));
        let set = r.watch_set();
        assert_eq!(set.data, vec!["/kept".to_string()]);
        assert!(set.child.is_empty() && set.persistent.is_empty());
        assert_eq!(set.persistent_recursive, vec!["/p".to_string()]);
        assert_eq!(set.len(), 2);
        drop(kept);
    }

    #[test]
    fn fail_all_reaches_everyone() {
        let mut r = WatchRegistry::new(8);
        let (tx, mut w) = Watcher::channel();
        r.add_one_shot("/a", OneShotKind::Data, tx, 0);
        let mut s = r.add_persistent("/", AddWatchMode::PersistentRecursive);
        r.fail_all(&Error::SessionExpired);
        assert!(matches!(ready(&mut w), Some(Err(Error::SessionExpired))));
        assert!(matches!(s.try_recv(), Ok(Err(Error::SessionExpired))));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn split_bounds_each_piece() {
        let set = WatchSet {
            data: (0..10).map(|i| format!("/data/{i:04}")).collect(),
            persistent: vec!["/p".into()],
            ..WatchSet::default()
        };
        let total = set.len();
        let pieces = split_watch_set(set, 40);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.iter().map(WatchSet::len).sum::<usize>(), total);
        for p in &pieces {
            let bytes: usize = p
                .data
                .iter()
                .chain(&p.persistent)
                .map(|s| s.len() + 8)
                .sum();
            assert!(bytes <= 40, "{p:?}");
        }
        assert!(split_watch_set(WatchSet::default(), 40).is_empty());
    }
}
