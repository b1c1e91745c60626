//! What lives in shared memory, and where.
//!
//! ```text
//! ring memfd (publisher: read-write; subscribers: read-only fd, PROT_READ)
//!   page 0        Control: magic, capacity, data offset, then one cache line
//!                 each for head, horizon, writer_wait, closed
//!   page 1..      the ring: `capacity` bytes of 64-byte aligned records,
//!                 mapped twice in a row so that a record that wraps around
//!                 the end is contiguous in memory
//!
//! record at position P (P % 64 == 0; physical offset P % capacity)
//!   +0   stamp        u64  = P; the only word accessed atomically
//!   +8   rec_len      u64  whole record, a multiple of 64
//!   +16  payload_len  u64
//!   +24  env_len      u32  envelope (transport_core::codec prefix + header)
//!   +28  kind         u32  1 = frame, 2 = skip (space given up by a displaced loan)
//!   +32  seq          u64  the frame's sequence number
//!   +40  zero to +64
//!   +64  payload, padded to 64 (64-byte aligned for vector copies)
//!   then the envelope, padded to 64 (after the payload, so that a loan can
//!   be handed out before its topic and metadata are known)
//!
//! reader page memfd (subscriber: read-write; publisher: PROT_READ)
//!   +0   magic
//!   +64  cursor   position up to which this reader is done with the ring
//!   +128 park     bumped each time the reader goes to sleep
//! ```
//!
//! Positions are byte offsets that only grow (2^64 bytes never wrap), so a
//! position names one record forever: that is what makes `stamp` and the
//! `horizon` comparisons below sound.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;

use transport_core::codec::{MAX_HEADER, PREFIX_LEN};

use crate::sys::{self, Mapping};

/// Records start on, and are padded to, this many bytes.
pub(crate) const ALIGN: u64 = 64;
/// Size of a record header.
pub(crate) const RECORD_HEADER: u64 = 64;
/// Space reserved for the envelope of a loaned frame until its real size is
/// known (an envelope with no topic, metadata or trace fits in it).
pub(crate) const MIN_ENVELOPE: u64 = 64;
/// Largest envelope a record may carry.
pub(crate) const MAX_ENVELOPE: u64 = PREFIX_LEN as u64 + MAX_HEADER as u64;
/// Largest ring accepted (1 TiB).
pub(crate) const MAX_CAPACITY: u64 = 1 << 40;

pub(crate) const RING_MAGIC: u64 = u64::from_le_bytes(*b"FWRING01");
pub(crate) const READER_MAGIC: u64 = u64::from_le_bytes(*b"FWRDR001");

pub(crate) const KIND_FRAME: u32 = 1;
pub(crate) const KIND_SKIP: u32 = 2;

/// `n` rounded up to [`ALIGN`], or `None` on overflow.
pub(crate) fn pad(n: u64) -> Option<u64> {
    n.checked_add(ALIGN - 1).map(|v| v & !(ALIGN - 1))
}

/// Length of the record that carries `payload` bytes and an `env`-byte envelope.
pub(crate) fn record_len(payload: u64, env: u64) -> Option<u64> {
    RECORD_HEADER
        .checked_add(pad(payload)?)?
        .checked_add(pad(env)?)
}

/// One cache line holding one atomic, so that words written by different
/// sides never share a line.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Line(pub AtomicU64);

/// The control page at the start of the ring memfd.
///
/// Written by the publisher only. Subscribers map it read-only and therefore
/// only ever do `load(Relaxed)` on it, followed by `fence(Acquire)` where they
/// need acquire semantics: that is the one atomic access Rust allows on
/// read-only memory (see `core::sync::atomic`, "Atomic accesses to read-only
/// memory").
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Control {
    pub magic: AtomicU64,
    pub version: AtomicU64,
    pub capacity: AtomicU64,
    pub data_offset: AtomicU64,
    /// End of the last committed record: records below it are complete.
    pub head: Line,
    /// Oldest position still intact: the writer raises it *before* it
    /// overwrites anything below `new_end - capacity` (the seqlock word).
    pub horizon: Line,
    /// When non-zero, the writer is waiting for every reader's cursor to reach
    /// this position; a reader that crosses it sends one byte on its socket.
    pub writer_wait: Line,
    /// Non-zero once the publisher was dropped (set before it hangs up its
    /// sockets; subscribers check it before they go to sleep).
    pub closed: Line,
}

/// The page each subscriber owns and shares read-only with the publisher.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ReaderPage {
    pub magic: AtomicU64,
    /// Position up to which the reader is done with the ring.
    pub cursor: Line,
    /// Bumped each time the reader parks; the writer sends a wake-up byte
    /// when it sees a value it has not answered yet.
    pub park: Line,
}

const _: () = assert!(std::mem::size_of::<Control>() <= 4096);
const _: () = assert!(std::mem::size_of::<ReaderPage>() <= 4096);

/// A record header, as plain values (it is copied out of, or into, the ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub stamp: u64,
    pub rec_len: u64,
    pub payload_len: u64,
    pub env_len: u32,
    pub kind: u32,
    pub seq: u64,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER as usize] {
        let mut b = [0u8; RECORD_HEADER as usize];
        b[0..8].copy_from_slice(&self.stamp.to_le_bytes());
        b[8..16].copy_from_slice(&self.rec_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.env_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.kind.to_le_bytes());
        b[32..40].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; RECORD_HEADER as usize]) -> RecordHeader {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        RecordHeader {
            stamp: u64_at(0),
            rec_len: u64_at(8),
            payload_len: u64_at(16),
            env_len: u32_at(24),
            kind: u32_at(28),
            seq: u64_at(32),
        }
    }

    /// Checks a header read at position `pos` of a ring of `capacity` bytes
    /// whose committed head is `head`. A header that fails is either torn
    /// (the writer lapped the reader: the caller checks the horizon) or the
    /// ring is corrupt.
    pub fn check(&self, pos: u64, capacity: u64, head: u64) -> Result<(), String> {
        if self.stamp != pos {
            return Err(format!("record at {pos} is stamped {}", self.stamp));
        }
        if self.rec_len < RECORD_HEADER
            || !self.rec_len.is_multiple_of(ALIGN)
            || self.rec_len > capacity
        {
            return Err(format!("record at {pos} has length {}", self.rec_len));
        }
        if pos.checked_add(self.rec_len).is_none_or(|end| end > head) {
            return Err(format!(
                "record at {pos} of {} bytes runs past the head {head}",
                self.rec_len
            ));
        }
        match self.kind {
            KIND_SKIP if self.payload_len == 0 && self.env_len == 0 => Ok(()),
            KIND_FRAME => {
                let env = u64::from(self.env_len);
                if !(PREFIX_LEN as u64..=MAX_ENVELOPE).contains(&env) {
                    return Err(format!("record at {pos} has an envelope of {env} bytes"));
                }
                if record_len(self.payload_len, env) != Some(self.rec_len) {
                    return Err(format!(
                        "record at {pos}: {} payload + {env} envelope bytes do not make {}",
                        self.payload_len, self.rec_len
                    ));
                }
                Ok(())
            }
            k => Err(format!("record at {pos} has kind {k}")),
        }
    }
}

/// A mapped ring: the control page and the mirrored data area.
///
/// The publisher's is writable, the subscribers' read-only. Pointers into it
/// are computed per access and never stored, so the `Ring` (held in an `Arc`
/// by loans and payload views) is what keeps them valid.
#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapping,
    capacity: u64,
    data_offset: usize,
}

impl Ring {
    /// Creates a ring of `capacity` bytes (a multiple of the page size):
    /// a sealed memfd, mapped read-write and pre-faulted, its control page
    /// initialised, then sealed against any future writable mapping. Returns
    /// the ring and a read-only fd to hand to subscribers.
    pub fn create(capacity: u64) -> io::Result<(Ring, OwnedFd)> {
        let page = sys::page_size();
        let cap = usize::try_from(capacity).map_err(io::Error::other)?;
        let file_len = (page as u64)
            .checked_add(capacity)
            .ok_or_else(|| io::Error::other("ring too large"))?;
        let fd = sys::memfd_sealed("framewire-shm-ring", file_len)?;
        let map = Mapping::map_mirrored(fd.as_fd(), page, cap, true, true)?;
        // No fd can map the ring writable from now on: neither ours (closed
        // below) nor a reopen of the read-only one through /proc.
        sys::seal_future_write(fd.as_fd())?;
        let ro = sys::reopen_read_only(fd.as_fd())?;
        drop(fd);
        let ring = Ring {
            map,
            capacity,
            data_offset: page,
        };
        let c = ring.control();
        use std::sync::atomic::Ordering::Relaxed;
        c.version.store(u64::from(crate::proto::VERSION), Relaxed);
        c.capacity.store(capacity, Relaxed);
        c.data_offset.store(page as u64, Relaxed);
        // Published to subscribers by the SCM_RIGHTS hand-off (a syscall
        // after these stores), so relaxed stores suffice.
        c.magic.store(RING_MAGIC, Relaxed);
        Ok((ring, ro))
    }

    /// Maps a ring received from a publisher, read-only, with both views of
    /// the data pre-faulted. The caller has checked the fd's size and seals.
    pub fn attach(fd: BorrowedFd<'_>, capacity: u64, data_offset: u64) -> io::Result<Ring> {
        let cap = usize::try_from(capacity).map_err(io::Error::other)?;
        let off = usize::try_from(data_offset).map_err(io::Error::other)?;
        let map = Mapping::map_mirrored(fd, off, cap, false, true)?;
        Ok(Ring {
            map,
            capacity,
            data_offset: off,
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn control(&self) -> &Control {
        // SAFETY: the mapping starts with the control page: page-aligned
        // (so aligned for `Control`), at least a page long, and it lives as
        // long as `self`. `Control` is made of atomics only, for which every
        // bit pattern is valid. On read-only mappings callers only use
        // `load(Relaxed)`, which Rust allows on read-only memory.
        unsafe { &*self.map.as_ptr().cast::<Control>() }
    }

    /// Address of ring position `pos` in the first view of the data.
    ///
    /// The returned pointer is valid for `capacity` bytes (the second view
    /// continues the first), and 64-byte aligned when `pos` is.
    pub fn ptr(&self, pos: u64) -> *mut u8 {
        // `pos % capacity < capacity <= usize::MAX` (checked at creation).
        let off = self.data_offset + (pos % self.capacity) as usize;
        // SAFETY: `data_offset + capacity * 2` is the mapping's length, so
        // `off < data_offset + capacity` is inside it.
        unsafe { self.map.as_ptr().add(off) }
    }

    /// The stamp word of the record at `pos` (a multiple of [`ALIGN`]).
    pub fn stamp(&self, pos: u64) -> &AtomicU64 {
        debug_assert_eq!(pos % ALIGN, 0);
        // SAFETY: `ptr(pos)` is 64-byte aligned (pos is, and the data area
        // starts on a page) and valid for 8 bytes; `AtomicU64` accepts any
        // bits. The stamp word is only ever accessed atomically (`Relaxed`
        // loads on read-only mappings).
        unsafe { &*self.ptr(pos).cast::<AtomicU64>() }
    }

    /// Copies `dst.len()` ring bytes starting at `pos` into `dst`.
    ///
    /// The bytes may be changing under the copy (a writer lapping a reader
    /// under `drop-oldest`): the copy is byte-wise atomic (see
    /// [`crate::copy`]), so that is no data race, and callers treat the
    /// result as untrusted until the seqlock check after the copy passes
    /// (`u8` has no invalid values).
    pub fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        assert!(
            dst.len() as u64 <= self.capacity,
            "copy larger than the ring"
        );
        // SAFETY: the source range lies within the two views of the data
        // (`len <= capacity`, see `ptr`), which stay mapped while `self`
        // lives; the destination is a distinct, exclusively borrowed buffer.
        // Concurrent writes come from another mapping (another process, or
        // the publisher's own view), which `copy::copy` allows; no Rust
        // reference to the source bytes exists.
        unsafe { crate::copy::copy(dst.as_mut_ptr(), self.ptr(pos), dst.len()) }
    }

    /// Copies `src` into the ring at `pos`.
    ///
    /// # Safety
    /// The ring must be the publisher's (writable) and the caller must own
    /// `[pos, pos + src.len())`: made room for it (raised the horizon past
    /// anything it overwrites) and lent none of it to a live loan.
    pub unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        debug_assert!(self.map.writable());
        assert!(
            src.len() as u64 <= self.capacity,
            "copy larger than the ring"
        );
        let dst = self.ptr(pos);
        let overlap = (src.as_ptr() as usize) < dst as usize + src.len()
            && (dst as usize) < src.as_ptr() as usize + src.len();
        if overlap {
            // Only a view of this very ring could overlap (the payload of a
            // displaced loan), and `make_room` keeps it apart from the new
            // record; should that ever fail, move the bytes correctly anyway.
            // SAFETY: in bounds as in `copy_out`, writable and owned per this
            // function's contract; `ptr::copy` allows overlap.
            unsafe { std::ptr::copy(src.as_ptr(), dst, src.len()) };
        } else {
            // SAFETY: in bounds as in `copy_out`; writable and owned per this
            // function's contract; the ranges do not overlap (checked). A
            // lapped reader may be reading the destination meanwhile: the
            // byte-wise atomic copy makes that no data race.
            unsafe { crate::copy::copy(dst, src.as_ptr(), src.len()) };
        }
    }
}

/// A mapped reader page (read-write for its subscriber, read-only for the
/// publisher).
#[derive(Debug)]
pub(crate) struct PageMap {
    map: Mapping,
}

impl PageMap {
    /// Creates a reader page: a sealed one-page memfd mapped read-write.
    pub fn create() -> io::Result<(PageMap, OwnedFd)> {
        let page = sys::page_size();
        let fd = sys::memfd_sealed("framewire-shm-ring-reader", page as u64)?;
        sys::seal_seals(fd.as_fd())?;
        let map = Mapping::map(fd.as_fd(), page, true, true)?;
        let p = PageMap { map };
        p.get()
            .magic
            .store(READER_MAGIC, std::sync::atomic::Ordering::Relaxed);
        Ok((p, fd))
    }

    /// Maps a page received from a subscriber, read-only. The caller has
    /// checked the fd's size and seals.
    pub fn attach(fd: BorrowedFd<'_>) -> io::Result<PageMap> {
        Ok(PageMap {
            map: Mapping::map(fd, sys::page_size(), false, false)?,
        })
    }

    pub fn get(&self) -> &ReaderPage {
        // SAFETY: a page-aligned mapping of a whole page, alive as long as
        // `self`; `ReaderPage` is atomics only (any bits valid). The
        // publisher's mapping is read-only and it only uses `load(Relaxed)`.
        unsafe { &*self.map.as_ptr().cast::<ReaderPage>() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lengths() {
        assert_eq!(pad(0), Some(0));
        assert_eq!(pad(1), Some(64));
        assert_eq!(pad(64), Some(64));
        assert_eq!(pad(u64::MAX), None);
        assert_eq!(record_len(0, 45), Some(128));
        assert_eq!(record_len(1 << 20, 100), Some(64 + (1 << 20) + 128));
        assert_eq!(record_len(u64::MAX - 10, 1), None);
    }

    #[test]
    fn headers_round_trip_and_are_checked() {
        let h = RecordHeader {
            stamp: 640,
            rec_len: record_len(100, 50).unwrap(),
            payload_len: 100,
            env_len: 50,
            kind: KIND_FRAME,
            seq: 9,
        };
        assert_eq!(RecordHeader::decode(&h.encode()), h);
        assert_eq!(h.check(640, 1 << 20, 640 + h.rec_len), Ok(()));
        assert!(h.check(704, 1 << 20, 1 << 30).is_err(), "wrong stamp");
        assert!(
            h.check(640, 1 << 20, 640 + h.rec_len - 64).is_err(),
            "past the head"
        );
        assert!(h.check(640, 128, 1 << 30).is_err(), "longer than the ring");
        let bad_env = RecordHeader { env_len: 10, ..h };
        assert!(bad_env.check(640, 1 << 20, 1 << 30).is_err());
        let bad_len = RecordHeader {
            payload_len: 1000,
            ..h
        };
        assert!(bad_len.check(640, 1 << 20, 1 << 30).is_err());
        let skip = RecordHeader {
            stamp: 640,
            rec_len: 192,
            payload_len: 0,
            env_len: 0,
            kind: KIND_SKIP,
            seq: 0,
        };
        assert_eq!(skip.check(640, 1 << 20, 832), Ok(()));
        assert!(
            RecordHeader { kind: 7, ..skip }
                .check(640, 1 << 20, 832)
                .is_err()
        );
        assert!(
            RecordHeader {
                rec_len: 100,
                ..skip
            }
            .check(640, 1 << 20, 832)
            .is_err()
        );
    }

    #[test]
    fn a_record_that_wraps_is_contiguous() {
        let page = sys::page_size() as u64;
        let (ring, ro) = Ring::create(page * 2).unwrap();
        let reader = Ring::attach(ro.as_fd(), page * 2, page).unwrap();
        let pos = page * 2 - 64 + page * 2 * 5; // 64 bytes before the end, 5 laps on
        let data: Vec<u8> = (0..200u8).collect();
        // SAFETY: a fresh ring with no reader and no loan: we own every byte.
        unsafe { ring.copy_in(pos, &data) };
        let mut out = vec![0u8; 200];
        reader.copy_out(pos, &mut out);
        assert_eq!(out, data);
        let mut start = vec![0u8; 136];
        reader.copy_out(0, &mut start);
        assert_eq!(
            start,
            data[64..],
            "the wrapped tail is at the start of the ring"
        );
        assert_eq!(
            reader
                .control()
                .magic
                .load(std::sync::atomic::Ordering::Relaxed),
            RING_MAGIC
        );
    }
}
