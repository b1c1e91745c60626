//! A plain Zenoh peer (Python `eclipse-zenoh`) reads and writes framewire
//! frames; skipped with a message when `import zenoh` fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use transport_core::{Endpoint, Error, Frame, Publisher, Subscriber, Transport, pattern};
use transport_zenoh::ZenohTransport;

const N: u64 = 20;
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop.py");

fn python_zenoh() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import zenoh"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "interop: skipped: python3 cannot `import zenoh`; install it with `python3 -m pip install -r python/requirements-test.txt`"
        );
    }
    ok
}

/// Kills and reaps the child on drop (also when the test fails).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reap {
    fn finish(&mut self, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.0.try_wait() {
                Ok(Some(st)) => {
                    let mut out = String::new();
                    if let Some(o) = self.0.stdout.take() {
                        for l in BufReader::new(o).lines().map_while(|l| l.ok()) {
                            out.push_str(&l);
                            out.push('\n');
                        }
                    }
                    return (st.success(), out);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => panic!("python peer did not finish in {timeout:?}"),
            }
        }
    }
}

fn spawn(mode: &str, locator: &str, key: &str) -> Reap {
    Reap(
        Command::new("python3")
            .arg(SCRIPT)
            .args([mode, locator, key, &N.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_subscriber_reads_framewire_frames() {
    if !python_zenoh() {
        return;
    }
    let key = format!("interop/{}/to-python", std::process::id());
    let ep = Endpoint::parse(&format!("zenoh://{key}?listen=tcp/127.0.0.1:0")).unwrap();
    let mut publ = ZenohTransport
        .publish(&ep, &Default::default())
        .await
        .expect("publisher");
    let locator = publ
        .endpoint()
        .param("connect")
        .expect("connect=")
        .to_owned();
    let mut child = spawn("sub", &locator, &key);
    publ.wait_for_subscribers(1, Duration::from_secs(30))
        .await
        .expect("the python subscriber's liveliness token");
    for i in 0..N {
        publ.send(Frame::new(pattern::make(i, 4096)).with_topic(format!("py/{i}")))
            .await
            .expect("send");
    }
    publ.close().await.expect("close");
    let (ok, out) = tokio::task::spawn_blocking(move || child.finish(Duration::from_secs(40)))
        .await
        .unwrap();
    assert!(ok && out.contains(&format!("ok {N}")), "python: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publisher_writes_framewire_frames() {
    if !python_zenoh() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = format!("interop/{}/from-python", std::process::id());
    let ep = Endpoint::parse(&format!("zenoh://{key}?listen=tcp/127.0.0.1:{port}")).unwrap();
    let mut sub = ZenohTransport
        .subscribe(&ep, &Default::default())
        .await
        .expect("subscriber");
    let mut child = spawn("pub", &format!("tcp/127.0.0.1:{port}"), &key);
    for i in 0..N {
        let f = tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .expect("a frame from python in time")
            .expect("recv");
        assert_eq!(f.seq, i);
        assert_eq!(f.topic, format!("py/{i}"));
        assert!(pattern::check(i, &f.payload), "payload of frame {i}");
    }
    match tokio::time::timeout(Duration::from_secs(30), sub.recv()).await {
        Ok(Err(Error::Disconnected { .. })) => {}
        other => panic!("expected Disconnected after the python DELETE, got {other:?}"),
    }
    let (ok, out) = tokio::task::spawn_blocking(move || child.finish(Duration::from_secs(40)))
        .await
        .unwrap();
    assert!(ok, "python: {out}");
}
