//! Sends N frames of a given size, each filled with the pattern of its
//! sequence number, then prints `sent=N bytes=B secs=S mb_per_s=X`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use framewire::{PublishOptions, Publisher, Result};
use framewire_examples::{
    SendPath, SendPlan, SendReport, parse_rate, parse_secs, parse_size, send_frames,
};

/// Publish frames filled with a verifiable pattern.
///
/// Frame i (the i-th frame accepted, which the publisher stamps with sequence
/// number i) carries the pattern of i, so `subscriber --verify` can check
/// every byte. Under policy=fail a refused frame is retried after 1 ms with
/// the same i. Prints one line on stdout when done:
/// `sent=N bytes=B secs=S mb_per_s=X` (megabytes of 10^6 bytes, timed from
/// the first send to the end of the final flush).
#[derive(Debug, Parser)]
#[command(name = "publisher", version)]
struct Args {
    /// Endpoint URL, e.g. tcp://127.0.0.1:7000, unix:///tmp/cam0.sock,
    /// tcp://127.0.0.1:7000?policy=drop-oldest&queue=8.
    #[arg(long, value_name = "URL")]
    endpoint: String,
    /// Payload size of each frame: bytes, or with a unit (64KiB, 24MiB, 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: usize,
    /// Frames to send.
    #[arg(long, value_name = "N")]
    count: u64,
    /// Send at most this many frames per second (default: as fast as possible).
    #[arg(long, value_name = "HZ", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Before sending, wait until this many subscribers are connected.
    #[arg(long, value_name = "K", default_value_t = 0)]
    wait_subscribers: usize,
    /// Give up waiting for subscribers after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "60")]
    wait_timeout: Duration,
    /// How frames are handed to the backend: loan a buffer and fill it in
    /// place, or fill a heap buffer and send that.
    #[arg(long = "send", value_name = "PATH", value_enum, default_value_t = SendPath::Loan)]
    send_path: SendPath,
}

#[tokio::main]
async fn main() -> ExitCode {
    framewire_examples::init_tracing();
    let args = Args::parse();
    match run(&args).await {
        Ok(report) => {
            println!("{}", report.summary_line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("publisher: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<SendReport> {
    // Not needed for tcp:// or unix://; shows how a custom backend plugs in.
    framewire_examples::register_inproc()?;
    let mut publ = framewire::publish(&args.endpoint, PublishOptions::default()).await?;
    eprintln!("publisher: publishing on {}", publ.endpoint());

    if args.wait_subscribers > 0 {
        if publ.subscriber_count().is_some() {
            eprintln!(
                "publisher: waiting for {} subscriber(s)",
                args.wait_subscribers
            );
            publ.wait_for_subscribers(args.wait_subscribers, args.wait_timeout)
                .await?;
        } else {
            tracing::warn!(
                "this backend cannot count subscribers; sleeping 1 s instead of waiting for {}",
                args.wait_subscribers
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    let plan = SendPlan {
        size: args.size,
        count: args.count,
        rate: args.rate,
        path: args.send_path,
    };
    let outcome = send_frames(publ.as_mut(), plan).await?;
    if outcome.refused > 0 {
        eprintln!(
            "publisher: {} send(s) refused as full and retried",
            outcome.refused
        );
    }
    let dropped = publ.stats().dropped;
    if dropped > 0 {
        eprintln!("publisher: {dropped} frame(s) dropped for slow subscribers");
    }
    Ok(outcome.report)
}
