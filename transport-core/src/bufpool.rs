//! Payload buffers recycled between frames, for backends that read or copy
//! a payload into memory of their own.
//!
//! A large buffer fresh from the allocator costs a page fault per 4 KiB on
//! first write (about 15 ms for 24 MiB on a small VM, more than the socket
//! read itself). A [`BufPool`] keeps a few buffers of frames the application
//! has dropped: [`BufPool::into_bytes`] wraps a filled buffer in the frame's
//! `Bytes`, and the buffer comes back here when the last clone goes. Frames
//! the application keeps simply keep their buffer; the pool then allocates
//! anew. Memory stays bounded: at most `keep` free buffers, and a buffer is
//! reused only for a payload at least half its capacity, so a small frame
//! never pins a large buffer.
//!
//! ```
//! use transport_core::bufpool::BufPool;
//!
//! let pool = BufPool::new(2);
//! let mut buf = pool.take(1 << 20); // 1 MiB, zero-filled
//! buf[0] = 7;
//! let payload = pool.into_bytes(buf);
//! assert_eq!(payload.len(), 1 << 20);
//! drop(payload); // the buffer goes back to the pool
//! assert_eq!(pool.free(), 1);
//! ```

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use std::sync::{Arc, Weak};

/// A bounded, lock-free set of free payload buffers (see the module docs).
#[derive(Debug)]
pub struct BufPool {
    free: ArrayQueue<Vec<u8>>,
}

impl BufPool {
    /// A pool keeping at most `keep` (at least 1) free buffers.
    pub fn new(keep: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: ArrayQueue::new(keep.max(1)),
        })
    }

    /// Free buffers held now.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// A free buffer with room for `len` bytes and at most twice that.
    fn pop_fitting(&self, len: usize) -> Option<Vec<u8>> {
        // Try each pooled buffer once; a misfit goes back if there is room.
        for _ in 0..self.free.capacity() {
            let v = self.free.pop()?;
            if v.capacity() >= len && v.capacity() / 2 <= len {
                return Some(v);
            }
            let _ = self.free.push(v);
        }
        None
    }

    /// A buffer with room for `len` bytes (recycled if one fits), empty
    /// (length 0): for a payload copied in with `extend_from_slice`.
    pub fn take_empty(&self, len: usize) -> Vec<u8> {
        match self.pop_fitting(len) {
            Some(mut v) => {
                v.clear();
                v
            }
            None => Vec::with_capacity(len),
        }
    }

    /// A buffer of exactly `len` bytes: recycled, with the old bytes still
    /// in it (only growth past its old length is zeroed), or zero-filled:
    /// for a payload read into it whole (`read_exact`).
    pub fn take(&self, len: usize) -> Vec<u8> {
        match self.pop_fitting(len) {
            Some(mut v) => {
                v.resize(len, 0);
                v
            }
            None => vec![0u8; len],
        }
    }

    /// `buf` as a frame payload whose buffer comes back to this pool when
    /// the last clone of the `Bytes` is dropped (unless the pool is full or
    /// gone: then it is freed).
    pub fn into_bytes(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(self),
        })
    }
}

/// The owner behind a pooled payload's `Bytes`.
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Lock-free and infallible: a full pool or a gone owner just frees it.
        if let Some(pool) = self.pool.upgrade() {
            let _ = pool.free.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused_only_when_they_fit() {
        let pool = BufPool::new(2);
        let b = pool.into_bytes(pool.take(1000));
        let ptr = b.as_ptr();
        drop(b);
        assert_eq!(pool.free(), 1);
        // Same size: the same buffer, at the asked length.
        let v = pool.take(900);
        assert_eq!((v.as_ptr(), v.len()), (ptr, 900));
        drop(pool.into_bytes(v));
        // Far smaller: not reused (a small frame never pins a large buffer).
        let small = pool.take_empty(10);
        assert!(small.capacity() < 1000 && small.is_empty());
        assert_eq!(pool.free(), 1);
    }

    #[test]
    fn memory_stays_bounded() {
        let pool = BufPool::new(2);
        let held: Vec<Bytes> = (0..5).map(|_| pool.into_bytes(pool.take(64))).collect();
        drop(held);
        assert_eq!(pool.free(), 2, "at most `keep` free buffers");
        // A dropped pool frees what its payloads give back.
        let b = pool.into_bytes(pool.take(64));
        drop(pool);
        drop(b);
    }
}
