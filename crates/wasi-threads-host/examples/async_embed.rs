//! Running a wasi-threads program from async code without blocking the
//! executor.
//!
//! `Runner::run_file` (and `WasiThreads::run`) block their caller until
//! every guest thread has been joined, so from async code they go on a
//! blocking thread (`spawn_blocking`). The program's `CancelHandle` is
//! `Send + Clone`: any task can stop the program, and the blocking call
//! then returns `Outcome::Cancelled` with every guest thread joined.
//!
//!     cargo run -p wasi-threads-host --example async_embed -- wasm-fixtures/c-infinite.wasm 500ms

use std::time::Duration;
use wasi_threads_host::{Outcome, Runner};

#[tokio::main]
async fn main() -> wasmtime::Result<std::process::ExitCode> {
    let mut args = std::env::args().skip(1);
    let (Some(path), limit) = (args.next(), args.next()) else {
        wasmtime::bail!("usage: async_embed MODULE [CANCEL_AFTER_MS]");
    };
    let limit = match limit {
        Some(ms) => Duration::from_millis(ms.trim_end_matches("ms").parse()?),
        None => Duration::from_secs(5),
    };

    // The runner hands out the cancel handle just before the program starts.
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
    let program = tokio::task::spawn_blocking(move || {
        Runner::new()
            .on_start(move |cancel| {
                let _ = cancel_tx.send(cancel);
            })
            .run_file(&path)
    });

    // Another task owns cancellation: here a deadline; in a server, a client
    // disconnect or a shutdown signal.
    let watchdog = match cancel_rx.await {
        Ok(cancel) => Some(tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            eprintln!("async_embed: cancelling after {limit:?}");
            cancel.cancel();
        })),
        // The module never started (it failed to compile or link): the
        // error comes out of the blocking task below.
        Err(_) => None,
    };

    // The executor stays free meanwhile; awaiting the blocking task does not
    // hold a worker thread.
    let outcome = program.await??;
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    match &outcome {
        Outcome::Cancelled => eprintln!("async_embed: cancelled, every guest thread joined"),
        other => eprintln!("async_embed: {other}"),
    }
    // The guest's status, truncated to 0..=255 as the OS would.
    Ok(std::process::ExitCode::from(outcome.exit_status() as u8))
}
