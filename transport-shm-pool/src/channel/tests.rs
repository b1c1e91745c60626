use super::*;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[test]
fn claims_decide_between_take_and_reclaim() {
    let (sub, fd) = ClaimTable::create(4).unwrap();
    let publ = ClaimTable::open(&fd, 4).unwrap();
    // Not offered: invalid.
    assert_eq!(sub.take(0, 1, true), Take::Invalid);
    publ.offer(0, 1);
    assert_eq!(sub.take(0, 1, false), Take::Taken);
    assert!(!publ.reclaim(0, 1), "a taken slot cannot be reclaimed");
    assert_eq!(sub.take(0, 1, false), Take::Invalid, "taken twice");
    publ.offer(1, 5);
    assert!(publ.reclaim(1, 5));
    assert_eq!(sub.take(1, 5, true), Take::Stale);
    assert_eq!(
        sub.take(1, 5, false),
        Take::Invalid,
        "no reclaiming without drop-oldest"
    );
    publ.offer(1, 6);
    assert_eq!(sub.take(1, 5, true), Take::Stale, "an older generation");
    assert_eq!(
        sub.take(1, 7, true),
        Take::Invalid,
        "a newer generation was never offered"
    );
    assert_eq!(sub.take(9, 1, true), Take::Invalid, "out of range");
    assert_eq!(sub.take(1, 1 << 62, true), Take::Invalid);
}

#[test]
fn unsealed_or_short_tables_are_refused() {
    use rustix::fs::MemfdFlags;
    let fd =
        rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    assert!(ClaimTable::open(&fd, 4).is_err(), "unsealed");
    let fd = sys::memfd_sealed("x", claims_len(4)).unwrap();
    assert!(
        ClaimTable::open(&fd, 4).is_err(),
        "size sealed, but the seals are not"
    );
    let fd = sys::memfd_sealed("x", claims_len(4)).unwrap();
    sys::seal_seals(fd.as_fd()).unwrap();
    assert!(ClaimTable::open(&fd, 4).is_ok());
    assert!(ClaimTable::open(&fd, 10_000).is_err(), "too short");
}

fn desc(i: u64) -> Entry {
    Entry::Desc(
        Desc {
            segment: 9,
            index: (i % 4) as u32,
            generation: i + 1,
            len: i * 3,
            missed: i % 2,
        },
        Bytes::from(vec![i as u8; (i % 70) as usize]),
    )
}

#[test]
fn entries_round_trip_and_the_ring_fills() {
    let (sub, fd) = ClaimTable::create(4).unwrap();
    let publ = ClaimTable::open(&fd, 4).unwrap();
    let (mut head, mut tail) = (0u64, 0u64);
    let fwd = Entry::Fwd(
        FwdDesc {
            segment: 15,
            index: 7,
            generation: MAX_GENERATION,
            offset: 1 << 40,
            len: 5,
            missed: 3,
        },
        Bytes::from(vec![0xab; INLINE_HEADER]),
    );
    let mut sent = vec![fwd, Entry::Socket];
    sent.extend((0..6).map(desc));
    for e in &sent {
        assert!(publ.desc_space(head));
        publ.push_desc(&mut head, e);
    }
    assert!(!publ.desc_space(head), "8 entries fill a ring of 8");
    for e in &sent {
        assert_eq!(sub.peek_desc(tail).unwrap().as_ref(), Some(e));
        sub.consume_desc(&mut tail);
    }
    assert_eq!(sub.peek_desc(tail).unwrap(), None);
    assert!(publ.desc_space(head));
}

/// An entry is ready for a spinning subscriber only once stamped with its
/// own position: zero memory and the entries of the previous lap are not;
/// a head that says "published" over an entry that is not stamped is a
/// broken ring, reported, not read.
#[test]
fn entries_are_ready_only_when_stamped_with_their_position() {
    let (sub, fd) = ClaimTable::create(4).unwrap();
    let publ = ClaimTable::open(&fd, 4).unwrap();
    let (mut head, mut tail) = (0u64, 0u64);
    assert!(!sub.desc_stamped(0), "zero memory is not an entry");
    for i in 0..8 {
        publ.push_desc(&mut head, &desc(i));
        assert!(sub.desc_stamped(i), "entry {i} just published");
        assert!(!sub.desc_stamped(i + 1), "entry {} not yet", i + 1);
    }
    for i in 0..8 {
        assert_eq!(sub.peek_desc(tail).unwrap(), Some(desc(i)));
        sub.consume_desc(&mut tail);
    }
    // The next lap: every entry still holds the previous lap's stamp.
    for pos in 8..16 {
        assert!(!sub.desc_stamped(pos), "position {pos}: last lap's entry");
    }
    assert_eq!(sub.peek_desc(tail).unwrap(), None);
    // A head past an entry the publisher never stamped: an error.
    publ.poke(0, tail + 1);
    let e = sub.peek_desc(tail).unwrap_err();
    assert!(e.0.contains("not stamped"), "{}", e.0);
    // Stamped after all: read as usual.
    let mut h = tail;
    publ.push_desc(&mut h, &desc(3));
    assert_eq!(sub.peek_desc(tail).unwrap(), Some(desc(3)));
}

/// Consumed entries may be told to the publisher later, in one store: the
/// room comes back then, and a publisher that asked for room hears of it.
#[test]
fn a_late_tail_gives_the_room_back_and_kicks() {
    let (sub, fd) = ClaimTable::create(4).unwrap();
    let publ = ClaimTable::open(&fd, 4).unwrap();
    let mut head = 0u64;
    for i in 0..8 {
        publ.push_desc(&mut head, &desc(i));
    }
    assert!(!publ.desc_space(head));
    publ.request_kick(KICK_SPACE);
    // Copied out, not yet told: still no room.
    let mut tail = 0u64;
    for _ in 0..3 {
        assert!(sub.peek_desc(tail).unwrap().is_some());
        tail += 1;
    }
    assert!(!publ.desc_space(head));
    assert!(sub.publish_tail(tail), "the publisher asked for room");
    assert_eq!(publ.desc_room(head), 3);
    assert!(!sub.publish_tail(tail), "one kick per request");
}

#[test]
fn hostile_ring_indices_are_refused() {
    let (sub, fd) = ClaimTable::create(4).unwrap();
    let publ = ClaimTable::open(&fd, 4).unwrap();
    // A tail ahead of the head, or far behind it: no room, nothing overwritten.
    sub.poke(ClaimTable::DESC_TAIL, 5);
    assert!(!publ.desc_space(0));
    sub.poke(ClaimTable::DESC_TAIL, u64::MAX - 100);
    assert!(!publ.desc_space(0));
    // A release head far ahead: an error, not a loop over garbage.
    sub.poke(ClaimTable::REL_HEAD, 1 << 40);
    let mut out = Vec::with_capacity(64);
    let mut tail = 0;
    assert!(publ.drain_releases(&mut tail, &mut out).is_err());
    assert!(out.is_empty());
    publ.skip_releases(&mut tail);
    assert_eq!(tail, 1 << 40);
    // A publisher head far ahead: the subscriber reports it.
    publ.poke(0, 1 << 40);
    assert!(sub.peek_desc(0).is_err());
}

/// Publisher and subscriber park and publish at random against each
/// other; a lost wake-up shows as a subscriber that waits a whole
/// second for an entry that is already there.
#[test]
fn parking_never_loses_a_wake_up() {
    const N: u64 = 20_000;
    let (sub, fd) = ClaimTable::create(8).unwrap();
    let publ = Arc::new(ClaimTable::open(&fd, 8).unwrap());
    let sub = Arc::new(sub);
    // The "socket": a counter of wakes plus a condvar to wait on.
    let wakes = Arc::new((std::sync::Mutex::new(0u64), std::sync::Condvar::new()));
    let done = Arc::new(AtomicBool::new(false));
    let p = {
        let (publ, wakes, done) = (publ.clone(), wakes.clone(), done.clone());
        std::thread::spawn(move || {
            let mut head = 0u64;
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut woken = 0u64;
            for i in 0..N {
                while !publ.desc_space(head) {
                    publ.request_kick(KICK_SPACE);
                    if publ.desc_space(head) {
                        break;
                    }
                    let (m, c) = &*wakes;
                    let g = m.lock().unwrap();
                    let _ = c.wait_timeout(g, Duration::from_millis(1)).unwrap();
                    if done.load(Ordering::Relaxed) {
                        return woken;
                    }
                }
                publ.push_desc(&mut head, &desc(i));
                if publ.take_parked().is_some() {
                    woken += 1;
                    let (m, c) = &*wakes;
                    *m.lock().unwrap() += 1;
                    c.notify_all();
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                for _ in 0..(rng % 300) {
                    std::hint::spin_loop();
                }
                if rng & 127 == 0 {
                    std::thread::yield_now();
                }
            }
            woken
        })
    };
    let mut tail = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut got = 0u64;
    let mut lost = 0u64;
    let start = Instant::now();
    // As the subscriber does: consumed entries are told to the publisher
    // late (at random here, and always before parking), and it spins on
    // the entry's stamp for a while before it parks.
    let mut told = 0u64;
    let tell = |told: &mut u64, tail: u64| {
        if *told != tail {
            *told = tail;
            if sub.publish_tail(tail) {
                wakes.1.notify_all();
            }
        }
    };
    while got < N && start.elapsed() < Duration::from_secs(60) {
        match sub.peek_desc(tail).unwrap() {
            Some(e) => {
                assert_eq!(e, desc(got), "entries arrive in order, intact");
                tail += 1;
                got += 1;
                if rng & 3 == 0 {
                    tell(&mut told, tail);
                }
            }
            None => {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                tell(&mut told, tail);
                if (0..(rng % 200)).any(|_| {
                    std::hint::spin_loop();
                    sub.desc_stamped(tail)
                }) {
                    continue;
                }
                let (m, c) = &*wakes;
                let seen = *m.lock().unwrap();
                sub.park();
                if sub.desc_ready(tail) {
                    sub.unpark();
                    continue;
                }
                let g = m.lock().unwrap();
                let (g, t) = c
                    .wait_timeout_while(g, Duration::from_secs(1), |w| *w == seen)
                    .unwrap();
                drop(g);
                if t.timed_out() && sub.desc_ready(tail) {
                    lost += 1;
                }
                sub.unpark();
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let woken = p.join().unwrap();
    assert_eq!(got, N, "every entry arrived");
    assert_eq!(lost, 0, "no wake-up was lost");
    assert!(woken > 0, "the subscriber parked at least once");
}

/// The futex path: the publisher bumps and wakes only for a
/// subscriber parked with `park_futex`, which waits in `FUTEX_WAIT`. A
/// lost wake-up shows as a wait that times out (1 s) with an entry
/// already in the ring.
#[test]
fn futex_parking_never_loses_a_wake_up() {
    const N: u64 = 20_000;
    let (sub, fd) = ClaimTable::create(8).unwrap();
    let publ = Arc::new(ClaimTable::open(&fd, 8).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let p = {
        let (publ, done) = (publ.clone(), done.clone());
        std::thread::spawn(move || {
            let mut head = 0u64;
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut woken = 0u64;
            for i in 0..N {
                while !publ.desc_space(head) {
                    if done.load(Ordering::Relaxed) {
                        return woken;
                    }
                    std::thread::yield_now();
                }
                publ.push_desc(&mut head, &desc(i));
                match publ.take_parked() {
                    Some(Parked::Futex) => {
                        woken += 1;
                        publ.wake_futex();
                    }
                    Some(Parked::Socket) => panic!("parked on the socket"),
                    None => {}
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                for _ in 0..(rng % 300) {
                    std::hint::spin_loop();
                }
                if rng & 127 == 0 {
                    std::thread::yield_now();
                }
            }
            woken
        })
    };
    let mut tail = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (mut got, mut lost, mut waits) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while got < N && start.elapsed() < Duration::from_secs(60) {
        match sub.peek_desc(tail).unwrap() {
            Some(e) => {
                assert_eq!(e, desc(got), "entries arrive in order, intact");
                sub.consume_desc(&mut tail);
                got += 1;
            }
            None => {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                for _ in 0..(rng % 200) {
                    std::hint::spin_loop();
                }
                let seq = sub.park_futex();
                if sub.desc_ready(tail) {
                    sub.unpark();
                    continue;
                }
                waits += 1;
                let t0 = Instant::now();
                sub.futex_wait(seq, Duration::from_secs(1));
                if t0.elapsed() >= Duration::from_millis(900) && sub.desc_ready(tail) {
                    lost += 1;
                }
                sub.unpark();
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let woken = p.join().unwrap();
    assert_eq!(got, N, "every entry arrived");
    assert_eq!(lost, 0, "no wake-up was lost");
    assert!(
        woken > 0 && waits > 0,
        "the subscriber parked at least once"
    );
}

/// A hostile subscriber's value in `parked` (neither 1 nor 2) counts as
/// a socket park, and a futex wake with garbage in the word is harmless.
#[test]
fn hostile_parked_values_are_harmless() {
    let (sub, fd) = ClaimTable::create(4).unwrap();
    let publ = ClaimTable::open(&fd, 4).unwrap();
    assert_eq!(publ.take_parked(), None);
    sub.poke(ClaimTable::PARKED, u64::MAX);
    assert_eq!(publ.take_parked(), Some(Parked::Socket));
    assert_eq!(publ.take_parked(), None, "once per park");
    let seq = sub.park_futex();
    assert_eq!(publ.take_parked(), Some(Parked::Futex));
    publ.wake_futex();
    let t0 = Instant::now();
    sub.futex_wait(seq, Duration::from_secs(5));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a bumped word does not wait"
    );
    publ.wake_futex();
}

/// The same for releases and the publisher's kick.
#[test]
fn release_kicks_are_never_lost() {
    const N: u64 = 20_000;
    let (sub, fd) = ClaimTable::create(8).unwrap();
    let publ = Arc::new(ClaimTable::open(&fd, 8).unwrap());
    let sub = Arc::new(sub);
    let wakes = Arc::new((std::sync::Mutex::new(0u64), std::sync::Condvar::new()));
    let s = {
        let (sub, wakes) = (sub.clone(), wakes.clone());
        std::thread::spawn(move || {
            let mut head = 0u64;
            let mut rng = 0x1234_5678_9abc_def1u64;
            for i in 0..N {
                while !sub.push_release(&mut head, (i % 16) as u32, i + 1) {
                    std::thread::yield_now();
                }
                if sub.take_kick(KICK_RELEASES) {
                    let (m, c) = &*wakes;
                    *m.lock().unwrap() += 1;
                    c.notify_all();
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                for _ in 0..(rng % 300) {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let mut tail = 0u64;
    let mut got = 0u64;
    let mut lost = 0u64;
    let mut out = Vec::with_capacity(64);
    let start = Instant::now();
    while got < N && start.elapsed() < Duration::from_secs(60) {
        out.clear();
        publ.drain_releases(&mut tail, &mut out).unwrap();
        for (k, &(index, generation)) in out.iter().enumerate() {
            let i = got + k as u64;
            assert_eq!((index, generation), (i % 16, i + 1));
        }
        got += out.len() as u64;
        if out.is_empty() {
            let (m, c) = &*wakes;
            let seen = *m.lock().unwrap();
            publ.request_kick(KICK_RELEASES);
            if publ.releases_pending(tail) {
                continue;
            }
            let g = m.lock().unwrap();
            let (g, t) = c
                .wait_timeout_while(g, Duration::from_secs(1), |w| *w == seen)
                .unwrap();
            drop(g);
            if t.timed_out() && publ.releases_pending(tail) {
                lost += 1;
            }
        }
    }
    s.join().unwrap();
    assert_eq!(got, N);
    assert_eq!(lost, 0, "no kick was lost");
}
