//! Watches: every client of the `watch` workload holds a persistent recursive watch on
//! the workload's directory and records the events it receives; all of them write.
//! Checked per client: events arrive in zxid order, and between the zxid at which the
//! watch was registered and the zxid the client had reached at the end (after a `sync`
//! and draining its events), every acknowledged write appears, unless the client was
//! told it lagged (a slow reader's events are dropped, and it is told how many).
//! Events for no acknowledged write must match writes whose outcome is unknown.
//!
//! Persistent watches are re-registered after a reconnect (ZooKeeper's `setWatches`
//! semantics) without replaying the changes made while the client was away, and the
//! stream does not say so. Writes missed in such a window (after the zxid the client
//! had seen when it lost its connection, recorded from its state events, up to the
//! first event it received after it was connected again: the node re-registers the
//! watch at its own state, which the client does not see) are counted and reported as
//! "missed across a reconnect", not as violations; a write missed while the client
//! stayed connected is a violation.
//!
//! A node that catches up through a snapshot from the leader (`Decided::Install`) fires
//! the watches from a diff of its old and new state (ZooKeeper's reconnect semantics):
//! one event per changed path, all carrying the installed zxid (the `to` of the
//! `snapshot-install` event recorded from the nodes' logs). So several events may share
//! that zxid, an event's zxid may be no write's own, and the writes of the install's
//! range that the client did not see one by one are "collapsed into a snapshot install"
//! when the client received an event with that install's zxid: counted, not violations.
//!
//! Formerly a known bug (jepsen/README.md, "Findings" 1): writes missed in the range of
//! an install whose event the client never received are still reported as that known
//! bug: a violation in strict mode (`--strict`), a listed finding otherwise.

use super::Check;
use crate::history::{pairs, Event, Kind};
use std::collections::{BTreeMap, BTreeSet};

pub fn check(history: &[Event], workload: &str, strict: bool) -> Check {
    let mut c = Check::new("watch: events in zxid order, none missing");
    // (from, to] zxid ranges that some node installed from a snapshot: zxid = index + 1.
    let installs: Vec<(u64, u64)> = history
        .iter()
        .filter(|e| e.workload == "cluster" && e.f == "snapshot-install")
        .map(|e| (e.value.unwrap_or(0), e.zxid.unwrap_or(0) + 1))
        .collect();
    // The zxids that the events fired by a snapshot install carry.
    let install_zxids: BTreeSet<u64> = installs.iter().map(|(_, b)| b - 1).collect();
    let mut written: BTreeMap<u64, u64> = BTreeMap::new(); // zxid -> event index
    let mut unknown_writes: u64 = 0;
    for p in pairs(history, workload)
        .into_iter()
        .filter(|p| p.invoke.f == "write")
    {
        match (p.outcome(), p.done.and_then(|d| d.zxid)) {
            (Kind::Ok, Some(z)) => {
                written.insert(z, p.invoke.index);
            }
            (Kind::Fail, _) => {}
            _ => unknown_writes += 1,
        }
    }
    c.count("writes ok", written.len() as u64);
    c.count("writes indeterminate", unknown_writes);
    #[derive(Default)]
    struct Client {
        start: Option<u64>,
        end: Option<u64>,
        lagged: bool,
        seen: BTreeSet<u64>,
        /// Zxid seen when the connection was lost, while it is.
        down_since: Option<u64>,
        /// Reconnected after losing the connection at this zxid; no event since.
        reconnected: Option<u64>,
        /// (lost at, reconnected at): changes in between may be missed.
        gaps: Vec<(u64, u64)>,
        last: Option<(u64, u64)>,
    }
    let mut clients: BTreeMap<u64, Client> = BTreeMap::new();
    let mut phantoms: BTreeSet<u64> = BTreeSet::new();
    for e in history
        .iter()
        .filter(|e| e.workload == workload && e.kind == Kind::Event)
    {
        let cl = clients.entry(e.process).or_default();
        match e.f.as_str() {
            "watching" => {
                // A new watch (a new session of this client): only what follows counts.
                cl.start = e.zxid;
                cl.end = None;
                cl.lagged = false;
                cl.down_since = None;
                cl.reconnected = None;
                cl.gaps.clear();
            }
            "watch-end" => {
                cl.end = e.zxid;
                if let Some(down) = cl.reconnected.take().or(cl.down_since.take()) {
                    cl.gaps.push((down, e.zxid.unwrap_or(0)));
                }
            }
            "lagged" => cl.lagged = true,
            "state" => {
                let z = e.zxid.unwrap_or(0);
                if e.error
                    .as_deref()
                    .is_some_and(|s| s.starts_with("connected"))
                {
                    if let Some(down) = cl.down_since.take() {
                        cl.reconnected = Some(down);
                    }
                } else if cl.down_since.is_none() {
                    cl.down_since = Some(cl.reconnected.take().unwrap_or(z));
                }
            }
            "event" => {
                let z = e.zxid.unwrap_or(0);
                c.count("events", 1);
                // The node re-registered the watch at its own state, which the client
                // does not see: up to the first event after the reconnect.
                if let Some(down) = cl.reconnected.take() {
                    cl.gaps.push((down, z.saturating_sub(1)));
                }
                if let Some((last, idx)) = cl.last {
                    // Events fired by one snapshot install share its zxid.
                    if z < last || (z == last && !install_zxids.contains(&z)) {
                        c.fail(format!(
                            "process {}: event {} has zxid {z} after zxid {last} (event {idx})",
                            e.process, e.index
                        ));
                    }
                }
                cl.last = Some((z, e.index));
                cl.seen.insert(z);
                if !written.contains_key(&z) && !install_zxids.contains(&z) {
                    phantoms.insert(z);
                }
            }
            _ => {}
        }
    }
    c.count("watching clients", clients.len() as u64);
    if phantoms.len() as u64 > unknown_writes {
        c.fail(format!(
            "{} zxids seen in events match no acknowledged write and only {unknown_writes} \
             writes are indeterminate (first: {:?})",
            phantoms.len(),
            phantoms.iter().take(5).collect::<Vec<_>>()
        ));
    }
    for (process, cl) in &clients {
        let (Some(start), Some(end)) = (cl.start, cl.end) else {
            c.count("clients without a complete watch", 1);
            continue;
        };
        if cl.lagged {
            c.count("clients that lagged", 1);
            continue;
        }
        let (across, missing): (Vec<u64>, Vec<u64>) = written
            .range(start + 1..=end)
            .map(|(z, _)| *z)
            .filter(|z| !cl.seen.contains(z))
            .partition(|z| cl.gaps.iter().any(|(a, b)| a < z && z <= b));
        if !across.is_empty() {
            c.count("writes missed across a reconnect", across.len() as u64);
            c.notes.push(format!(
                "process {process}: {} writes made while it was reconnecting never reached \
                 its persistent watch (re-registered without replay; the stream does not \
                 say so)",
                across.len()
            ));
        }
        c.count("reconnects", cl.gaps.len() as u64);
        let (in_install, missing): (Vec<u64>, Vec<u64>) = missing
            .into_iter()
            .partition(|z| installs.iter().any(|(a, b)| a < z && z <= b));
        // Seen as part of an install's collapsed events: the client received an event
        // carrying the zxid of an install whose range holds the write.
        let (collapsed, in_install): (Vec<u64>, Vec<u64>) = in_install.into_iter().partition(|z| {
            installs
                .iter()
                .any(|(a, b)| a < z && z <= b && cl.seen.contains(&(b - 1)))
        });
        if !collapsed.is_empty() {
            c.count(
                "writes collapsed into a snapshot install",
                collapsed.len() as u64,
            );
        }
        if !in_install.is_empty() {
            c.known_bug(
                strict,
                format!(
                    "process {process}: {} acknowledged writes never reached its watch; all \
                     lie in the range of a snapshot a node installed from the leader (first \
                     zxids {:?})",
                    in_install.len(),
                    in_install.iter().take(5).collect::<Vec<_>>()
                ),
            );
        }
        if !missing.is_empty() {
            c.fail(format!(
                "process {process}: {} acknowledged writes between zxid {start} and {end} \
                 never reached its watch (first zxids {:?})",
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            ));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Validity;

    fn e(process: u64, kind: Kind, f: &str, zxid: Option<u64>) -> Event {
        let mut e = Event::new(0, process, "watch", kind, f);
        e.zxid = zxid;
        e
    }

    fn base() -> Vec<Event> {
        vec![
            e(1, Kind::Event, "watching", Some(10)),
            e(2, Kind::Invoke, "write", None),
            e(2, Kind::Ok, "write", Some(11)),
            e(2, Kind::Invoke, "write", None),
            e(2, Kind::Ok, "write", Some(12)),
            e(1, Kind::Event, "event", Some(11)),
            e(1, Kind::Event, "event", Some(12)),
            e(1, Kind::Event, "watch-end", Some(12)),
        ]
    }

    #[test]
    fn complete_ordered_events_pass() {
        assert_eq!(check(&base(), "watch", false).valid, Validity::Valid);
    }

    #[test]
    fn missing_reordered_and_phantom_events_are_caught() {
        let mut h = base();
        h.remove(5);
        assert_eq!(check(&h, "watch", false).valid, Validity::Invalid);
        let mut h = base();
        h.swap(5, 6);
        assert_eq!(check(&h, "watch", false).valid, Validity::Invalid);
        let mut h = base();
        h.insert(7, e(1, Kind::Event, "event", Some(13)));
        assert_eq!(check(&h, "watch", false).valid, Validity::Invalid);
        // ... unless an indeterminate write explains it.
        h.push(e(2, Kind::Invoke, "write", None));
        h.push(e(2, Kind::Info, "write", None));
        assert_eq!(check(&h, "watch", false).valid, Validity::Valid);
        // A write missed while the client was reconnecting is counted, not a violation.
        let mut h = base();
        h.remove(5);
        h.insert(1, e(1, Kind::Event, "state", Some(10)));
        h[1].error = Some("disconnected".into());
        // Connected again when the client had seen zxid 10 only: the node re-registered
        // the watch at a state the client does not see, up to its next event (12).
        h.insert(5, e(1, Kind::Event, "state", Some(10)));
        h[5].error = Some("connected to 10.77.0.2:2281".into());
        let c = check(&h, "watch", false);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stats["writes missed across a reconnect"], 1);
        // A write missed inside a snapshot install's range is the known bug: listed,
        // and a violation only in strict mode.
        let mut h = base();
        h.remove(5);
        let mut install = Event::new(0, 0, "cluster", Kind::Event, "snapshot-install");
        install.value = Some(10);
        install.zxid = Some(10);
        h.insert(0, install);
        let c = check(&h, "watch", false);
        assert_eq!(c.valid, Validity::Valid);
        assert_eq!(c.known_bugs.len(), 1);
        assert_eq!(check(&h, "watch", true).valid, Validity::Invalid);
        // Fixed: the install fires collapsed events carrying its zxid (12 here, covering
        // 11 and 12; two events may share it and need not be a write's own zxid).
        let mut h = base();
        h.remove(5);
        let mut install = Event::new(0, 0, "cluster", Kind::Event, "snapshot-install");
        install.value = Some(10);
        install.zxid = Some(12);
        h.insert(0, install);
        // (h: install, watching, 4 write events, event 12, watch-end)
        h.insert(6, e(1, Kind::Event, "event", Some(12)));
        let c = check(&h, "watch", true);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stats["writes collapsed into a snapshot install"], 1);
        let mut h = base();
        h.truncate(5);
        let mut install = Event::new(0, 0, "cluster", Kind::Event, "snapshot-install");
        install.value = Some(10);
        install.zxid = Some(13);
        h.insert(0, install);
        for _ in 0..2 {
            h.push(e(1, Kind::Event, "event", Some(13)));
        }
        h.push(e(1, Kind::Event, "watch-end", Some(13)));
        let c = check(&h, "watch", true);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stats["writes collapsed into a snapshot install"], 2);
        // A client told it lagged is excused for missing events.
        let mut h = base();
        h.remove(5);
        h.push(e(1, Kind::Event, "lagged", None));
        assert_eq!(check(&h, "watch", false).valid, Validity::Valid);
    }
}
