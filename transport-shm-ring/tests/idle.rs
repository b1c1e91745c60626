//! CPU use while idle. A test binary of its own: cargo runs test binaries
//! one at a time, so this process's CPU clock measures this test alone.

mod common;

use std::time::Duration;

use common::{T, assert_dev_shm_unchanged, cpu_time, dev_shm, name, within};
use transport_core::{
    Endpoint, Frame, Policy, PublishOptions, Publisher, Subscriber, Transport, pattern,
};
use transport_shm_ring::ShmRingTransport;

/// An idle subscriber and a publisher blocked under `block` sleep: they
/// use (next to) no CPU, and the cancelled send leaves nothing behind.
#[test]
fn an_idle_subscriber_and_a_blocked_publisher_use_no_cpu() {
    let shm_before = dev_shm();
    let rt = common::runtime();
    rt.block_on(async {
        let url = format!("shm-ring://{}?capacity=4MiB&max_records=2", name("idle"));
        let ep = Endpoint::parse(&url).expect("endpoint");
        let opts = PublishOptions::default().policy(Policy::Block);
        let mut p = within("publish", ShmRingTransport.publish(&ep, &opts))
            .await
            .expect("publish");
        let mut s = within(
            "subscribe",
            ShmRingTransport.subscribe(&ep, &Default::default()),
        )
        .await
        .expect("subscribe");
        within("subscriber", p.wait_for_subscribers(1, T))
            .await
            .expect("subscriber");
        let before = cpu_time();
        let r = tokio::time::timeout(Duration::from_millis(500), s.recv()).await;
        assert!(r.is_err(), "nothing was sent");
        let idle = cpu_time() - before;
        assert!(
            idle < Duration::from_millis(30),
            "an idle subscriber cost {idle:?} of CPU in 500 ms"
        );
        p.send(Frame::new(pattern::make(0, 100)))
            .await
            .expect("send");
        p.send(Frame::new(pattern::make(1, 100)))
            .await
            .expect("send");
        let before = cpu_time();
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            p.send(Frame::new(pattern::make(2, 100))),
        )
        .await;
        assert!(r.is_err(), "the ring is full under block");
        let blocked = cpu_time() - before;
        assert!(
            blocked < Duration::from_millis(30),
            "a blocked publisher cost {blocked:?} of CPU in 500 ms"
        );
        // The cancelled send left nothing behind: reading frees the ring.
        for i in 0..2 {
            assert_eq!(within("recv", s.recv()).await.expect("recv").seq, i);
        }
        within("send", p.send(Frame::new(pattern::make(2, 100))))
            .await
            .expect("room again");
        let f = within("recv", s.recv()).await.expect("recv");
        assert_eq!(f.seq, 2);
        assert!(pattern::check(2, &f.payload));
    });
    assert_dev_shm_unchanged(&shm_before);
}
