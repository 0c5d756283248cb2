//! A lock that ignores poisoning: no lock in this crate is held across code that can
//! panic halfway through an update (handlers run outside the locks).

use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
