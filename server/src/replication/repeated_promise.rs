//! One log sync per promise: a leader drops a follower's repeated `Promise` while the
//! `AcceptSync` that answered it is on its way.
//!
//! A follower in the prepare phase resends its cached `Promise` every resend timeout
//! (OmniPaxos 0.2.4, `resend_messages_follower`) until an `AcceptSync` moves it to the
//! accept phase, and a leader in the accept phase answers every `Promise` with a new
//! `AcceptSync` (`handle_promise_accept`). A sync that takes longer than the timeout to
//! reach the follower (a catch-up's snapshot: 117 MB took 0.4 s to encode and as long to
//! decode, with a resend timeout of 1 s) was therefore sent twice, and the follower
//! stored, decoded and installed the whole state twice.
//!
//! The first `AcceptSync` is still on the way as long as the outbound link to the
//! follower has stayed up since it was produced: the transport delivers a prefix of
//! each link's messages, and any loss ends the link. So a `Promise` equal to the one
//! that sync answered (same ballot, same accepted round and indexes), arriving while
//! that link is up and before the leader asked the follower to promise again, is a
//! resend, and is dropped before OmniPaxos sees it. Dropping it is what a lost message
//! does, and OmniPaxos's state is what the first one left. In case a sync is lost without
//! the link ending (outside the transport's contract), only [`MAX_DROPS`] repeats are
//! dropped; the next one is answered as before.

use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg, Promise};
use omnipaxos::messages::Message;
use std::collections::BTreeMap;

use crate::machine::Entry;

/// Repeats of one answered promise dropped at most (about as many resend timeouts).
pub(super) const MAX_DROPS: u32 = 3;

/// What identifies a promise across resends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PromiseKey {
    n: Ballot,
    n_accepted: Ballot,
    decided_idx: usize,
    accepted_idx: usize,
}

impl PromiseKey {
    fn of(p: &Promise<Entry>) -> PromiseKey {
        PromiseKey {
            n: p.n,
            n_accepted: p.n_accepted,
            decided_idx: p.decided_idx,
            accepted_idx: p.accepted_idx,
        }
    }
}

/// The promises of each peer this node last handed to OmniPaxos and answered.
#[derive(Debug, Default)]
pub(super) struct RepeatedPromises {
    /// The last promise of each peer handed to OmniPaxos.
    received: BTreeMap<u64, PromiseKey>,
    /// Per peer, the promise an `AcceptSync` in flight answered, and the repeats
    /// dropped since.
    answered: BTreeMap<u64, (PromiseKey, u32)>,
}

impl RepeatedPromises {
    /// Whether `msg` from `from` goes to OmniPaxos (`false`: a repeated promise whose
    /// answer is on its way).
    pub(super) fn admit(&mut self, from: u64, msg: &Message<Entry>) -> bool {
        let Message::SequencePaxos(PaxosMessage { msg, .. }) = msg else {
            return true;
        };
        let p = match msg {
            PaxosMsg::Promise(p) => p,
            PaxosMsg::PrepareReq(_) => {
                // OmniPaxos forgets this follower's promise at once and asks for a new
                // one: whatever promise comes next answers that, even one the follower
                // sent before it saw the new `Prepare` (which `sent` notes only when it
                // is flushed). Dropped as a repeat, it left the leader waiting for a
                // promise the follower, already accepting in that ballot, never sends
                // again: the follower was never synced (soak seed 25139883).
                self.answered.remove(&from);
                return true;
            }
            _ => return true,
        };
        let key = PromiseKey::of(p);
        if let Some((answered, drops)) = self.answered.get_mut(&from) {
            if *answered == key && *drops < MAX_DROPS {
                *drops += 1;
                tracing::info!(
                    from,
                    accepted_idx = key.accepted_idx,
                    "dropped a follower's repeated promise: its log sync is on its way"
                );
                return false;
            }
        }
        self.answered.remove(&from);
        self.received.insert(from, key);
        true
    }

    /// Notes a message OmniPaxos produced that will be sent on the current link to its
    /// receiver.
    pub(super) fn sent(&mut self, msg: &Message<Entry>) {
        let Message::SequencePaxos(PaxosMessage { to, msg, .. }) = msg else {
            return;
        };
        match msg {
            PaxosMsg::AcceptSync(sync) => {
                if let Some(key) = self.received.get(to).filter(|k| k.n == sync.n) {
                    self.answered.insert(*to, (*key, 0));
                }
            }
            // The leader asks for a new promise: whatever comes next answers it.
            PaxosMsg::Prepare(_) => {
                self.answered.remove(to);
            }
            _ => {}
        }
    }

    /// The outbound link to `peer` ended or was re-established: what was sent on it may
    /// be lost.
    pub(super) fn link_changed(&mut self, peer: u64) {
        self.answered.remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnipaxos::messages::sequence_paxos::{AcceptSync, Prepare};
    use omnipaxos::util::{LogSync, SequenceNumber};

    fn ballot(n: u32, pid: u64) -> Ballot {
        Ballot {
            config_id: 0,
            n,
            priority: 0,
            pid,
        }
    }

    fn promise(n: Ballot, accepted_idx: usize) -> Message<Entry> {
        Message::SequencePaxos(PaxosMessage {
            from: 2,
            to: 1,
            msg: PaxosMsg::Promise(Promise {
                n,
                n_accepted: ballot(1, 3),
                decided_idx: accepted_idx,
                accepted_idx,
                log_sync: None,
            }),
        })
    }

    /// A message of leader 1 to follower 2.
    fn to_follower(msg: PaxosMsg<Entry>) -> Message<Entry> {
        Message::SequencePaxos(PaxosMessage {
            from: 1,
            to: 2,
            msg,
        })
    }

    fn accept_sync(n: Ballot) -> Message<Entry> {
        to_follower(PaxosMsg::AcceptSync(AcceptSync {
            n,
            seq_num: SequenceNumber::default(),
            decided_idx: 10,
            log_sync: LogSync {
                decided_snapshot: None,
                suffix: Vec::new(),
                sync_idx: 10,
                stopsign: None,
            },
        }))
    }

    fn prepare(n: Ballot) -> Message<Entry> {
        to_follower(PaxosMsg::Prepare(Prepare {
            n,
            decided_idx: 10,
            n_accepted: n,
            accepted_idx: 10,
        }))
    }

    #[test]
    fn a_resent_promise_is_dropped_while_its_sync_is_on_its_way() {
        let n = ballot(2, 1);
        let mut r = RepeatedPromises::default();
        assert!(r.admit(2, &promise(n, 5)));
        r.sent(&accept_sync(n));
        for _ in 0..MAX_DROPS {
            assert!(!r.admit(2, &promise(n, 5)), "a repeat is dropped");
        }
        // Outside the transport's contract the sync may be lost: the next repeat passes.
        assert!(r.admit(2, &promise(n, 5)));
    }

    #[test]
    fn a_promise_that_differs_or_comes_after_a_new_link_or_prepare_passes() {
        let n = ballot(2, 1);
        let mut r = RepeatedPromises::default();
        // Not answered yet (the leader is still preparing): every promise passes.
        assert!(r.admit(2, &promise(n, 5)));
        assert!(r.admit(2, &promise(n, 5)));
        r.sent(&accept_sync(n));
        assert!(r.admit(2, &promise(n, 6)), "a different promise");
        r.sent(&accept_sync(n));
        r.link_changed(2);
        assert!(
            r.admit(2, &promise(n, 6)),
            "the sync may be lost with the link"
        );
        r.sent(&accept_sync(n));
        r.sent(&prepare(n));
        assert!(r.admit(2, &promise(n, 6)), "the answer to a new prepare");
        // A sync of another ballot answers nothing this peer promised.
        r.sent(&accept_sync(ballot(3, 1)));
        assert!(r.admit(2, &promise(n, 6)));
    }

    /// A follower's `PrepareReq` makes OmniPaxos forget its promise and prepare it again
    /// at once, before that `Prepare` is flushed: a promise arriving after it, even one
    /// equal to the answered one (the follower sent it before it saw the new prepare), is
    /// the leader's only way to count the follower again, and passes. It used to be
    /// dropped, and a follower already accepting in that ballot ignores a prepare of it:
    /// the leader prepared it for ever and never synced it (soak seed 25139883).
    #[test]
    fn a_promise_after_the_followers_prepare_request_passes() {
        let n = ballot(2, 1);
        let mut r = RepeatedPromises::default();
        assert!(r.admit(2, &promise(n, 5)));
        r.sent(&accept_sync(n));
        let prepare_req = Message::SequencePaxos(PaxosMessage {
            from: 2,
            to: 1,
            msg: PaxosMsg::PrepareReq(omnipaxos::messages::sequence_paxos::PrepareReq { n }),
        });
        assert!(r.admit(2, &prepare_req));
        assert!(r.admit(2, &promise(n, 5)), "counted again");
    }
}
