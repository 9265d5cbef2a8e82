//! Differential fuzzing of the module rewrite: each input becomes a
//! `wasm-smith` module that must behave the same before and after
//! `wasi_threads_host::rewrite` (see crates/rewrite-diff).
//!
//! `just fuzz [seconds]`, or `cargo +nightly fuzz run rewrite`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(wasm) = rewrite_diff::generate(&mut u) else {
        return;
    };
    if let Err(bug) = rewrite_diff::check(&wasm) {
        panic!("{bug}\n{}", rewrite_diff::to_text(&wasm));
    }
});
