//! One WASI context shared by all threads: descriptors shared across
//! threads, no thread stalling another, output untorn and never lost.

mod common;

use common::{Run, Stdin, fixture, run_cli};
use std::collections::HashSet;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wasi-threads");

fn run(args: &[&str]) -> Run {
    run_cli(BIN, args, Stdin::Null, Duration::from_secs(60))
}

#[test]
fn a_file_opened_by_one_thread_is_written_and_closed_by_another() {
    let dir = std::env::temp_dir().join(format!("wasi-threads-share-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mapping = format!("{}::/data", dir.display());
    let wasm = fixture("c-shared-file.wasm");
    let run = run(&["--dir", &mapping, wasm.to_str().unwrap(), "/data/out.txt"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "thread A: wrote 20 bytes\n\
         thread B: wrote 20 bytes, closed fd\n\
         main: fd closed by B is closed here too\n\
         --- content ---\n\
         hello from thread A\n\
         hello from thread B\n\
         --- end ---\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "hello from thread A\nhello from thread B\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sleeping_thread_does_not_stall_a_writer() {
    let wasm = fixture("c-sleep-writer.wasm");
    let run = run(&[wasm.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let expected: String = (0..200).map(|i| format!("writer line {i:03}\n")).collect();
    assert_eq!(run.stdout, expected);
    // The writer reports before the sleeper wakes: its writes did not wait
    // for the 2 s sleep.
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(lines[0].starts_with("200 writes took "), "{}", run.stderr);
    assert!(lines[1].starts_with("sleeper slept "), "{}", run.stderr);
    let micros: u64 = lines[0]
        .trim_start_matches("200 writes took ")
        .trim_end_matches(" us")
        .parse()
        .unwrap();
    assert!(
        micros < 2_000_000,
        "the writes waited for the sleep: {micros} us"
    );
}

#[test]
fn eight_threads_of_lines_arrive_untorn() {
    let wasm = fixture("c-torn-lines.wasm");
    let run = run(&[wasm.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut seen = HashSet::new();
    let mut last = [None::<u32>; 8];
    for line in run.stdout.split_inclusive('\n') {
        assert_eq!(line.len(), 60, "torn line {line:?}");
        let (t, rest) = line[1..].split_once(" L").unwrap();
        let t: usize = t.parse().unwrap();
        let (l, fill) = rest.split_once(' ').unwrap();
        let l: u32 = l.parse().unwrap();
        let letter = (b'a' + t as u8) as char;
        assert!(
            fill.trim_end_matches('\n').chars().all(|c| c == letter),
            "{line:?}"
        );
        assert!(
            last[t].is_none_or(|p| p < l),
            "thread {t} out of order at {l}"
        );
        last[t] = Some(l);
        assert!(seen.insert((t, l)), "duplicate {line:?}");
    }
    assert_eq!(seen.len(), 8 * 2000);
}

#[test]
fn exit_while_another_thread_writes_loses_no_completed_line() {
    let wasm = fixture("c-exit-midwrite.wasm");
    for _ in 0..5 {
        let run = run(&[wasm.to_str().unwrap()]);
        assert_eq!(run.code, Some(3), "{}", run.stderr);
        let seen: usize = run
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("exit(3) after "))
            .and_then(|l| l.split(' ').next()?.parse().ok())
            .expect("main reports how many lines it saw completed");
        assert!(seen >= 1000);
        let lines: Vec<&str> = run.stdout.split_inclusive('\n').collect();
        assert!(
            lines.len() >= seen,
            "{} lines on stdout, {seen} completed",
            lines.len()
        );
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(*line, format!("line {i:08}\n"), "line {i}");
        }
    }
}

#[test]
fn fdstat_set_flags_works_on_a_shared_descriptor() {
    // Opens /d/f.txt, sets APPEND on it and exits with the errno (0 = ok).
    let dir = std::env::temp_dir().join(format!("wasi-threads-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wat = dir.join("flags.wat");
    std::fs::write(
        &wat,
        r#"(module
          (import "wasi_snapshot_preview1" "path_open"
            (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_fdstat_set_flags" (func $flags (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
          (import "env" "memory" (memory 1 1 shared))
          (export "memory" (memory 0))
          (data (i32.const 0) "f.txt")
          (func (export "wasi_thread_start") (param i32 i32))
          (func (export "_start")
            (local $e i32)
            ;; dirfd 3 (the preopen), path "f.txt" at 0, O_CREAT, rights all
            (local.set $e (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 5)
              (i32.const 1) (i64.const 0x42) (i64.const 0) (i32.const 0) (i32.const 64)))
            (if (local.get $e) (then (call $exit (i32.add (i32.const 40) (local.get $e)))))
            ;; APPEND = 1
            (call $exit (call $flags (i32.load (i32.const 64)) (i32.const 1)))))"#,
    )
    .unwrap();
    let mapping = format!("{}::/d", dir.display());
    let run = run(&["--dir", &mapping, wat.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stdin_data_reaches_a_reading_thread_intact() {
    // A spawned thread copies stdin to stdout until end of file while main
    // waits for it; exits with 0.
    let dir = std::env::temp_dir().join(format!("wasi-threads-cat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wat = dir.join("cat.wat");
    std::fs::write(
        &wat,
        r#"(module
          (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
          (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
          (import "env" "memory" (memory 2 2 shared))
          (export "memory" (memory 0))
          ;; 0: done flag; 16: iovec {ptr 1024, len}; 32: nread; 1024: buffer
          (func (export "wasi_thread_start") (param i32 i32)
            (block $eof
              (loop $copy
                (i32.store (i32.const 16) (i32.const 1024))
                (i32.store (i32.const 20) (i32.const 7))
                (br_if $eof (call $read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 32)))
                (br_if $eof (i32.eqz (i32.load (i32.const 32))))
                (i32.store (i32.const 20) (i32.load (i32.const 32)))
                (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 36)))
                (br $copy)))
            (i32.atomic.store (i32.const 0) (i32.const 1))
            (drop (memory.atomic.notify (i32.const 0) (i32.const 1))))
          (func (export "_start")
            (drop (call $spawn (i32.const 0)))
            (block $done
              (loop $wait
                (br_if $done (i32.atomic.load (i32.const 0)))
                (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))
                (br $wait)))))"#,
    )
    .unwrap();
    let input: &'static [u8] = b"the quick brown fox jumps over the lazy dog\nand again\n";
    let run = run_cli(
        BIN,
        &[wat.to_str().unwrap()],
        Stdin::Bytes(input),
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.as_bytes(), input);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Main writes to stdout forever; stdout is a pipe the test never reads, so
/// after 64 KiB every write blocks. A spawned thread prints "tick" to stderr
/// every 100 ms.
const BLOCKED_WRITER: &str = r#"(module
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  ;; 100: iovec {4096, 4096} (zeros); 200: iovec {300, 5}; 300: "tick\n"
  (data (i32.const 100) "\00\10\00\00\00\10\00\00")
  (data (i32.const 200) "\2c\01\00\00\05\00\00\00")
  (data (i32.const 300) "tick\n")
  ;; 400: a subscription: monotonic clock (id 1), relative, 100 ms
  (data (i32.const 416) "\01\00\00\00\00\00\00\00\00\e1\f5\05\00\00\00\00")
  (func (export "wasi_thread_start") (param i32 i32)
    (loop $tick
      (drop (call $poll (i32.const 400) (i32.const 600) (i32.const 1) (i32.const 700)))
      (drop (call $write (i32.const 2) (i32.const 200) (i32.const 1) (i32.const 704)))
      (br $tick)))
  (func (export "_start")
    (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 1)) (then unreachable))
    (loop $flood
      (drop (call $write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 708)))
      (br $flood))))"#;

#[test]
fn a_writer_blocked_on_stdout_stalls_no_other_thread_and_is_stopped() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let dir = std::env::temp_dir().join(format!("wasi-threads-blocked-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wat = dir.join("blocked.wat");
    std::fs::write(&wat, BLOCKED_WRITER).unwrap();

    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(["--timeout", "3s", wat.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held, never read, until the end of the test.
    let stdout = child.stdout.take();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited_after = start.elapsed();
    let stderr = reader.join().unwrap();
    drop(stdout);
    let status = status.unwrap_or_else(|| panic!("the CLI did not exit\n{stderr}"));
    assert_eq!(status.code(), Some(124), "{stderr}");
    let ticks = stderr.lines().filter(|l| *l == "tick").count();
    // 30 in 3 s when nothing stalls, 0 when the writer holds a lock the
    // ticker needs.
    assert!(ticks >= 5, "{ticks} ticks\n{stderr}");
    // Promptness is the point: without the fix the CLI outlives its
    // timeout by the join timeout (10 s), then waits for the pipe's reader.
    assert!(
        exited_after < Duration::from_secs(10),
        "exited after {exited_after:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A spawned thread opens and reads a FIFO (through the preopen) that no one
/// ever writes; main reads the clock (a call that takes the fd table) ten
/// times, printing a tick each time, then exits.
const FIFO_READER: &str = r#"(module
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (data (i32.const 0) "fifo")
  ;; 100: iovec {1024, 16}; 200: iovec {300, 5}; 300: "tick\n"
  (data (i32.const 100) "\00\04\00\00\10\00\00\00")
  (data (i32.const 200) "\2c\01\00\00\05\00\00\00")
  (data (i32.const 300) "tick\n")
  ;; 400: a subscription: monotonic clock, relative, 100 ms
  (data (i32.const 416) "\01\00\00\00\00\00\00\00\00\e1\f5\05\00\00\00\00")
  (func (export "wasi_thread_start") (param i32 i32)
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 4)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 64))
      (then unreachable))
    (drop (call $read (i32.load (i32.const 64)) (i32.const 100) (i32.const 1) (i32.const 68))))
  (func (export "_start")
    (local $i i32)
    (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 1)) (then unreachable))
    (loop $tick
      (drop (call $poll (i32.const 400) (i32.const 600) (i32.const 1) (i32.const 700)))
      (drop (call $clock (i32.const 1) (i64.const 0) (i32.const 800)))
      (drop (call $write (i32.const 2) (i32.const 200) (i32.const 1) (i32.const 704)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $tick (i32.lt_u (local.get $i) (i32.const 10))))
    (call $exit (i32.const 0))))"#;

/// Not yet: `wasmtime-wasi` keeps its descriptors private, so a FIFO's open
/// and read run inside the call on the shared context, holding its lock (and,
/// with blocking allowed on the current thread, in a syscall no stop signal
/// reaches). See the WASI notes in the README.
#[test]
#[ignore = "a FIFO open/read through a preopen still holds the fd table's lock"]
fn a_thread_blocked_on_a_fifo_stalls_no_other_thread_and_is_stopped() {
    let dir = std::env::temp_dir().join(format!("wasi-threads-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let wat = dir.join("fifo.wat");
    std::fs::write(&wat, FIFO_READER).unwrap();
    let mapping = format!("{}::/d", dir.display());
    let run = run_cli(
        BIN,
        &["--dir", &mapping, wat.to_str().unwrap()],
        Stdin::Null,
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stderr.matches("tick\n").count(), 10, "{}", run.stderr);
    assert!(
        run.elapsed < Duration::from_secs(8),
        "took {:?}",
        run.elapsed
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
