//! Deterministic simulation of a corral cluster: see `corral_server::sim`.

use corral_server::sim::{self, Report, SimConfig};

fn configure(seed: u64) -> SimConfig {
    let mut c = SimConfig::from_seed(seed);
    c.skip_faults = sim::skip_from_env();
    c
}

fn fail(test: &str, report: &Report) -> ! {
    let (config, shrunk) = sim::shrink(&report.config, report, 30);
    let _ = config;
    panic!(
        "{}\n--- shrunk ---\n{}",
        report.describe(test),
        shrunk.describe(test)
    );
}

/// The seeds CI runs (`CORRAL_SIM_SEEDS` / `CORRAL_SIM_SEED` override).
#[test]
fn sim_seeds() {
    let seeds = sim::seeds_from_env(1, 20);
    let started = std::time::Instant::now();
    for seed in &seeds {
        let r = sim::run(&configure(*seed));
        eprintln!(
            "seed {seed}: {} events, {} sim ms, {} entries, {} acked, {} ops {}, {} ms",
            r.stats.events,
            r.stats.sim_ms,
            r.stats.entries,
            r.stats.acked,
            r.stats.ops,
            r.stats.linearizability,
            r.stats.wall_ms
        );
        if r.failed() {
            fail("sim_seeds", &r);
        }
    }
    eprintln!(
        "{} seeds in {:?} ({:.1} seeds/s)",
        seeds.len(),
        started.elapsed(),
        seeds.len() as f64 / started.elapsed().as_secs_f64()
    );
}
