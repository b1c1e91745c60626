//! The conformance suite: every backend, built in or custom, runs these tests.
//!
//! Each test is written once, generic over a [`Harness`] that makes the
//! backend's endpoints, and is selected by the [`Capabilities`] the backend
//! declares (a test whose capability is missing prints why it skipped).
//! Instantiate the whole suite in a backend's `tests/` with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! struct MyHarness;
//! impl transport_core::testkit::Harness for MyHarness {
//!     type T = MyTransport;
//!     fn transport(&self) -> MyTransport { MyTransport::default() }
//!     fn endpoint(&self, depth: Option<usize>) -> Endpoint { /* a fresh one */ }
//! }
//! transport_core::conformance_tests!(MyHarness);
//! ```
//!
//! Every wait has a deadline; a test that would hang fails instead.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

pub use tokio;

use crate::reconnect::{self, Reconnect};
use crate::{
    Capabilities, DType, DynTransport, Endpoint, Error, Frame, Layout, PixelFormat, Policy,
    PublishOptions, Publisher, RecvMode, Result, SubscribeOptions, Subscriber, Transport, pattern,
};

/// How long any single wait on a peer may take in the suite.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// How a backend's tests make endpoints.
pub trait Harness: Send + Sync + 'static {
    /// The backend under test.
    type T: Transport;

    /// A transport instance.
    fn transport(&self) -> Self::T;

    /// A fresh endpoint, used by this test alone. `depth`, when given, bounds
    /// how many frames may be queued per subscriber or held in the pool (the
    /// backend's `queue=`, `slots=` or equivalent); payloads up to 64 MiB must fit.
    fn endpoint(&self, depth: Option<usize>) -> Endpoint;

    /// Where a replacement publisher binds once the publisher that reported
    /// `published` (its [`Publisher::endpoint`]) was dropped, for the
    /// reconnect test; `None` skips that test. The default, `published`
    /// itself, suits backends whose endpoint can be bound again once free.
    fn restart_endpoint(&self, published: &Endpoint) -> Option<Endpoint> {
        Some(published.clone())
    }
}

/// Runs one suite test on a fresh two-thread runtime with an overall deadline.
///
/// Used by [`conformance_tests!`](crate::conformance_tests).
pub fn run<H, F, Fut>(harness: H, test: F)
where
    H: Harness,
    F: FnOnce(&'static H) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime for the test");
    let h: &'static H = Box::leak(Box::new(harness));
    rt.block_on(async move {
        match tokio::time::timeout(Duration::from_secs(120), tokio::spawn(test(h))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("test task failed: {e}"),
            Err(_) => panic!("conformance test did not finish in 120 s"),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// Instantiates every conformance test as a `#[test]` for a harness expression.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            round_trip_every_layout_and_size,
            ordering_and_sequence_numbers,
            fan_out_to_three_subscribers,
            late_subscriber_gets_later_frames,
            slow_subscriber_under_block,
            slow_subscriber_under_drop_oldest,
            slow_subscriber_under_fail,
            publisher_drop_disconnects_subscribers,
            oversize_payload_is_refused,
            loan_path_round_trip,
            default_receive_mode_is_owned,
            owned_frames_do_not_pin_publisher_memory,
            views_are_not_copies,
            cancelled_recv_loses_no_frame,
            topic_prefix_filters,
            close_then_exit_loses_nothing,
            reconnect_follows_a_restarted_publisher,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::testkit::run($harness, $crate::testkit::$name);
            }
        )*
    };
}

fn caps<H: Harness>(h: &H, ep: &Endpoint) -> Capabilities {
    Transport::capabilities(&h.transport(), ep).expect("capabilities of the harness's endpoint")
}

fn skip(test: &str, why: &str) {
    eprintln!("conformance: {test} skipped: {why}");
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PEER_TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {PEER_TIMEOUT:?} waiting for {what}"),
    }
}

async fn recv<S: Subscriber>(sub: &mut S) -> Result<Frame> {
    within("a frame", sub.recv()).await
}

/// Receives, passing over lag reports; panics on any other error.
async fn recv_frame<S: Subscriber>(sub: &mut S) -> Frame {
    loop {
        match recv(sub).await {
            Ok(f) => return f,
            Err(Error::Lagged { .. }) => continue,
            Err(e) => panic!("recv failed: {e}"),
        }
    }
}

/// A publisher and `n` subscribers connected to it.
async fn connect<H: Harness>(
    h: &H,
    ep: &Endpoint,
    popts: PublishOptions,
    sopts: SubscribeOptions,
    n: usize,
) -> (
    <H::T as Transport>::Publisher,
    Vec<<H::T as Transport>::Subscriber>,
) {
    let t = h.transport();
    let mut publ = within("publish", t.publish(ep, &popts))
        .await
        .expect("create publisher");
    let ep = publ.endpoint().clone();
    let mut subs = Vec::new();
    for _ in 0..n {
        subs.push(
            within("subscribe", t.subscribe(&ep, &sopts))
                .await
                .expect("create subscriber"),
        );
    }
    settle(&mut publ, n).await;
    (publ, subs)
}

/// Waits until the publisher sees `n` subscribers (or a grace period where it cannot tell).
async fn settle<P: Publisher>(publ: &mut P, n: usize) {
    if publ.subscriber_count().is_some() {
        publ.wait_for_subscribers(n, PEER_TIMEOUT)
            .await
            .expect("subscribers connect");
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn layouts_for(len: usize) -> Vec<Layout> {
    let len64 = len as u64;
    let mut v = vec![
        Layout::Raw,
        Layout::Image {
            width: len as u32,
            height: 1,
            format: PixelFormat::Gray8,
        },
        Layout::Tensor {
            dtype: DType::U8,
            shape: vec![len64],
        },
        Layout::Parts(vec![len64 / 3, len64 / 3, len64 - 2 * (len64 / 3)]),
    ];
    if len % 12 == 0 && len > 0 {
        v[1] = Layout::Image {
            width: (len / 12) as u32,
            height: 4,
            format: PixelFormat::Rgb8,
        };
        v[2] = Layout::Tensor {
            dtype: DType::F32,
            shape: vec![3, len64 / 12],
        };
        // Envelope version 2: rows 12 bytes apart holding 3 RGB pixels
        // (the padding is 3 bytes), and the same bytes as a transposed
        // tensor of u32 (12 bytes per column).
        v.push(Layout::StridedImage {
            width: 3,
            height: (len / 12) as u32,
            format: PixelFormat::Rgb8,
            row_pitch: 12,
        });
        v.push(Layout::StridedTensor {
            dtype: DType::U32,
            shape: vec![3, len64 / 12],
            strides: vec![4, 12],
        });
    }
    v
}

/// Every payload layout at 0 B, 1 B, 4 KiB, 1 MiB, 24 MiB and 64 MiB arrives
/// intact, with its topic, metadata and layout.
pub async fn round_trip_every_layout_and_size<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let max = caps(h, &ep).max_payload;
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    let mut plan = Vec::new();
    for len in [0usize, 1, 4096, 1 << 20, 24 << 20, 64 << 20] {
        if len as u64 > max {
            skip(
                "round_trip sizes",
                &format!("{len} B exceeds max_payload {max}"),
            );
            continue;
        }
        for layout in layouts_for(len) {
            plan.push((len, layout));
        }
    }
    let sent = plan.clone();
    let sender = tokio::spawn(async move {
        for (i, (len, layout)) in sent.into_iter().enumerate() {
            let f = Frame::new(pattern::make(i as u64, len))
                .with_topic(format!("t/{i}"))
                .with_metadata(Bytes::from(format!("meta {i}")))
                .with_layout(layout);
            within("send", publ.send(f)).await.expect("send");
        }
        within("flush", publ.flush()).await.expect("flush");
        publ
    });
    for (i, (len, layout)) in plan.into_iter().enumerate() {
        let f = recv(&mut sub).await.expect("recv");
        assert_eq!(f.seq, i as u64, "sequence");
        assert_eq!(f.payload.len(), len, "length of frame {i}");
        assert!(
            pattern::check(i as u64, &f.payload),
            "payload of frame {i} ({len} B) differs"
        );
        assert_eq!(f.layout, layout);
        assert_eq!(f.topic, format!("t/{i}"));
        assert_eq!(&f.metadata[..], format!("meta {i}").as_bytes());
    }
    drop(sender.await.expect("sender"));
}

/// Frames arrive in order, numbered 0, 1, 2, ... with monotonic timestamps.
pub async fn ordering_and_sequence_numbers<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default().trace_name("src"),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    let n = 300u64;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let f = Frame::new(pattern::make(i, 100 + i as usize));
            within("send", publ.send(f)).await.expect("send");
        }
        within("flush", publ.flush()).await.expect("flush");
        publ
    });
    let mut last_ts = 0;
    for i in 0..n {
        let f = recv(&mut sub).await.expect("recv");
        assert_eq!(f.seq, i);
        assert!(f.timestamp_ns >= last_ts, "timestamps go backwards");
        assert!(f.timestamp_ns <= crate::monotonic_ns());
        last_ts = f.timestamp_ns;
        assert!(pattern::check(i, &f.payload));
        let hop = f.trace.last().expect("a trace hop named by trace_name");
        assert_eq!(hop.name, "src");
        assert!(hop.received_ns >= hop.sent_ns && hop.sent_ns == f.timestamp_ns);
    }
    let publ = sender.await.expect("sender");
    assert_eq!(publ.stats().frames_sent, n);
    assert_eq!(sub.stats().frames_received, n);
}

/// Three subscribers each receive every frame.
pub async fn fan_out_to_three_subscribers<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (mut publ, subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default(),
        3,
    )
    .await;
    let n = 20u64;
    let mut readers = Vec::new();
    for mut sub in subs {
        readers.push(tokio::spawn(async move {
            for i in 0..n {
                let f = recv(&mut sub).await.expect("recv");
                assert_eq!(f.seq, i);
                assert!(pattern::check(i, &f.payload));
            }
        }));
    }
    for i in 0..n {
        within("send", publ.send(Frame::new(pattern::make(i, 64 << 10))))
            .await
            .expect("send");
    }
    within("flush", publ.flush()).await.expect("flush");
    for r in readers {
        within("a reader", r).await.expect("reader");
    }
}

/// A subscriber that joins late gets the frames sent after it joined, in order.
pub async fn late_subscriber_gets_later_frames<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut early = subs.pop().expect("one subscriber");
    for i in 0..5 {
        publ.send(Frame::new(pattern::make(i, 1000)))
            .await
            .expect("send");
    }
    within("flush", publ.flush()).await.expect("flush");
    for i in 0..5 {
        assert_eq!(recv(&mut early).await.expect("recv").seq, i);
    }
    let t = h.transport();
    let mut late = within(
        "subscribe",
        t.subscribe(publ.endpoint(), &SubscribeOptions::default()),
    )
    .await
    .expect("late subscriber");
    settle(&mut publ, 2).await;
    for i in 5..10 {
        publ.send(Frame::new(pattern::make(i, 1000)))
            .await
            .expect("send");
    }
    within("flush", publ.flush()).await.expect("flush");
    let first = recv(&mut late).await.expect("late recv");
    assert!(
        first.seq >= 5,
        "late subscriber got frame {} sent before it joined",
        first.seq
    );
    assert!(pattern::check(first.seq, &first.payload));
    for i in first.seq + 1..10 {
        let f = recv(&mut late).await.expect("late recv");
        assert_eq!(f.seq, i);
    }
    for i in 5..10 {
        assert_eq!(recv(&mut early).await.expect("recv").seq, i);
    }
}

/// Under `block`, a slow subscriber slows the publisher; nothing is lost and
/// queued frames stay within the declared depth.
pub async fn slow_subscriber_under_block<H: Harness>(h: &'static H) {
    let depth = 2;
    let ep = h.endpoint(Some(depth));
    let c = caps(h, &ep);
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default().policy(Policy::Block),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    let n = 24u64;
    let bound = c.queue_depth as u64;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            within("send", publ.send(Frame::new(pattern::make(i, 256 << 10))))
                .await
                .expect("send");
            let q = publ.stats().queued;
            assert!(
                q <= bound,
                "{q} frames queued, more than the declared depth {bound}"
            );
        }
        within("flush", publ.flush()).await.expect("flush");
        publ
    });
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let f = recv(&mut sub).await.expect("recv");
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
    let publ = sender.await.expect("sender");
    assert_eq!(publ.stats().dropped, 0);
}

/// Under `drop-oldest`, a stalled subscriber never blocks the publisher; it
/// later reads the newest frames, in order, and is told how many it missed.
pub async fn slow_subscriber_under_drop_oldest<H: Harness>(h: &'static H) {
    let depth = 2;
    let ep = h.endpoint(Some(depth));
    let c = caps(h, &ep);
    if !c.policies.contains(&Policy::DropOldest) {
        return skip("slow_subscriber_under_drop_oldest", "policy not supported");
    }
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default().policy(Policy::DropOldest),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    let n = 64u64;
    for i in 0..n {
        within(
            "send under drop-oldest",
            publ.send(Frame::new(pattern::make(i, 1 << 20))),
        )
        .await
        .expect("send");
        let q = publ.stats().queued;
        assert!(
            q <= c.queue_depth as u64,
            "{q} frames queued, more than {}",
            c.queue_depth
        );
    }
    within("flush", publ.flush()).await.expect("flush");
    let (mut received, mut missed, mut last) = (0u64, 0u64, None::<u64>);
    while last != Some(n - 1) {
        match recv(&mut sub).await {
            Ok(f) => {
                if let Some(l) = last {
                    assert!(f.seq > l, "frame {} after {l}", f.seq);
                }
                assert!(pattern::check(f.seq, &f.payload), "frame {} corrupt", f.seq);
                last = Some(f.seq);
                received += 1;
            }
            Err(Error::Lagged { missed: m }) => missed += m,
            Err(e) => panic!("recv: {e}"),
        }
    }
    assert!(
        missed > 0,
        "a stalled subscriber must have missed frames (received {received}, publisher {:?})",
        publ.stats()
    );
    // Frames before the first one received are not lag: the subscriber reads
    // from where it stands, so count from there.
    assert!(received + missed <= n);
    assert_eq!(sub.stats().lagged, missed);
    assert!(publ.stats().dropped >= missed);
}

/// Under `fail`, a stalled subscriber makes `send` fail with [`Error::Full`]
/// naming the option, after a bounded number of frames.
pub async fn slow_subscriber_under_fail<H: Harness>(h: &'static H) {
    let depth = 2;
    let ep = h.endpoint(Some(depth));
    let c = caps(h, &ep);
    if !c.policies.contains(&Policy::Fail) {
        return skip("slow_subscriber_under_fail", "policy not supported");
    }
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default().policy(Policy::Fail),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    let mut sent = 0u64;
    let err = loop {
        assert!(
            sent < 1000,
            "1000 frames of 1 MiB accepted by a stalled subscriber under fail"
        );
        match within(
            "send under fail",
            publ.send(Frame::new(pattern::make(sent, 1 << 20))),
        )
        .await
        {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        // Let the backend's I/O move what it can, so the failure is real.
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    match &err {
        Error::Full { option, .. } => assert!(err.to_string().contains(option)),
        other => panic!("expected Error::Full, got {other}"),
    }
    for i in 0..sent {
        let f = recv(&mut sub)
            .await
            .expect("frames accepted before the failure arrive");
        assert_eq!(f.seq, i);
    }
    within(
        "send after draining",
        publ.send(Frame::new(pattern::make(sent, 10))),
    )
    .await
    .expect("send works again once drained");
    assert_eq!(recv(&mut sub).await.expect("recv").seq, sent);
}

/// Dropping the publisher ends its subscribers with [`Error::Disconnected`]
/// after they have read what was sent.
pub async fn publisher_drop_disconnects_subscribers<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (mut publ, subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default(),
        2,
    )
    .await;
    for i in 0..3 {
        publ.send(Frame::new(pattern::make(i, 4096)))
            .await
            .expect("send");
    }
    within("flush", publ.flush()).await.expect("flush");
    drop(publ);
    for mut sub in subs {
        for i in 0..3 {
            assert_eq!(recv(&mut sub).await.expect("queued frame").seq, i);
        }
        match recv(&mut sub).await {
            Err(Error::Disconnected { .. }) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
        // And it stays that way.
        assert!(matches!(
            recv(&mut sub).await,
            Err(Error::Disconnected { .. })
        ));
    }
}

/// A payload over `max_payload` is refused by `send` and `loan` with
/// [`Error::PayloadTooLarge`]; the publisher goes on working.
pub async fn oversize_payload_is_refused<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let max = caps(h, &ep).max_payload;
    let Ok(len) = usize::try_from(max + 1) else {
        return skip("oversize_payload_is_refused", "max_payload exceeds memory");
    };
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    // calloc'd: the pages are never touched unless the backend copies them.
    let big = Bytes::from(vec![0u8; len]);
    match publ.send(Frame::new(big)).await {
        Err(e @ Error::PayloadTooLarge { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("raise"), "message says what to change: {msg}");
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(matches!(
        publ.loan(len).await,
        Err(Error::PayloadTooLarge { .. })
    ));
    publ.send(Frame::new(pattern::make(0, 10)))
        .await
        .expect("send after refusal");
    within("flush", publ.flush()).await.expect("flush");
    let f = recv(&mut sub).await.expect("recv");
    assert_eq!(f.seq, 0, "the refused frame used no sequence number");
    assert!(pattern::check(0, &f.payload));
}

/// `loan` -> fill -> `send_loan` delivers the filled bytes and header; dropped
/// loans give their memory back.
pub async fn loan_path_round_trip<H: Harness>(h: &'static H) {
    let depth = 3;
    let ep = h.endpoint(Some(depth));
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    for _ in 0..depth * 3 {
        let loan = within("loan", publ.loan(1 << 20)).await.expect("loan");
        drop(loan);
    }
    let n = (depth * 3) as u64;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            let mut loan = within("loan", publ.loan(1 << 20)).await.expect("loan");
            assert_eq!(loan.len(), 1 << 20);
            pattern::fill(i, &mut loan);
            loan.topic = "loaned".into();
            loan.layout = Layout::Tensor {
                dtype: DType::U16,
                shape: vec![512, 1024],
            };
            within("send_loan", publ.send_loan(loan))
                .await
                .expect("send_loan");
        }
        within("flush", publ.flush()).await.expect("flush");
        publ
    });
    for i in 0..n {
        let f = recv(&mut sub).await.expect("recv");
        assert_eq!(f.seq, i);
        assert_eq!(f.topic, "loaned");
        assert!(pattern::check(i, &f.payload));
        assert!(matches!(
            f.layout,
            Layout::Tensor {
                dtype: DType::U16,
                ..
            }
        ));
    }
    drop(sender.await.expect("sender"));
}

/// With no option and no `recv=` parameter, subscribers receive owned copies.
pub async fn default_receive_mode_is_owned<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (_publ, subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default(),
        1,
    )
    .await;
    assert_eq!(subs[0].recv_mode(), RecvMode::Owned);
}

/// Holding many owned frames never stops the publisher, even under `fail`
/// with a tiny queue or pool: owned frames are private copies.
pub async fn owned_frames_do_not_pin_publisher_memory<H: Harness>(h: &'static H) {
    let depth = 2;
    let ep = h.endpoint(Some(depth));
    let c = caps(h, &ep);
    let policy = if c.policies.contains(&Policy::Fail) {
        Policy::Fail
    } else {
        Policy::Block
    };
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default().policy(policy),
        SubscribeOptions::default().recv_mode(RecvMode::Owned),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    let mut kept = Vec::new();
    for i in 0..(depth as u64 * 4) {
        within("send", publ.send(Frame::new(pattern::make(i, 256 << 10))))
            .await
            .expect("holding owned frames must not fill the publisher");
        let f = recv(&mut sub).await.expect("recv");
        assert_eq!(f.seq, i);
        kept.push(f);
    }
    for (i, f) in kept.iter().enumerate() {
        assert!(
            pattern::check(i as u64, &f.payload),
            "owned frame {i} changed under us"
        );
    }
}

/// On backends that declare zero-copy views, a held view pins its slot: with
/// `depth` views held, the next send under `fail` reports the pool full.
pub async fn views_are_not_copies<H: Harness>(h: &'static H) {
    let depth = 2;
    let ep = h.endpoint(Some(depth));
    let c = caps(h, &ep);
    if !c.zero_copy_views || !c.policies.contains(&Policy::Fail) {
        return skip(
            "views_are_not_copies",
            "backend declares no zero-copy views",
        );
    }
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default().policy(Policy::Fail),
        SubscribeOptions::default().recv_mode(RecvMode::View),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    assert_eq!(sub.recv_mode(), RecvMode::View);
    let mut held = Vec::new();
    let mut full = false;
    for i in 0..(c.queue_depth as u64 + 2) {
        match within("send", publ.send(Frame::new(pattern::make(i, 64 << 10)))).await {
            Ok(()) => held.push(recv(&mut sub).await.expect("recv")),
            Err(Error::Full { .. }) => {
                full = true;
                break;
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    assert!(
        full,
        "{} views held and the pool is still not full: views are copies",
        held.len()
    );
    drop(held);
    // Releases travel back to the publisher; allow them a moment.
    let mut ok = false;
    for _ in 0..200 {
        if publ.send(Frame::new(pattern::make(99, 10))).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ok, "dropping the views did not give the slots back");
}

/// Cancelling `recv` (a timeout firing) loses no frame.
pub async fn cancelled_recv_loses_no_frame<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default(),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    let n = 200u64;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            publ.send(Frame::new(pattern::make(
                i,
                2000 + (i as usize * 997) % 70_000,
            )))
            .await
            .expect("send");
            if i % 7 == 0 {
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }
        within("flush", publ.flush()).await.expect("flush");
        publ
    });
    let mut next = 0;
    let mut cancelled = 0u32;
    let deadline = tokio::time::Instant::now() + PEER_TIMEOUT;
    while next < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at frame {next}"
        );
        match tokio::time::timeout(Duration::from_micros(50), sub.recv()).await {
            Err(_) => cancelled += 1,
            Ok(Ok(f)) => {
                assert_eq!(
                    f.seq, next,
                    "frame lost or reordered after {cancelled} cancellations"
                );
                assert!(pattern::check(f.seq, &f.payload));
                next += 1;
            }
            Ok(Err(e)) => panic!("recv: {e}"),
        }
    }
    drop(sender.await.expect("sender"));
}

/// A subscriber with a topic prefix receives only matching frames, without
/// false lag reports for the ones it skipped.
pub async fn topic_prefix_filters<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (mut publ, mut subs) = connect(
        h,
        &ep,
        PublishOptions::default(),
        SubscribeOptions::default().topic_prefix("cam/"),
        1,
    )
    .await;
    let mut sub = subs.pop().expect("one subscriber");
    for (i, topic) in ["cam/0", "imu", "cam/1", "cam", "cam/2"].iter().enumerate() {
        publ.send(Frame::new(pattern::make(i as u64, 100)).with_topic(*topic))
            .await
            .expect("send");
    }
    within("flush", publ.flush()).await.expect("flush");
    for want in ["cam/0", "cam/1", "cam/2"] {
        let f = recv_frame(&mut sub).await;
        assert_eq!(f.topic, want);
        assert!(pattern::check(f.seq, &f.payload));
    }
    assert_eq!(sub.stats().lagged, 0, "skipped topics are not lag");
}

/// A publisher that sends, calls `close`, and then loses its runtime at once
/// (as when its process exits) still delivers every frame: nothing sent may
/// be lost in user-space buffers after `close` returns.
pub async fn close_then_exit_loses_nothing<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let n = 12u64;
    let (ep_tx, ep_rx) = std::sync::mpsc::channel::<Endpoint>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    // The publisher lives on a runtime of its own, on a thread of its own,
    // and that runtime is dropped right after `close`: its tasks die mid-way,
    // like a process that exits.
    let publisher_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("publisher runtime");
        rt.block_on(async {
            let t = h.transport();
            let mut publ = within("publish", t.publish(&ep, &PublishOptions::default()))
                .await
                .expect("create publisher");
            ep_tx
                .send(publ.endpoint().clone())
                .expect("hand over the endpoint");
            settle(&mut publ, 1).await;
            go_rx
                .recv_timeout(PEER_TIMEOUT)
                .expect("the subscriber is ready");
            for i in 0..n {
                within("send", publ.send(Frame::new(pattern::make(i, 256 << 10))))
                    .await
                    .expect("send");
            }
            within("close", publ.close()).await.expect("close");
            // Then straight out, as at the end of `main`: the publisher's
            // destructor runs, its background tasks die with the runtime.
            drop(publ);
        });
        rt.shutdown_background();
    });
    let ep = tokio::task::spawn_blocking(move || ep_rx.recv_timeout(PEER_TIMEOUT))
        .await
        .expect("join")
        .expect("the publisher's endpoint");
    let mut sub = within(
        "subscribe",
        h.transport().subscribe(&ep, &SubscribeOptions::default()),
    )
    .await
    .expect("create subscriber");
    go_tx.send(()).expect("start the publisher");
    for i in 0..n {
        let f = recv(&mut sub)
            .await
            .unwrap_or_else(|e| panic!("frame {i} of {n} lost after close and exit: {e}"));
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
    tokio::task::spawn_blocking(move || publisher_thread.join())
        .await
        .expect("join")
        .expect("publisher thread");
}

/// With reconnect on, a subscriber follows its publisher across a restart
/// on the same endpoint: it reports the gap once with
/// [`Error::Reconnected`], then receives the new publisher's frames, whose
/// sequence numbers start again at 0 without being reported as lag. A
/// `recv` cancelled while no publisher is there loses nothing.
pub async fn reconnect_follows_a_restarted_publisher<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let t: std::sync::Arc<dyn DynTransport> = std::sync::Arc::new(h.transport());
    let mut first = within("publish", t.publish_dyn(&ep, &PublishOptions::default()))
        .await
        .expect("create publisher");
    let published = first.endpoint().clone();
    let Some(again) = h.restart_endpoint(&published) else {
        return skip(
            "reconnect_follows_a_restarted_publisher",
            "the harness cannot restart a publisher on the same endpoint",
        );
    };
    let cfg = Reconnect::default()
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .timeout(Some(PEER_TIMEOUT));
    let mut sub = within(
        "subscribe",
        reconnect::subscribe(
            t.clone(),
            &published,
            &SubscribeOptions::default().reconnect(cfg),
        ),
    )
    .await
    .expect("create a reconnecting subscriber");
    settle(&mut first, 1).await;
    for i in 0..3 {
        within("send", first.send(Frame::new(pattern::make(i, 4096))))
            .await
            .expect("send");
    }
    within("close", first.close()).await.expect("close");
    for i in 0..3 {
        let f = recv(&mut sub)
            .await
            .expect("a frame of the first publisher");
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
    drop(first);
    // No publisher: cancelled receives (timeouts firing) lose nothing.
    let mut early = false;
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_millis(60), sub.recv()).await {
            Err(_) => {}
            // A backend whose subscribe succeeds before a publisher binds.
            Ok(Err(Error::Reconnected { .. })) => {
                early = true;
                break;
            }
            Ok(other) => panic!("recv with no publisher returned {other:?}"),
        }
    }
    // The endpoint may take a moment to be free again (a listener closing).
    let deadline = tokio::time::Instant::now() + PEER_TIMEOUT;
    let mut second = loop {
        match t.publish_dyn(&again, &PublishOptions::default()).await {
            Ok(p) => break p,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("conformance: restarting the publisher: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restart the publisher on {again}: {e}"),
        }
    };
    if !early {
        match recv(&mut sub).await {
            Err(Error::Reconnected { after, reason }) => {
                assert!(after > Duration::ZERO);
                assert!(!reason.is_empty());
            }
            other => panic!("expected Error::Reconnected once, got {other:?}"),
        }
    }
    settle(&mut second, 1).await;
    for i in 0..5 {
        within("send", second.send(Frame::new(pattern::make(i, 4096))))
            .await
            .expect("send");
    }
    within("flush", second.flush()).await.expect("flush");
    for i in 0..5 {
        match recv(&mut sub).await {
            Ok(f) => {
                assert_eq!(f.seq, i, "frames of the new publisher, from its start");
                assert!(pattern::check(i, &f.payload));
            }
            Err(e) => panic!("after the reconnect: {e}"),
        }
    }
    let st = sub.stats();
    assert_eq!(st.reconnects, 1);
    assert_eq!(st.lagged, 0, "a restarted numbering is not lag");
    assert_eq!(st.frames_received, 8);
}
