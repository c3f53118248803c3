//! The HTML report: the checkers' verdicts, a timeline of every operation over the
//! nemesis intervals, and latency plots, drawn with `plotters` (SVG backend) and
//! inlined in `report.html`.

use crate::analyze::Summary;
use crate::history::{pairs, Event, Kind};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Operations drawn at most per plot (evenly sampled beyond that).
const MAX_DRAWN: usize = 30_000;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Nemesis intervals: (family, start s, end s, what).
pub fn nemesis_intervals(history: &[Event]) -> Vec<(String, f64, f64, String)> {
    let end = history.last().map_or(0.0, |e| e.time as f64 / 1e9);
    let mut open: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for e in history.iter().filter(|e| e.workload == "nemesis") {
        let t = e.time as f64 / 1e9;
        let what = e
            .items
            .as_ref()
            .and_then(|i| i.first().cloned())
            .unwrap_or_default();
        if let Some(f) = e.f.strip_prefix("start-") {
            open.insert(f.to_string(), (t, what));
        } else if let Some(f) = e.f.strip_prefix("stop-") {
            if let Some((s, w)) = open.remove(f) {
                out.push((f.to_string(), s, t, w));
            }
        } else if e.f == "heal-all" {
            for (f, (s, w)) in std::mem::take(&mut open) {
                out.push((f, s, t, w));
            }
        }
    }
    for (f, (s, w)) in open {
        out.push((f, s, end, w));
    }
    out
}

fn family_color(f: &str) -> RGBColor {
    match f {
        "partition" => RGBColor(255, 200, 200),
        "loss" => RGBColor(255, 230, 180),
        "kill" => RGBColor(220, 200, 255),
        "pause" => RGBColor(200, 230, 255),
        "pause-client" => RGBColor(170, 240, 240),
        _ => RGBColor(210, 255, 210),
    }
}

fn outcome_color(k: Kind) -> RGBColor {
    match k {
        Kind::Ok => RGBColor(40, 160, 60),
        Kind::Fail => RGBColor(210, 40, 40),
        _ => RGBColor(240, 150, 0),
    }
}

fn timeline(history: &[Event]) -> Result<String, String> {
    let end = history.last().map_or(1.0, |e| e.time as f64 / 1e9).max(1.0);
    let all: Vec<(String, u64, f64, f64, Kind)> = crate::analyze::workloads_of(history)
        .iter()
        .flat_map(|w| {
            pairs(history, w)
                .into_iter()
                .map(|p| {
                    let s = p.invoke.time as f64 / 1e9;
                    let e = p.done.map_or(end, |d| d.time as f64 / 1e9);
                    (w.clone(), p.invoke.process, s, e, p.outcome())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut lanes: Vec<(String, u64)> = all.iter().map(|o| (o.0.clone(), o.1)).collect();
    lanes.sort();
    lanes.dedup();
    let lane_of: BTreeMap<(String, u64), usize> = lanes
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i))
        .collect();
    let height = (lanes.len() as u32 * 14 + 80).clamp(240, 1600);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .caption(
                "operations over time (lanes: workload/process)",
                ("sans-serif", 16),
            )
            .x_label_area_size(30)
            .y_label_area_size(110)
            .build_cartesian_2d(0f64..end, 0f64..(lanes.len().max(1) as f64))
            .map_err(|e| e.to_string())?;
        let lanes_for_labels = lanes.clone();
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_labels(lanes.len().clamp(1, 60))
            .y_label_formatter(&move |y| {
                lanes_for_labels
                    .get(y.floor() as usize)
                    .map(|(w, p)| format!("{w}/{p}"))
                    .unwrap_or_default()
            })
            .disable_y_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        let top = lanes.len().max(1) as f64;
        let mut labelled = std::collections::BTreeSet::new();
        for (f, s, e, _) in nemesis_intervals(history) {
            let c = family_color(&f);
            let series = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(s, 0.0), (e, top)],
                    c.mix(0.6).filled(),
                )))
                .map_err(|e| e.to_string())?;
            // One legend entry per family.
            if labelled.insert(f.clone()) {
                series.label(f.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled())
                });
            }
        }
        let step = all.len().div_ceil(MAX_DRAWN).max(1);
        for k in [Kind::Ok, Kind::Fail, Kind::Info] {
            let color = outcome_color(k);
            chart
                .draw_series(
                    all.iter()
                        .step_by(step)
                        .filter(|o| o.4 == k || (k == Kind::Info && o.4 == Kind::Event))
                        .map(|o| {
                            let y = lane_of[&(o.0.clone(), o.1)] as f64 + 0.5;
                            PathElement::new(
                                vec![(o.2, y), (o.3.max(o.2 + 0.002), y)],
                                color.stroke_width(3),
                            )
                        }),
                )
                .map_err(|e| e.to_string())?
                .label(format!("{k:?}").to_lowercase())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 10, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn latency(history: &[Event], workload: &str) -> Result<String, String> {
    let points: Vec<(f64, f64, Kind)> = pairs(history, workload)
        .into_iter()
        .filter_map(|p| {
            let d = p.done?;
            let ms = (d.time.saturating_sub(p.invoke.time)) as f64 / 1e6;
            Some((p.invoke.time as f64 / 1e9, ms.max(0.01), d.kind))
        })
        .collect();
    let end = history.last().map_or(1.0, |e| e.time as f64 / 1e9).max(1.0);
    let max_ms = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .caption(
                format!("{workload}: latency (ms, log scale)"),
                ("sans-serif", 16),
            )
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..end, (0.01f64..max_ms).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("ms")
            .draw()
            .map_err(|e| e.to_string())?;
        for (f, s, e, _) in nemesis_intervals(history) {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(s, 0.01), (e, max_ms)],
                    family_color(&f).mix(0.5).filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
        let step = points.len().div_ceil(MAX_DRAWN).max(1);
        for k in [Kind::Ok, Kind::Fail, Kind::Info] {
            let color = outcome_color(k);
            chart
                .draw_series(
                    points
                        .iter()
                        .step_by(step)
                        .filter(|p| p.2 == k)
                        .map(|p| Circle::new((p.0, p.1), 2, color.filled())),
                )
                .map_err(|e| e.to_string())?
                .label(format!("{k:?}").to_lowercase())
                .legend(move |(x, y)| Circle::new((x, y), 3, color.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Writes `report.html` into `dir`.
pub fn write(summary: &Summary, history: &[Event], dir: &Path) -> Result<(), String> {
    let mut html = String::new();
    html.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>corral jepsen run</title>",
    );
    html.push_str("<style>body{font-family:sans-serif;margin:20px}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}table{border-collapse:collapse}.valid{color:#080}.invalid{color:#c00;font-weight:bold}.unknown{color:#c80}</style></head><body>");
    html.push_str(&format!(
        "<h1>corral jepsen run: <span class=\"{v}\">{v}</span></h1><p>seed {} &middot; workloads {} &middot; nemeses {} &middot; {} events &middot; replay with <code>--seed {}</code></p>",
        summary.seed,
        escape(&summary.workloads.join(", ")),
        escape(&summary.nemeses.join(", ")),
        summary.events,
        summary.seed,
        v = format!("{:?}", summary.valid).to_lowercase()
    ));
    html.push_str("<h2>Checks</h2><table><tr><th>check</th><th>verdict</th><th>counts</th><th>problems / notes</th></tr>");
    for c in &summary.checks {
        let v = format!("{:?}", c.valid).to_lowercase();
        let stats: Vec<String> = c
            .stats
            .iter()
            .map(|(k, v)| format!("{}: {v}", escape(k)))
            .collect();
        let mut notes: Vec<String> = c
            .problems
            .iter()
            .map(|p| format!("<b>{}</b>", escape(p)))
            .collect();
        notes.extend(
            c.known_bugs
                .iter()
                .map(|k| format!("<i>KNOWN BUG: {}</i>", escape(k))),
        );
        notes.extend(c.notes.iter().take(10).map(|n| escape(n)));
        html.push_str(&format!(
            "<tr><td>{}</td><td class=\"{v}\">{v}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.name),
            stats.join("<br>"),
            notes.join("<br>")
        ));
    }
    html.push_str("</table><h2>Timeline</h2>");
    match timeline(history) {
        Ok(svg) => html.push_str(&svg),
        Err(e) => html.push_str(&format!("<p>timeline not drawn: {}</p>", escape(&e))),
    }
    html.push_str("<h2>Latency</h2>");
    for w in &summary.workloads {
        match latency(history, w) {
            Ok(svg) => html.push_str(&svg),
            Err(e) => html.push_str(&format!("<p>{w}: not drawn: {}</p>", escape(&e))),
        }
    }
    html.push_str("<h2>Nemesis</h2><table><tr><th>fault</th><th>from (s)</th><th>to (s)</th><th>what</th></tr>");
    for (f, s, e, w) in nemesis_intervals(history) {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{s:.2}</td><td>{e:.2}</td><td>{}</td></tr>",
            escape(&f),
            escape(&w)
        ));
    }
    html.push_str("</table><p>Full history: <code>history.jsonl</code>; verdicts: <code>results.json</code>.</p></body></html>");
    std::fs::write(dir.join("report.html"), html).map_err(|e| format!("report.html: {e}"))
}
