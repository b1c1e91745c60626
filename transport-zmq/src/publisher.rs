//! The publisher: one driver task, one bounded queue per subscriber, and a
//! writer task per connection ([`crate::conn`]).
//!
//! `send` never touches a socket: it applies the policy to the queues of
//! the subscribers whose prefixes match, and wakes the driver. The driver
//! handles what connections report (handshakes, subscriptions, status
//! reports, finished writes), hands each subscriber's writer its next frame
//! as soon as its previous write is done (so a stalled subscriber delays
//! nobody else), sends welcomes, heartbeats and goodbyes, and cuts off peers
//! that stall.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use transport_core::{
    Endpoint, Error, Frame, Loan, Policy, Publisher, Result, StatCounters, Stats, wait_until,
};

#[cfg(feature = "shm")]
use transport_shm_pool::shared::{AttachServer, SharedPool, SlotRef, SlotWriter};

use crate::config::{Address, Config};
use crate::conn::{self, Event, Listener, Peer, PeerKind};
use crate::lag_queue::LagQueue;
use crate::wire::{self, Control, SubscriberId, Welcome};

/// Upstream messages handled per turn of the driver before it writes again.
const UPSTREAM_BATCH: usize = 256;
/// `shm=pool`: the holder number of the publisher's own hold on a slot (while
/// a frame is queued or being written); subscribers get 0 to 62.
#[cfg(feature = "shm")]
const PUB_HOLDER: u32 = 63;
/// `shm=pool`, policy `fail`: how long `send` waits for a release already on
/// its way before it reports the pool full.
#[cfg(feature = "shm")]
const RELEASE_GRACE: Duration = Duration::from_millis(50);

/// One frame as it will be written: its topic, envelope and payload (shared by
/// every subscriber's queue, never copied).
#[derive(Debug)]
struct Msg {
    topic: Bytes,
    envelope: Bytes,
    /// The payload; under `shm=pool`, the publisher's own view of the slot
    /// (what subscribers that receive inline get), holding it while queued.
    payload: Bytes,
    /// `shm=pool`: where the payload is.
    shared: Option<SharedPart>,
}

/// A frame's slot under `shm=pool`.
#[derive(Debug)]
struct SharedPart {
    /// The encoded `SlotRef`.
    reference: Bytes,
    index: u32,
    generation: u64,
}

/// How a subscriber gets payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubShm {
    /// Over ZeroMQ (no shm, or the subscriber cannot or will not attach).
    Inline,
    /// `shm=pool`: it has not said yet whether it attached; frames queued
    /// for it hold their slots for it, and none is written before it says.
    Pending { holder: u32 },
    /// `shm=pool`: attached (connection `conn` of the attach server);
    /// receives references and releases them upstream.
    Refs { holder: u32, conn: u32 },
}

impl SubShm {
    fn holder(self) -> Option<u32> {
        match self {
            SubShm::Inline => None,
            SubShm::Pending { holder } | SubShm::Refs { holder, .. } => Some(holder),
        }
    }
}

/// A subscriber gone from the channel whose process still maps the pool
/// (its attach connection is open): its holds stay until that closes.
#[derive(Debug)]
struct Zombie {
    id: SubscriberId,
    holder: u32,
    conn: u32,
}

#[derive(Debug)]
struct Sub {
    id: SubscriberId,
    /// A framewire subscriber (false: a plain ZeroMQ SUB, which gets data
    /// frames only: no welcome, heartbeat, lag report or goodbye, and is
    /// never expected to report status).
    framewire: bool,
    /// Topic prefixes it subscribed to (a framewire subscriber has one).
    prefixes: Vec<String>,
    queue: LagQueue<Arc<Msg>>,
    /// The driver is writing to this subscriber now.
    writing: bool,
    /// WELCOME not written yet; no data goes before it.
    needs_welcome: bool,
    /// Sequence number of the first frame queued for it (told in WELCOME).
    start_seq: u64,
    /// Data frames written to its socket.
    written: u64,
    /// Data frames it reports received.
    received: u64,
    /// Frames it reports having dropped itself.
    reported_dropped: u64,
    last_heard: Instant,
    last_sent: Instant,
    /// How it gets payloads.
    shm: SubShm,
    /// When it joined.
    joined: Instant,
}

impl Sub {
    /// True when `topic` goes to this subscriber.
    fn wants(&self, topic: &str) -> bool {
        self.prefixes.iter().any(|p| matches(p, topic))
    }
}

#[derive(Debug)]
struct State {
    subs: Vec<Sub>,
    /// Sequence number of the next frame; a joining subscriber is told it.
    next_seq: u64,
    /// The publisher was dropped: write what is queued, say goodbye, close.
    closing: bool,
    /// The driver ended; why.
    driver_gone: Option<String>,
    /// Round-robin cursor over `subs`.
    cursor: usize,
    /// `shm=pool`: holder numbers in use (subscribers and zombies).
    holders_used: u64,
    /// `shm=pool`: departed subscribers that still map the pool.
    zombies: Vec<Zombie>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    stats: Arc<StatCounters>,
    /// -> driver: work was queued, or the publisher closed.
    wake: Notify,
    /// -> senders, `flush`, `wait_for_subscribers`: queues moved, membership changed.
    changed: Notify,
    cfg: Config,
    policy: Policy,
    instance: u64,
    /// `shm=pool`: the slots.
    #[cfg(feature = "shm")]
    pool: Option<Arc<SharedPool>>,
    /// `shm=pool`: the SHM control written before each WELCOME.
    announce: Option<Control>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few field updates that cannot leave the
        // state inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases `holder`'s hold on slot `index` generation `generation`;
    /// false (counted by the pool) when it held none.
    fn release_slot(&self, holder: u32, index: u32, generation: u64) -> bool {
        #[cfg(feature = "shm")]
        if let Some(pool) = &self.pool {
            let r = SlotRef {
                segment: pool.segment_id(),
                index,
                generation,
                len: 0,
            };
            return pool.release(&r, holder);
        }
        let _ = (holder, index, generation);
        false
    }

    /// Releases `holder`'s hold on `msg`'s slot (a frame it will never get).
    fn release_msg(&self, msg: &Msg, holder: u32) {
        if let Some(p) = &msg.shared {
            self.release_slot(holder, p.index, p.generation);
        }
    }

    /// Releases every hold of `holder` and frees the number.
    fn release_holder(&self, st: &mut State, holder: u32) {
        #[cfg(feature = "shm")]
        if let Some(pool) = &self.pool {
            pool.release_all(holder);
        }
        st.holders_used &= !(1u64 << holder);
    }

    /// Drops the oldest frame queued for `s`, releasing its hold.
    fn drop_oldest(&self, s: &mut Sub) -> bool {
        let Some(m) = s.queue.drop_oldest() else {
            return false;
        };
        if let Some(h) = s.shm.holder() {
            self.release_msg(&m, h);
        }
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        StatCounters::add(&self.stats.dropped, 1);
        true
    }

    /// Empties `s`'s queue (releasing its holds); returns how many frames it held.
    fn clear_queue(&self, s: &mut Sub) -> usize {
        let mut n = 0;
        while let Some((_, m)) = s.queue.pop() {
            if let Some(h) = s.shm.holder() {
                self.release_msg(&m, h);
            }
            n += 1;
        }
        s.queue.clear();
        self.stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
        n
    }

    /// A subscriber leaves: its queued frames go, and its holds are
    /// released, unless its process still maps the pool (`conn_open`), in
    /// which case it stays a zombie until it closes its attach connection.
    fn retire(&self, st: &mut State, mut s: Sub, conn_open: bool) {
        self.clear_queue(&mut s);
        match s.shm {
            SubShm::Inline => {}
            SubShm::Refs { holder, conn } if conn_open => st.zombies.push(Zombie {
                id: s.id,
                holder,
                conn,
            }),
            SubShm::Pending { holder } | SubShm::Refs { holder, .. } => {
                self.release_holder(st, holder)
            }
        }
    }
}

/// A publisher on `zmq+tcp://HOST:PORT` or `zmq+ipc:///PATH`.
///
/// It binds at creation. Subscribers join at any time and receive the frames
/// sent after their subscription reached the publisher. See the crate docs.
#[derive(Debug)]
pub struct ZmqPublisher {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    trace_name: Option<String>,
    socket_file: Option<SocketFile>,
    driver: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) async fn bind(
    endpoint: &Endpoint,
    cfg: Config,
    policy: Policy,
    trace_name: Option<String>,
) -> Result<ZmqPublisher> {
    let mut socket_file = None;
    let (listener, reported) = match &cfg.address {
        Address::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .map_err(|e| Error::io(format!("binding {addr}"), e))?;
            let local = l
                .local_addr()
                .map_err(|e| Error::io("reading the bound address", e))?;
            // The port the OS picked for `:0`, with the same parameters.
            let mut url = format!("zmq+tcp://{local}");
            let query: Vec<String> = endpoint.params().map(|(k, v)| format!("{k}={v}")).collect();
            if !query.is_empty() {
                url.push('?');
                url.push_str(&query.join("&"));
            }
            (Listener::Tcp(l), Endpoint::parse(&url)?)
        }
        Address::Ipc(path) => {
            let (l, file) = bind_unix(path)?;
            let l = l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixListener::from_std(l));
            let l = match l {
                Ok(l) => l,
                Err(e) => {
                    file.remove();
                    return Err(Error::io("registering the socket with tokio", e));
                }
            };
            socket_file = Some(file);
            (Listener::Unix(l), endpoint.clone())
        }
    };
    #[cfg(feature = "shm")]
    let (pool, attach, announce) = if cfg.shm == crate::config::Shm::Pool {
        let pool = SharedPool::create(
            &format!("zmq:{}", reported.address()),
            cfg.slots,
            cfg.slot_size,
        )?;
        let server = pool.serve()?;
        let announce = Control::Shm {
            socket: server.name().to_owned(),
            segment: pool.segment_id(),
            slot_size: pool.slot_size(),
        };
        (Some(pool), Some(server), Some(announce))
    } else {
        (None, None, None)
    };
    #[cfg(not(feature = "shm"))]
    let (attach, announce) = (None, None);
    let instance = wire::random_u64();
    let (events_tx, events) = mpsc::channel(conn::EVENT_QUEUE);
    let ctx = conn::Ctx {
        instance,
        handshake_timeout: cfg.handshake_timeout,
        write_timeout: cfg.write_timeout,
        events: events_tx,
    };
    let acceptor = tokio::spawn(conn::accept_loop(listener, ctx));
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            subs: Vec::new(),
            next_seq: 0,
            closing: false,
            driver_gone: None,
            cursor: 0,
            holders_used: 0,
            zombies: Vec::new(),
        }),
        stats: Arc::new(StatCounters::default()),
        wake: Notify::new(),
        changed: Notify::new(),
        cfg,
        policy,
        instance,
        #[cfg(feature = "shm")]
        pool,
        announce,
    });
    let driver = Driver {
        events,
        acceptor: acceptor.abort_handle(),
        shared: shared.clone(),
        peers: HashMap::new(),
        attach,
    };
    let driver = tokio::spawn(driver.run());
    Ok(ZmqPublisher {
        shared,
        endpoint: reported,
        trace_name,
        socket_file,
        driver: Some(driver),
    })
}

/// A Unix socket file this publisher created, removed when it is dropped
/// (unless another publisher has replaced it meanwhile).
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                let _ = std::fs::remove_file(&self.path);
            }
            _ => {}
        }
    }
}

/// Binds a Unix socket at `path`, sweeping a socket file left by a crashed
/// publisher, refusing one a live publisher serves, and making it owner-only.
///
/// The socket is bound under a temporary name, made owner-only and renamed
/// into place, so that it is never reachable with wider permissions. We
/// remove `path` ourselves, synchronously, when the publisher is dropped.
fn bind_unix(path: &Path) -> Result<(std::os::unix::net::UnixListener, SocketFile)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    let url = || format!("zmq+ipc://{}", path.display());
    let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", e)),
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(Error::InvalidEndpoint {
                    url: url(),
                    reason: "the path exists and is not a socket; pick another path".into(),
                });
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Error::InvalidEndpoint {
                    url: url(),
                    reason: "another publisher is listening on this path; pick another path".into(),
                });
            }
            tracing::info!(path = %path.display(), "removing a stale socket left by a previous run");
            std::fs::remove_file(path).map_err(|e| io("removing", e))?;
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{:x}.tmp",
        std::process::id(),
        wire::random_u64()
    ));
    let tmp = PathBuf::from(tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| io("binding next to", e))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        // Owner-only, like every framewire rendezvous point: connecting needs write access.
        .map_err(|e| io("restricting to its owner", e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io("moving a socket to", e)))
        .and_then(|()| std::fs::symlink_metadata(path).map_err(|e| io("inspecting", e)));
    match placed {
        Ok(m) => Ok((
            listener,
            SocketFile {
                path: path.to_owned(),
                dev: m.dev(),
                ino: m.ino(),
            },
        )),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn matches(prefix: &str, topic: &str) -> bool {
    topic.starts_with(prefix)
}

impl ZmqPublisher {
    fn check_len(&self, len: u64) -> Result<()> {
        let (limit, option) = self.shared.cfg.payload_limit();
        if len > limit {
            return Err(Error::PayloadTooLarge { len, limit, option });
        }
        Ok(())
    }

    fn gone(why: &str) -> Error {
        Error::disconnected("zmq", format!("the publisher's socket task ended: {why}"))
    }

    /// Under `fail`: an error when a subscriber `topic` goes to has a full queue.
    fn fail_if_full(&self, topic: &str) -> Result<()> {
        let depth = self.shared.cfg.queue;
        let st = self.shared.lock();
        if let Some(s) = st
            .subs
            .iter()
            .find(|s| s.wants(topic) && s.queue.len() >= depth)
        {
            return Err(Error::Full {
                option: "queue",
                detail: format!("subscriber {} has {depth} frames queued", s.id),
            });
        }
        Ok(())
    }

    /// `shm=pool`: a slot for `len` bytes, by the policy: `block` waits,
    /// `fail` waits briefly for a release on its way then fails naming
    /// `slots`, `drop-oldest` drops queued frames (their slots come back once
    /// no queue holds them) and waits only for slots that subscribers hold.
    #[cfg(feature = "shm")]
    async fn alloc_slot(&self, len: usize) -> Result<SlotWriter> {
        let Some(pool) = self.shared.pool.clone() else {
            return Err(Error::protocol("zmq", "no pool"));
        };
        if let Some(w) = pool.try_alloc(len)? {
            return Ok(w);
        }
        match self.shared.policy {
            Policy::Fail => match tokio::time::timeout(RELEASE_GRACE, pool.alloc(len)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Full {
                    option: "slots",
                    detail: format!(
                        "all {} shared-memory slots are held by queued frames or by \
                             subscribers' views",
                        pool.slots()
                    ),
                }),
            },
            Policy::DropOldest => loop {
                if let Some(w) = pool.try_alloc(len)? {
                    return Ok(w);
                }
                let dropped = {
                    let mut st = self.shared.lock();
                    let longest = st
                        .subs
                        .iter_mut()
                        .filter(|s| !s.queue.is_empty())
                        .max_by_key(|s| s.queue.len());
                    match longest {
                        Some(s) => self.shared.drop_oldest(s),
                        None => false,
                    }
                };
                if dropped {
                    self.shared.changed.notify_waiters();
                    continue;
                }
                return self.await_slot(&pool, len).await;
            },
            Policy::Block => self.await_slot(&pool, len).await,
        }
    }

    /// Waits for a slot, or for the driver to end.
    #[cfg(feature = "shm")]
    async fn await_slot(&self, pool: &Arc<SharedPool>, len: usize) -> Result<SlotWriter> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(why) = &self.shared.lock().driver_gone {
                return Err(Self::gone(why));
            }
            tokio::select! {
                r = pool.alloc(len) => return r,
                _ = &mut changed => {}
            }
        }
    }

    /// `shm=pool`: the rest of `send` once the queues have room: the payload
    /// goes into a slot (unless it was loaned there), held by every matching
    /// subscriber that may receive it by reference and by the publisher
    /// while queued; subscribers that receive inline get the slot's bytes.
    #[cfg(feature = "shm")]
    async fn send_shared(&mut self, mut frame: Frame, loaned: Option<SlotWriter>) -> Result<()> {
        let Some(pool) = self.shared.pool.clone() else {
            return Err(Error::protocol("zmq", "no pool"));
        };
        let is_loan = loaned.is_some();
        if !is_loan {
            // Nobody to send it to: no slot, no copy (plain zmq queues nothing either).
            let mut st = self.shared.lock();
            if let Some(why) = &st.driver_gone {
                return Err(Self::gone(why));
            }
            if !st.subs.iter().any(|s| s.wants(&frame.topic)) {
                let seq = st.next_seq;
                frame.stamp_for_send(seq, self.trace_name.as_deref())?;
                st.next_seq = seq + 1;
                drop(st);
                StatCounters::add(&self.shared.stats.frames_sent, 1);
                StatCounters::add(&self.shared.stats.bytes_sent, frame.payload.len() as u64);
                return Ok(());
            }
        }
        let mut w = match loaned {
            Some(w) => w,
            None => self.alloc_slot(frame.payload.len()).await?,
        };
        let len = if is_loan {
            w.len()
        } else {
            frame.payload.len()
        };
        let seq = self.shared.lock().next_seq;
        if !is_loan {
            // Stamped before the copy into the slot, which is part of the trip.
            frame.stamp_for_send(seq, self.trace_name.as_deref())?;
            use transport_core::LoanBuffer;
            w.as_mut_slice()[..len].copy_from_slice(&frame.payload);
        }
        let stats = &self.shared.stats;
        let depth = self.shared.cfg.queue;
        {
            let mut st = self.shared.lock();
            if let Some(why) = &st.driver_gone {
                return Err(Self::gone(why));
            }
            let t = frame.topic.as_str();
            let mut holders = 1u64 << PUB_HOLDER;
            for s in st.subs.iter_mut().filter(|s| s.wants(t)) {
                if s.queue.len() >= depth {
                    self.shared.drop_oldest(s);
                }
                if let Some(h) = s.shm.holder() {
                    holders |= 1 << h;
                }
            }
            let r = w.publish(len, holders);
            // Takes over the publisher's hold: released when no queue holds the frame.
            let payload = pool.hold_bytes(&r, PUB_HOLDER)?;
            frame.payload = payload.clone();
            let mut envelope = BytesMut::new();
            let stamped = if is_loan {
                frame.stamp_for_send(seq, self.trace_name.as_deref())
            } else {
                Ok(())
            };
            if let Err(e) =
                stamped.and_then(|()| transport_core::codec::encode_header(&frame, &mut envelope))
            {
                // Never queued: the subscribers' holds go (the publisher's
                // goes with `payload`).
                for h in (0..PUB_HOLDER).filter(|h| holders & (1 << h) != 0) {
                    pool.release(&r, h);
                }
                return Err(e);
            }
            let topic = Bytes::from(std::mem::take(&mut frame.topic));
            let t = std::str::from_utf8(&topic).unwrap_or_default();
            let msg = Arc::new(Msg {
                topic: topic.clone(),
                envelope: envelope.freeze(),
                payload,
                shared: Some(SharedPart {
                    reference: Bytes::copy_from_slice(&r.encode()),
                    index: r.index,
                    generation: r.generation,
                }),
            });
            for s in st.subs.iter_mut().filter(|s| s.wants(t)) {
                s.queue.push(msg.clone());
                stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            st.next_seq = seq + 1;
        }
        self.shared.wake.notify_one();
        StatCounters::add(&stats.frames_sent, 1);
        StatCounters::add(&stats.bytes_sent, len as u64);
        Ok(())
    }

    /// Waits until every subscriber `topic` goes to has room in its queue.
    async fn wait_for_room(&self, topic: &str) -> Result<()> {
        let depth = self.shared.cfg.queue;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if let Some(why) = &st.driver_gone {
                    return Err(Self::gone(why));
                }
                if st
                    .subs
                    .iter()
                    .filter(|s| s.wants(topic))
                    .all(|s| s.queue.len() < depth)
                {
                    return Ok(());
                }
            }
            notified.await;
        }
    }
}

#[async_trait]
impl Publisher for ZmqPublisher {
    async fn send(&mut self, mut frame: Frame) -> Result<()> {
        self.check_len(frame.payload.len() as u64)?;
        transport_core::codec::check_header(&frame)?;
        let depth = self.shared.cfg.queue;
        match self.shared.policy {
            Policy::Block => self.wait_for_room(&frame.topic).await?,
            Policy::Fail => self.fail_if_full(&frame.topic)?,
            Policy::DropOldest => {}
        }
        #[cfg(feature = "shm")]
        if self.shared.pool.is_some() {
            return self.send_shared(frame, None).await;
        }
        // Only `send` (which holds `&mut self`) moves `next_seq`, so it is
        // still current when the frame is queued below.
        let seq = self.shared.lock().next_seq;
        // Stamped after any wait, so the timestamp is the moment it goes out.
        frame.stamp_for_send(seq, self.trace_name.as_deref())?;
        let mut envelope = BytesMut::new();
        transport_core::codec::encode_header(&frame, &mut envelope)?;
        let len = frame.payload.len() as u64;
        let msg = Arc::new(Msg {
            topic: Bytes::from(std::mem::take(&mut frame.topic)),
            envelope: envelope.freeze(),
            payload: frame.payload,
            shared: None,
        });
        let topic = std::str::from_utf8(&msg.topic).unwrap_or_default();
        let stats = &self.shared.stats;
        {
            // Queue under the state lock, so that a subscriber registering now
            // either gets this frame or is told its stream starts after it.
            let mut st = self.shared.lock();
            if let Some(why) = &st.driver_gone {
                return Err(Self::gone(why));
            }
            for s in st.subs.iter_mut().filter(|s| s.wants(topic)) {
                if s.queue.len() >= depth {
                    // Only drop-oldest gets here: block waited, fail returned.
                    self.shared.drop_oldest(s);
                }
                s.queue.push(msg.clone());
                stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            st.next_seq = seq + 1;
        }
        self.shared.wake.notify_one();
        StatCounters::add(&stats.frames_sent, 1);
        StatCounters::add(&stats.bytes_sent, len);
        Ok(())
    }

    async fn loan(&mut self, len: usize) -> Result<Loan> {
        self.check_len(len as u64)?;
        #[cfg(feature = "shm")]
        if self.shared.pool.is_some() {
            let w = self.alloc_slot(len).await?;
            return Ok(Loan::new(Box::new(w)));
        }
        Ok(Loan::heap(len))
    }

    async fn send_loan(&mut self, loan: Loan) -> Result<()> {
        #[cfg(feature = "shm")]
        if let Some(pool) = &self.shared.pool {
            let (mut frame, buf) = loan.into_parts();
            return match buf.into_any().downcast::<SlotWriter>() {
                Ok(w) if Arc::ptr_eq(w.pool(), pool) => {
                    match self.shared.policy {
                        Policy::Block => self.wait_for_room(&frame.topic).await?,
                        Policy::Fail => self.fail_if_full(&frame.topic)?,
                        Policy::DropOldest => {}
                    }
                    self.send_shared(frame, Some(*w)).await
                }
                Ok(_) => Err(Error::ForeignLoan),
                Err(other) => match other.downcast::<BytesMut>() {
                    Ok(heap) => {
                        frame.payload = heap.freeze();
                        self.send(frame).await
                    }
                    Err(_) => Err(Error::ForeignLoan),
                },
            };
        }
        self.send(loan.into_heap_frame()?).await
    }

    async fn flush(&mut self) -> Result<()> {
        let acked = self.shared.policy == Policy::DropOldest;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if let Some(why) = &st.driver_gone {
                    return Err(Self::gone(why));
                }
                // Under drop-oldest framewire subscribers never stop reading
                // (they drop locally), so also wait for their receipt: their
                // drop counts are then final in `stats`. A plain ZeroMQ
                // subscriber never reports: written is all we know.
                if st.subs.iter().all(|s| {
                    s.queue.is_empty()
                        && !s.writing
                        && (!acked || !s.framewire || s.received >= s.written)
                }) {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// See [`ZmqPublisher::close`].
    async fn close(&mut self) -> Result<()> {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(driver) = self.driver.take() {
            driver.await.map_err(|e| Error::Backend {
                backend: "zmq",
                source: Box::new(e),
            })?;
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
            &shared.changed,
            timeout,
            "for subscribers to subscribe",
            || shared.stats.subscribers.load(Ordering::Relaxed) as usize >= n,
        )
        .await
    }

    fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }
}

impl ZmqPublisher {
    /// `shm=pool`: shared-memory slots free now (`None` without a pool). A
    /// slot is free when no queue holds its frame and every subscriber that
    /// received it by reference has dropped its view.
    pub fn shm_free_slots(&self) -> Option<usize> {
        #[cfg(feature = "shm")]
        if let Some(p) = &self.shared.pool {
            return Some(p.free_slots());
        }
        None
    }

    /// `shm=pool`: releases ignored because they were stale, duplicate or
    /// forged (`None` without a pool).
    pub fn shm_stale_releases(&self) -> Option<u64> {
        #[cfg(feature = "shm")]
        if let Some(p) = &self.shared.pool {
            return Some(p.stale_releases());
        }
        None
    }

    /// Closes the publisher and waits until every subscriber has read what
    /// was sent and the goodbye, and cancelled its subscription (or failed
    /// to within `peer_timeout`). Dropping the publisher does the same in the
    /// background; call this before a process exits.
    pub async fn close(mut self) -> Result<()> {
        Publisher::close(&mut self).await
    }
}

impl Drop for ZmqPublisher {
    fn drop(&mut self) {
        // The driver writes what is queued, says goodbye, then closes.
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        // Connections already made are unaffected; new ones are refused.
        if let Some(f) = &self.socket_file {
            f.remove();
        }
    }
}

/// One write the driver has to do.
enum Job {
    Control(SubscriberId, Control),
    Data {
        id: SubscriberId,
        lag: u64,
        msg: Arc<Msg>,
        /// Send the slot reference, not the payload.
        by_ref: bool,
    },
}

/// A connection the driver knows.
#[derive(Debug)]
struct Conn {
    peer: Peer,
    kind: PeerKind,
    /// Its subscriber id (framewire: its own; plain: one we picked).
    id: SubscriberId,
    /// When its handshake finished.
    since: Instant,
    /// It has subscribed (it is, or was, a subscriber).
    subscribed: bool,
}

struct Driver {
    events: mpsc::Receiver<Event>,
    /// Stopped with the driver.
    acceptor: tokio::task::AbortHandle,
    shared: Arc<Shared>,
    /// Connections that finished their handshake, by number.
    peers: HashMap<u64, Conn>,
    /// `shm=pool`: serves the pool's segment to subscribers on this host.
    attach: Option<Server>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // No new connections; every connection closes with `peers`.
        self.acceptor.abort();
    }
}

#[cfg(feature = "shm")]
type Server = AttachServer;
#[cfg(not(feature = "shm"))]
type Server = std::convert::Infallible;

/// Marks the publisher's state when the driver ends, however it ends.
struct GoneGuard(Arc<Shared>);

impl Drop for GoneGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        if st.driver_gone.is_none() {
            st.driver_gone = Some(if st.closing {
                "the publisher was dropped".into()
            } else {
                "it stopped unexpectedly".into()
            });
        }
        // Nothing is sent any more, so no slot is reused under a view: every
        // hold can go (waking a `send` waiting for a slot, which then fails).
        let subs = std::mem::take(&mut st.subs);
        for s in subs {
            self.0.retire(&mut st, s, false);
        }
        for z in std::mem::take(&mut st.zombies) {
            self.0.release_holder(&mut st, z.holder);
        }
        drop(st);
        self.0.stats.subscribers.store(0, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// What woke the driver.
enum Woke {
    Event(Option<Event>),
    /// `shm=pool`: a reader's attach connection closed.
    Closed(u32),
    Other,
}

impl Driver {
    async fn run(mut self) {
        let _guard = GoneGuard(self.shared.clone());
        let tick_every = (self.shared.cfg.heartbeat / 4)
            .clamp(Duration::from_millis(5), Duration::from_millis(250));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            let wake = shared.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();

            self.drain_events();
            self.timers();
            while let Some(job) = self.next_job() {
                self.write(job);
            }
            if self.ready_to_close() {
                break;
            }
            let woke = tokio::select! {
                biased;
                ev = self.events.recv() => Woke::Event(ev),
                c = Self::next_closed(self.attach.as_mut()) => Woke::Closed(c),
                _ = &mut wake => Woke::Other,
                _ = tick.tick() => Woke::Other,
            };
            match woke {
                Woke::Event(Some(ev)) => self.event(ev),
                Woke::Closed(c) => self.conn_closed(c),
                // The acceptor holds a sender until the driver stops it.
                Woke::Event(None) | Woke::Other => {}
            }
        }
        self.goodbye().await;
    }

    /// The next attach connection that closed (never, without a pool).
    async fn next_closed(server: Option<&mut Server>) -> u32 {
        #[cfg(feature = "shm")]
        if let Some(s) = server {
            return s.next_closed().await;
        }
        #[cfg(not(feature = "shm"))]
        let _ = server;
        std::future::pending().await
    }

    /// True while attach connection `conn` is open.
    fn conn_open(&self, conn: u32) -> bool {
        #[cfg(feature = "shm")]
        if let Some(a) = &self.attach {
            return a.is_open(conn);
        }
        let _ = conn;
        false
    }

    /// A subscriber process unmapped the pool (or died): a zombie's holds go;
    /// a subscriber still registered with that connection is cut off.
    fn conn_closed(&mut self, conn: u32) {
        let mut st = self.shared.lock();
        if let Some(i) = st.zombies.iter().position(|z| z.conn == conn) {
            let z = st.zombies.swap_remove(i);
            self.shared.release_holder(&mut st, z.holder);
            drop(st);
            tracing::debug!(subscriber = %z.id, "a departed subscriber unmapped the pool");
            return;
        }
        let live = st
            .subs
            .iter()
            .find(|s| matches!(s.shm, SubShm::Refs { conn: c, .. } if c == conn))
            .map(|s| s.id);
        drop(st);
        if let Some(id) = live {
            self.remove(
                &id,
                "its shared-memory connection closed (the process died?)",
                true,
            );
        }
    }

    /// `shm=pool`: a subscriber is done with these slots.
    fn release(&mut self, id: SubscriberId, slots: Vec<(u32, u64)>) {
        let holder = {
            let mut st = self.shared.lock();
            match st.subs.iter_mut().find(|s| s.id == id) {
                Some(s) => {
                    s.last_heard = Instant::now();
                    s.shm.holder()
                }
                None => st.zombies.iter().find(|z| z.id == id).map(|z| z.holder),
            }
        };
        let Some(holder) = holder else {
            tracing::debug!(subscriber = %id, "ignoring releases of an unknown subscriber");
            return;
        };
        for (index, generation) in slots {
            if !self.shared.release_slot(holder, index, generation) {
                tracing::debug!(subscriber = %id, index, generation, "stale or duplicate release ignored");
            }
        }
    }

    /// `shm=pool`: whether a subscriber attached the pool.
    fn shm_report(&mut self, id: SubscriberId, conn: Option<u32>, reason: String) {
        let open = conn.is_some_and(|c| self.conn_open(c));
        let mut st = self.shared.lock();
        let Some(i) = st.subs.iter().position(|s| s.id == id) else {
            return;
        };
        let SubShm::Pending { holder } = st.subs[i].shm else {
            return;
        };
        match conn {
            Some(conn) if open => {
                st.subs[i].shm = SubShm::Refs { holder, conn };
                tracing::debug!(subscriber = %id, "subscriber attached the pool");
            }
            _ => {
                st.subs[i].shm = SubShm::Inline;
                self.shared.release_holder(&mut st, holder);
                let reason = if conn.is_some() {
                    "it names an attach connection that is not open".to_owned()
                } else {
                    reason
                };
                tracing::info!(subscriber = %id, %reason, "subscriber receives payloads inline");
            }
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }

    /// Handles what connections already reported, without waiting.
    fn drain_events(&mut self) {
        for _ in 0..UPSTREAM_BATCH {
            match self.events.try_recv() {
                Ok(ev) => self.event(ev),
                Err(_) => break,
            }
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Joined { conn, kind, peer } => self.joined(conn, kind, peer),
            Event::Subscription { conn, sub } => self.subscription(conn, sub),
            Event::Upstream { conn, msg } => self.upstream(conn, &msg),
            Event::Written { conn, data, result } => self.written(conn, data, result),
            Event::Closed { conn, why } => self.closed(conn, &why),
        }
    }

    fn joined(&mut self, conn: u64, kind: PeerKind, peer: Peer) {
        let id = match kind {
            PeerKind::Framewire(id) => id,
            PeerKind::Foreign(_) | PeerKind::Plain => SubscriberId::random(),
        };
        let refuse = match kind {
            PeerKind::Foreign(v) => Some(format!(
                "protocol version {v} is not supported (this publisher speaks {}); run the same \
                 framewire version on both sides",
                wire::VERSION
            )),
            _ if self.peers.values().any(|c| c.id == id) => {
                Some("another connection uses the same subscriber id".to_owned())
            }
            _ if self.shared.lock().closing => Some("the publisher is closing".to_owned()),
            _ => None,
        };
        if let Some(reason) = refuse {
            tracing::info!(conn, %reason, "refusing a subscriber");
            if kind != PeerKind::Plain {
                let c = Control::Refuse {
                    version: wire::VERSION,
                    reason,
                };
                peer.write(conn::Write {
                    msgs: vec![vec![wire::encode_control(&c)]],
                    data: false,
                });
            }
            // Written, then the connection is shut down (the writer task
            // ends by itself).
            peer.detach();
            return;
        }
        self.peers.insert(
            conn,
            Conn {
                peer,
                kind,
                id,
                since: Instant::now(),
                subscribed: false,
            },
        );
    }

    fn subscription(&mut self, conn: u64, s: wire::Subscription) {
        let Some(c) = self.peers.get_mut(&conn) else {
            return;
        };
        let (id, framewire) = (c.id, matches!(c.kind, PeerKind::Framewire(_)));
        if !s.subscribe {
            let mut st = self.shared.lock();
            let Some(sub) = st.subs.iter_mut().find(|x| x.id == id) else {
                return;
            };
            if let Some(i) = sub.prefixes.iter().position(|p| *p == s.prefix) {
                sub.prefixes.remove(i);
            }
            // A framewire subscriber's cancel is its goodbye; a plain one
            // leaves when it has no subscription left.
            let gone = framewire || sub.prefixes.is_empty();
            drop(st);
            if gone {
                self.remove(&id, "unsubscribed", false);
            }
            return;
        }
        c.subscribed = true;
        let mut st = self.shared.lock();
        if let Some(sub) = st.subs.iter_mut().find(|x| x.id == id) {
            if !framewire && !sub.prefixes.contains(&s.prefix) {
                sub.prefixes.push(s.prefix);
            }
            // A framewire subscriber subscribes once; a second one is ignored.
            return;
        }
        if st.closing {
            return;
        }
        let now = Instant::now();
        let st_next = st.next_seq;
        let shm = if self.shared.announce.is_some() && framewire {
            // Holder numbers 0 to 62 (63 is the publisher's own).
            match (0..63u32).find(|h| st.holders_used & (1 << h) == 0) {
                Some(holder) => {
                    st.holders_used |= 1 << holder;
                    SubShm::Pending { holder }
                }
                None => {
                    tracing::info!(subscriber = %id, "63 subscribers hold slots already; this one receives payloads inline");
                    SubShm::Inline
                }
            }
        } else {
            SubShm::Inline
        };
        st.subs.push(Sub {
            id,
            framewire,
            prefixes: vec![s.prefix],
            queue: LagQueue::new(),
            writing: false,
            needs_welcome: framewire,
            start_seq: st_next,
            written: 0,
            received: 0,
            reported_dropped: 0,
            last_heard: now,
            last_sent: now,
            shm,
            joined: now,
        });
        self.shared
            .stats
            .subscribers
            .store(st.subs.len() as u64, Ordering::Relaxed);
        drop(st);
        tracing::debug!(subscriber = %id, framewire, "subscriber joined");
        self.shared.changed.notify_waiters();
    }

    fn upstream(&mut self, conn: u64, part: &[u8]) {
        let Some(c) = self.peers.get(&conn) else {
            return;
        };
        if !matches!(c.kind, PeerKind::Framewire(_)) {
            tracing::debug!(conn, "ignoring a message from a plain subscriber");
            return;
        }
        let own = c.id;
        let u = match wire::decode_upstream_any(part) {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring a message from a subscriber");
                return;
            }
        };
        let claimed = match &u {
            wire::Upstream::Status(s) => s.id,
            wire::Upstream::Release { id, .. } | wire::Upstream::Shm { id, .. } => *id,
        };
        if claimed != own {
            tracing::debug!(conn, "ignoring a report that names another subscriber");
            return;
        }
        match u {
            wire::Upstream::Status(status) => self.status(status),
            wire::Upstream::Release { id, slots } => self.release(id, slots),
            wire::Upstream::Shm { id, conn, reason } => self.shm_report(id, conn, reason),
        }
    }

    fn status(&mut self, status: wire::Status) {
        let mut st = self.shared.lock();
        let Some(s) = st.subs.iter_mut().find(|s| s.id == status.id) else {
            return;
        };
        s.last_heard = Instant::now();
        // A peer cannot claim more than was written to it.
        s.received = s.received.max(status.received.min(s.written));
        if status.dropped > s.reported_dropped {
            StatCounters::add(
                &self.shared.stats.dropped,
                status.dropped - s.reported_dropped,
            );
            s.reported_dropped = status.dropped;
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }

    /// A write finished.
    fn written(&mut self, conn: u64, data: bool, result: Result<(), String>) {
        let Some(c) = self.peers.get(&conn) else {
            return;
        };
        let id = c.id;
        let failed = {
            let mut st = self.shared.lock();
            match st.subs.iter_mut().find(|s| s.id == id) {
                Some(s) => {
                    s.writing = false;
                    s.last_sent = Instant::now();
                    if result.is_ok() && data {
                        s.written += 1;
                    }
                    result.err()
                }
                None => None,
            }
        };
        if let Some(why) = failed {
            self.remove(&id, &why, true);
        }
        self.shared.changed.notify_waiters();
    }

    /// A connection closed: its subscriber (if any) is gone.
    fn closed(&mut self, conn: u64, why: &str) {
        let Some(c) = self.peers.get(&conn) else {
            return;
        };
        let id = c.id;
        self.remove(&id, why, false);
        self.peers.remove(&conn);
    }

    /// Removes a subscriber; `kick` also closes its connection.
    fn remove(&mut self, id: &SubscriberId, why: &str, kick: bool) {
        let conn = self
            .peers
            .iter()
            .find(|(_, c)| c.id == *id)
            .map(|(&n, _)| n);
        if kick && let Some(n) = conn {
            // Closes the connection (its reader and writer stop).
            self.peers.remove(&n);
        }
        let mut st = self.shared.lock();
        let Some(i) = st.subs.iter().position(|s| s.id == *id) else {
            return;
        };
        let s = st.subs.swap_remove(i);
        let open = match s.shm {
            SubShm::Refs { conn, .. } => self.conn_open(conn),
            _ => false,
        };
        self.shared.retire(&mut st, s, open);
        self.shared
            .stats
            .subscribers
            .store(st.subs.len() as u64, Ordering::Relaxed);
        drop(st);
        if kick {
            tracing::warn!(subscriber = %id, why, "cutting off a subscriber");
        } else {
            tracing::debug!(subscriber = %id, why, "subscriber left");
        }
        self.shared.changed.notify_waiters();
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        // Only framewire subscribers report status; a plain one is judged by
        // its connection (closed, or a write that takes over write_timeout).
        let silent: Vec<SubscriberId> = self
            .shared
            .lock()
            .subs
            .iter()
            .filter(|s| {
                s.framewire && !s.writing && now.duration_since(s.last_heard) > cfg.peer_timeout
            })
            .map(|s| s.id)
            .collect();
        for id in silent {
            self.remove(&id, "no status report within peer_timeout", true);
        }
        // A subscriber that never says whether it attached the pool (an old
        // or foreign one) gets payloads inline.
        let mute: Vec<SubscriberId> = self
            .shared
            .lock()
            .subs
            .iter()
            .filter(|s| {
                matches!(s.shm, SubShm::Pending { .. })
                    && now.duration_since(s.joined) > cfg.handshake_timeout
            })
            .map(|s| s.id)
            .collect();
        for id in mute {
            self.shm_report(
                id,
                None,
                "it did not report within handshake_timeout".into(),
            );
        }
        let handshake = cfg.handshake_timeout;
        self.peers.retain(|conn, c| {
            if c.subscribed || now.duration_since(c.since) <= handshake {
                return true;
            }
            tracing::info!(
                conn,
                "closing a connection that did not subscribe within handshake_timeout"
            );
            false
        });
    }

    /// The next write, round-robin over subscribers that are not being
    /// written to; marks it as writing.
    fn next_job(&mut self) -> Option<Job> {
        let now = Instant::now();
        let heartbeat = self.shared.cfg.heartbeat;
        let mut st = self.shared.lock();
        let n = st.subs.len();
        for k in 0..n {
            let i = (st.cursor + k) % n;
            let s = &mut st.subs[i];
            if s.writing {
                continue;
            }
            let job = if s.needs_welcome {
                s.needs_welcome = false;
                let w = Welcome {
                    instance: self.shared.instance,
                    next_seq: s.start_seq,
                    policy: self.shared.policy,
                    queue: self.shared.cfg.queue as u32,
                    heartbeat_ms: millis(self.shared.cfg.heartbeat),
                    peer_timeout_ms: millis(self.shared.cfg.peer_timeout),
                    write_timeout_ms: millis(self.shared.cfg.write_timeout),
                };
                Job::Control(s.id, Control::Welcome(w))
            } else if let Some((lag, msg)) = (!matches!(s.shm, SubShm::Pending { .. }))
                .then(|| s.queue.pop())
                .flatten()
            {
                self.shared.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Job::Data {
                    id: s.id,
                    // A plain subscriber sees the gap in the sequence numbers only.
                    lag: if s.framewire { lag } else { 0 },
                    by_ref: msg.shared.is_some() && matches!(s.shm, SubShm::Refs { .. }),
                    msg,
                }
            } else if s.framewire && now.duration_since(s.last_sent) >= heartbeat {
                Job::Control(s.id, Control::Heartbeat)
            } else {
                continue;
            };
            s.writing = true;
            st.cursor = (i + 1) % n;
            drop(st);
            // Room was made in a queue.
            self.shared.changed.notify_waiters();
            return Some(job);
        }
        None
    }

    /// Hands one job to its subscriber's writer; the result comes back as
    /// [`Event::Written`].
    fn write(&mut self, job: Job) {
        let (id, msgs, data) = match job {
            Job::Control(id, c) => {
                let mut msgs = Vec::with_capacity(2);
                if let (Control::Welcome(_), Some(shm)) = (&c, &self.shared.announce) {
                    // Just before the welcome: how to attach the pool.
                    msgs.push(vec![wire::encode_control(shm)]);
                }
                msgs.push(vec![wire::encode_control(&c)]);
                (id, msgs, false)
            }
            Job::Data {
                id,
                lag,
                msg,
                by_ref,
            } => {
                let mut msgs = Vec::with_capacity(2);
                if lag > 0 {
                    msgs.push(vec![wire::encode_control(&Control::Lag(lag))]);
                }
                msgs.push(match (&msg.shared, by_ref) {
                    (Some(p), true) => vec![
                        msg.topic.clone(),
                        msg.envelope.clone(),
                        Bytes::from_static(&wire::SHM_TAG),
                        p.reference.clone(),
                    ],
                    _ => vec![msg.topic.clone(), msg.envelope.clone(), msg.payload.clone()],
                });
                (id, msgs, true)
            }
        };
        let sent = self
            .peers
            .values()
            .find(|c| c.id == id)
            .is_some_and(|c| c.peer.write(conn::Write { msgs, data }));
        if !sent {
            self.remove(&id, "its connection is gone", true);
        }
    }

    fn ready_to_close(&self) -> bool {
        let st = self.shared.lock();
        st.closing && st.subs.iter().all(|s| s.queue.is_empty() && !s.writing)
    }

    /// Says goodbye to every framewire subscriber after its last frame and
    /// ends every plain subscriber's stream, then waits a little for them to
    /// leave so that the connections close with nothing unread.
    async fn goodbye(&mut self) {
        let subs: Vec<(SubscriberId, bool)> = self
            .shared
            .lock()
            .subs
            .iter()
            .map(|s| (s.id, s.framewire))
            .collect();
        let bye = wire::encode_control(&Control::Goodbye);
        for (id, framewire) in subs {
            let Some(c) = self.peers.values_mut().find(|c| c.id == id) else {
                continue;
            };
            if framewire {
                c.peer.write(conn::Write {
                    msgs: vec![vec![bye.clone()]],
                    data: false,
                });
            }
            // Then the end of the stream (a plain SUB closes on it).
            c.peer.finish();
        }
        // A subscriber whose reader is paused (its application is slow) reads
        // the goodbye later; closing before it has would reset the connection
        // and lose what the kernel still holds for it.
        let deadline = Instant::now() + self.shared.cfg.peer_timeout;
        while !self.shared.lock().subs.is_empty() {
            let ev = tokio::select! {
                ev = self.events.recv() => ev,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match ev {
                Some(ev) => self.event(ev),
                None => break,
            }
        }
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_like_zeromq() {
        assert!(matches("", "anything"));
        assert!(matches("cam/", "cam/0"));
        assert!(!matches("cam/", "cam"));
    }
}
