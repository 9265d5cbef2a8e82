//! [`WasiThreads`]: one run of one wasi-threads module, tying the shared
//! memory, `thread-spawn` and the program's [lifecycle](crate::program::lifecycle)
//! together for an embedder's own `Linker` and store data.

use crate::program::interrupt::StopFlag;
use crate::program::lifecycle::CancelHandle;
use crate::program::lifecycle::{Cause, Lifecycle};
use crate::program::memory::{self, ImportedMemory, MemoryPlan};
use crate::program::outcome::{MAIN_TID, Outcome, ThreadEvent};
use crate::program::pool::WorkerPool;
use crate::program::spawn::{self, Entry, Shared, StoreSetup};
use crate::program::stop::StopSignal;
use crate::program::tid::TidAllocator;
use crate::program::wait::{self, ParkingLot};
use crate::rewrite::{CompiledModule, OffsetMap};
use crate::schedule::Schedule;
use crate::schedule::scheduler::Scheduler;
use crate::wasi::{SharedWasi, Stdio};
use crossbeam_channel::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::{AsContext, Engine, ExternType, Linker, Module, Result, SharedMemory, Store, bail};
use wasmtime_wasi::WasiCtxBuilder;

/// The default limit on live spawned threads.
pub const DEFAULT_MAX_THREADS: u32 = 1024;
/// The default OS stack size of every guest thread. It must hold Wasmtime's
/// wasm stack (`Config::max_wasm_stack`, 512 KiB by default) plus
/// [`HOST_STACK_RESERVE`]; untouched stack pages cost no memory.
pub const DEFAULT_STACK_SIZE: usize = 8 << 20;
/// The OS stack a guest thread needs beyond the engine's
/// `Config::max_wasm_stack`: the host frames below the first wasm frame and
/// those of host calls (WASI) made from the deepest wasm frame. Wasmtime
/// turns running out of wasm stack into a trap only if the OS stack is
/// larger than the wasm stack by at least this much; otherwise deep
/// recursion hits the guard page and kills the process.
pub const HOST_STACK_RESERVE: usize = 512 << 10;
/// How long `run` waits, once the program has ended, for its threads to
/// stop before abandoning them.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an OS thread whose guest thread ended waits to run the next
/// spawned guest thread before it exits.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Settings for one program run.
pub struct ThreadsConfig<T: 'static> {
    max_threads: u32,
    stack_size: usize,
    timeout: Option<Duration>,
    join_timeout: Duration,
    keep_alive: Duration,
    max_memory: Option<u64>,
    store_setup: Option<StoreSetup<T>>,
    schedule: Option<Schedule>,
}

impl<T: 'static> Default for ThreadsConfig<T> {
    fn default() -> Self {
        ThreadsConfig {
            max_threads: DEFAULT_MAX_THREADS,
            stack_size: DEFAULT_STACK_SIZE,
            timeout: None,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            keep_alive: DEFAULT_KEEP_ALIVE,
            max_memory: None,
            store_setup: None,
            schedule: None,
        }
    }
}

impl<T: 'static> ThreadsConfig<T> {
    /// Default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` spawned threads alive at once; `thread-spawn` returns
    /// `-EAGAIN` beyond that. Default [`DEFAULT_MAX_THREADS`].
    pub fn max_threads(mut self, n: u32) -> Self {
        self.max_threads = n;
        self
    }

    /// The OS stack size of every guest thread, the main thread's included.
    /// Default [`DEFAULT_STACK_SIZE`]. It must hold the engine's
    /// `Config::max_wasm_stack` plus [`HOST_STACK_RESERVE`], so that deep
    /// recursion in the guest is a stack-overflow trap and never a SIGSEGV
    /// of the process; [`WasiThreads::with_config`] refuses a smaller one.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = bytes;
        self
    }

    /// How long an OS thread whose guest thread ended stays around to run
    /// the next spawned one (OS threads are reused; every guest thread still
    /// gets a fresh `Store` and instance). Default [`DEFAULT_KEEP_ALIVE`];
    /// zero gives every guest thread an OS thread of its own.
    pub fn keep_alive(mut self, idle: Duration) -> Self {
        self.keep_alive = idle;
        self
    }

    /// A wall-clock limit for the whole program: past it, every thread is
    /// stopped and the outcome is [`Outcome::TimedOut`].
    /// Default: none.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// How long to wait, once the program has ended, for its threads to stop
    /// before abandoning them (only a thread stuck in host code that never
    /// returns can take that long): [`WasiThreads::run`] returns within this
    /// time after the end, and reports each abandoned thread as
    /// [`ThreadEvent::Abandoned`] and in a warning. Default
    /// [`DEFAULT_JOIN_TIMEOUT`].
    pub fn join_timeout(mut self, limit: Duration) -> Self {
        self.join_timeout = limit;
        self
    }

    /// The most linear memory the program may have, in bytes. The host
    /// creates the module's shared memory with a maximum no larger than this
    /// (and never larger than the module's own), so `memory.grow` past it
    /// returns -1 to the guest; a module whose *minimum* is larger cannot be
    /// loaded ([`WasiThreads::with_config`] fails). Default: none, the
    /// module's declared maximum (up to 4 GiB) is the limit.
    ///
    /// This protects the embedder from a guest that declares a huge maximum
    /// and grows into it. It applies to the imported shared memory only
    /// (Wasmtime does not apply a store's `ResourceLimiter` to shared
    /// memories); a memory the module defines itself is limited by a
    /// `ResourceLimiter` in [`store_setup`](Self::store_setup), as
    /// [`Runner::max_memory`](crate::Runner::max_memory) does.
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// Runs the program in the schedule mode: one thread at a time,
    /// switching where `schedule` decides, with virtual clocks and seeded
    /// `random_get` (see [`Schedule`]). The module must have been compiled
    /// for it, with [`compile_scheduled`](crate::compile_scheduled).
    /// [`WasiThreads::wasi`] then builds a context with the virtual clocks
    /// and the seeded generator. Default: off.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Setup run on every store of the program, the main thread's and every
    /// spawned thread's: resource limiters, fuel, epoch deadlines and the
    /// like. The host uses none of these itself; it only sets the epoch
    /// deadline far away before `setup` runs, so that on an engine with
    /// epoch interruption stores are not interrupted unless `setup` says so.
    pub fn store_setup(
        mut self,
        setup: impl Fn(&mut Store<T>) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.store_setup = Some(Arc::new(setup));
        self
    }
}

/// A wasm engine configuration fit for wasi-threads: threads, shared
/// memory and multi-memory on. Nothing else is needed: running threads are stopped through
/// the checks [`compile`](crate::compile) adds, not through epochs, so
/// epoch interruption is the embedder's to use (or leave off, as here:
/// it costs compute on every call and loop).
pub fn engine_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_threads(true);
    config.shared_memory(true);
    // On by default; needed: the stop flag is a memory of its own.
    config.wasm_multi_memory(true);
    config
}

/// One run of one wasi-threads module.
///
/// ```no_run
/// use wasi_threads_host::{SharedWasi, Stdio, WasiThreads, engine_config};
/// use wasmtime::{Engine, Linker};
/// use wasmtime_wasi::WasiCtxBuilder;
///
/// #[derive(Clone)]
/// struct State { wasi: SharedWasi }
///
/// # fn main() -> wasmtime::Result<()> {
/// let engine = Engine::new(&engine_config())?;
/// let module = wasi_threads_host::compile(&engine, &std::fs::read("app.wasm")?)?;
/// let threads = WasiThreads::new(&engine, &module)?;
/// let wasi = threads.wasi(WasiCtxBuilder::new(), Stdio::inherit());
/// let store = threads.new_store(State { wasi })?;
///
/// let mut linker = Linker::new(&engine);
/// threads.add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)?;
/// linker.func_wrap("host", "answer", || 42)?;
///
/// let outcome = threads.run(&linker, store)?;
/// println!("{outcome}");
/// # Ok(()) }
/// ```
pub struct WasiThreads<T: 'static> {
    shared: Arc<Shared<T>>,
    memory: Option<(ImportedMemory, SharedMemory)>,
    timeout: Option<Duration>,
    join_timeout: Duration,
    stack_size: usize,
}

impl<T: Clone + Send + 'static> WasiThreads<T> {
    /// Prepares `module` to run with default settings.
    pub fn new(engine: &Engine, module: &CompiledModule) -> Result<Self> {
        Self::with_config(engine, module, ThreadsConfig::default())
    }

    /// Prepares `module` to run with `config`: checks its imports and
    /// exports, checks the OS stack against the engine's wasm stack, and
    /// creates its shared memory. Trap backtraces give the code offsets of
    /// the module the user built (which `wasm-tools addr2line` or
    /// `llvm-symbolizer` understand), not those of the host's rewrite.
    pub fn with_config(
        engine: &Engine,
        module: &CompiledModule,
        config: ThreadsConfig<T>,
    ) -> Result<Self> {
        match (module.granularity(), &config.schedule) {
            (None, Some(_)) => bail!(
                "a schedule needs a module compiled for the schedule mode, with \
                 `compile_scheduled`: this one was compiled with `compile`"
            ),
            (Some(_), None) => bail!(
                "the module was compiled for the schedule mode (`compile_scheduled`): run it \
                 with a `Schedule` (`ThreadsConfig::schedule`), or compile it with `compile`"
            ),
            _ => {}
        }
        Self::prepare(
            engine,
            module.module(),
            Some(module.offsets().clone()),
            config,
        )
    }

    fn prepare(
        engine: &Engine,
        module: &Module,
        offsets: Option<Arc<OffsetMap>>,
        config: ThreadsConfig<T>,
    ) -> Result<Self> {
        let wasm_stack = engine.get_max_wasm_stack();
        if config.stack_size < wasm_stack.saturating_add(HOST_STACK_RESERVE) {
            bail!(
                "a guest thread's OS stack of {} KiB cannot hold the engine's max_wasm_stack of \
                 {} KiB plus {} KiB for host frames: raise the stack size or lower \
                 max_wasm_stack",
                config.stack_size >> 10,
                wasm_stack >> 10,
                HOST_STACK_RESERVE >> 10
            );
        }
        if !crate::rewrite::is_prepared(module) {
            bail!(
                "the module was not compiled with `wasi_threads_host::compile` (or \
                 `compile`), which adds the checks through which its threads are stopped; \
                 compile it with that instead of `Module::new`"
            );
        }
        let mut spawn_imports = module
            .imports()
            .filter(|i| i.module() == "wasi" && i.name() == "thread-spawn");
        let spawn_import = spawn_imports.next();
        let spawns = spawn_import.is_some();
        if let Some(import) = spawn_import {
            let ok = matches!(import.ty(), ExternType::Func(ty)
                if ty.params().len() == 1
                    && ty.params().all(|p| matches!(p, wasmtime::ValType::I32))
                    && ty.results().len() == 1
                    && ty.results().all(|r| matches!(r, wasmtime::ValType::I32)));
            if !ok {
                // One readable line: `ExternType` has no `Display`, and its
                // `Debug` dumps the engine's type registry.
                let found = match import.ty() {
                    ExternType::Func(ty) => ty.to_string(),
                    ExternType::Global(_) => "a global".into(),
                    ExternType::Table(_) => "a table".into(),
                    ExternType::Memory(_) => "a memory".into(),
                    ExternType::Tag(_) => "a tag".into(),
                };
                bail!("import `wasi.thread-spawn` is {found}, expected a function (i32) -> i32");
            }
        }
        let memory = match memory::plan(module, spawns)? {
            MemoryPlan::Imported(import) => {
                let memory = import.create(engine, config.max_memory)?;
                Some((import, memory))
            }
            MemoryPlan::None => None,
        };
        let entry_error = if spawns {
            spawn::check_entry_point(module)
        } else {
            None
        };
        if let Some(why) = &entry_error {
            // Each spawn returns ENOSYS to the guest, which reports it.
            log::debug!("{why}: every thread-spawn will fail");
        }
        let stop = StopSignal::new();
        let stop_flag = Arc::new(StopFlag::new(engine)?);
        let scheduler = config
            .schedule
            .as_ref()
            .map(|schedule| Arc::new(Scheduler::new(schedule, MAIN_TID)));
        let parking = Arc::new(ParkingLot::new(stop.clone(), scheduler.clone()));
        let tids = Arc::new(TidAllocator::new(config.max_threads));
        let lifecycle = {
            let (stop, stop_flag, parking, tids, scheduler) = (
                stop.clone(),
                stop_flag.clone(),
                parking.clone(),
                tids.clone(),
                scheduler.clone(),
            );
            // The stop fan-out, in the order threads look: the TID allocator
            // (spawns waiting at the limit), the signal (sleepers, futures),
            // threads waiting for their turn in the schedule mode, parked
            // waiters, then running wasm, whose next check of the flag
            // unwinds it.
            Arc::new(Lifecycle::new(move || {
                tids.close();
                stop.trigger();
                if let Some(scheduler) = &scheduler {
                    scheduler.stop();
                }
                parking.wake_all();
                stop_flag.raise();
            }))
        };
        if let Some(scheduler) = &scheduler {
            // Weak: the lifecycle's stop fan-out holds the scheduler.
            let lifecycle = Arc::downgrade(&lifecycle);
            scheduler.on_deadlock(move |blocked| {
                if let Some(lifecycle) = lifecycle.upgrade() {
                    lifecycle.end(Cause::Ended(Outcome::Deadlock { blocked }));
                }
            });
        }
        let shared = Arc::new(Shared {
            engine: engine.clone(),
            module: module.clone(),
            pre: OnceLock::new(),
            tids,
            lifecycle,
            observer: parking_lot::Mutex::new(None),
            stop,
            stop_flag,
            parking,
            entry_error,
            scheduler,
            pool: WorkerPool::new(config.stack_size, config.keep_alive),
            store_setup: config.store_setup,
            offsets,
        });
        Ok(WasiThreads {
            shared,
            memory,
            timeout: config.timeout,
            join_timeout: config.join_timeout,
            stack_size: config.stack_size,
        })
    }

    /// The shared memory the module imports, if it imports one.
    pub fn memory(&self) -> Option<&SharedMemory> {
        self.memory.as_ref().map(|(_, m)| m)
    }

    /// The signal every thread of this program watches; blocking host calls
    /// race against it. Crate-private: embedders stop a program through the
    /// [`CancelHandle`], which also wakes parked threads and interrupts
    /// running wasm.
    pub(crate) fn stop_signal(&self) -> StopSignal {
        self.shared.stop.clone()
    }

    /// Wakes guest threads parked in `memory.atomic.wait*`, from any thread
    /// and from inside host functions (see [`Notifier`](crate::Notifier));
    /// `None` if the module imports no shared memory.
    /// `SharedMemory::atomic_notify` does not reach these waits: the host
    /// routes them through its own parking lot.
    pub fn notifier(&self) -> Option<crate::Notifier> {
        self.memory().map(|m| self.shared.parking.notifier(m))
    }

    /// A handle that stops the program from any thread, before or during
    /// [`run`](Self::run).
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            lifecycle: self.shared.lifecycle.clone(),
        }
    }

    /// A stream of thread spawns, exits and abandonments, in causal order
    /// (see [`ThreadEvent`]). Call before [`run`](Self::run); a later call
    /// replaces the earlier stream.
    pub fn events(&mut self) -> Receiver<ThreadEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        *self.shared.observer.lock() = Some(tx);
        rx
    }

    /// A store for the main thread, set up as every spawned thread's store
    /// will be.
    pub fn new_store(&self, data: T) -> Result<Store<T>> {
        self.shared.new_store(data)
    }

    /// The WASI preview1 context every thread of this program shares (one
    /// fd table), built from `builder` with `stdio`'s streams: those replace
    /// any stdio `builder` was given (see [`Stdio`]). Put it in the store
    /// data; [`add_to_linker`](Self::add_to_linker) finds it there. Its
    /// blocking calls give up when the program stops.
    pub fn wasi(&self, mut builder: WasiCtxBuilder, stdio: Stdio) -> SharedWasi {
        if let Some(scheduler) = &self.shared.scheduler {
            crate::schedule::environment::virtualize(&mut builder, scheduler);
        }
        SharedWasi::build(
            builder,
            stdio,
            self.stop_signal(),
            self.shared.scheduler.clone(),
        )
    }

    /// Defines in `linker`, next to whatever else the embedder defines
    /// there: `wasi` `thread-spawn`, the module's shared memory import, and
    /// WASI preview1 (`wasi_snapshot_preview1`) backed by the
    /// [`SharedWasi`] that `wasi` finds in each thread's store data. `store`
    /// is any store of the same data type (Wasmtime needs one to define a
    /// memory); the memory itself belongs to no store.
    pub fn add_to_linker(
        &self,
        linker: &mut Linker<T>,
        store: impl AsContext<Data = T>,
        wasi: impl Fn(&mut T) -> &mut SharedWasi + Copy + Send + Sync + 'static,
    ) -> Result<()> {
        self.add_threads_to_linker(linker, &store)?;
        crate::wasi::add_to_linker(linker, wasi)
    }

    fn add_threads_to_linker(
        &self,
        linker: &mut Linker<T>,
        store: impl AsContext<Data = T>,
    ) -> Result<()> {
        spawn::add_thread_spawn(linker, Arc::downgrade(&self.shared))?;
        self.shared.stop_flag.add_to_linker(linker, &store)?;
        if let Some(scheduler) = &self.shared.scheduler {
            crate::program::wait::add_schedule_to_linker(linker, scheduler)?;
        }
        if let Some((import, memory)) = &self.memory {
            linker.define(&store, &import.module, &import.name, memory.clone())?;
            if self
                .shared
                .module
                .imports()
                .any(|i| i.module() == crate::rewrite::HOST_MODULE)
            {
                wait::add_to_linker(linker, &self.shared.parking, memory)?;
            }
        }
        Ok(())
    }

    /// Runs the program: on a new OS thread, instantiates the module in
    /// `store` (data segments, start function) and calls `_start`; supervises
    /// every thread until the first cause ends the program — from the
    /// moment instantiation begins, so the timeout and the cancel handle
    /// reach a start function too — then stops and joins them all.
    ///
    /// Returns within the join timeout after the end at worst; threads that
    /// did not stop by then are abandoned and reported
    /// ([`ThreadEvent::Abandoned`], and a warning in the log).
    ///
    /// `Err` means the program could not start (a missing import, `_start`
    /// missing, instantiation trapping); everything the guest does once
    /// running, and a timeout or cancel during instantiation, is an
    /// [`Outcome`].
    pub fn run(self, linker: &Linker<T>, store: Store<T>) -> Result<Outcome> {
        let shared = &self.shared;
        let lifecycle = &shared.lifecycle;
        match shared.module.get_export("_start") {
            Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {}
            Some(_) => bail!("the module's `_start` export is not a function () -> ()"),
            None => bail!("the module does not export `_start` (is it a WASI command?)"),
        }
        let pre = linker.instantiate_pre(&shared.module)?;
        if shared.pre.set(pre).is_err() {
            bail!("this program has already run");
        }

        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let mut main = None;
        // Refused only if the program was cancelled before it started.
        if lifecycle.admit(MAIN_TID).is_ok() {
            let main_shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("wasi-main".into())
                .stack_size(self.stack_size)
                .spawn(move || main_shared.guest_thread(MAIN_TID, Entry::Main(store), None));
            match spawned {
                Ok(handle) => main = Some(handle),
                Err(e) => {
                    lifecycle.thread_ended(MAIN_TID);
                    lifecycle.join(None);
                    return Err(wasmtime::format_err!(
                        "cannot create the main thread's OS thread: {e}"
                    ));
                }
            }
        }
        let cause = lifecycle.wait_for_cause(deadline);
        log::debug!("program ended: {cause:?}; stopping every thread");
        let join_deadline = Instant::now().checked_add(self.join_timeout);
        let abandoned = lifecycle.join(join_deadline);
        if let Some(main) = main
            && !abandoned.contains(&MAIN_TID)
        {
            // It has reported its end; it only has to return.
            let _ = main.join();
        }
        let far = || Instant::now() + Duration::from_secs(3600);
        let detached = shared.pool.shutdown(join_deadline.unwrap_or_else(far));
        if !abandoned.is_empty() || detached > 0 {
            log::warn!(
                "guest thread(s) {abandoned:?} did not stop within {:?} (stuck in host code?); \
                 abandoned, {detached} OS thread(s) detached",
                self.join_timeout
            );
        }
        for tid in abandoned {
            shared.observe(ThreadEvent::Abandoned { tid });
        }
        match cause {
            Cause::Ended(outcome) => Ok(outcome),
            Cause::FailedToStart(message) => {
                bail!("instantiating the module failed: {message}")
            }
        }
    }
}
