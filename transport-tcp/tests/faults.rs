//! Hostile peers and faults: each gets a clear error on the connection
//! concerned, and the publisher keeps serving everyone else.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use transport_core::codec::{MAGIC, PREFIX_LEN, VERSION};
use transport_core::{
    Endpoint, Error, Frame, PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport,
    pattern,
};
use transport_tcp::{PROTOCOL_VERSION, TcpTransport};

/// A version-2 client hello (liveness 3 s), as a raw peer sends it.
fn client_hello() -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(b"FWHS");
    b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b[8..12].copy_from_slice(&3000u32.to_le_bytes());
    b
}

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// A fake publisher: answers the handshake (with `version`), then writes `bytes` and closes.
async fn fake_publisher(version: u16, bytes: Vec<u8>) -> Endpoint {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut hello = [0u8; 12];
        s.read_exact(&mut hello).await.unwrap();
        let mut reply = [0u8; 32];
        reply[..4].copy_from_slice(b"FWHS");
        reply[4..6].copy_from_slice(&version.to_le_bytes());
        reply[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        reply[24..28].copy_from_slice(&3000u32.to_le_bytes());
        let _ = s.write_all(&reply).await;
        let _ = s.write_all(&bytes).await;
        // Keep the connection open a moment so the error, not EOF, is seen first.
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    Endpoint::parse(&format!("tcp://{addr}")).unwrap()
}

fn prefix(header_len: u32, payload_len: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(PREFIX_LEN);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&VERSION.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&header_len.to_le_bytes());
    p.extend_from_slice(&payload_len.to_le_bytes());
    p
}

async fn first_error_then_disconnect(ep: Endpoint) -> Error {
    let mut sub = within(TcpTransport.subscribe(&ep, &SubscribeOptions::default()))
        .await
        .expect("handshake succeeds");
    let err = within(sub.recv())
        .await
        .expect_err("garbage is not a frame");
    let next = within(sub.recv())
        .await
        .expect_err("the connection is gone");
    assert!(next.is_disconnect(), "then a disconnect, got {next}");
    err
}

#[tokio::test]
async fn garbage_from_the_publisher_is_a_protocol_error() {
    let ep = fake_publisher(
        PROTOCOL_VERSION,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    )
    .await;
    let e = first_error_then_disconnect(ep).await;
    assert!(matches!(e, Error::Protocol { .. }), "{e}");
}

#[tokio::test]
async fn hostile_length_prefix_is_refused_without_allocating() {
    let ep = fake_publisher(PROTOCOL_VERSION, prefix(10, 1 << 63)).await;
    let e = first_error_then_disconnect(ep).await;
    assert!(
        matches!(
            e,
            Error::PayloadTooLarge {
                option: "max_payload",
                ..
            }
        ),
        "{e}"
    );
    // A length within the cap but over this subscriber's own max_payload.
    let ep = fake_publisher(PROTOCOL_VERSION, prefix(10, 5 << 20)).await;
    let ep = ep.with_param("max_payload", "4MiB");
    let e = first_error_then_disconnect(ep).await;
    assert!(
        matches!(e, Error::PayloadTooLarge { limit, .. } if limit == 4 << 20),
        "{e}"
    );
    // A header length over the header cap.
    let ep = fake_publisher(PROTOCOL_VERSION, prefix(u32::MAX, 0)).await;
    let e = first_error_then_disconnect(ep).await;
    assert!(matches!(e, Error::Protocol { .. }), "{e}");
}

#[tokio::test]
async fn truncated_frame_is_a_protocol_error() {
    let mut bytes = prefix(40, 1000);
    bytes.extend_from_slice(&[0u8; 12]);
    let ep = fake_publisher(PROTOCOL_VERSION, bytes).await;
    let e = first_error_then_disconnect(ep).await;
    assert!(matches!(e, Error::Protocol { .. }), "{e}");
}

#[tokio::test]
async fn version_mismatch_is_reported_at_subscribe() {
    let ep = fake_publisher(PROTOCOL_VERSION + 1, Vec::new()).await;
    let e = within(TcpTransport.subscribe(&ep, &SubscribeOptions::default()))
        .await
        .expect_err("another version");
    assert!(
        matches!(e, Error::VersionMismatch { theirs, .. } if theirs == PROTOCOL_VERSION + 1),
        "{e}"
    );
}

/// A publisher and one well-behaved subscriber, for the tests below.
async fn publisher(params: &str) -> (transport_tcp::TcpPublisher, transport_tcp::TcpSubscriber) {
    let ep = Endpoint::parse(&format!("tcp://127.0.0.1:0{params}")).unwrap();
    let mut p = within(TcpTransport.publish(&ep, &PublishOptions::default()))
        .await
        .unwrap();
    let s = within(TcpTransport.subscribe(p.endpoint(), &SubscribeOptions::default()))
        .await
        .unwrap();
    within(p.wait_for_subscribers(1, T)).await.unwrap();
    (p, s)
}

async fn raw_peer(p: &transport_tcp::TcpPublisher) -> TcpStream {
    TcpStream::connect(p.endpoint().address()).await.unwrap()
}

async fn send_and_check(
    p: &mut transport_tcp::TcpPublisher,
    s: &mut transport_tcp::TcpSubscriber,
    n: u64,
    size: usize,
) {
    let start = p.stats().frames_sent;
    for i in start..start + n {
        within(p.send(Frame::new(pattern::make(i, size))))
            .await
            .unwrap();
        let f = within(s.recv()).await.unwrap();
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
}

#[tokio::test]
async fn garbage_handshake_closes_only_that_peer() {
    let (mut p, mut s) = publisher("").await;
    let mut bad = raw_peer(&p).await;
    bad.write_all(b"\x00\x01garbage!").await.unwrap();
    let mut buf = [0u8; 64];
    // The publisher closes the bad peer (it may first say its version).
    let closed = within(async {
        loop {
            match bad.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    });
    closed.await;
    assert_eq!(p.subscriber_count(), Some(1));
    send_and_check(&mut p, &mut s, 3, 1000).await;
}

#[tokio::test]
async fn bytes_after_the_handshake_close_only_that_peer() {
    let (mut p, mut s) = publisher("").await;
    let mut bad = raw_peer(&p).await;
    bad.write_all(&client_hello()).await.unwrap();
    let mut hello = [0u8; 32];
    bad.read_exact(&mut hello).await.unwrap();
    within(p.wait_for_subscribers(2, T)).await.unwrap();
    bad.write_all(b"unexpected").await.unwrap();
    within(async {
        while p.subscriber_count() != Some(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    send_and_check(&mut p, &mut s, 3, 1000).await;
}

#[tokio::test]
async fn silent_peer_is_dropped_after_the_handshake_timeout() {
    let (mut p, mut s) = publisher("?handshake_timeout=200ms").await;
    let mut silent = raw_peer(&p).await;
    send_and_check(&mut p, &mut s, 2, 1000).await;
    let mut buf = [0u8; 8];
    let n = within(silent.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(
        n, 0,
        "the publisher hangs up on a peer that never says hello"
    );
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_cut_off_and_the_others_go_on() {
    let (mut p, mut s) = publisher("?write_timeout=300ms&queue=2").await;
    let mut stalled = raw_peer(&p).await;
    stalled.write_all(&client_hello()).await.unwrap();
    let mut hello = [0u8; 32];
    stalled.read_exact(&mut hello).await.unwrap();
    within(p.wait_for_subscribers(2, T)).await.unwrap();
    // Under block, 40 MiB is far more than the socket buffers hold: without
    // the write timeout the publisher would wait on the stalled peer forever.
    let reader = tokio::spawn(async move {
        for i in 0..40 {
            let f = within(s.recv()).await.unwrap();
            assert_eq!(f.seq, i);
            assert!(pattern::check(i, &f.payload));
        }
        s
    });
    for i in 0..40 {
        within(p.send(Frame::new(pattern::make(i, 1 << 20))))
            .await
            .unwrap();
    }
    within(p.flush()).await.unwrap();
    within(reader).await.unwrap();
    assert_eq!(
        p.subscriber_count(),
        Some(1),
        "the stalled peer was dropped"
    );
    drop(stalled);
}

#[tokio::test]
async fn oversize_and_bad_options_are_clear_errors() {
    let e = TcpTransport
        .capabilities(&Endpoint::parse("tcp://127.0.0.1:0?slots=4").unwrap())
        .unwrap_err();
    assert!(
        e.to_string().contains("queue"),
        "lists what is accepted: {e}"
    );
    let e = TcpTransport
        .capabilities(&Endpoint::parse("tcp://127.0.0.1:0?queue=0").unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("queue"), "{e}");
    let (mut p, _s) = publisher("?max_payload=1KiB").await;
    let e = p.send(Frame::new(vec![0u8; 1025])).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "payload of 1.00 KiB (1025 B) exceeds max_payload 1 KiB; raise `max_payload` in the endpoint URL"
    );
}

#[tokio::test]
async fn unix_sockets_are_private_and_cleaned_up() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("framewire-faults-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // A stale socket file, as a crashed publisher leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let ep = Endpoint::parse(&format!("unix://{}", path.display())).unwrap();
    let p = within(TcpTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect("a stale socket is swept");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let e = within(TcpTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect_err("a live publisher's socket is not taken over");
    assert!(e.to_string().contains("another publisher"), "{e}");
    drop(p);
    assert!(
        !path.exists(),
        "the socket file is removed with its publisher"
    );
    // A regular file at the path is never deleted.
    std::fs::write(&path, b"precious").unwrap();
    let e = within(TcpTransport.publish(&ep, &PublishOptions::default()))
        .await
        .expect_err("not a socket");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
}
