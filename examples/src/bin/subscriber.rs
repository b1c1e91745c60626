//! Receives frames, optionally verifies their payloads, and prints
//! `received=R lost=L corrupt=C` as its last line on stdout.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use framewire::{Reconnect, RecvMode, SubscribeOptions, Subscriber};
use framewire_examples::{
    RecvArg, StopReason, parse_secs, receive_frames_slowly, subscribe_patiently,
};

/// Receive frames and count, and optionally verify, them.
///
/// Stops after --count frames, when the publisher disconnects, or when no
/// frame arrives for --timeout seconds; stopping early is not a failure (a
/// note goes to stderr). Lag reports (policy=drop-oldest) are counted and
/// receiving goes on.
///
/// The last line on stdout is `received=R lost=L corrupt=C`, where lost is
/// (highest sequence number seen + 1) - received: the frames never seen from
/// sequence number 0 up to the last one seen (so a subscriber that joined late
/// counts what was sent before it joined). Everything else goes to stderr.
///
/// Exit status: 0 if no frame was corrupt and no backend error other than a
/// lag report or the disconnect occurred, 1 otherwise.
#[derive(Debug, Parser)]
#[command(name = "subscriber", version)]
struct Args {
    /// Endpoint URL, e.g. tcp://127.0.0.1:7000 or unix:///tmp/cam0.sock.
    #[arg(long, value_name = "URL")]
    endpoint: String,
    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    count: u64,
    /// Check each payload against the pattern of its sequence number.
    #[arg(long)]
    verify: bool,
    /// Idle timeout: stop when no frame arrives for this many seconds. Also
    /// bounds how long to wait for the publisher to appear.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    timeout: Duration,
    /// Receive mode (default: the backend's default, owned).
    #[arg(long, value_name = "MODE", value_enum)]
    recv: Option<RecvArg>,
    /// Simulated work per frame, in milliseconds (a sleep after each frame):
    /// makes this a deliberately slow subscriber.
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    work_ms: f64,
    /// Follow the publisher across restarts: when it goes away, wait up to
    /// --timeout for a publisher on the same endpoint and carry on (each
    /// reconnect is reported on stderr) instead of stopping. The same as
    /// `reconnect=on` in the URL, whose `reconnect_*` options tune it.
    #[arg(long)]
    reconnect: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    framewire_examples::init_tracing();
    let args = Args::parse();
    // Not needed for tcp:// or unix://; shows how a custom backend plugs in.
    if let Err(e) = framewire_examples::register_inproc() {
        eprintln!("subscriber: {e}");
        return ExitCode::FAILURE;
    }
    let mut opts = SubscribeOptions::default();
    if let Some(mode) = args.recv {
        opts = opts.recv_mode(mode.into());
    }
    if args.reconnect {
        opts = opts.reconnect(Reconnect::default().timeout(Some(args.timeout)));
    }
    let mut sub = match subscribe_patiently(&args.endpoint, opts, args.timeout).await {
        Ok(sub) => sub,
        Err(e) => {
            eprintln!("subscriber: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Say what the frames are, from the backend's capabilities: a view is
    // zero-copy only where the backend maps the publisher's memory.
    let zero_copy = framewire::capabilities(&args.endpoint).is_ok_and(|c| c.zero_copy_views);
    let what = match sub.recv_mode() {
        RecvMode::View if zero_copy => "zero-copy views of the publisher's memory",
        RecvMode::View => "private copies: this backend has no zero-copy views",
        RecvMode::Owned => "owned copies",
    };
    eprintln!("subscriber: subscribed to {} ({what})", args.endpoint);

    let work = Duration::try_from_secs_f64(args.work_ms / 1e3).unwrap_or_default();
    let got =
        receive_frames_slowly(sub.as_mut(), args.count, args.verify, args.timeout, work).await;
    let tally = got.tally;
    match &got.stop {
        StopReason::Done => {}
        StopReason::Idle => eprintln!(
            "subscriber: note: no frame for {:?}; stopping after {} of {} frames",
            args.timeout, tally.received, args.count
        ),
        StopReason::Disconnected(why) => eprintln!(
            "subscriber: note: disconnected after {} of {} frames: {why}",
            tally.received, args.count
        ),
        StopReason::Errors => eprintln!("subscriber: giving up after {} errors", got.errors),
    }
    if tally.reconnects > 0 {
        eprintln!(
            "subscriber: reconnected {} time(s); frames sent while no publisher was connected were missed",
            tally.reconnects
        );
    }
    if tally.lagged > 0 {
        eprintln!(
            "subscriber: the backend reported {} frame(s) dropped before this subscriber read them",
            tally.lagged
        );
    }
    println!("{}", tally.summary_line());
    if tally.corrupt == 0 && got.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
