//! bench-compute: usage: bench-compute KERNEL [N] [THREADS]
//!
//! Compute-bound kernels for measuring what supervision costs:
//!   loop N      sum of splitmix64(i), i < N: one tight loop, no calls
//!   calls N     N iterations each making two calls that are never inlined
//!   recurse N   naive recursive fib(N): calls, no loops
//!   sort N T    rayon `par_sort_unstable` of N pseudo-random u64 on T threads
//! Output (exit 0):
//!   RESULT checksum=<int>
//!   RESULT elapsed_ns=<int>
use std::hint::black_box;
use std::time::Instant;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn tight_loop(n: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(splitmix64(i));
    }
    sum
}

#[inline(never)]
fn leaf(x: u64) -> u64 {
    black_box(x.rotate_left(7) ^ 0x5555)
}

#[inline(never)]
fn middle(x: u64, i: u64) -> u64 {
    leaf(x.wrapping_add(i)).wrapping_mul(3)
}

fn call_heavy(n: u64) -> u64 {
    let mut x = 1u64;
    for i in 0..n {
        x = middle(x, i);
    }
    x
}

#[inline(never)]
fn fib(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib(black_box(n - 1)) + fib(black_box(n - 2))
    }
}

fn sort(n: u64, threads: usize) -> u64 {
    use rayon::prelude::*;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut v: Vec<u64> = (0..n).map(splitmix64).collect();
    pool.install(|| v.par_sort_unstable());
    assert!(v.windows(2).all(|w| w[0] <= w[1]));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kernel = args.get(1).map(String::as_str).unwrap_or("loop");
    let n = |default: u64| args.get(2).and_then(|s| s.parse().ok()).unwrap_or(default);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4);
    let start = Instant::now();
    let checksum = match kernel {
        "loop" => tight_loop(black_box(n(200_000_000))),
        "calls" => call_heavy(black_box(n(200_000_000))),
        "recurse" => fib(black_box(n(35))),
        "sort" => sort(black_box(n(5_000_000)), threads),
        other => {
            eprintln!("unknown kernel {other}: loop, calls, recurse or sort");
            std::process::exit(2);
        }
    };
    let elapsed = start.elapsed();
    println!("RESULT checksum={checksum}");
    println!("RESULT elapsed_ns={}", elapsed.as_nanos());
}
