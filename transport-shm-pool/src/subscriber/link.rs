//! What a subscriber's views share with it (the link): the socket's write
//! side and the task that writes releases, the release ring, `max_held`
//! counts, FORWARDED, the hang-up watch, and the views themselves.

use super::*;

impl LinkIo {
    pub(super) fn append(&self, out: &mut BytesMut, c: &Ctl) {
        match c {
            Ctl::Release(index, generation) => wire::encode(
                &Msg::Release {
                    index: *index,
                    generation: *generation,
                },
                out,
            ),
            Ctl::Unsubscribe => wire::encode(&Msg::Unsubscribe, out),
            Ctl::Wake => wire::encode(&Msg::Wake, out),
            Ctl::Kick => {}
        }
    }

    /// Writes what is buffered; `WouldBlock` when the socket is full. A broken
    /// socket drops the buffer (the publisher is gone; nothing to release to).
    pub(super) fn flush(&self) -> io::Result<()> {
        let mut out = lock(&self.out);
        while !out.is_empty() {
            match sys::send_nb(self.stream.as_fd(), &out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => out.clear(),
            }
        }
        Ok(())
    }
}

/// Calls [`Link::hung_up`] as soon as the publisher's end of the socket
/// closes (its process exited or was killed), whether or not the subscriber
/// is inside `recv`: a killed forwarder's upstream slots then wait only for
/// live views here, not for the next `recv`. Ends with the link.
pub(super) async fn hangup_task(
    watch: AsyncFd<OwnedFd>,
    link: Weak<Link>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    tokio::select! {
        r = watch.readable() => {
            if r.is_ok() && let Some(l) = link.upgrade() {
                l.hung_up();
            }
        }
        _ = stop => {}
    }
}

impl ForwardMark for Marker {
    fn mark(&self, offset: u64, len: u64) -> bool {
        self.link
            .upgrade()
            .is_some_and(|l| l.mark_forwarded(self.foreign, offset, len))
    }
}

/// Decrements a count, never below 0 (never panics: runs in drops).
pub(super) fn saturating_dec(n: &AtomicUsize) {
    let _ = n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
}

impl Link {
    /// Writes FORWARDED for every slot of this publisher that holds bytes
    /// `offset .. offset + len` of the pool (`foreign` `None`) or of the
    /// forwarded segment mapped at `foreign`, and is held by a view here.
    /// True once written; false (the caller copies) when none is held or
    /// the socket cannot take it at once.
    pub(super) fn mark_forwarded(&self, foreign: Option<usize>, offset: u64, len: u64) -> bool {
        if self.dead.load(Ordering::Acquire) {
            return false;
        }
        let geo = self.seg.geometry();
        let mut held: Vec<(u32, u64)> = Vec::new();
        match foreign {
            None => {
                let Some(rel) = offset.checked_sub(geo.data_offset) else {
                    return false;
                };
                let (k, within) = (rel / geo.stride, rel % geo.stride);
                if k >= u64::from(geo.slots) || within.saturating_add(len) > geo.slot_size {
                    return false;
                }
                match self.claims.taken_generation(k as u32) {
                    Some(g) => held.push((k as u32, g)),
                    None => return false,
                }
            }
            Some(map) => {
                let ranges = lock(&self.fwd_ranges);
                for (k, r) in ranges.iter().enumerate() {
                    let Some((m, off, l, g)) = *r else { continue };
                    let index = geo.slots + k as u32;
                    if m == map
                        && off <= offset
                        && offset.saturating_add(len) <= off.saturating_add(l)
                        && self.claims.taken_generation(index) == Some(g)
                    {
                        held.push((index, g));
                    }
                }
            }
        }
        if held.is_empty() {
            return false;
        }
        {
            let mut out = lock(&self.io.out);
            for &(index, generation) in &held {
                wire::encode(&Msg::Forwarded { index, generation }, &mut out);
            }
        }
        let uncount = |held: &[(u32, u64)]| {
            for &(index, generation) in held {
                self.uncount(index, generation);
            }
        };
        match self.io.flush() {
            Ok(()) => {
                uncount(&held);
                true
            }
            Err(_) => {
                // Written later by the task; this frame is copied.
                let _ = self.tx.send(Ctl::Kick);
                false
            }
        }
    }

    pub(super) fn kind_of(&self, index: u32) -> usize {
        if index < self.seg.geometry().slots {
            POOL_VIEWS
        } else {
            FWD_VIEWS
        }
    }

    /// The view of claim `index` at `generation` was forwarded: from now on
    /// it does not count against `max_held` (the publisher it went to
    /// bounds it with its own forward slots). Once per view.
    pub(super) fn uncount(&self, index: u32, generation: u64) {
        let Some(w) = self.uncounted.get(index as usize) else {
            return;
        };
        if w.swap(generation, Ordering::AcqRel) != generation {
            saturating_dec(&self.views[self.kind_of(index)]);
        }
    }

    /// A view of claim `index` at `generation` dropped: it stops counting,
    /// unless it had already stopped (forwarded).
    pub(super) fn view_dropped(&self, index: u32, generation: u64) {
        let forwarded = self.uncounted.get(index as usize).is_some_and(|w| {
            w.compare_exchange(generation, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if !forwarded {
            saturating_dec(&self.views[self.kind_of(index)]);
        }
    }

    /// The publisher is gone (its end of the socket closed): no FWD still
    /// in the socket will be taken, no SEGMENT mapped, and the forwarded
    /// segments are let go now, so that their anchors close as soon as no
    /// view holds them, whether or not anyone is in `recv`.
    pub(super) fn hung_up(&self) {
        self.dead.store(true, Ordering::Release);
        let gone: Vec<_> = lock(&self.fwd).iter_mut().map(Option::take).collect();
        drop(gone);
    }

    /// Publishes the release of pool slot `index` in the channel's release
    /// ring: no message, no system call unless the publisher waits for it
    /// (then one WAKE). False when it must go over the socket instead: a
    /// forward slot (a forwarder must hear of it at once, to release the
    /// upstream slot behind it), a full ring, or another thread publishing
    /// a release at this instant (never waits: this runs in drops).
    /// `direct`: write the WAKE from this thread (in `recv`), else through
    /// the task (in a drop).
    pub(super) fn release_shm(&self, index: u32, generation: u64, direct: bool) -> bool {
        if index >= self.seg.geometry().slots {
            return false;
        }
        let Ok(mut head) = self.rel_head.try_lock() else {
            return false;
        };
        if !self.claims.push_release(&mut head, index, generation) {
            return false;
        }
        drop(head);
        if self.claims.take_kick(KICK_RELEASES) {
            self.wake_publisher(direct);
        }
        true
    }

    /// Sends WAKE to the publisher.
    pub(super) fn wake_publisher(&self, direct: bool) {
        if !direct {
            let _ = self.tx.send(Ctl::Wake);
            return;
        }
        {
            let mut out = lock(&self.io.out);
            self.io.append(&mut out, &Ctl::Wake);
        }
        if self.io.flush().is_err() {
            let _ = self.tx.send(Ctl::Kick);
        }
    }

    /// Sends a release from `recv` itself (owned mode, rejected descriptors):
    /// through the release ring for a pool slot, else written at once when
    /// the socket has room, by the task otherwise.
    pub(super) fn release_now(&self, index: u32, generation: u64) {
        if self.release_shm(index, generation, true) {
            return;
        }
        {
            let mut out = lock(&self.io.out);
            self.io.append(&mut out, &Ctl::Release(index, generation));
        }
        if self.io.flush().is_err() {
            let _ = self.tx.send(Ctl::Kick);
        }
    }
}

/// Writes releases for the views (and the unsubscribe) and ends, closing the
/// socket, once the subscriber and all its views are gone.
pub(super) async fn release_task(io: Arc<LinkIo>, mut rx: mpsc::UnboundedReceiver<Ctl>) {
    while let Some(first) = rx.recv().await {
        {
            let mut out = lock(&io.out);
            io.append(&mut out, &first);
            while let Ok(c) = rx.try_recv() {
                io.append(&mut out, &c);
            }
        }
        loop {
            match io.stream.try_io(Interest::WRITABLE, || io.flush()) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if io.stream.writable().await.is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

impl AsRef<[u8]> for SlotView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the slot was checked (index in range, len <= slot_size,
        // generation matches the slot header) and claimed (TAKEN) before this
        // view was made; the publisher does not write a slot while any
        // subscriber holds it, and this one holds it until this view drops. The
        // mapping is read-only and lives in `link` as long as `self`.
        unsafe { std::slice::from_raw_parts(self.link.seg.slot_ptr(self.index), self.len) }
    }
}

impl Drop for SlotView {
    fn drop(&mut self) {
        self.link.view_dropped(self.index, self.generation);
        // Never blocks, never panics: the release ring (atomics, a try-lock),
        // else a lock-free channel push. If the task is gone (runtime shut
        // down), the socket closes when the link does and the publisher
        // frees the slot on EOF.
        if !self.link.release_shm(self.index, self.generation, false) {
            let _ = self.link.tx.send(Ctl::Release(self.index, self.generation));
        }
    }
}

impl AsRef<[u8]> for FwdView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `offset + len` was checked to lie within the mapping before
        // this view was made, and the forward claim was taken (TAKEN): the
        // publisher holds the frame's upstream view, and so the upstream slot,
        // until this subscriber releases the claim, which happens when this
        // view drops; nobody writes a reserved slot. The mapping is read-only
        // and lives in `seg` as long as `self`.
        unsafe { std::slice::from_raw_parts(self.seg.ptr(self.offset), self.len) }
    }
}

impl Drop for FwdView {
    fn drop(&mut self) {
        self.link.view_dropped(self.index, self.generation);
        // As for `SlotView`: a lock-free push, never blocking or panicking.
        let _ = self.link.tx.send(Ctl::Release(self.index, self.generation));
    }
}
