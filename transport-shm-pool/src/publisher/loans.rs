//! Slots reserved and not yet published: the guard that returns a slot if
//! a send fails, a loan of the slot memory (a [`Reserved`] slot of the
//! publisher's pool), and the read-only view of a loaned slot used while its
//! frame's header is encoded.

use super::*;
use crate::lease::{Reserved, SlotHome};

/// Returns a reserved, unpublished slot (pool or forward) to its free list
/// unless disarmed.
pub(super) struct SlotGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) index: Option<u32>,
}

impl SlotGuard {
    pub(super) fn disarm(mut self) -> u32 {
        // `index` is always Some until disarmed, and this consumes the guard.
        self.index.take().unwrap_or_default()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(i) = self.index.take() {
            self.shared.unreserve(i);
        }
    }
}

/// A slot lent through [`Publisher::loan`]: the writable slot memory itself.
pub(super) type SlotLoan = Reserved<Shared>;

impl SlotHome for Shared {
    fn slot_pool(&self) -> &SlotPool {
        &self.pool
    }

    fn give_back(&self, index: u32) {
        self.unreserve(index);
    }
}

/// A read-only view of a reserved slot, used as a loaned frame's payload
/// while its header is checked and encoded, and dropped before publishing.
pub(super) struct ReservedBytes {
    pub(super) shared: Arc<Shared>,
    pub(super) index: u32,
    pub(super) len: usize,
}

impl AsRef<[u8]> for ReservedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the slot is reserved by a `SlotGuard` that outlives this
        // value (`finish` drops the frame holding it before disarming the
        // guard), and nothing writes the slot meanwhile.
        unsafe { self.shared.pool.slot(self.index, self.len) }
    }
}
