//! Hostile peers and faults, played with raw ZMTP peers (`common`): each bad
//! message is an error for that message and the peer concerned, never a
//! panic, a hang, or a problem for anyone else.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{FakePublisher, RawPeer, T, addr, within};
use transport_core::codec::{self, MAGIC, PREFIX_LEN, VERSION};
use transport_core::{
    Endpoint, Error, Frame, Policy, PublishOptions, Publisher, SubscribeOptions, Subscriber,
    Transport, pattern,
};
use transport_zmq::wire::{self, Control, SubscriberId, Welcome};
use transport_zmq::{ZmqPublisher, ZmqSubscriber, ZmqTransport};

fn welcome(heartbeat_ms: u32) -> Welcome {
    Welcome {
        instance: 1,
        next_seq: 0,
        policy: Policy::Block,
        queue: 4,
        heartbeat_ms,
        peer_timeout_ms: 10_000,
        write_timeout_ms: 100,
    }
}

fn envelope(f: &Frame) -> Bytes {
    let mut b = BytesMut::new();
    codec::encode_header(f, &mut b).expect("encode");
    b.freeze()
}

fn prefix(header_len: u32, payload_len: u64) -> Bytes {
    let mut p = BytesMut::with_capacity(PREFIX_LEN);
    p.put_slice(&MAGIC);
    p.put_u16_le(VERSION);
    p.put_u16_le(0);
    p.put_u32_le(header_len);
    p.put_u64_le(payload_len);
    p.freeze()
}

async fn subscribe(url: &str) -> ZmqSubscriber {
    let ep = Endpoint::parse(url).expect("url");
    within(ZmqTransport.subscribe(&ep, &SubscribeOptions::default()))
        .await
        .expect("subscribe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_publisher_is_an_error_per_message_and_the_subscriber_goes_on() {
    let mut fake = FakePublisher::bind().await;
    let url = format!("{}?max_payload=1MiB", fake.url);
    let sub = tokio::spawn(async move { subscribe(&url).await });
    fake.accept(welcome(1000)).await;
    let mut sub = within(sub).await.expect("subscriber task");
    let r = |t: &str| Bytes::copy_from_slice(t.as_bytes());
    let good = |seq: u64, topic: &str| {
        let mut f = Frame::new(pattern::make(seq, 100)).with_topic(topic);
        f.seq = seq;
        f
    };
    let f5 = good(5, "t");
    let junk = Bytes::from_static(b"\x00\xffjunk");
    let hostile: Vec<(&str, Vec<Bytes>)> = vec![
        ("one part", vec![r("")]),
        (
            "two parts (a raw topic and payload)",
            vec![r("t"), junk.clone()],
        ),
        (
            "four parts",
            vec![r("t"), junk.clone(), junk.clone(), junk.clone()],
        ),
        ("garbage envelope", vec![r("t"), junk.clone(), junk.clone()]),
        (
            "hostile payload length",
            vec![r("t"), prefix(0, 1 << 62), Bytes::new()],
        ),
        (
            "payload shorter than announced",
            vec![r("t"), envelope(&f5), f5.payload.slice(1..)],
        ),
        (
            "envelope for another topic",
            vec![r("u"), envelope(&f5), f5.payload.clone()],
        ),
        (
            "a payload part over max_payload (skipped unread)",
            vec![r("t"), envelope(&f5), Bytes::from(vec![0u8; 4 << 20])],
        ),
        ("unknown control", vec![Bytes::from_static(b"FWZC\x09")]),
        ("not a control", vec![junk.clone()]),
    ];
    for (what, parts) in hostile {
        fake.send(parts).await;
        let e = within(sub.recv()).await.expect_err(what);
        assert!(
            matches!(e, Error::Protocol { .. } | Error::PayloadTooLarge { .. }),
            "{what}: {e}"
        );
    }
    // A good frame still arrives, then one whose sequence number goes back.
    fake.send(vec![r("t"), envelope(&f5), f5.payload.clone()])
        .await;
    let f = within(sub.recv()).await.expect("the good frame");
    assert_eq!((f.seq, f.topic.as_str()), (5, "t"));
    assert!(pattern::check(5, &f.payload));
    let f3 = good(3, "t");
    fake.send(vec![r("t"), envelope(&f3), f3.payload.clone()])
        .await;
    let e = within(sub.recv()).await.expect_err("backwards");
    assert!(e.to_string().contains("backwards"), "{e}");
    // And the end of the stream is still seen.
    fake.control(Control::Goodbye).await;
    assert!(
        within(sub.recv())
            .await
            .expect_err("goodbye")
            .is_disconnect()
    );
    assert_eq!(sub.stats().frames_received, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_pub_socket_is_a_plain_publisher_and_foreign_messages_are_errors() {
    // A plain ZeroMQ PUB (no framewire property): no welcome is awaited.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("zmq+tcp://{}", listener.local_addr().expect("addr"));
    let sub = tokio::spawn(async move { subscribe(&url).await });
    let (s, _) = within(listener.accept()).await.expect("accept");
    let mut pub_ = RawPeer::handshake(s, "PUB", &[]).await;
    let m = pub_.recv_msg().await;
    assert_eq!(&m[0][..], b"\x01", "a plain subscription to our prefix");
    let mut sub = within(sub).await.expect("subscriber task");
    assert_eq!(sub.publisher_policy(), Policy::Block);
    // Something that is not framewire's format: an error naming it, per message.
    pub_.send(vec![
        Bytes::from_static(b"FWZ"),
        Bytes::from_static(b"garbage"),
    ])
    .await;
    let e = within(sub.recv()).await.expect_err("foreign");
    assert!(e.to_string().contains("topic, envelope"), "{e}");
    pub_.send(vec![
        Bytes::from_static(b"t"),
        Bytes::from_static(b"{\"json\": true}"),
        Bytes::from_static(b"payload"),
    ])
    .await;
    let e = within(sub.recv()).await.expect_err("foreign header");
    assert!(e.to_string().contains("framewire envelope"), "{e}");
    // Controls are framewire's: from a plain publisher they are errors too.
    pub_.send(vec![wire::encode_control(&Control::Goodbye)])
        .await;
    within(sub.recv())
        .await
        .expect_err("no controls from a plain PUB");
    // The documented format is a frame.
    let mut f = Frame::new(pattern::make(7, 100)).with_topic("t");
    f.seq = 7;
    pub_.send(vec![
        Bytes::from_static(b"t"),
        envelope(&f),
        f.payload.clone(),
    ])
    .await;
    let g = within(sub.recv()).await.expect("frame");
    assert_eq!((g.seq, g.topic.as_str()), (7, "t"));
    // Its connection closing ends the stream.
    drop(pub_);
    assert!(within(sub.recv()).await.expect_err("end").is_disconnect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_zeromq_is_a_clear_error_at_once() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "zmq+tcp://{}?handshake_timeout=5s",
        listener.local_addr().expect("addr")
    );
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    let t = std::time::Instant::now();
    let e = within(ZmqTransport.subscribe(
        &Endpoint::parse(&url).expect("url"),
        &SubscribeOptions::default(),
    ))
    .await
    .expect_err("not ZeroMQ");
    assert!(e.to_string().contains("ZMTP"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_goes_silent_is_detected_by_heartbeat_timeout() {
    let mut fake = FakePublisher::bind().await;
    // The fake announces fast heartbeats; it will never send one.
    let url = format!(
        "{}?heartbeat=50ms&write_timeout=50ms&peer_timeout=400ms",
        fake.url
    );
    let sub = tokio::spawn(async move { subscribe(&url).await });
    fake.accept(Welcome {
        write_timeout_ms: 50,
        ..welcome(50)
    })
    .await;
    let mut sub = within(sub).await.expect("subscriber");
    let f = Frame::new(pattern::make(0, 10));
    fake.send(vec![Bytes::new(), envelope(&f), f.payload.clone()])
        .await;
    assert_eq!(within(sub.recv()).await.expect("frame").seq, 0);
    let t = std::time::Instant::now();
    let e = within(sub.recv()).await.expect_err("silence");
    assert!(e.is_disconnect(), "{e}");
    assert!(e.to_string().contains("peer_timeout"), "{e}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // The fake dropping its socket changes nothing: still disconnected.
    drop(fake);
    assert!(within(sub.recv()).await.expect_err("still").is_disconnect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_publisher_ends_the_stream() {
    let mut fake = FakePublisher::bind().await;
    let url = fake.url.clone();
    let sub = tokio::spawn(async move { subscribe(&url).await });
    fake.accept(welcome(1000)).await;
    let mut sub = within(sub).await.expect("subscriber");
    let w = Welcome {
        instance: 2,
        ..welcome(1000)
    };
    fake.control(Control::Welcome(w)).await;
    let e = within(sub.recv()).await.expect_err("restart");
    assert!(e.to_string().contains("restarted"), "{e}");
}

/// A publisher on TCP port 0 with `params`, and one subscriber.
async fn pair(params: &str, popts: PublishOptions) -> (ZmqPublisher, ZmqSubscriber) {
    let ep = Endpoint::parse(&format!("zmq+tcp://127.0.0.1:0{params}")).expect("url");
    let mut p = within(ZmqTransport.publish(&ep, &popts))
        .await
        .expect("publish");
    let s = within(ZmqTransport.subscribe(p.endpoint(), &SubscribeOptions::default()))
        .await
        .expect("subscribe");
    within(p.wait_for_subscribers(1, T)).await.expect("count");
    (p, s)
}

async fn send_and_check(p: &mut ZmqPublisher, s: &mut ZmqSubscriber, n: u64) {
    let start = p.stats().frames_sent;
    for i in start..start + n {
        within(p.send(Frame::new(pattern::make(i, 1000))))
            .await
            .expect("send");
        let f = within(s.recv()).await.expect("recv");
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_subscribers_is_ignored_and_others_are_served() {
    let (mut p, mut s) = pair("", PublishOptions::default()).await;
    let stranger = SubscriberId([9; 16]);
    let mut raw = RawPeer::framewire_sub(&addr(&p), &stranger).await;
    for m in [
        Bytes::from_static(b"\x01\xff\xfe"),
        Bytes::from_static(b"FWZU\x02\x01short"),
        Bytes::from_static(b"hello"),
        wire::encode_status(&wire::Status {
            id: SubscriberId([1; 16]),
            received: u64::MAX,
            dropped: u64::MAX,
        }),
    ] {
        raw.send(vec![m]).await;
    }
    raw.send(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")])
        .await;
    // Another protocol version is refused, with a message it can read.
    let mut other = [9u8; 17];
    other[0] = 9;
    let mut old = RawPeer::connect(&addr(&p), "SUB", &[(wire::PROPERTY, &other)]).await;
    let refusal = old.recv_msg().await;
    match wire::decode_control(&refusal[0]) {
        Ok(Control::Refuse { version, .. }) => assert_eq!(version, wire::VERSION),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(old.recv().await.is_err(), "then the connection closes");
    send_and_check(&mut p, &mut s, 5).await;
    assert_eq!(p.subscriber_count(), Some(1), "garbage registered no one");
    assert_eq!(p.stats().dropped, 0, "a stranger's status changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_not_subscribers_until_their_subscription_arrives() {
    let ep = Endpoint::parse("zmq+tcp://127.0.0.1:0?handshake_timeout=300ms").expect("url");
    let mut p = within(ZmqTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect("publish");
    // A ZMTP connection that never subscribes is not a subscriber, and is
    // closed after handshake_timeout; so is one that never finishes its greeting.
    let mut mute = RawPeer::connect(&addr(&p), "SUB", &[]).await;
    let _tcp = tokio::net::TcpStream::connect(addr(&p)).await.expect("tcp");
    assert!(matches!(
        p.wait_for_subscribers(1, Duration::from_millis(200)).await,
        Err(Error::Timeout { .. })
    ));
    assert_eq!(p.subscriber_count(), Some(0));
    assert!(mute.recv().await.is_err(), "closed after handshake_timeout");
    let mut s = within(ZmqTransport.subscribe(p.endpoint(), &SubscribeOptions::default()))
        .await
        .expect("subscribe");
    within(p.wait_for_subscribers(1, T))
        .await
        .expect("one subscriber");
    assert_eq!(s.first_seq(), 0);
    send_and_check(&mut p, &mut s, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_goes_silent_is_removed_and_stops_blocking() {
    let params = "?heartbeat=50ms&write_timeout=200ms&peer_timeout=600ms&queue=1";
    let (mut p, mut s) = pair(params, PublishOptions::default().policy(Policy::Block)).await;
    // A framewire subscription, then silence: no status reports, no reading.
    let ghost = SubscriberId([3; 16]);
    let mut raw = RawPeer::framewire_sub(&addr(&p), &ghost).await;
    raw.send(vec![wire::subscription("", true)]).await;
    within(p.wait_for_subscribers(2, T)).await.expect("two");
    // 1 MiB frames: the ghost's socket buffers fill and its writes stall,
    // until it is cut off; the live subscriber gets everything.
    let reader = tokio::spawn(async move {
        for i in 0..40 {
            let f = within(s.recv()).await.expect("recv");
            assert_eq!(f.seq, i);
        }
        s
    });
    for i in 0..40 {
        within(p.send(Frame::new(pattern::make(i, 1 << 20))))
            .await
            .expect("send");
    }
    within(p.flush()).await.expect("flush");
    let _s = within(reader).await.expect("reader");
    let deadline = tokio::time::Instant::now() + T;
    while p.subscriber_count() != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ghost never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_only_frames_of_the_subscribed_topics() {
    let ep = Endpoint::parse("zmq+tcp://127.0.0.1:0?queue=2").expect("url");
    let popts = PublishOptions::default().policy(Policy::DropOldest);
    let mut p = within(ZmqTransport.publish(&ep, &popts))
        .await
        .expect("publish");
    let sopts = SubscribeOptions::default().topic_prefix("a");
    let mut s = within(ZmqTransport.subscribe(p.endpoint(), &sopts))
        .await
        .expect("subscribe");
    within(p.wait_for_subscribers(1, T)).await.expect("count");
    // The subscriber does not read while 40 frames go out, half of them its topic.
    for i in 0..40u64 {
        let topic = if i % 2 == 0 { "a" } else { "b" };
        within(p.send(Frame::new(pattern::make(i, 10_000)).with_topic(topic)))
            .await
            .expect("send");
    }
    within(p.flush()).await.expect("flush");
    let (mut got, mut missed) = (Vec::new(), 0);
    while got.last() != Some(&38) {
        match within(s.recv()).await {
            Ok(f) => {
                assert_eq!(f.topic, "a");
                got.push(f.seq);
            }
            Err(Error::Lagged { missed: m }) => missed += m,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        missed > 0,
        "a stalled subscriber with queue=2 must have missed frames"
    );
    assert_eq!(
        got.len() as u64 + missed,
        20,
        "got {got:?}, missed {missed}"
    );
    assert_eq!(s.stats().lagged, missed);
    assert_eq!(p.stats().dropped, missed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_checked_and_errors_say_what_to_change() {
    let e = ZmqTransport
        .capabilities(&Endpoint::parse("zmq+tcp://127.0.0.1:0?slots=4").expect("url"))
        .expect_err("unknown option");
    assert!(
        e.to_string().contains("queue"),
        "lists what is accepted: {e}"
    );
    let e = ZmqTransport
        .capabilities(&Endpoint::parse("zmq+ipc://*").expect("url"))
        .expect_err("wildcard ipc");
    assert!(e.to_string().contains("absolute"), "{e}");
    let (mut p, _s) = pair("?max_payload=1KiB", PublishOptions::default()).await;
    let e = p
        .send(Frame::new(vec![0u8; 1025]))
        .await
        .expect_err("too big");
    assert_eq!(
        e.to_string(),
        "payload of 1.00 KiB (1025 B) exceeds max_payload 1 KiB; raise `max_payload` in the endpoint URL"
    );
    // Liveness settings that cannot work together are refused up front.
    let e = ZmqTransport
        .capabilities(
            &Endpoint::parse("zmq+tcp://127.0.0.1:0?heartbeat=2s&peer_timeout=3s").expect("url"),
        )
        .expect_err("peer_timeout too short");
    assert!(e.to_string().contains("raise `peer_timeout`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_sockets_are_private_swept_and_removed() {
    use std::os::unix::fs::PermissionsExt;
    let path =
        std::env::temp_dir().join(format!("framewire-zmq-faults-{}.ipc", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // A stale socket file, as a crashed publisher leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let ep = Endpoint::parse(&format!("zmq+ipc://{}", path.display())).expect("url");
    let mut p = within(ZmqTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect("a stale socket is swept");
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let e = within(ZmqTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect_err("a live publisher's socket is not taken over");
    assert!(e.to_string().contains("another publisher"), "{e}");
    let mut s = subscribe(p.endpoint().url()).await;
    within(p.wait_for_subscribers(1, T)).await.expect("count");
    send_and_check(&mut p, &mut s, 2).await;
    drop(p);
    assert!(
        !path.exists(),
        "the socket file is removed with its publisher"
    );
    assert!(within(s.recv()).await.expect_err("gone").is_disconnect());
    // A regular file at the path is never deleted.
    std::fs::write(&path, b"precious").expect("write");
    let e = within(ZmqTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect_err("not a socket");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).expect("read"), b"precious");
    std::fs::remove_file(&path).expect("cleanup");
}

/// Run as a child process by `a_killed_publisher_process_is_detected`.
#[test]
fn child_publisher() {
    let Ok(url) = std::env::var("FRAMEWIRE_ZMQ_CHILD_URL") else {
        return; // Not the child: nothing to do.
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ep = Endpoint::parse(&url).expect("url");
        let mut p = ZmqTransport
            .publish(&ep, &PublishOptions::default())
            .await
            .expect("publish");
        println!("ENDPOINT {}", p.endpoint());
        p.wait_for_subscribers(1, T).await.expect("subscriber");
        p.send(Frame::new(pattern::make(0, 1000)))
            .await
            .expect("send");
        p.flush().await.expect("flush");
        // Wait to be killed.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_publisher_process_is_detected() {
    use std::io::BufRead;
    let params = "?heartbeat=100ms&write_timeout=200ms&peer_timeout=1s";
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_publisher",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "FRAMEWIRE_ZMQ_CHILD_URL",
            format!("zmq+tcp://127.0.0.1:0{params}"),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the child publisher");
    let stdout = child.stdout.take().expect("stdout");
    let url = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .find_map(|l| l.split_once("ENDPOINT ").map(|(_, u)| u.trim().to_owned()))
    });
    let url = within(url)
        .await
        .expect("reader")
        .expect("the child's endpoint");
    let mut s = subscribe(&url).await;
    assert_eq!(within(s.recv()).await.expect("frame").seq, 0);
    child.kill().expect("kill -9 the publisher");
    let _ = child.wait();
    let t = std::time::Instant::now();
    let e = within(s.recv()).await.expect_err("the publisher died");
    assert!(e.is_disconnect(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_until_a_slow_subscriber_has_read_to_the_end() {
    // Status reports every 20 ms: a publisher that closed its socket with one
    // of them unread would reset the connection and lose what its kernel
    // still holds for this subscriber.
    let params = "?heartbeat=20ms&write_timeout=1s&peer_timeout=5s&queue=2";
    let (mut p, mut s) = pair(params, PublishOptions::default()).await;
    let n = 12u64;
    let reader = tokio::spawn(async move {
        for i in 0..n {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let f = within(s.recv()).await.expect("every frame arrives");
            assert_eq!(f.seq, i);
            assert!(pattern::check(i, &f.payload));
        }
        within(s.recv()).await.expect_err("then the end")
    });
    for i in 0..n {
        within(p.send(Frame::new(pattern::make(i, 1 << 20))))
            .await
            .expect("send");
    }
    within(p.close()).await.expect("close");
    let end = within(reader).await.expect("reader");
    assert!(end.to_string().contains("closed the channel"), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_subscriber_gets_frames_and_never_holds_flush() {
    // A plain ZeroMQ SUB (no framewire property) under drop-oldest, where
    // `flush` waits for framewire subscribers' receipts: it has none to give.
    let ep = Endpoint::parse("zmq+tcp://127.0.0.1:0?policy=drop-oldest").expect("url");
    let mut p = within(ZmqTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect("publish");
    let mut plain = RawPeer::connect(&addr(&p), "SUB", &[]).await;
    plain.send(vec![wire::subscription("a/", true)]).await;
    plain.send(vec![wire::subscription("b/", true)]).await;
    within(p.wait_for_subscribers(1, T)).await.expect("counted");
    // Counted at its first subscription; the second follows: probe until in.
    loop {
        within(p.send(Frame::new(pattern::make(0, 10)).with_topic("b/probe")))
            .await
            .expect("send");
        let r = tokio::time::timeout(Duration::from_secs(1), plain.reader.next(&common::BIG));
        if r.await.is_ok() {
            break;
        }
    }
    let first = p.stats().frames_sent;
    for (i, topic) in ["a/1", "c/1", "b/1"].into_iter().enumerate() {
        within(p.send(Frame::new(pattern::make(i as u64, 100)).with_topic(topic)))
            .await
            .expect("send");
    }
    within(p.flush()).await.expect("flush returns");
    // Only its topics, as [topic, envelope, payload], and nothing framewire-only.
    for (seq, topic) in [(first, "a/1"), (first + 2, "b/1")] {
        let m = loop {
            // A late probe or two may still come first.
            let m = plain.recv_msg().await;
            if &m[0][..] != b"b/probe" {
                break m;
            }
        };
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(&m[0][..], topic.as_bytes());
        let f = wire::decode_envelope(&m[1], m[2].len() as u64, 1 << 20).expect("envelope");
        assert_eq!((f.seq, f.topic.as_str()), (seq, topic));
    }
    // Cancelling every prefix leaves.
    plain.send(vec![wire::subscription("a/", false)]).await;
    plain.send(vec![wire::subscription("b/", false)]).await;
    let deadline = tokio::time::Instant::now() + T;
    while p.subscriber_count() != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "still counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Closing the publisher ends its stream.
    within(p.close()).await.expect("close");
    assert!(plain.recv().await.is_err());
}
