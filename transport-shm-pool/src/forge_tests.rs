//! Hostile peers speaking the socket protocol: a fake publisher that sends
//! forged descriptors to a real subscriber, and a fake subscriber that sends
//! stale, duplicate and forged releases to a real publisher.

use std::os::fd::AsFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::UnixStream;
use transport_core::{
    Endpoint, Error, Frame, Policy, PublishOptions, Publisher, RecvMode, SubscribeOptions,
    Subscriber, Transport, codec, pattern,
};

use crate::ShmPoolTransport;
use crate::config::socket_name;
use crate::pool::{SegmentMap, SlotPool};
use crate::sys;
use crate::wire::{self, ClaimTable, Desc, Msg, RecvBuf, Take};

const WAIT: Duration = Duration::from_secs(10);

fn name(test: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "forge-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The encoded envelope prefix and header of frame `seq` with a `len`-byte payload.
fn header(seq: u64, len: usize) -> Bytes {
    let mut f = Frame::new(pattern::make(seq, len));
    f.seq = seq;
    let mut b = BytesMut::new();
    codec::encode_header(&f, &mut b).expect("encode header");
    b.freeze()
}

/// A publisher that follows the handshake and then sends whatever it is told.
struct FakePublisher {
    pool: SlotPool,
    stream: UnixStream,
    claims: ClaimTable,
    rx: RecvBuf,
}

impl FakePublisher {
    /// Listens on `name`, lets `subscribe` connect, and completes the handshake.
    async fn serve(name: &str, subscribe: impl std::future::Future<Output = ()>) -> FakePublisher {
        let pool = SlotPool::create(name, 2, 8192).expect("pool");
        let listener = sys::listen(&socket_name(sys::euid(), name))
            .await
            .expect("listen");
        let accept = async {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut rx = RecvBuf::new();
            assert!(matches!(
                rx.recv(&stream, "SUBSCRIBE").await,
                Ok(Msg::Subscribe { .. })
            ));
            let g = pool.geometry();
            let hello = wire::Hello {
                version: wire::VERSION,
                flags: 0,
                segment: pool.segment_id(),
                slots: g.slots,
                slot_size: g.slot_size,
                stride: g.stride,
                data_offset: g.data_offset,
                segment_len: g.len,
                claims_len: wire::claims_len(g.slots),
            };
            let ro = sys::reopen_read_only(pool.fd()).expect("read-only fd");
            wire::send(&stream, &Msg::Hello(hello), Some(ro.as_fd()), "HELLO")
                .await
                .expect("HELLO");
            assert!(matches!(
                rx.recv(&stream, "CLAIMS").await,
                Ok(Msg::Claims { .. })
            ));
            let fd = rx.take_fd().expect("claims fd");
            let claims = ClaimTable::open(&fd, g.slots).expect("claim table");
            wire::send(&stream, &Msg::Ready { id: 0 }, None, "READY")
                .await
                .expect("READY");
            (stream, claims, rx)
        };
        let ((stream, claims, rx), ()) =
            within("the handshake", async { tokio::join!(accept, subscribe) }).await;
        FakePublisher {
            pool,
            stream,
            claims,
            rx,
        }
    }

    /// Writes frame `seq` into slot `index` with header generation `generation`.
    fn write(&self, index: u32, generation: u64, seq: u64, len: usize) {
        // SAFETY: this test owns the pool; the subscriber reads a slot only
        // after a descriptor for it, and every write here precedes its descriptor.
        unsafe { self.pool.slot_mut(index, len) }.copy_from_slice(&pattern::make(seq, len));
        self.pool.set_header(index, generation, len as u64);
    }

    fn desc(&self, index: u32, generation: u64, len: u64) -> Desc {
        Desc {
            segment: self.pool.segment_id(),
            index,
            generation,
            len,
            missed: 0,
        }
    }

    async fn send(&self, desc: Desc, header: Bytes) {
        wire::send(&self.stream, &Msg::Desc { desc, header }, None, "DESC")
            .await
            .expect("DESC");
    }

    async fn expect_release(&mut self, index: u32, generation: u64) {
        match within("a RELEASE", self.rx.recv(&self.stream, "RELEASE")).await {
            Ok(Msg::Release {
                index: i,
                generation: g,
            }) => assert_eq!((i, g), (index, generation)),
            other => panic!("expected RELEASE({index}, {generation}), got {other:?}"),
        }
    }
}

async fn expect_invalid<S: Subscriber>(sub: &mut S, what: &str) {
    match within(what, sub.recv()).await {
        Err(Error::InvalidReference(msg)) => eprintln!("{what}: {msg}"),
        other => panic!("{what}: expected InvalidReference, got {other:?}"),
    }
}

async fn forged_descriptors(mode: RecvMode) {
    let name = name("desc");
    let endpoint = Endpoint::parse(&format!("shm-pool://{name}")).expect("url");
    let mut sub = None;
    let mut fake = FakePublisher::serve(&name, async {
        let opts = SubscribeOptions::default().recv_mode(mode);
        sub = Some(
            ShmPoolTransport::new()
                .subscribe(&endpoint, &opts)
                .await
                .expect("subscribe"),
        );
    })
    .await;
    let mut sub = sub.expect("subscriber");
    let slot_size = fake.pool.slot_size();

    // A good frame in slot 0.
    fake.write(0, 1, 0, 5000);
    fake.claims.offer(0, 1);
    fake.send(fake.desc(0, 1, 5000), header(0, 5000)).await;
    let f0 = within("frame 0", sub.recv()).await.expect("a valid frame");
    assert_eq!(f0.seq, 0);
    assert!(pattern::check(0, &f0.payload));
    if mode == RecvMode::Owned {
        fake.expect_release(0, 1).await;
    }

    // Slot index out of range.
    fake.send(fake.desc(2, 1, 10), header(9, 10)).await;
    expect_invalid(&mut sub, "an out-of-range slot").await;
    // Length past the end of the slot.
    fake.write(1, 1, 1, 100);
    fake.claims.offer(1, 1);
    fake.send(
        fake.desc(1, 1, slot_size + 1),
        header(1, slot_size as usize + 1),
    )
    .await;
    expect_invalid(&mut sub, "a length past the slot").await;
    // A segment this subscriber never received.
    let mut d = fake.desc(1, 1, 100);
    d.segment ^= 0x5a5a;
    fake.send(d, header(1, 100)).await;
    expect_invalid(&mut sub, "an unknown segment").await;
    // A generation that was never offered (no claim written).
    fake.send(fake.desc(1, 7, 100), header(1, 100)).await;
    expect_invalid(&mut sub, "a generation never offered").await;
    // Offered, but the slot header holds another generation: the subscriber
    // claims, sees the mismatch, reads nothing and releases.
    fake.claims.offer(1, 2);
    fake.send(fake.desc(1, 2, 100), header(1, 100)).await;
    expect_invalid(&mut sub, "a generation the slot header does not hold").await;
    fake.expect_release(1, 2).await;
    // Offered at the header's generation, but another length.
    fake.write(1, 3, 1, 100);
    fake.claims.offer(1, 3);
    fake.send(fake.desc(1, 3, 200), header(1, 200)).await;
    expect_invalid(&mut sub, "a length the slot header does not hold").await;
    fake.expect_release(1, 3).await;
    // A valid reference with a garbage frame header.
    fake.write(1, 4, 1, 100);
    fake.claims.offer(1, 4);
    fake.send(
        fake.desc(1, 4, 100),
        Bytes::from_static(b"not a framewire header at all"),
    )
    .await;
    match within("a garbage header", sub.recv()).await {
        Err(Error::Protocol(_)) => {}
        other => panic!("expected a protocol error, got {other:?}"),
    }
    fake.expect_release(1, 4).await;
    // The same descriptor twice: the second is not offered any more.
    fake.write(1, 5, 1, 3000);
    fake.claims.offer(1, 5);
    fake.send(fake.desc(1, 5, 3000), header(1, 3000)).await;
    let f1 = within("frame 1", sub.recv())
        .await
        .expect("the subscriber keeps working");
    assert_eq!(f1.seq, 1);
    assert!(
        pattern::check(1, &f1.payload),
        "the right bytes, not a forged slot's"
    );
    fake.send(fake.desc(1, 5, 3000), header(1, 3000)).await;
    expect_invalid(&mut sub, "a replayed descriptor").await;
    if mode == RecvMode::Owned {
        fake.expect_release(1, 5).await;
    } else {
        // Views release on drop, each exactly once.
        drop(f0);
        fake.expect_release(0, 1).await;
        drop(f1);
        fake.expect_release(1, 5).await;
    }
    assert_eq!(sub.stats().frames_received, 2);
    drop(fake);
    match within("the end", sub.recv()).await {
        Err(Error::Disconnected(_)) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_descriptors_are_refused_in_view_mode() {
    forged_descriptors(RecvMode::View).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_descriptors_are_refused_in_owned_mode() {
    forged_descriptors(RecvMode::Owned).await;
}

/// A subscriber that speaks the protocol by hand, to send bad releases.
struct FakeSubscriber {
    stream: UnixStream,
    rx: RecvBuf,
    seg: SegmentMap,
    claims: ClaimTable,
}

impl FakeSubscriber {
    async fn connect(name: &str) -> FakeSubscriber {
        let stream = sys::connect(&socket_name(sys::euid(), name))
            .await
            .expect("connect");
        let mut rx = RecvBuf::new();
        let sub = Msg::Subscribe {
            version: wire::VERSION,
            prefix: String::new(),
        };
        wire::send(&stream, &sub, None, "SUBSCRIBE")
            .await
            .expect("SUBSCRIBE");
        let Ok(Msg::Hello(hello)) = rx.recv(&stream, "HELLO").await else {
            panic!("expected HELLO")
        };
        let seg = SegmentMap::open(rx.take_fd().expect("segment fd"), &hello).expect("map");
        let (claims, fd) = ClaimTable::create(hello.slots).expect("claims");
        let msg = Msg::Claims {
            len: hello.claims_len,
        };
        wire::send(&stream, &msg, Some(fd.as_fd()), "CLAIMS")
            .await
            .expect("CLAIMS");
        assert!(matches!(
            rx.recv(&stream, "READY").await,
            Ok(Msg::Ready { .. })
        ));
        FakeSubscriber {
            stream,
            rx,
            seg,
            claims,
        }
    }

    async fn next_desc(&mut self) -> Desc {
        match within("a DESC", self.rx.recv(&self.stream, "DESC")).await {
            Ok(Msg::Desc { desc, .. }) => desc,
            other => panic!("expected DESC, got {other:?}"),
        }
    }

    async fn release(&self, index: u32, generation: u64) {
        wire::send(
            &self.stream,
            &Msg::Release { index, generation },
            None,
            "RELEASE",
        )
        .await
        .expect("RELEASE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_releases_are_ignored_and_counted() {
    let name = name("release");
    let endpoint =
        Endpoint::parse(&format!("shm-pool://{name}?slots=2&slot_size=4KiB")).expect("url");
    let opts = PublishOptions::default().policy(Policy::Fail);
    let mut publ = ShmPoolTransport::new()
        .publish(&endpoint, &opts)
        .await
        .expect("publish");
    let mut fake = FakeSubscriber::connect(&name).await;
    publ.wait_for_subscribers(1, WAIT)
        .await
        .expect("subscriber");

    publ.send(Frame::new(pattern::make(0, 100)))
        .await
        .expect("send");
    let d = fake.next_desc().await;
    assert_eq!(fake.claims.take(d.index, d.generation, false), Take::Taken);
    assert_eq!(fake.seg.header(d.index), (d.generation, 100));
    assert_eq!(publ.free_slots(), 1);
    // A release for a slot it does not hold, and one at a wrong generation,
    // before the real one; then the real one again, and an out-of-range slot.
    fake.release(d.index ^ 1, d.generation).await;
    fake.release(d.index, d.generation + 1).await;
    fake.release(d.index, d.generation).await;
    fake.release(d.index, d.generation).await;
    fake.release(77, 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while publ.stale_releases() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} stale releases counted",
            publ.stale_releases()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(publ.stale_releases(), 4);
    assert_eq!(publ.free_slots(), 2, "freed once, never twice");
    // The pool still works: two frames in flight fill it, exactly.
    publ.send(Frame::new(pattern::make(1, 100)))
        .await
        .expect("send");
    publ.send(Frame::new(pattern::make(2, 100)))
        .await
        .expect("send");
    assert!(matches!(
        publ.send(Frame::new(pattern::make(3, 100))).await,
        Err(Error::Full { .. })
    ));
    let a = fake.next_desc().await;
    let b = fake.next_desc().await;
    assert_ne!(a.index, b.index);
    // A subscriber that goes away gives everything back at once.
    drop(fake);
    let deadline = tokio::time::Instant::now() + WAIT;
    while publ.free_slots() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slots not returned after EOF"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(publ.subscriber_count(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_claim_table_is_refused() {
    let name = name("claims");
    let endpoint =
        Endpoint::parse(&format!("shm-pool://{name}?slots=2&slot_size=4KiB")).expect("url");
    let publ = ShmPoolTransport::new()
        .publish(&endpoint, &PublishOptions::default())
        .await
        .expect("publish");
    let stream = sys::connect(&socket_name(sys::euid(), &name))
        .await
        .expect("connect");
    let mut rx = RecvBuf::new();
    let sub = Msg::Subscribe {
        version: wire::VERSION,
        prefix: String::new(),
    };
    wire::send(&stream, &sub, None, "SUBSCRIBE")
        .await
        .expect("SUBSCRIBE");
    let Ok(Msg::Hello(hello)) = rx.recv(&stream, "HELLO").await else {
        panic!("expected HELLO")
    };
    // An unsealed memfd could be truncated under the publisher: refused.
    let fd = sys::memfd("unsealed", hello.claims_len).expect("memfd");
    let msg = Msg::Claims {
        len: hello.claims_len,
    };
    wire::send(&stream, &msg, Some(fd.as_fd()), "CLAIMS")
        .await
        .expect("CLAIMS");
    match within("the answer", rx.recv(&stream, "READY")).await {
        Ok(Msg::Reject { reason }) => assert!(reason.contains("seal"), "{reason}"),
        other => panic!("expected REJECT, got {other:?}"),
    }
    assert_eq!(publ.subscriber_count(), Some(0));
}
