//! No peer can crash a process by announcing a huge length: a ZMTP frame
//! header that announces a 1 TiB body (73 bytes with the greeting) is refused
//! before anything is allocated, on the publisher's side (a hostile
//! subscriber) and on the subscriber's side (a hostile publisher).
//!
//! The victims run as child processes (this test binary, re-run in a child
//! mode) so that an abort is seen as the child's exit status instead of
//! killing the test run: with the `zeromq` 0.7 codec the backend used before,
//! both children died of SIGABRT ("memory allocation of 1099511693321 bytes
//! failed"). Only std and the public API are used here, on purpose: the file
//! builds against that old backend too.

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use transport_core::{
    Endpoint, Frame, PublishOptions, Publisher, SubscribeOptions, Subscriber, Transport, pattern,
};
use transport_zmq::ZmqTransport;

const T: Duration = Duration::from_secs(20);

/// A ZMTP 3.0 greeting, NULL mechanism.
fn greeting() -> Vec<u8> {
    let mut g = vec![0u8; 64];
    g[0] = 0xFF;
    g[8] = 1;
    g[9] = 0x7F;
    g[10] = 3;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// A READY command with `Socket-Type: socket_type`.
fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5u8];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut f = vec![0x04, body.len() as u8];
    f.extend_from_slice(&body);
    f
}

/// A frame header (LONG, plus `flags`) announcing 1 TiB.
fn one_tib(flags: u8) -> Vec<u8> {
    let mut h = vec![0x02 | flags];
    h.extend_from_slice(&(1u64 << 40).to_be_bytes());
    h
}

fn spawn_child(mode: &str, url: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([mode, "--exact", "--nocapture", "--test-threads=1"])
        .env("FRAMEWIRE_HOSTILE_CHILD_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child")
}

/// The first line of the child's output that starts with `tag`, and the
/// output reader.
fn line_from(child: &mut Child, tag: &'static str) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
        {
            if let Some((_, rest)) = l.split_once(tag) {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    rx
}

/// Waits for the child to exit (at most `T`; killed after that).
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + T;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Child mode: a publisher that sends a frame every 20 ms to whoever subscribes.
#[test]
fn child_publisher() {
    let Ok(url) = std::env::var("FRAMEWIRE_HOSTILE_CHILD_URL") else {
        return; // Not the child.
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ep = Endpoint::parse(&url).expect("url");
        let mut p = ZmqTransport
            .publish(&ep, &PublishOptions::default())
            .await
            .expect("publish");
        println!("ENDPOINT {}", p.endpoint());
        for i in 0..3000u64 {
            p.send(Frame::new(pattern::make(i, 1000)))
                .await
                .expect("send");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Child mode: a subscriber; prints what its first `recv` gave.
#[test]
fn child_subscriber() {
    let Ok(url) = std::env::var("FRAMEWIRE_HOSTILE_CHILD_URL") else {
        return; // Not the child.
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ep = Endpoint::parse(&url).expect("url");
        let r = ZmqTransport
            .subscribe(&ep, &SubscribeOptions::default())
            .await;
        let mut s = match r {
            Ok(s) => s,
            Err(e) => {
                println!("RESULT subscribe failed: {e}");
                return;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), s.recv()).await {
            Ok(Ok(f)) => println!("RESULT frame {}", f.seq),
            Ok(Err(e)) => println!("RESULT error: {e}"),
            Err(_) => println!("RESULT nothing within 10 s"),
        }
    });
}

#[test]
fn a_huge_length_from_a_subscriber_does_not_crash_the_publisher() {
    let mut child = spawn_child("child_publisher", "zmq+tcp://127.0.0.1:0");
    let lines = line_from(&mut child, "ENDPOINT ");
    let url = lines.recv_timeout(T).expect("the child's endpoint");
    let addr = url
        .trim_start_matches("zmq+tcp://")
        .split('?')
        .next()
        .expect("addr")
        .to_owned();
    // After the handshake: a message frame of 1 TiB. Before the handshake
    // is complete: a command of 1 TiB.
    let mut after = greeting();
    after.extend_from_slice(&ready("SUB"));
    after.extend_from_slice(&one_tib(0));
    let mut before = greeting();
    before.extend_from_slice(&one_tib(0x04));
    for (what, attack) in [("after READY", after), ("instead of READY", before)] {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            panic!(
                "the publisher is gone before the attack {what}: {:?}",
                child.wait()
            );
        };
        s.set_read_timeout(Some(T)).expect("timeout");
        s.write_all(&attack).expect("attack");
        s.write_all(&[0u8; 64]).expect("a little of the body");
        // The publisher closes the connection (or the process died).
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        // A process that aborts closes its sockets first: give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the publisher died of a 1 TiB frame {what}: {:?}",
            child.wait()
        );
    }
    // And it still serves a real subscriber.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let got = rt.block_on(async {
        let ep = Endpoint::parse(&url).expect("url");
        let mut sub =
            tokio::time::timeout(T, ZmqTransport.subscribe(&ep, &SubscribeOptions::default()))
                .await
                .expect("in time")
                .expect("subscribe");
        tokio::time::timeout(T, sub.recv())
            .await
            .expect("in time")
            .map(|f| f.payload.len())
    });
    let alive = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(alive, "the publisher died");
    assert_eq!(got.expect("a frame"), 1000);
}

#[test]
fn a_huge_length_from_a_publisher_does_not_crash_the_subscriber() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "zmq+tcp://{}?handshake_timeout=3s",
        l.local_addr().expect("addr")
    );
    let mut child = spawn_child("child_subscriber", &url);
    let result = line_from(&mut child, "RESULT ");
    l.set_nonblocking(false).expect("blocking");
    let (mut s, _) = l.accept().expect("the subscriber connects");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut attack = greeting();
    attack.extend_from_slice(&ready("PUB"));
    attack.extend_from_slice(&one_tib(0));
    s.write_all(&attack).expect("attack");
    let _ = s.write_all(&[0u8; 64]);
    // Whatever the subscriber sends, keep the connection open a while.
    let until = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => {}
        }
    }
    drop(s);
    let status = wait_exit(&mut child);
    let said = result.recv_timeout(Duration::from_secs(5));
    assert!(
        status.success(),
        "the subscriber process died of a 1 TiB frame: {status:?} ({said:?})"
    );
    let said = said.expect("the child's result");
    assert!(
        said.contains("max_payload") || said.contains("error") || said.contains("failed"),
        "{said}"
    );
}
