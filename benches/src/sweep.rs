//! `framewire-bench sweep`: sizes x kinds x transports, producer in a child
//! process, consumer here (or, with `--isolate`, in a fresh child of its own).

use std::time::Duration;

use bytes::Bytes;
use framewire::{
    DType, Error, Frame, Layout, PublishOptions, Publisher, RecvMode, SubscribeOptions, Subscriber,
    monotonic_ns, pattern,
};
use serde::{Deserialize, Serialize};

use crate::proc::{self, CHILD_TIMEOUT, Peer};
use crate::stats;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Opaque bytes.
    Bytes,
    /// An f32 tensor.
    Tensor,
    /// One frame carrying many small parts (a batch of encoded video packets).
    Packets,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bytes => "bytes",
            Kind::Tensor => "tensor",
            Kind::Packets => "packets",
        }
    }

    /// The layout of a payload of `size` bytes of this kind.
    pub fn layout(self, size: u64) -> Layout {
        match self {
            Kind::Bytes => Layout::Raw,
            Kind::Tensor if size.is_multiple_of(4) && size >= 4096 => Layout::Tensor {
                dtype: DType::F32,
                shape: vec![size / 4096, 1024],
            },
            Kind::Tensor => Layout::Tensor {
                dtype: DType::U8,
                shape: vec![size],
            },
            Kind::Packets => {
                // Packet sizes of an encoded stream: 1 KiB to 96 KiB, varied.
                let mut parts = Vec::new();
                let (mut left, mut x) = (size, 0x2545_f491_4f6c_dd1du64);
                while left > 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = (1024 + x % (95 * 1024)).min(left);
                    parts.push(p);
                    left -= p;
                }
                Layout::Parts(parts)
            }
        }
    }
}

/// How the producer hands payloads over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// `send(frame)` with a ready `Bytes` (shared-memory backends copy it in once).
    Copy,
    /// `loan(len)` -> write in place -> `send_loan` (zero copies on shm-pool).
    Loan,
}

impl SendMode {
    pub fn name(self) -> &'static str {
        match self {
            SendMode::Copy => "copy",
            SendMode::Loan => "loan",
        }
    }
}

/// One measured configuration, as the producer child receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub transport: String,
    pub url: String,
    pub size: u64,
    pub kind: Kind,
    pub num_items: usize,
    pub runs: usize,
    pub send: SendMode,
    pub view: bool,
    /// The producer writes every byte of every frame, and the consumer reads every byte.
    pub touch: bool,
    /// Subscribers, each in a process of its own (the first in the consumer process).
    #[serde(default = "one")]
    pub subscribers: usize,
}

fn one() -> usize {
    1
}

/// One row of results: the CSV columns, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub size_bytes: u64,
    pub kind: String,
    pub transport: String,
    pub send: String,
    pub items_per_s: f64,
    pub mb_per_s: f64,
    pub mb_per_s_lo: f64,
    pub mb_per_s_hi: f64,
    pub speedup: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub cpu_s: f64,
    pub peak_rss_mb: f64,
    /// Subscribers the frames fanned out to.
    pub subscribers: usize,
    /// Payload MB/s the publisher got through `send`/`send_loan` (timed phase).
    pub producer_mb_per_s: f64,
    /// Publisher process CPU per frame sent, timed phase only.
    pub producer_cpu_ms_per_frame: f64,
    /// Subscriber process CPU per frame received, timed phase only (mean over subscribers).
    pub consumer_cpu_ms_per_frame: f64,
}

/// The CSV header line.
pub const CSV_HEADER: &str = "size_bytes,kind,transport,send,items_per_s,mb_per_s,mb_per_s_lo,mb_per_s_hi,speedup,lat_p50_us,lat_p99_us,cpu_s,peak_rss_mb,subscribers,producer_mb_per_s,producer_cpu_ms_per_frame,consumer_cpu_ms_per_frame";

impl Row {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.1},{:.1},{:.3},{:.1},{},{:.3},{:.4},{:.4}",
            self.size_bytes,
            self.kind,
            self.transport,
            self.send,
            self.items_per_s,
            self.mb_per_s,
            self.mb_per_s_lo,
            self.mb_per_s_hi,
            self.speedup,
            self.lat_p50_us,
            self.lat_p99_us,
            self.cpu_s,
            self.peak_rss_mb,
            self.subscribers,
            self.producer_mb_per_s,
            self.producer_cpu_ms_per_frame,
            self.consumer_cpu_ms_per_frame
        )
    }
}

fn err(e: Error) -> String {
    e.to_string()
}

/// What the producer measured over the timed phase (every pass after the warm-up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Produced {
    /// Frames sent in the timed phase.
    pub frames: u64,
    /// From the first send of the first measured pass to the end of the final flush.
    pub secs: f64,
    /// CPU seconds of the producer process over the same span.
    pub cpu_s: f64,
}

/// What one subscriber measured over the timed phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Received {
    /// Payload MB/s of each measured pass.
    pub run_mb_s: Vec<f64>,
    /// Frames per second of each measured pass.
    pub run_items_s: Vec<f64>,
    /// One-way latency of every measured frame, in us.
    pub lats_us: Vec<f64>,
    /// Frames received in the timed phase.
    pub frames: u64,
    /// CPU seconds of the subscriber's process over the timed phase.
    pub cpu_s: f64,
}

/// The producer child: publish, announce the endpoint, wait for every
/// subscriber, send a warm-up pass and `runs` measured passes of `num_items`
/// frames, report `PRODUCED {json}`, then wait for stdin to close.
pub async fn produce(cfg: Config) -> Result<(), String> {
    let mut publ = framewire::publish(&cfg.url, PublishOptions::default())
        .await
        .map_err(err)?;
    println!("ENDPOINT {}", publ.endpoint().url());
    publ.wait_for_subscribers(cfg.subscribers.max(1), CHILD_TIMEOUT)
        .await
        .map_err(err)?;
    let size = cfg.size as usize;
    let layout = cfg.kind.layout(cfg.size);
    let ready = pattern::make(0, size);
    let mut timed_from = None;
    for pass in 0..=cfg.runs {
        if pass == 1 {
            timed_from = Some((monotonic_ns(), proc::self_usage()));
        }
        let topic = format!("p{pass}");
        for i in 0..cfg.num_items {
            match cfg.send {
                SendMode::Copy => {
                    let payload = if cfg.touch {
                        pattern::make(i as u64, size)
                    } else {
                        ready.clone()
                    };
                    let f = Frame::new(payload)
                        .with_topic(topic.clone())
                        .with_layout(layout.clone());
                    publ.send(f).await.map_err(err)?;
                }
                SendMode::Loan => {
                    let mut loan = publ.loan(size).await.map_err(err)?;
                    if cfg.touch {
                        pattern::fill(i as u64, &mut loan);
                    } else if size >= 8 {
                        loan[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    }
                    loan.topic = topic.clone();
                    loan.layout = layout.clone();
                    publ.send_loan(loan).await.map_err(err)?;
                }
            }
        }
    }
    publ.flush().await.map_err(err)?;
    let (t0, u0) = timed_from.ok_or("no measured pass (--runs 0)")?;
    let produced = Produced {
        frames: (cfg.runs * cfg.num_items) as u64,
        secs: monotonic_ns().saturating_sub(t0) as f64 / 1e9,
        cpu_s: proc::self_usage().cpu_s - u0.cpu_s,
    };
    println!(
        "PRODUCED {}",
        serde_json::to_string(&produced).map_err(|e| e.to_string())?
    );
    // Stay up until the consumer is done: on shared-memory backends our
    // segments must outlive its last read.
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let _ = tokio::time::timeout(CHILD_TIMEOUT, proc::stdin_line(&mut lines)).await;
    Ok(())
}

async fn subscribe(cfg: &Config, url: &str) -> Result<Box<dyn Subscriber>, String> {
    let mode = if cfg.view {
        RecvMode::View
    } else {
        RecvMode::Owned
    };
    framewire::subscribe(url, SubscribeOptions::default().recv_mode(mode))
        .await
        .map_err(err)
}

/// Receives the warm-up pass and the measured passes; CPU is counted from
/// the end of the warm-up pass to the last frame.
async fn receive(cfg: &Config, sub: &mut Box<dyn Subscriber>) -> Result<Received, String> {
    let n = cfg.num_items;
    let mut got = Received {
        run_mb_s: Vec::new(),
        run_items_s: Vec::new(),
        lats_us: Vec::new(),
        frames: 0,
        cpu_s: 0.0,
    };
    let mut checksum = 0u64;
    let mut cpu_from = proc::self_usage();
    for pass in 0..=cfg.runs {
        let mut first_sent = u64::MAX;
        let mut last_recv = 0;
        for _ in 0..n {
            let f = match tokio::time::timeout(CHILD_TIMEOUT, sub.recv()).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => return Err(format!("{}: receiving: {e}", cfg.transport)),
                Err(_) => return Err(format!("{}: no frame in {CHILD_TIMEOUT:?}", cfg.transport)),
            };
            let now = monotonic_ns();
            if f.topic != format!("p{pass}") {
                return Err(format!("expected pass {pass}, got topic {}", f.topic));
            }
            if cfg.touch {
                checksum = checksum.wrapping_add(sum_words(&f.payload));
            }
            first_sent = first_sent.min(f.timestamp_ns);
            last_recv = now;
            if pass > 0 {
                got.lats_us
                    .push(now.saturating_sub(f.timestamp_ns) as f64 / 1e3);
                got.frames += 1;
            }
        }
        if pass == 0 {
            cpu_from = proc::self_usage();
        } else {
            let secs = (last_recv.saturating_sub(first_sent)) as f64 / 1e9;
            let secs = secs.max(1e-9);
            got.run_items_s.push(n as f64 / secs);
            got.run_mb_s.push(n as f64 * cfg.size as f64 / 1e6 / secs);
        }
    }
    got.cpu_s = proc::self_usage().cpu_s - cpu_from.cpu_s;
    std::hint::black_box(checksum);
    Ok(got)
}

/// An extra subscriber process (`--subscribers` above 1): receives like the
/// consumer and reports `RECEIVED {json}`.
pub async fn subscriber(cfg: Config) -> Result<(), String> {
    let mut sub = subscribe(&cfg, &cfg.url).await?;
    let got = receive(&cfg, &mut sub).await?;
    drop(sub);
    println!(
        "RECEIVED {}",
        serde_json::to_string(&got).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(who: &str, line: &str) -> Result<T, String> {
    serde_json::from_str(line).map_err(|e| format!("reading the {who} process's result: {e}"))
}

/// The consumer: starts the producer and the other subscribers, receives
/// everything, measures.
pub async fn consume(cfg: &Config) -> Result<Row, String> {
    let before_self = proc::self_usage();
    let before_children = proc::children_usage();
    let json = serde_json::to_string(cfg).map_err(|e| e.to_string())?;
    let mut producer = Peer::spawn("producer", "__produce", &json)?;
    let url = producer.expect("ENDPOINT ").await?;
    let mut others = Vec::new();
    for k in 1..cfg.subscribers.max(1) {
        let mut c = cfg.clone();
        c.url = url.clone();
        let json = serde_json::to_string(&c).map_err(|e| e.to_string())?;
        others.push(Peer::spawn(
            &format!("subscriber {}", k + 1),
            "__subscribe",
            &json,
        )?);
    }
    let mut sub = subscribe(cfg, &url).await?;
    let mut all = vec![receive(cfg, &mut sub).await?];
    for p in &mut others {
        let line = p.expect("RECEIVED ").await?;
        all.push(parse(&p.name, &line)?);
    }
    let produced: Produced = parse("producer", &producer.expect("PRODUCED ").await?)?;
    drop(sub);
    for p in others {
        p.finish().await?;
    }
    producer.finish().await?;
    let after_self = proc::self_usage();
    let after_children = proc::children_usage();
    // Per pass, the mean over subscribers; then mean and CI over passes.
    let per_pass = |f: fn(&Received) -> &Vec<f64>| -> Vec<f64> {
        (0..cfg.runs)
            .map(|r| all.iter().filter_map(|g| f(g).get(r)).sum::<f64>() / all.len() as f64)
            .collect()
    };
    let run_mb_s = per_pass(|g| &g.run_mb_s);
    let run_items_s = per_pass(|g| &g.run_items_s);
    let mut lats_us: Vec<f64> = all.iter().flat_map(|g| g.lats_us.iter().copied()).collect();
    let consumer_ms = all
        .iter()
        .map(|g| per_frame_ms(g.cpu_s, g.frames))
        .sum::<f64>()
        / all.len() as f64;
    let (mb, half) = stats::mean_ci95(&run_mb_s);
    let (items, _) = stats::mean_ci95(&run_items_s);
    Ok(Row {
        size_bytes: cfg.size,
        kind: cfg.kind.name().to_owned(),
        transport: cfg.transport.clone(),
        send: cfg.send.name().to_owned(),
        items_per_s: items,
        mb_per_s: mb,
        mb_per_s_lo: (mb - half).max(0.0),
        mb_per_s_hi: mb + half,
        speedup: 1.0,
        lat_p50_us: stats::percentile(&mut lats_us, 0.50),
        lat_p99_us: stats::percentile(&mut lats_us, 0.99),
        cpu_s: (after_self.cpu_s - before_self.cpu_s)
            + (after_children.cpu_s - before_children.cpu_s),
        peak_rss_mb: after_self.max_rss_mb + after_children.max_rss_mb,
        subscribers: cfg.subscribers.max(1),
        producer_mb_per_s: if produced.secs > 0.0 {
            produced.frames as f64 * cfg.size as f64 / 1e6 / produced.secs
        } else {
            0.0
        },
        producer_cpu_ms_per_frame: per_frame_ms(produced.cpu_s, produced.frames),
        consumer_cpu_ms_per_frame: consumer_ms,
    })
}

fn per_frame_ms(cpu_s: f64, frames: u64) -> f64 {
    if frames == 0 {
        0.0
    } else {
        cpu_s.max(0.0) * 1e3 / frames as f64
    }
}

fn sum_words(b: &Bytes) -> u64 {
    b.chunks(8).fold(0u64, |acc, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        acc.wrapping_add(u64::from_le_bytes(w))
    })
}

/// Runs one configuration in a fresh consumer process (which starts its own producer).
pub async fn consume_isolated(cfg: &Config) -> Result<Row, String> {
    let json = serde_json::to_string(cfg).map_err(|e| e.to_string())?;
    let mut consumer = Peer::spawn("consumer", "__consume", &json)?;
    let line = consumer.expect("ROW ").await?;
    consumer.finish().await?;
    serde_json::from_str(&line).map_err(|e| format!("reading the consumer's result: {e}"))
}

/// Fills in `speedup` against the first transport listed, per (size, kind,
/// send, subscribers).
pub fn add_speedups(rows: &mut [Row], baseline: &str) {
    let base: Vec<(u64, String, String, usize, f64)> = rows
        .iter()
        .filter(|r| r.transport == baseline)
        .map(|r| {
            (
                r.size_bytes,
                r.kind.clone(),
                r.send.clone(),
                r.subscribers,
                r.mb_per_s,
            )
        })
        .collect();
    for r in rows.iter_mut() {
        if let Some((_, _, _, _, b)) = base.iter().find(|(s, k, m, n, _)| {
            *s == r.size_bytes && *k == r.kind && *m == r.send && *n == r.subscribers
        }) {
            r.speedup = if *b > 0.0 { r.mb_per_s / b } else { 0.0 };
        }
    }
}

/// Waits a little between configurations so sockets and segments of the
/// previous one are gone.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}
