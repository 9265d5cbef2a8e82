//! The common case: a wasi-threads module run as `wasmtime run` runs it.
//!
//!     cargo run -p wasi-threads-host --example run -- wasm-fixtures/rust-threads.wasm [ARGS]

use wasi_threads_host::{Outcome, Runner};

/// Runs the module at `path` with the guest's `argv` = `path`, `args`, and
/// the process's stdio.
pub fn run(path: &str, args: &[String]) -> wasmtime::Result<Outcome> {
    Runner::new().arg(path).args(args).run_file(path)
}

fn main() -> wasmtime::Result<std::process::ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, args)) = args.split_first() else {
        wasmtime::bail!("usage: run MODULE [ARGS]")
    };
    let outcome = run(path, args)?;
    Ok(std::process::ExitCode::from(outcome.exit_status() as u8)) // 0..=255, as the OS has it
}
