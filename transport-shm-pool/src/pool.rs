//! The slot pool: one sealed memfd segment holding a control page and `slots`
//! page-aligned slots, plus a lock-free free list.
//!
//! ```text
//! offset 0              magic "FWSHMPL1" | version u32 | slots u32 | slot_size u64 | stride u64 | data_offset u64
//! offset 64 + 16 * i    slot i: generation u64 | len u64   (written by the publisher only)
//! data_offset + stride * i   slot i's bytes (slot_size of them, the stride rounds up to a page)
//! ```
//!
//! The publisher maps the segment read-write and pre-faults it at creation
//! (`MAP_POPULATE`), then seals it (`F_SEAL_SHRINK | F_SEAL_GROW`, and
//! `F_SEAL_FUTURE_WRITE` so that no further writable mapping can ever be made,
//! then `F_SEAL_SEAL`). Subscribers receive a read-only reopened descriptor and
//! map it `PROT_READ`. Offsets, never pointers, live in shared memory.
//!
//! [`SlotPool`] is public for benchmarks and for building other protocols on
//! it; [`ShmPoolTransport`](crate::ShmPoolTransport) is the usual way in.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use crossbeam_queue::ArrayQueue;
use transport_core::contract::PayloadLimit;
use transport_core::{Error, Result};
use transport_shm_support::copy::copy_to_vec;

use crate::config::{MAX_POOL_BYTES, MAX_SLOTS};
use crate::registry::{self, Registration};
use crate::sys;
use crate::wire::Hello;

const MAGIC: [u8; 8] = *b"FWSHMPL1";
const LAYOUT_VERSION: u32 = 1;
const CTRL_HEADER: u64 = 64;
const SLOT_HEADER: u64 = 16;

/// Where everything is in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of slots.
    pub slots: u32,
    /// Largest payload of a slot.
    pub slot_size: u64,
    /// Distance between slots, page aligned.
    pub stride: u64,
    /// Offset of slot 0.
    pub data_offset: u64,
    /// Length of the whole segment.
    pub len: u64,
}

impl Geometry {
    /// The geometry of a pool of `slots` slots of `slot_size` bytes.
    pub fn new(slots: usize, slot_size: u64) -> Result<Geometry> {
        let bad = |reason: String| Error::InvalidOption {
            option: "slots".into(),
            reason,
        };
        let n = u32::try_from(slots)
            .ok()
            .filter(|n| (1..=MAX_SLOTS as u32).contains(n))
            .ok_or_else(|| bad(format!("{slots} slots; give 1 to {MAX_SLOTS}")))?;
        let stride = sys::page_align(slot_size.max(1))
            .ok_or_else(|| bad(format!("slot_size {slot_size} overflows")))?;
        let data_offset = sys::page_align(CTRL_HEADER + SLOT_HEADER * u64::from(n))
            .ok_or_else(|| bad("control page overflows".into()))?;
        let len = stride
            .checked_mul(u64::from(n))
            .and_then(|d| d.checked_add(data_offset))
            .filter(|&l| l <= MAX_POOL_BYTES + data_offset)
            .ok_or_else(|| {
                bad(format!(
                    "{slots} slots of {slot_size} B exceed {MAX_POOL_BYTES} B"
                ))
            })?;
        Ok(Geometry {
            slots: n,
            slot_size,
            stride,
            data_offset,
            len,
        })
    }

    /// The geometry a peer announced, checked to be self-consistent.
    pub(crate) fn from_hello(h: &Hello) -> Result<Geometry> {
        let g = Geometry::new(h.slots as usize, h.slot_size).map_err(|e| {
            Error::protocol(
                "shm-pool",
                format!("the publisher announced a bad pool: {e}"),
            )
            .with_source(e)
        })?;
        if (g.stride, g.data_offset, g.len) != (h.stride, h.data_offset, h.segment_len) {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "the publisher announced stride {} / data offset {} / length {}, but {} slots of {} B need {} / {} / {}",
                    h.stride,
                    h.data_offset,
                    h.segment_len,
                    h.slots,
                    h.slot_size,
                    g.stride,
                    g.data_offset,
                    g.len
                ),
            ));
        }
        Ok(g)
    }

    pub(crate) fn header_bytes(&self) -> [u8; CTRL_HEADER as usize] {
        let mut b = [0u8; CTRL_HEADER as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.slots.to_le_bytes());
        b[16..24].copy_from_slice(&self.slot_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.stride.to_le_bytes());
        b[32..40].copy_from_slice(&self.data_offset.to_le_bytes());
        b
    }

    fn slot_offset(&self, index: u32) -> usize {
        (self.data_offset + self.stride * u64::from(index)) as usize
    }

    fn slot_header_offset(&self, index: u32) -> usize {
        (CTRL_HEADER + SLOT_HEADER * u64::from(index)) as usize
    }
}

/// A mapped segment: the part publisher and subscriber share.
struct Mapping {
    map: sys::Mapping,
    geo: Geometry,
}

impl Mapping {
    /// The generation and length words of slot `index` (`index < slots`).
    fn slot_header(&self, index: u32) -> (&AtomicU64, &AtomicU64) {
        assert!(index < self.geo.slots, "slot index checked by the caller");
        let off = self.geo.slot_header_offset(index);
        // SAFETY: `off` lies in the control page, inside the mapping (the
        // geometry puts data_offset past every slot header), and is 16-aligned
        // in a page-aligned mapping, so both words are aligned `AtomicU64`s.
        // The mapping lives as long as `self`; the segment is sealed against
        // shrinking. Both processes access these words only through atomics.
        unsafe {
            let p = self.map.as_ptr().add(off);
            (&*p.cast::<AtomicU64>(), &*p.add(8).cast::<AtomicU64>())
        }
    }

    /// Marks slot `index` as being rewritten: generation 0, which no
    /// published reference carries. Then a release fence, so that a reader
    /// that sees any byte written after this call (and fences before it
    /// re-reads the header) sees generation 0 or a later one, never the old.
    fn invalidate(&self, index: u32) {
        let (g, _) = self.slot_header(index);
        g.store(0, Ordering::Relaxed);
        // Before any new byte of the slot, streaming stores included (a
        // release fence alone emits nothing on x86, where non-temporal
        // stores may pass the store above).
        transport_core::copy::store_fence();
    }

    fn slot_ptr(&self, index: u32) -> *mut u8 {
        assert!(index < self.geo.slots, "slot index checked by the caller");
        // SAFETY: slot `index` starts inside the mapping (geometry checked at
        // creation: data_offset + stride * slots == len), so the offset stays
        // within the same allocation.
        unsafe { self.map.as_ptr().add(self.geo.slot_offset(index)) }
    }
}

/// A lock-free free list of the slot indices `base .. base + n` that
/// detects a double release whether or not the list is full.
///
/// Each index has a flag, set while it is on the list: a push swaps it from
/// clear to set, so an index that is already free (released twice) is
/// refused, counted and logged, and never enters the list a second time. A
/// push never panics and never blocks, so it is safe in `Drop`.
pub(crate) struct FreeList {
    queue: ArrayQueue<u32>,
    free: Box<[AtomicBool]>,
    base: u32,
    doubles: AtomicU64,
}

impl FreeList {
    /// A list of the indices `base .. base + n`, all free.
    pub(crate) fn new(base: u32, n: u32) -> FreeList {
        let queue = ArrayQueue::new(n.max(1) as usize);
        for i in base..base + n {
            // Cannot fail: the queue has room for every index.
            let _ = queue.push(i);
        }
        FreeList {
            queue,
            free: (0..n).map(|_| AtomicBool::new(true)).collect(),
            base,
            doubles: AtomicU64::new(0),
        }
    }

    fn flag(&self, index: u32) -> Option<&AtomicBool> {
        index
            .checked_sub(self.base)
            .and_then(|k| self.free.get(k as usize))
    }

    /// Takes a free index.
    pub(crate) fn pop(&self) -> Option<u32> {
        let index = self.queue.pop()?;
        if let Some(f) = self.flag(index) {
            // Only the popper owns `index` now; a push of it before this
            // store is a release of a free index and was refused.
            f.store(false, Ordering::Release);
        }
        Some(index)
    }

    /// Marks `index` free, unless it already is (or is out of range): then
    /// nothing changes, the double release is counted and logged, and the
    /// result is false.
    pub(crate) fn check_push(&self, index: u32) -> bool {
        let fresh = self
            .flag(index)
            .is_some_and(|f| !f.swap(true, Ordering::AcqRel));
        if !fresh {
            self.doubles.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                index,
                "shm-pool: slot released while already free (double release); ignored"
            );
        }
        fresh
    }

    /// Puts an index that [`check_push`](Self::check_push) accepted back on the list.
    pub(crate) fn push_checked(&self, index: u32) {
        // Cannot fail: each index is on the list at most once (its flag) and
        // the queue has room for all of them.
        let _ = self.queue.push(index);
    }

    /// Returns `index` to the list (see [`check_push`](Self::check_push)).
    pub(crate) fn push(&self, index: u32) -> bool {
        let fresh = self.check_push(index);
        if fresh {
            self.push_checked(index);
        }
        fresh
    }

    /// Indices free now.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Double releases refused so far.
    pub(crate) fn double_releases(&self) -> u64 {
        self.doubles.load(Ordering::Relaxed)
    }
}

/// The publisher's pool: a read-write, pre-faulted, sealed memfd segment and
/// a lock-free free list of its slots.
///
/// Creating one is the cold path (memfd, truncate, map and pre-fault every
/// page, seal); taking a free slot is the warm path, a lock-free pop with no
/// system call.
///
/// ```
/// use transport_shm_pool::pool::SlotPool;
/// let pool = SlotPool::create("doc", 2, 4096).unwrap();
/// let mut a = pool.try_acquire().unwrap();
/// a.as_mut_slice()[..5].copy_from_slice(b"hello");
/// let b = pool.try_acquire().unwrap();
/// assert!(pool.try_acquire().is_none(), "both slots are taken");
/// drop((a, b));
/// assert_eq!(pool.free_slots(), 2);
/// ```
pub struct SlotPool {
    map: Mapping,
    fd: OwnedFd,
    id: u64,
    free: FreeList,
}

impl std::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotPool")
            .field("geometry", &self.map.geo)
            .field("segment", &self.id)
            .field("free", &self.free.len())
            .finish()
    }
}

impl SlotPool {
    /// Creates a pool of `slots` slots of `slot_size` bytes: the cold path.
    ///
    /// `name` only labels the memfd (it shows in `/proc/<pid>/fd`); nothing
    /// appears in `/dev/shm` or anywhere on disk.
    pub fn create(name: &str, slots: usize, slot_size: u64) -> Result<SlotPool> {
        let geo = Geometry::new(slots, slot_size)?;
        let ctx = || {
            format!(
                "creating an shm-pool segment of {slots} slots x {}",
                transport_core::fmt_size(slot_size)
            )
        };
        let label = format!("framewire-shm-pool:{name}");
        let fd = sys::memfd_sealed(&label, geo.len).map_err(|e| Error::io(ctx(), e))?;
        let len =
            usize::try_from(geo.len).map_err(|e| Error::io(ctx(), std::io::Error::other(e)))?;
        let map =
            sys::Mapping::map(fd.as_fd(), len, true, true).map_err(|e| Error::io(ctx(), e))?;
        let header = geo.header_bytes();
        // SAFETY: the mapping is at least one page long (data_offset >= one
        // page) and nobody else has the segment yet.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), map.as_ptr(), header.len()) };
        sys::seal_future_write_if_supported(fd.as_fd()).map_err(|e| Error::io(ctx(), e))?;
        let id = sys::inode(fd.as_fd()).map_err(|e| Error::io(ctx(), e))?;
        let free = FreeList::new(0, geo.slots);
        Ok(SlotPool {
            map: Mapping { map, geo },
            fd,
            id,
            free,
        })
    }

    /// Takes a free slot, or `None` when every slot is in use: the warm path.
    /// The slot goes back when the lease drops.
    pub fn try_acquire(&self) -> Option<SlotLease<'_>> {
        self.pop().map(|index| SlotLease { pool: self, index })
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.map.geo.slots as usize
    }

    /// Largest payload of a slot.
    pub fn slot_size(&self) -> u64 {
        self.map.geo.slot_size
    }

    /// The HELLO that announces this pool's segment (its identity and
    /// geometry), with the publisher's `flags` and the claim table length it
    /// asks for.
    pub(crate) fn hello(&self, flags: u32, claims_len: u64) -> Hello {
        let g = self.geometry();
        Hello {
            version: crate::wire::VERSION,
            flags,
            segment: self.segment_id(),
            slots: g.slots,
            slot_size: g.slot_size,
            stride: g.stride,
            data_offset: g.data_offset,
            segment_len: g.len,
            claims_len,
        }
    }

    /// The slot size as the payload limit, named by its option `slot_size`.
    pub fn payload_limit(&self) -> PayloadLimit {
        PayloadLimit::named(self.slot_size(), "slot_size")
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// The segment's identity (the memfd's inode number).
    pub fn segment_id(&self) -> u64 {
        self.id
    }

    /// Where everything is in the segment.
    pub fn geometry(&self) -> Geometry {
        self.map.geo
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Takes a free slot and marks its header as being rewritten
    /// (generation 0), so that no reference to an earlier publication of it
    /// passes a check from now on, before its new owner writes a byte.
    pub(crate) fn pop(&self) -> Option<u32> {
        let index = self.free.pop()?;
        self.map.invalidate(index);
        Some(index)
    }

    /// Returns a slot to the free list. Its header keeps the last
    /// publication's generation, and its bytes stay that frame until the
    /// slot is popped again (which invalidates the header before anything is
    /// written): a subscriber may still read a frame that was sent before
    /// its publisher went away. A slot that is already free (a double
    /// release) is refused, counted ([`double_releases`](Self::double_releases))
    /// and logged, whether or not the list is full; this never panics, so it
    /// is safe in `Drop`. Returns whether the slot went back.
    pub(crate) fn push(&self, index: u32) -> bool {
        self.free.push(index)
    }

    /// Releases refused because the slot was already free (a double
    /// release: a bug in the caller's accounting, counted and ignored).
    pub fn double_releases(&self) -> u64 {
        self.free.double_releases()
    }

    /// Writes slot `index`'s header: its generation and payload length.
    pub(crate) fn set_header(&self, index: u32, generation: u64, len: u64) {
        let (g, l) = self.map.slot_header(index);
        // Release: pairs with the subscriber's acquire loads in
        // `SegmentMap::header`; the payload is written before this.
        l.store(len, Ordering::Release);
        g.store(generation, Ordering::Release);
    }

    /// A writable view of slot `index`'s first `len` bytes.
    ///
    /// # Safety
    /// The caller owns slot `index` exclusively (popped from the free list and
    /// not published, or in flight with no holder), for as long as the slice
    /// lives, and `len <= slot_size`.
    #[allow(clippy::mut_from_ref)] // exclusivity is this unsafe fn's documented contract
    pub(crate) unsafe fn slot_mut(&self, index: u32, len: usize) -> &mut [u8] {
        debug_assert!(len as u64 <= self.map.geo.slot_size);
        // SAFETY: in bounds (slot_size <= stride) per the caller's contract; no
        // other reference to this slot exists in this process (exclusive
        // ownership), and no subscriber reads it (it holds no claim).
        unsafe { std::slice::from_raw_parts_mut(self.map.slot_ptr(index), len) }
    }

    /// A read-only view of slot `index`'s first `len` bytes.
    ///
    /// # Safety
    /// As for [`slot_mut`](Self::slot_mut), and nobody writes the slot while
    /// the slice lives.
    pub(crate) unsafe fn slot(&self, index: u32, len: usize) -> &[u8] {
        debug_assert!(len as u64 <= self.map.geo.slot_size);
        // SAFETY: see the caller's contract.
        unsafe { std::slice::from_raw_parts(self.map.slot_ptr(index), len) }
    }
}

/// A slot taken from a [`SlotPool`]; it goes back to the free list on drop.
#[derive(Debug)]
pub struct SlotLease<'a> {
    pool: &'a SlotPool,
    index: u32,
}

impl SlotLease<'_> {
    /// The slot's index.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// The whole slot, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.pool.slot_size() as usize;
        // SAFETY: the lease owns the slot exclusively until it drops, and the
        // slice borrows the lease mutably.
        unsafe { self.pool.slot_mut(self.index, len) }
    }
}

impl Drop for SlotLease<'_> {
    fn drop(&mut self) {
        self.pool.push(self.index);
    }
}

/// A subscriber's read-only mapping of a publisher's segment.
pub(crate) struct SegmentMap {
    /// First field: leaves the registry before the mapping is unmapped.
    _reg: Registration,
    map: Mapping,
    id: u64,
}

impl std::fmt::Debug for SegmentMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentMap")
            .field("geometry", &self.map.geo)
            .field("segment", &self.id)
            .finish()
    }
}

impl SegmentMap {
    /// Maps a segment received from a publisher, read-only and pre-faulted,
    /// after checking the fd (sealed, large enough, the announced inode) and
    /// the control header against the announced geometry.
    pub(crate) fn open(
        fd: OwnedFd,
        hello: &Hello,
        anchors: Vec<Arc<OwnedFd>>,
    ) -> Result<SegmentMap> {
        let geo = Geometry::from_hello(hello)?;
        let io = |e: std::io::Error| Error::io("mapping the publisher's segment", e);
        // Sealed, large enough and on tmpfs (no hugetlb page can SIGBUS);
        // every page allocated, so pre-faulting costs page tables, not memory.
        sys::check_sealed(fd.as_fd(), geo.len).map_err(io)?;
        sys::check_allocated(fd.as_fd(), geo.len).map_err(io)?;
        let id = sys::inode(fd.as_fd()).map_err(io)?;
        if id != hello.segment {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "the segment fd is inode {id}, the publisher announced {}",
                    hello.segment
                ),
            ));
        }
        let fd = read_only(fd).map_err(io)?;
        let len = usize::try_from(geo.len).map_err(|e| io(std::io::Error::other(e)))?;
        let map = sys::Mapping::map(fd.as_fd(), len, false, true).map_err(io)?;
        let mut header = [0u8; CTRL_HEADER as usize];
        // SAFETY: the mapping is at least one page long; the control header is
        // written once, before the segment is sealed and shared, and never again.
        unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), header.as_mut_ptr(), header.len()) };
        if header != geo.header_bytes() {
            return Err(Error::protocol(
                "shm-pool",
                "the segment's control header does not match the announced pool",
            ));
        }
        let reg = registry::register(map.as_ptr(), geo.len, fd, id, anchors);
        Ok(SegmentMap {
            _reg: reg,
            map: Mapping { map, geo },
            id,
        })
    }

    /// The registered segment (to set its forward marker).
    pub(crate) fn registered(&self) -> &Arc<crate::registry::SegFd> {
        self._reg.seg()
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.map.geo
    }

    /// Slot `index`'s generation and length as the publisher last wrote them.
    pub(crate) fn header(&self, index: u32) -> (u64, u64) {
        let (g, l) = self.map.slot_header(index);
        // Relaxed loads (the only atomic accesses allowed on read-only
        // memory, see `transport_shm_support::copy`), each followed by an acquire fence:
        // together an acquire load, pairing with the release stores in
        // `SlotPool::set_header` (the length is stored before the generation).
        let generation = g.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let len = l.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (generation, len)
    }

    /// Start of slot `index` (`index < slots`).
    pub(crate) fn slot_ptr(&self, index: u32) -> *const u8 {
        self.map.slot_ptr(index).cast_const()
    }

    /// Copies slot `index`'s first `len` bytes out with
    /// [`copy_to_vec`] (byte-wise relaxed atomic loads): safe however the publisher writes the slot
    /// meanwhile; the caller re-checks the header after an acquire fence to
    /// know whether the bytes are one publication.
    ///
    /// Panics unless `index < slots` and `len <= slot_size` (callers check).
    pub(crate) fn copy_slot(&self, index: u32, len: usize) -> Vec<u8> {
        assert!(
            len as u64 <= self.map.geo.slot_size,
            "length checked by the caller"
        );
        // SAFETY: `index < slots` (asserted by `slot_ptr`) and `len <=
        // slot_size <= stride`, so the range lies inside the read-only
        // mapping, which `self` keeps mapped for the call. This process never
        // writes it (it is mapped `PROT_READ`).
        unsafe { copy_to_vec(self.slot_ptr(index), len) }
    }
}

/// `fd` itself when it is read-only, else a read-only reopening of it: what
/// this process registers, and so what its publishers pass on when they
/// forward, is never writable.
fn read_only(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if sys::is_read_only(fd.as_fd())? {
        return Ok(fd);
    }
    tracing::debug!("shm-pool: the publisher sent a writable segment fd; using it read-only");
    sys::reopen_read_only(fd.as_fd())
}

/// Largest forwarded segment a subscriber maps: exactly the largest segment
/// a publisher of this crate creates (the largest pool, [`MAX_POOL_BYTES`],
/// plus the control page of [`MAX_SLOTS`] slot headers). Forwarded frames
/// are bytes of such a segment and nothing else.
pub(crate) fn max_forwarded_len() -> u64 {
    // Cannot overflow: a few hundred KiB past 256 GiB.
    let ctrl = sys::page_align(CTRL_HEADER + SLOT_HEADER * MAX_SLOTS as u64).unwrap_or(u64::MAX);
    MAX_POOL_BYTES.saturating_add(ctrl)
}

/// A subscriber's read-only mapping of a segment its publisher forwards
/// (another pool's segment, whose frames the publisher re-sends without a
/// copy). Only its length matters: forwarded descriptors name byte ranges.
pub(crate) struct ForeignMap {
    /// First field: leaves the registry before the mapping is unmapped.
    reg: Registration,
    map: sys::Mapping,
}

impl std::fmt::Debug for ForeignMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForeignMap")
            .field("segment", self.reg.seg())
            .finish()
    }
}

impl ForeignMap {
    /// Maps `len` bytes of a forwarded segment read-only, after checking the
    /// fd: an ordinary (tmpfs, not hugetlb) memfd sealed against shrinking,
    /// at least `len` bytes, every page of them allocated, inode `inode`; so
    /// reading the mapping can never SIGBUS and allocates nothing. `len` is
    /// at most what a publisher creates ([`max_forwarded_len`]).
    ///
    /// Pre-faulted (`MAP_POPULATE`) only when `len <= populate_up_to` (the
    /// subscriber passes its own publisher's segment length, announced in
    /// HELLO): a larger segment is mapped lazily, so what a SEGMENT message
    /// can make this process pre-fault is bounded by what it accepted at
    /// the handshake.
    pub(crate) fn open(
        fd: OwnedFd,
        inode: u64,
        len: u64,
        anchors: Vec<Arc<OwnedFd>>,
        populate_up_to: u64,
    ) -> Result<ForeignMap> {
        let io = |e: std::io::Error| Error::io("mapping a forwarded segment", e);
        let max = max_forwarded_len();
        if len == 0 || len > max {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "a forwarded segment of {len} bytes (1 to {max} accepted: the largest segment a publisher creates)"
                ),
            ));
        }
        sys::check_sealed(fd.as_fd(), len).map_err(io)?;
        sys::check_allocated(fd.as_fd(), len).map_err(io)?;
        let id = sys::inode(fd.as_fd()).map_err(io)?;
        if id != inode {
            return Err(Error::protocol(
                "shm-pool",
                format!("the forwarded segment fd is inode {id}, the publisher announced {inode}"),
            ));
        }
        let fd = read_only(fd).map_err(io)?;
        let n = usize::try_from(len).map_err(|e| io(std::io::Error::other(e)))?;
        let map = sys::Mapping::map(fd.as_fd(), n, false, len <= populate_up_to).map_err(io)?;
        let reg = registry::register(map.as_ptr(), len, fd, id, anchors);
        Ok(ForeignMap { reg, map })
    }

    /// Length of the mapping.
    /// The registered segment (to set its forward marker).
    pub(crate) fn registered(&self) -> &Arc<crate::registry::SegFd> {
        self.reg.seg()
    }

    pub(crate) fn len(&self) -> u64 {
        self.reg.seg().len()
    }

    /// The segment's inode number.
    pub(crate) fn inode(&self) -> u64 {
        self.reg.seg().inode()
    }

    /// Address of byte `offset` (`offset <= len`).
    pub(crate) fn ptr(&self, offset: u64) -> *const u8 {
        assert!(offset <= self.len(), "offset checked by the caller");
        // SAFETY: `offset` is at most the mapping's length, so the result is
        // inside the mapping or one past its end.
        unsafe { self.map.as_ptr().add(offset as usize) }
    }
}

#[cfg(test)]
mod tests;
