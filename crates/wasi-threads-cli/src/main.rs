//! `wasi-threads`: run a wasi-threads module from the command line.

mod cli;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use wasi_threads_host::{Outcome, Runner};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = cli::Cli::parse();
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
            eprintln!("Error: {e:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // Exit codes outside 0..=255 are truncated by the OS, as with wasmtime.
    ExitCode::from(status as u8)
}

fn run(cli: cli::Cli) -> wasmtime::Result<Outcome> {
    let mut runner = Runner::new()
        .arg(cli.module.to_string_lossy())
        .args(cli.args)
        .max_threads(cli.max_threads);
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
