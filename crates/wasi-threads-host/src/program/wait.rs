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
//! # Why `parking_lot_core`
//!
//! Waiters park in `parking_lot_core`'s address-keyed table: one small lock
//! per hash bucket, taken only to compare-and-enqueue or to dequeue, and a
//! woken thread returns without taking any lock again. An earlier version
//! used one `Mutex<HashMap>` per program that every wait and notify of every
//! thread took, and that a woken waiter re-took through its condvar: with
//! more runnable threads than cores, a preempted lock holder stalled every
//! other thread of the program.
//!
//! The table is process-global and keyed by `usize`, so the key is the real
//! host address of the wasm cell (memory base + effective address). Shared
//! memories never move and two live memories never overlap, so different
//! programs never share a key, and no other user of `parking_lot_core` keys
//! on addresses inside a wasm linear memory.
//!
//! # Stopping
//!
//! The supervisor must wake every parked thread of *this* program, which the
//! global table cannot enumerate. Each waiter therefore records its key in a
//! per-program sharded registry before it parks and removes it afterwards
//! ([`Registry`]); [`ParkingLot::wake_all`] unparks every recorded key. The
//! registry is touched only by waiters (never by notifies) and is sharded by
//! key, so unrelated addresses never share a lock.

use super::stop::{StopSignal, Stopped};
use crate::rewrite::{HOST_MODULE, NOTIFY, WAIT32, WAIT64};
use parking_lot::Mutex;
use parking_lot_core::{DEFAULT_PARK_TOKEN, FilterOp, ParkResult, UnparkToken};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::{Linker, Result, SharedMemory, Trap};

/// The token a notify hands to the threads it wakes.
const NOTIFIED: UnparkToken = UnparkToken(1);
/// The token [`ParkingLot::wake_all`] hands to every thread it wakes.
const STOPPING: UnparkToken = UnparkToken(2);

/// Threads parked on addresses of one program's shared memory.
pub(crate) struct ParkingLot {
    stop: StopSignal,
    registry: Registry,
}

/// The keys this program's threads are parked on, with how many threads
/// each, sharded by key.
struct Registry {
    shards: [Shard; SHARDS],
}

const SHARDS: usize = 16;

/// One cache line per shard, so that waiters on different shards do not
/// bounce a line between cores.
#[repr(align(64))]
#[derive(Default)]
struct Shard {
    keys: Mutex<HashMap<usize, u32>>,
}

impl Registry {
    fn new() -> Self {
        Registry {
            shards: std::array::from_fn(|_| Shard::default()),
        }
    }

    fn shard(&self, key: usize) -> &Shard {
        // Cells are at least 4-byte aligned; neighbouring cells go to
        // different shards.
        &self.shards[(key >> 2) % SHARDS]
    }

    /// Records one more thread about to park on `key`, until the guard drops.
    fn enter(&self, key: usize) -> Registered<'_> {
        *self.shard(key).keys.lock().entry(key).or_insert(0) += 1;
        Registered {
            registry: self,
            key,
        }
    }
}

struct Registered<'a> {
    registry: &'a Registry,
    key: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut keys = self.registry.shard(self.key).keys.lock();
        if let Some(n) = keys.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

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
    pub(crate) fn new(stop: StopSignal) -> Self {
        ParkingLot {
            stop,
            registry: Registry::new(),
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

    fn wait(&self, cell: Cell, expected: Expected, timeout_ns: i64) -> Result<i32> {
        if self.stop.is_stopped() {
            return Err(Stopped.into());
        }
        if timeout_ns == 0 {
            return Ok(if holds(cell, expected) { 2 } else { 1 });
        }
        // A timeout too long to represent is no timeout.
        let deadline = u64::try_from(timeout_ns)
            .ok()
            .and_then(|ns| Instant::now().checked_add(Duration::from_nanos(ns)));
        // Recorded before parking: `wake_all` either sees the key (and its
        // unpark, under the bucket lock, comes after our enqueue or makes
        // `validate` below see the stop) or ran before we recorded it, after
        // the signal was set, so `validate` sees the stop.
        let _registered = self.registry.enter(cell.key);
        let mut stopped = false;
        // SAFETY: the key is the address of a cell of this program's wasm
        // memory, which nothing but this module parks on; `validate` runs
        // under the bucket lock and only does atomic loads (no panic, no
        // call into parking_lot); the other callbacks do nothing.
        let result = unsafe {
            parking_lot_core::park(
                cell.key,
                || {
                    stopped = self.stop.is_stopped();
                    !stopped && holds(cell, expected)
                },
                || {},
                |_, _| {},
                DEFAULT_PARK_TOKEN,
                deadline,
            )
        };
        match result {
            ParkResult::Unparked(STOPPING) => Err(Stopped.into()),
            ParkResult::Unparked(_) => Ok(0),
            ParkResult::Invalid if stopped => Err(Stopped.into()),
            ParkResult::Invalid => Ok(1),
            ParkResult::TimedOut => Ok(2),
        }
    }

    /// Wakes up to `count` threads parked on `cell`, oldest first; returns
    /// how many it woke.
    fn notify(&self, cell: Cell, count: u32) -> u32 {
        match count {
            0 => 0,
            // SAFETY (all three): the key is a cell of this program's memory
            // (see `wait`); the callbacks only count and never panic.
            1 => {
                let result = unsafe { parking_lot_core::unpark_one(cell.key, |_| NOTIFIED) };
                result.unparked_threads as u32
            }
            u32::MAX => {
                let woken = unsafe { parking_lot_core::unpark_all(cell.key, NOTIFIED) };
                woken as u32
            }
            _ => {
                let mut left = count;
                let filter = |_| {
                    if left == 0 {
                        FilterOp::Stop
                    } else {
                        left -= 1;
                        FilterOp::Unpark
                    }
                };
                unsafe { parking_lot_core::unpark_filter(cell.key, filter, |_| NOTIFIED) }
                    .unparked_threads as u32
            }
        }
    }

    /// Wakes every parked thread of this program; they see the stop signal
    /// and unwind. Call after triggering the signal.
    pub(crate) fn wake_all(&self) {
        for shard in &self.registry.shards {
            let keys = shard.keys.lock();
            for &key in keys.keys() {
                // SAFETY: a key recorded by `wait`: a cell of this program's
                // memory. Waiters never take a shard lock while holding a
                // bucket lock, so holding one here cannot deadlock.
                unsafe { parking_lot_core::unpark_all(key, STOPPING) };
            }
        }
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        self.registry
            .shards
            .iter()
            .map(|s| s.keys.lock().values().map(|&n| n as usize).sum::<usize>())
            .sum()
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
            Ok(l.notify(cell, count as u32) as i32)
        },
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
        let lot = Arc::new(ParkingLot::new(StopSignal::new()));
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
        let lot = ParkingLot::new(StopSignal::new());
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
        let lot = Arc::new(ParkingLot::new(stop.clone()));
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
        let lot_a = Arc::new(ParkingLot::new(stop_a.clone()));
        let lot_b = Arc::new(ParkingLot::new(StopSignal::new()));
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
        let lot = Arc::new(ParkingLot::new(StopSignal::new()));
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
        let lot = Arc::new(ParkingLot::new(StopSignal::new()));
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
