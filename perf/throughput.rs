//! One throughput bench for every backend: 24 MiB frames from a publisher to
//! one subscriber in this process, through code generic over
//! `T: Transport + ?Sized`, run on each backend of this build as the registry
//! hands it out (`dyn DynTransport` is a `Transport`), next to a raw
//! `std::net` socket pair measured in the same run (one writer thread, one
//! reader, one reused buffer each: the best a hand-rolled loop can do).
//!
//! Run with `cargo bench -p framewire --bench throughput --features
//! shm-pool,shm-ring,zmq` (each feature adds its backend's URL);
//! `FRAMEWIRE_BENCH_URL=URL` measures that endpoint too (any scheme the
//! build routes). The machine's other load shows in the figures: compare
//! arms of one run, as ratios against `raw_std_net`.
//!
//! The per-crate benches keep what only they can measure: transport-zmq's
//! bare `zeromq` and bare ZMTP arms, transport-shm-ring's subscriber in
//! another process with `memcpy` arms, transport-shm-pool's allocation.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use framewire::{
    Endpoint, Frame, PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport,
};

const SIZE: usize = 24 << 20;

/// The endpoints measured: each backend compiled in, plus `FRAMEWIRE_BENCH_URL`.
fn urls() -> Vec<(String, String)> {
    let pid = std::process::id();
    let mut v = vec![
        ("tcp".to_owned(), "tcp://127.0.0.1:0".to_owned()),
        (
            "unix".to_owned(),
            format!(
                "unix://{}",
                std::env::temp_dir()
                    .join(format!("framewire-bench-{pid}.sock"))
                    .display()
            ),
        ),
    ];
    if cfg!(feature = "zmq") {
        v.push(("zmq_tcp".into(), "zmq+tcp://127.0.0.1:0".into()));
    }
    if cfg!(feature = "shm-ring") {
        // Room for two frames and their headers.
        v.push((
            "shm_ring".into(),
            format!("shm-ring://bench-{pid}?capacity={}", 2 * SIZE + (1 << 20)),
        ));
    }
    if cfg!(feature = "shm-pool") {
        v.push((
            "shm_pool".into(),
            format!("shm-pool://bench-{pid}?slots=4&slot_size=24MiB"),
        ));
    }
    if let Ok(url) = std::env::var("FRAMEWIRE_BENCH_URL") {
        v.push(("custom".into(), url));
    }
    v
}

fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    a.set_nodelay(true).expect("nodelay");
    b.set_nodelay(true).expect("nodelay");
    (a, b)
}

fn raw_std_net(g: &mut BenchmarkGroup<'_, WallTime>) {
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
}

/// Sends and receives `SIZE`-byte frames through any transport: the static
/// API, whatever chose the backend.
fn framewire_arm<T: Transport + ?Sized>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    t: &T,
    name: &str,
    url: &str,
) {
    let (mut publ, mut sub) = rt.block_on(async {
        let ep = Endpoint::parse(url).expect("endpoint");
        let mut p = t
            .publish(&ep, &PublishOptions::default())
            .await
            .unwrap_or_else(|e| panic!("publish on {url}: {e}"));
        let s = t
            .subscribe(p.endpoint(), &SubscribeOptions::default())
            .await
            .unwrap_or_else(|e| panic!("subscribe to {url}: {e}"));
        if p.subscriber_count().is_some() {
            p.wait_for_subscribers(1, Duration::from_secs(10))
                .await
                .expect("the subscriber connects");
        }
        (p, s)
    });
    let payload = bytes::Bytes::from(vec![7u8; SIZE]);
    g.bench_function(format!("framewire_{name}"), |b| {
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
    rt.block_on(async {
        publ.close().await.expect("close");
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = framewire::Registry::with_builtins();
    let mut g = c.benchmark_group("throughput_24MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    raw_std_net(&mut g);
    for (name, url) in urls() {
        let ep = Endpoint::parse(&url).expect("endpoint");
        let backend = registry
            .backend(&ep)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        framewire_arm(&mut g, &rt, &*backend, &name, &url);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
