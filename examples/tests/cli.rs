//! Runs the real `publisher` and `subscriber` programs against each other.
#![cfg(feature = "tcp")]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use framewire::Publisher;

/// Longest any one program may run in these tests.
const DEADLINE: Duration = Duration::from_secs(90);

/// A running program whose output is collected; killed and reaped on drop.
struct Proc {
    name: &'static str,
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// What a finished program left behind.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

impl Proc {
    fn spawn(name: &'static str, exe: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        Proc {
            name,
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the program to exit; kills it and fails the test after `limit`.
    fn finish(mut self, limit: Duration) -> Finished {
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                    panic!(
                        "{} did not finish in {limit:?}; stderr:\n{}",
                        self.name,
                        err.unwrap_or_default()
                    );
                }
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        };
        // The pipes close when the program exits, so these joins end.
        let take = |h: Option<JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        Finished {
            status,
            stdout: take(self.stdout.take()),
            stderr: take(self.stderr.take()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A socket path in the temp directory, removed on drop.
struct TempSocket(PathBuf);

impl TempSocket {
    fn new(tag: &str) -> TempSocket {
        let path = std::env::temp_dir().join(format!(
            "framewire-examples-{tag}-{}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        TempSocket(path)
    }
}

impl Drop for TempSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// Two subscribers started first, then a publisher waiting for both; every
/// frame arrives intact at each.
fn run_pair(url: &str, send_path: &str, recv_mode: &str) {
    let subscriber = env!("CARGO_BIN_EXE_subscriber");
    let publisher = env!("CARGO_BIN_EXE_publisher");
    let sub_args = [
        "--endpoint",
        url,
        "--count",
        "20",
        "--verify",
        "--timeout",
        "30",
        "--recv",
        recv_mode,
    ];
    let subs = [
        Proc::spawn("subscriber 1", subscriber, &sub_args),
        Proc::spawn("subscriber 2", subscriber, &sub_args),
    ];
    let publ = Proc::spawn(
        "publisher",
        publisher,
        &[
            "--endpoint",
            url,
            "--size",
            "1MiB",
            "--count",
            "20",
            "--wait-subscribers",
            "2",
            "--wait-timeout",
            "30",
            "--send",
            send_path,
        ],
    );
    let p = publ.finish(DEADLINE);
    assert!(
        p.status.success(),
        "publisher failed: {}\n{}",
        p.status,
        p.stderr
    );
    let line = p.last_line();
    assert!(
        line.starts_with("sent=20 bytes=20971520 secs=") && line.contains(" mb_per_s="),
        "publisher printed `{line}`; stderr:\n{}",
        p.stderr
    );
    for s in subs {
        let f = s.finish(DEADLINE);
        assert_eq!(
            f.last_line(),
            "received=20 lost=0 corrupt=0",
            "stdout:\n{}\nstderr:\n{}",
            f.stdout,
            f.stderr
        );
        assert!(
            f.status.success(),
            "subscriber failed: {}\n{}",
            f.status,
            f.stderr
        );
    }
}

#[test]
fn tcp_publisher_to_two_subscribers() {
    let url = format!("tcp://127.0.0.1:{}", free_tcp_port());
    run_pair(&url, "loan", "owned");
}

#[test]
fn unix_publisher_to_two_subscribers() {
    let sock = TempSocket::new("unix");
    let url = format!("unix://{}", sock.0.display());
    run_pair(&url, "copy", "view");
}

#[test]
fn idle_timeout_and_disconnect_end_early_without_failing() {
    let subscriber = env!("CARGO_BIN_EXE_subscriber");
    let publisher = env!("CARGO_BIN_EXE_publisher");

    // Idle: at 0.5 Hz the second frame comes 2 s after the first, past the
    // subscriber's 0.5 s idle timeout.
    let url = format!("tcp://127.0.0.1:{}", free_tcp_port());
    let s = Proc::spawn(
        "subscriber",
        subscriber,
        &[
            "--endpoint",
            &url,
            "--count",
            "5",
            "--verify",
            "--timeout",
            "0.5",
        ],
    );
    let p = Proc::spawn(
        "publisher",
        publisher,
        &[
            "--endpoint",
            &url,
            "--size",
            "4KiB",
            "--count",
            "2",
            "--rate",
            "0.5",
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            "30",
        ],
    );
    let f = s.finish(DEADLINE);
    assert_eq!(f.last_line(), "received=1 lost=0 corrupt=0", "{}", f.stderr);
    assert!(f.status.success(), "{}", f.stderr);
    assert!(f.stderr.contains("no frame for"), "{}", f.stderr);
    let pf = p.finish(DEADLINE);
    assert!(pf.status.success(), "{}", pf.stderr);
    assert!(pf.last_line().starts_with("sent=2 "), "{}", pf.stdout);
    let secs: f64 = pf
        .last_line()
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("secs="))
        .and_then(|v| v.parse().ok())
        .expect("secs= in the summary");
    assert!(secs >= 1.9, "--rate 0.5 sent 2 frames in {secs} s");

    // Disconnect: the publisher leaves after 3 frames of the 50 expected.
    let url = format!("tcp://127.0.0.1:{}", free_tcp_port());
    let s = Proc::spawn(
        "subscriber",
        subscriber,
        &[
            "--endpoint",
            &url,
            "--count",
            "50",
            "--verify",
            "--timeout",
            "30",
        ],
    );
    let p = Proc::spawn(
        "publisher",
        publisher,
        &[
            "--endpoint",
            &url,
            "--size",
            "100",
            "--count",
            "3",
            "--wait-subscribers",
            "1",
        ],
    );
    let pf = p.finish(DEADLINE);
    assert!(pf.status.success(), "{}", pf.stderr);
    let f = s.finish(DEADLINE);
    assert_eq!(f.last_line(), "received=3 lost=0 corrupt=0", "{}", f.stderr);
    assert!(f.status.success(), "{}", f.stderr);
    assert!(f.stderr.contains("disconnected"), "{}", f.stderr);
}

#[test]
fn corrupt_frames_are_counted_and_fail_the_subscriber() {
    // A publisher of our own that puts the wrong pattern in every frame.
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut publ = rt
        .block_on(framewire::publish("tcp://127.0.0.1:0", Default::default()))
        .expect("publisher");
    let url = publ.endpoint().url().to_owned();
    let s = Proc::spawn(
        "subscriber",
        env!("CARGO_BIN_EXE_subscriber"),
        &[
            "--endpoint",
            &url,
            "--count",
            "3",
            "--verify",
            "--timeout",
            "30",
        ],
    );
    rt.block_on(async {
        publ.wait_for_subscribers(1, Duration::from_secs(30))
            .await
            .expect("the subscriber connects");
        for seq in 0..3 {
            let wrong = framewire::pattern::make(seq + 1, 4096);
            publ.send(framewire::Frame::new(wrong)).await.expect("send");
        }
        publ.flush().await.expect("flush");
    });
    let f = s.finish(DEADLINE);
    assert_eq!(f.last_line(), "received=3 lost=0 corrupt=3", "{}", f.stderr);
    assert!(
        !f.status.success(),
        "corrupt frames must fail the subscriber"
    );
    drop(publ);
}

#[test]
fn subscriber_without_publisher_gives_up() {
    let url = format!("tcp://127.0.0.1:{}", free_tcp_port());
    let s = Proc::spawn(
        "subscriber",
        env!("CARGO_BIN_EXE_subscriber"),
        &["--endpoint", &url, "--count", "5", "--timeout", "0.5"],
    );
    let f = s.finish(DEADLINE);
    assert!(
        !f.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    assert!(f.stderr.contains("is a publisher running"), "{}", f.stderr);
}

#[test]
fn bad_arguments_are_refused() {
    let p = Proc::spawn(
        "publisher",
        env!("CARGO_BIN_EXE_publisher"),
        &[
            "--endpoint",
            "tcp://127.0.0.1:1",
            "--size",
            "12parsecs",
            "--count",
            "1",
        ],
    );
    let f = p.finish(DEADLINE);
    assert!(!f.status.success());
    assert!(f.stderr.contains("parsecs"), "{}", f.stderr);

    let p = Proc::spawn(
        "publisher",
        env!("CARGO_BIN_EXE_publisher"),
        &[
            "--endpoint",
            "tcp://127.0.0.1:0?slots=3",
            "--size",
            "1KiB",
            "--count",
            "1",
        ],
    );
    let f = p.finish(DEADLINE);
    assert!(!f.status.success());
    assert!(
        f.stderr.contains("slots") && f.stderr.contains("accepted"),
        "{}",
        f.stderr
    );
}

#[test]
fn publisher_and_subscriber_print_their_version() {
    for exe in [
        env!("CARGO_BIN_EXE_publisher"),
        env!("CARGO_BIN_EXE_subscriber"),
    ] {
        let f = Proc::spawn("--version", exe, &["--version"]).finish(DEADLINE);
        assert!(f.status.success(), "{exe} --version: {}", f.stderr);
        assert!(
            f.stdout.trim().ends_with(env!("CARGO_PKG_VERSION")),
            "{exe} --version printed `{}`",
            f.stdout
        );
    }
}

/// The subscriber's first note says what its frames are: on tcp, views are
/// private copies; on shm-pool they are zero-copy views.
#[test]
fn subscriber_words_views_from_the_backend_capabilities() {
    let subscriber = env!("CARGO_BIN_EXE_subscriber");
    let publisher = env!("CARGO_BIN_EXE_publisher");
    let mut cases = vec![(
        format!("tcp://127.0.0.1:{}", free_tcp_port()),
        "private copies",
    )];
    if cfg!(feature = "shm-pool") {
        cases.push((
            format!(
                "shm-pool://fw-ex-words-{}?slots=4&slot_size=64KiB",
                std::process::id()
            ),
            "zero-copy views",
        ));
    }
    for (url, want) in cases {
        let s = Proc::spawn(
            "subscriber",
            subscriber,
            &[
                "--endpoint",
                &url,
                "--count",
                "2",
                "--timeout",
                "30",
                "--recv",
                "view",
            ],
        );
        let p = Proc::spawn(
            "publisher",
            publisher,
            &[
                "--endpoint",
                &url,
                "--size",
                "4KiB",
                "--count",
                "2",
                "--wait-subscribers",
                "1",
                "--wait-timeout",
                "30",
            ],
        );
        let f = s.finish(DEADLINE);
        let pf = p.finish(DEADLINE);
        assert!(pf.status.success(), "{url}: {}", pf.stderr);
        assert!(f.status.success(), "{url}: {}", f.stderr);
        let note = f
            .stderr
            .lines()
            .find(|l| l.contains("subscribed to"))
            .unwrap_or_else(|| panic!("{url}: no subscribed note in {}", f.stderr));
        assert!(note.contains(want), "{url}: `{note}` should say {want}");
        assert!(!note.contains("View frames"), "{url}: `{note}`");
    }
}

/// `subscriber --reconnect` follows a publisher process that exits and is
/// started again on the same endpoint: it reports the reconnect on stderr
/// and counts both streams (`lost=0`: each publisher waited for it).
#[test]
fn subscriber_reconnects_to_a_restarted_publisher() {
    let subscriber = env!("CARGO_BIN_EXE_subscriber");
    let publisher = env!("CARGO_BIN_EXE_publisher");
    let url = format!("tcp://127.0.0.1:{}", free_tcp_port());
    let s = Proc::spawn(
        "subscriber",
        subscriber,
        &[
            "--endpoint",
            &url,
            "--count",
            "10",
            "--verify",
            "--timeout",
            "30",
            "--reconnect",
        ],
    );
    for _ in 0..2 {
        let p = Proc::spawn(
            "publisher",
            publisher,
            &[
                "--endpoint",
                &url,
                "--size",
                "64KiB",
                "--count",
                "5",
                "--wait-subscribers",
                "1",
                "--wait-timeout",
                "30",
            ],
        );
        let pf = p.finish(DEADLINE);
        assert!(pf.status.success(), "{}", pf.stderr);
    }
    let f = s.finish(DEADLINE);
    assert_eq!(
        f.last_line(),
        "received=10 lost=0 corrupt=0",
        "{}",
        f.stderr
    );
    assert!(f.status.success(), "{}", f.stderr);
    assert!(f.stderr.contains("reconnected after"), "{}", f.stderr);
}
