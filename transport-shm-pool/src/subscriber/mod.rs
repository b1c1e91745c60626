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

use crate::channel::{BadRing, Entry, KICK_RELEASES};
use crate::config::{self, Config};
use crate::pool::{ForeignMap, SegmentMap};
use crate::publisher::HANDSHAKE_TIMEOUT;
use crate::registry::ForwardMark;
use crate::sys;
use crate::wire::{self, ClaimTable, Desc, FwdDesc, Msg, RecvBuf, Take};

mod frames;
mod handshake;
mod link;

use handshake::check_anchor;
use link::{hangup_task, release_task};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a view's drop (or the subscriber) asks the release task to send.
enum Ctl {
    Release(u32, u64),
    /// Finish a write that `write_now` could not complete.
    Kick,
    /// Wake the publisher (it waits for a release, see the channel's "Parking").
    Wake,
    Unsubscribe,
}

/// The socket's write side, shared by `recv` and the release task.
struct LinkIo {
    stream: UnixStream,
    out: Mutex<BytesMut>,
}

/// What views share with their subscriber: the mapping stays mapped and the
/// socket stays open (so the publisher keeps the slots reserved) until the
/// last view is gone.
struct Link {
    io: Arc<LinkIo>,
    seg: SegmentMap,
    claims: ClaimTable,
    /// Releases published in the channel's release ring (the one producer
    /// lock: views may drop on any thread).
    rel_head: Mutex<u64>,
    tx: mpsc::UnboundedSender<Ctl>,
    /// Live views of pool slots and of forward slots (for `max_held`),
    /// not counting those forwarded.
    views: [AtomicUsize; 2],
    /// Per claim index: the generation of its view if that view was
    /// forwarded (and so no longer counts against `max_held`), else 0.
    uncounted: Box<[AtomicU64]>,
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

/// Index into [`Link::views`] of pool-slot views.
const POOL_VIEWS: usize = 0;
/// Index into [`Link::views`] of forward-slot views.
const FWD_VIEWS: usize = 1;

/// A zero-copy view of a slot: the owner behind a view-mode payload.
/// Dropping it (with the payload's last clone) queues the slot's release.
struct SlotView {
    link: Arc<Link>,
    index: u32,
    generation: u64,
    len: usize,
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
    /// Entries consumed from the channel's descriptor ring.
    tail: u64,
    /// Entries before `tail` were consumed but the publisher has not been
    /// told yet (see `consume_entry_later`).
    tail_unpublished: bool,
    /// After a spill marker: messages come from the socket until RESUME.
    spilled: bool,
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

impl ShmPoolSubscriber {
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

    /// Waits for the next ring entry or socket message: spins on the ring
    /// for `busy_poll` (no system call), then parks (see the channel's
    /// "Parking"): on a multi-thread runtime first on the channel's futex
    /// word, on this thread, for [`PARK_SLICE`]; then (or at once on a
    /// current-thread runtime, whose one thread must not block) on the
    /// socket through the reactor: a WAKE, a message a marker announced, or
    /// the end of the stream. Cancel-safe: a dropped wait leaves at most a
    /// WAKE to be discarded later.
    async fn wait(&mut self) {
        // Room goes back before this side waits (or spins).
        self.publish_tail();
        if let Some(spin) = self.busy_poll {
            let deadline = Instant::now() + spin;
            loop {
                for _ in 0..64 {
                    if self.link.claims.desc_stamped(self.tail) {
                        return;
                    }
                    std::hint::spin_loop();
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
        if on_multi_thread_runtime() && self.futex_park(PARK_SLICE) {
            return;
        }
        self.link.claims.park();
        if self.link.claims.desc_ready(self.tail) {
            self.link.claims.unpark();
            return;
        }
        let r = wire::recv_some(&self.link.io.stream, &mut self.rx).await;
        self.link.claims.unpark();
        self.after_read(r);
    }

    /// Parks on the channel's futex word (see the channel's "Parking") on
    /// this thread, for at most `slice`: the publisher's `FUTEX_WAKE` then
    /// lands on the thread that called `recv`, with no message on the
    /// socket and no reactor thread on the way. True when the ring has an
    /// entry; false after `slice` (the caller then parks on the socket,
    /// which also reports the publisher's end). Anything the publisher
    /// sends over the socket is announced by a ring entry first, so only
    /// the end of the stream is seen late, by at most `slice`.
    /// `block_in_place` lets the runtime's other tasks go on meanwhile when
    /// this runs on a worker (on a thread inside `block_on` it only calls
    /// the closure).
    fn futex_park(&self, slice: Duration) -> bool {
        let (claims, tail) = (&self.link.claims, self.tail);
        let deadline = Instant::now() + slice;
        tokio::task::block_in_place(|| {
            loop {
                let seq = claims.park_futex();
                if claims.desc_ready(tail) {
                    claims.unpark();
                    return true;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    claims.unpark();
                    return false;
                }
                claims.futex_wait(seq, left);
                claims.unpark();
                if claims.desc_ready(tail) {
                    return true;
                }
            }
        })
    }

    /// Reads more from the socket (a marker announced a message not yet
    /// here); records EOF.
    async fn read_more(&mut self) {
        let r = wire::recv_some(&self.link.io.stream, &mut self.rx).await;
        self.after_read(r);
    }

    /// The next message on the socket other than WAKE, if one is here.
    fn next_socket_msg(&mut self) -> Result<Option<Msg>> {
        loop {
            match self.rx.next_message()? {
                None => return Ok(None),
                Some(body) => match wire::decode(body)? {
                    Msg::Wake => {}
                    m => return Ok(Some(m)),
                },
            }
        }
    }

    /// Acts on one message a marker announced; `Some` when it makes `recv`
    /// return.
    fn on_socket_msg(&mut self, msg: Msg) -> Option<Result<Frame>> {
        match msg {
            Msg::Desc { desc, header } => self.on_desc(desc, &header),
            Msg::Fwd { desc, header } => self.on_fwd(desc, &header),
            Msg::Segment {
                index,
                inode,
                len,
                anchors,
            } => {
                // A segment that cannot be mapped is reported; the frames
                // that name it then fail on their own.
                self.on_segment(index, inode, len, anchors).err().map(Err)
            }
            Msg::Forget { index } => {
                // Views made from it keep their mapping.
                if let Some(entry) = lock(&self.link.fwd).get_mut(index as usize) {
                    *entry = None;
                }
                None
            }
            other => {
                let e = Error::protocol(
                    "shm-pool",
                    format!("unexpected message from the publisher: {other:?}"),
                );
                self.closed = Some(e.to_string());
                Some(Err(e))
            }
        }
    }

    /// Marks the entry at the tail consumed, waking the publisher if it
    /// waits for room in the ring.
    fn consume_entry(&mut self) {
        self.tail_unpublished = false;
        if self.link.claims.consume_desc(&mut self.tail) {
            self.link.wake_publisher(true);
        }
    }

    /// Marks the entry at the tail consumed, to be told to the publisher
    /// ([`publish_tail`](Self::publish_tail)) at the next `recv`: the
    /// entry's room is not needed before then (the ring holds a
    /// descriptor for every claim and a spill marker), and the store and
    /// its fence stay out of this frame's hand-off.
    fn consume_entry_later(&mut self) {
        self.tail = self.tail.wrapping_add(1);
        self.tail_unpublished = true;
    }

    /// Tells the publisher of entries consumed with
    /// [`consume_entry_later`](Self::consume_entry_later), waking it if it
    /// waits for room in the ring.
    fn publish_tail(&mut self) {
        if std::mem::take(&mut self.tail_unpublished) && self.link.claims.publish_tail(self.tail) {
            self.link.wake_publisher(true);
        }
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

/// Longest a parked `recv` on a multi-thread runtime waits on its own
/// thread (on the channel's futex word) before it waits through the
/// reactor (and so longest a `timeout` around it may fire late, and the
/// publisher's end may be seen late).
const PARK_SLICE: Duration = Duration::from_millis(20);

/// True on a multi-thread tokio runtime, where `block_in_place` is allowed.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

#[async_trait]
impl Subscriber for ShmPoolSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        self.publish_tail();
        loop {
            if let Some(f) = self.held.take() {
                return Ok(f);
            }
            if self.spilled {
                match self.next_socket_msg() {
                    Ok(Some(Msg::Resume)) => self.spilled = false,
                    Ok(Some(msg)) => {
                        if let Some(r) = self.on_socket_msg(msg) {
                            return r;
                        }
                    }
                    Ok(None) if self.closed.is_none() => self.read_more().await,
                    Ok(None) => {
                        self.link.hung_up();
                        let reason = self.closed.clone().unwrap_or_default();
                        return Err(Error::disconnected("shm-pool", reason));
                    }
                    Err(e) => {
                        self.closed = Some(format!("protocol error earlier: {e}"));
                        return Err(e);
                    }
                }
                continue;
            }
            let entry = match self.link.claims.peek_desc(self.tail) {
                Ok(e) => e,
                Err(BadRing(e)) => {
                    let e = Error::protocol("shm-pool", e);
                    self.closed = Some(format!("protocol error earlier: {e}"));
                    return Err(e);
                }
            };
            match entry {
                Some(Entry::Desc(desc, header)) => {
                    self.consume_entry_later();
                    if let Some(r) = self.on_desc(desc, &header) {
                        return r;
                    }
                    continue;
                }
                Some(Entry::Fwd(desc, header)) => {
                    self.consume_entry_later();
                    if let Some(r) = self.on_fwd(desc, &header) {
                        return r;
                    }
                    continue;
                }
                Some(Entry::Spill) => {
                    self.consume_entry();
                    self.spilled = true;
                    continue;
                }
                Some(Entry::Socket) => match self.next_socket_msg() {
                    Ok(Some(msg)) => {
                        self.consume_entry();
                        if let Some(r) = self.on_socket_msg(msg) {
                            return r;
                        }
                        continue;
                    }
                    Ok(None) if self.closed.is_none() => {
                        // Written (or about to be) before the marker was
                        // published: it is on its way.
                        self.read_more().await;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.closed = Some(format!("protocol error earlier: {e}"));
                        return Err(e);
                    }
                },
                None => {}
            }
            if let Some(reason) = &self.closed {
                // No FWD can name a forwarded segment any more: let the
                // mappings (and the anchors they hold) go with their last view.
                self.link.hung_up();
                return Err(Error::disconnected("shm-pool", reason.clone()));
            }
            self.wait().await;
            // WAKEs (and nothing else unannounced) may have come: drop them
            // so that the buffer holds only what markers announce.
            self.rx.skip_wakes();
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
