//! Forwarding without a copy: the foreign segments a publisher announces
//! (SEGMENT / FORGET) and publishing a forward slot.

use super::*;

impl Shared {
    /// A forward slot stops forwarding: its payload to the graveyard, its
    /// segment's reference dropped. Nothing for a pool slot.
    pub(super) fn end_forward(&self, st: &mut State, index: u32) {
        let Some(k) = index.checked_sub(self.pool_slots()) else {
            return;
        };
        let f = &mut st.fwd[k as usize];
        let seg = f.seg;
        if let Some(p) = f.payload.take() {
            st.graveyard.push(p);
            self.seg_unref(st, seg);
        }
    }

    /// The index subscribers will know `seg` by, with one more reference
    /// (the forward slot about to be published in it); `None` when all
    /// [`wire::MAX_FORWARD_SEGMENTS`] indices are in use by frames in flight.
    ///
    /// Segments whose upstream mapping is gone and that no frame in flight
    /// uses are forgotten first; then, if no index is free, one that no frame
    /// in flight uses.
    pub(super) fn seg_ref(&self, st: &mut State, seg: &Arc<SegFd>) -> Option<u32> {
        let found = st
            .segs
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| Arc::ptr_eq(&s.seg, seg)));
        let i = match found {
            Some(i) => i,
            None => {
                for i in 0..st.segs.len() {
                    if st.segs[i]
                        .as_ref()
                        .is_some_and(|s| s.refs == 0 && !s.seg.is_mapped())
                    {
                        self.forget_seg(st, i);
                    }
                }
                let i = match st.segs.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        let i = st
                            .segs
                            .iter()
                            .position(|s| s.as_ref().is_some_and(|s| s.refs == 0))?;
                        self.forget_seg(st, i);
                        i
                    }
                };
                st.segs[i] = Some(FwdSeg {
                    seg: seg.clone(),
                    sent_to: 0,
                    refs: 0,
                });
                i
            }
        };
        let s = st.segs[i].as_mut()?;
        s.refs += 1;
        Some(i as u32)
    }

    /// Drops a reference taken by [`seg_ref`](Self::seg_ref); a segment
    /// whose upstream mapping is gone is forgotten with its last reference.
    pub(super) fn seg_unref(&self, st: &mut State, index: u32) {
        let i = index as usize;
        let Some(s) = st.segs.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 && !s.seg.is_mapped() {
            self.forget_seg(st, i);
        }
    }

    /// Frees segment index `i`, telling every subscriber that was sent it
    /// (FORGET). Only for a segment no frame in flight uses.
    pub(super) fn forget_seg(&self, st: &mut State, i: usize) {
        let Some(s) = st.segs.get_mut(i).and_then(Option::take) else {
            return;
        };
        debug_assert_eq!(s.refs, 0);
        let mut m = s.sent_to;
        while m != 0 {
            let b = m.trailing_zeros() as usize;
            m &= m - 1;
            if let Some(Some(c)) = st.conns.get(b) {
                // A connection that is gone (or lingers) sends nothing more.
                if !c.dead.load(Ordering::Acquire) {
                    lock(&c.out).forget(i as u32);
                    c.wake.notify_one();
                }
            }
        }
    }

    /// Forgets the forwarded segments that no frame in flight uses and that
    /// are no longer mapped in this process (FORGET to the subscribers that
    /// were sent them). Run by [`sweep_task`] whenever a mapping goes away
    /// anywhere in the process: without it, such a segment would stay
    /// announced, and its anchors open (keeping upstream slots reserved),
    /// until the next forward needed its index.
    pub(super) fn sweep_unmapped(&self) {
        let mut st = lock(&self.state);
        for i in 0..st.segs.len() {
            if st.segs[i]
                .as_ref()
                .is_some_and(|s| s.refs == 0 && !s.seg.is_mapped())
            {
                self.forget_seg(&mut st, i);
            }
        }
    }

    /// Hands forward slot `index` to every matching subscriber: `payload`
    /// is bytes `offset..` of forwarded segment `seg` (which holds a
    /// reference for this frame, see [`seg_ref`](Self::seg_ref)) and stays
    /// there; the slot keeps it, and so its upstream slot, until every
    /// subscriber released it. A subscriber is sent the segment itself
    /// (SEGMENT with its fd) before its first descriptor in it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish_fwd(
        &self,
        index: u32,
        seg: u32,
        offset: u64,
        payload: Bytes,
        header: Bytes,
        topic: &str,
        seq: u64,
        targets: &mut Vec<Arc<Conn>>,
    ) {
        let k = (index - self.pool_slots()) as usize;
        let len = payload.len() as u64;
        let mut st = lock(&self.state);
        let State {
            slots,
            fwd,
            segs,
            conns,
            in_flight,
            graveyard,
            ..
        } = &mut *st;
        let mut mask = 0u64;
        if let Some(fs) = segs.get_mut(seg as usize).and_then(Option::as_mut) {
            let s = &mut slots[index as usize];
            let generation = s.hold.next_generation();
            for c in conns.iter().flatten() {
                if c.active.load(Ordering::Acquire) && topic.starts_with(c.prefix.as_str()) {
                    let bit = 1u64 << c.bit;
                    mask |= bit;
                    let mut out = lock(&c.out);
                    if fs.sent_to & bit == 0 {
                        fs.sent_to |= bit;
                        out.queue.push_back(Outgoing::Segment {
                            index: seg,
                            seg: fs.seg.clone(),
                        });
                    }
                    c.claims.offer(index, generation);
                    let desc = FwdDesc {
                        segment: seg,
                        index,
                        generation,
                        offset,
                        len,
                        missed: 0,
                    };
                    out.push_desc(Outgoing::Fwd {
                        desc,
                        header: header.clone(),
                    });
                    targets.push(c.clone());
                }
            }
        }
        if mask == 0 {
            // Nobody to send it to after all (or no such segment): let go.
            graveyard.push(payload);
            self.seg_unref(&mut st, seg);
            unlock(st);
            self.unreserve(index);
            return;
        }
        let s = &mut slots[index as usize];
        s.hold.set_mask(mask);
        s.forwarded = 0;
        s.seq = seq;
        s.in_flight = true;
        *in_flight += 1;
        fwd[k] = FwdSlot {
            payload: Some(payload),
            seg,
        };
        self.set_queued(&st);
        drop(st);
        for c in targets.drain(..) {
            self.flush_now(&c);
        }
    }
}
