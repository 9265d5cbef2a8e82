//! Embedding from async code: a program runs on a blocking thread while the
//! executor keeps running tasks, and a task other than the one awaiting the
//! program cancels it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use wasi_threads_host::{Outcome, Runner};

#[tokio::test(flavor = "current_thread")]
async fn a_task_cancels_a_program_running_on_a_blocking_thread() {
    // c-infinite spins in several threads forever.
    let path = common::fixture("c-infinite.wasm");
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
    let program = tokio::task::spawn_blocking(move || {
        Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .arg("c-infinite.wasm")
            .on_start(move |cancel| {
                let _ = cancel_tx.send(cancel);
            })
            .run_file(&path)
    });
    let cancel = cancel_rx.await.expect("the program starts");

    // On this single-threaded executor, a task that ticks while the program
    // runs shows the executor is not blocked by it.
    let ticks = Arc::new(AtomicU32::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    ticker.await.unwrap();
    assert_eq!(ticks.load(Ordering::SeqCst), 5);
    assert!(!program.is_finished(), "c-infinite ended on its own");

    // Cancel from another task, as a server's shutdown path would.
    tokio::spawn(async move { cancel.cancel() }).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), program)
        .await
        .expect("the program stops after cancel")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_ends_by_itself_is_unaffected_by_a_late_cancel() {
    // A program that finishes by itself still reports its own outcome when
    // nobody cancels; cancelling a finished program is harmless.
    let path = common::fixture("c-exit-code.wasm");
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
    let program = tokio::task::spawn_blocking(move || {
        Runner::new()
            .stdio(wasi_threads_host::Stdio::new())
            .arg("c-exit-code.wasm")
            .on_start(move |cancel| {
                let _ = cancel_tx.send(cancel);
            })
            .run_file(&path)
    });
    let cancel = cancel_rx.await.unwrap();
    let outcome = program.await.unwrap().unwrap();
    assert_eq!(outcome.exit_status(), 42);
    cancel.cancel();
}
