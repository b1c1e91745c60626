//! Taking a lent buffer back in a publisher's `send_loan`.
//!
//! A backend that lends its shared memory in place gets the buffer of a
//! [`Loan`](transport_core::Loan) back as a `Box<dyn LoanBuffer>`: its own
//! lease type, the heap buffer of a default loan, or a buffer another
//! backend lent (a caller's mistake). [`take_back`] sorts the three.

use bytes::{Bytes, BytesMut};
use transport_core::{Error, LoanBuffer, Result};

/// What [`take_back`] found in a returned loan buffer.
#[derive(Debug)]
pub enum Returned<T> {
    /// The backend's own lease type (whether it is this publisher's lease is
    /// for the caller to check).
    Own(Box<T>),
    /// The bytes of a heap loan: to send as an ordinary frame.
    Heap(Bytes),
}

/// Downcasts a returned loan buffer to the lease type `T`, or to the heap
/// buffer of a default loan; anything else is [`Error::ForeignLoan`].
pub fn take_back<T: LoanBuffer>(buf: Box<dyn LoanBuffer>) -> Result<Returned<T>> {
    match buf.into_any().downcast::<T>() {
        Ok(own) => Ok(Returned::Own(own)),
        Err(other) => match other.downcast::<BytesMut>() {
            Ok(heap) => Ok(Returned::Heap(heap.freeze())),
            Err(_) => Err(Error::ForeignLoan),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mine(Vec<u8>);
    impl LoanBuffer for Mine {
        fn as_mut_slice(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn as_slice(&self) -> &[u8] {
            &self.0
        }
        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            self
        }
    }

    struct Theirs;
    impl LoanBuffer for Theirs {
        fn as_mut_slice(&mut self) -> &mut [u8] {
            &mut []
        }
        fn as_slice(&self) -> &[u8] {
            &[]
        }
        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            self
        }
    }

    #[test]
    fn sorts_own_heap_and_foreign_buffers() {
        let own = take_back::<Mine>(Box::new(Mine(vec![1, 2])));
        assert!(matches!(own, Ok(Returned::Own(m)) if m.0 == [1, 2]));
        let heap = take_back::<Mine>(Box::new(BytesMut::from(&b"abc"[..])));
        assert!(matches!(heap, Ok(Returned::Heap(b)) if b == b"abc"[..]));
        let foreign = take_back::<Mine>(Box::new(Theirs));
        assert!(matches!(foreign, Err(Error::ForeignLoan)));
    }
}
