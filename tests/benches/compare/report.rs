//! The figures: medians and ranges over repetitions, the text table, the
//! README's markdown table and the SVG chart.

use anyhow::Result;
use serde_json::{Value, json};

use crate::modes::Mode;

/// The offered loads of the CPU figures: every mode keeps up with them
/// in either environment (a mode that does not fails the figure).
pub(crate) const LOAD_PPS: u32 = 200_000;
pub(crate) const LOAD_SYNS: u32 = 40_000;
/// The most SYNs of a run at the offered load: each new connection holds
/// a masquerade source port towards the service (the run has a service
/// port of its own, see `workloads::Gen::port`), and its flows are the
/// 40 000 ports of one client address (`abi::BENCH_PORTS_PER_ADDR`), so
/// masquerade keeps each one's port and never searches for a free one.
pub(crate) const LOAD_SYNS_MAX: u32 = 40_000;

pub(crate) const FIGURES: [(&str, &str, bool); 15] = [
    // (key, label, higher is better)
    ("udp64_kpps", "UDP 64 B delivered at saturation, 1 flow (kpps)", true),
    ("udp64_loss_pct", "UDP 64 B lost at saturation, 1 flow (%)", false),
    ("udp64_busy_pct", "gateway core busy at saturation, 1 flow (%)", true),
    ("cpu_ns_per_pkt", "gateway CPU per packet at 200 kpps offered, 1 flow (ns)", false),
    ("udp64_flows_kpps", "UDP 64 B delivered at saturation, 10 000 flows (kpps)", true),
    ("udp64_flows_busy_pct", "gateway core busy at saturation, 10 000 flows (%)", true),
    (
        "cpu_ns_per_pkt_flows",
        "gateway CPU per packet at 200 kpps offered, 10 000 flows (ns)",
        false,
    ),
    ("syn_kpps", "new connections set up at saturation, SYN flood (k/s)", true),
    ("cpu_ns_per_syn", "gateway CPU per new connection at 40 k/s offered, SYNs (ns)", false),
    ("tcp1_gbps", "TCP bulk, 1 stream (Gbit/s)", true),
    ("tcp4_gbps", "TCP bulk, 4 streams (Gbit/s)", true),
    ("conn_per_s", "TCP connections/s (connect, request, close)", true),
    ("cpu_us_per_conn", "gateway CPU per TCP connection, whole (us)", false),
    ("rtt_p50_us", "UDP request/response p50 (us)", false),
    ("rtt_p99_us", "UDP request/response p99 (us)", false),
];

/// Whether a figure compares across modes (a share of busy time or of
/// loss is the run's context, not a score: no ratio).
fn scored(key: &str) -> bool {
    !key.ends_with("_pct")
}

/// The reference of each figure: the better of the netfilter modes (by
/// median; `None` when none has the figure).
pub(crate) fn bases(
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
) -> Vec<Option<usize>> {
    figures
        .iter()
        .enumerate()
        .map(|(fi, (_, _, higher))| {
            modes
                .iter()
                .enumerate()
                .filter(|(_, m)| m.netfilter())
                .filter_map(|(mi, _)| Some((mi, summary[mi][fi].as_ref().ok()?.median)))
                .reduce(|a, b| {
                    // The better one; on a tie, the first.
                    let better = if *higher { b.1 > a.1 } else { b.1 < a.1 };
                    if better { b } else { a }
                })
                .map(|(mi, _)| mi)
        })
        .collect()
}

/// The ratio of mode `mi`'s median to the reference's, for figure `fi`.
fn ratio(
    summary: &[Vec<Result<Summary, String>>],
    base: &[Option<usize>],
    figures: &[(&str, &str, bool)],
    mi: usize,
    fi: usize,
) -> Option<f64> {
    if !scored(figures[fi].0) {
        return None;
    }
    let b = summary[base[fi]?][fi].as_ref().ok().filter(|b| b.median > 0.0)?;
    Some(summary[mi][fi].as_ref().ok()?.median / b.median)
}

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
    // (Counted from the machine's list: this process is pinned to one.)
    let n = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!("{n} x {cpu}, kernel {}", kernel.trim())
}

/// The summary as a Markdown table (a row per figure, a column per mode):
/// each median with its ratio to the best netfilter mode's (that one in
/// bold, with its min–max).
pub(crate) fn markdown(
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    base: &[Option<usize>],
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
    for (fi, (key, label, _)) in figures.iter().enumerate() {
        let cells: Vec<String> = (0..modes.len())
            .map(|mi| match &summary[mi][fi] {
                Ok(s) if base[fi] == Some(mi) && scored(key) => {
                    format!("**{}** [{}–{}]", num(s.median), num(s.min), num(s.max))
                }
                Ok(s) => match ratio(summary, base, figures, mi, fi) {
                    Some(r) => format!("{} ×{r:.2}", num(s.median)),
                    None => num(s.median),
                },
                Err(_) => "FAILED".into(),
            })
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    out
}

#[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
/// One panel per scored figure: a bar per mode, its median relative to
/// the best netfilter mode's (= 1), with the absolute median written on it.
pub(crate) fn chart(
    path: &std::path::Path,
    title_text: &str,
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    base: &[Option<usize>],
) -> Result<()> {
    use plotters::prelude::*;
    let shown: Vec<usize> = (0..figures.len()).filter(|&fi| scored(figures[fi].0)).collect();
    let root = SVGBackend::new(path, (1200, 260 * shown.len().div_ceil(2) as u32 + 60))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(title_text, (10, 8), ("sans-serif", 15)))?;
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
    let panels = body.split_evenly((shown.len().div_ceil(2), 2));
    for (panel, &fi) in panels.iter().zip(&shown) {
        let (_, label, higher) = &figures[fi];
        let vals: Vec<Option<(f64, f64)>> = (0..modes.len())
            .map(|mi| {
                let r = ratio(summary, base, figures, mi, fi)?;
                Some((r, summary[mi][fi].as_ref().ok()?.median))
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
        c.configure_mesh().disable_x_mesh().x_labels(0).y_desc("x best netfilter").draw()?;
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
/// the best netfilter mode's.
pub(crate) fn print_table(
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    base: &[Option<usize>],
) {
    for (fi, (_, label, _)) in figures.iter().enumerate() {
        println!("{label}");
        for (mi, mode) in modes.iter().enumerate() {
            match &summary[mi][fi] {
                Ok(s) => println!(
                    "  {:<28} {:>10.2} [{:.2}-{:.2}]{}",
                    mode.name(),
                    s.median,
                    s.min,
                    s.max,
                    if base[fi] == Some(mi) && scored(figures[fi].0) {
                        "  (the reference)".to_string()
                    } else {
                        ratio(summary, base, figures, mi, fi)
                            .map(|r| format!("  x{r:.2}"))
                            .unwrap_or_default()
                    }
                ),
                Err(e) => println!("  {:<28} FAILED: {e}", mode.name()),
            }
        }
    }
}

/// The figures of every mode, as `compare.json` holds them.
pub(crate) fn json_modes(
    modes: &[Mode],
    figures: &[(&str, &str, bool)],
    summary: &[Vec<Result<Summary, String>>],
    all: &[Vec<Figures>],
    base: &[Option<usize>],
) -> Vec<Value> {
    let mut json_modes = Vec::new();
    for (mi, mode) in modes.iter().enumerate() {
        let mut figs = serde_json::Map::new();
        for (fi, (key, _, higher)) in figures.iter().enumerate() {
            let v = match &summary[mi][fi] {
                Ok(s) => {
                    json!({"median": s.median, "min": s.min, "max": s.max, "higher_is_better": higher,
                    "ratio_to_best_netfilter": ratio(summary, base, figures, mi, fi),
                    "best_netfilter": base[fi].map(|b| modes[b].key()),
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
