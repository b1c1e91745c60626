//! A FIFO that remembers, for each item, how many items were dropped just
//! before it, so that a reader learns of a gap exactly where it happened.

use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) struct LagQueue<T> {
    items: VecDeque<(u64, T)>,
    /// Dropped items not yet attached to a later item.
    carry: u64,
}

impl<T> LagQueue<T> {
    pub fn new() -> Self {
        LagQueue {
            items: VecDeque::new(),
            carry: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items lost before the next item pushed (and not attached to one yet).
    pub fn carry(&self) -> u64 {
        self.carry
    }

    /// Records `n` items lost upstream, before the next item pushed.
    pub fn add_lag(&mut self, n: u64) {
        self.carry = self.carry.saturating_add(n);
    }

    /// Appends an item; any carried lag is reported before it.
    pub fn push(&mut self, item: T) {
        let lag = std::mem::take(&mut self.carry);
        self.items.push_back((lag, item));
    }

    /// Drops the oldest item; the gap is reported before the next one.
    pub fn drop_oldest(&mut self) -> Option<T> {
        let (lag, item) = self.items.pop_front()?;
        let gap = lag.saturating_add(1);
        match self.items.front_mut() {
            Some(next) => next.0 = next.0.saturating_add(gap),
            None => self.carry = self.carry.saturating_add(gap),
        }
        Some(item)
    }

    /// The oldest item and the number of items lost just before it.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        self.items.pop_front()
    }

    /// Takes everything, returning how many items there were.
    pub fn clear(&mut self) -> usize {
        let n = self.items.len();
        self.items.clear();
        self.carry = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_reported_where_they_happened() {
        let mut q = LagQueue::new();
        for i in 0..5 {
            if q.len() == 2 {
                q.drop_oldest();
            }
            q.push(i);
        }
        // 0, 1, 2 dropped; 3 and 4 kept.
        assert_eq!(q.pop(), Some((3, 3)));
        assert_eq!(q.pop(), Some((0, 4)));
        assert_eq!(q.pop(), None);
        // Depth 1: the gap carries to the item pushed next.
        q.push(10);
        q.drop_oldest();
        q.add_lag(2);
        q.push(11);
        assert_eq!(q.pop(), Some((3, 11)));
        assert_eq!(q.carry(), 0);
    }
}
