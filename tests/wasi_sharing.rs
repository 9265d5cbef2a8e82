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

/// The FIFO thread waits for a writer that never comes, without holding
/// what the other threads need: main's ticks (sleeps, clock reads, stderr
/// writes) all happen, and at main's exit the FIFO thread leaves too, so the
/// CLI exits at once (before, its open ran inside the shared context, in a
/// syscall no stop reached, and the CLI waited out the 10 s join timeout).
#[cfg(target_os = "linux")]
#[test]
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

/// A thread waiting to open a FIFO, and threads that keep using the
/// shared WASI context meanwhile. Memory: 0 "fifo", 8 "file", 16 the FIFO
/// thread's "about to open" flag, 20 calls the contenders completed, 24
/// contenders started, 28 the FIFO's open: 0 while inside it, then its
/// errno + 1.
///
/// `wasi_thread_start(tid, 0)` opens the FIFO `fifo` read-only (through the
/// preopen, fd 3), which waits for a writer; `wasi_thread_start(tid, -1)`
/// opens it write-only, which waits for a reader. `wasi_thread_start(tid,
/// i)` for i > 0 uses the context forever: `fd_filestat_get` on the
/// preopen, `path_open` + `fd_close` of `file`, counting completed rounds.
/// `$main` is the body of `_start`.
fn contenders_guest(main: &str) -> String {
    format!(
        r#"(module
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_get" (func $fstat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (data (i32.const 0) "fifo")
  (data (i32.const 8) "file")
  ;; 400: a subscription: monotonic clock, relative, 100 ms
  (data (i32.const 416) "\01\00\00\00\00\00\00\00\00\e1\f5\05\00\00\00\00")
  (func $sleep
    (drop (call $poll (i32.const 400) (i32.const 600) (i32.const 1) (i32.const 700))))
  ;; Opens the FIFO with rights $rights (2: fd_read, 64: fd_write).
  (func $fifo (param $rights i64)
    (i32.atomic.store (i32.const 16) (i32.const 1))
    (i32.atomic.store (i32.const 28)
      (i32.add (i32.const 1)
        (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 4)
          (i32.const 0) (local.get $rights) (i64.const 0) (i32.const 0) (i32.const 32)))))
  (func $contend (param $i i32)
    (local $out i32)
    ;; a filestat (64 bytes) and an fd of its own
    (local.set $out (i32.add (i32.const 2048) (i32.mul (local.get $i) (i32.const 72))))
    (drop (i32.atomic.rmw.add (i32.const 24) (i32.const 1)))
    (loop $round
      (drop (call $fstat (i32.const 3) (local.get $out)))
      (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 8) (i32.const 4)
            (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0)
            (i32.add (local.get $out) (i32.const 64))))
        (then (drop (call $close (i32.load (i32.add (local.get $out) (i32.const 64)))))))
      (drop (i32.atomic.rmw.add (i32.const 20) (i32.const 1)))
      (br $round)))
  ;; Spawns the FIFO thread (argument 0 or -1) and waits until it is about
  ;; to open the FIFO.
  (func $spawn_fifo (param $arg i32)
    (if (i32.lt_s (call $spawn (local.get $arg)) (i32.const 1)) (then unreachable))
    (block $ready
      (loop $wait
        (br_if $ready (i32.atomic.load (i32.const 16)))
        (call $sleep)
        (br $wait))))
  ;; Waits (up to 10 s) until the contenders completed $n rounds.
  (func $rounds (param $n i32) (result i32)
    (local $i i32)
    (loop $watch
      (if (i32.ge_u (i32.atomic.load (i32.const 20)) (local.get $n))
        (then (return (i32.const 1))))
      (call $sleep)
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $watch (i32.lt_u (local.get $i) (i32.const 100))))
    (i32.const 0))
  ;; Waits (up to 10 s) until the FIFO's open returned; its errno + 1, or 0.
  (func $opened (result i32)
    (local $i i32)
    (loop $watch
      (if (i32.atomic.load (i32.const 28)) (then (return (i32.atomic.load (i32.const 28)))))
      (call $sleep)
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $watch (i32.lt_u (local.get $i) (i32.const 100))))
    (i32.const 0))
  ;; Spawns contenders 1..=n.
  (func $spawn_contenders (param $n i32)
    (local $i i32)
    (loop $each
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (i32.lt_s (call $spawn (local.get $i)) (i32.const 1)) (then unreachable))
      (br_if $each (i32.lt_u (local.get $i) (local.get $n)))))
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (if (i32.eqz (local.get $arg)) (then (call $fifo (i64.const 2)) (return)))
    (if (i32.eq (local.get $arg) (i32.const -1)) (then (call $fifo (i64.const 64)) (return)))
    (call $contend (local.get $arg)))
  (func (export "_start")
    (local $i i32)
    {main}))"#
    )
}

/// Main: the FIFO thread (`{fifo}`: 0 reads, -1 writes), then 4
/// contenders; once they have completed 200 rounds, exits 7 if the FIFO
/// thread is still waiting in its open (8 if it is not, 9 if the contenders
/// did not get their rounds in 10 s).
fn fifo_then_exit(fifo: i32) -> String {
    format!(
        "
    (call $spawn_fifo (i32.const {fifo}))
    (call $spawn_contenders (i32.const 4))
    (if (i32.eqz (call $rounds (i32.const 200))) (then (call $exit (i32.const 9))))
    (if (i32.atomic.load (i32.const 28)) (then (call $exit (i32.const 8))))
    (call $exit (i32.const 7))"
    )
}

/// Main: the FIFO thread and 4 contenders, then contends itself (as thread
/// 5) until the program times out.
const FIFO_UNTIL_TIMEOUT: &str = "
    (call $spawn_fifo (i32.const 0))
    (call $spawn_contenders (i32.const 4))
    (call $contend (i32.const 5))";

/// Main: the FIFO thread (`{fifo}`), then exits with what its open returned
/// (0: it opened), or 99 if it did not return in 10 s.
fn fifo_opened(fifo: i32) -> String {
    format!(
        "
    (call $spawn_fifo (i32.const {fifo}))
    (local.set $i (call $opened))
    (if (i32.eqz (local.get $i)) (then (call $exit (i32.const 99))))
    (call $exit (i32.sub (local.get $i) (i32.const 1)))"
    )
}

/// Main: 8 contenders; once they have completed 500 rounds between them,
/// `proc_exit(5)` while they are all still at it.
const CONTEND_THEN_EXIT: &str = "
    (call $spawn_contenders (i32.const 8))
    (block $enough
      (loop $watch
        (br_if $enough (i32.ge_u (i32.atomic.load (i32.const 20)) (i32.const 500)))
        (call $sleep)
        (br $watch)))
    (call $exit (i32.const 5))";

/// A directory with the FIFO and the file the contenders open; removed on
/// drop. Opening the FIFO for writing (without blocking) lets a thread
/// blocked opening it go on, so that an abandoned thread does not outlive
/// the test.
#[cfg(target_os = "linux")]
struct FifoDir(std::path::PathBuf);

#[cfg(target_os = "linux")]
impl FifoDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wasi-threads-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), b"contended").unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join("fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        FifoDir(dir)
    }

    fn release_reader(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: fails (ENXIO) at once if no reader is in the FIFO.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(0o4000)
            .open(self.0.join("fifo"));
    }
}

#[cfg(target_os = "linux")]
impl Drop for FifoDir {
    fn drop(&mut self) {
        self.release_reader();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a run through the library gave.
#[cfg(target_os = "linux")]
struct LibraryRun {
    outcome: wasi_threads_host::Outcome,
    events: Vec<wasi_threads_host::ThreadEvent>,
}

#[cfg(target_os = "linux")]
impl LibraryRun {
    /// The TIDs of the threads `run` abandoned.
    fn abandoned(&self) -> Vec<u32> {
        use wasi_threads_host::ThreadEvent;
        self.events
            .iter()
            .filter_map(|e| match e {
                ThreadEvent::Abandoned { tid } => Some(*tid),
                _ => None,
            })
            .collect()
    }

    /// The TIDs spawned, in order.
    fn spawned(&self) -> Vec<u32> {
        use wasi_threads_host::ThreadEvent;
        self.events
            .iter()
            .filter_map(|e| match e {
                ThreadEvent::Spawned { tid } => Some(*tid),
                _ => None,
            })
            .collect()
    }

    /// How thread `tid` ended, if it did.
    fn exit_of(&self, tid: u32) -> Option<&wasi_threads_host::ThreadExit> {
        use wasi_threads_host::ThreadEvent;
        self.events.iter().find_map(|e| match e {
            ThreadEvent::Exited { tid: t, exit } if *t == tid => Some(exit),
            _ => None,
        })
    }

    /// Asserts that none was abandoned, that exactly `spawned` threads were
    /// spawned, and that each of them, and each of `also`, was stopped.
    fn assert_all_stopped(&self, spawned: usize, also: &[u32]) {
        use wasi_threads_host::ThreadExit;
        assert_eq!(self.abandoned(), Vec::<u32>::new(), "{:?}", self.events);
        let tids = self.spawned();
        assert_eq!(tids.len(), spawned, "{:?}", self.events);
        for &tid in tids.iter().chain(also) {
            assert_eq!(
                self.exit_of(tid),
                Some(&ThreadExit::Stopped),
                "thread {tid}: {:?}",
                self.events
            );
        }
    }
}

/// The join timeout of library runs: short, so that an abandoned thread
/// costs little, and long enough for a thread that can leave to leave.
#[cfg(target_os = "linux")]
const JOIN_TIMEOUT: Duration = Duration::from_millis(1500);

/// Runs `wat` through the library as the runner does (blocking I/O inline on
/// the guest thread), with `dir` preopened as fd 3 and [`JOIN_TIMEOUT`].
#[cfg(target_os = "linux")]
fn run_library(wat: &str, dir: &std::path::Path, timeout: Option<Duration>) -> LibraryRun {
    use wasi_threads_host::{SharedWasi, ThreadsConfig, WasiThreads, compile, engine_config};
    use wasmtime::{Engine, Linker};
    use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

    #[derive(Clone)]
    struct State {
        wasi: SharedWasi,
    }

    let engine = Engine::new(&engine_config()).unwrap();
    let module = compile(&engine, wat.as_bytes()).unwrap();
    let mut config = ThreadsConfig::new().join_timeout(JOIN_TIMEOUT);
    if let Some(timeout) = timeout {
        config = config.timeout(timeout);
    }
    let mut threads = WasiThreads::with_config(&engine, &module, config).unwrap();
    let events = threads.events();
    let mut builder = WasiCtxBuilder::new();
    builder.allow_blocking_current_thread(true);
    builder
        .preopened_dir(dir, "/d", FsPerms::ReadWrite)
        .unwrap();
    let wasi = threads.wasi(builder, wasi_threads_host::Stdio::new());
    let store = threads.new_store(State { wasi }).unwrap();
    let mut linker = Linker::new(&engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)
        .unwrap();
    let outcome = threads.run(&linker, store).unwrap();
    LibraryRun {
        outcome,
        events: events.try_iter().collect(),
    }
}

/// FIFO tests one at a time, so that no other test's helper threads are
/// about when one looks for leftovers.
#[cfg(target_os = "linux")]
static FIFO_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How many of this process's threads are FIFO-open helpers (joined ones
/// given time to leave /proc).
#[cfg(target_os = "linux")]
fn fifo_helpers() -> usize {
    common::threads_left(|comm| comm.starts_with("wasi-threads-fi"))
}

/// A thread waiting to open a FIFO (for reading: for a writer; for writing:
/// for a reader) holds up none of the threads using the context meanwhile,
/// and leaves with them when another thread's `proc_exit` stops the
/// program: nothing is abandoned, and its helper is gone.
#[cfg(target_os = "linux")]
#[test]
fn a_thread_waiting_to_open_a_fifo_holds_up_no_other_thread() {
    use wasi_threads_host::Outcome;
    let _one = FIFO_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    for fifo in [0, -1] {
        let dir = FifoDir::new("fifo-exit");
        let run = run_library(&contenders_guest(&fifo_then_exit(fifo)), &dir.0, None);
        assert_eq!(
            run.outcome,
            Outcome::Exit { code: 7, tid: 0 },
            "end {fifo} (8: the FIFO opened with no other end; 9: the contenders \
             were held up); {:?}",
            run.events
        );
        run.assert_all_stopped(5, &[]);
        assert_eq!(fifo_helpers(), 0);
    }
}

/// As above, with the time-out as the cause, and main itself among the
/// threads using the context.
#[cfg(target_os = "linux")]
#[test]
fn a_thread_waiting_to_open_a_fifo_leaves_at_the_timeout() {
    use wasi_threads_host::{MAIN_TID, Outcome};
    let _one = FIFO_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = FifoDir::new("fifo-timeout");
    let run = run_library(
        &contenders_guest(FIFO_UNTIL_TIMEOUT),
        &dir.0,
        Some(Duration::from_millis(1500)),
    );
    assert_eq!(run.outcome, Outcome::TimedOut, "{:?}", run.events);
    run.assert_all_stopped(5, &[MAIN_TID]);
    assert_eq!(fifo_helpers(), 0);
}

/// A FIFO's open returns once its other end is opened, as it would with no
/// host in between: for reading once a writer comes, for writing once a
/// reader does (here: the test, once the guest waits).
#[cfg(target_os = "linux")]
#[test]
fn a_fifo_opens_once_its_other_end_does() {
    use std::os::unix::fs::OpenOptionsExt;
    use wasi_threads_host::Outcome;
    let _one = FIFO_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    for fifo in [0, -1] {
        let dir = FifoDir::new("fifo-opens");
        let path = dir.0.join("fifo");
        let partner = std::thread::spawn(move || {
            for _ in 0..2000 {
                let mut options = std::fs::OpenOptions::new();
                if fifo == 0 {
                    // O_NONBLOCK (0o4000): a writer opens only once a reader is
                    // waiting: the guest's.
                    options.write(true);
                } else {
                    // A reader, a while after the run starts (opening
                    // one never blocks, so it cannot tell when the guest
                    // waits; either way the guest's open must return).
                    std::thread::sleep(Duration::from_millis(300));
                    options.read(true);
                }
                if let Ok(end) = options.custom_flags(0o4000).open(&path) {
                    return Some(end);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        });
        let run = run_library(&contenders_guest(&fifo_opened(fifo)), &dir.0, None);
        let end = partner.join().unwrap();
        assert!(end.is_some(), "end {fifo}: no other end opened");
        assert_eq!(
            run.outcome,
            Outcome::Exit { code: 0, tid: 0 },
            "end {fifo} (99: the open did not return; else its errno): {:?}",
            run.events
        );
        assert_eq!(run.abandoned(), Vec::<u32>::new(), "{:?}", run.events);
        assert_eq!(fifo_helpers(), 0);
    }
}

/// The CLI, timing out with a thread waiting to open a FIFO and the others
/// using the context: exits 124 at its timeout, with no thread abandoned.
#[cfg(target_os = "linux")]
#[test]
fn the_cli_stops_a_thread_waiting_to_open_a_fifo() {
    let dir = FifoDir::new("fifo-cli");
    let wat = dir.0.join("guest.wat");
    std::fs::write(&wat, contenders_guest(FIFO_UNTIL_TIMEOUT)).unwrap();
    let mapping = format!("{}::/d", dir.0.display());
    let run = run_cli(
        BIN,
        &["--timeout", "1s", "--dir", &mapping, wat.to_str().unwrap()],
        Stdin::Null,
        Duration::from_secs(40),
    );
    assert_eq!(run.code, Some(124), "{}", run.stderr);
    assert!(!run.stderr.contains("did not stop"), "{}", run.stderr);
    // Promptness is the point: 1 s, then the stop; before, 1 s + the 10 s
    // join timeout.
    assert!(run.elapsed < Duration::from_secs(8), "{:?}", run.elapsed);
}

/// Eight threads contending for the context while another thread exits: the
/// ones waiting for it and the one holding it all leave; none is abandoned.
#[cfg(target_os = "linux")]
#[test]
fn threads_contending_for_the_context_all_leave_when_the_program_stops() {
    use wasi_threads_host::Outcome;
    let dir = FifoDir::new("contend");
    let wat = contenders_guest(CONTEND_THEN_EXIT);
    for _ in 0..5 {
        let run = run_library(&wat, &dir.0, None);
        assert_eq!(
            run.outcome,
            Outcome::Exit { code: 5, tid: 0 },
            "{:?}",
            run.events
        );
        run.assert_all_stopped(8, &[]);
    }
}
