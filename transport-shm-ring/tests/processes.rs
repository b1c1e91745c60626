//! Real processes: fan-out to child subscribers, SIGKILL of a subscriber and
//! of the publisher, and the lap race under drop-oldest. Every child is
//! killed and reaped by a guard; every wait has a deadline.

mod common;

use std::time::Duration;

use common::{
    Peer, T, assert_dev_shm_unchanged, cpu_time_of, dev_shm, field, name, runtime, within,
};
use transport_core::{Endpoint, Error, Frame, Publisher, Subscriber, Transport, pattern};
use transport_shm_ring::ShmRingTransport;

fn endpoint(url: &str) -> Endpoint {
    Endpoint::parse(url).expect("valid endpoint")
}

/// Two child processes each receive every frame intact; they map the ring
/// read-only, the publisher maps their pages read-only.
#[test]
fn fan_out_to_two_child_subscribers() {
    let shm_before = dev_shm();
    let url = format!("shm-ring://{}?capacity=16MiB", name("fanout"));
    let rt = runtime();
    rt.block_on(async {
        let mut publ = ShmRingTransport
            .publish(&endpoint(&url), &Default::default())
            .await
            .expect("publish");
        let a = Peer::spawn(&["sub", &url, "--count", "24"]);
        let b = Peer::spawn(&["sub", &url, "--count", "24"]);
        a.expect("ready");
        b.expect("ready");
        within("subscribers", publ.wait_for_subscribers(2, T))
            .await
            .expect("two subscribers");
        for (peer, who) in [(&a, "a"), (&b, "b")] {
            let maps = peer.ring_mappings();
            let ring: Vec<_> = maps
                .iter()
                .filter(|(_, n)| n == "framewire-shm-ring")
                .collect();
            assert!(!ring.is_empty(), "child {who} maps the ring: {maps:?}");
            assert!(
                ring.iter().all(|(perm, _)| perm.starts_with("r--s")),
                "child {who} maps the ring read-only only: {ring:?}"
            );
        }
        // This process maps the children's pages read-only. (Subscribers of
        // tests running alongside map their own pages read-write here too.)
        let mine = common::ring_mappings_of("/proc/self/maps");
        let read_only_pages = mine
            .iter()
            .filter(|(p, n)| n == "framewire-shm-ring-reader" && p.starts_with("r--s"))
            .count();
        assert!(read_only_pages >= 2, "{mine:?}");
        // Sizes from 0 B to 4 MiB, some wrapping around the end of the ring.
        for i in 0..24u64 {
            let len = [0, 1, 4096, 1 << 20, 4 << 20, 3 << 20][i as usize % 6] + i as usize;
            within("send", publ.send(Frame::new(pattern::make(i, len))))
                .await
                .expect("send");
        }
        within("both children to read", publ.wait_consumed(T))
            .await
            .expect("consumed");
        drop(publ);
        for (mut peer, who) in [(a, "a"), (b, "b")] {
            let summary = peer.line();
            assert_eq!(field(&summary, "received"), 24, "child {who}: {summary}");
            assert_eq!(field(&summary, "corrupt"), 0, "child {who}: {summary}");
            assert_eq!(field(&summary, "lagged"), 0, "child {who}: {summary}");
            assert_eq!(peer.wait(), 0, "child {who} exit code");
        }
    });
    assert_dev_shm_unchanged(&shm_before);
}

/// A subscriber that never reads holds a `block` publisher back (without
/// the publisher burning CPU); SIGKILL it and the publisher goes on at once.
#[test]
fn sigkill_of_a_subscriber_releases_the_writer() {
    let shm_before = dev_shm();
    let url = format!("shm-ring://{}?capacity=8MiB&max_records=4", name("killsub"));
    let rt = runtime();
    rt.block_on(async {
        let mut publ = ShmRingTransport
            .publish(&endpoint(&url), &Default::default())
            .await
            .expect("publish");
        let mut stalled = Peer::spawn(&["sub", &url, "--count", "0", "--hold"]);
        let reader = Peer::spawn(&["sub", &url, "--count", "12"]);
        stalled.expect("ready");
        reader.expect("ready");
        within("subscribers", publ.wait_for_subscribers(2, T))
            .await
            .expect("two subscribers");
        // The stalled child printed its (empty) summary and now sleeps.
        assert!(stalled.line().starts_with("received=0"));
        for i in 0..4 {
            within("send", publ.send(Frame::new(pattern::make(i, 1 << 20))))
                .await
                .expect("send");
        }
        // The ring is full for the stalled reader: the fifth send waits. The
        // live child, having read all four, sleeps meanwhile.
        // Let the live child finish reading and checking those four frames
        // (a debug build on a loaded machine takes tens of ms), then
        // measure: the first 100 ms without CPU use start the idle window.
        let settle = std::time::Instant::now() + Duration::from_secs(5);
        let mut reader_cpu = cpu_time_of(reader.pid());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = cpu_time_of(reader.pid());
            if now == reader_cpu || std::time::Instant::now() > settle {
                reader_cpu = now;
                break;
            }
            reader_cpu = now;
        }
        let blocked = tokio::time::timeout(
            Duration::from_millis(500),
            publ.send(Frame::new(pattern::make(4, 1 << 20))),
        )
        .await;
        assert!(
            blocked.is_err(),
            "send must wait for the stalled subscriber under block"
        );
        let idle = cpu_time_of(reader.pid()) - reader_cpu;
        assert!(
            idle <= Duration::from_millis(20),
            "an idle child subscriber used {idle:?} of CPU in 500 ms"
        );
        assert_eq!(publ.subscriber_count(), Some(2));
        stalled.kill();
        // Its socket closes with the process: the writer forgets its cursor.
        for i in 4..12 {
            within(
                "send after the kill",
                publ.send(Frame::new(pattern::make(i, 1 << 20))),
            )
            .await
            .expect("send");
            if i == 4 {
                // The live child still has frames to read, so it is still here.
                assert_eq!(
                    publ.subscriber_count(),
                    Some(1),
                    "the killed subscriber is forgotten"
                );
            }
        }
        within("the live child to read", publ.wait_consumed(T))
            .await
            .expect("consumed");
        let mut reader = reader;
        let summary = reader.line();
        assert_eq!(field(&summary, "received"), 12, "{summary}");
        assert_eq!(field(&summary, "corrupt"), 0, "{summary}");
        assert_eq!(reader.wait(), 0);
        assert_eq!(publ.stats().dropped, 0);
    });
    assert_dev_shm_unchanged(&shm_before);
}

/// A publisher killed with SIGKILL: its subscriber reads every committed
/// frame, then gets `Disconnected` promptly.
#[test]
fn sigkill_of_the_publisher_disconnects_subscribers() {
    let shm_before = dev_shm();
    let url = format!("shm-ring://{}?capacity=16MiB", name("killpub"));
    let rt = runtime();
    rt.block_on(async {
        let mut publ = Peer::spawn(&[
            "pub", &url, "--count", "5", "--size", "1MiB", "--subs", "1", "--hold",
        ]);
        publ.expect("ready");
        let mut sub = within(
            "subscribe",
            ShmRingTransport.subscribe(&endpoint(&url), &Default::default()),
        )
        .await
        .expect("subscribe");
        publ.expect("sent=5");
        for i in 0..2 {
            let f = within("recv", sub.recv()).await.expect("frame");
            assert_eq!(f.seq, i);
            assert!(pattern::check(i, &f.payload));
        }
        publ.kill();
        let killed = std::time::Instant::now();
        for i in 2..5 {
            let f = within("recv after the kill", sub.recv())
                .await
                .expect("committed frames survive the publisher");
            assert_eq!(f.seq, i);
            assert!(pattern::check(i, &f.payload));
        }
        match within("disconnect", sub.recv()).await {
            Err(Error::Disconnected { .. }) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "disconnect took {:?}",
            killed.elapsed()
        );
        assert!(matches!(sub.recv().await, Err(Error::Disconnected { .. })));
        // The name died with the publisher: a new one can take it at once.
        let again = ShmRingTransport
            .publish(&endpoint(&url), &Default::default())
            .await;
        assert!(
            again.is_ok(),
            "the abstract name is free again: {:?}",
            again.err()
        );
    });
    assert_dev_shm_unchanged(&shm_before);
}

/// Under drop-oldest, a child reader that is lapped while it copies never
/// returns corrupt data: it throws the copy away, reports lag and resumes at
/// the oldest intact record.
///
/// The ring holds exactly one record, and the writer fills each frame in
/// place (a loan): its next loan overwrites the very record the reader was
/// woken up to copy. Between a commit and the next loan it waits a delay
/// that sweeps 0 to 2.5 ms, so that the overwrite starts before, during or
/// after the reader's copy (about 1 ms for 8 MiB).
#[test]
fn lapped_reader_never_returns_corrupt_data() {
    let shm_before = dev_shm();
    let rt = runtime();
    // In a debug build the writer's pattern fill is slow and few frames go
    // by; each attempt is checked in full, and the race must show up in one.
    let mut torn = 0;
    for attempt in 0..3 {
        torn = rt.block_on(lap_race());
        if torn > 0 {
            break;
        }
        eprintln!("lap race attempt {attempt}: no copy was overwritten mid-way; again");
    }
    assert!(
        torn > 0,
        "no copy was ever overwritten mid-way: the race was not exercised"
    );
    assert_dev_shm_unchanged(&shm_before);
}

/// One run of the lap race; returns how many copies the child threw away.
async fn lap_race() -> u64 {
    let url = format!(
        "shm-ring://{}?capacity=8MiB&policy=drop-oldest",
        name("lap")
    );
    let size = (8 << 20) - 128; // the largest payload: one record fills the ring
    let mut publ = ShmRingTransport
        .publish(&endpoint(&url), &Default::default())
        .await
        .expect("publish");
    let mut child = Peer::spawn(&["sub", &url, "--duration-ms", "2500"]);
    child.expect("ready");
    within("subscriber", publ.wait_for_subscribers(1, T))
        .await
        .expect("subscriber");
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_millis(2400) {
        let mut loan = within("loan", publ.loan(size))
            .await
            .expect("loan never blocks under drop-oldest");
        pattern::fill(sent, &mut loan);
        within("send_loan", publ.send_loan(loan))
            .await
            .expect("send_loan");
        sent += 1;
        // Blocking on purpose: finer than tokio's millisecond timer.
        std::thread::sleep(Duration::from_micros((sent * 397) % 2500));
    }
    let summary = child.line();
    assert_eq!(child.wait(), 0, "{summary}");
    let (received, lagged, corrupt, torn) = (
        field(&summary, "received"),
        field(&summary, "lagged"),
        field(&summary, "corrupt"),
        field(&summary, "torn"),
    );
    eprintln!("lap race: sent {sent}, {summary}");
    assert_eq!(corrupt, 0, "{summary}");
    assert!(received > 0, "{summary}");
    assert!(
        lagged >= torn.min(1),
        "a torn copy is reported as lag: {summary}"
    );
    assert!(received + lagged <= sent, "{summary}, sent {sent}");
    assert!(
        publ.stats().dropped >= lagged,
        "{:?} vs {summary}",
        publ.stats()
    );
    torn
}

/// The payload `shm-ring-peer pub --quick` sends as frame `seq`: the byte
/// `seq as u8`, with `seq` in the first and last 8 bytes.
fn is_quick_pattern(seq: u64, payload: &[u8]) -> bool {
    let len = payload.len();
    if len < 16 {
        return payload.iter().all(|&b| b == seq as u8);
    }
    let fill = [seq as u8; 1 << 16];
    payload[..8] == seq.to_le_bytes()
        && payload[len - 8..] == seq.to_le_bytes()
        && payload[8..len - 8]
            .chunks(fill.len())
            .all(|c| c == &fill[..c.len()])
}

/// Under drop-oldest, a reader lapped while it copies never accepts a torn
/// frame, also when the writer streams the payload with non-temporal stores
/// (frames of 16 MiB and more, `transport_core::copy::STREAM_MIN`), which
/// x86 may make visible before the horizon store that announces the lap
/// unless an `sfence` sits between them.
///
/// The writer is a child process sending copies (`send`, the streaming
/// path) of sizes that do not divide the ring, so that each record starts
/// at another offset of the one it overwrites; the reader, here, checks
/// every byte of every frame it accepts and sleeps a delay sweeping 0 to
/// 5 ms between frames, so that its copies overlap the writer's at every
/// phase. Every frame it accepts must be entirely one frame.
#[test]
fn lapped_reader_never_accepts_a_torn_streamed_frame() {
    let shm_before = dev_shm();
    let rt = runtime();
    let (mut torn, mut accepted) = (0, 0);
    for attempt in 0..3 {
        let (t, a) = rt.block_on(streamed_lap_race());
        torn += t;
        accepted += a;
        if torn >= 3 && accepted >= 10 {
            break;
        }
        eprintln!("streamed lap race attempt {attempt}: {torn} torn copies so far; again");
    }
    assert!(
        torn > 0 && accepted > 0,
        "the race was not exercised: {torn} torn copies, {accepted} frames accepted"
    );
    assert_dev_shm_unchanged(&shm_before);
}

/// One run: returns (copies thrown away as torn, frames accepted and checked).
async fn streamed_lap_race() -> (u64, u64) {
    let url = format!(
        "shm-ring://{}?capacity=24MiB&policy=drop-oldest",
        name("stream-lap")
    );
    let sizes = "16MiB,17000000,20000000,18000123,16777300";
    let mut child = Peer::spawn(&[
        "pub", &url, "--count", "1000000", "--sizes", sizes, "--quick", "--subs", "1",
    ]);
    child.expect("ready");
    let mut sub = within(
        "subscribe",
        ShmRingTransport.subscribe(&endpoint(&url), &Default::default()),
    )
    .await
    .expect("subscribe");
    let started = std::time::Instant::now();
    let (mut accepted, mut lagged, mut bad) = (0u64, 0u64, Vec::new());
    while started.elapsed() < Duration::from_millis(2500) {
        match within("recv", sub.recv()).await {
            Ok(f) => {
                if f.payload.len() < 16 << 20 || !is_quick_pattern(f.seq, &f.payload) {
                    bad.push(f.seq);
                }
                accepted += 1;
                // Blocking on purpose: finer than tokio's millisecond timer.
                std::thread::sleep(Duration::from_micros((accepted * 397) % 5000));
            }
            Err(Error::Lagged { missed }) => lagged += missed,
            Err(e) => panic!("recv: {e}"),
        }
    }
    let torn = sub.torn_copies();
    eprintln!("streamed lap race: accepted {accepted}, lagged {lagged}, torn {torn}");
    assert!(bad.is_empty(), "torn frames accepted: {bad:?}");
    child.kill();
    (torn, accepted)
}

/// A publisher blocked on a subscriber that does not read sleeps: no CPU.
#[test]
fn a_blocked_child_publisher_uses_no_cpu() {
    let url = format!("shm-ring://{}?capacity=8MiB&max_records=4", name("blocked"));
    let rt = runtime();
    rt.block_on(async {
        let publ = Peer::spawn(&[
            "pub", &url, "--count", "10", "--size", "1MiB", "--subs", "1", "--hold",
        ]);
        publ.expect("ready");
        let mut sub = within(
            "subscribe",
            ShmRingTransport.subscribe(&endpoint(&url), &Default::default()),
        )
        .await
        .expect("subscribe");
        // Let it fill the ring (4 records) and block on the fifth.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = cpu_time_of(publ.pid());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let used = cpu_time_of(publ.pid()) - before;
        assert!(
            used <= Duration::from_millis(20),
            "a blocked publisher used {used:?} of CPU in 500 ms"
        );
        for i in 0..10 {
            let f = within("recv", sub.recv()).await.expect("frame");
            assert_eq!(f.seq, i);
            assert!(pattern::check(i, &f.payload));
        }
        publ.expect("sent=10");
    });
}
