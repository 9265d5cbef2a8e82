//! The schedule mode through the library API (issue 31): a run is a function
//! of (module, inputs, seed); exploration finds the lost update of an
//! atomic load followed by a store, and of a plain load/add/store under the
//! finer granularity; its replay reproduces it every time; a correct
//! program passes every seed; time and randomness are virtual; a program
//! whose threads all wait for good is a deadlock, not a hang.

mod common;

use std::time::{Duration, Instant};
use wasi_threads_host::{
    Explore, Granularity, Mix, Outcome, Run, Runner, Schedule, SharedOutput, Stdio, ThreadsConfig,
    WasiThreads, engine_config,
};
use wasmtime::Engine;

/// Generous: a scheduled run here takes milliseconds; the limit is only
/// there so that a hang fails the test instead of stalling it.
const LIMIT: Duration = Duration::from_secs(120);

fn counter() -> Vec<u8> {
    std::fs::read(common::fixture("sched-counter.wasm")).expect("fixture")
}

/// One scheduled run of `module` with `args`, its stdout in memory.
fn run(
    engine: &Engine,
    module: &wasi_threads_host::CompiledModule,
    args: &[&str],
    schedule: Schedule,
) -> Run {
    let (stdout, out) = SharedOutput::memory(1 << 20);
    let (stderr, err) = SharedOutput::memory(1 << 20);
    let log = schedule.log();
    let outcome = Runner::new()
        .engine(engine.clone())
        .arg("guest.wasm")
        .args(args.iter().copied())
        .stdio(Stdio::new().stdout(stdout).stderr(stderr))
        .timeout(LIMIT)
        .schedule(schedule)
        .run_module(module)
        .expect("the program starts");
    Run {
        outcome,
        stdout: out.contents(),
        stderr: err.contents(),
        report: log.report(),
    }
}

fn engine() -> Engine {
    Engine::new(&engine_config()).expect("engine")
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let engine = engine();
    let module = wasi_threads_host::compile_scheduled(&engine, &counter(), Granularity::Atomics)
        .expect("compile");
    for seed in [1, 2, 3] {
        let runs: Vec<Run> = (0..3)
            .map(|_| {
                run(
                    &engine,
                    &module,
                    &["load-store", "4", "50"],
                    Schedule::random(seed),
                )
            })
            .collect();
        let first = &runs[0];
        let report = first.report.as_ref().expect("a report");
        assert!(report.steps > 400, "{report:?}");
        assert!(report.preemptions > 0, "{report:?}");
        for other in &runs[1..] {
            assert_eq!(other.outcome, first.outcome);
            assert_eq!(other.stdout, first.stdout);
            assert_eq!(other.report, first.report);
        }
    }
}

#[test]
fn exploration_finds_the_lost_update_and_its_replay_reproduces_it_every_time() {
    let engine = engine();
    let module = wasi_threads_host::compile_scheduled(&engine, &counter(), Granularity::Atomics)
        .expect("compile");
    let args = ["load-store", "4", "50"];
    // A normal run practically never loses one.
    let normal = wasi_threads_host::compile(&engine, &counter()).expect("compile");
    let (stdout, out) = SharedOutput::memory(1 << 20);
    let outcome = Runner::new()
        .engine(engine.clone())
        .arg("guest.wasm")
        .args(args)
        .stdio(Stdio::new().stdout(stdout))
        .run_module(&normal)
        .expect("runs");
    assert_eq!(
        outcome.exit_status(),
        0,
        "{}",
        String::from_utf8_lossy(&out.contents())
    );

    let config = Explore::new(100).jobs(2).shrink_runs(60);
    let report = wasi_threads_host::explore(&config, |schedule| {
        Ok(run(&engine, &module, &args, schedule))
    })
    .expect("explores");
    let failure = report.failure.expect("a losing schedule among 100");
    assert_eq!(failure.run.outcome.exit_status(), 1, "{}", failure.why);
    assert!(failure.replayed);
    assert!(
        failure.preemptions.1 <= failure.preemptions.0,
        "{:?}",
        failure.preemptions
    );
    let expected = failure.run.stdout.clone();
    assert!(String::from_utf8_lossy(&expected).starts_with("total "));
    for _ in 0..100 {
        let again = run(&engine, &module, &args, failure.replay());
        assert_eq!(again.outcome.exit_status(), 1);
        assert_eq!(again.stdout, expected);
    }
}

#[test]
fn fetch_add_passes_every_seed() {
    let engine = engine();
    let module = wasi_threads_host::compile_scheduled(&engine, &counter(), Granularity::Atomics)
        .expect("compile");
    let report = wasi_threads_host::explore(&Explore::new(100).jobs(2), |schedule| {
        Ok(run(&engine, &module, &["fetch-add", "4", "50"], schedule))
    })
    .expect("explores");
    assert!(
        report.failure.is_none(),
        "{:?}",
        report.failure.map(|f| f.why)
    );
    assert_eq!(report.runs, 100);
    assert!(report.preemptions > 100, "{report:?}");
}

#[test]
fn a_plain_data_race_shows_at_the_finer_granularity() {
    let engine = engine();
    let bytes = counter();
    let args = ["plain", "4", "50"];
    let explore = |granularity| {
        let module =
            wasi_threads_host::compile_scheduled(&engine, &bytes, granularity).expect("compile");
        // Shrinking is not what this test is about: a few runs of it.
        let config = Explore::new(60)
            .jobs(2)
            .granularity(granularity)
            .shrink_runs(10);
        wasi_threads_host::explore(&config, |schedule| {
            Ok(run(&engine, &module, &args, schedule))
        })
        .expect("explores")
    };
    let fine = explore(Granularity::Accesses);
    let failure = fine
        .failure
        .expect("a losing schedule with a point at every access");
    assert_eq!(failure.run.outcome.exit_status(), 1);
    assert_eq!(failure.replay().granularity_of(), Granularity::Accesses);
    // Between a plain load and its store there is no point at the coarse
    // granularity: no schedule can split them.
    let coarse = explore(Granularity::Atomics);
    assert!(coarse.failure.is_none());
}

#[test]
fn pct_and_random_each_find_the_lost_update() {
    let engine = engine();
    let module = wasi_threads_host::compile_scheduled(&engine, &counter(), Granularity::Atomics)
        .expect("compile");
    for mix in [Mix::Pct, Mix::Random] {
        let config = Explore::new(100).mix(mix).jobs(2).shrink_runs(0);
        let report = wasi_threads_host::explore(&config, |schedule| {
            Ok(run(&engine, &module, &["load-store", "2", "50"], schedule))
        })
        .expect("explores");
        assert!(
            report.failure.is_some(),
            "{mix:?} found nothing in 100 seeds"
        );
    }
}

/// A module whose main thread does `body` with WASI's `poll_oneoff`,
/// `clock_time_get`, `random_get` and `fd_write` at hand.
fn wasi_module(body: &str) -> String {
    format!(
        r#"(module
            (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
            (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
            (import "env" "memory" (memory 1 1 shared))
            (func (export "wasi_thread_start") (param i32 i32))
            (func (export "_start") (local $t0 i64) (local $t1 i64)
              {body}))"#
    )
}

fn run_wat(wat: &str, schedule: Schedule) -> (Outcome, Vec<u8>) {
    let engine = engine();
    let module =
        wasi_threads_host::compile_scheduled(&engine, wat.as_bytes(), Granularity::Atomics)
            .expect("compile");
    let r = run(&engine, &module, &[], schedule);
    (r.outcome, r.stdout)
}

#[test]
fn an_hour_of_sleep_takes_no_time() {
    // Subscription at 0: userdata 0, tag 0 (clock), clock id 1
    // (monotonic) at 16, timeout 3600 s at 24, precision 0, flags 0;
    // events at 64. Exits 0 if the monotonic clock moved by at least an
    // hour and the poll returned one event.
    let wat = wasi_module(
        r#"
        (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 200)))
        (local.set $t0 (i64.load (i32.const 200)))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const 3600000000000))
        (if (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 120))
          (then (call $exit (i32.const 10))))
        (if (i32.ne (i32.load (i32.const 120)) (i32.const 1))
          (then (call $exit (i32.const 11))))
        (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 200)))
        (local.set $t1 (i64.load (i32.const 200)))
        (if (i64.lt_u (i64.sub (local.get $t1) (local.get $t0)) (i64.const 3600000000000))
          (then (call $exit (i32.const 12))))
        ;; A timed wait of 10 s that nobody notifies times out (2).
        (call $exit (i32.sub (memory.atomic.wait32 (i32.const 300) (i32.const 0) (i64.const 10000000000)) (i32.const 2)))"#,
    );
    let started = Instant::now();
    let (outcome, _) = run_wat(&wat, Schedule::random(1));
    assert_eq!(outcome, Outcome::Exit { code: 0, tid: 0 });
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "virtual sleep took {:?}",
        started.elapsed()
    );
}

#[test]
fn random_get_and_the_wall_clock_come_from_the_seed() {
    // Writes 16 random bytes and the wall clock's 8 to stdout.
    let wat = wasi_module(
        r#"
        (drop (call $random (i32.const 104) (i32.const 16)))
        (drop (call $clock (i32.const 0) (i64.const 0) (i32.const 120)))
        (i32.store (i32.const 0) (i32.const 104))
        (i32.store (i32.const 4) (i32.const 24))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"#,
    );
    let (_, a) = run_wat(&wat, Schedule::random(5));
    let (_, b) = run_wat(&wat, Schedule::random(5));
    let (_, c) = run_wat(&wat, Schedule::random(6));
    assert_eq!(a.len(), 24);
    assert_eq!(a, b);
    assert_ne!(a[..16], c[..16]);
    let wall = u64::from_le_bytes(a[16..24].try_into().unwrap());
    let epoch = wasi_threads_host::VIRTUAL_EPOCH_SECS * 1_000_000_000;
    assert!((epoch..epoch + 1_000_000_000).contains(&wall), "{wall}");
}

#[test]
fn every_thread_waiting_for_good_is_a_deadlock_not_a_hang() {
    // The main thread spawns one that waits at 8, then waits at 0 itself:
    // nobody will ever notify either.
    let wat = r#"(module
        (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
        (import "env" "memory" (memory 1 1 shared))
        (func (export "wasi_thread_start") (param i32 i32)
          (drop (memory.atomic.wait32 (i32.const 8) (i32.const 0) (i64.const -1))))
        (func (export "_start")
          (drop (call $spawn (i32.const 0)))
          (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#;
    let schedule = Schedule::random(0);
    let log = schedule.log();
    let (outcome, _) = run_wat(wat, schedule);
    assert_eq!(
        outcome,
        Outcome::Deadlock {
            blocked: vec![0, 1]
        }
    );
    assert_eq!(outcome.exit_status(), 124);
    assert!(log.report().expect("a report").deadlocked);
}

#[test]
fn a_schedule_and_its_module_must_agree() {
    let engine = engine();
    let normal = wasi_threads_host::compile(&engine, &counter()).expect("compile");
    let scheduled = wasi_threads_host::compile_scheduled(&engine, &counter(), Granularity::Atomics)
        .expect("compile");
    assert!(normal.granularity().is_none());
    assert_eq!(scheduled.granularity(), Some(Granularity::Atomics));
    let err = WasiThreads::<()>::with_config(
        &engine,
        &normal,
        ThreadsConfig::new().schedule(Schedule::random(0)),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("compile_scheduled"), "{err}");
    let err = WasiThreads::<()>::new(&engine, &scheduled)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("Schedule"), "{err}");
}
