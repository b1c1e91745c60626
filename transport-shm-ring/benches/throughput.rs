//! Throughput of the shared-memory ring for 8 MiB and 32 MiB records, next
//! to single-thread `memcpy` of the same size measured in the same run.
//!
//! The publisher runs in this process; the subscriber is a separate process
//! (`shm-ring-peer sink`), which copies every record out into a private
//! buffer and drops it. One measurement sends `iters` frames back to back
//! and then waits until the subscriber has read them all
//! (`wait_consumed`), so the figure is end-to-end: into the ring, out of it.
//!
//! - `memcpy`: one `copy_from_slice` between two pre-faulted buffers (at
//!   8 MiB both stay in the last-level cache: the strictest baseline).
//! - `memcpy_cold`: the same copy, cycling through enough buffer pairs
//!   (128 MiB of sources) that each copy starts cold, as frames streaming
//!   through memory do: single-thread memcpy bandwidth in the usual sense.
//! - `send/ringN`: `send(Frame)` of a ready payload: two copies in all (into
//!   the ring, out of it), on two processes at once.
//! - `loan/ringN`: `loan` + `send_loan`, the producer writing nothing
//!   (hand-off): one copy in all, the subscriber's.
//! - `loan_fill/ring2`: `loan`, the producer writes every byte (`fill`),
//!   then `send_loan`: the full-frame path for a producer that generates
//!   frames in place.
//!
//! `ringN`: the ring holds N records of the frame size. The depth matters at
//! 8 MiB: a 2-record ring (16 MiB) stays in a 32 MiB last-level cache, a
//! deeper one makes the writer's destination cold. `memcpy` copies between
//! two hot buffers. Run with `cargo bench -p transport-shm-ring`.
//! `SHM_RING_PEER=PATH` runs another build's `shm-ring-peer` as the sink
//! (to compare two builds, each bench binary with its own peer).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use transport_core::{Endpoint, Frame, Publisher, Transport};
use transport_shm_ring::{ShmRingPublisher, ShmRingTransport};

const SIZES: [usize; 2] = [8 << 20, 32 << 20];
/// Bytes of source buffers `memcpy_cold` cycles through (as much again of
/// destinations).
const COLD_BYTES: usize = 128 << 20;
/// Ring depths measured, in records of the frame size.
const RECORDS: [usize; 2] = [2, 4];

/// The subscriber process; killed and reaped on drop.
struct Sink(Child);

impl Sink {
    fn spawn(url: &str) -> Sink {
        let peer = std::env::var_os("SHM_RING_PEER")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_shm-ring-peer").into());
        let mut child = Command::new(peer)
            .args(["sink", url])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn shm-ring-peer");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready", "the sink did not start");
        Sink(child)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench(c: &mut Criterion) {
    // One worker runs the publisher's background tasks (accepting the sink,
    // reading its nudges) while this thread is outside `block_on`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    for size in SIZES {
        let mib = size >> 20;
        let mut g = c.benchmark_group(format!("shm_ring_{mib}MiB"));
        g.throughput(Throughput::Bytes(size as u64));
        g.sample_size(10);
        g.warm_up_time(Duration::from_secs(2));
        g.measurement_time(Duration::from_secs(6));

        let src = vec![0x5au8; size];
        let mut dst = vec![0u8; size];
        dst.fill(1); // fault it in
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
            })
        });
        // The same copy between buffers that are not in cache: each
        // iteration takes the next source/destination pair (COLD_BYTES of
        // sources and as much of destinations, several times the last-level
        // cache), as a stream of frames through memory would.
        let pairs = (COLD_BYTES / size).max(2);
        let mut cold: Vec<(Vec<u8>, Vec<u8>)> = (0..pairs)
            .map(|_| (vec![0x5au8; size], vec![1u8; size]))
            .collect();
        let mut next = 0;
        g.bench_function("memcpy_cold", |b| {
            b.iter(|| {
                let (s, d) = &mut cold[next];
                d.copy_from_slice(std::hint::black_box(s));
                std::hint::black_box(d);
                next = (next + 1) % pairs;
            })
        });
        drop(cold);

        let payload = bytes::Bytes::from(src.clone());
        for records in RECORDS {
            let url = format!(
                "shm-ring://bench-{}-{mib}-{records}?capacity={}",
                std::process::id(),
                records * size + (1 << 20)
            );
            let mut publ: ShmRingPublisher = rt.block_on(async {
                let ep = Endpoint::parse(&url).expect("endpoint");
                ShmRingTransport
                    .publish(&ep, &Default::default())
                    .await
                    .expect("publish")
            });
            let _sink = Sink::spawn(&url);
            rt.block_on(publ.wait_for_subscribers(1, Duration::from_secs(10)))
                .expect("the sink subscribes");
            let modes: &[&str] = if records == RECORDS[0] {
                &["send", "loan", "loan_fill"]
            } else {
                &["send", "loan"]
            };
            for &mode in modes {
                let id = BenchmarkId::new(mode, format!("ring{records}"));
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let t = Instant::now();
                            for _ in 0..iters {
                                if mode == "send" {
                                    publ.send(Frame::new(payload.clone())).await.expect("send");
                                    continue;
                                }
                                let mut loan = publ.loan(size).await.expect("loan");
                                if mode == "loan_fill" {
                                    loan.fill(0x5a);
                                } else {
                                    loan[0] = 0x5a;
                                }
                                publ.send_loan(loan).await.expect("send_loan");
                            }
                            publ.wait_consumed(Duration::from_secs(60))
                                .await
                                .expect("consumed");
                            t.elapsed()
                        })
                    })
                });
            }
            drop(publ);
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
