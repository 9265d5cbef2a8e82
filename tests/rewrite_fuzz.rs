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
            // Every corpus module is one the rewrite applies to, and one that
            // runs to the end within its fuel.
            Ok(Verdict::Same { .. }) => {}
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
