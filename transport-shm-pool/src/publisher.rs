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
    Endpoint, Error, Frame, Loan, LoanBuffer, Policy, PublishOptions, Publisher, Result,
    StatCounters, Stats, async_trait, codec,
};

use crate::config::{self, Config};
use crate::pool::{FreeList, SlotPool};
use crate::registry::{self, SegFd};
use crate::sys;
use crate::wire::{self, ClaimTable, Desc, FwdDesc, Hello, Msg, RecvBuf};

/// Most subscribers one publisher serves (one bit each in a slot's holder mask).
pub const MAX_SUBSCRIBERS: usize = 64;
/// How long a connecting subscriber may take to finish the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of descriptors serialized ahead of one `send` call.
const WRITE_BATCH: usize = 64 << 10;

/// Locks a mutex, going on with the data if a thread panicked while holding
/// it (the accounting stays consistent: every critical section is short and
/// panic-free by construction; this only avoids cascading panics).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, Default)]
struct SlotAcct {
    /// Bumped each time the slot is published.
    generation: u64,
    /// Bit `k`: subscriber `k` holds the slot (offered, or taken and not released).
    holders: u64,
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

impl Outgoing {
    /// The claim index and generation of a descriptor.
    fn claim(&self) -> Option<(u32, u64)> {
        match self {
            Outgoing::Desc { desc, .. } => Some((desc.index, desc.generation)),
            Outgoing::Fwd { desc, .. } => Some((desc.index, desc.generation)),
            _ => None,
        }
    }

    /// A descriptor's count of frames dropped before it.
    fn missed_mut(&mut self) -> Option<&mut u64> {
        match self {
            Outgoing::Desc { desc, .. } => Some(&mut desc.missed),
            Outgoing::Fwd { desc, .. } => Some(&mut desc.missed),
            _ => None,
        }
    }
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
}

impl Out {
    fn has_output(&self) -> bool {
        !self.queue.is_empty() || !self.wbuf.is_empty()
    }

    /// Queues a descriptor (DESC or FWD), adding the drops carried so far.
    fn push_desc(&mut self, mut o: Outgoing) {
        let carry = std::mem::take(&mut self.carry);
        if let Some(m) = o.missed_mut() {
            *m = m.saturating_add(carry);
        }
        self.queue.push_back(o);
    }

    /// Queues FORGET of segment index `index`, coalesced with what is still
    /// queued for that index: a SEGMENT of it not yet written is removed
    /// instead (the subscriber never learns of that mapping, so there is
    /// nothing to forget). So at most one FORGET and one SEGMENT per index
    /// wait in the queue however often an index is reused while a
    /// subscriber does not read, each holding a segment's fd and anchors.
    /// The caller makes sure no queued descriptor uses the index.
    fn forget(&mut self, index: u32) {
        let queued = self
            .queue
            .iter()
            .rposition(|o| matches!(o, Outgoing::Segment { index: i, .. } if *i == index));
        match queued {
            Some(pos) => {
                self.queue.remove(pos);
            }
            None => self.queue.push_back(Outgoing::Forget(index)),
        }
    }

    /// Messages queued and not yet serialized.
    fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Removes a queued (unsent) descriptor, carrying its drop count to the
    /// next one. True if it was still queued.
    fn remove_desc(&mut self, index: u32, generation: u64) -> bool {
        let Some(pos) = self
            .queue
            .iter()
            .position(|o| o.claim() == Some((index, generation)))
        else {
            return false;
        };
        let missed = match self
            .queue
            .remove(pos)
            .as_mut()
            .and_then(Outgoing::missed_mut)
        {
            Some(m) => m.saturating_add(1),
            None => 1,
        };
        match self
            .queue
            .iter_mut()
            .skip(pos)
            .find_map(Outgoing::missed_mut)
        {
            Some(next) => *next = next.saturating_add(missed),
            None => self.carry = self.carry.saturating_add(missed),
        }
        true
    }
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

impl Shared {
    fn hello(&self) -> Hello {
        let g = self.pool.geometry();
        Hello {
            version: wire::VERSION,
            flags: (if self.policy == Policy::DropOldest {
                wire::HELLO_RECLAIMS
            } else {
                0
            }) | (self.max_held.min(0xffff) as u32) << wire::HELLO_MAX_HELD_SHIFT,
            segment: self.pool.segment_id(),
            slots: g.slots,
            slot_size: g.slot_size,
            stride: g.stride,
            data_offset: g.data_offset,
            segment_len: g.len,
            claims_len: wire::claims_len(wire::claim_entries(g.slots)),
        }
    }

    /// Number of pool slots: claim indices below it are pool slots, those
    /// from it on forward slots.
    fn pool_slots(&self) -> u32 {
        self.pool.geometry().slots
    }

    fn set_queued(&self, st: &State) {
        self.stats
            .queued
            .store(st.in_flight as u64, Ordering::Relaxed);
    }

    fn set_subscribers(&self, st: &State) {
        self.stats
            .subscribers
            .store(st.subscribers as u64, Ordering::Relaxed);
    }

    /// Marks a published slot (pool or forward) free and returns it to its
    /// free list. A forward slot's payload goes to the graveyard, dropped
    /// when `state` is unlocked.
    fn free_slot(&self, st: &mut State, index: u32) {
        let s = &mut st.slots[index as usize];
        debug_assert!(s.in_flight && s.holders == 0);
        s.in_flight = false;
        st.in_flight -= 1;
        self.set_queued(st);
        self.end_forward(st, index);
        self.unreserve(index);
    }

    /// A forward slot stops forwarding: its payload to the graveyard, its
    /// segment's reference dropped. Nothing for a pool slot.
    fn end_forward(&self, st: &mut State, index: u32) {
        let Some(k) = index.checked_sub(self.pool_slots()) else {
            return;
        };
        let f = &mut st.fwd[k as usize];
        let seg = f.seg;
        if let Some(p) = f.payload.take() {
            st.graveyard.push(p);
            self.seg_unref(st, seg);
        }
    }

    /// Returns an unpublished slot (a dropped loan, a failed send) to its free list.
    fn unreserve(&self, index: u32) {
        if index < self.pool_slots() {
            self.pool.push(index);
        } else {
            // A double release is refused, counted and logged, never a panic
            // (this runs in `SlotGuard`/`SlotLoan` drops).
            self.fwd_free.push(index);
        }
        self.released.notify_one();
    }

    /// The index subscribers will know `seg` by, with one more reference
    /// (the forward slot about to be published in it); `None` when all
    /// [`wire::MAX_FORWARD_SEGMENTS`] indices are in use by frames in flight.
    ///
    /// Segments whose upstream mapping is gone and that no frame in flight
    /// uses are forgotten first; then, if no index is free, one that no frame
    /// in flight uses.
    fn seg_ref(&self, st: &mut State, seg: &Arc<SegFd>) -> Option<u32> {
        let found = st
            .segs
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| Arc::ptr_eq(&s.seg, seg)));
        let i = match found {
            Some(i) => i,
            None => {
                for i in 0..st.segs.len() {
                    if st.segs[i]
                        .as_ref()
                        .is_some_and(|s| s.refs == 0 && !s.seg.is_mapped())
                    {
                        self.forget_seg(st, i);
                    }
                }
                let i = match st.segs.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        let i = st
                            .segs
                            .iter()
                            .position(|s| s.as_ref().is_some_and(|s| s.refs == 0))?;
                        self.forget_seg(st, i);
                        i
                    }
                };
                st.segs[i] = Some(FwdSeg {
                    seg: seg.clone(),
                    sent_to: 0,
                    refs: 0,
                });
                i
            }
        };
        let s = st.segs[i].as_mut()?;
        s.refs += 1;
        Some(i as u32)
    }

    /// Drops a reference taken by [`seg_ref`](Self::seg_ref); a segment
    /// whose upstream mapping is gone is forgotten with its last reference.
    fn seg_unref(&self, st: &mut State, index: u32) {
        let i = index as usize;
        let Some(s) = st.segs.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 && !s.seg.is_mapped() {
            self.forget_seg(st, i);
        }
    }

    /// Frees segment index `i`, telling every subscriber that was sent it
    /// (FORGET). Only for a segment no frame in flight uses.
    fn forget_seg(&self, st: &mut State, i: usize) {
        let Some(s) = st.segs.get_mut(i).and_then(Option::take) else {
            return;
        };
        debug_assert_eq!(s.refs, 0);
        let mut m = s.sent_to;
        while m != 0 {
            let b = m.trailing_zeros() as usize;
            m &= m - 1;
            if let Some(Some(c)) = st.conns.get(b) {
                // A connection that is gone (or lingers) sends nothing more.
                if !c.dead.load(Ordering::Acquire) {
                    lock(&c.out).forget(i as u32);
                    c.wake.notify_one();
                }
            }
        }
    }

    /// Forgets the forwarded segments that no frame in flight uses and that
    /// are no longer mapped in this process (FORGET to the subscribers that
    /// were sent them). Run by [`sweep_task`] whenever a mapping goes away
    /// anywhere in the process: without it, such a segment would stay
    /// announced, and its anchors open (keeping upstream slots reserved),
    /// until the next forward needed its index.
    fn sweep_unmapped(&self) {
        let mut st = lock(&self.state);
        for i in 0..st.segs.len() {
            if st.segs[i]
                .as_ref()
                .is_some_and(|s| s.refs == 0 && !s.seg.is_mapped())
            {
                self.forget_seg(&mut st, i);
            }
        }
    }

    fn conn_is_current(st: &State, conn: &Arc<Conn>) -> bool {
        matches!(st.conns.get(conn.bit as usize), Some(Some(c)) if Arc::ptr_eq(c, conn))
    }

    fn on_release(&self, conn: &Arc<Conn>, index: u32, generation: u64) {
        let mut st = lock(&self.state);
        let bit = 1u64 << conn.bit;
        let current = Self::conn_is_current(&st, conn);
        let valid = current
            && st
                .slots
                .get(index as usize)
                .is_some_and(|s| s.in_flight && s.generation == generation && s.holders & bit != 0);
        if !valid {
            drop(st);
            self.stale_releases.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                pool = %self.name,
                subscriber = conn.bit,
                index,
                generation,
                "shm-pool: stale or duplicate release ignored"
            );
            return;
        }
        let s = &mut st.slots[index as usize];
        s.holders &= !bit;
        if s.holders == 0 {
            self.free_slot(&mut st, index);
        }
        unlock(st);
    }

    /// FORWARDED: `conn` is about to forward the frame it holds in slot
    /// `index`. Ignored unless it holds that slot at that generation.
    fn on_forwarded(&self, conn: &Arc<Conn>, index: u32, generation: u64) {
        let mut st = lock(&self.state);
        let bit = 1u64 << conn.bit;
        let current = Self::conn_is_current(&st, conn);
        match st.slots.get_mut(index as usize) {
            Some(s)
                if current && s.in_flight && s.generation == generation && s.holders & bit != 0 =>
            {
                s.forwarded |= bit;
            }
            _ => tracing::debug!(
                pool = %self.name,
                subscriber = conn.bit,
                index,
                generation,
                "shm-pool: FORWARDED for a slot it does not hold; ignored"
            ),
        }
    }

    fn on_unsubscribe(&self, conn: &Arc<Conn>) {
        let mut st = lock(&self.state);
        if !Self::conn_is_current(&st, conn) || !conn.active.swap(false, Ordering::AcqRel) {
            return;
        }
        st.subscribers -= 1;
        self.set_subscribers(&st);
        let bit = 1u64 << conn.bit;
        for index in 0..st.slots.len() as u32 {
            let s = st.slots[index as usize];
            // Descriptors it has not taken yet come back at once; slots it
            // reads (views still alive) stay held until released or EOF.
            if s.in_flight && s.holders & bit != 0 && conn.claims.reclaim(index, s.generation) {
                st.slots[index as usize].holders &= !bit;
                if st.slots[index as usize].holders == 0 {
                    self.free_slot(&mut st, index);
                }
            }
        }
        // Nothing more goes to it: no descriptors, no segments to map.
        lock(&conn.out)
            .queue
            .retain(|o| matches!(o, Outgoing::Ready(_) | Outgoing::Forget(_)));
        unlock(st);
        self.subs_changed.notify_waiters();
        self.progress.notify_waiters();
    }

    /// Forgets a connection whose socket closed (a killed subscriber ends
    /// here). Descriptors it had not taken come back at once, and so do the
    /// slots it took without forwarding them (its views died with it, or
    /// were all dropped when its socket closed). Slots it took and said it
    /// forwarded (FORWARDED) come back at once too unless some process
    /// still holds its anchor (a process it forwarded them to may be viewing
    /// them): those stay reserved, and this returns true; the caller waits
    /// for the anchor's end of file, then calls
    /// [`release_lingering`](Self::release_lingering). After a protocol
    /// violation (`violated`: the peer may still be alive, with views), every
    /// slot it took waits for the anchor, as if forwarded.
    fn drop_conn(&self, conn: &Arc<Conn>, violated: bool) -> bool {
        let mut st = lock(&self.state);
        if conn.dead.swap(true, Ordering::AcqRel) {
            return conn.lingering.load(Ordering::Acquire);
        }
        if conn.active.swap(false, Ordering::AcqRel) {
            st.subscribers -= 1;
            self.set_subscribers(&st);
        }
        // A closed publisher reuses no slot: nothing to wait for then.
        let anchored = !self.closed.load(Ordering::Acquire)
            && sys::pipe_has_writers(conn.anchor.get_ref().as_fd()).unwrap_or(false);
        let bit = 1u64 << conn.bit;
        let (mut freed, mut kept) = (0, 0);
        for index in 0..st.slots.len() as u32 {
            let s = st.slots[index as usize];
            if !(s.in_flight && s.holders & bit != 0) {
                continue;
            }
            if anchored
                && (violated || s.forwarded & bit != 0)
                && !conn.claims.reclaim(index, s.generation)
            {
                // Taken and forwarded to a process that still holds the
                // anchor (or a violating peer that may still view it).
                kept += 1;
                continue;
            }
            st.slots[index as usize].holders &= !bit;
            if st.slots[index as usize].holders == 0 {
                self.free_slot(&mut st, index);
                freed += 1;
            }
        }
        if kept == 0 {
            Self::forget_conn(&mut st, conn);
        } else {
            conn.lingering.store(true, Ordering::Release);
        }
        unlock(st);
        {
            let mut out = lock(&conn.out);
            out.queue.clear();
            out.wbuf.clear();
            out.pass = None;
        }
        tracing::debug!(pool = %self.name, subscriber = conn.bit, freed, kept, "shm-pool: subscriber gone");
        conn.wake.notify_one();
        self.subs_changed.notify_waiters();
        self.progress.notify_waiters();
        kept > 0
    }

    /// Frees a connection's bit for a new subscriber.
    fn forget_conn(st: &mut State, conn: &Arc<Conn>) {
        if Self::conn_is_current(st, conn) {
            st.conns[conn.bit as usize] = None;
        }
        // The bit may go to a new subscriber, which has been sent no segment.
        let bit = 1u64 << conn.bit;
        for s in st.segs.iter_mut().flatten() {
            s.sent_to &= !bit;
        }
    }

    /// The anchor of a lingering connection reached end of file (or the
    /// publisher closed): the slots it kept come back.
    fn release_lingering(&self, conn: &Arc<Conn>) {
        let mut st = lock(&self.state);
        if !conn.lingering.swap(false, Ordering::AcqRel) {
            return;
        }
        let bit = 1u64 << conn.bit;
        let mut freed = 0;
        for index in 0..st.slots.len() as u32 {
            let s = &mut st.slots[index as usize];
            if s.in_flight && s.holders & bit != 0 {
                s.holders &= !bit;
                if s.holders == 0 {
                    self.free_slot(&mut st, index);
                    freed += 1;
                }
            }
        }
        Self::forget_conn(&mut st, conn);
        unlock(st);
        tracing::debug!(pool = %self.name, subscriber = conn.bit, freed, "shm-pool: anchor released");
        self.subs_changed.notify_waiters();
        self.progress.notify_waiters();
    }

    /// Waits until no process holds `conn`'s anchor any more, or the
    /// publisher closes.
    async fn wait_unanchored(&self, conn: &Conn) {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            // No writer left (or the pipe cannot be polled): done.
            if !sys::pipe_has_writers(conn.anchor.get_ref().as_fd()).unwrap_or(false) {
                return;
            }
            // Woken by the writers' hang-up (or by bytes a peer wrote, or a
            // spurious wake-up): clear the readiness, then poll again above,
            // so that no hang-up is lost between the two.
            tokio::select! {
                r = conn.anchor.readable() => match r {
                    Ok(mut g) => g.clear_ready(),
                    Err(_) => return,
                },
                _ = conn.wake.notified() => {}
            }
        }
    }

    /// Reads what a subscriber sent and acts on it. `via_reactor` reads
    /// through tokio's readiness (the connection task); otherwise one raw
    /// non-blocking read loop (the publisher looking for releases before it
    /// waits or fails).
    fn read_conn(&self, conn: &Arc<Conn>, via_reactor: bool) -> ReadOutcome {
        let mut inp = lock(&conn.inp);
        for _ in 0..64 {
            let r = if via_reactor {
                conn.stream
                    .try_io(Interest::READABLE, || inp.fill(conn.stream.as_fd()))
            } else {
                inp.fill(conn.stream.as_fd())
            };
            match r {
                Ok(0) => return ReadOutcome::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(pool = %self.name, subscriber = conn.bit, "shm-pool: read failed: {e}");
                    return ReadOutcome::Closed;
                }
            }
            loop {
                let msg = match inp
                    .next_message()
                    .and_then(|m| m.map(wire::decode).transpose())
                {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(pool = %self.name, subscriber = conn.bit, "shm-pool: dropping subscriber: {e}");
                        return ReadOutcome::Violated;
                    }
                };
                match msg {
                    Msg::Release { index, generation } => self.on_release(conn, index, generation),
                    Msg::Forwarded { index, generation } => {
                        self.on_forwarded(conn, index, generation)
                    }
                    Msg::Unsubscribe => self.on_unsubscribe(conn),
                    other => {
                        tracing::warn!(pool = %self.name, subscriber = conn.bit, "shm-pool: dropping subscriber: unexpected {other:?}");
                        return ReadOutcome::Violated;
                    }
                }
            }
        }
        ReadOutcome::Open
    }

    /// Writes queued messages until done (`Ok`) or the socket is full
    /// (`WouldBlock`). Raw non-blocking sends: callable from any context.
    fn flush_out(&self, conn: &Conn, out: &mut Out) -> io::Result<()> {
        loop {
            if out.wbuf.is_empty() {
                if out.queue.is_empty() {
                    return Ok(());
                }
                while let Some(o) = out.queue.pop_front() {
                    let msg = match o {
                        Outgoing::Ready(id) => Msg::Ready { id },
                        Outgoing::Desc { desc, header } => Msg::Desc { desc, header },
                        Outgoing::Fwd { desc, header } => Msg::Fwd { desc, header },
                        Outgoing::Forget(index) => Msg::Forget { index },
                        Outgoing::Segment { index, seg } => {
                            let msg = Msg::Segment {
                                index,
                                inode: seg.inode(),
                                len: seg.len(),
                                anchors: seg.anchors().len() as u32,
                            };
                            out.pass = Some(seg);
                            msg
                        }
                    };
                    wire::encode(&msg, &mut out.wbuf);
                    if out.wbuf.len() >= WRITE_BATCH {
                        break;
                    }
                    // A SEGMENT must start a write (its fd travels with the
                    // write's first byte): it waits for the next batch.
                    if matches!(out.queue.front(), Some(Outgoing::Segment { .. })) {
                        break;
                    }
                }
            }
            let r = match &out.pass {
                Some(seg) => {
                    // The segment, then its anchors (see `wire`, "Anchors").
                    let fds: Vec<BorrowedFd<'_>> = std::iter::once(seg.fd())
                        .chain(seg.anchors().iter().map(|a| a.as_fd()))
                        .collect();
                    sys::send_fd_nb(conn.stream.as_fd(), &out.wbuf, &fds)
                }
                None => sys::send_nb(conn.stream.as_fd(), &out.wbuf),
            };
            match r {
                Ok(n) => {
                    out.wbuf.advance(n);
                    // The fd went with the first byte written.
                    out.pass = None;
                    conn.claims.bump_written();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Flushes a connection now if it can; otherwise leaves the rest to its task.
    fn flush_now(&self, conn: &Conn) {
        let r = {
            let mut out = lock(&conn.out);
            self.flush_out(conn, &mut out)
        };
        if r.is_err() {
            conn.wake.notify_one();
        }
    }

    /// True when `conn` holds a forward slot.
    fn holds_forwarded(&self, conn: &Conn) -> bool {
        let bit = 1u64 << conn.bit;
        let st = lock(&self.state);
        st.slots[self.claim_range(Kind::Forward)]
            .iter()
            .any(|s| s.in_flight && s.holders & bit != 0)
    }

    /// True when some subscriber would receive a frame on `topic`.
    fn has_recipient(&self, topic: &str) -> bool {
        lock(&self.state)
            .conns
            .iter()
            .flatten()
            .any(|c| c.active.load(Ordering::Acquire) && topic.starts_with(c.prefix.as_str()))
    }

    /// Looks for releases that already arrived, without waiting.
    fn drain_releases(&self) {
        let conns: Vec<Arc<Conn>> = lock(&self.state)
            .conns
            .iter()
            .flatten()
            .filter(|c| !c.dead.load(Ordering::Acquire))
            .cloned()
            .collect();
        for c in conns {
            let r = self.read_conn(&c, false);
            if r != ReadOutcome::Open {
                // Its task waits for the anchor, if need be.
                self.drop_conn(&c, r == ReadOutcome::Violated);
                c.wake.notify_one();
            }
        }
    }

    /// The claim indices of one kind of slot.
    fn claim_range(&self, kind: Kind) -> std::ops::Range<usize> {
        let n = self.pool_slots() as usize;
        match kind {
            Kind::Pool => 0..n,
            Kind::Forward => n..2 * n,
        }
    }

    /// Under drop-oldest: takes back the oldest slot of `kind` whose
    /// descriptors no subscriber has taken yet. Subscribers that took it (they
    /// are reading it, or hold a view) keep it; those that had not lose that
    /// frame. A forward slot taken back drops its payload (releasing it
    /// upstream).
    fn reclaim_oldest(&self, kind: Kind) -> Option<u32> {
        let range = self.claim_range(kind);
        let mut st = lock(&self.state);
        let mut order: Vec<(u64, u32)> = st
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| s.in_flight && range.contains(i))
            .map(|(i, s)| (s.seq, i as u32))
            .collect();
        order.sort_unstable();
        let mut found = None;
        for (_, index) in order {
            let i = index as usize;
            let generation = st.slots[i].generation;
            let mut h = st.slots[i].holders;
            while h != 0 {
                let b = h.trailing_zeros();
                h &= h - 1;
                let gone = match st.conns.get(b as usize).and_then(Option::as_ref) {
                    Some(c) => {
                        let taken_back = c.claims.reclaim(index, generation);
                        if taken_back {
                            StatCounters::add(&self.stats.dropped, 1);
                            lock(&c.out).remove_desc(index, generation);
                        }
                        taken_back
                    }
                    None => true,
                };
                if gone {
                    st.slots[i].holders &= !(1u64 << b);
                }
            }
            if st.slots[i].holders == 0 {
                st.slots[i].in_flight = false;
                st.in_flight -= 1;
                self.set_queued(&st);
                self.end_forward(&mut st, index);
                found = Some(index);
                break;
            }
        }
        unlock(st);
        found
    }

    fn pop(&self, kind: Kind) -> Option<u32> {
        match kind {
            Kind::Pool => self.pool.pop(),
            Kind::Forward => self.fwd_free.pop(),
        }
    }

    /// A free slot of `kind` under `policy`: the lock-free pop first; when
    /// none is free, releases that already arrived; then the policy.
    /// Cancellation-safe: nothing is taken before the only `.await`.
    async fn acquire(&self, policy: Policy, kind: Kind) -> Result<u32> {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(i) = self.pop(kind) {
                return Ok(i);
            }
            self.drain_releases();
            if let Some(i) = self.pop(kind) {
                return Ok(i);
            }
            match policy {
                Policy::DropOldest => {
                    if let Some(i) = self.reclaim_oldest(kind) {
                        return Ok(i);
                    }
                }
                Policy::Fail => {
                    let detail = match kind {
                        Kind::Pool => format!(
                            "all {} slots of shm-pool `{}` are held by subscribers",
                            self.pool.slots(),
                            self.name
                        ),
                        Kind::Forward => format!(
                            "all {} forward slots of shm-pool `{}` are held by subscribers \
                             (a frame forwarded without a copy holds one, and its upstream slot, \
                             until every subscriber has dropped it)",
                            self.pool.slots(),
                            self.name
                        ),
                    };
                    return Err(Error::Full {
                        option: "slots",
                        detail,
                    });
                }
                Policy::Block => {}
            }
            notified.await;
        }
    }

    /// Hands slot `index` (payload written) to every matching subscriber.
    fn publish(
        &self,
        index: u32,
        len: u64,
        header: Bytes,
        topic: &str,
        seq: u64,
        targets: &mut Vec<Arc<Conn>>,
    ) {
        {
            let mut st = lock(&self.state);
            let State {
                slots,
                conns,
                in_flight,
                ..
            } = &mut *st;
            let s = &mut slots[index as usize];
            s.generation += 1;
            let generation = s.generation;
            self.pool.set_header(index, generation, len);
            let mut mask = 0u64;
            for c in conns.iter().flatten() {
                if c.active.load(Ordering::Acquire) && topic.starts_with(c.prefix.as_str()) {
                    mask |= 1u64 << c.bit;
                    c.claims.offer(index, generation);
                    let desc = Desc {
                        segment: self.pool.segment_id(),
                        index,
                        generation,
                        len,
                        missed: 0,
                    };
                    lock(&c.out).push_desc(Outgoing::Desc {
                        desc,
                        header: header.clone(),
                    });
                    targets.push(c.clone());
                }
            }
            if mask == 0 {
                drop(st);
                self.unreserve(index);
                return;
            }
            s.holders = mask;
            s.forwarded = 0;
            s.seq = seq;
            s.in_flight = true;
            *in_flight += 1;
            self.stats
                .queued
                .store(*in_flight as u64, Ordering::Relaxed);
        }
        for c in targets.drain(..) {
            self.flush_now(&c);
        }
    }

    /// Hands forward slot `index` to every matching subscriber: `payload`
    /// is bytes `offset..` of forwarded segment `seg` (which holds a
    /// reference for this frame, see [`seg_ref`](Self::seg_ref)) and stays
    /// there; the slot keeps it, and so its upstream slot, until every
    /// subscriber released it. A subscriber is sent the segment itself
    /// (SEGMENT with its fd) before its first descriptor in it.
    #[allow(clippy::too_many_arguments)]
    fn publish_fwd(
        &self,
        index: u32,
        seg: u32,
        offset: u64,
        payload: Bytes,
        header: Bytes,
        topic: &str,
        seq: u64,
        targets: &mut Vec<Arc<Conn>>,
    ) {
        let k = (index - self.pool_slots()) as usize;
        let len = payload.len() as u64;
        let mut st = lock(&self.state);
        let State {
            slots,
            fwd,
            segs,
            conns,
            in_flight,
            graveyard,
            ..
        } = &mut *st;
        let mut mask = 0u64;
        if let Some(fs) = segs.get_mut(seg as usize).and_then(Option::as_mut) {
            let s = &mut slots[index as usize];
            s.generation += 1;
            let generation = s.generation;
            for c in conns.iter().flatten() {
                if c.active.load(Ordering::Acquire) && topic.starts_with(c.prefix.as_str()) {
                    let bit = 1u64 << c.bit;
                    mask |= bit;
                    let mut out = lock(&c.out);
                    if fs.sent_to & bit == 0 {
                        fs.sent_to |= bit;
                        out.queue.push_back(Outgoing::Segment {
                            index: seg,
                            seg: fs.seg.clone(),
                        });
                    }
                    c.claims.offer(index, generation);
                    let desc = FwdDesc {
                        segment: seg,
                        index,
                        generation,
                        offset,
                        len,
                        missed: 0,
                    };
                    out.push_desc(Outgoing::Fwd {
                        desc,
                        header: header.clone(),
                    });
                    targets.push(c.clone());
                }
            }
        }
        if mask == 0 {
            // Nobody to send it to after all (or no such segment): let go.
            graveyard.push(payload);
            self.seg_unref(&mut st, seg);
            unlock(st);
            self.unreserve(index);
            return;
        }
        let s = &mut slots[index as usize];
        s.holders = mask;
        s.forwarded = 0;
        s.seq = seq;
        s.in_flight = true;
        *in_flight += 1;
        fwd[k] = FwdSlot {
            payload: Some(payload),
            seg,
        };
        self.set_queued(&st);
        drop(st);
        for c in targets.drain(..) {
            self.flush_now(&c);
        }
    }
}

/// Serves one subscriber: reads its releases, writes what could not be
/// written at once, and forgets it when its socket closes.
///
/// When the publisher is dropped, a subscriber still holding forwarded frames
/// keeps its connection: the publisher's side shuts down for writing (the
/// subscriber sees the end of the stream, `Disconnected`) but goes on reading
/// releases, because each forward slot holds a slot of another pool that must
/// stay reserved until this subscriber's views of it drop.
async fn conn_task(shared: Arc<Shared>, conn: Arc<Conn>) {
    let mut shut = false;
    let mut violated = false;
    loop {
        if conn.dead.load(Ordering::Acquire) {
            break;
        }
        let want_write = lock(&conn.out).has_output();
        if shared.closed.load(Ordering::Acquire) && !want_write {
            if !shared.holds_forwarded(&conn) {
                break;
            }
            if !shut {
                shut = true;
                // Ignored if it fails: the subscriber then learns at EOF.
                let _ = rustix::net::shutdown(conn.stream.as_fd(), rustix::net::Shutdown::Write);
            }
        }
        let interest = if want_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        tokio::select! {
            r = conn.stream.ready(interest) => if r.is_err() { break },
            _ = conn.wake.notified() => {}
        }
        match shared.read_conn(&conn, true) {
            ReadOutcome::Open => {}
            ReadOutcome::Closed => break,
            ReadOutcome::Violated => {
                violated = true;
                break;
            }
        }
        let r = {
            let mut out = lock(&conn.out);
            conn.stream
                .try_io(Interest::WRITABLE, || shared.flush_out(&conn, &mut out))
        };
        match r {
            Ok(()) => shared.progress.notify_waiters(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    if shared.drop_conn(&conn, violated) {
        shared.wait_unanchored(&conn).await;
        shared.release_lingering(&conn);
    }
}

/// Most handshakes a publisher runs at once (each costs a task, a socket and
/// a few KiB until it completes or [`HANDSHAKE_TIMEOUT`] ends it): as many as
/// it can have subscribers, so a legitimate burst of subscribers never meets
/// the limit.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = MAX_SUBSCRIBERS;

/// Refuses a connection without a handshake: one non-blocking REJECT (it
/// fits an empty socket buffer), then the socket closes.
fn refuse_now(stream: &UnixStream, reason: String) {
    let mut b = BytesMut::new();
    wire::encode(&Msg::Reject { reason }, &mut b);
    let _ = sys::send_nb(stream.as_fd(), &b);
}

async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::debug!(pool = %shared.name, "shm-pool: {MAX_PENDING_HANDSHAKES} handshakes in progress; refusing a connection");
                    refuse_now(
                        &stream,
                        format!(
                            "{MAX_PENDING_HANDSHAKES} subscriber handshakes are already in progress \
                             (each completes or times out within {HANDSHAKE_TIMEOUT:?}); try again"
                        ),
                    );
                    continue;
                };
                let sh = shared.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&sh, stream)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(pool = %sh.name, "shm-pool: subscriber refused: {e}")
                        }
                        Err(_) => {
                            tracing::debug!(pool = %sh.name, "shm-pool: subscriber handshake timed out")
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(pool = %shared.name, "shm-pool: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handshake(shared: &Arc<Shared>, stream: UnixStream) -> Result<()> {
    let uid = sys::peer_uid(stream.as_fd()).map_err(|e| Error::io("SO_PEERCRED", e))?;
    let me = sys::euid();
    if uid != me {
        // Owner-only: another user's process gets nothing, not even the geometry.
        return Err(Error::io(
            "shm-pool subscriber",
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("peer uid {uid} is not this publisher's uid {me}"),
            ),
        ));
    }
    let mut rx = RecvBuf::new();
    let prefix = match rx.recv(&stream, "SUBSCRIBE").await? {
        Msg::Subscribe { version, prefix } if version == wire::VERSION => prefix,
        Msg::Subscribe { version, .. } => {
            let reason = format!("protocol version {version} is not {}", wire::VERSION);
            wire::send(&stream, &Msg::Reject { reason }, None, "REJECT").await?;
            return Err(Error::VersionMismatch {
                ours: wire::VERSION,
                theirs: version,
            });
        }
        other => {
            return Err(Error::protocol(
                "shm-pool",
                format!("expected SUBSCRIBE, got {other:?}"),
            ));
        }
    };
    let hello = shared.hello();
    // The subscriber's anchor: it gets the write end, this side keeps only
    // the read end (see `wire`, "Anchors").
    let (anchor, anchor_w) =
        sys::anchor_pipe().map_err(|e| Error::io("creating the subscriber's anchor pipe", e))?;
    wire::send_fds(
        &stream,
        &Msg::Hello(hello),
        &[shared.ro_fd.as_fd(), anchor_w.as_fd()],
        "HELLO",
    )
    .await?;
    drop(anchor_w);
    // SAFETY: `anchor` is an `OwnedFd`: its descriptor stays open, and
    // `as_raw_fd` returns that same descriptor, for as long as the
    // `AsyncFd` owns it.
    let anchor = unsafe { AsyncFd::register_with_interest(anchor, Interest::READABLE) }
        .map_err(|e| Error::io("watching the subscriber's anchor", io::Error::from(e)))?;
    match rx.recv(&stream, "CLAIMS").await? {
        Msg::Claims { len } if len == hello.claims_len => {}
        other => {
            return Err(Error::protocol(
                "shm-pool",
                format!("expected CLAIMS, got {other:?}"),
            ));
        }
    }
    let fd = rx
        .take_fd()
        .ok_or_else(|| Error::protocol("shm-pool", "CLAIMS arrived without its memfd"))?;
    let claims = match ClaimTable::open(&fd, wire::claim_entries(hello.slots)) {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("bad claim table: {e}");
            wire::send(
                &stream,
                &Msg::Reject {
                    reason: reason.clone(),
                },
                None,
                "REJECT",
            )
            .await?;
            return Err(Error::protocol("shm-pool", reason));
        }
    };
    drop(fd);
    // Subscribers send only RELEASE and UNSUBSCRIBE from now on: the small
    // limit stays, the reads get larger.
    rx.open_up(wire::MAX_HANDSHAKE_MESSAGE);
    let conn = {
        let mut st = lock(&shared.state);
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::disconnected("shm-pool", "the publisher is closing"));
        }
        match st.conns.iter().position(Option::is_none) {
            Some(bit) => {
                let conn = Arc::new(Conn {
                    bit: bit as u32,
                    stream,
                    claims,
                    anchor,
                    prefix,
                    active: AtomicBool::new(true),
                    dead: AtomicBool::new(false),
                    lingering: AtomicBool::new(false),
                    out: Mutex::new(Out::default()),
                    inp: Mutex::new(rx),
                    wake: Notify::new(),
                });
                lock(&conn.out).queue.push_back(Outgoing::Ready(bit as u32));
                st.conns[bit] = Some(conn.clone());
                st.subscribers += 1;
                shared.set_subscribers(&st);
                Ok(conn)
            }
            None => Err(stream),
        }
    };
    match conn {
        Ok(conn) => {
            shared.flush_now(&conn);
            shared.subs_changed.notify_waiters();
            tokio::spawn(conn_task(shared.clone(), conn));
            Ok(())
        }
        Err(stream) => {
            let reason = format!(
                "shm-pool `{}` already serves {MAX_SUBSCRIBERS} subscribers",
                shared.name
            );
            wire::send(
                &stream,
                &Msg::Reject {
                    reason: reason.clone(),
                },
                None,
                "REJECT",
            )
            .await?;
            Err(Error::protocol("shm-pool", reason))
        }
    }
}

/// Returns a reserved, unpublished slot (pool or forward) to its free list
/// unless disarmed.
struct SlotGuard {
    shared: Arc<Shared>,
    index: Option<u32>,
}

impl SlotGuard {
    fn disarm(mut self) -> u32 {
        // `index` is always Some until disarmed, and this consumes the guard.
        self.index.take().unwrap_or_default()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(i) = self.index.take() {
            self.shared.unreserve(i);
        }
    }
}

/// A slot lent through [`Publisher::loan`]: the writable slot memory itself.
struct SlotLoan {
    shared: Arc<Shared>,
    index: u32,
    len: usize,
    armed: bool,
}

impl LoanBuffer for SlotLoan {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the loan owns the reserved slot exclusively until it is sent
        // or dropped; `len <= slot_size` was checked when it was made.
        unsafe { self.shared.pool.slot_mut(self.index, self.len) }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: as above; only this loan writes the slot, through `&mut self`.
        unsafe { self.shared.pool.slot(self.index, self.len) }
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

impl Drop for SlotLoan {
    fn drop(&mut self) {
        if self.armed {
            self.shared.unreserve(self.index);
        }
    }
}

/// A read-only view of a reserved slot, used as a loaned frame's payload
/// while its header is checked and encoded, and dropped before publishing.
struct ReservedBytes {
    shared: Arc<Shared>,
    index: u32,
    len: usize,
}

impl AsRef<[u8]> for ReservedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the slot is reserved by a `SlotGuard` that outlives this
        // value (`finish` drops the frame holding it before disarming the
        // guard), and nothing writes the slot meanwhile.
        unsafe { self.shared.pool.slot(self.index, self.len) }
    }
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

    fn check_len(&self, len: usize) -> Result<()> {
        let limit = self.shared.pool.slot_size();
        if len as u64 > limit {
            return Err(Error::PayloadTooLarge {
                len: len as u64,
                limit,
                option: "slot_size",
            });
        }
        Ok(())
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
        StatCounters::add(&self.shared.stats.frames_sent, 1);
        StatCounters::add(&self.shared.stats.bytes_sent, len as u64);
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
        StatCounters::add(&self.shared.stats.frames_sent, 1);
        StatCounters::add(&self.shared.stats.bytes_sent, len as u64);
        self.shared.forwarded.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }
}

#[async_trait]
impl Publisher for ShmPoolPublisher {
    async fn send(&mut self, frame: Frame) -> Result<()> {
        let len = frame.payload.len();
        self.check_len(len)?;
        codec::check_header(&frame)?;
        if !self.shared.has_recipient(&frame.topic) {
            // Nobody would read it: no slot, no copy, but the frame counts
            // as sent and uses its sequence number, as a publish to nobody.
            let mut frame = frame;
            frame.stamp_for_send(self.next_seq, self.trace_name.as_deref())?;
            self.next_seq += 1;
            StatCounters::add(&self.shared.stats.frames_sent, 1);
            StatCounters::add(&self.shared.stats.bytes_sent, len as u64);
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
        self.check_len(len)?;
        let index = self.shared.acquire(self.policy, Kind::Pool).await?;
        Ok(Loan::new(Box::new(SlotLoan {
            shared: self.shared.clone(),
            index,
            len,
            armed: true,
        })))
    }

    async fn send_loan(&mut self, loan: Loan) -> Result<()> {
        let (mut frame, buf) = loan.into_parts();
        let mut slot = match buf.into_any().downcast::<SlotLoan>() {
            Ok(slot) => slot,
            Err(other) => {
                return match other.downcast::<BytesMut>() {
                    Ok(heap) => {
                        frame.payload = heap.freeze();
                        self.send(frame).await
                    }
                    Err(_) => Err(Error::ForeignLoan),
                };
            }
        };
        if !Arc::ptr_eq(&slot.shared, &self.shared) {
            return Err(Error::ForeignLoan);
        }
        slot.armed = false;
        let (index, len) = (slot.index, slot.len);
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
mod tests {
    use super::*;

    fn desc(index: u32, generation: u64) -> Outgoing {
        Outgoing::Desc {
            desc: Desc {
                segment: 1,
                index,
                generation,
                len: 0,
                missed: 0,
            },
            header: Bytes::new(),
        }
    }

    fn fwd(index: u32, generation: u64) -> Outgoing {
        Outgoing::Fwd {
            desc: FwdDesc {
                segment: 0,
                index,
                generation,
                offset: 0,
                len: 0,
                missed: 0,
            },
            header: Bytes::new(),
        }
    }

    fn missed(o: &Outgoing) -> u64 {
        match o {
            Outgoing::Desc { desc, .. } => desc.missed,
            Outgoing::Fwd { desc, .. } => desc.missed,
            _ => 0,
        }
    }

    #[test]
    fn removed_descriptors_carry_their_count_forward() {
        let mut out = Out::default();
        out.queue.push_back(Outgoing::Ready(0));
        out.push_desc(desc(0, 1));
        out.push_desc(desc(1, 1));
        assert!(out.remove_desc(0, 1));
        assert!(!out.remove_desc(0, 1), "already gone");
        assert_eq!(out.queue.len(), 2);
        assert_eq!(missed(&out.queue[1]), 1);
        assert!(out.remove_desc(1, 1));
        assert_eq!(out.carry, 2, "nothing after it: carried to the next frame");
        out.push_desc(desc(0, 2));
        assert_eq!(missed(&out.queue[1]), 2);
        assert_eq!(out.carry, 0);
    }

    #[test]
    fn a_forget_cancels_the_queued_segment_of_its_index() {
        let fd = sys::memfd("forget-test", 4096).unwrap();
        let seg = Arc::new(crate::registry::SegFd::for_tests(fd));
        let segment = |index| Outgoing::Segment {
            index,
            seg: seg.clone(),
        };
        let mut out = Out::default();
        // Index 3 was sent long ago: its FORGET is queued.
        out.forget(3);
        for _ in 0..100 {
            // Reused, then forgotten again, while nothing is written.
            out.queue.push_back(segment(3));
            out.forget(3);
        }
        out.queue.push_back(segment(3));
        out.queue.push_back(segment(5));
        assert_eq!(
            out.queued(),
            3,
            "one FORGET and one SEGMENT of 3, SEGMENT of 5"
        );
        assert!(matches!(out.queue[0], Outgoing::Forget(3)));
        out.forget(5);
        assert_eq!(out.queued(), 2, "a SEGMENT never written needs no FORGET");
    }

    #[test]
    fn forwarded_descriptors_carry_counts_past_other_messages() {
        let mut out = Out::default();
        out.push_desc(fwd(4, 1));
        out.queue.push_back(Outgoing::Forget(3));
        out.push_desc(desc(0, 1));
        out.push_desc(fwd(5, 1));
        assert!(out.remove_desc(4, 1), "a FWD by its claim index");
        assert!(!out.remove_desc(4, 2), "another generation");
        assert_eq!(missed(&out.queue[1]), 1, "skips the FORGET to the DESC");
        assert!(out.remove_desc(0, 1));
        assert_eq!(missed(&out.queue[1]), 2, "then on to the FWD");
        assert_eq!(out.queue.len(), 2);
    }
}

#[cfg(test)]
mod double_release_tests {
    use super::*;
    use transport_core::Transport;

    /// A slot guard or loan dropped for a slot that is already free (a
    /// double release) is refused and counted, with the free lists not full,
    /// and does not panic inside `Drop` (this is a debug build).
    #[tokio::test]
    async fn double_releases_from_drops_are_counted_not_panics() {
        let url = format!(
            "shm-pool://double-{}?slots=3&slot_size=4KiB",
            std::process::id()
        );
        let mut publisher = crate::ShmPoolTransport::new()
            .publish(&Endpoint::parse(&url).unwrap(), &PublishOptions::default())
            .await
            .unwrap();
        let shared = publisher.shared.clone();
        let held = shared.pool.pop().unwrap();
        let fwd_held = shared.fwd_free.pop().unwrap();
        let loan = publisher.loan(10).await.unwrap();
        drop(loan);
        assert_eq!(publisher.free_slots(), 2);
        // A loan and a guard for slots that are already free: both lists have
        // room (one slot of each is still taken).
        let free_pool = shared.pool.pop().unwrap();
        shared.pool.push(free_pool);
        drop(SlotLoan {
            shared: shared.clone(),
            index: free_pool,
            len: 10,
            armed: true,
        });
        let free_fwd = shared.fwd_free.pop().unwrap();
        shared.fwd_free.push(free_fwd);
        drop(SlotGuard {
            shared: shared.clone(),
            index: Some(free_fwd),
        });
        assert_eq!(publisher.double_releases(), 2);
        assert_eq!(publisher.free_slots(), 2, "nothing was freed twice");
        assert_eq!(publisher.free_forward_slots(), 2);
        // Every slot still comes out once.
        shared.pool.push(held);
        shared.fwd_free.push(fwd_held);
        let mut seen: Vec<u32> = std::iter::from_fn(|| shared.pool.pop()).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2]);
        let mut seen: Vec<u32> = std::iter::from_fn(|| shared.fwd_free.pop()).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![3, 4, 5]);
        assert_eq!(publisher.double_releases(), 2);
    }
}
