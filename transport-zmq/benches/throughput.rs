//! 24 MiB frames over loopback TCP and IPC: framewire's zmq backend next to a
//! bare `zeromq`-crate PUB/SUB loop in the same run, plus the cost of the one
//! copy the crate's encoder makes of every frame (a 24 MiB memcpy).
//!
//! The bare loops are the crate on its own: a PUB socket whose `send` only
//! queues (no backpressure, no envelope, no heartbeats) and a SUB socket
//! subscribed to everything; and the XPUB/XSUB pair framewire is built on,
//! where `send` writes into the socket. framewire adds its envelope, a
//! bounded queue per subscriber, a task hop to its socket task, per-subscriber
//! routing and liveness.
//!
//! Then per-frame latency (`zmq_24MiB_latency`): plain zmq next to
//! `shm=pool` (payload in a shared-memory slot, a reference over ZeroMQ).
//!
//! Run: `cargo bench -p transport-zmq --bench throughput`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use transport_core::{Endpoint, Frame, Publisher, Subscriber, Transport};
use transport_zmq::ZmqTransport;
use zeromq::{
    PubSocket, Socket, SocketRecv, SocketSend, SubSocket, XPubSocket, XSubSocket, ZmqMessage,
};

const SIZE: usize = 24 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A connected bare PUB/SUB pair; the first message that arrives proves the
/// subscription reached the publisher (PUB drops what it sends before that).
async fn bare_pair(addr: &str) -> (PubSocket, SubSocket) {
    let mut publ = PubSocket::new();
    let bound = publ.bind(addr).await.expect("bind");
    let mut sub = SubSocket::new();
    sub.connect(&bound.to_string()).await.expect("connect");
    sub.subscribe("").await.expect("subscribe");
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
    // Drain extra hellos.
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {}
    (publ, sub)
}

/// A connected bare XPUB/XSUB pair, the sockets framewire uses: XPUB sees
/// the subscription arrive, and its `send` writes into the socket.
async fn bare_xpair(addr: &str) -> (XPubSocket, XSubSocket) {
    let mut publ = XPubSocket::new();
    let bound = publ.bind(addr).await.expect("bind");
    let mut sub = XSubSocket::new();
    sub.connect(&bound.to_string()).await.expect("connect");
    sub.send(ZmqMessage::from(Bytes::from_static(b"\x01")))
        .await
        .expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(10), publ.recv())
        .await
        .expect("the subscription in time")
        .expect("the subscription");
    assert_eq!(first.get(0).map(|b| &b[..]), Some(&b"\x01"[..]));
    (publ, sub)
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from(vec![7u8; SIZE]);

    let mut g = c.benchmark_group("zmq_24MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));

    // The copy the crate's encoder makes of every frame it writes.
    let mut dst = vec![0u8; SIZE];
    g.bench_function("memcpy (the crate's encoder copy)", |b| {
        b.iter(|| {
            dst.copy_from_slice(&payload);
            std::hint::black_box(&dst);
        })
    });

    let ipc = std::env::temp_dir().join(format!("framewire-zmq-bench-{}", std::process::id()));
    let cases = [
        (
            "tcp",
            "tcp://127.0.0.1:0".to_owned(),
            "zmq+tcp://127.0.0.1:0".to_owned(),
        ),
        (
            "ipc",
            format!("ipc://{}-bare.ipc", ipc.display()),
            format!("zmq+ipc://{}-fw.ipc", ipc.display()),
        ),
    ];
    for (name, bare_url, fw_url) in cases {
        let (mut bp, mut bs) = rt.block_on(bare_pair(&bare_url));
        g.bench_function(format!("bare_zeromq_pub_sub/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    let send = async {
                        for _ in 0..iters {
                            let m = ZmqMessage::from(payload.clone());
                            bp.send(m).await.expect("send");
                        }
                    };
                    let recv = async {
                        for _ in 0..iters {
                            let m = bs.recv().await.expect("recv");
                            assert_eq!(m.get(0).map(|p| p.len()), Some(SIZE));
                        }
                    };
                    tokio::join!(send, recv);
                    t.elapsed()
                })
            })
        });
        drop((bp, bs));

        let (mut xp, mut xs) = rt.block_on(bare_xpair(&bare_url.replace("-bare.", "-xbare.")));
        g.bench_function(format!("bare_zeromq_xpub_xsub/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    let send = async {
                        for _ in 0..iters {
                            let m = ZmqMessage::from(payload.clone());
                            xp.send(m).await.expect("send");
                        }
                    };
                    let recv = async {
                        for _ in 0..iters {
                            let m = xs.recv().await.expect("recv");
                            assert_eq!(m.get(0).map(|p| p.len()), Some(SIZE));
                        }
                    };
                    tokio::join!(send, recv);
                    t.elapsed()
                })
            })
        });
        drop((xp, xs));

        let (mut publ, mut sub) = rt.block_on(async {
            let ep = Endpoint::parse(&fw_url).expect("endpoint");
            let mut p = ZmqTransport
                .publish(&ep, &Default::default())
                .await
                .expect("publish");
            let s = ZmqTransport
                .subscribe(p.endpoint(), &Default::default())
                .await
                .expect("subscribe");
            p.wait_for_subscribers(1, Duration::from_secs(5))
                .await
                .expect("subscriber");
            (p, s)
        });
        g.bench_function(format!("framewire_zmq/{name}"), |b| {
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
                            let f = sub.recv().await.expect("recv");
                            assert_eq!(f.payload.len(), SIZE);
                        }
                    };
                    tokio::join!(send, recv);
                    t.elapsed()
                })
            })
        });
        drop((publ, sub));
    }
    g.finish();
    latency(c, &rt, &payload, &ipc);
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
