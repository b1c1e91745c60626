use super::*;

#[test]
fn geometry_is_page_aligned_and_checked() {
    let g = Geometry::new(3, 5000).unwrap();
    let p = sys::page_size() as u64;
    assert_eq!(g.stride % p, 0);
    assert!(g.stride >= 5000);
    assert_eq!(g.data_offset % p, 0);
    assert_eq!(g.len, g.data_offset + 3 * g.stride);
    assert!(Geometry::new(0, 1).is_err());
    assert!(Geometry::new(MAX_SLOTS + 1, 1).is_err());
    assert!(Geometry::new(2, u64::MAX).is_err());
    assert!(Geometry::new(4096, 1 << 40).is_err());
}

#[test]
fn warm_acquire_and_release() {
    let pool = SlotPool::create("unit", 3, 10_000).unwrap();
    assert_eq!(pool.free_slots(), 3);
    let mut leases: Vec<_> = (0..3).map(|_| pool.try_acquire().unwrap()).collect();
    assert!(pool.try_acquire().is_none());
    let mut seen: Vec<usize> = leases.iter().map(SlotLease::index).collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2]);
    leases[1].as_mut_slice().fill(7);
    assert_eq!(leases[1].as_mut_slice().len(), 10_000);
    leases.clear();
    assert_eq!(pool.free_slots(), 3);
}

/// A slot released while already free is refused and counted, also
/// when the free list has room (it used to be caught only when the list
/// was full, and then by a `debug_assert!` that panicked inside `Drop`).
#[test]
fn a_double_release_is_refused_and_counted_without_a_panic() {
    let pool = SlotPool::create("unit", 3, 4096).unwrap();
    let a = pool.try_acquire().unwrap();
    let _b = pool.try_acquire().unwrap();
    let ai = a.index() as u32;
    drop(a);
    assert_eq!(pool.free_slots(), 2);
    assert!(!pool.push(ai), "released twice, with room on the list");
    assert_eq!(pool.free_slots(), 2);
    assert_eq!(pool.double_releases(), 1);
    assert!(!pool.push(7), "out of range");
    assert_eq!(pool.double_releases(), 2);
    // A lease dropped for a slot that is free: refused in `Drop`, no panic.
    let lease = SlotLease {
        pool: &pool,
        index: ai,
    };
    drop(lease);
    assert_eq!(pool.double_releases(), 3);
    assert_eq!(pool.free_slots(), 2);
    // Every slot still comes out exactly once.
    let leases: Vec<_> = std::iter::from_fn(|| pool.try_acquire()).collect();
    let mut seen: Vec<usize> = leases.iter().map(SlotLease::index).collect();
    seen.sort_unstable();
    assert_eq!(seen.len(), 2);
    seen.dedup();
    assert_eq!(seen.len(), 2, "no slot handed out twice");
}

/// Resident KiB of the mapping that starts at `addr` (`/proc/self/smaps`).
fn rss_kib(addr: *const u8) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{:x}-", addr as usize);
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
    assert!(lines.next().is_some(), "no mapping at {start}");
    lines
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A forwarded segment is pre-faulted only when it is no larger than the
/// size the subscriber accepted at the handshake; it is at most the
/// largest segment a publisher creates; and one with unallocated pages
/// (reading them would allocate memory here) is refused.
#[test]
fn forwarded_segments_are_bounded_checked_and_prefaulted_only_up_to_the_pool() {
    let pool = SlotPool::create("unit-fwd", 4, 1 << 20).unwrap();
    let len = pool.geometry().len;
    let open = |populate_up_to: u64| {
        let ro = sys::reopen_read_only(pool.fd()).unwrap();
        ForeignMap::open(ro, pool.segment_id(), len, Vec::new(), populate_up_to)
    };
    let lazy = open(len - 1).unwrap();
    assert_eq!(
        rss_kib(lazy.ptr(0)),
        0,
        "larger than announced: not pre-faulted"
    );
    let eager = open(len).unwrap();
    assert_eq!(rss_kib(eager.ptr(0)) * 1024, len, "pre-faulted");
    drop((lazy, eager));

    let ro = sys::reopen_read_only(pool.fd()).unwrap();
    let too_long = max_forwarded_len() + sys::page_size() as u64;
    match ForeignMap::open(ro, pool.segment_id(), too_long, Vec::new(), u64::MAX) {
        Err(Error::Protocol { message: m, .. }) => {
            assert!(m.contains("largest segment a publisher creates"), "{m}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(
        Geometry::new(MAX_SLOTS, MAX_POOL_BYTES / MAX_SLOTS as u64)
            .unwrap()
            .len,
        max_forwarded_len(),
        "exactly the largest pool's segment"
    );

    let sparse = sys::memfd_sealed("sparse", 1 << 20).unwrap();
    sys::seal_seals(sparse.as_fd()).unwrap();
    let inode = sys::inode(sparse.as_fd()).unwrap();
    let e = ForeignMap::open(sparse, inode, 1 << 20, Vec::new(), u64::MAX).unwrap_err();
    assert!(e.to_string().contains("unallocated pages"), "{e}");
}

#[test]
fn segment_is_sealed_and_mapped_read_only_by_subscribers() {
    let pool = SlotPool::create("unit", 2, 4096).unwrap();
    let seals = rustix::fs::fcntl_get_seals(pool.fd()).unwrap();
    use rustix::fs::SealFlags;
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    assert!(
        rustix::fs::ftruncate(pool.fd(), 0).is_err(),
        "sealed against shrinking"
    );
    let ro = sys::reopen_read_only(pool.fd()).unwrap();
    assert!(sys::is_read_only(ro.as_fd()).unwrap());
    // A read-only fd cannot be mapped writable at all.
    assert!(sys::Mapping::map(ro.as_fd(), 4096, true, false).is_err());
    let g = pool.geometry();
    let hello = Hello {
        version: crate::wire::VERSION,
        flags: 0,
        segment: pool.segment_id(),
        slots: g.slots,
        slot_size: g.slot_size,
        stride: g.stride,
        data_offset: g.data_offset,
        segment_len: g.len,
        claims_len: 0,
    };
    pool.set_header(1, 42, 3);
    let seg = SegmentMap::open(ro, &hello, Vec::new()).unwrap();
    assert_eq!(seg.header(1), (42, 3));
    assert_eq!(seg.id(), pool.segment_id());
    let bad = Hello {
        stride: g.stride * 2,
        ..hello
    };
    let ro = sys::reopen_read_only(pool.fd()).unwrap();
    assert!(SegmentMap::open(ro, &bad, Vec::new()).is_err());
    let bad = Hello {
        segment: 1,
        ..hello
    };
    let ro = sys::reopen_read_only(pool.fd()).unwrap();
    assert!(SegmentMap::open(ro, &bad, Vec::new()).is_err());
}
