//! Terminal table, CSV, JSON and SVG output of sweep results.

use std::path::Path;

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use plotters::prelude::*;

use crate::sweep::{CSV_HEADER, Row};

fn mib(bytes: u64) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

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
    ]);
    for r in rows {
        let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
        t.add_row(vec![
            Cell::new(mib(r.size_bytes)),
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

/// Plots MB/s against payload size, one line per (kind, transport, send), with
/// the 95% confidence interval as a shaded band.
pub fn write_svg(path: &Path, rows: &[Row]) -> Result<(), String> {
    let mut series: Vec<(String, Vec<&Row>)> = Vec::new();
    for r in rows {
        let key = format!("{} / {} / {}", r.kind, r.transport, r.send);
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => series.push((key, vec![r])),
        }
    }
    for (_, v) in &mut series {
        v.sort_by_key(|r| r.size_bytes);
    }
    let x_of = |r: &Row| r.size_bytes as f64 / (1u64 << 20) as f64;
    let xmin = rows.iter().map(x_of).fold(f64::INFINITY, f64::min);
    let xmax = rows.iter().map(x_of).fold(0.0, f64::max);
    let ymax = rows.iter().map(|r| r.mb_per_s_hi).fold(0.0, f64::max) * 1.1;
    if rows.is_empty() || !xmin.is_finite() {
        return Err("nothing to plot".into());
    }
    let (xmin, xmax) = if xmin == xmax {
        (xmin / 2.0, xmax * 2.0)
    } else {
        (xmin, xmax)
    };
    let e = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "framewire sweep: throughput by payload size",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..ymax.max(1.0))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("payload size (MiB, log scale)")
        .y_desc("MB/s")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let band: Vec<(f64, f64)> = pts
            .iter()
            .map(|r| (x_of(r), r.mb_per_s_hi))
            .chain(pts.iter().rev().map(|r| (x_of(r), r.mb_per_s_lo)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                band,
                color.mix(0.15).filled(),
            )))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|r| (x_of(r), r.mb_per_s)),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|r| Circle::new((x_of(r), r.mb_per_s), 3, color.filled())),
            )
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
