//! `framewire-bench pipeline`: source -> H filters -> sink, each a process.
//!
//! Two phases. Latency: the sink asks the source for each frame only after the
//! previous one arrived, so no queue forms and each hop's time is pure IPC.
//! Throughput: the source sends as fast as backpressure lets it; the sink's
//! arrival rate is the highest sustainable fps.
//!
//! The harness measures the transport, not itself: a hop's latency is the
//! transport's send stamp to its receive stamp, and nothing of the harness
//! runs or wakes inside that window. The sink arms its timeout before it
//! asks for a frame (re-arming a tokio `Sleep` to a later deadline is an
//! atomic store, no driver wake-up); the source reads the order with a plain
//! blocking read on the thread that then sends (no blocking-pool thread), and
//! the filters have no control traffic until the end. `--pin` places each
//! stage process on a CPU of its own choosing before its runtime starts.

use framewire::{
    Error, Frame, Layout, PixelFormat, PublishOptions, Publisher, RecvMode, SubscribeOptions,
    Subscriber, pattern,
};
use serde::{Deserialize, Serialize};

use crate::proc::{CHILD_TIMEOUT, ControlIn, Peer};
use crate::stats;

/// Settings shared by every stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub transport: String,
    pub hops: usize,
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub warmup: usize,
    pub work_ms: f64,
    /// Extra endpoint options for every stage (`key=value&...`).
    #[serde(default)]
    pub options: String,
    /// The CPU of each stage, source first and sink last (`hops + 2`
    /// entries), or `None` for no pinning.
    #[serde(default)]
    pub pin: Option<Vec<usize>>,
    /// The source writes the whole frame before each send (`--fill`).
    #[serde(default)]
    pub fill: bool,
}

impl Plan {
    fn frame_len(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * 3
    }
}

/// One stage process's orders.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    pub plan: Plan,
    pub name: String,
    pub upstream: Option<String>,
    pub publish: String,
    /// The CPU this stage pins itself to before its runtime starts.
    #[serde(default)]
    pub cpu: Option<usize>,
}

/// One segment of the waterfall.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageTime {
    pub name: String,
    /// `ipc` or `work`.
    pub kind: String,
    pub ms: f64,
}

/// The result file of a pipeline run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub transport: String,
    pub hops: usize,
    pub frames: usize,
    pub resolution: String,
    pub frame_bytes: u64,
    pub work_ms: f64,
    pub hop_us_p50: f64,
    pub hop_us_p99: f64,
    /// Per hop, in order (source -> first filter first).
    pub per_hop_us_p50: Vec<f64>,
    /// Per hop, in order, like `per_hop_us_p50` (absent from older files).
    #[serde(default)]
    pub per_hop_us_p99: Vec<f64>,
    /// The CPU of each stage, source first and sink last; `null` when not pinned.
    #[serde(default)]
    pub pin: Option<Vec<usize>>,
    /// Whether the source wrote each whole frame before sending it (`--fill`).
    #[serde(default)]
    pub fill: bool,
    pub ipc_ms_per_frame: f64,
    pub work_ms_per_frame: f64,
    pub max_fps: f64,
    pub stages: Vec<StageTime>,
}

fn err(e: Error) -> String {
    e.to_string()
}

/// A stage process: source (no upstream) or filter. Called outside the
/// runtime: orders from stdin are read with blocking reads on this thread,
/// between the `block_on` calls that do the transport's work.
pub fn run_stage(stage: Stage, rt: &tokio::runtime::Runtime) -> Result<(), String> {
    let mut publ = rt
        .block_on(framewire::publish(
            &stage.publish,
            PublishOptions::default().trace_name(stage.name.clone()),
        ))
        .map_err(err)?;
    println!("ENDPOINT {}", publ.endpoint().url());
    let mut orders = ControlIn::new();
    match &stage.upstream {
        None => {
            rt.block_on(publ.wait_for_subscribers(1, CHILD_TIMEOUT))
                .map_err(err)?;
            println!("READY");
            source(&stage.plan, &mut publ, &mut orders, rt)?;
            rt.block_on(publ.flush()).map_err(err)?;
        }
        Some(up) => {
            let mut sub = rt
                .block_on(framewire::subscribe(
                    up,
                    SubscribeOptions::default().recv_mode(RecvMode::View),
                ))
                .map_err(err)?;
            rt.block_on(publ.wait_for_subscribers(1, CHILD_TIMEOUT))
                .map_err(err)?;
            println!("READY");
            let work = std::time::Duration::from_secs_f64(stage.plan.work_ms / 1e3);
            rt.block_on(async {
                loop {
                    match sub.recv().await {
                        Ok(f) => {
                            if !work.is_zero() {
                                tokio::time::sleep(work).await;
                            }
                            // The same payload goes on: zero-copy where the backend can.
                            publ.send(f).await.map_err(err)?;
                        }
                        Err(Error::Disconnected { .. }) => break,
                        Err(e) => return Err(format!("{}: {e}", stage.name)),
                    }
                }
                publ.flush().await.map_err(err)
            })?;
        }
    }
    // Stay until told (stdin closes): our memory may still be read downstream.
    let _ = orders.line(CHILD_TIMEOUT);
    Ok(())
}

/// Loans (or builds) frame `i` and sends it.
async fn send_one(
    publ: &mut Box<dyn Publisher>,
    i: u64,
    in_place: bool,
    ready: &bytes::Bytes,
    layout: &Layout,
    fill: bool,
) -> Result<(), String> {
    let len = ready.len();
    if in_place {
        // A camera would have written the frame here; we stamp it only,
        // unless told to write it all (`--fill`).
        let mut loan = publ.loan(len).await.map_err(err)?;
        if fill {
            loan.copy_from_slice(ready);
        }
        if len >= 8 {
            loan[..8].copy_from_slice(&i.to_le_bytes());
        }
        loan.layout = layout.clone();
        publ.send_loan(loan).await.map_err(err)
    } else if fill {
        // Written into a buffer of ours, then handed over (and copied by a
        // transport that does not lend its memory).
        let mut buf = ready.to_vec();
        if len >= 8 {
            buf[..8].copy_from_slice(&i.to_le_bytes());
        }
        let payload = bytes::Bytes::from(buf);
        publ.send(Frame::new(payload).with_layout(layout.clone()))
            .await
            .map_err(err)
    } else {
        publ.send(Frame::new(ready.clone()).with_layout(layout.clone()))
            .await
            .map_err(err)
    }
}

fn source(
    plan: &Plan,
    publ: &mut Box<dyn Publisher>,
    orders: &mut ControlIn,
    rt: &tokio::runtime::Runtime,
) -> Result<(), String> {
    let len = plan.frame_len() as usize;
    let layout = Layout::Image {
        width: plan.width,
        height: plan.height,
        format: PixelFormat::Rgb8,
    };
    let in_place = framewire::capabilities(publ.endpoint().url())
        .map(|c| c.loan_in_place)
        .unwrap_or(false);
    let ready = pattern::make(0, len);
    // Latency phase: one frame per request from the sink. The order is read
    // here, on the thread that sends, before the frame's send stamp.
    for i in 0..(plan.warmup + plan.frames) as u64 {
        match orders.line(CHILD_TIMEOUT) {
            Ok(Some(_)) => rt.block_on(send_one(publ, i, in_place, &ready, &layout, plan.fill))?,
            Ok(None) => return Err("the sink stopped asking for frames".into()),
            Err(e) => return Err(format!("the sink stopped asking for frames: {e}")),
        }
    }
    // Throughput phase, on the sink's word.
    match orders.line(CHILD_TIMEOUT) {
        Ok(Some(_)) => {}
        Ok(None) => return Err("no start signal for the throughput phase".into()),
        Err(e) => return Err(format!("no start signal for the throughput phase: {e}")),
    }
    rt.block_on(async {
        for i in 0..plan.frames as u64 {
            send_one(publ, i, in_place, &ready, &layout, plan.fill).await?;
        }
        Ok(())
    })
}

/// Runs the whole pipeline; this process is the sink.
pub async fn run(plan: Plan, progress: &indicatif::ProgressBar) -> Result<Report, String> {
    crate::transports::check(std::slice::from_ref(&plan.transport))?;
    if let Some(pin) = &plan.pin
        && pin.len() != plan.hops + 2
    {
        return Err(format!(
            "--pin: {} CPUs for {} stages",
            pin.len(),
            plan.hops + 2
        ));
    }
    let bytes = plan.frame_len();
    let mut peers: Vec<Peer> = Vec::new();
    let mut upstream: Option<String> = None;
    for k in 0..=plan.hops {
        let name = if k == 0 {
            "source".to_owned()
        } else {
            format!("filter{k}")
        };
        let stage = Stage {
            plan: plan.clone(),
            name: name.clone(),
            upstream: upstream.clone(),
            publish: crate::transports::url_with(&plan.transport, bytes, &plan.options)?,
            cpu: plan.pin.as_ref().map(|p| p[k]),
        };
        let json = serde_json::to_string(&stage).map_err(|e| e.to_string())?;
        let mut peer = Peer::spawn(&name, "__stage", &json)?;
        upstream = Some(peer.expect("ENDPOINT ").await?);
        peers.push(peer);
    }
    let last = upstream.ok_or("no stage")?;
    let mut sink =
        framewire::subscribe(&last, SubscribeOptions::default().recv_mode(RecvMode::View))
            .await
            .map_err(err)?;
    for p in &mut peers {
        p.expect("READY").await?;
    }
    let total = plan.warmup + 2 * plan.frames;
    progress.set_length(total as u64);
    let mut hop_lat: Vec<Vec<f64>> = vec![Vec::new(); plan.hops + 1];
    let mut work: Vec<Vec<f64>> = vec![Vec::new(); plan.hops];
    // One timer for the whole run, re-armed before each request: moving a
    // registered deadline later is an atomic store, where a fresh
    // `timeout()` per frame registers a timer (and may wake the driver's
    // thread) inside the timed window.
    let deadline = tokio::time::sleep(CHILD_TIMEOUT);
    tokio::pin!(deadline);
    let rearm = |d: std::pin::Pin<&mut tokio::time::Sleep>| {
        d.reset(tokio::time::Instant::now() + CHILD_TIMEOUT)
    };
    let recv = async |sink: &mut Box<dyn Subscriber>,
                      deadline: std::pin::Pin<&mut tokio::time::Sleep>|
           -> Result<Frame, String> {
        tokio::select! {
            biased;
            r = sink.recv() => r.map_err(|e| format!("sink: {e}")),
            _ = deadline => Err(format!("sink: no frame in {CHILD_TIMEOUT:?}")),
        }
    };
    for i in 0..plan.warmup + plan.frames {
        rearm(deadline.as_mut());
        peers[0].say("next").await?;
        let f = recv(&mut sink, deadline.as_mut()).await?;
        progress.inc(1);
        if f.payload.len() as u64 != bytes || f.trace.len() != plan.hops + 1 {
            return Err(format!(
                "frame {i}: {} bytes and {} hops, expected {bytes} and {}",
                f.payload.len(),
                f.trace.len(),
                plan.hops + 1
            ));
        }
        if i < plan.warmup {
            continue;
        }
        for (k, h) in f.trace.iter().enumerate() {
            hop_lat[k].push(h.received_ns.saturating_sub(h.sent_ns) as f64 / 1e3);
            if k > 0 {
                let prev = &f.trace[k - 1];
                work[k - 1].push(h.sent_ns.saturating_sub(prev.received_ns) as f64 / 1e6);
            }
        }
    }
    peers[0].say("go").await?;
    let mut first = None;
    let mut last_t = 0;
    for _ in 0..plan.frames {
        rearm(deadline.as_mut());
        let _f = recv(&mut sink, deadline.as_mut()).await?;
        let now = framewire::monotonic_ns();
        first.get_or_insert(now);
        last_t = now;
        progress.inc(1);
    }
    drop(sink);
    // The source ends on stdin EOF; each filter then sees its upstream go.
    for p in peers {
        p.finish().await?;
    }
    let span = last_t.saturating_sub(first.unwrap_or(last_t)) as f64 / 1e9;
    let max_fps = if plan.frames > 1 && span > 0.0 {
        (plan.frames - 1) as f64 / span
    } else {
        0.0
    };
    let mut all: Vec<f64> = hop_lat.iter().flatten().copied().collect();
    let per_hop: Vec<f64> = hop_lat.iter_mut().map(|v| stats::median(v)).collect();
    let per_hop_p99: Vec<f64> = hop_lat
        .iter_mut()
        .map(|v| stats::percentile(v, 0.99))
        .collect();
    let per_work: Vec<f64> = work.iter_mut().map(|v| stats::median(v)).collect();
    let mut stages = Vec::new();
    for k in 0..=plan.hops {
        let from = if k == 0 {
            "source".to_owned()
        } else {
            format!("filter{k}")
        };
        let to = if k == plan.hops {
            "sink".to_owned()
        } else {
            format!("filter{}", k + 1)
        };
        stages.push(StageTime {
            name: format!("{from}->{to}"),
            kind: "ipc".into(),
            ms: per_hop[k] / 1e3,
        });
        if k < plan.hops {
            stages.push(StageTime {
                name: format!("filter{}", k + 1),
                kind: "work".into(),
                ms: per_work[k],
            });
        }
    }
    Ok(Report {
        transport: plan.transport.clone(),
        hops: plan.hops,
        frames: plan.frames,
        resolution: format!("{}x{}", plan.width, plan.height),
        frame_bytes: bytes,
        work_ms: plan.work_ms,
        hop_us_p50: stats::percentile(&mut all, 0.50),
        hop_us_p99: stats::percentile(&mut all, 0.99),
        per_hop_us_p50: per_hop.clone(),
        per_hop_us_p99: per_hop_p99,
        pin: plan.pin.clone(),
        fill: plan.fill,
        ipc_ms_per_frame: per_hop.iter().sum::<f64>() / 1e3,
        work_ms_per_frame: per_work.iter().fold(0.0, |a, b| a + b),
        max_fps,
        stages,
    })
}

/// Prints a report for people.
pub fn print(r: &Report) {
    println!(
        "pipeline {} | {} filter(s) | {} ({:.1} MB) | {} frames | work {} ms per filter",
        r.transport,
        r.hops,
        r.resolution,
        r.frame_bytes as f64 / 1e6,
        r.frames,
        r.work_ms
    );
    for (k, us) in r.per_hop_us_p50.iter().enumerate() {
        println!("  hop {k}: p50 {us:.0} us");
    }
    println!(
        "  per hop: p50 {:.0} us, p99 {:.0} us | IPC per frame {:.3} ms | work per frame {:.3} ms | max {:.1} fps",
        r.hop_us_p50, r.hop_us_p99, r.ipc_ms_per_frame, r.work_ms_per_frame, r.max_fps
    );
    println!("{}", latency_line(r.hop_us_p50, r.hop_us_p99, r.frames));
    match &r.pin {
        Some(p) => println!(
            "  pinned: CPUs {} (source first, sink last)",
            crate::pin::fmt_list(p)
        ),
        None => println!("  pinned: no"),
    }
}

/// The precise latency line, `  hop latency: p50 7.412 us, p99 12.301 us
/// (send -> recv, 60 frames per hop)`; the iceoryx2 peer
/// (`benches/iceoryx2-pingpong`) prints the same line for comparison.
pub fn latency_line(p50_us: f64, p99_us: f64, frames: usize) -> String {
    format!(
        "  hop latency: p50 {p50_us:.3} us, p99 {p99_us:.3} us (send -> recv, {frames} frames per hop)"
    )
}
