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
use crate::channel::Entry;
use crate::config::socket_name;
use crate::pool::{SegmentMap, SlotPool};
use crate::sys;
use crate::wire::{self, ClaimTable, Desc, FwdDesc, Msg, RecvBuf, Take};

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
    /// Entries published in the subscriber's descriptor ring.
    head: std::cell::Cell<u64>,
    /// Releases consumed from its release ring.
    rel_tail: u64,
    /// Descriptors go over the socket (behind markers) instead of inline.
    via_socket: bool,
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
                claims_len: wire::claims_len(wire::claim_entries(g.slots)),
            };
            let ro = sys::reopen_read_only(pool.fd()).expect("read-only fd");
            let (_anchor, anchor_w) = sys::anchor_pipe().expect("anchor pipe");
            wire::send_fds(
                &stream,
                &Msg::Hello(hello),
                &[ro.as_fd(), anchor_w.as_fd()],
                "HELLO",
            )
            .await
            .expect("HELLO");
            assert!(matches!(
                rx.recv(&stream, "CLAIMS").await,
                Ok(Msg::Claims { .. })
            ));
            let fd = rx.take_fd().expect("claims fd");
            let claims = ClaimTable::open(&fd, wire::claim_entries(g.slots)).expect("claim table");
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
            head: std::cell::Cell::new(0),
            rel_tail: 0,
            via_socket: false,
        }
    }

    /// Publishes `entry` in the subscriber's descriptor ring (a marker for
    /// what goes over the socket next).
    fn push(&self, entry: &Entry) {
        let mut head = self.head.get();
        assert!(
            self.claims.desc_space(head),
            "the subscriber's ring is full"
        );
        self.claims.push_desc(&mut head, entry);
        self.head.set(head);
    }

    /// Announces the next socket message in the ring.
    fn mark(&self) {
        self.push(&Entry::Socket);
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
        if !self.via_socket && header.len() <= wire::INLINE_HEADER {
            return self.push(&Entry::Desc(desc, header));
        }
        self.mark();
        wire::send(&self.stream, &Msg::Desc { desc, header }, None, "DESC")
            .await
            .expect("DESC");
    }

    /// A release of a pool slot comes through the release ring; one of a
    /// forward slot over the socket.
    async fn expect_release(&mut self, index: u32, generation: u64) {
        if index < self.pool.geometry().slots {
            let mut got = Vec::with_capacity(1);
            let deadline = std::time::Instant::now() + WAIT;
            while got.is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no release in the ring"
                );
                self.claims
                    .drain_releases(&mut self.rel_tail, &mut got)
                    .expect("a sound release ring");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(got[0], (u64::from(index), generation));
            return;
        }
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
        Err(Error::InvalidReference { message: msg, .. }) => eprintln!("{what}: {msg}"),
        other => panic!("{what}: expected InvalidReference, got {other:?}"),
    }
}

async fn forged_descriptors(mode: RecvMode, via_socket: bool) {
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
    fake.via_socket = via_socket;
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
        Err(Error::Protocol { .. }) => {}
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
        Err(Error::Disconnected { .. }) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_descriptors_are_refused_in_view_mode() {
    forged_descriptors(RecvMode::View, false).await;
    forged_descriptors(RecvMode::View, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_descriptors_are_refused_in_owned_mode() {
    forged_descriptors(RecvMode::Owned, false).await;
    forged_descriptors(RecvMode::Owned, true).await;
}

/// A subscriber that speaks the protocol by hand, to send bad releases.
struct FakeSubscriber {
    stream: UnixStream,
    rx: RecvBuf,
    seg: SegmentMap,
    claims: ClaimTable,
    /// The anchor the publisher sent with HELLO (the mapping holds it too).
    anchor: std::sync::Arc<std::os::fd::OwnedFd>,
    /// Entries consumed from its descriptor ring.
    tail: u64,
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
        let fd = rx.take_fd().expect("segment fd");
        let anchor = rx.take_fd().expect("anchor");
        assert!(sys::is_pipe_write_end(anchor.as_fd()).expect("fstat"));
        let anchor = std::sync::Arc::new(anchor);
        let seg = SegmentMap::open(fd, &hello, vec![anchor.clone()]).expect("map");
        let (claims, fd) = ClaimTable::create(wire::claim_entries(hello.slots)).expect("claims");
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
            anchor,
            tail: 0,
        }
    }

    /// The next thing the publisher sent, in the ring's order: a ring
    /// entry, or the socket message a marker announces (WAKEs skipped).
    async fn next(&mut self, what: &str) -> Result<Msg, Error> {
        within(what, async {
            loop {
                match self.claims.peek_desc(self.tail).expect("a sound ring") {
                    Some(Entry::Desc(desc, header)) => {
                        self.claims.consume_desc(&mut self.tail);
                        return Ok(Msg::Desc { desc, header });
                    }
                    Some(Entry::Fwd(desc, header)) => {
                        self.claims.consume_desc(&mut self.tail);
                        return Ok(Msg::Fwd { desc, header });
                    }
                    Some(Entry::Spill) => panic!("{what}: the ring spilled"),
                    Some(Entry::Socket) => loop {
                        match self.rx.recv(&self.stream, what).await? {
                            Msg::Wake => {}
                            m => {
                                self.claims.consume_desc(&mut self.tail);
                                return Ok(m);
                            }
                        }
                    },
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        })
        .await
    }

    async fn next_desc(&mut self) -> Desc {
        match self.next("a DESC").await {
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

/// A real publisher (2 slots of 4 KiB, `fail`) and a fake subscriber of it.
async fn with_fake_subscriber(test: &str) -> (Endpoint, crate::ShmPoolPublisher, FakeSubscriber) {
    let name = name(test);
    let endpoint =
        Endpoint::parse(&format!("shm-pool://{name}?slots=2&slot_size=4KiB")).expect("url");
    let opts = PublishOptions::default().policy(Policy::Fail);
    let mut publ = ShmPoolTransport::new()
        .publish(&endpoint, &opts)
        .await
        .expect("publish");
    let fake = FakeSubscriber::connect(&name).await;
    publ.wait_for_subscribers(1, WAIT)
        .await
        .expect("subscriber");
    (endpoint, publ, fake)
}

/// A subscriber whose socket closes while a copy of its anchor lives on (as
/// in a process it forwarded to): a slot it took without forwarding it
/// comes back at once, the slot it took and said it forwarded (FORWARDED)
/// stays reserved until the last copy of the anchor is closed. Bytes written
/// into the anchor change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_slots_wait_for_the_anchor() {
    let (endpoint, mut publ, mut fake) = with_fake_subscriber("anchor").await;
    for seq in 0..2 {
        publ.send(Frame::new(pattern::make(seq, 100)))
            .await
            .expect("send");
    }
    let taken = fake.next_desc().await;
    let offered = fake.next_desc().await;
    for d in [&taken, &offered] {
        assert_eq!(fake.claims.take(d.index, d.generation, false), Take::Taken);
    }
    // Only the first is forwarded; a FORWARDED at a wrong generation is
    // ignored.
    for (index, generation) in [
        (offered.index, offered.generation + 1),
        (taken.index, taken.generation),
    ] {
        wire::send(
            &fake.stream,
            &Msg::Forwarded { index, generation },
            None,
            "FORWARDED",
        )
        .await
        .expect("FORWARDED");
    }
    let anchor = fake.anchor.clone();
    // Fill the pipe: the publisher must not be kept busy reading it.
    let junk = [0xa5u8; 4096];
    while rustix::io::write(&*anchor, &junk).is_ok() {}
    drop(fake);
    until("the subscriber gone", || publ.subscriber_count() == Some(0)).await;
    until("the slot taken and not forwarded back", || {
        publ.free_slots() == 1
    })
    .await;
    for _ in 0..30 {
        assert_eq!(publ.free_slots(), 1, "the taken slot stays reserved");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_ne!(taken.index, offered.index);
    // The publisher goes on: a new subscriber gets frames in the free slot.
    let mut sub = ShmPoolTransport::new()
        .subscribe(&endpoint, &SubscribeOptions::default())
        .await
        .expect("subscribe");
    publ.wait_for_subscribers(1, WAIT)
        .await
        .expect("the new subscriber");
    for seq in 2..6 {
        publ.send(Frame::new(pattern::make(seq, 100)))
            .await
            .expect("send into the free slot");
        let f = within("a frame", sub.recv()).await.expect("recv");
        assert_eq!(f.seq, seq);
        until("the slot back", || publ.free_slots() == 1).await;
    }
    drop(anchor);
    until("the taken slot back with the anchor", || {
        publ.free_slots() == 2
    })
    .await;
    assert_eq!(publ.stale_releases(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_releases_are_ignored_and_counted() {
    let (_, mut publ, mut fake) = with_fake_subscriber("release").await;

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

/// A subscriber writes what it likes into its channel: releases of slots
/// it does not hold, at wrong generations, twice, out of range; a release
/// head far past the tail; a tail ahead of what was published; a parked
/// word always set. The publisher frees each slot once, counts the rest,
/// overwrites nothing it has not seen consumed, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_channel_is_ignored_and_counted() {
    let (_, mut publ, mut fake) = with_fake_subscriber("channel").await;
    publ.send(Frame::new(pattern::make(0, 100)))
        .await
        .expect("send");
    let d = fake.next_desc().await;
    assert_eq!(fake.claims.take(d.index, d.generation, false), Take::Taken);
    assert_eq!(publ.free_slots(), 1);
    let mut head = 0u64;
    for (index, generation) in [
        (d.index ^ 1, d.generation),
        (d.index, d.generation + 1),
        (d.index, d.generation),
        (d.index, d.generation),
        (77, 1),
        (u32::MAX, u64::MAX),
    ] {
        assert!(fake.claims.push_release(&mut head, index, generation));
    }
    assert_eq!(publ.free_slots(), 2, "freed once, never twice");
    assert_eq!(publ.stale_releases(), 5);

    // A release head far past the tail: skipped and counted, nothing freed.
    publ.send(Frame::new(pattern::make(1, 100)))
        .await
        .expect("send");
    let d = fake.next_desc().await;
    assert_eq!(fake.claims.take(d.index, d.generation, false), Take::Taken);
    head += 1 << 40;
    fake.claims.poke(ClaimTable::REL_HEAD, head);
    assert_eq!(publ.free_slots(), 1);
    assert_eq!(publ.stale_releases(), 6);
    // Releases after it count again.
    assert!(fake.claims.push_release(&mut head, d.index, d.generation));
    assert_eq!(publ.free_slots(), 2);

    // A descriptor tail ahead of the head: no room, nothing written into
    // the ring; the frame waits in the publisher's bounded queue. A parked
    // word always set costs at most a WAKE per publish, never a hang.
    fake.claims.poke(ClaimTable::PARKED, 1);
    fake.claims.poke(ClaimTable::DESC_TAIL, fake.tail + 5);
    within(
        "a send past a broken tail",
        publ.send(Frame::new(pattern::make(2, 100))),
    )
    .await
    .expect("send");
    assert_eq!(publ.queued_messages(), 1, "queued, not written over");
    assert!(
        fake.claims.peek_desc(fake.tail).expect("ring").is_none(),
        "nothing published"
    );
    // Its bad tail is fixed and it says so (WAKE): the frame arrives.
    fake.claims.poke(ClaimTable::DESC_TAIL, fake.tail);
    fake.claims.poke(ClaimTable::KICK, 0);
    wire::send(&fake.stream, &Msg::Wake, None, "WAKE")
        .await
        .expect("WAKE");
    let d = fake.next_desc().await;
    assert_eq!(fake.claims.take(d.index, d.generation, false), Take::Taken);
    // Gone: everything comes back.
    drop(fake);
    until("slots back after EOF", || publ.free_slots() == 2).await;
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
    let fd = unsealed_memfd("unsealed", hello.claims_len);
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

impl FakePublisher {
    /// Passes `seg`'s read-only fd as forwarded segment `index`.
    async fn send_segment(&self, index: u32, seg: &SlotPool) {
        let ro = sys::reopen_read_only(seg.fd()).expect("read-only fd");
        let msg = Msg::Segment {
            index,
            inode: seg.segment_id(),
            len: seg.geometry().len,
            anchors: 0,
        };
        self.mark();
        wire::send(&self.stream, &msg, Some(ro.as_fd()), "SEGMENT")
            .await
            .expect("SEGMENT");
    }

    async fn send_fwd(&self, desc: FwdDesc, header: Bytes) {
        if !self.via_socket && header.len() <= wire::INLINE_HEADER {
            return self.push(&Entry::Fwd(desc, header));
        }
        self.mark();
        wire::send(&self.stream, &Msg::Fwd { desc, header }, None, "FWD")
            .await
            .expect("FWD");
    }
}

fn fwd_desc(segment: u32, index: u32, generation: u64, offset: u64, len: u64) -> FwdDesc {
    FwdDesc {
        segment,
        index,
        generation,
        offset,
        len,
        missed: 0,
    }
}

/// A fake forwarding publisher: forged FWD descriptors and SEGMENT messages
/// are refused with nothing read; a claim that was really offered is given
/// back; a good one reads the right bytes of the forwarded segment.
async fn forged_forwards(mode: RecvMode, via_socket: bool) {
    let name = name("fwd");
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
    fake.via_socket = via_socket;
    // The fake's pool has 2 slots: claim indices 2 and 3 are its forward slots.
    let slot_size = fake.pool.slot_size();
    let upstream = SlotPool::create(&format!("{name}-up"), 2, 8192).expect("upstream pool");
    let ug = upstream.geometry();
    let slot1 = ug.data_offset + ug.stride;
    // SAFETY: this test owns the upstream pool; nobody reads slot 1 before
    // the descriptor that follows this write.
    unsafe { upstream.slot_mut(1, 3000) }.copy_from_slice(&pattern::make(7, 3000));

    // A segment never sent; the claim was offered, so it comes back.
    fake.claims.offer(2, 1);
    fake.send_fwd(fwd_desc(0, 2, 1, slot1, 3000), header(7, 3000))
        .await;
    expect_invalid(&mut sub, "an unknown forwarded segment").await;
    fake.expect_release(2, 1).await;

    fake.send_segment(0, &upstream).await;
    // Past the end of the segment (offered: released, nothing read).
    fake.claims.offer(2, 2);
    fake.send_fwd(fwd_desc(0, 2, 2, ug.len - 10, 100), header(7, 100))
        .await;
    expect_invalid(&mut sub, "a range past the segment's end").await;
    fake.expect_release(2, 2).await;
    // Offset + length overflowing.
    fake.send_fwd(fwd_desc(0, 2, 3, u64::MAX - 5, 100), header(7, 100))
        .await;
    expect_invalid(&mut sub, "an overflowing range").await;
    // A claim index that is a pool slot, and one past the forward slots.
    fake.send_fwd(fwd_desc(0, 1, 1, slot1, 3000), header(7, 3000))
        .await;
    expect_invalid(&mut sub, "a pool slot's claim index").await;
    fake.send_fwd(fwd_desc(0, 4, 1, slot1, 3000), header(7, 3000))
        .await;
    expect_invalid(&mut sub, "a claim index past the forward slots").await;
    // Longer than the publisher's slot_size.
    fake.send_fwd(
        fwd_desc(0, 3, 1, 0, slot_size + 1),
        header(7, slot_size as usize + 1),
    )
    .await;
    expect_invalid(&mut sub, "a forwarded length over slot_size").await;
    // Never offered.
    fake.send_fwd(fwd_desc(0, 3, 9, slot1, 3000), header(7, 3000))
        .await;
    expect_invalid(&mut sub, "a forward claim never offered").await;

    // A good one.
    fake.claims.offer(3, 1);
    fake.send_fwd(fwd_desc(0, 3, 1, slot1, 3000), header(7, 3000))
        .await;
    let f = within("the forwarded frame", sub.recv())
        .await
        .expect("a valid forwarded frame");
    assert_eq!((f.seq, f.payload.len()), (7, 3000));
    assert!(pattern::check(7, &f.payload), "the forwarded slot's bytes");
    if mode == RecvMode::Owned {
        fake.expect_release(3, 1).await;
    }
    // Replayed: taken already.
    fake.send_fwd(fwd_desc(0, 3, 1, slot1, 3000), header(7, 3000))
        .await;
    expect_invalid(&mut sub, "a replayed forward descriptor").await;

    // A second SEGMENT on an index in use, one out of range, an unsealed
    // memfd: each refused, the subscriber goes on.
    fake.send_segment(0, &upstream).await;
    match within("a duplicate SEGMENT", sub.recv()).await {
        Err(Error::Protocol { message: m, .. }) => assert!(m.contains("already in use"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    fake.send_segment(wire::MAX_FORWARD_SEGMENTS, &upstream)
        .await;
    match within("an out-of-range SEGMENT", sub.recv()).await {
        Err(Error::Protocol { message: m, .. }) => assert!(m.contains("out of range"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let unsealed = unsealed_memfd("unsealed", 8192);
    let msg = Msg::Segment {
        index: 1,
        inode: sys::inode(unsealed.as_fd()).expect("inode"),
        len: 8192,
        anchors: 0,
    };
    fake.mark();
    wire::send(&fake.stream, &msg, Some(unsealed.as_fd()), "SEGMENT")
        .await
        .expect("SEGMENT");
    match within("an unsealed SEGMENT", sub.recv()).await {
        Err(Error::Io { .. }) => {}
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // Anchors: more than MAX_ANCHORS, or descriptors that are not a pipe's
    // write end (a memfd, a pipe's read end): refused, nothing mapped.
    let ro = sys::reopen_read_only(upstream.fd()).expect("read-only fd");
    let segment = |anchors| Msg::Segment {
        index: 1,
        inode: upstream.segment_id(),
        len: upstream.geometry().len,
        anchors,
    };
    fake.mark();
    wire::send(
        &fake.stream,
        &segment(wire::MAX_ANCHORS + 1),
        Some(ro.as_fd()),
        "SEGMENT",
    )
    .await
    .expect("SEGMENT");
    match within("a SEGMENT with too many anchors", sub.recv()).await {
        Err(Error::Protocol { message: m, .. }) => assert!(m.contains("anchors"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let (pipe_r, _pipe_w) = sys::anchor_pipe().expect("pipe");
    for (what, bad) in [
        ("a memfd", unsealed.as_fd()),
        ("a read end", pipe_r.as_fd()),
    ] {
        fake.mark();
        wire::send_fds(&fake.stream, &segment(1), &[ro.as_fd(), bad], "SEGMENT")
            .await
            .expect("SEGMENT");
        match within("a SEGMENT with a bad anchor", sub.recv()).await {
            Err(Error::Protocol { message: m, .. }) => {
                assert!(m.contains("pipe's write end"), "{what}: {m}")
            }
            other => panic!("{what}: expected a protocol error, got {other:?}"),
        }
    }
    fake.send_fwd(fwd_desc(1, 2, 5, 0, 100), header(7, 100))
        .await;
    expect_invalid(&mut sub, "a segment that was refused").await;

    // FORGET: the index is unknown from then on; views keep their mapping.
    fake.mark();
    wire::send(&fake.stream, &Msg::Forget { index: 0 }, None, "FORGET")
        .await
        .expect("FORGET");
    fake.send_fwd(fwd_desc(0, 2, 6, slot1, 3000), header(7, 3000))
        .await;
    expect_invalid(&mut sub, "a forgotten segment").await;
    assert!(pattern::check(7, &f.payload), "a view outlives FORGET");
    if mode == RecvMode::View {
        drop(f);
        fake.expect_release(3, 1).await;
    }
    assert_eq!(sub.stats().frames_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwards_are_refused_in_view_mode() {
    forged_forwards(RecvMode::View, false).await;
    forged_forwards(RecvMode::View, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwards_are_refused_in_owned_mode() {
    forged_forwards(RecvMode::Owned, false).await;
    forged_forwards(RecvMode::Owned, true).await;
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What a real forwarding publisher puts on the wire, seen by a hand-made
/// subscriber: the segment's fd (read-only, sealed, the announced inode) once,
/// then FWD descriptors into it; FORGET once the upstream mapping is gone; and
/// the subscriber's end of stream gives the upstream slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_on_the_wire() {
    let t = ShmPoolTransport::new();
    let views = SubscribeOptions::default().recv_mode(RecvMode::View);
    let pool_url = |n: &str| Endpoint::parse(&format!("shm-pool://{n}?slots=2&slot_size=8KiB"));
    let (a_name, b_name) = (name("wire-a"), name("wire-b"));
    let mut a = t
        .publish(&pool_url(&a_name).expect("url"), &PublishOptions::default())
        .await
        .expect("publish A");
    let mut sub_a = t.subscribe(a.endpoint(), &views).await.expect("sub A");
    let mut b = t
        .publish(&pool_url(&b_name).expect("url"), &PublishOptions::default())
        .await
        .expect("publish B");
    let mut fake = FakeSubscriber::connect(&b_name).await;
    a.wait_for_subscribers(1, WAIT)
        .await
        .expect("A's subscriber");
    b.wait_for_subscribers(1, WAIT)
        .await
        .expect("B's subscriber");

    a.send(Frame::new(pattern::make(0, 5000)))
        .await
        .expect("send A");
    let fa = within("A's frame", sub_a.recv()).await.expect("recv A");
    assert_eq!(a.free_slots(), 1);
    b.send(fa).await.expect("forward");
    assert_eq!((b.forwarded(), b.free_slots()), (1, 2), "no slot of B used");

    let (index, inode, len) = match fake.next("SEGMENT").await {
        Ok(Msg::Segment {
            index,
            inode,
            len,
            anchors,
        }) => {
            assert_eq!(anchors, 1, "B's anchor at A");
            (index, inode, len)
        }
        other => panic!("expected SEGMENT, got {other:?}"),
    };
    let fd = fake.rx.take_fd().expect("the segment's fd");
    let anchor = fake.rx.take_fd().expect("the anchor");
    assert!(sys::is_pipe_write_end(anchor.as_fd()).expect("fstat"));
    assert!(sys::is_read_only(fd.as_fd()).expect("fcntl"), "read-only");
    sys::check_sealed(fd.as_fd(), len).expect("sealed");
    assert_eq!(sys::inode(fd.as_fd()).expect("inode"), inode);
    let seg = crate::pool::ForeignMap::open(fd, inode, len, Vec::new(), u64::MAX).expect("map it");
    let d = match fake.next("FWD").await {
        Ok(Msg::Fwd { desc, .. }) => desc,
        other => panic!("expected FWD, got {other:?}"),
    };
    assert_eq!((d.segment, d.len), (index, 5000));
    assert!(
        (2..4).contains(&d.index),
        "a forward claim index: {}",
        d.index
    );
    assert_eq!(fake.claims.take(d.index, d.generation, false), Take::Taken);
    // SAFETY: the claim is taken, so the frame (and its upstream slot) stays
    // reserved until released; the range was announced inside the segment.
    let bytes = unsafe { std::slice::from_raw_parts(seg.ptr(d.offset), 5000) };
    assert!(pattern::check(0, bytes), "the upstream slot's bytes");
    // Released: B drops its hold, A gets its slot back.
    fake.release(d.index, d.generation).await;
    until("A's slot back after the release", || a.free_slots() == 2).await;
    assert_eq!(b.free_forward_slots(), 2);

    // The upstream subscriber goes (no view left): its mapping leaves the
    // registry; B forgets the segment when it next forwards, and reuses
    // the index for the new upstream's segment.
    drop(sub_a);
    let a2_name = name("wire-a2");
    let mut a2 = t
        .publish(
            &pool_url(&a2_name).expect("url"),
            &PublishOptions::default(),
        )
        .await
        .expect("publish A2");
    let mut sub_a2 = t.subscribe(a2.endpoint(), &views).await.expect("sub A2");
    a2.wait_for_subscribers(1, WAIT)
        .await
        .expect("A2's subscriber");
    a2.send(Frame::new(pattern::make(1, 6000)))
        .await
        .expect("send A2");
    let fa2 = within("A2's frame", sub_a2.recv()).await.expect("recv A2");
    b.send(fa2).await.expect("forward again");
    match fake.next("FORGET").await {
        Ok(Msg::Forget { index: i }) => assert_eq!(i, index),
        other => panic!("expected FORGET, got {other:?}"),
    }
    match fake.next("SEGMENT").await {
        Ok(Msg::Segment {
            index: i, inode: n, ..
        }) => {
            assert_eq!(i, index, "the index is reused");
            assert_ne!(n, inode, "for the new segment");
        }
        other => panic!("expected SEGMENT, got {other:?}"),
    }
    assert!(fake.rx.take_fd().is_some(), "the segment");
    assert!(fake.rx.take_fd().is_some(), "its anchor");
    let d = fake.next_fwd().await;
    assert_eq!(fake.claims.take(d.index, d.generation, false), Take::Taken);
    assert_eq!(a2.free_slots(), 1);
    // The subscriber vanishes holding it: end of stream frees it all.
    drop(fake);
    until("A2's slot back after EOF", || a2.free_slots() == 2).await;
    until("B's forward slot back", || b.free_forward_slots() == 2).await;
    assert_eq!(b.stale_releases(), 0);
}

impl FakeSubscriber {
    async fn next_fwd(&mut self) -> FwdDesc {
        match self.next("a FWD").await {
            Ok(Msg::Fwd { desc, .. }) => desc,
            other => panic!("expected FWD, got {other:?}"),
        }
    }
}

/// Reads (and discards) from `stream` until the peer closes it; panics if
/// that takes longer than `limit`. Returns the messages seen before.
async fn closed_within(stream: &UnixStream, limit: Duration, what: &str) -> Vec<Msg> {
    let mut rx = RecvBuf::new();
    let mut seen = Vec::new();
    let read = async {
        loop {
            match rx.recv(stream, what).await {
                Ok(m) => seen.push(m),
                Err(_) => return,
            }
        }
    };
    tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
        panic!("{what}: the publisher kept the connection open past {limit:?}")
    });
    seen
}

/// A subscriber that announces a large first message is dropped at once:
/// during the handshake the publisher accepts only small messages and
/// reserves nothing for a larger announced length (it used to reserve up to
/// `MAX_MESSAGE`, 2 MiB, and wait for the bytes until the handshake timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_handshake_message_is_refused_at_once() {
    let name = name("bighello");
    let endpoint =
        Endpoint::parse(&format!("shm-pool://{name}?slots=2&slot_size=4KiB")).expect("url");
    let publ = ShmPoolTransport::new()
        .publish(&endpoint, &PublishOptions::default())
        .await
        .expect("publish");
    let stream = sys::connect(&socket_name(sys::euid(), &name))
        .await
        .expect("connect");
    // A SUBSCRIBE announcing 1 MiB, of which only the kind byte is sent.
    let mut head = (1u32 << 20).to_le_bytes().to_vec();
    head.push(0x01);
    sys::send_all(&stream, &head, &[]).await.expect("send");
    let seen = closed_within(&stream, Duration::from_secs(2), "a huge SUBSCRIBE").await;
    assert!(seen.is_empty(), "{seen:?}");
    const { assert!(wire::MAX_HANDSHAKE_MESSAGE < 4 << 10) };
    assert_eq!(publ.subscriber_count(), Some(0));
}

/// At most `MAX_PENDING_HANDSHAKES` handshakes run at once: connections past
/// that are refused at once with a clear reason (they used to be accepted
/// without limit, each with its task and buffers); a handshake that never
/// completes ends at `HANDSHAKE_TIMEOUT`, and then subscribers get in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_are_bounded_and_time_out() {
    use crate::publisher::{HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES};
    let name = name("pending");
    let endpoint =
        Endpoint::parse(&format!("shm-pool://{name}?slots=2&slot_size=4KiB")).expect("url");
    let mut publ = ShmPoolTransport::new()
        .publish(&endpoint, &PublishOptions::default())
        .await
        .expect("publish");
    let sock = socket_name(sys::euid(), &name);
    let start = std::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..MAX_PENDING_HANDSHAKES {
        idle.push(sys::connect(&sock).await.expect("connect"));
    }
    // Accepted after all of those (the backlog is served in order): refused.
    let refused = within(
        "a refused subscriber",
        ShmPoolTransport::new().subscribe(&endpoint, &SubscribeOptions::default()),
    )
    .await;
    match refused {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("handshakes are already in progress"), "{msg}");
        }
        Ok(_) => panic!("a subscriber got in past {MAX_PENDING_HANDSHAKES} pending handshakes"),
    }
    // The idle ones are dropped when their handshake times out.
    let limit = HANDSHAKE_TIMEOUT + WAIT;
    for s in &idle {
        closed_within(
            s,
            limit.saturating_sub(start.elapsed()),
            "an idle handshake",
        )
        .await;
    }
    assert!(start.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(500));
    drop(idle);
    let mut sub = within(
        "a subscriber after the timeouts",
        ShmPoolTransport::new().subscribe(&endpoint, &SubscribeOptions::default()),
    )
    .await
    .expect("subscribe once the pending handshakes timed out");
    publ.wait_for_subscribers(1, WAIT)
        .await
        .expect("subscriber");
    publ.send(Frame::new(Bytes::from_static(b"hello")))
        .await
        .expect("send");
    let f = within("a frame", sub.recv()).await.expect("frame");
    assert_eq!(&f.payload[..], b"hello");
}

/// Plays a publisher's handshake that hands out `segment` as its pool, with
/// the geometry of 2 slots of `slot_size`; returns what the real
/// subscriber's `subscribe` gave.
async fn subscribe_to_segment(
    test: &str,
    segment: std::os::fd::OwnedFd,
    slot_size: u64,
) -> transport_core::Result<crate::ShmPoolSubscriber> {
    let name = name(test);
    let endpoint = Endpoint::parse(&format!("shm-pool://{name}")).expect("url");
    let listener = sys::listen(&socket_name(sys::euid(), &name))
        .await
        .expect("listen");
    let g = crate::pool::Geometry::new(2, slot_size).expect("geometry");
    let hello = wire::Hello {
        version: wire::VERSION,
        flags: 0,
        segment: sys::inode(segment.as_fd()).expect("inode"),
        slots: g.slots,
        slot_size: g.slot_size,
        stride: g.stride,
        data_offset: g.data_offset,
        segment_len: g.len,
        claims_len: wire::claims_len(wire::claim_entries(g.slots)),
    };
    let serve = async {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut rx = RecvBuf::new();
        assert!(matches!(
            rx.recv(&stream, "SUBSCRIBE").await,
            Ok(Msg::Subscribe { .. })
        ));
        let (_anchor, anchor_w) = sys::anchor_pipe().expect("anchor pipe");
        wire::send_fds(
            &stream,
            &Msg::Hello(hello),
            &[segment.as_fd(), anchor_w.as_fd()],
            "HELLO",
        )
        .await
        .expect("HELLO");
        // The subscriber goes on (CLAIMS) if it accepted the segment.
        if let Ok(Msg::Claims { .. }) = rx.recv(&stream, "CLAIMS").await {
            let _ = wire::send(&stream, &Msg::Ready { id: 0 }, None, "READY").await;
        }
        stream
    };
    let (shm, opts) = (ShmPoolTransport::new(), SubscribeOptions::default());
    let subscribe = shm.subscribe(&endpoint, &opts);
    let (_stream, r) = within("the handshake", async { tokio::join!(serve, subscribe) }).await;
    r
}

/// A hugetlb memfd (whose pages SIGBUS when the huge-page pool runs out) is
/// refused before it is mapped, with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hugetlb_segment_is_refused() {
    use rustix::fs::MemfdFlags;
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB;
    let fd = match rustix::fs::memfd_create("forge-hugetlb", flags) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("skipped: this kernel makes no hugetlb memfd ({e})");
            return;
        }
    };
    rustix::fs::ftruncate(&fd, 2 << 20).expect("ftruncate to one huge page");
    use rustix::fs::SealFlags;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .expect("seal");
    let err = subscribe_to_segment("hugetlb", fd, 8192)
        .await
        .expect_err("a hugetlb segment");
    let msg = err.to_string();
    assert!(msg.contains("hugetlbfs"), "{msg}");
}

/// A segment whose pages were never allocated (so pre-faulting it would
/// allocate the whole announced size in the subscriber) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_segment_is_refused() {
    let g = crate::pool::Geometry::new(2, 4 << 20).expect("geometry");
    let fd = sys::memfd_sealed("forge-sparse", g.len).expect("memfd");
    // A correct control header (the first page), and nothing else written.
    rustix::io::pwrite(&fd, &g.header_bytes(), 0).expect("write the header");
    sys::seal_seals(fd.as_fd()).expect("seal");
    let err = subscribe_to_segment("sparse", fd, 4 << 20)
        .await
        .expect_err("a sparse segment");
    let msg = err.to_string();
    assert!(msg.contains("unallocated pages"), "{msg}");
}

/// A memfd of `len` bytes without a single seal (what a hostile or buggy
/// peer may pass: it could be truncated under a mapping).
fn unsealed_memfd(name: &str, len: u64) -> std::os::fd::OwnedFd {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd");
    rustix::fs::ftruncate(&fd, len).expect("ftruncate");
    fd
}
