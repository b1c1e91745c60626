//! The publishing side: the pool, the accounting of who holds which slot
//! (pool slots and forward slots), the rendezvous socket and one connection
//! per subscriber.
//!
//! Locks (all `std::sync::Mutex`, never held across an `.await` or a blocking
//! call) are taken in this order only: a connection's `inp`, then `state`,
//! then a connection's `out`. The forwarding registry's lock is taken with
//! none of them held; payloads of forward slots are dropped (which may unmap
//! an upstream segment and take that lock) only after `state` is unlocked.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use transport_core::{
    Endpoint, Error, Frame, Loan, Policy, PublishOptions, Publisher, Result, StatCounters, Stats,
    async_trait, codec, contract::count_sent,
};

use crate::channel::{self, Entry, INLINE_HEADER, KICK_RELEASES, KICK_SPACE};
use crate::config::{self, Config};
use crate::holders::Holders;
use crate::pool::{FreeList, SlotPool};
use crate::registry::{self, SegFd};
use crate::sys;
use crate::wire::{self, ClaimTable, Desc, FwdDesc, Hello, Msg, RecvBuf};
use transport_shm_support::loan::{Returned, take_back};

mod accounting;
mod conn;
mod forwarding;
mod handshake;
mod loans;

use conn::conn_task;
#[cfg(test)]
pub(crate) use handshake::MAX_PENDING_HANDSHAKES;
use handshake::accept_loop;
use loans::{ReservedBytes, SlotGuard, SlotLoan};

/// Most subscribers one publisher serves (one bit each in a slot's holder mask).
pub const MAX_SUBSCRIBERS: usize = 64;
/// How long a connecting subscriber may take to finish the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of messages serialized ahead of one `send` call.
const WRITE_BATCH: usize = 64 << 10;
/// Longest a publisher waiting for a release sleeps between looks at the
/// release rings, even if no subscriber wakes it (one that clears its kick
/// word cannot make it wait for good).
const RELEASE_SLICE: Duration = Duration::from_millis(20);
/// Releases taken from one subscriber's ring per lock of the state.
const RELEASE_BATCH: usize = 64;

/// Locks a mutex, going on with the data if a thread panicked while holding
/// it (the accounting stays consistent: every critical section is short and
/// panic-free by construction; this only avoids cascading panics).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, Default)]
struct SlotAcct {
    /// The publication's generation and holders (bit `k`: subscriber `k`
    /// holds the slot: offered, or taken and not released).
    hold: Holders,
    /// Sequence number of the frame in the slot (for drop-oldest).
    seq: u64,
    /// Published and not yet free again.
    in_flight: bool,
    /// Bit `k`: subscriber `k` said it forwards this frame (FORWARDED): if
    /// it dies, the slot waits for its anchor; a slot it only took does not.
    forwarded: u64,
}

/// What a forward slot holds besides its [`SlotAcct`].
#[derive(Default)]
struct FwdSlot {
    /// The forwarded payload: a view of another pool's slot. Holding it keeps
    /// that slot reserved upstream; dropping it releases it there.
    payload: Option<Bytes>,
    /// Index of its segment in `State::segs`.
    seg: u32,
}

/// A foreign segment this publisher forwards from.
struct FwdSeg {
    seg: Arc<SegFd>,
    /// Bit `k`: subscriber `k` was sent this segment (SEGMENT queued).
    sent_to: u64,
    /// Forward slots in flight (or being published) in this segment.
    refs: usize,
}

struct State {
    /// Accounting by claim index: the pool slots, then the forward slots.
    slots: Vec<SlotAcct>,
    /// Forward slot `k` (claim index `pool slots + k`).
    fwd: Vec<FwdSlot>,
    /// Foreign segments by the index subscribers know them by.
    segs: Vec<Option<FwdSeg>>,
    conns: Vec<Option<Arc<Conn>>>,
    in_flight: usize,
    subscribers: usize,
    /// Payloads of forward slots just freed, dropped once `state` is unlocked
    /// (see [`unlock`]).
    graveyard: Vec<Bytes>,
}

/// Unlocks `state`, then drops the forwarded payloads freed under it: a drop
/// may release an upstream slot and, for the last view of an upstream
/// subscriber, unmap its segment, neither of which belongs under the lock.
fn unlock(mut st: MutexGuard<'_, State>) {
    let dead = std::mem::take(&mut st.graveyard);
    drop(st);
    drop(dead);
}

/// Sweeps `shared`'s forwarded segments each time a mapping of this process
/// goes away ([`registry::unmapped`]), until the publisher is gone.
async fn sweep_task(shared: std::sync::Weak<Shared>) {
    loop {
        // Registered before the sweep: an unmap during it is not missed.
        let unmapped = registry::unmapped();
        tokio::pin!(unmapped);
        unmapped.as_mut().enable();
        match shared.upgrade() {
            Some(sh) => sh.sweep_unmapped(),
            None => return,
        }
        unmapped.await;
    }
}

enum Outgoing {
    Ready(u32),
    Desc {
        desc: Desc,
        header: Bytes,
    },
    /// A forwarded segment's fd, passed with the first byte of its message.
    Segment {
        index: u32,
        seg: Arc<SegFd>,
    },
    Fwd {
        desc: FwdDesc,
        header: Bytes,
    },
    Forget(u32),
}

#[derive(Default)]
struct Out {
    queue: VecDeque<Outgoing>,
    /// Serialized, not yet (fully) written.
    wbuf: BytesMut,
    /// The fd to attach to the next write of `wbuf`, whose first bytes are
    /// its SEGMENT message.
    pass: Option<Arc<SegFd>>,
    /// Frames dropped for this subscriber and not yet reported in a descriptor.
    carry: u64,
    /// Entries published in its descriptor ring.
    desc_head: u64,
    /// The ring was full: messages go over the socket until RESUME.
    spilling: bool,
}

/// Which free list a send draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A pool slot: the payload is written into it.
    Pool,
    /// A forward slot: the payload stays where it is, in another pool.
    Forward,
}

/// One subscriber's connection.
struct Conn {
    bit: u32,
    stream: UnixStream,
    claims: ClaimTable,
    /// The read end of the subscriber's anchor (see `wire`, "Anchors").
    anchor: AsyncFd<OwnedFd>,
    prefix: String,
    /// Receives frames (false after UNSUBSCRIBE or death).
    active: AtomicBool,
    dead: AtomicBool,
    /// Its socket closed, but slots it took stay reserved until its anchor
    /// has no writer left; its bit stays taken meanwhile.
    lingering: AtomicBool,
    out: Mutex<Out>,
    inp: Mutex<RecvBuf>,
    /// Releases consumed from its channel's release ring.
    rel_tail: Mutex<u64>,
    wake: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadOutcome {
    Open,
    /// End of stream or a socket error: the peer closed its socket or died.
    Closed,
    /// The peer broke the protocol; it may still be alive, with views.
    Violated,
}

pub(crate) struct Shared {
    name: String,
    pool: SlotPool,
    ro_fd: OwnedFd,
    policy: Policy,
    state: Mutex<State>,
    released: Notify,
    subs_changed: Notify,
    progress: Notify,
    stats: StatCounters,
    stale_releases: AtomicU64,
    /// Free forward slots, by claim index (`pool slots + k`).
    fwd_free: FreeList,
    /// Frames sent by forwarding a view, without a copy.
    forwarded: AtomicU64,
    /// Most slots of one kind a subscriber may hold as views (`max_held`),
    /// announced with HELLO.
    max_held: usize,
    closed: AtomicBool,
}

/// The publisher of an `shm-pool://` endpoint.
///
/// Frames are written into slots of its pool (one copy for [`send`](Publisher::send),
/// none for [`loan`](Publisher::loan) + [`send_loan`](Publisher::send_loan)) and
/// a small descriptor goes to each subscriber. A frame whose payload is a view
/// received from another pool is forwarded instead: [`send`](Publisher::send)
/// passes that pool's segment on and copies nothing ([`forwarded`](Self::forwarded)
/// counts these). See the crate docs for how slots come back.
pub struct ShmPoolPublisher {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    policy: Policy,
    trace_name: Option<String>,
    next_seq: u64,
    targets: Vec<Arc<Conn>>,
    accept: JoinHandle<()>,
    sweep: JoinHandle<()>,
}

impl std::fmt::Debug for ShmPoolPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmPoolPublisher")
            .field("endpoint", &self.endpoint.url())
            .field("policy", &self.policy)
            .field("pool", &self.shared.pool)
            .finish_non_exhaustive()
    }
}

impl ShmPoolPublisher {
    pub(crate) async fn create(
        endpoint: &Endpoint,
        opts: &PublishOptions,
    ) -> Result<ShmPoolPublisher> {
        let cfg = Config::from_endpoint(endpoint)?;
        let policy = opts.resolve_policy(endpoint)?;
        let sock = config::socket_name(sys::euid(), &cfg.name);
        let listener = sys::listen(&sock).await.map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::AddrInUse {
                format!(
                    "shm-pool `{}` already has a publisher (abstract socket @{sock})",
                    cfg.name
                )
            } else {
                format!("listening on the abstract socket @{sock}")
            };
            Error::io(hint, e)
        })?;
        let pool = SlotPool::create(&cfg.name, cfg.slots, cfg.slot_size)?;
        let ro_fd = sys::reopen_read_only(pool.fd())
            .map_err(|e| Error::io("reopening the segment read-only through /proc/self/fd", e))?;
        let slots = pool.slots();
        let fwd_free = FreeList::new(slots as u32, slots as u32);
        let shared = Arc::new(Shared {
            name: cfg.name,
            pool,
            ro_fd,
            policy,
            state: Mutex::new(State {
                slots: vec![SlotAcct::default(); 2 * slots],
                fwd: (0..slots).map(|_| FwdSlot::default()).collect(),
                segs: (0..wire::MAX_FORWARD_SEGMENTS).map(|_| None).collect(),
                conns: vec![None; MAX_SUBSCRIBERS],
                in_flight: 0,
                subscribers: 0,
                graveyard: Vec::new(),
            }),
            released: Notify::new(),
            subs_changed: Notify::new(),
            progress: Notify::new(),
            stats: StatCounters::default(),
            stale_releases: AtomicU64::new(0),
            fwd_free,
            forwarded: AtomicU64::new(0),
            max_held: cfg.max_held,
            closed: AtomicBool::new(false),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
        let sweep = tokio::spawn(sweep_task(Arc::downgrade(&shared)));
        Ok(ShmPoolPublisher {
            shared,
            endpoint: endpoint.clone(),
            policy,
            trace_name: opts.trace_name.clone(),
            next_seq: 0,
            targets: Vec::new(),
            accept,
            sweep,
        })
    }

    /// The backpressure policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Slots free now (not loaned, not held by any subscriber).
    pub fn free_slots(&self) -> usize {
        self.shared.drain_rings();
        self.shared.pool.free_slots()
    }

    /// Number of slots in the pool.
    pub fn slots(&self) -> usize {
        self.shared.pool.slots()
    }

    /// Releases that named a slot the subscriber did not hold (stale,
    /// duplicate or forged); each was ignored.
    pub fn stale_releases(&self) -> u64 {
        self.shared.stale_releases.load(Ordering::Relaxed)
    }

    /// Slot releases refused because the slot (pool or forward) was already
    /// free: a double release inside this process, which would be a bug in
    /// the accounting. Each was logged and ignored; nothing was freed twice.
    pub fn double_releases(&self) -> u64 {
        self.shared.pool.double_releases() + self.shared.fwd_free.double_releases()
    }

    /// Frames sent without a copy by forwarding a view received from another
    /// pool (see the crate docs, "Forwarding").
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Most slots (and most forward slots) one subscriber may hold as views
    /// at once: the endpoint's `max_held`, announced to each subscriber.
    pub fn max_held(&self) -> usize {
        self.shared.max_held
    }

    /// Forward slots free now (as many as pool slots; each forwarded frame
    /// holds one until every subscriber has released it).
    pub fn free_forward_slots(&self) -> usize {
        self.shared.fwd_free.len()
    }

    /// Foreign segments this publisher announces to its subscribers now:
    /// those of forwarded frames in flight, and those it forwarded from
    /// before that are still mapped in this process. One that is neither is
    /// forgotten (FORGET) as soon as its last mapping here goes away.
    pub fn forwarded_segments(&self) -> usize {
        lock(&self.shared.state).segs.iter().flatten().count()
    }

    /// Messages (descriptors, SEGMENT, FORGET) queued for subscribers whose
    /// sockets are full, all connections together. Bounded: at most one
    /// descriptor per slot and forward slot, and one SEGMENT and one FORGET
    /// per forwarded-segment index, per subscriber.
    pub fn queued_messages(&self) -> usize {
        let conns: Vec<Arc<Conn>> = lock(&self.shared.state)
            .conns
            .iter()
            .flatten()
            .cloned()
            .collect();
        conns.iter().map(|c| lock(&c.out).queued()).sum()
    }

    /// Stamps, encodes and publishes a frame whose payload is in the reserved slot.
    /// The frame (whose payload may be a `ReservedBytes` view of the slot) is
    /// always dropped before the guard gives up or returns the slot.
    /// `sent_at` is when the frame was handed over (before any copy into the slot).
    fn finish(
        &mut self,
        guard: SlotGuard,
        mut frame: Frame,
        len: usize,
        sent_at: u64,
    ) -> Result<()> {
        let seq = self.next_seq;
        let mut header = BytesMut::with_capacity(128);
        let encoded = frame
            .stamp_for_send_at(seq, self.trace_name.as_deref(), sent_at)
            .and_then(|()| codec::encode_header(&frame, &mut header));
        let topic = std::mem::take(&mut frame.topic);
        drop(frame);
        if let Err(e) = encoded {
            drop(guard);
            return Err(e);
        }
        let index = guard.disarm();
        self.shared.publish(
            index,
            len as u64,
            header.freeze(),
            &topic,
            seq,
            &mut self.targets,
        );
        self.next_seq += 1;
        count_sent(&self.shared.stats, len);
        Ok(())
    }

    /// Sends `frame` without copying its payload, which is bytes `offset..`
    /// of the registered segment `seg` (a view received from another pool):
    /// a forward slot keeps the payload (and so the upstream slot) until
    /// every subscriber has released it. Gives the frame back untouched when
    /// every forwarded-segment index is taken by frames in flight; the
    /// caller then copies it.
    async fn forward(
        &mut self,
        frame: Frame,
        seg: Arc<SegFd>,
        offset: u64,
    ) -> Result<Option<Frame>> {
        let index = self.shared.acquire(self.policy, Kind::Forward).await?;
        let guard = SlotGuard {
            shared: self.shared.clone(),
            index: Some(index),
        };
        let seg_index = {
            let mut st = lock(&self.shared.state);
            let r = self.shared.seg_ref(&mut st, &seg);
            unlock(st);
            r
        };
        let Some(seg_index) = seg_index else {
            tracing::debug!(
                pool = %self.shared.name,
                "shm-pool: every forwarded-segment index is in use by frames in flight; copying"
            );
            return Ok(Some(frame));
        };
        let mut frame = frame;
        let seq = self.next_seq;
        let mut header = BytesMut::with_capacity(128);
        let encoded = frame
            .stamp_for_send_at(
                seq,
                self.trace_name.as_deref(),
                transport_core::monotonic_ns(),
            )
            .and_then(|()| codec::encode_header(&frame, &mut header));
        if let Err(e) = encoded {
            let mut st = lock(&self.shared.state);
            self.shared.seg_unref(&mut st, seg_index);
            unlock(st);
            return Err(e);
        }
        let len = frame.payload.len();
        let payload = std::mem::take(&mut frame.payload);
        let topic = std::mem::take(&mut frame.topic);
        drop(frame);
        let index = guard.disarm();
        self.shared.publish_fwd(
            index,
            seg_index,
            offset,
            payload,
            header.freeze(),
            &topic,
            seq,
            &mut self.targets,
        );
        self.next_seq += 1;
        count_sent(&self.shared.stats, len);
        self.shared.forwarded.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }
}

#[async_trait]
impl Publisher for ShmPoolPublisher {
    async fn send(&mut self, frame: Frame) -> Result<()> {
        let len = frame.payload.len();
        self.shared.pool.payload_limit().check(len)?;
        codec::check_header(&frame)?;
        if !self.shared.has_recipient(&frame.topic) {
            // Nobody would read it: no slot, no copy, but the frame counts
            // as sent and uses its sequence number, as a publish to nobody.
            let mut frame = frame;
            frame.stamp_for_send(self.next_seq, self.trace_name.as_deref())?;
            self.next_seq += 1;
            count_sent(&self.shared.stats, len);
            return Ok(());
        }
        let mut frame = frame;
        // A view of another pool's slot goes on as it is, without a copy,
        // when its anchors can go with it: none (a `zmq+...?shm=pool` view,
        // whose publisher has no anchors) or too many, and it is copied.
        if let Some((seg, offset)) = registry::lookup(frame.payload.as_ptr(), len)
            .filter(|(seg, _)| (1..=wire::MAX_ANCHORS as usize).contains(&seg.anchors().len()))
            // The upstream publisher learns first that this frame's slot is
            // forwarded (if it cannot be told at once, the frame is copied).
            .filter(|(seg, offset)| seg.mark_forwarded(*offset, len as u64))
        {
            match self.forward(frame, seg, offset).await? {
                None => return Ok(()),
                Some(f) => frame = f,
            }
        }
        let index = self.shared.acquire(self.policy, Kind::Pool).await?;
        let guard = SlotGuard {
            shared: self.shared.clone(),
            index: Some(index),
        };
        // SAFETY: the slot was just popped from the free list: no subscriber
        // holds it and nothing else in this process refers to it; len <= slot_size.
        let dst = unsafe { self.shared.pool.slot_mut(index, len) };
        // The copy into the slot is part of the hand-off: stamp before it.
        let sent_at = transport_core::monotonic_ns();
        transport_core::copy::copy_into(dst, &frame.payload);
        self.finish(guard, frame, len, sent_at)
    }

    async fn loan(&mut self, len: usize) -> Result<Loan> {
        self.shared.pool.payload_limit().check(len)?;
        let index = self.shared.acquire(self.policy, Kind::Pool).await?;
        Ok(Loan::new(Box::new(SlotLoan::new(
            self.shared.clone(),
            index,
            len,
        ))))
    }

    async fn send_loan(&mut self, loan: Loan) -> Result<()> {
        let (mut frame, buf) = loan.into_parts();
        let mut slot = match take_back::<SlotLoan>(buf)? {
            Returned::Own(slot) => slot,
            Returned::Heap(payload) => {
                frame.payload = payload;
                return self.send(frame).await;
            }
        };
        if !Arc::ptr_eq(slot.home(), &self.shared) {
            return Err(Error::ForeignLoan);
        }
        slot.disarm();
        let (index, len) = (slot.index(), slot.len());
        drop(slot);
        let guard = SlotGuard {
            shared: self.shared.clone(),
            index: Some(index),
        };
        frame.payload = Bytes::from_owner(ReservedBytes {
            shared: self.shared.clone(),
            index,
            len,
        });
        self.finish(guard, frame, len, transport_core::monotonic_ns())
    }

    async fn flush(&mut self) -> Result<()> {
        loop {
            let notified = self.shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let conns: Vec<Arc<Conn>> = lock(&self.shared.state)
                .conns
                .iter()
                .flatten()
                .cloned()
                .collect();
            let mut done = true;
            for c in &conns {
                // A subscriber that left (dead, or unsubscribed while views
                // of its keep the socket open) reads nothing more: waiting
                // for its socket to drain could take forever.
                if c.dead.load(Ordering::Acquire) || !c.active.load(Ordering::Acquire) {
                    continue;
                }
                self.shared.flush_now(c);
                if lock(&c.out).has_output() {
                    done = false;
                }
            }
            if done {
                return Ok(());
            }
            notified.await;
        }
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn subscriber_count(&self) -> Option<usize> {
        Some(lock(&self.shared.state).subscribers)
    }

    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let shared = &self.shared;
        transport_core::wait_until(
            &shared.subs_changed,
            timeout,
            "shm-pool subscribers to connect",
            || lock(&shared.state).subscribers >= n,
        )
        .await
    }

    fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }
}

impl Drop for ShmPoolPublisher {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.accept.abort();
        self.sweep.abort();
        for c in lock(&self.shared.state).conns.iter().flatten() {
            c.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod double_release_tests;
