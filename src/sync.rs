//! The crate's one rule for `std::sync::Mutex`: a poisoned lock is recovered, never turned
//! into a second panic. Every mutex here guards a small map or list that each critical
//! section leaves consistent (an insert, a remove, a swap), and none is held across an
//! `.await` or user code; a panic under one is a bug already logged by the panicking task,
//! and the data plane must keep serving and draining. `clippy.toml` forbids calling
//! `Mutex::lock` anywhere else, so the rule cannot drift again.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking it over if a thread panicked while holding it.
#[allow(clippy::disallowed_methods)] // the one place the rule allows it
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
            let _guard = lock(&m2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
