//! Every import the host provides, called with hostile arguments: zero, -1,
//! `u32::MAX`, sign bits, pointers at and past the end of memory. Each call
//! must give the guest an errno or end the program with a trap; none may
//! panic, hang or abort the host. The guests run in this test's own process
//! (through `Runner`), so an abort kills the test; a few run through the CLI
//! to check that the process exits normally.

mod common;

use common::{Run, Stdin, run_cli};
use std::time::Duration;
use wasi_threads_host::{Outcome, Runner, SharedStdin};
use wasmtime::Engine;

const BIN: &str = env!("CARGO_BIN_EXE_wasi-threads");

#[derive(Clone, Copy)]
enum Ty {
    I32,
    I64,
}
use Ty::{I32, I64};

/// Every `wasi_snapshot_preview1` function, with its core wasm parameters.
/// All return an errno (`i32`) except `proc_exit`.
const PREVIEW1: &[(&str, &[Ty])] = &[
    ("args_get", &[I32, I32]),
    ("args_sizes_get", &[I32, I32]),
    ("environ_get", &[I32, I32]),
    ("environ_sizes_get", &[I32, I32]),
    ("clock_res_get", &[I32, I32]),
    ("clock_time_get", &[I32, I64, I32]),
    ("fd_advise", &[I32, I64, I64, I32]),
    ("fd_allocate", &[I32, I64, I64]),
    ("fd_close", &[I32]),
    ("fd_datasync", &[I32]),
    ("fd_fdstat_get", &[I32, I32]),
    ("fd_fdstat_set_flags", &[I32, I32]),
    ("fd_fdstat_set_rights", &[I32, I64, I64]),
    ("fd_filestat_get", &[I32, I32]),
    ("fd_filestat_set_size", &[I32, I64]),
    ("fd_filestat_set_times", &[I32, I64, I64, I32]),
    ("fd_pread", &[I32, I32, I32, I64, I32]),
    ("fd_prestat_get", &[I32, I32]),
    ("fd_prestat_dir_name", &[I32, I32, I32]),
    ("fd_pwrite", &[I32, I32, I32, I64, I32]),
    ("fd_read", &[I32, I32, I32, I32]),
    ("fd_readdir", &[I32, I32, I32, I64, I32]),
    ("fd_renumber", &[I32, I32]),
    ("fd_seek", &[I32, I64, I32, I32]),
    ("fd_sync", &[I32]),
    ("fd_tell", &[I32, I32]),
    ("fd_write", &[I32, I32, I32, I32]),
    ("path_create_directory", &[I32, I32, I32]),
    ("path_filestat_get", &[I32, I32, I32, I32, I32]),
    (
        "path_filestat_set_times",
        &[I32, I32, I32, I32, I64, I64, I32],
    ),
    ("path_link", &[I32, I32, I32, I32, I32, I32, I32]),
    ("path_open", &[I32, I32, I32, I32, I32, I64, I64, I32, I32]),
    ("path_readlink", &[I32, I32, I32, I32, I32, I32]),
    ("path_remove_directory", &[I32, I32, I32]),
    ("path_rename", &[I32, I32, I32, I32, I32, I32]),
    ("path_symlink", &[I32, I32, I32, I32, I32]),
    ("path_unlink_file", &[I32, I32, I32]),
    ("poll_oneoff", &[I32, I32, I32, I32]),
    ("proc_exit", &[I32]),
    ("proc_raise", &[I32]),
    ("sched_yield", &[]),
    ("random_get", &[I32, I32]),
    ("sock_accept", &[I32, I32, I32]),
    ("sock_recv", &[I32, I32, I32, I32, I32, I32]),
    ("sock_send", &[I32, I32, I32, I32, I32]),
    ("sock_shutdown", &[I32, I32]),
];

/// One 64 KiB page: 65536 is one past the end.
const EXTREME_I32: &[u32] = &[
    0,
    1,
    2,
    3,
    1024,
    65532,
    65535,
    65536,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFC,
    0xFFFF_FFFF,
];
const EXTREME_I64: &[u64] = &[0, 0x7FFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF];

/// Memory the "sensible" arguments point into: at 1024 an iovec (and a
/// subscription's first bytes) pointing at 2048 with length 16; at 2048 the
/// text "file.txt".
const DATA: &str = r#"(data (i32.const 1024) "\00\08\00\00\10\00\00\00")
  (data (i32.const 2048) "file.txt")"#;

fn module(name: &str, params: &[Ty], args: &[u64]) -> String {
    let sig: String = params
        .iter()
        .map(|t| match t {
            I32 => " i32",
            I64 => " i64",
        })
        .collect();
    let result = if name == "proc_exit" {
        ""
    } else {
        "(result i32)"
    };
    let drop = if name == "proc_exit" { "" } else { "drop" };
    let pushed: String = params
        .iter()
        .zip(args)
        .map(|(t, v)| match t {
            I32 => format!("(i32.const {})", *v as u32 as i32),
            I64 => format!("(i64.const {})", *v as i64),
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"(module
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (import "wasi_snapshot_preview1" "{name}" (func $f (param{sig}) {result}))
  {DATA}
  (func (export "_start") (call $f {pushed}) {drop})
)"#
    )
}

/// The argument rows for a function: every argument the same extreme value,
/// then sensible arguments (fd 3, pointers to 1024, lengths 16) with one
/// replaced by each extreme value.
fn rows(params: &[Ty]) -> Vec<Vec<u64>> {
    let sensible: Vec<u64> = params
        .iter()
        .enumerate()
        .map(|(i, t)| match (i, t) {
            (0, I32) => 3,
            (_, I32) => 1024,
            (_, I64) => 16,
        })
        .collect();
    let mut rows = Vec::new();
    for &v in EXTREME_I32 {
        rows.push(
            params
                .iter()
                .map(|t| match t {
                    I32 => u64::from(v),
                    I64 => u64::from(v) | (u64::from(v) << 32),
                })
                .collect(),
        );
    }
    rows.push(sensible.clone());
    for (i, t) in params.iter().enumerate() {
        let values: Vec<u64> = match t {
            I32 => EXTREME_I32.iter().map(|&v| u64::from(v)).collect(),
            I64 => EXTREME_I64.to_vec(),
        };
        for v in values {
            let mut row = sensible.clone();
            row[i] = v;
            rows.push(row);
        }
    }
    rows
}

/// Runs `wat` in this process and checks the host survived it: a normal
/// exit or a trap, never a host panic or a hang.
fn survives(engine: &Engine, dir: &std::path::Path, wat: &str) -> Outcome {
    let outcome = Runner::new()
        .engine(engine.clone())
        .stdio(wasi_threads_host::Stdio::new().stdin(SharedStdin::from_reader(std::io::empty())))
        .preopened_dir(dir, "/")
        .timeout(Duration::from_secs(20))
        .run_bytes(wat.as_bytes())
        .unwrap_or_else(|e| panic!("{e:#}\n{wat}"));
    match &outcome {
        Outcome::Exit { .. } | Outcome::Trap { .. } => {}
        other => panic!("{other}\n{wat}"),
    }
    outcome
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wasi-threads-hostile-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("file.txt"), b"some content\n").unwrap();
    dir
}

fn engine() -> Engine {
    Engine::new(&wasi_threads_host::engine_config()).unwrap()
}

#[test]
fn every_preview1_function_survives_extreme_arguments() {
    let engine = engine();
    let dir = scratch("p1");
    let mut runs = 0;
    let mut traps = 0;
    for (name, params) in PREVIEW1 {
        for row in rows(params) {
            let outcome = survives(&engine, &dir, &module(name, params, &row));
            runs += 1;
            if matches!(outcome, Outcome::Trap { .. }) {
                traps += 1;
            }
        }
    }
    // Out-of-bounds pointers trap (as `wasmtime run` does); the rest are
    // errnos. Both kinds must have been seen, or the rows test nothing.
    assert!(traps > 0 && traps < runs, "{traps} traps in {runs} runs");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn poll_oneoff_with_u32_max_subscriptions_traps() {
    let engine = engine();
    let dir = scratch("poll");
    let wat = module(
        "poll_oneoff",
        &[I32, I32, I32, I32],
        &[0, 4096, 0xFFFF_FFFF, 8192],
    );
    match survives(&engine, &dir, &wat) {
        Outcome::Trap { trap, .. } => {
            assert!(
                trap.message().contains("out of bounds") || trap.message().contains("overflow"),
                "{}",
                trap.message()
            )
        }
        other => panic!("{other}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_get_of_u32_max_bytes_traps_without_allocating_them() {
    let engine = engine();
    let dir = scratch("random");
    let wat = module("random_get", &[I32, I32], &[0, 0xFFFF_FFFF]);
    assert!(matches!(
        survives(&engine, &dir, &wat),
        Outcome::Trap { .. }
    ));
    // In bounds, the whole memory: fine.
    let wat = module("random_get", &[I32, I32], &[0, 65536]);
    assert!(matches!(
        survives(&engine, &dir, &wat),
        Outcome::Exit { code: 0, .. }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `memory.atomic.wait32/wait64/notify` on the shared memory, which
/// `compile` routes through host functions, and `thread-spawn`.
#[test]
fn wait_notify_and_thread_spawn_survive_extreme_arguments() {
    let engine = engine();
    let dir = scratch("atomics");
    let addrs: &[u32] = &[
        0,
        1,
        2,
        4,
        65532,
        65535,
        65536,
        0x8000_0000,
        0xFFFF_FFFC,
        0xFFFF_FFFF,
    ];
    let mut traps = 0;
    let mut runs = 0;
    for &addr in addrs {
        let addr = addr as i32;
        let calls = [
            // A value the memory does not hold: returns 1 ("not-equal") at
            // once, whatever the timeout, or traps on a bad address.
            format!(
                "(drop (memory.atomic.wait32 (i32.const {addr}) (i32.const -1) (i64.const -1)))"
            ),
            format!(
                "(drop (memory.atomic.wait32 (i32.const {addr}) (i32.const 7) (i64.const 9223372036854775807)))"
            ),
            format!(
                "(drop (memory.atomic.wait64 (i32.const {addr}) (i64.const -1) (i64.const -1)))"
            ),
            // The value it holds, a short timeout: times out (a negative one
            // is forever).
            format!("(drop (memory.atomic.wait32 (i32.const {addr}) (i32.const 0) (i64.const 0)))"),
            format!("(drop (memory.atomic.wait64 (i32.const {addr}) (i64.const 0) (i64.const 1)))"),
            format!("(drop (memory.atomic.notify (i32.const {addr}) (i32.const -1)))"),
            format!("(drop (memory.atomic.notify (i32.const {addr}) (i32.const 0)))"),
        ];
        for call in calls {
            let wat = format!(
                r#"(module
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (func (export "_start") {call})
)"#
            );
            runs += 1;
            if matches!(survives(&engine, &dir, &wat), Outcome::Trap { .. }) {
                traps += 1;
            }
        }
    }
    assert!(traps > 0 && traps < runs, "{traps} traps in {runs} runs");

    for arg in [0i32, -1, i32::MIN, i32::MAX, 65536] {
        // Spawn a thread per extreme argument; it reports back through
        // memory and the main thread waits for it (bounded).
        let wat = format!(
            r#"(module
  (import "env" "memory" (memory 1 1 shared))
  (export "memory" (memory 0))
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (i32.atomic.store (i32.const 64) (local.get $arg))
    (i32.atomic.store (i32.const 68) (i32.const 1))
    (drop (memory.atomic.notify (i32.const 68) (i32.const -1))))
  (func (export "_start")
    (if (i32.lt_s (call $spawn (i32.const {arg})) (i32.const 1)) (then unreachable))
    (drop (memory.atomic.wait32 (i32.const 68) (i32.const 0) (i64.const 5000000000)))
    (if (i32.ne (i32.atomic.load (i32.const 68)) (i32.const 1)) (then unreachable))
    (if (i32.ne (i32.atomic.load (i32.const 64)) (i32.const {arg})) (then unreachable)))
)"#
        );
        match survives(&engine, &dir, &wat) {
            Outcome::Exit { code: 0, .. } => {}
            other => panic!("thread-spawn({arg}): {other}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same hostile calls through the CLI binary: the process exits with a
/// status (a trap is 134), never dies of a signal.
#[test]
fn the_cli_exits_normally_after_hostile_calls() {
    let dir = scratch("cli");
    let cases: &[(&str, &[Ty], &[u64])] = &[
        (
            "poll_oneoff",
            &[I32, I32, I32, I32],
            &[0, 4096, 0xFFFF_FFFF, 8192],
        ),
        ("random_get", &[I32, I32], &[0, 0xFFFF_FFFF]),
        // u32::MAX iovecs to stdout and to stderr, and at the end of memory.
        (
            "fd_write",
            &[I32, I32, I32, I32],
            &[1, 0, 0xFFFF_FFFF, 1024],
        ),
        (
            "fd_write",
            &[I32, I32, I32, I32],
            &[2, 0xFFFF_FFF8, 1, 1024],
        ),
        (
            "fd_read",
            &[I32, I32, I32, I32],
            &[0, 1024, 0xFFFF_FFFF, 1024],
        ),
    ];
    for (name, params, args) in cases {
        let path = dir.join(format!("{name}.wat"));
        std::fs::write(&path, module(name, params, args)).unwrap();
        let run: Run = run_cli(
            BIN,
            &[path.to_str().unwrap()],
            Stdin::Null,
            Duration::from_secs(60),
        );
        let code = run
            .code
            .unwrap_or_else(|| panic!("{name}: killed by a signal\n{}", run.stderr));
        assert!(
            code == 0 || code == 134,
            "{name}: status {code}\n{}",
            run.stderr
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
