//! Guest threads: `wasi` `thread-spawn`, and the one function every guest
//! thread — the main thread and every spawned one — runs from start to end
//! ([`Shared::guest_thread`]).

use super::interrupt::{self, StopFlag};
use super::lifecycle::{Cause, Lifecycle, Phase};
use super::outcome::{ThreadEvent, ThreadExit, TrapInfo};
use super::pool::{Finishing, Job, WorkerPool};
use super::stop::{StopSignal, Stopped};
use super::tid::{AllocError, TidAllocator};
use crate::errno::{EAGAIN, ENOSYS};
use crate::rewrite::OffsetMap;
use crate::schedule::Kind;
use crate::schedule::scheduler::{Halted, Scheduler};
use crossbeam_channel::Sender;
use parking_lot::Mutex;
use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock, Weak};
use wasmtime::{
    Caller, Engine, ExternType, InstancePre, Linker, Module, Result, Store, Trap, ValType,
    WasmBacktrace,
};

/// Ticks from now to a program store's default epoch deadline: never, in
/// practice, and far from overflowing the engine's epoch counter.
const EPOCH_DEADLINE_NEVER: u64 = 1 << 62;

/// Per-store setup an embedder wants on every store of the program (limits,
/// fuel, ...), spawned threads' stores included.
pub(crate) type StoreSetup<T> = Arc<dyn Fn(&mut Store<T>) -> Result<()> + Send + Sync>;

/// Everything the threads of one program share. Spawned threads hold it
/// strongly; the `thread-spawn` function in the linker only weakly, since the
/// linker's definitions end up inside `pre` and would otherwise keep it alive
/// forever.
pub(crate) struct Shared<T: 'static> {
    pub engine: Engine,
    pub module: Module,
    pub pre: OnceLock<InstancePre<T>>,
    pub tids: Arc<TidAllocator>,
    pub lifecycle: Arc<Lifecycle>,
    pub observer: Mutex<Option<Sender<ThreadEvent>>>,
    pub stop: StopSignal,
    pub stop_flag: Arc<StopFlag>,
    pub parking: Arc<super::wait::ParkingLot>,
    /// Why `wasi_thread_start` cannot be called, if it cannot.
    pub entry_error: Option<String>,
    /// In the schedule mode, who runs when.
    pub scheduler: Option<Arc<Scheduler>>,
    pub pool: WorkerPool,
    pub store_setup: Option<StoreSetup<T>>,
    /// How the rewrite moved the module's code, when the program was
    /// prepared from a [`CompiledModule`](crate::CompiledModule): trap backtraces
    /// then show the offsets of the module the user built.
    pub offsets: Option<Arc<OffsetMap>>,
}

/// How a guest thread begins.
pub(crate) enum Entry<T: 'static> {
    /// The main thread: instantiate in the embedder's store, call `_start`.
    Main(Store<T>),
    /// A spawned thread: a new store with a clone of the spawner's data,
    /// then `wasi_thread_start(tid, start_arg)`.
    Spawned { data: T, start_arg: i32 },
}

/// Checks the module's `wasi_thread_start` export: `(i32, i32) -> ()`.
pub(crate) fn check_entry_point(module: &Module) -> Option<String> {
    let Some(export) = module.get_export("wasi_thread_start") else {
        return Some("the module does not export `wasi_thread_start`".into());
    };
    let ExternType::Func(ty) = export else {
        return Some("the module's `wasi_thread_start` export is not a function".into());
    };
    let ok = ty.params().len() == 2
        && ty.params().all(|p| matches!(p, ValType::I32))
        && ty.results().len() == 0;
    (!ok).then(|| format!("`wasi_thread_start` has type {ty}, expected (i32, i32) -> ()"))
}

impl<T: Clone + Send + 'static> Shared<T> {
    /// A store for one of this program's threads, with the embedder's
    /// setup. A stop reaches running wasm through the stop flag the instance
    /// imports, not through the store.
    pub fn new_store(&self, data: T) -> Result<Store<T>> {
        let mut store = Store::new(&self.engine, data);
        // A new store's epoch deadline is the current epoch: on an engine
        // with epoch interruption (the embedder's choice, not the host's)
        // every store would be interrupted at its first check. Far away by
        // default; the embedder's setup sets its own.
        store.set_epoch_deadline(EPOCH_DEADLINE_NEVER);
        if let Some(setup) = &self.store_setup {
            setup(&mut store)?;
        }
        if self.stop.is_stopped() {
            return Err(Stopped.into());
        }
        Ok(store)
    }

    /// Sends `event` to the embedder's event stream, if it asked for one.
    pub fn observe(&self, event: ThreadEvent) {
        if let Some(observer) = &*self.observer.lock() {
            let _ = observer.send(event);
        }
    }

    /// The body of `thread-spawn`: the new thread's TID, or a negative errno.
    fn spawn(self: &Arc<Self>, data: T, start_arg: i32) -> Result<i32> {
        if let Some(why) = &self.entry_error {
            // The guest is told (ENOSYS); nothing for the user's stderr.
            log::debug!("thread-spawn refused: {why}");
            return Ok(-ENOSYS);
        }
        let tid = match self.tids.allocate() {
            Ok(tid) => tid,
            Err(AllocError::LimitReached) => {
                // The guest is told (EAGAIN), as by a failed `pthread_create`.
                log::debug!(
                    "thread-spawn refused: the limit of {} live threads is reached",
                    self.tids.limit()
                );
                return Ok(-EAGAIN);
            }
            // The program is ending: unwind the spawning thread too.
            Err(AllocError::Closed) => return Err(Stopped.into()),
        };
        if self.lifecycle.admit(tid).is_err() {
            self.tids.release(tid);
            return Err(Stopped.into());
        }
        let name = format!("wasi-thread-{tid}");
        let slot = match self.pool.reserve(&name) {
            Ok(slot) => slot,
            Err(e) => {
                self.tids.release(tid);
                self.lifecycle.thread_ended(tid);
                log::debug!("thread-spawn failed: cannot create an OS thread: {e}");
                return Ok(-EAGAIN);
            }
        };
        // Before the thread can run, so that its `Exited` comes after.
        log::debug!("thread {tid} spawned (start argument {start_arg:#x})");
        self.observe(ThreadEvent::Spawned { tid });
        if let Some(scheduler) = &self.scheduler {
            scheduler.spawned(tid);
        }
        let shared = self.clone();
        let job = Job {
            name,
            run: Box::new(move |finishing| {
                shared.guest_thread(tid, Entry::Spawned { data, start_arg }, Some(finishing))
            }),
        };
        if let Err(job) = slot.run(job) {
            // The pool is shut down: the program ended and stopped waiting.
            drop(job);
            if let Some(scheduler) = &self.scheduler {
                scheduler.forget(tid);
            }
            self.tids.release(tid);
            self.observe(ThreadEvent::Exited {
                tid,
                exit: ThreadExit::Stopped,
            });
            self.lifecycle.thread_ended(tid);
            return Err(Stopped.into());
        }
        if let Some(scheduler) = &self.scheduler {
            scheduler.point(Kind::Spawn).map_err(|Halted| Stopped)?;
        }
        Ok(tid as i32)
    }

    /// The life of one admitted guest thread, main or spawned: run it,
    /// contain any panic, claim the program's end if its exit ends the
    /// program (right here, atomically: the first claim wins), report its
    /// exit, and tell the lifecycle it is gone.
    ///
    /// `finishing` (spawned threads on a pool worker) is told as soon as the
    /// guest code is done, so that the TID and the worker are free for the
    /// next spawn even while the store is still being torn down.
    pub fn guest_thread(&self, tid: u32, entry: Entry<T>, finishing: Option<&Finishing<'_>>) {
        let is_main = matches!(entry, Entry::Main(_));
        let released = Cell::new(false);
        let guest_done = || {
            if !released.replace(true) {
                if !is_main {
                    self.tids.release(tid);
                }
                if let Some(finishing) = finishing {
                    finishing.now();
                }
            }
        };
        let instantiated = Cell::new(false);
        // In the schedule mode, nothing of the thread runs before its turn:
        // instantiation runs guest code (a start function's atomics).
        let turn = match &self.scheduler {
            Some(scheduler) => scheduler.enter(tid),
            None => Ok(()),
        };
        let exit = match turn {
            Ok(()) => catch_unwind(AssertUnwindSafe(|| {
                self.run_entry(tid, entry, &instantiated, &guest_done)
            }))
            .unwrap_or_else(|payload| ThreadExit::HostPanic(panic_message(&*payload))),
            Err(Halted) => ThreadExit::Stopped,
        };
        guest_done();
        let cause = match &exit {
            // The main thread's instantiation trapped: the program could not
            // start.
            ThreadExit::Trap(trap) if is_main && !instantiated.get() => {
                Some(Cause::FailedToStart(trap.message().to_string()))
            }
            exit => exit.outcome(tid).map(Cause::Ended),
        };
        match &exit {
            ThreadExit::Returned => log::debug!("thread {tid} returned"),
            ThreadExit::Exit(code) => log::debug!("thread {tid} called proc_exit({code})"),
            ThreadExit::Trap(trap) => log::debug!("thread {tid} trapped: {}", trap.message()),
            ThreadExit::Stopped => log::debug!("thread {tid} stopped"),
            ThreadExit::HostPanic(message) => {
                log::debug!("thread {tid}: host code panicked: {message}")
            }
        }
        if let Some(cause) = cause {
            self.lifecycle.end(cause);
        }
        self.observe(ThreadEvent::Exited { tid, exit });
        if let Some(scheduler) = &self.scheduler {
            // Its end is decided and reported: the next thread may run.
            scheduler.exited(tid);
        }
        self.lifecycle.thread_ended(tid);
    }

    fn run_entry(
        &self,
        tid: u32,
        entry: Entry<T>,
        instantiated: &Cell<bool>,
        guest_done: &dyn Fn(),
    ) -> ThreadExit {
        let result = (|| {
            let pre = self
                .pre
                .get()
                .ok_or_else(|| wasmtime::format_err!("the program is not running"))?;
            match entry {
                Entry::Main(mut store) => {
                    let instance = pre.instantiate(&mut store)?;
                    instantiated.set(true);
                    self.lifecycle.started();
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call(&mut store, ())
                }
                Entry::Spawned { data, start_arg } => {
                    let mut store = self.new_store(data)?;
                    let instance = pre.instantiate(&mut store)?;
                    instantiated.set(true);
                    let start = instance
                        .get_typed_func::<(i32, i32), ()>(&mut store, "wasi_thread_start")?;
                    let result = start.call(&mut store, (tid as i32, start_arg));
                    guest_done();
                    result
                }
            }
        })();
        match result {
            Ok(()) => ThreadExit::Returned,
            Err(e) if interrupt::is_check_trap(&e) && self.lifecycle.phase() >= Phase::Stopping => {
                ThreadExit::Stopped
            }
            Err(e) => classify(e, self.offsets.as_deref().map(|map| (map, &self.module))),
        }
    }
}

/// Defines `wasi` `thread-spawn` in `linker`.
pub(crate) fn add_thread_spawn<T: Clone + Send + 'static>(
    linker: &mut Linker<T>,
    shared: Weak<Shared<T>>,
) -> Result<()> {
    linker.func_wrap(
        "wasi",
        "thread-spawn",
        move |caller: Caller<'_, T>, start_arg: i32| -> Result<i32> {
            match shared.upgrade() {
                Some(shared) => shared.spawn(caller.data().clone(), start_arg),
                None => {
                    log::debug!("thread-spawn refused: the program has already ended");
                    Ok(-EAGAIN)
                }
            }
        },
    )?;
    Ok(())
}

/// Turns the error a guest entry point returned into how its thread ended.
/// With `offsets`, a trap's backtrace is told in the offsets of the module
/// the user built rather than of the rewritten one the host runs.
pub(crate) fn classify(err: wasmtime::Error, offsets: Option<(&OffsetMap, &Module)>) -> ThreadExit {
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return ThreadExit::Exit(exit.0);
    }
    if err.downcast_ref::<Stopped>().is_some() {
        return ThreadExit::Stopped;
    }
    let wasm_backtrace = err.downcast_ref::<WasmBacktrace>();
    let backtrace = wasm_backtrace.map(|bt| bt.to_string());
    let message = match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        // A host error: its causes, without the backtrace context that
        // Wasmtime wraps around it (the backtrace is reported separately).
        None => err
            .chain()
            .map(|cause| cause.to_string())
            .filter(|cause| Some(cause) != backtrace.as_ref())
            .collect::<Vec<_>>()
            .join(": "),
    };
    let backtrace = match (wasm_backtrace, offsets) {
        (Some(bt), Some((map, module))) => Some(map.format_backtrace(module, bt)),
        _ => backtrace,
    };
    let backtrace = backtrace.filter(|bt| !bt.trim().is_empty());
    ThreadExit::Trap(TrapInfo::new(message, backtrace, err))
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic with a non-string payload)".to_string()
    }
}
