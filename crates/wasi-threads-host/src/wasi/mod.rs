//! WASI preview1 for every thread of a program, with one fd table.
//!
//! What this part owns:
//!
//! - [`SharedWasi`] (`shared_wasi`): `wasmtime-wasi`'s context behind one
//!   lock, each call raced against the program's stop, and
//!   [`add_to_linker`];
//! - the calls the host answers beside that lock, each pinned to the answer
//!   the context would give (`docs/file-layer.md` lists them): `files` and
//!   `open_file` (reads, writes and seeks of opened files; the latter's
//!   protocol is model-checked in `tests/files_model.rs`), `readdir`,
//!   `stat` and `fifo` (Linux);
//! - the program's stdio, given once as a [`Stdio`] (`streams`):
//!   [`SharedOutput`](crate::SharedOutput) (`stdio`, stdout and stderr
//!   written without the lock, each write whole) and [`SharedStdin`](crate::SharedStdin)
//!   (`stdin`, input awaited before the lock is taken).
//!
//! What it may use: the program's stop signal (the crate's `program` part),
//! the schedule mode's scheduler (virtual sleeps, `sched_yield` as a
//! scheduling point), and `sync`. What it must not: the rewrite,
//! or the program's lifecycle: a WASI call learns of a stop only through the
//! stop signal.

#[cfg(target_os = "linux")]
mod fifo;
mod files;
pub(crate) mod open_file;
mod readdir;
mod shared_wasi;
#[cfg(target_os = "linux")]
mod stat;
pub(crate) mod stdin;
pub(crate) mod stdio;
mod streams;

pub use shared_wasi::SharedWasi;
pub(crate) use shared_wasi::add_to_linker;
pub use streams::Stdio;
