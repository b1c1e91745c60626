//! One throughput bench for every backend, through code generic over
//! `T: Transport + ?Sized`, run on each backend of this build as the registry
//! hands it out (`dyn DynTransport` is a `Transport`), next to baselines
//! measured in the same run. Publisher and subscribers are in this process.
//!
//! - `throughput_<N>MiB`: `N` MiB frames (24; `FRAMEWIRE_BENCH_MIB=24,32`
//!   for more sizes) to one subscriber: `framewire_<backend>` sends owned
//!   payloads, `framewire_<backend>_loan` hands over loans (written by
//!   nobody: the hand-off alone). Baselines: `raw_std_net`, a raw `std::net`
//!   socket pair (one writer thread, one reader, one reused buffer each: the
//!   best a hand-rolled loop can do); with feature `zmq` also `bare_zmtp`
//!   (the zmq backend's own ZMTP layer alone: no envelope, no queue, no task
//!   hop, no liveness) and `bare_zeromq` (the `zeromq` crate's PUB/SUB, which
//!   the zmq backend used before it had its own layer), see `zmq_bare.rs`.
//! - `fanout_8MiB`: one publisher, 2 and 4 subscribers, 8 MiB frames;
//!   throughput counts bytes sent (each frame reaches every subscriber).
//!   Baseline (feature `zmq`): bare `zeromq` PUB/SUB.
//! - `latency_24MiB`: one frame at a time (send, then receive it whole);
//!   with feature `zmq`, plain zmq next to `shm=pool` (only a reference
//!   crosses ZeroMQ): `shm_pool_view` copies the payload into a slot in
//!   `send` and receives a view, `shm_pool_owned` also copies it out,
//!   `shm_pool_view_loan` sends a loaned slot (no copy at all).
//!
//! Run with `cargo bench -p framewire --bench throughput --features
//! shm-pool,shm-ring,zmq` (each feature adds its backend's URL), a criterion
//! filter after `--` to pick arms; `FRAMEWIRE_BENCH_URL=URL` measures that
//! endpoint too (any scheme the build routes). The machine's other load shows
//! in the figures: compare arms of one run, as ratios against a baseline.
//!
//! The per-crate benches keep what only they can measure:
//! transport-shm-ring's subscriber in another process (waiting on its
//! `wait_consumed`) with `memcpy` arms, transport-shm-pool's allocation.

#[cfg(feature = "zmq")]
mod zmq_bare;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use framewire::{
    Endpoint, Frame, PublishOptions, Publisher, RecvMode, SubscribeOptions, Subscriber, Transport,
};

const MIB: usize = 1 << 20;
/// The frame size of the latency group.
const LATENCY_SIZE: usize = 24 * MIB;
/// The frame size of the fan-out group.
const FANOUT_SIZE: usize = 8 * MIB;

/// The endpoints measured for `size`-byte frames: each backend compiled in,
/// plus `FRAMEWIRE_BENCH_URL`.
fn urls(size: usize) -> Vec<(String, String)> {
    let pid = std::process::id();
    let mib = size / MIB;
    let mut v = vec![
        ("tcp".to_owned(), "tcp://127.0.0.1:0".to_owned()),
        (
            "unix".to_owned(),
            format!(
                "unix://{}",
                std::env::temp_dir()
                    .join(format!("framewire-bench-{pid}-{mib}.sock"))
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
            format!(
                "shm-ring://bench-{pid}-{mib}?capacity={}",
                2 * size + (1 << 20)
            ),
        ));
    }
    if cfg!(feature = "shm-pool") {
        v.push((
            "shm_pool".into(),
            format!("shm-pool://bench-{pid}-{mib}?slots=4&slot_size={mib}MiB"),
        ));
    }
    if let Ok(url) = std::env::var("FRAMEWIRE_BENCH_URL") {
        v.push(("custom".into(), url));
    }
    v
}

/// The frame sizes of the throughput groups, in MiB (`FRAMEWIRE_BENCH_MIB`).
fn sizes() -> Vec<usize> {
    match std::env::var("FRAMEWIRE_BENCH_MIB") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .unwrap_or_else(|e| panic!("FRAMEWIRE_BENCH_MIB={list}: {s:?}: {e}"))
                    * MIB
            })
            .collect(),
        Err(_) => vec![24 * MIB],
    }
}

fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    a.set_nodelay(true).expect("nodelay");
    b.set_nodelay(true).expect("nodelay");
    (a, b)
}

fn raw_std_net(g: &mut BenchmarkGroup<'_, WallTime>, size: usize) {
    let (mut tx, mut rx) = raw_pair();
    let out = vec![7u8; size];
    let mut inb = vec![0u8; size];
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

/// A publisher on `url` and `n` subscribers connected to it, through any
/// transport.
async fn connect<T: Transport + ?Sized>(
    t: &T,
    url: &str,
    n: usize,
    sopts: &SubscribeOptions,
) -> (T::Publisher, Vec<T::Subscriber>) {
    let ep = Endpoint::parse(url).expect("endpoint");
    let mut p = t
        .publish(&ep, &PublishOptions::default())
        .await
        .unwrap_or_else(|e| panic!("publish on {url}: {e}"));
    let mut subs = Vec::new();
    for _ in 0..n {
        subs.push(
            t.subscribe(p.endpoint(), sopts)
                .await
                .unwrap_or_else(|e| panic!("subscribe to {url}: {e}")),
        );
    }
    if p.subscriber_count().is_some() {
        p.wait_for_subscribers(n, Duration::from_secs(10))
            .await
            .expect("the subscribers connect");
    }
    (p, subs)
}

/// Sends one frame: an owned copy of `payload`, or (`loan`) a loan of its
/// size that nobody writes.
async fn send_one<P: Publisher + ?Sized>(publ: &mut P, payload: &Bytes, loan: bool) {
    if loan {
        let l = publ.loan(payload.len()).await.expect("loan");
        publ.send_loan(l).await.expect("send_loan");
    } else {
        publ.send(Frame::new(payload.clone())).await.expect("send");
    }
}

/// Receives `iters` frames of `size` bytes on every subscriber at once.
async fn recv_all<S: Subscriber>(subs: &mut [S], iters: u64, size: usize) {
    futures_util::future::join_all(subs.iter_mut().map(|s| async move {
        for _ in 0..iters {
            let f = s.recv().await.expect("recv");
            assert_eq!(f.payload.len(), size);
        }
    }))
    .await;
}

/// The throughput arm: `iters` frames of `size` bytes from a publisher to
/// `n` subscribers, sending and receiving concurrently, through any
/// transport (the static API, whatever chose the backend).
#[allow(clippy::too_many_arguments)]
fn stream_arm<T: Transport + ?Sized>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    t: &T,
    id: &str,
    url: &str,
    size: usize,
    n: usize,
    loan: bool,
) {
    let (mut publ, mut subs) = rt.block_on(connect(t, url, n, &SubscribeOptions::default()));
    let payload = Bytes::from(vec![7u8; size]);
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                let send = async {
                    for _ in 0..iters {
                        send_one(&mut publ, &payload, loan).await;
                    }
                };
                tokio::join!(send, recv_all(&mut subs, iters, size));
                t.elapsed()
            })
        })
    });
    rt.block_on(async {
        publ.close().await.expect("close");
    });
}

/// The latency arm: one frame at a time, timed from `send` to the whole
/// frame received, through any transport.
#[allow(clippy::too_many_arguments)]
fn latency_arm<T: Transport + ?Sized>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    t: &T,
    id: &str,
    url: &str,
    mode: RecvMode,
    loan: bool,
) {
    let sopts = SubscribeOptions::default().recv_mode(mode);
    let (mut publ, mut subs) = rt.block_on(connect(t, url, 1, &sopts));
    let payload = Bytes::from(vec![7u8; LATENCY_SIZE]);
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    send_one(&mut publ, &payload, loan).await;
                    let f = subs[0].recv().await.expect("recv");
                    total += t.elapsed();
                    assert_eq!(f.payload.len(), LATENCY_SIZE);
                }
                total
            })
        })
    });
    rt.block_on(async {
        publ.close().await.expect("close");
    });
}

fn backend(
    registry: &framewire::Registry,
    url: &str,
) -> std::sync::Arc<dyn framewire::DynTransport> {
    let ep = Endpoint::parse(url).expect("endpoint");
    registry
        .backend(&ep)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn throughput(c: &mut Criterion, rt: &tokio::runtime::Runtime, registry: &framewire::Registry) {
    for size in sizes() {
        let mut g = c.benchmark_group(format!("throughput_{}MiB", size / MIB));
        g.throughput(Throughput::Bytes(size as u64));
        g.sample_size(20);
        g.measurement_time(Duration::from_secs(8));
        raw_std_net(&mut g, size);
        #[cfg(feature = "zmq")]
        zmq_bare::stream(&mut g, rt, size);
        for (name, url) in urls(size) {
            let t = backend(registry, &url);
            stream_arm(
                &mut g,
                rt,
                &*t,
                &format!("framewire_{name}"),
                &url,
                size,
                1,
                false,
            );
            stream_arm(
                &mut g,
                rt,
                &*t,
                &format!("framewire_{name}_loan"),
                &url,
                size,
                1,
                true,
            );
        }
        g.finish();
    }
}

fn fanout(c: &mut Criterion, rt: &tokio::runtime::Runtime, registry: &framewire::Registry) {
    let mut g = c.benchmark_group(format!("fanout_{}MiB", FANOUT_SIZE / MIB));
    g.throughput(Throughput::Bytes(FANOUT_SIZE as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for n in [2usize, 4] {
        #[cfg(feature = "zmq")]
        zmq_bare::fanout(&mut g, rt, FANOUT_SIZE, n);
        for (name, url) in urls(FANOUT_SIZE) {
            // The fan-out backends: sockets (shared memory hands one copy
            // to every reader, a different measurement).
            if !matches!(name.as_str(), "tcp" | "zmq_tcp") {
                continue;
            }
            let t = backend(registry, &url);
            let id = format!("framewire_{name}/{n}_subscribers");
            stream_arm(&mut g, rt, &*t, &id, &url, FANOUT_SIZE, n, false);
        }
    }
    g.finish();
}

fn latency(c: &mut Criterion, rt: &tokio::runtime::Runtime, registry: &framewire::Registry) {
    let mut g = c.benchmark_group(format!("latency_{}MiB", LATENCY_SIZE / MIB));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(6));
    let mut cases = Vec::new();
    if cfg!(feature = "zmq") {
        let ipc =
            std::env::temp_dir().join(format!("framewire-bench-{}-lat.ipc", std::process::id()));
        let shm = "shm=pool&slots=4&slot_size=24MiB";
        for (name, base) in [
            ("tcp", "zmq+tcp://127.0.0.1:0".to_owned()),
            ("ipc", format!("zmq+ipc://{}", ipc.display())),
        ] {
            cases.push((
                format!("zmq_plain/{name}"),
                base.clone(),
                RecvMode::Owned,
                false,
            ));
            let url = format!("{base}?{shm}");
            cases.push((
                format!("zmq_shm_pool_view/{name}"),
                url.clone(),
                RecvMode::View,
                false,
            ));
            cases.push((
                format!("zmq_shm_pool_owned/{name}"),
                url.clone(),
                RecvMode::Owned,
                false,
            ));
            cases.push((
                format!("zmq_shm_pool_view_loan/{name}"),
                url,
                RecvMode::View,
                true,
            ));
        }
    }
    for (id, url, mode, loan) in cases {
        let t = backend(registry, &url);
        latency_arm(&mut g, rt, &*t, &id, &url, mode, loan);
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = framewire::Registry::with_builtins();
    throughput(c, &rt, &registry);
    fanout(c, &rt, &registry);
    latency(c, &rt, &registry);
}

criterion_group!(benches, bench);
criterion_main!(benches);
