//! Checking what a descriptor names before a byte is read: pool slots
//! (DESC), forwarded segments (SEGMENT) and forwarded frames (FWD); then
//! the frame, as a view or a copy.

use super::*;

pub(super) fn invalid(what: String) -> Error {
    Error::invalid_reference("shm-pool", what)
}

/// Decodes the frame header carried by a descriptor for a payload of `len` bytes.
pub(super) fn decode_frame_header(header: &[u8], len: u64, max: u64) -> Result<Frame> {
    let prefix: &[u8; PREFIX_LEN] = header
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            Error::protocol(
                "shm-pool",
                "descriptor header shorter than the envelope prefix",
            )
        })?;
    let p = Prefix::decode(prefix, max)?;
    if p.payload_len != len {
        return Err(Error::protocol(
            "shm-pool",
            format!(
                "descriptor says {len} bytes, its frame header {}",
                p.payload_len
            ),
        ));
    }
    let body = &header[PREFIX_LEN..];
    if body.len() != p.header_len as usize {
        return Err(Error::protocol(
            "shm-pool",
            format!(
                "frame header of {} bytes, its prefix announces {}",
                body.len(),
                p.header_len
            ),
        ));
    }
    codec::decode_header(body, len)
}

impl ShmPoolSubscriber {
    /// In view mode, true (and the frame released, counted as lost) when
    /// `max_held` views of `kind` are alive: the caller drops the frame.
    pub(super) fn over_max_held(&mut self, kind: usize, index: u32, generation: u64) -> bool {
        let over = self.mode == RecvMode::View
            && self
                .max_held
                .is_some_and(|cap| self.link.views[kind].load(Ordering::Relaxed) >= cap);
        if over {
            self.link.release_now(index, generation);
            self.missed = self.missed.saturating_add(1);
            self.over_max_held.fetch_add(1, Ordering::Relaxed);
        }
        over
    }

    /// Checks a descriptor, claims its slot and builds the frame. `None`
    /// when the descriptor is skipped (taken back by the publisher under
    /// drop-oldest, or filtered by topic).
    pub(super) fn on_desc(&mut self, d: Desc, header: &[u8]) -> Option<Result<Frame>> {
        self.missed = self.missed.saturating_add(d.missed);
        let geo = self.link.seg.geometry();
        if d.segment != self.link.seg.id() {
            return Some(Err(invalid(format!(
                "descriptor names segment {}, but this subscriber of `{}` maps only segment {}",
                d.segment,
                self.name,
                self.link.seg.id()
            ))));
        }
        if d.index >= geo.slots {
            return Some(Err(invalid(format!(
                "slot index {} is out of range: pool `{}` has {} slots",
                d.index, self.name, geo.slots
            ))));
        }
        if d.len > geo.slot_size {
            return Some(Err(invalid(format!(
                "length {} runs past the end of slot {} (slot_size {})",
                d.len, d.index, geo.slot_size
            ))));
        }
        // The slot header is read before the claim, so that its cache
        // line and the claim word's travel at once, not one after the
        // other. That is sound: the publisher wrote the header before it
        // published the descriptor (whose stamp this side acquired), and it
        // rewrites the header only for a slot no claim holds, so once the
        // claim below succeeds at this generation, what was read is what
        // the slot holds for it.
        let (generation, len) = self.link.seg.header(d.index);
        match self
            .link
            .claims
            .take(d.index, d.generation, self.may_reclaim)
        {
            Take::Taken => {}
            Take::Stale => {
                self.missed = self.missed.saturating_add(1);
                return None;
            }
            Take::Invalid => {
                return Some(Err(invalid(format!(
                    "slot {} generation {} is not on offer to this subscriber (already taken, stale or forged)",
                    d.index, d.generation
                ))));
            }
        }
        // From here on the slot is ours: every way out releases it or hands
        // it to a view.
        if generation != d.generation || len != d.len {
            self.link.release_now(d.index, d.generation);
            return Some(Err(invalid(format!(
                "slot {} holds generation {generation} ({len} B) but the descriptor says generation {} ({} B)",
                d.index, d.generation, d.len
            ))));
        }
        let mut frame = match self.admit(
            header,
            d.index,
            d.generation,
            d.len,
            geo.slot_size,
            POOL_VIEWS,
        ) {
            Some(Ok(f)) => f,
            other => return other,
        };
        let len = d.len as usize;
        frame.payload = match self.mode {
            RecvMode::View => Bytes::from_owner({
                self.link.views[POOL_VIEWS].fetch_add(1, Ordering::Relaxed);
                SlotView {
                    link: self.link.clone(),
                    index: d.index,
                    generation: d.generation,
                    len,
                }
            }),
            _ => {
                // SAFETY: as in `SlotView::as_ref`: checked and claimed above,
                // released only after this copy.
                let src =
                    unsafe { std::slice::from_raw_parts(self.link.seg.slot_ptr(d.index), len) };
                let b = Bytes::copy_from_slice(src);
                self.link.release_now(d.index, d.generation);
                b
            }
        };
        self.deliver(frame)
    }

    /// The lag to report at once for a frame just dropped because of
    /// `max_held` (so a caller does not wait for the next frame to hear of it).
    /// The steps a slot that is now ours goes through before it becomes a
    /// frame, for pool and forward slots alike: decode its header, filter by
    /// topic, apply `max_held` to `kind` of views. `Some(Ok)` is the frame;
    /// on every other way out the slot was released (or reported as lag).
    fn admit(
        &mut self,
        header: &[u8],
        index: u32,
        generation: u64,
        len: u64,
        slot_size: u64,
        kind: usize,
    ) -> Option<Result<Frame>> {
        let frame = match decode_frame_header(header, len, slot_size) {
            Ok(f) => f,
            Err(e) => {
                self.link.release_now(index, generation);
                return Some(Err(e));
            }
        };
        if !frame.topic.starts_with(self.prefix.as_str()) {
            self.link.release_now(index, generation);
            return None;
        }
        if self.over_max_held(kind, index, generation) {
            return Some(Err(self.lagged_now()));
        }
        Some(Ok(frame))
    }

    pub(super) fn lagged_now(&mut self) -> Error {
        let missed = std::mem::take(&mut self.missed);
        StatCounters::add(&self.stats.lagged, missed);
        Error::Lagged { missed }
    }

    /// Stamps and counts a frame that arrived; reports the frames lost
    /// before it first (holding it for the next `recv`).
    pub(super) fn deliver(&mut self, mut frame: Frame) -> Option<Result<Frame>> {
        frame.stamp_received();
        StatCounters::add(&self.stats.frames_received, 1);
        StatCounters::add(&self.stats.bytes_received, frame.payload.len() as u64);
        if self.missed > 0 {
            let missed = std::mem::take(&mut self.missed);
            StatCounters::add(&self.stats.lagged, missed);
            self.held = Some(frame);
            return Some(Err(Error::Lagged { missed }));
        }
        Some(Ok(frame))
    }

    /// Maps a segment the publisher will forward frames from (SEGMENT).
    pub(super) fn on_segment(
        &mut self,
        index: u32,
        inode: u64,
        len: u64,
        anchors: u32,
    ) -> Result<()> {
        let fd = self
            .rx
            .take_fd()
            .ok_or_else(|| Error::protocol("shm-pool", "SEGMENT arrived without its fd"))?;
        // Take every descriptor this SEGMENT announced before checking any,
        // so that a refused one leaves none behind for the next message.
        let announced: Vec<Option<OwnedFd>> = (0..anchors.min(wire::MAX_ANCHORS + 1))
            .map(|_| self.rx.take_fd())
            .collect();
        if anchors > wire::MAX_ANCHORS {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "SEGMENT with {anchors} anchors (at most {})",
                    wire::MAX_ANCHORS
                ),
            ));
        }
        // The hops before this publisher's, then this connection's own.
        let mut held = Vec::with_capacity(anchors as usize + 1);
        for fd in announced {
            held.push(check_anchor(fd, "SEGMENT")?);
        }
        held.push(self.anchor.clone());
        if self.link.dead.load(Ordering::Acquire) {
            // Its publisher is gone: nothing will be forwarded from it. Its
            // fd and anchors (and any that came with it) are closed now.
            while self.rx.take_fd().is_some() {}
            return Ok(());
        }
        let mut table = lock(&self.link.fwd);
        let Some(entry) = table.get_mut(index as usize) else {
            return Err(Error::protocol(
                "shm-pool",
                format!(
                    "SEGMENT index {index} is out of range (below {})",
                    wire::MAX_FORWARD_SEGMENTS
                ),
            ));
        };
        if entry.is_some() {
            return Err(Error::protocol(
                "shm-pool",
                format!("SEGMENT index {index} is already in use (FORGET comes first)"),
            ));
        }
        // Pre-faulted only up to the size of the pool announced in HELLO.
        let populate_up_to = self.link.seg.geometry().len;
        let map = ForeignMap::open(fd, inode, len, held, populate_up_to)?;
        tracing::debug!(
            pool = %self.name,
            index,
            inode = map.inode(),
            len,
            "shm-pool: mapped a forwarded segment"
        );
        let map = Arc::new(map);
        map.registered().set_marker(Arc::new(Marker {
            link: Arc::downgrade(&self.link),
            foreign: Some(Arc::as_ptr(&map) as usize),
        }));
        *entry = Some(map);
        Ok(())
    }

    /// Checks a forwarded descriptor, claims its forward slot and builds the
    /// frame; `None` when skipped (taken back, or filtered by topic). A
    /// descriptor whose reference is bad reads nothing; if its claim was
    /// really on offer, the claim is released so the publisher's forward
    /// slot (and the upstream slot behind it) does not stay held.
    pub(super) fn on_fwd(&mut self, d: FwdDesc, header: &[u8]) -> Option<Result<Frame>> {
        self.missed = self.missed.saturating_add(d.missed);
        let geo = self.link.seg.geometry();
        let first = geo.slots;
        let end = wire::claim_entries(geo.slots);
        if d.index < first || d.index >= end {
            return Some(Err(invalid(format!(
                "forward claim index {} is out of range: pool `{}` has forward claims {first}..{end}",
                d.index, self.name
            ))));
        }
        if self.link.dead.load(Ordering::Acquire) {
            // Its publisher is gone and may have been killed: the upstream
            // slot behind this frame is no longer reserved for it.
            self.missed = self.missed.saturating_add(1);
            return None;
        }
        let seg = lock(&self.link.fwd)
            .get(d.segment as usize)
            .and_then(Option::clone);
        let bad = match &seg {
            None => Some(format!(
                "descriptor names forwarded segment {}, which the publisher of `{}` never sent",
                d.segment, self.name
            )),
            Some(_) if d.len > geo.slot_size => Some(format!(
                "forwarded length {} exceeds slot_size {}",
                d.len, geo.slot_size
            )),
            Some(m) if d.offset.checked_add(d.len).is_none_or(|e| e > m.len()) => Some(format!(
                "forwarded bytes {}..{}+{} run past the end of segment {} ({} bytes)",
                d.offset,
                d.offset,
                d.len,
                d.segment,
                m.len()
            )),
            Some(_) => None,
        };
        let seg = match (seg, bad) {
            (Some(seg), None) => seg,
            (_, bad) => {
                if self.link.claims.take(d.index, d.generation, false) == Take::Taken {
                    self.link.release_now(d.index, d.generation);
                }
                return Some(Err(invalid(bad.unwrap_or_default())));
            }
        };
        match self
            .link
            .claims
            .take(d.index, d.generation, self.may_reclaim)
        {
            Take::Taken => {}
            Take::Stale => {
                self.missed = self.missed.saturating_add(1);
                return None;
            }
            Take::Invalid => {
                return Some(Err(invalid(format!(
                    "forward slot {} generation {} is not on offer to this subscriber (already taken, stale or forged)",
                    d.index - first,
                    d.generation
                ))));
            }
        }
        // From here on the forward slot is ours: every way out releases it or
        // hands it to a view.
        let mut frame = match self.admit(
            header,
            d.index,
            d.generation,
            d.len,
            geo.slot_size,
            FWD_VIEWS,
        ) {
            Some(Ok(f)) => f,
            other => return other,
        };
        let len = d.len as usize;
        frame.payload = match self.mode {
            RecvMode::View => Bytes::from_owner({
                self.link.views[FWD_VIEWS].fetch_add(1, Ordering::Relaxed);
                if let Some(r) = lock(&self.link.fwd_ranges).get_mut((d.index - first) as usize) {
                    *r = Some((Arc::as_ptr(&seg) as usize, d.offset, d.len, d.generation));
                }
                FwdView {
                    link: self.link.clone(),
                    seg,
                    index: d.index,
                    generation: d.generation,
                    offset: d.offset,
                    len,
                }
            }),
            _ => {
                // SAFETY: as in `FwdView::as_ref`: checked and claimed above,
                // released only after this copy.
                let src = unsafe { std::slice::from_raw_parts(seg.ptr(d.offset), len) };
                let b = Bytes::copy_from_slice(src);
                self.link.release_now(d.index, d.generation);
                b
            }
        };
        self.deliver(frame)
    }
}
