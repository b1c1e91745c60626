//! Where a hand-off's time goes: a publisher thread and a spinning
//! subscriber thread in one process, each pinned to a CPU of its own
//! (`PUB_CPU`, `SUB_CPU`: 0 and 1), one 24 MiB frame in flight, loaned and
//! stamped in place as the pipeline bench does. Prints, as medians over
//! `FRAMES` frames (2000):
//!
//! - `latency`: the frame's send stamp to its receive stamp (what the
//!   pipeline bench reports as the hop latency);
//! - `send_loan`: how long the publisher's `send_loan` call took;
//! - `recv`: how long the subscriber's `recv` call took after the frame
//!   was published (the time from the publisher's return to `recv`'s
//!   return, which covers seeing the ring head move and everything after);
//! - `loan`: the publisher's `loan` (outside the timed window);
//! - `codec`: the frame header's encode and decode alone (the same header,
//!   in a loop on one thread, hot caches): a floor for what each side
//!   spends on the header inside the timed window.
//!
//! Run: `cargo run --release -p transport-shm-pool --example handoff_probe`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use transport_core::{
    Endpoint, Policy, PublishOptions, Publisher, RecvMode, SubscribeOptions, Subscriber, Transport,
    monotonic_ns,
};
use transport_shm_pool::ShmPoolTransport;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        eprintln!("handoff_probe: cannot pin to CPU {cpu}: {e}");
    }
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2] as f64 / 1e3
}

fn p99(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    v[(v.len() * 99 / 100).min(v.len() - 1)] as f64 / 1e3
}

/// Medians (ns) of encoding and of decoding a frame header like the ones
/// sent above (an image layout, one hop), each timed over 64 calls.
fn codec_alone() -> (f64, f64) {
    use transport_core::{Frame, Layout, PixelFormat, codec};
    let payload = bytes::Bytes::from(vec![0u8; 3840 * 2160 * 3]);
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    for i in 0..2000u64 {
        let t0 = monotonic_ns();
        let mut out = bytes::BytesMut::new();
        for _ in 0..64 {
            let mut f = Frame::new(payload.clone()).with_layout(Layout::Image {
                width: 3840,
                height: 2160,
                format: PixelFormat::Rgb8,
            });
            f.stamp_for_send_at(i, Some("probe"), i).expect("stamp");
            out = bytes::BytesMut::with_capacity(128);
            codec::encode_header(&f, &mut out).expect("encode");
        }
        let t1 = monotonic_ns();
        for _ in 0..64 {
            let f = codec::decode_header(&out[codec::PREFIX_LEN..], payload.len() as u64)
                .expect("decode");
            std::hint::black_box(f);
        }
        let t2 = monotonic_ns();
        enc.push((t1 - t0) / 64);
        dec.push((t2 - t1) / 64);
    }
    (median(&mut enc) * 1e3, median(&mut dec) * 1e3)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let frames = env_or("FRAMES", 2000);
    let warmup = 50;
    let (pub_cpu, sub_cpu) = (env_or("PUB_CPU", 0), env_or("SUB_CPU", 1));
    let busy = std::env::var("BUSY").unwrap_or_else(|_| "50us".into());
    let len = 3840 * 2160 * 3;
    let url = format!(
        "shm-pool://probe-{}?slots=4&slot_size=25MB&busy_poll={busy}",
        std::process::id()
    );
    let ep = Endpoint::parse(&url).expect("endpoint");
    // Published at the end of `send_loan` (publisher) and at the end of
    // `recv` (subscriber); each side waits for the other's before it goes on.
    let sent_done = Arc::new(AtomicU64::new(0));
    let got = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();

    let pub_rt = runtime();
    let mut p = pub_rt
        .block_on(
            ShmPoolTransport::new().publish(
                &ep,
                &PublishOptions::default()
                    .policy(Policy::Block)
                    .trace_name("probe".to_owned()),
            ),
        )
        .expect("publish");
    let ep2 = ep.clone();
    let (sent2, got2) = (sent_done.clone(), got.clone());
    let sub = std::thread::spawn(move || {
        pin(sub_cpu);
        let rt = runtime();
        let mut s = rt
            .block_on(
                ShmPoolTransport::new()
                    .subscribe(&ep2, &SubscribeOptions::default().recv_mode(RecvMode::View)),
            )
            .expect("subscribe");
        ready_tx.send(()).expect("ready");
        let (mut lat, mut recv) = (Vec::new(), Vec::new());
        rt.block_on(async {
            for i in 0..frames + warmup {
                let f = tokio::time::timeout(Duration::from_secs(10), s.recv())
                    .await
                    .expect("recv timed out")
                    .expect("recv");
                let end = monotonic_ns();
                let h = f
                    .trace
                    .last()
                    .map(|h| (h.sent_ns, h.received_ns))
                    .expect("a hop");
                drop(f);
                if i >= warmup {
                    lat.push(h.1 - h.0);
                    recv.push(end.saturating_sub(sent2.load(Ordering::Acquire)));
                }
                got2.store(i as u64 + 1, Ordering::Release);
            }
        });
        (lat, recv)
    });
    ready_rx.recv().expect("subscriber ready");
    pin(pub_cpu);
    pub_rt
        .block_on(p.wait_for_subscribers(1, Duration::from_secs(10)))
        .expect("subscriber");
    let (mut send, mut loan_t) = (Vec::new(), Vec::new());
    for i in 0..frames + warmup {
        let t0 = monotonic_ns();
        let mut l = pub_rt.block_on(p.loan(len)).expect("loan");
        l[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t1 = monotonic_ns();
        pub_rt.block_on(p.send_loan(l)).expect("send");
        let t2 = monotonic_ns();
        sent_done.store(t2, Ordering::Release);
        if i >= warmup {
            loan_t.push(t1 - t0);
            send.push(t2 - t1);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut spins = 0u32;
        while got.load(Ordering::Acquire) < i as u64 + 1 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                assert!(std::time::Instant::now() < deadline, "no frame back");
            }
            std::hint::spin_loop();
        }
    }
    let (mut lat, mut recv) = sub.join().expect("subscriber thread");
    println!(
        "latency p50 {:.3} us p99 {:.3} | send_loan {:.3} | recv after publish {:.3} | loan {:.3}",
        median(&mut lat),
        p99(&mut lat),
        median(&mut send),
        median(&mut recv),
        median(&mut loan_t)
    );
    let (enc, dec) = codec_alone();
    println!(
        "codec alone (hot caches): encode {enc:.0} ns (with the frame's build and stamp), decode {dec:.0} ns"
    );
}
