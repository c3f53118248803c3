//! Reconnect pacing: round robin over the servers, with exponential backoff and jitter
//! between full rounds. Pure apart from the random jitter.

use rand::Rng;
use std::time::Duration;

/// First pause after a round in which every server failed.
const BASE_DELAY: Duration = Duration::from_millis(50);

/// Chooses the next server and how long to wait before trying it.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    servers: usize,
    next: usize,
    failures_in_round: usize,
    rounds: u32,
    max_delay: Duration,
}

impl Backoff {
    /// Round robin over `servers` servers starting at `start`, pausing at most
    /// `max_delay` between rounds.
    pub(crate) fn new(servers: usize, start: usize, max_delay: Duration) -> Self {
        let servers = servers.max(1);
        Backoff {
            servers,
            next: start % servers,
            failures_in_round: 0,
            rounds: 0,
            max_delay,
        }
    }

    /// The index of the server to try now; moves on for the next call.
    pub(crate) fn next_server(&mut self) -> usize {
        let index = self.next;
        self.next = (self.next + 1) % self.servers;
        index
    }

    /// Records a failed attempt. Returns the pause to take before the next one: zero
    /// while servers of this round are left, then the backoff of the round, full
    /// jitter over the upper half (`jitter` in `[0, 1)`).
    pub(crate) fn failed(&mut self, jitter: f64) -> Duration {
        self.failures_in_round += 1;
        if self.failures_in_round < self.servers {
            return Duration::ZERO;
        }
        self.failures_in_round = 0;
        let ceiling = self.ceiling();
        self.rounds = self.rounds.saturating_add(1);
        ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// [`failed`](Self::failed) with random jitter.
    pub(crate) fn failed_with_jitter(&mut self) -> Duration {
        let jitter = rand::thread_rng().gen::<f64>();
        self.failed(jitter)
    }

    /// Records a success: the next failure starts a fresh round.
    pub(crate) fn succeeded(&mut self) {
        self.failures_in_round = 0;
        self.rounds = 0;
    }

    fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.rounds.min(16);
        BASE_DELAY.saturating_mul(factor).min(self.max_delay)
    }
}

/// A random start index, so that clients spread over the servers.
pub(crate) fn random_start(servers: usize) -> usize {
    if servers <= 1 {
        0
    } else {
        rand::thread_rng().gen_range(0..servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_wraps() {
        let mut b = Backoff::new(3, 2, Duration::from_secs(1));
        let order: Vec<usize> = (0..5).map(|_| b.next_server()).collect();
        assert_eq!(order, vec![2, 0, 1, 2, 0]);
    }

    #[test]
    fn pauses_only_between_rounds_growing_to_the_cap() {
        let max = Duration::from_millis(300);
        let mut b = Backoff::new(2, 0, max);
        assert_eq!(b.failed(1.0), Duration::ZERO);
        assert_eq!(b.failed(1.0), BASE_DELAY);
        assert_eq!(b.failed(0.0), Duration::ZERO);
        assert_eq!(b.failed(0.0), BASE_DELAY * 2 / 2);
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            b.failed(1.0);
            last = b.failed(1.0);
            assert!(last <= max);
        }
        assert_eq!(last, max);
        b.succeeded();
        b.failed(1.0);
        assert_eq!(b.failed(1.0), BASE_DELAY);
    }

    #[test]
    fn random_start_in_range() {
        for _ in 0..20 {
            assert!(random_start(3) < 3);
        }
        assert_eq!(random_start(0), 0);
    }
}
