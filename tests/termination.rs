//! The supervisor's termination matrix: {main, spawned thread} ×
//! {proc_exit, trap, return from `_start`} × {other threads busy, sleeping,
//! parked in memory.atomic.wait, blocked reading stdin}. Every run must end
//! with the right outcome and with no guest thread left; a hundred runs in one
//! process must leave the OS thread count where it started and RSS flat.

mod common;

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use wasi_threads_host::CompiledModule;
use wasi_threads_host::{MAIN_TID, Outcome, Runner, SharedStdin, compile, engine_config};
use wasmtime::Engine;

/// The tests of this file count the process's threads, so they must not
/// overlap.
static SERIAL: Mutex<()> = Mutex::new(());

/// The guest threads' OS threads, by name from /proc/self/task.
#[cfg(target_os = "linux")]
fn guest_threads_alive() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("wasi-thread-") || name == "wasi-main")
        .collect()
}

/// The guest threads still listed, after waiting up to a second for joined
/// ones to leave the list: `run` joined them, but the kernel lists a thread
/// until it has finished exiting, which comes a moment after the join (the
/// join returns once the thread's id is cleared, early in its exit); on a
/// loaded machine that moment can be long. A thread that was not joined
/// stays listed.
fn guest_threads_gone() -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let left = guest_threads_alive();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Only Linux lets a process list its threads by name (/proc/self/task);
/// elsewhere the matrix checks outcomes only.
#[cfg(not(target_os = "linux"))]
fn guest_threads_alive() -> Vec<String> {
    Vec::new()
}

#[cfg(target_os = "linux")]
fn os_threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[cfg(target_os = "linux")]
fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    names.sort();
    names
}

/// Waits (up to 2 s) for the host's helper threads of finished runs to end:
/// a stdin pump ends once its pipe closes.
#[cfg(target_os = "linux")]
fn settle() {
    let start = Instant::now();
    while thread_names().iter().any(|n| n.starts_with("wasi-"))
        && start.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(target_os = "linux")]
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn c_term(module: &CompiledModule, who: &str, how: &str, others: &str) -> (Outcome, Duration) {
    // Stdin is an open pipe nobody writes to, so reads block.
    let (reader, writer) = std::io::pipe().unwrap();
    let start = Instant::now();
    let outcome = Runner::new()
        .args(["c-term", who, how, others])
        .stdio(wasi_threads_host::Stdio::new().stdin(SharedStdin::from_reader(reader)))
        .timeout(Duration::from_secs(30))
        .run_module(module)
        .unwrap();
    let took = start.elapsed();
    drop(writer);
    (outcome, took)
}

fn expected(who: &str, how: &str) -> fn(&Outcome) -> bool {
    match (who, how) {
        ("main", "exit") => |o| {
            *o == Outcome::Exit {
                code: 99,
                tid: MAIN_TID,
            }
        },
        ("thread", "exit") => |o| matches!(o, Outcome::Exit { code: 99, tid } if *tid != MAIN_TID),
        ("main", "trap") => |o| matches!(o, Outcome::Trap { tid: MAIN_TID, .. }),
        ("thread", "trap") => |o| matches!(o, Outcome::Trap { tid, .. } if *tid != MAIN_TID),
        (_, "return") => |o| {
            *o == Outcome::Exit {
                code: 0,
                tid: MAIN_TID,
            }
        },
        _ => unreachable!(),
    }
}

fn module() -> CompiledModule {
    let engine = Engine::new(&engine_config()).unwrap();
    let bytes = std::fs::read(common::fixture("c-term.wasm")).unwrap();
    compile(&engine, &bytes).unwrap()
}

#[test]
fn termination_matrix() {
    let _serial = SERIAL.lock();
    let module = module();
    for who in ["main", "thread"] {
        for how in ["exit", "trap", "return"] {
            for others in ["busy", "sleep", "wait", "read"] {
                let (outcome, took) = c_term(&module, who, how, others);
                assert!(
                    expected(who, how)(&outcome),
                    "{who} {how} {others}: got {outcome:?}"
                );
                // Generous: the guest's own work takes milliseconds; this only
                // catches a stop that waited for a join timeout.
                assert!(
                    took < Duration::from_secs(5),
                    "{who} {how} {others} took {took:?}"
                );
                let left = guest_threads_gone();
                assert!(
                    left.is_empty(),
                    "{who} {how} {others}: threads left {left:?}"
                );
            }
        }
    }
}

// Counts threads and RSS through /proc, which only Linux has.
#[cfg(target_os = "linux")]
#[test]
fn hundred_runs_leave_threads_and_memory_flat() {
    let _serial = SERIAL.lock();
    let module = module();
    let cases = [
        ("thread", "exit", "wait"),
        ("main", "trap", "busy"),
        ("main", "return", "sleep"),
        ("thread", "exit", "read"),
    ];
    // Warm up: lazily started runtime threads (tokio's) and allocator caches.
    for (who, how, others) in cases {
        c_term(&module, who, how, others);
    }
    settle();
    let threads_before = os_threads();
    let names_before = thread_names();
    let rss_before = rss_kib();
    for i in 0..100 {
        let (who, how, others) = cases[i % cases.len()];
        let (outcome, _) = c_term(&module, who, how, others);
        assert!(expected(who, how)(&outcome), "run {i}: {outcome:?}");
        // `run` joined every thread; on a loaded machine the kernel may
        // list a joined thread a moment longer. A thread the host failed
        // to stop would still be listed after this.
        let settled = Instant::now();
        while !guest_threads_alive().is_empty() && settled.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            guest_threads_alive().is_empty(),
            "run {i} left guest threads: {:?}",
            guest_threads_alive()
        );
    }
    settle();
    let threads_after = os_threads();
    let rss_after = rss_kib();
    // Other tests' harness threads may end meanwhile, never start.
    assert!(
        threads_after <= threads_before,
        "OS threads before/after 100 runs: {names_before:?} / {:?}",
        thread_names()
    );
    // Each run maps a 64 MiB memory and 5 threads' stores; a leak of either
    // would show as hundreds of MiB.
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over 100 runs"
    );
}
