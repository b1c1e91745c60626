//! The zmq backend's baselines: bare PUB/SUB loops that do not go through
//! the `Transport` API, so they cannot be arms of the generic bench.
//!
//! - `bare_zmtp/tcp`: the backend's own ZMTP layer on its own (one
//!   connection, `zmtp::write_message` and `zmtp::Reader::next` in a loop):
//!   the "same library" baseline of `framewire_zmq_tcp`;
//! - `bare_zeromq/...`: the `zeromq` crate's PUB/SUB (0.7), which the
//!   backend used before it had its own layer.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use framewire::zmq::zmtp::{self, Incoming, Limits};
use tokio::io::AsyncWriteExt;
use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

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

/// `iters` messages of `size` bytes through a bare `zeromq` PUB to all its
/// SUBs, sending and receiving concurrently.
async fn zeromq_pump(publ: &mut PubSocket, subs: &mut [SubSocket], iters: u64, payload: &Bytes) {
    let size = payload.len();
    let send = async {
        for _ in 0..iters {
            publ.send(ZmqMessage::from(payload.clone()))
                .await
                .expect("send");
        }
    };
    let recv = futures_util::future::join_all(subs.iter_mut().map(|s| async move {
        for _ in 0..iters {
            let m = s.recv().await.expect("recv");
            assert_eq!(m.get(0).map(|p| p.len()), Some(size));
        }
    }));
    tokio::join!(send, recv);
}

/// The one-subscriber baselines: `bare_zmtp/tcp` and `bare_zeromq/tcp`.
pub fn stream(g: &mut BenchmarkGroup<'_, WallTime>, rt: &tokio::runtime::Runtime, size: usize) {
    let payload = Bytes::from(vec![7u8; size]);
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
    fanout_named(g, rt, size, 1, "bare_zeromq/tcp");
}

/// The fan-out baseline: `bare_zeromq/<n>_subscribers`.
pub fn fanout(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    size: usize,
    n: usize,
) {
    fanout_named(g, rt, size, n, &format!("bare_zeromq/{n}_subscribers"));
}

fn fanout_named(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    size: usize,
    n: usize,
    id: &str,
) {
    let payload = Bytes::from(vec![7u8; size]);
    let (mut bp, mut bs) = rt.block_on(bare_zeromq(n));
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                zeromq_pump(&mut bp, &mut bs, iters, &payload).await;
                t.elapsed()
            })
        })
    });
}
