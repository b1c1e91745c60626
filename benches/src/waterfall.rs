//! `framewire-bench waterfall`: two pipeline results on one time axis.

use std::io::IsTerminal;
use std::path::Path;

use crate::pipeline::{Report, StageTime};

const WIDTH: usize = 64;

/// Reads a pipeline result file.
pub fn load(path: &Path) -> Result<Report, String> {
    let s =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&s)
        .map_err(|e| format!("{} is not a pipeline result: {e}", path.display()))
}

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, kind: &str, s: &str) -> String {
        match (self.color, kind) {
            (false, _) => s.to_owned(),
            (true, "ipc") => format!("\x1b[41m{s}\x1b[0m"),
            (true, _) => format!("\x1b[44m{s}\x1b[0m"),
        }
    }
    fn glyph(&self, kind: &str) -> char {
        match (self.color, kind) {
            (true, _) => ' ',
            (false, "ipc") => '#',
            (false, _) => '=',
        }
    }
}

fn total(stages: &[StageTime]) -> f64 {
    stages.iter().map(|s| s.ms).sum()
}

/// One timeline: each stage a run of cells proportional to its time.
fn bar(stages: &[StageTime], scale: f64, style: &Style) -> String {
    let mut out = String::new();
    let mut at = 0.0;
    let mut cells = 0usize;
    for s in stages {
        at += s.ms;
        let end = ((at * scale).round() as usize).min(WIDTH);
        let n = end
            .saturating_sub(cells)
            .max(usize::from(s.ms > 0.0 && end == cells && cells < WIDTH));
        let run: String = std::iter::repeat_n(style.glyph(&s.kind), n).collect();
        out.push_str(&style.paint(&s.kind, &run));
        cells += n;
    }
    out
}

/// Renders the comparison; ANSI colours only when `color` is set.
pub fn render(base: &Report, cur: &Report, color: bool) -> String {
    let style = Style { color };
    let (tb, tc) = (total(&base.stages), total(&cur.stages));
    let scale = WIDTH as f64 / tb.max(tc).max(1e-9);
    let mut o = String::new();
    o.push_str(&format!(
        "waterfall: {} ({}) vs {} ({}), {} filter(s), {}\n",
        base.transport, "baseline", cur.transport, "current", cur.hops, cur.resolution
    ));
    o.push_str(&format!(
        "legend: {} IPC   {} work   (0 .. {:.2} ms)\n\n",
        style.paint("ipc", if color { "  " } else { "##" }),
        style.paint("work", if color { "  " } else { "==" }),
        tb.max(tc)
    ));
    o.push_str(&format!("baseline |{}\n", bar(&base.stages, scale, &style)));
    o.push_str(&format!(
        "current  |{}\n\n",
        bar(&cur.stages, scale, &style)
    ));
    o.push_str(&format!(
        "{:<22} {:>5} {:>11} {:>11} {:>11} {:>8}\n",
        "stage", "kind", "baseline ms", "current ms", "delta ms", "gain"
    ));
    let names: Vec<&StageTime> = cur.stages.iter().chain(base.stages.iter()).collect();
    let mut seen: Vec<&str> = Vec::new();
    for s in names {
        if seen.contains(&s.name.as_str()) {
            continue;
        }
        seen.push(&s.name);
        let b = base.stages.iter().find(|x| x.name == s.name).map(|x| x.ms);
        let c = cur.stages.iter().find(|x| x.name == s.name).map(|x| x.ms);
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let (delta, gain) = match (b, c) {
            (Some(b), Some(c)) => (
                format!("{:+.3}", c - b),
                if c > 0.0 {
                    format!("{:.1}x", b / c)
                } else {
                    "-".into()
                },
            ),
            _ => ("-".into(), "-".into()),
        };
        o.push_str(&format!(
            "{:<22} {:>5} {:>11} {:>11} {:>11} {:>8}\n",
            s.name,
            s.kind,
            f(b),
            f(c),
            delta,
            gain
        ));
    }
    o.push_str(&format!(
        "\ntotal: baseline {tb:.3} ms ({:.3} ms IPC), current {tc:.3} ms ({:.3} ms IPC), {:+.3} ms\n",
        base.ipc_ms_per_frame,
        cur.ipc_ms_per_frame,
        tc - tb
    ));
    o.push_str(&format!(
        "fps:   baseline {:.1}, current {:.1} ({:.2}x)\n",
        base.max_fps,
        cur.max_fps,
        if base.max_fps > 0.0 {
            cur.max_fps / base.max_fps
        } else {
            0.0
        }
    ));
    o
}

/// Prints the comparison, coloured when stdout is a terminal.
pub fn print(base: &Report, cur: &Report) {
    print!("{}", render(base, cur, std::io::stdout().is_terminal()));
}

/// Builds and runs the pipeline at `gitref` in a temporary worktree; returns its result.
pub fn run_at_ref(gitref: &str, pipeline_args: &[String]) -> Result<Report, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("making a temporary directory: {e}"))?;
    let tree = dir.path().join("tree");
    let git = |args: &[&str]| -> Result<(), String> {
        let st = std::process::Command::new("git")
            .args(args)
            .status()
            .map_err(|e| format!("running git: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("git {} failed: {st}", args.join(" ")))
        }
    };
    let tree_s = tree.to_string_lossy().to_string();
    git(&["worktree", "add", "--detach", &tree_s, gitref])?;
    let out = dir.path().join("baseline.json");
    // Share our target directory: the dependencies are already built there.
    let target = std::env::var("CARGO_TARGET_DIR").ok().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| {
                p.parent()?
                    .parent()
                    .map(|t| t.to_string_lossy().to_string())
            })
            .unwrap_or_else(|| "target".into())
    });
    eprintln!(
        "building and running the pipeline at {gitref} in {}",
        tree.display()
    );
    let status = std::process::Command::new("cargo")
        .current_dir(&tree)
        .env("CARGO_TARGET_DIR", format!("{target}/worktree-baseline"))
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            "framewire-bench",
            "--",
            "pipeline",
        ])
        .args(pipeline_args)
        .arg("--json")
        .arg(&out)
        .status();
    let cleanup = git(&["worktree", "remove", "--force", &tree_s]);
    let status = status.map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("the pipeline at {gitref} failed: {status}"));
    }
    cleanup?;
    load(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_the_newer_keys_still_load() {
        let mut v = serde_json::to_value(report(1.0, 2.0, 3.0)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("per_hop_us_p99");
        o.remove("pin");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.json");
        std::fs::write(&p, v.to_string()).unwrap();
        let r = load(&p).unwrap();
        assert!(r.per_hop_us_p99.is_empty() && r.pin.is_none());
        assert_eq!(r.per_hop_us_p50.len(), 2);
    }

    fn report(ipc: f64, work: f64, fps: f64) -> Report {
        Report {
            transport: "tcp".into(),
            hops: 1,
            frames: 10,
            resolution: "3840x2160".into(),
            frame_bytes: 24_883_200,
            work_ms: work,
            hop_us_p50: ipc * 1e3,
            hop_us_p99: ipc * 1e3,
            per_hop_us_p50: vec![ipc * 1e3, ipc * 1e3],
            per_hop_us_p99: vec![ipc * 1e3, ipc * 1e3],
            pin: None,
            fill: false,
            ipc_ms_per_frame: 2.0 * ipc,
            work_ms_per_frame: work,
            max_fps: fps,
            stages: vec![
                StageTime {
                    name: "source->filter1".into(),
                    kind: "ipc".into(),
                    ms: ipc,
                },
                StageTime {
                    name: "filter1".into(),
                    kind: "work".into(),
                    ms: work,
                },
                StageTime {
                    name: "filter1->sink".into(),
                    kind: "ipc".into(),
                    ms: ipc,
                },
            ],
        }
    }

    #[test]
    fn plain_text_shows_stages_deltas_and_totals() {
        let s = render(&report(8.0, 4.0, 50.0), &report(0.05, 4.0, 200.0), false);
        assert!(!s.contains('\x1b'), "no colour codes in plain mode");
        assert!(s.contains("baseline |########"), "{s}");
        assert!(s.contains("filter1->sink"));
        assert!(s.contains("-7.950"), "delta of the IPC stage: {s}");
        assert!(s.contains("160.0x"), "gain of the IPC stage: {s}");
        assert!(
            s.contains("fps:   baseline 50.0, current 200.0 (4.00x)"),
            "{s}"
        );
        let c = render(&report(8.0, 4.0, 50.0), &report(0.05, 4.0, 200.0), true);
        assert!(c.contains("\x1b[41m") && c.contains("\x1b[44m"));
    }
}
