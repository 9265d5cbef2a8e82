//! A program run from async code: on a blocking thread, so the executor
//! stays free, and cancelled from another task (a deadline here; in a
//! server, a client leaving or a shutdown).
//!
//!     cargo run -p wasi-threads-host --example async_embed -- wasm-fixtures/c-infinite.wasm 500

use std::time::Duration;
use wasi_threads_host::{Outcome, Runner, Stdio};

/// Runs the module at `path`, cancelling it after `limit`.
pub async fn run(path: String, limit: Duration, stdio: Stdio) -> wasmtime::Result<Outcome> {
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
    let program = tokio::task::spawn_blocking(move || {
        let on_start = move |cancel| drop(cancel_tx.send(cancel)); // just before `_start`
        Runner::new().stdio(stdio).on_start(on_start).run_file(path)
    });
    // No handle: the module did not start, and the error comes out below.
    let watchdog = cancel_rx.await.ok().map(|cancel| {
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            cancel.cancel(); // any task, any thread
        })
    });
    let outcome = program.await??; // every guest thread joined
    watchdog.inspect(|w| w.abort());
    Ok(outcome)
}

#[tokio::main]
async fn main() -> wasmtime::Result<std::process::ExitCode> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| wasmtime::format_err!("usage: async_embed MODULE [MS]"))?;
    let ms = args.next().map_or(Ok(5000), |ms| ms.parse())?;
    let outcome = run(path, Duration::from_millis(ms), Stdio::inherit()).await?;
    eprintln!("async_embed: {outcome}");
    Ok(std::process::ExitCode::from(outcome.exit_status() as u8))
}
