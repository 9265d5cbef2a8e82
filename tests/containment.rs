//! No guest escapes supervision: every way a module could keep a thread out
//! of the host's reach (a forged "already rewritten" import, a wait behind
//! `call_indirect`, a wait on a memory the host does not route) is either
//! routed through the host or refused at load. And WASI works on the
//! program's shared memory whether or not the module exports it.

mod common;

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use wasi_threads_host::{Outcome, Runner};

/// The tests of this file count the process's guest threads, so they must
/// not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

fn guest_threads_alive() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("wasi-thread-") || name == "wasi-main")
        .collect()
}

/// Runs `wat` with a generous time-out and no thread reuse, so that a thread
/// the host could not stop would still be alive when `run` returns.
fn run(wat: &str) -> wasmtime::Result<(Outcome, Duration)> {
    let start = Instant::now();
    let outcome = Runner::new()
        .stdio(wasi_threads_host::Stdio::new())
        .keep_alive(Duration::ZERO)
        .timeout(Duration::from_secs(30))
        .run_bytes(wat.as_bytes())?;
    Ok((outcome, start.elapsed()))
}

fn assert_exit(wat: &str, expected: i32) {
    let _serial = SERIAL.lock();
    let (outcome, elapsed) = run(wat).expect("the module runs");
    assert!(
        matches!(outcome, Outcome::Exit { code, .. } if code == expected),
        "expected exit {expected}, got {outcome}"
    );
    // Promptness is the point: the join timeout (10 s) would mean a thread
    // the host could not wake.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // `run` joined every thread; the kernel may list a joined thread a
    // little longer on a loaded machine. A thread the host failed to stop
    // would be parked forever, so it would still be listed after this.
    let settled = Instant::now();
    while !guest_threads_alive().is_empty() && settled.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(guest_threads_alive(), Vec::<String>::new());
}

fn assert_refused(wat: &str, expected: &str) {
    let err = run(wat).expect_err("the module must be refused at load");
    let message = format!("{err:#}");
    assert!(message.contains(expected), "{message}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
}

/// The escape of issue 12: a declared import from the host's reserved module
/// used to make the rewrite skip the module, so its thread parked natively
/// forever and `run` took the 10 s join timeout and leaked the OS thread.
const ESCAPE: &str = r#"(module
  (import "wasi-threads-host" "memory.atomic.notify" (func (param i32 i32 i32) (result i32)))
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func (export "wasi_thread_start") (param i32 i32)
    (i32.atomic.store (i32.const 4) (i32.const 1))
    (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1))))
  (func (export "_start")
    (drop (call $spawn (i32.const 0)))
    (block $parked (loop $spin
      (br_if $parked (i32.atomic.load (i32.const 4)))
      (br $spin)))
    (call $exit (i32.const 7))))"#;

#[test]
fn a_forged_reserved_import_is_refused() {
    assert_refused(ESCAPE, "only some of its wait and notify functions");
}

#[test]
fn unknown_names_from_the_reserved_module_are_refused() {
    let wat = r#"(module
      (import "wasi-threads-host" "anything" (func))
      (import "env" "memory" (memory 1 1 shared))
      (func (export "_start")))"#;
    assert_refused(wat, "imports `wasi-threads-host.anything`");
    let wrong_type = r#"(module
      (import "wasi-threads-host" "memory.atomic.wait32" (func (param i32 i32 i64) (result i32)))
      (import "env" "memory" (memory 1 1 shared))
      (func (export "_start")))"#;
    assert_refused(
        wrong_type,
        "imports `wasi-threads-host.memory.atomic.wait32`",
    );
}

/// All three reserved wait and notify imports, exactly as the rewrite adds
/// them, next to native waits and without the stop flag: not something this
/// host produced.
#[test]
fn reserved_imports_with_native_waits_are_refused() {
    let wat = r#"(module
      (import "wasi-threads-host" "memory.atomic.wait32" (func (param i32 i32 i64 i32) (result i32)))
      (import "wasi-threads-host" "memory.atomic.wait64" (func (param i32 i64 i64 i32) (result i32)))
      (import "wasi-threads-host" "memory.atomic.notify" (func (param i32 i32 i32) (result i32)))
      (import "env" "memory" (memory 1 1 shared))
      (export "memory" (memory 0))
      (func (export "_start")
        (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#;
    assert_refused(wat, "not its stop flag");
}

/// A module that calls the host's wait directly, as a rewritten one does,
/// is left alone and still cannot hide a thread: the host's wait is the one
/// the supervisor wakes.
#[test]
fn a_module_shaped_like_our_output_is_still_supervised() {
    let wat = r#"(module
      (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (import "env" "memory" (memory 1 1 shared))
      (import "wasi-threads-host" "memory.atomic.wait32" (func $wait (param i32 i32 i64 i32) (result i32)))
      (import "wasi-threads-host" "memory.atomic.wait64" (func (param i32 i64 i64 i32) (result i32)))
      (import "wasi-threads-host" "memory.atomic.notify" (func (param i32 i32 i32) (result i32)))
      (import "wasi-threads-host" "stop-flag" (memory $flag 1 1 shared))
      (export "memory" (memory 0))
      (func (export "wasi_thread_start") (param i32 i32)
        (i32.atomic.store (i32.const 4) (i32.const 1))
        (drop (call $wait (i32.const 0) (i32.const 0) (i64.const -1) (i32.const 0))))
      (func (export "_start")
        (if (i32.atomic.load $flag (i32.const 0)) (then (unreachable)))
        (drop (call $spawn (i32.const 0)))
        (block $parked (loop $spin
          (if (i32.atomic.load $flag (i32.const 0)) (then (unreachable)))
          (br_if $parked (i32.atomic.load (i32.const 4)))
          (br $spin)))
        (call $exit (i32.const 7))))"#;
    let once = wasi_threads_host::rewrite(wat.as_bytes()).unwrap();
    assert!(once.is_none(), "left alone");
    assert_exit(wat, 7);
}

/// The rewrite is per instruction: a wait reached only through a table is
/// routed like any other.
#[test]
fn waits_behind_call_indirect_are_routed() {
    let wat = r#"(module
      (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (import "env" "memory" (memory 1 1 shared))
      (type $park_t (func (result i32)))
      (table 1 funcref)
      (elem (i32.const 0) $park)
      (func $park (type $park_t)
        (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))
      (func (export "wasi_thread_start") (param i32 i32)
        (i32.atomic.store (i32.const 4) (i32.const 1))
        (drop (call_indirect (type $park_t) (i32.const 0))))
      (func (export "_start")
        (drop (call $spawn (i32.const 0)))
        (block $parked (loop $spin
          (br_if $parked (i32.atomic.load (i32.const 4)))
          (br $spin)))
        (call $exit (i32.const 7))))"#;
    assert_exit(wat, 7);
}

/// With multi-memory, a module may define a second shared memory next to the
/// imported one; a wait there would park a thread where no host wakes it.
#[test]
fn waits_on_a_second_shared_memory_are_refused() {
    let wat = r#"(module
      (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
      (import "env" "memory" (memory $shared 1 1 shared))
      (memory $own 1 1 shared)
      (export "memory" (memory $shared))
      (func (export "wasi_thread_start") (param i32 i32)
        (drop (memory.atomic.wait32 $own (i32.const 0) (i32.const 0) (i64.const -1))))
      (func (export "_start") (drop (call $spawn (i32.const 0)))))"#;
    assert_refused(wat, "a shared memory the module defines itself");
}

/// A non-threaded module that parks its only thread on a shared memory of
/// its own: nothing could ever stop it, not the time-out, not cancellation.
#[test]
fn waits_on_a_shared_memory_the_module_defines_are_refused() {
    let wat = r#"(module
      (memory (export "memory") 1 1 shared)
      (func (export "_start")
        (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#;
    assert_refused(wat, "a shared memory the module defines itself");
    // Notifies never block: a module that only notifies its own memory runs.
    let notify_only = r#"(module
      (memory (export "memory") 1 1 shared)
      (func (export "_start")
        (drop (memory.atomic.notify (i32.const 0) (i32.const 1)))))"#;
    let _serial = SERIAL.lock();
    let (outcome, _) = run(notify_only).unwrap();
    assert!(
        matches!(outcome, Outcome::Exit { code: 0, .. }),
        "{outcome}"
    );
}

/// memory64: a 64-bit shared memory, imported or defined, cannot be routed
/// (the host's waits take 32-bit addresses); either the engine rejects the
/// module or the host refuses it, never does a thread park there.
#[test]
fn waits_on_a_64_bit_shared_memory_are_refused() {
    let defined = r#"(module
      (memory (export "memory") i64 1 1 shared)
      (func (export "_start")
        (drop (memory.atomic.wait32 (i64.const 0) (i32.const 0) (i64.const -1)))))"#;
    assert!(run(defined).is_err());
    let imported = r#"(module
      (import "env" "memory" (memory i64 1 1 shared))
      (func (export "_start")
        (drop (memory.atomic.wait32 (i64.const 0) (i32.const 0) (i64.const -1)))))"#;
    assert!(run(imported).is_err());
}

/// Waits on a memory that is not shared trap at once in Wasmtime: no thread
/// can park there, so such modules run and trap as they would anywhere.
#[test]
fn waits_on_an_unshared_memory_trap() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#;
    let _serial = SERIAL.lock();
    let (outcome, _) = run(wat).unwrap();
    assert!(matches!(outcome, Outcome::Trap { .. }), "{outcome}");
}

/// `fd_write` to stdout, checked, then `proc_exit(0)`; the shared memory is
/// imported and exported as `$EXPORT` (or not at all).
fn wasi_without_memory_export(export: &str) -> String {
    format!(
        r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (import "env" "memory" (memory 1 1 shared))
      {export}
      (data (i32.const 16) "hello\n")
      (func (export "_start")
        (local $errno i32)
        (i32.store (i32.const 0) (i32.const 16))
        (i32.store (i32.const 4) (i32.const 6))
        (local.set $errno (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $errno) (then (call $exit (i32.add (i32.const 10) (local.get $errno)))))
        (if (i32.ne (i32.load (i32.const 8)) (i32.const 6)) (then (call $exit (i32.const 3))))
        (call $exit (i32.const 0))))"#
    )
}

#[test]
fn wasi_works_without_a_memory_export() {
    assert_exit(&wasi_without_memory_export(""), 0);
    assert_exit(
        &wasi_without_memory_export(r#"(export "mem" (memory 0))"#),
        0,
    );
    // With other exports and no export section at all, both.
    assert_exit(
        &wasi_without_memory_export(r#"(export "other" (func $exit))"#),
        0,
    );
}

/// Spawn failures (no `wasi_thread_start`, or one of the wrong type) give
/// the guest a negative errno; with the memory not exported, the WASI calls
/// around them used to trap instead.
#[test]
fn spawn_failures_exit_cleanly_without_a_memory_export() {
    for entry in ["", r#"(func (export "wasi_thread_start") (param i32))"#] {
        let wat = format!(
            r#"(module
          (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (import "env" "memory" (memory 1 1 shared))
          {entry}
          (func (export "_start")
            (if (i32.ge_s (call $spawn (i32.const 0)) (i32.const 0))
              (then (call $exit (i32.const 1))))
            (call $exit (i32.const 0))))"#
        );
        assert_exit(&wat, 0);
    }
}

/// A module that already exports its shared memory as `memory` keeps that
/// export as it is: no second one is added.
#[test]
fn an_existing_memory_export_is_kept() {
    let wat = r#"(module
      (import "env" "memory" (memory 1 1 shared))
      (export "memory" (memory 0))
      (func (export "_start")))"#;
    let out = wasi_threads_host::rewrite(wat.as_bytes())
        .unwrap()
        .expect("the stop checks are added");
    let exports: Vec<String> = wasmparser::Parser::new(0)
        .parse_all(&out)
        .filter_map(|p| match p.unwrap() {
            wasmparser::Payload::ExportSection(r) => Some(r),
            _ => None,
        })
        .flat_map(|r| r.into_iter().map(|e| e.unwrap().name.to_string()))
        .collect();
    assert_eq!(exports, ["memory", "_start"]);
}

/// Every thread spawns as fast as it can, so spawns at the thread limit
/// race in all of them at once (each refused one waits its moment for a
/// free TID), while one thread traps once the limit has been hit from
/// several threads. 200 runs in this process: each must end with that trap
/// (not a hang, not an exit, not another errno than `EAGAIN`), and none may
/// leave an OS thread behind.
#[test]
fn spawning_at_the_limit_everywhere_while_a_thread_traps() {
    const LIMIT: u32 = 6;
    const RUNS: usize = 200;
    let _serial = SERIAL.lock();
    let wat = format!(
        r#"(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "memory" (memory 1 1 shared))
  ;; 0: spawns refused at the limit so far
  (func $spawn_forever (local $r i32)
    (loop $again
      (local.set $r (call $spawn (i32.const 0)))
      (if (i32.lt_s (local.get $r) (i32.const 0))
        (then
          ;; -EAGAIN is the only refusal a limit may give.
          (if (i32.ne (local.get $r) (i32.const -6)) (then (call $exit (i32.const 99))))
          (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))))
      (br $again)))
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (if (i32.eq (local.get $arg) (i32.const 1))
      (then
        ;; The trapper: once spawns were refused from several threads.
        (loop $wait
          (br_if $wait (i32.lt_u (i32.atomic.load (i32.const 0)) (i32.const {refusals}))))
        unreachable))
    (call $spawn_forever))
  (func (export "_start")
    (if (i32.lt_s (call $spawn (i32.const 1)) (i32.const 0)) (then (call $exit (i32.const 98))))
    (call $spawn_forever)))"#,
        refusals = 2 * LIMIT
    );
    let engine = wasmtime::Engine::new(&wasi_threads_host::engine_config()).unwrap();
    let module = wasi_threads_host::compile(&engine, wat.as_bytes()).unwrap();
    for run in 0..RUNS {
        let outcome = Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .max_threads(LIMIT)
            // Reuse idle OS threads in some runs, none in others.
            .keep_alive(if run % 2 == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(2)
            })
            // Only a hang reaches this: it fails the test, not the process.
            .timeout(Duration::from_secs(60))
            .run_module(&module)
            .unwrap();
        match &outcome {
            Outcome::Trap { tid, trap }
                if *tid != wasi_threads_host::MAIN_TID
                    && trap.message().contains("unreachable") => {}
            other => panic!("run {run}: {other}"),
        }
        // Only Linux lists a process's threads by name (/proc/self/task).
        // `run` joined every guest thread; the kernel may list a joined one
        // a moment longer on a loaded machine.
        #[cfg(target_os = "linux")]
        {
            let settled = Instant::now();
            while !guest_threads_alive().is_empty() && settled.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(
                guest_threads_alive(),
                Vec::<String>::new(),
                "after run {run}"
            );
        }
    }
}
