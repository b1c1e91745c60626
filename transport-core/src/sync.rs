//! The one poison-tolerant lock helper.
//!
//! framewire's locks guard a few field updates each and are never held
//! across an `.await` or a call that can panic halfway through an update, so
//! a lock poisoned by a panic elsewhere still guards consistent data: recover
//! it rather than spread the panic. (`parking_lot`, which has no poisoning,
//! was measured slower on the ZeroMQ publisher's contended lock on a loaded
//! two-core host, so the standard mutex stays.)

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering the guard if a panic poisoned it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().expect("lock");
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
