//! Prints benchmark figures for wasi-threads-host, each beside a native build
//! of the same program measured in the same run.
//!
//!     cargo run --release -p wasi-threads-bench [-- [--quick] [--reps N] [--idle|--hogs] NAME...]
//!
//! NAME selects benchmarks (all when none is given):
//!
//! - against native only: spawn, burst, cpu, idle, stop;
//! - side by side with the `wasmtime` 36 CLI (when installed: `wasmtime` on
//!   PATH or `WASMTIME=/path/to/wasmtime`) and the host's CLI (when built in
//!   the same target directory), each idle and with one CPU-hog thread per
//!   core: pingpong, pipeline, lines, fdwrite, compute (which also runs "the
//!   floor": the plain engine with no supervision, see [`floor`]).
//!
//! `ripgrep [OPTIONS]` runs a real program instead: ripgrep over a generated
//! tree of 10 000 files, and its start-up, natively, with the CLI and with
//! `wasmtime run` 36 (see [`ripgrep`]; `just rg-bench`). `cold [OPTIONS]
//! [MODULE [ARGS...]]` times first runs with empty caches beside wasmtime
//! 36 and the floor (see [`cold`]).
//!
//! `--quick` shrinks every workload; `--reps N` sets the repetitions
//! (default 3; figures are medians); `--idle` / `--hogs` measure only on an
//! idle machine / only under load.
//!
//! The native baselines are the gcc and rustc builds in `wasm-fixtures/native/`
//! (`wasm-fixtures/build.sh --native-only` makes them; this binary runs it
//! when they are missing).
//!
//! What each file measures: [`lifecycle`] (threads against native: spawn,
//! bursts, a CPU kernel, idle memory, stop latency), [`workloads`] (the
//! groups beside wasmtime 36 and the CLI), [`floor`] (the plain engine, the
//! lowest cost of running the wasm here), [`ripgrep`] (a real program),
//! [`cold`] (first runs with empty caches); the
//! `wasi-calls` and `startup` binaries (`src/bin/`) time single WASI calls
//! and one module's start-up. [`harness`] is what they share: peers,
//! interleaving, medians, tables, CPU hogs.

/// What `--help` prints.
const USAGE: &str = "\
usage: wasi-threads-bench [--quick] [--reps N] [--idle|--hogs] [NAME...]
       wasi-threads-bench ripgrep [OPTIONS]   (ripgrep on a generated tree; ripgrep --help)
       wasi-threads-bench cold [OPTIONS] [MODULE [ARGS...]]   (first runs, empty caches)

NAME (all when none is given):
  against native:            spawn burst cpu idle stop
  beside wasmtime 36 (WASMTIME=/path or on PATH) and the CLI, idle and with
  one CPU-hog thread per core: pingpong pipeline lines fdwrite compute
  (compute also runs the floor: the plain engine, no rewrite, no supervision)";

/// The benchmarks NAME may select.
const NAMES: [&str; 10] = [
    "spawn", "burst", "cpu", "idle", "stop", "pingpong", "pipeline", "lines", "fdwrite", "compute",
];

mod cold;
mod floor;
mod harness;
mod lifecycle;
mod ripgrep;
mod workloads;

use harness::Bench;
use harness::interleave::{self, Loads};
use harness::peers::{self, Tools, Workload};
use std::collections::HashMap;
use wasi_threads_host::engine_config;
use wasmtime::Engine;

/// The command line's options, as the groups see them.
struct Options {
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    pub(crate) loads: Loads,
}

type Group = fn(&Options) -> Vec<Workload>;
type BenchFn = fn(&mut Bench);

fn main() -> std::process::ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--floor") {
        args.remove(0);
        floor::main(args);
    }
    if args.first().map(String::as_str) == Some("ripgrep") {
        args.remove(0);
        return ripgrep::main(args);
    }
    if args.first().map(String::as_str) == Some("cold") {
        args.remove(0);
        return cold::main(args);
    }
    let mut options = Options {
        quick: false,
        reps: 3,
        loads: Loads {
            idle: true,
            hogs: true,
        },
    };
    let mut only = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => options.quick = true,
            "--reps" => {
                options.reps = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--reps N")
            }
            "--idle" => options.loads.hogs = false,
            "--hogs" => options.loads.idle = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return std::process::ExitCode::SUCCESS;
            }
            name if NAMES.contains(&name) => only.push(a),
            other => {
                eprintln!("wasi-threads-bench: unknown argument `{other}`\n\n{USAGE}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let mut bench = Bench {
        engine: Engine::new(&engine_config()).unwrap(),
        modules: HashMap::new(),
    };
    let tools = Tools::find();
    println!(
        "wasi-threads-host benchmarks ({} cores); medians of {} runs unless noted; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        options.reps,
        tools.describe()
    );
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let classic: [(&str, BenchFn); 5] = [
        ("spawn", lifecycle::spawn),
        ("burst", lifecycle::burst),
        ("cpu", lifecycle::cpu),
        ("idle", lifecycle::idle),
        ("stop", lifecycle::stop),
    ];
    for (name, f) in classic {
        if wanted(name) {
            f(&mut bench);
        }
    }
    let groups: [(&str, &str, Group); 5] = [
        ("pingpong", "wait/notify", workloads::pingpong),
        ("pipeline", "channels between threads", workloads::pipeline),
        ("lines", "stdout lines", workloads::lines),
        ("fdwrite", "fd_write to a shared file", workloads::fdwrite),
        ("compute", "compute guests", workloads::compute),
    ];
    for (name, title, group) in groups {
        if wanted(name) {
            let work = group(&options);
            interleave::idle_and_loaded(
                &mut bench,
                &tools,
                title,
                &work,
                options.reps,
                options.loads,
            );
        }
    }
    peers::cleanup();
    std::process::ExitCode::SUCCESS
}
