//! The subscriber: maps the ring read-only, copies each record out into
//! memory it owns, and reports its progress through its own page.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::UnixStream;
use transport_core::codec::{self, PREFIX_LEN, Prefix};
use transport_core::contract::{count_received, topic_matches};
use transport_core::{Error, Frame, RecvMode, Result, SeqTracker, StatCounters, Stats, Subscriber};

use crate::layout::{
    self, KIND_SKIP, MAX_CAPACITY, PageMap, RECORD_HEADER, RING_MAGIC, RecordHeader, Ring,
};
use crate::proto::{self, SERVER_HELLO_LEN, ServerHello};
use crate::{Config, sys};

/// A subscriber on `shm-ring://NAME`.
///
/// Every frame it returns owns its payload: a private heap copy taken out of
/// the ring, so holding frames never holds the publisher back. A ring cannot
/// lend views (the writer reuses its space), so `recv=view` is accepted but
/// the mode in force, as [`Subscriber::recv_mode`] reports, is always
/// [`RecvMode::Owned`].
#[derive(Debug)]
pub struct ShmRingSubscriber {
    ring: Ring,
    page: PageMap,
    stream: UnixStream,
    /// Next position to read; everything below is done with.
    cursor: u64,
    tracker: SeqTracker,
    stats: Arc<StatCounters>,
    topic_prefix: String,
    pool: Arc<BufPool>,
    env: Vec<u8>,
    /// The publisher's socket reached EOF: read what is committed, then stop.
    publisher_gone: bool,
    /// The ring turned out corrupt; every `recv` reports a disconnect.
    broken: bool,
    spin: Duration,
    park_epoch: u64,
    torn: u64,
}

pub(crate) async fn connect(
    cfg: Config,
    asked: RecvMode,
    topic_prefix: String,
) -> Result<ShmRingSubscriber> {
    let url = format!("shm-ring://{}", cfg.name);
    if asked == RecvMode::View {
        tracing::debug!(%url, "views are not available on a ring; frames are owned copies");
    }
    let std = sys::connect_abstract(&cfg.socket_name()).map_err(|e| {
        Error::io(
            format!("connecting to {url} (is a publisher running under this user?)"),
            e,
        )
    })?;
    std.set_nonblocking(true)
        .map_err(|e| Error::io("making the socket non-blocking", e))?;
    let stream =
        UnixStream::from_std(std).map_err(|e| Error::io("registering the socket with tokio", e))?;
    let uid = sys::peer_uid(stream.as_fd())
        .map_err(|e| Error::io("reading the publisher's credentials", e))?;
    if uid != sys::my_uid() {
        return Err(Error::InvalidEndpoint {
            url,
            reason: format!(
                "the publisher of this name runs as uid {uid}, not as us ({}); refusing it",
                sys::my_uid()
            ),
        });
    }
    let (page, page_fd) =
        PageMap::create().map_err(|e| Error::io("creating this subscriber's page", e))?;
    let timeout = cfg.handshake_timeout;
    let (hello, ring_fd) = tokio::time::timeout(timeout, handshake(&stream, page_fd))
        .await
        .map_err(|_| Error::timeout(timeout, "for the publisher's hello"))??;
    let ring = attach(&hello, ring_fd)?;
    let stats = Arc::new(StatCounters::default());
    let mut tracker = SeqTracker::new(stats.clone());
    tracker.expect_next(hello.next_seq);
    let sub = ShmRingSubscriber {
        ring,
        page,
        stream,
        cursor: hello.start,
        tracker,
        stats,
        topic_prefix,
        pool: BufPool::new(),
        env: Vec::with_capacity(256),
        publisher_gone: false,
        broken: false,
        spin: cfg.spin,
        park_epoch: 0,
        torn: 0,
    };
    sub.publish_cursor(hello.start, hello.start);
    Ok(sub)
}

async fn handshake(stream: &UnixStream, page_fd: OwnedFd) -> Result<(ServerHello, OwnedFd)> {
    let hello = proto::client_hello();
    let n = stream
        .async_io(Interest::WRITABLE, || {
            sys::send_with_fd(stream.as_fd(), &hello, Some(page_fd.as_fd()))
        })
        .await
        .map_err(|e| Error::io("sending the hello", e))?;
    if n != hello.len() {
        // A fresh Unix stream takes 8 bytes in one go; anything else is broken.
        return Err(Error::protocol(
            "shm-ring",
            format!("the hello went out short ({n} bytes)"),
        ));
    }
    drop(page_fd);
    let mut reply = [0u8; SERVER_HELLO_LEN];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < SERVER_HELLO_LEN {
        let (n, more) = stream
            .async_io(Interest::READABLE, || {
                sys::recv_with_fds(stream.as_fd(), &mut reply[got..])
            })
            .await
            .map_err(|e| Error::io("reading the publisher's hello", e))?;
        fds.extend(more);
        if n == 0 {
            return Err(if got >= 6 {
                // Enough to see a version mismatch announced before hanging up.
                match ServerHello::decode(&reply) {
                    Err(e @ Error::VersionMismatch { .. }) => e,
                    _ => Error::disconnected(
                        "shm-ring",
                        "the publisher hung up during the handshake",
                    ),
                }
            } else {
                Error::disconnected("shm-ring", "the publisher hung up during the handshake")
            });
        }
        got += n;
    }
    let hello = ServerHello::decode(&reply)?;
    let [fd] = <[OwnedFd; 1]>::try_from(fds).map_err(|fds| {
        Error::protocol(
            "shm-ring",
            format!(
                "the publisher's hello carried {} descriptors, not 1",
                fds.len()
            ),
        )
    })?;
    Ok((hello, fd))
}

/// Checks what the publisher sent, then maps the ring read-only.
fn attach(hello: &ServerHello, fd: OwnedFd) -> Result<Ring> {
    let page = sys::page_size() as u64;
    let cap = hello.capacity;
    if hello.data_offset != page
        || cap == 0
        || !cap.is_multiple_of(page)
        || cap > MAX_CAPACITY
        || !hello.start.is_multiple_of(layout::ALIGN)
    {
        return Err(Error::protocol(
            "shm-ring",
            format!(
                "unusable ring geometry from the publisher: capacity {cap}, data offset {}, start {}",
                hello.data_offset, hello.start
            ),
        ));
    }
    let info = sys::inspect_shared_fd(fd.as_fd()).map_err(|e| {
        Error::protocol("shm-ring", format!("the ring's fd is unusable: {e}")).with_source(e)
    })?;
    if info.hugetlb() {
        // Its pages come from the huge-page pool when first touched: once
        // the pool runs dry, a read raises SIGBUS.
        return Err(Error::protocol(
            "shm-ring",
            "the ring is a hugetlb memfd, whose reads fault (SIGBUS) when the huge-page pool \
             runs out; refusing it",
        ));
    }
    if !info.on_tmpfs() {
        return Err(Error::protocol(
            "shm-ring",
            format!(
                "the ring must be a memfd on tmpfs (file system type {:#x})",
                info.fs_magic
            ),
        ));
    }
    // FUTURE_WRITE (or WRITE) also forbids punching holes: no page of the
    // ring can go away under our mapping, however the publisher behaves.
    let need = sys::SealFlags::SHRINK | sys::SealFlags::GROW;
    let no_holes = sys::SealFlags::FUTURE_WRITE | sys::SealFlags::WRITE;
    if info.len != page + cap || !info.seals.contains(need) || !info.seals.intersects(no_holes) {
        return Err(Error::protocol(
            "shm-ring",
            format!(
                "the ring must be a memfd of {} bytes sealed against shrinking, growing and \
             writing (got {} bytes, seals {:?})",
                page + cap,
                info.len,
                info.seals
            ),
        ));
    }
    // A publisher pre-faults its whole ring when it creates it, so mapping
    // (and pre-faulting) it here allocates nothing. A sparse one would make
    // this process allocate up to its size (1 TiB at most): refuse it.
    if info.allocated < info.len {
        return Err(Error::protocol(
            "shm-ring",
            format!(
                "the ring is not allocated ({} of its {} in memory); a publisher pre-faults its \
             ring, and mapping a sparse one would allocate the rest here; refusing it",
                transport_core::fmt_size(info.allocated),
                transport_core::fmt_size(info.len)
            ),
        ));
    }
    if !info.read_only {
        tracing::warn!(
            "the publisher passed a writable fd for the ring; mapping it read-only anyway"
        );
    }
    let ring = Ring::attach(fd.as_fd(), cap, page).map_err(|e| Error::io("mapping the ring", e))?;
    let ctl = ring.control();
    let ok = ctl.magic.load(Ordering::Relaxed) == RING_MAGIC
        && ctl.capacity.load(Ordering::Relaxed) == cap
        && ctl.data_offset.load(Ordering::Relaxed) == page;
    if !ok {
        return Err(Error::protocol(
            "shm-ring",
            "the ring's control page does not match the hello",
        ));
    }
    Ok(ring)
}

/// What `read_next` found.
enum Next {
    Frame(Frame),
    /// Nothing committed past the cursor.
    Empty,
}

impl ShmRingSubscriber {
    /// Copies that were thrown away because the writer lapped this reader
    /// while it was copying (under `drop-oldest`); each was followed by a
    /// lag report instead of a frame.
    pub fn torn_copies(&self) -> u64 {
        self.torn
    }

    /// Releases the ring up to `new` (our copies out of it are done) and
    /// nudges the writer if it waits for us to get there.
    fn publish_cursor(&self, old: u64, new: u64) {
        let page = self.page.get();
        // Pairs with the writer's `cursor.load(Relaxed); fence(Acquire)`
        // (publisher.rs, `ReaderSlot::cursor`): our reads of the ring happen
        // before it overwrites what we released.
        page.cursor.0.store(new, Ordering::Release);
        // Dekker with the writer's `writer_wait.store; fence(SeqCst);
        // cursor.load` (publisher.rs, `wait_readers`).
        fence(Ordering::SeqCst);
        let wait = self.ring.control().writer_wait.0.load(Ordering::Relaxed);
        if wait != 0 && old < wait && new >= wait {
            // WouldBlock: nudges are already queued for the publisher.
            let _ = self.stream.try_write(&[proto::CONSUMED]);
        }
    }

    fn head(&self) -> u64 {
        let head = self.ring.control().head.0.load(Ordering::Relaxed);
        // Pairs with the writer's `head.store(Release)` (publisher.rs,
        // `commit`): the bytes of every record below `head` are visible.
        fence(Ordering::Acquire);
        head
    }

    fn horizon(&self) -> u64 {
        self.ring.control().horizon.0.load(Ordering::Relaxed)
    }

    fn corrupt(&mut self, what: String) -> Error {
        self.broken = true;
        tracing::warn!(%what, "corrupt shared-memory ring");
        Error::protocol("shm-ring", format!("corrupt shared-memory ring: {what}"))
    }

    /// Copies the next record out of the ring, if one is committed.
    fn read_next(&mut self) -> Result<Next> {
        loop {
            let head = self.head();
            if self.cursor >= head {
                if self.cursor > head {
                    let what =
                        format!("head {head} is behind this reader's cursor {}", self.cursor);
                    return Err(self.corrupt(what));
                }
                return Ok(Next::Empty);
            }
            let pos = self.cursor;
            let horizon = self.horizon();
            if pos < horizon {
                // Lapped (drop-oldest): resume at the oldest intact record.
                // The sequence numbers tell `SeqTracker` how many we missed.
                if horizon > head || !horizon.is_multiple_of(layout::ALIGN) {
                    return Err(self.corrupt(format!("horizon {horizon} with head {head}")));
                }
                self.cursor = horizon;
                self.publish_cursor(pos, horizon);
                continue;
            }
            let mut raw = [0u8; RECORD_HEADER as usize];
            self.ring.copy_out(pos, &mut raw);
            let stamp = self.ring.stamp(pos).load(Ordering::Relaxed);
            let mut header = RecordHeader::decode(&raw);
            header.stamp = stamp;
            if let Err(what) = header.check(pos, self.ring.capacity(), head) {
                // Torn by a lapping writer, or corrupt: the horizon tells which.
                fence(Ordering::Acquire);
                if self.horizon() > pos {
                    self.torn += 1;
                    continue;
                }
                return Err(self.corrupt(what));
            }
            if header.kind == KIND_SKIP {
                self.cursor = pos + header.rec_len;
                self.publish_cursor(pos, self.cursor);
                continue;
            }
            let len = usize::try_from(header.payload_len).map_err(|_| Error::PayloadTooLarge {
                len: header.payload_len,
                limit: usize::MAX as u64,
                option: "capacity",
            })?;
            let env_pos = pos + RECORD_HEADER + layout::pad(header.payload_len).unwrap_or(0);
            self.env.resize(header.env_len as usize, 0);
            self.ring.copy_out(env_pos, &mut self.env);
            let mut payload = self.pool.take(len);
            self.ring
                .copy_out(pos + RECORD_HEADER, payload.as_mut_slice());
            // Seqlock, reader side: pairs with the writer's `fence(Release)`
            // after it raises the horizon (publisher.rs, `make_room`). If any
            // byte we copied was written by a lapping writer, we see its
            // horizon above `pos` (or a new stamp) here and drop the copy.
            fence(Ordering::Acquire);
            if self.horizon() > pos || self.ring.stamp(pos).load(Ordering::Relaxed) != pos {
                self.torn += 1;
                drop(payload);
                continue;
            }
            let frame = self.decode(&header, payload);
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return Err(self.corrupt(e.to_string())),
            };
            let end = pos + header.rec_len;
            self.cursor = end;
            self.publish_cursor(pos, end);
            return Ok(Next::Frame(frame));
        }
    }

    /// Builds the frame from a verified copy of the envelope and payload.
    fn decode(&self, header: &RecordHeader, payload: Pooled) -> Result<Frame> {
        let prefix: &[u8; PREFIX_LEN] = self
            .env
            .get(..PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| Error::protocol("shm-ring", "envelope shorter than its prefix"))?;
        let p = Prefix::decode(prefix, layout::MAX_CAPACITY)?;
        if p.payload_len != header.payload_len
            || PREFIX_LEN + p.header_len as usize != self.env.len()
        {
            return Err(Error::protocol(
                "shm-ring",
                format!(
                    "envelope announces {} + {} bytes, the record holds {} + {}",
                    p.header_len,
                    p.payload_len,
                    self.env.len() - PREFIX_LEN,
                    header.payload_len
                ),
            ));
        }
        let mut frame = codec::decode_header(&self.env[PREFIX_LEN..], p.payload_len)?;
        if frame.seq != header.seq {
            return Err(Error::protocol(
                "shm-ring",
                format!(
                    "record says frame {}, envelope says {}",
                    header.seq, frame.seq
                ),
            ));
        }
        frame.payload = payload.into_bytes();
        Ok(frame)
    }

    /// Spins on the head for up to `spin` (opt-in busy-poll).
    fn spin_for_data(&self) -> bool {
        if self.spin.is_zero() {
            return false;
        }
        let until = Instant::now() + self.spin;
        while Instant::now() < until {
            if self.head() > self.cursor {
                return true;
            }
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
        false
    }

    /// Tells the writer we sleep; returns false if data arrived meanwhile.
    fn park(&mut self) -> bool {
        self.park_epoch += 1;
        self.page
            .get()
            .park
            .0
            .store(self.park_epoch, Ordering::Relaxed);
        // Dekker with the writer's `head.store; fence(SeqCst); park.load`
        // (publisher.rs, `commit`): either we see its new head here, or it
        // sees our park and sends a wake-up byte.
        fence(Ordering::SeqCst);
        self.ring.control().head.0.load(Ordering::Relaxed) <= self.cursor
    }

    /// Sleeps until the publisher writes a byte or hangs up. Cancel-safe:
    /// unread bytes stay in the socket.
    async fn wait_for_publisher(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            if self.stream.readable().await.is_err() {
                self.publisher_gone = true;
                return;
            }
            let mut woke = false;
            loop {
                match self.stream.try_read(&mut buf) {
                    Ok(0) => {
                        self.publisher_gone = true;
                        return;
                    }
                    Ok(_) => woke = true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.publisher_gone = true;
                        return;
                    }
                }
            }
            if woke {
                return;
            }
        }
    }

    fn deliver(&self, frame: Frame) -> Option<Frame> {
        topic_matches(&self.topic_prefix, &frame.topic).then_some(frame)
    }
}

#[async_trait]
impl Subscriber for ShmRingSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.tracker.take_pending() {
                match self.deliver(f) {
                    Some(f) => return Ok(f),
                    None => continue,
                }
            }
            if self.broken {
                return Err(Error::disconnected(
                    "shm-ring",
                    "the shared-memory ring is corrupt",
                ));
            }
            // Synchronous from here to the `await` below: a cancelled `recv`
            // loses nothing, since the cursor only moves with a frame in hand.
            match self.read_next()? {
                Next::Frame(mut f) => {
                    count_received(&self.stats, &mut f);
                    let f = self.tracker.accept(f)?;
                    match self.deliver(f) {
                        Some(f) => return Ok(f),
                        None => continue,
                    }
                }
                Next::Empty => {}
            }
            if !self.publisher_gone && self.ring.control().closed.0.load(Ordering::Relaxed) != 0 {
                // Dropped: its socket's EOF is on the way; no need to wait for it.
                self.publisher_gone = true;
                continue;
            }
            if self.publisher_gone {
                return Err(Error::disconnected("shm-ring", "the publisher is gone"));
            }
            if self.spin_for_data() || !self.park() {
                continue;
            }
            self.wait_for_publisher().await;
        }
    }

    fn recv_mode(&self) -> RecvMode {
        RecvMode::Owned
    }

    fn stats(&self) -> Stats {
        self.stats.snapshot()
    }
}

/// Receive buffers recycled between frames.
///
/// A large buffer fresh from the allocator costs a page fault per 4 KiB on
/// its first write (several ms for 24 MiB, more than the copy itself).
/// Payloads of at least [`BufPool::MIN`] bytes are therefore copied into a
/// buffer that comes back here when the last clone of the frame's `Bytes` is
/// dropped. Frames kept by the application simply keep their buffer: the
/// pool then allocates anew. Either way the frame owns its memory.
#[derive(Debug)]
struct BufPool {
    free: crossbeam_queue::ArrayQueue<Vec<u8>>,
}

impl BufPool {
    const MIN: usize = 64 << 10;
    const KEEP: usize = 4;

    fn new() -> Arc<BufPool> {
        Arc::new(BufPool {
            free: crossbeam_queue::ArrayQueue::new(Self::KEEP),
        })
    }

    /// A buffer of exactly `len` bytes (contents unspecified).
    fn take(self: &Arc<Self>, len: usize) -> Pooled {
        let mut buf = None;
        if len >= Self::MIN {
            for _ in 0..Self::KEEP {
                let Some(v) = self.free.pop() else { break };
                if v.capacity() >= len && v.capacity() / 2 <= len {
                    buf = Some(v);
                    break;
                }
                // A misfit: keep it if there is room, else let it go.
                let _ = self.free.push(v);
            }
        }
        // A fresh buffer comes zeroed from the kernel (calloc), so nothing is
        // written twice; a recycled one is only resized, its old bytes are
        // overwritten by the copy.
        let mut v = buf.unwrap_or_else(|| vec![0u8; len]);
        v.resize(len, 0);
        Pooled {
            buf: v,
            pool: (len >= Self::MIN).then(|| Arc::downgrade(self)),
        }
    }
}

/// The owner behind a pooled payload's `Bytes`: gives its buffer back on drop.
#[derive(Debug)]
struct Pooled {
    buf: Vec<u8>,
    pool: Option<std::sync::Weak<BufPool>>,
}

impl Pooled {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn into_bytes(self) -> Bytes {
        if self.pool.is_some() {
            Bytes::from_owner(self)
        } else {
            let mut me = self;
            Bytes::from(std::mem::take(&mut me.buf))
        }
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Lock-free and infallible: a full pool or a gone subscriber frees it.
        if let Some(pool) = self.pool.as_ref().and_then(|p| p.upgrade()) {
            let _ = pool.free.push(std::mem::take(&mut self.buf));
        }
    }
}
