//! The program lifecycle as an embedder sees it: instantiation under the
//! deadline and the cancel handle, causal event order, the first cause
//! winning over a later cancel, abandoned threads reported, and the memory
//! and stack limits.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasi_threads_host::{
    MAIN_TID, Outcome, Runner, SharedWasi, ThreadEvent, ThreadExit, ThreadsConfig, WasiThreads,
    compile, engine_config,
};
use wasmtime::{Engine, Linker};
use wasmtime_wasi::WasiCtxBuilder;

fn engine() -> Engine {
    Engine::new(&engine_config()).unwrap()
}

#[derive(Clone)]
struct State {
    wasi: SharedWasi,
}

/// Runs `threads` with WASI and `extra` host functions in the linker.
fn run_with(
    engine: &Engine,
    threads: WasiThreads<State>,
    extra: impl FnOnce(&mut Linker<State>),
) -> wasmtime::Result<Outcome> {
    let wasi = threads.wasi(WasiCtxBuilder::new(), wasi_threads_host::Stdio::new());
    let store = threads.new_store(State { wasi }).unwrap();
    let mut linker = Linker::new(engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)
        .unwrap();
    extra(&mut linker);
    threads.run(&linker, store)
}

/// A start function that never returns.
const LOOPING_START: &str = r#"
(module
  (func $forever (loop $l (br $l)))
  (start $forever)
  (func (export "_start")))
"#;

/// The same in a threaded module, whose start function spawns first.
const THREADED_LOOPING_START: &str = r#"
(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func $forever
    (if (i32.eqz (i32.atomic.rmw.cmpxchg (i32.const 0) (i32.const 0) (i32.const 1)))
      (then (drop (call $spawn (i32.const 0)))))
    (loop $l (br $l)))
  (start $forever)
  (func (export "wasi_thread_start") (param i32 i32) (loop $l (br $l)))
  (func (export "_start")))
"#;

#[test]
fn a_start_function_that_loops_forever_times_out() {
    for guest in [LOOPING_START, THREADED_LOOPING_START] {
        let start = Instant::now();
        let outcome = Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .timeout(Duration::from_millis(300))
            .run_bytes(guest.as_bytes())
            .unwrap();
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}

#[test]
fn a_start_function_that_loops_forever_can_be_cancelled() {
    let outcome = Runner::new()
        .stdio(wasi_threads_host::Stdio::new())
        .on_start(|cancel| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                cancel.cancel();
            });
        })
        .run_bytes(LOOPING_START.as_bytes())
        .unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
}

/// The start function of the first instance spawns a thread, which exits
/// the program with its start argument while `_start` waits forever.
const SPAWN_FROM_START: &str = r#"
(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func $init
    (if (i32.eqz (i32.atomic.rmw.cmpxchg (i32.const 0) (i32.const 0) (i32.const 1)))
      (then (if (i32.lt_s (call $spawn (i32.const 42)) (i32.const 1)) (then unreachable)))))
  (start $init)
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (call $exit (local.get $arg)))
  (func (export "_start")
    (loop $l
      (drop (memory.atomic.wait32 (i32.const 4) (i32.const 0) (i64.const -1)))
      (br $l))))
"#;

#[test]
fn a_thread_spawned_from_a_start_function_runs_like_any_other() {
    let engine = engine();
    let module = compile(&engine, SPAWN_FROM_START.as_bytes()).unwrap();
    let mut threads = WasiThreads::new(&engine, &module).unwrap();
    let events = threads.events();
    let outcome = run_with(&engine, threads, |_| {}).unwrap();
    assert_eq!(outcome, Outcome::Exit { code: 42, tid: 1 });
    let events: Vec<ThreadEvent> = events.try_iter().collect();
    assert_eq!(
        events.first(),
        Some(&ThreadEvent::Spawned { tid: 1 }),
        "{events:?}"
    );
    assert!(events.contains(&ThreadEvent::Exited {
        tid: 1,
        exit: ThreadExit::Exit(42)
    }));
}

/// Spawns 8 threads that return at once; exits when all have run.
const EIGHT_QUICK_THREADS: &str = r#"
(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))
    (drop (memory.atomic.notify (i32.const 0) (i32.const 1))))
  (func (export "_start")
    (local $i i32) (local $n i32)
    (loop $spawn
      (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 1)) (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spawn (i32.lt_u (local.get $i) (i32.const 8))))
    (block $done
      (loop $wait
        (local.set $n (i32.atomic.load (i32.const 0)))
        (br_if $done (i32.eq (local.get $n) (i32.const 8)))
        (drop (memory.atomic.wait32 (i32.const 0) (local.get $n) (i64.const -1)))
        (br $wait)))
    (call $exit (i32.const 0))))
"#;

#[test]
fn events_arrive_in_causal_order() {
    let engine = engine();
    let module = compile(&engine, EIGHT_QUICK_THREADS.as_bytes()).unwrap();
    for round in 0..30 {
        let mut threads = WasiThreads::new(&engine, &module).unwrap();
        let events = threads.events();
        let outcome = run_with(&engine, threads, |_| {}).unwrap();
        assert_eq!(outcome, Outcome::Exit { code: 0, tid: 0 });
        let events: Vec<ThreadEvent> = events.try_iter().collect();
        for tid in 1..=8 {
            let spawned = events
                .iter()
                .position(|e| *e == ThreadEvent::Spawned { tid })
                .unwrap_or_else(|| panic!("round {round}: no Spawned for {tid}: {events:?}"));
            let exited = events
                .iter()
                .position(|e| matches!(e, ThreadEvent::Exited { tid: t, .. } if *t == tid))
                .unwrap_or_else(|| panic!("round {round}: no Exited for {tid}: {events:?}"));
            assert!(spawned < exited, "round {round}: {events:?}");
        }
        // Every Spawned precedes the main thread's exit, which waited for
        // all of them.
        let main_exit = events
            .iter()
            .position(|e| matches!(e, ThreadEvent::Exited { tid: MAIN_TID, .. }))
            .unwrap();
        assert_eq!(
            events[..main_exit]
                .iter()
                .filter(|e| matches!(e, ThreadEvent::Spawned { .. }))
                .count(),
            8,
            "round {round}: {events:?}"
        );
    }
}

/// Spawns a thread that spins forever, then exits with 3.
const EXIT_WHILE_SPINNING: &str = r#"
(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func (export "wasi_thread_start") (param i32 i32)
    (i32.atomic.store (i32.const 0) (i32.const 1))
    (loop $l (br $l)))
  (func (export "_start")
    (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 1)) (then unreachable))
    (loop $l (br_if $l (i32.eqz (i32.atomic.load (i32.const 0)))))
    (call $exit (i32.const 3))))
"#;

#[test]
fn a_cancel_after_another_cause_changes_nothing() {
    let engine = engine();
    let module = compile(&engine, EXIT_WHILE_SPINNING.as_bytes()).unwrap();
    let mut threads = WasiThreads::new(&engine, &module).unwrap();
    let events = threads.events();
    let cancel = threads.cancel_handle();
    // Cancels as soon as it hears of the exit, while the program stops.
    let watcher = std::thread::spawn(move || {
        for event in events {
            if matches!(event, ThreadEvent::Exited { tid: MAIN_TID, .. }) {
                cancel.cancel();
                cancel.cancel();
            }
        }
    });
    let start = Instant::now();
    let outcome = run_with(&engine, threads, |_| {}).unwrap();
    assert_eq!(outcome, Outcome::Exit { code: 3, tid: 0 });
    assert!(start.elapsed() < Duration::from_secs(5));
    watcher.join().unwrap();
}

#[test]
fn a_cancel_before_run_ends_the_program_before_it_starts() {
    let engine = engine();
    let module = compile(&engine, EXIT_WHILE_SPINNING.as_bytes()).unwrap();
    let mut threads = WasiThreads::new(&engine, &module).unwrap();
    let events = threads.events();
    let cancel = threads.cancel_handle();
    let wasi = threads.wasi(WasiCtxBuilder::new(), wasi_threads_host::Stdio::new());
    let store = threads.new_store(State { wasi }).unwrap();
    let mut linker = Linker::new(&engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)
        .unwrap();
    cancel.cancel();
    let outcome = threads.run(&linker, store).unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    // Nothing ran.
    assert_eq!(events.try_iter().count(), 0);
    // After the run, cancelling does nothing.
    cancel.cancel();
}

/// A spawned thread blocks in a host function that ignores the stop; the
/// main thread then exits with 5.
const STUCK_IN_HOST: &str = r#"
(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "host" "block" (func $block))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func (export "wasi_thread_start") (param i32 i32)
    (i32.atomic.store (i32.const 0) (i32.const 1))
    (call $block))
  (func (export "_start")
    (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 1)) (then unreachable))
    (loop $l (br_if $l (i32.eqz (i32.atomic.load (i32.const 0)))))
    (call $exit (i32.const 5))))
"#;

#[test]
fn a_thread_stuck_in_host_code_is_abandoned_and_reported() {
    let engine = engine();
    let module = compile(&engine, STUCK_IN_HOST.as_bytes()).unwrap();
    let config = ThreadsConfig::new().join_timeout(Duration::from_millis(300));
    let mut threads = WasiThreads::with_config(&engine, &module, config).unwrap();
    let events = threads.events();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let start = Instant::now();
    let outcome = run_with(&engine, threads, |linker| {
        linker
            .func_wrap("host", "block", move || {
                let _ = released.lock().recv();
            })
            .unwrap();
    })
    .unwrap();
    assert_eq!(outcome, Outcome::Exit { code: 5, tid: 0 });
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let events: Vec<ThreadEvent> = events.try_iter().collect();
    assert!(
        events.contains(&ThreadEvent::Abandoned { tid: 1 }),
        "{events:?}"
    );
    assert!(!events.contains(&ThreadEvent::Abandoned { tid: MAIN_TID }));
    release.send(()).unwrap();
}

/// Declares a 1 GiB maximum; grows to 64 MiB, then one page more, and exits
/// with 0 only if the first growth worked and the second returned -1.
fn grow_guest(memory: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  {memory}
  (func (export "_start")
    (if (i32.ne (memory.grow (i32.const 1023)) (i32.const 1)) (then (call $exit (i32.const 10))))
    (if (i32.ne (memory.grow (i32.const 1)) (i32.const -1)) (then (call $exit (i32.const 11))))
    (if (i32.ne (memory.size) (i32.const 1024)) (then (call $exit (i32.const 12))))
    (call $exit (i32.const 0))))"#
    )
}

const SHARED_1GIB: &str =
    r#"(import "env" "memory" (memory 1 16384 shared)) (export "memory" (memory 0))"#;
const OWN_1GIB: &str = r#"(memory (export "memory") 1 16384)"#;
const MIB_64: u64 = 64 << 20;

#[test]
fn max_memory_caps_a_shared_memory_that_declares_1_gib() {
    let engine = engine();
    let module = compile(&engine, grow_guest(SHARED_1GIB).as_bytes()).unwrap();
    let config = ThreadsConfig::new().max_memory(MIB_64);
    let threads = WasiThreads::with_config(&engine, &module, config).unwrap();
    let memory = threads.memory().unwrap();
    assert_eq!(memory.ty().maximum(), Some(1024));
    assert_eq!(
        run_with(&engine, threads, |_| {}).unwrap(),
        Outcome::Exit { code: 0, tid: 0 }
    );
    // Without the cap the second growth succeeds.
    let threads = WasiThreads::new(&engine, &module).unwrap();
    assert_eq!(
        run_with(&engine, threads, |_| {}).unwrap(),
        Outcome::Exit { code: 11, tid: 0 }
    );
}

#[test]
fn runner_max_memory_caps_shared_and_own_memories() {
    for memory in [SHARED_1GIB, OWN_1GIB] {
        let outcome = Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .max_memory(MIB_64)
            .run_bytes(grow_guest(memory).as_bytes())
            .unwrap();
        assert_eq!(outcome, Outcome::Exit { code: 0, tid: 0 }, "{memory}");
    }
}

#[test]
fn a_minimum_above_max_memory_is_a_load_error() {
    let guest = r#"(module
      (import "env" "memory" (memory 2048 16384 shared))
      (func (export "_start")))"#;
    let engine = engine();
    let module = compile(&engine, guest.as_bytes()).unwrap();
    let config = ThreadsConfig::<State>::new().max_memory(MIB_64);
    let err = WasiThreads::with_config(&engine, &module, config)
        .err()
        .expect("a load error");
    let message = format!("{err:#}");
    assert!(message.contains("memory limit"), "{message}");
    let err = Runner::new()
        .stdio(wasi_threads_host::Stdio::new())
        .max_memory(MIB_64)
        .run_bytes(guest.as_bytes())
        .unwrap_err();
    assert!(format!("{err:#}").contains("memory limit"), "{err:#}");
}

#[test]
fn an_os_stack_too_small_for_the_wasm_stack_is_a_configuration_error() {
    let engine = engine();
    let module = compile(&engine, LOOPING_START.as_bytes()).unwrap();
    let config = ThreadsConfig::<State>::new().stack_size(256 << 10);
    let err = WasiThreads::with_config(&engine, &module, config)
        .err()
        .expect("a configuration error");
    assert!(format!("{err:#}").contains("max_wasm_stack"), "{err:#}");

    // A runner given an engine whose max_wasm_stack differs says so.
    let err = Runner::new()
        .engine(engine)
        .stdio(wasi_threads_host::Stdio::new())
        .max_wasm_stack(4 << 20)
        .run_bytes(LOOPING_START.as_bytes())
        .unwrap_err();
    assert!(format!("{err:#}").contains("max_wasm_stack"), "{err:#}");
}

/// Recurses without bound.
const RECURSE: &str = r#"
(module
  (func $deep (param i32) (result i32)
    (i32.add (call $deep (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
  (func (export "_start") (drop (call $deep (i32.const 0)))))
"#;

#[test]
fn a_large_wasm_stack_gets_an_os_stack_that_holds_it() {
    // 16 MiB of wasm stack is twice the default OS stack: without a matching
    // OS stack, the recursion would hit the guard page (SIGSEGV).
    let outcome = Runner::new()
        .stdio(wasi_threads_host::Stdio::new())
        .max_wasm_stack(16 << 20)
        .run_bytes(RECURSE.as_bytes())
        .unwrap();
    match outcome {
        Outcome::Trap { tid: 0, trap } => {
            assert!(
                trap.message().contains("stack exhausted"),
                "{}",
                trap.message()
            )
        }
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
}
