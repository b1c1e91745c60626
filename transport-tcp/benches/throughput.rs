//! 24 MiB frames over loopback: framewire's TCP backend against a raw
//! `std::net` socket pair in the same run (one writer thread, one reader).
//!
//! The raw baseline writes one reused buffer with `write_all` and reads into
//! one reused buffer with `read_exact`: the best a hand-rolled loop can do.
//! framewire adds its envelope, per-subscriber queueing, and one receive
//! buffer allocated per frame.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use transport_core::{Endpoint, Frame, Publisher, Subscriber, Transport};
use transport_tcp::TcpTransport;

const SIZE: usize = 24 << 20;

fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    a.set_nodelay(true).expect("nodelay");
    b.set_nodelay(true).expect("nodelay");
    (a, b)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("tcp_24MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));

    let (mut tx, mut rx) = raw_pair();
    let out = vec![7u8; SIZE];
    let mut inb = vec![0u8; SIZE];
    g.bench_function("raw_std_net", |b| {
        b.iter_custom(|iters| {
            std::thread::scope(|s| {
                let (tx, out) = (&mut tx, &out);
                s.spawn(move || {
                    for _ in 0..iters {
                        tx.write_all(out).expect("write");
                    }
                });
                let t = Instant::now();
                for _ in 0..iters {
                    rx.read_exact(&mut inb).expect("read");
                }
                t.elapsed()
            })
        })
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut publ, mut sub) = rt.block_on(async {
        let ep = Endpoint::parse("tcp://127.0.0.1:0").expect("endpoint");
        let mut p = TcpTransport
            .publish(&ep, &Default::default())
            .await
            .expect("publish");
        let s = TcpTransport
            .subscribe(p.endpoint(), &Default::default())
            .await
            .expect("subscribe");
        p.wait_for_subscribers(1, Duration::from_secs(5))
            .await
            .expect("subscriber");
        (p, s)
    });
    let payload = bytes::Bytes::from(vec![7u8; SIZE]);
    g.bench_function("framewire_tcp", |b| {
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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
