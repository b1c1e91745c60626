//! Suite tests: what a full queue does under each policy, and the payload
//! limit.

use std::time::Duration;

use bytes::Bytes;

use super::helpers::*;
use super::harness::Harness;
use crate::{
    Error, Frame, Policy,
    PublishOptions, Publisher, SubscribeOptions, Subscriber, pattern,
};

suite! {$; policies, __framewire_conformance_policies;

/// Under `block`, a slow subscriber slows the publisher; nothing is lost and
/// queued frames stay within the declared depth.
pub async fn slow_subscriber_under_block<H: Harness>(h: &'static H) {
    let depth = 2;
    let ep = h.endpoint(Some(depth));
    let c = caps(h, &ep);
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default().policy(Policy::Block), SubscribeOptions::default()).await;
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
        skip("policy drop-oldest");
    }
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default().policy(Policy::DropOldest), SubscribeOptions::default()).await;
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
        skip("policy fail");
    }
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default().policy(Policy::Fail), SubscribeOptions::default()).await;
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

/// A payload over `max_payload` is refused by `send` and `loan` with
/// [`Error::PayloadTooLarge`]; the publisher goes on working.
pub async fn oversize_payload_is_refused<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let max = caps(h, &ep).max_payload;
    let Ok(len) = usize::try_from(max + 1) else {
        skip("a max_payload below usize::MAX (a payload one byte over it must fit in memory)");
    };
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default(), SubscribeOptions::default()).await;
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

}
