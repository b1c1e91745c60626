//! A small `shm-pool` peer for the cross-process tests: a publisher, a
//! subscriber, or (for the owner-only tests) a raw probe or squatter that can
//! run as another user.
//!
//! ```text
//! shm-pool-peer publish URL [--subscribers N] [--frames N] [--size BYTES] [--loan] [--no-fill]
//! shm-pool-peer subscribe URL [--mode view|owned] [--frames N] [--hold N] [--no-check] [--quiet]
//! shm-pool-peer forward UPSTREAM_URL DOWNSTREAM_URL [--subscribers N] [--frames N] [--keep N]
//! shm-pool-peer probe NAME OWNER_UID [--as-uid UID]
//! shm-pool-peer squat NAME OWNER_UID [--as-uid UID]
//! ```
//!
//! It reports progress as lines on stdout (`ready`, `got SEQ`, `holding N`,
//! `done N`, `forwarded N COUNT` with COUNT the frames sent without a copy, ...), and once its work is done waits until its stdin closes, so
//! the test decides when it exits (or kills it). Frames carry
//! `transport_core::pattern` bytes of their sequence number; a subscriber checks
//! every byte unless told `--no-check` (benchmarks of the untouched hand-off),
//! and `--quiet` leaves out the line per frame.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use transport_core::{
    Endpoint, Error, Frame, PublishOptions, Publisher, RecvMode, SubscribeOptions, Subscriber,
    Transport, pattern,
};
use transport_shm_pool::ShmPoolTransport;
use transport_shm_pool::config::socket_name;
use transport_shm_pool::wire::{self, Msg};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Args {
    rest: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        match self.rest.iter().position(|a| a == name) {
            Some(i) => {
                self.rest.remove(i);
                true
            }
            None => false,
        }
    }

    fn opt(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.rest.iter().position(|a| a == name) {
            Some(i) if i + 1 < self.rest.len() => {
                let v = self.rest.remove(i + 1);
                self.rest.remove(i);
                Ok(Some(v))
            }
            Some(_) => Err(format!("{name} needs a value")),
            None => Ok(None),
        }
    }

    fn num(&mut self, name: &str, default: u64) -> Result<u64, String> {
        match self.opt(name)? {
            Some(v) => v
                .parse()
                .map_err(|_| format!("{name}: `{v}` is not a number")),
            None => Ok(default),
        }
    }

    fn positional(&mut self, what: &str) -> Result<String, String> {
        if self.rest.is_empty() || self.rest[0].starts_with("--") {
            return Err(format!("missing {what}"));
        }
        Ok(self.rest.remove(0))
    }

    fn done(&self) -> Result<(), String> {
        match self.rest.first() {
            Some(a) => Err(format!("unexpected argument `{a}`")),
            None => Ok(()),
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The test reads these lines; if it is gone there is nobody to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Blocks until stdin reaches end of file (the test closed it or died).
fn wait_for_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn as_uid(args: &mut Args) -> Result<(), String> {
    if let Some(uid) = args.opt("--as-uid")? {
        let uid: u32 = uid
            .parse()
            .map_err(|_| format!("--as-uid: `{uid}` is not a uid"))?;
        // This process has one thread here, so the per-thread setuid of the
        // raw system call is the whole process's.
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))
            .map_err(|e| format!("setuid({uid}): {e}"))?;
    }
    Ok(())
}

fn publish(mut args: Args) -> Result<(), String> {
    let url = args.positional("URL")?;
    let subscribers = args.num("--subscribers", 1)? as usize;
    let frames = args.num("--frames", 1)?;
    let size = args.num("--size", 4096)? as usize;
    let loan = args.flag("--loan");
    let fill = !args.flag("--no-fill");
    args.done()?;
    let endpoint = Endpoint::parse(&url).map_err(|e| e.to_string())?;
    runtime()?.block_on(async move {
        let mut publ = ShmPoolTransport::new()
            .publish(&endpoint, &PublishOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        say("listening");
        publ.wait_for_subscribers(subscribers, TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        say("ready");
        for seq in 0..frames {
            if loan {
                let mut l = publ.loan(size).await.map_err(|e| e.to_string())?;
                if fill {
                    pattern::fill(seq, &mut l);
                }
                publ.send_loan(l).await.map_err(|e| e.to_string())?;
            } else {
                publ.send(Frame::new(pattern::make(seq, size)))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        tokio::time::timeout(TIMEOUT, publ.flush())
            .await
            .map_err(|_| "flush timed out".to_string())?
            .map_err(|e| e.to_string())?;
        say(&format!("sent {frames}"));
        tokio::task::spawn_blocking(wait_for_stdin_eof)
            .await
            .map_err(|e| e.to_string())?;
        drop(publ);
        Ok(())
    })
}

fn subscribe(mut args: Args) -> Result<(), String> {
    let url = args.positional("URL")?;
    let mode: RecvMode = args
        .opt("--mode")?
        .unwrap_or_else(|| "view".into())
        .parse()?;
    let frames = args.num("--frames", 1)?;
    let hold = args.num("--hold", 0)? as usize;
    let check = !args.flag("--no-check");
    let quiet = args.flag("--quiet");
    args.done()?;
    let endpoint = Endpoint::parse(&url).map_err(|e| e.to_string())?;
    runtime()?.block_on(async move {
        let opts = SubscribeOptions::default().recv_mode(mode);
        let mut sub = ShmPoolTransport::new()
            .subscribe(&endpoint, &opts)
            .await
            .map_err(|e| e.to_string())?;
        say("subscribed");
        let mut held = Vec::new();
        // Frames are numbered from where this subscriber joined.
        let mut next: Option<u64> = None;
        let mut got = 0;
        while got < frames {
            let f = match tokio::time::timeout(TIMEOUT, sub.recv()).await {
                Err(_) => return Err(format!("no frame after {got} within {TIMEOUT:?}")),
                Ok(Err(Error::Lagged { missed })) => {
                    say(&format!("lagged {missed}"));
                    next = None;
                    continue;
                }
                Ok(Err(e)) => return Err(format!("recv: {e}")),
                Ok(Ok(f)) => f,
            };
            if let Some(n) = next
                && f.seq != n
            {
                return Err(format!("frame {} arrived, {n} expected", f.seq));
            }
            next = Some(f.seq + 1);
            if check && !pattern::check(f.seq, &f.payload) {
                return Err(format!("frame {} is corrupt", f.seq));
            }
            if !quiet {
                say(&format!("got {}", f.seq));
            }
            got += 1;
            if held.len() < hold {
                held.push(f);
                if held.len() == hold {
                    say(&format!("holding {hold}"));
                }
            }
        }
        say(&format!("done {frames}"));
        tokio::task::spawn_blocking(wait_for_stdin_eof)
            .await
            .map_err(|e| e.to_string())?;
        // The views must still hold the bytes they were sent with.
        for f in &held {
            if check && !pattern::check(f.seq, &f.payload) {
                return Err(format!("held frame {} changed under its view", f.seq));
            }
        }
        Ok(())
    })
}

/// Receives views from UPSTREAM and re-sends each, untouched, through its own
/// publisher on DOWNSTREAM: the zero-copy forward.
fn forward(mut args: Args) -> Result<(), String> {
    let up = args.positional("UPSTREAM_URL")?;
    let down = args.positional("DOWNSTREAM_URL")?;
    let subscribers = args.num("--subscribers", 1)? as usize;
    let frames = args.num("--frames", 1)?;
    let keep = args.num("--keep", 0)?;
    args.done()?;
    let up = Endpoint::parse(&up).map_err(|e| e.to_string())?;
    let down = Endpoint::parse(&down).map_err(|e| e.to_string())?;
    runtime()?.block_on(async move {
        let t = ShmPoolTransport::new();
        let mut publ = t
            .publish(&down, &PublishOptions::default().trace_name("forward"))
            .await
            .map_err(|e| e.to_string())?;
        say("listening");
        let views = SubscribeOptions::default().recv_mode(RecvMode::View);
        let mut sub = t.subscribe(&up, &views).await.map_err(|e| e.to_string())?;
        say("subscribed");
        publ.wait_for_subscribers(subscribers, TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        say("ready");
        for got in 0..frames {
            let f = match tokio::time::timeout(TIMEOUT, sub.recv()).await {
                Err(_) => return Err(format!("no frame after {got} within {TIMEOUT:?}")),
                Ok(r) => r.map_err(|e| format!("recv: {e}"))?,
            };
            tokio::time::timeout(TIMEOUT, publ.send(f))
                .await
                .map_err(|_| "send timed out".to_string())?
                .map_err(|e| format!("send: {e}"))?;
        }
        tokio::time::timeout(TIMEOUT, publ.flush())
            .await
            .map_err(|_| "flush timed out".to_string())?
            .map_err(|e| e.to_string())?;
        say(&format!("forwarded {frames} {}", publ.forwarded()));
        // Then views it keeps without forwarding them.
        let mut kept = Vec::new();
        for got in 0..keep {
            match tokio::time::timeout(TIMEOUT, sub.recv()).await {
                Err(_) => return Err(format!("no frame to keep after {got} within {TIMEOUT:?}")),
                Ok(r) => kept.push(r.map_err(|e| format!("recv: {e}"))?),
            }
        }
        if keep > 0 {
            say(&format!("kept {keep}"));
        }
        tokio::task::spawn_blocking(wait_for_stdin_eof)
            .await
            .map_err(|e| e.to_string())?;
        drop((kept, sub, publ));
        Ok(())
    })
}

fn abstract_addr(name: &str, owner: &str) -> Result<std::os::unix::net::SocketAddr, String> {
    use std::os::linux::net::SocketAddrExt;
    let owner: u32 = owner
        .parse()
        .map_err(|_| format!("`{owner}` is not a uid"))?;
    std::os::unix::net::SocketAddr::from_abstract_name(socket_name(owner, name).as_bytes())
        .map_err(|e| e.to_string())
}

/// Connects to a pool's socket as whoever we are, sends SUBSCRIBE, and tells
/// whether the publisher answered with HELLO or closed the connection.
fn probe(mut args: Args) -> Result<(), String> {
    let name = args.positional("NAME")?;
    let owner = args.positional("OWNER_UID")?;
    as_uid(&mut args)?;
    args.done()?;
    let addr = abstract_addr(&name, &owner)?;
    let mut s =
        std::os::unix::net::UnixStream::connect_addr(&addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut msg = bytes::BytesMut::new();
    wire::encode(
        &Msg::Subscribe {
            version: wire::VERSION,
            prefix: String::new(),
        },
        &mut msg,
    );
    // The publisher may already have closed the connection: that is the answer.
    let _ = s.write_all(&msg);
    let mut head = [0u8; 5];
    match s.read_exact(&mut head) {
        Ok(()) if head[4] == 0x81 => say("hello"),
        Ok(()) => say(&format!("message {:#04x}", head[4])),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => say("closed"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => say("closed"),
        Err(e) => return Err(format!("read: {e}")),
    }
    Ok(())
}

/// Binds a pool's socket name (as another user, to play a squatter) and
/// accepts connections until stdin closes.
fn squat(mut args: Args) -> Result<(), String> {
    let name = args.positional("NAME")?;
    let owner = args.positional("OWNER_UID")?;
    as_uid(&mut args)?;
    args.done()?;
    let addr = abstract_addr(&name, &owner)?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| format!("bind: {e}"))?;
    say("listening");
    std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in l.incoming().flatten() {
            conns.push(c);
        }
    });
    wait_for_stdin_eof();
    Ok(())
}

fn main() -> ExitCode {
    let mut all: Vec<String> = std::env::args().skip(1).collect();
    if all.is_empty() {
        eprintln!("usage: shm-pool-peer publish|subscribe|forward|probe|squat ...");
        return ExitCode::from(2);
    }
    let cmd = all.remove(0);
    let args = Args { rest: all };
    let r = match cmd.as_str() {
        "publish" => publish(args),
        "subscribe" => subscribe(args),
        "forward" => forward(args),
        "probe" => probe(args),
        "squat" => squat(args),
        other => Err(format!("unknown command `{other}`")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}
