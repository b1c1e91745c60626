//! The subscriber: connects, handshakes, and reads frames on a task of its own
//! so that `recv` is cancellation-safe.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
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
        let next = handshake(&mut r, &mut w, timeout).await?;
        (
            next,
            tokio::spawn(read_loop(r, w, cfg.max_payload, tx, stats.clone())),
        )
    } else {
        let s = within(timeout, TcpStream::connect(&addr), &addr).await?;
        let _ = s.set_nodelay(true);
        let (mut r, mut w) = s.into_split();
        let next = handshake(&mut r, &mut w, timeout).await?;
        (
            next,
            tokio::spawn(read_loop(r, w, cfg.max_payload, tx, stats.clone())),
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
        Err(_) => Err(Error::Timeout(timeout, "connecting to the publisher")),
    }
}

/// Returns the sequence number of the first frame this subscriber will get.
async fn handshake<R, W>(r: &mut R, w: &mut W, timeout: Duration) -> Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let exchange = async {
        w.write_all(&wire::client_hello())
            .await
            .map_err(|e| Error::io("sending the handshake", e))?;
        let mut hello = [0u8; wire::SERVER_HELLO_LEN];
        r.read_exact(&mut hello).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Disconnected(
                    "the publisher closed the connection during the handshake".into(),
                )
            } else {
                Error::io("reading the handshake", e)
            }
        })?;
        wire::check_hello(&hello)?;
        let (max_payload, next_seq) = wire::server_hello_fields(&hello);
        tracing::debug!(max_payload, next_seq, "connected");
        Ok(next_seq)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Timeout(timeout, "for the publisher's handshake"))?
}

async fn read_loop<R, W>(
    mut r: R,
    _w: W,
    max_payload: u64,
    tx: mpsc::Sender<Result<Frame>>,
    stats: Arc<StatCounters>,
) where
    R: AsyncRead + Unpin,
{
    // `_w` stays open while we read: closing it would tell the publisher we left.
    let pool = wire::RecvPool::new();
    loop {
        let item = match wire::read_frame(&mut r, max_payload, &pool).await {
            Ok(Some(mut f)) => {
                f.stamp_received();
                StatCounters::add(&stats.frames_received, 1);
                StatCounters::add(&stats.bytes_received, f.payload.len() as u64);
                Ok(f)
            }
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let fatal = item.is_err();
        if tx.send(item).await.is_err() || fatal {
            return;
        }
    }
}

#[async_trait]
impl Subscriber for TcpSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            let frame = match self.tracker.take_pending() {
                Some(f) => f,
                None => {
                    if self.ended {
                        return Err(Error::Disconnected("the publisher is gone".into()));
                    }
                    // Cancellation-safe: nothing is lost if this future is dropped here.
                    match self.rx.recv().await {
                        Some(Ok(f)) => self.tracker.accept(f)?,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "connection to the publisher failed");
                            return Err(e);
                        }
                        None => {
                            self.ended = true;
                            return Err(Error::Disconnected(
                                "the publisher closed the connection".into(),
                            ));
                        }
                    }
                }
            };
            if frame.topic.starts_with(&self.topic_prefix) {
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
