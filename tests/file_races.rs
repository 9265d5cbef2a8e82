//! Races between guest threads on one file description, run as a user
//! runs them: small threaded guests (WebAssembly text, built here) whose
//! threads share a descriptor, each outcome checked against what a native
//! program gets from the kernel.
//!
//! - a thread writes 8-byte records at a file's position while another
//!   seeks by 0 from the position or the end (what `ftell` does): every
//!   record is in the file, in order;
//! - a thread reads records at the position while another seeks by 0 from
//!   it: every record is read once, in order;
//! - a guest holds a FIFO open for writing while the host reads it: the
//!   reader sees end of file only after the guest's close;
//! - a guest holds a FIFO open for reading while the host writes it: the
//!   host's write succeeds (no `EPIPE`);
//! - one `fd_write` of 2 MiB to stdout writes all of it.
//!
//! Each scenario runs `FILE_RACES_RUNS` times (in the suite: 3 times, the
//! FIFO ones, 20 ms each, 100 and 300 times; `just file-races 1000` runs
//! the stress).

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasi_threads_host::CompiledModule;
use wasi_threads_host::{Outcome, Runner};
use wasmtime::Engine;

const RECORDS: u32 = 20_000;

/// How many times each scenario runs: `FILE_RACES_RUNS`, else `default`.
fn runs_or(default: usize) -> usize {
    std::env::var("FILE_RACES_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn runs() -> usize {
    runs_or(3)
}

fn engine() -> Engine {
    Engine::new(&wasi_threads_host::engine_config()).expect("engine")
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("wasi-threads-races-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The imports and helpers every guest here shares. Memory layout: 0 the
/// fd, 4 "done" (the main thread's work is over), 8 "stopped" (the other
/// thread has seen it), 16 an iovec, 32 a count, 40 a seek result, 64 the
/// file's name, 128 a record, 256 the other thread's seek result.
const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "env" "memory" (memory $m 1 1 shared))
  (export "memory" (memory $m))
  (data (i32.const 64) "f")

  ;; Opens "f" in the preopen (fd 3) with these oflags and rights, or exits 2.
  (func $open (param $oflags i32) (param $rights i64)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 1)
          (local.get $oflags) (local.get $rights) (local.get $rights) (i32.const 0) (i32.const 0))
      (then (call $proc_exit (i32.const 2)))))

  ;; Starts the other thread, or exits 3.
  (func $start_other
    (if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 0))
      (then (call $proc_exit (i32.const 3)))))

  ;; The main thread's work is over: tell the other thread, wait until it
  ;; has stopped, exit 0.
  (func $finish
    (i32.atomic.store (i32.const 4) (i32.const 1))
    (loop $wait
      (if (i32.eqz (i32.atomic.load (i32.const 8)))
        (then
          (drop (memory.atomic.wait32 (i32.const 8) (i32.const 0) (i64.const -1)))
          (br $wait))))
    (call $proc_exit (i32.const 0)))

  ;; The other thread: `fd_seek(fd, 0, whence)` until the main thread is done.
  (func $seeker (param $whence i32)
    (loop $l
      (drop (call $fd_seek (i32.load (i32.const 0)) (i64.const 0) (local.get $whence) (i32.const 256)))
      (br_if $l (i32.eqz (i32.atomic.load (i32.const 4)))))
    (i32.atomic.store (i32.const 8) (i32.const 1))
    (drop (memory.atomic.notify (i32.const 8) (i32.const 1))))
"#;

/// Rights: read, seek, tell, write.
const RW: &str = "0x66";

/// Writes `RECORDS` records (their index, as a u64) at the position while
/// the other thread seeks by 0 with `whence` (1: current, 2: end).
fn writer_and_seeker(whence: u32) -> String {
    format!(
        r#"(module {PRELUDE}
  (func (export "wasi_thread_start") (param i32 i32) (call $seeker (i32.const {whence})))
  (func (export "_start") (local $i i32)
    ;; CREAT | TRUNC
    (call $open (i32.const 9) (i64.const {RW}))
    (call $start_other)
    (loop $w
      (i64.store (i32.const 128) (i64.extend_i32_u (local.get $i)))
      (i32.store (i32.const 16) (i32.const 128))
      (i32.store (i32.const 20) (i32.const 8))
      (if (call $fd_write (i32.load (i32.const 0)) (i32.const 16) (i32.const 1) (i32.const 32))
        (then (call $proc_exit (i32.const 4))))
      (if (i32.ne (i32.load (i32.const 32)) (i32.const 8))
        (then (call $proc_exit (i32.const 5))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $w (i32.lt_u (local.get $i) (i32.const {RECORDS}))))
    (call $finish)))"#
    )
}

/// Reads records at the position, each of which must be the next index,
/// while the other thread seeks by 0 from the position; exits 6 on a record
/// out of order, 7 if the count at end of file is not `RECORDS`.
fn reader_and_seeker() -> String {
    format!(
        r#"(module {PRELUDE}
  (func (export "wasi_thread_start") (param i32 i32) (call $seeker (i32.const 1)))
  (func (export "_start") (local $i i32)
    (call $open (i32.const 0) (i64.const {RW}))
    (call $start_other)
    (block $eof
      (loop $r
        (i32.store (i32.const 16) (i32.const 128))
        (i32.store (i32.const 20) (i32.const 8))
        (if (call $fd_read (i32.load (i32.const 0)) (i32.const 16) (i32.const 1) (i32.const 32))
          (then (call $proc_exit (i32.const 4))))
        (br_if $eof (i32.eqz (i32.load (i32.const 32))))
        (if (i32.ne (i32.load (i32.const 32)) (i32.const 8))
          (then (call $proc_exit (i32.const 5))))
        (if (i64.ne (i64.load (i32.const 128)) (i64.extend_i32_u (local.get $i)))
          (then (call $proc_exit (i32.const 6))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $r)))
    (if (i32.ne (local.get $i) (i32.const {RECORDS}))
      (then (call $proc_exit (i32.const 7))))
    (call $finish)))"#
    )
}

/// Opens the FIFO "f" with these rights (`wasmtime-wasi` reads and writes
/// a FIFO positionally, which fails, so the guest only holds it), sleeps
/// 20 ms, creates the file "closing", and closes the FIFO.
fn fifo_holder(rights: &str) -> String {
    format!(
        r#"(module {PRELUDE}
  (data (i32.const 80) "closing")
  (func (export "wasi_thread_start") (param i32 i32))
  (func (export "_start")
    (call $open (i32.const 0) (i64.const {rights}))
    ;; A relative clock subscription of 20 ms at 1024, its event at 1088.
    (i64.store (i32.const 1024) (i64.const 0))
    (i32.store8 (i32.const 1032) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 1))
    (i64.store (i32.const 1048) (i64.const 20000000))
    (i64.store (i32.const 1056) (i64.const 0))
    (i32.store16 (i32.const 1064) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 1024) (i32.const 1088) (i32.const 1) (i32.const 32)))
    ;; "closing": CREAT, FD_WRITE
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 80) (i32.const 7)
          (i32.const 1) (i64.const 0x40) (i64.const 0x40) (i32.const 0) (i32.const 40))
      (then (call $proc_exit (i32.const 2))))
    (drop (call $fd_close (i32.load (i32.const 0))))))"#
    )
}

/// One `fd_write` of 2 MiB (of 'x') to stdout; exits 9 if it was short.
fn big_stdout_write() -> String {
    let size = 2 << 20;
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 64)
  (func (export "_start")
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const {size}))
    (i32.store (i32.const 16) (i32.const 65536))
    (i32.store (i32.const 20) (i32.const {size}))
    (if (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32))
      (then (call $proc_exit (i32.const 4))))
    (if (i32.ne (i32.load (i32.const 32)) (i32.const {size}))
      (then (call $proc_exit (i32.const 9))))))"#
    )
}

fn compile(engine: &Engine, wat: &str) -> CompiledModule {
    let wasm = wat::parse_str(wat).expect("valid text");
    wasi_threads_host::compile(engine, &wasm).expect("compiles")
}

fn run(engine: &Engine, module: &CompiledModule, dir: &Path) -> Outcome {
    Runner::new()
        .engine(engine.clone())
        .arg("race.wasm")
        .stdio(wasi_threads_host::Stdio::new())
        .preopened_dir(dir, "/d")
        .timeout(Duration::from_secs(120))
        .run_module(module)
        .expect("runs")
}

fn assert_exit0(outcome: &Outcome, what: &str, run: usize) {
    assert!(
        matches!(outcome, Outcome::Exit { code: 0, .. }),
        "{what}, run {run}: {outcome}"
    );
}

fn records_in_order(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() != RECORDS as usize * 8 {
        return Err(format!("{} of {} bytes", bytes.len(), RECORDS as usize * 8));
    }
    for (i, record) in bytes.chunks(8).enumerate() {
        let got = u64::from_le_bytes(record.try_into().unwrap());
        if got != i as u64 {
            return Err(format!("record {i} is {got}"));
        }
    }
    Ok(())
}

fn write_while_seeking(whence: u32, name: &str) {
    let engine = engine();
    let module = compile(&engine, &writer_and_seeker(whence));
    let dir = scratch(name);
    for run_no in 0..runs() {
        let outcome = run(&engine, &module, &dir);
        assert_exit0(&outcome, name, run_no);
        let bytes = std::fs::read(dir.join("f")).unwrap();
        if let Err(e) = records_in_order(&bytes) {
            panic!("{name}, run {run_no}: writes lost: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writes_racing_seeks_from_the_position_lose_nothing() {
    write_while_seeking(1, "write-seek-cur");
}

#[test]
fn writes_racing_seeks_from_the_end_lose_nothing() {
    write_while_seeking(2, "write-seek-end");
}

#[test]
fn reads_racing_seeks_read_each_record_once() {
    let engine = engine();
    let module = compile(&engine, &reader_and_seeker());
    let dir = scratch("read-seek");
    let records: Vec<u8> = (0..u64::from(RECORDS))
        .flat_map(|i| i.to_le_bytes())
        .collect();
    std::fs::write(dir.join("f"), &records).unwrap();
    for run_no in 0..runs() {
        let outcome = run(&engine, &module, &dir);
        // 6: a record out of order; 7: not every record read once.
        assert_exit0(&outcome, "reads racing seeks", run_no);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(target_os = "linux")]
fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// While the guest holds the FIFO open for writing, the host's reader sees
/// no end of file: end of file comes only after the guest decided to close.
#[cfg(target_os = "linux")]
#[test]
fn a_fifo_the_guest_writes_has_its_writer_until_the_guest_closes_it() {
    let engine = engine();
    // FD_WRITE only: a write-only open.
    let module = compile(&engine, &fifo_holder("0x40"));
    let dir = scratch("fifo-writer");
    mkfifo(&dir.join("f"));
    // About 20 ms a run; the early end of file this checks for came in one
    // run of 4 when it was there.
    for run_no in 0..runs_or(100) {
        let _ = std::fs::remove_file(dir.join("closing"));
        let (path, closing) = (dir.join("f"), dir.join("closing"));
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut got))
                .map(|_| closing.exists())
        });
        let outcome = run(&engine, &module, &dir);
        assert_exit0(&outcome, "FIFO writer", run_no);
        let closed_first = reader.join().unwrap().expect("read the FIFO");
        assert!(
            closed_first,
            "run {run_no}: end of file while the guest held the FIFO open"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// While the guest holds the FIFO open for reading, the host's write finds
/// a reader: no `EPIPE`.
#[cfg(target_os = "linux")]
#[test]
fn a_fifo_the_guest_reads_has_its_reader_when_the_writer_writes() {
    let engine = engine();
    // FD_READ only: a read-only open.
    let module = compile(&engine, &fifo_holder("0x2"));
    let dir = scratch("fifo-reader");
    mkfifo(&dir.join("f"));
    // The `EPIPE` this checks for came in one run of 100 when it was there.
    for run_no in 0..runs_or(300) {
        let _ = std::fs::remove_file(dir.join("closing"));
        let path = dir.join("f");
        let writer = std::thread::spawn(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| f.write_all(b"hi\n"))
        });
        let outcome = run(&engine, &module, &dir);
        writer
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("run {run_no}: the host's write failed: {e}"));
        assert_exit0(&outcome, "FIFO reader", run_no);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One 2 MiB `fd_write` to stdout (a pipe, through the CLI) writes all of
/// it, as the context does.
#[test]
fn one_large_write_to_stdout_is_whole() {
    let dir = scratch("big-stdout");
    let wasm = dir.join("big.wasm");
    std::fs::write(&wasm, wat::parse_str(big_stdout_write()).unwrap()).unwrap();
    for run_no in 0..runs() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wasi-threads"))
            .arg(&wasm)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the CLI");
        assert_eq!(out.status.code(), Some(0), "run {run_no}: short write");
        assert_eq!(out.stdout.len(), 2 << 20, "run {run_no}");
        assert!(out.stdout.iter().all(|&b| b == b'x'));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
