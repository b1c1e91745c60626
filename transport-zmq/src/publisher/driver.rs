//! The publisher's driver task: handles what connections report
//! (handshakes, subscriptions, status reports, releases, finished writes),
//! hands each subscriber's writer its next frame as soon as its previous
//! write is done (so a stalled subscriber delays nobody else), sends
//! welcomes, heartbeats and goodbyes, and cuts off peers that stall.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use transport_core::fanout::LagQueue;
use transport_core::{Result, StatCounters};

use super::shm::{self, Server};
use super::state::{Msg, Shared, Sub, SubShm};
use crate::conn::{self, Event, Peer, PeerKind};
use crate::wire::{self, Control, SubscriberId, Welcome};

/// Upstream messages handled per turn of the driver before it writes again.
const UPSTREAM_BATCH: usize = 256;

/// Topic prefixes one plain subscriber may hold at once: each costs a check
/// per frame sent, so a peer subscribing to ever new prefixes is cut off
/// here instead of slowing every `send`.
pub(crate) const MAX_PREFIXES: usize = 1024;

/// One write the driver has to do.
pub(super) enum Job {
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

pub(super) struct Driver {
    events: mpsc::Receiver<Event>,
    /// Write completions ([`Event::Written`] only), handled first.
    written: mpsc::UnboundedReceiver<Event>,
    /// Stopped with the driver.
    acceptor: tokio::task::AbortHandle,
    shared: Arc<Shared>,
    /// Connections that finished their handshake, by number.
    peers: HashMap<u64, Conn>,
    /// `shm=pool`: serves the pool's segment to subscribers on this host.
    attach: Option<Server>,
}

impl Driver {
    /// A driver for `shared`, fed by the connections' `events`.
    pub(super) fn new(
        events: mpsc::Receiver<Event>,
        written: mpsc::UnboundedReceiver<Event>,
        acceptor: tokio::task::AbortHandle,
        shared: Arc<Shared>,
        attach: Option<Server>,
    ) -> Driver {
        Driver {
            events,
            written,
            acceptor,
            shared,
            peers: HashMap::new(),
            attach,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // No new connections; every connection closes with `peers`.
        self.acceptor.abort();
    }
}

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
        self.0.members.set(0);
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
    pub(super) async fn run(mut self) {
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
                Some(ev) = self.written.recv() => Woke::Event(Some(ev)),
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
        shm::next_closed(server).await
    }

    /// True while attach connection `conn` is open.
    fn conn_open(&self, conn: u32) -> bool {
        shm::is_open(self.attach.as_ref(), conn)
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

    /// Handles what connections already reported, without waiting: every
    /// finished write, then at most [`UPSTREAM_BATCH`] other events.
    fn drain_events(&mut self) {
        while let Ok(ev) = self.written.try_recv() {
            self.event(ev);
        }
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
            sub.prefixes.remove(&s.prefix);
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
                if sub.prefixes.len() >= MAX_PREFIXES {
                    drop(st);
                    self.remove(
                        &id,
                        &format!("it subscribed to more than {MAX_PREFIXES} topic prefixes"),
                        true,
                    );
                    return;
                }
                sub.prefixes.insert(s.prefix);
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
            prefixes: std::collections::HashSet::from([s.prefix]),
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
        self.shared.members.set(st.subs.len());
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
        self.shared.members.set(st.subs.len());
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
                Some(ev) = self.written.recv() => Some(ev),
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
