//! The synchronisation primitives of the lifecycle core ([`crate::lifecycle`]
//! and the pool's idle count), in one place so that the `model-check` feature
//! can swap them for `loom`'s and model-check the protocol
//! (`tests/lifecycle_model.rs`) without rebuilding anything else.
//!
//! With `model-check` on, these types only work inside `loom::model`: build
//! with the feature only to run the model checks.

#[cfg(not(feature = "model-check"))]
pub(crate) use std::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering},
};

#[cfg(feature = "model-check")]
pub(crate) use loom::sync::{
    Condvar, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering},
};

/// Locks `mutex`, ignoring poisoning: the lifecycle's state stays consistent
/// across a panic (every update is a single assignment), and a poisoned lock
/// must not turn one contained host panic into a panic of the supervisor.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
