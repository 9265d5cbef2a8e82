//! Embedding wasi-threads in your own host: your `Linker`, your store data,
//! your host functions next to `thread-spawn` and WASI.
//!
//!     cargo run -p wasi-threads-host --example embed -- wasm-fixtures/rust-threads.wasm [ARGS]

use wasi_threads_host::{Outcome, SharedStdin, SharedWasi, WasiThreads, compile, engine_config};
use wasmtime::{Engine, Linker};
use wasmtime_wasi::WasiCtxBuilder;

/// Store data: every spawned thread gets a clone.
#[derive(Clone)]
struct State {
    wasi: SharedWasi,
}

fn main() -> wasmtime::Result<std::process::ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        wasmtime::bail!("usage: embed MODULE [ARGS]");
    };

    let engine = Engine::new(&engine_config())?; // threads, shared memory, multi-memory
    let module = compile(&engine, &std::fs::read(path)?)?; // routes atomic waits through the host
    let mut threads = WasiThreads::new(&engine, &module)?;
    let events = threads.events(); // spawned / exited, per TID
    let _cancel = threads.cancel_handle(); // usable from any thread

    let stdin = SharedStdin::inherit();
    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdout()
        .inherit_stderr()
        .stdin(stdin.clone())
        .args(&args);
    let wasi = SharedWasi::new(wasi.build_p1(), &threads).with_stdin(stdin);
    let store = threads.new_store(State { wasi })?; // same setup as every spawned store

    let mut linker = Linker::new(&engine);
    threads.add_to_linker(&mut linker, &store)?; // thread-spawn + the shared memory
    wasi_threads_host::wasi::add_to_linker(&mut linker, |s: &mut State| &mut s.wasi)?;
    linker.func_wrap("host", "answer", || 42)?; // your own imports, same linker

    let outcome = threads.run(&linker, store)?; // all threads joined when this returns
    let spawned = events
        .try_iter()
        .filter(|e| matches!(e, wasi_threads_host::ThreadEvent::Spawned { .. }))
        .count();
    match &outcome {
        Outcome::Exit { code, tid } => {
            eprintln!("embed: exit {code} from thread {tid}, {spawned} threads spawned")
        }
        Outcome::Trap { tid, trap } => eprintln!("embed: thread {tid} trapped: {}", trap.message()),
        other => eprintln!("embed: {other}"),
    }
    // The guest's status, truncated to 0..=255 as the OS would.
    Ok(std::process::ExitCode::from(outcome.exit_status() as u8))
}
