//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("wasm-fixtures").is_dir() && p.join("Cargo.toml").is_file())
        .expect("workspace root with wasm-fixtures/")
        .to_path_buf()
}

/// A bundled fixture.
pub fn fixture(name: &str) -> PathBuf {
    let path = root().join("wasm-fixtures").join(name);
    assert!(path.is_file(), "missing fixture {}", path.display());
    path
}

/// The vendored wasi-threads conformance tests (`tests/wasi-testsuite/`).
pub fn corpus_dir() -> PathBuf {
    let dir = root().join("tests").join("wasi-testsuite");
    assert!(dir.is_dir(), "missing {}", dir.display());
    dir
}

/// What a CLI run produced.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// How the child's stdin is set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// An open pipe nobody writes to: reads block.
    OpenPipe,
    /// Empty: reads see end of file.
    Null,
    /// These bytes, then end of file.
    Bytes(&'static [u8]),
}

/// Runs the `wasi-threads` binary with `args`, killing it after `limit`.
pub fn run_cli(bin: &str, args: &[&str], stdin: Stdin, limit: Duration) -> Run {
    run_cli_env(bin, args, &[], stdin, limit)
}

/// [`run_cli`] with these environment variables set (on top of
/// `WASI_THREADS_LOG=warn`).
pub fn run_cli_env(
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Stdin,
    limit: Duration,
) -> Run {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(match stdin {
            Stdin::OpenPipe | Stdin::Bytes(_) => Stdio::piped(),
            Stdin::Null => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("WASI_THREADS_LOG", "warn")
        .envs(env.iter().copied())
        .spawn()
        .expect("spawn wasi-threads");
    // OpenPipe: keep the write end open (never written) until the child is
    // gone. Bytes: write them from a thread, then close.
    let mut _stdin = child.stdin.take();
    if let Stdin::Bytes(bytes) = stdin
        && let Some(mut pipe) = _stdin.take()
    {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(bytes);
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    assert!(
        status.is_some(),
        "wasi-threads {args:?} did not finish within {limit:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    Run {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
        elapsed,
    }
}

/// How many of this process's threads have a name (`comm`) that `named`
/// accepts, once joined ones have had 2 s to leave `/proc/self/task`: the
/// kernel may list a thread a moment after it woke its joiner, while one
/// that was never joined stays listed.
#[cfg(target_os = "linux")]
pub fn threads_left(named: impl Fn(&str) -> bool) -> usize {
    let listed = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| named(comm.trim()))
            .count()
    };
    let settled = std::time::Instant::now();
    loop {
        let left = listed();
        if left == 0 || settled.elapsed() > Duration::from_secs(2) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
