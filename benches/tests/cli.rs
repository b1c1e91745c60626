//! The harness's command-line contracts, run as real processes on small inputs.

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_framewire-bench"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run framewire-bench");
    assert!(
        out.status.success(),
        "framewire-bench failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn sweep_writes_csv_json_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, json, svg) = (
        dir.path().join("r.csv"),
        dir.path().join("r.json"),
        dir.path().join("r.svg"),
    );
    let stdout = run(bench()
        .args([
            "sweep",
            "--transports",
            "tcp,unix",
            "--sizes",
            "64KiB,256KiB",
        ])
        .args([
            "--kinds",
            "bytes,tensor,packets",
            "--num-items",
            "3",
            "--runs",
            "2",
            "--isolate",
        ])
        .arg("--csv")
        .arg(&csv)
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg));
    assert!(stdout.contains("speedup is against tcp"), "{stdout}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "size_bytes,kind,transport,send,items_per_s,mb_per_s,mb_per_s_lo,mb_per_s_hi,speedup,lat_p50_us,lat_p99_us,cpu_s,peak_rss_mb"
        )
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2 * 3 * 2);
    for r in &rows {
        assert_eq!(r.len(), 13);
        let mb: f64 = r[5].parse().unwrap();
        let (lo, hi): (f64, f64) = (r[6].parse().unwrap(), r[7].parse().unwrap());
        assert!(mb > 0.0 && lo <= mb && mb <= hi, "{r:?}");
        if r[2] == "tcp" {
            assert_eq!(r[8], "1.000", "tcp is its own baseline");
        }
        let cpu: f64 = r[11].parse().unwrap();
        assert!(cpu > 0.0, "CPU seconds are measured: {r:?}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), rows.len());
    assert!(json[0]["lat_p99_us"].as_f64().unwrap() >= json[0]["lat_p50_us"].as_f64().unwrap());
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("packets / unix / copy"));
}

#[test]
fn pipeline_and_waterfall() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    for (t, f, work) in [("tcp", &a, "0"), ("unix", &b, "1")] {
        let out = run(bench()
            .args([
                "pipeline",
                "--transport",
                t,
                "--hops",
                "2",
                "--resolution",
                "320x240",
            ])
            .args(["--frames", "6", "--work-ms", work])
            .arg("--json")
            .arg(f));
        assert!(out.contains("max"), "{out}");
    }
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&b).unwrap()).unwrap();
    for key in [
        "transport",
        "hops",
        "frames",
        "hop_us_p50",
        "hop_us_p99",
        "ipc_ms_per_frame",
        "max_fps",
        "stages",
    ] {
        assert!(r.get(key).is_some(), "key {key} in {r}");
    }
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 5, "3 IPC hops and 2 filters");
    assert_eq!(stages.iter().filter(|s| s["kind"] == "work").count(), 2);
    assert!(
        stages
            .iter()
            .filter(|s| s["kind"] == "work")
            .all(|s| s["ms"].as_f64().unwrap() >= 1.0)
    );
    assert!(r["max_fps"].as_f64().unwrap() > 0.0);
    let out = run(bench()
        .args(["waterfall", "--baseline"])
        .arg(&a)
        .arg("--current")
        .arg(&b));
    assert!(
        !out.contains('\x1b'),
        "plain text when stdout is not a terminal"
    );
    assert!(
        out.contains("filter1->filter2") && out.contains("fps:"),
        "{out}"
    );
}

#[test]
fn unknown_transports_are_named() {
    let out = bench()
        .args(["sweep", "--transports", "pigeon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown transport `pigeon`"));
}
