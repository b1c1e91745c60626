//! ZMTP 3.0 with the NULL mechanism (rfc.zeromq.org 23/ZMTP, 29/PUBSUB; the
//! SUBSCRIBE and CANCEL commands of 37/ZMTP 3.1 are understood too): the
//! greeting, the READY handshake, and the framing of messages and commands.
//!
//! This is the backend's own ZeroMQ layer, written for what framewire needs
//! from it (see the crate README for why it replaced the `zeromq` crate):
//!
//! - **Every length a peer announces is bounded before anything is
//!   allocated**: a command (READY included, so before the handshake is
//!   complete) by [`MAX_COMMAND`], a message by [`Limits`] (the sum of its
//!   parts and their number). A frame that announces more ends the
//!   connection with [`ZmtpError::TooLarge`]; nothing of its size is ever
//!   reserved.
//! - **No copy of a payload on either side.** [`write_message`] writes the
//!   frame headers and the parts' own `Bytes` with vectored writes; large
//!   parts are read straight from the socket into a buffer of exactly their
//!   size, taken from a small per-connection pool that gets the buffer back
//!   when the last `Bytes` of it is dropped (so a stream of 32 MiB frames
//!   does not map and fault a fresh 32 MiB per frame).
//! - Nothing here panics on input: garbage is an error for the connection.

use std::io::IoSlice;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest command accepted (READY, ERROR, SUBSCRIBE, PING, ...), in bytes.
/// Also the cap on everything a peer sends before its READY.
pub const MAX_COMMAND: usize = 64 << 10;
/// Length of a ZMTP 3 greeting.
pub const GREETING_LEN: usize = 64;
/// Parts at most this long are read through the connection's read buffer;
/// longer ones straight into a buffer of their own.
const SMALL_PART: usize = 64 << 10;
/// Buffers kept for reuse per connection.
const POOL_BUFFERS: usize = 4;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// What can go wrong on a ZMTP connection.
#[derive(Debug)]
pub enum ZmtpError {
    /// The socket failed, or closed (`UnexpectedEof`).
    Io(std::io::Error),
    /// The peer does not speak ZMTP 3 with the NULL mechanism, or broke the framing.
    Protocol(String),
    /// The peer announced a frame or message larger than allowed.
    TooLarge {
        /// What was announced (bytes).
        len: u64,
        /// The limit.
        limit: u64,
        /// What the limit is for (and which option raises it, if any).
        what: &'static str,
    },
    /// The peer sent an ERROR command.
    PeerError(String),
}

impl std::fmt::Display for ZmtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZmtpError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                write!(f, "the connection was closed")
            }
            ZmtpError::Io(e) => write!(f, "{e}"),
            ZmtpError::Protocol(why) => write!(f, "ZMTP protocol error: {why}"),
            ZmtpError::TooLarge { len, limit, what } => {
                write!(
                    f,
                    "the peer announced {len} bytes, over the limit of {limit} for {what}"
                )
            }
            ZmtpError::PeerError(why) => write!(f, "the peer refused the connection: {why}"),
        }
    }
}

impl std::error::Error for ZmtpError {}

impl From<std::io::Error> for ZmtpError {
    fn from(e: std::io::Error) -> Self {
        ZmtpError::Io(e)
    }
}

impl ZmtpError {
    /// True when the peer closed the connection cleanly (end of stream).
    pub fn is_eof(&self) -> bool {
        matches!(self, ZmtpError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof)
    }
}

fn protocol<T>(why: impl Into<String>) -> Result<T, ZmtpError> {
    Err(ZmtpError::Protocol(why.into()))
}

/// Bounds on the messages a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message: the sum of its parts, in bytes.
    pub max_message: u64,
    /// Most parts in one message.
    pub max_parts: usize,
    /// What `max_message` stands for, for errors (e.g. "a message (max_payload + envelope)").
    pub what: &'static str,
    /// A message over `max_message` is read and thrown away (nothing of its
    /// size is allocated) and reported as [`Incoming::Oversized`], instead of
    /// being an error that ends the connection.
    pub skip_oversized: bool,
}

/// Our greeting: ZMTP 3.0, NULL mechanism, not as server.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xFF;
    // Padding: what libzmq sends (a legacy identity length of 0, plus one).
    g[8] = 1;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// Checks a peer's greeting: ZMTP 3.x with the NULL mechanism.
pub fn check_greeting(g: &[u8; GREETING_LEN]) -> Result<(), ZmtpError> {
    if g[0] != 0xFF || g[9] & 1 != 1 {
        return protocol(
            "not a ZMTP 3 greeting (the peer does not speak ZeroMQ 4.x, or sent garbage)",
        );
    }
    if g[10] < 3 {
        return protocol(format!(
            "the peer speaks ZMTP {}.{}; ZMTP 3.0 or later (libzmq 4.x) is needed",
            g[10], g[11]
        ));
    }
    let mech = &g[12..32];
    let name_len = mech.iter().position(|&b| b == 0).unwrap_or(mech.len());
    if &mech[..name_len] != b"NULL" || mech[name_len..].iter().any(|&b| b != 0) {
        return protocol(format!(
            "the peer asks for the security mechanism `{}`; framewire speaks only NULL",
            String::from_utf8_lossy(&mech[..name_len])
        ));
    }
    Ok(())
}

/// The metadata of a peer's READY command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The properties, in order (names as sent).
    pub properties: Vec<(String, Bytes)>,
}

impl Metadata {
    /// A property by name (case-insensitive, as ZMTP says).
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.properties
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The peer's `Socket-Type` (empty when absent).
    pub fn socket_type(&self) -> String {
        self.get("Socket-Type")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }
}

/// Encodes a command body: name, then data.
pub fn command(name: &str, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + name.len() + data.len());
    b.put_u8(name.len() as u8);
    b.put_slice(name.as_bytes());
    b.put_slice(data);
    b.freeze()
}

/// Encodes a READY command with these properties.
pub fn ready(properties: &[(&str, &[u8])]) -> Bytes {
    let mut data = BytesMut::new();
    for (name, value) in properties {
        data.put_u8(name.len() as u8);
        data.put_slice(name.as_bytes());
        data.put_u32(value.len() as u32);
        data.put_slice(value);
    }
    command("READY", &data)
}

/// Splits a command body into its name and data.
pub fn parse_command(body: &[u8]) -> Result<(&[u8], &[u8]), ZmtpError> {
    let Some((&n, rest)) = body.split_first() else {
        return protocol("an empty command");
    };
    let n = usize::from(n);
    if rest.len() < n {
        return protocol("a command shorter than its name");
    }
    Ok(rest.split_at(n))
}

/// Parses the properties of a READY command's data.
pub fn parse_metadata(mut data: &[u8]) -> Result<Metadata, ZmtpError> {
    let mut md = Metadata::default();
    while !data.is_empty() {
        let n = usize::from(data[0]);
        data = &data[1..];
        if n == 0 || data.len() < n + 4 {
            return protocol("a malformed READY property");
        }
        let name = String::from_utf8_lossy(&data[..n]).into_owned();
        data = &data[n..];
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        data = &data[4..];
        if data.len() < len {
            return protocol("a READY property value longer than the command");
        }
        md.properties
            .push((name, Bytes::copy_from_slice(&data[..len])));
        data = &data[len..];
    }
    Ok(md)
}

/// One thing read from a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message (one or more parts).
    Message(Vec<Bytes>),
    /// A command: name and data.
    Command(Bytes, Bytes),
    /// A message over [`Limits::max_message`], discarded unread (only with
    /// [`Limits::skip_oversized`]): the size it announced so far.
    Oversized(u64),
}

type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

/// A large part's buffer; back to its pool when its last `Bytes` is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut pool = transport_core::sync::lock(&self.pool);
        if pool.len() < POOL_BUFFERS {
            pool.push(buf);
        }
    }
}

/// Reads ZMTP frames from one connection, within limits.
#[derive(Debug)]
pub struct Reader<R> {
    rd: R,
    buf: BytesMut,
    pool: Pool,
    /// An oversized message being thrown away: bytes left of its current
    /// part, whether more parts follow, parts so far.
    skip: Option<(u64, bool, usize)>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader over `rd`.
    pub fn new(rd: R) -> Self {
        Reader {
            rd,
            buf: BytesMut::with_capacity(SMALL_PART),
            pool: Arc::default(),
            skip: None,
        }
    }

    /// Reads until the buffer holds `n` bytes (`n` is small: bounded by the caller).
    async fn fill(&mut self, n: usize) -> Result<(), ZmtpError> {
        if self.buf.len() >= n {
            return Ok(());
        }
        self.buf.reserve(n.max(SMALL_PART) - self.buf.len());
        while self.buf.len() < n {
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        Ok(())
    }

    /// Reads the peer's greeting and checks it.
    pub async fn greeting(&mut self) -> Result<(), ZmtpError> {
        // The signature first: garbage is refused after 10 bytes.
        self.fill(10).await?;
        if self.buf[0] != 0xFF || self.buf[9] & 1 != 1 {
            return protocol(
                "not a ZMTP 3 greeting (the peer does not speak ZeroMQ 4.x, or sent garbage)",
            );
        }
        self.fill(GREETING_LEN).await?;
        let mut g = [0u8; GREETING_LEN];
        g.copy_from_slice(&self.buf[..GREETING_LEN]);
        self.buf.advance(GREETING_LEN);
        check_greeting(&g)
    }

    /// Reads one frame header: (flags, size).
    async fn header(&mut self) -> Result<(u8, u64), ZmtpError> {
        self.fill(2).await?;
        let flags = self.buf[0];
        if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
            return protocol(format!("reserved frame flags set ({flags:#04x})"));
        }
        if flags & FLAG_COMMAND != 0 && flags & FLAG_MORE != 0 {
            return protocol("a command frame with the MORE flag");
        }
        if flags & FLAG_LONG == 0 {
            let size = u64::from(self.buf[1]);
            self.buf.advance(2);
            return Ok((flags, size));
        }
        self.fill(9).await?;
        let mut s = [0u8; 8];
        s.copy_from_slice(&self.buf[1..9]);
        self.buf.advance(9);
        Ok((flags, u64::from_be_bytes(s)))
    }

    /// Reads a body of `size` bytes (already checked against the limits).
    async fn body(&mut self, size: usize) -> Result<Bytes, ZmtpError> {
        if size <= SMALL_PART {
            self.fill(size).await?;
            return Ok(self.buf.split_to(size).freeze());
        }
        let reused = {
            let mut pool = transport_core::sync::lock(&self.pool);
            pool.iter()
                .position(|b| b.capacity() >= size)
                .map(|i| pool.swap_remove(i))
        };
        let mut v = reused.unwrap_or_else(|| Vec::with_capacity(size));
        let have = self.buf.len().min(size);
        v.extend_from_slice(&self.buf[..have]);
        self.buf.advance(have);
        while v.len() < size {
            let want = size - v.len();
            if self.rd.read_buf(&mut (&mut v).limit(want)).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        Ok(Bytes::from_owner(Pooled {
            buf: v,
            pool: self.pool.clone(),
        }))
    }

    /// Reads and throws away `n` bytes, allocating nothing new.
    async fn discard(&mut self, mut n: u64) -> Result<(), ZmtpError> {
        loop {
            let have = (self.buf.len() as u64).min(n);
            self.buf.advance(have as usize);
            n -= have;
            if n == 0 {
                return Ok(());
            }
            self.buf.clear();
            self.buf.reserve(SMALL_PART);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// Reads the next command, which must come before any message (the
    /// handshake): bounded by [`MAX_COMMAND`].
    pub async fn command(&mut self) -> Result<(Bytes, Bytes), ZmtpError> {
        let (flags, size) = self.header().await?;
        if flags & FLAG_COMMAND == 0 {
            return protocol("a message before the handshake completed");
        }
        if size > MAX_COMMAND as u64 {
            return Err(ZmtpError::TooLarge {
                len: size,
                limit: MAX_COMMAND as u64,
                what: "a command (the handshake's cap)",
            });
        }
        let body = self.body(size as usize).await?;
        let (name, data) = parse_command(&body)?;
        let name = body.slice_ref(name);
        let data = body.slice_ref(data);
        Ok((name, data))
    }

    /// Reads the next message or command, within `limits`.
    pub async fn next(&mut self, limits: &Limits) -> Result<Incoming, ZmtpError> {
        if let Some((size, mut more, mut n)) = self.skip.take() {
            self.discard(size).await?;
            while more {
                let (flags, size) = self.header().await?;
                if flags & FLAG_COMMAND != 0 || n >= limits.max_parts {
                    return protocol("a malformed oversized message");
                }
                self.discard(size).await?;
                more = flags & FLAG_MORE != 0;
                n += 1;
            }
        }
        let mut parts = Vec::new();
        let mut total = 0u64;
        loop {
            let (flags, size) = self.header().await?;
            if flags & FLAG_COMMAND != 0 {
                if !parts.is_empty() {
                    return protocol("a command in the middle of a message");
                }
                if size > MAX_COMMAND as u64 {
                    return Err(ZmtpError::TooLarge {
                        len: size,
                        limit: MAX_COMMAND as u64,
                        what: "a command",
                    });
                }
                let body = self.body(size as usize).await?;
                let (name, data) = parse_command(&body)?;
                return Ok(Incoming::Command(
                    body.slice_ref(name),
                    body.slice_ref(data),
                ));
            }
            if parts.len() >= limits.max_parts {
                return protocol(format!("a message of more than {} parts", limits.max_parts));
            }
            let sum = total.saturating_add(size);
            if sum > limits.max_message && limits.skip_oversized {
                // Reported now; its bytes are thrown away as they come.
                self.skip = Some((size, flags & FLAG_MORE != 0, parts.len() + 1));
                return Ok(Incoming::Oversized(sum));
            }
            if sum > limits.max_message {
                return Err(ZmtpError::TooLarge {
                    len: sum,
                    limit: limits.max_message,
                    what: limits.what,
                });
            }
            total = sum;
            // Bounded by `max_message`, itself at most a few bytes over 1 TiB;
            // on a 32-bit target a part that does not fit is too large.
            let size = usize::try_from(size).map_err(|_| ZmtpError::TooLarge {
                len: size,
                limit: usize::MAX as u64,
                what: "this machine's address space",
            })?;
            parts.push(self.body(size).await?);
            if flags & FLAG_MORE == 0 {
                return Ok(Incoming::Message(parts));
            }
        }
    }
}

fn frame_header(out: &mut BytesMut, flags: u8, len: usize) {
    if len <= 255 {
        out.put_u8(flags);
        out.put_u8(len as u8);
    } else {
        out.put_u8(flags | FLAG_LONG);
        out.put_u64(len as u64);
    }
}

/// Writes `chunks` whole with vectored writes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut chunks: Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let n = {
            let slices: Vec<IoSlice<'_>> = chunks[first..]
                .iter()
                .take(64)
                .map(|c| IoSlice::new(c))
                .collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 && first < chunks.len() {
            let c = &mut chunks[first];
            if c.len() <= left {
                left -= c.len();
                first += 1;
            } else {
                c.advance(left);
                left = 0;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}

/// Writes one message (all of `parts`, in one go). The parts are not copied.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[Bytes],
) -> std::io::Result<()> {
    let mut heads = BytesMut::with_capacity(parts.len() * 9);
    for (i, p) in parts.iter().enumerate() {
        let more = if i + 1 < parts.len() { FLAG_MORE } else { 0 };
        frame_header(&mut heads, more, p.len());
    }
    let mut heads = heads.freeze();
    let mut chunks = Vec::with_capacity(parts.len() * 2);
    for p in parts {
        let h = if p.len() <= 255 { 2 } else { 9 };
        chunks.push(heads.split_to(h));
        if !p.is_empty() {
            chunks.push(p.clone());
        }
    }
    write_all_vectored(w, chunks).await
}

/// Writes one command (its body from [`command`] or [`ready`]).
pub async fn write_command<W: AsyncWrite + Unpin>(w: &mut W, body: &Bytes) -> std::io::Result<()> {
    let mut head = BytesMut::with_capacity(9);
    frame_header(&mut head, FLAG_COMMAND, body.len());
    write_all_vectored(w, vec![head.freeze(), body.clone()]).await
}

/// Runs the NULL handshake: our greeting and READY (with `Socket-Type` =
/// `socket_type` and `properties`), the peer's greeting and READY. Returns
/// the peer's metadata. An ERROR from the peer is [`ZmtpError::PeerError`].
pub async fn handshake<R, W>(
    rd: &mut Reader<R>,
    w: &mut W,
    socket_type: &str,
    properties: &[(&str, &[u8])],
) -> Result<Metadata, ZmtpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&greeting()).await?;
    rd.greeting().await?;
    let mut props = vec![("Socket-Type", socket_type.as_bytes())];
    props.extend_from_slice(properties);
    write_command(w, &ready(&props)).await?;
    w.flush().await?;
    let (name, data) = rd.command().await?;
    match &name[..] {
        b"READY" => parse_metadata(&data),
        b"ERROR" => {
            let reason = data
                .split_first()
                .map(|(&n, r)| {
                    String::from_utf8_lossy(&r[..r.len().min(usize::from(n))]).into_owned()
                })
                .unwrap_or_default();
            Err(ZmtpError::PeerError(reason))
        }
        other => protocol(format!(
            "expected READY, got the command `{}`",
            String::from_utf8_lossy(other)
        )),
    }
}

/// Sends an ERROR command (best effort, before closing a connection).
pub async fn write_error<W: AsyncWrite + Unpin>(w: &mut W, reason: &str) -> std::io::Result<()> {
    let r = &reason.as_bytes()[..reason.len().min(255)];
    let mut data = Vec::with_capacity(1 + r.len());
    data.push(r.len() as u8);
    data.extend_from_slice(r);
    write_command(w, &command("ERROR", &data)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message: 1 << 20,
        max_parts: 4,
        what: "a test message",
        skip_oversized: false,
    };

    async fn pair() -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
        tokio::io::duplex(1 << 16)
    }

    #[tokio::test]
    async fn messages_round_trip_small_and_large() {
        let (mut a, b) = pair().await;
        let big = Bytes::from(vec![7u8; 300_000]);
        let parts = vec![Bytes::from_static(b"topic"), Bytes::new(), big.clone()];
        let sent = parts.clone();
        let w = tokio::spawn(async move {
            write_message(&mut a, &sent).await.unwrap();
            write_message(&mut a, &sent).await.unwrap();
            write_command(&mut a, &command("PING", b"\x00\x00hi"))
                .await
                .unwrap();
        });
        let mut r = Reader::new(b);
        for _ in 0..2 {
            assert_eq!(
                r.next(&LIMITS).await.unwrap(),
                Incoming::Message(parts.clone())
            );
        }
        match r.next(&LIMITS).await.unwrap() {
            Incoming::Command(n, d) => {
                assert_eq!((&n[..], &d[..]), (&b"PING"[..], &b"\x00\x00hi"[..]))
            }
            other => panic!("{other:?}"),
        }
        w.await.unwrap();
        assert!(r.next(&LIMITS).await.unwrap_err().is_eof());
    }

    #[tokio::test]
    async fn announced_lengths_are_bounded_before_reading() {
        // 1 TiB announced: refused at once, nothing allocated.
        let mut raw = vec![FLAG_LONG];
        raw.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let mut r = Reader::new(&raw[..]);
        assert!(matches!(
            r.next(&LIMITS).await,
            Err(ZmtpError::TooLarge { .. })
        ));
        // The same as a command, and before the handshake.
        raw[0] = FLAG_LONG | FLAG_COMMAND;
        let mut r = Reader::new(&raw[..]);
        assert!(matches!(r.command().await, Err(ZmtpError::TooLarge { .. })));
        // Parts adding up over the limit.
        let mut raw = Vec::new();
        for _ in 0..2 {
            raw.push(FLAG_LONG | FLAG_MORE);
            raw.extend_from_slice(&(600_000u64).to_be_bytes());
            raw.extend(std::iter::repeat_n(0u8, 600_000));
        }
        let mut r = Reader::new(&raw[..]);
        assert!(matches!(
            r.next(&LIMITS).await,
            Err(ZmtpError::TooLarge { .. })
        ));
        // Or skipped, and the next message read.
        raw[600_009] = FLAG_LONG;
        raw.extend_from_slice(&[0, 2, b'o', b'k']);
        let skip = Limits {
            skip_oversized: true,
            ..LIMITS
        };
        let mut r = Reader::new(&raw[..]);
        assert_eq!(r.next(&skip).await.unwrap(), Incoming::Oversized(1_200_000));
        assert_eq!(
            r.next(&skip).await.unwrap(),
            Incoming::Message(vec![Bytes::from_static(b"ok")])
        );
        // Too many parts.
        let raw = [FLAG_MORE, 0, FLAG_MORE, 0, FLAG_MORE, 0, FLAG_MORE, 0, 0, 0];
        let mut r = Reader::new(&raw[..]);
        assert!(matches!(r.next(&LIMITS).await, Err(ZmtpError::Protocol(_))));
    }

    #[tokio::test]
    async fn handshake_between_two_ends() {
        let (a, b) = pair().await;
        let (ar, mut aw) = tokio::io::split(a);
        let (br, mut bw) = tokio::io::split(b);
        let x = tokio::spawn(async move {
            let mut r = Reader::new(ar);
            handshake(&mut r, &mut aw, "PUB", &[]).await
        });
        let mut r = Reader::new(br);
        let md = handshake(&mut r, &mut bw, "SUB", &[("X-Test", b"yes")])
            .await
            .unwrap();
        assert_eq!(md.socket_type(), "PUB");
        let md = x.await.unwrap().unwrap();
        assert_eq!(md.socket_type(), "SUB");
        assert_eq!(md.get("x-test").map(|v| &v[..]), Some(&b"yes"[..]));
    }

    #[tokio::test]
    async fn garbage_greetings_are_refused() {
        for g in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xFFu8; 64][..]] {
            let mut r = Reader::new(g);
            assert!(r.greeting().await.is_err());
        }
        let mut g = greeting();
        g[12..16].copy_from_slice(b"PLAI");
        let mut r = Reader::new(&g[..]);
        assert!(matches!(r.greeting().await, Err(ZmtpError::Protocol(_))));
    }
}
