//! The synchronisation primitives of the lifecycle core ([`crate::program::lifecycle`]
//! and the pool's idle count) and of an adopted file's protocol
//! ([`crate::wasi::open_file`]), in one place so that `--cfg wasi_threads_loom` can
//! swap them for `loom`'s and model-check the protocols
//! (`tests/lifecycle_model.rs`, `tests/files_model.rs`), as tokio's
//! `--cfg loom` does (a name of our own: under `cfg(loom)` tokio leaves out
//! `tokio::net`, which wasmtime-wasi needs):
//!
//! ```text
//! RUSTFLAGS="--cfg wasi_threads_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p wasi-threads-host --test lifecycle_model --test files_model
//! ```
//!
//! Under `cfg(wasi_threads_loom)` these types only work inside `loom::model`:
//! it is a build for the model checks alone, never a cargo feature (features are
//! additive, and `--all-features` must give a working library).

#[cfg(not(wasi_threads_loom))]
pub(crate) use std::sync::{
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    atomic::{AtomicUsize, Ordering},
};

#[cfg(wasi_threads_loom)]
pub(crate) use loom::sync::{
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
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

/// Read-locks `lock`, ignoring poisoning (as [`lock`]).
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `lock`, ignoring poisoning (as [`lock`]).
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
