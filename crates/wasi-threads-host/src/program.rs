//! [`WasiThreads`]: one run of one wasi-threads module, tying the shared
//! memory, `thread-spawn` and the supervisor together for an embedder's own
//! `Linker` and store data.

use crate::memory::{self, MemoryPlan};
use crate::pool::WorkerPool;
use crate::spawn::{self, Shared, StoreSetup};
use crate::stop::StopSignal;
use crate::supervisor::{self, CancelHandle, Event, MAIN_TID, Outcome, Supervisor, ThreadEvent};
use crate::tid::TidAllocator;
use crate::wait::{self, ParkingLot};
use crossbeam_channel::{Receiver, Sender};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::{AsContext, Engine, ExternType, Linker, Module, Result, SharedMemory, Store, bail};

/// The default limit on live spawned threads.
pub const DEFAULT_MAX_THREADS: u32 = 1024;
/// The default OS stack size of every guest thread. It must hold Wasmtime's
/// wasm stack (`Config::max_wasm_stack`, 512 KiB by default) plus host
/// frames; untouched stack pages cost no memory.
pub const DEFAULT_STACK_SIZE: usize = 8 << 20;
/// How long the supervisor waits for threads to stop before detaching them.
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
    store_setup: Option<StoreSetup<T>>,
}

impl<T: 'static> Default for ThreadsConfig<T> {
    fn default() -> Self {
        ThreadsConfig {
            max_threads: DEFAULT_MAX_THREADS,
            stack_size: DEFAULT_STACK_SIZE,
            timeout: None,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            keep_alive: DEFAULT_KEEP_ALIVE,
            store_setup: None,
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

    /// The OS stack size of every guest thread. Default [`DEFAULT_STACK_SIZE`].
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
    pub fn timeout(mut self, limit: Option<Duration>) -> Self {
        self.timeout = limit;
        self
    }

    /// How long to wait, once the program has ended, for its threads to stop
    /// before detaching them (only a thread stuck in host code that never
    /// returns can take that long). Default [`DEFAULT_JOIN_TIMEOUT`].
    pub fn join_timeout(mut self, limit: Duration) -> Self {
        self.join_timeout = limit;
        self
    }

    /// Setup run on every store of the program, the main thread's and every
    /// spawned thread's: resource limiters, fuel and the like. The epoch
    /// deadline is the host's own (it is how running threads are stopped), so
    /// whatever `setup` does to it is overridden.
    pub fn store_setup(
        mut self,
        setup: impl Fn(&mut Store<T>) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.store_setup = Some(Arc::new(setup));
        self
    }
}

/// A wasm engine configuration fit for wasi-threads: threads and shared
/// memory on, and epoch interruption, through which the supervisor stops
/// running threads.
pub fn engine_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_threads(true);
    config.shared_memory(true);
    config.epoch_interruption(true);
    config
}

/// One run of one wasi-threads module.
///
/// ```no_run
/// use wasi_threads_host::{SharedWasi, WasiThreads, engine_config};
/// use wasmtime::{Engine, Linker, Module};
/// use wasmtime_wasi::WasiCtxBuilder;
///
/// #[derive(Clone)]
/// struct State { wasi: SharedWasi }
///
/// # fn main() -> wasmtime::Result<()> {
/// let engine = Engine::new(&engine_config())?;
/// let module = Module::from_file(&engine, "app.wasm")?;
/// let threads = WasiThreads::new(&engine, &module)?;
/// let wasi = SharedWasi::new(WasiCtxBuilder::new().inherit_stdio().build_p1(), &threads);
/// let store = threads.new_store(State { wasi })?;
///
/// let mut linker = Linker::new(&engine);
/// threads.add_to_linker(&mut linker, &store)?;
/// wasi_threads_host::wasi::add_to_linker(&mut linker, |s: &mut State| &mut s.wasi)?;
/// linker.func_wrap("host", "answer", || 42)?;
///
/// let outcome = threads.run(&linker, store)?;
/// println!("{outcome}");
/// # Ok(()) }
/// ```
pub struct WasiThreads<T: 'static> {
    shared: Arc<Shared<T>>,
    memory: Option<(memory::ImportedMemory, SharedMemory)>,
    rx: Receiver<Event>,
    events: Sender<Event>,
    observer: Option<Sender<ThreadEvent>>,
    timeout: Option<Duration>,
    join_timeout: Duration,
    stack_size: usize,
}

impl<T: Clone + Send + 'static> WasiThreads<T> {
    /// Prepares `module` to run with default settings.
    pub fn new(engine: &Engine, module: &Module) -> Result<Self> {
        Self::with_config(engine, module, ThreadsConfig::default())
    }

    /// Prepares `module` to run with `config`: checks its imports and exports
    /// and creates its shared memory.
    pub fn with_config(engine: &Engine, module: &Module, config: ThreadsConfig<T>) -> Result<Self> {
        let spawns = module
            .imports()
            .any(|i| i.module() == "wasi" && i.name() == "thread-spawn");
        if let Some(import) = module
            .imports()
            .find(|i| i.module() == "wasi" && i.name() == "thread-spawn")
        {
            let ok = matches!(import.ty(), ExternType::Func(ty)
                if ty.params().len() == 1
                    && ty.params().all(|p| matches!(p, wasmtime::ValType::I32))
                    && ty.results().len() == 1
                    && ty.results().all(|r| matches!(r, wasmtime::ValType::I32)));
            if !ok {
                bail!(
                    "import `wasi.thread-spawn` has type {:?}, expected a function (i32) -> i32",
                    import.ty()
                );
            }
        }
        let memory = match memory::plan(module, spawns)? {
            MemoryPlan::Imported(import) => {
                let memory = import.create(engine)?;
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
            log::warn!("{why}: every thread-spawn will fail");
        }
        let (events, rx) = crossbeam_channel::unbounded();
        let stop = StopSignal::new();
        let shared = Arc::new(Shared {
            engine: engine.clone(),
            module: module.clone(),
            pre: OnceLock::new(),
            tids: TidAllocator::new(config.max_threads),
            events: events.clone(),
            stop: stop.clone(),
            parking: Arc::new(ParkingLot::new(stop)),
            serials: AtomicU64::new(1),
            entry_error,
            pool: WorkerPool::new(config.stack_size, config.keep_alive),
            store_setup: config.store_setup,
        });
        Ok(WasiThreads {
            shared,
            memory,
            rx,
            events,
            observer: None,
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
    /// race against it (see [`SharedWasi`](crate::SharedWasi)).
    pub fn stop_signal(&self) -> StopSignal {
        self.shared.stop.clone()
    }

    /// A handle that stops the program from any thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            events: self.events.clone(),
        }
    }

    /// A stream of thread spawns and exits, in the order the supervisor saw
    /// them. Call before [`run`](Self::run).
    pub fn events(&mut self) -> Receiver<ThreadEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.observer = Some(tx);
        rx
    }

    /// A store for the main thread, set up as every spawned thread's store
    /// will be.
    pub fn new_store(&self, data: T) -> Result<Store<T>> {
        self.shared.new_store(data)
    }

    /// Defines `wasi` `thread-spawn` and the module's shared memory import in
    /// `linker`, next to whatever else the embedder defines there. `store` is
    /// any store of the same data type (Wasmtime needs one to define a
    /// memory); the memory itself belongs to no store.
    pub fn add_to_linker(
        &self,
        linker: &mut Linker<T>,
        store: impl AsContext<Data = T>,
    ) -> Result<()> {
        spawn::add_thread_spawn(linker, Arc::downgrade(&self.shared))?;
        if let Some((import, memory)) = &self.memory {
            linker.define(store, &import.module, &import.name, memory.clone())?;
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

    /// Runs the program: instantiates the module in `store`, calls `_start`
    /// on a new OS thread and supervises every thread until the first cause
    /// ends the program, then stops and joins them all.
    ///
    /// `Err` means the program could not start (a missing import, `_start`
    /// missing, instantiation trapping); everything the guest does once
    /// running is an [`Outcome`].
    pub fn run(self, linker: &Linker<T>, mut store: Store<T>) -> Result<Outcome> {
        let shared = &self.shared;
        match shared.module.get_export("_start") {
            Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {}
            Some(_) => bail!("the module's `_start` export is not a function () -> ()"),
            None => bail!("the module does not export `_start` (is it a WASI command?)"),
        }
        let pre = linker.instantiate_pre(&shared.module)?;
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| match spawn::classify(e) {
                supervisor::ThreadExit::Trap(trap) => {
                    wasmtime::format_err!("instantiating the module failed: {}", trap.message)
                }
                other => wasmtime::format_err!("instantiating the module failed: {other:?}"),
            })?;
        let _ = shared.pre.set(pre);

        let deadline = self.timeout.map(|t| Instant::now() + t);
        let main_serial = 0;
        let main_shared = shared.clone();
        let main = std::thread::Builder::new()
            .name("wasi-main".into())
            .stack_size(self.stack_size)
            .spawn(move || {
                let exit = catch_unwind(AssertUnwindSafe(|| {
                    let result = instance
                        .get_typed_func::<(), ()>(&mut store, "_start")
                        .and_then(|start| start.call(&mut store, ()));
                    drop(store);
                    match result {
                        Ok(()) => supervisor::ThreadExit::Returned,
                        Err(e) => spawn::classify(e),
                    }
                }))
                .unwrap_or_else(|p| supervisor::ThreadExit::HostPanic(spawn::panic_message(&*p)));
                if exit.ends_program(MAIN_TID) {
                    main_shared.end_program();
                }
                let _ = main_shared.events.send(Event::Exited {
                    serial: main_serial,
                    tid: MAIN_TID,
                    exit,
                });
            })?;

        let mut supervisor = Supervisor::new(self.rx.clone(), self.observer.clone());
        supervisor.track_main(main_serial, main);
        let outcome = supervisor.wait_for_outcome(deadline);
        log::debug!("program ended: {outcome}; stopping every thread");
        shared.end_program();
        let spawns_total = shared.tids.close();
        let deadline = Instant::now() + self.join_timeout;
        let stuck =
            supervisor.wait_for_all(spawns_total, deadline) + shared.pool.shutdown(deadline);
        if stuck > 0 {
            log::warn!(
                "{stuck} guest thread(s) did not stop within {:?} (stuck in host code?); detached",
                self.join_timeout
            );
        }
        Ok(outcome)
    }
}
