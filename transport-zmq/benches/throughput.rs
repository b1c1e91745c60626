//! Throughput over loopback TCP, 24 and 32 MiB frames, one subscriber:
//! framewire's zmq backend next to two bare PUB/SUB loops in the same run:
//!
//! - `bare_zmtp`: the backend's own ZMTP layer on its own (one connection,
//!   `zmtp::write_message` and `zmtp::Reader::next` in a loop: no envelope,
//!   no queue, no task hop, no liveness): the "same library" baseline;
//! - `bare_zeromq`: the `zeromq` crate's PUB/SUB (0.7), which the backend
//!   used before it had its own layer.
//!
//! Then fan-out (`zmq_fanout_8MiB`): one publisher, 2 and 4 subscribers,
//! framewire next to bare `zeromq` PUB/SUB; throughput counts bytes sent
//! (each frame reaches every subscriber). Then per-frame latency
//! (`zmq_24MiB_latency`): plain zmq next to `shm=pool` (payload in a
//! shared-memory slot, a reference over ZeroMQ).
//!
//! Run: `cargo bench -p transport-zmq --bench throughput`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::AsyncWriteExt;
use transport_core::{Endpoint, Frame, Publisher, Subscriber, Transport};
use transport_zmq::ZmqTransport;
use transport_zmq::zmtp::{self, Incoming, Limits};
use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

const SIZE: usize = 24 << 20;
const MIB: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A bare `zeromq` PUB with `n` SUBs; the first message each SUB gets proves
/// its subscription reached the publisher (PUB drops what it sends before).
async fn bare_zeromq(n: usize) -> (PubSocket, Vec<SubSocket>) {
    let mut publ = PubSocket::new();
    let bound = publ.bind("tcp://127.0.0.1:0").await.expect("bind");
    let mut subs = Vec::new();
    for _ in 0..n {
        let mut sub = SubSocket::new();
        sub.connect(&bound.to_string()).await.expect("connect");
        sub.subscribe("").await.expect("subscribe");
        subs.push(sub);
    }
    for sub in &mut subs {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "bare SUB never got a message");
            publ.send(ZmqMessage::from(Bytes::from_static(b"hello")))
                .await
                .expect("send");
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(20), sub.recv()).await {
                break;
            }
        }
    }
    for sub in &mut subs {
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {}
    }
    (publ, subs)
}

type BareZmtp = (
    tokio::net::tcp::OwnedWriteHalf,
    zmtp::Reader<tokio::net::tcp::OwnedReadHalf>,
);

/// One connection of the backend's ZMTP layer, handshaken (PUB end, SUB end).
async fn bare_zmtp() -> BareZmtp {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (a, b) = tokio::join!(l.accept(), tokio::net::TcpStream::connect(addr));
    let (a, b) = (a.expect("accept").0, b.expect("connect"));
    let _ = (a.set_nodelay(true), b.set_nodelay(true));
    let (ar, mut aw) = a.into_split();
    let (br, mut bw) = b.into_split();
    let (mut ar, mut br) = (zmtp::Reader::new(ar), zmtp::Reader::new(br));
    let (x, y) = tokio::join!(
        zmtp::handshake(&mut ar, &mut aw, "PUB", &[]),
        zmtp::handshake(&mut br, &mut bw, "SUB", &[])
    );
    x.expect("handshake");
    y.expect("handshake");
    (aw, br)
}

/// A framewire publisher with `n` subscribers on loopback TCP.
async fn framewire(
    n: usize,
) -> (
    transport_zmq::ZmqPublisher,
    Vec<transport_zmq::ZmqSubscriber>,
) {
    let ep = Endpoint::parse("zmq+tcp://127.0.0.1:0").expect("endpoint");
    let mut p = ZmqTransport
        .publish(&ep, &Default::default())
        .await
        .expect("publish");
    let mut subs = Vec::new();
    for _ in 0..n {
        subs.push(
            ZmqTransport
                .subscribe(p.endpoint(), &Default::default())
                .await
                .expect("subscribe"),
        );
    }
    p.wait_for_subscribers(n, Duration::from_secs(5))
        .await
        .expect("subscribers");
    (p, subs)
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    for size in [24 * MIB, 32 * MIB] {
        let payload = Bytes::from(vec![7u8; size]);
        let mut g = c.benchmark_group(format!("zmq_{}MiB", size / MIB));
        g.throughput(Throughput::Bytes(size as u64));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(5));

        let (w, mut r) = rt.block_on(bare_zmtp());
        let mut writer = Some(w);
        let limits = Limits {
            max_message: 1 << 30,
            max_parts: 4,
            what: "bench",
            skip_oversized: false,
        };
        g.bench_function("bare_zmtp/tcp", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    // The writer on a task of its own, like framewire's.
                    let mut w = writer.take().expect("writer");
                    let p = payload.clone();
                    let send = tokio::spawn(async move {
                        for _ in 0..iters {
                            zmtp::write_message(&mut w, std::slice::from_ref(&p))
                                .await
                                .expect("send");
                        }
                        w.flush().await.expect("flush");
                        w
                    });
                    for _ in 0..iters {
                        match r.next(&limits).await.expect("recv") {
                            Incoming::Message(m) => assert_eq!(m[0].len(), size),
                            other => panic!("{other:?}"),
                        }
                    }
                    writer = Some(send.await.expect("writer task"));
                    t.elapsed()
                })
            })
        });
        drop((writer, r));

        let (mut bp, mut bs) = rt.block_on(bare_zeromq(1));
        g.bench_function("bare_zeromq/tcp", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    let send = async {
                        for _ in 0..iters {
                            bp.send(ZmqMessage::from(payload.clone()))
                                .await
                                .expect("send");
                        }
                    };
                    let recv = async {
                        for _ in 0..iters {
                            let m = bs[0].recv().await.expect("recv");
                            assert_eq!(m.get(0).map(|p| p.len()), Some(size));
                        }
                    };
                    tokio::join!(send, recv);
                    t.elapsed()
                })
            })
        });
        drop((bp, bs));

        let (mut publ, mut subs) = rt.block_on(framewire(1));
        g.bench_function("framewire_zmq/tcp", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    let send = async {
                        for _ in 0..iters {
                            publ.send(Frame::new(payload.clone())).await.expect("send");
                        }
                    };
                    let recv = async {
                        for _ in 0..iters {
                            let f = subs[0].recv().await.expect("recv");
                            assert_eq!(f.payload.len(), size);
                        }
                    };
                    tokio::join!(send, recv);
                    t.elapsed()
                })
            })
        });
        drop((publ, subs));
        g.finish();
    }
    fanout(c, &rt);
    let ipc = std::env::temp_dir().join(format!("framewire-zmq-bench-{}", std::process::id()));
    latency(c, &rt, &Bytes::from(vec![7u8; SIZE]), &ipc);
}

/// One publisher, `n` subscribers, 8 MiB frames: framewire and bare `zeromq`.
fn fanout(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let size = 8 * MIB;
    let payload = Bytes::from(vec![7u8; size]);
    let mut g = c.benchmark_group("zmq_fanout_8MiB");
    g.throughput(Throughput::Bytes(size as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for n in [2usize, 4] {
        let (mut publ, mut subs) = rt.block_on(framewire(n));
        g.bench_function(format!("framewire_zmq/{n}_subscribers"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    let send = async {
                        for _ in 0..iters {
                            publ.send(Frame::new(payload.clone())).await.expect("send");
                        }
                    };
                    let recv = futures_join(subs.iter_mut().map(|s| async move {
                        for _ in 0..iters {
                            let f = s.recv().await.expect("recv");
                            assert_eq!(f.payload.len(), size);
                        }
                    }));
                    tokio::join!(send, recv);
                    t.elapsed()
                })
            })
        });
        drop((publ, subs));
        let (mut bp, mut bs) = rt.block_on(bare_zeromq(n));
        g.bench_function(format!("bare_zeromq/{n}_subscribers"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    let send = async {
                        for _ in 0..iters {
                            bp.send(ZmqMessage::from(payload.clone()))
                                .await
                                .expect("send");
                        }
                    };
                    let recv = futures_join(bs.iter_mut().map(|s| async move {
                        for _ in 0..iters {
                            let m = s.recv().await.expect("recv");
                            assert_eq!(m.get(0).map(|p| p.len()), Some(size));
                        }
                    }));
                    tokio::join!(send, recv);
                    t.elapsed()
                })
            })
        });
        drop((bp, bs));
    }
    g.finish();
}

/// Runs the futures concurrently to completion.
async fn futures_join<F: std::future::Future<Output = ()>>(fs: impl Iterator<Item = F>) {
    let mut set: Vec<_> = fs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Per-frame latency, one frame at a time (send, then receive it whole): plain
/// zmq next to `shm=pool`, where only a 28-byte reference crosses ZeroMQ.
/// `shm_pool_view` copies the payload into a slot in `send` and receives a
/// view; `shm_pool_owned` also copies it out; `shm_pool_view_loan` sends a
/// loaned slot (no copy at all: the hand-off alone).
fn latency(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    payload: &Bytes,
    ipc: &std::path::Path,
) {
    use transport_core::{RecvMode, SubscribeOptions};
    let mut g = c.benchmark_group("zmq_24MiB_latency");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(6));
    let shm = "shm=pool&slots=4&slot_size=24MiB";
    let cases = [
        ("tcp", "zmq+tcp://127.0.0.1:0".to_owned()),
        ("ipc", format!("zmq+ipc://{}-lat.ipc", ipc.display())),
    ];
    for (name, base) in cases {
        let variants = [
            ("plain", base.clone(), RecvMode::Owned, false),
            (
                "shm_pool_view",
                format!("{base}?{shm}"),
                RecvMode::View,
                false,
            ),
            (
                "shm_pool_owned",
                format!("{base}?{shm}"),
                RecvMode::Owned,
                false,
            ),
            (
                "shm_pool_view_loan",
                format!("{base}?{shm}"),
                RecvMode::View,
                true,
            ),
        ];
        for (variant, url, mode, loan) in variants {
            let (mut publ, mut sub) = rt.block_on(async {
                let ep = Endpoint::parse(&url).expect("endpoint");
                let mut p = ZmqTransport
                    .publish(&ep, &Default::default())
                    .await
                    .expect("publish");
                let s = ZmqTransport
                    .subscribe(p.endpoint(), &SubscribeOptions::default().recv_mode(mode))
                    .await
                    .expect("subscribe");
                p.wait_for_subscribers(1, Duration::from_secs(5))
                    .await
                    .expect("subscriber");
                (p, s)
            });
            g.bench_function(format!("{variant}/{name}"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let t = Instant::now();
                            if loan {
                                let l = publ.loan(SIZE).await.expect("loan");
                                publ.send_loan(l).await.expect("send_loan");
                            } else {
                                publ.send(Frame::new(payload.clone())).await.expect("send");
                            }
                            let f = sub.recv().await.expect("recv");
                            total += t.elapsed();
                            assert_eq!(f.payload.len(), SIZE);
                        }
                        total
                    })
                })
            });
            drop((publ, sub));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
