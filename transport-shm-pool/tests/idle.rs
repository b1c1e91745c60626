//! CPU use while idle. A test binary of its own with a single test: cargo
//! runs test binaries one at a time, so this process's CPU clock measures
//! this test alone.

use std::time::Duration;

use transport_core::{
    Endpoint, Frame, Policy, PublishOptions, Publisher, RecvMode, SubscribeOptions, Subscriber,
    Transport, pattern,
};
use transport_shm_pool::ShmPoolTransport;

const WAIT: Duration = Duration::from_secs(20);
/// What a parked task may cost in 500 ms (timer wake-ups, the runtime).
const IDLE_BUDGET: Duration = Duration::from_millis(30);

fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Polls `f` for 500 ms (it must not complete: nothing can arrive) and
/// checks that this process used next to no CPU meanwhile.
async fn asleep_for_500ms<F: std::future::Future>(what: &str, f: F) {
    let before = cpu_time();
    let r = tokio::time::timeout(Duration::from_millis(500), f).await;
    assert!(r.is_err(), "{what}: completed, but nothing could arrive");
    let cost = cpu_time() - before;
    assert!(cost < IDLE_BUDGET, "{what} cost {cost:?} of CPU in 500 ms");
}

/// An idle subscriber (event wake-up, then `busy_poll`) and a publisher
/// blocked on a pool whose every slot is viewed sleep: next to no CPU. The
/// cancelled blocked send leaves nothing behind.
#[test]
fn idle_subscribers_and_a_blocked_publisher_use_no_cpu() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = format!(
            "shm-pool://idle-{}?slots=2&max_held=2&slot_size=64KiB",
            std::process::id()
        );
        let ep = Endpoint::parse(&url).expect("endpoint");
        let t = ShmPoolTransport::new();
        let mut p = within(
            "publish",
            t.publish(&ep, &PublishOptions::default().policy(Policy::Block)),
        )
        .await
        .expect("publish");
        let views = SubscribeOptions::default().recv_mode(RecvMode::View);
        let mut s = within("subscribe", t.subscribe(&ep, &views))
            .await
            .expect("subscribe");
        let busy_ep = ep.with_param("busy_poll", "2ms");
        let mut busy = within("subscribe busy_poll", t.subscribe(&busy_ep, &views))
            .await
            .expect("subscribe busy_poll");
        within("subscribers", p.wait_for_subscribers(2, WAIT))
            .await
            .expect("subscribers");

        asleep_for_500ms("an idle subscriber", s.recv()).await;
        // busy_poll spins at most its bound per wait, then parks.
        asleep_for_500ms("an idle busy_poll=2ms subscriber", busy.recv()).await;

        // Both slots held by views: the third send blocks, asleep.
        let mut held = Vec::new();
        for seq in 0..2 {
            p.send(Frame::new(pattern::make(seq, 1000)))
                .await
                .expect("send");
            held.push(within("recv", s.recv()).await.expect("recv"));
            held.push(within("recv busy", busy.recv()).await.expect("recv busy"));
        }
        assert_eq!(p.free_slots(), 0);
        // Every slot is viewed: the send blocks.
        asleep_for_500ms(
            "a blocked publisher",
            p.send(Frame::new(pattern::make(2, 1000))),
        )
        .await;

        // The cancelled send took no slot and no sequence number.
        drop(held);
        within("send", p.send(Frame::new(pattern::make(2, 1000))))
            .await
            .expect("room again once the views are gone");
        for sub in [&mut s, &mut busy] {
            let f = within("recv", sub.recv()).await.expect("recv");
            assert_eq!(f.seq, 2);
            assert!(pattern::check(2, &f.payload));
        }
    });
}
