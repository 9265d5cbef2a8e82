//! The life of one program: everything from `thread-spawn` to the
//! [`Outcome`]. [`WasiThreads`](crate::WasiThreads) ties these pieces
//! together (with the WASI layer) for an embedder's `Linker` and store data.
//!
//! What this part owns:
//!
//! - `lifecycle`: the phases of a program and its one stop sequence (the
//!   first cause wins, every thread is stopped and joined), model-checked in
//!   `tests/lifecycle_model.rs`, and the [`CancelHandle`] that ends it;
//! - `outcome`: what the embedder sees of a run ([`Outcome`],
//!   [`ThreadExit`], [`TrapInfo`], [`ThreadEvent`]), as plain data;
//! - `spawn`: a thread's life, from admission to its one report;
//!   `pool`: the OS threads that run them; `tid`: thread ids;
//! - `stop`: the signal every thread looks at, wherever it is blocked;
//!   `interrupt`: the flag through which a stop reaches running wasm;
//!   `wait`: `memory.atomic.wait`/`notify`, routed through the host so that
//!   a stop can wake a waiter; `memory`: the one shared memory.
//!
//! What it may use: the rewrite's import names and offset map
//! ([`crate::rewrite`]), the schedule mode's scheduler
//! ([`crate::schedule`], at spawns, exits and waits) and [`crate::sync`]. What it must not: the WASI
//! layer ([`crate::wasi`]), which builds on this part's stop signal, never
//! the other way round, or the API on top ([`crate::WasiThreads`],
//! [`crate::Runner`]).

pub(crate) mod interrupt;
pub(crate) mod lifecycle;
pub(crate) mod memory;
pub(crate) mod outcome;
pub(crate) mod pool;
pub(crate) mod spawn;
pub(crate) mod stop;
pub(crate) mod tid;
pub(crate) mod wait;

pub use lifecycle::CancelHandle;
pub use outcome::{MAIN_TID, Outcome, ThreadEvent, ThreadExit, TrapInfo};
pub use tid::MAX_TID;
pub use wait::Notifier;
