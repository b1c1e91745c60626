//! The iceoryx2 peer of `framewire-bench pipeline --hops 0`, for comparison.
//!
//! Two processes: this one is the subscriber (the pipeline's sink); it starts
//! a copy of itself as the publisher (the pipeline's source) and asks it for
//! one frame at a time over the publisher's stdin, as the pipeline's sink
//! does. The publisher reads the request with a plain blocking read, loans a
//! sample of WIDTHxHEIGHTx3 bytes, writes only a CLOCK_MONOTONIC timestamp
//! and a sequence number into its first 16 bytes, and sends it (in event mode
//! it then notifies an iceoryx2 event; in spin mode it makes no call). The
//! subscriber waits on its listener (event mode) or polls `receive()` in a
//! busy loop (spin mode), and a frame's latency is its receive time minus the
//! stamp: send -> recv, as in the pipeline's report. One frame in flight.
//!
//! Output: the same `per hop:` and `hop latency:` lines as `framewire-bench
//! pipeline`, so one script reads both.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use iceoryx2::prelude::*;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

/// How long a process may take to start, connect, answer or finish.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Discarded frames before the measured ones (as the pipeline's warm-up).
const WARMUP: usize = 5;

type Error = Box<dyn std::error::Error>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The subscriber sleeps on an iceoryx2 listener; the publisher notifies after each send.
    Event,
    /// The subscriber polls `receive()` in a busy loop; no notification.
    Spin,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Event => "event",
            Mode::Spin => "spin",
        }
    }
}

/// One large loaned frame at a time between two processes over iceoryx2;
/// prints latency send -> recv like `framewire-bench pipeline --hops 0`.
#[derive(Parser, Debug)]
#[command(name = "iceoryx2-pingpong", version)]
struct Args {
    /// How the subscriber waits for a frame.
    #[arg(long, value_enum, default_value = "event")]
    mode: Mode,
    /// Frame size as WIDTHxHEIGHT of RGB pixels (3840x2160 is 24.9 MB).
    #[arg(long, default_value = "3840x2160", value_parser = parse_resolution)]
    resolution: (u32, u32),
    /// Frames measured (after 5 discarded).
    #[arg(long, default_value_t = 60, value_parser = at_least_one)]
    frames: usize,
    /// Pin the processes to CPUs: one for both (`--pin 0`) or publisher then
    /// subscriber (`--pin 0,1`). A CPU this process may not run on is refused.
    #[arg(long, value_delimiter = ',', value_parser = parse_cpu, value_name = "CPUS")]
    pin: Vec<usize>,
    /// Internal: run as the publisher of this service (started by the subscriber).
    #[arg(long, hide = true)]
    publisher_of: Option<String>,
    /// Internal: the publisher's CPU.
    #[arg(long, hide = true)]
    cpu: Option<usize>,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not WIDTHxHEIGHT, e.g. 3840x2160"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{v}` in `{s}` is not a positive number"))
    };
    let (w, h) = (p(w)?, p(h)?);
    if u64::from(w) * u64::from(h) * 3 < 16 {
        return Err(format!("`{s}` is smaller than the 16-byte stamp"));
    }
    Ok((w, h))
}

fn allowed_cpus() -> Result<Vec<usize>, String> {
    let set = sched_getaffinity(Pid::from_raw(0))
        .map_err(|e| format!("reading this process's CPU affinity: {e}"))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

fn parse_cpu(s: &str) -> Result<usize, String> {
    let cpu: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a CPU number (0, 1, ...)"))?;
    let allowed = allowed_cpus()?;
    if !allowed.contains(&cpu) {
        let list: Vec<String> = allowed.iter().map(|c| c.to_string()).collect();
        return Err(format!(
            "CPU {cpu} does not exist or is not available to this process (available: {})",
            list.join(",")
        ));
    }
    Ok(cpu)
}

/// Pins the calling thread, and the threads and processes it starts later.
fn pin_self(cpu: usize) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("pinning to CPU {cpu}: {e}"))
}

/// CLOCK_MONOTONIC in ns: the same clock as framewire's trace stamps.
fn monotonic_ns() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// Lines from a pipe, read with `poll` (for the timeout) and `read`.
struct Lines {
    buf: Vec<u8>,
    eof: bool,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next line; `None` at end of input; an error on timeout.
    fn next(&mut self, fd: impl AsFd, timeout: Duration) -> Result<Option<String>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(Some(
                    String::from_utf8_lossy(&line[..pos]).trim().to_owned(),
                ));
            }
            if self.eof {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("nothing in {timeout:?}"));
            }
            let wait = PollTimeout::try_from(left.as_millis() + 1).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let mut chunk = [0u8; 256];
            match nix::unistd::read(fd.as_fd(), &mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

fn service_names(base: &str) -> Result<(ServiceName, ServiceName), Error> {
    Ok((
        ServiceName::new(&format!("{base}/frames"))?,
        ServiceName::new(&format!("{base}/wake"))?,
    ))
}

/// The publisher process: one frame per line on stdin, until stdin closes.
fn publisher(base: &str, mode: Mode, len: usize) -> Result<(), Error> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let (frames, wake) = service_names(base)?;
    let service = node
        .service_builder(&frames)
        .publish_subscribe::<[u8]>()
        .open()?;
    let publisher = service
        .publisher_builder()
        .initial_max_slice_len(len)
        .max_loaned_samples(1)
        .create()?;
    let event = node.service_builder(&wake).event().open()?;
    let notifier = event.notifier_builder().create()?;
    println!("READY");
    std::io::stdout().flush()?;
    let stdin = std::io::stdin();
    let mut lines = Lines::new();
    let mut seq: u64 = 0;
    while let Some(_order) = lines.next(stdin.as_fd(), TIMEOUT)? {
        let mut sample = publisher.loan_slice_uninit(len)?;
        let now = monotonic_ns();
        let head = sample.payload_mut();
        for (dst, src) in head[..8].iter_mut().zip(now.to_le_bytes()) {
            dst.write(src);
        }
        for (dst, src) in head[8..16].iter_mut().zip(seq.to_le_bytes()) {
            dst.write(src);
        }
        // SAFETY: the payload lives in a shared-memory mapping; its bytes
        // are the kernel's zero fill or an earlier frame, so every byte holds
        // a value (a `u8` has no invalid bit pattern). Like a camera that
        // wrote the frame in place, only the stamp is new: the rest is left
        // untouched on purpose, and nobody reads it.
        let sample = unsafe { sample.assume_init() };
        sample.send()?;
        if mode == Mode::Event {
            notifier.notify()?;
        }
        seq += 1;
    }
    Ok(())
}

/// Kills and reaps the publisher if the run ends early.
struct Peer(Option<Child>);

impl Peer {
    /// Closes its stdin (its signal to finish) and waits for a clean exit.
    fn finish(&mut self) -> Result<(), Error> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        drop(child.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the publisher failed: {status}").into())
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the publisher did not exit; killed it".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value at quantile `q` of `v`, nearest rank (as framewire-bench).
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The subscriber process: starts the publisher, measures, prints.
fn subscriber(args: &Args, len: usize) -> Result<(), Error> {
    let (pub_cpu, sub_cpu) = match args.pin.as_slice() {
        [] => (None, None),
        [c] => (Some(*c), Some(*c)),
        [p, s] => (Some(*p), Some(*s)),
        more => {
            return Err(format!(
                "--pin: {} CPUs for 2 processes; give one for both or publisher,subscriber",
                more.len()
            )
            .into());
        }
    };
    if let Some(c) = sub_cpu {
        pin_self(c)?;
    }
    let base = format!("framewire-cmp-iceoryx2/{}", std::process::id());
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let (frames, wake) = service_names(&base)?;
    let service = node
        .service_builder(&frames)
        .publish_subscribe::<[u8]>()
        .max_publishers(1)
        .max_subscribers(1)
        .history_size(0)
        .subscriber_max_buffer_size(1)
        .subscriber_max_borrowed_samples(1)
        .enable_safe_overflow(true)
        .create()?;
    let subscriber = service.subscriber_builder().create()?;
    let event = node.service_builder(&wake).event().create()?;
    let listener = event.listener_builder().create()?;

    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--publisher-of")
        .arg(&base)
        .arg("--mode")
        .arg(args.mode.name())
        .arg("--resolution")
        .arg(format!("{}x{}", args.resolution.0, args.resolution.1));
    if let Some(c) = pub_cpu {
        cmd.arg("--cpu").arg(c.to_string());
    }
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut peer = Peer(Some(child));
    let child = peer.0.as_mut().ok_or("no publisher")?;
    let out = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let mut lines = Lines::new();
    loop {
        match lines.next(out.as_fd(), TIMEOUT) {
            Ok(Some(l)) if l == "READY" => break,
            Ok(Some(_)) => {}
            Ok(None) => return Err("the publisher exited before READY".into()),
            Err(e) => return Err(format!("the publisher did not say READY: {e}").into()),
        }
    }

    let mut lat_us = Vec::with_capacity(args.frames);
    for i in 0..(WARMUP + args.frames) as u64 {
        // The request, before anything is timed: the same control path as
        // the pipeline's sink -> source.
        stdin.write_all(b"next\n")?;
        let deadline = Instant::now() + TIMEOUT;
        let sample = loop {
            if let Some(s) = subscriber.receive()? {
                break s;
            }
            match args.mode {
                Mode::Event => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(format!("frame {i}: nothing in {TIMEOUT:?}").into());
                    }
                    listener.timed_wait(|_| {}, left)?;
                }
                Mode::Spin => {
                    std::hint::spin_loop();
                    if Instant::now() > deadline {
                        return Err(format!("frame {i}: nothing in {TIMEOUT:?}").into());
                    }
                }
            }
        };
        let now = monotonic_ns();
        // The publisher does not write a sample after `send` (iceoryx2's
        // ownership: it is ours, read-only, until dropped), so this plain
        // read of the shared payload does not race.
        let p = sample.payload();
        if p.len() != len {
            return Err(format!("frame {i}: {} bytes, expected {len}", p.len()).into());
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (sent, seq) = (word(0), word(8));
        if seq != i {
            return Err(format!("frame {i}: got frame {seq}").into());
        }
        drop(sample);
        // Drain a notification that raced with the receive above, so the
        // next frame's wait starts clean.
        if args.mode == Mode::Event {
            listener.try_wait(|_| {})?;
        }
        if i as usize >= WARMUP {
            lat_us.push(now.saturating_sub(sent) as f64 / 1e3);
        }
    }
    drop(stdin);
    peer.finish()?;

    let p50 = percentile(&mut lat_us, 0.50);
    let p99 = percentile(&mut lat_us, 0.99);
    println!(
        "pipeline iceoryx2-{} | 0 filter(s) | {}x{} ({:.1} MB) | {} frames | work 0 ms per filter",
        args.mode.name(),
        args.resolution.0,
        args.resolution.1,
        len as f64 / 1e6,
        args.frames
    );
    println!("  hop 0: p50 {p50:.0} us");
    println!(
        "  per hop: p50 {p50:.0} us, p99 {p99:.0} us | IPC per frame {:.3} ms",
        p50 / 1e3
    );
    println!(
        "  hop latency: p50 {p50:.3} us, p99 {p99:.3} us (send -> recv, {} frames per hop)",
        args.frames
    );
    match (pub_cpu, sub_cpu) {
        (Some(p), Some(s)) => println!("  pinned: CPUs {p},{s} (publisher, subscriber)"),
        _ => println!("  pinned: no"),
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    set_log_level(LogLevel::Error);
    let len = args.resolution.0 as usize * args.resolution.1 as usize * 3;
    let result = match &args.publisher_of {
        Some(base) => args
            .cpu
            .map_or(Ok(()), pin_self)
            .map_err(Error::from)
            .and_then(|()| publisher(base, args.mode, len)),
        None => subscriber(&args, len),
    };
    if let Err(e) = result {
        eprintln!("iceoryx2-pingpong: {e}");
        std::process::exit(1);
    }
}
