//! Differential tests of the module rewrite (issue 14): the regression
//! corpus in `tests/rewrite-corpus/` and a fixed set of fresh `wasm-smith`
//! modules, each run before and after the rewrite by `rewrite-diff`, must
//! behave the same. `just fuzz` runs the same check for longer.

use rewrite_diff::{Verdict, check, module_for_seed, to_text};

/// Fresh modules per run: a few seconds in a debug build.
const FRESH_SEEDS: u64 = 300;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/rewrite-corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wat"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

#[test]
fn corpus_behaves_the_same_after_the_rewrite() {
    let corpus = corpus();
    assert!(corpus.len() >= 5, "the corpus went missing");
    for (name, text) in corpus {
        match check(&text) {
            // `*-refused.wat` modules wait where no host could interrupt
            // them: the host must refuse them at load.
            Ok(Verdict::Refused) if name.ends_with("-refused.wat") => {}
            // Every other corpus module is one the rewrite applies to, and
            // one that runs to the end within its fuel.
            Ok(Verdict::Same { .. }) if !name.ends_with("-refused.wat") => {}
            Ok(other) => panic!("{name}: {other:?}"),
            Err(bug) => panic!("{name}: {bug}"),
        }
    }
}

#[test]
fn fresh_modules_behave_the_same_after_the_rewrite() {
    let mut same = 0;
    for seed in 0..FRESH_SEEDS {
        let (wasm, _) = module_for_seed(seed);
        match check(&wasm) {
            Ok(Verdict::Same { .. }) => same += 1,
            Ok(_) => {}
            Err(bug) => panic!("seed {seed}: {bug}\n{}", to_text(&wasm)),
        }
    }
    // The generator must keep producing modules the rewrite applies to and
    // that run to the end, or this test would compare nothing.
    assert!(
        same >= FRESH_SEEDS / 2,
        "only {same} of {FRESH_SEEDS} modules were compared to the end"
    );
}

/// Seeds the stable runner once failed on, each with what it found: replayed
/// as they are generated now (the `.wat` corpus keeps the minimal form).
const REGRESSION_SEEDS: &[(u64, &str)] = &[(
    3_019_866,
    "grew a memory64 to 64 GiB; the harness aborted copying it (unbounded-growth.wat)",
)];

#[test]
fn regression_seeds_behave_the_same_after_the_rewrite() {
    for &(seed, found) in REGRESSION_SEEDS {
        let (wasm, _) = module_for_seed(seed);
        if let Err(bug) = check(&wasm) {
            panic!("seed {seed} (once {found}): {bug}");
        }
    }
}

/// The observation copies every memory and table, so the harness caps them
/// (alike on both sides): growth past the cap fails as the module sees it,
/// growth within it succeeds.
#[test]
fn growth_is_capped_by_the_harness() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/rewrite-corpus/unbounded-growth.wat");
    let wasm = wat::parse_file(&path).unwrap();
    let module = wasmtime::Module::new(rewrite_diff::engine(), &wasm).unwrap();
    let obs = rewrite_diff::observe(&module).unwrap();
    let result = |name: &str| {
        obs.steps
            .iter()
            .find(|(label, _)| *label == format!("call {name:?}"))
            .unwrap_or_else(|| panic!("no call of {name}: {:?}", obs.steps))
            .1
            .clone()
    };
    use rewrite_diff::Value::{I32, I64};
    assert_eq!(result("grow64-by-64-gib"), Ok(vec![I64(-1)]));
    assert_eq!(result("grow32-to-4-gib"), Ok(vec![I32(-1)]));
    assert_eq!(result("grow-shared-past-the-cap"), Ok(vec![I32(-1)]));
    assert_eq!(result("grow-table"), Ok(vec![I32(-1)]));
    // Old sizes: 1 page (memory64), 1 page (shared), 1 element.
    assert_eq!(result("grow-within-the-caps"), Ok(vec![I64(3)]));
    assert_eq!(
        obs.memories.iter().map(Vec::len).collect::<Vec<_>>(),
        [2 << 16, 4 << 16, 1 << 16, 1 << 16]
    );
}

/// The harness's host waits model Wasmtime's native instruction; the
/// project's own (`program/wait.rs`, what `Runner` links) must trap the same way.
/// An address plus offset past 2^32 traps natively as out of bounds even when
/// it is also misaligned (see `rewrite-corpus/overflowing-address.wat`).
#[test]
fn host_waits_trap_out_of_bounds_when_the_address_overflows() {
    for op in [
        "(memory.atomic.wait32 offset=0xfffffff8 (i32.const 9) (i32.const 0) (i64.const 0))",
        "(memory.atomic.wait64 offset=0xfffffffc (i32.const 6) (i64.const 0) (i64.const -1))",
        "(memory.atomic.notify offset=0xffffffff (i32.const 2) (i32.const 1))",
    ] {
        let wat = format!(
            r#"(module
                 (import "env" "memory" (memory 1 1 shared))
                 (func (export "_start") (drop {op})))"#
        );
        let outcome = wasi_threads_host::Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .run_bytes(wat.as_bytes())
            .unwrap();
        match outcome {
            wasi_threads_host::Outcome::Trap { trap, .. } => assert!(
                trap.message().contains("out of bounds"),
                "{op}: {}",
                trap.message()
            ),
            other => panic!("{op}: {other:?}"),
        }
    }
}
