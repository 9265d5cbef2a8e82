//! `wasi` `thread-spawn`: a new OS thread with its own `Store` and instance
//! over the program's one shared memory.

use crate::pool::{Finishing, Job, WorkerPool};
use crate::stop::{StopSignal, Stopped};
use crate::supervisor::{Event, ThreadExit, TrapInfo};
use crate::tid::{AllocError, TidAllocator};
use crossbeam_channel::Sender;
use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use wasmtime::{
    Caller, Engine, ExternType, InstancePre, Linker, Module, Result, Store, Trap, UpdateDeadline,
    ValType, WasmBacktrace,
};

/// WASI errno `EAGAIN`: a limit was hit; wasi-libc's `pthread_create` reports
/// it as `EAGAIN` too.
pub const EAGAIN: i32 = 6;
/// WASI errno `ENOSYS`: the module cannot start threads at all.
pub const ENOSYS: i32 = 52;

/// Per-store setup an embedder wants on every store of the program (limits,
/// fuel, ...), spawned threads' stores included.
pub type StoreSetup<T> = Arc<dyn Fn(&mut Store<T>) -> Result<()> + Send + Sync>;

/// Everything the threads of one program share. Spawned threads hold it
/// strongly; the `thread-spawn` function in the linker only weakly, since the
/// linker's definitions end up inside `pre` and would otherwise keep it alive
/// forever.
pub(crate) struct Shared<T: 'static> {
    pub engine: Engine,
    pub module: Module,
    pub pre: OnceLock<InstancePre<T>>,
    pub tids: TidAllocator,
    pub events: Sender<Event>,
    pub stop: StopSignal,
    pub parking: Arc<crate::wait::ParkingLot>,
    pub serials: AtomicU64,
    /// Why `wasi_thread_start` cannot be called, if it cannot.
    pub entry_error: Option<String>,
    pub pool: WorkerPool,
    pub store_setup: Option<StoreSetup<T>>,
}

/// Checks the module's `wasi_thread_start` export: `(i32, i32) -> ()`.
pub(crate) fn check_entry_point(module: &Module) -> Option<String> {
    let Some(export) = module.get_export("wasi_thread_start") else {
        return Some("the module does not export `wasi_thread_start`".into());
    };
    let ExternType::Func(ty) = export else {
        return Some("the module's `wasi_thread_start` export is not a function".into());
    };
    let params: Vec<ValType> = ty.params().collect();
    let ok = params.len() == 2
        && params.iter().all(|p| matches!(p, ValType::I32))
        && ty.results().len() == 0;
    (!ok).then(|| format!("`wasi_thread_start` has type {ty}, expected (i32, i32) -> ()"))
}

impl<T: Clone + Send + 'static> Shared<T> {
    /// A store for one of this program's threads: the embedder's setup, then
    /// the epoch deadline through which the supervisor reaches running wasm.
    pub fn new_store(&self, data: T) -> Result<Store<T>> {
        let mut store = Store::new(&self.engine, data);
        if let Some(setup) = &self.store_setup {
            setup(&mut store)?;
        }
        let stop = self.stop.clone();
        store.epoch_deadline_callback(move |_| {
            if stop.is_stopped() {
                Err(Stopped.into())
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        store.set_epoch_deadline(1);
        // The deadline is set; if the supervisor's epoch tick came before it,
        // this check sees the stop instead.
        if self.stop.is_stopped() {
            return Err(Stopped.into());
        }
        Ok(store)
    }

    /// The body of `thread-spawn`: the new thread's TID, or a negative errno.
    fn spawn(self: &Arc<Self>, data: T, start_arg: i32) -> Result<i32> {
        if let Some(why) = &self.entry_error {
            log::warn!("thread-spawn refused: {why}");
            return Ok(-ENOSYS);
        }
        let tid = match self.tids.allocate() {
            Ok(tid) => tid,
            Err(AllocError::LimitReached) => {
                log::warn!(
                    "thread-spawn refused: the limit of {} live threads is reached",
                    self.tids.limit()
                );
                return Ok(-EAGAIN);
            }
            // The program is ending: unwind the spawning thread too.
            Err(AllocError::Closed) => return Err(Stopped.into()),
        };
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let shared = self.clone();
        let job = Job {
            name: format!("wasi-thread-{tid}"),
            run: Box::new(move |finishing| {
                shared.thread_main(serial, tid, start_arg, data, finishing)
            }),
        };
        match self.pool.execute(job) {
            Ok(()) => {
                let _ = self.events.send(Event::Started { serial, tid });
                Ok(tid as i32)
            }
            Err(e) => {
                self.tids.release(tid);
                let _ = self.events.send(Event::SpawnFailed);
                log::warn!("thread-spawn failed: cannot create an OS thread: {e}");
                Ok(-EAGAIN)
            }
        }
    }

    fn thread_main(
        self: Arc<Self>,
        serial: u64,
        tid: u32,
        start_arg: i32,
        data: T,
        finishing: &Finishing<'_>,
    ) {
        // Once the guest code is done, its TID and its worker are free for
        // the next spawn, even while the store is still being torn down.
        let released = Cell::new(false);
        let guest_done = || {
            if !released.replace(true) {
                self.tids.release(tid);
                finishing.now();
            }
        };
        let exit = catch_unwind(AssertUnwindSafe(|| {
            self.run_thread(tid, start_arg, data, &guest_done)
        }))
        .unwrap_or_else(|payload| ThreadExit::HostPanic(panic_message(&*payload)));
        guest_done();
        if exit.ends_program(tid) {
            self.end_program();
        }
        let _ = self.events.send(Event::Exited { serial, tid, exit });
    }

    /// Stops every thread at once, from the thread whose exit ends the
    /// program: waiting for the supervisor to be scheduled first would only
    /// add latency. The supervisor still decides the outcome, from the order
    /// in which the exits reach it.
    pub fn end_program(&self) {
        self.tids.close();
        crate::supervisor::stop_everything(&self.engine, &self.stop, &self.parking);
    }

    fn run_thread(&self, tid: u32, start_arg: i32, data: T, guest_done: &dyn Fn()) -> ThreadExit {
        let result = (|| {
            let pre = self
                .pre
                .get()
                .ok_or_else(|| wasmtime::format_err!("the program is not running"))?;
            let mut store = self.new_store(data)?;
            let instance = pre.instantiate(&mut store)?;
            let start =
                instance.get_typed_func::<(i32, i32), ()>(&mut store, "wasi_thread_start")?;
            let result = start.call(&mut store, (tid as i32, start_arg));
            guest_done();
            result
        })();
        match result {
            Ok(()) => ThreadExit::Returned,
            Err(e) => classify(e),
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
                    log::warn!("thread-spawn refused: the program has already ended");
                    Ok(-EAGAIN)
                }
            }
        },
    )?;
    Ok(())
}

/// Turns the error a guest entry point returned into how its thread ended.
pub(crate) fn classify(err: wasmtime::Error) -> ThreadExit {
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return ThreadExit::Exit(exit.0);
    }
    if err.downcast_ref::<Stopped>().is_some() {
        return ThreadExit::Stopped;
    }
    let backtrace = err.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string());
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
    let backtrace = backtrace.filter(|bt| !bt.trim().is_empty());
    ThreadExit::Trap(TrapInfo { message, backtrace })
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
