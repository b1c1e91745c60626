//! What the publisher and its driver share: the frames as they will be
//! written ([`Msg`]), each subscriber's queue and progress ([`Sub`]), and the
//! state behind one lock ([`Shared`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use transport_core::contract::{SubscriberWatch, topic_matches};
use transport_core::fanout::LagQueue;
use transport_core::{Policy, StatCounters};

use super::shm;
use crate::config::Config;
use crate::wire::{Control, SubscriberId};

/// One frame as it will be written: its topic, envelope and payload (shared by
/// every subscriber's queue, never copied).
#[derive(Debug)]
pub(super) struct Msg {
    pub(super) topic: Bytes,
    pub(super) envelope: Bytes,
    /// The payload; under `shm=pool`, the publisher's own view of the slot
    /// (what subscribers that receive inline get), holding it while queued.
    pub(super) payload: Bytes,
    /// `shm=pool`: where the payload is.
    pub(super) shared: Option<SharedPart>,
}

/// A frame's slot under `shm=pool`.
#[derive(Debug)]
pub(super) struct SharedPart {
    /// The encoded `SlotRef`.
    pub(super) reference: Bytes,
    pub(super) index: u32,
    pub(super) generation: u64,
}

/// How a subscriber gets payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubShm {
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
    pub(super) fn holder(self) -> Option<u32> {
        match self {
            SubShm::Inline => None,
            SubShm::Pending { holder } | SubShm::Refs { holder, .. } => Some(holder),
        }
    }
}

/// A subscriber gone from the channel whose process still maps the pool
/// (its attach connection is open): its holds stay until that closes.
#[derive(Debug)]
pub(super) struct Zombie {
    pub(super) id: SubscriberId,
    pub(super) holder: u32,
    pub(super) conn: u32,
}

#[derive(Debug)]
pub(super) struct Sub {
    pub(super) id: SubscriberId,
    /// A framewire subscriber (false: a plain ZeroMQ SUB, which gets data
    /// frames only: no welcome, heartbeat, lag report or goodbye, and is
    /// never expected to report status).
    pub(super) framewire: bool,
    /// Topic prefixes it subscribed to (a framewire subscriber has one).
    pub(super) prefixes: std::collections::HashSet<String>,
    pub(super) queue: LagQueue<Arc<Msg>>,
    /// The driver is writing to this subscriber now.
    pub(super) writing: bool,
    /// WELCOME not written yet; no data goes before it.
    pub(super) needs_welcome: bool,
    /// Sequence number of the first frame queued for it (told in WELCOME).
    pub(super) start_seq: u64,
    /// Data frames written to its socket.
    pub(super) written: u64,
    /// Data frames it reports received.
    pub(super) received: u64,
    /// Frames it reports having dropped itself.
    pub(super) reported_dropped: u64,
    pub(super) last_heard: Instant,
    pub(super) last_sent: Instant,
    /// How it gets payloads.
    pub(super) shm: SubShm,
    /// When it joined.
    pub(super) joined: Instant,
}

impl Sub {
    /// True when `topic` goes to this subscriber.
    pub(super) fn wants(&self, topic: &str) -> bool {
        self.prefixes.iter().any(|p| topic_matches(p, topic))
    }
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) subs: Vec<Sub>,
    /// Sequence number of the next frame; a joining subscriber is told it.
    pub(super) next_seq: u64,
    /// The publisher was dropped: write what is queued, say goodbye, close.
    pub(super) closing: bool,
    /// The driver ended; why.
    pub(super) driver_gone: Option<String>,
    /// Round-robin cursor over `subs`.
    pub(super) cursor: usize,
    /// `shm=pool`: holder numbers in use (subscribers and zombies).
    pub(super) holders_used: u64,
    /// `shm=pool`: departed subscribers that still map the pool.
    pub(super) zombies: Vec<Zombie>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) stats: Arc<StatCounters>,
    /// Subscribers now, for `wait_for_subscribers` (mirrored into `stats`).
    pub(super) members: SubscriberWatch,
    /// -> driver: work was queued, or the publisher closed.
    pub(super) wake: Notify,
    /// -> senders, `flush`, `wait_for_subscribers`: queues moved, membership changed.
    pub(super) changed: Notify,
    pub(super) cfg: Config,
    pub(super) policy: Policy,
    pub(super) instance: u64,
    /// `shm=pool`: the slots.
    pub(super) pool: Option<shm::Pool>,
    /// `shm=pool`: the SHM control written before each WELCOME.
    pub(super) announce: Option<Control>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        transport_core::sync::lock(&self.state)
    }

    /// Releases `holder`'s hold on slot `index` generation `generation`;
    /// false (counted by the pool) when it held none.
    pub(super) fn release_slot(&self, holder: u32, index: u32, generation: u64) -> bool {
        self.pool
            .as_ref()
            .is_some_and(|pool| shm::release_slot(pool, holder, index, generation))
    }

    /// Releases `holder`'s hold on `msg`'s slot (a frame it will never get).
    pub(super) fn release_msg(&self, msg: &Msg, holder: u32) {
        if let Some(p) = &msg.shared {
            self.release_slot(holder, p.index, p.generation);
        }
    }

    /// Releases every hold of `holder` and frees the number.
    pub(super) fn release_holder(&self, st: &mut State, holder: u32) {
        if let Some(pool) = &self.pool {
            shm::release_all(pool, holder);
        }
        st.holders_used &= !(1u64 << holder);
    }

    /// Drops the oldest frame queued for `s`, releasing its hold.
    pub(super) fn drop_oldest(&self, s: &mut Sub) -> bool {
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
    pub(super) fn clear_queue(&self, s: &mut Sub) -> usize {
        let holder = s.shm.holder();
        let mut n = 0;
        for m in s.queue.drain() {
            if let Some(h) = holder {
                self.release_msg(&m, h);
            }
            n += 1;
        }
        self.stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
        n
    }

    /// A subscriber leaves: its queued frames go, and its holds are
    /// released, unless its process still maps the pool (`conn_open`), in
    /// which case it stays a zombie until it closes its attach connection.
    pub(super) fn retire(&self, st: &mut State, mut s: Sub, conn_open: bool) {
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
