//! `memory.atomic.wait` and `memory.atomic.notify`, done by the host so that
//! the supervisor can wake every parked thread (see [`crate::rewrite`]).
//!
//! Semantics follow the threads proposal exactly: a wait compares the value
//! at the address with the expected one and parks only if they are equal,
//! atomically with respect to notifies (both happen under one lock); it
//! returns 0 when woken by a notify, 1 when the value differed and 2 when its
//! timeout (nanoseconds, negative for none) ran out. A misaligned or
//! out-of-bounds address traps, as the native instructions do.

use crate::rewrite::{HOST_MODULE, NOTIFY, WAIT32, WAIT64};
use crate::stop::{StopSignal, Stopped};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::{Linker, Result, SharedMemory, Trap};

/// Threads parked on addresses of one shared memory.
pub(crate) struct ParkingLot {
    queues: Mutex<HashMap<u64, VecDeque<Arc<Waiter>>>>,
    stop: StopSignal,
}

struct Waiter {
    /// Written under the lot's lock only.
    woken: std::sync::atomic::AtomicBool,
    cv: Condvar,
}

#[derive(Clone, Copy)]
enum Expected {
    U32(u32),
    U64(u64),
}

impl Expected {
    fn size(self) -> u64 {
        match self {
            Expected::U32(_) => 4,
            Expected::U64(_) => 8,
        }
    }
}

/// The effective address of an atomic access of `size` bytes, checked as the
/// native instruction checks it.
fn effective_address(memory: &SharedMemory, addr: i32, offset: i32, size: u64) -> Result<u64> {
    let ea = u64::from(addr as u32) + u64::from(offset as u32);
    if ea % size != 0 {
        return Err(Trap::HeapMisaligned.into());
    }
    if ea + size > memory.data_size() as u64 {
        return Err(Trap::MemoryOutOfBounds.into());
    }
    Ok(ea)
}

impl ParkingLot {
    pub(crate) fn new(stop: StopSignal) -> Self {
        ParkingLot {
            queues: Mutex::new(HashMap::new()),
            stop,
        }
    }

    fn load(memory: &SharedMemory, ea: u64, expected: Expected) -> bool {
        let cell = memory.data()[ea as usize].get();
        match expected {
            Expected::U32(v) => {
                // SAFETY: `effective_address` checked that `ea..ea + 4` is
                // inside the memory and 4-byte aligned; a shared memory never
                // moves or shrinks, and wasm itself accesses it concurrently
                // only through atomics or racy plain accesses, which an atomic
                // load tolerates.
                let atomic = unsafe { AtomicU32::from_ptr(cell.cast()) };
                atomic.load(Ordering::SeqCst) == v
            }
            Expected::U64(v) => {
                // SAFETY: as above, with `ea..ea + 8` in bounds and 8-byte
                // aligned.
                let atomic = unsafe { AtomicU64::from_ptr(cell.cast()) };
                atomic.load(Ordering::SeqCst) == v
            }
        }
    }

    fn wait(
        &self,
        memory: &SharedMemory,
        addr: i32,
        offset: i32,
        expected: Expected,
        timeout_ns: i64,
    ) -> Result<i32> {
        let ea = effective_address(memory, addr, offset, expected.size())?;
        let deadline = u64::try_from(timeout_ns)
            .ok()
            .and_then(|ns| Instant::now().checked_add(Duration::from_nanos(ns)));
        let mut queues = self.queues.lock();
        if self.stop.is_stopped() {
            return Err(Stopped.into());
        }
        if !Self::load(memory, ea, expected) {
            return Ok(1);
        }
        if timeout_ns == 0 {
            return Ok(2);
        }
        let me = Arc::new(Waiter {
            woken: Default::default(),
            cv: Condvar::new(),
        });
        queues.entry(ea).or_default().push_back(me.clone());
        loop {
            if me.woken.load(Ordering::Relaxed) {
                return Ok(0);
            }
            let stopped = self.stop.is_stopped();
            let timed_out = match deadline {
                Some(deadline) if !stopped => me.cv.wait_until(&mut queues, deadline).timed_out(),
                None if !stopped => {
                    me.cv.wait(&mut queues);
                    false
                }
                _ => false,
            };
            if me.woken.load(Ordering::Relaxed) {
                return Ok(0);
            }
            if stopped || timed_out {
                if let Some(queue) = queues.get_mut(&ea) {
                    queue.retain(|w| !Arc::ptr_eq(w, &me));
                    if queue.is_empty() {
                        queues.remove(&ea);
                    }
                }
                return if stopped { Err(Stopped.into()) } else { Ok(2) };
            }
        }
    }

    fn notify(&self, memory: &SharedMemory, addr: i32, offset: i32, count: u32) -> Result<i32> {
        let ea = effective_address(memory, addr, offset, 4)?;
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(&ea) else {
            return Ok(0);
        };
        let mut woken = 0u32;
        while woken < count {
            let Some(waiter) = queue.pop_front() else {
                break;
            };
            waiter.woken.store(true, Ordering::Relaxed);
            waiter.cv.notify_one();
            woken += 1;
        }
        if queue.is_empty() {
            queues.remove(&ea);
        }
        Ok(woken as i32)
    }

    /// Wakes every parked thread; they see the stop signal and unwind. Call
    /// after triggering the signal.
    pub(crate) fn wake_all(&self) {
        let queues = self.queues.lock();
        for waiter in queues.values().flatten() {
            waiter.cv.notify_one();
        }
    }
}

/// Defines the host functions a rewritten module imports.
pub(crate) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    lot: &Arc<ParkingLot>,
    memory: &SharedMemory,
) -> Result<()> {
    let (l, m) = (lot.clone(), memory.clone());
    linker.func_wrap(
        HOST_MODULE,
        WAIT32,
        move |addr: i32, expected: i32, timeout: i64, offset: i32| {
            l.wait(&m, addr, offset, Expected::U32(expected as u32), timeout)
        },
    )?;
    let (l, m) = (lot.clone(), memory.clone());
    linker.func_wrap(
        HOST_MODULE,
        WAIT64,
        move |addr: i32, expected: i64, timeout: i64, offset: i32| {
            l.wait(&m, addr, offset, Expected::U64(expected as u64), timeout)
        },
    )?;
    let (l, m) = (lot.clone(), memory.clone());
    linker.func_wrap(
        HOST_MODULE,
        NOTIFY,
        move |addr: i32, count: i32, offset: i32| l.notify(&m, addr, offset, count as u32),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn memory() -> SharedMemory {
        let engine = wasmtime::Engine::new(&crate::engine_config()).unwrap();
        SharedMemory::new(&engine, wasmtime::MemoryType::shared(1, 1)).unwrap()
    }

    #[test]
    fn notify_wakes_exactly_as_many_as_asked() {
        let memory = memory();
        let lot = Arc::new(ParkingLot::new(StopSignal::new()));
        let woken = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (lot, memory, woken) = (lot.clone(), memory.clone(), woken.clone());
                std::thread::spawn(move || {
                    let r = lot.wait(&memory, 16, 0, Expected::U32(0), -1).unwrap();
                    assert_eq!(r, 0);
                    woken.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        // Wait until all four are parked.
        while lot.queues.lock().get(&16).map_or(0, |q| q.len()) < 4 {
            std::thread::yield_now();
        }
        assert_eq!(lot.notify(&memory, 16, 0, 3).unwrap(), 3);
        while woken.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(woken.load(Ordering::SeqCst), 3);
        // memarg offset: 12 + 4 is the same address.
        assert_eq!(lot.notify(&memory, 12, 4, 10).unwrap(), 1);
        for w in waiters {
            w.join().unwrap();
        }
        assert!(lot.queues.lock().is_empty());
    }

    #[test]
    fn stop_wakes_every_waiter_with_stopped() {
        let memory = memory();
        let stop = StopSignal::new();
        let lot = Arc::new(ParkingLot::new(stop.clone()));
        let waiters: Vec<_> = (0..8)
            .map(|i| {
                let (lot, memory) = (lot.clone(), memory.clone());
                std::thread::spawn(move || lot.wait(&memory, 8 * i, 0, Expected::U64(0), -1))
            })
            .collect();
        while lot.queues.lock().values().map(|q| q.len()).sum::<usize>() < 8 {
            std::thread::yield_now();
        }
        stop.trigger();
        lot.wake_all();
        for w in waiters {
            let err = w.join().unwrap().unwrap_err();
            assert!(err.downcast_ref::<Stopped>().is_some());
        }
    }

    #[test]
    fn a_wait_racing_a_store_and_notify_never_sleeps_forever() {
        let memory = memory();
        let lot = Arc::new(ParkingLot::new(StopSignal::new()));
        for round in 0..200u32 {
            let (l, m) = (lot.clone(), memory.clone());
            let waiter =
                std::thread::spawn(move || l.wait(&m, 32, 0, Expected::U32(round), 5_000_000_000));
            // The guest protocol: store the new value, then notify.
            let cell = memory.data()[32].get();
            // SAFETY: address 32 is in bounds and 4-byte aligned.
            unsafe { AtomicU32::from_ptr(cell.cast()) }.store(round + 1, Ordering::SeqCst);
            lot.notify(&memory, 32, 0, 1).unwrap();
            // 0 (woken) or 1 (saw the new value); never 2 (timed out).
            let r = waiter.join().unwrap().unwrap();
            assert!(r == 0 || r == 1, "round {round}: {r}");
        }
    }
}
