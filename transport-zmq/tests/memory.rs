//! The publisher's memory stays bounded with a subscriber that has stopped
//! reading (here a plain ZeroMQ SUB that subscribes to everything and never
//! reads): the `zeromq` crate's own PUB socket queued up to 100,000 messages
//! per peer (measured: +960 MiB after 40 frames of 24 MiB); framewire's
//! writer holds one message per connection, behind a bounded queue.
//!
//! Its own test binary, so that no other test allocates meanwhile.

mod common;

use std::time::Duration;

use transport_core::{Endpoint, Frame, Policy, PublishOptions, Publisher, Transport};
use transport_zmq::ZmqTransport;
use transport_zmq::wire;

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(20);

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_grow_the_publisher() {
    let url = "zmq+tcp://127.0.0.1:0?queue=2&write_timeout=60s&peer_timeout=120s";
    let popts = PublishOptions::default().policy(Policy::DropOldest);
    let mut p = tokio::time::timeout(
        T,
        ZmqTransport.publish(&Endpoint::parse(url).expect("url"), &popts),
    )
    .await
    .expect("in time")
    .expect("publish");
    // A subscriber that subscribes, then never reads and never reports.
    let mut ghost = common::RawPeer::connect(&common::addr(&p), "SUB", &[]).await;
    ghost.send(vec![wire::subscription("", true)]).await;
    p.wait_for_subscribers(1, T).await.expect("subscriber");

    let size = 24 << 20;
    let before = rss();
    for i in 0..40u8 {
        // A fresh, fully written 24 MiB frame each time.
        let f = Frame::new(vec![i; size]);
        tokio::time::timeout(T, p.send(f))
            .await
            .expect("send never blocks")
            .expect("send");
        assert!(p.stats().queued <= 2);
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "publisher RSS grew by {} MiB over 40 frames of 24 MiB",
        grown / MIB
    );
    // Two queued frames, one being written, one being built, allocator
    // slack: far below the 960 MiB the `zeromq` crate's PUB queue reached.
    assert!(grown < 200 * MIB, "publisher grew by {} MiB", grown / MIB);
    assert!(p.stats().dropped >= 36, "{:?}", p.stats());
    drop(ghost);
}
