//! Watches: every client of the `watch` workload holds a persistent recursive watch on
//! the workload's directory and records the events it receives; all of them write.
//! Checked per watch session (from a client's `watching` event to its `watch-end`, or
//! to its next `watching`): events arrive in zxid order, and every acknowledged write
//! with a zxid after the one at which the watch was registered and up to the zxid the
//! client had reached at the end (after a `sync` and draining its events) appears. A
//! session that did not reach its `watch-end` (its stream ended, its session expired)
//! is checked up to the last event it received: events come in zxid order, so a write
//! below that one was skipped. Events for no acknowledged write must each match an
//! indeterminate write of the same key invoked before the event. A check that compared
//! no session at all is "unknown".
//!
//! Excuses (counted, not violations):
//!
//! - A real `Lagged` error (a slow reader's events were dropped and it was told so)
//!   excuses the writes after the last event received before it and before the first
//!   event received after it: the dropped ones. Other stream errors excuse nothing; they
//!   end the session's window at the last event received.
//! - Persistent watches are re-registered after a reconnect (ZooKeeper's `setWatches`
//!   semantics) without replaying the changes made while the client was away, and the
//!   stream says so once the watch is back: `WatchResumed { since_zxid, until_zxid }`,
//!   recorded as a `resumed` event. A write may be missed across a reconnect ("told")
//!   only if its zxid is in such a range: after the zxid the client had seen, and at or
//!   below the server's when it answered the re-registration (every later change fires).
//!   A reconnect whose `resumed` never came (the stream ended first, or nothing changed
//!   meanwhile) falls back to the rule from before the marker ("untold"): a write's zxid
//!   after the one the client had seen when it lost its connection (its `state`
//!   events), below the zxid of the first event received after it was connected again,
//!   and the write invoked at most [`REREGISTER_NS`] after the client's `connected`
//!   state event. A write invoked later must be seen, even if no event ever comes again
//!   (a watch that was not re-registered).
//! - A node that catches up through a snapshot from the leader (`Decided::Install`,
//!   `snapshot-install` events from the nodes' logs: entries `(from, to]`, zxid = log
//!   index) fires the watches from a diff of its old and new state: one event per
//!   changed path, all carrying the installed zxid `to`. So several events may share
//!   that zxid and it may be no write's own. A missed write with zxid `z` is "collapsed
//!   into a snapshot install" only if some install on node `N` has `from < z <= to`, the
//!   client was connected to `N` when the install was logged (its `state` events: the
//!   worker records the state at `watching` and every change), and the client received
//!   an event with zxid `to` for the write's own key (the collapsed event of that path).
//!
//! Formerly a known bug (jepsen/README.md, "Findings" 1): other writes missed in the
//! range of an install are still reported as that known bug: a violation in strict
//! mode (`--strict`), a listed finding otherwise.

use super::{Check, Validity};
use crate::history::{pairs, Event, Kind};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How long after the client reports itself connected its watches may still be
/// unregistered on the server, in nanoseconds: `corral-client` publishes the
/// `Connected` state and then sends `SetWatches` (pipelined, answered within a round
/// trip), so a write invoked just after the `connected` event can still be applied
/// before the watch is back (seen in a CI run, seed 10355072: 2 ms after).
pub const REREGISTER_NS: u64 = 1_000_000_000;

/// The node (`10.77.0.<i>` is node i) of a state event's text, if it is
/// "connected to ADDR".
fn connected_node(state: &str) -> Option<Option<u64>> {
    let addr = state.strip_prefix("connected to ")?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    Some(host.strip_prefix("10.77.0.").and_then(|i| i.parse().ok()))
}

/// The last component of a path (the key of the `watch` workload).
fn key_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// One watch session of a client.
#[derive(Default)]
struct Session {
    start: u64,
    end: Option<u64>,
    /// Stream ended by an error that is not a lag: compared up to the last event.
    cut: bool,
    /// zxid -> keys of the events received with it.
    seen: BTreeMap<u64, BTreeSet<String>>,
    last: Option<(u64, u64)>,
    /// `conn.len()` when the last event arrived (a change since: another connection).
    conn_at_last: usize,
    /// (time, node) of each connection change: `Some(node)` when connected to it
    /// (`Some(None)`: connected, node not known), `None` when not connected.
    conn: Vec<(u64, Option<Option<u64>>)>,
    /// Zxid seen when the connection was lost, while it is.
    down_since: Option<u64>,
    /// (zxid seen when the connection was lost, time of the `connected` event, zxid of
    /// the first event received after it, whether a `resumed` event told its range).
    gaps: Vec<(u64, u64, Option<u64>, bool)>,
    /// The `(since, until]` zxid ranges of the `resumed` events: may have fired nothing.
    resumed: Vec<(u64, u64)>,
    /// A real lag: (last zxid received before it, first received after it).
    lags: Vec<(u64, Option<u64>)>,
    lagged_open: bool,
}

impl Session {
    fn last_zxid(&self) -> u64 {
        self.last.map_or(self.start, |(z, _)| z)
    }

    /// The node the client was connected to at `time`, if known.
    fn node_at(&self, time: u64) -> Option<u64> {
        self.conn
            .iter()
            .rev()
            .find(|(t, _)| *t <= time)
            .and_then(|(_, n)| *n)
            .flatten()
    }
}

pub fn check(history: &[Event], workload: &str, strict: bool) -> Check {
    let mut c = Check::new("watch: events in zxid order, none missing");
    // (time, node, from, to): entries (from, to] installed from a snapshot.
    let installs: Vec<(u64, Option<u64>, u64, u64)> = history
        .iter()
        .filter(|e| e.workload == "cluster" && e.f == "snapshot-install")
        .filter_map(|e| {
            let node = e
                .key
                .as_deref()
                .and_then(|k| k.strip_prefix('n'))
                .and_then(|n| n.parse().ok());
            Some((e.time, node, e.value?, e.zxid?))
        })
        .collect();
    // The zxids that the events fired by a snapshot install carry.
    let install_zxids: BTreeSet<u64> = installs.iter().map(|i| i.3).collect();
    // zxid -> (invoke time, key) of acknowledged writes.
    let mut written: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    // key -> invoke times of indeterminate writes.
    let mut unknown_writes: HashMap<String, Vec<u64>> = HashMap::new();
    let mut unknown_count = 0u64;
    for p in pairs(history, workload)
        .into_iter()
        .filter(|p| p.invoke.f == "write")
    {
        let key = p.invoke.key.clone().unwrap_or_default();
        match (p.outcome(), p.done.and_then(|d| d.zxid)) {
            (Kind::Ok, Some(z)) => {
                written.insert(z, (p.invoke.time, key));
            }
            (Kind::Fail, _) => {}
            _ => {
                unknown_count += 1;
                unknown_writes.entry(key).or_default().push(p.invoke.time);
            }
        }
    }
    c.count("writes ok", written.len() as u64);
    c.count("writes indeterminate", unknown_count);
    let mut clients: BTreeMap<u64, Vec<Session>> = BTreeMap::new();
    // zxid -> (earliest time received, key) of events for no acknowledged write.
    let mut phantoms: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    // Events whose path is not the one their zxid changed.
    let mut wrong_path: Vec<String> = Vec::new();
    for e in history
        .iter()
        .filter(|e| e.workload == workload && e.kind == Kind::Event)
    {
        let sessions = clients.entry(e.process).or_default();
        if e.f == "watching" {
            // A new watch (a new session of this client): only what follows counts.
            sessions.push(Session {
                start: e.zxid.unwrap_or(0),
                ..Session::default()
            });
            continue;
        }
        let Some(s) = sessions.last_mut() else {
            continue;
        };
        if s.end.is_some() {
            continue;
        }
        match e.f.as_str() {
            "watch-end" => s.end = Some(e.zxid.unwrap_or(0)),
            "lagged" => {
                let real = e
                    .error
                    .as_deref()
                    .is_some_and(|t| t.starts_with("watch stream lagged"));
                if real {
                    s.lags.push((s.last_zxid(), None));
                    s.lagged_open = true;
                } else {
                    s.cut = true;
                }
            }
            "state" => {
                let text = e.error.as_deref().unwrap_or("");
                match connected_node(text) {
                    Some(node) => {
                        if let Some(down) = s.down_since.take() {
                            s.gaps.push((down, e.time, None, false));
                        }
                        s.conn.push((e.time, Some(node)));
                    }
                    None => {
                        if s.down_since.is_none() {
                            s.down_since = Some(e.zxid.unwrap_or(0));
                        }
                        s.conn.push((e.time, None));
                    }
                }
            }
            "resumed" => {
                s.resumed.push((e.value.unwrap_or(0), e.zxid.unwrap_or(0)));
                if let Some(gap) = s.gaps.last_mut() {
                    gap.3 = true;
                }
            }
            "event" => {
                let z = e.zxid.unwrap_or(0);
                let key = key_of(e.path.as_deref().unwrap_or("")).to_string();
                c.count("events", 1);
                if s.cut {
                    continue;
                }
                if let Some((last, idx)) = s.last {
                    // Events fired by one snapshot install share its zxid, one per
                    // changed node: the same node twice at that zxid on one connection
                    // is a duplicate.
                    let repeated = z == last
                        && s.seen.get(&z).is_some_and(|keys| keys.contains(&key))
                        && s.conn.len() == s.conn_at_last;
                    if z < last || (z == last && !install_zxids.contains(&z)) {
                        c.fail(format!(
                            "process {}: event {} has zxid {z} after zxid {last} (event {idx})",
                            e.process, e.index
                        ));
                    } else if repeated {
                        c.fail(format!(
                            "process {}: event {} repeats the event of {key} at zxid {z} \
                             (event {idx} or before) on the same connection",
                            e.process, e.index
                        ));
                    }
                }
                s.conn_at_last = s.conn.len();
                if let Some(gap) = s.gaps.last_mut().filter(|g| g.2.is_none()) {
                    gap.2 = Some(z);
                }
                if s.lagged_open {
                    s.lagged_open = false;
                    if let Some(l) = s.lags.last_mut() {
                        l.1 = Some(z);
                    }
                }
                s.last = Some((z, e.index));
                if !install_zxids.contains(&z) {
                    match written.get(&z) {
                        // The write of that zxid changed another node: this event
                        // reports a change that did not happen (and is not that write's).
                        Some((_, k)) if *k != key => wrong_path.push(format!(
                            "process {}: event {} names {key} at zxid {z}, but the write of \
                             zxid {z} was of {k}",
                            e.process, e.index
                        )),
                        Some(_) => {}
                        None => {
                            let p = phantoms.entry(z).or_insert((e.time, key.clone()));
                            p.0 = p.0.min(e.time);
                            if p.1 != key {
                                wrong_path.push(format!(
                                    "process {}: event {} names {key} at zxid {z}, another \
                                     client's event of zxid {z} names {}",
                                    e.process, e.index, p.1
                                ));
                            }
                        }
                    }
                }
                s.seen.entry(z).or_default().insert(key);
            }
            _ => {}
        }
    }
    c.count(
        "events naming another path than their zxid's write",
        wrong_path.len() as u64,
    );
    for w in wrong_path.iter().take(5) {
        c.fail(w.clone());
    }
    if wrong_path.len() > 5 {
        c.fail(format!("... and {} more such events", wrong_path.len() - 5));
    }
    c.count("watching clients", clients.len() as u64);
    // Each phantom zxid needs its own indeterminate write of its key, invoked before the
    // event. Per key the candidates of a later event include those of an earlier one, so
    // taking them in event order (any candidate) finds a matching if there is one.
    let mut by_time: Vec<(u64, u64, String)> =
        phantoms.into_iter().map(|(z, (t, k))| (t, z, k)).collect();
    by_time.sort();
    let mut unmatched = Vec::new();
    for (t, z, k) in by_time {
        let candidates = unknown_writes.entry(k.clone()).or_default();
        match candidates.iter().position(|inv| *inv <= t) {
            Some(i) => {
                candidates.swap_remove(i);
            }
            None => unmatched.push((z, k)),
        }
    }
    if !unmatched.is_empty() {
        c.fail(format!(
            "{} zxids seen in events match no acknowledged write nor an indeterminate write \
             of their key invoked before them (first: {:?})",
            unmatched.len(),
            unmatched.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let mut checked = 0u64;
    for (process, sessions) in &clients {
        for s in sessions {
            let upper = match s.end {
                Some(end) if !s.cut => end,
                _ => {
                    c.count("watch sessions without a watch-end", 1);
                    s.last_zxid()
                }
            };
            if !s.lags.is_empty() {
                c.count("watch sessions that lagged", 1);
            }
            c.count("reconnects", s.gaps.len() as u64);
            if upper <= s.start {
                continue;
            }
            checked += 1;
            check_window(&mut c, *process, s, upper, &written, &installs, strict);
        }
    }
    c.count("watch sessions checked", checked);
    if checked == 0 && c.valid == Validity::Valid {
        c.valid = Validity::Unknown;
        c.notes
            .push("no watch session had a zxid range to compare: nothing was checked".into());
    }
    c
}

/// Compares one session's events with the acknowledged writes of `(start, upper]`.
fn check_window(
    c: &mut Check,
    process: u64,
    s: &Session,
    upper: u64,
    written: &BTreeMap<u64, (u64, String)>,
    installs: &[(u64, Option<u64>, u64, u64)],
    strict: bool,
) {
    let start = s.start;
    let missed: Vec<(u64, u64, &str)> = written
        .range(start + 1..=upper)
        // Seen only if an event of this zxid named the write's own node.
        .filter(|(z, (_, k))| !s.seen.get(z).is_some_and(|keys| keys.contains(k)))
        .map(|(z, (t, k))| (*z, *t, k.as_str()))
        .collect();
    let (lagged, missed): (Vec<_>, Vec<_>) = missed.into_iter().partition(|(z, _, _)| {
        s.lags
            .iter()
            .any(|(a, b)| *a < *z && b.is_none_or(|b| *z < b))
    });
    if !lagged.is_empty() {
        c.count("writes dropped by a lag", lagged.len() as u64);
    }
    let (told, missed): (Vec<_>, Vec<_>) = missed.into_iter().partition(|(z, _, _)| {
        s.resumed
            .iter()
            .any(|(since, until)| since < z && z <= until)
    });
    if !told.is_empty() {
        c.count("writes missed across a reconnect, told", told.len() as u64);
    }
    let (untold, missed): (Vec<_>, Vec<_>) = missed.into_iter().partition(|(z, t, _)| {
        s.gaps.iter().any(|(down, up, first, told)| {
            !told && down < z && *t <= up + REREGISTER_NS && first.is_none_or(|f| *z < f)
        }) || s.down_since.is_some_and(|down| down < *z)
    });
    if !untold.is_empty() {
        c.count(
            "writes missed across a reconnect, untold",
            untold.len() as u64,
        );
        c.notes.push(format!(
            "process {process}: {} writes made while it was reconnecting never reached its \
             persistent watch, and no `resumed` covered them (the stream ended first)",
            untold.len()
        ));
    }
    let (collapsed, missed): (Vec<_>, Vec<_>) = missed.into_iter().partition(|(z, _, k)| {
        installs.iter().any(|(t, node, from, to)| {
            from < z
                && z <= to
                && node.is_some()
                && s.node_at(*t) == *node
                && s.seen.get(to).is_some_and(|keys| keys.contains(*k))
        })
    });
    if !collapsed.is_empty() {
        c.count(
            "writes collapsed into a snapshot install",
            collapsed.len() as u64,
        );
    }
    let (in_install, missing): (Vec<_>, Vec<_>) = missed
        .into_iter()
        .partition(|(z, _, _)| installs.iter().any(|(_, _, from, to)| from < z && z <= to));
    if !in_install.is_empty() {
        c.known_bug(
            strict,
            format!(
                "process {process}: {} acknowledged writes never reached its watch; all lie in \
                 the range of a snapshot a node installed from the leader (first zxids {:?})",
                in_install.len(),
                in_install.iter().take(5).map(|m| m.0).collect::<Vec<_>>()
            ),
        );
    }
    if !missing.is_empty() {
        c.fail(format!(
            "process {process}: {} acknowledged writes between zxid {start} and {upper} never \
             reached its watch (first zxids {:?})",
            missing.len(),
            missing.iter().take(5).map(|m| m.0).collect::<Vec<_>>()
        ));
    }
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
        assert_eq!(c.stats["writes missed across a reconnect, untold"], 1);
        // A write missed inside a snapshot install's range is the known bug: listed,
        // and a violation only in strict mode.
        let mut h = base();
        h.remove(5);
        let mut install = Event::new(0, 0, "cluster", Kind::Event, "snapshot-install");
        install.value = Some(10);
        install.zxid = Some(11);
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
        install.key = Some("n2".into());
        h.insert(0, install);
        // (h: install, watching, 4 write events, event 12, watch-end)
        // (Another node's event: one install fires one event per changed node.)
        h.insert(6, e(1, Kind::Event, "event", Some(12)));
        h[6].path = Some("/jepsen/watch/x".into());
        // Without knowing the client was connected to n2: not excused.
        assert_eq!(check(&h, "watch", true).valid, Validity::Invalid);
        let mut connected = e(1, Kind::Event, "state", Some(10));
        connected.error = Some("connected to 10.77.0.2:2281".into());
        h.insert(2, connected);
        let c = check(&h, "watch", true);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stats["writes collapsed into a snapshot install"], 1);
        let mut h = base();
        h.truncate(5);
        let mut install = Event::new(0, 0, "cluster", Kind::Event, "snapshot-install");
        install.value = Some(10);
        install.zxid = Some(13);
        install.key = Some("n2".into());
        h.insert(0, install);
        let mut connected = e(1, Kind::Event, "state", Some(10));
        connected.error = Some("connected to 10.77.0.2:2281".into());
        h.insert(2, connected);
        for path in [None, Some("/jepsen/watch/x".to_string())] {
            h.push(e(1, Kind::Event, "event", Some(13)));
            h.last_mut().expect("pushed").path = path;
        }
        h.push(e(1, Kind::Event, "watch-end", Some(13)));
        let c = check(&h, "watch", true);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stats["writes collapsed into a snapshot install"], 2);
        // A client told it lagged (before the event of 11, after nothing) is excused for
        // missing it.
        let mut h = base();
        h[5] = e(1, Kind::Event, "lagged", None);
        h[5].error = Some("watch stream lagged: 1 events were dropped".into());
        let c = check(&h, "watch", false);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stats["writes dropped by a lag"], 1);
    }
}

#[cfg(test)]
mod review_regressions {
    use super::*;
    use crate::checker::Validity;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn number(mut h: Vec<Event>) -> Vec<Event> {
        for (i, e) in h.iter_mut().enumerate() {
            e.index = i as u64;
        }
        h
    }

    fn ev(time: u64, process: u64, kind: Kind, f: &str) -> Event {
        Event::new(time, process, "watch", kind, f)
    }

    fn zx(mut e: Event, z: u64) -> Event {
        e.zxid = Some(z);
        e
    }

    fn watching(time: u64, process: u64, z: u64) -> Event {
        zx(ev(time, process, Kind::Event, "watching"), z)
    }

    fn state(time: u64, process: u64, z: u64, text: &str) -> Event {
        let mut e = zx(ev(time, process, Kind::Event, "state"), z);
        e.error = Some(text.into());
        e
    }

    fn end(time: u64, process: u64, z: u64) -> Event {
        zx(ev(time, process, Kind::Event, "watch-end"), z)
    }

    /// A write of `key` invoked at `time`: acknowledged with zxid `z`, or indeterminate.
    fn write(time: u64, process: u64, key: &str, z: Option<u64>) -> Vec<Event> {
        let mut inv = ev(time, process, Kind::Invoke, "write");
        inv.key = Some(key.into());
        let mut done = ev(
            time + MS,
            process,
            if z.is_some() { Kind::Ok } else { Kind::Info },
            "write",
        );
        done.key = Some(key.into());
        done.zxid = z;
        vec![inv, done]
    }

    fn event(time: u64, process: u64, key: &str, z: u64) -> Event {
        let mut e = zx(ev(time, process, Kind::Event, "event"), z);
        e.path = Some(format!("/jepsen/watch/{key}"));
        e
    }

    fn install(time: u64, node: &str, from: u64, to: u64) -> Event {
        let mut e = Event::new(time, 0, "cluster", Kind::Event, "snapshot-install");
        e.key = Some(node.into());
        e.value = Some(from);
        e.zxid = Some(to);
        e
    }

    fn verdict(h: Vec<Event>) -> Check {
        check(&number(h), "watch", true)
    }

    #[test]
    fn an_install_range_ends_at_its_to_zxid() {
        // Install (10, 12] on n2, the client connected to n2 and given the collapsed
        // event of k1 at 12; the write of 13 (k2) is outside the range and never arrives.
        let mut h = vec![
            watching(0, 1, 10),
            state(0, 1, 10, "connected to 10.77.0.2:2281"),
            install(2 * S + 500 * MS, "n2", 10, 12),
        ];
        h.extend(write(S, 2, "k1", Some(11)));
        h.extend(write(2 * S, 2, "k1", Some(12)));
        h.extend(write(3 * S, 2, "k2", Some(13)));
        h.push(event(2 * S + 600 * MS, 1, "k1", 12));
        h.push(end(5 * S, 1, 13));
        let c = verdict(h.clone());
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("[13]"), "{c:?}");
        // With 13 received, 11 is collapsed into the install: valid.
        h.insert(h.len() - 1, event(3 * S + 2 * MS, 1, "k2", 13));
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("writes collapsed into a snapshot install"), 1);
    }

    #[test]
    fn an_install_excuses_a_missed_write_only_on_the_clients_node_and_with_its_keys_event() {
        // 11 (k0) is lost; 12 (k1) arrives; n2 installs (10, 12].
        let h = |node: &str, conn: &str, key_at_12: &str| {
            let mut h = vec![
                watching(0, 1, 10),
                state(MS, 1, 10, conn),
                install(3 * S, node, 10, 12),
            ];
            h.extend(write(S, 2, "k0", Some(11)));
            h.extend(write(2 * S, 2, "k1", Some(12)));
            h.push(event(3 * S + MS, 1, key_at_12, 12));
            h.push(end(5 * S, 1, 12));
            verdict(h)
        };
        // Connected to n1, the install was on n2: the known bug (strict: invalid).
        assert_eq!(
            h("n2", "connected to 10.77.0.1:2281", "k1").valid,
            Validity::Invalid
        );
        // On n2, but the event at 12 is k1's, not k0's: not k0's collapsed event.
        assert_eq!(
            h("n2", "connected to 10.77.0.2:2281", "k1").valid,
            Validity::Invalid
        );
        // On n2 and k0's collapsed event at 12: excused. (k1 has no event of its own at
        // 12 here, so it is missing: add it.)
        let mut hist = vec![
            watching(0, 1, 10),
            state(MS, 1, 10, "connected to 10.77.0.2:2281"),
            install(3 * S, "n2", 10, 12),
        ];
        hist.extend(write(S, 2, "k0", Some(11)));
        hist.extend(write(2 * S, 2, "k1", Some(12)));
        hist.push(event(3 * S + MS, 1, "k0", 12));
        hist.push(event(3 * S + 2 * MS, 1, "k1", 12));
        hist.push(end(5 * S, 1, 12));
        let c = verdict(hist);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("writes collapsed into a snapshot install"), 1);
    }

    /// A reconnect at once, then 10 writes invoked seconds later while connected, none
    /// seen (the watch was not re-registered): violations. Writes invoked before the
    /// `connected` event are excused.
    #[test]
    fn writes_invoked_after_the_reconnect_must_be_seen() {
        let mut h = vec![
            watching(0, 1, 10),
            state(0, 1, 10, "connected to 10.77.0.1:2281"),
            state(S, 1, 10, "disconnected"),
        ];
        h.extend(write(S + 10 * MS, 2, "k0", Some(11)));
        h.push(state(S + 100 * MS, 1, 10, "connected to 10.77.0.2:2281"));
        for i in 0..10u64 {
            h.extend(write((3 + i) * S, 2, "k0", Some(12 + i)));
        }
        h.push(end(20 * S, 1, 21));
        let c = verdict(h.clone());
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert_eq!(c.stat("writes missed across a reconnect, untold"), 1);
        assert!(
            c.problems.join(" ").contains("10 acknowledged writes"),
            "{c:?}"
        );
        // With the 10 events: valid, 11 missed across the reconnect.
        let n = h.len();
        for i in 0..10u64 {
            h.insert(
                n - 1 + i as usize,
                event((3 + i) * S + 2 * MS, 1, "k0", 12 + i),
            );
        }
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("writes missed across a reconnect, untold"), 1);
    }

    /// CI run, seed 10355072: `connected` at 34.0708 s, a write invoked 2 ms later
    /// (zxid 14454) missed, the first event after the reconnect 14466: `SetWatches` is
    /// sent after the client reports itself connected. Excused; a write above the first
    /// event after the reconnect is not.
    #[test]
    fn a_write_just_after_the_connected_event_and_below_the_next_event_may_be_missed() {
        let mut h = vec![
            watching(0, 15, 14400),
            state(0, 15, 14400, "connected to 10.77.0.3:2281"),
            state(33 * S, 15, 14440, "disconnected"),
            state(34 * S + 70 * MS, 15, 14444, "connected to 10.77.0.1:2281"),
        ];
        h.extend(write(34 * S + 73 * MS, 14, "k2", Some(14454)));
        h.extend(write(34 * S + 90 * MS, 14, "k1", Some(14466)));
        h.extend(write(34 * S + 95 * MS, 14, "k0", Some(14470)));
        h.push(event(34 * S + 93 * MS, 15, "k1", 14466));
        let mut ok = h.clone();
        ok.push(event(34 * S + 97 * MS, 15, "k0", 14470));
        ok.push(end(40 * S, 15, 14470));
        let c = verdict(ok);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("writes missed across a reconnect, untold"), 1);
        h.push(end(40 * S, 15, 14470));
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("[14470]"), "{c:?}");
    }

    fn resumed(time: u64, process: u64, since: u64, until: u64) -> Event {
        let mut e = zx(ev(time, process, Kind::Event, "resumed"), until);
        e.value = Some(since);
        e
    }

    /// A reconnect whose stream read `resumed` (10, 12]: the writes of 11 and 12 may be
    /// missed whenever they were invoked; 13, above the range, must be seen even though
    /// it was invoked right after the `connected` event (the time rule is only for
    /// reconnects nobody told of).
    #[test]
    fn a_resumed_range_excuses_exactly_its_zxids() {
        let mut h = vec![
            watching(0, 1, 10),
            state(0, 1, 10, "connected to 10.77.0.1:2281"),
            state(S, 1, 10, "disconnected"),
            state(2 * S, 1, 10, "connected to 10.77.0.2:2281"),
        ];
        h.extend(write(S + MS, 2, "k0", Some(11)));
        h.extend(write(2 * S + 5 * MS, 2, "k1", Some(12)));
        h.extend(write(2 * S + 6 * MS, 2, "k2", Some(13)));
        h.push(resumed(2 * S + 10 * MS, 1, 10, 12));
        h.extend(write(5 * S, 2, "k0", Some(14)));
        h.push(event(5 * S + 2 * MS, 1, "k0", 14));
        h.push(end(6 * S, 1, 14));
        let c = verdict(h.clone());
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("[13]"), "{c:?}");
        assert_eq!(c.stat("writes missed across a reconnect, told"), 2);
        // With 13 received: valid, 11 and 12 told, nothing left to the time rule.
        let at = h.len() - 3;
        h.insert(at, event(2 * S + 12 * MS, 1, "k2", 13));
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("writes missed across a reconnect, told"), 2);
        assert_eq!(c.stat("writes missed across a reconnect, untold"), 0);
    }

    #[test]
    fn a_watch_check_that_compared_nothing_is_unknown() {
        let mut h = vec![watching(0, 1, 10)];
        h.extend(write(S, 2, "k0", Some(11)));
        let mut ended = ev(3 * S, 1, Kind::Event, "lagged");
        ended.error = Some("the watch stream ended".into());
        h.push(ended);
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Unknown, "{c:?}");
        assert_eq!(c.stat("watch sessions checked"), 0);
    }

    #[test]
    fn only_a_real_lag_excuses_and_only_the_writes_it_dropped() {
        let base = || {
            let mut h = vec![watching(0, 3, 10)];
            h.extend(write(S, 2, "k0", Some(11)));
            h.extend(write(2 * S, 2, "k0", Some(12)));
            h.extend(write(3 * S, 2, "k0", Some(13)));
            h.push(event(S + 2 * MS, 3, "k0", 11));
            h
        };
        // A stream error that is not a lag excuses nothing: 12 was missed before it
        // and 13, received, shows the window reached it.
        let mut h = base();
        h.push(event(3 * S + 2 * MS, 3, "k0", 13));
        let mut err = ev(4 * S, 3, Kind::Event, "lagged");
        err.error = Some("connection lost".into());
        h.push(err);
        h.push(end(5 * S, 3, 13));
        assert_eq!(verdict(h).valid, Validity::Invalid);
        // A real lag after 11 excuses 12 (dropped; 13 came after it).
        let mut h = base();
        let mut lag = ev(2 * S + 500 * MS, 3, Kind::Event, "lagged");
        lag.error = Some("watch stream lagged: 1 events were dropped".into());
        h.push(lag);
        h.push(event(3 * S + 2 * MS, 3, "k0", 13));
        h.push(end(5 * S, 3, 13));
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("writes dropped by a lag"), 1);
        // A lag does not excuse a write before the last event received before it.
        let mut h = vec![watching(0, 3, 10)];
        h.extend(write(S, 2, "k0", Some(11)));
        h.extend(write(2 * S, 2, "k0", Some(12)));
        h.push(event(2 * S + 2 * MS, 3, "k0", 12));
        let mut lag = ev(2 * S + 500 * MS, 3, Kind::Event, "lagged");
        lag.error = Some("watch stream lagged: 1 events were dropped".into());
        h.push(lag);
        h.push(end(5 * S, 3, 12));
        assert_eq!(verdict(h).valid, Validity::Invalid);
    }

    #[test]
    fn every_watch_session_of_a_client_is_checked() {
        // Session 1 misses 11 and its stream ends; session 2 is complete.
        let mut h = vec![watching(0, 1, 10)];
        h.extend(write(S, 2, "k0", Some(11)));
        h.extend(write(2 * S, 2, "k0", Some(12)));
        h.push(event(2 * S + 2 * MS, 1, "k0", 12));
        let mut gone = ev(2 * S + 3 * MS, 1, Kind::Event, "lagged");
        gone.error = Some("session expired; create a new client".into());
        h.push(gone);
        h.push(watching(3 * S, 1, 12));
        h.extend(write(4 * S, 2, "k0", Some(13)));
        h.push(event(4 * S + 2 * MS, 1, "k0", 13));
        h.push(end(5 * S, 1, 13));
        let c = verdict(h);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert_eq!(c.stat("watch sessions checked"), 2);
    }

    #[test]
    fn a_phantom_event_needs_an_indeterminate_write_of_its_key_invoked_before_it() {
        let with = |key: &str, invoked: u64| {
            let mut h = vec![watching(0, 1, 10)];
            h.extend(write(S, 2, "k0", Some(11)));
            h.push(event(S + 2 * MS, 1, "k0", 11));
            h.extend(write(invoked, 2, "k1", None));
            h.push(event(2 * S, 1, key, 12));
            h.push(end(5 * S, 1, 12));
            verdict(h)
        };
        assert_eq!(with("k1", S + 500 * MS).valid, Validity::Valid);
        // Invoked after the event.
        assert_eq!(with("k1", 4 * S).valid, Validity::Invalid);
        // Another key.
        assert_eq!(
            with("nobody-wrote-this", S + 500 * MS).valid,
            Validity::Invalid
        );
    }
}

/// One history per anomaly the watch checker exists to catch, each next to the same
/// history without it.
#[cfg(test)]
mod anomaly_tests {
    use super::*;
    use crate::checker::Validity;

    const MS: u64 = 1_000_000;

    fn ev(time: u64, process: u64, kind: Kind, f: &str, z: Option<u64>) -> Event {
        let mut e = Event::new(time * MS, process, "watch", kind, f);
        e.zxid = z;
        e
    }

    /// Writes of k0 (zxid 11), k1 (12), k2 (13) by process 2; `info` makes the k1
    /// write indeterminate.
    fn writes(info: bool) -> Vec<Event> {
        let mut h = Vec::new();
        for (i, key) in ["k0", "k1", "k2"].iter().enumerate() {
            let t = 10 * (i as u64 + 1);
            let mut inv = ev(t, 2, Kind::Invoke, "write", None);
            inv.key = Some(key.to_string());
            let z = 11 + i as u64;
            let mut done = if info && i == 1 {
                ev(t + 1, 2, Kind::Info, "write", None)
            } else {
                ev(t + 1, 2, Kind::Ok, "write", Some(z))
            };
            done.key = Some(key.to_string());
            h.push(inv);
            h.push(done);
        }
        h
    }

    fn event(time: u64, key: &str, z: u64) -> Event {
        let mut e = ev(time, 1, Kind::Event, "event", Some(z));
        e.path = Some(format!("/jepsen/watch/{key}"));
        e
    }

    /// Client 1 watches from zxid 10 to 13 and receives `events` (key, zxid).
    fn session(events: &[(&str, u64)], info: bool) -> Check {
        let mut h = vec![ev(0, 1, Kind::Event, "watching", Some(10))];
        h.extend(writes(info));
        for (i, (k, z)) in events.iter().enumerate() {
            h.push(event(40 + i as u64, k, *z));
        }
        h.push(ev(60, 1, Kind::Event, "watch-end", Some(13)));
        for (i, e) in h.iter_mut().enumerate() {
            e.index = i as u64;
        }
        check(&h, "watch", true)
    }

    const ALL: [(&str, u64); 3] = [("k0", 11), ("k1", 12), ("k2", 13)];

    #[test]
    fn every_event_once_in_order_passes() {
        let c = session(&ALL, false);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
    }

    #[test]
    fn a_missed_event_is_caught() {
        let c = session(&[("k0", 11), ("k2", 13)], false);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("[12]"), "{c:?}");
    }

    #[test]
    fn a_duplicated_event_is_caught_next_to_the_original_or_later() {
        let c = session(&[("k0", 11), ("k1", 12), ("k1", 12), ("k2", 13)], false);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        let c = session(&[("k0", 11), ("k1", 12), ("k2", 13), ("k1", 12)], false);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
    }

    #[test]
    fn events_out_of_zxid_order_are_caught() {
        let c = session(&[("k0", 11), ("k2", 13), ("k1", 12)], false);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("after zxid 13"), "{c:?}");
    }

    /// Before the fix, an event was matched to a write by zxid alone: an event naming
    /// another node than the one its zxid's write changed was accepted, and counted as
    /// the delivery of that write.
    #[test]
    fn an_event_with_the_right_zxid_and_the_wrong_path_is_caught() {
        let c = session(&[("k0", 11), ("k0", 12), ("k2", 13)], false);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        let text = c.problems.join(" ");
        assert!(text.contains("was of k1"), "{text}");
        // And the write of k1 at 12 was never delivered.
        assert!(text.contains("[12]"), "{text}");
    }

    #[test]
    fn an_event_of_a_change_nobody_made_is_caught() {
        let c = session(&[("k0", 11), ("k1", 12), ("k2", 13), ("k0", 14)], false);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
    }

    #[test]
    fn indeterminate_writes_may_be_seen_or_not_but_excuse_no_other_write() {
        // The k1 write is indeterminate: it may have applied (seen at 12) or not.
        assert_eq!(session(&ALL, true).valid, Validity::Valid);
        assert_eq!(
            session(&[("k0", 11), ("k2", 13)], true).valid,
            Validity::Valid
        );
        // It does not excuse the acknowledged k2 write missing, nor stand in for an
        // event of another node.
        assert_eq!(
            session(&[("k0", 11), ("k1", 12)], true).valid,
            Validity::Invalid
        );
        assert_eq!(
            session(&[("k0", 11), ("k0", 12), ("k2", 13)], true).valid,
            Validity::Invalid
        );
    }

    /// Events of one snapshot install share its zxid, one per changed node; the same
    /// node twice at that zxid on one connection was accepted before the fix.
    #[test]
    fn a_duplicated_event_at_a_snapshot_installs_zxid_is_caught() {
        let run = |events: &[(&str, u64)], reconnect_between: bool| {
            let mut h = vec![ev(0, 1, Kind::Event, "watching", Some(10))];
            let mut conn = ev(0, 1, Kind::Event, "state", Some(10));
            conn.error = Some("connected to 10.77.0.2:2281".into());
            h.push(conn);
            h.extend(writes(false));
            let mut install = Event::new(35 * MS, 0, "cluster", Kind::Event, "snapshot-install");
            (install.key, install.value, install.zxid) = (Some("n2".into()), Some(10), Some(13));
            h.push(install);
            for (i, (k, z)) in events.iter().enumerate() {
                if reconnect_between && i == events.len() - 1 {
                    let mut down = ev(40 + i as u64, 1, Kind::Event, "state", Some(13));
                    down.error = Some("disconnected".into());
                    let mut up = down.clone();
                    up.error = Some("connected to 10.77.0.2:2281".into());
                    h.push(down);
                    h.push(up);
                }
                h.push(event(41 + i as u64, k, *z));
            }
            h.push(ev(60, 1, Kind::Event, "watch-end", Some(13)));
            for (i, e) in h.iter_mut().enumerate() {
                e.index = i as u64;
            }
            check(&h, "watch", true)
        };
        // The install collapsed 11..13 into one event per node at 13.
        let all = [("k0", 13), ("k1", 13), ("k2", 13)];
        let c = run(&all, false);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        let c = run(&[("k0", 13), ("k1", 13), ("k2", 13), ("k1", 13)], false);
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join(" ").contains("repeats"), "{c:?}");
        // After a reconnect, the watch re-registered: not judged a duplicate.
        let c = run(&[("k0", 13), ("k1", 13), ("k2", 13), ("k1", 13)], true);
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
    }
}
