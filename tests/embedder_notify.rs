//! An embedder wakes a parked guest thread from inside a host function,
//! through `WasiThreads::notifier` (Wasmtime's own
//! `SharedMemory::atomic_notify` does not reach the host's parking lot).
//!
//! The guest thread proceeds only when its wait returns 0 ("woken by a
//! notify"): the value it waits on never changes, so nothing else can wake it.

use std::time::{Duration, Instant};
use wasi_threads_host::{Outcome, SharedWasi, ThreadsConfig, WasiThreads, compile, engine_config};
use wasmtime::{Engine, Linker};
use wasmtime_wasi::WasiCtxBuilder;

#[derive(Clone)]
struct State {
    wasi: SharedWasi,
}

const GUEST: &str = r#"(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "host" "wake" (func $wake (param i32) (result i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (loop $wait
      (br_if $wait (memory.atomic.wait32 (i32.const 16) (i32.const 0) (i64.const -1))))
    (call $exit (i32.const 42)))
  (func (export "_start")
    (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 0)) (then unreachable))
    ;; The host wakes the thread parked on 16; then main parks for good.
    (if (i32.ne (call $wake (i32.const 16)) (i32.const 1)) (then unreachable))
    (loop $park
      (drop (memory.atomic.wait32 (i32.const 32) (i32.const 0) (i64.const -1)))
      (br $park))))"#;

#[test]
fn a_host_function_wakes_a_parked_guest_thread() {
    let engine = Engine::new(&engine_config()).unwrap();
    let module = compile(&engine, GUEST.as_bytes()).unwrap();
    let threads = WasiThreads::with_config(
        &engine,
        &module,
        ThreadsConfig::new().timeout(Duration::from_secs(20)),
    )
    .unwrap();
    let notifier = threads
        .notifier()
        .expect("the module imports a shared memory");
    let wasi = threads.wasi(WasiCtxBuilder::new(), wasi_threads_host::Stdio::new());
    let store = threads.new_store(State { wasi }).unwrap();
    let mut linker = Linker::new(&engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)
        .unwrap();
    linker
        .func_wrap(
            "host",
            "wake",
            move |address: i32| -> wasmtime::Result<i32> {
                // The thread may not have parked yet: notify until it is woken.
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(10) {
                    let woken = notifier.notify(address as u32 as u64, 1)?;
                    if woken > 0 {
                        return Ok(woken as i32);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(0)
            },
        )
        .unwrap();
    let outcome = threads.run(&linker, store).unwrap();
    assert!(
        matches!(outcome, Outcome::Exit { code: 42, tid } if tid != 0),
        "{outcome}"
    );
}
