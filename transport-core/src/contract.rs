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

use crate::{Error, Frame, Loan, Result, StatCounters, codec};

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
            Err(_) => Err(Error::Timeout(timeout, "for subscribers to connect")),
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
            Err(Error::Timeout(..)) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}
