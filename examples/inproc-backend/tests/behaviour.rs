//! What the inproc backend promises beyond the shared conformance suite.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use inproc_backend::{InprocOptions, InprocTransport};
use transport_core::bytes::Bytes;
use transport_core::{
    Endpoint, Error, Frame, Policy, PublishOptions, Publisher, RecvMode, SubscribeOptions,
    Subscriber, Transport, pattern,
};

const T: Duration = Duration::from_secs(10);

/// A fresh channel URL (tests run in parallel and channels are process-wide).
fn url(params: &str) -> Endpoint {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let sep = if params.is_empty() { "" } else { "?" };
    Endpoint::parse(&format!("inproc://behaviour-{n}{sep}{params}")).expect("test url")
}

async fn recv<S: Subscriber>(sub: &mut S) -> transport_core::Result<Frame> {
    tokio::time::timeout(T, sub.recv())
        .await
        .expect("recv timed out")
}

/// True when `fut` is still pending after 100 ms.
async fn stays_pending<F: std::future::Future>(fut: F) -> bool {
    tokio::time::timeout(Duration::from_millis(100), fut)
        .await
        .is_err()
}

#[test]
fn unknown_and_bad_params_say_what_is_accepted() {
    let t = InprocTransport;
    let msg = t
        .capabilities(&url("slots=3"))
        .expect_err("unknown param")
        .to_string();
    assert!(msg.contains("`slots`"), "{msg}");
    assert!(msg.contains("policy, recv, queue, max_payload"), "{msg}");

    let e = t.capabilities(&url("queue=0")).expect_err("queue=0");
    assert!(
        matches!(&e, Error::InvalidOption { option, .. } if option == "queue"),
        "{e}"
    );
    let e = t
        .capabilities(&url("max_payload=12parsecs"))
        .expect_err("bad size");
    assert!(
        matches!(&e, Error::InvalidOption { option, .. } if option == "max_payload"),
        "{e}"
    );
    let e = t
        .capabilities(&url("policy=sometimes"))
        .expect_err("bad policy");
    assert!(e.to_string().contains("block, drop-oldest, fail"), "{e}");

    let e = t
        .capabilities(&Endpoint::parse("tcp://127.0.0.1:1").expect("url"))
        .expect_err("foreign scheme");
    assert!(matches!(e, Error::InvalidEndpoint { .. }), "{e}");

    let opts = InprocOptions::from_endpoint(&url("queue=3&max_payload=2MiB&policy=fail&recv=view"))
        .expect("all accepted params");
    assert_eq!((opts.queue, opts.max_payload), (3, 2 << 20));
    let caps = t.capabilities(&url("")).expect("defaults");
    assert_eq!(caps.queue_depth, inproc_backend::DEFAULT_QUEUE);
    assert_eq!(caps.max_payload, inproc_backend::DEFAULT_MAX_PAYLOAD);
    assert!(caps.counts_subscribers && !caps.cross_process && !caps.zero_copy_views);
}

#[tokio::test]
async fn one_publisher_per_name_and_a_new_one_after_drop() {
    let t = InprocTransport;
    let ep = url("");
    let p1 = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("first publisher");
    let mut old_sub = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    let e = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect_err("second live publisher");
    assert!(e.to_string().contains("already has a publisher"), "{e}");

    drop(p1);
    let mut p2 = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("after drop");
    let mut new_sub = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    assert_eq!(
        p2.subscriber_count(),
        Some(1),
        "the old subscriber stays on the old channel"
    );
    p2.send(Frame::new(pattern::make(0, 64)))
        .await
        .expect("send");
    assert_eq!(recv(&mut new_sub).await.expect("recv").seq, 0);
    assert!(matches!(
        recv(&mut old_sub).await,
        Err(Error::Disconnected { .. })
    ));
}

#[tokio::test]
async fn subscriber_may_come_first() {
    let t = InprocTransport;
    let ep = url("queue=2");
    let mut sub = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    let waiting = tokio::spawn(async move {
        let f = recv(&mut sub).await.expect("recv");
        (f.seq, pattern::check(f.seq, &f.payload))
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut publ = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("publisher");
    publ.wait_for_subscribers(1, T)
        .await
        .expect("already there");
    publ.send(Frame::new(pattern::make(0, 1000)))
        .await
        .expect("send");
    assert_eq!(waiting.await.expect("task"), (0, true));
}

#[tokio::test]
async fn owned_mode_copies_only_payloads_shared_outside_the_channel() {
    let t = InprocTransport;
    let ep = url("");
    let mut publ = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("publisher");
    let owned = SubscribeOptions::default();
    let view = SubscribeOptions::default().recv_mode(RecvMode::View);
    let mut o1 = t.subscribe(&ep, &owned).await.expect("sub");
    let mut o2 = t.subscribe(&ep, &owned).await.expect("sub");
    let mut v = t.subscribe(&ep, &view).await.expect("sub");
    assert_eq!(o1.recv_mode(), RecvMode::Owned);
    assert_eq!(v.recv_mode(), RecvMode::View);

    // The caller keeps a clone: owned subscribers get their own copy, the
    // view subscriber shares the caller's buffer.
    let kept = pattern::make(0, 4096);
    publ.send(Frame::new(kept.clone())).await.expect("send");
    let (a, b, c) = (
        recv(&mut o1).await.expect("o1"),
        recv(&mut o2).await.expect("o2"),
        recv(&mut v).await.expect("v"),
    );
    for f in [&a, &b, &c] {
        assert!(pattern::check(0, &f.payload));
    }
    assert_ne!(a.payload.as_ptr(), kept.as_ptr());
    assert_ne!(a.payload.as_ptr(), b.payload.as_ptr());
    assert_eq!(c.payload.as_ptr(), kept.as_ptr());

    // A loan (a buffer only the channel references) is shared by everyone:
    // copying it would buy nothing.
    let mut loan = publ.loan(4096).await.expect("loan");
    pattern::fill(1, &mut loan);
    publ.send_loan(loan).await.expect("send_loan");
    let (a, b, c) = (
        recv(&mut o1).await.expect("o1"),
        recv(&mut o2).await.expect("o2"),
        recv(&mut v).await.expect("v"),
    );
    assert!(pattern::check(1, &a.payload));
    assert_eq!(a.payload.as_ptr(), b.payload.as_ptr());
    assert_eq!(a.payload.as_ptr(), c.payload.as_ptr());

    // So is a `Bytes` handed over whole.
    publ.send(Frame::new(pattern::make(2, 4096)))
        .await
        .expect("send");
    let (a, b) = (
        recv(&mut o1).await.expect("o1"),
        recv(&mut o2).await.expect("o2"),
    );
    assert_eq!(a.payload.as_ptr(), b.payload.as_ptr());

    // A static payload is not a heap buffer of ours: owned frames copy it.
    static STATIC: [u8; 16] = [7; 16];
    publ.send(Frame::new(Bytes::from_static(&STATIC)))
        .await
        .expect("send");
    let a = recv(&mut o1).await.expect("o1");
    assert_eq!(&a.payload[..], &STATIC[..]);
    assert_ne!(a.payload.as_ptr(), STATIC.as_ptr());
}

#[tokio::test]
async fn drop_oldest_reports_exactly_what_was_dropped() {
    let t = InprocTransport;
    let ep = url("queue=2");
    let opts = PublishOptions::default().policy(Policy::DropOldest);
    let mut publ = t.publish(&ep, &opts).await.expect("publisher");
    let mut sub = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    for i in 0..10 {
        publ.send(Frame::new(pattern::make(i, 100)))
            .await
            .expect("send");
    }
    assert_eq!(publ.stats().queued, 2);
    assert_eq!(publ.stats().dropped, 8);
    assert!(matches!(
        recv(&mut sub).await,
        Err(Error::Lagged { missed: 8 })
    ));
    assert_eq!(recv(&mut sub).await.expect("recv").seq, 8);
    assert_eq!(recv(&mut sub).await.expect("recv").seq, 9);
    assert_eq!(sub.stats().lagged, 8);
    assert_eq!(sub.stats().frames_received, 2);
}

#[tokio::test]
async fn fail_sends_to_nobody_and_names_the_option() {
    let t = InprocTransport;
    let ep = url("queue=1");
    let opts = PublishOptions::default().policy(Policy::Fail);
    let mut publ = t.publish(&ep, &opts).await.expect("publisher");
    let mut reader = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    let mut stalled = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    publ.send(Frame::new(pattern::make(0, 100)))
        .await
        .expect("send");
    assert_eq!(recv(&mut reader).await.expect("recv").seq, 0);

    let e = publ
        .send(Frame::new(pattern::make(1, 100)))
        .await
        .expect_err("stalled queue is full");
    assert!(
        matches!(
            e,
            Error::Full {
                option: "queue",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("raise `queue`"), "{e}");
    assert!(
        stays_pending(reader.recv()).await,
        "a refused frame reached a subscriber"
    );
    assert_eq!(publ.stats().frames_sent, 1);

    assert_eq!(recv(&mut stalled).await.expect("recv").seq, 0);
    publ.send(Frame::new(pattern::make(1, 100)))
        .await
        .expect("room again");
    assert_eq!(
        recv(&mut reader).await.expect("recv").seq,
        1,
        "the refused frame used no seq"
    );
}

#[tokio::test]
async fn block_waits_for_room_and_for_leavers() {
    let t = InprocTransport;
    let ep = url("queue=1");
    let mut publ = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("publisher");
    let mut sub = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    publ.send(Frame::new(pattern::make(0, 100)))
        .await
        .expect("send");
    assert!(stays_pending(publ.send(Frame::new(pattern::make(1, 100)))).await);
    // The cancelled send used no sequence number.
    assert_eq!(recv(&mut sub).await.expect("recv").seq, 0);
    publ.send(Frame::new(pattern::make(1, 100)))
        .await
        .expect("room now");
    assert_eq!(recv(&mut sub).await.expect("recv").seq, 1);

    // A subscriber leaving frees the publisher too.
    publ.send(Frame::new(pattern::make(2, 100)))
        .await
        .expect("send");
    let blocked = tokio::spawn(async move {
        publ.send(Frame::new(pattern::make(3, 100)))
            .await
            .map(|()| publ)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!blocked.is_finished());
    drop(sub);
    let publ = tokio::time::timeout(T, blocked)
        .await
        .expect("unblocked by the leaver")
        .expect("task")
        .expect("send");
    assert_eq!(publ.stats().subscribers, 0);
    assert_eq!(publ.stats().queued, 0);
}

#[tokio::test]
async fn waiting_recv_sees_the_disconnect() {
    let t = InprocTransport;
    let ep = url("");
    let publ = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("publisher");
    let mut sub = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    let waiting = tokio::spawn(async move { recv(&mut sub).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(publ);
    let r = waiting.await.expect("task");
    assert!(
        matches!(r, Err(Error::Disconnected { reason: ref m, .. }) if m.contains("inproc://")),
        "{r:?}"
    );
}

#[tokio::test]
async fn max_payload_is_enforced_on_send_and_loan() {
    let t = InprocTransport;
    let ep = url("max_payload=1KiB");
    let mut publ = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("publisher");
    let mut sub = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    let e = publ
        .send(Frame::new(vec![0u8; 1025]))
        .await
        .expect_err("too large");
    assert!(
        matches!(
            e,
            Error::PayloadTooLarge {
                len: 1025,
                limit: 1024,
                option: "max_payload"
            }
        ),
        "{e}"
    );
    assert!(matches!(
        publ.loan(1025).await,
        Err(Error::PayloadTooLarge { .. })
    ));
    publ.send(Frame::new(pattern::make(0, 1024)))
        .await
        .expect("at the limit");
    assert_eq!(recv(&mut sub).await.expect("recv").payload.len(), 1024);
}

#[tokio::test]
async fn counting_waiting_and_draining() {
    let t = InprocTransport;
    let ep = url("queue=4");
    let mut publ = t
        .publish(&ep, &PublishOptions::default())
        .await
        .expect("publisher");
    let e = publ
        .wait_for_subscribers(1, Duration::from_millis(100))
        .await
        .expect_err("nobody there");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");

    let mut a = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    let mut b = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("sub");
    publ.wait_for_subscribers(2, T).await.expect("two");
    for i in 0..3 {
        publ.send(Frame::new(pattern::make(i, 10)))
            .await
            .expect("send");
    }
    publ.flush().await.expect("flush");
    let s = publ.stats();
    assert_eq!(
        (s.frames_sent, s.bytes_sent, s.queued, s.subscribers),
        (3, 30, 6, 2)
    );
    assert!(matches!(
        publ.drained(Duration::from_millis(100)).await,
        Err(Error::Timeout { .. })
    ));

    for i in 0..3 {
        assert_eq!(recv(&mut a).await.expect("a").seq, i);
    }
    assert_eq!(publ.stats().queued, 3);
    let draining = tokio::spawn(async move {
        for i in 0..3 {
            assert_eq!(recv(&mut b).await.expect("b").seq, i);
        }
        b
    });
    publ.drained(T).await.expect("drained");
    let b = draining.await.expect("reader");
    assert_eq!(b.stats().frames_received, 3);
    assert_eq!(b.stats().bytes_received, 30);
    drop((a, b));
    assert_eq!(publ.stats().subscribers, 0);
}
