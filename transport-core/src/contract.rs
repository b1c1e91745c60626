//! The parts of the backend contract that every backend enforces the same
//! way, written once: payload and frame checks, topic filtering, owned
//! copies, send/receive counters and the subscriber count that
//! `wait_for_subscribers` waits on.
//!
//! A backend keeps one [`PayloadLimit`] (from its `max_payload=` option) and
//! one [`SubscriberWatch`], and calls them from its [`Publisher`] methods:
//!
//! ```
//! use std::time::Duration;
//! use transport_core::contract::{PayloadLimit, SubscriberWatch};
//! use transport_core::{Frame, StatCounters};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let limit = PayloadLimit::new(1024);
//! assert!(limit.check_frame(&Frame::new(vec![0u8; 1024])).is_ok());
//! assert!(limit.check(1025).is_err());
//!
//! let watch = SubscriberWatch::new(std::sync::Arc::new(StatCounters::default()));
//! watch.joined();
//! watch.wait_for(1, Duration::from_secs(1)).await.unwrap();
//! assert!(watch.wait_for(2, Duration::from_millis(10)).await.is_err());
//! # });
//! ```
//!
//! [`Publisher`]: crate::Publisher

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::{
    COMMON_PARAMS, Endpoint, Error, Frame, Loan, Policy, RecvMode, Result, SeqTracker,
    StatCounters, Stats, codec,
};

/// The largest payload an endpoint accepts, and the URL option that sets it
/// (named in the error, so that a user knows what to change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimit {
    /// Largest payload in bytes.
    pub limit: u64,
    /// The option that sets it, e.g. `max_payload`.
    pub option: &'static str,
}

impl PayloadLimit {
    /// A limit set by the `max_payload=` option.
    pub const fn new(limit: u64) -> PayloadLimit {
        PayloadLimit::named(limit, "max_payload")
    }

    /// A limit set by another option (e.g. a pool's `slot_size=`).
    pub const fn named(limit: u64, option: &'static str) -> PayloadLimit {
        PayloadLimit { limit, option }
    }

    /// [`Error::PayloadTooLarge`] when `len` bytes exceed the limit.
    pub fn check(&self, len: usize) -> Result<()> {
        let len = len as u64;
        if len > self.limit {
            return Err(Error::PayloadTooLarge {
                len,
                limit: self.limit,
                option: self.option,
            });
        }
        Ok(())
    }

    /// Everything a publisher checks before it waits for anything or uses a
    /// sequence number: the payload length, that the layout fits the payload,
    /// and the envelope's header limits (topic, metadata, dims, trace).
    pub fn check_frame(&self, frame: &Frame) -> Result<()> {
        self.check(frame.payload.len())?;
        frame.layout.check(frame.payload.len() as u64)?;
        codec::check_header(frame)
    }

    /// A heap loan of `len` bytes, refused like an oversized payload.
    pub fn heap_loan(&self, len: usize) -> Result<Loan> {
        self.check(len)?;
        Ok(Loan::heap(len))
    }
}

/// Checks an endpoint's parameters: only [`COMMON_PARAMS`] and `params` are
/// accepted (an unknown one is an error that lists them), and the common
/// `policy=` and `recv=` must parse, so that a bad value is refused on both
/// ends.
pub fn check_params(endpoint: &Endpoint, params: &[&str]) -> Result<()> {
    let accepted: Vec<&str> = COMMON_PARAMS.iter().chain(params).copied().collect();
    endpoint.check_params(&accepted)?;
    endpoint.parse_param::<Policy>("policy")?;
    endpoint.parse_param::<RecvMode>("recv")?;
    Ok(())
}

/// The `queue=N` option (frames queued per subscriber): `default` when
/// absent, at least 1.
pub fn queue_param(endpoint: &Endpoint, default: usize) -> Result<usize> {
    let queue = endpoint.parse_param::<usize>("queue")?.unwrap_or(default);
    if queue == 0 {
        return Err(Error::InvalidOption {
            option: "queue".into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(queue)
}

/// The `max_payload=SIZE` option: `default` when absent, at most what the
/// envelope can carry ([`codec::MAX_PAYLOAD`]).
pub fn max_payload_param(endpoint: &Endpoint, default: u64) -> Result<PayloadLimit> {
    let max_payload = endpoint.size("max_payload")?.unwrap_or(default);
    if max_payload > codec::MAX_PAYLOAD {
        return Err(Error::InvalidOption {
            option: "max_payload".into(),
            reason: format!("at most {}", codec::MAX_PAYLOAD),
        });
    }
    Ok(PayloadLimit::new(max_payload))
}

/// Whether a frame on `topic` goes to a subscriber of `prefix` (a plain byte
/// prefix, as in ZeroMQ; the empty prefix takes everything).
pub fn topic_matches(prefix: &str, topic: &str) -> bool {
    topic.as_bytes().starts_with(prefix.as_bytes())
}

/// Makes `frame`'s payload a private copy unless it already is one (`private`
/// is what the backend knows about where the payload lives): an owned-mode
/// frame must not pin memory someone else owns (a shared slot, a buffer the
/// sender kept).
pub fn make_owned(frame: &mut Frame, private: bool) {
    if !private {
        frame.payload = Bytes::copy_from_slice(&frame.payload);
    }
}

/// Counts one sent frame of `payload_len` bytes.
pub fn count_sent(stats: &StatCounters, payload_len: usize) {
    StatCounters::add(&stats.frames_sent, 1);
    StatCounters::add(&stats.bytes_sent, payload_len as u64);
}

/// Counts one received frame and stamps its last hop's receive time: what
/// every `recv` does with a frame it returns.
pub fn count_received(stats: &StatCounters, frame: &mut Frame) {
    frame.stamp_received();
    StatCounters::add(&stats.frames_received, 1);
    StatCounters::add(&stats.bytes_received, frame.payload.len() as u64);
}

/// What a subscriber does with each frame it takes off its queue, in the
/// order the contract needs: an owned copy where the mode asks for one (for
/// wanted frames only), sequence tracking (every frame, wanted or not, so
/// that skipped topics are not taken for lag), the topic filter, then the
/// receive stamp and counters.
///
/// Synchronous and holding no future, so a `recv` built on it stays
/// cancellation-safe as long as its only `.await` is the one that takes a
/// frame off the queue:
///
/// ```ignore
/// loop {
///     if let Some(f) = self.delivery.take_pending() {
///         return Ok(f);
///     }
///     let (frame, private) = self.queue.next().await?;
///     if let Some(f) = self.delivery.accept(frame, private)? {
///         return Ok(f);
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Delivery {
    topic_prefix: String,
    mode: RecvMode,
    tracker: SeqTracker,
    stats: Arc<StatCounters>,
}

impl Delivery {
    /// Delivery of frames on topics under `topic_prefix` in `mode`; `first_seq`
    /// is the sequence number the subscriber's stream starts at, when known
    /// (so frames lost before the first one read count as lag too).
    pub fn new(topic_prefix: String, mode: RecvMode, first_seq: Option<u64>) -> Delivery {
        let stats = Arc::new(StatCounters::default());
        let mut tracker = SeqTracker::new(stats.clone());
        if let Some(seq) = first_seq {
            tracker.expect_next(seq);
        }
        Delivery {
            topic_prefix,
            mode,
            tracker,
            stats,
        }
    }

    /// The receive mode in force.
    pub fn mode(&self) -> RecvMode {
        self.mode
    }

    /// The subscriber's counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// The frame held back by the last [`Error::Lagged`], if it is wanted;
    /// return it before taking another.
    pub fn take_pending(&mut self) -> Option<Frame> {
        let f = self.tracker.take_pending()?;
        self.finish(f)
    }

    /// A frame taken off the queue (`private`: its payload pins nobody
    /// else's memory): `Ok(Some)` to return, `Ok(None)` for another topic,
    /// [`Error::Lagged`] when frames were lost before it (it is then pending).
    pub fn accept(&mut self, mut frame: Frame, private: bool) -> Result<Option<Frame>> {
        if self.mode == RecvMode::Owned && topic_matches(&self.topic_prefix, &frame.topic) {
            make_owned(&mut frame, private);
        }
        let f = self.tracker.accept(frame)?;
        Ok(self.finish(f))
    }

    fn finish(&self, mut frame: Frame) -> Option<Frame> {
        if !topic_matches(&self.topic_prefix, &frame.topic) {
            return None;
        }
        count_received(&self.stats, &mut frame);
        Some(frame)
    }
}

/// The number of connected subscribers, kept by a publisher, that
/// `wait_for_subscribers` waits on; mirrored into [`StatCounters::subscribers`].
///
/// The one primitive behind every backend's `wait_for_subscribers`: the
/// backend calls [`joined`](Self::joined) / [`left`](Self::left) (or
/// [`set`](Self::set)) as subscribers come and go, and its
/// `wait_for_subscribers` is `self.watch.wait_for(n, timeout).await`.
#[derive(Debug)]
pub struct SubscriberWatch {
    count: watch::Sender<usize>,
    stats: Arc<StatCounters>,
}

impl SubscriberWatch {
    /// No subscribers yet; the count is mirrored into `stats`.
    pub fn new(stats: Arc<StatCounters>) -> SubscriberWatch {
        stats.subscribers.store(0, Ordering::Relaxed);
        SubscriberWatch {
            count: watch::Sender::new(0),
            stats,
        }
    }

    /// Subscribers connected now.
    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// One subscriber more.
    pub fn joined(&self) {
        self.update(|n| n.saturating_add(1));
    }

    /// One subscriber fewer.
    pub fn left(&self) {
        self.update(|n| n.saturating_sub(1));
    }

    /// Sets the count (for backends that count by looking).
    pub fn set(&self, n: usize) {
        self.update(|_| n);
    }

    fn update(&self, f: impl FnOnce(usize) -> usize) {
        self.count.send_modify(|n| {
            *n = f(*n);
            self.stats.subscribers.store(*n as u64, Ordering::Relaxed);
        });
    }

    /// Waits until at least `n` subscribers are connected, or fails with
    /// [`Error::Timeout`] after `timeout`. Cancellation-safe.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.count.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await {
            Ok(_) => Ok(()),
            // The sender lives in `self`: it cannot be dropped while we wait.
            Err(_) => Err(Error::timeout(timeout, "for subscribers to connect")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_their_option_and_check_the_layout() {
        let l = PayloadLimit::named(8, "slot_size");
        assert!(l.check(8).is_ok());
        match l.check(9) {
            Err(Error::PayloadTooLarge { len, limit, option }) => {
                assert_eq!((len, limit, option), (9, 8, "slot_size"));
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        let bad = Frame::new(vec![0u8; 5]).with_layout(crate::Layout::Image {
            width: 2,
            height: 2,
            format: crate::PixelFormat::Gray8,
        });
        assert!(matches!(l.check_frame(&bad), Err(Error::InvalidLayout(_))));
        let long_topic = Frame::new(vec![0u8; 1]).with_topic("t".repeat(1 << 20));
        assert!(PayloadLimit::new(8).check_frame(&long_topic).is_err());
        assert!(l.heap_loan(9).is_err());
        assert_eq!(l.heap_loan(8).expect("loan").len(), 8);
    }

    #[test]
    fn common_options_are_checked_once() {
        let e = |q: &str| Endpoint::parse(&format!("x://a?{q}")).expect("url");
        assert!(check_params(&e("queue=2&policy=fail&recv=view"), &["queue"]).is_ok());
        let unknown = check_params(&e("slots=2"), &["queue"]).expect_err("unknown");
        assert!(
            unknown.to_string().contains("policy, recv, queue"),
            "{unknown}"
        );
        assert!(check_params(&e("policy=sometimes"), &[]).is_err());
        assert!(check_params(&e("recv=maybe"), &[]).is_err());
        assert_eq!(queue_param(&e("queue=3"), 16).expect("queue"), 3);
        assert_eq!(queue_param(&e("x=1"), 16).expect("default"), 16);
        assert!(queue_param(&e("queue=0"), 16).is_err());
        let big = format!("max_payload={}", codec::MAX_PAYLOAD + 1);
        assert!(max_payload_param(&e(&big), 1).is_err());
        assert_eq!(
            max_payload_param(&e("max_payload=2KiB"), 1)
                .expect("size")
                .limit,
            2048
        );
    }

    #[test]
    fn prefixes_match_bytewise() {
        assert!(topic_matches("", "anything"));
        assert!(topic_matches("cam/", "cam/0"));
        assert!(!topic_matches("cam/0", "cam/"));
        assert!(!topic_matches("b", "a"));
    }

    #[test]
    fn owned_copies_share_nothing() {
        let keep = Bytes::from(vec![1u8, 2, 3]);
        let mut f = Frame::new(keep.clone());
        make_owned(&mut f, false);
        assert_eq!(f.payload, keep);
        assert_ne!(f.payload.as_ptr(), keep.as_ptr());
        let mut g = Frame::new(keep.clone());
        make_owned(&mut g, true);
        assert_eq!(g.payload.as_ptr(), keep.as_ptr());
    }

    #[test]
    fn delivery_copies_tracks_filters_and_counts() {
        let frame = |seq: u64, topic: &str, payload: &Bytes| {
            let mut f = Frame::new(payload.clone()).with_topic(topic);
            f.seq = seq;
            f
        };
        let kept = Bytes::from(vec![7u8; 4]);
        let mut d = Delivery::new("cam/".into(), RecvMode::Owned, Some(5));
        let a = d.accept(frame(5, "cam/0", &kept), false).expect("in order");
        let a = a.expect("wanted");
        assert_ne!(a.payload.as_ptr(), kept.as_ptr(), "owned: a copy");
        assert!(
            d.accept(frame(6, "mic/0", &kept), false)
                .expect("ok")
                .is_none()
        );
        // 7 and 8 lost: one lag report, then the frame.
        match d.accept(frame(9, "cam/1", &kept), true) {
            Err(Error::Lagged { missed: 2 }) => {}
            other => panic!("expected a lag of 2, got {other:?}"),
        }
        let b = d.take_pending().expect("the held frame");
        assert_eq!(
            (b.seq, b.payload.as_ptr()),
            (9, kept.as_ptr()),
            "private: shared"
        );
        assert!(d.take_pending().is_none());
        let s = d.stats();
        assert_eq!((s.frames_received, s.bytes_received, s.lagged), (2, 8, 2));
        // Frames lost before the first one read count too.
        let mut late = Delivery::new(String::new(), RecvMode::View, Some(3));
        assert!(matches!(
            late.accept(frame(4, "x", &kept), false),
            Err(Error::Lagged { missed: 1 })
        ));
        let v = late.take_pending().expect("pending");
        assert_eq!(v.payload.as_ptr(), kept.as_ptr(), "view: never a copy");
    }

    #[tokio::test]
    async fn the_watch_wakes_waiters_and_mirrors_stats() {
        let stats = Arc::new(StatCounters::default());
        let w = Arc::new(SubscriberWatch::new(stats.clone()));
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.wait_for(2, Duration::from_secs(5)).await }
        });
        w.joined();
        w.joined();
        waiter.await.expect("join").expect("woken");
        assert_eq!(stats.subscribers.load(Ordering::Relaxed), 2);
        w.left();
        w.left();
        w.left();
        assert_eq!(w.count(), 0, "never below zero");
        w.set(3);
        assert_eq!(stats.snapshot().subscribers, 3);
        match w.wait_for(4, Duration::from_millis(20)).await {
            Err(Error::Timeout { .. }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}
