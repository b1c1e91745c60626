//! `write_timeout` is a deadline per frame, not per write: a subscriber that
//! trickles (reads a little just before each timeout would fire) is cut off
//! once a whole frame has not gone through in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use transport_core::{
    Endpoint, Frame, Policy, PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport,
    pattern,
};
use transport_tcp::{PROTOCOL_VERSION, TcpPublisher, TcpTransport};

const T: Duration = Duration::from_secs(20);
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// A raw subscriber with a small receive buffer that reads `chunk` bytes
/// every `pace` (a little before each `write_timeout` would expire) and
/// sends heartbeats, counting what it read in `total`, until aborted.
async fn trickler(
    p: &TcpPublisher,
    chunk: usize,
    pace: Duration,
    total: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(8 << 10).unwrap();
    let addr = p.endpoint().address().parse().unwrap();
    let mut s: TcpStream = within(sock.connect(addr)).await.unwrap();
    let mut hello = [0u8; 12];
    hello[..4].copy_from_slice(b"FWHS");
    hello[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    hello[8..12].copy_from_slice(&60_000u32.to_le_bytes());
    s.write_all(&hello).await.unwrap();
    let mut reply = [0u8; 32];
    within(s.read_exact(&mut reply)).await.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; chunk];
        loop {
            tokio::time::sleep(pace).await;
            let _ = s.write_all(b"FWHB").await;
            match tokio::time::timeout(T, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) => {
                    total.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    })
}

async fn setup(policy: Policy) -> (TcpPublisher, transport_tcp::TcpSubscriber) {
    let ep = Endpoint::parse(&format!(
        "tcp://127.0.0.1:0?write_timeout={}ms&queue=2&liveness=60s",
        WRITE_TIMEOUT.as_millis()
    ))
    .unwrap();
    let mut p = within(TcpTransport.publish(&ep, &PublishOptions::default().policy(policy)))
        .await
        .unwrap();
    let s = within(TcpTransport.subscribe(p.endpoint(), &SubscribeOptions::default()))
        .await
        .unwrap();
    within(p.wait_for_subscribers(1, T)).await.unwrap();
    (p, s)
}

async fn run(policy: Policy) {
    let (mut p, mut s) = setup(policy).await;
    let pace = WRITE_TIMEOUT * 7 / 10;
    let total = Arc::new(AtomicU64::new(0));
    let slow = trickler(&p, 16 << 10, pace, total.clone()).await;
    within(p.wait_for_subscribers(2, T)).await.unwrap();
    let n = 12u64;
    let size = 2 << 20;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        loop {
            match within(s.recv()).await {
                Ok(f) => {
                    assert!(pattern::check(f.seq, &f.payload));
                    got += 1;
                    if f.seq == n - 1 {
                        // The good subscriber stays connected (returned, not
                        // dropped) until the trickler is cut off, so that the
                        // count below falls to 1 for the trickler alone.
                        return (got, s);
                    }
                }
                Err(transport_core::Error::Lagged { .. }) => {}
                Err(e) => panic!("the good subscriber failed: {e}"),
            }
        }
    });
    let start = Instant::now();
    for i in 0..n {
        within(p.send(Frame::new(pattern::make(i, size))))
            .await
            .unwrap();
    }
    within(p.flush()).await.unwrap();
    let (got, good) = within(reader).await.unwrap();
    assert!(got > 0);
    let cut = within(async {
        while p.subscriber_count() != Some(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    })
    .await;
    drop(good);
    let read = total.load(Ordering::Relaxed);
    slow.abort();
    let _ = slow.await;
    assert!(
        read < size as u64,
        "the trickler took a whole frame ({read} B): the test needs a slower one"
    );
    // Cut off after about one write_timeout, not after the ~(2 MiB / 256 B)
    // paces a trickled frame would take.
    assert!(
        cut < WRITE_TIMEOUT * 8,
        "the trickler was cut off only after {cut:?}"
    );
    if policy == Policy::DropOldest {
        assert!(p.stats().dropped > 0, "frames were dropped for it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_subscriber_is_cut_off_under_block() {
    run(Policy::Block).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_subscriber_is_cut_off_under_drop_oldest() {
    run(Policy::DropOldest).await;
}
