//! `wasi-threads`: run a wasi-threads module from the command line.

mod cli;
mod options;
mod schedule;

use clap::error::ErrorKind;
use std::process::ExitCode;
use std::sync::Mutex;
use wasi_threads_host::{
    CompiledModule, ModuleCache, Outcome, Run, Runner, SharedOutput, SharedStdin, Stdio, Trace,
};
use wasmtime::error::Context as _;

#[cfg(feature = "function-cache")]
use wasi_threads_host::FunctionCache;
/// A stand-in, so that `engine`'s callers read the same in a build without
/// the function cache.
#[cfg(not(feature = "function-cache"))]
enum FunctionCache {}

#[cfg(not(feature = "function-cache"))]
impl FunctionCache {
    fn enable(&self, _: &mut wasmtime::Config) -> wasmtime::Result<()> {
        match *self {}
    }
}

/// The wall-clock limit of each explored run when `--timeout` gives none: a
/// schedule that livelocks the program (or a thread blocked in a real read)
/// is a failure to report, not a hang of the whole exploration.
const EXPLORE_RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The most output of one explored run kept in memory (a run that writes
/// more gets ENOSPC past it, as on a full disk).
const EXPLORE_OUTPUT_LIMIT: usize = 64 << 20;

/// The exit status of a usage error, as clap (and so `wasmtime run`) gives
/// it: a script can tell it from a guest's `exit(1)`.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if let Some(help) = cli.group_help() {
        println!("{help}");
        return ExitCode::SUCCESS;
    }
    let checked = cli.options().and_then(|options| {
        let spec = cli.schedule_spec()?;
        Ok((options, spec))
    });
    let (options, spec) = match checked {
        Ok(checked) => checked,
        Err(message) => {
            eprintln!("error: {message}\n\nFor more information, try '--help'.");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    // The host's own variable, as Wasmtime has WASMTIME_LOG: RUST_LOG is
    // often set for the guest (`--env RUST_LOG=debug`) or for a whole CI job.
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::new()
            .filter_or("WASI_THREADS_LOG", "warn")
            .write_style("WASI_THREADS_LOG_STYLE"),
    );
    if options.no_logging {
        logger.filter_level(log::LevelFilter::Off);
    }
    logger.init();
    let status = match run(cli, options, spec) {
        Ok(outcome) => {
            match &outcome {
                Outcome::Exit { .. } => {}
                Outcome::Trap { tid, trap } => {
                    eprintln!("Error: thread {tid} trapped: {}", trap.message());
                    if let Some(backtrace) = trap.backtrace() {
                        eprintln!("{backtrace}");
                    }
                }
                other => eprintln!("Error: {other}"),
            }
            outcome.exit_status()
        }
        Err(e) => {
            match e.downcast_ref::<TextError>() {
                // File, line and column, then the line with a caret under
                // the error, as `wasmtime run` shows it.
                Some(TextError(rendered)) => eprintln!("Error: {rendered}"),
                None => {
                    // One line, whatever the error's own formatting.
                    let message = format!("{e:#}");
                    let message: Vec<&str> = message
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect();
                    eprintln!("Error: {}", message.join(" "));
                }
            }
            1
        }
    };
    // `process::exit` rather than returning: it does not wait for threads
    // the run had to abandon. Guest output never goes through std's stdout
    // (see `run`), so nothing is left in its buffer. Exit codes outside
    // 0..=255 are truncated by the OS, as with wasmtime.
    std::process::exit(status)
}

fn run(
    cli: cli::Cli,
    options: options::Options,
    spec: Option<(schedule::Spec, Option<Trace>)>,
) -> wasmtime::Result<Outcome> {
    let no_cache = cli.no_cache || options.no_cache;
    let cache_size = match std::env::var("WASI_THREADS_CACHE_SIZE") {
        Ok(size) => cli::parse_size(&size)
            .map_err(|e| wasmtime::format_err!("WASI_THREADS_CACHE_SIZE: {e}"))?,
        Err(_) => wasi_threads_host::DEFAULT_CACHE_SIZE,
    };
    // Everything the command line names is checked before the module is
    // read and compiled, as `wasmtime run` checks it.
    for (host, _) in &cli.dirs {
        check_dir(host)
            .with_context(|| format!("failed to open directory '{}'", host.display()))?;
    }
    let (engine, functions) = engine(&options, no_cache)?;
    let path = std::path::Path::new(&cli.module_and_args[0]);
    let bytes = std::fs::read(path)
        .with_context(|| format!("failed to open wasm module \"{}\"", path.display()))?;
    let bytes = to_binary(path, bytes)?;
    // A cached run skips the module rewrite as well as compilation: for a
    // large module (ripgrep: 20 MB) the rewrite is most of startup.
    let cache = module_cache_dir()
        .filter(|_| !no_cache)
        .map(|dir| ModuleCache::new(dir).max_size(cache_size));
    let cannot_run = || format!("cannot run {}", path.display());
    let Some((spec, trace)) = spec else {
        let guest = match &cache {
            Some(cache) => cache.compile(&engine, &bytes),
            None => wasi_threads_host::compile(&engine, &bytes),
        }
        .with_context(cannot_run)?;
        flush(functions.as_ref());
        return runner(&cli, &options, &engine)
            .run_module(&guest)
            .with_context(cannot_run);
    };
    let guest = match &cache {
        Some(cache) => cache.compile_scheduled(&engine, &bytes, spec.granularity),
        None => wasi_threads_host::compile_scheduled(&engine, &bytes, spec.granularity),
    }
    .with_context(cannot_run)?;
    flush(functions.as_ref());
    match cli.explore {
        None => runner(&cli, &options, &engine)
            .schedule(spec.schedule(trace))
            .run_module(&guest)
            .with_context(cannot_run),
        Some(runs) => {
            explore(&cli, &options, &engine, &guest, &spec, runs).with_context(cannot_run)
        }
    }
}

/// `--explore K`: the program under K schedules, each run's stdio in
/// memory (stdin read once, given to every run).
fn explore(
    cli: &cli::Cli,
    options: &options::Options,
    engine: &wasmtime::Engine,
    guest: &CompiledModule,
    spec: &schedule::Spec,
    runs: u64,
) -> wasmtime::Result<Outcome> {
    use std::io::{IsTerminal as _, Read as _};
    let mut stdin = Vec::new();
    if !std::io::stdin().is_terminal() {
        std::io::stdin()
            .read_to_end(&mut stdin)
            .context("cannot read stdin for the explored runs")?;
    }
    let first: Mutex<Option<Run>> = Mutex::new(None);
    let run_one = |schedule: wasi_threads_host::Schedule| -> wasmtime::Result<Run> {
        let (stdout, out) = SharedOutput::memory(EXPLORE_OUTPUT_LIMIT);
        let (stderr, err) = SharedOutput::memory(EXPLORE_OUTPUT_LIMIT);
        let stdio = Stdio::new()
            .stdin(SharedStdin::from_bytes(stdin.clone()))
            .stdout(stdout)
            .stderr(stderr);
        let (seed, log) = (schedule.seed(), schedule.log());
        let mut runner = runner(cli, options, engine);
        if cli.timeout.or(options.timeout).is_none() {
            runner = runner.timeout(EXPLORE_RUN_TIMEOUT);
        }
        let outcome = runner.stdio(stdio).schedule(schedule).run_module(guest)?;
        let run = Run {
            outcome,
            stdout: out.contents(),
            stderr: err.contents(),
            report: log.report(),
        };
        if seed == spec.seed {
            first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| run.clone());
        }
        Ok(run)
    };
    let explore = spec.explore(runs, cli.explore_stdout, cli.jobs);
    let report = wasi_threads_host::explore(&explore, run_one)?;
    let argv: Vec<String> = std::env::args().collect();
    let first = first.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(schedule::report(
        &report,
        first.as_ref(),
        cli.module(),
        |trace, seed, granularity| {
            schedule::replay_command(&argv, cli.module_and_args.len(), seed, granularity, trace)
        },
    ))
}

/// The engine the command line asks for, and the function cache it
/// compiles with (to be flushed once the module is compiled).
fn engine(
    options: &options::Options,
    no_cache: bool,
) -> wasmtime::Result<(wasmtime::Engine, Option<FunctionCache>)> {
    let mut config = wasi_threads_host::engine_config();
    // Wasmtime's own cache only when asked for by -C cache-config: the
    // module cache below holds the same compiled code (and more).
    if let Some(path) = &options.cache_config {
        #[cfg(feature = "cache")]
        if !no_cache {
            config.cache(Some(wasmtime::Cache::from_file(Some(path))?));
        }
        #[cfg(not(feature = "cache"))]
        wasmtime::bail!(
            "-C cache-config={}: this build has no Wasmtime cache (feature `cache`)",
            path.display()
        );
    }
    #[cfg(not(feature = "cache"))]
    let _ = no_cache;
    if let Some(parallel) = options.parallel_compilation {
        config.parallel_compilation(parallel);
    }
    if let Some(level) = options.opt_level {
        config.cranelift_opt_level(level);
    }
    if let Some(compiler) = options.compiler {
        config.strategy(compiler);
    }
    for (feature, enable) in &options.features {
        feature.apply(&mut config, *enable);
    }
    if let Some(enable) = options.debug_info {
        config.debug_info(enable);
    }
    if let Some(enable) = options.address_map {
        config.generate_address_map(enable);
    }
    if let Some(profile) = options.profile {
        config.profiler(profile);
    }
    if let Some(bytes) = options.max_wasm_stack {
        // `Runner::max_wasm_stack` requires an engine of our own to agree;
        // Wasmtime refuses a wasm stack larger than the async stack.
        config
            .max_wasm_stack(bytes)
            .async_stack_size(bytes.max(2 << 20));
    }
    // Functions a module shares with modules compiled before (a suite's
    // other test binaries) come from the function cache. Its keys include
    // the compiler's settings, so entries never cross opt levels or targets.
    // Winch has no incremental compilation: nothing to share there.
    let winch = matches!(options.compiler, Some(wasmtime::Strategy::Winch));
    let functions = if no_cache || winch {
        None
    } else {
        function_cache()?
    };
    if let Some(functions) = &functions {
        functions.enable(&mut config)?;
    }
    Ok((wasmtime::Engine::new(&config)?, functions))
}

/// A runner set up as the command line asks (one per run: `--explore`
/// runs many).
fn runner(cli: &cli::Cli, options: &options::Options, engine: &wasmtime::Engine) -> Runner {
    let argv0 = cli
        .argv0
        .clone()
        .unwrap_or_else(|| cli.module().to_string());
    // Stdio is `Runner`'s default: stdout and stderr through `SharedOutput`,
    // which never takes std's stdout lock, so a guest thread stuck writing to
    // a full pipe can neither stall the others nor keep this process from
    // exiting once the outcome is reported.
    let mut runner = Runner::new()
        .engine(engine.clone())
        .unknown_imports_trap(options.unknown_imports_trap)
        .arg(argv0)
        .args(cli.guest_args().iter().cloned())
        .max_threads(cli.max_threads)
        .keep_alive(cli.thread_keep_alive);
    if options.inherit_env {
        for (key, value) in std::env::vars() {
            runner = runner.env(key, value);
        }
    }
    for (key, value) in &cli.env {
        match value.clone().or_else(|| std::env::var(key).ok()) {
            Some(value) => runner = runner.env(key, value),
            None => log::warn!("--env {key}: not set on the host; not passed on"),
        }
    }
    for (host, guest) in &cli.dirs {
        runner = runner.preopened_dir(host, guest);
    }
    if let Some(bytes) = options.max_memory_size {
        runner = runner.max_memory(bytes);
    }
    if let Some(bytes) = options.max_wasm_stack {
        runner = runner.max_wasm_stack(bytes);
    }
    if let Some(limit) = cli.timeout.or(options.timeout) {
        runner = runner.timeout(limit);
    }
    runner
}

/// A `--dir` must name a directory that can be opened.
fn check_dir(path: &std::path::Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(path)?;
    if !dir.metadata()?.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    Ok(())
}

/// A module in the text format, converted here rather than by the library so
/// that a syntax error names the file, line and column with the offending
/// line below, as `wasmtime run` gives it.
fn to_binary(path: &std::path::Path, bytes: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
    let looks_like_text = !bytes.starts_with(b"\0asm")
        && bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'(' || *b == b';');
    if !looks_like_text {
        return Ok(bytes);
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(bytes); // the library's error says what it is not
    };
    wat::parse_str(text).map_err(|mut e| {
        e.set_path(path);
        wasmtime::Error::new(TextError(e.to_string()))
    })
}

/// A syntax error in a text module, rendered with its file, line and column
/// and the offending line, printed as it is.
#[derive(Debug)]
struct TextError(String);

impl std::fmt::Display for TextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TextError {}

/// Where compiled, rewritten modules are kept between runs: the user's
/// cache directory (`$XDG_CACHE_HOME`, else `~/.cache`), as Wasmtime keeps
/// its own.
fn module_cache_dir() -> Option<std::path::PathBuf> {
    Some(cache_base_dir()?.join("modules"))
}

/// The directory of both caches: `$XDG_CACHE_HOME/wasi-threads`, else
/// `~/.cache/wasi-threads`.
fn cache_base_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("wasi-threads"))
}

/// The function cache beside the module cache, bounded by
/// WASI_THREADS_FUNCTION_CACHE_SIZE; `None` in a build without it or when
/// that bound is 0.
#[cfg(feature = "function-cache")]
fn function_cache() -> wasmtime::Result<Option<FunctionCache>> {
    let size = match std::env::var("WASI_THREADS_FUNCTION_CACHE_SIZE") {
        Ok(size) => cli::parse_size(&size)
            .map_err(|e| wasmtime::format_err!("WASI_THREADS_FUNCTION_CACHE_SIZE: {e}"))?,
        Err(_) => wasi_threads_host::DEFAULT_FUNCTION_CACHE_SIZE,
    };
    // Off rather than empty: keeping it costs a cold compile of a module
    // that shares nothing with others about 5% (Cranelift hashes and
    // serializes every function), for nothing if nothing can be kept.
    if size == 0 {
        return Ok(None);
    }
    Ok(cache_base_dir().map(|dir| FunctionCache::new(dir.join("functions")).max_size(size)))
}

#[cfg(not(feature = "function-cache"))]
fn function_cache() -> wasmtime::Result<Option<FunctionCache>> {
    Ok(None)
}

/// Writes what the compile added to the function cache. A cache that
/// cannot be written costs the next run its hits, not this one its result.
fn flush(functions: Option<&FunctionCache>) {
    #[cfg(feature = "function-cache")]
    if let Some(functions) = functions {
        if let Err(e) = functions.flush() {
            log::debug!("cannot write the function cache: {e:#}");
        }
        let stats = functions.stats();
        log::debug!(
            "function cache: {} hits, {} misses, {} entries written",
            stats.hits,
            stats.misses,
            stats.written
        );
    }
    #[cfg(not(feature = "function-cache"))]
    let _ = functions;
}

/// `--help` and `--version` print and succeed; any other parse error is
/// clap's message and exit status 2, as with `wasmtime run`.
fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return ExitCode::SUCCESS;
    }
    ExitCode::from(USAGE_ERROR)
}
