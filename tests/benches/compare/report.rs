//! The figures: medians and ranges over repetitions, the text table, the
//! README's markdown table and the SVG chart.

use anyhow::Result;
use serde_json::{Value, json};

use crate::modes::Mode;

pub(crate) const FIGURES: [(&str, &str, bool); 13] = [
    // (key, label, higher is better)
    ("udp64_kpps", "UDP 64 B delivered, 1 flow (kpps)", true),
    ("udp64_loss_pct", "UDP 64 B loss, 1 flow (%)", false),
    ("cpu_ns_per_pkt", "gateway CPU per packet, 1 flow (ns)", false),
    ("udp64_flows_kpps", "UDP 64 B delivered, 10 000 flows (kpps)", true),
    ("cpu_ns_per_pkt_flows", "gateway CPU per packet, 10 000 flows (ns)", false),
    ("syn_kpps", "new connections set up, SYN flood (k/s)", true),
    ("cpu_ns_per_syn", "gateway CPU per new connection, SYN flood (ns)", false),
    ("tcp1_gbps", "TCP bulk, 1 stream (Gbit/s)", true),
    ("tcp4_gbps", "TCP bulk, 4 streams (Gbit/s)", true),
    ("conn_per_s", "TCP connections/s (connect, request, close)", true),
    ("cpu_us_per_conn", "gateway CPU per TCP connection, whole (us)", false),
    ("rtt_p50_us", "UDP request/response p50 (us)", false),
    ("rtt_p99_us", "UDP request/response p99 (us)", false),
];

pub(crate) type Figures = Vec<(&'static str, Result<f64, String>)>;

pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn summarize(values: &[Result<f64, String>]) -> Result<Summary, String> {
    if let Some(Err(e)) = values.iter().find(|v| v.is_err()) {
        return Err(e.clone());
    }
    let mut v: Vec<f64> = values.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    if v.is_empty() {
        return Err("no repetition".into());
    }
    v.sort_by(f64::total_cmp);
    Ok(Summary { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] })
}

pub(crate) fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    format!("{n} x {cpu}, kernel {}", kernel.trim())
}

/// The summary as a Markdown table (a row per figure, a column per mode):
/// iptables' median with min–max, every other mode's median and its ratio
/// to iptables.
pub(crate) fn markdown(
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    ipt: usize,
) -> String {
    use std::fmt::Write as _;
    let num = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    let mut out = format!(
        "| figure | {} |\n|{}\n",
        modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(" | "),
        " --- |".repeat(modes.len() + 1)
    );
    for (fi, (_, label, _)) in figures.iter().enumerate() {
        let cells: Vec<String> = (0..modes.len())
            .map(|mi| match (&summary[mi][fi], &summary[ipt][fi]) {
                (Ok(s), _) if mi == ipt => {
                    format!("{} [{}–{}]", num(s.median), num(s.min), num(s.max))
                }
                (Ok(s), Ok(b)) if b.median > 0.0 => {
                    format!("{} ×{:.2}", num(s.median), s.median / b.median)
                }
                (Ok(s), _) => num(s.median),
                (Err(_), _) => "FAILED".into(),
            })
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    out
}

#[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
/// One panel per figure: a bar per mode, its median relative to iptables
/// (iptables = 1), with the absolute median written on it.
pub(crate) fn chart(
    path: &std::path::Path,
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    ipt: usize,
    machine: &str,
) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 260 * figures.len().div_ceil(2) as u32 + 60))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(
        format!(
            "forwarder vs netfilter: median of each mode relative to iptables (= 1); {machine}"
        ),
        (10, 8),
        ("sans-serif", 17),
    ))?;
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ];
    // Legend: one colour per mode, in bar order.
    for (mi, mode) in modes.iter().enumerate() {
        let x = 10 + 195 * i32::try_from(mi).unwrap_or(0);
        title.draw(&Rectangle::new([(x, 36), (x + 14, 50)], colors[mi % colors.len()].filled()))?;
        title.draw(&Text::new(mode.name(), (x + 18, 37), ("sans-serif", 13)))?;
    }
    let panels = body.split_evenly((figures.len().div_ceil(2), 2));
    for (fi, (panel, (_, label, higher))) in panels.iter().zip(figures).enumerate() {
        let vals: Vec<Option<(f64, f64)>> = (0..modes.len())
            .map(|mi| {
                let base = summary[ipt][fi].as_ref().ok()?.median;
                let s = summary[mi][fi].as_ref().ok()?;
                (base > 0.0).then(|| (s.median / base, s.median))
            })
            .collect();
        let top = vals.iter().flatten().map(|v| v.0).fold(1.0, f64::max) * 1.25;
        let caption = format!("{label} ({} is better)", if *higher { "higher" } else { "lower" });
        let mut c = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(5)
            .y_label_area_size(40)
            .build_cartesian_2d(0f64..modes.len() as f64, 0f64..top)?;
        c.configure_mesh().disable_x_mesh().x_labels(0).y_desc("x iptables").draw()?;
        for (mi, v) in vals.iter().enumerate() {
            let x = mi as f64;
            match v {
                Some((ratio, abs)) => {
                    c.draw_series(std::iter::once(Rectangle::new(
                        [(x + 0.15, 0.0), (x + 0.85, *ratio)],
                        colors[mi % colors.len()].filled(),
                    )))?;
                    c.draw_series(std::iter::once(Text::new(
                        format!("{abs:.1}"),
                        (x + 0.2, ratio + top * 0.03),
                        ("sans-serif", 11),
                    )))?;
                }
                None => {
                    c.draw_series(std::iter::once(Text::new(
                        "FAILED",
                        (x + 0.15, top * 0.1),
                        ("sans-serif", 11).into_font().color(&RED),
                    )))?;
                }
            }
        }
    }
    root.present()?;
    Ok(())
}

/// The text table: each figure, each mode's median, range and ratio to
/// iptables.
pub(crate) fn print_table(
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    ipt: usize,
) {
    for (fi, (key, label, higher)) in figures.iter().enumerate() {
        println!("{label}");
        for (mi, mode) in modes.iter().enumerate() {
            match &summary[mi][fi] {
                Ok(s) => {
                    let ratio = summary[ipt][fi]
                        .as_ref()
                        .ok()
                        .filter(|b| b.median > 0.0)
                        .map(|b| s.median / b.median);
                    println!(
                        "  {:<28} {:>10.2} [{:.2}-{:.2}]{}",
                        mode.name(),
                        s.median,
                        s.min,
                        s.max,
                        ratio.map(|r| format!("  x{r:.2}")).unwrap_or_default()
                    );
                }
                Err(e) => println!("  {:<28} FAILED: {e}", mode.name()),
            }
        }
        let _ = (key, higher);
    }
}

/// The figures of every mode, as `compare.json` holds them.
pub(crate) fn json_modes(
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    all: &[Vec<Figures>],
    ipt: usize,
) -> Vec<Value> {
    let mut json_modes = Vec::new();
    for (mi, mode) in modes.iter().enumerate() {
        let mut figs = serde_json::Map::new();
        for (fi, (key, _, higher)) in figures.iter().enumerate() {
            let v = match &summary[mi][fi] {
                Ok(s) => {
                    json!({"median": s.median, "min": s.min, "max": s.max, "higher_is_better": higher,
                    "ratio_to_iptables": summary[ipt][fi].as_ref().ok().filter(|b| b.median > 0.0).map(|b| s.median / b.median),
                    "runs": all[mi].iter().map(|r| r.iter().find(|f| f.0 == *key).and_then(|f| f.1.clone().ok())).collect::<Vec<_>>()})
                }
                Err(e) => json!({"failed": e}),
            };
            figs.insert((*key).to_string(), v);
        }
        json_modes.push(json!({"mode": mode.key(), "name": mode.name(), "figures": figs}));
    }
    json_modes
}

/// Each mode's summary of each figure over its repetitions:
/// `[mode][figure]`.
pub(crate) fn summaries(
    all: &[Vec<Figures>],
    figures: &[(&str, &str, bool)],
) -> Vec<Vec<Result<Summary, String>>> {
    all.iter()
        .map(|reps| {
            figures
                .iter()
                .map(|(key, _, _)| {
                    summarize(
                        &reps
                            .iter()
                            .map(|r| {
                                r.iter()
                                    .find(|f| f.0 == *key)
                                    .map_or(Err("missing".into()), |f| f.1.clone())
                            })
                            .collect::<Vec<_>>(),
                    )
                })
                .collect()
        })
        .collect()
}
