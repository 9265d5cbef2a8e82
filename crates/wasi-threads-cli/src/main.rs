//! `wasi-threads`: run a wasi-threads module from the command line.

mod cli;
mod options;

use clap::error::ErrorKind;
use std::process::ExitCode;
use wasi_threads_host::{Outcome, Runner};
use wasmtime::error::Context as _;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match cli::Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    if let Some(help) = cli.group_help() {
        println!("{help}");
        return ExitCode::SUCCESS;
    }
    let status = match cli
        .options()
        .map_err(wasmtime::Error::msg)
        .and_then(|o| run(cli, o))
    {
        Ok(outcome) => {
            match &outcome {
                Outcome::Exit { .. } => {}
                Outcome::Trap { tid, trap } => {
                    eprintln!("Error: thread {tid} trapped: {}", trap.message);
                    if let Some(backtrace) = &trap.backtrace {
                        eprintln!("{backtrace}");
                    }
                }
                other => eprintln!("Error: {other}"),
            }
            outcome.exit_status()
        }
        Err(e) => {
            // One line, whatever the error's own formatting.
            let message = format!("{e:#}");
            let message: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("Error: {}", message.join(" "));
            1
        }
    };
    // `process::exit` rather than returning: it does not wait for threads
    // the run had to abandon. Guest output never goes through std's stdout
    // (see `run`), so nothing is left in its buffer. Exit codes outside
    // 0..=255 are truncated by the OS, as with wasmtime.
    std::process::exit(status)
}

fn run(cli: cli::Cli, options: options::Options) -> wasmtime::Result<Outcome> {
    let mut config = wasi_threads_host::engine_config();
    #[cfg(feature = "cache")]
    if !cli.no_cache {
        match wasmtime::Cache::from_file(None) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(e) => log::debug!("compilation cache unavailable: {e:#}"),
        }
    }
    #[cfg(not(feature = "cache"))]
    let _ = cli.no_cache; // built without the cache: nothing to turn off
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
    let engine = wasmtime::Engine::new(&config)?;
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
        .arg(argv0)
        .args(cli.guest_args().iter().cloned())
        .max_threads(cli.max_threads)
        .keep_alive(cli.thread_keep_alive);
    if options.inherit_env {
        for (key, value) in std::env::vars() {
            runner = runner.env(key, value);
        }
    }
    for (key, value) in cli.env {
        match value.or_else(|| std::env::var(&key).ok()) {
            Some(value) => runner = runner.env(key, value),
            None => log::warn!("--env {key}: not set on the host; not passed on"),
        }
    }
    for (host, guest) in cli.dirs {
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
    let path = std::path::Path::new(&cli.module_and_args[0]);
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // A cached run skips the module rewrite as well as compilation: for a
    // large module (ripgrep: 20 MB) the rewrite is most of startup.
    let guest = match module_cache_dir().filter(|_| !cli.no_cache) {
        Some(dir) => wasi_threads_host::compile_guest_cached(&engine, &bytes, &dir),
        None => wasi_threads_host::compile_guest(&engine, &bytes),
    }
    .with_context(|| format!("cannot run {}", path.display()))?;
    runner
        .run_guest(&guest)
        .with_context(|| format!("cannot run {}", path.display()))
}

/// Where compiled, rewritten modules are kept between runs: the user's
/// cache directory (`$XDG_CACHE_HOME`, else `~/.cache`), as Wasmtime keeps
/// its own.
fn module_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    Some(base.join("wasi-threads").join("modules"))
}

/// `--help` and `--version` print and succeed; any other parse error is one
/// line on stderr and exit status 1, like every other bad input.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    // clap's message, without its usage block and tips, on one line.
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| {
            !(l.is_empty() || l.starts_with("tip:") || l.starts_with("For more information"))
        })
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("Error: {message} (see --help)");
    ExitCode::from(1)
}
