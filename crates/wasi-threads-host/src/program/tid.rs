//! Thread ids for spawned threads.
//!
//! The wasi-threads ABI gives every spawned thread a TID in `1..=0x1FFFFFFF`
//! (the top bits are reserved so that guests can use them as flags, and a
//! negative return from `thread-spawn` means failure). A TID must never equal
//! the TID of a thread that is still alive, and TIDs are reused once their
//! thread has ended: a guest churning through millions of short-lived threads
//! must never run out.

use parking_lot::{Condvar, Mutex};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long a spawn at the limit waits for a finishing thread's TID: a guest
/// can see a thread as finished (its join returns) a moment before the
/// thread's wasm has returned and its TID is free, and spawning right after
/// a join must not fail for that.
const LIMIT_GRACE: Duration = Duration::from_millis(20);

/// The largest TID the wasi-threads ABI allows.
pub const MAX_TID: u32 = 0x1FFF_FFFF;

/// Hands out TIDs to spawned threads, enforcing the live-thread limit.
///
/// Allocation walks forward from the last TID handed out (like Linux PIDs),
/// so a TID is not reused while fresh ones remain; after wrapping around, TIDs
/// of live threads are skipped.
#[derive(Debug)]
pub(crate) struct TidAllocator {
    state: Mutex<State>,
    released: Condvar,
    limit: u32,
}

#[derive(Debug)]
struct State {
    next: u32,
    live: HashSet<u32>,
    closed: bool,
    allocated: u64,
}

/// Why [`TidAllocator::allocate`] gave no TID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllocError {
    /// As many threads as the limit allows are alive.
    LimitReached,
    /// The program is ending: no thread may start any more.
    Closed,
}

impl TidAllocator {
    /// An allocator that allows at most `limit` live threads at once (capped
    /// at [`MAX_TID`]).
    pub fn new(limit: u32) -> Self {
        TidAllocator {
            state: Mutex::new(State {
                next: 1,
                live: HashSet::new(),
                closed: false,
                allocated: 0,
            }),
            released: Condvar::new(),
            limit: limit.min(MAX_TID),
        }
    }

    /// Takes a TID for a new thread.
    pub fn allocate(&self) -> Result<u32, AllocError> {
        let mut state = self.state.lock();
        let deadline = Instant::now() + LIMIT_GRACE;
        loop {
            if state.closed {
                return Err(AllocError::Closed);
            }
            if state.live.len() < self.limit as usize {
                break;
            }
            if self.released.wait_until(&mut state, deadline).timed_out()
                && state.live.len() >= self.limit as usize
            {
                return Err(if state.closed {
                    AllocError::Closed
                } else {
                    AllocError::LimitReached
                });
            }
        }
        // Terminates: fewer than MAX_TID TIDs are live, so a free one exists.
        loop {
            let tid = state.next;
            state.next = if tid == MAX_TID { 1 } else { tid + 1 };
            if state.live.insert(tid) {
                state.allocated += 1;
                return Ok(tid);
            }
        }
    }

    /// Gives back a TID whose thread has finished running guest code.
    pub fn release(&self, tid: u32) {
        self.state.lock().live.remove(&tid);
        self.released.notify_one();
    }

    /// Refuses every later allocation. Returns with the allocator closed, so
    /// that once this returns, the set of threads that will ever exist is
    /// fixed: the supervisor relies on this to know whom to join. Returns how
    /// many TIDs were ever handed out.
    pub fn close(&self) -> u64 {
        let mut state = self.state.lock();
        state.closed = true;
        self.released.notify_all();
        state.allocated
    }

    /// How many threads currently hold a TID.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.state.lock().live.len()
    }

    /// The live-thread limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tids_start_at_one_and_respect_the_limit() {
        let tids = TidAllocator::new(3);
        assert_eq!(tids.allocate(), Ok(1));
        assert_eq!(tids.allocate(), Ok(2));
        assert_eq!(tids.allocate(), Ok(3));
        assert_eq!(tids.allocate(), Err(AllocError::LimitReached));
        tids.release(2);
        assert_eq!(tids.allocate(), Ok(4));
        assert_eq!(tids.live(), 3);
    }

    #[test]
    fn wraps_around_and_skips_live_tids() {
        let tids = TidAllocator::new(10);
        tids.state.lock().next = MAX_TID - 1;
        assert_eq!(tids.allocate(), Ok(MAX_TID - 1));
        assert_eq!(tids.allocate(), Ok(MAX_TID));
        assert_eq!(tids.allocate(), Ok(1));
        // 2 is live: after the next wrap it must be skipped.
        assert_eq!(tids.allocate(), Ok(2));
        tids.release(1);
        tids.state.lock().next = MAX_TID;
        tids.release(MAX_TID);
        assert_eq!(tids.allocate(), Ok(MAX_TID));
        assert_eq!(tids.allocate(), Ok(1));
        assert_eq!(tids.allocate(), Ok(3));
    }

    #[test]
    fn closed_allocator_refuses() {
        let tids = TidAllocator::new(10);
        tids.allocate().unwrap();
        assert_eq!(tids.close(), 1);
        assert_eq!(tids.allocate(), Err(AllocError::Closed));
    }

    #[test]
    fn concurrent_allocations_are_unique() {
        let tids = std::sync::Arc::new(TidAllocator::new(MAX_TID));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let tids = tids.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .map(|_| tids.allocate().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4000);
        assert!(all.iter().all(|&t| (1..=MAX_TID).contains(&t)));
    }
}
