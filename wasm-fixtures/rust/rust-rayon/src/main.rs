//! rust-rayon: rayon par_iter sum / map-filter / par_sort / join on a pool of 4
//! threads. Deterministic output (the number of distinct OS threads is not printed).
use rayon::prelude::*;

fn lcg(seed: &mut u64) -> u32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*seed >> 33) as u32
}

fn fib(n: u32) -> u64 {
    if n < 2 {
        return n as u64;
    }
    let (a, b) = rayon::join(|| fib(n - 1), || fib(n - 2));
    a + b
}

fn main() {
    rayon::ThreadPoolBuilder::new().num_threads(4).build_global().expect("build_global");

    let sum: u64 = (1..=1_000_000u64).into_par_iter().sum();
    println!("par sum 1..=1000000: {}", sum);

    let sq: u64 = (1..=1_000_000u64).into_par_iter().filter(|x| x % 3 == 0).map(|x| x * x % 1_000_003).sum();
    println!("par filter/map sum: {}", sq);

    let mut seed = 42u64;
    let mut v: Vec<u32> = (0..1_000_000).map(|_| lcg(&mut seed)).collect();
    let checksum_before: u64 = v.par_iter().map(|&x| x as u64).sum();
    v.par_sort_unstable();
    let sorted = v.par_windows(2).all(|w| w[0] <= w[1]);
    let checksum_after: u64 = v.par_iter().map(|&x| x as u64).sum();
    assert_eq!(checksum_before, checksum_after);
    println!("par sort: len {} sorted {} min {} max {} median {} checksum {}", v.len(), sorted, v[0], v[v.len() - 1], v[v.len() / 2], checksum_after);

    println!("rayon::join fib(25): {}", fib(25));
    println!("rust-rayon ok");
}
