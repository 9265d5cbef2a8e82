//! Telling every thread of a program to stop.
//!
//! A thread can be in one of three places when the program ends: running
//! wasm, parked in a wait, or blocked in a host (WASI) call. [`StopSignal`] is
//! the one flag they all look at, and it knows how to wake each kind of
//! sleeper: futures racing against it are woken through their wakers, and
//! host code sleeping on it is woken through a condition variable. Running
//! wasm is reached through the stop flag ([`super::interrupt`]).

use parking_lot::{Condvar, Mutex};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The error a guest thread unwinds with when the supervisor stops it.
///
/// It is never an outcome of its own: the cause that made the supervisor stop
/// the program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("thread stopped because the program is ending")
    }
}

impl std::error::Error for Stopped {}

/// A cheaply cloned handle to one program's stop flag. Crate-private: it is
/// one part of the stop fan-out, which [`super::lifecycle::Lifecycle::stop`]
/// does as a whole.
#[derive(Clone, Default)]
pub(crate) struct StopSignal {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    stopped: AtomicBool,
    sleepers: Mutex<Sleepers>,
    wake: Condvar,
}

#[derive(Default)]
struct Sleepers {
    next_id: u64,
    wakers: Vec<(u64, Waker)>,
}

impl fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopSignal")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl StopSignal {
    /// A new, not yet triggered signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the program is ending.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Sets the flag and wakes every sleeper. Idempotent.
    pub fn trigger(&self) {
        // Take the lock so that a sleeper cannot check the flag, miss the
        // store, and then park after the wake-up below has already happened.
        let wakers = {
            let mut sleepers = self.inner.sleepers.lock();
            self.inner.stopped.store(true, Ordering::SeqCst);
            self.inner.wake.notify_all();
            std::mem::take(&mut sleepers.wakers)
        };
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Sleeps for `duration` unless the signal fires first. Returns
    /// `Err(Stopped)` if it did.
    pub fn sleep(&self, duration: Duration) -> Result<(), Stopped> {
        let deadline = Instant::now().checked_add(duration);
        let mut sleepers = self.inner.sleepers.lock();
        loop {
            if self.is_stopped() {
                return Err(Stopped);
            }
            match deadline {
                Some(deadline) => {
                    if Instant::now() >= deadline {
                        return Ok(());
                    }
                    self.inner.wake.wait_until(&mut sleepers, deadline);
                }
                // A duration too long to represent is forever.
                None => self.inner.wake.wait(&mut sleepers),
            }
        }
    }

    /// Runs `fut` to completion unless the signal fires first, in which case
    /// `fut` is dropped (cancelling whatever it was blocked on) and
    /// `Err(Stopped)` is returned.
    pub async fn race<F: Future>(&self, fut: F) -> Result<F::Output, Stopped> {
        let mut fut = pin!(fut);
        let mut registered: Option<u64> = None;
        let result = std::future::poll_fn(|cx| {
            if self.is_stopped() {
                return Poll::Ready(Err(Stopped));
            }
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            let mut sleepers = self.inner.sleepers.lock();
            if self.is_stopped() {
                return Poll::Ready(Err(Stopped));
            }
            match registered {
                Some(id) => {
                    if let Some(slot) = sleepers.wakers.iter_mut().find(|(i, _)| *i == id) {
                        slot.1.clone_from(cx.waker());
                    } else {
                        sleepers.wakers.push((id, cx.waker().clone()));
                    }
                }
                None => {
                    let id = sleepers.next_id;
                    sleepers.next_id += 1;
                    sleepers.wakers.push((id, cx.waker().clone()));
                    registered = Some(id);
                }
            }
            Poll::Pending
        })
        .await;
        if let Some(id) = registered {
            self.inner.sleepers.lock().wakers.retain(|(i, _)| *i != id);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_returns_early_when_triggered() {
        let stop = StopSignal::new();
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            (s.sleep(Duration::from_secs(30)), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        stop.trigger();
        let (res, elapsed) = t.join().unwrap();
        assert_eq!(res, Err(Stopped));
        assert!(elapsed < Duration::from_secs(5));
    }

    #[test]
    fn sleep_completes_when_not_triggered() {
        let stop = StopSignal::new();
        assert_eq!(stop.sleep(Duration::from_millis(5)), Ok(()));
    }

    #[test]
    fn race_cancels_a_pending_future() {
        let stop = StopSignal::new();
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            wasmtime_wasi::runtime::in_tokio(s.race(std::future::pending::<()>()))
        });
        std::thread::sleep(Duration::from_millis(20));
        stop.trigger();
        assert_eq!(t.join().unwrap(), Err(Stopped));
        assert!(stop.inner.sleepers.lock().wakers.is_empty());
    }
}
