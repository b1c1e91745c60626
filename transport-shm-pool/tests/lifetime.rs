//! Slot lifetime rules beyond the conformance suite: what drop-oldest may and
//! may not reclaim, views that outlive their subscriber, cancelled waits,
//! loans, busy polling.

use std::sync::atomic::{AtomicUsize, Ordering};
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
        "shm-pool://life-{test}-{}-{n}?{params}",
        std::process::id()
    ))
    .expect("url")
}

async fn pair(
    ep: &Endpoint,
    policy: Policy,
    mode: RecvMode,
) -> (ShmPoolPublisher, ShmPoolSubscriber) {
    let t = ShmPoolTransport::new();
    let mut publ = t
        .publish(ep, &PublishOptions::default().policy(policy))
        .await
        .expect("publish");
    let sub = t
        .subscribe(
            publ.endpoint(),
            &SubscribeOptions::default().recv_mode(mode),
        )
        .await
        .expect("subscribe");
    publ.wait_for_subscribers(1, WAIT)
        .await
        .expect("subscriber");
    (publ, sub)
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

/// Under drop-oldest, a slot behind a view is never reclaimed: the view keeps
/// its bytes while the publisher cycles the other slot, and the subscriber
/// learns how many frames it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_never_reclaims_a_viewed_slot() {
    let ep = url("dropview", "slots=2&max_held=2&slot_size=64KiB");
    let (mut publ, mut sub) = pair(&ep, Policy::DropOldest, RecvMode::View).await;
    publ.send(Frame::new(pattern::make(0, 50_000)))
        .await
        .expect("send 0");
    let view = recv(&mut sub).await.expect("frame 0");
    assert_eq!(view.seq, 0);
    for seq in 1..=6 {
        tokio::time::timeout(WAIT, publ.send(Frame::new(pattern::make(seq, 50_000))))
            .await
            .expect("drop-oldest never blocks here")
            .expect("send");
        assert!(publ.stats().queued <= 2);
        assert!(
            pattern::check(0, &view.payload),
            "the viewed slot was reused under its view"
        );
    }
    // Frames 1..=5 were taken back unread; 6 is there.
    match recv(&mut sub).await {
        Err(Error::Lagged { missed }) => assert_eq!(missed, 5),
        other => panic!("expected Lagged, got {other:?}"),
    }
    let f = recv(&mut sub).await.expect("frame 6");
    assert_eq!(f.seq, 6);
    assert!(pattern::check(6, &f.payload));
    assert!(pattern::check(0, &view.payload));
    assert_eq!(publ.stats().dropped, 5);
    assert_eq!(sub.stats().lagged, 5);
    drop((view, f));
    until("both slots back", || publ.free_slots() == 2).await;
}

/// Under drop-oldest with every slot behind a view, there is nothing to
/// reclaim: the publisher waits for a release instead of reusing a viewed slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_waits_when_every_slot_is_viewed() {
    let ep = url("dropall", "slots=2&max_held=2&slot_size=4KiB");
    let (mut publ, mut sub) = pair(&ep, Policy::DropOldest, RecvMode::View).await;
    let mut views = Vec::new();
    for seq in 0..2 {
        publ.send(Frame::new(pattern::make(seq, 4000)))
            .await
            .expect("send");
        views.push(recv(&mut sub).await.expect("recv"));
    }
    let blocked = tokio::time::timeout(
        Duration::from_millis(100),
        publ.send(Frame::new(pattern::make(2, 10))),
    )
    .await;
    assert!(blocked.is_err(), "a viewed slot must not be reclaimed");
    for (seq, v) in views.iter().enumerate() {
        assert!(pattern::check(seq as u64, &v.payload));
    }
    views.remove(0);
    tokio::time::timeout(WAIT, publ.send(Frame::new(pattern::make(2, 10))))
        .await
        .expect("a release unblocks the publisher")
        .expect("send");
    let f = recv(&mut sub).await.expect("recv");
    assert_eq!(f.seq, 2, "the cancelled send used no sequence number");
}

/// Dropping a subscriber while its views live on: descriptors it never took
/// come back at once, the viewed slot stays reserved until the view drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_outlive_their_subscriber() {
    let ep = url("outlive", "slots=3&max_held=3&slot_size=64KiB");
    let (mut publ, mut sub) = pair(&ep, Policy::Fail, RecvMode::View).await;
    for seq in 0..3 {
        publ.send(Frame::new(pattern::make(seq, 60_000)))
            .await
            .expect("send");
    }
    let view = recv(&mut sub).await.expect("frame 0");
    assert_eq!(publ.free_slots(), 0);
    drop(sub);
    until("the unread slots back", || publ.free_slots() == 2).await;
    assert_eq!(publ.subscriber_count(), Some(0));
    // With no subscriber left, sends touch no slot at all ...
    for seq in 3..20 {
        publ.send(Frame::new(pattern::make(seq, 60_000)))
            .await
            .expect("send");
        assert!(
            pattern::check(0, &view.payload),
            "slot reused under a live view"
        );
    }
    assert_eq!(publ.free_slots(), 2);
    // ... and gets the third back when the view goes.
    let clone = view.clone();
    drop(view);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(publ.free_slots(), 2, "a clone still holds the slot");
    assert!(pattern::check(0, &clone.payload));
    drop(clone);
    until("the viewed slot back", || publ.free_slots() == 3).await;
}

/// A send blocked on a full pool can be cancelled without losing a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_blocked_send_leaks_nothing() {
    let ep = url("cancel", "slots=2&max_held=2&slot_size=4KiB");
    let (mut publ, mut sub) = pair(&ep, Policy::Block, RecvMode::View).await;
    let mut views = Vec::new();
    for seq in 0..2 {
        publ.send(Frame::new(pattern::make(seq, 100)))
            .await
            .expect("send");
        views.push(recv(&mut sub).await.expect("recv"));
    }
    for _ in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_millis(10),
            publ.send(Frame::new(pattern::make(2, 100))),
        )
        .await;
        assert!(r.is_err(), "blocked while both slots are viewed");
        let r = tokio::time::timeout(Duration::from_millis(10), publ.loan(100)).await;
        assert!(r.is_err(), "loan blocks too");
    }
    assert_eq!(publ.free_slots(), 0);
    drop(views);
    until("both slots back", || publ.free_slots() == 2).await;
    publ.send(Frame::new(pattern::make(2, 100)))
        .await
        .expect("send");
    assert_eq!(recv(&mut sub).await.expect("recv").seq, 2);
}

/// Loans: a dropped loan returns its slot; a loan from another publisher is
/// refused and goes back to its own pool; a heap loan is copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loans_come_back() {
    let (mut a, mut sub) = pair(
        &url("loan-a", "slots=2&slot_size=4KiB"),
        Policy::Fail,
        RecvMode::View,
    )
    .await;
    let t = ShmPoolTransport::new();
    let mut b = t
        .publish(
            &url("loan-b", "slots=2&slot_size=4KiB"),
            &PublishOptions::default(),
        )
        .await
        .expect("second publisher");
    let l1 = a.loan(100).await.expect("loan");
    let l2 = a.loan(100).await.expect("loan");
    assert!(matches!(a.loan(100).await, Err(Error::Full { .. })));
    drop((l1, l2));
    assert_eq!(a.free_slots(), 2);
    // A loan whose layout does not describe it is refused and returns its slot.
    let mut bad = a.loan(100).await.expect("loan");
    bad.layout = transport_core::Layout::Image {
        width: 10,
        height: 11,
        format: transport_core::PixelFormat::Gray8,
    };
    assert!(matches!(
        a.send_loan(bad).await,
        Err(Error::InvalidLayout(_))
    ));
    assert_eq!(a.free_slots(), 2);
    let foreign = b.loan(10).await.expect("loan from b");
    assert_eq!(b.free_slots(), 1);
    assert!(matches!(
        a.send_loan(foreign).await,
        Err(Error::ForeignLoan)
    ));
    assert_eq!(
        b.free_slots(),
        2,
        "the refused loan went back to its own pool"
    );
    let mut heap = transport_core::Loan::heap(300);
    pattern::fill(0, &mut heap);
    a.send_loan(heap).await.expect("a heap loan is copied in");
    let f = recv(&mut sub).await.expect("recv");
    assert!(pattern::check(0, &f.payload));
    assert!(matches!(
        a.loan(4097).await,
        Err(Error::PayloadTooLarge {
            option: "slot_size",
            ..
        })
    ));
}

/// With `busy_poll`, frames arrive as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_poll_receives_everything() {
    let ep = url("spin", "slots=4&slot_size=64KiB&busy_poll=2ms");
    let (mut publ, mut sub) = pair(&ep, Policy::Block, RecvMode::View).await;
    let reader = tokio::spawn(async move {
        for seq in 0..200 {
            let f = recv(&mut sub).await.expect("recv");
            assert_eq!(f.seq, seq);
            assert!(pattern::check(seq, &f.payload));
        }
    });
    for seq in 0..200u64 {
        let mut loan = publ.loan(1000 + seq as usize).await.expect("loan");
        pattern::fill(seq, &mut loan);
        publ.send_loan(loan).await.expect("send_loan");
        if seq % 16 == 0 {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    tokio::time::timeout(WAIT, reader)
        .await
        .expect("reader in time")
        .expect("reader");
}

/// Two publishers cannot share a name; a subscriber of a missing pool gets an
/// error that says so; options are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_options() {
    let t = ShmPoolTransport::new();
    let ep = url("name", "slots=1&slot_size=4KiB");
    let first = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("publish");
    let second = t.publish(&ep, &PublishOptions::default()).await;
    match second {
        Err(e) => assert!(e.to_string().contains("already has a publisher"), "{e}"),
        Ok(_) => panic!("two publishers on one name"),
    }
    drop(first);
    // The name is free again once the first is gone.
    let again = tokio::time::timeout(WAIT, t.publish(&ep, &PublishOptions::default()))
        .await
        .expect("in time");
    assert!(again.is_ok(), "{again:?}");
    let missing = url("missing", "");
    let e = t
        .subscribe(&missing, &SubscribeOptions::default())
        .await
        .expect_err("no publisher");
    assert!(e.to_string().contains("no publisher"), "{e}");
    let bad = Endpoint::parse("shm-pool://x?capacity=1MiB").expect("url");
    let e = t
        .publish(&bad, &PublishOptions::default())
        .await
        .expect_err("unknown option");
    assert!(
        e.to_string()
            .contains("accepted: policy, recv, slots, slot_size, busy_poll"),
        "{e}"
    );
    let caps = t
        .capabilities(&url("caps", "slots=5&slot_size=24MiB"))
        .expect("caps");
    assert_eq!((caps.max_payload, caps.queue_depth), (24 << 20, 5));
    assert!(caps.zero_copy_views && caps.loan_in_place && caps.cross_process && !caps.cross_host);
}

/// `flush` waits for subscribers, not for a subscriber that has left: one
/// dropped while a view of its keeps its socket open (and so its connection
/// at the publisher) is gone for `flush`, even when descriptors it will never
/// read fill its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_does_not_wait_for_a_subscriber_that_left() {
    let ep = url("flush-left", "slots=4&max_held=4&slot_size=4KiB");
    let (mut publ, mut sub) = pair(&ep, Policy::Block, RecvMode::View).await;
    publ.send(Frame::new(pattern::make(0, 100)))
        .await
        .expect("send");
    let view = recv(&mut sub).await.expect("frame 0");
    // Descriptors with 1 MiB of metadata each: more than a Unix socket holds.
    let meta = bytes::Bytes::from(vec![7u8; transport_core::codec::MAX_METADATA]);
    for seq in 1..4 {
        publ.send(Frame::new(pattern::make(seq, 100)).with_metadata(meta.clone()))
            .await
            .expect("send");
    }
    drop(sub);
    until("the subscriber to leave", || {
        publ.subscriber_count() == Some(0)
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), publ.flush())
        .await
        .expect("flush returns: the only subscriber left")
        .expect("flush");
    assert!(pattern::check(0, &view.payload));
    drop(view);
    until("every slot back", || publ.free_slots() == 4).await;
}
