//! One subscriber's connection: what is queued for it, delivering it
//! through the descriptor ring and the socket, reading what it sends, and
//! the task that serves it.

use super::*;

impl Outgoing {
    /// The claim index and generation of a descriptor.
    pub(super) fn claim(&self) -> Option<(u32, u64)> {
        match self {
            Outgoing::Desc { desc, .. } => Some((desc.index, desc.generation)),
            Outgoing::Fwd { desc, .. } => Some((desc.index, desc.generation)),
            _ => None,
        }
    }

    /// A descriptor's count of frames dropped before it.
    pub(super) fn missed_mut(&mut self) -> Option<&mut u64> {
        match self {
            Outgoing::Desc { desc, .. } => Some(&mut desc.missed),
            Outgoing::Fwd { desc, .. } => Some(&mut desc.missed),
            _ => None,
        }
    }
}

impl Out {
    /// Something is still to be delivered (queued, or serialized and not
    /// yet written).
    pub(super) fn has_output(&self) -> bool {
        !self.queue.is_empty() || !self.wbuf.is_empty()
    }

    /// Bytes wait for room in the socket.
    pub(super) fn wants_socket(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Queues a descriptor (DESC or FWD), adding the drops carried so far.
    pub(super) fn push_desc(&mut self, mut o: Outgoing) {
        let carry = std::mem::take(&mut self.carry);
        if let Some(m) = o.missed_mut() {
            *m = m.saturating_add(carry);
        }
        self.queue.push_back(o);
    }

    /// Queues FORGET of segment index `index`, coalesced with what is still
    /// queued for that index: a SEGMENT of it not yet written is removed
    /// instead (the subscriber never learns of that mapping, so there is
    /// nothing to forget). So at most one FORGET and one SEGMENT per index
    /// wait in the queue however often an index is reused while a
    /// subscriber does not read, each holding a segment's fd and anchors.
    /// The caller makes sure no queued descriptor uses the index.
    pub(super) fn forget(&mut self, index: u32) {
        let queued = self
            .queue
            .iter()
            .rposition(|o| matches!(o, Outgoing::Segment { index: i, .. } if *i == index));
        match queued {
            Some(pos) => {
                self.queue.remove(pos);
            }
            None => self.queue.push_back(Outgoing::Forget(index)),
        }
    }

    /// Messages queued and not yet serialized.
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Removes a queued (unsent) descriptor, carrying its drop count to the
    /// next one. True if it was still queued.
    pub(super) fn remove_desc(&mut self, index: u32, generation: u64) -> bool {
        let Some(pos) = self
            .queue
            .iter()
            .position(|o| o.claim() == Some((index, generation)))
        else {
            return false;
        };
        let missed = match self
            .queue
            .remove(pos)
            .as_mut()
            .and_then(Outgoing::missed_mut)
        {
            Some(m) => m.saturating_add(1),
            None => 1,
        };
        match self
            .queue
            .iter_mut()
            .skip(pos)
            .find_map(Outgoing::missed_mut)
        {
            Some(next) => *next = next.saturating_add(missed),
            None => self.carry = self.carry.saturating_add(missed),
        }
        true
    }
}

impl Shared {
    /// Waits until no process holds `conn`'s anchor any more, or the
    /// publisher closes.
    pub(super) async fn wait_unanchored(&self, conn: &Conn) {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            // No writer left (or the pipe cannot be polled): done.
            if !sys::pipe_has_writers(conn.anchor.get_ref().as_fd()).unwrap_or(false) {
                return;
            }
            // Woken by the writers' hang-up (or by bytes a peer wrote, or a
            // spurious wake-up): clear the readiness, then poll again above,
            // so that no hang-up is lost between the two.
            tokio::select! {
                r = conn.anchor.readable() => match r {
                    Ok(mut g) => g.clear_ready(),
                    Err(_) => return,
                },
                _ = conn.wake.notified() => {}
            }
        }
    }

    /// Reads what a subscriber sent and acts on it. `via_reactor` reads
    /// through tokio's readiness (the connection task); otherwise one raw
    /// non-blocking read loop (the publisher looking for releases before it
    /// waits or fails).
    pub(super) fn read_conn(&self, conn: &Arc<Conn>, via_reactor: bool) -> ReadOutcome {
        self.drain_ring(conn);
        let mut inp = lock(&conn.inp);
        for _ in 0..64 {
            let r = if via_reactor {
                conn.stream
                    .try_io(Interest::READABLE, || inp.fill(conn.stream.as_fd()))
            } else {
                inp.fill(conn.stream.as_fd())
            };
            match r {
                Ok(0) => return ReadOutcome::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(pool = %self.name, subscriber = conn.bit, "shm-pool: read failed: {e}");
                    return ReadOutcome::Closed;
                }
            }
            loop {
                let msg = match inp
                    .next_message()
                    .and_then(|m| m.map(wire::decode).transpose())
                {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(pool = %self.name, subscriber = conn.bit, "shm-pool: dropping subscriber: {e}");
                        return ReadOutcome::Violated;
                    }
                };
                match msg {
                    Msg::Release { index, generation } => self.on_release(conn, index, generation),
                    Msg::Forwarded { index, generation } => {
                        self.on_forwarded(conn, index, generation)
                    }
                    Msg::Unsubscribe => self.on_unsubscribe(conn),
                    // Released slots or consumed descriptors: the ring is
                    // drained above and the task flushes after this read.
                    Msg::Wake => self.drain_ring(conn),
                    other => {
                        tracing::warn!(pool = %self.name, subscriber = conn.bit, "shm-pool: dropping subscriber: unexpected {other:?}");
                        return ReadOutcome::Violated;
                    }
                }
            }
        }
        ReadOutcome::Open
    }

    /// Delivers queued messages until done (`Ok`) or the socket is full
    /// (`WouldBlock`). Descriptors go into the ring; what needs the socket
    /// (a header too long for a ring entry, SEGMENT, FORGET) is serialized
    /// for it behind a marker entry, which keeps one order. When the ring
    /// is full, its last entry becomes a spill marker and messages go over
    /// the socket until RESUME (see the channel). A subscriber that parked
    /// is woken once (WAKE) after entries were published. Raw non-blocking
    /// sends: callable from any context.
    pub(super) fn flush_out(&self, conn: &Conn, out: &mut Out) -> io::Result<()> {
        loop {
            if out.wbuf.is_empty() {
                let mut published = false;
                while let Some(front) = out.queue.front() {
                    // A SEGMENT must start a write (its fd travels with the
                    // write's first byte): it waits for the next batch.
                    if matches!(front, Outgoing::Segment { .. }) && !out.wbuf.is_empty() {
                        break;
                    }
                    // Everything but READY (sent before any descriptor,
                    // read by the handshake) goes in the ring's order.
                    let ordered = !matches!(front, Outgoing::Ready(_));
                    if ordered {
                        let room = conn.claims.desc_room(out.desc_head);
                        if out.spilling && room > 1 {
                            // Back to the ring, after the spill marker.
                            wire::encode(&Msg::Resume, &mut out.wbuf);
                            out.spilling = false;
                        } else if !out.spilling && room == 1 {
                            conn.claims.push_desc(&mut out.desc_head, &Entry::Spill);
                            published = true;
                            out.spilling = true;
                        } else if !out.spilling && room == 0 {
                            // Only a subscriber that broke its tail gets here.
                            conn.claims.request_kick(KICK_SPACE);
                            break;
                        }
                    }
                    let Some(o) = out.queue.pop_front() else {
                        break;
                    };
                    let inline = ordered && !out.spilling;
                    let msg = match o {
                        Outgoing::Ready(id) => Some(Msg::Ready { id }),
                        Outgoing::Desc { desc, header }
                            if inline && header.len() <= INLINE_HEADER =>
                        {
                            conn.claims
                                .push_desc(&mut out.desc_head, &Entry::Desc(desc, header));
                            published = true;
                            None
                        }
                        Outgoing::Fwd { desc, header }
                            if inline && header.len() <= INLINE_HEADER =>
                        {
                            conn.claims
                                .push_desc(&mut out.desc_head, &Entry::Fwd(desc, header));
                            published = true;
                            None
                        }
                        Outgoing::Desc { desc, header } => Some(Msg::Desc { desc, header }),
                        Outgoing::Fwd { desc, header } => Some(Msg::Fwd { desc, header }),
                        Outgoing::Forget(index) => Some(Msg::Forget { index }),
                        Outgoing::Segment { index, seg } => {
                            let msg = Msg::Segment {
                                index,
                                inode: seg.inode(),
                                len: seg.len(),
                                anchors: seg.anchors().len() as u32,
                            };
                            out.pass = Some(seg);
                            Some(msg)
                        }
                    };
                    if let Some(msg) = msg {
                        wire::encode(&msg, &mut out.wbuf);
                        if inline {
                            conn.claims.push_desc(&mut out.desc_head, &Entry::Socket);
                            published = true;
                        }
                    }
                    if out.wbuf.len() >= WRITE_BATCH {
                        break;
                    }
                }
                if published {
                    match conn.claims.take_parked() {
                        Some(channel::Parked::Socket) => wire::encode(&Msg::Wake, &mut out.wbuf),
                        Some(channel::Parked::Futex) => conn.claims.wake_futex(),
                        None => {}
                    }
                }
                if out.wbuf.is_empty() {
                    return Ok(());
                }
            }
            let r = match &out.pass {
                Some(seg) => {
                    // The segment, then its anchors (see `wire`, "Anchors").
                    let fds: Vec<BorrowedFd<'_>> = std::iter::once(seg.fd())
                        .chain(seg.anchors().iter().map(|a| a.as_fd()))
                        .collect();
                    sys::send_fd_nb(conn.stream.as_fd(), &out.wbuf, &fds)
                }
                None => sys::send_nb(conn.stream.as_fd(), &out.wbuf),
            };
            match r {
                Ok(n) => {
                    out.wbuf.advance(n);
                    // The fd went with the first byte written.
                    out.pass = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Flushes a connection now if it can; otherwise leaves the rest to its task.
    pub(super) fn flush_now(&self, conn: &Conn) {
        let r = {
            let mut out = lock(&conn.out);
            self.flush_out(conn, &mut out)
        };
        if r.is_err() {
            conn.wake.notify_one();
        }
    }
}

/// Serves one subscriber: reads its releases, writes what could not be
/// written at once, and forgets it when its socket closes.
///
/// When the publisher is dropped, a subscriber still holding forwarded frames
/// keeps its connection: the publisher's side shuts down for writing (the
/// subscriber sees the end of the stream, `Disconnected`) but goes on reading
/// releases, because each forward slot holds a slot of another pool that must
/// stay reserved until this subscriber's views of it drop.
pub(super) async fn conn_task(shared: Arc<Shared>, conn: Arc<Conn>) {
    let mut shut = false;
    let mut violated = false;
    loop {
        if conn.dead.load(Ordering::Acquire) {
            break;
        }
        let (want_write, pending) = {
            let out = lock(&conn.out);
            (out.wants_socket(), out.has_output())
        };
        if shared.closed.load(Ordering::Acquire) && !pending {
            if !shared.holds_forwarded(&conn) {
                break;
            }
            if !shut {
                shut = true;
                // Ignored if it fails: the subscriber then learns at EOF.
                let _ = rustix::net::shutdown(conn.stream.as_fd(), rustix::net::Shutdown::Write);
            }
        }
        let interest = if want_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        tokio::select! {
            r = conn.stream.ready(interest) => if r.is_err() { break },
            _ = conn.wake.notified() => {}
        }
        match shared.read_conn(&conn, true) {
            ReadOutcome::Open => {}
            ReadOutcome::Closed => break,
            ReadOutcome::Violated => {
                violated = true;
                break;
            }
        }
        let r = {
            let mut out = lock(&conn.out);
            conn.stream
                .try_io(Interest::WRITABLE, || shared.flush_out(&conn, &mut out))
        };
        match r {
            Ok(()) => shared.progress.notify_waiters(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    if shared.drop_conn(&conn, violated) {
        shared.wait_unanchored(&conn).await;
        shared.release_lingering(&conn);
    }
}
