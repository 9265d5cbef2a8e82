//! Startup cost of a module: the rewrite alone, a first (uncached) compile,
//! and a run of `ModuleCache::compile` with a warm cache.
//!
//!     cargo run --release -p wasi-threads-bench --bin startup -- MODULE.wasm [RUNS]

use std::time::{Duration, Instant};
use wasi_threads_host::{ModuleCache, compile, engine_config, rewrite};
use wasmtime::Engine;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> wasmtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: startup MODULE.wasm [RUNS]");
    let runs: usize = args.next().map_or(5, |n| n.parse().expect("RUNS"));
    let bytes = std::fs::read(&path)?;
    let engine = Engine::new(&engine_config())?;
    let dir = std::env::temp_dir().join(format!("wth-startup-{}", std::process::id()));

    let time = |f: &mut dyn FnMut() -> wasmtime::Result<()>| -> wasmtime::Result<Duration> {
        let mut times = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed());
        }
        Ok(median(times))
    };
    let rewrite_only = time(&mut || rewrite(&bytes).map(drop))?;
    let uncached = time(&mut || compile(&engine, &bytes).map(drop))?;
    let cache = ModuleCache::new(&dir);
    cache.compile(&engine, &bytes)?;
    let warm = time(&mut || cache.compile(&engine, &bytes).map(drop))?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{path}: {} bytes; medians of {runs}: rewrite {rewrite_only:?}, \
         compile (rewrite + Cranelift, no cache) {uncached:?}, warm cache {warm:?}",
        bytes.len()
    );
    Ok(())
}
