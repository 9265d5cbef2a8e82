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
//!   for all threads, its stdin, stdout and stderr given once as a
//!   [`Stdio`], shared without one thread ever stalling another;
//! - a supervisor learns of every spawn, exit, trap and `proc_exit`, stops
//!   every other thread and joins it, and hands you one [`Outcome`]. Nothing
//!   here ever ends your process.
//!
//! [`Runner`] does all of it for the common case:
//!
//! ```
//! use wasi_threads_host::{Outcome, Runner, Stdio};
//!
//! # fn main() -> wasmtime::Result<()> {
//! // A program whose main thread spawns a thread and waits until the new
//! // thread has written its TID to address 0; then exits with that TID.
//! let program = r#"(module
//!     (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
//!     (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
//!     (import "env" "memory" (memory 1 1 shared))
//!     (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
//!       (i32.atomic.store (i32.const 0) (local.get $tid))
//!       (drop (memory.atomic.notify (i32.const 0) (i32.const 1))))
//!     (func (export "_start")
//!       (drop (call $spawn (i32.const 0)))
//!       (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))
//!       (call $exit (i32.atomic.load (i32.const 0)))))"#;
//!
//! let outcome = Runner::new()
//!     .stdio(Stdio::new())
//!     .timeout(std::time::Duration::from_secs(30))
//!     .run_bytes(program.as_bytes())?;
//! // The first spawned thread's TID is 1; the outcome names the thread that
//! // ended the program.
//! assert_eq!(outcome, Outcome::Exit { code: 1, tid: 0 });
//! assert_eq!(outcome.exit_status(), 1);
//! # Ok(()) }
//! ```
//!
//! [`Runner::schedule`] runs a program's threads one at a time on a seeded
//! [`Schedule`], so that every interleaving replays exactly, and
//! [`explore()`] searches many schedules for one that makes a program fail
//! (see `docs/schedule.md`).
//!
//! [`WasiThreads`] is the embedding API underneath [`Runner`], for your own
//! [`wasmtime::Linker`], store data and host functions; its documentation
//! has an example.
//!
//! # Engine configuration
//!
//! The engine needs threads, shared memory and multi-memory;
//! [`engine_config`] returns such a configuration. Modules must be compiled
//! with [`compile`] (or a [`ModuleCache`]), which adds
//! the checks through which a stop reaches running threads and routes
//! `memory.atomic.wait` through the host: the host does not use epoch
//! interruption, so an embedder's epochs and deadlines are its own, and a
//! program's stop costs other programs on the same engine nothing.
//!
//! # Cargo features
//!
//! Default: `cranelift`, `wat`, `parallel-compilation`, `demangle`,
//! `addr2line`. A minimal embedder uses `default-features = false, features
//! = ["cranelift"]` (or `winch`: one compiler is required). Optional:
//! `cache`, `pooling-allocator`, `backtrace`, `profiling`, `debug-builtins`,
//! `coredump`, `gc`, each forwarding to Wasmtime's feature of that name.

#![warn(missing_docs)]

// `compile` needs a compiler; the embedder picks which.
#[cfg(not(any(feature = "cranelift", feature = "winch")))]
compile_error!("wasi-threads-host needs a compiler: enable its `cranelift` or `winch` feature");

mod explore;
mod program;
mod rewrite;
mod runner;
mod schedule;
mod sync;
mod wasi;
mod wasi_threads;

/// The errno values `thread-spawn` returns, negated, to a guest that could
/// not get a thread (a guest may pass them on as its exit code). They are
/// WASI's numbers, not the host libc's: `EAGAIN` is 6 here and 11 on Linux.
pub mod errno {
    /// `EAGAIN`: a limit was hit ([`ThreadsConfig::max_threads`](crate::ThreadsConfig::max_threads)),
    /// or the program is ending; wasi-libc's `pthread_create` reports it as
    /// `EAGAIN` too.
    pub const EAGAIN: i32 = 6;
    /// `ENOSYS`: the module cannot start threads at all (it exports no
    /// `wasi_thread_start(i32, i32)`).
    pub const ENOSYS: i32 = 52;
}

pub use program::{
    CancelHandle, MAIN_TID, MAX_TID, Notifier, Outcome, ThreadEvent, ThreadExit, TrapInfo,
};
pub use rewrite::{
    CompiledModule, DEFAULT_CACHE_SIZE, Granularity, ModuleCache, OffsetMap, compile,
    compile_scheduled,
};
#[cfg(feature = "function-cache")]
pub use rewrite::{DEFAULT_FUNCTION_CACHE_SIZE, FunctionCache, FunctionCacheStats};
// For the differential fuzzer (crates/rewrite-diff); not part of the API.
pub use explore::{Explore, ExploreReport, Failure, Mix, Run, explore};
#[doc(hidden)]
pub use rewrite::{rewrite, rewrite_with_map};
pub use runner::Runner;
pub use schedule::{
    DEFAULT_PCT_DEPTH, DEFAULT_PCT_LENGTH, Schedule, ScheduleLog, ScheduleReport, Strategy, Switch,
    Trace, TraceParseError, VIRTUAL_EPOCH_SECS,
};
pub use wasi::stdin::SharedStdin;
pub use wasi::stdio::{MemoryOutput, SharedOutput};
pub use wasi::{SharedWasi, Stdio};
pub use wasi_threads::{
    DEFAULT_JOIN_TIMEOUT, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_THREADS, DEFAULT_STACK_SIZE,
    HOST_STACK_RESERVE, ThreadsConfig, WasiThreads, engine_config,
};

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The schedule mode's guide (`docs/schedule.md`), its example compiled as a
/// doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/schedule.md")]
pub struct ScheduleDoctests;

/// The lifecycle core, the pool's idle count and an adopted file's protocol,
/// exposed only to the model checks in `tests/lifecycle_model.rs` and
/// `tests/files_model.rs` (built with `--cfg wasi_threads_loom`, which puts them on
/// `loom`'s primitives). Not part of the API.
#[cfg(wasi_threads_loom)]
#[doc(hidden)]
pub mod model_check {
    pub use crate::program::lifecycle::{Cause, Closed, Lifecycle, Phase};
    pub use crate::program::pool::IdleCount;
    pub use crate::wasi::open_file::{At, Description, OpenFile, Whence};

    /// A trap as a guest's `unreachable` gives it.
    pub fn trap_info() -> crate::TrapInfo {
        let trap = wasmtime::Trap::UnreachableCodeReached;
        crate::TrapInfo::new(trap.to_string(), None, trap.into())
    }
}
