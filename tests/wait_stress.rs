//! The parking lot under stress: 64 threads hammering wait/notify on 8
//! addresses while the program is stopped mid-way, 200 times.
//!
//! Each address is a token ring of 8 threads: thread `k` of the ring waits
//! (no timeout) until the counter there is `k` mod 8, increments it and
//! notifies exactly 7 (the others of its ring). One lost wakeup, or a notify
//! that wakes fewer than asked, stalls that ring for good, and the program
//! then never reaches its exit: the run would end by its time limit instead.
//! Half the runs end by `proc_exit` once every ring has gone round a few
//! times; the other half are cancelled from outside at an arbitrary moment.
//! Every run must end with the expected outcome and leave no OS thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasi_threads_host::{Outcome, Runner, compile, engine_config};
use wasmtime::Engine;

const RUNS: usize = 200;
/// Every ring's counter must pass this before `proc_exit`.
const TURNS: u32 = 200;

/// `exit_when_done`: main calls `proc_exit(7)` once every ring passed
/// [`TURNS`]; otherwise it parks forever and waits to be cancelled.
fn guest(exit_when_done: bool) -> String {
    let finish = if exit_when_done {
        "(call $exit (i32.const 7))"
    } else {
        "(loop $park (drop (memory.atomic.wait32 (i32.const 1024) (i32.const 0) (i64.const -1))) (br $park))"
    };
    format!(
        r#"(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  ;; Thread i works on ring i / 8 (its counter 64 bytes from the next) as
  ;; member i mod 8.
  (func (export "wasi_thread_start") (param $tid i32) (param $i i32)
    (local $addr i32) (local $k i32) (local $v i32)
    (local.set $addr (i32.mul (i32.shr_u (local.get $i) (i32.const 3)) (i32.const 64)))
    (local.set $k (i32.and (local.get $i) (i32.const 7)))
    (loop $turn
      (local.set $v (i32.atomic.load (local.get $addr)))
      (if (i32.eq (i32.and (local.get $v) (i32.const 7)) (local.get $k))
        (then
          (i32.atomic.store (local.get $addr) (i32.add (local.get $v) (i32.const 1)))
          (drop (memory.atomic.notify (local.get $addr) (i32.const 7))))
        (else
          (drop (memory.atomic.wait32 (local.get $addr) (local.get $v) (i64.const -1)))))
      (br $turn)))
  (func (export "_start")
    (local $i i32)
    (loop $spawn_all
      (if (i32.lt_s (call $spawn (local.get $i)) (i32.const 0)) (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spawn_all (i32.lt_u (local.get $i) (i32.const 64))))
    (local.set $i (i32.const 0))
    (loop $check
      (if (i32.lt_u (i32.atomic.load (i32.mul (local.get $i) (i32.const 64))) (i32.const {TURNS}))
        (then
          ;; 100 us naps, on an address nobody notifies
          (drop (memory.atomic.wait32 (i32.const 1024) (i32.const 0) (i64.const 100000)))
          (br $check)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $check (i32.lt_u (local.get $i) (i32.const 8))))
    {finish}))"#
    )
}

/// OS threads of this process.
#[cfg(target_os = "linux")]
fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn many_waiters_on_few_addresses_stopped_mid_way() {
    let engine = Engine::new(&engine_config()).unwrap();
    let exits = compile(&engine, guest(true).as_bytes()).unwrap();
    let parks = compile(&engine, guest(false).as_bytes()).unwrap();
    // A lost wakeup shows as this limit instead of the expected outcome.
    let limit = Duration::from_secs(60);
    let run = |module, cancel_after: Option<Duration>| {
        let mut runner = Runner::new()
            .engine(engine.clone())
            .stdio(wasi_threads_host::Stdio::new())
            .timeout(limit);
        if let Some(delay) = cancel_after {
            runner = runner.on_start(move |cancel| {
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    cancel.cancel();
                });
            });
        }
        runner.run_module(module).unwrap()
    };

    // Warm up whatever the runtime starts once per process.
    assert_eq!(run(&exits, None), Outcome::Exit { code: 7, tid: 0 });
    #[cfg(target_os = "linux")]
    let baseline = os_threads();

    // A cheap pseudo-random cancel delay (0-15 ms), different every run.
    let seed = AtomicU64::new(0x2545_f491_4f6c_dd1d);
    let next_delay = || {
        let x = seed.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        Duration::from_micros((x >> 40) % 15_000)
    };
    for i in 0..RUNS {
        if i % 2 == 0 {
            assert_eq!(
                run(&exits, None),
                Outcome::Exit { code: 7, tid: 0 },
                "run {i}"
            );
        } else {
            let delay = next_delay();
            assert_eq!(
                run(&parks, Some(delay)),
                Outcome::Cancelled,
                "run {i}, cancelled after {delay:?}"
            );
        }
        // The canceller thread may still be finishing; give it a moment.
        #[cfg(target_os = "linux")]
        {
            let mut now = os_threads();
            for _ in 0..200 {
                if now <= baseline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
                now = os_threads();
            }
            assert!(
                now <= baseline,
                "run {i}: {now} OS threads, {baseline} before"
            );
        }
    }
}
