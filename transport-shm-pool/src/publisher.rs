//! The publishing side: the pool, the accounting of who holds which slot, the
//! rendezvous socket and one connection per subscriber.
//!
//! Locks (all `std::sync::Mutex`, never held across an `.await` or a blocking
//! call) are taken in this order only: a connection's `inp`, then `state`,
//! then a connection's `out`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use transport_core::{
    Endpoint, Error, Frame, Loan, LoanBuffer, Policy, PublishOptions, Publisher, Result,
    StatCounters, Stats, async_trait, codec,
};

use crate::config::{self, Config};
use crate::pool::SlotPool;
use crate::sys;
use crate::wire::{self, ClaimTable, Desc, Hello, Msg, RecvBuf};

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
}

struct State {
    slots: Vec<SlotAcct>,
    conns: Vec<Option<Arc<Conn>>>,
    in_flight: usize,
    subscribers: usize,
}

enum Outgoing {
    Ready(u32),
    Desc { desc: Desc, header: Bytes },
}

#[derive(Default)]
struct Out {
    queue: VecDeque<Outgoing>,
    /// Serialized, not yet (fully) written.
    wbuf: BytesMut,
    /// Frames dropped for this subscriber and not yet reported in a descriptor.
    carry: u64,
}

impl Out {
    fn has_output(&self) -> bool {
        !self.queue.is_empty() || !self.wbuf.is_empty()
    }

    fn push_desc(&mut self, mut desc: Desc, header: Bytes) {
        desc.missed = desc.missed.saturating_add(std::mem::take(&mut self.carry));
        self.queue.push_back(Outgoing::Desc { desc, header });
    }

    /// Removes a queued (unsent) descriptor, carrying its drop count to the
    /// next one. True if it was still queued.
    fn remove_desc(&mut self, index: u32, generation: u64) -> bool {
        let Some(pos) = self.queue.iter().position(|o| {
            matches!(o, Outgoing::Desc { desc, .. } if desc.index == index && desc.generation == generation)
        }) else {
            return false;
        };
        let missed = match self.queue.remove(pos) {
            Some(Outgoing::Desc { desc, .. }) => desc.missed.saturating_add(1),
            _ => 1,
        };
        match self.queue.iter_mut().skip(pos).find_map(|o| match o {
            Outgoing::Desc { desc, .. } => Some(desc),
            Outgoing::Ready(_) => None,
        }) {
            Some(next) => next.missed = next.missed.saturating_add(missed),
            None => self.carry = self.carry.saturating_add(missed),
        }
        true
    }
}

/// One subscriber's connection.
struct Conn {
    bit: u32,
    stream: UnixStream,
    claims: ClaimTable,
    prefix: String,
    /// Receives frames (false after UNSUBSCRIBE or death).
    active: AtomicBool,
    dead: AtomicBool,
    out: Mutex<Out>,
    inp: Mutex<RecvBuf>,
    wake: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadOutcome {
    Open,
    Closed,
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
    closed: AtomicBool,
}

impl Shared {
    fn hello(&self) -> Hello {
        let g = self.pool.geometry();
        Hello {
            version: wire::VERSION,
            flags: if self.policy == Policy::DropOldest {
                wire::HELLO_RECLAIMS
            } else {
                0
            },
            segment: self.pool.segment_id(),
            slots: g.slots,
            slot_size: g.slot_size,
            stride: g.stride,
            data_offset: g.data_offset,
            segment_len: g.len,
            claims_len: wire::claims_len(g.slots),
        }
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

    /// Marks a published slot free and returns it to the free list.
    fn free_slot(&self, st: &mut State, index: u32) {
        let s = &mut st.slots[index as usize];
        debug_assert!(s.in_flight && s.holders == 0);
        s.in_flight = false;
        st.in_flight -= 1;
        self.set_queued(st);
        self.pool.push(index);
        self.released.notify_one();
    }

    /// Returns an unpublished slot (a dropped loan, a failed send).
    fn unreserve(&self, index: u32) {
        self.pool.push(index);
        self.released.notify_one();
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
        lock(&conn.out)
            .queue
            .retain(|o| !matches!(o, Outgoing::Desc { .. }));
        drop(st);
        self.subs_changed.notify_waiters();
        self.progress.notify_waiters();
    }

    /// Forgets a connection: its holds are cleared at once (a killed
    /// subscriber gives its slots back here).
    fn drop_conn(&self, conn: &Arc<Conn>) {
        let mut st = lock(&self.state);
        if conn.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        if Self::conn_is_current(&st, conn) {
            st.conns[conn.bit as usize] = None;
        }
        if conn.active.swap(false, Ordering::AcqRel) {
            st.subscribers -= 1;
            self.set_subscribers(&st);
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
        drop(st);
        {
            let mut out = lock(&conn.out);
            out.queue.clear();
            out.wbuf.clear();
        }
        tracing::debug!(pool = %self.name, subscriber = conn.bit, freed, "shm-pool: subscriber gone");
        conn.wake.notify_one();
        self.subs_changed.notify_waiters();
        self.progress.notify_waiters();
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
                        return ReadOutcome::Closed;
                    }
                };
                match msg {
                    Msg::Release { index, generation } => self.on_release(conn, index, generation),
                    Msg::Unsubscribe => self.on_unsubscribe(conn),
                    other => {
                        tracing::warn!(pool = %self.name, subscriber = conn.bit, "shm-pool: dropping subscriber: unexpected {other:?}");
                        return ReadOutcome::Closed;
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
                    };
                    wire::encode(&msg, &mut out.wbuf);
                    if out.wbuf.len() >= WRITE_BATCH {
                        break;
                    }
                }
            }
            match sys::send_nb(conn.stream.as_fd(), &out.wbuf) {
                Ok(n) => {
                    out.wbuf.advance(n);
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
        let conns: Vec<Arc<Conn>> = lock(&self.state).conns.iter().flatten().cloned().collect();
        for c in conns {
            if self.read_conn(&c, false) == ReadOutcome::Closed {
                self.drop_conn(&c);
            }
        }
    }

    /// Under drop-oldest: takes back the oldest slot whose descriptors no
    /// subscriber has taken yet. Subscribers that took it (they are reading
    /// it, or hold a view) keep it; those that had not lose that frame.
    fn reclaim_oldest(&self) -> Option<u32> {
        let mut st = lock(&self.state);
        let mut order: Vec<(u64, u32)> = st
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_flight)
            .map(|(i, s)| (s.seq, i as u32))
            .collect();
        order.sort_unstable();
        let State {
            slots,
            conns,
            in_flight,
            ..
        } = &mut *st;
        for (_, index) in order {
            let s = &mut slots[index as usize];
            let mut h = s.holders;
            while h != 0 {
                let b = h.trailing_zeros();
                h &= h - 1;
                match conns.get(b as usize).and_then(Option::as_ref) {
                    Some(c) => {
                        if c.claims.reclaim(index, s.generation) {
                            s.holders &= !(1u64 << b);
                            StatCounters::add(&self.stats.dropped, 1);
                            lock(&c.out).remove_desc(index, s.generation);
                        }
                    }
                    None => s.holders &= !(1u64 << b),
                }
            }
            if s.holders == 0 {
                s.in_flight = false;
                *in_flight -= 1;
                self.stats
                    .queued
                    .store(*in_flight as u64, Ordering::Relaxed);
                return Some(index);
            }
        }
        None
    }

    /// A free slot under `policy`: the lock-free pop first; when the pool is
    /// empty, releases that already arrived; then the policy. Cancellation-safe:
    /// nothing is taken before the only `.await`.
    async fn acquire(&self, policy: Policy) -> Result<u32> {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(i) = self.pool.pop() {
                return Ok(i);
            }
            self.drain_releases();
            if let Some(i) = self.pool.pop() {
                return Ok(i);
            }
            match policy {
                Policy::DropOldest => {
                    if let Some(i) = self.reclaim_oldest() {
                        return Ok(i);
                    }
                }
                Policy::Fail => {
                    return Err(Error::Full {
                        option: "slots",
                        detail: format!(
                            "all {} slots of shm-pool `{}` are held by subscribers",
                            self.pool.slots(),
                            self.name
                        ),
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
                    lock(&c.out).push_desc(desc, header.clone());
                    targets.push(c.clone());
                }
            }
            if mask == 0 {
                drop(st);
                self.unreserve(index);
                return;
            }
            s.holders = mask;
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
}

/// Serves one subscriber: reads its releases, writes what could not be
/// written at once, and forgets it when its socket closes.
async fn conn_task(shared: Arc<Shared>, conn: Arc<Conn>) {
    loop {
        if conn.dead.load(Ordering::Acquire) {
            break;
        }
        let want_write = lock(&conn.out).has_output();
        if shared.closed.load(Ordering::Acquire) && !want_write {
            break;
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
        if shared.read_conn(&conn, true) == ReadOutcome::Closed {
            break;
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
    shared.drop_conn(&conn);
}

async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let sh = shared.clone();
                tokio::spawn(async move {
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
            return Err(Error::Protocol(format!(
                "expected SUBSCRIBE, got {other:?}"
            )));
        }
    };
    let hello = shared.hello();
    wire::send(
        &stream,
        &Msg::Hello(hello),
        Some(shared.ro_fd.as_fd()),
        "HELLO",
    )
    .await?;
    match rx.recv(&stream, "CLAIMS").await? {
        Msg::Claims { len } if len == hello.claims_len => {}
        other => return Err(Error::Protocol(format!("expected CLAIMS, got {other:?}"))),
    }
    let fd = rx
        .take_fd()
        .ok_or_else(|| Error::Protocol("CLAIMS arrived without its memfd".into()))?;
    let claims = match ClaimTable::open(&fd, hello.slots) {
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
            return Err(Error::Protocol(reason));
        }
    };
    drop(fd);
    let conn = {
        let mut st = lock(&shared.state);
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::Disconnected("the publisher is closing".into()));
        }
        match st.conns.iter().position(Option::is_none) {
            Some(bit) => {
                let conn = Arc::new(Conn {
                    bit: bit as u32,
                    stream,
                    claims,
                    prefix,
                    active: AtomicBool::new(true),
                    dead: AtomicBool::new(false),
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
            Err(Error::Protocol(reason))
        }
    }
}

/// Returns a reserved, unpublished slot to the pool unless disarmed.
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
/// a small descriptor goes to each subscriber. See the crate docs for how slots
/// come back.
pub struct ShmPoolPublisher {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    policy: Policy,
    trace_name: Option<String>,
    next_seq: u64,
    targets: Vec<Arc<Conn>>,
    accept: JoinHandle<()>,
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
        let shared = Arc::new(Shared {
            name: cfg.name,
            pool,
            ro_fd,
            policy,
            state: Mutex::new(State {
                slots: vec![SlotAcct::default(); slots],
                conns: vec![None; MAX_SUBSCRIBERS],
                in_flight: 0,
                subscribers: 0,
            }),
            released: Notify::new(),
            subs_changed: Notify::new(),
            progress: Notify::new(),
            stats: StatCounters::default(),
            stale_releases: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(ShmPoolPublisher {
            shared,
            endpoint: endpoint.clone(),
            policy,
            trace_name: opts.trace_name.clone(),
            next_seq: 0,
            targets: Vec::new(),
            accept,
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
        let index = self.shared.acquire(self.policy).await?;
        let guard = SlotGuard {
            shared: self.shared.clone(),
            index: Some(index),
        };
        // SAFETY: the slot was just popped from the free list: no subscriber
        // holds it and nothing else in this process refers to it; len <= slot_size.
        let dst = unsafe { self.shared.pool.slot_mut(index, len) };
        // The copy into the slot is part of the hand-off: stamp before it.
        let sent_at = transport_core::monotonic_ns();
        dst.copy_from_slice(&frame.payload);
        self.finish(guard, frame, len, sent_at)
    }

    async fn loan(&mut self, len: usize) -> Result<Loan> {
        self.check_len(len)?;
        let index = self.shared.acquire(self.policy).await?;
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
                if c.dead.load(Ordering::Acquire) {
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
        for c in lock(&self.shared.state).conns.iter().flatten() {
            c.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(index: u32, generation: u64) -> Desc {
        Desc {
            segment: 1,
            index,
            generation,
            len: 0,
            missed: 0,
        }
    }

    fn missed(o: &Outgoing) -> u64 {
        match o {
            Outgoing::Desc { desc, .. } => desc.missed,
            Outgoing::Ready(_) => 0,
        }
    }

    #[test]
    fn removed_descriptors_carry_their_count_forward() {
        let mut out = Out::default();
        out.queue.push_back(Outgoing::Ready(0));
        out.push_desc(desc(0, 1), Bytes::new());
        out.push_desc(desc(1, 1), Bytes::new());
        assert!(out.remove_desc(0, 1));
        assert!(!out.remove_desc(0, 1), "already gone");
        assert_eq!(out.queue.len(), 2);
        assert_eq!(missed(&out.queue[1]), 1);
        assert!(out.remove_desc(1, 1));
        assert_eq!(out.carry, 2, "nothing after it: carried to the next frame");
        out.push_desc(desc(0, 2), Bytes::new());
        assert_eq!(missed(&out.queue[1]), 2);
        assert_eq!(out.carry, 0);
    }
}
