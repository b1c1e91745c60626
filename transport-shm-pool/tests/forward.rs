//! Zero-copy forwarding: a view received from one pool, re-sent through
//! another pool's publisher, reaches that publisher's subscribers without a
//! copy, and the upstream slot stays reserved until every downstream view of
//! it is gone. Everything in one process; `processes.rs` does it across
//! processes. Every wait has a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use transport_core::{
    Endpoint, Error, Frame, Layout, PixelFormat, Policy, PublishOptions, Publisher, RecvMode,
    SubscribeOptions, Subscriber, Transport, pattern,
};
use transport_shm_pool::{ShmPoolPublisher, ShmPoolSubscriber, ShmPoolTransport};

const WAIT: Duration = Duration::from_secs(20);

fn url(test: &str, params: &str) -> Endpoint {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Endpoint::parse(&format!(
        "shm-pool://fwd-{test}-{}-{n}?{params}",
        std::process::id()
    ))
    .expect("url")
}

async fn publisher(test: &str, params: &str, policy: Policy, trace: &str) -> ShmPoolPublisher {
    ShmPoolTransport::new()
        .publish(
            &url(test, params),
            &PublishOptions::default()
                .policy(policy)
                .trace_name(trace.to_owned()),
        )
        .await
        .expect("publish")
}

async fn subscriber(publ: &mut ShmPoolPublisher, mode: RecvMode) -> ShmPoolSubscriber {
    let n = transport_core::Publisher::subscriber_count(publ).unwrap_or(0);
    let sub = ShmPoolTransport::new()
        .subscribe(
            publ.endpoint(),
            &SubscribeOptions::default().recv_mode(mode),
        )
        .await
        .expect("subscribe");
    publ.wait_for_subscribers(n + 1, WAIT)
        .await
        .expect("subscriber registered");
    sub
}

async fn recv<S: Subscriber>(sub: &mut S) -> transport_core::Result<Frame> {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("recv in time")
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

/// Stays true for a little while (a release that should not happen has
/// time to arrive).
async fn stays(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..30 {
        assert!(f(), "{what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends frame `seq` (`len` pattern bytes) through `publ`'s own slot.
async fn send_pattern(publ: &mut ShmPoolPublisher, seq: u64, len: usize) {
    let mut loan = tokio::time::timeout(WAIT, publ.loan(len))
        .await
        .expect("a slot in time")
        .expect("loan");
    pattern::fill(seq, &mut loan);
    publ.send_loan(loan).await.expect("send_loan");
}

/// A -> (view) -> B -> C: the payload arrives intact, B copies nothing (its
/// pool stays free, one forward slot per frame), and A's slot is held until
/// C's last clone of the view is gone, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_forwards_without_a_copy() {
    // Every slot of A may be under a view of B's in flight (the releases
    // travel C -> B -> A): `max_held` is the whole pool.
    let mut a = publisher(
        "chain-a",
        "slots=4&slot_size=1MiB&max_held=4",
        Policy::Fail,
        "a",
    )
    .await;
    let mut sub_a = subscriber(&mut a, RecvMode::View).await;
    let mut b = publisher("chain-b", "slots=4&slot_size=1MiB", Policy::Fail, "b").await;
    let mut c = subscriber(&mut b, RecvMode::View).await;

    let len = 640 * 480 * 3;
    let layout = Layout::Image {
        width: 640,
        height: 480,
        format: PixelFormat::Rgb8,
    };
    let mut loan = a.loan(len).await.expect("loan");
    pattern::fill(0, &mut loan);
    loan.topic = "cam/0".into();
    loan.layout = layout.clone();
    loan.metadata = Bytes::from_static(b"exposure=10ms");
    a.send_loan(loan).await.expect("send A");
    let fa = recv(&mut sub_a).await.expect("recv A");
    let upstream_ptr = fa.payload.as_ptr();
    assert_eq!(a.free_slots(), 3);

    b.send(fa).await.expect("forward");
    assert_eq!(b.forwarded(), 1, "sent as a forward");
    assert_eq!(b.free_slots(), 4, "no slot of B's pool was used");
    assert_eq!(b.free_forward_slots(), 3);
    let fc = recv(&mut c).await.expect("recv C");
    assert_eq!(fc.seq, 0);
    assert_eq!(fc.topic, "cam/0");
    assert_eq!(fc.layout, layout);
    assert_eq!(&fc.metadata[..], b"exposure=10ms");
    assert_eq!(fc.payload.len(), len);
    assert!(pattern::check(0, &fc.payload), "the payload arrived intact");
    assert_ne!(
        fc.payload.as_ptr(),
        upstream_ptr,
        "C reads its own mapping of A's segment"
    );
    let names: Vec<&str> = fc.trace.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "one hop per publisher");
    assert!(fc.trace.iter().all(|h| h.received_ns >= h.sent_ns));

    // B dropped its own copy of the view long ago: only C holds A's slot now.
    stays("A's slot is held while C views it", || a.free_slots() == 3).await;
    let clone = fc.payload.clone();
    drop(fc);
    stays("a clone still holds it", || a.free_slots() == 3).await;
    assert!(pattern::check(0, &clone));
    drop(clone);
    until("A's slot back once C's view is gone", || {
        a.free_slots() == 4
    })
    .await;
    until("B's forward slot back", || b.free_forward_slots() == 4).await;

    // A stream of frames goes the same way, in order, nothing copied.
    // Both pools use the `fail` policy and releases travel back
    // asynchronously (C -> A's release socket), so on a loaded machine the
    // views of the last few frames may not be back yet: wait for a free slot
    // (with a deadline) instead of racing the release.
    for seq in 1..=40u64 {
        until("a free slot in A", || a.free_slots() > 0).await;
        send_pattern(&mut a, seq, 100_000 + seq as usize).await;
        let f = recv(&mut sub_a).await.expect("recv A");
        until("a free forward slot in B", || b.free_forward_slots() > 0).await;
        b.send(f).await.expect("forward");
        let f = recv(&mut c).await.expect("recv C");
        assert_eq!(f.seq, seq, "B numbers its frames");
        assert!(pattern::check(seq, &f.payload));
    }
    assert_eq!(b.forwarded(), 41);
    assert_eq!(b.free_slots(), 4);
    until("everything back", || {
        a.free_slots() == 4 && b.free_forward_slots() == 4
    })
    .await;
    assert_eq!((a.stale_releases(), b.stale_releases()), (0, 0));
}

/// Two subscribers downstream: both read the forwarded frame; A's slot comes
/// back only when the second of them lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_to_two_subscribers() {
    let mut a = publisher("two-a", "slots=2&slot_size=256KiB", Policy::Fail, "a").await;
    let mut sub_a = subscriber(&mut a, RecvMode::View).await;
    let mut b = publisher("two-b", "slots=2&slot_size=256KiB", Policy::Fail, "b").await;
    let mut c1 = subscriber(&mut b, RecvMode::View).await;
    let mut c2 = subscriber(&mut b, RecvMode::View).await;

    send_pattern(&mut a, 0, 200_000).await;
    let fa = recv(&mut sub_a).await.expect("recv A");
    b.send(fa).await.expect("forward");
    let f1 = recv(&mut c1).await.expect("recv C1");
    let f2 = recv(&mut c2).await.expect("recv C2");
    assert!(pattern::check(0, &f1.payload) && pattern::check(0, &f2.payload));
    assert_eq!((b.forwarded(), b.free_slots()), (1, 2));
    assert_eq!(b.free_forward_slots(), 1, "one forward slot for both");
    drop(f1);
    stays("C2 still holds A's slot", || a.free_slots() == 1).await;
    drop(f2);
    until("A's slot back after both", || a.free_slots() == 2).await;
    until("B's forward slot back", || b.free_forward_slots() == 2).await;
}

/// Forwarding twice: A -> B -> D -> C. D forwards from its mapping of A's
/// segment (which B passed on); nobody copies, A's slot waits for C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_twice() {
    let mut a = publisher("twice-a", "slots=2&slot_size=256KiB", Policy::Block, "a").await;
    let mut sub_a = subscriber(&mut a, RecvMode::View).await;
    let mut b = publisher("twice-b", "slots=2&slot_size=256KiB", Policy::Block, "b").await;
    let mut sub_b = subscriber(&mut b, RecvMode::View).await;
    let mut d = publisher("twice-d", "slots=2&slot_size=256KiB", Policy::Block, "d").await;
    let mut c = subscriber(&mut d, RecvMode::View).await;
    for seq in 0..10u64 {
        send_pattern(&mut a, seq, 250_000).await;
        let f = recv(&mut sub_a).await.expect("recv A");
        b.send(f).await.expect("forward at B");
        let f = recv(&mut sub_b).await.expect("recv B");
        d.send(f).await.expect("forward at D");
        let f = recv(&mut c).await.expect("recv C");
        assert!(pattern::check(seq, &f.payload));
        assert_eq!(f.trace.len(), 3);
        stays("A's slot held by C's view", || a.free_slots() == 1).await;
        drop(f);
        until("A's slot back", || a.free_slots() == 2).await;
    }
    assert_eq!((b.forwarded(), d.forwarded()), (10, 10));
    assert_eq!((b.free_slots(), d.free_slots()), (2, 2));
}

/// Owned copies and heap payloads are not views of another pool: they take
/// the copying path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_and_heap_payloads_are_copied() {
    let mut a = publisher(
        "owned-a",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::Fail,
        "a",
    )
    .await;
    let mut sub_a = subscriber(&mut a, RecvMode::Owned).await;
    let mut b = publisher(
        "owned-b",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::Fail,
        "b",
    )
    .await;
    let mut c = subscriber(&mut b, RecvMode::View).await;
    send_pattern(&mut a, 0, 60_000).await;
    let fa = recv(&mut sub_a).await.expect("recv A");
    until("an owned copy holds no slot", || a.free_slots() == 2).await;
    b.send(fa).await.expect("send a copy");
    let fc = recv(&mut c).await.expect("recv C");
    assert!(pattern::check(0, &fc.payload));
    assert_eq!(b.forwarded(), 0);
    assert_eq!(b.free_slots(), 1, "copied into B's pool");
    assert_eq!(b.free_forward_slots(), 2);
    b.send(Frame::new(pattern::make(1, 100)))
        .await
        .expect("a heap payload");
    assert_eq!(b.forwarded(), 0);
    assert_eq!(b.free_slots(), 0);
    drop(fc);
    let f = recv(&mut c).await.expect("recv C");
    assert!(pattern::check(1, &f.payload));
}

/// A slice of a view is forwarded as that byte range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_of_a_view_is_forwarded() {
    let mut a = publisher("slice-a", "slots=2&slot_size=64KiB", Policy::Fail, "a").await;
    let mut sub_a = subscriber(&mut a, RecvMode::View).await;
    let mut b = publisher("slice-b", "slots=2&slot_size=64KiB", Policy::Fail, "b").await;
    let mut c = subscriber(&mut b, RecvMode::View).await;
    send_pattern(&mut a, 3, 60_000).await;
    let mut fa = recv(&mut sub_a).await.expect("recv A");
    let want = fa.payload.slice(1000..5000);
    fa.payload = fa.payload.slice(1000..5000);
    b.send(fa).await.expect("forward a slice");
    let fc = recv(&mut c).await.expect("recv C");
    assert_eq!(b.forwarded(), 1);
    assert_eq!(fc.payload, want);
    drop((fc, want));
    until("A's slot back", || a.free_slots() == 2).await;
}

/// Forward slots are bounded by `slots` and follow the policy: `fail` names
/// `slots`, `block` waits for a release, `drop-oldest` takes back a frame no
/// subscriber has taken yet (releasing its upstream slot at once). B's pool
/// slots are untouched throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_slots_follow_the_policy() {
    let mut a = publisher(
        "pol-a",
        "slots=9&max_held=9&slot_size=64KiB",
        Policy::Fail,
        "a",
    )
    .await;
    let mut sub_a = subscriber(&mut a, RecvMode::View).await;
    let mut views = Vec::new();
    for seq in 0..9 {
        send_pattern(&mut a, seq, 10_000).await;
        views.push(recv(&mut sub_a).await.expect("recv A"));
    }
    views.reverse();
    let mut next = move || views.pop().expect("a view left");

    // fail
    let mut b = publisher(
        "pol-fail",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::Fail,
        "b",
    )
    .await;
    let mut c = subscriber(&mut b, RecvMode::View).await;
    b.send(next()).await.expect("forward 0");
    b.send(next()).await.expect("forward 1");
    let held = [
        recv(&mut c).await.expect("0"),
        recv(&mut c).await.expect("1"),
    ];
    match b.send(next()).await {
        Err(Error::Full {
            option: "slots",
            detail,
        }) => assert!(detail.contains("forward slots"), "{detail}"),
        other => panic!("expected Full naming `slots`, got {other:?}"),
    }
    assert_eq!(b.free_slots(), 2, "B's pool untouched");
    // The refused frame was dropped: its upstream slot is free again.
    until("the refused frame's slot back", || a.free_slots() == 1).await;
    drop(held);
    until("forward slots back", || b.free_forward_slots() == 2).await;
    drop((b, c));

    // block
    let mut b = publisher(
        "pol-block",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::Block,
        "b",
    )
    .await;
    let mut c = subscriber(&mut b, RecvMode::View).await;
    b.send(next()).await.expect("forward 3");
    b.send(next()).await.expect("forward 4");
    let first = recv(&mut c).await.expect("3");
    let f = next();
    let blocked = tokio::time::timeout(Duration::from_millis(100), b.send(f.clone())).await;
    assert!(blocked.is_err(), "both forward slots are held");
    drop(first);
    tokio::time::timeout(WAIT, b.send(f))
        .await
        .expect("a release unblocks it")
        .expect("forward 5");
    assert!(pattern::check(4, &recv(&mut c).await.expect("4").payload));
    assert!(pattern::check(5, &recv(&mut c).await.expect("5").payload));
    assert_eq!(b.forwarded(), 3, "the cancelled send forwarded nothing");
    drop((b, c));

    // drop-oldest: C has taken nothing yet, so the oldest is taken back.
    let mut b = publisher(
        "pol-drop",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::DropOldest,
        "b",
    )
    .await;
    let mut c = subscriber(&mut b, RecvMode::View).await;
    for _ in 0..2 {
        b.send(next()).await.expect("forward");
    }
    let before = a.free_slots();
    tokio::time::timeout(WAIT, b.send(next()))
        .await
        .expect("drop-oldest does not block")
        .expect("forward");
    // `>=`: releases from the block phase above may still be arriving.
    until("the dropped frame's upstream slot back", || {
        a.free_slots() > before
    })
    .await;
    match recv(&mut c).await {
        Err(Error::Lagged { missed: 1 }) => {}
        other => panic!("expected Lagged(1), got {other:?}"),
    }
    let f = recv(&mut c).await.expect("recv");
    assert!(pattern::check(7, &f.payload), "7 and 8 after 6 was dropped");
    assert!(pattern::check(8, &recv(&mut c).await.expect("8").payload));
    assert_eq!(b.free_slots(), 2);
}

/// A downstream subscriber that goes away (dropped with its views) or drops
/// its views after unsubscribing gives the upstream slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_leaving_releases_upstream() {
    let mut a = publisher(
        "leave-a",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::Fail,
        "a",
    )
    .await;
    let mut sub_a = subscriber(&mut a, RecvMode::View).await;
    let mut b = publisher(
        "leave-b",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::Fail,
        "b",
    )
    .await;
    let mut c = subscriber(&mut b, RecvMode::View).await;
    for seq in 0..2 {
        send_pattern(&mut a, seq, 50_000).await;
        let f = recv(&mut sub_a).await.expect("recv A");
        b.send(f).await.expect("forward");
    }
    // C takes one, leaves the other on offer, then is dropped.
    let view = recv(&mut c).await.expect("recv C");
    assert_eq!(a.free_slots(), 0);
    drop(c);
    until("the frame C never took comes back", || a.free_slots() == 1).await;
    stays("the viewed one stays", || a.free_slots() == 1).await;
    assert!(pattern::check(0, &view.payload));
    drop(view);
    until("all back", || a.free_slots() == 2).await;
    until("B's forward slots back", || b.free_forward_slots() == 2).await;
    assert_eq!(b.subscriber_count(), Some(0));
}

/// The forwarding publisher goes away while C views a forwarded frame: C is
/// disconnected as usual, its view stays intact, and A's slot stays held
/// until that view drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_dropped_under_a_view() {
    let mut a = publisher(
        "fdrop-a",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::Block,
        "a",
    )
    .await;
    let mut sub_a = subscriber(&mut a, RecvMode::View).await;
    let mut b = publisher(
        "fdrop-b",
        "slots=2&max_held=2&slot_size=64KiB",
        Policy::Fail,
        "b",
    )
    .await;
    let mut c = subscriber(&mut b, RecvMode::View).await;
    send_pattern(&mut a, 0, 50_000).await;
    let f = recv(&mut sub_a).await.expect("recv A");
    b.send(f).await.expect("forward");
    tokio::time::timeout(WAIT, b.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    drop(b);
    let view = recv(&mut c).await.expect("recv C");
    match recv(&mut c).await {
        Err(Error::Disconnected { .. }) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    stays("A's slot held by C's view", || a.free_slots() == 1).await;
    // A keeps publishing into its other slot; the viewed one is not reused.
    for seq in 1..5 {
        send_pattern(&mut a, seq, 50_000).await;
        let f = recv(&mut sub_a).await.expect("recv A");
        assert!(pattern::check(seq, &f.payload));
        assert!(pattern::check(0, &view.payload), "reused under C's view");
    }
    drop(view);
    until("A's slot back", || a.free_slots() == 2).await;
}

/// One view forwarded by two publishers of this process: when the upstream
/// subscriber is gone and the last forwarded frame is released, both
/// publishers forget the segment, whichever of them let go last (the
/// mapping, and the anchors it carries, go with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_forwarders_forget_a_segment_once_it_is_unmapped() {
    let mut a = publisher("forget-a", "slots=2&slot_size=64KiB", Policy::Block, "a").await;
    let mut sub_a = subscriber(&mut a, RecvMode::View).await;
    let mut b1 = publisher("forget-b1", "slots=2&slot_size=64KiB", Policy::Block, "b1").await;
    let mut c1 = subscriber(&mut b1, RecvMode::View).await;
    let mut b2 = publisher("forget-b2", "slots=2&slot_size=64KiB", Policy::Block, "b2").await;
    let mut c2 = subscriber(&mut b2, RecvMode::View).await;

    send_pattern(&mut a, 0, 50_000).await;
    let f = recv(&mut sub_a).await.expect("recv A");
    b1.send(f.clone()).await.expect("forward at B1");
    b2.send(f).await.expect("forward at B2");
    assert_eq!((b1.forwarded(), b2.forwarded()), (1, 1));
    let v1 = recv(&mut c1).await.expect("recv C1");
    let v2 = recv(&mut c2).await.expect("recv C2");
    assert!(pattern::check(0, &v1.payload) && pattern::check(0, &v2.payload));
    // The upstream subscriber goes: A's pool stays mapped here only through
    // the frames the forward slots hold.
    drop(sub_a);
    drop(v1);
    until("B1's forward slot back", || b1.free_forward_slots() == 2).await;
    stays("B2 still forwards from the segment", || {
        b2.forwarded_segments() == 1 && a.free_slots() == 1
    })
    .await;
    drop(v2);
    until("both forget the unmapped segment", || {
        b1.forwarded_segments() == 0 && b2.forwarded_segments() == 0
    })
    .await;
    until("A's slot back", || a.free_slots() == 2).await;
    // C1 and C2 read the FORGETs (and nothing else).
    for c in [&mut c1, &mut c2] {
        assert!(
            tokio::time::timeout(Duration::from_millis(100), c.recv())
                .await
                .is_err()
        );
    }
}

/// Descriptors of this process's open files.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Upstream segments churn (a new upstream pool per frame, forwarded, then
/// gone) while a subscriber downstream never reads, under `drop-oldest`:
/// once its socket is full, what the forwarder queues for it stays bounded
/// (a FORGET cancels the queued SEGMENT of the same index), and so do the
/// descriptors (segment memfds and anchors) those queued messages hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_behind_churning_segments_stays_bounded() {
    let mut b = publisher(
        "churn-b",
        "slots=2&slot_size=64KiB",
        Policy::DropOldest,
        "b",
    )
    .await;
    // Never reads.
    let stalled = subscriber(&mut b, RecvMode::View).await;
    // Fill its socket with B's own frames (big headers fill it fast).
    let mut seq = 0u64;
    while b.queued_messages() == 0 {
        assert!(seq < 10_000, "the stalled subscriber's socket never filled");
        let mut f = Frame::new(pattern::make(seq, 16));
        f.metadata = Bytes::from(vec![7u8; 32 << 10]);
        b.send(f).await.expect("send to the stalled subscriber");
        seq += 1;
    }
    let queued_full = b.queued_messages();
    let fds_full = open_fds();
    let rounds = 120usize;
    for i in 0..rounds {
        let mut a = publisher("churn-a", "slots=1&slot_size=4KiB", Policy::Fail, "a").await;
        let mut sub_a = subscriber(&mut a, RecvMode::View).await;
        send_pattern(&mut a, i as u64, 1000).await;
        let view = recv(&mut sub_a).await.expect("recv A");
        b.send(view).await.expect("forward");
        // The upstream pool, its subscriber and (once the forward is taken
        // back) its last view go away: the forwarder forgets the segment.
        drop((sub_a, a));
    }
    assert!(b.forwarded() as usize >= rounds - 2, "{}", b.forwarded());
    // Forgotten as their mappings go (the sweep task), except those of
    // frames still in flight (at most the two forward slots).
    until("the churned segments forgotten", || {
        b.forwarded_segments() <= 2
    })
    .await;
    let queued = b.queued_messages();
    let fds = open_fds();
    eprintln!(
        "queued {queued_full} -> {queued} messages, {fds_full} -> {fds} fds after {rounds} segments"
    );
    // At most a descriptor per slot and forward slot, one FORGET and one
    // SEGMENT per forwarded-segment index (16), and what was queued before.
    assert!(
        queued <= queued_full + 4 + 2 * 16,
        "{queued} messages queued for a stalled subscriber after {rounds} segments"
    );
    assert!(
        fds <= fds_full + 2 * 16 * 3 + 16,
        "{fds} fds open after {rounds} segments ({fds_full} before)"
    );
    drop(stalled);
}
