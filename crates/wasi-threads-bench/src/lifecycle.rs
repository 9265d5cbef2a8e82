//! The benchmarks that compare the host with native builds only: thread
//! creation, bursts, a CPU kernel, idle memory and stop latency.

use crate::harness::{Bench, median, native, row};
use parking_lot::Mutex;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasi_threads_host::{Outcome, Runner, SharedWasi, WasiThreads, compile, engine_config};
use wasmtime::{Engine, Linker};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

pub fn spawn(b: &mut Bench) {
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

pub fn burst(b: &mut Bench) {
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

pub fn cpu(b: &mut Bench) {
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
        .stdio(wasi_threads_host::Stdio::new())
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

pub fn idle(b: &mut Bench) {
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

#[derive(Clone)]
struct StopState {
    wasi: SharedWasi,
    mark: Arc<Mutex<Option<Instant>>>,
}

fn stop_guest(pages: u32, parked: u32, spinning: u32) -> String {
    let total = parked + spinning;
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
      (drop (call $spawn (i32.ge_u (local.get $i) (i32.const {parked}))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {total}))))
    (loop $w (br_if $w (i32.lt_u (i32.atomic.load (i32.const 0)) (i32.const {total}))))
    (call $settle)
    (call $mark)
    (call $exit (i32.const 0))))"#
    )
}

/// From `proc_exit` to `run` returning with every thread joined, with
/// `parked` threads parked in memory.atomic.wait and `spinning` spinning.
fn stop_latency(engine: &Engine, pages: u32, parked: u32, spinning: u32) -> Duration {
    let module = compile(engine, stop_guest(pages, parked, spinning).as_bytes()).unwrap();
    let threads = WasiThreads::new(engine, &module).unwrap();
    let mark = Arc::new(Mutex::new(None));
    let wasi = threads.wasi(WasiCtxBuilder::new(), wasi_threads_host::Stdio::new());
    let store = threads
        .new_store(StopState {
            wasi,
            mark: mark.clone(),
        })
        .unwrap();
    let mut linker = Linker::new(engine);
    threads
        .add_to_linker(&mut linker, &store, |s: &mut StopState| &mut s.wasi)
        .unwrap();
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

pub fn stop(_: &mut Bench) {
    let engine = Engine::new(&engine_config()).unwrap();
    // The issue's case (8 spinning), then a harder one: 64 more threads to
    // wake and tear down on the same 2 cores.
    for (parked, spinning, pages) in [(0, 8, 256u32), (64, 8, 256), (64, 8, 16384)] {
        let label = format!(
            "{}{spinning} spinning, {}",
            if parked > 0 {
                format!("{parked} parked + ")
            } else {
                String::new()
            },
            if pages == 256 { "16 MiB" } else { "1 GiB" }
        );
        let runs: Vec<u64> = (0..15)
            .map(|_| stop_latency(&engine, pages, parked, spinning).as_micros() as u64)
            .collect();
        let max = *runs.iter().max().unwrap();
        let native: Vec<u64> = (0..15)
            .map(|_| native_exit_latency().as_micros() as u64)
            .collect();
        row(
            &format!("(g) stop+join, {label}"),
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
