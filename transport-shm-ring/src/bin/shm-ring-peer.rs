//! A helper process for transport-shm-ring's cross-process tests and bench.
//!
//! ```text
//! shm-ring-peer sub URL [--count N] [--slow-ms MS] [--duration-ms MS] [--hold]
//!     Subscribes, prints `ready`, then receives until N frames, the duration,
//!     or a disconnect, checking every payload against transport_core::pattern;
//!     prints `received=R lagged=L corrupt=C torn=T last=S end=E` and exits 0
//!     (1 if any payload was corrupt). With --hold it then sleeps until killed.
//! shm-ring-peer pub URL --count N --size BYTES [--sizes A,B,..] [--quick]
//!                [--subs K] [--loan] [--hold]
//!     Publishes, prints `ready`, waits for K subscribers, sends N pattern
//!     frames, prints `sent=N`; then sleeps until killed (--hold) or exits.
//!     --sizes: frame i has the size `sizes[i % len]` (instead of --size).
//!     --quick: frame i holds `quick_pattern(i)` (cheap to make and check in
//!     a debug build) instead of transport_core::pattern.
//! shm-ring-peer sink URL
//!     Subscribes, prints `ready`, and drops every frame until disconnected
//!     (the consumer of the throughput bench).
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use transport_core::{Endpoint, Error, Frame, Publisher, Subscriber, Transport, pattern};
use transport_shm_ring::ShmRingTransport;

#[derive(Debug, Default)]
struct Args {
    mode: String,
    url: String,
    count: Option<u64>,
    size: usize,
    subs: usize,
    slow: Duration,
    duration: Option<Duration>,
    sizes: Vec<usize>,
    quick: bool,
    loan: bool,
    hold: bool,
}

/// The `--quick` payload of frame `seq`: the byte `seq as u8` throughout,
/// except the first and last 8 bytes (when there is room), which hold `seq`.
fn quick_pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![seq as u8; len];
    if len >= 16 {
        v[..8].copy_from_slice(&seq.to_le_bytes());
        v[len - 8..].copy_from_slice(&seq.to_le_bytes());
    }
    v
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        mode: it
            .next()
            .ok_or("usage: shm-ring-peer sub|pub|sink URL [options]")?,
        url: it.next().ok_or("missing URL")?,
        ..Args::default()
    };
    let num = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.ok_or(format!("{what} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{what}: {e}"))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--count" => a.count = Some(num(it.next(), "--count")?),
            "--size" => {
                let v = it.next().ok_or("--size needs a value")?;
                let n = transport_core::endpoint::parse_size(&v)?;
                a.size = usize::try_from(n).map_err(|e| e.to_string())?;
            }
            "--sizes" => {
                let v = it.next().ok_or("--sizes needs a value")?;
                for one in v.split(',') {
                    let n = transport_core::endpoint::parse_size(one)?;
                    a.sizes.push(usize::try_from(n).map_err(|e| e.to_string())?);
                }
            }
            "--quick" => a.quick = true,
            "--subs" => a.subs = num(it.next(), "--subs")? as usize,
            "--slow-ms" => a.slow = Duration::from_millis(num(it.next(), "--slow-ms")?),
            "--duration-ms" => {
                a.duration = Some(Duration::from_millis(num(it.next(), "--duration-ms")?))
            }
            "--loan" => a.loan = true,
            "--hold" => a.hold = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn hold() -> ! {
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn subscribe(a: &Args) -> Result<u8, Error> {
    let ep = Endpoint::parse(&a.url)?;
    let mut sub = ShmRingTransport.subscribe(&ep, &Default::default()).await?;
    say("ready");
    let (mut received, mut lagged, mut corrupt, mut last) = (0u64, 0u64, 0u64, None::<u64>);
    let deadline = a.duration.map(|d| Instant::now() + d);
    let end = loop {
        if a.count.is_some_and(|n| received >= n) {
            break "count";
        }
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), sub.recv()).await {
                Ok(r) => r,
                Err(_) => break "duration",
            },
            None => sub.recv().await,
        };
        match next {
            Ok(f) => {
                if !pattern::check(f.seq, &f.payload) || last.is_some_and(|l| f.seq <= l) {
                    corrupt += 1;
                }
                last = Some(f.seq);
                received += 1;
                if !a.slow.is_zero() {
                    tokio::time::sleep(a.slow).await;
                }
            }
            Err(Error::Lagged { missed }) => lagged += missed,
            Err(Error::Disconnected { .. }) => break "disconnected",
            Err(e) => return Err(e),
        }
    };
    let last = last.map_or_else(|| "none".to_owned(), |l| l.to_string());
    say(&format!(
        "received={received} lagged={lagged} corrupt={corrupt} torn={} last={last} end={end}",
        sub.torn_copies()
    ));
    if a.hold {
        hold().await;
    }
    Ok(u8::from(corrupt > 0))
}

async fn publish(a: &Args) -> Result<u8, Error> {
    let ep = Endpoint::parse(&a.url)?;
    let mut publ = ShmRingTransport.publish(&ep, &Default::default()).await?;
    say("ready");
    publ.wait_for_subscribers(a.subs, Duration::from_secs(20))
        .await?;
    let n = a.count.unwrap_or(1);
    for i in 0..n {
        let size = match a.sizes.len() {
            0 => a.size,
            k => a.sizes[(i % k as u64) as usize],
        };
        if a.loan {
            let mut loan = publ.loan(size).await?;
            if a.quick {
                loan.copy_from_slice(&quick_pattern(i, size));
            } else {
                pattern::fill(i, &mut loan);
            }
            publ.send_loan(loan).await?;
        } else if a.quick {
            publ.send(Frame::new(quick_pattern(i, size))).await?;
        } else {
            publ.send(Frame::new(pattern::make(i, size))).await?;
        }
    }
    say(&format!("sent={n}"));
    if a.hold {
        hold().await;
    }
    Ok(0)
}

async fn sink(a: &Args) -> Result<u8, Error> {
    let ep = Endpoint::parse(&a.url)?;
    let mut sub = ShmRingTransport.subscribe(&ep, &Default::default()).await?;
    say("ready");
    loop {
        match sub.recv().await {
            Ok(f) => drop(f),
            Err(Error::Lagged { .. }) => {}
            Err(Error::Disconnected { .. }) => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shm-ring-peer: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shm-ring-peer: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match args.mode.as_str() {
            "sub" => subscribe(&args).await,
            "pub" => publish(&args).await,
            "sink" => sink(&args).await,
            other => Err(Error::InvalidOption {
                option: "mode".into(),
                reason: format!("`{other}`; use sub, pub or sink"),
            }),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("shm-ring-peer: {e}");
            ExitCode::from(2)
        }
    }
}
