//! Slots reserved and not yet published: the guard that returns a slot if
//! a send fails, a loan of the slot memory, and the read-only view of a
//! loaned slot used while its frame's header is encoded.

use super::*;

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
pub(super) struct SlotLoan {
    pub(super) shared: Arc<Shared>,
    pub(super) index: u32,
    pub(super) len: usize,
    pub(super) armed: bool,
}

impl LoanBuffer for SlotLoan {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the loan owns the reserved slot exclusively until it is sent
        // or dropped; `len <= slot_size` was checked when it was made.
        unsafe { self.shared.pool.slot_mut(self.index, self.len) }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: as above; only this loan writes the slot, through `&mut self`.
        unsafe { self.shared.pool.slot(self.index, self.len) }
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

impl Drop for SlotLoan {
    fn drop(&mut self) {
        if self.armed {
            self.shared.unreserve(self.index);
        }
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
