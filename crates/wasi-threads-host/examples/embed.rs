//! Embedding: your own `Linker` and store data, with a host function of
//! your own beside `thread-spawn` and WASI.
//!
//!     cargo run -p wasi-threads-host --example embed -- wasm-fixtures/rust-threads.wasm

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use wasi_threads_host::{Outcome, SharedWasi, Stdio, WasiThreads, compile, engine_config};
use wasmtime::{Caller, Engine, Linker};

/// Store data: every spawned thread's store gets a clone.
#[derive(Clone)]
struct State {
    wasi: SharedWasi,
    answers: Arc<AtomicU32>,
}

/// Runs `wasm`; returns its outcome and how often its threads called `host.answer`.
pub fn run(wasm: &[u8], stdio: Stdio) -> wasmtime::Result<(Outcome, u32)> {
    let engine = Engine::new(&engine_config())?; // threads, shared memory
    let module = compile(&engine, wasm)?; // the checks through which a stop reaches threads
    let threads = WasiThreads::new(&engine, &module)?;
    let answers = Arc::new(AtomicU32::new(0));
    let wasi = threads.wasi(wasmtime_wasi::WasiCtxBuilder::new(), stdio); // one fd table
    let store = threads.new_store(State {
        wasi,
        answers: answers.clone(),
    })?;
    let mut linker = Linker::new(&engine);
    threads.add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)?;
    linker.func_wrap("host", "answer", |caller: Caller<'_, State>| {
        caller.data().answers.fetch_add(1, Relaxed);
        42
    })?;
    let outcome = threads.run(&linker, store)?; // every thread joined when it returns
    Ok((outcome, answers.load(Relaxed)))
}

fn main() -> wasmtime::Result<std::process::ExitCode> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| wasmtime::format_err!("usage: embed MODULE"))?;
    let (outcome, answers) = run(&std::fs::read(path)?, Stdio::inherit())?;
    eprintln!("embed: {outcome}; host.answer called {answers} times");
    Ok(std::process::ExitCode::from(outcome.exit_status() as u8))
}
