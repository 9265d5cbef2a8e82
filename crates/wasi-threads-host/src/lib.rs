//! A wasi-threads host for Wasmtime 48.
//!
//! Modules built for `wasm32-wasip1-threads` (Rust) or with wasi-libc's
//! pthreads (C) import `wasi` `thread-spawn` and a shared memory, and export
//! `wasi_thread_start(tid, arg)`. This crate runs them:
//!
//! - `thread-spawn` goes into your own [`wasmtime::Linker`], next to your
//!   other host functions, and gives every spawned thread its own OS thread,
//!   `Store` and instance over the program's one shared memory;
//! - [`SharedWasi`] is WASI preview1 from `wasmtime-wasi` with one fd table
//!   for all threads;
//! - a supervisor learns of every spawn, exit, trap and `proc_exit`, stops
//!   every other thread and joins it, and hands you one [`Outcome`]. Nothing
//!   here ever ends your process.
//!
//! [`Runner`] does all of it for the common case; [`WasiThreads`] is the
//! embedding API underneath it.
//!
//! # Engine configuration
//!
//! The engine needs threads, shared memory and epoch interruption (the
//! supervisor stops running threads with one epoch tick); [`engine_config`]
//! returns such a configuration. Stores of other programs on the same engine
//! only see an epoch tick when a program ends.

mod memory;
mod pool;
mod program;
mod rewrite;
mod runner;
mod spawn;
mod stdin;
mod stop;
mod supervisor;
mod tid;
mod wait;
pub mod wasi;

pub use memory::{ImportedMemory, MemoryPlan};
pub use program::{
    DEFAULT_JOIN_TIMEOUT, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_THREADS, DEFAULT_STACK_SIZE,
    ThreadsConfig, WasiThreads, engine_config,
};
pub use rewrite::{GuestModule, OffsetMap, compile, compile_guest, compile_guest_cached, rewrite};
pub use runner::Runner;
pub use spawn::{EAGAIN, ENOSYS};
pub use stdin::SharedStdin;
pub use stop::{StopSignal, Stopped};
pub use supervisor::{CancelHandle, MAIN_TID, Outcome, ThreadEvent, ThreadExit, TrapInfo};
pub use tid::{MAX_TID, TidAllocator};
pub use wasi::SharedWasi;
