//! [`Runner`]: the common case in a few lines — a module, its WASI setup,
//! and the [`Outcome`].

use crate::program::{ThreadsConfig, WasiThreads, engine_config};
use crate::stdin::SharedStdin;
use crate::stdio::SharedOutput;
use crate::supervisor::{CancelHandle, Outcome};
use crate::wasi::{self, SharedWasi};
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::error::Context as _;
use wasmtime::{Engine, Linker, Module, Result};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

type WasiSetup = Box<dyn FnOnce(&mut WasiCtxBuilder) + Send>;

/// Runs a WASI command module, threaded or not, to its [`Outcome`].
///
/// ```no_run
/// use wasi_threads_host::{Outcome, Runner};
/// # fn main() -> wasmtime::Result<()> {
/// let outcome = Runner::new()
///     .arg("app.wasm")
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
    inherit_stdio: bool,
    wasi_setup: Vec<WasiSetup>,
    stdin: Option<SharedStdin>,
    max_threads: Option<u32>,
    keep_alive: Option<Duration>,
    timeout: Option<Duration>,
    on_start: Option<Box<dyn FnOnce(CancelHandle) + Send>>,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
struct State {
    wasi: SharedWasi,
}

impl Runner {
    /// A runner with inherited stdio, no arguments, no environment and no
    /// preopened directories.
    pub fn new() -> Self {
        Runner {
            engine: None,
            args: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            inherit_stdio: true,
            wasi_setup: Vec::new(),
            stdin: None,
            max_threads: None,
            keep_alive: None,
            timeout: None,
            on_start: None,
        }
    }

    /// Uses `engine` (which must be configured as [`engine_config`] does)
    /// instead of a new one.
    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Appends one argument; the first is the program name (`argv[0]`).
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

    /// Whether the guest inherits the host's stdin, stdout and stderr
    /// (default `true`). Without it, the guest's stdio is empty and closed
    /// unless [`configure_wasi`](Self::configure_wasi) sets it.
    pub fn inherit_stdio(mut self, inherit: bool) -> Self {
        self.inherit_stdio = inherit;
        self
    }

    /// The guest's stdin (instead of the process's). Threads waiting on it
    /// hold no lock other threads need.
    pub fn stdin(mut self, stdin: SharedStdin) -> Self {
        self.stdin = Some(stdin);
        self
    }

    /// Further WASI setup (custom stdio streams, clocks, ...), applied after
    /// the runner's own.
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

    /// Called with the program's cancel handle just before it starts.
    pub fn on_start(mut self, f: impl FnOnce(CancelHandle) + Send + 'static) -> Self {
        self.on_start = Some(Box::new(f));
        self
    }

    /// Compiles and runs the module in the file at `path`.
    pub fn run_file(self, path: impl AsRef<Path>) -> Result<Outcome> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.run_bytes(&bytes)
            .with_context(|| format!("cannot run {}", path.display()))
    }

    /// Compiles and runs a module from its binary (or text) form.
    pub fn run_bytes(self, bytes: &[u8]) -> Result<Outcome> {
        let engine = match &self.engine {
            Some(engine) => engine.clone(),
            None => Engine::new(&engine_config())?,
        };
        let module = crate::rewrite::compile(&engine, bytes)?;
        self.run_module(&module)
    }

    /// Runs a module compiled with this runner's engine.
    pub fn run_module(self, module: &Module) -> Result<Outcome> {
        let engine = module.engine().clone();
        let mut config = ThreadsConfig::new().timeout(self.timeout);
        if let Some(n) = self.max_threads {
            config = config.max_threads(n);
        }
        if let Some(idle) = self.keep_alive {
            config = config.keep_alive(idle);
        }
        let threads = WasiThreads::with_config(&engine, module, config)?;

        let mut builder = WasiCtxBuilder::new();
        // Every guest thread has an OS thread of its own, so file I/O can
        // block it directly instead of going through tokio's blocking pool,
        // which costs a thread hand-off per call.
        builder.allow_blocking_current_thread(true);
        let mut stdin = None;
        if self.inherit_stdio {
            // The process's stdin, buffered so that a thread waiting for
            // input holds no lock other threads need; its stdout and stderr,
            // written by pump threads so that a stuck reader stalls only the
            // writing thread, and only until the program stops.
            let shared = SharedStdin::inherit();
            builder
                .stdout(SharedOutput::stdout())
                .stderr(SharedOutput::stderr())
                .stdin(shared.clone());
            stdin = Some(shared);
        }
        // A setup hook may replace stdout/stderr: then fd 1 and 2 are only
        // the context's to write.
        let shared_output = self.inherit_stdio && self.wasi_setup.is_empty();
        builder.args(&self.args);
        for (key, value) in &self.env {
            builder.env(key, value);
        }
        for (host, guest) in &self.dirs {
            builder
                .preopened_dir(host, guest, FsPerms::ReadWrite)
                .with_context(|| format!("cannot open directory {}", host.display()))?;
        }
        if let Some(shared) = &self.stdin {
            builder.stdin(shared.clone());
            stdin = Some(shared.clone());
        }
        for setup in self.wasi_setup {
            setup(&mut builder);
        }
        let mut wasi = SharedWasi::new(builder.build_p1(), &threads);
        if let Some(stdin) = stdin {
            wasi = wasi.with_stdin(stdin);
        }
        if shared_output {
            wasi = wasi
                .with_stdout(SharedOutput::stdout())
                .with_stderr(SharedOutput::stderr());
        }
        let store = threads.new_store(State { wasi })?;

        let mut linker = Linker::new(&engine);
        threads.add_to_linker(&mut linker, &store)?;
        wasi::add_to_linker(&mut linker, |s: &mut State| &mut s.wasi)?;

        if let Some(on_start) = self.on_start {
            on_start(threads.cancel_handle());
        }
        let outcome = threads.run(&linker, store);
        if self.inherit_stdio {
            // Whatever the guest wrote is out before the caller hears the
            // outcome (Rust's stdout buffers up to a newline).
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
        outcome
    }
}
