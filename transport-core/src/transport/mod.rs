//! The traits a backend implements, and what they exchange.

use std::any::Any;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::endpoint::Endpoint;
use crate::frame::{Frame, Hop, Layout};
use crate::{Error, Result};

/// What a publisher does when a subscriber's queue (or the pool, or the ring) is full.
///
/// The default is [`Policy::Block`]: nothing is lost, the publisher slows to the
/// pace of the slowest subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Wait for room (backpressure). The default.
    #[default]
    Block,
    /// Drop the oldest queued frame(s) a subscriber has not read yet; that
    /// subscriber's next `recv` reports [`Error::Lagged`].
    DropOldest,
    /// Return [`Error::Full`] and send nothing.
    Fail,
}

impl Policy {
    /// All policies.
    pub const ALL: [Policy; 3] = [Policy::Block, Policy::DropOldest, Policy::Fail];

    /// The name used in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::DropOldest => "drop-oldest",
            Policy::Fail => "fail",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "block" => Ok(Policy::Block),
            "drop-oldest" => Ok(Policy::DropOldest),
            "fail" => Ok(Policy::Fail),
            _ => Err("accepted: block, drop-oldest, fail".into()),
        }
    }
}

/// How a subscriber receives payloads.
///
/// The default is [`RecvMode::Owned`]: every subscriber gets its own copy unless
/// it asks for views, so that no subscriber can pin shared memory by accident
/// (the ezmsg #209 regression). On backends without shared memory the two modes
/// behave the same: a received payload is already private.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RecvMode {
    /// A private copy; the shared slot (if any) is released at once. The default.
    #[default]
    Owned,
    /// A zero-copy, read-only view that holds the shared slot until the last
    /// clone of the payload is dropped.
    View,
}

impl FromStr for RecvMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "owned" => Ok(RecvMode::Owned),
            "view" => Ok(RecvMode::View),
            _ => Err("accepted: owned, view".into()),
        }
    }
}

/// Options of a publisher (beyond what its endpoint URL carries).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Backpressure policy; overrides the URL's `policy=`; default [`Policy::Block`].
    pub policy: Option<Policy>,
    /// When set, each sent frame gets a [`Hop`] with this name in its trace.
    pub trace_name: Option<String>,
}

impl PublishOptions {
    /// Sets the policy.
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = Some(p);
        self
    }
    /// Sets the trace name.
    pub fn trace_name(mut self, name: impl Into<String>) -> Self {
        self.trace_name = Some(name.into());
        self
    }
    /// The policy in force: this option, else the URL's `policy=`, else block.
    pub fn resolve_policy(&self, endpoint: &Endpoint) -> Result<Policy> {
        match self.policy {
            Some(p) => Ok(p),
            None => Ok(endpoint
                .parse_param::<Policy>("policy")?
                .unwrap_or_default()),
        }
    }
}

/// Options of a subscriber (beyond what its endpoint URL carries).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Receive mode; overrides the URL's `recv=`; default [`RecvMode::Owned`].
    pub recv_mode: Option<RecvMode>,
    /// Deliver only frames whose topic starts with this prefix (empty: all).
    pub topic_prefix: String,
    /// Follow the publisher across restarts (see [`crate::reconnect`]);
    /// overrides the URL's `reconnect*=` options; default off. Honoured by
    /// [`crate::reconnect::subscribe`] (and so by `framewire::subscribe`),
    /// not by a backend's own `subscribe`.
    pub reconnect: Option<crate::reconnect::Reconnect>,
}

impl SubscribeOptions {
    /// Sets the receive mode.
    pub fn recv_mode(mut self, m: RecvMode) -> Self {
        self.recv_mode = Some(m);
        self
    }
    /// Sets the topic prefix.
    pub fn topic_prefix(mut self, p: impl Into<String>) -> Self {
        self.topic_prefix = p.into();
        self
    }
    /// Turns reconnect on with these settings.
    pub fn reconnect(mut self, r: crate::reconnect::Reconnect) -> Self {
        self.reconnect = Some(r);
        self
    }
    /// The mode in force: this option, else the URL's `recv=`, else owned.
    ///
    /// It also checks the URL's `policy=`: a subscriber accepts the
    /// publisher's option, so that one URL serves both ends, but a value
    /// that does not parse is an [`Error::InvalidOption`](crate::Error::InvalidOption) here as on the
    /// publisher (every backend calls this when it subscribes).
    pub fn resolve_mode(&self, endpoint: &Endpoint) -> Result<RecvMode> {
        endpoint.parse_param::<Policy>("policy")?;
        match self.recv_mode {
            Some(m) => Ok(m),
            None => Ok(endpoint
                .parse_param::<RecvMode>("recv")?
                .unwrap_or_default()),
        }
    }
}

/// URL parameters that every backend accepts (handled by the options above).
pub const COMMON_PARAMS: [&str; 2] = ["policy", "recv"];

/// What a backend can do, declared so that the conformance suite (and users)
/// can select by capability rather than by backend name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend's name.
    pub name: &'static str,
    /// View-mode payloads are zero-copy views of the publisher's memory.
    pub zero_copy_views: bool,
    /// `loan` hands out memory the frame is sent from without another copy.
    pub loan_in_place: bool,
    /// Publisher and subscriber may be on different hosts.
    pub cross_host: bool,
    /// Publisher and subscriber may be in different processes.
    pub cross_process: bool,
    /// Policies this backend implements for this endpoint.
    pub policies: Vec<Policy>,
    /// Largest payload this endpoint accepts.
    pub max_payload: u64,
    /// At most this many frames are queued per subscriber (or held by the pool)
    /// beyond what the operating system buffers; memory stays bounded by it.
    pub queue_depth: usize,
    /// `subscriber_count` is known to the publisher (so `wait_for_subscribers` works).
    pub counts_subscribers: bool,
    /// Several publishers may publish on one endpoint, and sequence numbers
    /// and lag are tracked per publisher: each numbers its frames 0, 1, 2, ...
    /// and a subscriber reports [`Error::Lagged`] only for a gap in one
    /// publisher's numbering, never for frames of two publishers interleaving.
    /// The backend tells publishers apart by an id it carries on the wire
    /// (not part of [`Frame`]); an application that needs to tells them apart
    /// by what it puts in its frames (topic, metadata, or a trace hop name).
    /// When false, one publisher per endpoint is the contract.
    pub per_publisher_seq: bool,
}

impl Capabilities {
    /// Conservative capabilities for a backend named `name`: no zero-copy, no
    /// loan in place, one host, block only, `max_payload` 0, depth 1. Set the
    /// fields that apply (the struct is `#[non_exhaustive]`, so build it this way).
    pub fn new(name: &'static str) -> Capabilities {
        Capabilities {
            name,
            zero_copy_views: false,
            loan_in_place: false,
            cross_host: false,
            cross_process: false,
            policies: vec![Policy::Block],
            max_payload: 0,
            queue_depth: 1,
            counts_subscribers: false,
            per_publisher_seq: false,
        }
    }

    /// The capabilities most backends share: every [`Policy`], the publisher
    /// counts its subscribers, and each subscriber's queue (or the pool)
    /// holds at most `queue_depth` frames of at most `max_payload` bytes.
    /// Everything else is as in [`Capabilities::new`]: set the fields where
    /// the backend differs (processes, hosts, zero-copy, loans).
    ///
    /// ```
    /// use transport_core::{Capabilities, Policy};
    ///
    /// let mut c = Capabilities::bounded("mine", 16 << 20, 8);
    /// c.cross_process = true;
    /// assert_eq!(c.policies, Policy::ALL);
    /// assert!(c.counts_subscribers && !c.cross_host && !c.zero_copy_views);
    /// assert_eq!((c.max_payload, c.queue_depth), (16 << 20, 8));
    /// ```
    pub fn bounded(name: &'static str, max_payload: u64, queue_depth: usize) -> Capabilities {
        Capabilities {
            policies: Policy::ALL.to_vec(),
            max_payload,
            queue_depth,
            counts_subscribers: true,
            ..Capabilities::new(name)
        }
    }
}

/// Counters kept by publishers and subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Frames sent (counted once per `send`, whatever the fan-out).
    pub frames_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Frames dropped by the policy (counted per subscriber that missed one).
    pub dropped: u64,
    /// Frames this subscriber missed (reported through [`Error::Lagged`]).
    pub lagged: u64,
    /// Frames queued now, summed over subscribers (publisher side).
    pub queued: u64,
    /// Connected subscribers (publisher side).
    pub subscribers: u64,
    /// Times a reconnecting subscriber found its publisher again
    /// ([`crate::reconnect::Reconnecting`]; 0 elsewhere).
    pub reconnects: u64,
}

/// Lock-free counters behind [`Stats`], for backends to share between tasks.
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct StatCounters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub dropped: AtomicU64,
    pub lagged: AtomicU64,
    pub queued: AtomicU64,
    pub subscribers: AtomicU64,
}

impl StatCounters {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    /// A consistent-enough snapshot.
    pub fn snapshot(&self) -> Stats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            frames_sent: l(&self.frames_sent),
            bytes_sent: l(&self.bytes_sent),
            frames_received: l(&self.frames_received),
            bytes_received: l(&self.bytes_received),
            dropped: l(&self.dropped),
            lagged: l(&self.lagged),
            queued: l(&self.queued),
            subscribers: l(&self.subscribers),
            reconnects: 0,
        }
    }
}

/// Memory a backend lends for a frame to be written in place.
///
/// Implemented by backends; heap loans use `BytesMut`.
pub trait LoanBuffer: Send + 'static {
    /// The writable bytes (exactly the loaned length).
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// The bytes.
    fn as_slice(&self) -> &[u8];
    /// For the lending publisher to get its own type back.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl LoanBuffer for BytesMut {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
    fn as_slice(&self) -> &[u8] {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// A writable buffer lent by a publisher: fill it, set the header fields, and
/// pass it back to [`Publisher::send_loan`].
///
/// Dropping a loan without sending it returns its memory.
pub struct Loan {
    /// Topic of the frame to be sent.
    pub topic: String,
    /// Metadata of the frame to be sent.
    pub metadata: Bytes,
    /// Layout of the frame to be sent.
    pub layout: Layout,
    /// Trace carried over (e.g. from a frame being forwarded).
    pub trace: Vec<Hop>,
    buf: Box<dyn LoanBuffer>,
}

impl Loan {
    /// Wraps a backend's buffer.
    pub fn new(buf: Box<dyn LoanBuffer>) -> Loan {
        Loan {
            topic: String::new(),
            metadata: Bytes::new(),
            layout: Layout::Raw,
            trace: Vec::new(),
            buf,
        }
    }

    /// A heap loan of `len` zeroed bytes, for backends with nothing better.
    pub fn heap(len: usize) -> Loan {
        Loan::new(Box::new(BytesMut::zeroed(len)))
    }

    /// Splits into the header (as a frame with an empty payload) and the buffer.
    pub fn into_parts(self) -> (Frame, Box<dyn LoanBuffer>) {
        let frame = Frame {
            topic: self.topic,
            metadata: self.metadata,
            layout: self.layout,
            trace: self.trace,
            ..Frame::default()
        };
        (frame, self.buf)
    }

    /// Turns a heap loan back into a frame; a loan of another kind is
    /// [`Error::ForeignLoan`] (and its memory is returned).
    pub fn into_heap_frame(self) -> Result<Frame> {
        let Loan {
            topic,
            metadata,
            layout,
            trace,
            buf,
        } = self;
        match buf.into_any().downcast::<BytesMut>() {
            Ok(b) => Ok(Frame {
                topic,
                metadata,
                layout,
                trace,
                payload: b.freeze(),
                ..Frame::default()
            }),
            Err(_) => Err(Error::ForeignLoan),
        }
    }
}

impl std::ops::Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_slice()
    }
}

impl std::ops::DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut_slice()
    }
}

impl fmt::Debug for Loan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("topic", &self.topic)
            .field("len", &self.buf.as_slice().len())
            .finish_non_exhaustive()
    }
}

/// The sending half of a channel.
///
/// # Contract
/// - `send` stamps `seq` (0, 1, 2, ... per publisher) and `timestamp_ns`, and
///   appends a trace hop when the publisher has a `trace_name`.
/// - Under [`Policy::Block`] a frame accepted by `send` reaches every connected
///   subscriber unless that subscriber disconnects.
/// - A payload over `max_payload` is refused with [`Error::PayloadTooLarge`] and
///   nothing is sent.
/// - `flush` returns once every accepted frame has been handed to every
///   subscriber (or the subscriber is gone); call it before exiting a process.
/// - Dropping the publisher disconnects its subscribers: after the frames
///   already queued, they get [`Error::Disconnected`].
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Sends a frame. On shared-memory backends the payload is copied once
    /// into shared memory unless it already lives there.
    async fn send(&mut self, frame: Frame) -> Result<()>;

    /// Lends a writable buffer of `len` bytes. On backends with
    /// [`Capabilities::loan_in_place`] it is the memory the frame is sent from.
    /// Under [`Policy::Block`] this waits for room.
    ///
    /// The default lends heap memory after checking `len` against
    /// [`Publisher::max_payload`] ([`Error::PayloadTooLarge`] beyond it).
    async fn loan(&mut self, len: usize) -> Result<Loan> {
        let limit = self.max_payload();
        if len as u64 > limit {
            return Err(Error::PayloadTooLarge {
                len: len as u64,
                limit,
                option: "max_payload",
            });
        }
        Ok(Loan::heap(len))
    }

    /// Sends a filled loan.
    async fn send_loan(&mut self, loan: Loan) -> Result<()> {
        self.send(loan.into_heap_frame()?).await
    }

    /// Waits until every frame accepted so far is handed to every subscriber.
    async fn flush(&mut self) -> Result<()>;

    /// Ends the stream: flushes, tells subscribers the stream is over, and
    /// waits (bounded by the backend's own timeouts) until they have read
    /// what was sent. Call it before a process exits: on backends that buffer
    /// in user space (ZeroMQ), frames still in flight are lost if the
    /// process ends right after `flush`. Do not send after `close` (a
    /// backend may refuse it). The default is [`Publisher::flush`], enough
    /// where the operating system or shared memory holds what was sent once
    /// it is flushed.
    async fn close(&mut self) -> Result<()> {
        self.flush().await
    }

    /// The endpoint subscribers should connect to (with, e.g., the port the
    /// operating system picked for `tcp://127.0.0.1:0`).
    fn endpoint(&self) -> &Endpoint;

    /// Subscribers connected now, where the backend can tell.
    fn subscriber_count(&self) -> Option<usize>;

    /// Waits until at least `n` subscribers are connected.
    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()>;

    /// The largest payload this publisher sends: its endpoint's
    /// [`Capabilities::max_payload`]. The default [`Publisher::loan`]
    /// refuses longer loans with it. The default is the envelope's own limit
    /// ([`crate::codec::MAX_PAYLOAD`]); a backend with a lower one overrides
    /// it.
    fn max_payload(&self) -> u64 {
        crate::codec::MAX_PAYLOAD
    }

    /// Counters.
    fn stats(&self) -> Stats;
}

/// The receiving half of a channel.
///
/// # Contract
/// - Frames from one publisher arrive in the order sent.
/// - `recv` is cancellation-safe: dropping its future (e.g. through
///   `tokio::time::timeout`) loses no frame.
/// - Under [`Policy::DropOldest`] a subscriber that missed frames gets
///   [`Error::Lagged`] once, then the frames that remain.
/// - When the publisher is gone and everything queued was read, `recv`
///   returns [`Error::Disconnected`], never hangs.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Receives the next frame.
    async fn recv(&mut self) -> Result<Frame>;

    /// The receive mode in force.
    fn recv_mode(&self) -> RecvMode;

    /// Counters.
    fn stats(&self) -> Stats;
}

/// A backend: makes publishers and subscribers for endpoints of its schemes.
///
/// Implement this one; [`DynTransport`] (boxed, chosen at run time from a URL)
/// comes with it through a blanket impl.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The publisher type.
    type Publisher: Publisher + 'static;
    /// The subscriber type.
    type Subscriber: Subscriber + 'static;

    /// URL schemes handled, e.g. `["tcp", "unix"]`.
    fn schemes(&self) -> &'static [&'static str];

    /// What this backend can do on `endpoint` (after its options are applied).
    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities>;

    /// Creates a publisher (binds, creates shared memory, ...).
    async fn publish(&self, endpoint: &Endpoint, opts: &PublishOptions) -> Result<Self::Publisher>;

    /// Creates a subscriber (connects, attaches, ...).
    async fn subscribe(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<Self::Subscriber>;
}

/// The object-safe twin of [`Transport`], for choosing a backend at run time.
#[async_trait]
pub trait DynTransport: Send + Sync + 'static {
    /// See [`Transport::schemes`].
    fn schemes(&self) -> &'static [&'static str];
    /// See [`Transport::capabilities`].
    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities>;
    /// See [`Transport::publish`].
    async fn publish_dyn(
        &self,
        endpoint: &Endpoint,
        opts: &PublishOptions,
    ) -> Result<Box<dyn Publisher>>;
    /// See [`Transport::subscribe`].
    async fn subscribe_dyn(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<Box<dyn Subscriber>>;
}

#[async_trait]
impl<T: Transport> DynTransport for T {
    fn schemes(&self) -> &'static [&'static str] {
        Transport::schemes(self)
    }
    fn capabilities(&self, endpoint: &Endpoint) -> Result<Capabilities> {
        Transport::capabilities(self, endpoint)
    }
    async fn publish_dyn(
        &self,
        endpoint: &Endpoint,
        opts: &PublishOptions,
    ) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(self.publish(endpoint, opts).await?))
    }
    async fn subscribe_dyn(
        &self,
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<Box<dyn Subscriber>> {
        Ok(Box::new(self.subscribe(endpoint, opts).await?))
    }
}

mod forward;

/// Turns gaps in sequence numbers into one [`Error::Lagged`] per gap, for
/// subscribers of backends that drop frames at the publisher.
///
/// Call [`SeqTracker::accept`] with each frame that arrives; it returns the
/// frame, or a lag error and keeps the frame for the next call to
/// [`SeqTracker::take_pending`]. Cancellation-safe: it holds no future.
#[derive(Debug, Default)]
pub struct SeqTracker {
    next: Option<u64>,
    pending: Option<Frame>,
    stats: Arc<StatCounters>,
}

impl SeqTracker {
    /// A tracker that counts lag into `stats`.
    pub fn new(stats: Arc<StatCounters>) -> Self {
        SeqTracker {
            next: None,
            pending: None,
            stats,
        }
    }

    /// Sets the sequence number the next frame should carry (e.g. the
    /// publisher's next number at the moment this subscriber joined), so that
    /// frames dropped before the first one received count as lag too.
    pub fn expect_next(&mut self, seq: u64) {
        self.next = Some(seq);
    }

    /// A frame held back after a lag report; return it before reading more.
    pub fn take_pending(&mut self) -> Option<Frame> {
        self.pending.take()
    }

    /// Checks a new frame's sequence number.
    pub fn accept(&mut self, frame: Frame) -> Result<Frame> {
        let expected = self.next;
        self.next = Some(frame.seq.wrapping_add(1));
        match expected {
            Some(e) if frame.seq > e => {
                let missed = frame.seq - e;
                StatCounters::add(&self.stats.lagged, missed);
                self.pending = Some(frame);
                Err(Error::Lagged { missed })
            }
            _ => Ok(frame),
        }
    }
}

/// Waits on a condition with a deadline: polls `check` each time `notified`
/// fires (or every 50 ms), for implementing `wait_for_subscribers`.
pub async fn wait_until(
    notify: &tokio::sync::Notify,
    timeout: Duration,
    what: &'static str,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if check() {
            return Ok(());
        }
        let tick = tokio::time::Instant::now() + Duration::from_millis(50);
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::timeout(timeout, what));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(tick.min(deadline)) => {}
        }
    }
}

#[cfg(test)]
mod tests;
