//! Helpers shared by the `publisher` and `subscriber` example programs.
//!
//! The programs themselves are in `src/bin/`. They move frames filled with
//! [`framewire::pattern`] so the receiving side can verify every byte without
//! a copy of what was sent:
//!
//! ```text
//! subscriber --endpoint tcp://127.0.0.1:7000 --count 100 --verify &
//! publisher  --endpoint tcp://127.0.0.1:7000 --size 24MiB --count 100 --wait-subscribers 1
//! ```
//!
//! Both register the [`inproc_backend`] crate with [`framewire::register`] at
//! start, to show how a custom backend plugs in (an `inproc://` channel only
//! reaches tasks of the same process, so between these two programs it stays
//! idle).

use std::sync::Arc;
use std::time::Duration;

use framewire::{Error, Frame, Publisher, RecvMode, Result, SubscribeOptions, Subscriber, pattern};
use tokio::time::MissedTickBehavior;

/// Sets up logging to stderr, filtered by `RUST_LOG` (default: `warn`);
/// colours only when stderr is a terminal, so log files hold plain text.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Adds the example `inproc://` backend to framewire's process-wide registry.
pub fn register_inproc() -> Result<()> {
    framewire::register(Arc::new(inproc_backend::InprocTransport))
}

/// Parses a byte size for the command line: `4096`, `64KiB`, `24MiB`, `1GiB`.
pub fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let n = framewire::endpoint::parse_size(s)?;
    usize::try_from(n).map_err(|_| format!("size `{s}` does not fit in memory on this machine"))
}

/// Parses a number of seconds for the command line: `30`, `0.5`.
pub fn parse_secs(s: &str) -> std::result::Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// Parses a positive rate in hertz for the command line: `30`, `0.5`.
pub fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(hz) if hz.is_finite() && hz > 0.0 => Ok(hz),
        _ => Err(format!("`{s}` is not a positive rate in Hz")),
    }
}

/// How the publisher hands frames to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendPath {
    /// `loan(size)`, fill in place, `send_loan`: no copy on backends that lend
    /// their own memory.
    Loan,
    /// Fill a heap buffer, then `send` it (copied into shared memory where the
    /// backend needs it).
    Copy,
}

/// The receive mode asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecvArg {
    /// A private copy that pins no shared memory.
    Owned,
    /// A zero-copy view where the backend offers one.
    View,
}

impl From<RecvArg> for RecvMode {
    fn from(a: RecvArg) -> RecvMode {
        match a {
            RecvArg::Owned => RecvMode::Owned,
            RecvArg::View => RecvMode::View,
        }
    }
}

/// What the publisher prints when it is done.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendReport {
    /// Frames sent.
    pub sent: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// Seconds from the first send to the end of the final flush.
    pub secs: f64,
}

impl SendReport {
    /// Payload throughput in megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 / 1e6 / self.secs
        } else {
            0.0
        }
    }

    /// `sent=N bytes=B secs=S mb_per_s=X`.
    pub fn summary_line(&self) -> String {
        format!(
            "sent={} bytes={} secs={:.3} mb_per_s={:.1}",
            self.sent,
            self.bytes,
            self.secs,
            self.mb_per_s()
        )
    }
}

/// The subscriber's running count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames received.
    pub received: u64,
    /// Frames whose payload failed the pattern check (with `--verify`).
    pub corrupt: u64,
    /// Frames the backend reported as missed through `Error::Lagged`.
    pub lagged: u64,
    /// The highest sequence number seen (from the current publisher).
    pub highest_seq: Option<u64>,
    /// Times the subscriber reconnected (`Error::Reconnected`).
    pub reconnects: u64,
    /// Frames received from earlier publishers, and lost from their streams.
    earlier: (u64, u64),
    /// A reconnect was reported and no frame has arrived since.
    reconnected: bool,
}

impl Tally {
    /// Counts one frame; `intact` is false when it failed verification.
    pub fn record(&mut self, seq: u64, intact: bool) {
        if std::mem::take(&mut self.reconnected) && self.highest_seq.is_some_and(|h| seq <= h) {
            // A new publisher numbering from 0 again: close the old stream's count.
            self.earlier = (self.received, self.lost());
            self.highest_seq = None;
        }
        self.received += 1;
        if !intact {
            self.corrupt += 1;
        }
        self.highest_seq = Some(self.highest_seq.map_or(seq, |h| h.max(seq)));
    }

    /// Counts an `Error::Reconnected`: the frames that follow may come from
    /// a new publisher whose sequence numbers start again.
    pub fn record_reconnect(&mut self) {
        self.reconnects += 1;
        self.reconnected = true;
    }

    /// Frames never seen, from sequence number 0 up to the highest one seen:
    /// `(highest + 1) - received`. A subscriber that joined late counts the
    /// frames sent before it joined as lost; frames after the last one seen
    /// are not counted. After a reconnect to a publisher that numbers from 0
    /// again, each publisher's stream is counted this way and the sums added.
    pub fn lost(&self) -> u64 {
        let (earlier_received, earlier_lost) = self.earlier;
        earlier_lost
            + self.highest_seq.map_or(0, |h| {
                h.saturating_add(1)
                    .saturating_sub(self.received - earlier_received)
            })
    }

    /// `received=R lost=L corrupt=C`.
    pub fn summary_line(&self) -> String {
        format!(
            "received={} lost={} corrupt={}",
            self.received,
            self.lost(),
            self.corrupt
        )
    }
}

/// What the publisher sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendPlan {
    /// Payload bytes per frame.
    pub size: usize,
    /// Frames to send.
    pub count: u64,
    /// At most this many frames per second; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// How frames are handed to the backend.
    pub path: SendPath,
}

/// How sending went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendOutcome {
    /// The summary.
    pub report: SendReport,
    /// Sends refused with `Error::Full` (policy=fail) and retried.
    pub refused: u64,
}

/// Sends `plan.count` frames; frame `i` carries the pattern of `i`, the
/// sequence number the publisher stamps on its i-th accepted frame. A send
/// refused with [`Error::Full`] (policy=fail: nothing was sent and no number
/// used) is retried after 1 ms with the same `i`; any other error ends the
/// run. Flushes at the end; the time runs from the first send to the end of
/// the flush.
pub async fn send_frames(publ: &mut dyn Publisher, plan: SendPlan) -> Result<SendOutcome> {
    let mut pace = plan.rate.map(|hz| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / hz));
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    let start = std::time::Instant::now();
    let mut refused = 0u64;
    for seq in 0..plan.count {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        loop {
            match send_one(publ, plan.path, seq, plan.size).await {
                Ok(()) => break,
                Err(Error::Full { .. }) => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    // `close`, not just `flush`: ZeroMQ buffers in user space, and this
    // process exits next.
    publ.close().await?;
    Ok(SendOutcome {
        report: SendReport {
            sent: plan.count,
            bytes: plan.count.saturating_mul(plan.size as u64),
            secs: start.elapsed().as_secs_f64(),
        },
        refused,
    })
}

/// Sends the frame whose payload is the pattern of `seq`.
async fn send_one(publ: &mut dyn Publisher, path: SendPath, seq: u64, size: usize) -> Result<()> {
    match path {
        SendPath::Loan => {
            let mut loan = publ.loan(size).await?;
            pattern::fill(seq, &mut loan);
            publ.send_loan(loan).await
        }
        SendPath::Copy => publ.send(Frame::new(pattern::make(seq, size))).await,
    }
}

/// Why [`receive_frames`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The count was reached.
    Done,
    /// No frame came within the idle timeout.
    Idle,
    /// The publisher went away; the message says how.
    Disconnected(String),
    /// The backend kept failing (see [`Received::errors`]).
    Errors,
}

/// How receiving went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Counts.
    pub tally: Tally,
    /// Backend errors other than lag reports and the disconnect, each
    /// already printed to stderr.
    pub errors: u64,
    /// Why receiving stopped.
    pub stop: StopReason,
}

/// Receives until `count` frames arrived, the publisher disconnects, no frame
/// comes for `idle`, or the backend failed 10 times. Lag reports are counted
/// in [`Tally::lagged`] and receiving goes on. With `verify`, each payload is
/// checked against the pattern of its sequence number.
pub async fn receive_frames(
    sub: &mut dyn Subscriber,
    count: u64,
    verify: bool,
    idle: Duration,
) -> Received {
    receive_frames_slowly(sub, count, verify, idle, Duration::ZERO).await
}

/// [`receive_frames`] for a deliberately slow consumer: after each frame it
/// spends `work` (a sleep) before asking for the next one, so that a publisher
/// under `drop-oldest` laps it.
pub async fn receive_frames_slowly(
    sub: &mut dyn Subscriber,
    count: u64,
    verify: bool,
    idle: Duration,
    work: Duration,
) -> Received {
    let mut tally = Tally::default();
    let mut errors = 0u64;
    let stop = loop {
        if tally.received >= count {
            break StopReason::Done;
        }
        match tokio::time::timeout(idle, sub.recv()).await {
            Ok(Ok(frame)) => {
                let intact = !verify || pattern::check(frame.seq, &frame.payload);
                if !intact {
                    eprintln!(
                        "subscriber: frame {} ({} B) does not hold its pattern",
                        frame.seq,
                        frame.payload.len()
                    );
                }
                tally.record(frame.seq, intact);
                drop(frame);
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
            }
            Ok(Err(Error::Lagged { missed })) => tally.lagged += missed,
            Ok(Err(e @ Error::Reconnected { .. })) => {
                eprintln!("subscriber: {e}");
                tally.record_reconnect();
            }
            Ok(Err(Error::Disconnected { reason: why, .. })) => {
                break StopReason::Disconnected(why);
            }
            Ok(Err(e)) => {
                // Backends end a broken connection with `Disconnected` on the
                // next call; stop anyway if one keeps failing.
                errors += 1;
                eprintln!("subscriber: error: {e}");
                if errors >= 10 {
                    break StopReason::Errors;
                }
            }
            Err(_) => break StopReason::Idle,
        }
    };
    Received {
        tally,
        errors,
        stop,
    }
}

/// True for the errors of a subscriber whose publisher is not there yet (no
/// listener, no socket file, a connect or handshake that timed out).
pub fn is_not_there_yet(e: &Error) -> bool {
    framewire::reconnect::is_not_there_yet(e)
}

/// Subscribes to `url`, retrying every 50 ms while the publisher is not
/// there yet, for up to `patience`. Errors that retrying cannot fix (a bad
/// URL or option, an unknown scheme) are returned at once. The retry loop is
/// the library's ([`framewire::subscribe_patiently`]); with reconnect on in
/// `opts` or the URL, the subscriber also follows its publisher across
/// restarts.
pub async fn subscribe_patiently(
    url: &str,
    opts: SubscribeOptions,
    patience: Duration,
) -> Result<Box<dyn Subscriber>> {
    framewire::subscribe_patiently(url, opts, patience).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_counts_gaps_up_to_the_highest_seq() {
        let mut t = Tally::default();
        assert_eq!(t.summary_line(), "received=0 lost=0 corrupt=0");
        for seq in [0, 1, 2, 5, 6] {
            t.record(seq, true);
        }
        t.record(7, false);
        assert_eq!(t.summary_line(), "received=6 lost=2 corrupt=1");

        let mut late = Tally::default();
        late.record(10, true);
        assert_eq!(late.lost(), 10, "frames before a late join count as lost");
    }

    #[test]
    fn a_restarted_publisher_starts_a_new_count() {
        let mut t = Tally::default();
        for seq in 0..5 {
            t.record(seq, true);
        }
        t.record_reconnect();
        // The same publisher, after a link came back: numbering goes on.
        for seq in 7..9 {
            t.record(seq, true);
        }
        assert_eq!(t.summary_line(), "received=7 lost=2 corrupt=0");
        t.record_reconnect();
        // A new publisher, numbering from 0; its frame 0 was missed.
        for seq in 1..4 {
            t.record(seq, true);
        }
        assert_eq!(t.summary_line(), "received=10 lost=3 corrupt=0");
        assert_eq!(t.reconnects, 2);
    }

    #[test]
    fn report_line() {
        let r = SendReport {
            sent: 20,
            bytes: 20 << 20,
            secs: 0.5,
        };
        assert_eq!(
            r.summary_line(),
            "sent=20 bytes=20971520 secs=0.500 mb_per_s=41.9"
        );
        let instant = SendReport { secs: 0.0, ..r };
        assert_eq!(instant.mb_per_s(), 0.0);
    }

    #[test]
    fn command_line_values() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("24 MiB"), Ok(24 << 20));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert_eq!(parse_rate("30"), Ok(30.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("inf").is_err());
    }
}
