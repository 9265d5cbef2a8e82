//! Every way a thread can keep running wasm without end is reached by the
//! stop checks the rewrite adds (loop headers, and the entries of functions
//! that recurse, call opaquely or head large call trees): an infinite loop
//! with no calls, a loop whose body is one `br_if`, recursion (direct, with
//! its calls in different arms and blocks, mutual, only inside a loop,
//! through `call_indirect`, as tail calls), a call tree with neither loops nor recursion, a loop of cheap
//! host calls, a wait entered from a loop. In each, a spawned thread runs the
//! kernel forever and the main thread exits with 7 once the thread has
//! started: the outcome must be that exit, with every thread stopped and
//! joined, none abandoned.

use std::time::{Duration, Instant};
use wasi_threads_host::{
    Outcome, SharedWasi, ThreadEvent, ThreadsConfig, WasiThreads, compile, engine_config,
};
use wasmtime::{Engine, Linker};
use wasmtime_wasi::WasiCtxBuilder;

#[derive(Clone)]
struct State {
    wasi: SharedWasi,
}

/// A program whose spawned thread calls `$kernel` (defined by `kernel`,
/// which may define more functions and a table) after telling the main
/// thread it started; the main thread then exits with 7.
fn program(kernel: &str) -> String {
    format!(
        r#"(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "env" "memory" (memory 1 1 shared))
  (func (export "wasi_thread_start") (param i32 i32)
    (i32.atomic.store (i32.const 0) (i32.const 1))
    (call $kernel))
  {kernel}
  (func (export "_start")
    (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 1)) (then unreachable))
    (block $started (loop $spin
      (br_if $started (i32.atomic.load (i32.const 0)))
      (br $spin)))
    (call $exit (i32.const 7))))"#
    )
}

/// Runs `wat`, which must end with exit 7 and leave no thread behind.
fn assert_stopped(name: &str, wat: &str) {
    let engine = Engine::new(&engine_config()).unwrap();
    let module = compile(&engine, wat.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let config = ThreadsConfig::new()
        .keep_alive(Duration::ZERO)
        .join_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(60));
    let mut threads = WasiThreads::with_config(&engine, &module, config).unwrap();
    let events = threads.events();
    let wasi = threads.wasi(WasiCtxBuilder::new(), wasi_threads_host::Stdio::new());
    let store = threads.new_store(State { wasi }).unwrap();
    let mut linker = Linker::new(&engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)
        .unwrap();
    let start = Instant::now();
    let outcome = threads.run(&linker, store).unwrap();
    let took = start.elapsed();
    assert_eq!(outcome, Outcome::Exit { code: 7, tid: 0 }, "{name}");
    let events: Vec<ThreadEvent> = events.try_iter().collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ThreadEvent::Abandoned { .. })),
        "{name}: {events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            ThreadEvent::Exited {
                tid: 1,
                exit: wasi_threads_host::ThreadExit::Stopped
            }
        )),
        "{name}: the spawned thread was stopped: {events:?}"
    );
    // Generous: a thread the checks missed would run until the 20 s join
    // timeout and be abandoned.
    assert!(took < Duration::from_secs(10), "{name} took {took:?}");
}

#[test]
fn an_infinite_loop_without_calls_is_stopped() {
    assert_stopped(
        "loop",
        &program(
            r#"(func $kernel (local $x i32)
                 (loop $l
                   (local.set $x (i32.add (local.get $x) (i32.const 1)))
                   (br $l)))"#,
        ),
    );
}

#[test]
fn a_loop_of_one_br_if_is_stopped() {
    assert_stopped(
        "br_if",
        &program(r#"(func $kernel (loop $l (br_if $l (i32.const 1))))"#),
    );
}

#[test]
fn recursion_without_loops_is_stopped() {
    // fib(90) by naive recursion: ~2^62 calls, never deeper than 90 frames.
    assert_stopped(
        "recursion",
        &program(
            r#"(func $kernel (drop (call $fib (i64.const 90))))
               (func $fib (param $n i64) (result i64)
                 (if (result i64) (i64.lt_u (local.get $n) (i64.const 2))
                   (then (local.get $n))
                   (else (i64.add
                     (call $fib (i64.sub (local.get $n) (i64.const 1)))
                     (call $fib (i64.sub (local.get $n) (i64.const 2)))))))"#,
        ),
    );
}

#[test]
fn recursion_in_arms_blocks_and_loops_is_stopped() {
    // Mutual recursion with its calls in arms of an `if` and in a block
    // that may be left early; and a recursion whose calls are all inside a
    // loop, which passes only the loop's check.
    assert_stopped(
        "arms",
        &program(
            r#"(func $kernel (call $r (i32.const 60)))
               (func $r (param $n i32)
                 (drop (i32.atomic.rmw.add (i32.const 8) (i32.const 1)))
                 (if (i32.eqz (local.get $n)) (then return))
                 (if (i32.and (local.get $n) (i32.const 1))
                   (then
                     (call $s (i32.sub (local.get $n) (i32.const 1)))
                     (call $s (i32.sub (local.get $n) (i32.const 1))))
                   (else
                     (call $r (i32.sub (local.get $n) (i32.const 1)))
                     (call $s (i32.sub (local.get $n) (i32.const 1))))))
               (func $s (param $n i32)
                 (block $skip
                   (br_if $skip (i32.eqz (local.get $n)))
                   (call $r (i32.sub (local.get $n) (i32.const 1))))
                 (call $r (i32.shr_u (local.get $n) (i32.const 1))))"#,
        ),
    );
    assert_stopped(
        "walk",
        &program(
            r#"(func $kernel (call $walk (i32.const 60)))
               (func $walk (param $n i32) (local $i i32)
                 (if (i32.eqz (local.get $n)) (then return))
                 (loop $children
                   (call $walk (i32.sub (local.get $n) (i32.const 1)))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $children (i32.lt_u (local.get $i) (i32.const 3)))))"#,
        ),
    );
}

#[test]
fn a_call_indirect_cycle_is_stopped() {
    // $a and $b call each other only through the table, twice each, with a
    // depth bound: an exponential cycle no direct call shows.
    assert_stopped(
        "call_indirect",
        &program(
            r#"(type $t (func (param i32)))
               (table 2 funcref)
               (elem (i32.const 0) $a $b)
               (func $kernel (call $a (i32.const 80)))
               (func $a (param $n i32)
                 (if (local.get $n) (then
                   (call_indirect (type $t) (i32.sub (local.get $n) (i32.const 1)) (i32.const 1))
                   (call_indirect (type $t) (i32.sub (local.get $n) (i32.const 1)) (i32.const 1)))))
               (func $b (param $n i32)
                 (if (local.get $n) (then
                   (call_indirect (type $t) (i32.sub (local.get $n) (i32.const 1)) (i32.const 0))
                   (call_indirect (type $t) (i32.sub (local.get $n) (i32.const 1)) (i32.const 0)))))"#,
        ),
    );
}

#[test]
fn tail_call_cycles_are_stopped() {
    // Tail calls never grow the stack: a cycle of them runs forever.
    assert_stopped(
        "return_call",
        &program(
            r#"(type $t (func))
               (table 1 funcref)
               (elem (i32.const 0) $b)
               (func $kernel (return_call $a))
               (func $a (return_call_indirect (type $t) (i32.const 0)))
               (func $b (return_call $a))"#,
        ),
    );
}

#[test]
fn a_call_tree_without_loops_or_recursion_is_stopped() {
    // Twenty levels, each calling the next four times: 4^20 calls with no
    // loop and no cycle in the call graph, only entry checks can stop it.
    let mut kernel = String::from("(func $kernel (call $f0))\n");
    for level in 0..20 {
        let next = level + 1;
        kernel.push_str(&format!(
            "(func $f{level} (call $f{next}) (call $f{next}) (call $f{next}) (call $f{next}))\n"
        ));
    }
    kernel.push_str("(func $f20 (drop (i32.atomic.rmw.add (i32.const 8) (i32.const 1))))\n");
    assert_stopped("call tree", &program(&kernel));
}

#[test]
fn a_loop_of_cheap_host_calls_is_stopped() {
    assert_stopped(
        "host calls",
        &program(
            r#"(func $kernel
                 (loop $l
                   (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 16)))
                   (br $l)))"#,
        ),
    );
}

#[test]
fn a_wait_entered_from_a_loop_is_stopped() {
    // Nobody notifies address 32: the thread parks, and would park again if
    // woken without the stop.
    assert_stopped(
        "wait",
        &program(
            r#"(func $kernel
                 (loop $l
                   (drop (memory.atomic.wait32 (i32.const 32) (i32.const 0) (i64.const -1)))
                   (br $l)))"#,
        ),
    );
}

#[test]
fn a_spinning_main_thread_times_out() {
    let engine = Engine::new(&engine_config()).unwrap();
    let wat = r#"(module (func (export "_start") (loop $l (br $l))))"#;
    let module = compile(&engine, wat.as_bytes()).unwrap();
    let outcome = wasi_threads_host::Runner::new()
        .engine(engine)
        .stdio(wasi_threads_host::Stdio::new())
        .timeout(Duration::from_millis(200))
        .run_module(&module)
        .unwrap();
    assert_eq!(outcome, Outcome::TimedOut);
}

/// A check traps, and the host takes an `unreachable` trap for a stop only
/// while the flag is raised: a module that passes the rewrite's verification
/// and reaches an `unreachable` of its own while nothing stops the program
/// ends it with that trap as its cause (it must not end its thread as
/// "stopped" with no cause, which would leave `run` waiting).
#[test]
fn a_guest_unreachable_while_running_is_a_trap() {
    let engine = Engine::new(&engine_config()).unwrap();
    let wat = r#"(module
      (import "wasi-threads-host" "stop-flag" (memory $flag 1 1 shared))
      (func (export "_start")
        (if (i32.atomic.load $flag (i32.const 0)) (then (unreachable)))
        (unreachable)))"#;
    assert!(
        wasi_threads_host::rewrite(wat.as_bytes())
            .unwrap()
            .is_none(),
        "verified as already rewritten"
    );
    let module = compile(&engine, wat.as_bytes()).unwrap();
    let outcome = wasi_threads_host::Runner::new()
        .engine(engine)
        .stdio(wasi_threads_host::Stdio::new())
        .timeout(Duration::from_secs(30))
        .run_module(&module)
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Trap { trap, .. } if trap.message().contains("unreachable")),
        "{outcome:?}"
    );
}

/// The flag is the host's, but a module that imports it (and so passes as
/// already rewritten) can write it: its threads then trap at their next
/// check while nothing stops the program. That is a trap like any other and
/// ends the program with it as the cause; it must not pass for a stop, which
/// would leave `run` waiting for a cause with every thread "stopped".
#[test]
fn a_guest_raising_the_flag_itself_ends_with_a_trap() {
    let engine = Engine::new(&engine_config()).unwrap();
    let wat = r#"(module
      (import "wasi-threads-host" "stop-flag" (memory $flag 1 1 shared))
      (func (export "_start")
        (if (i32.atomic.load $flag (i32.const 0)) (then (unreachable)))
        (i32.atomic.store $flag (i32.const 0) (i32.const 1))
        (loop $spin
          (if (i32.atomic.load $flag (i32.const 0)) (then (unreachable)))
          (br $spin))))"#;
    assert!(
        wasi_threads_host::rewrite(wat.as_bytes())
            .unwrap()
            .is_none(),
        "verified as already rewritten"
    );
    let module = compile(&engine, wat.as_bytes()).unwrap();
    let outcome = wasi_threads_host::Runner::new()
        .engine(engine)
        .stdio(wasi_threads_host::Stdio::new())
        .timeout(Duration::from_secs(30))
        .run_module(&module)
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Trap { trap, .. } if trap.message().contains("unreachable")),
        "{outcome:?}"
    );
}
