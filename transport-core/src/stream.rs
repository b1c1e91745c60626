//! Subscribers as [`futures_core::Stream`]s.
//!
//! [`SubscriberExt::into_stream`] turns any [`Subscriber`] into a
//! [`FrameStream`], a `Stream<Item = Result<Frame>>`, so that `StreamExt`
//! combinators, `select!` over streams and `tokio_stream` adapters work on
//! frames.
//!
//! Items are what [`Subscriber::recv`] returns: frames, and
//! [`Error::Lagged`] reports (after which the stream goes on). The stream
//! yields the first error after which the subscriber cannot go on (an
//! [`Error::Disconnected`]) and then ends.
//!
//! Dropping the stream, or a future polling it, is cancellation-safe in the
//! same way as [`Subscriber::recv`]: no frame that was not yielded is lost
//! to a subscriber that is taken back with [`FrameStream::into_inner`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::frame::Frame;
use crate::transport::Subscriber;
use crate::{Error, Result};

type Recv<S> = Pin<Box<dyn Future<Output = (S, Result<Frame>)> + Send>>;

enum State<S> {
    /// Between items: the subscriber is here.
    Idle(S),
    /// A `recv` is in flight; it owns the subscriber and gives it back.
    Receiving(Recv<S>),
    /// The subscriber reported a disconnect; the stream is over.
    Done(Option<S>),
}

/// A [`Subscriber`] as a `Stream<Item = Result<Frame>>`; made by
/// [`SubscriberExt::into_stream`].
pub struct FrameStream<S> {
    state: State<S>,
}

impl<S> fmt::Debug for FrameStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle(_) => "idle",
            State::Receiving(_) => "receiving",
            State::Done(_) => "done",
        };
        f.debug_struct("FrameStream")
            .field("state", &state)
            .finish()
    }
}

impl<S: Subscriber + 'static> FrameStream<S> {
    /// Wraps a subscriber.
    pub fn new(subscriber: S) -> Self {
        FrameStream {
            state: State::Idle(subscriber),
        }
    }

    /// Gives the subscriber back, if no `recv` is in flight (a `recv` started
    /// by a poll that returned `Pending` owns it until it completes; polling
    /// the stream to completion, or dropping it, ends that). Returns `None`
    /// while a `recv` is in flight.
    pub fn into_inner(self) -> Option<S> {
        match self.state {
            State::Idle(s) => Some(s),
            State::Done(s) => s,
            State::Receiving(_) => None,
        }
    }

    /// The subscriber, if no `recv` is in flight.
    pub fn get_ref(&self) -> Option<&S> {
        match &self.state {
            State::Idle(s) => Some(s),
            State::Done(s) => s.as_ref(),
            State::Receiving(_) => None,
        }
    }
}

impl<S: Subscriber + 'static> Stream for FrameStream<S> {
    type Item = Result<Frame>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // `FrameStream` holds only boxed futures and `S` by value, never a
        // self-reference, so it is `Unpin` whatever `S` is.
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, State::Done(None)) {
                State::Done(s) => {
                    this.state = State::Done(s);
                    return Poll::Ready(None);
                }
                State::Idle(mut sub) => {
                    this.state = State::Receiving(Box::pin(async move {
                        let r = sub.recv().await;
                        (sub, r)
                    }));
                }
                State::Receiving(mut fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = State::Receiving(fut);
                        return Poll::Pending;
                    }
                    Poll::Ready((sub, r)) => {
                        let end = matches!(r, Err(Error::Disconnected { .. }));
                        this.state = if end {
                            State::Done(Some(sub))
                        } else {
                            State::Idle(sub)
                        };
                        return Poll::Ready(Some(r));
                    }
                },
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.state {
            State::Done(_) => (0, Some(0)),
            _ => (0, None),
        }
    }
}

impl<S> Unpin for FrameStream<S> {}

/// Conveniences for every [`Subscriber`] (blanket impl).
pub trait SubscriberExt: Subscriber + Sized + 'static {
    /// This subscriber as a `Stream<Item = Result<Frame>>`; see [`FrameStream`].
    ///
    /// ```
    /// # use transport_core::{Frame, Result, RecvMode, Stats, Subscriber, SubscriberExt, async_trait, Error};
    /// # struct Three(u64);
    /// # #[async_trait]
    /// # impl Subscriber for Three {
    /// #     async fn recv(&mut self) -> Result<Frame> {
    /// #         if self.0 == 3 { return Err(Error::disconnected("stream", "done")); }
    /// #         self.0 += 1;
    /// #         let mut f = Frame::new(vec![0u8; 4]);
    /// #         f.seq = self.0 - 1;
    /// #         Ok(f)
    /// #     }
    /// #     fn recv_mode(&self) -> RecvMode { RecvMode::Owned }
    /// #     fn stats(&self) -> Stats { Stats::default() }
    /// # }
    /// # let subscriber = Three(0);
    /// use futures_util::StreamExt;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let seqs: Vec<u64> = subscriber
    ///     .into_stream()
    ///     .filter_map(|r| async move { r.ok() })
    ///     .map(|frame| frame.seq)
    ///     .collect()
    ///     .await;
    /// assert_eq!(seqs, [0, 1, 2]);
    /// # });
    /// ```
    fn into_stream(self) -> FrameStream<Self> {
        FrameStream::new(self)
    }
}

impl<S: Subscriber + Sized + 'static> SubscriberExt for S {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RecvMode, Stats};
    use async_trait::async_trait;
    use futures_util::StreamExt;
    use std::sync::Arc;
    use tokio::sync::Notify;

    /// Yields a frame each time `go` is notified; lags once; then disconnects.
    struct Gated {
        go: Arc<Notify>,
        next: u64,
        end: u64,
    }

    #[async_trait]
    impl Subscriber for Gated {
        async fn recv(&mut self) -> Result<Frame> {
            if self.next == self.end {
                return Err(Error::disconnected("stream", "the test publisher left"));
            }
            self.go.notified().await;
            self.next += 1;
            if self.next == 2 {
                return Err(Error::Lagged { missed: 1 });
            }
            let mut f = Frame::new(vec![self.next as u8]);
            f.seq = self.next;
            Ok(f)
        }
        fn recv_mode(&self) -> RecvMode {
            RecvMode::Owned
        }
        fn stats(&self) -> Stats {
            Stats::default()
        }
    }

    #[tokio::test]
    async fn yields_frames_and_lag_then_ends_after_the_disconnect() {
        let go = Arc::new(Notify::new());
        let mut s = Gated {
            go: go.clone(),
            next: 0,
            end: 3,
        }
        .into_stream();
        let mut items = Vec::new();
        loop {
            go.notify_one();
            match s.next().await {
                Some(r) => items.push(r.map(|f| f.seq).map_err(|e| e.to_string())),
                None => break,
            }
        }
        assert_eq!(items.len(), 4, "{items:?}");
        assert_eq!(items[0], Ok(1));
        assert!(items[1].as_ref().unwrap_err().contains("lagged"));
        assert_eq!(items[2], Ok(3));
        assert!(items[3].as_ref().unwrap_err().contains("disconnected"));
        assert!(s.next().await.is_none(), "stays ended");
        assert!(s.into_inner().is_some(), "the subscriber comes back");
    }

    #[tokio::test]
    async fn a_cancelled_poll_keeps_the_recv_in_flight() {
        let go = Arc::new(Notify::new());
        let mut s = Gated {
            go: go.clone(),
            next: 0,
            end: 2,
        }
        .into_stream();
        // The first poll starts a recv that cannot finish yet; time it out.
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), s.next()).await;
        assert!(r.is_err(), "nothing to receive yet");
        assert!(s.get_ref().is_none(), "the recv is still in flight");
        // The same recv finishes on the next poll: nothing was started twice.
        go.notify_one();
        let f = s.next().await.unwrap().unwrap();
        assert_eq!(f.seq, 1);
    }
}
