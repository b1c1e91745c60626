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
            "size_bytes,kind,transport,send,items_per_s,mb_per_s,mb_per_s_lo,mb_per_s_hi,speedup,lat_p50_us,lat_p99_us,cpu_s,peak_rss_mb,subscribers,producer_mb_per_s,producer_cpu_ms_per_frame,consumer_cpu_ms_per_frame"
        ),
        "the old columns, then the new ones"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2 * 3 * 2);
    for r in &rows {
        assert_eq!(r.len(), 17);
        assert_eq!(r[13], "1", "one subscriber by default: {r:?}");
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

/// Runs a sweep that must be refused; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = bench().arg("sweep").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "`sweep {}` must fail; stdout:\n{}\nstderr:\n{err}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing measured, no table: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

#[test]
fn input_that_measures_nothing_or_cannot_run_is_refused_up_front() {
    let e = refused(&["--transports", "tcp", "--runs", "0"]);
    assert!(e.contains("--runs") && e.contains("at least 1"), "{e}");
    let e = refused(&["--transports", "tcp", "--num-items", "0"]);
    assert!(e.contains("--num-items") && e.contains("at least 1"), "{e}");
    // Larger than the tcp backend's max_payload (1 GiB by default): named,
    // with the option to raise, before any process starts.
    let e = refused(&["--transports", "tcp", "--sizes", "4GiB", "--kinds", "bytes"]);
    assert!(
        e.contains("4 GiB") && e.contains("max_payload") && e.contains("--options"),
        "{e}"
    );
    assert!(!e.contains("closed the connection"), "{e}");
    // The check covers every transport listed, not only the first.
    let e = refused(&[
        "--transports",
        "unix,zmq",
        "--sizes",
        "2GiB",
        "--kinds",
        "bytes",
    ]);
    assert!(e.contains("unix") && e.contains("max_payload"), "{e}");
    let e = refused(&["--transports", "tcp,,unix"]);
    assert!(e.contains("--transports") && e.contains("empty"), "{e}");
    let e = refused(&["--transports", ""]);
    assert!(e.contains("--transports") && e.contains("empty"), "{e}");
    let e = refused(&["--transports", "tcp", "--sizes", ""]);
    assert!(e.contains("--sizes"), "{e}");
    let e = refused(&["--transports", "tcp", "--sizes", "0"]);
    assert!(e.contains("--sizes") && e.contains("0 B"), "{e}");
    let e = refused(&["--transports", "tcp", "--kinds", ""]);
    assert!(e.contains("--kinds"), "{e}");
    let e = refused(&["--transports", "tcp", "--subscribers", "0"]);
    assert!(
        e.contains("--subscribers") && e.contains("at least 1"),
        "{e}"
    );
    let e = refused(&["--transports", "tcp", "--subscribers", "65"]);
    assert!(e.contains("--subscribers") && e.contains("1 to 64"), "{e}");
    let e = refused(&["--transports", "tcp", "--options", "busy_poll=fast"]);
    assert!(
        e.contains("busy_poll"),
        "a bad endpoint option is named: {e}"
    );
}

#[test]
fn sweep_fans_out_to_several_subscriber_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, json) = (dir.path().join("f.csv"), dir.path().join("f.json"));
    let stdout = run(bench()
        .args(["sweep", "--transports", "tcp,shm-pool", "--sizes", "64KiB"])
        .args(["--kinds", "bytes", "--num-items", "4", "--runs", "2"])
        .args(["--subscribers", "1,3", "--send", "loan"])
        .arg("--csv")
        .arg(&csv)
        .arg("--json")
        .arg(&json));
    assert!(stdout.contains("64 KiB"), "sizes with units: {stdout}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    assert_eq!(rows.len(), 4, "2 transports x 2 subscriber counts: {csv}");
    let mut seen = Vec::new();
    for r in &rows {
        let num = |i: usize| -> f64 { r[i].parse().unwrap() };
        seen.push((r[2].clone(), r[13].clone()));
        assert!(num(5) > 0.0, "per-subscriber MB/s: {r:?}");
        assert!(num(14) > 0.0, "producer MB/s: {r:?}");
        assert!(num(15) >= 0.0 && num(16) >= 0.0, "CPU per frame: {r:?}");
        assert!(
            num(15) + num(16) > 0.0,
            "the timed phase uses some CPU: {r:?}"
        );
        // The timed phase is part of the configuration: its CPU (4 frames x
        // 2 runs, sent once and received by each subscriber) is within
        // `cpu_s`, which also counts start-up and the warm-up pass.
        let subs = num(13);
        let timed_s = (num(15) + num(16) * subs) * 8.0 / 1e3;
        assert!(
            timed_s <= num(11) + 0.002,
            "timed-phase CPU {timed_s} s within the configuration's {} s: {r:?}",
            num(11)
        );
        if r[2] == "tcp" {
            assert_eq!(
                r[8], "1.000",
                "tcp is its own baseline at each count: {r:?}"
            );
        }
    }
    for t in ["tcp", "shm-pool"] {
        for n in ["1", "3"] {
            assert!(
                seen.contains(&(t.to_owned(), n.to_owned())),
                "{t} with {n} subscriber(s) in {seen:?}"
            );
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "subscribers",
        "producer_mb_per_s",
        "producer_cpu_ms_per_frame",
        "consumer_cpu_ms_per_frame",
    ] {
        assert!(json[0].get(key).is_some(), "key {key} in {}", json[0]);
    }
}

#[test]
fn waterfall_options_have_help() {
    let help = run(bench().args(["waterfall", "--help"]));
    for opt in ["--hops", "--frames", "--work-ms"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{opt} <")))
            .unwrap_or_else(|| panic!("{opt} in {help}"));
        let text = line.split_once('>').map_or("", |(_, t)| t.trim());
        assert!(
            !text.is_empty() && !text.starts_with('['),
            "{opt} has a description, not only its default: `{line}`"
        );
    }
}

/// The CPUs this test process may run on (its `Cpus_allowed_list`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// Runs a pipeline that must be refused before it starts; returns its stderr.
fn pipeline_refused(args: &[&str]) -> String {
    let out = bench()
        .args(["pipeline", "--transport", "tcp", "--resolution", "64x48"])
        .args(["--frames", "2"])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "`pipeline {}` must fail; stdout:\n{}\nstderr:\n{err}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("per hop"),
        "nothing measured"
    );
    err
}

#[test]
fn pin_is_validated_up_front() {
    let e = pipeline_refused(&["--pin", "100000"]);
    assert!(
        e.contains("--pin") && e.contains("CPU 100000 does not exist"),
        "{e}"
    );
    let e = pipeline_refused(&["--pin", "zero"]);
    assert!(e.contains("--pin") && e.contains("not a CPU number"), "{e}");
    let cpu = allowed_cpus()[0].to_string();
    let two = format!("{cpu},{cpu}");
    let e = pipeline_refused(&["--hops", "1", "--pin", &two]);
    assert!(
        e.contains("--pin") && e.contains("2 CPUs for 3 stages"),
        "{e}"
    );
    let help = run(bench().args(["pipeline", "--help"]));
    assert!(
        help.contains("--pin <CPUS>") && help.contains("sched_setaffinity"),
        "{help}"
    );
}

#[test]
fn pinned_pipelines_run_and_report_their_cpus() {
    let cpus = allowed_cpus();
    let (first, last) = (cpus[0], *cpus.last().unwrap());
    let dir = tempfile::tempdir().unwrap();
    // All stages on one CPU, over shared memory (the configuration the
    // iceoryx2 comparison pins), and one CPU per stage over a socket.
    let one = dir.path().join("one.json");
    let out = run(bench()
        .args(["pipeline", "--transport", "shm-pool", "--hops", "0"])
        .args(["--resolution", "64x48", "--frames", "4"])
        .args(["--pin", &first.to_string(), "--json"])
        .arg(&one));
    assert!(
        out.contains(&format!("pinned: CPUs {first},{first} ")),
        "{out}"
    );
    assert!(out.contains("  hop latency: p50 "), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&one).unwrap()).unwrap();
    assert_eq!(r["pin"], serde_json::json!([first, first]));
    assert_eq!(r["per_hop_us_p99"].as_array().unwrap().len(), 1);
    assert!(r["hop_us_p99"].as_f64().unwrap() >= r["hop_us_p50"].as_f64().unwrap());

    let each = dir.path().join("each.json");
    let list = format!("{first},{last},{first}");
    let out = run(bench()
        .args(["pipeline", "--transport", "unix", "--hops", "1"])
        .args(["--resolution", "64x48", "--frames", "4"])
        .args(["--pin", &list, "--json"])
        .arg(&each));
    assert!(out.contains(&format!("pinned: CPUs {list} ")), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&each).unwrap()).unwrap();
    assert_eq!(r["pin"], serde_json::json!([first, last, first]));
    assert_eq!(r["per_hop_us_p99"].as_array().unwrap().len(), 2);

    // Unpinned: said so, and `pin` is null.
    let out = run(bench()
        .args(["pipeline", "--transport", "unix", "--hops", "0"])
        .args(["--resolution", "64x48", "--frames", "3"]));
    assert!(out.contains("pinned: no"), "{out}");
}
