//! Hostile peers, bad options and edge cases of loans: each gets a clear
//! error on the connection or call concerned, and the publisher keeps
//! serving everyone else.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use common::{T, name, within};
use transport_core::{
    Endpoint, Error, Frame, Loan, Policy, PublishOptions, Publisher, Subscriber, Transport, pattern,
};
use transport_shm_ring::{ShmRingPublisher, ShmRingSubscriber, ShmRingTransport, sys};

fn endpoint(url: &str) -> Endpoint {
    Endpoint::parse(url).expect("valid endpoint")
}

async fn pair(params: &str, policy: Policy) -> (ShmRingPublisher, ShmRingSubscriber, String) {
    let n = name("faults");
    let url = format!("shm-ring://{n}{params}");
    let mut p = within(
        "publish",
        ShmRingTransport.publish(&endpoint(&url), &PublishOptions::default().policy(policy)),
    )
    .await
    .expect("publish");
    let s = within(
        "subscribe",
        ShmRingTransport.subscribe(p.endpoint(), &Default::default()),
    )
    .await
    .expect("subscribe");
    within("subscriber", p.wait_for_subscribers(1, T))
        .await
        .expect("subscriber");
    (p, s, n)
}

/// The socket name a publisher of `name` listens on (as the crate builds it).
fn socket_name(name: &str) -> String {
    format!("framewire/{}/shm-ring/{name}", sys::my_uid())
}

async fn send_and_check(p: &mut ShmRingPublisher, s: &mut ShmRingSubscriber, n: u64, size: usize) {
    let start = p.stats().frames_sent;
    for i in start..start + n {
        within("send", p.send(Frame::new(pattern::make(i, size))))
            .await
            .expect("send");
        let f = within("recv", s.recv()).await.expect("recv");
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
}

#[tokio::test]
async fn bad_options_are_clear_errors() {
    let caps = |u: &str| ShmRingTransport.capabilities(&endpoint(u));
    let e = caps("shm-ring://x?slots=4").unwrap_err().to_string();
    assert!(
        e.contains("accepted") && e.contains("capacity") && e.contains("max_records"),
        "{e}"
    );
    assert!(
        caps("shm-ring://x?capacity=lots")
            .unwrap_err()
            .to_string()
            .contains("capacity")
    );
    assert!(
        caps("shm-ring://x?max_records=0")
            .unwrap_err()
            .to_string()
            .contains("max_records")
    );
    assert!(
        caps("shm-ring://x?spin=often")
            .unwrap_err()
            .to_string()
            .contains("spin")
    );
    assert!(caps("shm-ring://a/b").is_err(), "names are plain");
    let e = ShmRingTransport
        .subscribe(
            &endpoint(&format!("shm-ring://{}", name("nobody"))),
            &Default::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a publisher running"), "{e}");
}

#[tokio::test]
async fn one_publisher_per_name_and_the_name_is_freed_with_it() {
    let url = format!("shm-ring://{}?capacity=1MiB", name("owner"));
    let p = ShmRingTransport
        .publish(&endpoint(&url), &Default::default())
        .await
        .expect("publish");
    let e = ShmRingTransport
        .publish(&endpoint(&url), &Default::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another publisher"), "{e}");
    drop(p);
    let again = ShmRingTransport
        .publish(&endpoint(&url), &Default::default())
        .await;
    assert!(again.is_ok(), "{:?}", again.err());
}

#[tokio::test]
async fn oversize_frames_name_the_capacity() {
    let (mut p, mut s, _) = pair("?capacity=64KiB", Policy::Block).await;
    let max = (64 << 10) - 128;
    // The largest payload fits exactly...
    within("send", p.send(Frame::new(pattern::make(0, max))))
        .await
        .expect("largest payload");
    assert!(pattern::check(
        0,
        &within("recv", s.recv()).await.expect("recv").payload
    ));
    // ...but not with a topic that makes the envelope larger.
    let e = p
        .send(Frame::new(pattern::make(1, max)).with_metadata(vec![0u8; 500]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::PayloadTooLarge {
                option: "capacity",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("raise `capacity`"), "{e}");
    assert!(matches!(
        p.loan(max + 1).await,
        Err(Error::PayloadTooLarge { .. })
    ));
    send_and_check(&mut p, &mut s, 2, 1000).await;
}

#[tokio::test]
async fn max_records_bounds_the_queue_and_names_itself_when_full() {
    let (mut p, mut s, _) = pair("?capacity=4MiB&max_records=3", Policy::Fail).await;
    for i in 0..3 {
        p.send(Frame::new(pattern::make(i, 100)))
            .await
            .expect("room for three");
        assert!(p.stats().queued <= 3);
    }
    assert_eq!(p.stats().queued, 3);
    match p.send(Frame::new(pattern::make(3, 100))).await {
        Err(
            e @ Error::Full {
                option: "max_records",
                ..
            },
        ) => assert!(e.to_string().contains("max_records"), "{e}"),
        other => panic!("expected Full naming max_records, got {other:?}"),
    }
    let f = within("recv", s.recv()).await.expect("recv");
    assert_eq!(f.seq, 0);
    p.send(Frame::new(pattern::make(3, 100)))
        .await
        .expect("room again");
    // Bytes can be the binding limit too.
    let (mut p, _s, _) = pair("?capacity=1MiB", Policy::Fail).await;
    p.send(Frame::new(vec![0u8; 600 << 10]))
        .await
        .expect("fits");
    match p.send(Frame::new(vec![0u8; 600 << 10])).await {
        Err(Error::Full {
            option: "capacity", ..
        }) => {}
        other => panic!("expected Full naming capacity, got {other:?}"),
    }
}

#[tokio::test]
async fn wait_consumed_waits_for_readers_and_times_out() {
    let (mut p, mut s, _) = pair("?capacity=4MiB", Policy::Block).await;
    p.send(Frame::new(pattern::make(0, 1000)))
        .await
        .expect("send");
    let e = p
        .wait_consumed(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    let reader = tokio::spawn(async move {
        let f = within("recv", s.recv()).await.expect("recv");
        (f.seq, s)
    });
    within("consumed", p.wait_consumed(T))
        .await
        .expect("the reader read it");
    assert_eq!(within("reader", reader).await.expect("reader").0, 0);
    assert_eq!(p.stats().queued, 0);
}

#[tokio::test]
async fn loans_one_in_the_ring_others_on_the_heap() {
    let (mut p, mut s, _) = pair("?capacity=8MiB", Policy::Block).await;
    let mut a = p.loan(1 << 20).await.expect("ring loan");
    let mut b = p
        .loan(1000)
        .await
        .expect("a second loan while one is out: heap");
    assert!(b.iter().all(|&x| x == 0), "heap loans are zeroed");
    pattern::fill(0, &mut a);
    pattern::fill(1, &mut b);
    p.send_loan(a).await.expect("send ring loan");
    p.send_loan(b).await.expect("send heap loan");
    for i in 0..2 {
        let f = within("recv", s.recv()).await.expect("recv");
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
    // A loan dropped unsent gives its space back: many in a small ring.
    for _ in 0..64 {
        drop(within("loan", p.loan(3 << 20)).await.expect("loan"));
    }
    send_and_check(&mut p, &mut s, 1, 100).await;
}

#[tokio::test]
async fn send_while_a_loan_is_out_goes_first_and_the_loan_follows() {
    let (mut p, mut s, _) = pair("?capacity=8MiB", Policy::Block).await;
    let mut loan = p.loan(1 << 20).await.expect("loan");
    // Frames sent while the loan is out are committed after its space...
    for _ in 0..3 {
        let seq = p.stats().frames_sent;
        p.send(Frame::new(pattern::make(seq, 5000)))
            .await
            .expect("send past the loan");
    }
    // ...while the loan stays writable and untouched by them.
    pattern::fill(3, &mut loan);
    loan.topic = "late".into();
    p.send_loan(loan).await.expect("send the displaced loan");
    for i in 0..4 {
        let f = within("recv", s.recv()).await.expect("recv");
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload), "frame {i}");
    }
    // A displaced loan pins its space: when the ring comes round to it,
    // sending fails with an error that says why, instead of deadlocking.
    let loan = p.loan(3 << 20).await.expect("loan");
    let mut err = None;
    for i in 0..8 {
        match p.send(Frame::new(pattern::make(4 + i, 2 << 20))).await {
            Ok(()) => {
                within("recv", s.recv()).await.expect("recv");
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the pinned loan stops the ring");
    assert!(e.to_string().contains("unsent loan"), "{e}");
    drop(loan);
    let seq = p.stats().frames_sent;
    within("send", p.send(Frame::new(pattern::make(seq, 2 << 20))))
        .await
        .expect("the dropped loan freed its space");
    let f = within("recv", s.recv()).await.expect("recv");
    assert_eq!(f.seq, seq);
}

#[tokio::test]
async fn a_loan_of_another_publisher_is_foreign() {
    let (mut p1, _s1, _) = pair("?capacity=2MiB", Policy::Block).await;
    let (mut p2, _s2, _) = pair("?capacity=2MiB", Policy::Block).await;
    let loan = p1.loan(100).await.expect("loan");
    assert!(matches!(p2.send_loan(loan).await, Err(Error::ForeignLoan)));
    // p1's loan came back (dropped): p1 lends from the ring again.
    let loan = p1.loan(100).await.expect("loan");
    p1.send_loan(loan).await.expect("own loan");
    struct Odd(Vec<u8>);
    impl transport_core::LoanBuffer for Odd {
        fn as_mut_slice(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn as_slice(&self) -> &[u8] {
            &self.0
        }
        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            self
        }
    }
    assert!(matches!(
        p1.send_loan(Loan::new(Box::new(Odd(vec![1])))).await,
        Err(Error::ForeignLoan)
    ));
}

/// Raw clients that do not follow the protocol lose their connection; the
/// publisher goes on serving its subscriber. (Blocking reads on raw sockets:
/// the publisher's tasks run on the other worker.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_and_others_go_on() {
    let (mut p, mut s, n) = pair("?capacity=2MiB&handshake_timeout=300ms", Policy::Block).await;
    // The publisher must hang up (it may first state its version); a read
    // that times out instead means it kept the connection.
    let refused = |mut c: std::os::unix::net::UnixStream| {
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the publisher did not hang up on a hostile client: {e}"),
            }
        }
    };
    // Garbage instead of a hello.
    let mut c = sys::connect_abstract(&socket_name(&n)).expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    refused(c);
    // A hello without a page.
    let mut c = sys::connect_abstract(&socket_name(&n)).expect("connect");
    c.write_all(b"FWRC\x01\x00\x00\x00").expect("write");
    refused(c);
    // A hello whose page is not a memfd (a regular file).
    let c = sys::connect_abstract(&socket_name(&n)).expect("connect");
    let f = std::fs::File::open("/proc/self/exe").expect("open");
    sys::send_with_fd(c.as_fd(), b"FWRC\x01\x00\x00\x00", Some(f.as_fd())).expect("send");
    refused(c);
    // A hello whose page is an unsealed memfd (it could be truncated under
    // the publisher's mapping).
    let c = sys::connect_abstract(&socket_name(&n)).expect("connect");
    let m = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&m, 4096).expect("size");
    sys::send_with_fd(c.as_fd(), b"FWRC\x01\x00\x00\x00", Some(m.as_fd())).expect("send");
    refused(c);
    // A future version: the publisher states its own, then hangs up.
    let mut c = sys::connect_abstract(&socket_name(&n)).expect("connect");
    c.write_all(b"FWRC\x09\x00\x00\x00").expect("write");
    c.set_read_timeout(Some(T)).expect("timeout");
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).expect("read");
    assert!(
        reply.len() >= 6 && &reply[..4] == b"FWRS" && reply[4] == 1,
        "{reply:?}"
    );
    // Silent: cut off after the handshake timeout.
    let silent = sys::connect_abstract(&socket_name(&n)).expect("connect");
    refused(silent);
    assert_eq!(p.subscriber_count(), Some(1));
    send_and_check(&mut p, &mut s, 3, 1000).await;
}

/// A subscriber whose page claims absurd cursors harms only itself.
#[tokio::test]
async fn hostile_cursor_values_are_clamped() {
    let (mut p, mut s, n) = pair("?capacity=1MiB&max_records=4", Policy::Block).await;
    let c = sys::connect_abstract(&socket_name(&n)).expect("connect");
    let page = sys::memfd_sealed("hostile", sys::page_size() as u64).expect("memfd");
    let mut head = [0u8; 72];
    head[..8].copy_from_slice(b"FWRDR001");
    head[64..72].copy_from_slice(&u64::MAX.to_le_bytes()); // cursor: far past the head
    rustix::io::pwrite(&page, &head, 0).expect("write page");
    sys::send_with_fd(c.as_fd(), b"FWRC\x01\x00\x00\x00", Some(page.as_fd())).expect("send");
    within("two subscribers", p.wait_for_subscribers(2, T))
        .await
        .expect("admitted");
    // Its cursor is believed only up to the head: the publisher neither
    // panics nor counts negative queues, and goes on with the honest one.
    send_and_check(&mut p, &mut s, 6, 1000).await;
    assert!(p.stats().queued <= 4);
    drop(c);
}

/// A fake publisher: serves one subscriber with `hello` and `fd`, then
/// keeps the socket open for a moment.
fn fake(n: &str, hello: [u8; 48], fd: Option<std::os::fd::OwnedFd>) -> std::thread::JoinHandle<()> {
    let l = sys::bind_abstract(&socket_name(n)).expect("bind");
    std::thread::spawn(move || {
        let (c, _) = l.accept().expect("accept");
        let mut buf = [0u8; 8];
        let _ = sys::recv_with_fds(c.as_fd(), &mut buf);
        let _ = sys::send_with_fd(c.as_fd(), &hello, fd.as_ref().map(|f| f.as_fd()));
        std::thread::sleep(Duration::from_millis(500));
    })
}

/// A publisher's hello announcing a ring of `cap` bytes, reading from `start`.
fn hello(cap: u64, start: u64) -> [u8; 48] {
    let page = sys::page_size() as u64;
    let mut h = [0u8; 48];
    h[..4].copy_from_slice(b"FWRS");
    h[4] = 1;
    h[8..16].copy_from_slice(&cap.to_le_bytes());
    h[16..24].copy_from_slice(&page.to_le_bytes());
    h[24..32].copy_from_slice(&start.to_le_bytes());
    h[40..48].copy_from_slice(&8u64.to_le_bytes());
    h
}

/// The first bytes of a valid control page for a ring of `cap` bytes whose
/// head is at `head`.
fn control_page(cap: u64, head: u64) -> Vec<u8> {
    let page = sys::page_size() as u64;
    let mut control = vec![0u8; 256];
    control[..8].copy_from_slice(b"FWRING01");
    control[8..16].copy_from_slice(&1u64.to_le_bytes());
    control[16..24].copy_from_slice(&cap.to_le_bytes());
    control[24..32].copy_from_slice(&page.to_le_bytes());
    control[64..72].copy_from_slice(&head.to_le_bytes());
    control
}

/// Subscribes to the fake publisher `n` and returns the error it must give.
async fn refused_by_subscriber(n: &str) -> Error {
    within(
        "subscribe",
        ShmRingTransport.subscribe(&endpoint(&format!("shm-ring://{n}")), &Default::default()),
    )
    .await
    .expect_err("the subscriber must refuse this ring")
}

/// A fake publisher that hands out a forged ring: the subscriber refuses
/// bad geometry, and a ring full of garbage is a protocol error followed by
/// disconnects, never a panic or a read out of bounds.
#[tokio::test]
async fn forged_rings_are_refused() {
    let page = sys::page_size() as u64;
    let cap = 64u64 << 10;
    // A ring fd that is not sealed.
    let n = name("forged");
    let m = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::fs::ftruncate(&m, page + cap).expect("size");
    let server = fake(&n, hello(cap, 0), Some(m));
    let e = ShmRingTransport
        .subscribe(&endpoint(&format!("shm-ring://{n}")), &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Protocol { .. }) && e.to_string().contains("sealed"),
        "{e}"
    );
    server.join().expect("fake publisher");
    // A sealed ring of the wrong size.
    let n = name("forged");
    let server = fake(
        &n,
        hello(cap * 2, 0),
        Some(sys::memfd_sealed("ring", page + cap).expect("memfd")),
    );
    let e = ShmRingTransport
        .subscribe(&endpoint(&format!("shm-ring://{n}")), &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e}");
    server.join().expect("fake publisher");
    // No fd at all.
    let n = name("forged");
    let server = fake(&n, hello(cap, 0), None);
    let e = ShmRingTransport
        .subscribe(&endpoint(&format!("shm-ring://{n}")), &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e}");
    server.join().expect("fake publisher");
    // A well-formed ring whose head runs over garbage records.
    let n = name("forged");
    let ring = sys::memfd_sealed("ring", page + cap).expect("memfd");
    rustix::io::pwrite(&ring, &control_page(cap, cap / 2), 0).expect("control");
    let garbage: Vec<u8> = (0..cap)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    rustix::io::pwrite(&ring, &garbage, page).expect("garbage");
    sys::seal_future_write(ring.as_fd()).expect("seal");
    let server = fake(&n, hello(cap, 0), Some(ring));
    let mut sub = ShmRingTransport
        .subscribe(&endpoint(&format!("shm-ring://{n}")), &Default::default())
        .await
        .expect("the geometry is fine");
    let e = within("recv", sub.recv()).await.unwrap_err();
    assert!(
        matches!(e, Error::Protocol { .. }) && e.to_string().contains("corrupt"),
        "{e}"
    );
    assert!(matches!(
        within("recv", sub.recv()).await,
        Err(Error::Disconnected { .. })
    ));
    server.join().expect("fake publisher");
}

/// A same-user publisher cannot crash a subscriber, nor make it allocate
/// memory, with the ring it hands over: a hugetlb memfd (whose reads raise
/// SIGBUS once the huge-page pool is empty) is refused; so is a sparse ring,
/// which pre-faulting would allocate in the subscriber (up to the 1 TiB the
/// protocol allows), and a ring whose pages could be punched out (not
/// sealed against writes).
#[tokio::test]
async fn forged_rings_that_would_fault_or_allocate_are_refused() {
    let page = sys::page_size() as u64;

    // Sparse: every check passes but the memory is not there. The fake
    // keeps a second fd to watch what the subscriber's mapping allocates.
    let cap = 64u64 << 20;
    let n = name("sparse");
    let ring = sys::memfd_sealed("ring", page + cap).expect("memfd");
    rustix::io::pwrite(&ring, &control_page(cap, 0), 0).expect("control");
    sys::seal_future_write(ring.as_fd()).expect("seal");
    let watch = ring.try_clone().expect("dup");
    let server = fake(&n, hello(cap, 0), Some(ring));
    let e = refused_by_subscriber(&n).await;
    assert!(
        matches!(e, Error::Protocol { .. }) && e.to_string().contains("not allocated"),
        "{e}"
    );
    server.join().expect("fake publisher");
    let allocated = sys::inspect_shared_fd(watch.as_fd())
        .expect("inspect")
        .allocated;
    assert!(
        allocated < 1 << 20,
        "the subscriber allocated {allocated} bytes of a forged sparse ring"
    );

    // Allocated, but not sealed against writes: the publisher could punch
    // holes in it under the subscriber's mapping.
    let cap = 64u64 << 10;
    let n = name("unsealed-writes");
    let ring = sys::memfd_sealed("ring", page + cap).expect("memfd");
    rustix::io::pwrite(&ring, &vec![0u8; (page + cap) as usize], 0).expect("fill");
    rustix::io::pwrite(&ring, &control_page(cap, 0), 0).expect("control");
    let server = fake(&n, hello(cap, 0), Some(ring));
    let e = refused_by_subscriber(&n).await;
    assert!(
        matches!(e, Error::Protocol { .. }) && e.to_string().contains("writing"),
        "{e}"
    );
    server.join().expect("fake publisher");

    // Huge pages: 2 MiB in all, sealed like a real ring. Nothing of it is
    // touched before it is refused (with an empty pool, a read is SIGBUS).
    let flags = rustix::fs::MemfdFlags::CLOEXEC
        | rustix::fs::MemfdFlags::ALLOW_SEALING
        | rustix::fs::MemfdFlags::HUGETLB;
    match rustix::fs::memfd_create("huge", flags) {
        Err(e) => eprintln!("hugetlb case skipped: this kernel gives no hugetlb memfd ({e})"),
        Ok(ring) => {
            let len = 2u64 << 20;
            rustix::fs::ftruncate(&ring, len).expect("size");
            rustix::fs::fcntl_add_seals(
                &ring,
                rustix::fs::SealFlags::SHRINK
                    | rustix::fs::SealFlags::GROW
                    | rustix::fs::SealFlags::FUTURE_WRITE,
            )
            .expect("seals");
            let n = name("hugetlb");
            let server = fake(&n, hello(len - page, 0), Some(ring));
            let e = refused_by_subscriber(&n).await;
            assert!(
                matches!(e, Error::Protocol { .. }) && e.to_string().contains("hugetlb"),
                "{e}"
            );
            server.join().expect("fake publisher");
        }
    }
}

/// A version mismatch is reported by `subscribe` with both versions.
#[tokio::test]
async fn version_mismatch_is_reported_at_subscribe() {
    let n = name("version");
    let l = sys::bind_abstract(&socket_name(&n)).expect("bind");
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        let mut buf = [0u8; 8];
        let _ = sys::recv_with_fds(c.as_fd(), &mut buf);
        let mut h = [0u8; 48];
        h[..4].copy_from_slice(b"FWRS");
        h[4] = 7;
        let _ = c.write_all(&h[..8]);
    });
    let e = ShmRingTransport
        .subscribe(&endpoint(&format!("shm-ring://{n}")), &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::VersionMismatch { ours: 1, theirs: 7 }),
        "{e}"
    );
    server.join().expect("fake publisher");
}

/// Asking for views gets owned copies, and the subscriber says so.
#[tokio::test]
async fn view_mode_is_reported_as_owned() {
    let url = format!(
        "shm-ring://{}?capacity=1MiB&max_records=2&policy=fail",
        name("view")
    );
    let ep = endpoint(&url);
    let mut p = ShmRingTransport
        .publish(&ep, &Default::default())
        .await
        .expect("publish");
    let opts =
        transport_core::SubscribeOptions::default().recv_mode(transport_core::RecvMode::View);
    let mut s = ShmRingTransport
        .subscribe(&ep, &opts)
        .await
        .expect("subscribe");
    assert_eq!(s.recv_mode(), transport_core::RecvMode::Owned);
    within("subscriber", p.wait_for_subscribers(1, T))
        .await
        .expect("subscriber");
    // Holding every frame never fills a two-record ring: they are copies.
    let mut kept = Vec::new();
    for i in 0..6 {
        p.send(Frame::new(pattern::make(i, 1000)))
            .await
            .expect("send");
        kept.push(within("recv", s.recv()).await.expect("recv"));
    }
    assert!(kept.iter().all(|f| pattern::check(f.seq, &f.payload)));
}

/// The opt-in busy-poll delivers the same frames, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_subscriber_gets_every_frame() {
    let (mut p, mut s, _) = pair("?capacity=2MiB&spin=2ms", Policy::Block).await;
    let reader = tokio::spawn(async move {
        for i in 0..50u64 {
            let f = within("recv", s.recv()).await.expect("recv");
            assert_eq!(f.seq, i);
            assert!(pattern::check(i, &f.payload));
        }
    });
    for i in 0..50u64 {
        within(
            "send",
            p.send(Frame::new(pattern::make(i, 3000 + i as usize))),
        )
        .await
        .expect("send");
        if i % 10 == 0 {
            // Pauses longer than the spin: the reader also goes to sleep.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    within("reader", reader).await.expect("reader");
}
