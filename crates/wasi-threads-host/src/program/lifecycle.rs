//! The life of one program, in one place.
//!
//! A program goes through these phases, and only forward:
//!
//! ```text
//!  Instantiating ──▶ Running ──▶ Stopping ──▶ Joined
//!        └───────────────────────────▲
//! ```
//!
//! - **Instantiating**: the main thread instantiates the module (data
//!   segments, start function) on its own OS thread, under the same deadline
//!   and cancel handle as `_start`.
//! - **Running**: `_start` runs; `thread-spawn` admits new threads.
//! - **Stopping**: the first cause was claimed — a thread's `proc_exit`,
//!   trap, host panic or (main thread) return, the timeout, or a cancel —
//!   right where it happened, by [`Lifecycle::end`]. The claim and the stop
//!   fan-out ([`Lifecycle::stop`]) are one step, so nothing can end the
//!   program without stopping every thread. No thread is admitted any more,
//!   so the set of threads to join is fixed.
//! - **Joined**: every admitted thread has ended, or the join deadline
//!   passed and the rest were abandoned (and reported).
//!
//! Every thread, main or spawned, is *admitted* before it can run guest code
//! and reports its end exactly once, from the thread-lifecycle function
//! (`WasiThreads`' `guest_thread`); `run` waits on this type for the cause
//! and then for the admitted threads. The state lives under one lock, so the
//! protocol is small enough to model-check exhaustively with `loom`
//! (`tests/lifecycle_model.rs`, built with `--cfg wasi_threads_loom`).

use super::outcome::Outcome;
use crate::sync::{Condvar, Mutex, lock};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Where a program is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The main thread is instantiating the module.
    Instantiating,
    /// `_start` is running.
    Running,
    /// A cause ended the program; its threads are being stopped.
    Stopping,
    /// Every thread was joined or abandoned.
    Joined,
}

/// What ended a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The program ran and ended so.
    Ended(Outcome),
    /// Instantiating the module trapped: the program never started.
    FailedToStart(String),
}

/// A spawn came after the program started to stop: the thread must not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// The state machine of one program.
pub struct Lifecycle {
    state: Mutex<State>,
    changed: Condvar,
    /// Makes the end visible to every thread (TID allocator, stop signal,
    /// parking lot, stop flag). Must be idempotent and cheap to repeat.
    fan_out: Box<dyn Fn() + Send + Sync>,
}

struct State {
    phase: Phase,
    cause: Option<Cause>,
    /// TIDs of admitted threads that have not ended, with repeats: a TID is
    /// released for reuse just before its old thread reports its end.
    live: Vec<u32>,
}

impl Lifecycle {
    /// A program about to instantiate; `fan_out` is its stop fan-out.
    pub fn new(fan_out: impl Fn() + Send + Sync + 'static) -> Self {
        Lifecycle {
            state: Mutex::new(State {
                phase: Phase::Instantiating,
                cause: None,
                live: Vec::new(),
            }),
            changed: Condvar::new(),
            fan_out: Box::new(fan_out),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        lock(&self.state).phase
    }

    /// Admits thread `tid`: from now on `run` waits for its
    /// [`thread_ended`](Self::thread_ended). Refused once the program stops.
    pub fn admit(&self, tid: u32) -> Result<(), Closed> {
        let mut state = lock(&self.state);
        if state.phase >= Phase::Stopping {
            return Err(Closed);
        }
        state.live.push(tid);
        Ok(())
    }

    /// An admitted thread has ended (its store is dropped).
    pub fn thread_ended(&self, tid: u32) {
        let mut state = lock(&self.state);
        if let Some(i) = state.live.iter().position(|&t| t == tid) {
            state.live.swap_remove(i);
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Instantiation finished: `_start` is about to run.
    pub fn started(&self) {
        let mut state = lock(&self.state);
        if state.phase == Phase::Instantiating {
            state.phase = Phase::Running;
        }
    }

    /// Claims `cause` as what ended the program, unless another cause was
    /// claimed first, and stops the program either way. Returns whether this
    /// cause was the first.
    pub fn end(&self, cause: Cause) -> bool {
        let first = {
            let mut state = lock(&self.state);
            if state.phase == Phase::Joined {
                return false;
            }
            let first = state.cause.is_none();
            if first {
                state.cause = Some(cause);
            }
            first
        };
        self.stop();
        first
    }

    /// The one way to stop a program: closes admission and fans the stop out
    /// to every thread. Always does all of it, however often it is called
    /// (a stop that finds the flag already set still wakes and ticks: the
    /// thread that set it may not have got that far yet); does nothing once
    /// the program is joined.
    pub fn stop(&self) {
        let first = {
            let mut state = lock(&self.state);
            match state.phase {
                Phase::Joined => return,
                Phase::Stopping => false,
                Phase::Instantiating | Phase::Running => {
                    state.phase = Phase::Stopping;
                    true
                }
            }
        };
        if first {
            // Outside the lock: a slow stderr must not hold up the others.
            log::debug!("stopping every thread");
        }
        (self.fan_out)();
        self.changed.notify_all();
    }

    /// Waits until a cause is claimed; at `deadline`, claims
    /// [`Outcome::TimedOut`] itself (losing to any cause claimed first).
    pub fn wait_for_cause(&self, deadline: Option<Instant>) -> Cause {
        let mut state = lock(&self.state);
        loop {
            if let Some(cause) = &state.cause {
                return cause.clone();
            }
            match deadline {
                None => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        drop(state);
                        self.end(Cause::Ended(Outcome::TimedOut));
                        state = lock(&self.state);
                        continue;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
            }
        }
    }

    /// After the cause: stops (again; idempotent), waits until every admitted
    /// thread has ended or `deadline` passes, and moves to
    /// [`Phase::Joined`]. Returns the TIDs of the threads still running,
    /// which the caller abandons.
    pub fn join(&self, deadline: Option<Instant>) -> Vec<u32> {
        self.stop();
        let mut state = lock(&self.state);
        while !state.live.is_empty() {
            match deadline {
                None => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0;
                }
            }
        }
        state.phase = Phase::Joined;
        let mut abandoned = std::mem::take(&mut state.live);
        abandoned.sort_unstable();
        abandoned
    }
}

/// Stops a running program from any thread: the one way an embedder stops a
/// program.
#[derive(Clone)]
pub struct CancelHandle {
    pub(crate) lifecycle: Arc<Lifecycle>,
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle")
            .field("phase", &self.lifecycle.phase())
            .finish()
    }
}

impl CancelHandle {
    /// Stops the program; its outcome is [`Outcome::Cancelled`] unless another
    /// cause came first. Every thread is told to stop whatever it is doing
    /// (running wasm, parked in a wait, blocked in a WASI call). Calling it
    /// again, or after another cause, is harmless; once `run` has returned it
    /// does nothing.
    pub fn cancel(&self) {
        self.lifecycle.end(Cause::Ended(Outcome::Cancelled));
    }
}
