//! `wasi-threads`: run a wasi-threads module from the command line.

mod cli;

use clap::Parser;
use clap::error::ErrorKind;
use std::io::Write;
use std::process::ExitCode;
use wasi_threads_host::{Outcome, Runner};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let status = match run(cli) {
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
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Exit codes outside 0..=255 are truncated by the OS, as with wasmtime.
    ExitCode::from(status as u8)
}

fn run(cli: cli::Cli) -> wasmtime::Result<Outcome> {
    let mut config = wasi_threads_host::engine_config();
    if !cli.no_cache {
        match wasmtime::Cache::from_file(None) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(e) => log::debug!("compilation cache unavailable: {e:#}"),
        }
    }
    let engine = wasmtime::Engine::new(&config)?;
    let mut runner = Runner::new()
        .engine(engine)
        .arg(cli.module.to_string_lossy())
        .args(cli.args)
        .max_threads(cli.max_threads)
        .keep_alive(cli.thread_keep_alive);
    for (key, value) in cli.env {
        match value.or_else(|| std::env::var(&key).ok()) {
            Some(value) => runner = runner.env(key, value),
            None => log::warn!("--env {key}: not set on the host; not passed on"),
        }
    }
    for (host, guest) in cli.dirs {
        runner = runner.preopened_dir(host, guest);
    }
    if let Some(limit) = cli.timeout {
        runner = runner.timeout(limit);
    }
    runner.run_file(&cli.module)
}

/// `--help` and `--version` print and succeed; any other parse error is one
/// line on stderr and exit status 1, like every other bad input.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("Error: {first} (see --help)");
    ExitCode::from(1)
}
