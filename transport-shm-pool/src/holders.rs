//! The generation + holder-mask engine of a published slot, one for the
//! publisher's accounting and for the [`SharedPool`](crate::shared::SharedPool).
//!
//! Each publication of a slot gets a new generation (never 0, so that a
//! zeroed reference is never valid) and a bitmask of holders (up to 64); a
//! release names the generation and the holder's bit, and the slot is free
//! again once the last holder let go.

/// A slot's publication and who holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Holders {
    generation: u64,
    mask: u64,
}

impl Holders {
    /// The generation of the slot's current (or last) publication.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The holders' bits.
    pub(crate) fn mask(&self) -> u64 {
        self.mask
    }

    /// Starts a new publication: the next generation, never 0.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generation = self.generation.wrapping_add(1).max(1);
        self.generation
    }

    /// Sets who holds the publication.
    pub(crate) fn set_mask(&mut self, mask: u64) {
        self.mask = mask;
    }

    /// The holder with bit `bit` holds the slot.
    pub(crate) fn held_by(&self, bit: u64) -> bool {
        self.mask & bit != 0
    }

    /// The holder with bit `bit` holds the slot's publication `generation`:
    /// what a release must name to count.
    pub(crate) fn held_at(&self, generation: u64, bit: u64) -> bool {
        self.generation == generation && self.held_by(bit)
    }

    /// The holder with bit `bit` lets go; true when nobody holds the slot
    /// any more.
    pub(crate) fn drop_holder(&mut self, bit: u64) -> bool {
        self.mask &= !bit;
        self.mask == 0
    }

    /// Nobody holds the slot.
    pub(crate) fn is_free(&self) -> bool {
        self.mask == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_skip_zero_and_the_last_holder_frees() {
        let mut h = Holders::default();
        assert_eq!(h.next_generation(), 1);
        h.set_mask(0b101);
        assert!(h.held_at(1, 0b1) && h.held_at(1, 0b100));
        assert!(!h.held_at(2, 0b1) && !h.held_by(0b10));
        assert!(!h.drop_holder(0b1));
        assert!(!h.held_by(0b1));
        assert!(h.drop_holder(0b100) && h.is_free());
        let mut wrapped = Holders {
            generation: u64::MAX,
            mask: 0,
        };
        assert_eq!(wrapped.next_generation(), 1, "never 0");
    }
}
