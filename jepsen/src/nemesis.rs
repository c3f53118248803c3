//! Nemeses and their schedule.
//!
//! Each enabled family gets its own timeline of on/off intervals, drawn from the seed
//! before the run starts and offset from the other families' (staggered, as Jepsen
//! composes nemeses): a fault starts, lasts 4-10 s, stops, and the family rests 3-8 s
//! times (families - 1) before the next one, so that one or two faults are in force at
//! a time on average. Which variant a start picks (which half, which node) is drawn
//! from the same seeded generator at that moment; the leader it may target depends on
//! the run, so a replay repeats the schedule, not every packet.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// A nemesis family (`--nemesis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// Network partitions: random halves, the leader isolated, a majorities ring, a
    /// bridge.
    Partition,
    /// Random packet loss between nodes (iptables `statistic`).
    Loss,
    /// `kill -9` of one node, a minority or all nodes (restarted when the fault stops);
    /// with the session workload also of one client.
    Kill,
    /// SIGSTOP of one node or the leader, or of a client holding a lock, for longer than
    /// the TTL; SIGCONT when the fault stops.
    Pause,
    /// Clock offset (wall clock) or rate (both clocks) of one node, through the
    /// server's test-only clock hook.
    Clock,
}

impl Family {
    pub fn parse(name: &str) -> Result<Family, String> {
        Ok(match name {
            "partition" => Family::Partition,
            "loss" => Family::Loss,
            "kill" => Family::Kill,
            "pause" => Family::Pause,
            "clock" => Family::Clock,
            other => {
                return Err(format!(
                    "unknown nemesis {other:?} (partition, loss, kill, pause, clock, all, none)"
                ))
            }
        })
    }

    pub fn all() -> Vec<Family> {
        vec![
            Family::Partition,
            Family::Loss,
            Family::Kill,
            Family::Pause,
            Family::Clock,
        ]
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Partition => "partition",
            Family::Loss => "loss",
            Family::Kill => "kill",
            Family::Pause => "pause",
            Family::Clock => "clock",
        }
    }
}

/// One scheduled step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// From the start of the run.
    pub at: Duration,
    pub family: Family,
    pub start: bool,
}

/// The schedule of a run: faults between `first` and `until`, then nothing.
pub fn schedule(families: &[Family], seed: u64, first: Duration, until: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e656d65_73697321);
    let mut steps = Vec::new();
    for (i, family) in families.iter().enumerate() {
        let mut t = first + Duration::from_millis(1_500 * i as u64 + rng.gen_range(0..1_000));
        let mut faults = 0;
        while t < until && faults < 10_000 {
            faults += 1;
            let on = Duration::from_millis(rng.gen_range(4_000..10_000));
            let end = (t + on).min(until);
            steps.push(Step {
                at: t,
                family: *family,
                start: true,
            });
            steps.push(Step {
                at: end,
                family: *family,
                start: false,
            });
            // Rest longer when more families take turns, so that about one or two
            // faults are in force at a time and the cluster is available between them.
            let rest = rng.gen_range(3_000..8_000) * (families.len().max(2) as u64 - 1);
            t = end + Duration::from_millis(rest);
        }
    }
    steps.sort_by_key(|s| (s.at, !s.start as u8, s.family));
    steps
}

/// Links to cut for a partition of nodes `1..=n`, and a description.
pub fn partition_links(
    n: usize,
    variant: usize,
    leader: Option<usize>,
    rng: &mut StdRng,
) -> (Vec<(usize, usize)>, String) {
    if n < 2 {
        return (Vec::new(), "a single node: nothing to partition".into());
    }
    let mut nodes: Vec<usize> = (1..=n).collect();
    nodes.shuffle(rng);
    let cut_between = |a: &[usize], b: &[usize]| {
        let mut links = Vec::new();
        for x in a {
            for y in b {
                links.push((*x, *y));
            }
        }
        links
    };
    match variant % 4 {
        0 => {
            let (a, b) = nodes.split_at(n / 2);
            (cut_between(a, b), format!("halves {a:?} | {b:?}"))
        }
        1 => {
            let l = leader.unwrap_or(nodes[0]);
            let rest: Vec<usize> = (1..=n).filter(|x| *x != l).collect();
            (
                cut_between(&[l], &rest),
                format!(
                    "isolate {}node {l}",
                    if leader.is_some() { "leader " } else { "" }
                ),
            )
        }
        2 => {
            // Each node keeps its neighbours on a shuffled ring: every node sees a
            // majority, but no two majorities are the same (for 3 nodes: one link cut).
            let mut links = Vec::new();
            if n <= 3 {
                links.push((nodes[0], nodes[1]));
            } else {
                for i in 0..n {
                    for j in i + 1..n {
                        let d = (j - i).min(n - (j - i));
                        if d > 1 {
                            links.push((nodes[i], nodes[j]));
                        }
                    }
                }
            }
            (links, format!("majorities ring {nodes:?}"))
        }
        _ => {
            // Two sides that only one node (the bridge) can reach.
            let bridge = nodes[0];
            let rest = &nodes[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            (
                cut_between(a, b),
                format!("bridge {bridge} between {a:?} and {b:?}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_replayable_staggered_and_bounded() {
        let fams = Family::all();
        let a = schedule(&fams, 7, Duration::from_secs(3), Duration::from_secs(60));
        let b = schedule(&fams, 7, Duration::from_secs(3), Duration::from_secs(60));
        assert_eq!(a, b);
        assert!(!a.is_empty());
        assert!(a.iter().all(|s| s.at <= Duration::from_secs(60)));
        for f in &fams {
            let mine: Vec<&Step> = a.iter().filter(|s| s.family == *f).collect();
            // Alternating start / stop, ending stopped.
            for (i, s) in mine.iter().enumerate() {
                assert_eq!(s.start, i % 2 == 0, "{f:?}");
            }
            assert!(!mine.last().is_some_and(|s| s.start));
        }
        let firsts: Vec<Duration> = fams
            .iter()
            .filter_map(|f| a.iter().find(|s| s.family == *f).map(|s| s.at))
            .collect();
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert_eq!(
            distinct.len(),
            firsts.len(),
            "families start at different times"
        );
    }

    #[test]
    fn partitions_cut_what_they_say() {
        let mut rng = StdRng::seed_from_u64(1);
        let (links, _) = partition_links(5, 1, Some(3), &mut rng);
        assert_eq!(links.len(), 4);
        assert!(links.iter().all(|(a, _)| *a == 3));
        let (links, _) = partition_links(5, 0, None, &mut rng);
        assert_eq!(links.len(), 6);
        // Ring of 5: each node loses its two non-neighbours; 5 links.
        let (links, _) = partition_links(5, 2, None, &mut rng);
        assert_eq!(links.len(), 5);
        let (links, _) = partition_links(5, 3, None, &mut rng);
        assert_eq!(links.len(), 4);
        let (links, _) = partition_links(3, 3, None, &mut rng);
        assert_eq!(links.len(), 1);
        for variant in 0..4 {
            assert!(partition_links(1, variant, Some(1), &mut rng).0.is_empty());
        }
    }
}
