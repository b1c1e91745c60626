//! One subscriber's trouble is its own: a subscriber process stopped with
//! SIGSTOP costs a healthy subscriber no frame under `drop-oldest` (8 MiB
//! frames at 30 Hz and, when the machine carries the rate, at 100 Hz; 1 MiB
//! at 100 Hz) and the publisher's memory stays bounded;
//! under `block` the publisher waits for it at most `write_timeout`, then
//! cuts it off; and 100 hostile connections (random bytes, half-open, a
//! greeting then silence) do not slow the service to a real subscriber.
//!
//! Its own test binary: the timings and the memory figure must not share
//! the machine with other tests of this crate.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use transport_core::{
    Endpoint, Error, Frame, PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport,
};
use transport_zmq::{ZmqPublisher, ZmqTransport};

const T: Duration = Duration::from_secs(30);

/// The tests here measure: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const MIB: usize = 1 << 20;

/// Kills (SIGCONT first) and reaps the child when dropped.
struct Reaped(Child);

impl Reaped {
    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig}");
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Child mode: a subscriber that reads everything (until the stream ends).
#[test]
fn child_subscriber() {
    let Ok(url) = std::env::var("FRAMEWIRE_ISOLATION_CHILD_URL") else {
        return; // Not the child.
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ep = Endpoint::parse(&url).expect("url");
        let mut s = ZmqTransport
            .subscribe(&ep, &SubscribeOptions::default())
            .await
            .expect("subscribe");
        println!("SUBSCRIBED");
        while tokio::time::timeout(Duration::from_secs(60), s.recv())
            .await
            .is_ok_and(|r| !r.as_ref().is_err_and(|e| e.is_disconnect()))
        {}
    });
}

async fn publisher(url: &str) -> ZmqPublisher {
    let ep = Endpoint::parse(url).expect("url");
    tokio::time::timeout(T, ZmqTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect("in time")
        .expect("publish")
}

fn child(url: &str) -> Reaped {
    let mut c = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_subscriber",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FRAMEWIRE_ISOLATION_CHILD_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child subscriber");
    let out = c.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
            if l.contains("SUBSCRIBED") {
                let _ = tx.send(());
            }
        }
    });
    tokio::task::block_in_place(|| rx.recv_timeout(T)).expect("the child subscribed");
    Reaped(c)
}

/// What a healthy subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    frames: u64,
    lagged: u64,
    gaps: u64,
}

fn healthy(mut s: impl Subscriber + 'static) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut next = None;
        loop {
            match tokio::time::timeout(T, s.recv()).await.expect("in time") {
                Ok(f) => {
                    if let Some(n) = next
                        && f.seq != n
                    {
                        seen.gaps += f.seq - n;
                    }
                    next = Some(f.seq + 1);
                    seen.frames += 1;
                }
                Err(Error::Lagged { missed }) => seen.lagged += missed,
                Err(e) if e.is_disconnect() => return seen,
                Err(e) => panic!("{e}"),
            }
        }
    })
}

/// Sends `hz` frames of `size` per second for `secs`, calling `at(t)` once
/// per second; returns the frames sent and the longest `send`.
async fn paced(
    p: &mut ZmqPublisher,
    hz: u32,
    secs: u32,
    size: usize,
    mut at: impl FnMut(u32),
) -> (u64, Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / hz);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut sent, mut longest) = (0u64, Duration::ZERO);
    for i in 0..hz * secs {
        if i % hz == 0 {
            at(i / hz);
        }
        tick.tick().await;
        // A fresh, fully written frame each time (memory is really used).
        let f = Frame::new(Bytes::from(vec![i as u8; size]));
        let t = Instant::now();
        tokio::time::timeout(T, p.send(f))
            .await
            .expect("send in time")
            .expect("send");
        longest = longest.max(t.elapsed());
        sent += 1;
    }
    (sent, longest)
}

/// Whether a run's losses are judged.
#[derive(Clone, Copy, PartialEq)]
enum Judge {
    Always,
    /// Only if the publisher kept its pace (sent within 10% of the
    /// schedule): else the machine did not carry the rate, and the run is
    /// reported as skipped.
    IfPaced,
}

async fn stalled_peer_under_drop_oldest(hz: u32, size: usize, queue: usize, judge: Judge) {
    stalled_peer_under_drop_oldest_x(hz, size, queue, true, true, judge).await
}

/// A measurement, not a test: does nothing unless
/// `FRAMEWIRE_ISOLATION_MEASURE=HZ:MIB:QUEUE:STOP:SECOND` is set (STOP and
/// SECOND 0 or 1: stop the second subscriber; have one). Then it runs that
/// case and asserts what the test does. The figures come from it on a
/// release build (`cargo test --release -p transport-zmq --test isolation
/// measure -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure() {
    let Ok(x) = std::env::var("FRAMEWIRE_ISOLATION_MEASURE") else {
        return;
    };
    let _one = SERIAL.lock().await;
    let v: Vec<usize> = x
        .split(':')
        .map(|n| {
            n.parse()
                .expect("FRAMEWIRE_ISOLATION_MEASURE: HZ:MIB:QUEUE:STOP:SECOND")
        })
        .collect();
    assert_eq!(
        v.len(),
        5,
        "FRAMEWIRE_ISOLATION_MEASURE: HZ:MIB:QUEUE:STOP:SECOND"
    );
    stalled_peer_under_drop_oldest_x(
        v[0] as u32,
        v[1] * MIB,
        v[2],
        v[3] == 1,
        v[4] == 1,
        Judge::Always,
    )
    .await;
}

async fn stalled_peer_under_drop_oldest_x(
    hz: u32,
    size: usize,
    queue: usize,
    stop: bool,
    second: bool,
    judge: Judge,
) {
    let url = format!("zmq+tcp://127.0.0.1:0?policy=drop-oldest&queue={queue}");
    let mut p = publisher(&url).await;
    let stalled = second.then(|| child(p.endpoint().url()));
    let s = tokio::time::timeout(
        T,
        ZmqTransport.subscribe(p.endpoint(), &SubscribeOptions::default()),
    )
    .await
    .expect("in time")
    .expect("subscribe");
    p.wait_for_subscribers(1 + second as usize, T)
        .await
        .expect("two subscribers");
    let reader = healthy(s);
    let before = rss();
    let mut peak = 0u64;
    // 1 s, then the child is stopped for 10 s, then 1 s more.
    let t0 = Instant::now();
    let (sent, _) = paced(&mut p, hz, 12, size, |sec| {
        peak = peak.max(rss().saturating_sub(before));
        if let (Some(stalled), true) = (&stalled, stop) {
            match sec {
                1 => stalled.signal("-STOP"),
                11 => stalled.signal("-CONT"),
                _ => {}
            }
        }
    })
    .await;
    tokio::time::timeout(T, p.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    let stats = p.stats();
    let paced_for = t0.elapsed();
    drop(p);
    let seen = tokio::time::timeout(T, reader)
        .await
        .expect("in time")
        .expect("reader");
    eprintln!(
        "{hz} Hz, {} MiB, a peer stopped 10 s: healthy got {} of {sent} (lagged {}, gaps {}); \
         publisher dropped {} in all; peak RSS growth {} MiB; sent in {paced_for:?}",
        size / MIB,
        seen.frames,
        seen.lagged,
        seen.gaps,
        stats.dropped,
        peak / MIB as u64
    );
    let schedule = Duration::from_secs(12);
    if judge == Judge::IfPaced && paced_for > schedule + schedule / 10 {
        // Printed uncaptured, like the conformance suite's skips.
        let line = format!(
            "SKIPPED {hz} Hz x {} MiB: the machine did not carry the rate (sent in \
             {paced_for:?} instead of {schedule:?}), so losses are not judged",
            size / MIB
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
    } else {
        assert_eq!(
            (seen.frames, seen.lagged, seen.gaps),
            (sent, 0, 0),
            "the healthy subscriber lost frames"
        );
    }
    // Per subscriber: `queue` (4) frames queued and one being written, plus
    // the frame being built and the healthy subscriber's own read-ahead and
    // buffers: about 20 frames, far from the gigabytes sent meanwhile.
    assert!(
        peak < (50 * size) as u64,
        "memory grew by {} MiB",
        peak / MIB as u64
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_subscriber_costs_a_healthy_one_nothing_under_drop_oldest() {
    let _one = SERIAL.lock().await;
    stalled_peer_under_drop_oldest(30, 8 * MIB, 4, Judge::Always).await;
    // 100 Hz of 8 MiB is 800 MB/s to each of two subscribers, through the
    // kernel's loopback copies (send and receive: most of the CPU time, the
    // backend copies nothing itself). Stop 17 saw the healthy subscriber lose
    // 135 of 1200 so in a release build with no peer stopped: the test
    // process had about half a core then, the others being busy compiling.
    // With the CPU to itself (builds at nice 19) it loses none, release or
    // debug, with the default queue: so that case is judged whenever the
    // publisher kept its pace, and reported as skipped when the machine did
    // not carry the rate.
    stalled_peer_under_drop_oldest(100, 8 * MIB, 4, Judge::IfPaced).await;
    // And the stall at 100 Hz, always judged, with 1 MiB frames. A queue of
    // 16 (160 ms at 100 Hz) lets the healthy reader be descheduled for a
    // moment on a loaded CI machine without losing a frame (with 4 it lost 4
    // of 1200 so, with the stalled peer's frames dropped as they should be);
    // memory stays bounded by the check below.
    stalled_peer_under_drop_oldest(100, MIB, 16, Judge::Always).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_block_a_stopped_subscriber_holds_the_publisher_at_most_write_timeout() {
    let _one = SERIAL.lock().await;
    let url = "zmq+tcp://127.0.0.1:0?policy=block&write_timeout=1s";
    let mut p = publisher(url).await;
    let stalled = child(p.endpoint().url());
    let s = tokio::time::timeout(
        T,
        ZmqTransport.subscribe(p.endpoint(), &SubscribeOptions::default()),
    )
    .await
    .expect("in time")
    .expect("subscribe");
    p.wait_for_subscribers(2, T).await.expect("two subscribers");
    let reader = healthy(s);
    let (sent, longest) = paced(&mut p, 30, 4, 8 * MIB, |sec| {
        if sec == 1 {
            stalled.signal("-STOP");
        }
    })
    .await;
    let count = p.subscriber_count();
    tokio::time::timeout(T, p.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    drop(p);
    let seen = tokio::time::timeout(T, reader)
        .await
        .expect("in time")
        .expect("reader");
    eprintln!(
        "block, 30 Hz, 8 MiB, a peer stopped: longest send {longest:?}; healthy got {} of {sent}",
        seen.frames
    );
    // `send` waited for the stopped subscriber's queue until its write had
    // taken write_timeout (1 s); then it was cut off, and nothing else waited.
    assert!(longest >= Duration::from_millis(500), "{longest:?}");
    assert!(longest < Duration::from_secs(4), "{longest:?}");
    assert_eq!(count, Some(1), "the stopped subscriber was cut off");
    assert_eq!((seen.frames, seen.lagged, seen.gaps), (sent, 0, 0));
    drop(stalled);
}

/// Runs `n` hostile connections of three kinds on a thread of their own
/// until `stop` fires: random bytes (reconnecting 100 ms after the publisher
/// closes it), half-open (connected, never a byte), and a valid greeting
/// followed by silence.
fn hostile_connections(
    addr: &str,
    n: usize,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let tasks: Vec<_> = (0..n)
                .map(|i| tokio::spawn(attacker(addr.clone(), i)))
                .collect();
            let _ = stop.await;
            for t in tasks {
                t.abort();
            }
        });
    })
}

async fn attacker(addr: String, i: usize) {
    use tokio::io::AsyncWriteExt;
    {
        {
            {
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (i as u64);
                let mut junk = vec![0u8; 16 << 10];
                loop {
                    let Ok(mut c) = tokio::net::TcpStream::connect(&addr).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    match i % 3 {
                        0 => loop {
                            for b in junk.iter_mut() {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                *b = x as u8;
                            }
                            if c.write_all(&junk).await.is_err() {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        },
                        1 => std::future::pending::<()>().await,
                        _ => {
                            let mut g = [0u8; 64];
                            g[0] = 0xFF;
                            g[8] = 1;
                            g[9] = 0x7F;
                            g[10] = 3;
                            g[12..16].copy_from_slice(b"NULL");
                            let _ = c.write_all(&g).await;
                            std::future::pending::<()>().await
                        }
                    }
                }
            }
        }
    }
}

/// Time to deliver `n` frames of 1 MiB at 50 Hz to one real subscriber.
async fn service_time(hostile: usize) -> Duration {
    let mut p = publisher("zmq+tcp://127.0.0.1:0?handshake_timeout=30s").await;
    let addr = p
        .endpoint()
        .url()
        .trim_start_matches("zmq+tcp://")
        .split('?')
        .next()
        .expect("addr")
        .to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let attackers = hostile_connections(&addr, hostile, stopped);
    let mut s = tokio::time::timeout(
        T,
        ZmqTransport.subscribe(p.endpoint(), &SubscribeOptions::default()),
    )
    .await
    .expect("in time")
    .expect("subscribe");
    p.wait_for_subscribers(1, T).await.expect("subscriber");
    let n = 150u64;
    let reader = tokio::spawn(async move {
        for i in 0..n {
            let f = tokio::time::timeout(T, s.recv())
                .await
                .expect("in time")
                .expect("frame");
            assert_eq!(f.seq, i);
        }
        s
    });
    let t = Instant::now();
    paced(&mut p, 50, 3, MIB, |_| {}).await;
    let s = tokio::time::timeout(T, reader)
        .await
        .expect("in time")
        .expect("reader");
    let took = t.elapsed();
    assert_eq!(
        p.subscriber_count(),
        Some(1),
        "no hostile connection subscribed"
    );
    drop(s);
    let _ = stop.send(());
    tokio::task::block_in_place(|| attackers.join()).expect("attackers");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_do_not_slow_the_service() {
    let _one = SERIAL.lock().await;
    let base = service_time(0).await;
    let hostile = service_time(100).await;
    let base2 = service_time(0).await;
    eprintln!(
        "150 frames of 1 MiB at 50 Hz: {base:?} and {base2:?} alone, {hostile:?} with 100 \
         hostile connections"
    );
    // 3 s of pacing either way; noise on a loaded machine is a fraction of that.
    let worst = base.max(base2);
    assert!(
        hostile <= worst + worst / 5 + Duration::from_millis(300),
        "{hostile:?} vs {base:?}/{base2:?}"
    );
}
