//! `framewire-bench`: every backend compiled in, side by side in one run,
//! across real processes. See `framewire-bench --help`.

mod pin;
mod pipeline;
mod proc;
mod report;
mod stats;
mod sweep;
mod transports;
mod waterfall;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use framewire::endpoint::parse_size;
use framewire::fmt_size;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use sweep::{Kind, SendMode};

/// Compare framewire's backends on this machine, across real processes.
///
/// With no subcommand: a quick comparison of every compiled backend
/// (2, 8 and 32 MiB frames of bytes, 3 runs; under a minute).
#[derive(Parser)]
#[command(name = "framewire-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Throughput and latency over payload sizes x kinds x transports.
    Sweep(SweepArgs),
    /// A chain of processes, source -> filters -> sink, at a video resolution.
    Pipeline(PipelineArgs),
    /// Two pipeline results (files, or a git ref) on one time axis.
    Waterfall(WaterfallArgs),
    #[command(hide = true, name = "__produce")]
    Produce { config: String },
    #[command(hide = true, name = "__consume")]
    Consume { config: String },
    #[command(hide = true, name = "__stage")]
    Stage { config: String },
    #[command(hide = true, name = "__subscribe")]
    Subscribe { config: String },
}

#[derive(Args, Clone)]
struct SweepArgs {
    /// Transports, comma separated; the first is the speedup baseline [default: all compiled in, tcp first].
    #[arg(long, value_delimiter = ',')]
    transports: Vec<String>,
    /// Payload sizes (B, KiB, MiB, GiB).
    #[arg(long, value_delimiter = ',', default_value = "2MiB,8MiB,32MiB", value_parser = parse_size)]
    sizes: Vec<u64>,
    /// Payload kinds.
    #[arg(long, value_delimiter = ',', default_value = "bytes,tensor,packets")]
    kinds: Vec<Kind>,
    /// Frames per run (at least 1).
    #[arg(long, default_value_t = 50, value_parser = at_least_one)]
    num_items: usize,
    /// Measured runs per configuration, after one discarded warm-up pass (at least 1; 3 or more for a confidence interval worth reading).
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    runs: usize,
    /// Fan-out: subscriber counts to sweep, e.g. `1,8`. One publisher sends
    /// every frame to N subscribers, each in a process of its own (as
    /// separate programs would be deployed: own mappings, own CPU account),
    /// so producer CPU per frame is the publisher's cost of serving N and
    /// MB/s is per subscriber. 1 to 64.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = subscriber_count)]
    subscribers: Vec<usize>,
    /// How the producer hands payloads over: `copy`, `loan`, or both (`copy,loan`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "copy")]
    send: Vec<SendMode>,
    /// Receive owned copies instead of views (views are the default here).
    #[arg(long)]
    owned: bool,
    /// The producer writes every byte of each frame and the consumer reads every byte.
    #[arg(long)]
    touch: bool,
    /// Run each configuration in a fresh consumer process (makes CPU and peak RSS per configuration).
    #[arg(long)]
    isolate: bool,
    /// Write the rows as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the rows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG plot of MB/s against size.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Extra endpoint options for every transport, e.g. `busy_poll=50us` (`key=value&...`).
    #[arg(long, default_value = "")]
    options: String,
}

#[derive(Args, Clone)]
struct PipelineArgs {
    /// Transport: tcp, unix, zmq, shm-ring, shm-pool, zenoh (with the `zenoh` feature).
    #[arg(long)]
    transport: String,
    /// Filters between source and sink.
    #[arg(long, default_value_t = 2)]
    hops: usize,
    /// Frame size as WIDTHxHEIGHT of RGB pixels (3840x2160 is 24.9 MB).
    #[arg(long, default_value = "3840x2160", value_parser = parse_resolution)]
    resolution: (u32, u32),
    /// Frames measured in each phase (latency, then throughput).
    #[arg(long, default_value_t = 60)]
    frames: usize,
    /// Simulated work per filter per frame, in ms (a sleep: it uses no CPU).
    #[arg(long, default_value_t = 0.0)]
    work_ms: f64,
    /// Write the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Extra endpoint options for every stage, e.g. `busy_poll=50us` (`key=value&...`).
    #[arg(long, default_value = "")]
    options: String,
    /// Pin each stage process to a CPU (sched_setaffinity, before its
    /// runtime starts, so all its threads stay there): one CPU for every
    /// stage (`--pin 0`), or one per stage, source first, then the filters,
    /// sink last (`--pin 0,1,1` for `--hops 1`: hops + 2 entries). A CPU this
    /// process may not run on is refused. Unpinned by default.
    #[arg(long, value_delimiter = ',', value_parser = pin::parse_cpu, value_name = "CPUS")]
    pin: Vec<usize>,
    /// The source writes the whole frame before each send, as a camera
    /// would (into the loaned slot where the transport lends one), instead
    /// of stamping its first 8 bytes only. The write is outside the timed
    /// window; what it changes is the state (caches, CPU) the hand-off
    /// starts from. Off by default.
    #[arg(long)]
    fill: bool,
}

#[derive(Args)]
struct WaterfallArgs {
    /// Baseline result file (from `pipeline --json`).
    #[arg(long, conflicts_with = "baseline_ref")]
    baseline: Option<PathBuf>,
    /// Or: build and run the same pipeline at this git ref in a temporary worktree.
    #[arg(long)]
    baseline_ref: Option<String>,
    /// Current result file; without it the pipeline is run now with the arguments below.
    #[arg(long)]
    current: Option<PathBuf>,
    /// Pipeline run by this command (at --baseline-ref, or now without --current): transport, as in `pipeline --transport`.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Filters between source and sink, as in `pipeline --hops`.
    #[arg(long, default_value_t = 2)]
    hops: usize,
    /// Frame size as WIDTHxHEIGHT of RGB pixels, as in `pipeline --resolution`.
    #[arg(long, default_value = "3840x2160", value_parser = parse_resolution)]
    resolution: (u32, u32),
    /// Frames measured in each phase, as in `pipeline --frames`.
    #[arg(long, default_value_t = 30)]
    frames: usize,
    /// Simulated work per filter per frame in ms (a sleep), as in `pipeline --work-ms`.
    #[arg(long, default_value_t = 0.0)]
    work_ms: f64,
    /// Extra endpoint options for every stage, as in `pipeline --options`.
    #[arg(long, default_value = "")]
    options: String,
}

/// Most subscribers `--subscribers` takes (shm-pool serves at most 64).
const MAX_SUBSCRIBERS: usize = 64;

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 measures nothing)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn subscriber_count(s: &str) -> Result<usize, String> {
    let n = at_least_one(s)?;
    if n > MAX_SUBSCRIBERS {
        return Err(format!("{n} subscribers; give 1 to {MAX_SUBSCRIBERS}"));
    }
    Ok(n)
}

fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not WIDTHxHEIGHT, e.g. 3840x2160"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{v}` in `{s}` is not a positive number"))
    };
    Ok((p(w)?, p(h)?))
}

fn progress(len: u64, what: &str) -> ProgressBar {
    // indicatif draws nothing when stderr is not a terminal.
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Refuses a sweep that would measure nothing or that a backend cannot run,
/// before anything starts.
fn validate(args: &SweepArgs, transports: &[String]) -> Result<(), String> {
    if args.transports.iter().any(|t| t.trim().is_empty()) {
        return Err(
            "--transports: an empty name in the list; give names such as `tcp,shm-pool`".into(),
        );
    }
    transports::check(transports)?;
    let empty = |what: &str| format!("--{what}: the list is empty; give at least one value");
    if args.sizes.is_empty() {
        return Err(empty("sizes"));
    }
    if args.kinds.is_empty() {
        return Err(empty("kinds"));
    }
    if args.send.is_empty() {
        return Err(empty("send"));
    }
    if args.subscribers.is_empty() {
        return Err(empty("subscribers"));
    }
    if args.sizes.contains(&0) {
        return Err("--sizes: a payload of 0 B measures nothing; give sizes of 1 B or more".into());
    }
    for t in transports {
        for &size in &args.sizes {
            let url = transports::url_with(t, size, &args.options)?;
            let caps = framewire::capabilities(&url)
                .map_err(|e| format!("{t} cannot run {} frames: {e}", fmt_size(size)))?;
            if size > caps.max_payload {
                return Err(format!(
                    "--sizes {}: {t} accepts payloads up to {} (its max_payload for {url}); {}, or leave {t} out of --transports",
                    fmt_size(size),
                    fmt_size(caps.max_payload),
                    transports::raise_hint(t),
                ));
            }
            transports::check_memory(t, size)?;
        }
    }
    Ok(())
}

async fn sweep(args: SweepArgs) -> Result<(), String> {
    let transports = if args.transports.is_empty() {
        transports::compiled()
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.transports.clone()
    };
    validate(&args, &transports)?;
    let baseline = transports.first().cloned().ok_or("no transport to run")?;
    let mut plan = Vec::new();
    for &send in &args.send {
        for &subscribers in &args.subscribers {
            for &size in &args.sizes {
                for &kind in &args.kinds {
                    for t in &transports {
                        plan.push((send, subscribers, size, kind, t.clone()));
                    }
                }
            }
        }
    }
    let configs: Vec<sweep::Config> = plan
        .into_iter()
        .map(|(send, subscribers, size, kind, transport)| {
            Ok(sweep::Config {
                url: transports::url_with(&transport, size, &args.options)?,
                transport,
                size,
                kind,
                num_items: args.num_items,
                runs: args.runs,
                send,
                view: !args.owned,
                touch: args.touch,
                subscribers,
            })
        })
        .collect::<Result<_, String>>()?;
    let pb = progress(configs.len() as u64, "sweep");
    let mut rows = Vec::new();
    for cfg in &configs {
        pb.set_message(format!(
            "{} {} {} {}{}",
            cfg.transport,
            cfg.kind.name(),
            fmt_size(cfg.size),
            cfg.send.name(),
            if cfg.subscribers > 1 {
                format!(" x{} subscribers", cfg.subscribers)
            } else {
                String::new()
            }
        ));
        let row = if args.isolate {
            sweep::consume_isolated(cfg).await?
        } else {
            sweep::consume(cfg).await?
        };
        rows.push(row);
        pb.inc(1);
        sweep::settle().await;
    }
    pb.finish_and_clear();
    sweep::add_speedups(&mut rows, &baseline);
    println!("{}", report::table(&rows));
    println!(
        "subs: subscribers, each a process of its own; MB/s, items/s and latency are per subscriber; \
         producer MB/s is what the publisher's sends achieved; CPU ms/frame is process CPU \
         (getrusage) over the measured runs only: the producer's per frame sent, the \
         consumer's per frame received (mean over subscribers)."
    );
    println!(
        "{} frames x {} runs per row after a discarded warm-up pass; MB/s is the mean over runs \
         with its 95% CI; latency is one-way (send stamp to receipt, CLOCK_MONOTONIC) over all \
         measured frames; speedup is against {baseline}; send={}, recv={}{}.",
        args.num_items,
        args.runs,
        args.send
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(","),
        if args.owned { "owned" } else { "view" },
        if args.isolate {
            "; CPU and peak RSS per configuration (consumer + producer processes)"
        } else {
            "; without --isolate, CPU is per configuration but peak RSS is this process's high-water mark"
        }
    );
    if let Some(p) = &args.csv {
        report::write_csv(p, &rows)?;
    }
    if let Some(p) = &args.json {
        report::write_json(p, &rows)?;
    }
    if let Some(p) = &args.plot {
        report::write_svg(p, &rows, args.runs)?;
    }
    Ok(())
}

fn plan_of(a: &PipelineArgs) -> Result<pipeline::Plan, String> {
    Ok(pipeline::Plan {
        transport: a.transport.clone(),
        hops: a.hops,
        width: a.resolution.0,
        height: a.resolution.1,
        frames: a.frames.max(2),
        warmup: 5,
        work_ms: a.work_ms,
        options: a.options.clone(),
        pin: pin::per_stage(&a.pin, a.hops + 2)?,
        fill: a.fill,
    })
}

async fn run_pipeline(a: &PipelineArgs) -> Result<pipeline::Report, String> {
    let plan = plan_of(a)?;
    let pb = progress(0, &format!("pipeline {}", a.transport));
    let r = pipeline::run(plan, &pb).await;
    pb.finish_and_clear();
    r
}

async fn main_async(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        None => {
            // The quick default comparison.
            sweep(SweepArgs {
                transports: Vec::new(),
                sizes: vec![2 << 20, 8 << 20, 32 << 20],
                kinds: vec![Kind::Bytes],
                num_items: 20,
                runs: 3,
                send: vec![SendMode::Copy],
                owned: false,
                touch: false,
                isolate: false,
                subscribers: vec![1],
                csv: None,
                json: None,
                plot: None,
                options: String::new(),
            })
            .await
        }
        Some(Cmd::Sweep(a)) => sweep(a).await,
        Some(Cmd::Pipeline(a)) => {
            let r = run_pipeline(&a).await?;
            pipeline::print(&r);
            if let Some(p) = &a.json {
                let s = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
                std::fs::write(p, s + "\n").map_err(|e| format!("writing {}: {e}", p.display()))?;
            }
            Ok(())
        }
        Some(Cmd::Waterfall(w)) => {
            let pa = PipelineArgs {
                transport: w.transport.clone(),
                hops: w.hops,
                resolution: w.resolution,
                frames: w.frames,
                work_ms: w.work_ms,
                json: None,
                options: w.options.clone(),
                pin: Vec::new(),
                fill: false,
            };
            let args = vec![
                "--transport".to_owned(),
                pa.transport.clone(),
                "--hops".into(),
                pa.hops.to_string(),
                "--resolution".into(),
                format!("{}x{}", pa.resolution.0, pa.resolution.1),
                "--frames".into(),
                pa.frames.to_string(),
                "--work-ms".into(),
                pa.work_ms.to_string(),
            ];
            let mut args = args;
            if !pa.options.is_empty() {
                args.push("--options".into());
                args.push(pa.options.clone());
            }
            let base = match (&w.baseline, &w.baseline_ref) {
                (Some(p), _) => waterfall::load(p)?,
                (None, Some(r)) => {
                    let r = r.clone();
                    tokio::task::spawn_blocking(move || waterfall::run_at_ref(&r, &args))
                        .await
                        .map_err(|e| e.to_string())??
                }
                (None, None) => return Err("give --baseline FILE or --baseline-ref GITREF".into()),
            };
            let cur = match &w.current {
                Some(p) => waterfall::load(p)?,
                None => run_pipeline(&pa).await?,
            };
            waterfall::print(&base, &cur);
            Ok(())
        }
        Some(Cmd::Produce { config }) => {
            let cfg = serde_json::from_str(&config).map_err(|e| e.to_string())?;
            sweep::produce(cfg).await
        }
        Some(Cmd::Consume { config }) => {
            let cfg: sweep::Config = serde_json::from_str(&config).map_err(|e| e.to_string())?;
            let row = sweep::consume(&cfg).await?;
            println!(
                "ROW {}",
                serde_json::to_string(&row).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Some(Cmd::Subscribe { config }) => {
            let cfg = serde_json::from_str(&config).map_err(|e| e.to_string())?;
            sweep::subscriber(cfg).await
        }
        Some(Cmd::Stage { .. }) => Err("a stage runs outside the runtime (see main)".into()),
    }
}

/// The CPU this process pins itself to before anything else starts: a
/// pipeline stage's own, or the sink's (the last of `--pin`).
fn own_cpu(cli: &Cli) -> Result<Option<usize>, String> {
    match &cli.cmd {
        Some(Cmd::Pipeline(a)) => {
            Ok(pin::per_stage(&a.pin, a.hops + 2)?.and_then(|p| p.last().copied()))
        }
        _ => Ok(None),
    }
}

fn fail(e: String) -> ! {
    eprintln!("framewire-bench: {e}");
    std::process::exit(1);
}

fn main() {
    let cli = Cli::parse();
    let stage: Option<pipeline::Stage> = match &cli.cmd {
        Some(Cmd::Stage { config }) => {
            Some(serde_json::from_str(config).unwrap_or_else(|e| fail(e.to_string())))
        }
        _ => None,
    };
    // Pinned before the runtime exists: its threads inherit the mask.
    let cpu = match &stage {
        Some(s) => s.cpu,
        None => own_cpu(&cli).unwrap_or_else(|e| fail(e)),
    };
    if let Some(c) = cpu {
        pin::pin_self(c).unwrap_or_else(|e| fail(e));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("framewire-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let result = match stage {
        // A stage's control path runs on this thread, outside the runtime.
        Some(s) => pipeline::run_stage(s, &rt),
        None => rt.block_on(main_async(cli)),
    };
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Err(e) = result {
        eprintln!("framewire-bench: {e}");
        std::process::exit(1);
    }
}
