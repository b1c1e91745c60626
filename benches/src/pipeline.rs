//! `framewire-bench pipeline`: source -> H filters -> sink, each a process.
//!
//! Two phases. Latency: the sink asks the source for each frame only after the
//! previous one arrived, so no queue forms and each hop's time is pure IPC.
//! Throughput: the source sends as fast as backpressure lets it; the sink's
//! arrival rate is the highest sustainable fps.

use framewire::{
    Error, Frame, Layout, PixelFormat, PublishOptions, Publisher, RecvMode, SubscribeOptions,
    Subscriber, pattern,
};
use serde::{Deserialize, Serialize};

use crate::proc::{self, CHILD_TIMEOUT, Peer};
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
    pub ipc_ms_per_frame: f64,
    pub work_ms_per_frame: f64,
    pub max_fps: f64,
    pub stages: Vec<StageTime>,
}

fn err(e: Error) -> String {
    e.to_string()
}

/// A stage process: source (no upstream) or filter.
pub async fn run_stage(stage: Stage) -> Result<(), String> {
    let mut publ = framewire::publish(
        &stage.publish,
        PublishOptions::default().trace_name(stage.name.clone()),
    )
    .await
    .map_err(err)?;
    println!("ENDPOINT {}", publ.endpoint().url());
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    match &stage.upstream {
        None => {
            publ.wait_for_subscribers(1, CHILD_TIMEOUT)
                .await
                .map_err(err)?;
            println!("READY");
            source(&stage.plan, &mut publ, &mut lines).await?;
            publ.flush().await.map_err(err)?;
            // Stay until told: our memory may still be read downstream.
            let _ = tokio::time::timeout(CHILD_TIMEOUT, proc::stdin_line(&mut lines)).await;
        }
        Some(up) => {
            let mut sub =
                framewire::subscribe(up, SubscribeOptions::default().recv_mode(RecvMode::View))
                    .await
                    .map_err(err)?;
            publ.wait_for_subscribers(1, CHILD_TIMEOUT)
                .await
                .map_err(err)?;
            println!("READY");
            let work = std::time::Duration::from_secs_f64(stage.plan.work_ms / 1e3);
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
            publ.flush().await.map_err(err)?;
            let _ = tokio::time::timeout(CHILD_TIMEOUT, proc::stdin_line(&mut lines)).await;
        }
    }
    Ok(())
}

async fn source(
    plan: &Plan,
    publ: &mut Box<dyn Publisher>,
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
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
    let send = async |publ: &mut Box<dyn Publisher>, i: u64| -> Result<(), String> {
        if in_place {
            // A camera would have written the frame here; we stamp it only.
            let mut loan = publ.loan(len).await.map_err(err)?;
            if len >= 8 {
                loan[..8].copy_from_slice(&i.to_le_bytes());
            }
            loan.layout = layout.clone();
            publ.send_loan(loan).await.map_err(err)
        } else {
            publ.send(Frame::new(ready.clone()).with_layout(layout.clone()))
                .await
                .map_err(err)
        }
    };
    // Latency phase: one frame per request from the sink.
    for i in 0..(plan.warmup + plan.frames) as u64 {
        match tokio::time::timeout(CHILD_TIMEOUT, proc::stdin_line(lines)).await {
            Ok(Some(_)) => send(publ, i).await?,
            _ => return Err("the sink stopped asking for frames".into()),
        }
    }
    // Throughput phase, on the sink's word.
    match tokio::time::timeout(CHILD_TIMEOUT, proc::stdin_line(lines)).await {
        Ok(Some(_)) => {}
        _ => return Err("no start signal for the throughput phase".into()),
    }
    for i in 0..plan.frames as u64 {
        send(publ, i).await?;
    }
    Ok(())
}

/// Runs the whole pipeline; this process is the sink.
pub async fn run(plan: Plan, progress: &indicatif::ProgressBar) -> Result<Report, String> {
    crate::transports::check(std::slice::from_ref(&plan.transport))?;
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
    let recv = async |sink: &mut Box<dyn Subscriber>| -> Result<Frame, String> {
        match tokio::time::timeout(CHILD_TIMEOUT, sink.recv()).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => Err(format!("sink: {e}")),
            Err(_) => Err(format!("sink: no frame in {CHILD_TIMEOUT:?}")),
        }
    };
    for i in 0..plan.warmup + plan.frames {
        peers[0].say("next").await?;
        let f = recv(&mut sink).await?;
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
        let _f = recv(&mut sink).await?;
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
}
