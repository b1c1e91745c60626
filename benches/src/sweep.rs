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
            Kind::Tensor if size % 4 == 0 && size >= 4096 => Layout::Tensor {
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
}

/// The CSV header line.
pub const CSV_HEADER: &str = "size_bytes,kind,transport,send,items_per_s,mb_per_s,mb_per_s_lo,mb_per_s_hi,speedup,lat_p50_us,lat_p99_us,cpu_s,peak_rss_mb";

impl Row {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.1},{:.1},{:.3},{:.1}",
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
            self.peak_rss_mb
        )
    }
}

fn err(e: Error) -> String {
    e.to_string()
}

/// The producer child: publish, announce the endpoint, send a warm-up pass and
/// `runs` measured passes of `num_items` frames, then wait for stdin to close.
pub async fn produce(cfg: Config) -> Result<(), String> {
    let mut publ = framewire::publish(&cfg.url, PublishOptions::default())
        .await
        .map_err(err)?;
    println!("ENDPOINT {}", publ.endpoint().url());
    publ.wait_for_subscribers(1, CHILD_TIMEOUT)
        .await
        .map_err(err)?;
    let size = cfg.size as usize;
    let layout = cfg.kind.layout(cfg.size);
    let ready = pattern::make(0, size);
    for pass in 0..=cfg.runs {
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
    // Stay up until the consumer is done: on shared-memory backends our
    // segments must outlive its last read.
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let _ = tokio::time::timeout(CHILD_TIMEOUT, proc::stdin_line(&mut lines)).await;
    Ok(())
}

/// The consumer: starts the producer, receives everything, measures.
pub async fn consume(cfg: &Config) -> Result<Row, String> {
    let before_self = proc::self_usage();
    let before_children = proc::children_usage();
    let json = serde_json::to_string(cfg).map_err(|e| e.to_string())?;
    let mut producer = Peer::spawn("producer", "__produce", &json)?;
    let url = producer.expect("ENDPOINT ").await?;
    let mode = if cfg.view {
        RecvMode::View
    } else {
        RecvMode::Owned
    };
    let mut sub = framewire::subscribe(&url, SubscribeOptions::default().recv_mode(mode))
        .await
        .map_err(err)?;
    let n = cfg.num_items;
    let mut run_mb_s = Vec::new();
    let mut run_items_s = Vec::new();
    let mut lats_us = Vec::new();
    let mut checksum = 0u64;
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
                lats_us.push(now.saturating_sub(f.timestamp_ns) as f64 / 1e3);
            }
        }
        if pass > 0 {
            let secs = (last_recv.saturating_sub(first_sent)) as f64 / 1e9;
            let secs = secs.max(1e-9);
            run_items_s.push(n as f64 / secs);
            run_mb_s.push(n as f64 * cfg.size as f64 / 1e6 / secs);
        }
    }
    std::hint::black_box(checksum);
    drop(sub);
    producer.finish().await?;
    let after_self = proc::self_usage();
    let after_children = proc::children_usage();
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
    })
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

/// Fills in `speedup` against the first transport listed, per (size, kind, send).
pub fn add_speedups(rows: &mut [Row], baseline: &str) {
    let base: Vec<(u64, String, String, f64)> = rows
        .iter()
        .filter(|r| r.transport == baseline)
        .map(|r| (r.size_bytes, r.kind.clone(), r.send.clone(), r.mb_per_s))
        .collect();
    for r in rows.iter_mut() {
        if let Some((_, _, _, b)) = base
            .iter()
            .find(|(s, k, m, _)| *s == r.size_bytes && *k == r.kind && *m == r.send)
        {
            r.speedup = if *b > 0.0 { r.mb_per_s / b } else { 0.0 };
        }
    }
}

/// Waits a little between configurations so sockets and segments of the
/// previous one are gone.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}
