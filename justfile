# Recipes for wasi-threads-host. `just` is optional: each recipe is one
# command you can also run by hand.

# Run every test (the command CI runs).
test:
    cargo test --workspace

# Races between guest threads on one file description (tests/file_races.rs),
# each scenario `runs` times.
file-races runs="1000":
    FILE_RACES_RUNS={{runs}} cargo test -p wasi-threads-cli --test file_races -- --test-threads 1

# Run the CLI on a bundled fixture.
run fixture="wasm-fixtures/rust-threads.wasm":
    cargo run -p wasi-threads-cli -- {{fixture}}

# Rebuild every fixture from source (installs clang-19 and a C sysroot).
fixtures:
    wasm-fixtures/build.sh

# Run the wasi-threads conformance tests of wasi-testsuite (vendored in
# tests/wasi-testsuite/; `tests/wasi-testsuite/refresh.sh` updates them).
corpus:
    cargo test -p wasi-threads-cli --test corpus

# Print benchmark figures beside native baselines.
bench:
    wasm-fixtures/build.sh --native-only
    cargo run --release -p wasi-threads-bench

# A real program (issue 18): ripgrep built for wasm32-wasip1-threads over a
# generated tree of 10 000 files (with and without RUST_BACKTRACE=1) and on
# one tiny file (start-up, warm and cold caches), natively, with our CLI and
# with `wasmtime run` 36 (`$WASMTIME`, else `wasmtime` on PATH; left out when
# absent), interleaved, idle and with CPU hogs. The first run `cargo
# install`s ripgrep into target/rg-bench/. One build for both binaries, so
# the CLI and the bench share one Wasmtime. E.g. `just rg-bench --rounds 9
# --idle tree`.
rg-bench *args:
    cargo build --release -p wasi-threads-cli -p wasi-threads-bench
    "${CARGO_TARGET_DIR:-target}/release/wasi-threads-bench" ripgrep {{args}}

# tokio's test suite under wasi-threads with tokio's own CI runner line
# (network to crates.io the first time). Selected targets: `just tokio
# rt_threaded sync_mpsc`; under wasmtime: `RUNTIME=wasmtime just tokio`.
tokio *targets:
    nice -n 10 .ci/tokio-suite {{targets}}

# The real-crate proof of issue 31: spin's own tests with a check-then-act
# bug put back in `Once` (patch held in the script), explored as cargo's
# runner (`wasi-threads --explore K`): must fail, its replay command must
# fail identically 20/20; the unpatched crate must pass. Sizes from the
# environment: K_BUG, K_OK, K_SUITE, REPLAYS, NORMAL, NORMAL_SUITE.
race-proof:
    nice -n 10 .ci/race-proof

# Each optional feature of the library alone, on top of a compiler (read from
# the manifest's [features] table, so a new feature is covered).
features:
    .ci/features

# cargo check for macOS and Windows (library with minimal features, CLI).
cross-check *targets:
    .ci/cross-check {{targets}}

# The checks a release needs: both crates package, docs build without warnings.
package:
    cargo package -p wasi-threads-host -p wasi-threads-cli --allow-dirty
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p wasi-threads-host -p wasi-threads-cli

# Lints, as CI would want them.
lint:
    cargo fmt --check
    cargo clippy --workspace --all-targets -- -D warnings

# Differential fuzzing of the module rewrite for `seconds` (issue 14): with
# libFuzzer (`cargo install cargo-fuzz`, nightly toolchain) when available,
# else with the stable runner. Failing modules are saved: fuzz/artifacts/ or
# target/rewrite-diff-failures/.
fuzz seconds="600":
    if cargo +nightly fuzz --version >/dev/null 2>&1; then cargo +nightly fuzz run rewrite -- -max_total_time={{seconds}} -timeout=120; else just fuzz-stable {{seconds}}; fi

# The same check on stable Rust, over consecutive seeds.
fuzz-stable seconds="600" seed="0":
    cargo run --release -p rewrite-diff -- --seconds {{seconds}} --seed {{seed}}

# The concurrent differential test of the WASI file layer
# (tests/wasi_linearizable.rs) for `seconds`, from a random base seed,
# counting failures instead of stopping at the first; prints the totals
# (histories, calls, linearization nodes explored, failures) at the end.
wasi-race seconds="3600":
    WASI_LIN_SECONDS={{seconds}} WASI_LIN_BASE=random WASI_LIN_KEEP_GOING=1 cargo test -p wasi-threads-host --test wasi_linearizable -- --nocapture concurrent_wasi_calls_are_linearizable

# tokio's suite as cargo's runner (issue 30), cold (caches emptied) and warm,
# under our release CLI and `wasmtime` 36 ($WASMTIME or on PATH), taking
# turns; medians and ratios. E.g. `ROUNDS=3 just bench-ci rt_threaded`.
bench-ci *targets:
    .ci/bench-ci {{targets}}
