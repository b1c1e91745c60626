//! The publisher: binds, accepts subscribers, fans frames out through one
//! bounded queue per subscriber.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use transport_core::contract::{PayloadLimit, count_sent};
use transport_core::fanout::{Fanout, Member};
use transport_core::{
    Endpoint, Error, Frame, Loan, Policy, Publisher, Result, StatCounters, Stats,
};

use crate::Config;
use crate::wire::{self, Encoded};

/// What the publisher shares with its accept and connection tasks.
#[derive(Debug)]
struct Shared {
    /// One queue per subscriber, read by its connection's writer.
    fanout: Arc<Fanout<Arc<Encoded>>>,
    cfg: Config,
    next_id: AtomicU64,
}

/// A publisher on `tcp://HOST:PORT` or `unix://PATH`.
///
/// It binds at creation; subscribers connect at any time and receive the
/// frames sent after they joined. See the crate docs for options.
#[derive(Debug)]
pub struct TcpPublisher {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    policy: Policy,
    trace_name: Option<String>,
    limit: PayloadLimit,
    accept: JoinHandle<()>,
    unix_path: Option<PathBuf>,
}

pub(crate) async fn bind(
    endpoint: &Endpoint,
    cfg: Config,
    policy: Policy,
    trace_name: Option<String>,
) -> Result<TcpPublisher> {
    let shared = Arc::new(Shared {
        fanout: Arc::new(Fanout::new(cfg.queue, Arc::new(StatCounters::default()))),
        cfg,
        next_id: AtomicU64::new(0),
    });
    let (accept, endpoint, unix_path) = match endpoint.scheme() {
        "unix" => {
            let path = PathBuf::from(endpoint.address());
            let listener = bind_unix(&path).await?;
            let task = tokio::spawn(accept_unix(listener, shared.clone()));
            (task, endpoint.clone(), Some(path))
        }
        _ => {
            let listener = TcpListener::bind(endpoint.address())
                .await
                .map_err(|e| Error::io(format!("binding {}", endpoint.address()), e))?;
            let local = listener
                .local_addr()
                .map_err(|e| Error::io("reading the bound address", e))?;
            // Report the port the OS picked for `:0`.
            let mut url = format!("tcp://{local}");
            let query: Vec<String> = endpoint.params().map(|(k, v)| format!("{k}={v}")).collect();
            if !query.is_empty() {
                url.push('?');
                url.push_str(&query.join("&"));
            }
            let task = tokio::spawn(accept_tcp(listener, shared.clone()));
            (task, Endpoint::parse(&url)?, None)
        }
    };
    Ok(TcpPublisher {
        shared,
        endpoint,
        policy,
        trace_name,
        limit: PayloadLimit::new(cfg.max_payload),
        accept,
        unix_path,
    })
}

async fn bind_unix(path: &std::path::Path) -> Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => return finish_unix_bind(path, l),
        Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
            return Err(Error::io(format!("binding {}", path.display()), e));
        }
        Err(_) => {}
    }
    // Something is there: a live publisher, or a socket file left by a crash.
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(Error::InvalidEndpoint {
            url: format!("unix://{}", path.display()),
            reason: "another publisher is listening on this path; pick another path".into(),
        });
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("inspecting {}", path.display()), e))?;
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(Error::InvalidEndpoint {
            url: format!("unix://{}", path.display()),
            reason: "the path exists and is not a socket; pick another path".into(),
        });
    }
    tracing::info!(path = %path.display(), "removing a stale socket left by a previous run");
    std::fs::remove_file(path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    let l = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    finish_unix_bind(path, l)
}

fn finish_unix_bind(path: &std::path::Path, l: UnixListener) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // Owner-only, like every framewire rendezvous point.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("restricting {} to its owner", path.display()), e))?;
    Ok(l)
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                tokio::spawn(serve(r, w, addr.to_string(), shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn accept_unix(listener: UnixListener, shared: Arc<Shared>) {
    let me = rustix::process::getuid();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                match stream.peer_cred() {
                    Ok(c) if c.uid() == me.as_raw() => {}
                    Ok(c) => {
                        tracing::warn!(uid = c.uid(), "refusing a subscriber of another user");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the peer's credentials");
                        continue;
                    }
                }
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                let (r, w) = stream.into_split();
                tokio::spawn(serve(r, w, format!("unix peer #{id}"), shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Handshake, then write queued frames until the peer or the publisher goes.
async fn serve<R, W>(mut r: R, mut w: W, peer: String, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let cfg = shared.cfg;
    let mut hello = [0u8; wire::CLIENT_HELLO_LEN];
    let got = tokio::time::timeout(cfg.handshake_timeout, async {
        // The version first: a peer of another version may send less.
        r.read_exact(&mut hello[..wire::HELLO_HEAD_LEN]).await?;
        if wire::check_hello(&hello).is_ok() {
            r.read_exact(&mut hello[wire::HELLO_HEAD_LEN..]).await?;
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    match got {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return tracing::warn!(%peer, error = %e, "handshake failed"),
        Err(_) => return tracing::warn!(%peer, "no handshake within the timeout; closing"),
    }
    let checked = wire::check_hello(&hello).and_then(|()| wire::client_hello_liveness(&hello));
    let theirs = match checked {
        Ok(l) => l,
        Err(e) => {
            let reply = wire::server_hello(cfg.max_payload, 0, cfg.liveness);
            // Tell the peer our version so it can report the mismatch, then close.
            let _ = w.write_all(&reply).await;
            return tracing::warn!(%peer, error = %e, "refusing a subscriber");
        }
    };
    // Join before answering: once the subscriber's `subscribe` returns,
    // every later `send` reaches it, starting at `first_seq`. A publisher
    // dropped meanwhile has closed the fanout: then this connection closes.
    let Some(member) = shared.fanout.join(peer.clone()) else {
        return;
    };
    let reply = wire::server_hello(cfg.max_payload, member.first_seq(), cfg.liveness);
    let result = match w.write_all(&reply).await {
        Ok(()) => {
            let every = wire::heartbeat_interval(cfg.liveness, theirs);
            pump(&mut r, &mut w, &member, &peer, &shared.cfg, every).await
        }
        Err(e) => Err(Error::io("answering the handshake", e)),
    };
    // Leaves the fanout: what is queued for it goes, the publisher stops
    // waiting for it.
    drop(member);
    match result {
        Ok(()) => {
            let _ = w.shutdown().await;
            tracing::debug!(%peer, "subscriber connection closed");
        }
        // A subscriber that leaves is ordinary; anything else is worth a warning.
        Err(Error::Disconnected { reason: why, .. }) => {
            tracing::debug!(%peer, %why, "subscriber left")
        }
        Err(e) => tracing::warn!(%peer, error = %e, "dropping subscriber connection"),
    }
}

/// Writes queued frames (and heartbeats when idle) while watching the
/// subscriber: it must send heartbeats and nothing else, and it is declared
/// dead once a read has waited `liveness` for one.
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    member: &Member<Arc<Encoded>>,
    peer: &str,
    cfg: &Config,
    every: Duration,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::select! {
        biased;
        res = watch(r, peer, cfg.liveness) => res,
        res = write_loop(w, member, cfg.write_timeout, every) => res,
    }
}

/// Reads the subscriber's heartbeats; returns how the subscriber ended.
async fn watch<R: AsyncRead + Unpin>(r: &mut R, peer: &str, liveness: Duration) -> Result<()> {
    let mut r = wire::Watched::new(r, liveness);
    let mut buf = [0u8; 64];
    // Where in the 4-byte heartbeat the next byte falls.
    let mut at = 0usize;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                return Err(Error::disconnected(
                    "tcp",
                    format!("{peer} closed its connection"),
                ));
            }
            Ok(n) => n,
            Err(_) if r.expired => {
                return Err(Error::disconnected(
                    "tcp",
                    format!(
                        "{peer} stopped answering: no heartbeat for {liveness:?} (liveness); \
                         its host or the link may be down"
                    ),
                ));
            }
            Err(e) => return Err(Error::io("watching the subscriber", e)),
        };
        for &b in &buf[..n] {
            if b != wire::HEARTBEAT[at] {
                return Err(Error::protocol(
                    "tcp",
                    format!("{peer} sent bytes other than heartbeats after the handshake"),
                ));
            }
            at = (at + 1) % wire::HEARTBEAT.len();
        }
    }
}

/// Writes queued frames until the publisher closes; a heartbeat goes out
/// whenever nothing was queued for `every`.
async fn write_loop<W: AsyncWrite + Unpin>(
    w: &mut W,
    member: &Member<Arc<Encoded>>,
    stall: Duration,
    every: Duration,
) -> Result<()> {
    loop {
        // `recv_in_flight` takes a frame only in the poll that returns it,
        // so the timeout never loses one.
        match tokio::time::timeout(every, member.recv_in_flight()).await {
            Err(_) => match tokio::time::timeout(stall, w.write_all(&wire::HEARTBEAT)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::io("sending a heartbeat", e)),
                Err(_) => {
                    return Err(Error::timeout(
                        stall,
                        "for the subscriber to read (write_timeout); it stopped reading",
                    ));
                }
            },
            // The publisher is gone and everything queued was written.
            Ok(None) => return Ok(()),
            Ok(Some((_lag, msg))) => {
                // Lag needs no word here: the subscriber sees the gap in the
                // sequence numbers.
                wire::write_encoded(w, &msg, stall).await?;
                member.done();
            }
        }
    }
}

#[async_trait]
impl Publisher for TcpPublisher {
    async fn send(&mut self, mut frame: Frame) -> Result<()> {
        self.limit.check_frame(&frame)?;
        let fanout = &self.shared.fanout;
        fanout.reserve(self.policy).await?;
        // Stamped after any wait, so the timestamp is the moment it goes out.
        // Only `send` (which holds `&mut self`) pushes, so `next_seq` is
        // still the number `push` takes.
        frame.stamp_for_send(fanout.next_seq(), self.trace_name.as_deref())?;
        let msg = Arc::new(Encoded::new(&frame)?);
        fanout.push(msg);
        count_sent(fanout.stats(), frame.payload.len());
        Ok(())
    }

    async fn loan(&mut self, len: usize) -> Result<Loan> {
        self.limit.heap_loan(len)
    }

    async fn flush(&mut self) -> Result<()> {
        // Writers that stall past `write_timeout` are cut off, so this ends.
        self.shared.fanout.drained().await;
        Ok(())
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn subscriber_count(&self) -> Option<usize> {
        Some(self.shared.fanout.watch().count())
    }

    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.shared.fanout.wait_for_subscribers(n, timeout).await
    }

    fn stats(&self) -> Stats {
        self.shared.fanout.stats().snapshot()
    }
}

impl Drop for TcpPublisher {
    fn drop(&mut self) {
        self.accept.abort();
        // Writers send what is queued, then close their connections; a
        // connection still in its handshake can no longer join.
        self.shared.fanout.close();
        if let Some(path) = &self.unix_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use transport_core::{PublishOptions, Transport};

    use super::*;

    /// A connection whose handshake ends after the publisher was dropped
    /// must be closed, not left waiting for frames that never come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_registering_after_drop_is_disconnected() {
        let publ = crate::TcpTransport
            .publish(
                &Endpoint::parse("tcp://127.0.0.1:0").expect("url"),
                &PublishOptions::default(),
            )
            .await
            .expect("publish");
        let addr = publ.endpoint().address().to_owned();
        let mut client = std::net::TcpStream::connect(&addr).expect("connect");
        // The connection is accepted and its task waits for the hello.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fanout = publ.shared.fanout.clone();
        drop(publ);
        assert!(fanout.is_closed());
        client
            .write_all(&wire::client_hello(Duration::from_secs(3)))
            .expect("hello");
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut rest = Vec::new();
        let r = client.read_to_end(&mut rest);
        assert!(
            r.is_ok(),
            "the connection stays open after the publisher closed: {r:?} ({} bytes read)",
            rest.len()
        );
        assert_eq!(fanout.subscriber_count(), 0);
    }
}
