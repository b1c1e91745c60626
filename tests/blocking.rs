//! The blocking API from plain threads: no runtime of the caller's.

use std::time::{Duration, Instant};

use framewire::{Error, Frame, PublishOptions, SubscribeOptions, blocking};

fn pair(url: &str) -> (blocking::BlockingPublisher, blocking::BlockingSubscriber) {
    let mut p = blocking::publish(url, PublishOptions::default()).expect("publish");
    let url = p.endpoint().url().to_owned();
    let s = blocking::subscribe(&url, SubscribeOptions::default()).expect("subscribe");
    p.wait_for_subscribers(1, Duration::from_secs(10))
        .expect("subscriber connects");
    (p, s)
}

#[test]
fn send_loan_and_recv_from_plain_threads() {
    let (mut p, mut s) = pair("tcp://127.0.0.1:0");
    let t = std::thread::spawn(move || {
        for i in 0..5u8 {
            let mut loan = p.loan(4096).unwrap();
            loan.fill(i);
            p.send_loan(loan).unwrap();
        }
        p.send(Frame::new(vec![9u8; 10])).unwrap();
        p.close().unwrap();
        p
    });
    for i in 0..5u8 {
        let f = s.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(f.seq, i as u64);
        assert!(f.payload.iter().all(|&b| b == i));
    }
    assert_eq!(s.recv().unwrap().payload.len(), 10);
    let p = t.join().unwrap();
    drop(p);
    let e = s.recv_timeout(Duration::from_secs(10)).unwrap_err();
    assert!(e.is_disconnect(), "{e}");
}

#[test]
fn recv_timeout_and_try_recv_return_none_when_nothing_came() {
    let (mut p, mut s) = pair("tcp://127.0.0.1:0");
    let t0 = Instant::now();
    assert!(
        s.recv_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert!(s.try_recv().unwrap().is_none());
    p.send(Frame::new(vec![1u8; 8])).unwrap();
    p.flush().unwrap();
    // try_recv returns a frame that has arrived; give it a bounded while to.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(f) = s.try_recv().unwrap() {
            assert_eq!(f.payload.len(), 8);
            break;
        }
        assert!(Instant::now() < deadline, "the frame never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dropping_the_publisher_on_another_thread_wakes_a_blocked_recv() {
    let (p, mut s) = pair("tcp://127.0.0.1:0");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(p);
    });
    let t0 = Instant::now();
    let e = s.recv_timeout(Duration::from_secs(10)).unwrap_err();
    assert!(e.is_disconnect(), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
}

#[test]
fn a_closer_interrupts_a_blocked_recv_from_another_thread() {
    let (_p, mut s) = pair("tcp://127.0.0.1:0");
    let closer = s.closer();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        closer.close();
    });
    let t0 = Instant::now();
    let e = s.recv().unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e}");
    assert!(e.to_string().contains("closed"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // And it stays closed.
    assert!(s.try_recv().unwrap_err().is_disconnect());
    t.join().unwrap();
}

#[test]
fn inside_a_runtime_it_is_an_error_not_a_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(async { blocking::publish("tcp://127.0.0.1:0", PublishOptions::default()) })
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
}

#[cfg(feature = "shm-pool")]
#[test]
fn shm_pool_views_through_the_blocking_api() {
    let name = format!("blocking-{}", std::process::id());
    let (mut p, _s) = pair(&format!("shm-pool://{name}?slots=4&slot_size=1MiB"));
    let mut view = blocking::subscribe(
        &format!("shm-pool://{name}?recv=view"),
        SubscribeOptions::default(),
    )
    .unwrap();
    p.wait_for_subscribers(2, Duration::from_secs(10)).unwrap();
    let mut loan = p.loan(1 << 20).unwrap();
    loan.fill(0xAB);
    p.send_loan(loan).unwrap();
    let f = view.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(f.payload.len(), 1 << 20);
    assert!(f.payload.iter().all(|&b| b == 0xAB));
}

#[test]
fn an_interrupt_ends_a_send_blocked_by_a_stalled_subscriber_and_the_publisher_goes_on() {
    // A subscriber that does not read: queues of 1 and the socket buffers
    // fill, then a send under policy=block waits.
    let (mut p, mut s) = pair("tcp://127.0.0.1:0?queue=1");
    let interrupt = blocking::Interrupt::default();
    let frame = |i: u8| Frame::new(vec![i; 4 << 20]);
    let mut sent = 0u8;
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(30), "send never blocked");
        let r = p
            .send_or_interrupt(frame(sent), &interrupt, Some(Duration::from_millis(300)))
            .unwrap();
        if r.is_none() {
            break;
        }
        sent += 1;
    }
    // Blocked now: an interrupt from another thread ends the wait at once.
    let i2 = interrupt.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        i2.interrupt();
    });
    let t1 = Instant::now();
    assert!(
        p.send_or_interrupt(frame(sent), &interrupt, None)
            .unwrap()
            .is_none()
    );
    assert!(t1.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
    // Still set: the next call returns at once, until cleared.
    assert!(interrupt.is_set());
    assert!(
        p.send_or_interrupt(frame(sent), &interrupt, None)
            .unwrap()
            .is_none()
    );
    assert!(interrupt.clear());
    assert!(!interrupt.is_set());
    // A recv with the interrupt set returns None at once, losing nothing.
    interrupt.interrupt();
    assert!(s.recv_or_interrupt(None, &interrupt).unwrap().is_none());
    interrupt.clear();
    // Nothing half-sent: the subscriber reads every frame sent before, then
    // the one sent after the interrupts, in order.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..=sent {
            let f = s
                .recv_timeout(Duration::from_secs(20))
                .unwrap()
                .expect("a frame");
            got.push((f.seq, f.payload[0]));
        }
        got
    });
    p.send(frame(sent)).unwrap();
    let got = reader.join().unwrap();
    let want: Vec<(u64, u8)> = (0..=sent).map(|i| (i as u64, i)).collect();
    assert_eq!(got, want);
}

#[test]
fn an_interrupt_ends_a_recv_and_the_next_recv_gets_the_frame() {
    let (mut p, mut s) = pair("tcp://127.0.0.1:0");
    let interrupt = blocking::Interrupt::default();
    let i2 = interrupt.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        i2.interrupt();
    });
    let t0 = Instant::now();
    assert!(s.recv_or_interrupt(None, &interrupt).unwrap().is_none());
    assert!(t0.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
    interrupt.clear();
    p.send(Frame::new(vec![3u8; 16])).unwrap();
    let f = s
        .recv_or_interrupt(Some(Duration::from_secs(10)), &interrupt)
        .unwrap()
        .expect("the frame");
    assert_eq!((f.seq, f.payload.len()), (0, 16));
}
