//! Zenoh-specific behaviour: many-to-many, bounded memory with a stalled
//! subscriber, zero configuration, option errors.

use std::collections::HashMap;
use std::time::Duration;

use transport_core::{
    Endpoint, Error, Frame, Policy, PublishOptions, Publisher, Subscriber, Transport, pattern,
};
use transport_zenoh::ZenohTransport;

const T: Duration = Duration::from_secs(30);

fn ep(s: &str) -> Endpoint {
    Endpoint::parse(s).expect("endpoint")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

async fn recv<S: Subscriber>(s: &mut S) -> transport_core::Result<Frame> {
    tokio::time::timeout(T, s.recv())
        .await
        .expect("a frame in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishers_and_a_wildcard_subscriber() {
    let pid = std::process::id();
    let port = free_port();
    let mut sub = ZenohTransport
        .subscribe(
            &ep(&format!(
                "zenoh://m2m/{pid}/*/rgb?listen=tcp/127.0.0.1:{port}"
            )),
            &Default::default(),
        )
        .await
        .expect("subscriber");
    let mut pubs = Vec::new();
    for (cam, name) in [("a", "a0"), ("a", "a1"), ("b", "b0")] {
        let url = format!("zenoh://m2m/{pid}/{cam}/rgb?connect=tcp/127.0.0.1:{port}");
        let mut p = ZenohTransport
            .publish(&ep(&url), &Default::default())
            .await
            .expect("publisher");
        p.wait_for_subscribers(1, T).await.expect("subscriber seen");
        pubs.push((name, p));
    }
    let n = 30u64;
    // Sent while the subscriber reads: `close` waits for it to queue everything.
    let sender = tokio::spawn(async move {
        for i in 0..n {
            for (name, p) in &mut pubs {
                p.send(Frame::new(pattern::make(i, 2000)).with_topic(*name))
                    .await
                    .expect("send");
            }
        }
        for (_, p) in &mut pubs {
            p.close().await.expect("close");
        }
        pubs
    });
    let mut next: HashMap<String, u64> = HashMap::new();
    for _ in 0..3 * n {
        let f = recv(&mut sub).await.expect("no lag, no error");
        let want = next.entry(f.topic.clone()).or_default();
        assert_eq!(f.seq, *want, "per-publisher order of {}", f.topic);
        assert!(pattern::check(f.seq, &f.payload));
        *want += 1;
    }
    assert_eq!(next.len(), 3);
    assert!(next.values().all(|v| *v == n));
    assert_eq!(sub.stats().lagged, 0, "three publishers are not lag");
    assert!(matches!(
        recv(&mut sub).await,
        Err(Error::Disconnected { .. })
    ));
    drop(tokio::time::timeout(T, sender).await.expect("senders end"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_under_drop_oldest_keeps_memory_bounded() {
    let pid = std::process::id();
    let port = free_port();
    let mut sub = ZenohTransport
        .subscribe(
            &ep(&format!(
                "zenoh://stall/{pid}/drop?listen=tcp/127.0.0.1:{port}&queue=2"
            )),
            &Default::default(),
        )
        .await
        .expect("subscriber");
    let mut publ = ZenohTransport
        .publish(
            &ep(&format!(
                "zenoh://stall/{pid}/drop?connect=tcp/127.0.0.1:{port}"
            )),
            &PublishOptions::default().policy(Policy::DropOldest),
        )
        .await
        .expect("publisher");
    publ.wait_for_subscribers(1, T).await.expect("subscriber");
    let before = rss_bytes();
    let n = 200u64;
    for i in 0..n {
        tokio::time::timeout(T, publ.send(Frame::new(pattern::make(i, 1 << 20))))
            .await
            .expect("drop-oldest never blocks on a stalled subscriber")
            .expect("send");
    }
    publ.flush().await.expect("flush");
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 100 << 20,
        "RSS grew by {} MiB for {n} MiB sent to a stalled subscriber with queue=2",
        grown >> 20
    );
    // It reads the newest frames, told how many it missed.
    let (mut received, mut missed) = (0u64, 0u64);
    loop {
        match tokio::time::timeout(Duration::from_millis(500), sub.recv()).await {
            Err(_) => break,
            Ok(Ok(f)) => {
                assert!(pattern::check(f.seq, &f.payload));
                received += 1;
            }
            Ok(Err(Error::Lagged { missed: m })) => missed += m,
            Ok(Err(e)) => panic!("recv: {e}"),
        }
    }
    assert!(received <= 2 && received > 0, "received {received}");
    assert!(missed > 0 && received + missed <= n);
    assert!(publ.stats().dropped >= missed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_under_block_holds_the_publisher() {
    let pid = std::process::id();
    let port = free_port();
    let mut sub = ZenohTransport
        .subscribe(
            &ep(&format!(
                "zenoh://stall/{pid}/block?listen=tcp/127.0.0.1:{port}&queue=2"
            )),
            &Default::default(),
        )
        .await
        .expect("subscriber");
    let mut publ = ZenohTransport
        .publish(
            &ep(&format!(
                "zenoh://stall/{pid}/block?connect=tcp/127.0.0.1:{port}"
            )),
            &PublishOptions::default().policy(Policy::Block),
        )
        .await
        .expect("publisher");
    publ.wait_for_subscribers(1, T).await.expect("subscriber");
    let before = rss_bytes();
    let n = 100u64;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            publ.send(Frame::new(pattern::make(i, 1 << 20)))
                .await
                .expect("send");
        }
        publ.close().await.expect("close");
        publ
    });
    // Stalled for 3 s (well inside Zenoh's 10 s lease): the sender is held.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        !sender.is_finished(),
        "100 MiB accepted by a stalled subscriber"
    );
    assert!(grown < 80 << 20, "RSS grew by {} MiB", grown >> 20);
    for i in 0..n {
        let f = recv(&mut sub).await.expect("block loses nothing");
        assert_eq!(f.seq, i);
        assert!(pattern::check(i, &f.payload));
    }
    let publ = tokio::time::timeout(T, sender)
        .await
        .expect("sender ends")
        .unwrap();
    assert_eq!(publ.stats().frames_sent, n);
    assert_eq!(sub.stats().lagged, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_configuration_on_one_host() {
    let url = format!("zenoh://zeroconf/{}", std::process::id());
    let mut sub = ZenohTransport
        .subscribe(&ep(&url), &Default::default())
        .await
        .expect("subscriber");
    let mut publ = ZenohTransport
        .publish(&ep(&url), &Default::default())
        .await
        .expect("publisher");
    assert_eq!(publ.endpoint().url(), url);
    publ.wait_for_subscribers(1, T)
        .await
        .expect("found without configuration");
    // Fewer frames than `queue`: `close` returns before the subscriber reads.
    for i in 0..5 {
        publ.send(Frame::new(pattern::make(i, 100_000)))
            .await
            .unwrap();
    }
    publ.close().await.unwrap();
    for i in 0..5 {
        assert_eq!(recv(&mut sub).await.unwrap().seq, i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_clear_errors() {
    let t = ZenohTransport;
    let err = t
        .capabilities(&ep("zenoh://k?bogus=1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bogus") && err.contains("connect") && err.contains("mode"),
        "{err}"
    );
    let err = t
        .capabilities(&ep("zenoh://k?mode=router"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("peer, client"), "{err}");
    let err = t
        .capabilities(&ep("zenoh://k?mode=client"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("connect"), "{err}");
    let err = t
        .capabilities(&ep("zenoh://k?connect=nonsense"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("connect"), "{err}");
    let err = t.capabilities(&ep("zenoh://a//b")).unwrap_err().to_string();
    assert!(err.contains("key expression"), "{err}");
    let err = t
        .publish(&ep("zenoh://k?policy=fail"), &Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("block, drop-oldest"), "{err}");
    let err = t
        .subscribe(
            &ep("zenoh://k?config=/nonexistent.json5"),
            &Default::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("config"), "{err}");
    for bad in ["rx_buffer=0", "rx_buffer=2GiB", "rx_buffer=lots"] {
        let err = t
            .capabilities(&ep(&format!("zenoh://k?{bad}")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rx_buffer"), "{bad}: {err}");
    }
    t.capabilities(&ep("zenoh://k?rx_buffer=64KiB")).unwrap();
}

/// Zenoh panics when it blocks in place on a current-thread runtime (in
/// `open` and `close`); the backend opens and closes sessions off it.
#[tokio::test]
async fn works_on_a_current_thread_runtime() {
    let port = free_port();
    let key = format!("ct/{}", std::process::id());
    let mut sub = ZenohTransport
        .subscribe(
            &ep(&format!("zenoh://{key}?listen=tcp/127.0.0.1:{port}")),
            &Default::default(),
        )
        .await
        .expect("subscriber");
    let mut publ = ZenohTransport
        .publish(
            &ep(&format!("zenoh://{key}?connect=tcp/127.0.0.1:{port}")),
            &Default::default(),
        )
        .await
        .expect("publisher");
    publ.wait_for_subscribers(1, T)
        .await
        .expect("subscriber seen");
    publ.send(Frame::new(pattern::make(0, 1000)))
        .await
        .expect("send");
    publ.close().await.expect("close");
    assert_eq!(recv(&mut sub).await.expect("frame").seq, 0);
    drop(publ);
    assert!(matches!(
        recv(&mut sub).await,
        Err(Error::Disconnected { .. })
    ));
}
