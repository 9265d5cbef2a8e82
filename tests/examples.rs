//! The crate's examples, run as a user would run them, and held to the
//! sizes a user can copy: the common case (`Runner`) in 15 lines of code, an
//! embedding with a host function of its own in 40, async with a cancel in
//! 40 (comments and blank lines not counted).

mod common;

#[allow(dead_code)]
#[path = "../crates/wasi-threads-host/examples/run.rs"]
mod run_example;

#[allow(dead_code)]
#[path = "../crates/wasi-threads-host/examples/embed.rs"]
mod embed_example;

#[allow(dead_code)]
#[path = "../crates/wasi-threads-host/examples/async_embed.rs"]
mod async_example;

use std::time::Duration;
use wasi_threads_host::{Outcome, SharedOutput, SharedStdin, Stdio};

/// Lines of code in an example: not blank, not a comment.
fn code_lines(name: &str) -> usize {
    let path = common::root()
        .join("crates/wasi-threads-host/examples")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

#[test]
fn every_example_is_within_its_budget() {
    for (name, budget) in [("run.rs", 15), ("embed.rs", 40), ("async_embed.rs", 40)] {
        let lines = code_lines(name);
        assert!(
            lines <= budget,
            "examples/{name}: {lines} lines of code, budget {budget}"
        );
    }
}

#[test]
fn the_runner_example_runs_a_threaded_program() {
    let path = common::fixture("rust-threads.wasm");
    let outcome = run_example::run(path.to_str().unwrap(), &[]).unwrap();
    assert_eq!(outcome, Outcome::Exit { code: 0, tid: 0 });
}

/// Main and a spawned thread each call the embedder's `host.answer` (42);
/// the thread also says so on stdout, read back from memory; main exits with
/// the sum of both answers once the thread's is in.
const ANSWERS: &str = r#"(module
    (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
    (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "fd_read"
        (func $fd_read (param i32 i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
    (import "host" "answer" (func $answer (result i32)))
    (import "env" "memory" (memory 1 1 shared))
    (data (i32.const 16) "thread\n")
    (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
      (i32.store (i32.const 32) (i32.const 16))
      (i32.store (i32.const 36) (i32.const 7))
      (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 40)))
      (i32.atomic.store (i32.const 0) (call $answer))
      (drop (memory.atomic.notify (i32.const 0) (i32.const 1))))
    (func (export "_start")
      ;; stdin's first byte, to show it arrives: "7" - "0" = 7
      (i32.store (i32.const 48) (i32.const 64))
      (i32.store (i32.const 52) (i32.const 1))
      (drop (call $fd_read (i32.const 0) (i32.const 48) (i32.const 1) (i32.const 56)))
      (drop (call $spawn (i32.const 0)))
      (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))
      (call $exit (i32.add (i32.sub (i32.load8_u (i32.const 64)) (i32.const 48))
        (i32.add (call $answer) (i32.atomic.load (i32.const 0)))))))"#;

#[test]
fn the_embedding_example_links_its_own_host_function_for_every_thread() {
    let (stdout, written) = SharedOutput::memory(1 << 10);
    let stdio = Stdio::new()
        .stdin(SharedStdin::from_bytes("7"))
        .stdout(stdout);
    let (outcome, answers) = embed_example::run(ANSWERS.as_bytes(), stdio).unwrap();
    assert_eq!(
        outcome,
        Outcome::Exit {
            code: 7 + 84,
            tid: 0
        }
    );
    assert_eq!(answers, 2);
    assert_eq!(written.contents(), b"thread\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_example_cancels_a_program_that_never_ends() {
    // c-infinite spins in several threads forever.
    let path = common::fixture("c-infinite.wasm");
    let limit = Duration::from_millis(300);
    let outcome = async_example::run(path.to_string_lossy().into(), limit, Stdio::new())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
}

#[test]
fn memory_output_past_its_limit_fails_the_write_as_a_full_disk_would() {
    // The thread's 7-byte write does not fit in 4 bytes: fd_write returns
    // ENOSPC (51) to the guest, which still exits normally.
    let (stdout, written) = SharedOutput::memory(4);
    let stdio = Stdio::new()
        .stdin(SharedStdin::from_bytes("0"))
        .stdout(stdout);
    let (outcome, _) = embed_example::run(ANSWERS.as_bytes(), stdio).unwrap();
    assert_eq!(outcome, Outcome::Exit { code: 84, tid: 0 });
    assert!(written.contents().is_empty());
}
