//! The publisher: owns the ring, appends records, lends slices of it, and
//! keeps the accounting of where each reader stands (reading, never writing,
//! the readers' own pages).

use std::any::Any;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use transport_core::contract::{PayloadLimit, SubscriberWatch};
use transport_core::{
    Endpoint, Error, Frame, Loan, LoanBuffer, Policy, Publisher, Result, StatCounters, Stats,
    codec, monotonic_ns,
};
use transport_shm_support::loan::{Returned, take_back};

use crate::layout::{
    self, KIND_FRAME, KIND_SKIP, MIN_ENVELOPE, PageMap, READER_MAGIC, RECORD_HEADER, RecordHeader,
    Ring,
};
use crate::proto::{self, CLIENT_HELLO_LEN, ServerHello};
use crate::{Config, sys};

mod accept;
use accept::{accept_loop, bind};

static NEXT_PUBLISHER: AtomicU64 = AtomicU64::new(1);

/// One connected subscriber, as the publisher sees it.
#[derive(Debug)]
struct ReaderSlot {
    /// The subscriber's page, mapped read-only.
    page: PageMap,
    /// Where it started: a cursor below this is the page's initial zero.
    floor: u64,
    stream: Arc<UnixStream>,
    /// The last `park` value answered with a wake-up byte.
    woken: AtomicU64,
    task: Mutex<Option<AbortHandle>>,
}

impl ReaderSlot {
    /// The reader's cursor, clamped to `[floor, head]`: the page is written
    /// by the subscriber, so a value outside that range (a buggy or hostile
    /// peer) is never believed.
    fn cursor(&self, head: u64) -> u64 {
        let c = self.page.get().cursor.0.load(Ordering::Relaxed);
        // Pairs with the reader's `cursor.store(Release)` (subscriber.rs,
        // `publish_cursor`): its copies out of the ring happen before we
        // reuse the space it released. (Relaxed load + acquire fence: the
        // page is mapped read-only here.)
        fence(Ordering::Acquire);
        c.max(self.floor).min(head)
    }

    /// Sends a wake-up byte if the reader parked since the last one.
    /// Called with the membership lock held, by the one writer.
    fn wake_if_parked(&self) {
        let parked = self.page.get().park.0.load(Ordering::Relaxed);
        if parked != self.woken.load(Ordering::Relaxed) {
            self.woken.store(parked, Ordering::Relaxed);
            // WouldBlock means bytes are already waiting for it: it will wake.
            let _ = self.stream.try_write(&[proto::WAKE]);
        }
    }

    fn hang_up(&self) {
        sys::shutdown(self.stream.as_fd());
        if let Some(task) = transport_core::sync::lock(&self.task).take() {
            task.abort();
        }
    }
}

/// State shared with the accept task and the per-subscriber tasks.
#[derive(Debug)]
struct Shared {
    cfg: Config,
    /// Read-only fd of the ring, handed to each subscriber.
    ring_fd: OwnedFd,
    readers: Mutex<Vec<Arc<ReaderSlot>>>,
    /// Committed head and next sequence number, for joining subscribers;
    /// written by `commit` with `readers` locked.
    head: AtomicU64,
    next_seq: AtomicU64,
    stats: Arc<StatCounters>,
    /// Subscribers now, for `wait_for_subscribers` (mirrored into `stats`).
    members: SubscriberWatch,
    /// Fires when a subscriber reports progress or leaves.
    space: Notify,
    closed: AtomicBool,
}

impl Shared {
    fn readers(&self) -> MutexGuard<'_, Vec<Arc<ReaderSlot>>> {
        transport_core::sync::lock(&self.readers)
    }

    fn remove(&self, slot: &Arc<ReaderSlot>) {
        let mut readers = self.readers();
        let before = readers.len();
        readers.retain(|r| !Arc::ptr_eq(r, slot));
        if readers.len() != before {
            self.members.left();
        }
        drop(readers);
        self.space.notify_waiters();
    }
}

/// A live record of the ring, oldest first.
#[derive(Debug, Clone, Copy)]
struct Rec {
    pos: u64,
    frame: bool,
}

/// The publisher's side of a ring loan.
#[derive(Debug)]
struct LoanState {
    token: Arc<LoanToken>,
    pos: u64,
    len: u64,
    /// End of the space reserved for it (payload and a minimal envelope).
    reserved_end: u64,
    /// A `send` went ahead of it: its space is now a skip record that must
    /// not be overwritten until the loan comes back.
    displaced: bool,
}

#[derive(Debug, Default)]
struct LoanToken {
    dropped: AtomicBool,
}

/// A publisher on `shm-ring://NAME`: the one writer of a ring.
///
/// Created by [`crate::ShmRingTransport`]; see the crate docs for options.
#[derive(Debug)]
pub struct ShmRingPublisher {
    id: u64,
    ring: Arc<Ring>,
    shared: Arc<Shared>,
    endpoint: Endpoint,
    policy: Policy,
    trace_name: Option<String>,
    seq: u64,
    /// End of the last committed record.
    head: u64,
    /// Oldest intact position (mirrors `Control::horizon`).
    horizon: u64,
    /// Live records in `[horizon, head)`.
    records: VecDeque<Rec>,
    loan: Option<LoanState>,
    env: BytesMut,
    accept: JoinHandle<()>,
}

pub(crate) async fn create(
    endpoint: &Endpoint,
    cfg: Config,
    policy: Policy,
    trace_name: Option<String>,
) -> Result<ShmRingPublisher> {
    let url = format!("shm-ring://{}", cfg.name);
    let std_listener = bind(&cfg, endpoint, &url).await?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("making the rendezvous socket non-blocking", e))?;
    let listener = UnixListener::from_std(std_listener)
        .map_err(|e| Error::io("registering the rendezvous socket with tokio", e))?;
    let (ring, ring_fd) = Ring::create(cfg.capacity).map_err(|e| {
        Error::io(
            format!(
                "creating a shared-memory ring of {} for {url}",
                transport_core::fmt_size(cfg.capacity)
            ),
            e,
        )
    })?;
    let stats = Arc::new(StatCounters::default());
    let shared = Arc::new(Shared {
        cfg,
        ring_fd,
        readers: Mutex::new(Vec::new()),
        head: AtomicU64::new(0),
        next_seq: AtomicU64::new(0),
        stats: stats.clone(),
        members: SubscriberWatch::new(stats),
        space: Notify::new(),
        closed: AtomicBool::new(false),
    });
    let accept = tokio::spawn(accept_loop(listener, shared.clone()));
    Ok(ShmRingPublisher {
        id: NEXT_PUBLISHER.fetch_add(1, Ordering::Relaxed),
        ring: Arc::new(ring),
        shared,
        endpoint: endpoint.clone(),
        policy,
        trace_name,
        seq: 0,
        head: 0,
        horizon: 0,
        records: VecDeque::new(),
        loan: None,
        env: BytesMut::with_capacity(256),
        accept,
    })
}

/// A writable slice of the ring lent by [`ShmRingPublisher::loan`]
/// (the buffer behind a [`Loan`] on this backend).
///
/// Its initial contents are whatever the ring held there before: fill all of
/// it. Dropping it (with its `Loan`) gives the space back.
#[derive(Debug)]
pub struct RingLoan {
    ring: Arc<Ring>,
    publisher: u64,
    pos: u64,
    len: usize,
    token: Arc<LoanToken>,
}

impl RingLoan {
    fn payload_ptr(&self) -> *mut u8 {
        self.ring.ptr(self.pos + RECORD_HEADER)
    }
}

impl LoanBuffer for RingLoan {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the publisher reserved `[pos + 64, pos + 64 + len)` for this
        // loan alone. It writes nothing there (it only writes the record
        // header before it, or records after it) and never reuses the space
        // until the loan comes back or its token says it was dropped. The
        // mirrored mapping makes the range contiguous, and `self.ring` keeps
        // it mapped. Subscribers only read it, through their own mappings.
        unsafe { std::slice::from_raw_parts_mut(self.payload_ptr(), self.len) }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`; `&self` excludes a live `&mut`.
        unsafe { std::slice::from_raw_parts(self.payload_ptr(), self.len) }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Drop for RingLoan {
    fn drop(&mut self) {
        // Pairs with the `Acquire` load in `reap_loan`: our writes into the
        // slice happen before the publisher reuses it.
        self.token.dropped.store(true, Ordering::Release);
    }
}

/// A read-only `Bytes` over a range of the publisher's own ring, used while
/// sending a loan (for the envelope's length and layout checks, and as the
/// copy source of a displaced loan). Never escapes `send_loan`.
struct RingBytes {
    ring: Arc<Ring>,
    pos: u64,
    len: usize,
}

impl AsRef<[u8]> for RingBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range belongs to a loan that was handed back to
        // `send_loan`; nothing writes it until this value is dropped, which
        // happens before the space is released. Mapped while `self.ring` lives.
        unsafe { std::slice::from_raw_parts(self.ring.ptr(self.pos), self.len) }
    }
}

impl ShmRingPublisher {
    fn capacity(&self) -> u64 {
        self.ring.capacity()
    }

    /// Forgets a ring loan that was dropped unsent.
    fn reap_loan(&mut self) {
        // Acquire pairs with the Release in `RingLoan::drop`.
        if self
            .loan
            .as_ref()
            .is_some_and(|l| l.token.dropped.load(Ordering::Acquire))
        {
            self.loan = None;
        }
    }

    /// The position below which a displaced loan forbids overwriting.
    fn pin(&self) -> Option<u64> {
        self.loan.as_ref().filter(|l| l.displaced).map(|l| l.pos)
    }

    /// The horizon the ring needs before a record ending at `end` can be
    /// written, and the option that imposes it.
    fn required_horizon(&self, end: u64) -> (u64, &'static str) {
        let lower = end.saturating_sub(self.capacity());
        let n = self.records.len();
        // The new record counts too: keep at most `max_records - 1` old ones.
        let keep = usize::try_from(self.shared.cfg.max_records - 1).unwrap_or(usize::MAX);
        let by_count = n.saturating_sub(keep);
        let by_bytes = self.records.partition_point(|r| r.pos < lower);
        let first = by_count.max(by_bytes);
        let required = self.records.get(first).map_or(self.head, |r| r.pos);
        let option = if by_bytes >= by_count {
            "capacity"
        } else {
            "max_records"
        };
        (required, option)
    }

    /// The first connected reader whose cursor is below `pos`, with its cursor.
    fn first_reader_below(&self, pos: u64) -> Option<u64> {
        self.shared
            .readers()
            .iter()
            .map(|r| r.cursor(self.head))
            .find(|&c| c < pos)
    }

    /// Frames in `[from, to)`.
    fn frames_between(&self, from: u64, to: u64) -> u64 {
        let a = self.records.partition_point(|r| r.pos < from);
        let b = self.records.partition_point(|r| r.pos < to);
        self.records.range(a..b.max(a)).filter(|r| r.frame).count() as u64
    }

    /// Makes `[head, end)` writable under the policy: waits for readers
    /// (block), fails (fail) or laps them (drop-oldest); then raises the
    /// horizon over everything the new record will overwrite.
    async fn make_room(&mut self, end: u64) -> Result<()> {
        let (required, option) = self.required_horizon(end);
        if required <= self.horizon {
            return Ok(());
        }
        if let Some(pin) = self.pin().filter(|&p| required > p) {
            return Err(Error::Full {
                option,
                detail: format!(
                    "an unsent loan holds {} at position {pin} of the ring; send or drop it first",
                    transport_core::fmt_size(self.loan.as_ref().map_or(0, |l| l.len))
                ),
            });
        }
        match self.policy {
            Policy::Block => self.wait_readers(required).await,
            Policy::Fail => {
                if let Some(c) = self.first_reader_below(required) {
                    return Err(Error::Full {
                        option,
                        detail: format!(
                            "a subscriber has {} frame(s) unread in the ring of {} / {} records",
                            self.frames_between(c, self.head),
                            transport_core::fmt_size(self.capacity()),
                            self.shared.cfg.max_records
                        ),
                    });
                }
            }
            Policy::DropOldest => {
                let mut dropped = 0;
                for r in self.shared.readers().iter() {
                    let c = r.cursor(self.head).max(self.horizon);
                    if c < required {
                        dropped += self.frames_between(c, required);
                    }
                }
                StatCounters::add(&self.shared.stats.dropped, dropped);
            }
        }
        while self.records.front().is_some_and(|r| r.pos < required) {
            self.records.pop_front();
        }
        self.horizon = required;
        self.ring
            .control()
            .horizon
            .0
            .store(required, Ordering::Relaxed);
        // Seqlock, writer side: pairs with the reader's `fence(Acquire)` after
        // its copy (subscriber.rs, `read_next`). A reader whose copy saw any
        // byte we write from here on also sees the raised horizon, and throws
        // the copy away. `store_fence` is `fence(Release)` plus, on x86, an
        // `sfence`: the payload may be written with non-temporal stores (our
        // streaming copy, or whatever fills a loan), which a release fence
        // alone does not keep behind the horizon store.
        crate::copy::store_fence();
        Ok(())
    }

    /// Waits until every reader's cursor is at least `pos`.
    async fn wait_readers(&self, pos: u64) {
        let ctl = self.ring.control();
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            ctl.writer_wait.0.store(pos, Ordering::Relaxed);
            // Dekker with the reader's `cursor.store; fence(SeqCst);
            // writer_wait.load` (subscriber.rs, `publish_cursor`): either we
            // see its new cursor below, or it sees `writer_wait` and nudges us.
            fence(Ordering::SeqCst);
            if self.first_reader_below(pos).is_none() {
                break;
            }
            notified.await;
        }
        ctl.writer_wait.0.store(0, Ordering::Relaxed);
    }

    /// Encodes `frame`'s envelope into `self.env`; returns its length.
    fn encode_env(&mut self, frame: &Frame) -> Result<u64> {
        self.env.clear();
        codec::encode_header(frame, &mut self.env)?;
        Ok(self.env.len() as u64)
    }

    /// The record length for a payload and envelope, or why it cannot fit.
    fn record_len(&self, payload: u64, env: u64) -> Result<u64> {
        let limit = self
            .capacity()
            .saturating_sub(RECORD_HEADER + layout::pad(env).unwrap_or(u64::MAX));
        match layout::record_len(payload, env) {
            Some(n) if n <= self.capacity() => Ok(n),
            _ => Err(Error::PayloadTooLarge {
                len: payload,
                limit,
                option: "capacity",
            }),
        }
    }

    /// Writes envelope and header of the record at `pos`, whose payload is in place.
    fn finish_record(&mut self, pos: u64, payload_len: u64, rec_len: u64, seq: u64) {
        let env_pos = pos + RECORD_HEADER + layout::pad(payload_len).unwrap_or(0);
        // SAFETY: `[pos, pos + rec_len)` was made room for by `make_room` (or
        // reserved for the loan being sent) and the envelope lies inside it,
        // after the payload.
        unsafe { self.ring.copy_in(env_pos, &self.env) };
        let header = RecordHeader {
            stamp: pos,
            rec_len,
            payload_len,
            env_len: self.env.len() as u32,
            kind: KIND_FRAME,
            seq,
        };
        self.write_header(&header);
        self.commit(pos, rec_len, true, Some(seq));
    }

    fn write_header(&self, h: &RecordHeader) {
        let bytes = h.encode();
        // SAFETY: the header is the first 64 bytes of a record the caller owns
        // (see `finish_record` / `displace_loan`). The stamp word is skipped:
        // it is only ever written atomically, below.
        unsafe { self.ring.copy_in(h.stamp + 8, &bytes[8..]) };
        // Made visible by the `Release` store of `head` in `commit`.
        self.ring.stamp(h.stamp).store(h.stamp, Ordering::Relaxed);
    }

    /// Publishes the record at `pos` and wakes parked readers.
    fn commit(&mut self, pos: u64, rec_len: u64, frame: bool, seq: Option<u64>) {
        let end = pos + rec_len;
        let ctl = self.ring.control();
        {
            let readers = self.shared.readers();
            // Pairs with the reader's `head.load(Relaxed); fence(Acquire)`
            // (subscriber.rs, `read_next`): the record's bytes are visible to
            // any reader that sees the new head.
            ctl.head.0.store(end, Ordering::Release);
            self.shared.head.store(end, Ordering::Relaxed);
            if let Some(s) = seq {
                self.shared.next_seq.store(s + 1, Ordering::Relaxed);
            }
            // Dekker with the reader's `park.store; fence(SeqCst); head.load`
            // (subscriber.rs, `park`): either it sees the new head, or we see
            // its park and send a byte.
            fence(Ordering::SeqCst);
            for r in readers.iter() {
                r.wake_if_parked();
            }
        }
        self.head = end;
        self.records.push_back(Rec { pos, frame });
    }

    /// Turns the outstanding ring loan's reservation into a skip record so
    /// that records can be committed after it; the loan keeps its space.
    fn displace_loan(&mut self) {
        let Some(l) = self.loan.as_mut() else { return };
        if l.displaced {
            return;
        }
        l.displaced = true;
        let (pos, len) = (l.pos, l.reserved_end - l.pos);
        let header = RecordHeader {
            stamp: pos,
            rec_len: len,
            payload_len: 0,
            env_len: 0,
            kind: KIND_SKIP,
            seq: 0,
        };
        self.write_header(&header);
        self.commit(pos, len, false, None);
    }

    fn restamp(&self, frame: &mut Frame) {
        let now = monotonic_ns();
        frame.timestamp_ns = now;
        if self.trace_name.is_some()
            && let Some(h) = frame.trace.last_mut()
        {
            h.sent_ns = now;
        }
    }

    fn count_sent(&mut self, len: u64) {
        self.seq += 1;
        StatCounters::add(&self.shared.stats.frames_sent, 1);
        StatCounters::add(&self.shared.stats.bytes_sent, len);
    }

    /// Copies `frame` into a new record at the head.
    async fn send_copy(&mut self, mut frame: Frame) -> Result<()> {
        codec::check_header(&frame)?;
        let len = frame.payload.len() as u64;
        frame.stamp_for_send(self.seq, self.trace_name.as_deref())?;
        let env = self.encode_env(&frame)?;
        let rec_len = self.record_len(len, env)?;
        // A ring loan still out keeps its space; this record goes after it.
        self.displace_loan();
        let pos = self.head;
        self.make_room(pos + rec_len).await?;
        // Stamped once room is made, so the timestamp is when it goes out.
        self.restamp(&mut frame);
        self.encode_env(&frame)?;
        // SAFETY: `make_room` made `[pos, pos + rec_len)` ours; the payload
        // goes right after the header. `frame.payload` is either foreign
        // memory or (for a displaced loan) a range of this ring that
        // `make_room` kept out of the new record's way.
        unsafe { self.ring.copy_in(pos + RECORD_HEADER, &frame.payload) };
        let seq = self.seq;
        self.finish_record(pos, len, rec_len, seq);
        self.count_sent(len);
        Ok(())
    }

    /// Commits a ring loan in place.
    async fn send_in_place(&mut self, mut frame: Frame, pos: u64, reserved_end: u64) -> Result<()> {
        codec::check_header(&frame)?;
        let len = frame.payload.len() as u64;
        frame.stamp_for_send(self.seq, self.trace_name.as_deref())?;
        let env = self.encode_env(&frame)?;
        let rec_len = self.record_len(len, env)?;
        if pos + rec_len > reserved_end {
            // A larger envelope than reserved for (topic, metadata, trace).
            self.make_room(pos + rec_len).await?;
        }
        self.restamp(&mut frame);
        self.encode_env(&frame)?;
        let seq = self.seq;
        self.finish_record(pos, len, rec_len, seq);
        self.count_sent(len);
        Ok(())
    }

    /// Waits until every connected subscriber has read everything committed
    /// so far (or left). Unlike [`Publisher::flush`], which returns as soon
    /// as frames are in shared memory (where subscribers can read them even
    /// after this publisher is gone), this waits for the readers themselves.
    pub async fn wait_consumed(&mut self, timeout: Duration) -> Result<()> {
        let head = self.head;
        tokio::time::timeout(timeout, self.wait_readers(head))
            .await
            .map_err(|_| Error::timeout(timeout, "for every subscriber to read what was sent"))
    }

    /// Frames each subscriber has not read yet, summed.
    fn queued(&self) -> u64 {
        self.shared
            .readers()
            .iter()
            .map(|r| {
                let c = r.cursor(self.head).max(self.horizon);
                self.frames_between(c, self.head)
            })
            .sum()
    }
}

#[async_trait]
impl Publisher for ShmRingPublisher {
    async fn send(&mut self, frame: Frame) -> Result<()> {
        self.reap_loan();
        self.send_copy(frame).await
    }

    /// Lends `len` bytes of the ring itself: fill them and `send_loan`, and
    /// the frame is committed in place (the subscriber's copy-out is its only
    /// copy). The slice's initial contents are unspecified.
    ///
    /// One ring loan can be out at a time; while it is, `loan` lends heap
    /// memory instead (sent with a copy), and `send` commits after the
    /// outstanding loan's space, which stays reserved until that loan is sent
    /// (then copied to the head) or dropped.
    async fn loan(&mut self, len: usize) -> Result<Loan> {
        self.reap_loan();
        PayloadLimit::named(self.max_payload(), "capacity").check(len)?;
        if self.loan.is_some() {
            return Ok(Loan::heap(len));
        }
        let pos = self.head;
        let reserve = self.record_len(len as u64, MIN_ENVELOPE)?;
        self.make_room(pos + reserve).await?;
        let token = Arc::new(LoanToken::default());
        self.loan = Some(LoanState {
            token: token.clone(),
            pos,
            len: len as u64,
            reserved_end: pos + reserve,
            displaced: false,
        });
        Ok(Loan::new(Box::new(RingLoan {
            ring: self.ring.clone(),
            publisher: self.id,
            pos,
            len,
            token,
        })))
    }

    async fn send_loan(&mut self, loan: Loan) -> Result<()> {
        let (mut frame, buf) = loan.into_parts();
        let rl = match take_back::<RingLoan>(buf)? {
            Returned::Own(rl) => rl,
            Returned::Heap(payload) => {
                frame.payload = payload;
                return self.send(frame).await;
            }
        };
        let state = match &self.loan {
            Some(s) if rl.publisher == self.id && Arc::ptr_eq(&s.token, &rl.token) => s,
            _ => return Err(Error::ForeignLoan),
        };
        let (pos, reserved_end, displaced) = (state.pos, state.reserved_end, state.displaced);
        frame.payload = Bytes::from_owner(RingBytes {
            ring: self.ring.clone(),
            pos: pos + RECORD_HEADER,
            len: rl.len,
        });
        let result = if displaced {
            // Its space became a skip record; copy it to the head. The pin
            // (still in `self.loan`) keeps the source intact meanwhile.
            self.send_copy(frame).await
        } else {
            self.send_in_place(frame, pos, reserved_end).await
        };
        // Sent or failed, the loan is consumed and its space released.
        self.loan = None;
        drop(rl);
        result
    }

    /// Returns at once: a frame is in shared memory, readable by every
    /// subscriber, as soon as `send` returns (and stays readable after the
    /// publisher is gone). See [`ShmRingPublisher::wait_consumed`] to wait
    /// for the readers.
    async fn flush(&mut self) -> Result<()> {
        self.reap_loan();
        Ok(())
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn subscriber_count(&self) -> Option<usize> {
        Some(self.shared.readers().len())
    }

    fn max_payload(&self) -> u64 {
        self.shared.cfg.max_payload()
    }

    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.shared.members.wait_for(n, timeout).await
    }

    fn stats(&self) -> Stats {
        let mut s = self.shared.stats.snapshot();
        s.queued = self.queued();
        s
    }
}

impl Drop for ShmRingPublisher {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.ring.control().closed.0.store(1, Ordering::Release);
        self.accept.abort();
        let readers = std::mem::take(&mut *self.shared.readers());
        // Subscribers see EOF at once, read what is committed, then report
        // the disconnect. The ring stays mapped in their processes.
        for r in readers {
            r.hang_up();
        }
    }
}
