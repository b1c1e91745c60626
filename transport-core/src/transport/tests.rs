//! Tests of the default methods, the forwarding impls and the helpers.

use super::*;

/// A backend that keeps nothing but the default methods and a limit.
struct Fake;

struct FakePub {
    endpoint: Endpoint,
    limit: Option<u64>,
    sent: Vec<usize>,
}

#[async_trait]
impl Publisher for FakePub {
    async fn send(&mut self, frame: Frame) -> Result<()> {
        self.sent.push(frame.payload.len());
        Ok(())
    }
    async fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
    fn subscriber_count(&self) -> Option<usize> {
        Some(0)
    }
    async fn wait_for_subscribers(&mut self, _: usize, timeout: Duration) -> Result<()> {
        Err(Error::timeout(timeout, "for subscribers of the fake"))
    }
    fn max_payload(&self) -> u64 {
        self.limit.unwrap_or(crate::codec::MAX_PAYLOAD)
    }
    fn stats(&self) -> Stats {
        Stats {
            frames_sent: self.sent.len() as u64,
            ..Stats::default()
        }
    }
}

struct FakeSub;

#[async_trait]
impl Subscriber for FakeSub {
    async fn recv(&mut self) -> Result<Frame> {
        Err(Error::disconnected("fake", "nothing is ever sent"))
    }
    fn recv_mode(&self) -> RecvMode {
        RecvMode::View
    }
    fn stats(&self) -> Stats {
        Stats::default()
    }
}

#[async_trait]
impl Transport for Fake {
    type Publisher = FakePub;
    type Subscriber = FakeSub;
    fn schemes(&self) -> &'static [&'static str] {
        &["fake"]
    }
    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        let mut c = Capabilities::new("fake");
        c.max_payload = endpoint.parse_param("max_payload")?.unwrap_or(16);
        Ok(c)
    }
    async fn publish(&self, endpoint: &Endpoint, _: &PublishOptions) -> Result<FakePub> {
        Ok(FakePub {
            endpoint: endpoint.clone(),
            limit: Some(Transport::capabilities(self, endpoint)?.max_payload),
            sent: Vec::new(),
        })
    }
    async fn subscribe(&self, _: &Endpoint, _: &SubscribeOptions) -> Result<FakeSub> {
        Ok(FakeSub)
    }
}

/// Code written against the static API.
async fn round<T: Transport + ?Sized>(t: &T, url: &str) -> Result<(Stats, Capabilities, Error)> {
    let ep = Endpoint::parse(url)?;
    let caps = t.capabilities(&ep)?;
    let mut p = t.publish(&ep, &PublishOptions::default()).await?;
    let mut s = t.subscribe(&ep, &SubscribeOptions::default()).await?;
    let mut l = p.loan(4).await?;
    l.copy_from_slice(b"abcd");
    p.send_loan(l).await?;
    p.send(Frame::new(vec![0u8; 3])).await?;
    assert_eq!(s.recv_mode(), RecvMode::View);
    let e = s.recv().await.expect_err("the fake sends nothing");
    Ok((p.stats(), caps, e))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(f)
}

#[test]
fn a_dyn_transport_is_a_transport() {
    block_on(async {
        let url = "fake://x?max_payload=8";
        let (stats, caps, e) = round(&Fake, url).await.unwrap();
        assert_eq!((stats.frames_sent, caps.max_payload), (2, 8));
        assert!(e.is_disconnect(), "{e}");

        // As the registry holds it, behind Arc<dyn DynTransport>...
        let registered: Arc<dyn DynTransport> = Arc::new(Fake);
        let (stats, caps, e) = round(&registered, url).await.unwrap();
        assert_eq!((stats.frames_sent, caps.max_payload), (2, 8));
        assert!(e.is_disconnect(), "{e}");
        // ... as a bare `dyn DynTransport`, and boxed.
        let (stats, ..) = round(&*registered, url).await.unwrap();
        assert_eq!(stats.frames_sent, 2);
        let boxed: Box<dyn DynTransport> = Box::new(Fake);
        let (stats, ..) = round(&boxed, url).await.unwrap();
        assert_eq!(stats.frames_sent, 2);
        assert_eq!(Transport::schemes(&boxed), ["fake"]);
    });
}

#[test]
fn forwarding_keeps_the_overrides() {
    block_on(async {
        let ep = Endpoint::parse("fake://x?max_payload=5").unwrap();
        let t: Arc<dyn DynTransport> = Arc::new(Fake);
        let mut p = t.publish(&ep, &PublishOptions::default()).await.unwrap();
        // Box<dyn Publisher> forwards max_payload to the backend's override.
        assert_eq!(p.max_payload(), 5);
        let by_ref: &mut Box<dyn Publisher> = &mut p;
        assert_eq!(Publisher::max_payload(&by_ref), 5);
        let e = by_ref.loan(6).await.expect_err("over the fake's limit");
        assert!(
            matches!(
                e,
                Error::PayloadTooLarge {
                    len: 6,
                    limit: 5,
                    ..
                }
            ),
            "{e}"
        );
        let e = by_ref
            .wait_for_subscribers(1, Duration::from_millis(1))
            .await
            .expect_err("the fake has none");
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    });
}

#[test]
fn the_default_loan_enforces_max_payload() {
    block_on(async {
        let mut p = FakePub {
            endpoint: Endpoint::parse("fake://x").unwrap(),
            limit: Some(16),
            sent: Vec::new(),
        };
        assert_eq!(p.loan(16).await.unwrap().len(), 16);
        let e = p.loan(17).await.expect_err("over max_payload");
        assert!(
            matches!(
                e,
                Error::PayloadTooLarge {
                    len: 17,
                    limit: 16,
                    option: "max_payload"
                }
            ),
            "{e}"
        );
        // Without an override, the envelope's limit: a loan that could not
        // be sent is refused rather than allocated (or aborting the process).
        p.limit = None;
        let e = p
            .loan(usize::MAX)
            .await
            .expect_err("over the envelope's limit");
        assert!(matches!(e, Error::PayloadTooLarge { .. }), "{e}");
    });
}
