//! Hostile guests, churn and races: the host never crashes, hangs or leaks,
//! whatever the guest does, and the outcome is always one of the causes that
//! actually happened.

mod common;

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use wasi_threads_host::CompiledModule;
use wasi_threads_host::{MAIN_TID, Outcome, Runner, compile, engine_config};
use wasmtime::Engine;

/// These tests count the process's threads; they must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

fn engine() -> Engine {
    Engine::new(&engine_config()).unwrap()
}

/// Counts the guest threads' OS threads by name in /proc/self/task (joined
/// ones given time to leave it).
#[cfg(target_os = "linux")]
fn guest_threads_alive() -> usize {
    common::threads_left(is_guest_thread)
}

/// The guest threads listed now, with no grace (for a peak while running).
#[cfg(target_os = "linux")]
fn guest_threads_listed() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| is_guest_thread(name.trim()))
        .count()
}

#[cfg(target_os = "linux")]
fn is_guest_thread(name: &str) -> bool {
    name.starts_with("wasi-thread-") || name == "wasi-main"
}

/// Only Linux lets a process list its threads by name (/proc/self/task);
/// elsewhere the thread-count checks are skipped and the outcome checks
/// remain.
#[cfg(not(target_os = "linux"))]
fn guest_threads_alive() -> usize {
    0
}

/// Reads /proc/self/status, which only Linux has.
#[cfg(target_os = "linux")]
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn run(module: &CompiledModule, args: &[&str]) -> Outcome {
    Runner::new()
        .args(args.iter().copied())
        .stdio(wasi_threads_host::Stdio::new())
        .timeout(Duration::from_secs(60))
        .run_module(module)
        .unwrap()
}

fn fixture_module(engine: &Engine, name: &str) -> CompiledModule {
    let file = format!("{name}.wasm");
    compile(engine, &std::fs::read(common::fixture(&file)).unwrap()).unwrap()
}

// Watches threads and RSS through /proc, which only Linux has.
#[cfg(target_os = "linux")]
#[test]
fn hundred_thousand_short_lived_threads_with_eight_alive() {
    let _serial = SERIAL.lock();
    let engine = engine();
    let module = fixture_module(&engine, "c-churn");
    // Warm up, then watch thread count and RSS across a full churn.
    assert_eq!(
        run(&module, &["c-churn", "1000"]),
        Outcome::Exit {
            code: 0,
            tid: MAIN_TID
        }
    );
    let rss_before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(guest_threads_listed(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let outcome = run(&module, &["c-churn", "100000"]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(
        outcome,
        Outcome::Exit {
            code: 0,
            tid: MAIN_TID
        }
    );
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    // OS threads outlive their guest threads briefly (store teardown, the
    // supervisor joining them), so allow some slack; what matters is that the
    // count stays bounded however many threads churn through.
    assert!(peak <= 32, "peak {peak} guest threads");
    assert_eq!(guest_threads_alive(), 0);
    let rss_after = rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
}

#[test]
fn a_thousand_live_threads() {
    let _serial = SERIAL.lock();
    let engine = engine();
    let module = fixture_module(&engine, "c-many-live");
    assert_eq!(
        run(&module, &["c-many-live", "1000"]),
        Outcome::Exit {
            code: 0,
            tid: MAIN_TID
        }
    );
    assert_eq!(guest_threads_alive(), 0);
}

#[test]
fn memory_grown_by_one_thread_is_seen_by_all() {
    let engine = engine();
    let module = fixture_module(&engine, "c-grow");
    let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 16);
    let captured = stdout.clone();
    let outcome = Runner::new()
        .arg("c-grow")
        .stdio(wasi_threads_host::Stdio::new())
        .configure_wasi(move |b| {
            b.stdout(captured);
        })
        .run_module(&module)
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Exit {
            code: 0,
            tid: MAIN_TID
        }
    );
    let out = String::from_utf8(stdout.contents().to_vec()).unwrap();
    assert_eq!(
        out,
        "thread: grew memory\n\
         main: block[0]=0 block[1048576]=3145728 block[2097151]=6291453 sum=6597066620928\n\
         main: raw pages ok\n"
    );
}

/// A guest whose threads race to end the program in various ways.
fn race_guest(body: &str) -> String {
    format!(
        r#"(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  ;; 0: go flag; 4: started counter; 8: a word nobody changes
  (func $park (loop $p (drop (memory.atomic.wait32 (i32.const 8) (i32.const 0) (i64.const -1))) (br $p)))
  {body})"#
    )
}

fn repeat(module: &CompiledModule, times: usize, ok: impl Fn(&Outcome) -> bool) {
    for i in 0..times {
        let start = Instant::now();
        let outcome = run(module, &["race"]);
        assert!(ok(&outcome), "run {i}: unexpected {outcome:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "run {i} took {:?}",
            start.elapsed()
        );
    }
    assert_eq!(guest_threads_alive(), 0);
}

#[test]
fn proc_exit_from_sixteen_threads_at_once() {
    let _serial = SERIAL.lock();
    let module = compile(
        &engine(),
        race_guest(
            r#"(func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
                 (drop (i32.atomic.rmw.add (i32.const 4) (i32.const 1)))
                 (loop $w (br_if $w (i32.eqz (i32.atomic.load (i32.const 0)))))
                 (call $exit (local.get $arg)))
               (func (export "_start") (local $i i32)
                 (loop $l
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (drop (call $spawn (local.get $i)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 16))))
                 (loop $w (br_if $w (i32.lt_u (i32.atomic.load (i32.const 4)) (i32.const 16))))
                 (i32.atomic.store (i32.const 0) (i32.const 1))
                 (call $park))"#,
        )
        .as_bytes(),
    )
    .unwrap();
    repeat(
        &module,
        200,
        |o| matches!(o, Outcome::Exit { code, tid } if (1..=16).contains(code) && *tid != MAIN_TID),
    );
}

#[test]
fn trap_during_a_spawn_burst() {
    let _serial = SERIAL.lock();
    let module = compile(
        &engine(),
        race_guest(
            r#"(func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
                 (if (i32.eq (local.get $arg) (i32.const 5)) (then unreachable))
                 (call $park))
               (func (export "_start") (local $i i32)
                 (loop $l
                   (drop (call $spawn (local.get $i)))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 40))))
                 (call $park))"#,
        )
        .as_bytes(),
    )
    .unwrap();
    repeat(
        &module,
        200,
        |o| matches!(o, Outcome::Trap { tid, trap } if *tid != MAIN_TID && trap.message().contains("unreachable")),
    );
}

#[test]
fn start_returning_while_threads_are_being_spawned() {
    let _serial = SERIAL.lock();
    // Every thread spawns another (until 64 have been spawned) and parks.
    let module = compile(
        &engine(),
        race_guest(
            r#"(func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
                 (if (i32.lt_u (i32.atomic.rmw.add (i32.const 4) (i32.const 1)) (i32.const 64))
                   (then (drop (call $spawn (i32.const 0)))))
                 (call $park))
               (func (export "_start")
                 (drop (call $spawn (i32.const 0)))
                 (drop (call $spawn (i32.const 0))))"#,
        )
        .as_bytes(),
    )
    .unwrap();
    repeat(&module, 200, |o| {
        *o == Outcome::Exit {
            code: 0,
            tid: MAIN_TID,
        }
    });
}

#[test]
fn cancel_at_any_moment() {
    let _serial = SERIAL.lock();
    let module = compile(
        &engine(),
        race_guest(
            r#"(func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
                 (loop $spin (br $spin)))
               (func (export "_start") (local $i i32)
                 (loop $l
                   (drop (call $spawn (local.get $i)))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 8))))
                 (call $park))"#,
        )
        .as_bytes(),
    )
    .unwrap();
    for i in 0..200u64 {
        // Cancel before the program starts, during instantiation, or while
        // threads spawn: delays from 0 to ~2 ms.
        let delay = Duration::from_micros((i * 7919) % 2000);
        let outcome = Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .on_start(move |cancel| {
                if delay.is_zero() {
                    cancel.cancel();
                } else {
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        cancel.cancel();
                    });
                }
            })
            .run_module(&module)
            .unwrap();
        assert_eq!(outcome, Outcome::Cancelled, "run {i}");
    }
    assert_eq!(guest_threads_alive(), 0);
}

/// A seeded random schedule: main spawns threads that each do one of
/// return / trap / proc_exit(code) / park / spin, then main itself returns,
/// traps, exits or parks. The outcome must be one of the causes the schedule
/// contains, `run` must return, and no thread may remain.
#[test]
fn random_schedules() {
    let _serial = SERIAL.lock();
    let engine = engine();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for case in 0..100 {
        let threads = 1 + next(12) as usize;
        let mut actions = Vec::new();
        for _ in 0..threads {
            actions.push(next(5) as i32); // 0 return, 1 trap, 2 exit, 3 park, 4 spin
        }
        let main_action = next(4); // 0 return, 1 trap, 2 exit(77), 3 park
        // Each thread's action and exit code (10 + index) are passed as arg.
        let mut spawns = String::new();
        for (i, a) in actions.iter().enumerate() {
            spawns.push_str(&format!(
                "(drop (call $spawn (i32.const {})))\n",
                a * 1000 + 10 + i as i32
            ));
        }
        let main_end = match main_action {
            0 => "",
            1 => "unreachable",
            2 => "(call $exit (i32.const 77))",
            _ => "(call $park)",
        };
        let wat = race_guest(&format!(
            r#"(func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
                 (local $a i32)
                 (local.set $a (i32.div_u (local.get $arg) (i32.const 1000)))
                 (if (i32.eq (local.get $a) (i32.const 1)) (then unreachable))
                 (if (i32.eq (local.get $a) (i32.const 2))
                   (then (call $exit (i32.rem_u (local.get $arg) (i32.const 1000)))))
                 (if (i32.eq (local.get $a) (i32.const 3)) (then (call $park)))
                 (if (i32.eq (local.get $a) (i32.const 4)) (then (loop $spin (br $spin)))))
               (func (export "_start") {spawns} {main_end})"#
        ));
        let module = compile(&engine, wat.as_bytes()).unwrap();
        let start = Instant::now();
        let outcome = Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .timeout(Duration::from_secs(2))
            .run_module(&module)
            .unwrap();
        let thread_trap = actions.contains(&1);
        let thread_exit = |code: i32| {
            actions
                .iter()
                .enumerate()
                .any(|(i, a)| *a == 2 && code == 10 + i as i32)
        };
        let ok = match &outcome {
            Outcome::Exit {
                code: 0,
                tid: MAIN_TID,
            } => main_action == 0,
            Outcome::Exit {
                code: 77,
                tid: MAIN_TID,
            } => main_action == 2,
            Outcome::Trap { tid: MAIN_TID, .. } => main_action == 1,
            Outcome::Trap { .. } => thread_trap,
            Outcome::Exit { code, tid } => *tid != MAIN_TID && thread_exit(*code),
            // Only when nothing ends the program: main parks, no thread ends it.
            Outcome::TimedOut => main_action == 3 && !thread_trap && !actions.contains(&2),
            _ => false,
        };
        assert!(
            ok,
            "case {case}: {actions:?} main {main_action}: {outcome:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(guest_threads_alive(), 0, "case {case}");
    }
}

/// With a limit of one live thread, spawning right after the guest saw its
/// previous thread finish must never fail: the TID is free by then, or
/// thread-spawn waits the moment it takes to become free.
#[test]
fn spawn_right_after_join_at_the_limit_never_fails() {
    let _serial = SERIAL.lock();
    let module = compile(
        &engine(),
        race_guest(
            r#"(func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
                 (i32.atomic.store (i32.const 0) (i32.const 1))
                 (drop (memory.atomic.notify (i32.const 0) (i32.const 1))))
               (func (export "_start") (local $i i32)
                 (loop $l
                   (i32.atomic.store (i32.const 0) (i32.const 0))
                   (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 0))
                     (then (call $exit (i32.const 1))))
                   ;; "join": wait until the thread says it is done
                   (block $joined
                     (loop $w
                       (br_if $joined (i32.atomic.load (i32.const 0)))
                       (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))
                       (br $w)))
                   (local.set $i (i32.add (local.get $i) (i32.const 1)))
                   (br_if $l (i32.lt_u (local.get $i) (i32.const 2000))))
                 (call $exit (i32.const 0)))"#,
        )
        .as_bytes(),
    )
    .unwrap();
    let outcome = Runner::new()
        .stdio(wasi_threads_host::Stdio::new())
        .max_threads(1)
        .run_module(&module)
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Exit {
            code: 0,
            tid: MAIN_TID
        }
    );
}
