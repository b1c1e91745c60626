//! The publisher's connections: one accept task, and per connection a reader
//! task (the ZMTP handshake, then subscriptions and upstream messages, sent
//! to the driver as [`Event`]s) and a writer task (the driver's writes, each
//! bounded by `write_timeout`). A connection is only ever slow for itself:
//! no write waits for another connection, and a connection that has not
//! finished its handshake never reaches the driver.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::wire::{self, SubscriberId};
use crate::zmtp::{self, Incoming, Limits};

/// Connections in their handshake at once; more are closed at once (a flood
/// of connections that never finish costs this many tasks at most).
const MAX_HANDSHAKES: usize = 256;
/// Events queued for the driver.
pub(crate) const EVENT_QUEUE: usize = 1024;
/// What a subscriber may send: subscriptions, status reports and slot
/// releases are all far smaller than this.
const UPSTREAM_LIMITS: Limits = Limits {
    max_message: 64 << 10,
    max_parts: 4,
    what: "a message from a subscriber (subscriptions and reports are small)",
    skip_oversized: false,
};

/// A listening socket.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Who connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerKind {
    /// A framewire subscriber of our version, with its id.
    Framewire(SubscriberId),
    /// A framewire subscriber of another protocol version.
    Foreign(u8),
    /// A plain ZeroMQ SUB or XSUB socket.
    Plain,
}

/// The driver's handle on a connection. Dropping it closes the connection.
#[derive(Debug)]
pub(crate) struct Peer {
    tx: Option<mpsc::Sender<Write>>,
    /// Dropped: the reader stops.
    _kill: oneshot::Sender<()>,
    writer: Option<AbortHandle>,
}

impl Peer {
    /// Queues a write; false when the writer is gone or still busy (the
    /// driver gives each connection one write at a time).
    pub fn write(&self, w: Write) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.try_send(w).is_ok())
    }

    /// No more writes: the writer finishes what it has, then shuts the
    /// connection down for writing (the peer sees the end of the stream).
    pub fn finish(&mut self) {
        self.tx = None;
    }

    /// Stops reading; the writer finishes what it has, shuts the
    /// connection down and ends by itself (at most `write_timeout`).
    pub fn detach(mut self) {
        self.tx = None;
        self.writer = None;
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.abort();
        }
    }
}

/// One write: messages written back to back, within `write_timeout`.
#[derive(Debug)]
pub(crate) struct Write {
    pub msgs: Vec<Vec<Bytes>>,
    /// It carries a data frame (counted when written).
    pub data: bool,
}

/// What connections tell the driver.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection finished its handshake.
    Joined {
        conn: u64,
        kind: PeerKind,
        peer: Peer,
    },
    /// A subscription or cancellation.
    Subscription { conn: u64, sub: wire::Subscription },
    /// A framewire upstream message.
    Upstream { conn: u64, msg: Bytes },
    /// A write finished.
    Written {
        conn: u64,
        data: bool,
        result: Result<(), String>,
    },
    /// The connection closed or failed.
    Closed { conn: u64, why: String },
}

/// What every connection task needs.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub instance: u64,
    pub handshake_timeout: Duration,
    pub write_timeout: Duration,
    pub events: mpsc::Sender<Event>,
    /// Where writers report finished writes ([`Event::Written`]).
    pub written: mpsc::UnboundedSender<Event>,
}

/// Accepts connections until aborted.
pub(crate) async fn accept_loop(listener: Listener, ctx: Ctx) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut conn = 0u64;
    loop {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (Box::new(r) as Box<dyn Rd>, Box::new(w) as Box<dyn Wr>)
            }),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| {
                let (r, w) = s.into_split();
                (Box::new(r) as Box<dyn Rd>, Box::new(w) as Box<dyn Wr>)
            }),
        };
        let (rd, wr) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("too many connections in their handshake; closing a new one");
            continue;
        };
        conn += 1;
        tokio::spawn(serve(rd, wr, conn, ctx.clone(), permit));
    }
}

trait Rd: AsyncRead + Unpin + Send + 'static {}
impl<T: AsyncRead + Unpin + Send + 'static> Rd for T {}
trait Wr: AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncWrite + Unpin + Send + 'static> Wr for T {}

/// One connection: handshake, then its reader loop.
async fn serve(
    rd: Box<dyn Rd>,
    mut wr: Box<dyn Wr>,
    conn: u64,
    ctx: Ctx,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut reader = zmtp::Reader::new(rd);
    let prop = wire::publisher_property(ctx.instance);
    let hs = tokio::time::timeout(
        ctx.handshake_timeout,
        zmtp::handshake(&mut reader, &mut wr, "PUB", &[(wire::PROPERTY, &prop)]),
    )
    .await;
    let md = match hs {
        Ok(Ok(md)) => md,
        Ok(Err(e)) => {
            tracing::debug!(conn, error = %e, "closing a connection whose handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(
                conn,
                "closing a connection that did not finish its ZMTP handshake within handshake_timeout"
            );
            return;
        }
    };
    drop(permit);
    let st = md.socket_type();
    if !st.eq_ignore_ascii_case("SUB") && !st.eq_ignore_ascii_case("XSUB") {
        tracing::info!(conn, socket_type = %st, "refusing a peer that is not a SUB or XSUB socket");
        let _ = tokio::time::timeout(
            ctx.write_timeout,
            zmtp::write_error(
                &mut wr,
                "a framewire publisher serves SUB and XSUB sockets only",
            ),
        )
        .await;
        return;
    }
    let kind = match md.get(wire::PROPERTY) {
        None => PeerKind::Plain,
        Some(v) => match wire::parse_subscriber_property(v) {
            Ok((wire::VERSION, id)) => PeerKind::Framewire(id),
            Ok((v, _)) => PeerKind::Foreign(v),
            Err(e) => {
                tracing::debug!(conn, error = %e, "closing a connection with a malformed READY");
                return;
            }
        },
    };
    let (tx, rx) = mpsc::channel(1);
    let writer = tokio::spawn(write_loop(wr, rx, conn, ctx.clone()));
    let (kill, mut killed) = oneshot::channel();
    let peer = Peer {
        tx: Some(tx),
        _kill: kill,
        writer: Some(writer.abort_handle()),
    };
    if ctx
        .events
        .send(Event::Joined { conn, kind, peer })
        .await
        .is_err()
    {
        return;
    }
    let mut budget = Budget::new();
    let why = loop {
        if let Some(pause) = budget.pause() {
            // Over its budget of subscriptions: this connection is not read
            // for a while (its peer's writes wait), nobody else is slowed.
            tokio::select! {
                _ = &mut killed => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        let r = tokio::select! {
            _ = &mut killed => return,
            r = reader.next(&UPSTREAM_LIMITS) => r,
        };
        let ev = match r {
            Ok(Incoming::Message(parts)) => match parts.as_slice() {
                [p] if p.first().is_some_and(|&b| b <= 1) => match wire::parse_subscription(p) {
                    Ok(sub) => Event::Subscription { conn, sub },
                    Err(e) => {
                        tracing::debug!(conn, error = %e, "ignoring a subscription");
                        continue;
                    }
                },
                [p] => Event::Upstream {
                    conn,
                    msg: p.clone(),
                },
                _ => {
                    tracing::debug!(
                        conn,
                        parts = parts.len(),
                        "ignoring a multipart message from a subscriber"
                    );
                    continue;
                }
            },
            Ok(Incoming::Oversized(_)) => continue,
            Ok(Incoming::Command(name, data)) => match &name[..] {
                b"SUBSCRIBE" | b"CANCEL" => {
                    match wire::subscription_of(&name[..] == b"SUBSCRIBE", &data) {
                        Ok(sub) => Event::Subscription { conn, sub },
                        Err(e) => {
                            tracing::debug!(conn, error = %e, "ignoring a subscription");
                            continue;
                        }
                    }
                }
                b"ERROR" => break "the subscriber sent a ZMTP ERROR".to_owned(),
                // PING (we announce ZMTP 3.0, so a peer should not send it) and others.
                _ => continue,
            },
            Err(e) if e.is_eof() => break "the subscriber closed the connection".to_owned(),
            Err(e) => break e.to_string(),
        };
        if matches!(ev, Event::Subscription { .. }) {
            budget.spend();
        }
        if ctx.events.send(ev).await.is_err() {
            return;
        }
    };
    let _ = ctx.events.send(Event::Closed { conn, why }).await;
}

/// Subscriptions (and cancellations) one connection may send at once; a
/// real subscriber sends a few, a plain one at most a few per topic.
const SUBSCRIPTION_BURST: f64 = 2048.0;
/// Then this many per second: a connection flooding the publisher with
/// subscriptions costs the driver a bounded share of its time.
const SUBSCRIPTIONS_PER_SEC: f64 = 1000.0;

/// A token bucket over one connection's subscriptions.
struct Budget {
    tokens: f64,
    at: tokio::time::Instant,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            tokens: SUBSCRIPTION_BURST,
            at: tokio::time::Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = tokio::time::Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * SUBSCRIPTIONS_PER_SEC;
        self.tokens = (self.tokens + earned).min(SUBSCRIPTION_BURST);
        self.at = now;
    }

    fn spend(&mut self) {
        self.refill();
        self.tokens -= 1.0;
    }

    /// How long to wait before reading again (none while in budget).
    fn pause(&mut self) -> Option<Duration> {
        self.refill();
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / SUBSCRIPTIONS_PER_SEC))
    }
}

async fn write_loop(mut wr: Box<dyn Wr>, mut rx: mpsc::Receiver<Write>, conn: u64, ctx: Ctx) {
    let timeout = ctx.write_timeout;
    while let Some(w) = rx.recv().await {
        let r = tokio::time::timeout(timeout, async {
            for m in &w.msgs {
                zmtp::write_message(&mut wr, m).await?;
            }
            wr.flush().await
        })
        .await;
        let result = match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err(format!(
                "one message took longer than write_timeout ({timeout:?}) to write"
            )),
        };
        let failed = result.is_err();
        let ev = Event::Written {
            conn,
            data: w.data,
            result,
        };
        if ctx.written.send(ev).is_err() || failed {
            return;
        }
    }
    let _ = tokio::time::timeout(timeout, wr.shutdown()).await;
}
