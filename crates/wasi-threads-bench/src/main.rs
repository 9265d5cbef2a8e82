//! Prints benchmark figures for wasi-threads-host, each beside a native build
//! of the same program measured in the same run.
//!
//!     cargo run --release -p wasi-threads-bench [-- NAME...]
//!
//! NAME selects benchmarks: spawn, burst, cpu, pingpong, idle, fdwrite, stop.
//! The native baselines are the gcc builds in `wasm-fixtures/native/`
//! (`wasm-fixtures/build.sh --native-only` makes them; this binary runs it
//! when they are missing).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasi_threads_host::{Outcome, Runner, SharedWasi, WasiThreads, compile, engine_config};
use wasmtime::{Engine, Linker, Module};
use wasmtime_wasi::WasiCtxBuilder;
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

struct Bench {
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

    /// Runs a fixture in-process and returns its RESULT lines.
    fn wasm(&mut self, name: &str, args: &[&str], dir: Option<&Path>) -> Results {
        let module = self.module(name);
        let stdout = MemoryOutputPipe::new(1 << 20);
        let captured = stdout.clone();
        let mut runner = Runner::new()
            .arg(name)
            .args(args.iter().copied())
            .inherit_stdio(false)
            .configure_wasi(move |b| {
                b.stdout(captured).inherit_stderr();
            });
        if let Some(dir) = dir {
            runner = runner.preopened_dir(dir, "/out");
        }
        let outcome = runner.run_module(&module).expect("run");
        assert!(
            matches!(outcome, Outcome::Exit { code: 0, .. }),
            "{name} {args:?}: {outcome}"
        );
        parse(&String::from_utf8_lossy(&stdout.contents()))
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

fn spawn(b: &mut Bench) {
    let w = median(
        (0..3)
            .map(|_| b.wasm("bench-spawn", &["2000"], None)["ns_per_thread"])
            .collect(),
    );
    let n = median(
        (0..3)
            .map(|_| b.native("bench-spawn", &["2000"])["ns_per_thread"])
            .collect(),
    );
    row(
        "(a) spawn+join, 2000 in a row, per thread",
        w as f64 / 1e3,
        n as f64 / 1e3,
        "us",
    );
}

fn burst(b: &mut Bench) {
    let w = median(
        (0..3)
            .map(|_| b.wasm("bench-burst", &["256"], None)["total_ns"])
            .collect(),
    );
    let n = median(
        (0..3)
            .map(|_| b.native("bench-burst", &["256"])["total_ns"])
            .collect(),
    );
    row(
        "(b) burst: 256 alive at once, all joined",
        w as f64 / 1e6,
        n as f64 / 1e6,
        "ms",
    );
}

fn cpu(b: &mut Bench) {
    let work = "50000000";
    let w1 = median(
        (0..3)
            .map(|_| b.wasm("bench-cpu", &["1", work], None)["elapsed_ns"])
            .collect(),
    );
    let w2 = median(
        (0..3)
            .map(|_| b.wasm("bench-cpu", &["2", work], None)["elapsed_ns"])
            .collect(),
    );
    let n1 = median(
        (0..3)
            .map(|_| b.native("bench-cpu", &["1", work])["elapsed_ns"])
            .collect(),
    );
    let n2 = median(
        (0..3)
            .map(|_| b.native("bench-cpu", &["2", work])["elapsed_ns"])
            .collect(),
    );
    row(
        "(c) cpu kernel, 1 thread",
        w1 as f64 / 1e6,
        n1 as f64 / 1e6,
        "ms",
    );
    row(
        "(c) cpu kernel, 2 threads",
        w2 as f64 / 1e6,
        n2 as f64 / 1e6,
        "ms",
    );
    println!(
        "{:<44} {:>12.2}x        native {:>12.2}x",
        "(c) speedup with 2 threads",
        w1 as f64 / w2 as f64,
        n1 as f64 / n2 as f64
    );
}

fn pingpong(b: &mut Bench) {
    let w = median(
        (0..3)
            .map(|_| b.wasm("bench-pingpong", &["50000"], None)["ns_per_roundtrip"])
            .collect(),
    );
    let n = median(
        (0..3)
            .map(|_| b.native("bench-pingpong", &["50000"])["ns_per_roundtrip"])
            .collect(),
    );
    row(
        "(d) wait/notify ping-pong, per round trip",
        w as f64,
        n as f64,
        "ns",
    );
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// RSS of this process while `n` guest threads of bench-idle are parked.
fn idle_rss(b: &mut Bench, n: usize) -> u64 {
    let module = b.module("bench-idle");
    let stdout = MemoryOutputPipe::new(1 << 16);
    let captured = stdout.clone();
    let sample = Arc::new(Mutex::new(0u64));
    let sampler = {
        let (stdout, sample) = (stdout.clone(), sample.clone());
        let want = format!("ready {n}\n");
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if String::from_utf8_lossy(&stdout.contents()).contains(&want) {
                    std::thread::sleep(Duration::from_millis(200));
                    *sample.lock() = rss_kib(None);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let outcome = Runner::new()
        .args(["bench-idle".to_string(), n.to_string(), "1".to_string()])
        .inherit_stdio(false)
        .configure_wasi(move |b| {
            b.stdout(captured);
        })
        .run_module(&module)
        .expect("run bench-idle");
    assert!(
        matches!(outcome, Outcome::Exit { code: 0, .. }),
        "{outcome}"
    );
    sampler.join().unwrap();
    *sample.lock()
}

fn native_idle_rss(n: usize) -> u64 {
    use std::io::BufRead;
    let mut child = Command::new(native("bench-idle"))
        .args([n.to_string(), "1".to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("native bench-idle");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let rss = rss_kib(Some(child.id()));
    let _ = child.wait();
    rss
}

fn idle(b: &mut Bench) {
    let n = 256;
    idle_rss(b, 1); // warm up: module, runtime threads, allocator
    let one = idle_rss(b, 1);
    let many = idle_rss(b, n + 1);
    let per = many.saturating_sub(one) as f64 / n as f64;
    let native_one = native_idle_rss(1);
    let native_many = native_idle_rss(n + 1);
    let native_per = native_many.saturating_sub(native_one) as f64 / n as f64;
    row(
        "(e) RSS per idle thread (host + guest stack)",
        per,
        native_per,
        "KiB",
    );
    println!(
        "{:<44} guest stacks are 32 KiB each (pthread_attr_setstacksize)",
        ""
    );
}

fn fdwrite(b: &mut Bench) {
    let dir = std::env::temp_dir().join(format!("wasi-threads-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let calls = 20000u64;
    for threads in [1u64, 2, 8] {
        let t = threads.to_string();
        let c = calls.to_string();
        let w = median(
            (0..3)
                .map(|_| b.wasm("bench-fdwrite", &[&t, &c, "/out/w.out"], Some(&dir))["elapsed_ns"])
                .collect(),
        );
        let native_path = dir.join("n.out");
        let n = median(
            (0..3)
                .map(|_| b.native("bench-fdwrite", &[&t, &c, native_path.to_str().unwrap()])["elapsed_ns"])
                .collect(),
        );
        let per_sec = |ns: u64| (threads * calls) as f64 / (ns as f64 / 1e9) / 1e3;
        row(
            &format!("(f) fd_write to a file, {threads} thread(s)"),
            per_sec(w),
            per_sec(n),
            "k/s",
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Clone)]
struct StopState {
    wasi: SharedWasi,
    mark: Arc<Mutex<Option<Instant>>>,
}

fn stop_guest(pages: u32) -> String {
    format!(
        r#"(module
  (import "wasi" "thread-spawn" (func $spawn (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "bench" "mark" (func $mark))
  (import "bench" "settle" (func $settle))
  (import "env" "memory" (memory {pages} {pages} shared))
  (export "memory" (memory 0))
  (func (export "wasi_thread_start") (param $tid i32) (param $arg i32)
    (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 1)))
    (if (i32.eqz (local.get $arg))
      (then (loop $park
        (drop (memory.atomic.wait32 (i32.const 4) (i32.const 0) (i64.const -1)))
        (br $park)))
      (else (loop $spin (br $spin)))))
  (func (export "_start")
    (local $i i32)
    (loop $l
      (drop (call $spawn (i32.ge_u (local.get $i) (i32.const 64))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 72))))
    (loop $w (br_if $w (i32.lt_u (i32.atomic.load (i32.const 0)) (i32.const 72))))
    (call $settle)
    (call $mark)
    (call $exit (i32.const 0))))"#
    )
}

/// From `proc_exit` to `run` returning with every thread joined, with 64
/// threads parked in memory.atomic.wait and 8 spinning.
fn stop_latency(engine: &Engine, pages: u32) -> Duration {
    let module = compile(engine, stop_guest(pages).as_bytes()).unwrap();
    let threads = WasiThreads::new(engine, &module).unwrap();
    let mark = Arc::new(Mutex::new(None));
    let wasi = SharedWasi::new(WasiCtxBuilder::new().build_p1(), &threads);
    let store = threads
        .new_store(StopState {
            wasi,
            mark: mark.clone(),
        })
        .unwrap();
    let mut linker = Linker::new(engine);
    threads.add_to_linker(&mut linker, &store).unwrap();
    wasi_threads_host::wasi::add_to_linker(&mut linker, |s: &mut StopState| &mut s.wasi).unwrap();
    linker
        .func_wrap(
            "bench",
            "mark",
            |caller: wasmtime::Caller<'_, StopState>| {
                *caller.data().mark.lock() = Some(Instant::now());
            },
        )
        .unwrap();
    linker
        .func_wrap("bench", "settle", || {
            std::thread::sleep(Duration::from_millis(30))
        })
        .unwrap();
    let outcome = threads.run(&linker, store).unwrap();
    let returned = Instant::now();
    assert_eq!(outcome, Outcome::Exit { code: 0, tid: 0 });
    let marked = mark.lock().expect("guest marked");
    returned - marked
}

/// The native reference: a process with 4 threads parked in futex wait whose
/// thread calls exit(99), from its "ready" line to the parent's wait().
fn native_exit_latency() -> Duration {
    use std::io::Read;
    let mut child = Command::new(native("c-term"))
        .args(["thread", "exit", "wait"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("native c-term");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    stdout.read_exact(&mut buf).unwrap();
    let ready = Instant::now();
    let _ = child.wait();
    ready.elapsed()
}

fn stop(_: &mut Bench) {
    let engine = Engine::new(&engine_config()).unwrap();
    for (label, pages) in [("16 MiB", 256u32), ("1 GiB", 16384)] {
        let runs: Vec<u64> = (0..15)
            .map(|_| stop_latency(&engine, pages).as_micros() as u64)
            .collect();
        let max = *runs.iter().max().unwrap();
        let native: Vec<u64> = (0..15)
            .map(|_| native_exit_latency().as_micros() as u64)
            .collect();
        row(
            &format!("(g) stop+join, 64 parked + 8 spinning, {label}"),
            median(runs) as f64 / 1e3,
            median(native) as f64 / 1e3,
            "ms",
        );
        println!(
            "{:<44} max {:.2} ms over 15 runs; native = process exit with 4 parked threads",
            "",
            max as f64 / 1e3
        );
    }
}

type BenchFn = fn(&mut Bench);

fn main() {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let mut bench = Bench {
        engine: Engine::new(&engine_config()).unwrap(),
        modules: HashMap::new(),
    };
    println!(
        "wasi-threads-host benchmarks ({} cores); medians of 3 runs unless noted",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let all: [(&str, BenchFn); 7] = [
        ("spawn", spawn),
        ("burst", burst),
        ("cpu", cpu),
        ("pingpong", pingpong),
        ("idle", idle),
        ("fdwrite", fdwrite),
        ("stop", stop),
    ];
    for (name, f) in all {
        if only.is_empty() || only.iter().any(|o| o == name) {
            f(&mut bench);
        }
    }
}
