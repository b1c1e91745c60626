//! Shared-memory plumbing for framewire's shared-memory backends
//! (`transport-shm-pool`, `transport-shm-ring`), so that neither backend
//! depends on the other. Linux only.
//!
//! * [`sys`]: sealed memfds and their seals, checks of a descriptor received
//!   from a peer ([`sys::inspect_shared_fd`]), shared mappings that unmap on
//!   drop ([`sys::Mapping`], including the mirrored ring mapping),
//!   abstract-namespace Unix sockets, peer credentials (`SO_PEERCRED`) and
//!   file-descriptor passing (`SCM_RIGHTS`).
//! * [`copy`]: the race-free copy out of (and into) memory that another
//!   process may write at the same time: every byte as if by a `Relaxed`
//!   atomic access, at `memcpy` speed on x86-64.
//! * [`loan`]: a publisher's `send_loan` taking its lease type (or a heap
//!   loan) back from a returned loan buffer.
//!
//! Nothing here knows about frames, slots or rings; backend protocols stay in
//! the backends.
//!
//! ```
//! use std::os::fd::AsFd;
//! use transport_shm_support::{copy, sys};
//!
//! # fn main() -> std::io::Result<()> {
//! let page = sys::page_size();
//! // A sealed memfd: it can neither shrink nor grow under a mapping.
//! let fd = sys::memfd_sealed("doc", page as u64)?;
//! let writer = sys::Mapping::map(fd.as_fd(), page, true, true)?;
//! // SAFETY: inside the fresh mapping of one page, which nothing else uses.
//! unsafe { copy::copy(writer.as_ptr(), b"hello".as_ptr(), 5) };
//! // No new writable mapping from now on; a peer gets a read-only descriptor.
//! sys::seal_future_write(fd.as_fd())?;
//! let ro = sys::reopen_read_only(fd.as_fd())?;
//! let info = sys::inspect_shared_fd(ro.as_fd())?;
//! assert!(info.read_only && info.on_tmpfs() && info.len == page as u64);
//! let reader = sys::Mapping::map(ro.as_fd(), page, false, true)?;
//! // SAFETY: 5 bytes inside the live read-only mapping; the copy is
//! // byte-wise atomic, so a concurrent writer would be no data race.
//! let bytes = unsafe { copy::copy_to_vec(reader.as_ptr(), 5) };
//! assert_eq!(bytes, b"hello");
//! # Ok(()) }
//! ```

pub mod copy;
pub mod loan;
pub mod sys;
