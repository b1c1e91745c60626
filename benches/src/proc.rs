//! Child processes of the harness: spawning, line protocol, resource usage.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a child may take to start, connect or finish.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process running this same binary in an internal role. It is
/// killed if still running when dropped, and reaped by [`Peer::finish`].
pub struct Peer {
    pub name: String,
    child: Child,
    pub stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    /// Starts `framewire-bench <role> <config-json>`.
    pub fn spawn(name: &str, role: &str, config: &str) -> Result<Peer, String> {
        let exe = std::env::current_exe().map_err(|e| format!("locating this program: {e}"))?;
        let mut child = Command::new(exe)
            .arg(role)
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting the {name} process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        Ok(Peer {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    pub async fn expect(&mut self, prefix: &str) -> Result<String, String> {
        let name = self.name.clone();
        let read = async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(l)) => {
                        if let Some(rest) = l.strip_prefix(prefix) {
                            return Ok(rest.trim().to_owned());
                        }
                    }
                    Ok(None) => return Err(format!("the {name} process exited before `{prefix}`")),
                    Err(e) => return Err(format!("reading the {name} process: {e}")),
                }
            }
        };
        tokio::time::timeout(CHILD_TIMEOUT, read)
            .await
            .map_err(|_| {
                format!("the {name} process did not say `{prefix}` in {CHILD_TIMEOUT:?}")
            })?
    }

    /// Writes one line to the child's stdin.
    pub async fn say(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin already closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("writing to the {} process: {e}", self.name))
    }

    /// Closes stdin (the child's signal to finish) and waits for it to exit.
    pub async fn finish(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        match tokio::time::timeout(CHILD_TIMEOUT, self.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(format!("the {} process failed: {s}", self.name)),
            Ok(Err(e)) => Err(format!("waiting for the {} process: {e}", self.name)),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!("the {} process did not exit; killed it", self.name))
            }
        }
    }
}

/// CPU seconds and peak resident memory, of this process or of its reaped children.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_s: f64,
    pub max_rss_mb: f64,
}

fn usage(who: nix::sys::resource::UsageWho) -> Usage {
    match nix::sys::resource::getrusage(who) {
        Ok(u) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            Usage {
                cpu_s: secs(u.user_time()) + secs(u.system_time()),
                // Linux reports KiB.
                max_rss_mb: u.max_rss() as f64 / 1024.0,
            }
        }
        Err(_) => Usage::default(),
    }
}

/// This process.
pub fn self_usage() -> Usage {
    usage(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

/// All children reaped so far (CPU summed; RSS the largest of them).
pub fn children_usage() -> Usage {
    usage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
}

/// Reads one line from our stdin; `None` at EOF.
pub async fn stdin_line(lines: &mut Lines<BufReader<tokio::io::Stdin>>) -> Option<String> {
    lines.next_line().await.ok().flatten()
}

/// Our stdin as a line channel, read with plain blocking system calls
/// (`poll` for the timeout, then `read`) on the calling thread.
///
/// The pipeline's stages take their orders through this rather than through
/// tokio's stdin, which reads on the blocking pool: a line then costs a
/// wake-up of a pool thread plus one of the task waiting for it, and the pool
/// thread's next read is queued (another wake-up) right after the frame is
/// sent, inside the timed window. Here the thread that sends the frame is the
/// one that reads the order, and between orders it sleeps in the kernel.
pub struct ControlIn {
    buf: Vec<u8>,
    eof: bool,
}

impl Default for ControlIn {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlIn {
    /// A reader of this process's stdin. Nothing else in the process may read stdin.
    pub fn new() -> ControlIn {
        ControlIn {
            buf: Vec::with_capacity(256),
            eof: false,
        }
    }

    /// The next line without its newline; `Ok(None)` at end of input; an
    /// error when nothing came within `timeout` or stdin cannot be read.
    pub fn line(&mut self, timeout: Duration) -> Result<Option<String>, String> {
        use nix::errno::Errno;
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;

        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(Some(
                    String::from_utf8_lossy(&line[..pos]).trim_end().to_owned(),
                ));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = String::from_utf8_lossy(&self.buf).trim_end().to_owned();
                self.buf.clear();
                return Ok(Some(line));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!("no order on stdin in {timeout:?}"));
            }
            let stdin = std::io::stdin();
            let fd = stdin.as_fd();
            // Whole milliseconds, rounded up so a short wait is not a busy loop.
            let ms = left.as_millis().saturating_add(1);
            let wait = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(format!("waiting for stdin: {e}")),
            }
            let mut chunk = [0u8; 256];
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(format!("reading stdin: {e}")),
            }
        }
    }
}
