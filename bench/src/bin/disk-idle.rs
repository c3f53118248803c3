//! How long one small durable write takes on this machine's disk after the disk (and
//! the machine) sat idle for a while: `pwrite` of 128 bytes into a preallocated file,
//! then `fdatasync`, as corral's log does for one entry (docs/BENCHMARKS.md, "What is
//! left", item 1). Every round visits each idle time once, in order, so a slow minute
//! of the shared disk falls on every idle time alike.
//!
//!   disk-idle [--dir bench/data] [--idle-ms 0,5,15,50,100,200,1000] [--rounds 30]

use clap::Parser;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Latency of one small pwrite + fdatasync after the disk sat idle")]
struct Args {
    /// Directory for the probe file (1 MiB, removed afterwards); put it on the disk
    /// the services' data uses.
    #[arg(long, default_value = "bench/data")]
    dir: PathBuf,
    /// Idle times before a write, ms.
    #[arg(long, value_delimiter = ',', default_value = "0,5,15,50,100,200,1000")]
    idle_ms: Vec<u64>,
    /// Writes per idle time (at least 1).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

const FILE_BYTES: u64 = 1 << 20;
const WRITE_BYTES: usize = 128;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let path = args.dir.join("disk-idle.probe");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    // Written and synced once, so no probe write allocates blocks or changes metadata.
    file.write_all_at(&vec![0; FILE_BYTES as usize], 0)?;
    file.sync_all()?;
    let mut samples_us: Vec<Vec<f64>> =
        vec![Vec::with_capacity(args.rounds as usize); args.idle_ms.len()];
    let mut offset = 0;
    for _ in 0..args.rounds {
        for (i, &idle) in args.idle_ms.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(idle));
            let t0 = Instant::now();
            file.write_all_at(&[1; WRITE_BYTES], offset)?;
            file.sync_data()?;
            samples_us[i].push(t0.elapsed().as_secs_f64() * 1e6);
            offset = (offset + WRITE_BYTES as u64) % FILE_BYTES;
        }
    }
    drop(file);
    std::fs::remove_file(&path)?;
    println!(
        "idle ms | p10 us | p50 us | p90 us | max us  ({} writes each)",
        args.rounds
    );
    for (idle, mut xs) in args.idle_ms.iter().zip(samples_us) {
        xs.sort_by(f64::total_cmp);
        let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
        println!(
            "{idle:7} | {:6.0} | {:6.0} | {:6.0} | {:6.0}",
            at(0.1),
            at(0.5),
            at(0.9),
            at(1.0)
        );
    }
    Ok(())
}
