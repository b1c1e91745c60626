//! A blocking API, for callers without an async runtime of their own: plain
//! threads, C-style loops, GUI programs, language bindings.
//!
//! [`publish`] and [`subscribe`] take the same URLs and options as the async
//! [`crate::publish`] and [`crate::subscribe`]. The backends' background work
//! (accepting connections, serving subscribers, releasing slots) runs on one
//! process-wide runtime that framewire starts on first use (two worker threads
//! named `framewire-rt`); each call here blocks the calling thread until it is
//! done. Calling from inside an async runtime is refused with an error (it
//! would block that runtime's thread): use the async API there.
//!
//! ```
//! use std::time::Duration;
//! use framewire::{Frame, PublishOptions, SubscribeOptions, blocking};
//!
//! let mut publisher = blocking::publish("tcp://127.0.0.1:0", PublishOptions::default())?;
//! let url = publisher.endpoint().url().to_owned();
//! let mut subscriber = blocking::subscribe(&url, SubscribeOptions::default())?;
//! publisher.wait_for_subscribers(1, Duration::from_secs(5))?;
//!
//! let sender = std::thread::spawn(move || -> framewire::Result<()> {
//!     let mut loan = publisher.loan(1024)?;
//!     loan.fill(7);
//!     publisher.send_loan(loan)?;
//!     publisher.send(Frame::new(vec![1u8; 16]))?;
//!     publisher.close()
//! });
//! let first = subscriber.recv_timeout(Duration::from_secs(5))?.expect("a frame");
//! assert_eq!((first.seq, first.payload.len()), (0, 1024));
//! assert_eq!(subscriber.recv()?.payload.len(), 16);
//! sender.join().unwrap()?;
//! # Ok::<(), framewire::Error>(())
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{
    Endpoint, Error, Frame, Loan, PublishOptions, Publisher, RecvMode, Result, Stats,
    SubscribeOptions, Subscriber,
};

/// The runtime the blocking API drives the backends on.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("framewire-rt")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Io {
        context: "starting framewire's runtime for the blocking API".into(),
        source: std::io::Error::other(e.clone()),
    })
}

/// Runs `fut` to completion on framewire's runtime, blocking this thread.
fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Unsupported {
            backend: "blocking",
            what: "calling framewire::blocking from inside an async runtime (it would block \
                   the runtime's thread); use the async API, or call it from a plain thread"
                .into(),
        });
    }
    Ok(runtime()?.block_on(fut))
}

/// Runs `fut` like [`block_on`], giving up (`Ok(None)`, `fut` dropped) once
/// `interrupt` is set, or after `within` if given. `fut` is polled first, so
/// what is ready at once completes even with the interrupt set.
fn block_on_or_interrupt<F: Future>(
    fut: F,
    interrupt: &Interrupt,
    within: Option<Duration>,
) -> Result<Option<F::Output>> {
    let state = interrupt.state.clone();
    block_on(async move {
        let fired = state.notify.notified();
        tokio::pin!(fired);
        // Registered before the flag is read, so an interrupt between the
        // read and the wait is not missed.
        fired.as_mut().enable();
        let gave_up = async {
            if state.closed.load(Ordering::Acquire) {
                return;
            }
            match within {
                Some(t) => {
                    let _ = tokio::time::timeout(t, &mut fired).await;
                }
                None => (&mut fired).await,
            }
        };
        tokio::select! {
            biased;
            r = fut => Some(r),
            _ = gave_up => None,
        }
    })
}

/// Creates a publisher for `url`; see [`crate::publish`].
pub fn publish(url: &str, opts: PublishOptions) -> Result<BlockingPublisher> {
    let inner = block_on(crate::publish(url, opts))??;
    Ok(BlockingPublisher { inner: Some(inner) })
}

/// Creates a subscriber for `url`; see [`crate::subscribe`].
pub fn subscribe(url: &str, opts: SubscribeOptions) -> Result<BlockingSubscriber> {
    let inner = block_on(crate::subscribe(url, opts))??;
    Ok(BlockingSubscriber {
        inner: Some(inner),
        closer: Closer::default(),
    })
}

/// The sending half, blocking; made by [`publish`]. `Send`: it may move to
/// another thread (and be closed or dropped there).
pub struct BlockingPublisher {
    // `Some` until dropped: dropping it inside the runtime lets backends
    // clean up with the runtime at hand.
    inner: Option<Box<dyn Publisher>>,
}

impl std::fmt::Debug for BlockingPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingPublisher")
            .field("endpoint", &self.endpoint().url())
            .finish_non_exhaustive()
    }
}

impl BlockingPublisher {
    fn get(&mut self) -> &mut Box<dyn Publisher> {
        self.inner.as_mut().expect("present until drop")
    }

    /// Sends a frame; see [`Publisher::send`].
    pub fn send(&mut self, frame: Frame) -> Result<()> {
        let p = self.get();
        block_on(p.send(frame))?
    }

    /// Lends a writable buffer of `len` bytes; see [`Publisher::loan`].
    pub fn loan(&mut self, len: usize) -> Result<Loan> {
        let p = self.get();
        block_on(p.loan(len))?
    }

    /// Sends a filled loan; see [`Publisher::send_loan`].
    pub fn send_loan(&mut self, loan: Loan) -> Result<()> {
        let p = self.get();
        block_on(p.send_loan(loan))?
    }

    /// Like [`BlockingPublisher::send`], but gives up when `interrupt` is
    /// set (or is set already and the frame cannot go at once), or after
    /// `within`: `Ok(None)`, and the frame was not sent (every backend waits
    /// for room before it hands a frame on). The publisher stays usable.
    pub fn send_or_interrupt(
        &mut self,
        frame: Frame,
        interrupt: &Interrupt,
        within: Option<Duration>,
    ) -> Result<Option<()>> {
        let p = self.get();
        block_on_or_interrupt(p.send(frame), interrupt, within)?.transpose()
    }

    /// Like [`BlockingPublisher::loan`], but gives up when `interrupt` is
    /// set, or after `within`: `Ok(None)`, nothing lent.
    pub fn loan_or_interrupt(
        &mut self,
        len: usize,
        interrupt: &Interrupt,
        within: Option<Duration>,
    ) -> Result<Option<Loan>> {
        let p = self.get();
        block_on_or_interrupt(p.loan(len), interrupt, within)?.transpose()
    }

    /// Like [`BlockingPublisher::send_loan`], but gives up when `interrupt`
    /// is set, or after `within`: `Ok(None)`, and the loan was not sent (its
    /// memory is returned).
    pub fn send_loan_or_interrupt(
        &mut self,
        loan: Loan,
        interrupt: &Interrupt,
        within: Option<Duration>,
    ) -> Result<Option<()>> {
        let p = self.get();
        block_on_or_interrupt(p.send_loan(loan), interrupt, within)?.transpose()
    }

    /// Like [`BlockingPublisher::wait_for_subscribers`], but gives up when
    /// `interrupt` is set: `Ok(None)`.
    pub fn wait_for_subscribers_or_interrupt(
        &mut self,
        n: usize,
        timeout: Duration,
        interrupt: &Interrupt,
    ) -> Result<Option<()>> {
        let p = self.get();
        block_on_or_interrupt(p.wait_for_subscribers(n, timeout), interrupt, None)?.transpose()
    }

    /// Waits until every accepted frame is handed to every subscriber.
    pub fn flush(&mut self) -> Result<()> {
        let p = self.get();
        block_on(p.flush())?
    }

    /// Ends the stream; see [`Publisher::close`]. Dropping the publisher
    /// afterwards disconnects the subscribers.
    pub fn close(&mut self) -> Result<()> {
        let p = self.get();
        block_on(p.close())?
    }

    /// Waits until at least `n` subscribers are connected.
    pub fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let p = self.get();
        block_on(p.wait_for_subscribers(n, timeout))?
    }

    /// The endpoint subscribers should connect to.
    pub fn endpoint(&self) -> &Endpoint {
        self.inner.as_ref().expect("present until drop").endpoint()
    }

    /// Subscribers connected now, where the backend can tell.
    pub fn subscriber_count(&self) -> Option<usize> {
        self.inner.as_ref().and_then(|p| p.subscriber_count())
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.inner.as_ref().map(|p| p.stats()).unwrap_or_default()
    }
}

impl Drop for BlockingPublisher {
    fn drop(&mut self) {
        if let (Some(p), Ok(rt)) = (self.inner.take(), runtime()) {
            let _in_runtime = rt.enter();
            drop(p);
        }
    }
}

/// Wakes a subscriber's pending and future `recv` calls with
/// [`Error::Disconnected`]; made by [`BlockingSubscriber::closer`]. Cheap to
/// clone, usable from any thread (a signal handler's thread, a GUI's).
#[derive(Debug, Clone, Default)]
pub struct Closer {
    state: Arc<CloserState>,
}

#[derive(Debug, Default)]
struct CloserState {
    closed: AtomicBool,
    notify: Notify,
}

impl Closer {
    /// Closes the subscriber: a `recv` blocked now returns
    /// [`Error::Disconnected`] at once, and so does every later one.
    pub fn close(&self) {
        self.state.closed.store(true, Ordering::Release);
        self.state.notify.notify_waiters();
    }

    /// True once [`Closer::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }

    fn closed_error() -> Error {
        Error::disconnected("blocking", "this subscriber was closed (Closer::close)")
    }
}

/// Makes the blocking calls it is given (`*_or_interrupt`) give up early,
/// from any thread: a signal watcher (the Python binding wakes it from
/// Python's signal wake-up fd, so Ctrl-C needs no polling), a GUI, a
/// supervisor. Unlike [`Closer`] it ends nothing: the interrupted call
/// returns `Ok(None)` and the publisher or subscriber stays usable. It stays
/// set (every later call given it returns at once) until
/// [`Interrupt::clear`]: clear it, then look at why it was set, then call
/// again, and an interrupt in between is never lost. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    state: Arc<CloserState>,
}

impl Interrupt {
    /// Sets it: blocked calls given it return now, later ones at once.
    pub fn interrupt(&self) {
        self.state.closed.store(true, Ordering::Release);
        self.state.notify.notify_waiters();
    }

    /// Clears it; returns whether it was set.
    pub fn clear(&self) -> bool {
        self.state.closed.swap(false, Ordering::AcqRel)
    }

    /// True while set.
    pub fn is_set(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }
}

/// The receiving half, blocking; made by [`subscribe`]. `Send`: it may move
/// to another thread; [`BlockingSubscriber::closer`] interrupts it from any.
pub struct BlockingSubscriber {
    inner: Option<Box<dyn Subscriber>>,
    closer: Closer,
}

impl std::fmt::Debug for BlockingSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingSubscriber")
            .field("closed", &self.closer.is_closed())
            .finish_non_exhaustive()
    }
}

impl BlockingSubscriber {
    /// Receives the next frame, waiting as long as it takes; see
    /// [`Subscriber::recv`]. Returns [`Error::Disconnected`] when the
    /// publisher is gone or [`Closer::close`] was called.
    pub fn recv(&mut self) -> Result<Frame> {
        self.wait(None)?
            .ok_or_else(|| unreachable_timeout("recv without a deadline"))
    }

    /// Receives the next frame, or `Ok(None)` if none arrived within `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        self.wait(Some(timeout))
    }

    /// Receives a frame that has already arrived, or `Ok(None)` at once.
    pub fn try_recv(&mut self) -> Result<Option<Frame>> {
        self.wait(Some(Duration::ZERO))
    }

    /// Like [`BlockingSubscriber::recv_timeout`] (`None`: no time limit),
    /// but also gives up when `interrupt` is set (or is set already):
    /// `Ok(None)` then too, and no frame is lost (`recv` is
    /// cancellation-safe).
    pub fn recv_or_interrupt(
        &mut self,
        timeout: Option<Duration>,
        interrupt: &Interrupt,
    ) -> Result<Option<Frame>> {
        if interrupt.is_set() {
            return Ok(None);
        }
        self.wait_with(timeout, Some(interrupt))
    }

    /// A handle that closes this subscriber from another thread.
    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }

    /// The receive mode in force.
    pub fn recv_mode(&self) -> RecvMode {
        self.inner
            .as_ref()
            .map(|s| s.recv_mode())
            .unwrap_or_default()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.inner.as_ref().map(|s| s.stats()).unwrap_or_default()
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<Option<Frame>> {
        self.wait_with(timeout, None)
    }

    fn wait_with(
        &mut self,
        timeout: Option<Duration>,
        interrupt: Option<&Interrupt>,
    ) -> Result<Option<Frame>> {
        let interrupt = interrupt.map(|i| i.state.clone());
        let state = self.closer.state.clone();
        if state.closed.load(Ordering::Acquire) {
            return Err(Closer::closed_error());
        }
        let sub = self.inner.as_mut().expect("present until drop");
        block_on(async move {
            let closed = state.notify.notified();
            tokio::pin!(closed);
            // Registered before the flag is read again, so a close between
            // the check above and the wait below is not missed.
            closed.as_mut().enable();
            if state.closed.load(Ordering::Acquire) {
                return Err(Closer::closed_error());
            }
            let fired = async {
                match &interrupt {
                    Some(i) => {
                        let fired = i.notify.notified();
                        tokio::pin!(fired);
                        fired.as_mut().enable();
                        if !i.closed.load(Ordering::Acquire) {
                            fired.await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            // `recv` is cancellation-safe: losing the race loses no frame.
            let recv = async {
                match timeout {
                    // Zero: poll once, so a frame already here is returned.
                    Some(t) if t.is_zero() => {
                        let recv = sub.recv();
                        tokio::pin!(recv);
                        match futures_util::poll!(recv.as_mut()) {
                            std::task::Poll::Ready(r) => r.map(Some),
                            std::task::Poll::Pending => {
                                // One yield lets the backend's tasks hand over
                                // what has already arrived.
                                tokio::task::yield_now().await;
                                match futures_util::poll!(recv) {
                                    std::task::Poll::Ready(r) => r.map(Some),
                                    std::task::Poll::Pending => Ok(None),
                                }
                            }
                        }
                    }
                    Some(t) => match tokio::time::timeout(t, sub.recv()).await {
                        Ok(r) => r.map(Some),
                        Err(_) => Ok(None),
                    },
                    None => sub.recv().await.map(Some),
                }
            };
            tokio::select! {
                biased;
                _ = &mut closed => Err(Closer::closed_error()),
                r = recv => r,
                _ = fired => Ok(None),
            }
        })?
    }
}

fn unreachable_timeout(what: &str) -> Error {
    Error::protocol("blocking", format!("{what} returned no frame"))
}

impl Drop for BlockingSubscriber {
    fn drop(&mut self) {
        if let (Some(s), Ok(rt)) = (self.inner.take(), runtime()) {
            let _in_runtime = rt.enter();
            drop(s);
        }
    }
}
