//! How a stop reaches a thread that is running wasm: the program's stop
//! flag, which the checks the rewrite puts in every loop and in the entry of
//! the functions that need one read (see [`crate::rewrite`]).
//!
//! The flag is the first word of a one-page shared memory the host creates
//! for each program and every thread's instance imports, so raising it is a
//! single store that every thread of the program sees, and of no other
//! program: stops of one program cost the others on the same engine nothing.
//! A check that sees it set traps (`unreachable`), and such a trap in a
//! program that is stopping is a stopped thread ([`is_check_trap`]). It is
//! the program's phase that tells, not the flag: a guest can write the flag
//! (a module that imports it is verified to check it, not to leave it
//! alone), and a program whose guest raised it itself must end with that
//! trap as its cause, not wait for one forever with every thread
//! "stopped". A guest's own `unreachable` racing with a stop is taken for a
//! check's trap too, which loses nothing: a cause was claimed before the
//! flag was raised, so that trap could no longer have ended the program.
//!
//! This replaces Wasmtime's epoch interruption, which the host no longer
//! needs: an embedder's epochs, deadlines and callbacks are theirs alone.
//! Epochs check at every function entry (four loads and a compare, and a
//! frame that saves registers for the cold path, even in leaf functions);
//! the flag is checked only where a thread could otherwise run on, and each
//! check is an atomic load (a plain `mov` on x86-64, a load-acquire on
//! aarch64) behind two loads the compiler hoists out of loops, and a
//! conditional trap, which (unlike a call) clobbers no register.

use crate::rewrite::{HOST_MODULE, STOP_FLAG};
use std::sync::atomic::{AtomicU32, Ordering};
use wasmtime::{AsContext, Engine, Linker, MemoryType, Result, SharedMemory, Trap};

/// Whether `err`, what a thread's wasm ended with, is the trap of a stop
/// check: an `unreachable` trap. Only meaningful once the program is
/// stopping (see the module docs).
pub(crate) fn is_check_trap(err: &wasmtime::Error) -> bool {
    err.downcast_ref::<Trap>() == Some(&Trap::UnreachableCodeReached)
}

/// One program's stop flag.
#[derive(Clone)]
pub(crate) struct StopFlag {
    page: SharedMemory,
}

impl StopFlag {
    pub fn new(engine: &Engine) -> Result<Self> {
        Ok(StopFlag {
            page: SharedMemory::new(engine, MemoryType::shared(1, 1))?,
        })
    }

    fn word(&self) -> &AtomicU32 {
        let word = self.page.data().as_ptr().cast::<AtomicU32>();
        // SAFETY: the page is 64 KiB, page-aligned (so aligned for a u32)
        // and lives as long as `self.page`, which the returned reference
        // borrows; `UnsafeCell<u8>` allows writes through a shared
        // reference, and the host only ever accesses this word atomically.
        // Wasm's accesses (the checks' atomic loads, or whatever a module
        // that imports the flag does to it) are machine instructions on a
        // shared memory, as for any `SharedMemory`, not Rust accesses.
        unsafe { &*word }
    }

    /// Sets the flag: every check from now on, in every thread, unwinds.
    pub fn raise(&self) {
        self.word().store(1, Ordering::SeqCst);
    }

    /// Defines the flag's memory in `linker`. `store` is any store of the
    /// same data type (Wasmtime needs one to define a memory).
    pub fn add_to_linker<T: 'static>(
        &self,
        linker: &mut Linker<T>,
        store: impl AsContext<Data = T>,
    ) -> Result<()> {
        linker.define(store, HOST_MODULE, STOP_FLAG, self.page.clone())?;
        Ok(())
    }
}
