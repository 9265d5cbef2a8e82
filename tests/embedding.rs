//! The embedding API: `WasiThreads` in an embedder's own `Linker` next to
//! its own host functions, the `Runner`, custom stdio, the event stream,
//! cancellation and exact `memory.atomic.wait` semantics after the rewrite.

mod common;

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasi_threads_host::{
    MAIN_TID, Outcome, Runner, SharedWasi, ThreadEvent, ThreadExit, ThreadsConfig, WasiThreads,
    compile, engine_config,
};
use wasmtime::{Engine, Linker, Trap};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Spawns four threads (start args 100..=103) that each report to the host
/// function `host.record`, bump a counter and notify; `_start` waits on the
/// counter with memory.atomic.wait32 and exits with it.
const RECORDING_GUEST: &str = r#"
(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "host" "record" (func $record (param i32 i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (call $record (local.get $tid) (local.get $arg))
    (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))
    (drop (memory.atomic.notify (i32.const 0) (i32.const 1))))
  (func (export "_start")
    (local $i i32) (local $n i32)
    (loop $spawn
      (if (i32.lt_s (call $spawn (i32.add (local.get $i) (i32.const 100))) (i32.const 1))
        (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spawn (i32.lt_u (local.get $i) (i32.const 4))))
    (block $done
      (loop $wait
        (local.set $n (i32.atomic.load (i32.const 0)))
        (br_if $done (i32.eq (local.get $n) (i32.const 4)))
        (drop (memory.atomic.wait32 (i32.const 0) (local.get $n) (i64.const -1)))
        (br $wait)))
    (call $exit (i32.atomic.load (i32.const 0)))))
"#;

#[derive(Clone)]
struct State {
    wasi: SharedWasi,
    calls: Arc<Mutex<Vec<(i32, i32)>>>,
}

fn engine() -> Engine {
    Engine::new(&engine_config()).unwrap()
}

/// Runs RECORDING_GUEST through the embedding API, with `record` as its
/// `host.record` import, next to WASI in the same linker.
fn run_recording_guest(
    engine: &Engine,
    threads: WasiThreads<State>,
    calls: Arc<Mutex<Vec<(i32, i32)>>>,
    record: impl Fn(wasmtime::Caller<'_, State>, i32, i32) + Send + Sync + 'static,
) -> Outcome {
    let wasi = threads.wasi(WasiCtxBuilder::new(), wasi_threads_host::Stdio::new());
    let store = threads.new_store(State { wasi, calls }).unwrap();
    let mut linker = Linker::new(engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)
        .unwrap();
    linker.func_wrap("host", "record", record).unwrap();
    threads.run(&linker, store).unwrap()
}

#[test]
fn embedder_linker_with_own_host_function() {
    let engine = engine();
    let module = compile(&engine, RECORDING_GUEST.as_bytes()).unwrap();
    let mut threads = WasiThreads::new(&engine, &module).unwrap();
    let events = threads.events();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let outcome = run_recording_guest(&engine, threads, calls.clone(), |caller, tid, arg| {
        caller.data().calls.lock().push((tid, arg));
    });
    assert_eq!(
        outcome,
        Outcome::Exit {
            code: 4,
            tid: MAIN_TID
        }
    );

    let mut calls = calls.lock().clone();
    calls.sort_by_key(|c| c.1);
    assert_eq!(
        calls.iter().map(|c| c.1).collect::<Vec<_>>(),
        [100, 101, 102, 103]
    );
    let mut tids: Vec<i32> = calls.iter().map(|c| c.0).collect();
    tids.sort();
    tids.dedup();
    assert_eq!(tids.len(), 4, "TIDs must be distinct: {calls:?}");
    assert!(tids.iter().all(|t| (1..=0x1FFF_FFFF).contains(t)));

    let events: Vec<ThreadEvent> = events.try_iter().collect();
    let spawned = events
        .iter()
        .filter(|e| matches!(e, ThreadEvent::Spawned { .. }))
        .count();
    let returned = events
        .iter()
        .filter(|e| matches!(e, ThreadEvent::Exited { tid, exit: ThreadExit::Returned } if *tid != MAIN_TID))
        .count();
    assert_eq!(spawned, 4, "{events:?}");
    assert_eq!(returned, 4, "{events:?}");
    assert!(events.contains(&ThreadEvent::Exited {
        tid: MAIN_TID,
        exit: ThreadExit::Exit(4)
    }));
}

#[test]
fn runner_with_captured_stdout() {
    let stdout = MemoryOutputPipe::new(1 << 20);
    let captured = stdout.clone();
    let outcome = Runner::new()
        .arg("c-pthreads")
        .stdio(wasi_threads_host::Stdio::new())
        .configure_wasi(move |b| {
            b.stdout(captured);
        })
        .run_file(common::fixture("c-pthreads.wasm"))
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Exit {
            code: 0,
            tid: MAIN_TID
        }
    );
    let out = String::from_utf8(stdout.contents().to_vec()).unwrap();
    assert!(out.ends_with("c-pthreads ok\n"), "{out}");
    assert!(out.contains("mutex counter: 40000\n"), "{out}");
}

/// Writes its arguments to stdout as the guest has them, each ended by a NUL.
const ARGV_GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $get (i32.const 16) (i32.const 256)))
    (i32.store (i32.const 8) (i32.const 256))
    (i32.store (i32.const 12) (i32.load (i32.const 4)))
    (drop (call $write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 100)))))"#;

#[test]
fn runner_sets_argv0_from_the_file_it_runs() {
    let path = std::env::temp_dir().join(format!("wasi-threads-argv0-{}.wat", std::process::id()));
    std::fs::write(&path, ARGV_GUEST).unwrap();
    let run = |runner: Runner| {
        let stdout = MemoryOutputPipe::new(4096);
        let captured = stdout.clone();
        let outcome = runner
            .stdio(wasi_threads_host::Stdio::new())
            .configure_wasi(move |b| {
                b.stdout(captured);
            })
            .run_file(&path)
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Exit {
                code: 0,
                tid: MAIN_TID
            }
        );
        String::from_utf8(stdout.contents().to_vec()).unwrap()
    };
    assert_eq!(run(Runner::new()), format!("{}\0", path.display()));
    assert_eq!(run(Runner::new().args(["prog", "x"])), "prog\0x\0");
    assert_eq!(run(Runner::new().arg("app")), "app\0");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn cancel_from_another_thread() {
    let start = Instant::now();
    let outcome = Runner::new()
        .arg("c-infinite")
        .stdio(wasi_threads_host::Stdio::new())
        .on_start(|cancel| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                cancel.cancel();
            });
        })
        .run_file(common::fixture("c-infinite.wasm"))
        .unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn wall_clock_limit() {
    let start = Instant::now();
    let outcome = Runner::new()
        .arg("c-infinite")
        .stdio(wasi_threads_host::Stdio::new())
        .timeout(Duration::from_millis(300))
        .run_file(common::fixture("c-infinite.wasm"))
        .unwrap();
    assert_eq!(outcome, Outcome::TimedOut);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn host_panic_on_a_spawned_thread_is_contained() {
    let guest = RECORDING_GUEST;
    let engine = engine();
    let module = compile(&engine, guest.as_bytes()).unwrap();
    let threads = WasiThreads::with_config(&engine, &module, ThreadsConfig::new()).unwrap();
    let outcome = run_recording_guest(&engine, threads, Default::default(), |_, _tid, arg| {
        if arg == 102 {
            panic!("embedder bug on purpose");
        }
    });
    match outcome {
        Outcome::HostPanic { tid, message } => {
            assert_ne!(tid, MAIN_TID);
            assert!(message.contains("embedder bug on purpose"), "{message}");
        }
        other => panic!("expected a host panic, got {other:?}"),
    }
}

/// Runs a single-threaded check module whose `_start` exits with the number
/// of the first failed check, or 0.
fn run_checks(wat: &str) -> Outcome {
    Runner::new()
        .stdio(wasi_threads_host::Stdio::new())
        .run_bytes(wat.as_bytes())
        .unwrap()
}

#[test]
fn rewritten_wait_and_notify_keep_their_semantics() {
    let checks = r#"
    (module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
      (import "env" "memory" (memory 1 2 shared))
      (export "memory" (memory 0))
      (func (export "wasi_thread_start") (param i32 i32))
      (func $check (param $ok i32) (param $n i32)
        (if (i32.eqz (local.get $ok)) (then (call $exit (local.get $n)))))
      (func (export "_start")
        (i32.store (i32.const 64) (i32.const 7))
        (i64.store (i32.const 128) (i64.const 0x1234567890))
        ;; 1: value differs -> 1 ("not-equal")
        (call $check (i32.eq (memory.atomic.wait32 (i32.const 64) (i32.const 8) (i64.const -1)) (i32.const 1)) (i32.const 1))
        ;; 2: equal, 10 ms timeout -> 2 ("timed-out")
        (call $check (i32.eq (memory.atomic.wait32 (i32.const 64) (i32.const 7) (i64.const 10000000)) (i32.const 2)) (i32.const 2))
        ;; 3: memarg offset is added: 60 + offset 4 = 64
        (call $check (i32.eq (memory.atomic.wait32 offset=4 (i32.const 60) (i32.const 8) (i64.const 0)) (i32.const 1)) (i32.const 3))
        ;; 4: zero timeout on an equal value -> 2 at once
        (call $check (i32.eq (memory.atomic.wait32 offset=4 (i32.const 60) (i32.const 7) (i64.const 0)) (i32.const 2)) (i32.const 4))
        ;; 5: wait64 compares all 64 bits
        (call $check (i32.eq (memory.atomic.wait64 (i32.const 128) (i64.const 0x34567890) (i64.const 0)) (i32.const 1)) (i32.const 5))
        (call $check (i32.eq (memory.atomic.wait64 (i32.const 128) (i64.const 0x1234567890) (i64.const 1000)) (i32.const 2)) (i32.const 6))
        ;; 7: notify with nobody waiting wakes 0
        (call $check (i32.eq (memory.atomic.notify (i32.const 64) (i32.const 5)) (i32.const 0)) (i32.const 7))
        (call $exit (i32.const 0))))
    "#;
    assert_eq!(
        run_checks(checks),
        Outcome::Exit {
            code: 0,
            tid: MAIN_TID
        }
    );

    for (what, instr, message) in [
        (
            "misaligned wait",
            "(drop (memory.atomic.wait32 (i32.const 2) (i32.const 0) (i64.const 0)))",
            "unaligned",
        ),
        (
            "misaligned notify",
            "(drop (memory.atomic.notify offset=1 (i32.const 0) (i32.const 1)))",
            "unaligned",
        ),
        (
            "out-of-bounds wait",
            "(drop (memory.atomic.wait64 (i32.const 65536) (i64.const 0) (i64.const 0)))",
            "out of bounds",
        ),
        (
            "out-of-bounds notify",
            "(drop (memory.atomic.notify (i32.const 65536) (i32.const 1)))",
            "out of bounds",
        ),
    ] {
        let wat = format!(
            r#"(module
              (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
              (import "env" "memory" (memory 1 2 shared))
              (export "memory" (memory 0))
              (func (export "wasi_thread_start") (param i32 i32))
              (func (export "_start") {instr}))"#
        );
        match run_checks(&wat) {
            Outcome::Trap { tid, trap } => {
                assert_eq!(tid, MAIN_TID);
                assert!(
                    trap.message().contains(message),
                    "{what}: {}",
                    trap.message()
                );
            }
            other => panic!("{what}: expected a trap, got {other:?}"),
        }
    }
}

#[test]
fn module_without_threads_still_runs() {
    let plain = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 5))))"#;
    assert_eq!(
        run_checks(plain),
        Outcome::Exit {
            code: 5,
            tid: MAIN_TID
        }
    );
    let no_memory = r#"(module (func (export "_start")))"#;
    assert_eq!(
        run_checks(no_memory),
        Outcome::Exit {
            code: 0,
            tid: MAIN_TID
        }
    );
}

#[test]
fn load_errors_name_the_problem() {
    let engine = engine();
    let cases = [
        (
            r#"(module (import "wasi" "thread-spawn" (func (param i32) (result i32)))
                 (import "env" "memory" (memory 1 2)) (func (export "_start")))"#,
            "memory import `env.memory` is not shared",
        ),
        (
            r#"(module (import "wasi" "thread-spawn" (func (param i32) (result i32)))
                 (memory (export "memory") 1 2 shared) (func (export "_start")))"#,
            "defines its own memory",
        ),
        (
            r#"(module (import "wasi" "thread-spawn" (func (param i64)))
                 (import "env" "memory" (memory 1 2 shared)) (func (export "_start")))"#,
            "wasi.thread-spawn",
        ),
    ];
    for (wat, needle) in cases {
        let module = compile(&engine, wat.as_bytes()).unwrap();
        let err = match WasiThreads::<State>::new(&engine, &module) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("expected an error for {wat}"),
        };
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn missing_entry_point_makes_spawn_fail_not_abort() {
    // thread-spawn returns a negative errno; the guest exits with it negated.
    let wat = r#"(module
        (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (import "env" "memory" (memory 1 2 shared))
        (export "memory" (memory 0))
        (func (export "_start") (call $exit (i32.sub (i32.const 0) (call $spawn (i32.const 0))))))"#;
    assert_eq!(
        run_checks(wat),
        Outcome::Exit {
            code: wasi_threads_host::errno::ENOSYS,
            tid: MAIN_TID
        }
    );
    let wrong_type = r#"(module
        (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (import "env" "memory" (memory 1 2 shared))
        (export "memory" (memory 0))
        (func (export "wasi_thread_start") (param i32))
        (func (export "_start") (call $exit (i32.sub (i32.const 0) (call $spawn (i32.const 0))))))"#;
    assert_eq!(
        run_checks(wrong_type),
        Outcome::Exit {
            code: wasi_threads_host::errno::ENOSYS,
            tid: MAIN_TID
        }
    );
}

/// The host does not use epochs: an embedder that does, on the same
/// engine, keeps its deadlines to itself. Its own store counts on under a
/// deadline of its own while programs end around it (the old host ticked the
/// epoch at every end), and the programs' stores get the embedder's epoch
/// setup and nothing else.
#[test]
fn an_embedders_epochs_are_its_own() {
    let mut config = engine_config();
    config.epoch_interruption(true);
    let engine = Engine::new(&config).unwrap();
    let other = wasmtime::Module::new(
        &engine,
        r#"(module (func (export "count") (param $n i32) (result i32)
             (local $i i32)
             (loop $l
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
             (local.get $i)))"#,
    )
    .unwrap();
    let other_engine = engine.clone();
    let counter = std::thread::spawn(move || {
        let mut store = wasmtime::Store::new(&other_engine, ());
        store.set_epoch_deadline(1);
        store.epoch_deadline_trap();
        let instance = wasmtime::Instance::new(&mut store, &other, &[]).unwrap();
        let count = instance
            .get_typed_func::<i32, i32>(&mut store, "count")
            .unwrap();
        count.call(&mut store, 400_000_000)
    });
    let module = compile(&engine, RECORDING_GUEST.as_bytes()).unwrap();
    for _ in 0..5 {
        let config = wasi_threads_host::ThreadsConfig::new().store_setup(|store| {
            store.set_epoch_deadline(1);
            store.epoch_deadline_trap();
            Ok(())
        });
        let threads = WasiThreads::with_config(&engine, &module, config).unwrap();
        let outcome = run_recording_guest(&engine, threads, Default::default(), |_, _, _| {});
        assert_eq!(
            outcome,
            Outcome::Exit {
                code: 4,
                tid: MAIN_TID
            }
        );
    }
    assert_eq!(counter.join().unwrap().unwrap(), 400_000_000);
    // Without a setup of its own, the embedder's ticks do not interrupt a
    // program: the host's default deadline is far away.
    let spin_wat = br#"(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32)
        (loop $l
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 100000000))))
        (call $exit (i32.const 3))))"#;
    let counted = compile(&engine, spin_wat).unwrap();
    let ticker = engine.clone();
    let ticking = std::thread::spawn(move || {
        for _ in 0..20 {
            ticker.increment_epoch();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    });
    let threads = WasiThreads::new(&engine, &counted).unwrap();
    let outcome = run_recording_guest(&engine, threads, Default::default(), |_, _, _| {});
    ticking.join().unwrap();
    assert_eq!(
        outcome,
        Outcome::Exit {
            code: 3,
            tid: MAIN_TID
        }
    );
    // And the embedder's own tick reaches a program's threads as its own
    // setup says: here, a trap.
    let config = wasi_threads_host::ThreadsConfig::new().store_setup(|store| {
        store.set_epoch_deadline(1);
        store.epoch_deadline_trap();
        Ok(())
    });
    let spin = compile(
        &engine,
        br#"(module (func (export "_start") (loop $l (br $l))))"#,
    )
    .unwrap();
    let threads = WasiThreads::with_config(&engine, &spin, config).unwrap();
    let ticker = engine.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ticker.increment_epoch();
    });
    let outcome = run_recording_guest(&engine, threads, Default::default(), |_, _, _| {});
    assert!(
        matches!(&outcome, Outcome::Trap { trap, .. } if trap.message().contains("interrupt")),
        "{outcome:?}"
    );
    let Outcome::Trap { trap, .. } = &outcome else {
        unreachable!()
    };
    assert_eq!(trap.trap_code(), Some(Trap::Interrupt));
}

/// An embedder's fuel, set in `store_setup`, runs out in a spawned thread:
/// the outcome gives the engine's trap code to match on, with the message
/// the command line prints.
#[test]
fn an_embedder_matches_the_trap_code() {
    let mut config = engine_config();
    config.consume_fuel(true);
    let engine = Engine::new(&config).unwrap();
    // The spawned thread spins; the main thread waits for ever.
    let module = compile(
        &engine,
        br#"(module
          (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
          (import "env" "memory" (memory 1 1 shared))
          (func (export "wasi_thread_start") (param i32 i32) (loop $l (br $l)))
          (func (export "_start")
            (drop (call $spawn (i32.const 0)))
            (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#,
    )
    .unwrap();
    let config = ThreadsConfig::new().store_setup(|store| store.set_fuel(100_000));
    let threads = WasiThreads::with_config(&engine, &module, config).unwrap();
    let outcome = run_recording_guest(&engine, threads, Default::default(), |_, _, _| {});
    let Outcome::Trap { tid, trap } = &outcome else {
        panic!("expected a trap, got {outcome:?}");
    };
    assert_eq!(*tid, 1);
    assert_eq!(trap.trap_code(), Some(Trap::OutOfFuel));
    assert_eq!(trap.error().downcast_ref::<Trap>(), Some(&Trap::OutOfFuel));
    assert_eq!(trap.message(), Trap::OutOfFuel.to_string());
    assert!(
        outcome
            .to_string()
            .starts_with(&format!("thread 1 trapped: {}", Trap::OutOfFuel)),
        "{outcome}"
    );
}

/// The embedder's own error type, returned by its own host function.
#[derive(Debug, PartialEq)]
struct Refused {
    arg: i32,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused start argument {}", self.arg)
    }
}

impl std::error::Error for Refused {}

/// A host function of the embedder's fails with the embedder's own error:
/// the outcome hands that error back as itself, with no trap code, and its
/// message as before.
#[test]
fn an_embedders_host_error_comes_back_as_itself() {
    let engine = engine();
    let module = compile(&engine, RECORDING_GUEST.as_bytes()).unwrap();
    let threads = WasiThreads::new(&engine, &module).unwrap();
    let wasi = threads.wasi(WasiCtxBuilder::new(), wasi_threads_host::Stdio::new());
    let store = threads
        .new_store(State {
            wasi,
            calls: Default::default(),
        })
        .unwrap();
    let mut linker = Linker::new(&engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)
        .unwrap();
    linker
        .func_wrap(
            "host",
            "record",
            |_: wasmtime::Caller<'_, State>, _tid: i32, arg: i32| -> wasmtime::Result<()> {
                if arg == 102 {
                    return Err(wasmtime::Error::new(Refused { arg }));
                }
                Ok(())
            },
        )
        .unwrap();
    let outcome = threads.run(&linker, store).unwrap();
    let Outcome::Trap { tid, trap } = &outcome else {
        panic!("expected a trap, got {outcome:?}");
    };
    // Start arguments 100, 101, 102 went to TIDs 1, 2, 3.
    assert_eq!(*tid, 3);
    assert_eq!(
        trap.error().downcast_ref::<Refused>(),
        Some(&Refused { arg: 102 })
    );
    assert_eq!(trap.trap_code(), None);
    assert_eq!(trap.message(), "refused start argument 102");
}
