//! `memory.atomic.wait` and `memory.atomic.notify`, done by the host so that
//! the supervisor can wake every parked thread (see [`crate::rewrite`]).
//!
//! Semantics follow the threads proposal exactly: a wait compares the value
//! at the address with the expected one and parks only if they are equal,
//! atomically with respect to notifies; it returns 0 when woken by a notify,
//! 1 when the value differed and 2 when its timeout (nanoseconds, negative
//! for none) ran out. A misaligned or out-of-bounds address traps, as the
//! native instructions do.
//!
//! # The parking table
//!
//! Each program has one table of parked threads, keyed by the cell's host
//! address, under one lock, taken to compare-and-enqueue, to dequeue, and
//! by a waiter that times out; a waiter sleeps in `std::thread::park` and is
//! woken by `Thread::unpark` with its state set under the lock. This is
//! Wasmtime's own `parking_spot` design (one table per shared memory), plus
//! a stop: [`ParkingLot::wake_all`] marks every queued waiter stopped and
//! wakes it, and no waiter enqueues after it.
//!
//! An earlier version parked in `parking_lot_core`'s global address table
//! (its waker woke with no lock held) with a per-program registry of keys
//! for the stop. With more runnable threads than cores it was slower: the
//! `std::sync::mpsc` pipeline under two CPU hogs on two cores took 1.5x
//! Wasmtime 36's time at the median (4.6 s vs 3.1 s over 9 interleaved
//! rounds; 1.06x with Wasmtime's own `atomic_wait32`/`atomic_notify` in its
//! place, so the difference was the parking), with twice the context
//! switches: `perf record -e sched:sched_switch` showed the waker preempted
//! on return from its futex wake by the thread it woke. Waking with the
//! table's lock held, as here, brings it to parity (0.9-1.05x) and is what
//! matters: the same table waking after the lock is released was as slow as
//! the old one, and 16 tables by address instead of one were in between. The
//! price is a wait/notify round trip between two threads on idle cores,
//! about twice as long as before (still half Wasmtime 36's).

use super::stop::{StopSignal, Stopped};
use crate::rewrite::{HOST_MODULE, NOTIFY, SCHED_POINT, SCHED_TICK, WAIT32, WAIT64};
use crate::schedule::Kind;
use crate::schedule::scheduler::{Halted, Scheduler};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};
use wasmtime::{Linker, Result, SharedMemory, Trap};

/// Threads parked on addresses of one program's shared memory.
pub(crate) struct ParkingLot {
    stop: StopSignal,
    table: Mutex<Table>,
    /// In the schedule mode, waits and notifies are the scheduler's: a
    /// waiter gives up its turn instead of parking its OS thread.
    scheduler: Option<Arc<Scheduler>>,
}

#[derive(Default)]
struct Table {
    /// The threads parked on each cell, oldest first.
    queues: HashMap<usize, VecDeque<Arc<Waiter>>>,
    /// Set by [`ParkingLot::wake_all`]: nobody parks any more.
    stopped: bool,
}

/// One parked thread. `state` is written under the table's lock, before
/// the thread is unparked; the thread reads it when it wakes.
struct Waiter {
    thread: Thread,
    state: AtomicU8,
}

const WAITING: u8 = 0;
const NOTIFIED: u8 = 1;
const STOPPING: u8 = 2;

#[derive(Clone, Copy)]
enum Expected {
    U32(u32),
    U64(u64),
}

impl Expected {
    #[cfg(test)]
    fn size(self) -> u64 {
        match self {
            Expected::U32(_) => 4,
            Expected::U64(_) => 8,
        }
    }
}

/// A checked cell of a shared memory: in bounds and aligned for its size.
#[derive(Clone, Copy)]
struct Cell {
    /// The host address of the cell: the parking key.
    key: usize,
}

/// The cell at effective address `ea`, checked as the native instructions
/// check it: misaligned traps first, then out of bounds.
fn cell(memory: &SharedMemory, ea: u64, size: u64) -> Result<Cell, Trap> {
    if !ea.is_multiple_of(size) {
        return Err(Trap::HeapMisaligned);
    }
    // `data()` reads the current length without the lock `data_size()`
    // takes, which every thread of the program would otherwise share.
    let data = memory.data();
    match ea.checked_add(size) {
        Some(end) if end <= data.len() as u64 => Ok(Cell {
            // In bounds, so `ea` fits in usize and the sum does not wrap.
            key: data.as_ptr() as usize + ea as usize,
        }),
        _ => Err(Trap::MemoryOutOfBounds),
    }
}

fn guest_cell(memory: &SharedMemory, addr: i32, offset: i32, size: u64) -> Result<Cell> {
    let ea = u64::from(addr as u32) + u64::from(offset as u32);
    // Wasmtime's native instructions trap out of bounds first when
    // `addr + offset` overflows the 32-bit index space, misaligned or not
    // (found by the differential fuzzer: tests/rewrite-corpus).
    if ea > u64::from(u32::MAX) {
        return Err(Trap::MemoryOutOfBounds.into());
    }
    Ok(cell(memory, ea, size)?)
}

/// Whether the cell holds `expected`.
fn holds(cell: Cell, expected: Expected) -> bool {
    match expected {
        Expected::U32(v) => {
            // SAFETY: `cell` checked that `key..key + 4` is inside the
            // memory and 4-byte aligned; a shared memory never moves or
            // shrinks, and wasm itself accesses it concurrently only through
            // atomics or racy plain accesses, which an atomic load tolerates.
            let atomic = unsafe { AtomicU32::from_ptr(cell.key as *mut u32) };
            atomic.load(Ordering::SeqCst) == v
        }
        Expected::U64(v) => {
            // SAFETY: as above, with `key..key + 8` in bounds and 8-byte
            // aligned.
            let atomic = unsafe { AtomicU64::from_ptr(cell.key as *mut u64) };
            atomic.load(Ordering::SeqCst) == v
        }
    }
}

impl ParkingLot {
    pub(crate) fn new(stop: StopSignal, scheduler: Option<Arc<Scheduler>>) -> Self {
        ParkingLot {
            stop,
            table: Mutex::default(),
            scheduler,
        }
    }

    /// A handle for the embedder to notify waiters on `memory`, the memory
    /// this lot's waits are on.
    pub(crate) fn notifier(self: &Arc<Self>, memory: &SharedMemory) -> Notifier {
        Notifier {
            lot: self.clone(),
            memory: memory.clone(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still
        // consistent (every update is one push or pop).
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self, cell: Cell, expected: Expected, timeout_ns: i64) -> Result<i32> {
        if self.stop.is_stopped() {
            return Err(Stopped.into());
        }
        if let Some(scheduler) = &self.scheduler {
            return match scheduler.wait(cell.key, || holds(cell, expected), timeout_ns) {
                Ok(result) => Ok(result as i32),
                Err(Halted) => Err(Stopped.into()),
            };
        }
        if timeout_ns == 0 {
            return Ok(if holds(cell, expected) { 2 } else { 1 });
        }
        // A timeout too long to represent is no timeout.
        let deadline = u64::try_from(timeout_ns)
            .ok()
            .and_then(|ns| Instant::now().checked_add(Duration::from_nanos(ns)));
        let waiter = Arc::new(Waiter {
            thread: std::thread::current(),
            state: AtomicU8::new(WAITING),
        });
        {
            // The compare and the enqueue are one step under the lock that
            // every notify of this memory takes: a notify after the store
            // that changed the value finds this waiter queued, or the
            // compare sees the new value.
            let mut table = self.table();
            if table.stopped {
                return Err(Stopped.into());
            }
            if !holds(cell, expected) {
                return Ok(1);
            }
            let queue = table.queues.entry(cell.key).or_default();
            queue.push_back(waiter.clone());
        }
        loop {
            match waiter.state.load(Ordering::Acquire) {
                NOTIFIED => return Ok(0),
                STOPPING => return Err(Stopped.into()),
                _ => {}
            }
            // `park` may return without an unpark (spuriously, or for an
            // unpark meant for an earlier wait): the state decides.
            match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return self.time_out(cell, &waiter);
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
        }
    }

    /// Leaves the queue of a waiter whose time ran out, unless a notify or
    /// the stop dequeued it first (then that is its result).
    fn time_out(&self, cell: Cell, waiter: &Arc<Waiter>) -> Result<i32> {
        let mut table = self.table();
        match waiter.state.load(Ordering::Acquire) {
            NOTIFIED => return Ok(0),
            STOPPING => return Err(Stopped.into()),
            _ => {}
        }
        if let Some(queue) = table.queues.get_mut(&cell.key) {
            queue.retain(|w| !Arc::ptr_eq(w, waiter));
            if queue.is_empty() {
                table.queues.remove(&cell.key);
            }
        }
        Ok(2)
    }

    /// Wakes up to `count` threads parked on `cell`, oldest first; returns
    /// how many it woke.
    fn notify(&self, cell: Cell, count: u32) -> u32 {
        if count == 0 {
            return 0;
        }
        if let Some(scheduler) = &self.scheduler {
            return scheduler.notify(cell.key, count);
        }
        let mut table = self.table();
        let Some(queue) = table.queues.get_mut(&cell.key) else {
            return 0;
        };
        // Each waiter is woken with the lock held, as Wasmtime's
        // `parking_spot` does. Waking it after the lock is released makes a
        // round trip between two threads on idle cores twice as fast, but
        // with more runnable threads than cores it made the woken thread
        // preempt its waker mid-stride far more often (twice the context
        // switches; the mpsc pipeline under CPU hogs 1.5x slower): see the
        // module docs.
        let mut woken = 0;
        while woken < count {
            let Some(waiter) = queue.pop_front() else {
                break;
            };
            waiter.state.store(NOTIFIED, Ordering::Release);
            waiter.thread.unpark();
            woken += 1;
        }
        if queue.is_empty() {
            table.queues.remove(&cell.key);
        }
        woken
    }

    /// Wakes every parked thread of this program; they see the stop signal
    /// and unwind. Call after triggering the signal.
    pub(crate) fn wake_all(&self) {
        let mut table = self.table();
        table.stopped = true;
        for (_, queue) in table.queues.drain() {
            for waiter in queue {
                waiter.state.store(STOPPING, Ordering::Release);
                waiter.thread.unpark();
            }
        }
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        self.table().queues.values().map(VecDeque::len).sum()
    }
}

/// Wakes guest threads parked in `memory.atomic.wait32`/`wait64` on a
/// program's shared memory, from any thread, including from inside a host
/// function the guest called.
///
/// [`Notifier::notify`] has the semantics of the guest's own
/// `memory.atomic.notify`. Use it rather than
/// [`SharedMemory::atomic_notify`]: the host routes the guest's waits
/// through its own parking lot (so that it can stop parked threads), and
/// Wasmtime's `atomic_notify` does not reach those waits.
///
/// Cheap to clone; it keeps the program's memory alive, not its threads.
#[derive(Clone)]
pub struct Notifier {
    lot: Arc<ParkingLot>,
    memory: SharedMemory,
}

impl Notifier {
    /// Wakes up to `count` threads waiting on the guest address `address`
    /// (the effective address, as a guest pointer), oldest first, and returns
    /// how many it woke, as `memory.atomic.notify` does.
    ///
    /// A guest that stores a value and then waits for it to change expects
    /// the notifier to store the new value *before* notifying (for example
    /// with an atomic store through [`SharedMemory::data`]); a notify with no
    /// waiter is not remembered.
    ///
    /// # Errors
    ///
    /// [`Trap::HeapMisaligned`] if `address` is not a multiple of 4, and
    /// [`Trap::MemoryOutOfBounds`] if `address + 4` is past the memory's
    /// current size, as the instruction would trap.
    pub fn notify(&self, address: u64, count: u32) -> Result<u32> {
        let cell = cell(&self.memory, address, 4)?;
        Ok(self.lot.notify(cell, count))
    }

    /// The shared memory whose waiters this notifies.
    pub fn memory(&self) -> &SharedMemory {
        &self.memory
    }
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
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
            let cell = guest_cell(&m, addr, offset, 4)?;
            l.wait(cell, Expected::U32(expected as u32), timeout)
        },
    )?;
    let (l, m) = (lot.clone(), memory.clone());
    linker.func_wrap(
        HOST_MODULE,
        WAIT64,
        move |addr: i32, expected: i64, timeout: i64, offset: i32| {
            let cell = guest_cell(&m, addr, offset, 8)?;
            l.wait(cell, Expected::U64(expected as u64), timeout)
        },
    )?;
    let (l, m) = (lot.clone(), memory.clone());
    linker.func_wrap(
        HOST_MODULE,
        NOTIFY,
        move |addr: i32, count: i32, offset: i32| -> Result<i32> {
            let cell = guest_cell(&m, addr, offset, 4)?;
            // The count is unsigned; the result is at most the number of
            // threads, far below i32::MAX.
            let woken = l.notify(cell, count as u32) as i32;
            if let Some(scheduler) = &l.scheduler {
                // After the notify, so that a woken thread may run next.
                scheduler.point(Kind::Notify).map_err(|Halted| Stopped)?;
            }
            Ok(woken)
        },
    )?;
    Ok(())
}

/// Defines the scheduling points a module compiled for the schedule mode
/// imports: `sched.point(kind)` and `sched.tick() -> checks until the next`.
pub(crate) fn add_schedule_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    scheduler: &Arc<Scheduler>,
) -> Result<()> {
    let s = scheduler.clone();
    linker.func_wrap(HOST_MODULE, SCHED_POINT, move |kind: i32| -> Result<()> {
        s.point(Kind::from_guest(kind)).map_err(|Halted| Stopped)?;
        Ok(())
    })?;
    let s = scheduler.clone();
    linker.func_wrap(HOST_MODULE, SCHED_TICK, move || -> Result<i32> {
        s.point(Kind::Tick).map_err(|Halted| Stopped)?;
        Ok(crate::schedule::TICK_CHECKS)
    })?;
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

    impl ParkingLot {
        fn wait_at(
            &self,
            memory: &SharedMemory,
            addr: i32,
            offset: i32,
            expected: Expected,
            timeout_ns: i64,
        ) -> Result<i32> {
            let cell = guest_cell(memory, addr, offset, expected.size())?;
            self.wait(cell, expected, timeout_ns)
        }

        fn notify_at(&self, memory: &SharedMemory, addr: i32, offset: i32, count: u32) -> u32 {
            self.notify(guest_cell(memory, addr, offset, 4).unwrap(), count)
        }
    }

    /// Notifies `addr` once per `count` until that many threads were woken:
    /// a registered waiter may not have enqueued itself yet.
    fn notify_until(lot: &ParkingLot, memory: &SharedMemory, addr: i32, count: u32) {
        let mut woken = 0;
        while woken < count {
            woken += lot.notify_at(memory, addr, 0, count - woken);
            std::thread::yield_now();
        }
    }

    fn store(memory: &SharedMemory, addr: usize, value: u32) {
        let cell = memory.data()[addr].get();
        // SAFETY: the tests use 4-byte aligned addresses in bounds.
        unsafe { AtomicU32::from_ptr(cell.cast()) }.store(value, Ordering::SeqCst);
    }

    #[test]
    fn notify_wakes_exactly_as_many_as_asked() {
        let memory = memory();
        let lot = Arc::new(ParkingLot::new(StopSignal::new(), None));
        let woken = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (lot, memory, woken) = (lot.clone(), memory.clone(), woken.clone());
                std::thread::spawn(move || {
                    let r = lot.wait_at(&memory, 16, 0, Expected::U32(0), -1).unwrap();
                    assert_eq!(r, 0);
                    woken.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        while lot.registered() < 4 {
            std::thread::yield_now();
        }
        // Each notify wakes at most what is asked; three in total.
        notify_until(&lot, &memory, 16, 3);
        while woken.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(woken.load(Ordering::SeqCst), 3);
        assert_eq!(lot.registered(), 1);
        // memarg offset: 12 + 4 is the same address; one left to wake.
        let mut n = 0;
        while n == 0 {
            n = lot.notify_at(&memory, 12, 4, 10);
        }
        assert_eq!(n, 1);
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(lot.registered(), 0);
        assert_eq!(lot.notify_at(&memory, 16, 0, u32::MAX), 0);
    }

    #[test]
    fn results_for_mismatch_timeout_and_traps() {
        let memory = memory();
        let lot = ParkingLot::new(StopSignal::new(), None);
        store(&memory, 64, 7);
        assert_eq!(
            lot.wait_at(&memory, 64, 0, Expected::U32(6), -1).unwrap(),
            1
        );
        assert_eq!(lot.wait_at(&memory, 64, 0, Expected::U32(7), 0).unwrap(), 2);
        assert_eq!(
            lot.wait_at(&memory, 64, 0, Expected::U32(7), 1_000_000)
                .unwrap(),
            2
        );
        assert_eq!(lot.wait_at(&memory, 64, 0, Expected::U64(7), 0).unwrap(), 2);
        assert_eq!(lot.wait_at(&memory, 64, 0, Expected::U64(8), 0).unwrap(), 1);
        let trap = |r: Result<i32>| *r.unwrap_err().downcast_ref::<Trap>().unwrap();
        assert_eq!(
            trap(lot.wait_at(&memory, 66, 0, Expected::U32(0), -1)),
            Trap::HeapMisaligned
        );
        assert_eq!(
            trap(lot.wait_at(&memory, 4, 0, Expected::U64(0), -1)),
            Trap::HeapMisaligned
        );
        assert_eq!(
            trap(lot.wait_at(&memory, 65536, 0, Expected::U32(0), -1)),
            Trap::MemoryOutOfBounds
        );
        assert_eq!(
            trap(lot.wait_at(&memory, -8, 8, Expected::U64(0), -1)),
            Trap::MemoryOutOfBounds
        );
        assert_eq!(lot.registered(), 0);
    }

    #[test]
    fn stop_wakes_every_waiter_with_stopped() {
        let memory = memory();
        let stop = StopSignal::new();
        let lot = Arc::new(ParkingLot::new(stop.clone(), None));
        let waiters: Vec<_> = (0..8)
            .map(|i| {
                let (lot, memory) = (lot.clone(), memory.clone());
                // Two threads per address, on four addresses.
                std::thread::spawn(move || {
                    lot.wait_at(&memory, 8 * (i / 2), 0, Expected::U64(0), -1)
                })
            })
            .collect();
        while lot.registered() < 8 {
            std::thread::yield_now();
        }
        stop.trigger();
        lot.wake_all();
        for w in waiters {
            let err = w.join().unwrap().unwrap_err();
            assert!(err.downcast_ref::<Stopped>().is_some());
        }
        assert_eq!(lot.registered(), 0);
        // Once stopped, a wait returns at once.
        let err = lot
            .wait_at(&memory, 0, 0, Expected::U32(0), -1)
            .unwrap_err();
        assert!(err.downcast_ref::<Stopped>().is_some());
    }

    #[test]
    fn programs_on_different_memories_do_not_wake_each_other() {
        let (a, b) = (memory(), memory());
        let stop_a = StopSignal::new();
        let lot_a = Arc::new(ParkingLot::new(stop_a.clone(), None));
        let lot_b = Arc::new(ParkingLot::new(StopSignal::new(), None));
        let (l, m) = (lot_b.clone(), b.clone());
        let waiter = std::thread::spawn(move || l.wait_at(&m, 32, 0, Expected::U32(0), -1));
        while lot_b.registered() < 1 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(10));
        // Same guest address, other program: neither a notify nor a stop
        // reaches the waiter.
        assert_eq!(lot_a.notify_at(&a, 32, 0, u32::MAX), 0);
        stop_a.trigger();
        lot_a.wake_all();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        notify_until(&lot_b, &b, 32, 1);
        assert_eq!(waiter.join().unwrap().unwrap(), 0);
    }

    #[test]
    fn a_wait_racing_a_store_and_notify_never_sleeps_forever() {
        let memory = memory();
        let lot = Arc::new(ParkingLot::new(StopSignal::new(), None));
        for round in 0..200u32 {
            let (l, m) = (lot.clone(), memory.clone());
            let waiter = std::thread::spawn(move || {
                l.wait_at(&m, 32, 0, Expected::U32(round), 5_000_000_000)
            });
            // The guest protocol: store the new value, then notify.
            store(&memory, 32, round + 1);
            lot.notify_at(&memory, 32, 0, 1);
            // 0 (woken) or 1 (saw the new value); never 2 (timed out).
            let r = waiter.join().unwrap().unwrap();
            assert!(r == 0 || r == 1, "round {round}: {r}");
        }
    }

    #[test]
    fn an_embedder_notifier_wakes_a_parked_guest_waiter() {
        let memory = memory();
        let lot = Arc::new(ParkingLot::new(StopSignal::new(), None));
        let notifier = lot.notifier(&memory);
        let (l, m) = (lot.clone(), memory.clone());
        let waiter = std::thread::spawn(move || l.wait_at(&m, 40, 0, Expected::U32(0), -1));
        while lot.registered() < 1 {
            std::thread::yield_now();
        }
        // Wasmtime's own notify does not reach the host's parking lot.
        assert_eq!(memory.atomic_notify(40, 1).unwrap(), 0);
        let from_elsewhere = notifier.clone();
        let woken = std::thread::spawn(move || {
            let mut woken = 0;
            while woken == 0 {
                woken = from_elsewhere.notify(40, 1).unwrap();
                std::thread::yield_now();
            }
            woken
        })
        .join()
        .unwrap();
        assert_eq!(woken, 1);
        assert_eq!(waiter.join().unwrap().unwrap(), 0);
        assert_eq!(notifier.notify(40, 1).unwrap(), 0);
        let trap = |r: Result<u32>| *r.unwrap_err().downcast_ref::<Trap>().unwrap();
        assert_eq!(trap(notifier.notify(42, 1)), Trap::HeapMisaligned);
        assert_eq!(trap(notifier.notify(65536, 1)), Trap::MemoryOutOfBounds);
        assert_eq!(
            trap(notifier.notify(u64::MAX - 3, 1)),
            Trap::MemoryOutOfBounds
        );
    }
}
