//! The subscriber: connects, handshakes, and reads frames on a task of its own
//! so that `recv` is cancellation-safe.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use transport_core::contract::{count_received, topic_matches};
use transport_core::{
    Endpoint, Error, Frame, RecvMode, Result, SeqTracker, StatCounters, Stats, Subscriber,
};

use crate::Config;
use crate::wire;

/// Frames read ahead of `recv`: the reader task runs at most this far ahead,
/// after which TCP flow control pushes back on the publisher.
const READ_AHEAD: usize = 2;

/// A subscriber on `tcp://HOST:PORT` or `unix://PATH`.
#[derive(Debug)]
pub struct TcpSubscriber {
    rx: mpsc::Receiver<Result<Frame>>,
    tracker: SeqTracker,
    stats: Arc<StatCounters>,
    mode: RecvMode,
    topic_prefix: String,
    reader: JoinHandle<()>,
    ended: bool,
}

pub(crate) async fn connect(
    endpoint: &Endpoint,
    cfg: Config,
    mode: RecvMode,
    topic_prefix: String,
) -> Result<TcpSubscriber> {
    let timeout = cfg.handshake_timeout;
    let addr = endpoint.address().to_owned();
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let stats = Arc::new(StatCounters::default());
    let (next_seq, reader) = if endpoint.scheme() == "unix" {
        let s = within(timeout, UnixStream::connect(&addr), &addr).await?;
        let (mut r, mut w) = s.into_split();
        let (next, theirs) = handshake(&mut r, &mut w, &cfg).await?;
        let every = wire::heartbeat_interval(cfg.liveness, theirs);
        (
            next,
            tokio::spawn(connection(r, w, every, cfg, tx, stats.clone())),
        )
    } else {
        let s = within(timeout, TcpStream::connect(&addr), &addr).await?;
        let _ = s.set_nodelay(true);
        let (mut r, mut w) = s.into_split();
        let (next, theirs) = handshake(&mut r, &mut w, &cfg).await?;
        let every = wire::heartbeat_interval(cfg.liveness, theirs);
        (
            next,
            tokio::spawn(connection(r, w, every, cfg, tx, stats.clone())),
        )
    };
    let mut tracker = SeqTracker::new(stats.clone());
    tracker.expect_next(next_seq);
    Ok(TcpSubscriber {
        rx,
        tracker,
        stats,
        mode,
        topic_prefix,
        reader,
        ended: false,
    })
}

/// The connection's task: reads frames and sends heartbeats until the
/// connection ends (then both halves close) or the subscriber is dropped
/// (which aborts it).
async fn connection<R, W>(
    r: R,
    w: W,
    every: Duration,
    cfg: Config,
    tx: mpsc::Sender<Result<Frame>>,
    stats: Arc<StatCounters>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::select! {
        () = read_loop(r, cfg, tx, stats) => {}
        () = heartbeats(w, every, cfg.write_timeout) => {}
    }
}

/// Tells the publisher we are alive, every `every`. The write half also
/// stays open while we read: closing it would tell the publisher we left.
/// A heartbeat that cannot be written leaves the verdict to the reader,
/// which notices a dead connection within `liveness`.
async fn heartbeats<W: AsyncWrite + Unpin>(mut w: W, every: Duration, stall: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(stall, w.write_all(&wire::HEARTBEAT)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "heartbeat not sent");
                break;
            }
            Err(_) => {
                tracing::debug!("heartbeat stuck in a full socket");
                break;
            }
        }
    }
    std::future::pending::<()>().await
}

async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
    addr: &str,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::io(
            format!("connecting to {addr} (is a publisher running there?)"),
            e,
        )),
        Err(_) => Err(Error::timeout(timeout, "connecting to the publisher")),
    }
}

/// Returns the sequence number of the first frame this subscriber will get
/// and the publisher's `liveness`.
async fn handshake<R, W>(r: &mut R, w: &mut W, cfg: &Config) -> Result<(u64, Duration)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let timeout = cfg.handshake_timeout;
    let exchange = async {
        w.write_all(&wire::client_hello(cfg.liveness))
            .await
            .map_err(|e| Error::io("sending the handshake", e))?;
        let closed = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::disconnected(
                    "tcp",
                    "the publisher closed the connection during the handshake",
                )
            } else {
                Error::io("reading the handshake", e)
            }
        };
        let mut hello = [0u8; wire::SERVER_HELLO_LEN];
        // The version first: a peer of another version may send less.
        r.read_exact(&mut hello[..wire::HELLO_HEAD_LEN])
            .await
            .map_err(closed)?;
        wire::check_hello(&hello)?;
        r.read_exact(&mut hello[wire::HELLO_HEAD_LEN..])
            .await
            .map_err(closed)?;
        let (max_payload, next_seq, liveness) = wire::server_hello_fields(&hello)?;
        tracing::debug!(max_payload, next_seq, ?liveness, "connected");
        Ok((next_seq, liveness))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::timeout(timeout, "for the publisher's handshake"))?
}

async fn read_loop<R>(r: R, cfg: Config, tx: mpsc::Sender<Result<Frame>>, stats: Arc<StatCounters>)
where
    R: AsyncRead + Unpin,
{
    let pool = transport_core::bufpool::BufPool::new(wire::POOLED_KEEP);
    let mut r = wire::Watched::new(r, cfg.liveness);
    loop {
        let item = match wire::read_frame(&mut r, cfg.max_payload, &pool).await {
            Ok(Some(mut f)) => {
                count_received(&stats, &mut f);
                Ok(f)
            }
            Ok(None) => return,
            // Whatever part of a frame had arrived is dropped with it.
            Err(_) if r.expired => Err(Error::disconnected(
                "tcp",
                format!(
                    "the publisher stopped answering: nothing received for {:?} (liveness); \
                 its host or the link may be down",
                    cfg.liveness
                ),
            )),
            // A publisher that goes away with bytes of ours (heartbeats)
            // unread in its socket is reset rather than closed (tcp RST, or
            // ECONNRESET on a unix socket): it left, as with EOF.
            Err(Error::Io { source, .. }) if is_reset(&source) => Err(Error::disconnected(
                "tcp",
                format!("the publisher reset the connection ({source}); it went away"),
            )),
            Err(e) => Err(e),
        };
        let fatal = item.is_err();
        if tx.send(item).await.is_err() || fatal {
            return;
        }
    }
}

/// True for the I/O errors of a connection its peer reset or dropped.
fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

#[async_trait]
impl Subscriber for TcpSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            let frame = match self.tracker.take_pending() {
                Some(f) => f,
                None => {
                    if self.ended {
                        return Err(Error::disconnected("tcp", "the publisher is gone"));
                    }
                    // Cancellation-safe: nothing is lost if this future is dropped here.
                    match self.rx.recv().await {
                        Some(Ok(f)) => self.tracker.accept(f)?,
                        Some(Err(e)) => {
                            self.ended |= e.is_disconnect();
                            tracing::warn!(error = %e, "connection to the publisher failed");
                            return Err(e);
                        }
                        None => {
                            self.ended = true;
                            return Err(Error::disconnected(
                                "tcp",
                                "the publisher closed the connection",
                            ));
                        }
                    }
                }
            };
            if topic_matches(&self.topic_prefix, &frame.topic) {
                return Ok(frame);
            }
        }
    }

    fn recv_mode(&self) -> RecvMode {
        self.mode
    }

    fn stats(&self) -> Stats {
        self.stats.snapshot()
    }
}

impl Drop for TcpSubscriber {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
