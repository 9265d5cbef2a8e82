//! The function cache (feature `function-cache`): a module that shares
//! functions with one compiled before reuses their compiled code; corrupt
//! packs are misses; the directory stays within its bound.

use std::path::Path;
use std::time::Duration;
use wasi_threads_host::{FunctionCache, Outcome, Runner, Stdio, compile, engine_config};
use wasmtime::Engine;

/// The helpers both modules share, in the order given. `$fib` calls itself
/// and `$sum` loops (so both get stop checks), `$mix` loops over a value.
const FIB: &str = r#"
  (func $fib (param i32) (result i32)
    (if (result i32) (i32.lt_u (local.get 0) (i32.const 2))
      (then (local.get 0))
      (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1)))
                     (call $fib (i32.sub (local.get 0) (i32.const 2)))))))"#;
const MIX: &str = r#"
  (func $mix (param i32) (result i32) (local $acc i32) (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get 0)))
      (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 31)) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $acc))"#;
const SUM: &str = r#"
  (func $sum (param i32) (result i32) (local $acc i32) (local $i i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get 0)))
      (i32.store (i32.mul (local.get $i) (i32.const 4)) (local.get $i))
      (local.set $acc (i32.add (local.get $acc) (i32.load (i32.mul (local.get $i) (i32.const 4)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (local.get $acc))"#;

/// `$mix(n)` as the module computes it.
fn mix(n: u32) -> i32 {
    (0..n).fold(0i32, |acc, i| acc.wrapping_mul(31).wrapping_add(i as i32))
}

/// A module whose `_start` exits 7 when `$fib(20)`, `$mix(50)`, `$sum(100)`
/// and its own `extra` functions (each returning its constant) give what
/// they should, else 1; `helpers` in the given order.
fn module(helpers: &[&str], extra: &[i32]) -> String {
    let mut wat = String::from(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)"#,
    );
    for (i, value) in extra.iter().enumerate() {
        wat += &format!("\n  (func $extra{i} (result i32) (i32.const {value}))");
    }
    for helper in helpers {
        wat += helper;
    }
    let mut checks = format!(
        "(i32.and (i32.and (i32.eq (call $fib (i32.const 20)) (i32.const 6765))
                            (i32.eq (call $mix (i32.const 50)) (i32.const {})))
                   (i32.eq (call $sum (i32.const 100)) (i32.const 4950)))",
        mix(50)
    );
    for (i, value) in extra.iter().enumerate() {
        checks = format!("(i32.and {checks} (i32.eq (call $extra{i}) (i32.const {value})))");
    }
    wat += &format!(
        r#"
  (func (export "_start")
    (if {checks} (then (call $exit (i32.const 7))))
    (call $exit (i32.const 1))))"#
    );
    wat
}

fn first() -> String {
    module(&[FIB, MIX, SUM], &[])
}

/// Other functions first, the shared ones in another order.
fn second() -> String {
    module(&[SUM, FIB, MIX], &[11, 12, 13])
}

/// An engine compiling through `cache`, as a new process would make it.
fn engine(cache: &FunctionCache) -> Engine {
    let mut config = engine_config();
    cache.enable(&mut config).unwrap();
    Engine::new(&config).unwrap()
}

/// Compiles and runs `wat`, which must exit 7.
fn assert_runs(engine: &Engine, wat: &str) {
    let module = compile(engine, wat.as_bytes()).unwrap();
    let outcome = Runner::new()
        .engine(engine.clone())
        .stdio(Stdio::new())
        .timeout(Duration::from_secs(60))
        .run_module(&module)
        .unwrap();
    assert_eq!(outcome, Outcome::Exit { code: 7, tid: 0 });
}

fn packs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut packs: Vec<_> = std::fs::read_dir(dir)
        .map(|listing| listing.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    packs.retain(|p| p.extension().is_some_and(|e| e == "pack"));
    packs.sort();
    packs
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `pack` with the last byte of each entry's value flipped, so that
/// whichever entries a module looks up, every hit is on a damaged one.
/// (Which function is last in a pack depends on the compile, so flipping
/// one byte would damage a function the next module may never ask for.)
/// Layout: a 32-byte header with the count at 8..16, then 64 bytes an
/// entry with its offset at 32..40 and key and value lengths at 40..48.
fn flip_each_entry(pack: &[u8]) -> Vec<u8> {
    let word = |at: usize, n: usize| -> u64 {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&pack[at..at + n]);
        u64::from_le_bytes(b)
    };
    let mut out = pack.to_vec();
    for i in 0..word(8, 8) as usize {
        let entry = 32 + i * 64;
        let end = word(entry + 32, 8) + word(entry + 40, 4) + word(entry + 44, 4);
        out[end as usize - 1] ^= 0x01;
    }
    out
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wasi-threads-function-cache-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_different_module_reuses_shared_functions() {
    let dir = scratch("shared");
    let cache = FunctionCache::new(&dir);
    assert_runs(&engine(&cache), &first());
    let cold = cache.stats();
    assert_eq!(cold.hits, 0, "{cold:?}");
    cache.flush().unwrap();
    assert!(cache.stats().written > 0);
    assert_eq!(packs(&dir).len(), 1);

    // Another process: a new cache on the same directory, a new engine.
    let cache = FunctionCache::new(&dir);
    assert_runs(&engine(&cache), &second());
    let warm = cache.stats();
    // `$fib`, `$mix`, `$sum` and the shared trampolines at least.
    assert!(warm.hits >= 3, "{warm:?}");
    assert_eq!(warm.corrupt, 0, "{warm:?}");
    cache.flush().unwrap();

    // In one process, a module compiled after a flush finds what the
    // flush wrote.
    let cache = FunctionCache::new(scratch("one-process"));
    let engine = engine(&cache);
    assert_runs(&engine, &first());
    cache.flush().unwrap();
    let before = cache.stats().hits;
    assert_runs(&engine, &second());
    assert!(cache.stats().hits >= before + 3, "{:?}", cache.stats());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each way of damaging a pack: still compiles, still runs right.
#[test]
fn corrupt_packs_are_misses() {
    let dir = scratch("corrupt");
    let cache = FunctionCache::new(&dir);
    assert_runs(&engine(&cache), &first());
    cache.flush().unwrap();
    let [pack] = packs(&dir).try_into().unwrap();
    let good = std::fs::read(&pack).unwrap();
    let len = good.len();
    // Header 32 bytes, then 64 a function: the data is in the last part.
    let damaged: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "a flipped byte in every entry's data",
            flip_each_entry(&good),
            true,
        ),
        (
            "every data byte flipped",
            {
                let mut bytes = good.clone();
                let data = len - len / 4;
                bytes[data..].iter_mut().for_each(|b| *b ^= 0x5a);
                bytes
            },
            true,
        ),
        ("a flipped index byte", flip(&good, 40), false),
        ("a flipped count", flip(&good, 8), false),
        ("truncated to half", good[..len / 2].to_vec(), false),
        ("truncated in the header", good[..10].to_vec(), false),
        ("empty", Vec::new(), false),
        ("not a pack", b"garbage".repeat(100), false),
    ];
    for (what, bytes, detected_at_lookup) in damaged {
        std::fs::write(&pack, &bytes).unwrap();
        let cache = FunctionCache::new(&dir);
        assert_runs(&engine(&cache), &second());
        let stats = cache.stats();
        if detected_at_lookup {
            assert!(stats.corrupt > 0, "{what}: {stats:?}");
        }
        // Only entries that pass every check can hit.
        assert!(stats.misses > 0, "{what}: {stats:?}");
    }
    // The flush after a damaged entry was found removes its pack.
    std::fs::write(&pack, flip_each_entry(&good)).unwrap();
    let cache = FunctionCache::new(&dir);
    assert_runs(&engine(&cache), &second());
    assert!(cache.stats().corrupt > 0);
    cache.flush().unwrap();
    assert!(!pack.exists());
    for other in packs(&dir) {
        std::fs::remove_file(other).unwrap();
    }
    // A whole pack again: hits again.
    std::fs::write(&pack, &good).unwrap();
    let cache = FunctionCache::new(&dir);
    assert_runs(&engine(&cache), &second());
    assert!(cache.stats().hits >= 3, "{:?}", cache.stats());
    let _ = std::fs::remove_dir_all(&dir);
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[at] ^= 0xff;
    bytes
}

#[test]
fn the_directory_stays_within_its_bound() {
    let dir = scratch("bound");
    let own = |n: i32| -> Vec<i32> { (0..3).map(|i| 1000 * n + i).collect() };
    // The first module's pack holds everything; each later one's only its
    // own functions (the shared ones hit, renewing the first pack's use).
    let cache = FunctionCache::new(&dir);
    assert_runs(&engine(&cache), &module(&[FIB, MIX, SUM], &own(0)));
    cache.flush().unwrap();
    let [shared] = packs(&dir).try_into().unwrap();
    let bound = dir_size(&dir) * 3 / 2;
    let mut evicted = false;
    for n in 1..8 {
        let cache = FunctionCache::new(&dir).max_size(bound);
        assert_runs(&engine(&cache), &module(&[FIB, MIX, SUM], &own(n)));
        assert!(cache.stats().hits >= 3, "module {n}: {:?}", cache.stats());
        let before = packs(&dir).len();
        cache.flush().unwrap();
        let size = dir_size(&dir);
        assert!(size <= bound, "after module {n}: {size} > {bound}");
        evicted |= packs(&dir).len() <= before;
    }
    // Not asserted: that the first pack survives. Its functions hit in
    // every module (above), but a later pack may hold some of them too,
    // the first in name order serves a key, and file times are as coarse
    // as the kernel's clock tick: once in a few runs under load it went,
    // and its functions were compiled and cached once more.
    let _ = shared;
    assert!(evicted, "nothing was evicted");

    // A pack that cannot fit alone is not written.
    let small = scratch("bound-small");
    let cache = FunctionCache::new(&small).max_size(16);
    assert_runs(&engine(&cache), &first());
    cache.flush().unwrap();
    assert!(dir_size(&small) <= 16);
    assert_eq!(cache.stats().written, 0);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&small);
}
