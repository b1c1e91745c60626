//! Bulk copies into and out of shared memory whose bytes another process may
//! be writing (or reading) at the same time.
//!
//! A seqlock reader (an shm-ring reader lapped under `drop-oldest`, an
//! shm-pool reader copying a slot that is being reused) copies bytes that
//! the writer is overwriting, and throws the copy away when the check after
//! it fails. Plain loads (`memcpy`, SIMD
//! intrinsics) racing with a write are a data race in Rust's memory model,
//! undefined behaviour whatever is done with the result; even through a raw
//! pointer. [`copy`] is therefore a *byte-wise atomic* copy: every byte is
//! read and written as if by a `Relaxed` atomic access of that byte (the
//! "atomic memcpy" of C++ proposal P1478, the read side a seqlock needs), so
//! a concurrent write makes the bytes read unspecified but is no data race.
//!
//! * x86-64: inline assembly, which Rust treats as opaque code whose effect
//!   is what the instructions do; every byte access of `rep movsb`, `vmovdqu`
//!   and `vmovntdq` is single-copy atomic on x86, so these blocks are the
//!   byte-wise relaxed copy above, at full speed: `rep movsb` (fast on CPUs
//!   with ERMS/FSRM, and what glibc's `memcpy` uses for these sizes), and
//!   from [`STREAM_MIN`] bytes on (AVX2) 32-byte loads with non-temporal
//!   stores, which keep a frame that does not stay in cache from evicting it.
//!   An `lfence` ends every copy: the string instructions' internal ordering
//!   is documented for stores only, and the seqlock needs every load of the
//!   copy done before the reader re-reads the horizon.
//! * elsewhere: `Relaxed` `AtomicU64` loads and stores over the words that
//!   are 8-byte aligned on both sides, `AtomicU8` for the rest.
//!
//! Streaming stores are weakly ordered: a streaming copy ends with `sfence`,
//! so its bytes are visible before any later store (the `Release` store of
//! the head, or the hand-off of a received buffer to another thread). Before
//! them, the writer's horizon store must be visible first: see
//! [`store_fence`].

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

/// Copies of at least this many bytes use streaming stores where available
/// (as `transport_core::copy`).
pub const STREAM_MIN: usize = transport_core::copy::STREAM_MIN;

/// Copies `len` bytes from `src` to `dst`, every byte as if by a `Relaxed`
/// atomic load and store (see the module docs): either side may be shared
/// memory that another process writes concurrently, and the bytes then read
/// are unspecified (but no undefined behaviour): the caller validates them.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and
/// the ranges must not overlap. Other processes (or threads, through atomic
/// accesses or this function) may access either range meanwhile.
#[inline]
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        if len >= STREAM_MIN && avx2 {
            // SAFETY: AVX2 is available (checked above); the caller's
            // contract covers the ranges.
            unsafe { x86::stream_avx2(dst, src, len) };
        } else if (32..x86::SMALL_MAX).contains(&len) && avx2 {
            // SAFETY: as above, and `len >= 32`.
            unsafe { x86::small_avx2(dst, src, len) };
        } else {
            // SAFETY: the caller's contract.
            unsafe { x86::rep_movsb(dst, src, len) };
        }
        x86::load_fence();
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract.
    unsafe {
        copy_portable(dst, src, len)
    }
}

/// Orders every store before it (the writer's horizon) before every store
/// after it, streaming stores included.
///
/// On x86, `fence(Release)` emits no instruction, and non-temporal stores
/// may become visible before earlier ordinary stores: without this, a reader
/// could see bytes of a new record before the raised horizon that says its
/// copy is stale. (The streaming copy above and the one of
/// `transport_core::copy` also fence before they start; this one covers the
/// bytes an application writes into a loan, with whatever instructions.)
#[inline]
pub fn store_fence() {
    transport_core::copy::store_fence();
}

/// Copies `len` bytes at `src` into a new vector with [`copy`]: `src` may be
/// shared memory that another process (or another mapping in this one)
/// writes at the same time, and the result may then mix old and new bytes;
/// a seqlock-style reader validates it afterwards (`fence(Acquire)`, then
/// re-reading a version word).
///
/// # Safety
/// `src .. src + len` lies in one live mapping (or allocation) that stays
/// valid for reads for the call, and nothing in this process accesses it
/// meanwhile except through atomics, [`copy`], or another mapping of the
/// same memory.
#[inline]
pub unsafe fn copy_to_vec(src: *const u8, len: usize) -> Vec<u8> {
    let mut out = Vec::<u8>::with_capacity(len);
    // SAFETY: `src` is valid for `len` bytes of reads (caller's contract);
    // the fresh allocation is valid for `len` bytes of writes and distinct
    // from any mapping.
    unsafe {
        copy(out.as_mut_ptr(), src, len);
        // Every byte of `0 .. len` was written by the copy.
        out.set_len(len);
    }
    out
}

/// The portable byte-wise atomic copy (used where there is no assembly
/// version; tested everywhere).
///
/// # Safety
/// As [`copy`].
pub unsafe fn copy_portable(dst: *mut u8, src: *const u8, len: usize) {
    let byte = |i: usize| {
        // SAFETY: `i < len`: in bounds of both ranges (caller's contract);
        // any address is aligned for `AtomicU8`, and its accesses are atomic.
        unsafe {
            let b = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Relaxed);
            AtomicU8::from_ptr(dst.add(i)).store(b, Relaxed);
        }
    };
    let mut i = 0;
    if (src as usize) % 8 == (dst as usize) % 8 {
        while i < len && !(src as usize + i).is_multiple_of(8) {
            byte(i);
            i += 1;
        }
        while i + 8 <= len {
            // SAFETY: `i + 8 <= len`: in bounds of both ranges; both
            // addresses are 8-byte aligned (same remainder, and `src + i` is
            // aligned); `AtomicU64` accepts any bits. A relaxed `AtomicU64`
            // load is allowed on read-only memory.
            unsafe {
                let w = AtomicU64::from_ptr(src.add(i).cast::<u64>().cast_mut()).load(Relaxed);
                AtomicU64::from_ptr(dst.add(i).cast::<u64>()).store(w, Relaxed);
            }
            i += 8;
        }
    }
    while i < len {
        byte(i);
        i += 1;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    /// `rep movsb`: `len` bytes from `src` to `dst`.
    ///
    /// # Safety
    /// As [`super::copy`].
    #[inline]
    pub(super) unsafe fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) {
        if len == 0 {
            // `rep movsb` has a start-up cost even for nothing.
            return;
        }
        // SAFETY: the caller's contract covers both ranges; the direction
        // flag is clear on entry to any asm block (Rust's ABI); the block
        // only touches the two ranges and the three registers it declares.
        unsafe {
            asm!(
                "rep movsb",
                inout("rcx") len => _,
                inout("rsi") src => _,
                inout("rdi") dst => _,
                options(nostack, preserves_flags)
            );
        }
    }

    /// Below this many bytes (and from 32 on), [`small_avx2`] beats
    /// `rep movsb`, whose start-up costs some 20 ns (headers, envelopes).
    pub(super) const SMALL_MAX: usize = 2048;

    /// 32-byte loads and stores; the last 32 bytes copied last, overlapping
    /// the previous round when `len` is not a multiple of 32 (those bytes
    /// are read and written twice: still a byte-wise atomic copy).
    ///
    /// # Safety
    /// As [`super::copy`], `len >= 32`, and the CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn small_avx2(dst: *mut u8, src: *const u8, len: usize) {
        debug_assert!(len >= 32);
        let rounds = (len - 1) / 32;
        // SAFETY: the loop covers `[0, rounds * 32)` with `rounds * 32 <
        // len`, the last move `[len - 32, len)`: within the caller's ranges.
        // Unaligned moves; AVX2 is enabled for this function. `vzeroupper`
        // avoids the penalty of dirty upper halves in later SSE code; every
        // vector register is declared clobbered (`clobber_abi`).
        unsafe {
            asm!(
                "test rcx, rcx",
                "jz 3f",
                "2:",
                "vmovdqu ymm0, ymmword ptr [rsi]",
                "vmovdqu ymmword ptr [rdi], ymm0",
                "add rsi, 32",
                "add rdi, 32",
                "dec rcx",
                "jnz 2b",
                "3:",
                "vmovdqu ymm0, ymmword ptr [r8]",
                "vmovdqu ymmword ptr [r9], ymm0",
                "vzeroupper",
                inout("rsi") src => _,
                inout("rdi") dst => _,
                inout("rcx") rounds => _,
                in("r8") src.add(len - 32),
                in("r9") dst.add(len - 32),
                clobber_abi("C"),
                options(nostack)
            );
        }
    }

    /// Every load before it completes before any load after it starts.
    #[inline]
    pub(super) fn load_fence() {
        // SAFETY: `lfence` has no operands and only orders instructions
        // (SSE2, present on every x86-64 CPU). Without `nomem`, it is also a
        // compiler barrier.
        unsafe { asm!("lfence", options(nostack, preserves_flags)) };
    }

    /// 32-byte loads, 32-byte streaming stores, 128 bytes per round; the
    /// unaligned head and the tail with `rep movsb`. Fenced with `sfence`
    /// before (earlier stores, such as the horizon, become visible first)
    /// and after (the streaming stores become visible before later ones).
    ///
    /// # Safety
    /// As [`super::copy`], and the CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn stream_avx2(dst: *mut u8, src: *const u8, len: usize) {
        // Streaming stores need 32-byte aligned destinations.
        let head = dst.align_offset(32).min(len);
        let rounds = (len - head) / 128;
        let done = head + rounds * 128;
        // SAFETY: `head <= len`, within both ranges (caller's contract).
        unsafe { rep_movsb(dst, src, head) };
        if rounds > 0 {
            // SAFETY: reads `[src + head, src + done)` and writes
            // `[dst + head, dst + done)`, within the caller's ranges
            // (`done <= len`); `dst + head` is 32-byte aligned and every
            // store address stays so (steps of 32); loads are unaligned
            // loads. AVX2 is enabled for this function. `vzeroupper` as in
            // `small_avx2`; every vector register is declared clobbered.
            unsafe {
                asm!(
                    "sfence",
                    "2:",
                    "vmovdqu ymm0, ymmword ptr [rsi]",
                    "vmovdqu ymm1, ymmword ptr [rsi + 32]",
                    "vmovdqu ymm2, ymmword ptr [rsi + 64]",
                    "vmovdqu ymm3, ymmword ptr [rsi + 96]",
                    "vmovntdq ymmword ptr [rdi], ymm0",
                    "vmovntdq ymmword ptr [rdi + 32], ymm1",
                    "vmovntdq ymmword ptr [rdi + 64], ymm2",
                    "vmovntdq ymmword ptr [rdi + 96], ymm3",
                    "add rsi, 128",
                    "add rdi, 128",
                    "dec rcx",
                    "jnz 2b",
                    "sfence",
                    "vzeroupper",
                    inout("rsi") src.add(head) => _,
                    inout("rdi") dst.add(head) => _,
                    inout("rcx") rounds => _,
                    clobber_abi("C"),
                    options(nostack)
                );
            }
        }
        // SAFETY: the tail `[done, len)` is within both ranges.
        unsafe { rep_movsb(dst.add(done), src.add(done), len - done) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: unsafe fn(*mut u8, *const u8, usize), len: usize) {
        let src: Vec<u8> = (0..len + 64).map(|i| (i * 7 + i / 4096) as u8).collect();
        for (so, d_off) in [(0, 0), (1, 0), (0, 5), (13, 31), (32, 17), (8, 8)] {
            let mut dst = vec![0u8; len + 64];
            let n = len.saturating_sub(40);
            // SAFETY: both ranges are in bounds of their vectors and distinct.
            unsafe { f(dst.as_mut_ptr().add(d_off), src.as_ptr().add(so), n) };
            assert!(
                dst[d_off..d_off + n] == src[so..so + n],
                "len {n}, offsets {so}/{d_off}"
            );
            assert!(
                dst[..d_off].iter().all(|&b| b == 0) && dst[d_off + n..].iter().all(|&b| b == 0),
                "len {n}, offsets {so}/{d_off}: wrote outside"
            );
        }
    }

    #[test]
    fn copies_every_byte_at_every_alignment() {
        for len in [
            0,
            1,
            31,
            40,
            41,
            47,
            71,
            72,
            73,
            100,
            104,
            129,
            2087,
            2088,
            2089,
            4096 + 3,
            1 << 20,
        ] {
            check(copy, len);
            check(copy_portable, len);
            let src: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            // SAFETY: `src` is a live vector of `len` bytes.
            assert!(
                unsafe { copy_to_vec(src.as_ptr(), len) } == src,
                "len {len}"
            );
        }
        // The streaming path, including an unaligned head and a ragged tail.
        check(copy, STREAM_MIN + 333);
    }

    /// The writer's side of the seqlock, as `make_room` then a streaming
    /// copy do it: raise the horizon, `store_fence`, stream the new bytes.
    /// A reader that sees a new byte must then see the new horizon.
    ///
    /// Without an `sfence` between the two, x86 may make the streaming store
    /// visible first: a bare litmus test (flag store, release fence,
    /// `movnti`) showed it on the 2-vCPU host we develop on in 29 rounds of
    /// a million in one run, none in another. This test did not catch the
    /// old ordering (no `sfence`) in a dozen runs of up to a million rounds:
    /// the window is a few nanoseconds. It guards the sequence; it cannot
    /// prove the fix.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_reader_that_sees_streamed_bytes_sees_the_horizon_before_them() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release, fence};
        use std::time::{Duration, Instant};

        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: no AVX2, no streaming copy");
            return;
        }
        #[repr(C, align(64))]
        struct Shared {
            horizon: AtomicU64,
            _pad: [u64; 7],
            data: [AtomicU64; 16],
            ack: AtomicU64,
            stop: AtomicBool,
        }
        let sh = Arc::new(Shared {
            horizon: AtomicU64::new(0),
            _pad: [0; 7],
            data: Default::default(),
            ack: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        let max_rounds = 1_000_000u64;
        let reader = {
            let sh = sh.clone();
            std::thread::spawn(move || {
                let mut stale = 0u64;
                let mut round = 1;
                while round <= max_rounds && !sh.stop.load(Acquire) {
                    // The quickest poll there is (the real reader copies
                    // with `copy`, slower, so with less chance to catch
                    // the window); any atomic load will do for the check.
                    if sh.data[0].load(Relaxed) == round {
                        // The seqlock read side, as in `read_next`.
                        fence(Acquire);
                        if sh.horizon.load(Relaxed) < round {
                            stale += 1;
                        }
                        sh.ack.store(round, Release);
                        round += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
                stale
            })
        };
        let mut rounds = 0;
        'rounds: for round in 1..=max_rounds {
            let src = [round; 16];
            // A varying pause, so that the reader polls at every phase.
            for _ in 0..round % 32 {
                std::hint::spin_loop();
            }
            sh.horizon.store(round, Relaxed);
            store_fence();
            // SAFETY: 128 bytes from a local array into `sh.data` (32-byte
            // aligned, 128 bytes), which the reader only reads atomically;
            // AVX2 is available (checked above).
            unsafe {
                x86::stream_avx2(sh.data.as_ptr().cast_mut().cast(), src.as_ptr().cast(), 128)
            };
            while sh.ack.load(Acquire) != round {
                if Instant::now() > deadline {
                    break 'rounds;
                }
                std::hint::spin_loop();
            }
            rounds = round;
        }
        sh.stop.store(true, Release);
        let stale = reader.join().expect("reader");
        eprintln!("{rounds} rounds, {stale} streamed bytes seen before their horizon");
        assert_eq!(stale, 0, "in {rounds} rounds");
    }
}
