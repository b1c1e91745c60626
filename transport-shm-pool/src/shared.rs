//! A slot pool shared with other processes through a protocol of the
//! caller's own: the building block for "payload in shared memory, a small
//! reference over another channel" (transport-zmq's `shm=pool`).
//!
//! The publisher side is a [`SharedPool`]: the same sealed, pre-faulted memfd
//! segment and lock-free free list as the `shm-pool://` backend
//! ([`SlotPool`]), plus per-slot accounting: a generation, bumped on every
//! publish, and a bitmask of *holders* (up to 64, numbered by the caller). A
//! published slot returns to the free list only when every holder has
//! released it; a stale or duplicate release is ignored and counted.
//!
//! The segment is shared through [`SharedPool::serve`]: an abstract Unix
//! socket (nothing on disk) that checks the peer's uid (`SO_PEERCRED`) and
//! hands it a read-only reopened descriptor of the segment (`SCM_RIGHTS`).
//! A reader calls [`Attached::attach`] with the socket's name, then turns each
//! [`SlotRef`] it is sent into a zero-copy [`Bytes`] view
//! ([`Attached::view`]) or an owned copy ([`Attached::copy`]); a reference
//! that does not name a live slot of that segment is
//! [`Error::InvalidReference`] and nothing is read.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> transport_core::Result<()> {
//! use std::time::Duration;
//! use transport_core::LoanBuffer;
//! use transport_shm_pool::shared::{Attached, SharedPool};
//! let pool = SharedPool::create("doc", 2, 4096)?;
//! let server = pool.serve()?;
//! let reader = Attached::attach(server.name(), Duration::from_secs(5)).await?;
//! let mut w = pool.try_alloc(5)?.expect("a free slot");
//! w.as_mut_slice().copy_from_slice(b"hello");
//! let r = w.publish(5, 0b1); // one holder: number 0
//! let view = reader.view(&r, || {})?;
//! assert_eq!(&view[..], b"hello");
//! assert_eq!(pool.free_slots(), 1);
//! assert!(pool.release(&r, 0));
//! assert!(!pool.release(&r, 0), "a duplicate release is ignored");
//! assert_eq!(pool.free_slots(), 2);
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use transport_core::{Error, LoanBuffer, Result};

use crate::holders::Holders;
use crate::lease::{Reserved, SlotHome};
use crate::pool::{SegmentMap, SlotPool};
use crate::sys;
use crate::wire::{self, Hello, Msg, RecvBuf};

/// Most holders a slot can have (holder numbers 0 to 63).
pub const MAX_HOLDERS: u32 = 64;

/// Length of an encoded [`SlotRef`].
pub const SLOT_REF_LEN: usize = 28;

/// A reference to one published slot: what travels instead of the payload.
///
/// Encoded as 28 little-endian bytes: `segment u64 | index u32 | generation
/// u64 | len u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotRef {
    /// The segment (its memfd inode number).
    pub segment: u64,
    /// The slot.
    pub index: u32,
    /// The slot's generation when it was published (never 0).
    pub generation: u64,
    /// Payload length.
    pub len: u64,
}

impl SlotRef {
    /// The fixed 28-byte encoding.
    pub fn encode(&self) -> [u8; SLOT_REF_LEN] {
        let mut b = [0u8; SLOT_REF_LEN];
        b[0..8].copy_from_slice(&self.segment.to_le_bytes());
        b[8..12].copy_from_slice(&self.index.to_le_bytes());
        b[12..20].copy_from_slice(&self.generation.to_le_bytes());
        b[20..28].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes [`encode`](Self::encode)'s bytes; any other length is an error.
    /// Whether the reference names a live slot is checked when it is used.
    pub fn decode(b: &[u8]) -> Result<SlotRef> {
        let b: &[u8; SLOT_REF_LEN] = b.try_into().map_err(|_| {
            Error::invalid_reference(
                "shm-pool",
                format!("a slot reference is {SLOT_REF_LEN} bytes, got {}", b.len()),
            )
        })?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Ok(SlotRef {
            segment: u64_at(0),
            index: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            generation: u64_at(12),
            len: u64_at(20),
        })
    }
}

/// A publisher's pool of shared slots with per-slot holder accounting.
/// See the [module docs](self).
pub struct SharedPool {
    pool: SlotPool,
    acct: Mutex<Vec<Holders>>,
    freed: Notify,
    stale: AtomicU64,
}

impl std::fmt::Debug for SharedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPool")
            .field("pool", &self.pool)
            .field("stale_releases", &self.stale_releases())
            .finish()
    }
}

impl SharedPool {
    /// Creates the segment (the cold path: memfd, map and pre-fault, seal).
    /// `name` only labels the memfd.
    pub fn create(name: &str, slots: usize, slot_size: u64) -> Result<Arc<SharedPool>> {
        let pool = SlotPool::create(name, slots, slot_size)?;
        let acct = vec![Holders::default(); pool.slots()];
        Ok(Arc::new(SharedPool {
            pool,
            acct: Mutex::new(acct),
            freed: Notify::new(),
            stale: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Holders>> {
        // Critical sections are a few word updates; a poisoned lock is still consistent.
        self.acct.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free slot for a payload of `len` bytes, or `None` when every slot is
    /// in use; `len` past the slot size is [`Error::PayloadTooLarge`].
    pub fn try_alloc(self: &Arc<Self>, len: usize) -> Result<Option<SlotWriter>> {
        self.pool.payload_limit().check(len)?;
        Ok(self.pool.pop().map(|index| SlotWriter {
            slot: Reserved::new(self.clone(), index, len),
        }))
    }

    /// Waits for a free slot. Cancellation-safe: a cancelled wait takes nothing.
    pub async fn alloc(self: &Arc<Self>, len: usize) -> Result<SlotWriter> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(w) = self.try_alloc(len)? {
                return Ok(w);
            }
            freed.await;
        }
    }

    fn free(&self, index: u32) {
        self.pool.push(index);
        self.freed.notify_waiters();
        // A waiter that enabled after notify_waiters ran still sees the slot.
        self.freed.notify_one();
    }

    /// Holder `holder` is done with the slot `r` names. Returns false (and
    /// counts it) for a stale, duplicate or foreign release, which changes nothing.
    pub fn release(&self, r: &SlotRef, holder: u32) -> bool {
        let ok = r.segment == self.pool.segment_id() && holder < MAX_HOLDERS && {
            let mut acct = self.lock();
            match acct.get_mut(r.index as usize) {
                Some(a) if a.held_at(r.generation, 1 << holder) => {
                    let empty = a.drop_holder(1 << holder);
                    drop(acct);
                    if empty {
                        self.free(r.index);
                    }
                    true
                }
                _ => false,
            }
        };
        if !ok {
            self.stale.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Releases every slot `holder` holds (a reader that went away). Returns
    /// how many it held.
    pub fn release_all(&self, holder: u32) -> usize {
        if holder >= MAX_HOLDERS {
            return 0;
        }
        let bit = 1u64 << holder;
        let mut freed = Vec::new();
        let mut n = 0;
        {
            let mut acct = self.lock();
            for (i, a) in acct.iter_mut().enumerate() {
                if a.held_by(bit) {
                    n += 1;
                    if a.drop_holder(bit) {
                        freed.push(i as u32);
                    }
                }
            }
        }
        for i in freed {
            self.free(i);
        }
        n
    }

    /// The holders of the slot `r` names, while `r` is its current publication.
    pub fn holders(&self, r: &SlotRef) -> u64 {
        match self.lock().get(r.index as usize) {
            Some(a) if a.generation() == r.generation && r.segment == self.pool.segment_id() => {
                a.mask()
            }
            _ => 0,
        }
    }

    /// A `Bytes` over the published slot `r` (this process's own mapping),
    /// which releases `holder` when its last clone drops. `holder` must hold
    /// `r` ([`Error::InvalidReference`] otherwise): the hold keeps the slot
    /// from being reused while the bytes live.
    pub fn hold_bytes(self: &Arc<Self>, r: &SlotRef, holder: u32) -> Result<Bytes> {
        if holder >= MAX_HOLDERS || self.holders(r) & (1 << holder) == 0 {
            return Err(Error::invalid_reference(
                "shm-pool",
                format!(
                    "holder {holder} does not hold slot {} generation {}",
                    r.index, r.generation
                ),
            ));
        }
        Ok(Bytes::from_owner(HeldBytes {
            pool: self.clone(),
            r: *r,
            holder,
        }))
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.pool.slots()
    }

    /// Largest payload of a slot.
    pub fn slot_size(&self) -> u64 {
        self.pool.slot_size()
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.pool.free_slots()
    }

    /// The segment's identity (its memfd inode number), as in every [`SlotRef`].
    pub fn segment_id(&self) -> u64 {
        self.pool.segment_id()
    }

    /// Releases ignored because they were stale, duplicate or foreign.
    pub fn stale_releases(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// Serves the segment to readers of this uid on a fresh abstract Unix
    /// socket (named `framewire/<uid>/shared/<random>`), until the returned
    /// server drops. Must be called inside a tokio runtime.
    pub fn serve(self: &Arc<Self>) -> Result<AttachServer> {
        let name = format!(
            "framewire/{}/shared/{:016x}{:016x}",
            sys::euid(),
            random_u64(),
            self.segment_id()
        );
        let ro = sys::reopen_read_only(self.pool.fd())
            .map_err(|e| Error::io("reopening the segment read-only", e))?;
        let std = sys::bind_abstract(&name)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::io(format!("listening on @{name}"), e))?;
        let listener = tokio::net::UnixListener::from_std(std)
            .map_err(|e| Error::io(format!("listening on @{name}"), e))?;
        let hello = self.pool.hello(0, 0);
        let ro = Arc::new(ro);
        let open: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let conns = open.clone();
        let task = tokio::spawn(async move {
            let mut next: u32 = 1;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let conn = next;
                next = next.wrapping_add(1).max(1);
                let (ro, conns, closed_tx) = (ro.clone(), conns.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    lock(&conns).insert(conn);
                    match hand_over(&stream, &hello, &ro, conn).await {
                        // The reader keeps the socket open while it maps the
                        // segment (its views and its subscriber hold it).
                        Ok(()) => wait_eof(&stream).await,
                        Err(e) => tracing::info!(error = %e, "shared pool: refused a reader"),
                    }
                    lock(&conns).remove(&conn);
                    let _ = closed_tx.send(conn);
                });
            }
        });
        Ok(AttachServer {
            name,
            task,
            open,
            closed,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Returns when the peer closed its end (or the socket failed); discards anything it sends.
async fn wait_eof(stream: &tokio::net::UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn hand_over(
    stream: &tokio::net::UnixStream,
    hello: &Hello,
    ro: &OwnedFd,
    conn: u32,
) -> Result<()> {
    let uid = sys::peer_uid(stream.as_fd()).map_err(|e| Error::io("SO_PEERCRED", e))?;
    let me = sys::euid();
    if uid != me {
        // Owner-only: another user's process gets nothing, not even the geometry.
        return Err(Error::InvalidOption {
            option: "shm".into(),
            reason: format!("a reader of uid {uid} is not this publisher's uid {me}"),
        });
    }
    let send = async {
        wire::send(stream, &Msg::Hello(*hello), Some(ro.as_fd()), "HELLO").await?;
        wire::send(stream, &Msg::Ready { id: conn }, None, "READY").await
    };
    tokio::time::timeout(Duration::from_secs(5), send)
        .await
        .map_err(|_| Error::timeout(Duration::from_secs(5), "handing a segment over"))?
}

/// Serves a [`SharedPool`]'s segment (see [`SharedPool::serve`]); stops
/// accepting readers when dropped.
///
/// Each reader that attaches gets a connection number
/// ([`Attached::conn`]) and keeps its socket open for as long as it maps the
/// segment: while it holds a view, or its [`Attached`] lives. The socket
/// closing (the reader dropped everything, or its process died) is reported
/// by [`next_closed`](Self::next_closed): the moment its holds may be
/// released with [`SharedPool::release_all`] without pulling a slot from
/// under a live view.
#[derive(Debug)]
pub struct AttachServer {
    name: String,
    task: tokio::task::JoinHandle<()>,
    open: Arc<Mutex<HashSet<u32>>>,
    closed: mpsc::UnboundedReceiver<u32>,
}

impl AttachServer {
    /// The abstract socket's name, for [`Attached::attach`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while reader `conn` keeps its socket open.
    pub fn is_open(&self, conn: u32) -> bool {
        lock(&self.open).contains(&conn)
    }

    /// The next reader whose socket closed. Cancellation-safe.
    pub async fn next_closed(&mut self) -> u32 {
        match self.closed.recv().await {
            Some(c) => c,
            // The accept task holds a sender until it is aborted on drop.
            None => std::future::pending().await,
        }
    }
}

impl Drop for AttachServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A writable slot taken from a [`SharedPool`]: fill it, then
/// [`publish`](Self::publish) it. Dropped unpublished, the slot goes back.
#[derive(Debug)]
pub struct SlotWriter {
    slot: Reserved<SharedPool>,
}

impl SlotHome for SharedPool {
    fn slot_pool(&self) -> &SlotPool {
        &self.pool
    }

    fn give_back(&self, index: u32) {
        self.free(index);
    }
}

impl SlotWriter {
    /// The slot's index.
    pub fn index(&self) -> u32 {
        self.slot.index()
    }

    /// The pool the slot belongs to.
    pub fn pool(&self) -> &Arc<SharedPool> {
        self.slot.home()
    }

    /// The writable length asked for.
    pub fn len(&self) -> usize {
        self.slot.len()
    }

    /// True for a zero-length writer.
    pub fn is_empty(&self) -> bool {
        self.slot.len() == 0
    }

    /// Publishes the first `len` bytes (at most the length asked for) to the
    /// holders in the bitmask `holders` (bit `h` = holder `h`): bumps the
    /// slot's generation, writes its header, and returns the reference to
    /// send. The slot returns to the free list when every holder released it
    /// (at once when `holders` is 0).
    pub fn publish(mut self, len: usize, holders: u64) -> SlotRef {
        let len = len.min(self.slot.len()) as u64;
        self.slot.disarm();
        let index = self.slot.index();
        let pool = self.slot.home();
        let generation = {
            let mut acct = pool.lock();
            let a = &mut acct[index as usize];
            // Never 0, so that a zeroed reference is never valid.
            let generation = a.next_generation();
            a.set_mask(holders);
            pool.pool.set_header(index, generation, len);
            generation
        };
        if holders == 0 {
            pool.free(index);
        }
        SlotRef {
            segment: pool.segment_id(),
            index,
            generation,
            len,
        }
    }
}

impl LoanBuffer for SlotWriter {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.slot.as_mut_slice()
    }

    fn as_slice(&self) -> &[u8] {
        self.slot.as_slice()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// The publisher's own bytes of a slot it holds (see [`SharedPool::hold_bytes`]).
struct HeldBytes {
    pool: Arc<SharedPool>,
    r: SlotRef,
    holder: u32,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: checked at creation that `holder` holds this publication
        // of the slot (so index and len are in range); the slot is not
        // reused or written until every holder released it, and this hold is
        // released only when `self` drops.
        unsafe { self.pool.pool.slot(self.r.index, self.r.len as usize) }
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.pool.release(&self.r, self.holder);
    }
}

/// A reader's read-only mapping of a [`SharedPool`]'s segment. Its socket to
/// the [`AttachServer`] stays open while it lives (views keep it alive), so
/// that the publisher learns when it is gone.
#[derive(Debug)]
pub struct Attached {
    seg: SegmentMap,
    conn: u32,
    _link: tokio::net::UnixStream,
}

impl Attached {
    /// Connects to a pool's [`AttachServer`] named `name`, receives its
    /// read-only segment descriptor, checks it (sealed, the announced
    /// geometry and identity) and maps it read-only, all within `timeout`.
    ///
    /// Fails on another host (no such socket), as another user (the server
    /// refuses), or with a segment that does not match what was announced.
    pub async fn attach(name: &str, timeout: Duration) -> Result<Arc<Attached>> {
        let go = async {
            let stream = sys::connect(name)
                .await
                .map_err(|e| Error::io(format!("connecting to @{name}"), e))?;
            let uid = sys::peer_uid(stream.as_fd()).map_err(|e| Error::io("SO_PEERCRED", e))?;
            if uid != sys::euid() {
                return Err(Error::protocol(
                    "shm-pool",
                    format!("@{name} is served by uid {uid}, not ours ({})", sys::euid()),
                ));
            }
            let mut rx = RecvBuf::new();
            let hello = match rx.recv(&stream, "HELLO").await? {
                Msg::Hello(h) => h,
                other => {
                    return Err(Error::protocol(
                        "shm-pool",
                        format!("expected HELLO, got {other:?}"),
                    ));
                }
            };
            let fd = rx
                .take_fd()
                .ok_or_else(|| Error::protocol("shm-pool", "HELLO came without the segment fd"))?;
            let seg = SegmentMap::open(fd, &hello, Vec::new())?;
            let conn = match rx.recv(&stream, "READY").await? {
                Msg::Ready { id } => id,
                other => {
                    return Err(Error::protocol(
                        "shm-pool",
                        format!("expected READY, got {other:?}"),
                    ));
                }
            };
            Ok(Arc::new(Attached {
                seg,
                conn,
                _link: stream,
            }))
        };
        tokio::time::timeout(timeout, go)
            .await
            .map_err(|_| Error::timeout(timeout, "attaching a shared pool"))?
    }

    /// The segment's identity.
    pub fn segment_id(&self) -> u64 {
        self.seg.id()
    }

    /// This reader's connection number at the [`AttachServer`].
    pub fn conn(&self) -> u32 {
        self.conn
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.seg.geometry().slots as usize
    }

    /// Largest payload of a slot.
    pub fn slot_size(&self) -> u64 {
        self.seg.geometry().slot_size
    }

    /// Checks `r` against this segment: its identity, the slot index, the
    /// length against the slot size, and generation and length against the
    /// slot's header. Nothing of the payload is read.
    pub fn check(&self, r: &SlotRef) -> Result<()> {
        let geo = self.seg.geometry();
        if r.segment != self.seg.id() {
            return Err(Error::invalid_reference(
                "shm-pool",
                format!(
                    "it names segment {}, but the attached segment is {}",
                    r.segment,
                    self.seg.id()
                ),
            ));
        }
        if r.index >= geo.slots {
            return Err(Error::invalid_reference(
                "shm-pool",
                format!(
                    "slot index {} is out of range ({} slots)",
                    r.index, geo.slots
                ),
            ));
        }
        if r.len > geo.slot_size {
            return Err(Error::invalid_reference(
                "shm-pool",
                format!(
                    "length {} runs past the end of slot {} (slot_size {})",
                    r.len, r.index, geo.slot_size
                ),
            ));
        }
        let (generation, len) = self.seg.header(r.index);
        if r.generation == 0 || generation != r.generation || len != r.len {
            return Err(Error::invalid_reference(
                "shm-pool",
                format!(
                    "slot {} holds generation {generation} ({len} B) but the reference says generation {} ({} B)",
                    r.index, r.generation, r.len
                ),
            ));
        }
        Ok(())
    }

    /// A zero-copy, read-only view of the slot `r` names, after
    /// [`check`](Self::check). `on_release` runs when the view's last clone
    /// drops (it must not block: queue the release). On error nothing is
    /// read and `on_release` is dropped without running.
    ///
    /// A view reads the slot in place, so its bytes stay one frame only while
    /// this reader *holds* the slot at the publisher (its holder bit is set
    /// for this publication and released through `on_release`): the
    /// publisher never rewrites a held slot. A reference to a slot that is
    /// being refilled or was republished is refused (its header says
    /// generation 0 or a newer one); but a view of a reference this reader does not hold
    /// can still be overwritten after it was made. Use [`copy`](Self::copy)
    /// for a reference that may be stale or replayed.
    pub fn view(
        self: &Arc<Self>,
        r: &SlotRef,
        on_release: impl FnOnce() + Send + 'static,
    ) -> Result<Bytes> {
        self.check(r)?;
        Ok(Bytes::from_owner(View {
            att: self.clone(),
            index: r.index,
            len: r.len as usize,
            on_release: Some(Box::new(on_release)),
        }))
    }

    /// An owned copy of the slot `r` names, read seqlock-style, so that it
    /// is all of one publication or an error, whatever the publisher does
    /// meanwhile and whether or not this reader holds the slot:
    ///
    /// 1. [`check`](Self::check) the header (acquire loads): the slot must
    ///    carry `r`'s generation. The publisher sets a slot's generation to 0
    ///    when it takes the slot for a new frame, before writing a byte of
    ///    it, and to a new, never repeated value when it publishes it.
    /// 2. Copy the bytes with relaxed atomic word loads (no plain or SIMD
    ///    load of memory another process may be writing).
    /// 3. `fence(Acquire)`, then check the header again: if any byte copied
    ///    came from a rewrite, the generation is no longer `r`'s, and the
    ///    copy is [`Error::InvalidReference`] rather than torn bytes.
    pub fn copy(&self, r: &SlotRef) -> Result<Bytes> {
        self.check(r)?;
        let b = self.seg.copy_slot(r.index, r.len as usize);
        // Pairs with the release fence after the publisher's invalidation
        // (`SlotPool::pop`): reading a byte of a rewrite makes that
        // invalidation visible to the header load below.
        fence(Ordering::Acquire);
        if let Err(e) = self.check(r) {
            return Err(Error::invalid_reference(
                "shm-pool",
                format!("slot {} was reused while it was being copied: {e}", r.index),
            ));
        }
        Ok(Bytes::from(b))
    }
}

type OnRelease = Box<dyn FnOnce() + Send>;

struct View {
    att: Arc<Attached>,
    index: u32,
    len: usize,
    on_release: Option<OnRelease>,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: checked at creation (index < slots, len <= slot_size), so
        // the range lies inside the read-only mapping `att` keeps alive; the
        // publisher does not reuse the slot while this reader holds it, and
        // the hold is released only by `on_release`, when this view drops.
        unsafe { std::slice::from_raw_parts(self.att.seg.slot_ptr(self.index), self.len) }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Some(f) = self.on_release.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests;
