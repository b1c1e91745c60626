//! The socket protocol: a handshake, then envelope messages from publisher to
//! subscriber, with heartbeats both ways.
//!
//! ```text
//! subscriber -> publisher   hello:  "FWHS" | version u16 | 0u16 | liveness_ms u32
//! publisher  -> subscriber  hello:  "FWHS" | version u16 | 0u16 | max_payload u64 | next_seq u64
//!                                   | liveness_ms u32 | 0u32
//! publisher  -> subscriber  frames: prefix | header | payload   (transport_core::codec)
//!                           or a heartbeat "FWHB" between two frames
//! subscriber -> publisher   heartbeats "FWHB", nothing else
//! ```
//!
//! Version 2 (this one) added the liveness fields and the heartbeats; a peer
//! of another version is refused with [`Error::VersionMismatch`] (the first 8
//! bytes of both hellos keep their version-1 meaning, so an old peer reports
//! the mismatch too). Each side sends a heartbeat when it has sent nothing
//! for a quarter of the smaller of the two `liveness` values, and declares
//! its peer dead when a read waits longer than its own `liveness`. EOF from
//! either side is a disconnect.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use transport_core::bufpool::BufPool;
use transport_core::codec::{self, MAGIC, PREFIX_LEN, Prefix};
use transport_core::{Error, Frame, Result};

pub use crate::PROTOCOL_VERSION as VERSION;

const HELLO_MAGIC: [u8; 4] = *b"FWHS";
/// The part of both hellos that every version shares: magic and version.
pub(crate) use transport_core::codec::HELLO_HEAD_LEN;
pub(crate) const CLIENT_HELLO_LEN: usize = 12;
pub(crate) const SERVER_HELLO_LEN: usize = 32;
/// What a peer sends when it has nothing else to say.
pub(crate) const HEARTBEAT: [u8; 4] = *b"FWHB";

/// `liveness` in whole milliseconds for the hello (at least 1).
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

pub(crate) fn client_hello(liveness: Duration) -> [u8; CLIENT_HELLO_LEN] {
    let mut b = [0u8; CLIENT_HELLO_LEN];
    codec::put_hello_head(&mut b, HELLO_MAGIC, VERSION);
    b[8..12].copy_from_slice(&millis(liveness).to_le_bytes());
    b
}

/// `next_seq` is the sequence number of the first frame the new subscriber
/// will get, so that it can count frames dropped before its first receipt.
pub(crate) fn server_hello(
    max_payload: u64,
    next_seq: u64,
    liveness: Duration,
) -> [u8; SERVER_HELLO_LEN] {
    let mut b = [0u8; SERVER_HELLO_LEN];
    codec::put_hello_head(&mut b, HELLO_MAGIC, VERSION);
    b[8..16].copy_from_slice(&max_payload.to_le_bytes());
    b[16..24].copy_from_slice(&next_seq.to_le_bytes());
    b[24..28].copy_from_slice(&millis(liveness).to_le_bytes());
    b
}

/// What to say about a peer whose first bytes are not a framewire hello:
/// what it sent (as text when it is text), what it looks like, what to check.
pub(crate) fn foreign_peer(b: &[u8]) -> String {
    let head = &b[..b.len().min(16)];
    let text = head
        .iter()
        .all(|c| c.is_ascii_graphic() || *c == b' ')
        .then(|| String::from_utf8_lossy(head).into_owned());
    // A ZMTP greeting: 0xff, eight bytes of padding, 0x7f.
    let zmtp = head.first() == Some(&0xff) && head.get(9).is_none_or(|&c| c == 0x7f);
    let looks = if zmtp {
        Some("a ZeroMQ (ZMTP) peer: use a zmq+tcp:// endpoint on both sides")
    } else if head.starts_with(b"HTTP") || head.starts_with(b"GET ") || head.starts_with(b"POST") {
        Some("an HTTP server or client")
    } else if head.starts_with(b"SSH-") {
        Some("an SSH server")
    } else if head.first() == Some(&0x16) && head.get(1) == Some(&0x03) {
        Some("a TLS peer")
    } else if head.starts_with(b"FWIR") {
        Some("a framewire envelope without the tcp handshake (another backend's stream)")
    } else {
        None
    };
    let hex: Vec<String> = head.iter().map(|c| format!("{c:02x}")).collect();
    let sent = match text {
        Some(t) => format!("\"{t}\" (hex {})", hex.join(" ")),
        None => format!("hex {}", hex.join(" ")),
    };
    match looks {
        Some(what) => format!(
            "the peer does not speak framewire's tcp protocol: its first bytes, {sent}, look like {what}; check the endpoint's host, port and scheme"
        ),
        None => format!(
            "the peer does not speak framewire's tcp protocol (its first bytes: {sent}); check the endpoint's host, port and scheme"
        ),
    }
}

/// Checks a hello's magic and version (its first [`HELLO_HEAD_LEN`] bytes).
pub(crate) fn check_hello(b: &[u8]) -> Result<()> {
    codec::check_hello_head(b, HELLO_MAGIC, VERSION, |b| {
        Error::protocol("tcp", foreign_peer(b))
    })
}

/// The peer's `liveness` from the last 4 bytes of a client hello.
pub(crate) fn client_hello_liveness(b: &[u8; CLIENT_HELLO_LEN]) -> Result<Duration> {
    liveness_field([b[8], b[9], b[10], b[11]])
}

fn liveness_field(b: [u8; 4]) -> Result<Duration> {
    match u32::from_le_bytes(b) {
        0 => Err(Error::protocol(
            "tcp",
            "the peer announced a liveness of 0 ms",
        )),
        ms => Ok(Duration::from_millis(u64::from(ms))),
    }
}

/// `(max_payload, next_seq, liveness)` of a server hello.
pub(crate) fn server_hello_fields(b: &[u8; SERVER_HELLO_LEN]) -> Result<(u64, u64, Duration)> {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[8..16]);
    let max = u64::from_le_bytes(a);
    a.copy_from_slice(&b[16..24]);
    let next = u64::from_le_bytes(a);
    let live = liveness_field([b[24], b[25], b[26], b[27]])?;
    Ok((max, next, live))
}

/// How often to send a heartbeat when idle: a quarter of the shorter of the
/// two sides' `liveness`, so that three may be late before the peer gives up.
/// The peer's value comes off the wire: it counts as at least
/// [`MIN_LIVENESS`](crate::MIN_LIVENESS), so that a peer announcing less
/// (1 ms) cannot make this side send a heartbeat every millisecond.
pub(crate) fn heartbeat_interval(ours: Duration, theirs: Duration) -> Duration {
    let theirs = theirs.max(crate::MIN_LIVENESS);
    (ours.min(theirs) / 4).max(Duration::from_millis(1))
}

/// Ticks of silence after which a read gives up (each a quarter of `limit`).
const SILENT_TICKS: u32 = 4;

/// A reader whose every read may wait at most `limit` for data: one that
/// waits longer fails with `TimedOut` and sets [`Watched::expired`].
///
/// The clock runs only while a read is waiting on the socket, not while the
/// owner is busy elsewhere (e.g. waiting for the application to take a
/// frame), so a slow application is never mistaken for a dead peer.
/// Silence is counted in ticks of `limit / 4` that fire late rather than
/// pile up (`MissedTickBehavior::Delay`): a runtime starved for seconds by
/// blocking work (which also starves the peer's heartbeats when it shares the
/// runtime) delays the verdict instead of faking one; a peer must stay silent
/// through four ticks that actually ran.
pub(crate) struct Watched<R> {
    inner: R,
    ticks: tokio::time::Interval,
    silent: u32,
    armed: bool,
    /// A read timed out: the peer stopped answering.
    pub expired: bool,
}

impl<R> Watched<R> {
    pub fn new(inner: R, limit: Duration) -> Watched<R> {
        let period = (limit / SILENT_TICKS).max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watched {
            inner,
            ticks,
            silent: 0,
            armed: false,
            expired: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Watched<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !this.armed {
                    // The first tick one period from now.
                    this.ticks.reset();
                    this.silent = 0;
                    this.armed = true;
                }
                while this.ticks.poll_tick(cx).is_ready() {
                    this.silent += 1;
                    if this.silent >= SILENT_TICKS {
                        this.armed = false;
                        this.expired = true;
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the peer sent nothing within liveness",
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

/// A frame encoded for the wire: its prefix+header, and its payload (shared
/// between every subscriber's queue, never copied).
#[derive(Debug)]
pub(crate) struct Encoded {
    pub header: Bytes,
    pub payload: Bytes,
}

impl Encoded {
    pub fn new(frame: &Frame) -> Result<Encoded> {
        let mut h = BytesMut::new();
        codec::encode_header(frame, &mut h)?;
        Ok(Encoded {
            header: h.freeze(),
            payload: frame.payload.clone(),
        })
    }
}

/// Writes one message with vectored writes (no user-space copy of the payload).
///
/// The whole message must be written within `deadline` (`write_timeout`),
/// however the peer trickles: a subscriber that cannot take a whole frame in
/// that time is cut off, so one slow peer cannot hold the publisher (under
/// `block`) or a frame's memory for longer.
pub(crate) async fn write_encoded<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Encoded,
    deadline: Duration,
) -> Result<()> {
    let mut header = msg.header.clone();
    let mut payload = msg.payload.clone();
    let until = tokio::time::Instant::now() + deadline;
    while header.has_remaining() || payload.has_remaining() {
        let slices = [IoSlice::new(&header), IoSlice::new(&payload)];
        let n = match tokio::time::timeout_at(until, w.write_vectored(&slices)).await {
            Ok(Ok(0)) => {
                return Err(Error::disconnected(
                    "tcp",
                    "subscriber closed its connection",
                ));
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(Error::io("writing a frame", e)),
            Err(_) => {
                return Err(Error::timeout(
                    deadline,
                    "for the subscriber to take a whole frame (write_timeout); it reads too slowly or stopped reading",
                ));
            }
        };
        let from_header = n.min(header.len());
        header.advance(from_header);
        payload.advance(n - from_header);
    }
    Ok(())
}

/// Payloads smaller than this are plain allocations; larger ones are read
/// into buffers recycled through a [`BufPool`].
pub(crate) const POOLED_MIN: usize = 64 << 10;
/// Free receive buffers kept per subscriber.
pub(crate) const POOLED_KEEP: usize = 4;

/// Reads one message. `Ok(None)` is a clean end of stream at a message boundary.
///
/// The payload is read straight into one buffer of the length the (already
/// checked) prefix announces: recycled through `pool` for large payloads.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_payload: u64,
    pool: &std::sync::Arc<BufPool>,
) -> Result<Option<Frame>> {
    let mut prefix = [0u8; PREFIX_LEN];
    loop {
        // The first 4 bytes say what follows: a frame's magic or a heartbeat.
        let mut got = 0;
        while got < HEARTBEAT.len() {
            let n = r
                .read(&mut prefix[got..HEARTBEAT.len()])
                .await
                .map_err(|e| Error::io("reading a frame", e))?;
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(Error::protocol(
                        "tcp",
                        format!(
                            "connection closed after {got} bytes of a {PREFIX_LEN}-byte prefix"
                        ),
                    ))
                };
            }
            got += n;
        }
        if prefix[..4] != HEARTBEAT {
            break;
        }
    }
    if prefix[..4] != MAGIC {
        return Err(Error::protocol(
            "tcp",
            format!(
                "bad magic {:02x?}: neither a frame nor a heartbeat",
                &prefix[..4]
            ),
        ));
    }
    r.read_exact(&mut prefix[4..])
        .await
        .map_err(|e| truncated(e, "prefix"))?;
    let p = Prefix::decode(&prefix, max_payload)?;
    let mut header = vec![0u8; p.header_len as usize];
    r.read_exact(&mut header)
        .await
        .map_err(|e| truncated(e, "header"))?;
    let mut frame = codec::decode_header(&header, p.payload_len)?;
    let len = usize::try_from(p.payload_len).map_err(|_| Error::PayloadTooLarge {
        len: p.payload_len,
        limit: usize::MAX as u64,
        option: "max_payload",
    })?;
    if len < POOLED_MIN {
        let mut payload = BytesMut::zeroed(len);
        r.read_exact(&mut payload)
            .await
            .map_err(|e| truncated(e, "payload"))?;
        frame.payload = payload.freeze();
    } else {
        let mut buf = pool.take(len);
        r.read_exact(&mut buf)
            .await
            .map_err(|e| truncated(e, "payload"))?;
        frame.payload = pool.into_bytes(buf);
    }
    Ok(Some(frame))
}

fn truncated(e: std::io::Error, what: &str) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::protocol(
            "tcp",
            format!("connection closed in the middle of a {what}"),
        )
    } else {
        Error::io(format!("reading a {what}"), e)
    }
}

#[cfg(test)]
mod foreign_tests {
    use super::*;

    #[test]
    fn a_foreign_peer_is_described_not_dumped() {
        let m = foreign_peer(b"HTTP/1.1 400 Bad");
        assert!(
            m.contains("\"HTTP/1.1") && m.contains("an HTTP server"),
            "{m}"
        );
        let mut zmtp = [0u8; 12];
        zmtp[0] = 0xff;
        zmtp[9] = 0x7f;
        let m = foreign_peer(&zmtp);
        assert!(m.contains("zmq+tcp://") && m.contains("hex ff 00"), "{m}");
        let m = foreign_peer(b"0662");
        assert!(m.contains("\"0662\" (hex 30 36 36 32)"), "{m}");
        assert!(!m.contains("[48"), "{m}");
        assert!(
            check_hello(b"SSH-2.0-OpenSSH")
                .unwrap_err()
                .to_string()
                .contains("SSH")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that takes `chunk` bytes at a time, each `pace` after the last:
    /// every single write makes progress before any per-write timeout.
    struct Trickle {
        chunk: usize,
        pace: Duration,
        sleep: Pin<Box<tokio::time::Sleep>>,
        taken: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            match this.sleep.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    let at = tokio::time::Instant::now() + this.pace;
                    this.sleep.as_mut().reset(at);
                    let n = buf.len().min(this.chunk);
                    this.taken += n;
                    Poll::Ready(Ok(n))
                }
            }
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The peer's `liveness` comes off the wire: one below what this side
    /// accepts for itself (a hostile or broken peer announcing 1 ms) must
    /// not make us send a heartbeat every millisecond.
    #[test]
    fn a_peer_cannot_force_heartbeats_faster_than_min_liveness_allows() {
        let ours = crate::DEFAULT_LIVENESS;
        assert_eq!(
            heartbeat_interval(ours, Duration::from_millis(1)),
            crate::MIN_LIVENESS / 4
        );
        let theirs = liveness_field(1u32.to_le_bytes()).expect("1 ms parses");
        assert!(heartbeat_interval(ours, theirs) >= crate::MIN_LIVENESS / 4);
        // In range, the shorter of the two rules.
        assert_eq!(
            heartbeat_interval(ours, Duration::from_millis(400)),
            Duration::from_millis(100)
        );
        assert_eq!(heartbeat_interval(ours, Duration::from_secs(60)), ours / 4);
    }

    /// `write_timeout` bounds the whole frame: a peer that takes a few bytes
    /// just before each timeout would fire is cut off after one timeout.
    #[tokio::test]
    async fn the_write_deadline_is_per_frame_not_per_write() {
        let deadline = Duration::from_millis(200);
        let mut peer = Trickle {
            chunk: 100,
            pace: deadline * 7 / 10,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            taken: 0,
        };
        let msg = Encoded::new(&Frame::new(vec![1u8; 64 << 10])).expect("encode");
        let start = std::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            write_encoded(&mut peer, &msg, deadline),
        )
        .await
        .expect("a trickled frame ran past the per-frame deadline");
        assert!(
            matches!(&r, Err(Error::Timeout { after: d, what: why }) if *d == deadline && why.contains("write_timeout")),
            "{r:?}"
        );
        assert!(peer.taken > 0 && peer.taken < 64 << 10);
        assert!(start.elapsed() < deadline * 3, "{:?}", start.elapsed());
    }
}
