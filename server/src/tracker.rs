//! Session expiry tracking: which sessions have been silent for longer than their TTL.
//!
//! Only the node that decides expiry (the single node, or the leader in a cluster) acts
//! on this; expiry itself is a replicated entry. Time is a monotonic millisecond count
//! passed in by the caller, so the tracker is deterministic. A node that starts (or
//! becomes leader, or wakes from a stall) restarts every deadline at full TTL, as etcd's
//! lessor does on promotion: it cannot know when the clients last spoke to anyone else.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy)]
struct Tracked {
    ttl_ms: u64,
    deadline_ms: u64,
}

/// Deadlines of live sessions.
#[derive(Debug, Default)]
pub struct SessionTracker {
    sessions: BTreeMap<u64, Tracked>,
    /// Sessions whose expiry was proposed and not applied yet: not proposed twice.
    expiring: BTreeSet<u64>,
    /// No session that is tracked and not expiring has a deadline before this. A lower
    /// bound: deadlines only move later, except for a new session's, which lowers it.
    /// So `take_expired`, called every tick, passes over the sessions only once one may
    /// have expired, not on every tick.
    earliest_ms: u64,
}

impl SessionTracker {
    /// Starts tracking a session with a full TTL from `now_ms`.
    pub fn add(&mut self, session: u64, ttl_ms: u64, now_ms: u64) {
        let deadline_ms = now_ms.saturating_add(ttl_ms);
        self.sessions.insert(
            session,
            Tracked {
                ttl_ms,
                deadline_ms,
            },
        );
        self.earliest_ms = self.earliest_ms.min(deadline_ms);
    }

    /// The client spoke: its session lives at least a TTL from now.
    pub fn touch(&mut self, session: u64, now_ms: u64) {
        if let Some(t) = self.sessions.get_mut(&session) {
            t.deadline_ms = t.deadline_ms.max(now_ms.saturating_add(t.ttl_ms));
        }
    }

    /// The session ended (closed or expired by an applied entry).
    pub fn remove(&mut self, session: u64) {
        self.sessions.remove(&session);
        self.expiring.remove(&session);
    }

    /// Restarts every deadline at full TTL from `now_ms` and forgets proposed expiries
    /// that were not applied (they may have been lost with a leadership change).
    pub fn restart_all(&mut self, now_ms: u64) {
        self.restart_deadlines(now_ms);
        self.expiring.clear();
    }

    /// Restarts every deadline at full TTL from `now_ms`, keeping the proposed expiries:
    /// after a stall of a node that still decides expiry, the expiries it proposed are
    /// still ahead in its log and will apply, so their sessions must stay expiring (no
    /// keepalive acknowledged, no resume accepted for them meanwhile).
    pub fn restart_deadlines(&mut self, now_ms: u64) {
        self.earliest_ms = u64::MAX;
        for t in self.sessions.values_mut() {
            t.deadline_ms = now_ms.saturating_add(t.ttl_ms);
            self.earliest_ms = self.earliest_ms.min(t.deadline_ms);
        }
    }

    /// Sessions past their deadline and not already being expired, in id order; they are
    /// marked as expiring.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<u64> {
        if now_ms < self.earliest_ms {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut earliest_ms = u64::MAX;
        for (id, t) in &self.sessions {
            if self.expiring.contains(id) {
                continue;
            }
            if t.deadline_ms <= now_ms {
                expired.push(*id);
            } else {
                earliest_ms = earliest_ms.min(t.deadline_ms);
            }
        }
        self.earliest_ms = earliest_ms;
        self.expiring.extend(expired.iter().copied());
        expired
    }

    /// Whether the session's expiry was proposed.
    pub fn is_expiring(&self, session: u64) -> bool {
        self.expiring.contains(&session)
    }

    /// Number of tracked sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_only_silent_sessions_once() {
        let mut t = SessionTracker::default();
        t.add(1, 100, 0);
        t.add(2, 100, 0);
        t.touch(2, 50);
        assert!(t.take_expired(99).is_empty());
        assert_eq!(t.take_expired(100), vec![1]);
        assert!(t.take_expired(120).is_empty(), "1 is already expiring");
        assert_eq!(t.take_expired(150), vec![2]);
        t.remove(1);
        assert!(!t.is_expiring(1));
        assert!(t.is_expiring(2));
    }

    #[test]
    fn restart_gives_full_ttl_and_forgets_proposals() {
        let mut t = SessionTracker::default();
        t.add(1, 100, 0);
        assert_eq!(t.take_expired(500), vec![1]);
        t.restart_all(500);
        assert!(!t.is_expiring(1));
        assert!(t.take_expired(599).is_empty());
        assert_eq!(t.take_expired(600), vec![1]);
    }

    /// The scan-skipping bound must never hide an expiry: random adds, touches,
    /// removals and restarts, checked against a tracker that always scans. Prints its
    /// seed; replay with `CORRAL_TRACKER_SEED`.
    #[test]
    fn skipping_scans_never_misses_an_expiry() {
        let seed: u64 = std::env::var("CORRAL_TRACKER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x7ac6e5);
        println!("CORRAL_TRACKER_SEED={seed}");
        let mut rng = seed;
        let mut next = move |n: u64| {
            // xorshift64*
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        };
        let mut fast = SessionTracker::default();
        let mut slow: BTreeMap<u64, Tracked> = BTreeMap::new();
        let mut slow_expiring: BTreeSet<u64> = BTreeSet::new();
        let mut now = 0;
        let mut next_id = 0;
        for step in 0..4_000 {
            now += next(20);
            // Session ids are never reused.
            let id = next(next_id + 1);
            match next(100) {
                0..=29 => {
                    next_id += 1;
                    let ttl_ms = 50 + next(200);
                    fast.add(next_id, ttl_ms, now);
                    let deadline_ms = now + ttl_ms;
                    slow.insert(
                        next_id,
                        Tracked {
                            ttl_ms,
                            deadline_ms,
                        },
                    );
                }
                30..=59 => {
                    fast.touch(id, now);
                    if let Some(t) = slow.get_mut(&id) {
                        t.deadline_ms = t.deadline_ms.max(now + t.ttl_ms);
                    }
                }
                60..=89 => {
                    // The expiry of an expiring session applies (else any session ends).
                    let gone = slow_expiring.first().copied().unwrap_or(id);
                    fast.remove(gone);
                    slow.remove(&gone);
                    slow_expiring.remove(&gone);
                }
                98 => {
                    fast.restart_deadlines(now);
                    for t in slow.values_mut() {
                        t.deadline_ms = now + t.ttl_ms;
                    }
                }
                99 => {
                    fast.restart_all(now);
                    for t in slow.values_mut() {
                        t.deadline_ms = now + t.ttl_ms;
                    }
                    slow_expiring.clear();
                }
                _ => {}
            }
            let expected: Vec<u64> = slow
                .iter()
                .filter(|(id, t)| t.deadline_ms <= now && !slow_expiring.contains(id))
                .map(|(id, _)| *id)
                .collect();
            slow_expiring.extend(expected.iter().copied());
            assert_eq!(fast.take_expired(now), expected, "seed {seed}, step {step}");
        }
    }

    #[test]
    fn restarting_deadlines_keeps_proposed_expiries() {
        let mut t = SessionTracker::default();
        t.add(1, 100, 0);
        t.add(2, 100, 0);
        t.touch(2, 50);
        assert_eq!(t.take_expired(120), vec![1]);
        t.restart_deadlines(500);
        assert!(t.is_expiring(1), "its expiry is still in the log");
        assert!(t.take_expired(599).is_empty());
        assert_eq!(t.take_expired(600), vec![2], "1 is not proposed twice");
    }

    #[test]
    fn touch_never_shortens_a_deadline() {
        let mut t = SessionTracker::default();
        t.add(1, 100, 1000);
        t.touch(1, 10);
        assert!(t.take_expired(1099).is_empty());
    }
}
