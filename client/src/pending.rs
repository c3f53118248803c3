//! Bookkeeping of requests between submission and answer: xid allocation, the in-flight
//! limit, matching responses, and what to resend after a reconnect. Pure (no IO, no
//! clock), so it is unit tested on its own.

use bytes::Bytes;
use std::collections::BTreeMap;

/// What waits for a request's answer.
pub(crate) trait Waiter {
    /// Whether nobody waits any more (the caller timed out or was cancelled), so the
    /// request need not be resent.
    fn is_abandoned(&self) -> bool;
    /// Whether the request should be resent after a reconnect (pings and watch
    /// re-registrations are not: the new connection makes its own).
    fn resend(&self) -> bool;
}

/// One request awaiting its answer.
#[derive(Debug)]
pub(crate) struct Entry<W> {
    /// The encoded frame, kept to resend it byte for byte (same xid).
    pub frame: Bytes,
    /// Who gets the answer.
    pub waiter: W,
    /// Whether it counts against the in-flight limit (caller requests do; the client's
    /// own pings and watch re-registrations do not).
    pub counted: bool,
}

/// Requests in flight on a session, keyed by xid.
#[derive(Debug)]
pub(crate) struct Pending<W> {
    next_xid: u64,
    max_in_flight: usize,
    counted: usize,
    entries: BTreeMap<u64, Entry<W>>,
}

impl<W: Waiter> Pending<W> {
    /// Bookkeeping for a new session whose first xid is `first_xid`.
    pub(crate) fn new(first_xid: u64, max_in_flight: usize) -> Self {
        Pending {
            next_xid: first_xid,
            max_in_flight,
            counted: 0,
            entries: BTreeMap::new(),
        }
    }

    /// Whether another caller request may be sent now.
    pub(crate) fn has_room(&self) -> bool {
        self.counted < self.max_in_flight
    }

    /// Number of requests awaiting an answer.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The xid the next request gets.
    #[cfg(test)]
    pub(crate) fn next_xid(&self) -> u64 {
        self.next_xid
    }

    /// Allocates the next xid and records the request `encode` builds with it. If
    /// `encode` fails the xid is not used up.
    pub(crate) fn push<E>(
        &mut self,
        waiter: W,
        counted: bool,
        encode: impl FnOnce(u64) -> Result<Bytes, E>,
    ) -> Result<(u64, Bytes), (W, E)> {
        let xid = self.next_xid;
        let frame = match encode(xid) {
            Ok(frame) => frame,
            Err(e) => return Err((waiter, e)),
        };
        self.next_xid += 1;
        if counted {
            self.counted += 1;
        }
        let previous = self.entries.insert(
            xid,
            Entry {
                frame: frame.clone(),
                waiter,
                counted,
            },
        );
        debug_assert!(previous.is_none(), "xid {xid} allocated twice");
        Ok((xid, frame))
    }

    /// Removes and returns the request answered by a response with this xid, or `None`
    /// if no such request waits (it was dropped at a reconnect).
    pub(crate) fn complete(&mut self, xid: u64) -> Option<Entry<W>> {
        let entry = self.entries.remove(&xid)?;
        if entry.counted {
            self.counted -= 1;
        }
        Some(entry)
    }

    /// After resuming the session on a new connection: forgets what need not be resent
    /// and returns the xids and frames to resend, in xid order. `server_next_xid` is the
    /// server's `SessionGranted::next_xid`; new requests get xids above both it and
    /// every xid used so far.
    pub(crate) fn prepare_resend(&mut self, server_next_xid: u64) -> Vec<(u64, Bytes)> {
        self.next_xid = self.next_xid.max(server_next_xid);
        let mut counted = 0;
        self.entries.retain(|_, entry| {
            let keep = entry.waiter.resend() && !entry.waiter.is_abandoned();
            if keep && entry.counted {
                counted += 1;
            }
            keep
        });
        self.counted = counted;
        self.entries
            .iter()
            .map(|(xid, e)| (*xid, e.frame.clone()))
            .collect()
    }

    /// The lowest xid still awaiting an answer, or the next xid if none does: no request
    /// below it will be sent again (it was answered, or forgotten at a reconnect as not
    /// worth resending).
    pub(crate) fn lowest_unanswered(&self) -> u64 {
        self.entries.keys().next().copied().unwrap_or(self.next_xid)
    }

    /// The waiter of the request `xid`, if it is pending.
    pub(crate) fn get(&self, xid: u64) -> Option<&W> {
        self.entries.get(&xid).map(|e| &e.waiter)
    }

    /// Every request's waiter, in xid order.
    pub(crate) fn waiters(&self) -> impl Iterator<Item = &W> {
        self.entries.values().map(|e| &e.waiter)
    }

    /// Removes every request but those `keep` is true for (it may change their
    /// waiters), for failing the waiters it returns.
    pub(crate) fn drain_unless(&mut self, mut keep: impl FnMut(&mut W) -> bool) -> Vec<W> {
        let mut drained = Vec::new();
        for (xid, mut entry) in std::mem::take(&mut self.entries) {
            if keep(&mut entry.waiter) {
                self.entries.insert(xid, entry);
            } else {
                drained.push(entry.waiter);
            }
        }
        self.counted = self.entries.values().filter(|e| e.counted).count();
        drained
    }

    /// Removes every request, for failing their waiters.
    pub(crate) fn drain(&mut self) -> Vec<W> {
        self.counted = 0;
        std::mem::take(&mut self.entries)
            .into_values()
            .map(|e| e.waiter)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[derive(Debug, PartialEq)]
    struct W {
        name: &'static str,
        gone: bool,
        resend: bool,
    }

    fn w(name: &'static str) -> W {
        W {
            name,
            gone: false,
            resend: true,
        }
    }

    impl Waiter for W {
        fn is_abandoned(&self) -> bool {
            self.gone
        }
        fn resend(&self) -> bool {
            self.resend
        }
    }

    fn frame(xid: u64) -> Result<Bytes, Infallible> {
        Ok(Bytes::from(xid.to_be_bytes().to_vec()))
    }

    fn push(p: &mut Pending<W>, waiter: W, counted: bool) -> u64 {
        match p.push(waiter, counted, frame) {
            Ok((xid, _)) => xid,
            Err(_) => unreachable!("infallible"),
        }
    }

    #[test]
    fn xids_increase_and_responses_match() {
        let mut p = Pending::new(7, 10);
        let a = push(&mut p, w("a"), true);
        let b = push(&mut p, w("b"), true);
        assert_eq!((a, b), (7, 8));
        assert_eq!(p.complete(8).map(|e| e.waiter.name), Some("b"));
        assert!(p.complete(8).is_none(), "answered twice");
        assert_eq!(p.complete(7).map(|e| e.waiter.name), Some("a"));
        assert_eq!(p.len(), 0);
        assert_eq!(p.next_xid(), 9);
    }

    #[test]
    fn drain_unless_keeps_what_it_is_told_and_counts_it() {
        let mut p = Pending::new(1, 2);
        push(&mut p, w("a"), true);
        push(&mut p, w("keep"), true);
        assert!(!p.has_room());
        let drained = p.drain_unless(|w| {
            w.gone = true;
            w.name == "keep"
        });
        assert_eq!(drained.iter().map(|w| w.name).collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            p.waiters().map(|w| (w.name, w.gone)).collect::<Vec<_>>(),
            [("keep", true)]
        );
        assert!(p.has_room(), "one counted request left of two");
        push(&mut p, w("b"), true);
        assert!(!p.has_room());
    }

    #[test]
    fn failed_encoding_does_not_use_the_xid() {
        let mut p = Pending::new(1, 10);
        let r = p.push(w("x"), true, |_| Err::<Bytes, _>("too large"));
        assert!(matches!(r, Err((W { name: "x", .. }, "too large"))));
        assert_eq!(p.next_xid(), 1);
        assert!(p.has_room());
        assert_eq!(push(&mut p, w("y"), true), 1);
    }

    #[test]
    fn limit_counts_only_caller_requests() {
        let mut p = Pending::new(1, 2);
        push(&mut p, w("a"), true);
        push(&mut p, w("ping"), false);
        assert!(p.has_room());
        let b = push(&mut p, w("b"), true);
        assert!(!p.has_room());
        p.complete(b);
        assert!(p.has_room());
    }

    #[test]
    fn resend_keeps_xids_and_order_and_drops_the_rest() {
        let mut p = Pending::new(1, 10);
        push(&mut p, w("a"), true);
        push(
            &mut p,
            W {
                name: "ping",
                gone: false,
                resend: false,
            },
            false,
        );
        push(
            &mut p,
            W {
                name: "timed out",
                gone: true,
                resend: true,
            },
            true,
        );
        push(&mut p, w("d"), true);
        let frames = p.prepare_resend(3);
        assert_eq!(
            frames,
            vec![
                (1, frame(1).unwrap_or_default()),
                (4, frame(4).unwrap_or_default())
            ]
        );
        assert_eq!(p.len(), 2);
        // New requests continue above what was used, whatever the server says.
        assert_eq!(p.next_xid(), 5);
        assert_eq!(push(&mut p, w("e"), true), 5);
        // ...and above the server's next_xid if it is ahead.
        p.prepare_resend(100);
        assert_eq!(push(&mut p, w("f"), true), 100);
        assert_eq!(p.drain().len(), 4);
        assert!(p.has_room());
    }

    #[test]
    fn the_lowest_unanswered_xid_moves_with_answers_and_resends() {
        let mut p = Pending::new(5, 10);
        assert_eq!(p.lowest_unanswered(), 5, "nothing in flight: the next xid");
        push(&mut p, w("a"), true);
        push(&mut p, w("b"), true);
        push(
            &mut p,
            W {
                name: "timed out",
                gone: true,
                resend: true,
            },
            true,
        );
        push(&mut p, w("d"), true);
        assert_eq!(p.lowest_unanswered(), 5);
        p.complete(6);
        assert_eq!(p.lowest_unanswered(), 5, "5 still waits");
        p.complete(5);
        assert_eq!(
            p.lowest_unanswered(),
            7,
            "the abandoned 7 waits until a reconnect"
        );
        p.prepare_resend(1);
        assert_eq!(p.lowest_unanswered(), 8, "7 is never sent again");
        p.complete(8);
        assert_eq!(p.lowest_unanswered(), 9);
    }
}
