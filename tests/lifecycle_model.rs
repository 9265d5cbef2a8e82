//! Model checks of the program lifecycle protocol with `loom`: every
//! interleaving (up to loom's preemption bound) of the races that decide how
//! a program ends, and of the worker pool's keep-alive hand-off.
//!
//! Run with
//! `RUSTFLAGS="--cfg wasi_threads_loom" CARGO_TARGET_DIR=target/loom cargo test -p wasi-threads-host --test lifecycle_model --test files_model`
//! (`cfg(wasi_threads_loom)` builds the lifecycle core on loom's primitives; the separate
//! target directory keeps the normal build). Without `--cfg wasi_threads_loom` this file
//! compiles to nothing.

#![cfg(wasi_threads_loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::mpsc::channel;
use loom::thread;
use wasi_threads_host::Outcome;
use wasi_threads_host::model_check::{Cause, Closed, IdleCount, Lifecycle, Phase, trap_info};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// A lifecycle whose fan-out counts how often it ran.
fn lifecycle() -> (Arc<Lifecycle>, Arc<AtomicUsize>) {
    let fan_outs = Arc::new(AtomicUsize::new(0));
    let counter = fan_outs.clone();
    let lifecycle = Lifecycle::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    (Arc::new(lifecycle), fan_outs)
}

fn exit(code: i32, tid: u32) -> Cause {
    Cause::Ended(Outcome::Exit { code, tid })
}

fn trap(tid: u32) -> Cause {
    Cause::Ended(Outcome::Trap {
        tid,
        trap: trap_info(),
    })
}

/// `proc_exit` in one thread, a trap in another and the embedder's cancel
/// (from the thread that then runs `run`'s wait) race: exactly one claim
/// wins, `run` sees that one, every claimant has fanned the stop out by the
/// time its claim returns, and the program joins.
#[test]
fn exit_racing_trap_racing_cancel() {
    model(|| {
        let (lifecycle, fan_outs) = lifecycle();
        lifecycle.admit(0).unwrap();
        lifecycle.admit(1).unwrap();
        lifecycle.started();
        let handles: Vec<_> = [(0, exit(3, 0)), (1, trap(1))]
            .into_iter()
            .map(|(tid, cause)| {
                let (lifecycle, fan_outs) = (lifecycle.clone(), fan_outs.clone());
                thread::spawn(move || {
                    let won = lifecycle.end(cause.clone());
                    // The claim and the stop are one step.
                    assert!(fan_outs.load(Ordering::SeqCst) >= 1);
                    assert!(lifecycle.phase() >= Phase::Stopping);
                    lifecycle.thread_ended(tid);
                    won.then_some(cause)
                })
            })
            .collect();
        let cancelled = Cause::Ended(Outcome::Cancelled);
        let cancel_won = lifecycle.end(cancelled.clone());
        let seen = lifecycle.wait_for_cause(None);
        let abandoned = lifecycle.join(None);
        assert!(abandoned.is_empty());
        let mut winners: Vec<Cause> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        if cancel_won {
            winners.push(cancelled);
        }
        assert_eq!(winners, vec![seen]);
        assert_eq!(lifecycle.phase(), Phase::Joined);
    });
}

/// A spawn races the program's stop: either the thread is admitted (and
/// then `join` waits for it to end) or it is refused and never runs; `join`
/// never returns while an admitted thread still runs, and never hangs.
#[test]
fn spawn_racing_stop() {
    model(|| {
        let (lifecycle, _) = lifecycle();
        lifecycle.admit(0).unwrap();
        lifecycle.started();
        let child_done = Arc::new(AtomicBool::new(false));

        let spawner = {
            let (lifecycle, child_done) = (lifecycle.clone(), child_done.clone());
            thread::spawn(move || {
                // thread-spawn from the main thread, which then returns.
                let admitted = lifecycle.admit(1);
                let child = admitted.is_ok().then(|| {
                    let (lifecycle, child_done) = (lifecycle.clone(), child_done.clone());
                    thread::spawn(move || {
                        child_done.store(true, Ordering::SeqCst);
                        lifecycle.thread_ended(1);
                    })
                });
                lifecycle.end(exit(0, 0));
                lifecycle.thread_ended(0);
                (admitted, child)
            })
        };
        let canceller = {
            let lifecycle = lifecycle.clone();
            thread::spawn(move || {
                lifecycle.end(Cause::Ended(Outcome::Cancelled));
            })
        };

        lifecycle.wait_for_cause(None);
        let abandoned = lifecycle.join(None);
        assert!(abandoned.is_empty());
        let (admitted, child) = spawner.join().unwrap();
        canceller.join().unwrap();
        match admitted {
            Ok(()) => assert!(
                child_done.load(Ordering::SeqCst),
                "joined before the child ended"
            ),
            Err(Closed) => assert!(child.is_none()),
        }
        if let Some(child) = child {
            child.join().unwrap();
        }
        // Once stopping, nothing is admitted any more.
        assert_eq!(lifecycle.admit(2), Err(Closed));
    });
}

/// The timeout fires while the program ends on its own: one of the two
/// causes wins, `run` reports that one, and the join completes.
#[test]
fn timeout_racing_a_natural_end() {
    model(|| {
        let (lifecycle, fan_outs) = lifecycle();
        lifecycle.admit(0).unwrap();
        lifecycle.started();
        let main = {
            let lifecycle = lifecycle.clone();
            thread::spawn(move || {
                let won = lifecycle.end(exit(0, 0));
                lifecycle.thread_ended(0);
                won
            })
        };
        let timer = {
            let lifecycle = lifecycle.clone();
            // What `wait_for_cause` does when its deadline passes.
            thread::spawn(move || lifecycle.end(Cause::Ended(Outcome::TimedOut)))
        };
        let seen = lifecycle.wait_for_cause(None);
        assert!(lifecycle.join(None).is_empty());
        let (main_won, timer_won) = (main.join().unwrap(), timer.join().unwrap());
        assert!(main_won != timer_won, "exactly one cause wins");
        let expected = if main_won {
            exit(0, 0)
        } else {
            Cause::Ended(Outcome::TimedOut)
        };
        assert_eq!(seen, expected);
        assert!(fan_outs.load(Ordering::SeqCst) >= 2);
    });
}

/// A stop that finds the program already stopping still fans out in full
/// (the old `stop_everything` returned early when the flag was set, so a
/// cancel after an embedder's own trigger woke nobody and ticked no epoch);
/// a cancel after the join does nothing.
#[test]
fn every_stop_fans_out_until_joined() {
    model(|| {
        let (lifecycle, fan_outs) = lifecycle();
        lifecycle.admit(0).unwrap();
        let stopper = {
            let (lifecycle, fan_outs) = (lifecycle.clone(), fan_outs.clone());
            thread::spawn(move || {
                let before = fan_outs.load(Ordering::SeqCst);
                lifecycle.stop();
                // Only a stop after the join may do nothing.
                assert!(
                    fan_outs.load(Ordering::SeqCst) > before || lifecycle.phase() == Phase::Joined
                );
            })
        };
        let canceller = {
            let (lifecycle, fan_outs) = (lifecycle.clone(), fan_outs.clone());
            thread::spawn(move || {
                let before = fan_outs.load(Ordering::SeqCst);
                lifecycle.end(Cause::Ended(Outcome::Cancelled));
                assert!(fan_outs.load(Ordering::SeqCst) > before);
                lifecycle.thread_ended(0);
            })
        };
        assert_eq!(
            lifecycle.wait_for_cause(None),
            Cause::Ended(Outcome::Cancelled)
        );
        assert!(lifecycle.join(None).is_empty());
        stopper.join().unwrap();
        canceller.join().unwrap();
        let after_join = fan_outs.load(Ordering::SeqCst);
        assert!(!lifecycle.end(Cause::Ended(Outcome::Cancelled)));
        assert_eq!(fan_outs.load(Ordering::SeqCst), after_join);
    });
}

/// The pool's hand-off: a worker whose keep-alive expires races a spawn
/// that counts on it. The spawn's job runs exactly once — on the idle
/// worker or on a new one — and no worker waits forever for a job that
/// will not come.
#[test]
fn keep_alive_expiring_while_a_spawn_counts_on_the_worker() {
    model(|| {
        let idle = Arc::new(IdleCount::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let (jobs_tx, jobs_rx) = channel::<()>();

        let worker = {
            let (idle, ran) = (idle.clone(), ran.clone());
            thread::spawn(move || {
                // Its guest thread is done: it is available.
                idle.announce();
                // Either a job arrives within the keep-alive...
                if jobs_rx.try_recv().is_ok() {
                    ran.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                // ...or it expires: leave unless a spawn counts on it.
                if idle.try_leave() {
                    return;
                }
                jobs_rx.recv().unwrap();
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let spawner = {
            let (idle, ran) = (idle.clone(), ran.clone());
            thread::spawn(move || {
                if idle.claim() {
                    jobs_tx.send(()).unwrap();
                } else {
                    // No idle worker: a new OS thread runs it.
                    ran.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        worker.join().unwrap();
        spawner.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    });
}

/// Two idle workers expire while one spawn claims one of them: one leaves,
/// the other takes the job.
#[test]
fn two_workers_expiring_while_a_spawn_claims_one() {
    model(|| {
        let idle = Arc::new(IdleCount::new());
        idle.announce();
        idle.announce();
        let ran = Arc::new(AtomicUsize::new(0));
        let (jobs_tx, jobs_rx) = channel::<()>();
        let jobs_rx = Arc::new(loom::sync::Mutex::new(jobs_rx));

        let spawner = {
            let (idle, ran) = (idle.clone(), ran.clone());
            thread::spawn(move || {
                if idle.claim() {
                    jobs_tx.send(()).unwrap();
                } else {
                    // Both left first: a new OS thread runs it.
                    ran.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (idle, ran, jobs_rx) = (idle.clone(), ran.clone(), jobs_rx.clone());
                thread::spawn(move || {
                    if idle.try_leave() {
                        return;
                    }
                    jobs_rx.lock().unwrap().recv().unwrap();
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        spawner.join().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    });
}
