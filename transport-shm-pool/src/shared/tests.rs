use super::*;

fn server_open(s: &AttachServer, a: &Attached) -> bool {
    s.is_open(a.conn())
}

#[test]
fn refs_round_trip() {
    let r = SlotRef {
        segment: 1,
        index: 2,
        generation: 3,
        len: 4,
    };
    assert_eq!(SlotRef::decode(&r.encode()).unwrap(), r);
    assert!(SlotRef::decode(&r.encode()[1..]).is_err());
}

/// The byte every position of a frame at `generation` holds: consecutive
/// publications of a slot differ.
fn fill_byte(generation: u64) -> u8 {
    (generation % 251) as u8 + 1
}

/// A stale reference (its slot freed, then popped for a new frame) is
/// refused by `check`, `view` and `copy` from the moment the slot is
/// taken for a new frame, while that frame is being written and before
/// it is published: the header no longer carries the old generation.
#[tokio::test]
async fn a_freed_or_refilling_slot_refuses_stale_references() {
    let pool = SharedPool::create("unit-stale", 1, 4096).unwrap();
    let server = pool.serve().unwrap();
    let att = Attached::attach(server.name(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut w = pool.try_alloc(4096).unwrap().unwrap();
    w.as_mut_slice().fill(1);
    let r = w.publish(4096, 0b1);
    assert_eq!(&att.copy(&r).unwrap()[..], &[1u8; 4096][..]);
    assert!(pool.release(&r, 0));
    // Freed, not reused yet: still that frame, byte for byte.
    assert_eq!(&att.copy(&r).unwrap()[..], &[1u8; 4096][..]);
    // Being refilled, not yet published.
    let mut w = pool.try_alloc(4096).unwrap().unwrap();
    w.as_mut_slice()[..100].fill(2);
    assert!(matches!(att.check(&r), Err(Error::InvalidReference { .. })));
    assert!(att.view(&r, || panic!("not run")).is_err());
    assert!(att.copy(&r).is_err());
    let r2 = w.publish(4096, 0b1);
    assert!(att.copy(&r).is_err());
    assert_eq!(att.copy(&r2).unwrap()[..100], [2u8; 100]);
    assert!(pool.release(&r2, 0));
}

/// A reader hammering `copy()` with the latest and the previous
/// reference while the writer frees and slowly refills those slots, over
/// 12,000 publications: every copy that succeeds is entirely the frame
/// its reference names (each frame is one byte value throughout).
///
/// The writer fills a slot in chunks, yielding between them, so that a
/// whole copy of the stale reference fits inside a refill (as with a
/// producer that writes a loaned slot bit by bit), and waits for the
/// reader to pick up each publication, so that the two interleave on a
/// loaded machine too.
#[test]
fn copies_of_stale_references_are_never_torn() {
    const FRAMES: u64 = 12_000;
    const LEN: usize = 16 << 10;
    const CHUNKS: usize = 8;
    use std::sync::atomic::AtomicBool;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = SharedPool::create("unit-torn", 2, LEN as u64).unwrap();
    let _guard = rt.enter();
    let server = pool.serve().unwrap();
    let att = rt
        .block_on(Attached::attach(server.name(), Duration::from_secs(5)))
        .unwrap();
    // Publication number, the latest and the previous reference.
    type Refs = (u64, Option<SlotRef>, Option<SlotRef>);
    let refs: Arc<Mutex<Refs>> = Arc::default();
    let picked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (refs, picked, done, att) = (refs.clone(), picked.clone(), done.clone(), att.clone());
        std::thread::spawn(move || {
            let (mut good, mut refused, mut torn) = (0u64, 0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                let (k, latest, previous) = *lock(&refs);
                picked.store(k, Ordering::Release);
                for r in [previous, latest].into_iter().flatten() {
                    match att.copy(&r) {
                        Ok(b) => {
                            let want = fill_byte(r.generation);
                            if b.len() == LEN && b.iter().all(|&x| x == want) {
                                good += 1;
                            } else {
                                torn += 1;
                            }
                        }
                        Err(_) => refused += 1,
                    }
                }
            }
            (good, refused, torn)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut previous: Option<SlotRef> = None;
    for k in 1..=FRAMES {
        let mut w = pool
            .try_alloc(LEN)
            .unwrap()
            .expect("a free slot: at most one frame is held");
        let next = lock(&pool.acct)[w.index() as usize]
            .generation()
            .wrapping_add(1)
            .max(1);
        for chunk in w.as_mut_slice().chunks_mut(LEN / CHUNKS) {
            chunk.fill(fill_byte(next));
            std::thread::yield_now();
        }
        let r = w.publish(LEN, 0b1);
        assert_eq!(r.generation, next);
        // Frees the previous frame's slot: its reference goes stale, and
        // the next round refills that slot while the reader may copy it.
        if let Some(p) = previous {
            assert!(pool.release(&p, 0));
        }
        *lock(&refs) = (k, Some(r), previous);
        previous = Some(r);
        while picked.load(Ordering::Acquire) < k {
            if std::time::Instant::now() > deadline {
                done.store(true, Ordering::Release);
                panic!("the reader stalled");
            }
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::Release);
    let (good, refused, torn) = reader.join().unwrap();
    eprintln!("{good} whole copies, {refused} refused, {torn} torn");
    assert_eq!(torn, 0, "a copy returned bytes of two frames as one");
    assert!(good > 0, "the reader never got a frame through");
}

#[tokio::test]
async fn slots_return_after_every_holder_and_refs_are_checked() {
    let pool = SharedPool::create("unit", 2, 8192).unwrap();
    let server = pool.serve().unwrap();
    let att = Attached::attach(server.name(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut w = pool.try_alloc(3).unwrap().unwrap();
    w.as_mut_slice().copy_from_slice(b"abc");
    let r = w.publish(3, 0b101);
    assert_eq!(pool.free_slots(), 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let v = att.view(&r, move || tx.send(()).unwrap()).unwrap();
    assert_eq!(&v[..], b"abc");
    assert_eq!(&att.copy(&r).unwrap()[..], b"abc");
    drop(v);
    rx.try_recv().unwrap();
    assert!(pool.release(&r, 2));
    assert_eq!(pool.free_slots(), 1);
    assert!(!pool.release(&r, 2));
    assert_eq!(pool.release_all(0), 1);
    assert_eq!(pool.free_slots(), 2);
    assert_eq!(pool.stale_releases(), 1);
    for bad in [
        SlotRef { index: 2, ..r },
        SlotRef { len: 9000, ..r },
        SlotRef { generation: 7, ..r },
        SlotRef { segment: 0, ..r },
        SlotRef { len: 2, ..r },
    ] {
        assert!(matches!(
            att.check(&bad),
            Err(Error::InvalidReference { .. })
        ));
        assert!(att.view(&bad, || panic!("not run")).is_err());
    }
    assert!(server_open(&server, &att));
    let conn = att.conn();
    drop(att);
    let mut server = server;
    let closed = tokio::time::timeout(Duration::from_secs(5), server.next_closed());
    assert_eq!(closed.await.unwrap(), conn);
    assert!(!server.is_open(conn));
    assert!(pool.try_alloc(8193).is_err());
    let _a = pool.alloc(1).await.unwrap();
    let _b = pool.alloc(1).await.unwrap();
    assert!(pool.try_alloc(1).unwrap().is_none());
}
