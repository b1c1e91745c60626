//! Bulk copies of large payloads into and out of shared memory.
//!
//! Below [`STREAM_MIN`] bytes this is `memcpy`. From there on, on x86-64
//! with AVX2, it uses non-temporal (streaming) stores: the destination lines
//! are not read first (no read-for-ownership) and do not evict the cache.
//! A frame that size does not stay in cache between the writer and the
//! reader anyway, and on the 2-vCPU VM we measure on, glibc (which sizes its
//! own streaming threshold from a misreported 256 MiB L3) copies 32 MiB at
//! 8.6 GiB/s where streaming stores reach 15 GiB/s.
//!
//! Streaming stores are weakly ordered, both ways: every streaming copy
//! starts with an `sfence`, so that every earlier store of the thread (say a
//! seqlock's "being rewritten" mark) is visible before any of its bytes
//! (on x86 a `fence(Release)` emits no instruction, and streaming stores may
//! pass earlier ordinary stores), and ends with one, so that its bytes are
//! visible before any later store (on the publisher, the `Release` store
//! that publishes the frame; on the subscriber, whatever hands the buffer to
//! another thread).

/// Copies of at least this many bytes use streaming stores where available.
pub const STREAM_MIN: usize = 16 << 20;

/// [`copy_into`] uses streaming stores from this size on: a slot handed to
/// readers in other processes is not read back by the writer, so keeping it
/// out of the writer's cache only helps (measured: 8 MiB copies into a
/// shm-pool slot went from 11 to 16-18 GB/s).
pub const STREAM_MIN_SLOT: usize = 4 << 20;

/// Copies `src` into `dst` (both of the same length; a shorter one bounds the copy).
///
/// For payloads written into shared memory: from [`STREAM_MIN`] bytes on it
/// uses streaming stores where the CPU has them.
pub fn copy_into(dst: &mut [u8], src: &[u8]) {
    let len = dst.len().min(src.len());
    // SAFETY: both slices are valid for `len` bytes, and a `&mut` slice cannot
    // overlap a shared one.
    unsafe { copy_from(dst.as_mut_ptr(), src.as_ptr(), len, STREAM_MIN_SLOT) }
}

/// Copies `len` bytes from `src` to `dst`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the
/// two ranges must not overlap.
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy_from(dst, src, len, STREAM_MIN) }
}

/// [`copy`] with streaming stores from `stream_min` bytes on.
///
/// # Safety
/// As [`copy`].
unsafe fn copy_from(dst: *mut u8, src: *const u8, len: usize, stream_min: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if len >= stream_min && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available (checked above); the caller's
            // contract covers the ranges.
            unsafe { stream_avx2(dst, src, len) };
            return;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// # Safety
/// As [`copy`], and the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_avx2(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m256i, _mm_sfence, _mm256_loadu_si256, _mm256_stream_si256};
    // Streaming stores need 32-byte aligned destinations: copy the head
    // plainly up to the first aligned byte.
    let head = dst.align_offset(32).min(len);
    // SAFETY: within the caller's ranges (`head <= len`).
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    // Orders every earlier store of this thread before the streaming stores.
    _mm_sfence();
    let mut i = head;
    while i + 128 <= len {
        // SAFETY: `i + 128 <= len`: in bounds for both ranges; `dst + i` is
        // 32-byte aligned (`head` aligned it and `i` grows by 128); loads are
        // unaligned loads.
        unsafe {
            let s = src.add(i);
            let d = dst.add(i);
            let a = _mm256_loadu_si256(s.cast::<__m256i>());
            let b = _mm256_loadu_si256(s.add(32).cast::<__m256i>());
            let c = _mm256_loadu_si256(s.add(64).cast::<__m256i>());
            let e = _mm256_loadu_si256(s.add(96).cast::<__m256i>());
            _mm256_stream_si256(d.cast::<__m256i>(), a);
            _mm256_stream_si256(d.add(32).cast::<__m256i>(), b);
            _mm256_stream_si256(d.add(64).cast::<__m256i>(), c);
            _mm256_stream_si256(d.add(96).cast::<__m256i>(), e);
        }
        i += 128;
    }
    // Orders the streaming stores before every later store of this thread.
    _mm_sfence();
    // SAFETY: the tail `[i, len)` is within both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i) };
}

/// Orders every store before it before every store after it, streaming
/// (non-temporal) stores included: a release fence plus, on x86-64, an
/// `sfence`.
///
/// On x86, `fence(Release)` emits no instruction, and non-temporal stores
/// (this module's streaming copy, glibc's `memcpy` of large buffers, an
/// application's own code filling a loan) may become visible before earlier
/// ordinary stores. A writer that marks shared memory as being rewritten (a
/// seqlock's odd generation, a raised horizon) calls this between the mark
/// and the new bytes, so a reader never sees new bytes without the mark.
pub fn store_fence() {
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` is part of SSE, which every x86-64 CPU has; it only
    // orders stores.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_at_every_alignment() {
        let len = STREAM_MIN + 333;
        let src: Vec<u8> = (0..len + 64).map(|i| (i * 7 + i / 4096) as u8).collect();
        for (so, d_off) in [(0, 0), (1, 0), (0, 5), (13, 31), (32, 17)] {
            let mut dst = vec![0u8; len + 64];
            let n = len - 40;
            // SAFETY: both ranges are in bounds of their vectors and distinct.
            unsafe { copy(dst.as_mut_ptr().add(d_off), src.as_ptr().add(so), n) };
            assert!(
                dst[d_off..d_off + n] == src[so..so + n],
                "offsets {so}/{d_off}"
            );
            assert!(
                dst[..d_off].iter().all(|&b| b == 0) && dst[d_off + n..].iter().all(|&b| b == 0)
            );
        }
        let mut small = [0u8; 100];
        // SAFETY: in bounds, distinct.
        unsafe { copy(small.as_mut_ptr(), src.as_ptr(), 100) };
        assert_eq!(small[..], src[..100]);
        let mut big = vec![0u8; STREAM_MIN_SLOT + 7];
        copy_into(&mut big[..], &src[3..STREAM_MIN_SLOT + 10]);
        assert!(big[..] == src[3..STREAM_MIN_SLOT + 10]);
    }
}
