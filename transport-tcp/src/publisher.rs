//! The publisher: binds, accepts subscribers, fans frames out through one
//! bounded queue per subscriber.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use transport_core::{
    Endpoint, Error, Frame, Loan, Policy, Publisher, Result, StatCounters, Stats, wait_until,
};

use crate::Config;
use crate::wire::{self, Encoded};

/// One subscriber's queue, shared by the publisher and that subscriber's writer task.
#[derive(Debug)]
struct SubQueue {
    peer: String,
    state: Mutex<QueueState>,
    /// Publisher -> writer: a frame was queued, or the publisher closed.
    items: Notify,
    /// Writer -> publisher: room was made, a frame was written, or the writer died.
    space: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    frames: VecDeque<Arc<Encoded>>,
    /// The writer took a frame and has not finished writing it.
    writing: bool,
    /// The writer is gone (peer closed, error, stalled).
    dead: bool,
    /// The publisher is gone: write what is queued, then close.
    closing: bool,
}

impl SubQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every critical section is a few field updates), so recover from poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct Shared {
    subs: Mutex<Vec<Arc<SubQueue>>>,
    stats: Arc<StatCounters>,
    /// Fires when a subscriber joins or leaves.
    membership: Notify,
    cfg: Config,
    closed: AtomicBool,
    next_id: AtomicU64,
    /// Sequence number of the next frame; read and written under `subs`'s lock
    /// so a joining subscriber learns exactly where its stream starts.
    next_seq: AtomicU64,
}

impl Shared {
    fn subs(&self) -> Vec<Arc<SubQueue>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn remove(&self, q: &Arc<SubQueue>) {
        let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let before = subs.len();
        subs.retain(|s| !Arc::ptr_eq(s, q));
        if subs.len() != before {
            self.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
        }
        drop(subs);
        self.membership.notify_waiters();
    }
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
    seq: u64,
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
        subs: Mutex::new(Vec::new()),
        stats: Arc::new(StatCounters::default()),
        membership: Notify::new(),
        cfg,
        closed: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
        next_seq: AtomicU64::new(0),
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
        seq: 0,
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
    let q = Arc::new(SubQueue {
        peer: peer.clone(),
        state: Mutex::new(QueueState::default()),
        items: Notify::new(),
        space: Notify::new(),
    });
    // Register before answering: once the subscriber's `subscribe` returns,
    // every later `send` reaches it, starting at `next_seq`.
    let reply = {
        let mut subs = shared.subs.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock that `Drop` takes (after setting `closed`)
        // to mark every queue closing: a queue registered after that would
        // never be closed, and its subscriber would wait forever.
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        subs.push(q.clone());
        wire::server_hello(
            cfg.max_payload,
            shared.next_seq.load(Ordering::Relaxed),
            cfg.liveness,
        )
    };
    shared.stats.subscribers.fetch_add(1, Ordering::Relaxed);
    shared.membership.notify_waiters();
    let result = match w.write_all(&reply).await {
        Ok(()) => {
            let every = wire::heartbeat_interval(cfg.liveness, theirs);
            pump(&mut r, &mut w, &q, &shared, every).await
        }
        Err(e) => Err(Error::io("answering the handshake", e)),
    };
    {
        let mut st = q.lock();
        st.dead = true;
        let n = st.frames.len() as u64;
        st.frames.clear();
        st.writing = false;
        shared.stats.queued.fetch_sub(n, Ordering::Relaxed);
    }
    q.space.notify_waiters();
    shared.remove(&q);
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

enum Next {
    Frame(Arc<Encoded>),
    Close,
}

async fn next_item(q: &SubQueue, shared: &Shared) -> Next {
    loop {
        let notified = q.items.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = q.lock();
            if let Some(f) = st.frames.pop_front() {
                st.writing = true;
                shared.stats.queued.fetch_sub(1, Ordering::Relaxed);
                drop(st);
                q.space.notify_waiters();
                return Next::Frame(f);
            }
            if st.closing {
                return Next::Close;
            }
        }
        notified.await;
    }
}

/// Writes queued frames (and heartbeats when idle) while watching the
/// subscriber: it must send heartbeats and nothing else, and it is declared
/// dead once a read has waited `liveness` for one.
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    q: &SubQueue,
    shared: &Shared,
    every: Duration,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::select! {
        biased;
        res = watch(r, q, shared.cfg.liveness) => res,
        res = write_loop(w, q, shared, every) => res,
    }
}

/// Reads the subscriber's heartbeats; returns how the subscriber ended.
async fn watch<R: AsyncRead + Unpin>(r: &mut R, q: &SubQueue, liveness: Duration) -> Result<()> {
    let mut r = wire::Watched::new(r, liveness);
    let mut buf = [0u8; 64];
    // Where in the 4-byte heartbeat the next byte falls.
    let mut at = 0usize;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                return Err(Error::disconnected(
                    "tcp",
                    format!("{} closed its connection", q.peer),
                ));
            }
            Ok(n) => n,
            Err(_) if r.expired => {
                return Err(Error::disconnected(
                    "tcp",
                    format!(
                        "{} stopped answering: no heartbeat for {liveness:?} (liveness); \
                     its host or the link may be down",
                        q.peer
                    ),
                ));
            }
            Err(e) => return Err(Error::io("watching the subscriber", e)),
        };
        for &b in &buf[..n] {
            if b != wire::HEARTBEAT[at] {
                return Err(Error::protocol(
                    "tcp",
                    format!(
                        "{} sent bytes other than heartbeats after the handshake",
                        q.peer
                    ),
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
    q: &SubQueue,
    shared: &Shared,
    every: Duration,
) -> Result<()> {
    let stall = shared.cfg.write_timeout;
    loop {
        // `next_item` takes a frame only in the poll that returns it, so
        // the timeout never loses one.
        match tokio::time::timeout(every, next_item(q, shared)).await {
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
            Ok(Next::Close) => return Ok(()),
            Ok(Next::Frame(msg)) => {
                wire::write_encoded(w, &msg, stall).await?;
                q.lock().writing = false;
                q.space.notify_waiters();
            }
        }
    }
}

impl TcpPublisher {
    fn check_len(&self, len: u64) -> Result<()> {
        let limit = self.shared.cfg.max_payload;
        if len > limit {
            return Err(Error::PayloadTooLarge {
                len,
                limit,
                option: "max_payload",
            });
        }
        Ok(())
    }

    /// Waits until every live subscriber has room for one more frame.
    async fn wait_for_room(&self, subs: &[Arc<SubQueue>]) {
        let depth = self.shared.cfg.queue;
        for q in subs {
            loop {
                let notified = q.space.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = q.lock();
                    if st.dead || st.frames.len() < depth {
                        break;
                    }
                }
                notified.await;
            }
        }
    }
}

#[async_trait]
impl Publisher for TcpPublisher {
    async fn send(&mut self, mut frame: Frame) -> Result<()> {
        self.check_len(frame.payload.len() as u64)?;
        transport_core::codec::check_header(&frame)?;
        let subs = self.shared.subs();
        let depth = self.shared.cfg.queue;
        match self.policy {
            Policy::Block => self.wait_for_room(&subs).await,
            Policy::Fail => {
                if let Some(q) = subs.iter().find(|q| {
                    let st = q.lock();
                    !st.dead && st.frames.len() >= depth
                }) {
                    return Err(Error::Full {
                        option: "queue",
                        detail: format!("{} has {depth} frames queued", q.peer),
                    });
                }
            }
            Policy::DropOldest => {}
        }
        // Stamped after any wait, so the timestamp is the moment it goes out.
        frame.stamp_for_send(self.seq, self.trace_name.as_deref())?;
        let msg = Arc::new(Encoded::new(&frame)?);
        let stats = &self.shared.stats;
        // Enqueue under the membership lock, so that a subscriber joining now
        // either gets this frame or is told its stream starts after it.
        let subs = self.shared.subs.lock().unwrap_or_else(|p| p.into_inner());
        for q in subs.iter() {
            let mut st = q.lock();
            if st.dead {
                continue;
            }
            if st.frames.len() >= depth {
                // Only drop-oldest gets here: block waited, fail returned.
                st.frames.pop_front();
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                StatCounters::add(&stats.dropped, 1);
            }
            st.frames.push_back(msg.clone());
            stats.queued.fetch_add(1, Ordering::Relaxed);
            drop(st);
            q.items.notify_one();
        }
        self.seq += 1;
        self.shared.next_seq.store(self.seq, Ordering::Relaxed);
        drop(subs);
        StatCounters::add(&stats.frames_sent, 1);
        StatCounters::add(&stats.bytes_sent, frame.payload.len() as u64);
        Ok(())
    }

    async fn loan(&mut self, len: usize) -> Result<Loan> {
        self.check_len(len as u64)?;
        Ok(Loan::heap(len))
    }

    async fn flush(&mut self) -> Result<()> {
        for q in self.shared.subs() {
            loop {
                let notified = q.space.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = q.lock();
                    if st.dead || (st.frames.is_empty() && !st.writing) {
                        break;
                    }
                }
                notified.await;
            }
        }
        Ok(())
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn subscriber_count(&self) -> Option<usize> {
        Some(self.shared.stats.subscribers.load(Ordering::Relaxed) as usize)
    }

    async fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let shared = self.shared.clone();
        wait_until(
            &shared.membership,
            timeout,
            "for subscribers to connect",
            || shared.stats.subscribers.load(Ordering::Relaxed) as usize >= n,
        )
        .await
    }

    fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }
}

impl Drop for TcpPublisher {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.accept.abort();
        // Writers send what is queued, then close their connections.
        for q in self.shared.subs() {
            q.lock().closing = true;
            q.items.notify_one();
        }
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

    /// `Drop` running between a connection's handshake and its registration
    /// (simulated here by holding the registry lock across it) must still
    /// close that connection: its subscriber is told the publisher is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_registering_during_drop_is_disconnected() {
        let publ = crate::TcpTransport
            .publish(
                &Endpoint::parse("tcp://127.0.0.1:0").expect("url"),
                &PublishOptions::default(),
            )
            .await
            .expect("publish");
        let addr = publ.endpoint().address().to_owned();
        let shared = publ.shared.clone();
        let guard = shared.subs.lock().expect("lock");
        let mut client = std::net::TcpStream::connect(&addr).expect("connect");
        client
            .write_all(&wire::client_hello(Duration::from_secs(3)))
            .expect("hello");
        // The connection's task reads the hello and reaches the registry lock.
        std::thread::sleep(Duration::from_millis(300));
        // What `Drop` does, while the connection waits for the lock.
        shared.closed.store(true, Ordering::Release);
        for q in guard.iter() {
            q.lock().closing = true;
            q.items.notify_one();
        }
        drop(guard);
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
        drop(publ);
    }
}
