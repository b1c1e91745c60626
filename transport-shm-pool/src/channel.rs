//! The channel each subscriber shares with its publisher: a small sealed
//! memfd the subscriber creates and maps read-write, as does its publisher.
//! It holds the claim words, the descriptor ring (publisher -> subscriber),
//! the release ring (subscriber -> publisher) and the words that decide who
//! wakes whom. Everything in it is read and written with atomics only, and
//! each side treats what the other side can write as untrusted: the
//! publisher validates every release against its own accounting and never
//! lets a ring index of the subscriber's make it write outside its ring; a
//! subscriber checks every descriptor as it did when they came over the
//! socket.
//!
//! ```text
//! offset   0  desc_head   u64  descriptors published (publisher writes)
//! offset  64  desc_tail   u64  descriptors consumed (subscriber writes)
//! offset 128  parked      u64  1: the subscriber is about to wait (both write)
//! offset 192  rel_head    u64  releases published (subscriber writes)
//! offset 256  rel_tail    u64  releases consumed (publisher writes)
//! offset 320  kick        u64  what the publisher waits for (both write)
//! offset 384  wake_seq    u32  futex word a parked subscriber waits on (publisher bumps)
//! offset 512  claim words, one u64 per claim index
//! page        descriptor ring: desc_capacity entries of DESC_ENTRY bytes
//! then        release ring: rel_capacity entries of 16 bytes
//! ```
//!
//! # Descriptors
//!
//! The publisher writes an entry, stamps its first word with the entry's
//! position (release), then stores the new head (SeqCst); the subscriber
//! sees the stamp (or, when parking, the head), copies the entry out, then
//! stores its tail (at the latest at its next `recv`). A spinning
//! subscriber polls the stamp, not the head: the cache line it waits on is
//! the one it reads next.
//! An entry is a pool-slot descriptor (DESC), a forwarded one (FWD), both
//! with the frame header inline, or a *socket marker*: "the next message on
//! the socket comes here" (a descriptor whose header is too long for an
//! entry, SEGMENT, FORGET). Markers put the socket's messages in the ring's
//! order, so the ring is the one order of everything a subscriber receives.
//! When the ring is full (a subscriber that does not read, under
//! `drop-oldest`), the publisher writes its last free entry as a *spill*
//! marker and goes on over the socket, as before version 5, up to a RESUME
//! message; the ring then goes on after the spill marker. So a stalled
//! subscriber costs what it cost before: its socket buffer, then the
//! publisher's bounded queue.
//!
//! # Parking
//!
//! A subscriber that finds the ring empty stores `parked = 1` (SeqCst),
//! loads the head again, and only if it is still empty waits on its socket.
//! The publisher stores the head (SeqCst), then loads `parked`; only if it
//! is set does it swap it to 0 and write a WAKE to the socket. A subscriber
//! that waits on the thread that called `recv` (a multi-thread runtime, the
//! blocking API) parks with `parked = 2` instead, after loading `wake_seq`:
//! it then waits with `FUTEX_WAIT` (shared: the word is in a memfd both map)
//! for `wake_seq` to change, and the publisher that swaps a 2 out of
//! `parked` bumps `wake_seq` and calls `FUTEX_WAKE`: the kernel wakes that
//! very thread, with no message, no reactor and no other thread on the way.
//! The futex wait is bounded (a slice of 20 ms), after which the subscriber
//! parks on its socket as above (so a publisher's death, seen on the
//! socket, is noticed within the slice). A bump between the subscriber's
//! load of `wake_seq` and its `FUTEX_WAIT` makes the wait return at once:
//! no wake-up is lost there either. In the single
//! total order of SeqCst operations, either the subscriber's second load
//! sees the new head or the publisher's load sees `parked`: no wake-up is
//! lost, and a subscriber that is not parked costs the publisher no system
//! call. The same pattern guards the other direction with `kick`: a
//! publisher that waits for releases (or for room in the ring) sets its bit
//! there, then looks again; a subscriber that publishes a release (or
//! consumes a descriptor) then sees the bit and writes a WAKE.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::sys;

/// A reference to one frame in shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// The segment (memfd inode number).
    pub segment: u64,
    /// The slot.
    pub index: u32,
    /// The slot's generation when the frame was written.
    pub generation: u64,
    /// Payload length.
    pub len: u64,
    /// Frames the publisher dropped for this subscriber since the previous descriptor.
    pub missed: u64,
}

/// A reference to one forwarded frame: a byte range of a forwarded segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwdDesc {
    /// The forwarded segment's index (announced by a SEGMENT).
    pub segment: u32,
    /// The claim index: `slots + forward slot`.
    pub index: u32,
    /// The forward slot's generation.
    pub generation: u64,
    /// Where the payload starts in the segment.
    pub offset: u64,
    /// Payload length.
    pub len: u64,
    /// Frames the publisher dropped for this subscriber since the previous descriptor.
    pub missed: u64,
}

/// State of a claim word: the publisher sent a descriptor.
pub const OFFERED: u64 = 1;
/// State of a claim word: the subscriber took the descriptor (reads the slot).
pub const TAKEN: u64 = 2;
/// State of a claim word: the publisher took the descriptor back unread.
pub const RECLAIMED: u64 = 3;
/// Largest generation a claim word can carry.
pub const MAX_GENERATION: u64 = (1 << 62) - 1;

const W_DESC_HEAD: u64 = 0;
const W_DESC_TAIL: u64 = 64;
const W_PARKED: u64 = 128;
const W_REL_HEAD: u64 = 192;
const W_REL_TAIL: u64 = 256;
const W_KICK: u64 = 320;
const W_WAKE_SEQ: u64 = 384;
/// Offset of the first claim word.
const CLAIMS_HEADER: u64 = 512;

/// Bytes of one descriptor-ring entry.
pub const DESC_ENTRY: u64 = 512;
/// Words of an entry before its inline header.
const ENTRY_FIELDS: u64 = 6;
/// Longest frame header (prefix included) that travels inline in the ring;
/// a longer one goes over the socket behind a marker.
pub const INLINE_HEADER: usize = (DESC_ENTRY - 8 * ENTRY_FIELDS) as usize;
/// Bytes of one release-ring entry (claim index, generation).
const REL_ENTRY: u64 = 16;

const KIND_DESC: u64 = 1;
const KIND_FWD: u64 = 2;
const KIND_SOCKET: u64 = 3;
const KIND_SPILL: u64 = 4;

/// `parked` value: the subscriber waits on its socket (wake with WAKE).
const PARKED_SOCKET: u64 = 1;
/// `parked` value: the subscriber waits on `wake_seq` (wake with a futex).
const PARKED_FUTEX: u64 = 2;

/// How a parked subscriber wants to be woken ([`ClaimTable::take_parked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parked {
    /// A WAKE message on the socket.
    Socket,
    /// A bump of `wake_seq` and a `FUTEX_WAKE` ([`ClaimTable::wake_futex`]).
    Futex,
}

/// `kick` bit: the publisher waits for releases (every slot is held).
pub const KICK_RELEASES: u64 = 1;
/// `kick` bit: the publisher waits for room in the descriptor ring.
pub const KICK_SPACE: u64 = 2;

/// Claim words of a subscriber's table for a pool of `slots` slots: one per
/// pool slot, then one per forward slot (as many as pool slots).
pub fn claim_entries(slots: u32) -> u32 {
    slots.saturating_mul(2)
}

/// Entries of the descriptor ring for `entries` claim words: enough for one
/// descriptor per claim (so that under `block` and `fail` the ring never
/// fills), at most 512 (256 KiB).
fn desc_capacity(entries: u32) -> u64 {
    u64::from(entries).next_power_of_two().clamp(8, 512)
}

/// Entries of the release ring: one per claim.
fn rel_capacity(entries: u32) -> u64 {
    u64::from(entries).next_power_of_two().clamp(8, 1 << 14)
}

fn desc_offset(entries: u32) -> u64 {
    sys::page_align(CLAIMS_HEADER + 8 * u64::from(entries)).unwrap_or(u64::MAX / 4)
}

fn rel_offset(entries: u32) -> u64 {
    desc_offset(entries) + desc_capacity(entries) * DESC_ENTRY
}

/// Bytes of a subscriber's channel for `entries` claim words.
pub fn claims_len(entries: u32) -> u64 {
    sys::page_align(rel_offset(entries) + rel_capacity(entries) * REL_ENTRY).unwrap_or(u64::MAX)
}

/// What [`ClaimTable::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// The descriptor is ours to read until released.
    Taken,
    /// The publisher took it back (drop-oldest): skip it.
    Stale,
    /// No such offer was made.
    Invalid,
}

/// One entry of the descriptor ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A pool slot, with the frame header.
    Desc(Desc, Bytes),
    /// A forwarded frame, with the frame header.
    Fwd(FwdDesc, Bytes),
    /// The next message on the socket comes here.
    Socket,
    /// The ring was full: every message on the socket up to RESUME comes
    /// here, then the ring goes on after this entry.
    Spill,
}

/// A descriptor ring the publisher broke (hostile or buggy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRing(pub String);

/// The subscriber-owned, publisher-writable channel: claim words and rings.
pub(crate) struct ClaimTable {
    map: sys::Mapping,
    entries: u32,
}

impl std::fmt::Debug for ClaimTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimTable")
            .field("entries", &self.entries)
            .finish()
    }
}

/// Word 0 of a descriptor-ring entry: its kind (bits 0-7), the inline
/// header's length (bits 8-23) and the low 32 bits of its position in the
/// ring (bits 32-63), its *stamp*: stored last, with release, it tells a
/// subscriber that the entry at that position is published.
fn entry_word(kind: u64, header_len: usize, pos: u64) -> u64 {
    kind | (header_len as u64 & 0xffff) << 8 | u64::from(pos as u32) << 32
}

/// True when `w0` is the word 0 of a published entry at `pos`: a kind
/// (zero memory has none) and the stamp of that very position (an entry
/// of an earlier lap has another).
fn stamped(w0: u64, pos: u64) -> bool {
    w0 & 0xff != 0 && (w0 >> 32) as u32 == pos as u32
}

fn word_of(generation: u64, state: u64) -> u64 {
    (generation << 2) | state
}

impl ClaimTable {
    /// Subscriber side: a fresh, sealed table, and the fd to hand over.
    pub(crate) fn create(entries: u32) -> io::Result<(ClaimTable, OwnedFd)> {
        let len = claims_len(entries);
        let fd = sys::memfd_sealed("framewire-shm-pool-claims", len)?;
        sys::seal_seals(fd.as_fd())?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let map = sys::Mapping::map(fd.as_fd(), len, true, true)?;
        Ok((ClaimTable { map, entries }, fd))
    }

    /// Publisher side: maps the table a subscriber sent, after checking that it
    /// is a sealed memfd large enough (so touching it can never SIGBUS).
    pub(crate) fn open(fd: &OwnedFd, entries: u32) -> io::Result<ClaimTable> {
        let len = claims_len(entries);
        sys::check_sealed(fd.as_fd(), len)?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let map = sys::Mapping::map(fd.as_fd(), len, true, true)?;
        Ok(ClaimTable { map, entries })
    }

    fn at(&self, offset: u64) -> &AtomicU64 {
        assert!(offset & 7 == 0 && offset + 8 <= self.map.len() as u64);
        // SAFETY: the offset is 8-aligned and inside the mapping (asserted
        // above; every caller computes it from the layout, so this never
        // fires); the mapping is page aligned, so the address is aligned for
        // `AtomicU64`. The mapping lives as long as `self`, and the memfd is
        // sealed against shrinking, so the page stays there. Both processes
        // touch these words only through atomics.
        unsafe { &*self.map.as_ptr().add(offset as usize).cast::<AtomicU64>() }
    }

    fn at32(&self, offset: u64) -> &AtomicU32 {
        assert!(offset & 3 == 0 && offset + 4 <= self.map.len() as u64);
        // SAFETY: as for `at`: 4-aligned, inside the mapping, which lives
        // as long as `self` and cannot shrink. The word is only ever
        // touched as an `AtomicU32` (and by the kernel's futex calls).
        unsafe { &*self.map.as_ptr().add(offset as usize).cast::<AtomicU32>() }
    }

    fn word(&self, index: u32) -> Option<&AtomicU64> {
        (index < self.entries).then(|| self.at(CLAIMS_HEADER + 8 * u64::from(index)))
    }

    /// Publisher: a descriptor for `index` at `generation` is about to be sent.
    pub(crate) fn offer(&self, index: u32, generation: u64) {
        if let Some(w) = self.word(index) {
            // Release: pairs with the subscriber's acquire in `take`, so the
            // slot's contents written before are visible to it.
            w.store(word_of(generation, OFFERED), Ordering::Release);
        }
    }

    /// Publisher: takes an unread descriptor back. False when the subscriber
    /// already took it (it holds the slot until it releases it).
    pub(crate) fn reclaim(&self, index: u32, generation: u64) -> bool {
        self.word(index).is_some_and(|w| {
            // AcqRel/Acquire: the one CAS that decides against `take`'s CAS.
            w.compare_exchange(
                word_of(generation, OFFERED),
                word_of(generation, RECLAIMED),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        })
    }

    /// Subscriber: the generation of the claim on `index` it has taken and
    /// not yet seen re-offered (`None` if the word is not `TAKEN`). While a
    /// view of that slot is alive this is the view's generation.
    pub(crate) fn taken_generation(&self, index: u32) -> Option<u64> {
        let w = self.word(index)?.load(Ordering::Acquire);
        (w & 3 == TAKEN).then_some(w >> 2)
    }

    /// Subscriber: claims the descriptor before reading the slot.
    pub(crate) fn take(&self, index: u32, generation: u64, may_reclaim: bool) -> Take {
        let Some(w) = self.word(index) else {
            return Take::Invalid;
        };
        if generation == 0 || generation > MAX_GENERATION {
            return Take::Invalid;
        }
        // AcqRel: acquire pairs with `offer`'s release (the slot's bytes are
        // written before); the CAS decides against `reclaim`'s CAS.
        match w.compare_exchange(
            word_of(generation, OFFERED),
            word_of(generation, TAKEN),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Take::Taken,
            Err(cur) => {
                let (g, state) = (cur >> 2, cur & 3);
                if may_reclaim && (g > generation || (g == generation && state == RECLAIMED)) {
                    Take::Stale
                } else {
                    Take::Invalid
                }
            }
        }
    }

    // ---- descriptor ring -------------------------------------------------

    fn desc_word(&self, pos: u64, k: u64) -> &AtomicU64 {
        let cap = desc_capacity(self.entries);
        self.at(desc_offset(self.entries) + (pos & (cap - 1)) * DESC_ENTRY + 8 * k)
    }

    /// Publisher: true when the ring has room for one more entry after
    /// `head` (the publisher's own count). A tail the subscriber wrote that
    /// is ahead of `head` or further behind than the ring is long counts as
    /// no room: a hostile value never makes the publisher overwrite an
    /// entry it has not seen consumed.
    #[cfg(test)]
    pub(crate) fn desc_space(&self, head: u64) -> bool {
        self.desc_room(head) > 0
    }

    /// Publisher: free entries after `head` (0 for a tail the subscriber
    /// broke, see [`desc_space`](Self::desc_space)).
    pub(crate) fn desc_room(&self, head: u64) -> u64 {
        let tail = self.at(W_DESC_TAIL).load(Ordering::SeqCst);
        desc_capacity(self.entries).saturating_sub(head.wrapping_sub(tail))
    }

    /// Publisher: writes `entry` at `*head` and publishes it. The caller
    /// checked [`desc_space`](Self::desc_space). A header longer than
    /// [`INLINE_HEADER`] must go as a marker.
    pub(crate) fn push_desc(&self, head: &mut u64, entry: &Entry) {
        let pos = *head;
        let w = |k| self.desc_word(pos, k);
        let (kind, header): (u64, &[u8]) = match entry {
            Entry::Desc(d, h) => {
                w(1).store(u64::from(d.index), Ordering::Relaxed);
                w(2).store(d.generation, Ordering::Relaxed);
                w(3).store(d.len, Ordering::Relaxed);
                w(4).store(d.segment, Ordering::Relaxed);
                w(5).store(d.missed, Ordering::Relaxed);
                (KIND_DESC, h)
            }
            Entry::Fwd(d, h) => {
                w(1).store(
                    u64::from(d.index) | u64::from(d.segment) << 32,
                    Ordering::Relaxed,
                );
                w(2).store(d.generation, Ordering::Relaxed);
                w(3).store(d.len, Ordering::Relaxed);
                w(4).store(d.offset, Ordering::Relaxed);
                w(5).store(d.missed, Ordering::Relaxed);
                (KIND_FWD, h)
            }
            Entry::Socket => (KIND_SOCKET, &[]),
            Entry::Spill => (KIND_SPILL, &[]),
        };
        debug_assert!(header.len() <= INLINE_HEADER);
        let header = &header[..header.len().min(INLINE_HEADER)];
        for (k, chunk) in header.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            w(ENTRY_FIELDS + k as u64).store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        // Release: the entry's other words are visible to a subscriber
        // that sees this one stamped with its position (`desc_stamped`).
        w(0).store(entry_word(kind, header.len(), pos), Ordering::Release);
        *head = pos.wrapping_add(1);
        // SeqCst: publishes the entry (release) and orders this store before
        // the load of `parked` in `take_parked` (see "Parking").
        self.at(W_DESC_HEAD).store(*head, Ordering::SeqCst);
    }

    /// Subscriber: true when an entry is waiting after `tail`, by the head
    /// (SeqCst: the load that parking orders after its store of `parked`).
    pub(crate) fn desc_ready(&self, tail: u64) -> bool {
        self.at(W_DESC_HEAD).load(Ordering::SeqCst) != tail
    }

    /// Subscriber: true when the entry at `tail` is stamped with its
    /// position, i.e. published. What a spinning subscriber polls: the
    /// line it waits on is the one it then reads, so the hand-off costs one
    /// cache-line transfer, not two (head, then entry). A hint only: the
    /// entry is checked by [`peek_desc`](Self::peek_desc) all the same.
    pub(crate) fn desc_stamped(&self, tail: u64) -> bool {
        stamped(self.desc_word(tail, 0).load(Ordering::Acquire), tail)
    }

    /// Subscriber: the entry at `tail` (the subscriber's own count), if the
    /// publisher has published one; not consumed until
    /// [`consume_desc`](Self::consume_desc). Every word is copied out with
    /// atomic loads before anything is decided on it.
    pub(crate) fn peek_desc(&self, tail: u64) -> Result<Option<Entry>, BadRing> {
        // Acquire: pairs with the release store of the stamp in `push_desc`.
        let mut w0 = self.desc_word(tail, 0).load(Ordering::Acquire);
        if !stamped(w0, tail) {
            // Not stamped (yet): the head says whether the publisher
            // published it; one it did publish is stamped by now (the
            // stamp is stored before the head, and this load acquires it).
            let head = self.at(W_DESC_HEAD).load(Ordering::SeqCst);
            let avail = head.wrapping_sub(tail);
            if avail == 0 {
                return Ok(None);
            }
            if avail > desc_capacity(self.entries) {
                return Err(BadRing(format!(
                    "descriptor ring head {head} is {avail} entries past the tail {tail} (capacity {})",
                    desc_capacity(self.entries)
                )));
            }
            w0 = self.desc_word(tail, 0).load(Ordering::Acquire);
            if !stamped(w0, tail) {
                return Err(BadRing(format!(
                    "descriptor ring entry {tail} is published (head {head}) but not stamped with its position"
                )));
            }
        }
        let w = |k| self.desc_word(tail, k).load(Ordering::Relaxed);
        let (kind, hlen) = (w0 & 0xff, ((w0 >> 8) & 0xffff) as usize);
        if hlen > INLINE_HEADER {
            return Err(BadRing(format!(
                "descriptor ring entry with a header of {hlen} bytes (at most {INLINE_HEADER} inline)"
            )));
        }
        let mut header = Vec::with_capacity(hlen);
        for k in 0..hlen.div_ceil(8) {
            let b = w(ENTRY_FIELDS + k as u64).to_le_bytes();
            let n = (hlen - 8 * k).min(8);
            header.extend_from_slice(&b[..n]);
        }
        let header = Bytes::from(header);
        let (w1, w2, w3, w4, w5) = (w(1), w(2), w(3), w(4), w(5));
        Ok(Some(match kind {
            KIND_DESC => Entry::Desc(
                Desc {
                    segment: w4,
                    index: u32::try_from(w1).unwrap_or(u32::MAX),
                    generation: w2,
                    len: w3,
                    missed: w5,
                },
                header,
            ),
            KIND_FWD => Entry::Fwd(
                FwdDesc {
                    segment: (w1 >> 32) as u32,
                    index: w1 as u32,
                    generation: w2,
                    offset: w4,
                    len: w3,
                    missed: w5,
                },
                header,
            ),
            KIND_SOCKET => Entry::Socket,
            KIND_SPILL => Entry::Spill,
            k => {
                return Err(BadRing(format!(
                    "descriptor ring entry of unknown kind {k}"
                )));
            }
        }))
    }

    /// Subscriber: the entry at `*tail` is done with; its room goes back.
    /// True when the publisher waits for that room (the caller wakes it).
    pub(crate) fn consume_desc(&self, tail: &mut u64) -> bool {
        *tail = tail.wrapping_add(1);
        self.publish_tail(*tail)
    }

    /// Subscriber: gives back the room of every entry before `tail` (its
    /// own count, advanced past entries already copied out). True when the
    /// publisher waits for that room (the caller wakes it). A subscriber
    /// may call this later than it consumed (at its next `recv`), so that
    /// the store and its fence are not part of a frame's hand-off.
    pub(crate) fn publish_tail(&self, tail: u64) -> bool {
        // SeqCst: ordered before the load of `kick` (see "Parking").
        self.at(W_DESC_TAIL).store(tail, Ordering::SeqCst);
        self.take_kick(KICK_SPACE)
    }

    /// Subscriber: about to wait for the socket. The caller checks the ring
    /// again afterwards, and waits only if it is still empty.
    pub(crate) fn park(&self) {
        self.at(W_PARKED).store(PARKED_SOCKET, Ordering::SeqCst);
    }

    /// Subscriber: about to wait with [`futex_wait`](Self::futex_wait); the
    /// returned value is what it waits on. As for [`park`](Self::park), the
    /// caller checks the ring again before it waits.
    pub(crate) fn park_futex(&self) -> u32 {
        // Loaded before `parked` is set: a bump after the publisher saw
        // the 2 changes the word from this value, so the wait returns.
        let seq = self.at32(W_WAKE_SEQ).load(Ordering::SeqCst);
        self.at(W_PARKED).store(PARKED_FUTEX, Ordering::SeqCst);
        seq
    }

    /// Subscriber: waits (this thread, in the kernel) until the publisher
    /// bumps `wake_seq` away from `seq`, or `timeout`, or a signal. The
    /// caller looks at the ring afterwards whatever happened.
    pub(crate) fn futex_wait(&self, seq: u32, timeout: Duration) {
        let t = rustix::thread::futex::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // Shared (no PRIVATE flag): the publisher wakes through its own
        // mapping of the same memfd page. EAGAIN (already bumped), EINTR
        // and ETIMEDOUT all mean "look again".
        let _ = rustix::thread::futex::wait(
            self.at32(W_WAKE_SEQ),
            rustix::thread::futex::Flags::empty(),
            seq,
            Some(&t),
        );
    }

    /// Publisher: wakes a subscriber parked with
    /// [`park_futex`](Self::park_futex) (after [`take_parked`](Self::take_parked)
    /// said [`Parked::Futex`]). One atomic add and one system call; harmless
    /// whatever a hostile subscriber wrote in the word.
    pub(crate) fn wake_futex(&self) {
        let w = self.at32(W_WAKE_SEQ);
        w.fetch_add(1, Ordering::SeqCst);
        let _ = rustix::thread::futex::wake(w, rustix::thread::futex::Flags::empty(), 1);
    }

    /// Subscriber: no longer waiting.
    pub(crate) fn unpark(&self) {
        self.at(W_PARKED).store(0, Ordering::SeqCst);
    }

    /// Publisher, after publishing entries: `Some` (once per park) when the
    /// subscriber is parked and must be woken, and how. Any other non-zero
    /// value a subscriber wrote counts as a socket park (a WAKE is always
    /// safe to send).
    pub(crate) fn take_parked(&self) -> Option<Parked> {
        let w = self.at(W_PARKED);
        if w.load(Ordering::SeqCst) == 0 {
            return None;
        }
        match w.swap(0, Ordering::SeqCst) {
            0 => None,
            PARKED_FUTEX => Some(Parked::Futex),
            _ => Some(Parked::Socket),
        }
    }

    // ---- release ring ----------------------------------------------------

    fn rel_word(&self, pos: u64, k: u64) -> &AtomicU64 {
        let cap = rel_capacity(self.entries);
        self.at(rel_offset(self.entries) + (pos & (cap - 1)) * REL_ENTRY + 8 * k)
    }

    /// Subscriber: publishes a release of claim `index` at `generation`
    /// after `*head` (its own count). False when the ring is full (the
    /// caller sends RELEASE over the socket instead).
    pub(crate) fn push_release(&self, head: &mut u64, index: u32, generation: u64) -> bool {
        let tail = self.at(W_REL_TAIL).load(Ordering::Acquire);
        if head.wrapping_sub(tail) >= rel_capacity(self.entries) {
            return false;
        }
        self.rel_word(*head, 0)
            .store(u64::from(index), Ordering::Relaxed);
        self.rel_word(*head, 1).store(generation, Ordering::Relaxed);
        *head = head.wrapping_add(1);
        // SeqCst: publishes the entry and is ordered before the load of
        // `kick` in `take_kick` (see "Parking").
        self.at(W_REL_HEAD).store(*head, Ordering::SeqCst);
        true
    }

    /// Publisher: true when releases wait after `tail`.
    pub(crate) fn releases_pending(&self, tail: u64) -> bool {
        self.at(W_REL_HEAD).load(Ordering::SeqCst) != tail
    }

    /// Publisher: moves up to `out.capacity()` releases published after
    /// `*tail` into `out` and gives their room back. Nothing read here is
    /// trusted: a head further ahead than the ring is long is a broken
    /// ring (`Err` with what was wrong; the caller drops the peer's
    /// releases so far as stale), and each release is checked by the caller
    /// against its accounting.
    pub(crate) fn drain_releases(
        &self,
        tail: &mut u64,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), BadRing> {
        let head = self.at(W_REL_HEAD).load(Ordering::SeqCst);
        let avail = head.wrapping_sub(*tail);
        let cap = rel_capacity(self.entries);
        if avail > cap {
            return Err(BadRing(format!(
                "release ring head {head} is {avail} entries past the tail {tail} (capacity {cap})"
            )));
        }
        let n = avail.min((out.capacity() - out.len()) as u64);
        for _ in 0..n {
            out.push((
                self.rel_word(*tail, 0).load(Ordering::Relaxed),
                self.rel_word(*tail, 1).load(Ordering::Relaxed),
            ));
            *tail = tail.wrapping_add(1);
        }
        // Release: the entries were copied out before their room goes back.
        self.at(W_REL_TAIL).store(*tail, Ordering::Release);
        Ok(())
    }

    /// Publisher: skips every release published so far (after a broken
    /// ring), so that the subscriber's next ones are read again.
    pub(crate) fn skip_releases(&self, tail: &mut u64) {
        *tail = self.at(W_REL_HEAD).load(Ordering::SeqCst);
        self.at(W_REL_TAIL).store(*tail, Ordering::Release);
    }

    // ---- kicks -----------------------------------------------------------

    /// Publisher: asks to be woken for `bit` ([`KICK_RELEASES`],
    /// [`KICK_SPACE`]). The caller looks again afterwards before it waits.
    pub(crate) fn request_kick(&self, bit: u64) {
        self.at(W_KICK).fetch_or(bit, Ordering::SeqCst);
    }

    /// Subscriber: true (once per request) when the publisher asked to be
    /// woken for `bit`.
    pub(crate) fn take_kick(&self, bit: u64) -> bool {
        let w = self.at(W_KICK);
        w.load(Ordering::SeqCst) & bit != 0 && w.fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }

    /// Tests: writes a raw word of the channel (a hostile peer's view).
    #[cfg(test)]
    pub(crate) fn poke(&self, offset: u64, value: u64) {
        self.at(offset).store(value, Ordering::SeqCst);
    }

    /// Tests: the offsets of the ring words a subscriber writes.
    #[cfg(test)]
    pub(crate) const DESC_TAIL: u64 = W_DESC_TAIL;
    /// Tests: see [`DESC_TAIL`](Self::DESC_TAIL).
    #[cfg(test)]
    pub(crate) const REL_HEAD: u64 = W_REL_HEAD;
    /// Tests: see [`DESC_TAIL`](Self::DESC_TAIL).
    #[cfg(test)]
    pub(crate) const KICK: u64 = W_KICK;
    /// Tests: see [`DESC_TAIL`](Self::DESC_TAIL).
    #[cfg(test)]
    pub(crate) const PARKED: u64 = W_PARKED;
}

#[cfg(test)]
mod tests;
