//! The `wasi-threads` CLI on the bundled fixtures and on bad input: exit
//! codes, stdout and stderr as a user sees them.

mod common;

use common::{Run, Stdin, fixture, run_cli};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wasi-threads");
const LIMIT: Duration = Duration::from_secs(60);

fn cli(args: &[&str]) -> Run {
    run_cli(BIN, args, Stdin::Null, LIMIT)
}

fn run_fixture(name: &str, args: &[&str]) -> Run {
    let path = fixture(name);
    let mut all = vec![path.to_str().unwrap()];
    all.extend_from_slice(args);
    cli(&all)
}

#[track_caller]
fn assert_exit(run: &Run, code: i32) {
    assert_eq!(
        run.code,
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn rust_std_threads() {
    let run = run_fixture("rust-threads.wasm", &[]);
    assert_exit(&run, 0);
    assert_eq!(
        run.stdout,
        "spawn/join: [500500, 1001000, 1501500, 2002000]\n\
         condvar handshake: 10 rounds ok\n\
         mpsc: 1000 messages, per producer [250, 250, 250, 250], sum 124500\n\
         scope: sum 999000\n\
         thread_local: threads [1, 2, 3], main 99\n\
         rust-threads ok\n"
    );
}

#[test]
fn rust_rayon() {
    let run = run_fixture("rust-rayon.wasm", &[]);
    assert_exit(&run, 0);
    assert_eq!(
        run.stdout,
        "par sum 1..=1000000: 500000500000\n\
         par filter/map sum: 166601277579\n\
         par sort: len 1000000 sorted true min 878 max 2147476767 median 1073456353 checksum 1073899187278715\n\
         rayon::join fib(25): 75025\n\
         rust-rayon ok\n"
    );
}

#[test]
fn c_pthreads() {
    let run = run_fixture("c-pthreads.wasm", &[]);
    assert_exit(&run, 0);
    assert_eq!(
        run.stdout,
        "join results: 500500 1001000 1501500 2002000\n\
         mutex counter: 40000\n\
         condvar queue: received 100 values, sum 5050\n\
         thread-local: 1000 1010 1020 1030; main still 555 555\n\
         barrier: phase sums 10 20 30, serial threads 3\n\
         c-pthreads ok\n"
    );
}

#[test]
fn exit_code_from_main() {
    let run = run_fixture("c-exit-code.wasm", &[]);
    assert_exit(&run, 42);
    assert_eq!(run.stdout, "thread ran\njoined\n");
}

#[test]
fn exit_from_a_spawned_thread_ends_the_program() {
    let run = run_fixture("c-exit-thread.wasm", &[]);
    assert_exit(&run, 17);
    assert_eq!(run.stdout, "thread calling exit(17)\n");
}

#[test]
fn trap_in_a_spawned_thread_is_134_with_thread_and_backtrace() {
    let run = run_fixture("c-trap-thread.wasm", &[]);
    assert_exit(&run, 134);
    assert!(run.stderr.contains("thread 1 trapped"), "{}", run.stderr);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    assert!(
        run.stderr.contains("c-trap-thread.wasm!worker"),
        "{}",
        run.stderr
    );
}

#[test]
fn rust_panic_in_a_thread_is_a_trap() {
    let run = run_fixture("rust-panic-thread.wasm", &[]);
    assert_exit(&run, 134);
    assert!(run.stderr.contains("trapped"), "{}", run.stderr);
}

#[test]
fn main_returning_ends_the_program_while_threads_run() {
    let run = run_fixture("c-main-return.wasm", &[]);
    assert_exit(&run, 0);
    assert_eq!(run.stdout, "main done\n");
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}",
        run.elapsed
    );
}

#[test]
fn stack_overflow_in_a_thread_is_a_trap_not_a_crash() {
    let run = run_fixture("c-stack-overflow.wasm", &[]);
    assert_exit(&run, 134);
    assert!(
        run.stderr.contains("call stack exhausted"),
        "{}",
        run.stderr
    );
}

#[test]
fn spawning_past_the_limit_is_eagain_and_recovers() {
    let run = run_fixture("c-spawn-limit.wasm", &[]);
    assert_exit(&run, 0);
    assert!(run.stdout.contains(": EAGAIN\n"), "{}", run.stdout);
    assert!(run.stdout.ends_with("recovered\n"), "{}", run.stdout);
    // With a lower limit, the guest sees exactly that many threads.
    let path = fixture("c-spawn-limit.wasm");
    let run = cli(&["--max-threads", "5", path.to_str().unwrap()]);
    assert_exit(&run, 0);
    assert!(
        run.stdout.contains("limit reached after 5: EAGAIN\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn preopened_dir_and_args_reach_the_guest() {
    let dir = std::env::temp_dir().join(format!("wasi-threads-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = fixture("c-shared-file.wasm");
    let mapping = format!("{}::/data", dir.display());
    let run = cli(&["--dir", &mapping, path.to_str().unwrap(), "/data/out.txt"]);
    assert_exit(&run, 0);
    let written = std::fs::read_to_string(dir.join("out.txt")).unwrap();
    assert!(!written.is_empty());
    assert!(
        run.stdout.contains(&written),
        "stdout {:?} file {:?}",
        run.stdout,
        written
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn env_reaches_the_guest() {
    // A tiny WASI command (text format) that exits with the length of its
    // environment block, so the variable's arrival is observable.
    let dir = std::env::temp_dir().join(format!("wasi-threads-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wat = dir.join("env.wat");
    std::fs::write(
        &wat,
        r#"(module
            (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start")
              (drop (call $sizes (i32.const 0) (i32.const 4)))
              (call $exit (i32.load (i32.const 4)))))"#,
    )
    .unwrap();
    let run = cli(&["--env", "ABC=12345", wat.to_str().unwrap()]);
    // "ABC=12345\0" is 10 bytes.
    assert_exit(&run, 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("wasi-threads-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello, not wasm\n").unwrap();
    let truncated = dir.join("truncated.wasm");
    let bytes = std::fs::read(fixture("c-pthreads.wasm")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let start_traps = dir.join("start-traps.wat");
    std::fs::write(
        &start_traps,
        r#"(module (func $init unreachable) (start $init) (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .unwrap();
    let unshared = dir.join("unshared.wat");
    std::fs::write(
        &unshared,
        r#"(module (import "wasi" "thread-spawn" (func (param i32) (result i32)))
             (import "env" "memory" (memory 1 2)) (func (export "_start")))"#,
    )
    .unwrap();
    let no_max = dir.join("no-max.wat");
    std::fs::write(
        &no_max,
        r#"(module (import "env" "memory" (memory 1 shared)) (func (export "_start")))"#,
    )
    .unwrap();
    let unknown = dir.join("unknown.wat");
    std::fs::write(
        &unknown,
        r#"(module (import "nowhere" "nothing" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .unwrap();

    for (args, needle) in [
        (vec!["/definitely/not/here.wasm"], "cannot read"),
        (vec![text.to_str().unwrap()], "not a WebAssembly module"),
        (vec![truncated.to_str().unwrap()], "cannot run"),
        (vec![unknown.to_str().unwrap()], "nowhere"),
        (vec![start_traps.to_str().unwrap()], "unreachable"),
        (vec![unshared.to_str().unwrap()], "not shared"),
        (vec![no_max.to_str().unwrap()], "maximum"),
    ] {
        let run = cli(&args);
        assert_exit(&run, 1);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim_end().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    for args in [
        &["--max-threads", "many", "x.wasm"][..],
        &["--no-such-flag", "x.wasm"],
        &[],
    ] {
        let run = cli(args);
        assert_exit(&run, 1);
        assert_eq!(
            run.stderr.trim_end().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn timeout_stops_the_program_with_124() {
    let path = fixture("c-infinite.wasm");
    let run = cli(&["--timeout", "300ms", path.to_str().unwrap()]);
    assert_exit(&run, 124);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
}

#[test]
fn help_and_version() {
    let run = cli(&["--help"]);
    assert_exit(&run, 0);
    for flag in ["--dir", "--env", "--max-threads", "--timeout"] {
        assert!(run.stdout.contains(flag), "{}", run.stdout);
    }
    let run = cli(&["--version"]);
    assert_exit(&run, 0);
    assert!(run.stdout.starts_with("wasi-threads "), "{}", run.stdout);
}
