//! Suite tests: loans and receive modes: owned frames are copies that pin
//! nothing, views are not copies.

use std::time::Duration;


use super::helpers::*;
use super::harness::Harness;
use crate::{
    DType, Error, Frame, Layout, Policy,
    PublishOptions, Publisher, RecvMode, SubscribeOptions, Subscriber, pattern,
};

suite! {$; memory, __framewire_conformance_memory;

/// `loan` -> fill -> `send_loan` delivers the filled bytes and header; dropped
/// loans give their memory back.
pub async fn loan_path_round_trip<H: Harness>(h: &'static H) {
    let depth = 3;
    let ep = h.endpoint(Some(depth));
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default(), SubscribeOptions::default()).await;
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
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default().policy(policy), SubscribeOptions::default().recv_mode(RecvMode::Owned)).await;
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
        skip("zero_copy_views and policy fail");
    }
    let (mut publ, mut sub) = connect_one(h, &ep, PublishOptions::default().policy(Policy::Fail), SubscribeOptions::default().recv_mode(RecvMode::View)).await;
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

}
