//! Terminal table, CSV, JSON and SVG output of sweep results.

use std::path::Path;

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use framewire::fmt_size;

use crate::sweep::{CSV_HEADER, Row};

/// The results as a table for the terminal.
pub fn table(rows: &[Row]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "size",
        "kind",
        "transport",
        "send",
        "items/s",
        "MB/s (95% CI)",
        "speedup",
        "p50 us",
        "p99 us",
        "CPU s",
        "peak RSS MB",
        "subs",
        "producer MB/s",
        "producer CPU ms/frame",
        "consumer CPU ms/frame",
    ]);
    for r in rows {
        let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
        t.add_row(vec![
            right(fmt_size(r.size_bytes)),
            Cell::new(&r.kind),
            Cell::new(&r.transport),
            Cell::new(&r.send),
            right(format!("{:.1}", r.items_per_s)),
            right(format!(
                "{:.0} ({:.0}-{:.0})",
                r.mb_per_s, r.mb_per_s_lo, r.mb_per_s_hi
            )),
            right(format!("{:.2}x", r.speedup)),
            right(format!("{:.0}", r.lat_p50_us)),
            right(format!("{:.0}", r.lat_p99_us)),
            right(format!("{:.2}", r.cpu_s)),
            right(format!("{:.0}", r.peak_rss_mb)),
            right(r.subscribers.to_string()),
            right(format!("{:.0}", r.producer_mb_per_s)),
            right(format!("{:.3}", r.producer_cpu_ms_per_frame)),
            right(format!("{:.3}", r.consumer_cpu_ms_per_frame)),
        ]);
    }
    t.to_string()
}

/// Writes the CSV file.
pub fn write_csv(path: &Path, rows: &[Row]) -> Result<(), String> {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.csv());
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Writes the rows as a JSON array.
pub fn write_json(path: &Path, rows: &[Row]) -> Result<(), String> {
    let s = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    std::fs::write(path, s + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A size for an axis tick: `24 MiB`, `64 KiB`, `1.5 MiB`, `512 B`.
pub fn tick_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return format!("{} {unit}", short_num(bytes as f64 / scale as f64));
        }
    }
    format!("{bytes} B")
}

/// A number with at most 3 significant digits and no trailing zeros: 12, 1.5, 0.25, 250.
pub fn short_num(v: f64) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Throughput unit for the y axis: (name, MB per unit).
fn rate_unit(max_mb_s: f64) -> (&'static str, f64) {
    if max_mb_s >= 1e6 {
        ("TB/s", 1e6)
    } else if max_mb_s >= 2e3 {
        ("GB/s", 1e3)
    } else {
        ("MB/s", 1.0)
    }
}

/// Ticks at 1, 2, 5 x 10^k covering `lo..=hi` (positive values).
fn ticks_125(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi && out.len() < 64 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * decade;
            if v >= lo * 0.999 && v <= hi * 1.001 {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// The largest 1, 2 or 5 x 10^k at or below `v` (> 0).
fn floor_125(v: f64) -> f64 {
    let d = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * d)
        .find(|x| *x <= v * 1.000_001)
        .unwrap_or(d)
}

/// The smallest 1, 2 or 5 x 10^k at or above `v` (> 0).
fn ceil_125(v: f64) -> f64 {
    let d = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * d)
        .find(|x| *x >= v * 0.999_999)
        .unwrap_or(10.0 * d)
}

/// About 6 evenly spaced ticks at a 1-2-5 step from 0 to `hi`.
fn ticks_linear(hi: f64) -> Vec<f64> {
    if hi <= 0.0 {
        return vec![0.0];
    }
    let raw = hi / 6.0;
    let decade = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * decade)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * decade);
    (0..=((hi / step).floor() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

/// A linear axis with ticks exactly where we want them (plotters' own f64
/// axis picks round numbers, and its key-point wrapper loses the label formatter).
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let span = (self.hi - self.lo).max(f64::MIN_POSITIVE);
        let f = (v - self.lo) / span;
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// The plot's series: one per (kind, transport, send, subscribers).
struct Series<'a> {
    label: String,
    transport: String,
    /// Index of its kind among the kinds plotted: the line style.
    kind_i: usize,
    /// Index of its (send, subscribers) combination: the marker.
    mode_i: usize,
    rows: Vec<&'a Row>,
}

fn series(rows: &[Row]) -> Vec<Series<'_>> {
    let fan_out = rows.iter().any(|r| r.subscribers > 1);
    let mut kinds: Vec<String> = Vec::new();
    let mut modes: Vec<(String, usize)> = Vec::new();
    let mut out: Vec<Series> = Vec::new();
    for r in rows {
        let mut label = format!("{} / {} / {}", r.kind, r.transport, r.send);
        if fan_out {
            label.push_str(&format!(
                " / {} sub{}",
                r.subscribers,
                if r.subscribers == 1 { "" } else { "s" }
            ));
        }
        let kind_i = index_of(&mut kinds, r.kind.clone());
        let mode_i = index_of(&mut modes, (r.send.clone(), r.subscribers));
        match out.iter_mut().find(|s| s.label == label) {
            Some(s) => s.rows.push(r),
            None => out.push(Series {
                label,
                transport: r.transport.clone(),
                kind_i,
                mode_i,
                rows: vec![r],
            }),
        }
    }
    for s in &mut out {
        s.rows.sort_by_key(|r| r.size_bytes);
    }
    out
}

/// A colour per transport, the same in every plot.
fn transport_color(name: &str, fallback: usize) -> RGBColor {
    match name {
        "tcp" => RGBColor(31, 119, 180),
        "unix" => RGBColor(255, 127, 14),
        "zmq" => RGBColor(44, 160, 44),
        "shm-ring" => RGBColor(214, 39, 40),
        "shm-pool" => RGBColor(148, 103, 189),
        _ => {
            let c = Palette99::pick(fallback + 5).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// The position of `v` in `seen`, added at the end if new.
fn index_of<T: PartialEq>(seen: &mut Vec<T>, v: T) -> usize {
    match seen.iter().position(|x| *x == v) {
        Some(i) => i,
        None => {
            seen.push(v);
            seen.len() - 1
        }
    }
}

/// Draws marker `mode` (filled circle, filled triangle, cross, hollow
/// circle) at pixel `at` of `area`.
fn marker(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    at: (i32, i32),
    mode: usize,
    color: RGBColor,
) -> Result<(), String> {
    match mode % 4 {
        0 => area.draw(&Circle::new(at, 3, color.filled())),
        1 => area.draw(&TriangleMarker::new(at, 5, color.filled())),
        2 => area.draw(&Cross::new(at, 4, color.stroke_width(2))),
        _ => area.draw(&Circle::new(at, 4, color.stroke_width(2))),
    }
    .map_err(|e| e.to_string())
}

/// Dash and gap lengths of line style `variant` (0 is a solid line).
fn dash(variant: usize) -> Option<(u32, u32)> {
    match variant % 4 {
        0 => None,
        1 => Some((10, 5)),
        2 => Some((3, 4)),
        _ => Some((16, 4)),
    }
}

/// Plots per-subscriber MB/s against payload size: one line per (kind,
/// transport, send[, subscribers]), colour by transport, line style by the
/// rest. The x axis is log 2 with a tick at each swept size; the y axis is
/// in MB/s, GB/s or TB/s, on a log scale when the values span more than 30x.
/// The 95% CI is drawn as error bars when there are at least 3 runs (with
/// fewer it is too wide to say anything) and is clipped to the chart.
pub fn write_svg(path: &Path, rows: &[Row], runs: usize) -> Result<(), String> {
    if rows.is_empty() {
        return Err("nothing to plot".into());
    }
    let all = series(rows);
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.size_bytes.max(1)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let x_of = |r: &Row| (r.size_bytes.max(1) as f64).log2();
    let xs: Vec<f64> = sizes.iter().map(|s| (*s as f64).log2()).collect();
    let (x0, x1) = (xs[0], xs[xs.len() - 1]);
    let pad = ((x1 - x0) * 0.06).max(0.5);
    let (x0, x1) = (x0 - pad, x1 + pad);

    let draw_ci = runs >= 3;
    // The axes fit the means; CI bars are clipped to them.
    let top = rows.iter().map(|r| r.mb_per_s).fold(0.0, f64::max);
    let (unit, per) = rate_unit(top);
    let positive: Vec<f64> = rows
        .iter()
        .map(|r| r.mb_per_s / per)
        .filter(|v| *v > 0.0)
        .collect();
    let lo_v = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let hi_v = (top / per).max(lo_v);
    let log_y = lo_v.is_finite() && hi_v / lo_v > 30.0;
    // y in chart coordinates: log10 of the value in `unit`, or the value.
    let (y0, y1, yticks) = if log_y {
        let (a, b) = (floor_125(lo_v), ceil_125(hi_v * 1.05));
        let t: Vec<f64> = ticks_125(a, b).iter().map(|v| v.log10()).collect();
        (a.log10(), b.log10(), t)
    } else {
        let b = (hi_v * 1.1).max(1e-9);
        (0.0, b, ticks_linear(b))
    };
    let to_y = move |mb_s: f64| {
        let v = mb_s / per;
        if log_y {
            v.max(10f64.powf(y0)).log10().min(y1)
        } else {
            v.clamp(y0, y1)
        }
    };

    let legend_rows = all.len();
    let height = 640u32.max(130 + 18 * legend_rows as u32);
    let e = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(820);
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "framewire sweep: throughput per subscriber by payload size",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(
            Axis {
                lo: x0,
                hi: x1,
                ticks: xs.clone(),
            },
            Axis {
                lo: y0,
                hi: y1,
                ticks: yticks,
            },
        )
        .map_err(|x| e(&x))?;
    let x_label = |v: &f64| {
        sizes
            .iter()
            .find(|s| ((**s as f64).log2() - v).abs() < 1e-6)
            .map(|s| tick_size(*s))
            .unwrap_or_default()
    };
    let y_label = |v: &f64| {
        let value = if log_y { 10f64.powf(*v) } else { *v };
        format!("{} {unit}", short_num(value))
    };
    let y_desc = format!(
        "{unit} per subscriber{}",
        if log_y { " (log scale)" } else { "" }
    );
    chart
        .configure_mesh()
        .x_desc("payload size (log 2 scale)")
        .y_desc(y_desc)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(|x| e(&x))?;
    let palette_index: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for s in &all {
            if !v.contains(&s.transport) {
                v.push(s.transport.clone());
            }
        }
        v
    };
    let color_of = |s: &Series| {
        let i = palette_index
            .iter()
            .position(|t| *t == s.transport)
            .unwrap_or(0);
        transport_color(&s.transport, i)
    };
    let n_series = all.len();
    for (k, s) in all.iter().enumerate() {
        let color = color_of(s);
        let style = color.stroke_width(2);
        // CI bars of different series at one size are set slightly apart.
        let step = (0.004f64).min(0.05 / n_series as f64);
        let dodge = (k as f64 - (n_series as f64 - 1.0) / 2.0) * (x1 - x0) * step;
        let pts: Vec<(f64, f64)> = s.rows.iter().map(|r| (x_of(r), to_y(r.mb_per_s))).collect();
        match dash(s.kind_i) {
            None => chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map(|_| ()),
            Some((d, g)) => chart
                .draw_series(DashedLineSeries::new(pts.clone(), d, g, style))
                .map(|_| ()),
        }
        .map_err(|x| e(&x))?;
        if draw_ci {
            let bars = s.rows.iter().flat_map(|r| {
                let x = x_of(r) + dodge;
                let (lo, hi) = (to_y(r.mb_per_s_lo), to_y(r.mb_per_s_hi));
                let w = (x1 - x0) * 0.004;
                let c = color.mix(0.45);
                [
                    PathElement::new(vec![(x, lo), (x, hi)], c.stroke_width(1)),
                    PathElement::new(vec![(x - w, lo), (x + w, lo)], c),
                    PathElement::new(vec![(x - w, hi), (x + w, hi)], c),
                ]
            });
            chart.draw_series(bars).map_err(|x| e(&x))?;
        }
        // In pixels on the root area (which shares the chart's origin).
        for p in &pts {
            marker(&root, chart.backend_coord(p), s.mode_i, color)?;
        }
    }

    // The legend, beside the chart so that it hides no data.
    let font = ("sans-serif", 14).into_font();
    right
        .draw(&Text::new(
            if all
                .iter()
                .any(|s| s.label.ends_with("sub") || s.label.ends_with("subs"))
            {
                "kind / transport / send / subscribers"
            } else {
                "kind / transport / send"
            },
            (10, 24),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(|x| e(&x))?;
    let note = if draw_ci {
        "bars: 95% CI of the mean over runs, clipped to the axes".to_owned()
    } else {
        format!("{runs} run(s): 95% CI not drawn (needs 3+)")
    };
    right
        .draw(&Text::new(
            "colour: transport, line: kind, marker: send (+ subscribers)",
            (10, 62),
            font.clone().color(&BLACK.mix(0.6)),
        ))
        .map_err(|x| e(&x))?;
    right
        .draw(&Text::new(
            note,
            (10, 44),
            font.clone().color(&BLACK.mix(0.6)),
        ))
        .map_err(|x| e(&x))?;
    for (i, s) in all.iter().enumerate() {
        let y = 90 + 18 * i as i32;
        let color = color_of(s);
        let style = color.stroke_width(2);
        match dash(s.kind_i) {
            None => right.draw(&PathElement::new(vec![(10, y), (52, y)], style)),
            Some((d, g)) => right.draw(&DashedPathElement::new(
                vec![(10, y), (52, y)],
                d as i32,
                g as i32,
                style,
            )),
        }
        .map_err(|x| e(&x))?;
        marker(&right, (31, y), s.mode_i, color)?;
        right
            .draw(&Text::new(s.label.clone(), (60, y - 7), font.clone()))
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_read_as_units() {
        assert_eq!(tick_size(24 << 20), "24 MiB");
        assert_eq!(tick_size(64 << 10), "64 KiB");
        assert_eq!(tick_size(3 << 19), "1.5 MiB");
        assert_eq!(tick_size(512), "512 B");
        assert_eq!(short_num(12.0), "12");
        assert_eq!(short_num(0.25), "0.25");
        assert_eq!(short_num(120000.0), "120000");
        assert_eq!(rate_unit(120_000.0), ("GB/s", 1e3));
        assert_eq!(rate_unit(900.0), ("MB/s", 1.0));
        assert_eq!(
            ticks_125(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(floor_125(0.3), 0.2);
        assert_eq!(ceil_125(2.18), 5.0);
        assert_eq!(ceil_125(1000.0), 1000.0);
        assert_eq!(
            ticks_linear(12.0),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
        );
    }
}
