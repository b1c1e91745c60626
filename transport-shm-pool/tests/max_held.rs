//! `max_held`: one subscriber that keeps every frame it receives as a view
//! cannot hold a pool hostage. Past its limit its frames are dropped for it
//! by its own subscriber, which reports each at once as `Error::Lagged`,
//! under every policy: no send waits or fails because of it. The other
//! subscribers keep receiving. Every wait has a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use transport_core::{
    Endpoint, Error, Frame, Policy, PublishOptions, Publisher, RecvMode, SubscribeOptions,
    Subscriber, Transport, pattern,
};
use transport_shm_pool::{ShmPoolPublisher, ShmPoolSubscriber, ShmPoolTransport};

const WAIT: Duration = Duration::from_secs(20);

fn url(test: &str, params: &str) -> Endpoint {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Endpoint::parse(&format!(
        "shm-pool://held-{test}-{}-{n}?{params}",
        std::process::id()
    ))
    .expect("url")
}

async fn setup(
    test: &str,
    params: &str,
    policy: Policy,
) -> (ShmPoolPublisher, ShmPoolSubscriber, ShmPoolSubscriber) {
    let t = ShmPoolTransport::new();
    let mut publ = t
        .publish(
            &url(test, params),
            &PublishOptions::default().policy(policy),
        )
        .await
        .expect("publish");
    let views = SubscribeOptions::default().recv_mode(RecvMode::View);
    let hog = t.subscribe(publ.endpoint(), &views).await.expect("hog");
    let good = t.subscribe(publ.endpoint(), &views).await.expect("good");
    publ.wait_for_subscribers(2, WAIT)
        .await
        .expect("two subscribers");
    (publ, hog, good)
}

/// What the hog did: frames it keeps (as views), and frames it was told it lost.
struct Hog {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Frame>, u64, ShmPoolSubscriber)>,
}

/// Receives and keeps every frame until told to stop.
fn hog(mut sub: ShmPoolSubscriber) -> Hog {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let (mut kept, mut lagged) = (Vec::new(), 0);
        // Until told to stop, then until nothing more arrives for 100 ms:
        // descriptors left unread would hold slots of their own (each frame
        // given back is its own `recv`, returning `Lagged`).
        let mut stopping = false;
        loop {
            let wait = if stopping { 100 } else { 20 };
            match tokio::time::timeout(Duration::from_millis(wait), sub.recv()).await {
                Err(_) if stopping => break,
                Err(_) => {}
                Ok(Ok(f)) => kept.push(f),
                Ok(Err(Error::Lagged { missed })) => lagged += missed,
                Ok(Err(e)) => panic!("hog: {e}"),
            }
            stopping = stopping || s.load(Ordering::Relaxed);
        }
        (kept, lagged, sub)
    });
    Hog { stop, task }
}

impl Hog {
    async fn finish(self) -> (Vec<Frame>, u64, ShmPoolSubscriber) {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("hog stops")
            .expect("hog task")
    }
}

/// The good subscriber gets every frame, intact, while the hog keeps what it gets.
async fn stream(
    publ: &mut ShmPoolPublisher,
    good: &mut ShmPoolSubscriber,
    seqs: std::ops::Range<u64>,
) {
    for seq in seqs {
        // Releases travel back asynchronously: under `fail`, wait for one.
        until("a free slot", || publ.free_slots() > 0).await;
        tokio::time::timeout(WAIT, publ.send(Frame::new(pattern::make(seq, 10_000))))
            .await
            .unwrap_or_else(|_| panic!("send {seq}: the hog holds the pool hostage"))
            .expect("send");
        let f = tokio::time::timeout(WAIT, good.recv())
            .await
            .expect("the good subscriber keeps receiving")
            .unwrap_or_else(|e| panic!("the good subscriber at {seq}: {e}"));
        assert_eq!(f.seq, seq);
        assert!(pattern::check(seq, &f.payload));
    }
}

/// The hog keeps every frame it gets; the other subscriber reads and drops
/// each. The hog ends up with `max_held` views and is told what it lost;
/// the other loses nothing and no send waits for the hog.
async fn hog_is_capped(test: &str, params: &str, policy: Policy, max_held: usize) {
    let (mut publ, hog_sub, mut good) = setup(test, params, policy).await;
    assert_eq!(publ.max_held(), max_held);
    assert_eq!(hog_sub.max_held(), Some(max_held), "announced with HELLO");
    let hog = hog(hog_sub);
    stream(&mut publ, &mut good, 0..40).await;
    let (kept, mut lagged, mut hog_sub) = hog.finish().await;
    assert_eq!(kept.len(), max_held, "the hog keeps max_held views");
    assert!(kept.iter().all(|f| pattern::check(f.seq, &f.payload)));
    let dropped = hog_sub.dropped_over_max_held();
    // The rest it lost the drop-oldest way, when it read too slowly.
    assert!(
        dropped > 0,
        "{dropped} frames given back by the hog ({policy:?})"
    );
    until("the hog's slots back but max_held", || {
        publ.free_slots() == publ.slots() - max_held
    })
    .await;
    drop(kept);
    until("every slot back", || publ.free_slots() == publ.slots()).await;
    // Under its limit again, it gets frames again; every frame given back
    // was reported as lag (each at once, when it was dropped).
    stream(&mut publ, &mut good, 40..41).await;
    loop {
        match tokio::time::timeout(WAIT, hog_sub.recv())
            .await
            .expect("the hog's next recv")
        {
            Err(Error::Lagged { missed }) => lagged += missed,
            Ok(f) if f.seq == 40 => break,
            Ok(f) => assert!(f.seq < 40 && pattern::check(f.seq, &f.payload)),
            Err(e) => panic!("hog: {e}"),
        }
    }
    assert!(
        lagged >= dropped,
        "{lagged} reported < {dropped} given back"
    );
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `drop-oldest` with `max_held` below the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_caps_the_hog() {
    hog_is_capped(
        "drop",
        "slots=4&max_held=3&slot_size=64KiB",
        Policy::DropOldest,
        3,
    )
    .await;
}

/// `block`: nothing waits for the hog (it gives frames back as it reads them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_caps_the_hog() {
    hog_is_capped(
        "block",
        "slots=4&max_held=3&slot_size=64KiB",
        Policy::Block,
        3,
    )
    .await;
}

/// `fail`: sends do not fail because of the hog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_caps_the_hog() {
    hog_is_capped(
        "fail",
        "slots=8&max_held=1&slot_size=64KiB",
        Policy::Fail,
        1,
    )
    .await;
}

/// Owned mode holds no views: `max_held` drops nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_subscribers_are_not_capped() {
    let t = ShmPoolTransport::new();
    let mut publ = t
        .publish(
            &url("owned", "slots=4&max_held=1&slot_size=64KiB"),
            &PublishOptions::default().policy(Policy::Block),
        )
        .await
        .expect("publish");
    let mut sub = t
        .subscribe(publ.endpoint(), &SubscribeOptions::default())
        .await
        .expect("subscribe");
    publ.wait_for_subscribers(1, WAIT)
        .await
        .expect("subscriber");
    let mut kept = Vec::new();
    for seq in 0..4 {
        publ.send(Frame::new(pattern::make(seq, 1000)))
            .await
            .expect("send");
    }
    for seq in 0..4 {
        let f = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("in time")
            .expect("recv");
        assert_eq!(f.seq, seq);
        kept.push(f);
    }
    assert_eq!(sub.dropped_over_max_held(), 0);
}

/// The default is half the pool, and a forwarder's views do not count
/// against it once forwarded: A (4 slots, default `max_held` 2) -> B
/// (forwarder, in this process) -> C, which keeps all three frames as
/// views. Each of A's slots stays held (C holds B's forward slots, which
/// hold B's views of A), yet B receives every frame: B's publisher bounds
/// them with its own forward slots. A subscriber that keeps views without
/// forwarding them is still capped at the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_views_do_not_count_against_the_default() {
    let t = ShmPoolTransport::new();
    let views = SubscribeOptions::default().recv_mode(RecvMode::View);
    let opts = PublishOptions::default().policy(Policy::Fail);
    let mut a = t
        .publish(&url("fwd-a", "slots=4&slot_size=64KiB"), &opts)
        .await
        .expect("publish A");
    assert_eq!(a.max_held(), 2, "half the pool by default");
    let mut b_sub = t.subscribe(a.endpoint(), &views).await.expect("B at A");
    let mut b = t
        // C keeps all three: B lets it.
        .publish(&url("fwd-b", "slots=4&max_held=4&slot_size=64KiB"), &opts)
        .await
        .expect("publish B");
    let mut c = t.subscribe(b.endpoint(), &views).await.expect("C at B");
    a.wait_for_subscribers(1, WAIT).await.expect("B");
    b.wait_for_subscribers(1, WAIT).await.expect("C");
    let mut kept = Vec::new();
    for i in 0..3u64 {
        a.send(Frame::new(pattern::make(i, 1000)))
            .await
            .expect("send A");
        let f = tokio::time::timeout(WAIT, b_sub.recv())
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("frame {i} at B: {e}"));
        b.send(f).await.expect("forward");
        let f = tokio::time::timeout(WAIT, c.recv())
            .await
            .expect("in time")
            .unwrap_or_else(|e| panic!("frame {i} at C: {e}"));
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
        kept.push(f);
    }
    assert_eq!(b.forwarded(), 3, "all three forwarded without a copy");
    assert_eq!(b_sub.dropped_over_max_held(), 0);
    assert_eq!(a.free_slots(), 1, "C's views hold three of A's slots");
    drop(kept);
    until("A's slots back", || a.free_slots() == 4).await;

    // B's views that it keeps itself (not forwarded) count: the third is dropped.
    let mut held = Vec::new();
    for i in 3..5u64 {
        a.send(Frame::new(pattern::make(i, 1000)))
            .await
            .expect("send A");
        held.push(
            tokio::time::timeout(WAIT, b_sub.recv())
                .await
                .expect("in time")
                .expect("a frame"),
        );
    }
    a.send(Frame::new(pattern::make(5, 1000)))
        .await
        .expect("send A");
    match tokio::time::timeout(WAIT, b_sub.recv())
        .await
        .expect("in time")
    {
        Err(Error::Lagged { missed: 1 }) => {}
        other => panic!("expected the third kept view to be dropped, got {other:?}"),
    }
    assert_eq!(b_sub.dropped_over_max_held(), 1);
    drop(held);
}
