//! The process-wide registry of the segment mappings subscribers hold: what
//! lets a publisher recognise a payload that already lives in shared memory
//! (a view received from another pool) and forward it without a copy.
//!
//! Every read-only mapping a subscriber makes (the pool of the publisher it
//! connects to, and each segment that publisher forwards to it) registers its
//! address range together with the read-only memfd behind it. A publisher's
//! `send` looks the payload's address range up here: when it lies entirely
//! inside a registered mapping, the payload is bytes of that segment at a
//! known offset, and the publisher passes the segment's fd on instead of
//! copying the bytes.
//!
//! Soundness of the lookup rests on one ordering: a mapping leaves the
//! registry (under the write lock) *before* it is unmapped (the
//! [`Registration`] is the first field of the types that own a mapping, so
//! it drops first). A lookup that finds a range therefore finds a mapping
//! that is still mapped at that moment, and a payload `Bytes` the caller
//! holds that points into the range is that mapping's memory (an address
//! names one thing at a time), kept alive by the `Bytes` itself.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// Tells the publisher a mapping's slots came from that the frame at
/// `offset .. offset + len` of the segment is about to be forwarded (a
/// FORWARDED message, see `wire`, "Anchors"), so that if this process dies
/// that slot waits for its anchor. True only once the message is in the
/// socket (written before the FWD that forwards it can be); false when it
/// could not be sent at once, or no slot held here covers the range: the
/// caller then copies instead of forwarding.
pub(crate) trait ForwardMark: Send + Sync {
    fn mark(&self, offset: u64, len: u64) -> bool;
}

/// A segment some mapping in this process shows: its read-only memfd, for
/// passing on to subscribers with `SCM_RIGHTS`.
pub(crate) struct SegFd {
    fd: OwnedFd,
    inode: u64,
    len: u64,
    /// The anchors (pipe write ends) of every hop that keeps this segment's
    /// slots reserved for this process's views: passed on with the segment
    /// when a frame in it is forwarded (see `wire`, "Anchors").
    anchors: Vec<Arc<OwnedFd>>,
    /// True while the mapping that registered it is mapped.
    mapped: AtomicBool,
    /// Who tells the upstream publisher of a forward (set once by the
    /// subscriber that made the mapping).
    marker: OnceLock<Arc<dyn ForwardMark>>,
}

impl std::fmt::Debug for SegFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegFd")
            .field("inode", &self.inode)
            .field("len", &self.len)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl SegFd {
    /// The read-only descriptor of the segment.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The segment's inode number.
    pub(crate) fn inode(&self) -> u64 {
        self.inode
    }

    /// Bytes of the segment that the registered mapping covers.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The anchors to pass on with this segment.
    pub(crate) fn anchors(&self) -> &[Arc<OwnedFd>] {
        &self.anchors
    }

    /// Sets who tells the upstream publisher of forwards from this segment.
    pub(crate) fn set_marker(&self, marker: Arc<dyn ForwardMark>) {
        let _ = self.marker.set(marker);
    }

    /// Tells the upstream publisher that bytes `offset .. offset + len` are
    /// about to be forwarded; see [`ForwardMark::mark`]. False (copy) for a
    /// segment nobody set a marker for.
    pub(crate) fn mark_forwarded(&self, offset: u64, len: u64) -> bool {
        self.marker.get().is_some_and(|m| m.mark(offset, len))
    }

    /// False once the mapping that registered it is gone: no payload can be
    /// found in it any more, so a publisher may forget it.
    pub(crate) fn is_mapped(&self) -> bool {
        self.mapped.load(Ordering::Acquire)
    }
}

#[cfg(test)]
impl SegFd {
    /// A segment no mapping registered, for unit tests of the queues.
    pub(crate) fn for_tests(fd: OwnedFd) -> SegFd {
        SegFd {
            fd,
            inode: 0,
            len: 0,
            anchors: Vec::new(),
            mapped: AtomicBool::new(false),
            marker: OnceLock::new(),
        }
    }
}

/// Mappings by start address.
static REGISTRY: RwLock<BTreeMap<usize, Arc<SegFd>>> = RwLock::new(BTreeMap::new());

/// Woken each time a registered mapping goes away.
static UNMAPPED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Completes the next time a registered mapping of this process goes away:
/// publishers then forget forwarded segments that nothing uses any more.
pub(crate) fn unmapped() -> tokio::sync::futures::Notified<'static> {
    UNMAPPED.notified()
}

/// A registered mapping; leaves the registry when dropped, which must happen
/// before the mapping is unmapped (make it the first field of the owner).
pub(crate) struct Registration {
    base: usize,
    seg: Arc<SegFd>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("base", &format_args!("{:#x}", self.base))
            .field("segment", &self.seg)
            .finish()
    }
}

impl Registration {
    /// The registered segment.
    pub(crate) fn seg(&self) -> &Arc<SegFd> {
        &self.seg
    }
}

/// Registers the read-only mapping of `len` bytes at `base` of the memfd `fd`
/// (inode `inode`), with the anchors that keep its slots reserved. `fd`
/// should be read-only: it is what subscribers of this process's publishers
/// receive.
pub(crate) fn register(
    base: *const u8,
    len: u64,
    fd: OwnedFd,
    inode: u64,
    anchors: Vec<Arc<OwnedFd>>,
) -> Registration {
    let seg = Arc::new(SegFd {
        fd,
        inode,
        len,
        anchors,
        mapped: AtomicBool::new(true),
        marker: OnceLock::new(),
    });
    let base = base as usize;
    REGISTRY
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(base, seg.clone());
    Registration { base, seg }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut reg = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
        if reg
            .get(&self.base)
            .is_some_and(|s| Arc::ptr_eq(s, &self.seg))
        {
            reg.remove(&self.base);
        }
        // Release: pairs with the acquire in `is_mapped`.
        self.seg.mapped.store(false, Ordering::Release);
        UNMAPPED.notify_waiters();
    }
}

/// The registered segment holding all of `ptr..ptr + len`, and the offset of
/// `ptr` in it. `None` for an empty range or memory that is not a registered
/// mapping (the heap, an owned copy, a publisher's own pool).
pub(crate) fn lookup(ptr: *const u8, len: usize) -> Option<(Arc<SegFd>, u64)> {
    if len == 0 {
        return None;
    }
    let start = ptr as usize;
    let end = start.checked_add(len)?;
    let reg = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    let (&base, seg) = reg.range(..=start).next_back()?;
    let seg_end = base.checked_add(usize::try_from(seg.len).ok()?)?;
    (end <= seg_end).then(|| (seg.clone(), (start - base) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    #[test]
    fn lookups_find_only_whole_ranges_of_live_mappings() {
        // Addresses of a real buffer, so that no other mapping can be there.
        let buf = vec![0u8; 3 * 4096];
        let base = buf.as_ptr();
        let fd = sys::memfd_sealed("registry-test", 4096).unwrap();
        let reg = register(base, 8192, fd, 42, Vec::new());
        // SAFETY: offsets stay inside `buf`.
        let (inside, edge) = unsafe { (base.add(100), base.add(8191)) };
        let (seg, off) = lookup(inside, 1000).expect("inside");
        assert_eq!((seg.inode(), seg.len(), off), (42, 8192, 100));
        assert!(lookup(base, 8192).is_some(), "the whole mapping");
        assert!(lookup(edge, 1).is_some(), "the last byte");
        assert!(lookup(edge, 2).is_none(), "runs past the end");
        assert!(lookup(inside, 0).is_none(), "empty");
        let before = base.wrapping_sub(1);
        assert!(lookup(before, 10).is_none(), "starts before the mapping");
        assert!(seg.is_mapped());
        drop(reg);
        assert!(!seg.is_mapped());
        assert!(lookup(inside, 1000).is_none(), "gone with its registration");
    }
}
