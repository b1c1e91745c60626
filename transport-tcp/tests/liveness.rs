//! Liveness: heartbeats keep an idle link alive, and a peer that stops
//! answering is declared dead on both sides within `liveness`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use transport_core::{
    Endpoint, Error, Frame, PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport,
    pattern,
};
use transport_tcp::{PROTOCOL_VERSION, TcpPublisher, TcpSubscriber, TcpTransport};

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

fn client_hello(version: u16, liveness_ms: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(b"FWHS");
    b[4..6].copy_from_slice(&version.to_le_bytes());
    b[8..12].copy_from_slice(&liveness_ms.to_le_bytes());
    b
}

fn server_hello(liveness_ms: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(b"FWHS");
    b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    b[24..28].copy_from_slice(&liveness_ms.to_le_bytes());
    b
}

async fn pair(params: &str) -> (TcpPublisher, TcpSubscriber) {
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

/// An idle but healthy link lasts many times `liveness`: heartbeats flow
/// both ways, neither side gives up, and frames pass afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_stays_up() {
    let (mut p, mut s) = pair("?liveness=150ms").await;
    let mut idle = Box::pin(s.recv());
    // Ten times the bound with nothing sent.
    let r = tokio::time::timeout(Duration::from_millis(1500), &mut idle).await;
    assert!(r.is_err(), "recv ended on an idle link: {r:?}");
    assert_eq!(p.subscriber_count(), Some(1), "the publisher dropped it");
    within(p.send(Frame::new(pattern::make(0, 1000))))
        .await
        .unwrap();
    let f = within(idle).await.expect("a frame after the idle time");
    assert!(pattern::check(0, &f.payload));
    assert_eq!(f.seq, 0);
}

/// A subscriber whose application stops calling `recv` for a while is slow,
/// not dead: it keeps its connection and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_application_is_not_a_dead_peer() {
    let (mut p, mut s) = pair("?liveness=150ms").await;
    for i in 0..6 {
        within(p.send(Frame::new(pattern::make(i, 4096))))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(p.subscriber_count(), Some(1));
    for i in 0..6 {
        let f = within(s.recv()).await.expect("frames kept");
        assert_eq!(f.seq, i);
    }
}

/// A publisher that completes the handshake, starts a frame and then says
/// nothing more (a host that lost power, a cut cable) is detected within
/// `liveness`; the partial frame is never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_publisher_is_detected_and_its_partial_frame_dropped() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    let fake = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut hello = [0u8; 12];
        s.read_exact(&mut hello).await.unwrap();
        s.write_all(&server_hello(3000)).await.unwrap();
        // One whole frame, then the first half of another.
        let whole = transport_core::codec::encode(&Frame {
            seq: 0,
            ..Frame::new(pattern::make(0, 1000))
        })
        .unwrap();
        s.write_all(&whole).await.unwrap();
        let second = transport_core::codec::encode(&Frame {
            seq: 1,
            ..Frame::new(pattern::make(1, 1000))
        })
        .unwrap();
        s.write_all(&second[..second.len() - 500]).await.unwrap();
        // Then silence, with the connection open, until the test ends.
        let _ = hold_rx.await;
        drop(s);
    });
    let ep = Endpoint::parse(&format!("tcp://{addr}?liveness=300ms")).unwrap();
    let mut sub = within(TcpTransport.subscribe(&ep, &SubscribeOptions::default()))
        .await
        .unwrap();
    let f = within(sub.recv()).await.expect("the whole frame");
    assert_eq!(f.payload.len(), 1000);
    let start = Instant::now();
    let e = within(sub.recv())
        .await
        .expect_err("the half frame is not a frame");
    let took = start.elapsed();
    assert!(
        matches!(&e, Error::Disconnected { reason: m, .. } if m.contains("stopped answering") && m.contains("liveness")),
        "{e}"
    );
    assert!(
        took < Duration::from_millis(300 + 1500),
        "detected after {took:?}"
    );
    assert!(within(sub.recv()).await.unwrap_err().is_disconnect());
    let _ = hold_tx.send(());
    within(fake).await.unwrap();
}

/// A subscriber that stops sending heartbeats (but keeps its connection
/// open) is dropped by an idle publisher within `liveness`, and its queue
/// is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscriber_is_dropped_and_its_queue_freed() {
    let (mut p, mut s) = pair("?liveness=300ms&queue=4").await;
    let mut silent = TcpStream::connect(p.endpoint().address()).await.unwrap();
    silent
        .write_all(&client_hello(PROTOCOL_VERSION, 300))
        .await
        .unwrap();
    let mut hello = [0u8; 32];
    within(silent.read_exact(&mut hello)).await.unwrap();
    within(p.wait_for_subscribers(2, T)).await.unwrap();
    let start = Instant::now();
    within(async {
        while p.subscriber_count() != Some(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(300 + 1500),
        "dropped after {took:?}"
    );
    // The well-behaved subscriber is unaffected, and nothing stays queued
    // for the dead one.
    for i in 0..3 {
        within(p.send(Frame::new(pattern::make(i, 1000))))
            .await
            .unwrap();
        assert_eq!(within(s.recv()).await.unwrap().seq, i);
    }
    within(p.flush()).await.unwrap();
    assert_eq!(p.stats().queued, 0);
    // The publisher closed the silent peer's connection.
    let mut buf = [0u8; 256];
    let closed = within(async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed);
}

/// Peers of protocol version 1 (no heartbeats) are refused with a version
/// error on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_peers_get_a_version_error() {
    // A version-1 subscriber: its 8-byte hello gets our version back, then EOF.
    let (p, _s) = pair("").await;
    let mut old = TcpStream::connect(p.endpoint().address()).await.unwrap();
    old.write_all(&client_hello(1, 0)[..8]).await.unwrap();
    let mut reply = Vec::new();
    within(old.read_to_end(&mut reply)).await.unwrap();
    assert!(reply.len() >= 8, "{reply:?}");
    assert_eq!(u16::from_le_bytes([reply[4], reply[5]]), PROTOCOL_VERSION);
    // A version-1 publisher: its 24-byte hello is a version mismatch.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // As version 1 does: read 8 bytes (leaving 4 unread, so that the
        // close below may send a reset), answer, close.
        let mut hello = [0u8; 8];
        let _ = s.read_exact(&mut hello).await;
        let mut v1 = [0u8; 24];
        v1[..4].copy_from_slice(b"FWHS");
        v1[4..6].copy_from_slice(&1u16.to_le_bytes());
        let _ = s.write_all(&v1).await;
    });
    let ep = Endpoint::parse(&format!("tcp://{addr}")).unwrap();
    let e = within(TcpTransport.subscribe(&ep, &SubscribeOptions::default()))
        .await
        .expect_err("version 1");
    assert!(
        matches!(e, Error::VersionMismatch { ours: 2, theirs: 1 }),
        "{e}"
    );
    assert!(e.to_string().contains("same framewire version"), "{e}");
}

#[test]
fn liveness_is_validated_and_listed() {
    for bad in ["0s", "5ms", "2d", "soon", "30h"] {
        let ep = Endpoint::parse(&format!("tcp://127.0.0.1:0?liveness={bad}")).unwrap();
        let e = TcpTransport.capabilities(&ep).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidOption { option, .. } if option == "liveness"),
            "{bad}: {e}"
        );
    }
    let ep = Endpoint::parse("tcp://127.0.0.1:0?livenes=3s").unwrap();
    let e = TcpTransport.capabilities(&ep).unwrap_err().to_string();
    assert!(e.contains("liveness"), "{e}");
    let ep = Endpoint::parse("unix:///tmp/x.sock?liveness=1s").unwrap();
    assert!(TcpTransport.capabilities(&ep).is_ok());
}

/// A publisher that goes away with our heartbeats still unread in its socket
/// (dropped, or killed, before its watcher read them) makes the kernel reset
/// the connection instead of closing it: tcp sends RST, a unix socket
/// reports ECONNRESET. That is the publisher leaving, so `recv` says
/// `Disconnected` (what reconnect follows), not an I/O error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_resets_the_connection_is_a_disconnect() {
    async fn handshake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
        let mut hello = [0u8; 12];
        s.read_exact(&mut hello).await.unwrap();
        s.write_all(&server_hello(3000)).await.unwrap();
    }
    let path = std::env::temp_dir().join(format!("framewire-reset-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    /// Removes the socket file however the test ends.
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(path.clone());
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let urls = [
        format!("tcp://{}?liveness=100ms", tcp.local_addr().unwrap()),
        format!("unix://{}?liveness=100ms", path.display()),
    ];
    for url in urls {
        let ep = Endpoint::parse(&url).unwrap();
        let publisher = async {
            // Handshake, wait for a heartbeat to arrive, leave it unread, go.
            if url.starts_with("unix") {
                let (mut s, _) = unix.accept().await.unwrap();
                handshake(&mut s).await;
                // Drain until the socket would block (which clears tokio's
                // readiness), then wait for a fresh heartbeat.
                while s.try_read(&mut [0u8; 64]).is_ok() {}
                s.readable().await.unwrap();
            } else {
                let (mut s, _) = tcp.accept().await.unwrap();
                handshake(&mut s).await;
                s.peek(&mut [0u8; 1]).await.unwrap();
            }
        };
        let opts = SubscribeOptions::default();
        let (sub, ()) = tokio::join!(
            within(TcpTransport.subscribe(&ep, &opts)),
            within(publisher)
        );
        let mut sub = sub.unwrap();
        let e = within(sub.recv()).await.expect_err("the publisher is gone");
        assert!(matches!(e, Error::Disconnected { .. }), "{url}: {e:?}");
        assert!(within(sub.recv()).await.unwrap_err().is_disconnect());
    }
}
