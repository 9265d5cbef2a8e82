//! How a stop reaches a thread that is running wasm: the program's stop
//! flag, which the checks the rewrite puts in every loop and in the entry of
//! the functions that need one read (see [`crate::rewrite`]).
//!
//! The flag is the first word of a one-page shared memory the host creates
//! for each program and every thread's instance imports, so raising it is a
//! single store that every thread of the program sees, and of no other
//! program: stops of one program cost the others on the same engine nothing.
//! A check that sees it set traps (`unreachable`); a thread whose wasm
//! trapped while the flag is raised was stopped ([`StopFlag::stopped`]).
//! The flag is raised only by the stop fan-out, after the program's first
//! cause is claimed, so a guest's own trap that races with the stop loses
//! nothing: whatever it was, it could no longer have ended the program.
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
        // reference, and wasm only ever accesses this word atomically (the
        // rewrite's checks are its only accesses), as `AtomicU32` does.
        unsafe { &*word }
    }

    /// Sets the flag: every check from now on, in every thread, unwinds.
    pub fn raise(&self) {
        self.word().store(1, Ordering::SeqCst);
    }

    fn is_raised(&self) -> bool {
        self.word().load(Ordering::SeqCst) != 0
    }

    /// Whether `err`, what a thread's wasm ended with, is a stop check's
    /// trap: an `unreachable` trap while the flag is raised. (A guest's
    /// own `unreachable` at that moment is taken for one too; the program
    /// is stopping, so it could not have been its cause.)
    pub fn stopped(&self, err: &wasmtime::Error) -> bool {
        err.downcast_ref::<Trap>() == Some(&Trap::UnreachableCodeReached) && self.is_raised()
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
