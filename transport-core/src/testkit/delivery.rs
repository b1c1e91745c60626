//! Suite tests: what arrives, in what order, to whom: layouts and sizes,
//! sequence numbers, fan-out, late joiners, topic filters, several publishers.


use bytes::Bytes;

use super::helpers::*;
use super::harness::Harness;
use crate::{
    Frame,
    PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport, pattern,
};

suite! {$; delivery, __framewire_conformance_delivery;

/// Every payload layout at 0 B, 1 B, 4 KiB, 1 MiB, 24 MiB and 64 MiB arrives
/// intact, with its topic, metadata and layout.
pub async fn round_trip_every_layout_and_size<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let max = caps(h, &ep).max_payload;
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default(), SubscribeOptions::default()).await;
    let mut plan = Vec::new();
    for len in [0usize, 1, 4096, 1 << 20, 24 << 20, 64 << 20] {
        if len as u64 > max {
            skip_part(
                "round_trip_every_layout_and_size",
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
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default().trace_name("src"), SubscribeOptions::default()).await;
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
    let (mut publ, mut early) = connect_one(h, &ep, PublishOptions::default(), SubscribeOptions::default()).await;
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

/// A subscriber with a topic prefix receives only matching frames, without
/// false lag reports for the ones it skipped.
pub async fn topic_prefix_filters<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default(), SubscribeOptions::default().topic_prefix("cam/")).await;
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

/// On backends that declare [`Capabilities::per_publisher_seq`](crate::Capabilities::per_publisher_seq), two
/// publishers on one endpoint each number their frames 0, 1, 2, ...: the
/// subscriber receives both numberings whole and in order (told apart here by
/// the frames' metadata), with no false [`Error::Lagged`](crate::Error::Lagged).
pub async fn two_publishers_keep_their_own_sequence<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    if !caps(h, &ep).per_publisher_seq {
        skip("per_publisher_seq (several publishers numbered apart on one endpoint)");
    }
    let t = h.transport();
    let mut a = within("publish", t.publish(&ep, &PublishOptions::default()))
        .await
        .expect("first publisher");
    // The endpoint subscribers use; the second publisher joins it.
    let shared = a.endpoint().clone();
    let mut b = within("publish", t.publish(&shared, &PublishOptions::default()))
        .await
        .expect("second publisher on the same endpoint");
    let mut sub = within("subscribe", t.subscribe(&shared, &SubscribeOptions::default()))
        .await
        .expect("subscribe");
    settle(&mut a, 1).await;
    settle(&mut b, 1).await;
    const N: u64 = 20;
    // The first publisher is `AHEAD` frames ahead, so that one numbering for
    // both would show gaps (a false lag) and repeats. Sent while the
    // subscriber reads: under `block` a bounded queue would otherwise hold
    // the publishers up.
    const AHEAD: u64 = 5;
    let send = async {
        for i in 0..N + AHEAD {
            if i < N {
                let f = Frame::new(i.to_le_bytes().to_vec()).with_metadata("a");
                within("send", a.send(f))
                    .await
                    .expect("send from the first publisher");
            }
            if i >= AHEAD {
                let f = Frame::new((i - AHEAD).to_le_bytes().to_vec()).with_metadata("b");
                within("send", b.send(f))
                    .await
                    .expect("send from the second publisher");
            }
        }
        within("flush", a.flush()).await.expect("flush");
        within("flush", b.flush()).await.expect("flush");
    };
    let receive = async {
        let mut seen: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..2 * N {
            let f = match recv(&mut sub).await {
                Ok(f) => f,
                Err(e) => panic!("two publishers on one endpoint: {e} (after {seen:?})"),
            };
            let who = match &f.metadata[..] {
                b"a" => 0,
                b"b" => 1,
                other => panic!("a frame from neither publisher: metadata {other:?}"),
            };
            let sent = u64::from_le_bytes(f.payload[..].try_into().expect("an 8-byte payload"));
            assert_eq!(f.seq, sent, "publisher {who}: the seq is the publisher's own count");
            seen[who].push(f.seq);
        }
        seen
    };
    let ((), seen) = tokio::join!(send, receive);
    let whole: Vec<u64> = (0..N).collect();
    assert_eq!(seen[0], whole, "the first publisher's numbering");
    assert_eq!(seen[1], whole, "the second publisher's numbering");
    assert_eq!(sub.stats().lagged, 0, "interleaved publishers are not lag");
    within("close", a.close()).await.expect("close");
    within("close", b.close()).await.expect("close");
}

}
