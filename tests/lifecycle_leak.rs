//! A long-lived program that spawns with idle gaps longer than the
//! keep-alive must not leak OS threads or memory mappings: every worker that
//! leaves is joined. Alone in its test binary, because it counts the
//! process's threads and mappings.

// It reads /proc/self/task and /proc/self/maps, which only Linux has.
#![cfg(target_os = "linux")]

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use wasi_threads_host::{Outcome, SharedWasi, ThreadsConfig, WasiThreads, compile, engine_config};
use wasmtime::{Engine, Linker};
use wasmtime_wasi::WasiCtxBuilder;

/// Spawns 3000 threads one after another, each joined, with a 3 ms idle gap
/// after each; reports to `host.sample` after every spawn.
const SPAWN_WITH_GAPS: &str = r#"
(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "host" "sample" (func $sample (param i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (i32.atomic.store (i32.const 0) (i32.const 1))
    (drop (memory.atomic.notify (i32.const 0) (i32.const 1))))
  (func (export "_start")
    (local $i i32)
    (loop $again
      (i32.atomic.store (i32.const 0) (i32.const 0))
      (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 1)) (then (call $exit (i32.const 1))))
      (block $done
        (loop $wait
          (br_if $done (i32.eq (i32.atomic.load (i32.const 0)) (i32.const 1)))
          (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))
          (br $wait)))
      ;; An idle gap longer than the keep-alive.
      (drop (memory.atomic.wait32 (i32.const 64) (i32.const 0) (i64.const 3000000)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (call $sample (local.get $i))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 3000))))
    (call $exit (i32.const 0))))
"#;

#[derive(Clone)]
struct State {
    wasi: SharedWasi,
}

fn tasks() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn spawns_with_idle_gaps_leave_threads_and_mappings_flat() {
    let engine = Engine::new(&engine_config()).unwrap();
    let module = compile(&engine, SPAWN_WITH_GAPS.as_bytes()).unwrap();
    let config = ThreadsConfig::new().keep_alive(Duration::from_millis(1));
    let threads = WasiThreads::with_config(&engine, &module, config).unwrap();
    let wasi = threads.wasi(WasiCtxBuilder::new(), wasi_threads_host::Stdio::new());
    let store = threads.new_store(State { wasi }).unwrap();
    let mut linker = Linker::new(&engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)
        .unwrap();
    // (spawns so far, OS threads, mappings) after 300 and after 3000 spawns.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let recorded = samples.clone();
    linker
        .func_wrap("host", "sample", move |i: i32| {
            if i == 300 || i == 3000 {
                recorded.lock().push((i, tasks(), mappings()));
            }
        })
        .unwrap();
    let outcome = threads.run(&linker, store).unwrap();
    assert_eq!(outcome, Outcome::Exit { code: 0, tid: 0 });
    let samples = samples.lock().clone();
    let [
        (300, tasks_early, maps_early),
        (3000, tasks_late, maps_late),
    ] = samples[..]
    else {
        panic!("{samples:?}");
    };
    eprintln!(
        "after 300 spawns: {tasks_early} threads, {maps_early} mappings; \
         after 3000: {tasks_late} threads, {maps_late} mappings"
    );
    // A worker that leaves without being joined keeps its stack mapping (and
    // guard page): 2700 more spawns would add thousands.
    assert!(tasks_late <= tasks_early + 4, "{samples:?}");
    assert!(maps_late <= maps_early + 40, "{samples:?}");
}
