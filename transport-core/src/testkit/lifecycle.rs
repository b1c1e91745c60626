//! Suite tests: ends and restarts: publisher drop, cancelled receives, close
//! before exit, reconnect.

use std::time::Duration;


use super::helpers::*;
use super::harness::{Harness, PEER_TIMEOUT};
use crate::reconnect::{self, Reconnect};
use crate::{
    DynTransport, Endpoint, Error, Frame,
    PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport, pattern,
};

suite! {$; lifecycle, __framewire_conformance_lifecycle;

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

/// A subscriber URL may carry the publisher's `policy=` (one URL serves
/// both ends), but a value that does not parse is refused with
/// [`Error::InvalidOption`] naming `policy`, as the publisher refuses it;
/// a valid one is accepted. (Found in review: two backends ignored it.)
pub async fn subscribe_checks_the_policy_option<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let t = h.transport();
    let publ = within("publish", t.publish(&ep, &PublishOptions::default()))
        .await
        .expect("publish");
    // Where it really listens (a tcp port 0 is given one).
    let ep = publ.endpoint().clone();
    let bad = ep.clone().with_param("policy", "sometimes");
    match within("subscribe", t.subscribe(&bad, &SubscribeOptions::default())).await {
        Err(Error::InvalidOption { option, .. }) => assert_eq!(option, "policy"),
        Err(other) => panic!("a bad policy= on subscribe: expected InvalidOption, got {other}"),
        Ok(_) => panic!("a bad policy= on subscribe was accepted"),
    }
    let good = ep.clone().with_param("policy", "block");
    within("subscribe", t.subscribe(&good, &SubscribeOptions::default()))
        .await
        .expect("subscribe with a valid policy=");
}

/// Cancelling `recv` (a timeout firing) loses no frame.
pub async fn cancelled_recv_loses_no_frame<H: Harness>(h: &'static H) {
    let ep = h.endpoint(None);
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default(), SubscribeOptions::default()).await;
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
        skip("Harness::restart_endpoint (a publisher restarted on the same endpoint)");
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

}
