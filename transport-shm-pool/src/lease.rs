//! The lease of a reserved, unpublished slot: what the publisher's `loan`
//! lends and what a [`SharedPool`](crate::shared::SharedPool) writer fills.
//! One type for both, generic over where the slot goes back.

use std::sync::Arc;

use transport_core::LoanBuffer;

use crate::pool::SlotPool;

/// The owner of a [`SlotPool`] that reserves its slots out: where a
/// [`Reserved`] slot goes back when it is dropped unpublished.
pub(crate) trait SlotHome: Send + Sync + 'static {
    /// The pool the slots are in.
    fn slot_pool(&self) -> &SlotPool;
    /// Takes back slot `index`, reserved and never published (a duplicate is
    /// the home's to refuse and count, never a panic: this runs in drops).
    fn give_back(&self, index: u32);
}

/// A slot of `H`'s pool reserved for one writer: the first `len` bytes are
/// writable by the holder of this value alone (popped from the free list,
/// not published: no reader, no holder). Dropped while armed, the slot goes
/// back to `H`; [`disarm`](Self::disarm) keeps it reserved for a publish.
pub(crate) struct Reserved<H: SlotHome> {
    home: Arc<H>,
    index: u32,
    len: usize,
    armed: bool,
}

impl<H: SlotHome> std::fmt::Debug for Reserved<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserved")
            .field("index", &self.index)
            .field("len", &self.len)
            .field("armed", &self.armed)
            .finish()
    }
}

impl<H: SlotHome> Reserved<H> {
    /// Takes over slot `index`, just popped from `home`'s free list, for a
    /// payload of `len` bytes (at most the slot size: checked by the caller).
    pub(crate) fn new(home: Arc<H>, index: u32, len: usize) -> Reserved<H> {
        debug_assert!(len as u64 <= home.slot_pool().slot_size());
        Reserved {
            home,
            index,
            len,
            armed: true,
        }
    }

    /// Where the slot goes back.
    pub(crate) fn home(&self) -> &Arc<H> {
        &self.home
    }

    /// The slot's index.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The writable length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// From now on the slot stays reserved when this value drops: the
    /// caller publishes it (or hands it to another guard).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl<H: SlotHome> LoanBuffer for Reserved<H> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: this value owns the reserved slot exclusively until it is
        // published or dropped (see the type's docs), and the slice borrows
        // it mutably; `len <= slot_size` was checked when it was made.
        unsafe { self.home.slot_pool().slot_mut(self.index, self.len) }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: as above; only this value writes the slot, through `&mut self`.
        unsafe { self.home.slot_pool().slot(self.index, self.len) }
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

impl<H: SlotHome> Drop for Reserved<H> {
    fn drop(&mut self) {
        if self.armed {
            self.home.give_back(self.index);
        }
    }
}
