//! Summaries, ratios, the table, `results.json`, `results.md` and the plots.

use crate::stats::{median, Dist};
use crate::targets::{Kind, Target};
use crate::workloads::RunOutcome;
use crate::BoxError;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a cell's headline number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Operations per second (higher is better).
    Throughput,
    /// Latency, ms (lower is better).
    Latency,
}

/// One run of one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub rep: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunRecord {
    pub fn new(rep: usize, result: Result<RunOutcome, BoxError>) -> Self {
        match result {
            Ok(o) => RunRecord {
                rep,
                outcome: Some(o),
                error: None,
            },
            Err(e) => RunRecord {
                rep,
                outcome: None,
                error: Some(e.to_string()),
            },
        }
    }

    /// One line for the progress output.
    pub fn brief(&self, metric: Metric) -> String {
        let Some(o) = &self.outcome else {
            return format!("FAILED: {}", self.error.as_deref().unwrap_or("?"));
        };
        let l = &o.latency;
        let mut s = match (metric, o.ops_per_s) {
            (Metric::Throughput, Some(r)) => format!(
                "{r:.0}/s, p50 {:.2} p99 {:.2} max {:.1} ms",
                l.p50_ms, l.p99_ms, l.max_ms
            ),
            _ if l.n == 1 => format!("{:.0} ms", l.p50_ms),
            _ => format!(
                "p50 {:.2} p99 {:.2} max {:.1} ms (n={})",
                l.p50_ms, l.p99_ms, l.max_ms, l.n
            ),
        };
        if let Some(cpu) = o.server_cpu_ms_per_op {
            let _ = write!(
                s,
                ", cpu/op server {cpu:.3} ms client {:.3} ms",
                o.client_cpu_ms_per_op.unwrap_or(0.0)
            );
        }
        if o.errors > 0 {
            let e: String = o
                .first_error
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect();
            let _ = write!(s, " [{} errors: {e}]", o.errors);
        }
        if let Some(n) = &o.note {
            let _ = write!(s, " [{n}]");
        }
        s
    }
}

/// The medians over a target's runs of one cell.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub runs_ok: usize,
    pub runs_failed: usize,
    pub ops_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Every run's samples pooled.
    pub pooled: Dist,
    pub errors: u64,
    /// Median server CPU ms per operation (closed-loop workloads).
    pub server_cpu_ms_per_op: Option<f64>,
    /// Median driver (client) CPU ms per operation.
    pub client_cpu_ms_per_op: Option<f64>,
}

/// corral's advantage over a peer: > 1 means corral did better (more operations per
/// second, or a lower median latency). Computed per repetition, from runs made in the
/// same round, and the median of those.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub per_run: Vec<f64>,
    pub median: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCell {
    pub summary: Summary,
    pub runs: Vec<RunRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellReport {
    pub workload: &'static str,
    pub label: String,
    pub metric: Metric,
    pub clients: Option<usize>,
    pub locks: Option<usize>,
    pub targets: BTreeMap<Kind, TargetCell>,
    /// corral vs each peer.
    pub corral_vs: BTreeMap<Kind, Ratio>,
}

fn headline(metric: Metric, o: &RunOutcome) -> Option<f64> {
    match metric {
        Metric::Throughput => o.ops_per_s.filter(|&r| r > 0.0),
        Metric::Latency => (o.latency.n > 0).then_some(o.latency.p50_ms),
    }
}

impl CellReport {
    pub fn new(
        workload: &'static str,
        label: String,
        metric: Metric,
        clients: Option<usize>,
        locks: Option<usize>,
        runs: BTreeMap<Kind, Vec<RunRecord>>,
    ) -> Self {
        let mut targets = BTreeMap::new();
        for (kind, runs) in &runs {
            let ok: Vec<&RunOutcome> = runs.iter().filter_map(|r| r.outcome.as_ref()).collect();
            let of = |f: fn(&RunOutcome) -> Option<f64>| -> Option<f64> {
                median(&ok.iter().filter_map(|o| f(o)).collect::<Vec<_>>())
            };
            let has_latency = ok.iter().any(|o| o.latency.n > 0);
            let mut pooled = Vec::new();
            for o in &ok {
                pooled.extend_from_slice(&o.samples_ms);
            }
            let summary = Summary {
                runs_ok: ok.len(),
                runs_failed: runs.len() - ok.len(),
                ops_per_s: of(|o| o.ops_per_s),
                p50_ms: has_latency
                    .then(|| of(|o| Some(o.latency.p50_ms)))
                    .flatten(),
                p99_ms: has_latency
                    .then(|| of(|o| Some(o.latency.p99_ms)))
                    .flatten(),
                max_ms: has_latency
                    .then(|| of(|o| Some(o.latency.max_ms)))
                    .flatten(),
                pooled: Dist::of(&pooled),
                errors: ok.iter().map(|o| o.errors).sum(),
                server_cpu_ms_per_op: of(|o| o.server_cpu_ms_per_op),
                client_cpu_ms_per_op: of(|o| o.client_cpu_ms_per_op),
            };
            targets.insert(
                *kind,
                TargetCell {
                    summary,
                    runs: runs.clone(),
                },
            );
        }
        let mut corral_vs = BTreeMap::new();
        if let Some(mine) = runs.get(&Kind::Corral) {
            for (kind, theirs) in &runs {
                if *kind == Kind::Corral {
                    continue;
                }
                let mut per_run = Vec::new();
                for m in mine {
                    let Some(t) = theirs.iter().find(|t| t.rep == m.rep) else {
                        continue;
                    };
                    let (Some(a), Some(b)) = (
                        m.outcome.as_ref().and_then(|o| headline(metric, o)),
                        t.outcome.as_ref().and_then(|o| headline(metric, o)),
                    ) else {
                        continue;
                    };
                    per_run.push(match metric {
                        Metric::Throughput => a / b,
                        Metric::Latency => b / a,
                    });
                }
                let median = median(&per_run);
                corral_vs.insert(*kind, Ratio { per_run, median });
            }
        }
        CellReport {
            workload,
            label,
            metric,
            clients,
            locks,
            targets,
            corral_vs,
        }
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The cell of one target, as the table shows it.
fn cell_text(c: &CellReport, kind: Kind) -> String {
    let Some(t) = c.targets.get(&kind) else {
        return if c.workload == "leases" && kind == Kind::Zk {
            "n/a (no leases)".into()
        } else {
            "-".into()
        };
    };
    let s = &t.summary;
    if s.runs_ok == 0 {
        return if c.workload == "leases" && kind == Kind::Zk {
            "n/a".into()
        } else {
            "failed".into()
        };
    }
    let mut text = match (c.metric, s.ops_per_s) {
        (Metric::Throughput, Some(r)) => match s.p99_ms {
            Some(p99) => format!("{}/s p99 {}", thousands(r), num(p99)),
            None => format!("{}/s", thousands(r)),
        },
        _ if c.workload == "recovery" => format!(
            "{} ms (max {})",
            num(s.p50_ms.unwrap_or(0.0)),
            num(s.pooled.max_ms)
        ),
        _ => format!(
            "{} / {} / {}",
            num(s.p50_ms.unwrap_or(0.0)),
            num(s.p99_ms.unwrap_or(0.0)),
            num(s.max_ms.unwrap_or(0.0))
        ),
    };
    if s.runs_failed > 0 {
        let _ = write!(text, " ({} failed)", s.runs_failed);
    }
    if s.errors > 0 {
        let _ = write!(text, " [{} err]", s.errors);
    }
    text
}

fn ratio_text(c: &CellReport, peer: Kind) -> String {
    match c.corral_vs.get(&peer).and_then(|r| r.median) {
        Some(x) => format!("{x:.2}x"),
        None => "-".into(),
    }
}

fn rows(reports: &[CellReport], kinds: &[Kind]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["workload".to_string(), "what".to_string()];
    header.extend(kinds.iter().map(|k| k.to_string()));
    let peers: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|&k| k != Kind::Corral)
        .collect();
    let has_corral = kinds.contains(&Kind::Corral);
    if has_corral {
        header.extend(peers.iter().map(|p| format!("corral vs {p}")));
    }
    let mut body = Vec::new();
    for c in reports {
        let mut row = vec![c.workload.to_string(), c.label.clone()];
        row.extend(kinds.iter().map(|&k| cell_text(c, k)));
        if has_corral {
            row.extend(peers.iter().map(|&p| ratio_text(c, p)));
        }
        body.push(row);
    }
    (header, body)
}

const NOTE: &str = "latency cells: p50 / p99 / max in ms (medians over runs); throughput \
cells: operations/s and p99 latency in ms (medians over runs); corral vs X: median over \
runs of X's p50 / corral's p50 (latency) or corral's rate / X's rate (throughput), both \
from the same round: > 1 means corral is better";

/// The terminal table.
pub fn table(reports: &[CellReport], kinds: &[Kind]) -> String {
    let (header, body) = rows(reports, kinds);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&header));
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for row in &body {
        let _ = writeln!(out, "{}", line(row));
    }
    let _ = writeln!(out, "\n{NOTE}");
    let (header, body) = cpu_rows(reports, kinds);
    if !body.is_empty() {
        let _ = writeln!(out, "\nCPU ms per operation (3 server processes / driver):");
        for row in std::iter::once(&header).chain(&body) {
            let _ = writeln!(out, "  {}", row.join(" | "));
        }
    }
    out
}

/// Server CPU per operation in the closed-loop cells: (header, rows).
fn cpu_rows(reports: &[CellReport], kinds: &[Kind]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["workload".to_string(), "what".to_string()];
    header.extend(kinds.iter().map(|k| format!("{k} server / client")));
    let mut body = Vec::new();
    for c in reports.iter().filter(|c| c.metric == Metric::Throughput) {
        let mut row = vec![c.workload.to_string(), c.label.clone()];
        let mut any = false;
        for k in kinds {
            let s = c.targets.get(k).map(|t| &t.summary);
            row.push(
                match s.and_then(|s| s.server_cpu_ms_per_op.zip(s.client_cpu_ms_per_op)) {
                    Some((server, client)) => {
                        any = true;
                        format!("{server:.3} / {client:.3}")
                    }
                    None => "-".into(),
                },
            );
        }
        if any {
            body.push(row);
        }
    }
    (header, body)
}

/// CPU ms per operation, as a Markdown table.
pub fn markdown_cpu_table(reports: &[CellReport], kinds: &[Kind]) -> String {
    let (header, body) = cpu_rows(reports, kinds);
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}|", vec!["---"; header.len()].join("|"));
    for row in &body {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// The same table in Markdown.
pub fn markdown_table(reports: &[CellReport], kinds: &[Kind]) -> String {
    let (header, body) = rows(reports, kinds);
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}|", vec!["---"; header.len()].join("|"));
    for row in &body {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// Where and when the results came from.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub started_unix_s: u64,
    pub elapsed_s: f64,
    pub machine: BTreeMap<String, String>,
    pub versions: BTreeMap<String, String>,
    pub endpoints: BTreeMap<Kind, Vec<String>>,
    pub config: serde_json::Value,
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let s = String::from_utf8_lossy(&text);
    s.lines().next().map(|l| l.trim().to_string())
}

impl Meta {
    pub async fn gather(
        started: SystemTime,
        elapsed: Duration,
        config: &serde_json::Value,
        targets: &[Target],
    ) -> Meta {
        let mut machine = BTreeMap::new();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if let Some(model) = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
        {
            machine.insert("cpu".into(), model.trim().to_string());
        }
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        machine.insert("cores".into(), cores.to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        if let Some(mem) = meminfo.lines().find(|l| l.starts_with("MemTotal")) {
            let kb: f64 = mem
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            machine.insert("memory".into(), format!("{:.1} GiB", kb / 1024.0 / 1024.0));
        }
        if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
            machine.insert("kernel".into(), kernel.trim().to_string());
        }
        // How long an idle vCPU polls before it halts: on a VM, a large part of a
        // write's latency (docs/BENCHMARKS.md, "What is left", item 1).
        let halt_poll = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";
        if let Ok(ns) = std::fs::read_to_string(halt_poll) {
            machine.insert("guest_halt_poll_ns".into(), ns.trim().to_string());
        }
        if let Ok(os) = std::fs::read_to_string("/etc/os-release") {
            if let Some(name) = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")) {
                machine.insert("os".into(), name.trim_matches('"').to_string());
            }
        }
        let mut versions = BTreeMap::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                versions.insert(k.to_string(), v);
            }
        };
        add("etcd", command_line("etcd", &["--version"]));
        add(
            "zookeeper",
            command_line("dpkg-query", &["-W", "-f", "${Version}", "zookeeper"]),
        );
        add("java", command_line("java", &["-version"]));
        let rev = command_line("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = std::process::Command::new("git")
            .args([
                "status",
                "--porcelain",
                "--",
                "server",
                "client",
                "protocol",
            ])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        // run.sh says which revision it built (CORRAL_REV) or which binary it used.
        let corral = match std::env::var("CORRAL_VERSION") {
            Ok(v) if !v.is_empty() => Some(v),
            _ => rev.map(|r| {
                if dirty {
                    format!("{r} + uncommitted changes to server/client/protocol")
                } else {
                    r
                }
            }),
        };
        add("corral", corral);
        add("corral-bench", Some(env!("CARGO_PKG_VERSION").to_string()));
        Meta {
            started_unix_s: started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            elapsed_s: elapsed.as_secs_f64(),
            machine,
            versions,
            endpoints: targets
                .iter()
                .map(|t| (t.kind, t.endpoints.clone()))
                .collect(),
            config: config.clone(),
        }
    }
}

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Corral => RGBColor(214, 39, 40),
        Kind::Etcd => RGBColor(31, 119, 180),
        Kind::Zk => RGBColor(44, 160, 44),
    }
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Latency CDF of a latency cell, every target's pooled samples.
fn plot_cdf(path: &Path, c: &CellReport) -> PlotResult {
    let mut lo = f64::MAX;
    let mut hi: f64 = 0.0;
    for t in c.targets.values() {
        for r in t.runs.iter().filter_map(|r| r.outcome.as_ref()) {
            for &s in &r.samples_ms {
                lo = lo.min(s);
                hi = hi.max(s);
            }
        }
    }
    if hi <= 0.0 {
        return Ok(());
    }
    let lo = (lo * 0.8).max(0.01);
    let hi = hi * 1.2;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: {} (latency CDF)", c.workload, c.label),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("% of operations at or below")
        .draw()?;
    for (kind, t) in &c.targets {
        let mut samples: Vec<f64> = t
            .runs
            .iter()
            .filter_map(|r| r.outcome.as_ref())
            .flat_map(|o| o.samples_ms.iter().copied())
            .collect();
        if samples.is_empty() {
            continue;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len() as f64;
        let points: Vec<(f64, f64)> = samples
            .iter()
            .enumerate()
            .map(|(i, &s)| (s.max(lo), (i + 1) as f64 * 100.0 / n))
            .collect();
        let col = color(*kind);
        chart
            .draw_series(LineSeries::new(points, col.stroke_width(2)))?
            .label(format!(
                "{kind}: p50 {} ms, p99 {} ms",
                num(t.summary.p50_ms.unwrap_or(0.0)),
                num(t.summary.p99_ms.unwrap_or(0.0))
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Throughput against clients for one lock count, a line per target.
fn plot_throughput(path: &Path, locks: usize, cells: &[&CellReport]) -> PlotResult {
    let mut series: BTreeMap<Kind, Vec<(f64, f64)>> = BTreeMap::new();
    for c in cells {
        let Some(clients) = c.clients else { continue };
        for (kind, t) in &c.targets {
            if let Some(r) = t.summary.ops_per_s {
                series.entry(*kind).or_default().push((clients as f64, r));
            }
        }
    }
    let max_c = series.values().flatten().map(|p| p.0).fold(1.0, f64::max);
    let max_r = series.values().flatten().map(|p| p.1).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("lock throughput over {locks} lock name(s)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..max_c * 1.25).log_scale(), 0f64..max_r * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc("acquire/release cycles per second")
        .draw()?;
    for (kind, mut points) in series {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let col = color(kind);
        chart
            .draw_series(LineSeries::new(points.clone(), col.stroke_width(2)))?
            .label(kind.to_string())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, col.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `results.json`, `results.md` and the plots into `dir`.
pub fn write_all(
    dir: &Path,
    meta: &Meta,
    reports: &[CellReport],
    targets: &[Target],
) -> Result<(), BoxError> {
    let kinds: Vec<Kind> = targets.iter().map(|t| t.kind).collect();
    let json = serde_json::json!({ "meta": meta, "cells": reports });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)?;
    let mut plot_files = Vec::new();
    for c in reports
        .iter()
        .filter(|c| c.metric == Metric::Latency && c.workload != "recovery")
    {
        let name = format!("latency-{}.svg", c.workload);
        match plot_cdf(&plots.join(&name), c) {
            Ok(()) => plot_files.push(name),
            Err(e) => eprintln!("plot {name}: {e}"),
        }
    }
    let mut by_locks: BTreeMap<usize, Vec<&CellReport>> = BTreeMap::new();
    for c in reports.iter().filter(|c| c.workload == "throughput") {
        if let Some(l) = c.locks {
            by_locks.entry(l).or_default().push(c);
        }
    }
    for (locks, cells) in by_locks {
        if cells.len() < 2 {
            continue;
        }
        let name = format!("throughput-{locks}-locks.svg");
        match plot_throughput(&plots.join(&name), locks, &cells) {
            Ok(()) => plot_files.push(name),
            Err(e) => eprintln!("plot {name}: {e}"),
        }
    }

    let mut md = String::new();
    let _ = writeln!(md, "# corral-bench results\n");
    for (k, v) in &meta.machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    for (k, v) in &meta.versions {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(
        md,
        "- run: {:.0} s; config: `{}`\n",
        meta.elapsed_s, meta.config
    );
    md.push_str(&markdown_table(reports, &kinds));
    let _ = writeln!(md, "\n{NOTE}.\n");
    let _ = writeln!(
        md,
        "CPU time per operation, ms (medians over runs): the three server processes \
         together / the benchmark driver that runs the clients.\n"
    );
    md.push_str(&markdown_cpu_table(reports, &kinds));
    md.push('\n');
    for f in &plot_files {
        let _ = writeln!(md, "![{f}](plots/{f})");
    }
    std::fs::write(dir.join("results.md"), md)?;
    Ok(())
}
