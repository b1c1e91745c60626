//! Reconnect, once for every backend: a subscriber that outlives its publisher.
//!
//! With reconnect on (the `reconnect=on` URL option or
//! [`SubscribeOptions::reconnect`]), [`subscribe`] returns a [`Reconnecting`]
//! subscriber over any backend. When its publisher goes away (the backend's
//! `recv` returns [`Error::Disconnected`]: the publisher was dropped, its
//! process died, the link stopped answering), it subscribes again to the same
//! endpoint, retrying with a bounded exponential backoff (`reconnect_min` to
//! `reconnect_max`) for up to `reconnect_timeout`, and carries on:
//!
//! - the first `recv` after a reconnect returns [`Error::Reconnected`] once,
//!   so the gap is never silent (frames sent while no connection was up are
//!   missed; the new publisher's sequence numbers may start again at 0), then
//!   the new publisher's frames follow. Each connection has its own sequence
//!   tracking, so a restarted numbering is not reported as lag;
//! - if no publisher comes back within `reconnect_timeout`, `recv` returns
//!   [`Error::Disconnected`] (and keeps doing so);
//! - errors that retrying cannot fix (a bad option, another protocol
//!   version) end the subscriber at once.
//!
//! The initial subscribe waits the same way for a publisher that is not
//! there yet. The reconnect options are removed from the URL before the
//! backend sees it, so backends need no change. Reconnecting happens inside
//! `recv` (no task of its own): `recv` stays cancellation-safe, because the
//! connection attempt in progress is kept in the subscriber and resumed by
//! the next `recv`; nothing runs once the subscriber is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    DynTransport, Endpoint, Error, Frame, RecvMode, Result, Stats, SubscribeOptions, Subscriber,
};

/// URL parameters of reconnect, removed before the backend validates its own.
pub const RECONNECT_PARAMS: [&str; 4] = [
    "reconnect",
    "reconnect_min",
    "reconnect_max",
    "reconnect_timeout",
];

/// Reconnect settings; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconnect {
    /// First wait between two attempts (`reconnect_min`, default 50 ms).
    pub min_backoff: Duration,
    /// Longest wait between two attempts (`reconnect_max`, default 500 ms):
    /// a publisher that appears is found at most this long (plus a connect)
    /// after it started.
    pub max_backoff: Duration,
    /// Give up after this long without a publisher (`reconnect_timeout`,
    /// default 60 s; `None`, written `never`, waits for ever: then bound
    /// `recv` yourself, e.g. with `tokio::time::timeout`).
    pub timeout: Option<Duration>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl Reconnect {
    /// Sets the backoff range.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    /// Sets how long to wait for a publisher (`None`: for ever).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    fn check(self) -> Result<Reconnect> {
        let bad = |option: &str, reason: String| Error::InvalidOption {
            option: option.into(),
            reason,
        };
        if self.min_backoff.is_zero() {
            return Err(bad(
                "reconnect_min",
                "must be more than 0, e.g. 50ms".into(),
            ));
        }
        if self.max_backoff < self.min_backoff {
            return Err(bad(
                "reconnect_max",
                format!(
                    "{:?} is less than reconnect_min {:?}",
                    self.max_backoff, self.min_backoff
                ),
            ));
        }
        if self.max_backoff > Duration::from_secs(3600) {
            return Err(bad("reconnect_max", "at most 1h".into()));
        }
        Ok(self)
    }

    /// The reconnect settings in force for `endpoint` and `opts` (the
    /// options field, else the URL's `reconnect*=` parameters, else off),
    /// and the endpoint without those parameters, for the backend.
    pub fn resolve(
        opts: &SubscribeOptions,
        endpoint: &Endpoint,
    ) -> Result<(Option<Reconnect>, Endpoint)> {
        let on = match endpoint.param("reconnect") {
            None => None,
            Some("on" | "true" | "1") => Some(true),
            Some("off" | "false" | "0") => Some(false),
            Some(v) => {
                return Err(Error::InvalidOption {
                    option: "reconnect".into(),
                    reason: format!("`{v}`: accepted: on, off"),
                });
            }
        };
        let mut url = Reconnect::default();
        let mut tuned = None;
        if let Some(d) = endpoint.duration("reconnect_min")? {
            url.min_backoff = d;
            tuned = Some("reconnect_min");
        }
        if let Some(d) = endpoint.duration("reconnect_max")? {
            url.max_backoff = d;
            tuned = Some("reconnect_max");
        }
        match endpoint.param("reconnect_timeout") {
            None => {}
            Some("never") => {
                url.timeout = None;
                tuned = Some("reconnect_timeout");
            }
            Some(_) => {
                url.timeout = endpoint.duration("reconnect_timeout")?;
                tuned = Some("reconnect_timeout");
            }
        }
        let stripped = endpoint.clone().without_params(&RECONNECT_PARAMS);
        let chosen = match (opts.reconnect, on) {
            (Some(r), _) => Some(r.check()?),
            (None, Some(true)) => Some(url.check()?),
            (None, _) => {
                if let Some(option) = tuned {
                    return Err(Error::InvalidOption {
                        option: option.into(),
                        reason: "has no effect without reconnect=on".into(),
                    });
                }
                None
            }
        };
        Ok((chosen, stripped))
    }
}

/// True for the errors of a subscribe whose publisher is not there (yet):
/// no listener, no socket file or segment, a connect or handshake that
/// timed out, a publisher that went away during the handshake. Retrying can
/// fix these; nothing else.
pub fn is_not_there_yet(e: &Error) -> bool {
    matches!(
        e,
        Error::Io { .. } | Error::Timeout { .. } | Error::Disconnected { .. }
    )
}

/// Subscribes to `endpoint` through `transport`, with reconnect when the
/// options or the URL ask for it (see the [module docs](self)); without, it
/// is `transport.subscribe_dyn` on the endpoint minus the reconnect options.
pub async fn subscribe(
    transport: Arc<dyn DynTransport>,
    endpoint: &Endpoint,
    opts: &SubscribeOptions,
) -> Result<Box<dyn Subscriber>> {
    let (reconnect, endpoint) = Reconnect::resolve(opts, endpoint)?;
    let mut opts = opts.clone();
    opts.reconnect = None;
    match reconnect {
        None => transport.subscribe_dyn(&endpoint, &opts).await,
        Some(r) => Ok(Box::new(
            Reconnecting::connect(transport, endpoint, opts, r).await?,
        )),
    }
}

/// Subscribes, retrying with a backoff from `backoff.0` doubling up to
/// `backoff.1` while the publisher is not there yet, for up to `patience`
/// (`None`: for ever). Returns the last error when it gives up, or at once
/// an error that retrying cannot fix.
pub async fn subscribe_patiently(
    transport: Arc<dyn DynTransport>,
    endpoint: Endpoint,
    opts: SubscribeOptions,
    backoff: (Duration, Duration),
    patience: Option<Duration>,
) -> Result<Box<dyn Subscriber>> {
    let (min, max) = backoff;
    let deadline = patience.map(|p| tokio::time::Instant::now() + p);
    let mut wait = min;
    loop {
        let attempt = transport.subscribe_dyn(&endpoint, &opts);
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d, attempt).await {
                Ok(r) => r,
                Err(_) => Err(Error::timeout(
                    patience.unwrap_or_default(),
                    "for a publisher (reconnect_timeout)",
                )),
            },
            None => attempt.await,
        };
        match result {
            Ok(sub) => return Ok(sub),
            Err(e) if is_not_there_yet(&e) => {
                let now = tokio::time::Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Err(e);
                }
                let until = now + wait;
                tokio::time::sleep_until(deadline.map_or(until, |d| d.min(until))).await;
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    return Err(e);
                }
                wait = (wait * 2).min(max);
            }
            Err(e) => return Err(e),
        }
    }
}

type Attempt = Pin<Box<dyn Future<Output = Result<Box<dyn Subscriber>>> + Send>>;

enum State {
    Connected(Box<dyn Subscriber>),
    /// The publisher went away at `since` for `reason`; `attempt` is looking
    /// for a new one (kept here so that a cancelled `recv` loses nothing).
    Waiting {
        since: tokio::time::Instant,
        reason: String,
        // Only touched through `&mut self` (`get_mut`), never locked
        // concurrently: the mutex is there to make the future `Sync`.
        attempt: Mutex<Attempt>,
    },
    Ended(String),
}

/// A subscriber that follows its publisher across restarts; see the
/// [module docs](self). Made by [`subscribe`] or [`Reconnecting::connect`].
pub struct Reconnecting {
    transport: Arc<dyn DynTransport>,
    endpoint: Endpoint,
    opts: SubscribeOptions,
    cfg: Reconnect,
    mode: RecvMode,
    state: State,
    /// Counters of the connections before the current one.
    before: Stats,
    reconnects: u64,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Connected(_) => "connected",
            State::Waiting { .. } => "waiting for a publisher",
            State::Ended(_) => "ended",
        };
        f.debug_struct("Reconnecting")
            .field("endpoint", &self.endpoint.url())
            .field("state", &state)
            .field("reconnects", &self.reconnects)
            .finish_non_exhaustive()
    }
}

impl Reconnecting {
    /// Subscribes to `endpoint` (which must not carry the reconnect URL
    /// options: see [`Reconnect::resolve`]), waiting for a publisher as
    /// `cfg` says.
    pub async fn connect(
        transport: Arc<dyn DynTransport>,
        endpoint: Endpoint,
        opts: SubscribeOptions,
        cfg: Reconnect,
    ) -> Result<Reconnecting> {
        let cfg = cfg.check()?;
        // Options are checked once, up front: a bad one is an error now, not
        // a retry loop.
        transport.capabilities(&endpoint)?;
        let first = subscribe_patiently(
            transport.clone(),
            endpoint.clone(),
            opts.clone(),
            (cfg.min_backoff, cfg.max_backoff),
            cfg.timeout,
        )
        .await?;
        Ok(Reconnecting {
            transport,
            endpoint,
            opts,
            cfg,
            mode: first.recv_mode(),
            state: State::Connected(first),
            before: Stats::default(),
            reconnects: 0,
        })
    }

    /// Times a publisher was found again after the first one.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    fn start_waiting(&mut self, reason: String) {
        if let State::Connected(sub) = &self.state {
            self.before = add(self.before, sub.stats());
        }
        let attempt: Attempt = Box::pin(subscribe_patiently(
            self.transport.clone(),
            self.endpoint.clone(),
            self.opts.clone(),
            (self.cfg.min_backoff, self.cfg.max_backoff),
            self.cfg.timeout,
        ));
        self.state = State::Waiting {
            since: tokio::time::Instant::now(),
            reason,
            attempt: Mutex::new(attempt),
        };
    }
}

fn add(a: Stats, b: Stats) -> Stats {
    Stats {
        frames_sent: a.frames_sent + b.frames_sent,
        bytes_sent: a.bytes_sent + b.bytes_sent,
        frames_received: a.frames_received + b.frames_received,
        bytes_received: a.bytes_received + b.bytes_received,
        dropped: a.dropped + b.dropped,
        lagged: a.lagged + b.lagged,
        queued: b.queued,
        subscribers: b.subscribers,
        reconnects: a.reconnects + b.reconnects,
    }
}

#[async_trait]
impl Subscriber for Reconnecting {
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            match &mut self.state {
                State::Connected(sub) => match sub.recv().await {
                    Err(e) if e.is_disconnect() => self.start_waiting(e.to_string()),
                    other => return other,
                },
                State::Waiting {
                    since,
                    reason,
                    attempt,
                } => {
                    // Cancellation-safe: the attempt lives in `self`.
                    let attempt = attempt.get_mut().unwrap_or_else(|p| p.into_inner());
                    match attempt.as_mut().await {
                        Ok(sub) => {
                            let after = since.elapsed();
                            let reason = std::mem::take(reason);
                            self.reconnects += 1;
                            self.state = State::Connected(sub);
                            return Err(Error::Reconnected { after, reason });
                        }
                        Err(e) => {
                            let why = format!(
                                "no publisher came back on {} ({e}); it went away: {reason}",
                                self.endpoint
                            );
                            self.state = State::Ended(why);
                            if !is_not_there_yet(&e) {
                                // Say what retrying could not fix, once.
                                return Err(e);
                            }
                        }
                    }
                }
                State::Ended(why) => return Err(Error::disconnected("reconnect", why.clone())),
            }
        }
    }

    fn recv_mode(&self) -> RecvMode {
        self.mode
    }

    fn stats(&self) -> Stats {
        let now = match &self.state {
            State::Connected(sub) => sub.stats(),
            _ => Stats::default(),
        };
        Stats {
            reconnects: self.reconnects,
            ..add(self.before, now)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::*;
    use crate::{Capabilities, PublishOptions, Publisher};

    const DOWN: u8 = 0;
    const UP: u8 = 1;
    const BROKEN: u8 = 2;

    /// A backend whose publisher is up, down, or misconfigured at will; its
    /// subscribers deliver two frames, then report the publisher gone.
    struct Fake(Arc<AtomicU8>);

    struct FakeSub(u64);

    #[async_trait]
    impl Subscriber for FakeSub {
        async fn recv(&mut self) -> Result<Frame> {
            if self.0 < 2 {
                self.0 += 1;
                Ok(Frame {
                    seq: self.0 - 1,
                    ..Frame::new(vec![1u8; 8])
                })
            } else {
                Err(Error::disconnected(
                    "reconnect",
                    "the publisher closed the connection",
                ))
            }
        }
        fn recv_mode(&self) -> RecvMode {
            RecvMode::Owned
        }
        fn stats(&self) -> Stats {
            Stats {
                frames_received: self.0,
                ..Stats::default()
            }
        }
    }

    #[async_trait]
    impl DynTransport for Fake {
        fn schemes(&self) -> &'static [&'static str] {
            &["fake"]
        }
        fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
            endpoint.check_params(&[])?;
            Ok(Capabilities::new("fake"))
        }
        async fn publish_dyn(
            &self,
            _: &Endpoint,
            _: &PublishOptions,
        ) -> Result<Box<dyn Publisher>> {
            Err(Error::Unsupported {
                backend: "fake",
                what: "publish".into(),
            })
        }
        async fn subscribe_dyn(
            &self,
            endpoint: &Endpoint,
            _: &SubscribeOptions,
        ) -> Result<Box<dyn Subscriber>> {
            endpoint.check_params(&[])?;
            match self.0.load(Ordering::SeqCst) {
                UP => Ok(Box::new(FakeSub(0))),
                DOWN => Err(Error::io(
                    "connecting (is a publisher running there?)",
                    std::io::ErrorKind::ConnectionRefused.into(),
                )),
                _ => Err(Error::InvalidOption {
                    option: "queue".into(),
                    reason: "the new publisher wants another one".into(),
                }),
            }
        }
    }

    fn ep(url: &str) -> Endpoint {
        Endpoint::parse(url).expect("url")
    }

    fn fast() -> Reconnect {
        Reconnect::default()
            .backoff(Duration::from_millis(5), Duration::from_millis(20))
            .timeout(Some(Duration::from_millis(400)))
    }

    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("timed out")
    }

    #[test]
    fn url_options_are_parsed_checked_and_stripped() {
        let none = SubscribeOptions::default();
        let (r, e) = Reconnect::resolve(&none, &ep("tcp://h:1?queue=2")).unwrap();
        assert_eq!((r, e.url()), (None, "tcp://h:1?queue=2"));
        let (r, e) = Reconnect::resolve(
            &none,
            &ep("tcp://h:1?reconnect=on&queue=2&reconnect_min=10ms&reconnect_max=1s&reconnect_timeout=never"),
        )
        .unwrap();
        assert_eq!(e.url(), "tcp://h:1?queue=2");
        let r = r.expect("on");
        assert_eq!(
            (r.min_backoff, r.max_backoff, r.timeout),
            (Duration::from_millis(10), Duration::from_secs(1), None)
        );
        let (r, e) = Reconnect::resolve(&none, &ep("tcp://h:1?reconnect=off")).unwrap();
        assert_eq!((r, e.url()), (None, "tcp://h:1"));
        // The options field wins over the URL.
        let (r, _) = Reconnect::resolve(
            &SubscribeOptions::default().reconnect(fast()),
            &ep("tcp://h:1?reconnect=off"),
        )
        .unwrap();
        assert_eq!(r, Some(fast()));
        for (url, option) in [
            ("tcp://h:1?reconnect=maybe", "reconnect"),
            ("tcp://h:1?reconnect=on&reconnect_min=0s", "reconnect_min"),
            (
                "tcp://h:1?reconnect=on&reconnect_min=2s&reconnect_max=1s",
                "reconnect_max",
            ),
            (
                "tcp://h:1?reconnect=on&reconnect_timeout=soon",
                "reconnect_timeout",
            ),
            ("tcp://h:1?reconnect_max=1s", "reconnect_max"),
        ] {
            match Reconnect::resolve(&none, &ep(url)) {
                Err(Error::InvalidOption { option: o, .. }) => assert_eq!(o, option, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn bad_options_fail_at_once_and_a_missing_publisher_after_the_timeout() {
        let state = Arc::new(AtomicU8::new(DOWN));
        let t: Arc<dyn DynTransport> = Arc::new(Fake(state.clone()));
        let opts = SubscribeOptions::default().reconnect(fast());
        let Err(e) = within(subscribe(t.clone(), &ep("fake://x?slots=1"), &opts)).await else {
            panic!("a bad option is an error")
        };
        assert!(matches!(e, Error::InvalidOption { .. }), "{e}");
        let start = std::time::Instant::now();
        let Err(e) = within(subscribe(t.clone(), &ep("fake://x"), &opts)).await else {
            panic!("no publisher")
        };
        assert!(e.to_string().contains("is a publisher running"), "{e}");
        assert!(start.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn follows_the_publisher_reports_the_gap_once_and_gives_up_in_time() {
        let state = Arc::new(AtomicU8::new(UP));
        let t: Arc<dyn DynTransport> = Arc::new(Fake(state.clone()));
        let mut sub = within(subscribe(
            t,
            &ep("fake://x?reconnect=on&reconnect_min=5ms&reconnect_max=20ms&reconnect_timeout=400ms"),
            &SubscribeOptions::default(),
        ))
        .await
        .unwrap();
        assert_eq!(within(sub.recv()).await.unwrap().seq, 0);
        assert_eq!(within(sub.recv()).await.unwrap().seq, 1);
        state.store(DOWN, Ordering::SeqCst);
        // Cancelled while waiting: nothing lost, no error.
        for _ in 0..3 {
            assert!(
                tokio::time::timeout(Duration::from_millis(30), sub.recv())
                    .await
                    .is_err()
            );
        }
        state.store(UP, Ordering::SeqCst);
        match within(sub.recv()).await {
            Err(e @ Error::Reconnected { .. }) => {
                assert!(e.to_string().contains("closed the connection"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(within(sub.recv()).await.unwrap().seq, 0, "no lag report");
        assert_eq!(within(sub.recv()).await.unwrap().seq, 1);
        let st = sub.stats();
        assert_eq!((st.reconnects, st.frames_received, st.lagged), (1, 4, 0));
        // Gone for good: Disconnected after reconnect_timeout, and it stays so.
        state.store(DOWN, Ordering::SeqCst);
        let start = std::time::Instant::now();
        let e = within(sub.recv()).await.unwrap_err();
        assert!(
            matches!(&e, Error::Disconnected { reason: m, .. } if m.contains("no publisher came back")),
            "{e}"
        );
        assert!(start.elapsed() >= Duration::from_millis(400));
        assert!(within(sub.recv()).await.unwrap_err().is_disconnect());
    }

    #[tokio::test]
    async fn an_error_retrying_cannot_fix_ends_it() {
        let state = Arc::new(AtomicU8::new(UP));
        let t: Arc<dyn DynTransport> = Arc::new(Fake(state.clone()));
        let opts = SubscribeOptions::default().reconnect(fast());
        let mut sub = within(subscribe(t, &ep("fake://x"), &opts)).await.unwrap();
        within(sub.recv()).await.unwrap();
        within(sub.recv()).await.unwrap();
        state.store(BROKEN, Ordering::SeqCst);
        let e = within(sub.recv()).await.unwrap_err();
        assert!(matches!(e, Error::InvalidOption { .. }), "{e}");
        assert!(within(sub.recv()).await.unwrap_err().is_disconnect());
    }
}
