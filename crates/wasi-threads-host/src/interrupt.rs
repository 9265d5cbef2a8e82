//! How a stop reaches a thread that is running wasm: the program's stop
//! flag, which the checks the rewrite puts in every loop and in the entry of
//! the functions that need one read (see [`crate::rewrite`]).
//!
//! The flag is the first word of a one-page shared memory the host creates
//! for each program and every thread's instance imports, so raising it is a
//! single store that every thread of the program sees, and of no other
//! program: stops of one program cost the others on the same engine nothing.
//! A check that sees it set calls the host's `stopped`, which unwinds the
//! thread with [`Stopped`].
//!
//! This replaces Wasmtime's epoch interruption, which the host no longer
//! needs: an embedder's epochs, deadlines and callbacks are theirs alone.
//! Epochs check at every function entry (four loads and a compare, and a
//! frame that saves registers for the cold path, even in leaf functions);
//! the flag is checked only where a thread could otherwise run on, and each
//! check is an atomic load (a plain `mov` on x86-64, a load-acquire on
//! aarch64) behind two loads the compiler hoists out of loops, and a branch
//! that is never taken until the end.

use crate::rewrite::{HOST_MODULE, STOP_FLAG, STOPPED};
use crate::stop::Stopped;
use std::sync::atomic::{AtomicU32, Ordering};
use wasmtime::{AsContext, Engine, Linker, MemoryType, Result, SharedMemory};

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

    /// Defines the flag's memory and `stopped` in `linker`. `store` is any
    /// store of the same data type (Wasmtime needs one to define a memory).
    pub fn add_to_linker<T: 'static>(
        &self,
        linker: &mut Linker<T>,
        store: impl AsContext<Data = T>,
    ) -> Result<()> {
        linker.define(store, HOST_MODULE, STOP_FLAG, self.page.clone())?;
        let flag = self.clone();
        linker.func_wrap(HOST_MODULE, STOPPED, move || -> Result<()> {
            // Only a check that saw the flag calls this. A module that calls
            // it otherwise (one written to pass the rewrite's verification)
            // must not end a thread as if the program were stopping, with no
            // cause for its end: that is a trap like any other.
            if flag.is_raised() {
                Err(Stopped.into())
            } else {
                Err(wasmtime::format_err!(
                    "`{HOST_MODULE}.{STOPPED}` called while the program is not stopping"
                ))
            }
        })?;
        Ok(())
    }
}
