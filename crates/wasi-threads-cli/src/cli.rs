//! Command-line parsing.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Runs a WebAssembly module built for wasi-threads (`wasm32-wasip1-threads`,
/// or C with wasi-libc pthreads) the way `wasmtime run` does.
///
/// The exit status is the guest's `proc_exit` code, 0 when `_start` returns,
/// 134 when any thread traps, 124 when --timeout expires, and 1 when the
/// module cannot be run at all. Set RUST_LOG=wasi_threads_host=debug for
/// diagnostics.
#[derive(Debug, Parser)]
#[command(name = "wasi-threads", version)]
pub struct Cli {
    /// Give the guest a host directory: HOST, or HOST::GUEST to mount it
    /// under another name. Repeatable.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    pub dirs: Vec<(PathBuf, String)>,

    /// Set an environment variable for the guest: KEY=VALUE, or KEY to pass
    /// the host's value through. Repeatable.
    #[arg(long = "env", value_name = "KEY[=VALUE]", value_parser = parse_env)]
    pub env: Vec<(String, Option<String>)>,

    /// The most spawned threads alive at once; beyond it, thread creation
    /// fails with EAGAIN in the guest.
    #[arg(long, value_name = "N", default_value_t = wasi_threads_host::DEFAULT_MAX_THREADS)]
    pub max_threads: u32,

    /// How long an OS thread whose guest thread ended waits to run the next
    /// spawned one (OS threads are reused; 0 disables reuse).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub thread_keep_alive: Duration,

    /// Stop the program after this long (e.g. 30s, 500ms, 2m; a bare number
    /// is seconds) and exit with status 124.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Do not use Wasmtime's on-disk cache of compiled modules (by default
    /// repeated runs of the same module, as under cargo test, skip compiling).
    #[arg(long)]
    pub no_cache: bool,

    /// The module to run (binary .wasm or text .wat).
    #[arg(value_name = "MODULE")]
    pub module: PathBuf,

    /// Arguments for the guest; the guest's argv[0] is MODULE as given.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

fn parse_dir(s: &str) -> Result<(PathBuf, String), String> {
    let (host, guest) = match s.split_once("::") {
        Some((host, guest)) => (host, guest),
        None => (s, s),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("`{s}` is not HOST or HOST::GUEST"));
    }
    Ok((PathBuf::from(host), guest.to_string()))
}

fn parse_env(s: &str) -> Result<(String, Option<String>), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("`{s}` has an empty variable name")),
        Some((key, value)) => Ok((key.to_string(), Some(value.to_string()))),
        None if s.is_empty() => Err("empty variable name".to_string()),
        None => Ok((s.to_string(), None)),
    }
}

/// Parses `10`, `1.5s`, `250ms`, `2m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 30s or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn dirs_and_env() {
        assert_eq!(
            parse_dir("a::/b"),
            Ok((PathBuf::from("a"), "/b".to_string()))
        );
        assert_eq!(parse_dir("."), Ok((PathBuf::from("."), ".".to_string())));
        assert!(parse_dir("::x").is_err());
        assert_eq!(parse_env("A=1"), Ok(("A".into(), Some("1".into()))));
        assert_eq!(parse_env("A=a=b"), Ok(("A".into(), Some("a=b".into()))));
        assert_eq!(parse_env("HOME"), Ok(("HOME".into(), None)));
        assert!(parse_env("=x").is_err());
    }

    #[test]
    fn guest_arguments_may_look_like_flags() {
        let cli = Cli::try_parse_from([
            "wasi-threads",
            "--env",
            "A=1",
            "t.wasm",
            "--test-threads",
            "2",
            "--dir",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.module, PathBuf::from("t.wasm"));
        assert_eq!(cli.args, ["--test-threads", "2", "--dir", "x"]);
        assert!(cli.dirs.is_empty());
    }
}
