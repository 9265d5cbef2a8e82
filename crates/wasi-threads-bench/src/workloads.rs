//! The workloads measured beside their peers (native, ours, the CLI,
//! wasmtime 36 and, for compute, the floor), each group idle and under CPU
//! hogs: wait/notify ping-pong, channel pipelines, stdout lines, `fd_write`
//! to a shared file, and compute kernels (what the stop checks cost).

use crate::Options;
use crate::harness::peers::{Workload, workload};

pub fn pingpong(o: &Options) -> Vec<Workload> {
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

pub fn pipeline(o: &Options) -> Vec<Workload> {
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

pub fn lines(o: &Options) -> Vec<Workload> {
    let n = if o.quick { "500" } else { "2000" };
    vec![workload(
        &format!("stdout: 8 threads x {n} lines"),
        "bench-pipeline",
        "bench-pipeline",
        &["lines", "8", n],
    )]
}

pub fn fdwrite(o: &Options) -> Vec<Workload> {
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

pub fn compute(o: &Options) -> Vec<Workload> {
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
