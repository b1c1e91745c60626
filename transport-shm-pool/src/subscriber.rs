//! The subscribing side: the read-only mapping, the claim table, the checks
//! on every descriptor, views that release their slot on drop, and the
//! segments a forwarding publisher passes on.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use transport_core::codec::{self, PREFIX_LEN, Prefix};
use transport_core::{
    Endpoint, Error, Frame, RecvMode, Result, StatCounters, Stats, SubscribeOptions, Subscriber,
    async_trait,
};

use crate::config::{self, Config};
use crate::pool::{ForeignMap, SegmentMap};
use crate::publisher::HANDSHAKE_TIMEOUT;
use crate::registry::ForwardMark;
use crate::sys;
use crate::wire::{self, ClaimTable, Desc, FwdDesc, Msg, RecvBuf, Take};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a view's drop (or the subscriber) asks the release task to send.
enum Ctl {
    Release(u32, u64),
    /// Finish a write that `write_now` could not complete.
    Kick,
    Unsubscribe,
}

/// The socket's write side, shared by `recv` and the release task.
struct LinkIo {
    stream: UnixStream,
    out: Mutex<BytesMut>,
}

impl LinkIo {
    fn append(&self, out: &mut BytesMut, c: &Ctl) {
        match c {
            Ctl::Release(index, generation) => wire::encode(
                &Msg::Release {
                    index: *index,
                    generation: *generation,
                },
                out,
            ),
            Ctl::Unsubscribe => wire::encode(&Msg::Unsubscribe, out),
            Ctl::Kick => {}
        }
    }

    /// Writes what is buffered; `WouldBlock` when the socket is full. A broken
    /// socket drops the buffer (the publisher is gone; nothing to release to).
    fn flush(&self) -> io::Result<()> {
        let mut out = lock(&self.out);
        while !out.is_empty() {
            match sys::send_nb(self.stream.as_fd(), &out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => out.clear(),
            }
        }
        Ok(())
    }
}

/// What views share with their subscriber: the mapping stays mapped and the
/// socket stays open (so the publisher keeps the slots reserved) until the
/// last view is gone.
struct Link {
    io: Arc<LinkIo>,
    seg: SegmentMap,
    claims: ClaimTable,
    tx: mpsc::UnboundedSender<Ctl>,
    /// Live views of pool slots and of forward slots (for `max_held`).
    views: [AtomicUsize; 2],
    /// Segments the publisher forwards from, by the index it announced.
    /// Here rather than in the subscriber so that the hang-up watch can let
    /// them (and the anchors they hold) go without waiting for `recv`.
    fwd: Mutex<Vec<Option<Arc<ForeignMap>>>>,
    /// What each forward slot's live view (if any) shows: the mapping (its
    /// address), offset, length and generation; for FORWARDED.
    fwd_ranges: Mutex<Vec<Option<FwdRange>>>,
    /// The publisher's end of the socket is closed (it exited or was
    /// killed): no FWD is taken any more, no SEGMENT mapped.
    dead: AtomicBool,
    /// Ends the hang-up watch when the link goes.
    _watch_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Calls [`Link::hung_up`] as soon as the publisher's end of the socket
/// closes (its process exited or was killed), whether or not the subscriber
/// is inside `recv`: a killed forwarder's upstream slots then wait only for
/// live views here, not for the next `recv`. Ends with the link.
async fn hangup_task(
    watch: AsyncFd<OwnedFd>,
    link: Weak<Link>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    tokio::select! {
        r = watch.readable() => {
            if r.is_ok() && let Some(l) = link.upgrade() {
                l.hung_up();
            }
        }
        _ = stop => {}
    }
}

/// What a forward slot's view shows: (mapping address, offset, length,
/// generation).
type FwdRange = (usize, u64, u64, u64);

/// Tells the publisher of a [`Link`] which of its slots a forward from one
/// of this link's mappings uses (see `registry::ForwardMark`).
struct Marker {
    link: Weak<Link>,
    /// `None`: the publisher's pool; `Some(address)`: a forwarded segment.
    foreign: Option<usize>,
}

impl ForwardMark for Marker {
    fn mark(&self, offset: u64, len: u64) -> bool {
        self.link
            .upgrade()
            .is_some_and(|l| l.mark_forwarded(self.foreign, offset, len))
    }
}

/// Index into [`Link::views`] of pool-slot views.
const POOL_VIEWS: usize = 0;
/// Index into [`Link::views`] of forward-slot views.
const FWD_VIEWS: usize = 1;

impl Link {
    /// Writes FORWARDED for every slot of this publisher that holds bytes
    /// `offset .. offset + len` of the pool (`foreign` `None`) or of the
    /// forwarded segment mapped at `foreign`, and is held by a view here.
    /// True once written; false (the caller copies) when none is held or
    /// the socket cannot take it at once.
    fn mark_forwarded(&self, foreign: Option<usize>, offset: u64, len: u64) -> bool {
        if self.dead.load(Ordering::Acquire) {
            return false;
        }
        let geo = self.seg.geometry();
        let mut held: Vec<(u32, u64)> = Vec::new();
        match foreign {
            None => {
                let Some(rel) = offset.checked_sub(geo.data_offset) else {
                    return false;
                };
                let (k, within) = (rel / geo.stride, rel % geo.stride);
                if k >= u64::from(geo.slots) || within.saturating_add(len) > geo.slot_size {
                    return false;
                }
                match self.claims.taken_generation(k as u32) {
                    Some(g) => held.push((k as u32, g)),
                    None => return false,
                }
            }
            Some(map) => {
                let ranges = lock(&self.fwd_ranges);
                for (k, r) in ranges.iter().enumerate() {
                    let Some((m, off, l, g)) = *r else { continue };
                    let index = geo.slots + k as u32;
                    if m == map
                        && off <= offset
                        && offset.saturating_add(len) <= off.saturating_add(l)
                        && self.claims.taken_generation(index) == Some(g)
                    {
                        held.push((index, g));
                    }
                }
            }
        }
        if held.is_empty() {
            return false;
        }
        {
            let mut out = lock(&self.io.out);
            for (index, generation) in held {
                wire::encode(&Msg::Forwarded { index, generation }, &mut out);
            }
        }
        match self.io.flush() {
            Ok(()) => true,
            Err(_) => {
                // Written later by the task; this frame is copied.
                let _ = self.tx.send(Ctl::Kick);
                false
            }
        }
    }

    /// The publisher is gone (its end of the socket closed): no FWD still
    /// in the socket will be taken, no SEGMENT mapped, and the forwarded
    /// segments are let go now, so that their anchors close as soon as no
    /// view holds them, whether or not anyone is in `recv`.
    fn hung_up(&self) {
        self.dead.store(true, Ordering::Release);
        let gone: Vec<_> = lock(&self.fwd).iter_mut().map(Option::take).collect();
        drop(gone);
    }

    /// Sends a release from `recv` itself (owned mode, rejected descriptors):
    /// written at once when the socket has room, by the task otherwise.
    fn release_now(&self, index: u32, generation: u64) {
        {
            let mut out = lock(&self.io.out);
            self.io.append(&mut out, &Ctl::Release(index, generation));
        }
        if self.io.flush().is_err() {
            let _ = self.tx.send(Ctl::Kick);
        }
    }
}

/// Writes releases for the views (and the unsubscribe) and ends, closing the
/// socket, once the subscriber and all its views are gone.
async fn release_task(io: Arc<LinkIo>, mut rx: mpsc::UnboundedReceiver<Ctl>) {
    while let Some(first) = rx.recv().await {
        {
            let mut out = lock(&io.out);
            io.append(&mut out, &first);
            while let Ok(c) = rx.try_recv() {
                io.append(&mut out, &c);
            }
        }
        loop {
            match io.stream.try_io(Interest::WRITABLE, || io.flush()) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if io.stream.writable().await.is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// A zero-copy view of a slot: the owner behind a view-mode payload.
/// Dropping it (with the payload's last clone) queues the slot's release.
struct SlotView {
    link: Arc<Link>,
    index: u32,
    generation: u64,
    len: usize,
}

impl AsRef<[u8]> for SlotView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the slot was checked (index in range, len <= slot_size,
        // generation matches the slot header) and claimed (TAKEN) before this
        // view was made; the publisher does not write a slot while any
        // subscriber holds it, and this one holds it until this view drops. The
        // mapping is read-only and lives in `link` as long as `self`.
        unsafe { std::slice::from_raw_parts(self.link.seg.slot_ptr(self.index), self.len) }
    }
}

impl Drop for SlotView {
    fn drop(&mut self) {
        self.link.views[POOL_VIEWS].fetch_sub(1, Ordering::Relaxed);
        // Never blocks, never panics: a lock-free channel push. If the task is
        // gone (runtime shut down), the socket closes when the link does and
        // the publisher frees the slot on EOF.
        let _ = self.link.tx.send(Ctl::Release(self.index, self.generation));
    }
}

/// A zero-copy view of a forwarded frame: bytes of another pool's segment,
/// which the publisher keeps reserved upstream until this subscriber
/// releases the forward slot. Dropping it (with the payload's last clone)
/// queues that release.
struct FwdView {
    link: Arc<Link>,
    seg: Arc<ForeignMap>,
    /// The claim index (`slots + forward slot`).
    index: u32,
    generation: u64,
    offset: u64,
    len: usize,
}

impl AsRef<[u8]> for FwdView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `offset + len` was checked to lie within the mapping before
        // this view was made, and the forward claim was taken (TAKEN): the
        // publisher holds the frame's upstream view, and so the upstream slot,
        // until this subscriber releases the claim, which happens when this
        // view drops; nobody writes a reserved slot. The mapping is read-only
        // and lives in `seg` as long as `self`.
        unsafe { std::slice::from_raw_parts(self.seg.ptr(self.offset), self.len) }
    }
}

impl Drop for FwdView {
    fn drop(&mut self) {
        self.link.views[FWD_VIEWS].fetch_sub(1, Ordering::Relaxed);
        // As for `SlotView`: a lock-free push, never blocking or panicking.
        let _ = self.link.tx.send(Ctl::Release(self.index, self.generation));
    }
}

/// The subscriber of an `shm-pool://` endpoint.
///
/// In [`RecvMode::View`] each payload is a read-only view of the publisher's
/// slot that holds the slot until its last clone is dropped; in
/// [`RecvMode::Owned`] (the default) the payload is copied out and the slot
/// released before `recv` returns.
pub struct ShmPoolSubscriber {
    link: Arc<Link>,
    rx: RecvBuf,
    name: String,
    mode: RecvMode,
    prefix: String,
    busy_poll: Option<Duration>,
    may_reclaim: bool,
    /// The publisher's `max_held` (from HELLO): in view mode, a frame that
    /// arrives while this many views of its kind are alive is released at
    /// once and reported lost.
    max_held: Option<usize>,
    /// Frames released unread because of `max_held`.
    over_max_held: AtomicU64,
    /// This subscriber's anchor at its publisher (see `wire`, "Anchors"):
    /// held by every mapping made through this connection.
    anchor: Arc<OwnedFd>,
    missed: u64,
    held: Option<Frame>,
    closed: Option<String>,
    stats: StatCounters,
}

impl std::fmt::Debug for ShmPoolSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmPoolSubscriber")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("segment", &self.link.seg)
            .finish_non_exhaustive()
    }
}

/// The next descriptor received, checked to be an anchor (a pipe's write end).
fn take_anchor(rx: &mut RecvBuf, what: &str) -> Result<Arc<OwnedFd>> {
    check_anchor(rx.take_fd(), what)
}

/// `fd`, checked to be an anchor (a pipe's write end).
fn check_anchor(fd: Option<OwnedFd>, what: &str) -> Result<Arc<OwnedFd>> {
    let fd = fd
        .ok_or_else(|| Error::protocol("shm-pool", format!("{what} arrived without its anchor")))?;
    match sys::is_pipe_write_end(fd.as_fd()) {
        Ok(true) => Ok(Arc::new(fd)),
        Ok(false) => Err(Error::protocol(
            "shm-pool",
            format!("{what} came with an anchor that is not a pipe's write end"),
        )),
        Err(e) => Err(Error::io(format!("checking the anchor of {what}"), e)),
    }
}

fn invalid(what: String) -> Error {
    Error::invalid_reference("shm-pool", what)
}

/// Decodes the frame header carried by a descriptor for a payload of `len` bytes.
fn decode_frame_header(header: &[u8], len: u64, max: u64) -> Result<Frame> {
    let prefix: &[u8; PREFIX_LEN] = header
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            Error::protocol(
                "shm-pool",
                "descriptor header shorter than the envelope prefix",
            )
        })?;
    let p = Prefix::decode(prefix, max)?;
    if p.payload_len != len {
        return Err(Error::protocol(
            "shm-pool",
            format!(
                "descriptor says {len} bytes, its frame header {}",
                p.payload_len
            ),
        ));
    }
    let body = &header[PREFIX_LEN..];
    if body.len() != p.header_len as usize {
        return Err(Error::protocol(
            "shm-pool",
            format!(
                "frame header of {} bytes, its prefix announces {}",
                body.len(),
                p.header_len
            ),
        ));
    }
    codec::decode_header(body, len)
}

impl ShmPoolSubscriber {
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        opts: &SubscribeOptions,
    ) -> Result<ShmPoolSubscriber> {
        let cfg = Config::from_endpoint(endpoint)?;
        let mode = opts.resolve_mode(endpoint)?;
        let uid = sys::euid();
        let sock = config::socket_name(uid, &cfg.name);
        let stream = sys::connect(&sock).await.map_err(|e| {
            let what = match e.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => format!(
                    "no publisher for shm-pool `{}` (abstract socket @{sock}); start the publisher first",
                    cfg.name
                ),
                _ => format!("connecting to shm-pool `{}` (abstract socket @{sock})", cfg.name),
            };
            Error::io(what, e)
        })?;
        let peer = sys::peer_uid(stream.as_fd()).map_err(|e| Error::io("SO_PEERCRED", e))?;
        if peer != uid {
            // Abstract names carry no permissions: anyone can bind one first.
            return Err(Error::io(
                format!("shm-pool `{}`", cfg.name),
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "the socket @{sock} is served by uid {peer}, not by this user (uid {uid}); refusing it"
                    ),
                ),
            ));
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake(stream, cfg, mode, opts))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(HANDSHAKE_TIMEOUT, "the shm-pool handshake")),
        }
    }

    async fn handshake(
        stream: UnixStream,
        cfg: Config,
        mode: RecvMode,
        opts: &SubscribeOptions,
    ) -> Result<ShmPoolSubscriber> {
        let mut rx = RecvBuf::new();
        let subscribe = Msg::Subscribe {
            version: wire::VERSION,
            prefix: opts.topic_prefix.clone(),
        };
        if let Err(e) = wire::send(&stream, &subscribe, None, "SUBSCRIBE").await {
            // A publisher that refuses without a handshake (too many in
            // progress) writes REJECT and closes: report its reason.
            if let Ok(Msg::Reject { reason }) = rx.recv(&stream, "REJECT").await {
                return Err(refused(&cfg.name, reason));
            }
            return Err(e);
        }
        let hello = match rx.recv(&stream, "HELLO").await? {
            Msg::Hello(h) => h,
            Msg::Reject { reason } => return Err(refused(&cfg.name, reason)),
            other => {
                return Err(Error::protocol(
                    "shm-pool",
                    format!("expected HELLO, got {other:?}"),
                ));
            }
        };
        if hello.version != wire::VERSION {
            return Err(Error::VersionMismatch {
                ours: wire::VERSION,
                theirs: hello.version,
            });
        }
        let fd = rx
            .take_fd()
            .ok_or_else(|| Error::protocol("shm-pool", "HELLO arrived without the segment fd"))?;
        let anchor = take_anchor(&mut rx, "HELLO")?;
        let seg = SegmentMap::open(fd, &hello, vec![anchor.clone()])?;
        let entries = wire::claim_entries(hello.slots);
        if hello.claims_len != wire::claims_len(entries) {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "HELLO asks for a claim table of {} bytes, {} slots need {}",
                    hello.claims_len,
                    hello.slots,
                    wire::claims_len(entries)
                ),
            ));
        }
        let (claims, claims_fd) = ClaimTable::create(entries)
            .map_err(|e| Error::io("creating the claim table memfd", e))?;
        let msg = Msg::Claims {
            len: hello.claims_len,
        };
        wire::send(&stream, &msg, Some(claims_fd.as_fd()), "CLAIMS").await?;
        drop(claims_fd);
        match rx.recv(&stream, "READY").await? {
            Msg::Ready { .. } => {}
            Msg::Reject { reason } => return Err(refused(&cfg.name, reason)),
            other => {
                return Err(Error::protocol(
                    "shm-pool",
                    format!("expected READY, got {other:?}"),
                ));
            }
        }
        // Frames follow: descriptors carry frame headers up to MAX_MESSAGE.
        rx.open_up(wire::MAX_MESSAGE);
        let (tx, rx_ctl) = mpsc::unbounded_channel();
        let io = Arc::new(LinkIo {
            stream,
            out: Mutex::new(BytesMut::new()),
        });
        tokio::spawn(release_task(io.clone(), rx_ctl));
        // A subscriber that cannot watch for the hang-up still works: its
        // forwarded segments then go at `Disconnected`, as they always do.
        let watch = sys::hangup_watch(io.stream.as_fd())
            .and_then(|ep| {
                // SAFETY: `ep` is an `OwnedFd`: its descriptor stays open,
                // and `as_raw_fd` returns that same descriptor, for as long
                // as the `AsyncFd` owns it.
                unsafe { AsyncFd::register_with_interest(ep, Interest::READABLE) }
                    .map_err(io::Error::from)
            })
            .map_err(|e| tracing::debug!("shm-pool: no hang-up watch: {e}"))
            .ok();
        let (watch_stop, stop) = tokio::sync::oneshot::channel();
        let link = Arc::new(Link {
            io,
            seg,
            claims,
            tx,
            views: [AtomicUsize::new(0), AtomicUsize::new(0)],
            fwd: Mutex::new((0..wire::MAX_FORWARD_SEGMENTS).map(|_| None).collect()),
            fwd_ranges: Mutex::new(vec![None; hello.slots as usize]),
            dead: AtomicBool::new(false),
            _watch_stop: watch.is_some().then_some(watch_stop),
        });
        link.seg.registered().set_marker(Arc::new(Marker {
            link: Arc::downgrade(&link),
            foreign: None,
        }));
        if let Some(watch) = watch {
            tokio::spawn(hangup_task(watch, Arc::downgrade(&link), stop));
        }
        Ok(ShmPoolSubscriber {
            link,
            rx,
            name: cfg.name,
            mode,
            prefix: opts.topic_prefix.clone(),
            busy_poll: cfg.busy_poll,
            may_reclaim: hello.flags & wire::HELLO_RECLAIMS != 0,
            max_held: wire::hello_max_held(hello.flags),
            over_max_held: AtomicU64::new(0),
            anchor,
            missed: 0,
            held: None,
            closed: None,
            stats: StatCounters::default(),
        })
    }

    /// Number of slots in the publisher's pool.
    pub fn slots(&self) -> usize {
        self.link.seg.geometry().slots as usize
    }

    /// Largest payload of a slot.
    pub fn slot_size(&self) -> u64 {
        self.link.seg.geometry().slot_size
    }

    /// The publisher's `max_held`: in view mode, at most this many views of
    /// pool slots (and as many of forwarded frames) are alive at once; a
    /// frame that arrives past it is given back unread and reported as lost
    /// (`Error::Lagged`). `None` when the publisher set no limit.
    pub fn max_held(&self) -> Option<usize> {
        self.max_held
    }

    /// Frames given back unread because `max_held` views were alive.
    pub fn dropped_over_max_held(&self) -> u64 {
        self.over_max_held.load(Ordering::Relaxed)
    }

    /// In view mode, true (and the frame released, counted as lost) when
    /// `max_held` views of `kind` are alive: the caller drops the frame.
    fn over_max_held(&mut self, kind: usize, index: u32, generation: u64) -> bool {
        let over = self.mode == RecvMode::View
            && self
                .max_held
                .is_some_and(|cap| self.link.views[kind].load(Ordering::Relaxed) >= cap);
        if over {
            self.link.release_now(index, generation);
            self.missed = self.missed.saturating_add(1);
            self.over_max_held.fetch_add(1, Ordering::Relaxed);
        }
        over
    }

    /// Checks a descriptor, claims its slot and builds the frame. `None`
    /// when the descriptor is skipped (taken back by the publisher under
    /// drop-oldest, or filtered by topic).
    fn on_desc(&mut self, d: Desc, header: &[u8]) -> Option<Result<Frame>> {
        self.missed = self.missed.saturating_add(d.missed);
        let geo = self.link.seg.geometry();
        if d.segment != self.link.seg.id() {
            return Some(Err(invalid(format!(
                "descriptor names segment {}, but this subscriber of `{}` maps only segment {}",
                d.segment,
                self.name,
                self.link.seg.id()
            ))));
        }
        if d.index >= geo.slots {
            return Some(Err(invalid(format!(
                "slot index {} is out of range: pool `{}` has {} slots",
                d.index, self.name, geo.slots
            ))));
        }
        if d.len > geo.slot_size {
            return Some(Err(invalid(format!(
                "length {} runs past the end of slot {} (slot_size {})",
                d.len, d.index, geo.slot_size
            ))));
        }
        match self
            .link
            .claims
            .take(d.index, d.generation, self.may_reclaim)
        {
            Take::Taken => {}
            Take::Stale => {
                self.missed = self.missed.saturating_add(1);
                return None;
            }
            Take::Invalid => {
                return Some(Err(invalid(format!(
                    "slot {} generation {} is not on offer to this subscriber (already taken, stale or forged)",
                    d.index, d.generation
                ))));
            }
        }
        // From here on the slot is ours: every way out releases it or hands
        // it to a view.
        let (generation, len) = self.link.seg.header(d.index);
        if generation != d.generation || len != d.len {
            self.link.release_now(d.index, d.generation);
            return Some(Err(invalid(format!(
                "slot {} holds generation {generation} ({len} B) but the descriptor says generation {} ({} B)",
                d.index, d.generation, d.len
            ))));
        }
        let mut frame = match decode_frame_header(header, d.len, geo.slot_size) {
            Ok(f) => f,
            Err(e) => {
                self.link.release_now(d.index, d.generation);
                return Some(Err(e));
            }
        };
        if !frame.topic.starts_with(self.prefix.as_str()) {
            self.link.release_now(d.index, d.generation);
            return None;
        }
        if self.over_max_held(POOL_VIEWS, d.index, d.generation) {
            return Some(Err(self.lagged_now()));
        }
        let len = d.len as usize;
        frame.payload = match self.mode {
            RecvMode::View => Bytes::from_owner({
                self.link.views[POOL_VIEWS].fetch_add(1, Ordering::Relaxed);
                SlotView {
                    link: self.link.clone(),
                    index: d.index,
                    generation: d.generation,
                    len,
                }
            }),
            _ => {
                // SAFETY: as in `SlotView::as_ref`: checked and claimed above,
                // released only after this copy.
                let src =
                    unsafe { std::slice::from_raw_parts(self.link.seg.slot_ptr(d.index), len) };
                let b = Bytes::copy_from_slice(src);
                self.link.release_now(d.index, d.generation);
                b
            }
        };
        self.deliver(frame)
    }

    /// The lag to report at once for a frame just dropped because of
    /// `max_held` (so a caller does not wait for the next frame to hear of it).
    fn lagged_now(&mut self) -> Error {
        let missed = std::mem::take(&mut self.missed);
        StatCounters::add(&self.stats.lagged, missed);
        Error::Lagged { missed }
    }

    /// Stamps and counts a frame that arrived; reports the frames lost
    /// before it first (holding it for the next `recv`).
    fn deliver(&mut self, mut frame: Frame) -> Option<Result<Frame>> {
        frame.stamp_received();
        StatCounters::add(&self.stats.frames_received, 1);
        StatCounters::add(&self.stats.bytes_received, frame.payload.len() as u64);
        if self.missed > 0 {
            let missed = std::mem::take(&mut self.missed);
            StatCounters::add(&self.stats.lagged, missed);
            self.held = Some(frame);
            return Some(Err(Error::Lagged { missed }));
        }
        Some(Ok(frame))
    }

    /// Maps a segment the publisher will forward frames from (SEGMENT).
    fn on_segment(&mut self, index: u32, inode: u64, len: u64, anchors: u32) -> Result<()> {
        let fd = self
            .rx
            .take_fd()
            .ok_or_else(|| Error::protocol("shm-pool", "SEGMENT arrived without its fd"))?;
        // Take every descriptor this SEGMENT announced before checking any,
        // so that a refused one leaves none behind for the next message.
        let announced: Vec<Option<OwnedFd>> = (0..anchors.min(wire::MAX_ANCHORS + 1))
            .map(|_| self.rx.take_fd())
            .collect();
        if anchors > wire::MAX_ANCHORS {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "SEGMENT with {anchors} anchors (at most {})",
                    wire::MAX_ANCHORS
                ),
            ));
        }
        // The hops before this publisher's, then this connection's own.
        let mut held = Vec::with_capacity(anchors as usize + 1);
        for fd in announced {
            held.push(check_anchor(fd, "SEGMENT")?);
        }
        held.push(self.anchor.clone());
        if self.link.dead.load(Ordering::Acquire) {
            // Its publisher is gone: nothing will be forwarded from it. Its
            // fd and anchors (and any that came with it) are closed now.
            while self.rx.take_fd().is_some() {}
            return Ok(());
        }
        let mut table = lock(&self.link.fwd);
        let Some(entry) = table.get_mut(index as usize) else {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "SEGMENT index {index} is out of range (below {})",
                    wire::MAX_FORWARD_SEGMENTS
                ),
            ));
        };
        if entry.is_some() {
            return Err(Error::protocol(
                "shm-pool",
                format!("SEGMENT index {index} is already in use (FORGET comes first)"),
            ));
        }
        // Pre-faulted only up to the size of the pool announced in HELLO.
        let populate_up_to = self.link.seg.geometry().len;
        let map = ForeignMap::open(fd, inode, len, held, populate_up_to)?;
        tracing::debug!(
            pool = %self.name,
            index,
            inode = map.inode(),
            len,
            "shm-pool: mapped a forwarded segment"
        );
        let map = Arc::new(map);
        map.registered().set_marker(Arc::new(Marker {
            link: Arc::downgrade(&self.link),
            foreign: Some(Arc::as_ptr(&map) as usize),
        }));
        *entry = Some(map);
        Ok(())
    }

    /// Checks a forwarded descriptor, claims its forward slot and builds the
    /// frame; `None` when skipped (taken back, or filtered by topic). A
    /// descriptor whose reference is bad reads nothing; if its claim was
    /// really on offer, the claim is released so the publisher's forward
    /// slot (and the upstream slot behind it) does not stay held.
    fn on_fwd(&mut self, d: FwdDesc, header: &[u8]) -> Option<Result<Frame>> {
        self.missed = self.missed.saturating_add(d.missed);
        let geo = self.link.seg.geometry();
        let first = geo.slots;
        let end = wire::claim_entries(geo.slots);
        if d.index < first || d.index >= end {
            return Some(Err(invalid(format!(
                "forward claim index {} is out of range: pool `{}` has forward claims {first}..{end}",
                d.index, self.name
            ))));
        }
        if self.link.dead.load(Ordering::Acquire) {
            // Its publisher is gone and may have been killed: the upstream
            // slot behind this frame is no longer reserved for it.
            self.missed = self.missed.saturating_add(1);
            return None;
        }
        let seg = lock(&self.link.fwd)
            .get(d.segment as usize)
            .and_then(Option::clone);
        let bad = match &seg {
            None => Some(format!(
                "descriptor names forwarded segment {}, which the publisher of `{}` never sent",
                d.segment, self.name
            )),
            Some(_) if d.len > geo.slot_size => Some(format!(
                "forwarded length {} exceeds slot_size {}",
                d.len, geo.slot_size
            )),
            Some(m) if d.offset.checked_add(d.len).is_none_or(|e| e > m.len()) => Some(format!(
                "forwarded bytes {}..{}+{} run past the end of segment {} ({} bytes)",
                d.offset,
                d.offset,
                d.len,
                d.segment,
                m.len()
            )),
            Some(_) => None,
        };
        let seg = match (seg, bad) {
            (Some(seg), None) => seg,
            (_, bad) => {
                if self.link.claims.take(d.index, d.generation, false) == Take::Taken {
                    self.link.release_now(d.index, d.generation);
                }
                return Some(Err(invalid(bad.unwrap_or_default())));
            }
        };
        match self
            .link
            .claims
            .take(d.index, d.generation, self.may_reclaim)
        {
            Take::Taken => {}
            Take::Stale => {
                self.missed = self.missed.saturating_add(1);
                return None;
            }
            Take::Invalid => {
                return Some(Err(invalid(format!(
                    "forward slot {} generation {} is not on offer to this subscriber (already taken, stale or forged)",
                    d.index - first,
                    d.generation
                ))));
            }
        }
        // From here on the forward slot is ours: every way out releases it or
        // hands it to a view.
        let mut frame = match decode_frame_header(header, d.len, geo.slot_size) {
            Ok(f) => f,
            Err(e) => {
                self.link.release_now(d.index, d.generation);
                return Some(Err(e));
            }
        };
        if !frame.topic.starts_with(self.prefix.as_str()) {
            self.link.release_now(d.index, d.generation);
            return None;
        }
        if self.over_max_held(FWD_VIEWS, d.index, d.generation) {
            return Some(Err(self.lagged_now()));
        }
        let len = d.len as usize;
        frame.payload = match self.mode {
            RecvMode::View => Bytes::from_owner({
                self.link.views[FWD_VIEWS].fetch_add(1, Ordering::Relaxed);
                if let Some(r) = lock(&self.link.fwd_ranges).get_mut((d.index - first) as usize) {
                    *r = Some((Arc::as_ptr(&seg) as usize, d.offset, d.len, d.generation));
                }
                FwdView {
                    link: self.link.clone(),
                    seg,
                    index: d.index,
                    generation: d.generation,
                    offset: d.offset,
                    len,
                }
            }),
            _ => {
                // SAFETY: as in `FwdView::as_ref`: checked and claimed above,
                // released only after this copy.
                let src = unsafe { std::slice::from_raw_parts(seg.ptr(d.offset), len) };
                let b = Bytes::copy_from_slice(src);
                self.link.release_now(d.index, d.generation);
                b
            }
        };
        self.deliver(frame)
    }

    /// Reads more from the socket (after an optional spin); records EOF.
    async fn read_more(&mut self) {
        let fd = self.link.io.stream.as_fd();
        if let Some(spin) = self.busy_poll {
            let seen = self.link.claims.written();
            match self.rx.fill(fd) {
                Ok(n) => return self.after_read(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return self.after_read(Err(e)),
            }
            let deadline = Instant::now() + spin;
            while self.link.claims.written() == seen && Instant::now() < deadline {
                std::hint::spin_loop();
            }
        }
        let r = sys::recv_some(&self.link.io.stream, &mut self.rx).await;
        self.after_read(r);
    }

    fn after_read(&mut self, r: io::Result<usize>) {
        match r {
            Ok(0) => {
                self.closed = Some(format!(
                    "the publisher of shm-pool `{}` went away",
                    self.name
                ));
            }
            Ok(_) => {}
            Err(e) => {
                self.closed = Some(format!(
                    "reading from the publisher of shm-pool `{}`: {e}",
                    self.name
                ));
            }
        }
    }
}

fn refused(name: &str, reason: String) -> Error {
    Error::Backend {
        backend: "shm-pool",
        source: format!("the publisher of `{name}` refused this subscriber: {reason}").into(),
    }
}

#[async_trait]
impl Subscriber for ShmPoolSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.held.take() {
                return Ok(f);
            }
            loop {
                let body = match self.rx.next_message() {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        self.closed = Some(format!("protocol error earlier: {e}"));
                        return Err(e);
                    }
                };
                match wire::decode(body) {
                    Ok(Msg::Desc { desc, header }) => {
                        if let Some(r) = self.on_desc(desc, &header) {
                            return r;
                        }
                    }
                    Ok(Msg::Fwd { desc, header }) => {
                        if let Some(r) = self.on_fwd(desc, &header) {
                            return r;
                        }
                    }
                    Ok(Msg::Segment {
                        index,
                        inode,
                        len,
                        anchors,
                    }) => {
                        // A segment that cannot be mapped is reported; the
                        // frames that name it then fail on their own.
                        self.on_segment(index, inode, len, anchors)?;
                    }
                    Ok(Msg::Forget { index }) => {
                        // Views made from it keep their mapping.
                        if let Some(entry) = lock(&self.link.fwd).get_mut(index as usize) {
                            *entry = None;
                        }
                    }
                    Ok(other) => {
                        let e = Error::protocol(
                            "shm-pool",
                            format!("unexpected message from the publisher: {other:?}"),
                        );
                        self.closed = Some(e.to_string());
                        return Err(e);
                    }
                    Err(e) => {
                        self.closed = Some(format!("protocol error earlier: {e}"));
                        return Err(e);
                    }
                }
            }
            if let Some(reason) = &self.closed {
                // No FWD can name a forwarded segment any more: let the
                // mappings (and the anchors they hold) go with their last view.
                self.link.hung_up();
                return Err(Error::disconnected("shm-pool", reason.clone()));
            }
            self.read_more().await;
        }
    }

    fn recv_mode(&self) -> RecvMode {
        self.mode
    }

    fn stats(&self) -> Stats {
        self.stats.snapshot()
    }
}

impl Drop for ShmPoolSubscriber {
    fn drop(&mut self) {
        // Descriptors not taken yet go back at once; views still alive keep
        // their slots (and the socket) until they drop.
        let _ = self.link.tx.send(Ctl::Unsubscribe);
        // No FWD will be read any more: the forwarded segments (and their
        // anchors) stay only as long as views of them.
        let gone: Vec<_> = lock(&self.link.fwd).iter_mut().map(Option::take).collect();
        drop(gone);
    }
}
