//! Multi-host runs over Zenoh with network namespaces: a publisher host and a
//! subscriber host, each joined by a veth pair to a router host running
//! `zenoh-router`. Addresses are private (10.77.x.y) and exist only inside
//! the namespaces this test makes; the namespaces (and with them the veths)
//! are deleted when a test ends, also on failure. Skipped with a message
//! where `ip netns` is not permitted.
//!
//! `FRAMEWIRE_ZENOH_NETNS_FRAMES` sets the 24 MiB frame count of the
//! end-to-end run (default 20; the done-when run is 1000).
#![cfg(feature = "zenoh")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PUBLISHER: &str = env!("CARGO_BIN_EXE_publisher");
const SUBSCRIBER: &str = env!("CARGO_BIN_EXE_subscriber");
const ROUTER: &str = env!("CARGO_BIN_EXE_zenoh-router");

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces of one test: deleted on drop.
struct Net {
    tag: String,
    made: Vec<String>,
}

impl Net {
    /// The router host, or `None` (with a message) where namespaces are not permitted.
    fn new(test: &str) -> Option<Net> {
        let mut n = Net {
            tag: format!("fwz-{}-{test}", std::process::id()),
            made: Vec::new(),
        };
        let r = n.ns("r");
        if let Err(e) = ip(&["netns", "add", &r]) {
            eprintln!("zenoh_netns: skipped: cannot create network namespaces ({e})");
            return None;
        }
        n.made.push(r.clone());
        ip(&["-n", &r, "link", "set", "lo", "up"]).expect("lo up");
        Some(n)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    /// A host joined to the router by a veth pair on 10.77.`subnet`.0/24:
    /// the host is .2, the router .1.
    fn host(&mut self, role: &str, subnet: u8) -> String {
        let h = self.ns(role);
        let r = self.ns("r");
        ip(&["netns", "add", &h]).expect("add namespace");
        self.made.push(h.clone());
        ip(&["-n", &h, "link", "set", "lo", "up"]).expect("lo up");
        let (hv, rv) = ("veth0".to_string(), format!("veth{subnet}"));
        ip(&[
            "link", "add", &hv, "netns", &h, "type", "veth", "peer", "name", &rv, "netns", &r,
        ])
        .expect("veth pair");
        let ha = format!("10.77.{subnet}.2/24");
        let ra = format!("10.77.{subnet}.1/24");
        ip(&["-n", &h, "addr", "add", &ha, "dev", &hv]).expect("host address");
        ip(&["-n", &r, "addr", "add", &ra, "dev", &rv]).expect("router address");
        ip(&["-n", &h, "link", "set", &hv, "up"]).expect("host link up");
        ip(&["-n", &r, "link", "set", &rv, "up"]).expect("router link up");
        h
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("zenoh_netns: cleanup: {e}");
            }
        }
    }
}

/// A program running in a namespace; killed and reaped on drop.
struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl Proc {
    fn spawn(name: &'static str, ns: &str, exe: &str, args: &[&str]) -> Proc {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, exe]).args(args);
        Proc::from_command(name, c)
    }

    fn from_command(name: &'static str, mut c: Command) -> Proc {
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        Proc {
            name,
            child,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }

    /// Waits for a stdout line starting with `prefix`.
    fn wait_line(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("{}: no `{prefix}` line within {limit:?}", self.name),
            }
        }
    }

    /// Waits for exit; returns (success, last stdout line, stderr).
    fn finish(mut self, limit: Duration) -> (bool, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                    panic!(
                        "{} did not finish in {limit:?}; stderr:\n{}",
                        self.name,
                        err.unwrap_or_default()
                    );
                }
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let last = self.lines.try_iter().last().unwrap_or_default();
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status.success(), last, err)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

fn router(ns: &str) -> Proc {
    let r = Proc::spawn(
        "zenoh-router",
        ns,
        ROUTER,
        &["--listen", "tcp/0.0.0.0:7447"],
    );
    r.wait_line("listening on", Duration::from_secs(30));
    r
}

fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
}

const KEY: &str = "fw/netns/cam";

fn url(subnet: u8) -> String {
    format!("zenoh://{KEY}?mode=client&connect=tcp/10.77.{subnet}.1:7447")
}

#[test]
fn frames_verified_through_a_router_host() {
    let Some(mut net) = Net::new("e2e") else {
        return;
    };
    let p = net.host("p", 1);
    let s = net.host("s", 2);
    let _router = router(&net.ns("r"));
    let n: u64 = std::env::var("FRAMEWIRE_ZENOH_NETNS_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let count = n.to_string();
    let sub = Proc::spawn(
        "subscriber",
        &s,
        SUBSCRIBER,
        &[
            "--endpoint",
            &url(2),
            "--count",
            &count,
            "--verify",
            "--timeout",
            "60",
        ],
    );
    let publ = Proc::spawn(
        "publisher",
        &p,
        PUBLISHER,
        &[
            "--endpoint",
            &url(1),
            "--size",
            "24MiB",
            "--count",
            &count,
            "--wait-subscribers",
            "1",
        ],
    );
    let limit = Duration::from_secs(120 + n);
    let (ok, last, err) = publ.finish(limit);
    assert!(ok, "publisher: {last}\n{err}");
    eprintln!("publisher: {last}");
    let (ok, last, err) = sub.finish(limit);
    assert!(ok, "subscriber: {last}\n{err}");
    eprintln!("subscriber: {last}");
    assert_eq!(last, format!("received={n} lost=0 corrupt=0"), "{err}");
}

#[test]
fn router_killed_and_restarted_mid_stream() {
    let Some(mut net) = Net::new("restart") else {
        return;
    };
    let p = net.host("p", 1);
    let s = net.host("s", 2);
    let r = net.ns("r");
    let first = router(&r);
    let sub = Proc::spawn(
        "subscriber",
        &s,
        SUBSCRIBER,
        &[
            "--endpoint",
            &url(2),
            "--count",
            "300",
            "--verify",
            "--timeout",
            "60",
        ],
    );
    let publ = Proc::spawn(
        "publisher",
        &p,
        PUBLISHER,
        &[
            "--endpoint",
            &url(1),
            "--size",
            "64KiB",
            "--count",
            "300",
            "--rate",
            "30",
            "--wait-subscribers",
            "1",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    first.kill();
    std::thread::sleep(Duration::from_secs(1));
    let _second = router(&r);
    let (ok, last, err) = publ.finish(Duration::from_secs(120));
    assert!(ok, "publisher: {last}\n{err}");
    let (ok, last, err) = sub.finish(Duration::from_secs(120));
    assert!(ok, "subscriber: {last}\n{err}");
    let (received, lost, corrupt) = (
        field(&last, "received"),
        field(&last, "lost"),
        field(&last, "corrupt"),
    );
    eprintln!("subscriber across the restart: {last}");
    assert_eq!(corrupt, 0, "{last}");
    // Frames after the restart arrived (the last one too): the outage shows
    // as counted loss, never as corruption or a hang.
    assert_eq!(received + lost, 300, "{last}\n{err}");
    assert!(received > 60, "few frames after the restart: {last}");
}

#[test]
fn subscriber_host_that_appears_late() {
    let Some(mut net) = Net::new("late") else {
        return;
    };
    let p = net.host("p", 1);
    let _router = router(&net.ns("r"));
    let publ = Proc::spawn(
        "publisher",
        &p,
        PUBLISHER,
        &[
            "--endpoint",
            &url(1),
            "--size",
            "64KiB",
            "--count",
            "600",
            "--rate",
            "50",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    // The subscriber host comes up while the stream runs.
    let s = net.host("s", 2);
    let sub = Proc::spawn(
        "subscriber",
        &s,
        SUBSCRIBER,
        &[
            "--endpoint",
            &url(2),
            "--count",
            "100",
            "--verify",
            "--timeout",
            "60",
        ],
    );
    let (ok, last, err) = sub.finish(Duration::from_secs(90));
    assert!(ok, "subscriber: {last}\n{err}");
    assert_eq!(field(&last, "received"), 100, "{last}");
    assert_eq!(field(&last, "corrupt"), 0, "{last}");
    publ.kill();
}

/// A publisher killed outright (no end-of-stream DELETE) ends its
/// subscribers' stream once its liveliness token stays away `gone_after`,
/// long before their idle timeout. Loopback, no namespaces needed.
#[test]
fn killed_publisher_ends_the_stream_after_gone_after() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let key = format!("fw/killed/{}", std::process::id());
    let pub_url = format!("zenoh://{key}?listen=tcp/127.0.0.1:{port}");
    let sub_url = format!("zenoh://{key}?connect=tcp/127.0.0.1:{port}&gone_after=2s");
    let spawn = |name, exe: &str, args: &[&str]| {
        let mut c = Command::new(exe);
        c.args(args);
        Proc::from_command(name, c)
    };
    let publ = spawn(
        "publisher",
        PUBLISHER,
        &[
            "--endpoint",
            &pub_url,
            "--size",
            "64KiB",
            "--count",
            "100000",
            "--rate",
            "100",
        ],
    );
    let sub = spawn(
        "subscriber",
        SUBSCRIBER,
        &[
            "--endpoint",
            &sub_url,
            "--count",
            "100000",
            "--verify",
            "--timeout",
            "90",
        ],
    );
    std::thread::sleep(Duration::from_secs(4));
    publ.kill();
    let start = Instant::now();
    let (ok, last, err) = sub.finish(Duration::from_secs(60));
    eprintln!("subscriber after the kill: {last} ({:?})", start.elapsed());
    assert!(ok, "subscriber: {last}\n{err}");
    assert!(field(&last, "received") > 0, "{last}\n{err}");
    assert!(
        start.elapsed() < Duration::from_secs(45),
        "the subscriber waited for its idle timeout, not for gone_after"
    );
}
