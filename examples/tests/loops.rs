//! The send and receive loops of the example programs, in one process over
//! the inproc backend, where slow readers and policies can be staged exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use framewire::{Endpoint, Policy, PublishOptions, SubscribeOptions, Transport};
use framewire_examples::{SendPath, SendPlan, StopReason, receive_frames, send_frames};
use inproc_backend::{InprocPublisher, InprocSubscriber, InprocTransport};

async fn pair(params: &str, policy: Policy) -> (InprocPublisher, InprocSubscriber) {
    static N: AtomicU64 = AtomicU64::new(0);
    let url = format!(
        "inproc://loops-{}?{params}",
        N.fetch_add(1, Ordering::Relaxed)
    );
    let ep = Endpoint::parse(&url).expect("url");
    let t = InprocTransport;
    let publ = t
        .publish(&ep, &PublishOptions::default().policy(policy))
        .await
        .expect("publisher");
    let sub = t
        .subscribe(&ep, &SubscribeOptions::default())
        .await
        .expect("subscriber");
    (publ, sub)
}

fn plan(count: u64, path: SendPath) -> SendPlan {
    SendPlan {
        size: 4096 + 3,
        count,
        rate: None,
        path,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_are_retried_with_the_same_sequence_number() {
    for path in [SendPath::Loan, SendPath::Copy] {
        let (mut publ, mut sub) = pair("queue=1", Policy::Fail).await;
        let reader = tokio::spawn(async move {
            // A slow reader: the publisher keeps finding the queue full.
            let mut got = Vec::new();
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                got.push(receive_frames(&mut sub, 1, true, Duration::from_secs(10)).await);
            }
            got
        });
        let out = send_frames(&mut publ, plan(30, path)).await.expect("send");
        assert_eq!((out.report.sent, out.report.bytes), (30, 30 * 4099));
        assert!(
            out.refused > 0,
            "{path:?}: a reader this slow must fill queue=1"
        );
        let got = reader.await.expect("reader");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.stop, StopReason::Done);
            assert_eq!(
                (r.tally.received, r.tally.corrupt),
                (1, 0),
                "{path:?} frame {i}"
            );
            assert_eq!(
                r.tally.highest_seq,
                Some(i as u64),
                "{path:?}: frame {i} skipped"
            );
        }
    }
}

#[tokio::test]
async fn lag_is_counted_and_shows_as_lost() {
    let (mut publ, mut sub) = pair("queue=2", Policy::DropOldest).await;
    send_frames(&mut publ, plan(20, SendPath::Loan))
        .await
        .expect("send");
    drop(publ);
    let r = receive_frames(&mut sub, 20, true, Duration::from_secs(10)).await;
    assert!(
        matches!(r.stop, StopReason::Disconnected(_)),
        "{:?}",
        r.stop
    );
    assert_eq!(r.tally.summary_line(), "received=2 lost=18 corrupt=0");
    assert_eq!(r.tally.lagged, 18);
    assert_eq!(r.errors, 0);
}

#[tokio::test]
async fn idle_subscriber_stops() {
    let (_publ, mut sub) = pair("", Policy::Block).await;
    let r = receive_frames(&mut sub, 5, true, Duration::from_millis(100)).await;
    assert_eq!(r.stop, StopReason::Idle);
    assert_eq!(r.tally.summary_line(), "received=0 lost=0 corrupt=0");
}

#[tokio::test]
async fn rate_paces_sends() {
    let (mut publ, mut sub) = pair("", Policy::Block).await;
    let p = SendPlan {
        rate: Some(20.0),
        ..plan(4, SendPath::Copy)
    };
    let out = send_frames(&mut publ, p).await.expect("send");
    // The first tick is immediate, then one every 50 ms.
    assert!(
        out.report.secs >= 0.14,
        "4 frames at 20 Hz took {} s",
        out.report.secs
    );
    let r = receive_frames(&mut sub, 4, true, Duration::from_secs(10)).await;
    assert_eq!(r.tally.summary_line(), "received=4 lost=0 corrupt=0");
}
