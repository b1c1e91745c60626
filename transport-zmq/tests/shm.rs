//! `shm=pool`: payloads in shared-memory slots, references over ZeroMQ.
//! Slots come back only when every subscriber has dropped its view; a
//! subscriber that cannot attach the pool gets payloads inline; hostile
//! references are an error for that message and the subscriber goes on.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{FakePublisher, T, within};
use transport_core::{
    Endpoint, Error, Frame, Policy, PublishOptions, Publisher, RecvMode, SubscribeOptions,
    Subscriber, Transport, codec, pattern,
};
use transport_zmq::shm_pool::{SharedPool, SlotRef};
use transport_zmq::wire::{self, Control, SubscriberId, Upstream, Welcome};
use transport_zmq::{ZmqPublisher, ZmqSubscriber, ZmqTransport};

async fn publisher(query: &str, policy: Policy) -> ZmqPublisher {
    let ep = Endpoint::parse(&format!("zmq+tcp://127.0.0.1:0?shm=pool&{query}")).expect("url");
    within(ZmqTransport.publish(&ep, &PublishOptions::default().policy(policy)))
        .await
        .expect("publish")
}

async fn subscriber(url: &str, mode: RecvMode) -> ZmqSubscriber {
    let ep = Endpoint::parse(url).expect("url");
    within(ZmqTransport.subscribe(&ep, &SubscribeOptions::default().recv_mode(mode)))
        .await
        .expect("subscribe")
}

/// Waits until the publisher's pool has `n` free slots.
async fn wait_free(publ: &ZmqPublisher, n: usize) {
    let deadline = tokio::time::Instant::now() + T;
    while publ.shm_free_slots() != Some(n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} free slots, expected {n}",
            publ.shm_free_slots()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the publisher's pool has a free slot. Releases travel back
/// over the subscriber's socket, so right after a view or an owned copy is
/// dropped its slot may not be free yet; under `fail` a send must not race
/// that.
async fn wait_a_free_slot(publ: &ZmqPublisher) {
    let deadline = tokio::time::Instant::now() + T;
    while publ.shm_free_slots().unwrap_or(0) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Checks for a while that the pool keeps exactly `n` free slots.
async fn stays_free(publ: &ZmqPublisher, n: usize) {
    for _ in 0..20 {
        assert_eq!(publ.shm_free_slots(), Some(n), "a slot came back too early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_returns_only_after_every_subscriber_dropped_its_view() {
    let mut publ = publisher("slots=2&slot_size=1MiB&queue=2", Policy::Fail).await;
    let url = publ.endpoint().url().to_owned();
    let mut a = subscriber(&url, RecvMode::View).await;
    let mut b = subscriber(&url, RecvMode::View).await;
    within(publ.wait_for_subscribers(2, T)).await.expect("two");
    assert_eq!(a.shm_status(), Some(Ok(())));
    assert_eq!(b.shm_status(), Some(Ok(())));
    wait_free(&publ, 2).await;

    for (round, a_first) in [(0u64, true), (1, false)] {
        publ.send(Frame::new(pattern::make(round, 64 << 10)))
            .await
            .expect("send");
        let fa = within(a.recv()).await.expect("a");
        let fb = within(b.recv()).await.expect("b");
        assert!(pattern::check(round, &fa.payload) && pattern::check(round, &fb.payload));
        // Both views point into the same shared slot: the publisher's copy
        // into the slot was the only one.
        wait_free(&publ, 1).await;
        let (first, second) = if a_first { (fa, fb) } else { (fb, fa) };
        // A clone of a view holds the slot as well.
        let clone = first.payload.clone();
        drop(first);
        stays_free(&publ, 1).await;
        drop(clone);
        stays_free(&publ, 1).await;
        assert!(pattern::check(round, &second.payload), "still intact");
        drop(second);
        wait_free(&publ, 2).await;
    }

    // Held views fill the pool: `fail` names the option to raise.
    let mut held = Vec::new();
    for i in 2..4 {
        publ.send(Frame::new(pattern::make(i, 10)))
            .await
            .expect("send");
        held.push(within(a.recv()).await.expect("a"));
        held.push(within(b.recv()).await.expect("b"));
    }
    let e = publ
        .send(Frame::new(pattern::make(4, 10)))
        .await
        .expect_err("pool full");
    assert!(
        matches!(
            e,
            Error::Full {
                option: "slots",
                ..
            }
        ),
        "{e}"
    );
    drop(held);
    wait_free(&publ, 2).await;
    publ.send(Frame::new(pattern::make(4, 10)))
        .await
        .expect("room again");
    assert_eq!(within(a.recv()).await.expect("a").seq, 4);
    assert_eq!(within(b.recv()).await.expect("b").seq, 4);
    assert_eq!(publ.shm_stale_releases(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_subscribers_release_at_once_and_loans_are_the_slot() {
    let mut publ = publisher("slots=2&slot_size=1MiB", Policy::Fail).await;
    let url = publ.endpoint().url().to_owned();
    let mut sub = subscriber(&url, RecvMode::Owned).await;
    within(publ.wait_for_subscribers(1, T)).await.expect("one");
    let mut kept = Vec::new();
    for i in 0..6 {
        wait_a_free_slot(&publ).await;
        let mut loan = within(publ.loan(1000)).await.expect("loan");
        pattern::fill(i, &mut loan);
        within(publ.send_loan(loan)).await.expect("send_loan");
        kept.push(within(sub.recv()).await.expect("recv"));
    }
    for (i, f) in kept.iter().enumerate() {
        assert!(
            pattern::check(i as u64, &f.payload),
            "owned copy {i} changed"
        );
    }
    wait_free(&publ, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_subscriber_keeps_its_slots_until_its_views_drop() {
    let mut publ = publisher("slots=2&slot_size=1MiB", Policy::Block).await;
    let url = publ.endpoint().url().to_owned();
    let mut sub = subscriber(&url, RecvMode::View).await;
    within(publ.wait_for_subscribers(1, T)).await.expect("one");
    publ.send(Frame::new(pattern::make(0, 4096)))
        .await
        .expect("send");
    let f = within(sub.recv()).await.expect("recv");
    wait_free(&publ, 1).await;
    drop(sub);
    let deadline = tokio::time::Instant::now() + T;
    while publ.subscriber_count() != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber not gone"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Gone from the channel, but its view still maps the slot.
    stays_free(&publ, 1).await;
    assert!(pattern::check(0, &f.payload));
    drop(f);
    wait_free(&publ, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_attach_gets_payloads_inline() {
    let mut publ = publisher("slots=2&slot_size=1MiB", Policy::Fail).await;
    let url = publ.endpoint().url().to_owned();
    let mut attached = subscriber(&url, RecvMode::View).await;
    let inline_url = Endpoint::parse(&url)
        .expect("url")
        .with_param("shm", "inline");
    let mut inline = subscriber(inline_url.url(), RecvMode::View).await;
    within(publ.wait_for_subscribers(2, T)).await.expect("two");
    assert_eq!(attached.shm_status(), Some(Ok(())));
    let why = inline
        .shm_status()
        .expect("a shm publisher")
        .expect_err("inline");
    assert!(why.contains("shm=inline"), "{why}");
    let mut kept = Vec::new();
    for i in 0..6 {
        wait_a_free_slot(&publ).await;
        publ.send(Frame::new(pattern::make(i, 100 << 10)))
            .await
            .expect("holding inline frames never fills the pool");
        let fa = within(attached.recv()).await.expect("attached");
        let fi = within(inline.recv()).await.expect("inline");
        assert_eq!((fa.seq, fi.seq), (i, i));
        assert!(pattern::check(i, &fa.payload) && pattern::check(i, &fi.payload));
        drop(fa);
        kept.push(fi);
    }
    wait_free(&publ, 2).await;
    for (i, f) in kept.iter().enumerate() {
        assert!(
            pattern::check(i as u64, &f.payload),
            "inline frame {i} changed"
        );
    }
}

/// Another user cannot attach the pool (the publisher checks the peer's uid
/// and hands it nothing): it falls back to inline payloads by itself.
/// Needs root, to run the subscriber as `nobody` in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_falls_back_to_inline_payloads() {
    use std::os::unix::process::CommandExt;
    if !rustix_is_root() {
        eprintln!("skipped: needs root to run a subscriber as another user");
        return;
    }
    let mut publ = publisher("slots=2&slot_size=1MiB", Policy::Block).await;
    let url = publ.endpoint().url().to_owned();
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "child_subscriber_as_another_user", "--nocapture"])
        .env("FWZ_SHM_CHILD_URL", &url)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child");
    within(publ.wait_for_subscribers(1, T))
        .await
        .expect("the child subscribes");
    for i in 0..3 {
        publ.send(Frame::new(pattern::make(i, 200 << 10)))
            .await
            .expect("send");
    }
    within(publ.flush()).await.expect("flush");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + T;
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                let mut out = String::new();
                use std::io::Read;
                child
                    .stdout
                    .take()
                    .expect("stdout")
                    .read_to_string(&mut out)
                    .ok();
                return (s, out);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child did not finish");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .expect("waiter");
    assert!(status.0.success(), "child failed: {}", status.1);
    assert!(status.1.contains("CHILD-OK inline"), "{}", status.1);
    eprintln!(
        "{}",
        status
            .1
            .lines()
            .find(|l| l.contains("CHILD-OK"))
            .unwrap_or("")
    );
    wait_free(&publ, 2).await;
}

fn rustix_is_root() -> bool {
    // /proc/self/status: "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The child of the test above (does nothing when run on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_subscriber_as_another_user() {
    let Ok(url) = std::env::var("FWZ_SHM_CHILD_URL") else {
        return;
    };
    let mut sub = subscriber(&url, RecvMode::View).await;
    let why = sub
        .shm_status()
        .expect("a shm publisher")
        .expect_err("another user cannot attach")
        .to_owned();
    for i in 0..3 {
        let f = within(sub.recv()).await.expect("recv");
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
    println!("CHILD-OK inline: {why}");
}

fn envelope(seq: u64, len: usize) -> Bytes {
    let mut f = Frame::new(vec![0u8; len]);
    f.seq = seq;
    let mut b = BytesMut::new();
    codec::encode_header(&f, &mut b).expect("encode");
    b.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_references_are_an_error_per_message_and_the_subscriber_goes_on() {
    let pool = SharedPool::create("hostile-test", 2, 4096).expect("pool");
    let server = pool.serve().expect("serve");
    let mut fake = FakePublisher::bind().await;
    let url = fake.url.clone();
    let sub = tokio::spawn(async move { subscriber(&url, RecvMode::View).await });
    let _: (SubscriberId, String) = fake.accept_only().await;
    let route = Bytes::new();
    let shm = Control::Shm {
        socket: server.name().to_owned(),
        segment: pool.segment_id(),
        slot_size: pool.slot_size(),
    };
    let welcome = Welcome {
        instance: 1,
        next_seq: 0,
        policy: Policy::Block,
        queue: 4,
        heartbeat_ms: 1000,
        peer_timeout_ms: 10_000,
        write_timeout_ms: 100,
    };
    fake.control(shm).await;
    fake.control(Control::Welcome(welcome)).await;
    let mut sub = within(sub).await.expect("subscriber task");
    assert_eq!(sub.shm_status(), Some(Ok(())));
    match fake.upstream().await {
        Upstream::Shm { conn: Some(c), .. } => assert!(server.is_open(c)),
        other => panic!("expected an attach report, got {other:?}"),
    }

    // One real frame in slot, held by holder 0 (the subscriber).
    let mut w = pool.try_alloc(1000).expect("len").expect("slot");
    pattern::fill(0, transport_core::LoanBuffer::as_mut_slice(&mut w));
    let good = w.publish(1000, 1);
    let tag = Bytes::from_static(&wire::SHM_TAG);
    let by_ref = |r: SlotRef, env_len: usize| {
        vec![
            route.clone(),
            envelope(0, env_len),
            tag.clone(),
            Bytes::copy_from_slice(&r.encode()),
        ]
    };
    let hostile = [
        (
            "index out of range",
            by_ref(SlotRef { index: 2, ..good }, 1000),
        ),
        (
            "index far out of range",
            by_ref(
                SlotRef {
                    index: u32::MAX,
                    ..good
                },
                1000,
            ),
        ),
        (
            "generation mismatch",
            by_ref(
                SlotRef {
                    generation: good.generation + 1,
                    ..good
                },
                1000,
            ),
        ),
        (
            "len past the slot",
            by_ref(SlotRef { len: 5000, ..good }, 5000),
        ),
        (
            "len past the segment",
            by_ref(
                SlotRef {
                    len: u64::MAX / 2,
                    ..good
                },
                1000,
            ),
        ),
        (
            "len not the slot's",
            by_ref(SlotRef { len: 999, ..good }, 999),
        ),
        (
            "unknown segment",
            by_ref(SlotRef { segment: 1, ..good }, 1000),
        ),
        ("len differs from the envelope", by_ref(good, 10)),
        (
            "truncated reference",
            vec![
                route.clone(),
                envelope(0, 1000),
                tag.clone(),
                Bytes::copy_from_slice(&good.encode()[..27]),
            ],
        ),
    ];
    let n = hostile.len();
    for (_, parts) in hostile {
        fake.send(parts).await;
    }
    fake.send(by_ref(good, 1000)).await;
    for (i, what) in (0..n).zip([
        "index",
        "index",
        "generation",
        "length",
        "",
        "generation",
        "segment",
        "",
        "",
    ]) {
        match within(sub.recv()).await {
            Err(e @ Error::InvalidReference { .. }) => {
                assert!(e.to_string().contains(what), "message {i}: {e}")
            }
            Err(e @ Error::Protocol { .. }) if i == 4 => {
                // An absurd length is refused with the envelope, before the reference is looked at.
                let _ = e;
            }
            other => panic!("hostile reference {i}: expected an error, got {other:?}"),
        }
    }
    // The subscriber goes on: the real frame arrives, as a view of the slot.
    let f = within(sub.recv()).await.expect("the good frame");
    assert!(pattern::check(0, &f.payload));
    assert_eq!(pool.holders(&good), 1, "the view holds the slot");
    // Refused references were given back (harmless: stale ones are ignored);
    // let those arrive first, so that the release awaited below is the view's.
    while let Ok(u) = tokio::time::timeout(Duration::from_millis(300), fake.upstream()).await {
        let _ = u;
    }
    drop(f);
    // Its release travels upstream.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no release");
        if let Upstream::Release { slots, .. } = fake.upstream().await
            && slots.contains(&(good.index, good.generation))
        {
            break;
        }
    }
    assert!(pool.release(&good, 0));
    assert_eq!(pool.free_slots(), 2);
}

/// A view received through `shm=pool` and re-sent by an `shm-pool`
/// publisher is copied, not forwarded: the ZeroMQ hop has no anchor to pass
/// on, so forwarding could let the zmq publisher reuse the slot under the
/// downstream views if the re-sending process died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_shm_pool_publisher_copies_a_zmq_view() {
    use transport_shm_pool::ShmPoolTransport;
    let mut zp = publisher("slots=2&slot_size=1MiB", Policy::Block).await;
    let url = zp.endpoint().url().to_owned();
    let mut zs = subscriber(&url, RecvMode::View).await;
    within(zp.wait_for_subscribers(1, T)).await.expect("one");
    let shm = ShmPoolTransport::new();
    let ep = Endpoint::parse(&format!(
        "shm-pool://zmq-view-{}?slots=2&slot_size=1MiB",
        std::process::id()
    ))
    .expect("url");
    let mut sp = within(shm.publish(&ep, &PublishOptions::default()))
        .await
        .expect("an shm-pool publisher");
    let views = SubscribeOptions::default().recv_mode(RecvMode::View);
    let mut ss = within(shm.subscribe(sp.endpoint(), &views))
        .await
        .expect("its subscriber");
    within(sp.wait_for_subscribers(1, T))
        .await
        .expect("subscribed");
    zp.send(Frame::new(pattern::make(0, 100_000)))
        .await
        .expect("send");
    let f = within(zs.recv()).await.expect("a view over zmq");
    within(sp.send(f)).await.expect("re-send");
    assert_eq!(sp.forwarded(), 0, "copied, not forwarded");
    let g = within(ss.recv()).await.expect("recv");
    assert!(pattern::check(0, &g.payload));
    assert_eq!(sp.free_slots(), 1, "the copy is in a slot of its own");
    // The zmq view went with the copy: its slot is back.
    wait_free(&zp, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_zeromq_subscriber_of_an_shm_pool_publisher_gets_payloads_inline() {
    let mut p = publisher("slots=2&slot_size=1MiB", Policy::Block).await;
    let addr = common::addr(&p);
    let mut plain = common::RawPeer::connect(&addr, "SUB", &[]).await;
    plain.send(vec![wire::subscription("", true)]).await;
    within(p.wait_for_subscribers(1, T)).await.expect("counted");
    for i in 0..4u64 {
        within(p.send(Frame::new(pattern::make(i, 5000)).with_topic("cam")))
            .await
            .expect("send");
        // No control, no reference: the three parts of plain ZeroMQ.
        let m = plain.recv_msg().await;
        assert_eq!(m.len(), 3, "{m:?}");
        let f = wire::decode_envelope(&m[1], m[2].len() as u64, 1 << 20).expect("envelope");
        assert_eq!((f.seq, f.topic.as_str()), (i, "cam"));
        assert!(pattern::check(i, &m[2]));
    }
    // It never holds a slot: all of them come back.
    wait_free(&p, 2).await;
}
