//! [`Runner`]: the common case in a few lines — a module, its WASI setup,
//! and the [`Outcome`].

use crate::program::{CancelHandle, Outcome};
use crate::rewrite::CompiledModule;
use crate::schedule::Schedule;
use crate::wasi::{SharedWasi, Stdio};
use crate::wasi_threads::{
    DEFAULT_STACK_SIZE, HOST_STACK_RESERVE, ThreadsConfig, WasiThreads, engine_config,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::error::Context as _;
use wasmtime::{Engine, Linker, Result, Store, StoreLimits, StoreLimitsBuilder, bail};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

type WasiSetup = Box<dyn FnOnce(&mut WasiCtxBuilder) + Send>;

/// Runs a WASI command module, threaded or not, to its [`Outcome`].
///
/// ```no_run
/// use wasi_threads_host::{Outcome, Runner};
/// # fn main() -> wasmtime::Result<()> {
/// // The guest's argv is ["app.wasm"]; `.arg`/`.args` would set it.
/// let outcome = Runner::new()
///     .env("RUST_BACKTRACE", "1")
///     .preopened_dir("./data", "/data")
///     .run_file("app.wasm")?;
/// match outcome {
///     Outcome::Exit { code, .. } => println!("exited with {code}"),
///     other => eprintln!("{other}"),
/// }
/// # Ok(()) }
/// ```
pub struct Runner {
    engine: Option<Engine>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dirs: Vec<(PathBuf, String)>,
    stdio: Stdio,
    wasi_setup: Vec<WasiSetup>,
    max_threads: Option<u32>,
    keep_alive: Option<Duration>,
    timeout: Option<Duration>,
    max_memory: Option<u64>,
    max_wasm_stack: Option<usize>,
    unknown_imports_trap: bool,
    on_start: Option<Box<dyn FnOnce(CancelHandle) + Send>>,
    schedule: Option<Schedule>,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
struct State {
    wasi: SharedWasi,
    limits: StoreLimits,
}

impl Runner {
    /// A runner with the process's stdio ([`Stdio::inherit`]), no arguments
    /// (until [`run_file`](Self::run_file) sets `argv[0]`), no environment
    /// and no preopened directories.
    pub fn new() -> Self {
        Runner {
            engine: None,
            args: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            stdio: Stdio::inherit(),
            wasi_setup: Vec::new(),
            max_threads: None,
            keep_alive: None,
            timeout: None,
            max_memory: None,
            max_wasm_stack: None,
            unknown_imports_trap: false,
            on_start: None,
            schedule: None,
        }
    }

    /// Uses `engine` (which must be configured as [`engine_config`] does)
    /// instead of a new one.
    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Appends one argument; the first is the program name (`argv[0]`,
    /// which [`run_file`](Self::run_file) otherwise sets to its path).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the guest.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Gives the guest the host directory `host` as `guest`, read-write.
    pub fn preopened_dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.dirs.push((host.into(), guest.into()));
        self
    }

    /// The guest's stdin, stdout and stderr (default: the process's,
    /// [`Stdio::inherit`]; [`Stdio::new`] for none).
    pub fn stdio(mut self, stdio: Stdio) -> Self {
        self.stdio = stdio;
        self
    }

    /// Further WASI setup (clocks, random generators, sockets, ...), applied
    /// after the runner's own. Stdio is [`stdio`](Self::stdio)'s: a stream
    /// set here is used only where that gives none.
    pub fn configure_wasi(
        mut self,
        setup: impl FnOnce(&mut WasiCtxBuilder) + Send + 'static,
    ) -> Self {
        self.wasi_setup.push(Box::new(setup));
        self
    }

    /// At most `n` live spawned threads.
    pub fn max_threads(mut self, n: u32) -> Self {
        self.max_threads = Some(n);
        self
    }

    /// How long an idle OS thread waits to run the next spawned guest
    /// thread; see [`ThreadsConfig::keep_alive`].
    pub fn keep_alive(mut self, idle: Duration) -> Self {
        self.keep_alive = Some(idle);
        self
    }

    /// A wall-clock limit for the whole program.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// The most linear memory the guest may have, in bytes (`wasmtime run`'s
    /// `-W max-memory-size`). A threaded guest's shared memory is created
    /// with a maximum no larger than this ([`ThreadsConfig::max_memory`]); a
    /// memory a module defines itself is held to it by a `ResourceLimiter`.
    /// Growing past it returns -1 to the guest; a module whose minimum is
    /// larger does not load. Default: none (the module's own maximum, up to
    /// 4 GiB). Protects the embedder's memory from a guest that declares a
    /// huge maximum.
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// The most wasm stack a guest thread may use, in bytes (`wasmtime
    /// run`'s `-W max-wasm-stack`): deeper recursion traps with a stack
    /// overflow. Sets `Config::max_wasm_stack` on the engine the runner
    /// creates, and every guest thread's OS stack to hold it
    /// ([`DEFAULT_STACK_SIZE`](crate::DEFAULT_STACK_SIZE) or this plus
    /// [`HOST_STACK_RESERVE`](crate::HOST_STACK_RESERVE), whichever is
    /// larger). With an engine of your own ([`engine`](Self::engine)),
    /// configure the same value there: a mismatch is an error. Default:
    /// Wasmtime's, 512 KiB. Protects against a guest that recurses without
    /// bound exhausting the host's stack.
    pub fn max_wasm_stack(mut self, bytes: usize) -> Self {
        self.max_wasm_stack = Some(bytes);
        self
    }

    /// Whether imported functions that nothing defines are defined as
    /// functions that trap when called (`wasmtime run -W
    /// unknown-imports-trap`), instead of failing instantiation. Default:
    /// off.
    pub fn unknown_imports_trap(mut self, trap: bool) -> Self {
        self.unknown_imports_trap = trap;
        self
    }

    /// Called with the program's cancel handle just before it starts.
    pub fn on_start(mut self, f: impl FnOnce(CancelHandle) + Send + 'static) -> Self {
        self.on_start = Some(Box::new(f));
        self
    }

    /// Runs the program in the schedule mode (see [`Schedule`]): its threads
    /// one at a time, switching where the schedule decides, on virtual
    /// clocks and seeded randomness, so that every run with the same
    /// schedule and inputs does the same. [`run_file`](Self::run_file) and
    /// [`run_bytes`](Self::run_bytes) compile the module for the schedule's
    /// [granularity](Schedule::granularity); [`run_module`](Self::run_module)
    /// needs one from [`compile_scheduled`](crate::compile_scheduled).
    /// The run's [`ScheduleReport`](crate::ScheduleReport) appears in
    /// [`Schedule::log`] when it ends.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Compiles and runs the module in the file at `path`. Unless
    /// [`arg`](Self::arg) or [`args`](Self::args) gave the guest's
    /// arguments, its `argv[0]` is `path`, as `wasmtime run` has it.
    pub fn run_file(mut self, path: impl AsRef<Path>) -> Result<Outcome> {
        let path = path.as_ref();
        if self.args.is_empty() {
            self.args.push(path.to_string_lossy().into_owned());
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.run_bytes(&bytes)
            .with_context(|| format!("cannot run {}", path.display()))
    }

    /// Compiles and runs a module from its binary (or text) form.
    pub fn run_bytes(self, bytes: &[u8]) -> Result<Outcome> {
        let engine = match &self.engine {
            Some(engine) => engine.clone(),
            None => {
                let mut config = engine_config();
                if let Some(bytes) = self.max_wasm_stack {
                    // Wasmtime refuses a wasm stack larger than the async
                    // stack (2 MiB by default), even without async support.
                    config
                        .max_wasm_stack(bytes)
                        .async_stack_size(bytes.max(2 << 20));
                }
                Engine::new(&config)?
            }
        };
        let module = match &self.schedule {
            Some(schedule) => {
                crate::rewrite::compile_scheduled(&engine, bytes, schedule.granularity_of())?
            }
            None => crate::rewrite::compile(&engine, bytes)?,
        };
        self.run_prepared(&module)
    }

    /// Runs a module [`compile`](crate::compile)d with this runner's engine
    /// (or taken from a [`ModuleCache`](crate::ModuleCache)).
    pub fn run_module(self, module: &CompiledModule) -> Result<Outcome> {
        self.run_prepared(module)
    }

    fn run_prepared(self, compiled: &CompiledModule) -> Result<Outcome> {
        let module = compiled.module();
        let engine = module.engine().clone();
        let mut config = ThreadsConfig::new().store_setup(|store: &mut Store<State>| {
            store.limiter(|state| &mut state.limits);
            Ok(())
        });
        if let Some(limit) = self.timeout {
            config = config.timeout(limit);
        }
        if let Some(bytes) = self.max_wasm_stack {
            let engines = engine.get_max_wasm_stack();
            if engines != bytes {
                bail!(
                    "max_wasm_stack is {bytes} bytes but the engine was configured with \
                     {engines}: set Config::max_wasm_stack({bytes}) on the engine too"
                );
            }
            config =
                config.stack_size(DEFAULT_STACK_SIZE.max(bytes.saturating_add(HOST_STACK_RESERVE)));
        }
        let mut limits = StoreLimitsBuilder::new();
        if let Some(bytes) = self.max_memory {
            config = config.max_memory(bytes);
            limits = limits.memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
        }
        let limits = limits.build();
        if let Some(n) = self.max_threads {
            config = config.max_threads(n);
        }
        if let Some(idle) = self.keep_alive {
            config = config.keep_alive(idle);
        }
        if let Some(schedule) = self.schedule {
            config = config.schedule(schedule);
        }
        let threads = WasiThreads::with_config(&engine, compiled, config)?;

        let mut builder = WasiCtxBuilder::new();
        // Every guest thread has an OS thread of its own, so file I/O can
        // block it directly instead of going through tokio's blocking pool,
        // which costs a thread hand-off per call.
        builder.allow_blocking_current_thread(true);
        builder.args(&self.args);
        for (key, value) in &self.env {
            builder.env(key, value);
        }
        for (host, guest) in &self.dirs {
            builder
                .preopened_dir(host, guest, FsPerms::ReadWrite)
                .with_context(|| format!("cannot open directory {}", host.display()))?;
        }
        for setup in self.wasi_setup {
            setup(&mut builder);
        }
        let flush = self.stdio.writes_process_stdout();
        let wasi = threads.wasi(builder, self.stdio);
        let store = threads.new_store(State { wasi, limits })?;

        let mut linker = Linker::new(&engine);
        threads.add_to_linker(&mut linker, &store, |s: &mut State| &mut s.wasi)?;
        if self.unknown_imports_trap {
            linker.define_unknown_imports_as_traps(module)?;
        }

        if let Some(on_start) = self.on_start {
            on_start(threads.cancel_handle());
        }
        let outcome = threads.run(&linker, store);
        if flush {
            flush_stdout();
        }
        outcome
    }
}

/// How long the runner waits for stdout to flush after a run.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Flushes the process's stdout, so that whatever the guest wrote is out
/// before the caller hears the outcome (Rust's stdout buffers up to a
/// newline), without ever hanging: an abandoned guest thread may be stuck
/// writing to a pipe nobody reads, holding stdout's lock, and a flush would
/// then wait forever. The flush runs on a thread of its own, waited for at
/// most [`FLUSH_TIMEOUT`], and left behind if stuck.
fn flush_stdout() {
    let (done, flushed) = crossbeam_channel::bounded(1);
    let flusher = std::thread::Builder::new()
        .name("stdout-flush".into())
        .spawn(move || {
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            let _ = done.send(());
        });
    match flusher {
        Ok(flusher) => {
            if flushed.recv_timeout(FLUSH_TIMEOUT).is_ok() {
                let _ = flusher.join();
            } else {
                log::warn!(
                    "stdout did not flush within {FLUSH_TIMEOUT:?} (a full pipe?); not waiting"
                );
            }
        }
        Err(e) => log::warn!("cannot flush stdout: no thread for it: {e}"),
    }
}
