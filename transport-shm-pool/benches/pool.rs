//! Criterion benchmarks of the shm-pool backend.
//!
//! - `slot_alloc/warm`: take a free slot and give it back (lock-free pop + push).
//! - `slot_alloc/cold_*`: create a pool segment of one slot (memfd, truncate,
//!   map with `MAP_POPULATE`, seal) and tear it down again.
//! - `handoff_inproc/*`: one task loans a slot, sends it, receives it through a
//!   subscriber in the same process (over the real socket, view mode) and drops
//!   the view; `untouched` leaves the payload alone, `written` memsets all of
//!   it, `copy_owned` is the copying path (`send` of a heap `Bytes` + owned receive).
//! - `handoff_xproc/*`: the same hand-off to a subscriber in another process
//!   (`shm-pool-peer`), time per frame over a run, four slots in flight;
//!   `untouched` neither writes nor reads the payload, `pattern` writes every
//!   byte in the producer and checks every byte in the consumer.

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use transport_core::{
    Endpoint, Frame, PublishOptions, Publisher, RecvMode, SubscribeOptions, Subscriber, Transport,
    pattern,
};
use transport_shm_pool::pool::SlotPool;
use transport_shm_pool::{ShmPoolPublisher, ShmPoolTransport};

const MIB: usize = 1 << 20;
const FRAME: usize = 24 * MIB;

fn name(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "bench-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn slot_alloc(c: &mut Criterion) {
    let mut g = c.benchmark_group("slot_alloc");
    let pool = SlotPool::create("bench-warm", 8, FRAME as u64).expect("pool");
    g.bench_function("warm", |b| {
        b.iter(|| {
            let lease = pool.try_acquire().expect("a free slot");
            black_box(lease.index());
        })
    });
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for (label, size) in [("cold_4KiB", 4096u64), ("cold_24MiB", FRAME as u64)] {
        g.bench_function(label, |b| {
            b.iter(|| black_box(SlotPool::create("bench-cold", 1, size).expect("pool")))
        });
    }
    g.finish();
}

async fn pair(
    slots: usize,
    size: usize,
) -> (ShmPoolPublisher, transport_shm_pool::ShmPoolSubscriber) {
    let t = ShmPoolTransport::new();
    let ep = Endpoint::parse(&format!(
        "shm-pool://{}?slots={slots}&slot_size={size}",
        name("inproc")
    ))
    .expect("url");
    let mut publ = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("publish");
    let sub = t
        .subscribe(
            publ.endpoint(),
            &SubscribeOptions::default().recv_mode(RecvMode::View),
        )
        .await
        .expect("subscribe");
    publ.wait_for_subscribers(1, Duration::from_secs(10))
        .await
        .expect("subscriber");
    (publ, sub)
}

fn handoff_inproc(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("handoff_inproc");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    for (size, label) in [(4096usize, "4KiB"), (FRAME, "24MiB")] {
        let (mut publ, mut sub) = rt.block_on(pair(4, size));
        g.throughput(Throughput::Bytes(size as u64));
        for kind in ["untouched", "written"] {
            g.bench_function(BenchmarkId::new(kind, label), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for i in 0..iters {
                            let mut loan = publ.loan(size).await.expect("loan");
                            if kind == "written" {
                                loan.fill(i as u8);
                            }
                            publ.send_loan(loan).await.expect("send_loan");
                            let f = sub.recv().await.expect("recv");
                            black_box(f.payload.len());
                        }
                        start.elapsed()
                    })
                })
            });
        }
        drop((publ, sub));
    }
    // The copying path, for contrast: a heap payload copied into the slot and
    // copied out again by an owned-mode subscriber.
    let (mut publ, mut sub) = rt.block_on(async {
        let t = ShmPoolTransport::new();
        let ep = Endpoint::parse(&format!(
            "shm-pool://{}?slots=4&slot_size=24MiB",
            name("copy")
        ))
        .expect("url");
        let mut publ = t
            .publish(&ep, &PublishOptions::default())
            .await
            .expect("publish");
        let sub = t
            .subscribe(publ.endpoint(), &SubscribeOptions::default())
            .await
            .expect("subscribe");
        publ.wait_for_subscribers(1, Duration::from_secs(10))
            .await
            .expect("subscriber");
        (publ, sub)
    });
    let payload = pattern::make(1, FRAME);
    g.throughput(Throughput::Bytes(FRAME as u64));
    g.bench_function(BenchmarkId::new("copy_owned", "24MiB"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    publ.send(Frame::new(payload.clone())).await.expect("send");
                    let f = sub.recv().await.expect("recv");
                    black_box(f.payload.len());
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

/// A subscriber process that reports on stdout.
struct Child2 {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Child2 {
    fn spawn(args: &[&str]) -> Child2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shm-pool-peer"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn shm-pool-peer");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Child2 { child, lines }
    }

    fn expect(&self, prefix: &str) {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.starts_with(prefix) => return,
                Ok(l) if l.starts_with("error") => panic!("peer: {l}"),
                Ok(_) => {}
                Err(e) => panic!("peer did not say `{prefix}`: {e}"),
            }
        }
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn handoff_xproc(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("handoff_xproc");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Bytes(FRAME as u64));
    let pool = name("xproc");
    let url = format!("shm-pool://{pool}?slots=4&slot_size=24MiB");
    let mut publ = rt.block_on(async {
        ShmPoolTransport::new()
            .publish(
                &Endpoint::parse(&url).expect("url"),
                &PublishOptions::default(),
            )
            .await
            .expect("publish")
    });
    for kind in ["untouched", "pattern"] {
        g.bench_function(BenchmarkId::new(kind, "24MiB"), |b| {
            b.iter_custom(|iters| {
                let n = iters.to_string();
                let mut args = vec![
                    "subscribe",
                    url.as_str(),
                    "--mode",
                    "view",
                    "--frames",
                    n.as_str(),
                    "--quiet",
                ];
                if kind == "untouched" {
                    args.push("--no-check");
                }
                let child = Child2::spawn(&args);
                child.expect("subscribed");
                rt.block_on(async {
                    publ.wait_for_subscribers(1, Duration::from_secs(30))
                        .await
                        .expect("subscriber");
                    let start = Instant::now();
                    for _ in 0..iters {
                        // The sequence number this frame will carry.
                        let seq = publ.stats().frames_sent;
                        let mut loan = publ.loan(FRAME).await.expect("loan");
                        if kind == "pattern" {
                            pattern::fill(seq, &mut loan);
                        }
                        publ.send_loan(loan).await.expect("send_loan");
                    }
                    // Done when the consumer has seen (and checked) the last one.
                    tokio::task::block_in_place(|| child.expect(&format!("done {iters}")));
                    let took = start.elapsed();
                    drop(child);
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while publ.subscriber_count() != Some(0) || publ.free_slots() != 4 {
                        assert!(
                            Instant::now() < deadline,
                            "the peer's slots did not come back"
                        );
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    took
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, slot_alloc, handoff_inproc, handoff_xproc);
criterion_main!(benches);
