//! Real processes: fan-out across processes, a subscriber killed while it holds
//! views, a publisher killed under its subscribers, and owner-only access.
//!
//! Every child runs `shm-pool-peer` under a guard that kills and reaps it on
//! drop; every wait has a deadline.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use transport_core::{
    Endpoint, Error, Frame, PublishOptions, Publisher, RecvMode, SubscribeOptions, Subscriber,
    Transport, pattern,
};
use transport_shm_pool::{ShmPoolPublisher, ShmPoolTransport};

const WAIT: Duration = Duration::from_secs(20);

/// A child `shm-pool-peer`, killed and reaped when dropped.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Peer {
    fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shm-pool-peer"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shm-pool-peer");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            stdin,
            lines,
            what: args.join(" "),
        }
    }

    /// Waits for a line starting with `prefix`; panics on an `error:` line,
    /// on exit, or after `WAIT`.
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) if l.starts_with("error") => panic!("peer `{}`: {l}", self.what),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "peer `{}` did not say `{prefix}` within {WAIT:?}",
                        self.what
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("peer `{}` exited before saying `{prefix}`", self.what)
                }
            }
        }
    }

    /// Closes its stdin (its cue to finish) and checks that it exits cleanly.
    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let rest: Vec<String> = self.lines.try_iter().collect();
                assert!(
                    status.success(),
                    "peer `{}` failed: {status} {rest:?}",
                    self.what
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "peer `{}` did not exit",
                self.what
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, reaped.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unique(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "proc-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Entries of /dev/shm that mention framewire or this test's pool.
fn dev_shm(name: &str) -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("framewire") || n.contains("shm-pool") || n.contains(name))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the pool's rendezvous name is still bound (abstract sockets are
/// listed in /proc/net/unix with a leading `@`; so are the accepted ones).
fn socket_bound(name: &str) -> bool {
    let uid = rustix::process::geteuid().as_raw();
    let needle = format!("@{}", transport_shm_pool::config::socket_name(uid, name));
    std::fs::read_to_string("/proc/net/unix")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some(needle.as_str()))
        })
        .unwrap_or(false)
}

/// True once the name is gone. Polls briefly: a child that another test is
/// spawning right now holds copies of this process's descriptors between its
/// fork and its exec (close-on-exec), which keeps a closed socket alive for
/// that moment without being a leak.
fn socket_released(name: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while socket_bound(name) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Waits (polling) until `f` holds; returns how long it took.
async fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// The next frame from `sub`, within `WAIT`.
async fn recv_frame<S: Subscriber>(sub: &mut S) -> Frame {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a frame in time")
        .expect("recv")
}

async fn publisher(url: &str, policy: transport_core::Policy) -> ShmPoolPublisher {
    ShmPoolTransport::new()
        .publish(
            &Endpoint::parse(url).expect("url"),
            &PublishOptions::default().policy(policy),
        )
        .await
        .expect("publisher")
}

/// One publisher here, three subscriber processes, each reading every frame
/// through views of the same slots.
#[test]
fn fan_out_across_processes() {
    let name = unique("fanout");
    let shm_before = dev_shm(&name);
    let url = format!("shm-pool://{name}?slots=4&slot_size=1MiB");
    runtime().block_on(async {
        let mut publ = publisher(&url, transport_core::Policy::Block).await;
        let frames = 40u64;
        let n = frames.to_string();
        let subs: Vec<Peer> = (0..3)
            .map(|_| Peer::spawn(&["subscribe", &url, "--mode", "view", "--frames", &n]))
            .collect();
        for s in &subs {
            s.expect("subscribed");
        }
        publ.wait_for_subscribers(3, WAIT)
            .await
            .expect("3 subscribers");
        for seq in 0..frames {
            let mut loan = tokio::time::timeout(WAIT, publ.loan(300_000 + seq as usize))
                .await
                .expect("a slot within the deadline")
                .expect("loan");
            pattern::fill(seq, &mut loan);
            publ.send_loan(loan).await.expect("send_loan");
        }
        tokio::time::timeout(WAIT, publ.flush())
            .await
            .expect("flush in time")
            .expect("flush");
        for s in &subs {
            s.expect(&format!("done {frames}"));
        }
        for s in subs {
            s.finish();
        }
        until("every slot back", || publ.free_slots() == 4).await;
        until("subscribers gone", || publ.subscriber_count() == Some(0)).await;
        assert_eq!(publ.stats().frames_sent, frames);
        assert_eq!(publ.stale_releases(), 0);
    });
    assert!(
        socket_released(&name),
        "the rendezvous name outlived the publisher"
    );
    assert_eq!(dev_shm(&name), shm_before, "nothing may appear in /dev/shm");
}

/// A subscriber process holding views of every slot is SIGKILLed: its slots
/// come back at once and the publisher goes on serving the others.
#[test]
fn killed_subscriber_gives_its_slots_back() {
    let name = unique("killsub");
    let shm_before = dev_shm(&name);
    let slots = 4usize;
    let url = format!("shm-pool://{name}?slots={slots}&max_held={slots}&slot_size=256KiB");
    runtime().block_on(async {
        let mut publ = publisher(&url, transport_core::Policy::Fail).await;
        // A well-behaved subscriber in this process, reading owned copies.
        let mut local = ShmPoolTransport::new()
            .subscribe(publ.endpoint(), &SubscribeOptions::default())
            .await
            .expect("local subscriber");
        let n = slots.to_string();
        let holder = Peer::spawn(&[
            "subscribe",
            &url,
            "--mode",
            "view",
            "--frames",
            &n,
            "--hold",
            &n,
        ]);
        holder.expect("subscribed");
        publ.wait_for_subscribers(2, WAIT)
            .await
            .expect("2 subscribers");
        for seq in 0..slots as u64 {
            publ.send(Frame::new(pattern::make(seq, 100_000)))
                .await
                .expect("send");
            let f = recv_frame(&mut local).await;
            assert_eq!(f.seq, seq);
        }
        holder.expect(&format!("holding {slots}"));
        // The child holds every slot: under `fail` the pool is full.
        match publ.send(Frame::new(pattern::make(99, 10))).await {
            Err(Error::Full {
                option: "slots", ..
            }) => {}
            other => panic!("expected Full while the child holds every slot, got {other:?}"),
        }
        assert_eq!(publ.free_slots(), 0);

        let mut holder = holder;
        let killed = Instant::now();
        holder.kill();
        let back = until("the killed subscriber's slots", || {
            publ.free_slots() == slots
        })
        .await;
        let since_kill = killed.elapsed();
        eprintln!(
            "slots back {back:?} after the kill returned ({since_kill:?} after SIGKILL was sent)"
        );
        assert!(
            since_kill < Duration::from_secs(1),
            "slots took {since_kill:?} to come back (goal: well under 100 ms)"
        );
        assert_eq!(publ.subscriber_count(), Some(1));
        // The publisher goes on serving the live subscriber.
        for seq in slots as u64..slots as u64 + 12 {
            publ.send(Frame::new(pattern::make(seq, 100_000)))
                .await
                .expect("send after the kill");
            let f = recv_frame(&mut local).await;
            assert_eq!(f.seq, seq);
            assert!(pattern::check(seq, &f.payload));
        }
    });
    assert!(socket_released(&name));
    assert_eq!(dev_shm(&name), shm_before);
}

/// A publisher process is SIGKILLed: its subscriber reads what was sent, then
/// gets `Disconnected` at once; the views it holds stay intact.
#[test]
fn killed_publisher_disconnects_subscribers() {
    let name = unique("killpub");
    let shm_before = dev_shm(&name);
    let url = format!("shm-pool://{name}?slots=4&max_held=4&slot_size=2MiB");
    let publ = Peer::spawn(&[
        "publish",
        &url,
        "--subscribers",
        "1",
        "--frames",
        "3",
        "--size",
        "2097152",
        "--loan",
    ]);
    publ.expect("listening");
    runtime().block_on(async {
        let views = SubscribeOptions::default().recv_mode(RecvMode::View);
        let mut sub = ShmPoolTransport::new()
            .subscribe(&Endpoint::parse(&url).expect("url"), &views)
            .await
            .expect("subscribe");
        publ.expect("sent 3");
        let mut held = Vec::new();
        for seq in 0..3 {
            let f = recv_frame(&mut sub).await;
            assert_eq!(f.seq, seq);
            assert!(pattern::check(seq, &f.payload));
            held.push(f);
        }
        let mut publ = publ;
        // Park in recv, then kill the publisher under it.
        let waiting = tokio::spawn(async move {
            let r = tokio::time::timeout(WAIT, sub.recv()).await;
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let killed = Instant::now();
        publ.kill();
        let (r, at) = waiting.await.expect("recv task");
        match r {
            Ok(Err(Error::Disconnected { .. })) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
        let took = at.saturating_duration_since(killed);
        eprintln!("Disconnected {took:?} after the kill returned");
        assert!(
            took < Duration::from_secs(1),
            "Disconnected took {took:?} (goal: well under 100 ms)"
        );
        for f in &held {
            assert!(
                pattern::check(f.seq, &f.payload),
                "view {} changed after the publisher died",
                f.seq
            );
        }
    });
    assert!(
        socket_released(&name),
        "a killed publisher leaves no rendezvous name"
    );
    assert_eq!(dev_shm(&name), shm_before);
}

/// A subscriber process in owned mode against a publisher process: the
/// payloads cross process boundaries intact, copies included.
#[test]
fn publisher_and_subscriber_processes() {
    let name = unique("p2p");
    let url = format!("shm-pool://{name}?slots=2&slot_size=1MiB");
    let publ = Peer::spawn(&[
        "publish",
        &url,
        "--subscribers",
        "1",
        "--frames",
        "30",
        "--size",
        "1000000",
    ]);
    publ.expect("listening");
    let sub = Peer::spawn(&["subscribe", &url, "--mode", "owned", "--frames", "30"]);
    sub.expect("done 30");
    publ.expect("sent 30");
    sub.finish();
    publ.finish();
    assert!(socket_released(&name));
}

/// A forwarder process between a publisher and a subscriber here: the
/// frames arrive intact and the forwarder copies none of them (it says how
/// many it forwarded without a copy); the publisher's slots stay held while
/// the subscriber here views the frames, come back as the views drop; when
/// the forwarder is killed, those behind live views stay reserved until the
/// views drop.
#[test]
fn forwarding_across_processes() {
    let (up, down) = (unique("fwd-up"), unique("fwd-down"));
    let up_url = format!("shm-pool://{up}?slots=4&max_held=4&slot_size=1MiB");
    let down_url = format!("shm-pool://{down}?slots=4&max_held=4&slot_size=1MiB");
    runtime().block_on(async {
        let mut publ = publisher(&up_url, transport_core::Policy::Fail).await;
        let fwd = Peer::spawn(&["forward", &up_url, &down_url, "--frames", "3"]);
        fwd.expect("listening");
        let views = SubscribeOptions::default().recv_mode(RecvMode::View);
        let mut sub = ShmPoolTransport::new()
            .subscribe(&Endpoint::parse(&down_url).expect("url"), &views)
            .await
            .expect("subscribe downstream");
        fwd.expect("ready");
        publ.wait_for_subscribers(1, WAIT)
            .await
            .expect("the forwarder");
        for seq in 0..3u64 {
            let mut loan = publ.loan(300_000 + seq as usize).await.expect("loan");
            pattern::fill(seq, &mut loan);
            publ.send_loan(loan).await.expect("send_loan");
        }
        let mut views = Vec::new();
        for seq in 0..3u64 {
            let f = recv_frame(&mut sub).await;
            assert_eq!(f.seq, seq);
            assert!(pattern::check(seq, &f.payload), "frame {seq} intact");
            assert_eq!(f.trace.len(), 1, "the forwarder's hop");
            views.push(f);
        }
        fwd.expect("forwarded 3 3");
        assert_eq!(publ.free_slots(), 1, "three slots behind three views");
        views.remove(0);
        until("the dropped view's slot", || publ.free_slots() == 2).await;
        // Killed with views still alive downstream. Its socket closes, but
        // this process still holds its anchor (passed on with the segment):
        // the two slots behind our views stay reserved, the publisher goes
        // on with the others.
        let mut fwd = fwd;
        fwd.kill();
        until("the forwarder unregistered", || {
            publ.subscriber_count() == Some(0)
        })
        .await;
        for _ in 0..30 {
            assert_eq!(publ.free_slots(), 2, "slots behind live downstream views");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut local = ShmPoolTransport::new()
            .subscribe(publ.endpoint(), &SubscribeOptions::default())
            .await
            .expect("a local subscriber");
        publ.wait_for_subscribers(1, WAIT)
            .await
            .expect("the local subscriber");
        for seq in 3..23u64 {
            until("a free slot", || publ.free_slots() > 0).await;
            publ.send(Frame::new(pattern::make(seq, 300_000)))
                .await
                .expect("send");
            let f = recv_frame(&mut local).await;
            assert_eq!(f.seq, seq);
            for v in &views {
                assert!(
                    pattern::check(v.seq, &v.payload),
                    "slot of frame {} reused under a downstream view",
                    v.seq
                );
            }
        }
        match tokio::time::timeout(WAIT, sub.recv()).await {
            Ok(Err(Error::Disconnected { .. })) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
        let clone = views[1].payload.clone();
        drop(views);
        for _ in 0..10 {
            assert!(
                publ.free_slots() <= 2,
                "a clone keeps the segment mapped, and so both slots reserved"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(clone);
        // The last view of the segment gone (the subscriber dropped its
        // table at Disconnected): the anchor closes, the slots come back.
        until("every slot back once the views are gone", || {
            publ.free_slots() == 4
        })
        .await;
        assert_eq!(publ.stale_releases(), 0);
    });
    assert!(socket_released(&up));
}

/// A subscriber process behind a forwarder process holds views of every
/// forwarded frame and is SIGKILLed: the upstream slots come back here.
#[test]
fn killed_subscriber_behind_a_forwarder_releases_upstream() {
    let (up, down) = (unique("fwdk-up"), unique("fwdk-down"));
    let up_url = format!("shm-pool://{up}?slots=4&max_held=4&slot_size=256KiB");
    let down_url = format!("shm-pool://{down}?slots=4&max_held=4&slot_size=256KiB");
    runtime().block_on(async {
        let mut publ = publisher(&up_url, transport_core::Policy::Fail).await;
        let fwd = Peer::spawn(&["forward", &up_url, &down_url, "--frames", "4"]);
        fwd.expect("listening");
        let mut holder = Peer::spawn(&[
            "subscribe",
            &down_url,
            "--mode",
            "view",
            "--frames",
            "4",
            "--hold",
            "4",
        ]);
        holder.expect("subscribed");
        fwd.expect("ready");
        publ.wait_for_subscribers(1, WAIT)
            .await
            .expect("the forwarder");
        for seq in 0..4u64 {
            publ.send(Frame::new(pattern::make(seq, 100_000)))
                .await
                .expect("send");
        }
        holder.expect("holding 4");
        fwd.expect("forwarded 4 4");
        assert_eq!(publ.free_slots(), 0, "held two processes away");
        match publ.send(Frame::new(pattern::make(9, 10))).await {
            Err(Error::Full {
                option: "slots", ..
            }) => {}
            other => panic!("expected Full, got {other:?}"),
        }
        holder.kill();
        until("the upstream slots after the kill", || {
            publ.free_slots() == 4
        })
        .await;
        fwd.finish();
    });
    assert!(socket_released(&up));
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Another user's process gets nothing from a publisher, and a subscriber
/// refuses a name that another user bound first.
#[test]
fn owner_only() {
    if !is_root() {
        eprintln!("owner_only needs root to run a peer as another user; not run");
        return;
    }
    let name = unique("owner");
    let url = format!("shm-pool://{name}?slots=2&slot_size=64KiB");
    runtime().block_on(async {
        let _publ = publisher(&url, transport_core::Policy::Block).await;
        // The same user gets a HELLO ...
        let same = Peer::spawn(&["probe", &name, "0"]);
        same.expect("hello");
        // ... another user is cut off before any byte of the protocol.
        let other = Peer::spawn(&["probe", &name, "0", "--as-uid", "65534"]);
        other.expect("closed");
    });
    let squatted = unique("squat");
    let squatter = Peer::spawn(&["squat", &squatted, "0", "--as-uid", "65534"]);
    squatter.expect("listening");
    runtime().block_on(async {
        let url = format!("shm-pool://{squatted}");
        let r = ShmPoolTransport::new()
            .subscribe(
                &Endpoint::parse(&url).expect("url"),
                &SubscribeOptions::default(),
            )
            .await;
        match r {
            Err(e @ Error::Io { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("uid 65534"), "{msg}");
            }
            other => panic!("a squatted name must be refused, got {other:?}"),
        }
    });
}

/// A chain source (here) -> forwarder process -> relay (here) -> end (here):
/// the forwarder in the middle is killed while the end views both frames.
/// The source's slots stay reserved until the end's views are gone, and
/// then come back without anyone having to drop the relay: its forwarded
/// segment is forgotten (FORGET) once its last frame is released and the
/// relay's subscriber has reported the forwarder gone.
#[test]
fn a_killed_forwarder_in_the_middle_of_a_chain() {
    let (up, mid, down) = (
        unique("chain-up"),
        unique("chain-mid"),
        unique("chain-down"),
    );
    let up_url = format!("shm-pool://{up}?slots=4&max_held=4&slot_size=1MiB");
    let mid_url = format!("shm-pool://{mid}?slots=4&max_held=4&slot_size=1MiB");
    let down_url = format!("shm-pool://{down}?slots=4&max_held=4&slot_size=1MiB");
    runtime().block_on(async {
        let mut publ = publisher(&up_url, transport_core::Policy::Fail).await;
        let fwd = Peer::spawn(&["forward", &up_url, &mid_url, "--frames", "2"]);
        fwd.expect("listening");
        let views = SubscribeOptions::default().recv_mode(RecvMode::View);
        let mut relay_in = ShmPoolTransport::new()
            .subscribe(&Endpoint::parse(&mid_url).expect("url"), &views)
            .await
            .expect("subscribe to the forwarder");
        fwd.expect("ready");
        publ.wait_for_subscribers(1, WAIT)
            .await
            .expect("the forwarder");
        let mut relay = publisher(&down_url, transport_core::Policy::Fail).await;
        let mut end = ShmPoolTransport::new()
            .subscribe(relay.endpoint(), &views)
            .await
            .expect("subscribe to the relay");
        relay.wait_for_subscribers(1, WAIT).await.expect("the end");
        for seq in 0..2u64 {
            let mut loan = publ.loan(200_000).await.expect("loan");
            pattern::fill(seq, &mut loan);
            publ.send_loan(loan).await.expect("send_loan");
        }
        let mut held = Vec::new();
        for seq in 0..2u64 {
            let f = recv_frame(&mut relay_in).await;
            relay.send(f).await.expect("forward at the relay");
            let f = recv_frame(&mut end).await;
            assert!(pattern::check(seq, &f.payload), "frame {seq} intact");
            held.push(f);
        }
        assert_eq!(relay.forwarded(), 2);
        fwd.expect("forwarded 2 2");
        assert_eq!(publ.free_slots(), 2);

        let mut fwd = fwd;
        fwd.kill();
        until("the forwarder unregistered", || {
            publ.subscriber_count() == Some(0)
        })
        .await;
        match tokio::time::timeout(WAIT, relay_in.recv()).await {
            Ok(Err(Error::Disconnected { .. })) => {}
            other => panic!("expected Disconnected at the relay, got {other:?}"),
        }
        for _ in 0..30 {
            assert_eq!(publ.free_slots(), 2, "slots behind the end's views");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for f in &held {
            assert!(pattern::check(f.seq, &f.payload), "frame {} intact", f.seq);
        }
        drop(held);
        until("the relay's forward slots back", || {
            relay.free_forward_slots() == 4
        })
        .await;
        // The end reads the relay's FORGET (and nothing else).
        assert!(
            tokio::time::timeout(Duration::from_millis(200), end.recv())
                .await
                .is_err(),
            "no frame after the two"
        );
        until("the source's slots back, the relay still alive", || {
            publ.free_slots() == 4
        })
        .await;
        assert_eq!(relay.subscriber_count(), Some(1));
        assert_eq!(publ.stale_releases(), 0);
    });
    assert!(socket_released(&up));
}

/// P1 (here) -> P2 (a forwarder process) -> D (a subscriber process): P2
/// forwards some frames and keeps one more as a view it never forwards; D
/// reads what it was sent, keeps `hold` views, and then stays busy (it no
/// longer calls `recv`). Returns the upstream publisher, both children and
/// the upstream pool's name, once P2 has forwarded `forwards` frames and
/// kept one more, and D has read 2.
async fn killed_forwarder_setup(
    test: &str,
    forwards: u64,
    hold: u64,
) -> (ShmPoolPublisher, Peer, Peer, String) {
    let (up, down) = (
        unique(&format!("{test}-up")),
        unique(&format!("{test}-down")),
    );
    let up_url = format!("shm-pool://{up}?slots=4&max_held=4&slot_size=256KiB");
    let down_url = format!("shm-pool://{down}?slots=4&max_held=4&slot_size=256KiB");
    let mut publ = publisher(&up_url, transport_core::Policy::Fail).await;
    let fwd = Peer::spawn(&[
        "forward",
        &up_url,
        &down_url,
        "--frames",
        &forwards.to_string(),
        "--keep",
        "1",
    ]);
    fwd.expect("listening");
    let d = Peer::spawn(&[
        "subscribe",
        &down_url,
        "--mode",
        "view",
        "--frames",
        "2",
        "--hold",
        &hold.to_string(),
    ]);
    d.expect("subscribed");
    fwd.expect("ready");
    publ.wait_for_subscribers(1, WAIT)
        .await
        .expect("the forwarder");
    for seq in 0..=forwards {
        publ.send(Frame::new(pattern::make(seq, 100_000)))
            .await
            .expect("send");
    }
    fwd.expect(&format!("forwarded {forwards} {forwards}"));
    fwd.expect("kept 1");
    d.expect("done 2");
    (publ, fwd, d, up)
}

/// Kills P2 and returns how long the upstream slots took to be `free`.
async fn kill_and_wait(publ: &ShmPoolPublisher, fwd: &mut Peer, free: usize) -> Duration {
    let killed = Instant::now();
    fwd.kill();
    until("the upstream slots after the kill", || {
        publ.free_slots() == free
    })
    .await;
    let took = killed.elapsed();
    eprintln!("{free} slots free {took:?} after SIGKILL was sent");
    took
}

/// A killed forwarder pins nothing that no live view references, though
/// the process downstream holds its anchor and is not inside `recv`: the
/// slot it kept without forwarding, the slots of frames it forwarded that
/// were dropped downstream, and one it forwarded that was never read there
/// all come back at once.
#[test]
fn a_killed_forwarder_pins_nothing_without_live_views() {
    runtime().block_on(async {
        let (publ, mut fwd, d, up) = killed_forwarder_setup("kfree", 3, 0).await;
        // Frames 0 and 1 were read and dropped by D; 2 is unread there, 3
        // kept by P2.
        until("D's dropped views released upstream", || {
            publ.free_slots() == 2
        })
        .await;
        let took = kill_and_wait(&publ, &mut fwd, 4).await;
        assert!(
            took < Duration::from_secs(1),
            "slots took {took:?} to come back (goal: well under 100 ms)"
        );
        assert_eq!(publ.stale_releases(), 0);
        d.finish();
        drop(publ);
        assert!(socket_released(&up));
    });
}

/// A killed forwarder under one live view downstream: the slot it kept
/// without forwarding comes back at once; the one under the view stays
/// reserved (frames published meanwhile never touch it: the view, checked
/// when D exits, is intact) until D lets go.
#[test]
fn a_killed_forwarder_frees_what_it_did_not_forward() {
    runtime().block_on(async {
        let (mut publ, mut fwd, d, up) = killed_forwarder_setup("kheld", 2, 1).await;
        // Frame 0 is viewed by D, 1 was dropped there, 2 is kept by P2.
        until("D's dropped view released upstream", || {
            publ.free_slots() == 2
        })
        .await;
        let took = kill_and_wait(&publ, &mut fwd, 3).await;
        assert!(
            took < Duration::from_secs(1),
            "the kept slot took {took:?} to come back (goal: well under 100 ms)"
        );
        let mut local = ShmPoolTransport::new()
            .subscribe(publ.endpoint(), &SubscribeOptions::default())
            .await
            .expect("a local subscriber");
        publ.wait_for_subscribers(1, WAIT)
            .await
            .expect("the local subscriber");
        for seq in 10..30u64 {
            until("a free slot", || publ.free_slots() > 0).await;
            publ.send(Frame::new(pattern::make(seq, 100_000)))
                .await
                .expect("send");
            let f = recv_frame(&mut local).await;
            assert!(pattern::check(seq, &f.payload));
            assert!(publ.free_slots() <= 3, "the slot under D's view is reused");
        }
        // D checks its view when it exits, then lets go.
        d.finish();
        until("every slot back", || publ.free_slots() == 4).await;
        drop(publ);
        assert!(socket_released(&up));
    });
}
