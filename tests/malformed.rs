//! A corpus of malformed and mis-typed modules (issue 12): each is refused
//! with exactly one clear line (CLI exit status 1, `Err` from the library),
//! or, where only spawning is broken, runs and sees a negative errno from
//! `thread-spawn`. None may panic, print a backtrace or hang, through the
//! `wasi-threads` binary or through `Runner::run_bytes` in this process.

mod common;

use common::{Stdin, run_cli};
use std::time::Duration;
use wasi_threads_host::{Outcome, Runner};

const BIN: &str = env!("CARGO_BIN_EXE_wasi-threads");
const LIMIT: Duration = Duration::from_secs(60);

/// What a guest whose spawn failed exits with (any code nothing else uses).
const SPAWN_REFUSED: i32 = 42;

/// A minimal valid module: `(func (export "_start"))`, byte by byte, so
/// that each broken variant below differs from it in a known place.
fn valid_module() -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(b"\x01\x04\x01\x60\x00\x00"); // type: () -> ()
    m.extend_from_slice(b"\x03\x02\x01\x00"); // func 0: type 0
    m.extend_from_slice(b"\x07\x0a\x01\x06_start\x00\x00"); // export "_start"
    m.extend_from_slice(b"\x0a\x04\x01\x02\x00\x0b"); // code: no locals, end
    m
}

/// Inputs that are not valid modules: exit 1 and one line.
fn broken_binaries() -> Vec<(&'static str, Vec<u8>)> {
    let valid = valid_module();
    let mut sections = b"\0asm\x01\0\0\0".to_vec();
    sections.extend_from_slice(b"\x01\x04\x01\x60\x00\x00");
    vec![
        ("empty file", Vec::new()),
        ("truncated magic", b"\0as".to_vec()),
        ("header only, version cut", b"\0asm\x01\0".to_vec()),
        ("unknown binary version", b"\0asm\x02\0\0\0".to_vec()),
        ("a component, not a module", b"\0asm\x0d\0\x01\0".to_vec()),
        (
            "garbage bytes",
            b"\x7fELF\x02\x01\x01\0\xde\xad\xbe\xef garbage \xff\xfe".to_vec(),
        ),
        (
            "garbage after the header",
            [&valid[..8], b"\xff\xff\xff\xff\x00\x13\x37"].concat(),
        ),
        // The code section loses its last bytes: cut mid-section.
        (
            "truncated in the code section",
            valid[..valid.len() - 2].to_vec(),
        ),
        // Cut inside the export name.
        ("truncated in the export section", valid[..22].to_vec()),
        // A section size of six LEB128 bytes: longer than any u32 needs.
        (
            "overlong LEB128 section size",
            [&valid[..8], b"\x01\x80\x80\x80\x80\x80\x00"].concat(),
        ),
        // A function count whose fifth LEB128 byte sets bits past 32.
        (
            "LEB128 count too large for u32",
            [&sections[..], b"\x03\x06\x80\x80\x80\x80\x70\x00"].concat(),
        ),
        // The type section claims 100 bytes; four follow.
        (
            "section size past the end",
            [&valid[..8], b"\x01\x64\x01\x60\x00\x00"].concat(),
        ),
        ("unknown section id", [&valid[..], b"\x20\x01\x00"].concat()),
        // The function section names type 5 of 1.
        (
            "type index out of range",
            [&sections[..], b"\x03\x02\x01\x05"].concat(),
        ),
    ]
}

/// A threaded module whose `_start` spawns once (if `spawns`) and exits with
/// [`SPAWN_REFUSED`] if `thread-spawn` returned a negative errno, else
/// returns normally (exit 0).
fn threaded(spawn_type: &str, memory: &str, entry: &str, spawns: bool) -> String {
    let spawn = if spawns {
        format!(
            "(if (i32.lt_s (call $spawn (i32.const 0)) (i32.const 0))
               (then (call $exit (i32.const {SPAWN_REFUSED}))))"
        )
    } else {
        String::new()
    };
    format!(
        r#"(module
  (import "wasi" "thread-spawn" (func $spawn {spawn_type}))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "memory" {memory})
  {entry}
  (func (export "_start") {spawn}))"#
    )
}

const SPAWN: &str = "(param i32) (result i32)";
const SHARED: &str = "(memory 1 1 shared)";
const ENTRY: &str = r#"(func (export "wasi_thread_start") (param i32 i32))"#;

/// Well-formed modules whose threading is wrong in a way the host must
/// refuse at load, with the words the one line must contain.
fn refused_modules() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "thread-spawn taking an i64",
            threaded("(param i64) (result i32)", SHARED, ENTRY, false),
            // The type as wasm text, not a dump of the engine's registry.
            "`wasi.thread-spawn` is (type (func (param i64) (result i32)))",
        ),
        (
            "thread-spawn without a result",
            threaded("(param i32)", SHARED, ENTRY, false),
            "expected a function (i32) -> i32",
        ),
        (
            "an unshared memory",
            threaded(SPAWN, "(memory 1 1)", ENTRY, true),
            "not shared",
        ),
        (
            "a 64-bit shared memory",
            threaded(SPAWN, "(memory i64 1 1 shared)", ENTRY, true),
            "64-bit",
        ),
    ]
}

/// Modules that run but cannot spawn: the guest sees a negative errno.
fn spawn_problems() -> Vec<(&'static str, String, i32)> {
    vec![
        (
            "wasi_thread_start with the wrong type",
            threaded(
                SPAWN,
                SHARED,
                r#"(func (export "wasi_thread_start") (param i64))"#,
                true,
            ),
            SPAWN_REFUSED,
        ),
        (
            "wasi_thread_start returning a value",
            threaded(
                SPAWN,
                SHARED,
                r#"(func (export "wasi_thread_start") (param i32 i32) (result i32) (i32.const 0))"#,
                true,
            ),
            SPAWN_REFUSED,
        ),
        (
            "wasi_thread_start exported as a global",
            threaded(
                SPAWN,
                SHARED,
                r#"(global (export "wasi_thread_start") i32 (i32.const 0))"#,
                true,
            ),
            SPAWN_REFUSED,
        ),
        (
            "wasi_thread_start not exported, spawning",
            threaded(SPAWN, SHARED, "", true),
            SPAWN_REFUSED,
        ),
        (
            "wasi_thread_start not exported, never spawning",
            threaded(SPAWN, SHARED, "", false),
            0,
        ),
    ]
}

/// A directory per test: the tests of this file run in parallel.
fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wasi-threads-malformed-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the CLI on `bytes` (written to a file) and returns its exit status
/// and stderr, after checking that it neither panicked nor suggested a
/// backtrace.
fn cli(dir: &std::path::Path, name: &str, bytes: &[u8]) -> (Option<i32>, String) {
    let file = dir.join(name.replace([' ', ','], "-"));
    std::fs::write(&file, bytes).unwrap();
    let run = run_cli(BIN, &[file.to_str().unwrap()], Stdin::Null, LIMIT);
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!run.stderr.contains(bad), "{name}: {}", run.stderr);
    }
    (run.code, run.stderr)
}

#[track_caller]
fn assert_one_line(name: &str, stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{name}: {stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "{name}: {stderr:?}");
}

/// Runs `bytes` through the library: it must return, not panic.
fn library(name: &str, bytes: &[u8]) -> wasmtime::Result<Outcome> {
    std::panic::catch_unwind(|| {
        Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .timeout(LIMIT)
            .run_bytes(bytes)
    })
    .unwrap_or_else(|_| panic!("{name}: run_bytes panicked"))
}

#[track_caller]
fn assert_library_refuses(name: &str, bytes: &[u8], needle: &str) {
    let err = library(name, bytes).expect_err(name);
    for message in [err.to_string(), format!("{err:#}")] {
        assert!(!message.contains('\n'), "{name}: {message:?}");
        assert!(!message.trim().is_empty(), "{name}");
    }
    assert!(format!("{err:#}").contains(needle), "{name}: {err:#}");
}

/// The corpus would prove nothing if the module it breaks did not run.
#[test]
fn the_unbroken_module_runs() {
    let dir = scratch("valid");
    let (code, stderr) = cli(&dir, "valid.wasm", &valid_module());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(matches!(
        library("valid", &valid_module()).unwrap(),
        Outcome::Exit { code: 0, .. }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn broken_binaries_are_one_line_errors() {
    let dir = scratch("broken");
    for (name, bytes) in broken_binaries() {
        let (code, stderr) = cli(&dir, &format!("{name}.wasm"), &bytes);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert_one_line(name, &stderr);
        assert_library_refuses(name, &bytes, "");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mistyped_threading_is_refused_in_one_line() {
    let dir = scratch("refused");
    for (name, wat, needle) in refused_modules() {
        let (code, stderr) = cli(&dir, &format!("{name}.wat"), wat.as_bytes());
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert_one_line(name, &stderr);
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert_library_refuses(name, wat.as_bytes(), needle);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A broken `wasi_thread_start` only breaks spawning: the program runs,
/// `thread-spawn` returns a negative errno and the guest decides.
#[test]
fn spawn_problems_give_the_guest_a_negative_errno() {
    let dir = scratch("spawn");
    for (name, wat, expected) in spawn_problems() {
        let (code, stderr) = cli(&dir, &format!("{name}.wat"), wat.as_bytes());
        assert_eq!(code, Some(expected), "{name}: {stderr}");
        match library(name, wat.as_bytes()) {
            Ok(Outcome::Exit { code, .. }) => assert_eq!(code, expected, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
