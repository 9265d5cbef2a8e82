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
//! `wasmtime run` 36 (see [`ripgrep`]; `just rg-bench`).
//!
//! `--quick` shrinks every workload; `--reps N` sets the repetitions
//! (default 3; figures are medians); `--idle` / `--hogs` measure only on an
//! idle machine / only under load.
//!
//! The native baselines are the gcc and rustc builds in `wasm-fixtures/native/`
//! (`wasm-fixtures/build.sh --native-only` makes them; this binary runs it
//! when they are missing).

/// What `--help` prints.
const USAGE: &str = "\
usage: wasi-threads-bench [--quick] [--reps N] [--idle|--hogs] [NAME...]
       wasi-threads-bench ripgrep [OPTIONS]   (ripgrep on a generated tree; ripgrep --help)

NAME (all when none is given):
  against native:            spawn burst cpu idle stop
  beside wasmtime 36 (WASMTIME=/path or on PATH) and the CLI, idle and with
  one CPU-hog thread per core: pingpong pipeline lines fdwrite compute
  (compute also runs the floor: the plain engine, no rewrite, no supervision)";

/// The benchmarks NAME may select.
const NAMES: [&str; 10] = [
    "spawn", "burst", "cpu", "idle", "stop", "pingpong", "pipeline", "lines", "fdwrite", "compute",
];

mod classic;
mod compare;
mod floor;
mod hogs;
mod ripgrep;

use compare::{Loads, Tools, Workload, workload};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use wasi_threads_host::{Outcome, Runner, compile, engine_config};
use wasmtime::{Engine, Module};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn native(name: &str) -> PathBuf {
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

type Results = HashMap<String, u64>;

fn parse(out: &str) -> Results {
    out.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

pub struct Bench {
    engine: Engine,
    modules: HashMap<String, Module>,
}

impl Bench {
    fn module(&mut self, name: &str) -> Module {
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
    fn wasm(&mut self, name: &str, args: &[&str], dir: Option<&Path>) -> Results {
        let module = self.module(name);
        let stdout = MemoryOutputPipe::new(16 << 20);
        let stderr = MemoryOutputPipe::new(1 << 20);
        let (out, err) = (stdout.clone(), stderr.clone());
        let mut runner = Runner::new()
            .arg(name)
            .args(args.iter().copied())
            .inherit_stdio(false)
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

    fn native(&self, name: &str, args: &[&str]) -> Results {
        let out = Command::new(native(name))
            .args(args)
            .output()
            .expect("run native baseline");
        assert!(out.status.success(), "native {name} {args:?} failed");
        parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The median of `runs` measurements.
fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn row(what: &str, wasm: f64, native: f64, unit: &str) {
    println!(
        "{what:<44} {wasm:>12.1} {unit:<6} native {native:>12.1} {unit:<6} ratio {:>6.2}x",
        wasm / native
    );
}

struct Options {
    quick: bool,
    reps: usize,
    loads: Loads,
}

fn pingpong(o: &Options) -> Vec<Workload> {
    let rounds = if o.quick { "10000" } else { "50000" };
    let mut w = workload(
        &format!("wait/notify ping-pong, {rounds} round trips"),
        "bench-pingpong",
        "bench-pingpong",
        &[rounds],
    );
    w.metric = "total_ns";
    vec![w]
}

fn pipeline(o: &Options) -> Vec<Workload> {
    let items = if o.quick { "200000" } else { "1000000" };
    ["mpsc", "crossbeam"]
        .into_iter()
        .map(|kind| {
            workload(
                &format!("4-stage pipeline, {kind}, {items} items"),
                "bench-pipeline",
                "bench-pipeline",
                &[kind, items],
            )
        })
        .collect()
}

fn lines(o: &Options) -> Vec<Workload> {
    let n = if o.quick { "500" } else { "2000" };
    vec![workload(
        &format!("stdout: 8 threads x {n} lines"),
        "bench-pipeline",
        "bench-pipeline",
        &["lines", "8", n],
    )]
}

fn fdwrite(o: &Options) -> Vec<Workload> {
    let calls = if o.quick { "5000" } else { "20000" };
    ["1", "2", "8"]
        .into_iter()
        .map(|t| {
            let mut w = workload(
                &format!("fd_write to a file, {t} thread(s) x {calls}"),
                "bench-fdwrite",
                "bench-fdwrite",
                &[t, calls, "/out/w.out"],
            );
            w.scratch_dir = true;
            w
        })
        .collect()
}

fn compute(o: &Options) -> Vec<Workload> {
    let q = o.quick;
    // zstd level 3 cuts its input into 8 MiB jobs, one per worker at a time:
    // 32 MiB keeps 4 workers busy, 16 MiB (quick) still 2.
    let zstd_mib = if q { "16" } else { "32" };
    let mut work = vec![
        workload(
            "tight loop (splitmix64 sum)",
            "bench-compute",
            "bench-compute",
            &["loop", if q { "50000000" } else { "200000000" }],
        ),
        workload(
            "call-heavy (2 calls per iteration)",
            "bench-compute",
            "bench-compute",
            &["calls", if q { "50000000" } else { "200000000" }],
        ),
        workload(
            "recursive fib",
            "bench-compute",
            "bench-compute",
            &["recurse", if q { "33" } else { "38" }],
        ),
        workload(
            "rayon par_sort_unstable, 4 threads",
            "bench-compute",
            "bench-compute",
            &["sort", if q { "1000000" } else { "5000000" }, "4"],
        ),
        workload(
            "C cpu kernel, 2 threads",
            "bench-cpu",
            "bench-cpu",
            &["2", if q { "20000000" } else { "100000000" }],
        ),
        workload(
            &format!("zstd compress {zstd_mib} MiB, 4 workers"),
            "bench-zstd",
            "bench-zstd",
            &["compress", zstd_mib, "4"],
        ),
        workload(
            &format!("zstd decompress {zstd_mib} MiB"),
            "bench-zstd",
            "bench-zstd",
            &["decompress", zstd_mib, "1"],
        ),
    ];
    for w in &mut work {
        w.floor = true;
    }
    work
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
        ("spawn", classic::spawn),
        ("burst", classic::burst),
        ("cpu", classic::cpu),
        ("idle", classic::idle),
        ("stop", classic::stop),
    ];
    for (name, f) in classic {
        if wanted(name) {
            f(&mut bench);
        }
    }
    let groups: [(&str, &str, Group); 5] = [
        ("pingpong", "wait/notify", pingpong),
        ("pipeline", "channels between threads", pipeline),
        ("lines", "stdout lines", lines),
        ("fdwrite", "fd_write to a shared file", fdwrite),
        ("compute", "compute guests", compute),
    ];
    for (name, title, group) in groups {
        if wanted(name) {
            let work = group(&options);
            compare::idle_and_loaded(
                &mut bench,
                &tools,
                title,
                &work,
                options.reps,
                options.loads,
            );
        }
    }
    compare::cleanup();
    std::process::ExitCode::SUCCESS
}
