//! The `wasi-threads` CLI on the bundled fixtures and on bad input: exit
//! codes, stdout and stderr as a user sees them.

mod common;

use common::{Run, Stdin, fixture, run_cli, run_cli_env};
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
fn bad_input_is_one_line_and_exit_1_usage_errors_exit_2() {
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
        (
            vec!["/definitely/not/here.wasm"],
            "failed to open wasm module \"/definitely/not/here.wasm\"",
        ),
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
    // Usage errors are clap's, exit status 2, as `wasmtime run` gives them.
    for (args, needle) in [
        (&["--max-threads", "many", "x.wasm"][..], "'many'"),
        (&["--no-such-flag", "x.wasm"], "'--no-such-flag'"),
        (&[], "module"),
    ] {
        let run = cli(args);
        assert_exit(&run, 2);
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{args:?}: {}", run.stderr);
        assert!(first.contains(needle), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
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
    for flag in [
        "--dir",
        "--env",
        "--max-threads",
        "--timeout",
        "--wasm",
        "--wasi",
    ] {
        assert!(run.stdout.contains(flag), "{}", run.stdout);
    }
    let run = cli(&["--version"]);
    assert_exit(&run, 0);
    assert!(run.stdout.starts_with("wasi-threads "), "{}", run.stdout);
    assert!(run.stdout.contains("(Wasmtime 48."), "{}", run.stdout);
    let run = cli(&["run", "-V"]);
    assert_exit(&run, 0);
    assert!(run.stdout.contains("(Wasmtime 48."), "{}", run.stdout);
    for group in ["-W", "-S", "-D", "-C", "-O"] {
        let run = cli(&[group, "help"]);
        assert_exit(&run, 0);
        assert!(run.stdout.contains(&format!("{group} ")), "{}", run.stdout);
    }
}

/// A WASI command that writes its arguments and then its environment to
/// stdout, each NUL-terminated, as `args_get` and `environ_get` return them.
const ECHO_WAT: &str = r#"(module
    (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "environ_get" (func $env (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
    (memory (export "memory") 4)
    (func $dump (param $buf i32) (param $len i32)
      (i32.store (i32.const 0) (local.get $buf))
      (i32.store (i32.const 4) (local.get $len))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
    (func (export "_start")
      (drop (call $args_sizes (i32.const 16) (i32.const 20)))
      (drop (call $args (i32.const 1024) (i32.const 8192)))
      (call $dump (i32.const 8192) (i32.load (i32.const 20)))
      (drop (call $env_sizes (i32.const 16) (i32.const 20)))
      (drop (call $env (i32.const 1024) (i32.const 65536)))
      (call $dump (i32.const 65536) (i32.load (i32.const 20)))))"#;

/// A scratch directory removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("wasi-threads-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The NUL-terminated strings the echo module printed.
fn echoed(run: &Run) -> Vec<&str> {
    run.stdout.split_terminator('\0').collect()
}

#[test]
fn every_argument_after_the_module_goes_to_the_guest() {
    let scratch = Scratch::new("guest-args");
    let echo = scratch.file("echo.wat", ECHO_WAT);
    for flag in [
        "--version",
        "-V",
        "--help",
        "-h",
        "--dir",
        "-W",
        "run",
        "--",
    ] {
        let run = cli(&[&echo, flag]);
        assert_exit(&run, 0);
        assert_eq!(
            echoed(&run)[..2],
            [echo.as_str(), flag],
            "{flag}: {:?}",
            run.stdout
        );
        // Not our own help or version.
        assert!(
            !run.stdout.contains("Wasmtime 48"),
            "{flag}: {}",
            run.stdout
        );
        assert!(!run.stdout.contains("Usage"), "{flag}: {}", run.stdout);
    }
    let run = cli(&["run", "--", &echo, "--version", "-h"]);
    assert_exit(&run, 0);
    assert_eq!(echoed(&run)[..3], [echo.as_str(), "--version", "-h"]);
}

#[test]
fn argv0_and_inherited_environment() {
    let scratch = Scratch::new("argv0");
    let echo = scratch.file("echo.wat", ECHO_WAT);
    let run = cli(&["--argv0", "rg", &echo, "x"]);
    assert_exit(&run, 0);
    assert_eq!(echoed(&run), ["rg", "x"]);
    // `-S inherit-env` passes the host's environment (the test harness sets
    // WASI_THREADS_LOG for every run); `--env` adds to it.
    let run = cli(&["-S", "inherit-env", "--env", "EXTRA=1", &echo]);
    assert_exit(&run, 0);
    let strings = echoed(&run);
    assert!(strings.contains(&"WASI_THREADS_LOG=warn"), "{strings:?}");
    assert!(strings.contains(&"EXTRA=1"), "{strings:?}");
}

#[test]
fn tokio_runner_line_runs_the_module() {
    // tokio's CI: CARGO_TARGET_WASM32_WASIP1_THREADS_RUNNER="wasmtime run -W
    // bulk-memory=y -W threads=y -W shared-memory=y -S threads=y --".
    let path = fixture("rust-threads.wasm");
    let run = cli(&[
        "run",
        "-W",
        "bulk-memory=y",
        "-W",
        "threads=y",
        "-W",
        "shared-memory=y",
        "-S",
        "threads=y",
        "--",
        path.to_str().unwrap(),
    ]);
    assert_exit(&run, 0);
    assert!(run.stdout.ends_with("rust-threads ok\n"), "{}", run.stdout);
}

#[test]
fn wasi_libc_and_older_runner_lines_run_the_module() {
    let path = fixture("c-pthreads.wasm");
    let path = path.to_str().unwrap();
    for line in [
        // wasi-libc's test harness and wasi-sdk's CI.
        &["--wasi", "threads", "--wasm", "shared-memory", path][..],
        // The Rust target documentation, old and new.
        &["run", "-S", "threads=y", path],
        &[
            "--wasm-features",
            "threads",
            "--wasi-modules",
            "experimental-wasi-threads",
            path,
        ],
        &["-W", "threads,shared-memory,bulk-memory", "-Sthreads", path],
        &["--wasm=threads", "--wasi=threads", path],
    ] {
        let run = cli(line);
        assert_exit(&run, 0);
        assert!(
            run.stdout.ends_with("c-pthreads ok\n"),
            "{line:?}: {}",
            run.stdout
        );
    }
}

#[test]
fn wasmtime_options_that_change_behaviour_are_applied() {
    let path = fixture("c-infinite.wasm");
    let run = cli(&["-W", "timeout=300ms", path.to_str().unwrap()]);
    assert_exit(&run, 124);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);

    // Native debug info and profiler integration still run the program.
    let path = fixture("rust-threads.wasm");
    for line in [
        &["-D", "debug-info", path.to_str().unwrap()][..],
        &["--profile", "perfmap", path.to_str().unwrap()],
        &["-W", "simd=y,tail-call", path.to_str().unwrap()],
    ] {
        let run = cli(line);
        assert_exit(&run, 0);
        assert!(
            run.stdout.ends_with("rust-threads ok\n"),
            "{line:?}: {}",
            run.stdout
        );
    }

    // Switching a proposal off is applied: a module using SIMD no longer loads.
    let scratch = Scratch::new("simd-off");
    let simd = scratch.file(
        "simd.wat",
        r#"(module (memory (export "memory") 1)
             (func (export "_start") (drop (v128.const i64x2 0 0))))"#,
    );
    assert_exit(&cli(&[&simd]), 0);
    // `simd=n` alone also turns relaxed SIMD off (the engine refuses one
    // without the other).
    let run = cli(&["-W", "simd=n", &simd]);
    assert_exit(&run, 1);
    assert!(run.stderr.contains("SIMD"), "{}", run.stderr);
    let threads = fixture("rust-threads.wasm");
    assert_exit(&cli(&["-W", "simd=n", threads.to_str().unwrap()]), 0);
}

#[test]
fn unknown_and_unsupported_options_are_usage_errors_naming_them() {
    let path = fixture("rust-threads.wasm");
    let path = path.to_str().unwrap();
    for (line, needle) in [
        (&["-W", "fuel=1000", path][..], "fuel"),
        (
            &["-W", "threads,nan-canonicalization", path],
            "nan-canonicalization",
        ),
        (&["-S", "nn", path], "nn"),
        (&["-S", "threads=n", path], "threads=n"),
        (&["-W", "threads=no", path], "threads=n"),
        (&["-D", "coredump=core", path], "coredump"),
        (&["--profile", "guest", path], "guest"),
        (&["--wasm-features", "gc", path], "gc"),
        (
            &["--wasi-modules", "experimental-wasi-nn", path],
            "experimental-wasi-nn",
        ),
        (&["-O", "opt-level=3", path], "opt-level=3"),
        (&["-O", "memory-reservation=0", path], "memory-reservation"),
        (&["-C", "compiler=llvm", path], "llvm"),
        (
            &["-C", "cranelift-debug-verifier", path],
            "cranelift-debug-verifier",
        ),
    ] {
        let run = cli(line);
        assert_exit(&run, 2);
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error: "), "{line:?}: {}", run.stderr);
        assert!(first.contains(needle), "{line:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{line:?}: {}", run.stdout);
    }
}

/// A thread that writes to stdout until it blocks; once it has filled the
/// pipe (two 32 KiB writes done, a third on its way), the main thread calls
/// `proc_exit(3)`.
const STUCK_WRITER_WAT: &str = r#"(module
    (import "env" "memory" (memory 1 1 shared))
    (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
    (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
    (export "memory" (memory 0))
    (func (export "wasi_thread_start") (param i32 i32)
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 32768))
      (loop $forever
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
        (drop (i32.atomic.rmw.add (i32.const 8) (i32.const 1)))
        (br $forever)))
    (func (export "_start") (local $spin i32)
      (drop (call $spawn (i32.const 0)))
      (loop $filling
        (br_if $filling (i32.lt_u (i32.atomic.load (i32.const 8)) (i32.const 2))))
      ;; Give the third write time to block in the kernel.
      (local.set $spin (i32.const 100000000))
      (loop $spinning
        (local.set $spin (i32.sub (local.get $spin) (i32.const 1)))
        (br_if $spinning (local.get $spin)))
      (call $exit (i32.const 3))))"#;

#[test]
fn exits_promptly_while_a_thread_is_stuck_writing_to_a_full_stdout_pipe() {
    use std::process::{Command, Stdio};
    let scratch = Scratch::new("stuck-writer");
    let module = scratch.file("stuck-writer.wat", STUCK_WRITER_WAT);
    // stdout is a pipe nobody reads, kept open until the child is gone.
    let mut child = Command::new(BIN)
        .arg(&module)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _unread_stdout = child.stdout.take();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let status = status.unwrap_or_else(|| panic!("still running after {LIMIT:?}: {stderr}"));
    assert_eq!(status.code(), Some(3), "{stderr}");
}

#[test]
fn wasmtime_memory_and_stack_limits_map_onto_the_runner() {
    // A limit below the module's minimum memory is a load error; a generous
    // one changes nothing.
    let path = fixture("c-pthreads.wasm");
    let path = path.to_str().unwrap();
    let run = cli(&["-W", "max-memory-size=65536", path]);
    assert_exit(&run, 1);
    assert!(run.stderr.contains("memory"), "{}", run.stderr);
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    let run = cli(&["-W", "max-memory-size=1_073_741_824", path]);
    assert_exit(&run, 0);
    assert!(run.stdout.ends_with("c-pthreads ok\n"), "{}", run.stdout);

    // A small wasm stack still turns runaway recursion into a trap; a large
    // one still runs threads.
    let overflow = fixture("c-stack-overflow.wasm");
    let run = cli(&["-W", "max-wasm-stack=65536", overflow.to_str().unwrap()]);
    assert_exit(&run, 134);
    assert!(
        run.stderr.contains("call stack exhausted"),
        "{}",
        run.stderr
    );
    let threads = fixture("rust-threads.wasm");
    let run = cli(&["-W", "max-wasm-stack=0x100000", threads.to_str().unwrap()]);
    assert_exit(&run, 0);
}

/// Runs `args` with `XDG_CACHE_HOME` in `scratch`, so that the module cache
/// is this test's own.
fn cli_cached(scratch: &Scratch, args: &[&str], log: &str) -> Run {
    let home = scratch.0.join("cache-home");
    run_cli_env(
        BIN,
        args,
        &[
            ("XDG_CACHE_HOME", home.to_str().unwrap()),
            ("WASI_THREADS_LOG", log),
        ],
        Stdin::Null,
        LIMIT,
    )
}

/// Entries in the scratch module cache (one `.cwasm` per compiled module).
fn cache_entries(scratch: &Scratch) -> usize {
    let dir = scratch.0.join("cache-home/wasi-threads/modules");
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .count()
    })
}

/// The first line of stderr, for usage errors.
fn first_line(run: &Run) -> &str {
    run.stderr.lines().next().unwrap_or_default()
}

#[track_caller]
fn assert_usage_error(run: &Run, needles: &[&str]) {
    assert_exit(run, 2);
    let first = first_line(run);
    assert!(first.starts_with("error: "), "{}", run.stderr);
    for needle in needles {
        assert!(first.contains(needle), "{needle:?}: {}", run.stderr);
    }
}

#[test]
fn flag_codegen_cache_n_is_no_cache() {
    let scratch = Scratch::new("flag-cache");
    let path = fixture("c-pthreads.wasm");
    let path = path.to_str().unwrap();
    let run = cli_cached(&scratch, &["-C", "cache=n", path], "warn");
    assert_exit(&run, 0);
    assert_eq!(cache_entries(&scratch), 0, "-C cache=n wrote the cache");
    let run = cli_cached(&scratch, &["--no-cache", path], "warn");
    assert_exit(&run, 0);
    assert_eq!(cache_entries(&scratch), 0, "--no-cache wrote the cache");
    let run = cli_cached(&scratch, &["-C", "cache=y", path], "warn");
    assert_exit(&run, 0);
    assert_eq!(cache_entries(&scratch), 1);
    assert_usage_error(&cli(&["-C", "cache=maybe", path]), &["maybe"]);
}

#[test]
fn flag_codegen_parallel_compilation_n_compiles_on_one_thread() {
    let path = fixture("c-pthreads.wasm");
    let run = cli(&[
        "--no-cache",
        "-C",
        "parallel-compilation=n",
        path.to_str().unwrap(),
    ]);
    assert_exit(&run, 0);
    assert!(run.stdout.ends_with("c-pthreads ok\n"), "{}", run.stdout);
    assert_usage_error(
        &cli(&["-C", "parallel-compilation=2", path.to_str().unwrap()]),
        &["parallel-compilation", "2"],
    );
}

#[test]
fn flag_codegen_compiler_winch_runs_threads_stops_and_caches_apart() {
    // Winch, the baseline compiler (issue 30: a first run compiles about 4x
    // faster), runs the same rewritten module: threads, a trap's exit code
    // and backtrace, and a timeout's stop all behave as under Cranelift; the
    // cache keeps the two compilers' code apart.
    let scratch = Scratch::new("flag-winch");
    let pthreads = fixture("c-pthreads.wasm");
    let pthreads = pthreads.to_str().unwrap();
    let winch = cli_cached(&scratch, &["-C", "compiler=winch", pthreads], "warn");
    assert_exit(&winch, 0);
    assert!(
        winch.stdout.ends_with("c-pthreads ok\n"),
        "{}",
        winch.stdout
    );
    assert_eq!(cache_entries(&scratch), 1);
    let cranelift = cli_cached(&scratch, &["-C", "compiler=cranelift", pthreads], "warn");
    assert_exit(&cranelift, 0);
    assert_eq!(cranelift.stdout, winch.stdout);
    assert_eq!(cache_entries(&scratch), 2, "one entry per compiler");
    let again = cli_cached(&scratch, &["-C", "compiler=winch", pthreads], "warn");
    assert_exit(&again, 0);
    assert_eq!(again.stdout, winch.stdout);
    assert_eq!(cache_entries(&scratch), 2);

    let trap = fixture("c-trap-thread.wasm");
    let run = cli(&["--no-cache", "-C", "compiler=winch", trap.to_str().unwrap()]);
    assert_exit(&run, 134);
    assert!(run.stderr.contains("thread 1 trapped"), "{}", run.stderr);
    assert!(
        run.stderr.contains("c-trap-thread.wasm!worker"),
        "{}",
        run.stderr
    );

    let infinite = fixture("c-infinite.wasm");
    let run = cli(&[
        "--no-cache",
        "-C",
        "compiler=winch",
        "--timeout",
        "300ms",
        infinite.to_str().unwrap(),
    ]);
    assert_exit(&run, 124);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
}

#[test]
fn flag_optimize_opt_level_changes_the_compiled_code() {
    // Another optimization level is other compiled code: a cache entry of
    // its own.
    let scratch = Scratch::new("flag-opt");
    let path = fixture("c-pthreads.wasm");
    let path = path.to_str().unwrap();
    assert_exit(&cli_cached(&scratch, &[path], "warn"), 0);
    assert_eq!(cache_entries(&scratch), 1);
    let run = cli_cached(&scratch, &["-O", "opt-level=0", path], "warn");
    assert_exit(&run, 0);
    assert!(run.stdout.ends_with("c-pthreads ok\n"), "{}", run.stdout);
    assert_eq!(cache_entries(&scratch), 2);
    assert_exit(
        &cli_cached(&scratch, &["-O", "opt-level=2", path], "warn"),
        0,
    );
    assert_eq!(cache_entries(&scratch), 2, "opt-level=2 is the default");
}

#[test]
fn flag_invoke_runs_start_and_refuses_other_functions() {
    let path = fixture("c-pthreads.wasm");
    let path = path.to_str().unwrap();
    let run = cli(&["--invoke", "_start", path]);
    assert_exit(&run, 0);
    assert!(run.stdout.ends_with("c-pthreads ok\n"), "{}", run.stdout);
    assert_usage_error(
        &cli(&["--invoke", "main", path]),
        &["--invoke main", "_start"],
    );
}

#[test]
fn flag_wasm_fuel_is_refused_saying_why() {
    let path = fixture("c-pthreads.wasm");
    let run = cli(&["-W", "fuel=1000000", path.to_str().unwrap()]);
    assert_usage_error(&run, &["-W fuel", "store", "timeout"]);
}

#[test]
fn flag_wasm_unknown_imports_trap() {
    let scratch = Scratch::new("flag-unknown-imports");
    let unused = scratch.file(
        "unused.wat",
        r#"(module (import "nowhere" "nothing" (func)) (memory (export "memory") 1)
             (func (export "_start")))"#,
    );
    let called = scratch.file(
        "called.wat",
        r#"(module (import "nowhere" "nothing" (func $f)) (memory (export "memory") 1)
             (func (export "_start") (call $f)))"#,
    );
    let run = cli(&[&unused]);
    assert_exit(&run, 1);
    assert!(run.stderr.contains("nowhere"), "{}", run.stderr);
    assert_exit(&cli(&["-W", "unknown-imports-trap", &unused]), 0);
    let run = cli(&["-W", "unknown-imports-trap=y", &called]);
    assert_exit(&run, 134);
    assert!(run.stderr.contains("nowhere"), "{}", run.stderr);
}

#[test]
fn flag_allow_precompiled_is_accepted_and_precompiled_modules_refused() {
    let scratch = Scratch::new("flag-precompiled");
    let path = fixture("c-pthreads.wasm");
    let run = cli(&["--allow-precompiled", path.to_str().unwrap()]);
    assert_exit(&run, 0);
    // What `wasmtime compile` writes is an ELF file.
    let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
    elf.resize(256, 0);
    let cwasm = scratch.0.join("module.cwasm");
    std::fs::write(&cwasm, &elf).unwrap();
    for line in [
        &["--allow-precompiled", cwasm.to_str().unwrap()][..],
        &[cwasm.to_str().unwrap()],
    ] {
        let run = cli(line);
        assert_exit(&run, 1);
        assert!(run.stderr.contains("precompiled"), "{}", run.stderr);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    }
}

#[test]
fn flag_debug_coredump_is_refused_saying_why() {
    let path = fixture("c-trap-thread.wasm");
    let run = cli(&["-D", "coredump=core.dump", path.to_str().unwrap()]);
    assert_usage_error(&run, &["-D coredump", "store"]);
}

#[test]
fn flag_wasi_inherit_network_is_accepted() {
    let path = fixture("c-pthreads.wasm");
    let run = cli(&["-S", "inherit-network", path.to_str().unwrap()]);
    assert_exit(&run, 0);
    assert!(run.stdout.ends_with("c-pthreads ok\n"), "{}", run.stdout);
    assert_usage_error(
        &cli(&["-S", "inherit-network=perhaps", path.to_str().unwrap()]),
        &["perhaps"],
    );
}

#[test]
fn flag_wasi_tcplisten_is_refused_saying_why() {
    let path = fixture("c-pthreads.wasm");
    let run = cli(&["-S", "tcplisten=127.0.0.1:0", path.to_str().unwrap()]);
    assert_usage_error(&run, &["-S tcplisten", "sockets"]);
}

#[test]
fn logs_follow_wasi_threads_log_never_rust_log() {
    let path = fixture("rust-threads.wasm");
    let path = path.to_str().unwrap();
    // RUST_LOG is the guest's business (and often set for a whole CI job).
    let run = run_cli_env(
        BIN,
        &["--no-cache", path],
        &[("RUST_LOG", "trace"), ("WASI_THREADS_LOG", "warn")],
        Stdin::Null,
        LIMIT,
    );
    assert_exit(&run, 0);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let run = run_cli_env(
        BIN,
        &["--no-cache", path],
        &[("WASI_THREADS_LOG", "wasi_threads_host=debug")],
        Stdin::Null,
        LIMIT,
    );
    assert_exit(&run, 0);
    for needle in [
        "thread 1 spawned",
        "thread 1 returned",
        "thread 0 returned",
        "stopping every thread",
    ] {
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }
    // `-D logging=n` silences even an explicit level.
    let run = run_cli_env(
        BIN,
        &["-D", "logging=n", "--no-cache", path],
        &[("WASI_THREADS_LOG", "debug")],
        Stdin::Null,
        LIMIT,
    );
    assert_exit(&run, 0);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn cache_hits_are_logged_at_debug_level() {
    let scratch = Scratch::new("cache-log");
    let path = fixture("c-pthreads.wasm");
    let path = path.to_str().unwrap();
    let first = cli_cached(&scratch, &[path], "wasi_threads_host=debug");
    assert_exit(&first, 0);
    assert!(!first.stderr.contains("from the cache"), "{}", first.stderr);
    let second = cli_cached(&scratch, &[path], "wasi_threads_host=debug");
    assert_exit(&second, 0);
    assert!(
        second.stderr.contains("from the cache"),
        "{}",
        second.stderr
    );
}

#[test]
fn a_refused_spawn_is_the_guests_to_report_not_a_host_warning() {
    let path = fixture("c-spawn-limit.wasm");
    let run = run_cli_env(
        BIN,
        &["--max-threads", "4", path.to_str().unwrap()],
        &[("WASI_THREADS_LOG", "warn")],
        Stdin::Null,
        LIMIT,
    );
    assert_exit(&run, 0);
    assert!(
        run.stdout.contains("limit reached after 4: EAGAIN\n"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn a_text_syntax_error_names_file_line_and_column_with_a_caret() {
    let scratch = Scratch::new("wat-syntax");
    let wat = scratch.file(
        "syntax.wat",
        "(module\n  (func (export \"_start\")\n    i32.const 1\n    i32.addd\n  ))\n",
    );
    let run = cli(&[&wat]);
    assert_exit(&run, 1);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines[0].starts_with("Error: "), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("--> {wat}:4:5")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("4 |     i32.addd"), "{}", run.stderr);
    assert!(
        lines.iter().any(|l| l.trim_end().ends_with("|     ^")),
        "{}",
        run.stderr
    );
}

#[test]
fn components_are_named_as_unsupported() {
    let scratch = Scratch::new("component");
    let text = scratch.file("component.wat", "(component)");
    let binary = scratch.0.join("component.wasm");
    std::fs::write(&binary, b"\0asm\x0d\0\x01\0").unwrap();
    for path in [text.as_str(), binary.to_str().unwrap()] {
        let run = cli(&[path]);
        assert_exit(&run, 1);
        assert!(
            run.stderr.contains("does not support components"),
            "{path}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_bad_dir_is_reported_before_the_module_is_read() {
    // The module is not even a module: the --dir error must come first.
    let scratch = Scratch::new("bad-dir");
    let garbage = scratch.file("garbage.wasm", "not a module");
    let file = scratch.file("file.txt", "a file");
    for dir in ["/definitely/not/here", file.as_str()] {
        let run = cli(&["--dir", dir, &garbage]);
        assert_exit(&run, 1);
        assert!(
            run.stderr
                .starts_with(&format!("Error: failed to open directory '{dir}'")),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("WebAssembly"), "{}", run.stderr);
    }
}

#[test]
fn flag_codegen_cache_config_turns_on_wasmtimes_cache_with_that_file() {
    let scratch = Scratch::new("flag-cache-config");
    let path = fixture("c-pthreads.wasm");
    let path = path.to_str().unwrap();
    let missing = scratch.0.join("missing.toml");
    let run = cli(&["-C", &format!("cache-config={}", missing.display()), path]);
    assert_exit(&run, 1);
    assert!(
        run.stderr.starts_with("Error: failed to read config file"),
        "{}",
        run.stderr
    );
    let wasmtime_cache = scratch.0.join("wasmtime-cache");
    let config = scratch.file(
        "cache.toml",
        &format!(
            "[cache]\ndirectory = {:?}\n",
            wasmtime_cache.to_str().unwrap()
        ),
    );
    let run = cli_cached(
        &scratch,
        &["-C", &format!("cache-config={config}"), path],
        "warn",
    );
    assert_exit(&run, 0);
    let entries = walk_files(&wasmtime_cache);
    assert!(
        entries
            .iter()
            .any(|p| p.to_string_lossy().contains("modules")),
        "{entries:?}"
    );
    assert_usage_error(&cli(&["-C", "cache-config", path]), &["cache-config"]);
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}
