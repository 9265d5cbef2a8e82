//! Command-line parsing.

use crate::options::{self, Options};
use clap::{CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;
use std::time::Duration;

/// Runs a WebAssembly module built for wasi-threads (`wasm32-wasip1-threads`,
/// or C with wasi-libc pthreads) the way `wasmtime run` does.
///
/// Accepts `wasmtime run`'s spellings, so `wasi-threads` can replace
/// `wasmtime` in an existing command line: an optional leading `run`,
/// `-W`/`--wasm`, `-S`/`--wasi`, `-D`/`--debug`, `-C`/`--codegen` and
/// `-O`/`--optimize` KEY[=VAL] groups (`-W help` lists the keys), `--dir`,
/// `--env`, `--argv0`, `--profile`, `--invoke _start`, `--allow-precompiled`,
/// and `--` before the module. Everything after MODULE goes to the guest.
///
/// Exit status: the guest's `proc_exit` code; 0 when `_start` returns; 134
/// when any thread traps; 124 when a timeout expires; 2 for a usage error
/// (an unknown or refused option); 1 when the module cannot be run at all.
///
/// Compiled modules are cached in $XDG_CACHE_HOME/wasi-threads/modules
/// (default ~/.cache/wasi-threads/modules), at most 512 MiB: the least
/// recently used entries are removed beyond it (WASI_THREADS_CACHE_SIZE sets
/// another bound, e.g. 2GiB). Compiled functions are cached beside it, in
/// .../wasi-threads/functions, so that a module's first run reuses what
/// other modules with the same functions compiled (a test suite's binaries
/// share most of theirs): at most 256 MiB, least recently used removed
/// first (WASI_THREADS_FUNCTION_CACHE_SIZE; 0 turns it off). --no-cache
/// turns both off.
///
/// Logs go to stderr: WASI_THREADS_LOG sets their level, as WASMTIME_LOG does
/// for wasmtime (default `warn`; `debug` shows spawns, exits, the stop and
/// cache hits; RUST_LOG is left to the guest).
#[derive(Debug, Parser)]
#[command(name = "wasi-threads")]
pub struct Cli {
    /// Wasm options as `wasmtime run` spells them: KEY[=VAL[,KEY[=VAL]..]]
    /// (`-W help` lists them). Repeatable.
    #[arg(short = 'W', long = "wasm", value_name = "KEY[=VAL[,..]]")]
    pub wasm: Vec<String>,

    /// WASI options as `wasmtime run` spells them (`-S threads` is always on;
    /// `-S help` lists them). Repeatable.
    #[arg(short = 'S', long = "wasi", value_name = "KEY[=VAL[,..]]")]
    pub wasi: Vec<String>,

    /// Debugging options as `wasmtime run` spells them, e.g. `-D debug-info`
    /// (`-D help` lists them). Repeatable.
    #[arg(short = 'D', long = "debug", value_name = "KEY[=VAL[,..]]")]
    pub debug: Vec<String>,

    /// Code generation options as `wasmtime run` spells them, e.g. `-C
    /// cache=n` (`-C help` lists them). Repeatable.
    #[arg(short = 'C', long = "codegen", value_name = "KEY[=VAL[,..]]")]
    pub codegen: Vec<String>,

    /// Optimization options as `wasmtime run` spells them, e.g. `-O
    /// opt-level=0` (`-O help` lists them). Repeatable.
    #[arg(short = 'O', long = "optimize", value_name = "KEY[=VAL[,..]]")]
    pub optimize: Vec<String>,

    /// The function to run: only `_start`, the default (a wasi-threads
    /// program is a command; its threads start at `wasi_thread_start`).
    #[arg(long, value_name = "FUNCTION")]
    pub invoke: Option<String>,

    /// Accepted for `wasmtime run` compatibility; precompiled modules
    /// (`wasmtime compile` output) are still refused: the host must rewrite a
    /// module before compiling it.
    #[arg(long)]
    pub allow_precompiled: bool,

    /// Wasmtime 13's spelling of `-W` (e.g. `--wasm-features threads`).
    #[arg(long = "wasm-features", value_name = "FEATURE[,..]", hide = true)]
    pub wasm_features: Vec<String>,

    /// Wasmtime 13's spelling of `-S` (e.g. `--wasi-modules experimental-wasi-threads`).
    #[arg(long = "wasi-modules", value_name = "MODULE[,..]", hide = true)]
    pub wasi_modules: Vec<String>,

    /// Give the guest a host directory: HOST, or HOST::GUEST to mount it
    /// under another name. Repeatable.
    #[arg(long = "dir", value_name = "HOST_DIR[::GUEST_DIR]", value_parser = parse_dir)]
    pub dirs: Vec<(PathBuf, String)>,

    /// Set an environment variable for the guest: NAME=VAL, or NAME to pass
    /// the host's value through. Repeatable.
    #[arg(long = "env", value_name = "NAME[=VAL]", value_parser = parse_env)]
    pub env: Vec<(String, Option<String>)>,

    /// The guest's `argv[0]` (default: MODULE as given).
    #[arg(long)]
    pub argv0: Option<String>,

    /// Let a native profiler see guest functions: perfmap, jitdump or vtune.
    #[arg(long, value_name = "STRATEGY")]
    pub profile: Option<String>,

    /// The most spawned threads alive at once; beyond it, thread creation
    /// fails with EAGAIN in the guest.
    #[arg(long, value_name = "N", default_value_t = wasi_threads_host::DEFAULT_MAX_THREADS)]
    pub max_threads: u32,

    /// How long an OS thread whose guest thread ended waits to run the next
    /// spawned one (OS threads are reused; 0 disables reuse).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub thread_keep_alive: Duration,

    /// Stop the program after this long (e.g. 30s, 500ms, 2m; a bare number
    /// is seconds) and exit with status 124. Same as `-W timeout=`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Do not use the cache of compiled modules (by default repeated runs of
    /// the same module, as under cargo test, skip rewriting and compiling it).
    /// Same as `-C cache=n`.
    #[arg(long)]
    pub no_cache: bool,

    /// Run in the schedule mode: one guest thread at a time, switching where
    /// a seeded policy decides, on virtual clocks and seeded randomness, so
    /// that the same SPEC and inputs give the same run, byte for byte.
    /// SPEC: comma-separated `seed=N` (default 0), `random` (default) or
    /// `pct` (with `depth=D`, `length=L`), and `accesses` to switch at
    /// every plain load and store as well as at atomics.
    #[arg(long, value_name = "SPEC")]
    pub schedule: Option<String>,

    /// Replay a schedule trace as `--explore` prints it (`step:tid,...`),
    /// with the seed `--schedule` gives.
    #[arg(long, value_name = "TRACE")]
    pub replay: Option<String>,

    /// Run the program under K schedules (seeds from `--schedule`'s, PCT
    /// and random by turns, several at once), stop at the first that fails
    /// (non-zero exit, trap, deadlock, timeout: `--timeout`, else 5 minutes
    /// a run), shrink it, and print the command that replays it. Exit
    /// status: the failing run's, else 0.
    #[arg(long, value_name = "K")]
    pub explore: Option<u64>,

    /// With `--explore`: a run whose stdout differs from the first run's
    /// fails too.
    #[arg(long)]
    pub explore_stdout: bool,

    /// With `--explore`: how many runs at once (default: one per core).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,

    /// The module to run (binary .wasm or text .wat), then the guest's
    /// arguments: everything after MODULE, flags included, goes to the guest.
    #[arg(value_name = "MODULE", trailing_var_arg = true)]
    pub module_and_args: Vec<String>,
}

/// The version line: ours and the Wasmtime we are built on.
pub fn version() -> String {
    format!(
        "{} (Wasmtime {})",
        env!("CARGO_PKG_VERSION"),
        wasmtime_environ::VERSION
    )
}

impl Cli {
    /// Parses a command line as `wasmtime` would: a leading `run` is the
    /// subcommand, not the module.
    pub fn try_parse_args<I, S>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        if args.get(1).is_some_and(|a| a == "run") {
            args.remove(1);
        }
        let mut command = Cli::command().version(version());
        let matches = command.try_get_matches_from_mut(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        // MODULE is checked here rather than by clap so that `-W help` needs none.
        if cli.module_and_args.is_empty() && cli.group_help().is_none() {
            return Err(command.error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the module to run is missing: wasi-threads [run] [OPTIONS] [--] <MODULE> [ARGS]...",
            ));
        }
        Ok(cli)
    }

    /// The module's path.
    pub fn module(&self) -> &str {
        // `try_parse_args` guarantees at least one value.
        self.module_and_args.first().map_or("", String::as_str)
    }

    /// The guest's arguments after `argv[0]`.
    pub fn guest_args(&self) -> &[String] {
        self.module_and_args.get(1..).unwrap_or(&[])
    }

    /// The `wasmtime run` option groups, parsed and checked.
    pub fn options(&self) -> Result<Options, String> {
        let mut options = Options::default();
        for value in &self.wasm {
            options.wasm(value)?;
        }
        for value in &self.wasi {
            options.wasi(value)?;
        }
        for value in &self.debug {
            options.debug(value)?;
        }
        for value in &self.codegen {
            options.codegen(value)?;
        }
        for value in &self.optimize {
            options.optimize(value)?;
        }
        if let Some(name) = self.invoke.as_deref().filter(|name| *name != "_start") {
            return Err(format!(
                "--invoke {name}: not supported: a wasi-threads program runs from `_start` \
                 (and its threads from `wasi_thread_start`)"
            ));
        }
        for value in &self.wasm_features {
            options.wasm_features(value)?;
        }
        for value in &self.wasi_modules {
            options.wasi_modules(value)?;
        }
        if let Some(profile) = &self.profile {
            options.profile(profile)?;
        }
        // Relaxed SIMD needs SIMD: `-W simd=n` alone turns both off rather
        // than being refused by the engine (unless relaxed-simd is asked for).
        use options::Feature::{RelaxedSimd, Simd};
        if options.features.contains(&(Simd, false))
            && !options.features.iter().any(|(f, _)| *f == RelaxedSimd)
        {
            options.features.push((RelaxedSimd, false));
        }
        if let (Some(ours), Some(theirs)) = (self.timeout, options.timeout)
            && ours != theirs
        {
            return Err("--timeout and -W timeout= disagree; give one".to_string());
        }
        Ok(options)
    }

    /// The schedule mode's settings (`--schedule`, `--replay`, `--explore`),
    /// checked; `None` outside it.
    pub fn schedule_spec(
        &self,
    ) -> Result<Option<(crate::schedule::Spec, Option<wasi_threads_host::Trace>)>, String> {
        if self.schedule.is_none() && self.replay.is_none() && self.explore.is_none() {
            if self.explore_stdout || self.jobs.is_some() {
                return Err("--explore-stdout and --jobs need --explore".into());
            }
            return Ok(None);
        }
        let spec = crate::schedule::Spec::parse(self.schedule.as_deref().unwrap_or(""))?;
        let trace = match &self.replay {
            Some(trace) => Some(trace.parse().map_err(|e| format!("--replay: {e}"))?),
            None => None,
        };
        if trace.is_some() && self.explore.is_some() {
            return Err("--replay runs one schedule, --explore many: give one".into());
        }
        if self.explore == Some(0) {
            return Err("--explore 0: explore at least one schedule".into());
        }
        if self.explore.is_none() && (self.explore_stdout || self.jobs.is_some()) {
            return Err("--explore-stdout and --jobs need --explore".into());
        }
        Ok(Some((spec, trace)))
    }

    /// `-W help`, `-S help` or `-D help`: the keys of that group.
    pub fn group_help(&self) -> Option<&'static str> {
        let asks = |values: &[String]| values.iter().any(|v| v == "help" || v == "help-long");
        if asks(&self.wasm) {
            Some(options::WASM_HELP)
        } else if asks(&self.wasi) {
            Some(options::WASI_HELP)
        } else if asks(&self.debug) {
            Some(options::DEBUG_HELP)
        } else if asks(&self.codegen) {
            Some(options::CODEGEN_HELP)
        } else if asks(&self.optimize) {
            Some(options::OPTIMIZE_HELP)
        } else {
            None
        }
    }
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

/// Parses a size: `1048576`, `512MiB`, `2GiB`, `64M` (units of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 512MiB or 2GiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
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
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5PiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
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

    fn parse(args: &[&str]) -> Cli {
        let mut all = vec!["wasi-threads"];
        all.extend_from_slice(args);
        Cli::try_parse_args(all).unwrap()
    }

    #[test]
    fn guest_arguments_may_look_like_flags() {
        let cli = parse(&[
            "--env",
            "A=1",
            "t.wasm",
            "--test-threads",
            "2",
            "--dir",
            "x",
        ]);
        assert_eq!(cli.module(), "t.wasm");
        assert_eq!(cli.guest_args(), ["--test-threads", "2", "--dir", "x"]);
        assert!(cli.dirs.is_empty());
        for flag in ["--version", "-V", "--help", "-h", "run", "--"] {
            let cli = parse(&["t.wasm", flag]);
            assert_eq!(cli.guest_args(), [flag]);
        }
    }

    #[test]
    fn wasmtime_run_spellings() {
        let cli = parse(&[
            "run",
            "-W",
            "bulk-memory=y",
            "-W",
            "threads=y",
            "-W",
            "shared-memory=y",
            "-S",
            "threads=y",
            "--",
            "x.wasm",
            "-W",
        ]);
        assert_eq!(cli.module(), "x.wasm");
        assert_eq!(cli.guest_args(), ["-W"]);
        assert_eq!(cli.wasm.len(), 3);
        assert_eq!(cli.options(), Ok(Options::default()));

        let cli = parse(&["--wasi", "threads", "--wasm", "shared-memory", "x.wasm"]);
        assert_eq!(cli.module(), "x.wasm");
        assert_eq!(cli.options(), Ok(Options::default()));

        let cli = parse(&[
            "-Wthreads,timeout=2",
            "--argv0",
            "prog",
            "--dir=a::/b",
            "x.wasm",
        ]);
        assert_eq!(cli.options().unwrap().timeout, Some(Duration::from_secs(2)));
        assert_eq!(cli.argv0.as_deref(), Some("prog"));
        assert_eq!(cli.dirs, [(PathBuf::from("a"), "/b".to_string())]);

        // A module called `run` needs its path spelled out, as with wasmtime.
        let cli = parse(&["run", "./run"]);
        assert_eq!(cli.module(), "./run");
    }
}
