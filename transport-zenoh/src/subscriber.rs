//! The subscribing side: a Zenoh subscriber feeding a bounded queue, with
//! sequence numbers and lag kept per publisher.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use transport_core::bufpool::BufPool;
use transport_core::{Error, Frame, Policy, RecvMode, Result, StatCounters, Stats, Subscriber};
use zenoh::Wait;
use zenoh::bytes::ZBytes;
use zenoh::sample::{Sample, SampleKind};

use crate::publisher::{blocking, id_of};
use crate::{Config, FLUSH_PREFIX, PUB_PREFIX, SUB_PREFIX, backend_err, close_session, wire};

enum Item {
    Frame {
        pub_id: u64,
        policy: Policy,
        frame: Frame,
        /// Frames of the same publisher lost just before this one.
        lost_before: u64,
    },
    End(u64),
}

#[derive(Default)]
struct PubState {
    /// When the publisher's liveliness token went away (not back since).
    token_lost: Option<std::time::Instant>,
    last_arrived: Option<u64>,
    pending_lost: u64,
    lost_total: u64,
    ended: bool,
}

struct State {
    queue: VecDeque<Item>,
    frames: usize,
    pubs: HashMap<u64, PubState>,
    closed: bool,
}

struct Shared {
    st: Mutex<State>,
    room: Condvar,
    ready: Notify,
    depth: usize,
    gone_after: std::time::Duration,
    max_payload: u64,
    topic_prefix: String,
    stats: Arc<StatCounters>,
    copies: Arc<BufPool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state stays consistent.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A received payload kept in Zenoh's own buffer (no copy) when contiguous.
struct ZPayload(ZBytes);

impl AsRef<[u8]> for ZPayload {
    fn as_ref(&self) -> &[u8] {
        self.0.slices().next().unwrap_or(&[])
    }
}

/// Free copy buffers kept per subscriber, for payloads that Zenoh delivers
/// in fragments (one slice per 64 KiB batch): the copy into one `Bytes`
/// reuses the buffer of a frame the application has dropped instead of
/// allocating (and faulting in) a fresh one for each frame. The memory
/// bound: `KEEP` of the largest payloads seen, beyond the frames queued or
/// held.
const KEEP: usize = 2;

fn payload_bytes(z: &ZBytes, pool: &Arc<BufPool>) -> Bytes {
    if z.slices().count() <= 1 {
        return Bytes::from_owner(ZPayload(z.clone()));
    }
    let mut buf = pool.take_empty(z.len());
    for s in z.slices() {
        buf.extend_from_slice(s);
    }
    pool.into_bytes(buf)
}

fn on_sample(sh: &Shared, sample: Sample) {
    let Some(att) = sample.attachment() else {
        tracing::debug!(key = %sample.key_expr(), "zenoh sample without a framewire attachment ignored");
        return;
    };
    let att = att.to_bytes();
    if sample.kind() == SampleKind::Delete {
        match wire::decode_end(&att) {
            Ok(id) => {
                sh.lock().queue.push_back(Item::End(id));
                sh.ready.notify_one();
            }
            Err(e) => tracing::debug!("zenoh delete sample ignored: {e}"),
        }
        return;
    }
    let payload = sample.payload();
    let h = match wire::decode_attachment(&att, payload.len() as u64, sh.max_payload) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(key = %sample.key_expr(), "zenoh sample dropped: {e}");
            return;
        }
    };
    let mut frame = h.frame;
    frame.payload = payload_bytes(payload, &sh.copies);
    let mut st = sh.lock();
    let ps = st.pubs.entry(h.pub_id).or_default();
    ps.ended = false;
    let gap = match ps.last_arrived {
        Some(l) if frame.seq > l.wrapping_add(1) => frame.seq - l - 1,
        _ => 0,
    };
    ps.last_arrived = Some(frame.seq);
    ps.lost_total += gap;
    ps.pending_lost += gap;
    if !frame.topic.starts_with(&sh.topic_prefix) {
        return;
    }
    while st.frames >= sh.depth && !st.closed {
        if h.policy == Policy::Block {
            // Backpressure: hold Zenoh's receive path until there is room
            // (the sender then blocks under congestion control Block).
            st = blocking(|| {
                sh.room
                    .wait_while(st, |s| s.frames >= sh.depth && !s.closed)
                    .unwrap_or_else(|p| p.into_inner())
            });
            continue;
        }
        // drop-oldest: the oldest frame of a drop-oldest publisher goes.
        let victim = st.queue.iter().position(|i| {
            matches!(
                i,
                Item::Frame {
                    policy: Policy::DropOldest,
                    ..
                }
            )
        });
        let (vid, n) = match victim.and_then(|v| st.queue.remove(v).map(|i| (v, i))) {
            Some((
                v,
                Item::Frame {
                    pub_id,
                    lost_before,
                    ..
                },
            )) => {
                st.frames -= 1;
                // Carry the count over to that publisher's next queued frame.
                let next = st.queue.iter_mut().skip(v).find_map(|i| match i {
                    Item::Frame {
                        pub_id: p,
                        lost_before: l,
                        ..
                    } if *p == pub_id => Some(l),
                    _ => None,
                });
                match next {
                    Some(l) => *l += lost_before + 1,
                    None => st.pubs.entry(pub_id).or_default().pending_lost += lost_before + 1,
                }
                (pub_id, 1)
            }
            _ => {
                // Only block frames queued: this one is the one to go.
                let ps = st.pubs.entry(h.pub_id).or_default();
                ps.pending_lost += 1;
                ps.lost_total += 1;
                StatCounters::add(&sh.stats.dropped, 1);
                return;
            }
        };
        st.pubs.entry(vid).or_default().lost_total += n;
        StatCounters::add(&sh.stats.dropped, n);
    }
    if st.closed {
        return;
    }
    let ps = st.pubs.entry(h.pub_id).or_default();
    let lost_before = std::mem::take(&mut ps.pending_lost);
    st.queue.push_back(Item::Frame {
        pub_id: h.pub_id,
        policy: h.policy,
        frame,
        lost_before,
    });
    st.frames += 1;
    drop(st);
    sh.ready.notify_one();
}

fn on_token(sh: &Shared, sample: Sample) {
    let id = sample
        .key_expr()
        .as_str()
        .strip_prefix(PUB_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split_once('/'))
        .and_then(|(id, _)| u64::from_str_radix(id, 16).ok());
    let Some(id) = id else { return };
    let mut st = sh.lock();
    let ps = st.pubs.entry(id).or_default();
    match sample.kind() {
        SampleKind::Put => ps.token_lost = None,
        SampleKind::Delete => ps.token_lost = Some(std::time::Instant::now()),
    }
    drop(st);
    sh.ready.notify_one();
}

fn on_flush(sh: &Shared, sub_id: u64, query: zenoh::query::Query) {
    let k = query.key_expr().as_str();
    let pub_id = k
        .strip_prefix(FLUSH_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split_once('/'))
        .and_then(|(id, _)| u64::from_str_radix(id, 16).ok());
    let Some(pub_id) = pub_id else { return };
    let lost = sh.lock().pubs.get(&pub_id).map_or(0, |p| p.lost_total);
    let reply = wire::encode_flush_reply(sub_id, lost);
    if let Err(e) = query.reply(query.key_expr().clone(), reply).wait() {
        tracing::debug!("zenoh flush reply not sent: {e}");
    }
}

/// A subscriber on a Zenoh key expression (wildcards allowed).
pub struct ZenohSubscriber {
    shared: Arc<Shared>,
    /// `None` only while dropping.
    session: Option<zenoh::Session>,
    _sub: zenoh::pubsub::Subscriber<()>,
    _flush: zenoh::query::Queryable<()>,
    _token: zenoh::liveliness::LivelinessToken,
    _pubs: zenoh::pubsub::Subscriber<()>,
    mode: RecvMode,
    pending: Option<Frame>,
}

impl std::fmt::Debug for ZenohSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZenohSubscriber")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

pub(crate) async fn open(
    cfg: Config,
    mode: RecvMode,
    topic_prefix: String,
) -> Result<ZenohSubscriber> {
    let (session, _) = cfg.open().await?;
    let sub_id = id_of(&session);
    let shared = Arc::new(Shared {
        st: Mutex::new(State {
            queue: VecDeque::new(),
            frames: 0,
            pubs: HashMap::new(),
            closed: false,
        }),
        room: Condvar::new(),
        ready: Notify::new(),
        depth: cfg.queue,
        gone_after: cfg.gone_after,
        max_payload: cfg.max_payload,
        topic_prefix,
        stats: Arc::new(StatCounters::default()),
        copies: BufPool::new(KEEP),
    });
    let sh = shared.clone();
    let sub = session
        .declare_subscriber(cfg.key.clone())
        .callback(move |s| on_sample(&sh, s))
        .await
        .map_err(backend_err)?;
    let sh = shared.clone();
    let flush = session
        .declare_queryable(format!("{FLUSH_PREFIX}/*/{}", cfg.key))
        .callback(move |q| on_flush(&sh, sub_id, q))
        .await
        .map_err(backend_err)?;
    let token = session
        .liveliness()
        .declare_token(format!("{SUB_PREFIX}/{sub_id:016x}/{}", cfg.key))
        .await
        .map_err(backend_err)?;
    let sh = shared.clone();
    let pubs = session
        .liveliness()
        .declare_subscriber(format!("{PUB_PREFIX}/*/{}", cfg.key))
        .history(true)
        .callback(move |s| on_token(&sh, s))
        .await
        .map_err(backend_err)?;
    Ok(ZenohSubscriber {
        _pubs: pubs,
        shared,
        session: Some(session),
        _sub: sub,
        _flush: flush,
        _token: token,
        mode,
        pending: None,
    })
}

impl ZenohSubscriber {
    fn deliver(&self, mut f: Frame) -> Frame {
        f.stamp_received();
        StatCounters::add(&self.shared.stats.frames_received, 1);
        StatCounters::add(&self.shared.stats.bytes_received, f.payload.len() as u64);
        f
    }
}

enum Poll {
    Ready(Result<Frame>),
    /// Nothing yet; wake up at this instant (a `gone_after` deadline) or when notified.
    Pending(Option<std::time::Instant>),
}

impl ZenohSubscriber {
    fn poll_queue(&mut self) -> Poll {
        let mut st = self.shared.lock();
        loop {
            let Some(item) = st.queue.pop_front() else {
                break;
            };
            match item {
                Item::Frame {
                    frame, lost_before, ..
                } => {
                    st.frames -= 1;
                    drop(st);
                    self.shared.room.notify_all();
                    if lost_before > 0 {
                        StatCounters::add(&self.shared.stats.lagged, lost_before);
                        self.pending = Some(frame);
                        return Poll::Ready(Err(Error::Lagged {
                            missed: lost_before,
                        }));
                    }
                    return Poll::Ready(Ok(self.deliver(frame)));
                }
                Item::End(id) => st.pubs.entry(id).or_default().ended = true,
            }
        }
        // A publisher whose token stayed away `gone_after` has ended (its
        // process died, or its host is unreachable).
        let gone_after = self.shared.gone_after;
        let mut wake: Option<std::time::Instant> = None;
        for p in st.pubs.values_mut() {
            if let Some(t) = p.token_lost {
                if t.elapsed() >= gone_after {
                    p.ended = true;
                    p.token_lost = None;
                } else if !p.ended {
                    let at = t + gone_after;
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
            }
        }
        if !st.pubs.is_empty() && st.pubs.values().all(|p| p.ended) {
            return Poll::Ready(Err(Error::disconnected(
                "zenoh",
                "every zenoh publisher seen on this key expression has ended",
            )));
        }
        Poll::Pending(wake)
    }
}

#[async_trait]
impl Subscriber for ZenohSubscriber {
    async fn recv(&mut self) -> Result<Frame> {
        if let Some(f) = self.pending.take() {
            return Ok(self.deliver(f));
        }
        let shared = self.shared.clone();
        loop {
            let notified = shared.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake = match self.poll_queue() {
                Poll::Ready(r) => return r,
                Poll::Pending(w) => w,
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn recv_mode(&self) -> RecvMode {
        self.mode
    }

    fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }
}

impl Drop for ZenohSubscriber {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.room.notify_all();
        if let Some(s) = self.session.take() {
            close_session(s);
        }
    }
}
