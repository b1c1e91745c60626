//! The subscriber: one ZMTP connection, read by a reader task (bounded by
//! `max_payload` plus the envelope) into an I/O task, which fills a small
//! inbox that `recv` empties, so that `recv` is cancellation-safe; a writer
//! task sends what goes upstream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use transport_core::{Error, Frame, Policy, RecvMode, Result, StatCounters, Stats, Subscriber};

#[cfg(feature = "shm")]
use transport_shm_pool::shared::{Attached, SlotRef};

use crate::config::{Address, Config, Shm};
use crate::zmtp::{self, Incoming, Limits, ZmtpError};

#[cfg(feature = "shm")]
type Att = Arc<Attached>;
#[cfg(not(feature = "shm"))]
type Att = std::convert::Infallible;
use crate::lag_queue::LagQueue;
use crate::wire::{self, Control, Downstream, SubscriberId, Welcome};

/// Errors kept for `recv` to report; more are logged and counted away.
const MAX_PENDING_ERRORS: usize = 64;
/// Why a stream ends when its connection breaks.
const LOST: &str = "the connection to the publisher was lost (it exited, crashed or cut this \
                    subscriber off); frames in flight may have been lost";
/// How long a dropped subscriber spends telling its publisher it leaves.
const BYE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one upstream write may take before the connection is given up.
const UPSTREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// What a framewire publisher sends before its WELCOME (controls only): the
/// cap until the handshake is complete.
const HANDSHAKE_LIMITS: Limits = Limits {
    max_message: 64 << 10,
    max_parts: 4,
    what: "a message before the publisher's welcome (controls are small)",
    skip_oversized: false,
};
/// Bytes a data message may hold beyond its payload: topic, envelope
/// (prefix and largest header), shared-memory tag and reference.
const ENVELOPE_ALLOWANCE: u64 = transport_core::codec::MAX_TOPIC as u64
    + transport_core::codec::PREFIX_LEN as u64
    + transport_core::codec::MAX_HEADER as u64
    + 64;

#[derive(Debug)]
struct Inbox {
    frames: LagQueue<Frame>,
    /// Messages that could not be read (hostile or corrupt input), in order.
    errors: VecDeque<Error>,
    /// Why the stream ended; reported after everything queued was read.
    ended: Option<String>,
}

#[derive(Debug)]
struct Shared {
    inbox: Mutex<Inbox>,
    /// I/O task -> `recv`: something arrived or the stream ended.
    to_app: Notify,
    /// `recv` -> I/O task: room was made in the inbox.
    to_io: Notify,
    stats: Arc<StatCounters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        // Critical sections are a few queue operations; a poisoned lock is still consistent.
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, e: Error) {
        let mut inbox = self.lock();
        if inbox.errors.len() < MAX_PENDING_ERRORS {
            inbox.errors.push_back(e);
        } else {
            tracing::warn!(error = %e, "too many unread errors; dropping this one");
        }
        drop(inbox);
        self.to_app.notify_one();
    }

    fn end(&self, why: String) {
        let mut inbox = self.lock();
        if inbox.ended.is_none() {
            inbox.ended = Some(why);
        }
        drop(inbox);
        self.to_app.notify_one();
    }
}

/// A subscriber on `zmq+tcp://HOST:PORT` or `zmq+ipc:///PATH`.
#[derive(Debug)]
pub struct ZmqSubscriber {
    shared: Arc<Shared>,
    mode: RecvMode,
    /// A frame held back after a lag report.
    pending: Option<Frame>,
    welcome: Welcome,
    /// `shm=pool` publisher: `Ok` attached, `Err(why)` payloads come inline.
    shm: Option<std::result::Result<(), String>>,
    /// Dropped with the subscriber: the I/O task cancels the subscription
    /// (the publisher forgets us at once) and stops, closing the socket.
    _stop: oneshot::Sender<()>,
}

fn zmtp_err(what: &str, e: ZmtpError) -> Error {
    match e {
        ZmtpError::Io(io) => Error::io(format!("{what} (is a publisher running there?)"), io),
        other => Error::protocol("zmq", format!("{what}: {other}")),
    }
}

trait Rd: AsyncRead + Unpin + Send + 'static {}
impl<T: AsyncRead + Unpin + Send + 'static> Rd for T {}
trait Wr: AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncWrite + Unpin + Send + 'static> Wr for T {}

/// Connects to the publisher's address.
async fn dial(address: &Address) -> Result<(Box<dyn Rd>, Box<dyn Wr>)> {
    let what =
        |a: &dyn std::fmt::Display| format!("connecting to {a} (is a publisher running there?)");
    match address {
        Address::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a.as_str())
                .await
                .map_err(|e| Error::io(what(a), e))?;
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Address::Ipc(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| Error::io(what(&p.display()), e))?;
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// What the handshake found.
struct Joined {
    reader: zmtp::Reader<Box<dyn Rd>>,
    wr: Box<dyn Wr>,
    /// `None`: a plain ZeroMQ publisher.
    welcome: Option<Welcome>,
    announce: Option<Control>,
}

async fn join(cfg: &Config, id: &SubscriberId, prefix: &str) -> Result<Joined> {
    let (rd, mut wr) = dial(&cfg.address).await?;
    let mut reader = zmtp::Reader::new(rd);
    let prop = wire::subscriber_property(id);
    let md = zmtp::handshake(&mut reader, &mut wr, "SUB", &[(wire::PROPERTY, &prop)])
        .await
        .map_err(|e| zmtp_err("the ZeroMQ handshake with the publisher", e))?;
    let st = md.socket_type();
    if !st.eq_ignore_ascii_case("PUB") && !st.eq_ignore_ascii_case("XPUB") {
        return Err(Error::protocol(
            "zmq",
            format!(
                "the peer is a ZeroMQ `{st}` socket; a subscriber connects to a PUB or XPUB socket"
            ),
        ));
    }
    let framewire = match md.get(wire::PROPERTY) {
        None => false,
        Some(v) => match v.first() {
            Some(&wire::VERSION) => true,
            Some(&theirs) => {
                return Err(Error::VersionMismatch {
                    ours: u16::from(wire::VERSION),
                    theirs: u16::from(theirs),
                });
            }
            None => {
                return Err(Error::protocol(
                    "zmq",
                    format!("an empty {} property", wire::PROPERTY),
                ));
            }
        },
    };
    zmtp::write_message(&mut wr, &[wire::subscription(prefix, true)])
        .await
        .map_err(|e| Error::io("sending the subscription", e))?;
    wr.flush()
        .await
        .map_err(|e| Error::io("sending the subscription", e))?;
    if !framewire {
        return Ok(Joined {
            reader,
            wr,
            welcome: None,
            announce: None,
        });
    }
    // The subscription is the hello; a framewire publisher answers with WELCOME.
    let mut announce = None;
    loop {
        let parts = match reader.next(&HANDSHAKE_LIMITS).await {
            Ok(Incoming::Message(parts)) => parts,
            Ok(_) => continue,
            Err(e) => return Err(zmtp_err("waiting for the publisher's welcome", e)),
        };
        match wire::parse_downstream(parts, true, cfg.max_payload) {
            Ok(Downstream::Control(Control::Welcome(w))) => {
                return Ok(Joined {
                    reader,
                    wr,
                    welcome: Some(w),
                    announce,
                });
            }
            Ok(Downstream::Control(c @ Control::Shm { .. })) => announce = Some(c),
            Ok(Downstream::Control(Control::Refuse { version, reason })) => {
                return Err(if version != wire::VERSION {
                    Error::VersionMismatch {
                        ours: u16::from(wire::VERSION),
                        theirs: u16::from(version),
                    }
                } else {
                    Error::disconnected("zmq", format!("the publisher refused us: {reason}"))
                });
            }
            Ok(other) => tracing::debug!(?other, "ignoring a message before the welcome"),
            Err(e) => tracing::debug!(error = %e, "ignoring a message before the welcome"),
        }
    }
}

pub(crate) async fn connect(cfg: Config, mode: RecvMode, prefix: String) -> Result<ZmqSubscriber> {
    if prefix.len() > transport_core::codec::MAX_TOPIC {
        return Err(Error::InvalidOption {
            option: "topic_prefix".into(),
            reason: format!(
                "{} bytes; a topic has at most {}",
                prefix.len(),
                transport_core::codec::MAX_TOPIC
            ),
        });
    }
    let id = SubscriberId::random();
    let limit = cfg.handshake_timeout;
    let started = Instant::now();
    let joined = tokio::time::timeout(limit, join(&cfg, &id, &prefix))
        .await
        .map_err(|_| {
            Error::timeout(
                limit,
                "for the publisher's welcome (is a framewire or ZeroMQ publisher running there?)",
            )
        })??;
    let Joined {
        reader,
        mut wr,
        welcome,
        announce,
    } = joined;
    let framewire = welcome.is_some();
    let welcome = match welcome {
        Some(w) => {
            check_welcome(&cfg, &w)?;
            w
        }
        // A plain ZeroMQ publisher: frames from the first one that arrives,
        // read ahead `queue` deep, no liveness reports either way.
        None => Welcome {
            instance: 0,
            next_seq: 0,
            policy: Policy::Block,
            queue: cfg.queue as u32,
            heartbeat_ms: 0,
            peer_timeout_ms: 0,
            write_timeout_ms: 0,
        },
    };
    // `shm=pool`: attach the pool, or ask for payloads inline; either way say so.
    let mut att: Option<Att> = None;
    let mut shm = None;
    if let Some(Control::Shm {
        socket, segment, ..
    }) = announce
    {
        let left = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(100));
        let r = attach(&cfg, &socket, segment, left).await;
        let conn = match r {
            Ok((a, conn)) => {
                att = Some(a);
                shm = Some(Ok(()));
                Some(conn)
            }
            Err(why) => {
                tracing::info!(subscriber = %id, %why, "receiving payloads inline");
                shm = Some(Err(why));
                None
            }
        };
        let reason = match &shm {
            Some(Err(why)) => why.as_str(),
            _ => "",
        };
        let report = wire::encode_shm(&id, conn, reason);
        tokio::time::timeout(left, async {
            zmtp::write_message(&mut wr, &[report]).await?;
            wr.flush().await
        })
        .await
        .map_err(|_| Error::timeout(left, "telling the publisher how we take payloads"))?
        .map_err(|e| Error::io("telling the publisher how we take payloads", e))?;
    }
    tracing::debug!(subscriber = %id, next_seq = welcome.next_seq, policy = %welcome.policy, "subscribed");

    let stats = Arc::new(StatCounters::default());
    let shared = Arc::new(Shared {
        inbox: Mutex::new(Inbox {
            frames: LagQueue::new(),
            errors: VecDeque::new(),
            ended: None,
        }),
        to_app: Notify::new(),
        to_io: Notify::new(),
        stats,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let (rel_tx, rel_rx) = mpsc::unbounded_channel();
    let (msg_tx, msgs) = mpsc::channel(1);
    let limits = Limits {
        max_message: cfg.max_payload.saturating_add(ENVELOPE_ALLOWANCE),
        max_parts: 4,
        what: "a message (max_payload plus the envelope)",
        skip_oversized: true,
    };
    let reader = tokio::spawn(read_loop(reader, limits, msg_tx));
    let (up, up_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(wr, up_rx));
    let io = Io {
        msgs,
        up,
        reader: reader.abort_handle(),
        writer,
        framewire,
        shared: shared.clone(),
        id,
        prefix,
        welcome,
        max_payload: cfg.max_payload,
        heartbeat: cfg.heartbeat,
        peer_timeout: cfg.peer_timeout,
        received: 0,
        dropped: 0,
        next_seq: welcome.next_seq,
        att,
        mode,
        rel_tx,
    };
    tokio::spawn(io.run(stop_rx, rel_rx));
    Ok(ZmqSubscriber {
        shared,
        mode,
        pending: None,
        welcome,
        shm,
        _stop: stop_tx,
    })
}

/// Attaches a publisher's pool: `Err` says why not (and what to change).
#[cfg(feature = "shm")]
async fn attach(
    cfg: &Config,
    socket: &str,
    segment: u64,
    timeout: Duration,
) -> std::result::Result<(Att, u32), String> {
    if cfg.shm == Shm::Inline {
        return Err("this subscriber asked for inline payloads (shm=inline)".into());
    }
    let hint = "payloads come inline instead (over ZeroMQ, one copy more); to receive them \
                through shared memory, run the subscriber on the publisher's host, as its user, \
                in its network namespace";
    match Attached::attach(socket, timeout).await {
        Ok(a) if a.segment_id() == segment => {
            let conn = a.conn();
            Ok((a, conn))
        }
        Ok(a) => Err(format!(
            "the pool at @{socket} is segment {}, the publisher announced {segment}; {hint}",
            a.segment_id()
        )),
        Err(e) => Err(format!(
            "cannot attach the publisher's shared memory ({e}); {hint}"
        )),
    }
}

#[cfg(not(feature = "shm"))]
async fn attach(
    cfg: &Config,
    _socket: &str,
    _segment: u64,
    _timeout: Duration,
) -> std::result::Result<(Att, u32), String> {
    if cfg.shm == Shm::Inline {
        return Err("this subscriber asked for inline payloads (shm=inline)".into());
    }
    Err(
        "the publisher uses shm=pool but this transport-zmq was built without its `shm` \
         feature; payloads come inline instead (enable the feature to receive them through \
         shared memory)"
            .into(),
    )
}

/// Both sides' liveness settings must fit together.
fn check_welcome(cfg: &Config, w: &Welcome) -> Result<()> {
    let ms = |m: u32| Duration::from_millis(u64::from(m));
    // We must not give up on a publisher that is merely busy writing to another peer.
    cfg.check_liveness(ms(w.heartbeat_ms), ms(w.write_timeout_ms))?;
    // The publisher must not give up on us between two of our heartbeats.
    if cfg.heartbeat * 2 >= ms(w.peer_timeout_ms) {
        return Err(Error::InvalidOption {
            option: "heartbeat".into(),
            reason: format!(
                "{:?} is too slow for the publisher's peer_timeout of {:?}; lower `heartbeat`",
                cfg.heartbeat,
                ms(w.peer_timeout_ms)
            ),
        });
    }
    Ok(())
}

impl ZmqSubscriber {
    /// The publisher's backpressure policy, as announced when this subscriber joined.
    pub fn publisher_policy(&self) -> Policy {
        self.welcome.policy
    }

    /// Sequence number of the first frame this subscriber can receive (the
    /// publisher's next number when the subscription arrived).
    pub fn first_seq(&self) -> u64 {
        self.welcome.next_seq
    }

    /// Under a `shm=pool` publisher: `Some(Ok(()))` when this subscriber
    /// attached the pool (payloads arrive through shared memory), or
    /// `Some(Err(why))` when it receives them inline, with why and what to
    /// change. `None` when the publisher does not use shared memory.
    pub fn shm_status(&self) -> Option<std::result::Result<(), &str>> {
        self.shm
            .as_ref()
            .map(|r| r.as_ref().map(|_| ()).map_err(String::as_str))
    }
}

#[async_trait]
impl Subscriber for ZmqSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.pending.take() {
                return Ok(f);
            }
            let notified = self.shared.to_app.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                // Cancellation-safe: nothing below awaits while holding a frame.
                let mut inbox = self.shared.lock();
                if let Some(e) = inbox.errors.pop_front() {
                    return Err(e);
                }
                if let Some((lag, frame)) = inbox.frames.pop() {
                    drop(inbox);
                    self.shared.to_io.notify_one();
                    if lag > 0 {
                        StatCounters::add(&self.shared.stats.lagged, lag);
                        self.pending = Some(frame);
                        return Err(Error::Lagged { missed: lag });
                    }
                    return Ok(frame);
                }
                if let Some(why) = &inbox.ended {
                    let why = why.clone();
                    let lag = inbox.frames.carry();
                    if lag > 0 {
                        inbox.frames.clear();
                        StatCounters::add(&self.shared.stats.lagged, lag);
                        return Err(Error::Lagged { missed: lag });
                    }
                    return Err(Error::disconnected("zmq", why));
                }
            }
            notified.await;
        }
    }

    fn recv_mode(&self) -> RecvMode {
        self.mode
    }

    fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }
}

/// The reader task: messages from the publisher, within `limits`, to the I/O
/// task (one at a time: when the inbox is full, the socket is not read).
async fn read_loop(
    mut reader: zmtp::Reader<Box<dyn Rd>>,
    limits: Limits,
    tx: mpsc::Sender<std::result::Result<Msg, String>>,
) {
    loop {
        let m = match reader.next(&limits).await {
            Ok(Incoming::Message(parts)) => Ok(Msg::Parts(parts)),
            Ok(Incoming::Oversized(len)) => Ok(Msg::Oversized(len)),
            // Nothing the publisher may send as a command matters here.
            Ok(Incoming::Command(..)) => continue,
            Err(e) if e.is_eof() => Err(format!("{LOST}: it closed the connection")),
            Err(e) => Err(format!("{LOST}: {e}")),
        };
        let end = m.is_err();
        if tx.send(m).await.is_err() || end {
            return;
        }
    }
}

/// The writer task: upstream messages, in order; on the channel's end, the
/// connection is shut down for writing.
async fn write_loop(mut wr: Box<dyn Wr>, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(m) = rx.recv().await {
        let r = tokio::time::timeout(UPSTREAM_WRITE_TIMEOUT, async {
            zmtp::write_message(&mut wr, &[m]).await?;
            wr.flush().await
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not write to the publisher");
                return;
            }
            Err(_) => {
                tracing::debug!("a write to the publisher timed out");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(BYE_TIMEOUT, wr.shutdown()).await;
}

/// What the reader task hands over.
enum Msg {
    Parts(Vec<Bytes>),
    /// A message over `max_payload` (plus the envelope), skipped unread.
    Oversized(u64),
}

/// The I/O task's state.
struct Io {
    msgs: mpsc::Receiver<std::result::Result<Msg, String>>,
    up: mpsc::UnboundedSender<Bytes>,
    reader: tokio::task::AbortHandle,
    writer: tokio::task::JoinHandle<()>,
    /// The publisher is a framewire one (else a plain ZeroMQ PUB).
    framewire: bool,
    shared: Arc<Shared>,
    id: SubscriberId,
    prefix: String,
    welcome: Welcome,
    max_payload: u64,
    heartbeat: Duration,
    peer_timeout: Duration,
    /// Data frames received since joining.
    received: u64,
    /// Frames this subscriber dropped itself (drop-oldest).
    dropped: u64,
    /// The lowest sequence number the next frame may carry.
    next_seq: u64,
    /// `shm=pool`: the publisher's pool, attached.
    att: Option<Att>,
    mode: RecvMode,
    /// Views -> this task: slots to release.
    rel_tx: mpsc::UnboundedSender<(u32, u64)>,
}

impl Io {
    async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        mut rel_rx: mpsc::UnboundedReceiver<(u32, u64)>,
    ) {
        let mut releases: Vec<(u32, u64)> = Vec::new();
        let drop_oldest = self.welcome.policy == Policy::DropOldest;
        let cap = self.welcome.queue as usize;
        let mut tick = tokio::time::interval(self.heartbeat);
        let framewire = self.framewire;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_due = false;
        let mut was_reading = false;
        let mut silence_deadline = Instant::now() + self.peer_timeout;
        let shared = self.shared.clone();
        let why = loop {
            let room = drop_oldest || self.shared.lock().frames.len() < cap;
            if room && !was_reading {
                // The publisher's silence counts only while we listen.
                silence_deadline = Instant::now() + self.peer_timeout;
            }
            was_reading = room;
            if status_due {
                status_due = false;
                if framewire {
                    self.status();
                }
            }
            while let Ok(r) = rel_rx.try_recv() {
                releases.push(r);
            }
            if !releases.is_empty() {
                self.release(&mut releases);
            }
            let to_io = shared.to_io.notified();
            tokio::pin!(to_io);
            to_io.as_mut().enable();
            if !room && self.shared.lock().frames.len() < cap {
                continue;
            }
            let r = tokio::select! {
                biased;
                _ = &mut stop => break None,
                r = self.msgs.recv(), if room => r,
                // A plain publisher sends no heartbeats: its connection tells.
                _ = tokio::time::sleep_until(silence_deadline), if room && framewire => {
                    break Some(format!(
                        "nothing from the publisher for {:?} (peer_timeout): it crashed or the network is down",
                        self.peer_timeout
                    ));
                }
                _ = &mut to_io => continue,
                Some(r) = rel_rx.recv() => {
                    releases.push(r);
                    continue;
                }
                _ = tick.tick() => {
                    status_due = true;
                    continue;
                }
            };
            silence_deadline = Instant::now() + self.peer_timeout;
            match self.handle(r, cap, drop_oldest) {
                Ok(ack) => status_due |= ack,
                Err(why) => break Some(why),
            }
        };
        if let Some(why) = why {
            tracing::debug!(subscriber = %self.id, %why, "stream ended");
            self.shared.end(why);
        }
        // Views dropped from here on keep their slots until this process
        // unmaps the pool (the publisher sees its attach connection close).
        while let Ok(r) = rel_rx.try_recv() {
            releases.push(r);
        }
        self.release(&mut releases);
        // Cancel the subscription: the publisher forgets us at once; then
        // the connection closes.
        let _ = self.up.send(wire::subscription(&self.prefix, false));
        let Io {
            up, writer, reader, ..
        } = self;
        drop(up);
        let abort = writer.abort_handle();
        if tokio::time::timeout(BYE_TIMEOUT, writer).await.is_err() {
            abort.abort();
        }
        reader.abort();
    }

    /// Sends the releases collected (in batches), best effort.
    fn release(&mut self, releases: &mut Vec<(u32, u64)>) {
        for batch in releases.chunks(wire::MAX_RELEASES) {
            let _ = self.up.send(wire::encode_release(&self.id, batch));
        }
        releases.clear();
    }

    /// A slot reference: checked, then a view or a copy. Any failure is an
    /// error for this message (the hold, if it was one, goes back).
    fn resolve(&mut self, len: u64, reference: &[u8]) -> Result<bytes::Bytes> {
        #[cfg(feature = "shm")]
        {
            let r = SlotRef::decode(reference)?;
            let release = {
                let tx = self.rel_tx.clone();
                move || {
                    let _ = tx.send((r.index, r.generation));
                }
            };
            let out = if r.len != len {
                Err(Error::invalid_reference(
                    "zmq",
                    format!("it is {} bytes long, the envelope announces {len}", r.len),
                ))
            } else if let Some(att) = &self.att {
                match (att.check(&r), self.mode) {
                    // Checked first, so that a refused reference is released below.
                    (Ok(()), RecvMode::View) => return att.view(&r, release),
                    (Ok(()), _) => att.copy(&r),
                    (Err(e), _) => Err(e),
                }
            } else {
                Err(Error::invalid_reference(
                    "zmq",
                    "the publisher sent a shared-memory reference, but this subscriber did not \
                     attach its pool (it asked for inline payloads)",
                ))
            };
            // A copy, or nothing: the slot goes back (a stale or forged
            // release is ignored by the publisher).
            release();
            out
        }
        #[cfg(not(feature = "shm"))]
        {
            let _ = (len, reference, &self.att, &self.rel_tx, self.mode);
            Err(Error::invalid_reference(
                "zmq",
                "the publisher sent a shared-memory reference, but this build lacks the `shm` \
                 feature",
            ))
        }
    }

    fn status(&mut self) {
        let s = wire::Status {
            id: self.id,
            received: self.received,
            dropped: self.dropped,
        };
        let _ = self.up.send(wire::encode_status(&s));
    }

    /// Handles one message. `Ok(true)`: report status now; `Err`: the stream ended.
    fn handle(
        &mut self,
        r: Option<std::result::Result<Msg, String>>,
        cap: usize,
        drop_oldest: bool,
    ) -> std::result::Result<bool, String> {
        let parts = match r {
            Some(Ok(Msg::Parts(p))) => p,
            Some(Ok(Msg::Oversized(len))) => {
                let limit = self.max_payload;
                tracing::warn!(subscriber = %self.id, len, "skipped a message over max_payload");
                self.shared.error(Error::PayloadTooLarge {
                    len,
                    limit,
                    option: "max_payload",
                });
                return Ok(false);
            }
            // A reset, or bytes that are not ZMTP: what was in flight is lost.
            Some(Err(why)) => return Err(why),
            None => return Err(LOST.to_owned()),
        };
        let parsed = match wire::parse_downstream(parts, self.framewire, self.max_payload) {
            Ok(Downstream::Shared {
                mut frame,
                len,
                reference,
            }) => match self.resolve(len, &reference) {
                Ok(payload) => {
                    frame.payload = payload;
                    Ok(Downstream::Data(frame))
                }
                Err(e) => Err(e),
            },
            other => other,
        };
        match parsed {
            Ok(Downstream::Data(mut f)) => {
                if f.seq < self.next_seq {
                    self.shared.error(Error::protocol(
                        "zmq",
                        format!(
                            "frame {} arrived after frame {}: sequence numbers went backwards",
                            f.seq,
                            self.next_seq - 1
                        ),
                    ));
                    return Ok(false);
                }
                if !f.topic.starts_with(&self.prefix) {
                    self.shared.error(Error::protocol(
                        "zmq",
                        format!(
                            "the publisher sent topic `{}` outside our prefix `{}`",
                            f.topic, self.prefix
                        ),
                    ));
                    return Ok(false);
                }
                self.next_seq = f.seq.saturating_add(1);
                f.stamp_received();
                self.received += 1;
                let stats = &self.shared.stats;
                StatCounters::add(&stats.frames_received, 1);
                StatCounters::add(&stats.bytes_received, f.payload.len() as u64);
                let mut inbox = self.shared.lock();
                if inbox.frames.len() >= cap && drop_oldest {
                    inbox.frames.drop_oldest();
                    self.dropped += 1;
                }
                inbox.frames.push(f);
                drop(inbox);
                self.shared.to_app.notify_one();
                // Under drop-oldest the publisher's `flush` waits for this.
                Ok(drop_oldest)
            }
            Ok(Downstream::Control(c)) => match c {
                Control::Lag(n) => {
                    self.shared.lock().frames.add_lag(n);
                    Ok(false)
                }
                Control::Heartbeat => Ok(false),
                Control::Goodbye => Err("the publisher closed the channel".into()),
                Control::Welcome(w) if w.instance != self.welcome.instance => {
                    Err("the publisher was restarted; frames may have been lost".into())
                }
                Control::Welcome(_) => Err(
                    "the connection to the publisher was interrupted; frames may have been lost"
                        .into(),
                ),
                Control::Refuse { reason, .. } => {
                    Err(format!("the publisher refused us: {reason}"))
                }
                // Only before a welcome.
                Control::Shm { .. } => Ok(false),
            },
            Ok(Downstream::Shared { .. }) => Ok(false),
            Err(e) => {
                tracing::warn!(subscriber = %self.id, error = %e, "unreadable message from the publisher");
                self.shared.error(e);
                Ok(false)
            }
        }
    }
}
