//! Helpers shared by the integration tests: child processes that are always
//! killed and reaped, unique channel names, `/dev/shm` snapshots, CPU time.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any wait on a peer may take.
pub const T: Duration = Duration::from_secs(20);

/// A fresh channel name for this test process.
pub fn name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A child `shm-ring-peer`; killed (SIGKILL) and reaped when dropped.
pub struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Peer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shm-ring-peer"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shm-ring-peer");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the child prints, within `T`.
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(T)
            .unwrap_or_else(|e| panic!("no line from peer {} within {T:?}: {e}", self.pid()))
    }

    /// Waits for the line `want`.
    pub fn expect(&self, want: &str) {
        let got = self.line();
        assert_eq!(got, want, "peer {} said something else", self.pid());
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the child to exit by itself, within `T`; returns its code.
    pub fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + T;
        loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => return status.code().unwrap_or(-1),
                None if Instant::now() > deadline => {
                    panic!("peer {} did not exit within {T:?}", self.pid())
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The child's mappings of memfds named `framewire-shm-ring*`:
    /// `(permissions, memfd name)` per line of /proc/PID/maps.
    pub fn ring_mappings(&self) -> Vec<(String, String)> {
        ring_mappings_of(&format!("/proc/{}/maps", self.pid()))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `(permissions, name)` of every mapping of a `framewire-shm-ring*` memfd in a maps file.
pub fn ring_mappings_of(maps: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(maps).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let name = l.split("/memfd:").nth(1)?;
            let name = name.trim_end_matches(" (deleted)").to_owned();
            name.starts_with("framewire-shm-ring")
                .then(|| (l.split_whitespace().nth(1).unwrap_or("").to_owned(), name))
        })
        .collect()
}

/// Parses `key=value` pairs of a summary line.
pub fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no `{key}=` in `{line}`"))
        .parse()
        .unwrap_or_else(|e| panic!("`{key}` in `{line}`: {e}"))
}

/// Entries of /dev/shm now.
pub fn dev_shm() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that nothing appeared in /dev/shm since `before`.
pub fn assert_dev_shm_unchanged(before: &BTreeSet<String>) {
    let after = dev_shm();
    let new: Vec<_> = after.difference(before).collect();
    assert!(new.is_empty(), "new entries in /dev/shm: {new:?}");
}

/// CPU time used by this process so far.
pub fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A two-thread runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs a future with a deadline of `T`.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {T:?} waiting for {what}"))
}

/// CPU time (user + system) used so far by process `pid`, from /proc (10 ms ticks).
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after = &stat[stat.rfind(')').expect("comm field") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}
