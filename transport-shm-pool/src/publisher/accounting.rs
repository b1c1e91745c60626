//! The publisher's accounting: which subscriber holds which slot (holder
//! masks, generations), releases (from the release rings and the socket),
//! a subscriber that unsubscribes or goes away, taking a free slot under
//! each policy, and publishing a pool slot.

use super::*;

impl Shared {
    /// Number of pool slots: claim indices below it are pool slots, those
    /// from it on forward slots.
    pub(super) fn pool_slots(&self) -> u32 {
        self.pool.geometry().slots
    }

    pub(super) fn set_queued(&self, st: &State) {
        self.stats
            .queued
            .store(st.in_flight as u64, Ordering::Relaxed);
    }

    pub(super) fn set_subscribers(&self, st: &State) {
        self.stats
            .subscribers
            .store(st.subscribers as u64, Ordering::Relaxed);
    }

    /// Marks a published slot (pool or forward) free and returns it to its
    /// free list. A forward slot's payload goes to the graveyard, dropped
    /// when `state` is unlocked.
    pub(super) fn free_slot(&self, st: &mut State, index: u32) {
        let s = &mut st.slots[index as usize];
        debug_assert!(s.in_flight && s.hold.is_free());
        s.in_flight = false;
        st.in_flight -= 1;
        self.set_queued(st);
        self.end_forward(st, index);
        self.unreserve(index);
    }

    /// Returns an unpublished slot (a dropped loan, a failed send) to its free list.
    pub(super) fn unreserve(&self, index: u32) {
        if index < self.pool_slots() {
            self.pool.push(index);
        } else {
            // A double release is refused, counted and logged, never a panic
            // (this runs in `SlotGuard`/`SlotLoan` drops).
            self.fwd_free.push(index);
        }
        self.released.notify_one();
    }

    pub(super) fn conn_is_current(st: &State, conn: &Arc<Conn>) -> bool {
        matches!(st.conns.get(conn.bit as usize), Some(Some(c)) if Arc::ptr_eq(c, conn))
    }

    pub(super) fn on_release(&self, conn: &Arc<Conn>, index: u32, generation: u64) {
        let mut st = lock(&self.state);
        self.release_one(&mut st, conn, u64::from(index), generation);
        unlock(st);
    }

    /// Clears `conn`'s bit in claim `index` at `generation` if it holds it
    /// there; anything else (stale, duplicate, forged, out of range) is
    /// ignored and counted. Values come from the subscriber: unchecked.
    pub(super) fn release_one(
        &self,
        st: &mut State,
        conn: &Arc<Conn>,
        index: u64,
        generation: u64,
    ) {
        let bit = 1u64 << conn.bit;
        let current = Self::conn_is_current(st, conn);
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        let valid = current
            && st
                .slots
                .get(i)
                .is_some_and(|s| s.in_flight && s.hold.held_at(generation, bit));
        if !valid {
            self.stale_releases.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                pool = %self.name,
                subscriber = conn.bit,
                index,
                generation,
                "shm-pool: stale or duplicate release ignored"
            );
            return;
        }
        let s = &mut st.slots[i];
        if s.hold.drop_holder(bit) {
            self.free_slot(st, i as u32);
        }
    }

    /// Applies the releases `conn` published in its channel's release ring
    /// (no system call). A ring whose head the subscriber broke is skipped
    /// (and counted as one stale release): its releases then come at end of
    /// stream, as a dead subscriber's do.
    pub(super) fn drain_ring(&self, conn: &Arc<Conn>) {
        let mut tail = lock(&conn.rel_tail);
        if !conn.claims.releases_pending(*tail) {
            return;
        }
        let mut batch = Vec::with_capacity(RELEASE_BATCH);
        // Bounded: at most a ring's worth per call, whatever the peer writes.
        for _ in 0..(1 << 14) / RELEASE_BATCH {
            batch.clear();
            if let Err(channel::BadRing(e)) = conn.claims.drain_releases(&mut tail, &mut batch) {
                tracing::warn!(pool = %self.name, subscriber = conn.bit, "shm-pool: release ring skipped: {e}");
                self.stale_releases.fetch_add(1, Ordering::Relaxed);
                conn.claims.skip_releases(&mut tail);
                return;
            }
            if batch.is_empty() {
                return;
            }
            let mut st = lock(&self.state);
            for &(index, generation) in &batch {
                self.release_one(&mut st, conn, index, generation);
            }
            unlock(st);
        }
    }

    /// [`drain_ring`](Self::drain_ring) for every live connection.
    pub(super) fn drain_rings(&self) {
        for c in self.live_conns() {
            self.drain_ring(&c);
        }
    }

    pub(super) fn live_conns(&self) -> Vec<Arc<Conn>> {
        lock(&self.state)
            .conns
            .iter()
            .flatten()
            .filter(|c| !c.dead.load(Ordering::Acquire))
            .cloned()
            .collect()
    }

    /// Asks every live subscriber to wake this publisher when it releases
    /// a slot (the caller then looks at the rings once more before waiting).
    pub(super) fn request_release_kicks(&self) {
        for c in self.live_conns() {
            c.claims.request_kick(KICK_RELEASES);
        }
    }

    /// FORWARDED: `conn` is about to forward the frame it holds in slot
    /// `index`. Ignored unless it holds that slot at that generation.
    pub(super) fn on_forwarded(&self, conn: &Arc<Conn>, index: u32, generation: u64) {
        let mut st = lock(&self.state);
        let bit = 1u64 << conn.bit;
        let current = Self::conn_is_current(&st, conn);
        match st.slots.get_mut(index as usize) {
            Some(s) if current && s.in_flight && s.hold.held_at(generation, bit) => {
                s.forwarded |= bit;
            }
            _ => tracing::debug!(
                pool = %self.name,
                subscriber = conn.bit,
                index,
                generation,
                "shm-pool: FORWARDED for a slot it does not hold; ignored"
            ),
        }
    }

    pub(super) fn on_unsubscribe(&self, conn: &Arc<Conn>) {
        let mut st = lock(&self.state);
        if !Self::conn_is_current(&st, conn) || !conn.active.swap(false, Ordering::AcqRel) {
            return;
        }
        st.subscribers -= 1;
        self.set_subscribers(&st);
        let bit = 1u64 << conn.bit;
        for index in 0..st.slots.len() as u32 {
            let s = st.slots[index as usize];
            // Descriptors it has not taken yet come back at once; slots it
            // reads (views still alive) stay held until released or EOF.
            if s.in_flight && s.hold.held_by(bit) && conn.claims.reclaim(index, s.hold.generation())
            {
                let emptied = st.slots[index as usize].hold.drop_holder(bit);
                if emptied {
                    self.free_slot(&mut st, index);
                }
            }
        }
        // Nothing more goes to it: no descriptors, no segments to map.
        lock(&conn.out)
            .queue
            .retain(|o| matches!(o, Outgoing::Ready(_) | Outgoing::Forget(_)));
        unlock(st);
        self.subs_changed.notify_waiters();
        self.progress.notify_waiters();
    }

    /// Forgets a connection whose socket closed (a killed subscriber ends
    /// here). Descriptors it had not taken come back at once, and so do the
    /// slots it took without forwarding them (its views died with it, or
    /// were all dropped when its socket closed). Slots it took and said it
    /// forwarded (FORWARDED) come back at once too unless some process
    /// still holds its anchor (a process it forwarded them to may be viewing
    /// them): those stay reserved, and this returns true; the caller waits
    /// for the anchor's end of file, then calls
    /// [`release_lingering`](Self::release_lingering). After a protocol
    /// violation (`violated`: the peer may still be alive, with views), every
    /// slot it took waits for the anchor, as if forwarded.
    pub(super) fn drop_conn(&self, conn: &Arc<Conn>, violated: bool) -> bool {
        // What it released before it went counts as released.
        self.drain_ring(conn);
        let mut st = lock(&self.state);
        if conn.dead.swap(true, Ordering::AcqRel) {
            return conn.lingering.load(Ordering::Acquire);
        }
        if conn.active.swap(false, Ordering::AcqRel) {
            st.subscribers -= 1;
            self.set_subscribers(&st);
        }
        // A closed publisher reuses no slot: nothing to wait for then.
        let anchored = !self.closed.load(Ordering::Acquire)
            && sys::pipe_has_writers(conn.anchor.get_ref().as_fd()).unwrap_or(false);
        let bit = 1u64 << conn.bit;
        let (mut freed, mut kept) = (0, 0);
        for index in 0..st.slots.len() as u32 {
            let s = st.slots[index as usize];
            if !(s.in_flight && s.hold.held_by(bit)) {
                continue;
            }
            if anchored
                && (violated || s.forwarded & bit != 0)
                && !conn.claims.reclaim(index, s.hold.generation())
            {
                // Taken and forwarded to a process that still holds the
                // anchor (or a violating peer that may still view it).
                kept += 1;
                continue;
            }
            if st.slots[index as usize].hold.drop_holder(bit) {
                self.free_slot(&mut st, index);
                freed += 1;
            }
        }
        if kept == 0 {
            Self::forget_conn(&mut st, conn);
        } else {
            conn.lingering.store(true, Ordering::Release);
        }
        unlock(st);
        {
            let mut out = lock(&conn.out);
            out.queue.clear();
            out.wbuf.clear();
            out.pass = None;
        }
        tracing::debug!(pool = %self.name, subscriber = conn.bit, freed, kept, "shm-pool: subscriber gone");
        conn.wake.notify_one();
        self.subs_changed.notify_waiters();
        self.progress.notify_waiters();
        kept > 0
    }

    /// Frees a connection's bit for a new subscriber.
    pub(super) fn forget_conn(st: &mut State, conn: &Arc<Conn>) {
        if Self::conn_is_current(st, conn) {
            st.conns[conn.bit as usize] = None;
        }
        // The bit may go to a new subscriber, which has been sent no segment.
        let bit = 1u64 << conn.bit;
        for s in st.segs.iter_mut().flatten() {
            s.sent_to &= !bit;
        }
    }

    /// The anchor of a lingering connection reached end of file (or the
    /// publisher closed): the slots it kept come back.
    pub(super) fn release_lingering(&self, conn: &Arc<Conn>) {
        let mut st = lock(&self.state);
        if !conn.lingering.swap(false, Ordering::AcqRel) {
            return;
        }
        let bit = 1u64 << conn.bit;
        let mut freed = 0;
        for index in 0..st.slots.len() as u32 {
            let s = &mut st.slots[index as usize];
            if s.in_flight && s.hold.held_by(bit) {
                let emptied = s.hold.drop_holder(bit);
                if emptied {
                    self.free_slot(&mut st, index);
                    freed += 1;
                }
            }
        }
        Self::forget_conn(&mut st, conn);
        unlock(st);
        tracing::debug!(pool = %self.name, subscriber = conn.bit, freed, "shm-pool: anchor released");
        self.subs_changed.notify_waiters();
        self.progress.notify_waiters();
    }

    /// True when `conn` holds a forward slot.
    pub(super) fn holds_forwarded(&self, conn: &Conn) -> bool {
        let bit = 1u64 << conn.bit;
        let st = lock(&self.state);
        st.slots[self.claim_range(Kind::Forward)]
            .iter()
            .any(|s| s.in_flight && s.hold.held_by(bit))
    }

    /// True when some subscriber would receive a frame on `topic`.
    pub(super) fn has_recipient(&self, topic: &str) -> bool {
        lock(&self.state)
            .conns
            .iter()
            .flatten()
            .any(|c| c.active.load(Ordering::Acquire) && topic.starts_with(c.prefix.as_str()))
    }

    /// Looks for releases that already arrived over the sockets, without
    /// waiting.
    pub(super) fn drain_releases(&self) {
        for c in self.live_conns() {
            let r = self.read_conn(&c, false);
            if r != ReadOutcome::Open {
                // Its task waits for the anchor, if need be.
                self.drop_conn(&c, r == ReadOutcome::Violated);
                c.wake.notify_one();
            }
        }
    }

    /// The claim indices of one kind of slot.
    pub(super) fn claim_range(&self, kind: Kind) -> std::ops::Range<usize> {
        let n = self.pool_slots() as usize;
        match kind {
            Kind::Pool => 0..n,
            Kind::Forward => n..2 * n,
        }
    }

    /// Under drop-oldest: takes back the oldest slot of `kind` whose
    /// descriptors no subscriber has taken yet. Subscribers that took it (they
    /// are reading it, or hold a view) keep it; those that had not lose that
    /// frame. A forward slot taken back drops its payload (releasing it
    /// upstream).
    pub(super) fn reclaim_oldest(&self, kind: Kind) -> Option<u32> {
        let range = self.claim_range(kind);
        let mut st = lock(&self.state);
        let mut order: Vec<(u64, u32)> = st
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| s.in_flight && range.contains(i))
            .map(|(i, s)| (s.seq, i as u32))
            .collect();
        order.sort_unstable();
        let mut found = None;
        for (_, index) in order {
            let i = index as usize;
            let generation = st.slots[i].hold.generation();
            let mut h = st.slots[i].hold.mask();
            while h != 0 {
                let b = h.trailing_zeros();
                h &= h - 1;
                let gone = match st.conns.get(b as usize).and_then(Option::as_ref) {
                    Some(c) => {
                        let taken_back = c.claims.reclaim(index, generation);
                        if taken_back {
                            StatCounters::add(&self.stats.dropped, 1);
                            lock(&c.out).remove_desc(index, generation);
                        }
                        taken_back
                    }
                    None => true,
                };
                if gone {
                    st.slots[i].hold.drop_holder(1u64 << b);
                }
            }
            if st.slots[i].hold.is_free() {
                st.slots[i].in_flight = false;
                st.in_flight -= 1;
                self.set_queued(&st);
                self.end_forward(&mut st, index);
                found = Some(index);
                break;
            }
        }
        unlock(st);
        found
    }

    pub(super) fn pop(&self, kind: Kind) -> Option<u32> {
        match kind {
            Kind::Pool => self.pool.pop(),
            Kind::Forward => self.fwd_free.pop(),
        }
    }

    /// A free slot of `kind` under `policy`: the lock-free pop first; when
    /// none is free, releases that already arrived; then the policy.
    /// Cancellation-safe: nothing is taken before the only `.await`.
    pub(super) async fn acquire(&self, policy: Policy, kind: Kind) -> Result<u32> {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(i) = self.pop(kind) {
                return Ok(i);
            }
            // Releases in the rings first: no system call.
            self.drain_rings();
            if let Some(i) = self.pop(kind) {
                return Ok(i);
            }
            self.drain_releases();
            if let Some(i) = self.pop(kind) {
                return Ok(i);
            }
            match policy {
                Policy::DropOldest => {
                    if let Some(i) = self.reclaim_oldest(kind) {
                        return Ok(i);
                    }
                }
                Policy::Fail => {
                    let detail = match kind {
                        Kind::Pool => format!(
                            "all {} slots of shm-pool `{}` are held by subscribers",
                            self.pool.slots(),
                            self.name
                        ),
                        Kind::Forward => format!(
                            "all {} forward slots of shm-pool `{}` are held by subscribers \
                             (a frame forwarded without a copy holds one, and its upstream slot, \
                             until every subscriber has dropped it)",
                            self.pool.slots(),
                            self.name
                        ),
                    };
                    return Err(Error::Full {
                        option: "slots",
                        detail,
                    });
                }
                Policy::Block => {}
            }
            // Ask to be woken by the next release, then look once more: a
            // release published before the request is seen here, one after
            // it wakes this side (see the channel's "Parking").
            self.request_release_kicks();
            self.drain_rings();
            if let Some(i) = self.pop(kind) {
                return Ok(i);
            }
            let _ = tokio::time::timeout(RELEASE_SLICE, notified).await;
        }
    }

    /// Hands slot `index` (payload written) to every matching subscriber.
    pub(super) fn publish(
        &self,
        index: u32,
        len: u64,
        header: Bytes,
        topic: &str,
        seq: u64,
        targets: &mut Vec<Arc<Conn>>,
    ) {
        {
            let mut st = lock(&self.state);
            let State {
                slots,
                conns,
                in_flight,
                ..
            } = &mut *st;
            let s = &mut slots[index as usize];
            let generation = s.hold.next_generation();
            self.pool.set_header(index, generation, len);
            let mut mask = 0u64;
            for c in conns.iter().flatten() {
                if c.active.load(Ordering::Acquire) && topic.starts_with(c.prefix.as_str()) {
                    mask |= 1u64 << c.bit;
                    c.claims.offer(index, generation);
                    let desc = Desc {
                        segment: self.pool.segment_id(),
                        index,
                        generation,
                        len,
                        missed: 0,
                    };
                    lock(&c.out).push_desc(Outgoing::Desc {
                        desc,
                        header: header.clone(),
                    });
                    targets.push(c.clone());
                }
            }
            if mask == 0 {
                drop(st);
                self.unreserve(index);
                return;
            }
            s.hold.set_mask(mask);
            s.forwarded = 0;
            s.seq = seq;
            s.in_flight = true;
            *in_flight += 1;
            self.stats
                .queued
                .store(*in_flight as u64, Ordering::Relaxed);
        }
        for c in targets.drain(..) {
            self.flush_now(&c);
        }
    }
}
